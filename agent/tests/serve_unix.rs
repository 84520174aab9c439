// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The agent in its host-side test mode (`vmrun-agent serve --unix PATH`): Version, Check and
//! Shutdown over a real ttrpc connection to the real binary.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vmrun_protocol::{agent, agent_ttrpc, health, health_ttrpc};

struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(tag: &str) -> (Agent, PathBuf) {
    let dir = std::env::temp_dir().join(format!("vmrun-agent-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the test directory");
    let sock = dir.join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vmrun-agent"))
        .args(["serve", "--unix"])
        .arg(&sock)
        .env("VMRUN_AGENT_LOG_LEVEL", "debug")
        .spawn()
        .expect("spawn vmrun-agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "agent did not listen on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Agent { child, dir }, sock)
}

#[tokio::test(flavor = "current_thread")]
async fn version_check_and_shutdown() {
    let (mut agent, sock) = spawn("health");
    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
        .await
        .unwrap();
    let h = health_ttrpc::HealthClient::new(client.clone());
    let ctx = || ttrpc::context::with_timeout(5_000_000_000);
    let v = h
        .version(ctx(), &health::CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(v.api_version, vmrun_protocol::API_VERSION);
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    let c = h.check(ctx(), &health::CheckRequest::new()).await.unwrap();
    assert!(c.ready_ms > 0);
    let names: Vec<&str> = c.checks.iter().map(|i| i.name.as_str()).collect();
    for want in [
        "namespace:pid",
        "namespace:user",
        "cgroup:memory",
        "mount:devpts",
        "fd:signalfd",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // A failed item carries its reason.
    assert!(c.checks.iter().all(|i| i.ok || !i.detail.is_empty()));

    let a = agent_ttrpc::AgentServiceClient::new(client);
    let err = a
        .update_routes(ctx(), &agent::UpdateRoutesRequest::new())
        .await
        .unwrap_err();
    // The network calls would rewrite the host's routes in this host-side mode: refused.
    assert!(
        format!("{err:?}").contains("FAILED_PRECONDITION"),
        "{err:?}"
    );
    a.shutdown(ctx(), &agent::ShutdownRequest::new())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            assert!(st.success(), "agent exited with {st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after Shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
