// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Hypervisor backends behind one trait, and the choice between them.
//!
//! A backend turns a [`VmSpec`] (kernel, initrd, command line, sizes, the files and sockets of
//! the sandbox directory) into the command line of one hypervisor process, says which helper
//! daemons it needs, and classifies the process's exit status (clean stop, guest crash, killed,
//! failed). It does not spawn anything itself: process management lives in
//! [`crate::sandbox`], so both backends get the same process groups, death signals and teardown.
//!
//! Two backends exist: [`vmm::VmrunVmm`] (vmrun's own VMM; fastest, but it needs a KVM that runs
//! stock Linux guests) and [`qemu::Qemu`] (QEMU's `microvm` machine with
//! KVM or TCG; vsock through `vhost-device-vsock`, virtio-fs through `virtiofsd`).
//! [`select`] picks one from the config and the host's capabilities, and says why.

pub mod qemu;
pub mod vmm;

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::config::{AccelChoice, BackendChoice, SandboxSettings};

/// The tag under which the sandbox's shared directory is exported over virtio-fs.
pub const SHARED_FS_TAG: &str = "vmrun";
pub use vmrun_protocol::{CLEAN_SHUTDOWN_CODE, EXIT_PORT};

/// Errors from backend selection and command building.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// A host program the backend needs is missing.
    #[error("{program} not found (configured as {configured:?}; install it or set [binaries] in the config)")]
    MissingBinary {
        /// What it is.
        program: &'static str,
        /// The configured name or path.
        configured: String,
    },
    /// The configured backend cannot run this sandbox.
    #[error("backend {backend} cannot run this sandbox: {reason}")]
    Unsupported {
        /// The backend.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// KVM was asked for and is not usable.
    #[error("KVM acceleration requested but {0}")]
    NoKvm(String),
}

/// How the host's `/dev/kvm` can run guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// VT-x/AMD-V: stock Linux guests run at native speed.
    Hardware,
    /// `kvm_pvm`: guest ring 3 runs natively, ring 0 is emulated; a stock Linux guest cannot run.
    Pvm,
    /// No usable `/dev/kvm`.
    Missing,
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hardware => "hardware (VT-x/AMD-V)",
            Self::Pvm => "PVM (kvm_pvm)",
            Self::Missing => "none",
        })
    }
}

/// The result of probing `/dev/kvm` with real ioctls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    /// The kind.
    pub kind: KvmKind,
    /// What was found, or why KVM is unusable (for `vmrun check`).
    pub detail: String,
}

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_API_VERSION: libc::c_int = 12;

/// Probes KVM: opens `/dev/kvm`, checks `KVM_GET_API_VERSION` and creates (and closes) a VM
/// with `KVM_CREATE_VM`; a loaded `kvm_pvm` module means PVM.
pub fn probe_kvm() -> KvmProbe {
    let missing = |detail: String| KvmProbe {
        kind: KvmKind::Missing,
        detail,
    };
    let dev = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(f) => f,
        Err(e) => return missing(format!("cannot open /dev/kvm: {e}")),
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only reads the fd, which is open.
    let api = unsafe { libc::ioctl(dev.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if api != KVM_API_VERSION {
        return missing(format!(
            "KVM_GET_API_VERSION returned {api}, expected {KVM_API_VERSION}"
        ));
    }
    // SAFETY: KVM_CREATE_VM with machine type 0 returns a new fd or -1; no memory is passed.
    let vm = unsafe { libc::ioctl(dev.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        let e = std::io::Error::last_os_error();
        return missing(format!("KVM_CREATE_VM failed: {e}"));
    }
    // SAFETY: `vm` was just returned by KVM_CREATE_VM, is valid and owned by nobody else.
    drop(unsafe { OwnedFd::from_raw_fd(vm) });
    if Path::new("/sys/module/kvm_pvm").exists() {
        KvmProbe {
            kind: KvmKind::Pvm,
            detail: "KVM_CREATE_VM works, but /dev/kvm is kvm_pvm: a stock Linux guest cannot run"
                .to_owned(),
        }
    } else {
        KvmProbe {
            kind: KvmKind::Hardware,
            detail: "KVM_CREATE_VM works (hardware virtualization)".to_owned(),
        }
    }
}

/// What a sandbox needs from its hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requirements {
    /// A virtio-fs share (container rootfs and volumes).
    pub shared_fs: bool,
}

/// Everything a backend needs to build its command line. Paths point into the sandbox
/// directory; the sockets named here are created by the sandbox before the hypervisor starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Guest kernel (already the right format for the backend).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Command-line words after the backend's own base words.
    pub extra_cmdline: Vec<String>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// File the serial console is written to.
    pub console_log: PathBuf,
    /// The hybrid-vsock Unix socket (`CONNECT <port>`); guest-initiated connections go to
    /// `<vsock_uds>_<port>`.
    pub vsock_uds: PathBuf,
    /// The vhost-user socket of the vsock daemon (QEMU backend).
    pub vhost_vsock_socket: PathBuf,
    /// The vhost-user socket of virtiofsd, when the sandbox has a share.
    pub virtiofs_socket: Option<PathBuf>,
    /// The VMM's API socket (vmrun-vmm).
    pub api_socket: PathBuf,
    /// Verbose guest console.
    pub debug_console: bool,
    /// virtio-net devices on taps whose fds the hypervisor inherits (pod networking).
    pub net: Vec<crate::network::NetSpec>,
}

impl VmSpec {
    /// The full guest kernel command line for a backend whose base words are `base`.
    pub fn cmdline(&self, base: &str) -> String {
        let mut words: Vec<&str> = base.split_whitespace().collect();
        if !self.debug_console {
            words.push("quiet");
        }
        words.extend(self.extra_cmdline.iter().map(String::as_str));
        words.join(" ")
    }
}

/// How a hypervisor process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The agent announced a clean shutdown on the exit port, then the guest reset.
    Clean,
    /// The guest reset or panicked without the announcement.
    Crashed,
    /// The hypervisor was killed by a signal (by us on teardown, or by someone else).
    Killed {
        /// The signal number.
        signal: i32,
    },
    /// The hypervisor failed (could not start, triple fault, internal error, other exit code).
    Failed {
        /// Its exit code.
        code: i32,
    },
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Clean => f.write_str("clean shutdown"),
            Self::Crashed => {
                f.write_str("guest crashed (reset without a clean-shutdown announcement)")
            }
            Self::Killed { signal } => write!(f, "hypervisor killed by signal {signal}"),
            Self::Failed { code } => write!(f, "hypervisor failed with exit code {code}"),
        }
    }
}

/// One hypervisor backend.
pub trait Hypervisor: fmt::Debug + Send + Sync {
    /// Its name as in the config (`qemu`, `vmrun-vmm`).
    fn name(&self) -> &'static str;
    /// A one-line description of how it runs (accelerator, CPU model).
    fn describe(&self) -> String;
    /// `Err(reason)` if it cannot give the sandbox what it needs.
    fn supports(&self, req: &Requirements) -> Result<(), String>;
    /// Whether the sandbox must start a `vhost-device-vsock` daemon for it.
    fn needs_vsock_daemon(&self) -> bool;
    /// The guest kernel it boots (a path from the config).
    fn kernel<'a>(&self, vmlinux: &'a Path, bzimage: &'a Path) -> &'a Path;
    /// The hypervisor command for `spec`; stdio and process attributes are set by the caller.
    fn command(&self, spec: &VmSpec) -> Command;
    /// The exit status of a clean stop (the agent's announcement on the exit port).
    fn clean_exit_code(&self) -> i32;
    /// Whether the taps it is given must carry the virtio-net header (`IFF_VNET_HDR`).
    fn tap_vnet_hdr(&self) -> bool {
        false
    }
    /// Classifies the process's exit status.
    fn classify_exit(&self, status: ExitStatus) -> VmExit {
        classify(status, self.clean_exit_code())
    }
}

/// Shared exit classification: `clean` is the status of a clean stop, a reset without
/// announcement exits 0.
pub(crate) fn classify(status: ExitStatus, clean: i32) -> VmExit {
    match (status.code(), status.signal()) {
        (Some(c), _) if c == clean => VmExit::Clean,
        (Some(0), _) => VmExit::Crashed,
        (Some(code), _) => VmExit::Failed { code },
        (None, Some(signal)) => VmExit::Killed { signal },
        (None, None) => VmExit::Failed { code: -1 },
    }
}

/// The outcome of [`select`]: the backend and why it was chosen.
#[derive(Debug)]
pub struct Selection {
    /// The backend.
    pub hypervisor: Box<dyn Hypervisor>,
    /// Why, in one sentence (printed by `vmrun check` and logged at sandbox start).
    pub reason: String,
}

/// Paths of the hypervisor programs, resolved by the caller from the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HypervisorBinaries {
    /// `qemu-system-x86_64`, if found.
    pub qemu: Option<PathBuf>,
    /// `vmrun-vmm`, if found.
    pub vmrun_vmm: Option<PathBuf>,
}

/// Picks the backend for a sandbox.
///
/// `auto`: `vmrun-vmm` only on hardware KVM and only if it supports everything the sandbox
/// needs; else QEMU with KVM on hardware KVM; else QEMU with TCG. An explicit choice is honoured
/// when possible and refused with the reason when not (e.g. `vmrun-vmm` without `/dev/kvm`).
pub fn select(
    settings: &SandboxSettings,
    kvm: KvmKind,
    req: &Requirements,
    bins: &HypervisorBinaries,
    configured_qemu: &str,
    configured_vmm: &str,
) -> Result<Selection, HypervisorError> {
    let qemu_with = |accel: qemu::Accel| -> Result<Box<dyn Hypervisor>, HypervisorError> {
        let binary = bins
            .qemu
            .clone()
            .ok_or_else(|| HypervisorError::MissingBinary {
                program: "qemu-system-x86_64",
                configured: configured_qemu.to_owned(),
            })?;
        Ok(Box::new(qemu::Qemu::new(binary, accel)))
    };
    let qemu_accel = |why_not_vmm: &str| -> Result<(qemu::Accel, String), HypervisorError> {
        match (settings.qemu_accel, kvm) {
            (AccelChoice::Kvm, KvmKind::Missing) => {
                Err(HypervisorError::NoKvm("/dev/kvm is not usable".to_owned()))
            }
            (AccelChoice::Kvm, _) => Ok((qemu::Accel::Kvm, format!("{why_not_vmm}; qemu_accel = \"kvm\""))),
            (AccelChoice::Tcg, _) => Ok((qemu::Accel::Tcg, format!("{why_not_vmm}; qemu_accel = \"tcg\""))),
            (AccelChoice::Auto, KvmKind::Hardware) => Ok((
                qemu::Accel::Kvm,
                format!("{why_not_vmm}; hardware KVM is available, so QEMU uses KVM"),
            )),
            (AccelChoice::Auto, KvmKind::Pvm) => Ok((
                qemu::Accel::Tcg,
                format!("{why_not_vmm}; /dev/kvm is PVM (kvm_pvm), which cannot run a stock Linux guest, so QEMU uses TCG"),
            )),
            (AccelChoice::Auto, KvmKind::Missing) => Ok((
                qemu::Accel::Tcg,
                format!("{why_not_vmm}; no usable /dev/kvm, so QEMU uses TCG"),
            )),
        }
    };
    match settings.backend {
        BackendChoice::VmrunVmm => {
            let binary = bins
                .vmrun_vmm
                .clone()
                .ok_or_else(|| HypervisorError::MissingBinary {
                    program: "vmrun-vmm",
                    configured: configured_vmm.to_owned(),
                })?;
            let vmm = vmm::VmrunVmm::new(binary);
            vmm.supports(req)
                .map_err(|reason| HypervisorError::Unsupported {
                    backend: "vmrun-vmm",
                    reason,
                })?;
            let mut reason = "backend = \"vmrun-vmm\" in the config".to_owned();
            match kvm {
                KvmKind::Hardware => {}
                KvmKind::Pvm => reason.push_str(
                    " (warning: /dev/kvm is PVM; only a PVM-enabled guest kernel can boot)",
                ),
                KvmKind::Missing => {
                    return Err(HypervisorError::Unsupported {
                        backend: "vmrun-vmm",
                        reason: "it needs /dev/kvm, which is not usable".to_owned(),
                    })
                }
            }
            Ok(Selection {
                hypervisor: Box::new(vmm),
                reason,
            })
        }
        BackendChoice::Qemu => {
            let (accel, reason) = qemu_accel("backend = \"qemu\" in the config")?;
            Ok(Selection {
                hypervisor: qemu_with(accel)?,
                reason,
            })
        }
        BackendChoice::Auto => {
            let why_not_vmm = match (kvm, &bins.vmrun_vmm) {
                (KvmKind::Hardware, Some(binary)) => {
                    let vmm = vmm::VmrunVmm::new(binary.clone());
                    match vmm.supports(req) {
                        Ok(()) => {
                            return Ok(Selection {
                                hypervisor: Box::new(vmm),
                                reason: "auto: hardware KVM is available and vmrun-vmm supports everything this sandbox needs".to_owned(),
                            })
                        }
                        Err(why) => format!("auto: vmrun-vmm cannot run this sandbox ({why})"),
                    }
                }
                (KvmKind::Hardware, None) => "auto: vmrun-vmm is not installed".to_owned(),
                (KvmKind::Pvm, _) => "auto: vmrun-vmm needs hardware KVM".to_owned(),
                (KvmKind::Missing, _) => "auto: vmrun-vmm needs /dev/kvm".to_owned(),
            };
            let (accel, reason) = qemu_accel(&why_not_vmm)?;
            Ok(Selection {
                hypervisor: qemu_with(accel)?,
                reason,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bins() -> HypervisorBinaries {
        HypervisorBinaries {
            qemu: Some(PathBuf::from("/usr/bin/qemu-system-x86_64")),
            vmrun_vmm: Some(PathBuf::from("/usr/local/bin/vmrun-vmm")),
        }
    }

    fn pick(
        backend: BackendChoice,
        accel: AccelChoice,
        kvm: KvmKind,
        fs: bool,
    ) -> Result<Selection, HypervisorError> {
        let settings = SandboxSettings {
            backend,
            qemu_accel: accel,
            ..SandboxSettings::default()
        };
        select(
            &settings,
            kvm,
            &Requirements { shared_fs: fs },
            &bins(),
            "qemu",
            "vmrun-vmm",
        )
    }

    #[test]
    fn auto_prefers_vmm_on_hardware_kvm_only_when_it_suffices() {
        let s = pick(
            BackendChoice::Auto,
            AccelChoice::Auto,
            KvmKind::Hardware,
            false,
        )
        .unwrap();
        assert_eq!(s.hypervisor.name(), "vmrun-vmm");
        let s = pick(
            BackendChoice::Auto,
            AccelChoice::Auto,
            KvmKind::Hardware,
            true,
        )
        .unwrap();
        assert_eq!(s.hypervisor.name(), "vmrun-vmm", "it has virtio-fs (--fs)");
        // Without the vmrun-vmm binary, hardware KVM means QEMU with KVM.
        let no_vmm = HypervisorBinaries {
            vmrun_vmm: None,
            ..bins()
        };
        let settings = SandboxSettings::default();
        let s = select(
            &settings,
            KvmKind::Hardware,
            &Requirements::default(),
            &no_vmm,
            "q",
            "v",
        )
        .unwrap();
        assert_eq!(s.hypervisor.name(), "qemu");
        assert!(
            s.hypervisor.describe().contains("kvm"),
            "{}",
            s.hypervisor.describe()
        );
        assert!(s.reason.contains("not installed"), "{}", s.reason);
    }

    #[test]
    fn auto_uses_tcg_on_pvm_and_without_kvm_and_says_why() {
        for kvm in [KvmKind::Pvm, KvmKind::Missing] {
            let s = pick(BackendChoice::Auto, AccelChoice::Auto, kvm, false).unwrap();
            assert_eq!(s.hypervisor.name(), "qemu");
            assert!(s.hypervisor.describe().contains("tcg"));
            assert!(s.reason.contains("TCG"), "{}", s.reason);
        }
    }

    #[test]
    fn explicit_choices_are_honoured_or_refused_with_the_reason() {
        let s = pick(
            BackendChoice::VmrunVmm,
            AccelChoice::Auto,
            KvmKind::Pvm,
            true,
        )
        .unwrap();
        assert!(s.reason.contains("warning"), "{}", s.reason);
        let err = pick(
            BackendChoice::VmrunVmm,
            AccelChoice::Auto,
            KvmKind::Missing,
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/dev/kvm"), "{err}");
        let err = pick(
            BackendChoice::Qemu,
            AccelChoice::Kvm,
            KvmKind::Missing,
            false,
        )
        .unwrap_err();
        assert!(matches!(err, HypervisorError::NoKvm(_)));
        let s = pick(
            BackendChoice::Qemu,
            AccelChoice::Tcg,
            KvmKind::Hardware,
            false,
        )
        .unwrap();
        assert!(s.hypervisor.describe().contains("tcg"));
        let settings = SandboxSettings::default();
        let err = select(
            &settings,
            KvmKind::Pvm,
            &Requirements::default(),
            &HypervisorBinaries::default(),
            "q",
            "v",
        )
        .unwrap_err();
        assert!(
            matches!(err, HypervisorError::MissingBinary { .. }),
            "{err}"
        );
    }

    #[test]
    fn exit_statuses_are_classified() {
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        assert_eq!(classify(code(65), 65), VmExit::Clean);
        assert_eq!(classify(code(0), 65), VmExit::Crashed);
        assert_eq!(classify(code(1), 65), VmExit::Failed { code: 1 });
        assert_eq!(
            classify(ExitStatus::from_raw(9), 65),
            VmExit::Killed { signal: 9 }
        );
    }

    #[test]
    fn probe_kvm_reports_a_kind() {
        let p = probe_kvm();
        assert!(!p.detail.is_empty());
        if p.kind != KvmKind::Missing {
            assert!(Path::new("/dev/kvm").exists());
        }
    }
}
