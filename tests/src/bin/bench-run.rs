// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun run` benchmark (issue #4 item 6), all in one run, N times each:
//! - `vmrun run` of `/bin/true` in a busybox bundle (foreground), wall time, with the per-step
//!   breakdown the monitor writes to `$VMRUN_TIMINGS` (see `runtime/src/sandbox/timings.rs`);
//! - the same backend's raw boot-to-agent-ready: `Sandbox::start` until the agent answered
//!   Version (as bench-sandbox);
//! - `runc run` of the same bundle, with a private `--root`.
//!
//! The target: host-side work ≤ 15% of boot-to-ready; in-guest container time is shown next
//! to it. Host-side work is every `host` step plus the wall time no step accounts for (process
//! exec, argument parsing, the async runtime).
//!
//! usage: bench-run [RUNS]   (artifacts from VMRUN_ARTIFACTS, default target/artifacts; the
//! `vmrun` binary next to this one, or $VMRUN_BIN)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use vmrun_runtime::sandbox::{Sandbox, SandboxConfig};
use vmrun_tests::cli::{busybox_bundle, BundleOpts, CliEnv};
use vmrun_tests::sandbox::host_config;

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(Ok(5), |s| s.parse())
        .context("RUNS must be a number")?;
    if runs == 0 {
        bail!("RUNS must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(runs))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median, min and max (sorts `v`).
fn stats(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort();
    let med = v.get(v.len() / 2).copied().unwrap_or_default();
    let min = v.first().copied().unwrap_or_default();
    let max = v.last().copied().unwrap_or_default();
    (med, min, max)
}

fn row(name: &str, v: &mut [Duration]) -> Duration {
    let (med, min, max) = stats(v);
    println!(
        "| {name} | {:.0} | {:.0}–{:.0} | {} |",
        ms(med),
        ms(min),
        ms(max),
        v.len()
    );
    med
}

fn vmrun_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VMRUN_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("executable dir")?.join("vmrun");
    if !p.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release -p vmrun-runtime) or set VMRUN_BIN",
            p.display()
        );
    }
    Ok(p)
}

/// One `vmrun run`: its wall time and the steps from its timings file.
struct RunSample {
    wall: Duration,
    steps: Vec<(String, String, Duration)>,
}

fn vmrun_run(vmrun: &Path, env: &CliEnv, bundle: &Path, id: &str) -> Result<RunSample> {
    let timings = env.dir().join(format!("{id}.timings.json"));
    let log = env.dir().join(format!("{id}.stderr"));
    let t = Instant::now();
    let st = Command::new(vmrun)
        .env("VMRUN_CONFIG", env.dir().join("config.toml"))
        .env("VMRUN_TIMINGS", &timings)
        .arg("--root")
        .arg(env.root())
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .status()
        .context("spawn vmrun")?;
    let wall = t.elapsed();
    if !st.success() {
        bail!(
            "vmrun run {id}: {st}; stderr:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(&timings)
            .with_context(|| format!("{} (VMRUN_TIMINGS not written)", timings.display()))?,
    )
    .context("timings JSON")?;
    let mut steps = Vec::new();
    for s in json["steps"].as_array().context("timings: no steps")? {
        let name = s["step"].as_str().context("step name")?.to_owned();
        let kind = s["kind"].as_str().context("step kind")?.to_owned();
        let us = s["us"].as_u64().context("step us")?;
        steps.push((name, kind, Duration::from_micros(us)));
    }
    std::fs::remove_file(&timings)?;
    std::fs::remove_file(&log)?;
    Ok(RunSample { wall, steps })
}

fn runc_run(runc_root: &Path, bundle: &Path, id: &str) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new("runc")
        .arg("--root")
        .arg(runc_root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .context("spawn runc (Debian package runc)")?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!(
            "runc run {id}: {}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(d)
}

async fn bench(runs: usize) -> Result<()> {
    let vmrun = vmrun_bin()?;
    let env = CliEnv::new("bench-run");
    let bundle = busybox_bundle(
        env.dir(),
        "bundle",
        &BundleOpts::new(&["/bin/true"]),
        |_| {},
    );
    let runc_root = env.dir().join("runc-root");
    std::fs::create_dir_all(&runc_root)?;
    let sb_root = env.dir().join("sandboxes");
    let cfg = host_config();

    let mut walls = Vec::new();
    let mut samples = Vec::new();
    let mut raw_ready = Vec::new();
    let mut runc = Vec::new();
    for i in 0..runs {
        let s = vmrun_run(&vmrun, &env, &bundle, &format!("bench{i}"))?;
        walls.push(s.wall);
        samples.push(s);

        let mut sb = Sandbox::start(SandboxConfig::new(&format!("r{i}"), &sb_root, &cfg))
            .await
            .context("sandbox start")?;
        raw_ready.push(sb.boot_to_ready().context("no boot_to_ready")?);
        sb.shutdown(Duration::from_secs(5)).await?;

        runc.push(runc_run(&runc_root, &bundle, &format!("bench{i}"))?);
        eprintln!(
            "run {i}: vmrun run {:?}, raw boot-to-ready {:?}, runc run {:?}",
            walls.last(),
            raw_ready.last(),
            runc.last()
        );
    }

    // Per step (in first-seen order) and per kind, one value per run.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut by_step: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut host = Vec::new();
    let mut host_no_teardown = Vec::new();
    let mut boot = Vec::new();
    let mut guest = Vec::new();
    let mut unaccounted = Vec::new();
    for s in &samples {
        let mut kinds: BTreeMap<&str, Duration> = BTreeMap::new();
        let mut teardown = Duration::ZERO;
        for (name, kind, d) in &s.steps {
            if !order.iter().any(|(n, _)| n == name) {
                order.push((name.clone(), kind.clone()));
            }
            by_step.entry(name.clone()).or_default().push(*d);
            *kinds.entry(kind.as_str()).or_default() += *d;
            if name == "sandbox.shutdown" {
                teardown += *d;
            }
        }
        let accounted: Duration = kinds.values().sum();
        let rest = s.wall.saturating_sub(accounted);
        unaccounted.push(rest);
        let h = kinds.get("host").copied().unwrap_or_default() + rest;
        host.push(h);
        host_no_teardown.push(h.saturating_sub(teardown));
        boot.push(kinds.get("boot").copied().unwrap_or_default());
        guest.push(kinds.get("guest").copied().unwrap_or_default());
    }

    let backend = "QEMU microvm, TCG, 1 vCPU (selected by the host config)";
    println!("\n### `vmrun run /bin/true` on {backend}, {runs} runs (ms)\n");
    println!("| measurement | median | min–max | n |");
    println!("|---|---|---|---|");
    let m_run = row("vmrun run /bin/true (wall, exec → exit)", &mut walls);
    let m_raw = row(
        "Sandbox::start boot-to-ready (hypervisor exec → Version answered)",
        &mut raw_ready,
    );
    let m_runc = row("runc run /bin/true, same bundle (wall)", &mut runc);
    println!(
        "\nratios (medians): vmrun run / runc run = {:.1}×, vmrun run / raw boot-to-ready = {:.2}×",
        m_run.as_secs_f64() / m_runc.as_secs_f64().max(1e-9),
        m_run.as_secs_f64() / m_raw.as_secs_f64().max(1e-9)
    );

    println!("\n### `vmrun run` by step (from VMRUN_TIMINGS, ms)\n");
    println!("| step | kind | median | min–max |");
    println!("|---|---|---|---|");
    for (name, kind) in &order {
        if let Some(v) = by_step.get_mut(name) {
            let (med, min, max) = stats(v);
            println!(
                "| {name} | {kind} | {:.1} | {:.1}–{:.1} |",
                ms(med),
                ms(min),
                ms(max)
            );
        }
    }
    let (m_rest, _, _) = stats(&mut unaccounted);
    println!(
        "| (unaccounted: exec, arguments, runtime start/stop) | host | {:.1} | |",
        ms(m_rest)
    );

    println!("\n### Totals per kind (median of per-run sums, ms)\n");
    println!("| kind | median | min–max | n |");
    println!("|---|---|---|---|");
    let m_host = row(
        "host-side work (incl. unaccounted, incl. teardown)",
        &mut host,
    );
    let m_host_nt = row(
        "host-side work without teardown (sandbox.shutdown)",
        &mut host_no_teardown,
    );
    let m_boot = row("guest boot to agent ready (in vmrun run)", &mut boot);
    let m_guest = row(
        "in-guest: agent RPCs, container create/start/exit",
        &mut guest,
    );
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / m_boot.as_secs_f64().max(1e-9);
    let verdict = |d: Duration| if pct(d) <= 15.0 { "met" } else { "NOT met" };
    println!(
        "\ntarget host-side ≤ 15% of boot-to-ready: with teardown {:.0}% ({}), without teardown \
         {:.0}% ({}); in-guest container time {:.0} ms = {:.0}% of boot-to-ready",
        pct(m_host),
        verdict(m_host),
        pct(m_host_nt),
        verdict(m_host_nt),
        ms(m_guest),
        pct(m_guest)
    );
    drop(env);
    Ok(())
}
