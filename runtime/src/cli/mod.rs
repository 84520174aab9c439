// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The `vmrun` command line: runc's global flags and subcommands, parsed with clap, and the
//! code behind each subcommand.
//!
//! Every command is short-lived, like runc: it reads or changes the state store
//! ([`crate::state`]) and talks to the container's monitor ([`crate::monitor`]) over its
//! control socket. Errors are [`CliError`]s; `main` prints them on stderr and, with `--log`, as
//! a log line (JSON with `--log-format json`), then exits 1.

pub mod log;
pub mod signal;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::oci::{self, BundleError};
use crate::state::{StateError, StateStore, Status};

pub use self::log::LogFormat;
use self::signal::SignalError;

/// The default state root.
pub const DEFAULT_ROOT: &str = "/run/vmrun";

/// Errors of the CLI's commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The bundle is invalid.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// An unknown signal.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// A command that needs a state the container is not in.
    #[error("container {id:?} is {status}: {what}")]
    WrongState {
        /// Container id.
        id: String,
        /// Its status.
        status: Status,
        /// What was refused.
        what: &'static str,
    },
    /// Bad combination of flags.
    #[error("{0}")]
    Usage(String),
    /// Writing output failed.
    #[error("cannot write {what}")]
    Output {
        /// What was written.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The log file could not be opened.
    #[error(transparent)]
    Log(#[from] self::log::LogError),
}

/// `vmrun`: a runc-compatible OCI runtime whose containers run in microVMs.
#[derive(Debug, Parser)]
#[command(name = "vmrun", version, about, long_about = None)]
pub struct Cli {
    /// Global flags.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before the subcommand (runc's).
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for runc compatibility; cgroups are managed inside the guest.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for crun compatibility (`--cgroup-manager`); ignored for the same reason.
    #[arg(long, global = true, hide = true)]
    pub cgroup_manager: Option<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a default config.json (runc's defaults: `sh` on a terminal).
    Spec {
        /// Bundle directory to write config.json into.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Accepted for runc compatibility; the spec is the same.
        #[arg(long)]
        rootless: bool,
    },
    /// Print the OCI state of a container as JSON.
    State {
        /// Container id.
        id: String,
    },
    /// List containers.
    #[command(alias = "ls")]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the runtime's features as JSON (OCI features document).
    Features,
}

/// Output format of `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// Aligned columns.
    Table,
    /// A JSON array of states.
    Json,
}

/// Runs the parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> Result<i32, CliError> {
    let g = &cli.global;
    {
        let target = match &g.log {
            Some(p) => self::log::Target::File(p),
            None => self::log::Target::Stderr,
        };
        self::log::init(target, g.log_format, g.debug)?;
    }
    ::log::debug!("vmrun {:?}", std::env::args().collect::<Vec<_>>());
    match cli.command {
        Command::Spec { bundle, .. } => {
            oci::write_default_spec(&bundle)?;
            Ok(0)
        }
        Command::State { id } => {
            let store = StateStore::open(&g.root)?;
            let state = store.load(&id)?.oci_state();
            let text = serde_json::to_string_pretty(&state)
                .map_err(|e| output_error("state", std::io::Error::other(e)))?;
            print_out(&format!("{text}\n"), "state")?;
            Ok(0)
        }
        Command::List { format, quiet } => {
            let store = StateStore::open(&g.root)?;
            list(&store, format, quiet)?;
            Ok(0)
        }
        Command::Features => {
            let text = serde_json::to_string_pretty(&features())
                .map_err(|e| output_error("features", std::io::Error::other(e)))?;
            print_out(&format!("{text}\n"), "features")?;
            Ok(0)
        }
    }
}

fn output_error(what: &str, source: std::io::Error) -> CliError {
    CliError::Output {
        what: what.to_owned(),
        source,
    }
}

fn print_out(text: &str, what: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| output_error(what, e))
}

fn list(store: &StateStore, format: ListFormat, quiet: bool) -> Result<(), CliError> {
    let states: Vec<_> = store.list()?.iter().map(|r| r.oci_state()).collect();
    let mut text = String::new();
    if quiet {
        for s in &states {
            text.push_str(&s.id);
            text.push('\n');
        }
    } else {
        match format {
            ListFormat::Json => {
                text = serde_json::to_string(&states)
                    .map_err(|e| output_error("list", std::io::Error::other(e)))?;
                text.push('\n');
            }
            ListFormat::Table => {
                let w = states.iter().map(|s| s.id.len()).max().unwrap_or(2).max(2);
                text.push_str(&format!(
                    "{:w$}   {:7}   {:8}   {:40}   {:30}   OWNER\n",
                    "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                ));
                for s in &states {
                    text.push_str(&format!(
                        "{:w$}   {:<7}   {:8}   {:40}   {:30}   root\n",
                        s.id,
                        s.pid,
                        s.status.as_str(),
                        s.bundle.display(),
                        s.created
                    ));
                }
            }
        }
    }
    print_out(&text, "list")
}

/// The OCI runtime features document (`runc features`) of this runtime.
pub fn features() -> serde_json::Value {
    let sigs: Vec<String> = (1..=31)
        .filter_map(signal::signal_name)
        .map(str::to_owned)
        .collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": crate::state::OCI_VERSION,
        "hooks": [],
        "mountOptions": ["ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec",
                         "relatime", "strictatime", "private", "rprivate", "shared",
                         "rshared", "slave", "rslave"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": [],
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.vmrun.sandbox": "microvm",
            "io.vmrun.signals": sigs.join(",")
        }
    })
}

/// Absolute form of a path given on the command line (relative to the current directory).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("vmrun").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli = parse(&["state", "--root", "/x", "c"]);
        assert_eq!(cli.global.root, PathBuf::from("/x"));
    }

    #[test]
    fn features_document() {
        let f = features();
        assert_eq!(f["ociVersionMax"], crate::state::OCI_VERSION);
        assert_eq!(f["linux"]["cgroup"]["v2"], true);
    }
}
