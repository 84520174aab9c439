// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Turns a [`VmConfig`] into a running VM, in boot order:
//!
//! 1. validate the configuration;
//! 2. open `/dev/kvm`; allocate guest RAM (memfd);
//! 3. create the VM with its in-kernel irqchip and PIT; register memory;
//! 4. load the kernel (ELF with or without PVH note, or bzImage) and the initrd;
//! 5. create the devices: COM1, i8042, exit port on the PIO bus; virtio-mmio devices at
//!    `0xd0000000 + i·0x1000` with IRQ `5 + i` (irqfd) and queue-notify ioeventfds, each
//!    announced by a `virtio_mmio.device=4K@ADDR:IRQ` word appended to the command line;
//! 6. write command line, GDT, page tables, MP table and boot_params / `hvm_start_info`;
//! 7. create and configure the vCPUs (CPUID, MSRs, LAPIC, registers);
//! 8. register event-loop subscribers (devices, stdin, API socket, the exit event).
//!
//! [`Vmm::run`] then starts one thread per vCPU and runs the event loop on the calling thread
//! until the VM stops.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;

use crate::boot::x86_64::{self as boot, BootSetup};
use crate::config::{SerialOutput, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::irq::IrqLine;
use crate::devices::legacy::exit_port::ExitPort;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::{self, RawTerminal, SerialDevice, SerialInput, SerialSink};
use crate::devices::legacy::{COM1_GSI, COM1_LEN, COM1_PORT, EXIT_PORT, I8042_LEN, I8042_PORT};
use crate::memory::{self, MemoryError};
use crate::metrics::{MetricsSource, VmmMetrics};
use crate::vstate::vcpu::{self, Peripherals, Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};
use crate::vstate::{StopReason, VmControl};

/// The event manager type: every subscriber is shared and locked per event.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors building the VM. Each is reported as one line by `main`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `/dev/kvm` missing or inaccessible.
    #[error("cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    /// KVM API version mismatch.
    #[error("unsupported KVM API version {0}")]
    KvmApi(i32),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// VM creation.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Kernel, initrd or boot data.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// vCPU set-up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Bus layout.
    #[error("device bus")]
    Bus(#[from] BusError),
    /// A device could not be created.
    #[error("cannot create device {name}")]
    Device {
        /// Device name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The serial output file cannot be opened.
    #[error("cannot open serial output {path}")]
    SerialOutput {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The event manager failed.
    #[error("cannot create the event loop")]
    EventManager(#[source] event_manager::Error),
    /// Eventfd or similar.
    #[error("cannot create a VMM event")]
    Event(#[source] std::io::Error),
    /// Signal handler installation.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The virtio-fs back-end could not be reached or set up.
    #[error("virtio-fs back-end {path}")]
    Fs {
        /// The back-end socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::devices::virtio::fs::FsError,
    },
    /// Seccomp filters.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// A built VM, ready to run.
pub struct Vmm {
    control: Arc<VmControl>,
    vcpus: Vec<Vcpu>,
    peripherals: Peripherals,
    event_manager: EventManager<Subscriber>,
    metrics: Arc<VmmMetrics>,
    /// Kept alive for the VM's lifetime (KVM fds, guest memory mappings, terminal state).
    _kvm: Kvm,
    _vm: Vm,
    _mem: GuestMemoryMmap,
    raw_terminal: Option<RawTerminal>,
    /// Socket files to remove when the VMM exits.
    cleanup_paths: Vec<PathBuf>,
    /// The full kernel command line given to the guest.
    cmdline: String,
    /// Install seccomp filters when running.
    seccomp: bool,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .field("cmdline", &self.cmdline)
            .finish_non_exhaustive()
    }
}

/// Watches the control block's exit eventfd so the event loop wakes up on a stop.
struct ExitWatcher {
    control: Arc<VmControl>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.control.exit_evt().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.control.exit_evt(), EventSet::IN)) {
            log::error!("cannot watch the exit event: {e}");
        }
    }
}

impl MetricsSource for serial::SerialMetrics {
    fn snapshot(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        serde_json::json!({
            "tx_bytes": self.tx_bytes.load(Relaxed),
            "tx_lost": self.tx_lost.load(Relaxed),
            "rx_bytes": self.rx_bytes.load(Relaxed),
            "rx_dropped": self.rx_dropped.load(Relaxed),
        })
    }
}

/// Everything a device-adding step needs.
pub struct BuildContext<'a> {
    /// The VM (irqfd / ioeventfd registration).
    pub vm: &'a Vm,
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// MMIO bus being filled.
    pub mmio: &'a mut Bus,
    /// Event loop subscribers to add.
    pub subscribers: &'a mut Vec<Subscriber>,
    /// Command-line words to append.
    pub cmdline_extra: &'a mut Vec<String>,
    /// Counters.
    pub metrics: &'a Arc<VmmMetrics>,
    /// Test-payload mode: interrupts are not routed to the VM.
    pub test_payload: bool,
    /// The virtio devices, for the API's `snapshot`.
    pub devices: &'a Arc<crate::devices::virtio::DeviceRegistry>,
}

impl std::fmt::Debug for BuildContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext").finish_non_exhaustive()
    }
}

/// Builds the VM described by `cfg`.
pub fn build_vm(cfg: &VmConfig) -> Result<Vmm, BuildError> {
    cfg.validate()?;
    let kvm = Kvm::new().map_err(BuildError::Kvm)?;
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(BuildError::KvmApi(api));
    }
    let mem = memory::allocate(cfg.memory_mib)?;
    let vm = Vm::new(&kvm)?;
    vm.register_memory(&mem)?;

    let kernel = boot::load_kernel(&mem, &cfg.kernel, cfg.test_payload)?;
    let initrd = match &cfg.initrd {
        Some(path) => {
            let addr_max = kernel
                .setup_header
                .map(|h| u64::from(h.initrd_addr_max))
                .filter(|m| *m != 0)
                .unwrap_or(0x37ff_ffff);
            Some(boot::load_initrd(&mem, path, kernel.kernel_end, addr_max)?)
        }
        None => None,
    };

    let metrics = Arc::new(VmmMetrics::default());
    let control = Arc::new(VmControl::new(usize::from(cfg.vcpus)).map_err(BuildError::Event)?);
    let mut subscribers: Vec<Subscriber> = Vec::new();
    let mut cleanup_paths = Vec::new();

    // Legacy devices.
    let mut pio = Bus::new();
    let com1_irq = IrqLine::new(COM1_GSI).map_err(BuildError::Event)?;
    if !cfg.test_payload {
        vm.register_irqfd(com1_irq.eventfd(), COM1_GSI)?;
    }
    let sink = match &cfg.serial {
        SerialOutput::Stdout => SerialSink::stdout().map_err(|source| BuildError::Device {
            name: "serial".into(),
            source,
        })?,
        SerialOutput::None => SerialSink::Sink,
        SerialOutput::File(path) => SerialSink::File(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| BuildError::SerialOutput {
                    path: path.clone(),
                    source,
                })?,
        ),
    };
    let serial_dev = SerialDevice::new(com1_irq, sink);
    metrics.register("serial".into(), serial_dev.metrics());
    let serial_dev = Arc::new(Mutex::new(serial_dev));
    pio.insert(serial_dev.clone(), COM1_PORT, COM1_LEN)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::default())),
        I8042_PORT,
        I8042_LEN,
    )?;
    pio.insert(Arc::new(Mutex::new(ExitPort)), EXIT_PORT, 1)?;

    let is_tty = serial::stdin_is_tty();
    let mut raw_terminal = None;
    if cfg.serial_stdin.unwrap_or(is_tty) {
        let input = SerialInput::new(serial_dev.clone()).map_err(|source| BuildError::Device {
            name: "serial input".into(),
            source,
        })?;
        if is_tty {
            raw_terminal = RawTerminal::enable(0).ok();
        }
        subscribers.push(Arc::new(Mutex::new(input)));
    }

    // virtio-mmio devices.
    let mut mmio = Bus::new();
    let mut cmdline_extra = Vec::new();
    let devices = Arc::new(crate::devices::virtio::DeviceRegistry::default());
    {
        let mut ctx = BuildContext {
            vm: &vm,
            mem: &mem,
            mmio: &mut mmio,
            subscribers: &mut subscribers,
            cmdline_extra: &mut cmdline_extra,
            metrics: &metrics,
            test_payload: cfg.test_payload,
            devices: &devices,
        };
        crate::devices::virtio::add_devices(cfg, &mut ctx, &mut cleanup_paths)?;
    }

    if let Some(path) = &cfg.api_sock {
        let api =
            crate::api::ApiServer::bind(path, control.clone(), metrics.clone(), devices.clone())
                .map_err(|source| BuildError::Device {
                    name: format!("API socket {}", path.display()),
                    source,
                })?;
        cleanup_paths.push(path.clone());
        subscribers.push(Arc::new(Mutex::new(api)));
    }

    let mut cmdline = cfg.cmdline.clone();
    for w in &cmdline_extra {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(w);
    }
    let setup = BootSetup {
        kernel: &kernel,
        cmdline: &cmdline,
        initrd,
        vcpus: cfg.vcpus,
    };
    let cr3 = boot::configure_system(&mem, &setup)?;

    let mut vcpus = Vec::new();
    for i in 0..cfg.vcpus {
        let mut v = Vcpu::new(vm.fd(), i)?;
        v.configure(&kvm, cfg.vcpus, kernel.mode, kernel.entry.0, cr3)?;
        vcpus.push(v);
    }

    let mut event_manager = EventManager::<Subscriber>::new().map_err(BuildError::EventManager)?;
    event_manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher {
        control: control.clone(),
    })));
    for s in subscribers {
        event_manager.add_subscriber(s);
    }

    Ok(Vmm {
        control,
        vcpus,
        peripherals: Peripherals {
            pio,
            mmio,
            metrics: metrics.clone(),
        },
        event_manager,
        metrics,
        _kvm: kvm,
        _vm: vm,
        _mem: mem,
        raw_terminal,
        cleanup_paths,
        cmdline,
        seccomp: cfg.seccomp,
    })
}

impl Vmm {
    /// The command line the guest gets.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The VMM's counters.
    pub fn metrics(&self) -> &Arc<VmmMetrics> {
        &self.metrics
    }

    /// Adds a subscriber to the event loop before [`Vmm::run`]. Its `process` runs on the
    /// event-loop thread under that thread's seccomp filter (embedders add back-ends this way;
    /// the seccomp test uses it to make a forbidden call from a confined thread). The
    /// `vmrun-vmm` binary adds none: nothing a guest does can reach this.
    pub fn add_subscriber(&mut self, s: Subscriber) {
        self.event_manager.add_subscriber(s);
    }

    /// Runs the VM until it stops; returns why. Can be called once; the VM's resources are
    /// released when the `Vmm` is dropped (the binary just exits; the kernel reclaims them).
    pub fn run(&mut self) -> Result<StopReason, BuildError> {
        vcpu::install_kick_handler().map_err(BuildError::Signal)?;
        let (vcpu_filter, loop_filter) = if self.seccomp {
            (
                Some(crate::seccomp::vcpu_filter()?),
                Some(crate::seccomp::event_loop_filter()?),
            )
        } else {
            (None, None)
        };
        let mut threads = Vec::new();
        for v in std::mem::take(&mut self.vcpus) {
            let p = self.peripherals.clone();
            let c = self.control.clone();
            let f = vcpu_filter.clone();
            let name = format!("vcpu{}", v.index());
            let t = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    if let Some(f) = f {
                        if let Err(e) = crate::seccomp::install(&f) {
                            c.request_stop(StopReason::VcpuFailed {
                                vcpu: v.index(),
                                error: e.to_string(),
                            });
                            return;
                        }
                    }
                    v.run(p, c)
                })
                .map_err(BuildError::Event)?;
            self.control
                .add_thread(std::os::unix::thread::JoinHandleExt::as_pthread_t(&t));
            threads.push(t);
        }
        if let Some(f) = loop_filter {
            if let Err(e) = crate::seccomp::install(&f) {
                self.control.request_stop(StopReason::VcpuFailed {
                    vcpu: 0,
                    error: format!("event loop: {e}"),
                });
            }
        }
        let reason = loop {
            if let Some(r) = self.control.stop_reason() {
                break r.clone();
            }
            if let Err(e) = self.event_manager.run() {
                log::error!("event loop: {e}");
                self.control.request_stop(StopReason::VcpuFailed {
                    vcpu: 0,
                    error: format!("event loop failed: {e}"),
                });
            }
        };
        self.control.kick_all();
        for t in threads {
            let _ = t.join();
        }
        for p in &self.cleanup_paths {
            let _ = std::fs::remove_file(p);
        }
        // Give the terminal back now: the binary exits without dropping the Vmm.
        self.raw_terminal = None;
        Ok(reason)
    }
}
