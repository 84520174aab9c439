// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Start-up self-check: does the guest kernel give what containers need?
//!
//! Runs once on the main thread before the async runtime starts (it forks, which is only safe
//! while the process has a single thread). Each item is tried for real: every namespace kind is
//! created with `unshare` in a forked child, devpts and mqueue are mounted in a child with its
//! own mount namespace, the cgroup v2 controllers are read from `cgroup.controllers`, and epoll,
//! eventfd, timerfd and signalfd are created and closed. The result is reported by `Check`;
//! a failed item makes the agent DEGRADED, never fatal.

use std::ffi::CString;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

/// Result of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    /// Stable short name, e.g. `namespace:user`.
    pub name: String,
    /// Whether the kernel provides it.
    pub ok: bool,
    /// The error of a failed item.
    pub detail: String,
}

impl CheckItem {
    fn new(name: impl Into<String>, result: Result<(), String>) -> Self {
        let (ok, detail) = match result {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e),
        };
        Self {
            name: name.into(),
            ok,
            detail,
        }
    }
}

/// Namespace kinds and their clone flags.
const NAMESPACES: [(&str, libc::c_int); 8] = [
    ("mnt", libc::CLONE_NEWNS),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("user", libc::CLONE_NEWUSER),
    ("pid", libc::CLONE_NEWPID),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", 0x80), // CLONE_NEWTIME
];

/// cgroup v2 controllers containers need.
const CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// Runs every item. `cgroup_root` is where cgroup2 is mounted; `scratch` an existing writable
/// directory used as a mount point inside the children's private mount namespaces.
///
/// Must be called while the process is single-threaded.
pub fn run(cgroup_root: &Path, scratch: &Path) -> Vec<CheckItem> {
    let mut items = Vec::new();
    for (name, flag) in NAMESPACES {
        items.push(CheckItem::new(
            format!("namespace:{name}"),
            in_child(|| {
                // SAFETY: unshare affects only this (forked, single-threaded) child.
                if unsafe { libc::unshare(flag) } == 0 {
                    0
                } else {
                    errno()
                }
            }),
        ));
    }
    let controllers = fs::read_to_string(cgroup_root.join("cgroup.controllers"));
    for c in CONTROLLERS {
        let r = match &controllers {
            Ok(list) if list.split_whitespace().any(|w| w == c) => Ok(()),
            Ok(list) => Err(format!("not in cgroup.controllers ({})", list.trim())),
            Err(e) => Err(format!(
                "{}: {e}",
                cgroup_root.join("cgroup.controllers").display()
            )),
        };
        items.push(CheckItem::new(format!("cgroup:{c}"), r));
    }
    for (fstype, data) in [("devpts", "newinstance,ptmxmode=0666"), ("mqueue", "")] {
        items.push(CheckItem::new(
            format!("mount:{fstype}"),
            try_mount(fstype, data, scratch),
        ));
    }
    items.push(CheckItem::new("seccomp:filter", in_child(seccomp_filter)));
    items.push(CheckItem::new(
        "fd:epoll",
        fd_result(|| {
            // SAFETY: plain syscall; the result is checked and wrapped.
            unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }
        }),
    ));
    items.push(CheckItem::new(
        "fd:eventfd",
        fd_result(|| {
            // SAFETY: plain syscall; the result is checked and wrapped.
            unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }
        }),
    ));
    items.push(CheckItem::new(
        "fd:timerfd",
        fd_result(|| {
            // SAFETY: plain syscall; the result is checked and wrapped.
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) }
        }),
    ));
    items.push(CheckItem::new(
        "fd:signalfd",
        fd_result(|| {
            // SAFETY: an all-zero sigset_t is a valid (then emptied) set; signalfd gets a valid
            // pointer to it and does not keep it.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
            }
        }),
    ));
    items
}

/// Installs an allow-everything seccomp filter (what a container's profile needs from the
/// kernel: CONFIG_SECCOMP_FILTER); returns 0 or an errno. Runs in a forked child.
fn seccomp_filter() -> i32 {
    let filter = [libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x7fff_0000,
    }]; // RET ALLOW
    let prog = libc::sock_fprog {
        len: 1,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: called in a single-threaded forked child; `prog` points at a valid
    // one-instruction program that outlives the call; the filter dies with the child.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return errno();
        }
        if libc::syscall(libc::SYS_seccomp, 1, 0, &raw const prog) != 0 {
            return errno();
        }
    }
    0
}

fn errno() -> i32 {
    nix::Error::last_raw()
}

fn fd_result(create: impl FnOnce() -> libc::c_int) -> Result<(), String> {
    let fd = create();
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `fd` was just returned by a successful create call and is owned by nobody else.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// Mounts `fstype` on `scratch` inside a child with a private mount namespace.
fn try_mount(fstype: &str, data: &str, scratch: &Path) -> Result<(), String> {
    let (Ok(fs_c), Ok(data_c), Ok(target)) = (
        CString::new(fstype),
        CString::new(data),
        CString::new(scratch.as_os_str().as_encoded_bytes()),
    ) else {
        return Err("path with a NUL byte".to_owned());
    };
    let root = c"/";
    in_child(|| {
        // SAFETY: the child is single-threaded; every pointer is a valid NUL-terminated
        // string prepared before the fork; the mounts die with the child's mount namespace.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return errno();
            }
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return errno();
            }
            if libc::mount(
                fs_c.as_ptr(),
                target.as_ptr(),
                fs_c.as_ptr(),
                0,
                data_c.as_ptr().cast(),
            ) != 0
            {
                return errno();
            }
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            0
        }
    })
}

/// Forks, runs `f` in the child (which must only make async-signal-safe calls) and turns its
/// return value (0 or an errno) into the result.
fn in_child(f: impl FnOnce() -> i32) -> Result<(), String> {
    // SAFETY: the caller guarantees the process is single-threaded, so the child may run
    // arbitrary code; it ends with _exit and never returns into the parent's code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = f();
        // SAFETY: terminates the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code & 0xff) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for the child forked above; `status` is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && errno() != libc::EINTR {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if libc::WIFEXITED(status) {
        Err(std::io::Error::from_raw_os_error(libc::WEXITSTATUS(status)).to_string())
    } else {
        Err(format!("check child died (wait status {status:#x})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_items_pass_and_a_missing_cgroup_root_fails_clearly() {
        let scratch = std::env::temp_dir().join(format!("vmrun-selfcheck-{}", std::process::id()));
        fs::create_dir_all(&scratch).unwrap();
        let items = run(Path::new("/nonexistent-cgroup"), &scratch);
        fs::remove_dir_all(&scratch).unwrap();
        let get = |n: &str| items.iter().find(|i| i.name == n).unwrap().clone();
        for n in [
            "fd:epoll",
            "fd:eventfd",
            "fd:timerfd",
            "fd:signalfd",
            "seccomp:filter",
        ] {
            assert!(get(n).ok, "{n}: {}", get(n).detail);
        }
        let cg = get("cgroup:memory");
        assert!(!cg.ok);
        assert!(
            cg.detail.contains("/nonexistent-cgroup/cgroup.controllers"),
            "{}",
            cg.detail
        );
        // Namespaces: as root every kind but time exists on this host's kernel too; without
        // root, creating them fails with a reported errno. Either way each item is present.
        assert_eq!(
            items
                .iter()
                .filter(|i| i.name.starts_with("namespace:"))
                .count(),
            8
        );
        if nix::unistd::geteuid().is_root() {
            assert!(get("namespace:mnt").ok && get("namespace:pid").ok);
            assert!(get("mount:mqueue").ok, "{}", get("mount:mqueue").detail);
        }
    }
}
