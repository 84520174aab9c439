// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! The monitor's pid contract (what conmon and containerd's runc shim rely on), on real
//! microVMs: a pty master sent to `--console-socket`, `exec -d --pid-file` leaving a process
//! that exits with the exec'd process's status, the monitor killed (container `stopped`, then
//! cleaned up by `delete`), the VM killed (the monitor exits non-zero, `state` says
//! `stopped`), and two containers created concurrently.
//!
//! The test process makes itself a child subreaper, as conmon does, so that it can wait for the
//! monitors that `create` and `exec -d` leave behind and read their exit status.

use std::io::{IoSliceMut, Read};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use vmrun_tests::cli::{
    busybox_bundle, process_alive, processes_mentioning, require_cli_artifacts, text, BundleOpts,
    CliEnv,
};

const T: Duration = Duration::from_secs(60);

fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes this process's attributes.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Waits for a (reparented) descendant `pid` and returns its exit status code.
fn wait_pid(pid: i32, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with WNOHANG writes only into `status`.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if rc < 0 || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn monitor_pid(env: &CliEnv, id: &str) -> i32 {
    let st = env.state(id).expect("state");
    i32::try_from(st["pid"].as_i64().expect("pid")).expect("pid fits")
}

#[test]
fn console_socket_gets_a_working_pty_master() {
    if !require_cli_artifacts("cli_console_socket") {
        return;
    }
    let env = CliEnv::new("tty");
    let b = busybox_bundle(
        env.dir(),
        "b",
        &BundleOpts::new(&["sh", "-c", "tty; echo answer=$((6*7)); read x; echo got=$x"]),
        |s| s["process"]["terminal"] = serde_json::json!(true),
    );
    let sock_path = env.dir().join("console.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    let receiver = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut fd = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: received with SCM_RIGHTS just now; nobody else owns it.
                fd = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            }
        }
        fd.expect("a pty master")
    });
    let mut cmd = env.vmrun(&[
        "create",
        "--bundle",
        &b.to_string_lossy(),
        "--console-socket",
        &sock_path.to_string_lossy(),
        "k1",
    ]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.dir().join("k1.err")).unwrap());
    let st = vmrun_tests::cli::wait_bounded(&mut cmd.spawn().unwrap(), Duration::from_secs(240));
    let err = std::fs::read_to_string(env.dir().join("k1.err")).unwrap();
    assert!(st.success(), "create: {err}");
    let master = std::fs::File::from(receiver.join().unwrap());
    assert!(env.run(&["start", "k1"], T).status.success());
    let mut m = master;
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + T;
    while !text(&out).contains("answer=42") {
        assert!(
            Instant::now() < deadline,
            "no output on the pty: {}",
            text(&out)
        );
        let n = m.read(&mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
    }
    assert!(text(&out).contains("/dev/pts/"), "tty: {}", text(&out));
    // Input typed on the master reaches the container (the guest pty echoes it back too).
    std::io::Write::write_all(&mut m, b"typed\r").unwrap();
    while !text(&out).contains("got=typed") {
        assert!(
            Instant::now() < deadline,
            "input did not arrive: {}",
            text(&out)
        );
        let n = m.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert!(text(&out).contains("got=typed"), "{}", text(&out));
    env.wait_status("k1", "stopped", T);
    assert!(env.run(&["delete", "k1"], T).status.success());
    env.assert_nothing_left("k1");
}

#[test]
fn exec_detached_pid_contract_and_monitor_exit_status() {
    if !require_cli_artifacts("cli_exec_detached") {
        return;
    }
    become_subreaper();
    let env = CliEnv::new("execd");
    let b = busybox_bundle(
        env.dir(),
        "b",
        &BundleOpts::new(&["sh", "-c", "sleep 300"]),
        |_| {},
    );
    let out = env.create(&b, "e1");
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    assert!(env.run(&["start", "e1"], T).status.success());
    let pid_file = env.dir().join("exec.pid");
    let started = Instant::now();
    let out = env.run(
        &[
            "exec",
            "-d",
            "--pid-file",
            &pid_file.to_string_lossy(),
            "e1",
            "sh",
            "-c",
            "sleep 2; exit 5",
        ],
        T,
    );
    assert!(out.status.success(), "exec -d: {}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(30));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        process_alive(pid),
        "the exec monitor must live as long as the process"
    );
    assert_eq!(
        wait_pid(pid, T),
        Some(5),
        "the exec monitor exits with the process's status"
    );

    // The container's monitor exits with the container's status: SIGKILL from kill gives 137.
    let mon = monitor_pid(&env, "e1");
    assert!(env.run(&["kill", "e1", "KILL"], T).status.success());
    assert_eq!(wait_pid(mon, T), Some(137));
    env.wait_status("e1", "stopped", T);
    assert!(env.run(&["delete", "e1"], T).status.success());
    env.assert_nothing_left("e1");
}

#[test]
fn monitor_killed_then_delete_cleans_up() {
    if !require_cli_artifacts("cli_monitor_killed") {
        return;
    }
    let env = CliEnv::new("monkill");
    let b = busybox_bundle(env.dir(), "b", &BundleOpts::new(&["sleep", "300"]), |_| {});
    let out = env.create(&b, "m1");
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    assert!(env.run(&["start", "m1"], T).status.success());
    let mon = monitor_pid(&env, "m1");
    // SAFETY: kill(2) of the monitor's pid, read from `state` just now.
    unsafe {
        libc::kill(mon, libc::SIGKILL);
    }
    let st = env.wait_status("m1", "stopped", T);
    assert_eq!(st["pid"], 0);
    // The hypervisor and daemons die with the monitor (PR_SET_PDEATHSIG).
    let deadline = Instant::now() + T;
    while processes_mentioning(env.dir()).iter().any(|&p| p != mon) {
        assert!(
            Instant::now() < deadline,
            "sandbox processes outlived the monitor"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = env.run(&["delete", "m1"], T);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_nothing_left("m1");
}

#[test]
fn vm_killed_monitor_exits_nonzero_and_state_is_stopped() {
    if !require_cli_artifacts("cli_vm_killed") {
        return;
    }
    become_subreaper();
    let env = CliEnv::new("vmkill");
    let b = busybox_bundle(env.dir(), "b", &BundleOpts::new(&["sleep", "300"]), |_| {});
    let out = env.create(&b, "v1");
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    assert!(env.run(&["start", "v1"], T).status.success());
    let mon = monitor_pid(&env, "v1");
    let qemu: Vec<i32> = processes_mentioning(env.dir())
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("qemu"))
        })
        .collect();
    assert_eq!(qemu.len(), 1, "one hypervisor process");
    // SAFETY: kill(2) of the hypervisor's pid found above.
    unsafe {
        libc::kill(qemu[0], libc::SIGKILL);
    }
    let code = wait_pid(mon, T);
    assert!(matches!(code, Some(c) if c != 0), "monitor exit: {code:?}");
    let st = env.state("v1").unwrap();
    assert_eq!(st["status"], "stopped");
    assert!(env.run(&["delete", "v1"], T).status.success());
    env.assert_nothing_left("v1");
}

#[test]
fn two_containers_created_concurrently() {
    if !require_cli_artifacts("cli_concurrent_create") {
        return;
    }
    let env = std::sync::Arc::new(CliEnv::new("conc"));
    let b = busybox_bundle(env.dir(), "b", &BundleOpts::new(&["sleep", "300"]), |_| {});
    let handles: Vec<_> = ["p1", "p2"]
        .into_iter()
        .map(|id| {
            let env = std::sync::Arc::clone(&env);
            let b = b.clone();
            std::thread::spawn(move || env.create(&b, id))
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(out.status.success(), "create: {}", text(&out.stderr));
    }
    for id in ["p1", "p2"] {
        assert!(env.run(&["start", id], T).status.success());
        assert_eq!(env.state(id).unwrap()["status"], "running");
    }
    assert_ne!(monitor_pid(&env, "p1"), monitor_pid(&env, "p2"));
    for id in ["p1", "p2"] {
        assert!(env.run(&["delete", "--force", id], T).status.success());
    }
    for id in ["p1", "p2"] {
        env.assert_nothing_left(id);
    }
}
