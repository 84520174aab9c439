// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Direct cgroup v2 file access for a container's cgroup: statistics, process list, freezer,
//! OOM counters. Pure parsing functions are separate from the file reads so they can be
//! tested on sample text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmrun_protocol::agent;

/// A cgroup file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Reading or writing a file failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The freezer did not reach the requested state in time.
    #[error("cgroup {0} did not reach the requested freezer state within 5 s")]
    FreezeTimeout(PathBuf),
}

/// The directory of a cgroup given its path below the cgroup v2 root.
pub fn dir(root: &Path, cgroup_path: &Path) -> PathBuf {
    root.join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path))
}

fn read(path: PathBuf) -> Result<String, CgroupError> {
    std::fs::read_to_string(&path).map_err(|source| CgroupError::Io { path, source })
}

fn read_opt(path: PathBuf) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Parses a flat-keyed file (`key value` per line).
pub fn parse_flat(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// Parses a single value that may be `max` (returned as 0, "no limit").
pub fn parse_limit(text: &str) -> u64 {
    let t = text.trim();
    if t == "max" {
        0
    } else {
        t.parse().unwrap_or(0)
    }
}

/// Parses `io.stat` (`MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...` per line).
pub fn parse_io_stat(text: &str) -> Vec<agent::IoDeviceStats> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (maj, min) = w.next()?.split_once(':')?;
            let mut d = agent::IoDeviceStats {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                ..Default::default()
            };
            for kv in w {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => d.read_bytes = v,
                    "wbytes" => d.write_bytes = v,
                    "rios" => d.read_ios = v,
                    "wios" => d.write_ios = v,
                    _ => {}
                }
            }
            Some(d)
        })
        .collect()
}

/// Reads the statistics of the cgroup at `dir`.
pub fn stats(dir: &Path) -> Result<agent::StatsContainerResponse, CgroupError> {
    let cpu_text = read(dir.join("cpu.stat"))?;
    let cpu = parse_flat(&cpu_text);
    let get = |m: &HashMap<&str, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let mem_stat_text = read_opt(dir.join("memory.stat")).unwrap_or_default();
    let mem_stat = parse_flat(&mem_stat_text);
    let mem_events_text = read_opt(dir.join("memory.events")).unwrap_or_default();
    let mem_events = parse_flat(&mem_events_text);
    let num = |f: &str| read_opt(dir.join(f)).map(|t| parse_limit(&t)).unwrap_or(0);
    let mut resp = agent::StatsContainerResponse::new();
    resp.cpu = protobuf::MessageField::some(agent::CpuStats {
        usage_usec: get(&cpu, "usage_usec"),
        user_usec: get(&cpu, "user_usec"),
        system_usec: get(&cpu, "system_usec"),
        nr_periods: get(&cpu, "nr_periods"),
        nr_throttled: get(&cpu, "nr_throttled"),
        throttled_usec: get(&cpu, "throttled_usec"),
        ..Default::default()
    });
    resp.memory = protobuf::MessageField::some(agent::MemoryStats {
        usage: num("memory.current"),
        limit: num("memory.max"),
        max_usage: num("memory.peak"),
        swap_usage: num("memory.swap.current"),
        anon: get(&mem_stat, "anon"),
        file: get(&mem_stat, "file"),
        oom_events: get(&mem_events, "oom"),
        oom_kill: get(&mem_events, "oom_kill"),
        ..Default::default()
    });
    resp.pids = protobuf::MessageField::some(agent::PidsStats {
        current: num("pids.current"),
        limit: num("pids.max"),
        ..Default::default()
    });
    resp.io = read_opt(dir.join("io.stat"))
        .map(|t| parse_io_stat(&t))
        .unwrap_or_default();
    Ok(resp)
}

/// Pids in `cgroup.procs` of the cgroup and all its descendants.
pub fn procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let mut pids: Vec<u32> = read(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(procs(&e.path()).unwrap_or_default());
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// `memory.events` oom_kill counter (0 if unreadable).
pub fn oom_kills(dir: &Path) -> u64 {
    read_opt(dir.join("memory.events"))
        .and_then(|t| parse_flat(&t).get("oom_kill").copied())
        .unwrap_or(0)
}

/// Freezes (`true`) or thaws the cgroup and waits until `cgroup.events` reports the state.
pub async fn set_frozen(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.freeze");
    std::fs::write(&path, if frozen { "1" } else { "0" })
        .map_err(|source| CgroupError::Io { path, source })?;
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    for _ in 0..500 {
        if read(dir.join("cgroup.events"))?
            .lines()
            .any(|l| l.trim() == want)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(CgroupError::FreezeTimeout(dir.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_files() {
        let cpu = parse_flat("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n");
        assert_eq!(cpu["usage_usec"], 1500);
        assert_eq!(cpu["system_usec"], 500);
        assert_eq!(parse_limit("max\n"), 0);
        assert_eq!(parse_limit("4194304\n"), 4_194_304);
        let io = parse_io_stat(
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1\n",
        );
        assert_eq!(io.len(), 2);
        assert_eq!(
            (io[0].major, io[0].minor, io[0].read_bytes, io[0].write_ios),
            (254, 0, 4096, 2)
        );
        assert_eq!(io[1].read_bytes, 1);
        assert!(parse_io_stat("garbage\n").is_empty());
    }

    #[test]
    fn dir_joins_absolute_paths_below_root() {
        assert_eq!(
            dir(Path::new("/sys/fs/cgroup"), Path::new("/vmrun/c1")),
            PathBuf::from("/sys/fs/cgroup/vmrun/c1")
        );
    }

    #[test]
    fn missing_cgroup_is_a_clear_error() {
        let e = stats(Path::new("/nonexistent/cg")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cg/cpu.stat"), "{e}");
    }
}
