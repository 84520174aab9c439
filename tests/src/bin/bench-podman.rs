// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `podman run --rm IMAGE true` with `--runtime vmrun` against `--runtime runc`, in one run,
//! alternating, N times each (issue #5's closing note). podman gets private storage, run and
//! tmp directories and a containers.conf with both runtimes; the image is busybox built from
//! busybox-static (no registry). Both runtimes get the same flags
//! (`--security-opt seccomp=unconfined`, which vmrun needs while the agent refuses seccomp).
//!
//! usage: bench-podman [RUNS]   (the `vmrun` binary next to this one or $VMRUN_BIN; guest artifacts from
//! VMRUN_ARTIFACTS; runc at /usr/sbin/runc)

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmrun_tests::cli::{text, CliEnv};
use vmrun_tests::podman::{Podman, IMAGE};

/// `podman <args>`, failing with its stderr.
fn podman(p: &Podman<'_>, args: &[&str]) -> Result<std::process::Output> {
    let out = p
        .cmd(args)
        .output()
        .with_context(|| format!("podman {args:?}"))?;
    if !out.status.success() {
        bail!("podman {args:?}: {}", text(&out.stderr));
    }
    Ok(out)
}

/// `$VMRUN_BIN`, else the `vmrun` next to this binary.
fn vmrun_bin() -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("VMRUN_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("vmrun");
    if !bin.exists() {
        bail!(
            "{} is missing: build the workspace's binaries first",
            bin.display()
        );
    }
    Ok(bin)
}

fn time_run(p: &Podman<'_>, runtime: &str) -> Result<Duration> {
    let t = Instant::now();
    podman(
        p,
        &[
            "--runtime",
            runtime,
            "run",
            "--rm",
            "--security-opt",
            "seccomp=unconfined",
            IMAGE,
            "true",
        ],
    )?;
    Ok(t.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(Ok(5), |s| s.parse())
        .context("RUNS must be a number")?;
    if runs == 0 {
        bail!("RUNS must be at least 1");
    }
    let env = CliEnv::new("bench-podman");
    let p = Podman::setup(&env, &vmrun_bin()?, "runc").map_err(anyhow::Error::msg)?;
    // One untimed run each: image layers mounted once, caches warm.
    time_run(&p, "runc")?;
    time_run(&p, "vmrun")?;
    let mut vmrun = Vec::new();
    let mut runc = Vec::new();
    for _ in 0..runs {
        vmrun.push(time_run(&p, "vmrun")?);
        runc.push(time_run(&p, "runc")?);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "podman run --rm {IMAGE} true, {runs} runs each, alternating (load {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| runtime | median ms | min ms | max ms |");
    println!("|---|---|---|---|");
    let mut medians = Vec::new();
    for (name, v) in [
        ("vmrun (QEMU/TCG microVM)", &mut vmrun),
        ("runc", &mut runc),
    ] {
        v.sort();
        let med = v[v.len() / 2];
        medians.push(med);
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            ms(med),
            ms(v[0]),
            ms(v[v.len() - 1])
        );
    }
    println!(
        "vmrun / runc median: {:.1}x",
        ms(medians[0]) / ms(medians[1]).max(1.0)
    );
    let _ = p.cmd(&["system", "reset", "--force"]).output();
    Ok(())
}
