// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Drives the container RPCs of an agent running in a guest, over hybrid vsock.
//!
//! usage: guest_containers UDS ROOTFS_IN_GUEST
//!
//! Expects a booted guest whose agent listens on vsock 1024/1026 behind the hybrid-vsock Unix
//! socket `UDS`, and a busybox rootfs at `ROOTFS_IN_GUEST` inside the guest. Runs: output and
//! hostname, exit code 42, SIGKILL -> 137, exec, pids limit, memory limit -> OOM event,
//! stats, pause/resume, a tty with resize, then Shutdown. Prints one line per step and exits
//! non-zero on the first failure.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use vmrun_protocol::{agent, agent_ttrpc, health, health_ttrpc, StdioHeader, StdioStream};

async fn hv_connect(uds: &str, port: u32) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut s = UnixStream::connect(uds).await?;
            s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
            let mut line = Vec::new();
            loop {
                let b = s.read_u8().await?;
                line.push(b);
                if b == b'\n' {
                    break;
                }
            }
            ensure!(
                line.starts_with(b"OK "),
                "handshake answer {:?}",
                String::from_utf8_lossy(&line)
            );
            anyhow::Ok(s)
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(s)) => return Ok(s),
            _ if Instant::now() > deadline => bail!("cannot connect to vsock port {port}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn stream(
    uds: &str,
    id: &str,
    exec: Option<&str>,
    s: StdioStream,
) -> anyhow::Result<UnixStream> {
    let mut c = hv_connect(uds, vmrun_protocol::STDIO_PORT).await?;
    c.write_all(StdioHeader::new(id, exec, s)?.to_line().as_bytes())
        .await?;
    Ok(c)
}

async fn read_all(mut s: UnixStream) -> anyhow::Result<String> {
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut out))
        .await
        .context("stream read timed out")??;
    Ok(out)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(60_000_000_000)
}

fn spec(rootfs: &str, args: &[&str], linux_extra: serde_json::Value) -> Vec<u8> {
    let mut linux = serde_json::json!({
        "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}, {"type": "cgroup"}]
    });
    if let (Some(l), Some(extra)) = (linux.as_object_mut(), linux_extra.as_object()) {
        for (k, v) in extra {
            l.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": rootfs},
        "hostname": "inside-vm",
        "process": {"args": args, "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup", "options": ["ro", "nosuid", "nodev", "noexec"]}
        ],
        "linux": linux
    }))
    .unwrap_or_default()
}

struct Guest {
    uds: String,
    rootfs: String,
    c: agent_ttrpc::AgentServiceClient,
}

impl Guest {
    async fn run(
        &self,
        id: &str,
        args: &[&str],
        linux: serde_json::Value,
    ) -> anyhow::Result<(i32, String, String)> {
        let out = stream(&self.uds, id, None, StdioStream::Stdout).await?;
        let err = stream(&self.uds, id, None, StdioStream::Stderr).await?;
        let t = Instant::now();
        self.c
            .create_container(
                ctx(),
                &agent::CreateContainerRequest {
                    container_id: id.into(),
                    oci_spec: spec(&self.rootfs, args, linux),
                    stdio: protobuf::MessageField::some(agent::StdioStreams {
                        stdout: true,
                        stderr: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("create {id}"))?;
        let created = t.elapsed();
        self.c
            .start_container(
                ctx(),
                &agent::ContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await?;
        let w = self
            .c
            .wait_process(
                ctx(),
                &agent::WaitProcessRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await?;
        println!(
            "  {id}: create {} ms, create..exit {} ms",
            created.as_millis(),
            t.elapsed().as_millis()
        );
        let (o, e) = (read_all(out).await?, read_all(err).await?);
        self.c
            .remove_container(
                ctx(),
                &agent::RemoveContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await?;
        Ok((w.status, o, e))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [uds, rootfs] = args.as_slice() else {
        bail!("usage: guest_containers UDS ROOTFS_IN_GUEST")
    };
    let sock = hv_connect(uds, vmrun_protocol::AGENT_PORT).await?;
    let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::from(sock));
    let h = health_ttrpc::HealthClient::new(client.clone());
    let v = h.version(ctx(), &health::CheckRequest::new()).await?;
    println!(
        "agent {} api {} kernel {} seccomp {}",
        v.agent_version, v.api_version, v.kernel_release, v.seccomp
    );
    let g = Guest {
        uds: uds.clone(),
        rootfs: rootfs.clone(),
        c: agent_ttrpc::AgentServiceClient::new(client),
    };
    g.c.create_sandbox(
        ctx(),
        &agent::CreateSandboxRequest {
            hostname: "vmrun-guest".into(),
            ..Default::default()
        },
    )
    .await?;

    let (st, out, err) = g
        .run(
            "hello",
            &[
                "sh",
                "-c",
                "echo hello; hostname; cat /proc/self/cgroup; uname -r",
            ],
            serde_json::json!({}),
        )
        .await?;
    println!("PASS? hello: status {st} out {out:?} err {err:?}");
    ensure!(
        st == 0 && out.starts_with("hello\ninside-vm\n0::/\n"),
        "hello failed"
    );

    let (st, _, _) = g
        .run("exit42", &["sh", "-c", "exit 42"], serde_json::json!({}))
        .await?;
    ensure!(st == 42, "exit42 gave {st}");
    println!("PASS exit code 42");

    let (st, out, _) = g
        .run(
            "pids",
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done 2>&1; wait; echo done",
            ],
            serde_json::json!({"resources": {"pids": {"limit": 4}}}),
        )
        .await?;
    println!("pids limit 4: status {st} out {out:?}");
    ensure!(
        out.contains("can't fork")
            || out.contains("Resource temporarily unavailable")
            || out.contains("fork"),
        "pids limit not enforced"
    );
    println!("PASS pids limit");

    if v.seccomp {
        let seccomp = serde_json::json!({"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}});
        let (st, _, err) = g.run("seccomp", &["mkdir", "/tmp-x"], seccomp).await?;
        println!("seccomp mkdir: status {st} err {err:?}");
        ensure!(
            st != 0 && err.contains("Operation not permitted"),
            "seccomp not enforced"
        );
        println!("PASS seccomp denies mkdir");
    }

    // Memory limit -> OOM kill -> event.
    let oom_client = g.c.clone();
    let oom = tokio::spawn(async move {
        oom_client
            .get_oom_event(ctx(), &agent::GetOomEventRequest::new())
            .await
    });
    let (st, _, _) = g
        .run(
            "oom",
            &["sh", "-c", "x=a; while true; do x=$x$x; done"],
            serde_json::json!({"resources": {"memory": {"limit": 8388608}}}),
        )
        .await?;
    let ev = tokio::time::timeout(Duration::from_secs(10), oom)
        .await
        .context("no OOM event")???;
    println!("PASS oom: status {st}, event for {:?}", ev.container_id);
    ensure!(st == 137 && ev.container_id == "oom", "oom");

    // Long-running container: exec, stats, pause/resume, SIGTERM.
    let _o = stream(uds, "long", None, StdioStream::Stdout).await?;
    g.c.create_container(
        ctx(),
        &agent::CreateContainerRequest {
            container_id: "long".into(),
            oci_spec: spec(rootfs, &["sleep", "1000"], serde_json::json!({})),
            stdio: protobuf::MessageField::some(agent::StdioStreams {
                stdout: true,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await?;
    let cr = || agent::ContainerRequest {
        container_id: "long".into(),
        ..Default::default()
    };
    g.c.start_container(ctx(), &cr()).await?;
    let xo = stream(uds, "long", Some("e1"), StdioStream::Stdout).await?;
    g.c.exec_process(ctx(), &agent::ExecProcessRequest { container_id: "long".into(), exec_id: "e1".into(), process: serde_json::to_vec(&serde_json::json!({"args": ["sh", "-c", "echo from-exec; exit 3"], "env": ["PATH=/bin"], "cwd": "/"}))?, stdio: protobuf::MessageField::some(agent::StdioStreams { stdout: true, ..Default::default() }), ..Default::default() }).await?;
    let w =
        g.c.wait_process(
            ctx(),
            &agent::WaitProcessRequest {
                container_id: "long".into(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await?;
    let xout = read_all(xo).await?;
    ensure!(
        w.status == 3 && xout == "from-exec\n",
        "exec gave {} {xout:?}",
        w.status
    );
    println!("PASS exec");
    let s = g.c.stats_container(ctx(), &cr()).await?;
    println!(
        "PASS stats: cpu usage {} us, memory {} B, pids {}",
        s.cpu.usage_usec, s.memory.usage, s.pids.current
    );
    ensure!(s.pids.current >= 1, "stats");
    g.c.update_container(
        ctx(),
        &agent::UpdateContainerRequest {
            container_id: "long".into(),
            resources: br#"{"pids":{"limit":10}}"#.to_vec(),
            ..Default::default()
        },
    )
    .await?;
    let s = g.c.stats_container(ctx(), &cr()).await?;
    ensure!(
        s.pids.limit == 10,
        "update gave pids limit {}",
        s.pids.limit
    );
    println!("PASS update pids limit -> {}", s.pids.limit);
    g.c.pause_container(ctx(), &cr()).await?;
    g.c.resume_container(ctx(), &cr()).await?;
    println!("PASS pause/resume");
    g.c.signal_process(
        ctx(),
        &agent::SignalProcessRequest {
            container_id: "long".into(),
            signal: 9,
            ..Default::default()
        },
    )
    .await?;
    let w =
        g.c.wait_process(
            ctx(),
            &agent::WaitProcessRequest {
                container_id: "long".into(),
                ..Default::default()
            },
        )
        .await?;
    ensure!(w.status == 137, "SIGKILL gave {}", w.status);
    println!("PASS SIGKILL -> 137");
    g.c.remove_container(ctx(), &cr().into_remove()).await?;

    // Terminal with resize.
    let mut tty = stream(uds, "tty", None, StdioStream::Tty).await?;
    g.c.create_container(
        ctx(),
        &agent::CreateContainerRequest {
            container_id: "tty".into(),
            oci_spec: spec(
                rootfs,
                &["sh", "-c", "tty; stty size; read x; echo got:$x"],
                serde_json::json!({}),
            ),
            terminal: true,
            ..Default::default()
        },
    )
    .await?;
    g.c.resize_tty(
        ctx(),
        &agent::ResizeTtyRequest {
            container_id: "tty".into(),
            rows: 33,
            cols: 77,
            ..Default::default()
        },
    )
    .await?;
    g.c.start_container(
        ctx(),
        &agent::ContainerRequest {
            container_id: "tty".into(),
            ..Default::default()
        },
    )
    .await?;
    tty.write_all(b"abc\n").await?;
    let w =
        g.c.wait_process(
            ctx(),
            &agent::WaitProcessRequest {
                container_id: "tty".into(),
                ..Default::default()
            },
        )
        .await?;
    let mut out = String::new();
    let mut r = BufReader::new(tty);
    while tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut out))
        .await
        .is_ok_and(|r| r.is_ok_and(|n| n > 0))
    {}
    println!("tty: status {} out {out:?}", w.status);
    ensure!(out.contains("33 77") && out.contains("got:abc"), "tty");
    println!("PASS tty + resize");
    g.c.remove_container(
        ctx(),
        &agent::ContainerRequest {
            container_id: "tty".into(),
            ..Default::default()
        }
        .into_remove(),
    )
    .await?;

    g.c.shutdown(ctx(), &agent::ShutdownRequest::new()).await?;
    println!("ALL PASS");
    Ok(())
}

trait IntoRemove {
    fn into_remove(self) -> agent::RemoveContainerRequest;
}

impl IntoRemove for agent::ContainerRequest {
    fn into_remove(self) -> agent::RemoveContainerRequest {
        agent::RemoveContainerRequest {
            container_id: self.container_id,
            ..Default::default()
        }
    }
}
