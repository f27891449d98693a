//! The real [`Links`] adapter: synchronous rtnetlink over one `NETLINK_ROUTE` socket.
//!
//! Messages are built and parsed with `netlink-packet-route` and sent over a blocking
//! `netlink-sys` socket. The async `rtnetlink` crate is built on the same two crates; for a
//! program that lives a few milliseconds its tokio runtime is pure start-up cost (figure in
//! README.md), so this module talks netlink directly.

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::links::{IfAddr, Link, LinkChange, LinkError, Links, Route};

/// A connected rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
    seq: u32,
    /// name → index of links seen (dropped on rename).
    index_cache: std::collections::HashMap<String, u32>,
}

impl Netlink {
    /// Open a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, LinkError> {
        let io = |e: std::io::Error| LinkError {
            op: "open rtnetlink socket".into(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io)?;
        sock.bind_auto().map_err(io)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        Ok(Netlink {
            sock,
            seq: 0,
            index_cache: Default::default(),
        })
    }

    /// Send one request and collect the messages of the answer until the ACK or DONE.
    fn request(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, LinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        let io = |e: std::io::Error| LinkError {
            op: op(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        };
        self.sock.send(&buf, 0).map_err(io)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(io)?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| LinkError::other(op(), format!("bad netlink answer: {e}")))?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => return Err(LinkError::from_errno(op(), -code.get())),
                        None => return Ok(out),
                    },
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn index(&mut self, name: &str) -> Result<u32, LinkError> {
        if let Some(i) = self.index_cache.get(name) {
            return Ok(*i);
        }
        match self.link(name)? {
            Some(l) => Ok(l.index),
            None => Err(LinkError::from_errno(
                format!("find link {name}"),
                libc::ENODEV,
            )),
        }
    }

    fn set_link(&mut self, op: &LinkChange, msg: LinkMessage) -> Result<(), LinkError> {
        let text = op.to_string();
        self.request(
            &|| text.clone(),
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    fn link_msg(&mut self, dev: &str) -> Result<LinkMessage, LinkError> {
        let mut m = LinkMessage::default();
        m.header.index = self.index(dev)?;
        Ok(m)
    }

    fn route_msg(&mut self, r: &Route, delete: bool) -> Result<RouteMessage, LinkError> {
        let oif = self.index(&r.dev)?;
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: family(r.dst),
            destination_prefix_length: r.prefix,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            // As iproute2: a device route is link-scoped for IPv4; deletion matches any scope.
            scope: if delete {
                RouteScope::NoWhere
            } else if r.dst.is_ipv4() {
                RouteScope::Link
            } else {
                RouteScope::Universe
            },
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(r.dst)));
        m.attributes.push(RouteAttribute::Oif(oif));
        if let Some(src) = r.src {
            m.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        m.attributes.push(RouteAttribute::Priority(r.metric));
        Ok(m)
    }

    fn neigh_msg(&mut self, dev: &str, addr: IpAddr) -> Result<NeighbourMessage, LinkError> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(addr);
        m.header.ifindex = self.index(dev)?;
        m.header.flags = NeighbourFlags::Proxy;
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::Destination(match addr {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        Ok(m)
    }

    fn addr_msg(
        &mut self,
        dev: &str,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<AddressMessage, LinkError> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr);
        m.header.prefix_len = prefix;
        m.header.index = self.index(dev)?;
        if addr.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(addr));
        }
        m.attributes.push(AddressAttribute::Address(addr));
        Ok(m)
    }
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn to_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        master: None,
        kind: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(c) if *c != 0 => l.master = Some(*c),
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(b);
                l.mac = Some(mac);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(kind_name(k));
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Tun => "tun".into(),
        InfoKind::Dummy => "dummy".into(),
        InfoKind::Vlan => "vlan".into(),
        InfoKind::Bond => "bond".into(),
        InfoKind::Other(s) => s.clone(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl Links for Netlink {
    fn link(&mut self, name: &str) -> Result<Option<Link>, LinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let op = || format!("get link {name}");
        match self.request(&op, RouteNetlinkMessage::GetLink(m), 0) {
            Ok(msgs) => {
                let link = msgs.iter().find_map(|m| match m {
                    RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
                    _ => None,
                });
                if let Some(l) = &link {
                    self.index_cache.insert(l.name.clone(), l.index);
                }
                Ok(link)
            }
            Err(e) if e.errno == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn links(&mut self) -> Result<Vec<Link>, LinkError> {
        let msgs = self.request(
            &|| "list links".into(),
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
                _ => None,
            })
            .collect())
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<IfAddr>, LinkError> {
        let msgs = self.request(
            &|| "list addresses".into(),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
            // point-to-point links); IPv6 only has IFA_ADDRESS.
            let mut addr = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(addr) = addr {
                out.push(IfAddr {
                    index: a.header.index,
                    addr,
                    prefix: a.header.prefix_len,
                    secondary: a.header.flags.contains(AddressHeaderFlags::Secondary),
                });
            }
        }
        Ok(out)
    }

    fn change(&mut self, change: &LinkChange) -> Result<(), LinkError> {
        let text = change.to_string();
        let op = || text.clone();
        match change {
            LinkChange::Rename { dev, to } => {
                let mut m = self.link_msg(dev)?;
                m.attributes.push(LinkAttribute::IfName(to.clone()));
                self.index_cache.remove(dev);
                self.index_cache.remove(to);
                self.set_link(change, m)
            }
            LinkChange::SetMac { dev, mac } => {
                let mut m = self.link_msg(dev)?;
                m.attributes.push(LinkAttribute::Address(mac.to_vec()));
                self.set_link(change, m)
            }
            LinkChange::SetMtu { dev, mtu } => {
                let mut m = self.link_msg(dev)?;
                m.attributes.push(LinkAttribute::Mtu(*mtu));
                self.set_link(change, m)
            }
            LinkChange::SetUp { dev, up } => {
                let mut m = self.link_msg(dev)?;
                m.header.change_mask = LinkFlags::Up;
                if *up {
                    m.header.flags = LinkFlags::Up;
                }
                self.set_link(change, m)
            }
            LinkChange::SetMaster { dev, master } => {
                let ctl = match master {
                    Some(b) => self.index(b)?,
                    None => 0,
                };
                let mut m = self.link_msg(dev)?;
                m.attributes.push(LinkAttribute::Controller(ctl));
                self.set_link(change, m)
            }
            LinkChange::AddAddr { dev, addr, prefix } => {
                let m = self.addr_msg(dev, *addr, *prefix)?;
                self.request(
                    &op,
                    RouteNetlinkMessage::NewAddress(m),
                    NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                )
                .map(drop)
            }
            LinkChange::DelAddr { dev, addr, prefix } => {
                let m = self.addr_msg(dev, *addr, *prefix)?;
                self.request(&op, RouteNetlinkMessage::DelAddress(m), NLM_F_ACK)
                    .map(drop)
            }
            LinkChange::FlushAddrs { dev } => {
                let index = self.index(dev)?;
                // Delete IPv4 secondaries before primaries would be deleted with them anyway;
                // deleting a primary also drops its secondaries, so tolerate "gone" here.
                for a in self.addresses(Some(index))? {
                    let del = LinkChange::DelAddr {
                        dev: dev.clone(),
                        addr: a.addr,
                        prefix: a.prefix,
                    };
                    match self.change(&del) {
                        Err(e) if !e.is_gone() => return Err(e),
                        _ => {}
                    }
                }
                Ok(())
            }
            LinkChange::AddRoute(r) => {
                let m = self.route_msg(r, false)?;
                self.request(
                    &op,
                    RouteNetlinkMessage::NewRoute(m),
                    NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                )
                .map(drop)
            }
            LinkChange::DelRoute(r) => {
                let m = self.route_msg(r, true)?;
                self.request(&op, RouteNetlinkMessage::DelRoute(m), NLM_F_ACK)
                    .map(drop)
            }
            LinkChange::AddProxyNeigh { dev, addr } => {
                let m = self.neigh_msg(dev, *addr)?;
                self.request(
                    &op,
                    RouteNetlinkMessage::NewNeighbour(m),
                    NLM_F_ACK | NLM_F_CREATE,
                )
                .map(drop)
            }
            LinkChange::DelProxyNeigh { dev, addr } => {
                let m = self.neigh_msg(dev, *addr)?;
                self.request(&op, RouteNetlinkMessage::DelNeighbour(m), NLM_F_ACK)
                    .map(drop)
            }
        }
    }
}
