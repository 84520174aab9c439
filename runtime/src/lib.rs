// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The sandbox library shared by the `vmrun` CLI and the containerd shim.

pub mod cli;
pub mod monitor;
pub mod oci;
pub mod state;
pub mod stdio;

pub mod agent_client;
pub mod cgroups;
pub mod check;
pub mod config;
pub mod hypervisor;
pub mod network;
pub mod sandbox;
pub mod virtiofs;
pub mod vsock;
