// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! `vmrun events [--stats] [--interval D] ID`, like runc's: JSON lines
//! `{"type":"stats","id":ID,"data":{...}}` in runc's stats layout (cpu, memory, pids, blkio),
//! read from the guest's cgroup v2 through the agent's `StatsContainer`, and
//! `{"type":"oom","id":ID}` when the guest's OOM killer kills a process of the container
//! (`GetOomEvent`). `--stats` prints one stats event and exits; without it, stats come every
//! interval and OOM events as they happen, until the container is gone (then exit 0).
//!
//! Each `events` opens its own connection to the sandbox's agent; OOM events are delivered to
//! one waiter at a time (the agent queues them while nobody waits).

use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use vmrun_protocol::agent;

use super::CliError;
use crate::agent_client::AgentClient;
use crate::monitor::{self, MonitorError};
use crate::state::{StateStore, Status};

/// Flags of `events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Stats interval (Go duration: `5s`, `500ms`, `1m30s`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print the container's stats once, then exit.
    #[arg(long)]
    pub stats: bool,
    /// Container id.
    pub id: String,
}

/// A Go duration (`300ms`, `5s`, `1m30s`, `2h`; units ns, us, µs, ms, s, m, h), > 0.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (e.g. 5s, 500ms, 1m30s)");
    let mut rest = text.trim();
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(n_end);
        let u_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(u_end);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(n * secs).map_err(|_| bad())?;
        rest = tail;
    }
    if total.is_zero() {
        return Err("the interval must be greater than 0".into());
    }
    Ok(total)
}

/// runc's stats layout from the agent's cgroup v2 numbers.
pub fn stats_json(s: &agent::StatsContainerResponse) -> Value {
    let cpu = s.cpu.get_or_default();
    let mem = s.memory.get_or_default();
    let pids = s.pids.get_or_default();
    let unlimited = |v: u64| if v == 0 { u64::MAX } else { v };
    let mut bytes = Vec::new();
    let mut ios = Vec::new();
    for d in &s.io {
        for (op, b, n) in [
            ("Read", d.read_bytes, d.read_ios),
            ("Write", d.write_bytes, d.write_ios),
        ] {
            bytes.push(json!({"major": d.major, "minor": d.minor, "op": op, "value": b}));
            ios.push(json!({"major": d.major, "minor": d.minor, "op": op, "value": n}));
        }
    }
    json!({
        "cpu": {
            "usage": {
                "total": cpu.usage_usec.saturating_mul(1000),
                "kernel": cpu.system_usec.saturating_mul(1000),
                "user": cpu.user_usec.saturating_mul(1000)
            },
            "throttling": {
                "periods": cpu.nr_periods,
                "throttledPeriods": cpu.nr_throttled,
                "throttledTime": cpu.throttled_usec.saturating_mul(1000)
            }
        },
        "memory": {
            "cache": mem.file,
            "usage": {
                "limit": unlimited(mem.limit),
                "usage": mem.usage,
                "max": mem.max_usage,
                "failcnt": mem.oom_events
            },
            "swap": {"usage": mem.swap_usage, "limit": 0},
            "raw": {
                "anon": mem.anon,
                "file": mem.file,
                "oom": mem.oom_events,
                "oom_kill": mem.oom_kill
            }
        },
        "pids": {"current": pids.current, "limit": pids.limit},
        "blkio": {
            "ioServiceBytesRecursive": bytes,
            "ioServicedRecursive": ios
        }
    })
}

fn print_event(kind: &str, id: &str, data: Option<Value>) -> Result<(), CliError> {
    let mut ev = json!({"type": kind, "id": id});
    if let Some(d) = data {
        ev["data"] = d;
    }
    super::print_out(&format!("{ev}\n"), "events")
}

fn running(store: &StateStore, id: &str) -> bool {
    store
        .load(id)
        .map(|r| r.effective_status() != Status::Stopped)
        .unwrap_or(false)
}

async fn stats(agent: &AgentClient, id: &str) -> Result<Value, MonitorError> {
    let mut req = agent::ContainerRequest::new();
    req.container_id = id.to_owned();
    agent
        .service()
        .stats_container(agent.context(), &req)
        .await
        .map(|r| stats_json(&r))
        .map_err(|e| monitor::rpc_error("StatsContainer", &e))
}

/// `vmrun events`.
pub fn events(store: &StateStore, a: &EventsArgs) -> Result<(), CliError> {
    let record = store.load(&a.id)?;
    let status = record.effective_status();
    if matches!(status, Status::Stopped | Status::Creating) {
        return Err(CliError::WrongState {
            id: a.id.clone(),
            status,
            what: "events need a created, running or paused container",
        });
    }
    let uds = super::exec::vsock_uds(&record)?;
    let rt = super::exec::runtime()?;
    let result = rt.block_on(stream(store, a, &uds));
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn stream(store: &StateStore, a: &EventsArgs, uds: &std::path::Path) -> Result<(), CliError> {
    let id = a.id.as_str();
    {
        let agent = super::exec::connect_agent(uds).await?;
        if a.stats {
            print_event("stats", id, Some(stats(&agent, id).await?))?;
            return Ok(());
        }
        let oom_agent = agent.clone();
        let mut oom = tokio::spawn(async move {
            // A long poll without deadline; it fails when the VM goes away.
            oom_agent
                .service()
                .get_oom_event(
                    ttrpc::context::Context::default(),
                    &agent::GetOomEventRequest::new(),
                )
                .await
        });
        let mut tick = tokio::time::interval(a.interval);
        tick.tick().await; // the first tick is immediate; runc's first stats come after one interval
        let mut gone = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                r = &mut oom => {
                    match r {
                        Ok(Ok(ev)) => {
                            if ev.container_id == id {
                                print_event("oom", id, None)?;
                            }
                            let again = agent.clone();
                            oom = tokio::spawn(async move {
                                again
                                    .service()
                                    .get_oom_event(
                                        ttrpc::context::Context::default(),
                                        &agent::GetOomEventRequest::new(),
                                    )
                                    .await
                            });
                        }
                        _ => {
                            // The agent is gone: the container is (about to be) stopped.
                            return Ok(());
                        }
                    }
                }
                _ = tick.tick() => {
                    match stats(&agent, id).await {
                        Ok(data) => print_event("stats", id, Some(data))?,
                        Err(e) if running(store, id) => {
                            ::log::warn!("container {id}: {e}");
                        }
                        Err(_) => return Ok(()),
                    }
                }
                _ = gone.tick() => {
                    if !running(store, id) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["", "5", "s", "5x", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn runc_stats_layout() {
        let mut s = agent::StatsContainerResponse::new();
        let mut m = agent::MemoryStats::new();
        m.usage = 10;
        m.limit = 0;
        m.oom_kill = 2;
        s.memory = protobuf::MessageField::some(m);
        let mut c = agent::CpuStats::new();
        c.usage_usec = 3;
        s.cpu = protobuf::MessageField::some(c);
        let mut d = agent::IoDeviceStats::new();
        d.major = 254;
        d.read_bytes = 7;
        s.io.push(d);
        let v = stats_json(&s);
        assert_eq!(v["cpu"]["usage"]["total"], 3000);
        assert_eq!(v["memory"]["usage"]["usage"], 10);
        assert_eq!(v["memory"]["usage"]["limit"], u64::MAX);
        assert_eq!(v["memory"]["raw"]["oom_kill"], 2);
        assert_eq!(v["pids"]["current"], 0);
        assert_eq!(v["blkio"]["ioServiceBytesRecursive"][0]["value"], 7);
        assert_eq!(v["blkio"]["ioServiceBytesRecursive"][0]["op"], "Read");
    }
}
