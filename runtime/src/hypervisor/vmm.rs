// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! The `vmrun-vmm` backend: vmrun's own KVM VMM, one process per VM.
//!
//! Its CLI: `--kernel vmlinux --initrd F --cmdline S --vcpus N --memory-mib M --serial FILE
//! --vsock-uds UDS --api-sock SOCK`. Vsock is built in (hybrid vsock on `--vsock-uds`, guest CID
//! 3), so no daemon is needed; virtio-fs goes through its vhost-user-fs frontend
//! (`--fs SOCKET,tag=TAG`, served by the sandbox's virtiofsd). It exits with the value the guest writes to the exit-status port (32 for the agent's
//! clean-shutdown announcement), 0 on a guest reset, non-zero on a triple fault or internal error.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Hypervisor, Requirements, VmSpec, CLEAN_SHUTDOWN_CODE, SHARED_FS_TAG};

/// The guest kernel's base command line on vmrun-vmm (it emulates the i8042 reset).
pub const VMM_BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// The vmrun-vmm backend.
#[derive(Debug, Clone)]
pub struct VmrunVmm {
    binary: PathBuf,
}

impl VmrunVmm {
    /// A backend running `binary`.
    pub fn new(binary: PathBuf) -> Self {
        Self { binary }
    }
}

impl Hypervisor for VmrunVmm {
    fn name(&self) -> &'static str {
        "vmrun-vmm"
    }

    fn describe(&self) -> String {
        "vmrun-vmm (KVM)".to_owned()
    }

    fn supports(&self, _req: &Requirements) -> Result<(), String> {
        // vsock is built in; virtio-fs goes through its vhost-user-fs frontend (`--fs`).
        Ok(())
    }

    fn needs_vsock_daemon(&self) -> bool {
        false
    }

    fn kernel<'a>(&self, vmlinux: &'a Path, _bzimage: &'a Path) -> &'a Path {
        vmlinux
    }

    fn command(&self, spec: &VmSpec) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kernel").arg(&spec.kernel);
        cmd.arg("--initrd").arg(&spec.initrd);
        cmd.arg("--cmdline").arg(spec.cmdline(VMM_BASE_CMDLINE));
        cmd.arg("--vcpus").arg(spec.vcpus.to_string());
        cmd.arg("--memory-mib").arg(spec.memory_mib.to_string());
        cmd.arg("--serial").arg(&spec.console_log);
        cmd.arg("--vsock-uds").arg(&spec.vsock_uds);
        cmd.arg("--api-sock").arg(&spec.api_socket);
        if let Some(fs) = &spec.virtiofs_socket {
            let mut arg = fs.as_os_str().to_os_string();
            arg.push(format!(",tag={SHARED_FS_TAG}"));
            cmd.arg("--fs").arg(arg);
        }
        for net in &spec.net {
            // vmrun-vmm reads plain frames from the tap (no vnet header).
            cmd.arg("--net")
                .arg(format!("fd={},mac={}", net.fd, net.mac));
        }
        cmd
    }

    fn clean_exit_code(&self) -> i32 {
        i32::from(CLEAN_SHUTDOWN_CODE)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::hypervisor::VmExit;
    use std::process::ExitStatus;

    #[test]
    fn command_line_and_exit_codes() {
        let v = VmrunVmm::new(PathBuf::from("/bin/vmrun-vmm"));
        let spec = VmSpec {
            kernel: PathBuf::from("/a/vmlinux"),
            initrd: PathBuf::from("/a/i.cpio"),
            extra_cmdline: vec![],
            vcpus: 2,
            memory_mib: 128,
            console_log: PathBuf::from("/s/console.log"),
            vsock_uds: PathBuf::from("/s/vsock.sock"),
            vhost_vsock_socket: PathBuf::from("/s/unused"),
            virtiofs_socket: None,
            api_socket: PathBuf::from("/s/api.sock"),
            debug_console: true,
            net: vec![],
        };
        let a: Vec<String> = v
            .command(&spec)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a.join(" "),
            "--kernel /a/vmlinux --initrd /a/i.cpio --cmdline console=ttyS0 reboot=k panic=-1 \
             --vcpus 2 --memory-mib 128 --serial /s/console.log --vsock-uds /s/vsock.sock --api-sock /s/api.sock"
        );
        assert_eq!(
            v.classify_exit(ExitStatus::from_raw(32 << 8)),
            VmExit::Clean
        );
        assert_eq!(v.classify_exit(ExitStatus::from_raw(0)), VmExit::Crashed);
        assert!(v.supports(&Requirements { shared_fs: true }).is_ok());
        let with_fs = VmSpec {
            virtiofs_socket: Some(PathBuf::from("/s/virtiofsd.sock")),
            ..spec
        };
        let a: Vec<String> = v
            .command(&with_fs)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            a.ends_with(&["--fs".to_owned(), "/s/virtiofsd.sock,tag=vmrun".to_owned()]),
            "{a:?}"
        );
        let with_net = VmSpec {
            net: vec![crate::network::NetSpec {
                fd: 5,
                mac: "02:00:00:00:00:07".to_owned(),
                mtu: 1500,
            }],
            ..with_fs
        };
        let a: Vec<String> = v
            .command(&with_net)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            a.ends_with(&["--net".to_owned(), "fd=5,mac=02:00:00:00:00:07".to_owned()]),
            "{a:?}"
        );
        assert!(!v.tap_vnet_hdr());
    }
}
