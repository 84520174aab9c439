// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Architecture boot code: kernel loading and the initial machine state.

pub mod x86_64;
