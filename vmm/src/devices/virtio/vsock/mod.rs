// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! virtio-vsock (virtio 1.2 §5.10) with a Firecracker-compatible hybrid Unix-socket back-end.
//!
//! * Host-initiated: the host connects to the VMM's Unix socket and writes `CONNECT <port>\n`;
//!   the muxer sends a REQUEST to the guest and, on RESPONSE, answers `OK <hostport>\n`
//!   (hostport is the host-side vsock port, from 2^30 up). If the guest refuses (RST), the
//!   Unix connection is closed.
//! * Guest-initiated: a REQUEST to CID 2 port P is forwarded by connecting to `<uds>_P`; the
//!   guest gets RESPONSE, or RST if nobody listens there.
//!
//! Flow control: each connection buffers at most [`connection::BUF_ALLOC`] bytes from the
//! guest (its advertised credit); host data is read only as far as the guest's credit and RX
//! buffers allow. In a nutshell, on a TX queue event the device drains the TX queue into the
//! muxer; then, and on RX queue events and back-end socket events, it fills RX buffers with
//! pending control packets first and then with data from readable connections.
//!
//! [`packet`] parses headers (pure), [`connection`] holds per-connection state and credit,
//! [`muxer`] owns the sockets, [`device`] the queues.

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;

pub use device::{Vsock, VsockMetrics};
