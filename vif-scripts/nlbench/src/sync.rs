//! One link lookup by name plus one MTU change, with netlink-packet-route over a blocking
//! netlink-sys socket.
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

fn request(sock: &Socket, seq: u32, msg: RouteNetlinkMessage) -> Vec<LinkMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    sock.send(&buf, 0).expect("send");
    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full().expect("recv");
        let mut off = 0;
        while off < data.len() {
            let m =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..]).expect("parse");
            off += m.header.length as usize;
            match m.payload {
                NetlinkPayload::Error(e) => {
                    assert!(e.code.is_none(), "error {:?}", e.code);
                    return out;
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => out.push(l),
                NetlinkPayload::Done(_) => return out,
                _ => {}
            }
        }
    }
}

fn main() {
    let name = std::env::args().nth(1).expect("link name");
    let mut sock = Socket::new(NETLINK_ROUTE).expect("socket");
    sock.bind_auto().expect("bind");
    sock.connect(&SocketAddr::new(0, 0)).expect("connect");
    let mut get = LinkMessage::default();
    get.attributes.push(LinkAttribute::IfName(name));
    let links = request(&sock, 1, RouteNetlinkMessage::GetLink(get));
    let index = links.first().expect("link").header.index;
    let mut set = LinkMessage::default();
    set.header.index = index;
    set.attributes.push(LinkAttribute::Mtu(1400));
    request(&sock, 2, RouteNetlinkMessage::SetLink(set));
}
