// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Smoke tests of the `vmrun-vmm` binary under real KVM, with tiny guests assembled here as
//! byte strings and wrapped in a minimal ELF (one PT_LOAD at 2 MiB), entered in test-payload
//! mode (CPL 3). They skip with a printed reason when `/dev/kvm` cannot be opened, unless
//! `VMRUN_REQUIRE_KVM=1`.
#![allow(clippy::unwrap_used)] // test code: a failed set-up step should fail the test loudly

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_vmrun-vmm");

fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        assert!(
            std::env::var("VMRUN_REQUIRE_KVM").as_deref() != Ok("1"),
            "VMRUN_REQUIRE_KVM=1 but /dev/kvm is not accessible"
        );
        eprintln!("skipped: /dev/kvm not accessible");
    }
    ok
}

/// A unique scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmrun-vmm-smoke-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes an x86_64 ELF executable whose single segment at 0x200000 holds `code`, entered at
/// its first byte.
fn write_elf(dir: &Path, code: &[u8]) -> PathBuf {
    const BASE: u64 = 0x20_0000;
    let hdrs = 64 + 56;
    let total = (hdrs + code.len()) as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(BASE + hdrs as u64).to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [0u64, BASE, BASE, total, total, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(code);
    let p = dir.join("guest.elf");
    std::fs::write(&p, f).unwrap();
    p
}

/// `mov dx, 0x3f8; mov al, c; out dx, al`
fn serial_byte(c: u8) -> Vec<u8> {
    vec![0x66, 0xba, 0xf8, 0x03, 0xb0, c, 0xee]
}

/// `mov al, v; out 0xf4, al; jmp $`
fn exit_with(v: u8) -> Vec<u8> {
    vec![0xb0, v, 0xe6, 0xf4, 0xeb, 0xfe]
}

fn run(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "vmrun-vmm did not exit within {timeout:?}: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kernel_args<'a>(k: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--kernel", k.to_str().unwrap(), "--test-payload"];
    v.extend_from_slice(extra);
    v
}

#[test]
fn serial_byte_then_exit_port_zero_at_cpl3() {
    if !kvm_available() {
        return;
    }
    let d = scratch("serial");
    let mut code = serial_byte(b'K');
    code.extend(exit_with(0));
    let k = write_elf(&d, &code);
    let out = run(&kernel_args(&k, &[]), Duration::from_secs(10));
    assert_eq!(out.stdout, b"K");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn exit_port_value_becomes_the_status() {
    if !kvm_available() {
        return;
    }
    let d = scratch("exitval");
    let k = write_elf(&d, &exit_with(0x20));
    let out = run(
        &kernel_args(&k, &["--serial", "none"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(32), "{out:?}");
}

#[test]
fn i8042_reset_exits_zero_and_smp_boots() {
    if !kvm_available() {
        return;
    }
    let d = scratch("reset");
    // mov al, 0xfe; out 0x64, al; jmp $
    let k = write_elf(&d, &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]);
    let out = run(&kernel_args(&k, &["--vcpus", "4"]), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn privileged_instruction_is_a_triple_fault_with_a_message() {
    if !kvm_available() {
        return;
    }
    let d = scratch("hlt");
    let k = write_elf(&d, &[0xf4, 0xeb, 0xfe]); // hlt at CPL 3 -> #GP -> no IDT -> shutdown
    let out = run(&kernel_args(&k, &[]), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(251), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("triple fault"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn boot_params_carry_cmdline_and_e820() {
    if !kvm_available() {
        return;
    }
    let d = scratch("bootparams");
    let code = [
        0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, // mov eax, [rsi+0x228]  (hdr.cmd_line_ptr)
        0x8a, 0x00, // mov al, [rax]
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0x8a, 0x86, 0xe8, 0x01, 0x00, 0x00, // mov al, [rsi+0x1e8]  (e820_entries)
        0xe6, 0xf4, // out 0xf4, al
        0xeb, 0xfe,
    ];
    let k = write_elf(&d, &code);
    let out = run(
        &kernel_args(&k, &["--cmdline", "Zfoo=1", "--memory-mib", "64"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.stdout, b"Z");
    assert_eq!(out.status.code(), Some(3), "three e820 entries: {out:?}");
}

#[test]
fn bad_kernel_and_bad_memory_are_one_line_errors() {
    let d = scratch("errors");
    let missing = d.join("missing");
    let out = run(
        &["--kernel", missing.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(250));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open kernel"), "{err}");
    assert_eq!(err.lines().count(), 1);
    if !kvm_available() {
        return;
    }
    let k = write_elf(&d, &exit_with(0));
    let out = run(
        &["--kernel", k.to_str().unwrap(), "--memory-mib", "1000000"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(250));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceeds the host"));
}

fn api(sock: &Path, cmd: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    writeln!(s, "{{\"command\":\"{cmd}\"}}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn api_socket_pause_resume_metrics_stop() {
    if !kvm_available() {
        return;
    }
    let d = scratch("api");
    let sock = d.join("api.sock");
    // A guest that keeps writing 'x' to COM1 forever.
    let mut code = serial_byte(b'x');
    code.extend_from_slice(&[0xeb, 0xfb]); // jmp back to `out dx, al`
    let k = write_elf(&d, &code);
    let mut child = Command::new(VMM)
        .args(kernel_args(
            &k,
            &["--serial", "none", "--api-sock", sock.to_str().unwrap()],
        ))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "API socket never appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(api(&sock, "pause")["ok"], true);
    let m1 = api(&sock, "metrics");
    std::thread::sleep(Duration::from_millis(50));
    let m2 = api(&sock, "metrics");
    assert_eq!(
        m1["metrics"]["exits"]["io_out"], m2["metrics"]["exits"]["io_out"],
        "no exits while paused"
    );
    assert_eq!(api(&sock, "resume")["ok"], true);
    std::thread::sleep(Duration::from_millis(50));
    let m3 = api(&sock, "metrics");
    assert!(m3["metrics"]["exits"]["io_out"].as_u64() > m2["metrics"]["exits"]["io_out"].as_u64());
    assert!(
        m3["metrics"]["devices"]["serial"]["tx_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(m3["metrics"]["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(api(&sock, "bogus")["ok"], false);
    assert_eq!(api(&sock, "stop")["ok"], true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vmrun-vmm did not stop");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(254));
    assert!(!sock.exists(), "socket removed on exit");
}

#[test]
fn json_config_and_serial_input_from_a_pipe() {
    if !kvm_available() {
        return;
    }
    let d = scratch("stdin");
    let code = [
        0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (LSR)
        0xec, // in al, dx
        0xa8, 0x01, // test al, 1 (data ready)
        0x74, 0xfb, // jz back to `in`
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xec, // in al, dx (the received byte)
        0xe6, 0xf4, // out 0xf4, al
        0xeb, 0xfe,
    ];
    let k = write_elf(&d, &code);
    let cfg = d.join("vm.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "kernel": k,
            "test_payload": true,
            "serial": "none",
            "serial_stdin": true,
            "memory_mib": 32,
        })
        .to_string(),
    )
    .unwrap();
    let mut child = Command::new(VMM)
        .args(["--config", cfg.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"A").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("guest never saw the input byte");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(i32::from(b'A')));
    // --config excludes the other VM options.
    let out = run(
        &["--config", cfg.to_str().unwrap(), "--vcpus", "2"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
}
