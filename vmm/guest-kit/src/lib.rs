// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Support library for vmrun's freestanding guest test programs.
//!
//! The programs are loaded by `vmrun-vmm` through its ELF kernel path and, in test-payload mode,
//! entered at CPL 3 (see docs/testing.md). They therefore follow three rules: no privileged
//! instruction after the CPL check in `_start`, no interrupts (everything polls), and the end of
//! a run is a status byte on port 0xf4 followed by an i8042 reset.
//!
//! What lives here: the entry stub ([`entry`]), COM1 output ([`serial`], [`println!`]), exit and
//! panic handling ([`exit`]), the C memory functions ([`mem`]), a bump heap ([`heap`]), an
//! identity-mapped `Hal` for `virtio-drivers` ([`hal`]), boot_params/e820/command-line readers
//! ([`boot`], [`cmdline`]), the MP table parser ([`mptable`]), raw virtio-mmio registers and a
//! minimal split virtqueue for protocol and hostile-input tests ([`mmio`], [`rawq`]), a FUSE
//! client for virtio-fs ([`fuse`]), a PVH entry for QEMU ([`pvh`]), and the PASS/FAIL
//! bookkeeping ([`report`]).

#![no_std]

extern crate alloc;

pub mod arch;
pub mod boot;
pub mod cmdline;
pub mod entry;
pub mod exit;
pub mod fuse;
pub mod hal;
pub mod heap;
pub mod mem;
pub mod mmio;
pub mod mptable;
pub mod pattern;
pub mod pvh;
pub mod rawq;
pub mod report;
pub mod serial;
pub mod vsock;

pub use virtio_drivers;
