// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! PASS/FAIL bookkeeping: `PASS <name>` or `FAIL <name>: <why>` per check, `DONE passed=N
//! failed=M` at the end, then exit status 0 (all passed) or 1.

use crate::boot::BootParams;
use crate::cmdline::selected;
use crate::exit::exit;
use alloc::string::String;

/// A program's run: its command line and counters.
#[derive(Debug)]
pub struct Report {
    /// The kernel command line ("" if the VMM passed none).
    pub cmdline: &'static str,
    /// The zero page, if `rsi` held a plausible pointer.
    pub boot: Option<BootParams>,
    passed: u32,
    failed: u32,
}

impl Report {
    /// Starts a run from the boot_params address given to `kit_main`.
    pub fn start(boot_params: u64) -> Self {
        let boot = BootParams::new(boot_params);
        let cmdline = boot.and_then(|b| b.cmdline()).unwrap_or("");
        if let Some(khz) = crate::cmdline::kit_number(cmdline, "tsc_khz") {
            crate::arch::set_tsc_khz(khz);
        }
        Self {
            cmdline,
            boot,
            passed: 0,
            failed: 0,
        }
    }

    /// Whether `kit.test=` selects `name`.
    pub fn selected(&self, name: &str) -> bool {
        selected(self.cmdline, name)
    }

    /// Records a result.
    pub fn record(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.passed += 1;
                crate::println!("PASS {name}");
            }
            Err(why) => {
                self.failed += 1;
                crate::println!("FAIL {name}: {why}");
            }
        }
    }

    /// Runs `f` and records its result if `name` is selected.
    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Result<(), String>) {
        if self.selected(name) {
            let r = f();
            self.record(name, r);
        }
    }

    /// Number of failures so far.
    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// Prints the summary and exits with 0 (no failure) or 1. With `kit.hold_ms=N` the guest
    /// first prints `HOLD` and spins (no exits) for N ms, so the host can inspect the live VMM
    /// (metrics, memory) after the checks.
    pub fn finish(self) -> ! {
        crate::println!("DONE passed={} failed={}", self.passed, self.failed);
        if let Some(ms) = crate::cmdline::kit_number(self.cmdline, "hold_ms") {
            crate::println!("HOLD");
            let d = crate::arch::Deadline::after_ms(ms);
            while !d.expired() {
                core::hint::spin_loop();
            }
        }
        exit(u8::from(self.failed != 0))
    }
}
