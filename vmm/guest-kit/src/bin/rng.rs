// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! virtio-rng through `virtio-drivers`' `VirtIORng`: small and page-sized requests return
//! bytes that are not constant and differ between requests.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use virtio_drivers::device::rng::VirtIORng;
use vmrun_guest_kit::hal::IdentityHal;
use vmrun_guest_kit::kit_main;
use vmrun_guest_kit::mmio::{find, id, transport};
use vmrun_guest_kit::report::Report;

kit_main!(run);

fn run(bp: u64) -> ! {
    let mut r = Report::start(bp);
    let cmdline = r.cmdline;
    r.run("rng.entropy", || entropy(cmdline));
    r.finish()
}

fn entropy(cmdline: &str) -> Result<(), String> {
    let f = find(cmdline, id::RNG, 0)?;
    let mut rng =
        VirtIORng::<IdentityHal, _>::new(transport(&f)?).map_err(|e| format!("init: {e}"))?;
    let mut a = [0u8; 64];
    let mut b = [0u8; 64];
    let na = rng
        .request_entropy(&mut a)
        .map_err(|e| format!("request 1: {e}"))?;
    let nb = rng
        .request_entropy(&mut b)
        .map_err(|e| format!("request 2: {e}"))?;
    if na == 0 || nb == 0 || na > 64 || nb > 64 {
        return Err(format!("lengths {na}, {nb}"));
    }
    if a[..na].iter().all(|x| *x == a[0]) {
        return Err(format!("{na} constant bytes"));
    }
    if a[..na.min(nb)] == b[..na.min(nb)] {
        return Err(String::from("two requests returned the same bytes"));
    }
    let mut page = alloc::vec![0u8; 4096];
    let mut got = 0;
    while got < page.len() {
        let n = rng
            .request_entropy(&mut page[got..])
            .map_err(|e| format!("page request: {e}"))?;
        if n == 0 {
            return Err(format!("zero-length answer after {got} bytes"));
        }
        got += n;
    }
    let zeros = page.iter().filter(|x| **x == 0).count();
    // 4096 random bytes hold about 16 zeros; hundreds mean the buffer was not filled.
    if zeros > 200 {
        return Err(format!("{zeros} zero bytes in 4096"));
    }
    Ok(())
}
