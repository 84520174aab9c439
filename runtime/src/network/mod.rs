// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Pod networking: the interfaces of a pod's network namespace carried into the VM.
//!
//! This is Kata's "tcfilter" model. CNI (or podman, or a test) prepares a network namespace with
//! a veth and addresses, routes and neighbours on it. [`PodNetwork::setup`] enters that namespace
//! and, for each interface, creates a tap next to it and connects the two with an ingress qdisc
//! and a tc mirred redirect filter on each side (veth ingress -> tap egress, tap ingress -> veth
//! egress). The tap's file descriptor goes to the hypervisor's virtio-net; the guest agent gives
//! the guest interface the veth's MAC, addresses and MTU and the namespace's routes and static
//! neighbours ([`configure_guest`]). Every packet arriving on the veth therefore goes to the VM,
//! and every frame the VM sends leaves through the veth, whatever the CNI plugin.
//!
//! Everything is done over rtnetlink ([`netlink`]), nothing shells out to `ip` or `tc`.
//!
//! Lifetime: the taps are not persistent, they disappear with their last file descriptor (ours
//! and the hypervisor's); [`PodNetwork::teardown`] (also run on drop) deletes both ingress qdiscs
//! and with them the filters. If the runtime process itself is SIGKILLed, the filter on the veth
//! stays until the namespace is deleted (by CNI, with the pod), as with Kata.
//!
//! For a containerd shim: call [`PodNetwork::setup`] with the sandbox's netns path, or set
//! [`crate::sandbox::SandboxConfig::netns`] and let [`crate::sandbox::Sandbox::start`] do it.

pub use vmrun_netlink as netlink;
pub mod netns;
pub mod tap;
pub mod tc;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol, RouteType};
use netlink_packet_route::RouteNetlinkMessage;
use vmrun_protocol::agent;

use crate::agent_client::{AgentClient, AgentError};
use netlink::{is_link_local, Mode, Neighbour, Netlink, NetlinkError, Route};

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

/// Errors from pod network setup and teardown.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace cannot be used.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// A netlink request failed.
    #[error("pod network {netns}: {source}")]
    Netlink {
        /// The namespace path.
        netns: PathBuf,
        /// The failure.
        source: NetlinkError,
    },
    /// A tap could not be created.
    #[error("pod network {netns}: cannot create tap {tap}: {source}")]
    Tap {
        /// The namespace path.
        netns: PathBuf,
        /// The tap name.
        tap: String,
        /// Why.
        source: std::io::Error,
    },
}

/// One interface of the pod namespace and the tap that carries it into the VM.
#[derive(Debug)]
pub struct NetDevice {
    /// The interface's name in the namespace (the guest interface gets the same name).
    pub name: String,
    /// Its index in the namespace.
    pub ifindex: u32,
    /// Its MAC address (the guest's virtio-net device gets the same one).
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses with prefix lengths (IPv6 link-local ones left out).
    pub addresses: Vec<(IpAddr, u8)>,
    /// The tap's name.
    pub tap_name: String,
    /// The tap's index.
    pub tap_ifindex: u32,
    /// The tap (close-on-exec; [`inherit_fds`] passes it to the hypervisor). `None` once
    /// [`PodNetwork::release_taps`] ran: then the hypervisor holds the only copy and the tap
    /// disappears with it.
    pub tap: Option<OwnedFd>,
}

/// What a hypervisor needs for one virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The tap's file descriptor number (inherited by the hypervisor).
    pub fd: RawFd,
    /// The guest MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The MTU.
    pub mtu: u32,
}

/// The pod namespace's interfaces, plumbed to taps. Dropping it tears the plumbing down.
#[derive(Debug)]
pub struct PodNetwork {
    netns_path: PathBuf,
    netns: File,
    devices: Vec<NetDevice>,
    routes: Vec<Route>,
    neighbours: Vec<Neighbour>,
    torn_down: bool,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A link of the namespace that is carried into the VM: Ethernet, not loopback, not a tap.
fn candidate(link: &LinkMessage) -> Option<(u32, String, [u8; 6], u32)> {
    if link.header.link_layer_type != LinkLayerType::Ether
        || link.header.flags.contains(LinkFlags::Loopback)
    {
        return None;
    }
    let mut name = None;
    let mut mac = None;
    let mut mtu = 1500;
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(infos)
                if infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun))) =>
            {
                return None;
            }
            _ => {}
        }
    }
    Some((link.header.index, name?, mac?, mtu))
}

/// One interface as listed: index, name, MAC, MTU, addresses.
type Link = (u32, String, [u8; 6], u32, Vec<(IpAddr, u8)>);

/// Everything read from the namespace before anything is changed.
struct Inventory {
    links: Vec<Link>,
    routes: Vec<Route>,
    neighbours: Vec<Neighbour>,
}

fn inventory(nl: &mut Netlink) -> Result<Inventory, NetlinkError> {
    let mut links = Vec::new();
    for l in nl.links()? {
        if let Some((idx, name, mac, mtu)) = candidate(&l) {
            links.push((idx, name, mac, mtu, Vec::new()));
        }
    }
    for a in nl.addresses()? {
        let Some(link) = links.iter_mut().find(|l| l.0 == a.header.index) else {
            continue;
        };
        // IFA_LOCAL is the interface's own address on point-to-point links, IFA_ADDRESS otherwise.
        let mut ip = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(l) => ip = Some(*l),
                AddressAttribute::Address(x) if ip.is_none() => ip = Some(*x),
                _ => {}
            }
        }
        if let Some(ip) = ip.filter(|ip| !is_link_local(ip)) {
            link.4.push((ip, a.header.prefix_len));
        }
    }
    let name_of = |idx: u32| links.iter().find(|l| l.0 == idx).map(|l| l.1.clone());
    let mut routes = Vec::new();
    for r in nl.routes()? {
        let h = &r.header;
        if h.table != RT_TABLE_MAIN
            || h.protocol == RouteProtocol::Kernel
            || h.kind != RouteType::Unicast
        {
            continue;
        }
        let mut dst = None;
        let mut gw = None;
        let mut src = None;
        let mut oif = None;
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Destination(d) => dst = route_ip(d),
                RouteAttribute::Gateway(g) => gw = route_ip(g),
                RouteAttribute::PrefSource(s) => src = route_ip(s),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let Some(device) = oif.and_then(name_of) else {
            continue;
        };
        if dst.as_ref().is_some_and(is_link_local) {
            continue;
        }
        routes.push(Route {
            destination: dst.map(|d| (d, h.destination_prefix_length)),
            gateway: gw,
            device,
            source: src,
            scope: u8::from(h.scope),
        });
    }
    let mut neighbours = Vec::new();
    for n in nl.neighbours()? {
        if n.header.state != NeighbourState::Permanent {
            continue;
        }
        let Some(device) = name_of(n.header.ifindex) else {
            continue;
        };
        let mut ip = None;
        let mut mac = None;
        for attr in &n.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    ip = Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    ip = Some(IpAddr::V6(*v6))
                }
                NeighbourAttribute::LinkLayerAddress(a) => {
                    mac = <[u8; 6]>::try_from(a.as_slice()).ok()
                }
                _ => {}
            }
        }
        if let (Some(address), Some(mac)) = (ip, mac) {
            neighbours.push(Neighbour {
                address,
                mac,
                device,
            });
        }
    }
    Ok(Inventory {
        links,
        routes,
        neighbours,
    })
}

/// The index of link `name`, from a dump (the tap was just created on this thread).
fn link_index(nl: &mut Netlink, name: &str) -> Result<Option<u32>, NetlinkError> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    match nl.request(
        &format!("get link {name}"),
        RouteNetlinkMessage::GetLink(msg),
        Mode::Change,
    ) {
        Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
            _ => None,
        })),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets the MTU of `ifindex` and brings it up.
fn set_mtu_up(nl: &mut Netlink, ifindex: u32, mtu: u32) -> Result<(), NetlinkError> {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    nl.request(
        &format!("set mtu {mtu} and up on ifindex {ifindex}"),
        RouteNetlinkMessage::SetLink(msg),
        Mode::Change,
    )
    .map(drop)
}

/// Creates the tap for one interface and the tc plumbing between them.
fn plumb(
    nl: &mut Netlink,
    index: usize,
    link: Link,
    vnet_hdr: bool,
    netns: &Path,
    done: &mut Vec<NetDevice>,
) -> Result<(), NetworkError> {
    let nl_err = |source| NetworkError::Netlink {
        netns: netns.to_path_buf(),
        source,
    };
    let (ifindex, name, mac, mtu, addresses) = link;
    let tap_name = format!("tap{index}_vmrun");
    let tap = tap::create(&tap_name, vnet_hdr).map_err(|source| NetworkError::Tap {
        netns: netns.to_path_buf(),
        tap: tap_name.clone(),
        source,
    })?;
    let tap_ifindex =
        link_index(nl, &tap_name)
            .map_err(nl_err)?
            .ok_or_else(|| NetworkError::Tap {
                netns: netns.to_path_buf(),
                tap: tap_name.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            })?;
    // The tap only forwards; it must not send its own IPv6 router solicitations into the VM.
    // Best effort: the namespace may have IPv6 disabled.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{tap_name}/disable_ipv6"),
        "1",
    );
    // Record the device first so that a failure below still tears down what exists.
    done.push(NetDevice {
        name,
        ifindex,
        mac,
        mtu,
        addresses,
        tap_name,
        tap_ifindex,
        tap: Some(tap),
    });
    set_mtu_up(nl, tap_ifindex, mtu).map_err(nl_err)?;
    tc::add_ingress(nl, ifindex).map_err(nl_err)?;
    tc::add_ingress(nl, tap_ifindex).map_err(nl_err)?;
    tc::add_redirect(nl, ifindex, tap_ifindex).map_err(nl_err)?;
    tc::add_redirect(nl, tap_ifindex, ifindex).map_err(nl_err)?;
    Ok(())
}

/// Deletes the ingress qdiscs (and so the filters) of `devices`; the first error is returned
/// after trying all.
fn unplumb(nl: &mut Netlink, devices: &[NetDevice]) -> Result<(), NetlinkError> {
    let mut first = None;
    for d in devices {
        for idx in [d.ifindex, d.tap_ifindex] {
            if let Err(e) = tc::del_ingress(nl, idx) {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

impl PodNetwork {
    /// Enters the network namespace at `netns_path`, lists its interfaces, addresses, routes
    /// and permanent neighbours, and plumbs a tap to each interface (`vnet_hdr`: open the taps
    /// with `IFF_VNET_HDR`, see [`crate::hypervisor::Hypervisor::tap_vnet_hdr`]). On error
    /// nothing is left behind.
    pub fn setup(netns_path: &Path, vnet_hdr: bool) -> Result<Self, NetworkError> {
        let ns = netns::open(netns_path)?;
        let nl_err = |source| NetworkError::Netlink {
            netns: netns_path.to_path_buf(),
            source,
        };
        let (devices, routes, neighbours) = netns::run_in(&ns, netns_path, || {
            let mut nl = Netlink::open().map_err(nl_err)?;
            let inv = inventory(&mut nl).map_err(nl_err)?;
            let mut devices = Vec::new();
            for (i, link) in inv.links.into_iter().enumerate() {
                if let Err(e) = plumb(&mut nl, i, link, vnet_hdr, netns_path, &mut devices) {
                    if let Err(e2) = unplumb(&mut nl, &devices) {
                        log::warn!("pod network {}: cleanup: {e2}", netns_path.display());
                    }
                    return Err(e);
                }
            }
            Ok((devices, inv.routes, inv.neighbours))
        })??;
        log::info!(
            "pod network {}: {} interface(s) plumbed to taps ({}), {} route(s), {} neighbour(s)",
            netns_path.display(),
            devices.len(),
            devices
                .iter()
                .map(|d| format!("{} -> {}", d.name, d.tap_name))
                .collect::<Vec<_>>()
                .join(", "),
            routes.len(),
            neighbours.len()
        );
        Ok(Self {
            netns_path: netns_path.to_path_buf(),
            netns: ns,
            devices,
            routes,
            neighbours,
            torn_down: false,
        })
    }

    /// The namespace path.
    pub fn netns_path(&self) -> &Path {
        &self.netns_path
    }

    /// The plumbed interfaces.
    pub fn devices(&self) -> &[NetDevice] {
        &self.devices
    }

    /// The routes handed to the guest.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The permanent neighbours handed to the guest.
    pub fn neighbours(&self) -> &[Neighbour] {
        &self.neighbours
    }

    /// The virtio-net devices for the hypervisor, in interface order (empty after
    /// [`PodNetwork::release_taps`]).
    pub fn net_specs(&self) -> Vec<NetSpec> {
        self.devices
            .iter()
            .filter_map(|d| {
                d.tap.as_ref().map(|tap| NetSpec {
                    fd: tap.as_raw_fd(),
                    mac: format_mac(&d.mac),
                    mtu: d.mtu,
                })
            })
            .collect()
    }

    /// Closes the runtime's copies of the tap fds, once the hypervisor has inherited them: from
    /// then on a tap lives exactly as long as the hypervisor process.
    pub fn release_taps(&mut self) {
        for d in &mut self.devices {
            d.tap = None;
        }
    }

    /// Deletes the tc plumbing and closes the taps (a tap disappears once the hypervisor's copy
    /// is closed too). Idempotent; also run on drop.
    pub fn teardown(&mut self) -> Result<(), NetworkError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let devices = std::mem::take(&mut self.devices);
        let path = self.netns_path.clone();
        let result = netns::run_in(&self.netns, &path, || {
            let mut nl = Netlink::open()?;
            unplumb(&mut nl, &devices)
        });
        drop(devices);
        result?.map_err(|source| NetworkError::Netlink {
            netns: self.netns_path.clone(),
            source,
        })
    }

    /// The agent's view of the interfaces.
    pub fn agent_interfaces(&self) -> Vec<agent::Interface> {
        self.devices
            .iter()
            .map(|d| {
                let mut i = agent::Interface::new();
                i.name = d.name.clone();
                i.hw_addr = format_mac(&d.mac);
                i.mtu = d.mtu;
                i.addresses = d
                    .addresses
                    .iter()
                    .map(|(ip, len)| {
                        let mut a = agent::IpAddress::new();
                        a.address = ip.to_string();
                        a.prefix_len = u32::from(*len);
                        a
                    })
                    .collect();
                i
            })
            .collect()
    }

    /// The agent's view of the routes, link-scope ones first (gateways must be reachable when
    /// the routes through them are added).
    pub fn agent_routes(&self) -> Vec<agent::Route> {
        let mut routes: Vec<&Route> = self.routes.iter().collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.scope));
        routes
            .into_iter()
            .map(|r| {
                let mut a = agent::Route::new();
                a.destination = r
                    .destination
                    .map(|(ip, len)| format!("{ip}/{len}"))
                    .unwrap_or_default();
                a.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
                a.device = r.device.clone();
                a.source = r.source.map(|s| s.to_string()).unwrap_or_default();
                a.scope = u32::from(r.scope);
                a
            })
            .collect()
    }

    /// The agent's view of the neighbours.
    pub fn agent_neighbours(&self) -> Vec<agent::ArpNeighbor> {
        self.neighbours
            .iter()
            .map(|n| {
                let mut a = agent::ArpNeighbor::new();
                a.address = n.address.to_string();
                a.hw_addr = format_mac(&n.mac);
                a.device = n.device.clone();
                a
            })
            .collect()
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::error!("pod network {}: teardown: {e}", self.netns_path.display());
        }
    }
}

/// Configures the guest to match `net`: every interface (by MAC), then the routes, then the
/// neighbours.
pub async fn configure_guest(client: &AgentClient, net: &PodNetwork) -> Result<(), AgentError> {
    let svc = client.service();
    for iface in net.agent_interfaces() {
        let mut req = agent::UpdateInterfaceRequest::new();
        req.interface = protobuf::MessageField::some(iface);
        svc.update_interface(client.context(), &req)
            .await
            .map_err(|source| AgentError::Rpc {
                method: "UpdateInterface",
                source,
            })?;
    }
    let routes = net.agent_routes();
    if !routes.is_empty() {
        let mut req = agent::UpdateRoutesRequest::new();
        let mut r = agent::Routes::new();
        r.routes = routes;
        req.routes = protobuf::MessageField::some(r);
        svc.update_routes(client.context(), &req)
            .await
            .map_err(|source| AgentError::Rpc {
                method: "UpdateRoutes",
                source,
            })?;
    }
    let neighbours = net.agent_neighbours();
    if !neighbours.is_empty() {
        let mut req = agent::AddArpNeighborsRequest::new();
        req.neighbors = neighbours;
        svc.add_arp_neighbors(client.context(), &req)
            .await
            .map_err(|source| AgentError::Rpc {
                method: "AddArpNeighbors",
                source,
            })?;
    }
    Ok(())
}

/// Makes `fds` survive the `exec` of `cmd` (clears their close-on-exec flag in the child only).
pub fn inherit_fds(cmd: &mut std::process::Command, fds: Vec<RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: the closure runs in the forked child before exec and calls only fcntl, which is
    // async-signal-safe; it allocates nothing (`fds` was allocated before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_link_local() {
        assert_eq!(
            format_mac(&[0x02, 0, 0xab, 1, 2, 0xff]),
            "02:00:ab:01:02:ff"
        );
        assert!(is_link_local(&"fe80::1".parse().expect("ip")));
        assert!(!is_link_local(&"fd00::1".parse().expect("ip")));
        assert!(!is_link_local(&"10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn a_missing_namespace_is_a_clear_error() {
        let err = PodNetwork::setup(Path::new("/nonexistent/netns/vmrun-test"), false)
            .expect_err("no such namespace");
        let text = err.to_string();
        assert!(text.contains("/nonexistent/netns/vmrun-test"), "{text}");
        assert!(text.contains("No such file"), "{text}");
        // A regular file is not a namespace.
        let err =
            PodNetwork::setup(Path::new("/proc/self/status"), false).expect_err("not a namespace");
        assert!(err.to_string().contains("cannot enter"), "{err}");
    }

    fn ip(args: &[&str]) -> bool {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Deletes the namespace on drop.
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            ip(&["netns", "del", &self.0]);
        }
    }

    /// Plumbs a real namespace (root and iproute2 needed; skipped otherwise) and checks the
    /// inventory, the filters both ways, and that teardown and the taps' last close leave
    /// nothing.
    #[test]
    fn setup_and_teardown_in_a_real_namespace() {
        let name = format!("vmrun-net-unit-{}", std::process::id());
        if !ip(&["netns", "add", &name]) {
            println!("skipped: cannot create a network namespace (not root, or no iproute2)");
            return;
        }
        let _ns = Ns(name.clone());
        let peer = format!("{name}-p");
        assert!(ip(&["netns", "add", &peer]));
        let _peer = Ns(peer.clone());
        for args in [
            vec![
                "-n",
                &name,
                "link",
                "add",
                "eth0",
                "address",
                "02:00:00:00:01:02",
                "mtu",
                "1300",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &peer,
            ],
            vec!["-n", &name, "addr", "add", "10.201.0.2/24", "dev", "eth0"],
            vec!["-n", &name, "link", "set", "eth0", "up"],
            vec!["-n", &name, "route", "add", "default", "via", "10.201.0.1"],
            vec![
                "-n",
                &name,
                "neigh",
                "add",
                "10.201.0.9",
                "lladdr",
                "02:00:00:00:00:09",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        ] {
            assert!(ip(&args), "ip {args:?}");
        }
        let path = PathBuf::from("/run/netns").join(&name);
        let mut net = PodNetwork::setup(&path, true).expect("setup");
        assert_eq!(net.devices().len(), 1);
        let d = &net.devices()[0];
        assert_eq!((d.name.as_str(), d.mtu), ("eth0", 1300));
        assert_eq!(format_mac(&d.mac), "02:00:00:00:01:02");
        assert_eq!(d.addresses, vec![("10.201.0.2".parse().expect("ip"), 24)]);
        assert_eq!(d.tap_name, "tap0_vmrun");
        let (veth, tapi) = (d.ifindex, d.tap_ifindex);
        let routes = net.agent_routes();
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(
            (routes[0].destination.as_str(), routes[0].gateway.as_str()),
            ("", "10.201.0.1")
        );
        assert_eq!(net.agent_neighbours().len(), 1);
        let specs = net.net_specs();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].mac, "02:00:00:00:01:02");

        let ns = netns::open(&path).expect("open");
        let targets = |nsf: &File| {
            netns::run_in(nsf, &path, || {
                let mut nl = Netlink::open()?;
                Ok::<_, NetlinkError>((
                    tc::redirect_targets(&mut nl, veth)?,
                    tc::redirect_targets(&mut nl, tapi).unwrap_or_default(),
                    link_index(&mut nl, "tap0_vmrun")?,
                ))
            })
            .expect("enter")
            .expect("netlink")
        };
        assert_eq!(targets(&ns), (vec![tapi], vec![veth], Some(tapi)));
        // A second setup in the same namespace skips the tap and refuses the existing qdisc,
        // cleaning up its own tap.
        assert!(PodNetwork::setup(&path, true).is_err());
        assert_eq!(targets(&ns), (vec![tapi], vec![veth], Some(tapi)));

        net.teardown().expect("teardown");
        let (v, t, tap) = targets(&ns);
        assert!(v.is_empty() && t.is_empty(), "filters left: {v:?} {t:?}");
        assert_eq!(tap, None, "the tap outlived its last fd");
        // Teardown is idempotent.
        net.teardown().expect("second teardown");
    }
}
