// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The API socket: one JSON request per connection over a Unix stream socket (mode 0600).
//!
//! Request: one line `{"command": "pause" | "resume" | "stop" | "metrics"}`.
//! Response: one line `{"ok": true, ...}` or `{"ok": false, "error": "..."}`; `metrics` adds a
//! `"metrics"` object (exits per kind, per-device counters, `rss_bytes`). `stop` is a forced
//! stop: the VMM exits with status 254 without telling the guest.
//!
//! Served on the event-loop thread; a client gets one second to send its request.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::devices::virtio::DeviceRegistry;
use crate::metrics::VmmMetrics;
use crate::vstate::{StopReason, VmControl};

/// A request.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum ApiRequest {
    /// Park every vCPU.
    Pause,
    /// Resume the vCPUs.
    Resume,
    /// Forced stop (exit status 254).
    Stop,
    /// Report counters.
    Metrics,
    /// The device state of every virtio device (see docs/vmm.md).
    Snapshot,
}

/// The API server (an event-loop subscriber).
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    control: Arc<VmControl>,
    metrics: Arc<VmmMetrics>,
    devices: Arc<DeviceRegistry>,
}

impl ApiServer {
    /// Binds `path` (replacing a stale socket file) with mode 0600.
    pub fn bind(
        path: &Path,
        control: Arc<VmControl>,
        metrics: Arc<VmmMetrics>,
        devices: Arc<DeviceRegistry>,
    ) -> std::io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                std::fs::remove_file(path)?;
            }
        }
        // Create the socket file with mode 0600 already (the build is single-threaded, so the
        // process-wide umask is safe to change here): a client must never see a wider mode.
        // SAFETY: umask only swaps the process's file-mode mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above; restores the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            control,
            metrics,
            devices,
        })
    }

    /// Executes one request.
    pub fn handle(&self, req: &ApiRequest) -> Value {
        let result = match req {
            ApiRequest::Pause => self.control.pause().map(|()| json!({})),
            ApiRequest::Resume => self.control.resume().map(|()| json!({})),
            ApiRequest::Stop => {
                self.control.request_stop(StopReason::ApiStop);
                Ok(json!({}))
            }
            ApiRequest::Metrics => Ok(json!({ "metrics": self.metrics.to_json() })),
            ApiRequest::Snapshot => Ok(json!({ "devices": self.devices.snapshot() })),
        };
        match result {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        }
    }

    fn serve(&self, stream: UnixStream) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        let mut line = String::new();
        BufReader::new(&stream).take_line(&mut line)?;
        let resp = match serde_json::from_str::<ApiRequest>(line.trim()) {
            Ok(req) => self.handle(&req),
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        (&stream).write_all(&out)
    }
}

/// Reads one line of at most 4 KiB.
trait TakeLine {
    fn take_line(self, out: &mut String) -> std::io::Result<usize>;
}

impl<R: std::io::Read> TakeLine for BufReader<R> {
    fn take_line(self, out: &mut String) -> std::io::Result<usize> {
        let mut limited = BufReader::new(std::io::Read::take(self, 4096));
        limited.read_line(out)
    }
}

impl MutEventSubscriber for ApiServer {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.serve(stream) {
                        log::warn!("API client: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::warn!("API accept: {e}");
                    break;
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.listener.as_raw_fd(), EventSet::IN)) {
            log::error!("cannot watch the API socket: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(
            serde_json::from_str::<ApiRequest>(r#"{"command":"pause"}"#).unwrap(),
            ApiRequest::Pause
        );
        assert!(serde_json::from_str::<ApiRequest>(r#"{"command":"reboot"}"#).is_err());
    }

    #[test]
    fn socket_round_trip_and_mode() {
        let dir = std::env::temp_dir().join(format!("vmrun-api-{}", std::process::id()));
        let control = Arc::new(VmControl::new(1).unwrap());
        let metrics = Arc::new(VmmMetrics::default());
        let srv = ApiServer::bind(&dir, control.clone(), metrics, Arc::default()).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let client = std::thread::spawn({
            let dir = dir.clone();
            move || {
                let mut s = UnixStream::connect(&dir).unwrap();
                s.write_all(b"{\"command\":\"metrics\"}\n").unwrap();
                let mut resp = String::new();
                BufReader::new(s).read_line(&mut resp).unwrap();
                resp
            }
        });
        let (stream, _) = loop {
            match srv.listener.accept() {
                Ok(c) => break c,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        srv.serve(stream).unwrap();
        let resp: Value = serde_json::from_str(&client.join().unwrap()).unwrap();
        assert_eq!(resp["ok"], true);
        assert!(resp["metrics"]["exits"].is_object());
        let v = srv.handle(&ApiRequest::Stop);
        assert_eq!(v["ok"], true);
        assert_eq!(control.stop_reason(), Some(&StopReason::ApiStop));
        let v = srv.handle(&ApiRequest::Pause);
        assert_eq!(v["ok"], false);
        std::fs::remove_file(&dir).unwrap();
    }
}
