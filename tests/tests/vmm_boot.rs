// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun-vmm` boot path and exit paths under real KVM, with the guest kit's `boot` program
//! (test-payload mode, CPL 3) and the assembly-only guests (normal entry, CPL 0), plus the
//! VMM's one-line start-up errors.

use std::process::Command;
use std::time::Duration;
use vmrun_tests::require_kvm;
use vmrun_tests::vmm::{guest_elf, vmm_bin, TempDir, Vm};

const TIMEOUT: Duration = Duration::from_secs(20);

fn run(args: &[&str]) -> vmrun_tests::vmm::Outcome {
    Vm::spawn(args.iter().copied())
        .expect("spawn vmrun-vmm")
        .wait(TIMEOUT)
}

fn boot_state(vcpus: u8) {
    let elf = guest_elf("boot");
    let cmdline = format!("console=ttyS0 kit.cpus={vcpus} kit.mem_mib=128 kit.cpl=3");
    let vcpus_arg = vcpus.to_string();
    let o = run(&[
        "--kernel",
        elf.to_str().expect("utf-8 path"),
        "--test-payload",
        "--serial",
        "stdout",
        "--vcpus",
        &vcpus_arg,
        "--memory-mib",
        "128",
        "--cmdline",
        &cmdline,
    ]);
    o.assert_all_passed(&[
        "boot.long_mode",
        "boot.cpl",
        "boot.params",
        "boot.cmdline",
        "boot.e820",
        "boot.mptable",
        "serial.registers",
        "i8042.status",
    ]);
    // The command line arrives as given (the VMM may only append virtio_mmio.device= words).
    let seen = o.info("cmdline ");
    assert_eq!(seen.len(), 1, "{}", o.dump());
    let seen = seen[0].strip_prefix("cmdline ").unwrap_or_default();
    assert!(
        seen.starts_with(&cmdline),
        "guest saw {seen:?}, passed {cmdline:?}"
    );
    let extra = &seen[cmdline.len()..];
    assert!(
        extra
            .split_whitespace()
            .all(|w| w.starts_with("virtio_mmio.device=")),
        "unexpected words appended: {extra:?}"
    );
    // The e820 RAM the guest saw adds up to the memory we asked for, minus the legacy hole.
    let ram: u64 = o
        .info("e820 0x")
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"1"))
                .then(|| u64::from_str_radix(f[2].trim_start_matches("0x"), 16).ok())?
        })
        .sum();
    assert!(
        ram <= 128 << 20 && ram + (1 << 20) >= 128 << 20,
        "e820 RAM {ram:#x}\n{}",
        o.dump()
    );
    let mp = o.info("mptable ");
    assert!(
        mp.iter().any(|l| l.contains(&format!("cpus={vcpus} "))),
        "{}",
        o.dump()
    );
}

#[test]
fn vmm_boot_state_one_vcpu() {
    if !require_kvm("vmm_boot_state_one_vcpu") {
        return;
    }
    boot_state(1);
}

#[test]
fn vmm_boot_state_four_vcpus() {
    if !require_kvm("vmm_boot_state_four_vcpus") {
        return;
    }
    boot_state(4);
}

#[test]
fn vmm_boot_state_32_vcpus() {
    if !require_kvm("vmm_boot_state_32_vcpus") {
        return;
    }
    boot_state(32);
}

#[test]
fn vmm_vcpu_count_out_of_range_is_one_line_error() {
    if !require_kvm("vmm_vcpu_count_out_of_range_is_one_line_error") {
        return;
    }
    let elf = guest_elf("boot");
    for n in ["0", "33"] {
        let o = run(&[
            "--kernel",
            elf.to_str().expect("utf-8 path"),
            "--test-payload",
            "--vcpus",
            n,
        ]);
        o.assert_one_line_error();
    }
}

fn payload(mode: &str) -> vmrun_tests::vmm::Outcome {
    let elf = guest_elf("boot");
    let cmdline = format!("kit.mode={mode}");
    run(&[
        "--kernel",
        elf.to_str().expect("utf-8 path"),
        "--test-payload",
        "--cmdline",
        &cmdline,
    ])
}

#[test]
fn vmm_i8042_reset_exits_zero() {
    if !require_kvm("vmm_i8042_reset_exits_zero") {
        return;
    }
    // The guest never touches the exit port here: only the i8042 reset can end the run.
    let o = payload("reset");
    assert!(o.lines().any(|l| l == "RESET failed=0"), "{}", o.dump());
    assert!(!o.lines().any(|l| l.starts_with("DONE")), "{}", o.dump());
    assert_eq!(o.code(), Some(0), "{}", o.dump());
}

#[test]
fn vmm_failing_payload_exits_nonzero() {
    if !require_kvm("vmm_failing_payload_exits_nonzero") {
        return;
    }
    let o = payload("fail");
    assert!(
        o.lines().any(|l| l.starts_with("FAIL deliberate")),
        "{}",
        o.dump()
    );
    assert_eq!(o.code(), Some(1), "{}", o.dump());
}

#[test]
fn vmm_panicking_payload_exits_nonzero() {
    if !require_kvm("vmm_panicking_payload_exits_nonzero") {
        return;
    }
    let o = payload("panic");
    assert!(
        o.lines().any(|l| l.starts_with("FAIL panic:")),
        "{}",
        o.dump()
    );
    assert_eq!(o.code(), Some(1), "{}", o.dump());
}

#[test]
fn vmm_triple_fault_is_a_clear_error() {
    if !require_kvm("vmm_triple_fault_is_a_clear_error") {
        return;
    }
    let o = payload("triple");
    assert!(o.lines().any(|l| l == "TRIPLE"), "{}", o.dump());
    let msg = o.assert_one_line_error();
    assert!(
        msg.to_lowercase().contains("triple fault"),
        "message {msg:?}\n{}",
        o.dump()
    );
}

#[test]
fn vmm_plain_elf_64bit_entry_resets() {
    if !require_kvm("vmm_plain_elf_64bit_entry_resets") {
        return;
    }
    // Normal 64-bit boot-protocol entry at CPL 0 (no --test-payload): COM1 then i8042 reset.
    let elf = guest_elf("tiny-64");
    let o = run(&[
        "--kernel",
        elf.to_str().expect("utf-8 path"),
        "--serial",
        "stdout",
    ]);
    assert_eq!(o.stdout, "OK\n", "{}", o.dump());
    assert_eq!(o.code(), Some(0), "{}", o.dump());
}

#[test]
fn vmm_pvh_elf_exit_port() {
    if !require_kvm("vmm_pvh_elf_exit_port") {
        return;
    }
    // PVH entry (32-bit, CPL 0) through the ELF note: COM1, then status 0 on port 0xf4.
    let elf = guest_elf("tiny-pvh");
    let o = run(&["--kernel", elf.to_str().expect("utf-8 path")]);
    assert_eq!(o.stdout, "T\n", "{}", o.dump());
    assert_eq!(o.code(), Some(0), "{}", o.dump());
}

#[test]
fn vmm_missing_kvm_is_one_line_error() {
    if !require_kvm("vmm_missing_kvm_is_one_line_error") {
        return;
    }
    // A private mount namespace with an empty tmpfs over /dev: /dev/kvm does not exist there.
    let elf = guest_elf("boot");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs none /dev && exec \"$0\" \"$@\"",
    ])
    .arg(vmm_bin())
    .arg("--kernel")
    .arg(&elf)
    .arg("--test-payload");
    let o = Vm::spawn_command(cmd).expect("spawn unshare").wait(TIMEOUT);
    let msg = o.assert_one_line_error();
    assert!(
        msg.contains("/dev/kvm"),
        "message {msg:?} does not name /dev/kvm"
    );
}

#[test]
fn vmm_unreadable_kernel_is_one_line_error() {
    if !require_kvm("vmm_unreadable_kernel_is_one_line_error") {
        return;
    }
    let dir = TempDir::new("kit-badkernel").expect("temp dir");
    let missing = dir.join("no-such-kernel");
    let o = run(&["--kernel", missing.to_str().expect("utf-8 path")]);
    let msg = o.assert_one_line_error();
    assert!(
        msg.contains("no-such-kernel"),
        "message {msg:?} does not name the file"
    );
    // A file that is neither an ELF nor a bzImage.
    let junk = dir.join("junk-kernel");
    std::fs::write(&junk, vec![0x42u8; 8192]).expect("write junk");
    let o = run(&["--kernel", junk.to_str().expect("utf-8 path")]);
    o.assert_one_line_error();
    // A directory.
    let o = run(&["--kernel", dir.path().to_str().expect("utf-8 path")]);
    o.assert_one_line_error();
}

#[test]
fn vmm_absurd_memory_is_one_line_error() {
    if !require_kvm("vmm_absurd_memory_is_one_line_error") {
        return;
    }
    let elf = guest_elf("boot");
    // Beyond any configuration limit, and within it but far beyond this host's RAM (1 TiB).
    for mib in ["1000000000000", "1048576"] {
        let o = run(&[
            "--kernel",
            elf.to_str().expect("utf-8 path"),
            "--test-payload",
            "--memory-mib",
            mib,
        ]);
        o.assert_one_line_error();
    }
}
