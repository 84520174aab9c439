// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! A sandbox: one microVM with the agent inside, its helper daemons, its state directory and its
//! share, owned by one long-lived host process (the `vmrun` monitor or the shim).
//!
//! Life cycle ([`Sandbox::start`]):
//! 1. the state directory `<root>/<id>` (0700) is created;
//! 2. with a share: `<state>/shared` becomes an `rshared` bind mount of itself, virtiofsd's
//!    socket is bound and virtiofsd is started on it (`--fd`);
//! 3. for QEMU: `vhost-device-vsock` is started and awaited until its socket listens;
//! 4. the agent-log listener `<vsock uds>_1025` is bound;
//! 5. the hypervisor is started; a watcher task reports its exit at once;
//! 6. the agent is reached over hybrid vsock (port 1024) with retries until the boot deadline,
//!    `Version` is checked against the expected API version, `Check` is called, and with a share
//!    (or a hostname) `CreateSandbox` tells the agent to mount it.
//!
//! Every child leads its own process group and (by default) dies with the owner
//! (`PR_SET_PDEATHSIG`). Any error on the way, [`Sandbox::shutdown`], [`Sandbox::kill`] and
//! `Drop` all end in the same teardown: kill every process group, unmount the share, remove the
//! state directory. Nothing is left: no process, socket, mount or directory (on a boot failure
//! the console log is kept next to the state directory as `<root>/<id>.console.log`, and the
//! error names it).
//!
//! Threads: async (tokio) except process waiting, which runs on one plain thread per child
//! (see [`process`]). Drop blocks briefly (SIGKILL and reap).

pub mod process;
pub mod timings;

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vmrun_protocol::health::{CheckResponse, VersionResponse};
use vmrun_protocol::{StdioHeader, StdioStream, AGENT_PORT, LOG_PORT, READY_LINE, STDIO_PORT};

use self::process::{ManagedProcess, ProcessError, SpawnOptions};
use self::timings::{StepKind, Timings};
use crate::agent_client::{AgentClient, AgentError, DEFAULT_RPC_TIMEOUT};
use crate::config::{Config, ConfigError, SandboxSettings};
use crate::hypervisor::{
    self, probe_kvm, Hypervisor, HypervisorBinaries, HypervisorError, KvmKind, Requirements,
    VmExit, VmSpec,
};
use crate::virtiofs::{self, SharedDir, VirtiofsError};
use crate::vsock::{self, VsockError};

/// The guest CID every sandbox's VM gets (each VM has its own vsock daemon/UDS).
pub const GUEST_CID: u32 = 3;
/// Longest Unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How much of the console log an error or report quotes.
const CONSOLE_TAIL_LINES: usize = 25;
/// The most agent-log bytes written to `agent.log` (the guest is not trusted with host disk).
const AGENT_LOG_LIMIT: u64 = 16 << 20;

/// Errors of a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The id cannot name a directory.
    #[error("invalid sandbox id")]
    InvalidId(#[source] VirtiofsError),
    /// A sandbox with this id exists.
    #[error("sandbox state directory {0} already exists")]
    Exists(PathBuf),
    /// A directory or file could not be created.
    #[error("cannot create {path}")]
    Create {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A socket path is too long for `sun_path`, or contains a comma (QEMU option syntax).
    #[error(
        "socket path {0} is longer than 107 bytes or contains a comma; use a shorter --root or id"
    )]
    BadSocketPath(PathBuf),
    /// The config is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// No backend can run the sandbox.
    #[error("cannot select a hypervisor")]
    Hypervisor(#[from] HypervisorError),
    /// A guest artifact is missing.
    #[error("guest {what} {path} not found (run scripts/setup, or set [artifacts] in the config or VMRUN_ARTIFACTS)")]
    MissingArtifact {
        /// Which artifact.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A helper program is missing.
    #[error("{0} not found (run scripts/setup, or set [binaries] in the config)")]
    MissingBinary(&'static str),
    /// A process could not be started.
    #[error("cannot start a sandbox process")]
    Process(#[from] ProcessError),
    /// The share failed.
    #[error("virtio-fs share")]
    Share(#[from] VirtiofsError),
    /// A socket could not be bound.
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A daemon did not get ready.
    #[error("{name} did not get ready: {reason}; its log {log}:\n{log_tail}")]
    DaemonNotReady {
        /// The daemon.
        name: &'static str,
        /// Why.
        reason: String,
        /// Its log file (removed with the sandbox).
        log: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// The agent did not answer in time.
    #[error(
        "the agent did not become ready within {timeout:?} (last error: {last_error}); \
         console log {console_log}, last lines:\n{console_tail}"
    )]
    BootTimeout {
        /// The boot timeout.
        timeout: Duration,
        /// The last connection error.
        last_error: String,
        /// Where the console log was kept.
        console_log: PathBuf,
        /// The end of the console log.
        console_tail: String,
    },
    /// The hypervisor exited (during boot or later).
    #[error("the hypervisor exited: {exit}; console log {console_log}, last lines:\n{console_tail}\nhypervisor stderr:\n{stderr_tail}")]
    HypervisorExited {
        /// How it exited.
        exit: VmExit,
        /// Where the console log is (kept on a boot failure).
        console_log: PathBuf,
        /// The end of the console log.
        console_tail: String,
        /// The end of the hypervisor's own output.
        stderr_tail: String,
    },
    /// The agent failed or refused.
    #[error("agent")]
    Agent(#[from] AgentError),
    /// A stdio stream could not be opened.
    #[error("cannot open the {stream} stream of {container_id}/{exec_id}")]
    Stream {
        /// The container.
        container_id: String,
        /// The process (`-` for init).
        exec_id: String,
        /// The stream.
        stream: StdioStream,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox was already stopped.
    #[error("the sandbox is stopped")]
    Stopped,
    /// Pod network setup failed.
    #[error("pod network")]
    Network(#[from] crate::network::NetworkError),
}

/// Everything needed to start a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Sandbox id (a directory name: `[A-Za-z0-9_.-]`, 1-128 characters).
    pub id: String,
    /// Directory holding the sandbox's state directory.
    pub root_dir: PathBuf,
    /// Host configuration (binaries, artifacts).
    pub host: Config,
    /// VM settings (the config's `[sandbox]` with annotations applied).
    pub settings: SandboxSettings,
    /// Give the sandbox a virtio-fs share (`<state>/shared`, tag `vmrun`).
    pub shared_fs: bool,
    /// Guest hostname set through CreateSandbox (None: the kernel default).
    pub hostname: Option<String>,
    /// Kill the hypervisor and daemons when the owner process dies (`PR_SET_PDEATHSIG`).
    pub die_with_owner: bool,
    /// The agent API version to accept (tests override it to check the refusal).
    pub expected_api_version: u32,
    /// KVM kind (None: probe it).
    pub kvm: Option<KvmKind>,
    /// Extra kernel command-line words (e.g. `VMRUN_AGENT_*` settings).
    pub extra_cmdline: Vec<String>,
    /// The pod's network namespace (e.g. `/run/netns/cni-...`): its interfaces are carried into
    /// the VM ([`crate::network`]). None: the guest has loopback only.
    pub netns: Option<PathBuf>,
}

impl SandboxConfig {
    /// A config with the defaults: the host config's `[sandbox]` settings, no share, dies with
    /// the owner, this build's API version, KVM probed.
    pub fn new(id: &str, root_dir: &Path, host: &Config) -> Self {
        Self {
            id: id.to_owned(),
            root_dir: root_dir.to_path_buf(),
            settings: host.sandbox.clone(),
            host: host.clone(),
            shared_fs: false,
            hostname: None,
            die_with_owner: true,
            expected_api_version: vmrun_protocol::API_VERSION,
            kvm: None,
            extra_cmdline: Vec::new(),
            netns: None,
        }
    }
}

/// How a sandbox ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitReport {
    /// The hypervisor's exit, classified.
    pub exit: VmExit,
    /// The end of the console log, for a crash or failure.
    pub console_tail: Option<String>,
}

impl fmt::Display for ExitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.exit)?;
        if let Some(t) = &self.console_tail {
            write!(f, "; console:\n{t}")?;
        }
        Ok(())
    }
}

/// The files and sockets of one sandbox directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    /// The state directory.
    pub dir: PathBuf,
    /// Guest serial console.
    pub console_log: PathBuf,
    /// Hypervisor stdout/stderr.
    pub hypervisor_log: PathBuf,
    /// Hybrid-vsock socket (`CONNECT <port>`).
    pub vsock_uds: PathBuf,
    /// Agent log listener (`<vsock_uds>_1025`).
    pub agent_log_socket: PathBuf,
    /// Agent log stream, as received.
    pub agent_log: PathBuf,
    /// vhost-user socket of vhost-device-vsock.
    pub vhost_vsock_socket: PathBuf,
    /// vhost-device-vsock output.
    pub vhost_vsock_log: PathBuf,
    /// vhost-user socket of virtiofsd.
    pub virtiofsd_socket: PathBuf,
    /// virtiofsd output.
    pub virtiofsd_log: PathBuf,
    /// The share.
    pub shared: PathBuf,
    /// vmrun-vmm API socket.
    pub api_socket: PathBuf,
}

impl SandboxPaths {
    /// The layout of the state directory `dir`.
    pub fn new(dir: &Path) -> Self {
        let vsock_uds = dir.join("vsock.sock");
        Self {
            dir: dir.to_path_buf(),
            console_log: dir.join("console.log"),
            hypervisor_log: dir.join("hypervisor.log"),
            agent_log_socket: vsock::listener_path(&vsock_uds, LOG_PORT),
            vsock_uds,
            agent_log: dir.join("agent.log"),
            vhost_vsock_socket: dir.join("vhost-vsock.sock"),
            vhost_vsock_log: dir.join("vhost-vsock.log"),
            virtiofsd_socket: dir.join("virtiofsd.sock"),
            virtiofsd_log: dir.join("virtiofsd.log"),
            shared: dir.join("shared"),
            api_socket: dir.join("api.sock"),
        }
    }

    fn check_sockets(&self) -> Result<(), SandboxError> {
        for p in [
            &self.agent_log_socket,
            &self.vhost_vsock_socket,
            &self.virtiofsd_socket,
            &self.api_socket,
            &self.vsock_uds,
        ] {
            let bytes = p.as_os_str().len();
            if bytes > MAX_SOCKET_PATH || p.as_os_str().as_encoded_bytes().contains(&b',') {
                return Err(SandboxError::BadSocketPath(p.clone()));
            }
        }
        // The console and kernel paths go into QEMU options too.
        if self.dir.as_os_str().as_encoded_bytes().contains(&b',') {
            return Err(SandboxError::BadSocketPath(self.dir.clone()));
        }
        Ok(())
    }
}

/// A running sandbox. See the module docs.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    root_dir: PathBuf,
    paths: SandboxPaths,
    hypervisor: Box<dyn Hypervisor>,
    selection_reason: String,
    vm: Option<ManagedProcess>,
    daemons: Vec<Arc<ManagedProcess>>,
    share: Option<SharedDir>,
    tasks: Vec<JoinHandle<()>>,
    client: Option<AgentClient>,
    version: Option<VersionResponse>,
    check: Option<CheckResponse>,
    boot_to_ready: Option<Duration>,
    timings: Timings,
    stopping: Arc<AtomicBool>,
    exit_rx: watch::Receiver<Option<VmExit>>,
    keep_console: bool,
    torn_down: bool,
    /// Taps and tc filters of the pod network (torn down after the hypervisor is killed).
    network: Option<crate::network::PodNetwork>,
}

impl Sandbox {
    /// Boots a sandbox and waits until its agent is ready. On any error everything started so
    /// far is torn down before this returns.
    pub async fn start(cfg: SandboxConfig) -> Result<Self, SandboxError> {
        let t0 = Instant::now();
        cfg.settings.validate()?;
        virtiofs::validate_name("sandbox id", &cfg.id).map_err(SandboxError::InvalidId)?;
        let kvm = cfg.kvm.unwrap_or_else(|| probe_kvm().kind);
        let bins = HypervisorBinaries {
            qemu: cfg.host.binary(&cfg.host.binaries.qemu),
            vmrun_vmm: cfg.host.binary(&cfg.host.binaries.vmrun_vmm),
        };
        let selection = hypervisor::select(
            &cfg.settings,
            kvm,
            &Requirements {
                shared_fs: cfg.shared_fs,
            },
            &bins,
            &cfg.host.binaries.qemu,
            &cfg.host.binaries.vmrun_vmm,
        )?;
        log::info!(
            "sandbox {}: {} ({})",
            cfg.id,
            selection.hypervisor.describe(),
            selection.reason
        );
        let vmlinux = cfg.host.kernel_path();
        let bzimage = cfg.host.qemu_kernel_path();
        let kernel = selection
            .hypervisor
            .kernel(&vmlinux, &bzimage)
            .to_path_buf();
        let initrd = cfg.host.initrd_path();
        for (what, path) in [("kernel", &kernel), ("initramfs", &initrd)] {
            if !path.is_file() {
                return Err(SandboxError::MissingArtifact {
                    what,
                    path: path.clone(),
                });
            }
        }
        let dir = cfg.root_dir.join(&cfg.id);
        let paths = SandboxPaths::new(&dir);
        paths.check_sockets()?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&cfg.root_dir)
            .map_err(|source| SandboxError::Create {
                path: cfg.root_dir.clone(),
                source,
            })?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::Exists(dir))
            }
            Err(source) => return Err(SandboxError::Create { path: dir, source }),
        }
        // From here on, dropping `sandbox` tears everything down.
        let (_exit_tx, exit_rx) = watch::channel(None);
        let mut sandbox = Self {
            id: cfg.id.clone(),
            root_dir: cfg.root_dir.clone(),
            paths,
            hypervisor: selection.hypervisor,
            selection_reason: selection.reason,
            vm: None,
            daemons: Vec::new(),
            share: None,
            tasks: Vec::new(),
            client: None,
            version: None,
            check: None,
            boot_to_ready: None,
            timings: Timings::new(),
            stopping: Arc::new(AtomicBool::new(false)),
            exit_rx,
            keep_console: false,
            torn_down: false,
            network: None,
        };
        sandbox
            .timings
            .record("sandbox.prepare", StepKind::Host, t0);
        match sandbox.boot(&cfg, kernel, initrd).await {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                // Keep the console for the error message, then tear down.
                sandbox.keep_console = true;
                sandbox.teardown();
                Err(e)
            }
        }
    }

    async fn boot(
        &mut self,
        cfg: &SandboxConfig,
        kernel: PathBuf,
        initrd: PathBuf,
    ) -> Result<(), SandboxError> {
        let opts = SpawnOptions {
            die_with_owner: cfg.die_with_owner,
            inherit_fd: None,
        };
        let p = self.paths.clone();
        let mut t = Instant::now();

        let mut extra_cmdline = Vec::new();
        if cfg.settings.debug_console {
            extra_cmdline.push("VMRUN_AGENT_LOG_LEVEL=debug".to_owned());
        }
        extra_cmdline.extend(
            cfg.settings
                .kernel_params
                .split_whitespace()
                .map(str::to_owned),
        );
        extra_cmdline.extend(cfg.extra_cmdline.iter().cloned());

        // virtio-fs share and virtiofsd.
        if cfg.shared_fs {
            let bin = cfg
                .host
                .binary(&cfg.host.binaries.virtiofsd)
                .ok_or(SandboxError::MissingBinary("virtiofsd"))?;
            self.share = Some(SharedDir::create(&p.shared)?);
            let listener = virtiofs::listen(&p.virtiofsd_socket)?;
            let cmd = virtiofs::virtiofsd_command(&bin, &listener, &p.shared);
            let fs_opts = SpawnOptions {
                inherit_fd: Some(std::os::fd::AsRawFd::as_raw_fd(&listener)),
                ..opts.clone()
            };
            let d = ManagedProcess::spawn("virtiofsd", cmd, &p.virtiofsd_log, &fs_opts)?;
            // virtiofsd has its own copy of the listening socket now.
            drop(listener);
            self.daemons.push(Arc::new(d));
            t = self
                .timings
                .record("sandbox.virtiofsd_spawn", StepKind::Host, t);
        }

        // vsock daemon (QEMU).
        if self.hypervisor.needs_vsock_daemon() {
            let bin = cfg
                .host
                .binary(&cfg.host.binaries.vhost_device_vsock)
                .ok_or(SandboxError::MissingBinary("vhost-device-vsock"))?;
            let mut cmd = std::process::Command::new(bin);
            let mut vm_arg = std::ffi::OsString::from(format!("guest-cid={GUEST_CID},socket="));
            vm_arg.push(p.vhost_vsock_socket.as_os_str());
            vm_arg.push(",uds-path=");
            vm_arg.push(p.vsock_uds.as_os_str());
            cmd.arg("--vm").arg(vm_arg);
            let d = Arc::new(ManagedProcess::spawn(
                "vhost-device-vsock",
                cmd,
                &p.vhost_vsock_log,
                &opts,
            )?);
            self.daemons.push(Arc::clone(&d));
            wait_listening(
                &d,
                &p.vhost_vsock_socket,
                &p.vhost_vsock_log,
                Duration::from_secs(10),
            )
            .await?;
            t = self
                .timings
                .record("sandbox.vsock_daemon_ready", StepKind::Host, t);
        }

        // Pod network: taps plumbed to the netns's interfaces, their fds for the hypervisor.
        if let Some(netns) = &cfg.netns {
            let vnet_hdr = self.hypervisor.tap_vnet_hdr();
            self.network = Some(crate::network::PodNetwork::setup(netns, vnet_hdr)?);
            t = self
                .timings
                .record("sandbox.pod_network_setup", StepKind::Host, t);
        }
        let net = self
            .network
            .as_ref()
            .map(crate::network::PodNetwork::net_specs)
            .unwrap_or_default();

        // Agent log listener, before the guest can connect.
        let log_listener =
            UnixListener::bind(&p.agent_log_socket).map_err(|source| SandboxError::Listen {
                path: p.agent_log_socket.clone(),
                source,
            })?;
        self.tasks.push(tokio::spawn(serve_agent_log(
            log_listener,
            p.agent_log.clone(),
            self.id.clone(),
        )));

        let spec = VmSpec {
            kernel,
            initrd,
            extra_cmdline,
            vcpus: cfg.settings.vcpus,
            memory_mib: cfg.settings.memory_mib,
            console_log: p.console_log.clone(),
            vsock_uds: p.vsock_uds.clone(),
            vhost_vsock_socket: p.vhost_vsock_socket.clone(),
            virtiofs_socket: cfg.shared_fs.then(|| p.virtiofsd_socket.clone()),
            api_socket: p.api_socket.clone(),
            debug_console: cfg.settings.debug_console,
            net,
        };
        let mut cmd = self.hypervisor.command(&spec);
        crate::network::inherit_fds(&mut cmd, spec.net.iter().map(|n| n.fd).collect());
        log::debug!("sandbox {}: {:?}", self.id, cmd);
        self.timings
            .record("sandbox.log_listener_and_vm_spec", StepKind::Host, t);
        let started = Instant::now();
        let vm = ManagedProcess::spawn(self.hypervisor.name(), cmd, &p.hypervisor_log, &opts)?;
        if let Some(net) = &mut self.network {
            net.release_taps();
        }
        let vm_rx = vm.subscribe();
        self.vm = Some(vm);
        self.spawn_watcher(vm_rx);
        // The spawn itself is host work; the boot counts from here (not from `started`) so that
        // the two do not overlap. `boot_to_ready` below keeps its documented meaning.
        let t = self
            .timings
            .record("sandbox.hypervisor_spawn", StepKind::Host, started);

        // Reach the agent.
        let client = self
            .connect_agent(cfg.settings.boot_timeout(), started)
            .await?;
        let version = client.handshake(cfg.expected_api_version).await?;
        self.boot_to_ready = Some(started.elapsed());
        let t = self
            .timings
            .record("sandbox.boot_to_agent_ready", StepKind::Boot, t);
        let check = client.check().await?;
        let t = self
            .timings
            .record("sandbox.agent_check", StepKind::Guest, t);
        if cfg.shared_fs || cfg.hostname.is_some() {
            let tag = cfg.shared_fs.then_some(virtiofs::SHARED_FS_TAG);
            client
                .create_sandbox(&self.id, cfg.hostname.as_deref().unwrap_or(""), tag)
                .await?;
            self.timings
                .record("sandbox.create_sandbox_rpc", StepKind::Guest, t);
        }
        if let Some(net) = &self.network {
            let t = Instant::now();
            crate::network::configure_guest(&client, net).await?;
            self.timings
                .record("sandbox.guest_network_config", StepKind::Guest, t);
        }
        log::info!(
            "sandbox {}: agent {} (API {}) ready after {:?}",
            self.id,
            version.agent_version,
            version.api_version,
            started.elapsed()
        );
        self.version = Some(version);
        self.check = Some(check);
        self.client = Some(client);
        Ok(())
    }

    /// Starts the task that notices the hypervisor's exit, publishes it, reports an unexpected
    /// one and stops the daemons (which are useless without the VM).
    fn spawn_watcher(&mut self, mut vm_rx: watch::Receiver<Option<std::process::ExitStatus>>) {
        let (exit_tx, exit_rx) = watch::channel(None);
        self.exit_rx = exit_rx;
        let hv_name = self.hypervisor.name();
        let clean_code = self.hypervisor.clean_exit_code();
        let daemons: Vec<_> = self.daemons.iter().map(Arc::clone).collect();
        let stopping = Arc::clone(&self.stopping);
        let id = self.id.clone();
        let console = self.paths.console_log.clone();
        self.tasks.push(tokio::spawn(async move {
            let status = loop {
                if let Some(s) = *vm_rx.borrow_and_update() {
                    break s;
                }
                if vm_rx.changed().await.is_err() {
                    return;
                }
            };
            let exit = hypervisor::classify(status, clean_code);
            if !stopping.load(Ordering::SeqCst) {
                log::error!(
                    "sandbox {id}: {hv_name} exited unexpectedly: {exit}; console tail:\n{}",
                    console_tail(&console)
                );
            }
            for d in &daemons {
                d.signal_group(libc::SIGKILL);
            }
            exit_tx.send_replace(Some(exit));
        }));
    }

    async fn connect_agent(
        &self,
        timeout: Duration,
        started: Instant,
    ) -> Result<AgentClient, SandboxError> {
        let deadline = started + timeout;
        let mut delay = Duration::from_millis(20);
        let mut last_error = String::from("no attempt made");
        loop {
            if let Some(exit) = self.exit_status() {
                return Err(self.exited_error(exit));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SandboxError::BootTimeout {
                    timeout,
                    last_error,
                    console_log: self.kept_console_path(),
                    console_tail: console_tail(&self.paths.console_log),
                });
            }
            // Connect only once the agent says on the console that it listens: a host
            // connection that reaches vhost-device-vsock before the guest's vsock driver is up
            // can stay unanswered for good (seen here under load with QEMU/TCG).
            if !console_says_ready(&self.paths.console_log) {
                last_error = format!("the console shows no {:?} line yet", READY_LINE);
                let mut rx = self.exit_rx.clone();
                let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
                continue;
            }
            // A handshake always ends (OK, or EOF while nothing listens yet) unless the daemon
            // is wedged; under a heavily loaded TCG host it can take seconds, so an attempt is
            // bounded generously and only to survive a wedged peer.
            let attempt = (deadline - now).min(Duration::from_secs(20));
            let t = Instant::now();
            match vsock::connect(&self.paths.vsock_uds, AGENT_PORT, attempt).await {
                Ok(stream) => return Ok(AgentClient::new(stream, DEFAULT_RPC_TIMEOUT)),
                Err(e) => {
                    log::debug!(
                        "sandbox {}: agent connect after {:?}: {e}",
                        self.id,
                        t.elapsed()
                    );
                    last_error = e.to_string();
                }
            }
            // Wake early if the hypervisor dies meanwhile.
            let mut rx = self.exit_rx.clone();
            let _ = tokio::time::timeout(delay, rx.changed()).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    fn exited_error(&self, exit: VmExit) -> SandboxError {
        SandboxError::HypervisorExited {
            exit,
            console_log: self.kept_console_path(),
            console_tail: console_tail(&self.paths.console_log),
            stderr_tail: console_tail(&self.paths.hypervisor_log),
        }
    }

    /// Where the console log is kept after a failed boot.
    fn kept_console_path(&self) -> PathBuf {
        self.root_dir.join(format!("{}.console.log", self.id))
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The state directory's layout.
    pub fn paths(&self) -> &SandboxPaths {
        &self.paths
    }

    /// The backend in use (`qemu`, `vmrun-vmm`) and how it runs.
    pub fn hypervisor(&self) -> &dyn Hypervisor {
        self.hypervisor.as_ref()
    }

    /// Why this backend was selected.
    pub fn selection_reason(&self) -> &str {
        &self.selection_reason
    }

    /// The hypervisor's pid (its process group id), while it runs.
    pub fn hypervisor_pid(&self) -> Option<i32> {
        self.vm.as_ref().map(ManagedProcess::pid)
    }

    /// Pids (= process group ids) of every live child: hypervisor and daemons.
    pub fn pids(&self) -> Vec<i32> {
        self.vm
            .iter()
            .map(ManagedProcess::pid)
            .chain(self.daemons.iter().map(|d| d.pid()))
            .collect()
    }

    /// The agent's Version answer.
    pub fn agent_version(&self) -> Option<&VersionResponse> {
        self.version.as_ref()
    }

    /// The agent's Check answer at boot (self-check results).
    pub fn agent_check(&self) -> Option<&CheckResponse> {
        self.check.as_ref()
    }

    /// Time from hypervisor start to the agent's Version answer.
    pub fn boot_to_ready(&self) -> Option<Duration> {
        self.boot_to_ready
    }

    /// The steps of [`Sandbox::start`] and how long each took.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// The agent client; fails once the hypervisor exited.
    pub fn agent(&self) -> Result<&AgentClient, SandboxError> {
        if let Some(exit) = self.exit_status() {
            return Err(self.exited_error(exit));
        }
        self.client.as_ref().ok_or(SandboxError::Stopped)
    }

    /// The share, if the sandbox has one (to bind container rootfs and volumes in).
    pub fn share(&self) -> Option<&SharedDir> {
        self.share.as_ref()
    }

    /// The hypervisor's exit, once it has exited.
    pub fn exit_status(&self) -> Option<VmExit> {
        self.exit_rx.borrow().clone()
    }

    /// Waits until the hypervisor exits, for whatever reason; returns the report.
    pub async fn wait_exit(&self) -> ExitReport {
        let mut rx = self.exit_rx.clone();
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return self.report(exit);
            }
            if rx.changed().await.is_err() {
                // The watcher is gone (teardown): the VM was killed.
                return self.report(VmExit::Killed {
                    signal: libc::SIGKILL,
                });
            }
        }
    }

    fn report(&self, exit: VmExit) -> ExitReport {
        let console_tail = matches!(exit, VmExit::Crashed | VmExit::Failed { .. })
            .then(|| console_tail(&self.paths.console_log));
        ExitReport { exit, console_tail }
    }

    /// Opens one stdio stream of a process on the stdio port and sends its header. Open
    /// the streams before CreateContainer/ExecProcess; never half-close them (a half-close is
    /// a full close on vhost-device-vsock).
    pub async fn open_stream(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        stream: StdioStream,
    ) -> Result<UnixStream, SandboxError> {
        let err = |source: std::io::Error| SandboxError::Stream {
            container_id: container_id.to_owned(),
            exec_id: exec_id.unwrap_or(vmrun_protocol::INIT_EXEC_ID).to_owned(),
            stream,
            source,
        };
        if let Some(exit) = self.exit_status() {
            return Err(self.exited_error(exit));
        }
        let header = StdioHeader::new(container_id, exec_id, stream)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let mut s = vsock::connect(&self.paths.vsock_uds, STDIO_PORT, Duration::from_secs(10))
            .await
            .map_err(|e: VsockError| err(std::io::Error::other(e)))?;
        s.write_all(header.to_line().as_bytes())
            .await
            .map_err(err)?;
        Ok(s)
    }

    /// Stops the sandbox gracefully: the agent's Shutdown (containers get SIGTERM, SIGKILL after
    /// `grace`), then waits up to `grace` + 10 s for the hypervisor to exit (then kills it), and
    /// tears everything down. Returns how the VM ended.
    pub async fn shutdown(&mut self, grace: Duration) -> Result<ExitReport, SandboxError> {
        if self.torn_down {
            return Err(SandboxError::Stopped);
        }
        self.stopping.store(true, Ordering::SeqCst);
        if self.exit_status().is_none() {
            if let Some(client) = &self.client {
                if let Err(e) = client.shutdown(grace).await {
                    // The guest may reset before the reply arrives; the exit status decides.
                    log::debug!("sandbox {}: Shutdown rpc: {e}", self.id);
                }
            }
        }
        let mut rx = self.exit_rx.clone();
        let waited = tokio::time::timeout(grace + Duration::from_secs(10), async {
            loop {
                if let Some(exit) = rx.borrow_and_update().clone() {
                    return Some(exit);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        let exit = match waited {
            Ok(Some(exit)) => exit,
            _ => {
                log::warn!(
                    "sandbox {}: the VM did not stop after Shutdown; killing it",
                    self.id
                );
                self.kill_vm()
            }
        };
        let report = self.report(exit);
        self.teardown();
        Ok(report)
    }

    /// Kills the hypervisor at once and tears everything down.
    pub fn kill(&mut self) -> ExitReport {
        self.stopping.store(true, Ordering::SeqCst);
        let exit = self.exit_status().unwrap_or_else(|| self.kill_vm());
        let report = self.report(exit);
        self.teardown();
        report
    }

    fn kill_vm(&mut self) -> VmExit {
        match &self.vm {
            Some(vm) => match vm.kill_and_wait(Duration::from_secs(10)) {
                Some(status) => self.hypervisor.classify_exit(status),
                None => VmExit::Killed {
                    signal: libc::SIGKILL,
                },
            },
            None => VmExit::Killed {
                signal: libc::SIGKILL,
            },
        }
    }

    /// Kills every process, unmounts the share and removes the state directory. Idempotent;
    /// also run by `Drop`.
    fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.client = None;
        if let Some(vm) = self.vm.take() {
            if vm.kill_and_wait(Duration::from_secs(10)).is_none() {
                log::error!(
                    "sandbox {}: hypervisor pid {} did not die",
                    self.id,
                    vm.pid()
                );
            }
        }
        for d in self.daemons.drain(..) {
            if d.kill_and_wait(Duration::from_secs(10)).is_none() {
                log::error!(
                    "sandbox {}: {} pid {} did not die",
                    self.id,
                    d.name(),
                    d.pid()
                );
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(mut net) = self.network.take() {
            if let Err(e) = net.teardown() {
                log::error!("sandbox {}: pod network teardown: {e}", self.id);
            }
        }
        let mut unmounted = true;
        if let Some(mut share) = self.share.take() {
            if let Err(e) = share.teardown() {
                log::error!("sandbox {}: cannot unmount the share: {e}", self.id);
                unmounted = false;
            }
        }
        if self.keep_console {
            let kept = self.kept_console_path();
            if let Err(e) = std::fs::copy(&self.paths.console_log, &kept) {
                log::warn!(
                    "sandbox {}: cannot keep the console log as {}: {e}",
                    self.id,
                    kept.display()
                );
            }
        }
        // Never recurse into a mounted directory: that would delete a container's files.
        if unmounted && virtiofs::mounts_under(&self.paths.dir).is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&self.paths.dir) {
                log::error!(
                    "sandbox {}: cannot remove {}: {e}",
                    self.id,
                    self.paths.dir.display()
                );
            }
        } else {
            log::error!(
                "sandbox {}: {} still has mounts; left in place",
                self.id,
                self.paths.dir.display()
            );
        }
        self.torn_down = true;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Waits until `socket` is a listening Unix socket (from `/proc/net/unix`), without connecting
/// to it: vhost-user daemons serve only one frontend.
async fn wait_listening(
    daemon: &ManagedProcess,
    socket: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<(), SandboxError> {
    let deadline = Instant::now() + timeout;
    let name = "vhost-device-vsock";
    loop {
        if let Some(status) = daemon.try_status() {
            return Err(SandboxError::DaemonNotReady {
                name,
                reason: format!("it exited ({status})"),
                log: log.to_path_buf(),
                log_tail: console_tail(log),
            });
        }
        if is_listening(socket) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::DaemonNotReady {
                name,
                reason: format!("{} not listening after {timeout:?}", socket.display()),
                log: log.to_path_buf(),
                log_tail: console_tail(log),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether a Unix socket at `path` is in the listening state (`__SO_ACCEPTCON`).
fn is_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[7] == want && f[3] == "00010000"
    })
}

/// The last lines of a log file (bounded read; the file may be guest-written).
pub fn console_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return format!("({} not readable)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(16 * 1024).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    let tail = lines[from..].join("\n");
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail
    }
}

/// Whether the console log holds the agent's [`READY_LINE`] at the start of a line.
fn console_says_ready(console_log: &Path) -> bool {
    std::fs::read(console_log).is_ok_and(|bytes| {
        String::from_utf8_lossy(&bytes)
            .lines()
            .any(|l| l.trim_start_matches('\r').starts_with(READY_LINE))
    })
}

/// Accepts the agent's log connections on `<uds>_1025`, appends what arrives to `file`
/// (bounded) and forwards each line to the `log` crate (target `vmrun::agent`, debug level).
async fn serve_agent_log(listener: UnixListener, file: PathBuf, id: String) {
    let mut conns = tokio::task::JoinSet::new();
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let file = file.clone();
        let id = id.clone();
        let written = Arc::clone(&written);
        conns.spawn(async move {
            if let Err(e) = copy_agent_log(stream, &file, &id, &written).await {
                log::debug!("sandbox {id}: agent log stream ended: {e}");
            }
        });
    }
}

async fn copy_agent_log(
    mut stream: UnixStream,
    file: &Path,
    id: &str,
    written: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .await?;
    let mut buf = vec![0_u8; 8192];
    let mut line = Vec::new();
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let chunk = &buf[..n];
        let before = written.fetch_add(n as u64, Ordering::Relaxed);
        if before < AGENT_LOG_LIMIT {
            out.write_all(chunk).await?;
        }
        for &b in chunk {
            if b == b'\n' {
                log::debug!(target: "vmrun::agent", "{id}: {}", String::from_utf8_lossy(&line));
                line.clear();
            } else if line.len() < 4096 {
                line.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_socket_limits() {
        let p = SandboxPaths::new(Path::new("/run/vmrun/abc"));
        assert_eq!(
            p.agent_log_socket,
            Path::new("/run/vmrun/abc/vsock.sock_1025")
        );
        p.check_sockets().unwrap();
        let long = SandboxPaths::new(&Path::new("/run/vmrun").join("x".repeat(100)));
        assert!(matches!(
            long.check_sockets(),
            Err(SandboxError::BadSocketPath(_))
        ));
        let comma = SandboxPaths::new(Path::new("/run/a,b/c"));
        assert!(matches!(
            comma.check_sockets(),
            Err(SandboxError::BadSocketPath(_))
        ));
    }

    #[test]
    fn console_tail_is_bounded() {
        let dir = std::env::temp_dir().join(format!("vmrun-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.log");
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&f, text).unwrap();
        let t = console_tail(&f);
        assert_eq!(t.lines().count(), CONSOLE_TAIL_LINES);
        assert!(t.ends_with("line 999"));
        assert!(console_tail(&dir.join("none")).contains("not readable"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn bad_inputs_fail_before_anything_is_created() {
        let root = std::env::temp_dir().join(format!("vmrun-sbx-{}", std::process::id()));
        let mut cfg = SandboxConfig::new("../evil", &root, &Config::default());
        let err = Sandbox::start(cfg.clone()).await.unwrap_err();
        assert!(matches!(err, SandboxError::InvalidId(_)), "{err}");
        cfg.id = "ok".to_owned();
        cfg.host.artifacts.qemu_kernel = Some(PathBuf::from("/nonexistent/bzImage"));
        cfg.host.artifacts.kernel = Some(PathBuf::from("/nonexistent/vmlinux"));
        let err = Sandbox::start(cfg.clone()).await.unwrap_err();
        assert!(
            matches!(
                err,
                SandboxError::MissingArtifact { .. } | SandboxError::Hypervisor(_)
            ),
            "{err}"
        );
        cfg.settings.vcpus = 0;
        let err = Sandbox::start(cfg).await.unwrap_err();
        assert!(matches!(err, SandboxError::Config(_)), "{err}");
        assert!(!root.join("ok").exists());
        let _ = std::fs::remove_dir(&root);
    }
}
