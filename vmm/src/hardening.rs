// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Process hardening around the VM build (on top of the seccomp filters in [`crate::seccomp`]):
//!
//! 1. before the build, every inherited fd except stdin/stdout/stderr and the tap fds named in
//!    the configuration is closed ([`close_inherited_fds`]);
//! 2. after the build (when `/dev/kvm`, guest memory, the taps, image files and sockets are
//!    open), `RLIMIT_NOFILE` is lowered ([`limit_open_files`]) and the process can switch to an
//!    unprivileged user and group ([`drop_privileges`], `--user UID:GID`);
//!
//! `RLIMIT_NPROC` is deliberately left alone: KVM starts a per-VM worker task on the first
//! `KVM_RUN` and charges it to the calling user, so a limit of "no new processes" made
//! `KVM_RUN` fail with EAGAIN forever for an unprivileged user (measured on this host's PVM
//! kernel). New threads and processes are refused by seccomp instead: `clone`, `fork` and
//! `execve` are in no thread's allow-list.

use std::os::fd::RawFd;

use crate::config::UserSpec;

/// The open-file limit the VMM sets on itself: the VM's own fds (KVM, eventfds, epoll, images,
/// sockets) plus room for host vsock connections.
pub const NOFILE_LIMIT: u64 = 4096;

/// Errors of the hardening steps.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    /// Listing or closing inherited fds failed.
    #[error("cannot close inherited file descriptors")]
    CloseFds(#[source] std::io::Error),
    /// A resource limit could not be set.
    #[error("cannot set {0}")]
    Rlimit(&'static str, #[source] std::io::Error),
    /// Switching user or group failed.
    #[error("cannot switch to uid {uid} gid {gid}")]
    User {
        /// Target uid.
        uid: u32,
        /// Target gid.
        gid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Closes every fd above 2 that is not in `keep`; returns how many were closed.
pub fn close_inherited_fds(keep: &[RawFd]) -> Result<usize, HardeningError> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(HardeningError::CloseFds)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut closed = 0;
    for fd in fds {
        if fd <= 2 || keep.contains(&fd) {
            continue;
        }
        // SAFETY: closing an fd this process inherited and does not use; the directory fd of
        // the listing above is already closed (EBADF, ignored).
        if unsafe { libc::close(fd) } == 0 {
            closed += 1;
        }
    }
    Ok(closed)
}

fn set_rlimit(
    resource: libc::__rlimit_resource_t,
    name: &'static str,
    value: u64,
) -> Result<(), HardeningError> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(resource, &mut cur) } != 0 {
        return Err(HardeningError::Rlimit(
            name,
            std::io::Error::last_os_error(),
        ));
    }
    let v = value.min(cur.rlim_max);
    let new = libc::rlimit {
        rlim_cur: v,
        rlim_max: v,
    };
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(resource, &new) } != 0 {
        return Err(HardeningError::Rlimit(
            name,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Sets `RLIMIT_NOFILE` (soft and hard) to [`NOFILE_LIMIT`] or the current hard limit if lower.
pub fn limit_open_files() -> Result<(), HardeningError> {
    set_rlimit(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", NOFILE_LIMIT)
}

/// Drops supplementary groups and switches real, effective and saved ids to `user`.
pub fn drop_privileges(user: UserSpec) -> Result<(), HardeningError> {
    let err = |source| HardeningError::User {
        uid: user.uid,
        gid: user.gid,
        source,
    };
    // SAFETY: setgroups with an empty list reads nothing.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: plain id arguments.
    if unsafe { libc::setresgid(user.gid, user.gid, user.gid) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: plain id arguments.
    if unsafe { libc::setresuid(user.uid, user.uid, user.uid) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: getuid/geteuid have no preconditions.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    if uid != user.uid || euid != user.uid {
        return Err(err(std::io::Error::other("the uid did not change")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_only_what_is_not_kept() {
        // In a child process: closing fds in the multi-threaded test runner would break it.
        let keep_file = std::fs::File::open("/proc/self/status").unwrap();
        let drop_file = std::fs::File::open("/proc/self/status").unwrap();
        let (keep, gone) = (
            std::os::fd::AsRawFd::as_raw_fd(&keep_file),
            std::os::fd::AsRawFd::as_raw_fd(&drop_file),
        );
        // SAFETY: fork in a test; the child makes syscalls only and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = close_inherited_fds(&[keep]).is_ok();
            // SAFETY: fcntl F_GETFD only queries the fds.
            let (k, g) = unsafe {
                (
                    libc::fcntl(keep, libc::F_GETFD),
                    libc::fcntl(gone, libc::F_GETFD),
                )
            };
            let code = if ok && k >= 0 && g < 0 { 0 } else { 1 };
            // SAFETY: _exit is always safe.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn user_spec_parses_numbers_only() {
        let u: UserSpec = "65534:65534".parse().unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
        for bad in ["", "65534", "nobody:nogroup", "1:2:3", "-1:0"] {
            assert!(bad.parse::<UserSpec>().is_err(), "{bad}");
        }
    }
}
