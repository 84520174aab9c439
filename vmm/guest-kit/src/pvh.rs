// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! A PVH entry point, for VMMs whose `-kernel` takes only PVH ELF images or bzImages (QEMU).
//!
//! [`crate::pvh_entry!`] adds to a program the `XEN_ELFNOTE_PHYS32_ENTRY` note and a 32-bit
//! trampoline: PVH enters it in flat 32-bit protected mode at CPL 0 with paging off and `ebx`
//! pointing at `struct hvm_start_info`. The trampoline identity-maps the first 4 GiB with
//! 2 MiB pages (so the virtio-mmio windows below 4 GiB are reachable), enables PAE, long mode
//! and SSE, loads a 64-bit GDT, and from 64-bit code calls [`pvh_boot_params`], which copies
//! the command line pointer and the memory map into a zero page. Then it jumps to `_start`
//! with that zero page in `rsi`, exactly as the 64-bit boot protocol would.
//!
//! Only programs that invoke the macro carry the note: `vmrun-vmm` boots a PVH image through
//! the PVH entry (CPL 0), and the kit's normal programs must stay on the 64-bit entry, which
//! `vmrun-vmm` can enter at CPL 3 under PVM. The page tables go to `.pvh.tables`, which the
//! linker script places after the stack, outside the range `_start` zeroes.

use crate::boot::{
    BOOT_FLAG, CMD_LINE_PTR, CMDLINE_SIZE, E820_ENTRIES, E820_MAX, E820_TABLE, EXT_CMD_LINE_PTR,
    HDRS_MAGIC, HEADER,
};
use core::cell::UnsafeCell;

/// `hvm_start_info.magic` ("xEn3" with the top bit set).
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Offset of `hvm_start_info.version` (u32).
const SI_VERSION: usize = 0x04;
/// Offset of `hvm_start_info.cmdline_paddr` (u64).
const SI_CMDLINE: usize = 0x18;
/// Offset of `hvm_start_info.memmap_paddr` (u64, version 1).
const SI_MEMMAP: usize = 0x28;
/// Offset of `hvm_start_info.memmap_entries` (u32, version 1).
const SI_MEMMAP_ENTRIES: usize = 0x30;
/// Size of one `hvm_memmap_table_entry` (addr u64, size u64, type u32, reserved u32).
const MEMMAP_ENTRY: usize = 24;

/// The zero page [`pvh_boot_params`] fills; in `.data` (not `.bss`), so that `_start`'s
/// zeroing of `.bss` leaves it alone.
#[repr(C, align(4096))]
struct ZeroPage(UnsafeCell<[u8; 4096]>);

// SAFETY: written once by the single vCPU before anything else runs, read-only afterwards.
unsafe impl Sync for ZeroPage {}

#[unsafe(link_section = ".data.pvh_zero_page")]
static ZERO_PAGE: ZeroPage = ZeroPage(UnsafeCell::new([0; 4096]));

fn read<T: Copy>(addr: usize) -> T {
    // SAFETY: only called on the start-info structure and memory map that the VMM placed in
    // identity-mapped guest RAM; unaligned reads because the layout is packed C.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

fn put<T: Copy>(page: &mut [u8; 4096], offset: usize, value: T) {
    let end = offset + core::mem::size_of::<T>();
    assert!(end <= page.len(), "zero page field out of range");
    // SAFETY: [offset, end) lies inside `page` (checked above); unaligned write of a POD.
    unsafe { core::ptr::write_unaligned(page.as_mut_ptr().add(offset).cast::<T>(), value) }
}

/// Builds a zero page from the `hvm_start_info` at `start_info`; returns its address, or 0 if
/// `start_info` does not carry the PVH magic (the program then runs without a command line).
///
/// Called once by the PVH trampoline, in 64-bit mode with SSE on and `.bss` not yet zeroed.
#[unsafe(no_mangle)]
pub extern "C" fn pvh_boot_params(start_info: u64) -> u64 {
    let Ok(si) = usize::try_from(start_info) else {
        return 0;
    };
    if si == 0 || read::<u32>(si) != START_INFO_MAGIC {
        return 0;
    }
    // SAFETY: the only reference to the zero page, made before anything else can read it.
    let page = unsafe { &mut *ZERO_PAGE.0.get() };
    put(page, BOOT_FLAG, 0xaa55u16);
    put(page, HEADER, HDRS_MAGIC);
    let cmdline: u64 = read(si + SI_CMDLINE);
    put(page, CMD_LINE_PTR, (cmdline & 0xffff_ffff) as u32);
    put(page, EXT_CMD_LINE_PTR, (cmdline >> 32) as u32);
    put(page, CMDLINE_SIZE, 4096u32);
    if read::<u32>(si + SI_VERSION) >= 1 {
        let map = usize::try_from(read::<u64>(si + SI_MEMMAP)).unwrap_or(0);
        let n = usize::try_from(read::<u32>(si + SI_MEMMAP_ENTRIES)).unwrap_or(0);
        let n = if map == 0 { 0 } else { n.min(E820_MAX) };
        for i in 0..n {
            let e = map + i * MEMMAP_ENTRY;
            let slot = E820_TABLE + i * 20;
            put(page, slot, read::<u64>(e));
            put(page, slot + 8, read::<u64>(e + 8));
            put(page, slot + 16, read::<u32>(e + 16));
        }
        // n <= E820_MAX (128).
        put(page, E820_ENTRIES, n as u8);
    }
    page.as_ptr() as u64
}

/// Gives the program a PVH entry (see the module documentation). Invoke once, at the crate
/// root of a program that must boot on QEMU's `-kernel`.
#[macro_export]
macro_rules! pvh_entry {
    () => {
        core::arch::global_asm!(
            // XEN_ELFNOTE_PHYS32_ENTRY (18): name "Xen", a 32-bit physical entry address.
            ".pushsection .note.Xen,\"a\",@note",
            ".balign 4",
            ".long 4",
            ".long 4",
            ".long 18",
            ".asciz \"Xen\"",
            ".long pvh_start32",
            ".popsection",
            ".pushsection .pvh.tables,\"aw\",@nobits",
            ".balign 4096",
            // PML4, PDPT, four page directories.
            "pvh_tables:",
            ".skip 6 * 4096",
            ".popsection",
            ".pushsection .text.pvh,\"ax\",@progbits",
            ".balign 8",
            "pvh_gdt:",
            ".quad 0",
            ".quad 0x00af9a000000ffff",
            ".quad 0x00cf92000000ffff",
            "pvh_gdt_desc:",
            ".word 23",
            ".long pvh_gdt",
            ".code32",
            "pvh_start32:",
            "cli",
            "cld",
            "movl $__stack_top, %esp",
            "movl %ebx, %ebp",
            "movl $pvh_tables, %edi",
            "xorl %eax, %eax",
            "movl $(6 * 1024), %ecx",
            "rep stosl",
            "movl $(pvh_tables + 0x1003), pvh_tables",
            "movl $(pvh_tables + 0x1000), %edi",
            "movl $(pvh_tables + 0x2003), %eax",
            "movl $4, %ecx",
            "1:",
            "movl %eax, (%edi)",
            "addl $0x1000, %eax",
            "addl $8, %edi",
            "loop 1b",
            "movl $(pvh_tables + 0x2000), %edi",
            "movl $0x83, %eax",
            "movl $2048, %ecx",
            "2:",
            "movl %eax, (%edi)",
            "addl $0x200000, %eax",
            "addl $8, %edi",
            "loop 2b",
            // CR4: PAE, OSFXSR, OSXMMEXCPT.
            "movl %cr4, %eax",
            "orl $0x620, %eax",
            "movl %eax, %cr4",
            "movl $pvh_tables, %eax",
            "movl %eax, %cr3",
            // EFER.LME.
            "movl $0xc0000080, %ecx",
            "rdmsr",
            "orl $0x100, %eax",
            "wrmsr",
            // CR0: PG and MP on, EM off.
            "movl %cr0, %eax",
            "andl $~4, %eax",
            "orl $0x80000002, %eax",
            "movl %eax, %cr0",
            "lgdt pvh_gdt_desc",
            "ljmpl $0x08, $3f",
            ".code64",
            "3:",
            "movw $0x10, %ax",
            "movw %ax, %ds",
            "movw %ax, %es",
            "movw %ax, %ss",
            "movl %ebp, %edi",
            "call pvh_boot_params",
            "movq %rax, %rsi",
            "jmp _start",
            ".popsection",
            options(att_syntax)
        );
    };
}
