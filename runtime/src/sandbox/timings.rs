// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Per-step timings of a container's life (`vmrun run`), for benchmarks.
//!
//! The sandbox and the monitor record how long each step took, in order. With
//! `VMRUN_TIMINGS=FILE` in the environment the monitor writes them, when the container is gone,
//! as one JSON object to FILE (replacing it); at `--debug` it also logs the same object:
//!
//! ```json
//! {"id": "c1", "steps": [{"step": "sandbox.hypervisor_spawn", "kind": "host", "us": 1234}, ...]}
//! ```
//!
//! `kind` is `host` (work done by vmrun on the host: state store, daemons, spawning, rootfs
//! share, stdio streams, teardown), `boot` (hypervisor exec until the agent answered Version:
//! guest boot, plus the host's connect attempts while the agent is not up yet) or `guest` (agent
//! RPCs that set up the sandbox and create, start and wait for the container in the guest; each
//! includes its vsock round trip).

use std::path::Path;
use std::time::{Duration, Instant};

/// The environment variable naming the file the timings are written to.
pub const TIMINGS_ENV: &str = "VMRUN_TIMINGS";

/// What a step's time is spent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Host-side work of vmrun.
    Host,
    /// Guest boot to agent ready.
    Boot,
    /// Agent RPCs: sandbox setup and the container's create, start and run in the guest.
    Guest,
}

impl StepKind {
    /// The name used in the JSON object.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Boot => "boot",
            Self::Guest => "guest",
        }
    }
}

/// One measured step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Dotted step name, e.g. `sandbox.virtiofsd_spawn`.
    pub name: &'static str,
    /// What the time is spent on.
    pub kind: StepKind,
    /// How long it took.
    pub duration: Duration,
}

/// Steps in the order they happened.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    steps: Vec<Step>,
}

impl Timings {
    /// No steps yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a step that began at `since` and ends now; returns now (the next step's start).
    pub fn record(&mut self, name: &'static str, kind: StepKind, since: Instant) -> Instant {
        let now = Instant::now();
        self.steps.push(Step {
            name,
            kind,
            duration: now.saturating_duration_since(since),
        });
        now
    }

    /// Appends another's steps (the sandbox's, to the monitor's).
    pub fn extend(&mut self, other: &Self) {
        self.steps.extend(other.steps.iter().cloned());
    }

    /// The recorded steps.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The JSON object described in the module docs.
    pub fn to_json(&self, id: &str) -> serde_json::Value {
        let steps: Vec<_> = self
            .steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "step": s.name,
                    "kind": s.kind.as_str(),
                    "us": u64::try_from(s.duration.as_micros()).unwrap_or(u64::MAX),
                })
            })
            .collect();
        serde_json::json!({ "id": id, "steps": steps })
    }

    /// Logs the object at debug level and writes it to `$VMRUN_TIMINGS` if that is set. A write
    /// failure is logged, never fatal: timings are diagnostics.
    pub fn report(&self, id: &str) {
        let json = self.to_json(id);
        log::debug!("container {id}: timings {json}");
        if let Some(path) = std::env::var_os(TIMINGS_ENV).filter(|p| !p.is_empty()) {
            if let Err(e) = write_file(Path::new(&path), &json) {
                log::warn!(
                    "container {id}: cannot write timings to {}: {e}",
                    Path::new(&path).display()
                );
            }
        }
    }
}

fn write_file(path: &Path, json: &serde_json::Value) -> std::io::Result<()> {
    let mut text = json.to_string();
    text.push('\n');
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_recorded_in_order_and_serialized() {
        let mut t = Timings::new();
        let start = Instant::now() - Duration::from_millis(5);
        let next = t.record("a", StepKind::Host, start);
        let mut inner = Timings::new();
        inner.record("b", StepKind::Boot, next);
        t.extend(&inner);
        assert_eq!(t.steps().len(), 2);
        assert!(t.steps()[0].duration >= Duration::from_millis(5));
        let j = t.to_json("c1");
        assert_eq!(j["id"], "c1");
        assert_eq!(j["steps"][0]["step"], "a");
        assert_eq!(j["steps"][0]["kind"], "host");
        assert_eq!(j["steps"][1]["kind"], "boot");
        assert!(j["steps"][0]["us"].as_u64().unwrap() >= 5000);
    }

    #[test]
    fn timings_file_round_trips() {
        let path = std::env::temp_dir().join(format!("vmrun-timings-{}", std::process::id()));
        let mut t = Timings::new();
        t.record("x", StepKind::Guest, Instant::now());
        write_file(&path, &t.to_json("c")).unwrap();
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back["steps"][0]["step"], "x");
        std::fs::remove_file(&path).unwrap();
    }
}
