// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! An address-range bus for port I/O or MMIO: exits are dispatched to the device whose range
//! contains the address, with the offset into that range.
//!
//! Runs on vCPU threads; devices are behind a `Mutex` each, so different devices are served in
//! parallel. A write may ask the VMM to stop (i8042 reset, exit-status port).

use std::sync::{Arc, Mutex};

/// What a device wants after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusAction {
    /// Nothing special.
    None,
    /// The guest reset the machine (i8042 reset).
    Reset,
    /// The guest asked the VMM to exit with this status (exit-status port).
    Exit(u8),
}

/// A device on a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` into `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction;
}

/// Errors when building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Ranges overlap.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// Zero-length or wrapping range.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// A shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    base: u64,
    len: u64,
    dev: SharedDevice,
}

/// A set of non-overlapping ranges, sorted by base.
#[derive(Clone, Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<(u64, u64)> = self.entries.iter().map(|e| (e.base, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `dev` at `[base, base + len)`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let pos = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(pos, Entry { base, len, dev });
        Ok(())
    }

    fn find(&self, addr: u64, access_len: usize) -> Option<(&Entry, u64)> {
        let idx = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        let e = &self.entries[idx];
        let offset = addr - e.base;
        let access_end = offset.checked_add(u64::try_from(access_len).ok()?)?;
        (access_end <= e.len).then_some((e, offset))
    }

    /// Dispatches a read; returns false (and leaves `data` untouched) if no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; `None` if no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<BusAction> {
        self.find(addr, data.len())
            .map(|(e, offset)| lock(&e.dev).write(offset, data))
    }
}

/// Locks a device, recovering from a poisoned lock (a panic elsewhere must not wedge the bus;
/// with `panic = "abort"` in release this cannot happen anyway).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap());
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
            self.last = Some((offset, data.to_vec()));
            BusAction::None
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Probe { last: None }));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(Arc::new(Mutex::new(Probe { last: None })), 0x60, 5)
            .unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert_eq!(bus.write(0x3f8, b"K"), Some(BusAction::None));
        assert_eq!(a.lock().unwrap().last, Some((0, vec![b'K'])));
        assert!(!bus.read(0x400, &mut d));
        assert!(bus.write(0x3f0, &[0]).is_none());
        // An access straddling the end of a range is not claimed.
        let mut d2 = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut d2));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let p = || Arc::new(Mutex::new(Probe { last: None }));
        bus.insert(p(), 0x1000, 0x1000).unwrap();
        assert!(bus.insert(p(), 0x1fff, 1).is_err());
        assert!(bus.insert(p(), 0x0, 0x1001).is_err());
        assert!(bus.insert(p(), 0x5000, 0).is_err());
        assert!(bus.insert(p(), u64::MAX, 2).is_err());
        bus.insert(p(), 0x2000, 0x1000).unwrap();
    }
}
