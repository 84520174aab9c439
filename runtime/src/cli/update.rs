// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! `vmrun update`: runc's flags (`--resources FILE|-` or the single-value flags) turned into
//! one OCI `linux.resources` object, which [`super::exec::update_value`] applies in the guest
//! and on the host cgroup.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Map, Value};

use super::CliError;
use crate::state::{StateStore, Status};

/// Flags of `update` (runc's names; `--cpu-shares` is an alias of runc's `--cpu-share`).
#[derive(Debug, Clone, Default, Args)]
pub struct UpdateArgs {
    /// An OCI `linux.resources` JSON file, or `-` for stdin. Not combinable with the flags.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit (bytes, or with a k/m/g suffix; -1: unlimited).
    #[arg(short, long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory soft limit.
    #[arg(long, allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit (-1: unlimited swap).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Accepted for runc compatibility; kernel memory limits do not exist in cgroup v2.
    #[arg(long, hide = true)]
    pub kernel_memory: Option<String>,
    /// Accepted for runc compatibility; see `--kernel-memory`.
    #[arg(long, hide = true)]
    pub kernel_memory_tcp: Option<String>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota in microseconds (-1: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long, alias = "cpu-shares")]
    pub cpu_share: Option<u64>,
    /// Realtime period; not supported by the guest's cgroup v2.
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// Realtime runtime; not supported by the guest's cgroup v2.
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs the container may run on (`0-2,4`).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Maximum number of tasks (-1 or 0: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Block I/O weight (10-1000).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// Container id.
    pub id: String,
}

impl UpdateArgs {
    fn any_flag(&self) -> bool {
        self.memory.is_some()
            || self.memory_reservation.is_some()
            || self.memory_swap.is_some()
            || self.kernel_memory.is_some()
            || self.kernel_memory_tcp.is_some()
            || self.cpu_period.is_some()
            || self.cpu_quota.is_some()
            || self.cpu_share.is_some()
            || self.cpu_rt_period.is_some()
            || self.cpu_rt_runtime.is_some()
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some()
            || self.pids_limit.is_some()
            || self.blkio_weight.is_some()
    }
}

/// runc's `RAMInBytes`: a number with an optional b/k/m/g/t/p suffix (binary units, an
/// optional trailing `b`/`ib`), or `-1` for unlimited.
pub fn parse_bytes(flag: &str, text: &str) -> Result<i64, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "invalid value {text:?} for --{flag}: expected bytes, e.g. 64m, 1g or -1"
        ))
    };
    let t = text.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let shift: i32 = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    let bytes = n * 2f64.powi(shift);
    if bytes >= 9.2e18 {
        return Err(bad());
    }
    #[allow(clippy::cast_possible_truncation)] // checked to be below i64::MAX just above
    Ok(bytes as i64)
}

/// The `linux.resources` object of an `update` command line.
pub fn resources_from_flags(a: &UpdateArgs) -> Result<Value, CliError> {
    if a.cpu_rt_period.is_some() || a.cpu_rt_runtime.is_some() {
        return Err(CliError::Usage(
            "--cpu-rt-period and --cpu-rt-runtime are not supported: the guest uses cgroup v2, \
             which has no realtime CPU controller"
                .into(),
        ));
    }
    if a.kernel_memory.is_some() || a.kernel_memory_tcp.is_some() {
        return Err(CliError::Usage(
            "--kernel-memory and --kernel-memory-tcp are not supported by cgroup v2".into(),
        ));
    }
    let mut memory = Map::new();
    for (key, flag, v) in [
        ("limit", "memory", &a.memory),
        ("reservation", "memory-reservation", &a.memory_reservation),
        ("swap", "memory-swap", &a.memory_swap),
    ] {
        if let Some(v) = v {
            memory.insert(key.into(), json!(parse_bytes(flag, v)?));
        }
    }
    let mut cpu = Map::new();
    if let Some(v) = a.cpu_share {
        cpu.insert("shares".into(), json!(v));
    }
    if let Some(v) = a.cpu_quota {
        cpu.insert("quota".into(), json!(v));
    }
    if let Some(v) = a.cpu_period {
        cpu.insert("period".into(), json!(v));
    }
    if let Some(v) = &a.cpuset_cpus {
        cpu.insert("cpus".into(), json!(v));
    }
    if let Some(v) = &a.cpuset_mems {
        cpu.insert("mems".into(), json!(v));
    }
    let mut r = Map::new();
    if !memory.is_empty() {
        r.insert("memory".into(), Value::Object(memory));
    }
    if !cpu.is_empty() {
        r.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(v) = a.pids_limit {
        // runc: 0 or -1 mean unlimited.
        r.insert(
            "pids".into(),
            json!({ "limit": if v <= 0 { -1 } else { v } }),
        );
    }
    if let Some(v) = a.blkio_weight {
        if !(10..=1000).contains(&v) {
            return Err(CliError::Usage(format!(
                "invalid value {v} for --blkio-weight: expected 10-1000"
            )));
        }
        r.insert("blockIO".into(), json!({ "weight": v }));
    }
    Ok(Value::Object(r))
}

/// `vmrun update`.
pub fn update(store: &StateStore, a: &UpdateArgs) -> Result<(), CliError> {
    let value = match &a.resources {
        Some(_) if a.any_flag() => {
            return Err(CliError::Usage(
                "--resources cannot be combined with the single-value flags".into(),
            ))
        }
        Some(path) => read_resources(path)?,
        None if !a.any_flag() => {
            return Err(CliError::Usage(
                "nothing to update: give --resources FILE|- or a flag such as --memory".into(),
            ))
        }
        None => resources_from_flags(a)?,
    };
    let record = store.load(&a.id)?;
    let status = record.effective_status();
    if !matches!(status, Status::Created | Status::Running | Status::Paused) {
        return Err(CliError::WrongState {
            id: a.id.clone(),
            status,
            what: "cannot update a container that is not created, running or paused",
        });
    }
    super::exec::update_value(&record, &value)
}

fn read_resources(resources: &Path) -> Result<Value, CliError> {
    let text = if resources == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CliError::Usage(format!("cannot read the resources from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(resources)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", resources.display())))?
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("malformed resources: {e}")))?;
    if !value.is_object() {
        return Err(CliError::Usage(
            "the resources must be a JSON object".into(),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_like_runc() {
        assert_eq!(parse_bytes("memory", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("memory", "1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("memory", "512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("memory", "1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes("memory", "4096").unwrap(), 4096);
        assert_eq!(parse_bytes("memory", "-1").unwrap(), -1);
        for bad in ["", "m", "12x", "-5", "1e3", "99999999p"] {
            let e = parse_bytes("memory", bad).unwrap_err();
            assert!(e.to_string().contains("--memory"), "{bad}: {e}");
        }
    }

    fn args(v: &[&str]) -> UpdateArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: UpdateArgs,
        }
        <P as clap::Parser>::try_parse_from(std::iter::once("update").chain(v.iter().copied()))
            .expect("parse")
            .a
    }

    #[test]
    fn flags_become_resources() {
        let a = args(&[
            "--memory",
            "64m",
            "--memory-swap",
            "-1",
            "--cpu-quota",
            "50000",
            "--cpu-period",
            "100000",
            "--cpu-share",
            "512",
            "--cpuset-cpus",
            "0",
            "--pids-limit",
            "0",
            "--blkio-weight",
            "300",
            "c",
        ]);
        let r = resources_from_flags(&a).unwrap();
        assert_eq!(
            r,
            json!({"memory": {"limit": 64 << 20, "swap": -1},
                   "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
                   "pids": {"limit": -1}, "blockIO": {"weight": 300}})
        );
        let a = args(&["--cpu-shares", "2", "--cpu-quota", "-1", "c"]);
        assert_eq!(
            resources_from_flags(&a).unwrap(),
            json!({"cpu": {"shares": 2, "quota": -1}})
        );
    }

    #[test]
    fn unsupported_or_bad_flags() {
        for v in [
            &["--cpu-rt-runtime", "100", "c"][..],
            &["--kernel-memory", "1m", "c"][..],
            &["--blkio-weight", "5", "c"][..],
            &["--memory", "lots", "c"][..],
        ] {
            assert!(resources_from_flags(&args(v)).is_err(), "{v:?}");
        }
    }
}
