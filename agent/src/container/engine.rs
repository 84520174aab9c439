// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The container engine behind a small trait: what the agent's RPC layer needs from a
//! container library. [`HelperEngine`] implements it with youki's libcontainer, run in a fresh
//! `vmrun-agent init` helper process per operation (see `helper.rs` for why).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use async_trait::async_trait;

use super::helper::{HelperReply, HelperRequest, REPLY_FD};
use crate::reaper::Reaper;

/// A container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The helper process could not be started.
    #[error("cannot start the container helper")]
    Spawn(#[source] std::io::Error),
    /// The helper reported an error.
    #[error("{0}")]
    Failed(String),
    /// The helper died without a reply.
    #[error("the container helper ended without a reply (exit status {0})")]
    NoReply(i32),
}

/// The standard streams of a new process; `None` means `/dev/null`.
#[derive(Debug, Default)]
pub struct ProcessIo {
    /// fd 0.
    pub stdin: Option<OwnedFd>,
    /// fd 1.
    pub stdout: Option<OwnedFd>,
    /// fd 2.
    pub stderr: Option<OwnedFd>,
}

/// What the agent needs from a container library. Every method may block for a while; the
/// caller runs them as async tasks.
#[async_trait]
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// Runs one operation with the given stdio for the processes it creates; returns the new
    /// pid for Create and Exec.
    async fn run(&self, req: HelperRequest, io: ProcessIo) -> Result<Option<i32>, EngineError>;
}

/// libcontainer in a re-executed single-threaded helper.
#[derive(Debug, Clone)]
pub struct HelperEngine {
    exe: PathBuf,
    reaper: Reaper,
}

impl HelperEngine {
    /// Uses `exe` (normally `/proc/self/exe`) as the helper binary and `reaper` to learn when it
    /// exits.
    pub fn new(exe: PathBuf, reaper: Reaper) -> Self {
        Self { exe, reaper }
    }
}

fn stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map_or_else(Stdio::null, Stdio::from)
}

#[async_trait]
impl Engine for HelperEngine {
    async fn run(&self, req: HelperRequest, io: ProcessIo) -> Result<Option<i32>, EngineError> {
        let json = serde_json::to_string(&req).map_err(|e| EngineError::Failed(e.to_string()))?;
        let (reply_r, reply_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| EngineError::Spawn(e.into()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("init")
            .arg(json)
            .stdin(stdio(io.stdin))
            .stdout(stdio(io.stdout))
            .stderr(stdio(io.stderr))
            .env_clear();
        let w = reply_w.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls dup2/fcntl,
        // which are async-signal-safe; `w` stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                let rc = if w == REPLY_FD {
                    libc::fcntl(w, libc::F_SETFD, 0)
                } else {
                    libc::dup2(w, REPLY_FD)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let since = Instant::now();
        let child = cmd.spawn().map_err(EngineError::Spawn)?;
        let pid = i32::try_from(child.id())
            .map_err(|_| EngineError::Failed("pid out of range".into()))?;
        let exited = self.reaper.watch(pid, since);
        // Close our copies of the child's stdio and of the reply pipe's write end. The child is
        // never waited for through `child`: the reaper owns every wait of this process.
        drop(cmd);
        drop(reply_w);
        drop(child);
        let status = exited
            .await
            .map(crate::reaper::ExitStatus::code)
            .unwrap_or(-1);
        // The processes the helper created may still hold the write end (until they exec), so
        // read what is there without waiting for EOF: the helper wrote it all before exiting.
        let reply = read_available(&reply_r);
        if reply.is_empty() {
            return Err(EngineError::NoReply(status));
        }
        let reply: HelperReply = serde_json::from_slice(&reply)
            .map_err(|e| EngineError::Failed(format!("bad helper reply: {e}")))?;
        match reply.error {
            Some(e) => Err(EngineError::Failed(e)),
            None => Ok(reply.pid),
        }
    }
}

fn read_available(fd: &OwnedFd) -> Vec<u8> {
    // SAFETY: F_GETFL/F_SETFL on a valid fd we own.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut out = Vec::new();
    let mut buf = [0_u8; 4096];
    while out.len() < 1 << 20 {
        match nix::unistd::read(fd, &mut buf) {
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
            Err(nix::Error::EINTR) => {}
            _ => break,
        }
    }
    out
}
