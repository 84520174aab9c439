// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The container RPCs against the real agent binary in test mode, as root, inside
//! `unshare -m -p -f` with cgroup v2 mounted at /sys/fs/cgroup in that private mount namespace
//! (the agent is PID 1 there, as in the guest). The rootfs is Debian's static busybox.
//!
//! Skips (with the reason printed) when not root or when busybox/unshare are missing. Host
//! cgroups here are v1, so cgroup limits are tested in the guest, not here.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vmrun_protocol::{agent, agent_ttrpc, StdioHeader, StdioStream};

struct Agent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of the unshare child we spawned.
        unsafe { libc::kill(-i32::try_from(self.child.id()).unwrap_or(0), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for b in ["/bin/busybox", "/usr/bin/unshare"] {
        if !Path::new(b).exists() {
            return Some(format!("{b} missing"));
        }
    }
    None
}

fn make_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "echo", "cat", "id", "hostname", "sleep", "true", "tty", "stty", "ls", "mkdir",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nextra:x:1234:nobody\nnogroup:x:65534:\n",
    )
    .expect("group");
    rootfs
}

fn spawn(tag: &str) -> Agent {
    let dir = std::env::temp_dir().join(format!("vmrun-agent-ct-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let sock = dir.join("agent.sock");
    let script = format!(
        "mount -t cgroup2 none /sys/fs/cgroup && exec {} serve --unix {}",
        env!("CARGO_BIN_EXE_vmrun-agent"),
        sock.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "-p", "-f", "--mount-proc", "sh", "-c", &script]);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("spawn unshare");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Agent { child, dir, sock }
}

fn spec(rootfs: &Path, args: &[&str], extra: serde_json::Value) -> Vec<u8> {
    let mut s = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": false},
        "hostname": "ct",
        "process": {
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"],
                "effective": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"],
                "permitted": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"]
            }
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]
        }
    });
    if let (Some(obj), Some(more)) = (s.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            obj.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&s).expect("json")
}

fn stream(a: &Agent, id: &str, exec: Option<&str>, s: StdioStream) -> UnixStream {
    let mut c = UnixStream::connect(format!("{}.stdio", a.sock.display())).expect("connect stdio");
    let h = StdioHeader::new(id, exec, s).expect("header");
    c.write_all(h.to_line().as_bytes()).expect("write header");
    c
}

fn read_all(mut s: UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read stream");
    out
}

async fn client(a: &Agent) -> agent_ttrpc::AgentServiceClient {
    let c = ttrpc::r#async::Client::connect(&format!("unix://{}", a.sock.display()))
        .await
        .expect("connect agent");
    agent_ttrpc::AgentServiceClient::new(c)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(30_000_000_000)
}

fn streams(stdin: bool) -> protobuf::MessageField<agent::StdioStreams> {
    protobuf::MessageField::some(agent::StdioStreams {
        stdin,
        stdout: true,
        stderr: true,
        ..Default::default()
    })
}

async fn create(
    c: &agent_ttrpc::AgentServiceClient,
    id: &str,
    spec: Vec<u8>,
    stdin: bool,
) -> ttrpc::Result<u32> {
    let r = c
        .create_container(
            ctx(),
            &agent::CreateContainerRequest {
                container_id: id.into(),
                oci_spec: spec,
                stdio: streams(stdin),
                ..Default::default()
            },
        )
        .await?;
    Ok(r.pid)
}

async fn start_wait(c: &agent_ttrpc::AgentServiceClient, id: &str) -> i32 {
    c.start_container(
        ctx(),
        &agent::ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await
    .expect("start");
    c.wait_process(
        ctx(),
        &agent::WaitProcessRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await
    .expect("wait")
    .status
}

async fn remove(
    c: &agent_ttrpc::AgentServiceClient,
    id: &str,
    force: bool,
) -> ttrpc::Result<agent::Empty> {
    c.remove_container(
        ctx(),
        &agent::RemoveContainerRequest {
            container_id: id.into(),
            force,
            ..Default::default()
        },
    )
    .await
}

fn code(e: &ttrpc::Error) -> String {
    format!("{e:?}")
}

#[tokio::test(flavor = "current_thread")]
async fn container_lifecycle_stdio_exit_codes_and_errors() {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let a = spawn("life");
    let rootfs = make_rootfs(&a.dir);
    let c = client(&a).await;

    // Output, hostname, user lookup, exit code 0.
    let out = stream(&a, "c1", None, StdioStream::Stdout);
    let err = stream(&a, "c1", None, StdioStream::Stderr);
    let pid = create(
        &c,
        "c1",
        spec(
            &rootfs,
            &[
                "sh",
                "-c",
                "echo hello; hostname; echo $HOME; echo oops >&2",
            ],
            serde_json::json!({}),
        ),
        false,
    )
    .await
    .expect("create c1");
    assert!(pid > 1);
    assert_eq!(start_wait(&c, "c1").await, 0);
    assert_eq!(read_all(out), "hello\nct\n/root\n");
    assert_eq!(read_all(err), "oops\n");
    // Second start of the same container: wrong state.
    let e = c
        .start_container(
            ctx(),
            &agent::ContainerRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(code(&e).contains("FAILED_PRECONDITION"), "{e:?}");
    remove(&c, "c1", false).await.expect("remove stopped c1");

    // Exit code 42 and stdin piped through.
    let inp = stream(&a, "c2", None, StdioStream::Stdin);
    let out = stream(&a, "c2", None, StdioStream::Stdout);
    let _err = stream(&a, "c2", None, StdioStream::Stderr);
    create(
        &c,
        "c2",
        spec(
            &rootfs,
            &["sh", "-c", "cat; exit 42"],
            serde_json::json!({}),
        ),
        true,
    )
    .await
    .expect("create c2");
    let mut inp = inp;
    inp.write_all(b"piped input\n").expect("write stdin");
    drop(inp);
    assert_eq!(start_wait(&c, "c2").await, 42);
    assert_eq!(read_all(out), "piped input\n");
    remove(&c, "c2", false).await.expect("remove c2");

    // SIGKILL -> 137 (an init in its own pid namespace ignores an unhandled SIGTERM, as
    // under runc); exec in a running container; list processes; remove needs force.
    let _o = stream(&a, "c3", None, StdioStream::Stdout);
    let _e = stream(&a, "c3", None, StdioStream::Stderr);
    create(
        &c,
        "c3",
        spec(&rootfs, &["sleep", "100"], serde_json::json!({})),
        false,
    )
    .await
    .expect("create c3");
    c.start_container(
        ctx(),
        &agent::ContainerRequest {
            container_id: "c3".into(),
            ..Default::default()
        },
    )
    .await
    .expect("start c3");
    let xo = stream(&a, "c3", Some("x1"), StdioStream::Stdout);
    let _xe = stream(&a, "c3", Some("x1"), StdioStream::Stderr);
    let proc_json = serde_json::json!({"args": ["sh", "-c", "id -u; exit 7"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 65534, "gid": 65534}});
    c.exec_process(
        ctx(),
        &agent::ExecProcessRequest {
            container_id: "c3".into(),
            exec_id: "x1".into(),
            process: serde_json::to_vec(&proc_json).expect("json"),
            stdio: streams(false),
            ..Default::default()
        },
    )
    .await
    .expect("exec");
    let w = c
        .wait_process(
            ctx(),
            &agent::WaitProcessRequest {
                container_id: "c3".into(),
                exec_id: "x1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("wait exec");
    assert_eq!(w.status, 7);
    assert_eq!(read_all(xo), "65534\n");
    let ps = c
        .list_processes(
            ctx(),
            &agent::ContainerRequest {
                container_id: "c3".into(),
                ..Default::default()
            },
        )
        .await
        .expect("ps");
    assert!(!ps.pids.is_empty());
    let e = remove(&c, "c3", false).await.unwrap_err();
    assert!(code(&e).contains("FAILED_PRECONDITION"), "{e:?}");
    c.signal_process(
        ctx(),
        &agent::SignalProcessRequest {
            container_id: "c3".into(),
            signal: 9,
            ..Default::default()
        },
    )
    .await
    .expect("kill");
    let w = c
        .wait_process(
            ctx(),
            &agent::WaitProcessRequest {
                container_id: "c3".into(),
                ..Default::default()
            },
        )
        .await
        .expect("wait c3");
    assert_eq!(w.status, 137);
    remove(&c, "c3", false).await.expect("remove c3");

    // Bad input: unknown id, duplicate id, missing rootfs, empty args, bad signal.
    let e = c
        .start_container(
            ctx(),
            &agent::ContainerRequest {
                container_id: "nope".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(code(&e).contains("NOT_FOUND"), "{e:?}");
    let _o = stream(&a, "c4", None, StdioStream::Stdout);
    let _e = stream(&a, "c4", None, StdioStream::Stderr);
    create(
        &c,
        "c4",
        spec(&rootfs, &["sleep", "100"], serde_json::json!({})),
        false,
    )
    .await
    .expect("create c4");
    let e = create(
        &c,
        "c4",
        spec(&rootfs, &["true"], serde_json::json!({})),
        false,
    )
    .await
    .unwrap_err();
    assert!(code(&e).contains("ALREADY_EXISTS"), "{e:?}");
    let e = c
        .signal_process(
            ctx(),
            &agent::SignalProcessRequest {
                container_id: "c4".into(),
                signal: 99,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(code(&e).contains("INVALID_ARGUMENT"), "{e:?}");
    // A created (not started) container is removed without force, its init killed.
    remove(&c, "c4", false).await.expect("remove created c4");
    let e = create(
        &c,
        "c5",
        spec(
            Path::new("/nonexistent/rootfs"),
            &["true"],
            serde_json::json!({}),
        ),
        false,
    )
    .await
    .unwrap_err();
    assert!(code(&e).contains("does not exist"), "{e:?}");
    let e = create(&c, "c5", spec(&rootfs, &[], serde_json::json!({})), false)
        .await
        .unwrap_err();
    assert!(code(&e).contains("process.args"), "{e:?}");
    // A binary missing from the rootfs: a clear error, and the id is free again afterwards.
    let e = create(
        &c,
        "c5",
        spec(&rootfs, &["/bin/nonexistent"], serde_json::json!({})),
        false,
    )
    .await
    .unwrap_err();
    println!("missing binary: {e:?}");
    assert!(!a.dir.join("agent.sock.d/bundles/c5").exists());
}

#[tokio::test(flavor = "current_thread")]
async fn terminal_with_resize() {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let a = spawn("tty");
    let rootfs = make_rootfs(&a.dir);
    let c = client(&a).await;
    let tty = stream(&a, "t1", None, StdioStream::Tty);
    c.create_container(
        ctx(),
        &agent::CreateContainerRequest {
            container_id: "t1".into(),
            oci_spec: spec(
                &rootfs,
                &["sh", "-c", "tty; stty size"],
                serde_json::json!({}),
            ),
            terminal: true,
            ..Default::default()
        },
    )
    .await
    .expect("create t1");
    c.resize_tty(
        ctx(),
        &agent::ResizeTtyRequest {
            container_id: "t1".into(),
            rows: 40,
            cols: 100,
            ..Default::default()
        },
    )
    .await
    .expect("resize");
    assert_eq!(start_wait(&c, "t1").await, 0);
    let out = read_all(tty);
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("40 100"), "{out:?}");
    remove(&c, "t1", false).await.expect("remove t1");
}
