// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! virtio-fs against a real vhost-user back-end (virtiofsd), driven with the kit's FUSE client.
//!
//! The host shares a directory holding `host.bin` (`kit.fs_size=` bytes of pattern stream
//! `kit.fs_seed=`) and a directory `d` with the files `a`, `b`, `c`. Checks, in order:
//!
//! * `fs.config`: tag (`kit.fs_tag=`) and one request queue in the config space;
//! * `fs.init`: FUSE_INIT, protocol major 7;
//! * `fs.lookup`: LOOKUP of `host.bin` (a regular file of the right size) and of a missing name
//!   (ENOENT);
//! * `fs.getattr`: GETATTR agrees with LOOKUP;
//! * `fs.read`: OPEN + READ in 64 KiB requests, data equal to the stream; prints
//!   `INFO fs host.bin fnv=<hex>`;
//! * `fs.write`: CREATE `guest.bin`, WRITE `kit.fs_wsize=` bytes of stream `kit.fs_wseed=`,
//!   FSYNC, RELEASE, then GETATTR (size) and a READ back; prints `INFO fs guest.bin fnv=<hex>`
//!   (the host compares it with the file it finds);
//! * `fs.readdir`: OPENDIR/READDIR/RELEASEDIR of `d` lists `.`, `..`, `a`, `b`, `c`;
//! * `fs.disconnect` (only with `kit.fs_disconnect=1`): prints `INFO fs kill-backend`, waits
//!   for the host to kill virtiofsd, then expects DEVICE_NEEDS_RESET with a config-change
//!   interrupt, a clean reset, and a re-initialisation that the device refuses (NEEDS_RESET
//!   again) — the VMM keeps running and the program exits normally.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use vmrun_guest_kit::arch::Deadline;
use vmrun_guest_kit::cmdline::{kit_number, kit_value};
use vmrun_guest_kit::fuse::{ENOENT, Fuse, FuseError, MAX_IO, ROOT};
use vmrun_guest_kit::mmio::{self, Found, find, id};
use vmrun_guest_kit::pattern::{self, Fnv};
use vmrun_guest_kit::rawq::RawQueue;
use vmrun_guest_kit::report::Report;
use vmrun_guest_kit::{kit_main, println};

kit_main!(run);

/// O_RDONLY, O_RDWR, O_CREAT, O_TRUNC.
const O_RDONLY: u32 = 0;
const O_RDWR: u32 = 2;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

fn start(dev: &Found) -> Result<Fuse, String> {
    dev.regs.begin_init(0)?;
    let _hiprio = RawQueue::setup(dev.regs, 0, 8)?;
    let req = RawQueue::setup(dev.regs, 1, 16)?;
    dev.regs.driver_ok()?;
    Ok(Fuse::new(req))
}

fn run(bp: u64) -> ! {
    let mut r = Report::start(bp);
    let cmdline = r.cmdline;
    let dev = match find(cmdline, id::FS, 0) {
        Ok(d) => d,
        Err(e) => {
            r.record("fs.probe", Err(e));
            r.finish()
        }
    };
    r.run("fs.config", || config(&dev, kit_value(cmdline, "fs_tag")));
    let mut fuse = match start(&dev) {
        Ok(f) => f,
        Err(e) => {
            r.record("fs.init", Err(e));
            r.finish()
        }
    };
    r.run("fs.init", || {
        let (major, minor) = fuse.init()?;
        println!("INFO fs protocol {major}.{minor} max_write={}", fuse.max_write);
        if major != 7 {
            return Err(format!("FUSE major {major}"));
        }
        Ok(())
    });
    let size = kit_number(cmdline, "fs_size").unwrap_or(0);
    let seed = kit_number(cmdline, "fs_seed").unwrap_or(0);
    let wsize = kit_number(cmdline, "fs_wsize").unwrap_or(256 << 10);
    let wseed = kit_number(cmdline, "fs_wseed").unwrap_or(1);
    r.run("fs.lookup", || lookup(&mut fuse, size));
    r.run("fs.getattr", || {
        let (node, a) = fuse.lookup(ROOT, "host.bin")?;
        let b = fuse.getattr(node)?;
        if a != b {
            return Err(format!("LOOKUP {a:?} but GETATTR {b:?}"));
        }
        Ok(())
    });
    r.run("fs.read", || read(&mut fuse, size, seed));
    r.run("fs.write", || write(&mut fuse, wsize, wseed));
    r.run("fs.readdir", || readdir(&mut fuse));
    if kit_number(cmdline, "fs_disconnect") == Some(1) {
        r.run("fs.disconnect", || disconnect(&dev));
    }
    r.finish()
}

fn config(dev: &Found, want: Option<&str>) -> Result<(), String> {
    let tag: Vec<u8> = (0..36)
        .map(|i| dev.regs.config_u8(i))
        .take_while(|b| *b != 0)
        .collect();
    let tag = String::from_utf8(tag).map_err(|_| String::from("tag is not UTF-8"))?;
    let queues = (36..40).fold(0u32, |acc, i| {
        acc | (u32::from(dev.regs.config_u8(i)) << (8 * (i - 36)))
    });
    println!("INFO fs tag {tag} request_queues={queues}");
    if want.is_some_and(|w| w != tag) {
        return Err(format!("tag {tag:?}, expected {want:?}"));
    }
    if queues != 1 {
        return Err(format!("{queues} request queues"));
    }
    Ok(())
}

fn lookup(fuse: &mut Fuse, size: u64) -> Result<(), String> {
    let (node, attr) = fuse.lookup(ROOT, "host.bin")?;
    if node == 0 || !attr.is_file() || attr.size != size {
        return Err(format!("host.bin: node {node}, {attr:?}, expected size {size}"));
    }
    match fuse.lookup(ROOT, "no-such-file") {
        Err(FuseError::Errno(ENOENT)) => Ok(()),
        other => Err(format!("LOOKUP of a missing name: {other:?}")),
    }
}

fn read(fuse: &mut Fuse, size: u64, seed: u64) -> Result<(), String> {
    let (node, _) = fuse.lookup(ROOT, "host.bin")?;
    let fh = fuse.open(node, O_RDONLY, false)?;
    let mut fnv = Fnv::default();
    let mut off = 0u64;
    loop {
        let data = fuse.read(node, fh, off, MAX_IO as u32, false)?;
        if data.is_empty() {
            break;
        }
        if let Some(i) = pattern::mismatch(seed, off, data) {
            return Err(format!("host.bin differs at byte {}", off + i as u64));
        }
        fnv.update(data);
        off += data.len() as u64;
        if off > size {
            return Err(format!("read {off} bytes of a {size}-byte file"));
        }
    }
    fuse.release(node, fh, false)?;
    println!("INFO fs host.bin fnv={:016x} bytes={off}", fnv.0);
    if off != size {
        return Err(format!("read {off} bytes, expected {size}"));
    }
    Ok(())
}

fn write(fuse: &mut Fuse, wsize: u64, wseed: u64) -> Result<(), String> {
    let (node, attr, fh) =
        fuse.create(ROOT, "guest.bin", O_RDWR | O_CREAT | O_TRUNC, 0o100_644)?;
    if !attr.is_file() {
        return Err(format!("CREATE returned {attr:?}"));
    }
    let mut buf = vec![0u8; MAX_IO];
    let mut fnv = Fnv::default();
    let mut off = 0u64;
    while off < wsize {
        let n = usize::try_from((wsize - off).min(MAX_IO as u64)).unwrap_or(MAX_IO);
        pattern::fill(wseed, off, &mut buf[..n]);
        let done = fuse.write(node, fh, off, &buf[..n])?;
        if done as usize != n {
            return Err(format!("WRITE at {off}: {done} of {n} bytes"));
        }
        fnv.update(&buf[..n]);
        off += n as u64;
    }
    fuse.fsync(node, fh)?;
    let back = fuse.read(node, fh, 0, MAX_IO as u32, false)?;
    if let Some(i) = pattern::mismatch(wseed, 0, back) {
        return Err(format!("read-back differs at byte {i}"));
    }
    fuse.release(node, fh, false)?;
    let a = fuse.getattr(node)?;
    if a.size != wsize {
        return Err(format!("guest.bin has size {} after writing {wsize}", a.size));
    }
    println!("INFO fs guest.bin fnv={:016x} bytes={wsize}", fnv.0);
    Ok(())
}

fn readdir(fuse: &mut Fuse) -> Result<(), String> {
    let (node, attr) = fuse.lookup(ROOT, "d")?;
    if !attr.is_dir() {
        return Err(format!("d is not a directory: {attr:?}"));
    }
    let mut names: Vec<String> = fuse.list(node)?.into_iter().map(|e| e.name).collect();
    names.sort();
    println!("INFO fs d lists {names:?}");
    if names != [".", "..", "a", "b", "c"] {
        return Err(format!("d lists {names:?}"));
    }
    Ok(())
}

fn disconnect(dev: &Found) -> Result<(), String> {
    println!("INFO fs kill-backend");
    let deadline = Deadline::after_ms(20_000);
    let regs = dev.regs;
    while regs.read(mmio::STATUS) & mmio::S_NEEDS_RESET == 0 {
        if deadline.expired() {
            return Err(String::from("no DEVICE_NEEDS_RESET within 20 s"));
        }
        core::hint::spin_loop();
    }
    let isr = regs.read(mmio::INTERRUPT_STATUS);
    if isr & 2 == 0 {
        return Err(format!("InterruptStatus {isr:#x} lacks the config-change bit"));
    }
    regs.write(mmio::INTERRUPT_ACK, isr);
    regs.reset()?;
    // The back-end is gone: a new initialisation must be refused, not hang or crash the VMM.
    match start(dev) {
        Ok(_) => Err(String::from("re-initialisation succeeded without a back-end")),
        Err(e) => {
            let s = regs.read(mmio::STATUS);
            println!("INFO fs re-init refused: {e}");
            if s & mmio::S_NEEDS_RESET == 0 {
                return Err(format!("status {s:#x} after refused activation"));
            }
            regs.reset()
        }
    }
}
