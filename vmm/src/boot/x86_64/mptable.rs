// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Intel MultiProcessor Specification 1.4 tables (no ACPI): how Linux finds the vCPUs, the
//! IOAPIC and the ISA interrupt routing.
//!
//! The floating pointer and the configuration table are written to [`MPTABLE_START`] in the
//! EBDA area (the last KiB of base memory, one of the places Linux scans).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_DEFAULT_BASE, IOAPIC_DEFAULT_BASE, MPTABLE_START};
use crate::config::MAX_VCPUS;

/// Number of IOAPIC pins (and ISA/virtio interrupt sources) described.
pub const IOAPIC_PINS: u8 = 24;
const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
/// Size of the area reserved for the tables (the last KiB of base memory).
pub const MPTABLE_MAX_SIZE: usize = 0x400;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the table.
    #[error("{0} vCPUs do not fit the MP table (1..={MAX_VCPUS})")]
    TooManyCpus(u8),
    /// The table does not fit its area.
    #[error("MP table of {0} bytes exceeds its area")]
    TooLarge(usize),
    /// Writing guest memory failed.
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Two's-complement byte checksum: the value that makes the bytes sum to 0 mod 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// The IOAPIC's id: one past the last vCPU's APIC id.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus.saturating_add(1)
}

/// Builds the floating pointer and the configuration table for `num_cpus` vCPUs, as placed at
/// `base` (the config table follows the 16-byte floating pointer).
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let table_addr = base + 16;
    // Configuration table entries.
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x0600u32.to_le_bytes()); // cpufeature: family 6
        entries.extend_from_slice(&0x0201u32.to_le_bytes()); // featureflag: FPU | APIC
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic = ioapic_id(num_cpus);
    entries.extend_from_slice(&[MP_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(
        &u32::try_from(IOAPIC_DEFAULT_BASE)
            .unwrap_or(0)
            .to_le_bytes(),
    );
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // type, irqtype, irqflag (conforming), srcbus, srcbusirq, dstapic, dstirq
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(
        &u16::try_from(table_len)
            .map_err(|_| MptableError::TooLarge(table_len))?
            .to_le_bytes(),
    );
    table.push(MPC_SPEC);
    table.push(0); // checksum, patched below
    table.extend_from_slice(b"VMRUN   ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // oemptr
    table.extend_from_slice(&0u16.to_le_bytes()); // oemsize
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&u32::try_from(APIC_DEFAULT_BASE).unwrap_or(0).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&u32::try_from(table_addr).unwrap_or(0).to_le_bytes());
    mpf.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    mpf[10] = checksum(&mpf);

    let mut out = mpf;
    out.extend_from_slice(&table);
    if out.len() > MPTABLE_MAX_SIZE {
        return Err(MptableError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Writes the MP table for `num_cpus` vCPUs at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_valid_for_every_cpu_count() {
        for n in 1..=MAX_VCPUS {
            let t = build(n, MPTABLE_START).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(checksum(&t[0..16]), 0, "floating pointer, {n} cpus");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(u64::from(ptr), MPTABLE_START + 16);
            let len = usize::from(u16::from_le_bytes(t[20..22].try_into().unwrap()));
            assert_eq!(&t[16..20], b"PCMP");
            assert_eq!(16 + len, t.len());
            assert_eq!(checksum(&t[16..]), 0, "config table, {n} cpus");
            // Processor entries come first, 20 bytes each, ids 0..n, only id 0 is the BSP.
            for cpu in 0..usize::from(n) {
                let e = &t[16 + 44 + cpu * 20..][..20];
                assert_eq!(e[0], MP_PROCESSOR);
                assert_eq!(usize::from(e[1]), cpu);
                assert_eq!(e[3] & CPU_BOOTPROCESSOR != 0, cpu == 0);
            }
        }
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(build(0, MPTABLE_START).is_err());
        assert!(build(MAX_VCPUS + 1, MPTABLE_START).is_err());
    }

    #[test]
    fn checksum_of_zeroes_is_zero() {
        assert_eq!(checksum(&[0; 8]), 0);
        assert_eq!(checksum(&[1, 2, 3]), 250);
    }
}
