// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! `vmrun-agent init`: the single-threaded helper process that runs libcontainer.
//!
//! libcontainer clones raw processes without glibc's fork handlers and runs Rust code in the
//! children, which is only sound in a single-threaded process; it also `waitpid`s its own
//! intermediate process. So the agent never calls it from its tokio runtime: it re-executes
//! itself as `vmrun-agent init '<request JSON>'` with the container's stdio as fds 0/1/2 and a
//! pipe as fd 3, on which the helper writes one [`HelperReply`] JSON line before it exits. The
//! processes libcontainer creates are the helper's children; when the helper exits they are
//! re-parented to the agent (PID 1 or child subreaper), whose reaper collects their status.
//!
//! The helper writes nothing to fds 1 and 2: they belong to the container.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

/// The fd on which the helper writes its reply.
pub const REPLY_FD: i32 = 3;

/// What the helper is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HelperRequest {
    /// Create a container from `<bundle>/config.json` (runc create).
    Create {
        /// libcontainer state root.
        root: PathBuf,
        /// Container id.
        id: String,
        /// Bundle directory holding config.json.
        bundle: PathBuf,
        /// Console socket for `terminal: true`.
        console_socket: Option<PathBuf>,
        /// Enter the rootfs with MS_MOVE + chroot instead of pivot_root, which fails when the
        /// agent's own root is the initramfs (rootfs cannot be pivoted away).
        no_pivot: bool,
    },
    /// Start a created container (runc start).
    Start {
        /// libcontainer state root.
        root: PathBuf,
        /// Container id.
        id: String,
    },
    /// Run an extra process in a running container (runc exec --process).
    Exec {
        /// libcontainer state root.
        root: PathBuf,
        /// Container id.
        id: String,
        /// Path of the OCI process JSON.
        process: PathBuf,
        /// Console socket for `terminal: true`.
        console_socket: Option<PathBuf>,
    },
    /// Delete a container's state and cgroup (runc delete [--force]).
    Delete {
        /// libcontainer state root.
        root: PathBuf,
        /// Container id.
        id: String,
        /// Kill what still runs.
        force: bool,
    },
    /// Apply an OCI `linux.resources` JSON file to a cgroup (runc update).
    Update {
        /// The container's cgroup path (absolute, below the cgroup root).
        cgroup_path: PathBuf,
        /// Container id.
        id: String,
        /// Path of the resources JSON.
        resources: PathBuf,
    },
}

/// The helper's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperReply {
    /// Pid of the created process (Create, Exec).
    pub pid: Option<i32>,
    /// What failed, if anything.
    pub error: Option<String>,
}

/// Entry point of `vmrun-agent init REQUEST_JSON`; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let reply = match args {
        [json] => match serde_json::from_str::<HelperRequest>(json) {
            Ok(req) => match run(req) {
                Ok(pid) => HelperReply { pid, error: None },
                Err(e) => HelperReply {
                    pid: None,
                    error: Some(e),
                },
            },
            Err(e) => HelperReply {
                pid: None,
                error: Some(format!("bad helper request: {e}")),
            },
        },
        _ => HelperReply {
            pid: None,
            error: Some("usage: vmrun-agent init REQUEST_JSON".into()),
        },
    };
    let ok = reply.error.is_none();
    // SAFETY: the agent passes the reply pipe as fd 3 and nothing else in this process owns it.
    let mut out = unsafe { std::fs::File::from_raw_fd(REPLY_FD) };
    let line = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".to_owned());
    if out.write_all(line.as_bytes()).is_err() {
        return 3;
    }
    if ok {
        0
    } else {
        1
    }
}

fn run(req: HelperRequest) -> Result<Option<i32>, String> {
    match req {
        HelperRequest::Create {
            root,
            id,
            bundle,
            console_socket,
            no_pivot,
        } => {
            let container = ContainerBuilder::new(id, SyscallType::default())
                .with_root_path(root)
                .map_err(|e| format!("state root: {e}"))?
                .with_console_socket(console_socket)
                .validate_id()
                .map_err(|e| format!("container id: {e}"))?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(no_pivot)
                .build()
                .map_err(|e| format!("create: {e}"))?;
            let pid = container
                .pid()
                .ok_or("create: libcontainer reported no pid")?;
            Ok(Some(pid.as_raw()))
        }
        HelperRequest::Start { root, id } => {
            load(&root, &id)?
                .start()
                .map_err(|e| format!("start: {e}"))?;
            Ok(None)
        }
        HelperRequest::Exec {
            root,
            id,
            process,
            console_socket,
        } => {
            let pid = ContainerBuilder::new(id, SyscallType::default())
                .with_root_path(root)
                .map_err(|e| format!("state root: {e}"))?
                .with_console_socket(console_socket)
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .build()
                .map_err(|e| format!("exec: {e}"))?;
            Ok(Some(pid.as_raw()))
        }
        HelperRequest::Delete { root, id, force } => {
            load(&root, &id)?
                .delete(force)
                .map_err(|e| format!("delete: {e}"))?;
            Ok(None)
        }
        HelperRequest::Update {
            cgroup_path,
            id,
            resources,
        } => {
            let text = std::fs::read_to_string(&resources)
                .map_err(|e| format!("read {}: {e}", resources.display()))?;
            let res: libcontainer::oci_spec::runtime::LinuxResources =
                serde_json::from_str(&text).map_err(|e| format!("resources JSON: {e}"))?;
            let manager =
                libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
                    cgroup_path,
                    systemd_cgroup: false,
                    container_name: id,
                })
                .map_err(|e| format!("cgroup manager: {e}"))?;
            libcgroups::common::CgroupManager::apply(
                &manager,
                &libcgroups::common::ControllerOpt {
                    resources: &res,
                    disable_oom_killer: false,
                    oom_score_adj: None,
                    freezer_state: None,
                },
            )
            .map_err(|e| format!("update: {e}"))?;
            Ok(None)
        }
    }
}

fn load(root: &Path, id: &str) -> Result<Container, String> {
    Container::load(root.join(id)).map_err(|e| format!("load container {id}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_round_trip() {
        let r = HelperRequest::Create {
            root: "/run/vmrun/containers".into(),
            id: "c1".into(),
            bundle: "/run/vmrun/bundles/c1".into(),
            console_socket: None,
            no_pivot: false,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains(r#""op":"create""#), "{j}");
        assert_eq!(serde_json::from_str::<HelperRequest>(&j).unwrap(), r);
    }

    #[test]
    fn bad_requests_are_errors() {
        assert!(run(HelperRequest::Start {
            root: "/nonexistent".into(),
            id: "x".into()
        })
        .unwrap_err()
        .contains("load container x"));
    }
}
