// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Sandbox boot benchmark on the selected backend (QEMU/TCG on a PVM host), in one run:
//! - baseline: raw QEMU (same machine options, same bzImage) booting a busybox initramfs to
//!   `/init`, which prints a marker; time from exec to the marker on the serial console;
//! - vmrun: `Sandbox::start` to the agent's Version answer (boot-to-ready), the whole `start`,
//!   and `shutdown`;
//! - the agent's RSS in the guest: one boot where a busybox `/init` runs the agent as PID 1 of
//!   a child PID namespace and reads its `VmRSS` from `/proc` after the host's Check/Version;
//! - kernel, initramfs and agent sizes.
//!
//! usage: bench-sandbox [RUNS]   (artifacts from VMRUN_ARTIFACTS, default target/artifacts)

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmrun_runtime::sandbox::{Sandbox, SandboxConfig};
use vmrun_tests::sandbox::{busybox_initramfs, busybox_initramfs_with, host_config, TestRoot};
use vmrun_tests::{artifact, artifacts_dir};

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(Ok(5), |s| s.parse())
        .context("RUNS")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(runs))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn row(name: &str, v: &mut [Duration]) -> String {
    let m = median(v);
    let min = v.first().copied().unwrap_or_default();
    let max = v.last().copied().unwrap_or_default();
    format!(
        "| {name} | {:.0} | {:.0}–{:.0} | {} |",
        m.as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        v.len()
    )
}

async fn bench(runs: usize) -> Result<()> {
    let root = TestRoot::new("bench");
    let cfg = host_config();
    let bzimage = artifact("bzImage");
    let marker = "vmrun-bench: init reached";
    let baseline_initrd = busybox_initramfs(
        root.path(),
        &format!("echo {marker}\n/bin/busybox reboot -f"),
    );

    let mut raw = Vec::new();
    let mut raw_failures = 0_usize;
    let mut ready = Vec::new();
    let mut start = Vec::new();
    let mut stop = Vec::new();
    let mut guest_ready_ms = Vec::new();
    for i in 0..runs {
        // Baseline: raw QEMU to /init.
        let t = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=off",
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-m",
                "256M",
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
                "-kernel",
            ])
            .arg(&bzimage)
            .arg("-initrd")
            .arg(&baseline_initrd)
            .args([
                "-append",
                "console=ttyS0 reboot=t panic=-1 no_timer_check quiet",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("start qemu")?;
        let out = child.stdout.take().context("qemu stdout")?;
        let mut seen = None;
        let mut console = Vec::new();
        for line in BufReader::new(out).lines() {
            let line = line?;
            if line.contains(marker) && seen.is_none() {
                seen = Some(t.elapsed());
            }
            console.push(line);
        }
        let st = child.wait()?;
        match seen {
            Some(d) => raw.push(d),
            None => {
                // Reported, not hidden: the table's n shows how many baseline boots counted.
                eprintln!(
                    "baseline boot {i} never reached /init ({st}); console:\n{}",
                    console.join("\n")
                );
                raw_failures += 1;
            }
        }

        // vmrun sandbox.
        let t = Instant::now();
        let mut sb = Sandbox::start(SandboxConfig::new(&format!("b{i}"), root.path(), &cfg))
            .await
            .context("sandbox start")?;
        start.push(t.elapsed());
        ready.push(sb.boot_to_ready().unwrap_or_default());
        let check = sb.agent()?.check().await?;
        guest_ready_ms.push(Duration::from_millis(check.ready_ms));
        let t = Instant::now();
        let r = sb.shutdown(Duration::from_secs(5)).await?;
        stop.push(t.elapsed());
        if r.exit != vmrun_runtime::hypervisor::VmExit::Clean {
            bail!("sandbox {i} did not stop cleanly: {r}");
        }
        eprintln!("run {i}: raw {:?}, ready {:?}", raw.last(), ready.last());
    }

    // Agent RSS: the agent as PID 1 of a child PID namespace, observed from the outer init.
    let agent_bin = artifacts_dir().join("vmrun-agent");
    let rss = if agent_bin.exists() {
        let script = "/bin/busybox mkdir -p /proc /dev /sys /run /tmp\n\
            /bin/busybox mount -t devtmpfs dev /dev\n\
            /bin/busybox mount -t proc proc /proc\n\
            /bin/busybox unshare -p -f -m /vmrun-agent &\n\
            i=0; while [ $i -lt 60 ]; do i=$((i+1)); /bin/busybox sleep 1;\n\
              for p in /proc/[0-9]*; do\n\
                if [ \"$(/bin/busybox cat $p/comm 2>/dev/null)\" = vmrun-agent ]; then\n\
                  echo \"AGENT-RSS $(/bin/busybox grep VmRSS $p/status)\"; fi; done; done\n\
            /bin/busybox sleep 100000";
        let rss_dir = root.path().join("rss-initramfs");
        std::fs::create_dir_all(&rss_dir)?;
        let initrd = busybox_initramfs_with(&rss_dir, script, &[(&agent_bin, "/vmrun-agent")]);
        let mut c = SandboxConfig::new("rss", root.path(), &cfg);
        c.host.artifacts.initrd = Some(initrd);
        c.settings.boot_timeout_secs = 40;
        let sb = Sandbox::start(c).await.context("rss sandbox")?;
        let _ = sb.agent()?.check().await?;
        let _ = sb.agent()?.version().await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let console = std::fs::read_to_string(&sb.paths().console_log)?;
        drop(sb);
        std::fs::remove_dir_all(&rss_dir)?;
        console
            .lines()
            .rev()
            .find(|l| l.starts_with("AGENT-RSS"))
            .map(|l| l.trim_start_matches("AGENT-RSS").trim().to_owned())
            .unwrap_or_else(|| "not measured (no AGENT-RSS line)".to_owned())
    } else {
        format!("not measured ({} missing)", agent_bin.display())
    };
    std::fs::remove_file(&baseline_initrd)?;

    let size = |name: &str| {
        std::fs::metadata(artifacts_dir().join(name))
            .map(|m| format!("{:.2} MiB", m.len() as f64 / 1048576.0))
            .unwrap_or_else(|_| "missing".to_owned())
    };
    let backend = "QEMU microvm, TCG, 1 vCPU, 256 MiB";
    println!("\n### Sandbox boot on {backend}, {runs} runs (ms)\n");
    println!("| measurement | median | min–max | n |");
    println!("|---|---|---|---|");
    println!(
        "{}",
        row(
            "raw QEMU, same kernel, busybox /init: exec → /init prints",
            &mut raw
        )
    );
    println!(
        "{}",
        row(
            "vmrun: hypervisor exec → agent Version answered (boot-to-ready)",
            &mut ready
        )
    );
    println!(
        "{}",
        row(
            "vmrun: Sandbox::start total (dir, daemons, boot, Version+Check)",
            &mut start
        )
    );
    println!(
        "{}",
        row(
            "guest: kernel start → agent listening (agent's ready_ms)",
            &mut guest_ready_ms
        )
    );
    println!(
        "{}",
        row(
            "vmrun: shutdown (Shutdown rpc → QEMU exit 65 → teardown)",
            &mut stop
        )
    );
    println!("\n| artifact | size |\n|---|---|");
    for a in ["bzImage", "vmlinux", "initramfs.cpio", "vmrun-agent"] {
        println!("| {a} | {} |", size(a));
    }
    if raw_failures > 0 {
        println!("\nbaseline boots that never reached /init: {raw_failures} of {runs}");
    }
    println!("\nagent RSS in the guest (after Check/Version): {rss}");
    Ok(())
}
