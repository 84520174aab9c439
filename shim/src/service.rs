// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! The task service (containerd `task.v2.Task`) of one pod's shim.
//!
//! The first Create (the pod's sandbox container, or a lone `ctr run` container) boots the pod's
//! VM; every container of the pod is then created in it by the agent. Each process (a
//! container's init or an exec'd process) has a waiter task blocked in the agent's
//! WaitProcess: when it returns, the output is drained into containerd's FIFOs, the exit is
//! recorded and `/tasks/exit` is published. When the VM dies, every process still running gets
//! exit status 255 and its exit event, so that Wait returns. Shutdown with no container left
//! stops the VM and ends the shim.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::types::task::Status;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use ttrpc::{Code, Error as TtrpcError};
use vmrun_protocol::{agent, StdioStream};
use vmrun_runtime::agent_client::AgentClient;
use vmrun_runtime::config::Config;
use vmrun_runtime::monitor::chain;
use vmrun_runtime::sandbox::{Sandbox, SandboxConfig};
use vmrun_runtime::virtiofs::SharedDir;

use crate::cleanup::{unmount_all, ProcessRef, Record};
use crate::io::{relay, Fifos, GuestStreams, Relays};
use crate::pod::{self, Role};

type TtrpcResult<T> = Result<T, TtrpcError>;

/// Exit status reported for processes that the VM took down with it.
const VM_GONE_STATUS: u32 = 255;
/// How long output may take to drain after a process exits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Grace period of the VM's shutdown when the last container is gone.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Long agent calls (create, start, exec) get this deadline.
const SLOW_RPC: Duration = Duration::from_secs(120);

fn status_err(code: Code, msg: impl Into<String>) -> TtrpcError {
    TtrpcError::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// An agent error, keeping the agent's status code (NOT_FOUND stays NOT_FOUND for containerd).
fn agent_err(method: &str, e: TtrpcError) -> TtrpcError {
    match e {
        TtrpcError::RpcStatus(s) => status_err(s.code(), format!("{method}: {}", s.message())),
        other => status_err(Code::UNAVAILABLE, format!("{method}: {other}")),
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> TtrpcError {
    status_err(Code::INTERNAL, format!("{what}: {e}"))
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    ts
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    timestamp(SystemTime::now())
}

fn slow_ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(SLOW_RPC.as_nanos()).unwrap_or(i64::MAX))
}

/// The agent's request naming container `id`.
fn container_request(id: &str) -> agent::ContainerRequest {
    agent::ContainerRequest {
        container_id: id.to_owned(),
        ..Default::default()
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy)]
struct Exit {
    status: u32,
    at: SystemTime,
}

/// Life-cycle state of a process, as containerd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PState {
    Created,
    Running,
    Paused,
    Stopped,
}

/// One process: a container's init (`exec_id` empty) or an exec'd process.
#[derive(Debug)]
struct Proc {
    container_id: String,
    exec_id: String,
    fifos: Fifos,
    /// The OCI process JSON of an exec'd process (until it starts).
    exec_spec: Option<Vec<u8>>,
    pid: AtomicU32,
    state: Mutex<PState>,
    exit_tx: watch::Sender<Option<Exit>>,
    relays: tokio::sync::Mutex<Option<Relays>>,
}

impl Proc {
    fn new(container_id: &str, exec_id: &str, fifos: Fifos, exec_spec: Option<Vec<u8>>) -> Self {
        Self {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            fifos,
            exec_spec,
            pid: AtomicU32::new(0),
            state: Mutex::new(PState::Created),
            exit_tx: watch::channel(None).0,
            relays: tokio::sync::Mutex::new(None),
        }
    }

    fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    fn state(&self) -> PState {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_state(&self, s: PState) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *st != PState::Stopped {
            *st = s;
        }
    }

    /// The agent's name of the process's exec id (None for init).
    fn agent_exec_id(&self) -> Option<&str> {
        (!self.exec_id.is_empty()).then_some(self.exec_id.as_str())
    }
}

/// One container of the pod.
#[derive(Debug)]
struct Container {
    bundle: PathBuf,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
}

/// The pod's VM.
#[derive(Debug)]
struct Vm {
    sandbox: Arc<Sandbox>,
    agent: AgentClient,
    record: Record,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    namespace: String,
    root: PathBuf,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    vm: tokio::sync::Mutex<Option<Vm>>,
    containers: Mutex<HashMap<String, Container>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("namespace", &self.namespace)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The task service of one shim.
#[derive(Debug, Clone)]
pub struct Service {
    s: Arc<Shared>,
}

/// The name of a pod's sandbox state directory: short (socket paths are limited to 107
/// bytes) and unique per containerd namespace and pod.
fn sandbox_name(namespace: &str, group: &str) -> String {
    let h = Sha256::digest(format!("{namespace}/{group}").as_bytes());
    h.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Shares the host paths of bind mounts with the guest: each source is bind-mounted into the
/// share and the mount's source is rewritten to the guest path. Relative sources are relative
/// to the bundle.
fn share_bind_mounts(
    share: &SharedDir,
    id: &str,
    bundle: &Path,
    spec: &mut Value,
) -> TtrpcResult<()> {
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for (i, m) in mounts.iter_mut().enumerate() {
        let options: Vec<&str> = m
            .get("options")
            .and_then(Value::as_array)
            .map(|o| o.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let is_bind = m.get("type").and_then(Value::as_str) == Some("bind")
            || options.iter().any(|o| *o == "bind" || *o == "rbind");
        if !is_bind {
            continue;
        }
        let readonly = options.contains(&"ro");
        let Some(source) = m.get("source").and_then(Value::as_str) else {
            continue;
        };
        let source = bundle.join(source);
        let guest = share
            .mount_volume(id, &format!("m{i}"), &source, readonly)
            .map_err(|e| internal("share a bind mount", chain(&e)))?;
        m["source"] = Value::String(guest.to_string_lossy().into_owned());
    }
    Ok(())
}

/// Mounts containerd's rootfs mounts on `<bundle>/rootfs` (as the runc shim does).
fn mount_rootfs(bundle: &Path, mounts: &[api::Mount]) -> TtrpcResult<PathBuf> {
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|e| internal("create the rootfs directory", e))?;
    for m in mounts {
        if let Err(e) = containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()).filter(|t| !t.is_empty()),
            Some(m.source.as_str()).filter(|s| !s.is_empty()),
            &m.options,
            &target,
        ) {
            unmount_all(&target);
            return Err(internal(
                &format!("mount the rootfs ({} {})", m.type_, m.source),
                e,
            ));
        }
    }
    Ok(target)
}

impl Service {
    /// A service publishing to `publisher`, with sandbox state directories under `root`.
    pub fn new(
        namespace: String,
        root: PathBuf,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            s: Arc::new(Shared {
                namespace,
                root,
                publisher,
                exit,
                vm: tokio::sync::Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.s
            .containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .s
            .publisher
            .publish(
                ttrpc::context::with_timeout(5_000_000_000),
                topic,
                &self.s.namespace,
                event,
            )
            .await
        {
            log::warn!("cannot publish {topic}: {e}");
        }
    }

    fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<Arc<Proc>> {
        let containers = self.containers();
        let c = containers
            .get(id)
            .ok_or_else(|| status_err(Code::NOT_FOUND, format!("container {id} not found")))?;
        if exec_id.is_empty() {
            return Ok(Arc::clone(&c.init));
        }
        c.execs.get(exec_id).cloned().ok_or_else(|| {
            status_err(
                Code::NOT_FOUND,
                format!("process {exec_id} of container {id} not found"),
            )
        })
    }

    /// The agent and the sandbox, if the VM runs.
    async fn vm(&self) -> TtrpcResult<(AgentClient, Arc<Sandbox>)> {
        let vm = self.s.vm.lock().await;
        let vm = vm
            .as_ref()
            .ok_or_else(|| status_err(Code::FAILED_PRECONDITION, "the pod's VM is not running"))?;
        if let Some(exit) = vm.sandbox.exit_status() {
            return Err(status_err(
                Code::UNAVAILABLE,
                format!("the pod's VM has stopped: {exit}"),
            ));
        }
        Ok((vm.agent.clone(), Arc::clone(&vm.sandbox)))
    }

    /// One call of the pod VM's agent: `call` gets the agent, and an error of the call becomes
    /// `method: message` with the agent's status code kept (NOT_FOUND stays NOT_FOUND for
    /// containerd).
    async fn call_agent<T, F, Fut>(&self, method: &str, call: F) -> TtrpcResult<T>
    where
        F: FnOnce(AgentClient) -> Fut,
        Fut: Future<Output = TtrpcResult<T>>,
    {
        let (agent, _) = self.vm().await?;
        call(agent).await.map_err(|e| agent_err(method, e))
    }

    /// [`Service::call_agent`] on behalf of the process `id`/`exec_id`, which must exist.
    async fn call_for<T, F, Fut>(
        &self,
        id: &str,
        exec_id: &str,
        method: &str,
        call: F,
    ) -> TtrpcResult<T>
    where
        F: FnOnce(AgentClient) -> Fut,
        Fut: Future<Output = TtrpcResult<T>>,
    {
        self.process(id, exec_id)?;
        self.call_agent(method, call).await
    }

    /// Boots the pod's VM for its first container.
    async fn boot(&self, group: &str, spec: &Value, bundle: &Path) -> TtrpcResult<Vm> {
        let host = Config::load_default().map_err(|e| internal("vmrun config", chain(&e)))?;
        let annotations = pod::annotations(spec);
        let mut settings = host
            .sandbox_settings(&annotations)
            .map_err(|e| status_err(Code::INVALID_ARGUMENT, chain(&e)))?;
        (settings.vcpus, settings.memory_mib) =
            pod::sized(settings.vcpus, settings.memory_mib, &annotations);
        let name = sandbox_name(&self.s.namespace, group);
        let mut cfg = SandboxConfig::new(&name, &self.s.root, &host);
        cfg.settings = settings;
        cfg.shared_fs = true;
        cfg.netns = pod::network_namespace_path(spec);
        cfg.hostname = spec
            .get("hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .map(str::to_owned);
        log::info!(
            "pod {group}: booting sandbox {name} under {}",
            self.s.root.display()
        );
        let sandbox = Sandbox::start(cfg)
            .await
            .map_err(|e| internal("cannot start the pod's VM", chain(&e)))?;
        let agent = sandbox
            .agent()
            .map_err(|e| internal("agent", chain(&e)))?
            .clone();
        let record = Record {
            shim: ProcessRef::of(nix::unistd::getpid().as_raw()),
            sandbox_dir: sandbox.paths().dir.clone(),
            processes: sandbox
                .pids()
                .into_iter()
                .filter_map(ProcessRef::of)
                .collect(),
        };
        if let Err(e) = record.save(bundle) {
            log::warn!("cannot write the bundle record: {e}");
        }
        let sandbox = Arc::new(sandbox);
        let watcher = {
            let svc = self.clone();
            let sb = Arc::clone(&sandbox);
            tokio::spawn(async move {
                let report = sb.wait_exit().await;
                log::warn!("pod VM exited: {report}");
                svc.vm_gone().await;
            })
        };
        let oom = {
            let svc = self.clone();
            let agent = agent.clone();
            tokio::spawn(async move { svc.oom_events(agent).await })
        };
        Ok(Vm {
            sandbox,
            agent,
            record,
            tasks: vec![watcher, oom],
        })
    }

    /// Relays the agent's OOM events to containerd until the agent stops serving them.
    async fn oom_events(&self, agent: AgentClient) {
        loop {
            let req = agent::GetOomEventRequest::new();
            match agent
                .service()
                .get_oom_event(ttrpc::context::Context::default(), &req)
                .await
            {
                Ok(ev) => {
                    log::info!("OOM in container {}", ev.container_id);
                    let mut e = TaskOOM::new();
                    e.container_id = ev.container_id;
                    self.publish("/tasks/oom", Box::new(e)).await;
                }
                Err(e) => {
                    log::debug!("GetOomEvent: {e}; no more OOM events");
                    return;
                }
            }
        }
    }

    /// The VM died: every process still running exits with [`VM_GONE_STATUS`].
    async fn vm_gone(&self) {
        let procs: Vec<Arc<Proc>> = self
            .containers()
            .values()
            .flat_map(|c| std::iter::once(Arc::clone(&c.init)).chain(c.execs.values().cloned()))
            .collect();
        for p in procs {
            if let Some(r) = p.relays.lock().await.as_mut() {
                r.stop_input();
            }
            self.record_exit(&p, VM_GONE_STATUS, SystemTime::now())
                .await;
        }
    }

    /// Records a process's exit once and publishes `/tasks/exit`.
    async fn record_exit(&self, p: &Proc, status: u32, at: SystemTime) {
        let first = p.exit_tx.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(Exit { status, at });
            true
        });
        if !first {
            return;
        }
        *p.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = PState::Stopped;
        log::info!(
            "{}/{}: exited with {status}",
            p.container_id,
            if p.exec_id.is_empty() {
                "init"
            } else {
                &p.exec_id
            }
        );
        let mut e = TaskExit::new();
        e.container_id = p.container_id.clone();
        e.id = if p.exec_id.is_empty() {
            p.container_id.clone()
        } else {
            p.exec_id.clone()
        };
        e.pid = p.pid();
        e.exit_status = status;
        e.exited_at = MessageField::some(timestamp(at));
        self.publish("/tasks/exit", Box::new(e)).await;
    }

    /// Waits in the agent for the process to exit, drains its output, records the exit.
    fn spawn_waiter(&self, agent: AgentClient, p: Arc<Proc>) {
        let svc = self.clone();
        tokio::spawn(async move {
            let mut req = agent::WaitProcessRequest::new();
            req.container_id = p.container_id.clone();
            req.exec_id = p.exec_id.clone();
            match agent
                .service()
                .wait_process(ttrpc::context::Context::default(), &req)
                .await
            {
                Ok(r) => {
                    if let Some(relays) = p.relays.lock().await.as_mut() {
                        relays.drain_outputs(DRAIN_TIMEOUT).await;
                        relays.stop_input();
                    }
                    let at = if r.exited_at_ns > 0 {
                        UNIX_EPOCH + Duration::from_nanos(r.exited_at_ns)
                    } else {
                        SystemTime::now()
                    };
                    svc.record_exit(&p, u32::try_from(r.status).unwrap_or(VM_GONE_STATUS), at)
                        .await;
                }
                // The VM went away: its watcher records the exit.
                Err(e) => log::warn!("{}/{}: WaitProcess: {e}", p.container_id, p.exec_id),
            }
        });
    }

    /// Opens the guest streams of a process that containerd wants stdio for.
    async fn open_streams(&self, sandbox: &Sandbox, p: &Proc) -> TtrpcResult<GuestStreams> {
        let exec = p.agent_exec_id();
        let open = |stream| sandbox.open_stream(&p.container_id, exec, stream);
        let err = |e: vmrun_runtime::sandbox::SandboxError| internal("stdio", chain(&e));
        if p.fifos.terminal {
            return Ok(GuestStreams::Tty(
                open(StdioStream::Tty).await.map_err(err)?,
            ));
        }
        let one = |path: &str, stream| {
            let want = !path.is_empty();
            async move {
                if want {
                    open(stream).await.map(Some)
                } else {
                    Ok(None)
                }
            }
        };
        let stdin = one(&p.fifos.stdin, StdioStream::Stdin).await.map_err(err)?;
        let stdout = one(&p.fifos.stdout, StdioStream::Stdout)
            .await
            .map_err(err)?;
        let stderr = one(&p.fifos.stderr, StdioStream::Stderr)
            .await
            .map_err(err)?;
        Ok(GuestStreams::Pipes {
            stdin,
            stdout,
            stderr,
        })
    }

    fn stdio_flags(f: &Fifos) -> agent::StdioStreams {
        let mut s = agent::StdioStreams::new();
        s.stdin = !f.terminal && !f.stdin.is_empty();
        s.stdout = !f.terminal && !f.stdout.is_empty();
        s.stderr = !f.terminal && !f.stderr.is_empty();
        s
    }

    async fn create_inner(&self, req: &api::CreateTaskRequest) -> TtrpcResult<u32> {
        let id = req.id.clone();
        if !vmrun_protocol::is_valid_id(&id) {
            return Err(status_err(
                Code::INVALID_ARGUMENT,
                format!("invalid container id {id:?}"),
            ));
        }
        if self.containers().contains_key(&id) {
            return Err(status_err(
                Code::ALREADY_EXISTS,
                format!("container {id} exists"),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(status_err(Code::UNIMPLEMENTED, "restore from a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let text = std::fs::read(bundle.join("config.json"))
            .map_err(|e| status_err(Code::INVALID_ARGUMENT, format!("config.json: {e}")))?;
        let mut spec: Value = serde_json::from_slice(&text)
            .map_err(|e| status_err(Code::INVALID_ARGUMENT, format!("config.json: {e}")))?;
        let role = Role::from_annotations(&pod::annotations(&spec))
            .map_err(|e| status_err(Code::INVALID_ARGUMENT, e))?;

        // The VM: booted by the pod's first container.
        let mut booted_here = false;
        let (agent, sandbox, record) = {
            let mut vm = self.s.vm.lock().await;
            match (&role, vm.as_ref()) {
                (Role::Member(sid), None) => {
                    return Err(status_err(
                        Code::FAILED_PRECONDITION,
                        format!("pod sandbox {sid} does not run in this shim"),
                    ))
                }
                (Role::Member(_), Some(_)) => {}
                (_, Some(_)) => {
                    return Err(status_err(
                        Code::ALREADY_EXISTS,
                        "this shim already runs a pod; a second sandbox needs its own shim",
                    ))
                }
                (_, None) => {
                    *vm = Some(self.boot(role.group(&id), &spec, &bundle).await?);
                    booted_here = true;
                }
            }
            let v = vm.as_ref().ok_or_else(|| internal("vm", "missing"))?;
            (v.agent.clone(), Arc::clone(&v.sandbox), v.record.clone())
        };
        let result = self
            .create_in_vm(&id, &bundle, &mut spec, &role, req, &agent, &sandbox)
            .await;
        match result {
            Ok(pid) => {
                if let Err(e) = record.save(&bundle) {
                    log::warn!("cannot write the bundle record: {e}");
                }
                Ok(pid)
            }
            Err(e) => {
                if let Some(share) = sandbox.share() {
                    let _ = share.unmount_container(&id);
                }
                unmount_all(&bundle.join("rootfs"));
                if booted_here {
                    drop(sandbox);
                    self.stop_vm().await;
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // one call site; the pieces of one Create
    async fn create_in_vm(
        &self,
        id: &str,
        bundle: &Path,
        spec: &mut Value,
        role: &Role,
        req: &api::CreateTaskRequest,
        agent: &AgentClient,
        sandbox: &Sandbox,
    ) -> TtrpcResult<u32> {
        let share = sandbox
            .share()
            .ok_or_else(|| internal("share", "the sandbox has no shared file system"))?;
        let rootfs = if req.rootfs.is_empty() {
            let p = spec
                .pointer("/root/path")
                .and_then(Value::as_str)
                .unwrap_or("rootfs");
            bundle.join(p)
        } else {
            mount_rootfs(bundle, &req.rootfs)?
        };
        let readonly = spec
            .pointer("/root/readonly")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let guest_root = share
            .mount_rootfs(id, &rootfs, readonly)
            .map_err(|e| internal("share the rootfs", chain(&e)))?;
        if let Some(root) = spec.get_mut("root").and_then(Value::as_object_mut) {
            root.insert(
                "path".into(),
                Value::String(guest_root.to_string_lossy().into_owned()),
            );
        }
        share_bind_mounts(share, id, bundle, spec)?;
        let sandbox_pid = match role {
            Role::Member(sid) => Some(
                self.containers()
                    .get(sid)
                    .map(|c| c.init.pid())
                    .ok_or_else(|| {
                        status_err(
                            Code::FAILED_PRECONDITION,
                            format!("pod sandbox container {sid} not found"),
                        )
                    })?,
            ),
            _ => None,
        };
        pod::guest_namespaces(spec, sandbox_pid);

        let fifos = Fifos::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        if let Some(p) = spec.get_mut("process").and_then(Value::as_object_mut) {
            p.insert("terminal".into(), Value::Bool(req.terminal));
        }
        let p = Arc::new(Proc::new(id, "", fifos, None));
        let streams = self.open_streams(sandbox, &p).await?;
        let mut creq = agent::CreateContainerRequest::new();
        creq.container_id = id.to_owned();
        creq.oci_spec = serde_json::to_vec(spec).map_err(|e| internal("encode the spec", e))?;
        creq.terminal = req.terminal;
        creq.stdio = MessageField::some(Self::stdio_flags(&p.fifos));
        let resp = agent
            .service()
            .create_container(slow_ctx(), &creq)
            .await
            .map_err(|e| agent_err("CreateContainer", e))?;
        p.pid.store(resp.pid, Ordering::SeqCst);
        let relays = relay(&p.fifos, streams, agent, id, "")
            .map_err(|e| internal("open the stdio FIFOs", e))?;
        *p.relays.lock().await = Some(relays);
        self.containers().insert(
            id.to_owned(),
            Container {
                bundle: bundle.to_path_buf(),
                init: Arc::clone(&p),
                execs: HashMap::new(),
            },
        );
        self.spawn_waiter(agent.clone(), p);
        log::info!("container {id}: created, guest pid {}", resp.pid);
        Ok(resp.pid)
    }

    /// Stops the VM (gracefully if it still runs) and removes everything it had.
    async fn stop_vm(&self) {
        let Some(vm) = self.s.vm.lock().await.take() else {
            return;
        };
        for t in &vm.tasks {
            t.abort();
        }
        for t in vm.tasks {
            let _ = t.await;
        }
        drop(vm.agent);
        match Arc::try_unwrap(vm.sandbox) {
            Ok(mut sb) => match sb.shutdown(SHUTDOWN_GRACE).await {
                Ok(report) => log::info!("pod VM stopped: {report}"),
                Err(e) => log::warn!("pod VM shutdown: {}", chain(&e)),
            },
            // Someone still holds it (an RPC in flight): dropping the last reference tears
            // the sandbox down.
            Err(sb) => drop(sb),
        }
    }

    async fn delete_process(&self, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        let p = self.process(id, exec_id)?;
        if exec_id.is_empty() {
            if matches!(p.state(), PState::Running | PState::Paused) && p.exit().is_none() {
                return Err(status_err(
                    Code::FAILED_PRECONDITION,
                    format!("container {id} is still running"),
                ));
            }
            let bundle = self.containers().get(id).map(|c| c.bundle.clone());
            if let Ok((agent, sandbox)) = self.vm().await {
                let mut req = agent::RemoveContainerRequest::new();
                req.container_id = id.to_owned();
                req.force = true;
                if let Err(e) = agent.service().remove_container(slow_ctx(), &req).await {
                    log::warn!("{id}: RemoveContainer: {e}");
                }
                if let Some(share) = sandbox.share() {
                    if let Err(e) = share.unmount_container(id) {
                        log::warn!("{id}: unmount the share: {}", chain(&e));
                    }
                }
            }
            if p.exit().is_none() {
                // A created container that never ran: RemoveContainer killed its init.
                let mut rx = p.exit_tx.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some))
                    .await;
            }
            if let Some(b) = &bundle {
                unmount_all(&b.join("rootfs"));
            }
            *p.relays.lock().await = None;
            self.containers().remove(id);
        } else {
            if matches!(p.state(), PState::Running) && p.exit().is_none() {
                return Err(status_err(
                    Code::FAILED_PRECONDITION,
                    format!("process {exec_id} is still running"),
                ));
            }
            *p.relays.lock().await = None;
            if let Some(c) = self.containers().get_mut(id) {
                c.execs.remove(exec_id);
            }
        }
        let exit = p.exit();
        let mut resp = api::DeleteResponse::new();
        resp.pid = p.pid();
        resp.exit_status = exit.map_or(VM_GONE_STATUS, |e| e.status);
        resp.exited_at = MessageField::some(timestamp(exit.map_or_else(SystemTime::now, |e| e.at)));
        if exec_id.is_empty() {
            let mut e = TaskDelete::new();
            e.container_id = id.to_owned();
            e.pid = resp.pid;
            e.exit_status = resp.exit_status;
            e.exited_at = resp.exited_at.clone();
            self.publish("/tasks/delete", Box::new(e)).await;
        }
        Ok(resp)
    }

    async fn start_exec(&self, p: &Arc<Proc>) -> TtrpcResult<u32> {
        let (agent, sandbox) = self.vm().await?;
        let streams = self.open_streams(&sandbox, p).await?;
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = p.container_id.clone();
        req.exec_id = p.exec_id.clone();
        req.process = p.exec_spec.clone().unwrap_or_default();
        req.terminal = p.fifos.terminal;
        req.stdio = MessageField::some(Self::stdio_flags(&p.fifos));
        let resp = agent
            .service()
            .exec_process(slow_ctx(), &req)
            .await
            .map_err(|e| agent_err("ExecProcess", e))?;
        p.pid.store(resp.pid, Ordering::SeqCst);
        let relays = relay(&p.fifos, streams, &agent, &p.container_id, &p.exec_id)
            .map_err(|e| internal("open the stdio FIFOs", e))?;
        *p.relays.lock().await = Some(relays);
        p.set_state(PState::Running);
        self.spawn_waiter(agent, Arc::clone(p));
        let mut e = TaskExecStarted::new();
        e.container_id = p.container_id.clone();
        e.exec_id = p.exec_id.clone();
        e.pid = resp.pid;
        self.publish("/tasks/exec-started", Box::new(e)).await;
        Ok(resp.pid)
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("Create {} (terminal {})", req.id, req.terminal);
        let pid = self.create_inner(&req).await.inspect_err(|e| {
            log::error!("Create {}: {e}", req.id);
        })?;
        let mut e = TaskCreate::new();
        e.container_id = req.id.clone();
        e.bundle = req.bundle.clone();
        e.rootfs = req.rootfs.clone();
        e.io = MessageField::some(TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        });
        e.pid = pid;
        self.publish("/tasks/create", Box::new(e)).await;
        let mut resp = api::CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let p = self.process(&req.id, &req.exec_id)?;
        if p.state() != PState::Created {
            return Err(status_err(
                Code::FAILED_PRECONDITION,
                format!("{}/{} is not in the created state", req.id, req.exec_id),
            ));
        }
        let pid = if req.exec_id.is_empty() {
            let r = container_request(&req.id);
            self.call_agent("StartContainer", |a| async move {
                a.service().start_container(slow_ctx(), &r).await
            })
            .await?;
            p.set_state(PState::Running);
            let mut e = TaskStart::new();
            e.container_id = req.id.clone();
            e.pid = p.pid();
            self.publish("/tasks/start", Box::new(e)).await;
            p.pid()
        } else {
            self.start_exec(&p).await?
        };
        let mut resp = api::StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.delete_process(&req.id, &req.exec_id).await
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let r = container_request(&req.id);
        let listed = self
            .call_for(&req.id, "", "ListProcesses", |a| async move {
                a.service().list_processes(a.context(), &r).await
            })
            .await?;
        let mut resp = api::PidsResponse::new();
        resp.processes = listed
            .pids
            .into_iter()
            .map(|pid| containerd_shim_protos::types::task::ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect();
        Ok(resp)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let r = container_request(&req.id);
        self.call_for(&req.id, "", "PauseContainer", |a| async move {
            a.service().pause_container(a.context(), &r).await
        })
        .await?;
        self.process(&req.id, "")?.set_state(PState::Paused);
        let mut e = TaskPaused::new();
        e.container_id = req.id.clone();
        self.publish("/tasks/paused", Box::new(e)).await;
        Ok(api::Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        let r = container_request(&req.id);
        self.call_for(&req.id, "", "ResumeContainer", |a| async move {
            a.service().resume_container(a.context(), &r).await
        })
        .await?;
        self.process(&req.id, "")?.set_state(PState::Running);
        let mut e = TaskResumed::new();
        e.container_id = req.id.clone();
        self.publish("/tasks/resumed", Box::new(e)).await;
        Ok(api::Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let p = self.process(&req.id, &req.exec_id)?;
        if p.exit().is_some() && !req.all {
            return Err(status_err(Code::NOT_FOUND, "process already finished"));
        }
        let (agent, _) = match self.vm().await {
            Ok(v) => v,
            // Nothing runs any more: the processes have exited with the VM.
            Err(_) if req.all => return Ok(api::Empty::new()),
            Err(e) => return Err(e),
        };
        let r = agent::SignalProcessRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            signal: req.signal,
            all: req.all,
            ..Default::default()
        };
        match agent.service().signal_process(agent.context(), &r).await {
            Ok(_) => Ok(api::Empty::new()),
            // kill --all on a container whose processes are gone is not an error.
            Err(_) if req.all && p.exit().is_some() => Ok(api::Empty::new()),
            // The process exited in the guest and its waiter has not recorded it yet: what
            // runc's shim answers (containerd tolerates NOT_FOUND on kill).
            Err(TtrpcError::RpcStatus(s))
                if matches!(s.code(), Code::FAILED_PRECONDITION | Code::NOT_FOUND) =>
            {
                Err(status_err(
                    Code::NOT_FOUND,
                    format!("process already finished: {}", s.message()),
                ))
            }
            Err(e) => Err(agent_err("SignalProcess", e)),
        }
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        if !vmrun_protocol::is_valid_id(&req.exec_id) {
            return Err(status_err(
                Code::INVALID_ARGUMENT,
                format!("invalid exec id {:?}", req.exec_id),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| status_err(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        let mut process: Value = serde_json::from_slice(&spec)
            .map_err(|e| status_err(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))?;
        if let Some(o) = process.as_object_mut() {
            o.insert("terminal".into(), Value::Bool(req.terminal));
        }
        let fifos = Fifos::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let spec = serde_json::to_vec(&process).map_err(|e| internal("encode", e))?;
        {
            let mut containers = self.containers();
            let c = containers.get_mut(&req.id).ok_or_else(|| {
                status_err(Code::NOT_FOUND, format!("container {} not found", req.id))
            })?;
            if c.init.exit().is_some() {
                return Err(status_err(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(status_err(
                    Code::ALREADY_EXISTS,
                    format!("process {} exists", req.exec_id),
                ));
            }
            c.execs.insert(
                req.exec_id.clone(),
                Arc::new(Proc::new(&req.id, &req.exec_id, fifos, Some(spec))),
            );
        }
        let mut e = TaskExecAdded::new();
        e.container_id = req.id.clone();
        e.exec_id = req.exec_id.clone();
        self.publish("/tasks/exec-added", Box::new(e)).await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let p = self.process(&req.id, &req.exec_id)?;
        if !p.fifos.terminal {
            return Err(status_err(
                Code::FAILED_PRECONDITION,
                "the process has no terminal",
            ));
        }
        let r = agent::ResizeTtyRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            rows: req.height,
            cols: req.width,
            ..Default::default()
        };
        self.call_agent("ResizeTty", |a| async move {
            a.service().resize_tty(a.context(), &r).await
        })
        .await?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let p = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            if let Some(r) = p.relays.lock().await.as_mut() {
                r.stop_input();
            }
            let r = agent::CloseStdinRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            };
            self.call_agent("CloseStdin", |a| async move {
                a.service().close_stdin(a.context(), &r).await
            })
            .await?;
        }
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        self.process(&req.id, "")?;
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| status_err(Code::INVALID_ARGUMENT, "update without resources"))?;
        serde_json::from_slice::<Value>(&resources)
            .map_err(|e| status_err(Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        let r = agent::UpdateContainerRequest {
            container_id: req.id.clone(),
            resources,
            ..Default::default()
        };
        self.call_agent("UpdateContainer", |a| async move {
            a.service().update_container(a.context(), &r).await
        })
        .await?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let p = self.process(&req.id, &req.exec_id)?;
        let mut rx = p.exit_tx.subscribe();
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|e| internal("wait", e))?
            .ok_or_else(|| internal("wait", "no exit"))?;
        let mut resp = api::WaitResponse::new();
        resp.exit_status = exit.status;
        resp.exited_at = MessageField::some(timestamp(exit.at));
        Ok(resp)
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let p = self.process(&req.id, &req.exec_id)?;
        let bundle = self
            .containers()
            .get(&req.id)
            .map(|c| c.bundle.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut resp = api::StateResponse::new();
        resp.id = req.id.clone();
        resp.exec_id = req.exec_id.clone();
        resp.bundle = bundle;
        resp.pid = p.pid();
        resp.status = match p.state() {
            PState::Created => Status::CREATED,
            PState::Running => Status::RUNNING,
            PState::Paused => Status::PAUSED,
            PState::Stopped => Status::STOPPED,
        }
        .into();
        resp.stdin = p.fifos.stdin.clone();
        resp.stdout = p.fifos.stdout.clone();
        resp.stderr = p.fifos.stderr.clone();
        resp.terminal = p.fifos.terminal;
        if let Some(e) = p.exit() {
            resp.exit_status = e.status;
            resp.exited_at = MessageField::some(timestamp(e.at));
        }
        Ok(resp)
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let r = container_request(&req.id);
        let s = self
            .call_for(&req.id, "", "StatsContainer", |a| async move {
                a.service().stats_container(a.context(), &r).await
            })
            .await?;
        let mut resp = api::StatsResponse::new();
        resp.stats =
            MessageField::some(crate::stats::metrics_any(&s).map_err(|e| internal("stats", e))?);
        Ok(resp)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut resp = api::ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = self.process(&req.id, "").map(|p| p.pid()).unwrap_or(0);
        resp.version = "2".to_owned();
        Ok(resp)
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let left = self.containers().len();
        if left > 0 && !req.now {
            log::info!("Shutdown {}: {left} container(s) left; staying up", req.id);
            return Ok(api::Empty::new());
        }
        log::info!("Shutdown {}: stopping the pod VM and exiting", req.id);
        let svc = self.clone();
        tokio::spawn(async move {
            svc.stop_vm().await;
            svc.s.exit.signal();
        });
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_names_are_short_and_distinct() {
        let a = sandbox_name("default", "t1");
        assert_eq!(a.len(), 24);
        assert_ne!(a, sandbox_name("k8s.io", "t1"));
        assert_eq!(a, sandbox_name("default", "t1"));
    }

    #[test]
    fn agent_errors_keep_their_code() {
        let e = agent_err(
            "SignalProcess",
            status_err(Code::NOT_FOUND, "no such process"),
        );
        match e {
            TtrpcError::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert!(s.message().contains("no such process"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
