// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! vmrun-agent: the guest agent, PID 1 inside every microVM.

fn main() {}
