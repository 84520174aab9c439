// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The `vmrun-vmm` binary: one VM per process.
//!
//! `vmrun-vmm --kernel PATH [options]` or `vmrun-vmm --config FILE.json`; see `docs/vmm.md`
//! for the exit statuses.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmrun_vmm::config::{
    BlockConfig, FsConfig, NetConfig, SerialOutput, UserSpec, VmConfig, VsockConfig,
    DEFAULT_GUEST_CID,
};
use vmrun_vmm::exit_code;
use vmrun_vmm::hardening;

/// Command line; `--config` excludes every VM option.
#[derive(Debug, Parser)]
#[command(
    name = "vmrun-vmm",
    version,
    about = "vmrun's KVM virtual machine monitor"
)]
struct Cli {
    /// Read the whole VM configuration from a JSON file.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["kernel", "initrd", "cmdline", "vcpus", "memory_mib", "serial", "vsock_uds", "vsock_cid", "block", "rng", "fs", "net", "api_sock", "test_payload", "user"])]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux or bzImage.
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    kernel: Option<PathBuf>,
    /// initrd / initramfs.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line (virtio_mmio.device= words are appended).
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs (1..=32).
    #[arg(long, value_name = "N")]
    vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long = "memory-mib", value_name = "N")]
    memory_mib: Option<u64>,
    /// COM1 output: stdout, none, or a file path.
    #[arg(long, value_name = "stdout|none|FILE")]
    serial: Option<SerialOutput>,
    /// Hybrid vsock Unix socket path.
    #[arg(long = "vsock-uds", value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// Guest CID for vsock.
    #[arg(long = "vsock-cid", value_name = "N", requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    /// Block device: PATH[,ro][,id=ID]; repeatable.
    #[arg(long, value_name = "PATH[,ro][,id=ID]")]
    block: Vec<BlockConfig>,
    /// Add a virtio-rng device.
    #[arg(long)]
    rng: bool,
    /// virtio-fs through a vhost-user back-end (virtiofsd): SOCKET,tag=TAG.
    #[arg(long, value_name = "SOCKET,tag=TAG")]
    fs: Option<FsConfig>,
    /// virtio-net on a tap: tap=NAME[,mac=MAC] or fd=N[,mac=MAC]; repeatable.
    #[arg(long, value_name = "tap=NAME|fd=N[,mac=MAC]")]
    net: Vec<NetConfig>,
    /// API socket path.
    #[arg(long = "api-sock", value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Enter the kernel's 64-bit entry at CPL 3 (test payloads; see docs/vmm.md).
    #[arg(long = "test-payload")]
    test_payload: bool,
    /// Switch to this user and group once the VM is built (numeric UID:GID).
    #[arg(long, value_name = "UID:GID")]
    user: Option<UserSpec>,
}

impl Cli {
    fn into_config(self) -> anyhow::Result<VmConfig> {
        if let Some(path) = self.config {
            return Ok(VmConfig::from_json_file(&path)?);
        }
        let kernel = self
            .kernel
            .ok_or_else(|| anyhow::anyhow!("--kernel is required"))?;
        let mut cfg = VmConfig::new(kernel);
        cfg.initrd = self.initrd;
        if let Some(c) = self.cmdline {
            cfg.cmdline = c;
        }
        if let Some(v) = self.vcpus {
            cfg.vcpus = v;
        }
        if let Some(m) = self.memory_mib {
            cfg.memory_mib = m;
        }
        if let Some(s) = self.serial {
            cfg.serial = s;
        }
        cfg.vsock = self.vsock_uds.map(|uds_path| VsockConfig {
            uds_path,
            guest_cid: self.vsock_cid.unwrap_or(DEFAULT_GUEST_CID),
        });
        cfg.block = self.block;
        cfg.rng = self.rng;
        cfg.fs = self.fs;
        cfg.net = self.net;
        cfg.api_sock = self.api_sock;
        cfg.test_payload = self.test_payload;
        cfg.user = self.user;
        Ok(cfg)
    }
}

/// Formats an error chain on one line: `a: b: c`.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn status(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}

fn main() -> ExitCode {
    vmrun_vmm::logger::init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return status(if e.use_stderr() { exit_code::USAGE } else { 0 });
        }
    };
    let cfg = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmrun-vmm: {}", one_line(e.as_ref()));
            return status(exit_code::START_FAILED);
        }
    };
    // Nothing inherited stays open except stdio and the tap fds the configuration names.
    let keep: Vec<i32> = cfg.net.iter().filter_map(|n| n.fd).collect();
    if let Err(e) = hardening::close_inherited_fds(&keep) {
        eprintln!("vmrun-vmm: {}", one_line(&e));
        return status(exit_code::START_FAILED);
    }
    let mut vmm = match vmrun_vmm::builder::build_vm(&cfg) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vmrun-vmm: {}", one_line(&e));
            return status(exit_code::START_FAILED);
        }
    };
    let hardened = hardening::limit_open_files()
        .and_then(|()| cfg.user.map_or(Ok(()), hardening::drop_privileges));
    if let Err(e) = hardened {
        eprintln!("vmrun-vmm: {}", one_line(&e));
        return status(exit_code::START_FAILED);
    }
    let code = match vmm.run() {
        Ok(reason) => {
            if let Some(msg) = reason.message() {
                eprintln!("vmrun-vmm: {msg}");
            }
            reason.exit_code()
        }
        Err(e) => {
            eprintln!("vmrun-vmm: {}", one_line(&e));
            exit_code::START_FAILED
        }
    };
    // Exit without dropping the VM: the kernel reclaims guest memory and KVM state at exit
    // anyway, so running the destructors first would only do the same work twice. Socket files
    // were already removed by `run`.
    #[allow(clippy::exit)]
    std::process::exit(code)
}
