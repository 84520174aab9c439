// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Helpers for the `vmrun` CLI system tests: a private state root and host config per test, a
//! busybox bundle built from the host's `busybox-static`, commands that run the `vmrun` binary
//! of this build, and the "nothing left behind" check (no state directory, sandbox directory,
//! mount, socket or process).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{artifacts_dir, host_bin};

/// One test's private world: `/tmp/vmrun-c/<tag>-<pid>-<n>/` with `root/` (the `--root`),
/// `config.toml` (`VMRUN_CONFIG`: artifacts and daemons from `VMRUN_ARTIFACTS` only) and room
/// for bundles. Removed on drop.
#[derive(Debug)]
pub struct CliEnv {
    dir: PathBuf,
}

impl CliEnv {
    /// Creates the directory, the state root and the host config (whose artifact paths need
    /// not exist for tests that never boot a VM).
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from("/tmp/vmrun-c").join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).expect("create the test dir");
        let config = format!(
            "[sandbox]\nboot_timeout_secs = 180\n\n[artifacts]\nkernel = {:?}\nqemu_kernel = {:?}\ninitrd = {:?}\n\n\
             [binaries]\nvirtiofsd = {:?}\nvhost_device_vsock = {:?}\n",
            artifacts_dir().join("vmlinux"),
            artifacts_dir().join("bzImage"),
            artifacts_dir().join("initramfs.cpio"),
            artifacts_dir().join("virtiofsd"),
            artifacts_dir().join("vhost-device-vsock"),
        );
        std::fs::write(dir.join("config.toml"), config).expect("write config.toml");
        Self { dir }
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state root (`--root`).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// `vmrun --root <root> <args>` with the test's config; stdin from /dev/null.
    pub fn vmrun(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(host_bin("vmrun"));
        cmd.env("VMRUN_CONFIG", self.dir.join("config.toml"))
            .arg("--root")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `vmrun <args>` to completion (bounded by `timeout`), capturing its output.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Output {
        run_bounded(self.vmrun(args), timeout)
    }

    /// `vmrun create` of a detached container whose stdio goes to files in the test dir
    /// (`<id>.out`, `<id>.err`): the monitor keeps them open for the container's life.
    pub fn create(&self, bundle: &Path, id: &str) -> Output {
        let out = std::fs::File::create(self.dir.join(format!("{id}.out"))).expect("stdout file");
        let err = std::fs::File::create(self.dir.join(format!("{id}.err"))).expect("stderr file");
        let pid_file = self.dir.join(format!("{id}.pid"));
        let mut cmd = self.vmrun(&[
            "create",
            "--bundle",
            &bundle.to_string_lossy(),
            "--pid-file",
            &pid_file.to_string_lossy(),
            id,
        ]);
        // create reports on its own stderr, which is also the container's: read it back from
        // the file.
        cmd.stdout(out).stderr(err);
        let mut child = cmd.spawn().expect("spawn vmrun create");
        let status = wait_bounded(&mut child, Duration::from_secs(240));
        Output {
            status,
            stdout: Vec::new(),
            stderr: std::fs::read(self.dir.join(format!("{id}.err"))).unwrap_or_default(),
        }
    }

    /// The OCI state of `id` as JSON, or `None` if `vmrun state` fails.
    pub fn state(&self, id: &str) -> Option<Value> {
        let out = self.run(&["state", id], Duration::from_secs(30));
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("state prints JSON"))
    }

    /// Waits until `id`'s status is `want`, at most `timeout`.
    pub fn wait_status(&self, id: &str, want: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.state(id).expect("state of a known container");
            if st["status"] == want {
                return st;
            }
            assert!(Instant::now() < deadline, "{id} never became {want}: {st}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts that nothing of container `id` is left: no state directory, no sandbox
    /// directory, no mount under the test directory, and no process whose command line names
    /// the test directory (monitor, hypervisor, daemons).
    pub fn assert_nothing_left(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = processes_mentioning(&self.dir);
            if procs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes of {id} left behind: {procs:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let state = self.root().join(id);
        assert!(
            !state.exists(),
            "state directory {} left behind",
            state.display()
        );
        let sandboxes = self.root().join("@sandboxes");
        let left: Vec<_> = std::fs::read_dir(&sandboxes)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "sandbox directories left behind: {left:?}");
        let mounts = mounts_under(&self.dir);
        assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
    }
}

impl Drop for CliEnv {
    fn drop(&mut self) {
        // Last resort for a failed test: kill what still names our directory, unmount, remove.
        for pid in processes_mentioning(&self.dir) {
            // SAFETY: kill(2) on a pid read from /proc; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        for m in mounts_under(&self.dir).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if mounts_under(&self.dir).is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `cmd` with captured output, killing it after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    use std::io::Read;
    let dir = std::env::temp_dir();
    let tag = format!(
        "vmrun-c-out-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let (out_path, err_path) = (
        dir.join(format!("{tag}.out")),
        dir.join(format!("{tag}.err")),
    );
    // Files, not pipes: a detached monitor may inherit them and outlive `cmd`.
    cmd.stdout(std::fs::File::create(&out_path).expect("out file"))
        .stderr(std::fs::File::create(&err_path).expect("err file"));
    let mut child = cmd.spawn().expect("spawn");
    let status = wait_bounded(&mut child, timeout);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let _ = std::fs::File::open(&out_path).and_then(|mut f| f.read_to_end(&mut stdout));
    let _ = std::fs::File::open(&err_path).and_then(|mut f| f.read_to_end(&mut stderr));
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Waits for `child` at most `timeout`, then kills it and panics.
pub fn wait_bounded(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of processes (other than this one) whose command line contains `dir`.
pub fn processes_mentioning(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if u32::try_from(pid).ok() == Some(me) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) && process_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// What a test bundle looks like.
#[derive(Debug, Clone)]
pub struct BundleOpts {
    /// `process.args`.
    pub args: Vec<String>,
    /// `root.readonly`.
    pub readonly: bool,
    /// Keep the pid namespace (without it the process is not a pid-namespace init, so a
    /// SIGTERM without handler kills it, as in the 143 test).
    pub pid_namespace: bool,
}

impl BundleOpts {
    /// A writable bundle with a pid namespace running `args`.
    pub fn new(args: &[&str]) -> Self {
        Self {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            readonly: false,
            pid_namespace: true,
        }
    }
}

/// Builds a busybox bundle under `<parent>/<name>`: a rootfs with the host's static busybox
/// and its applet links, `/etc/passwd` and `/etc/group` (root, nobody 65534), and a
/// config.json from `vmrun spec`'s defaults with `terminal: false` and `opts` applied.
/// Returns the bundle directory; `spec_edit` may change the spec further.
pub fn busybox_bundle(
    parent: &Path,
    name: &str,
    opts: &BundleOpts,
    spec_edit: impl FnOnce(&mut Value),
) -> PathBuf {
    let bundle = parent.join(name);
    let rootfs = bundle.join("rootfs");
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dirs");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\nwheel:x:10:nobody\n",
    )
    .expect("group");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod tmp");

    let mut spec = vmrun_runtime::oci::default_spec();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(opts.args);
    spec["root"]["readonly"] = json!(opts.readonly);
    if !opts.pid_namespace {
        if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "pid");
        }
    }
    spec_edit(&mut spec);
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).expect("spec JSON"),
    )
    .expect("write config.json");
    bundle
}

const IMAGE_SCRIPT: &str = r#"set -e
cd "$1"; R=rootfs; mkdir -p $R/bin $R/etc $R/proc $R/sys $R/dev $R/tmp $R/root $R/run
cp /bin/busybox $R/bin/busybox
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox $R/bin/$a; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > $R/etc/passwd; printf 'root:x:0:\n' > $R/etc/group
chmod 1777 $R/tmp
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime='2024-01-01 00:00:00Z' -C $R -cf layer.tar .
DIFFID=$(sha256sum layer.tar | cut -d' ' -f1); gzip -n -1 -c layer.tar > layer.tar.gz
LDIG=$(sha256sum layer.tar.gz | cut -d' ' -f1); LSZ=$(stat -c %s layer.tar.gz)
mkdir -p L/blobs/sha256; cp layer.tar.gz L/blobs/sha256/$LDIG
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' $DIFFID > config.json
CDIG=$(sha256sum config.json | cut -d' ' -f1); CSZ=$(stat -c %s config.json); cp config.json L/blobs/sha256/$CDIG
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' $CDIG $CSZ $LDIG $LSZ > manifest.json
MDIG=$(sha256sum manifest.json | cut -d' ' -f1); MSZ=$(stat -c %s manifest.json); cp manifest.json L/blobs/sha256/$MDIG
printf '{"imageLayoutVersion":"1.0.0"}' > L/oci-layout
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"docker.io/library/vmrunbox:local","org.opencontainers.image.ref.name":"local"}}]}' $MDIG $MSZ > L/index.json
tar -C L -cf image.tar oci-layout index.json blobs
"#;

/// Builds an OCI image archive of busybox (`docker.io/library/vmrunbox:local`) in `dir` from
/// the host's busybox-static, without a registry; returns the path of `image.tar`, which
/// `podman load` and `ctr images import` accept.
pub fn busybox_image(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("image dir");
    let st = Command::new("sh")
        .args(["-c", IMAGE_SCRIPT, "sh"])
        .arg(dir)
        .status()
        .expect("run sh");
    assert!(st.success(), "building the busybox image failed");
    dir.join("image.tar")
}

/// Text of a byte buffer, for assertions.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Gate for the CLI end-to-end tests: they boot real microVMs (QEMU/TCG here) and need the
/// guest artifacts and daemons; prints the `vmrun-test:` line.
pub fn require_cli_artifacts(test: &str) -> bool {
    let missing: Vec<&str> = [
        "bzImage",
        "initramfs.cpio",
        "virtiofsd",
        "vhost-device-vsock",
    ]
    .into_iter()
    .filter(|n| !artifacts_dir().join(n).exists())
    .collect();
    assert!(
        missing.is_empty(),
        "{test}: artifacts missing in {}: {missing:?} (run scripts/setup)",
        artifacts_dir().display()
    );
    println!("vmrun-test: ran {test}");
    true
}
