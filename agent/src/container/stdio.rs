// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The stdio streams: one connection per stream on vsock port 1026 (a Unix socket in test mode).
//!
//! The host connects, sends one header line `<container_id> <exec_id> <stream>\n`
//! ([`vmrun_protocol::StdioHeader`]) and then raw bytes. The agent reads the header byte by
//! byte (so no payload is consumed), parks the connection under its key, and hands it to the
//! CreateContainer/ExecProcess call that names it. A connection whose header is malformed or
//! late is closed. Parked connections nobody claims are dropped after [`PARK_TIMEOUT`].
//!
//! Non-terminal streams become the process's fd 0/1/2 directly (the process reads and writes
//! the vsock socket itself, so its output is in the socket by the time it exits). A `tty`
//! stream is relayed to and from the pty master by two threads ([`relay_tty`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use vmrun_protocol::{StdioHeader, StdioStream, STDIO_HEADER_MAX_LEN};

/// How long a new connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an unclaimed stream stays parked.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(120);

/// Key of a parked stream: (container id, exec id or `None` for init, stream).
pub type StreamKey = (String, Option<String>, StdioStream);

/// Streams that arrived and wait for their process.
#[derive(Debug, Default)]
pub struct StreamPark {
    streams: Mutex<HashMap<StreamKey, (OwnedFd, Instant)>>,
    arrived: Notify,
}

impl StreamPark {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, (OwnedFd, Instant)>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parks a stream; a second stream with the same key replaces (closes) the first.
    pub fn park(&self, key: StreamKey, fd: OwnedFd) {
        let mut s = self.lock();
        let now = Instant::now();
        s.retain(|_, (_, at)| now.duration_since(*at) < PARK_TIMEOUT);
        s.insert(key, (fd, now));
        drop(s);
        self.arrived.notify_waiters();
    }

    /// Takes the stream `key`, waiting up to `timeout` for it to arrive.
    pub async fn take(&self, key: &StreamKey, timeout: Duration) -> Option<OwnedFd> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if let Some((fd, _)) = self.lock().remove(key) {
                return Some(fd);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lock().remove(key).map(|(fd, _)| fd);
            }
        }
    }

    /// Drops every parked stream of a container.
    pub fn discard_container(&self, container_id: &str) {
        self.lock().retain(|(c, _, _), _| c != container_id);
    }
}

/// Reads one header line from a fresh connection, one byte at a time.
pub async fn read_header<S: AsyncRead + Unpin>(s: &mut S) -> Result<StdioHeader, String> {
    let read = async {
        let mut line = Vec::with_capacity(64);
        loop {
            let b = s
                .read_u8()
                .await
                .map_err(|e| format!("reading the header: {e}"))?;
            line.push(b);
            if b == b'\n' || line.len() >= STDIO_HEADER_MAX_LEN {
                break;
            }
        }
        StdioHeader::parse(&line).map_err(|e| e.to_string())
    };
    tokio::time::timeout(HEADER_TIMEOUT, read)
        .await
        .map_err(|_| "no stdio header within 10 s".to_owned())?
}

/// Duplicates a connected socket into a blocking fd the agent can hand to a process.
pub fn detach_fd(sock: &impl AsFd) -> std::io::Result<OwnedFd> {
    let fd = sock.as_fd().try_clone_to_owned()?;
    set_blocking(&fd)?;
    Ok(fd)
}

fn set_blocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a valid fd owned by the caller.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Serves one accepted connection: reads its header and parks it.
pub async fn serve_connection<S>(mut sock: S, park: Arc<StreamPark>)
where
    S: AsyncRead + AsFd + Unpin,
{
    match read_header(&mut sock).await {
        Ok(h) => match detach_fd(&sock) {
            Ok(fd) => {
                log::debug!("stdio stream {h} connected");
                park.park(
                    (
                        h.container_id().to_owned(),
                        h.exec_id().map(str::to_owned),
                        h.stream(),
                    ),
                    fd,
                );
            }
            Err(e) => log::warn!("stdio stream {h}: {e}"),
        },
        Err(e) => log::warn!("stdio connection refused: {e}"),
    }
}

/// Relays between a pty master and the host's `tty` stream until the process side closes
/// (read on the master fails with EIO once every slave fd is closed), then closes the stream.
pub fn relay_tty(master: OwnedFd, stream: OwnedFd) -> std::io::Result<()> {
    let m2 = master.try_clone()?;
    let s2 = stream.try_clone()?;
    let to_host = std::thread::Builder::new()
        .name("tty-out".into())
        .spawn(move || {
            copy(&master, &stream);
            // Wake the other direction and tell the host the stream ended.
            // SAFETY: shutdown on a valid socket fd owned by this closure.
            unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR) };
        })?;
    std::thread::Builder::new()
        .name("tty-in".into())
        .spawn(move || {
            copy(&s2, &m2);
            let _ = to_host.join();
        })?;
    Ok(())
}

fn copy(from: &OwnedFd, to: &OwnedFd) {
    let mut buf = [0_u8; 16 * 1024];
    loop {
        let n = match nix::unistd::read(from, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut off = 0;
        while off < n {
            match nix::unistd::write(to, &buf[off..n]) {
                Ok(w) if w > 0 => off += w,
                Err(nix::Error::EINTR) => {}
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_then_payload_is_not_consumed() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut a, b"c1 - stdin\nPAYLOAD")
            .await
            .unwrap();
        let h = read_header(&mut b).await.unwrap();
        assert_eq!(h.container_id(), "c1");
        let mut rest = [0_u8; 7];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"PAYLOAD");
    }

    #[tokio::test]
    async fn bad_header_is_an_error() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut a, b"c1 stdin\n")
            .await
            .unwrap();
        let err = read_header(&mut b).await.unwrap_err();
        assert!(err.contains("got 2 words"), "{err}");
        drop(a);
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut a, b"c1 - std")
            .await
            .unwrap();
        drop(a);
        assert!(read_header(&mut b)
            .await
            .unwrap_err()
            .contains("reading the header"));
    }

    #[tokio::test]
    async fn park_and_take() {
        let park = StreamPark::default();
        let key: StreamKey = ("c".into(), None, StdioStream::Stdout);
        assert!(park.take(&key, Duration::from_millis(10)).await.is_none());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        park.park(key.clone(), OwnedFd::from(a));
        assert!(park.take(&key, Duration::from_millis(10)).await.is_some());
        assert!(park.take(&key, Duration::from_millis(10)).await.is_none());
    }
}
