// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `bench-pvh`: the same program as `bench` with a PVH entry ([`vmrun_guest_kit::pvh`]), so
//! that QEMU's `-kernel` boots it and `bench-vmm` can measure QEMU's vhost-user-fs-device with
//! the very code that measures `vmrun-vmm`.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "bench/prog.rs"]
mod prog;

vmrun_guest_kit::pvh_entry!();
vmrun_guest_kit::kit_main!(prog::run);
