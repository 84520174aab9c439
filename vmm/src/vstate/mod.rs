// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Live KVM state: the VM ([`vm`]) and its vCPUs ([`vcpu`]), plus the [`VmControl`] block the
//! vCPU threads, the event loop and the API share (run state, the stop reason, the exit event).

pub mod vcpu;
pub mod vm;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;
use crate::exit_code;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// i8042 reset.
    Reset,
    /// The guest wrote this status to the exit-status port.
    ExitPort(u8),
    /// Every vCPU executed HLT with nothing to wake it.
    AllHalted,
    /// `KVM_EXIT_SHUTDOWN` (triple fault) on a vCPU.
    TripleFault {
        /// vCPU index.
        vcpu: u8,
        /// Guest RIP at the time, if it could be read.
        rip: Option<u64>,
    },
    /// `KVM_EXIT_INTERNAL_ERROR`.
    InternalError {
        /// vCPU index.
        vcpu: u8,
        /// `kvm_run.internal.suberror` (1 = emulation failure).
        suberror: u32,
    },
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry {
        /// vCPU index.
        vcpu: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// An exit the VMM does not handle.
    UnhandledExit {
        /// vCPU index.
        vcpu: u8,
        /// Description.
        what: String,
    },
    /// A vCPU thread failed.
    VcpuFailed {
        /// vCPU index.
        vcpu: u8,
        /// Description.
        error: String,
    },
    /// The API asked for a forced stop.
    ApiStop,
}

impl StopReason {
    /// The process exit status for this reason (see [`crate::exit_code`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Reset | Self::AllHalted => exit_code::RESET,
            Self::ExitPort(v) => i32::from(*v),
            Self::TripleFault { .. } => exit_code::TRIPLE_FAULT,
            Self::InternalError { .. } | Self::FailEntry { .. } | Self::UnhandledExit { .. } => {
                exit_code::KVM_ERROR
            }
            Self::VcpuFailed { .. } => exit_code::VCPU_FAILED,
            Self::ApiStop => exit_code::API_STOP,
        }
    }

    /// A one-line message for stderr, or `None` for a normal exit.
    pub fn message(&self) -> Option<String> {
        match self {
            Self::Reset | Self::ExitPort(_) => None,
            Self::AllHalted => Some("all vCPUs halted".to_string()),
            Self::TripleFault { vcpu, rip } => Some(match rip {
                Some(rip) => {
                    format!("guest triple fault (KVM_EXIT_SHUTDOWN) on vCPU {vcpu} at rip {rip:#x}")
                }
                None => format!("guest triple fault (KVM_EXIT_SHUTDOWN) on vCPU {vcpu}"),
            }),
            Self::InternalError { vcpu, suberror } => Some(format!(
                "KVM internal error on vCPU {vcpu}: suberror {suberror}{}",
                if *suberror == 1 {
                    " (emulation failure)"
                } else {
                    ""
                }
            )),
            Self::FailEntry { vcpu, reason } => Some(format!(
                "KVM failed to enter vCPU {vcpu}: hardware entry failure reason {reason:#x}"
            )),
            Self::UnhandledExit { vcpu, what } => {
                Some(format!("unhandled exit on vCPU {vcpu}: {what}"))
            }
            Self::VcpuFailed { vcpu, error } => Some(format!("vCPU {vcpu} failed: {error}")),
            Self::ApiStop => Some("stopped through the API".to_string()),
        }
    }
}

/// Run state requested for the vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Run the guest.
    Running,
    /// Park in the VMM until resumed.
    Paused,
    /// Leave the run loop.
    Stopping,
}

/// State shared by vCPU threads, the event loop and the API.
#[derive(Debug)]
pub struct VmControl {
    state: Mutex<RunState>,
    cond: Condvar,
    stop: OnceLock<StopReason>,
    exit_evt: EventFd,
    parked: AtomicUsize,
    halted: AtomicUsize,
    vcpu_count: usize,
    threads: Mutex<Vec<libc::pthread_t>>,
}

/// Errors of pause/resume.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The VM is stopping.
    #[error("the VM is stopping")]
    Stopping,
    /// Not every vCPU parked in time.
    #[error("timed out waiting for the vCPUs to pause")]
    PauseTimeout,
    /// Already in that state.
    #[error("the VM is already {0}")]
    AlreadyInState(&'static str),
}

impl VmControl {
    /// A control block for `vcpu_count` vCPUs.
    pub fn new(vcpu_count: usize) -> std::io::Result<Self> {
        Ok(Self {
            state: Mutex::new(RunState::Running),
            cond: Condvar::new(),
            stop: OnceLock::new(),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            parked: AtomicUsize::new(0),
            halted: AtomicUsize::new(0),
            vcpu_count,
            threads: Mutex::new(Vec::new()),
        })
    }

    /// The eventfd signalled once a stop was requested.
    pub fn exit_evt(&self) -> &EventFd {
        &self.exit_evt
    }

    /// The stop reason, once there is one.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stop.get()
    }

    /// Current run state.
    pub fn run_state(&self) -> RunState {
        *lock(&self.state)
    }

    /// Records `reason` (the first one wins), switches to `Stopping` and wakes everybody.
    pub fn request_stop(&self, reason: StopReason) {
        let _ = self.stop.set(reason);
        *lock(&self.state) = RunState::Stopping;
        self.cond.notify_all();
        let _ = self.exit_evt.write(1);
    }

    /// Records a vCPU thread for kicking.
    pub fn add_thread(&self, t: libc::pthread_t) {
        lock(&self.threads).push(t);
    }

    /// Interrupts every vCPU's `KVM_RUN` (signal + `immediate_exit`).
    pub fn kick_all(&self) {
        for t in lock(&self.threads).iter() {
            // SAFETY: `t` belongs to a vCPU thread that has not been joined yet (threads are
            // joined only after the last kick); the signal's handler is async-signal-safe.
            unsafe { libc::pthread_kill(*t, vcpu::kick_signal()) };
        }
    }

    /// Pauses all vCPUs and waits until each is parked.
    pub fn pause(&self) -> Result<(), ControlError> {
        {
            let mut st = lock(&self.state);
            match *st {
                RunState::Stopping => return Err(ControlError::Stopping),
                RunState::Paused => return Err(ControlError::AlreadyInState("paused")),
                RunState::Running => *st = RunState::Paused,
            }
        }
        self.kick_all();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut st = lock(&self.state);
        while self.parked.load(Ordering::SeqCst) + self.halted.load(Ordering::SeqCst)
            < self.vcpu_count
        {
            if *st == RunState::Stopping {
                return Err(ControlError::Stopping);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ControlError::PauseTimeout);
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Resumes paused vCPUs.
    pub fn resume(&self) -> Result<(), ControlError> {
        let mut st = lock(&self.state);
        match *st {
            RunState::Stopping => Err(ControlError::Stopping),
            RunState::Running => Err(ControlError::AlreadyInState("running")),
            RunState::Paused => {
                *st = RunState::Running;
                self.cond.notify_all();
                Ok(())
            }
        }
    }

    /// Called by a vCPU thread: blocks while paused; returns the state that ended the wait.
    pub fn park_while_paused(&self) -> RunState {
        let mut st = lock(&self.state);
        if *st != RunState::Paused {
            return *st;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        self.cond.notify_all();
        while *st == RunState::Paused {
            st = self
                .cond
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
        *st
    }

    /// Called by a vCPU thread after HLT: returns true when every vCPU has halted.
    pub fn vcpu_halted(&self) -> bool {
        let n = self.halted.fetch_add(1, Ordering::SeqCst) + 1;
        self.cond.notify_all();
        n >= self.vcpu_count
    }

    /// Blocks a halted vCPU thread until the VM stops.
    pub fn wait_for_stop(&self) {
        let mut st = lock(&self.state);
        while *st != RunState::Stopping {
            st = self
                .cond
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_stop_reason_wins_and_signals() {
        let c = VmControl::new(1).unwrap();
        c.request_stop(StopReason::ExitPort(7));
        c.request_stop(StopReason::ApiStop);
        assert_eq!(c.stop_reason(), Some(&StopReason::ExitPort(7)));
        assert_eq!(c.exit_evt().read().unwrap(), 2);
        assert_eq!(c.run_state(), RunState::Stopping);
        assert!(c.pause().is_err());
    }

    #[test]
    fn exit_codes_and_messages() {
        assert_eq!(StopReason::Reset.exit_code(), 0);
        assert_eq!(StopReason::ExitPort(0x20).exit_code(), 32);
        let tf = StopReason::TripleFault {
            vcpu: 0,
            rip: Some(0x1000),
        };
        assert_eq!(tf.exit_code(), exit_code::TRIPLE_FAULT);
        assert!(tf.message().unwrap().contains("0x1000"));
        let ie = StopReason::InternalError {
            vcpu: 1,
            suberror: 1,
        };
        assert!(ie.message().unwrap().contains("suberror 1"));
        assert_eq!(ie.exit_code(), exit_code::KVM_ERROR);
        assert!(StopReason::Reset.message().is_none());
    }

    #[test]
    fn pause_waits_for_parked_vcpus_and_resume_releases_them() {
        let c = Arc::new(VmControl::new(1).unwrap());
        let c2 = c.clone();
        let t = std::thread::spawn(move || loop {
            match c2.park_while_paused() {
                RunState::Stopping => break,
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        });
        c.pause().unwrap();
        assert_eq!(c.parked.load(Ordering::SeqCst), 1);
        assert!(matches!(c.pause(), Err(ControlError::AlreadyInState(_))));
        c.resume().unwrap();
        c.request_stop(StopReason::ApiStop);
        t.join().unwrap();
    }
}
