//! Time each kernel operation of a vif-bridge online/offline (diagnostics).
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::time::Instant;

fn req(sock: &Socket, seq: u32, msg: RouteNetlinkMessage) {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    sock.send(&buf, 0).unwrap();
    loop {
        let (data, _) = sock.recv_from_full().unwrap();
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data).unwrap();
        if let NetlinkPayload::Error(e) = m.payload {
            assert!(e.code.is_none(), "{e:?}");
            return;
        }
    }
}

fn main() {
    let a: Vec<u32> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (vif, br) = (a[0], a[1]);
    let mut sock = Socket::new(NETLINK_ROUTE).unwrap();
    sock.bind_auto().unwrap();
    sock.connect(&SocketAddr::new(0, 0)).unwrap();
    let mk = |attrs: Vec<LinkAttribute>, flags: Option<bool>| {
        let mut m = LinkMessage::default();
        m.header.index = vif;
        if let Some(up) = flags {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        }
        m.attributes = attrs;
        RouteNetlinkMessage::SetLink(m)
    };
    let ops: Vec<(&str, RouteNetlinkMessage)> = vec![
        ("down", mk(vec![], Some(false))),
        (
            "mac",
            mk(
                vec![LinkAttribute::Address(vec![
                    0xfe, 0xff, 0xff, 0xff, 0xff, 0xff,
                ])],
                None,
            ),
        ),
        ("mtu", mk(vec![LinkAttribute::Mtu(1400)], None)),
        ("master", mk(vec![LinkAttribute::Controller(br)], None)),
        ("up", mk(vec![], Some(true))),
        ("down", mk(vec![], Some(false))),
        ("nomaster", mk(vec![LinkAttribute::Controller(0)], None)),
    ];
    for (i, (name, msg)) in ops.into_iter().enumerate() {
        let t = Instant::now();
        req(&sock, i as u32 + 1, msg);
        println!("{name:9} {:>8.3} ms", t.elapsed().as_secs_f64() * 1e3);
    }
}
