// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun-vmm`'s vhost-user-fs frontend under real KVM, against a real `virtiofsd` sharing a
//! host temporary directory: the guest kit's `fs` program speaks FUSE over the request queue
//! (INIT, LOOKUP, GETATTR, OPEN, READ, CREATE, WRITE, FSYNC, READDIR, RELEASE), checksums are
//! compared on both sides, and then virtiofsd is killed mid-run: the device must report
//! DEVICE_NEEDS_RESET to the guest and the VMM must keep running to a clean exit. The VMM runs
//! as uid/gid 65534 (`--user`) once its connection to virtiofsd is open.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmrun_tests::vmm::{api, guest_elf, pattern, qemu_kit_fs, TempDir, Vm};
use vmrun_tests::{artifact, require_kvm};

const SIZE: u64 = (1 << 20) + 12_345;
const SEED: u64 = 0xf5;
const WSIZE: u64 = (256 << 10) + 77;
const WSEED: u64 = 0xf6;

/// virtiofsd, killed on drop.
struct Virtiofsd(Child);

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn virtiofsd_bin() -> Option<PathBuf> {
    Some(artifact("virtiofsd")).filter(|p| p.exists())
}

/// Starts virtiofsd on `share` and waits for its socket (its log level is
/// `$VMRUN_VIRTIOFSD_LOG`, default `error`).
fn start_virtiofsd(bin: &PathBuf, sock: &PathBuf, share: &PathBuf) -> Virtiofsd {
    let d = Virtiofsd(
        Command::new(bin)
            .arg("--socket-path")
            .arg(sock)
            .arg("--shared-dir")
            .arg(share)
            .args(["--sandbox", "none", "--log-level"])
            .arg(std::env::var("VMRUN_VIRTIOFSD_LOG").unwrap_or_else(|_| "error".into()))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn virtiofsd"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "virtiofsd created no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    d
}

fn prepare_share(dir: &TempDir) -> PathBuf {
    let share = dir.join("share");
    std::fs::create_dir_all(share.join("d")).expect("mkdir share/d");
    std::fs::write(
        share.join("host.bin"),
        pattern::bytes(SEED, 0, usize::try_from(SIZE).expect("size")),
    )
    .expect("write host.bin");
    for n in ["a", "b", "c"] {
        std::fs::write(share.join("d").join(n), n).expect("write d/*");
    }
    share
}

fn fs_vm(sock: &std::path::Path, api_sock: &std::path::Path, extra: &str) -> Vm {
    Vm::spawn([
        "--kernel",
        guest_elf("fs").to_str().expect("utf-8"),
        "--test-payload",
        "--memory-mib",
        "256",
        "--fs",
        &format!("{},tag=kitfs", sock.display()),
        "--api-sock",
        api_sock.to_str().expect("utf-8"),
        "--user",
        "65534:65534",
        "--cmdline",
        &format!(
            "kit.fs_tag=kitfs kit.fs_size={SIZE} kit.fs_seed={SEED} kit.fs_wsize={WSIZE} \
             kit.fs_wseed={WSEED} {extra}"
        ),
    ])
    .expect("spawn vmrun-vmm")
}

#[test]
fn vmm_fs_fuse_ops_and_backend_disconnect() {
    if !require_kvm("vmm_fs_fuse_ops_and_backend_disconnect") {
        return;
    }
    let bin = virtiofsd_bin().expect("virtiofsd in $VMRUN_ARTIFACTS (scripts/setup installs it)");
    let dir = TempDir::new("kit-fs").expect("temp dir");
    let share = prepare_share(&dir);
    let sock = dir.join("fs.sock");
    let api_sock = dir.join("api.sock");
    let mut daemon = Some(start_virtiofsd(&bin, &sock, &share));
    let vm = fs_vm(&sock, &api_sock, "kit.fs_disconnect=1");

    let kill_line = vm.wait_line("INFO fs kill-backend", Duration::from_secs(60));
    let metrics_before = api(&api_sock, "metrics").ok();
    let snapshot = api(&api_sock, "snapshot").ok();
    // Kill virtiofsd while the device is active.
    drop(daemon.take());
    let out = vm.wait(Duration::from_secs(60));
    assert!(
        kill_line.is_some(),
        "guest never asked to kill the back-end\n{}",
        out.dump()
    );
    out.assert_all_passed(&[
        "fs.config",
        "fs.init",
        "fs.lookup",
        "fs.getattr",
        "fs.read",
        "fs.write",
        "fs.readdir",
        "fs.disconnect",
    ]);

    // Host side of the checksums: what the guest read, and what it wrote.
    let host_sum = pattern::fnv(&std::fs::read(share.join("host.bin")).expect("read host.bin"));
    assert_eq!(
        out.info("fs host.bin"),
        [format!("fs host.bin fnv={host_sum:016x} bytes={SIZE}")],
        "{}",
        out.dump()
    );
    let written = std::fs::read(share.join("guest.bin")).expect("guest.bin exists on the host");
    assert_eq!(written.len() as u64, WSIZE);
    assert!(
        written == pattern::bytes(WSEED, 0, written.len()),
        "guest.bin content differs from the guest's stream"
    );
    assert_eq!(
        out.info("fs guest.bin"),
        [format!(
            "fs guest.bin fnv={:016x} bytes={WSIZE}",
            pattern::fnv(&written)
        )],
        "{}",
        out.dump()
    );
    let m = metrics_before.expect("metrics over the API while the guest waited");
    let fs = &m["metrics"]["devices"]["fs"];
    assert!(
        fs["interrupts"].as_u64().unwrap_or(0) > 0 && fs["activations"].as_u64() == Some(1),
        "fs metrics before the kill: {m}"
    );
    // The device state while the guest waited: active, both queues as the guest set them up.
    let snap = snapshot.expect("snapshot over the API");
    let dev = &snap["devices"][0];
    assert_eq!(dev["device_type"], 26, "{snap}");
    assert_eq!(dev["status"], 0xf, "{snap}");
    assert_eq!(dev["activated"], true, "{snap}");
    assert_ne!(
        dev["acked_features"].as_u64().unwrap_or(0) & (1 << 32),
        0,
        "{snap}"
    );
    assert!(
        dev["config"]
            .as_str()
            .unwrap_or("")
            .starts_with("6b69746673"),
        "{snap}"
    );
    let q = &dev["queues"];
    assert_eq!(
        (q[0]["size"].as_u64(), q[1]["size"].as_u64()),
        (Some(8), Some(16)),
        "{snap}"
    );
    assert!(
        q[1]["ready"] == true && q[1]["desc_table"].as_u64().unwrap_or(0) != 0,
        "{snap}"
    );
    assert!(
        out.stderr.contains("back-end disconnected"),
        "the VMM logs the disconnect\n{}",
        out.dump()
    );
}

#[test]
fn vmm_fs_refuses_a_missing_backend() {
    if !require_kvm("vmm_fs_refuses_a_missing_backend") {
        return;
    }
    let dir = TempDir::new("kit-fs-missing").expect("temp dir");
    let out =
        fs_vm(&dir.join("nobody.sock"), &dir.join("api.sock"), "").wait(Duration::from_secs(30));
    let msg = out.assert_one_line_error();
    assert_eq!(out.code(), Some(250), "{}", out.dump());
    assert!(msg.contains("nobody.sock"), "{msg}");
}

/// The reference side of the virtio-fs benchmark: the kit's `bench-pvh` (the `bench` program
/// with a PVH entry) on QEMU's `vhost-user-fs-device` against the same virtiofsd. QEMU runs
/// it under TCG (PVH enters at CPL 0, which PVM only emulates, and the first SSE instruction
/// ends such a run), so this needs no KVM; it proves the PVH trampoline (long mode, zero page
/// from `hvm_start_info`, the command line QEMU extends with `virtio_mmio.device=`) and that
/// the benchmark's QEMU column measures a working FUSE session.
#[test]
fn kit_fs_bench_on_qemu_vhost_user_fs() {
    let bin = virtiofsd_bin().expect("virtiofsd in $VMRUN_ARTIFACTS (scripts/setup installs it)");
    let dir = TempDir::new("kit-fs-qemu").expect("temp dir");
    let share = prepare_share(&dir);
    let sock = dir.join("fs.sock");
    let _daemon = start_virtiofsd(&bin, &sock, &share);
    let qemu = qemu_kit_fs(&sock, "kitfs", 256, "kit.test=fs kit.fs_wmib=2");
    let out = Vm::spawn_command(qemu)
        .expect("spawn qemu-system-x86_64")
        .wait(Duration::from_secs(120));
    // isa-debug-exit reports the guest's status 0 as (0 << 1) | 1.
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    assert!(
        out.lines().any(|l| l == "PASS fs") && out.lines().any(|l| l == "DONE passed=1 failed=0"),
        "{}",
        out.dump()
    );
    for name in ["fs_notify", "fs_seq_read", "fs_seq_write"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("BENCH {name} "))),
            "no {name} figure\n{}",
            out.dump()
        );
    }
    let written = std::fs::metadata(share.join("guest.bin")).expect("guest.bin on the host");
    assert_eq!(written.len(), 2 << 20, "{}", out.dump());
}
