// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! A bump heap in guest RAM just above the program image (`__kit_end`, 2 MiB aligned), followed
//! by the DMA pool of [`crate::hal`]. Freeing the most recent block (and growing it in place)
//! is supported, which covers `Vec` growth and short-lived buffers; anything else leaks. Pages
//! are touched only when used (a first touch costs ~16 µs per 4 KiB page under PVM).
//!
//! Single vCPU, no interrupts: plain atomics with relaxed ordering are enough.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Heap size.
pub const HEAP_SIZE: usize = 32 << 20;
/// DMA pool size (after the heap).
pub const DMA_SIZE: usize = 16 << 20;

unsafe extern "C" {
    static __kit_end: u8;
}

/// First byte after the program image (2 MiB aligned).
pub fn kit_end() -> usize {
    core::ptr::addr_of!(__kit_end) as usize
}

/// Highest guest-physical address the kit uses (end of the DMA pool).
pub fn pools_end() -> usize {
    kit_end() + HEAP_SIZE + DMA_SIZE
}

static NEXT: AtomicUsize = AtomicUsize::new(0);
static LAST: AtomicUsize = AtomicUsize::new(0);
static END: AtomicUsize = AtomicUsize::new(0);

/// Sets the heap up; called by [`crate::kit_main!`] before the program runs.
pub fn init() {
    NEXT.store(kit_end(), Ordering::Relaxed);
    LAST.store(usize::MAX, Ordering::Relaxed);
    END.store(kit_end() + HEAP_SIZE, Ordering::Relaxed);
}

/// Bytes of heap handed out so far (high-water mark).
pub fn used() -> usize {
    NEXT.load(Ordering::Relaxed).saturating_sub(kit_end())
}

#[derive(Debug)]
struct Bump;

// SAFETY: blocks never overlap: NEXT only moves past a handed-out block, and moves back only
// when that exact block (the last one) is freed.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let next = NEXT.load(Ordering::Relaxed);
        let Some(start) = next.checked_next_multiple_of(layout.align()) else {
            return core::ptr::null_mut();
        };
        let Some(end) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if end > END.load(Ordering::Relaxed) {
            return core::ptr::null_mut();
        }
        NEXT.store(end, Ordering::Relaxed);
        LAST.store(start, Ordering::Relaxed);
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        if ptr as usize == LAST.load(Ordering::Relaxed) {
            NEXT.store(ptr as usize, Ordering::Relaxed);
            LAST.store(usize::MAX, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let start = ptr as usize;
        if start == LAST.load(Ordering::Relaxed) {
            if let Some(end) = start.checked_add(new_size)
                && end <= END.load(Ordering::Relaxed)
            {
                NEXT.store(end, Ordering::Relaxed);
                return ptr;
            }
            return core::ptr::null_mut();
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return core::ptr::null_mut();
        };
        // SAFETY: new_layout has a non-zero size (the caller's contract for realloc).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for min(old, new) bytes and do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}

#[global_allocator]
static HEAP: Bump = Bump;
