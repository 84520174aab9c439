// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The `vmrun` command line: runc's global flags and subcommands, parsed with clap, and the
//! code behind each subcommand.
//!
//! Every command is short-lived, like runc: it reads or changes the state store
//! ([`crate::state`]) and talks to the container's monitor ([`crate::monitor`]) over its
//! control socket. Errors are [`CliError`]s; `main` prints them on stderr and, with `--log`, as
//! a log line (JSON with `--log-format json`), then exits 1.

pub mod events;
pub mod exec;
pub mod log;
pub mod signal;
pub mod update;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::monitor::{self, MonitorError};
use crate::oci::{self, Bundle, BundleError};
use crate::state::{StateError, StateStore, Status};

pub use self::log::LogFormat;
use self::signal::{parse_signal, SignalError};

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
    /// The monitor failed or refused.
    #[error(transparent)]
    Monitor(Box<MonitorError>),
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
    /// A host cgroup setting is invalid or could not be applied.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
}

impl From<MonitorError> for CliError {
    fn from(e: MonitorError) -> Self {
        Self::Monitor(Box::new(e))
    }
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
    /// `linux.cgroupsPath` is systemd's `slice:prefix:name` (mapped to the cgroupfs path
    /// systemd uses; no scope unit is created).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// crun's `--cgroup-manager systemd|cgroupfs` (`systemd` is `--systemd-cgroup`).
    #[arg(long, global = true, hide = true)]
    pub cgroup_manager: Option<String>,
}

impl GlobalOpts {
    /// Whether cgroup paths are systemd's `slice:prefix:name`.
    pub fn uses_systemd_cgroup(&self) -> bool {
        self.systemd_cgroup || self.cgroup_manager.as_deref() == Some("systemd")
    }
}

/// Flags of `create` and `run`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Bundle directory (default: the current directory).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket to which the pty master of a terminal container is sent (SCM_RIGHTS).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// File to write the monitor's pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility (the guest always pivots).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Extra file descriptors passed to the container; not supported across the VM boundary,
    /// so any value but 0 is refused.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Container id.
    pub id: String,
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
    /// Create a container: boot its microVM and create the container, stopped before its
    /// program runs.
    Create(CreateArgs),
    /// Run the program of a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Create and start a container, stream its stdio, and exit with its exit status.
    Run {
        /// The `create` flags.
        #[command(flatten)]
        create: CreateArgs,
        /// Detach once started.
        #[arg(short, long)]
        detach: bool,
        /// Keep the stopped container's state (do not delete it after it exits).
        #[arg(long)]
        keep: bool,
    },
    /// Print the OCI state of a container as JSON.
    State {
        /// Container id.
        id: String,
    },
    /// Send a signal (default SIGTERM) to a container's process.
    Kill {
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
        /// Container id.
        id: String,
        /// Signal name or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container: its microVM, daemons, mounts and state.
    Delete {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        /// Container id.
        id: String,
    },
    /// Run an additional process in a running container.
    Exec(exec::ExecArgs),
    /// Internal: the monitor of a detached exec (started by `exec -d`).
    #[command(hide = true)]
    ExecMonitor(exec::ExecMonitorArgs),
    /// Change a container's cgroup limits (in the guest, and the host cgroup's CPU shares).
    Update(update::UpdateArgs),
    /// Print a container's events as JSON lines: stats every --interval and OOM kills until
    /// it is gone, or with --stats its stats once.
    Events(events::EventsArgs),
    /// Freeze every process of a running container.
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// Container id.
        id: String,
    },
    /// List a container's processes (pids in the guest).
    Ps {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Container id.
        id: String,
        /// Accepted for runc compatibility (`ps` options); ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
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
    /// Check that this host can run vmrun sandboxes (KVM, backend, artifacts, daemons).
    Check {
        /// Also boot a throw-away sandbox and talk to its agent.
        #[arg(long)]
        boot: bool,
        /// The host configuration to check (default: `$VMRUN_CONFIG`, else /etc/vmrun/config.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Internal: the per-container monitor process (started by `create`).
    #[command(hide = true)]
    Monitor(monitor::MonitorArgs),
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
    if !matches!(cli.command, Command::Monitor(_) | Command::ExecMonitor(_)) {
        let target = match &g.log {
            Some(p) => self::log::Target::File(p),
            None => self::log::Target::Stderr,
        };
        self::log::init(target, g.log_format, g.debug)?;
    }
    ::log::debug!("vmrun {:?}", std::env::args().collect::<Vec<_>>());
    let pause = matches!(cli.command, Command::Pause { .. });
    match cli.command {
        Command::Spec { bundle, .. } => {
            oci::write_default_spec(&bundle)?;
            Ok(0)
        }
        Command::Create(args) => {
            let store = StateStore::open(&g.root)?;
            create(&store, g, &args)?;
            Ok(0)
        }
        Command::Start { id } => {
            let store = StateStore::open(&g.root)?;
            start(&store, &id)?;
            Ok(0)
        }
        Command::Run {
            create: args,
            detach,
            keep,
        } => {
            let store = StateStore::open(&g.root)?;
            if detach {
                create(&store, g, &args)?;
                if let Err(e) = start(&store, &args.id) {
                    // Leave nothing behind: the container was created by this command.
                    let _ = delete(&store, &args.id, true);
                    return Err(e);
                }
                Ok(0)
            } else {
                let bundle = load_bundle(&args, g)?;
                if args.console_socket.is_some() && !bundle.terminal() {
                    return Err(CliError::Usage(
                        "--console-socket given but process.terminal is false".into(),
                    ));
                }
                Ok(monitor::run_foreground(
                    &store,
                    &args,
                    &bundle,
                    keep,
                    g.uses_systemd_cgroup(),
                )?)
            }
        }
        Command::Kill { all, id, signal } => {
            let store = StateStore::open(&g.root)?;
            let signal = parse_signal(&signal)?;
            kill(&store, &id, signal, all)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            let store = StateStore::open(&g.root)?;
            delete(&store, &id, force)?;
            Ok(0)
        }
        Command::Pause { id } | Command::Resume { id } => {
            let store = StateStore::open(&g.root)?;
            let record = store.load(&id)?;
            let status = record.effective_status();
            let want = if pause {
                Status::Running
            } else {
                Status::Paused
            };
            if status != want {
                return Err(CliError::WrongState {
                    id,
                    status,
                    what: if pause {
                        "cannot pause a container that is not running"
                    } else {
                        "cannot resume a container that is not paused"
                    },
                });
            }
            let req = if pause {
                monitor::Request::Pause
            } else {
                monitor::Request::Resume
            };
            monitor::request(&store, &id, &req)?;
            Ok(0)
        }
        Command::Ps { format, id, .. } => {
            let store = StateStore::open(&g.root)?;
            let record = store.load(&id)?;
            let status = record.effective_status();
            let pids = if status == Status::Stopped || status == Status::Creating {
                Vec::new()
            } else {
                monitor::request_with_answer(&store, &id, &monitor::Request::Ps)?
                    .pids
                    .unwrap_or_default()
            };
            let text = match format {
                ListFormat::Json => format!("{}\n", serde_json::json!(pids)),
                ListFormat::Table => {
                    let mut t = String::from("PID (guest)\n");
                    for p in pids {
                        t.push_str(&format!("{p}\n"));
                    }
                    t
                }
            };
            print_out(&text, "ps")?;
            Ok(0)
        }
        Command::Monitor(args) => Ok(monitor::main(g, &args)),
        Command::Check { boot, config } => {
            let opts = crate::check::CheckOptions {
                config_path: config,
                boot,
                root_dir: absolute(&g.root).join(monitor::SANDBOX_DIR),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| output_error("check (async runtime)", e))?;
            let report = rt.block_on(crate::check::run_check(&opts));
            rt.shutdown_timeout(Duration::from_millis(100));
            let report = report.map_err(|e| CliError::Usage(monitor::chain(&e)))?;
            print_out(&format!("{report}\n"), "check")?;
            Ok(if report.ok() { 0 } else { 1 })
        }
        Command::Update(args) => {
            let store = StateStore::open(&g.root)?;
            update::update(&store, &args)?;
            Ok(0)
        }
        Command::Events(args) => {
            let store = StateStore::open(&g.root)?;
            events::events(&store, &args)?;
            Ok(0)
        }
        Command::Exec(args) => {
            let store = StateStore::open(&g.root)?;
            exec::exec(&store, g, &args)
        }
        Command::ExecMonitor(args) => {
            let store = StateStore::open(&g.root)?;
            Ok(exec::exec_monitor(&store, &args))
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

fn load_bundle(args: &CreateArgs, g: &GlobalOpts) -> Result<Bundle, CliError> {
    crate::state::validate_id(&args.id)?;
    if args.preserve_fds != 0 {
        return Err(CliError::Usage(
            "--preserve-fds is not supported: file descriptors cannot cross into the microVM"
                .into(),
        ));
    }
    let bundle = Bundle::load(&args.bundle)?;
    // A bad cgroupsPath is refused before anything is created.
    let path = &bundle.spec["linux"]["cgroupsPath"];
    if !path.is_null() {
        let text = path
            .as_str()
            .ok_or_else(|| CliError::Usage("linux.cgroupsPath must be a string".to_owned()))?;
        crate::cgroups::parse_path(text, g.uses_systemd_cgroup())?;
    }
    Ok(bundle)
}

/// `create`: validates the bundle, then starts the monitor, which boots the sandbox and
/// creates the container; returns once the container is created (or failed, leaving nothing).
fn create(store: &StateStore, g: &GlobalOpts, args: &CreateArgs) -> Result<(), CliError> {
    let bundle = load_bundle(args, g)?;
    if bundle.terminal() && args.console_socket.is_none() {
        return Err(CliError::Usage(
            "cannot allocate a terminal without --console-socket when the container is detached"
                .into(),
        ));
    }
    if !bundle.terminal() && args.console_socket.is_some() {
        return Err(CliError::Usage(
            "--console-socket given but process.terminal is false".into(),
        ));
    }
    monitor::spawn_detached(store, g, args, &bundle)?;
    Ok(())
}

fn start(store: &StateStore, id: &str) -> Result<(), CliError> {
    let record = store.load(id)?;
    let status = record.effective_status();
    if status != Status::Created {
        return Err(CliError::WrongState {
            id: id.to_owned(),
            status,
            what: "cannot start a container that is not created",
        });
    }
    monitor::request(store, id, &monitor::Request::Start)?;
    Ok(())
}

fn kill(store: &StateStore, id: &str, signal: u32, all: bool) -> Result<(), CliError> {
    let record = store.load(id)?;
    let status = record.effective_status();
    if status == Status::Stopped {
        if all {
            // runc: `kill --all` of a stopped container is not an error (nothing is left).
            return Ok(());
        }
        return Err(CliError::WrongState {
            id: id.to_owned(),
            status,
            what: "container not running",
        });
    }
    monitor::request(store, id, &monitor::Request::Kill { signal, all })?;
    Ok(())
}

/// How long `delete` waits for a monitor to finish its teardown.
const DELETE_WAIT: Duration = Duration::from_secs(30);

/// `delete`: a stopped container's state goes; a created one, or with `--force` a running
/// one, is killed first (its monitor tears the sandbox down and exits). A dead monitor's
/// leftovers (mounts, sandbox directory) are removed too.
fn delete(store: &StateStore, id: &str, force: bool) -> Result<(), CliError> {
    let record = store.load(id)?;
    let status = record.effective_status();
    match status {
        Status::Stopped => {}
        Status::Created => ask_monitor_to_delete(store, &record),
        Status::Creating | Status::Running | Status::Paused => {
            if !force {
                return Err(CliError::WrongState {
                    id: id.to_owned(),
                    status,
                    what: "cannot delete a container that is not stopped (use --force)",
                });
            }
            ask_monitor_to_delete(store, &record);
        }
    }
    if !monitor::wait_monitor_gone(&record, DELETE_WAIT) {
        ::log::warn!("container {id}: the monitor did not exit; killing it");
        monitor::kill_monitor(&record);
        monitor::wait_monitor_gone(&record, Duration::from_secs(5));
    }
    let lock = store.lock(id)?;
    let record = lock.load()?;
    monitor::cleanup_leftovers(&record);
    store.remove(lock)?;
    Ok(())
}

fn ask_monitor_to_delete(store: &StateStore, record: &crate::state::ContainerRecord) {
    if record.status == Status::Creating {
        // Still booting: there is no control socket yet.
        monitor::kill_monitor(record);
        return;
    }
    if let Err(e) = monitor::request(store, &record.id, &monitor::Request::Delete) {
        // The container may have exited just now and its monitor be tearing the VM down
        // (its control socket is gone then): `delete` waits for it, and kills it only if it
        // does not finish.
        ::log::debug!("container {}: {e}", record.id);
    }
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

/// The `io.vmrun.cgroup.devices` feature annotation: the guest agent is built without
/// libcontainer's `cgroupsv2_devices` (it needs static libbpf/libelf/zstd), so
/// `linux.resources.devices` rules are not enforced; the agent logs a warning per container.
pub const DEVICES_NOT_ENFORCED: &str = "not enforced: linux.resources.devices rules are \
    accepted but no cgroup v2 device program applies them in the guest (the agent logs a \
    warning); device nodes are limited to those the spec's linux.devices creates";

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
            "io.vmrun.signals": sigs.join(","),
            "io.vmrun.cgroup.devices": DEVICES_NOT_ENFORCED
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
    fn runc_shim_create_line() {
        // containerd-shim-runc-v2's exact call (research/clients.md §5.2).
        let cli = parse(&[
            "--root",
            "/run/containerd/runc/default",
            "--log",
            "/b/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "c1",
        ]);
        assert_eq!(
            cli.global.root,
            PathBuf::from("/run/containerd/runc/default")
        );
        assert_eq!(cli.global.log_format, LogFormat::Json);
        let Command::Create(c) = cli.command else {
            panic!("not create")
        };
        assert_eq!(c.bundle, PathBuf::from("/b"));
        assert_eq!(c.pid_file, Some(PathBuf::from("/b/init.pid")));
        assert_eq!(c.id, "c1");
    }

    #[test]
    fn conmon_lines() {
        parse(&[
            "--log-format=json",
            "--log",
            "/r/oci-log",
            "create",
            "--bundle",
            "/u",
            "--pid-file",
            "/r/pidfile",
            "--console-socket",
            "/tmp/conmon-term.X",
            "c",
        ]);
        parse(&["--systemd-cgroup", "delete", "--force", "c"]);
        let cli = parse(&["kill", "c", "9"]);
        assert!(
            matches!(cli.command, Command::Kill { ref signal, all: false, .. } if signal == "9")
        );
        let cli = parse(&["kill", "--all", "c", "KILL"]);
        assert!(matches!(cli.command, Command::Kill { all: true, .. }));
        let cli = parse(&["kill", "c"]);
        assert!(matches!(cli.command, Command::Kill { ref signal, .. } if signal == "SIGTERM"));
        parse(&[
            "create",
            "--bundle",
            "/b",
            "--no-pivot",
            "--no-new-keyring",
            "c",
        ]);
    }

    #[test]
    fn run_flags() {
        let cli = parse(&["run", "-b", "/b", "-d", "--pid-file", "/p", "--keep", "web"]);
        let Command::Run {
            create,
            detach,
            keep,
        } = cli.command
        else {
            panic!("not run")
        };
        assert!(detach && keep);
        assert_eq!(create.id, "web");
        let cli = parse(&["run", "web"]);
        assert!(
            matches!(cli.command, Command::Run { ref create, .. } if create.bundle == Path::new("."))
        );
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
        let devices = f["annotations"]["io.vmrun.cgroup.devices"]
            .as_str()
            .expect("devices annotation");
        assert!(devices.starts_with("not enforced: "), "{devices}");
    }
}
