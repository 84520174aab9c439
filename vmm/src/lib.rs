// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! vmrun-vmm: a KVM virtual machine monitor, one process per microVM.
//!
//! The crate is a library plus the `vmrun-vmm` binary. A [`config::VmConfig`] (built from the
//! command line or read from JSON) is turned into a running VM by [`builder::build_vm`], in the
//! boot order documented there. At run time there is one event-loop thread (device back-ends,
//! queue notifications, the API socket, stdin) and one thread per vCPU; port and MMIO exits are
//! handled on the vCPU thread through a [`devices::bus::Bus`].
//!
//! Trust boundary: everything the guest writes (registers, descriptors, packets, sectors) is
//! hostile input; it is bounds-checked and a malformed request fails only that request.

pub mod api;
pub mod boot;
pub mod builder;
pub mod config;
pub mod devices;
pub mod exit_code;
pub mod hardening;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod seccomp;
pub mod vstate;
