// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Boot state, serial and exit paths.
//!
//! Checks: long mode and CPL (`kit.cpl=`), the zero page, the command line, the e820 map
//! against `kit.mem_mib=`, the MP table against `kit.cpus=`, and COM1's registers. Prints the
//! command line and every e820 entry as `INFO` lines for the host test to compare with what it
//! passed. `kit.mode=` picks a deliberate ending instead: `fail` (a FAIL line, exit 1), `panic`
//! (the panic handler), `triple` (an invalid opcode with no usable IDT: a triple fault),
//! `reset` (i8042 reset only, no exit-port write), `none` (no checks: start-up benchmark),
//! `ticks` (`TICK <i>` every 20 ms, `kit.ticks=` times: a live guest for API tests).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use vmrun_guest_kit::arch::{Deadline, cpl, cs, inb, lar, outb};
use vmrun_guest_kit::boot::{BootParams, E820_RAM, HDRS_MAGIC};
use vmrun_guest_kit::cmdline::{kit_number, kit_value, mmio_devices};
use vmrun_guest_kit::exit::{exit, reset};
use vmrun_guest_kit::heap::pools_end;
use vmrun_guest_kit::report::Report;
use vmrun_guest_kit::serial::COM1;
use vmrun_guest_kit::{kit_main, mptable, println};

kit_main!(run);

fn run(bp: u64) -> ! {
    let mut r = Report::start(bp);
    let mode = kit_value(r.cmdline, "mode").unwrap_or("checks");
    match mode {
        "none" => r.finish(),
        "ticks" => {
            let n = kit_number(r.cmdline, "ticks").unwrap_or(100);
            for i in 0..n {
                println!("TICK {i}");
                let d = Deadline::after_ms(20);
                while !d.expired() {
                    core::hint::spin_loop();
                }
            }
            r.finish()
        }
        "fail" => {
            r.record(
                "deliberate",
                Err(String::from("requested by kit.mode=fail")),
            );
            r.finish()
        }
        "panic" => panic!("requested by kit.mode=panic"),
        "triple" => {
            println!("TRIPLE");
            // SAFETY: deliberately raises #UD; without a usable IDT this ends in a triple fault.
            unsafe { core::arch::asm!("ud2", options(noreturn)) }
        }
        _ => {}
    }
    println!("INFO cmdline {}", r.cmdline);
    let cmdline = r.cmdline;
    let boot = r.boot;
    r.run("boot.long_mode", long_mode);
    r.run("boot.cpl", || check_cpl(cmdline));
    r.run("boot.params", || params(bp, boot));
    r.run("boot.cmdline", || check_cmdline(cmdline, boot));
    r.run("boot.e820", || e820(cmdline, boot));
    r.run("boot.mptable", || mp(cmdline));
    r.run("serial.registers", serial);
    r.run("i8042.status", i8042);
    if mode == "reset" {
        println!("RESET failed={}", r.failed());
        if r.failed() == 0 {
            reset()
        }
        exit(1)
    }
    r.finish()
}

fn long_mode() -> Result<(), String> {
    let sel = cs();
    let rights = lar(sel).ok_or_else(|| format!("lar refused CS {sel:#x}"))?;
    // Access rights as lar reports them: bit 21 = L (64-bit code), bit 22 = D, bits 13-14 = DPL,
    // bit 15 = present, bit 11 = code.
    let l = rights >> 21 & 1;
    let d = rights >> 22 & 1;
    let code = rights >> 11 & 1;
    let present = rights >> 15 & 1;
    println!("INFO cs={sel:#x} rights={rights:#x}");
    if l != 1 || d != 0 || code != 1 || present != 1 {
        return Err(format!(
            "CS {sel:#x} rights {rights:#x}: L={l} D={d} code={code} P={present}"
        ));
    }
    Ok(())
}

fn check_cpl(cmdline: &str) -> Result<(), String> {
    let now = cpl();
    println!("INFO cpl={now}");
    let dpl = lar(cs()).map(|r| (r >> 13) & 3);
    if let Some(dpl) = dpl
        && dpl != u32::from(now)
    {
        return Err(format!("CS DPL {dpl} != CPL {now}"));
    }
    match kit_number(cmdline, "cpl") {
        Some(want) if want != u64::from(now) => Err(format!("CPL {now}, expected {want}")),
        _ => Ok(()),
    }
}

fn params(bp: u64, boot: Option<BootParams>) -> Result<(), String> {
    let b = boot.ok_or_else(|| format!("rsi {bp:#x} is not a zero-page pointer"))?;
    println!(
        "INFO boot_params={:#x} boot_flag={:#x} header={:#x}",
        b.address(),
        b.boot_flag(),
        b.header_magic()
    );
    if b.boot_flag() != 0xaa55 {
        return Err(format!("boot_flag {:#x}, expected 0xaa55", b.boot_flag()));
    }
    if b.header_magic() != HDRS_MAGIC {
        return Err(format!("header {:#x}, expected HdrS", b.header_magic()));
    }
    let zp = b.address() as u64;
    if !b.ram_covers(zp, zp + 4096) {
        return Err(format!("zero page {zp:#x} is not in e820 RAM"));
    }
    Ok(())
}

fn check_cmdline(cmdline: &str, boot: Option<BootParams>) -> Result<(), String> {
    let b = boot.ok_or_else(|| String::from("no zero page"))?;
    if cmdline.is_empty() {
        return Err(format!(
            "empty command line (cmd_line_ptr {:#x})",
            b.cmdline_ptr()
        ));
    }
    let len = cmdline.len() as u64;
    if u64::from(b.cmdline_size()) < len {
        return Err(format!("cmdline_size {} < length {len}", b.cmdline_size()));
    }
    let p = b.cmdline_ptr();
    if !b.ram_covers(p, p + len + 1) {
        return Err(format!("command line at {p:#x} is not in e820 RAM"));
    }
    if !cmdline
        .split_ascii_whitespace()
        .any(|w| w.starts_with("kit."))
    {
        return Err(String::from("the kit.* words the host passed are missing"));
    }
    if let Some(i) = mmio_devices(cmdline).position(|d| d.is_none()) {
        return Err(format!("virtio_mmio.device word {i} does not parse"));
    }
    Ok(())
}

fn e820(cmdline: &str, boot: Option<BootParams>) -> Result<(), String> {
    let b = boot.ok_or_else(|| String::from("no zero page"))?;
    println!("INFO e820 entries={}", b.e820_count());
    let mut ram = 0u64;
    let mut prev_end = 0u64;
    for (i, e) in b.e820().enumerate() {
        println!("INFO e820 {:#x} {:#x} {}", e.addr, e.size, e.kind);
        if e.size == 0 {
            return Err(format!("entry {i} is empty"));
        }
        if i > 0 && e.addr < prev_end {
            return Err(format!(
                "entry {i} at {:#x} overlaps or is unsorted",
                e.addr
            ));
        }
        let end = e
            .addr
            .checked_add(e.size)
            .ok_or_else(|| format!("entry {i} wraps"))?;
        prev_end = end;
        if e.kind == E820_RAM {
            ram += e.size;
            if e.addr < 0x10_0000 && end > 0xa_0000 {
                return Err(format!(
                    "RAM entry {i} covers the legacy hole 0xa0000-0x100000"
                ));
            }
            if e.addr < 0xd000_0000 + 0x10_0000 && end > 0xd000_0000 {
                return Err(format!("RAM entry {i} overlaps the virtio-mmio window"));
            }
        }
    }
    if b.e820_count() == 0 {
        return Err(String::from("no e820 entries"));
    }
    if !b.ram_covers(0x20_0000, pools_end() as u64) {
        return Err(format!(
            "RAM does not cover the program and its pools 0x200000-{:#x}",
            pools_end()
        ));
    }
    if !b.ram_covers(0x1000, 0x9_f000) {
        return Err(String::from("low memory 0x1000-0x9f000 is not RAM"));
    }
    if let Some(mib) = kit_number(cmdline, "mem_mib") {
        let total = mib << 20;
        // The legacy hole (384 KiB) and at most a little more may be missing from RAM.
        if ram > total || ram + (1 << 20) < total {
            return Err(format!("usable RAM {ram:#x}, guest memory {total:#x}"));
        }
    }
    Ok(())
}

fn mp(cmdline: &str) -> Result<(), String> {
    let t = mptable::find()?;
    println!(
        "INFO mptable at={:#x} cpus={} ioapics={} lapic={:#x}",
        t.floating_at,
        t.cpus.len(),
        t.ioapics,
        t.lapic_addr
    );
    if let Some(n) = kit_number(cmdline, "cpus")
        && t.cpus.len() as u64 != n
    {
        return Err(format!("{} processor entries, expected {n}", t.cpus.len()));
    }
    for (i, c) in t.cpus.iter().enumerate() {
        if usize::from(c.apic_id) != i {
            return Err(format!("processor entry {i} has APIC id {}", c.apic_id));
        }
        if c.flags & 1 == 0 {
            return Err(format!("processor {i} not enabled"));
        }
        if (c.flags & 2 != 0) != (i == 0) {
            return Err(format!("processor {i}: BSP flag {}", c.flags & 2));
        }
    }
    if t.ioapics == 0 {
        return Err(String::from("no I/O APIC entry"));
    }
    if t.lapic_addr != 0xfee0_0000 {
        return Err(format!("local APIC address {:#x}", t.lapic_addr));
    }
    Ok(())
}

fn serial() -> Result<(), String> {
    // Scratch register: any value reads back.
    for v in [0x5au8, 0xa5] {
        outb(COM1 + 7, v);
        let got = inb(COM1 + 7);
        if got != v {
            return Err(format!("scratch wrote {v:#x} read {got:#x}"));
        }
    }
    // Divisor latch: set DLAB, write 0x000c (9600 baud), read back, restore 8N1.
    let lcr = inb(COM1 + 3);
    outb(COM1 + 3, lcr | 0x80);
    outb(COM1, 0x0c);
    outb(COM1 + 1, 0x00);
    let (dll, dlm) = (inb(COM1), inb(COM1 + 1));
    outb(COM1 + 3, lcr & 0x7f);
    if (dll, dlm) != (0x0c, 0) {
        return Err(format!("divisor latch read {dll:#x}/{dlm:#x}"));
    }
    let lsr = inb(COM1 + 5);
    if lsr & 0x60 != 0x60 {
        return Err(format!("LSR {lsr:#x}: transmitter not reported empty"));
    }
    Ok(())
}

fn i8042() -> Result<(), String> {
    // The status register must read as a real controller's: no pending output to a guest that
    // has not asked for any (bit 0 clear), input buffer not full (bit 1 clear).
    let s = inb(0x64);
    if s & 0x03 != 0 {
        return Err(format!("status {s:#x}"));
    }
    Ok(())
}
