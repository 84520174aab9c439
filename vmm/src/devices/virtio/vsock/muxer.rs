// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The hybrid vsock muxer: the Unix listener, `CONNECT` handshakes, connections keyed by
//! `(host port, guest port)`, and the queue of control packets for the guest.
//!
//! It never touches virtqueues: the device feeds it guest packets ([`Muxer::handle_tx`]) and
//! asks it for the next packet to put into an RX buffer ([`Muxer::next_rx_packet`]).
//!
//! Credit updates are never queued: a connection only has a "credit update due" state (at most
//! one pending per connection), and the CREDIT_UPDATE header is built when it is written into
//! an RX buffer, so it always carries the current `fwd_cnt` (virtio 1.2 §5.10.6.3). The control
//! queue holds at most REQUEST/RESPONSE and one RST per port pair, so what waits for RX
//! buffers is bounded per connection. New and
//! closed sockets are (un)registered with the event loop in [`Muxer::sync_events`], so a
//! closed fd is always removed from epoll before it is closed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};

use super::connection::{ConnState, Connection, TxError};
use super::packet::{
    parse_connect, PacketHeader, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::VsockMetrics;
use crate::warn_ratelimited;

/// Most connections (and pending handshakes) at once.
pub const MAX_CONNECTIONS: usize = 1023;
/// Longest `CONNECT <port>\n` line.
pub const MAX_HANDSHAKE: usize = 32;
/// Most control packets waiting for RX buffers.
pub const MAX_CONTROL: usize = 4096;
/// First host-side port for host-initiated connections.
pub const LOCAL_PORT_BASE: u32 = 1 << 30;
/// Event-loop token of the listener.
pub const LISTENER_TOKEN: u32 = 3;
/// First token for streams.
pub const FIRST_STREAM_TOKEN: u32 = 16;

/// `(host port, guest port)`.
pub type ConnKey = (u32, u32);

#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The muxer.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    handshakes: HashMap<u32, Handshake>,
    conns: HashMap<ConnKey, Connection>,
    tokens: HashMap<u32, ConnKey>,
    next_token: u32,
    next_local_port: u32,
    control: VecDeque<PacketHeader>,
    /// `(src_port, dst_port)` of the RSTs in `control` (one per port pair is enough).
    queued_rst: HashSet<(u32, u32)>,
    to_register: Vec<(RawFd, u32)>,
    graveyard: Vec<UnixStream>,
    rr: usize,
    metrics: Arc<VsockMetrics>,
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

/// Connects to a Unix socket without blocking (a full backlog is an error, not a wait).
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::from(ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or(1);
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    // SAFETY: plain socket(2) call; the result is checked and owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = u32::try_from(std::mem::size_of::<libc::sockaddr_un>()).unwrap_or(0);
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

impl Muxer {
    /// Binds the listener at `uds_path` (a stale socket file is replaced).
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        metrics: Arc<VsockMetrics>,
    ) -> std::io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                std::fs::remove_file(uds_path)?;
            }
        }
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_local_port: LOCAL_PORT_BASE,
            control: VecDeque::new(),
            queued_rst: HashSet::new(),
            to_register: Vec::new(),
            graveyard: Vec::new(),
            rr: 0,
            metrics,
        })
    }

    /// The listener (registered by the device with [`LISTENER_TOKEN`]).
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_STREAM_TOKEN);
            if !self.tokens.contains_key(&t) && !self.handshakes.contains_key(&t) {
                return t;
            }
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = match self.next_local_port.checked_add(1) {
                Some(n) if n < (1u32 << 31) => n,
                _ => LOCAL_PORT_BASE,
            };
            if !self.conns.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    /// Queues a control packet; false if the queue was full and it was dropped.
    fn push_control(&mut self, hdr: PacketHeader) -> bool {
        if self.control.len() >= MAX_CONTROL {
            self.metrics.control_dropped.inc();
            warn_ratelimited!("vsock: control queue full, dropping op {}", hdr.op);
            return false;
        }
        self.control.push_back(hdr);
        true
    }

    /// Queues an RST unless one for the same port pair is already waiting.
    fn push_rst(&mut self, hdr: PacketHeader) {
        if self.queued_rst.insert((hdr.src_port, hdr.dst_port)) {
            if self.push_control(hdr) {
                self.metrics.rst_sent.inc();
            } else {
                self.queued_rst.remove(&(hdr.src_port, hdr.dst_port));
            }
        }
    }

    fn rst_for(&mut self, to: &PacketHeader) {
        self.push_rst(PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        });
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            self.tokens.remove(&c.token);
            self.to_register.retain(|(_, t)| *t != c.token);
            self.graveyard.push(c.stream);
            self.metrics.conns_closed.inc();
        }
    }

    fn reset_conn(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            let hdr = c.header(self.guest_cid, OP_RST, 0, 0);
            self.push_rst(hdr);
        }
        self.remove(key);
    }

    /// Accepts pending host connections.
    pub fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        self.metrics.conns_refused.inc();
                        continue;
                    }
                    let token = self.alloc_token();
                    self.to_register.push((stream.as_raw_fd(), token));
                    self.handshakes.insert(
                        token,
                        Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    log::warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    break;
                }
            }
        }
    }

    fn read_handshake(&mut self, token: u32) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let done = loop {
            match h.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(parse_connect(&h.line)),
                Ok(_) if h.line.len() >= MAX_HANDSHAKE => break Err(()),
                Ok(_) => h.line.push(byte[0]),
                Err(e) if would_block(&e) => return,
                Err(_) => break Err(()),
            }
        };
        let Some(h) = self.handshakes.remove(&token) else {
            return;
        };
        let port = match done {
            Ok(Some(port)) => port,
            _ => {
                self.metrics.handshake_errors.inc();
                self.to_register.retain(|(_, t)| *t != token);
                self.graveyard.push(h.stream);
                return;
            }
        };
        let local = self.alloc_local_port(port);
        let mut conn = Connection::new(h.stream, local, port, ConnState::LocalInit, token);
        let req = conn.header(self.guest_cid, OP_REQUEST, 0, 0);
        self.tokens.insert(token, (local, port));
        self.conns.insert((local, port), conn);
        self.metrics.conns_opened.inc();
        let _ = self.push_control(req);
    }

    /// A readiness event on a stream.
    pub fn on_stream_event(&mut self, token: u32, set: EventSet) {
        if self.handshakes.contains_key(&token) {
            self.read_handshake(token);
            return;
        }
        let Some(key) = self.tokens.get(&token).copied() else {
            return;
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            c.readable = true;
        }
        if set.contains(EventSet::OUT) {
            self.flush_conn(key);
        }
    }

    /// Writes buffered guest data of `key`; completes shutdowns that waited for it.
    fn flush_conn(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state == ConnState::LocalInit {
            return;
        }
        if c.flush().is_err() {
            self.reset_conn(key);
            return;
        }
        if c.tx_buffered() == 0 {
            if c.state == ConnState::Closing {
                self.reset_conn(key);
                return;
            }
            if c.peer_shutdown & SHUTDOWN_SEND != 0 && !c.write_shut {
                c.write_shut = true;
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    fn guest_connect(&mut self, hdr: &PacketHeader) {
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.dst_cid != HOST_CID
            || self.conns.contains_key(&key)
            || self.conns.len() >= MAX_CONNECTIONS
        {
            self.metrics.conns_refused.inc();
            self.rst_for(hdr);
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), hdr.dst_port));
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(_) => {
                self.metrics.conns_refused.inc();
                self.rst_for(hdr);
                return;
            }
        };
        let token = self.alloc_token();
        let mut conn = Connection::new(
            stream,
            hdr.dst_port,
            hdr.src_port,
            ConnState::Established,
            token,
        );
        conn.update_peer_credit(hdr);
        conn.readable = true;
        let resp = conn.header(self.guest_cid, OP_RESPONSE, 0, 0);
        self.to_register.push((conn.stream.as_raw_fd(), token));
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.metrics.conns_opened.inc();
        let _ = self.push_control(resp);
    }

    /// Handles one packet the guest sent.
    pub fn handle_tx(&mut self, hdr: &PacketHeader, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            self.metrics.invalid_packets.inc();
            warn_ratelimited!(
                "vsock: packet from CID {} (guest is {})",
                hdr.src_cid,
                self.guest_cid
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            self.metrics.invalid_packets.inc();
            if hdr.op != OP_RST {
                self.rst_for(hdr);
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.op == OP_REQUEST {
            self.guest_connect(hdr);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if hdr.op != OP_RST {
                self.rst_for(hdr);
            }
            return;
        };
        c.update_peer_credit(hdr);
        match hdr.op {
            OP_RESPONSE if c.state == ConnState::LocalInit => {
                c.state = ConnState::Established;
                c.readable = true;
                let ok = format!("OK {}\n", c.local_port);
                if c.stream.write_all(ok.as_bytes()).is_err() {
                    self.reset_conn(key);
                }
            }
            OP_RST => self.remove(key),
            OP_RW if c.state == ConnState::Established && c.peer_shutdown & SHUTDOWN_SEND == 0 => {
                self.metrics.tx_bytes.add(payload.len() as u64);
                // A credit update that becomes due is sent by `next_rx_packet`.
                match c.push_from_guest(payload) {
                    Ok(()) => {}
                    Err(TxError::CreditExceeded) => {
                        self.metrics.credit_violations.inc();
                        warn_ratelimited!("vsock: guest port {} exceeded its credit", hdr.src_port);
                        self.reset_conn(key);
                    }
                    Err(TxError::Broken) => self.reset_conn(key),
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => c.want_credit_update(),
            OP_SHUTDOWN => {
                c.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if c.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    c.state = ConnState::Closing;
                }
                self.flush_conn(key);
            }
            _ => {
                self.metrics.invalid_packets.inc();
                self.reset_conn(key);
            }
        }
    }

    /// The next packet for an RX buffer with room for `max_payload` bytes of data: control
    /// packets first, then credit updates, then data from readable connections (round-robin,
    /// within the guest's credit). Data goes into `buf`; returns the header and its length.
    pub fn next_rx_packet(
        &mut self,
        max_payload: usize,
        buf: &mut [u8],
    ) -> Option<(PacketHeader, usize)> {
        if let Some(h) = self.control.pop_front() {
            if h.op == OP_RST {
                self.queued_rst.remove(&(h.src_port, h.dst_port));
            }
            return Some((h, 0));
        }
        let cid = self.guest_cid;
        for c in self.conns.values_mut() {
            if c.state != ConnState::LocalInit {
                if let Some(u) = c.credit_update(cid) {
                    return Some((u, 0));
                }
            }
        }
        let mut candidates: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.state == ConnState::Established
                    && c.readable
                    && !c.host_eof
                    && c.peer_shutdown & SHUTDOWN_RCV == 0
                    && c.peer_credit() > 0
            })
            .map(|(k, _)| *k)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        candidates.sort_unstable();
        let n = candidates.len();
        self.rr = self.rr.wrapping_add(1);
        for i in 0..n {
            let key = candidates[(self.rr + i) % n];
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let credit = usize::try_from(c.peer_credit()).unwrap_or(usize::MAX);
            let want = max_payload.min(credit).min(buf.len());
            if want == 0 {
                continue;
            }
            match c.read_from_host(&mut buf[..want]) {
                Ok(Some(0)) => {
                    c.host_eof = true;
                    c.readable = false;
                    let h = c.header(cid, OP_SHUTDOWN, 0, SHUTDOWN_SEND);
                    return Some((h, 0));
                }
                Ok(Some(len)) => {
                    let len32 = u32::try_from(len).unwrap_or(0);
                    c.sent_to_guest(len32);
                    self.metrics.rx_bytes.add(len as u64);
                    let h = c.header(cid, OP_RW, len32, 0);
                    return Some((h, len));
                }
                Ok(None) => c.readable = false,
                Err(_) => {
                    let h = c.header(cid, OP_RST, 0, 0);
                    self.metrics.rst_sent.inc();
                    self.remove(key);
                    return Some((h, 0));
                }
            }
        }
        None
    }

    /// Registers new sockets with the event loop and unregisters (then closes) dead ones.
    pub fn sync_events(&mut self, ops: &mut EventOps) {
        for stream in self.graveyard.drain(..) {
            let _ = ops.remove(Events::empty(&stream));
        }
        let set = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        for (fd, token) in self.to_register.drain(..) {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, set)) {
                log::error!("vsock: cannot watch a connection: {e}");
            }
        }
    }

    /// Drops every connection (device reset).
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove(k);
        }
        for (_, h) in self.handshakes.drain() {
            self.graveyard.push(h.stream);
        }
        self.to_register.clear();
        self.tokens.clear();
        self.control.clear();
        self.queued_rst.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::connection::BUF_ALLOC;
    use super::*;
    use std::io::BufRead;

    fn muxer(name: &str) -> (Muxer, PathBuf) {
        let dir = std::env::temp_dir().join(format!("vmrun-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        (
            Muxer::new(3, &uds, Arc::new(VsockMetrics::default())).unwrap(),
            dir,
        )
    }

    fn guest(op: u16, src_port: u32, dst_port: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Default::default()
        }
    }

    fn next(m: &mut Muxer) -> Option<(PacketHeader, Vec<u8>)> {
        let mut buf = vec![0u8; 4096];
        m.next_rx_packet(4096, &mut buf)
            .map(|(h, n)| (h, buf[..n].to_vec()))
    }

    fn settle(m: &mut Muxer) {
        // What the event loop would do: accept, then read every handshake.
        std::thread::sleep(std::time::Duration::from_millis(20));
        m.accept();
        let tokens: Vec<u32> = m.handshakes.keys().copied().collect();
        for t in tokens {
            m.on_stream_event(t, EventSet::IN);
        }
    }

    #[test]
    fn host_connect_handshake_and_data_both_ways() {
        let (mut m, dir) = muxer("hostconn");
        let mut host = UnixStream::connect(dir.join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        settle(&mut m);
        let (req, _) = next(&mut m).unwrap();
        assert_eq!(
            (req.op, req.dst_port, req.dst_cid, req.src_cid),
            (OP_REQUEST, 1024, 3, 2)
        );
        assert!(req.src_port >= LOCAL_PORT_BASE);
        let local = req.src_port;
        m.handle_tx(&guest(OP_RESPONSE, 1024, local), &[]);
        let mut line = String::new();
        std::io::BufReader::new(host.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, format!("OK {local}\n"));
        // guest -> host
        m.handle_tx(&guest(OP_RW, 1024, local), b"ping");
        let mut got = [0u8; 4];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        // host -> guest
        host.write_all(b"pong").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        let (h, data) = next(&mut m).unwrap();
        assert_eq!((h.op, h.len, h.dst_port), (OP_RW, 4, 1024));
        assert_eq!(data, b"pong");
        // host closes: guest gets SHUTDOWN(SEND); guest RST removes the connection.
        drop(host);
        std::thread::sleep(std::time::Duration::from_millis(10));
        let (h, _) = next(&mut m).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        m.handle_tx(&guest(OP_RST, 1024, local), &[]);
        assert_eq!(m.connection_count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refused_host_connect_closes_the_socket() {
        let (mut m, dir) = muxer("refused");
        let mut host = UnixStream::connect(dir.join("v.sock")).unwrap();
        host.write_all(b"connect 9\n").unwrap();
        settle(&mut m);
        let (req, _) = next(&mut m).unwrap();
        m.handle_tx(&guest(OP_RST, 9, req.src_port), &[]);
        m.graveyard.clear();
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).unwrap(), 0, "host sees EOF");
        // A bad handshake is dropped.
        let mut bad = UnixStream::connect(dir.join("v.sock")).unwrap();
        bad.write_all(b"HELLO\n").unwrap();
        settle(&mut m);
        m.graveyard.clear();
        assert_eq!(bad.read(&mut buf).unwrap(), 0);
        assert_eq!(m.metrics.handshake_errors.get(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn guest_connect_to_listening_and_absent_ports() {
        let (mut m, dir) = muxer("guestconn");
        let listener = UnixListener::bind(dir.join("v.sock_1025")).unwrap();
        m.handle_tx(&guest(OP_REQUEST, 777, 1025), &[]);
        let (h, _) = next(&mut m).unwrap();
        assert_eq!((h.op, h.src_port, h.dst_port), (OP_RESPONSE, 1025, 777));
        let (mut s, _) = listener.accept().unwrap();
        m.handle_tx(&guest(OP_RW, 777, 1025), b"log line\n");
        let mut got = [0u8; 9];
        s.read_exact(&mut got).unwrap();
        // Guest closes both directions: RST back, host sees EOF.
        let mut sd = guest(OP_SHUTDOWN, 777, 1025);
        sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        m.handle_tx(&sd, &[]);
        let (h, _) = next(&mut m).unwrap();
        assert_eq!(h.op, OP_RST);
        m.graveyard.clear();
        let mut buf = [0u8; 4];
        assert_eq!(s.read(&mut buf).unwrap(), 0);
        // Nobody listens on 1026: RST.
        m.handle_tx(&guest(OP_REQUEST, 778, 1026), &[]);
        assert_eq!(next(&mut m).unwrap().0.op, OP_RST);
        // Data for an unknown connection: RST; an RST for one: nothing.
        m.handle_tx(&guest(OP_RW, 1, 2), b"x");
        assert_eq!(next(&mut m).unwrap().0.op, OP_RST);
        m.handle_tx(&guest(OP_RST, 1, 2), &[]);
        assert!(next(&mut m).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn spoofed_cid_and_credit_limits() {
        let (mut m, dir) = muxer("credit");
        let listener = UnixListener::bind(dir.join("v.sock_5")).unwrap();
        let mut spoof = guest(OP_REQUEST, 1, 5);
        spoof.src_cid = 9;
        m.handle_tx(&spoof, &[]);
        assert!(next(&mut m).is_none());
        assert_eq!(m.metrics.invalid_packets.get(), 1);
        // Guest-initiated connection with a guest credit of 8 bytes.
        let mut req = guest(OP_REQUEST, 10, 5);
        req.buf_alloc = 8;
        m.handle_tx(&req, &[]);
        assert_eq!(next(&mut m).unwrap().0.op, OP_RESPONSE);
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&[1u8; 20]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        let (h, d) = next(&mut m).unwrap();
        assert_eq!((h.op, d.len()), (OP_RW, 8), "limited by the guest's credit");
        assert!(next(&mut m).is_none(), "no credit left");
        let mut upd = guest(OP_CREDIT_UPDATE, 10, 5);
        upd.buf_alloc = 8;
        upd.fwd_cnt = 8;
        m.handle_tx(&upd, &[]);
        assert_eq!(next(&mut m).unwrap().1.len(), 8);
        // Credit request gets an update.
        m.handle_tx(&guest(OP_CREDIT_REQUEST, 10, 5), &[]);
        assert_eq!(next(&mut m).unwrap().0.op, OP_CREDIT_UPDATE);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A guest-initiated connection 10 -> 5 with its host end.
    fn established(m: &mut Muxer, dir: &Path) -> UnixStream {
        let listener = UnixListener::bind(dir.join("v.sock_5")).unwrap();
        m.handle_tx(&guest(OP_REQUEST, 10, 5), &[]);
        assert_eq!(next(m).unwrap().0.op, OP_RESPONSE);
        listener.accept().unwrap().0
    }

    #[test]
    fn many_rw_packets_leave_one_credit_update_with_the_current_fwd_cnt() {
        let (mut m, dir) = muxer("manyrw");
        let mut s = established(&mut m, &dir);
        let chunk = vec![0x5au8; 16 << 10];
        let mut sink = vec![0u8; chunk.len()];
        for _ in 0..32 {
            m.handle_tx(&guest(OP_RW, 10, 5), &chunk);
            s.read_exact(&mut sink).unwrap();
        }
        assert!(m.control.is_empty(), "no credit update was queued");
        let (u, _) = next(&mut m).unwrap();
        assert_eq!(
            (u.op, u.fwd_cnt, u.buf_alloc),
            (OP_CREDIT_UPDATE, 32 << 14, BUF_ALLOC),
            "one update, built when sent, with everything consumed so far"
        );
        assert!(next(&mut m).is_none(), "at most one pending update");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn repeated_credit_requests_and_rsts_stay_bounded() {
        let (mut m, dir) = muxer("manyreq");
        let mut s = established(&mut m, &dir);
        m.handle_tx(&guest(OP_RW, 10, 5), b"abc");
        for _ in 0..100 {
            m.handle_tx(&guest(OP_CREDIT_REQUEST, 10, 5), &[]);
        }
        let mut got = [0u8; 3];
        s.read_exact(&mut got).unwrap();
        let (u, _) = next(&mut m).unwrap();
        assert_eq!((u.op, u.fwd_cnt), (OP_CREDIT_UPDATE, 3));
        assert!(next(&mut m).is_none(), "100 requests, one answer");
        // Data for an unknown connection, again and again: one RST waits, not 100.
        for _ in 0..100 {
            m.handle_tx(&guest(OP_RW, 11, 5), b"x");
        }
        assert_eq!(m.control.len(), 1);
        assert_eq!(next(&mut m).unwrap().0.op, OP_RST);
        assert!(next(&mut m).is_none());
        // Once it was sent, a new offence gets a new RST.
        m.handle_tx(&guest(OP_RW, 11, 5), b"x");
        assert_eq!(next(&mut m).unwrap().0.op, OP_RST);
        assert_eq!(m.metrics.rst_sent.get(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Bounded random-input test: random guest packets never panic the muxer.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // truncating random bits is the point
mod random_tests {
    use super::*;

    #[test]
    fn random_guest_packets_never_panic() {
        let dir = std::env::temp_dir().join(format!("vmrun-vsock-rand-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let _l = UnixListener::bind(dir.join("v.sock_7")).unwrap();
        let mut m = Muxer::new(3, &dir.join("v.sock"), Arc::new(VsockMetrics::default())).unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = vec![0u8; 4096];
        for _ in 0..50_000 {
            let r = next();
            let hdr = PacketHeader {
                src_cid: if r % 10 == 0 { r >> 32 } else { 3 },
                dst_cid: if r % 11 == 0 { 5 } else { 2 },
                src_port: (r >> 8) as u32 % 4,
                dst_port: if r % 3 == 0 { 7 } else { (r >> 16) as u32 % 9 },
                len: (r >> 24) as u32 % 64,
                type_: if r % 13 == 0 { 2 } else { TYPE_STREAM },
                op: ((r >> 32) % 9) as u16,
                flags: ((r >> 40) % 4) as u32,
                buf_alloc: (r >> 44) as u32 % 1024,
                fwd_cnt: (r >> 20) as u32,
            };
            let payload = vec![0u8; hdr.len as usize];
            m.handle_tx(&hdr, &payload);
            if r % 5 == 0 {
                let _ = m.next_rx_packet((r % 4096) as usize, &mut buf);
            }
            m.graveyard.clear();
            m.to_register.clear();
        }
        assert!(m.connection_count() <= MAX_CONNECTIONS);
        assert!(m.control.len() <= MAX_CONTROL);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
