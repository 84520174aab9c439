// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! `vmrun`: the runc-compatible OCI runtime CLI. See `docs/cli.md`.

use clap::Parser;
use vmrun_runtime::cli::{self, Cli};

fn main() {
    let cli = Cli::parse();
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = vmrun_runtime::monitor::chain(&e);
            // With --log the line goes to the log file (JSON with --log-format json), which
            // containerd's runc shim and conmon read back; stderr always gets the message too.
            if cli::log::logs_to_file() {
                log::error!("{msg}");
                log::logger().flush();
            }
            eprintln!("{msg}");
            1
        }
    };
    #[allow(clippy::exit)]
    std::process::exit(code);
}
