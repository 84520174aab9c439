// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! podman with private storage (root, runroot, tmpdir under the test's directory) and a
//! `containers.conf` that knows two OCI runtimes: `vmrun`, through a wrapper that points it at
//! the test's config and state root, and Debian's `runc`. The busybox test image is loaded.
//! Used by `cli_podman` and `bench-podman`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::cli::{busybox_image, text, CliEnv};

/// The loaded test image's name.
pub const IMAGE: &str = "docker.io/library/vmrunbox:local";

/// podman on a [`CliEnv`]'s directory.
#[derive(Debug)]
pub struct Podman<'a> {
    env: &'a CliEnv,
}

impl<'a> Podman<'a> {
    /// Writes the wrapper and `containers.conf` (default runtime `default_runtime`, `vmrun`
    /// being `vmrun_bin`) and loads the test image; `Err` says what failed.
    pub fn setup(env: &'a CliEnv, vmrun_bin: &Path, default_runtime: &str) -> Result<Self, String> {
        let d = env.dir();
        let wrapper = d.join("vmrun-wrapper");
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexport VMRUN_CONFIG={}\nexec {} --root {} \"$@\"\n",
                d.join("config.toml").display(),
                vmrun_bin.display(),
                env.root().display()
            ),
        )
        .map_err(|e| io("write the vmrun wrapper", e))?;
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| io("chmod the vmrun wrapper", e))?;
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
                 netns = \"none\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 runtime = \"{default_runtime}\"\nruntime_supports_json = [\"vmrun\", \"runc\"]\n\
                 runtime_supports_kvm = [\"vmrun\"]\n[engine.runtimes]\nvmrun = [\"{}\"]\n\
                 runc = [\"/usr/sbin/runc\"]\n",
                wrapper.display()
            ),
        )
        .map_err(|e| io("write containers.conf", e))?;
        let tar = busybox_image(&d.join("img"));
        let p = Self { env };
        let load = p
            .cmd(&["load", "-i", &tar.to_string_lossy()])
            .output()
            .map_err(|e| io("run podman load", e))?;
        if !load.status.success() {
            return Err(format!("podman load: {}", text(&load.stderr)));
        }
        Ok(p)
    }

    /// `podman <args>` on the private storage, stdin closed.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let d = self.env.dir();
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("p-root"))
            .arg("--runroot")
            .arg(d.join("p-run"))
            .arg("--tmpdir")
            .arg(d.join("p-tmp"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }
}
