// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! virtio-blk (virtio 1.2 §5.2): a file-backed disk. [`request`] parses and executes one
//! request (pure with respect to the event loop); [`device`] holds the state, config space and
//! queue processing.

pub mod device;
pub mod request;

pub use device::{Block, BlockMetrics};
