// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `containerd-shim-vmrun-v2`: containerd's shim v2 (task API v2) for vmrun. One shim process
//! and one microVM per pod; see docs/shim.md.
//!
//! containerd runs the binary three ways: `start` (print the ttrpc address of the pod's shim,
//! spawning it if needed, and exit), `delete` (clean up a bundle after the shim is gone), and,
//! through `start`, as the long-lived daemon with `-socket`.

mod cleanup;
mod io;
mod pod;
mod service;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{run, spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{Message, UnknownValueRef};

/// The runtime name containerd knows the shim by.
const RUNTIME_ID: &str = "io.containerd.vmrun.v2";
/// Environment: the vmrun config file (also set from the runtime options' `config_path`).
const CONFIG_ENV: &str = "VMRUN_CONFIG";
/// Environment: where sandbox state directories go (default [`DEFAULT_SANDBOX_ROOT`]).
pub const SANDBOX_ROOT_ENV: &str = "VMRUN_SHIM_ROOT";
/// Default directory of the shims' sandbox state directories.
pub const DEFAULT_SANDBOX_ROOT: &str = "/run/vmrun/shim";
/// Type URL of CRI's runtime options (`runtimeoptions.v1.Options`).
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The shim process: `start`, `delete` or the daemon.
struct VmrunShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: PathBuf,
    /// `config_path` of the runtime options read from stdin by `start`.
    config_path: Option<String>,
}

impl std::fmt::Debug for VmrunShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmrunShim")
            .field("namespace", &self.namespace)
            .field("id", &self.id)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

/// Reads `config_path` (field 2) from the runtime options containerd writes to `start`'s
/// stdin: an `Any` holding `runtimeoptions.v1.Options`. Other option types carry nothing vmrun
/// uses and are ignored; malformed bytes are an error.
fn parse_runtime_options(data: &[u8]) -> Result<Option<String>, String> {
    if data.is_empty() {
        return Ok(None);
    }
    let any = Any::parse_from_bytes(data).map_err(|e| format!("runtime options: {e}"))?;
    if !any.type_url.ends_with(RUNTIME_OPTIONS_TYPE) {
        log::info!("ignoring runtime options of type {}", any.type_url);
        return Ok(None);
    }
    // runtimeoptions.v1.Options{type_url = 1, config_path = 2}: read field 2 without the proto.
    let opts = Empty::parse_from_bytes(&any.value).map_err(|e| format!("runtime options: {e}"))?;
    match opts.special_fields.unknown_fields().get(2) {
        Some(UnknownValueRef::LengthDelimited(b)) => String::from_utf8(b.to_vec())
            .map(|s| (!s.is_empty()).then_some(s))
            .map_err(|_| "runtime options: config_path is not UTF-8".to_owned()),
        Some(_) => Err("runtime options: config_path has the wrong wire type".to_owned()),
        None => Ok(None),
    }
}

/// The pod (grouping) id of the container whose bundle is `bundle`.
fn group_of(bundle: &Path, id: &str) -> Result<String, Error> {
    let text = std::fs::read(bundle.join("config.json")).map_err(|e| {
        Error::InvalidArgument(format!("cannot read the bundle's config.json: {e}"))
    })?;
    let spec: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidArgument(format!("bad config.json: {e}")))?;
    let role =
        pod::Role::from_annotations(&pod::annotations(&spec)).map_err(Error::InvalidArgument)?;
    Ok(role.group(id).to_owned())
}

#[async_trait]
impl Shim for VmrunShim {
    type T = service::Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        let mut config_path = None;
        if args.action.is_empty() && !args.socket.is_empty() {
            // The daemon: a session of its own, so that signals to containerd's process
            // group (a restart) leave the pod running.
            let _ = nix::unistd::setsid();
        }
        if args.action == "start" {
            let mut data = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut data);
            match parse_runtime_options(&data) {
                Ok(p) => config_path = p,
                Err(e) => eprintln!("{RUNTIME_ID}: {e}"),
            }
        }
        Self {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            config_path,
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let group = group_of(&self.bundle, &opts.id)?;
        let mut vars = Vec::new();
        if let Some(p) = &self.config_path {
            vars.push((CONFIG_ENV, p.as_str()));
        }
        let address = spawn(opts, &group, vars).await?;
        // containerd reads it back when it restarts and reconnects to running shims.
        std::fs::write(self.bundle.join("address"), &address)
            .map_err(|e| Error::Other(format!("cannot write the bundle's address file: {e}")))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // containerd logs the stderr of `delete` as cleanup warnings.
        for note in cleanup::cleanup_bundle(&self.bundle) {
            eprintln!("{RUNTIME_ID}: {}/{}: {note}", self.namespace, self.id);
        }
        let mut resp = DeleteResponse::new();
        resp.exit_status = 137;
        resp.exited_at = containerd_shim_protos::protobuf::MessageField::some(service::now());
        log::info!("{}/{}: bundle cleaned up", self.namespace, self.id);
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let root = std::env::var_os(SANDBOX_ROOT_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SANDBOX_ROOT));
        service::Service::new(
            self.namespace.clone(),
            root,
            publisher,
            Arc::clone(&self.exit),
        )
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "-v" || a == "--version" || a == "-version") {
        println!("containerd-shim-vmrun-v2 {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let config = Config {
        // Every child is waited for by the sandbox library; a SIGCHLD reaper would steal them.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    run::<VmrunShim>(RUNTIME_ID, Some(config)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_options() {
        // As containerd 1.6 writes them (clients.md 3.2).
        let path = b"/etc/vmrun/config.toml";
        let mut inner = vec![0x12, u8::try_from(path.len()).expect("short")];
        inner.extend_from_slice(path);
        let mut any = vec![0x0a, 0x19];
        any.extend_from_slice(b"runtimeoptions.v1.Options");
        any.push(0x12);
        any.push(u8::try_from(inner.len()).expect("short"));
        any.extend_from_slice(&inner);
        assert_eq!(
            parse_runtime_options(&any),
            Ok(Some("/etc/vmrun/config.toml".to_owned()))
        );
        assert_eq!(parse_runtime_options(&[]), Ok(None));
        assert!(parse_runtime_options(&[0xff, 0xff, 0xff]).is_err());
        // runc options: ignored.
        let mut runc = vec![0x0a, 0x1a];
        runc.extend_from_slice(b"containerd.runc.v1.Options");
        assert_eq!(parse_runtime_options(&runc), Ok(None));
    }
}
