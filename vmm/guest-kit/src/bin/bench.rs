// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Measurements from inside the guest, printed as `BENCH <name> <value> <unit>` lines for
//! `bench-vmm`: blk sequential read/write (64 KiB requests) and 4 KiB random-read IOPS on the
//! first block device, and vsock stream throughput both ways (port 6000: host -> guest,
//! `kit.vsock_mib=` MiB, answered by `done`; port 6001: guest -> host, then shutdown). `kit.test=` selects `blk` and/or `vsock`;
//! `kit.mode=idle` instead announces `IDLE` and spins (no exits) for `kit.idle_ms=` so the host
//! can measure the VMM's memory at rest.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::mmio::MmioTransport;
use vmrun_guest_kit::arch::{Deadline, micros_since, rdtsc};
use vmrun_guest_kit::cmdline::{kit_number, kit_value};
use vmrun_guest_kit::hal::IdentityHal;
use vmrun_guest_kit::mmio::{find, id, transport};
use vmrun_guest_kit::report::Report;
use vmrun_guest_kit::vsock::Vsock;
use vmrun_guest_kit::{kit_main, pattern, println};

kit_main!(run);

fn run(bp: u64) -> ! {
    let mut r = Report::start(bp);
    let cmdline = r.cmdline;
    if kit_value(cmdline, "mode") == Some("idle") {
        println!("IDLE");
        let d = Deadline::after_ms(kit_number(cmdline, "idle_ms").unwrap_or(2000));
        while !d.expired() {
            core::hint::spin_loop();
        }
        r.finish()
    }
    r.run("blk", || blk(cmdline));
    r.run("vsock", || vsock(cmdline));
    r.finish()
}

fn rate(bytes: u64, us: u64) -> u64 {
    // MiB/s with two decimals, as hundredths.
    bytes * 100 * 1_000_000 / us.max(1) / (1 << 20)
}

fn blk(cmdline: &str) -> Result<(), String> {
    let f = find(cmdline, id::BLOCK, 0)?;
    let mut blk = VirtIOBlk::<IdentityHal, MmioTransport<'static>>::new(transport(&f)?)
        .map_err(|e| format!("init: {e}"))?;
    let cap = usize::try_from(blk.capacity()).map_err(|_| String::from("capacity"))?;
    let total = (kit_number(cmdline, "blk_mib").unwrap_or(32) as usize) << 20;
    let total = total.min(cap * SECTOR_SIZE);
    let mut buf = vec![0u8; 64 << 10];
    let per = buf.len() / SECTOR_SIZE;
    pattern::fill(7, 0, &mut buf);
    let start = rdtsc();
    let mut sector = 0;
    while (sector + per) * SECTOR_SIZE <= total {
        blk.write_blocks(sector, &buf)
            .map_err(|e| format!("write at {sector}: {e}"))?;
        sector += per;
    }
    blk.flush().map_err(|e| format!("flush: {e}"))?;
    let us = micros_since(start);
    let r = rate((sector * SECTOR_SIZE) as u64, us);
    println!("BENCH blk_seq_write {}.{:02} MiB/s", r / 100, r % 100);
    let start = rdtsc();
    let mut sector = 0;
    while (sector + per) * SECTOR_SIZE <= total {
        blk.read_blocks(sector, &mut buf)
            .map_err(|e| format!("read at {sector}: {e}"))?;
        sector += per;
    }
    let us = micros_since(start);
    let r = rate((sector * SECTOR_SIZE) as u64, us);
    println!("BENCH blk_seq_read {}.{:02} MiB/s", r / 100, r % 100);
    let mut page = [0u8; 4096];
    let pages = (total / 4096).max(1) as u64;
    let n = kit_number(cmdline, "blk_iops_n").unwrap_or(4000);
    let mut x = 0x1234_5678_9abc_def1u64;
    let start = rdtsc();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let sector = ((x % pages) * 8) as usize;
        blk.read_blocks(sector, &mut page)
            .map_err(|e| format!("random read at {sector}: {e}"))?;
    }
    let us = micros_since(start).max(1);
    println!("BENCH blk_randread_4k {} IOPS", n * 1_000_000 / us);
    Ok(())
}

fn vsock(cmdline: &str) -> Result<(), String> {
    let mut vs = Vsock::open(cmdline)?;
    vs.listen(6000);
    vs.listen(6001);
    println!("READY vsock");
    let total = (kit_number(cmdline, "vsock_mib").unwrap_or(64) as usize) << 20;
    let c = vs.accept(6000, Deadline::after_ms(10_000))?;
    let deadline = Deadline::after_ms(60_000);
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0usize;
    let mut since = 0usize;
    let start = rdtsc();
    while got < total {
        let n = vs.read(c, &mut buf)?;
        if n == 0 {
            if vs.is_closed(c) || deadline.expired() {
                return Err(format!("h2g stopped after {got} bytes"));
            }
            continue;
        }
        got += n;
        since += n;
        if since >= 16 << 10 {
            vs.credit_update(c)?;
            since = 0;
        }
    }
    let r = rate(got as u64, micros_since(start));
    vs.write_all(c, b"done\n", deadline)?;
    println!("BENCH vsock_h2g {}.{:02} MiB/s", r / 100, r % 100);
    vs.wait_closed(c, deadline)?;
    let c = vs.accept(6001, Deadline::after_ms(10_000))?;
    let chunk = vec![0x5au8; 1 << 20];
    let start = rdtsc();
    for _ in 0..(total >> 20) {
        vs.write_all(c, &chunk, deadline)?;
    }
    let r = rate(total as u64, micros_since(start));
    println!("BENCH vsock_g2h {}.{:02} MiB/s", r / 100, r % 100);
    vs.shutdown(c)?;
    vs.wait_closed(c, deadline)
}
