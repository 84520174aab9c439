// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The host side of a container process's stdio: the vsock streams to the agent (one
//! connection per stream, opened before CreateContainer/ExecProcess) and the relays between
//! them and the monitor's own stdio, a host pty, or the caller's terminal.
//!
//! - Without a terminal: the monitor's fd 0 feeds the `stdin` stream (its EOF closes the
//!   stream, which the agent turns into EOF on the process's stdin); `stdout` and `stderr`
//!   are copied to fds 1 and 2 until the agent closes them (after the process exited and its
//!   output was drained).
//! - With a terminal: one `tty` stream carries both directions of the guest pty. It is relayed
//!   to the slave side of a host pty whose master went to `--console-socket` (the slave is raw:
//!   the guest pty does the line discipline), or, for a foreground `vmrun run`, to the
//!   caller's stdin/stdout (put in raw mode when they are a terminal).
//!
//! Threads: async (tokio). Reads of the monitor's fd 0 and writes to fds 1 and 2 use tokio's
//! blocking-pool stdio (never `O_NONBLOCK` on descriptors shared with the caller); the host pty
//! slave, which only the monitor holds, is non-blocking and polled with `AsyncFd`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use vmrun_protocol::StdioStream;

use crate::sandbox::{Sandbox, SandboxError};

/// Errors of the host-side stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// A stream to the agent could not be opened.
    #[error("cannot open a stdio stream")]
    Open(#[source] Box<SandboxError>),
    /// The host pty could not be created or set up.
    #[error("cannot set up the host pty")]
    Pty(#[source] nix::Error),
    /// The pty master could not be sent over the console socket.
    #[error("cannot send the pty master to the console socket {path}")]
    ConsoleSocket {
        /// The socket.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl From<SandboxError> for StdioError {
    fn from(e: SandboxError) -> Self {
        Self::Open(Box::new(e))
    }
}

/// The streams of one process, as opened on the agent's stdio port.
#[derive(Debug)]
pub enum Streams {
    /// Separate `stdin`, `stdout`, `stderr` streams.
    Pipes {
        /// Host -> process.
        stdin: UnixStream,
        /// Process -> host.
        stdout: UnixStream,
        /// Process -> host.
        stderr: UnixStream,
    },
    /// One `tty` stream, both directions of the guest pty master.
    Tty(UnixStream),
}

impl Streams {
    /// Opens the streams of process (`container_id`, `exec_id`) before it is created.
    pub async fn open(
        sandbox: &Sandbox,
        container_id: &str,
        exec_id: Option<&str>,
        terminal: bool,
    ) -> Result<Self, StdioError> {
        if terminal {
            let tty = sandbox
                .open_stream(container_id, exec_id, StdioStream::Tty)
                .await?;
            return Ok(Self::Tty(tty));
        }
        let stdin = sandbox
            .open_stream(container_id, exec_id, StdioStream::Stdin)
            .await?;
        let stdout = sandbox
            .open_stream(container_id, exec_id, StdioStream::Stdout)
            .await?;
        let stderr = sandbox
            .open_stream(container_id, exec_id, StdioStream::Stderr)
            .await?;
        Ok(Self::Pipes {
            stdin,
            stdout,
            stderr,
        })
    }
}

/// The running relays of one process. Output is complete once [`Relays::drain`] returns.
#[derive(Debug)]
pub struct Relays {
    input: Option<JoinHandle<()>>,
    output: Vec<JoinHandle<()>>,
    _raw: Option<RawModeGuard>,
}

impl Relays {
    /// Waits (at most `timeout`) until every output stream was copied to its end, then stops
    /// the input relay.
    pub async fn drain(mut self, timeout: std::time::Duration) {
        let outputs = std::mem::take(&mut self.output);
        let all = async {
            for h in outputs {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            log::warn!("stdio: output not drained after {timeout:?}; dropping it");
        }
        if let Some(h) = self.input.take() {
            h.abort();
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        for h in self.output.drain(..) {
            h.abort();
        }
        if let Some(h) = self.input.take() {
            h.abort();
        }
    }
}

async fn copy_then_flush<R, W>(mut from: R, mut to: W, what: &'static str)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match tokio::io::copy(&mut from, &mut to).await {
        Ok(n) => log::debug!("stdio: {what}: {n} bytes"),
        Err(e) => log::debug!("stdio: {what}: {e}"),
    }
    let _ = to.flush().await;
}

/// Relays the streams to the monitor's own fds 0, 1 and 2 (the caller's stdio). With a tty
/// stream and `raw_tty`, fd 0 is put into raw mode while the relay runs, if it is a terminal.
pub fn relay_inherited(streams: Streams, raw_tty: bool) -> Relays {
    match streams {
        Streams::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let input = tokio::spawn(async move {
                // EOF on fd 0 ends the copy; dropping the stream closes the process's stdin.
                copy_then_flush(tokio::io::stdin(), stdin, "stdin").await;
            });
            let out = tokio::spawn(copy_then_flush(stdout, tokio::io::stdout(), "stdout"));
            let err = tokio::spawn(copy_then_flush(stderr, tokio::io::stderr(), "stderr"));
            Relays {
                input: Some(input),
                output: vec![out, err],
                _raw: None,
            }
        }
        Streams::Tty(tty) => {
            let raw = if raw_tty {
                RawModeGuard::new(io::stdin().as_fd())
            } else {
                None
            };
            let (rd, wr) = tty.into_split();
            let input = tokio::spawn(async move {
                // A half-close is a full close on vhost-device-vsock: keep the write half
                // open after the caller's EOF, so output still flows.
                let mut wr = wr;
                let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut wr).await;
                std::future::pending::<()>().await;
            });
            let out = tokio::spawn(copy_then_flush(rd, tokio::io::stdout(), "tty"));
            Relays {
                input: Some(input),
                output: vec![out],
                _raw: raw,
            }
        }
    }
}

/// Relays a `tty` stream to the slave side of a host pty (see [`HostPty`]).
pub fn relay_pty(tty: UnixStream, slave: OwnedFd) -> io::Result<Relays> {
    let slave = PtySlave::new(slave)?;
    let (mut rd, mut wr) = tty.into_split();
    let (mut s_rd, mut s_wr) = tokio::io::split(slave);
    let input = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut s_rd, &mut wr).await;
        std::future::pending::<()>().await;
    });
    let out = tokio::spawn(async move {
        match tokio::io::copy(&mut rd, &mut s_wr).await {
            Ok(n) => log::debug!("stdio: tty -> pty: {n} bytes"),
            Err(e) => log::debug!("stdio: tty -> pty: {e}"),
        }
    });
    Ok(Relays {
        input: Some(input),
        output: vec![out],
        _raw: None,
    })
}

/// A host pty whose master is handed to `--console-socket` and whose slave the monitor keeps.
#[derive(Debug)]
pub struct HostPty {
    /// The slave side (raw mode), relayed to the guest's `tty` stream.
    pub slave: OwnedFd,
}

impl HostPty {
    /// Opens a pty, sets the slave to raw mode and an initial window size, makes the slave the
    /// monitor's controlling terminal when `controlling` (the monitor leads its own session;
    /// then it gets SIGWINCH on resizes), and sends the master over the Unix socket at
    /// `console_socket` (SCM_RIGHTS, with the slave's name as the message, as runc does).
    pub fn create_and_send(
        console_socket: &Path,
        size: Option<(u16, u16)>,
        controlling: bool,
    ) -> Result<Self, StdioError> {
        let pty = nix::pty::openpty(None, None).map_err(StdioError::Pty)?;
        let mut t = termios::tcgetattr(&pty.slave).map_err(StdioError::Pty)?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &t).map_err(StdioError::Pty)?;
        if let Some((rows, cols)) = size {
            set_winsize(pty.slave.as_fd(), rows, cols).map_err(StdioError::Pty)?;
        }
        if controlling {
            // SAFETY: TIOCSCTTY takes an int argument and only changes this process's session's
            // controlling terminal; the fd is a valid, open pty slave.
            let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
            if rc != 0 {
                log::debug!(
                    "stdio: cannot make the pty our controlling terminal: {}",
                    io::Error::last_os_error()
                );
            }
        }
        let name = nix::unistd::ttyname(&pty.slave)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        send_fd(console_socket, pty.master.as_fd(), name.as_bytes()).map_err(|source| {
            StdioError::ConsoleSocket {
                path: console_socket.to_path_buf(),
                source,
            }
        })?;
        Ok(Self { slave: pty.slave })
    }
}

fn send_fd(socket: &Path, fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let payload = if msg.is_empty() {
        b"pty".as_slice()
    } else {
        msg
    };
    let iov = [io::IoSlice::new(payload)];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(io::Error::from)?;
    Ok(())
}

/// The window size (rows, cols) of a terminal; `None` if `fd` is not one or it is 0x0.
pub fn winsize(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointed-to local variable.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointed-to local variable.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::Error::last())
    }
}

/// Puts a terminal into raw mode and restores it on drop.
#[derive(Debug)]
pub struct RawModeGuard {
    fd: RawFd,
    saved: Termios,
}

impl RawModeGuard {
    /// Raw mode on `fd` if it is a terminal; `None` otherwise.
    pub fn new(fd: BorrowedFd<'_>) -> Option<Self> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(Self {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: the guard is created from a descriptor of this process's stdio (fd 0), which
        // stays open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSANOW, &self.saved);
    }
}

/// The slave side of the host pty, non-blocking, as an async byte stream. A read of `EIO`
/// (the master was closed) is end of file.
#[derive(Debug)]
struct PtySlave {
    fd: AsyncFd<OwnedFd>,
}

impl PtySlave {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags =
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: `fd` is an open pty slave that this struct owns; it is neither replaced nor
        // closed while registered (the AsyncFd owns it and closes it on drop).
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(Self { fd })
    }
}

impl AsyncRead for PtySlave {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref(), unfilled).map_err(io::Error::from)
            });
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtySlave {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
            {
                Ok(res) => return Poll::Ready(res),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn console_socket_receives_a_working_pty_master() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let dir = std::env::temp_dir().join(format!("vmrun-stdio-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("console.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let pty = HostPty::create_and_send(&sock, Some((24, 80)), false).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut master = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the fd was just received with SCM_RIGHTS and is owned by nobody else.
                master = Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) });
            }
        }
        let n = msg.bytes;
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("/dev/pts/"));
        let master = master.expect("a file descriptor was sent");
        assert_eq!(winsize(master.as_fd()), Some((24, 80)));
        // Bytes written to the master arrive unchanged on the (raw) slave, and back.
        let mut m = std::fs::File::from(master);
        let mut s = std::fs::File::from(pty.slave);
        m.write_all(b"a\rb\n").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"a\rb\n");
        s.write_all(b"xy\n").unwrap();
        let mut back = [0u8; 3];
        m.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"xy\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn winsize_of_non_tty_is_none() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(winsize(f.as_fd()), None);
    }
}
