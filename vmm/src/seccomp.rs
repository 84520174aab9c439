// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Per-thread seccomp filters (seccompiler), installed once the VM is built.
//!
//! * vCPU threads: `KVM_RUN` and `KVM_GET_REGS` ioctls, reads/writes (serial output, eventfds,
//!   stderr), memory management, futexes, signal return and thread exit. Device work never runs
//!   on a vCPU thread (activation only kicks the event loop), so no socket or file calls.
//! * The event-loop thread: epoll, socket calls for the vsock back-end and the API, positional
//!   file I/O for virtio-blk, `getrandom` for virtio-rng, `/proc/self/statm` for metrics,
//!   `tgkill` to kick vCPUs, `unlink` for socket files at exit; `ioctl` only for FIONBIO,
//!   FIOCLEX and the terminal (TCGETS/TCSETS).
//!
//! Anything else kills the process (`SECCOMP_RET_KILL_PROCESS`).

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// `KVM_RUN`.
const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_REGS`.
const KVM_GET_REGS: u64 = 0x8090_ae81;
const FIONBIO: u64 = 0x5421;
const FIOCLEX: u64 = 0x5451;
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built or compiled.
    #[error("cannot build the seccomp filter")]
    Build(#[source] BackendError),
    /// The kernel refused it.
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// Syscalls every thread needs (memory, futexes, signals, exit, abort).
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Syscalls of vCPU threads on top of [`COMMON`]: the vhost-user messages a virtio-fs
/// activation or reset sends (DRIVER_OK and Status = 0 are handled on the vCPU thread).
const VCPU: &[i64] = &[libc::SYS_sendmsg, libc::SYS_recvmsg];

/// Syscalls of the event-loop thread on top of [`COMMON`].
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_getrandom,
    libc::SYS_openat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
];

fn ioctl_rules(cmds: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    cmds.iter()
        .map(|cmd| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                *cmd,
            )?])
        })
        .collect()
}

fn build(extra: &[i64], ioctls: &[u64]) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in COMMON.iter().chain(extra) {
        rules.insert(*nr, Vec::new());
    }
    rules.insert(
        libc::SYS_ioctl,
        ioctl_rules(ioctls).map_err(SeccompError::Build)?,
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    BpfProgram::try_from(filter).map_err(SeccompError::Build)
}

/// The vCPU threads' filter.
pub fn vcpu_filter() -> Result<BpfProgram, SeccompError> {
    build(VCPU, &[KVM_RUN, KVM_GET_REGS])
}

/// The event-loop thread's filter.
pub fn event_loop_filter() -> Result<BpfProgram, SeccompError> {
    build(EVENT_LOOP, &[FIONBIO, FIOCLEX, TCGETS, TCSETS])
}

/// Installs `filter` on the calling thread (it also sets `no_new_privs`).
pub fn install(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(SeccompError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        assert!(!vcpu_filter().unwrap().is_empty());
        assert!(event_loop_filter().unwrap().len() > vcpu_filter().unwrap().len());
    }

    #[test]
    fn a_filtered_thread_is_confined() {
        // In a child process (a kill would take the test runner down otherwise): allowed calls
        // work, a forbidden one kills the process with SIGSYS.
        // Built before fork: the child of a multi-threaded process must not allocate.
        let filter = vcpu_filter().unwrap();
        // SAFETY: fork in a test; the child only makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if install(&filter).is_err() {
                // SAFETY: _exit is always safe to call.
                unsafe { libc::_exit(3) };
            }
            // SAFETY: getpid has no preconditions (allowed by the filter).
            unsafe { libc::getpid() };
            // SAFETY: socket(2) with plain arguments; the filter must kill us here.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child we just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
