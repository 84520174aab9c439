// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! A polling wrapper around `virtio-drivers`' `VsockConnectionManager` for test programs: it
//! remembers connection requests and disconnects seen while waiting for something else, and
//! offers blocking-with-deadline helpers (accept, connect, read a line, read/write a stream).

use crate::arch::Deadline;
use crate::hal::IdentityHal;
use crate::mmio::{find, id, transport};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use virtio_drivers::Error;
use virtio_drivers::device::socket::{
    SocketError, VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEventType,
};
use virtio_drivers::transport::mmio::MmioTransport;

/// Size of each receive buffer (header + up to 64 KiB of payload).
pub const RX_BUFFER_SIZE: usize = (64 << 10) + 44;
/// Receive buffer space advertised per connection (`buf_alloc`).
pub const CONN_BUFFER: u32 = 64 << 10;
/// Largest payload handed to one `send`.
pub const SEND_CHUNK: usize = 16 << 10;

type Manager = VsockConnectionManager<IdentityHal, MmioTransport<'static>, RX_BUFFER_SIZE>;

/// The host's CID.
pub const HOST_CID: u64 = 2;

/// A connection: the peer and our local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// Peer address.
    pub peer: VsockAddr,
    /// Local port.
    pub port: u32,
}

/// The device plus what polling has seen so far.
pub struct Vsock {
    mgr: Manager,
    accepted: Vec<Conn>,
    connected: Vec<Conn>,
    closed: Vec<Conn>,
}

impl core::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vsock")
            .field("accepted", &self.accepted)
            .field("connected", &self.connected)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

fn err(what: &str, e: Error) -> String {
    format!("{what}: {e}")
}

impl Vsock {
    /// Initialises the first announced vsock device.
    pub fn open(cmdline: &str) -> Result<Self, String> {
        let f = find(cmdline, id::VSOCK, 0)?;
        let dev = VirtIOSocket::<IdentityHal, _, RX_BUFFER_SIZE>::new(transport(&f)?)
            .map_err(|e| err("init", e))?;
        Ok(Self {
            mgr: VsockConnectionManager::new_with_capacity(dev, CONN_BUFFER),
            accepted: Vec::new(),
            connected: Vec::new(),
            closed: Vec::new(),
        })
    }

    /// The guest CID from the device's config space.
    pub fn guest_cid(&self) -> u64 {
        self.mgr.guest_cid()
    }

    /// Accepts connections to `port` from now on.
    pub fn listen(&mut self, port: u32) {
        self.mgr.listen(port);
    }

    /// Processes at most one received packet, recording requests and disconnects.
    pub fn poll(&mut self) -> Result<(), String> {
        let Some(ev) = self.mgr.poll().map_err(|e| err("poll", e))? else {
            return Ok(());
        };
        let conn = Conn {
            peer: ev.source,
            port: ev.destination.port,
        };
        match ev.event_type {
            VsockEventType::ConnectionRequest => self.accepted.push(conn),
            VsockEventType::Connected => self.connected.push(conn),
            VsockEventType::Disconnected { .. } => self.closed.push(conn),
            _ => {}
        }
        Ok(())
    }

    /// Waits for an accepted connection on `port`.
    pub fn accept(&mut self, port: u32, deadline: Deadline) -> Result<Conn, String> {
        loop {
            if let Some(i) = self.accepted.iter().position(|c| c.port == port) {
                return Ok(self.accepted.remove(i));
            }
            if deadline.expired() {
                return Err(format!("no connection to port {port} in time"));
            }
            self.poll()?;
        }
    }

    /// Connects to the host's `port` from local port `local`.
    pub fn connect(&mut self, port: u32, local: u32, deadline: Deadline) -> Result<Conn, String> {
        let peer = VsockAddr {
            cid: HOST_CID,
            port,
        };
        self.mgr
            .connect(peer, local)
            .map_err(|e| err("connect", e))?;
        let conn = Conn { peer, port: local };
        loop {
            if let Some(i) = self.connected.iter().position(|c| *c == conn) {
                self.connected.remove(i);
                return Ok(conn);
            }
            if self.closed.contains(&conn) {
                return Err(format!("connection to host port {port} refused"));
            }
            if deadline.expired() {
                return Err(format!("connect to host port {port}: no response in time"));
            }
            self.poll()?;
        }
    }

    /// Whether the peer has closed `c`.
    pub fn is_closed(&self, c: Conn) -> bool {
        self.closed.contains(&c)
    }

    /// Reads whatever is buffered for `c` (polling once first); returns 0 when nothing is.
    pub fn read(&mut self, c: Conn, buf: &mut [u8]) -> Result<usize, String> {
        self.poll()?;
        match self.mgr.recv(c.peer, c.port, buf) {
            Ok(n) => Ok(n),
            // Closed and fully drained.
            Err(Error::SocketDeviceError(SocketError::NotConnected)) => Ok(0),
            Err(e) => Err(err("recv", e)),
        }
    }

    /// Tells the peer how much buffer space we have freed.
    pub fn credit_update(&mut self, c: Conn) -> Result<(), String> {
        match self.mgr.update_credit(c.peer, c.port) {
            Ok(()) | Err(Error::SocketDeviceError(SocketError::NotConnected)) => Ok(()),
            Err(e) => Err(err("credit update", e)),
        }
    }

    /// Reads one `\n`-terminated line (without the newline).
    pub fn read_line(&mut self, c: Conn, deadline: Deadline) -> Result<String, String> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            if self.read(c, &mut b)? == 1 {
                if b[0] == b'\n' {
                    return String::from_utf8(line).map_err(|_| String::from("line is not UTF-8"));
                }
                line.push(b[0]);
                if line.len() > 256 {
                    return Err(String::from("line too long"));
                }
                continue;
            }
            if self.is_closed(c) {
                return Err(format!(
                    "peer closed before a full line ({} bytes)",
                    line.len()
                ));
            }
            if deadline.expired() {
                return Err(String::from("no line in time"));
            }
        }
    }

    /// Sends all of `data`, waiting for credit when the peer has none; returns how many times
    /// the peer's credit ran out (flow control at work).
    pub fn write_all(&mut self, c: Conn, data: &[u8], deadline: Deadline) -> Result<u64, String> {
        let mut stalls = 0;
        for chunk in data.chunks(SEND_CHUNK) {
            loop {
                match self.mgr.send(c.peer, c.port, chunk) {
                    Ok(()) => break,
                    Err(Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)) => {
                        stalls += 1;
                        if deadline.expired() {
                            return Err(String::from("peer gave no credit in time"));
                        }
                        self.poll()?;
                        if self.is_closed(c) {
                            return Err(String::from("peer closed while we were sending"));
                        }
                    }
                    Err(e) => return Err(err("send", e)),
                }
            }
        }
        Ok(stalls)
    }

    /// Shuts `c` down (both directions).
    pub fn shutdown(&mut self, c: Conn) -> Result<(), String> {
        match self.mgr.shutdown(c.peer, c.port) {
            Ok(()) | Err(Error::SocketDeviceError(SocketError::NotConnected)) => Ok(()),
            Err(e) => Err(err("shutdown", e)),
        }
    }

    /// Waits until the peer has closed `c`, discarding data.
    pub fn wait_closed(&mut self, c: Conn, deadline: Deadline) -> Result<(), String> {
        let mut sink = [0u8; 4096];
        while !self.is_closed(c) {
            let _ = self.read(c, &mut sink)?;
            if deadline.expired() {
                return Err(String::from("peer did not close in time"));
            }
        }
        Ok(())
    }
}
