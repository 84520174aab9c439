// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! An identity-mapped [`virtio_drivers::Hal`]: guest-physical == virtual (the VMM identity-maps
//! RAM and the MMIO window). DMA pages come from a bump pool after the heap; freeing the most
//! recent allocation returns it, anything else leaks.

use crate::heap::{DMA_SIZE, HEAP_SIZE, kit_end};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

static DMA_NEXT: AtomicUsize = AtomicUsize::new(0);

fn pool_start() -> usize {
    kit_end() + HEAP_SIZE
}

/// Allocates `pages` zeroed, page-aligned pages of DMA memory; `None` when the pool is used up.
pub fn dma_pages(pages: usize) -> Option<usize> {
    let mut next = DMA_NEXT.load(Ordering::Relaxed);
    if next == 0 {
        next = pool_start();
    }
    let end = next.checked_add(pages.checked_mul(PAGE_SIZE)?)?;
    if end > pool_start() + DMA_SIZE {
        return None;
    }
    DMA_NEXT.store(end, Ordering::Relaxed);
    // SAFETY: [next, end) is inside the DMA pool, identity-mapped RAM owned by nobody else.
    unsafe { core::ptr::write_bytes(next as *mut u8, 0, end - next) };
    Some(next)
}

/// The identity-mapping HAL.
#[derive(Debug)]
pub struct IdentityHal;

// SAFETY: dma_alloc returns zeroed, page-aligned, non-aliased pool memory whose physical address
// equals its virtual address; share/unshare need no copies under an identity mapping.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match dma_pages(pages) {
            Some(addr) => (
                addr as PhysAddr,
                NonNull::new(addr as *mut u8).unwrap_or(NonNull::dangling()),
            ),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        let end = paddr as usize + pages * PAGE_SIZE;
        if DMA_NEXT.load(Ordering::Relaxed) == end {
            DMA_NEXT.store(paddr as usize, Ordering::Relaxed);
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
