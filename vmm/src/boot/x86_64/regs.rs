// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Initial register state for each entry mode, and the LAPIC LINT0/LINT1 set-up.
//!
//! * Linux 64-bit boot protocol: long mode, paging on, `__BOOT_CS`/`__BOOT_DS`, `rsi` = zero page.
//! * PVH: 32-bit protected mode, paging off, `rbx` = `hvm_start_info`.
//! * Test payload: like the Linux 64-bit entry but at CPL 3 (DPL-3 segments with RPL 3,
//!   IOPL 3, user-accessible page tables) with SSE enabled in CR0/CR4.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};

use super::gdt::{
    boot_gdt, kvm_segment_from_gdt, CODE32_INDEX, CODE64_INDEX, DATA_INDEX, TSS_INDEX,
    USER_CODE64_INDEX, USER_DATA_INDEX,
};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PVH_INFO_START, ZERO_PAGE_START,
};

/// CR0.PE: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.MP: monitor coprocessor.
pub const X86_CR0_MP: u64 = 1 << 1;
/// CR0.EM: x87 emulation (must be clear for SSE).
pub const X86_CR0_EM: u64 = 1 << 2;
/// CR0.ET: extension type.
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// CR4.OSFXSR: FXSAVE/SSE enabled by the OS.
pub const X86_CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT: unmasked SSE exceptions supported.
pub const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 (always set).
pub const RFLAGS_RESERVED: u64 = 1 << 1;
/// RFLAGS.IOPL = 3.
pub const RFLAGS_IOPL3: u64 = 3 << 12;

/// How the boot vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol at CPL 0.
    Linux64,
    /// PVH 32-bit entry at CPL 0.
    Pvh,
    /// 64-bit entry at CPL 3 (test payloads on PVM hosts).
    TestPayload,
}

/// General-purpose registers for the boot vCPU.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    match mode {
        EntryMode::Pvh => kvm_regs {
            rip: entry,
            rbx: PVH_INFO_START,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
        EntryMode::Linux64 | EntryMode::TestPayload => kvm_regs {
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            rflags: if mode == EntryMode::TestPayload {
                RFLAGS_RESERVED | RFLAGS_IOPL3
            } else {
                RFLAGS_RESERVED
            },
            ..Default::default()
        },
    }
}

/// Special registers: segments from the boot GDT, descriptor tables, control registers.
/// `base` is the vCPU's current state (KVM_GET_SREGS), `cr3` the page-table root.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode, cr3: u64) -> kvm_sregs {
    let gdt = boot_gdt();
    let seg = |i: u8, rpl: u8| kvm_segment_from_gdt(gdt[usize::from(i)], i, rpl);
    let (code, data) = match mode {
        EntryMode::Pvh => (seg(CODE32_INDEX, 0), seg(DATA_INDEX, 0)),
        EntryMode::Linux64 => (seg(CODE64_INDEX, 0), seg(DATA_INDEX, 0)),
        EntryMode::TestPayload => (seg(USER_CODE64_INDEX, 3), seg(USER_DATA_INDEX, 3)),
    };
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&gdt) - 1).unwrap_or(u16::MAX);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = seg(TSS_INDEX, 0);
    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & !X86_CR0_PG;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 | EntryMode::TestPayload => {
            sregs.cr3 = cr3;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            if mode == EntryMode::TestPayload {
                // A CPL-3 payload cannot enable SSE itself.
                sregs.cr0 = (sregs.cr0 | X86_CR0_MP) & !X86_CR0_EM;
                sregs.cr4 |= X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
            }
        }
    }
    sregs
}

/// FPU state at reset (x87 control word 0x37f, MXCSR 0x1f80).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = &lapic.regs[off..off + 4];
    u32::from_le_bytes([
        b[0].to_ne_bytes()[0],
        b[1].to_ne_bytes()[0],
        b[2].to_ne_bytes()[0],
        b[3].to_ne_bytes()[0],
    ])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        lapic.regs[off + i] = i8::from_ne_bytes([*byte]);
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Configures LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as a PC's BIOS does.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, set_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux64_sregs_are_long_mode_cpl0() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Linux64, 0x9000);
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.cs.dpl, 0);
        assert_eq!(s.cs.l, 1);
    }

    #[test]
    fn test_payload_is_cpl3_with_iopl3_and_sse() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::TestPayload, 0x9000);
        assert_eq!(s.cs.selector & 3, 3);
        assert_eq!(s.ss.selector & 3, 3);
        assert_eq!((s.cs.dpl, s.ss.dpl, s.ds.dpl), (3, 3, 3));
        assert_ne!(s.cr4 & X86_CR4_OSFXSR, 0);
        assert_eq!(s.cr0 & X86_CR0_EM, 0);
        let r = boot_regs(EntryMode::TestPayload, 0x20_0000);
        assert_eq!(r.rflags & RFLAGS_IOPL3, RFLAGS_IOPL3);
        assert_eq!(r.rsi, ZERO_PAGE_START);
        assert_eq!(r.rip, 0x20_0000);
    }

    #[test]
    fn pvh_is_32bit_protected_mode_without_paging() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Pvh, 0x9000);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_eq!(s.cs.db, 1);
        assert_eq!(s.cs.l, 0);
        let r = boot_regs(EntryMode::Pvh, 0x100_0000);
        assert_eq!(r.rbx, PVH_INFO_START);
    }

    #[test]
    fn lint_modes() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0700);
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!((lapic_reg(&l, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
