// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun run` in the foreground, end to end on real microVMs: output and exit codes (0, 42,
//! 143 after SIGTERM), stdin piped, read-only rootfs, hostname/env/cwd, and a guest kernel
//! that is not the host's; nothing left behind after each.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use vmrun_tests::cli::{
    busybox_bundle, require_cli_artifacts, run_bounded, text, wait_bounded, BundleOpts, CliEnv,
};

const BOOT: Duration = Duration::from_secs(240);

#[test]
fn output_streams_and_exit_code_42() {
    if !require_cli_artifacts("cli_run_exit_42") {
        return;
    }
    let env = CliEnv::new("x42");
    let b = busybox_bundle(
        env.dir(),
        "b",
        &BundleOpts::new(&["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 42"]),
        |_| {},
    );
    let out = env.run(&["run", "--bundle", &b.to_string_lossy(), "r42"], BOOT);
    assert_eq!(out.status.code(), Some(42), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-stdout\n");
    assert!(
        text(&out.stderr).contains("to-stderr\n"),
        "{}",
        text(&out.stderr)
    );
    env.assert_nothing_left("r42");
}

#[test]
fn stdin_hostname_env_cwd_and_guest_kernel() {
    if !require_cli_artifacts("cli_run_stdin_env") {
        return;
    }
    let env = CliEnv::new("env");
    let script = "read line; echo got:$line; wc -l; hostname; echo FOO=$FOO; pwd; uname -r";
    let b = busybox_bundle(
        env.dir(),
        "b",
        &BundleOpts::new(&["sh", "-c", script]),
        |s| {
            s["hostname"] = json!("vmtest");
            s["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(json!("FOO=bar baz"));
            s["process"]["cwd"] = json!("/tmp");
        },
    );
    let mut cmd = env.vmrun(&["run", "--bundle", &b.to_string_lossy(), "r0"]);
    let out_path = env.dir().join("r0.out");
    cmd.stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(env.dir().join("r0.err")).unwrap());
    let mut child = cmd.spawn().unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"hello from the host\nline2\nline3\n")
            .unwrap();
        // Dropping stdin is EOF for the container's `wc -l`.
    }
    let status = wait_bounded(&mut child, BOOT);
    let out = std::fs::read_to_string(&out_path).unwrap();
    let err = std::fs::read_to_string(env.dir().join("r0.err")).unwrap();
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "got:hello from the host");
    assert_eq!(lines[1].trim(), "2");
    assert_eq!(lines[2], "vmtest");
    assert_eq!(lines[3], "FOO=bar baz");
    assert_eq!(lines[4], "/tmp");
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(
        lines[5],
        host.trim(),
        "the container must run on the guest kernel"
    );
    env.assert_nothing_left("r0");
}

#[test]
fn sigterm_to_vmrun_run_gives_143() {
    if !require_cli_artifacts("cli_run_sigterm_143") {
        return;
    }
    let env = CliEnv::new("term");
    let mut opts = BundleOpts::new(&["sleep", "300"]);
    opts.pid_namespace = false;
    let b = busybox_bundle(env.dir(), "b", &opts, |_| {});
    let mut cmd = env.vmrun(&["run", "--bundle", &b.to_string_lossy(), "t1"]);
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(env.dir().join("t1.err")).unwrap());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + BOOT;
    loop {
        if env.state("t1").is_some_and(|s| s["status"] == "running") {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "vmrun run exited early"
        );
        assert!(Instant::now() < deadline, "never running");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) of our own child; no memory is involved.
    unsafe {
        libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM);
    }
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    let err = std::fs::read_to_string(env.dir().join("t1.err")).unwrap();
    assert_eq!(status.code(), Some(143), "stderr: {err}");
    env.assert_nothing_left("t1");
}

#[test]
fn readonly_rootfs_refuses_writes() {
    if !require_cli_artifacts("cli_run_readonly") {
        return;
    }
    let env = CliEnv::new("ro");
    let mut opts = BundleOpts::new(&[
        "sh",
        "-c",
        "touch /newfile && echo wrote; echo ok > /tmp/x || exit 7",
    ]);
    opts.readonly = true;
    let b = busybox_bundle(env.dir(), "b", &opts, |_| {});
    let out = run_bounded(
        env.vmrun(&["run", "--bundle", &b.to_string_lossy(), "ro1"]),
        BOOT,
    );
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {} stderr: {err}",
        text(&out.stdout)
    );
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!text(&out.stdout).contains("wrote"));
    assert!(!b.join("rootfs/newfile").exists());
    env.assert_nothing_left("ro1");
}

#[test]
fn bind_mount_volume_written_from_both_sides() {
    if !require_cli_artifacts("cli_run_volume") {
        return;
    }
    let env = CliEnv::new("vol");
    let vol = env.dir().join("volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("from-host"), "host data\n").unwrap();
    let ro = env.dir().join("ro-file");
    std::fs::write(&ro, "read-only\n").unwrap();
    let script = "cat /data/from-host; echo guest data > /data/from-guest; cat /etc/ro-file; \
                  echo x > /etc/ro-file || echo ro-denied";
    let b = busybox_bundle(
        env.dir(),
        "b",
        &BundleOpts::new(&["sh", "-c", script]),
        |s| {
            let mounts = s["mounts"].as_array_mut().unwrap();
            mounts.push(json!({"destination": "/data", "type": "bind",
                           "source": vol.to_string_lossy(), "options": ["rbind", "rw"]}));
            mounts.push(json!({"destination": "/etc/ro-file", "type": "bind",
                           "source": ro.to_string_lossy(), "options": ["bind", "ro"]}));
        },
    );
    let out = run_bounded(
        env.vmrun(&["run", "--bundle", &b.to_string_lossy(), "v1"]),
        BOOT,
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout} stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(stdout, "host data\nread-only\nro-denied\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("from-guest")).unwrap(),
        "guest data\n"
    );
    assert_eq!(std::fs::read_to_string(&ro).unwrap(), "read-only\n");
    env.assert_nothing_left("v1");
}
