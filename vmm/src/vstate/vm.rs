// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The KVM VM: creation, in-kernel irqchip and PIT, guest memory slots, irqfd/ioeventfd
//! registration.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::x86_64::layout::KVM_TSS_ADDRESS;

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `KVM_CREATE_VM` failed.
    #[error("cannot create the KVM VM")]
    Create(#[source] kvm_ioctls::Error),
    /// `KVM_SET_TSS_ADDR` failed.
    #[error("cannot set the TSS address")]
    Tss(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_IRQCHIP` failed.
    #[error("cannot create the in-kernel irqchip")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_PIT2` failed.
    #[error("cannot create the in-kernel PIT")]
    Pit(#[source] kvm_ioctls::Error),
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("cannot register guest memory slot {slot}")]
    Memory {
        /// Slot number.
        slot: u32,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Too many memory regions.
    #[error("too many guest memory regions")]
    TooManyRegions,
    /// Host address of a region unavailable.
    #[error("guest memory region has no host mapping")]
    HostAddress,
    /// `KVM_IRQFD` failed.
    #[error("cannot register irqfd for GSI {gsi}")]
    Irqfd {
        /// GSI.
        gsi: u32,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_IOEVENTFD` failed.
    #[error("cannot register ioeventfd at {addr:#x}")]
    Ioeventfd {
        /// MMIO address.
        addr: u64,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A KVM VM with its irqchip, PIT and memory.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates the VM, its TSS, the in-kernel irqchip (PIC + IOAPIC + LAPICs) and the PIT.
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(VmError::Tss)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Self { fd })
    }

    /// The VM file descriptor (vCPU creation only; devices never see it).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers every guest memory region as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (i, region) in mem.iter().enumerate() {
            let slot = u32::try_from(i).map_err(|_| VmError::TooManyRegions)?;
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::HostAddress)?;
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region's mapping outlives the VM (the VMM keeps `mem` alive for the
            // process's lifetime) and does not overlap any other slot.
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(|source| VmError::Memory { slot, source })?;
        }
        Ok(())
    }

    /// Routes `evt` to `gsi` (`KVM_IRQFD`).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// Signals `evt` on a 4-byte MMIO write of `datamatch` to `addr` (`KVM_IOEVENTFD`).
    pub fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Ioeventfd { addr, source })
    }
}
