//! Antispoofing with nftables: the pure builders of the batches (a tap's `rate` is tc's job:
//! [`crate::rate`]; [`crate::adapters::NftCli`] sends a batch to the kernel, over netlink as
//! [`crate::nft_netlink`] compiles it, or through `nft`).
//!
//! Every vif that needs rules gets one base chain in our own table `netdev xenplug`, hooked at
//! **ingress of the vif (or tap) itself**. What a guest sends enters dom0 through that hook
//! before anything else sees it (bridge, Open vSwitch, routing, NAT, `br_netfilter`), so one
//! mechanism serves every script and nothing depends on the host's own tables. The chain is
//! named after the backend, with libxl's name of the device (`vif<domid>.<devid>`, or
//! `vif<domid>.<devid>-emu` for a tap) whatever `vifname` renames the device to: teardown then
//! removes this backend's chain and nothing else. A whole chain is written as ONE batch (one
//! nftables transaction, what `nft -f -` makes of its text), which nftables applies atomically;
//! removal is another batch.
//!
//! Modes (the `antispoof` variable: argument `antispoof=…`, environment, or the host's
//! `antispoof` setting), for a vif whose `ip` node lists addresses:
//! * `enforce` (default): policy drop, and the rules below, at least as strict as libvirt's
//!   `clean-traffic` filter and OpenStack Neutron's port security.
//! * `compat`: the reference's ACCEPT-only rules for the same addresses, policy accept (it
//!   changes nothing unless the administrator adds drops elsewhere, exactly like the
//!   reference).
//! * `off`: no rules.
//!
//! # The rules of `enforce`, in order, and why
//!
//! `MAC` is the backend's `mac` node (libxl writes the guest's address there; an emulated NIC
//! uses the same), `V4`/`V6` the listed addresses and networks.
//!
//! 1. **Ethernet source must be `MAC`**, for every frame (libvirt `no-mac-spoofing`, Neutron's
//!    MAC check). A guest sending with another VM's address makes the bridge learn that VM's
//!    address on the guest's port, and that VM's traffic goes to the guest.
//! 2. Ethertypes the host configured (`antispoof_ethertypes`) are accepted, from `MAC` only.
//! 3. **Only IPv4, ARP and IPv6**; everything else is dropped (libvirt `no-other-l2-traffic`):
//!    802.3/LLC (spanning tree), other ethertypes, and **VLAN tags**: the kernel strips a tag
//!    before ingress, so `ip saddr` would judge the inner packet while the bridge, Open
//!    vSwitch or a trunk forwards the tagged frame to another VLAN.
//! 4. **ARP**: Ethernet/IPv4 ARP requests and replies whose sender hardware address is `MAC`
//!    and sender address one of `V4` are accepted, and probes (sender 0.0.0.0, RFC 5227) for
//!    one of `V4`; every other ARP is dropped (libvirt `no-arp-spoofing`, `no-arp-ip-spoofing`,
//!    `no-arp-mac-spoofing`). A reply with the guest's own address but another VM's hardware
//!    address redirects traffic for the guest to that VM; a probe for someone else's address
//!    makes their address-conflict detection give it up.
//! 5. **DHCP**: client requests from 0.0.0.0:68 to 255.255.255.255:67 are accepted; **server
//!    and relay traffic** (UDP source port 67, and 547 for DHCPv6) is dropped (Neutron drops
//!    DHCP offers from VMs; a rogue server hands neighbours a gateway of its choice).
//! 6. **ICMP redirects and router advertisements** (IPv4), **IGMP queries**: router and
//!    querier messages, never a guest's business.
//! 7. **IPv4** from `V4` is accepted; any other IPv4 source is dropped.
//! 8. **Neighbour discovery behind extension headers** is dropped (RFC 6980: receivers ignore
//!    fragmented ND, and the checks below read fixed offsets).
//! 9. **Router advertisements, redirects, router renumbering, MLD queries** are dropped (Neutron
//!    drops RAs from VMs; an RA makes every neighbour route through the sender).
//! 10. **NS and NA must be well formed** (24 bytes, or 32 with one option) and router
//!     solicitations (8, or 16); the link-layer address option of an NS, NA or RS must be
//!     `MAC`. A second, unchecked option would otherwise carry another address.
//! 11. **A neighbour advertisement may only claim the vif's own addresses**: a target in `V6`,
//!     or a link-local address the vif owns (below); the same for the target of duplicate
//!     address detection (an NS from `::`). An NA for another VM's address poisons every
//!     neighbour's cache for it; DAD for it makes that VM give it up.
//! 12. **IPv6 sources**: `V6` is accepted; `::` only for DAD, router solicitations and MLDv2
//!     reports (what a host sends before it has an address); a link-local source only if the
//!     vif owns it. Everything else is dropped.
//!
//! **Link-local addresses** are not listed in `ip`, and a guest with stable-privacy addresses
//! (RFC 7217: NetworkManager's default) picks one dom0 cannot predict. Ownership is first come,
//! first served (as FCFS SAVI, RFC 6620): a vif owns the EUI-64 address of `MAC` (and any
//! link-local address listed in `ip`) from the start, and claims a further link-local address
//! when it first uses it (as a source, as the target of its DAD or of its NA), unless another
//! vif has claimed it already. Claims live in two sets of table `netdev xenplug`: the vif's own
//! (`<chain>-ll6`, at most [`OWN_LL6_MAX`] addresses, so one guest cannot exhaust the other)
//! and every vif's together (`ll6-claimed`). Addresses of EUI-64 form (`…ff:fe…`) are never
//! claimed this way, so no guest can take the predictable address of a VM that has not started
//! yet. Teardown deletes the vif's set and releases its claims.
//!
//! Rules exist only when the backend `ip` node lists addresses (as in Xen's scripts). Drop
//! rules count what they drop (`nft list chain netdev xenplug <chain>`), and every rule says
//! why in its comment.

use std::net::{IpAddr, Ipv6Addr};

use crate::types::{minimal_nets, nft_identifier, nft_quotable, Hook, Mode, Net, NftBatch, NftCmd};

/// Our nftables table (family `netdev`).
pub const TABLE: &str = "xenplug";
/// The set of every link-local address a vif has claimed.
pub const CLAIMED_SET: &str = "ll6-claimed";
/// How many link-local addresses one vif may own (its EUI-64 address included).
pub const OWN_LL6_MAX: u32 = 8;
/// The bound of [`CLAIMED_SET`].
pub const CLAIMED_MAX: u32 = 65535;
/// The key of the link-local sets: the 128 bits at offset 64 of the network header (an IPv6
/// source address); the rules look targets up with the same width at the transport header.
const LL6_KEY: &str = "@nh,64,128";
const FAMILY: &str = "netdev";

/// The name of `chain`'s set of owned link-local addresses.
pub fn own_set(chain: &str) -> String {
    format!("{chain}-ll6")
}

/// What a vif's chain is made of.
#[derive(Debug, Clone, Copy)]
pub struct Antispoof<'a> {
    /// This backend's name for its rules: libxl's name of the device.
    pub chain: &'a str,
    /// The device the chain hooks: the device's name after this script.
    pub device: &'a str,
    /// The `ip` entries.
    pub addrs: &'a [Net],
    /// The guest's MAC (`enforce` needs it).
    pub mac: Option<[u8; 6]>,
    /// The mode.
    pub mode: Mode,
    /// Extra ethertypes `enforce` accepts.
    pub ethertypes: &'a [u16],
}

fn cmd_rule(chain: &str, expr: String, comment: Option<&'static str>) -> NftCmd {
    NftCmd::AddRule {
        family: FAMILY,
        table: TABLE.into(),
        chain: chain.into(),
        expr,
        comment,
    }
}

fn set_of<T: std::fmt::Display>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", v.join(", "))
}

/// A network as nft reads it: host bits cleared.
fn net_text(n: &Net) -> String {
    if n.is_host() {
        return n.addr.to_string();
    }
    let lo = n.range().0;
    let a: IpAddr = match n.addr {
        IpAddr::V4(_) => IpAddr::V4((lo as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(lo.into()),
    };
    format!("{a}/{}", n.prefix)
}

fn hex128(v: u128) -> String {
    format!("0x{v:032x}")
}

fn mac_hex(mac: &[u8; 6]) -> String {
    let v = mac.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
    format!("0x{v:012x}")
}

fn mac_text(mac: &[u8; 6]) -> String {
    xenplug_netlink::links::fmt_mac(mac)
}

/// The link-local network, fe80::/10.
fn link_local() -> Net {
    Net {
        addr: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        prefix: 10,
    }
}

/// The EUI-64 link-local address of `mac` (RFC 4291, appendix A).
pub fn eui64_link_local(mac: &[u8; 6]) -> Ipv6Addr {
    let b = [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ];
    Ipv6Addr::from(b)
}

/// Commands removing chain `name` of table `family table` whether or not it exists: the table
/// and the chain are added (a missing chain as a plain, hook-less chain; an existing base chain
/// is left as it is), then the chain is deleted with its rules. A batch of several such removals
/// cannot fail on one chain already gone (e.g. a netdev chain the kernel dropped with its device)
/// and leave the others behind.
pub fn remove_chain_cmds(family: &'static str, table: &str, name: &str) -> Vec<NftCmd> {
    vec![
        NftCmd::AddTable {
            family,
            table: table.into(),
        },
        NftCmd::AddChain {
            family,
            table: table.into(),
            chain: name.into(),
            hook: None,
        },
        NftCmd::DeleteChain {
            family,
            table: table.into(),
            chain: name.into(),
        },
    ]
}

fn add_set(name: &str, size: u32) -> NftCmd {
    NftCmd::AddSet {
        family: FAMILY,
        table: TABLE.into(),
        set: name.into(),
        key: LL6_KEY,
        size,
    }
}

/// The batch removing `chain`'s rules (whether or not they still exist): the chain, its set of
/// link-local addresses, and its `claims` (the elements of that set, as `nft` reads them) from
/// the set of every claim, so that another vif may use them. Each element is added before it is
/// deleted, so a claim already gone does not fail the batch.
pub fn remove_batch(chain: &str, claims: &[String]) -> NftBatch {
    let own = own_set(chain);
    let mut cmds = remove_chain_cmds(FAMILY, TABLE, chain);
    cmds.push(add_set(&own, OWN_LL6_MAX));
    if !claims.is_empty() {
        cmds.push(add_set(CLAIMED_SET, CLAIMED_MAX));
        for verb in [true, false] {
            let (family, table, set, elems) = (
                FAMILY,
                TABLE.to_string(),
                CLAIMED_SET.to_string(),
                claims.to_vec(),
            );
            cmds.push(if verb {
                NftCmd::AddElements {
                    family,
                    table,
                    set,
                    elems,
                }
            } else {
                NftCmd::DeleteElements {
                    family,
                    table,
                    set,
                    elems,
                }
            });
        }
    }
    cmds.push(NftCmd::DeleteSet {
        family: FAMILY,
        table: TABLE.into(),
        set: own,
    });
    NftBatch {
        what: format!(
            "remove netdev {TABLE} chain {chain} and its {} link-local claim(s)",
            claims.len()
        ),
        cmds,
        undo: None,
        removal: true,
    }
}

/// The batch installing the vif's chain, `Ok(None)` when no rule is needed (mode `off`, or no
/// addresses), an error when the rules cannot be written (`enforce` without the guest's MAC, a
/// name nft cannot take).
pub fn vif_batch(a: &Antispoof<'_>) -> Result<Option<NftBatch>, String> {
    if a.mode == Mode::Off || a.addrs.is_empty() {
        return Ok(None);
    }
    if !nft_identifier(a.chain) || !nft_identifier(&own_set(a.chain)) {
        return Err(format!(
            "cannot name antispoofing rules after '{}' (nftables takes letters, digits, '_', '-', '.', '/')",
            a.chain
        ));
    }
    if !nft_quotable(a.device) {
        return Err(format!(
            "cannot hook antispoofing rules to interface '{}' (nftables takes printable ASCII without '\"')",
            a.device
        ));
    }
    let policy = if a.mode == Mode::Enforce {
        "drop"
    } else {
        "accept"
    };
    let hook = |policy| {
        Some(Hook {
            kind: "filter",
            hook: "ingress",
            device: Some(a.device.to_string()),
            prio: 0,
            policy,
        })
    };
    let chain = a.chain;
    let mut cmds = vec![
        NftCmd::AddTable {
            family: FAMILY,
            table: TABLE.into(),
        },
        // add + delete + add: the chain is created afresh whatever existed (idempotent online).
        NftCmd::AddChain {
            family: FAMILY,
            table: TABLE.into(),
            chain: chain.into(),
            hook: hook("accept"),
        },
        NftCmd::DeleteChain {
            family: FAMILY,
            table: TABLE.into(),
            chain: chain.into(),
        },
        NftCmd::AddChain {
            family: FAMILY,
            table: TABLE.into(),
            chain: chain.into(),
            hook: hook(policy),
        },
    ];
    let nets = minimal_nets(a.addrs);
    let v4: Vec<String> = nets
        .iter()
        .filter(|n| n.addr.is_ipv4())
        .map(net_text)
        .collect();
    let v6: Vec<String> = nets
        .iter()
        .filter(|n| n.addr.is_ipv6())
        .map(net_text)
        .collect();
    // What the undo releases: the link-local addresses the batch makes the vif own.
    let mut undo_claims: Vec<String> = Vec::new();
    let rules = match a.mode {
        Mode::Enforce => {
            let mac = a.mac.ok_or(
                "antispoof=enforce needs the guest's MAC address (the backend's mac node)",
            )?;
            let own = own_set(chain);
            // The vif's own link-local addresses from the start: the EUI-64 one of its MAC and
            // any listed (host) link-local address.
            let mut owned: Vec<u128> = vec![u128::from(eui64_link_local(&mac))];
            for n in &nets {
                if let IpAddr::V6(v) = n.addr {
                    if n.is_host() && link_local().contains(n) && !owned.contains(&u128::from(v)) {
                        owned.push(u128::from(v));
                    }
                }
            }
            let owned: Vec<String> = owned.into_iter().map(hex128).collect();
            undo_claims = owned.clone();
            cmds.push(add_set(CLAIMED_SET, CLAIMED_MAX));
            cmds.push(add_set(&own, OWN_LL6_MAX));
            for set in [&own, &CLAIMED_SET.to_string()] {
                cmds.push(NftCmd::AddElements {
                    family: FAMILY,
                    table: TABLE.into(),
                    set: set.to_string(),
                    elems: owned.clone(),
                });
            }
            enforce_rules(a, mac, &own, &nets, &v4, &v6)
        }
        _ => compat_rules(&v4, &v6),
    };
    cmds.extend(
        rules
            .into_iter()
            .map(|(expr, comment)| cmd_rule(chain, expr, comment)),
    );
    let what = format!(
        "netdev {TABLE} chain {chain} on {}: {:?} antispoof for {} address(es), policy {policy}",
        a.device,
        a.mode,
        a.addrs.len()
    );
    let undo = remove_batch(chain, &undo_claims);
    Ok(Some(NftBatch {
        what,
        cmds,
        undo: Some(Box::new(undo)),
        removal: false,
    }))
}

type Rule = (String, Option<&'static str>);

/// The reference's accept rules (compat).
fn compat_rules(v4: &[String], v6: &[String]) -> Vec<Rule> {
    let mut arp = v4.to_vec();
    arp.push("0.0.0.0".into());
    let mut r: Vec<Rule> = vec![(format!("arp saddr ip {} accept", set_of(&arp)), None)];
    if !v4.is_empty() {
        r.push((format!("ip saddr {} accept", set_of(v4)), None));
    }
    r.push((
        "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept".into(),
        None,
    ));
    if !v6.is_empty() {
        r.push((format!("ip6 saddr {} accept", set_of(v6)), None));
    }
    r.push(("ip6 saddr fe80::/10 accept".into(), None));
    r.push((
        "ip6 saddr :: icmpv6 type nd-neighbor-solicit accept".into(),
        None,
    ));
    r
}

/// The rules of `enforce` (see the module documentation; the numbers are its list's).
fn enforce_rules(
    a: &Antispoof<'_>,
    mac: [u8; 6],
    own: &str,
    nets: &[Net],
    v4: &[String],
    v6: &[String],
) -> Vec<Rule> {
    let (m, mh) = (mac_text(&mac), mac_hex(&mac));
    let drop = |expr: String, why: &'static str| {
        let e = if expr.is_empty() {
            "counter drop".to_string()
        } else {
            format!("{expr} counter drop")
        };
        (e, Some(why))
    };
    let mut r: Vec<Rule> = Vec::new();
    // 1.
    r.push(drop(
        format!("ether saddr != {m}"),
        "xenplug: source MAC is not the vif's",
    ));
    // 2.
    if !a.ethertypes.is_empty() {
        let t: Vec<String> = a.ethertypes.iter().map(|t| format!("{t:#06x}")).collect();
        r.push((
            format!("ether type {} accept", set_of(&t)),
            Some("xenplug: ethertype allowed by the host"),
        ));
    }
    // 3.
    r.push(drop(
        "ether type != { ip, arp, ip6 }".into(),
        "xenplug: not IPv4, ARP or IPv6 (VLAN tags included)",
    ));
    // 4.
    let arp_eth = format!("arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether {m}");
    if !v4.is_empty() {
        r.push((
            format!(
                "{arp_eth} arp operation {{ request, reply }} arp saddr ip {} accept",
                set_of(v4)
            ),
            Some("xenplug: ARP from the vif's MAC and addresses"),
        ));
        r.push((
            format!(
                "{arp_eth} arp operation request arp saddr ip 0.0.0.0 arp daddr ip {} accept",
                set_of(v4)
            ),
            Some("xenplug: ARP probe for the vif's address"),
        ));
    }
    r.push(drop("ether type arp".into(), "xenplug: ARP spoofing"));
    // 5.
    r.push((
        "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept".into(),
        Some("xenplug: DHCP client"),
    ));
    r.push(drop(
        "udp sport { 67, 547 }".into(),
        "xenplug: DHCP or DHCPv6 server or relay",
    ));
    // 6.
    r.push(drop(
        "icmp type { redirect, router-advertisement }".into(),
        "xenplug: ICMP redirect or router advertisement",
    ));
    r.push(drop(
        "igmp type membership-query".into(),
        "xenplug: IGMP query",
    ));
    // 7.
    if !v4.is_empty() {
        r.push((
            format!("ip saddr {} accept", set_of(v4)),
            Some("xenplug: IPv4 from the vif's addresses"),
        ));
    }
    r.push(drop(
        "ether type ip".into(),
        "xenplug: IPv4 source spoofing",
    ));
    // 8.
    r.push(drop(
        "ip6 nexthdr != ipv6-icmp icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect }".into(),
        "xenplug: neighbour discovery behind an extension header",
    ));
    // 9.
    r.push(drop(
        "icmpv6 type { nd-router-advert, nd-redirect, router-renumbering, mld-listener-query }"
            .into(),
        "xenplug: router advertisement, redirect, renumbering or MLD query",
    ));
    // 10.
    r.push(drop(
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 length != { 24, 32 }".into(),
        "xenplug: malformed NS or NA",
    ));
    r.push(drop(
        "icmpv6 type nd-router-solicit ip6 length != { 8, 16 }".into(),
        "xenplug: malformed RS",
    ));
    r.push(drop(
        format!("icmpv6 type nd-neighbor-solicit @th,192,16 0x0101 @th,208,48 != {mh}"),
        "xenplug: NS source link-layer address is not the vif's",
    ));
    r.push(drop(
        format!("icmpv6 type nd-neighbor-advert @th,192,16 0x0201 @th,208,48 != {mh}"),
        "xenplug: NA target link-layer address is not the vif's",
    ));
    r.push(drop(
        format!("icmpv6 type nd-router-solicit @th,64,16 0x0101 @th,80,48 != {mh}"),
        "xenplug: RS source link-layer address is not the vif's",
    ));
    // 11. Targets: listed, or link-local (owned, checked next).
    let mut targets: Vec<String> = nets
        .iter()
        .filter(|n| n.addr.is_ipv6() && !link_local().contains(n))
        .map(|n| match n.range() {
            (lo, hi) if lo == hi => hex128(lo),
            (lo, hi) => format!("{}-{}", hex128(lo), hex128(hi)),
        })
        .collect();
    let (lo, hi) = link_local().range();
    targets.push(format!("{}-{}", hex128(lo), hex128(hi)));
    let target = "@th,64,128";
    let (na, dad) = (
        "icmpv6 type nd-neighbor-advert",
        "ip6 saddr :: icmpv6 type nd-neighbor-solicit",
    );
    r.push(drop(
        format!("{na} {target} != {}", set_of(&targets)),
        "xenplug: NA for an address that is not the vif's",
    ));
    r.push(drop(
        format!("{dad} {target} != {}", set_of(&targets)),
        "xenplug: DAD for an address that is not the vif's",
    ));
    // Link-local targets, then link-local sources: first come, first served.
    for (what, addr, ll, eui) in [
        (na, target, "@th,64,10 0x3fa", "@th,152,16"),
        (dad, target, "@th,64,10 0x3fa", "@th,152,16"),
        ("ip6 saddr fe80::/10", LL6_KEY, "", "@nh,152,16"),
    ] {
        let head = if ll.is_empty() {
            what.to_string()
        } else {
            format!("{what} {ll}")
        };
        r.push(drop(
            format!("{head} {addr} != @{own} {addr} @{CLAIMED_SET}"),
            "xenplug: another vif's link-local address",
        ));
        r.push((
            format!(
                "{head} {addr} != @{own} {eui} != 0xfffe add @{own} {{ {addr} }} add @{CLAIMED_SET} {{ {addr} }}"
            ),
            Some("xenplug: claim a link-local address (first come, first served)"),
        ));
        r.push(drop(
            format!("{head} {addr} != @{own}"),
            "xenplug: link-local address not claimable (EUI-64 form, or too many)",
        ));
    }
    // 12.
    if !v6.is_empty() {
        r.push((
            format!("ip6 saddr {} accept", set_of(v6)),
            Some("xenplug: IPv6 from the vif's addresses"),
        ));
    }
    r.push((
        "ip6 saddr :: icmpv6 type { nd-neighbor-solicit, nd-router-solicit, mld2-listener-report } accept".into(),
        Some("xenplug: DAD, RS or MLD report before an address"),
    ));
    r.push((
        format!("ip6 saddr fe80::/10 {LL6_KEY} @{own} accept"),
        Some("xenplug: IPv6 from the vif's link-local addresses"),
    ));
    r.push(drop(
        String::new(),
        "xenplug: IPv6 source spoofing, or anything else",
    ));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(a: &[&str]) -> Vec<Net> {
        a.iter().map(|s| Net::parse(s).unwrap()).collect()
    }

    fn spec<'a>(addrs: &'a [Net], mode: Mode) -> Antispoof<'a> {
        Antispoof {
            chain: "vif1.0",
            device: "vif1.0",
            addrs,
            mac: Some([0, 0x16, 0x3e, 0, 0, 5]),
            mode,
            ethertypes: &[],
        }
    }

    #[test]
    fn no_rules_without_addresses() {
        assert!(vif_batch(&spec(&[], Mode::Enforce)).unwrap().is_none());
        let a = nets(&["10.0.0.5"]);
        assert!(vif_batch(&spec(&a, Mode::Off)).unwrap().is_none());
    }

    #[test]
    fn enforce_batch_shape() {
        let addrs = nets(&["10.0.0.5", "2001:db8::5", "2001:db8::/64", "fe80::1"]);
        let b = vif_batch(&spec(&addrs, Mode::Enforce)).unwrap().unwrap();
        let text = b.text();
        assert!(text.contains(
            "add chain netdev xenplug vif1.0 { type filter hook ingress device \"vif1.0\" priority 0; policy drop; }"
        ), "{text}");
        assert!(text.contains("ether saddr != 00:16:3e:00:00:05 counter drop"));
        // The covered /128 is not repeated (nft refuses overlapping intervals).
        assert!(
            text.contains("ip6 saddr { 2001:db8::/64, fe80::1 } accept"),
            "{text}"
        );
        // The EUI-64 link-local and the listed one are owned from the start.
        assert!(
            text.contains(
                "add element netdev xenplug vif1.0-ll6 { 0xfe8000000000000002163efffe000005, 0xfe800000000000000000000000000001 }"
            ),
            "{text}"
        );
        assert_eq!(
            b.undo.unwrap().what,
            remove_batch("vif1.0", &["a".into(), "b".into()]).what
        );
        let c = vif_batch(&spec(&addrs, Mode::Compat)).unwrap().unwrap();
        assert!(c.text().contains("policy accept;"));
        assert!(!c.text().contains("ll6"));
    }

    #[test]
    fn enforce_needs_the_mac_and_safe_names() {
        let a = nets(&["10.0.0.5"]);
        let mut s = spec(&a, Mode::Enforce);
        s.mac = None;
        assert!(vif_batch(&s).unwrap_err().contains("mac node"));
        s.mac = Some([0; 6]);
        s.device = "we\"b";
        assert!(vif_batch(&s).unwrap_err().contains("we\"b"));
        s.device = "web0";
        s.chain = "5;x";
        assert!(vif_batch(&s).unwrap_err().contains("5;x"));
        // Compat does not need the MAC.
        let mut c = spec(&a, Mode::Compat);
        c.mac = None;
        assert!(vif_batch(&c).unwrap().is_some());
    }

    #[test]
    fn eui64() {
        assert_eq!(
            eui64_link_local(&[0, 0x16, 0x3e, 0x12, 0x34, 0x56]).to_string(),
            "fe80::216:3eff:fe12:3456"
        );
    }

    #[test]
    fn removal_releases_claims_and_tolerates_gone() {
        let b = remove_batch("vif1.0", &["0xfe80000000000000000000000000abcd".into()]);
        let text = b.text();
        assert!(b.removal);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "add chain netdev xenplug vif1.0");
        assert_eq!(lines[2], "delete chain netdev xenplug vif1.0");
        assert!(lines.contains(
            &"add element netdev xenplug ll6-claimed { 0xfe80000000000000000000000000abcd }"
        ));
        assert_eq!(
            lines.last().unwrap(),
            &"delete set netdev xenplug vif1.0-ll6"
        );
    }

    #[test]
    fn joined_batches() {
        let a = nets(&["10.0.0.5"]);
        let b = vif_batch(&spec(&a, Mode::Enforce)).unwrap().unwrap();
        let n = b.cmds.len();
        let both = b
            .clone()
            .then(remove_batch("x", &[]), Some(remove_batch("vif1.0", &[])));
        assert_eq!(both.cmds.len(), n + remove_batch("x", &[]).cmds.len());
        assert!(!both.removal);
        assert_eq!(both.undo.unwrap().what, remove_batch("vif1.0", &[]).what);
        assert!(
            remove_batch("a", &[])
                .then(remove_batch("b", &[]), None)
                .removal
        );
    }
}
