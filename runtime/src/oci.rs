// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! OCI bundles on the host: the default `config.json` of `vmrun spec`, loading and validating
//! a bundle before anything is created, and the guest's view of the spec.
//!
//! The spec is kept as JSON ([`serde_json::Value`]) and handed to the agent as JSON, so fields
//! this runtime does not interpret pass through untouched; the few fields the host needs are
//! parsed into [`SpecSummary`], which is where malformed input is caught.
//!
//! Trust: the bundle comes from the caller (root); it is validated so that mistakes give a
//! clear error before a VM is booted, not to defend against a hostile caller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

/// The bundle's spec file name.
pub const CONFIG_FILE: &str = "config.json";

/// Where the guest sees the share of container `id`'s files (the rootfs is `<this>/rootfs`).
pub fn guest_container_dir(id: &str) -> String {
    format!("/run/vmrun/shared/{id}")
}

/// Errors found in a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle directory does not exist or is not a directory.
    #[error("bundle {0} is not a directory")]
    NotADirectory(PathBuf),
    /// `config.json` is missing or unreadable.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or has fields of the wrong type.
    #[error("malformed {path}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// `config.json` lacks a field this runtime needs.
    #[error("invalid {path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The rootfs does not exist or is not a directory.
    #[error("rootfs {0} does not exist or is not a directory")]
    Rootfs(PathBuf),
    /// `spec` refuses to overwrite an existing file (as runc).
    #[error("file {0} exists: remove it first")]
    SpecExists(PathBuf),
    /// `spec` could not write the file.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `root` of the spec.
#[derive(Debug, Clone, Deserialize)]
pub struct Root {
    /// Path of the rootfs, absolute or relative to the bundle.
    pub path: PathBuf,
    /// Whether the rootfs is mounted read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// `process.user` of the spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Uid in the container.
    pub uid: u32,
    /// Gid in the container.
    pub gid: u32,
    /// Supplementary gids.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// File mode creation mask.
    #[serde(default)]
    pub umask: Option<u32>,
}

/// `process.consoleSize`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct ConsoleSize {
    /// Rows.
    pub height: u16,
    /// Columns.
    pub width: u16,
}

/// `process` of the spec (the fields the host checks).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Whether the process gets a terminal.
    #[serde(default)]
    pub terminal: bool,
    /// Initial console size.
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
    /// Credentials.
    pub user: User,
    /// Argument vector; must not be empty.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment (`KEY=value`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
}

/// The parts of an OCI spec the host needs, parsed with their types checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecSummary {
    /// The spec's version.
    pub oci_version: String,
    /// The rootfs.
    pub root: Option<Root>,
    /// The container's process.
    pub process: Option<Process>,
    /// Hostname in the container.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Annotations (`io.vmrun.*` ones tune the sandbox).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A loaded, validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// Absolute rootfs directory on the host.
    pub rootfs: PathBuf,
    /// The whole spec, as read.
    pub spec: Value,
    /// Its checked fields.
    pub summary: SpecSummary,
}

impl Bundle {
    /// Loads `<dir>/config.json` and checks it: JSON well-formed, field types right,
    /// `ociVersion`, `root.path` naming an existing directory, `process` with non-empty `args`
    /// and an absolute `cwd`. Nothing is created.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let dir = std::path::absolute(dir)
            .ok()
            .filter(|d| d.is_dir())
            .ok_or_else(|| BundleError::NotADirectory(dir.to_path_buf()))?;
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read(&path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        let spec: Value =
            serde_json::from_slice(&text).map_err(|source| BundleError::Malformed {
                path: path.clone(),
                source,
            })?;
        let summary: SpecSummary =
            serde_json::from_value(spec.clone()).map_err(|source| BundleError::Malformed {
                path: path.clone(),
                source,
            })?;
        let invalid = |what: &str| BundleError::Invalid {
            path: path.clone(),
            what: what.to_owned(),
        };
        if summary.oci_version.is_empty() {
            return Err(invalid("ociVersion is empty"));
        }
        let root = summary
            .root
            .as_ref()
            .ok_or_else(|| invalid("root is not set"))?;
        if root.path.as_os_str().is_empty() {
            return Err(invalid("root.path is empty"));
        }
        let process = summary
            .process
            .as_ref()
            .ok_or_else(|| invalid("process is not set"))?;
        if process.args.is_empty() || process.args[0].is_empty() {
            return Err(invalid("process.args must not be empty"));
        }
        if !process.cwd.starts_with('/') {
            return Err(invalid("process.cwd must be an absolute path"));
        }
        let rootfs = dir.join(&root.path);
        if !rootfs.is_dir() {
            return Err(BundleError::Rootfs(rootfs));
        }
        let rootfs = rootfs
            .canonicalize()
            .map_err(|_| BundleError::Rootfs(rootfs))?;
        Ok(Self {
            dir,
            rootfs,
            spec,
            summary,
        })
    }

    /// The container's process (present: checked by [`Bundle::load`]).
    pub fn process(&self) -> Option<&Process> {
        self.summary.process.as_ref()
    }

    /// Whether the process wants a terminal.
    pub fn terminal(&self) -> bool {
        self.process().is_some_and(|p| p.terminal)
    }

    /// Whether the rootfs is read-only.
    pub fn readonly(&self) -> bool {
        self.summary.root.as_ref().is_some_and(|r| r.readonly)
    }

    /// The path of the network namespace the spec joins (`linux.namespaces[type=network].path`),
    /// if any: the pod network the VM carries ([`crate::network`]).
    pub fn network_namespace_path(&self) -> Option<PathBuf> {
        self.spec
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)?
            .iter()
            .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))?
            .get("path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    /// The spec as the guest must see it: `root.path` points into the share
    /// ([`guest_container_dir`]`/rootfs`), and a network namespace joined by (host) path is
    /// dropped: the pod's interfaces live in the guest's root network namespace, which the
    /// container then shares. Everything else is unchanged.
    pub fn guest_spec(&self, id: &str) -> Value {
        let mut spec = self.spec.clone();
        if let Some(root) = spec.get_mut("root").and_then(Value::as_object_mut) {
            root.insert(
                "path".into(),
                Value::String(format!("{}/rootfs", guest_container_dir(id))),
            );
        }
        if let Some(nss) = spec
            .pointer_mut("/linux/namespaces")
            .and_then(Value::as_array_mut)
        {
            nss.retain(|ns| {
                !(ns.get("type").and_then(Value::as_str) == Some("network")
                    && ns
                        .get("path")
                        .and_then(Value::as_str)
                        .is_some_and(|p| !p.is_empty()))
            });
        }
        spec
    }
}

/// The default `config.json` of `vmrun spec`, like runc's: `sh` on a terminal, the default
/// mounts, masked and read-only paths, a small capability set, a read-only rootfs at `rootfs`.
pub fn default_spec() -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": crate::state::OCI_VERSION,
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "vmrun",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// Writes [`default_spec`] to `<dir>/config.json`, refusing to overwrite an existing file.
pub fn write_default_spec(dir: &Path) -> Result<PathBuf, BundleError> {
    use std::io::Write;
    let path = dir.join(CONFIG_FILE);
    let text = serde_json::to_vec_pretty(&default_spec()).map_err(|e| BundleError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(BundleError::SpecExists(path))
        }
        Err(source) => return Err(BundleError::Write { path, source }),
    };
    file.write_all(&text)
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|source| BundleError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const FIXTURES: &str = "/work/shared/fixtures/specs";

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vmrun-oci-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        dir
    }

    fn bundle_with(name: &str, spec: &Value) -> PathBuf {
        let dir = tempdir(name);
        fs::write(dir.join(CONFIG_FILE), serde_json::to_vec(spec).unwrap()).unwrap();
        dir
    }

    fn err_text(dir: &Path) -> String {
        let e = Bundle::load(dir).unwrap_err();
        let mut text = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            text.push_str(": ");
            text.push_str(&s.to_string());
            src = s.source();
        }
        text
    }

    #[test]
    fn default_spec_is_a_valid_bundle() {
        let dir = tempdir("default");
        write_default_spec(&dir).unwrap();
        let b = Bundle::load(&dir).unwrap();
        assert!(b.terminal());
        assert!(b.readonly());
        assert_eq!(b.process().unwrap().args, vec!["sh"]);
        assert_eq!(b.rootfs, dir.join("rootfs").canonicalize().unwrap());
        // A second `spec` refuses to overwrite.
        assert!(matches!(
            write_default_spec(&dir),
            Err(BundleError::SpecExists(_))
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_network_namespace_path_becomes_the_pod_network() {
        let mut spec = default_spec();
        let dir = bundle_with("netns-none", &spec);
        let b = Bundle::load(&dir).unwrap();
        assert_eq!(b.network_namespace_path(), None);
        // A new network namespace stays in the guest spec (loopback only).
        let nss = b.guest_spec("c")["linux"]["namespaces"].clone();
        assert!(nss
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
        fs::remove_dir_all(dir).unwrap();

        let nss = spec["linux"]["namespaces"].as_array_mut().unwrap();
        for ns in nss.iter_mut() {
            if ns["type"] == "network" {
                ns["path"] = json!("/run/netns/pod");
            }
        }
        let dir = bundle_with("netns-path", &spec);
        let b = Bundle::load(&dir).unwrap();
        assert_eq!(
            b.network_namespace_path(),
            Some(PathBuf::from("/run/netns/pod"))
        );
        let g = b.guest_spec("c");
        let nss = g["linux"]["namespaces"].as_array().unwrap();
        assert!(!nss.iter().any(|n| n["type"] == "network"), "{nss:?}");
        assert!(nss.iter().any(|n| n["type"] == "pid"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn fixture_specs_load() {
        let Ok(entries) = fs::read_dir(FIXTURES) else {
            println!("skipped: {FIXTURES} not present");
            return;
        };
        let mut n = 0;
        for e in entries {
            let path = e.unwrap().path();
            let spec: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            let summary: SpecSummary = serde_json::from_value(spec.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!summary.process.as_ref().unwrap().args.is_empty());
            // With a local rootfs, each loads as a bundle and the guest path is rewritten.
            let mut spec = spec;
            spec["root"]["path"] = json!("rootfs");
            let dir = bundle_with(&format!("fx{n}"), &spec);
            let b = Bundle::load(&dir).unwrap();
            let g = b.guest_spec("cid");
            assert_eq!(g["root"]["path"], "/run/vmrun/shared/cid/rootfs");
            assert_eq!(g["process"], spec["process"]);
            fs::remove_dir_all(dir).unwrap();
            n += 1;
        }
        assert!(n >= 5, "expected the five fixture specs, found {n}");
    }

    #[test]
    fn malformed_json() {
        let dir = tempdir("malformed");
        fs::write(dir.join(CONFIG_FILE), b"{\"ociVersion\": \"1.0.2\",").unwrap();
        let text = err_text(&dir);
        assert!(text.starts_with("malformed "), "{text}");
        assert!(text.contains("line 1"), "{text}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wrong_types() {
        let mut spec = default_spec();
        spec["process"]["user"]["uid"] = json!("root");
        let dir = bundle_with("types", &spec);
        assert!(matches!(
            Bundle::load(&dir),
            Err(BundleError::Malformed { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_config() {
        let dir = tempdir("noconfig");
        assert!(matches!(Bundle::load(&dir), Err(BundleError::Read { .. })));
        assert!(matches!(
            Bundle::load(&dir.join("nothere")),
            Err(BundleError::NotADirectory(_))
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_args() {
        for args in [json!(null), json!([]), json!([""])] {
            let mut spec = default_spec();
            if args.is_null() {
                spec["process"].as_object_mut().unwrap().remove("args");
            } else {
                spec["process"]["args"] = args;
            }
            let dir = bundle_with("args", &spec);
            let text = err_text(&dir);
            assert!(text.contains("process.args must not be empty"), "{text}");
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn missing_process_root_cwd() {
        let mut spec = default_spec();
        spec.as_object_mut().unwrap().remove("process");
        let dir = bundle_with("noproc", &spec);
        assert!(err_text(&dir).contains("process is not set"));
        fs::remove_dir_all(dir).unwrap();

        let mut spec = default_spec();
        spec.as_object_mut().unwrap().remove("root");
        let dir = bundle_with("noroot", &spec);
        assert!(err_text(&dir).contains("root is not set"));
        fs::remove_dir_all(dir).unwrap();

        let mut spec = default_spec();
        spec["process"]["cwd"] = json!("relative");
        let dir = bundle_with("cwd", &spec);
        assert!(err_text(&dir).contains("absolute"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_rootfs() {
        let mut spec = default_spec();
        spec["root"]["path"] = json!("nope");
        let dir = bundle_with("rootfs", &spec);
        let text = err_text(&dir);
        assert!(
            text.starts_with("rootfs ") && text.contains("does not exist"),
            "{text}"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
