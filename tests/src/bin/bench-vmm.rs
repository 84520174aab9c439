// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! VMM benchmark (prints a table; not a timed test): `cargo run --release -p vmrun-tests --bin
//! bench-vmm [-- N [VSOCK_MIB]]` (N runs per start-up figure, default 11; MiB per vsock stream,
//! default 16).
//!
//! - start-up: process spawn -> first serial byte, and -> process exit, median of N runs, for
//!   the tiny PVH guest (CPL 0, "T\n" on COM1, then the exit port) on `vmrun-vmm` and on QEMU
//!   `-M microvm -accel kvm` with `isa-debug-exit` in the same run, and for the kit's `boot`
//!   program in test-payload mode on `vmrun-vmm`;
//! - memory: the VMM's RSS minus the resident part of the guest-RAM mapping, while the guest
//!   idles in a loop with a block, an rng and a vsock device attached;
//! - vsock stream throughput both ways and blk sequential throughput and 4 KiB random-read IOPS,
//!   measured inside the guest by the kit's `bench` program;
//! - virtio-fs sequential read and write throughput (64 KiB FUSE requests, one in flight)
//!   against a real `virtiofsd` (from `$VMRUN_ARTIFACTS`) sharing a temporary directory,
//!   measured by the guest and checked on the host (the written file's size), on `vmrun-vmm`
//!   and, in the same run and alternating with it, on QEMU's `vhost-user-fs-device` (microvm,
//!   the same program linked with a PVH entry as `bench-pvh`). QEMU runs that guest under TCG:
//!   PVH enters at CPL 0, which PVM only emulates, and the first SSE instruction ends such a
//!   run (docs/testing.md); `vmrun-vmm` enters the kit at CPL 3, natively;
//! - virtio-net transmit rate: the guest sends frames as fast as it can (one in flight) to a tap
//!   the bench creates in a private network namespace and passes as `--net fd=N`; the host
//!   counts them in the tap's rx counter. Receive rate: a host thread offers frames out of the
//!   tap through an `AF_PACKET` socket, faster than the guest takes them, and the guest counts
//!   them.
//!
//! `VMRUN_BENCH_GROUPS=startup,memory,io,fs,net` (comma-separated) runs only those groups.
//!
//! Guest-measured rates use the host's TSC frequency, measured here and passed as
//! `kit.tsc_khz=` (the guest reads the host's TSC; CPUID does not say its rate on this host).

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmrun_tests::vmm::{
    guest_elf, host_tsc_khz, qemu_kit_fs, qemu_microvm, vsock_connect, TempDir, Vm,
};
use vmrun_tests::{artifact, artifacts_dir};

/// A kit command line: `words` plus the host's TSC rate for the guest's clock.
fn kit_cmdline(words: &str) -> String {
    format!("{words} kit.tsc_khz={}", host_tsc_khz())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// (first byte, exit) of one run; checks the exit code and the serial output.
fn one_run(cmd: Command, want_code: i32, want_prefix: &str) -> Result<(Duration, Duration)> {
    let o = Vm::spawn_command(cmd)?.wait(Duration::from_secs(30));
    if o.code() != Some(want_code) || !o.stdout.starts_with(want_prefix) {
        bail!("unexpected run: {}", o.dump());
    }
    Ok((o.first_byte.context("no serial output")?, o.elapsed))
}

fn vmm_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(vmrun_tests::vmm::vmm_bin());
    c.args(args);
    c
}

fn qemu_cmd(kernel: &str) -> Command {
    let mut c = qemu_microvm("kvm", 64);
    c.args(["-kernel", kernel]);
    c
}

fn startup(n: usize, rows: &mut Vec<[String; 4]>) -> Result<()> {
    let tiny = guest_elf("tiny-pvh");
    let tiny = tiny.to_str().context("utf-8 path")?;
    let boot = guest_elf("boot");
    let boot = boot.to_str().context("utf-8 path")?;
    let (mut vf, mut ve, mut qf, mut qe, mut bf, mut be) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        let (f, e) = one_run(vmm_cmd(&["--kernel", tiny, "--memory-mib", "64"]), 0, "T")?;
        vf.push(f);
        ve.push(e);
        // isa-debug-exit turns the guest's 0 into status (0 << 1) | 1.
        let (f, e) = one_run(qemu_cmd(tiny), 1, "T")?;
        qf.push(f);
        qe.push(e);
        let (f, e) = one_run(
            vmm_cmd(&[
                "--kernel",
                boot,
                "--test-payload",
                "--memory-mib",
                "64",
                "--cmdline",
                "kit.mode=none",
            ]),
            0,
            "DONE",
        )?;
        bf.push(f);
        be.push(e);
    }
    let (vf, ve, qf, qe) = (
        median(&mut vf),
        median(&mut ve),
        median(&mut qf),
        median(&mut qe),
    );
    rows.push([
        format!("start -> first serial byte, tiny PVH guest (median of {n})"),
        ms(vf),
        ms(qf),
        format!(
            "{:.3}x (target <= 0.2x)",
            vf.as_secs_f64() / qf.as_secs_f64()
        ),
    ]);
    rows.push([
        format!("start -> exit, tiny PVH guest (median of {n})"),
        ms(ve),
        ms(qe),
        format!(
            "{:.3}x; QEMU under KVM",
            ve.as_secs_f64() / qe.as_secs_f64()
        ),
    ]);
    rows.push([
        "start -> first serial byte, kit `boot` program, test-payload (CPL 3)".into(),
        ms(median(&mut bf)),
        "-".into(),
        "-".into(),
    ]);
    rows.push([
        "start -> exit, kit `boot` program, test-payload".into(),
        ms(median(&mut be)),
        "-".into(),
        "-".into(),
    ]);
    Ok(())
}

/// Resident memory of a process in KiB, from /proc/<pid>/smaps: total and guest-RAM mapping
/// (the mapping whose size is the guest's), for RSS and PSS.
#[derive(Default)]
struct Resident {
    rss: u64,
    guest_rss: u64,
    pss: u64,
    guest_pss: u64,
}

fn resident(pid: u32, guest_kib: u64) -> Result<Resident> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut r = Resident::default();
    let mut size = 0;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Size:"), Some(v)) => size = v.parse()?,
            (Some("Rss:"), Some(v)) => {
                let v: u64 = v.parse()?;
                r.rss += v;
                if size == guest_kib {
                    r.guest_rss += v;
                }
            }
            (Some("Pss:"), Some(v)) => {
                let v: u64 = v.parse()?;
                r.pss += v;
                if size == guest_kib {
                    r.guest_pss += v;
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

/// virtiofsd, killed on drop.
struct Virtiofsd(Child);

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the artifacts' virtiofsd on `share` and waits for its socket.
fn virtiofsd(sock: &Path, share: &Path) -> Result<Virtiofsd> {
    let bin = artifacts_dir().join("virtiofsd");
    if !bin.exists() {
        bail!("{} is missing (scripts/setup installs it)", bin.display());
    }
    let d = Virtiofsd(
        Command::new(artifact("virtiofsd"))
            .arg("--socket-path")
            .arg(sock)
            .arg("--shared-dir")
            .arg(share)
            .args(["--sandbox", "none", "--log-level", "error"])
            .stdout(Stdio::null())
            // It warns on every mount that the kit's FUSE client does not announce submounts.
            .stderr(Stdio::null())
            .spawn()
            .context("spawn virtiofsd")?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            bail!("virtiofsd created no socket");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(d)
}

/// A network namespace holding a tap (up, no address), deleted on drop.
struct NetNs(String);

const TAP: &str = "vmbench0";

impl NetNs {
    fn create() -> Result<Self> {
        let ns = Self(format!("vmrun-vmmbench-{}", std::process::id()));
        ip(&["netns", "add", &ns.0])?;
        Ok(ns)
    }

    /// Creates the tap inside the namespace (on a thread that joined it) and sets it up.
    fn tap(&self) -> Result<OwnedFd> {
        let path = format!("/var/run/netns/{}", self.0);
        let fd = std::thread::spawn(move || -> std::io::Result<OwnedFd> {
            let ns = std::fs::File::open(&path)?;
            // SAFETY: setns on a namespace fd we own; it changes this thread's network namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")?;
            // SAFETY: ifreq is plain data; all-zero is a valid value.
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, s) in req.ifr_name.iter_mut().zip(TAP.bytes()) {
                *d = s as libc::c_char;
            }
            req.ifr_ifru.ifru_flags = libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI)
                .map_err(std::io::Error::other)?;
            // SAFETY: TUNSETIFF reads an ifreq that lives across the call.
            if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(OwnedFd::from(f))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))??;
        ip(&["-n", &self.0, "link", "set", TAP, "up"])?;
        Ok(fd)
    }

    /// An `AF_PACKET` socket bound to the tap inside the namespace: what it sends goes out of
    /// the tap, i.e. to the VMM and into the guest.
    fn tap_sender(&self) -> Result<OwnedFd> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || -> std::io::Result<OwnedFd> {
            let ns = std::fs::File::open(&path)?;
            // SAFETY: setns on a namespace fd we own; it changes this thread's network namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let name = std::ffi::CString::new(TAP).map_err(std::io::Error::other)?;
            // SAFETY: a NUL-terminated name that outlives the call.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: plain socket(2); protocol 0 = send only, nothing is received.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = u16::try_from(libc::AF_PACKET).map_err(std::io::Error::other)?;
            addr.sll_ifindex = i32::try_from(index).map_err(std::io::Error::other)?;
            let len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>())
                .map_err(std::io::Error::other)?;
            // SAFETY: addr is a valid sockaddr_ll of `len` bytes that lives across the call.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
                    len,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(fd)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
        .context("AF_PACKET socket on the tap")
    }

    /// The tap's rx packet counter (frames the VMM wrote into it).
    fn tap_rx_packets(&self) -> Result<u64> {
        let out = Command::new("ip")
            .args(["-n", &self.0, "-s", "-j", "link", "show", TAP])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("ip -j output {:?}", String::from_utf8_lossy(&out.stdout)))?;
        v[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .context("no rx packet counter")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A `vmrun-vmm` command for the kit's `bench` program that inherits `net_fd` (if any).
fn bench_cmd(args: &[&str], net_fd: Option<RawFd>) -> Command {
    let mut cmd = vmm_cmd(&["--kernel"]);
    cmd.arg(guest_elf("bench")).arg("--test-payload").args(args);
    if let Some(fd) = net_fd {
        // SAFETY: the closure only calls fcntl(2), which is async-signal-safe; it clears
        // FD_CLOEXEC on the tap fd in the child so that the VMM inherits it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().context("utf-8 path")
}

fn memory(rows: &mut Vec<[String; 4]>) -> Result<()> {
    let dir = TempDir::new("bench-mem")?;
    let img = dir.join("disk.img");
    std::fs::File::create(&img)?.set_len(16 << 20)?;
    let uds = dir.join("v.sock");
    let share = dir.join("share");
    std::fs::create_dir_all(&share)?;
    let fs_sock = dir.join("fs.sock");
    let _fsd = virtiofsd(&fs_sock, &share)?;
    let ns = NetNs::create()?;
    let tap = ns.tap()?;
    let net = format!("fd={}", tap.as_raw_fd());
    let fs = format!("{},tag=bench", utf8(&fs_sock)?);
    let cmd = bench_cmd(
        &[
            "--memory-mib",
            "128",
            "--cmdline",
            &kit_cmdline("kit.mode=idle kit.idle_ms=3000"),
            "--block",
            utf8(&img)?,
            "--rng",
            "--vsock-uds",
            utf8(&uds)?,
            "--fs",
            &fs,
            "--net",
            &net,
        ],
        Some(tap.as_raw_fd()),
    );
    let vm = Vm::spawn_command(cmd)?;
    vm.wait_line("IDLE", Duration::from_secs(10))
        .context("guest did not reach IDLE")?;
    std::thread::sleep(Duration::from_millis(500));
    let r = resident(vm.pid(), 128 << 10)?;
    let o = vm.wait(Duration::from_secs(10));
    if o.code() != Some(0) {
        bail!("idle run failed: {}", o.dump());
    }
    let mib = |k: u64| format!("{:.2} MiB", k as f64 / 1024.0);
    rows.push([
        "VMM RSS minus touched guest RAM, idle (blk+rng+vsock+fs+net)".into(),
        mib(r.rss - r.guest_rss),
        "-".into(),
        format!(
            "target <= 4 MiB (RSS {} KiB, guest RAM resident {} KiB)",
            r.rss, r.guest_rss
        ),
    ]);
    rows.push([
        "VMM PSS minus guest RAM PSS, same run".into(),
        mib(r.pss - r.guest_pss),
        "-".into(),
        format!("PSS {} KiB, guest RAM {} KiB", r.pss, r.guest_pss),
    ]);
    Ok(())
}

/// One virtio-fs run against a fresh virtiofsd on `share`: the guest's `BENCH` lines, after
/// checking the exit status and the size of the file the guest wrote.
fn fs_run(dir: &Path, share: &Path, mib: u64, qemu: bool) -> Result<Vec<(String, String)>> {
    let _ = std::fs::remove_file(share.join("guest.bin"));
    let sock = dir.join("fs.sock");
    let _ = std::fs::remove_file(&sock);
    let _fsd = virtiofsd(&sock, share)?;
    let cmdline = kit_cmdline(&format!("kit.test=fs kit.fs_wmib={mib}"));
    let (cmd, ok) = if qemu {
        // isa-debug-exit turns the guest's 0 into status (0 << 1) | 1.
        (qemu_kit_fs(&sock, "bench", 256, &cmdline), 1)
    } else {
        let fs = format!("{},tag=bench", utf8(&sock)?);
        let args = ["--memory-mib", "256", "--cmdline", &cmdline, "--fs", &fs];
        (bench_cmd(&args, None), 0)
    };
    let o = Vm::spawn_command(cmd)?.wait(Duration::from_secs(300));
    let who = if qemu { "QEMU" } else { "vmrun-vmm" };
    if o.code() != Some(ok) {
        bail!("fs bench on {who} failed: {}", o.dump());
    }
    let written = std::fs::metadata(share.join("guest.bin"))?.len();
    if written != mib << 20 {
        bail!(
            "{who}: guest.bin has {written} bytes, expected {}",
            mib << 20
        );
    }
    Ok(bench_lines(&o))
}

/// The median of a measurement's values.
fn median_f64(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One `BENCH` measurement across runs of both VMMs.
struct Series {
    name: String,
    unit: String,
    vmm: Vec<f64>,
    qemu: Vec<f64>,
}

fn fs(rows: &mut Vec<[String; 4]>, mib: u64, rounds: usize) -> Result<()> {
    let dir = TempDir::new("bench-fs")?;
    let share = dir.join("share");
    std::fs::create_dir_all(&share)?;
    std::fs::write(
        share.join("host.bin"),
        vec![0x3cu8; usize::try_from(mib << 20)?],
    )?;
    let mut series: Vec<Series> = Vec::new();
    for _ in 0..rounds {
        for qemu in [false, true] {
            for (name, v) in fs_run(dir.path(), &share, mib, qemu)? {
                let (value, unit) = v
                    .split_once(' ')
                    .and_then(|(n, u)| Some((n.parse::<f64>().ok()?, u.to_string())))
                    .with_context(|| format!("BENCH {name} {v}: not `<number> <unit>`"))?;
                let i = match series.iter().position(|s| s.name == name) {
                    Some(i) => i,
                    None => {
                        series.push(Series {
                            name,
                            unit,
                            vmm: vec![],
                            qemu: vec![],
                        });
                        series.len() - 1
                    }
                };
                let s = &mut series[i];
                if qemu { &mut s.qemu } else { &mut s.vmm }.push(value);
            }
        }
    }
    for mut s in series {
        if s.vmm.len() != rounds || s.qemu.len() != rounds {
            bail!("BENCH {}: missing from some runs", s.name);
        }
        let (a, b) = (median_f64(&mut s.vmm), median_f64(&mut s.qemu));
        let what = if s.name == "fs_notify" {
            "fs_notify (guest: one QueueNotify write, mean of 1000)".to_string()
        } else {
            format!(
                "{} ({mib} MiB, 64 KiB FUSE requests, 1 in flight, virtiofsd)",
                s.name
            )
        };
        rows.push([
            format!("{what}; median of {rounds}"),
            format!("{a:.1} {}", s.unit),
            format!("{b:.1} {}", s.unit),
            format!(
                "{:.2}x; QEMU's vhost-user-fs-device under TCG (see docs/vmm.md)",
                a / b
            ),
        ]);
    }
    Ok(())
}

fn net(rows: &mut Vec<[String; 4]>, frames: u64) -> Result<()> {
    let ns = NetNs::create()?;
    let tap = ns.tap()?;
    let before = ns.tap_rx_packets()?;
    let net = format!("fd={}", tap.as_raw_fd());
    let mut out = vec![];
    for len in [64u64, 1514] {
        let cmdline = kit_cmdline(&format!(
            "kit.test=net kit.net_frames={frames} kit.net_len={len}"
        ));
        let o = Vm::spawn_command(bench_cmd(
            &["--memory-mib", "128", "--cmdline", &cmdline, "--net", &net],
            Some(tap.as_raw_fd()),
        ))?
        .wait(Duration::from_secs(300));
        if o.code() != Some(0) {
            bail!("net bench failed: {}", o.dump());
        }
        out.push((len, bench_lines(&o)));
    }
    // The bench keeps its own fd, so the tap and its counter outlive the VMMs.
    let counted = ns.tap_rx_packets()? - before;
    if counted < 2 * frames {
        bail!(
            "the tap counted {counted} frames, the guests sent {}",
            2 * frames
        );
    }
    for (len, lines) in out {
        for (k, v) in lines {
            rows.push([
                format!("{k}, {len}-byte frames, guest -> tap (guest-measured)"),
                v,
                "-".into(),
                format!("host tap rx counter: {counted} frames for both runs"),
            ]);
        }
    }
    for len in [64usize, 1514] {
        let (rate, sent) = net_rx(&ns, &tap, frames, len)?;
        rows.push([
            format!("net_rx, {len}-byte frames, tap -> guest (guest-measured)"),
            rate,
            "-".into(),
            format!("host offered {sent} frames (~{RX_BURST}/ms); the guest counted {frames}"),
        ]);
    }
    Ok(())
}

/// Frames the receive benchmark sends per millisecond: about twice what the guest takes here
/// (~50 000 frames/s; 256 gives the same rate), so the tap always has frames queued, while the
/// sender sleeps most of the time instead of taking one of the two cores from the VMM. The
/// row prints how many frames were offered, so a guest that keeps up with the offer shows.
const RX_BURST: u64 = 128;

/// Receive rate: the guest counts `frames` frames that a host thread offers through the tap at
/// about `RX_BURST` per millisecond (what the tap's queue cannot hold is dropped there, as on a
/// real link); returns the guest's rate and how many frames the host sent.
fn net_rx(ns: &NetNs, tap: &OwnedFd, frames: u64, len: usize) -> Result<(String, u64)> {
    let sender = ns.tap_sender()?;
    let net = format!("fd={}", tap.as_raw_fd());
    let cmdline = kit_cmdline(&format!(
        "kit.test=net kit.net_frames=0 kit.net_rx={frames}"
    ));
    let vm = Vm::spawn_command(bench_cmd(
        &["--memory-mib", "128", "--cmdline", &cmdline, "--net", &net],
        Some(tap.as_raw_fd()),
    ))?;
    if vm
        .wait_line("INFO net rx-ready", Duration::from_secs(30))
        .is_none()
    {
        bail!(
            "net rx: guest not ready: {}",
            vm.wait(Duration::from_secs(5)).dump()
        );
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || -> std::io::Result<u64> {
            let mut frame = vec![0u8; len];
            frame[..6].fill(0xff);
            frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
            frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                frame[14..22].copy_from_slice(&sent.to_le_bytes());
                // SAFETY: sends `len` bytes from a live buffer on a socket we own.
                let n = unsafe { libc::send(sender.as_raw_fd(), frame.as_ptr().cast(), len, 0) };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOBUFS) {
                        std::thread::yield_now();
                        continue;
                    }
                    return Err(e);
                }
                sent += 1;
                if sent % RX_BURST == 0 {
                    // Keep the tap's queue full without taking a core from the VMM.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(sent)
        })
    };
    let o = vm.wait(Duration::from_secs(120));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = thread
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
        .context("sending through the tap")?;
    if o.code() != Some(0) {
        bail!("net rx bench failed: {}", o.dump());
    }
    let rate = bench_lines(&o)
        .into_iter()
        .find(|(k, _)| k == "net_rx")
        .map(|(_, v)| v)
        .context("no net_rx figure")?;
    Ok((rate, sent))
}

fn bench_lines(o: &vmrun_tests::vmm::Outcome) -> Vec<(String, String)> {
    o.lines()
        .filter_map(|l| l.strip_prefix("BENCH "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn io(rows: &mut Vec<[String; 4]>, mib: usize) -> Result<()> {
    let dir = TempDir::new("bench-io")?;
    let img = dir.join("disk.img");
    std::fs::File::create(&img)?.set_len(64 << 20)?;
    let o = Vm::spawn([
        "--kernel",
        guest_elf("bench").to_str().context("utf-8")?,
        "--test-payload",
        "--memory-mib",
        "128",
        "--cmdline",
        &kit_cmdline("kit.test=blk kit.blk_mib=32 kit.blk_iops_n=4000"),
        "--block",
        img.to_str().context("utf-8")?,
    ])?
    .wait(Duration::from_secs(120));
    if o.code() != Some(0) {
        bail!("blk bench failed: {}", o.dump());
    }
    for (k, v) in bench_lines(&o) {
        rows.push([
            format!("{k} (guest, 64 KiB requests / 4 KiB random)"),
            v,
            "-".into(),
            "-".into(),
        ]);
    }

    let uds = dir.join("v.sock");
    let vm = Vm::spawn([
        "--kernel",
        guest_elf("bench").to_str().context("utf-8")?,
        "--test-payload",
        "--memory-mib",
        "128",
        "--cmdline",
        &kit_cmdline(&format!("kit.test=vsock kit.vsock_mib={mib}")),
        "--vsock-uds",
        uds.to_str().context("utf-8")?,
    ])?;
    let chunk = vec![0xa5u8; 1 << 20];
    let host = || -> Result<(Duration, Duration, usize)> {
        let mut s = vsock_connect(&uds, 6000, Duration::from_secs(10))?;
        let start = Instant::now();
        for _ in 0..mib {
            s.write_all(&chunk)?;
        }
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let line = vmrun_tests::vmm::read_line(&mut s)?;
        let h2g = start.elapsed();
        if line != "done" {
            bail!("h2g: guest answered {line:?}");
        }
        drop(s);
        let mut s = vsock_connect(&uds, 6001, Duration::from_secs(10))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        let start = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok((h2g, start.elapsed(), got))
    };
    let result = host();
    let o = vm.wait(Duration::from_secs(60));
    let (h2g, g2h, got) = match result {
        Ok(r) => r,
        Err(e) => bail!("vsock bench: {e:#}\n{}", o.dump()),
    };
    if o.code() != Some(0) || got != mib << 20 {
        bail!("vsock bench failed ({got} bytes): {}", o.dump());
    }
    let host_rate = |d: Duration| format!("{:.1} MiB/s", mib as f64 / d.as_secs_f64());
    for (k, v) in bench_lines(&o) {
        let host = match k.as_str() {
            "vsock_h2g" => host_rate(h2g),
            "vsock_g2h" => host_rate(g2h),
            _ => "-".into(),
        };
        rows.push([
            format!("{k} ({mib} MiB stream; guest-measured / host-measured)"),
            v,
            host,
            "-".into(),
        ]);
    }
    Ok(())
}

fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(11);
    let vsock_mib: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(16);
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut errors = Vec::new();
    let groups = std::env::var("VMRUN_BENCH_GROUPS").ok();
    let wanted = |g: &str| {
        groups
            .as_deref()
            .is_none_or(|l| l.split(',').any(|x| x == g))
    };
    type Group<'a> = (
        &'a str,
        Box<dyn Fn(&mut Vec<[String; 4]>) -> Result<()> + 'a>,
    );
    let all: [Group; 5] = [
        ("startup", Box::new(|r| startup(n, r))),
        ("memory", Box::new(memory)),
        ("io", Box::new(|r| io(r, vsock_mib))),
        ("fs", Box::new(|r| fs(r, 64, 5))),
        ("net", Box::new(|r| net(r, 20_000))),
    ];
    for (name, f) in all {
        if wanted(name) {
            if let Err(e) = f(&mut rows) {
                errors.push(format!("{name}: {e:#}"));
            }
        }
    }
    println!("| measurement | vmrun-vmm | QEMU microvm | ratio / note |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
    }
    for e in &errors {
        eprintln!("bench-vmm: {e}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{} measurement group(s) failed", errors.len())
    }
}
