// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! VMM benchmark (prints a table; not a timed test): `cargo run --release -p vmrun-tests --bin
//! bench-vmm [-- N [VSOCK_MIB]]` (N runs per start-up figure, default 11; MiB per vsock stream,
//! default 16).
//!
//! - start-up: process spawn -> first serial byte, and -> process exit, median of N runs, for
//!   the tiny PVH guest (CPL 0, "T\n" on COM1, then the exit port) on `vmrun-vmm` and on QEMU
//!   `-M microvm -accel kvm` with `isa-debug-exit` in the same run, and for the kit's `boot`
//!   program in test-payload mode on `vmrun-vmm`;
//! - memory: the VMM's RSS minus the resident part of the guest-RAM mapping, while the guest
//!   idles in a loop with a block, an rng and a vsock device attached;
//! - vsock stream throughput both ways and blk sequential throughput and 4 KiB random-read IOPS,
//!   measured inside the guest by the kit's `bench` program.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};
use vmrun_tests::vmm::{guest_elf, vsock_connect, TempDir, Vm};

const QEMU: &str = "qemu-system-x86_64";

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// (first byte, exit) of one run; checks the exit code and the serial output.
fn one_run(cmd: Command, want_code: i32, want_prefix: &str) -> Result<(Duration, Duration)> {
    let o = Vm::spawn_command(cmd)?.wait(Duration::from_secs(30));
    if o.code() != Some(want_code) || !o.stdout.starts_with(want_prefix) {
        bail!("unexpected run: {}", o.dump());
    }
    Ok((o.first_byte.context("no serial output")?, o.elapsed))
}

fn vmm_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(vmrun_tests::vmm::vmm_bin());
    c.args(args);
    c
}

fn qemu_cmd(kernel: &str) -> Command {
    let mut c = Command::new(QEMU);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "64",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=1",
        "-kernel",
        kernel,
    ]);
    c
}

fn startup(n: usize, rows: &mut Vec<[String; 4]>) -> Result<()> {
    let tiny = guest_elf("tiny-pvh");
    let tiny = tiny.to_str().context("utf-8 path")?;
    let boot = guest_elf("boot");
    let boot = boot.to_str().context("utf-8 path")?;
    let (mut vf, mut ve, mut qf, mut qe, mut bf, mut be) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        let (f, e) = one_run(vmm_cmd(&["--kernel", tiny, "--memory-mib", "64"]), 0, "T")?;
        vf.push(f);
        ve.push(e);
        // isa-debug-exit turns the guest's 0 into status (0 << 1) | 1.
        let (f, e) = one_run(qemu_cmd(tiny), 1, "T")?;
        qf.push(f);
        qe.push(e);
        let (f, e) = one_run(
            vmm_cmd(&[
                "--kernel",
                boot,
                "--test-payload",
                "--memory-mib",
                "64",
                "--cmdline",
                "kit.mode=none",
            ]),
            0,
            "DONE",
        )?;
        bf.push(f);
        be.push(e);
    }
    let (vf, ve, qf, qe) = (
        median(&mut vf),
        median(&mut ve),
        median(&mut qf),
        median(&mut qe),
    );
    rows.push([
        format!("start -> first serial byte, tiny PVH guest (median of {n})"),
        ms(vf),
        ms(qf),
        format!(
            "{:.3}x (target <= 0.2x)",
            vf.as_secs_f64() / qf.as_secs_f64()
        ),
    ]);
    rows.push([
        format!("start -> exit, tiny PVH guest (median of {n})"),
        ms(ve),
        ms(qe),
        format!("{:.3}x", ve.as_secs_f64() / qe.as_secs_f64()),
    ]);
    rows.push([
        "start -> first serial byte, kit `boot` program, test-payload (CPL 3)".into(),
        ms(median(&mut bf)),
        "-".into(),
        "-".into(),
    ]);
    rows.push([
        "start -> exit, kit `boot` program, test-payload".into(),
        ms(median(&mut be)),
        "-".into(),
        "-".into(),
    ]);
    Ok(())
}

/// (total RSS, RSS of the guest-RAM mapping) in KiB, from /proc/<pid>/smaps.
fn rss(pid: u32, guest_kib: u64) -> Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut total, mut guest, mut size) = (0, 0, 0);
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Size:"), Some(v)) => size = v.parse()?,
            (Some("Rss:"), Some(v)) => {
                let v: u64 = v.parse()?;
                total += v;
                if size == guest_kib {
                    guest += v;
                }
            }
            _ => {}
        }
    }
    Ok((total, guest))
}

fn memory(rows: &mut Vec<[String; 4]>) -> Result<()> {
    let dir = TempDir::new("bench-mem")?;
    let img = dir.join("disk.img");
    std::fs::File::create(&img)?.set_len(16 << 20)?;
    let uds = dir.join("v.sock");
    let vm = Vm::spawn([
        "--kernel",
        guest_elf("bench").to_str().context("utf-8")?,
        "--test-payload",
        "--memory-mib",
        "128",
        "--cmdline",
        "kit.mode=idle kit.idle_ms=3000",
        "--block",
        img.to_str().context("utf-8")?,
        "--rng",
        "--vsock-uds",
        uds.to_str().context("utf-8")?,
    ])?;
    vm.wait_line("IDLE", Duration::from_secs(10))
        .context("guest did not reach IDLE")?;
    std::thread::sleep(Duration::from_millis(500));
    let (total, guest) = rss(vm.pid(), 128 << 10)?;
    let o = vm.wait(Duration::from_secs(10));
    if o.code() != Some(0) {
        bail!("idle run failed: {}", o.dump());
    }
    rows.push([
        "VMM RSS minus touched guest RAM, idle (blk+rng+vsock)".into(),
        format!("{:.2} MiB", (total - guest) as f64 / 1024.0),
        "-".into(),
        format!("target <= 4 MiB (RSS {total} KiB, guest RAM resident {guest} KiB)"),
    ]);
    Ok(())
}

fn bench_lines(o: &vmrun_tests::vmm::Outcome) -> Vec<(String, String)> {
    o.lines()
        .filter_map(|l| l.strip_prefix("BENCH "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn io(rows: &mut Vec<[String; 4]>, mib: usize) -> Result<()> {
    let dir = TempDir::new("bench-io")?;
    let img = dir.join("disk.img");
    std::fs::File::create(&img)?.set_len(64 << 20)?;
    let o = Vm::spawn([
        "--kernel",
        guest_elf("bench").to_str().context("utf-8")?,
        "--test-payload",
        "--memory-mib",
        "128",
        "--cmdline",
        "kit.test=blk kit.blk_mib=32 kit.blk_iops_n=4000",
        "--block",
        img.to_str().context("utf-8")?,
    ])?
    .wait(Duration::from_secs(120));
    if o.code() != Some(0) {
        bail!("blk bench failed: {}", o.dump());
    }
    for (k, v) in bench_lines(&o) {
        rows.push([
            format!("{k} (guest, 64 KiB requests / 4 KiB random)"),
            v,
            "-".into(),
            "-".into(),
        ]);
    }

    let uds = dir.join("v.sock");
    let vm = Vm::spawn([
        "--kernel",
        guest_elf("bench").to_str().context("utf-8")?,
        "--test-payload",
        "--memory-mib",
        "128",
        "--cmdline",
        &format!("kit.test=vsock kit.vsock_mib={mib}"),
        "--vsock-uds",
        uds.to_str().context("utf-8")?,
    ])?;
    let chunk = vec![0xa5u8; 1 << 20];
    let host = || -> Result<(Duration, Duration, usize)> {
        let mut s = vsock_connect(&uds, 6000, Duration::from_secs(10))?;
        let start = Instant::now();
        for _ in 0..mib {
            s.write_all(&chunk)?;
        }
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let line = vmrun_tests::vmm::read_line(&mut s)?;
        let h2g = start.elapsed();
        if line != "done" {
            bail!("h2g: guest answered {line:?}");
        }
        drop(s);
        let mut s = vsock_connect(&uds, 6001, Duration::from_secs(10))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        let start = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok((h2g, start.elapsed(), got))
    };
    let result = host();
    let o = vm.wait(Duration::from_secs(60));
    let (h2g, g2h, got) = match result {
        Ok(r) => r,
        Err(e) => bail!("vsock bench: {e:#}\n{}", o.dump()),
    };
    if o.code() != Some(0) || got != mib << 20 {
        bail!("vsock bench failed ({got} bytes): {}", o.dump());
    }
    let host_rate = |d: Duration| format!("{:.1} MiB/s", mib as f64 / d.as_secs_f64());
    for (k, v) in bench_lines(&o) {
        let host = match k.as_str() {
            "vsock_h2g" => host_rate(h2g),
            "vsock_g2h" => host_rate(g2h),
            _ => "-".into(),
        };
        rows.push([
            format!("{k} ({mib} MiB stream; guest-measured / host-measured)"),
            v,
            host,
            "-".into(),
        ]);
    }
    Ok(())
}

fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(11);
    let vsock_mib: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(16);
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut errors = Vec::new();
    if let Err(e) = startup(n, &mut rows) {
        errors.push(format!("start-up: {e:#}"));
    }
    if let Err(e) = memory(&mut rows) {
        errors.push(format!("memory: {e:#}"));
    }
    if let Err(e) = io(&mut rows, vsock_mib) {
        errors.push(format!("io: {e:#}"));
    }
    println!("| measurement | vmrun-vmm | QEMU microvm (KVM) | ratio / note |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
    }
    for e in &errors {
        eprintln!("bench-vmm: {e}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{} measurement group(s) failed", errors.len())
    }
}
