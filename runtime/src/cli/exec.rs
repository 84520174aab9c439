// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! `vmrun exec`: runs an additional process in a running container.
//!
//! The process is described like runc's: `--process FILE` (an OCI `process` object), or the
//! container's own `process` with the command line's args and `--env`, `--cwd`, `--user`,
//! `--tty` applied. The `vmrun exec` process connects to the sandbox's agent directly (its own
//! hybrid-vsock connections; the container's monitor is not involved), opens the stdio streams,
//! calls ExecProcess, relays stdio, forwards signals, and exits with the process's status.
//!
//! `-d` keeps runc's pid contract: `exec -d` starts the same code as a detached exec monitor
//! (`vmrun exec-monitor`, own session, the caller's stdio), waits until the process exists,
//! writes the exec monitor's pid to `--pid-file`, and returns; the exec monitor lives and dies
//! with the process and exits with its status.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use vmrun_protocol::{agent, StdioHeader, StdioStream, AGENT_PORT, STDIO_PORT};

use super::{CliError, GlobalOpts};
use crate::agent_client::{AgentClient, DEFAULT_RPC_TIMEOUT};
use crate::monitor::{self, MonitorError};
use crate::sandbox::SandboxPaths;
use crate::state::{StateStore, Status};
use crate::stdio::{self, HostPty, Streams};

/// Flags of `exec` (runc's).
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// An OCI `process` object (JSON file, `-` for stdin) instead of the arguments.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Detach: return once the process runs (its exec monitor writes `--pid-file`).
    #[arg(short, long)]
    pub detach: bool,
    /// File to write the exec monitor's pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Unix socket to which the pty master is sent (with `--tty`).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Extra environment variables (`KEY=value`).
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// `uid[:gid]` to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional gids.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Extra file descriptors: not supported across the VM boundary (only 0).
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Container id.
    pub id: String,
    /// The command and its arguments (without `--process`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Hidden `vmrun exec-monitor` arguments (set by `exec -d`).
#[derive(Debug, Clone, Args)]
pub struct ExecMonitorArgs {
    /// The process object, prepared by `exec`.
    #[arg(long)]
    pub process_file: PathBuf,
    /// The exec id.
    #[arg(long)]
    pub exec_id: String,
    /// Inherited pipe to report readiness on.
    #[arg(long)]
    pub ready_fd: RawFd,
    /// Console socket for the pty master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Container id.
    pub id: String,
}

/// Builds the OCI process object of an exec from the flags and the container's spec.
pub fn process_object(args: &ExecArgs, container_spec: &Value) -> Result<Value, CliError> {
    let mut p = if let Some(file) = &args.process {
        let text = if file == Path::new("-") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| CliError::Usage(format!("cannot read the process from stdin: {e}")))?;
            s
        } else {
            std::fs::read_to_string(file).map_err(|e| {
                CliError::Usage(format!(
                    "cannot read the process file {}: {e}",
                    file.display()
                ))
            })?
        };
        serde_json::from_str::<Value>(&text)
            .map_err(|e| CliError::Usage(format!("malformed process file: {e}")))?
    } else {
        if args.command.is_empty() {
            return Err(CliError::Usage("exec needs a command or --process".into()));
        }
        let mut p = container_spec
            .get("process")
            .cloned()
            .unwrap_or_else(|| json!({}));
        p["args"] = json!(args.command);
        p
    };
    if !p.is_object() {
        return Err(CliError::Usage("the process must be a JSON object".into()));
    }
    if !args.env.is_empty() {
        let mut env: Vec<Value> = p["env"].as_array().cloned().unwrap_or_default();
        env.extend(args.env.iter().map(|e| json!(e)));
        p["env"] = json!(env);
    }
    if let Some(cwd) = &args.cwd {
        p["cwd"] = json!(cwd);
    }
    if let Some(user) = &args.user {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user.as_str(), None),
        };
        let uid: u32 = uid
            .parse()
            .map_err(|_| CliError::Usage(format!("--user {user:?}: expected uid[:gid]")))?;
        p["user"]["uid"] = json!(uid);
        if let Some(g) = gid {
            let gid: u32 = g
                .parse()
                .map_err(|_| CliError::Usage(format!("--user {user:?}: expected uid[:gid]")))?;
            p["user"]["gid"] = json!(gid);
        }
    }
    if !args.additional_gids.is_empty() {
        p["user"]["additionalGids"] = json!(args.additional_gids);
    }
    if args.tty {
        p["terminal"] = json!(true);
    } else if p.get("terminal").is_none() || args.process.is_none() {
        p["terminal"] = json!(false);
    }
    if p.get("cwd").and_then(Value::as_str).is_none() {
        p["cwd"] = json!("/");
    }
    let args_ok = p["args"]
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
    if !args_ok {
        return Err(CliError::Usage(
            "process.args must be a non-empty list of strings".into(),
        ));
    }
    Ok(p)
}

/// The agent of a running sandbox, through its hybrid-vsock socket `uds`.
pub(super) async fn connect_agent(uds: &Path) -> Result<AgentClient, MonitorError> {
    let conn = crate::vsock::connect(uds, AGENT_PORT, Duration::from_secs(10))
        .await
        .map_err(|e| MonitorError::Agent {
            method: "connect",
            message: format!("cannot reach the agent: {e}"),
        })?;
    Ok(AgentClient::new(conn, DEFAULT_RPC_TIMEOUT))
}

fn new_exec_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("exec-{}-{nanos:x}", std::process::id())
}

/// `vmrun exec`; returns the exit status (the process's, or 0 with `-d`).
pub fn exec(store: &StateStore, g: &GlobalOpts, args: &ExecArgs) -> Result<i32, CliError> {
    let record = store.load(&args.id)?;
    let status = record.effective_status();
    if status != Status::Running {
        return Err(CliError::WrongState {
            id: args.id.clone(),
            status,
            what: "cannot exec in a container that is not running",
        });
    }
    if args.preserve_fds != 0 {
        return Err(CliError::Usage(
            "--preserve-fds is not supported: file descriptors cannot cross into the microVM"
                .into(),
        ));
    }
    let bundle_spec: Value = std::fs::read(record.bundle.join(crate::oci::CONFIG_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({}));
    let process = process_object(args, &bundle_spec)?;
    let terminal = process["terminal"].as_bool().unwrap_or(false);
    if terminal && args.detach && args.console_socket.is_none() {
        return Err(CliError::Usage(
            "cannot allocate a terminal without --console-socket when detached".into(),
        ));
    }
    let exec_id = new_exec_id();
    let uds = vsock_uds(&record)?;
    if !args.detach {
        let rt = runtime()?;
        let console = args.console_socket.clone();
        let code = rt.block_on(run_exec(
            &uds,
            &args.id,
            &exec_id,
            &process,
            console.as_deref(),
            true,
            |r| {
                if let (Ok(()), Some(p)) = (r, &args.pid_file) {
                    let _ =
                        monitor::write_pid_file(p, i32::try_from(std::process::id()).unwrap_or(0));
                }
            },
        ));
        rt.shutdown_timeout(Duration::from_millis(100));
        return Ok(code?);
    }
    // Detached: the exec monitor gets the process object in a file of the state directory.
    let process_file = store.dir(&args.id).join(format!("{exec_id}.process.json"));
    std::fs::write(&process_file, process.to_string()).map_err(|e| {
        CliError::Monitor(Box::new(MonitorError::Io {
            what: format!("cannot write {}", process_file.display()),
            source: e,
        }))
    })?;
    let mut extra = vec![
        "exec-monitor".into(),
        "--process-file".into(),
        process_file.clone().into_os_string(),
        "--exec-id".into(),
        exec_id.clone().into(),
    ];
    if let Some(cs) = &args.console_socket {
        extra.push("--console-socket".into());
        extra.push(super::absolute(cs).into_os_string());
    }
    extra.push(args.id.clone().into());
    let result = monitor::spawn_helper(store, g, &extra);
    let _ = std::fs::remove_file(&process_file);
    let pid = result?;
    if let Some(p) = &args.pid_file {
        monitor::write_pid_file(p, pid)?;
    }
    Ok(0)
}

/// Entry point of the hidden `vmrun exec-monitor`; returns the exit status.
pub fn exec_monitor(store: &StateStore, args: &ExecMonitorArgs) -> i32 {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor number; no memory is involved.
    let valid = args.ready_fd > 2 && unsafe { libc::fcntl(args.ready_fd, libc::F_GETFD) } >= 0;
    let mut ready = if valid {
        // SAFETY: `exec -d` set this descriptor up for us (dup2 before exec); it is open
        // (checked above) and nothing else in this process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(args.ready_fd) };
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        Some(fd)
    } else {
        None
    };
    let mut report = |msg: String| {
        if let Some(fd) = ready.take() {
            use std::io::Write;
            let _ = std::fs::File::from(fd).write_all(msg.as_bytes());
        }
    };
    let setup = (|| {
        let process: Value = serde_json::from_slice(
            &std::fs::read(&args.process_file)
                .map_err(|e| format!("cannot read {}: {e}", args.process_file.display()))?,
        )
        .map_err(|e| format!("malformed process: {e}"))?;
        let record = store.load(&args.id).map_err(|e| monitor::chain(&e))?;
        let uds = vsock_uds(&record).map_err(|e| monitor::chain(&e))?;
        Ok::<_, String>((process, uds))
    })();
    let (process, uds) = match setup {
        Ok(v) => v,
        Err(msg) => {
            report(format!("error {msg}\n"));
            return 1;
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            report(format!("error {}\n", monitor::chain(&e)));
            return 1;
        }
    };
    let result = rt.block_on(run_exec(
        &uds,
        &args.id,
        &args.exec_id,
        &process,
        args.console_socket.as_deref(),
        false,
        |r| {
            report(match r {
                Ok(()) => "ok\n".to_owned(),
                Err(e) => format!("error {}\n", monitor::chain(e)),
            });
        },
    ));
    rt.shutdown_timeout(Duration::from_millis(100));
    result.unwrap_or_else(|e| {
        log::error!("exec {}: {}", args.exec_id, monitor::chain(&e));
        1
    })
}

/// Applies a `linux.resources` object: in the guest (UpdateContainer), then on the host
/// cgroup (CPU shares; the memory limit stays guest RAM + overhead, because the VM's RAM does
/// not shrink). A memory limit above the VM's RAM is refused before anything changes.
pub fn update_value(record: &crate::state::ContainerRecord, value: &Value) -> Result<(), CliError> {
    let id = record.id.as_str();
    if let Some(cg) = &record.host_cgroup {
        crate::cgroups::check_update(cg.guest_memory_mib, value)?;
    }
    let uds = vsock_uds(record)?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let agent = connect_agent(&uds).await?;
        let mut req = agent::UpdateContainerRequest::new();
        req.container_id = id.to_owned();
        req.resources = value.to_string().into_bytes();
        agent
            .service()
            .update_container(agent.context(), &req)
            .await
            .map(|_| ())
            .map_err(|e| monitor::rpc_error("UpdateContainer", &e))
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    result?;
    if let Some(cg) = &record.host_cgroup {
        cg.apply(&cg.limits(crate::cgroups::cpu_shares(value)))?;
    }
    Ok(())
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::Monitor(Box::new(MonitorError::Io {
                what: "cannot start the async runtime".into(),
                source: e,
            }))
        })
}

pub(super) fn vsock_uds(record: &crate::state::ContainerRecord) -> Result<PathBuf, CliError> {
    let dir = record
        .sandbox
        .as_ref()
        .and_then(|s| s.get("dir"))
        .and_then(Value::as_str)
        .ok_or_else(|| CliError::Usage(format!("container {:?} has no sandbox", record.id)))?;
    Ok(SandboxPaths::new(Path::new(dir)).vsock_uds)
}

async fn open_stream(
    uds: &Path,
    id: &str,
    exec_id: &str,
    stream: StdioStream,
) -> Result<tokio::net::UnixStream, MonitorError> {
    use tokio::io::AsyncWriteExt;
    let err = |message: String| MonitorError::Agent {
        method: "stdio",
        message,
    };
    let header = StdioHeader::new(id, Some(exec_id), stream).map_err(|e| err(e.to_string()))?;
    let mut s = crate::vsock::connect(uds, STDIO_PORT, Duration::from_secs(10))
        .await
        .map_err(|e| err(format!("{stream} stream: {e}")))?;
    s.write_all(header.to_line().as_bytes())
        .await
        .map_err(|e| err(format!("{stream} stream: {e}")))?;
    Ok(s)
}

async fn run_exec(
    uds: &Path,
    id: &str,
    exec_id: &str,
    process: &Value,
    console_socket: Option<&Path>,
    foreground: bool,
    on_started: impl FnOnce(&Result<(), MonitorError>),
) -> Result<i32, MonitorError> {
    let terminal = process["terminal"].as_bool().unwrap_or(false);
    let started = async {
        let agent = connect_agent(uds).await?;
        let host_pty = match (terminal, console_socket) {
            (true, Some(cs)) => Some(HostPty::create_and_send(cs, None, !foreground)?),
            _ => None,
        };
        let streams = if terminal {
            Streams::Tty(open_stream(uds, id, exec_id, StdioStream::Tty).await?)
        } else {
            Streams::Pipes {
                stdin: open_stream(uds, id, exec_id, StdioStream::Stdin).await?,
                stdout: open_stream(uds, id, exec_id, StdioStream::Stdout).await?,
                stderr: open_stream(uds, id, exec_id, StdioStream::Stderr).await?,
            }
        };
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.process = serde_json::to_vec(process).map_err(|e| MonitorError::Agent {
            method: "ExecProcess",
            message: e.to_string(),
        })?;
        req.terminal = terminal;
        let mut s = agent::StdioStreams::new();
        s.stdin = !terminal;
        s.stdout = !terminal;
        s.stderr = !terminal;
        req.stdio = protobuf::MessageField::some(s);
        agent
            .service()
            .exec_process(monitor::slow_context(), &req)
            .await
            .map_err(|e| monitor::rpc_error("ExecProcess", &e))?;
        let relays = match (streams, host_pty) {
            (Streams::Tty(tty), Some(pty)) => {
                let size = stdio::winsize(pty.slave.as_fd());
                let r = stdio::relay_pty(tty, pty.slave).map_err(|e| MonitorError::Io {
                    what: "host pty".into(),
                    source: e,
                })?;
                if let Some((rows, cols)) = size {
                    monitor::resize(&agent, id, Some(exec_id), rows, cols).await;
                }
                r
            }
            (streams, _) => {
                let r = stdio::relay_inherited(streams, foreground);
                if terminal {
                    if let Some((rows, cols)) = stdio::winsize(std::io::stdin().as_fd()) {
                        monitor::resize(&agent, id, Some(exec_id), rows, cols).await;
                    }
                }
                r
            }
        };
        Ok((agent, relays))
    }
    .await;
    let (agent, relays) = match started {
        Ok(v) => {
            on_started(&Ok(()));
            v
        }
        Err(e) => {
            on_started(&Err(MonitorError::CreateFailed(monitor::chain(&e))));
            return Err(e);
        }
    };
    let mut wait_req = agent::WaitProcessRequest::new();
    wait_req.container_id = id.to_owned();
    wait_req.exec_id = exec_id.to_owned();
    let wait_agent = agent.clone();
    let mut waiter = tokio::spawn(async move {
        wait_agent
            .service()
            .wait_process(ttrpc::context::Context::default(), &wait_req)
            .await
    });
    let mut term = signal(SignalKind::terminate()).map_err(|e| MonitorError::Io {
        what: "signal handler".into(),
        source: e,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| MonitorError::Io {
        what: "signal handler".into(),
        source: e,
    })?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| MonitorError::Io {
        what: "signal handler".into(),
        source: e,
    })?;
    let code = loop {
        let sig = tokio::select! {
            r = &mut waiter => {
                break match r {
                    Ok(Ok(resp)) => resp.status,
                    Ok(Err(e)) => return Err(monitor::rpc_error("WaitProcess", &e)),
                    Err(_) => monitor::VM_DIED_STATUS,
                };
            }
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
            _ = hup.recv() => libc::SIGHUP,
        };
        let mut req = agent::SignalProcessRequest::new();
        req.container_id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.signal = u32::try_from(sig).unwrap_or(15);
        if let Err(e) = agent.service().signal_process(agent.context(), &req).await {
            log::warn!("exec {exec_id}: cannot forward signal {sig}: {e}");
        }
    };
    relays.drain(Duration::from_secs(10)).await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        exec: ExecArgs,
    }

    fn args(a: &[&str]) -> ExecArgs {
        T::try_parse_from(std::iter::once("exec").chain(a.iter().copied()))
            .unwrap()
            .exec
    }

    #[test]
    fn process_from_args_and_flags() {
        let spec = json!({"process": {"args": ["sh"], "env": ["PATH=/bin"], "cwd": "/",
                          "user": {"uid": 0, "gid": 0}, "terminal": true}});
        let p = process_object(
            &args(&[
                "--env",
                "A=1",
                "--cwd",
                "/tmp",
                "--user",
                "65534:65534",
                "c1",
                "ls",
                "-l",
            ]),
            &spec,
        )
        .unwrap();
        assert_eq!(p["args"], json!(["ls", "-l"]));
        assert_eq!(p["env"], json!(["PATH=/bin", "A=1"]));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["user"]["uid"], 65534);
        assert_eq!(p["user"]["gid"], 65534);
        // The container's terminal setting does not leak into a plain exec.
        assert_eq!(p["terminal"], false);
        let p = process_object(&args(&["-t", "c1", "sh"]), &spec).unwrap();
        assert_eq!(p["terminal"], true);
    }

    #[test]
    fn process_file() {
        let dir = std::env::temp_dir().join(format!("vmrun-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.json");
        std::fs::write(
            &f,
            r#"{"args":["echo","hi"],"cwd":"/","terminal":false,"user":{"uid":0,"gid":0}}"#,
        )
        .unwrap();
        let p = process_object(
            &args(&["--process", &f.to_string_lossy(), "c1"]),
            &json!({}),
        )
        .unwrap();
        assert_eq!(p["args"], json!(["echo", "hi"]));
        std::fs::write(&f, "{").unwrap();
        assert!(process_object(
            &args(&["--process", &f.to_string_lossy(), "c1"]),
            &json!({})
        )
        .is_err());
        std::fs::write(&f, r#"{"args":[]}"#).unwrap();
        assert!(process_object(
            &args(&["--process", &f.to_string_lossy(), "c1"]),
            &json!({})
        )
        .is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_flags() {
        assert!(process_object(&args(&["c1"]), &json!({})).is_err());
        assert!(process_object(&args(&["--user", "root", "c1", "id"]), &json!({})).is_err());
    }
}
