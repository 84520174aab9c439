// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! A small host-side client of the agent, for manual checks and the boot test.
//!
//! usage: agent_client (--hvsock UDS | --unix PATH) [version|check|shutdown]...
//!
//! `--hvsock` speaks the hybrid-vsock handshake (`CONNECT 1024\n`, wait for `OK `) on the VMM's
//! (or vhost-device-vsock's) Unix socket; `--unix` connects to the test mode's socket directly.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use ttrpc::context;
use vmrun_protocol::{agent, agent_ttrpc, health, health_ttrpc};

async fn connect_hvsock(uds: &str, port: u32, deadline: Instant) -> anyhow::Result<UnixStream> {
    loop {
        let attempt = async {
            let mut s = UnixStream::connect(uds).await?;
            s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
            let mut r = BufReader::new(&mut s);
            let mut line = String::new();
            r.read_line(&mut line).await?;
            if !line.starts_with("OK ") {
                anyhow::bail!("handshake answer {line:?}");
            }
            anyhow::Ok(s)
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) if Instant::now() >= deadline => return Err(e),
            Err(_) if Instant::now() >= deadline => bail!("handshake timed out"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (stream, cmds) = match args.as_slice() {
        [flag, path, rest @ ..] if flag == "--hvsock" => {
            let deadline = Instant::now() + Duration::from_secs(30);
            (
                connect_hvsock(path, vmrun_protocol::AGENT_PORT, deadline).await?,
                rest,
            )
        }
        [flag, path, rest @ ..] if flag == "--unix" => (
            UnixStream::connect(path)
                .await
                .with_context(|| format!("connect {path}"))?,
            rest,
        ),
        _ => bail!("usage: agent_client (--hvsock UDS | --unix PATH) [version|check|shutdown]..."),
    };
    let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::from(stream));
    let health = health_ttrpc::HealthClient::new(client.clone());
    let agent = agent_ttrpc::AgentServiceClient::new(client);
    let ctx = || context::with_timeout(10_000_000_000);
    for cmd in cmds {
        match cmd.as_str() {
            "version" => {
                let t = Instant::now();
                let v = health.version(ctx(), &health::CheckRequest::new()).await?;
                println!(
                    "version: agent {} api {} kernel {} seccomp {} ({} us)",
                    v.agent_version,
                    v.api_version,
                    v.kernel_release,
                    v.seccomp,
                    t.elapsed().as_micros()
                );
                if v.api_version != vmrun_protocol::API_VERSION {
                    bail!(
                        "agent speaks api {} but this client {}",
                        v.api_version,
                        vmrun_protocol::API_VERSION
                    );
                }
            }
            "check" => {
                let c = health.check(ctx(), &health::CheckRequest::new()).await?;
                println!(
                    "check: {:?} ready_ms {}",
                    c.status.enum_value_or_default(),
                    c.ready_ms
                );
                for i in &c.checks {
                    println!(
                        "  {:<18} {} {}",
                        i.name,
                        if i.ok { "ok" } else { "MISSING" },
                        i.detail
                    );
                }
            }
            "shutdown" => {
                agent
                    .shutdown(ctx(), &agent::ShutdownRequest::new())
                    .await?;
                println!("shutdown: accepted");
            }
            other => bail!("unknown command {other:?}"),
        }
    }
    Ok(())
}
