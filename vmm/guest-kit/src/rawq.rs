// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! A minimal split virtqueue driven by hand, for register-protocol and hostile-input tests:
//! the program writes descriptors (good or deliberately bad), publishes heads and polls the used
//! ring. No interrupts: completion is seen by polling memory.

use crate::arch::Deadline;
use crate::hal::dma_pages;
use crate::mmio::{self, Regs};
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{Ordering, fence};

/// Descriptor flag: chain continues in `next`.
pub const NEXT: u16 = 1;
/// Descriptor flag: device writes this buffer.
pub const WRITE: u16 = 2;

/// A queue laid out in two DMA pages: descriptors and available ring in the first, the used
/// ring in the second (so `size` is at most 128).
#[derive(Debug)]
pub struct RawQueue {
    regs: Regs,
    index: u32,
    size: u16,
    desc: usize,
    avail: usize,
    used: usize,
    avail_idx: u16,
    used_seen: u16,
}

fn w16(a: usize, v: u16) {
    // SAFETY: `a` is inside this queue's DMA pages (identity-mapped, owned by the queue).
    unsafe { core::ptr::write_volatile(a as *mut u16, v) }
}

fn r16(a: usize) -> u16 {
    // SAFETY: as for w16.
    unsafe { core::ptr::read_volatile(a as *const u16) }
}

fn r32(a: usize) -> u32 {
    // SAFETY: as for w16.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

impl RawQueue {
    /// Configures queue `index` with `size` entries (device between FEATURES_OK and DRIVER_OK).
    pub fn setup(regs: Regs, index: u32, size: u16) -> Result<Self, String> {
        if size == 0 || size > 128 || !size.is_power_of_two() {
            return Err(format!("bad raw queue size {size}"));
        }
        regs.write(mmio::QUEUE_SEL, index);
        if regs.read(mmio::QUEUE_READY) != 0 {
            return Err(format!("queue {index} already ready before setup"));
        }
        let max = regs.read(mmio::QUEUE_NUM_MAX);
        if max < u32::from(size) {
            return Err(format!("queue {index}: QueueNumMax {max} < {size}"));
        }
        let base = dma_pages(2).ok_or_else(|| String::from("DMA pool exhausted"))?;
        let q = Self {
            regs,
            index,
            size,
            desc: base,
            avail: base + 16 * usize::from(size),
            used: base + 4096,
            avail_idx: 0,
            used_seen: 0,
        };
        regs.write(mmio::QUEUE_NUM, u32::from(size));
        for (lo, hi, addr) in [
            (mmio::QUEUE_DESC_LOW, mmio::QUEUE_DESC_HIGH, q.desc),
            (mmio::QUEUE_DRIVER_LOW, mmio::QUEUE_DRIVER_HIGH, q.avail),
            (mmio::QUEUE_DEVICE_LOW, mmio::QUEUE_DEVICE_HIGH, q.used),
        ] {
            let a = addr as u64;
            regs.write(lo, (a & 0xffff_ffff) as u32);
            regs.write(hi, (a >> 32) as u32);
        }
        regs.write(mmio::QUEUE_READY, 1);
        if regs.read(mmio::QUEUE_READY) != 1 {
            return Err(format!("queue {index}: QueueReady does not read back 1"));
        }
        Ok(q)
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Writes descriptor `i` (any values, including hostile ones).
    pub fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * usize::from(i % self.size);
        // SAFETY: descriptor `i % size` lies in the descriptor table of this queue's DMA page.
        unsafe {
            core::ptr::write_volatile(d as *mut u64, addr);
            core::ptr::write_volatile((d + 8) as *mut u32, len);
            core::ptr::write_volatile((d + 12) as *mut u16, flags);
            core::ptr::write_volatile((d + 14) as *mut u16, next);
        }
    }

    /// Puts `head` (any value, including an out-of-range one) in the available ring.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * usize::from(self.avail_idx % self.size);
        w16(slot, head);
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        w16(self.avail + 2, self.avail_idx);
        fence(Ordering::SeqCst);
    }

    /// Writes QueueNotify.
    pub fn notify(&self) {
        self.regs.write(mmio::QUEUE_NOTIFY, self.index);
    }

    /// The used ring's idx as the device wrote it.
    pub fn used_idx(&self) -> u16 {
        r16(self.used + 2)
    }

    /// Waits until the device publishes the next used element; returns (id, len).
    pub fn wait_used(&mut self, deadline: Deadline) -> Option<(u32, u32)> {
        loop {
            if self.used_idx() != self.used_seen {
                fence(Ordering::SeqCst);
                let e = self.used + 4 + 8 * usize::from(self.used_seen % self.size);
                self.used_seen = self.used_seen.wrapping_add(1);
                return Some((r32(e), r32(e + 4)));
            }
            if deadline.expired() {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    /// Waits for the used element with id `head`, skipping others (completions of earlier
    /// hostile chains); returns its length.
    pub fn wait_for(&mut self, head: u16, deadline: Deadline) -> Option<u32> {
        loop {
            let (id, len) = self.wait_used(deadline)?;
            if id == u32::from(head) {
                return Some(len);
            }
        }
    }

    /// Marks everything the device has published so far as seen.
    pub fn drain_used(&mut self) -> u16 {
        let idx = self.used_idx();
        let n = idx.wrapping_sub(self.used_seen);
        self.used_seen = idx;
        n
    }
}
