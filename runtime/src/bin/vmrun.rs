// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! `vmrun`: the runc-compatible OCI runtime CLI.

fn main() {}
