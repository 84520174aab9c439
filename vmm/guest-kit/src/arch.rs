// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Unprivileged x86_64 primitives: port I/O (allowed at CPL 3 with IOPL 3; each access is a VM
//! exit), the TSC and the current privilege level.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Writes one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the VMM grants IOPL 3.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads one byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads the time-stamp counter (unprivileged, native under PVM).
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only writes edx:eax.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The code segment selector.
pub fn cs() -> u16 {
    let cs: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) }
    cs
}

/// The current privilege level (CS.RPL).
pub fn cpl() -> u8 {
    (cs() & 3) as u8
}

/// Access rights of a segment selector as `lar` reports them, or `None` if `lar` refuses it.
pub fn lar(selector: u16) -> Option<u32> {
    let rights: u64;
    let ok: u8;
    // SAFETY: lar is unprivileged and only writes its destination and ZF.
    unsafe {
        asm!("lar {r}, {s:r}", "setz {ok}", r = out(reg) rights, s = in(reg) u64::from(selector),
             ok = out(reg_byte) ok, options(nomem, nostack))
    }
    (ok != 0).then_some((rights & 0xffff_ffff) as u32)
}

/// The TSC frequency the host passed (`kit.tsc_khz=`), 0 until [`set_tsc_khz`].
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// Uses `khz` as the TSC frequency from now on (the host measured it; under PVM and TCG the
/// guest reads the host's TSC, and CPUID 0x15/0x16 are often empty).
pub fn set_tsc_khz(khz: u64) {
    TSC_KHZ.store(khz, Ordering::Relaxed);
}

/// The TSC frequency in Hz: the host's `kit.tsc_khz=`, else CPUID 0x15/0x16, else an assumed
/// 2 GHz.
pub fn tsc_hz() -> u64 {
    let khz = TSC_KHZ.load(Ordering::Relaxed);
    if khz != 0 {
        return khz * 1000;
    }
    let max = core::arch::x86_64::__cpuid(0).eax;
    if max >= 0x15 {
        let r = core::arch::x86_64::__cpuid(0x15);
        if r.eax != 0 && r.ebx != 0 && r.ecx != 0 {
            return u64::from(r.ecx) * u64::from(r.ebx) / u64::from(r.eax);
        }
    }
    if max >= 0x16 {
        let r = core::arch::x86_64::__cpuid(0x16);
        if r.eax != 0 {
            return u64::from(r.eax) * 1_000_000;
        }
    }
    2_000_000_000
}

/// A deadline measured with the TSC.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// A deadline `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self(rdtsc().saturating_add(tsc_hz() / 1000 * ms))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        rdtsc() >= self.0
    }
}

/// Microseconds elapsed since `start` (a `rdtsc` value).
pub fn micros_since(start: u64) -> u64 {
    rdtsc().wrapping_sub(start) / (tsc_hz() / 1_000_000).max(1)
}
