// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun-vmm`'s virtio-net under real KVM, with a tap this test creates itself: a private
//! network namespace (`vmrun-vmm-net-<pid>`), a tap opened inside it whose fd is passed to the
//! VMM (`--net fd=N,mac=...`, so the VMM needs no network privileges), and the namespace's own
//! kernel stack as the peer at 10.213.7.1/24. The guest kit's `net` program (10.213.7.2) ARPs
//! for the peer, pings it, and then answers this test's pings, sent from a raw ICMP socket that
//! lives in the namespace. The VMM runs as uid/gid 65534 (`--user`). The namespace (and with it
//! the tap) is removed at the end.

// Packet and ioctl structures: the narrowing casts are of constants and checked lengths.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};
use vmrun_tests::require_kvm;
use vmrun_tests::vmm::{guest_elf, vmm_bin, Vm};

const PEER: [u8; 4] = [10, 213, 7, 1];
const GUEST: [u8; 4] = [10, 213, 7, 2];
const MAC: &str = "02:aa:bb:cc:dd:01";
const TAP: &str = "vmrtap0";

/// A network namespace, deleted on drop (which also removes the tap once its fds are closed).
struct NetNs(String);

impl NetNs {
    fn create() -> Self {
        let name = format!("vmrun-vmm-net-{}", std::process::id());
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name]).expect("ip netns add");
        Self(name)
    }

    /// Runs `f` on a thread that has joined the namespace (setns affects only that thread).
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path)?;
            // SAFETY: setns on a namespace fd we own; it changes this thread's network namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Opens `/dev/net/tun` and attaches it to a new tap `name` (no packet info, no vnet header).
fn open_tap(name: &str) -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq that lives across the call.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(f))
}

/// A raw ICMP socket (created in the namespace, usable from any thread).
fn icmp_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one ICMP echo request to `dst` and waits for the matching reply; returns the RTT.
fn ping(sock: &OwnedFd, dst: [u8; 4], ident: u16, seq: u16) -> std::io::Result<Duration> {
    let mut msg = vec![8u8, 0, 0, 0];
    msg.extend_from_slice(&ident.to_be_bytes());
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend((0..48u8).map(|i| i.wrapping_mul(7) ^ seq as u8));
    let c = checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from_ne_bytes(dst);
    let start = Instant::now();
    // SAFETY: msg and sa outlive the call; lengths match the buffers.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let deadline = start + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: buf outlives the call; MSG_DONTWAIT makes it non-blocking.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let p = &buf[..usize::try_from(n).unwrap_or(0)];
        let ihl = usize::from(p.first().copied().unwrap_or(0) & 0xf) * 4;
        let Some(icmp) = p.get(ihl..) else { continue };
        if p.get(12..16) == Some(&dst[..])
            && icmp.len() == msg.len()
            && icmp[0] == 0
            && icmp[4..8] == msg[4..8]
            && icmp[8..] == msg[8..]
            && checksum(icmp) == 0
        {
            return Ok(start.elapsed());
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no echo reply for seq {seq}"),
    ))
}

#[test]
fn vmm_net_arp_and_icmp_over_a_tap_fd() {
    if !require_kvm("vmm_net_arp_and_icmp_over_a_tap_fd") {
        return;
    }
    let ns = NetNs::create();
    let (tap, sock) = ns
        .run(|| Ok((open_tap(TAP)?, icmp_socket()?)))
        .expect("tap and ICMP socket in the namespace");
    let peer = format!("{}.{}.{}.{}/24", PEER[0], PEER[1], PEER[2], PEER[3]);
    ip(&["-n", &ns.0, "addr", "add", &peer, "dev", TAP]).expect("address on the tap");
    ip(&["-n", &ns.0, "link", "set", TAP, "up"]).expect("tap up");
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]).expect("lo up");

    let fd: RawFd = tap.as_raw_fd();
    let mut cmd = Command::new(vmm_bin());
    cmd.args([
        "--kernel",
        guest_elf("net").to_str().expect("utf-8"),
        "--test-payload",
        "--memory-mib",
        "128",
        "--net",
        &format!("fd={fd},mac={MAC}"),
        "--user",
        "65534:65534",
        "--cmdline",
        &format!("kit.net_ip=10.213.7.2 kit.net_peer=10.213.7.1 kit.net_mac={MAC} kit.net_pings=3"),
    ]);
    // SAFETY: the closure only calls fcntl(2), which is async-signal-safe; it clears
    // FD_CLOEXEC on the tap fd in the child so that exactly the VMM inherits it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let vm = Vm::spawn_command(cmd).expect("spawn vmrun-vmm");
    // The VMM holds its own copy now.
    drop(tap);
    let ready = vm.wait_line("INFO net ready-for-ping", Duration::from_secs(60));
    // The VMM runs the whole device as nobody: it only needs the fd it was given.
    let uid = std::fs::read_to_string(format!("/proc/{}/status", vm.pid()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        });
    let mut rtts = Vec::new();
    let mut ping_err = None;
    if ready.is_some() {
        for seq in 1..=3 {
            match ping(&sock, GUEST, 0x5150, seq) {
                Ok(rtt) => rtts.push(rtt),
                Err(e) => {
                    ping_err = Some(e);
                    break;
                }
            }
        }
    }
    let out = vm.wait(Duration::from_secs(60));
    assert!(
        ready.is_some(),
        "guest never got ready for pings\n{}",
        out.dump()
    );
    assert!(
        ping_err.is_none(),
        "host ping of the guest: {ping_err:?}\n{}",
        out.dump()
    );
    println!("host -> guest ping RTTs: {rtts:?}");
    assert_eq!(
        uid.as_deref(),
        Some("65534 65534 65534 65534"),
        "VMM uid\n{}",
        out.dump()
    );
    out.assert_all_passed(&["net.config", "net.arp", "net.icmp", "net.pong"]);
    assert!(
        out.info("net answered pings=3").len() == 1,
        "{}",
        out.dump()
    );
    drop(sock);
    drop(ns);
}
