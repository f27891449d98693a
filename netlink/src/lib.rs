//! One synchronous rtnetlink client and one set of link/address types, shared by the vif scripts
//! and the guest agent.
//!
//! * [`Client`]: requests by interface index, answers as [`Link`], [`Address`]; the guest agent's
//!   `NetOps` is implemented directly on it.
//! * [`links`]: the name-based [`links::Links`] trait with its [`links::LinkChange`] vocabulary,
//!   implemented by [`links::KernelLinks`] (names resolved to indexes, links remembered) and, with
//!   the `fake` feature, by [`fake::RecordingLinks`], an in-memory model for tests. The vif
//!   scripts plan and apply against it.
//!
//! Messages are built and parsed with `netlink-packet-route` and sent over a blocking
//! `netlink-sys` socket. The async `rtnetlink` crate is built on the same two crates; for a
//! program that lives a few milliseconds its tokio runtime is pure start-up cost (figures in
//! vif-scripts/README.md), so this crate talks netlink directly.
//!
//! Besides links, addresses, routes and proxy neighbours it installs one tc object: ingress
//! policing (see [`tc`]); over `NETLINK_NETFILTER` it reads a set's elements and removes a
//! vif's chain, set and claims (see [`nft`]).
//!
//! The client works on interface indexes and reports errors without naming the operation:
//! each caller attaches its own wording (see [`Error`]).

use std::fmt;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The attribute type [`netlink_packet_netfilter`] takes for what it does not model, and the
/// trait and flag that encode its attributes.
pub use netlink_packet_core::{DefaultNla, Emitable, NLA_F_NESTED};
/// The nftables message types [`nft::Nft::apply`] takes.
pub use netlink_packet_netfilter;
pub use netlink_packet_route::route::RouteProtocol;
pub use tc::IngressPolice;

#[cfg(feature = "fake")]
pub mod fake;
pub mod links;
pub mod nft;
pub mod tc;

/// Link notifications: a `NETLINK_ROUTE` socket in the calling thread's network namespace,
/// subscribed to `RTNLGRP_LINK`. [`LinkEvents::wait`] returns once a notification arrived (any
/// link created, renamed, changed or deleted: they are not decoded, the caller looks its link up
/// again) or at the deadline. Subscribe before looking the link up, so that one created in
/// between is not missed.
#[derive(Debug)]
pub struct LinkEvents {
    sock: Socket,
}

impl LinkEvents {
    /// Open, bind and subscribe the socket.
    pub fn open() -> Result<Self, Error> {
        let io = |stage| move |source| Error::Io { stage, source };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io(Stage::Open))?;
        sock.bind_auto().map_err(io(Stage::Bind))?;
        sock.add_membership(libc::RTNLGRP_LINK)
            .map_err(io(Stage::Bind))?;
        sock.set_non_blocking(true).map_err(io(Stage::Bind))?;
        Ok(LinkEvents { sock })
    }

    /// Wait for link notifications until `deadline`: `true` when some arrived (all queued ones
    /// are consumed), `false` at the deadline.
    pub fn wait(&mut self, deadline: std::time::Instant) -> Result<bool, Error> {
        use std::os::fd::AsRawFd;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // Round up so that a sub-millisecond remainder still waits.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let mut fds = [libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Io {
                    stage: Stage::Receive,
                    source: e,
                });
            }
            if n == 0 {
                return Ok(false);
            }
            loop {
                match self.sock.recv_from_full() {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // ENOBUFS: notifications were dropped; something happened anyway.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(true),
                    Err(source) => {
                        return Err(Error::Io {
                            stage: Stage::Receive,
                            source,
                        })
                    }
                }
            }
        }
    }
}

/// Where a socket-level failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Creating the socket.
    Open,
    /// Binding it.
    Bind,
    /// Connecting it to the kernel.
    Connect,
    /// Sending a request.
    Send,
    /// Receiving the answer.
    Receive,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Open => "open netlink socket",
            Stage::Bind => "bind netlink socket",
            Stage::Connect => "connect netlink socket",
            Stage::Send => "send",
            Stage::Receive => "receive",
        })
    }
}

/// Why a request failed. It does not say which operation: callers add that.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("{stage}: {source}")]
    Io {
        /// Where.
        stage: Stage,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel's answer could not be parsed.
    #[error("bad netlink answer: {0}")]
    Decode(String),
    /// The kernel refused the request with this (positive) errno.
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
}

impl Error {
    /// The errno: the kernel's answer, or the OS error of the socket.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Decode(_) => None,
            Error::Kernel(e) => Some(*e),
        }
    }

    /// True when the kernel answered "already gone" (no such device, no such route or
    /// neighbour, address not present): a removal counts that as done.
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::Kernel(e) if is_gone_errno(*e))
    }
}

/// True for the errnos that mean "already gone": `ENODEV`, `ENOENT`, `ESRCH`, `EADDRNOTAVAIL`.
pub fn is_gone_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL
    )
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Loopback (IFF_LOOPBACK).
    pub loopback: bool,
    /// Index of the controller (bridge) the link is enslaved to.
    pub master: Option<u32>,
    /// The link kind (`bridge`, `veth`, `tun`, `openvswitch`, …) when the kernel reports one.
    pub kind: Option<String>,
    /// Counters: rx bytes, packets, errors, dropped; tx the same.
    pub stats: Option<[u64; 8]>,
    /// The interface alias (`IFLA_IFALIAS`, `ip link set … alias …`), when set.
    pub alias: Option<String>,
}

impl Link {
    /// True for a Linux bridge.
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

/// An address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// The address (IFA_LOCAL when there is one, else IFA_ADDRESS).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// True when the kernel marks it secondary (IPv4 only).
    pub secondary: bool,
}

/// A route in the main table through one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Output interface index.
    pub oif: u32,
    /// Destination network address.
    pub dst: IpAddr,
    /// Destination prefix length; 0 sends no destination attribute (a default route).
    pub prefix: u8,
    /// Gateway.
    pub via: Option<IpAddr>,
    /// Preferred source address.
    pub src: Option<IpAddr>,
    /// Metric (priority); `None` sends none.
    pub metric: Option<u32>,
    /// Protocol (`Unspec` on deletion matches any).
    pub protocol: RouteProtocol,
}

/// What a create request does when the object already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Fail with `EEXIST` (`NLM_F_CREATE | NLM_F_EXCL`).
    Exclusive,
    /// Replace or refresh it (`NLM_F_CREATE | NLM_F_REPLACE`).
    Replace,
}

impl Create {
    fn flags(self) -> u16 {
        NLM_F_ACK
            | NLM_F_CREATE
            | match self {
                Create::Exclusive => NLM_F_EXCL,
                Create::Replace => NLM_F_REPLACE,
            }
    }
}

/// A connected `NETLINK_ROUTE` socket in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Client {
    sock: Socket,
    seq: u32,
}

impl Client {
    /// Open, bind and connect the socket.
    pub fn open() -> Result<Self, Error> {
        let io = |stage| move |source| Error::Io { stage, source };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io(Stage::Open))?;
        sock.bind_auto().map_err(io(Stage::Bind))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(io(Stage::Connect))?;
        Ok(Client { sock, seq: 0 })
    }

    /// Send one request and collect the messages of the answer: every message up to DONE for a
    /// dump, up to the ACK when `flags` asks for one, else the first.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.seq = self.seq.wrapping_add(1);
        exchange(&mut self.sock, msg, flags, self.seq)
    }

    /// Send a request that only wants the ACK.
    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), Error> {
        self.request(msg, NLM_F_ACK | flags).map(drop)
    }

    /// The link called `name`, or `None` when there is none (`ENODEV`).
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, Error> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(msgs) => Ok(msgs.iter().find_map(link_of)),
            Err(Error::Kernel(libc::ENODEV)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>, Error> {
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs.iter().filter_map(link_of).collect())
    }

    /// Every address of every link.
    pub fn addresses(&mut self) -> Result<Vec<Address>, Error> {
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs.iter().filter_map(address_of).collect())
    }

    /// The addresses of one link. The kernel filters the dump (strict checking, on only for
    /// this request), so the cost does not grow with the addresses of every other link on the
    /// host (each vif has its IPv6 link-local one). Kernels without strict checking for
    /// address dumps (before 5.0) answer with everything, which is filtered here.
    pub fn addresses_of(&mut self, index: u32) -> Result<Vec<Address>, Error> {
        let strict = self.sock.set_netlink_get_strict_chk(true).is_ok();
        let mut m = AddressMessage::default();
        m.header.index = index;
        let result = self.request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP);
        if strict {
            let _ = self.sock.set_netlink_get_strict_chk(false);
        }
        Ok(result?
            .iter()
            .filter_map(address_of)
            .filter(|a| a.index == index)
            .collect())
    }

    fn set_link(&mut self, index: u32, f: impl FnOnce(&mut LinkMessage)) -> Result<(), Error> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        f(&mut m);
        self.ack(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Rename a (down) link.
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<(), Error> {
        self.set_link(index, |m| {
            m.attributes.push(LinkAttribute::IfName(name.to_string()))
        })
    }

    /// Set the interface alias (`""` removes it).
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), Error> {
        self.set_link(index, |m| {
            m.attributes.push(LinkAttribute::IfAlias(alias.to_string()))
        })
    }

    /// Set the hardware address.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), Error> {
        self.set_link(index, |m| {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()))
        })
    }

    /// Set the MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        self.set_link(index, |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
    }

    /// Bring the link up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<(), Error> {
        self.set_link(index, |m| {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        })
    }

    /// Enslave to the controller `Some(index)`, or release (`None`).
    pub fn set_master(&mut self, index: u32, master: Option<u32>) -> Result<(), Error> {
        self.set_link(index, |m| {
            m.attributes
                .push(LinkAttribute::Controller(master.unwrap_or(0)))
        })
    }

    /// Add an address.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
        create: Create,
    ) -> Result<(), Error> {
        let m = address_message(index, addr, prefix);
        self.ack(RouteNetlinkMessage::NewAddress(m), create.flags())
    }

    /// Delete an address.
    pub fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), Error> {
        let m = address_message(index, addr, prefix);
        self.ack(RouteNetlinkMessage::DelAddress(m), 0)
    }

    /// Add a route (or replace one, with [`Create::Replace`]).
    pub fn add_route(&mut self, r: &Route, create: Create) -> Result<(), Error> {
        let m = route_message(r, false);
        self.ack(RouteNetlinkMessage::NewRoute(m), create.flags())
    }

    /// Delete a route (any scope).
    pub fn del_route(&mut self, r: &Route) -> Result<(), Error> {
        let m = route_message(r, true);
        self.ack(RouteNetlinkMessage::DelRoute(m), 0)
    }

    /// Add a permanent proxy neighbour entry (`ip neigh add proxy ADDR dev DEV`).
    pub fn add_proxy_neighbour(&mut self, index: u32, addr: IpAddr) -> Result<(), Error> {
        let m = proxy_neighbour_message(index, addr);
        self.ack(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE)
    }

    /// Delete a proxy neighbour entry.
    pub fn del_proxy_neighbour(&mut self, index: u32, addr: IpAddr) -> Result<(), Error> {
        let m = proxy_neighbour_message(index, addr);
        self.ack(RouteNetlinkMessage::DelNeighbour(m), 0)
    }
}

/// One request, serialized with its header.
fn encode<M: NetlinkSerializable + fmt::Debug>(msg: M, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// Send request `msg` (sequence number `seq`) on `sock` and collect the messages of its answer
/// ([`Answer`]): route messages, or another family's.
fn exchange<M: NetlinkSerializable + NetlinkDeserializable + fmt::Debug>(
    sock: &mut Socket,
    msg: M,
    flags: u16,
    seq: u32,
) -> Result<Vec<M>, Error> {
    sock.send(&encode(msg, flags, seq), 0)
        .map_err(|source| Error::Io {
            stage: Stage::Send,
            source,
        })?;
    let mut answer = Answer::<M>::new(seq, flags);
    loop {
        let (data, _) = sock.recv_from_full().map_err(|source| Error::Io {
            stage: Stage::Receive,
            source,
        })?;
        if let Some(done) = answer.feed(&data)? {
            return Ok(done);
        }
    }
}

/// The answer to one request, fed datagram by datagram: route messages, or another family's
/// (nftables: [`nft`]).
struct Answer<M = RouteNetlinkMessage> {
    seq: u32,
    dump: bool,
    ack: bool,
    out: Vec<M>,
}

impl<M: NetlinkDeserializable> Answer<M> {
    fn new(seq: u32, flags: u16) -> Self {
        Answer {
            seq,
            dump: flags & NLM_F_DUMP == NLM_F_DUMP,
            ack: flags & NLM_F_ACK != 0,
            out: Vec::new(),
        }
    }

    /// Take one datagram; `Some` with every message once the answer is complete. Messages of
    /// other sequence numbers are skipped.
    fn feed(&mut self, data: &[u8]) -> Result<Option<Vec<M>>, Error> {
        for m in datagram_messages::<M>(data)? {
            if m.header.sequence_number != self.seq {
                continue;
            }
            match m.payload {
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) => return Err(Error::Kernel(-code.get())),
                    None => return Ok(Some(std::mem::take(&mut self.out))),
                },
                NetlinkPayload::Done(_) => return Ok(Some(std::mem::take(&mut self.out))),
                NetlinkPayload::InnerMessage(inner) => {
                    self.out.push(inner);
                    if !self.dump && !self.ack {
                        return Ok(Some(std::mem::take(&mut self.out)));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// The messages of one datagram, in order (a zero length ends it).
fn datagram_messages<M: NetlinkDeserializable>(
    data: &[u8],
) -> Result<Vec<NetlinkMessage<M>>, Error> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < data.len() {
        let m = NetlinkMessage::<M>::deserialize(&data[off..])
            .map_err(|e| Error::Decode(e.to_string()))?;
        let len = m.header.length as usize;
        if len == 0 {
            break;
        }
        off += (len + 3) & !3;
        out.push(m);
    }
    Ok(out)
}

/// The address family of `a`.
pub fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn link_of(m: &RouteNetlinkMessage) -> Option<Link> {
    match m {
        RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
        _ => None,
    }
}

/// The [`Link`] a `RTM_NEWLINK` message describes.
pub fn to_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        master: None,
        kind: None,
        stats: None,
        alias: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::IfAlias(a) if !a.is_empty() => l.alias = Some(a.clone()),
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

/// The name `ip -d link` prints for a link kind.
pub fn kind_name(k: &InfoKind) -> String {
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

/// The [`Address`] a `RTM_NEWADDR` message describes, if it carries one.
fn address_of(m: &RouteNetlinkMessage) -> Option<Address> {
    let RouteNetlinkMessage::NewAddress(a) = m else {
        return None;
    };
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on point-to-point
    // links); IPv6 only has IFA_ADDRESS.
    let mut addr = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    Some(Address {
        index: a.header.index,
        addr: addr?,
        prefix: a.header.prefix_len,
        secondary: a.header.flags.contains(AddressHeaderFlags::Secondary),
    })
}

/// An address message for `addr/prefix` on link `index` (IPv4 also gets IFA_LOCAL).
pub fn address_message(index: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(addr);
    m.header.prefix_len = prefix;
    m.header.index = index;
    if addr.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(addr));
    }
    m.attributes.push(AddressAttribute::Address(addr));
    m
}

/// A route message in the main table. As iproute2: a device route (no gateway) is link-scoped
/// for IPv4; a deletion matches any scope.
pub fn route_message(r: &Route, delete: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header = RouteHeader {
        address_family: family(r.dst),
        destination_prefix_length: r.prefix,
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: r.protocol,
        scope: if delete {
            RouteScope::NoWhere
        } else if r.via.is_none() && r.dst.is_ipv4() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        },
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    if r.prefix > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(r.dst)));
    }
    if let Some(v) = r.via {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(v)));
    }
    m.attributes.push(RouteAttribute::Oif(r.oif));
    if let Some(src) = r.src {
        m.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    if let Some(p) = r.metric {
        m.attributes.push(RouteAttribute::Priority(p));
    }
    m
}

/// A permanent proxy neighbour message for `addr` on link `index`.
pub fn proxy_neighbour_message(index: u32, addr: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(addr);
    m.header.ifindex = index;
    m.header.flags = NeighbourFlags::Proxy;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    m
}

#[cfg(test)]
mod tests;
