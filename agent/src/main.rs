// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! vmrun-agent: the guest agent, PID 1 inside every microVM.
//!
//! Modes:
//! * no arguments, as PID 1: the guest agent. Mounts the early file systems, checks what the
//!   kernel offers, serves ttrpc on vsock port 1024 and stdio streams on 1026, logs to the
//!   console and to the host (vsock 1025), and resets the VM on a fatal error.
//! * `vmrun-agent serve --unix PATH`: the host-side test mode; the same services on the Unix
//!   socket `PATH` (stdio streams on `PATH.stdio`, state under `PATH.d/`), no system set-up,
//!   Shutdown stops the containers and ends the process.
//! * `vmrun-agent init REQUEST_JSON`: the single-threaded container helper the agent
//!   re-executes for libcontainer work (container/helper.rs).
//!
//! Settings come from `VMRUN_AGENT_<NAME>` environment variables (see `config.rs`).

mod config;
mod container;
mod logger;
mod network;
mod passwd;
mod reaper;
mod selfcheck;
mod server;
mod system;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::server::{Agent, AgentService, HealthService, Mode};

const USAGE: &str = "usage: vmrun-agent                      (as PID 1 in the guest)\n       vmrun-agent serve --unix PATH    (host-side test mode)";

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listen {
    Vsock,
    Unix(PathBuf),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None if std::process::id() == 1 => guest_main(),
        Some("init") => std::process::exit(container::helper::main(&args[1..])),
        Some("serve") => test_main(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some("--version") => {
            println!(
                "vmrun-agent {} (api {})",
                env!("CARGO_PKG_VERSION"),
                vmrun_protocol::API_VERSION
            );
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("vmrun-agent: error: {e:#}");
        std::process::exit(1);
    }
}

/// PID 1 in the guest. Never returns: a failure resets the VM.
fn guest_main() -> anyhow::Result<()> {
    system::reset_on_panic();
    system::setup_console();
    if let Err(e) = system::mount_early() {
        system::fatal(&format!("{:#}", anyhow::Error::from(e)));
    }
    let config = Config::from_env().unwrap_or_else(|e| system::fatal(&e));
    let log_rx = logger::init(config.log_level, config.log_vsock);
    for name in &config.unknown {
        log::warn!("unknown setting {name} ignored");
    }
    for (c, e) in system::enable_cgroup_controllers(Path::new(system::CGROUP_ROOT)) {
        log::warn!("cannot enable cgroup controller {c}: {e}");
    }
    let scratch = Path::new("/run/vmrun/selfcheck");
    if let Err(e) = std::fs::create_dir_all(scratch) {
        system::fatal(&format!("mkdir {}: {e}", scratch.display()));
    }
    let checks = selfcheck::run(Path::new(system::CGROUP_ROOT), scratch);
    let result = run(config, checks, log_rx, Mode::Guest, &Listen::Vsock);
    match result {
        Ok(()) => system::fatal(&"the agent's server stopped"),
        Err(e) => system::fatal(&format!("{e:#}")),
    }
}

/// Host-side test mode.
fn test_main(args: &[String]) -> anyhow::Result<()> {
    let path = match args {
        [flag, path] if flag == "--unix" => PathBuf::from(path),
        _ => bail!("{USAGE}"),
    };
    let config = Config::from_env()?;
    let log_rx = logger::init(config.log_level, false);
    // Orphaned container processes must become our children, as they would under PID 1.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag on this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    }
    let scratch =
        std::env::temp_dir().join(format!("vmrun-agent-selfcheck-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("mkdir {}", scratch.display()))?;
    let checks = selfcheck::run(Path::new(system::CGROUP_ROOT), &scratch);
    let _ = std::fs::remove_dir(&scratch);
    run(config, checks, log_rx, Mode::Test, &Listen::Unix(path))
}

/// Starts the runtime and serves until Shutdown (test mode) or forever (guest).
fn run(
    config: Config,
    checks: Vec<selfcheck::CheckItem>,
    log_rx: Option<tokio::sync::mpsc::Receiver<String>>,
    mode: Mode,
    listen: &Listen,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        if let Some(rx) = log_rx {
            tokio::spawn(logger::forward_to_host(rx));
        }
        let reaper = reaper::Reaper::start().context("SIGCHLD handler")?;
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        if !failed.is_empty() {
            log::warn!("self-check: missing {}", failed.join(", "));
        }
        let seccomp_ok = checks.iter().any(|c| c.name == "seccomp:filter" && c.ok);
        let run_dir = match listen {
            Listen::Vsock => PathBuf::from("/run/vmrun"),
            Listen::Unix(p) => PathBuf::from(format!("{}.d", p.display())),
        };
        let containers = Arc::new(container::Containers::new(
            Arc::new(container::engine::HelperEngine::new(
                PathBuf::from("/proc/self/exe"),
                reaper.clone(),
            )),
            reaper,
            container::Paths::under(&run_dir, Path::new(system::CGROUP_ROOT)),
            std::time::Duration::from_millis(config.stdio_timeout_ms),
            seccomp_ok,
        ));
        tokio::spawn(containers.clone().watch_oom());
        let park = containers.park.clone();
        match listen {
            Listen::Vsock => {
                let addr = tokio_vsock::VsockAddr::new(
                    tokio_vsock::VMADDR_CID_ANY,
                    vmrun_protocol::STDIO_PORT,
                );
                let l =
                    tokio_vsock::VsockListener::bind(addr).context("listen on vsock port 1026")?;
                tokio::spawn(async move {
                    loop {
                        match l.accept().await {
                            Ok((s, _)) => {
                                tokio::spawn(container::stdio::serve_connection(s, park.clone()));
                            }
                            Err(e) => log::warn!("stdio accept: {e}"),
                        }
                    }
                });
            }
            Listen::Unix(p) => {
                let path = PathBuf::from(format!("{}.stdio", p.display()));
                let _ = std::fs::remove_file(&path);
                let l = tokio::net::UnixListener::bind(&path)
                    .with_context(|| format!("listen on {}", path.display()))?;
                tokio::spawn(async move {
                    loop {
                        match l.accept().await {
                            Ok((s, _)) => {
                                tokio::spawn(container::stdio::serve_connection(s, park.clone()));
                            }
                            Err(e) => log::warn!("stdio accept: {e}"),
                        }
                    }
                });
            }
        }
        let agent = Arc::new(Agent {
            config,
            mode,
            checks,
            ready_ms: std::sync::OnceLock::new(),
            containers,
            shutdown: tokio::sync::Notify::new(),
        });
        let addr = match listen {
            Listen::Vsock => format!("vsock://-1:{}", vmrun_protocol::AGENT_PORT),
            Listen::Unix(p) => {
                let _ = std::fs::remove_file(p);
                format!("unix://{}", p.display())
            }
        };
        let mut server = ttrpc::r#async::Server::new()
            .bind(&addr)
            .with_context(|| format!("listen on {addr}"))?
            .register_service(vmrun_protocol::health_ttrpc::create_health(Arc::new(
                HealthService(agent.clone()),
            )))
            .register_service(vmrun_protocol::agent_ttrpc::create_agent_service(Arc::new(
                AgentService(agent.clone()),
            )));
        server.start().await.context("start the ttrpc server")?;
        let ready = system::boot_time_ms();
        let _ = agent.ready_ms.set(ready);
        println!(
            "{} in {ready} ms since kernel start (listening on {addr})",
            vmrun_protocol::READY_LINE
        );
        agent.shutdown.notified().await;
        log::info!("shutting down");
        server.shutdown().await.context("stop the ttrpc server")?;
        Ok(())
    })
}
