// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Task statistics: the guest's cgroup v2 numbers (agent `StatsContainer`) as containerd's
//! `io.containerd.cgroups.v2.Metrics`, which ctr and the CRI plugin decode.

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use vmrun_protocol::agent::StatsContainerResponse;

/// The type URL containerd expects for cgroup v2 metrics.
pub const METRICS_V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// Converts the agent's statistics.
pub fn metrics(s: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(c) = s.cpu.as_ref() {
        m.cpu = MessageField::some(CPUStat {
            usage_usec: c.usage_usec,
            user_usec: c.user_usec,
            system_usec: c.system_usec,
            nr_periods: c.nr_periods,
            nr_throttled: c.nr_throttled,
            throttled_usec: c.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(mem) = s.memory.as_ref() {
        m.memory = MessageField::some(MemoryStat {
            usage: mem.usage,
            usage_limit: mem.limit,
            max_usage: mem.max_usage,
            swap_usage: mem.swap_usage,
            anon: mem.anon,
            file: mem.file,
            ..Default::default()
        });
        m.memory_events = MessageField::some(MemoryEvents {
            oom: mem.oom_events,
            oom_kill: mem.oom_kill,
            ..Default::default()
        });
    }
    if let Some(p) = s.pids.as_ref() {
        m.pids = MessageField::some(PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    m.io = MessageField::some(IOStat {
        usage: s
            .io
            .iter()
            .map(|d| IOEntry {
                major: u64::from(d.major),
                minor: u64::from(d.minor),
                rbytes: d.read_bytes,
                wbytes: d.write_bytes,
                rios: d.read_ios,
                wios: d.write_ios,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    m
}

/// The metrics packed as containerd wants them in `StatsResponse.stats`.
pub fn metrics_any(s: &StatsContainerResponse) -> Result<Any, protobuf::Error> {
    Ok(Any {
        type_url: METRICS_V2_TYPE.to_owned(),
        value: metrics(s).write_to_bytes()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmrun_protocol::agent::{CpuStats, MemoryStats, PidsStats};

    #[test]
    fn converts_and_round_trips() {
        let mut s = StatsContainerResponse::new();
        s.cpu = MessageField::some(CpuStats {
            usage_usec: 7,
            ..Default::default()
        });
        s.memory = MessageField::some(MemoryStats {
            usage: 4096,
            limit: 8192,
            oom_kill: 1,
            ..Default::default()
        });
        s.pids = MessageField::some(PidsStats {
            current: 2,
            ..Default::default()
        });
        let any = metrics_any(&s).expect("encode");
        assert_eq!(any.type_url, METRICS_V2_TYPE);
        let m = Metrics::parse_from_bytes(&any.value).expect("decode");
        assert_eq!(m.cpu.usage_usec, 7);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, 8192);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.pids.current, 2);
    }
}
