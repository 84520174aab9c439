// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Host cgroups, `update` and `events` end to end, on real microVMs (QEMU/TCG here):
//! the monitor, the hypervisor and the daemons land in the spec's `linux.cgroupsPath` on the
//! host (read back from `/proc/PID/cgroup`), the host memory limit is guest RAM + the
//! configured overhead, `update` changes the guest's cgroup and the host's CPU shares and
//! refuses a limit the VM cannot honour, `events` reports stats and an OOM kill, and `delete`
//! (or the end of a foreground `run`) removes the cgroups vmrun created.
//!
//! The cgroup paths are relative (runc: relative to the caller's own cgroup), so the
//! sandbox stays inside the test's own cgroups on this shared machine.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmrun_tests::cli::{
    busybox_bundle, processes_mentioning, require_cli_artifacts, text, BundleOpts, CliEnv,
};

const T: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// This process's cgroup in the v1 `memory` hierarchy and in the unified one.
fn own_cgroups() -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    cgroups_of_text(&text)
}

fn cgroups_of(pid: i32) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    cgroups_of_text(&text)
}

fn cgroups_of_text(text: &str) -> (PathBuf, PathBuf) {
    let mut mem = PathBuf::new();
    let mut unified = PathBuf::new();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctl, path) = (it.next(), it.next(), it.next());
        match (ctl, path) {
            (Some("memory"), Some(p)) => mem = PathBuf::from(p),
            (Some(""), Some(p)) => unified = PathBuf::from(p),
            _ => {}
        }
    }
    (mem, unified)
}

fn memory_dir(cgroup: &Path) -> PathBuf {
    Path::new("/sys/fs/cgroup/memory").join(cgroup.strip_prefix("/").unwrap_or(cgroup))
}

fn cpu_dir(cgroup: &Path) -> PathBuf {
    Path::new("/sys/fs/cgroup/cpu").join(cgroup.strip_prefix("/").unwrap_or(cgroup))
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .parse()
        .expect("a number")
}

fn hybrid_v1_memory() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

fn wait_for_output(env: &CliEnv, id: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let file = env.dir().join(format!("{id}.out"));
    while !std::fs::read_to_string(&file)
        .unwrap_or_default()
        .contains(what)
    {
        assert!(
            Instant::now() < deadline,
            "{what:?} never arrived from {id}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn exec_out(env: &CliEnv, id: &str, args: &[&str]) -> String {
    let mut a = vec!["exec", id];
    a.extend_from_slice(args);
    let out = env.run(&a, T);
    assert!(out.status.success(), "exec {args:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// Removes the test's cgroup directories if the test failed before `delete` did (a leftover
/// cgroup on a shared machine is never harmless).
struct CgroupGuard(String);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        for line in own.lines() {
            let mut it = line.splitn(3, ':');
            let (Some(_), Some(ctl), Some(path)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let mount = match ctl {
                "" => "unified".to_owned(),
                c => c.to_owned(),
            };
            let top = Path::new("/sys/fs/cgroup")
                .join(mount)
                .join(path.trim_start_matches('/'))
                .join(&self.0);
            if let Ok(entries) = std::fs::read_dir(&top) {
                for e in entries.filter_map(Result::ok) {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
                let _ = std::fs::remove_dir(&top);
            }
        }
    }
}

/// The QEMU process among `pids` and the resident size of its guest RAM (the memfd mapping).
fn guest_ram_resident(pids: &[i32]) -> Option<u64> {
    for pid in pids {
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmd.contains("qemu-system") {
            continue;
        }
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
        let mut in_memfd = false;
        let mut total = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
                in_memfd = line.contains("/memfd:");
            } else if in_memfd && first == "Rss:" {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024;
            }
        }
        return Some(total);
    }
    None
}

/// Measures the host overhead of a QEMU/TCG sandbox (the number behind the default
/// `[host_cgroup] overhead_mib`) and checks that the default leaves room: the container fills
/// its 200 MiB limit, the host cgroup's peak minus the guest RAM QEMU holds resident is the
/// overhead, and the host limit (guest RAM + default overhead) is never reached.
#[test]
fn host_overhead_fits_the_default() {
    if !require_cli_artifacts("cli_cgroups_overhead") {
        return;
    }
    if !hybrid_v1_memory() {
        println!("vmrun-test: skipped cli_cgroups_overhead: no v1 memory hierarchy");
        return;
    }
    let env = CliEnv::new("cgover");
    let top = format!("vmrun-cli-over-{}", std::process::id());
    let _guard = CgroupGuard(top.clone());
    let opts = BundleOpts::new(&[
        "sh",
        "-c",
        "(x=$(head -c 400000000 /dev/zero | tr '\\0' a)); echo oom-done; exec sleep 300",
    ]);
    let b = busybox_bundle(env.dir(), "b", &opts, |spec| {
        spec["linux"]["cgroupsPath"] = json!(top);
        spec["linux"]["resources"] = json!({"memory": {"limit": 200 * MIB}});
    });
    let out = env.create(&b, "o1");
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let out = env.run(&["start", "o1"], T);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    let (own_mem, _) = own_cgroups();
    let mem_dir = memory_dir(&own_mem.join(&top));
    // The subshell dies by the guest's OOM killer once it reaches the limit.
    wait_for_output(&env, "o1", "oom-done");
    let pids = processes_mentioning(env.dir());
    let resident = guest_ram_resident(&pids).unwrap_or(0);
    let peak = read_u64(&mem_dir.join("memory.max_usage_in_bytes"));
    let usage = read_u64(&mem_dir.join("memory.usage_in_bytes"));
    let failcnt = read_u64(&mem_dir.join("memory.failcnt"));
    let limit = read_u64(&mem_dir.join("memory.limit_in_bytes"));
    println!(
        "vmrun-test: overhead: guest RAM 456 MiB, resident in QEMU {} MiB, host usage {} MiB, \
         peak {} MiB, overhead (usage - resident) {} MiB, limit {} MiB, failcnt {failcnt}",
        resident / MIB,
        usage / MIB,
        peak / MIB,
        usage.saturating_sub(resident) / MIB,
        limit / MIB
    );
    assert_eq!(
        limit,
        (256 + 200 + 384) * MIB,
        "guest RAM + default overhead"
    );
    assert_eq!(failcnt, 0, "the host limit was reached");
    let out = env.run(&["delete", "--force", "o1"], T);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_nothing_left("o1");
    assert!(!mem_dir.exists(), "{} left behind", mem_dir.display());
}

#[test]
fn host_cgroup_update_events_and_cleanup() {
    if !require_cli_artifacts("cli_cgroups_host") {
        return;
    }
    let env = CliEnv::new("cg");
    let overhead = 400;
    let config = env.dir().join("config.toml");
    let mut cfg = std::fs::read_to_string(&config).expect("config");
    cfg.push_str(&format!("\n[host_cgroup]\noverhead_mib = {overhead}\n"));
    std::fs::write(&config, cfg).expect("write config");

    let top = format!("vmrun-cli-test-{}", std::process::id());
    let _guard = CgroupGuard(top.clone());
    let rel = format!("{top}/c1");
    let opts = BundleOpts::new(&["sh", "-c", "echo started; exec sleep 300"]);
    let b = busybox_bundle(env.dir(), "b", &opts, |spec| {
        spec["linux"]["cgroupsPath"] = json!(rel);
        spec["linux"]["resources"] = json!({
            "memory": {"limit": 64 * MIB},
            "cpu": {"shares": 512}
        });
    });
    let out = env.create(&b, "c1");
    assert!(out.status.success(), "create: {}", text(&out.stderr));

    // Every host process of the sandbox is in <own cgroup>/<rel>, in memory and unified.
    let (own_mem, own_uni) = own_cgroups();
    let want_mem = own_mem.join(&rel);
    let want_uni = own_uni.join(&rel);
    let procs = processes_mentioning(env.dir());
    let monitor = env.state("c1").expect("state")["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .expect("monitor pid");
    assert!(
        procs.contains(&monitor),
        "monitor {monitor} not in {procs:?}"
    );
    assert!(
        procs.len() >= 4,
        "monitor, QEMU, virtiofsd and vhost-device-vsock expected: {procs:?}"
    );
    for pid in &procs {
        let (mem, uni) = cgroups_of(*pid);
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert_eq!(mem, want_mem, "memory cgroup of {pid} ({cmd})");
        assert_eq!(uni, want_uni, "unified cgroup of {pid} ({cmd})");
    }
    println!(
        "vmrun-test: {} host processes in {}",
        procs.len(),
        want_mem.display()
    );

    // Host limits: guest RAM (256 MiB base + the 64 MiB limit) + the overhead; CPU shares.
    let mem_dir = memory_dir(&want_mem);
    let cpu_dir = cpu_dir(&own_cgroups_cpu().join(&rel));
    if hybrid_v1_memory() {
        assert_eq!(
            read_u64(&mem_dir.join("memory.limit_in_bytes")),
            (256 + 64 + overhead) * MIB
        );
        assert_eq!(read_u64(&cpu_dir.join("cpu.shares")), 512);
    }

    let out = env.run(&["start", "c1"], T);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    wait_for_output(&env, "c1", "started");

    // The guest enforces the container's limit.
    assert_eq!(
        exec_out(&env, "c1", &["cat", "/sys/fs/cgroup/memory.max"]),
        (64 * MIB).to_string()
    );
    assert_eq!(
        exec_out(&env, "c1", &["cat", "/sys/fs/cgroup/cpu.weight"]),
        "59",
        "512 shares are weight 59 in the guest (libcontainer's conversion, as crun's)"
    );

    // events --stats: one stats event in runc's layout, from the guest's cgroup.
    let out = env.run(&["events", "--stats", "c1"], T);
    assert!(
        out.status.success(),
        "events --stats: {}",
        text(&out.stderr)
    );
    let ev: Value = serde_json::from_slice(&out.stdout).expect("one JSON event");
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], "c1");
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], 64 * MIB);
    assert!(ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0);
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    assert!(
        ev["data"]["cpu"]["usage"]["total"].as_u64().unwrap() > 0,
        "{ev}"
    );

    // update with runc's single-value flags: guest limit and host shares change; the host
    // memory limit stays guest RAM + overhead (the VM's RAM does not shrink).
    let out = env.run(
        &["update", "--memory", "32m", "--cpu-share", "1024", "c1"],
        T,
    );
    assert!(out.status.success(), "update: {}", text(&out.stderr));
    assert_eq!(
        exec_out(&env, "c1", &["cat", "/sys/fs/cgroup/memory.max"]),
        (32 * MIB).to_string()
    );
    if hybrid_v1_memory() {
        assert_eq!(read_u64(&cpu_dir.join("cpu.shares")), 1024);
        assert_eq!(
            read_u64(&mem_dir.join("memory.limit_in_bytes")),
            (256 + 64 + overhead) * MIB
        );
    }
    // More memory than the VM has is refused, and nothing changes.
    let out = env.run(&["update", "--memory", "1g", "c1"], T);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("exceeds the sandbox's 320 MiB of guest RAM"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        exec_out(&env, "c1", &["cat", "/sys/fs/cgroup/memory.max"]),
        (32 * MIB).to_string()
    );

    // events (streaming): stats every interval and the OOM kill of a process that outgrows
    // the 32 MiB limit; it ends by itself once the container is gone.
    let mut events = env.vmrun(&["events", "--interval", "1s", "c1"]);
    events.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut events = events.spawn().expect("spawn events");
    std::thread::sleep(Duration::from_millis(1500));
    let hog = env.run(
        &[
            "exec",
            "c1",
            "sh",
            "-c",
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ],
        T,
    );
    assert!(!hog.status.success(), "the hog was not OOM-killed");
    std::thread::sleep(Duration::from_millis(2500));

    if hybrid_v1_memory() {
        let peak = read_u64(&mem_dir.join("memory.max_usage_in_bytes"));
        let failcnt = read_u64(&mem_dir.join("memory.failcnt"));
        println!(
            "vmrun-test: host cgroup peak {} MiB of {} MiB, failcnt {failcnt}",
            peak / MIB,
            256 + 64 + overhead
        );
        assert_eq!(failcnt, 0, "the host limit was reached");
    }

    let out = env.run(&["delete", "--force", "c1"], T);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    let status = vmrun_tests::cli::wait_bounded(&mut events, Duration::from_secs(30));
    let mut stream = String::new();
    events
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stream)
        .expect("events output");
    assert!(status.success(), "events: {status}");
    let evs: Vec<Value> = stream
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        evs.iter().any(|e| e["type"] == "oom" && e["id"] == "c1"),
        "no oom event: {stream}"
    );
    assert!(
        evs.iter().any(|e| e["type"] == "stats"),
        "no stats event: {stream}"
    );

    // delete removed the cgroups it created (both levels), in every hierarchy.
    env.assert_nothing_left("c1");
    for dir in [
        memory_dir(&own_mem.join(&top)),
        cpu_dir_of_top(&top),
        Path::new("/sys/fs/cgroup/unified")
            .join(own_uni.join(&top).strip_prefix("/").expect("absolute")),
    ] {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
}

fn own_cgroups_cpu() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    text.lines()
        .find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctl, p) = (it.next()?, it.next()?, it.next()?);
            ctl.split(',').any(|c| c == "cpu").then(|| PathBuf::from(p))
        })
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn cpu_dir_of_top(top: &str) -> PathBuf {
    cpu_dir(&own_cgroups_cpu().join(top))
}

#[test]
fn foreground_run_removes_its_cgroup_and_bad_paths_are_refused() {
    if !require_cli_artifacts("cli_cgroups_run") {
        return;
    }
    let env = CliEnv::new("cgrun");
    let rel = format!("vmrun-cli-run-{}", std::process::id());
    let _guard = CgroupGuard(rel.clone());
    let opts = BundleOpts::new(&["sh", "-c", "echo ran"]);
    let b = busybox_bundle(env.dir(), "b", &opts, |spec| {
        spec["linux"]["cgroupsPath"] = json!(rel);
    });
    let out = env.run(&["run", "-b", &b.to_string_lossy(), "r1"], T);
    assert!(out.status.success(), "run: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ran");
    let (own_mem, _) = own_cgroups();
    let dir = memory_dir(&own_mem.join(&rel));
    assert!(!dir.exists(), "{} left behind", dir.display());
    env.assert_nothing_left("r1");

    // Bad paths: refused before anything is created.
    for (global, path, msg) in [
        (None, "a/../../b", "\"..\" and \".\" are not allowed"),
        (
            Some("--systemd-cgroup"),
            "/not/systemd",
            "must be \"slice:prefix:name\"",
        ),
        (
            Some("--systemd-cgroup"),
            "nosuffix:p:n",
            "the slice must be a name ending in .slice",
        ),
    ] {
        let bb = busybox_bundle(env.dir(), "bad", &opts, |spec| {
            spec["linux"]["cgroupsPath"] = json!(path);
        });
        let mut args: Vec<&str> = global.into_iter().collect();
        let bs = bb.to_string_lossy().into_owned();
        args.extend(["create", "--bundle", &bs, "x1"]);
        let out = env.run(&args, T);
        assert_eq!(out.status.code(), Some(1), "{path}");
        assert!(
            text(&out.stderr).contains(msg),
            "{path}: {}",
            text(&out.stderr)
        );
        assert!(env.state("x1").is_none(), "{path}: state left behind");
        std::fs::remove_dir_all(&bb).expect("remove bundle");
    }
    env.assert_nothing_left("x1");

    // update's flags are checked before anything is touched.
    let res = env.dir().join("res.json");
    std::fs::write(&res, "{}").expect("write");
    for (args, msg) in [
        (
            vec![
                "update",
                "-r",
                res.to_str().expect("utf-8"),
                "--memory",
                "1m",
                "x",
            ],
            "cannot be combined",
        ),
        (vec!["update", "x"], "nothing to update"),
        (
            vec!["update", "--memory", "lots", "x"],
            "invalid value \"lots\" for --memory",
        ),
        (vec!["update", "--cpu-rt-runtime", "5", "x"], "realtime"),
        (vec!["update", "--memory", "1m", "nope"], "nope"),
        (vec!["events", "--interval", "0s", "x"], "greater than 0"),
        (vec!["events", "nope"], "nope"),
    ] {
        let out = env.run(&args, T);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(
            text(&out.stderr).contains(msg),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
