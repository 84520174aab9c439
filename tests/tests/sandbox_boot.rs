// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Sandbox system tests: real microVMs (the selected backend: QEMU/TCG on a PVM host) with the
//! real guest kernel and agent, real daemons, and the "nothing left behind" check after each.

use std::collections::BTreeMap;
use std::time::Duration;

use vmrun_runtime::agent_client::AgentError;
use vmrun_runtime::hypervisor::VmExit;
use vmrun_runtime::sandbox::{Sandbox, SandboxConfig, SandboxError};
use vmrun_tests::sandbox::{
    assert_cleaned_up, busybox_initramfs, host_config, wait_for_line, TestRoot,
};

fn config(id: &str, root: &TestRoot) -> SandboxConfig {
    SandboxConfig::new(id, root.path(), &host_config())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_boots_answers_check_streams_logs_and_stops_cleanly() {
    let root = TestRoot::new("boot");
    let mut cfg = config("s1", &root);
    cfg.settings.debug_console = true;
    // With a hostname the sandbox calls CreateSandbox, which the agent logs.
    cfg.hostname = Some("vmrun-test".to_owned());
    let mut sb = Sandbox::start(cfg).await.expect("sandbox boots");
    println!(
        "vmrun-test: ran sandbox_boot on {} ({}): ready after {:?}",
        sb.hypervisor().describe(),
        sb.selection_reason(),
        sb.boot_to_ready().unwrap()
    );
    let v = sb.agent_version().unwrap();
    assert_eq!(v.api_version, vmrun_protocol::API_VERSION);
    assert!(!v.agent_version.is_empty());
    // Check over vsock, again, on the live connection.
    let check = sb.agent().unwrap().check().await.expect("Check");
    assert!(check.ready_ms > 0, "{check:?}");
    assert!(!check.checks.is_empty(), "the agent reports its self-check");
    // The agent's log stream reached <uds>_1025 and was written to agent.log.
    let line = wait_for_line(
        &sb.paths().agent_log,
        "CreateSandbox",
        Duration::from_secs(20),
    );
    assert!(
        line.is_some(),
        "the agent's log line did not arrive on port 1025"
    );
    let console = std::fs::read_to_string(&sb.paths().console_log).unwrap();
    assert!(
        console.contains("vmrun-agent: ready"),
        "console:\n{console}"
    );

    let pids = sb.pids();
    assert_eq!(pids.len(), 2, "qemu + vhost-device-vsock");
    let report = sb.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    assert_eq!(report.exit, VmExit::Clean, "{report}");
    drop(sb);
    assert_cleaned_up(root.path(), "s1", &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_version_mismatch_is_refused_with_both_versions() {
    let root = TestRoot::new("api");
    let mut cfg = config("s1", &root);
    cfg.expected_api_version = vmrun_protocol::API_VERSION + 100;
    let err = Sandbox::start(cfg)
        .await
        .expect_err("a mismatching agent must be refused");
    let SandboxError::Agent(AgentError::ApiVersionMismatch {
        agent_api,
        expected,
        ..
    }) = &err
    else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(
        (*agent_api, *expected),
        (
            vmrun_protocol::API_VERSION,
            vmrun_protocol::API_VERSION + 100
        )
    );
    let msg = format!("{}", std::error::Error::source(&err).unwrap());
    assert!(
        msg.contains(&format!("API version {}", vmrun_protocol::API_VERSION)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("speaks {}", vmrun_protocol::API_VERSION + 100)),
        "{msg}"
    );
    assert_cleaned_up(root.path(), "s1", &[]);
    let _ = std::fs::remove_file(root.path().join("s1.console.log"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_that_never_becomes_ready_times_out_naming_the_console_log() {
    let root = TestRoot::new("never");
    let initrd = busybox_initramfs(
        root.path(),
        "echo vmrun-test: not-an-agent init running; exec /bin/busybox sleep 100000",
    );
    let mut cfg = config("s1", &root);
    cfg.host.artifacts.initrd = Some(initrd.clone());
    cfg.settings.boot_timeout_secs = 15;
    let started = std::time::Instant::now();
    let err = Sandbox::start(cfg).await.expect_err("no agent, no sandbox");
    let elapsed = started.elapsed();
    let SandboxError::BootTimeout {
        console_log,
        console_tail,
        ..
    } = &err
    else {
        panic!("unexpected error: {err}");
    };
    assert!(elapsed < Duration::from_secs(40), "took {elapsed:?}");
    let text = err.to_string();
    assert!(text.contains(&console_log.display().to_string()), "{text}");
    assert!(
        console_tail.contains("not-an-agent init running"),
        "{console_tail}"
    );
    let kept = std::fs::read_to_string(console_log).unwrap();
    assert!(kept.contains("not-an-agent init running"));
    assert_cleaned_up(root.path(), "s1", &[]);
    std::fs::remove_file(console_log).unwrap();
    std::fs::remove_file(initrd).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_initramfs_is_a_guest_crash_with_the_console_tail() {
    let root = TestRoot::new("garbage");
    let initrd = root.path().join("garbage.cpio");
    std::fs::write(&initrd, b"this is not a cpio archive\n".repeat(100)).unwrap();
    let mut cfg = config("s1", &root);
    cfg.host.artifacts.initrd = Some(initrd.clone());
    cfg.settings.debug_console = true;
    let err = Sandbox::start(cfg)
        .await
        .expect_err("garbage must not boot");
    let SandboxError::HypervisorExited {
        exit,
        console_tail,
        console_log,
        ..
    } = &err
    else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(*exit, VmExit::Crashed, "{err}");
    assert!(console_tail.contains("Kernel panic"), "{console_tail}");
    assert_cleaned_up(root.path(), "s1", &[]);
    std::fs::remove_file(console_log).unwrap();
    std::fs::remove_file(initrd).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_hypervisor_is_reported_and_everything_is_cleaned_up() {
    let root = TestRoot::new("kill");
    let sb = Sandbox::start(config("s1", &root))
        .await
        .expect("sandbox boots");
    let pids = sb.pids();
    let hv = sb.hypervisor_pid().unwrap();
    // SAFETY: kill(2) on the hypervisor this test's sandbox started.
    assert_eq!(unsafe { libc::kill(hv, libc::SIGKILL) }, 0);
    let report = tokio::time::timeout(Duration::from_secs(10), sb.wait_exit())
        .await
        .expect("the watcher reports the death");
    assert_eq!(
        report.exit,
        VmExit::Killed {
            signal: libc::SIGKILL
        }
    );
    assert_eq!(
        sb.exit_status(),
        Some(VmExit::Killed {
            signal: libc::SIGKILL
        })
    );
    // The daemons are stopped by the watcher without waiting for the owner.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| vmrun_tests::sandbox::process_alive(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "daemons outlived the hypervisor"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = sb.agent().expect_err("no agent after the VM died");
    assert!(
        matches!(err, SandboxError::HypervisorExited { .. }),
        "{err}"
    );
    drop(sb);
    assert_cleaned_up(root.path(), "s1", &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_sandboxes_at_once() {
    let root = TestRoot::new("four");
    let starts = (0..4).map(|i| Sandbox::start(config(&format!("s{i}"), &root)));
    let results = futures_join_all(starts.collect()).await;
    let mut sandboxes = Vec::new();
    for r in results {
        sandboxes.push(r.expect("each of 4 concurrent sandboxes boots"));
    }
    for sb in &sandboxes {
        let v = sb.agent().unwrap().version().await.expect("Version");
        assert_eq!(v.api_version, vmrun_protocol::API_VERSION);
        println!(
            "vmrun-test: {} ready after {:?}",
            sb.id(),
            sb.boot_to_ready().unwrap()
        );
    }
    let all_pids: Vec<(String, Vec<i32>)> = sandboxes
        .iter()
        .map(|s| (s.id().to_owned(), s.pids()))
        .collect();
    let mut stops = Vec::new();
    for mut sb in sandboxes {
        stops.push(tokio::spawn(async move {
            sb.shutdown(Duration::from_secs(5)).await.map(|r| r.exit)
        }));
    }
    for s in stops {
        assert_eq!(s.await.unwrap().unwrap(), VmExit::Clean);
    }
    for (id, pids) in all_pids {
        assert_cleaned_up(root.path(), &id, &pids);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_with_share_mounts_it_in_the_guest() {
    let root = TestRoot::new("share");
    let mut cfg = config("s1", &root);
    cfg.shared_fs = true;
    cfg.hostname = Some("vmrun-test".to_owned());
    let mut sb = Sandbox::start(cfg)
        .await
        .expect("sandbox with a share boots (CreateSandbox mounts it)");
    let pids = sb.pids();
    assert_eq!(pids.len(), 3, "qemu + vhost-device-vsock + virtiofsd");
    // A rootfs bound in after virtiofsd started is visible under the share.
    let src = root.path().join("rootfs-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("marker"), "from host").unwrap();
    let share = sb.share().unwrap();
    let guest_path = share.mount_rootfs("c1", &src, true).unwrap();
    assert_eq!(
        guest_path,
        std::path::Path::new("/run/vmrun/shared/c1/rootfs")
    );
    assert_eq!(
        std::fs::read_to_string(share.path().join("c1/rootfs/marker")).unwrap(),
        "from host"
    );
    let report = sb.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.exit, VmExit::Clean, "{report}");
    drop(sb);
    assert_cleaned_up(root.path(), "s1", &pids);
    // The bind source is untouched by the teardown.
    assert_eq!(
        std::fs::read_to_string(src.join("marker")).unwrap(),
        "from host"
    );
    std::fs::remove_dir_all(&src).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_on_vmrun_vmm() {
    if !vmrun_tests::require_hardware_kvm("sandbox_on_vmrun_vmm") {
        return;
    }
    let root = TestRoot::new("vmm");
    let mut cfg = config("s1", &root);
    cfg.host.binaries.vmrun_vmm = vmrun_tests::host_bin("vmrun-vmm")
        .to_string_lossy()
        .into_owned();
    cfg.settings.backend = vmrun_runtime::config::BackendChoice::VmrunVmm;
    // Its vhost-user-fs frontend serves the share through the sandbox's virtiofsd.
    cfg.shared_fs = true;
    let mut sb = Sandbox::start(cfg)
        .await
        .expect("sandbox boots on vmrun-vmm");
    let pids = sb.pids();
    let report = sb.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.exit, VmExit::Clean, "{report}");
    drop(sb);
    assert_cleaned_up(root.path(), "s1", &pids);
}

/// CPU features the KVM emulator cannot handle under PVM, masked in the guest (as in
/// `vmm_kernel.rs`), plus the early serial console that prints before the kernel's own.
const PVM_KERNEL_PARAMS: &str = "earlyprintk=serial,ttyS0,115200 clearcpuid=popcnt,cx16,smap,\
                                 smep,fsgsbase,rdrand,rdseed,rdpid,erms,fsrm,pcid,invpcid,movbe,\
                                 clflushopt,clwb,pku noxsave";

/// Pids of live processes whose command line mentions `dir` (the sandbox's daemons and VMM).
fn processes_mentioning(dir: &std::path::Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The runtime's vmrun-vmm backend on this PVM host, with every device a pod needs: the share
/// through the sandbox's virtiofsd, the pod network's tap (from a real netns), hybrid vsock.
/// PVM cannot run the guest kernel to the agent (guest ring 0 is emulated; docs/vmm.md), so
/// what is checked is everything up to that point: the VMM's API reports the three devices
/// with the sandbox's configuration, the project's kernel prints its first console line on
/// the sandbox's console log, the start then fails with a clear error (the boot timeout, or
/// the VMM's KVM emulation failure) pointing at the kept console log, and nothing is left: no
/// process, mount, state directory, tap or tc filter. On hardware KVM `sandbox_on_vmrun_vmm` boots the same sandbox to the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_on_vmrun_vmm_under_pvm_wires_every_device() {
    const TEST: &str = "sandbox_on_vmrun_vmm_under_pvm_wires_every_device";
    match vmrun_tests::kvm_kind() {
        vmrun_tests::KvmKind::Pvm => println!("vmrun-test: kvm-ran {TEST}"),
        vmrun_tests::KvmKind::Hardware => {
            println!("vmrun-test: skipped {TEST}: hardware KVM, where sandbox_on_vmrun_vmm boots it fully");
            return;
        }
        vmrun_tests::KvmKind::Missing => {
            vmrun_tests::require_kvm(TEST);
            return;
        }
    }
    let root = TestRoot::new("vmm-pvm");
    let net = vmrun_tests::net::TestNet::new("vmmpvm");
    let mut cfg = config("s1", &root);
    cfg.host.binaries.vmrun_vmm = vmrun_tests::host_bin("vmrun-vmm")
        .to_string_lossy()
        .into_owned();
    cfg.settings.backend = vmrun_runtime::config::BackendChoice::VmrunVmm;
    cfg.settings.debug_console = true;
    cfg.settings.kernel_params = PVM_KERNEL_PARAMS.to_owned();
    cfg.settings.boot_timeout_secs = 15;
    cfg.shared_fs = true;
    cfg.netns = Some(net.pod_path());
    let dir = root.path().join("s1");
    let paths = vmrun_runtime::sandbox::SandboxPaths::new(&dir);

    // While the sandbox starts: the VMM's device snapshot and the processes it runs.
    let probe = {
        let (api, dir) = (paths.api_socket.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let mut pids = Vec::new();
            while std::time::Instant::now() < deadline {
                for pid in processes_mentioning(&dir) {
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
                if let Ok(snap) = vmrun_tests::vmm::api(&api, "snapshot") {
                    return (Some(snap), pids);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (None, pids)
        })
    };
    let err = Sandbox::start(cfg)
        .await
        .expect_err("PVM cannot run the guest kernel up to the agent");
    let (snapshot, pids) = probe.await.expect("probe task");

    let snap = snapshot.expect("the VMM's API answered `snapshot` while the sandbox started");
    let devices = snap["devices"].as_array().cloned().unwrap_or_default();
    let kinds: Vec<u64> = devices
        .iter()
        .filter_map(|d| d["device_type"].as_u64())
        .collect();
    // virtio device ids: net 1, vsock 19, fs 26.
    for (id, name) in [(1, "net"), (19, "vsock"), (26, "fs")] {
        assert!(kinds.contains(&id), "no {name} device in {snap}");
    }
    let fs = devices
        .iter()
        .find(|d| d["device_type"] == 26)
        .expect("fs device");
    // The config space starts with the tag "vmrun" (hex).
    assert!(
        fs["config"]
            .as_str()
            .unwrap_or("")
            .starts_with("766d72756e"),
        "{snap}"
    );
    assert!(
        pids.len() >= 2,
        "the VMM and virtiofsd ran for the sandbox: {pids:?}"
    );

    // Either the boot timeout ends it, or (measured: ~9 s in) the emulated kernel reaches its
    // FPU set-up and the VMM reports the KVM emulation failure. Both are clear errors that
    // point at the kept console log.
    let message = format!("{err}");
    let console_log = match err {
        SandboxError::BootTimeout { console_log, .. } => console_log,
        SandboxError::HypervisorExited {
            exit: VmExit::Failed { .. },
            console_log,
            stderr_tail,
            ..
        } => {
            assert!(
                stderr_tail.contains("KVM internal error"),
                "the VMM says why it stopped:\n{message}"
            );
            console_log
        }
        other => panic!("expected a boot timeout or a VMM failure, got: {other}"),
    };
    let console =
        std::fs::read_to_string(&console_log).expect("console log kept after the failure");
    let first = console
        .lines()
        .find(|l| l.contains("Linux version 6."))
        .unwrap_or_else(|| panic!("no first console line; error:\n{message}"));
    println!("vmrun-test: {TEST}: {first}");
    println!(
        "vmrun-test: {TEST}: ended with: {}",
        message.lines().next().unwrap_or("")
    );
    std::fs::remove_file(&console_log).expect("remove the kept console log");
    assert_cleaned_up(root.path(), "s1", &pids);
    net.assert_unplumbed();
}

#[test]
fn annotations_reach_the_settings() {
    let cfg = host_config();
    let ann: BTreeMap<String, String> =
        [("io.vmrun.memory_mib".to_owned(), "128".to_owned())].into();
    assert_eq!(cfg.sandbox_settings(&ann).unwrap().memory_mib, 128);
}

/// Awaits all futures concurrently (no `futures` dependency needed).
async fn futures_join_all<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// Helper for [`sandbox_processes_die_with_their_owner`]: runs only when re-executed by it
/// (`VMRUN_TEST_OWNER_ROOT` set); boots a sandbox, prints its pids and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of sandbox_processes_die_with_their_owner"]
async fn owner_helper() {
    let Some(root) = std::env::var_os("VMRUN_TEST_OWNER_ROOT") else {
        return;
    };
    let cfg = SandboxConfig::new("owned", std::path::Path::new(&root), &host_config());
    let sb = Sandbox::start(cfg).await.expect("helper sandbox boots");
    let pids: Vec<String> = sb.pids().iter().map(ToString::to_string).collect();
    println!("OWNER-PIDS {}", pids.join(" "));
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(sb);
}

#[test]
fn sandbox_processes_die_with_their_owner() {
    use std::io::BufRead;
    let root = TestRoot::new("owner");
    let mut owner = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "owner_helper", "--ignored", "--nocapture"])
        .env("VMRUN_TEST_OWNER_ROOT", root.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the owner process");
    let stdout = owner.stdout.take().unwrap();
    let mut pids: Vec<i32> = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("OWNER-PIDS ") {
            pids = rest.split(' ').map(|p| p.parse().unwrap()).collect();
            break;
        }
    }
    assert_eq!(
        pids.len(),
        2,
        "the owner did not report qemu + vhost-device-vsock"
    );
    assert!(pids.iter().all(|&p| vmrun_tests::sandbox::process_alive(p)));
    // The owner dies without any chance to clean up.
    owner.kill().unwrap();
    owner.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| vmrun_tests::sandbox::process_alive(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox processes outlived their owner: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Only files remain (sockets, logs); a new owner would remove them.
    std::fs::remove_dir_all(root.path().join("owned")).unwrap();
}
