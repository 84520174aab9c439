// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The `vmrun-vmm` binary.

fn main() {}
