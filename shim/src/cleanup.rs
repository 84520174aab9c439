// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! What the `delete` action needs to clean up after a shim that is gone: a record in each
//! bundle naming the shim and its sandbox (state directory and process ids), and the cleanup
//! itself: kill the sandbox's process groups, unmount everything under its state directory and
//! the bundle's rootfs, remove the directory.
//!
//! A shim that is *exiting* counts as gone. containerd runs `delete` as soon as the shim's ttrpc
//! connection closes, and the kernel closes a killed process's files (`exit_files`) before the
//! process becomes a zombie (`exit_notify`): for that moment `/proc/<pid>/stat` still shows it
//! running, with only `PF_EXITING` in its flags telling the truth. Taken for a live shim, it
//! would keep its sandbox (mounts, state directory) forever, since the record naming the sandbox
//! is removed with the bundle.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{umount2, MntFlags};
use serde::{Deserialize, Serialize};
use vmrun_runtime::virtiofs::mounts_under;

/// File name of the record in the bundle.
pub const RECORD_FILE: &str = "vmrun-shim.json";

/// How long `delete` waits for the killed sandbox processes before removing the state
/// directory: well inside containerd's cleanup timeout (`io.containerd.timeout.shim.cleanup`,
/// 5 s), after which containerd kills `delete`.
const PROCESS_EXIT_WAIT: Duration = Duration::from_secs(3);

/// `PF_EXITING` of the kernel's task flags (`/proc/<pid>/stat` field 9): the task has begun
/// to exit (set at the start of `do_exit`, before its files are closed).
const PF_EXITING: u64 = 0x4;

/// The fields of `/proc/<pid>/stat` the cleanup needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z`, ...
    state: char,
    /// Field 9: the kernel's task flags (`PF_*`).
    flags: u64,
    /// Field 22: start time in clock ticks since boot.
    start_time: u64,
}

impl ProcStat {
    /// Parses the text of `/proc/<pid>/stat` (None if it is malformed).
    fn parse(text: &str) -> Option<Self> {
        // The command name is in parentheses and may contain spaces or ')': split after the
        // last ')'. The rest starts at field 3.
        let rest = text.get(text.rfind(')')?.checked_add(2)?..)?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let flags = fields.nth(5)?.parse().ok()?;
        let start_time = fields.nth(12)?.parse().ok()?;
        Some(Self {
            state,
            flags,
            start_time,
        })
    }

    /// Reads the stat of `pid` (None if there is no such process).
    fn read(pid: i32) -> Option<Self> {
        if pid <= 0 {
            return None;
        }
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Whether the process is a zombie or being reaped.
    fn dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// How far a recorded process is from being gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs.
    Running,
    /// It has begun to exit (killed or exiting): it runs no more code of its own.
    Exiting,
    /// It is a zombie or gone, or its pid now names another process.
    Gone,
}

/// A process and its start time (guards against pid reuse).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRef {
    /// The pid.
    pub pid: i32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

impl ProcessRef {
    /// The reference of a live process (None if it is gone or a zombie).
    pub fn of(pid: i32) -> Option<Self> {
        ProcStat::read(pid).filter(|s| !s.dead()).map(|s| Self {
            pid,
            start_time: s.start_time,
        })
    }

    /// Whether that very process still runs, is exiting, or is gone.
    pub fn liveness(&self) -> Liveness {
        match ProcStat::read(self.pid) {
            Some(s) if s.start_time != self.start_time || s.dead() => Liveness::Gone,
            Some(s) if s.flags & PF_EXITING != 0 => Liveness::Exiting,
            Some(_) => Liveness::Running,
            None => Liveness::Gone,
        }
    }

    /// Whether that very process has not yet become a zombie (it may be exiting).
    pub fn alive(&self) -> bool {
        self.liveness() != Liveness::Gone
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
/// and only the bundle's rootfs is unmounted; when it is gone or exiting (see the module
/// docs), the sandbox's processes are killed and its state directory unmounted and removed as
/// well.
///
/// Returns what did not go as usual, one line each: the `delete` action has no log of its own,
/// and containerd logs what it writes to stderr as cleanup warnings.
pub fn cleanup_bundle(bundle: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let record = Record::load(bundle);
    let shim = record
        .as_ref()
        .and_then(|r| r.shim)
        .filter(|s| s.pid != nix::unistd::getpid().as_raw())
        .map(|s| (s.pid, s.liveness()));
    let live_shim = shim.filter(|(_, l)| *l == Liveness::Running);
    if let Some((pid, Liveness::Exiting)) = shim {
        notes.push(format!(
            "shim {pid} was still exiting: its sandbox is removed"
        ));
    }
    if let (Some((pid, _)), Some(r)) = (live_shim, &record) {
        notes.push(format!(
            "shim {pid} still runs: its sandbox {} stays",
            r.sandbox_dir.display()
        ));
    }
    if let Some(r) = record.as_ref().filter(|_| live_shim.is_none()) {
        for p in &r.processes {
            if p.alive() {
                // SAFETY: kill(2) on the process group the sandbox created for this process
                // (checked alive by pid and start time just above).
                unsafe { libc::kill(-p.pid, libc::SIGKILL) };
            }
        }
        // Mounts first: detaching does not need the processes gone, and containerd kills
        // `delete` after its cleanup timeout; what must not leak is done by then.
        notes.extend(unmount_noted(&r.sandbox_dir));
        notes.extend(unmount_noted(&bundle.join("rootfs")));
        let deadline = std::time::Instant::now() + PROCESS_EXIT_WAIT;
        while r.processes.iter().any(ProcessRef::alive) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let survivors: Vec<i32> = r
            .processes
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.pid)
            .collect();
        if !survivors.is_empty() {
            notes.push(format!(
                "sandbox processes {survivors:?} outlived SIGKILL for {PROCESS_EXIT_WAIT:?}"
            ));
        }
        if r.sandbox_dir.is_dir() && mounts_under(&r.sandbox_dir).is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&r.sandbox_dir) {
                notes.push(format!("cannot remove {}: {e}", r.sandbox_dir.display()));
            }
        }
    }
    notes.extend(unmount_noted(&bundle.join("rootfs")));
    let _ = std::fs::remove_file(bundle.join(RECORD_FILE));
    notes
}

/// [`unmount_all`], with a note if a mount could not be detached.
fn unmount_noted(dir: &Path) -> Option<String> {
    let failed = unmount_all(dir);
    (failed > 0).then(|| format!("{failed} mount(s) under {} stay", dir.display()))
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
        assert_eq!(cleanup_bundle(&dir), Vec::<String>::new());
        assert!(!sb.exists(), "a dead shim's sandbox directory is removed");
        assert!(Record::load(&dir).is_none());
        std::fs::remove_dir_all(&dir).expect("rm");
    }

    #[test]
    fn stat_fields() {
        // A killed shim between closing its files and becoming a zombie (flags 0x40044c).
        let line = "4242 (a) b) R 1 4242 4242 0 -1 4195404 90 0 0 0 1 2 0 0 20 0 5 0 777 9 9";
        let s = ProcStat::parse(line).expect("parse");
        assert_eq!(
            s,
            ProcStat {
                state: 'R',
                flags: 0x0040_044c,
                start_time: 777
            }
        );
        assert!(s.flags & PF_EXITING != 0 && !s.dead());
        assert!(ProcStat::parse("4242 (a) Z 1").is_none());
        assert!(ProcStat::parse("garbage").is_none());
        let me = ProcessRef::of(nix::unistd::getpid().as_raw()).expect("self");
        assert_eq!(me.liveness(), Liveness::Running);
        let recycled = ProcessRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert_eq!(recycled.liveness(), Liveness::Gone);
    }

    /// Environment variable that turns [`exiting_shim_stand_in`] into a long-running process.
    const STAND_IN_ENV: &str = "VMRUN_SHIM_TEST_STAND_IN";

    /// Not a test: the process `killed_shim_is_gone_when_its_connection_closes` kills. Does
    /// nothing unless [`STAND_IN_ENV`] is set.
    #[test]
    #[ignore = "a helper process of another test"]
    fn exiting_shim_stand_in() {
        if std::env::var_os(STAND_IN_ENV).is_none() {
            return;
        }
        // Like the shim: a few threads and some memory, so that exiting takes a moment.
        for _ in 0..3 {
            std::thread::spawn(|| loop {
                std::thread::sleep(Duration::from_secs(60));
            });
        }
        let memory = std::hint::black_box(vec![1_u8; 8 << 20]);
        println!("stand-in ready {}", memory.len());
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }

    /// containerd's sequence: the shim is SIGKILLed, containerd sees its connection close and
    /// runs `delete` at once. The shim may not be a zombie yet (here in one round in a hundred
    /// to one in ten, depending on the load); it must count as gone, and its sandbox must be
    /// removed. With a check that took any non-zombie for a live shim, every such round kept
    /// the sandbox.
    #[test]
    fn killed_shim_is_gone_when_its_connection_closes() {
        use std::io::{BufRead, Read};
        const ROUNDS: usize = 300;
        let dir = std::env::temp_dir().join(format!("vmrun-shim-dying-{}", std::process::id()));
        let sb = dir.join("sandbox");
        let exe = std::env::current_exe().expect("test binary");
        let (mut exiting, mut kept) = (0, 0);
        for _ in 0..ROUNDS {
            std::fs::create_dir_all(&sb).expect("mkdir");
            let mut child = std::process::Command::new(&exe)
                .args(["--exact", "cleanup::tests::exiting_shim_stand_in"])
                .args(["--ignored", "--nocapture", "--test-threads=1"])
                .env(STAND_IN_ENV, "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn the stand-in");
            // The child's stdout stands for the shim's ttrpc connection.
            let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
            let mut line = String::new();
            while !line.contains("stand-in ready") {
                line.clear();
                let n = out.read_line(&mut line).expect("read");
                assert_ne!(n, 0, "the stand-in ended early");
            }
            let pid = i32::try_from(child.id()).expect("pid");
            Record {
                shim: ProcessRef::of(pid),
                sandbox_dir: sb.clone(),
                processes: vec![],
            }
            .save(&dir)
            .expect("save");
            // SAFETY: kill(2) of the child spawned just above (not yet waited for).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let mut rest = Vec::new();
            out.read_to_end(&mut rest).expect("read to EOF");
            let notes = cleanup_bundle(&dir);
            if notes.iter().any(|n| n.contains("was still exiting")) {
                exiting += 1;
            }
            if sb.exists() {
                println!("kept: {notes:?}");
                kept += 1;
            }
            child.wait().expect("wait");
        }
        println!("{exiting} of {ROUNDS} rounds: the shim was still exiting after its EOF");
        std::fs::remove_dir_all(&dir).expect("rm");
        assert_eq!(
            kept, 0,
            "a killed shim's sandbox was kept in {kept} of {ROUNDS} rounds"
        );
    }

    /// A sandbox process that does not die (here: not the leader of the process group that
    /// `delete` kills) must not hold the mounts up: they are detached at once, before the wait.
    #[test]
    fn mounts_go_before_the_wait_for_processes() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: mounting needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("vmrun-shim-order-{}", std::process::id()));
        let mnt = dir.join("sandbox/shared");
        std::fs::create_dir_all(&mnt).expect("mkdir");
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount a tmpfs");
        let mut stray = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let stray_ref = ProcessRef::of(i32::try_from(stray.id()).expect("pid")).expect("alive");
        Record {
            shim: None,
            sandbox_dir: dir.join("sandbox"),
            processes: vec![stray_ref],
        }
        .save(&dir)
        .expect("save");
        let watched = mnt.clone();
        let start = std::time::Instant::now();
        let watcher = std::thread::spawn(move || {
            while mounts_under(&watched).contains(&watched) {
                std::thread::sleep(Duration::from_millis(5));
            }
            start.elapsed()
        });
        let notes = cleanup_bundle(&dir);
        let took = start.elapsed();
        let unmounted_after = watcher.join().expect("watcher");
        stray.kill().expect("kill sleep");
        stray.wait().expect("wait sleep");
        assert!(took >= PROCESS_EXIT_WAIT, "cleanup did not wait: {took:?}");
        assert!(
            unmounted_after < Duration::from_secs(1),
            "the mount went only after {unmounted_after:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("outlived SIGKILL")),
            "{notes:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
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
        let notes = cleanup_bundle(&dir);
        assert!(notes[0].starts_with("shim 1 still runs"), "{notes:?}");
        assert!(sb.exists());
        std::fs::remove_dir_all(&dir).expect("rm");
    }
}
