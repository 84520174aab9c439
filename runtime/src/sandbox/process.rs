// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Child processes of a sandbox (hypervisor, vsock daemon, virtiofsd), each the leader of its
//! own process group.
//!
//! Each child is spawned *and waited for* on a dedicated thread. That matters for
//! `PR_SET_PDEATHSIG`: the signal fires when the thread that forked the child exits, not the
//! process, so forking from a tokio worker or blocking-pool thread (which may exit while the
//! owner lives on) would kill the VM at a random moment. The dedicated thread lives exactly as
//! long as its child, so the death signal fires only when the owner process dies.
//!
//! The watcher thread first waits with `WNOWAIT`, then takes the state lock and reaps. Signals
//! are sent under the same lock only while the leader is unreaped, so a process group id is never
//! signalled after the kernel could have reused it.

use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// Errors from spawning a child.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The log file for the child's output could not be opened.
    #[error("cannot open log file {path} for {name}")]
    Log {
        /// The child's name.
        name: String,
        /// The log file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The program could not be started.
    #[error("cannot start {name} ({program})")]
    Spawn {
        /// The child's name.
        name: String,
        /// The program.
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The watcher thread could not be created.
    #[error("cannot create the watcher thread for {name}")]
    Thread {
        /// The child's name.
        name: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// How to spawn a child.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// Send SIGKILL to the child when the owner process dies (`PR_SET_PDEATHSIG`).
    pub die_with_owner: bool,
    /// An fd of the owner that the child inherits under the same number (its `FD_CLOEXEC` is
    /// cleared in the child only).
    pub inherit_fd: Option<RawFd>,
}

#[derive(Debug, Default)]
struct ExitState {
    status: Mutex<Option<ExitStatus>>,
    cond: Condvar,
}

/// A running (or exited) child process that leads its own process group.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    pid: i32,
    state: Arc<ExitState>,
    exit_rx: watch::Receiver<Option<ExitStatus>>,
}

impl ManagedProcess {
    /// Spawns `cmd` (stdin from `/dev/null`, stdout and stderr appended to `log`) as the leader
    /// of a new process group.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        opts: &SpawnOptions,
    ) -> Result<Self, ProcessError> {
        let log_err = |source| ProcessError::Log {
            name: name.to_owned(),
            path: log.to_path_buf(),
            source,
        };
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let die_with_owner = opts.die_with_owner;
        let inherit_fd = opts.inherit_fd;
        // SAFETY: getpid(2) has no preconditions.
        let owner = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid, fcntl, _exit); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if die_with_owner {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The owner may have died between fork and prctl: then nobody would kill us.
                    if libc::getppid() != owner {
                        libc::_exit(1);
                    }
                }
                if let Some(fd) = inherit_fd {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }

        let program = cmd.get_program().to_string_lossy().into_owned();
        let state = Arc::new(ExitState::default());
        let (exit_tx, exit_rx) = watch::channel(None);
        let (pid_tx, pid_rx) = std::sync::mpsc::channel::<std::io::Result<i32>>();
        let thread_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name(format!("vmrun-{name}"))
            .spawn(move || watch_child(cmd, &pid_tx, &thread_state, &exit_tx))
            .map_err(|source| ProcessError::Thread {
                name: name.to_owned(),
                source,
            })?;
        let spawn_err = |source| ProcessError::Spawn {
            name: name.to_owned(),
            program: program.clone(),
            source,
        };
        let pid = pid_rx
            .recv()
            .map_err(|_| spawn_err(std::io::Error::other("the watcher thread ended early")))?
            .map_err(spawn_err)?;
        log::debug!("started {name} ({program}) as pid {pid}");
        Ok(Self {
            name: name.to_owned(),
            pid,
            state,
            exit_rx,
        })
    }

    /// The child's name (`qemu`, `virtiofsd`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The leader's pid, which is also the process group id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit status if the leader has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        *self
            .state
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver that turns `Some(status)` when the leader exits.
    pub fn subscribe(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit_rx.clone()
    }

    /// Waits (async) for the leader to exit.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.exit_rx.clone();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                // The watcher thread is gone; it always publishes before it ends.
                if let Some(s) = *rx.borrow() {
                    return s;
                }
                // Unreachable in practice; report it as killed rather than hang.
                return std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL);
            }
        }
    }

    /// Sends `signal` to the whole process group if the leader has not been reaped yet.
    /// Returns whether a signal was sent.
    pub fn signal_group(&self, signal: i32) -> bool {
        let status = self
            .state
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if status.is_some() {
            return false;
        }
        // SAFETY: killpg(2) on the process group this struct created; its leader is unreaped
        // (checked under the lock the reaper takes), so the id cannot have been reused.
        unsafe { libc::killpg(self.pid, signal) == 0 }
    }

    /// SIGKILLs the group and waits (blocking) up to `timeout` for the leader to be reaped.
    pub fn kill_and_wait(&self, timeout: Duration) -> Option<ExitStatus> {
        self.signal_group(libc::SIGKILL);
        self.wait_blocking(timeout)
    }

    /// Waits (blocking) up to `timeout` for the leader to be reaped.
    pub fn wait_blocking(&self, timeout: Duration) -> Option<ExitStatus> {
        let guard = self
            .state
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .state
            .cond
            .wait_timeout_while(guard, timeout, |s| s.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if self.kill_and_wait(Duration::from_secs(5)).is_none() {
            log::error!(
                "{} (pid {}) did not exit after SIGKILL",
                self.name,
                self.pid
            );
        }
    }
}

/// The watcher thread: spawns the child, reports its pid, waits for it and publishes the status.
fn watch_child(
    mut cmd: Command,
    pid_tx: &std::sync::mpsc::Sender<std::io::Result<i32>>,
    state: &ExitState,
    exit_tx: &watch::Sender<Option<ExitStatus>>,
) {
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = pid_tx.send(Err(e));
            return;
        }
    };
    drop(cmd);
    let Ok(pid) = i32::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        let _ = pid_tx.send(Err(std::io::Error::other("pid out of range")));
        return;
    };
    let _ = pid_tx.send(Ok(pid));
    wait_nowait(pid);
    let mut guard = state.status.lock().unwrap_or_else(PoisonError::into_inner);
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::error!("waiting for pid {pid} failed: {e}");
                break std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL);
            }
        }
    };
    *guard = Some(status);
    drop(guard);
    state.cond.notify_all();
    exit_tx.send_replace(Some(status));
}

/// Blocks until `pid` has exited without reaping it (`waitid(WEXITED | WNOWAIT)`).
fn wait_nowait(pid: i32) {
    let Ok(id) = libc::id_t::try_from(pid) else {
        return;
    };
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to overwrite.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) on our own child with a valid out-pointer; WNOWAIT leaves it
        // unreaped.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn tmp_log(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vmrun-proc-{tag}-{}.log", std::process::id()))
    }

    #[test]
    fn exit_status_and_output_are_captured() {
        let log = tmp_log("exit");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo hello; exit 7"]);
        let p = ManagedProcess::spawn("sh", cmd, &log, &SpawnOptions::default()).unwrap();
        let status = p.wait_blocking(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(7));
        assert!(!p.signal_group(libc::SIGTERM), "no signal after reaping");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello\n");
        std::fs::remove_file(&log).unwrap();
    }

    #[test]
    fn kill_reaches_the_whole_group() {
        let log = tmp_log("group");
        let mut cmd = Command::new("/bin/sh");
        // A grandchild in the same group, which would survive a kill of the leader alone.
        cmd.args(["-c", "sleep 100 & echo $!; wait"]);
        let p = ManagedProcess::spawn(
            "sh",
            cmd,
            &log,
            &SpawnOptions {
                die_with_owner: true,
                inherit_fd: None,
            },
        )
        .unwrap();
        // SAFETY: getpgid(2) on a pid we own.
        assert_eq!(unsafe { libc::getpgid(p.pid()) }, p.pid());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let grandchild: i32 = loop {
            if let Ok(s) = std::fs::read_to_string(&log) {
                if let Ok(n) = s.trim().parse() {
                    break n;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let status = p.kill_and_wait(Duration::from_secs(5)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // The grandchild was killed too (it is reparented and reaped by init/subreaper).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            let gone = stat.is_empty() || stat.contains(") Z ");
            if gone {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {grandchild} survived: {stat}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_file(&log).unwrap();
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let log = tmp_log("missing");
        let err = ManagedProcess::spawn(
            "nope",
            Command::new("/nonexistent/program"),
            &log,
            &SpawnOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/program"), "{err}");
        let _ = std::fs::remove_file(&log);
    }

    #[tokio::test]
    async fn async_wait_sees_the_exit() {
        let log = tmp_log("async");
        let mut cmd = Command::new("/bin/true");
        cmd.arg("x");
        let p = ManagedProcess::spawn("true", cmd, &log, &SpawnOptions::default()).unwrap();
        let s = tokio::time::timeout(Duration::from_secs(10), p.wait())
            .await
            .unwrap();
        assert!(s.success());
        std::fs::remove_file(&log).unwrap();
    }
}
