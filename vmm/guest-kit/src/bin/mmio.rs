// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! virtio-mmio register protocol and hostile virtqueue input, with raw register accesses and a
//! hand-driven split virtqueue (no driver library in the way).
//!
//! `mmio.<dev>.protocol` for every announced device: magic/version/device id, reset, the status
//! machine (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK; DRIVER_OK alone refused), feature
//! negotiation (VERSION_1 offered and kept), queue setup (QueueNumMax, QueueReady read-back,
//! absent queues report 0), disabling live queues one by one (QueueReady 0 reads back),
//! reset clears queues, read-only registers ignore writes.
//!
//! `hostile.<dev>.<case>` on the rng, the vsock and the first block device: descriptors outside guest
//! memory, address wrap-around, looping chains, oversized lengths, out-of-range heads and
//! sectors, a read-only status buffer, lying vsock header lengths, short headers, unknown
//! operations, receive buffers outside memory. After each, a good request must complete with
//! correct data (for vsock: a connection request to a host port nobody listens on is answered
//! with a RST for exactly that request). The block image is the host's pattern stream `kit.blk_seed=`.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use vmrun_guest_kit::arch::Deadline;
use vmrun_guest_kit::cmdline::kit_number;
use vmrun_guest_kit::hal::dma_pages;
use vmrun_guest_kit::mmio::{self, Found, Regs, find, id, probe};
use vmrun_guest_kit::rawq::{NEXT, RawQueue, WRITE};
use vmrun_guest_kit::report::Report;
use vmrun_guest_kit::{kit_main, pattern, println};

kit_main!(run);

fn name(device_id: u32) -> &'static str {
    match device_id {
        id::BLOCK => "blk",
        id::RNG => "rng",
        id::VSOCK => "vsock",
        id::NET => "net",
        id::FS => "fs",
        id::CONSOLE => "console",
        _ => "other",
    }
}

fn run(bp: u64) -> ! {
    let mut r = Report::start(bp);
    let cmdline = r.cmdline;
    match probe(cmdline) {
        Err(e) => r.record("mmio.probe", Err(e)),
        Ok(devs) => {
            r.record(
                "mmio.probe",
                if devs.is_empty() {
                    Err(String::from("no devices announced"))
                } else {
                    Ok(())
                },
            );
            let mut seen = [0usize; 32];
            for f in &devs {
                let n = &mut seen[(f.device_id as usize).min(31)];
                let label = format!(
                    "mmio.{}{}.protocol",
                    name(f.device_id),
                    if *n == 0 {
                        String::new()
                    } else {
                        format!("{n}")
                    }
                );
                *n += 1;
                r.run(&label, || protocol(f));
            }
        }
    }
    if let Ok(f) = find(cmdline, id::RNG, 0) {
        hostile_rng(&mut r, f.regs);
    }
    if let Ok(f) = find(cmdline, id::VSOCK, 0) {
        hostile_vsock(&mut r, f.regs);
    }
    if let Ok(f) = find(cmdline, id::BLOCK, 0) {
        let seed = kit_number(cmdline, "blk_seed").unwrap_or(0);
        hostile_blk(&mut r, f.regs, seed);
    }
    r.finish()
}

fn protocol(f: &Found) -> Result<(), String> {
    let g = f.regs;
    let version = g.read(mmio::VERSION);
    if version != 2 {
        return Err(format!("version {version}, expected 2 (modern)"));
    }
    if f.device_id == 0 {
        return Err(String::from("device id 0 (placeholder) announced"));
    }
    println!(
        "INFO mmio {:#x} irq {} id {} vendor {:#x}",
        f.dev.base,
        f.dev.irq,
        f.device_id,
        g.read(mmio::VENDOR_ID)
    );
    // Read-only registers ignore writes.
    g.write(mmio::MAGIC_VALUE, 0);
    g.write(mmio::DEVICE_ID, 0x55);
    if g.read(mmio::MAGIC_VALUE) != mmio::MAGIC || g.read(mmio::DEVICE_ID) != f.device_id {
        return Err(String::from("a write changed MagicValue or DeviceID"));
    }
    g.reset()?;
    // DRIVER_OK without the steps before it must not be accepted as a live device.
    g.write(mmio::STATUS, mmio::S_DRIVER_OK);
    let s = g.read(mmio::STATUS);
    if s == mmio::S_DRIVER_OK {
        return Err(String::from("DRIVER_OK accepted straight after reset"));
    }
    g.reset()?;
    g.write(mmio::STATUS, mmio::S_ACKNOWLEDGE);
    if g.read(mmio::STATUS) != mmio::S_ACKNOWLEDGE {
        return Err(format!(
            "status {:#x} after ACKNOWLEDGE",
            g.read(mmio::STATUS)
        ));
    }
    g.write(mmio::STATUS, mmio::S_ACKNOWLEDGE | mmio::S_DRIVER);
    if g.read(mmio::STATUS) != mmio::S_ACKNOWLEDGE | mmio::S_DRIVER {
        return Err(format!("status {:#x} after DRIVER", g.read(mmio::STATUS)));
    }
    let offered = g.device_features();
    println!("INFO mmio {:#x} features {offered:#x}", f.dev.base);
    if offered & mmio::F_VERSION_1 == 0 {
        return Err(format!("features {offered:#x} lack VERSION_1"));
    }
    g.set_driver_features(mmio::F_VERSION_1);
    g.write(
        mmio::STATUS,
        mmio::S_ACKNOWLEDGE | mmio::S_DRIVER | mmio::S_FEATURES_OK,
    );
    let s = g.read(mmio::STATUS);
    if s != mmio::S_ACKNOWLEDGE | mmio::S_DRIVER | mmio::S_FEATURES_OK {
        return Err(format!("status {s:#x} after FEATURES_OK"));
    }
    // Queue 0 exists; a queue far out of range reports QueueNumMax 0.
    g.write(mmio::QUEUE_SEL, 1000);
    if g.read(mmio::QUEUE_NUM_MAX) != 0 {
        return Err(format!(
            "queue 1000 has QueueNumMax {}",
            g.read(mmio::QUEUE_NUM_MAX)
        ));
    }
    let _queue = RawQueue::setup(g, 0, 8)?;
    let gen1 = g.read(mmio::CONFIG_GENERATION);
    g.driver_ok()?;
    let gen2 = g.read(mmio::CONFIG_GENERATION);
    if gen1 != gen2 {
        return Err(format!(
            "config generation moved {gen1} -> {gen2} without a config change"
        ));
    }
    // Disabling queues one by one while the device runs (virtio 1.2 §4.2.2.2: the driver
    // writes 0 to QueueReady and reads it back; drivers such as virtio-drivers do this on
    // teardown and spin until it reads 0).
    g.reset()?;
    g.begin_init(0)?;
    let mut queues = alloc::vec::Vec::new();
    for i in 0..3u32 {
        g.write(mmio::QUEUE_SEL, i);
        if g.read(mmio::QUEUE_NUM_MAX) == 0 {
            break;
        }
        queues.push(RawQueue::setup(g, i, 8)?);
    }
    g.driver_ok()?;
    for i in 0..queues.len() as u32 {
        g.write(mmio::QUEUE_SEL, i);
        g.write(mmio::QUEUE_READY, 0);
        let ready = g.read(mmio::QUEUE_READY);
        if ready != 0 {
            return Err(format!(
                "queue {i} of {}: QueueReady reads {ready} after writing 0 with the device live",
                queues.len()
            ));
        }
    }
    // Reset returns to status 0 and un-readies the queue.
    g.reset()?;
    g.write(mmio::QUEUE_SEL, 0);
    if g.read(mmio::QUEUE_READY) != 0 {
        return Err(String::from("queue 0 still ready after reset"));
    }
    Ok(())
}

/// Outside any guest RAM this kit is run with (1 TiB).
const FAR: u64 = 1 << 40;

/// A named hostile request writer.
type Case<'a> = (&'a str, &'a dyn Fn(&mut RawQueue));

fn deadline() -> Deadline {
    Deadline::after_ms(3000)
}

fn hostile_rng(r: &mut Report, g: Regs) {
    let setup = || -> Result<(RawQueue, usize), String> {
        g.begin_init(0)?;
        let q = RawQueue::setup(g, 0, 16)?;
        g.driver_ok()?;
        // Page 1 is the buffer, page 2 a canary that no request may reach.
        let buf = dma_pages(2).ok_or_else(|| String::from("DMA pool exhausted"))?;
        Ok((q, buf))
    };
    let (mut q, buf) = match setup() {
        Ok(v) => v,
        Err(e) => return r.record("hostile.rng.setup", Err(e)),
    };
    let good = |q: &mut RawQueue| -> Result<(), String> {
        // SAFETY: buf is a DMA page owned by this test.
        unsafe { core::ptr::write_bytes(buf as *mut u8, 0, 64) };
        q.set_desc(0, buf as u64, 64, WRITE, 0);
        q.publish(0);
        q.notify();
        let len = q
            .wait_for(0, deadline())
            .ok_or_else(|| String::from("good request not served afterwards"))?;
        if len == 0 || len > 64 {
            return Err(format!("good request used length {len}"));
        }
        // SAFETY: as above; the device wrote `len` bytes.
        let bytes = unsafe { core::slice::from_raw_parts(buf as *const u8, len as usize) };
        if len >= 16 && bytes.iter().all(|b| *b == 0) {
            return Err(String::from("good request returned only zeros"));
        }
        Ok(())
    };
    r.record("hostile.rng.baseline", good(&mut q));
    // The completed request raised the used-buffer interrupt: InterruptStatus bit 0 is set
    // (interrupts cannot be taken here; the register is what a driver would read), and
    // InterruptACK clears it.
    r.record("mmio.rng.interrupt_status", {
        let s = g.read(mmio::INTERRUPT_STATUS);
        if s & 1 == 0 {
            Err(format!("InterruptStatus {s:#x} after a used buffer"))
        } else {
            g.write(mmio::INTERRUPT_ACK, s);
            match g.read(mmio::INTERRUPT_STATUS) {
                0 => Ok(()),
                left => Err(format!("InterruptStatus {left:#x} after ACK of {s:#x}")),
            }
        }
    });
    let cases: [Case<'_>; 5] = [
        ("outside", &|q| {
            q.set_desc(1, FAR, 64, WRITE, 0);
            q.publish(1);
        }),
        ("wrap", &|q| {
            q.set_desc(1, u64::MAX - 8, 64, WRITE, 0);
            q.publish(1);
        }),
        ("oversized", &|q| {
            q.set_desc(1, buf as u64, 0xffff_f000, WRITE, 0);
            q.publish(1);
        }),
        ("loop", &|q| {
            q.set_desc(1, buf as u64 + 1024, 16, WRITE | NEXT, 2);
            q.set_desc(2, buf as u64 + 2048, 16, WRITE | NEXT, 1);
            q.publish(1);
        }),
        ("bad_head", &|q| q.publish(200)),
    ];
    let canary = buf + 4096;
    for (case, bad) in cases {
        // SAFETY: the canary page belongs to this test.
        unsafe { core::ptr::write_bytes(canary as *mut u8, 0xc5, 4096) };
        bad(&mut q);
        q.notify();
        let mut result = good(&mut q);
        // SAFETY: as above.
        let page = unsafe { core::slice::from_raw_parts(canary as *const u8, 4096) };
        // An oversized buffer does cover the canary: a device may fill a prefix of it that lies
        // in guest memory (the driver offered it), so only the other cases check it.
        if result.is_ok()
            && case != "oversized"
            && let Some(i) = page.iter().position(|b| *b != 0xc5)
        {
            result = Err(format!(
                "the device wrote outside every offered buffer (canary byte {i})"
            ));
        }
        r.record(&format!("hostile.rng.{case}"), result);
    }
    let _ = g.reset();
}

const BLK_IN: u32 = 0;

fn hostile_blk(r: &mut Report, g: Regs, seed: u64) {
    let setup = || -> Result<(RawQueue, usize), String> {
        g.begin_init(0)?;
        let q = RawQueue::setup(g, 0, 16)?;
        g.driver_ok()?;
        let page = dma_pages(2).ok_or_else(|| String::from("DMA pool exhausted"))?;
        Ok((q, page))
    };
    let (mut q, page) = match setup() {
        Ok(v) => v,
        Err(e) => return r.record("hostile.blk.setup", Err(e)),
    };
    // Page layout: header at +0, status at +64, a second header at +128; data in page 2.
    let hdr = page;
    let status = page + 64;
    let hdr2 = page + 128;
    let data = page + 4096;
    let write_hdr = |at: usize, kind: u32, sector: u64| {
        // SAFETY: `at` is inside this test's DMA pages.
        unsafe {
            core::ptr::write_volatile(at as *mut u32, kind);
            core::ptr::write_volatile((at + 4) as *mut u32, 0);
            core::ptr::write_volatile((at + 8) as *mut u64, sector);
        }
    };
    let read_status = || {
        // SAFETY: inside this test's DMA pages.
        unsafe { core::ptr::read_volatile(status as *const u8) }
    };
    let good = |q: &mut RawQueue| -> Result<(), String> {
        write_hdr(hdr, BLK_IN, 1);
        // SAFETY: status and data are inside this test's DMA pages.
        unsafe {
            core::ptr::write_volatile(status as *mut u8, 0xff);
            core::ptr::write_bytes(data as *mut u8, 0, 512);
        }
        q.set_desc(0, hdr as u64, 16, NEXT, 1);
        q.set_desc(1, data as u64, 512, WRITE | NEXT, 2);
        q.set_desc(2, status as u64, 1, WRITE, 0);
        q.publish(0);
        q.notify();
        q.wait_for(0, deadline())
            .ok_or_else(|| String::from("good read not served afterwards"))?;
        let s = read_status();
        if s != 0 {
            return Err(format!("good read status {s}"));
        }
        // SAFETY: the device wrote 512 bytes to data.
        let bytes = unsafe { core::slice::from_raw_parts(data as *const u8, 512) };
        if let Some(i) = pattern::mismatch(seed, 512, bytes) {
            return Err(format!("good read data differs at byte {i}"));
        }
        Ok(())
    };
    r.record("hostile.blk.baseline", good(&mut q));
    let cases: [Case<'_>; 8] = [
        ("header_outside", &|q| {
            q.set_desc(3, FAR, 16, NEXT, 4);
            q.set_desc(4, data as u64, 512, WRITE | NEXT, 5);
            q.set_desc(5, status as u64, 1, WRITE, 0);
            q.publish(3);
        }),
        ("data_outside", &|q| {
            write_hdr(hdr2, BLK_IN, 0);
            q.set_desc(3, hdr2 as u64, 16, NEXT, 4);
            q.set_desc(4, FAR, 512, WRITE | NEXT, 5);
            q.set_desc(5, status as u64, 1, WRITE, 0);
            q.publish(3);
        }),
        ("data_wrap", &|q| {
            write_hdr(hdr2, BLK_IN, 0);
            q.set_desc(3, hdr2 as u64, 16, NEXT, 4);
            q.set_desc(4, u64::MAX - 255, 512, WRITE | NEXT, 5);
            q.set_desc(5, status as u64, 1, WRITE, 0);
            q.publish(3);
        }),
        ("oversized", &|q| {
            write_hdr(hdr2, BLK_IN, 0);
            q.set_desc(3, hdr2 as u64, 16, NEXT, 4);
            q.set_desc(4, data as u64, 0xffff_fe00, WRITE | NEXT, 5);
            q.set_desc(5, status as u64, 1, WRITE, 0);
            q.publish(3);
        }),
        ("loop", &|q| {
            write_hdr(hdr2, BLK_IN, 0);
            q.set_desc(3, hdr2 as u64, 16, NEXT, 4);
            q.set_desc(4, data as u64, 512, WRITE | NEXT, 5);
            q.set_desc(5, status as u64, 1, WRITE | NEXT, 3);
            q.publish(3);
        }),
        ("sector_overflow", &|q| {
            write_hdr(hdr2, BLK_IN, u64::MAX - 3);
            q.set_desc(3, hdr2 as u64, 16, NEXT, 4);
            q.set_desc(4, data as u64, 512, WRITE | NEXT, 5);
            q.set_desc(5, status as u64, 1, WRITE, 0);
            q.publish(3);
        }),
        ("status_readonly", &|q| {
            write_hdr(hdr2, BLK_IN, 0);
            q.set_desc(3, hdr2 as u64, 16, NEXT, 4);
            q.set_desc(4, data as u64, 512, WRITE | NEXT, 5);
            q.set_desc(5, status as u64, 1, 0, 0);
            q.publish(3);
        }),
        ("bad_head", &|q| q.publish(200)),
    ];
    for (case, bad) in cases {
        bad(&mut q);
        q.notify();
        let mut result = good(&mut q);
        if case == "sector_overflow" && result.is_ok() {
            // The bad request was answered (or dropped) before the good one; an answer must be
            // an error status. Re-issue it alone and look at its status.
            // SAFETY: inside this test's DMA pages.
            unsafe { core::ptr::write_volatile(status as *mut u8, 0xff) };
            bad(&mut q);
            q.notify();
            if let Some(_len) = q.wait_for(3, Deadline::after_ms(500)) {
                let s = read_status();
                if s == 0 {
                    result = Err(String::from("a read past u64 sectors returned OK"));
                }
            }
        }
        r.record(&format!("hostile.blk.{case}"), result);
    }
    let _ = g.reset();
}

/// Virtio-vsock header size.
const VSOCK_HDR: u32 = 44;
/// Host port nobody listens on (`<uds>_5999` does not exist).
const VSOCK_DEAD_PORT: u32 = 5999;

fn vsock_hdr(at: usize, src_cid: u64, src_port: u32, dst_port: u32, len: u32, op: u16) {
    // SAFETY: `at` is a 44-byte header slot inside this test's DMA pages.
    unsafe {
        core::ptr::write_bytes(at as *mut u8, 0, VSOCK_HDR as usize);
        core::ptr::write_unaligned(at as *mut u64, src_cid);
        core::ptr::write_unaligned((at + 8) as *mut u64, 2);
        core::ptr::write_unaligned((at + 16) as *mut u32, src_port);
        core::ptr::write_unaligned((at + 20) as *mut u32, dst_port);
        core::ptr::write_unaligned((at + 24) as *mut u32, len);
        core::ptr::write_unaligned((at + 28) as *mut u16, 1);
        core::ptr::write_unaligned((at + 30) as *mut u16, op);
        core::ptr::write_unaligned((at + 36) as *mut u32, 64 << 10);
    }
}

fn hostile_vsock(r: &mut Report, g: Regs) {
    let setup = || -> Result<(RawQueue, RawQueue, RawQueue, usize, u64), String> {
        g.begin_init(0)?;
        let rx = RawQueue::setup(g, 0, 16)?;
        let tx = RawQueue::setup(g, 1, 16)?;
        let ev = RawQueue::setup(g, 2, 16)?;
        g.driver_ok()?;
        let cid = u64::from_le_bytes(core::array::from_fn(|i| g.config_u8(i)));
        let pages = dma_pages(4).ok_or_else(|| String::from("DMA pool exhausted"))?;
        Ok((rx, tx, ev, pages, cid))
    };
    let (mut rx, mut tx, _ev, pages, cid) = match setup() {
        Ok(v) => v,
        Err(e) => return r.record("hostile.vsock.setup", Err(e)),
    };
    // Page 0: TX headers (slot 0 good, slot 1 hostile) and a payload; pages 1-2: eight 1 KiB
    // receive buffers; page 3 unused.
    let good_hdr = pages;
    let bad_hdr = pages + 64;
    let payload = pages + 2048;
    let rx_buf = |i: u16| pages + 4096 + 1024 * usize::from(i % 8);
    // Eight receive buffers stay posted; each one is re-posted as soon as it has been read
    // (answers to hostile packets may take some too).
    let post = |rx: &mut RawQueue, i: u16| {
        // SAFETY: the receive buffer is inside this test's DMA pages.
        unsafe { core::ptr::write_bytes(rx_buf(i) as *mut u8, 0, 1024) };
        rx.set_desc(i, rx_buf(i) as u64, 1024, WRITE, 0);
        rx.publish(i);
    };
    for i in 0..8 {
        post(&mut rx, i);
    }
    rx.notify();
    let mut round = 0u16;
    let mut good = |rx: &mut RawQueue, tx: &mut RawQueue| -> Result<(), String> {
        round += 1;
        let port = 40_100 + u32::from(round);
        vsock_hdr(good_hdr, cid, port, VSOCK_DEAD_PORT, 0, 1);
        tx.set_desc(0, good_hdr as u64, VSOCK_HDR, 0, 0);
        tx.publish(0);
        tx.notify();
        tx.wait_for(0, deadline())
            .ok_or_else(|| String::from("good TX packet not consumed"))?;
        let d = deadline();
        loop {
            let (id, len) = rx
                .wait_used(d)
                .ok_or_else(|| format!("no RST for the request from port {port}"))?;
            let Ok(i) = u16::try_from(id) else { continue };
            if i >= 8 || len < VSOCK_HDR {
                continue;
            }
            let at = rx_buf(i);
            // SAFETY: the device wrote a header into this receive buffer.
            let (src_port, dst_port, op) = unsafe {
                (
                    core::ptr::read_unaligned((at + 16) as *const u32),
                    core::ptr::read_unaligned((at + 20) as *const u32),
                    core::ptr::read_unaligned((at + 30) as *const u16),
                )
            };
            post(rx, i);
            rx.notify();
            if dst_port == port {
                return if op == 3 && src_port == VSOCK_DEAD_PORT {
                    Ok(())
                } else {
                    Err(format!(
                        "answer to port {port}: op {op} from port {src_port}, expected RST"
                    ))
                };
            }
        }
    };
    r.record("hostile.vsock.baseline", good(&mut rx, &mut tx));
    let cases: [Case<'_>; 8] = [
        ("header_outside", &|q| {
            q.set_desc(4, FAR, VSOCK_HDR, 0, 0);
            q.publish(4);
        }),
        ("header_short", &|q| {
            vsock_hdr(bad_hdr, cid, 40_001, VSOCK_DEAD_PORT, 0, 1);
            q.set_desc(4, bad_hdr as u64, 8, 0, 0);
            q.publish(4);
        }),
        ("len_lies", &|q| {
            // RW for a connection that does not exist, claiming 4 GiB of payload with none.
            vsock_hdr(bad_hdr, cid, 40_002, VSOCK_DEAD_PORT, u32::MAX, 5);
            q.set_desc(4, bad_hdr as u64, VSOCK_HDR, 0, 0);
            q.publish(4);
        }),
        ("payload_outside", &|q| {
            vsock_hdr(bad_hdr, cid, 40_003, VSOCK_DEAD_PORT, 100, 5);
            q.set_desc(4, bad_hdr as u64, VSOCK_HDR, NEXT, 5);
            q.set_desc(5, FAR, 100, 0, 0);
            q.publish(4);
        }),
        ("payload_oversized", &|q| {
            vsock_hdr(bad_hdr, cid, 40_004, VSOCK_DEAD_PORT, 0xffff_f000, 5);
            q.set_desc(4, bad_hdr as u64, VSOCK_HDR, NEXT, 5);
            q.set_desc(5, payload as u64, 0xffff_f000, 0, 0);
            q.publish(4);
        }),
        ("loop", &|q| {
            vsock_hdr(bad_hdr, cid, 40_005, VSOCK_DEAD_PORT, 16, 1);
            q.set_desc(4, bad_hdr as u64, VSOCK_HDR, NEXT, 5);
            q.set_desc(5, payload as u64, 16, NEXT, 4);
            q.publish(4);
        }),
        ("unknown_op", &|q| {
            vsock_hdr(bad_hdr, cid, 40_006, VSOCK_DEAD_PORT, 0, 99);
            q.set_desc(4, bad_hdr as u64, VSOCK_HDR, 0, 0);
            q.publish(4);
        }),
        ("bad_head", &|q| q.publish(200)),
    ];
    for (case, bad) in cases {
        bad(&mut tx);
        tx.notify();
        r.record(&format!("hostile.vsock.{case}"), good(&mut rx, &mut tx));
    }
    // A receive buffer outside guest memory, then a request whose RST may land in it (and is
    // then lost): the next request must still be answered in a good buffer.
    rx.set_desc(12, FAR, 1024, WRITE, 0);
    rx.publish(12);
    rx.notify();
    let _ = good(&mut rx, &mut tx);
    r.record("hostile.vsock.rx_outside", good(&mut rx, &mut tx));
    let _ = g.reset();
}
