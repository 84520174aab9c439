// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The per-container monitor: the host process that owns a container's sandbox.
//!
//! `vmrun create` re-executes `vmrun` as `vmrun monitor ...` in its own session, with the
//! caller's stdio. The monitor boots the sandbox (microVM, daemons, virtio-fs share), binds the
//! rootfs into the share, opens the stdio streams, calls CreateContainer with the spec's
//! `root.path` rewritten for the guest, records itself as the container's pid, starts its
//! control socket `<state dir>/monitor.sock`, and only then tells `create` (over an inherited
//! pipe, `--ready-fd`) that the container exists, or why it could not be created. A failed
//! create leaves nothing behind: the sandbox tears itself down, the state directory goes.
//!
//! From then on the monitor is the container as far as the host is concerned (the pid in
//! `--pid-file` and in `state`): its stdio is the container's stdio (or a pty master went to
//! `--console-socket`), signals it receives are forwarded to the container's init process, and
//! it exits with the container's exit status (128+signal for a signal) once the container has
//! exited, its output is drained and the sandbox is shut down. If the VM dies, the container is
//! recorded `stopped` and the monitor exits with [`VM_DIED_STATUS`].
//!
//! Control protocol (one request per connection, one JSON line each way, socket 0600):
//! `{"op":"start"}`, `{"op":"kill","signal":15,"all":false}`, `{"op":"delete"}`; answer
//! `{"ok":true}` or `{"ok":false,"error":"..."}`. Requests are handled one at a time by the
//! monitor's main loop, which also owns every state change of the container after create.
//!
//! `vmrun run` (foreground) runs the same code in its own process, starting the container at
//! once, so that its exit status is the container's.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use vmrun_protocol::agent;

use crate::agent_client::AgentClient;
use crate::cli::{CreateArgs, GlobalOpts};
use crate::config::{Config, ConfigError};
use crate::oci::Bundle;
use crate::sandbox::timings::{StepKind, Timings};
use crate::sandbox::{Sandbox, SandboxConfig, SandboxError};
use crate::state::{
    format_rfc3339, process_alive, process_start_time, ContainerRecord, StateError, StateStore,
    Status,
};
use crate::stdio::{self, HostPty, Relays, StdioError, Streams};
use crate::virtiofs::VirtiofsError;

/// The control socket's file name in the container's state directory.
pub const CONTROL_SOCKET: &str = "monitor.sock";
/// The monitor's log file in the container's state directory.
pub const MONITOR_LOG: &str = "monitor.log";
/// Directory (inside `--root`) holding the sandboxes' state directories. `@` cannot occur in a
/// container id, so it never clashes with a container's directory.
pub const SANDBOX_DIR: &str = "@sandboxes";
/// The monitor's exit status when the VM died under a running container.
pub const VM_DIED_STATUS: i32 = 255;
/// Exit status reported for a container removed by `delete --force` (128 + SIGKILL).
pub const KILLED_STATUS: i32 = 137;
/// How long the monitor waits for the container's output after it exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace period of the agent's Shutdown once the container has exited.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Timeout of the RPCs that create or start processes in the guest: under TCG on a loaded host
/// the guest is slow, and a spurious timeout would fail a create that is merely late.
pub const SLOW_RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// A ttrpc context with [`SLOW_RPC_TIMEOUT`].
pub fn slow_context() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(SLOW_RPC_TIMEOUT.as_nanos()).unwrap_or(i64::MAX))
}

/// Longest control request accepted.
const MAX_REQUEST: u64 = 4096;

/// Errors of the monitor and of its clients.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The host config or an `io.vmrun.*` annotation is invalid.
    #[error("vmrun configuration")]
    Config(#[from] ConfigError),
    /// The sandbox could not be started or failed.
    #[error("sandbox")]
    Sandbox(#[source] Box<SandboxError>),
    /// The rootfs could not be shared with the guest.
    #[error("cannot share the rootfs with the guest")]
    Share(#[from] VirtiofsError),
    /// The stdio streams or the console could not be set up.
    #[error(transparent)]
    Stdio(#[from] StdioError),
    /// An agent RPC failed; `message` is the agent's own.
    #[error("{method}: {message}")]
    Agent {
        /// The RPC.
        method: &'static str,
        /// What the agent (or the transport) said.
        message: String,
    },
    /// The monitor process could not be started.
    #[error("cannot start the monitor process")]
    Spawn(#[source] std::io::Error),
    /// The monitor reported that the container could not be created.
    #[error("{0}")]
    CreateFailed(String),
    /// The monitor exited before it reported.
    #[error("the monitor exited before it reported ({0}); see the logs under {1}")]
    MonitorDied(String, PathBuf),
    /// The control socket could not be reached.
    #[error("cannot reach the monitor of container {id:?} (is it still running?)")]
    Connect {
        /// Container id.
        id: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The monitor refused a request.
    #[error("{0}")]
    Refused(String),
    /// Writing the pid file failed.
    #[error("cannot write the pid file {path}")]
    PidFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The host cgroup could not be set up.
    #[error("host cgroup")]
    Cgroup(#[from] crate::cgroups::CgroupError),
    /// Another I/O failure.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<SandboxError> for MonitorError {
    fn from(e: SandboxError) -> Self {
        Self::Sandbox(Box::new(e))
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MonitorError {
    let what = what.into();
    move |source| MonitorError::Io { what, source }
}

/// Hidden `vmrun monitor` arguments (set by `create`, not by users).
#[derive(Debug, Clone, Args)]
pub struct MonitorArgs {
    /// Absolute bundle path.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Inherited pipe to report readiness (`ok` or `error <msg>`) on.
    #[arg(long)]
    pub ready_fd: RawFd,
    /// Console socket to send the pty master to.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Container id.
    pub id: String,
}

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// StartContainer.
    Start,
    /// SignalProcess (init, or every process with `all`).
    Kill {
        /// Signal number.
        signal: u32,
        /// All processes.
        all: bool,
    },
    /// Kill the container and tear the sandbox down; the monitor then exits.
    Delete,
    /// Freeze the container (PauseContainer).
    Pause,
    /// Thaw it (ResumeContainer).
    Resume,
    /// List its processes (ListProcesses; guest pids).
    Ps,
}

/// A control answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The pids, for `ps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Vec<u32>>,
}

/// `/proc/self/fd/<dir>/monitor.sock`: the control socket reached through an open descriptor of
/// the state directory, so that its path fits in `sun_path` (108 bytes) under any `--root` and
/// with 64-character ids.
fn short_socket_path(dir: &std::fs::File) -> PathBuf {
    PathBuf::from(format!(
        "/proc/self/fd/{}/{CONTROL_SOCKET}",
        dir.as_raw_fd()
    ))
}

/// Sends `req` to container `id`'s monitor and waits for the answer.
pub fn request(store: &StateStore, id: &str, req: &Request) -> Result<(), MonitorError> {
    request_with_answer(store, id, req).map(|_| ())
}

/// Sends `req` to container `id`'s monitor and returns its (successful) answer.
pub fn request_with_answer(
    store: &StateStore,
    id: &str,
    req: &Request,
) -> Result<Response, MonitorError> {
    use std::io::{BufRead, Write};
    let connect = |source| MonitorError::Connect {
        id: id.to_owned(),
        source,
    };
    let dir = std::fs::File::open(store.dir(id)).map_err(connect)?;
    let mut conn =
        std::os::unix::net::UnixStream::connect(short_socket_path(&dir)).map_err(connect)?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(connect)?;
    let mut line = serde_json::to_string(req).map_err(|e| connect(std::io::Error::other(e)))?;
    line.push('\n');
    conn.write_all(line.as_bytes()).map_err(connect)?;
    let mut answer = String::new();
    std::io::BufReader::new(&conn)
        .read_line(&mut answer)
        .map_err(connect)?;
    let resp: Response = serde_json::from_str(&answer).map_err(|e| {
        connect(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad answer {answer:?}: {e}"),
        ))
    })?;
    if resp.ok {
        Ok(resp)
    } else {
        Err(MonitorError::Refused(
            resp.error.unwrap_or_else(|| "refused".into()),
        ))
    }
}

/// Where container `id`'s sandbox lives: `<root>/@sandboxes/<16 hex digits of sha256(id)>`
/// (short, so that the sandbox's socket paths fit in `sun_path` even for 64-character ids
/// under a long `--root`).
pub fn sandbox_location(root: &Path, id: &str) -> (PathBuf, String) {
    let digest = sha2::Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    (root.join(SANDBOX_DIR), hex)
}

fn new_record(id: &str, bundle: &Bundle, root: &Path) -> ContainerRecord {
    let (sb_root, sb_id) = sandbox_location(root, id);
    ContainerRecord {
        oci_version: bundle.summary.oci_version.clone(),
        id: id.to_owned(),
        status: Status::Creating,
        pid: None,
        pid_start_time: None,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: format_rfc3339(std::time::SystemTime::now()),
        annotations: bundle.summary.annotations.clone(),
        exit_status: None,
        sandbox: Some(serde_json::json!({ "dir": sb_root.join(sb_id) })),
        host_cgroup: None,
    }
}

/// `create`: records the container (refusing a taken id), starts the monitor in its own
/// session with the caller's stdio, waits until it reports, and writes `--pid-file`.
pub fn spawn_detached(
    store: &StateStore,
    g: &GlobalOpts,
    args: &CreateArgs,
    bundle: &Bundle,
) -> Result<i32, MonitorError> {
    let root = crate::cli::absolute(store.root());
    let lock = store.create(&new_record(&args.id, bundle, &root))?;
    drop(lock);
    let cleanup = |store: &StateStore| {
        if let Ok(lock) = store.lock(&args.id) {
            let record = lock.load().ok();
            if let Some(r) = &record {
                cleanup_leftovers(r);
            }
            let _ = store.remove(lock);
        }
    };

    let mut extra: Vec<std::ffi::OsString> = vec![
        "monitor".into(),
        "--bundle".into(),
        bundle.dir.clone().into_os_string(),
    ];
    if let Some(cs) = &args.console_socket {
        extra.push("--console-socket".into());
        extra.push(crate::cli::absolute(cs).into_os_string());
    }
    extra.push(args.id.clone().into());
    match spawn_helper(store, g, &extra) {
        Ok(pid) => {
            if let Some(pid_file) = &args.pid_file {
                if let Err(e) = write_pid_file(pid_file, pid) {
                    let _ = request(store, &args.id, &Request::Delete);
                    return Err(e);
                }
            }
            Ok(pid)
        }
        Err(e) => {
            cleanup(store);
            Err(e)
        }
    }
}

/// Starts `vmrun [global flags] <extra>` (a monitor subcommand) in its own session with this
/// process's stdio and an inherited pipe as `--ready-fd 3`, and waits until it reports:
/// returns its pid after `ok`, or the error it reported (after waiting for it to exit).
pub fn spawn_helper(
    store: &StateStore,
    g: &GlobalOpts,
    extra: &[std::ffi::OsString],
) -> Result<i32, MonitorError> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let root = crate::cli::absolute(store.root());
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| MonitorError::Spawn(e.into()))?;
    let exe = std::env::current_exe().map_err(MonitorError::Spawn)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root").arg(&root);
    if let Some(log) = &g.log {
        cmd.arg("--log").arg(crate::cli::absolute(log));
    }
    cmd.arg("--log-format").arg(match g.log_format {
        crate::cli::LogFormat::Text => "text",
        crate::cli::LogFormat::Json => "json",
    });
    if g.debug {
        cmd.arg("--debug");
    }
    if g.uses_systemd_cgroup() {
        cmd.arg("--systemd-cgroup");
    }
    let (sub, rest) = extra
        .split_first()
        .ok_or_else(|| MonitorError::Spawn(std::io::Error::other("no helper subcommand")))?;
    cmd.arg(sub)
        .arg("--ready-fd")
        .arg("3")
        .args(rest)
        .current_dir("/");
    let ready_raw = ready_w.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (setsid, dup2); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears FD_CLOEXEC on the new descriptor 3.
            if libc::dup2(ready_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(MonitorError::Spawn)?;
    drop(ready_w);
    let mut answer = String::new();
    let _ = std::fs::File::from(ready_r).read_to_string(&mut answer);
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    if answer.starts_with("ok") {
        // The helper outlives us; it is reparented to the nearest subreaper (conmon, the
        // runc shim) or init.
        drop(child);
        return Ok(pid);
    }
    let status = child.wait().ok();
    match answer.strip_prefix("error ") {
        Some(msg) => Err(MonitorError::CreateFailed(msg.trim_end().to_owned())),
        None => Err(MonitorError::MonitorDied(
            status.map_or_else(|| "unknown status".into(), |s| s.to_string()),
            store.root().to_path_buf(),
        )),
    }
}

/// Writes `pid` to `path` atomically, as runc does (no newline).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), MonitorError> {
    let err = |source| MonitorError::PidFile {
        path: path.to_path_buf(),
        source,
    };
    let path = crate::cli::absolute(path);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".vmrun-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, pid.to_string()).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// Removes what a dead monitor may have left: mounts under the sandbox directory (deepest
/// first, lazily detached) and the directory itself. Its processes died with the monitor
/// (`PR_SET_PDEATHSIG`).
pub fn cleanup_leftovers(record: &ContainerRecord) {
    cleanup_sandbox_dir(record);
    if let Some(cg) = &record.host_cgroup {
        cg.remove();
    }
}

fn cleanup_sandbox_dir(record: &ContainerRecord) {
    let Some(dir) = record
        .sandbox
        .as_ref()
        .and_then(|s| s.get("dir"))
        .and_then(|d| d.as_str())
        .map(PathBuf::from)
    else {
        return;
    };
    if !dir.exists() {
        return;
    }
    for m in crate::virtiofs::mounts_under(&dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            log::warn!("cannot unmount {}: {e}", m.display());
        }
    }
    if crate::virtiofs::mounts_under(&dir).is_empty() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            log::warn!("cannot remove {}: {e}", dir.display());
        }
    } else {
        log::error!("{} still has mounts; left in place", dir.display());
    }
}

/// Waits until the record's monitor process is gone, at most `timeout`.
pub fn wait_monitor_gone(record: &ContainerRecord, timeout: Duration) -> bool {
    let (Some(pid), Some(start)) = (record.pid, record.pid_start_time) else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    while process_alive(pid, start) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// SIGKILLs the record's monitor if it is still the same process.
pub fn kill_monitor(record: &ContainerRecord) {
    if let (Some(pid), Some(start)) = (record.pid, record.pid_start_time) {
        if process_alive(pid, start) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Entry point of the hidden `vmrun monitor` subcommand; returns the exit status.
pub fn main(g: &GlobalOpts, args: &MonitorArgs) -> i32 {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor number; no memory is involved.
    let valid = unsafe { libc::fcntl(args.ready_fd, libc::F_GETFD) } >= 0;
    let ready = if valid && args.ready_fd > 2 {
        // SAFETY: `create` set this descriptor up for us (dup2 onto it before exec); it is open
        // (checked above) and nothing else in this process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(args.ready_fd) };
        // Do not leak it into the hypervisor or daemons: `create` waits for its EOF.
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        Some(fd)
    } else {
        None
    };
    let report = |ready: Option<OwnedFd>, msg: &str| {
        if let Some(fd) = ready {
            use std::io::Write;
            let _ = std::fs::File::from(fd).write_all(msg.as_bytes());
        }
    };
    let store = match StateStore::open(&g.root) {
        Ok(s) => s,
        Err(e) => {
            report(ready, &format!("error {}", chain(&e)));
            return 1;
        }
    };
    let log_path = store.dir(&args.id).join(MONITOR_LOG);
    let _ = crate::cli::log::init(crate::cli::log::Target::File(&log_path), g.log_format, true);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(ready, &format!("error cannot start the async runtime: {e}"));
            return 1;
        }
    };
    let opts = MonitorOptions {
        id: args.id.clone(),
        bundle_dir: args.bundle.clone(),
        console_socket: args.console_socket.clone(),
        foreground: false,
        autostart: false,
        systemd_cgroup: g.uses_systemd_cgroup(),
    };
    let mut timings = Timings::new();
    let code = rt.block_on(async {
        let mut ready = ready;
        let result = run_monitor(&store, opts, &mut timings, |r| {
            let msg = match r {
                Ok(()) => "ok\n".to_owned(),
                Err(e) => format!("error {}\n", chain(e)),
            };
            report(ready.take(), &msg);
        })
        .await;
        match result {
            Ok(code) => code,
            Err(e) => {
                log::error!("container {}: {}", args.id, chain(&e));
                report(ready.take(), &format!("error {}\n", chain(&e)));
                1
            }
        }
    });
    // Blocking stdio reads (fd 0) never end by themselves; do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(100));
    timings.report(&args.id);
    code
}

/// `a: b: c` from an error and its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// `run` in the foreground: the calling process is the monitor; returns the exit status.
pub fn run_foreground(
    store: &StateStore,
    args: &CreateArgs,
    bundle: &Bundle,
    keep: bool,
    systemd_cgroup: bool,
) -> Result<i32, MonitorError> {
    let mut timings = Timings::new();
    let t = Instant::now();
    let root = crate::cli::absolute(store.root());
    drop(store.create(&new_record(&args.id, bundle, &root))?);
    timings.record("monitor.state_create", StepKind::Host, t);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("cannot start the async runtime"))?;
    let opts = MonitorOptions {
        id: args.id.clone(),
        bundle_dir: bundle.dir.clone(),
        console_socket: args.console_socket.clone(),
        foreground: true,
        autostart: true,
        systemd_cgroup,
    };
    let pid_file = args.pid_file.clone();
    let result = rt.block_on(run_monitor(store, opts, &mut timings, |r| {
        if let (Ok(()), Some(p)) = (r, &pid_file) {
            let _ = write_pid_file(p, i32::try_from(std::process::id()).unwrap_or(0));
        }
    }));
    let t = Instant::now();
    rt.shutdown_timeout(Duration::from_millis(100));
    let remove = result.is_err() || !keep;
    if remove {
        if let Ok(lock) = store.lock(&args.id) {
            if let Ok(r) = lock.load() {
                cleanup_leftovers(&r);
            }
            let _ = store.remove(lock);
        }
    }
    timings.record("monitor.state_remove", StepKind::Host, t);
    timings.report(&args.id);
    result
}

struct MonitorOptions {
    id: String,
    bundle_dir: PathBuf,
    console_socket: Option<PathBuf>,
    /// Relay the caller's terminal (foreground `run`) instead of a console socket.
    foreground: bool,
    autostart: bool,
    /// `linux.cgroupsPath` is systemd's `slice:prefix:name`.
    systemd_cgroup: bool,
}

type Reply = oneshot::Sender<Response>;

/// Updates the record under the lock.
fn update_record(
    store: &StateStore,
    id: &str,
    f: impl FnOnce(&mut ContainerRecord),
) -> Result<(), StateError> {
    let lock = store.lock(id)?;
    let mut r = lock.load()?;
    f(&mut r);
    lock.save(&r)
}

/// An agent RPC failure as a [`MonitorError`], with the agent's own message.
pub fn rpc_error(method: &'static str, e: &ttrpc::Error) -> MonitorError {
    let message = match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_owned(),
        other => other.to_string(),
    };
    MonitorError::Agent { method, message }
}

/// Boots the sandbox and creates the container; the returned sandbox is torn down on drop.
async fn create_container(
    id: &str,
    bundle: &Bundle,
    root: &Path,
    console_socket: Option<&Path>,
    foreground: bool,
    (store, systemd_cgroup): (&StateStore, bool),
    timings: &mut Timings,
) -> Result<(Sandbox, Relays), MonitorError> {
    let t = Instant::now();
    let host = Config::load_default()?;
    let mut settings = host.sandbox_settings(&bundle.summary.annotations)?;
    crate::cgroups::size_vm(&mut settings, &bundle.spec, &bundle.summary.annotations);
    if host.host_cgroup.enabled {
        join_host_cgroup(store, id, bundle, systemd_cgroup, &settings, &host)?;
    }
    let (sb_root, sb_id) = sandbox_location(root, id);
    let mut cfg = SandboxConfig::new(&sb_id, &sb_root, &host);
    cfg.settings = settings;
    cfg.shared_fs = true;
    cfg.hostname = bundle.summary.hostname.clone().filter(|h| !h.is_empty());
    cfg.netns = bundle.network_namespace_path();
    let t0 = timings.record("monitor.config_load", StepKind::Host, t);
    let sandbox = Sandbox::start(cfg).await?;
    timings.extend(sandbox.timings());
    let t = Instant::now();
    log::info!(
        "container {id}: sandbox {} ready in {:?}",
        sandbox.paths().dir.display(),
        t0.elapsed()
    );
    let share = sandbox.share().ok_or_else(|| MonitorError::Agent {
        method: "CreateSandbox",
        message: "the sandbox has no shared file system".into(),
    })?;
    let guest_root = share.mount_rootfs(id, &bundle.rootfs, bundle.readonly())?;
    let mut spec = bundle.guest_spec(id);
    if let Some(root) = spec.get_mut("root").and_then(|r| r.as_object_mut()) {
        root.insert(
            "path".into(),
            serde_json::Value::String(guest_root.to_string_lossy().into_owned()),
        );
    }
    share_bind_mounts(share, id, &bundle.dir, &mut spec)?;
    let terminal = bundle.terminal();

    // Host side of the terminal first: the console socket gets its pty master even before the
    // container exists (as with runc, whose create sends it before returning).
    let host_pty = match (terminal, console_socket) {
        (true, Some(cs)) => {
            let size = bundle
                .process()
                .and_then(|p| p.console_size)
                .map(|s| (s.height, s.width));
            Some(HostPty::create_and_send(cs, size, !foreground)?)
        }
        _ => None,
    };
    let t = timings.record("monitor.rootfs_share_and_spec", StepKind::Host, t);
    let streams = Streams::open(&sandbox, id, None, terminal).await?;
    let t = timings.record("monitor.stdio_streams_open", StepKind::Host, t);
    let agent = sandbox.agent()?;
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = id.to_owned();
    req.oci_spec = serde_json::to_vec(&spec).map_err(|e| MonitorError::Agent {
        method: "CreateContainer",
        message: format!("cannot encode the spec: {e}"),
    })?;
    req.terminal = terminal;
    let mut s = agent::StdioStreams::new();
    s.stdin = !terminal;
    s.stdout = !terminal;
    s.stderr = !terminal;
    req.stdio = protobuf::MessageField::some(s);
    let resp = agent
        .service()
        .create_container(slow_context(), &req)
        .await
        .map_err(|e| rpc_error("CreateContainer", &e))?;
    let t = timings.record("container.create_rpc", StepKind::Guest, t);
    log::info!(
        "container {id}: created, guest pid {}, {:?} after start",
        resp.pid,
        t0.elapsed()
    );
    let relays = match (streams, host_pty) {
        (Streams::Tty(tty), Some(pty)) => {
            let size = stdio::winsize(pty.slave.as_fd());
            let relays = stdio::relay_pty(tty, pty.slave).map_err(io_err("host pty"))?;
            if let Some((rows, cols)) = size {
                resize(agent, id, None, rows, cols).await;
            }
            relays
        }
        (streams, _) => {
            let tty = matches!(streams, Streams::Tty(_));
            let relays = stdio::relay_inherited(streams, foreground);
            if tty {
                if let Some((rows, cols)) = stdio::winsize(std::io::stdin().as_fd()) {
                    resize(agent, id, None, rows, cols).await;
                }
            }
            relays
        }
    };
    timings.record("monitor.stdio_relays", StepKind::Host, t);
    Ok((sandbox, relays))
}

/// Creates the spec's host cgroup (recorded in the state first, so that `delete` removes it
/// whatever happens next), sets its limits and moves this process into it: the hypervisor and
/// daemons it starts next inherit it.
fn join_host_cgroup(
    store: &StateStore,
    id: &str,
    bundle: &Bundle,
    systemd: bool,
    settings: &crate::config::SandboxSettings,
    host: &Config,
) -> Result<(), MonitorError> {
    let path = bundle.spec["linux"]["cgroupsPath"].as_str().unwrap_or("");
    let Some(path) = crate::cgroups::parse_path(path, systemd)? else {
        return Ok(());
    };
    let cg = crate::cgroups::HostCgroup::create(
        &path,
        settings.memory_mib,
        host.host_cgroup.overhead_mib,
    )?;
    if let Err(e) = update_record(store, id, |r| r.host_cgroup = Some(cg.clone())) {
        cg.remove();
        return Err(e.into());
    }
    cg.apply(&cg.limits(crate::cgroups::cpu_shares(
        &bundle.spec["linux"]["resources"],
    )))?;
    cg.join(std::process::id())?;
    log::info!(
        "container {id}: host cgroup {:?}, guest RAM {} MiB + {} MiB overhead",
        cg.dirs.iter().map(|d| &d.path).collect::<Vec<_>>(),
        cg.guest_memory_mib,
        cg.overhead_mib
    );
    Ok(())
}

/// Bind mounts name host paths that the guest cannot see: each source is bind-mounted into the
/// share (`<share>/<id>/volumes/m<index>`, read-only with `ro`) and the mount's `source` is
/// rewritten to the guest path. Relative sources are relative to the bundle (as runc).
fn share_bind_mounts(
    share: &crate::virtiofs::SharedDir,
    id: &str,
    bundle_dir: &Path,
    spec: &mut serde_json::Value,
) -> Result<(), MonitorError> {
    let Some(mounts) = spec.get_mut("mounts").and_then(|m| m.as_array_mut()) else {
        return Ok(());
    };
    for (i, m) in mounts.iter_mut().enumerate() {
        let options: Vec<&str> = m
            .get("options")
            .and_then(|o| o.as_array())
            .map(|o| o.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let is_bind = m.get("type").and_then(|t| t.as_str()) == Some("bind")
            || options.iter().any(|o| *o == "bind" || *o == "rbind");
        if !is_bind {
            continue;
        }
        let readonly = options.contains(&"ro");
        let Some(source) = m.get("source").and_then(|s| s.as_str()) else {
            continue;
        };
        let source = bundle_dir.join(source);
        let guest = share.mount_volume(id, &format!("m{i}"), &source, readonly)?;
        m["source"] = serde_json::Value::String(guest.to_string_lossy().into_owned());
    }
    Ok(())
}

/// ResizeTty of a container's init process (`exec_id` None) or of an exec'd process.
pub async fn resize(agent: &AgentClient, id: &str, exec_id: Option<&str>, rows: u16, cols: u16) {
    let mut req = agent::ResizeTtyRequest::new();
    req.container_id = id.to_owned();
    req.exec_id = exec_id.unwrap_or_default().to_owned();
    req.rows = u32::from(rows);
    req.cols = u32::from(cols);
    if let Err(e) = agent.service().resize_tty(agent.context(), &req).await {
        log::debug!("container {id}: ResizeTty: {}", rpc_error("ResizeTty", &e));
    }
}

async fn signal_container(
    agent: &AgentClient,
    id: &str,
    signal: u32,
    all: bool,
) -> Result<(), MonitorError> {
    let mut req = agent::SignalProcessRequest::new();
    req.container_id = id.to_owned();
    req.signal = signal;
    req.all = all;
    agent
        .service()
        .signal_process(agent.context(), &req)
        .await
        .map(|_| ())
        .map_err(|e| rpc_error("SignalProcess", &e))
}

async fn start_container(agent: &AgentClient, id: &str) -> Result<(), MonitorError> {
    let mut req = agent::ContainerRequest::new();
    req.container_id = id.to_owned();
    agent
        .service()
        .start_container(slow_context(), &req)
        .await
        .map(|_| ())
        .map_err(|e| rpc_error("StartContainer", &e))
}

/// Serves the control socket: each connection's request goes to the main loop.
async fn serve_control(listener: UnixListener, tx: mpsc::Sender<(Request, Reply)>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = conn.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_REQUEST));
            let resp = match reader.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let (rtx, rrx) = oneshot::channel();
                        if tx.send((req, rtx)).await.is_err() {
                            refuse("the container is shutting down")
                        } else {
                            rrx.await
                                .unwrap_or_else(|_| refuse("the container is shutting down"))
                        }
                    }
                    Err(e) => refuse(&format!("bad request: {e}")),
                },
                Err(e) => refuse(&format!("bad request: {e}")),
            };
            if let Ok(mut text) = serde_json::to_string(&resp) {
                text.push('\n');
                let _ = wr.write_all(text.as_bytes()).await;
            }
        });
    }
}

fn refuse(msg: &str) -> Response {
    Response {
        ok: false,
        error: Some(msg.to_owned()),
        pids: None,
    }
}

fn ok() -> Response {
    Response {
        ok: true,
        error: None,
        pids: None,
    }
}

async fn container_rpc(
    agent: &AgentClient,
    id: &str,
    method: &'static str,
) -> Result<Option<Vec<u32>>, MonitorError> {
    let mut req = agent::ContainerRequest::new();
    req.container_id = id.to_owned();
    let svc = agent.service();
    let ctx = agent.context();
    let r = match method {
        "PauseContainer" => svc.pause_container(ctx, &req).await.map(|_| None),
        "ResumeContainer" => svc.resume_container(ctx, &req).await.map(|_| None),
        _ => svc.list_processes(ctx, &req).await.map(|r| Some(r.pids)),
    };
    r.map_err(|e| rpc_error(method, &e))
}

/// The monitor's whole life; `on_created` is called once with the result of create (the
/// detached monitor reports it to `create`). Returns the exit status.
async fn run_monitor(
    store: &StateStore,
    opts: MonitorOptions,
    timings: &mut Timings,
    on_created: impl FnOnce(&Result<(), MonitorError>),
) -> Result<i32, MonitorError> {
    let t = Instant::now();
    let id = opts.id.clone();
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let my_start = process_start_time(me);
    update_record(store, &id, |r| {
        r.pid = Some(me);
        r.pid_start_time = my_start;
    })?;
    // Signals are caught from here on, so that none is lost before the container exists.
    let (sig_tx, mut sig_rx) = mpsc::channel::<i32>(16);
    for kind in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        let mut s =
            signal(SignalKind::from_raw(kind)).map_err(io_err("cannot install signal handlers"))?;
        let tx = sig_tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(kind).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(sig_tx);
    let mut winch = signal(SignalKind::window_change()).map_err(io_err("SIGWINCH handler"))?;

    let root = crate::cli::absolute(store.root());
    let created = async {
        let bundle =
            Bundle::load(&opts.bundle_dir).map_err(|e| MonitorError::CreateFailed(chain(&e)))?;
        timings.record("monitor.setup_and_bundle_load", StepKind::Host, t);
        let (sandbox, relays) = create_container(
            &id,
            &bundle,
            &root,
            opts.console_socket.as_deref(),
            opts.foreground,
            (store, opts.systemd_cgroup),
            timings,
        )
        .await?;
        let t = Instant::now();
        let dir = std::fs::File::open(store.dir(&id))
            .map_err(io_err("cannot open the state directory"))?;
        let listener = UnixListener::bind(short_socket_path(&dir))
            .map_err(io_err("cannot bind the control socket"))?;
        drop(dir);
        update_record(store, &id, |r| r.status = Status::Created)?;
        timings.record("monitor.control_socket_and_record", StepKind::Host, t);
        Ok((sandbox, relays, listener, bundle))
    }
    .await;
    let (mut sandbox, relays, listener, bundle) = match created {
        Ok(v) => {
            on_created(&Ok(()));
            v
        }
        Err(e) => {
            on_created(&Err(MonitorError::CreateFailed(chain(&e))));
            return Err(e);
        }
    };
    let terminal_fd_is_stdin = bundle.terminal() && opts.console_socket.is_none();

    let (tx, mut rx) = mpsc::channel::<(Request, Reply)>(8);
    let control = tokio::spawn(serve_control(listener, tx));
    let agent = sandbox.agent()?.clone();

    // Wait for the init process in its own task (a long poll without timeout).
    let wait_agent = agent.clone();
    let wait_id = id.clone();
    let mut waiter = tokio::spawn(async move {
        let mut req = agent::WaitProcessRequest::new();
        req.container_id = wait_id;
        wait_agent
            .service()
            .wait_process(ttrpc::context::Context::default(), &req)
            .await
            .map(|r| r.status)
            .map_err(|e| rpc_error("WaitProcess", &e))
    });

    let mut status = Status::Created;
    let mut t = Instant::now();
    if opts.autostart {
        start_container(&agent, &id).await?;
        t = timings.record("container.start_rpc", StepKind::Guest, t);
        update_record(store, &id, |r| r.status = Status::Running)?;
        status = Status::Running;
        t = timings.record("monitor.record_running", StepKind::Host, t);
    }

    let exit_code: i32 = loop {
        tokio::select! {
            res = &mut waiter => {
                break match res {
                    Ok(Ok(code)) => code,
                    Ok(Err(e)) => {
                        log::error!("container {id}: {e}");
                        match sandbox.exit_status() {
                            Some(exit) => {
                                log::error!("container {id}: the VM exited: {exit}");
                                VM_DIED_STATUS
                            }
                            None => VM_DIED_STATUS,
                        }
                    }
                    Err(_) => VM_DIED_STATUS,
                };
            }
            report = sandbox.wait_exit() => {
                log::error!("container {id}: the VM exited under the container: {report}");
                break VM_DIED_STATUS;
            }
            Some(n) = sig_rx.recv() => {
                log::debug!("container {id}: forwarding signal {n}");
                let n = u32::try_from(n).unwrap_or(15);
                if let Err(e) = signal_container(&agent, &id, n, false).await {
                    log::warn!("container {id}: cannot forward signal {n}: {e}");
                }
            }
            _ = winch.recv() => {
                let size = if terminal_fd_is_stdin {
                    stdio::winsize(std::io::stdin().as_fd())
                } else {
                    // The monitor's controlling terminal is the host pty's slave.
                    std::fs::File::open("/dev/tty").ok().and_then(|f| stdio::winsize(f.as_fd()))
                };
                if let Some((rows, cols)) = size {
                    resize(&agent, &id, None, rows, cols).await;
                }
            }
            Some((req, reply)) = rx.recv() => {
                match req {
                    Request::Start => {
                        if status != Status::Created {
                            let _ = reply.send(refuse(&format!("container {id:?} is {status}, not created")));
                            continue;
                        }
                        match start_container(&agent, &id).await {
                            Ok(()) => {
                                status = Status::Running;
                                let saved = update_record(store, &id, |r| r.status = Status::Running);
                                let _ = reply.send(match saved {
                                    Ok(()) => ok(),
                                    Err(e) => refuse(&chain(&e)),
                                });
                            }
                            Err(e) => {
                                let _ = reply.send(refuse(&chain(&e)));
                            }
                        }
                    }
                    Request::Kill { signal, all } => {
                        let r = signal_container(&agent, &id, signal, all).await;
                        let _ = reply.send(match r {
                            Ok(()) => ok(),
                            Err(e) => refuse(&chain(&e)),
                        });
                    }
                    Request::Pause | Request::Resume => {
                        let (want, next, method) = if req == Request::Pause {
                            (Status::Running, Status::Paused, "PauseContainer")
                        } else {
                            (Status::Paused, Status::Running, "ResumeContainer")
                        };
                        if status != want {
                            let _ = reply.send(refuse(&format!("container {id:?} is {status}, not {want}")));
                            continue;
                        }
                        let r = match container_rpc(&agent, &id, method).await {
                            Ok(_) => update_record(store, &id, |r| r.status = next)
                                .map_err(MonitorError::from),
                            Err(e) => Err(e),
                        };
                        let _ = reply.send(match r {
                            Ok(()) => {
                                status = next;
                                ok()
                            }
                            Err(e) => refuse(&chain(&e)),
                        });
                    }
                    Request::Ps => {
                        let _ = reply.send(match container_rpc(&agent, &id, "ListProcesses").await {
                            Ok(pids) => Response { pids, ..ok() },
                            Err(e) => refuse(&chain(&e)),
                        });
                    }
                    Request::Delete => {
                        let _ = reply.send(ok());
                        break KILLED_STATUS;
                    }
                }
            }
        }
    };
    // With `create` + `start` this includes the wait for `start`.
    let t = timings.record("container.run_until_exit", StepKind::Guest, t);
    control.abort();
    let _ = std::fs::remove_file(store.dir(&id).join(CONTROL_SOCKET));
    if !waiter.is_finished() {
        waiter.abort();
    } else if exit_code != KILLED_STATUS {
        // The process exited: its output is flushed by the agent before it closes the streams.
        relays.drain(DRAIN_TIMEOUT).await;
    }
    // The container is stopped from here on (`state`, `delete`), while the VM goes down.
    update_record(store, &id, |r| {
        r.status = Status::Stopped;
        r.exit_status = Some(exit_code);
    })?;
    let t = timings.record("monitor.drain_and_record_stopped", StepKind::Host, t);
    let exit = if sandbox.exit_status().is_some() {
        sandbox.kill()
    } else {
        match sandbox.shutdown(SHUTDOWN_GRACE).await {
            Ok(report) => report,
            Err(e) => {
                log::warn!("container {id}: shutdown: {}", chain(&e));
                sandbox.kill()
            }
        }
    };
    timings.record("sandbox.shutdown", StepKind::Host, t);
    log::info!("container {id}: exited with {exit_code}; VM: {exit}");
    Ok(exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for (req, text) in [
            (Request::Start, r#"{"op":"start"}"#),
            (
                Request::Kill {
                    signal: 15,
                    all: true,
                },
                r#"{"op":"kill","signal":15,"all":true}"#,
            ),
            (Request::Delete, r#"{"op":"delete"}"#),
        ] {
            assert_eq!(serde_json::to_string(&req).unwrap(), text);
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), req);
        }
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
        assert_eq!(serde_json::to_string(&ok()).unwrap(), r#"{"ok":true}"#);
    }

    #[test]
    fn sandbox_paths_are_short_and_distinct() {
        let root = Path::new("/run/containerd/runc/k8s.io");
        let long_id = "a".repeat(64);
        let (sb_root, sb_id) = sandbox_location(root, &long_id);
        assert_eq!(sb_id.len(), 16);
        let longest = sb_root.join(&sb_id).join("vhost-vsock.sock");
        assert!(longest.as_os_str().len() < 100, "{}", longest.display());
        assert_ne!(sandbox_location(root, "a").1, sandbox_location(root, "b").1);
        assert!(crate::state::validate_id(SANDBOX_DIR).is_err());
    }

    #[test]
    fn pid_file_is_written_atomically() {
        let dir = std::env::temp_dir().join(format!("vmrun-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pid");
        write_pid_file(&p, 1234).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1234");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn control_request_to_missing_monitor_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("vmrun-ctl-{}", std::process::id()));
        let store = StateStore::open(&dir).unwrap();
        let e = request(&store, "nobody", &Request::Start).unwrap_err();
        assert!(matches!(e, MonitorError::Connect { .. }), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
