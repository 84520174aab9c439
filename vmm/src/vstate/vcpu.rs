// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! vCPUs: boot configuration, the run loop on its own thread, and [`handle_exit`], the pure
//! exit dispatcher (unit-tested with synthetic exits).
//!
//! Stopping or pausing a vCPU that is inside `KVM_RUN`: the controller sends
//! [`kick_signal`] to the thread; the handler sets `immediate_exit` in the thread's `kvm_run`
//! (so a signal that lands just before `KVM_RUN` is not lost), `KVM_RUN` returns `EINTR`, and the
//! loop looks at the shared [`VmControl`].

use std::cell::Cell;
use std::sync::Arc;

use kvm_bindings::{kvm_run, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

use super::{RunState, StopReason, VmControl};
use crate::boot::x86_64::regs::{self, EntryMode};
use crate::boot::x86_64::{cpuid, msr};
use crate::devices::bus::{Bus, BusAction};
use crate::metrics::VmmMetrics;
use crate::warn_ratelimited;

/// Errors configuring or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create vCPU {index}")]
    Create {
        /// vCPU index.
        index: u8,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A register or state ioctl failed during set-up.
    #[error("cannot configure vCPU {index}: {what}")]
    Configure {
        /// vCPU index.
        index: u8,
        /// Which step.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer boot MSRs than given.
    #[error("vCPU {index}: KVM set only {set} of {wanted} boot MSRs")]
    Msrs {
        /// vCPU index.
        index: u8,
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// Building the MSR list failed.
    #[error("cannot build the MSR list")]
    MsrList,
    /// An exit the VMM does not handle.
    #[error("unhandled exit {0}")]
    UnhandledExit(String),
}

/// The devices a vCPU thread reaches: port I/O and MMIO buses, plus counters.
#[derive(Debug, Clone)]
pub struct Peripherals {
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Counters.
    pub metrics: Arc<VmmMetrics>,
}

/// A vCPU exit, decoupled from `kvm_run` so tests can build them.
#[derive(Debug)]
pub enum GuestExit<'a> {
    /// `in` from a port.
    IoIn(u16, &'a mut [u8]),
    /// `out` to a port.
    IoOut(u16, &'a [u8]),
    /// MMIO read.
    MmioRead(u64, &'a mut [u8]),
    /// MMIO write.
    MmioWrite(u64, &'a [u8]),
    /// HLT (only without an in-kernel LAPIC, or when KVM reports it).
    Hlt,
    /// Triple fault.
    Shutdown {
        /// Guest RIP, if known.
        rip: Option<u64>,
    },
    /// KVM internal error.
    InternalError {
        /// `kvm_run.internal.suberror`.
        suberror: u32,
    },
    /// VM entry failed.
    FailEntry {
        /// Hardware reason.
        reason: u64,
    },
    /// `KVM_EXIT_SYSTEM_EVENT`.
    SystemEvent(u32),
    /// Anything else.
    Other(String),
}

/// What the run loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// This vCPU halted.
    Halted,
    /// Stop the VM.
    Stop(StopReason),
}

fn bus_action(action: BusAction) -> ExitAction {
    match action {
        BusAction::None => ExitAction::Continue,
        BusAction::Reset => ExitAction::Stop(StopReason::Reset),
        BusAction::Exit(v) => ExitAction::Stop(StopReason::ExitPort(v)),
    }
}

/// Dispatches one exit of vCPU `index`. Port reads nobody claims return all ones (like an
/// empty ISA bus); unclaimed writes are dropped. Both are counted.
pub fn handle_exit(
    p: &mut Peripherals,
    index: u8,
    exit: GuestExit<'_>,
) -> Result<ExitAction, VcpuError> {
    let m = &p.metrics.exits;
    match exit {
        GuestExit::IoIn(port, data) => {
            m.io_in.inc();
            if !p.pio.read(u64::from(port), data) {
                m.pio_unhandled.inc();
                data.fill(0xff);
            }
            Ok(ExitAction::Continue)
        }
        GuestExit::IoOut(port, data) => {
            m.io_out.inc();
            match p.pio.write(u64::from(port), data) {
                Some(a) => Ok(bus_action(a)),
                None => {
                    m.pio_unhandled.inc();
                    Ok(ExitAction::Continue)
                }
            }
        }
        GuestExit::MmioRead(addr, data) => {
            m.mmio_read.inc();
            if !p.mmio.read(addr, data) {
                m.mmio_unhandled.inc();
                warn_ratelimited!("vCPU {index}: MMIO read at unmapped {addr:#x}");
                data.fill(0xff);
            }
            Ok(ExitAction::Continue)
        }
        GuestExit::MmioWrite(addr, data) => {
            m.mmio_write.inc();
            match p.mmio.write(addr, data) {
                Some(a) => Ok(bus_action(a)),
                None => {
                    m.mmio_unhandled.inc();
                    warn_ratelimited!("vCPU {index}: MMIO write at unmapped {addr:#x}");
                    Ok(ExitAction::Continue)
                }
            }
        }
        GuestExit::Hlt => {
            m.hlt.inc();
            Ok(ExitAction::Halted)
        }
        GuestExit::Shutdown { rip } => {
            m.shutdown.inc();
            Ok(ExitAction::Stop(StopReason::TripleFault {
                vcpu: index,
                rip,
            }))
        }
        GuestExit::InternalError { suberror } => {
            m.internal_error.inc();
            Ok(ExitAction::Stop(StopReason::InternalError {
                vcpu: index,
                suberror,
            }))
        }
        GuestExit::FailEntry { reason } => {
            m.fail_entry.inc();
            Ok(ExitAction::Stop(StopReason::FailEntry {
                vcpu: index,
                reason,
            }))
        }
        GuestExit::SystemEvent(kind) => {
            m.system_event.inc();
            // KVM_SYSTEM_EVENT_SHUTDOWN = 1, RESET = 2: both end the VM like a reset.
            match kind {
                1 | 2 => Ok(ExitAction::Stop(StopReason::Reset)),
                other => Err(VcpuError::UnhandledExit(format!("system event {other}"))),
            }
        }
        GuestExit::Other(what) => {
            m.other.inc();
            Err(VcpuError::UnhandledExit(what))
        }
    }
}

thread_local! {
    /// The running vCPU's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was set by this thread to its own vCPU's kvm_run mapping, which
        // stays mapped while the thread runs the vCPU; a byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick signal handler (once per process).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
}

/// One vCPU, configured and ready to run on its own thread.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `index` (its APIC id is the index).
    pub fn new(vm: &kvm_ioctls::VmFd, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self { index, fd })
    }

    /// The vCPU's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// CPUID, MSRs, LAPIC LINT0/LINT1, and for the boot vCPU (index 0) the entry registers.
    /// Other vCPUs wait for INIT/SIPI from the guest in the in-kernel LAPIC.
    pub fn configure(
        &mut self,
        kvm: &Kvm,
        vcpu_count: u8,
        mode: EntryMode,
        entry: u64,
        cr3: u64,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        let cfg = |what| {
            move |source| VcpuError::Configure {
                index,
                what,
                source,
            }
        };
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(cfg("KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::filter_cpuid(cpuid.as_mut_slice(), index, vcpu_count);
        self.fd.set_cpuid2(&cpuid).map_err(cfg("KVM_SET_CPUID2"))?;

        let entries = msr::boot_msr_entries();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::MsrList)?;
        let set = self.fd.set_msrs(&msrs).map_err(cfg("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(VcpuError::Msrs {
                index,
                set,
                wanted: entries.len(),
            });
        }

        let mut lapic = self.fd.get_lapic().map_err(cfg("KVM_GET_LAPIC"))?;
        regs::set_lint(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(cfg("KVM_SET_LAPIC"))?;

        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(cfg("KVM_SET_FPU"))?;
        if index == 0 {
            let sregs = self.fd.get_sregs().map_err(cfg("KVM_GET_SREGS"))?;
            self.fd
                .set_sregs(&regs::boot_sregs(sregs, mode, cr3))
                .map_err(cfg("KVM_SET_SREGS"))?;
            self.fd
                .set_regs(&regs::boot_regs(mode, entry))
                .map_err(cfg("KVM_SET_REGS"))?;
        }
        Ok(())
    }

    fn rip(&self) -> Option<u64> {
        self.fd.get_regs().ok().map(|r| r.rip)
    }

    /// Runs one `KVM_RUN` and dispatches the exit. `Ok(None)` means interrupted (a kick).
    fn run_once(&mut self, p: &mut Peripherals) -> Result<Option<ExitAction>, VcpuError> {
        let index = self.index;
        let exit = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => GuestExit::IoIn(port, data),
            Ok(VcpuExit::IoOut(port, data)) => GuestExit::IoOut(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => GuestExit::MmioRead(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => GuestExit::MmioWrite(addr, data),
            Ok(VcpuExit::Hlt) => GuestExit::Hlt,
            Ok(VcpuExit::Shutdown) => GuestExit::Shutdown { rip: None },
            Ok(VcpuExit::InternalError) => GuestExit::InternalError { suberror: u32::MAX },
            Ok(VcpuExit::FailEntry(reason, _cpu)) => GuestExit::FailEntry { reason },
            Ok(VcpuExit::SystemEvent(kind, _)) => GuestExit::SystemEvent(kind),
            Ok(VcpuExit::Intr) => {
                p.metrics.exits.interrupted.inc();
                return Ok(None);
            }
            Ok(other) => GuestExit::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                p.metrics.exits.interrupted.inc();
                return Ok(None);
            }
            Err(e) => {
                return Ok(Some(ExitAction::Stop(StopReason::VcpuFailed {
                    vcpu: index,
                    error: format!("KVM_RUN failed: {e}"),
                })))
            }
        };
        // Enrich exits whose details live outside the VcpuExit payload.
        let exit = match exit {
            GuestExit::Shutdown { .. } => GuestExit::Shutdown { rip: self.rip() },
            GuestExit::InternalError { .. } => {
                // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the exit union
                // is the one KVM filled in.
                let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                GuestExit::InternalError { suberror }
            }
            other => other,
        };
        handle_exit(p, index, exit).map(Some)
    }

    /// The vCPU thread's body: runs until the VM stops.
    pub fn run(mut self, mut p: Peripherals, control: Arc<VmControl>) {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run_ptr));
        loop {
            match control.run_state() {
                RunState::Stopping => break,
                RunState::Paused => {
                    if control.park_while_paused() == RunState::Stopping {
                        break;
                    }
                    continue;
                }
                RunState::Running => {}
            }
            let action = self.run_once(&mut p);
            self.fd.set_kvm_immediate_exit(0);
            match action {
                Ok(None) | Ok(Some(ExitAction::Continue)) => {}
                Ok(Some(ExitAction::Halted)) => {
                    if control.vcpu_halted() {
                        control.request_stop(StopReason::AllHalted);
                    }
                    control.wait_for_stop();
                    break;
                }
                Ok(Some(ExitAction::Stop(reason))) => {
                    control.request_stop(reason);
                    break;
                }
                Err(e) => {
                    control.request_stop(StopReason::UnhandledExit {
                        vcpu: self.index,
                        what: e.to_string(),
                    });
                    break;
                }
            }
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::legacy::{exit_port::ExitPort, i8042::I8042};
    use std::sync::Mutex;

    struct Mem([u8; 4]);
    impl BusDevice for Mem {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            let o = usize::try_from(offset).unwrap();
            data.copy_from_slice(&self.0[o..o + data.len()]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
            let o = usize::try_from(offset).unwrap();
            self.0[o..o + data.len()].copy_from_slice(data);
            BusAction::None
        }
    }

    fn peripherals() -> Peripherals {
        let mut pio = Bus::new();
        pio.insert(Arc::new(Mutex::new(I8042::default())), 0x60, 5)
            .unwrap();
        pio.insert(Arc::new(Mutex::new(ExitPort)), 0xf4, 1).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(Arc::new(Mutex::new(Mem([0; 4]))), 0xd000_0000, 4)
            .unwrap();
        Peripherals {
            pio,
            mmio,
            metrics: Arc::new(VmmMetrics::default()),
        }
    }

    #[test]
    fn exit_port_and_reset_stop_the_vm() {
        let mut p = peripherals();
        assert_eq!(
            handle_exit(&mut p, 0, GuestExit::IoOut(0xf4, &[0x20])).unwrap(),
            ExitAction::Stop(StopReason::ExitPort(0x20))
        );
        assert_eq!(
            handle_exit(&mut p, 0, GuestExit::IoOut(0x64, &[0xfe])).unwrap(),
            ExitAction::Stop(StopReason::Reset)
        );
        assert_eq!(
            handle_exit(&mut p, 0, GuestExit::IoOut(0x64, &[0xad])).unwrap(),
            ExitAction::Continue
        );
        assert_eq!(p.metrics.exits.io_out.get(), 3);
    }

    #[test]
    fn mmio_round_trip_and_unmapped_accesses() {
        let mut p = peripherals();
        assert_eq!(
            handle_exit(&mut p, 0, GuestExit::MmioWrite(0xd000_0000, &[1, 2, 3, 4])).unwrap(),
            ExitAction::Continue
        );
        let mut d = [0u8; 4];
        handle_exit(&mut p, 0, GuestExit::MmioRead(0xd000_0000, &mut d)).unwrap();
        assert_eq!(d, [1, 2, 3, 4]);
        let mut d = [0u8; 4];
        handle_exit(&mut p, 0, GuestExit::MmioRead(0xd000_1000, &mut d)).unwrap();
        assert_eq!(d, [0xff; 4]);
        handle_exit(&mut p, 0, GuestExit::MmioWrite(0xd000_1000, &[0])).unwrap();
        assert_eq!(p.metrics.exits.mmio_unhandled.get(), 2);
        let mut b = [0u8; 1];
        handle_exit(&mut p, 0, GuestExit::IoIn(0x80, &mut b)).unwrap();
        assert_eq!(b, [0xff]);
        assert_eq!(p.metrics.exits.pio_unhandled.get(), 1);
    }

    #[test]
    fn faults_become_stop_reasons() {
        let mut p = peripherals();
        assert_eq!(
            handle_exit(&mut p, 1, GuestExit::Shutdown { rip: Some(0x42) }).unwrap(),
            ExitAction::Stop(StopReason::TripleFault {
                vcpu: 1,
                rip: Some(0x42)
            })
        );
        assert_eq!(
            handle_exit(&mut p, 0, GuestExit::InternalError { suberror: 1 }).unwrap(),
            ExitAction::Stop(StopReason::InternalError {
                vcpu: 0,
                suberror: 1
            })
        );
        assert_eq!(
            handle_exit(&mut p, 0, GuestExit::FailEntry { reason: 7 }).unwrap(),
            ExitAction::Stop(StopReason::FailEntry { vcpu: 0, reason: 7 })
        );
        assert_eq!(
            handle_exit(&mut p, 0, GuestExit::Hlt).unwrap(),
            ExitAction::Halted
        );
        assert!(handle_exit(&mut p, 0, GuestExit::Other("Debug".into())).is_err());
        assert_eq!(
            handle_exit(&mut p, 0, GuestExit::SystemEvent(2)).unwrap(),
            ExitAction::Stop(StopReason::Reset)
        );
    }
}
