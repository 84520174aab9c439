// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! vmrun-vmm: a KVM virtual machine monitor, one process per microVM.
