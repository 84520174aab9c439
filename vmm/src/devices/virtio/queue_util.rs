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

    /// Bounded random-input testing ("fuzzing on stable"): a xorshift generator with a fixed
    /// seed, so a failure reproduces; `VMRUN_FUZZ_ITERS=N` runs N iterations instead of the
    /// default (CI keeps the default small).
    #[derive(Debug)]
    pub struct Fuzz(u64);

    impl Fuzz {
        /// A generator with `seed` (non-zero).
        pub fn new(seed: u64) -> Self {
            Self(seed | 1)
        }

        /// The next 64 random bits.
        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A value below `n`.
        pub fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n.max(1)
        }

        /// The iteration count: `VMRUN_FUZZ_ITERS` or `default`.
        pub fn iters(default: usize) -> usize {
            std::env::var("VMRUN_FUZZ_ITERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        }

        /// A guest address: usually inside the data area [1 MiB, 2 MiB), sometimes at the end
        /// of memory, across it, in the rings, or far outside it.
        pub fn addr(&mut self) -> u64 {
            match self.below(8) {
                0 => (16 << 20) - self.below(64),
                1 => self.next_u64(),
                2 => self.below(0x1_0000),
                _ => (1 << 20) + self.below(1 << 20),
            }
        }

        /// A descriptor length: mostly small, sometimes huge or zero.
        pub fn length(&mut self) -> u32 {
            match self.below(8) {
                0 => 0,
                1 => u32::try_from(self.next_u64() >> 32).unwrap_or(u32::MAX),
                2 => u32::try_from(self.below(1 << 17)).unwrap_or(0),
                _ => u32::try_from(self.below(600)).unwrap_or(0),
            }
        }
    }

    /// The driver side of a 16-entry queue under random input: writes a random chain of 1..=4
    /// descriptors (random addresses, lengths, flags including INDIRECT, and sometimes a
    /// random `next`), publishes its head (sometimes an out-of-range one) and fills the data
    /// area with random bytes, so request headers parse as anything. Returns the number of
    /// heads published so far.
    pub fn random_chain(mem: &GuestMemoryMmap, q: &Queue, f: &mut Fuzz, published: &mut u16) {
        let n = 1 + f.below(4);
        let start = u16::try_from(f.below(16)).unwrap_or(0);
        for i in 0..n {
            let idx = (start + u16::try_from(i).unwrap_or(0)) % 16;
            let mut flags = u16::try_from(f.below(8)).unwrap_or(0) & !NEXT;
            if i + 1 < n && f.below(10) != 0 {
                flags |= NEXT;
            }
            let next = if f.below(10) == 0 {
                u16::try_from(f.below(40)).unwrap_or(0)
            } else {
                (idx + 1) % 16
            };
            let d = SplitDescriptor::new(f.addr(), f.length(), flags, next);
            let at = q.desc_table() + u64::from(idx) * 16;
            mem.write_obj(RawDescriptor::from(d), GuestAddress(at))
                .unwrap();
        }
        let head = if f.below(20) == 0 {
            u16::try_from(f.below(100)).unwrap_or(0)
        } else {
            start
        };
        let slot = q.avail_ring() + 4 + u64::from(*published % 16) * 2;
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        *published = published.wrapping_add(1);
        mem.write_obj(*published, GuestAddress(q.avail_ring() + 2))
            .unwrap();
        for _ in 0..8 {
            let a = (1 << 20) + f.below((1 << 20) - 8);
            mem.write_obj(f.next_u64(), GuestAddress(a)).unwrap();
        }
        // Sometimes a header with a plausible type at the start of the data area.
        if f.below(4) == 0 {
            mem.write_obj(
                u32::try_from(f.below(12)).unwrap_or(0),
                GuestAddress(1 << 20),
            )
            .unwrap();
        }
    }

    /// Checks that a device never returns more buffers than the driver published. Counts
    /// without wrapping: the device's used index (its own counter; the guest may legally
    /// point buffers at the rings and overwrite the copy in memory) is sampled often enough
    /// that it moves by less than 2^15 between samples.
    #[derive(Debug, Default)]
    pub struct UsedCheck {
        published: u64,
        used: u64,
        last: u16,
    }

    impl UsedCheck {
        /// The driver published one more head.
        pub fn published_one(&mut self) {
            self.published += 1;
        }

        /// Samples the device's used index.
        pub fn check(&mut self, next_used: u16) {
            self.used += u64::from(next_used.wrapping_sub(self.last));
            self.last = next_used;
            assert!(
                self.used <= self.published,
                "{} buffers used, only {} published",
                self.used,
                self.published
            );
        }
    }
}
