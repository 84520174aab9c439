// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Typed async client of the guest agent: ttrpc 0.9 over one hybrid-vsock connection to port
//! [`vmrun_protocol::AGENT_PORT`].
//!
//! The health calls and the sandbox-level calls the sandbox library itself makes have typed
//! wrappers with a per-call timeout; every other call of the generated
//! [`AgentServiceClient`] is reached through [`AgentClient::service`] with
//! [`AgentClient::context`].
//!
//! Trust boundary: every answer comes from the guest and is treated as untrusted data (it is
//! only compared, logged or handed on, never used to size anything on the host).

use std::time::Duration;

use tokio::net::UnixStream;
use ttrpc::asynchronous::transport::Socket;
use vmrun_protocol::agent::{CreateSandboxRequest, SharedFs, ShutdownRequest};
use vmrun_protocol::agent_ttrpc::AgentServiceClient;
use vmrun_protocol::health::{CheckRequest, CheckResponse, VersionResponse};
use vmrun_protocol::health_ttrpc::HealthClient;

/// Default timeout of one RPC.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors from the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An RPC failed (transport error or an error status from the agent).
    #[error("agent rpc {method} failed")]
    Rpc {
        /// The RPC's name.
        method: &'static str,
        /// The ttrpc error.
        #[source]
        source: ttrpc::Error,
    },
    /// The agent speaks another protocol version.
    #[error(
        "agent API version mismatch: the agent ({agent_version}) speaks API version {agent_api}, \
         this runtime speaks {expected}; install a matching guest initramfs (scripts/setup)"
    )]
    ApiVersionMismatch {
        /// The agent's version string.
        agent_version: String,
        /// The agent's API version.
        agent_api: u32,
        /// The version this runtime expected.
        expected: u32,
    },
}

/// The typed agent client. Cloning shares the connection.
#[derive(Clone)]
pub struct AgentClient {
    health: HealthClient,
    service: AgentServiceClient,
    timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// A client over an established hybrid-vsock stream to the agent port. Must be called
    /// inside a tokio runtime (ttrpc spawns its connection task).
    pub fn new(stream: UnixStream, timeout: Duration) -> Self {
        let client = ttrpc::asynchronous::Client::new(Socket::new(stream));
        Self {
            health: HealthClient::new(client.clone()),
            service: AgentServiceClient::new(client),
            timeout,
        }
    }

    /// A ttrpc context carrying this client's per-call timeout.
    pub fn context(&self) -> ttrpc::context::Context {
        let nanos = i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX);
        ttrpc::context::with_timeout(nanos)
    }

    /// The generated client of the container API.
    pub fn service(&self) -> &AgentServiceClient {
        &self.service
    }

    /// `Health.Check`: serving state and the agent's start-up self-check.
    pub async fn check(&self) -> Result<CheckResponse, AgentError> {
        self.health
            .check(self.context(), &CheckRequest::new())
            .await
            .map_err(|source| AgentError::Rpc {
                method: "Check",
                source,
            })
    }

    /// `Health.Version`.
    pub async fn version(&self) -> Result<VersionResponse, AgentError> {
        self.health
            .version(self.context(), &CheckRequest::new())
            .await
            .map_err(|source| AgentError::Rpc {
                method: "Version",
                source,
            })
    }

    /// Calls Version and refuses an agent whose API version is not `expected`.
    pub async fn handshake(&self, expected: u32) -> Result<VersionResponse, AgentError> {
        let v = self.version().await?;
        check_api_version(&v, expected)?;
        Ok(v)
    }

    /// `CreateSandbox`: hostname and (if `shared_fs_tag` is set) the virtio-fs share to mount.
    pub async fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        shared_fs_tag: Option<&str>,
    ) -> Result<(), AgentError> {
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = sandbox_id.to_owned();
        req.hostname = hostname.to_owned();
        if let Some(tag) = shared_fs_tag {
            let mut fs = SharedFs::new();
            fs.tag = tag.to_owned();
            fs.mount_point = crate::virtiofs::GUEST_SHARED_DIR.to_owned();
            req.shared_fs = protobuf::MessageField::some(fs);
        }
        self.service
            .create_sandbox(self.context(), &req)
            .await
            .map(|_| ())
            .map_err(|source| AgentError::Rpc {
                method: "CreateSandbox",
                source,
            })
    }

    /// `Shutdown`: the agent stops the containers (SIGTERM, SIGKILL after `grace`), announces a
    /// clean shutdown and reboots; the hypervisor then exits.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), AgentError> {
        let mut req = ShutdownRequest::new();
        req.timeout_ms = u32::try_from(grace.as_millis()).unwrap_or(u32::MAX);
        self.service
            .shutdown(self.context(), &req)
            .await
            .map(|_| ())
            .map_err(|source| AgentError::Rpc {
                method: "Shutdown",
                source,
            })
    }
}

/// Refuses a Version answer whose API version is not `expected`.
pub fn check_api_version(v: &VersionResponse, expected: u32) -> Result<(), AgentError> {
    if v.api_version == expected {
        Ok(())
    } else {
        Err(AgentError::ApiVersionMismatch {
            agent_version: v.agent_version.clone(),
            agent_api: v.api_version,
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_names_both_versions() {
        let v = VersionResponse {
            agent_version: "0.1.0".into(),
            api_version: 1,
            ..Default::default()
        };
        check_api_version(&v, 1).unwrap();
        let err = check_api_version(&v, 7).unwrap_err().to_string();
        assert!(
            err.contains("API version 1") && err.contains("speaks 7") && err.contains("0.1.0"),
            "{err}"
        );
    }
}
