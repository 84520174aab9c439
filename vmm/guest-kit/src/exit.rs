// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Ending a run: the exit-status port 0xf4 (`vmrun-vmm` exits with the byte written; QEMU's
//! `isa-debug-exit` with `(v << 1) | 1`), then an i8042 reset (port 0x64 <- 0xFE) for VMMs
//! without that port, then a `pause` loop (never `hlt`: privileged at CPL 3).

use crate::arch::outb;

/// Exit-status port (`isa-debug-exit` compatible).
pub const EXIT_PORT: u16 = 0xf4;
/// i8042 command port; writing [`I8042_RESET`] pulses the CPU reset line.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// i8042 "pulse output line 0" command: CPU reset.
pub const I8042_RESET: u8 = 0xfe;

/// Writes `code` to the exit port, then resets; never returns.
pub fn exit(code: u8) -> ! {
    outb(EXIT_PORT, code);
    reset()
}

/// Resets through the i8042 only (the VMM exits 0); never returns.
pub fn reset() -> ! {
    outb(I8042_COMMAND_PORT, I8042_RESET);
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("FAIL panic: {}", info);
    exit(1)
}
