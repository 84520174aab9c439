// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! stdio between containerd's FIFOs and the agent's per-process vsock streams.
//!
//! containerd names up to three FIFOs per process (empty: not wanted). Output FIFOs are opened
//! read-write so that the open never blocks; the stdin FIFO is opened read-only on a blocking
//! thread (the open waits for containerd's writer) and, when the writer closes, the guest is
//! told with CloseStdin. Guest streams are never half-closed (on vhost-device-vsock a half-close
//! closes both ways): the stdin stream is kept until the process has exited.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use vmrun_protocol::agent;
use vmrun_runtime::agent_client::AgentClient;

/// The FIFO paths containerd gave for a process.
#[derive(Debug, Clone, Default)]
pub struct Fifos {
    /// stdin FIFO (empty: none).
    pub stdin: String,
    /// stdout FIFO (empty: none).
    pub stdout: String,
    /// stderr FIFO (empty: none; always none with a terminal).
    pub stderr: String,
    /// One pty stream instead of pipes.
    pub terminal: bool,
}

impl Fifos {
    /// The FIFOs of a request; with a terminal, stderr is dropped (the pty carries both).
    pub fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Self {
        Self {
            stdin: stdin.to_owned(),
            stdout: stdout.to_owned(),
            stderr: if terminal {
                String::new()
            } else {
                stderr.to_owned()
            },
            terminal,
        }
    }
}

/// The guest streams of one process, opened before the process is created.
#[derive(Debug)]
pub enum GuestStreams {
    /// Separate streams; `None` where containerd gave no FIFO.
    Pipes {
        /// Host -> process.
        stdin: Option<UnixStream>,
        /// Process -> host.
        stdout: Option<UnixStream>,
        /// Process -> host.
        stderr: Option<UnixStream>,
    },
    /// The pty stream.
    Tty(UnixStream),
}

/// The running copies of one process.
#[derive(Debug, Default)]
pub struct Relays {
    outputs: Vec<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
    stdin_path: Option<PathBuf>,
}

impl Relays {
    /// Waits at most `timeout` for the output copies to reach EOF (the process's output is
    /// complete once they do).
    pub async fn drain_outputs(&mut self, timeout: Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        let all = async {
            for h in outputs {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            log::warn!("output not drained after {timeout:?}");
        }
    }

    /// Stops the stdin copy, also when it still waits for containerd's writer to open the FIFO
    /// (a non-blocking open for writing releases that blocked open).
    pub fn stop_input(&mut self) {
        if let Some(h) = self.input.take() {
            h.abort();
        }
        if let Some(p) = self.stdin_path.take() {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p);
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stop_input();
        for h in self.outputs.drain(..) {
            h.abort();
        }
    }
}

/// Opens an output FIFO without blocking (read-write: a FIFO open for writing alone blocks
/// until a reader exists).
fn open_output(path: &str) -> std::io::Result<tokio::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    Ok(tokio::fs::File::from_std(f))
}

async fn copy_out<R: AsyncRead + Unpin>(mut from: R, mut to: tokio::fs::File, what: String) {
    match tokio::io::copy(&mut from, &mut to).await {
        Ok(n) => log::debug!("{what}: {n} bytes"),
        Err(e) => log::debug!("{what}: {e}"),
    }
    let _ = to.flush().await;
}

/// Copies the stdin FIFO into `to` until containerd closes it, then closes the guest side with
/// CloseStdin. `to` is kept open until the task is aborted.
async fn copy_in<W: AsyncWrite + Unpin>(
    path: PathBuf,
    mut to: W,
    agent: AgentClient,
    container_id: String,
    exec_id: String,
) {
    let opened = tokio::task::spawn_blocking(move || std::fs::File::open(path)).await;
    let Ok(Ok(file)) = opened else {
        log::warn!("{container_id}/{exec_id}: cannot open the stdin FIFO");
        return;
    };
    let mut from = tokio::fs::File::from_std(file);
    match tokio::io::copy(&mut from, &mut to).await {
        Ok(n) => log::debug!("{container_id}/{exec_id}: stdin: {n} bytes"),
        Err(e) => log::debug!("{container_id}/{exec_id}: stdin: {e}"),
    }
    let _ = to.flush().await;
    let mut req = agent::CloseStdinRequest::new();
    req.container_id = container_id.clone();
    req.exec_id = exec_id.clone();
    if let Err(e) = agent.service().close_stdin(agent.context(), &req).await {
        log::debug!("{container_id}/{exec_id}: CloseStdin: {e}");
    }
    // Keep the stream (and so the guest's stdin) open: closing it is CloseStdin's job.
    std::future::pending::<()>().await;
}

/// Starts the copies between containerd's FIFOs and the guest streams.
pub fn relay(
    fifos: &Fifos,
    streams: GuestStreams,
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
) -> std::io::Result<Relays> {
    let name = format!("{container_id}/{exec_id}");
    let mut r = Relays::default();
    let stdin_path = (!fifos.stdin.is_empty()).then(|| PathBuf::from(&fifos.stdin));
    match streams {
        GuestStreams::Tty(tty) => {
            let (rd, wr) = tokio::io::split(tty);
            if !fifos.stdout.is_empty() {
                let out = open_output(&fifos.stdout)?;
                r.outputs
                    .push(tokio::spawn(copy_out(rd, out, format!("{name}: tty"))));
            }
            if let Some(p) = stdin_path {
                r.stdin_path = Some(p.clone());
                r.input = Some(tokio::spawn(copy_in(
                    p,
                    wr,
                    agent.clone(),
                    container_id.to_owned(),
                    exec_id.to_owned(),
                )));
            }
        }
        GuestStreams::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            for (stream, path, what) in [
                (stdout, &fifos.stdout, "stdout"),
                (stderr, &fifos.stderr, "stderr"),
            ] {
                if let Some(s) = stream {
                    let out = open_output(path)?;
                    r.outputs
                        .push(tokio::spawn(copy_out(s, out, format!("{name}: {what}"))));
                }
            }
            if let (Some(s), Some(p)) = (stdin, stdin_path) {
                r.stdin_path = Some(p.clone());
                r.input = Some(tokio::spawn(copy_in(
                    p,
                    s,
                    agent.clone(),
                    container_id.to_owned(),
                    exec_id.to_owned(),
                )));
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_drops_stderr() {
        let f = Fifos::new("i", "o", "e", false);
        assert_eq!(
            (f.stdin.as_str(), f.stdout.as_str(), f.stderr.as_str()),
            ("i", "o", "e")
        );
        let t = Fifos::new("i", "o", "e", true);
        assert!(t.terminal && t.stderr.is_empty() && t.stdout == "o");
    }
}
