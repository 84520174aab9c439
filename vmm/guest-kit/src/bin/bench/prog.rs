// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! The `bench` program (also linked as `bench-pvh`). Measurements from inside the guest,
//! printed as `BENCH <name> <value> <unit>` lines for `bench-vmm`: blk sequential read/write (64 KiB requests) and 4 KiB random-read IOPS on the
//! first block device, and vsock stream throughput both ways (port 6000: host -> guest,
//! `kit.vsock_mib=` MiB, answered by `done`; port 6001: guest -> host, then shutdown), virtio-fs
//! sequential read of the shared `host.bin` and write of `kit.fs_wmib=` MiB to `guest.bin`
//! (64 KiB FUSE requests, one in flight, write timed up to and including FSYNC; first the mean
//! cost of a QueueNotify write, the exit every request pays), and virtio-net
//! transmit rate (`kit.net_frames=` frames of `kit.net_len=` bytes, one in flight, broadcast
//! with the local-experimental ethertype 0x88b5) and receive rate (`kit.net_rx=` such frames
//! the host sends after `INFO net rx-ready`). `kit.test=` selects `blk`, `vsock`, `fs`, `net`;
//! `kit.mode=idle` instead announces `IDLE` and spins (no exits) for `kit.idle_ms=` so the host
//! can measure the VMM's memory at rest.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::mmio::MmioTransport;
use vmrun_guest_kit::arch::{Deadline, micros_since, rdtsc};
use vmrun_guest_kit::cmdline::{kit_number, kit_value};
use vmrun_guest_kit::fuse::{Fuse, MAX_IO, ROOT};
use vmrun_guest_kit::hal::IdentityHal;
use vmrun_guest_kit::mmio::{find, id, transport};
use vmrun_guest_kit::rawq::RawQueue;
use vmrun_guest_kit::report::Report;
use vmrun_guest_kit::vsock::Vsock;
use vmrun_guest_kit::{pattern, println};

/// The program: runs the selected measurements, then exits through [`Report::finish`].
pub fn run(bp: u64) -> ! {
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
    r.run("fs", || fs(cmdline));
    r.run("net", || net(cmdline));
    r.finish()
}

/// QueueNotify writes timed by the fs measurement.
const NOTIFY_ROUNDS: u64 = 1000;

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

fn fs(cmdline: &str) -> Result<(), String> {
    let dev = find(cmdline, id::FS, 0)?;
    dev.regs.begin_init(0)?;
    let _hiprio = RawQueue::setup(dev.regs, 0, 8)?;
    let req = RawQueue::setup(dev.regs, 1, 16)?;
    dev.regs.driver_ok()?;
    // What one request pays before the back-end sees it: a QueueNotify write with nothing
    // new in the ring (a VM exit on a KVM VMM, an eventfd write on QEMU's TCG).
    let start = rdtsc();
    for _ in 0..NOTIFY_ROUNDS {
        req.notify();
    }
    let ns = micros_since(start) * 1000 / NOTIFY_ROUNDS;
    println!("BENCH fs_notify {}.{:03} us", ns / 1000, ns % 1000);
    let mut fuse = Fuse::new(req);
    fuse.init()?;
    let (node, attr) = fuse.lookup(ROOT, "host.bin")?;
    let fh = fuse.open(node, 0, false)?;
    let mut off = 0u64;
    let start = rdtsc();
    loop {
        let n = fuse.read(node, fh, off, MAX_IO as u32, false)?.len();
        if n == 0 {
            break;
        }
        off += n as u64;
    }
    let us = micros_since(start);
    fuse.release(node, fh, false)?;
    if off != attr.size {
        return Err(format!("read {off} bytes of a {}-byte host.bin", attr.size));
    }
    let r = rate(off, us);
    println!("BENCH fs_seq_read {}.{:02} MiB/s", r / 100, r % 100);
    // O_RDWR | O_CREAT | O_TRUNC, mode 0644.
    let (node, _, fh) = fuse.create(ROOT, "guest.bin", 0o1102, 0o100_644)?;
    let total = kit_number(cmdline, "fs_wmib").unwrap_or(16) << 20;
    let mut buf = vec![0u8; MAX_IO];
    pattern::fill(9, 0, &mut buf);
    let mut off = 0u64;
    let start = rdtsc();
    while off < total {
        let done = fuse.write(node, fh, off, &buf)?;
        if done as usize != buf.len() {
            return Err(format!("WRITE at {off}: {done} bytes"));
        }
        off += buf.len() as u64;
    }
    fuse.fsync(node, fh)?;
    let us = micros_since(start);
    fuse.release(node, fh, false)?;
    let r = rate(off, us);
    println!("BENCH fs_seq_write {}.{:02} MiB/s", r / 100, r % 100);
    Ok(())
}

fn net(cmdline: &str) -> Result<(), String> {
    let t = transport(&find(cmdline, id::NET, 0)?)?;
    let mut dev = VirtIONet::<IdentityHal, MmioTransport<'static>, 16>::new(t, 2048)
        .map_err(|e| format!("init: {e}"))?;
    let mac = dev.mac_address();
    let n = kit_number(cmdline, "net_frames").unwrap_or(20_000);
    let len = usize::try_from(kit_number(cmdline, "net_len").unwrap_or(64))
        .map_err(|_| String::from("net_len"))?
        .clamp(60, 1514);
    let mut frame = vec![0u8; len];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    if n > 0 {
        let start = rdtsc();
        for i in 0..n {
            frame[14..22].copy_from_slice(&i.to_le_bytes());
            let mut tx = dev.new_tx_buffer(len);
            tx.packet_mut().copy_from_slice(&frame);
            dev.send(tx).map_err(|e| format!("send #{i}: {e}"))?;
        }
        let us = micros_since(start).max(1);
        println!("BENCH net_tx {} frames/s", n * 1_000_000 / us);
        println!("INFO net sent {n} frames of {len} bytes");
    }
    match kit_number(cmdline, "net_rx") {
        Some(want) if want > 0 => net_rx(&mut dev, want),
        _ => Ok(()),
    }
}

/// Receives `want` frames of ethertype 0x88b5 that the host sends through the tap as fast as
/// it can (after `INFO net rx-ready`); the rate is counted from the first frame to the last.
/// Other frames (the host's own IPv6 chatter) are recycled and not counted.
fn net_rx(
    dev: &mut VirtIONet<IdentityHal, MmioTransport<'static>, 16>,
    want: u64,
) -> Result<(), String> {
    println!("INFO net rx-ready");
    let deadline = Deadline::after_ms(60_000);
    let (mut got, mut first) = (0u64, None);
    while got < want {
        match dev.receive() {
            Ok(buf) => {
                let ours = buf.packet().get(12..14) == Some(&[0x88, 0xb5][..]);
                dev.recycle_rx_buffer(buf)
                    .map_err(|e| format!("recycle: {e}"))?;
                if ours {
                    got += 1;
                    first.get_or_insert_with(rdtsc);
                }
            }
            Err(virtio_drivers::Error::NotReady) => {
                if deadline.expired() {
                    return Err(format!("received {got} of {want} frames within 60 s"));
                }
                core::hint::spin_loop();
            }
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    let us = first.map_or(1, micros_since).max(1);
    println!("BENCH net_rx {} frames/s", (got - 1) * 1_000_000 / us);
    println!("INFO net received {got} frames");
    Ok(())
}
