// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun-vmm`'s virtio-mmio devices under real KVM, driven by the guest kit: the register
//! protocol and hostile virtqueue input (`mmio`), virtio-blk (`blk`) and virtio-rng (`rng`)
//! through the independent `virtio-drivers` stack.

use std::time::Duration;
use vmrun_tests::require_kvm;
use vmrun_tests::vmm::{api, guest_elf, pattern, TempDir, Vm};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Sectors in the test disk images (1 MiB).
const SECTORS: u64 = 2048;
const SEED: u64 = 0xb10c;
const WSEED: u64 = 0x3717e;

fn disk(dir: &TempDir, name: &str, seed: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    let len = usize::try_from(SECTORS * 512).expect("fits");
    std::fs::write(&path, pattern::bytes(seed, 0, len)).expect("write disk image");
    path
}

#[test]
fn vmm_mmio_protocol_and_hostile_input() {
    if !require_kvm("vmm_mmio_protocol_and_hostile_input") {
        return;
    }
    let dir = TempDir::new("kit-mmio").expect("temp dir");
    let rw = disk(&dir, "rw.img", SEED);
    let ro = disk(&dir, "ro.img", SEED + 1);
    let api_sock = dir.join("api.sock");
    // kit.hold_ms keeps the VMM alive after the checks so its metrics can be read.
    let cmdline = format!("kit.blk_seed={SEED} kit.hold_ms=1000");
    let vm = Vm::spawn([
        "--kernel",
        guest_elf("mmio").to_str().expect("utf-8"),
        "--test-payload",
        "--cmdline",
        &cmdline,
        "--block",
        rw.to_str().expect("utf-8"),
        "--block",
        &format!("{},ro", ro.display()),
        "--rng",
        "--api-sock",
        api_sock.to_str().expect("utf-8"),
    ])
    .expect("spawn");
    let metrics = vm
        .wait_line("HOLD", TIMEOUT)
        .map(|_| api(&api_sock, "metrics"));
    let o = vm.wait(TIMEOUT);
    o.assert_all_passed(&[
        "mmio.probe",
        "mmio.blk.protocol",
        "mmio.blk1.protocol",
        "mmio.rng.protocol",
        "hostile.rng.baseline",
        "mmio.rng.interrupt_status",
        "hostile.rng.outside",
        "hostile.rng.wrap",
        "hostile.rng.oversized",
        "hostile.rng.loop",
        "hostile.rng.bad_head",
        "hostile.blk.baseline",
        "hostile.blk.header_outside",
        "hostile.blk.data_outside",
        "hostile.blk.data_wrap",
        "hostile.blk.oversized",
        "hostile.blk.loop",
        "hostile.blk.sector_overflow",
        "hostile.blk.status_readonly",
        "hostile.blk.bad_head",
    ]);
    // The VMM counted what it refused (STYLE: guest-triggerable errors are counted in
    // metrics): the two rng buffers outside guest memory, and every hostile block chain with a
    // valid head (seven cases, the sector overflow sent twice) as invalid or as an I/O error.
    let m = metrics
        .expect("HOLD line")
        .expect("metrics over the API socket");
    let dev = &m["metrics"]["devices"];
    let count = |d: &str, k: &str| dev[d][k].as_u64().unwrap_or(0);
    assert!(count("rng", "invalid") >= 2, "rng metrics: {m}");
    assert!(
        count("block0", "invalid") + count("block0", "io_errors") >= 8,
        "block0 metrics: {m}"
    );
    assert_eq!(count("block1", "writes"), 0, "block1 metrics: {m}");
    // Every byte the guest wrote to COM1 before HOLD is counted, and nothing more.
    assert_eq!(
        count("serial", "tx_bytes"),
        u64::try_from(o.stdout.len()).expect("fits"),
        "serial metrics: {m}"
    );
    // Nothing the guest did may have written to the images.
    assert_eq!(
        std::fs::read(&rw).expect("read rw"),
        pattern::bytes(SEED, 0, 1 << 20),
        "rw image changed"
    );
    assert_eq!(
        std::fs::read(&ro).expect("read ro"),
        pattern::bytes(SEED + 1, 0, 1 << 20),
        "ro image changed"
    );
}

#[test]
fn vmm_blk_virtio_drivers() {
    if !require_kvm("vmm_blk_virtio_drivers") {
        return;
    }
    let dir = TempDir::new("kit-blk").expect("temp dir");
    let rw = disk(&dir, "rw.img", SEED);
    let ro = disk(&dir, "ro.img", SEED + 1);
    let cmdline = format!("kit.blk_seed={SEED} kit.blk_wseed={WSEED} kit.blk_sectors={SECTORS}");
    let o = Vm::spawn([
        "--kernel",
        guest_elf("blk").to_str().expect("utf-8"),
        "--test-payload",
        "--cmdline",
        &cmdline,
        "--block",
        &format!("{},id=kit-disk-0", rw.display()),
        "--block",
        &format!("{},ro", ro.display()),
    ])
    .expect("spawn")
    .wait(TIMEOUT);
    o.assert_all_passed(&[
        "blk.capacity",
        "blk.read",
        "blk.write",
        "blk.flush",
        "blk.id",
        "blk.out_of_range",
        "blk.unaligned_tail",
        "blk.ro",
    ]);
    assert_eq!(o.info("blk id "), ["blk id kit-disk-0"], "{}", o.dump());
    // The guest's write reached the file at sectors 64..128 and nothing else changed.
    let mut want = pattern::bytes(SEED, 0, 1 << 20);
    want[64 * 512..128 * 512].copy_from_slice(&pattern::bytes(WSEED, 0, 64 * 512));
    assert!(
        std::fs::read(&rw).expect("read rw") == want,
        "rw image content differs from the guest's writes"
    );
    assert!(
        std::fs::read(&ro).expect("read ro") == pattern::bytes(SEED + 1, 0, 1 << 20),
        "read-only image changed"
    );
}

#[test]
fn vmm_rng_virtio_drivers() {
    if !require_kvm("vmm_rng_virtio_drivers") {
        return;
    }
    let o = Vm::spawn([
        "--kernel",
        guest_elf("rng").to_str().expect("utf-8"),
        "--test-payload",
        "--rng",
    ])
    .expect("spawn")
    .wait(TIMEOUT);
    o.assert_all_passed(&["rng.entropy"]);
}
