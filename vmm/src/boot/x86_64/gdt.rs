// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The boot GDT and the conversion of its descriptors into `kvm_segment`s.
//!
//! One table serves every entry mode (Intel SDM vol. 3, §3.4.5 segment descriptors):
//! a 32-bit code segment for the PVH entry, the Linux boot protocol's `__BOOT_CS` (0x10) and
//! `__BOOT_DS` (0x18), a TSS, and DPL-3 code/data segments for the test-payload (CPL 3) entry.

use kvm_bindings::kvm_segment;

/// 32-bit flat code segment (PVH entry).
pub const CODE32_INDEX: u8 = 1;
/// 64-bit code segment, `__BOOT_CS` = 0x10.
pub const CODE64_INDEX: u8 = 2;
/// Flat data segment, `__BOOT_DS` = 0x18.
pub const DATA_INDEX: u8 = 3;
/// Task state segment.
pub const TSS_INDEX: u8 = 4;
/// 64-bit code segment with DPL 3 (test-payload entry).
pub const USER_CODE64_INDEX: u8 = 5;
/// Data segment with DPL 3 (test-payload entry).
pub const USER_DATA_INDEX: u8 = 6;

/// Builds a descriptor from access/flags bits (`0xF0FF` mask: flags nibble + access byte), base
/// and limit, in the SDM's layout.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = flags as u64;
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT, indexed by the `*_INDEX` constants.
pub fn boot_gdt() -> [u64; 7] {
    [
        0,                             // null
        gdt_entry(0xc09b, 0, 0xfffff), // CODE32: present, DPL 0, code exec/read, 32-bit, 4 KiB gran.
        gdt_entry(0xa09b, 0, 0xfffff), // CODE64: present, DPL 0, code exec/read, L=1
        gdt_entry(0xc093, 0, 0xfffff), // DATA: present, DPL 0, data read/write
        gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
        gdt_entry(0xa0fb, 0, 0xfffff), // USER_CODE64: DPL 3
        gdt_entry(0xc0f3, 0, 0xfffff), // USER_DATA: DPL 3
    ]
}

fn bits(entry: u64, shift: u32, mask: u64) -> u8 {
    // Every caller's mask is at most 4 bits wide, so the value fits in u8.
    u8::try_from((entry >> shift) & mask).unwrap_or(0)
}

/// Converts a descriptor into the `kvm_segment` KVM expects; `rpl` is the requested privilege
/// level put into the selector's low two bits.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8, rpl: u8) -> kvm_segment {
    let base_lo = (entry >> 16) & 0x00ff_ffff;
    let base_hi = (entry >> 32) & 0xff00_0000;
    let limit_raw = ((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_ffff);
    let g = bits(entry, 55, 1);
    let limit_raw = u32::try_from(limit_raw).unwrap_or(0);
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    let present = bits(entry, 47, 1);
    kvm_segment {
        base: base_lo | base_hi,
        limit,
        selector: (u16::from(table_index) * 8) | u16::from(rpl & 3),
        type_: bits(entry, 40, 0xf),
        present,
        dpl: bits(entry, 45, 3),
        db: bits(entry, 54, 1),
        s: bits(entry, 44, 1),
        l: bits(entry, 53, 1),
        g,
        avl: bits(entry, 52, 1),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_descriptor_round_trips() {
        let gdt = boot_gdt();
        let seg = kvm_segment_from_gdt(gdt[usize::from(CODE64_INDEX)], CODE64_INDEX, 0);
        assert_eq!(seg.selector, 0x10);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.db, 0);
        assert_eq!(seg.dpl, 0);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.base, 0);
    }

    #[test]
    fn user_segments_have_dpl3_and_rpl3() {
        let gdt = boot_gdt();
        let cs = kvm_segment_from_gdt(gdt[usize::from(USER_CODE64_INDEX)], USER_CODE64_INDEX, 3);
        let ds = kvm_segment_from_gdt(gdt[usize::from(USER_DATA_INDEX)], USER_DATA_INDEX, 3);
        assert_eq!((cs.dpl, cs.selector, cs.l), (3, 0x2b, 1));
        assert_eq!((ds.dpl, ds.selector, ds.type_), (3, 0x33, 3));
    }

    #[test]
    fn known_encodings() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        let seg = kvm_segment_from_gdt(0, 0, 0);
        assert_eq!(seg.unusable, 1);
    }
}
