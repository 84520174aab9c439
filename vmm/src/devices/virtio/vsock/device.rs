// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The virtio-vsock device: config space (guest CID), the RX/TX/event queues, and the event
//! handler that connects them to the [`Muxer`].
//!
//! Event tokens: 0 = RX queue, 1 = TX queue, 2 = event queue, 3 = the Unix listener, 16 and up
//! = host streams.

use std::io::{Read, Write};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Muxer, LISTENER_TOKEN};
use super::packet::{PacketHeader, HDR_SIZE, MAX_PAYLOAD};
use crate::config::VsockConfig;
use crate::devices::virtio::queue_util::{add_used, notify_if_needed};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, ActiveState, Interrupt, VirtioDevice, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};
use crate::metrics::{Counter, MetricsSource};
use crate::warn_ratelimited;

/// Queue size for all three queues.
pub const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;

/// vsock counters.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Packets put into RX buffers.
    pub rx_packets: Counter,
    /// Packets taken from the TX queue.
    pub tx_packets: Counter,
    /// Payload bytes host → guest.
    pub rx_bytes: Counter,
    /// Payload bytes guest → host.
    pub tx_bytes: Counter,
    /// Connections opened.
    pub conns_opened: Counter,
    /// Connections closed.
    pub conns_closed: Counter,
    /// Connections refused (limit, no listener, bad destination).
    pub conns_refused: Counter,
    /// Malformed `CONNECT` lines.
    pub handshake_errors: Counter,
    /// RST packets sent.
    pub rst_sent: Counter,
    /// Malformed or misaddressed packets and buffers.
    pub invalid_packets: Counter,
    /// Guests that sent more than their credit.
    pub credit_violations: Counter,
    /// Control packets dropped because too many were waiting.
    pub control_dropped: Counter,
}

impl MetricsSource for VsockMetrics {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "rx_packets": self.rx_packets.get(),
            "tx_packets": self.tx_packets.get(),
            "rx_bytes": self.rx_bytes.get(),
            "tx_bytes": self.tx_bytes.get(),
            "conns_opened": self.conns_opened.get(),
            "conns_closed": self.conns_closed.get(),
            "conns_refused": self.conns_refused.get(),
            "handshake_errors": self.handshake_errors.get(),
            "rst_sent": self.rst_sent.get(),
            "invalid_packets": self.invalid_packets.get(),
            "credit_violations": self.credit_violations.get(),
            "control_dropped": self.control_dropped.get(),
        })
    }
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    evts: Vec<EventFd>,
    muxer: Muxer,
    active: Option<Active>,
    metrics: Arc<VsockMetrics>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cid", &self.cid)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// Creates the device and binds its Unix socket.
    pub fn new(cfg: &VsockConfig) -> std::io::Result<Self> {
        let metrics = Arc::new(VsockMetrics::default());
        Ok(Self {
            cid: cfg.guest_cid,
            evts: vec![
                EventFd::new(libc::EFD_NONBLOCK)?,
                EventFd::new(libc::EFD_NONBLOCK)?,
                EventFd::new(libc::EFD_NONBLOCK)?,
            ],
            muxer: Muxer::new(cfg.guest_cid, &cfg.uds_path, metrics.clone())?,
            active: None,
            metrics,
            buf: vec![0u8; MAX_PAYLOAD],
        })
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// Drains the TX queue into the muxer.
    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut served = false;
        while let Some(chain) = a.queues[TXQ].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            served = true;
            self.metrics.tx_packets.inc();
            let parsed = Reader::new(&a.mem, chain).ok().and_then(|mut r| {
                let mut hdr = [0u8; HDR_SIZE];
                r.read_exact(&mut hdr).ok()?;
                let hdr = PacketHeader::parse(&hdr);
                let len = usize::try_from(hdr.len).ok()?;
                if len > MAX_PAYLOAD || r.available_bytes() < len {
                    return None;
                }
                let mut payload = vec![0u8; len];
                r.read_exact(&mut payload).ok()?;
                Some((hdr, payload))
            });
            add_used(&mut a.queues[TXQ], &a.mem, head, 0);
            match parsed {
                Some((hdr, payload)) => self.muxer.handle_tx(&hdr, &payload),
                None => {
                    self.metrics.invalid_packets.inc();
                    warn_ratelimited!("vsock: malformed TX packet");
                }
            }
        }
        if served {
            notify_if_needed(&mut a.queues[TXQ], &a.mem, &a.interrupt);
        }
    }

    /// Fills RX buffers with whatever the muxer has for the guest.
    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut served = false;
        while let Some(chain) = a.queues[RXQ].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let mut w = match Writer::new(&a.mem, chain) {
                Ok(w) if w.available_bytes() >= HDR_SIZE => w,
                _ => {
                    self.metrics.invalid_packets.inc();
                    warn_ratelimited!("vsock: unusable RX buffer");
                    add_used(&mut a.queues[RXQ], &a.mem, head, 0);
                    served = true;
                    continue;
                }
            };
            let room = (w.available_bytes() - HDR_SIZE).min(MAX_PAYLOAD);
            let Some((hdr, n)) = self.muxer.next_rx_packet(room, &mut self.buf) else {
                a.queues[RXQ].go_to_previous_position();
                break;
            };
            let ok = w.write_all(&hdr.to_bytes()).is_ok() && w.write_all(&self.buf[..n]).is_ok();
            if !ok {
                self.metrics.invalid_packets.inc();
            }
            let used = u32::try_from(HDR_SIZE + n).unwrap_or(0);
            add_used(&mut a.queues[RXQ], &a.mem, head, used);
            self.metrics.rx_packets.inc();
            served = true;
        }
        if served {
            notify_if_needed(&mut a.queues[RXQ], &a.mem, &a.interrupt);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        warn_ratelimited!("vsock: config space is read-only");
    }
    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError> {
        if state.queues.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: state.queues.len(),
            });
        }
        // Queues the driver left disabled simply yield nothing (virtio-queue refuses to pop
        // from a queue that is not ready).
        self.active = Some(Active {
            mem: state.mem,
            queues: state.queues,
            interrupt: state.interrupt,
        });
        // Let the event loop drain what was queued before DRIVER_OK.
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
        self.muxer.reset();
        // Wake the event loop so the closed sockets are unregistered and closed promptly.
        let _ = self.evts[EVQ].write(1);
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        match token {
            0..=2 => {
                let _ = self.evts[token as usize].read();
                if token == 1 {
                    self.process_tx();
                }
            }
            LISTENER_TOKEN => self.muxer.accept(),
            t => self.muxer.on_stream_event(t, events.event_set()),
        }
        self.process_rx();
        self.muxer.sync_events(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.evts.iter().enumerate() {
            let data = u32::try_from(i).unwrap_or(u32::MAX);
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                log::error!("vsock: cannot watch queue event {i}: {e}");
            }
        }
        let l = Events::with_data_raw(self.muxer.listener_fd(), LISTENER_TOKEN, EventSet::IN);
        if let Err(e) = ops.add(l) {
            log::error!("vsock: cannot watch the listener: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::*;
    use super::*;
    use crate::devices::irq::IrqLine;
    use crate::devices::virtio::queue_util::fixture::*;
    use std::os::unix::net::{UnixListener, UnixStream};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn guest_connect_through_the_queues() {
        let dir = std::env::temp_dir().join(format!("vmrun-vsockdev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let mut dev = Vsock::new(&VsockConfig {
            uds_path: uds.clone(),
            guest_cid: 3,
        })
        .unwrap();
        let mut cid = [0u8; 8];
        dev.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 3);
        let listener = UnixListener::bind(dir.join("v.sock_1025")).unwrap();

        let mem = memory();
        let rx = mock(&mem, 0);
        let tx = mock(&mem, 0x8000);
        let ev = mock(&mem, 0x10000);
        // One RX buffer; one TX packet: REQUEST to CID 2 port 1025, plus a malformed one.
        rx.add_desc_chains(&chain(&[(0x20_0000, 4096, WRITE)], 0), 0)
            .unwrap();
        let req = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 900,
            dst_port: 1025,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            buf_alloc: 4096,
            ..Default::default()
        };
        mem.write_slice(&req.to_bytes(), GuestAddress(0x30_0000))
            .unwrap();
        tx.add_desc_chains(&chain(&[(0x30_0000, 44, 0)], 0), 0)
            .unwrap();
        tx.add_desc_chains(&chain(&[(0x30_1000, 10, 0)], 1), 1)
            .unwrap();
        let interrupt = Interrupt::new(IrqLine::new(5).unwrap());
        dev.activate(ActiveState {
            mem: mem.clone(),
            queues: vec![queue(&rx), queue(&tx), queue(&ev)],
            acked_features: VIRTIO_F_VERSION_1,
            interrupt: interrupt.clone(),
        })
        .unwrap();
        assert_eq!(
            dev.evts[TXQ].read().unwrap(),
            1,
            "activation kicks the event loop"
        );
        dev.process_tx();
        dev.process_rx();
        let a = dev.active.as_ref().unwrap();
        assert_eq!(used_idx(&mem, &a.queues[TXQ]), 2);
        assert_eq!(used_idx(&mem, &a.queues[RXQ]), 1);
        assert_eq!(used(&mem, &a.queues[RXQ], 0), (0, 44));
        let mut hdr = [0u8; HDR_SIZE];
        mem.read_slice(&mut hdr, GuestAddress(0x20_0000)).unwrap();
        let resp = PacketHeader::parse(&hdr);
        assert_eq!(
            (resp.op, resp.src_port, resp.dst_port),
            (OP_RESPONSE, 1025, 900)
        );
        assert_eq!(dev.metrics.invalid_packets.get(), 1);
        assert_ne!(interrupt.status() & 1, 0);
        let (_s, _) = listener.accept().unwrap();
        let _keep: Option<UnixStream> = None;
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Bounded random-input test: random TX/RX descriptor chains never panic the vsock device.
#[cfg(test)]
mod fuzz_tests {
    use super::super::super::queue_util::fixture::*;
    use super::*;
    use crate::devices::irq::IrqLine;

    #[test]
    fn fuzz_vsock_random_chains() {
        let dir = std::env::temp_dir().join(format!("vmrun-vsock-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(dir.join("v.sock_1025")).unwrap();
        let mut dev = Vsock::new(&VsockConfig {
            uds_path: dir.join("v.sock"),
            guest_cid: 3,
        })
        .unwrap();
        let mem = memory();
        let (mrx, mtx, mev) = (mock(&mem, 0), mock(&mem, 0x8000), mock(&mem, 0x10000));
        let (qrx, qtx) = (queue(&mrx), queue(&mtx));
        dev.activate(ActiveState {
            mem: mem.clone(),
            queues: vec![queue(&mrx), queue(&mtx), queue(&mev)],
            acked_features: VIRTIO_F_VERSION_1,
            interrupt: Interrupt::new(IrqLine::new(5).unwrap()),
        })
        .unwrap();
        let mut f = Fuzz::new(0x50c4);
        let (mut prx, mut ptx) = (0u16, 0u16);
        let mut uc_ptx = UsedCheck::default();
        let mut uc_prx = UsedCheck::default();
        let iters = Fuzz::iters(20_000);
        for _ in 0..iters {
            if f.below(2) == 0 {
                random_chain(&mem, &qtx, &mut f, &mut ptx);
                uc_ptx.published_one();
                dev.process_tx();
                uc_ptx.check(dev.active.as_ref().unwrap().queues[1].next_used());
            } else {
                random_chain(&mem, &qrx, &mut f, &mut prx);
                uc_prx.published_one();
                dev.process_rx();
                uc_prx.check(dev.active.as_ref().unwrap().queues[0].next_used());
            }
        }
        eprintln!("fuzz_vsock_random_chains: {iters} chains");
        drop(dev);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
