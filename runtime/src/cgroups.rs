// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Host cgroups of a sandbox: its host processes (monitor, hypervisor, virtiofsd,
//! vhost-device-vsock) live in the spec's `linux.cgroupsPath` on the host, so that host tooling
//! sees one bounded unit per container, as it does with runc.
//!
//! The container's own limits are enforced by the guest (cgroup v2 in the VM). On the host:
//! - the VM is sized from them ([`size_vm`]): guest RAM = the configured base + the memory
//!   limit, vCPUs = at least the CPU quota (capped by the host's CPUs);
//! - the host cgroup gets a memory limit of guest RAM + a configured overhead for the
//!   hypervisor and daemons ([`crate::config::HostCgroupSettings::overhead_mib`]), and the
//!   container's CPU shares (v1 `cpu.shares`, v2 `cpu.weight`). No CPU quota and no pids limit
//!   are set on the host: the vCPU count already bounds the guest, and under TCG a quota would
//!   starve the emulator.
//!
//! Hierarchies: every cgroup2 mount (the unified hierarchy; on a hybrid host it usually has no
//! controllers and only groups the processes) and the v1 hierarchies of the `memory`, `cpu`,
//! `cpuacct` and `pids` controllers, found in `/proc/self/mountinfo`.
//!
//! Paths follow runc: an absolute `cgroupsPath` is relative to each hierarchy's root, a
//! relative one to the caller's own cgroup in that hierarchy. With `--systemd-cgroup`, the
//! path is systemd's `slice:prefix:name` and maps to the cgroupfs path systemd would use
//! (`a-b.slice` → `/a.slice/a-b.slice`, unit `prefix-name.scope`); vmrun writes that path
//! directly (it does not ask systemd to create a scope). An empty `cgroupsPath` means no host
//! cgroup: the processes stay in the caller's.
//!
//! Only directories vmrun created are removed ([`HostCgroup::remove`]), deepest first.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::SandboxSettings;

/// v1 controllers whose hierarchies the sandbox joins.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids"];
/// How long [`HostCgroup::remove`] retries a busy cgroup (its processes are still exiting).
const REMOVE_WAIT: Duration = Duration::from_secs(3);
/// 1 MiB.
const MIB: u64 = 1 << 20;

/// Errors of host cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `linux.cgroupsPath` cannot be used.
    #[error("invalid linux.cgroupsPath {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A cgroup file or directory operation failed.
    #[error("cgroup {what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/self/mountinfo` or `/proc/self/cgroup` could not be read.
    #[error("cannot read {path}")]
    Proc {
        /// The file.
        path: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An `update` asks for more memory than the VM has.
    #[error(
        "memory limit {limit_mib} MiB exceeds the sandbox's {guest_mib} MiB of guest RAM \
         (the VM cannot grow; recreate the container with the larger limit)"
    )]
    MemoryBeyondVm {
        /// The requested limit in MiB (rounded up).
        limit_mib: u64,
        /// The VM's RAM.
        guest_mib: u32,
    },
}

/// Where the spec's `cgroupsPath` points, before it is joined with a hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPath {
    /// Relative to each hierarchy's root.
    Absolute(PathBuf),
    /// Relative to the caller's cgroup in each hierarchy.
    Relative(PathBuf),
}

/// Parses `linux.cgroupsPath`: `None` for an empty path (no host cgroup). With `systemd`,
/// the path must be `slice:prefix:name`.
pub fn parse_path(path: &str, systemd: bool) -> Result<Option<CgroupPath>, CgroupError> {
    let invalid = |reason: &str| CgroupError::InvalidPath {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.is_empty() {
        return Ok(None);
    }
    let parsed = if systemd {
        let parts: Vec<&str> = path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(invalid(
                "with --systemd-cgroup it must be \"slice:prefix:name\"",
            ));
        };
        let mut p = expand_slice(if slice.is_empty() {
            "system.slice"
        } else {
            slice
        })
        .ok_or_else(|| invalid("the slice must be a name ending in .slice"))?;
        if name.is_empty() || name.contains('/') || prefix.contains('/') {
            return Err(invalid("prefix and name must be non-empty names"));
        }
        p.push(if name.ends_with(".slice") {
            name.to_owned()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        });
        CgroupPath::Absolute(p)
    } else if let Some(rel) = path.strip_prefix('/') {
        CgroupPath::Absolute(PathBuf::from("/").join(rel))
    } else {
        CgroupPath::Relative(PathBuf::from(path))
    };
    let p = match &parsed {
        CgroupPath::Absolute(p) | CgroupPath::Relative(p) => p,
    };
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(invalid("\"..\" and \".\" are not allowed"));
    }
    if p.components().all(|c| c == Component::RootDir) {
        return Err(invalid("the root cgroup cannot hold a sandbox"));
    }
    Ok(Some(parsed))
}

/// systemd's slice name → its cgroupfs path: `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`,
/// `-.slice` → `/`.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    let mut p = PathBuf::from("/");
    if stem == "-" {
        return Some(p);
    }
    if stem.is_empty() || stem.contains('/') || stem.starts_with('-') || stem.ends_with('-') {
        return None;
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return None;
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        p.push(format!("{prefix}.slice"));
    }
    Some(p)
}

/// One mounted hierarchy the sandbox joins.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// `unified` for cgroup2, else the v1 controllers (`cpu,cpuacct`).
    name: String,
    v2: bool,
    /// Mount point.
    mount: PathBuf,
    /// The cgroup the mount's root shows (not `/` inside a cgroup namespace of a container).
    mount_root: PathBuf,
}

/// Hierarchies from mountinfo text: every cgroup2 mount and the v1 mounts carrying one of
/// [`V1_CONTROLLERS`] (the first mount of each).
fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mount), Some(fstype)) = (l.get(3), l.get(4), r.first()) else {
            continue;
        };
        let h = match *fstype {
            "cgroup2" => Hierarchy {
                name: "unified".to_owned(),
                v2: true,
                mount: PathBuf::from(crate::virtiofs::unescape_mountinfo(mount)),
                mount_root: PathBuf::from(crate::virtiofs::unescape_mountinfo(root)),
            },
            "cgroup" => {
                let opts = r.get(2).copied().unwrap_or_default();
                let controllers: Vec<&str> = opts
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .collect();
                if controllers.is_empty() {
                    continue;
                }
                Hierarchy {
                    name: controllers.join(","),
                    v2: false,
                    mount: PathBuf::from(crate::virtiofs::unescape_mountinfo(mount)),
                    mount_root: PathBuf::from(crate::virtiofs::unescape_mountinfo(root)),
                }
            }
            _ => continue,
        };
        if !out.iter().any(|o| o.name == h.name) {
            out.push(h);
        }
    }
    out
}

/// The process's cgroup in a hierarchy, from `/proc/<pid>/cgroup` text.
fn own_cgroup(proc_cgroup: &str, h: &Hierarchy) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|line| {
        let mut it = line.splitn(3, ':');
        let (_, controllers, path) = (it.next()?, it.next()?, it.next()?);
        let matches = if h.v2 {
            controllers.is_empty()
        } else {
            let mut a: Vec<&str> = controllers.split(',').collect();
            let mut b: Vec<&str> = h.name.split(',').collect();
            a.retain(|c| V1_CONTROLLERS.contains(c));
            a.sort_unstable();
            b.sort_unstable();
            a == b
        };
        matches.then(|| PathBuf::from(path))
    })
}

/// The directory of a cgroup (a path from the hierarchy's root) under the mount.
fn dir_of(h: &Hierarchy, cgroup: &Path) -> PathBuf {
    let rel = cgroup.strip_prefix(&h.mount_root).unwrap_or(cgroup);
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    h.mount.join(rel)
}

/// One hierarchy's cgroup of a sandbox, as recorded in the container's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDir {
    /// `unified` or the v1 controllers.
    pub hierarchy: String,
    /// cgroup2 (`memory.max`, `cpu.weight`) rather than v1.
    pub v2: bool,
    /// The cgroup's directory.
    pub path: PathBuf,
    /// Directories vmrun created (outermost first); only these are removed.
    pub created: Vec<PathBuf>,
    /// The cgroup the creating process was in (it moves back there before removal).
    pub previous: PathBuf,
}

/// Limits written to the host cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostLimits {
    /// Memory limit in bytes (guest RAM + overhead).
    pub memory_bytes: Option<u64>,
    /// CPU shares (v1 `cpu.shares`; converted to `cpu.weight` on v2).
    pub cpu_shares: Option<u64>,
}

/// A sandbox's host cgroups: one directory per hierarchy, and how the VM was sized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCgroup {
    /// The directories.
    pub dirs: Vec<CgroupDir>,
    /// The VM's RAM in MiB.
    pub guest_memory_mib: u32,
    /// The hypervisor and daemon allowance in MiB.
    pub overhead_mib: u32,
}

impl HostCgroup {
    /// Creates (or reuses) the cgroup `path` in every hierarchy this host has. On error,
    /// what was created is removed again.
    pub fn create(
        path: &CgroupPath,
        guest_memory_mib: u32,
        overhead_mib: u32,
    ) -> Result<Self, CgroupError> {
        let mountinfo = read_proc("/proc/self/mountinfo")?;
        let proc_cgroup = read_proc("/proc/self/cgroup")?;
        let mut cg = Self {
            dirs: Vec::new(),
            guest_memory_mib,
            overhead_mib,
        };
        for h in hierarchies(&mountinfo) {
            let Some(own) = own_cgroup(&proc_cgroup, &h) else {
                continue;
            };
            let target = match path {
                CgroupPath::Absolute(p) => p.clone(),
                CgroupPath::Relative(p) => own.join(p),
            };
            let dir = dir_of(&h, &target);
            let mut created = Vec::new();
            let made = mkdir_p(&h.mount, &dir, &mut created);
            cg.dirs.push(CgroupDir {
                hierarchy: h.name.clone(),
                v2: h.v2,
                path: dir,
                created,
                previous: dir_of(&h, &own),
            });
            if let Err(e) = made {
                cg.remove();
                return Err(e);
            }
        }
        Ok(cg)
    }

    /// The host limits for this sandbox with the container's CPU shares.
    pub fn limits(&self, cpu_shares: Option<u64>) -> HostLimits {
        HostLimits {
            memory_bytes: Some(
                (u64::from(self.guest_memory_mib) + u64::from(self.overhead_mib)) * MIB,
            ),
            cpu_shares,
        }
    }

    /// Writes the limits into each hierarchy that has the controller.
    pub fn apply(&self, limits: &HostLimits) -> Result<(), CgroupError> {
        for d in &self.dirs {
            if let Some(bytes) = limits.memory_bytes {
                let file = if d.v2 {
                    "memory.max"
                } else {
                    "memory.limit_in_bytes"
                };
                write_if_present(&d.path, file, &bytes.to_string())?;
            }
            if let Some(shares) = limits.cpu_shares {
                if d.v2 {
                    write_if_present(&d.path, "cpu.weight", &shares_to_weight(shares).to_string())?;
                } else {
                    write_if_present(&d.path, "cpu.shares", &shares.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Moves process `pid` (all its threads) into every directory.
    pub fn join(&self, pid: u32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(&d.path.join("cgroup.procs"), &pid.to_string(), "join")?;
        }
        Ok(())
    }

    /// Removes the directories vmrun created, deepest first. The calling process first moves
    /// back to its previous cgroup if it is inside (foreground `run`); processes still exiting
    /// are waited for a little. Failures are logged, not returned: this runs in teardown.
    pub fn remove(&self) {
        let me = std::process::id().to_string();
        for d in &self.dirs {
            let procs = std::fs::read_to_string(d.path.join("cgroup.procs")).unwrap_or_default();
            if procs.lines().any(|l| l == me) {
                if let Err(e) = write(&d.previous.join("cgroup.procs"), &me, "leave") {
                    log::warn!("{}", crate::monitor::chain(&e));
                }
            }
            for dir in d.created.iter().rev() {
                if has_child_cgroups(dir) {
                    // A parent vmrun created that another container now uses too (two
                    // containers under `/default`): it stays, the last one removes it.
                    log::debug!("cgroup {} still has children; kept", dir.display());
                    continue;
                }
                let deadline = Instant::now() + REMOVE_WAIT;
                loop {
                    match std::fs::remove_dir(dir) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                        Err(e)
                            if e.raw_os_error() == Some(libc::EBUSY)
                                && Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            log::warn!("cannot remove cgroup {}: {e}", dir.display());
                            break;
                        }
                    }
                }
            }
        }
    }

    /// The directory of one hierarchy (`unified`, `memory`, ...), if joined.
    pub fn dir(&self, hierarchy: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.hierarchy.split(',').any(|c| c == hierarchy) || d.hierarchy == hierarchy)
            .map(|d| d.path.as_path())
    }
}

/// Whether a cgroup directory has child cgroups (subdirectories).
fn has_child_cgroups(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        })
        .unwrap_or(false)
}

/// runc's conversion of v1 CPU shares (2..262144) to a v2 weight (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

fn read_proc(path: &'static str) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Proc { path, source })
}

fn write(path: &Path, value: &str, what: &'static str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn write_if_present(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    if !path.exists() {
        log::debug!("{} absent: not set", path.display());
        return Ok(());
    }
    write(&path, value, "write")
}

/// `mkdir -p` below `base`, recording each directory it made.
fn mkdir_p(base: &Path, dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let rel = dir.strip_prefix(base).unwrap_or(dir);
    let mut cur = base.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::create_dir(&cur) {
            Ok(()) => created.push(cur.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Io {
                    what: "mkdir",
                    path: cur,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Sizes the VM from the spec's `linux.resources`: guest RAM = the configured `memory_mib` +
/// the memory limit (unless an `io.vmrun.memory_mib` annotation fixed it), vCPUs = at least
/// `ceil(quota / period)`, at most the host's CPUs (unless `io.vmrun.vcpus` fixed them).
pub fn size_vm(
    settings: &mut SandboxSettings,
    spec: &Value,
    annotations: &std::collections::BTreeMap<String, String>,
) {
    let res = &spec["linux"]["resources"];
    let fixed =
        |k: &str| annotations.contains_key(&format!("{}{k}", crate::config::ANNOTATION_PREFIX));
    if !fixed("memory_mib") {
        if let Some(limit) = res["memory"]["limit"].as_u64().filter(|l| *l > 0) {
            let extra = u32::try_from(limit.div_ceil(MIB)).unwrap_or(u32::MAX);
            settings.memory_mib = settings
                .memory_mib
                .saturating_add(extra)
                .min(crate::config::MAX_MEMORY_MIB);
        }
    }
    if !fixed("vcpus") {
        let quota = res["cpu"]["quota"].as_i64().filter(|q| *q > 0);
        let period = res["cpu"]["period"]
            .as_u64()
            .filter(|p| *p > 0)
            .unwrap_or(100_000);
        if let Some(q) = quota.and_then(|q| u64::try_from(q).ok()) {
            let want = u32::try_from(q.div_ceil(period)).unwrap_or(u32::MAX);
            let host = std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
                .unwrap_or(1);
            settings.vcpus = settings
                .vcpus
                .max(want.min(host))
                .min(crate::config::MAX_VCPUS);
        }
    }
}

/// The CPU shares in a `linux.resources` object.
pub fn cpu_shares(resources: &Value) -> Option<u64> {
    resources["cpu"]["shares"].as_u64().filter(|s| *s > 0)
}

/// Checks an `update`'s memory limit against the VM's RAM: a lower or equal limit (or none,
/// or -1) is fine; a higher one cannot be honoured.
pub fn check_update(cg_guest_mib: u32, resources: &Value) -> Result<(), CgroupError> {
    if let Some(limit) = resources["memory"]["limit"].as_u64().filter(|l| *l > 0) {
        let limit_mib = limit.div_ceil(MIB);
        if limit_mib > u64::from(cg_guest_mib) {
            return Err(CgroupError::MemoryBeyondVm {
                limit_mib,
                guest_mib: cg_guest_mib,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_like_runc() {
        assert_eq!(parse_path("", false).unwrap(), None);
        assert_eq!(
            parse_path("/libpod_parent/libpod-abc", false).unwrap(),
            Some(CgroupPath::Absolute("/libpod_parent/libpod-abc".into()))
        );
        assert_eq!(
            parse_path("a/b", false).unwrap(),
            Some(CgroupPath::Relative("a/b".into()))
        );
        assert_eq!(
            parse_path("system.slice:docker:abc", true).unwrap(),
            Some(CgroupPath::Absolute(
                "/system.slice/docker-abc.scope".into()
            ))
        );
        assert_eq!(
            parse_path("kubepods-besteffort-pod1.slice:cri-containerd:x", true).unwrap(),
            Some(CgroupPath::Absolute(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-x.scope"
                    .into()
            ))
        );
        assert_eq!(
            parse_path(":vmrun:c1", true).unwrap(),
            Some(CgroupPath::Absolute("/system.slice/vmrun-c1.scope".into()))
        );
        assert_eq!(
            parse_path("-.slice:p:n", true).unwrap(),
            Some(CgroupPath::Absolute("/p-n.scope".into()))
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        for (p, systemd) in [
            ("/a/../b", false),
            ("/", false),
            ("/a/b", true),
            ("bad:p:n", true),
            ("a--b.slice:p:n", true),
            ("system.slice:p:", true),
        ] {
            let err = parse_path(p, systemd).unwrap_err();
            assert!(err.to_string().contains("cgroupsPath"), "{p}: {err}");
        }
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_hierarchies_and_own_cgroups() {
        let hs = hierarchies(HYBRID);
        let names: Vec<&str> = hs.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["cpu", "cpuacct", "memory", "pids", "unified"]);
        let proc = "9:name=systemd:/\n4:memory:/process_api/x\n1:cpu:/\n0::/u\n";
        let mem = &hs[2];
        assert_eq!(own_cgroup(proc, mem), Some(PathBuf::from("/process_api/x")));
        assert_eq!(own_cgroup(proc, &hs[4]), Some(PathBuf::from("/u")));
        assert_eq!(own_cgroup(proc, &hs[3]), None);
        assert_eq!(
            dir_of(mem, Path::new("/process_api/x/c1")),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/x/c1")
        );
        let v2 = hierarchies("1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert_eq!(v2.len(), 1);
        assert!(v2[0].v2);
        let combined =
            hierarchies("1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n");
        assert_eq!(combined[0].name, "cpu,cpuacct");
        assert_eq!(
            own_cgroup("3:cpuacct,cpu:/a\n", &combined[0]),
            Some(PathBuf::from("/a"))
        );
    }

    #[test]
    fn vm_sizing() {
        let mut s = SandboxSettings {
            memory_mib: 256,
            vcpus: 1,
            ..SandboxSettings::default()
        };
        let spec = serde_json::json!({"linux": {"resources": {
            "memory": {"limit": 100 * MIB + 1}, "cpu": {"quota": 150_000, "period": 100_000}}}});
        size_vm(&mut s, &spec, &Default::default());
        assert_eq!(s.memory_mib, 256 + 101);
        let host = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(s.vcpus, u32::try_from(host.min(2)).unwrap().max(1));
        let mut s2 = SandboxSettings {
            memory_mib: 512,
            ..SandboxSettings::default()
        };
        let ann = [("io.vmrun.memory_mib".to_owned(), "512".to_owned())].into();
        size_vm(&mut s2, &spec, &ann);
        assert_eq!(s2.memory_mib, 512, "an explicit annotation wins");
        let mut s3 = SandboxSettings::default();
        let before = s3.clone();
        size_vm(&mut s3, &serde_json::json!({}), &Default::default());
        assert_eq!(s3, before);
    }

    #[test]
    fn update_within_vm() {
        let r = |l: i64| serde_json::json!({"memory": {"limit": l}});
        check_update(300, &r(200 * 1024 * 1024)).unwrap();
        check_update(300, &r(-1)).unwrap();
        check_update(300, &serde_json::json!({})).unwrap();
        let e = check_update(300, &r(301 * 1024 * 1024)).unwrap_err();
        assert!(e.to_string().contains("301 MiB exceeds"), "{e}");
    }

    #[test]
    fn weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(crate::virtiofs::unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(crate::virtiofs::unescape_mountinfo(r"/a\\"), r"/a\\");
    }
}
