// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun` container lifecycle end to end, on real microVMs (QEMU/TCG here) with the real
//! guest kernel and agent: create/start/state/kill/delete, the monitor as the container's pid,
//! `delete --force`, a second create with the same id, a binary missing from the rootfs; and
//! after each, nothing left behind (no process, mount, socket, state or sandbox directory).

use std::time::Duration;

use vmrun_tests::cli::{busybox_bundle, require_cli_artifacts, text, BundleOpts, CliEnv};

const T: Duration = Duration::from_secs(60);

fn pid_alive(pid: i64) -> bool {
    i32::try_from(pid).is_ok_and(vmrun_tests::cli::process_alive)
}

#[test]
fn lifecycle_create_start_kill_delete() {
    if !require_cli_artifacts("cli_lifecycle") {
        return;
    }
    let env = CliEnv::new("life");
    // No pid namespace: the process is not a namespace init, so SIGTERM without a handler
    // kills it (exit status 128 + 15).
    let mut opts = BundleOpts::new(&["sh", "-c", "echo started; exec sleep 300"]);
    opts.pid_namespace = false;
    let b = busybox_bundle(env.dir(), "b", &opts, |_| {});

    let out = env.create(&b, "c1");
    assert!(out.status.success(), "create failed: {}", text(&out.stderr));
    let st = env.state("c1").unwrap();
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["id"], "c1");
    assert_eq!(st["bundle"], b.to_string_lossy().as_ref());
    let pid = st["pid"].as_i64().unwrap();
    let pid_file = std::fs::read_to_string(env.dir().join("c1.pid")).unwrap();
    assert_eq!(
        pid_file.trim(),
        pid.to_string(),
        "--pid-file holds the monitor's pid"
    );
    assert!(pid_alive(pid));
    // Nothing ran yet.
    assert_eq!(
        std::fs::read_to_string(env.dir().join("c1.out")).unwrap(),
        ""
    );

    // A second create with the same id is refused and leaves the first alone.
    let dup = env.create(&b, "c1");
    assert_eq!(dup.status.code(), Some(1));
    assert!(
        text(&dup.stderr).contains("container with id exists: c1"),
        "{}",
        text(&dup.stderr)
    );
    assert_eq!(env.state("c1").unwrap()["status"], "created");

    // Starting twice: the second start is refused.
    let out = env.run(&["start", "c1"], T);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    assert_eq!(env.state("c1").unwrap()["status"], "running");
    let again = env.run(&["start", "c1"], T);
    assert_eq!(again.status.code(), Some(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(env.dir().join("c1.out"))
        .unwrap()
        .contains("started")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the container's output never arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let list = env.run(&["list", "--format", "json"], T);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["id"], "c1");
    assert_eq!(list[0]["status"], "running");

    // exec while running: output and exit status of the extra process.
    let ex = env.run(
        &[
            "exec",
            "c1",
            "sh",
            "-c",
            "echo exec-out; echo exec-err >&2; exit 3",
        ],
        T,
    );
    assert_eq!(ex.status.code(), Some(3), "exec: {}", text(&ex.stderr));
    assert_eq!(text(&ex.stdout), "exec-out\n");
    assert!(text(&ex.stderr).contains("exec-err"));
    // ps lists the container's processes (guest pids).
    let ps = env.run(&["ps", "--format", "json", "c1"], T);
    assert!(ps.status.success(), "ps: {}", text(&ps.stderr));
    let pids: Vec<u32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(!pids.is_empty(), "no processes listed");
    // pause / resume.
    let p = env.run(&["pause", "c1"], T);
    assert!(p.status.success(), "pause: {}", text(&p.stderr));
    assert_eq!(env.state("c1").unwrap()["status"], "paused");
    let r = env.run(&["resume", "c1"], T);
    assert!(r.status.success(), "resume: {}", text(&r.stderr));
    assert_eq!(env.state("c1").unwrap()["status"], "running");

    // update: new cgroup limits, seen from inside the container.
    let res = env.dir().join("resources.json");
    std::fs::write(
        &res,
        r#"{"pids": {"limit": 50}, "memory": {"limit": 67108864}}"#,
    )
    .unwrap();
    let up = env.run(&["update", "--resources", &res.to_string_lossy(), "c1"], T);
    assert!(up.status.success(), "update: {}", text(&up.stderr));
    let ex = env.run(
        &[
            "exec",
            "c1",
            "cat",
            "/sys/fs/cgroup/pids.max",
            "/sys/fs/cgroup/memory.max",
        ],
        T,
    );
    assert_eq!(text(&ex.stdout), "50\n67108864\n", "{}", text(&ex.stderr));

    // A running container cannot be deleted without --force.
    let del = env.run(&["delete", "c1"], T);
    assert_eq!(del.status.code(), Some(1));
    assert!(
        text(&del.stderr).contains("not stopped"),
        "{}",
        text(&del.stderr)
    );

    let out = env.run(&["kill", "c1", "TERM"], T);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let st = env.wait_status("c1", "stopped", Duration::from_secs(60));
    assert_eq!(st["pid"], 0);
    // The monitor has exited with the container's status; the state stays until delete.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pid_alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "monitor {pid} did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // kill of a stopped container fails (runc), kill --all does not.
    assert_eq!(env.run(&["kill", "c1", "KILL"], T).status.code(), Some(1));
    assert!(env
        .run(&["kill", "--all", "c1", "KILL"], T)
        .status
        .success());
    let out = env.run(&["delete", "c1"], T);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    assert!(env.state("c1").is_none());
    env.assert_nothing_left("c1");
}

#[test]
fn delete_force_of_a_running_container() {
    if !require_cli_artifacts("cli_delete_force") {
        return;
    }
    let env = CliEnv::new("force");
    let b = busybox_bundle(env.dir(), "b", &BundleOpts::new(&["sleep", "300"]), |_| {});
    // run -d: create + start, detached; the monitor's pid goes to --pid-file.
    let pid_file = env.dir().join("f1.pid");
    let out = env.run(
        &[
            "run",
            "-d",
            "--bundle",
            &b.to_string_lossy(),
            "--pid-file",
            &pid_file.to_string_lossy(),
            "f1",
        ],
        Duration::from_secs(240),
    );
    assert!(out.status.success(), "run -d failed: {}", text(&out.stderr));
    let st = env.state("f1").unwrap();
    assert_eq!(st["status"], "running");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        st["pid"].to_string()
    );
    let out = env.run(&["delete", "--force", "f1"], T);
    assert!(
        out.status.success(),
        "delete --force: {}",
        text(&out.stderr)
    );
    assert!(env.state("f1").is_none());
    env.assert_nothing_left("f1");
}

#[test]
fn binary_missing_from_rootfs_is_a_clear_error_leaving_nothing() {
    if !require_cli_artifacts("cli_missing_binary") {
        return;
    }
    let env = CliEnv::new("nobin");
    let b = busybox_bundle(
        env.dir(),
        "b",
        &BundleOpts::new(&["/bin/no-such-binary"]),
        |_| {},
    );
    let out = env.create(&b, "m1");
    let err = text(&out.stderr);
    if out.status.success() {
        // Like runc, the error may only surface at start; either way it must be clear.
        let start = env.run(&["start", "m1"], T);
        let serr = text(&start.stderr);
        assert_eq!(
            start.status.code(),
            Some(1),
            "start of a missing binary succeeded"
        );
        assert!(serr.contains("no-such-binary"), "unclear error: {serr}");
        assert!(env.run(&["delete", "--force", "m1"], T).status.success());
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(err.contains("no-such-binary"), "unclear error: {err}");
    }
    env.assert_nothing_left("m1");
}
