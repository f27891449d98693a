//! The antispoofing batches as nftables netlink messages: the vif's chain, its sets and its
//! rules go to the kernel in one transaction without an `nft` process (issue 21: in a TCG dom0
//! one `nft -f -` cost 400–900 ms of `vif-route online`, mostly its start, its cache of the
//! whole ruleset and its parse).
//!
//! [`compile`] reads the [`NftCmd`]s [`crate::firewall`] writes, rule texts included, and
//! produces what `nft` 1.0.6 (Debian 12) sends for them: the same expressions in the same
//! order, the same anonymous sets with the same elements, the same user data (comments, and
//! the set descriptions `nft list` prints them with). It knows only the grammar the
//! antispoofing rules use: the `ether`, `arp`, `ip`, `ip6`, `udp`, `icmp`, `igmp` and `icmpv6`
//! fields of the rules, raw `@nh`/`@th` fields, `!=`, anonymous sets, named sets, `add @set`,
//! `counter`, `accept` and `drop`. Anything else is [`Unsupported`], and that batch goes to
//! `nft` as before (vif-nat's masquerading, say). `tests/nft_netlink.rs` holds the two paths
//! side by side: the same batches applied by `nft -f -` and over netlink must leave the same
//! ruleset, bytecode and listing, in a private network namespace.
//!
//! Like `nft`, the compiler inserts the protocol dependencies a field needs (`meta iiftype`
//! before an Ethernet field, `meta protocol` before an ARP, IPv4 or IPv6 field, `meta l4proto`
//! before a transport field), turns a one-element set into a comparison (a prefix into a
//! shorter load or a mask, a range into a range comparison), merges adjacent equality matches
//! as `nft` does, and writes interval sets as `nft` does (adjacent intervals joined, each end
//! marked).

use std::net::{Ipv4Addr, Ipv6Addr};

use xenplug_netlink::netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, DevHookNumber, ExpressionAttribute,
    Expressions, Hook, HookNumber, Immediate, ListAttribute, Lookup, Meta, MetaKey,
    NfTablesMessage, Operator, Payload, Register, RuleAttribute, RuleMessage, SetAttribute,
    SetDescription, SetElementAttribute, SetElementFlags, SetElementList, SetElementMessage,
    SetFlags, SetMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
};
use xenplug_netlink::netlink_packet_netfilter::{NetfilterMessage, NetfilterProtoFamily};
use xenplug_netlink::nft::{key_bytes, nft};
use xenplug_netlink::{DefaultNla, Emitable, NLA_F_NESTED};

use crate::types::NftCmd;

/// What the compiler does not know, in words: the batch goes to `nft`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn unsupported<T>(what: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(what.into()))
}

/// The kernel's payload bases (`NFT_PAYLOAD_*_HEADER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Base {
    Link = 0,
    Network = 1,
    Transport = 2,
}

/// How a field's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mac,
    EtherType,
    ArpOp,
    Uint,
    Ipv4,
    Ipv6,
    IcmpType,
    IgmpType,
    Icmp6Type,
    L4Proto,
}

/// The protocol a field needs matched first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dep {
    None,
    /// An Ethernet header: `meta iiftype ether`.
    Link,
    /// `meta protocol <ethertype>`.
    Net(u16),
    /// `meta protocol` (if given) then `meta l4proto <proto>`.
    L4(Option<u16>, u8),
}

/// How `nft` describes a field in a set's user data: its protocol and template numbers, and
/// whether it records the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Typeof {
    desc: u32,
    tmpl: u32,
    len: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    base: Base,
    /// Offset and length in bits.
    off: u32,
    len: u32,
    kind: Kind,
    dep: Dep,
    /// A protocol key (`ether type`, `ip6 nexthdr`): a merge keeps its place.
    proto_key: bool,
    /// The set key type (`nft`'s datatype) and description; `None`: no set on this field.
    set: Option<(u32, Typeof)>,
    /// A raw field (`@nh,64,128`): described by base, offset and length.
    raw: bool,
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

// nft's datatypes.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_ETHERTYPE: u32 = 10;
const TYPE_ARPOP: u32 = 11;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_ICMP_TYPE: u32 = 14;
const TYPE_ICMP6_TYPE: u32 = 29;

fn field(
    base: Base,
    off: u32,
    len: u32,
    kind: Kind,
    dep: Dep,
    set: Option<(u32, u32, u32)>,
) -> Field {
    Field {
        base,
        off,
        len,
        kind,
        dep,
        proto_key: false,
        set: set.map(|(t, desc, tmpl)| {
            (
                t,
                Typeof {
                    desc,
                    tmpl,
                    len: false,
                },
            )
        }),
        raw: false,
    }
}

/// The field named by `words` (`["ip6", "saddr"]`), and how many words it took.
fn named_field(words: &[&str]) -> Option<(Field, usize)> {
    use Base::*;
    use Kind::*;
    let arp = Dep::Net(ETH_P_ARP);
    let ip = Dep::Net(ETH_P_IP);
    let ip6 = Dep::Net(ETH_P_IPV6);
    let w = |i: usize| words.get(i).copied().unwrap_or("");
    let (f, n) = match (w(0), w(1)) {
        ("ether", "saddr") => (field(Link, 48, 48, Mac, Dep::Link, None), 2),
        ("ether", "type") => {
            let mut f = field(
                Link,
                96,
                16,
                EtherType,
                Dep::Link,
                Some((TYPE_ETHERTYPE, 0x11, 3)),
            );
            f.proto_key = true;
            (f, 2)
        }
        ("arp", "htype") => (field(Network, 0, 16, Uint, arp, None), 2),
        ("arp", "ptype") => (field(Network, 16, 16, EtherType, arp, None), 2),
        ("arp", "hlen") => (field(Network, 32, 8, Uint, arp, None), 2),
        ("arp", "plen") => (field(Network, 40, 8, Uint, arp, None), 2),
        ("arp", "operation") => (
            field(Network, 48, 16, ArpOp, arp, Some((TYPE_ARPOP, 0x0f, 5))),
            2,
        ),
        ("arp", "saddr") | ("arp", "daddr") => {
            let d = usize::from(w(1) == "daddr");
            match w(2) {
                "ether" => (field(Network, [64, 144][d], 48, Mac, arp, None), 3),
                "ip" => (
                    field(
                        Network,
                        [112, 192][d],
                        32,
                        Ipv4,
                        arp,
                        Some((TYPE_IPADDR, 0x0f, [7, 9][d])),
                    ),
                    3,
                ),
                _ => return None,
            }
        }
        ("ip", "saddr") => (
            field(Network, 96, 32, Ipv4, ip, Some((TYPE_IPADDR, 0x0c, 11))),
            2,
        ),
        ("ip", "daddr") => (field(Network, 128, 32, Ipv4, ip, None), 2),
        ("ip6", "saddr") => (
            field(Network, 64, 128, Ipv6, ip6, Some((TYPE_IP6ADDR, 0x0d, 8))),
            2,
        ),
        ("ip6", "nexthdr") => {
            let mut f = field(Network, 48, 8, L4Proto, ip6, None);
            f.proto_key = true;
            (f, 2)
        }
        ("ip6", "length") => {
            let mut f = field(Network, 32, 16, Uint, ip6, None);
            f.set = Some((
                TYPE_INTEGER,
                Typeof {
                    desc: 0x0d,
                    tmpl: 5,
                    len: true,
                },
            ));
            (f, 2)
        }
        ("udp", "sport") => (
            field(
                Transport,
                0,
                16,
                Uint,
                Dep::L4(None, 17),
                Some((TYPE_INET_SERVICE, 6, 1)),
            ),
            2,
        ),
        ("udp", "dport") => (field(Transport, 16, 16, Uint, Dep::L4(None, 17), None), 2),
        ("icmp", "type") => (
            field(
                Transport,
                0,
                8,
                IcmpType,
                Dep::L4(Some(ETH_P_IP), 1),
                Some((TYPE_ICMP_TYPE, 4, 1)),
            ),
            2,
        ),
        ("igmp", "type") => (
            field(Transport, 0, 8, IgmpType, Dep::L4(Some(ETH_P_IP), 2), None),
            2,
        ),
        ("icmpv6", "type") => (
            field(
                Transport,
                0,
                8,
                Icmp6Type,
                Dep::L4(Some(ETH_P_IPV6), 58),
                Some((TYPE_ICMP6_TYPE, 0x0e, 1)),
            ),
            2,
        ),
        _ => return raw_field(w(0)).map(|f| (f, 1)),
    };
    Some((f, n))
}

/// `@nh,<offset>,<length>` or `@th,…` (bits).
fn raw_field(word: &str) -> Option<Field> {
    let mut parts = word.strip_prefix('@')?.split(',');
    let base = match parts.next()? {
        "nh" => Base::Network,
        "th" => Base::Transport,
        _ => return None,
    };
    let off: u32 = parts.next()?.parse().ok()?;
    let len: u32 = parts.next()?.parse().ok()?;
    // At most one register (16 bytes) loaded, partial bytes included.
    if parts.next().is_some() || len == 0 || off % 8 + len > 128 {
        return None;
    }
    let mut f = field(base, off, len, Kind::Uint, Dep::None, None);
    f.raw = true;
    // A raw field is described by itself (no protocol, no template).
    f.set = Some((
        TYPE_INTEGER,
        Typeof {
            desc: 0,
            tmpl: 0,
            len: true,
        },
    ));
    Some(f)
}

impl Field {
    /// Bytes a load of the whole field takes.
    fn bytes(&self) -> u32 {
        (self.off % 8 + self.len).div_ceil(8)
    }

    fn aligned(&self) -> bool {
        self.off.is_multiple_of(8) && self.len.is_multiple_of(8)
    }
}

/// One value of a match or a set: a value, a prefix (network, length in bits) or a range.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Elem {
    Value(u128),
    Prefix(u128, u32),
    Range(u128, u128),
}

fn symbol(kind: Kind, word: &str) -> Option<u128> {
    let v: u32 = match (kind, word) {
        (Kind::EtherType, "ip") => ETH_P_IP.into(),
        (Kind::EtherType, "arp") => ETH_P_ARP.into(),
        (Kind::EtherType, "ip6") => ETH_P_IPV6.into(),
        (Kind::ArpOp, "request") => 1,
        (Kind::ArpOp, "reply") => 2,
        (Kind::IcmpType, "echo-reply") => 0,
        (Kind::IcmpType, "destination-unreachable") => 3,
        (Kind::IcmpType, "redirect") => 5,
        (Kind::IcmpType, "echo-request") => 8,
        (Kind::IcmpType, "router-advertisement") => 9,
        (Kind::IcmpType, "router-solicitation") => 10,
        (Kind::IgmpType, "membership-query") => 0x11,
        (Kind::Icmp6Type, "mld-listener-query") => 130,
        (Kind::Icmp6Type, "nd-router-solicit") => 133,
        (Kind::Icmp6Type, "nd-router-advert") => 134,
        (Kind::Icmp6Type, "nd-neighbor-solicit") => 135,
        (Kind::Icmp6Type, "nd-neighbor-advert") => 136,
        (Kind::Icmp6Type, "nd-redirect") => 137,
        (Kind::Icmp6Type, "router-renumbering") => 138,
        (Kind::Icmp6Type, "mld2-listener-report") => 143,
        (Kind::L4Proto, "icmp") => 1,
        (Kind::L4Proto, "tcp") => 6,
        (Kind::L4Proto, "udp") => 17,
        (Kind::L4Proto, "ipv6-icmp") => 58,
        _ => return None,
    };
    Some(v.into())
}

fn number(word: &str) -> Option<u128> {
    match word.strip_prefix("0x") {
        Some(hex) => u128::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

/// The largest value of `bits` bits.
fn max_of(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

fn value_of(f: &Field, word: &str) -> Result<Elem, Unsupported> {
    let bad = || Unsupported(format!("value {word:?}"));
    let e = match f.kind {
        Kind::Mac => {
            let b: Vec<u8> = word
                .split(':')
                .map(|x| u8::from_str_radix(x, 16))
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?;
            if b.len() != 6 {
                return Err(bad());
            }
            Elem::Value(b.iter().fold(0u128, |a, x| (a << 8) | u128::from(*x)))
        }
        Kind::Ipv4 | Kind::Ipv6 => {
            let (addr, plen) = match word.split_once('/') {
                Some((a, p)) => (a, Some(p.parse::<u32>().map_err(|_| bad())?)),
                None => (word, None),
            };
            let (v, bits) = if f.kind == Kind::Ipv4 {
                let a: Ipv4Addr = addr.parse().map_err(|_| bad())?;
                (u128::from(u32::from(a)), 32)
            } else {
                let a: Ipv6Addr = addr.parse().map_err(|_| bad())?;
                (u128::from(a), 128)
            };
            match plen {
                None => Elem::Value(v),
                Some(p) if p == bits => Elem::Value(v),
                Some(p) if p < bits => {
                    let host = max_of(bits - p);
                    Elem::Prefix(v & !host, p)
                }
                Some(_) => return Err(bad()),
            }
        }
        _ => {
            let one = |w: &str| symbol(f.kind, w).or_else(|| number(w)).ok_or_else(bad);
            // A range `lo-hi` (numbers only: no symbol has a '-' then a digit).
            match word.split_once('-') {
                Some((lo, hi)) if f.kind == Kind::Uint => Elem::Range(one(lo)?, one(hi)?),
                _ => Elem::Value(one(word)?),
            }
        }
    };
    let max = max_of(f.len);
    match e {
        Elem::Value(v) | Elem::Prefix(v, _) if v > max => Err(bad()),
        Elem::Range(lo, hi) if lo > hi || hi > max => Err(bad()),
        e => Ok(e),
    }
}

/// The right-hand side of a match.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rhs {
    One(Elem),
    Set(Vec<Elem>),
    Named(String),
}

/// A statement of a rule, as `nft` evaluates it.
#[derive(Debug, Clone)]
enum Item {
    /// A dependency: `meta <key> == <value>`.
    Meta(MetaKey, Vec<u8>),
    /// `<field> [!=] <rhs>`; `field.off`/`field.len` may be those of merged fields.
    Match {
        field: Field,
        neq: bool,
        rhs: Rhs,
    },
    Counter,
    /// `add @<set> { <field> }`.
    Dynset(String, Field),
    /// `accept` (1) or `drop` (0).
    Verdict(u32),
}

impl Item {
    /// A statement that is not an expression ends a run of mergeable matches.
    fn is_statement(&self) -> bool {
        matches!(self, Item::Counter | Item::Dynset(..) | Item::Verdict(_))
    }
}

/// Words of a rule: whitespace-separated, a trailing ',' its own word.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for w in text.split_whitespace() {
        match w.strip_suffix(',') {
            Some(head) if !head.is_empty() => {
                out.push(head);
                out.push(",");
            }
            _ => out.push(w),
        }
    }
    out
}

/// The statements of rule `text`, dependencies included.
fn parse_rule(text: &str) -> Result<Vec<Item>, Unsupported> {
    let w = words(text);
    let mut items = Vec::new();
    let (mut link, mut net, mut l4): (bool, Option<u16>, Option<u8>) = (false, None, None);
    // An equality on a protocol key (`ether type ip`) may stand in for a later field's
    // dependency in nft; the rules here never need that, so it is left to nft.
    let mut protocol_matched = false;
    let mut i = 0;
    while i < w.len() {
        if matches!(items.last(), Some(Item::Verdict(_))) {
            return unsupported(format!("a statement after the verdict in {text:?}"));
        }
        match w[i] {
            "counter" => {
                items.push(Item::Counter);
                i += 1;
                continue;
            }
            "accept" | "drop" => {
                items.push(Item::Verdict(u32::from(w[i] == "accept")));
                i += 1;
                continue;
            }
            "add" => {
                let set = w.get(i + 1).and_then(|s| s.strip_prefix('@'));
                let (Some(set), Some(&"{")) = (set, w.get(i + 2)) else {
                    return unsupported(format!("'add' in {text:?}"));
                };
                let Some((f, n)) = named_field(&w[i + 3..]) else {
                    return unsupported(format!("set key in {text:?}"));
                };
                if w.get(i + 3 + n) != Some(&"}") {
                    return unsupported(format!("set key in {text:?}"));
                }
                items.push(Item::Dynset(set.to_string(), f));
                i += 4 + n;
                continue;
            }
            _ => {}
        }
        let Some((f, n)) = named_field(&w[i..]) else {
            return unsupported(format!("{:?} in {text:?}", w[i]));
        };
        i += n;
        if protocol_matched && f.dep != Dep::None {
            return unsupported(format!("a field after a protocol match in {text:?}"));
        }
        // Dependencies, as nft inserts them.
        let mut need_net = |p: u16, items: &mut Vec<Item>| {
            if net != Some(p) {
                items.push(Item::Meta(
                    MetaKey::EtherTypeProtocol,
                    p.to_be_bytes().to_vec(),
                ));
                net = Some(p);
            }
        };
        match f.dep {
            Dep::None => {}
            Dep::Link => {
                if !link {
                    items.push(Item::Meta(MetaKey::Iftype, 1u16.to_ne_bytes().to_vec()));
                    link = true;
                }
            }
            Dep::Net(p) => need_net(p, &mut items),
            Dep::L4(p, proto) => {
                if let Some(p) = p {
                    need_net(p, &mut items);
                }
                if l4 != Some(proto) {
                    items.push(Item::Meta(MetaKey::L4Proto, vec![proto]));
                    l4 = Some(proto);
                }
            }
        }
        let neq = w.get(i) == Some(&"!=");
        if neq {
            i += 1;
        }
        let rhs = match w.get(i).copied() {
            None => return unsupported(format!("a match without a value in {text:?}")),
            Some("{") => {
                let mut elems = Vec::new();
                i += 1;
                loop {
                    match w.get(i).copied() {
                        Some("}") => break,
                        Some(",") => {}
                        Some(v) => elems.push(value_of(&f, v)?),
                        None => return unsupported(format!("an open set in {text:?}")),
                    }
                    i += 1;
                }
                i += 1;
                match elems.len() {
                    0 => return unsupported(format!("an empty set in {text:?}")),
                    // nft makes a one-element set a comparison.
                    1 => Rhs::One(elems.remove(0)),
                    _ => Rhs::Set(elems),
                }
            }
            Some(v) if v.starts_with('@') => {
                i += 1;
                Rhs::Named(v[1..].to_string())
            }
            Some(v) => {
                i += 1;
                Rhs::One(value_of(&f, v)?)
            }
        };
        protocol_matched |= f.proto_key && !neq;
        items.push(Item::Match { field: f, neq, rhs });
    }
    merge(&mut items);
    Ok(items)
}

/// nft's `payload_can_merge`: adjacent, whole bytes, at most one register (16 bytes), and
/// either still a 32-bit load, a link-layer load, or one side longer than 32 bits already.
fn can_merge(a: &Field, b: &Field) -> bool {
    let total = a.len + b.len;
    a.base == b.base
        && a.off + a.len == b.off
        && a.aligned()
        && b.aligned()
        && total <= 128
        && (total <= 32 || a.base == Base::Link || a.len > 32 || b.len > 32)
}

/// Merge adjacent equality matches of plain values, as nft's `payload_try_merge` does: within
/// each run of expressions (up to a statement), sorted by base and offset; the merged match
/// takes the place of the first one (or of a protocol key's).
fn merge(items: &mut Vec<Item>) {
    let mut start = 0;
    let mut runs = Vec::new();
    for (i, it) in items.iter().enumerate() {
        if it.is_statement() {
            runs.push((start, i));
            start = i + 1;
        }
    }
    runs.push((start, items.len()));
    let mut dead = vec![false; items.len()];
    for (from, to) in runs {
        let mut cand: Vec<usize> = (from..to)
            .filter(|&i| {
                matches!(
                    &items[i],
                    Item::Match {
                        rhs: Rhs::One(Elem::Value(_)),
                        ..
                    }
                )
            })
            .collect();
        if cand.len() < 2 {
            continue;
        }
        let key = |i: usize| match &items[i] {
            Item::Match { field, .. } => (field.base, field.off),
            _ => unreachable!(),
        };
        cand.sort_by_key(|&i| key(i));
        let mut last = cand[0];
        for &this in &cand[1..] {
            let (
                Item::Match {
                    field: fa,
                    neq: na,
                    rhs: Rhs::One(Elem::Value(va)),
                },
                Item::Match {
                    field: fb,
                    neq: nb,
                    rhs: Rhs::One(Elem::Value(vb)),
                },
            ) = (&items[last], &items[this])
            else {
                unreachable!()
            };
            // Equalities only: `a != x b != y` is not `ab != xy`.
            if *na || *nb || !can_merge(fa, fb) {
                last = this;
                continue;
            }
            let mut f = *fa;
            f.len += fb.len;
            f.raw = true;
            f.set = None;
            f.proto_key = fa.proto_key || fb.proto_key;
            let v = (va << fb.len) | vb;
            let merged = Item::Match {
                field: f,
                neq: false,
                rhs: Rhs::One(Elem::Value(v)),
            };
            // The merged match stays where the first was, unless the second is a protocol key.
            let (keep, drop) = if fb.proto_key {
                (this, last)
            } else {
                (last, this)
            };
            items[keep] = merged;
            dead[drop] = true;
            last = keep;
        }
    }
    let mut i = 0;
    items.retain(|_| {
        i += 1;
        !dead[i - 1]
    });
}

fn be(v: u128, bytes: u32) -> Vec<u8> {
    v.to_be_bytes()[16 - bytes as usize..].to_vec()
}

fn expr(e: Expressions) -> ListAttribute<ExpressionAttribute> {
    e.into()
}

fn other(name: &str, attributes: Vec<DefaultNla>) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Other {
        expression_type: name.to_string(),
        attributes,
    })
}

fn u32_nla(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_be_bytes().to_vec())
}

fn payload(base: Base, off_bytes: u32, len_bytes: u32) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base as u32),
        Payload::Offset(off_bytes),
        Payload::Len(len_bytes),
    ]))
}

fn cmp(neq: bool, data: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(if neq {
            Operator::NotEqual
        } else {
            Operator::Equal
        }),
        Cmp::Data(DataAttribute::Value(data)),
    ]))
}

fn bitwise(mask: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    let len = mask.len() as u32;
    let xor = vec![0; mask.len()];
    expr(Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Length(len),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(xor)),
    ]))
}

/// A value wrapped as `NFTA_DATA_VALUE` in an attribute of its own (`kind`, nested).
fn data_nla(kind: u16, v: Vec<u8>) -> DefaultNla {
    let value = DataAttribute::Value(v);
    let mut inner = vec![0; value.buffer_len()];
    value.emit(&mut inner);
    DefaultNla::new(kind | NLA_F_NESTED, inner)
}

/// nft's user data: a type byte, a length byte, the value.
fn udata(out: &mut Vec<u8>, t: u8, v: &[u8]) {
    out.push(t);
    out.push(v.len() as u8);
    out.extend_from_slice(v);
}

/// How nft describes a set keyed by `f` (its key's byte order, whether elements merge, the
/// key's expression), so that `nft list` prints it as it wrote it.
fn set_udata(f: &Field, interval: bool) -> Vec<u8> {
    let mut u = Vec::new();
    udata(&mut u, 0, &2u32.to_le_bytes()); // byte order: big endian
    if interval {
        udata(&mut u, 2, &1u32.to_le_bytes()); // merge adjacent elements
    }
    let Some((_, t)) = f.set else {
        return u;
    };
    let mut inner = Vec::new();
    udata(&mut inner, 0, &t.desc.to_le_bytes());
    udata(&mut inner, 1, &t.tmpl.to_le_bytes());
    if f.raw {
        // nft's own base numbers: link 1, network 2, transport 3.
        udata(&mut inner, 2, &(f.base as u32 + 1).to_le_bytes());
        udata(&mut inner, 3, &f.off.to_le_bytes());
    }
    if t.len {
        udata(&mut inner, 4, &f.len.to_le_bytes());
    }
    let mut ty = Vec::new();
    udata(&mut ty, 0, &7u32.to_le_bytes()); // a payload expression
    udata(&mut ty, 1, &inner);
    udata(&mut u, 3, &ty);
    u
}

/// Turns a batch into messages.
struct Compiler {
    msgs: Vec<NetfilterMessage>,
    next_id: u32,
    /// Named sets created in this batch: name, id, key length in bytes.
    sets: Vec<(String, u32, u32)>,
}

impl Compiler {
    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    fn push(&mut self, m: NfTablesMessage) {
        // Every message is the netdev family's: [`compile`] takes nothing else.
        self.msgs.push(nft(NetfilterProtoFamily::NetDev, m));
    }

    fn named(&self, set: &str) -> Option<(u32, u32)> {
        self.sets
            .iter()
            .find(|(n, _, _)| n == set)
            .map(|(_, id, len)| (*id, *len))
    }

    /// An anonymous set of `elems` keyed by `f`; its id.
    fn anonymous_set(
        &mut self,
        table: &str,
        f: &Field,
        elems: &[Elem],
    ) -> Result<u32, Unsupported> {
        let Some((key_type, _)) = f.set else {
            return unsupported("a set on a field nft describes otherwise");
        };
        if !f.aligned() {
            return unsupported("a set on a field of partial bytes");
        }
        let bytes = f.bytes();
        let interval = elems.iter().any(|e| !matches!(e, Elem::Value(_)));
        // (key, interval end, open interval)
        let mut list: Vec<(u128, bool, bool)> = Vec::new();
        if interval {
            let max = max_of(f.len);
            let mut ranges: Vec<(u128, u128)> = elems
                .iter()
                .map(|e| match *e {
                    Elem::Value(v) => (v, v),
                    Elem::Prefix(v, p) => (v, v | max_of(f.len - p)),
                    Elem::Range(lo, hi) => (lo, hi),
                })
                .collect();
            ranges.sort();
            let mut joined: Vec<(u128, u128)> = Vec::new();
            for (lo, hi) in ranges {
                match joined.last_mut() {
                    Some(last) if last.1 == max || lo <= last.1 + 1 => last.1 = last.1.max(hi),
                    _ => joined.push((lo, hi)),
                }
            }
            if joined[0].0 != 0 {
                list.push((0, true, false));
            }
            for (lo, hi) in joined {
                list.push((lo, false, hi == max));
                if hi != max {
                    list.push((hi + 1, true, false));
                }
            }
        } else {
            list = elems
                .iter()
                .map(|e| match e {
                    Elem::Value(v) => (*v, false, false),
                    _ => unreachable!(),
                })
                .collect();
        }
        let id = self.id();
        let mut flags = SetFlags::Anonymous | SetFlags::Constant;
        if interval {
            flags |= SetFlags::Interval;
        }
        self.push(NfTablesMessage::NewSet(SetMessage {
            attributes: vec![
                SetAttribute::Table(table.to_string()),
                SetAttribute::Name("__set%d".into()),
                SetAttribute::Flags(flags),
                SetAttribute::KeyType(key_type),
                SetAttribute::KeyLen(bytes),
                SetAttribute::Id(id),
                SetAttribute::Description(vec![SetDescription::Size(list.len() as u32)]),
                SetAttribute::UserData(set_udata(f, interval)),
            ],
        }));
        let elements = list
            .into_iter()
            .map(|(k, end, open)| {
                let mut a = Vec::new();
                if end {
                    a.push(SetElementAttribute::Flags(SetElementFlags::IntervalEnd));
                }
                a.push(SetElementAttribute::Key(DataAttribute::Value(be(k, bytes))));
                if open {
                    let mut u = Vec::new();
                    udata(&mut u, 1, &1u32.to_le_bytes()); // an interval open at its end
                    a.push(SetElementAttribute::UserData(u));
                }
                ListAttribute::Element(a)
            })
            .collect();
        self.push(NfTablesMessage::NewSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(table.to_string()),
                SetElementList::Set("__set%d".into()),
                SetElementList::SetId(id),
                SetElementList::Elements(elements),
            ],
        }));
        Ok(id)
    }

    fn lookup(&self, set: &str, id: Option<u32>, neq: bool) -> ListAttribute<ExpressionAttribute> {
        let mut a = vec![
            Lookup::Set(set.to_string()),
            Lookup::SourceRegister(Register::Reg1),
        ];
        if let Some(id) = id {
            a.push(Lookup::SetId(id));
        }
        a.push(Lookup::Flags(u32::from(neq)));
        expr(Expressions::Lookup(a))
    }

    fn rule(
        &mut self,
        table: &str,
        chain: &str,
        text: &str,
        comment: Option<&str>,
    ) -> Result<(), Unsupported> {
        let mut exprs = Vec::new();
        for item in parse_rule(text)? {
            match item {
                Item::Meta(key, value) => {
                    exprs.push(expr(Expressions::Meta(vec![
                        Meta::DestinationRegister(Register::Reg1),
                        Meta::Key(key),
                    ])));
                    exprs.push(cmp(false, value));
                }
                Item::Match { field: f, neq, rhs } => {
                    self.matching(table, &f, neq, rhs, &mut exprs)?
                }
                Item::Counter => exprs.push(other("counter", vec![])),
                Item::Dynset(set, f) => {
                    let Some((id, len)) = self.named(&set) else {
                        return unsupported(format!("'add @{set}' to a set not made in the batch"));
                    };
                    if !f.aligned() || f.bytes() != len {
                        return unsupported(format!("a key of another length for @{set}"));
                    }
                    exprs.push(payload(f.base, f.off / 8, f.bytes()));
                    exprs.push(other(
                        "dynset",
                        vec![
                            DefaultNla::new(1, nul_terminated(&set)),
                            u32_nla(2, id),
                            u32_nla(3, 0), // NFT_DYNSET_OP_ADD
                            u32_nla(4, 1), // the key in register 1
                        ],
                    ));
                }
                Item::Verdict(code) => exprs.push(expr(Expressions::Immediate(vec![
                    Immediate::DestinationRegister(Register::Verdict),
                    Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
                        Verdict::Other(code),
                    )])),
                ]))),
            }
        }
        let mut attributes = vec![
            RuleAttribute::Table(table.to_string()),
            RuleAttribute::Chain(chain.to_string()),
            RuleAttribute::Expressions(exprs),
        ];
        if let Some(c) = comment {
            let mut v = c.as_bytes().to_vec();
            v.push(0);
            if v.len() > 128 {
                return unsupported("a comment longer than nft takes");
            }
            let mut u = Vec::new();
            udata(&mut u, 0, &v);
            attributes.push(RuleAttribute::UserData(u));
        }
        self.push(NfTablesMessage::NewRule(RuleMessage { attributes }));
        Ok(())
    }

    fn matching(
        &mut self,
        table: &str,
        f: &Field,
        neq: bool,
        rhs: Rhs,
        exprs: &mut Vec<ListAttribute<ExpressionAttribute>>,
    ) -> Result<(), Unsupported> {
        match rhs {
            Rhs::One(Elem::Value(v)) => {
                let bytes = f.bytes();
                exprs.push(payload(f.base, f.off / 8, bytes));
                if f.aligned() {
                    exprs.push(cmp(neq, be(v, bytes)));
                } else {
                    // The field's bits within the bytes loaded, and the value shifted there.
                    let shift = bytes * 8 - f.off % 8 - f.len;
                    exprs.push(bitwise(be(max_of(f.len) << shift, bytes)));
                    exprs.push(cmp(neq, be(v << shift, bytes)));
                }
            }
            Rhs::One(Elem::Prefix(v, p)) => {
                if !f.aligned() {
                    return unsupported("a prefix of a field of partial bytes");
                }
                let bytes = f.bytes();
                if p % 8 == 0 && p > 0 {
                    // A prefix of whole bytes: a shorter load.
                    exprs.push(payload(f.base, f.off / 8, p / 8));
                    exprs.push(cmp(neq, be(v >> (f.len - p), p / 8)));
                } else {
                    exprs.push(payload(f.base, f.off / 8, bytes));
                    let mask = max_of(f.len) & !max_of(f.len - p);
                    exprs.push(bitwise(be(mask, bytes)));
                    exprs.push(cmp(neq, be(v, bytes)));
                }
            }
            Rhs::One(Elem::Range(lo, hi)) => {
                if !f.aligned() {
                    return unsupported("a range of a field of partial bytes");
                }
                let bytes = f.bytes();
                exprs.push(payload(f.base, f.off / 8, bytes));
                exprs.push(other(
                    "range",
                    vec![
                        u32_nla(1, 1),              // register 1
                        u32_nla(2, u32::from(neq)), // NFT_RANGE_EQ / NFT_RANGE_NEQ
                        data_nla(3, be(lo, bytes)),
                        data_nla(4, be(hi, bytes)),
                    ],
                ));
            }
            Rhs::Set(elems) => {
                let id = self.anonymous_set(table, f, &elems)?;
                exprs.push(payload(f.base, f.off / 8, f.bytes()));
                exprs.push(self.lookup("__set%d", Some(id), neq));
            }
            Rhs::Named(set) => {
                if !f.aligned() {
                    return unsupported("a set lookup of a field of partial bytes");
                }
                let id = self.named(&set).map(|(id, _)| id);
                exprs.push(payload(f.base, f.off / 8, f.bytes()));
                exprs.push(self.lookup(&set, id, neq));
            }
        }
        Ok(())
    }
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The netlink messages of `cmds`, in order, for [`xenplug_netlink::nft::Nft::apply`]: one
/// transaction doing what `nft -f -` does with [`crate::types::NftBatch::text`].
pub fn compile(cmds: &[NftCmd]) -> Result<Vec<NetfilterMessage>, Unsupported> {
    let family = |c: &NftCmd| match c {
        NftCmd::AddTable { family, .. }
        | NftCmd::AddChain { family, .. }
        | NftCmd::DeleteChain { family, .. }
        | NftCmd::FlushChain { family, .. }
        | NftCmd::AddSet { family, .. }
        | NftCmd::DeleteSet { family, .. }
        | NftCmd::AddElements { family, .. }
        | NftCmd::DeleteElements { family, .. }
        | NftCmd::AddRule { family, .. } => *family,
    };
    if let Some(other) = cmds.iter().map(family).find(|f| *f != "netdev") {
        // The hooks, dependencies and payload bases here are the netdev family's.
        return unsupported(format!("family {other}"));
    }
    let mut c = Compiler {
        msgs: Vec::new(),
        next_id: 0,
        sets: Vec::new(),
    };
    for cmd in cmds {
        match cmd {
            NftCmd::AddTable { table, .. } => c.push(NfTablesMessage::NewTable(TableMessage {
                attributes: vec![TableAttribute::Name(table.clone())],
            })),
            NftCmd::AddChain {
                table, chain, hook, ..
            } => {
                let mut attributes = vec![
                    ChainAttribute::Table(table.clone()),
                    ChainAttribute::Name(chain.clone()),
                ];
                if let Some(h) = hook {
                    let (Some(device), "ingress") = (&h.device, h.hook) else {
                        return unsupported(format!("hook {}", h.hook));
                    };
                    let policy = match h.policy {
                        "accept" => 1,
                        "drop" => 0,
                        p => return unsupported(format!("policy {p}")),
                    };
                    attributes.push(ChainAttribute::Type(h.kind.to_string()));
                    attributes.push(ChainAttribute::Policy(policy));
                    attributes.push(ChainAttribute::Hook(vec![
                        Hook::Number(HookNumber::Dev(DevHookNumber::Ingress)),
                        Hook::Priority(h.prio as u32),
                        Hook::NetDeviceName(device.clone()),
                    ]));
                }
                c.push(NfTablesMessage::NewChain(ChainMessage { attributes }));
            }
            NftCmd::DeleteChain { table, chain, .. } => {
                c.push(NfTablesMessage::DeleteChain(ChainMessage {
                    attributes: vec![
                        ChainAttribute::Table(table.clone()),
                        ChainAttribute::Name(chain.clone()),
                    ],
                }))
            }
            // Only vif-nat flushes a chain, in a batch that goes to nft anyway.
            NftCmd::FlushChain { chain, .. } => {
                return unsupported(format!("flush chain {chain}"));
            }
            NftCmd::AddSet {
                table,
                set,
                key,
                size,
                ..
            } => {
                let Some(f) = raw_field(key) else {
                    return unsupported(format!("set key {key}"));
                };
                if !f.aligned() {
                    return unsupported(format!("set key {key}"));
                }
                let id = c.id();
                c.sets.push((set.clone(), id, f.bytes()));
                c.push(NfTablesMessage::NewSet(SetMessage {
                    attributes: vec![
                        SetAttribute::Table(table.clone()),
                        SetAttribute::Name(set.clone()),
                        SetAttribute::Flags(SetFlags::Eval),
                        SetAttribute::KeyType(TYPE_INTEGER),
                        SetAttribute::KeyLen(f.bytes()),
                        SetAttribute::Id(id),
                        SetAttribute::Description(vec![SetDescription::Size(*size)]),
                        SetAttribute::UserData(set_udata(&f, false)),
                    ],
                }));
            }
            NftCmd::DeleteSet { table, set, .. } => {
                c.push(NfTablesMessage::DeleteSet(SetMessage {
                    attributes: vec![
                        SetAttribute::Table(table.clone()),
                        SetAttribute::Name(set.clone()),
                    ],
                }))
            }
            NftCmd::AddElements {
                table, set, elems, ..
            }
            | NftCmd::DeleteElements {
                table, set, elems, ..
            } => {
                let Some((id, len)) = c.named(set) else {
                    return unsupported(format!("elements of @{set}, not made in the batch"));
                };
                let keys = elems
                    .iter()
                    .map(|e| key_bytes(e, len as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| Unsupported(format!("elements {elems:?} of @{set}")))?;
                let message = SetElementMessage {
                    attributes: vec![
                        SetElementList::Table(table.clone()),
                        SetElementList::Set(set.clone()),
                        SetElementList::SetId(id),
                        SetElementList::Elements(
                            keys.into_iter()
                                .map(|k| {
                                    ListAttribute::Element(vec![SetElementAttribute::Key(
                                        DataAttribute::Value(k),
                                    )])
                                })
                                .collect(),
                        ),
                    ],
                };
                c.push(if matches!(cmd, NftCmd::AddElements { .. }) {
                    NfTablesMessage::NewSetElement(message)
                } else {
                    NfTablesMessage::DeleteSetElement(message)
                });
            }
            NftCmd::AddRule {
                table,
                chain,
                expr,
                comment,
                ..
            } => c.rule(table, chain, expr, *comment)?,
        }
    }
    Ok(c.msgs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<String> {
        parse_rule(text)
            .unwrap()
            .into_iter()
            .map(|i| match i {
                Item::Meta(k, v) => format!("meta {k:?} {v:02x?}"),
                Item::Match { field, neq, rhs } => format!(
                    "{:?}+{}:{} {} {rhs:?}",
                    field.base,
                    field.off / 8,
                    field.bytes(),
                    if neq { "!=" } else { "==" }
                ),
                Item::Counter => "counter".into(),
                Item::Dynset(s, _) => format!("add @{s}"),
                Item::Verdict(v) => format!("verdict {v}"),
            })
            .collect()
    }

    #[test]
    fn dependencies_and_merges_as_nft() {
        // nft: `ip saddr`/`ip daddr` stay apart (8 bytes of network header), the ports merge.
        assert_eq!(
            fields("ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept"),
            [
                "meta EtherTypeProtocol [08, 00]",
                "Network+12:4 == One(Value(0))",
                "Network+16:4 == One(Value(4294967295))",
                "meta L4Proto [11]",
                "Transport+0:4 == One(Value(4456515))",
                "verdict 1",
            ]
        );
        // The ARP probe: htype and ptype merge; hlen to the sender address merge (the MAC is
        // longer than 32 bits), in offset order.
        let probe = fields(
            "arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether 00:16:3e:00:00:05 \
             arp operation request arp saddr ip 0.0.0.0 arp daddr ip { 10.0.0.5 } accept",
        );
        assert_eq!(probe[1], "Network+0:4 == One(Value(67584))");
        assert!(probe[2].starts_with("Network+4:14 =="), "{probe:?}");
        assert_eq!(probe[3], "Network+24:4 == One(Value(167772165))");
        // Inequalities never merge.
        assert_eq!(
            fields("udp sport != 1 udp dport != 2").len(),
            3,
            "meta, then two matches"
        );
    }

    #[test]
    fn unknown_grammar_is_unsupported() {
        for text in [
            "tcp dport 22 accept",
            "ip saddr 10.0.0.1 masquerade",
            "meta iifname \"x\" accept",
            "ip saddr { } accept",
            "ip saddr 300.1.1.1 accept",
            "ether saddr 00:11 drop",
            "@nh,4,128 0x1 drop",
            "@nh,0,129 0x1 drop",
            "@xh,0,8 0x1 drop",
            "add @s { @nh,0,8 ",
            "accept counter",
            "drop drop",
            "ether type ip ip saddr 10.0.0.1 accept",
            "ip6 nexthdr ipv6-icmp icmpv6 type nd-redirect drop",
        ] {
            assert!(parse_rule(text).is_err(), "{text}");
        }
    }
}
