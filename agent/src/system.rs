// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! What the agent does as PID 1 of the guest: the early mounts, the console, the cgroup v2
//! controllers, and the ways out (clean shutdown announced on the exit-status port, reset on a
//! fatal error).
//!
//! Runs on the main thread before the async runtime starts, except [`power_off`], which the
//! Shutdown handler calls at the very end.

use std::fs;
use std::os::fd::IntoRawFd;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::{mkdir, sync};

/// Controllers enabled in the root cgroup's `cgroup.subtree_control` so that container cgroups
/// get them.
pub const CGROUP_CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "memory", "pids", "io"];

/// Where cgroup v2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A step of the early system set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A mount failed.
    #[error("mount {fstype} on {target}")]
    Mount {
        /// File system type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Creating a mount point failed.
    #[error("mkdir {path}")]
    Mkdir {
        /// The directory.
        path: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

struct EarlyMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// The mounts of a fresh guest, in order (a later target may live inside an earlier one).
const EARLY_MOUNTS: [EarlyMount; 8] = [
    EarlyMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    EarlyMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    EarlyMount {
        source: "dev",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    EarlyMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    EarlyMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    EarlyMount {
        source: "mqueue",
        target: "/dev/mqueue",
        fstype: "mqueue",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    EarlyMount {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
    EarlyMount {
        source: "cgroup2",
        target: CGROUP_ROOT,
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

/// Mounts proc, sys, dev, devpts, /dev/shm, /dev/mqueue, /run and cgroup2, skipping targets
/// that are already mount points of the right type (a second start, or a kernel automount).
pub fn mount_early() -> Result<(), SetupError> {
    for m in &EARLY_MOUNTS {
        if is_mounted(m.target, m.fstype) {
            continue;
        }
        match mkdir(m.target, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(source) => {
                return Err(SetupError::Mkdir {
                    path: m.target,
                    source,
                })
            }
        }
        mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data).map_err(|source| {
            SetupError::Mount {
                fstype: m.fstype,
                target: m.target,
                source,
            }
        })?;
    }
    Ok(())
}

fn is_mounted(target: &str, fstype: &str) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|l| {
        let mut w = l.split(' ');
        let (_, t, f) = (w.next(), w.next(), w.next());
        t == Some(target) && f == Some(fstype)
    })
}

/// Makes fds 0, 1 and 2 point at `/dev/console` unless they are already open (the kernel opens
/// the console for init when the initramfs has `/dev/console`).
pub fn setup_console() {
    // SAFETY: F_GETFD on a small integer only queries the fd table.
    let stdin_ok = unsafe { libc::fcntl(0, libc::F_GETFD) } != -1;
    if stdin_ok {
        return;
    }
    let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    let fd = console.into_raw_fd();
    for target in 0..3 {
        if fd != target {
            // SAFETY: dup2 onto the standard fds; `fd` is a valid open fd owned here.
            unsafe { libc::dup2(fd, target) };
        }
    }
    if fd > 2 {
        // SAFETY: `fd` came from into_raw_fd above and is owned by nobody else.
        unsafe { libc::close(fd) };
    }
}

/// Enables [`CGROUP_CONTROLLERS`] one by one in the root `cgroup.subtree_control`; returns the
/// ones that could not be enabled, with the error.
pub fn enable_cgroup_controllers(root: &Path) -> Vec<(String, String)> {
    let control = root.join("cgroup.subtree_control");
    let mut failed = Vec::new();
    for c in CGROUP_CONTROLLERS {
        if let Err(e) = fs::write(&control, format!("+{c}")) {
            failed.push((c.to_owned(), e.to_string()));
        }
    }
    failed
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn boot_time_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
        }
        Err(_) => 0,
    }
}

/// Writes one byte to an x86 I/O port, after asking the kernel for access with `ioperm`.
#[cfg(target_arch = "x86_64")]
fn outb(port: u16, value: u8) -> Result<(), nix::Error> {
    // SAFETY: ioperm only changes this thread's I/O permission bitmap.
    let rc = unsafe { libc::ioperm(libc::c_ulong::from(port), 1, 1) };
    if rc != 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: ioperm granted access to exactly this port; the `out` instruction touches no
    // memory and the exit-status device has no side effect on this process's memory.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn outb(_port: u16, _value: u8) -> Result<(), nix::Error> {
    Err(nix::Error::ENOSYS)
}

/// Ends the VM cleanly: syncs, announces the clean shutdown by writing
/// [`vmrun_protocol::CLEAN_SHUTDOWN_CODE`] to [`vmrun_protocol::EXIT_PORT`] (the VMM exits at
/// once with that status), then reboots (the VMM exits on the reset if the port is absent).
pub fn power_off() -> ! {
    sync();
    if let Err(e) = outb(
        vmrun_protocol::EXIT_PORT,
        vmrun_protocol::CLEAN_SHUTDOWN_CODE,
    ) {
        log::warn!("exit-status port: {e}");
    }
    reset()
}

/// Resets the VM without announcing a clean shutdown (the host reports a guest crash).
pub fn reset() -> ! {
    sync();
    loop {
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Reports a fatal error on the console and resets the VM; never returns.
pub fn fatal(err: &dyn std::fmt::Display) -> ! {
    eprintln!("vmrun-agent: FATAL {err}; resetting the VM");
    reset()
}

/// Installs a panic hook that prints the panic and resets the VM (PID 1 must never just die).
pub fn reset_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("vmrun-agent: FATAL panic: {info}; resetting the VM");
        reset();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_is_monotonic_and_positive() {
        let a = boot_time_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = boot_time_ms();
        assert!(a > 0 && b >= a + 4, "{a} {b}");
    }

    #[test]
    fn proc_is_detected_as_mounted() {
        assert!(is_mounted("/proc", "proc"));
        assert!(!is_mounted("/proc", "tmpfs"));
        assert!(!is_mounted("/definitely/not/here", "proc"));
    }

    #[test]
    fn cgroup_controllers_fail_cleanly_on_a_plain_dir() {
        let dir = std::env::temp_dir().join(format!("vmrun-agent-cg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // A regular directory accepts the write (it creates the file), so use a missing one.
        let failed = enable_cgroup_controllers(&dir.join("missing"));
        assert_eq!(failed.len(), CGROUP_CONTROLLERS.len());
        fs::remove_dir_all(&dir).unwrap();
    }
}
