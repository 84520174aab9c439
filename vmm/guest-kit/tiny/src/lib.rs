// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Assembly-only guests: a PVH guest (32-bit entry through the Xen PVH ELF note, CPL 0) and a
//! 64-bit-boot-protocol guest. Each runs a handful of instructions, because under PVM a CPL-0
//! guest is emulated instruction by instruction.

#![no_std]

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Referenced by the precompiled libcore; never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
