//! nftables over `NETLINK_NETFILTER`, for what is cheaper asked of the kernel than of a fresh
//! `nft` process: the elements of a set.
//!
//! `vif-route`, `vif-bridge` and `vif-nat` release the link-local addresses a vif claimed when it
//! goes away. The datapath adds those claims to the vif's set, so they cannot be computed: they
//! have to be read. `nft -j list set` costs a process start and nft's parsing of the whole
//! ruleset cache; one `NFT_MSG_GETSETELEM` dump costs one socket. The batches that change the
//! ruleset are still `nft -f -`'s (the grammar of the rules is nft's).
//!
//! Messages are built and parsed with `netlink-packet-netfilter`, sent over a blocking
//! `netlink-sys` socket as the route requests are.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
    SetElementMessage,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::{Answer, Error, Stage};

/// The nftables family called `name` in nft's syntax (`ip`, `ip6`, `inet`, `arp`, `bridge`,
/// `netdev`).
pub fn family(name: &str) -> Option<NetfilterProtoFamily> {
    Some(match name {
        "ip" => NetfilterProtoFamily::IPv4,
        "ip6" => NetfilterProtoFamily::IPv6,
        "inet" => NetfilterProtoFamily::Inet,
        "arp" => NetfilterProtoFamily::ARP,
        "bridge" => NetfilterProtoFamily::Bridge,
        "netdev" => NetfilterProtoFamily::NetDev,
        _ => return None,
    })
}

/// The dump request for the elements of set `set` of table `family table`.
fn request(family: NetfilterProtoFamily, table: &str, set: &str, seq: u32) -> Vec<u8> {
    let msg = NetfilterMessage::new(
        NetfilterHeader::new(family, 0, 0),
        NfTablesMessage::GetSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(table.to_string()),
                SetElementList::Set(set.to_string()),
            ],
        }),
    );
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// The keys of the elements in the messages of a dump, in the kernel's order.
fn keys(messages: Vec<NetfilterMessage>) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    for m in messages {
        let NetfilterMessageInner::NfTables(NfTablesMessage::NewSetElement(m)) = m.inner else {
            return Err(Error::Decode(format!(
                "expected set elements, got {:?}",
                m.inner
            )));
        };
        for list in m.attributes {
            let SetElementList::Elements(elements) = list else {
                continue;
            };
            for e in elements {
                let ListAttribute::Element(attrs) = e else {
                    continue;
                };
                match attrs.into_iter().find_map(|a| match a {
                    SetElementAttribute::Key(DataAttribute::Value(v)) => Some(v),
                    _ => None,
                }) {
                    Some(key) => out.push(key),
                    None => return Err(Error::Decode("a set element without a key".into())),
                }
            }
        }
    }
    Ok(out)
}

/// The keys of the elements of set `set` in table `family table` (nft's family names), as the
/// kernel stores them (the key's bytes in network order for the payload keys nft writes), in
/// the network namespace of the calling thread. No such table or set: [`Error::Kernel`] with
/// `ENOENT` ([`Error::is_gone`]).
pub fn set_elements(family_name: &str, table: &str, set: &str) -> Result<Vec<Vec<u8>>, Error> {
    let family = family(family_name)
        .ok_or_else(|| Error::Decode(format!("no nftables family {family_name:?}")))?;
    let io = |stage| move |source| Error::Io { stage, source };
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io(Stage::Open))?;
    sock.bind_auto().map_err(io(Stage::Bind))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(io(Stage::Connect))?;
    let seq = 1;
    sock.send(&request(family, table, set, seq), 0)
        .map_err(io(Stage::Send))?;
    let mut answer = Answer::<NetfilterMessage>::new(seq, NLM_F_DUMP);
    loop {
        let (data, _) = sock.recv_from_full().map_err(io(Stage::Receive))?;
        if let Some(done) = answer.feed(&data)? {
            return keys(done);
        }
    }
}

/// `key` as nft reads an integer key back: `0x` and two hex digits a byte, most significant
/// first (how the vif scripts write the link-local claims of `@nh,64,128` sets).
pub fn key_hex(key: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * key.len());
    s.push_str("0x");
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
