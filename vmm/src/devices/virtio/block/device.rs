// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The virtio-blk device: config space (capacity, seg_max), features (FLUSH, SEG_MAX, RO),
//! and the request queue, served on the event-loop thread.

use std::fs::OpenOptions;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Disk, RequestType, ID_LEN, SECTOR_SIZE, VIRTIO_BLK_S_OK};
use crate::config::BlockConfig;
use crate::devices::virtio::queue_util::{add_used, notify_if_needed};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, ActiveState, SingleQueue, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};
use crate::metrics::{Counter, MetricsSource};
use crate::warn_ratelimited;

/// VIRTIO_BLK_F_SEG_MAX.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_RO.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// VIRTIO_BLK_F_FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request we advertise (queue size minus header and status).
pub const SEG_MAX: u32 = 254;

/// Block counters.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Read requests.
    pub reads: Counter,
    /// Write requests.
    pub writes: Counter,
    /// Flushes.
    pub flushes: Counter,
    /// GET_ID requests.
    pub get_id: Counter,
    /// Bytes read.
    pub read_bytes: Counter,
    /// Bytes written.
    pub write_bytes: Counter,
    /// Requests completed with IOERR (incl. out-of-range and read-only refusals).
    pub io_errors: Counter,
    /// Requests completed with UNSUPP.
    pub unsupported: Counter,
    /// Chains that could not be processed at all.
    pub invalid: Counter,
}

impl MetricsSource for BlockMetrics {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "reads": self.reads.get(),
            "writes": self.writes.get(),
            "flushes": self.flushes.get(),
            "get_id": self.get_id.get(),
            "read_bytes": self.read_bytes.get(),
            "write_bytes": self.write_bytes.get(),
            "io_errors": self.io_errors.get(),
            "unsupported": self.unsupported.get(),
            "invalid": self.invalid.get(),
        })
    }
}

/// A file-backed virtio-blk device.
pub struct Block {
    disk: Disk,
    config: [u8; 16],
    features: u64,
    evts: Vec<EventFd>,
    active: Option<SingleQueue>,
    metrics: Arc<BlockMetrics>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("capacity", &self.disk.capacity)
            .field("read_only", &self.disk.read_only)
            .finish_non_exhaustive()
    }
}

/// The `GET_ID` string: the configured id, else the file name, cut to 20 bytes.
pub fn device_id(cfg: &BlockConfig) -> [u8; ID_LEN] {
    let mut id = [0u8; ID_LEN];
    let name = cfg.id.clone().unwrap_or_else(|| {
        cfg.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let n = name.len().min(ID_LEN);
    id[..n].copy_from_slice(&name.as_bytes()[..n]);
    id
}

impl Block {
    /// Opens the backing file (read-only if configured so).
    pub fn new(cfg: &BlockConfig) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)?;
        let len = file.metadata()?.len();
        let capacity = len - len % SECTOR_SIZE;
        let mut config = [0u8; 16];
        config[0..8].copy_from_slice(&(capacity / SECTOR_SIZE).to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let mut features = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX;
        if cfg.read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        Ok(Self {
            disk: Disk {
                file,
                capacity,
                read_only: cfg.read_only,
                id: device_id(cfg),
            },
            config,
            features,
            evts: vec![EventFd::new(libc::EFD_NONBLOCK)?],
            active: None,
            metrics: Arc::new(BlockMetrics::default()),
        })
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Serves every available request.
    pub fn process_queue(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let m = &self.metrics;
        let mut served = false;
        while let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let used = match request::process(&self.disk, &a.mem, chain) {
                Ok(c) => {
                    match c.kind {
                        RequestType::In => {
                            m.reads.inc();
                            m.read_bytes.add(c.data_len);
                        }
                        RequestType::Out => {
                            m.writes.inc();
                            m.write_bytes.add(c.data_len);
                        }
                        RequestType::Flush => m.flushes.inc(),
                        RequestType::GetId => m.get_id.inc(),
                        RequestType::Unsupported(_) => {}
                    }
                    match c.status {
                        VIRTIO_BLK_S_OK => {}
                        request::VIRTIO_BLK_S_UNSUPP => m.unsupported.inc(),
                        _ => m.io_errors.inc(),
                    }
                    c.used_len
                }
                Err(e) => {
                    m.invalid.inc();
                    warn_ratelimited!("block: malformed request: {e}");
                    0
                }
            };
            add_used(&mut a.queue, &a.mem, head, used);
            served = true;
        }
        if served {
            notify_if_needed(&mut a.queue, &a.mem, &a.interrupt);
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn avail_features(&self) -> u64 {
        self.features
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        warn_ratelimited!("block: config space is read-only");
    }
    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError> {
        self.active = Some(state.into_single_queue()?);
        // Let the event loop serve anything queued before DRIVER_OK.
        let _ = self.evts[0].write(1);
        Ok(())
    }
    fn queue_progress(&self) -> Option<Vec<(u16, u16)>> {
        self.active
            .as_ref()
            .map(|a| vec![(a.queue.next_avail(), a.queue.next_used())])
    }
    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evts[0].read();
        self.process_queue();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.evts[0], 0, EventSet::IN)) {
            log::error!("block: cannot watch the queue event: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::*;
    use super::*;
    use crate::devices::irq::IrqLine;
    use crate::devices::virtio::queue_util::fixture::*;
    use crate::devices::virtio::Interrupt;
    use vm_memory::GuestMemoryMmap;
    use vm_memory::{Bytes, GuestAddress};

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    struct Fixture {
        path: std::path::PathBuf,
        mem: GuestMemoryMmap,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn fixture(name: &str, ro: bool) -> (Fixture, Block) {
        let path = std::env::temp_dir().join(format!("vmrun-blk-{}-{name}", std::process::id()));
        let content: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, content).unwrap();
        let dev = Block::new(&BlockConfig {
            path: path.clone(),
            read_only: ro,
            id: Some("disk-id".into()),
        })
        .unwrap();
        (
            Fixture {
                path,
                mem: memory(),
            },
            dev,
        )
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    fn run(f: &Fixture, dev: &mut Block, descs: &[(u64, u32, u16)]) -> (u32, u8) {
        let m = mock(&f.mem, 0);
        m.add_desc_chains(&chain(descs, 0), 0).unwrap();
        dev.activate(ActiveState {
            mem: f.mem.clone(),
            queues: vec![queue(&m)],
            acked_features: VIRTIO_F_VERSION_1,
            interrupt: Interrupt::new(IrqLine::new(5).unwrap()),
        })
        .unwrap();
        dev.process_queue();
        let a = dev.active.as_ref().unwrap();
        let (_, len) = used(&f.mem, &a.queue, 0);
        let status: u8 = f.mem.read_obj(GuestAddress(STATUS)).unwrap();
        dev.reset();
        (len, status)
    }

    #[test]
    fn config_space_and_features() {
        let (_f, dev) = fixture("cfg", true);
        let mut cap = [0u8; 8];
        dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 16);
        assert_ne!(dev.avail_features() & VIRTIO_BLK_F_RO, 0);
        assert_ne!(dev.avail_features() & VIRTIO_BLK_F_FLUSH, 0);
    }

    #[test]
    fn read_write_flush_get_id() {
        let (f, mut dev) = fixture("rw", false);
        header(&f.mem, VIRTIO_BLK_T_IN, 1);
        let (len, st) = run(
            &f,
            &mut dev,
            &[(HDR, 16, 0), (DATA, 512, WRITE), (STATUS, 1, WRITE)],
        );
        assert_eq!((len, st), (513, VIRTIO_BLK_S_OK));
        let b: u8 = f.mem.read_obj(GuestAddress(DATA)).unwrap();
        assert_eq!(b, (512 % 251) as u8);

        f.mem
            .write_slice(&[0xaa; 1024], GuestAddress(DATA))
            .unwrap();
        header(&f.mem, VIRTIO_BLK_T_OUT, 2);
        // Data split over two descriptors.
        let (len, st) = run(
            &f,
            &mut dev,
            &[
                (HDR, 16, 0),
                (DATA, 600, 0),
                (DATA + 600, 424, 0),
                (STATUS, 1, WRITE),
            ],
        );
        assert_eq!((len, st), (1, VIRTIO_BLK_S_OK));
        let disk = std::fs::read(&f.path).unwrap();
        assert!(disk[1024..2048].iter().all(|b| *b == 0xaa));
        assert_eq!(disk[2048], (2048 % 251) as u8);

        header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            run(&f, &mut dev, &[(HDR, 16, 0), (STATUS, 1, WRITE)]),
            (1, VIRTIO_BLK_S_OK)
        );

        header(&f.mem, VIRTIO_BLK_T_GET_ID, 0);
        let (len, st) = run(
            &f,
            &mut dev,
            &[(HDR, 16, 0), (DATA, 20, WRITE), (STATUS, 1, WRITE)],
        );
        assert_eq!((len, st), (21, VIRTIO_BLK_S_OK));
        let mut id = [0u8; 7];
        f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"disk-id");
        assert_eq!(dev.metrics.writes.get(), 1);
        assert_eq!(dev.metrics.read_bytes.get(), 512);
    }

    #[test]
    fn read_only_out_of_range_and_unsupported() {
        let (f, mut dev) = fixture("ro", true);
        header(&f.mem, VIRTIO_BLK_T_OUT, 0);
        let before = std::fs::read(&f.path).unwrap();
        let r = run(
            &f,
            &mut dev,
            &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, WRITE)],
        );
        assert_eq!(r, (1, VIRTIO_BLK_S_IOERR));
        assert_eq!(std::fs::read(&f.path).unwrap(), before);

        header(&f.mem, VIRTIO_BLK_T_IN, 16);
        let r = run(
            &f,
            &mut dev,
            &[(HDR, 16, 0), (DATA, 512, WRITE), (STATUS, 1, WRITE)],
        );
        assert_eq!(r, (1, VIRTIO_BLK_S_IOERR), "sector past the end");

        header(&f.mem, VIRTIO_BLK_T_IN, u64::MAX / 2);
        let r = run(
            &f,
            &mut dev,
            &[(HDR, 16, 0), (DATA, 512, WRITE), (STATUS, 1, WRITE)],
        );
        assert_eq!(r, (1, VIRTIO_BLK_S_IOERR), "sector overflow");

        header(&f.mem, 99, 0);
        let r = run(&f, &mut dev, &[(HDR, 16, 0), (STATUS, 1, WRITE)]);
        assert_eq!(r, (1, VIRTIO_BLK_S_UNSUPP));
        assert_eq!(dev.metrics.io_errors.get(), 3);
    }

    #[test]
    fn malformed_chains_fail_only_themselves() {
        let (f, mut dev) = fixture("bad", false);
        header(&f.mem, VIRTIO_BLK_T_IN, 0);
        // No status byte.
        assert_eq!(run(&f, &mut dev, &[(HDR, 16, 0)]).0, 0);
        // Short header.
        assert_eq!(run(&f, &mut dev, &[(HDR, 8, 0), (STATUS, 1, WRITE)]).0, 0);
        // Data outside guest memory.
        assert_eq!(
            run(
                &f,
                &mut dev,
                &[(HDR, 16, 0), (0xffff_0000, 512, WRITE), (STATUS, 1, WRITE)]
            )
            .0,
            0
        );
        assert_eq!(dev.metrics.invalid.get(), 3);
        // The device still works.
        let r = run(
            &f,
            &mut dev,
            &[(HDR, 16, 0), (DATA, 512, WRITE), (STATUS, 1, WRITE)],
        );
        assert_eq!(r, (513, VIRTIO_BLK_S_OK));
    }
}

/// Bounded random-input test: random descriptor chains and request headers never panic the
/// block device, never move the used ring past the available one, and leave the image size
/// alone (`VMRUN_FUZZ_ITERS` for longer runs).
#[cfg(test)]
mod fuzz_tests {
    use super::super::super::queue_util::fixture::*;
    use super::*;
    use crate::devices::irq::IrqLine;
    use crate::devices::virtio::Interrupt;

    #[test]
    fn fuzz_block_random_chains() {
        let path = std::env::temp_dir().join(format!("vmrun-blk-fuzz-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 64 << 10]).unwrap();
        let mut dev = Block::new(&BlockConfig {
            path: path.clone(),
            read_only: false,
            id: None,
        })
        .unwrap();
        let mem = memory();
        let m = mock(&mem, 0);
        let q = queue(&m);
        dev.activate(ActiveState {
            mem: mem.clone(),
            queues: vec![queue(&m)],
            acked_features: VIRTIO_F_VERSION_1,
            interrupt: Interrupt::new(IrqLine::new(5).unwrap()),
        })
        .unwrap();
        let mut f = Fuzz::new(0xb10c);
        let mut published = 0u16;
        let mut uc_published = UsedCheck::default();
        let iters = Fuzz::iters(20_000);
        for _ in 0..iters {
            random_chain(&mem, &q, &mut f, &mut published);
            uc_published.published_one();
            if f.below(3) == 0 {
                dev.process_queue();
                uc_published.check(dev.active.as_ref().unwrap().queue.next_used());
            }
        }
        dev.process_queue();
        uc_published.check(dev.active.as_ref().unwrap().queue.next_used());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 10);
        eprintln!("fuzz_block_random_chains: {iters} chains");
        std::fs::remove_file(path).unwrap();
    }
}
