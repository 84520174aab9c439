// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The `vmrun` state store: one directory per container under `--root` (default `/run/vmrun`).
//!
//! Layout of `<root>/<id>/`:
//! - `state.json`: the [`ContainerRecord`], replaced atomically (written to a temporary file in
//!   the same directory, fsynced, renamed over the old one), so a reader never sees half a file;
//! - `monitor.sock`: the monitor's control socket (see [`crate::monitor`]);
//! - anything the sandbox keeps per container (its run directory).
//!
//! Concurrency: every read-modify-write holds an exclusive `flock(2)` on the container
//! directory ([`StateStore::lock`]); creating the directory with `mkdir(2)` is what refuses a
//! second container with the same id. The CLI processes and the monitor are the only writers.
//!
//! Liveness: the record names the monitor's pid and its start time (field 22 of
//! `/proc/<pid>/stat`), so a dead monitor, a zombie, or a recycled pid is reported as
//! [`Status::Stopped`], never `running`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// The OCI runtime-spec version this runtime implements (reported in `state` and `features`).
pub const OCI_VERSION: &str = "1.2.0";

/// The file holding a container's record inside its directory.
pub const STATE_FILE: &str = "state.json";

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The id does not match `^[A-Za-z0-9_+.-]+$` or is `.`/`..` (runc's rule).
    #[error("invalid container id {0:?}: use letters, digits and _+.- only")]
    InvalidId(String),
    /// A container with this id already exists.
    #[error("container with id exists: {0}")]
    Exists(String),
    /// No container with this id.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// The state root could not be created or read.
    #[error("state root {path}")]
    Root {
        /// The root directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the store could not be read, written, renamed or removed.
    #[error("state file {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `state.json` does not parse.
    #[error("corrupt state file {path}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// `flock(2)` failed.
    #[error("cannot lock the state of container {id:?}")]
    Lock {
        /// The container id.
        id: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

/// A container's lifecycle status (OCI runtime spec "State", plus runc's `paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The monitor is booting the sandbox and creating the container.
    Creating,
    /// Created, the user process has not been started.
    Created,
    /// The user process runs.
    Running,
    /// The container's processes are frozen.
    Paused,
    /// The user process exited, or the sandbox or its monitor died.
    Stopped,
}

impl Status {
    /// The status as the OCI state JSON spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }

    /// Whether a move from `self` to `next` is a legal lifecycle step.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Creating, Created)
                | (Created, Running)
                | (Running, Paused)
                | (Paused, Running)
                | (_, Stopped)
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the store keeps about one container (`<root>/<id>/state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The OCI version of the bundle's config.json.
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// The recorded status; see [`ContainerRecord::effective_status`].
    pub status: Status,
    /// The monitor's host pid (the pid `create --pid-file` writes), once it runs.
    pub pid: Option<i32>,
    /// The monitor's start time in clock ticks since boot, to detect a recycled pid.
    pub pid_start_time: Option<u64>,
    /// Absolute path of the bundle.
    pub bundle: PathBuf,
    /// Absolute path of the rootfs on the host.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The exit status once stopped (128+signal for a signal).
    #[serde(default)]
    pub exit_status: Option<i32>,
    /// Opaque data the sandbox library persists to clean up after a dead monitor.
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
    /// The sandbox's host cgroups (removed by `delete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cgroup: Option<crate::cgroups::HostCgroup>,
}

/// The OCI state JSON (`vmrun state`), with runc's extra `rootfs`, `created` and `owner`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    /// Runtime-spec version.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: Status,
    /// Host pid of the container's monitor; 0 once stopped (as runc).
    pub pid: i32,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs path (runc).
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339 (runc).
    pub created: String,
    /// Owner (runc; empty for root).
    pub owner: String,
    /// The spec's annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub annotations: BTreeMap<String, String>,
}

impl ContainerRecord {
    /// The status to report: the recorded one, except that a container whose monitor is gone
    /// (dead, zombie, or its pid recycled) is `stopped`.
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Stopped => Status::Stopped,
            Status::Creating | Status::Created | Status::Running | Status::Paused => {
                match (self.pid, self.pid_start_time) {
                    (Some(pid), Some(start)) if process_alive(pid, start) => self.status,
                    // Still booting: the monitor has not written its pid yet.
                    (None, _) if self.status == Status::Creating => self.status,
                    _ => Status::Stopped,
                }
            }
        }
    }

    /// The OCI state JSON of this record.
    pub fn oci_state(&self) -> OciState {
        let status = self.effective_status();
        let pid = match status {
            Status::Stopped => 0,
            _ => self.pid.unwrap_or(0),
        };
        OciState {
            oci_version: self.oci_version.clone(),
            id: self.id.clone(),
            status,
            pid,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: String::new(),
            annotations: self.annotations.clone(),
        }
    }
}

/// Start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) of a live, non-zombie
/// process; `None` if there is no such process or it is a zombie.
pub fn process_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces or ')': split after the last ')'.
    let rest = stat.get(stat.rfind(')')?.checked_add(2)?..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" || state == "x" {
        return None;
    }
    // `rest` starts at field 3 (state); the start time is field 22.
    fields.nth(18)?.parse().ok()
}

/// Whether `pid` is alive, not a zombie, and started at `start_time` (not a recycled pid).
pub fn process_alive(pid: i32, start_time: u64) -> bool {
    process_start_time(pid) == Some(start_time)
}

/// Checks a container id like runc: `^[A-Za-z0-9_+.-]+$`, not `.` or `..`, at most 1024 bytes.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_owned()))
    }
}

/// The directory of all containers' states.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

/// An exclusive lock on one container's state; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
    dir: PathBuf,
    id: String,
}

impl StateLock {
    /// The container directory this lock guards.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the record.
    pub fn load(&self) -> Result<ContainerRecord, StateError> {
        read_record(&self.dir, &self.id)
    }

    /// Replaces the record atomically.
    pub fn save(&self, record: &ContainerRecord) -> Result<(), StateError> {
        write_atomic(&self.dir.join(STATE_FILE), record)
    }
}

impl StateStore {
    /// Opens (and creates, mode 0700) the state root.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|source| StateError::Root {
                path: root.clone(),
                source,
            })?;
        Ok(Self { root })
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of container `id` (which need not exist).
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Creates the directory of a new container and writes its first record, returning the
    /// lock on it. Fails with [`StateError::Exists`] if the id is taken.
    pub fn create(&self, record: &ContainerRecord) -> Result<StateLock, StateError> {
        validate_id(&record.id)?;
        let dir = self.dir(&record.id);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(record.id.clone()))
            }
            Err(source) => return Err(StateError::Io { path: dir, source }),
        }
        let lock = match self.lock_dir(&record.id, false) {
            Ok(lock) => lock,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        if let Err(e) = lock.save(record) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(lock)
    }

    /// Takes the exclusive lock on container `id`'s directory (blocking).
    pub fn lock(&self, id: &str) -> Result<StateLock, StateError> {
        self.lock_dir(id, true)
    }

    fn lock_dir(&self, id: &str, require_state: bool) -> Result<StateLock, StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        let file = match File::open(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_owned()))
            }
            Err(source) => return Err(StateError::Io { path: dir, source }),
        };
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| StateError::Lock {
                id: id.to_owned(),
                source,
            })?;
        // A concurrent delete may have removed the directory while we waited.
        if require_state && !dir.join(STATE_FILE).exists() {
            return Err(StateError::NotFound(id.to_owned()));
        }
        Ok(StateLock {
            _lock: lock,
            dir,
            id: id.to_owned(),
        })
    }

    /// Reads container `id`'s record without locking (the file is replaced atomically).
    pub fn load(&self, id: &str) -> Result<ContainerRecord, StateError> {
        validate_id(id)?;
        read_record(&self.dir(id), id)
    }

    /// Every container's record, sorted by id; unreadable entries are skipped.
    pub fn list(&self) -> Result<Vec<ContainerRecord>, StateError> {
        let entries = fs::read_dir(&self.root).map_err(|source| StateError::Root {
            path: self.root.clone(),
            source,
        })?;
        let mut records: Vec<ContainerRecord> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| validate_id(id).is_ok())
            .filter_map(|id| self.load(&id).ok())
            .collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// Removes container `id`'s directory; consumes the lock, which must be on `id`.
    pub fn remove(&self, lock: StateLock) -> Result<(), StateError> {
        let dir = lock.dir.clone();
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path: dir, source }),
        }
    }
}

fn read_record(dir: &Path, id: &str) -> Result<ContainerRecord, StateError> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(StateError::NotFound(id.to_owned()))
        }
        Err(source) => return Err(StateError::Io { path, source }),
    };
    serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
}

/// Writes `value` as JSON to `path` atomically: a temporary file in the same directory,
/// fsynced, then renamed over `path`.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let data = serde_json::to_vec(value).map_err(|e| io(std::io::Error::other(e)))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Formats a time as RFC 3339 UTC with nanoseconds (`2026-11-28T03:55:00.123456789Z`), the
/// format Go's `time.Time` (runc, containerd, podman) reads.
pub fn format_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vmrun-state-test-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            oci_version: "1.0.2".into(),
            id: id.into(),
            status: Status::Creating,
            pid: None,
            pid_start_time: None,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: format_rfc3339(SystemTime::now()),
            annotations: BTreeMap::new(),
            exit_status: None,
            sandbox: None,
            host_cgroup: None,
        }
    }

    #[test]
    fn ids_follow_runc() {
        for ok in ["a", "abc-1_2.3+4", "A".repeat(64).as_str()] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "../x", "é", "a\n"] {
            assert!(
                matches!(validate_id(bad), Err(StateError::InvalidId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn transitions() {
        use Status::*;
        assert!(Creating.can_become(Created));
        assert!(Created.can_become(Running));
        assert!(Running.can_become(Paused));
        assert!(Paused.can_become(Running));
        for s in [Creating, Created, Running, Paused, Stopped] {
            assert!(s.can_become(Stopped));
        }
        assert!(!Stopped.can_become(Running));
        assert!(!Created.can_become(Paused));
        assert!(!Running.can_become(Created));
        assert!(!Creating.can_become(Running));
    }

    #[test]
    fn create_load_save_remove() {
        let dir = tempdir("crud");
        let store = StateStore::open(dir.join("root")).unwrap();
        let mut rec = record("c1");
        let lock = store.create(&rec).unwrap();
        assert_eq!(store.load("c1").unwrap(), rec);
        rec.status = Status::Created;
        rec.pid = Some(std::process::id().try_into().unwrap());
        rec.pid_start_time = process_start_time(rec.pid.unwrap());
        lock.save(&rec).unwrap();
        assert_eq!(lock.load().unwrap(), rec);
        assert_eq!(
            store.load("c1").unwrap().effective_status(),
            Status::Created
        );
        assert_eq!(store.list().unwrap().len(), 1);
        // No temporary file is left next to state.json.
        let names: Vec<_> = fs::read_dir(store.dir("c1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
        store.remove(lock).unwrap();
        assert!(matches!(store.load("c1"), Err(StateError::NotFound(_))));
        assert!(!store.dir("c1").exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn existing_id_refused_and_untouched() {
        let dir = tempdir("exists");
        let store = StateStore::open(&dir).unwrap();
        let first = record("same");
        drop(store.create(&first).unwrap());
        let mut second = record("same");
        second.bundle = "/other".into();
        assert!(matches!(store.create(&second), Err(StateError::Exists(_))));
        assert_eq!(store.load("same").unwrap().bundle, PathBuf::from("/b"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_id() {
        let dir = tempdir("unknown");
        let store = StateStore::open(&dir).unwrap();
        assert!(matches!(store.load("nope"), Err(StateError::NotFound(_))));
        assert!(matches!(store.lock("nope"), Err(StateError::NotFound(_))));
        let msg = store.lock("nope").unwrap_err().to_string();
        assert_eq!(msg, "container \"nope\" does not exist");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_state_is_an_error() {
        let dir = tempdir("corrupt");
        let store = StateStore::open(&dir).unwrap();
        fs::create_dir(dir.join("x")).unwrap();
        fs::write(dir.join("x").join(STATE_FILE), b"{not json").unwrap();
        assert!(matches!(store.load("x"), Err(StateError::Corrupt { .. })));
        assert!(store.list().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempdir("lock");
        let store = StateStore::open(&dir).unwrap();
        let lock = store.create(&record("l")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let store2 = store.clone();
        let t = std::thread::spawn(move || {
            let l2 = store2.lock("l").unwrap();
            tx.send(()).unwrap();
            drop(l2);
        });
        // The second locker must block while we hold the lock.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(lock);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn lock_after_remove_is_not_found() {
        let dir = tempdir("lockrm");
        let store = StateStore::open(&dir).unwrap();
        let lock = store.create(&record("r")).unwrap();
        let store2 = store.clone();
        let t = std::thread::spawn(move || store2.lock("r").map(|_| ()));
        std::thread::sleep(Duration::from_millis(100));
        store.remove(lock).unwrap();
        assert!(matches!(t.join().unwrap(), Err(StateError::NotFound(_))));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dead_monitor_is_stopped() {
        let mut rec = record("d");
        rec.status = Status::Running;
        // A child that exited and was reaped: its pid is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        rec.pid = Some(pid);
        rec.pid_start_time = Some(1);
        assert_eq!(rec.effective_status(), Status::Stopped);
        assert_eq!(rec.oci_state().pid, 0);
        // A zombie (exited, not reaped) is stopped too.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let zpid = i32::try_from(zombie.id()).unwrap();
        let start = process_start_time(zpid);
        std::thread::sleep(Duration::from_millis(300));
        rec.pid = Some(zpid);
        rec.pid_start_time = start.or(Some(0));
        assert_eq!(rec.effective_status(), Status::Stopped);
        zombie.wait().unwrap();
        // Our own pid with a wrong start time is a recycled pid.
        let me = i32::try_from(std::process::id()).unwrap();
        rec.pid = Some(me);
        rec.pid_start_time = process_start_time(me).map(|t| t + 1);
        assert_eq!(rec.effective_status(), Status::Stopped);
        rec.pid_start_time = process_start_time(me);
        assert_eq!(rec.effective_status(), Status::Running);
        assert_eq!(rec.oci_state().pid, me);
    }

    #[test]
    fn oci_state_json_shape() {
        let mut rec = record("s");
        rec.status = Status::Stopped;
        rec.annotations.insert("a".into(), "b".into());
        let v = serde_json::to_value(rec.oci_state()).unwrap();
        for key in [
            "ociVersion",
            "id",
            "status",
            "pid",
            "bundle",
            "annotations",
            "created",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["status"], "stopped");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_838_100, 5);
        assert_eq!(format_rfc3339(t), "2026-11-28T03:55:00.000000005Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(format_rfc3339(leap).starts_with("2000-02-29T00:00:00"));
    }
}
