// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! 64-bit Linux boot protocol guest (no PVH note, entered at CPL 0 like a vmlinux): writes
//! "OK\n" to COM1 and resets through the i8042, so `vmrun-vmm` exits 0.

#![no_std]
#![no_main]

use vmrun_guest_tiny as _;

core::arch::global_asm!(
    ".section .text.tiny,\"ax\",@progbits",
    ".code64",
    ".global _start",
    "_start:",
    "    mov dx, 0x3f8",
    "    mov al, 0x4f",
    "    out dx, al",
    "    mov al, 0x4b",
    "    out dx, al",
    "    mov al, 0x0a",
    "    out dx, al",
    "    mov al, 0xfe",
    "    out 0x64, al",
    "2:",
    "    pause",
    "    jmp 2b",
);
