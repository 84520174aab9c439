// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Guest network configuration over rtnetlink: the runtime hands over the pod's interfaces
//! (UpdateInterface), routes (UpdateRoutes) and static neighbours (AddArpNeighbors) and this
//! module makes the guest's root network namespace match.
//!
//! The namespace model: the VM is the pod. The guest interfaces live in the guest's root network
//! namespace, and a container whose spec joined the pod's network namespace by path runs in that
//! root namespace too (the runtime drops the path from the guest spec, see `oci::Bundle::guest_spec`).
//! A container whose spec asks for a new network namespace gets one with loopback only.
//!
//! A device is found by its MAC (the virtio-net device has the CNI interface's MAC), renamed to
//! the pod's interface name, given the addresses (replacing the old ones) and MTU, and brought
//! up. Every input comes from the host and is validated before anything is changed.

use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use vmrun_netlink::{is_link_local, Mode, Neighbour, Netlink, NetlinkError, Route};

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

/// Errors of the network calls.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The request is malformed (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// No device has the MAC (NOT_FOUND).
    #[error("no network device has MAC {0}")]
    NoDevice(String),
    /// The kernel refused (INTERNAL).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// A validated interface request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// The name to give the device.
    pub name: String,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Addresses with prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// MTU (0: keep).
    pub mtu: u32,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::Invalid(format!("invalid MAC address {s:?}"));
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

fn parse_ip(s: &str, what: &str) -> Result<IpAddr, NetError> {
    s.parse()
        .map_err(|_| NetError::Invalid(format!("invalid {what} {s:?}")))
}

fn check_prefix(ip: &IpAddr, len: u32) -> Result<u8, NetError> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    u8::try_from(len)
        .ok()
        .filter(|l| u32::from(*l) <= max)
        .ok_or_else(|| NetError::Invalid(format!("invalid prefix length {len} for {ip}")))
}

fn check_name(name: &str) -> Result<(), NetError> {
    if name.is_empty()
        || name.len() >= 16
        || name.contains(['/', ' ', ':'])
        || name == "."
        || name == ".."
    {
        return Err(NetError::Invalid(format!(
            "invalid interface name {name:?}"
        )));
    }
    Ok(())
}

/// Validates an UpdateInterface request.
pub fn interface_config(
    name: &str,
    hw_addr: &str,
    addresses: &[(String, u32)],
    mtu: u32,
) -> Result<InterfaceConfig, NetError> {
    check_name(name)?;
    let mac = parse_mac(hw_addr)?;
    if mtu != 0 && !(68..=65535).contains(&mtu) {
        return Err(NetError::Invalid(format!("invalid MTU {mtu}")));
    }
    let addresses = addresses
        .iter()
        .map(|(a, len)| {
            let ip = parse_ip(a, "address")?;
            Ok((ip, check_prefix(&ip, *len)?))
        })
        .collect::<Result<_, NetError>>()?;
    Ok(InterfaceConfig {
        name: name.to_owned(),
        mac,
        addresses,
        mtu,
    })
}

/// Validates one route of UpdateRoutes.
pub fn route_config(
    destination: &str,
    gateway: &str,
    device: &str,
    source: &str,
    scope: u32,
) -> Result<Route, NetError> {
    check_name(device)?;
    let destination = match destination {
        "" | "default" => None,
        d => {
            let (ip, len) = d
                .split_once('/')
                .ok_or_else(|| NetError::Invalid(format!("route destination {d:?} is not CIDR")))?;
            let ip = parse_ip(ip, "route destination")?;
            let len: u32 = len
                .parse()
                .map_err(|_| NetError::Invalid(format!("invalid prefix in {d:?}")))?;
            Some((ip, check_prefix(&ip, len)?))
        }
    };
    let gateway = (!gateway.is_empty())
        .then(|| parse_ip(gateway, "gateway"))
        .transpose()?;
    let source = (!source.is_empty())
        .then(|| parse_ip(source, "route source"))
        .transpose()?;
    let scope =
        u8::try_from(scope).map_err(|_| NetError::Invalid(format!("invalid scope {scope}")))?;
    Ok(Route {
        destination,
        gateway,
        device: device.to_owned(),
        source,
        scope,
    })
}

/// Validates one neighbour of AddArpNeighbors.
pub fn neighbour_config(address: &str, hw_addr: &str, device: &str) -> Result<Neighbour, NetError> {
    check_name(device)?;
    Ok(Neighbour {
        address: parse_ip(address, "neighbour address")?,
        mac: parse_mac(hw_addr)?,
        device: device.to_owned(),
    })
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn index_of(nl: &mut Netlink, name: &str) -> Result<u32, NetError> {
    nl.links()?
        .iter()
        .find(|l| link_name(l) == Some(name))
        .map(|l| l.header.index)
        .ok_or_else(|| NetError::Invalid(format!("no network device named {name:?}")))
}

fn set_link(
    nl: &mut Netlink,
    index: u32,
    up: Option<bool>,
    attrs: Vec<LinkAttribute>,
) -> Result<(), NetlinkError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    if let Some(up) = up {
        msg.header.change_mask = LinkFlags::Up;
        if up {
            msg.header.flags = LinkFlags::Up;
        }
    }
    msg.attributes = attrs;
    nl.request(
        &format!("set link {index}"),
        RouteNetlinkMessage::SetLink(msg),
        Mode::Change,
    )
    .map(drop)
}

/// Applies an interface configuration; returns the device's index.
pub fn update_interface(cfg: &InterfaceConfig) -> Result<u32, NetError> {
    let mut nl = Netlink::open()?;
    let all = nl.links()?;
    // Loopback up: containers in the pod namespace talk to each other over it.
    if let Some(lo) = all
        .iter()
        .find(|l| l.header.flags.contains(LinkFlags::Loopback))
    {
        set_link(&mut nl, lo.header.index, Some(true), vec![])?;
    }
    let link = all
        .iter()
        .find(|l| {
            l.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == cfg.mac))
        })
        .ok_or_else(|| {
            NetError::NoDevice(
                cfg.mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            )
        })?;
    let index = link.header.index;
    if link_name(link) != Some(cfg.name.as_str()) {
        // A device is renamed only while down.
        set_link(&mut nl, index, Some(false), vec![])?;
        set_link(
            &mut nl,
            index,
            None,
            vec![LinkAttribute::IfName(cfg.name.clone())],
        )?;
    }
    if cfg.mtu != 0 {
        set_link(&mut nl, index, None, vec![LinkAttribute::Mtu(cfg.mtu)])?;
    }
    // Replace the addresses (IPv6 link-local ones are the kernel's).
    for a in nl.addresses()? {
        if a.header.index != index {
            continue;
        }
        let link_local = a
            .attributes
            .iter()
            .any(|x| matches!(x, AddressAttribute::Address(ip) if is_link_local(ip)));
        if !link_local {
            nl.request(
                "delete address",
                RouteNetlinkMessage::DelAddress(a),
                Mode::Change,
            )?;
        }
    }
    for (ip, len) in &cfg.addresses {
        let mut msg = AddressMessage::default();
        msg.header.family = family(ip);
        msg.header.prefix_len = *len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(*ip));
        msg.attributes.push(AddressAttribute::Address(*ip));
        if ip.is_ipv6() {
            // The pod's network already validated the address (it is the pod interface's, in
            // the pod namespace); duplicate address detection here would only leave it
            // "tentative", and unusable as a source, for the first second.
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        nl.request(
            &format!("add address {ip}/{len}"),
            RouteNetlinkMessage::NewAddress(msg),
            Mode::Create,
        )?;
    }
    set_link(&mut nl, index, Some(true), vec![])?;
    Ok(index)
}

fn route_addr(ip: &IpAddr) -> RouteAddress {
    RouteAddress::from(*ip)
}

/// Replaces the main table's routes (all but the kernel's connected ones) with `routes`.
pub fn update_routes(routes: &[Route]) -> Result<(), NetError> {
    let mut nl = Netlink::open()?;
    let mut indexes = Vec::with_capacity(routes.len());
    for r in routes {
        indexes.push(index_of(&mut nl, &r.device)?);
    }
    for r in nl.routes()? {
        if r.header.table == RT_TABLE_MAIN
            && r.header.protocol != RouteProtocol::Kernel
            && r.header.kind == RouteType::Unicast
        {
            nl.request(
                "delete route",
                RouteNetlinkMessage::DelRoute(r),
                Mode::Change,
            )?;
        }
    }
    for (r, index) in routes.iter().zip(indexes) {
        let ip = r.destination.map(|d| d.0).or(r.gateway).or(r.source);
        let mut msg = RouteMessage::default();
        msg.header.address_family = ip.as_ref().map_or(AddressFamily::Inet, family);
        msg.header.table = RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::from(r.scope);
        msg.header.kind = RouteType::Unicast;
        if let Some((dst, len)) = r.destination {
            msg.header.destination_prefix_length = len;
            msg.attributes
                .push(RouteAttribute::Destination(route_addr(&dst)));
        }
        if let Some(gw) = r.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(route_addr(&gw)));
        }
        if let Some(src) = r.source {
            msg.attributes
                .push(RouteAttribute::PrefSource(route_addr(&src)));
        }
        msg.attributes.push(RouteAttribute::Oif(index));
        nl.request(
            &format!(
                "add route {} via {:?} dev {}",
                r.destination
                    .map_or("default".to_owned(), |(d, l)| format!("{d}/{l}")),
                r.gateway,
                r.device
            ),
            RouteNetlinkMessage::NewRoute(msg),
            Mode::Create,
        )?;
    }
    Ok(())
}

/// Adds permanent neighbour entries (replacing existing ones for the same address).
pub fn add_neighbours(neighbours: &[Neighbour]) -> Result<(), NetError> {
    let mut nl = Netlink::open()?;
    for n in neighbours {
        let index = index_of(&mut nl, &n.device)?;
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(&n.address);
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(match n.address {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            }));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
        nl.request(
            &format!("add neighbour {} dev {}", n.address, n.device),
            RouteNetlinkMessage::NewNeighbour(msg),
            Mode::Replace,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated() {
        assert_eq!(
            parse_mac("02:00:0a:0b:0c:ff").expect("mac"),
            [2, 0, 10, 11, 12, 255]
        );
        for bad in [
            "",
            "02:00:0a:0b:0c",
            "02:00:0a:0b:0c:zz",
            "002:00:0a:0b:0c:ff",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        let ok = interface_config(
            "eth0",
            "02:00:00:00:00:01",
            &[("10.0.0.2".into(), 24)],
            1400,
        )
        .expect("valid");
        assert_eq!(ok.addresses, vec![("10.0.0.2".parse().expect("ip"), 24)]);
        assert!(
            interface_config("eth0", "02:00:00:00:00:01", &[("10.0.0.2".into(), 33)], 0).is_err()
        );
        assert!(interface_config("a/b", "02:00:00:00:00:01", &[], 0).is_err());
        assert!(interface_config("eth0", "02:00:00:00:00:01", &[], 20).is_err());
        assert!(interface_config("eth0", "02:00:00:00:00:01", &[("x".into(), 1)], 0).is_err());
        let r = route_config("", "10.0.0.1", "eth0", "", 0).expect("default route");
        assert_eq!(r.destination, None);
        assert!(route_config("10.0.0.0", "", "eth0", "", 253).is_err());
        assert!(route_config("10.0.0.0/40", "", "eth0", "", 253).is_err());
        assert!(route_config("fd00::/64", "", "eth0", "", 300).is_err());
        assert!(neighbour_config("10.0.0.1", "02:00:00:00:00:01", "eth0").is_ok());
        assert!(neighbour_config("10.0.0.1", "02:00:00:00:00:01", "").is_err());
    }
}
