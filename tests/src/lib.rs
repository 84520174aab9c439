// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Shared helpers for vmrun's system tests: real VMs, real containers, real daemons.
//!
//! - [`artifacts_dir`] and [`host_bin`] find what `scripts/setup` built (never `/usr/local`).
//! - [`require_kvm`] and [`require_hardware_kvm`] decide whether a test may run, print the reason
//!   when it may not, and turn a KVM skip into a failure under `VMRUN_REQUIRE_KVM=1` (CI).
//! - [`ProcessGroup`] owns a child process group and kills it on drop, so a failing test never
//!   leaves a VMM or daemon behind.
//!
//! Every test that runs or skips prints one `vmrun-test:` line; `scripts/test` counts them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub mod cli;
pub mod containerd;
pub mod net;
pub mod podman;
pub mod sandbox;
pub mod vmm;

/// How the host's `/dev/kvm` can run guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// VT-x/AMD-V: stock Linux guests run at native speed.
    Hardware,
    /// `kvm_pvm`: guest ring 3 runs natively, ring 0 is emulated (see DESIGN.md).
    Pvm,
    /// No usable `/dev/kvm`.
    Missing,
}

/// Detects the host's KVM kind from `/dev/kvm` and `/sys/module/kvm_pvm`.
pub fn kvm_kind() -> KvmKind {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        KvmKind::Missing
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        KvmKind::Pvm
    } else {
        KvmKind::Hardware
    }
}

/// Whether `VMRUN_REQUIRE_KVM=1` is set (CI): a skipped KVM test then fails.
pub fn kvm_required() -> bool {
    std::env::var("VMRUN_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

/// Gate for tests that drive guest test programs under KVM (any kind, PVM included).
///
/// Returns `true` and prints `vmrun-test: kvm-ran <test>` when `/dev/kvm` is usable; otherwise
/// prints the skip reason and returns `false`, or panics when `VMRUN_REQUIRE_KVM=1`.
pub fn require_kvm(test: &str) -> bool {
    if kvm_kind() == KvmKind::Missing {
        let reason = "/dev/kvm is missing or not accessible";
        assert!(!kvm_required(), "{test}: {reason}, and VMRUN_REQUIRE_KVM=1");
        println!("vmrun-test: skipped {test}: {reason}");
        return false;
    }
    println!("vmrun-test: kvm-ran {test}");
    true
}

/// Gate for tests that need Linux on `vmrun-vmm`, i.e. a VT-x/AMD-V host: they skip on PVM
/// (a stock guest kernel cannot reach userspace there) and where KVM is missing.
pub fn require_hardware_kvm(test: &str) -> bool {
    match kvm_kind() {
        KvmKind::Hardware => {
            println!("vmrun-test: kvm-ran {test}");
            true
        }
        KvmKind::Pvm => {
            println!(
                "vmrun-test: skipped {test}: /dev/kvm is PVM (kvm_pvm), which cannot run a stock Linux guest"
            );
            false
        }
        KvmKind::Missing => {
            println!("vmrun-test: skipped {test}: /dev/kvm is missing");
            false
        }
    }
}

/// The directory `scripts/setup` fills with guest artifacts (`vmlinux`, `bzImage`,
/// `initramfs.cpio`, `vmrun-agent`) and daemon links: `VMRUN_ARTIFACTS`, else
/// `<workspace>/target/artifacts`.
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("VMRUN_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/artifacts"))
}

/// A guest artifact by file name, with a clear panic if `scripts/setup` has not made it.
pub fn artifact(name: &str) -> PathBuf {
    let path = artifacts_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup first (or set VMRUN_ARTIFACTS)",
        path.display()
    );
    path
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// A host binary of this workspace (`vmrun`, `vmrun-vmm`, ...) of the running test's profile:
/// it sits next to the test executable's `deps/` directory. `cargo test` does not build another
/// package's binaries, so `scripts/test` runs `cargo build --release --workspace --bins` first.
pub fn host_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in <target>/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A child process leading its own process group; the whole group is killed on drop.
#[derive(Debug)]
pub struct ProcessGroup {
    child: Child,
}

impl ProcessGroup {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let child = cmd.process_group(0).spawn()?;
        Ok(Self { child })
    }

    /// The leader's pid (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child, for its pipes and status.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the leader to exit, at most `timeout`; `None` if it is still running.
    pub fn wait_timeout(
        &mut self,
        timeout: Duration,
    ) -> std::io::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let Ok(pgid) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: killpg(2) with a process group id this struct created; no memory is involved.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
