// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Identity-mapped boot page tables: 0–4 GiB with 2 MiB pages (RAM below the gap and the whole
//! 32-bit MMIO window, so test payloads can reach the virtio-mmio devices).
//!
//! Layout: PML4 at [`PML4_START`], one PDPT, four page directories. In test-payload mode every
//! level also has U/S=1 so that a CPL-3 entry can use the mappings.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDE_START, PDPTE_START, PML4_START};
use crate::memory::MMIO_GAP_START;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Number of page directories (one per GiB mapped).
pub const PD_COUNT: u64 = 4;

/// Errors writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// Guest memory does not cover the page-table area.
    #[error("cannot write page tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Every `(guest address, entry)` pair of the identity map.
pub fn identity_map_entries(user: bool) -> Vec<(u64, u64)> {
    let us = if user { USER } else { 0 };
    let mut out = Vec::new();
    out.push((PML4_START, PDPTE_START | PRESENT | WRITABLE | us));
    for gib in 0..PD_COUNT {
        let pd = PDE_START + gib * 0x1000;
        out.push((PDPTE_START + gib * 8, pd | PRESENT | WRITABLE | us));
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            let cache = if addr >= MMIO_GAP_START { PCD | PWT } else { 0 };
            out.push((
                pd + i * 8,
                addr | PRESENT | WRITABLE | PAGE_SIZE_2M | us | cache,
            ));
        }
    }
    out
}

/// Writes the identity map; returns the CR3 value.
pub fn setup_page_tables(mem: &GuestMemoryMmap, user: bool) -> Result<u64, PagingError> {
    for (addr, entry) in identity_map_entries(user) {
        mem.write_obj(entry, GuestAddress(addr))
            .map_err(PagingError::Write)?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables in memory like the MMU does for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<(u64, bool)> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 511) * 8))
            .ok()?;
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 511) * 8))
            .ok()?;
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 511) * 8))
            .ok()?;
        if pml4e & pdpte & pde & PRESENT == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        let user = pml4e & pdpte & pde & USER != 0;
        Some((
            (pde & !0x1f_ffff & 0x000f_ffff_ffff_f000) | (va & 0x1f_ffff),
            user,
        ))
    }

    #[test]
    fn identity_maps_ram_and_mmio_window() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = setup_page_tables(&mem, false).unwrap();
        for va in [0u64, 0x20_0000, 0x1234_5678, 0xd000_0050, 0xffff_f000] {
            assert_eq!(translate(&mem, cr3, va), Some((va, false)), "{va:#x}");
        }
        let cr3 = setup_page_tables(&mem, true).unwrap();
        assert_eq!(translate(&mem, cr3, 0xd000_1000), Some((0xd000_1000, true)));
        let pde: u64 = mem
            .read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 128 * 8))
            .unwrap();
        assert_ne!(pde & PCD, 0, "MMIO window is uncached");
    }
}
