// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! virtio-mmio devices.

use std::path::PathBuf;

use crate::builder::{BuildContext, BuildError};
use crate::config::VmConfig;

/// Creates the configured virtio devices.
pub fn add_devices(
    cfg: &VmConfig,
    _ctx: &mut BuildContext<'_>,
    _cleanup: &mut Vec<PathBuf>,
) -> Result<(), BuildError> {
    if cfg.virtio_device_count() > 0 {
        return Err(BuildError::Device {
            name: "virtio".into(),
            source: std::io::Error::other("virtio devices are not implemented yet"),
        });
    }
    Ok(())
}
