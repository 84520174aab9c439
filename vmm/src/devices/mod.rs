// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Emulated devices: the port/MMIO [`bus::Bus`], legacy PC devices and virtio-mmio devices.

pub mod bus;
pub mod irq;
pub mod legacy;
pub mod virtio;
