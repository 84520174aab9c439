// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `containerd-shim-vmrun-v2` driven by a real (private) containerd through `ctr`: output and
//! exit codes, a terminal with resize, exec, ps, pause/resume, metrics, kill, concurrent
//! containers, a shim killed under a running container, VMs killed under running tasks
//! (status 255), `kill -s 9` (status 137), and nothing left behind.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vmrun_tests::cli::{require_cli_artifacts, run_bounded, text};
use vmrun_tests::containerd::{Containerd, RUNTIME};

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("osrelease")
        .trim()
        .to_owned()
}

/// (Rss, Pss) in KiB of a process, from /proc/<pid>/smaps_rollup.
fn rss_pss_kib(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// Prints the host memory of one idle pod: the shim plus the VM's processes.
fn print_pod_memory(c: &Containerd) {
    let mut total = (0, 0);
    let shims = c.shim_pids();
    let vm = vmrun_tests::cli::processes_mentioning(&c.shim_root());
    for pid in shims.iter().chain(vm.iter()) {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let (rss, pss) = rss_pss_kib(*pid);
        println!(
            "idle pod memory: {pid} {}: RSS {rss} KiB, PSS {pss} KiB",
            name.trim()
        );
        total = (total.0 + rss, total.1 + pss);
    }
    println!(
        "idle pod memory: shim + VM processes: RSS {} MiB, PSS {} MiB",
        total.0 / 1024,
        total.1 / 1024
    );
}

fn wait_task_status(c: &Containerd, id: &str, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let ls = text(&c.ctr(&["task", "ls"]).stdout);
        if ls
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id) && l.contains(want))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never became {want}: {ls}\n{}",
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ctr run -d` of `sleep 300` as `id`, running.
fn run_detached(c: &Containerd, image: &str, id: &str) {
    let out = c.ctr(&["run", "-d", "--runtime", RUNTIME, image, id, "sleep", "300"]);
    assert!(out.status.success(), "run -d {id}: {}", text(&out.stderr));
    wait_task_status(c, id, "RUNNING", Duration::from_secs(60));
}

#[test]
fn ctr_run_exec_pause_metrics_kill() {
    if !require_cli_artifacts("shim_ctr_run_exec_pause_metrics_kill") {
        return;
    }
    let c = Containerd::start("shimctr");
    let image = c.import_busybox();

    // Output and exit code; the kernel is the guest's.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        image,
        "t1",
        "sh",
        "-c",
        "uname -r; exit 5",
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "stdout {} stderr {}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        c.log_tail()
    );
    let guest = text(&out.stdout).trim().to_owned();
    assert!(!guest.is_empty(), "no output");
    assert_ne!(guest, host_kernel(), "uname -r printed the host kernel");
    println!("guest kernel {guest} (host {})", host_kernel());

    // A long-running task: exec, ps, pause/resume, metrics, kill.
    run_detached(&c, image, "t2");
    print_pod_memory(&c);
    let out = c.ctr(&[
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
    let out = c.ctr(&["task", "ps", "t2"]);
    assert!(out.status.success(), "ps: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).lines().count() >= 2,
        "ps shows no process: {}",
        text(&out.stdout)
    );
    assert!(c.ctr(&["task", "pause", "t2"]).status.success());
    wait_task_status(&c, "t2", "PAUSED", Duration::from_secs(10));
    assert!(c.ctr(&["task", "resume", "t2"]).status.success());
    wait_task_status(&c, "t2", "RUNNING", Duration::from_secs(10));
    let out = c.ctr(&["task", "metrics", "t2"]);
    assert!(out.status.success(), "metrics: {}", text(&out.stderr));
    let metrics = text(&out.stdout);
    println!("ctr task metrics t2:\n{metrics}");
    assert!(
        metrics.contains("memory.usage_in_bytes") || metrics.contains("memory"),
        "metrics: {metrics}"
    );
    let out = c.ctr(&["task", "kill", "-s", "KILL", "t2"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    wait_task_status(&c, "t2", "STOPPED", Duration::from_secs(60));
    let out = c.ctr(&["task", "delete", "t2"]);
    assert!(out.status.success(), "task delete: {}", text(&out.stderr));
    assert!(c.ctr(&["container", "delete", "t2"]).status.success());

    // Bad input: an unknown task gets a clear error, nothing breaks.
    let out = c.ctr(&["task", "kill", "nosuch"]);
    assert!(!out.status.success());

    c.assert_nothing_left(Duration::from_secs(60));
    assert!(c.shim_pids().is_empty(), "shims left: {:?}", c.shim_pids());
}

#[test]
fn ctr_terminal_with_resize() {
    if !require_cli_artifacts("shim_ctr_terminal_with_resize") {
        return;
    }
    let c = Containerd::start("shimtty");
    let image = c.import_busybox();
    // ctr -t needs a terminal: script(1) gives it one of 33 rows and 97 columns.
    let ctr = c.ctr_command(&[]);
    let mut line = format!("stty rows 33 cols 97; {:?}", ctr.get_program());
    for a in ctr.get_args() {
        line.push(' ');
        line.push_str(&a.to_string_lossy());
    }
    line.push_str(&format!(
        " run --rm -t --runtime {RUNTIME} {image} tt1 sh -c 'stty size; tty; exit 3'"
    ));
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    let out = run_bounded(cmd, Duration::from_secs(300));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("33 97"),
        "stty size: {stdout}\n{}",
        c.log_tail()
    );
    assert!(stdout.contains("/dev/pts/"), "tty: {stdout}");
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    c.assert_nothing_left(Duration::from_secs(60));
}

#[test]
fn ctr_concurrent_containers() {
    if !require_cli_artifacts("shim_ctr_concurrent_containers") {
        return;
    }
    let c = Containerd::start("shimconc");
    let image = c.import_busybox();
    const N: usize = 8;
    let children: Vec<_> = (0..N)
        .map(|i| {
            let id = format!("c{i}");
            let mut cmd = c.ctr_command(&[
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                image,
                &id,
                "sh",
                "-c",
                &format!("echo out-{i}; exit {i}"),
            ]);
            std::thread::spawn(move || {
                let out = run_bounded(
                    std::mem::replace(&mut cmd, Command::new("true")),
                    Duration::from_secs(600),
                );
                (i, out)
            })
        })
        .collect();
    for h in children {
        let (i, out) = h.join().expect("thread");
        assert_eq!(
            out.status.code(),
            i32::try_from(i).ok(),
            "c{i}: {} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), format!("out-{i}\n"));
    }
    c.assert_nothing_left(Duration::from_secs(120));
}

#[test]
fn ctr_shim_killed_then_cleaned_up() {
    if !require_cli_artifacts("shim_ctr_shim_killed_then_cleaned_up") {
        return;
    }
    let mut c = Containerd::start("shimkill");
    let image = c.import_busybox();

    // containerd restarted: the shim keeps running and containerd reconnects.
    run_detached(&c, image, "k0");
    c.restart();
    wait_task_status(&c, "k0", "RUNNING", Duration::from_secs(30));
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "k0",
        "echo",
        "still-here",
    ]);
    assert_eq!(text(&out.stdout), "still-here\n", "{}", text(&out.stderr));

    // The shim killed: containerd sees the task exit and `delete` cleans up.
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "one shim expected: {shims:?}");
    // SAFETY: kill(2) of the shim this test started.
    unsafe { libc::kill(shims[0], libc::SIGKILL) };
    // containerd cleans up a dead shim's task itself (exit 137, task deleted).
    let deadline = Instant::now() + Duration::from_secs(60);
    while text(&c.ctr(&["task", "ls"]).stdout).contains("RUNNING") {
        assert!(
            Instant::now() < deadline,
            "task k0 still running\n{}",
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The shim's `delete`, run by containerd when the shim's connection closed, removed the
    // sandbox: the shim may still have been exiting then, and must not count as alive.
    c.assert_nothing_left(Duration::from_secs(60));
    // What the shim's `delete` told containerd (e.g. that the shim was still exiting).
    let log = c.log();
    for line in log.lines().filter(|l| l.contains("cleanup warnings")) {
        println!("containerd log: {line}");
    }
    let _ = c.ctr(&["task", "delete", "k0"]);
    assert!(c.ctr(&["container", "delete", "k0"]).status.success());
    c.assert_nothing_left(Duration::from_secs(60));
}

/// Starts `ctr run` (attached, no `--rm`) of `sleep 300` as `id` on a thread; its exit code is
/// the status that the task's Wait returned.
fn run_attached(c: &Containerd, image: &str, id: &str) -> std::thread::JoinHandle<Output> {
    let cmd = c.ctr_command(&["run", "--runtime", RUNTIME, image, id, "sleep", "300"]);
    std::thread::spawn(move || run_bounded(cmd, Duration::from_secs(300)))
}

/// The waiter of a task, if it is still there after `timeout`, failing the test.
fn join_within(h: std::thread::JoinHandle<Output>, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "ctr run did not return");
        std::thread::sleep(Duration::from_millis(100));
    }
    h.join().expect("ctr run thread")
}

#[test]
fn ctr_vm_killed_under_running_tasks() {
    if !require_cli_artifacts("shim_ctr_vm_killed_under_running_tasks") {
        return;
    }
    let c = Containerd::start("shimvmdie");
    let image = c.import_busybox();
    // Two pods: one attached (its Wait), one detached (its state and delete).
    let attached = run_attached(&c, image, "w0");
    run_detached(&c, image, "d0");
    wait_task_status(&c, "w0", "RUNNING", Duration::from_secs(60));
    let vms = c.hypervisor_pids();
    assert_eq!(vms.len(), 2, "two VMs expected: {vms:?}");
    for pid in vms {
        // SAFETY: kill(2) of a hypervisor of this test's pods (found under its shim root).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let out = join_within(attached, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(255),
        "Wait of a task whose VM died: stdout {} stderr {}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        c.log_tail()
    );
    wait_task_status(&c, "d0", "STOPPED", Duration::from_secs(30));
    // ctr 1.6 reports the deleted task's non-zero status as a warning.
    let out = c.ctr(&["task", "delete", "d0"]);
    assert!(out.status.success(), "task delete: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("exit code 255"),
        "task delete: {}",
        text(&out.stderr)
    );
    for id in ["w0", "d0"] {
        assert!(c.ctr(&["container", "delete", id]).status.success());
    }
    c.assert_nothing_left(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.shim_pids().is_empty() {
        assert!(Instant::now() < deadline, "shims left: {:?}", c.shim_pids());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ctr_kill_9_exit_status_137() {
    if !require_cli_artifacts("shim_ctr_kill_9_exit_status_137") {
        return;
    }
    let c = Containerd::start("shimkill9");
    let image = c.import_busybox();
    let attached = run_attached(&c, image, "s9");
    wait_task_status(&c, "s9", "RUNNING", Duration::from_secs(60));
    let out = c.ctr(&["task", "kill", "-s", "9", "s9"]);
    assert!(out.status.success(), "kill -s 9: {}", text(&out.stderr));
    let out = join_within(attached, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(137),
        "Wait after SIGKILL: {}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    // A second kill: the task is gone; a clear error, nothing breaks.
    let out = c.ctr(&["task", "kill", "-s", "9", "s9"]);
    assert!(!out.status.success(), "kill of a deleted task succeeded");
    assert!(c.ctr(&["container", "delete", "s9"]).status.success());
    c.assert_nothing_left(Duration::from_secs(60));
}
