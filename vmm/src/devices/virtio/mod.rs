// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! virtio devices (virtio 1.2) on the MMIO transport.
//!
//! A device implements [`VirtioDevice`] (identity, features, config space, activation) and
//! `event_manager::MutEventSubscriber` (queue notifications and back-end fds, on the event-loop
//! thread). The [`mmio::MmioTransport`] sits on the MMIO bus (vCPU threads) and hands the device
//! its queues, guest memory and [`Interrupt`] when the driver sets DRIVER_OK.
//!
//! Devices are placed at `0xd0000000 + i·0x1000` with IRQ `5 + i`, in the order
//! block devices, vsock, rng, fs, net.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue_util;
pub mod rng;
pub mod vsock;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::{BuildContext, BuildError, Subscriber};
use crate::config::VmConfig;
use crate::devices::irq::IrqLine;

/// First virtio-mmio device's base address.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of each device's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;
/// First virtio device's IRQ.
pub const IRQ_BASE: u32 = 5;
/// Offset of the QueueNotify register (ioeventfd target).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

/// VIRTIO_F_VERSION_1 (bit 32).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device type: block.
pub const TYPE_BLOCK: u32 = 2;
/// Device type: entropy source.
pub const TYPE_RNG: u32 = 4;
/// Device type: socket.
pub const TYPE_VSOCK: u32 = 19;

/// InterruptStatus bit: a used buffer was added.
pub const VIRTIO_MMIO_INT_VRING: u32 = 1;
/// InterruptStatus bit: configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 2;

/// The device → driver interrupt: the MMIO InterruptStatus bits plus the IRQ line, and the
/// device's DEVICE_NEEDS_RESET flag (a device whose back-end failed sets it; the transport shows
/// it in the Status register until the driver resets the device).
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    needs_reset: Arc<AtomicBool>,
    irq: IrqLine,
}

impl Interrupt {
    /// An interrupt on `irq` with a fresh status word.
    pub fn new(irq: IrqLine) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            needs_reset: Arc::new(AtomicBool::new(false)),
            irq,
        }
    }

    /// Sets the used-buffer bit and raises the IRQ.
    pub fn signal_used_queue(&self) {
        self.signal(VIRTIO_MMIO_INT_VRING);
    }

    /// Sets the config-change bit and raises the IRQ.
    pub fn signal_config_change(&self) {
        self.signal(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The device can no longer work (its back-end is gone): sets DEVICE_NEEDS_RESET and
    /// notifies the driver with a configuration-change interrupt (virtio 1.2 §2.1.2).
    pub fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config_change();
    }

    /// Whether the device asked to be reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.trigger() {
            log::error!("cannot raise IRQ {}: {e}", self.irq.gsi());
        }
    }

    /// Current InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every bit and the needs-reset flag (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// The IRQ line.
    pub fn irq(&self) -> &IrqLine {
        &self.irq
    }
}

/// What a device gets on activation.
#[derive(Debug)]
pub struct ActiveState {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them.
    pub queues: Vec<Queue>,
    /// Negotiated features.
    pub acked_features: u64,
    /// The interrupt towards the driver.
    pub interrupt: Interrupt,
}

/// What a single-queue device (blk, rng) keeps while active.
#[derive(Debug)]
pub struct SingleQueue {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's one queue.
    pub queue: Queue,
    /// The interrupt towards the driver.
    pub interrupt: Interrupt,
}

impl ActiveState {
    /// Takes the one queue of a single-queue device, which the driver must have made ready.
    pub fn into_single_queue(self) -> Result<SingleQueue, ActivateError> {
        let got = self.queues.len();
        let queue = self
            .queues
            .into_iter()
            .next()
            .ok_or(ActivateError::QueueCount { expected: 1, got })?;
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        Ok(SingleQueue {
            mem: self.mem,
            queue,
            interrupt: self.interrupt,
        })
    }
}

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// Wrong number of queues.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Expected.
        expected: usize,
        /// Got.
        got: usize,
    },
    /// A required queue is not ready.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// A vhost-user back-end refused the set-up.
    #[error("back-end: {0}")]
    Backend(String),
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// virtio device type (DeviceID register).
    fn device_type(&self) -> u32;
    /// Features offered.
    fn avail_features(&self) -> u64;
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Queue notification eventfds, one per queue (registered as ioeventfds).
    fn queue_events(&self) -> &[EventFd];
    /// Reads the config space at `offset`; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the config space (most devices ignore it).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device.
    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError>;
    /// Stops the device and drops its queues (driver wrote 0 to Status).
    fn reset(&mut self);
    /// While active: each queue's `(next_avail, next_used)` as the device holds them (for the
    /// device-state snapshot). `None` when inactive or when a back-end owns the rings.
    fn queue_progress(&self) -> Option<Vec<(u16, u16)>> {
        None
    }
}

/// A registered device: MMIO base, GSI and its transport.
type RegisteredDevice = (u64, u32, Arc<Mutex<mmio::MmioTransport>>);

/// Every virtio-mmio device of the VM, for the API's `snapshot` command.
#[derive(Debug, Default)]
pub struct DeviceRegistry {
    devices: Mutex<Vec<RegisteredDevice>>,
}

impl DeviceRegistry {
    /// Records the transport at `base` with interrupt `gsi`.
    pub fn register(&self, base: u64, gsi: u32, t: Arc<Mutex<mmio::MmioTransport>>) {
        crate::devices::bus::lock(&self.devices).push((base, gsi, t));
    }

    /// The state of every device, in MMIO order (see docs/vmm.md, "API").
    pub fn snapshot(&self) -> serde_json::Value {
        let devices = crate::devices::bus::lock(&self.devices);
        serde_json::Value::Array(
            devices
                .iter()
                .map(|(base, gsi, t)| crate::devices::bus::lock(t).snapshot(*base, *gsi))
                .collect(),
        )
    }
}

/// Copies `config[offset..]` into `data`, zero-filling past the end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off < config.len() {
        let n = (config.len() - off).min(data.len());
        data[..n].copy_from_slice(&config[off..off + n]);
    }
}

/// Creates the virtio devices of `cfg` (block devices, vsock, rng, in that order): each gets
/// its MMIO window, IRQ (irqfd), queue ioeventfds, event-loop subscription and command-line word.
pub fn add_devices(
    cfg: &VmConfig,
    ctx: &mut BuildContext<'_>,
    cleanup: &mut Vec<PathBuf>,
) -> Result<(), BuildError> {
    let mut index: u32 = 0;
    for (i, b) in cfg.block.iter().enumerate() {
        let name = format!("block{i}");
        let dev = block::Block::new(b).map_err(|source| BuildError::Device {
            name: format!("{name} ({})", b.path.display()),
            source,
        })?;
        ctx.metrics.register(name, dev.metrics());
        let dev = Arc::new(Mutex::new(dev));
        attach(ctx, index, dev.clone(), dev)?;
        index += 1;
    }
    if let Some(v) = &cfg.vsock {
        let dev = vsock::Vsock::new(v).map_err(|source| BuildError::Device {
            name: format!("vsock ({})", v.uds_path.display()),
            source,
        })?;
        cleanup.push(v.uds_path.clone());
        ctx.metrics.register("vsock".into(), dev.metrics());
        let dev = Arc::new(Mutex::new(dev));
        attach(ctx, index, dev.clone(), dev)?;
        index += 1;
    }
    if cfg.rng {
        let dev = rng::Rng::new().map_err(|source| BuildError::Device {
            name: "rng".into(),
            source,
        })?;
        ctx.metrics.register("rng".into(), dev.metrics());
        let dev = Arc::new(Mutex::new(dev));
        attach(ctx, index, dev.clone(), dev)?;
        index += 1;
    }
    if let Some(f) = &cfg.fs {
        let dev = fs::Fs::new(&f.socket, &f.tag).map_err(|source| BuildError::Fs {
            path: f.socket.clone(),
            source,
        })?;
        ctx.metrics.register("fs".into(), dev.metrics());
        let dev = Arc::new(Mutex::new(dev));
        attach(ctx, index, dev.clone(), dev)?;
        index += 1;
    }
    for (i, n) in cfg.net.iter().enumerate() {
        let name = format!("net{i}");
        let tap = match (&n.tap, n.fd) {
            (Some(t), _) => net::open_tap(t),
            (None, Some(fd)) => net::tap_from_fd(fd),
            (None, None) => Err(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
        };
        let default_mac = [2, 0, 0, 0, 0, u8::try_from(i + 1).unwrap_or(0xff)];
        let mac = n
            .mac
            .as_deref()
            .and_then(net::parse_mac)
            .unwrap_or(default_mac);
        let dev = tap
            .and_then(|t| net::Net::new(t, mac))
            .map_err(|source| BuildError::Device {
                name: format!(
                    "{name} ({})",
                    n.tap
                        .clone()
                        .unwrap_or_else(|| format!("fd {}", n.fd.unwrap_or(-1)))
                ),
                source,
            })?;
        ctx.metrics.register(name, dev.metrics());
        let dev = Arc::new(Mutex::new(dev));
        attach(ctx, index, dev.clone(), dev)?;
        index += 1;
    }
    let _ = index;
    Ok(())
}

fn attach(
    ctx: &mut BuildContext<'_>,
    index: u32,
    dev: Arc<Mutex<dyn VirtioDevice>>,
    sub: Subscriber,
) -> Result<(), BuildError> {
    let base = MMIO_BASE + u64::from(index) * MMIO_SIZE;
    let gsi = IRQ_BASE + index;
    let irq = IrqLine::new(gsi).map_err(BuildError::Event)?;
    if !ctx.test_payload {
        ctx.vm.register_irqfd(irq.eventfd(), gsi)?;
    }
    {
        let d = crate::devices::bus::lock(&dev);
        for (q, evt) in d.queue_events().iter().enumerate() {
            let q = u32::try_from(q).unwrap_or(u32::MAX);
            ctx.vm
                .register_ioevent(evt, base + QUEUE_NOTIFY_OFFSET, q)?;
        }
    }
    let transport = Arc::new(Mutex::new(mmio::MmioTransport::new(
        dev,
        ctx.mem.clone(),
        Interrupt::new(irq),
    )));
    ctx.devices.register(base, gsi, transport.clone());
    ctx.mmio.insert(transport, base, MMIO_SIZE)?;
    ctx.subscribers.push(sub);
    ctx.cmdline_extra
        .push(format!("virtio_mmio.device=4K@{base:#x}:{gsi}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_zero_fill() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let i = Interrupt::new(IrqLine::new(5).unwrap());
        i.signal_used_queue();
        i.signal_config_change();
        assert_eq!(i.status(), 3);
        i.ack(1);
        assert_eq!(i.status(), 2);
        assert_eq!(i.irq().trigger_count(), 2);
        i.clear();
        assert_eq!(i.status(), 0);
        i.signal_needs_reset();
        assert!(i.needs_reset());
        assert_eq!(i.status(), 2);
        i.clear();
        assert!(!i.needs_reset());
    }
}
