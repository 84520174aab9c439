// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Logging to the console and to the host.
//!
//! Every record goes to stderr (the guest console, `/dev/console`) as one line
//! `vmrun-agent: LEVEL message`, and into a bounded queue that [`forward_to_host`] drains to a
//! vsock connection the guest opens to the host (CID 2, port 1025). The host listener is
//! optional: when the connection cannot be made the queue is dropped and the agent retries
//! later; a full queue drops lines rather than blocking the agent.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Lines queued for the host at most; further lines are dropped until the queue drains.
const QUEUE_LINES: usize = 1024;

/// How long to wait before retrying a failed connection to the host's log listener.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

struct Logger {
    level: log::LevelFilter,
    to_host: Option<mpsc::Sender<String>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!("vmrun-agent: {} {}\n", record.level(), record.args());
        // Console errors cannot be reported anywhere else; ignore them.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        if let Some(tx) = &self.to_host {
            let _ = tx.try_send(line);
        }
    }

    fn flush(&self) {}
}

/// Installs the logger. With `to_host`, returns the receiving end of the host queue, to be
/// passed to [`forward_to_host`].
pub fn init(level: log::LevelFilter, to_host: bool) -> Option<mpsc::Receiver<String>> {
    let (tx, rx) = if to_host {
        let (tx, rx) = mpsc::channel(QUEUE_LINES);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let logger = LOGGER.get_or_init(|| Logger { level, to_host: tx });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
    rx
}

/// Forwards queued log lines to the host on vsock CID 2, port [`vmrun_protocol::LOG_PORT`].
/// Runs until the logger is gone; never fails: without a listener on the host the lines are
/// discarded and the connection is retried at most every [`RETRY_INTERVAL`].
pub async fn forward_to_host(mut rx: mpsc::Receiver<String>) {
    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_HOST, vmrun_protocol::LOG_PORT);
    let mut conn: Option<tokio_vsock::VsockStream> = None;
    let mut last_attempt: Option<Instant> = None;
    while let Some(line) = rx.recv().await {
        if conn.is_none() && last_attempt.is_none_or(|t| t.elapsed() >= RETRY_INTERVAL) {
            last_attempt = Some(Instant::now());
            conn = tokio::time::timeout(
                Duration::from_secs(2),
                tokio_vsock::VsockStream::connect(addr),
            )
            .await
            .ok()
            .and_then(Result::ok);
        }
        if let Some(c) = conn.as_mut() {
            if AsyncWriteExt::write_all(c, line.as_bytes()).await.is_err() {
                conn = None;
            }
        }
    }
}
