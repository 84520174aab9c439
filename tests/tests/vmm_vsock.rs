// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun-vmm`'s virtio-vsock and hybrid Unix-socket muxer under real KVM: the guest kit's
//! `vsock` program (virtio-drivers' connection manager) on one side, this test on the VMM's
//! Unix socket on the other, following the phase script documented in the program.

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use vmrun_tests::require_kvm;
use vmrun_tests::vmm::{
    accept_timeout, guest_elf, pattern, read_line, vsock_connect, vsock_listen, TempDir, Vm,
};

const STEP: Duration = Duration::from_secs(15);

/// Like `assert_eq!`, but returns an error so the VMM's serial output can be shown with it.
macro_rules! check_eq {
    ($a:expr, $b:expr, $what:expr) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(std::io::Error::other(format!(
                "{}: got {:?}, expected {:?}",
                $what, a, b
            )));
        }
    }};
}

/// Like `assert!`.
macro_rules! check {
    ($c:expr, $what:expr) => {{
        if !$c {
            return Err(std::io::Error::other($what.to_string()));
        }
    }};
}

fn read_to_end_timeout(
    s: &mut std::os::unix::net::UnixStream,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(STEP))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 || out.len() > max {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn vmm_vsock_streams() {
    if !require_kvm("vmm_vsock_streams") {
        return;
    }
    let dir = TempDir::new("kit-vsock").expect("temp dir");
    let uds = dir.join("v.sock");
    let out_listener = vsock_listen(&uds, 5001).expect("listen on <uds>_5001");
    let vm = Vm::spawn([
        "--kernel",
        guest_elf("vsock").to_str().expect("utf-8"),
        "--test-payload",
        "--memory-mib",
        "256",
        "--cmdline",
        "kit.cid=7",
        "--vsock-uds",
        uds.to_str().expect("utf-8"),
        "--vsock-cid",
        "7",
    ])
    .expect("spawn");
    let host = || -> std::io::Result<()> {
        // listen: host connects to guest port 5000.
        let mut s = vsock_connect(&uds, 5000, STEP)?;
        s.write_all(b"hello-from-host\n")?;
        s.set_read_timeout(Some(STEP))?;
        check_eq!(read_line(&mut s)?, "hello-from-guest", "listen reply");
        drop(s);

        // connect: the guest connects out to host port 5001.
        let mut s = accept_timeout(&out_listener, STEP)?;
        s.set_read_timeout(Some(STEP))?;
        check_eq!(read_line(&mut s)?, "hello-out", "guest-initiated greeting");
        s.write_all(b"ack\n")?;
        let rest = read_to_end_timeout(&mut s, 16)?;
        check!(
            rest.is_empty(),
            format!("unexpected bytes after ack: {rest:?}")
        );
        drop(s);

        // many: 64 connections open at once.
        let mut conns = Vec::new();
        for _ in 0..64 {
            conns.push(vsock_connect(&uds, 5002, STEP)?);
        }
        for (k, s) in conns.iter_mut().enumerate() {
            s.write_all(format!("conn {k}\n").as_bytes())?;
        }
        for (k, s) in conns.iter_mut().enumerate() {
            s.set_read_timeout(Some(STEP))?;
            check_eq!(read_line(s)?, format!("ok {k}"), "many: reply");
        }
        drop(conns);

        // bulk host -> guest: 4 MiB, the guest checks it and reports the FNV sum.
        let data = pattern::bytes(5003, 0, 4 << 20);
        let mut s = vsock_connect(&uds, 5003, STEP)?;
        let start = Instant::now();
        s.write_all(&data)?;
        s.set_read_timeout(Some(STEP))?;
        let line = read_line(&mut s)?;
        println!("vsock h2g 4 MiB in {:?}", start.elapsed());
        check_eq!(
            line,
            format!("sum {:016x}", pattern::fnv(&data)),
            "h2g checksum"
        );
        drop(s);

        // bulk guest -> host: 4 MiB checked here.
        let mut s = vsock_connect(&uds, 5004, STEP)?;
        let got = read_to_end_timeout(&mut s, 5 << 20)?;
        check_eq!(got.len(), 4 << 20, "guest->host length");
        check!(
            got == pattern::bytes(5004, 0, 4 << 20),
            "guest->host data differs"
        );
        drop(s);

        // credit, host -> guest with a slow guest reader.
        let mut s = vsock_connect(&uds, 5005, STEP)?;
        s.write_all(&pattern::bytes(5005, 0, 1 << 20))?;
        s.set_read_timeout(Some(STEP))?;
        check_eq!(read_line(&mut s)?, "done", "credit h2g reply");
        drop(s);

        // credit, guest -> host with a slow host reader.
        let mut s = vsock_connect(&uds, 5006, STEP)?;
        std::thread::sleep(Duration::from_secs(1));
        let got = read_to_end_timeout(&mut s, 3 << 20)?;
        check_eq!(got.len(), 2 << 20, "slow-reader length");
        check!(
            got == pattern::bytes(5006, 0, 2 << 20),
            "slow-reader data differs"
        );
        Ok(())
    };
    let host_result = host();
    let o = vm.wait(Duration::from_secs(60));
    if let Err(e) = host_result {
        panic!("host side: {e}\n{}", o.dump());
    }
    for info in o.info("vsock ") {
        println!("guest: {info}");
    }
    o.assert_all_passed(&[
        "vsock.cid",
        "vsock.listen",
        "vsock.connect",
        "vsock.many",
        "vsock.bulk_h2g",
        "vsock.bulk_g2h",
        "vsock.credit_h2g",
        "vsock.credit_g2h",
    ]);
}

#[test]
fn vmm_vsock_mmio_protocol_and_hostile_input() {
    if !require_kvm("vmm_vsock_mmio_protocol_and_hostile_input") {
        return;
    }
    // The `mmio` program on the vsock device alone: register protocol, then hostile TX/RX
    // chains, each followed by a connection request that must be answered with a RST.
    let dir = TempDir::new("kit-vsock-mmio").expect("temp dir");
    let uds = dir.join("v.sock");
    let o = Vm::spawn([
        "--kernel",
        guest_elf("mmio").to_str().expect("utf-8"),
        "--test-payload",
        "--vsock-uds",
        uds.to_str().expect("utf-8"),
    ])
    .expect("spawn")
    .wait(Duration::from_secs(20));
    o.assert_all_passed(&[
        "mmio.probe",
        "mmio.vsock.protocol",
        "hostile.vsock.baseline",
        "hostile.vsock.header_outside",
        "hostile.vsock.header_short",
        "hostile.vsock.len_lies",
        "hostile.vsock.payload_outside",
        "hostile.vsock.payload_oversized",
        "hostile.vsock.loop",
        "hostile.vsock.unknown_op",
        "hostile.vsock.bad_head",
        "hostile.vsock.rx_outside",
    ]);
}
