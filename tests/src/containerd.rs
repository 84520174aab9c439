// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! A private containerd for shim tests: its own root, state, sockets and config in the test's
//! directory, running inside a network namespace the harness creates (and deletes), with this
//! build's `containerd-shim-vmrun-v2` first on its PATH and `VMRUN_CONFIG` / `VMRUN_SHIM_ROOT`
//! in its environment (so in the shim's). Images are built locally (no registry).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{mounts_under, processes_mentioning, run_bounded, text, CliEnv};
use crate::{host_bin, ProcessGroup};

/// The runtime name of the vmrun shim.
pub const RUNTIME: &str = "io.containerd.vmrun.v2";

/// A running private containerd. Stopped (and its netns deleted) on drop.
#[derive(Debug)]
pub struct Containerd {
    env: CliEnv,
    netns: String,
    sock: PathBuf,
    ns: String,
    process: Option<ProcessGroup>,
}

impl Containerd {
    /// Starts containerd for test `tag` and waits until it answers.
    pub fn start(tag: &str) -> Self {
        let env = CliEnv::new(tag);
        let d = env.dir().to_path_buf();
        let netns = format!("vmrun-shim-{}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "cannot create netns {netns}");
        let _ = Command::new("ip")
            .args(["-n", &netns, "link", "set", "lo", "up"])
            .status();
        let sock = d.join("c.sock");
        std::fs::create_dir_all(d.join("sr")).expect("shim root");
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{0}/c-root\"\nstate = \"{0}/c-state\"\n[grpc]\n  address = \"{1}\"\n\
                 [ttrpc]\n  address = \"{1}.ttrpc\"\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n\
                 \x20   disable_cgroup = true\n    restrict_oom_score_adj = true\n",
                d.display(),
                sock.display()
            ),
        )
        .expect("containerd.toml");
        let mut c = Self {
            env,
            netns,
            sock,
            ns: format!("vmrun-shim-{}", std::process::id()),
            process: None,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let d = self.env.dir().to_path_buf();
        let bin_dir = host_bin("containerd-shim-vmrun-v2")
            .parent()
            .expect("bin dir")
            .to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .expect("log");
        let pg = ProcessGroup::spawn(
            Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{}", self.netns))
                .arg("containerd")
                .arg("--config")
                .arg(d.join("containerd.toml"))
                .env("PATH", path)
                .env("VMRUN_CONFIG", d.join("config.toml"))
                .env("VMRUN_SHIM_ROOT", self.shim_root())
                .env("VMRUN_ARTIFACTS", crate::artifacts_dir())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        )
        .expect("spawn containerd");
        self.process = Some(pg);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops containerd (SIGKILL to its process group: shims live in sessions of their own)
    /// and starts it again on the same root and state.
    pub fn restart(&mut self) {
        self.process = None;
        self.spawn();
    }

    /// The test directory.
    pub fn dir(&self) -> &Path {
        self.env.dir()
    }

    /// Where the shims put their sandbox state directories.
    pub fn shim_root(&self) -> PathBuf {
        self.env.dir().join("sr")
    }

    /// The containerd namespace the test uses.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// A `ctr` command against this containerd, in the test's namespace.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.sock)
            .args(["-n", &self.ns])
            .args(args);
        cmd
    }

    /// Runs `ctr` with a bound of 300 s.
    pub fn ctr(&self, args: &[&str]) -> Output {
        run_bounded(self.ctr_command(args), Duration::from_secs(300))
    }

    /// Imports the locally built busybox image; returns its name.
    pub fn import_busybox(&self) -> &'static str {
        let tar = crate::cli::busybox_image(&self.env.dir().join("img"));
        let out = self.ctr(&["images", "import", &tar.to_string_lossy()]);
        assert!(out.status.success(), "import: {}", text(&out.stderr));
        "docker.io/library/vmrunbox:local"
    }

    /// The containerd log (for failure messages).
    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(self.env.dir().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Pids of the vmrun shims serving this test's namespace.
    pub fn shim_pids(&self) -> Vec<i32> {
        processes_mentioning(Path::new(&format!("-namespace {}", self.ns)))
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| text(&c).contains("containerd-shim-vmrun-v2"))
            })
            .collect()
    }

    /// Waits until no sandbox directory, VM process or mount of the shims is left.
    pub fn assert_nothing_left(&self, timeout: Duration) {
        let root = self.shim_root();
        let deadline = Instant::now() + timeout;
        loop {
            let dirs: Vec<_> = std::fs::read_dir(&root)
                .map(|r| r.filter_map(Result::ok).map(|e| e.file_name()).collect())
                .unwrap_or_default();
            let procs = processes_mentioning(&root);
            let mounts = mounts_under(self.env.dir());
            if dirs.is_empty() && procs.is_empty() && mounts.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: sandbox dirs {dirs:?}, processes {procs:?}, mounts {mounts:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A failed test may leave shims (sessions of their own) and their mounts: end them.
        for pid in self.shim_pids() {
            // SAFETY: kill(2) of a shim this test's containerd started (matched by namespace).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.process = None;
        for m in mounts_under(self.env.dir()).iter().rev() {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}
