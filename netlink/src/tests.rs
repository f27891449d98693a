//! Unit tests of the pure parts: encoding, answer collection, message building and parsing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroI32;

use netlink_packet_core::{DoneMessage, ErrorMessage};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One serialized message with sequence number `seq`.
fn wire(seq: u32, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, payload);
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

fn new_link(index: u32, name: &str) -> NetlinkPayload<RouteNetlinkMessage> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::IfName(name.into()));
    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m))
}

fn ack(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
    let mut e = ErrorMessage::default();
    e.code = NonZeroI32::new(code);
    NetlinkPayload::Error(e)
}

fn names(msgs: &[RouteNetlinkMessage]) -> Vec<String> {
    msgs.iter().filter_map(link_of).map(|l| l.name).collect()
}

#[test]
fn encode_sets_request_flags_and_sequence() {
    let buf = encode(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_DUMP,
        7,
    );
    let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).unwrap();
    assert_eq!(m.header.sequence_number, 7);
    assert_eq!(m.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
    assert_eq!(m.header.length as usize, buf.len());
    assert!(matches!(
        m.payload,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(_))
    ));
}

#[test]
fn dump_collects_until_done_across_datagrams_and_skips_other_sequences() {
    let mut a = Answer::<RouteNetlinkMessage>::new(3, NLM_F_DUMP);
    let mut first = wire(3, new_link(1, "lo"));
    first.extend(wire(2, new_link(9, "stale")));
    first.extend(wire(3, new_link(2, "eth0")));
    assert!(a.feed(&first).unwrap().is_none());
    let done = a
        .feed(&wire(3, NetlinkPayload::Done(DoneMessage::default())))
        .unwrap()
        .unwrap();
    assert_eq!(names(&done), ["lo", "eth0"]);
}

#[test]
fn ack_ends_an_acked_request_and_a_nack_is_the_errno() {
    let mut a = Answer::<RouteNetlinkMessage>::new(1, NLM_F_ACK);
    assert_eq!(a.feed(&wire(1, ack(0))).unwrap().unwrap().len(), 0);
    let mut a = Answer::<RouteNetlinkMessage>::new(1, NLM_F_ACK);
    let e = a.feed(&wire(1, ack(-libc::EEXIST))).unwrap_err();
    assert!(matches!(e, Error::Kernel(libc::EEXIST)));
    // A NACK of another request is not ours.
    let mut a = Answer::<RouteNetlinkMessage>::new(2, NLM_F_ACK);
    assert!(a.feed(&wire(1, ack(-libc::EEXIST))).unwrap().is_none());
}

#[test]
fn plain_get_ends_at_the_first_message() {
    let mut a = Answer::<RouteNetlinkMessage>::new(5, 0);
    let mut data = wire(5, new_link(4, "one"));
    data.extend(wire(5, new_link(5, "two")));
    assert_eq!(names(&a.feed(&data).unwrap().unwrap()), ["one"]);
}

#[test]
fn garbage_is_a_decode_error() {
    let mut a = Answer::<RouteNetlinkMessage>::new(1, 0);
    let e = a.feed(&[1, 2, 3]).unwrap_err();
    assert!(matches!(e, Error::Decode(_)));
    assert!(e.to_string().starts_with("bad netlink answer: "), "{e}");
    assert_eq!(e.errno(), None);
}

#[test]
fn errors_carry_errno_and_gone() {
    let k = Error::Kernel(libc::ENODEV);
    assert_eq!(k.errno(), Some(libc::ENODEV));
    assert!(k.is_gone());
    assert_eq!(
        k.to_string(),
        std::io::Error::from_raw_os_error(libc::ENODEV).to_string()
    );
    for e in [libc::ENOENT, libc::ESRCH, libc::EADDRNOTAVAIL] {
        assert!(Error::Kernel(e).is_gone() && is_gone_errno(e));
    }
    assert!(!Error::Kernel(libc::EEXIST).is_gone());
    let io = Error::Io {
        stage: Stage::Send,
        source: std::io::Error::from_raw_os_error(libc::ENOBUFS),
    };
    assert_eq!(io.errno(), Some(libc::ENOBUFS));
    assert!(!io.is_gone(), "only the kernel's answer can say gone");
    assert!(io.to_string().starts_with("send: "), "{io}");
    let open = Error::Io {
        stage: Stage::Connect,
        source: std::io::Error::from_raw_os_error(libc::EPERM),
    };
    assert!(open.to_string().starts_with("connect netlink socket: "));
}

#[test]
fn create_flags() {
    assert_eq!(
        Create::Exclusive.flags(),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    );
    assert_eq!(
        Create::Replace.flags(),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    );
}

#[test]
fn link_fields_from_a_message() {
    let mut m = LinkMessage::default();
    m.header.index = 4;
    m.header.flags = LinkFlags::Up | LinkFlags::Loopback;
    m.attributes.extend([
        LinkAttribute::IfName("br0".into()),
        LinkAttribute::Mtu(9000),
        LinkAttribute::Controller(7),
        LinkAttribute::Address(vec![0, 0x16, 0x3e, 1, 2, 3]),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        LinkAttribute::IfAlias("xenplug vif5.0".into()),
    ]);
    let l = to_link(&m);
    assert_eq!(
        l,
        Link {
            index: 4,
            name: "br0".into(),
            mac: Some([0, 0x16, 0x3e, 1, 2, 3]),
            mtu: 9000,
            up: true,
            loopback: true,
            master: Some(7),
            kind: Some("bridge".into()),
            stats: None,
            alias: Some("xenplug vif5.0".into()),
        }
    );
    // No controller is 0; a non-6-byte address is no MAC.
    let mut m = LinkMessage::default();
    m.attributes.extend([
        LinkAttribute::Controller(0),
        LinkAttribute::Address(vec![1, 2, 3, 4]),
        LinkAttribute::IfAlias(String::new()),
    ]);
    let l = to_link(&m);
    assert_eq!((l.master, l.mac, l.up, l.alias), (None, None, false, None));
}

#[test]
fn kind_names() {
    assert_eq!(kind_name(&InfoKind::Veth), "veth");
    assert_eq!(
        kind_name(&InfoKind::Other("openvswitch".into())),
        "openvswitch"
    );
    assert_eq!(kind_name(&InfoKind::Dummy), "dummy");
}

#[test]
fn address_prefers_local_and_marks_secondary() {
    let mut m = AddressMessage::default();
    m.header.index = 3;
    m.header.prefix_len = 24;
    m.header.flags = AddressHeaderFlags::Secondary;
    m.attributes.extend([
        AddressAttribute::Address(ip("10.0.0.2")),
        AddressAttribute::Local(ip("10.0.0.1")),
    ]);
    let a = address_of(&RouteNetlinkMessage::NewAddress(m)).unwrap();
    assert_eq!(
        a,
        Address {
            index: 3,
            addr: ip("10.0.0.1"),
            prefix: 24,
            secondary: true
        }
    );
    assert_eq!(
        address_of(&RouteNetlinkMessage::NewAddress(AddressMessage::default())),
        None
    );
}

#[test]
fn address_message_v4_has_local_v6_does_not() {
    let m = address_message(2, ip("192.0.2.1"), 24);
    assert_eq!(m.header.family, AddressFamily::Inet);
    assert_eq!((m.header.index, m.header.prefix_len), (2, 24));
    assert_eq!(
        m.attributes,
        [
            AddressAttribute::Local(ip("192.0.2.1")),
            AddressAttribute::Address(ip("192.0.2.1"))
        ]
    );
    let m = address_message(2, ip("2001:db8::1"), 64);
    assert_eq!(m.header.family, AddressFamily::Inet6);
    assert_eq!(m.attributes, [AddressAttribute::Address(ip("2001:db8::1"))]);
}

fn route(dst: &str, prefix: u8) -> Route {
    Route {
        oif: 5,
        dst: ip(dst),
        prefix,
        via: None,
        src: None,
        metric: None,
        protocol: RouteProtocol::Boot,
    }
}

#[test]
fn device_route_is_link_scoped_for_ipv4_only() {
    let r = Route {
        src: Some(ip("10.0.0.1")),
        metric: Some(0),
        ..route("10.0.0.5", 32)
    };
    let m = route_message(&r, false);
    assert_eq!(m.header.scope, RouteScope::Link);
    assert_eq!(m.header.protocol, RouteProtocol::Boot);
    assert_eq!(m.header.table, RouteHeader::RT_TABLE_MAIN);
    assert_eq!(m.header.destination_prefix_length, 32);
    assert_eq!(
        m.attributes,
        [
            RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 5))),
            RouteAttribute::Oif(5),
            RouteAttribute::PrefSource(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 1))),
            RouteAttribute::Priority(0),
        ]
    );
    let m = route_message(&route("2001:db8::5", 128), false);
    assert_eq!(m.header.scope, RouteScope::Universe);
    assert_eq!(m.header.address_family, AddressFamily::Inet6);
    // Deletion matches any scope.
    assert_eq!(
        route_message(&route("10.0.0.5", 32), true).header.scope,
        RouteScope::NoWhere
    );
}

#[test]
fn gateway_route_is_universe_and_default_has_no_destination() {
    let r = Route {
        via: Some(ip("192.0.2.1")),
        metric: Some(100),
        protocol: RouteProtocol::Static,
        ..route("0.0.0.0", 0)
    };
    let m = route_message(&r, false);
    assert_eq!(m.header.scope, RouteScope::Universe);
    assert_eq!(
        m.attributes,
        [
            RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(192, 0, 2, 1))),
            RouteAttribute::Oif(5),
            RouteAttribute::Priority(100),
        ]
    );
}

#[test]
fn proxy_neighbour_message_is_permanent_proxy() {
    let m = proxy_neighbour_message(6, ip("2001:db8::7"));
    assert_eq!(m.header.ifindex, 6);
    assert_eq!(m.header.family, AddressFamily::Inet6);
    assert_eq!(m.header.flags, NeighbourFlags::Proxy);
    assert_eq!(m.header.state, NeighbourState::Permanent);
    assert_eq!(
        m.attributes,
        [NeighbourAttribute::Destination(NeighbourAddress::Inet6(
            "2001:db8::7".parse::<Ipv6Addr>().unwrap()
        ))]
    );
}
