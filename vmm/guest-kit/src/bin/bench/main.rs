// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `bench`: the kit's in-guest measurements (see `prog.rs`), entered through the 64-bit boot
//! protocol like every kit program.

#![no_std]
#![no_main]

extern crate alloc;

mod prog;

vmrun_guest_kit::kit_main!(prog::run);
