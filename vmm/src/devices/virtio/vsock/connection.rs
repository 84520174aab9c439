// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! One vsock stream connection between a guest port and a host Unix socket: state, the
//! guest→host buffer, and credit accounting in both directions (virtio 1.2 §5.10.6.3).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{PacketHeader, HOST_CID, OP_CREDIT_UPDATE, TYPE_STREAM};

/// Our receive buffer per connection: the credit we advertise to the guest, and the bound on
/// what we buffer for a slow host reader.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once this much was consumed since the last one the guest saw.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// Also send one, for any progress, once the guest believes our free space is below this (a
/// full TX packet no longer fits in its view).
pub const CREDIT_LOW_WATER: u32 = 64 * 1024;

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated, REQUEST sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Open.
    Established,
    /// The guest shut down both directions: flush what is buffered, then RST and close.
    Closing,
}

/// Result of pushing guest data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError {
    /// The guest sent more than its credit allows.
    CreditExceeded,
    /// The host socket failed.
    Broken,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Host-side vsock port.
    pub local_port: u32,
    /// Guest-side vsock port.
    pub peer_port: u32,
    /// State.
    pub state: ConnState,
    /// Event-loop token of `stream`.
    pub token: u32,
    /// The stream may have data (edge-triggered readiness).
    pub readable: bool,
    /// The host sent EOF; SHUTDOWN was queued for the guest.
    pub host_eof: bool,
    /// Shutdown flags received from the guest.
    pub peer_shutdown: u32,
    /// The host stream's write side was shut down (guest sent SHUTDOWN with SEND).
    pub write_shut: bool,
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    credit_update_wanted: bool,
}

impl Connection {
    /// A connection over `stream` (non-blocking).
    pub fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        state: ConnState,
        token: u32,
    ) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            token,
            readable: false,
            host_eof: false,
            peer_shutdown: 0,
            write_shut: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_update_wanted: false,
        }
    }

    /// Records the guest's credit from any packet it sent.
    pub fn update_peer_credit(&mut self, hdr: &PacketHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Accounts `n` bytes sent to the guest.
    pub fn sent_to_guest(&mut self, n: u32) {
        self.rx_cnt += Wrapping(n);
    }

    /// Bytes buffered for the host.
    pub fn tx_buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// A header from us (CID 2) to the guest for this connection, carrying our credit.
    pub fn header(&mut self, guest_cid: u64, op: u16, len: u32, flags: u32) -> PacketHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.credit_update_wanted = false;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The free space in our receive buffer as the guest sees it: `buf_alloc` minus what it
    /// sent that it has not yet seen us consume (the `fwd_cnt` of the last header it got).
    pub fn guest_view_of_free_space(&self) -> u32 {
        let tx_len = Wrapping(u32::try_from(self.tx_buf.len()).unwrap_or(u32::MAX));
        let unacknowledged = (self.fwd_cnt + tx_len - self.last_fwd_cnt_sent).0;
        BUF_ALLOC.saturating_sub(unacknowledged)
    }

    /// Whether a CREDIT_UPDATE is pending: the guest asked for one, or we consumed at least
    /// [`CREDIT_UPDATE_THRESHOLD`] since the last header it got, or we consumed anything while
    /// its view of our free space is below [`CREDIT_LOW_WATER`]. Any header we send carries
    /// the current credit, so sending one clears this.
    pub fn credit_update_due(&self) -> bool {
        let consumed = (self.fwd_cnt - self.last_fwd_cnt_sent).0;
        self.credit_update_wanted
            || consumed >= CREDIT_UPDATE_THRESHOLD
            || (consumed > 0 && self.guest_view_of_free_space() < CREDIT_LOW_WATER)
    }

    /// A CREDIT_UPDATE header carrying the current `fwd_cnt`, if one is due. Call it only when
    /// the header is about to be written into an RX buffer, never to queue it.
    pub fn credit_update(&mut self, guest_cid: u64) -> Option<PacketHeader> {
        if self.credit_update_due() {
            Some(self.header(guest_cid, OP_CREDIT_UPDATE, 0, 0))
        } else {
            None
        }
    }

    /// The guest asked for our credit (CREDIT_REQUEST).
    pub fn want_credit_update(&mut self) {
        self.credit_update_wanted = true;
    }

    /// Takes guest data for the host: writes what the socket accepts, buffers the rest.
    pub fn push_from_guest(&mut self, data: &[u8]) -> Result<(), TxError> {
        let in_flight = self.tx_buf.len().saturating_add(data.len());
        if in_flight > BUF_ALLOC as usize {
            return Err(TxError::CreditExceeded);
        }
        self.tx_buf.extend(data);
        self.flush()
    }

    /// Writes buffered guest data to the host socket until it would block.
    pub fn flush(&mut self) -> Result<(), TxError> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(TxError::Broken),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(u32::try_from(n).unwrap_or(0));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(TxError::Broken),
            }
        }
        Ok(())
    }

    /// Reads host data for the guest into `buf`: `Ok(Some(n))` data, `Ok(None)` would block,
    /// `Ok(Some(0))` EOF.
    pub fn read_from_host(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::OP_RW;
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (
            Connection::new(a, 1 << 30, 5000, ConnState::Established, 16),
            b,
        )
    }

    #[test]
    fn peer_credit_tracks_sent_and_acknowledged_bytes() {
        let (mut c, _h) = pair();
        assert_eq!(
            c.peer_credit(),
            0,
            "no credit before the guest says anything"
        );
        let mut hdr = PacketHeader {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Default::default()
        };
        c.update_peer_credit(&hdr);
        c.sent_to_guest(600);
        assert_eq!(c.peer_credit(), 400);
        c.sent_to_guest(400);
        assert_eq!(c.peer_credit(), 0);
        hdr.fwd_cnt = 700;
        c.update_peer_credit(&hdr);
        assert_eq!(c.peer_credit(), 700);
        // Counters wrap.
        c.rx_cnt = Wrapping(u32::MAX - 10);
        hdr.fwd_cnt = u32::MAX - 10;
        c.update_peer_credit(&hdr);
        c.sent_to_guest(20);
        assert_eq!(c.peer_credit(), 980);
    }

    #[test]
    fn guest_data_is_forwarded_and_credit_update_follows_consumption() {
        let (mut c, mut h) = pair();
        c.push_from_guest(b"hello").unwrap();
        let mut got = [0u8; 5];
        h.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert!(
            c.credit_update(3).is_none(),
            "5 bytes are below the threshold"
        );
        c.want_credit_update();
        let u = c.credit_update(3).unwrap();
        assert_eq!(
            (u.op, u.fwd_cnt, u.buf_alloc),
            (OP_CREDIT_UPDATE, 5, BUF_ALLOC)
        );
        assert!(c.credit_update(3).is_none());
        let big = vec![7u8; CREDIT_UPDATE_THRESHOLD as usize];
        c.push_from_guest(&big).unwrap();
        let mut sink = vec![0u8; big.len()];
        h.read_exact(&mut sink).unwrap();
        assert_eq!(
            c.credit_update(3).unwrap().fwd_cnt,
            5 + CREDIT_UPDATE_THRESHOLD
        );
        let hdr = c.header(3, OP_RW, 1, 0);
        assert_eq!(
            (hdr.src_cid, hdr.dst_cid, hdr.src_port, hdr.dst_port),
            (2, 3, 1 << 30, 5000)
        );
    }

    #[test]
    fn slow_host_reader_buffers_up_to_the_credit() {
        let (mut c, _h) = pair();
        let chunk = vec![1u8; 64 * 1024];
        let mut pushed = 0usize;
        loop {
            match c.push_from_guest(&chunk) {
                Ok(()) => pushed += chunk.len(),
                Err(e) => {
                    assert_eq!(e, TxError::CreditExceeded);
                    break;
                }
            }
            assert!(pushed < 64 << 20, "never refused");
        }
        assert!(c.tx_buffered() <= BUF_ALLOC as usize);
        assert!(
            c.tx_buffered() > 0,
            "the socket filled up and the rest was buffered"
        );
    }

    #[test]
    fn small_progress_is_reported_once_the_guest_sees_little_free_space() {
        let (mut c, mut h) = pair();
        let small: libc::c_int = 4096;
        // SAFETY: setsockopt on a socket we own, with a c_int option value of the given size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&c.stream),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                std::ptr::addr_of!(small).cast::<libc::c_void>(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap(),
            )
        };
        assert_eq!(rc, 0);
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..4 {
            c.push_from_guest(&chunk).unwrap();
        }
        assert!(c.tx_buffered() > (BUF_ALLOC - CREDIT_LOW_WATER) as usize);
        let _ = c.header(3, OP_RW, 0, 0); // the guest has seen everything consumed so far
        assert!(c.guest_view_of_free_space() < CREDIT_LOW_WATER);
        assert!(!c.credit_update_due());
        let before = c.fwd_cnt;
        // The host reads what the small socket buffer held; the flush refills it.
        let mut got = vec![0u8; usize::try_from(before.0).unwrap()];
        h.read_exact(&mut got).unwrap();
        c.flush().unwrap();
        let consumed = (c.fwd_cnt - before).0;
        assert!(
            consumed > 0 && consumed < CREDIT_UPDATE_THRESHOLD,
            "{consumed}"
        );
        let u = c
            .credit_update(3)
            .expect("the guest is nearly out of credit");
        assert_eq!(u.fwd_cnt, c.fwd_cnt.0);
        assert!(c.credit_update(3).is_none());
    }

    #[test]
    fn host_eof_and_broken_pipe() {
        let (mut c, h) = pair();
        let mut buf = [0u8; 8];
        assert_eq!(c.read_from_host(&mut buf).unwrap(), None);
        drop(h);
        assert_eq!(c.read_from_host(&mut buf).unwrap(), Some(0));
        assert_eq!(c.push_from_guest(b"x"), Err(TxError::Broken));
    }
}
