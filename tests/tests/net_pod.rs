// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Pod networking end to end, on real microVMs (QEMU/TCG here): a container whose spec joins a
//! test "pod" network namespace by path gets that namespace's interface inside the VM (same
//! MAC, address, MTU, routes, permanent neighbour), reaches an HTTP server in the "peer"
//! namespace and is reached from it; teardown (delete, or the VM killed) leaves no tap and no tc
//! filter; without a netns path the container has loopback only; a netns path that does not
//! exist is a clear error that leaves nothing behind.

use std::time::{Duration, Instant};

use vmrun_tests::cli::{busybox_bundle, require_cli_artifacts, text, BundleOpts, CliEnv};
use vmrun_tests::net::{
    join_netns, TestNet, EXTRA_ROUTE, EXTRA_ROUTE6, MTU, NEIGH_IP, PEER_IP, PEER_IP6, POD_IP,
    POD_IP6, POD_MAC,
};

const T: Duration = Duration::from_secs(60);

/// Waits until `<id>.out` contains `needle`; returns the file's text.
fn wait_output(env: &CliEnv, id: &str, needle: &str, timeout: Duration) -> String {
    let path = env.dir().join(format!("{id}.out"));
    let deadline = Instant::now() + timeout;
    loop {
        let out = std::fs::read_to_string(&path).unwrap_or_default();
        if out.contains(needle) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never printed {needle:?}; stdout:\n{out}\nstderr:\n{}",
            std::fs::read_to_string(env.dir().join(format!("{id}.err"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The container's script: report the network, fetch from the peer, then serve on 8081.
const POD_SCRIPT: &str = r#"
echo "LINKS $(ls /sys/class/net | tr '\n' ' ')"
echo "MAC $(cat /sys/class/net/eth0/address)"
echo "MTU $(cat /sys/class/net/eth0/mtu)"
ip -o -4 addr show dev eth0 | sed 's/^/ADDR /'
ip -o -6 addr show dev eth0 scope global | sed 's/^/ADDR6 /'
ip route | sed 's/^/ROUTE /'
ip -6 route | sed 's/^/ROUTE6 /'
ip neigh show | sed 's/^/NEIGH /'
echo "RESOLV $(cat /etc/resolv.conf)"
echo "HOSTS $(grep vmrun-pod /etc/hosts)"
body=$(printf 'GET /hello.txt HTTP/1.0\r\n\r\n' | nc PEER 8080 | tail -n 1) && echo "FETCHED $body"
body=$(printf 'GET /hello.txt HTTP/1.0\r\n\r\n' | nc V6PEER 8082 | tail -n 1) && echo "FETCHED6 $body"
mkdir -p /tmp/www && echo from-the-vm > /tmp/www/index.html
echo SERVING
exec httpd -f -p 8081 -h /tmp/www
"#;

#[test]
fn container_in_vm_talks_to_the_peer_namespace_both_ways() {
    if !require_cli_artifacts("net_pod_both_ways") {
        return;
    }
    let env = CliEnv::new("netpod");
    let net = TestNet::new("both");
    let www = env.dir().join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("hello.txt"), "hello-from-the-peer\n").expect("hello.txt");
    let httpd = net.peer_httpd(&www, 8080);
    let httpd6 = net.peer_httpd_on(PEER_IP6, &www, 8082);
    // /etc/resolv.conf and /etc/hosts come in as bind mounts, as CRI/podman give them.
    let etc = env.dir().join("etc");
    std::fs::create_dir_all(&etc).expect("etc dir");
    std::fs::write(etc.join("resolv.conf"), "nameserver 10.200.0.53\n").expect("resolv");
    std::fs::write(etc.join("hosts"), format!("{POD_IP} vmrun-pod\n")).expect("hosts");

    let script = POD_SCRIPT
        .replace("V6PEER", PEER_IP6)
        .replace("PEER", PEER_IP);
    let mut opts = BundleOpts::new(&["sh", "-c", &script]);
    opts.pid_namespace = false;
    let pod_path = net.pod_path();
    let b = busybox_bundle(env.dir(), "b", &opts, |spec| {
        join_netns(spec, &pod_path);
        let mounts = spec["mounts"].as_array_mut().expect("mounts");
        for f in ["resolv.conf", "hosts"] {
            mounts.push(serde_json::json!({
                "destination": format!("/etc/{f}"),
                "type": "bind",
                "source": etc.join(f),
                "options": ["rbind", "ro"],
            }));
        }
    });

    let out = env.create(&b, "n1");
    assert!(out.status.success(), "create failed: {}", text(&out.stderr));
    // While the VM runs: a tap next to eth0 and mirred filters both ways.
    let links = net.pod_links();
    assert!(links.iter().any(|l| l == "tap0_vmrun"), "{links:?}");
    let tc = net.pod_tc();
    assert!(
        tc.contains("mirred") && tc.contains("tap0_vmrun"),
        "no redirect to the tap on eth0's ingress:\n{tc}"
    );

    assert!(env.run(&["start", "n1"], T).status.success());
    let report = wait_output(&env, "n1", "SERVING", Duration::from_secs(120));
    println!("{report}");
    let line =
        |prefix: &str| -> Vec<&str> { report.lines().filter(|l| l.starts_with(prefix)).collect() };
    assert_eq!(line("MAC "), vec![format!("MAC {POD_MAC}").as_str()]);
    assert_eq!(line("MTU "), vec![format!("MTU {MTU}").as_str()]);
    assert!(
        line("ADDR ")
            .iter()
            .any(|l| l.contains(&format!("{POD_IP}/24"))),
        "{report}"
    );
    assert!(
        line("ADDR6 ")
            .iter()
            .any(|l| l.contains(&format!("{POD_IP6}/64"))),
        "{report}"
    );
    let routes6 = line("ROUTE6 ").join("\n");
    assert!(
        routes6.contains(&format!("{EXTRA_ROUTE6} via {PEER_IP6} dev eth0")),
        "{routes6}"
    );
    let routes = line("ROUTE ").join("\n");
    assert!(
        routes.contains(&format!("default via {PEER_IP} dev eth0")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("{EXTRA_ROUTE} via {PEER_IP} dev eth0")),
        "{routes}"
    );
    let neigh = line("NEIGH ").join("\n");
    assert!(
        neigh.contains(NEIGH_IP) && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    assert!(report.contains("RESOLV nameserver 10.200.0.53"), "{report}");
    assert!(report.contains("HOSTS 10.200.0.2 vmrun-pod"), "{report}");
    assert!(
        report.contains("FETCHED hello-from-the-peer"),
        "the container could not fetch from the peer:\n{report}"
    );
    // And the other way: the peer reaches the container's server through the VM.
    let got = net
        .peer_get(POD_IP, 8081, "/", Duration::from_secs(60))
        .expect("the peer could not reach the container's httpd");
    assert_eq!(got.trim(), "from-the-vm");
    assert!(
        report.contains("FETCHED6 hello-from-the-peer"),
        "the container could not fetch from the peer over IPv6:\n{report}"
    );
    let got6 = net
        .peer_get(POD_IP6, 8081, "/", Duration::from_secs(30))
        .expect("the peer could not reach the container's httpd over IPv6");
    assert_eq!(got6.trim(), "from-the-vm");

    // The peer's httpd serves from the test dir: stop it before the "nothing left" check.
    drop(httpd);
    drop(httpd6);
    assert!(env.run(&["kill", "n1", "KILL"], T).status.success());
    let del = env.run(&["delete", "--force", "n1"], T);
    assert!(del.status.success(), "{}", text(&del.stderr));
    env.assert_nothing_left("n1");
    net.assert_unplumbed();
}

#[test]
fn killing_the_vm_leaves_no_tap_and_no_filter() {
    if !require_cli_artifacts("net_pod_vm_killed") {
        return;
    }
    let env = CliEnv::new("netkill");
    let net = TestNet::new("kill");
    let mut opts = BundleOpts::new(&["sh", "-c", "exec sleep 600"]);
    opts.pid_namespace = false;
    let pod_path = net.pod_path();
    let b = busybox_bundle(env.dir(), "b", &opts, |spec| join_netns(spec, &pod_path));
    let out = env.create(&b, "k1");
    assert!(out.status.success(), "create failed: {}", text(&out.stderr));
    assert!(net.pod_links().iter().any(|l| l == "tap0_vmrun"));
    // SIGKILL the hypervisor: the monitor must notice and unplumb.
    let qemu: Vec<i32> = vmrun_tests::cli::processes_mentioning(env.dir())
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim().starts_with("qemu"))
        })
        .collect();
    assert_eq!(qemu.len(), 1, "one QEMU for the sandbox: {qemu:?}");
    // SAFETY: kill(2) on a pid this test's sandbox started.
    assert_eq!(unsafe { libc::kill(qemu[0], libc::SIGKILL) }, 0);
    // The hypervisor held the only tap fd: the tap goes with it, at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.pod_links().iter().any(|l| l.starts_with("tap")) {
        assert!(
            Instant::now() < deadline,
            "tap outlived the VM: {:?}",
            net.pod_links()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let del = env.run(&["delete", "--force", "k1"], T);
    assert!(del.status.success(), "{}", text(&del.stderr));
    env.assert_nothing_left("k1");
    net.assert_unplumbed();
}

#[test]
fn without_a_netns_path_the_container_has_loopback_only() {
    if !require_cli_artifacts("net_loopback_only") {
        return;
    }
    let env = CliEnv::new("netlo");
    let mut opts = BundleOpts::new(&["sh", "-c", "echo LINKS $(ls /sys/class/net | tr '\\n' ' ')"]);
    opts.pid_namespace = false;
    let b = busybox_bundle(env.dir(), "b", &opts, |_| {});
    let out = env.run(
        &["run", "--bundle", &b.to_string_lossy(), "lo1"],
        Duration::from_secs(240),
    );
    assert!(out.status.success(), "run failed: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "LINKS lo",
        "{}",
        text(&out.stdout)
    );
    env.assert_nothing_left("lo1");
}

#[test]
fn a_missing_netns_path_is_a_clear_error_and_leaves_nothing() {
    if !require_cli_artifacts("net_missing_netns") {
        return;
    }
    let env = CliEnv::new("netmiss");
    let missing = format!("/run/netns/vmrun-net-missing-{}", std::process::id());
    let mut opts = BundleOpts::new(&["true"]);
    opts.pid_namespace = false;
    let b = busybox_bundle(env.dir(), "b", &opts, |spec| {
        join_netns(spec, std::path::Path::new(&missing))
    });
    let out = env.run(
        &["run", "--bundle", &b.to_string_lossy(), "m1"],
        Duration::from_secs(120),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&missing) && err.contains("No such file"),
        "unclear error: {err}"
    );
    env.assert_nothing_left("m1");
}
