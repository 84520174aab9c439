// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! containerd's runc shim driving `vmrun` as its runc binary (`ctr run --runc-binary`, the
//! same as `BinaryName` in a runtime's options): `run --rm` with output and exit status,
//! `run -d`, `task exec`, `task ps`, `task kill`, delete. containerd runs with a private
//! root, state and socket in the test's directory; the shim keeps runc's fixed state root
//! `/run/containerd/runc/<namespace>`, so the test uses a namespace of its own.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmrun_tests::cli::{
    busybox_image, processes_mentioning, require_cli_artifacts, run_bounded, text, CliEnv,
};
use vmrun_tests::{host_bin, ProcessGroup};

const T: Duration = Duration::from_secs(240);

#[test]
fn containerd_runc_shim_runs_vmrun() {
    if !require_cli_artifacts("cli_containerd") {
        return;
    }
    assert!(
        std::path::Path::new("/usr/bin/containerd").exists(),
        "containerd is not installed: run scripts/setup"
    );
    let env = CliEnv::new("ctrd");
    let d = env.dir().to_path_buf();
    let ns = format!("vmrun-test-{}", std::process::id());
    let runc_root = std::path::PathBuf::from("/run/containerd/runc").join(&ns);
    let wrapper = d.join("vmrun-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport VMRUN_CONFIG={}\nexec {} \"$@\"\n",
            d.join("config.toml").display(),
            host_bin("vmrun").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let sock = d.join("c.sock");
    std::fs::write(
        d.join("containerd.toml"),
        format!(
            "version = 2\nroot = \"{0}/c-root\"\nstate = \"{0}/c-state\"\n[grpc]\n  address = \"{1}\"\n\
             [ttrpc]\n  address = \"{1}.ttrpc\"\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20   disable_cgroup = true\n",
            d.display(),
            sock.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("containerd.log")).unwrap();
    let _containerd = ProcessGroup::spawn(
        Command::new("containerd")
            .arg("--config")
            .arg(d.join("containerd.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap();
    let ctr = |args: &[&str]| {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&sock).args(["-n", &ns]).args(args);
        run_bounded(cmd, T)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctr(&["version"]).status.success() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tar = busybox_image(&d.join("img"));
    let out = ctr(&["images", "import", &tar.to_string_lossy()]);
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    let image = "docker.io/library/vmrunbox:local";
    let rb = wrapper.to_string_lossy().into_owned();

    let out = ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        &rb,
        image,
        "t1",
        "sh",
        "-c",
        "echo hi from $(uname -r); exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "stderr: {}", text(&out.stderr));
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("hi from "), "{stdout}");
    assert_ne!(stdout.trim_start_matches("hi from ").trim(), host.trim());

    let out = ctr(&[
        "run",
        "-d",
        "--runc-binary",
        &rb,
        image,
        "t2",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let out = ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t2",
        "sh",
        "-c",
        "echo exec-ok; exit 6",
    ]);
    assert_eq!(out.status.code(), Some(6), "exec: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "exec-ok\n");
    let out = ctr(&["task", "ps", "t2"]);
    assert!(out.status.success(), "ps: {}", text(&out.stderr));
    let out = ctr(&["task", "kill", "-s", "KILL", "t2"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(&ctr(&["task", "ls"]).stdout).contains("STOPPED") {
        assert!(Instant::now() < deadline, "task t2 never stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ctr(&["task", "delete", "t2"]).status.success());
    assert!(ctr(&["container", "delete", "t2"]).status.success());
    assert!(ctr(&["images", "rm", image]).status.success());

    // vmrun's state under the shim's runc root is gone, and no VM is left.
    let left: Vec<_> = std::fs::read_dir(&runc_root)
        .map(|r| r.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n == "@sandboxes"),
        "vmrun state left: {left:?}"
    );
    let sandboxes = runc_root.join("@sandboxes");
    let sb_left = std::fs::read_dir(&sandboxes)
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(sb_left, 0, "sandbox directories left");
    assert!(
        processes_mentioning(&runc_root).is_empty(),
        "VM processes left"
    );
    let _ = std::fs::remove_dir(&sandboxes);
    let _ = std::fs::remove_dir(&runc_root);
}
