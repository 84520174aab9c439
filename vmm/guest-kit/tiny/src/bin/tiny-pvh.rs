// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! PVH guest (XEN_ELFNOTE_PHYS32_ENTRY): in 32-bit protected mode at CPL 0 it writes "T\n" to
//! COM1, then 0 to the exit port 0xf4 (`vmrun-vmm` exits 0, QEMU's isa-debug-exit 1), then
//! resets through the i8042 as a fallback. Used by the start-up benchmark on both VMMs.

#![no_std]
#![no_main]

use vmrun_guest_tiny as _;

core::arch::global_asm!(
    ".section .note.Xen,\"a\",@note",
    ".balign 4",
    ".long 4",
    ".long 4",
    ".long 18",
    ".asciz \"Xen\"",
    ".long pvh_start",
    ".section .text.tiny,\"ax\",@progbits",
    ".code32",
    ".global pvh_start",
    ".global _start",
    "_start:",
    "pvh_start:",
    "    mov dx, 0x3f8",
    "    mov al, 0x54",
    "    out dx, al",
    "    mov al, 0x0a",
    "    out dx, al",
    "    xor eax, eax",
    "    out 0xf4, al",
    "    mov al, 0xfe",
    "    out 0x64, al",
    "2:",
    "    hlt",
    "    jmp 2b",
    ".code64",
);
