// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Helpers shared by the devices' queue processing, and (for tests) a fixture that lays out a
//! split virtqueue in guest memory with virtio-queue's `mock` module.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::Interrupt;

/// Raises the used-buffer interrupt if the driver wants one (virtio-queue decides, honouring
/// `VRING_AVAIL_F_NO_INTERRUPT` / EVENT_IDX). Errors (a hostile ring) count as "notify".
pub fn notify_if_needed(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) {
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
}

/// Adds `head` to the used ring; a failure (hostile ring addresses) is logged, rate-limited.
pub fn add_used(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) {
    if let Err(e) = queue.add_used(mem, head, len) {
        crate::warn_ratelimited!("virtio: cannot add used descriptor {head}: {e}");
    }
}

/// Test support: build queues in guest memory the way a driver would.
#[cfg(test)]
pub mod fixture {
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// `VRING_DESC_F_NEXT`.
    pub const NEXT: u16 = 1;
    /// `VRING_DESC_F_WRITE`.
    pub const WRITE: u16 = 2;

    /// 16 MiB of guest memory.
    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    /// A descriptor; `next` is filled in by [`chain`].
    pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Links descriptors into a chain starting at table index `first`.
    pub fn chain(descs: &[(u64, u32, u16)], first: u16) -> Vec<RawDescriptor> {
        descs
            .iter()
            .enumerate()
            .map(|(i, (addr, len, flags))| {
                let last = i + 1 == descs.len();
                let idx = first + u16::try_from(i).unwrap();
                let flags = if last { *flags } else { *flags | NEXT };
                RawDescriptor::from(SplitDescriptor::new(
                    *addr,
                    *len,
                    flags,
                    if last { 0 } else { idx + 1 },
                ))
            })
            .collect()
    }

    /// A mock split queue of 16 entries at `base`.
    pub fn mock(mem: &GuestMemoryMmap, base: u64) -> MockSplitQueue<'_, GuestMemoryMmap> {
        MockSplitQueue::create(mem, GuestAddress(base), 16)
    }

    /// The `Queue` object for a mock queue.
    pub fn queue(m: &MockSplitQueue<'_, GuestMemoryMmap>) -> Queue {
        m.create_queue::<Queue>().unwrap()
    }

    /// Reads the used ring's entry `i`: `(id, len)`.
    pub fn used(mem: &GuestMemoryMmap, q: &Queue, i: u16) -> (u32, u32) {
        let base = q.used_ring() + 4 + u64::from(i) * 8;
        (
            mem.read_obj(GuestAddress(base)).unwrap(),
            mem.read_obj(GuestAddress(base + 4)).unwrap(),
        )
    }

    /// The used ring's idx.
    pub fn used_idx(mem: &GuestMemoryMmap, q: &Queue) -> u16 {
        mem.read_obj(GuestAddress(q.used_ring() + 2)).unwrap()
    }
}
