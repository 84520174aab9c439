// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Finding and checking the Intel MultiProcessor table (MP spec 1.4): the floating pointer
//! structure in the last KiB of base memory, the EBDA or the BIOS area, then the configuration
//! table and its processor entries.

use alloc::string::String;
use alloc::vec::Vec;

/// One processor entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// Local APIC id.
    pub apic_id: u8,
    /// Entry flags: bit 0 enabled, bit 1 bootstrap processor.
    pub flags: u8,
}

/// What the configuration table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpTable {
    /// Address of the floating pointer structure.
    pub floating_at: usize,
    /// Processor entries in table order.
    pub cpus: Vec<Cpu>,
    /// Number of I/O APIC entries.
    pub ioapics: usize,
    /// Local APIC address.
    pub lapic_addr: u32,
}

fn byte(addr: usize) -> u8 {
    // SAFETY: the callers read only low guest RAM (below 1 MiB, never address 0), identity-mapped.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

fn sum(addr: usize, len: usize) -> u8 {
    (0..len).fold(0u8, |s, i| s.wrapping_add(byte(addr + i)))
}

fn find_floating(start: usize, end: usize) -> Option<usize> {
    (start..end).step_by(16).find(|&a| {
        byte(a) == b'_'
            && byte(a + 1) == b'M'
            && byte(a + 2) == b'P'
            && byte(a + 3) == b'_'
            && sum(a, 16) == 0
    })
}

fn u16_at(a: usize) -> u16 {
    u16::from_le_bytes([byte(a), byte(a + 1)])
}

fn u32_at(a: usize) -> u32 {
    u32::from_le_bytes([byte(a), byte(a + 1), byte(a + 2), byte(a + 3)])
}

/// Searches the standard places and parses the table.
pub fn find() -> Result<MpTable, String> {
    let ebda = usize::from(u16_at(0x40e)) << 4;
    let floating = (ebda != 0 && ebda < 0xa0000)
        .then(|| find_floating(ebda, ebda + 1024))
        .flatten()
        .or_else(|| find_floating(0x9fc00, 0xa0000))
        .or_else(|| find_floating(0xf0000, 0x100000))
        .ok_or_else(|| {
            String::from("no _MP_ floating pointer (checksummed) in EBDA, 0x9fc00 or 0xf0000")
        })?;
    let config = u32_at(floating + 4) as usize;
    if config == 0 || config >= 0x10_0000 {
        return Err(alloc::format!(
            "config table pointer {config:#x} not in low memory"
        ));
    }
    if [
        byte(config),
        byte(config + 1),
        byte(config + 2),
        byte(config + 3),
    ] != *b"PCMP"
    {
        return Err(alloc::format!("no PCMP signature at {config:#x}"));
    }
    let len = usize::from(u16_at(config + 4));
    if len < 44 || sum(config, len) != 0 {
        return Err(alloc::format!(
            "config table checksum/length bad (len {len})"
        ));
    }
    let count = usize::from(u16_at(config + 34));
    let lapic_addr = u32_at(config + 36);
    let mut at = config + 44;
    let end = config + len;
    let mut cpus = Vec::new();
    let mut ioapics = 0;
    for _ in 0..count {
        if at >= end {
            return Err(String::from("entry count runs past the table length"));
        }
        let size = match byte(at) {
            0 => {
                cpus.push(Cpu {
                    apic_id: byte(at + 1),
                    flags: byte(at + 3),
                });
                20
            }
            2 => {
                ioapics += 1;
                8
            }
            1 | 3 | 4 => 8,
            t => return Err(alloc::format!("unknown entry type {t}")),
        };
        at += size;
    }
    Ok(MpTable {
        floating_at: floating,
        cpus,
        ioapics,
        lapic_addr,
    })
}
