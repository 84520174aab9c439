// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Raw virtio-mmio registers (virtio v1.2 §4.2.2) and device discovery from the command line.
//! Every access is a 32-bit volatile load/store, i.e. one MMIO exit.

use crate::cmdline::{MmioDevice, mmio_devices};
use crate::hal::IdentityHal;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

/// MagicValue ("virt").
pub const MAGIC_VALUE: usize = 0x000;
/// Version (2 = modern).
pub const VERSION: usize = 0x004;
/// DeviceID.
pub const DEVICE_ID: usize = 0x008;
/// VendorID.
pub const VENDOR_ID: usize = 0x00c;
/// DeviceFeatures.
pub const DEVICE_FEATURES: usize = 0x010;
/// DeviceFeaturesSel.
pub const DEVICE_FEATURES_SEL: usize = 0x014;
/// DriverFeatures.
pub const DRIVER_FEATURES: usize = 0x020;
/// DriverFeaturesSel.
pub const DRIVER_FEATURES_SEL: usize = 0x024;
/// QueueSel.
pub const QUEUE_SEL: usize = 0x030;
/// QueueNumMax.
pub const QUEUE_NUM_MAX: usize = 0x034;
/// QueueNum.
pub const QUEUE_NUM: usize = 0x038;
/// QueueReady.
pub const QUEUE_READY: usize = 0x044;
/// QueueNotify.
pub const QUEUE_NOTIFY: usize = 0x050;
/// InterruptStatus.
pub const INTERRUPT_STATUS: usize = 0x060;
/// InterruptACK.
pub const INTERRUPT_ACK: usize = 0x064;
/// Status.
pub const STATUS: usize = 0x070;
/// QueueDescLow.
pub const QUEUE_DESC_LOW: usize = 0x080;
/// QueueDescHigh.
pub const QUEUE_DESC_HIGH: usize = 0x084;
/// QueueDriverLow (available ring).
pub const QUEUE_DRIVER_LOW: usize = 0x090;
/// QueueDriverHigh.
pub const QUEUE_DRIVER_HIGH: usize = 0x094;
/// QueueDeviceLow (used ring).
pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
/// QueueDeviceHigh.
pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
/// ConfigGeneration.
pub const CONFIG_GENERATION: usize = 0x0fc;
/// Start of the device-specific configuration space.
pub const CONFIG: usize = 0x100;

/// The magic value.
pub const MAGIC: u32 = 0x7472_6976;
/// Status: ACKNOWLEDGE.
pub const S_ACKNOWLEDGE: u32 = 1;
/// Status: DRIVER.
pub const S_DRIVER: u32 = 2;
/// Status: DRIVER_OK.
pub const S_DRIVER_OK: u32 = 4;
/// Status: FEATURES_OK.
pub const S_FEATURES_OK: u32 = 8;
/// Status: DEVICE_NEEDS_RESET.
pub const S_NEEDS_RESET: u32 = 0x40;
/// Status: FAILED.
pub const S_FAILED: u32 = 0x80;
/// Feature bit VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

/// Device ids (virtio v1.2 §5).
pub mod id {
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket (vsock).
    pub const VSOCK: u32 = 19;
    /// File system.
    pub const FS: u32 = 26;
    /// Network.
    pub const NET: u32 = 1;
}

/// One device's register window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regs {
    /// Base address.
    pub base: usize,
}

impl Regs {
    /// Reads a 32-bit register.
    pub fn read(&self, off: usize) -> u32 {
        // SAFETY: base is a virtio-mmio window announced by the VMM (identity-mapped MMIO).
        unsafe { core::ptr::read_volatile((self.base + off) as *const u32) }
    }

    /// Writes a 32-bit register.
    pub fn write(&self, off: usize, v: u32) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u32, v) }
    }

    /// Reads a config-space byte.
    pub fn config_u8(&self, off: usize) -> u8 {
        // SAFETY: as for `read`; config space follows the registers.
        unsafe { core::ptr::read_volatile((self.base + CONFIG + off) as *const u8) }
    }

    /// The 64-bit device feature set.
    pub fn device_features(&self) -> u64 {
        self.write(DEVICE_FEATURES_SEL, 0);
        let lo = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let hi = self.read(DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Writes the 64-bit driver feature set.
    pub fn set_driver_features(&self, f: u64) {
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, (f & 0xffff_ffff) as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (f >> 32) as u32);
    }

    /// Resets the device (status 0) and checks that it reads back 0.
    pub fn reset(&self) -> Result<(), String> {
        self.write(STATUS, 0);
        match self.read(STATUS) {
            0 => Ok(()),
            s => Err(format!("status {s:#x} after reset")),
        }
    }

    /// Reset, ACKNOWLEDGE, DRIVER, negotiate `wanted & offered` (VERSION_1 required),
    /// FEATURES_OK; returns the negotiated features. Queues come next, then [`Regs::driver_ok`].
    pub fn begin_init(&self, wanted: u64) -> Result<u64, String> {
        self.reset()?;
        self.write(STATUS, S_ACKNOWLEDGE);
        self.write(STATUS, S_ACKNOWLEDGE | S_DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            return Err(format!("device features {offered:#x} lack VERSION_1"));
        }
        let features = (wanted | F_VERSION_1) & offered;
        self.set_driver_features(features);
        self.write(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        let s = self.read(STATUS);
        if s & S_FEATURES_OK == 0 {
            return Err(format!("FEATURES_OK not kept (status {s:#x})"));
        }
        Ok(features)
    }

    /// Sets DRIVER_OK and checks it reads back.
    pub fn driver_ok(&self) -> Result<(), String> {
        self.write(
            STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        let s = self.read(STATUS);
        if s != S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK {
            return Err(format!("status {s:#x} after DRIVER_OK"));
        }
        Ok(())
    }
}

/// A device found on the command line whose magic value is right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The announcement.
    pub dev: MmioDevice,
    /// Its registers.
    pub regs: Regs,
    /// Its DeviceID register.
    pub device_id: u32,
}

/// Probes every announced device (in command-line order).
pub fn probe(cmdline: &str) -> Result<Vec<Found>, String> {
    let mut out = Vec::new();
    for (i, d) in mmio_devices(cmdline).enumerate() {
        let dev = d.ok_or_else(|| format!("virtio_mmio.device word {i} is malformed"))?;
        let base = usize::try_from(dev.base).map_err(|_| String::from("base too large"))?;
        let regs = Regs { base };
        let magic = regs.read(MAGIC_VALUE);
        if magic != MAGIC {
            return Err(format!("device at {base:#x}: magic {magic:#x}"));
        }
        out.push(Found {
            dev,
            regs,
            device_id: regs.read(DEVICE_ID),
        });
    }
    Ok(out)
}

/// The `n`th (0-based) announced device with DeviceID `device_id`.
pub fn find(cmdline: &str, device_id: u32, n: usize) -> Result<Found, String> {
    probe(cmdline)?
        .into_iter()
        .filter(|f| f.device_id == device_id)
        .nth(n)
        .ok_or_else(|| format!("no virtio device #{n} with id {device_id} announced"))
}

/// A `virtio-drivers` MMIO transport for a found device.
pub fn transport(f: &Found) -> Result<MmioTransport<'static>, String> {
    let size = usize::try_from(f.dev.size).map_err(|_| String::from("size too large"))?;
    let header =
        NonNull::new(f.regs.base as *mut VirtIOHeader).ok_or_else(|| String::from("null base"))?;
    // SAFETY: the VMM announced [base, base+size) as this device's virtio-mmio window; it is
    // identity-mapped and nothing else in the program accesses it while the transport lives.
    unsafe { MmioTransport::new(header, size) }.map_err(|e| format!("transport: {e}"))
}

/// Keeps the HAL type nameable for programs (`mmio::Hal`).
pub type Hal = IdentityHal;
