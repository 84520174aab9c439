// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): register file, feature
//! negotiation, queue set-up, the device status state machine, interrupt status/ack and the
//! config space window at 0x100.
//!
//! Runs on vCPU threads (MMIO exits). Queue notifications normally bypass it (KVM ioeventfd on
//! QueueNotify with datamatch = queue index); a notify that reaches it anyway is forwarded to
//! the queue's eventfd. Register accesses other than 32-bit are ignored (reads return 0),
//! except in the config space.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{ActiveState, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::{lock, BusAction, BusDevice};
use crate::warn_ratelimited;

/// "virt".
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Transport version 2 (modern).
pub const MMIO_VERSION: u32 = 2;
/// VendorID: "vmrn".
pub const MMIO_VENDOR_ID: u32 = 0x6e72_6d76;

/// Device status: ACKNOWLEDGE.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status: DRIVER.
pub const STATUS_DRIVER: u32 = 2;
/// Device status: DRIVER_OK.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: FEATURES_OK.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status: DEVICE_NEEDS_RESET.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
/// Device status: FAILED.
pub const STATUS_FAILED: u32 = 0x80;

/// Register offsets (virtio 1.2 §4.2.2).
pub mod regs {
    /// MagicValue.
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Version.
    pub const VERSION: u64 = 0x004;
    /// DeviceID.
    pub const DEVICE_ID: u64 = 0x008;
    /// VendorID.
    pub const VENDOR_ID: u64 = 0x00c;
    /// DeviceFeatures.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// DeviceFeaturesSel.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// DriverFeatures.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// DriverFeaturesSel.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// QueueSel.
    pub const QUEUE_SEL: u64 = 0x030;
    /// QueueNumMax.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// QueueNum.
    pub const QUEUE_NUM: u64 = 0x038;
    /// QueueReady.
    pub const QUEUE_READY: u64 = 0x044;
    /// QueueNotify.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// InterruptStatus.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// InterruptACK.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Status.
    pub const STATUS: u64 = 0x070;
    /// QueueDescLow.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// QueueDescHigh.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// QueueDriverLow (available ring).
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// QueueDriverHigh.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// QueueDeviceLow (used ring).
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// QueueDeviceHigh.
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// SHMSel.
    pub const SHM_SEL: u64 = 0x0ac;
    /// SHMLenLow.
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// SHMLenHigh.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// SHMBaseLow.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// SHMBaseHigh.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// ConfigGeneration.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device config space.
    pub const CONFIG: u64 = 0x100;
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .field("acked_features", &self.acked_features)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

fn new_queues(max_sizes: &[u16]) -> Vec<Queue> {
    max_sizes
        .iter()
        .filter_map(|m| Queue::new(*m).ok())
        .collect()
}

impl MmioTransport {
    /// A transport for `device`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Self {
        let queues = new_queues(lock(&device).queue_max_sizes());
        Self {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        }
    }

    /// The device status register.
    pub fn device_status(&self) -> u32 {
        self.status
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The device state as JSON: identity, window, features, status, interrupt status, the
    /// first 64 bytes of config space, and per queue its layout and (while active) the
    /// device's ring indices. The base for a later snapshot/restore; nothing here is restored
    /// yet.
    pub fn snapshot(&self, base: u64, gsi: u32) -> serde_json::Value {
        let dev = lock(&self.device);
        let mut config = [0u8; 64];
        dev.read_config(0, &mut config);
        let progress = if self.activated {
            dev.queue_progress()
        } else {
            None
        };
        let queues: Vec<serde_json::Value> = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (avail, used) = progress
                    .as_ref()
                    .and_then(|p| p.get(i).copied())
                    .map_or((None, None), |(a, u)| (Some(a), Some(u)));
                serde_json::json!({
                    "index": i,
                    "max_size": q.max_size(),
                    "size": q.size(),
                    "ready": q.ready(),
                    "desc_table": q.desc_table(),
                    "avail_ring": q.avail_ring(),
                    "used_ring": q.used_ring(),
                    "next_avail": avail,
                    "next_used": used,
                })
            })
            .collect();
        let hex: String = config.iter().map(|b| format!("{b:02x}")).collect();
        serde_json::json!({
            "device_type": dev.device_type(),
            "mmio_base": base,
            "gsi": gsi,
            "device_features": dev.avail_features(),
            "acked_features": self.acked_features,
            "status": self.read_status(),
            "activated": self.activated,
            "interrupt_status": self.interrupt.status(),
            "config_generation": self.config_generation,
            "config": hex,
            "queues": queues,
        })
    }

    fn read_status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | STATUS_DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let i = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(i)
    }

    fn reset(&mut self) {
        if self.activated {
            lock(&self.device).reset();
        }
        self.activated = false;
        self.queues = new_queues(lock(&self.device).queue_max_sizes());
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.acked_features = 0;
        self.status = 0;
        self.interrupt.clear();
    }

    fn features_ok(&self) -> bool {
        let avail = lock(&self.device).avail_features();
        self.acked_features & !avail == 0 && self.acked_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) -> bool {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                warn_ratelimited!("virtio-mmio: queue {i} has an invalid layout");
                return false;
            }
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            match Queue::try_from(q.state()) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    warn_ratelimited!("virtio-mmio: bad queue state: {e}");
                    return false;
                }
            }
        }
        let state = ActiveState {
            mem: self.mem.clone(),
            queues,
            acked_features: self.acked_features,
            interrupt: self.interrupt.clone(),
        };
        match lock(&self.device).activate(state) {
            Ok(()) => true,
            Err(e) => {
                warn_ratelimited!("virtio-mmio: activation failed: {e}");
                false
            }
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & !self.status & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
        }
        let v = v & !STATUS_FAILED;
        let old = self.status & !STATUS_FAILED & !STATUS_DEVICE_NEEDS_RESET;
        if v & old != old {
            warn_ratelimited!(
                "virtio-mmio: driver cleared status bits {old:#x} -> {v:#x} without reset"
            );
            return;
        }
        let new_bits = v & !old;
        let has = |b| (old | new_bits) & b != 0;
        if new_bits & STATUS_DRIVER != 0 && !has(STATUS_ACKNOWLEDGE) {
            return;
        }
        if new_bits & STATUS_FEATURES_OK != 0 && (!has(STATUS_DRIVER) || !self.features_ok()) {
            // Not accepted: the driver reads Status back and sees FEATURES_OK clear.
            self.status |= new_bits & !STATUS_FEATURES_OK & !STATUS_DRIVER_OK;
            return;
        }
        if new_bits & STATUS_DRIVER_OK != 0 {
            if !has(STATUS_FEATURES_OK) {
                return;
            }
            if !self.activated {
                if self.activate() {
                    self.activated = true;
                } else {
                    self.status |= (new_bits & !STATUS_DRIVER_OK) | STATUS_DEVICE_NEEDS_RESET;
                    self.interrupt.signal_config_change();
                    return;
                }
            }
        }
        self.status |= new_bits;
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        use regs::*;
        match offset {
            MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VERSION => MMIO_VERSION,
            DEVICE_ID => lock(&self.device).device_type(),
            VENDOR_ID => MMIO_VENDOR_ID,
            DEVICE_FEATURES => {
                let f = lock(&self.device).avail_features();
                match self.device_features_select {
                    0 => u32::try_from(f & 0xffff_ffff).unwrap_or(0),
                    1 => u32::try_from(f >> 32).unwrap_or(0),
                    _ => 0,
                }
            }
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.read_status(),
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        use regs::*;
        let queue_writable = !self.activated
            && self.status & STATUS_FEATURES_OK != 0
            && self.status & STATUS_DRIVER_OK == 0;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_select = v,
            DRIVER_FEATURES_SEL => self.driver_features_select = v,
            DRIVER_FEATURES => {
                if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
                    warn_ratelimited!(
                        "virtio-mmio: DriverFeatures written in status {:#x}",
                        self.status
                    );
                    return;
                }
                match self.driver_features_select {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_select = v,
            QUEUE_NOTIFY => {
                // Normally consumed by the ioeventfd; forward in case it was not.
                let d = lock(&self.device);
                if let Some(evt) = usize::try_from(v)
                    .ok()
                    .and_then(|i| d.queue_events().get(i))
                {
                    let _ = evt.write(1);
                }
            }
            INTERRUPT_ACK => self.interrupt.ack(v),
            STATUS => self.write_status(v),
            SHM_SEL => {}
            QUEUE_NUM | QUEUE_READY | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_AVAIL_LOW
            | QUEUE_AVAIL_HIGH | QUEUE_USED_LOW | QUEUE_USED_HIGH => {
                if offset == QUEUE_READY && v == 0 && self.status & STATUS_DRIVER_OK != 0 {
                    // Queue reset by the driver (virtio-drivers does this for every queue when a
                    // device is dropped): the device stops; the queue's registers become
                    // writable.
                    if let Some(q) = self.selected_queue() {
                        q.set_ready(false);
                    }
                    if self.activated {
                        lock(&self.device).reset();
                        self.activated = false;
                    }
                    return;
                }
                let selected_disabled = self.status & STATUS_DRIVER_OK != 0
                    && !self.activated
                    && self.selected_queue().is_some_and(|q| !q.ready());
                if !queue_writable && !selected_disabled {
                    warn_ratelimited!(
                        "virtio-mmio: queue register {offset:#x} written in status {:#x}",
                        self.status
                    );
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    warn_ratelimited!("virtio-mmio: queue register write for a missing queue");
                    return;
                };
                match offset {
                    // virtio-queue ignores sizes that are not a power of two <= max.
                    QUEUE_NUM if v != 0 => q.set_size(u16::try_from(v).unwrap_or(0)),
                    QUEUE_READY => q.set_ready(v == 1 && !selected_disabled),
                    QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                    QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                    QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                    QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(v)),
                    _ => {}
                }
            }
            _ => {
                warn_ratelimited!("virtio-mmio: write to read-only or unknown register {offset:#x}")
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            lock(&self.device).read_config(offset - regs::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            warn_ratelimited!(
                "virtio-mmio: {}-byte register read at {offset:#x}",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        if offset >= regs::CONFIG {
            lock(&self.device).write_config(offset - regs::CONFIG, data);
            return BusAction::None;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn_ratelimited!(
                "virtio-mmio: {}-byte register write at {offset:#x}",
                data.len()
            );
            return BusAction::None;
        };
        self.write_reg(offset, u32::from_le_bytes(bytes));
        BusAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::irq::IrqLine;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct Dummy {
        evts: Vec<EventFd>,
        active: Option<ActiveState>,
        resets: u32,
        config: [u8; 8],
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            4
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&self.config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let o = usize::try_from(offset).unwrap();
            if o + data.len() <= 8 {
                self.config[o..o + data.len()].copy_from_slice(data);
            }
        }
        fn activate(&mut self, state: ActiveState) -> Result<(), super::super::ActivateError> {
            self.active = Some(state);
            Ok(())
        }
        fn reset(&mut self) {
            self.active = None;
            self.resets += 1;
        }
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let d = Arc::new(Mutex::new(Dummy {
            evts: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
            active: None,
            resets: 0,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
        }));
        let t = MmioTransport::new(d.clone(), mem, Interrupt::new(IrqLine::new(5).unwrap()));
        (t, d)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport) {
        w(t, regs::STATUS, STATUS_ACKNOWLEDGE);
        w(t, regs::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, regs::DRIVER_FEATURES_SEL, 0);
        w(t, regs::DRIVER_FEATURES, 1);
        w(t, regs::DRIVER_FEATURES_SEL, 1);
        w(t, regs::DRIVER_FEATURES, 1);
        w(
            t,
            regs::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, base: u32) {
        w(t, regs::QUEUE_SEL, sel);
        w(t, regs::QUEUE_NUM, 8);
        w(t, regs::QUEUE_DESC_LOW, base);
        w(t, regs::QUEUE_AVAIL_LOW, base + 0x100);
        w(t, regs::QUEUE_USED_LOW, base + 0x200);
        w(t, regs::QUEUE_READY, 1);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = setup();
        assert_eq!(r(&mut t, regs::MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(r(&mut t, regs::VERSION), 2);
        assert_eq!(r(&mut t, regs::DEVICE_ID), 4);
        w(&mut t, regs::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, regs::DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        w(&mut t, regs::DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, regs::DEVICE_FEATURES), 1);
        w(&mut t, regs::QUEUE_SEL, 1);
        assert_eq!(r(&mut t, regs::QUEUE_NUM_MAX), 8);
        w(&mut t, regs::QUEUE_SEL, 2);
        assert_eq!(r(&mut t, regs::QUEUE_NUM_MAX), 0);
        assert_eq!(r(&mut t, regs::SHM_LEN_LOW), u32::MAX);
        let mut b = [0u8; 2];
        t.read(regs::CONFIG + 1, &mut b);
        assert_eq!(b, [2, 3]);
        let mut b = [0u8; 2];
        t.read(regs::VERSION, &mut b);
        assert_eq!(b, [0, 0], "16-bit register reads are refused");
    }

    #[test]
    fn full_negotiation_activates_and_reset_deactivates() {
        let (mut t, d) = setup();
        negotiate(&mut t);
        assert_ne!(r(&mut t, regs::STATUS) & STATUS_FEATURES_OK, 0);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x2000);
        w(&mut t, regs::STATUS, 0xf);
        assert_eq!(r(&mut t, regs::STATUS), 0xf);
        {
            let dev = d.lock().unwrap();
            let a = dev.active.as_ref().unwrap();
            assert_eq!(a.acked_features, VIRTIO_F_VERSION_1 | 1);
            assert_eq!(a.queues[0].size(), 8);
            assert_eq!(a.queues[1].desc_table(), 0x2000);
        }
        // Queue registers are frozen after DRIVER_OK.
        w(&mut t, regs::QUEUE_SEL, 0);
        w(&mut t, regs::QUEUE_NUM, 4);
        w(&mut t, regs::QUEUE_DESC_LOW, 0x8000);
        assert_eq!(t.queues[0].size(), 8);
        assert_eq!(t.queues[0].desc_table(), 0x1000);
        // Queue reset after DRIVER_OK (how virtio-drivers tears a device down).
        w(&mut t, regs::QUEUE_SEL, 1);
        w(&mut t, regs::QUEUE_READY, 0);
        assert_eq!(r(&mut t, regs::QUEUE_READY), 0);
        assert!(d.lock().unwrap().active.is_none());
        w(&mut t, regs::QUEUE_DESC_LOW, 0);
        assert_eq!(t.queues[1].desc_table(), 0);
        // The other queue can be reset too once the device has stopped.
        w(&mut t, regs::QUEUE_SEL, 0);
        w(&mut t, regs::QUEUE_READY, 0);
        assert_eq!(r(&mut t, regs::QUEUE_READY), 0);
        w(&mut t, regs::STATUS, 0);
        assert_eq!(r(&mut t, regs::STATUS), 0);
        assert!(d.lock().unwrap().active.is_none());
        assert_eq!(d.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, regs::QUEUE_READY), 0);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, _) = setup();
        w(&mut t, regs::STATUS, STATUS_ACKNOWLEDGE);
        w(&mut t, regs::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, regs::DRIVER_FEATURES, 1);
        w(
            &mut t,
            regs::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, regs::STATUS) & STATUS_FEATURES_OK, 0);
        // Unknown feature bits are refused too.
        w(&mut t, regs::DRIVER_FEATURES_SEL, 1);
        w(&mut t, regs::DRIVER_FEATURES, 1 | 2);
        w(
            &mut t,
            regs::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, regs::STATUS) & STATUS_FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK does nothing.
        w(
            &mut t,
            regs::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert_eq!(r(&mut t, regs::STATUS) & STATUS_DRIVER_OK, 0);
    }

    #[test]
    fn snapshot_reports_negotiated_state() {
        let (mut t, _d) = setup();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1000);
        let s = t.snapshot(0xd000_0000, 5);
        assert_eq!(s["mmio_base"], 0xd000_0000u64);
        assert_eq!(s["gsi"], 5);
        assert_eq!(s["acked_features"], t.acked_features());
        assert_ne!(t.acked_features() & VIRTIO_F_VERSION_1, 0);
        assert_eq!(s["activated"], false);
        assert_eq!(s["queues"][0]["ready"], true);
        assert_eq!(s["queues"][0]["desc_table"], 0x1000);
        assert!(s["queues"][0]["next_avail"].is_null());
        assert_eq!(s["config"].as_str().unwrap().len(), 128);
    }

    #[test]
    fn invalid_queue_sets_needs_reset_and_failed_sticks() {
        let (mut t, d) = setup();
        negotiate(&mut t);
        w(&mut t, regs::QUEUE_SEL, 0);
        w(&mut t, regs::QUEUE_NUM, 8);
        w(&mut t, regs::QUEUE_DESC_LOW, 0xffff_f000); // outside guest memory
        w(&mut t, regs::QUEUE_READY, 1);
        w(&mut t, regs::STATUS, 0xf);
        let s = r(&mut t, regs::STATUS);
        assert_ne!(s & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(s & STATUS_DRIVER_OK, 0);
        assert!(d.lock().unwrap().active.is_none());
        assert_ne!(r(&mut t, regs::INTERRUPT_STATUS) & 2, 0);
        w(&mut t, regs::INTERRUPT_ACK, 2);
        assert_eq!(r(&mut t, regs::INTERRUPT_STATUS), 0);
        w(&mut t, regs::STATUS, s | STATUS_FAILED);
        assert_ne!(r(&mut t, regs::STATUS) & STATUS_FAILED, 0);
    }

    #[test]
    fn bad_queue_size_is_ignored_and_notify_is_forwarded() {
        let (mut t, d) = setup();
        negotiate(&mut t);
        w(&mut t, regs::QUEUE_SEL, 0);
        w(&mut t, regs::QUEUE_NUM, 3);
        assert_eq!(t.queues[0].size(), 16, "non-power-of-two size ignored");
        w(&mut t, regs::QUEUE_NUM, 64);
        assert_eq!(t.queues[0].size(), 16, "size above max ignored");
        w(&mut t, regs::QUEUE_NOTIFY, 1);
        assert_eq!(d.lock().unwrap().evts[1].read().unwrap(), 1);
        w(&mut t, regs::QUEUE_NOTIFY, 7); // no such queue: ignored
        t.write(regs::CONFIG, &[9]);
        assert_eq!(d.lock().unwrap().config[0], 9);
    }
}

/// Bounded random-input tests (stable toolchain, no fuzzing engine): random register traffic,
/// queue layouts and notifications against a real device must never panic, and the transport
/// must still work afterwards.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // truncating random bits is the point
mod random_tests {
    use super::*;
    use crate::devices::irq::IrqLine;
    use crate::devices::virtio::rng::Rng;
    use vm_memory::{Bytes, GuestAddress};

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_register_traffic_never_panics() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut t = MmioTransport::new(
            rng.clone(),
            mem.clone(),
            Interrupt::new(IrqLine::new(5).unwrap()),
        );
        let mut r = XorShift(0x9e37_79b9_7f4a_7c15);
        let offsets = [
            0x0, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60, 0x64, 0x70, 0x80,
            0x84, 0x90, 0x94, 0xa0, 0xa4, 0xac, 0xfc, 0x100, 0x104, 0xffc,
        ];
        let iters = crate::devices::virtio::queue_util::fixture::Fuzz::iters(200_000);
        for _ in 0..iters {
            let x = r.next();
            let off = offsets[(x % offsets.len() as u64) as usize];
            let v = match (x >> 8) % 4 {
                0 => (x >> 16) as u32,
                1 => ((x >> 16) % 16) as u32,
                2 => 0xf,
                _ => ((x >> 16) % 0x10_0000) as u32,
            };
            if (x >> 40) % 3 == 0 {
                let mut d = [0u8; 4];
                t.read(off, &mut d);
            } else {
                t.write(off, &v.to_le_bytes());
            }
            // Scribble over guest memory where rings may live.
            let a = (r.next() % 0xf_fff0) & !7;
            mem.write_obj(r.next(), GuestAddress(a)).unwrap();
            if x % 7 == 0 {
                rng.lock().unwrap().process_queue();
            }
        }
        // A clean negotiation still works.
        t.write(regs::STATUS, &0u32.to_le_bytes());
        for s in [1u32, 3] {
            t.write(regs::STATUS, &s.to_le_bytes());
        }
        t.write(regs::DRIVER_FEATURES_SEL, &1u32.to_le_bytes());
        t.write(regs::DRIVER_FEATURES, &1u32.to_le_bytes());
        t.write(regs::STATUS, &0xbu32.to_le_bytes());
        let mut d = [0u8; 4];
        t.read(regs::STATUS, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xb);
    }
}
