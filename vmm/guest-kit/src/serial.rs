// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! COM1 output by polling the line status register (no interrupts). Each port access is a VM
//! exit (~30 µs under PVM), so programs keep their output terse.

use crate::arch::{inb, outb};
use core::fmt;

/// COM1 base port.
pub const COM1: u16 = 0x3f8;
/// Line status register offset.
pub const LSR: u16 = 5;
/// LSR bit: transmitter holding register empty.
pub const LSR_THRE: u8 = 0x20;

/// Writes one byte, waiting (bounded) for the transmitter to be empty.
pub fn write_byte(b: u8) {
    for _ in 0..1000 {
        if inb(COM1 + LSR) & LSR_THRE != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(COM1, b);
}

/// A `fmt::Write` sink for COM1.
#[derive(Debug)]
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            write_byte(b);
        }
        Ok(())
    }
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::serial::Serial, format_args!($($arg)*));
    }};
}

/// Prints a line to COM1.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::serial::write_byte(b'\n');
    }};
}
