// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! virtio-net (virtio 1.2 §5.1) on a tap device: frames move between the queues and the tap
//! without offloads (no checksum or segmentation features are offered).
//!
//! The tap is opened by name (`IFF_TAP | IFF_NO_PI`) or inherited as an open fd from the
//! runtime. Every buffer starts with the 12-byte `virtio_net_hdr` (VERSION_1 layout): it is
//! stripped on TX and written as zeroes (num_buffers = 1) on RX. A frame that does not fit an RX
//! buffer, or a TX frame the tap will not take now, is dropped and counted, like a NIC would.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::queue_util::{add_used, notify_if_needed};
use super::{
    read_config_bytes, ActivateError, ActiveState, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::{Counter, MetricsSource};
use crate::warn_ratelimited;

/// virtio device type: network card.
pub const TYPE_NET: u32 = 1;
/// VIRTIO_NET_F_MAC.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_STATUS.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// `virtio_net_hdr` size with VERSION_1.
pub const NET_HDR_SIZE: usize = 12;
/// Largest frame handled (no GSO, so an MTU-sized frame plus slack).
pub const MAX_FRAME: usize = 65_550;
/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const TAP_TOKEN: u32 = 2;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// net counters.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames to the guest.
    pub rx_frames: Counter,
    /// Bytes to the guest.
    pub rx_bytes: Counter,
    /// Frames from the guest.
    pub tx_frames: Counter,
    /// Bytes from the guest.
    pub tx_bytes: Counter,
    /// Frames dropped (buffer too small, tap full, malformed chain).
    pub dropped: Counter,
}

impl MetricsSource for NetMetrics {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "rx_frames": self.rx_frames.get(),
            "rx_bytes": self.rx_bytes.get(),
            "tx_frames": self.tx_frames.get(),
            "tx_bytes": self.tx_bytes.get(),
            "dropped": self.dropped.get(),
        })
    }
}

/// Opens (creating if needed) the tap interface `name` without packet information.
pub fn open_tap(name: &str) -> std::io::Result<File> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= ifr.ifr_name.len() {
        return Err(std::io::Error::from(ErrorKind::InvalidInput));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads and writes the ifreq we own, on the tun fd we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(tun)
}

fn set_nonblocking(f: &File) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd we own; flags are read then written back with O_NONBLOCK.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; only O_NONBLOCK is added to the flags just read.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of an inherited fd (it must be open).
pub fn tap_from_fd(fd: i32) -> std::io::Result<File> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::from(ErrorKind::InvalidInput));
    }
    // SAFETY: the caller handed this open fd to the VMM for its exclusive use.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

/// The network device.
pub struct Net {
    tap: File,
    config: [u8; 8],
    evts: Vec<EventFd>,
    active: Option<Active>,
    tap_readable: bool,
    metrics: Arc<NetMetrics>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &&self.config[..6])
            .finish_non_exhaustive()
    }
}

impl Net {
    /// A device on `tap` (made non-blocking) with guest MAC `mac`.
    pub fn new(tap: File, mac: [u8; 6]) -> std::io::Result<Self> {
        set_nonblocking(&tap)?;
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&1u16.to_le_bytes()); // VIRTIO_NET_S_LINK_UP
        Ok(Self {
            tap,
            config,
            evts: vec![
                EventFd::new(libc::EFD_NONBLOCK)?,
                EventFd::new(libc::EFD_NONBLOCK)?,
            ],
            active: None,
            tap_readable: true,
            metrics: Arc::new(NetMetrics::default()),
            buf: vec![0u8; MAX_FRAME],
        })
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// Sends every queued guest frame to the tap.
    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut served = false;
        while let Some(chain) = a.queues[TXQ].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            served = true;
            let frame = Reader::new(&a.mem, chain).ok().and_then(|mut r| {
                let len = r.available_bytes();
                if !(NET_HDR_SIZE..=NET_HDR_SIZE + MAX_FRAME).contains(&len) {
                    return None;
                }
                let mut hdr = [0u8; NET_HDR_SIZE];
                r.read_exact(&mut hdr).ok()?;
                let n = len - NET_HDR_SIZE;
                r.read_exact(&mut self.buf[..n]).ok()?;
                Some(n)
            });
            add_used(&mut a.queues[TXQ], &a.mem, head, 0);
            match frame {
                Some(n) => match self.tap.write(&self.buf[..n]) {
                    Ok(_) => {
                        self.metrics.tx_frames.inc();
                        self.metrics.tx_bytes.add(n as u64);
                    }
                    Err(_) => self.metrics.dropped.inc(),
                },
                None => {
                    self.metrics.dropped.inc();
                    warn_ratelimited!("net: malformed TX chain");
                }
            }
        }
        if served {
            notify_if_needed(&mut a.queues[TXQ], &a.mem, &a.interrupt);
        }
    }

    /// Moves frames from the tap into RX buffers while both are available.
    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut served = false;
        while self.tap_readable {
            let Some(chain) = a.queues[RXQ].pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let n = match self.tap.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.tap_readable = false;
                    a.queues[RXQ].go_to_previous_position();
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {
                    a.queues[RXQ].go_to_previous_position();
                    continue;
                }
                Err(e) => {
                    log::error!("net: tap read failed: {e}");
                    self.tap_readable = false;
                    a.queues[RXQ].go_to_previous_position();
                    break;
                }
            };
            let mut used = 0u32;
            match Writer::new(&a.mem, chain) {
                Ok(mut w) if w.available_bytes() >= NET_HDR_SIZE + n => {
                    let mut hdr = [0u8; NET_HDR_SIZE];
                    hdr[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
                    if w.write_all(&hdr).is_ok() && w.write_all(&self.buf[..n]).is_ok() {
                        used = u32::try_from(NET_HDR_SIZE + n).unwrap_or(0);
                        self.metrics.rx_frames.inc();
                        self.metrics.rx_bytes.add(n as u64);
                    }
                }
                _ => {
                    self.metrics.dropped.inc();
                    warn_ratelimited!("net: RX buffer unusable or too small for a {n}-byte frame");
                }
            }
            add_used(&mut a.queues[RXQ], &a.mem, head, used);
            served = true;
        }
        if served {
            notify_if_needed(&mut a.queues[RXQ], &a.mem, &a.interrupt);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        warn_ratelimited!("net: config space writes are ignored");
    }
    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError> {
        if state.queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: state.queues.len(),
            });
        }
        self.active = Some(Active {
            mem: state.mem,
            queues: state.queues,
            interrupt: state.interrupt,
        });
        // Let the event loop move anything pending.
        let _ = self.evts[TXQ].write(1);
        Ok(())
    }
    fn queue_progress(&self) -> Option<Vec<(u16, u16)>> {
        self.active.as_ref().map(|a| {
            a.queues
                .iter()
                .map(|q| (q.next_avail(), q.next_used()))
                .collect()
        })
    }
    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            0 => {
                let _ = self.evts[RXQ].read();
            }
            1 => {
                let _ = self.evts[TXQ].read();
                self.process_tx();
            }
            _ => self.tap_readable = true,
        }
        self.process_rx();
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.evts.iter().enumerate() {
            let data = u32::try_from(i).unwrap_or(u32::MAX);
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                log::error!("net: cannot watch queue event {i}: {e}");
            }
        }
        let tap = Events::with_data(
            &self.tap,
            TAP_TOKEN,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        );
        if let Err(e) = ops.add(tap) {
            log::error!("net: cannot watch the tap: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue_util::fixture::*;
    use super::*;
    use crate::devices::irq::IrqLine;
    use std::os::unix::net::UnixDatagram;
    use vm_memory::{Bytes, GuestAddress};

    /// A datagram socket pair stands in for the tap (both keep frame boundaries).
    fn device() -> (Net, UnixDatagram, GuestMemoryMmap) {
        let (a, b) = UnixDatagram::pair().unwrap();
        let tap = File::from(OwnedFd::from(a));
        (Net::new(tap, [2, 0, 0, 0, 0, 1]).unwrap(), b, memory())
    }

    fn activate(net: &mut Net, mem: &GuestMemoryMmap, rx: Queue, tx: Queue) {
        net.activate(ActiveState {
            mem: mem.clone(),
            queues: vec![rx, tx],
            acked_features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC,
            interrupt: Interrupt::new(IrqLine::new(5).unwrap()),
        })
        .unwrap();
    }

    #[test]
    fn config_mac_and_mac_parsing() {
        let (net, _peer, _) = device();
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(
            parse_mac("52:54:00:12:34:ff"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0xff])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:ff:00"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:ff"), None);
    }

    #[test]
    fn frames_flow_both_ways() {
        let (mut net, peer, mem) = device();
        let rx = mock(&mem, 0);
        let tx = mock(&mem, 0x8000);
        // TX: header + 60-byte frame split over two descriptors.
        mem.write_slice(&[0u8; NET_HDR_SIZE], GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(&[0xab; 60], GuestAddress(0x11_0000))
            .unwrap();
        tx.add_desc_chains(&chain(&[(0x10_0000, 12, 0), (0x11_0000, 60, 0)], 0), 0)
            .unwrap();
        rx.add_desc_chains(&chain(&[(0x20_0000, 2048, WRITE)], 0), 0)
            .unwrap();
        rx.add_desc_chains(&chain(&[(0x21_0000, 20, WRITE)], 1), 1)
            .unwrap();
        let (rxq, txq) = (queue(&rx), queue(&tx));
        activate(&mut net, &mem, rxq, txq);
        net.process_tx();
        let mut frame = [0u8; 100];
        assert_eq!(peer.recv(&mut frame).unwrap(), 60);
        assert!(frame[..60].iter().all(|b| *b == 0xab));
        // RX: one frame fits the first buffer, the second frame is too big for the second.
        peer.send(&[0x11; 42]).unwrap();
        peer.send(&[0x22; 42]).unwrap();
        net.process_rx();
        let a = net.active.as_ref().unwrap();
        assert_eq!(used(&mem, &a.queues[RXQ], 0), (0, 54));
        assert_eq!(used(&mem, &a.queues[RXQ], 1), (1, 0));
        let nb: u16 = mem.read_obj(GuestAddress(0x20_000a)).unwrap();
        assert_eq!(nb, 1);
        let b: u8 = mem.read_obj(GuestAddress(0x20_000c)).unwrap();
        assert_eq!(b, 0x11);
        assert_eq!(net.metrics.dropped.get(), 1);
        assert_eq!(
            (net.metrics.rx_frames.get(), net.metrics.tx_frames.get()),
            (1, 1)
        );
    }

    #[test]
    fn malformed_tx_is_dropped_and_rx_waits_for_buffers() {
        let (mut net, peer, mem) = device();
        let rx = mock(&mem, 0);
        let tx = mock(&mem, 0x8000);
        tx.add_desc_chains(&chain(&[(0xffff_0000, 64, 0)], 0), 0)
            .unwrap();
        tx.add_desc_chains(&chain(&[(0x10_0000, 4, 0)], 1), 1)
            .unwrap();
        let (rxq, txq) = (queue(&rx), queue(&tx));
        activate(&mut net, &mem, rxq, txq);
        net.process_tx();
        assert_eq!(net.metrics.dropped.get(), 2);
        peer.send(&[1; 10]).unwrap();
        net.process_rx(); // no RX buffers: the frame stays in the "tap"
        assert!(net.tap_readable);
        rx.add_desc_chains(&chain(&[(0x20_0000, 2048, WRITE)], 0), 0)
            .unwrap();
        net.process_rx();
        assert_eq!(net.metrics.rx_frames.get(), 1);
        rx.add_desc_chains(&chain(&[(0x21_0000, 2048, WRITE)], 1), 1)
            .unwrap();
        net.process_rx();
        assert!(!net.tap_readable, "drained to EAGAIN");
        assert_eq!(net.metrics.rx_frames.get(), 1);
    }

    #[test]
    fn opens_a_real_tap() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("skipped: needs root and /dev/net/tun");
            return;
        }
        let name = format!("vmrt{}", std::process::id() % 100_000);
        let tap = open_tap(&name).unwrap();
        assert!(std::path::Path::new(&format!("/sys/class/net/{name}")).exists());
        let net = Net::new(tap, [2, 0, 0, 0, 0, 2]).unwrap();
        drop(net); // closing the only fd removes the non-persistent tap
        assert!(!std::path::Path::new(&format!("/sys/class/net/{name}")).exists());
        assert!(open_tap("").is_err());
        assert!(tap_from_fd(-1).is_err());
    }
}

/// Bounded random-input test: random TX and RX chains (with random frames arriving from the
/// "tap") never panic virtio-net; every TX frame that reaches the tap had a whole header.
#[cfg(test)]
mod fuzz_tests {
    use super::super::queue_util::fixture::*;
    use super::*;
    use crate::devices::irq::IrqLine;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn fuzz_net_random_chains_and_frames() {
        let (a, peer) = UnixDatagram::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let mut dev = Net::new(File::from(OwnedFd::from(a)), [2, 0, 0, 0, 0, 1]).unwrap();
        let mem = memory();
        let (mrx, mtx) = (mock(&mem, 0), mock(&mem, 0x8000));
        let (qrx, qtx) = (queue(&mrx), queue(&mtx));
        dev.activate(ActiveState {
            mem: mem.clone(),
            queues: vec![queue(&mrx), queue(&mtx)],
            acked_features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC,
            interrupt: Interrupt::new(IrqLine::new(5).unwrap()),
        })
        .unwrap();
        let mut f = Fuzz::new(0x4e7);
        let (mut prx, mut ptx) = (0u16, 0u16);
        let mut frame = vec![0u8; 2048];
        let mut uc_ptx = UsedCheck::default();
        let mut uc_prx = UsedCheck::default();
        let iters = Fuzz::iters(20_000);
        for _ in 0..iters {
            if f.below(2) == 0 {
                random_chain(&mem, &qtx, &mut f, &mut ptx);
                uc_ptx.published_one();
                dev.process_tx();
                uc_ptx.check(dev.active.as_ref().unwrap().queues[TXQ].next_used());
                while let Ok(n) = peer.recv(&mut frame) {
                    assert!(n <= MAX_FRAME);
                }
            } else {
                random_chain(&mem, &qrx, &mut f, &mut prx);
                uc_prx.published_one();
                let n = usize::try_from(f.below(1600)).unwrap_or(0);
                let _ = peer.send(&frame[..n]);
                dev.tap_readable = true;
                dev.process_rx();
                uc_prx.check(dev.active.as_ref().unwrap().queues[RXQ].next_used());
            }
        }
        eprintln!("fuzz_net_random_chains_and_frames: {iters} chains");
    }
}
