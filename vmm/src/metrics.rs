// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Counters: vCPU exits per kind and per-device counters, reported by the API's `metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// vCPU exits, by kind (summed over vCPUs).
#[derive(Debug, Default)]
pub struct ExitMetrics {
    /// `KVM_EXIT_IO` reads.
    pub io_in: Counter,
    /// `KVM_EXIT_IO` writes.
    pub io_out: Counter,
    /// `KVM_EXIT_MMIO` reads.
    pub mmio_read: Counter,
    /// `KVM_EXIT_MMIO` writes.
    pub mmio_write: Counter,
    /// `KVM_EXIT_HLT`.
    pub hlt: Counter,
    /// `KVM_EXIT_SHUTDOWN`.
    pub shutdown: Counter,
    /// `KVM_EXIT_INTERNAL_ERROR`.
    pub internal_error: Counter,
    /// `KVM_EXIT_FAIL_ENTRY`.
    pub fail_entry: Counter,
    /// `KVM_EXIT_SYSTEM_EVENT`.
    pub system_event: Counter,
    /// `KVM_RUN` interrupted by a signal (kicks for pause/stop).
    pub interrupted: Counter,
    /// Anything else.
    pub other: Counter,
    /// Port accesses no device claims.
    pub pio_unhandled: Counter,
    /// MMIO accesses no device claims.
    pub mmio_unhandled: Counter,
}

impl ExitMetrics {
    /// JSON object of all counters.
    pub fn to_json(&self) -> Value {
        json!({
            "io_in": self.io_in.get(),
            "io_out": self.io_out.get(),
            "mmio_read": self.mmio_read.get(),
            "mmio_write": self.mmio_write.get(),
            "hlt": self.hlt.get(),
            "shutdown": self.shutdown.get(),
            "internal_error": self.internal_error.get(),
            "fail_entry": self.fail_entry.get(),
            "system_event": self.system_event.get(),
            "interrupted": self.interrupted.get(),
            "other": self.other.get(),
            "pio_unhandled": self.pio_unhandled.get(),
            "mmio_unhandled": self.mmio_unhandled.get(),
        })
    }
}

/// Something with counters to report.
pub trait MetricsSource: Send + Sync {
    /// A JSON object of counter name → value.
    fn snapshot(&self) -> Value;
}

/// All counters of one VMM.
#[derive(Default)]
pub struct VmmMetrics {
    /// vCPU exits.
    pub exits: ExitMetrics,
    devices: Mutex<Vec<(String, Arc<dyn MetricsSource>)>>,
}

impl std::fmt::Debug for VmmMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmMetrics")
            .field("exits", &self.exits)
            .finish_non_exhaustive()
    }
}

impl VmmMetrics {
    /// Registers a device's counters under `name`.
    pub fn register(&self, name: String, source: Arc<dyn MetricsSource>) {
        crate::devices::bus::lock(&self.devices).push((name, source));
    }

    /// Exits, devices and the process's resident set size.
    pub fn to_json(&self) -> Value {
        let mut devices = Map::new();
        for (name, src) in crate::devices::bus::lock(&self.devices).iter() {
            devices.insert(name.clone(), src.snapshot());
        }
        json!({
            "exits": self.exits.to_json(),
            "devices": devices,
            "rss_bytes": rss_bytes(),
        })
    }
}

/// The process's resident set size in bytes (from `/proc/self/statm`), 0 if unknown.
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.saturating_mul(u64::try_from(page).unwrap_or(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl MetricsSource for Fixed {
        fn snapshot(&self) -> Value {
            json!({"requests": 7})
        }
    }

    #[test]
    fn json_has_exits_devices_and_rss() {
        let m = VmmMetrics::default();
        m.exits.io_out.inc();
        m.exits.io_out.add(2);
        m.register("blk0".into(), Arc::new(Fixed));
        let v = m.to_json();
        assert_eq!(v["exits"]["io_out"], 3);
        assert_eq!(v["devices"]["blk0"]["requests"], 7);
        assert!(v["rss_bytes"].as_u64().unwrap() > 0);
    }
}
