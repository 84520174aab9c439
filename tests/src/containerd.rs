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
/// The CRI sandbox image the harness builds and imports.
pub const PAUSE_IMAGE: &str = "docker.io/library/pause:local";

const PAUSE_C: &str = r#"#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, quit); signal(SIGTERM, quit); signal(SIGCHLD, reap);
    for (;;) pause();
}
"#;

const PAUSE_SCRIPT: &str = r#"set -e
cd "$1"; mkdir -p rootfs L/blobs/sha256
gcc -static -O2 -o rootfs/pause pause.c
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime='2024-01-01 00:00:00Z' -C rootfs -cf layer.tar .
DIFFID=$(sha256sum layer.tar | cut -d' ' -f1); gzip -n -1 -c layer.tar > layer.tar.gz
LDIG=$(sha256sum layer.tar.gz | cut -d' ' -f1); LSZ=$(stat -c %s layer.tar.gz); cp layer.tar.gz L/blobs/sha256/$LDIG
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/"],"Entrypoint":["/pause"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' $DIFFID > config.json
CDIG=$(sha256sum config.json | cut -d' ' -f1); CSZ=$(stat -c %s config.json); cp config.json L/blobs/sha256/$CDIG
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' $CDIG $CSZ $LDIG $LSZ > manifest.json
MDIG=$(sha256sum manifest.json | cut -d' ' -f1); MSZ=$(stat -c %s manifest.json); cp manifest.json L/blobs/sha256/$MDIG
printf '{"imageLayoutVersion":"1.0.0"}' > L/oci-layout
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"docker.io/library/pause:local","org.opencontainers.image.ref.name":"local"}}]}' $MDIG $MSZ > L/index.json
tar -C L -cf image.tar oci-layout index.json blobs
"#;

/// Builds the CRI sandbox image ([`PAUSE_IMAGE`]): a static `/pause` compiled here (sleeps,
/// reaps, exits 0 on SIGTERM/SIGINT), as an OCI archive written with tar and sha256sum.
pub fn pause_image(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("pause image dir");
    std::fs::write(dir.join("pause.c"), PAUSE_C).expect("pause.c");
    let st = Command::new("sh")
        .args(["-c", PAUSE_SCRIPT, "sh"])
        .arg(dir)
        .status()
        .expect("run sh");
    assert!(st.success(), "building the pause image failed");
    dir.join("image.tar")
}

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
        // A private bridge that exists only in the netns; no masquerade, no default route.
        std::fs::create_dir_all(d.join("cni")).expect("cni dir");
        let bridge: String = format!("vrb{}", std::process::id())
            .chars()
            .take(15)
            .collect();
        std::fs::write(
            d.join("cni/10-vmrun-test.conflist"),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"vmrun-test","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":true,"isDefaultGateway":false,"ipMasq":false,"hairpinMode":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.250.251.0/24"}}]],"dataDir":"{}/cni-ipam"}}}}]}}"#,
                d.display()
            ),
        )
        .expect("cni conflist");
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{0}/c-root\"\nstate = \"{0}/c-state\"\n[grpc]\n  address = \"{1}\"\n\
                 [ttrpc]\n  address = \"{1}.ttrpc\"\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n\
                 \x20   disable_cgroup = true\n    restrict_oom_score_adj = true\n\
                 \x20   sandbox_image = \"{PAUSE_IMAGE}\"\n    stream_server_address = \"127.0.0.1\"\n    stream_server_port = \"0\"\n\
                 \x20   [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      conf_dir = \"{0}/cni\"\n\
                 \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n      default_runtime_name = \"runc\"\n\
                 \x20     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n        runtime_type = \"io.containerd.runc.v2\"\n\
                 \x20     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.vmrun]\n        runtime_type = \"{RUNTIME}\"\n\
                 \x20       [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.vmrun.options]\n          ConfigPath = \"{0}/config.toml\"\n",
                d.display(),
                sock.display()
            ),
        )
        .expect("containerd.toml");
        let mut c = Self {
            env,
            netns,
            sock,
            // One containerd namespace per test: the shims' command lines name it, and
            // shim_pids must not see another test's shims.
            ns: format!("vmrun-shim-{}-{tag}", std::process::id()),
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

    /// The network namespace containerd (and so every pod's CNI bridge) lives in.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.netns)
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

    /// Imports the busybox and the static `pause` images into namespace `ns` (CRI uses
    /// `k8s.io`).
    pub fn import_cri_images(&self, ns: &str) {
        let bb = crate::cli::busybox_image(&self.env.dir().join("img"));
        let pause = pause_image(&self.env.dir().join("pause-img"));
        for tar in [bb, pause] {
            let mut cmd = Command::new("ctr");
            cmd.arg("--address")
                .arg(&self.sock)
                .args(["-n", ns, "images", "import"])
                .arg(&tar);
            let out = run_bounded(cmd, Duration::from_secs(120));
            assert!(out.status.success(), "import: {}", text(&out.stderr));
        }
    }

    /// containerd's gRPC socket (the CRI endpoint).
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// The whole containerd log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.env.dir().join("containerd.log")).unwrap_or_default()
    }

    /// The containerd log (for failure messages).
    pub fn log_tail(&self) -> String {
        let t = self.log();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Pids of the vmrun shims serving this test's namespace (`-namespace <ns>` in argv).
    pub fn shim_pids(&self) -> Vec<i32> {
        processes_mentioning(Path::new(&format!("-namespace {}", self.ns)))
            .into_iter()
            .filter(|pid| {
                let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                    return false;
                };
                let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                argv.first()
                    .is_some_and(|a| text(a).contains("containerd-shim-vmrun-v2"))
                    && argv
                        .windows(2)
                        .any(|w| w[0] == b"-namespace" && w[1] == self.ns.as_bytes())
            })
            .collect()
    }

    /// Pids of the hypervisors (QEMU or `vmrun-vmm`) of this test's pods.
    pub fn hypervisor_pids(&self) -> Vec<i32> {
        processes_mentioning(&self.shim_root())
            .into_iter()
            .filter(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                comm.starts_with("qemu") || comm.trim() == "vmrun-vmm"
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
