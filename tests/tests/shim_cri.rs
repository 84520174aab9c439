// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! A Kubernetes pod through containerd's CRI plugin with the `vmrun` runtime handler: the
//! sandbox (pause) container and two containers in one VM, talking over localhost; the pod's
//! CNI address inside the VM, reached from the CNI bridge and from a second pod; ExecSync,
//! the CRI log file, UpdateContainerResources, ContainerStats, Stop/RemovePodSandbox, and
//! nothing left. The CRI client is Python grpcio (no crictl here) on the CRI `api.proto` that
//! ships in the `k8s-cri` crate; the same lifecycle with runc gives the time comparison.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vmrun_tests::cli::{require_cli_artifacts, run_bounded, text};
use vmrun_tests::containerd::Containerd;

/// The CRI client: one pod lifecycle with handler argv[2]; prints `key=value` result lines.
const CLIENT: &str = r#"
import sys, time, grpc, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import api_pb2 as pb, api_pb2_grpc as rpc
sock, handler, logdir = sys.argv[1], sys.argv[2], sys.argv[3]
ch = grpc.insecure_channel("unix://" + sock)
rt = rpc.RuntimeServiceStub(ch)
T = 300
def out(k, v): print(f"{k}={v}", flush=True)
uid = f"{handler}-{os.getpid()}"
meta = pb.PodSandboxMetadata(name="pod-" + handler, uid=uid, namespace="default", attempt=0)
pcfg = pb.PodSandboxConfig(metadata=meta, hostname="pod-" + handler, log_directory=logdir,
    linux=pb.LinuxPodSandboxConfig(cgroup_parent="/vmrun-test/pod" + uid.replace("-", "")))
t0 = time.time()
sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pcfg, runtime_handler=handler), timeout=T).pod_sandbox_id
t_sandbox = time.time() - t0
def ctr(name, args, caps=(), pod=None):
    pod_id, pod_cfg = pod or (sid, pcfg)
    sec = pb.LinuxContainerSecurityContext(capabilities=pb.Capability(add_capabilities=list(caps)))
    c = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image="docker.io/library/vmrunbox:local"),
        command=["sh", "-c", args], log_path=name + ".log", linux=pb.LinuxContainerConfig(security_context=sec))
    cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=c, sandbox_config=pod_cfg), timeout=T).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=T)
    return cid
server = ctr("server", "echo pong-from-server > /tmp/msg; while true; do nc -l -p 8080 < /tmp/msg; done")
t_first = time.time() - t0
out("pod_to_first_container_ms", int(t_first * 1000))
out("run_pod_sandbox_ms", int(t_sandbox * 1000))
# The pod's CNI address: inside the pod (in the VM for vmrun), and reachable from the CNI
# bridge, where this client runs (the test starts it in containerd's network namespace).
ip = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=T).status.network.ip
out("pod_ip", ip)
r = rt.ExecSync(pb.ExecSyncRequest(container_id=server, cmd=["ip", "-4", "-o", "addr", "show"], timeout=60), timeout=T)
out("pod_addrs", r.stdout.decode().replace("\n", "|"))
import socket
reply, deadline = "", time.time() + 60
while not reply and time.time() < deadline:
    try:
        with socket.create_connection((ip, 8080), timeout=5) as s:
            reply = s.makefile().readline().strip()
    except OSError:
        time.sleep(0.5)
out("reached_pod", reply)
def wait_exited(cid):
    deadline = time.time() + T
    while True:
        st = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=T).status
        if st.state == pb.CONTAINER_EXITED: return st.exit_code
        if time.time() > deadline: raise SystemExit(f"{cid} never exited")
        time.sleep(0.2)
# A second pod of the same handler (its own VM for vmrun) reaches the first over the CNI bridge.
meta2 = pb.PodSandboxMetadata(name="pod2-" + handler, uid=uid + "-2", namespace="default", attempt=0)
pcfg2 = pb.PodSandboxConfig(metadata=meta2, hostname="pod2-" + handler, log_directory=logdir,
    linux=pb.LinuxPodSandboxConfig(cgroup_parent="/vmrun-test/pod2" + uid.replace("-", "")))
sid2 = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pcfg2, runtime_handler=handler), timeout=T).pod_sandbox_id
peer = ctr("peer", f"nc {ip} 8080", pod=(sid2, pcfg2))
out("second_pod_exit", wait_exited(peer))
time.sleep(0.5)
with open(os.path.join(logdir, "peer.log")) as f:
    for line in f: out("second_pod_log", line.strip())
rt.StopContainer(pb.StopContainerRequest(container_id=peer, timeout=2), timeout=T)
rt.RemoveContainer(pb.RemoveContainerRequest(container_id=peer), timeout=T)
rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid2), timeout=T)
rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid2), timeout=T)
client = ctr("client", "sleep 1; nc 127.0.0.1 8080; echo client-uname $(uname -r); exit 3")
deadline = time.time() + T
while True:
    st = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=client), timeout=T).status
    if st.state == pb.CONTAINER_EXITED: break
    if time.time() > deadline: raise SystemExit("client never exited")
    time.sleep(0.2)
out("client_exit", st.exit_code)
time.sleep(0.5)
with open(os.path.join(logdir, "client.log")) as f:
    for line in f: out("client_log", line.strip())
r = rt.ExecSync(pb.ExecSyncRequest(container_id=server, cmd=["sh", "-c", "echo exec-ok; hostname; exit 4"], timeout=60), timeout=T)
out("exec_exit", r.exit_code); out("exec_stdout", r.stdout.decode().replace("\n", "|"))
rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=server,
    linux=pb.LinuxContainerResources(memory_limit_in_bytes=96 << 20)), timeout=T)
out("update", "ok")
s = rt.ContainerStats(pb.ContainerStatsRequest(container_id=server), timeout=T).stats
out("stats_memory_working_set", s.memory.working_set_bytes.value)
out("stats_cpu_usage", s.cpu.usage_core_nano_seconds.value)
for c in (server, client):
    rt.StopContainer(pb.StopContainerRequest(container_id=c, timeout=2), timeout=T)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=c), timeout=T)
rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=T)
rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=T)
out("pods_left", len(rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=T).items))
out("done", 1)
"#;

/// The Python with grpcio and the CRI `api.proto`, both made by `scripts/setup` under
/// `$VMRUN_CACHE` (default /var/cache/vmrun); `VMRUN_CRI_PYTHON` / `VMRUN_CRI_PROTO` override.
fn cri_tools() -> Option<(PathBuf, PathBuf)> {
    let cache =
        PathBuf::from(std::env::var("VMRUN_CACHE").unwrap_or_else(|_| "/var/cache/vmrun".into()));
    let py = std::env::var("VMRUN_CRI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache.join("cri-venv/bin/python"));
    let proto = std::env::var("VMRUN_CRI_PROTO")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache.join("cri/api.proto"));
    (py.exists() && proto.exists()).then_some((py, proto))
}

fn run_pod(c: &Containerd, py: &PathBuf, handler: &str) -> (bool, String) {
    let logdir = c.dir().join(format!("podlogs-{handler}"));
    std::fs::create_dir_all(&logdir).expect("logdir");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", c.netns_path().display()))
        .arg(py)
        .arg(c.dir().join("cri/client.py"))
        .arg(c.socket())
        .arg(handler)
        .arg(&logdir);
    let out = run_bounded(cmd, Duration::from_secs(600));
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn value<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .collect()
}

#[test]
fn cri_pod_lifecycle() {
    if !require_cli_artifacts("shim_cri_pod_lifecycle") {
        return;
    }
    let (py, proto) = cri_tools().expect(
        "CRI client tools missing: scripts/setup makes $VMRUN_CACHE/cri-venv (grpcio) and \
         $VMRUN_CACHE/cri/api.proto",
    );
    let c = Containerd::start("shimcri");
    c.import_cri_images("k8s.io");
    let cri = c.dir().join("cri");
    std::fs::create_dir_all(&cri).expect("cri dir");
    std::fs::copy(&proto, cri.join("api.proto")).expect("copy proto");
    std::fs::write(cri.join("client.py"), CLIENT).expect("client.py");
    let st = Command::new(&py)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&cri)
        .arg(format!("--python_out={}", cri.display()))
        .arg(format!("--grpc_python_out={}", cri.display()))
        .arg(cri.join("api.proto"))
        .status()
        .expect("protoc");
    assert!(st.success(), "generating the CRI stubs failed");

    let (ok, out) = run_pod(&c, &py, "vmrun");
    println!("--- vmrun pod ---\n{out}");
    assert!(ok, "vmrun pod lifecycle failed:\n{out}\n{}", c.log_tail());
    assert_eq!(value(&out, "client_exit"), ["3"]);
    let log = value(&out, "client_log").join("\n");
    assert!(log.contains("stdout F pong-from-server"), "log: {log}");
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert!(log.contains("client-uname"), "log: {log}");
    assert!(
        !log.contains(host.trim()),
        "the pod ran on the host kernel: {log}"
    );
    // The pod's CNI interface is carried into the VM (tap + tc mirred) and reached from the
    // CNI bridge.
    let ip = value(&out, "pod_ip").concat();
    assert!(ip.starts_with("10.250.251."), "pod ip: {ip:?}");
    let addrs = value(&out, "pod_addrs").concat();
    assert!(
        addrs.contains(&format!("inet {ip}/24")),
        "guest addresses: {addrs}"
    );
    assert_eq!(value(&out, "reached_pod"), ["pong-from-server"]);
    assert_eq!(value(&out, "second_pod_exit"), ["0"]);
    let second = value(&out, "second_pod_log").join("\n");
    assert!(
        second.contains("stdout F pong-from-server"),
        "a second pod did not reach the first: {second}"
    );
    assert_eq!(value(&out, "exec_exit"), ["4"]);
    assert_eq!(value(&out, "exec_stdout"), ["exec-ok|pod-vmrun|"]);
    assert_eq!(value(&out, "update"), ["ok"]);
    assert_ne!(value(&out, "stats_memory_working_set"), ["0"]);
    assert_eq!(value(&out, "pods_left"), ["0"]);
    c.assert_nothing_left(Duration::from_secs(60));

    // The same lifecycle with runc, for the time comparison (printed; runc may be refused by
    // this host's cgroup setup, which is then reported).
    let (ok, runc_out) = run_pod(&c, &py, "runc");
    println!("--- runc pod (ok {ok}) ---\n{runc_out}");
    println!(
        "pod lifecycle RunPodSandbox -> first container running: vmrun {:?} ms, runc {:?} ms",
        value(&out, "pod_to_first_container_ms"),
        value(&runc_out, "pod_to_first_container_ms")
    );
}
