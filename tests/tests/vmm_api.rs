// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun-vmm`'s API socket on a live guest (the kit's `boot` program printing a tick every
//! 20 ms): pause stops the guest, resume restarts it, metrics report real counters, stop ends
//! the VMM with its documented status.

use std::time::{Duration, Instant};
use vmrun_tests::require_kvm;
use vmrun_tests::vmm::{api, guest_elf, TempDir, Vm};

/// `exit_code::API_STOP` in vmrun-vmm.
const API_STOP: i32 = 254;

#[test]
fn vmm_api_pause_resume_metrics_stop() {
    if !require_kvm("vmm_api_pause_resume_metrics_stop") {
        return;
    }
    let dir = TempDir::new("kit-api").expect("temp dir");
    let sock = dir.join("api.sock");
    let vm = Vm::spawn([
        "--kernel",
        guest_elf("boot").to_str().expect("utf-8"),
        "--test-payload",
        "--cmdline",
        "kit.mode=ticks kit.ticks=1000",
        "--api-sock",
        sock.to_str().expect("utf-8"),
    ])
    .expect("spawn");
    let steps = || -> Result<(), String> {
        vm.wait_line("TICK 3", Duration::from_secs(10))
            .ok_or("no TICK 3")?;
        let r = api(&sock, "pause").map_err(|e| e.to_string())?;
        if r["ok"] != true {
            return Err(format!("pause: {r}"));
        }
        // Let lines written before the pause reach us; then at most one tick (parked mid-line)
        // may complete while paused.
        std::thread::sleep(Duration::from_millis(150));
        let paused_at = vm.line_count();
        std::thread::sleep(Duration::from_millis(400));
        let after = vm.line_count();
        if after > paused_at + 1 {
            return Err(format!("{} ticks while paused", after - paused_at));
        }
        let r = api(&sock, "resume").map_err(|e| e.to_string())?;
        if r["ok"] != true {
            return Err(format!("resume: {r}"));
        }
        let t = Instant::now();
        while vm.line_count() < after + 5 {
            if t.elapsed() > Duration::from_secs(5) {
                return Err(String::from("no ticks after resume"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let m = api(&sock, "metrics").map_err(|e| e.to_string())?;
        let out = m["metrics"]["exits"]["io_out"].as_u64().unwrap_or(0);
        let lines = u64::try_from(vm.line_count()).unwrap_or(u64::MAX);
        // Every serial byte is at least one port write.
        if m["ok"] != true || out < lines * 6 {
            return Err(format!("metrics: io_out {out} for {lines} lines: {m}"));
        }
        if m["metrics"]["rss_bytes"].as_u64().unwrap_or(0) == 0 {
            return Err(format!("metrics: no rss_bytes: {m}"));
        }
        let r = api(&sock, "stop").map_err(|e| e.to_string())?;
        if r["ok"] != true {
            return Err(format!("stop: {r}"));
        }
        Ok(())
    };
    let result = steps();
    let o = vm.wait(Duration::from_secs(10));
    if let Err(e) = result {
        panic!("{e}\n{}", o.dump());
    }
    assert_eq!(o.code(), Some(API_STOP), "{}", o.dump());
}
