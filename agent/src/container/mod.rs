// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The agent's containers: registry, lifecycle and processes.
//!
//! Semantics follow runc (docs/protocol.md): CreateContainer leaves the init process waiting
//! before exec; StartContainer lets it exec; WaitProcess reports 128+signal for a killed
//! process; RemoveContainer refuses a running container unless forced. libcontainer work runs
//! in helper processes through [`engine::Engine`]; signals, cgroup reads, the freezer and
//! waits are done here directly.
//!
//! Threading: the methods are async and run on the agent's runtime; the registry lock is never
//! held across an await of a helper.

pub mod cgroup;
pub mod engine;
pub mod helper;
pub mod stdio;

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::sync::{watch, Notify};
use vmrun_protocol::{agent, is_valid_id, StdioStream};

use self::engine::{Engine, ProcessIo};
use self::helper::HelperRequest;
use self::stdio::StreamPark;
use crate::reaper::Reaper;

/// A container call failed; maps onto a ttrpc status code.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// Bad input from the host.
    #[error("{0}")]
    Invalid(String),
    /// Unknown container or process.
    #[error("{0}")]
    NotFound(String),
    /// The id is taken.
    #[error("{0}")]
    Exists(String),
    /// The call does not fit the current state.
    #[error("{0}")]
    State(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<ContainerError> for ttrpc::Error {
    fn from(e: ContainerError) -> Self {
        let code = match &e {
            ContainerError::Invalid(_) => ttrpc::Code::INVALID_ARGUMENT,
            ContainerError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            ContainerError::Exists(_) => ttrpc::Code::ALREADY_EXISTS,
            ContainerError::State(_) => ttrpc::Code::FAILED_PRECONDITION,
            ContainerError::Internal(_) => ttrpc::Code::INTERNAL,
        };
        crate::server::status(code, e.to_string())
    }
}

type Result<T> = std::result::Result<T, ContainerError>;

/// Exit of a process: runc-style status and wall-clock time in ns since the epoch.
pub type Exit = (i32, u64);

/// A process the agent tracks.
#[derive(Debug)]
pub struct Process {
    /// Pid in the guest's root pid namespace.
    pub pid: i32,
    exit: watch::Receiver<Option<Exit>>,
    stdin: Mutex<Option<OwnedFd>>,
    tty_master: Mutex<Option<OwnedFd>>,
}

impl Process {
    fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.clone();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                return (-1, 0);
            }
        }
    }
}

#[derive(Debug)]
struct Container {
    id: String,
    bundle: PathBuf,
    cgroup_path: PathBuf,
    init: Arc<Process>,
    started: AtomicBool,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    oom_kills: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where things live in the guest.
#[derive(Debug, Clone)]
pub struct Paths {
    /// libcontainer state root.
    pub state_root: PathBuf,
    /// Bundles written by the agent (`<bundles>/<id>/config.json`).
    pub bundles: PathBuf,
    /// Console sockets.
    pub consoles: PathBuf,
    /// cgroup v2 mount.
    pub cgroup_root: PathBuf,
}

impl Paths {
    /// The layout under `run` (normally `/run/vmrun`).
    pub fn under(run: &Path, cgroup_root: &Path) -> Self {
        Self {
            state_root: run.join("containers"),
            bundles: run.join("bundles"),
            consoles: run.join("console"),
            cgroup_root: cgroup_root.to_owned(),
        }
    }
}

/// Queued OOM events (bounded).
const MAX_OOM_EVENTS: usize = 256;

/// Every container of the sandbox.
#[derive(Debug)]
pub struct Containers {
    engine: Arc<dyn Engine>,
    reaper: Reaper,
    /// Parked stdio streams.
    pub park: Arc<StreamPark>,
    paths: Paths,
    stdio_timeout: Duration,
    seccomp_ok: bool,
    map: Mutex<HashMap<String, Arc<Container>>>,
    reserved: Mutex<HashSet<String>>,
    oom_queue: Mutex<VecDeque<String>>,
    oom_arrived: Notify,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> ContainerError {
    ContainerError::Internal(format!("{what} {}: {e}", path.display()))
}

/// Ids are validated with [`is_valid_id`] before they become paths.
fn check_id(what: &str, id: &str) -> Result<()> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ContainerError::Invalid(format!(
            "invalid {what} {id:?}: must be 1 to 1024 characters of [A-Za-z0-9_.+-]"
        )))
    }
}

/// Applies the agent's edits to a received OCI spec (see docs/protocol.md): terminal flag,
/// hooks dropped (the host runs them), a cgroup path below `/vmrun`, HOME and supplementary
/// groups from the rootfs's passwd/group files. Returns the edited spec and its cgroup path.
pub fn prepare_spec(
    id: &str,
    raw: &[u8],
    terminal: bool,
    seccomp_ok: bool,
) -> Result<(Value, PathBuf)> {
    let mut spec: Value = serde_json::from_slice(raw)
        .map_err(|e| ContainerError::Invalid(format!("OCI spec is not valid JSON: {e}")))?;
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| ContainerError::Invalid("OCI spec is not a JSON object".into()))?;
    obj.remove("hooks");
    let root = obj
        .get("root")
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
        .ok_or_else(|| ContainerError::Invalid("OCI spec has no root.path".into()))?
        .to_owned();
    let rootfs = PathBuf::from(&root);
    if !rootfs.is_absolute() {
        return Err(ContainerError::Invalid(format!(
            "root.path {root:?} must be absolute in the guest"
        )));
    }
    if !rootfs.is_dir() {
        return Err(ContainerError::Invalid(format!(
            "rootfs {root} does not exist in the guest"
        )));
    }
    let linux = obj
        .entry("linux")
        .or_insert_with(|| Value::Object(serde_json::Map::new()))
        .as_object_mut()
        .ok_or_else(|| ContainerError::Invalid("linux is not an object".into()))?;
    if linux.get("seccomp").is_some_and(|s| !s.is_null()) && !seccomp_ok {
        return Err(ContainerError::Invalid(
            "the spec has a linux.seccomp section but this guest cannot apply seccomp filters"
                .into(),
        ));
    }
    let rules = device_rules(linux);
    if rules > 0 {
        // Not silent: the agent is built without libcontainer's `cgroupsv2_devices` (it needs
        // static libbpf), so no cgroup device program enforces these rules.
        log::warn!(
            "container {id}: {rules} linux.resources.devices rule(s) NOT enforced (no cgroup v2 \
             device program in this guest); device nodes are limited to linux.devices"
        );
    }
    let cgroup_path = match linux.get("cgroupsPath").and_then(Value::as_str) {
        Some(p) if p.starts_with('/') && !p.contains(':') && !p.split('/').any(|c| c == "..") => {
            PathBuf::from(p)
        }
        _ => PathBuf::from(format!("/vmrun/{id}")),
    };
    linux.insert(
        "cgroupsPath".into(),
        Value::String(cgroup_path.display().to_string()),
    );
    let process = obj
        .get_mut("process")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ContainerError::Invalid("OCI spec has no process".into()))?;
    prepare_process(process, &rootfs, terminal)?;
    Ok((spec, cgroup_path))
}

/// How many `linux.resources.devices` rules a spec's `linux` object has.
fn device_rules(linux: &serde_json::Map<String, Value>) -> usize {
    linux
        .get("resources")
        .and_then(|r| r.get("devices"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// Checks and completes an OCI process object (init or exec).
fn prepare_process(
    process: &mut serde_json::Map<String, Value>,
    rootfs: &Path,
    terminal: bool,
) -> Result<()> {
    let args_ok = process
        .get("args")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
    if !args_ok {
        return Err(ContainerError::Invalid(
            "process.args must be a non-empty list of strings".into(),
        ));
    }
    process.insert("terminal".into(), Value::Bool(terminal));
    // `user` is required by the OCI schema (and by libcontainer's parser); default to root.
    if !process.get("user").is_some_and(Value::is_object) {
        process.insert("user".into(), serde_json::json!({"uid": 0, "gid": 0}));
    }
    if process.get("cwd").and_then(Value::as_str).is_none() {
        process.insert("cwd".into(), Value::String("/".into()));
    }
    let uid = process
        .get("user")
        .and_then(|u| u.get("uid"))
        .and_then(Value::as_u64)
        .and_then(|u| u32::try_from(u).ok())
        .unwrap_or(0);
    let Some(entry) = crate::passwd::lookup_uid(rootfs, uid) else {
        return Ok(());
    };
    let env = process
        .entry("env")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(list) = env.as_array_mut() {
        if !list
            .iter()
            .any(|e| e.as_str().is_some_and(|s| s.starts_with("HOME=")))
        {
            list.push(Value::String(format!("HOME={}", entry.home)));
        }
    }
    let gids = crate::passwd::supplementary_gids(rootfs, &entry.name);
    if !gids.is_empty() {
        let user = process
            .entry("user")
            .or_insert_with(|| serde_json::json!({"uid": 0, "gid": 0}));
        if let Some(u) = user.as_object_mut() {
            let extra = u
                .entry("additionalGids")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(list) = extra.as_array_mut() {
                for g in gids {
                    if !list.iter().any(|v| v.as_u64() == Some(u64::from(g))) {
                        list.push(Value::from(g));
                    }
                }
            }
        }
    }
    Ok(())
}

impl Containers {
    /// Creates the registry; `seccomp_ok` says whether the guest can apply seccomp filters.
    pub fn new(
        engine: Arc<dyn Engine>,
        reaper: Reaper,
        paths: Paths,
        stdio_timeout: Duration,
        seccomp_ok: bool,
    ) -> Self {
        Self {
            engine,
            reaper,
            park: Arc::new(StreamPark::default()),
            paths,
            stdio_timeout,
            seccomp_ok,
            map: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            oom_queue: Mutex::new(VecDeque::new()),
            oom_arrived: Notify::new(),
        }
    }

    /// Whether specs with a seccomp section are accepted.
    pub fn seccomp_ok(&self) -> bool {
        self.seccomp_ok
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.map)
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(format!("container {id:?} does not exist")))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Process>)> {
        let c = self.get(id)?;
        if exec_id.is_empty() {
            let p = c.init.clone();
            return Ok((c, p));
        }
        let p = lock(&c.execs).get(exec_id).cloned().ok_or_else(|| {
            ContainerError::NotFound(format!(
                "process {exec_id:?} of container {id:?} does not exist"
            ))
        })?;
        Ok((c, p))
    }

    /// Starts tracking `pid`: its exit status is recorded when the reaper collects it.
    fn track(
        &self,
        pid: i32,
        since: Instant,
        stdin: Option<OwnedFd>,
        tty_master: Option<OwnedFd>,
    ) -> Arc<Process> {
        let (tx, rx) = watch::channel(None);
        let exited = self.reaper.watch(pid, since);
        let p = Arc::new(Process {
            pid,
            exit: rx,
            stdin: Mutex::new(stdin),
            tty_master: Mutex::new(tty_master),
        });
        let weak = Arc::downgrade(&p);
        tokio::spawn(async move {
            let code = exited
                .await
                .map(crate::reaper::ExitStatus::code)
                .unwrap_or(-1);
            let _ = tx.send(Some((code, now_ns())));
            if let Some(p) = weak.upgrade() {
                lock(&p.stdin).take();
                lock(&p.tty_master).take();
            }
        });
        p
    }

    /// Takes the announced streams of a process from the park (waiting for late ones).
    async fn collect_stdio(
        &self,
        id: &str,
        exec_id: Option<&str>,
        terminal: bool,
        want: Option<&agent::StdioStreams>,
    ) -> Result<(ProcessIo, Option<OwnedFd>, Option<OwnedFd>)> {
        let key = |s| (id.to_owned(), exec_id.map(str::to_owned), s);
        let take = |s: StdioStream| {
            let key = key(s);
            async move {
                self.park
                    .take(&key, self.stdio_timeout)
                    .await
                    .ok_or_else(|| {
                        ContainerError::Invalid(format!(
                        "stdio stream '{} {} {s}' was announced but did not arrive within {} ms",
                        id,
                        exec_id.unwrap_or(vmrun_protocol::INIT_EXEC_ID),
                        self.stdio_timeout.as_millis()
                    ))
                    })
            }
        };
        if terminal {
            let tty = take(StdioStream::Tty).await?;
            return Ok((ProcessIo::default(), None, Some(tty)));
        }
        let mut io = ProcessIo::default();
        let mut stdin_dup = None;
        if let Some(w) = want {
            if w.stdin {
                let fd = take(StdioStream::Stdin).await?;
                stdin_dup = Some(
                    fd.try_clone()
                        .map_err(|e| ContainerError::Internal(e.to_string()))?,
                );
                io.stdin = Some(fd);
            }
            if w.stdout {
                io.stdout = Some(take(StdioStream::Stdout).await?);
            }
            if w.stderr {
                io.stderr = Some(take(StdioStream::Stderr).await?);
            }
        }
        Ok((io, stdin_dup, None))
    }

    /// Runs a Create or Exec through the engine, with a console socket when `tty` is given;
    /// returns the pid and the pty master.
    async fn spawn_process(
        &self,
        req: impl FnOnce(Option<PathBuf>) -> HelperRequest,
        io: ProcessIo,
        console_name: &str,
        tty: bool,
    ) -> Result<(i32, Option<OwnedFd>)> {
        let mut console = None;
        let mut socket_path = None;
        if tty {
            std::fs::create_dir_all(&self.paths.consoles)
                .map_err(|e| io_err("mkdir", &self.paths.consoles, &e))?;
            let path = self.paths.consoles.join(format!("{console_name}.sock"));
            let _ = std::fs::remove_file(&path);
            let listener =
                tokio::net::UnixListener::bind(&path).map_err(|e| io_err("bind", &path, &e))?;
            console = Some(tokio::spawn(
                async move { receive_pty_master(listener).await },
            ));
            socket_path = Some(path);
        }
        let result = self.engine.run(req(socket_path.clone()), io).await;
        if let Some(p) = &socket_path {
            let _ = std::fs::remove_file(p);
        }
        let pid = match result {
            Ok(Some(pid)) => pid,
            Ok(None) => {
                return Err(ContainerError::Internal(
                    "the helper returned no pid".into(),
                ));
            }
            Err(e) => {
                if let Some(t) = console {
                    t.abort();
                }
                return Err(ContainerError::Internal(e.to_string()));
            }
        };
        let master = match console {
            Some(t) => Some(
                tokio::time::timeout(Duration::from_secs(5), t)
                    .await
                    .map_err(|_| {
                        ContainerError::Internal("no pty master on the console socket".into())
                    })?
                    .map_err(|e| ContainerError::Internal(e.to_string()))?
                    .map_err(ContainerError::Internal)?,
            ),
            None => None,
        };
        Ok((pid, master))
    }

    /// CreateContainer.
    pub async fn create(&self, req: agent::CreateContainerRequest) -> Result<u32> {
        let id = req.container_id.clone();
        check_id("container id", &id)?;
        {
            let map = lock(&self.map);
            let mut reserved = lock(&self.reserved);
            if map.contains_key(&id) || !reserved.insert(id.clone()) {
                return Err(ContainerError::Exists(format!(
                    "container {id:?} already exists"
                )));
            }
        }
        let result = self.create_reserved(&req).await;
        lock(&self.reserved).remove(&id);
        if result.is_err() {
            self.park.discard_container(&id);
            let _ = std::fs::remove_dir_all(self.paths.bundles.join(&id));
            let _ = std::fs::remove_dir_all(self.paths.state_root.join(&id));
        }
        result
    }

    async fn create_reserved(&self, req: &agent::CreateContainerRequest) -> Result<u32> {
        let id = req.container_id.as_str();
        let (spec, cgroup_path) = prepare_spec(id, &req.oci_spec, req.terminal, self.seccomp_ok)?;
        let bundle = self.paths.bundles.join(id);
        std::fs::create_dir_all(&bundle).map_err(|e| io_err("mkdir", &bundle, &e))?;
        std::fs::create_dir_all(&self.paths.state_root)
            .map_err(|e| io_err("mkdir", &self.paths.state_root, &e))?;
        let config = bundle.join("config.json");
        let text =
            serde_json::to_vec(&spec).map_err(|e| ContainerError::Internal(e.to_string()))?;
        std::fs::write(&config, text).map_err(|e| io_err("write", &config, &e))?;
        let (io, stdin_dup, tty_stream) = self
            .collect_stdio(id, None, req.terminal, req.stdio.as_ref())
            .await?;
        let since = Instant::now();
        let root = self.paths.state_root.clone();
        let (pid, master) = self
            .spawn_process(
                |console_socket| HelperRequest::Create {
                    root,
                    id: id.to_owned(),
                    bundle: bundle.clone(),
                    console_socket,
                    no_pivot: root_is_initramfs(),
                },
                io,
                id,
                req.terminal,
            )
            .await?;
        let master_dup = self.start_tty_relay(master, tty_stream)?;
        let init = self.track(pid, since, stdin_dup, master_dup);
        let c = Arc::new(Container {
            id: id.to_owned(),
            bundle,
            cgroup_path,
            init,
            started: AtomicBool::new(false),
            execs: Mutex::new(HashMap::new()),
            oom_kills: AtomicU64::new(0),
        });
        lock(&self.map).insert(id.to_owned(), c);
        log::info!("container {id} created, init pid {pid}");
        u32::try_from(pid).map_err(|_| ContainerError::Internal(format!("bad pid {pid}")))
    }

    fn start_tty_relay(
        &self,
        master: Option<OwnedFd>,
        stream: Option<OwnedFd>,
    ) -> Result<Option<OwnedFd>> {
        match (master, stream) {
            (Some(m), Some(s)) => {
                let dup = m
                    .try_clone()
                    .map_err(|e| ContainerError::Internal(e.to_string()))?;
                stdio::relay_tty(m, s)
                    .map_err(|e| ContainerError::Internal(format!("tty relay: {e}")))?;
                Ok(Some(dup))
            }
            _ => Ok(None),
        }
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        if c.init.exited().is_some() {
            return Err(ContainerError::State(format!(
                "container {id:?} has stopped"
            )));
        }
        if c.started.swap(true, Ordering::SeqCst) {
            return Err(ContainerError::State(format!(
                "container {id:?} was already started"
            )));
        }
        let req = HelperRequest::Start {
            root: self.paths.state_root.clone(),
            id: id.to_owned(),
        };
        if let Err(e) = self.engine.run(req, ProcessIo::default()).await {
            c.started.store(false, Ordering::SeqCst);
            return Err(ContainerError::Internal(e.to_string()));
        }
        log::info!("container {id} started");
        Ok(())
    }

    /// ExecProcess.
    pub async fn exec(&self, req: agent::ExecProcessRequest) -> Result<u32> {
        let id = req.container_id.as_str();
        let exec_id = req.exec_id.as_str();
        check_id("exec id", exec_id)?;
        let c = self.get(id)?;
        if !c.started.load(Ordering::SeqCst) || c.init.exited().is_some() {
            return Err(ContainerError::State(format!(
                "container {id:?} is not running"
            )));
        }
        if lock(&c.execs).contains_key(exec_id) {
            return Err(ContainerError::Exists(format!(
                "process {exec_id:?} already exists in {id:?}"
            )));
        }
        let mut process: Value = serde_json::from_slice(&req.process)
            .map_err(|e| ContainerError::Invalid(format!("process is not valid JSON: {e}")))?;
        let rootfs = spec_rootfs(&c.bundle)?;
        let obj = process
            .as_object_mut()
            .ok_or_else(|| ContainerError::Invalid("process is not a JSON object".into()))?;
        prepare_process(obj, &rootfs, req.terminal)?;
        let path = c.bundle.join(format!("exec-{exec_id}.json"));
        let text =
            serde_json::to_vec(&process).map_err(|e| ContainerError::Internal(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| io_err("write", &path, &e))?;
        let (io, stdin_dup, tty_stream) = self
            .collect_stdio(id, Some(exec_id), req.terminal, req.stdio.as_ref())
            .await?;
        let since = Instant::now();
        let root = self.paths.state_root.clone();
        let result = self
            .spawn_process(
                |console_socket| HelperRequest::Exec {
                    root,
                    id: id.to_owned(),
                    process: path.clone(),
                    console_socket,
                },
                io,
                &format!("{id}-{exec_id}"),
                req.terminal,
            )
            .await;
        let _ = std::fs::remove_file(&path);
        let (pid, master) = result.inspect_err(|_| self.park.discard_container(id))?;
        let master_dup = self.start_tty_relay(master, tty_stream)?;
        let p = self.track(pid, since, stdin_dup, master_dup);
        lock(&c.execs).insert(exec_id.to_owned(), p);
        log::info!("container {id}: exec {exec_id} pid {pid}");
        u32::try_from(pid).map_err(|_| ContainerError::Internal(format!("bad pid {pid}")))
    }

    /// SignalProcess.
    pub fn signal(&self, req: &agent::SignalProcessRequest) -> Result<()> {
        let sig = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| ContainerError::Invalid(format!("invalid signal {}", req.signal)))?;
        if req.all {
            let c = self.get(&req.container_id)?;
            let dir = cgroup::dir(&self.paths.cgroup_root, &c.cgroup_path);
            let pids = cgroup::procs(&dir).map_err(|e| ContainerError::Internal(e.to_string()))?;
            for pid in pids {
                if let Ok(pid) = i32::try_from(pid) {
                    // SAFETY: kill(2) with a pid from the container's cgroup and a checked signal.
                    unsafe { libc::kill(pid, sig) };
                }
            }
            return Ok(());
        }
        let (_, p) = self.process(&req.container_id, &req.exec_id)?;
        if p.exited().is_some() {
            return Err(ContainerError::State(
                "the process has already exited".into(),
            ));
        }
        // SAFETY: kill(2) on a pid the agent still tracks (not yet reaped, so not recycled).
        if unsafe { libc::kill(p.pid, sig) } != 0 {
            return Err(ContainerError::Internal(format!(
                "kill {}: {}",
                p.pid,
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// WaitProcess.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exit> {
        let (_, p) = self.process(id, exec_id)?;
        Ok(p.wait().await)
    }

    /// RemoveContainer.
    pub async fn remove(&self, id: &str, force: bool) -> Result<()> {
        let c = self.get(id)?;
        let running = c.init.exited().is_none();
        if running && c.started.load(Ordering::SeqCst) && !force {
            return Err(ContainerError::State(format!(
                "container {id:?} is running: stop it first or use force"
            )));
        }
        if running {
            let dir = cgroup::dir(&self.paths.cgroup_root, &c.cgroup_path);
            let _ = cgroup::set_frozen(&dir, false).await;
            self.signal(&agent::SignalProcessRequest {
                container_id: id.to_owned(),
                signal: 9,
                all: true,
                ..Default::default()
            })?;
            // SAFETY: the init pid is tracked and not yet reaped.
            unsafe { libc::kill(c.init.pid, libc::SIGKILL) };
            if tokio::time::timeout(Duration::from_secs(10), c.init.wait())
                .await
                .is_err()
            {
                return Err(ContainerError::Internal(format!(
                    "container {id:?} did not die after SIGKILL"
                )));
            }
        }
        // An OOM kill just before the removal must not be lost with the cgroup.
        self.poll_oom(&c);
        let req = HelperRequest::Delete {
            root: self.paths.state_root.clone(),
            id: id.to_owned(),
            force: true,
        };
        self.engine
            .run(req, ProcessIo::default())
            .await
            .map_err(|e| ContainerError::Internal(e.to_string()))?;
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.park.discard_container(id);
        lock(&self.map).remove(id);
        log::info!("container {id} removed");
        Ok(())
    }

    /// ListProcesses.
    pub fn list_processes(&self, id: &str) -> Result<Vec<u32>> {
        let c = self.get(id)?;
        cgroup::procs(&cgroup::dir(&self.paths.cgroup_root, &c.cgroup_path))
            .map_err(|e| ContainerError::Internal(e.to_string()))
    }

    /// StatsContainer.
    pub fn stats(&self, id: &str) -> Result<agent::StatsContainerResponse> {
        let c = self.get(id)?;
        cgroup::stats(&cgroup::dir(&self.paths.cgroup_root, &c.cgroup_path))
            .map_err(|e| ContainerError::Internal(e.to_string()))
    }

    /// UpdateContainer.
    pub async fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        let c = self.get(id)?;
        let v: Value = serde_json::from_slice(resources)
            .map_err(|e| ContainerError::Invalid(format!("resources are not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(ContainerError::Invalid(
                "resources must be a JSON object".into(),
            ));
        }
        let path = c.bundle.join("update-resources.json");
        std::fs::write(&path, resources).map_err(|e| io_err("write", &path, &e))?;
        let req = HelperRequest::Update {
            cgroup_path: c.cgroup_path.clone(),
            id: id.to_owned(),
            resources: path.clone(),
        };
        let r = self.engine.run(req, ProcessIo::default()).await;
        let _ = std::fs::remove_file(&path);
        r.map(|_| ())
            .map_err(|e| ContainerError::Invalid(e.to_string()))
    }

    /// PauseContainer / ResumeContainer.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let c = self.get(id)?;
        if c.init.exited().is_some() {
            return Err(ContainerError::State(format!(
                "container {id:?} is not running"
            )));
        }
        cgroup::set_frozen(
            &cgroup::dir(&self.paths.cgroup_root, &c.cgroup_path),
            paused,
        )
        .await
        .map_err(|e| ContainerError::Internal(e.to_string()))
    }

    /// ResizeTty.
    pub fn resize(&self, req: &agent::ResizeTtyRequest) -> Result<()> {
        let (_, p) = self.process(&req.container_id, &req.exec_id)?;
        let guard = lock(&p.tty_master);
        let master = guard.as_ref().ok_or_else(|| {
            ContainerError::State("the process has no terminal (or has exited)".into())
        })?;
        let ws = libc::winsize {
            ws_row: u16::try_from(req.rows)
                .map_err(|_| ContainerError::Invalid("rows out of range".into()))?,
            ws_col: u16::try_from(req.cols)
                .map_err(|_| ContainerError::Invalid("cols out of range".into()))?,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; `master` is an open pty master.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(ContainerError::Internal(format!(
                "TIOCSWINSZ: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// CloseStdin.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let (_, p) = self.process(id, exec_id)?;
        if let Some(fd) = lock(&p.stdin).take() {
            // SAFETY: shutdown(2) on a socket fd we own; the process's copy sees EOF.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        Ok(())
    }

    /// Polls every container's `memory.events` and queues an event per new OOM kill.
    pub async fn watch_oom(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let list: Vec<Arc<Container>> = lock(&self.map).values().cloned().collect();
            for c in list {
                self.poll_oom(&c);
            }
        }
    }

    /// Queues an OOM event if the container's `oom_kill` counter went up since the last look.
    fn poll_oom(&self, c: &Container) {
        let n = cgroup::oom_kills(&cgroup::dir(&self.paths.cgroup_root, &c.cgroup_path));
        let old = c.oom_kills.swap(n, Ordering::SeqCst);
        if n > old {
            log::info!("container {}: OOM kill", c.id);
            let mut q = lock(&self.oom_queue);
            if q.len() < MAX_OOM_EVENTS {
                q.push_back(c.id.clone());
            }
            drop(q);
            self.oom_arrived.notify_waiters();
        }
    }

    /// GetOomEvent: the next queued OOM event, waiting for one.
    pub async fn next_oom(&self) -> String {
        loop {
            let notified = self.oom_arrived.notified();
            if let Some(id) = lock(&self.oom_queue).pop_front() {
                return id;
            }
            notified.await;
        }
    }

    /// Stops every container: SIGTERM to all their processes, SIGKILL after `grace`.
    pub async fn stop_all(&self, grace: Duration) {
        let list: Vec<Arc<Container>> = lock(&self.map).values().cloned().collect();
        for (sig, wait) in [
            (libc::SIGTERM, grace),
            (libc::SIGKILL, Duration::from_secs(5)),
        ] {
            let mut any = false;
            for c in &list {
                if c.init.exited().is_none() {
                    any = true;
                    let dir = cgroup::dir(&self.paths.cgroup_root, &c.cgroup_path);
                    let _ = cgroup::set_frozen(&dir, false).await;
                    for pid in cgroup::procs(&dir).unwrap_or_default() {
                        if let Ok(pid) = i32::try_from(pid) {
                            // SAFETY: kill(2) on pids of the container's cgroup.
                            unsafe { libc::kill(pid, sig) };
                        }
                    }
                    // SAFETY: the init pid is tracked and not yet reaped.
                    unsafe { libc::kill(c.init.pid, sig) };
                }
            }
            if !any {
                return;
            }
            let all = futures_wait(&list);
            let _ = tokio::time::timeout(wait, all).await;
        }
    }
}

async fn futures_wait(list: &[Arc<Container>]) {
    for c in list {
        c.init.wait().await;
    }
}

/// Whether `/` is the initramfs (`rootfs`), from which pivot_root is impossible.
fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut w = l.split(' ');
            w.next();
            w.next() == Some("/") && w.next() == Some("rootfs")
        })
    })
}

fn spec_rootfs(bundle: &Path) -> Result<PathBuf> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| io_err("read", &path, &e))?;
    let v: Value =
        serde_json::from_slice(&text).map_err(|e| ContainerError::Internal(e.to_string()))?;
    v.get("root")
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .ok_or_else(|| ContainerError::Internal("stored spec has no root.path".into()))
}

/// Accepts libcontainer's connection on the console socket and receives the pty master.
async fn receive_pty_master(
    listener: tokio::net::UnixListener,
) -> std::result::Result<OwnedFd, String> {
    let (conn, _) = listener
        .accept()
        .await
        .map_err(|e| format!("console socket accept: {e}"))?;
    let conn = conn.into_std().map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        conn.set_nonblocking(false).map_err(|e| e.to_string())?;
        let mut buf = [0_u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("console socket recvmsg: {e}"))?;
        for c in msg.cmsgs().map_err(|e| e.to_string())? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the fd was just received with SCM_RIGHTS and is owned by nobody else.
                    return Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                }
            }
        }
        Err("console socket message carried no fd".to_owned())
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_rules_are_counted() {
        let linux = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(device_rules(&linux(serde_json::json!({}))), 0);
        assert_eq!(
            device_rules(&linux(serde_json::json!({"resources": {}}))),
            0
        );
        let two = serde_json::json!({"resources": {"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
        ]}});
        assert_eq!(device_rules(&linux(two)), 2);
    }

    fn rootfs() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmrun-spec-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/home/nobody:/bin/false\n",
        )
        .unwrap();
        std::fs::write(dir.join("etc/group"), "users:x:100:nobody\n").unwrap();
        dir
    }

    #[test]
    fn spec_edits() {
        let r = rootfs();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": r},
            "process": {"args": ["sh"], "user": {"uid": 65534, "gid": 65534}, "env": ["PATH=/bin"]},
            "hooks": {"prestart": [{"path": "/bin/true"}]},
            "linux": {"cgroupsPath": "system.slice:docker:abc"}
        });
        let (out, cg) = prepare_spec("c1", spec.to_string().as_bytes(), true, false).unwrap();
        assert_eq!(cg, PathBuf::from("/vmrun/c1"));
        assert!(out.get("hooks").is_none());
        assert_eq!(out["process"]["terminal"], Value::Bool(true));
        assert_eq!(out["process"]["cwd"], "/");
        assert!(out["process"]["env"]
            .as_array()
            .unwrap()
            .contains(&Value::from("HOME=/home/nobody")));
        assert_eq!(
            out["process"]["user"]["additionalGids"],
            serde_json::json!([100])
        );
        assert_eq!(out["linux"]["cgroupsPath"], "/vmrun/c1");
    }

    #[test]
    fn spec_errors() {
        let r = rootfs();
        let bad = |s: Value| {
            prepare_spec("c1", s.to_string().as_bytes(), false, false)
                .unwrap_err()
                .to_string()
        };
        assert!(prepare_spec("c", b"{not json", false, true)
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert!(bad(serde_json::json!({"process": {"args": ["x"]}})).contains("root.path"));
        assert!(bad(
            serde_json::json!({"root": {"path": "/nonexistent/rootfs"}, "process": {"args": ["x"]}})
        )
        .contains("does not exist"));
        assert!(
            bad(serde_json::json!({"root": {"path": r}, "process": {"args": []}}))
                .contains("process.args")
        );
        assert!(bad(serde_json::json!({"root": {"path": r}})).contains("no process"));
        assert!(bad(serde_json::json!({"root": {"path": r}, "process": {"args": ["x"]}, "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}})).contains("seccomp"));
        // With seccomp support the same spec passes, and an absolute cgroup path is kept.
        let ok = serde_json::json!({"root": {"path": r}, "process": {"args": ["x"]}, "linux": {"cgroupsPath": "/pods/p1/c1", "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}});
        let (_, cg) = prepare_spec("c1", ok.to_string().as_bytes(), false, true).unwrap();
        assert_eq!(cg, PathBuf::from("/pods/p1/c1"));
    }

    #[test]
    fn bad_ids_are_refused() {
        for id in ["", "..", "a/b", "a b"] {
            assert!(check_id("container id", id).is_err(), "{id:?}");
        }
        assert!(check_id("container id", "web-1.x_y+z").is_ok());
    }
}
