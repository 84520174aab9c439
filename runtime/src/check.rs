// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun check`: can this host run vmrun sandboxes, and how (like `kata-runtime check`).
//!
//! Reports KVM presence and kind (hardware, PVM, none; probed with a real `KVM_CREATE_VM`),
//! the backend `auto` selects and why, the guest artifacts with their sha256, the helper
//! programs with their versions, and `/dev/net/tun`. Every missing piece is a failed item with
//! the fix; the CLI exits non-zero when any item failed. With `--boot` it also boots a
//! throw-away sandbox on the selected backend, calls Check/Version on the agent, prints the
//! agent version and the boot-to-ready time, and tears the sandbox down.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError};
use crate::hypervisor::{self, probe_kvm, HypervisorBinaries, KvmKind, Requirements};
use crate::sandbox::{Sandbox, SandboxConfig};

/// Options of `vmrun check`.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The config file (None: `$VMRUN_CONFIG` or `/etc/vmrun/config.toml`).
    pub config_path: Option<PathBuf>,
    /// Also boot a throw-away sandbox.
    pub boot: bool,
    /// Where the throw-away sandbox's state directory goes (`--boot`).
    pub root_dir: PathBuf,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            config_path: None,
            boot: false,
            root_dir: PathBuf::from("/run/vmrun"),
        }
    }
}

/// The outcome of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Works, with a caveat (e.g. TCG instead of KVM).
    Warn,
    /// Missing or broken: sandboxes cannot run until it is fixed.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    /// What was checked.
    pub name: String,
    /// The outcome.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// How to fix it, for `Warn` and `Fail`.
    pub fix: Option<String>,
}

/// The result of the boot test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootResult {
    /// The backend it ran on.
    pub backend: String,
    /// The agent's version string.
    pub agent_version: String,
    /// The agent's API version.
    pub api_version: u32,
    /// The guest kernel release.
    pub kernel_release: String,
    /// Hypervisor start to the agent's Version answer.
    pub boot_to_ready: Duration,
    /// Guest time from kernel start to the agent listening, as the agent reports it.
    pub guest_ready_ms: u64,
    /// Self-check items that failed in the guest.
    pub failed_self_checks: Vec<String>,
    /// How the sandbox stopped.
    pub stop: String,
}

/// Everything `vmrun check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The items, in order.
    pub items: Vec<CheckItem>,
    /// The boot test, with `--boot` (None if not asked for or not attempted).
    pub boot: Option<BootResult>,
}

impl CheckReport {
    /// True when nothing failed (the CLI's exit status 0).
    pub fn ok(&self) -> bool {
        self.items.iter().all(|i| i.status != CheckStatus::Fail)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.items {
            let tag = match i.status {
                CheckStatus::Ok => "ok  ",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "FAIL",
            };
            writeln!(f, "[{tag}] {}: {}", i.name, i.detail)?;
            if let Some(fix) = &i.fix {
                writeln!(f, "       fix: {fix}")?;
            }
        }
        if let Some(b) = &self.boot {
            writeln!(
                f,
                "boot: agent {} (API {}) on {}, guest kernel {}: ready in {} ms (guest: {} ms since kernel start); stop: {}",
                b.agent_version,
                b.api_version,
                b.backend,
                b.kernel_release,
                b.boot_to_ready.as_millis(),
                b.guest_ready_ms,
                b.stop
            )?;
            if !b.failed_self_checks.is_empty() {
                writeln!(
                    f,
                    "boot: guest self-check failures: {}",
                    b.failed_self_checks.join("; ")
                )?;
            }
        }
        let failed = self
            .items
            .iter()
            .filter(|i| i.status == CheckStatus::Fail)
            .count();
        if failed == 0 {
            write!(f, "vmrun check: this host can run vmrun sandboxes")
        } else {
            write!(
                f,
                "vmrun check: {failed} problem(s) found; see the fixes above"
            )
        }
    }
}

/// Errors that stop the check itself (a broken config).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The config cannot be loaded.
    #[error("cannot load the vmrun config")]
    Config(#[from] ConfigError),
}

fn item(name: &str, status: CheckStatus, detail: String, fix: Option<&str>) -> CheckItem {
    CheckItem {
        name: name.to_owned(),
        status,
        detail,
        fix: fix.map(str::to_owned),
    }
}

/// Runs the checks (and the boot test with `opts.boot`). Never panics on a broken host: every
/// problem becomes a failed item.
pub async fn run_check(opts: &CheckOptions) -> Result<CheckReport, CheckError> {
    let config_path = opts
        .config_path
        .clone()
        .unwrap_or_else(Config::default_path);
    let config = Config::load(&config_path)?;
    let mut items = Vec::new();
    items.push(item(
        "config",
        CheckStatus::Ok,
        if config_path.exists() {
            format!("{} loaded", config_path.display())
        } else {
            format!("{} not present; built-in defaults", config_path.display())
        },
        None,
    ));

    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    items.push(if root {
        item(
            "privileges",
            CheckStatus::Ok,
            "running as root".to_owned(),
            None,
        )
    } else {
        item(
            "privileges",
            CheckStatus::Fail,
            "not root: the share's bind mounts and the daemons need root".to_owned(),
            Some("run vmrun as root"),
        )
    });

    let kvm = probe_kvm();
    items.push(match kvm.kind {
        KvmKind::Hardware => item("kvm", CheckStatus::Ok, format!("{}: {}", kvm.kind, kvm.detail), None),
        KvmKind::Pvm => item(
            "kvm",
            CheckStatus::Warn,
            format!("{}: {}", kvm.kind, kvm.detail),
            Some("none needed: sandboxes run on QEMU with TCG (slower); for vmrun-vmm use a VT-x/AMD-V host or a PVM-enabled guest kernel"),
        ),
        KvmKind::Missing => item(
            "kvm",
            CheckStatus::Warn,
            format!("none: {}", kvm.detail),
            Some("enable VT-x/AMD-V and load kvm_intel/kvm_amd for speed; sandboxes run on QEMU with TCG meanwhile"),
        ),
    });

    // Helper programs.
    let programs: [(&str, &str, &[&str]); 4] = [
        ("qemu", &config.binaries.qemu, &["--version"]),
        ("vmrun-vmm", &config.binaries.vmrun_vmm, &["--version"]),
        ("virtiofsd", &config.binaries.virtiofsd, &["--version"]),
        (
            "vhost-device-vsock",
            &config.binaries.vhost_device_vsock,
            &["--version"],
        ),
    ];
    let mut found = std::collections::BTreeMap::new();
    for (name, configured, args) in programs {
        let path = config.binary(configured);
        found.insert(name, path.clone());
        items.push(match path {
            Some(p) => item(
                name,
                CheckStatus::Ok,
                format!("{} ({})", p.display(), program_version(&p, args)),
                None,
            ),
            // vmrun-vmm is optional: only used on hardware KVM.
            None if name == "vmrun-vmm" => item(
                name,
                if kvm.kind == KvmKind::Hardware { CheckStatus::Warn } else { CheckStatus::Ok },
                format!("not installed (configured as {configured:?}); only used on hardware KVM"),
                (kvm.kind == KvmKind::Hardware).then_some("run scripts/setup to install vmrun-vmm"),
            ),
            None => item(
                name,
                CheckStatus::Fail,
                format!("not found (configured as {configured:?}; looked in $VMRUN_ARTIFACTS, PATH, /usr/local/bin)"),
                Some(match name {
                    "qemu" => "apt-get install qemu-system-x86",
                    "virtiofsd" => "cargo install --locked virtiofsd@1.14.0 (scripts/setup does it)",
                    _ => "cargo install --locked vhost-device-vsock@0.3.0 (scripts/setup does it)",
                }),
            ),
        });
    }

    // Backend selection for a typical container sandbox (with a share).
    let bins = HypervisorBinaries {
        qemu: found.get("qemu").cloned().flatten(),
        vmrun_vmm: found.get("vmrun-vmm").cloned().flatten(),
    };
    let selection = hypervisor::select(
        &config.sandbox,
        kvm.kind,
        &Requirements { shared_fs: true },
        &bins,
        &config.binaries.qemu,
        &config.binaries.vmrun_vmm,
    );
    let backend_name = match &selection {
        Ok(s) => {
            items.push(item(
                "backend",
                CheckStatus::Ok,
                format!("{} ({})", s.hypervisor.describe(), s.reason),
                None,
            ));
            Some(s.hypervisor.name())
        }
        Err(e) => {
            items.push(item(
                "backend",
                CheckStatus::Fail,
                e.to_string(),
                Some("install the missing program or change [sandbox] backend/qemu_accel in the config"),
            ));
            None
        }
    };

    // Guest artifacts.
    let kernel_name = if backend_name == Some("vmrun-vmm") {
        "kernel"
    } else {
        "kernel (bzImage)"
    };
    let kernel_path = if backend_name == Some("vmrun-vmm") {
        config.kernel_path()
    } else {
        config.qemu_kernel_path()
    };
    for (name, path) in [
        (kernel_name, kernel_path),
        ("initramfs", config.initrd_path()),
    ] {
        items.push(match file_digest(&path) {
            Ok((size, sha)) => item(
                name,
                CheckStatus::Ok,
                format!("{} ({size} bytes, sha256 {sha})", path.display()),
                None,
            ),
            Err(e) => item(
                name,
                CheckStatus::Fail,
                format!("{}: {e}", path.display()),
                Some("run scripts/setup (installs guest artifacts to /usr/local/share/vmrun), or set [artifacts] / VMRUN_ARTIFACTS"),
            ),
        });
    }

    items.push(tun_item());

    let mut report = CheckReport { items, boot: None };
    if opts.boot {
        if report.ok() {
            report.boot = boot_test(&config, &opts.root_dir, kvm.kind, &mut report.items).await;
        } else {
            report.items.push(item(
                "boot",
                CheckStatus::Fail,
                "not attempted: fix the problems above first".to_owned(),
                None,
            ));
        }
    }
    Ok(report)
}

/// Boots a throw-away sandbox; `None` (with a failed item) if it did not boot.
async fn boot_test(
    config: &Config,
    root_dir: &Path,
    kvm: KvmKind,
    items: &mut Vec<CheckItem>,
) -> Option<BootResult> {
    let id = format!("vmrun-check-{}", std::process::id());
    let mut cfg = SandboxConfig::new(&id, root_dir, config);
    cfg.shared_fs = true;
    cfg.kvm = Some(kvm);
    let mut result = BootResult {
        backend: String::new(),
        agent_version: String::new(),
        api_version: 0,
        kernel_release: String::new(),
        boot_to_ready: Duration::ZERO,
        guest_ready_ms: 0,
        failed_self_checks: Vec::new(),
        stop: String::new(),
    };
    let mut sandbox = match Sandbox::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            items.push(item(
                "boot",
                CheckStatus::Fail,
                crate::monitor::chain(&e),
                Some("see the console log named above"),
            ));
            return None;
        }
    };
    result.backend = sandbox.hypervisor().describe();
    result.boot_to_ready = sandbox.boot_to_ready().unwrap_or_default();
    if let Some(v) = sandbox.agent_version() {
        result.agent_version = v.agent_version.clone();
        result.api_version = v.api_version;
        result.kernel_release = v.kernel_release.clone();
    }
    let check = match sandbox.agent() {
        Ok(client) => client.check().await.map_err(|e| crate::monitor::chain(&e)),
        Err(e) => Err(crate::monitor::chain(&e)),
    };
    match check {
        Ok(c) => {
            result.guest_ready_ms = c.ready_ms;
            result.failed_self_checks = c
                .checks
                .iter()
                .filter(|i| !i.ok)
                .map(|i| format!("{}: {}", i.name, i.detail))
                .collect();
        }
        Err(e) => items.push(item(
            "boot",
            CheckStatus::Fail,
            format!("Check failed: {e}"),
            None,
        )),
    }
    result.stop = match sandbox.shutdown(Duration::from_secs(5)).await {
        Ok(r) => r.exit.to_string(),
        Err(e) => crate::monitor::chain(&e),
    };
    if result.failed_self_checks.is_empty() {
        items.push(item(
            "boot",
            CheckStatus::Ok,
            format!("agent ready in {} ms", result.boot_to_ready.as_millis()),
            None,
        ));
    } else {
        items.push(item(
            "boot",
            CheckStatus::Warn,
            format!(
                "the guest kernel lacks: {}",
                result.failed_self_checks.join("; ")
            ),
            Some("rebuild the guest kernel with guest-kernel/build-kernel.sh"),
        ));
    }
    Some(result)
}

fn tun_item() -> CheckItem {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata("/dev/net/tun") {
        Ok(m) if m.file_type().is_char_device() => item(
            "/dev/net/tun",
            CheckStatus::Ok,
            "present (pod networking)".to_owned(),
            None,
        ),
        Ok(_) => item(
            "/dev/net/tun",
            CheckStatus::Fail,
            "exists but is not a character device".to_owned(),
            Some("rm /dev/net/tun && mknod /dev/net/tun c 10 200"),
        ),
        Err(e) => item(
            "/dev/net/tun",
            CheckStatus::Fail,
            format!("missing ({e}); pod networking needs a tap device"),
            Some("modprobe tun (or mkdir -p /dev/net && mknod /dev/net/tun c 10 200)"),
        ),
    }
}

/// Size and sha256 (hex) of a file.
pub fn file_digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0_u8; 1 << 16];
    let mut size = 0_u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size = size.saturating_add(n as u64);
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, hex))
}

/// The first line of `program args` (its version), or why it could not be run.
fn program_version(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            let line = String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            if o.status.success() && !line.is_empty() {
                line
            } else {
                format!("version unknown: {} exited {}", program.display(), o.status)
            }
        }
        Err(e) => format!("cannot run: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256() {
        let dir = std::env::temp_dir().join(format!("vmrun-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x");
        std::fs::write(&f, b"abc").unwrap();
        let (size, sha) = file_digest(&f).unwrap();
        assert_eq!(size, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(file_digest(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn missing_artifacts_fail_with_a_fix() {
        let dir = std::env::temp_dir().join(format!("vmrun-check-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            "[artifacts]\nqemu_kernel = \"/nonexistent/bzImage\"\nkernel = \"/nonexistent/vmlinux\"\ninitrd = \"/nonexistent/i.cpio\"\n[binaries]\nvirtiofsd = \"/nonexistent/virtiofsd\"\n",
        )
        .unwrap();
        let report = run_check(&CheckOptions {
            config_path: Some(cfg),
            boot: true,
            root_dir: dir.clone(),
        })
        .await
        .unwrap();
        assert!(!report.ok());
        let text = report.to_string();
        assert!(
            text.contains("[FAIL] initramfs: /nonexistent/i.cpio"),
            "{text}"
        );
        assert!(text.contains("[FAIL] virtiofsd"), "{text}");
        assert!(text.contains("fix: run scripts/setup"), "{text}");
        assert!(text.contains("[FAIL] boot: not attempted"), "{text}");
        assert!(text.contains("[") && text.contains("kvm"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_broken_config_is_an_error() {
        let dir = std::env::temp_dir().join(format!("vmrun-check-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, "[sandbox]\nvcpus = -1\n").unwrap();
        let err = run_check(&CheckOptions {
            config_path: Some(cfg),
            ..CheckOptions::default()
        })
        .await
        .unwrap_err();
        assert!(matches!(err, CheckError::Config(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
