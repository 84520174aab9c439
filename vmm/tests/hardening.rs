// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Hardening of `vmrun-vmm` under real KVM, with a guest that spins at CPL 3 (`jmp $`):
//!
//! * a forbidden syscall on the confined event-loop thread kills the whole VMM with SIGSYS (the
//!   real filters, installed by `Vmm::run`; the call is made by an event-loop subscriber added
//!   through the library in a child process, since the binary has no way to make one);
//! * `--user 65534:65534` runs the VM as nobody (checked in `/proc/PID/status`), with
//!   `RLIMIT_NOFILE` set and inherited fds closed.
//!
//! They skip with a printed reason when `/dev/kvm` cannot be opened, unless `VMRUN_REQUIRE_KVM=1`.
#![allow(clippy::unwrap_used)] // test code: a failed set-up step should fail the test loudly

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

const VMM: &str = env!("CARGO_BIN_EXE_vmrun-vmm");
const CHILD_ENV: &str = "VMRUN_VMM_SECCOMP_CHILD_KERNEL";

fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        assert!(
            std::env::var("VMRUN_REQUIRE_KVM").as_deref() != Ok("1"),
            "VMRUN_REQUIRE_KVM=1 but /dev/kvm is not accessible"
        );
        eprintln!("skipped: /dev/kvm not accessible");
    }
    ok
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmrun-vmm-hard-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A minimal ELF (one PT_LOAD at 2 MiB) whose code is `jmp $`.
fn spin_elf(dir: &Path) -> PathBuf {
    const BASE: u64 = 0x20_0000;
    let code = [0xeb, 0xfe];
    let hdrs = 64 + 56;
    let total = (hdrs + code.len()) as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&0x3eu16.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(BASE + hdrs as u64).to_le_bytes());
    f.extend_from_slice(&64u64.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&5u32.to_le_bytes());
    for v in [0u64, BASE, BASE, total, total, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&code);
    let p = dir.join("spin.elf");
    std::fs::write(&p, f).unwrap();
    p
}

/// An event-loop subscriber that fires at once and then tries to start a process, as a
/// compromised device back-end might.
struct ForbiddenCall(EventFd);

impl MutEventSubscriber for ForbiddenCall {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        eprintln!("seccomp-child: making a forbidden call");
        let r = Command::new("/bin/true").status();
        // Only reached if the filter let the call through.
        eprintln!("seccomp-child: NOT KILLED ({r:?})");
        std::process::exit(0);
    }

    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(&self.0, EventSet::IN)).unwrap();
        self.0.write(1).unwrap();
    }
}

/// The child half of `forbidden_syscall_kills_the_vmm` (run only by that test, in its own
/// process, because a seccomp kill takes the whole process down).
#[test]
#[ignore = "helper: started by forbidden_syscall_kills_the_vmm in a child process"]
fn seccomp_child() {
    let kernel = PathBuf::from(std::env::var_os(CHILD_ENV).expect("started by the parent test"));
    let mut cfg = vmrun_vmm::config::VmConfig::new(kernel);
    cfg.test_payload = true;
    cfg.memory_mib = 32;
    cfg.serial = vmrun_vmm::config::SerialOutput::None;
    let mut vmm = vmrun_vmm::builder::build_vm(&cfg).unwrap();
    vmm.add_subscriber(Arc::new(Mutex::new(ForbiddenCall(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ))));
    eprintln!("seccomp-child: running the VM");
    let reason = vmm.run();
    eprintln!("seccomp-child: NOT KILLED, run returned {reason:?}");
}

#[test]
fn forbidden_syscall_kills_the_vmm() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("seccomp");
    let kernel = spin_elf(&dir);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "seccomp_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &kernel)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "expected a SIGSYS kill: {:?}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("seccomp-child: making a forbidden call") && !stderr.contains("NOT KILLED"),
        "{stderr}"
    );
}

fn status_field(pid: u32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until `pid` has switched to `uid` (the VM is built and running then).
fn wait_uid(pid: u32, uid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if status_field(pid, "Uid:") == format!("{uid} {uid} {uid} {uid}") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn runs_as_nobody_with_limits_and_no_stray_fds() {
    if !kvm_available() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let dir = scratch("user");
    let kernel = spin_elf(&dir);
    // A stray inherited fd (CLOEXEC cleared in the child) that the VMM must close.
    let stray = std::fs::File::open(&kernel).unwrap();
    let stray_fd = stray.as_raw_fd();
    let mut cmd = Command::new(VMM);
    cmd.args(["--kernel", kernel.to_str().unwrap(), "--test-payload"])
        .args(["--memory-mib", "32", "--serial", "none", "--rng"])
        .args(["--user", "65534:65534"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only fcntl(2), async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(stray_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let switched = wait_uid(pid, "65534");
    let gid = status_field(pid, "Gid:");
    let groups = status_field(pid, "Groups:");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(switched && alive, "VMM did not run as 65534: {stderr}");
    assert_eq!(gid, "65534 65534 65534 65534");
    assert_eq!(groups, "");
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert!(limit("Max open files").contains("4096 4096"), "{limits}");
    assert!(
        !fds.iter().any(|f| f.ends_with("spin.elf")),
        "the inherited fd is still open: {fds:?}"
    );
    assert!(
        fds.iter().any(|f| f == "/dev/kvm" || f.contains("kvm")),
        "{fds:?}"
    );
}
