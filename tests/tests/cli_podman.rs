// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! podman (with conmon) driving `vmrun` as its OCI runtime: `run --rm` with the container's
//! output and exit status, `run -d`, `exec`, `stop`, `rm`. podman gets private storage, run
//! and tmp directories and a containers.conf naming `vmrun` (through a wrapper that adds the
//! test's `--root` and config), and a busybox image built from busybox-static without a
//! registry. podman's default seccomp profile applies: the agent installs it in the guest.

use std::path::Path;
use std::time::Duration;

use vmrun_tests::cli::{require_cli_artifacts, run_bounded, text, CliEnv};
use vmrun_tests::host_bin;
use vmrun_tests::podman::{Podman, IMAGE};

const T: Duration = Duration::from_secs(240);

/// `podman <args>`, bounded by [`T`].
fn podman(p: &Podman<'_>, args: &[&str]) -> std::process::Output {
    run_bounded(p.cmd(args), T)
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
    let p = Podman::setup(&env, &host_bin("vmrun"), "vmrun").unwrap_or_else(|e| panic!("{e}"));
    let image = IMAGE;

    let out = podman(
        &p,
        &[
            "run",
            "--rm",
            image,
            "sh",
            "-c",
            "echo hi from $(uname -r); exit 7",
        ],
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("hi from "), "{stdout}");
    assert_ne!(stdout.trim_start_matches("hi from ").trim(), host.trim());

    let out = podman(&p, &["run", "-d", "--name", "p1", image, "sleep", "300"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let out = podman(&p, &["exec", "p1", "sh", "-c", "echo exec-ok; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "exec: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "exec-ok\n");
    let out = podman(&p, &["stop", "-t", "2", "p1"]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    let out = podman(&p, &["rm", "p1"]);
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    let out = podman(&p, &["rmi", "-f", image]);
    assert!(out.status.success(), "rmi: {}", text(&out.stderr));
    // Nothing of the containers is left in vmrun's state root.
    let left: Vec<_> = std::fs::read_dir(env.root())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "@sandboxes")
        .collect();
    assert!(left.is_empty(), "vmrun state left: {left:?}");
    let _ = podman(&p, &["system", "reset", "--force"]);
}
