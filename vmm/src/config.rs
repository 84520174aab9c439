// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! VM configuration: plain serde data plus [`VmConfig::validate`].
//!
//! The same struct is filled from the command line (`main.rs`) or read from a JSON file
//! (`--config FILE.json`); live objects never parse user input themselves.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Maximum number of vCPUs (the MP table and the APIC id layout are sized for it).
pub const MAX_VCPUS: u8 = 32;
/// Smallest accepted guest memory size in MiB.
pub const MIN_MEMORY_MIB: u64 = 8;
/// Largest accepted guest memory size in MiB (1 TiB); the host check comes on top.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Maximum number of virtio-mmio devices (the MMIO window and the IOAPIC pins 5..=23).
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// The lowest CID a guest may use (0, 1 and 2 are reserved by virtio-vsock).
pub const MIN_GUEST_CID: u64 = 3;
/// Default guest CID (the project's contract).
pub const DEFAULT_GUEST_CID: u64 = 3;
/// Kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodule";

/// Errors from reading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The JSON file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The JSON file is not a valid configuration.
    #[error("invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A field has a value outside its range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Field name as in the JSON file.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A `--block` argument could not be parsed.
    #[error("invalid block device spec {spec:?}: {reason}")]
    BlockSpec {
        /// The argument as given.
        spec: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A `--fs` argument could not be parsed.
    #[error("invalid fs spec {spec:?}: {reason}")]
    FsSpec {
        /// The argument as given.
        spec: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A `--net` argument could not be parsed.
    #[error("invalid net spec {spec:?}: {reason}")]
    NetSpec {
        /// The argument as given.
        spec: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A `--serial` argument could not be parsed.
    #[error("invalid serial output {0:?}: expected stdout, none or a file path")]
    Serial(String),
}

/// Where the guest's COM1 output goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SerialOutput {
    /// The VMM's stdout (flushed per write).
    Stdout,
    /// Discarded.
    None,
    /// Appended to a file (created if missing).
    File(PathBuf),
}

impl FromStr for SerialOutput {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "none" => Ok(Self::None),
            "" => Err(ConfigError::Serial(s.to_string())),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

impl TryFrom<String> for SerialOutput {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SerialOutput> for String {
    fn from(s: SerialOutput) -> Self {
        match s {
            SerialOutput::Stdout => "stdout".to_string(),
            SerialOutput::None => "none".to_string(),
            SerialOutput::File(p) => p.to_string_lossy().into_owned(),
        }
    }
}

/// A virtio-vsock device with the Firecracker-compatible hybrid Unix-socket back-end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The Unix socket the VMM listens on for host-initiated connections; guest-initiated
    /// connections to CID 2 port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// The guest's context id.
    #[serde(default = "default_cid")]
    pub guest_cid: u64,
}

fn default_cid() -> u64 {
    DEFAULT_GUEST_CID
}

/// A file-backed virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// Backing file or block device.
    pub path: PathBuf,
    /// Offer `VIRTIO_BLK_F_RO` and refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// Device id returned by `VIRTIO_BLK_T_GET_ID` (at most 20 bytes); defaults to the file name.
    #[serde(default)]
    pub id: Option<String>,
}

impl FromStr for BlockConfig {
    type Err = ConfigError;

    /// Parses `PATH[,ro][,id=ID]`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason| ConfigError::BlockSpec {
            spec: spec.to_string(),
            reason,
        };
        let mut parts = spec.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(err("empty path"))?;
        let mut cfg = BlockConfig {
            path: PathBuf::from(path),
            read_only: false,
            id: None,
        };
        for part in parts {
            if part == "ro" {
                cfg.read_only = true;
            } else if let Some(id) = part.strip_prefix("id=") {
                cfg.id = Some(id.to_string());
            } else {
                return Err(err("unknown option (expected ro or id=ID)"));
            }
        }
        Ok(cfg)
    }
}

/// A virtio-fs device served by a vhost-user back-end (virtiofsd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The back-end's vhost-user socket (virtiofsd `--socket-path`).
    pub socket: PathBuf,
    /// The mount tag the guest uses (1..=36 bytes).
    pub tag: String,
}

impl FromStr for FsConfig {
    type Err = ConfigError;

    /// Parses `SOCKET,tag=TAG`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason| ConfigError::FsSpec {
            spec: spec.to_string(),
            reason,
        };
        let (socket, rest) = spec.split_once(',').ok_or(err("expected SOCKET,tag=TAG"))?;
        let tag = rest.strip_prefix("tag=").ok_or(err("expected tag=TAG"))?;
        if socket.is_empty() {
            return Err(err("empty socket path"));
        }
        Ok(Self {
            socket: PathBuf::from(socket),
            tag: tag.to_string(),
        })
    }
}

/// A virtio-net device on a tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap interface to open (created if missing).
    #[serde(default)]
    pub tap: Option<String>,
    /// An already open tap fd inherited from the parent (exclusive with `tap`).
    #[serde(default)]
    pub fd: Option<i32>,
    /// Guest MAC address `aa:bb:cc:dd:ee:ff`; default `02:00:00:00:00:0N` for the N-th device.
    #[serde(default)]
    pub mac: Option<String>,
}

impl FromStr for NetConfig {
    type Err = ConfigError;

    /// Parses `tap=NAME[,mac=MAC]` or `fd=N[,mac=MAC]`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason| ConfigError::NetSpec {
            spec: spec.to_string(),
            reason,
        };
        let mut cfg = NetConfig {
            tap: None,
            fd: None,
            mac: None,
        };
        for part in spec.split(',') {
            if let Some(t) = part.strip_prefix("tap=") {
                cfg.tap = Some(t.to_string());
            } else if let Some(f) = part.strip_prefix("fd=") {
                cfg.fd = Some(f.parse().map_err(|_| err("fd is not a number"))?);
            } else if let Some(m) = part.strip_prefix("mac=") {
                cfg.mac = Some(m.to_string());
            } else {
                return Err(err("expected tap=NAME or fd=N, and optionally mac=MAC"));
            }
        }
        Ok(cfg)
    }
}

/// The unprivileged user the VMM switches to once the VM is built (`--user UID:GID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl FromStr for UserSpec {
    type Err = ConfigError;

    /// Parses `UID:GID` (numbers only: no name lookup happens in the VMM).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = || ConfigError::Invalid {
            field: "user",
            reason: format!("{spec:?} is not UID:GID (two numbers)"),
        };
        let (u, g) = spec.split_once(':').ok_or_else(err)?;
        Ok(Self {
            uid: u.parse().map_err(|_| err())?,
            gid: g.parse().map_err(|_| err())?,
        })
    }
}

/// Everything needed to build one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an ELF `vmlinux` (PVH note or 64-bit entry) or a `bzImage`.
    pub kernel: PathBuf,
    /// Optional initrd / initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `virtio_mmio.device=` words are appended by the VMM.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs, 1..=32.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Where COM1 output goes.
    #[serde(default = "default_serial")]
    pub serial: SerialOutput,
    /// Feed stdin to COM1: `None` = only when stdin is a TTY, `Some(true)` = also a pipe or file.
    #[serde(default)]
    pub serial_stdin: Option<bool>,
    /// Optional vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Block devices, in order.
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    /// Add a virtio-rng device.
    #[serde(default)]
    pub rng: bool,
    /// Optional virtio-fs device (vhost-user frontend).
    #[serde(default)]
    pub fs: Option<FsConfig>,
    /// virtio-net devices, in order.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// Optional API socket path (JSON requests, mode 0600).
    #[serde(default)]
    pub api_sock: Option<PathBuf>,
    /// Enter the kernel's 64-bit entry at CPL 3 (test-payload mode, see `docs/vmm.md`).
    #[serde(default)]
    pub test_payload: bool,
    /// Confine the VMM's threads with seccomp filters once the VM is built (JSON only).
    #[serde(default = "default_seccomp")]
    pub seccomp: bool,
    /// Switch to this user and group once `/dev/kvm`, the taps, files and sockets are open.
    #[serde(default)]
    pub user: Option<UserSpec>,
}

fn default_seccomp() -> bool {
    true
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_vcpus() -> u8 {
    1
}
fn default_memory() -> u64 {
    128
}
fn default_serial() -> SerialOutput {
    SerialOutput::Stdout
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            serial: default_serial(),
            serial_stdin: None,
            vsock: None,
            block: Vec::new(),
            rng: false,
            fs: None,
            net: Vec::new(),
            api_sock: None,
            test_payload: false,
            seccomp: default_seccomp(),
            user: None,
        }
    }

    /// Reads a JSON configuration file.
    pub fn from_json_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Number of virtio-mmio devices this configuration asks for.
    pub fn virtio_device_count(&self) -> usize {
        self.block.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng)
            + usize::from(self.fs.is_some())
            + self.net.len()
    }

    /// Checks ranges and consistency (not the existence of files: building reports those).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return invalid("vcpus", format!("{} is not in 1..={MAX_VCPUS}", self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return invalid(
                "memory_mib",
                format!(
                    "{} is not in {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                    self.memory_mib
                ),
            );
        }
        if self.virtio_device_count() > MAX_VIRTIO_DEVICES {
            return invalid(
                "block",
                format!("at most {MAX_VIRTIO_DEVICES} virtio devices are supported"),
            );
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < MIN_GUEST_CID || v.guest_cid > u64::from(u32::MAX) {
                return invalid(
                    "vsock.guest_cid",
                    format!("{} is reserved or too large", v.guest_cid),
                );
            }
            if v.uds_path.as_os_str().is_empty() {
                return invalid("vsock.uds_path", "empty path".to_string());
            }
        }
        for b in &self.block {
            if let Some(id) = &b.id {
                if id.len() > 20 {
                    return invalid("block.id", format!("{id:?} is longer than 20 bytes"));
                }
            }
        }
        if let Some(fs) = &self.fs {
            if fs.tag.is_empty() || fs.tag.len() > 36 {
                return invalid("fs.tag", format!("{:?} is not 1..=36 bytes", fs.tag));
            }
        }
        for n in &self.net {
            if n.tap.is_some() == n.fd.is_some() {
                return invalid("net", "give exactly one of tap and fd".to_string());
            }
            if let Some(m) = &n.mac {
                if crate::devices::virtio::net::parse_mac(m).is_none() {
                    return invalid("net.mac", format!("{m:?} is not aa:bb:cc:dd:ee:ff"));
                }
            }
        }
        if self.cmdline.contains('\0') {
            return invalid("cmdline", "contains a NUL byte".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_spec_parses_options() {
        let b: BlockConfig = "/tmp/x.img,ro,id=disk0".parse().unwrap();
        assert_eq!(b.path, PathBuf::from("/tmp/x.img"));
        assert!(b.read_only);
        assert_eq!(b.id.as_deref(), Some("disk0"));
        let b: BlockConfig = "/tmp/y".parse().unwrap();
        assert!(!b.read_only && b.id.is_none());
        assert!("".parse::<BlockConfig>().is_err());
        assert!("/x,rw".parse::<BlockConfig>().is_err());
    }

    #[test]
    fn fs_spec_parses() {
        let f: FsConfig = "/run/fs.sock,tag=vmrun".parse().unwrap();
        assert_eq!(f.socket, PathBuf::from("/run/fs.sock"));
        assert_eq!(f.tag, "vmrun");
        assert!("/run/fs.sock".parse::<FsConfig>().is_err());
        assert!(",tag=x".parse::<FsConfig>().is_err());
        let mut cfg = VmConfig::new("/k".into());
        cfg.fs = Some(FsConfig {
            socket: "/s".into(),
            tag: "x".repeat(37),
        });
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn net_spec_parses_and_validates() {
        let n: NetConfig = "tap=tap0,mac=02:00:00:00:00:09".parse().unwrap();
        assert_eq!(n.tap.as_deref(), Some("tap0"));
        assert_eq!(n.mac.as_deref(), Some("02:00:00:00:00:09"));
        let n: NetConfig = "fd=5".parse().unwrap();
        assert_eq!(n.fd, Some(5));
        assert!("fd=x".parse::<NetConfig>().is_err());
        assert!("eth0".parse::<NetConfig>().is_err());
        let mut cfg = VmConfig::new("/k".into());
        cfg.net.push("tap=a,fd=3".parse().unwrap());
        assert!(cfg.validate().is_err());
        cfg.net[0] = "tap=a,mac=zz".parse().unwrap();
        assert!(cfg.validate().is_err());
        cfg.net[0] = "tap=a".parse().unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn serial_output_parses() {
        assert_eq!(
            "stdout".parse::<SerialOutput>().unwrap(),
            SerialOutput::Stdout
        );
        assert_eq!("none".parse::<SerialOutput>().unwrap(), SerialOutput::None);
        assert_eq!(
            "/tmp/log".parse::<SerialOutput>().unwrap(),
            SerialOutput::File("/tmp/log".into())
        );
        assert!("".parse::<SerialOutput>().is_err());
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let cfg: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","vcpus":2,"serial":"none","block":[{"path":"/d","read_only":true}],
                "vsock":{"uds_path":"/v.sock"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.memory_mib, 128);
        assert_eq!(cfg.serial, SerialOutput::None);
        assert_eq!(cfg.vsock.as_ref().unwrap().guest_cid, DEFAULT_GUEST_CID);
        assert!(cfg.block[0].read_only);
        cfg.validate().unwrap();
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&text).unwrap(), cfg);
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","bogus":1}"#).is_err());
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let mut cfg = VmConfig::new("/k".into());
        cfg.vcpus = 0;
        assert!(cfg.validate().is_err());
        cfg.vcpus = 33;
        assert!(cfg.validate().is_err());
        cfg.vcpus = 32;
        cfg.validate().unwrap();
        cfg.memory_mib = 1;
        assert!(cfg.validate().is_err());
        cfg.memory_mib = 64;
        cfg.vsock = Some(VsockConfig {
            uds_path: "/v".into(),
            guest_cid: 2,
        });
        assert!(cfg.validate().is_err());
        cfg.vsock = None;
        cfg.block.push(BlockConfig {
            path: "/d".into(),
            read_only: false,
            id: Some("x".repeat(21)),
        });
        assert!(cfg.validate().is_err());
    }
}
