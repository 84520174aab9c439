// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Helpers for the sandbox system tests: a host config that points only at `VMRUN_ARTIFACTS`,
//! short unique root directories (Unix socket paths are limited to 107 bytes), throw-away
//! initramfs images for failure cases, and the "nothing left behind" check.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vmrun_runtime::config::Config;

use crate::{artifact, artifacts_dir};

/// A host config for tests: kernel, initramfs and daemons from `VMRUN_ARTIFACTS` only (never
/// `/usr/local`), QEMU from `PATH`, backend `auto`.
pub fn host_config() -> Config {
    let mut cfg = Config::default();
    cfg.artifacts.kernel = Some(artifacts_dir().join("vmlinux"));
    cfg.artifacts.qemu_kernel = Some(artifact("bzImage"));
    cfg.artifacts.initrd = Some(artifact("initramfs.cpio"));
    for (slot, name) in [
        (&mut cfg.binaries.vhost_device_vsock, "vhost-device-vsock"),
        (&mut cfg.binaries.virtiofsd, "virtiofsd"),
    ] {
        *slot = artifact(name).to_string_lossy().into_owned();
    }
    // Several VMs boot at once on a small host under TCG: give them time.
    cfg.sandbox.boot_timeout_secs = 120;
    cfg
}

/// A fresh, short, unique root directory for sandboxes of one test
/// (`/tmp/vmrun-t/<tag>-<pid>-<n>`); removed by [`TestRoot::drop`] if empty.
#[derive(Debug)]
pub struct TestRoot {
    path: PathBuf,
}

impl TestRoot {
    /// Creates the directory.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = PathBuf::from("/tmp/vmrun-t").join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create the test root");
        Self { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Asserts that a sandbox left nothing: no live process among `pids` (waiting up to 5 s for
/// the kernel to finish them), no state directory, no mount under `root`.
pub fn assert_cleaned_up(root: &Path, id: &str, pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for &pid in pids {
        while process_alive(pid) {
            assert!(
                Instant::now() < deadline,
                "pid {pid} of sandbox {id} is still alive"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let dir = root.join(id);
    assert!(
        !dir.exists(),
        "state directory {} was left behind",
        dir.display()
    );
    assert_eq!(
        mounts_under(root),
        Vec::<String>::new(),
        "mounts left under {}",
        root.display()
    );
}

/// Builds an initramfs whose `/init` is `init_script` run by the host's static busybox
/// (`busybox-static`), in `dir`. Used for guests that boot but never run the agent.
pub fn busybox_initramfs(dir: &Path, init_script: &str) -> PathBuf {
    busybox_initramfs_with(dir, init_script, &[])
}

/// Like [`busybox_initramfs`], plus `extra` files (host source, path inside the image).
pub fn busybox_initramfs_with(dir: &Path, init_script: &str, extra: &[(&Path, &str)]) -> PathBuf {
    let stage = dir.join("stage");
    std::fs::create_dir_all(stage.join("bin")).expect("stage dir");
    std::fs::create_dir_all(stage.join("dev")).expect("stage dev");
    std::fs::copy("/bin/busybox", stage.join("bin/busybox")).expect("busybox-static is installed");
    for (src, dst) in extra {
        let to = stage.join(dst.trim_start_matches('/'));
        std::fs::copy(src, &to).expect("copy an extra file into the initramfs");
    }
    let init = stage.join("init");
    std::fs::write(&init, format!("#!/bin/busybox sh\n{init_script}\n")).expect("write init");
    run(Command::new("chmod").arg("0755").arg(&init));
    run(Command::new("mknod")
        .args(["-m", "0600"])
        .arg(stage.join("dev/console"))
        .args(["c", "5", "1"]));
    let out = dir.join("busybox-initramfs.cpio");
    let script = format!(
        "cd '{}' && find . -mindepth 1 | cpio --quiet -o -H newc -R 0:0 > '{}'",
        stage.display(),
        out.display()
    );
    run(Command::new("sh").args(["-c", &script]));
    std::fs::remove_dir_all(&stage).expect("remove stage");
    out
}

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("run helper command");
    assert!(st.success(), "{cmd:?} failed: {st}");
}

/// The lines of a file that contain `needle`, waiting up to `timeout` for at least one.
pub fn wait_for_line(path: &Path, needle: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return Some(l.to_owned());
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
