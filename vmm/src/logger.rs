// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! A minimal stderr logger and the rate limiter used for guest-triggerable log lines.
//!
//! The log level comes from `VMRUN_VMM_LOG` (`error`, `warn`, `info`, `debug`, `trace`;
//! default `warn`). Messages that a guest can provoke go through [`warn_ratelimited!`] so a
//! hostile guest cannot flood the host's logs.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Logger writing `vmrun-vmm: LEVEL: message` lines to stderr.
#[derive(Debug)]
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // Other crates (virtio-queue, vm-memory) log guest-triggerable problems without a rate
        // limit; show them only when debugging.
        let level = if metadata.target().starts_with("vmrun_vmm") {
            metadata.level()
        } else {
            metadata.level().max(log::Level::Debug)
        };
        level <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let mut err = std::io::stderr().lock();
            // Logging must never fail the VMM; a closed stderr just loses the line.
            let _ = writeln!(err, "vmrun-vmm: {}: {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the stderr logger with the level from `VMRUN_VMM_LOG`. Calling it twice is harmless.
pub fn init() {
    let level = match std::env::var("VMRUN_VMM_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("info") => log::LevelFilter::Info,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Per-call-site token bucket: at most [`RateLimiter::BURST`] messages per
/// [`RateLimiter::WINDOW_SECS`] seconds.
#[derive(Debug)]
pub struct RateLimiter {
    /// Start of the current window, in seconds since the epoch.
    window_start: AtomicU64,
    /// Messages let through in the current window.
    count: AtomicU64,
    /// Messages suppressed since the last one let through.
    suppressed: AtomicU64,
}

impl RateLimiter {
    /// Messages allowed per window.
    pub const BURST: u64 = 10;
    /// Window length in seconds.
    pub const WINDOW_SECS: u64 = 5;

    /// A limiter with an empty window.
    pub const fn new() -> Self {
        Self {
            window_start: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns `Some(suppressed)` (messages dropped since the last allowed one) when a message
    /// may be logged now, `None` when it must be dropped.
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= Self::WINDOW_SECS {
            self.window_start.store(now, Ordering::Relaxed);
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < Self::BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// `warn!` with a per-call-site rate limit, for paths a guest can trigger.
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)*) => {{
        static LIMITER: $crate::logger::RateLimiter = $crate::logger::RateLimiter::new();
        if let Some(suppressed) = LIMITER.allow() {
            if suppressed > 0 {
                log::warn!("{} ({} similar messages suppressed)", format_args!($($arg)*), suppressed);
            } else {
                log::warn!($($arg)*);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_suppresses() {
        let l = RateLimiter::new();
        for _ in 0..RateLimiter::BURST {
            assert!(l.allow().is_some());
        }
        assert!(l.allow().is_none());
        assert!(l.allow().is_none());
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 2);
    }
}
