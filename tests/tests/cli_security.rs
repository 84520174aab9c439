// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! The OCI spec's security and resource settings, observed from inside a container that
//! `vmrun run` started in a microVM: uid/gid/groups, dropped capabilities (`chown` fails),
//! rlimits, the cgroup v2 memory and pids limits enforced, and seccomp denying `mkdir` (ignored
//! while the agent refuses seccomp specs).

use std::time::Duration;

use serde_json::json;
use vmrun_tests::cli::{
    busybox_bundle, require_cli_artifacts, run_bounded, text, BundleOpts, CliEnv,
};

const BOOT: Duration = Duration::from_secs(240);

#[test]
fn user_groups_capabilities_and_rlimits() {
    if !require_cli_artifacts("cli_user_caps_rlimits") {
        return;
    }
    let env = CliEnv::new("user");
    let script = "id -u; id -g; id -G; ulimit -n; \
                  touch /tmp/f && chown 0:0 /tmp/f && echo chown-ok || echo chown-denied";
    let b = busybox_bundle(
        env.dir(),
        "b",
        &BundleOpts::new(&["sh", "-c", script]),
        |s| {
            s["process"]["user"] = json!({"uid": 65534, "gid": 65534, "additionalGids": [10]});
            s["process"]["capabilities"] =
                json!({"bounding": [], "effective": [], "permitted": []});
            s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 123, "soft": 123}]);
        },
    );
    let out = run_bounded(
        env.vmrun(&["run", "--bundle", &b.to_string_lossy(), "u1"]),
        BOOT,
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout} stderr: {}",
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "65534");
    assert_eq!(lines[1], "65534");
    let mut groups: Vec<&str> = lines[2].split_whitespace().collect();
    groups.sort_unstable();
    assert_eq!(groups, ["10", "65534"]);
    assert_eq!(lines[3], "123");
    assert_eq!(
        lines[4], "chown-denied",
        "chown must fail without CAP_CHOWN"
    );
    env.assert_nothing_left("u1");
}

#[test]
fn seccomp_denies_mkdir() {
    if !require_cli_artifacts("cli_seccomp") {
        return;
    }
    let env = CliEnv::new("seccomp");
    let script = "mkdir /tmp/d && echo mkdir-ok || echo mkdir-denied";
    let b = busybox_bundle(
        env.dir(),
        "b",
        &BundleOpts::new(&["sh", "-c", script]),
        |s| {
            s["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            });
        },
    );
    let out = run_bounded(
        env.vmrun(&["run", "--bundle", &b.to_string_lossy(), "s1"]),
        BOOT,
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout} stderr: {stderr}");
    assert_eq!(stdout.trim(), "mkdir-denied", "stderr: {stderr}");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert!(!b.join("rootfs/tmp/d").exists());
    env.assert_nothing_left("s1");
}

#[test]
fn memory_and_pids_limits_are_enforced() {
    if !require_cli_artifacts("cli_cgroup_limits") {
        return;
    }
    let env = CliEnv::new("limits");
    let script = "echo pids.max=$(cat /sys/fs/cgroup/pids.max); \
                  echo memory.max=$(cat /sys/fs/cgroup/memory.max); \
                  dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo dd=$?; \
                  for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 30 & done; echo forked-all";
    let b = busybox_bundle(
        env.dir(),
        "b",
        &BundleOpts::new(&["sh", "-c", script]),
        |s| {
            s["linux"]["resources"]["memory"] = json!({"limit": 32 * 1024 * 1024});
            s["linux"]["resources"]["pids"] = json!({"limit": 8});
        },
    );
    let out = run_bounded(
        env.vmrun(&["run", "--bundle", &b.to_string_lossy(), "l1"]),
        BOOT,
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stdout.contains("pids.max=8"), "{stdout} {stderr}");
    assert!(stdout.contains("memory.max=33554432"), "{stdout}");
    assert!(
        stdout.contains("dd=137"),
        "dd over the memory limit must be OOM-killed: {stdout}"
    );
    assert!(
        !stdout.contains("forked-all"),
        "the pids limit must stop a fork: {stdout} {stderr}"
    );
    assert!(stderr.contains("fork"), "{stderr}");
    env.assert_nothing_left("l1");
}
