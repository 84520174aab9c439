// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! virtio-blk through `virtio-drivers`' `VirtIOBlk`.
//!
//! Device 0 is read-write and holds the host's pattern stream `kit.blk_seed=`; device 1 (if
//! announced) is read-only with stream `kit.blk_seed + 1`. Checks capacity (`kit.blk_sectors=`),
//! reads, writes (stream `kit.blk_wseed=` at sectors 64..128, which the host verifies in the
//! file afterwards), flush (the FLUSH feature must be offered), GET_ID (printed), out-of-range
//! sectors, and that the read-only device refuses writes and keeps its data.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::mmio::MmioTransport;
use vmrun_guest_kit::cmdline::kit_number;
use vmrun_guest_kit::hal::IdentityHal;
use vmrun_guest_kit::mmio::{find, id, transport};
use vmrun_guest_kit::report::Report;
use vmrun_guest_kit::{kit_main, pattern, println};

kit_main!(run);

type Blk = VirtIOBlk<IdentityHal, MmioTransport<'static>>;

/// VIRTIO_BLK_F_FLUSH.
const F_FLUSH: u64 = 1 << 9;
/// VIRTIO_BLK_F_RO.
const F_RO: u64 = 1 << 5;

fn open(cmdline: &str, n: usize) -> Result<(Blk, u64), String> {
    let f = find(cmdline, id::BLOCK, n)?;
    let features = f.regs.device_features();
    let blk = Blk::new(transport(&f)?).map_err(|e| format!("init: {e}"))?;
    Ok((blk, features))
}

fn run(bp: u64) -> ! {
    let mut r = Report::start(bp);
    let cmdline = r.cmdline;
    let seed = kit_number(cmdline, "blk_seed").unwrap_or(0);
    let wseed = kit_number(cmdline, "blk_wseed").unwrap_or(1);
    match open(cmdline, 0) {
        Err(e) => r.record("blk.init", Err(e)),
        Ok((mut blk, features)) => {
            r.run("blk.capacity", || capacity(&blk, cmdline));
            r.run("blk.read", || read(&mut blk, seed));
            r.run("blk.write", || write(&mut blk, wseed));
            r.run("blk.flush", || {
                if features & F_FLUSH == 0 {
                    return Err(format!("FLUSH not offered (features {features:#x})"));
                }
                blk.flush().map_err(|e| format!("flush: {e}"))
            });
            r.run("blk.id", || {
                let mut buf = [0u8; 20];
                let n = blk
                    .device_id(&mut buf)
                    .map_err(|e| format!("GET_ID: {e}"))?;
                let id =
                    core::str::from_utf8(&buf[..n]).map_err(|_| String::from("id is not UTF-8"))?;
                println!("INFO blk id {id}");
                if n == 0 {
                    Err(String::from("empty id"))
                } else {
                    Ok(())
                }
            });
            r.run("blk.out_of_range", || out_of_range(&mut blk));
            r.run("blk.unaligned_tail", || {
                // The device's last sector reads fine; the one after it does not.
                let cap = usize::try_from(blk.capacity()).map_err(|_| String::from("capacity"))?;
                let mut buf = [0u8; SECTOR_SIZE];
                blk.read_blocks(cap - 1, &mut buf)
                    .map_err(|e| format!("last sector: {e}"))?;
                match pattern::mismatch(seed, ((cap - 1) * SECTOR_SIZE) as u64, &buf) {
                    Some(i) => Err(format!("last sector differs at byte {i}")),
                    None => Ok(()),
                }
            });
        }
    }
    if r.selected("blk.ro") && find(cmdline, id::BLOCK, 1).is_ok() {
        let res = open(cmdline, 1)
            .and_then(|(mut blk, features)| read_only(&mut blk, features, seed + 1));
        r.record("blk.ro", res);
    }
    r.finish()
}

fn capacity(blk: &Blk, cmdline: &str) -> Result<(), String> {
    println!("INFO blk capacity {}", blk.capacity());
    match kit_number(cmdline, "blk_sectors") {
        Some(want) if want != blk.capacity() => Err(format!(
            "capacity {} sectors, expected {want}",
            blk.capacity()
        )),
        _ => Ok(()),
    }
}

fn read(blk: &mut Blk, seed: u64) -> Result<(), String> {
    // 256 KiB in 64 KiB requests, then a few single sectors.
    let mut buf = vec![0u8; 64 << 10];
    let sectors = buf.len() / SECTOR_SIZE;
    for chunk in 0..4 {
        let sector = chunk * sectors;
        blk.read_blocks(sector, &mut buf)
            .map_err(|e| format!("read at {sector}: {e}"))?;
        if let Some(i) = pattern::mismatch(seed, (sector * SECTOR_SIZE) as u64, &buf) {
            return Err(format!("data differs at sector {sector} byte {i}"));
        }
    }
    let mut one = [0u8; SECTOR_SIZE];
    for sector in [0usize, 7, 129, 511] {
        blk.read_blocks(sector, &mut one)
            .map_err(|e| format!("read at {sector}: {e}"))?;
        if let Some(i) = pattern::mismatch(seed, (sector * SECTOR_SIZE) as u64, &one) {
            return Err(format!("data differs at sector {sector} byte {i}"));
        }
    }
    Ok(())
}

fn write(blk: &mut Blk, wseed: u64) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * SECTOR_SIZE];
    pattern::fill(wseed, 0, &mut buf);
    blk.write_blocks(64, &buf)
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; buf.len()];
    blk.read_blocks(64, &mut back)
        .map_err(|e| format!("read back: {e}"))?;
    if let Some(i) = pattern::mismatch(wseed, 0, &back) {
        return Err(format!("read-back differs at byte {i}"));
    }
    Ok(())
}

fn out_of_range(blk: &mut Blk) -> Result<(), String> {
    let cap = usize::try_from(blk.capacity()).map_err(|_| String::from("capacity"))?;
    let mut one = [0u8; SECTOR_SIZE];
    let mut two = [0u8; 2 * SECTOR_SIZE];
    if blk.read_blocks(cap, &mut one).is_ok() {
        return Err(format!("read at sector {cap} (= capacity) succeeded"));
    }
    if blk.read_blocks(cap - 1, &mut two).is_ok() {
        return Err(String::from("read straddling the end succeeded"));
    }
    if blk.write_blocks(cap, &one).is_ok() {
        return Err(format!("write at sector {cap} succeeded"));
    }
    if blk.read_blocks(usize::MAX / SECTOR_SIZE, &mut one).is_ok() {
        return Err(String::from("read at a huge sector succeeded"));
    }
    Ok(())
}

fn read_only(blk: &mut Blk, features: u64, seed: u64) -> Result<(), String> {
    if features & F_RO == 0 || !blk.readonly() {
        return Err(format!(
            "RO feature not offered/negotiated (features {features:#x})"
        ));
    }
    let mut buf = [0u8; SECTOR_SIZE];
    blk.read_blocks(3, &mut buf)
        .map_err(|e| format!("read: {e}"))?;
    if let Some(i) = pattern::mismatch(seed, 3 * SECTOR_SIZE as u64, &buf) {
        return Err(format!("data differs at byte {i}"));
    }
    let junk = [0xeeu8; SECTOR_SIZE];
    if blk.write_blocks(3, &junk).is_ok() {
        return Err(String::from("write to the read-only device succeeded"));
    }
    blk.read_blocks(3, &mut buf)
        .map_err(|e| format!("read after refused write: {e}"))?;
    if pattern::mismatch(seed, 3 * SECTOR_SIZE as u64, &buf).is_some() {
        return Err(String::from("refused write changed the data"));
    }
    Ok(())
}
