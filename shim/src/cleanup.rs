// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! What the `delete` action needs to clean up after a shim that is gone: a record in each
//! bundle naming the shim and its sandbox (state directory and process ids), and the cleanup
//! itself: kill the sandbox's process groups, unmount everything under its state directory and
//! the bundle's rootfs, remove the directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{umount2, MntFlags};
use serde::{Deserialize, Serialize};
use vmrun_runtime::state::{process_alive, process_start_time};
use vmrun_runtime::virtiofs::mounts_under;

/// File name of the record in the bundle.
pub const RECORD_FILE: &str = "vmrun-shim.json";

/// A process and its start time (guards against pid reuse).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRef {
    /// The pid.
    pub pid: i32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

impl ProcessRef {
    /// The reference of a live process (None if it is gone).
    pub fn of(pid: i32) -> Option<Self> {
        process_start_time(pid).map(|start_time| Self { pid, start_time })
    }

    /// Whether that very process still runs.
    pub fn alive(&self) -> bool {
        process_alive(self.pid, self.start_time)
    }
}

/// The record of one container's bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The shim serving the container.
    pub shim: Option<ProcessRef>,
    /// The sandbox's state directory.
    pub sandbox_dir: PathBuf,
    /// The sandbox's processes (hypervisor and daemons; each leads its process group).
    pub processes: Vec<ProcessRef>,
}

impl Record {
    /// Writes the record into `bundle` (atomically).
    pub fn save(&self, bundle: &Path) -> std::io::Result<()> {
        let tmp = bundle.join(format!(".{RECORD_FILE}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, bundle.join(RECORD_FILE))
    }

    /// Reads the record of `bundle` (None if there is none or it is unreadable).
    pub fn load(bundle: &Path) -> Option<Self> {
        let text = std::fs::read(bundle.join(RECORD_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// Unmounts everything at or below `dir` (deepest first, lazily). Returns how many failed.
pub fn unmount_all(dir: &Path) -> usize {
    let mut failed = 0;
    for m in mounts_under(dir) {
        if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
            log::warn!("cannot unmount {}: {e}", m.display());
            failed += 1;
        }
    }
    failed
}

/// Cleans up after the container of `bundle`. When the shim still runs, it owns the sandbox
/// and only the bundle's rootfs is unmounted; when it is gone, the sandbox's processes are
/// killed and its state directory unmounted and removed as well.
pub fn cleanup_bundle(bundle: &Path) {
    let record = Record::load(bundle);
    let shim_alive = record
        .as_ref()
        .and_then(|r| r.shim)
        .is_some_and(|s| s.alive() && s.pid != nix::unistd::getpid().as_raw());
    if let Some(r) = record.as_ref().filter(|_| !shim_alive) {
        for p in &r.processes {
            if p.alive() {
                // SAFETY: kill(2) on the process group the sandbox created for this process
                // (checked alive by pid and start time just above).
                unsafe { libc::kill(-p.pid, libc::SIGKILL) };
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while r.processes.iter().any(ProcessRef::alive) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        unmount_all(&r.sandbox_dir);
        if r.sandbox_dir.is_dir() && mounts_under(&r.sandbox_dir).is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&r.sandbox_dir) {
                log::warn!("cannot remove {}: {e}", r.sandbox_dir.display());
            }
        }
    }
    unmount_all(&bundle.join("rootfs"));
    let _ = std::fs::remove_file(bundle.join(RECORD_FILE));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_dead_shim_cleanup() {
        let dir = std::env::temp_dir().join(format!("vmrun-shim-rec-{}", std::process::id()));
        let sb = dir.join("sandbox");
        std::fs::create_dir_all(sb.join("x")).expect("mkdir");
        let r = Record {
            shim: Some(ProcessRef {
                pid: i32::MAX - 1,
                start_time: 1,
            }),
            sandbox_dir: sb.clone(),
            processes: vec![],
        };
        r.save(&dir).expect("save");
        assert_eq!(Record::load(&dir), Some(r));
        cleanup_bundle(&dir);
        assert!(!sb.exists(), "a dead shim's sandbox directory is removed");
        assert!(Record::load(&dir).is_none());
        std::fs::remove_dir_all(&dir).expect("rm");
    }

    #[test]
    fn live_shim_keeps_its_sandbox() {
        let dir = std::env::temp_dir().join(format!("vmrun-shim-live-{}", std::process::id()));
        let sb = dir.join("sandbox");
        std::fs::create_dir_all(&sb).expect("mkdir");
        // pid 1 stands for a live shim.
        Record {
            shim: ProcessRef::of(1),
            sandbox_dir: sb.clone(),
            processes: vec![],
        }
        .save(&dir)
        .expect("save");
        cleanup_bundle(&dir);
        assert!(sb.exists());
        std::fs::remove_dir_all(&dir).expect("rm");
    }
}
