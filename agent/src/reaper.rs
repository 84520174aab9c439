// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The agent's child reaper.
//!
//! The agent is PID 1 (or a child subreaper in test mode), so every orphan in the guest becomes
//! its child and must be reaped. One task owns every `waitpid` of the agent process: on each
//! SIGCHLD it reaps until no child is left to reap and hands each status to whoever watches
//! that pid ([`Reaper::watch`]). No other code in the agent calls `wait*`; the agent never runs
//! std's or tokio's `Child::wait`.
//!
//! libcontainer's own `waitpid` on its intermediate process cannot be stolen: libcontainer runs
//! only in the `vmrun-agent init` helper process, whose children are its own. The container's
//! init and exec'd processes become the agent's children when that helper exits, and are reaped
//! here.
//!
//! A status that arrives before anyone watches the pid is kept (bounded) with the time it was
//! reaped; a watcher only accepts a kept status reaped after the instant it names, so a recycled
//! pid never gets a stale status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// Unclaimed statuses kept at most (orphans nobody waits for are dropped first-in first-out).
const MAX_UNCLAIMED: usize = 4096;

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// The status the way runc reports it: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(c) => c,
            Self::Signaled(s) => 128_i32.saturating_add(s),
        }
    }

    fn from_raw(status: libc::c_int) -> Option<Self> {
        if libc::WIFEXITED(status) {
            Some(Self::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Self::Signaled(libc::WTERMSIG(status)))
        } else {
            None
        }
    }
}

#[derive(Default)]
struct State {
    watchers: HashMap<i32, Vec<oneshot::Sender<ExitStatus>>>,
    unclaimed: HashMap<i32, (ExitStatus, Instant)>,
    order: std::collections::VecDeque<i32>,
}

/// Shared handle on the reaper.
#[derive(Clone, Default)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

impl Reaper {
    /// Creates the reaper and starts its task on the current tokio runtime.
    pub fn start() -> std::io::Result<Self> {
        let reaper = Self::default();
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns a receiver that yields `pid`'s exit status. `since` is an instant before the
    /// process could have exited (e.g. before it was spawned); a status reaped earlier than
    /// that belongs to an older process with the same pid and is ignored.
    pub fn watch(&self, pid: i32, since: Instant) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if let Some(&(status, at)) = st.unclaimed.get(&pid) {
            if at >= since {
                let _ = tx.send(status);
                return rx;
            }
            st.unclaimed.remove(&pid);
        }
        st.watchers.entry(pid).or_default().push(tx);
        rx
    }

    /// Reaps every child that has ended; called on SIGCHLD (and once at start).
    pub fn reap_all(&self) {
        loop {
            let mut raw = 0;
            // SAFETY: waitpid with a valid out pointer; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                if pid < 0 && nix::Error::last() == nix::Error::EINTR {
                    continue;
                }
                return;
            }
            if let Some(status) = ExitStatus::from_raw(raw) {
                self.deliver(pid, status);
            }
        }
    }

    fn deliver(&self, pid: i32, status: ExitStatus) {
        let mut st = self.lock();
        if let Some(list) = st.watchers.remove(&pid) {
            for tx in list {
                let _ = tx.send(status);
            }
            return;
        }
        log::debug!("reaped pid {pid} ({status:?}) that nobody watched yet");
        if st.unclaimed.insert(pid, (status, Instant::now())).is_none() {
            st.order.push_back(pid);
        }
        while st.order.len() > MAX_UNCLAIMED {
            if let Some(old) = st.order.pop_front() {
                st.unclaimed.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_style_codes() {
        assert_eq!(ExitStatus::Exited(42).code(), 42);
        assert_eq!(ExitStatus::Signaled(15).code(), 143);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
    }

    #[test]
    fn watch_before_and_after_exit() {
        let r = Reaper::default();
        let t0 = Instant::now();
        let mut early = r.watch(100, t0);
        r.deliver(100, ExitStatus::Exited(3));
        assert_eq!(early.try_recv().unwrap(), ExitStatus::Exited(3));
        // Delivered before anyone watched: a watcher that started before gets it.
        r.deliver(101, ExitStatus::Signaled(9));
        let mut late = r.watch(101, t0);
        assert_eq!(late.try_recv().unwrap(), ExitStatus::Signaled(9));
        // A watcher for a process spawned after the stale status does not get it.
        r.deliver(102, ExitStatus::Exited(1));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut fresh = r.watch(102, Instant::now());
        assert!(fresh.try_recv().is_err());
        r.deliver(102, ExitStatus::Exited(0));
        assert_eq!(fresh.try_recv().unwrap(), ExitStatus::Exited(0));
    }
}
