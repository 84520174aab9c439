// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! The tc plumbing between a CNI interface and its tap: an ingress qdisc on each, and one u32
//! filter matching every packet whose action is a mirred redirect to the other device's egress
//! (what `tc filter add dev A ingress u32 match u8 0 0 action mirred egress redirect dev B` does).
//!
//! Deleting the ingress qdisc deletes its filters with it; that is how teardown works.

use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::netlink::{Mode, Netlink, NetlinkError};

/// `ffff:`, the handle of an ingress qdisc.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// `ETH_P_ALL` in network byte order, as tc puts it in `tcm_info`.
const ETH_P_ALL_BE: u32 = 0x0300;
/// The filter's priority.
const FILTER_PRIO: u32 = 1;

fn qdisc_msg(ifindex: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(i32::try_from(ifindex).unwrap_or(i32::MAX));
    msg.header.handle = INGRESS_HANDLE;
    msg.header.parent = TcHandle::INGRESS;
    msg.attributes.push(TcAttribute::Kind("ingress".to_owned()));
    msg
}

/// Adds the ingress qdisc to `ifindex`.
pub fn add_ingress(nl: &mut Netlink, ifindex: u32) -> Result<(), NetlinkError> {
    nl.request(
        &format!("add ingress qdisc to ifindex {ifindex}"),
        RouteNetlinkMessage::NewQueueDiscipline(qdisc_msg(ifindex)),
        Mode::Create,
    )
    .map(drop)
}

/// Deletes the ingress qdisc of `ifindex` and with it every ingress filter. A missing device or
/// qdisc is not an error (the tap may be gone already).
pub fn del_ingress(nl: &mut Netlink, ifindex: u32) -> Result<(), NetlinkError> {
    match nl.request(
        &format!("delete ingress qdisc of ifindex {ifindex}"),
        RouteNetlinkMessage::DelQueueDiscipline(qdisc_msg(ifindex)),
        Mode::Change,
    ) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.errno(), Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Adds to the ingress of `from` a filter that redirects every packet to the egress of `to`.
pub fn add_redirect(nl: &mut Netlink, from: u32, to: u32) -> Result<(), NetlinkError> {
    let mut msg = TcMessage::with_index(i32::try_from(from).unwrap_or(i32::MAX));
    msg.header.parent = INGRESS_HANDLE;
    msg.header.info = (FILTER_PRIO << 16) | ETH_P_ALL_BE;

    let mut key = TcU32Key::default();
    key.mask = 0;
    key.val = 0;
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![key];

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".to_owned()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    msg.attributes = vec![
        TcAttribute::Kind("u32".to_owned()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(sel)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    nl.request(
        &format!("add mirred redirect filter ifindex {from} -> {to}"),
        RouteNetlinkMessage::NewTrafficFilter(msg),
        Mode::Create,
    )
    .map(drop)
}

/// The mirred redirect targets (ifindexes) of the ingress filters of `ifindex`.
pub fn redirect_targets(nl: &mut Netlink, ifindex: u32) -> Result<Vec<u32>, NetlinkError> {
    let mut msg = TcMessage::with_index(i32::try_from(ifindex).unwrap_or(i32::MAX));
    msg.header.parent = INGRESS_HANDLE;
    let answers = nl.request(
        &format!("list ingress filters of ifindex {ifindex}"),
        RouteNetlinkMessage::GetTrafficFilter(msg),
        Mode::Dump,
    )?;
    let mut targets = Vec::new();
    for a in answers {
        let RouteNetlinkMessage::NewTrafficFilter(f) = a else {
            continue;
        };
        for attr in &f.attributes {
            let TcAttribute::Options(opts) = attr else {
                continue;
            };
            for o in opts {
                let TcOption::U32(TcFilterU32Option::Action(acts)) = o else {
                    continue;
                };
                for act in acts {
                    for aa in &act.attributes {
                        let TcActionAttribute::Options(aopts) = aa else {
                            continue;
                        };
                        for ao in aopts {
                            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = ao {
                                targets.push(p.ifindex);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(targets)
}
