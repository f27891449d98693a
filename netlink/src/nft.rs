//! nftables over `NETLINK_NETFILTER`, for what is cheaper asked of the kernel than of a fresh
//! `nft` process: the elements of a set, the removal of a vif's chain, sets and claims, and a
//! transaction of messages built by the caller ([`Nft::apply`]: the vif scripts' antispoofing
//! chains, compiled by `xenplug_vif::nft_netlink`).
//!
//! `vif-route`, `vif-bridge` and `vif-nat` take their antispoofing chain away when a vif goes,
//! and release the link-local addresses it claimed. The datapath adds those claims to the vif's
//! set, so they cannot be computed: they are read ([`Nft::set_elements`]: one
//! `NFT_MSG_GETSETELEM` dump). The removal itself needs no grammar: deleting a chain, a set and
//! some elements is one transaction of plain messages ([`Nft::remove`]). An `nft` process costs
//! a process start, a netlink cache of the ruleset and a parse: in a TCG dom0 about 400 ms per
//! run, which was most of a teardown (issue 21).
//!
//! Messages are built and parsed with `netlink-packet-netfilter`, sent over a blocking
//! `netlink-sys` socket as the route requests are.

use netlink_packet_core::{NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, DataAttribute, ListAttribute, NfTablesMessage, SetAttribute,
    SetElementAttribute, SetElementList, SetElementMessage, SetMessage, TableAttribute,
    TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::{datagram_messages, encode, exchange, Error, Stage};

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

/// `NFNL_SUBSYS_NFTABLES`: the subsystem a batch is for (in its header's `res_id`).
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// An nftables message of `family`.
pub fn nft(family: NetfilterProtoFamily, m: NfTablesMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), m)
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

fn elements_message(table: &str, set: &str, keys: &[Vec<u8>]) -> SetElementMessage {
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_string()),
            SetElementList::Set(set.to_string()),
            SetElementList::Elements(
                keys.iter()
                    .map(|k| {
                        ListAttribute::Element(vec![SetElementAttribute::Key(
                            DataAttribute::Value(k.clone()),
                        )])
                    })
                    .collect(),
            ),
        ],
    }
}

/// Set `set` of table `table`, by name.
fn set_message(table: &str, set: &str) -> SetMessage {
    SetMessage {
        attributes: vec![
            SetAttribute::Table(table.to_string()),
            SetAttribute::Name(set.to_string()),
        ],
    }
}

/// What [`Nft::remove`] takes away, if it exists (nft's family names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Chain `chain` of table `family table`, with its rules.
    Chain {
        family: String,
        table: String,
        chain: String,
    },
    /// Elements (keys, in the kernel's byte order) of set `set`: none of them is left, whether
    /// or not it was there (each is added, then deleted, in the same transaction).
    Elements {
        family: String,
        table: String,
        set: String,
        keys: Vec<Vec<u8>>,
    },
    /// Set `set` (after the rules using it).
    Set {
        family: String,
        table: String,
        set: String,
    },
}

impl Removal {
    fn place(&self) -> (&str, &str) {
        match self {
            Removal::Chain { family, table, .. }
            | Removal::Elements { family, table, .. }
            | Removal::Set { family, table, .. } => (family, table),
        }
    }
}

/// A connected `NETLINK_NETFILTER` socket in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Nft {
    sock: Socket,
    seq: u32,
}

fn family_of(name: &str) -> Result<NetfilterProtoFamily, Error> {
    family(name).ok_or_else(|| Error::Decode(format!("no nftables family {name:?}")))
}

impl Nft {
    /// Open, bind and connect the socket.
    pub fn open() -> Result<Self, Error> {
        let io = |stage| move |source| Error::Io { stage, source };
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io(Stage::Open))?;
        sock.bind_auto().map_err(io(Stage::Bind))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(io(Stage::Connect))?;
        // The kernel answers at once; a bound keeps a surprise from hanging a script.
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO reads one `struct timeval` from a live local; the fd is open.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io(Stage::Open)(std::io::Error::last_os_error()));
        }
        Ok(Nft { sock, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send one request and collect its answer.
    fn request(
        &mut self,
        msg: NetfilterMessage,
        flags: u16,
    ) -> Result<Vec<NetfilterMessage>, Error> {
        let seq = self.next_seq();
        exchange(&mut self.sock, msg, flags, seq)
    }

    /// True when the object `msg` asks for exists (the kernel answers it), false on `ENOENT`.
    fn exists(&mut self, msg: NetfilterMessage) -> Result<bool, Error> {
        match self.request(msg, 0) {
            Ok(_) => Ok(true),
            Err(Error::Kernel(libc::ENOENT)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The keys of the elements of set `set` in table `family table`, as the kernel stores
    /// them (the key's bytes in network order for the payload keys nft writes). No such table
    /// or set: [`Error::Kernel`] with `ENOENT` ([`Error::is_gone`]). A dump of a set large
    /// enough to take several messages is not one snapshot (`NLM_F_DUMP_INTR` is not looked
    /// at): a change committed meanwhile may be missed; a vif's set holds at most 8 elements.
    pub fn set_elements(
        &mut self,
        family_name: &str,
        table: &str,
        set: &str,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let family = family_of(family_name)?;
        let msg = nft(
            family,
            NfTablesMessage::GetSetElement(SetElementMessage {
                attributes: vec![
                    SetElementList::Table(table.to_string()),
                    SetElementList::Set(set.to_string()),
                ],
            }),
        );
        keys(self.request(msg, NLM_F_DUMP)?)
    }

    /// Take away what exists of `items`, in their order, in one transaction (all or nothing);
    /// what is gone already (its table, chain or set) is left out. How many messages the
    /// transaction had (elements count twice: added, then deleted; 0: nothing was there). An object that vanishes between the look and the transaction fails
    /// it with `ENOENT`: the caller may try again.
    pub fn remove(&mut self, items: &[Removal]) -> Result<usize, Error> {
        let mut tables: Vec<((String, String), bool)> = Vec::new();
        let mut batch: Vec<NetfilterMessage> = Vec::new();
        for item in items {
            let (family_name, table) = item.place();
            let family = family_of(family_name)?;
            let key = (family_name.to_string(), table.to_string());
            let table_exists = match tables.iter().find(|(k, _)| *k == key) {
                Some((_, e)) => *e,
                None => {
                    let e = self.exists(nft(
                        family,
                        NfTablesMessage::GetTable(TableMessage {
                            attributes: vec![TableAttribute::Name(table.to_string())],
                        }),
                    ))?;
                    tables.push((key, e));
                    e
                }
            };
            if !table_exists {
                continue;
            }
            match item {
                Removal::Chain { chain, .. } => {
                    let attributes = vec![
                        ChainAttribute::Table(table.to_string()),
                        ChainAttribute::Name(chain.clone()),
                    ];
                    if self.exists(nft(
                        family,
                        NfTablesMessage::GetChain(ChainMessage {
                            attributes: attributes.clone(),
                        }),
                    ))? {
                        batch.push(nft(
                            family,
                            NfTablesMessage::DeleteChain(ChainMessage { attributes }),
                        ));
                    }
                }
                Removal::Elements { set, keys, .. } => {
                    if keys.is_empty() || !self.set_exists(family, table, set)? {
                        continue;
                    }
                    batch.push(nft(
                        family,
                        NfTablesMessage::NewSetElement(elements_message(table, set, keys)),
                    ));
                    batch.push(nft(
                        family,
                        NfTablesMessage::DeleteSetElement(elements_message(table, set, keys)),
                    ));
                }
                Removal::Set { set, .. } => {
                    if self.set_exists(family, table, set)? {
                        batch.push(nft(
                            family,
                            NfTablesMessage::DeleteSet(set_message(table, set)),
                        ));
                    }
                }
            }
        }
        let n = batch.len();
        if n > 0 {
            self.transaction(batch)?;
        }
        Ok(n)
    }

    /// Apply `msgs` (nftables messages built by the caller, e.g. a vif's chain, its sets and
    /// its rules) in one transaction, all or nothing: additions as `nft`'s `add` (what exists
    /// is left as it is; rules are appended), deletions of what must exist. The first error is
    /// the transaction's.
    pub fn apply(&mut self, msgs: Vec<NetfilterMessage>) -> Result<(), Error> {
        if msgs.is_empty() {
            return Ok(());
        }
        self.transaction(msgs)
    }

    fn set_exists(
        &mut self,
        family: NetfilterProtoFamily,
        table: &str,
        set: &str,
    ) -> Result<bool, Error> {
        self.exists(nft(
            family,
            NfTablesMessage::GetSet(set_message(table, set)),
        ))
    }

    /// Send `msgs` between a batch's begin and end (one transaction), each asking for its
    /// acknowledgement, and wait for every one: the first error is the transaction's.
    fn transaction(&mut self, msgs: Vec<NetfilterMessage>) -> Result<(), Error> {
        let control = |m| {
            NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
                NetfilterMessageInner::None(m),
            )
        };
        let begin = self.next_seq();
        let mut buf = encode(control(ControlMessage::BatchBegin), 0, begin);
        let mut pending: Vec<u32> = Vec::new();
        for m in msgs {
            let seq = self.next_seq();
            // nft's `add`: create what is missing, leave what exists (no `NLM_F_EXCL`); rules
            // go at the end of their chain.
            let create = match &m.inner {
                NetfilterMessageInner::NfTables(
                    NfTablesMessage::NewTable(_)
                    | NfTablesMessage::NewChain(_)
                    | NfTablesMessage::NewSet(_)
                    | NfTablesMessage::NewSetElement(_),
                ) => NLM_F_CREATE,
                NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(_)) => {
                    NLM_F_CREATE | NLM_F_APPEND
                }
                _ => 0,
            };
            buf.extend(encode(m, NLM_F_ACK | create, seq));
            pending.push(seq);
        }
        let end = self.next_seq();
        buf.extend(encode(control(ControlMessage::BatchEnd), 0, end));
        self.sock.send(&buf, 0).map_err(|source| Error::Io {
            stage: Stage::Send,
            source,
        })?;
        // Every message asked for its acknowledgement: the kernel answers each, with 0 or its
        // error, also when the transaction fails (it is then aborted whole). A batch the kernel
        // refuses as such (no nf_tables, say) is answered once, for its begin or end.
        let mut failed: Option<Error> = None;
        while !pending.is_empty() {
            let (data, _) = self.sock.recv_from_full().map_err(|source| Error::Io {
                stage: Stage::Receive,
                source,
            })?;
            for m in datagram_messages::<NetfilterMessage>(&data)? {
                let seq = m.header.sequence_number;
                let NetlinkPayload::Error(e) = m.payload else {
                    continue;
                };
                let error = e.code.map(|c| Error::Kernel(-c.get()));
                if seq == begin || seq == end {
                    if let Some(e) = error {
                        return Err(e);
                    }
                } else if pending.contains(&seq) {
                    pending.retain(|p| *p != seq);
                    if failed.is_none() {
                        failed = error;
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The keys of the elements of set `set` in table `family table` (nft's family names): see
/// [`Nft::set_elements`]; a socket of its own, in the calling thread's network namespace.
pub fn set_elements(family_name: &str, table: &str, set: &str) -> Result<Vec<Vec<u8>>, Error> {
    Nft::open()?.set_elements(family_name, table, set)
}

/// The key nft wrote as `text` (`0x` and hex digits, or a decimal number), as `len` bytes in
/// network order: how the vif scripts hand [`Nft::remove`] the claims they listed. `None` when
/// it is neither or does not fit.
pub fn key_bytes(text: &str, len: usize) -> Option<Vec<u8>> {
    let v = match text.strip_prefix("0x") {
        Some(hex) if !hex.is_empty() && hex.len() <= 2 * len => {
            u128::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None => text.parse::<u128>().ok()?,
    };
    if len > 16 || (len < 16 && v >> (8 * len) != 0) {
        return None;
    }
    Some(v.to_be_bytes()[16 - len..].to_vec())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_nft_wrote_them() {
        let mut one = vec![0u8; 16];
        one[15] = 1;
        assert_eq!(key_bytes("1", 16), Some(one.clone()));
        assert_eq!(key_bytes("0x1", 16), Some(one.clone()));
        assert_eq!(key_bytes(&key_hex(&one), 16), Some(one));
        let ll = 0xfe80_0000_0000_0000_0216_3eff_fe12_3456u128.to_be_bytes();
        assert_eq!(key_bytes(&key_hex(&ll), 16).unwrap(), ll);
        assert_eq!(key_bytes("0x0102", 2), Some(vec![1, 2]));
        for bad in ["", "0x", "fe80::1", "0xg", "-1", "0x10000"] {
            assert_eq!(key_bytes(bad, 2), None, "{bad}");
        }
        assert_eq!(key_bytes(&format!("0x{}", "f".repeat(33)), 16), None);
    }
}
