// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! virtio-vsock through `virtio-drivers`' `VsockConnectionManager`, against a host test that
//! drives the VMM's hybrid-vsock Unix socket. Phases run in this order, each on its own port
//! (the host side in tests/src/vmm.rs follows the same script):
//!
//! | check | port | who connects | what |
//! |---|---|---|---|
//! | vsock.cid | — | — | guest CID = `kit.cid=` (default 3) |
//! | vsock.listen | 5000 | host (`CONNECT 5000`) | `hello-from-host` / `hello-from-guest` |
//! | vsock.connect | 5001 | guest, to CID 2 (host listens on `<uds>_5001`) | `hello-out` / `ack` |
//! | vsock.many | 5002 | host, 64 at once | `conn <k>` each; guest answers `ok <k>` once all 64 are open |
//! | vsock.bulk_h2g | 5003 | host | 4 MiB of stream 5003, checked here; reply `sum <fnv>` |
//! | vsock.bulk_g2h | 5004 | host | guest sends 4 MiB of stream 5004; the host checks it |
//! | vsock.credit_h2g | 5005 | host | host sends 1 MiB; the guest reads nothing for 300 ms (the device must stop at our 64 KiB credit), then drains slowly |
//! | vsock.credit_g2h | 5006 | host | host reads nothing for 1 s; guest sends 2 MiB and must run out of credit at least once |

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use vmrun_guest_kit::arch::{Deadline, micros_since, rdtsc};
use vmrun_guest_kit::cmdline::kit_number;
use vmrun_guest_kit::pattern::{self, Fnv};
use vmrun_guest_kit::report::Report;
use vmrun_guest_kit::vsock::{Conn, Vsock};
use vmrun_guest_kit::{kit_main, println};

kit_main!(run);

/// Ports of the phases.
const P_LISTEN: u32 = 5000;
const P_CONNECT: u32 = 5001;
const P_MANY: u32 = 5002;
const P_H2G: u32 = 5003;
const P_G2H: u32 = 5004;
const P_CREDIT_H2G: u32 = 5005;
const P_CREDIT_G2H: u32 = 5006;
/// Connections in the concurrency phase.
const MANY: usize = 64;
/// Bulk transfer size.
const BULK: usize = 4 << 20;

fn run(bp: u64) -> ! {
    let mut r = Report::start(bp);
    let cmdline = r.cmdline;
    let mut vs = match Vsock::open(cmdline) {
        Ok(v) => v,
        Err(e) => {
            r.record("vsock.init", Err(e));
            r.finish()
        }
    };
    for p in [P_LISTEN, P_MANY, P_H2G, P_G2H, P_CREDIT_H2G, P_CREDIT_G2H] {
        vs.listen(p);
    }
    println!("READY vsock");
    let want_cid = kit_number(cmdline, "cid").unwrap_or(3);
    let cid = vs.guest_cid();
    r.run("vsock.cid", || {
        if cid == want_cid {
            Ok(())
        } else {
            Err(format!("guest CID {cid}, expected {want_cid}"))
        }
    });
    r.run("vsock.listen", || listen(&mut vs));
    r.run("vsock.connect", || connect(&mut vs));
    r.run("vsock.many", || many(&mut vs));
    r.run("vsock.bulk_h2g", || bulk_h2g(&mut vs));
    r.run("vsock.bulk_g2h", || bulk_g2h(&mut vs));
    r.run("vsock.credit_h2g", || credit_h2g(&mut vs));
    r.run("vsock.credit_g2h", || credit_g2h(&mut vs));
    r.finish()
}

fn listen(vs: &mut Vsock) -> Result<(), String> {
    let c = vs.accept(P_LISTEN, Deadline::after_ms(10_000))?;
    let line = vs.read_line(c, Deadline::after_ms(5000))?;
    if line != "hello-from-host" {
        return Err(format!("got {line:?}"));
    }
    vs.write_all(c, b"hello-from-guest\n", Deadline::after_ms(5000))?;
    vs.wait_closed(c, Deadline::after_ms(5000))
}

fn connect(vs: &mut Vsock) -> Result<(), String> {
    let c = vs.connect(P_CONNECT, 40_001, Deadline::after_ms(5000))?;
    vs.write_all(c, b"hello-out\n", Deadline::after_ms(5000))?;
    let line = vs.read_line(c, Deadline::after_ms(5000))?;
    if line != "ack" {
        return Err(format!("got {line:?}"));
    }
    vs.shutdown(c)?;
    vs.wait_closed(c, Deadline::after_ms(5000))
}

fn many(vs: &mut Vsock) -> Result<(), String> {
    let deadline = Deadline::after_ms(15_000);
    let mut conns: Vec<(Conn, Option<u64>)> = Vec::new();
    while conns.len() < MANY {
        let c = vs.accept(P_MANY, deadline)?;
        conns.push((c, None));
    }
    // Every connection is open at once; now read each one's line.
    for (c, k) in conns.iter_mut() {
        let line = vs.read_line(*c, deadline)?;
        let n = line
            .strip_prefix("conn ")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad line {line:?}"))?;
        *k = Some(n);
    }
    let mut seen = [false; MANY];
    for (c, k) in &conns {
        let k = k.unwrap_or(u64::MAX);
        let slot = seen
            .get_mut(k as usize)
            .ok_or_else(|| format!("connection number {k} out of range"))?;
        if *slot {
            return Err(format!("connection number {k} twice"));
        }
        *slot = true;
        vs.write_all(*c, format!("ok {k}\n").as_bytes(), deadline)?;
    }
    for (c, _) in &conns {
        vs.wait_closed(*c, deadline)?;
    }
    Ok(())
}

fn bulk_h2g(vs: &mut Vsock) -> Result<(), String> {
    let c = vs.accept(P_H2G, Deadline::after_ms(10_000))?;
    let deadline = Deadline::after_ms(30_000);
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0usize;
    let mut since_credit = 0usize;
    let mut sum = Fnv::default();
    let start = rdtsc();
    while got < BULK {
        let n = vs.read(c, &mut buf)?;
        if n == 0 {
            if vs.is_closed(c) {
                return Err(format!("peer closed after {got} bytes"));
            }
            if deadline.expired() {
                return Err(format!("only {got} bytes in time"));
            }
            continue;
        }
        let n = n.min(BULK - got);
        if let Some(i) = pattern::mismatch(u64::from(P_H2G), got as u64, &buf[..n]) {
            return Err(format!("data differs at byte {}", got + i));
        }
        sum.update(&buf[..n]);
        got += n;
        since_credit += n;
        if since_credit >= 16 << 10 {
            vs.credit_update(c)?;
            since_credit = 0;
        }
    }
    let us = micros_since(start).max(1);
    println!("INFO vsock h2g {} KiB in {} us", BULK >> 10, us);
    vs.write_all(c, format!("sum {:016x}\n", sum.0).as_bytes(), deadline)?;
    vs.wait_closed(c, deadline)
}

fn bulk_g2h(vs: &mut Vsock) -> Result<(), String> {
    let c = vs.accept(P_G2H, Deadline::after_ms(10_000))?;
    let deadline = Deadline::after_ms(30_000);
    let mut data = vec![0u8; BULK];
    pattern::fill(u64::from(P_G2H), 0, &mut data);
    let start = rdtsc();
    vs.write_all(c, &data, deadline)?;
    println!(
        "INFO vsock g2h {} KiB in {} us",
        BULK >> 10,
        micros_since(start)
    );
    vs.shutdown(c)?;
    vs.wait_closed(c, deadline)
}

fn credit_h2g(vs: &mut Vsock) -> Result<(), String> {
    const TOTAL: usize = 1 << 20;
    let c = vs.accept(P_CREDIT_H2G, Deadline::after_ms(10_000))?;
    // Poll without reading: received data piles up in the connection's 64 KiB buffer, and a
    // device that ignored our credit would overflow it (the driver reports that as an error).
    let hold = Deadline::after_ms(300);
    while !hold.expired() {
        vs.poll()
            .map_err(|e| format!("while not reading: {e} (device exceeded our credit?)"))?;
    }
    let deadline = Deadline::after_ms(30_000);
    let mut buf = vec![0u8; 4096];
    let mut got = 0usize;
    while got < TOTAL {
        let n = vs.read(c, &mut buf)?;
        if n == 0 {
            if vs.is_closed(c) {
                return Err(format!("peer closed after {got} bytes"));
            }
            if deadline.expired() {
                return Err(format!("only {got} bytes in time"));
            }
            continue;
        }
        if let Some(i) = pattern::mismatch(u64::from(P_CREDIT_H2G), got as u64, &buf[..n]) {
            return Err(format!("data differs at byte {}", got + i));
        }
        got += n;
        vs.credit_update(c)?;
    }
    vs.write_all(c, b"done\n", deadline)?;
    vs.wait_closed(c, deadline)
}

fn credit_g2h(vs: &mut Vsock) -> Result<(), String> {
    const TOTAL: usize = 2 << 20;
    let c = vs.accept(P_CREDIT_G2H, Deadline::after_ms(10_000))?;
    let mut data = vec![0u8; TOTAL];
    pattern::fill(u64::from(P_CREDIT_G2H), 0, &mut data);
    let deadline = Deadline::after_ms(30_000);
    let stalls = vs.write_all(c, &data, deadline)?;
    println!("INFO vsock credit stalls {stalls}");
    vs.shutdown(c)?;
    vs.wait_closed(c, deadline)?;
    if stalls == 0 {
        return Err(String::from(
            "2 MiB went out to a host that was not reading without the peer ever running out of credit",
        ));
    }
    Ok(())
}
