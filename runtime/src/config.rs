// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! The `/etc/vmrun/config.toml` model: defaults for every sandbox, where the guest artifacts and
//! host daemons are, and which `io.vmrun.*` OCI annotations may override a setting per container.
//!
//! Trust boundary: the config file is written by the host administrator and trusted. Annotations
//! come from whoever wrote the OCI spec (a container image, a Kubernetes pod spec) and are not:
//! they are checked against [`Config::allowed_annotations`] and every value is validated, and no
//! annotation can ever name a host path or binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the host configuration lives unless `VMRUN_CONFIG` names another file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmrun/config.toml";
/// Where `scripts/setup` installs the guest artifacts (`vmlinux`, `bzImage`, `initramfs.cpio`).
pub const DEFAULT_ARTIFACTS_DIR: &str = "/usr/local/share/vmrun";
/// Environment variable overriding the artifact directory (tests point it at `target/artifacts`).
pub const ARTIFACTS_ENV: &str = "VMRUN_ARTIFACTS";
/// Environment variable overriding the config file path.
pub const CONFIG_ENV: &str = "VMRUN_CONFIG";
/// Prefix of the OCI annotations that override sandbox settings.
pub const ANNOTATION_PREFIX: &str = "io.vmrun.";
/// Highest vCPU count a sandbox may ask for.
pub const MAX_VCPUS: u32 = 64;
/// Smallest guest memory the guest kernel and agent boot in.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Largest guest memory a sandbox may ask for (1 TiB).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;

/// Errors from loading the config or applying annotations.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file exists but could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this model.
    #[error("invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error (names the line and key).
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range or otherwise unusable.
    #[error("invalid setting {key} = {value:?}: {reason}")]
    Invalid {
        /// The setting's name.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `io.vmrun.*` annotation that vmrun does not know.
    #[error("unknown annotation {0} (known: {known})", known = ANNOTATION_KEYS.join(", "))]
    UnknownAnnotation(String),
    /// A known annotation that the host's config does not allow.
    #[error("annotation {0} is not allowed by the host config (allowed_annotations)")]
    AnnotationNotAllowed(String),
}

/// Which hypervisor runs the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// Pick by capability (see [`crate::hypervisor::select`]).
    #[default]
    Auto,
    /// vmrun's own VMM.
    VmrunVmm,
    /// QEMU's `microvm` machine.
    Qemu,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "vmrun-vmm" => Ok(Self::VmrunVmm),
            "qemu" => Ok(Self::Qemu),
            _ => Err("expected auto, vmrun-vmm or qemu".to_owned()),
        }
    }
}

/// Which QEMU accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM on hardware KVM, TCG otherwise.
    #[default]
    Auto,
    /// `-accel kvm -cpu host`.
    Kvm,
    /// `-accel tcg -cpu max` (software CPU; works everywhere).
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            _ => Err("expected auto, kvm or tcg".to_owned()),
        }
    }
}

/// The settings of one sandbox (VM): the `[sandbox]` table, possibly overridden by annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// Hypervisor backend.
    pub backend: BackendChoice,
    /// QEMU accelerator.
    pub qemu_accel: AccelChoice,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Extra guest kernel command-line words (appended after vmrun's own).
    pub kernel_params: String,
    /// Verbose guest console (no `quiet`) and debug-level agent logs.
    pub debug_console: bool,
    /// How long the agent may take to answer after the hypervisor starts.
    pub boot_timeout_secs: u32,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            qemu_accel: AccelChoice::Auto,
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            debug_console: false,
            boot_timeout_secs: 30,
        }
    }
}

impl SandboxSettings {
    /// The boot timeout as a [`Duration`].
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.boot_timeout_secs))
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, reason: &str| ConfigError::Invalid {
            key: key.to_owned(),
            value,
            reason: reason.to_owned(),
        };
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(invalid("vcpus", self.vcpus.to_string(), "must be 1..=64"));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(invalid(
                "memory_mib",
                self.memory_mib.to_string(),
                "must be 64..=1048576",
            ));
        }
        if self.boot_timeout_secs == 0 || self.boot_timeout_secs > 3600 {
            return Err(invalid(
                "boot_timeout_secs",
                self.boot_timeout_secs.to_string(),
                "must be 1..=3600",
            ));
        }
        validate_kernel_params(&self.kernel_params)
    }
}

/// Extra kernel words must be plain printable ASCII words: the command line is limited and
/// parsed by the guest kernel, and a newline or NUL would cut it.
fn validate_kernel_params(params: &str) -> Result<(), ConfigError> {
    if params.len() > 1024 {
        return Err(ConfigError::Invalid {
            key: "kernel_params".to_owned(),
            value: params.to_owned(),
            reason: "longer than 1024 bytes".to_owned(),
        });
    }
    if let Some(c) = params
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' '))
    {
        return Err(ConfigError::Invalid {
            key: "kernel_params".to_owned(),
            value: params.to_owned(),
            reason: format!("contains {c:?}; only printable ASCII words are allowed"),
        });
    }
    Ok(())
}

/// Paths of guest artifacts; unset means "look in the artifact directory".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ArtifactPaths {
    /// Guest kernel for `vmrun-vmm` (ELF `vmlinux`).
    pub kernel: Option<PathBuf>,
    /// Guest kernel for QEMU (`bzImage`).
    pub qemu_kernel: Option<PathBuf>,
    /// Initramfs with the agent as `/init`.
    pub initrd: Option<PathBuf>,
}

/// Host programs; a bare name is looked up (see [`Config::binary`]), a path is used as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BinaryPaths {
    /// QEMU system emulator.
    pub qemu: String,
    /// vmrun's VMM.
    pub vmrun_vmm: String,
    /// virtio-fs daemon.
    pub virtiofsd: String,
    /// vhost-user vsock daemon (QEMU backend).
    pub vhost_device_vsock: String,
}

impl Default for BinaryPaths {
    fn default() -> Self {
        Self {
            qemu: "qemu-system-x86_64".to_owned(),
            vmrun_vmm: "vmrun-vmm".to_owned(),
            virtiofsd: "virtiofsd".to_owned(),
            vhost_device_vsock: "vhost-device-vsock".to_owned(),
        }
    }
}

/// The whole host configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Per-sandbox defaults.
    pub sandbox: SandboxSettings,
    /// Guest artifacts.
    pub artifacts: ArtifactPaths,
    /// Host programs.
    pub binaries: BinaryPaths,
    /// Annotation keys (without the `io.vmrun.` prefix) that may override `[sandbox]` settings.
    pub allowed_annotations: Vec<String>,
    /// Host cgroups of the sandbox's processes.
    pub host_cgroup: HostCgroupSettings,
}

/// Default hypervisor and daemon allowance above guest RAM (see docs/cli.md for how it was
/// measured with QEMU/TCG).
pub const DEFAULT_HOST_OVERHEAD_MIB: u32 = 384;

/// `[host_cgroup]`: where the sandbox's host processes go (see [`crate::cgroups`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostCgroupSettings {
    /// Put the monitor, hypervisor and daemons into the spec's `linux.cgroupsPath`.
    pub enabled: bool,
    /// MiB the host memory limit allows above the guest RAM (hypervisor, TCG translation
    /// cache, virtiofsd, vhost-device-vsock, the monitor).
    pub overhead_mib: u32,
}

impl Default for HostCgroupSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            overhead_mib: DEFAULT_HOST_OVERHEAD_MIB,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sandbox: SandboxSettings::default(),
            artifacts: ArtifactPaths::default(),
            binaries: BinaryPaths::default(),
            allowed_annotations: ["vcpus", "memory_mib", "debug_console", "boot_timeout_secs"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            host_cgroup: HostCgroupSettings::default(),
        }
    }
}

/// Every annotation key vmrun understands (without the prefix).
pub const ANNOTATION_KEYS: &[&str] = &[
    "backend",
    "qemu_accel",
    "vcpus",
    "memory_mib",
    "kernel_params",
    "debug_console",
    "boot_timeout_secs",
];

impl Config {
    /// Parses a config from TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The config file in use: `$VMRUN_CONFIG`, else [`DEFAULT_CONFIG_PATH`].
    pub fn default_path() -> PathBuf {
        std::env::var_os(CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }

    /// Loads [`Config::default_path`].
    pub fn load_default() -> Result<Self, ConfigError> {
        Self::load(&Self::default_path())
    }

    /// Checks the values and the allow-list.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.sandbox.validate()?;
        if !(32..=65_536).contains(&self.host_cgroup.overhead_mib) {
            return Err(ConfigError::Invalid {
                key: "host_cgroup.overhead_mib".to_owned(),
                value: self.host_cgroup.overhead_mib.to_string(),
                reason: "must be 32..=65536".to_owned(),
            });
        }
        for key in &self.allowed_annotations {
            if !ANNOTATION_KEYS.contains(&key.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "allowed_annotations".to_owned(),
                    value: key.clone(),
                    reason: format!(
                        "not an annotation key (known: {})",
                        ANNOTATION_KEYS.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// The settings for one sandbox: `[sandbox]` with the spec's `io.vmrun.*` annotations applied.
    ///
    /// Annotations outside the `io.vmrun.` prefix are ignored; an unknown `io.vmrun.` key, a key
    /// not in `allowed_annotations` or an invalid value is an error (never silently dropped).
    pub fn sandbox_settings(
        &self,
        annotations: &BTreeMap<String, String>,
    ) -> Result<SandboxSettings, ConfigError> {
        let mut s = self.sandbox.clone();
        for (full_key, value) in annotations {
            let Some(key) = full_key.strip_prefix(ANNOTATION_PREFIX) else {
                continue;
            };
            if !ANNOTATION_KEYS.contains(&key) {
                return Err(ConfigError::UnknownAnnotation(full_key.clone()));
            }
            if !self.allowed_annotations.iter().any(|a| a == key) {
                return Err(ConfigError::AnnotationNotAllowed(full_key.clone()));
            }
            let invalid = |reason: String| ConfigError::Invalid {
                key: full_key.clone(),
                value: value.clone(),
                reason,
            };
            match key {
                "backend" => s.backend = value.parse().map_err(invalid)?,
                "qemu_accel" => s.qemu_accel = value.parse().map_err(invalid)?,
                "vcpus" => s.vcpus = value.parse().map_err(|e| invalid(format!("{e}")))?,
                "memory_mib" => {
                    s.memory_mib = value.parse().map_err(|e| invalid(format!("{e}")))?;
                }
                "kernel_params" => s.kernel_params = value.clone(),
                "debug_console" => {
                    s.debug_console = value.parse().map_err(|e| invalid(format!("{e}")))?;
                }
                "boot_timeout_secs" => {
                    s.boot_timeout_secs = value.parse().map_err(|e| invalid(format!("{e}")))?;
                }
                _ => return Err(ConfigError::UnknownAnnotation(full_key.clone())),
            }
        }
        s.validate().map_err(|e| match e {
            ConfigError::Invalid { key, value, reason } => ConfigError::Invalid {
                key: format!("{ANNOTATION_PREFIX}{key}"),
                value,
                reason,
            },
            other => other,
        })?;
        Ok(s)
    }

    /// The artifact directory: `$VMRUN_ARTIFACTS`, else [`DEFAULT_ARTIFACTS_DIR`].
    pub fn artifacts_dir() -> PathBuf {
        std::env::var_os(ARTIFACTS_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ARTIFACTS_DIR))
    }

    /// A guest artifact: the configured path if set, else `<artifacts dir>/<default_name>`.
    pub fn artifact(&self, configured: Option<&Path>, default_name: &str) -> PathBuf {
        configured.map_or_else(
            || Self::artifacts_dir().join(default_name),
            Path::to_path_buf,
        )
    }

    /// The `vmlinux` for `vmrun-vmm`.
    pub fn kernel_path(&self) -> PathBuf {
        self.artifact(self.artifacts.kernel.as_deref(), "vmlinux")
    }

    /// The `bzImage` for QEMU.
    pub fn qemu_kernel_path(&self) -> PathBuf {
        self.artifact(self.artifacts.qemu_kernel.as_deref(), "bzImage")
    }

    /// The initramfs.
    pub fn initrd_path(&self) -> PathBuf {
        self.artifact(self.artifacts.initrd.as_deref(), "initramfs.cpio")
    }

    /// Resolves a host program: a value containing `/` is used as is; a bare name is looked up
    /// in `$VMRUN_ARTIFACTS` (when set: the test set-up links the daemons there), then `PATH`,
    /// then `/usr/local/bin`. `None` if it is nowhere.
    pub fn binary(&self, configured: &str) -> Option<PathBuf> {
        if configured.contains('/') {
            let p = PathBuf::from(configured);
            return is_executable(&p).then_some(p);
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(a) = std::env::var_os(ARTIFACTS_ENV) {
            dirs.push(PathBuf::from(a));
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.push(PathBuf::from("/usr/local/bin"));
        dirs.into_iter()
            .map(|d| d.join(configured))
            .find(|p| is_executable(p))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn shipped_config_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg = Config::from_toml(&text, &path).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn missing_file_gives_defaults_and_bad_toml_names_the_file() {
        let cfg = Config::load(Path::new("/nonexistent/vmrun.toml")).unwrap();
        assert_eq!(cfg, Config::default());
        let err =
            Config::from_toml("[sandbox]\nvcpus = \"two\"\n", Path::new("/x.toml")).unwrap_err();
        assert!(err.to_string().contains("/x.toml"), "{err}");
        let err = Config::from_toml("[sandbox]\nbogus = 1\n", Path::new("/x.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        let err = Config::from_toml("[sandbox]\nvcpus = 0\n", Path::new("/x.toml")).unwrap_err();
        assert!(err.to_string().contains("vcpus"), "{err}");
        let err = Config::from_toml("[sandbox]\nbackend = \"xen\"\n", Path::new("/x.toml"));
        assert!(err.is_err());
    }

    #[test]
    fn annotations_override_only_what_is_allowed() {
        let cfg = Config::default();
        let s = cfg
            .sandbox_settings(&ann(&[
                ("io.vmrun.vcpus", "2"),
                ("io.vmrun.memory_mib", "512"),
                ("io.kubernetes.cri.container-type", "sandbox"),
            ]))
            .unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (2, 512));

        let err = cfg
            .sandbox_settings(&ann(&[("io.vmrun.backend", "qemu")]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::AnnotationNotAllowed(_)), "{err}");
        let err = cfg
            .sandbox_settings(&ann(&[("io.vmrun.kernel", "/evil")]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::UnknownAnnotation(_)), "{err}");
        let err = cfg
            .sandbox_settings(&ann(&[("io.vmrun.vcpus", "lots")]))
            .unwrap_err();
        assert!(err.to_string().contains("io.vmrun.vcpus"), "{err}");
        let err = cfg
            .sandbox_settings(&ann(&[("io.vmrun.memory_mib", "1")]))
            .unwrap_err();
        assert!(err.to_string().contains("io.vmrun.memory_mib"), "{err}");

        let open = Config {
            allowed_annotations: ANNOTATION_KEYS.iter().map(|k| (*k).to_owned()).collect(),
            ..Config::default()
        };
        let s = open
            .sandbox_settings(&ann(&[
                ("io.vmrun.backend", "qemu"),
                ("io.vmrun.qemu_accel", "tcg"),
            ]))
            .unwrap();
        assert_eq!(
            (s.backend, s.qemu_accel),
            (BackendChoice::Qemu, AccelChoice::Tcg)
        );
        let err = open
            .sandbox_settings(&ann(&[("io.vmrun.kernel_params", "a\nb")]))
            .unwrap_err();
        assert!(err.to_string().contains("kernel_params"), "{err}");
    }

    #[test]
    fn allow_list_must_name_known_keys() {
        let err =
            Config::from_toml("allowed_annotations = [\"kernel\"]\n", Path::new("/x")).unwrap_err();
        assert!(err.to_string().contains("allowed_annotations"), "{err}");
    }

    #[test]
    fn binary_lookup_uses_paths_as_given() {
        let cfg = Config::default();
        assert_eq!(cfg.binary("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(cfg.binary("/nonexistent/qemu"), None);
        assert!(cfg.binary("sh").is_some());
        assert_eq!(cfg.binary("definitely-not-a-program-vmrun"), None);
    }
}
