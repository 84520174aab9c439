// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! virtio-net on a tap, through `virtio-drivers`' `VirtIONet`, with a tiny ARP/IPv4/ICMP stack.
//!
//! The host gives the guest the address `kit.net_ip=` and the peer's `kit.net_peer=` (the tap's
//! address in the test's network namespace), and optionally the MAC it configured
//! (`kit.net_mac=aa:bb:..`). Throughout, the program answers ARP requests for its address and
//! ICMP echo requests to it. Checks:
//!
//! * `net.config`: the MAC in the config space is the configured one;
//! * `net.arp`: an ARP request for the peer gets a reply (the peer's MAC is printed);
//! * `net.icmp`: three ICMP echo requests to the peer come back with the same id, sequence and
//!   payload;
//! * `net.pong`: prints `INFO net ready-for-ping`, then answers the host's pings until it has
//!   answered `kit.net_pings=` (default 3) of them, within 30 s.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use virtio_drivers::Error as VirtioError;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::mmio::MmioTransport;
use vmrun_guest_kit::arch::Deadline;
use vmrun_guest_kit::cmdline::{kit_number, kit_value};
use vmrun_guest_kit::hal::IdentityHal;
use vmrun_guest_kit::mmio::{find, id, transport};
use vmrun_guest_kit::report::Report;
use vmrun_guest_kit::{kit_main, println};

kit_main!(run);

type Dev = VirtIONet<IdentityHal, MmioTransport<'static>, 16>;

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const BROADCAST: [u8; 6] = [0xff; 6];
const ICMP_ID: u16 = 0x7672;

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}

/// The Internet checksum (RFC 1071).
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

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp(oper: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    a.extend_from_slice(&oper.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa);
    a
}

/// An IPv4 packet carrying ICMP message `icmp` (checksum computed here).
fn ipv4_icmp(src: [u8; 4], dst: [u8; 4], mut icmp: Vec<u8>) -> Vec<u8> {
    icmp[2..4].fill(0);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = u16::try_from(20 + icmp.len()).unwrap_or(u16::MAX);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// A parsed ICMP echo message addressed to us.
struct Echo<'a> {
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    kind: u8,
    ident: u16,
    seq: u16,
    payload: &'a [u8],
}

struct Nic {
    dev: Dev,
    mac: [u8; 6],
    ip: [u8; 4],
    pings_answered: u32,
    arps_answered: u32,
}

impl Nic {
    fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        let mut tx = self.dev.new_tx_buffer(frame.len());
        tx.packet_mut().copy_from_slice(frame);
        self.dev.send(tx).map_err(|e| format!("send: {e}"))
    }

    /// An ICMP echo (request or reply) to our address in `f`, with valid checksums.
    fn echo<'a>(&self, f: &'a [u8]) -> Option<Echo<'a>> {
        if f.len() < 14 + 20 + 8 || be16(f, 12) != ETH_IPV4 {
            return None;
        }
        let ip = &f[14..];
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let total = usize::from(be16(ip, 2));
        if ip[0] >> 4 != 4 || ihl < 20 || total > ip.len() || total < ihl + 8 || ip[9] != 1 {
            return None;
        }
        if ip[16..20] != self.ip || checksum(&ip[..ihl]) != 0 {
            return None;
        }
        let icmp = &ip[ihl..total];
        if checksum(icmp) != 0 || icmp[1] != 0 {
            return None;
        }
        Some(Echo {
            src_mac: f[6..12].try_into().ok()?,
            src_ip: ip[12..16].try_into().ok()?,
            kind: icmp[0],
            ident: be16(icmp, 4),
            seq: be16(icmp, 6),
            payload: &icmp[8..],
        })
    }

    /// The reply this stack owes for `f` (ARP request for us, ICMP echo request to us).
    fn answer(&mut self, f: &[u8]) -> Option<Vec<u8>> {
        if f.len() >= 14 + 28 && be16(f, 12) == ETH_ARP {
            let a = &f[14..];
            if be16(a, 6) == 1 && a[24..28] == self.ip {
                let sha: [u8; 6] = a[8..14].try_into().ok()?;
                let spa: [u8; 4] = a[14..18].try_into().ok()?;
                self.arps_answered += 1;
                let body = arp(2, self.mac, self.ip, sha, spa);
                return Some(ethernet(sha, self.mac, ETH_ARP, &body));
            }
            return None;
        }
        let e = self.echo(f)?;
        if e.kind != 8 {
            return None;
        }
        let mut icmp = vec![0u8, 0, 0, 0];
        icmp.extend_from_slice(&e.ident.to_be_bytes());
        icmp.extend_from_slice(&e.seq.to_be_bytes());
        icmp.extend_from_slice(e.payload);
        self.pings_answered += 1;
        let ip = ipv4_icmp(self.ip, e.src_ip, icmp);
        Some(ethernet(e.src_mac, self.mac, ETH_IPV4, &ip))
    }

    /// Receives frames (answering what is owed) until `want` accepts one or `deadline` passes.
    fn poll<T>(
        &mut self,
        deadline: Deadline,
        mut want: impl FnMut(&Self, &[u8]) -> Option<T>,
    ) -> Result<Option<T>, String> {
        loop {
            match self.dev.receive() {
                Ok(buf) => {
                    let frame = buf.packet().to_vec();
                    self.dev
                        .recycle_rx_buffer(buf)
                        .map_err(|e| format!("recycle: {e}"))?;
                    if let Some(reply) = self.answer(&frame) {
                        self.send(&reply)?;
                    }
                    if let Some(t) = want(self, &frame) {
                        return Ok(Some(t));
                    }
                }
                Err(VirtioError::NotReady) => {
                    if deadline.expired() {
                        return Ok(None);
                    }
                    core::hint::spin_loop();
                }
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
    }
}

fn run(bp: u64) -> ! {
    let mut r = Report::start(bp);
    let cmdline = r.cmdline;
    let ip = kit_value(cmdline, "net_ip").and_then(parse_ip);
    let peer = kit_value(cmdline, "net_peer").and_then(parse_ip);
    let (Some(ip), Some(peer)) = (ip, peer) else {
        r.record(
            "net.args",
            Err(String::from("kit.net_ip= and kit.net_peer= are required")),
        );
        r.finish()
    };
    let dev = find(cmdline, id::NET, 0)
        .and_then(|f| transport(&f))
        .and_then(|t| Dev::new(t, 2048).map_err(|e| format!("init: {e}")));
    let dev = match dev {
        Ok(d) => d,
        Err(e) => {
            r.record("net.init", Err(e));
            r.finish()
        }
    };
    let mac = dev.mac_address();
    let mut nic = Nic {
        dev,
        mac,
        ip,
        pings_answered: 0,
        arps_answered: 0,
    };
    r.run("net.config", || {
        println!("INFO net mac {mac:02x?}");
        match kit_value(cmdline, "net_mac").map(parse_mac) {
            Some(Some(want)) if want != mac => Err(format!("MAC {mac:02x?}, expected {want:02x?}")),
            Some(None) => Err(String::from("kit.net_mac= is malformed")),
            _ => Ok(()),
        }
    });
    let mut peer_mac = None;
    r.run("net.arp", || {
        let body = arp(1, mac, ip, [0; 6], peer);
        nic.send(&ethernet(BROADCAST, mac, ETH_ARP, &body))?;
        let got = nic.poll(Deadline::after_ms(5_000), |_, f| {
            let a = f.get(14..42)?;
            (be16(f, 12) == ETH_ARP && be16(a, 6) == 2 && a[14..18] == peer)
                .then(|| <[u8; 6]>::try_from(&a[8..14]).ok())
                .flatten()
        })?;
        let m = got.ok_or_else(|| String::from("no ARP reply from the peer within 5 s"))?;
        println!("INFO net peer mac {m:02x?}");
        peer_mac = Some(m);
        Ok(())
    });
    r.run("net.icmp", || {
        let pm = peer_mac.ok_or_else(|| String::from("peer MAC unknown (net.arp failed)"))?;
        for seq in 1..=3u16 {
            let payload: Vec<u8> = (0..56u8).map(|i| i ^ (seq as u8)).collect();
            let mut icmp = vec![8u8, 0, 0, 0];
            icmp.extend_from_slice(&ICMP_ID.to_be_bytes());
            icmp.extend_from_slice(&seq.to_be_bytes());
            icmp.extend_from_slice(&payload);
            let frame = ethernet(pm, mac, ETH_IPV4, &ipv4_icmp(ip, peer, icmp));
            nic.send(&frame)?;
            let ok = nic.poll(Deadline::after_ms(5_000), |n, f| {
                let e = n.echo(f)?;
                (e.kind == 0 && e.src_ip == peer && e.ident == ICMP_ID && e.seq == seq)
                    .then(|| e.payload == payload.as_slice())
            })?;
            match ok {
                None => return Err(format!("no echo reply for seq {seq} within 5 s")),
                Some(false) => return Err(format!("echo reply {seq} has another payload")),
                Some(true) => {}
            }
        }
        Ok(())
    });
    let pings = u32::try_from(kit_number(cmdline, "net_pings").unwrap_or(3)).unwrap_or(3);
    r.run("net.pong", || {
        println!("INFO net ready-for-ping");
        let before = nic.pings_answered;
        nic.poll(Deadline::after_ms(30_000), |n, _| {
            (n.pings_answered - before >= pings).then_some(())
        })?;
        let answered = nic.pings_answered - before;
        println!(
            "INFO net answered pings={answered} arps={}",
            nic.arps_answered
        );
        if answered < pings {
            return Err(format!("answered {answered} of {pings} pings within 30 s"));
        }
        Ok(())
    });
    r.finish()
}
