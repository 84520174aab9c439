// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! virtio-fs through a vhost-user back-end (virtiofsd): the VMM is only the frontend.
//!
//! The back-end maps guest RAM from the memfd (`SET_MEM_TABLE`) and serves the queues itself:
//! each queue's notify ioeventfd is handed over as its kick fd, and the back-end signals a call
//! eventfd per queue, which the event loop turns into InterruptStatus + the irqfd (virtio-mmio
//! needs the status bit set, so the call fd cannot be the irqfd itself).
//!
//! Config space (virtio 1.2 §5.11.4): `tag[36]`, `num_request_queues` (1). Queues: hiprio + 1
//! request queue.
//!
//! Back-end disconnect: the event loop watches the vhost-user socket for a hang-up. When the
//! back-end goes away the device sets DEVICE_NEEDS_RESET and raises a configuration-change
//! interrupt (virtio 1.2 §2.1.2); later activations fail (the driver sees NEEDS_RESET again)
//! and the VM keeps running. Reconnecting to a restarted back-end is not implemented.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, ActivateError, ActiveState, Interrupt, VirtioDevice};
use crate::metrics::{Counter, MetricsSource};

/// virtio device type: file system.
pub const TYPE_FS: u32 = 26;
/// Queue count: hiprio + one request queue.
pub const NUM_QUEUES: usize = 2;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 1024;
/// Longest tag.
pub const TAG_LEN: usize = 36;
/// First event-loop token of the call eventfds.
const CALL_TOKEN_BASE: u32 = 100;
/// Event-loop token of the vhost-user socket (hang-up detection).
const SOCKET_TOKEN: u32 = 200;

/// Errors connecting to or driving the back-end.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than 36 bytes.
    #[error("invalid virtio-fs tag {0:?} (1..=36 bytes)")]
    Tag(String),
    /// A vhost-user request failed.
    #[error("vhost-user {what} failed")]
    VhostUser {
        /// The request.
        what: &'static str,
        /// Why.
        #[source]
        source: vhost::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// A queue address is not in guest memory.
    #[error("queue {0} is outside guest memory")]
    QueueAddress(usize),
}

fn vu(what: &'static str) -> impl FnOnce(vhost::Error) -> FsError {
    move |source| FsError::VhostUser { what, source }
}

/// virtio-fs counters.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// Back-end interrupts forwarded to the guest.
    pub interrupts: Counter,
    /// Activations.
    pub activations: Counter,
    /// Back-end failures during activation.
    pub backend_errors: Counter,
    /// The back-end closed its socket.
    pub backend_disconnects: Counter,
}

impl MetricsSource for FsMetrics {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "interrupts": self.interrupts.get(),
            "activations": self.activations.get(),
            "backend_errors": self.backend_errors.get(),
            "backend_disconnects": self.backend_disconnects.get(),
        })
    }
}

/// The vhost-user-fs frontend device.
pub struct Fs {
    frontend: Frontend,
    config: Vec<u8>,
    avail_features: u64,
    protocol: bool,
    kick_evts: Vec<EventFd>,
    call_evts: Vec<EventFd>,
    interrupt: Option<Interrupt>,
    enabled: Vec<usize>,
    backend_gone: bool,
    metrics: Arc<FsMetrics>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("avail_features", &self.avail_features)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Connects to the back-end at `socket` and negotiates the vhost-user protocol.
    pub fn new(socket: &Path, tag: &str) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.to_string()));
        }
        let mut frontend = Frontend::connect(socket, NUM_QUEUES as u64).map_err(vu("connect"))?;
        frontend.set_owner().map_err(vu("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(vu("GET_FEATURES"))?;
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let protocol = backend_features & protocol_bit != 0;
        if protocol {
            let offered = frontend
                .get_protocol_features()
                .map_err(vu("GET_PROTOCOL_FEATURES"))?;
            let wanted =
                offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            frontend
                .set_protocol_features(wanted)
                .map_err(vu("SET_PROTOCOL_FEATURES"))?;
        }
        let mut config = vec![0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let mut kick_evts = Vec::new();
        let mut call_evts = Vec::new();
        for _ in 0..NUM_QUEUES {
            kick_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?);
            call_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?);
        }
        Ok(Self {
            frontend,
            config,
            avail_features: backend_features & !protocol_bit,
            protocol,
            kick_evts,
            call_evts,
            interrupt: None,
            enabled: Vec::new(),
            backend_gone: false,
            metrics: Arc::new(FsMetrics::default()),
        })
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }

    fn host_addr(mem: &GuestMemoryMmap, gpa: u64, q: usize) -> Result<u64, FsError> {
        mem.get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|_| FsError::QueueAddress(q))
    }

    /// Hands memory and the ready queues to the back-end.
    fn start_backend(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        acked: u64,
    ) -> Result<(), FsError> {
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let features = if self.protocol {
            acked | protocol_bit
        } else {
            acked
        };
        self.frontend
            .set_features(features)
            .map_err(vu("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).map_err(vu("memory region")))
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(vu("SET_MEM_TABLE"))?;
        self.enabled.clear();
        for (i, q) in queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            let cfg = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: Self::host_addr(mem, q.desc_table(), i)?,
                used_ring_addr: Self::host_addr(mem, q.used_ring(), i)?,
                avail_ring_addr: Self::host_addr(mem, q.avail_ring(), i)?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, q.size())
                .map_err(vu("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &cfg)
                .map_err(vu("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .map_err(vu("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &self.call_evts[i])
                .map_err(vu("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &self.kick_evts[i])
                .map_err(vu("SET_VRING_KICK"))?;
            if self.protocol {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(vu("SET_VRING_ENABLE"))?;
            }
            self.enabled.push(i);
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn avail_features(&self) -> u64 {
        self.avail_features
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.kick_evts
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        crate::warn_ratelimited!("virtio-fs: config space is read-only");
    }
    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError> {
        self.metrics.activations.inc();
        if self.backend_gone {
            self.metrics.backend_errors.inc();
            return Err(ActivateError::Backend(
                "the vhost-user back-end has disconnected".into(),
            ));
        }
        if let Err(e) = self.start_backend(&state.mem, &state.queues, state.acked_features) {
            self.metrics.backend_errors.inc();
            log::error!("virtio-fs: {e}");
            return Err(ActivateError::Backend(e.to_string()));
        }
        self.interrupt = Some(state.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        self.interrupt = None;
        let enabled = std::mem::take(&mut self.enabled);
        if self.backend_gone {
            return;
        }
        for i in enabled {
            if self.protocol {
                let _ = self.frontend.set_vring_enable(i, false);
            }
            // GET_VRING_BASE stops the ring in the back-end.
            let _ = self.frontend.get_vring_base(i);
        }
    }
}

impl Fs {
    /// The back-end hung up: stop talking to it and tell the driver.
    fn backend_disconnected(&mut self, events: Events, ops: &mut EventOps) {
        if let Err(e) = ops.remove(events) {
            log::error!("virtio-fs: cannot stop watching the back-end socket: {e}");
        }
        if self.backend_gone {
            return;
        }
        self.backend_gone = true;
        self.metrics.backend_disconnects.inc();
        log::error!("virtio-fs: the vhost-user back-end disconnected; the device needs a reset");
        if let Some(irq) = &self.interrupt {
            irq.signal_needs_reset();
        }
    }
}

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == SOCKET_TOKEN {
            // Only hang-ups are watched: replies to our requests (read synchronously, possibly
            // on a vCPU thread during activation) must not look like a disconnect.
            self.backend_disconnected(events, ops);
            return;
        }
        let i = events.data().wrapping_sub(CALL_TOKEN_BASE) as usize;
        if let Some(evt) = self.call_evts.get(i) {
            let _ = evt.read();
            if let Some(irq) = &self.interrupt {
                self.metrics.interrupts.inc();
                irq.signal_used_queue();
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.call_evts.iter().enumerate() {
            let token = CALL_TOKEN_BASE + u32::try_from(i).unwrap_or(0);
            if let Err(e) = ops.add(Events::with_data(evt, token, EventSet::IN)) {
                log::error!("virtio-fs: cannot watch call event {i}: {e}");
            }
        }
        let watch = EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR;
        if let Err(e) = ops.add(Events::with_data_raw(
            self.frontend.as_raw_fd(),
            SOCKET_TOKEN,
            watch,
        )) {
            log::error!("virtio-fs: cannot watch the back-end socket: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::irq::IrqLine;
    use crate::devices::virtio::queue_util::fixture::{chain, mock, queue, used, used_idx, WRITE};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};
    use vm_memory::Bytes;

    fn virtiofsd() -> Option<PathBuf> {
        let candidates = [
            std::env::var_os("VMRUN_ARTIFACTS").map(|d| PathBuf::from(d).join("virtiofsd")),
            Some(PathBuf::from(
                "/var/cache/vmrun/cargo/virtiofsd-1.14.0/bin/virtiofsd",
            )),
        ];
        candidates.into_iter().flatten().find(|p| p.exists())
    }

    struct Daemon(Child);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn fuse_init_round_trip_through_virtiofsd() {
        let Some(bin) = virtiofsd() else {
            eprintln!("skipped: virtiofsd not installed");
            return;
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: virtiofsd with --sandbox none needs root here");
            return;
        }
        let dir = std::env::temp_dir().join(format!("vmrun-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("share")).unwrap();
        let sock = dir.join("fs.sock");
        let _daemon = Daemon(
            Command::new(bin)
                .arg("--socket-path")
                .arg(&sock)
                .arg("--shared-dir")
                .arg(dir.join("share"))
                .args(["--sandbox", "none", "--log-level", "error"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "virtiofsd did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut dev = Fs::new(&sock, "vmrun").unwrap();
        assert_ne!(dev.avail_features() & super::super::VIRTIO_F_VERSION_1, 0);
        let mut tag = [0u8; 6];
        dev.read_config(0, &mut tag);
        assert_eq!(&tag, b"vmrun\0");

        // Guest RAM must be shareable: memfd-backed, as the VMM allocates it.
        let mem = crate::memory::allocate(32).unwrap();
        let hiprio = mock(&mem, 0);
        let req = mock(&mem, 0x8000);
        // FUSE_INIT: fuse_in_header (40 bytes) + fuse_init_in (16 bytes, protocol 7.31).
        let unique: u64 = 0x1234;
        let mut msg = Vec::new();
        msg.extend_from_slice(&56u32.to_le_bytes());
        msg.extend_from_slice(&26u32.to_le_bytes()); // FUSE_INIT
        msg.extend_from_slice(&unique.to_le_bytes());
        msg.extend_from_slice(&[0u8; 8 + 4 + 4 + 4 + 2 + 2]);
        for v in [7u32, 31, 0, 0] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        mem.write_slice(&msg, GuestAddress(0x10_0000)).unwrap();
        req.add_desc_chains(&chain(&[(0x10_0000, 56, 0), (0x11_0000, 256, WRITE)], 0), 0)
            .unwrap();
        let interrupt = Interrupt::new(IrqLine::new(9).unwrap());
        let features = dev.avail_features();
        dev.activate(ActiveState {
            mem: mem.clone(),
            queues: vec![queue(&hiprio), queue(&req)],
            acked_features: features,
            interrupt,
        })
        .unwrap();
        let q = queue(&req);
        dev.kick_evts[1].write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while used_idx(&mem, &q) == 0 {
            assert!(
                Instant::now() < deadline,
                "virtiofsd never answered FUSE_INIT"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (id, len) = used(&mem, &q, 0);
        assert_eq!(id, 0);
        assert!(len >= 16, "reply of {len} bytes");
        let out_len: u32 = mem.read_obj(GuestAddress(0x11_0000)).unwrap();
        let error: i32 = mem.read_obj(GuestAddress(0x11_0004)).unwrap();
        let got_unique: u64 = mem.read_obj(GuestAddress(0x11_0008)).unwrap();
        let major: u32 = mem.read_obj(GuestAddress(0x11_0010)).unwrap();
        assert_eq!((error, got_unique, major), (0, unique, 7));
        assert_eq!(out_len, len);
        assert_eq!(
            dev.call_evts[1].read().unwrap(),
            1,
            "the back-end signalled the call fd"
        );
        dev.reset();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
