// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Harness for the VMM system tests and the VMM benchmark: runs `vmrun-vmm` on a guest test
//! program (vmm/guest-kit), collects its serial output line by line with timestamps, waits for
//! its exit under a wall-clock timeout, and drives the hybrid-vsock Unix socket from the host
//! side (`CONNECT <port>\n` / `OK ...`, and listeners on `<uds>_<port>`).
//!
//! Guest programs print `PASS <name>`, `FAIL <name>: <why>`, `INFO ...` and finally
//! `DONE passed=N failed=M`, then write 0 (all passed) or 1 to the exit port 0xf4.

use crate::{host_bin, ProcessGroup};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A guest test program by name: `boot`, `mmio`, `blk`, `rng`, `vsock`, `fs`, `net`, `bench`, `tiny-pvh`,
/// `tiny-64` (paths exported by tests/build.rs).
pub fn guest_elf(name: &str) -> PathBuf {
    let path = match name {
        "boot" => env!("GUEST_ELF_BOOT"),
        "mmio" => env!("GUEST_ELF_MMIO"),
        "blk" => env!("GUEST_ELF_BLK"),
        "rng" => env!("GUEST_ELF_RNG"),
        "vsock" => env!("GUEST_ELF_VSOCK"),
        "fs" => env!("GUEST_ELF_FS"),
        "net" => env!("GUEST_ELF_NET"),
        "bench" => env!("GUEST_ELF_BENCH"),
        "bench-pvh" => env!("GUEST_ELF_BENCH_PVH"),
        "tiny-pvh" => env!("GUEST_ELF_TINY_PVH"),
        "tiny-64" => env!("GUEST_ELF_TINY_64"),
        other => panic!("no guest test program named {other}"),
    };
    PathBuf::from(path)
}

/// The host's TSC frequency in kHz, measured once against `CLOCK_MONOTONIC` over 100 ms.
///
/// Kit programs time themselves with `rdtsc`, which under PVM and under QEMU's TCG reads the
/// host's TSC, while CPUID leaves 0x15/0x16 are often empty (this machine's are), so the
/// benchmarks pass this as `kit.tsc_khz=`; without it the kit assumes 2 GHz.
pub fn host_tsc_khz() -> u64 {
    static KHZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        // SAFETY: rdtsc has no memory effects; every x86_64 CPU has it.
        let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
        let (t0, c0) = (Instant::now(), tsc());
        std::thread::sleep(Duration::from_millis(100));
        let (c1, t1) = (tsc(), Instant::now());
        let micros = u64::try_from(t1.duration_since(t0).as_micros()).unwrap_or(u64::MAX);
        c1.wrapping_sub(c0).saturating_mul(1000) / micros.max(1)
    })
}

/// QEMU's microvm as every comparison here runs it: no option ROMs, RTC, PIT or PIC, COM1 on
/// stdio, no reboot (a guest reset ends QEMU), `isa-debug-exit` on the kit's exit port 0xf4
/// (status `(v << 1) | 1`), one vCPU (`host` under KVM, `max` under TCG). `accel` is `kvm` or
/// `tcg`. The caller adds `-kernel` and what else the guest needs.
pub fn qemu_microvm(accel: &str, memory_mib: u32) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on",
        "-accel",
        accel,
        "-cpu",
        if accel == "kvm" { "host" } else { "max" },
        "-m",
        &memory_mib.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=1",
    ]);
    c
}

/// The kit's `bench-pvh` on QEMU microvm under TCG with a `vhost-user-fs-device` (tag `tag`)
/// on the vhost-user socket `sock`, guest RAM in a shared memfd (the back-end maps it), no
/// ACPI (so QEMU appends `virtio_mmio.device=` to `cmdline`). TCG because PVH enters at CPL 0,
/// which PVM only emulates (docs/vmm.md, Benchmark).
pub fn qemu_kit_fs(sock: &Path, tag: &str, memory_mib: u32, cmdline: &str) -> Command {
    let mut c = qemu_microvm("tcg", memory_mib);
    c.args(["-machine", "acpi=off,memory-backend=mem", "-object"])
        .arg(format!(
            "memory-backend-memfd,id=mem,size={memory_mib}M,share=on"
        ))
        .args(["-global", "virtio-mmio.force-legacy=false", "-chardev"])
        .arg(format!("socket,id=fs0,path={}", sock.display()))
        .args(["-device"])
        .arg(format!("vhost-user-fs-device,chardev=fs0,tag={tag}"))
        .arg("-kernel")
        .arg(guest_elf("bench-pvh"))
        .args(["-append", cmdline]);
    c
}

/// The `vmrun-vmm` binary built alongside the running test (in `<profile>/deps`) or benchmark
/// binary (in `<profile>` itself).
pub fn vmm_bin() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("vmrun-vmm")))
        .filter(|p| p.exists());
    beside.unwrap_or_else(|| host_bin("vmrun-vmm"))
}

/// A private temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/vmrun-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("vmrun-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[derive(Debug, Default)]
struct Output {
    lines: Vec<(Instant, String)>,
    partial: Vec<u8>,
    first_byte: Option<Instant>,
    eof: bool,
}

/// A running `vmrun-vmm` (or any VMM-like command) with its serial output on stdout.
#[derive(Debug)]
pub struct Vm {
    group: ProcessGroup,
    started: Instant,
    out: Arc<(Mutex<Output>, Condvar)>,
    err: Arc<Mutex<Vec<u8>>>,
}

/// How a VM run ended.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status; `None` if it had to be killed at the timeout.
    pub status: Option<ExitStatus>,
    /// Serial output (stdout).
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// From spawn to exit (or timeout).
    pub elapsed: Duration,
    /// From spawn to the first byte on stdout.
    pub first_byte: Option<Duration>,
}

impl Vm {
    /// Spawns `vmrun-vmm` with `args` (stdin closed, stdout and stderr captured).
    pub fn spawn<I, S>(args: I) -> std::io::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut cmd = Command::new(vmm_bin());
        cmd.args(args.into_iter().map(Into::into));
        Self::spawn_command(cmd)
    }

    /// Spawns any command the same way (QEMU for the benchmark, `unshare` wrappers).
    pub fn spawn_command(mut cmd: Command) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut group = ProcessGroup::spawn(&mut cmd)?;
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let stdout = group.child_mut().stdout.take().expect("stdout is piped");
        let stderr = group.child_mut().stderr.take().expect("stderr is piped");
        let o = Arc::clone(&out);
        std::thread::spawn(move || pump_stdout(stdout, &o));
        let e = Arc::clone(&err);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut stderr = stderr;
            let _ = stderr.read_to_end(&mut buf);
            e.lock().expect("stderr lock").extend_from_slice(&buf);
        });
        Ok(Self {
            group,
            started,
            out,
            err,
        })
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.group.pid()
    }

    /// When the process was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for a serial line starting with `prefix`; returns it.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.out;
        let mut o = lock.lock().expect("output lock");
        loop {
            if let Some((_, l)) = o.lines.iter().find(|(_, l)| l.starts_with(prefix)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if o.eof || now >= deadline {
                return None;
            }
            o = cv.wait_timeout(o, deadline - now).expect("output lock").0;
        }
    }

    /// Waits for the process to exit, killing its group after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Outcome {
        let status = self.group.wait_timeout(timeout).ok().flatten();
        let elapsed = self.started.elapsed();
        // Kill the group now (no-op if it exited) so the pipes close and the pumps finish.
        let started = self.started;
        let out = Arc::clone(&self.out);
        let err = Arc::clone(&self.err);
        drop(self.group);
        let (lock, cv) = &*out;
        let mut o = lock.lock().expect("output lock");
        let pump_deadline = Instant::now() + Duration::from_secs(2);
        while !o.eof && Instant::now() < pump_deadline {
            o = cv
                .wait_timeout(o, Duration::from_millis(50))
                .expect("output lock")
                .0;
        }
        let mut stdout: String = o.lines.iter().map(|(_, l)| format!("{l}\n")).collect();
        stdout.push_str(&String::from_utf8_lossy(&o.partial));
        let first_byte = o.first_byte.map(|t| t - started);
        drop(o);
        // Give the stderr pump a moment after the pipe closed.
        std::thread::sleep(Duration::from_millis(5));
        let stderr = String::from_utf8_lossy(&err.lock().expect("stderr lock")).into_owned();
        Outcome {
            status,
            stdout,
            stderr,
            elapsed,
            first_byte,
        }
    }
}

fn pump_stdout(mut stdout: impl Read, out: &(Mutex<Output>, Condvar)) {
    let (lock, cv) = out;
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).unwrap_or(0);
        let now = Instant::now();
        let mut o = lock.lock().expect("output lock");
        if n == 0 {
            o.eof = true;
            cv.notify_all();
            return;
        }
        o.first_byte.get_or_insert(now);
        for &b in &buf[..n] {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&o.partial)
                    .trim_end_matches('\r')
                    .to_string();
                o.partial.clear();
                o.lines.push((now, line));
            } else {
                o.partial.push(b);
            }
        }
        cv.notify_all();
    }
}

impl Outcome {
    /// The exit code, if the process exited normally.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Serial lines.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.stdout.lines()
    }

    /// Names of the `PASS` lines.
    pub fn passes(&self) -> Vec<&str> {
        self.lines()
            .filter_map(|l| l.strip_prefix("PASS "))
            .collect()
    }

    /// The `FAIL` lines.
    pub fn fails(&self) -> Vec<&str> {
        self.lines().filter(|l| l.starts_with("FAIL ")).collect()
    }

    /// Lines starting with `INFO <prefix>`, without the `INFO ` part.
    pub fn info(&self, prefix: &str) -> Vec<&str> {
        self.lines()
            .filter_map(|l| l.strip_prefix("INFO "))
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// A readable dump for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "status: {:?} after {:?}\n--- serial ---\n{}--- stderr ---\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    /// Requires every name in `expected` to have a PASS line, no FAIL line, a `DONE` line with
    /// no failures and exit status 0.
    pub fn assert_all_passed(&self, expected: &[&str]) {
        let passes = self.passes();
        let missing: Vec<&&str> = expected.iter().filter(|n| !passes.contains(n)).collect();
        assert!(
            self.fails().is_empty() && missing.is_empty(),
            "failed: {:?}, missing PASS lines: {missing:?}\n{}",
            self.fails(),
            self.dump()
        );
        assert!(
            self.lines()
                .any(|l| l.starts_with("DONE ") && l.ends_with(" failed=0")),
            "no clean DONE line\n{}",
            self.dump()
        );
        assert_eq!(self.code(), Some(0), "exit status\n{}", self.dump());
    }

    /// Requires a non-zero exit with a one-line message on stderr and no panic text.
    pub fn assert_one_line_error(&self) -> String {
        let code = self.code();
        assert!(
            code.is_some_and(|c| c != 0),
            "expected a non-zero exit\n{}",
            self.dump()
        );
        let msg = self.stderr.trim();
        assert_eq!(
            msg.lines().count(),
            1,
            "expected a one-line error\n{}",
            self.dump()
        );
        assert!(
            !msg.contains("panicked") && !msg.contains("RUST_BACKTRACE"),
            "panic text\n{}",
            self.dump()
        );
        msg.to_string()
    }
}

/// Connects to a guest port through the hybrid-vsock socket: `CONNECT <port>\n`, then waits for
/// a line starting with `OK ` (sending nothing before it). Retries (the guest may not be
/// listening yet, then the VMM resets the connection) until `timeout`.
pub fn vsock_connect(uds: &Path, port: u32, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match try_vsock_connect(uds, port, deadline) {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                err.kind(),
                format!("vsock CONNECT {port} via {}: {err}", uds.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn try_vsock_connect(uds: &Path, port: u32, deadline: Instant) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        s.set_read_timeout(Some(left))?;
        if s.read(&mut b)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "closed before OK",
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 64 {
            return Err(std::io::Error::other("overlong reply to CONNECT"));
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "reply {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// Listens on `<uds>_<port>` for guest-initiated connections to host port `port`.
pub fn vsock_listen(uds: &Path, port: u32) -> std::io::Result<UnixListener> {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    UnixListener::bind(PathBuf::from(p))
}

/// Accepts one connection with a timeout.
pub fn accept_timeout(l: &UnixListener, timeout: Duration) -> std::io::Result<UnixStream> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no guest connection in time",
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads one `\n`-terminated line (byte by byte, so nothing after it is consumed).
pub fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
    let mut r = BufReader::with_capacity(1, s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    Ok(line.trim_end_matches('\n').to_string())
}

/// Sends one request to `vmrun-vmm`'s API socket (`{"command": "<command>"}`) and returns the
/// parsed one-line JSON response.
pub fn api(sock: &Path, command: &str) -> std::io::Result<serde_json::Value> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{{\"command\": \"{command}\"}}\n").as_bytes())?;
    let line = read_line(&mut s)?;
    serde_json::from_str(&line)
        .map_err(|e| std::io::Error::other(format!("API reply {line:?}: {e}")))
}

impl Vm {
    /// Lines received so far.
    pub fn line_count(&self) -> usize {
        self.out.0.lock().expect("output lock").lines.len()
    }
}

/// Deterministic test data, identical to the guest kit's `pattern` module: byte `i` of stream
/// `seed` is byte `i % 8` of `splitmix64(seed, i / 8)`.
pub mod pattern {
    /// splitmix64 of `seed` and word index `n`.
    pub fn word(seed: u64, n: u64) -> u64 {
        let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `len` bytes of stream `seed` from byte `offset`.
    pub fn bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let at = offset + i;
                word(seed, at / 8).to_le_bytes()[(at % 8) as usize]
            })
            .collect()
    }

    /// FNV-1a 64 of `data`.
    pub fn fnv(data: &[u8]) -> u64 {
        data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_the_guest_definition() {
        // Known values of splitmix64 for seed 0: the first outputs of the reference generator.
        assert_eq!(pattern::word(0, 0), 0xe220_a839_7b1d_cdaf);
        let b = pattern::bytes(5, 3, 10);
        assert_eq!(b, pattern::bytes(5, 0, 13)[3..]);
    }

    #[test]
    fn outcome_parsing() {
        let o = Outcome {
            status: None,
            stdout: "INFO x 1\nPASS a\nFAIL b: why\nDONE passed=1 failed=1\n".into(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
            first_byte: None,
        };
        assert_eq!(o.passes(), ["a"]);
        assert_eq!(o.fails(), ["FAIL b: why"]);
        assert_eq!(o.info("x"), ["x 1"]);
    }
}
