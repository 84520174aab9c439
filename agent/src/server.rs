// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The ttrpc services: `Health` and `AgentService`.
//!
//! Handlers run as tasks on the agent's tokio runtime; anything that blocks (file system,
//! helper processes) goes through `spawn_blocking` or the reaper. Every input from the host is
//! validated and a bad one answers INVALID_ARGUMENT with a message, never a panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ttrpc::r#async::TtrpcContext;
use vmrun_protocol::agent::{self, Empty};
use vmrun_protocol::health::{self, check_response::ServingStatus};
use vmrun_protocol::{agent_ttrpc, health_ttrpc};

use crate::config::Config;
use crate::container::Containers;
use crate::selfcheck::CheckItem;

/// Default mount point of the virtio-fs share.
pub const DEFAULT_SHARED_MOUNT: &str = "/run/vmrun/shared";

/// Whether the agent runs as the guest's PID 1 or in the host-side test mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of the guest: Shutdown powers the VM off.
    Guest,
    /// Host-side test mode (Unix socket): Shutdown only stops the containers and the server.
    Test,
}

/// State shared by every handler.
#[derive(Debug)]
pub struct Agent {
    /// Settings.
    pub config: Config,
    /// Guest or test mode.
    pub mode: Mode,
    /// Start-up self-check results.
    pub checks: Vec<CheckItem>,
    /// Milliseconds since kernel start when the server listened (set once).
    pub ready_ms: std::sync::OnceLock<u64>,
    /// The containers.
    pub containers: Arc<Containers>,
    /// Signalled when Shutdown has finished its work (test mode exits on it).
    pub shutdown: tokio::sync::Notify,
}

/// Builds a ttrpc error status.
pub fn status(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn invalid(msg: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::INVALID_ARGUMENT, msg)
}

/// The status of a network call's error.
fn net_status(e: crate::network::NetError) -> ttrpc::Error {
    let code = match e {
        crate::network::NetError::Invalid(_) => ttrpc::Code::INVALID_ARGUMENT,
        crate::network::NetError::NoDevice(_) => ttrpc::Code::NOT_FOUND,
        crate::network::NetError::Netlink(_) => ttrpc::Code::INTERNAL,
    };
    status(code, e.to_string())
}

/// The `Health` service.
#[derive(Debug, Clone)]
pub struct HealthService(pub Arc<Agent>);

#[async_trait]
impl health_ttrpc::Health for HealthService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::CheckResponse> {
        let mut resp = health::CheckResponse::new();
        let all_ok = self.0.checks.iter().all(|c| c.ok);
        resp.status = if all_ok {
            ServingStatus::SERVING
        } else {
            ServingStatus::DEGRADED
        }
        .into();
        resp.checks = self
            .0
            .checks
            .iter()
            .map(|c| health::SelfCheck {
                name: c.name.clone(),
                ok: c.ok,
                detail: c.detail.clone(),
                ..Default::default()
            })
            .collect();
        resp.ready_ms = self.0.ready_ms.get().copied().unwrap_or(0);
        Ok(resp)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::VersionResponse> {
        Ok(health::VersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: vmrun_protocol::API_VERSION,
            kernel_release: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            seccomp: self.0.containers.seccomp_ok(),
            ..Default::default()
        })
    }
}

/// The `AgentService` service.
#[derive(Debug, Clone)]
pub struct AgentService(pub Arc<Agent>);

impl AgentService {
    /// The network calls change the interfaces, routes and neighbours of the network namespace
    /// the agent runs in: the guest's, as PID 1. The host-side test mode refuses them, so that a
    /// test never rewrites the host's own network.
    fn guest_network(&self) -> ttrpc::Result<()> {
        match self.0.mode {
            Mode::Guest => Ok(()),
            Mode::Test => Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                "network calls are refused in the host-side test mode: they would change the \
                 host's network",
            )),
        }
    }
}

#[async_trait]
impl agent_ttrpc::AgentService for AgentService {
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        log::info!(
            "CreateSandbox {:?} hostname {:?}",
            req.sandbox_id,
            req.hostname
        );
        if !req.hostname.is_empty() {
            if req.hostname.len() > 64 || req.hostname.contains(['/', '\0', ' ']) {
                return Err(invalid(format!("invalid hostname {:?}", req.hostname)));
            }
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| status(ttrpc::Code::INTERNAL, format!("sethostname: {e}")))?;
        }
        if let Some(fs) = req.shared_fs.as_ref().filter(|f| !f.tag.is_empty()) {
            let target = if fs.mount_point.is_empty() {
                PathBuf::from(DEFAULT_SHARED_MOUNT)
            } else {
                PathBuf::from(&fs.mount_point)
            };
            if !target.is_absolute() {
                return Err(invalid(format!(
                    "shared_fs.mount_point {target:?} is not absolute"
                )));
            }
            let tag = fs.tag.clone();
            tokio::task::spawn_blocking(move || mount_virtiofs(&tag, &target))
                .await
                .map_err(|e| status(ttrpc::Code::INTERNAL, e.to_string()))?
                .map_err(|e| status(ttrpc::Code::INTERNAL, e))?;
        }
        Ok(Empty::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> ttrpc::Result<agent::CreateContainerResponse> {
        log::info!("CreateContainer {}", req.container_id);
        let pid = self
            .0
            .containers
            .create(req)
            .await
            .inspect_err(|e| log::warn!("CreateContainer: {e}"))?;
        Ok(agent::CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.0.containers.start(&req.container_id).await?;
        Ok(Empty::new())
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> ttrpc::Result<agent::ExecProcessResponse> {
        log::info!("ExecProcess {} {}", req.container_id, req.exec_id);
        let pid = self
            .0
            .containers
            .exec(req)
            .await
            .inspect_err(|e| log::warn!("ExecProcess: {e}"))?;
        Ok(agent::ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.0.containers.signal(&req)?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        let (status, exited_at_ns) = self
            .0
            .containers
            .wait(&req.container_id, &req.exec_id)
            .await?;
        Ok(agent::WaitProcessResponse {
            status,
            exited_at_ns,
            ..Default::default()
        })
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.0
            .containers
            .remove(&req.container_id, req.force)
            .await?;
        Ok(Empty::new())
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ContainerRequest,
    ) -> ttrpc::Result<agent::ListProcessesResponse> {
        let pids = self.0.containers.list_processes(&req.container_id)?;
        Ok(agent::ListProcessesResponse {
            pids,
            ..Default::default()
        })
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ContainerRequest,
    ) -> ttrpc::Result<agent::StatsContainerResponse> {
        Ok(self.0.containers.stats(&req.container_id)?)
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.0
            .containers
            .update(&req.container_id, &req.resources)
            .await?;
        Ok(Empty::new())
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.0
            .containers
            .set_paused(&req.container_id, true)
            .await?;
        Ok(Empty::new())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.0
            .containers
            .set_paused(&req.container_id, false)
            .await?;
        Ok(Empty::new())
    }

    async fn resize_tty(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ResizeTtyRequest,
    ) -> ttrpc::Result<Empty> {
        self.0.containers.resize(&req)?;
        Ok(Empty::new())
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        self.0
            .containers
            .close_stdin(&req.container_id, &req.exec_id)?;
        Ok(Empty::new())
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GetOomEventRequest,
    ) -> ttrpc::Result<agent::OomEvent> {
        let container_id = self.0.containers.next_oom().await;
        Ok(agent::OomEvent {
            container_id,
            ..Default::default()
        })
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> ttrpc::Result<agent::Interface> {
        self.guest_network()?;
        let iface = req
            .interface
            .into_option()
            .ok_or_else(|| invalid("UpdateInterface without an interface"))?;
        let addresses: Vec<(String, u32)> = iface
            .addresses
            .iter()
            .map(|a| (a.address.clone(), a.prefix_len))
            .collect();
        let cfg =
            crate::network::interface_config(&iface.name, &iface.hw_addr, &addresses, iface.mtu)
                .map_err(net_status)?;
        tokio::task::spawn_blocking(move || crate::network::update_interface(&cfg))
            .await
            .map_err(|e| status(ttrpc::Code::INTERNAL, e.to_string()))?
            .map_err(net_status)?;
        log::info!(
            "interface {} ({}) configured: {} address(es), mtu {}",
            iface.name,
            iface.hw_addr,
            iface.addresses.len(),
            iface.mtu
        );
        Ok(iface)
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        self.guest_network()?;
        let routes = req.routes.into_option().unwrap_or_default();
        let cfgs = routes
            .routes
            .iter()
            .map(|r| {
                crate::network::route_config(
                    &r.destination,
                    &r.gateway,
                    &r.device,
                    &r.source,
                    r.scope,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(net_status)?;
        tokio::task::spawn_blocking(move || crate::network::update_routes(&cfgs))
            .await
            .map_err(|e| status(ttrpc::Code::INTERNAL, e.to_string()))?
            .map_err(net_status)?;
        log::info!("{} route(s) installed", routes.routes.len());
        Ok(routes)
    }

    async fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        req: agent::AddArpNeighborsRequest,
    ) -> ttrpc::Result<Empty> {
        self.guest_network()?;
        let cfgs = req
            .neighbors
            .iter()
            .map(|n| crate::network::neighbour_config(&n.address, &n.hw_addr, &n.device))
            .collect::<Result<Vec<_>, _>>()
            .map_err(net_status)?;
        tokio::task::spawn_blocking(move || crate::network::add_neighbours(&cfgs))
            .await
            .map_err(|e| status(ttrpc::Code::INTERNAL, e.to_string()))?
            .map_err(net_status)?;
        Ok(Empty::new())
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ShutdownRequest,
    ) -> ttrpc::Result<Empty> {
        let timeout_ms = if req.timeout_ms == 0 {
            self.0.config.shutdown_timeout_ms
        } else {
            u64::from(req.timeout_ms)
        };
        log::info!("Shutdown requested (grace {timeout_ms} ms)");
        let agent = self.0.clone();
        tokio::spawn(async move {
            // Let the reply reach the host before the VM goes away.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            agent
                .containers
                .stop_all(std::time::Duration::from_millis(timeout_ms))
                .await;
            if agent.mode == Mode::Guest {
                log::info!("clean shutdown: syncing and powering off");
                tokio::task::spawn_blocking(|| crate::system::power_off());
            } else {
                agent.shutdown.notify_one();
            }
        });
        Ok(Empty::new())
    }
}

/// Mounts the virtio-fs `tag` on `target` (creating it), unless something is mounted there.
fn mount_virtiofs(tag: &str, target: &Path) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    nix::mount::mount(
        Some(tag),
        target,
        Some("virtiofs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("mount virtiofs {tag:?} on {}: {e}", target.display()))
}
