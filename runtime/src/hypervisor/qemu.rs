// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! The QEMU `microvm` backend (`qemu-system-x86_64` from Debian), with KVM or TCG.
//!
//! The command line follows what was measured to work (see `research/qemu-backend.md`):
//! `acpi=off` so that QEMU appends the `virtio_mmio.device=` words the ACPI-less guest kernel
//! needs; memfd guest memory with `share=on` (the vhost-user daemons map it; `share=off` fails
//! silently); vsock through `vhost-user-vsock-device` (the guest CID comes from the
//! `vhost-device-vsock` daemon, not from QEMU); virtio-fs through `vhost-user-fs-device` with
//! QEMU's `tag=`; modern (virtio 1.x) MMIO transports; `isa-debug-exit` on the exit-status port,
//! whose QEMU exit status is `(v << 1) | 1`; `reboot=t` plus `-no-reboot` so that a guest reset
//! ends the process.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Hypervisor, Requirements, VmSpec, CLEAN_SHUTDOWN_CODE, EXIT_PORT, SHARED_FS_TAG};

/// The guest kernel's base command line on QEMU microvm. `no_timer_check`: under TCG on a
/// loaded host the kernel's IO-APIC timer check can miss its ticks and panic with "IO-APIC +
/// timer doesn't work!" (seen here with 4 sandboxes booting at once).
pub const QEMU_BASE_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 no_timer_check";

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// `-accel kvm -cpu host`.
    Kvm,
    /// `-accel tcg -cpu max`.
    Tcg,
}

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct Qemu {
    binary: PathBuf,
    accel: Accel,
}

impl Qemu {
    /// A backend running `binary` with `accel`.
    pub fn new(binary: PathBuf, accel: Accel) -> Self {
        Self { binary, accel }
    }

    /// The accelerator.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The QEMU exit status of a clean stop: `isa-debug-exit` exits with `(v << 1) | 1`.
    pub fn clean_exit_code() -> i32 {
        (i32::from(CLEAN_SHUTDOWN_CODE) << 1) | 1
    }
}

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn describe(&self) -> String {
        match self.accel {
            Accel::Kvm => "qemu microvm, accel kvm, cpu host".to_owned(),
            Accel::Tcg => "qemu microvm, accel tcg, cpu max".to_owned(),
        }
    }

    fn supports(&self, _req: &Requirements) -> Result<(), String> {
        Ok(())
    }

    fn needs_vsock_daemon(&self) -> bool {
        true
    }

    fn kernel<'a>(&self, _vmlinux: &'a Path, bzimage: &'a Path) -> &'a Path {
        bzimage
    }

    fn command(&self, spec: &VmSpec) -> Command {
        let mut cmd = Command::new(&self.binary);
        let mem = format!("{}M", spec.memory_mib);
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        cmd.args([
            "-M",
            "microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=off,memory-backend=mem",
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-m",
            &mem,
            "-smp",
            &spec.vcpus.to_string(),
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-global",
            "virtio-mmio.force-legacy=false",
            "-serial",
        ]);
        cmd.arg(path_arg("file:", &spec.console_log));
        cmd.args([
            "-device",
            &format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=1"),
        ]);
        cmd.arg("-chardev")
            .arg(path_arg("socket,id=vsock0,path=", &spec.vhost_vsock_socket));
        cmd.args(["-device", "vhost-user-vsock-device,chardev=vsock0"]);
        if let Some(fs) = &spec.virtiofs_socket {
            cmd.arg("-chardev").arg(path_arg("socket,id=fs0,path=", fs));
            cmd.args([
                "-device",
                &format!("vhost-user-fs-device,chardev=fs0,tag={SHARED_FS_TAG}"),
            ]);
        }
        for (i, net) in spec.net.iter().enumerate() {
            // vhost-net is not used: QEMU's own backend reads the tap (opened with a vnet header).
            cmd.args([
                "-netdev",
                &format!("tap,id=net{i},fd={},vhost=off", net.fd),
                "-device",
                &format!("virtio-net-device,netdev=net{i},mac={}", net.mac),
            ]);
        }
        cmd.arg("-kernel").arg(&spec.kernel);
        cmd.arg("-initrd").arg(&spec.initrd);
        cmd.arg("-append").arg(spec.cmdline(QEMU_BASE_CMDLINE));
        cmd
    }

    fn clean_exit_code(&self) -> i32 {
        Self::clean_exit_code()
    }

    fn tap_vnet_hdr(&self) -> bool {
        true
    }
}

/// `prefix` + `path` as one argument. QEMU splits option values at commas, so the sandbox's
/// paths are created without commas (checked when the sandbox directory is made).
fn path_arg(prefix: &str, path: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(prefix);
    s.push(path.as_os_str());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fs: bool) -> VmSpec {
        VmSpec {
            kernel: PathBuf::from("/a/bzImage"),
            initrd: PathBuf::from("/a/initramfs.cpio"),
            extra_cmdline: vec!["VMRUN_AGENT_LOG_LEVEL=debug".to_owned()],
            vcpus: 1,
            memory_mib: 256,
            console_log: PathBuf::from("/s/console.log"),
            vsock_uds: PathBuf::from("/s/vsock.sock"),
            vhost_vsock_socket: PathBuf::from("/s/vhost-vsock.sock"),
            virtiofs_socket: fs.then(|| PathBuf::from("/s/virtiofsd.sock")),
            api_socket: PathBuf::from("/s/api.sock"),
            debug_console: false,
            net: vec![],
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn command_line_has_the_measured_essentials() {
        let q = Qemu::new(PathBuf::from("/usr/bin/qemu-system-x86_64"), Accel::Tcg);
        let a = args(&q.command(&spec(true)));
        let joined = a.join(" ");
        for needle in [
            "acpi=off",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "-accel tcg -cpu max",
            "-no-reboot",
            "isa-debug-exit,iobase=0xf4,iosize=1",
            "vhost-user-vsock-device,chardev=vsock0",
            "socket,id=fs0,path=/s/virtiofsd.sock",
            "vhost-user-fs-device,chardev=fs0,tag=vmrun",
            "file:/s/console.log",
        ] {
            assert!(joined.contains(needle), "missing {needle} in {joined}");
        }
        assert!(
            !joined.contains("guest-cid"),
            "QEMU rejects guest-cid: {joined}"
        );
        let append = a.iter().position(|x| x == "-append").unwrap();
        assert_eq!(
            a[append + 1],
            "console=ttyS0 reboot=t panic=-1 no_timer_check quiet VMRUN_AGENT_LOG_LEVEL=debug"
        );
        let no_fs = args(&q.command(&spec(false))).join(" ");
        assert!(!no_fs.contains("vhost-user-fs"));
        assert!(!no_fs.contains("-netdev"));
        let mut with_net = spec(false);
        with_net.net = vec![crate::network::NetSpec {
            fd: 7,
            mac: "02:00:00:00:00:09".to_owned(),
            mtu: 1400,
        }];
        let net = args(&q.command(&with_net)).join(" ");
        assert!(
            net.contains("-netdev tap,id=net0,fd=7,vhost=off -device virtio-net-device,netdev=net0,mac=02:00:00:00:00:09"),
            "{net}"
        );
        assert!(q.tap_vnet_hdr());
        let k = Qemu::new(PathBuf::from("q"), Accel::Kvm);
        assert!(args(&k.command(&spec(false)))
            .join(" ")
            .contains("-accel kvm -cpu host"));
    }

    #[test]
    fn clean_exit_is_0x20_shifted() {
        assert_eq!(Qemu::clean_exit_code(), 65);
    }
}
