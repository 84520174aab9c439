// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun` bad input that is refused before any VM boots: each a clear error (exit 1, message
//! on stderr, a JSON line in `--log` with `--log-format json`) and nothing left behind.

use std::time::Duration;

use serde_json::json;
use vmrun_tests::cli::{busybox_bundle, text, BundleOpts, CliEnv};

const T: Duration = Duration::from_secs(30);

fn assert_fails_with(env: &CliEnv, args: &[&str], needle: &str) {
    let out = env.run(args, T);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in stderr: {err}"
    );
}

#[test]
fn malformed_config_json_missing_rootfs_missing_args() {
    println!("vmrun-test: ran cli_errors_bundles");
    let env = CliEnv::new("err");
    let b = busybox_bundle(env.dir(), "b", &BundleOpts::new(&["true"]), |_| {});
    let bundle = b.to_string_lossy().into_owned();

    std::fs::write(
        b.join("config.json"),
        b"{\"ociVersion\": \"1.0.2\", \"process\": ",
    )
    .unwrap();
    assert_fails_with(&env, &["create", "--bundle", &bundle, "c1"], "malformed");
    assert_fails_with(&env, &["run", "--bundle", &bundle, "c1"], "malformed");
    env.assert_nothing_left("c1");

    let mut spec = vmrun_runtime::oci::default_spec();
    spec["process"]["terminal"] = json!(false);
    spec["root"]["path"] = json!("no-such-rootfs");
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    assert_fails_with(
        &env,
        &["create", "--bundle", &bundle, "c1"],
        "does not exist",
    );
    env.assert_nothing_left("c1");

    spec["root"]["path"] = json!("rootfs");
    spec["process"]["args"] = json!([]);
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    assert_fails_with(
        &env,
        &["create", "--bundle", &bundle, "c1"],
        "process.args must not be empty",
    );
    spec["process"].as_object_mut().unwrap().remove("args");
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    assert_fails_with(
        &env,
        &["run", "--bundle", &bundle, "c1"],
        "process.args must not be empty",
    );
    env.assert_nothing_left("c1");

    // No config.json at all, and a bundle that is not a directory.
    std::fs::remove_file(b.join("config.json")).unwrap();
    assert_fails_with(&env, &["create", "--bundle", &bundle, "c1"], "config.json");
    assert_fails_with(
        &env,
        &["create", "--bundle", "/nonexistent/bundle", "c1"],
        "not a directory",
    );
    // A terminal without a console socket cannot be detached (runc's rule).
    let t = busybox_bundle(env.dir(), "t", &BundleOpts::new(&["sh"]), |s| {
        s["process"]["terminal"] = json!(true);
    });
    assert_fails_with(
        &env,
        &["create", "--bundle", &t.to_string_lossy(), "c1"],
        "console-socket",
    );
    // An io.vmrun.* annotation that is not known (checked by the monitor, before any boot).
    let a = busybox_bundle(env.dir(), "a", &BundleOpts::new(&["true"]), |s| {
        s["annotations"] = json!({"io.vmrun.no_such_knob": "1"});
    });
    assert_fails_with(
        &env,
        &["create", "--bundle", &a.to_string_lossy(), "c1"],
        "unknown annotation io.vmrun.no_such_knob",
    );
    env.assert_nothing_left("c1");
    // Invalid ids.
    assert_fails_with(
        &env,
        &["create", "--bundle", &bundle, "../x"],
        "invalid container id",
    );
    env.assert_nothing_left("c1");
}

#[test]
fn unknown_id_and_unknown_signal() {
    println!("vmrun-test: ran cli_errors_ids");
    let env = CliEnv::new("ids");
    for args in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["kill", "nope"],
        &["kill", "nope", "KILL"],
        &["delete", "nope"],
        &["delete", "--force", "nope"],
    ] {
        assert_fails_with(&env, args, "container \"nope\" does not exist");
    }
    for sig in ["SIGFOO", "0", "65", "RTMAX+1"] {
        assert_fails_with(&env, &["kill", "nope", sig], "unknown signal");
    }
    env.assert_nothing_left("nope");
}

#[test]
fn errors_are_json_lines_in_the_log() {
    println!("vmrun-test: ran cli_errors_json_log");
    let env = CliEnv::new("log");
    let log = env.dir().join("log.json");
    let log_s = log.to_string_lossy().into_owned();
    let out = env.run(
        &["--log", &log_s, "--log-format", "json", "state", "ghost"],
        T,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("container \"ghost\" does not exist"));
    let line = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert_eq!(last["msg"], "container \"ghost\" does not exist");
    assert!(last["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn spec_list_features_version() {
    println!("vmrun-test: ran cli_spec_list_features");
    let env = CliEnv::new("spec");
    let d = env.dir().join("spec");
    std::fs::create_dir_all(&d).unwrap();
    let out = env.run(&["spec", "--bundle", &d.to_string_lossy()], T);
    assert!(out.status.success(), "{out:?}");
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["terminal"], true);
    assert_eq!(spec["process"]["args"], json!(["sh"]));
    assert!(spec["linux"]["maskedPaths"].as_array().unwrap().len() > 3);
    // runc refuses to overwrite.
    assert_fails_with(&env, &["spec", "--bundle", &d.to_string_lossy()], "exists");

    let out = env.run(&["list", "--format", "json"], T);
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        json!([])
    );
    let out = env.run(&["features"], T);
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(f["ociVersionMax"].is_string());
    let out = env.run(&["--version"], T);
    assert!(text(&out.stdout).starts_with("vmrun "));
}
