// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Per-vCPU CPUID: KVM's supported set (`KVM_GET_SUPPORTED_CPUID`) with the APIC id and the
//! topology leaves fixed up, so each vCPU sees itself as one core of one socket.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 EBX bits 31..24: initial APIC id.
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
/// Leaf 1 EBX bits 23..16: maximum addressable logical processors.
const LEAF1_EBX_COUNT_SHIFT: u32 = 16;
/// Leaf 1 EDX bit 28: HTT (the count field is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit 24: TSC deadline timer (KVM's in-kernel LAPIC emulates it).
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 0xB / 0x1F level types.
const LEVEL_TYPE_THREAD: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Number of APIC-id bits needed to number `n` cores.
fn bits_for(n: u8) -> u32 {
    if n <= 1 {
        0
    } else {
        u32::BITS - u32::from(n - 1).leading_zeros()
    }
}

/// Rewrites the supported CPUID entries for vCPU `cpu_id` of `cpu_count`.
pub fn filter_cpuid(entries: &mut [kvm_cpuid_entry2], cpu_id: u8, cpu_count: u8) {
    let apic_id = u32::from(cpu_id);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx &= 0x0000_ffff;
                e.ebx |= apic_id << LEAF1_EBX_APIC_ID_SHIFT;
                e.ebx |= u32::from(cpu_count) << LEAF1_EBX_COUNT_SHIFT;
                if cpu_count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
                e.ecx |= LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE;
            }
            4 => {
                // Deterministic cache parameters: EAX 31..26 = cores per package - 1,
                // 25..14 = logical processors sharing this cache - 1 (1 thread per core).
                e.eax &= 0x0000_3fff;
                e.eax |= u32::from(cpu_count.saturating_sub(1)) << 26;
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0; // no SMT: shift 0 to reach the core level
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_THREAD << 8) | e.index;
                    }
                    1 => {
                        e.eax = bits_for(cpu_count);
                        e.ebx = u32::from(cpu_count);
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_beef,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_topology_are_per_vcpu() {
        let mut e = vec![
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(4, 0),
        ];
        filter_cpuid(&mut e, 5, 8);
        assert_eq!(e[0].ebx >> 24, 5);
        assert_eq!((e[0].ebx >> 16) & 0xff, 8);
        assert_eq!(e[0].ebx & 0xffff, 0xbeef);
        assert_ne!(e[0].edx & LEAF1_EDX_HTT, 0);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx, e[1].edx), (0, 1, 0x100, 5));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (3, 8, 0x201, 5));
        assert_eq!((e[3].ebx, e[3].ecx), (0, 2));
        assert_eq!(e[4].eax >> 26, 7);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = vec![entry(1, 0)];
        e[0].edx = LEAF1_EDX_HTT;
        filter_cpuid(&mut e, 0, 1);
        assert_eq!(e[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(32), 5);
        assert_eq!(bits_for(5), 3);
    }
}
