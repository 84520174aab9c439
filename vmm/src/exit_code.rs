// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Process exit statuses of `vmrun-vmm` (also documented in `docs/vmm.md`).
//!
//! A guest can make the VMM exit with any byte through the exit-status port (0xf4), so a status
//! alone cannot always tell a guest-chosen code from a VMM failure; every VMM-chosen non-zero
//! status is accompanied by a one-line message on stderr.

/// The guest reset the machine through the i8042 (port 0x64 <- 0xfe), or every vCPU halted.
pub const RESET: i32 = 0;
/// Command-line usage error (clap's convention).
pub const USAGE: i32 = 2;
/// The VM could not be built or started (configuration, `/dev/kvm`, kernel, memory).
pub const START_FAILED: i32 = 250;
/// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
pub const TRIPLE_FAULT: i32 = 251;
/// KVM reported an internal error, a failed VM entry or an exit the VMM cannot handle.
pub const KVM_ERROR: i32 = 252;
/// A vCPU thread failed (a `KVM_RUN` or register ioctl error, or a device bus error).
pub const VCPU_FAILED: i32 = 253;
/// The VM was stopped by the API socket's `stop` command.
pub const API_STOP: i32 = 254;
