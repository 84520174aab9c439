// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Pod network benchmark (issue 8 item 6), all in one run. The same server container (busybox
//! httpd on 8081 and Debian's iperf3 on 5201, with its shared libraries copied into the busybox
//! rootfs) is started twice, each time joining a test "pod" network namespace whose veth leads
//! to a "peer" namespace (`vmrun_tests::net::TestNet`):
//! - by `vmrun` (the container runs in a microVM; the veth is plumbed to a tap by tc mirred);
//! - by `runc` (the container runs in the pod namespace itself).
//!
//! From the peer namespace it measures TCP throughput with `iperf3 -c` (peer -> container and,
//! with `-R`, container -> peer) and HTTP request latency: connect, `GET /`, read to the end,
//! from a thread of this process that entered the peer namespace (no process spawn per request).
//!
//! usage: bench-net [SECONDS] [REQUESTS]   (default 5 s per iperf3 run, 200 requests)
//! Needs root, iproute2, iperf3, runc, the guest artifacts (VMRUN_ARTIFACTS) and `vmrun` next to
//! this binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use vmrun_tests::cli::{busybox_bundle, text, BundleOpts, CliEnv};
use vmrun_tests::net::{join_netns, TestNet, POD_IP};

const SERVER_SCRIPT: &str = "mkdir -p /tmp/www && echo pong > /tmp/www/index.html && \
    httpd -p 8081 -h /tmp/www && exec iperf3 -s -p 5201";

struct Results {
    up_gbps: f64,
    down_gbps: f64,
    lat_med: Duration,
    lat_p99: Duration,
    lat_n: usize,
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: u32 = args
        .next()
        .map_or(Ok(5), |s| s.parse())
        .context("SECONDS must be a number")?;
    let requests: usize = args
        .next()
        .map_or(Ok(200), |s| s.parse())
        .context("REQUESTS must be a number")?;
    if secs == 0 || requests == 0 {
        bail!("SECONDS and REQUESTS must be at least 1");
    }
    let iperf3 = which("iperf3").context("iperf3 is not installed (scripts/setup installs it)")?;

    let env = CliEnv::new("benchnet");
    let b = busybox_bundle(
        env.dir(),
        "b",
        &{
            let mut o = BundleOpts::new(&["sh", "-c", SERVER_SCRIPT]);
            o.pid_namespace = false;
            o
        },
        |_| {},
    );
    copy_with_libs(&iperf3, &b.join("rootfs"))?;

    let vm = {
        let net = TestNet::new("benchvm");
        set_netns(&b, &net.pod_path())?;
        let out = env.create(&b, "bn1");
        if !out.status.success() {
            bail!("vmrun create: {}", text(&out.stderr));
        }
        let st = env.run(&["start", "bn1"], Duration::from_secs(60));
        if !st.status.success() {
            bail!("vmrun start: {}", text(&st.stderr));
        }
        let r = measure(&net, secs, requests);
        let _ = env.run(&["delete", "--force", "bn1"], Duration::from_secs(60));
        r?
    };

    let runc = {
        let net = TestNet::new("benchrunc");
        set_netns(&b, &net.pod_path())?;
        let root = env.dir().join("runc-root");
        std::fs::create_dir_all(&root)?;
        let st = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["run", "-d", "--bundle"])
            .arg(&b)
            .arg("bnr1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("runc (Debian package runc)")?;
        if !st.success() {
            bail!("runc run -d failed: {st}");
        }
        let r = measure(&net, secs, requests);
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", "bnr1"])
            .status();
        r?
    };

    println!("\npod network: peer namespace <-> server container in the pod namespace");
    println!("iperf3 {secs} s per direction, {requests} HTTP requests (connect + GET + read)\n");
    println!("| path | TCP peer->container (Gbit/s) | TCP container->peer (Gbit/s) | HTTP latency median (ms) | p99 (ms) | n |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in [
        ("vmrun (QEMU microVM, tap + tc mirred)", &vm),
        ("runc (container in the pod netns)", &runc),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            r.up_gbps,
            r.down_gbps,
            r.lat_med.as_secs_f64() * 1e3,
            r.lat_p99.as_secs_f64() * 1e3,
            r.lat_n
        );
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Points the bundle's network namespace at `path`.
fn set_netns(bundle: &Path, path: &Path) -> Result<()> {
    let cfg = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&cfg)?)?;
    join_netns(&mut spec, path);
    std::fs::write(&cfg, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// Copies a dynamically linked binary and every library `ldd` lists into `rootfs` (same paths).
fn copy_with_libs(bin: &Path, rootfs: &Path) -> Result<()> {
    let out = Command::new("ldd").arg(bin).output().context("ldd")?;
    let mut files = vec![bin.to_path_buf()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            files.push(p);
        }
    }
    for f in files {
        let real = f.canonicalize()?;
        let dest = rootfs.join(f.strip_prefix("/")?);
        std::fs::create_dir_all(dest.parent().context("parent")?)?;
        std::fs::copy(&real, &dest).with_context(|| format!("copy {}", f.display()))?;
    }
    // Debian's iperf3 lives in /usr/bin; the busybox PATH has /usr/bin too.
    Ok(())
}

fn measure(net: &TestNet, secs: u32, requests: usize) -> Result<Results> {
    // Wait for the server (the VM boots first).
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if net
            .peer_get(POD_IP, 8081, "/", Duration::from_secs(5))
            .is_some()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the server container never answered on {POD_IP}:8081");
        }
    }
    let up = iperf(net, secs, false)?;
    let down = iperf(net, secs, true)?;
    let mut lat = http_latency(net, requests)?;
    lat.sort();
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    Ok(Results {
        up_gbps: up,
        down_gbps: down,
        lat_med: lat[lat.len() / 2],
        lat_p99: p99,
        lat_n: lat.len(),
    })
}

fn iperf(net: &TestNet, secs: u32, reverse: bool) -> Result<f64> {
    let mut args = vec!["iperf3", "-c", POD_IP, "-p", "5201", "-J"];
    let t = secs.to_string();
    args.extend(["-t", &t]);
    if reverse {
        args.push("-R");
    }
    let mut last = String::new();
    for _ in 0..5 {
        let out = net.in_peer(&args).output().context("iperf3 -c")?;
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = json
            .pointer("/end/sum_received/bits_per_second")
            .and_then(Value::as_f64)
        {
            return Ok(bps / 1e9);
        }
        // The server may still be busy with the previous test.
        last = format!("{}{}", text(&out.stdout), text(&out.stderr));
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("iperf3 failed: {last}")
}

fn http_latency(net: &TestNet, n: usize) -> Result<Vec<Duration>> {
    let ns = std::fs::File::open(Path::new("/run/netns").join(&net.peer))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<Duration>> {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            let addr = format!("{POD_IP}:8081");
            let mut v = Vec::with_capacity(n);
            let mut buf = Vec::new();
            for _ in 0..n {
                let t = Instant::now();
                let mut c = TcpStream::connect(&addr)?;
                c.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")?;
                buf.clear();
                c.read_to_end(&mut buf)?;
                v.push(t.elapsed());
                if !buf.ends_with(b"pong\n") {
                    bail!("unexpected answer: {}", String::from_utf8_lossy(&buf));
                }
            }
            Ok(v)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("latency thread panicked"))?
    })
}
