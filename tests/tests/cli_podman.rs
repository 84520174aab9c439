// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! podman (with conmon) driving `vmrun` as its OCI runtime: `run --rm` with the container's
//! output and exit status, `run -d`, `exec`, `stop`, `rm`. podman gets private storage, run
//! and tmp directories and a containers.conf naming `vmrun` (through a wrapper that adds the
//! test's `--root` and config), and a busybox image built from busybox-static without a
//! registry. podman's default seccomp profile applies: the agent installs it in the guest.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmrun_tests::cli::{busybox_image, require_cli_artifacts, run_bounded, text, CliEnv};
use vmrun_tests::host_bin;

const T: Duration = Duration::from_secs(240);

struct Podman<'a> {
    env: &'a CliEnv,
}

impl Podman<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.env.dir();
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("p-root"))
            .arg("--runroot")
            .arg(d.join("p-run"))
            .arg("--tmpdir")
            .arg(d.join("p-tmp"))
            .args(args)
            .stdin(std::process::Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        run_bounded(self.cmd(args), T)
    }
}

#[allow(clippy::unwrap_used)] // test set-up: a failure is the test's failure
fn setup(env: &CliEnv) -> Podman<'_> {
    let d = env.dir();
    let wrapper = d.join("vmrun-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport VMRUN_CONFIG={}\nexec {} --root {} \"$@\"\n",
            d.join("config.toml").display(),
            host_bin("vmrun").display(),
            env.root().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        d.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             netns = \"none\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             runtime = \"vmrun\"\nruntime_supports_json = [\"vmrun\"]\n\
             runtime_supports_kvm = [\"vmrun\"]\n[engine.runtimes]\nvmrun = [\"{}\"]\n",
            wrapper.display()
        ),
    )
    .unwrap();
    let tar = busybox_image(&d.join("img"));
    let p = Podman { env };
    let load = p.run(&["load", "-i", &tar.to_string_lossy()]);
    assert!(load.status.success(), "podman load: {}", text(&load.stderr));
    p
}

#[test]
fn podman_run_exec_stop_rm_through_vmrun() {
    if !require_cli_artifacts("cli_podman") {
        return;
    }
    assert!(
        Path::new("/usr/bin/podman").exists(),
        "podman is not installed: run scripts/setup"
    );
    let env = CliEnv::new("podman");
    let p = setup(&env);
    let image = "docker.io/library/vmrunbox:local";

    let out = p.run(&[
        "run",
        "--rm",
        image,
        "sh",
        "-c",
        "echo hi from $(uname -r); exit 7",
    ]);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("hi from "), "{stdout}");
    assert_ne!(stdout.trim_start_matches("hi from ").trim(), host.trim());

    let out = p.run(&["run", "-d", "--name", "p1", image, "sleep", "300"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let out = p.run(&["exec", "p1", "sh", "-c", "echo exec-ok; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "exec: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "exec-ok\n");
    let out = p.run(&["stop", "-t", "2", "p1"]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    let out = p.run(&["rm", "p1"]);
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    let out = p.run(&["rmi", "-f", image]);
    assert!(out.status.success(), "rmi: {}", text(&out.stderr));
    // Nothing of the containers is left in vmrun's state root.
    let left: Vec<_> = std::fs::read_dir(env.root())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "@sandboxes")
        .collect();
    assert!(left.is_empty(), "vmrun state left: {left:?}");
    let _ = p.run(&["system", "reset", "--force"]);
}
