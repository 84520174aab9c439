// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Reading the Linux zero page (`struct boot_params`, Documentation/arch/x86/zero-page.rst)
//! the VMM passed in `rsi`: the command line and the e820 map.

/// Offset of `e820_entries` (u8).
pub const E820_ENTRIES: usize = 0x1e8;
/// Offset of `hdr.boot_flag` (u16, 0xAA55).
pub const BOOT_FLAG: usize = 0x1fe;
/// Offset of `hdr.header` (u32, "HdrS").
pub const HEADER: usize = 0x202;
/// Offset of `hdr.cmd_line_ptr` (u32).
pub const CMD_LINE_PTR: usize = 0x228;
/// Offset of `hdr.cmdline_size` (u32).
pub const CMDLINE_SIZE: usize = 0x238;
/// Offset of `ext_cmd_line_ptr` (u32, high half of the command-line address).
pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
/// Offset of `e820_table` (128 entries of 20 bytes).
pub const E820_TABLE: usize = 0x2d0;
/// Maximum e820 entries in the zero page.
pub const E820_MAX: usize = 128;
/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// `hdr.header` magic.
pub const HDRS_MAGIC: u32 = 0x5372_6448;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type (1 = RAM).
    pub kind: u32,
}

/// A view of the zero page at a guest-physical (= virtual) address.
#[derive(Debug, Clone, Copy)]
pub struct BootParams {
    base: usize,
}

fn read<T: Copy>(addr: usize) -> T {
    // SAFETY: callers only read inside the 4 KiB zero page or the command line, identity-mapped
    // guest RAM that nothing writes concurrently; unaligned reads are used for packed fields.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

impl BootParams {
    /// Wraps the address from `rsi`; `None` if it is null or not page-aligned RAM-looking.
    pub fn new(addr: u64) -> Option<Self> {
        let base = usize::try_from(addr).ok()?;
        (base != 0 && base % 16 == 0).then_some(Self { base })
    }

    /// The zero page's address.
    pub fn address(&self) -> usize {
        self.base
    }

    /// `hdr.boot_flag`.
    pub fn boot_flag(&self) -> u16 {
        read(self.base + BOOT_FLAG)
    }

    /// `hdr.header`.
    pub fn header_magic(&self) -> u32 {
        read(self.base + HEADER)
    }

    /// The command-line address (`cmd_line_ptr` | `ext_cmd_line_ptr` << 32).
    pub fn cmdline_ptr(&self) -> u64 {
        let lo: u32 = read(self.base + CMD_LINE_PTR);
        let hi: u32 = read(self.base + EXT_CMD_LINE_PTR);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// `hdr.cmdline_size`.
    pub fn cmdline_size(&self) -> u32 {
        read(self.base + CMDLINE_SIZE)
    }

    /// The command line up to its NUL (at most 4096 bytes), or `None` without a pointer.
    pub fn cmdline(&self) -> Option<&'static str> {
        let ptr = usize::try_from(self.cmdline_ptr())
            .ok()
            .filter(|p| *p != 0)?;
        let mut len = 0;
        while len < 4096 && read::<u8>(ptr + len) != 0 {
            len += 1;
        }
        // SAFETY: [ptr, ptr+len) is identity-mapped guest RAM the VMM filled and nothing writes.
        let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len) };
        core::str::from_utf8(bytes).ok()
    }

    /// The e820 entries (count clamped to [`E820_MAX`]).
    pub fn e820(&self) -> impl Iterator<Item = E820Entry> + '_ {
        let n = usize::from(read::<u8>(self.base + E820_ENTRIES)).min(E820_MAX);
        (0..n).map(move |i| {
            let e = self.base + E820_TABLE + i * 20;
            E820Entry {
                addr: read(e),
                size: read(e + 8),
                kind: read(e + 16),
            }
        })
    }

    /// The number of e820 entries as stored.
    pub fn e820_count(&self) -> u8 {
        read(self.base + E820_ENTRIES)
    }

    /// Whether `[start, end)` lies inside one usable-RAM e820 entry.
    pub fn ram_covers(&self, start: u64, end: u64) -> bool {
        self.e820()
            .any(|e| e.kind == E820_RAM && e.addr <= start && e.addr.saturating_add(e.size) >= end)
    }
}
