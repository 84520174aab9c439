// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Pods: which shim (and VM) a container belongs to, how big the VM is, and how a container's
//! spec is rewritten for the guest.
//!
//! containerd's CRI plugin marks every spec with `io.kubernetes.cri.container-type`
//! (`sandbox` or `container`) and `io.kubernetes.cri.sandbox-id`; CRI-O uses
//! `io.kubernetes.cri-o.ContainerType` / `io.kubernetes.cri-o.SandboxID`. A spec without them
//! (`ctr run`, nerdctl) is a pod of its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

/// containerd CRI: the container type annotation.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// containerd CRI: the pod sandbox id annotation.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI-O: the container type annotation.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
/// CRI-O: the pod sandbox id annotation.
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";
/// containerd 1.7+: the pod's memory limit in bytes.
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// containerd 1.7+: the pod's CPU quota (microseconds per period).
pub const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// containerd 1.7+: the pod's CPU period (microseconds).
pub const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// What a container is within its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A container without pod annotations: its own VM.
    Single,
    /// The pod's sandbox (pause) container: boots the pod's VM.
    Sandbox,
    /// A container of the pod whose sandbox id is given: runs in that pod's VM.
    Member(String),
}

impl Role {
    /// The role from a spec's annotations. A `container` without a sandbox id is an error.
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Result<Self, String> {
        let kind = a
            .get(CRI_CONTAINER_TYPE)
            .or_else(|| a.get(CRIO_CONTAINER_TYPE));
        match kind.map(String::as_str) {
            None => Ok(Self::Single),
            Some("sandbox") => Ok(Self::Sandbox),
            Some("container") => a
                .get(CRI_SANDBOX_ID)
                .or_else(|| a.get(CRIO_SANDBOX_ID))
                .filter(|s| !s.is_empty())
                .map(|s| Self::Member(s.clone()))
                .ok_or_else(|| {
                    format!("a pod container without {CRI_SANDBOX_ID} / {CRIO_SANDBOX_ID}")
                }),
            Some(other) => Err(format!("unknown container type {other:?}")),
        }
    }

    /// The id that names the pod (and so the shim socket): the sandbox id of a member, the
    /// container's own id otherwise.
    pub fn group<'a>(&'a self, id: &'a str) -> &'a str {
        match self {
            Self::Member(sandbox) => sandbox,
            _ => id,
        }
    }
}

/// The annotations of a spec (`annotations` object; non-string values are skipped).
pub fn annotations(spec: &Value) -> BTreeMap<String, String> {
    spec.get("annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Adds the pod's resource limits (containerd 1.7+ sizing annotations) to the configured VM
/// size, which then acts as the VM's overhead: memory += limit, vCPUs += ceil(quota / period).
/// Absent or zero annotations leave the configured size. Returns (vcpus, memory_mib).
pub fn sized(base_vcpus: u32, base_mib: u32, a: &BTreeMap<String, String>) -> (u32, u32) {
    let num = |k: &str| {
        a.get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v > 0)
    };
    let mib = num(CRI_SANDBOX_MEMORY)
        .map(|b| u32::try_from(b.div_euclid(1 << 20)).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let cpus = match (num(CRI_SANDBOX_CPU_QUOTA), num(CRI_SANDBOX_CPU_PERIOD)) {
        (Some(q), Some(p)) => u32::try_from((q + p - 1) / p).unwrap_or(0),
        _ => 0,
    };
    (
        base_vcpus.saturating_add(cpus),
        base_mib.saturating_add(mib),
    )
}

/// The `/proc/<pid>/ns/<file>` name of an OCI namespace type.
fn ns_file(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "pid" => "pid",
        "network" => "net",
        "ipc" => "ipc",
        "uts" => "uts",
        "mount" => "mnt",
        "user" => "user",
        "cgroup" => "cgroup",
        _ => return None,
    })
}

/// The host network namespace a spec joins by path (CRI's CNI netns for a pod sandbox): its
/// interfaces are carried into the pod's VM (`vmrun_runtime::network`).
pub fn network_namespace_path(spec: &Value) -> Option<PathBuf> {
    spec.pointer("/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))?
        .get("path")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Rewrites the namespaces of a spec for the guest. Host paths mean nothing there. A network
/// namespace joined by path is the pod's network, which the VM carries in its root network
/// namespace: the entry is dropped so that the container shares it (docs/networking.md). Any
/// other namespace of a pod member joins the namespace of the same type of the sandbox container
/// (`sandbox_pid`, a guest pid); any other container gets new namespaces (the path is dropped).
/// OCI hooks are dropped too: they name host programs.
pub fn guest_namespaces(spec: &mut Value, sandbox_pid: Option<u32>) {
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("hooks");
    }
    let Some(list) = spec
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    list.retain(|ns| {
        !(ns.get("type").and_then(Value::as_str) == Some("network") && ns.get("path").is_some())
    });
    for ns in list.iter_mut() {
        let Some(obj) = ns.as_object_mut() else {
            continue;
        };
        if !obj.contains_key("path") {
            continue;
        }
        let kind = obj.get("type").and_then(Value::as_str).and_then(ns_file);
        match (sandbox_pid, kind) {
            (Some(pid), Some(file)) => {
                obj.insert(
                    "path".into(),
                    Value::String(format!("/proc/{pid}/ns/{file}")),
                );
            }
            _ => {
                obj.remove("path");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn roles() {
        assert_eq!(Role::from_annotations(&map(&[])), Ok(Role::Single));
        assert_eq!(
            Role::from_annotations(&map(&[(CRI_CONTAINER_TYPE, "sandbox")])),
            Ok(Role::Sandbox)
        );
        let m = Role::from_annotations(&map(&[
            (CRIO_CONTAINER_TYPE, "container"),
            (CRIO_SANDBOX_ID, "pod1"),
        ]))
        .expect("member");
        assert_eq!(m, Role::Member("pod1".into()));
        assert_eq!(m.group("c1"), "pod1");
        assert_eq!(Role::Sandbox.group("s1"), "s1");
        assert!(Role::from_annotations(&map(&[(CRI_CONTAINER_TYPE, "container")])).is_err());
        assert!(Role::from_annotations(&map(&[(CRI_CONTAINER_TYPE, "weird")])).is_err());
    }

    #[test]
    fn sizing() {
        assert_eq!(sized(1, 256, &map(&[])), (1, 256));
        let a = map(&[
            (CRI_SANDBOX_MEMORY, "134217728"),
            (CRI_SANDBOX_CPU_QUOTA, "150000"),
            (CRI_SANDBOX_CPU_PERIOD, "100000"),
        ]);
        assert_eq!(sized(1, 256, &a), (3, 384));
        assert_eq!(sized(1, 256, &map(&[(CRI_SANDBOX_MEMORY, "-1")])), (1, 256));
    }

    #[test]
    fn namespaces() {
        let spec = json!({"hooks": {"prestart": []}, "linux": {"namespaces": [
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "pid"},
            {"type": "ipc", "path": "/proc/77/ns/ipc"}]}});
        assert_eq!(
            network_namespace_path(&spec),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        let mut s = spec.clone();
        guest_namespaces(&mut s, None);
        assert_eq!(
            s,
            json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}]}})
        );
        let mut m = spec;
        guest_namespaces(&mut m, Some(5));
        assert_eq!(m["linux"]["namespaces"][0], json!({"type": "pid"}));
        assert_eq!(m["linux"]["namespaces"][1]["path"], "/proc/5/ns/ipc");
        // Without a path, a network namespace is a new, loopback-only one in the guest.
        let mut own = json!({"linux": {"namespaces": [{"type": "network"}]}});
        assert_eq!(network_namespace_path(&own), None);
        guest_namespaces(&mut own, Some(5));
        assert_eq!(own["linux"]["namespaces"][0], json!({"type": "network"}));
    }
}
