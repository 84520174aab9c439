// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Legacy PC devices on the port-I/O bus: COM1, the i8042 (reset only) and the exit-status
//! port.

pub mod exit_port;
pub mod i8042;
pub mod serial;

/// COM1 base port.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1 port count.
pub const COM1_LEN: u64 = 8;
/// COM1 interrupt (GSI).
pub const COM1_GSI: u32 = 4;
/// i8042 base port (data at 0x60, command/status at 0x64).
pub const I8042_PORT: u64 = 0x60;
/// i8042 port count.
pub const I8042_LEN: u64 = 5;
/// The exit-status port (like QEMU's `isa-debug-exit`).
pub const EXIT_PORT: u64 = 0xf4;
