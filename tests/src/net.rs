// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Network test hosts: a "pod" network namespace with a veth to a "peer" namespace, as a CNI
//! plugin would leave it, created and deleted by the test.
//!
//! Every address, route and neighbour lives only inside these two namespaces (the same fixed
//! subnet in every pair is fine: each pair is its own world), nothing is routed anywhere else.
//! Names include the test tag and the process id, so concurrent test binaries do not collide.
//! The harness uses `ip`/`tc` (iproute2) to build and inspect the world; the runtime under test
//! uses netlink only.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The pod side's address.
pub const POD_IP: &str = "10.200.0.2";
/// The peer's address (the pod's default gateway).
pub const PEER_IP: &str = "10.200.0.1";
/// The prefix length of the link.
pub const PREFIX: u32 = 24;
/// The link MTU (not 1500, so that a match is not a coincidence).
pub const MTU: u32 = 1400;
/// An extra route of the pod namespace, through the peer.
pub const EXTRA_ROUTE: &str = "10.99.0.0/16";
/// The pod side's IPv6 address (the link is dual-stack).
pub const POD_IP6: &str = "fd00:200::2";
/// The peer's IPv6 address.
pub const PEER_IP6: &str = "fd00:200::1";
/// The IPv6 prefix length of the link.
pub const PREFIX6: u32 = 64;
/// An extra IPv6 route of the pod namespace, through the peer.
pub const EXTRA_ROUTE6: &str = "fd00:99::/48";
/// A permanent neighbour entry of the pod namespace.
pub const NEIGH_IP: &str = "10.200.0.5";
/// Its MAC.
pub const NEIGH_MAC: &str = "02:00:00:00:aa:05";
/// The pod interface's MAC (fixed, so the guest's can be checked).
pub const POD_MAC: &str = "02:00:00:c0:de:02";

/// A pod namespace and a peer namespace joined by a veth; deleted on drop.
#[derive(Debug)]
pub struct TestNet {
    /// The pod namespace's name (`/run/netns/<pod>`).
    pub pod: String,
    /// The peer namespace's name.
    pub peer: String,
}

/// Runs `ip <args>` and panics with its stderr on failure.
pub fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl TestNet {
    /// Creates the namespaces: in the pod, `eth0` (MAC [`POD_MAC`], [`POD_IP`]/24 and
    /// [`POD_IP6`]/64, MTU [`MTU`]), default route and [`EXTRA_ROUTE`] via [`PEER_IP`],
    /// [`EXTRA_ROUTE6`] via [`PEER_IP6`], a permanent neighbour; in the peer, `eth0` with
    /// [`PEER_IP`]/24, [`PEER_IP6`]/64 and loopback.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = format!("vmrun-net-{tag}-{}-{n}", std::process::id());
        let net = Self {
            pod: format!("{base}-pod"),
            peer: format!("{base}-peer"),
        };
        ip(&["netns", "add", &net.pod]);
        ip(&["netns", "add", &net.peer]);
        let (pod, peer) = (net.pod.as_str(), net.peer.as_str());
        let mtu = MTU.to_string();
        let pod_cidr = format!("{POD_IP}/{PREFIX}");
        let peer_cidr = format!("{PEER_IP}/{PREFIX}");
        ip(&[
            "-n", pod, "link", "add", "eth0", "address", POD_MAC, "mtu", &mtu, "type", "veth",
            "peer", "name", "eth0", "netns", peer, "mtu", &mtu,
        ]);
        ip(&["-n", pod, "addr", "add", &pod_cidr, "dev", "eth0"]);
        ip(&["-n", pod, "link", "set", "lo", "up"]);
        ip(&["-n", pod, "link", "set", "eth0", "up"]);
        ip(&[
            "-n", pod, "route", "add", "default", "via", PEER_IP, "dev", "eth0",
        ]);
        ip(&[
            "-n",
            pod,
            "route",
            "add",
            EXTRA_ROUTE,
            "via",
            PEER_IP,
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            pod,
            "neigh",
            "add",
            NEIGH_IP,
            "lladdr",
            NEIGH_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        // IPv6 without duplicate address detection, so the addresses are usable at once.
        let pod6 = format!("{POD_IP6}/{PREFIX6}");
        let peer6 = format!("{PEER_IP6}/{PREFIX6}");
        ip(&["-n", pod, "addr", "add", &pod6, "dev", "eth0", "nodad"]);
        ip(&[
            "-n",
            pod,
            "-6",
            "route",
            "add",
            EXTRA_ROUTE6,
            "via",
            PEER_IP6,
            "dev",
            "eth0",
        ]);
        ip(&["-n", peer, "addr", "add", &peer6, "dev", "eth0", "nodad"]);
        ip(&["-n", peer, "addr", "add", &peer_cidr, "dev", "eth0"]);
        ip(&["-n", peer, "link", "set", "lo", "up"]);
        ip(&["-n", peer, "link", "set", "eth0", "up"]);
        net
    }

    /// The pod namespace's path, for a spec's `linux.namespaces` entry.
    pub fn pod_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.pod)
    }

    /// A command run inside the peer namespace (`ip netns exec`).
    pub fn in_peer(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.peer]).args(args);
        cmd
    }

    /// A command run inside the pod namespace.
    pub fn in_pod(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.pod]).args(args);
        cmd
    }

    /// The link names of the pod namespace.
    pub fn pod_links(&self) -> Vec<String> {
        let out = ip(&["-n", &self.pod, "-o", "link", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect()
    }

    /// The output of `tc filter show dev eth0 ingress` plus `tc qdisc show` in the pod
    /// namespace (empty of `mirred` and `ingress` when nothing is plumbed).
    pub fn pod_tc(&self) -> String {
        let mut text = String::new();
        for args in [
            vec![
                "-n",
                self.pod.as_str(),
                "filter",
                "show",
                "dev",
                "eth0",
                "ingress",
            ],
            vec!["-n", self.pod.as_str(), "qdisc", "show"],
        ] {
            let out = Command::new("tc").args(&args).output().expect("run tc");
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        text
    }

    /// Asserts that no tap and no ingress qdisc or mirred filter is left in the pod namespace
    /// (waiting up to 10 s for a monitor that is still tearing down).
    pub fn assert_unplumbed(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let links = self.pod_links();
            let tc = self.pod_tc();
            let clean = !links.iter().any(|l| l.starts_with("tap"))
                && !tc.contains("mirred")
                && !tc.contains("ingress");
            if clean {
                assert!(
                    links.iter().any(|l| l == "eth0"),
                    "the veth is gone: {links:?}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pod namespace {} still plumbed: links {links:?}, tc:\n{tc}",
                self.pod
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts busybox httpd in the peer namespace on `PEER_IP:port`, serving `dir`.
    pub fn peer_httpd(&self, dir: &std::path::Path, port: u16) -> Server {
        self.peer_httpd_on(PEER_IP, dir, port)
    }

    /// Starts busybox httpd in the peer namespace on `addr` (IPv4 or IPv6), port `port`.
    pub fn peer_httpd_on(&self, addr: &str, dir: &std::path::Path, port: u16) -> Server {
        let listen = if addr.contains(':') {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        };
        let child = self
            .in_peer(&[
                "busybox",
                "httpd",
                "-f",
                "-p",
                &listen,
                "-h",
                &dir.to_string_lossy(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start httpd in the peer namespace");
        Server(child)
    }

    /// `GET path` from `host:port` over busybox nc, run in the peer namespace, retrying until
    /// `timeout`; returns the body. (Debian's static busybox wget crashes on this host.)
    pub fn peer_get(&self, host: &str, port: u16, path: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let script =
            format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 {host} {port}");
        while Instant::now() < deadline {
            let out = self
                .in_peer(&["sh", "-c", &script])
                .output()
                .expect("run nc");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.starts_with("HTTP/1.") && text.contains(" 200 ") {
                let body = text
                    .split_once("\r\n\r\n")
                    .map_or(String::new(), |(_, b)| b.to_owned());
                return Some(body);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        None
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A server process killed on drop.
#[derive(Debug)]
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Edits a spec so that it joins the network namespace at `path`.
pub fn join_netns(spec: &mut serde_json::Value, path: &std::path::Path) {
    let nss = spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("spec has namespaces");
    nss.retain(|n| n["type"] != "network");
    nss.push(serde_json::json!({"type": "network", "path": path}));
}
