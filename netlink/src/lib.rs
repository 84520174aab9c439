// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! A small synchronous rtnetlink client: one request, its answers, its acknowledgement.
//!
//! The socket belongs to the network namespace of the thread that opened it, so a caller that
//! entered a pod's namespace talks to that namespace's kernel tables. The runtime uses it in the
//! pod's namespace on the host (taps, tc filters), the agent in the guest (interfaces, routes).

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::net::IpAddr;

/// A route of a main table: what the runtime reads from a pod's namespace and the agent
/// writes in the guest (the kernel's connected routes are left to each side's kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination and prefix length; `None` for the default route.
    pub destination: Option<(IpAddr, u8)>,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface name.
    pub device: String,
    /// Preferred source.
    pub source: Option<IpAddr>,
    /// `RT_SCOPE_*`.
    pub scope: u8,
}

/// A permanent neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The neighbour's IP.
    pub address: IpAddr,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Interface name.
    pub device: String,
}

/// Whether an address is IPv6 link-local (each side of a link makes its own).
pub fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Errors from the netlink socket.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened, bound, written or read.
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused a request.
    #[error("netlink {what}: {source}")]
    Refused {
        /// The request.
        what: String,
        /// The kernel's errno.
        source: std::io::Error,
    },
    /// An answer could not be decoded.
    #[error("netlink {what}: cannot decode the kernel's answer: {detail}")]
    Decode {
        /// The request.
        what: String,
        /// The decoder's message.
        detail: String,
    },
}

impl NetlinkError {
    /// The errno of a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// How a request changes the kernel's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A dump (`NLM_F_DUMP`).
    Dump,
    /// Create, failing if it exists (`NLM_F_CREATE | NLM_F_EXCL`).
    Create,
    /// Create or replace (`NLM_F_CREATE | NLM_F_REPLACE`).
    Replace,
    /// Change or delete an existing object.
    Change,
}

/// An rtnetlink socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkMessage>, NetlinkError> {
        let req = RouteNetlinkMessage::GetLink(LinkMessage::default());
        self.dump("list links", req, |m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
    }

    /// Every address of every link.
    pub fn addresses(&mut self) -> Result<Vec<AddressMessage>, NetlinkError> {
        let req = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        self.dump("list addresses", req, |m| match m {
            RouteNetlinkMessage::NewAddress(a) => Some(a),
            _ => None,
        })
    }

    /// Every route of every table.
    pub fn routes(&mut self) -> Result<Vec<RouteMessage>, NetlinkError> {
        let req = RouteNetlinkMessage::GetRoute(RouteMessage::default());
        self.dump("list routes", req, |m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
    }

    /// Every neighbour entry.
    pub fn neighbours(&mut self) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        let req = RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default());
        self.dump("list neighbours", req, |m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => Some(n),
            _ => None,
        })
    }

    /// A dump request's answers of the kind `pick` keeps.
    fn dump<T>(
        &mut self,
        what: &str,
        request: RouteNetlinkMessage,
        pick: fn(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, NetlinkError> {
        Ok(self
            .request(what, request, Mode::Dump)?
            .into_iter()
            .filter_map(pick)
            .collect())
    }

    /// Opens and binds the socket.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends `msg` and collects every answer until the acknowledgement (or the end of a dump).
    pub fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        mode: Mode,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST
            | match mode {
                Mode::Dump => NLM_F_DUMP,
                Mode::Create => NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                Mode::Replace => NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                Mode::Change => NLM_F_ACK,
            };
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut answers = Vec::new();
        let decode = |detail: String| NetlinkError::Decode {
            what: what.to_owned(),
            detail,
        };
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| decode(e.to_string()))?;
                let len = usize::try_from(msg.header.length).unwrap_or(0);
                if len == 0 {
                    return Err(decode("zero-length message".to_owned()));
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(NetlinkError::Refused {
                                what: what.to_owned(),
                                source: std::io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        answers.push(m);
                        if mode != Mode::Dump {
                            // An echoed object; the ACK follows.
                            continue;
                        }
                    }
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
            }
        }
    }
}
