// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Host side of hybrid vsock (Firecracker's protocol, also spoken by `vhost-device-vsock`).
//!
//! The host connects to the VM's Unix socket, writes `CONNECT <port>\n` and reads one line;
//! a line starting with `OK ` means the guest accepted, and from then on the socket is a byte
//! stream to the guest's port. Rules learnt the hard way (research/qemu-backend.md, G7):
//! - nothing may be sent before the `OK ` line arrives (`vhost-device-vsock` drops bytes that
//!   arrive together with the `CONNECT` line);
//! - the text after `OK ` differs between implementations (a host port on Firecracker, the guest
//!   port on `vhost-device-vsock`), so only the prefix is checked;
//! - a guest port with no listener shows up as EOF instead of a reply;
//! - the reply is read one byte at a time so that no guest data after the line is consumed.
//!
//! A host half-close (`shutdown(SHUT_WR)`) is a full close on `vhost-device-vsock`: callers must
//! not use half-closes to signal anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The longest handshake reply accepted (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 64;

/// Errors from a hybrid-vsock connect.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The Unix socket could not be connected (the hypervisor or daemon is not serving it).
    #[error("cannot connect to the hybrid vsock socket {path}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The handshake could not be written or read.
    #[error("hybrid vsock handshake for port {port} failed")]
    Io {
        /// The guest port.
        port: u32,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The socket was closed instead of a reply: nothing listens on that guest port (yet).
    #[error("guest port {port} refused the connection (no listener)")]
    Refused {
        /// The guest port.
        port: u32,
    },
    /// The reply was not `OK ...`.
    #[error("unexpected hybrid vsock reply for port {port}: {reply:?}")]
    BadReply {
        /// The guest port.
        port: u32,
        /// What came back.
        reply: String,
    },
    /// No reply within the handshake timeout.
    #[error("no hybrid vsock reply for port {port} within {timeout:?}")]
    Timeout {
        /// The guest port.
        port: u32,
        /// The timeout.
        timeout: Duration,
    },
}

/// Connects to guest `port` through the hybrid-vsock socket `uds`, waiting at most `timeout` for
/// the handshake. On success the stream carries only guest data.
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    match tokio::time::timeout(timeout, connect_inner(uds, port)).await {
        Ok(r) => r,
        Err(_) => Err(VsockError::Timeout { port, timeout }),
    }
}

async fn connect_inner(uds: &Path, port: u32) -> Result<UnixStream, VsockError> {
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|source| VsockError::Socket {
            path: uds.to_path_buf(),
            source,
        })?;
    let io = |source| VsockError::Io { port, source };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut reply = Vec::with_capacity(16);
    loop {
        let mut byte = [0_u8; 1];
        let n = match stream.read(&mut byte).await {
            Ok(n) => n,
            // A reset while waiting is the same as EOF: the peer refused.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            if reply.is_empty() {
                return Err(VsockError::Refused { port });
            }
            break;
        }
        if byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
        if reply.len() > MAX_REPLY {
            break;
        }
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    if text.starts_with("OK ") && reply.len() <= MAX_REPLY {
        Ok(stream)
    } else {
        Err(VsockError::BadReply { port, reply: text })
    }
}

/// The Unix socket path where guest-initiated connections to host port `port` arrive.
pub fn listener_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_os_string();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    /// A scripted peer standing in for the VMM's side of the socket. The real peers
    /// (vhost-device-vsock with a booted guest) are exercised by the sandbox system tests.
    async fn peer(
        reply: &'static [u8],
        then: &'static [u8],
    ) -> (PathBuf, tokio::task::JoinHandle<Vec<u8>>) {
        let dir = std::env::temp_dir().join(format!(
            "vmrun-vsock-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = Vec::new();
            loop {
                let mut b = [0_u8; 1];
                if s.read(&mut b).await.unwrap() == 0 || b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
            }
            s.write_all(reply).await.unwrap();
            s.write_all(then).await.unwrap();
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_millis(300), s.read_to_end(&mut rest)).await;
            line.extend_from_slice(b"|");
            line.extend_from_slice(&rest);
            line
        });
        (path, handle)
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[tokio::test]
    async fn ok_reply_leaves_guest_data_in_the_stream() {
        let (path, peer) = peer(b"OK 1024\n", b"guest-bytes").await;
        let mut s = connect(&path, 1024, Duration::from_secs(5)).await.unwrap();
        let mut buf = [0_u8; 11];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"guest-bytes");
        s.write_all(b"host").await.unwrap();
        drop(s);
        assert_eq!(peer.await.unwrap(), b"CONNECT 1024|host");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn eof_is_refused_and_garbage_is_a_bad_reply() {
        let (path, _peer) = peer(b"", b"").await;
        let err = connect(&path, 7, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, VsockError::Refused { port: 7 }), "{err}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();

        let (path, _peer) = peer(b"NO\n", b"").await;
        let err = connect(&path, 7, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, VsockError::BadReply { .. }), "{err}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();

        let err = connect(Path::new("/nonexistent/v.sock"), 7, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/v.sock"), "{err}");
    }

    #[test]
    fn listener_path_appends_the_port() {
        assert_eq!(
            listener_path(Path::new("/run/x/vsock.sock"), 1025),
            PathBuf::from("/run/x/vsock.sock_1025")
        );
    }
}
