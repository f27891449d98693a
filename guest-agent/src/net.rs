//! Live network state through synchronous rtnetlink (`netlink-packet-route` + `netlink-sys`).

use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use xenplug_channel::config::MacAddr;

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address, if 6 bytes long.
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
    /// Loopback.
    pub loopback: bool,
    /// Counters: rx bytes, packets, errors, dropped; tx the same.
    pub stats: Option<[u64; 8]>,
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// ifindex.
    pub index: u32,
    /// Address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

/// The network operations the agent needs (the real one is [`Netlink`]).
pub trait NetOps {
    /// All links.
    fn links(&mut self) -> Result<Vec<Link>>;
    /// All addresses.
    fn addresses(&mut self) -> Result<Vec<Addr>>;
    /// Rename a (down) link.
    fn rename(&mut self, index: u32, name: &str) -> Result<()>;
    /// Set up or down.
    fn set_up(&mut self, index: u32, up: bool) -> Result<()>;
    /// Set the MTU.
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()>;
    /// Add an address (an existing one is fine).
    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()>;
    /// Remove an address (one that is already gone is fine).
    fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()>;
    /// Remove a route from the main table (one that is already gone is fine).
    fn del_route(&mut self, index: u32, dst: IpAddr, prefix: u8, via: Option<IpAddr>)
        -> Result<()>;
    /// Add or replace a route in the main table.
    fn replace_route(
        &mut self,
        index: u32,
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
        metric: Option<u32>,
    ) -> Result<()>;
}

/// A connected rtnetlink socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

impl Netlink {
    /// Open the socket.
    pub fn open() -> Result<Self> {
        let mut sock =
            Socket::new(NETLINK_ROUTE).map_err(|e| anyhow!("open rtnetlink socket: {e}"))?;
        sock.bind_auto()
            .map_err(|e| anyhow!("bind rtnetlink socket: {e}"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| anyhow!("connect rtnetlink socket: {e}"))?;
        Ok(Netlink { sock, seq: 0 })
    }

    fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .map_err(|e| anyhow!("{what}: send: {e}"))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .sock
                .recv_from_full()
                .map_err(|e| anyhow!("{what}: receive: {e}"))?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| anyhow!("{what}: bad netlink answer: {e}"))?;
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
                        Some(code) => {
                            let errno = nix::errno::Errno::from_raw(-code.get());
                            return Err(anyhow!(NlError {
                                what: what.to_string(),
                                errno
                            }));
                        }
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

    fn set_link(&mut self, what: &str, m: LinkMessage) -> Result<()> {
        self.request(what, RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
            .map(drop)
    }
}

/// A kernel error for one netlink request.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {errno}")]
pub struct NlError {
    /// What was being done.
    pub what: String,
    /// The kernel's answer.
    pub errno: nix::errno::Errno,
}

/// "Already gone" (ESRCH, EADDRNOTAVAIL, ENODEV, ENOENT) is success for a removal.
fn gone_ok(r: Result<Vec<RouteNetlinkMessage>>) -> Result<()> {
    use nix::errno::Errno;
    match r {
        Ok(_) => Ok(()),
        Err(e) => match e.downcast_ref::<NlError>() {
            Some(n)
                if matches!(
                    n.errno,
                    Errno::ESRCH | Errno::EADDRNOTAVAIL | Errno::ENODEV | Errno::ENOENT
                ) =>
            {
                Ok(())
            }
            _ => Err(e),
        },
    }
}

fn to_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: 0,
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        stats: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(b);
                l.mac = Some(MacAddr(mac));
            }
            LinkAttribute::Stats64(s) => {
                l.stats = Some([
                    s.rx_bytes,
                    s.rx_packets,
                    s.rx_errors,
                    s.rx_dropped,
                    s.tx_bytes,
                    s.tx_packets,
                    s.tx_errors,
                    s.tx_dropped,
                ])
            }
            _ => {}
        }
    }
    l
}

impl NetOps for Netlink {
    fn links(&mut self) -> Result<Vec<Link>> {
        let msgs = self.request(
            "list links",
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

    fn addresses(&mut self) -> Result<Vec<Addr>> {
        let msgs = self.request(
            "list addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let mut addr = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(addr) = addr {
                out.push(Addr {
                    index: a.header.index,
                    addr,
                    prefix: a.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.set_link(&format!("rename link {index} to {name}"), m)
    }

    fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        self.set_link(
            &format!("set link {index} {}", if up { "up" } else { "down" }),
            m,
        )
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(&format!("set link {index} mtu {mtu}"), m)
    }

    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr);
        m.header.prefix_len = prefix;
        m.header.index = index;
        if addr.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(addr));
        }
        m.attributes.push(AddressAttribute::Address(addr));
        // NLM_F_REPLACE: an address that is already there is refreshed, not an error.
        self.request(
            &format!("add address {addr}/{prefix} to link {index}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr);
        m.header.prefix_len = prefix;
        m.header.index = index;
        if addr.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(addr));
        }
        m.attributes.push(AddressAttribute::Address(addr));
        let r = self.request(
            &format!("delete address {addr}/{prefix} from link {index}"),
            RouteNetlinkMessage::DelAddress(m),
            NLM_F_ACK,
        );
        gone_ok(r)
    }

    fn del_route(
        &mut self,
        index: u32,
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
    ) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: family(dst),
            destination_prefix_length: prefix,
            table: RouteHeader::RT_TABLE_MAIN,
            scope: RouteScope::NoWhere,
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        if prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
        if let Some(v) = via {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(v)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        let r = self.request(
            &format!("delete route {dst}/{prefix} dev {index}"),
            RouteNetlinkMessage::DelRoute(m),
            NLM_F_ACK,
        );
        gone_ok(r)
    }

    fn replace_route(
        &mut self,
        index: u32,
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
        metric: Option<u32>,
    ) -> Result<()> {
        if let Some(v) = via {
            if v.is_ipv4() != dst.is_ipv4() {
                bail!("route {dst}/{prefix} via {v}: address families differ");
            }
        }
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: family(dst),
            destination_prefix_length: prefix,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Static,
            scope: if via.is_none() && dst.is_ipv4() {
                RouteScope::Link
            } else {
                RouteScope::Universe
            },
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        if prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
        if let Some(v) = via {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(v)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        if let Some(p) = metric {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        let what = match via {
            Some(v) => format!("route {dst}/{prefix} via {v} dev {index}"),
            None => format!("route {dst}/{prefix} dev {index}"),
        };
        self.request(
            &what,
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }
}
