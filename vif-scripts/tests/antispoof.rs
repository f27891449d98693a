//! Antispoofing against crafted frames (privileged).
//!
//! Two "guests" (network namespaces `a` and `b`) sit behind veth "vifs" on one bridge, as
//! netback's vifs sit on `xenbr0`; `vif-bridge online` runs for both with `ip` listed. A raw
//! socket in `a` sends crafted frames (every attack of issue 12 and the controls a normal guest
//! needs), each tagged with an id in an Ethernet trailer and sent to the broadcast address so
//! the bridge floods it; a raw socket on `b`'s interface (promiscuous) is the receiver. The
//! sender is pinned to one CPU and ends with a fence frame: once the fence has arrived, every
//! earlier frame has been delivered or dropped. `bridge -j fdb` and `ip -j` are the other
//! oracles. A second test runs a normal guest's own stack (DHCP client, ARP, SLAAC with a
//! stable-privacy link-local address, neighbour discovery) through enforce mode.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::frames::*;
use common::{in_netns, nft_chains, run_in_ok, Xs};
use serde_json::Value;
use xenplug_testkit::{require_program, require_root, wait_until, NetNs};
use xenplug_vif::scripts::Script;

fn ready() -> bool {
    require_root() && require_program("nft") && require_program("ip") && require_program("bridge")
}

const A4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const B4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 6);
const OTHER_MAC: Mac = [0x00, 0x16, 0x3e, 0x99, 0x99, 0x99];

fn a6() -> Ipv6Addr {
    "2001:db8::5".parse().unwrap()
}
fn b6() -> Ipv6Addr {
    "2001:db8::6".parse().unwrap()
}
fn all_nodes() -> Ipv6Addr {
    "ff02::1".parse().unwrap()
}

/// The MAC of `dev` in `ns`.
fn mac_of(ns: &NetNs, dev: &str) -> Mac {
    let v: Value = serde_json::from_str(&ns.ip_json(&["link", "show", dev]).unwrap()).unwrap();
    parse_mac(v[0]["address"].as_str().unwrap())
}

/// The IPv6 addresses of `dev` in `ns` with their flags (`ip -j -6 addr`).
fn addrs6(ns: &NetNs, dev: &str) -> Vec<(Ipv6Addr, Vec<String>)> {
    let v: Value =
        serde_json::from_str(&ns.ip_json(&["-6", "addr", "show", "dev", dev]).unwrap()).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            let flags: Vec<String> = ["tentative", "dadfailed", "deprecated"]
                .iter()
                .filter(|f| a.get(**f).and_then(Value::as_bool) == Some(true))
                .map(|f| f.to_string())
                .collect();
            (a["local"].as_str().unwrap().parse().unwrap(), flags)
        })
        .collect()
}

/// Wait until `dev` in `ns` has a link-local address that passed duplicate address detection;
/// return it.
fn wait_ll(ns: &NetNs, dev: &str) -> Ipv6Addr {
    let mut found = None;
    wait_until(
        "a link-local address past DAD",
        Duration::from_secs(10),
        || {
            found = addrs6(ns, dev)
                .into_iter()
                .find(|(a, f)| a.segments()[0] == 0xfe80 && f.is_empty())
                .map(|(a, _)| a);
            found.is_some()
        },
    );
    found.unwrap()
}

/// `xenbr0` in `host`, and one guest namespace behind a veth "vif" per entry of `vifs`
/// (`(vif name, ip node)`), each guest's interface `eth0`, down until its vif's online.
struct Lab {
    host: NetNs,
    guests: Vec<NetNs>,
    xs: Xs,
}

impl Lab {
    fn new(tag: &str, vifs: &[(&str, &str)]) -> Lab {
        let host = NetNs::new(tag).unwrap();
        host.ip(&["link", "add", "xenbr0", "type", "bridge"])
            .unwrap();
        host.ip(&["addr", "add", "10.1.0.1/24", "dev", "xenbr0"])
            .unwrap();
        host.ip(&["addr", "add", "2001:db8::1/64", "dev", "xenbr0", "nodad"])
            .unwrap();
        host.ip(&["link", "set", "xenbr0", "up"]).unwrap();
        // br_netfilter (where loaded) would trim the frames' trailers, which carry their ids:
        // keep it out of this namespace's bridge.
        for f in ["iptables", "ip6tables", "arptables"] {
            let _ = host
                .command("sysctl")
                .args(["-q", "-w", &format!("net.bridge.bridge-nf-call-{f}=0")])
                .output();
        }
        let xs = Xs::new();
        let mut guests = Vec::new();
        for (i, (vif, ip)) in vifs.iter().enumerate() {
            let g = NetNs::new(&format!("{tag}{i}")).unwrap();
            host.ip(&[
                "link",
                "add",
                vif,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                g.name(),
            ])
            .unwrap();
            let (d, n) = vif
                .strip_prefix("vif")
                .and_then(|r| r.split_once('.'))
                .unwrap();
            let be = format!("backend/vif/{d}/{n}");
            xs.set(&format!("{be}/bridge"), "xenbr0");
            xs.set(&format!("{be}/ip"), ip);
            xs.set(&format!("{be}/mac"), &mac_str(&mac_of(&g, "eth0")));
            guests.push(g);
        }
        Lab { host, guests, xs }
    }

    fn online(&self, vif: &str, mode: &str) {
        let (d, n) = vif
            .strip_prefix("vif")
            .and_then(|r| r.split_once('.'))
            .unwrap();
        let be = format!("backend/vif/{d}/{n}");
        let env = [
            ("vif", vif),
            ("XENBUS_PATH", be.as_str()),
            ("antispoof", mode),
        ];
        run_in_ok(
            &self.host,
            Script::Bridge,
            &["online", "type_if=vif"],
            &env,
            &self.xs,
        );
    }

    fn fdb(&self) -> Vec<(String, String)> {
        let out = self
            .host
            .command("bridge")
            .args(["-j", "fdb", "show", "br", "xenbr0"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["mac"].as_str().unwrap_or("").to_string(),
                    e["ifname"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// One crafted frame: its id, what it is, and whether it must arrive.
struct Case {
    id: u32,
    what: &'static str,
    frame: Vec<u8>,
    arrives: bool,
    /// For an attack: part of the comment of the rule that must drop it.
    rule: &'static str,
}

/// The fence: a legitimate frame sent last.
const FENCE: u32 = 999;

/// Send `cases` (then the fence) from `eth0` in `from`, capture on `eth0` in `to`; the ids that
/// arrived.
fn exchange(from: &NetNs, to: &NetNs, cases: &[Case], fence: Vec<u8>) -> BTreeSet<u32> {
    to.ip(&["link", "set", "eth0", "promisc", "on"]).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = in_netns(to, move || {
        let fd = packet_socket("eth0");
        tx.send(()).unwrap();
        receive_until(&fd, FENCE, Duration::from_secs(10))
    });
    rx.recv().unwrap();
    let frames: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| tagged(c.frame.clone(), c.id))
        .chain(std::iter::once(tagged(fence, FENCE)))
        .collect();
    in_netns(from, move || {
        pin_to_first_cpu();
        let fd = packet_socket("eth0");
        for f in &frames {
            send_frame(&fd, f);
        }
    })
    .join()
    .unwrap();
    let seen = receiver.join().unwrap();
    assert!(seen.contains(&FENCE), "the fence never arrived: {seen:?}");
    seen.into_iter().filter(|i| *i != FENCE).collect()
}

/// A frame a normal guest sends: it must arrive.
fn ok(id: u32, what: &'static str, frame: Vec<u8>) -> Case {
    Case {
        id,
        what,
        frame,
        arrives: true,
        rule: "",
    }
}

/// An attack: it must not arrive, and the rule whose comment contains `rule` drops it.
fn bad(id: u32, what: &'static str, rule: &'static str, frame: Vec<u8>) -> Case {
    Case {
        id,
        what,
        frame,
        arrives: false,
        rule,
    }
}

/// Every attack of the issue and the frames a normal guest sends, from guest `a`
/// (MAC `ma`, link-local `lla`) next to guest `b` (MAC `mb`, link-local `llb`).
#[rustfmt::skip]
fn cases(ma: Mac, lla: Ipv6Addr, mb: Mac, llb: Ipv6Addr) -> Vec<Case> {
    let bc = BROADCAST;
    let ip4 = |p: Vec<u8>| eth(bc, ma, ETH_IP, &p);
    let ip6 = |p: Vec<u8>| eth(bc, ma, ETH_IP6, &p);
    let new_ll = |i: u16| Ipv6Addr::new(0xfe80, 0, 0, 0, 0xa5a5, 0, 0, i);
    let d = b"xenplug";
    let any4 = Ipv4Addr::UNSPECIFIED;
    let bc4 = Ipv4Addr::BROADCAST;
    let fe80_1: Ipv6Addr = "fe80::1".parse().unwrap();
    let mut v = vec![
        // Controls: what a normal guest sends.
        ok(100, "IPv4 from its address", ip4(udp4(A4, bc4, 9, 9, d))),
        ok(101, "ARP request from its MAC and address", eth(bc, ma, ETH_ARP, &arp(1, ma, A4, [0; 6], B4))),
        ok(102, "ARP probe (sender 0.0.0.0) for its address", eth(bc, ma, ETH_ARP, &arp(1, ma, any4, [0; 6], A4))),
        ok(103, "DHCP discover 0.0.0.0:68 -> 255.255.255.255:67", ip4(udp4(any4, bc4, 68, 67, d))),
        ok(104, "IPv6 from its address", ip6(udp6(a6(), all_nodes(), 9, 9, d))),
        ok(105, "NS from its link-local (SLLA = its MAC) for b", ip6(ns(lla, llb, llb, Some(ma)))),
        ok(106, "NA for its own link-local (TLLA = its MAC)", ip6(na(lla, all_nodes(), lla, Some(ma)))),
        ok(107, "DAD for a new (stable-privacy-like) link-local", ip6(dad_ns(new_ll(1)))),
        ok(108, "IPv6 from that new link-local once claimed", ip6(udp6(new_ll(1), all_nodes(), 9, 9, d))),
        ok(109, "RS from its link-local", ip6(rs(lla, ma))),
        ok(110, "MLDv2 report from :: (hop-by-hop header)", ip6(mld2_report(Ipv6Addr::UNSPECIFIED, "ff02::1:ff00:5".parse().unwrap()))),
        ok(111, "DHCPv6 solicit 546 -> 547", ip6(udp6(lla, "ff02::1:2".parse().unwrap(), 546, 547, d))),
        ok(112, "NA for its own global address", ip6(na(a6(), all_nodes(), a6(), Some(ma)))),
        // Attacks, with the rule that must stop each.
        bad(200, "another VM's MAC as source, own IPv4", "source MAC", eth(bc, mb, ETH_IP, &udp4(A4, bc4, 9, 9, d))),
        bad(201, "an unlisted MAC as source, own IPv4", "source MAC", eth(bc, OTHER_MAC, ETH_IP, &udp4(A4, bc4, 9, 9, d))),
        bad(202, "ARP reply, own IP, another VM's sender MAC", "ARP spoofing", eth(bc, ma, ETH_ARP, &arp(2, mb, A4, bc, A4))),
        bad(203, "ARP reply claiming another VM's IP", "ARP spoofing", eth(bc, ma, ETH_ARP, &arp(2, ma, B4, bc, B4))),
        bad(204, "ARP from another VM's MAC (Ethernet source)", "source MAC", eth(bc, mb, ETH_ARP, &arp(2, ma, A4, bc, A4))),
        bad(205, "router advertisement from its link-local", "router advertisement, redirect", ip6(ra(lla, ma, Some("2001:db8:bad::".parse().unwrap())))),
        bad(206, "DHCP server reply 67 -> 68 from its address", "DHCP or DHCPv6 server", ip4(udp4(A4, bc4, 67, 68, d))),
        bad(207, "link-local IPv6 with another VM's MAC", "source MAC", eth(bc, mb, ETH_IP6, &udp6(lla, all_nodes(), 9, 9, d))),
        bad(208, "NA claiming another VM's link-local", "another vif's link-local", ip6(na(lla, all_nodes(), llb, Some(ma)))),
        bad(209, "NA claiming another VM's global address", "NA for an address", ip6(na(a6(), all_nodes(), b6(), Some(ma)))),
        bad(210, "NS with another VM's MAC as SLLA", "NS source link-layer", ip6(ns(lla, all_nodes(), fe80_1, Some(mb)))),
        bad(211, "NS from another VM's link-local", "another vif's link-local", ip6(ns(llb, all_nodes(), fe80_1, Some(ma)))),
        bad(212, "DAD for another VM's link-local", "another vif's link-local", ip6(dad_ns(llb))),
        bad(213, "ICMPv6 redirect", "router advertisement, redirect", ip6(redirect6(lla, llb, lla, "2001:db8:1::1".parse().unwrap()))),
        bad(214, "DHCPv6 server reply 547 -> 546", "DHCP or DHCPv6 server", ip6(udp6(lla, llb, 547, 546, d))),
        bad(215, "MLD query", "MLD query", ip6(mld_query(lla))),
        bad(216, "VLAN-tagged IPv4 from its address", "VLAN tags", eth_vlan(bc, ma, 10, ETH_IP, &udp4(A4, bc4, 9, 9, d))),
        bad(217, "other ethertype (0x88b5)", "not IPv4, ARP or IPv6", eth(bc, ma, 0x88b5, d)),
        bad(218, "IPv4 from an unlisted address", "IPv4 source spoofing", ip4(udp4(Ipv4Addr::new(10, 1, 0, 66), bc4, 9, 9, d))),
        bad(219, "IPv6 from an unlisted address", "IPv6 source spoofing", ip6(udp6("2001:db8::66".parse().unwrap(), all_nodes(), 9, 9, d))),
        bad(220, "ICMP redirect", "ICMP redirect", ip4(icmp4(A4, B4, 5, 1, &[10, 1, 0, 5, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 0, 6, 8, 8, 8, 8, 0, 9, 0, 9, 0, 8, 0, 0]))),
        bad(221, "NA for its own link-local with another VM's MAC as TLLA", "NA target link-layer", ip6(na(lla, all_nodes(), lla, Some(mb)))),
        bad(222, "NA claiming another VM's link-local behind a hop-by-hop header", "behind an extension header", ip6(na_behind_hbh(lla, llb, ma))),
        bad(223, "802.3/LLC frame (no ethertype)", "not IPv4, ARP or IPv6", eth(bc, ma, 0x0026, &[0x42, 0x42, 0x03, 0, 0, 0, 0])),
        bad(224, "IPv6 from another VM's link-local", "another vif's link-local", ip6(udp6(llb, all_nodes(), 9, 9, d))),
        bad(226, "NS with a second, unchecked link-layer option", "malformed NS", ip6(ns_two_options(lla, ma, mb))),
        bad(227, "IPv6 from an EUI-64 link-local not its own", "not claimable", ip6(udp6(eui64_ll(&OTHER_MAC), all_nodes(), 9, 9, d))),
    ];
    // First come, first served is bounded: six more link-locals fill the vif's set (eight with
    // its own EUI-64 address and the first one), the ninth is refused.
    for i in 2..=7 {
        v.push(ok(110 + u32::from(i) * 10, "DAD for one more link-local", ip6(dad_ns(new_ll(i)))));
    }
    v.push(bad(225, "a ninth link-local (the vif's set is full)", "not claimable", ip6(udp6(new_ll(9), all_nodes(), 9, 9, d))));
    v
}

/// A neighbour solicitation with two source link-layer address options, the second another
/// VM's MAC.
fn ns_two_options(src: Ipv6Addr, first: Mac, second: Mac) -> Vec<u8> {
    let dst = all_nodes();
    let target: Ipv6Addr = "fe80::1".parse().unwrap();
    let mut b = vec![0u8; 4];
    b.extend_from_slice(&target.octets());
    for m in [first, second] {
        b.extend_from_slice(&[1, 1]);
        b.extend_from_slice(&m);
    }
    icmp6(src, dst, 135, 0, &b)
}

/// A neighbour advertisement for `target` behind a hop-by-hop extension header.
fn na_behind_hbh(src: Ipv6Addr, target: Ipv6Addr, tlla: Mac) -> Vec<u8> {
    let inner = na(src, all_nodes(), target, Some(tlla));
    // The ICMPv6 message of `inner` (its checksum covers the same pseudo-header).
    let icmp = &inner[40..];
    let mut p = vec![58, 0, 1, 4, 0, 0, 0, 0];
    p.extend_from_slice(icmp);
    let mut pkt = ipv6(src, all_nodes(), 0, 255, &p);
    // Payload length already covers the extension header.
    pkt.truncate(40 + p.len());
    pkt
}

/// The outcome of `cases` as a table, and the cases whose outcome was wrong.
fn judge(cases: &[Case], arrived: &BTreeSet<u32>) -> (String, Vec<String>) {
    let mut table = String::new();
    let mut wrong = Vec::new();
    for c in cases {
        let got = arrived.contains(&c.id);
        let line = format!(
            "{:>4} {:<9} {:<8} {}",
            c.id,
            if got { "arrived" } else { "dropped" },
            if got == c.arrives { "ok" } else { "WRONG" },
            c.what
        );
        table.push_str(&line);
        table.push('\n');
        if got != c.arrives {
            wrong.push(line);
        }
    }
    (table, wrong)
}

#[test]
fn enforce_drops_every_spoof_and_passes_a_normal_guest_s_frames() {
    if !ready() {
        return;
    }
    let lab = Lab::new(
        "sp",
        &[
            ("vif5.0", "10.1.0.5 2001:db8::5"),
            ("vif6.0", "10.1.0.6 2001:db8::6"),
        ],
    );
    let (a, b) = (&lab.guests[0], &lab.guests[1]);
    let (ma, mb) = (mac_of(a, "eth0"), mac_of(b, "eth0"));
    a.ip(&["addr", "add", "10.1.0.5/24", "dev", "eth0"])
        .unwrap();
    lab.online("vif5.0", "enforce");
    lab.online("vif6.0", "enforce");
    // Each guest's kernel claims its link-local address with DAD, through its vif.
    a.ip(&["link", "set", "eth0", "up"]).unwrap();
    b.ip(&["link", "set", "eth0", "up"]).unwrap();
    let lla = wait_ll(a, "eth0");
    let llb = wait_ll(b, "eth0");
    let cs = cases(ma, lla, mb, llb);
    let fence = eth(
        BROADCAST,
        ma,
        ETH_IP,
        &udp4(A4, Ipv4Addr::BROADCAST, 9, 9, b"fence"),
    );
    let arrived = exchange(a, b, &cs, fence);
    let (table, wrong) = judge(&cs, &arrived);
    eprintln!("enforce, a -> b:\n{table}");
    // The bridge never learned b's MAC (or the made-up one) on a's port.
    let fdb = lab.fdb();
    let stolen: Vec<_> = fdb
        .iter()
        .filter(|(m, i)| i == "vif5.0" && (*m == mac_str(&mb) || *m == mac_str(&OTHER_MAC)))
        .collect();
    eprintln!("fdb entries on vif5.0 for b's or a made-up MAC: {stolen:?}");
    assert!(wrong.is_empty(), "wrong outcomes:\n{}", wrong.join("\n"));
    assert!(stolen.is_empty(), "{fdb:?}");
    // Each attack again, alone: the rule that drops it is the one documented for it (its
    // counter moves, no other drop counter does).
    let mut misjudged = Vec::new();
    for c in cs.iter().filter(|c| !c.arrives) {
        let before = drop_counters(&lab.host, "vif5.0");
        let one = [Case {
            id: c.id,
            what: c.what,
            frame: c.frame.clone(),
            arrives: false,
            rule: c.rule,
        }];
        let fence = eth(
            BROADCAST,
            ma,
            ETH_IP,
            &udp4(A4, Ipv4Addr::BROADCAST, 9, 9, b"fence"),
        );
        let arrived = exchange(a, b, &one, fence);
        let after = drop_counters(&lab.host, "vif5.0");
        let moved: Vec<&String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        if !arrived.is_empty() || moved.len() != 1 || !moved[0].contains(c.rule) {
            misjudged.push(format!(
                "{} {}: arrived {arrived:?}, counters moved {moved:?}, expected \"{}\"",
                c.id, c.what, c.rule
            ));
        }
    }
    assert!(misjudged.is_empty(), "{}", misjudged.join("\n"));
    assert!(fdb.contains(&(mac_str(&mb), "vif6.0".into())), "{fdb:?}");

    // Teardown releases the link-local addresses a's vif claimed (the datapath added them to
    // its set: the teardown reads them from the kernel): another vif may take them.
    let before = nft_set(&lab.host, "ll6-claimed");
    assert!(
        before.iter().any(|e| e.contains("a5a5")),
        "a's vif claimed fe80::a5a5:…: {before:?}"
    );
    let env = [("vif", "vif5.0"), ("XENBUS_PATH", "backend/vif/5/0")];
    run_in_ok(
        &lab.host,
        Script::Bridge,
        &["offline", "type_if=vif"],
        &env,
        &lab.xs,
    );
    let claimed = nft_set(&lab.host, "ll6-claimed");
    assert!(!claimed.iter().any(|e| e.contains("a5a5")), "{claimed:?}");
    assert!(!claimed.is_empty(), "b's claims stay: {claimed:?}");
    assert_eq!(nft_chains(&lab.host), ["vif6.0"]);
}

/// The packets each drop rule of `chain` counted, by comment (rules sharing a comment summed).
fn drop_counters(ns: &NetNs, chain: &str) -> std::collections::BTreeMap<String, u64> {
    let out = ns
        .command("nft")
        .args(["-j", "list", "chain", "netdev", "xenplug", chain])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut m = std::collections::BTreeMap::new();
    for r in v["nftables"].as_array().unwrap() {
        let r = &r["rule"];
        let (Some(comment), Some(expr)) = (r["comment"].as_str(), r["expr"].as_array()) else {
            continue;
        };
        if let Some(n) = expr.iter().find_map(|e| e["counter"]["packets"].as_u64()) {
            *m.entry(comment.to_string()).or_insert(0) += n;
        }
    }
    m
}

/// The elements of set `name` in table `netdev xenplug`, as `nft -j` prints them.
fn nft_set(ns: &NetNs, name: &str) -> Vec<String> {
    let out = ns
        .command("nft")
        .args(["-j", "list", "set", "netdev", "xenplug", name])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten()
        .map(|e| {
            e.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string())
        })
        .collect()
}

#[test]
fn compat_and_off_keep_their_meaning() {
    if !ready() {
        return;
    }
    for mode in ["compat", "off"] {
        let lab = Lab::new(
            &format!("cm{}", &mode[..1]),
            &[("vif5.0", "10.1.0.5 2001:db8::5"), ("vif6.0", "10.1.0.6")],
        );
        let (a, b) = (&lab.guests[0], &lab.guests[1]);
        lab.online("vif5.0", mode);
        lab.online("vif6.0", mode);
        a.ip(&["link", "set", "eth0", "up"]).unwrap();
        b.ip(&["link", "set", "eth0", "up"]).unwrap();
        let (ma, mb) = (mac_of(a, "eth0"), mac_of(b, "eth0"));
        let lla = wait_ll(a, "eth0");
        let llb = wait_ll(b, "eth0");
        // Compat adds accept rules only (policy accept), off adds nothing: the receiver sees
        // every frame, attacks included. This is also the control of the oracle: it sees the
        // attacks when nothing drops them.
        let mut cs = cases(ma, lla, mb, llb);
        for c in &mut cs {
            c.arrives = true;
        }
        // The link-local set's bound is enforce's.
        cs.retain(|c| c.id != 225);
        let fence = eth(
            BROADCAST,
            ma,
            ETH_IP,
            &udp4(A4, Ipv4Addr::BROADCAST, 9, 9, b"fence"),
        );
        let arrived = exchange(a, b, &cs, fence);
        let (table, wrong) = judge(&cs, &arrived);
        eprintln!("{mode}, a -> b:\n{table}");
        assert!(
            wrong.is_empty(),
            "{mode}: wrong outcomes:\n{}",
            wrong.join("\n")
        );
        let chains = nft_chains(&lab.host);
        match mode {
            "off" => assert!(chains.is_empty(), "{chains:?}"),
            _ => assert_eq!(chains, ["vif5.0", "vif6.0"]),
        }
    }
}

/// Wait until UDP port `port` is bound in `ns` (`/proc/net/udp` of the namespace).
fn wait_udp_listener(ns: &NetNs, port: u16) {
    let hex = format!(":{port:04X} ");
    wait_until("a UDP listener", Duration::from_secs(10), || {
        ns.command("cat")
            .arg("/proc/net/udp")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).lines().any(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|a| format!("{a} ").contains(&hex))
                })
            })
            .unwrap_or(false)
    });
}

fn ping(ns: &NetNs, args: &[&str]) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "2"])
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn a_normal_guest_keeps_working_in_enforce_mode() {
    if !ready() || !require_program("busybox") || !require_program("ping") {
        return;
    }
    let lab = Lab::new("ng", &[("vif5.0", "10.1.0.5 2001:db8::/64")]);
    let a = &lab.guests[0];
    let ma = mac_of(a, "eth0");
    // Stable-privacy addresses (RFC 7217), link-local included, as NetworkManager makes them.
    for (k, v) in [
        ("stable_secret", "2001:db8:1234:5678::abcd"),
        ("addr_gen_mode", "2"),
    ] {
        let r = a
            .command("sysctl")
            .arg("-w")
            .arg(format!("net.ipv6.conf.eth0.{k}={v}"))
            .output()
            .unwrap();
        assert!(r.status.success(), "{r:?}");
    }
    lab.online("vif5.0", "enforce");
    a.ip(&["link", "set", "eth0", "up"]).unwrap();
    let lla = wait_ll(a, "eth0");
    assert_ne!(lla, eui64_ll(&ma), "a stable-privacy link-local address");

    // DHCP: a busybox server on the bridge, the guest's client through the vif.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "interface xenbr0\nstart 10.1.0.5\nend 10.1.0.5\nlease_file {0}/leases\npidfile {0}/pid\nopt subnet 255.255.255.0\nstatic_lease {1} 10.1.0.5\n",
            dir.path().display(),
            mac_str(&ma)
        ),
    )
    .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        lab.host
            .command("busybox")
            .args(["udhcpd", "-f"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_udp_listener(&lab.host, 67);
    let out = a
        .command("busybox")
        .args([
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-t",
            "5",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("lease of 10.1.0.5 obtained"),
        "{text}"
    );

    // ARP, both ways.
    a.ip(&["addr", "add", "10.1.0.5/24", "dev", "eth0"])
        .unwrap();
    assert!(ping(a, &["10.1.0.1"]), "guest -> host over IPv4");
    assert!(ping(&lab.host, &["10.1.0.5"]), "host -> guest over IPv4");

    // SLAAC from a router advertisement sent on the bridge: a stable-privacy global address.
    let host_mac = mac_of(&lab.host, "xenbr0");
    let host_ll = wait_ll(&lab.host, "xenbr0");
    let ra_frame = eth(
        BROADCAST,
        host_mac,
        ETH_IP6,
        &ra(host_ll, host_mac, Some("2001:db8::".parse().unwrap())),
    );
    in_netns(&lab.host, move || {
        send_frame(&packet_socket("xenbr0"), &ra_frame)
    })
    .join()
    .unwrap();
    let mut global = None;
    wait_until("a SLAAC address past DAD", Duration::from_secs(10), || {
        global = addrs6(a, "eth0")
            .into_iter()
            .find(|(g, f)| g.segments()[0] == 0x2001 && f.is_empty())
            .map(|(g, _)| g);
        global.is_some()
    });
    let global = global.unwrap();
    assert_ne!(
        &global.octets()[8..],
        &eui64_ll(&ma).octets()[8..],
        "stable-privacy IID"
    );
    // Neighbour discovery both ways, global and link-local.
    assert!(ping(a, &["-6", "2001:db8::1"]), "guest -> host, global");
    let target = format!("{global}");
    assert!(ping(&lab.host, &["-6", &target]), "host -> guest, global");
    let ll_target = format!("{lla}%xenbr0");
    assert!(
        ping(&lab.host, &["-6", &ll_target]),
        "host -> guest's stable-privacy link-local"
    );
    let host_ll_target = format!("{host_ll}%eth0");
    assert!(
        ping(a, &["-6", &host_ll_target]),
        "guest -> host's link-local"
    );
    // Nothing the guest did was a duplicate.
    assert!(addrs6(a, "eth0")
        .iter()
        .all(|(_, f)| !f.contains(&"dadfailed".to_string())));
}

#[test]
fn ethertypes_the_host_allows_pass_from_the_vif_s_mac_only() {
    if !ready() {
        return;
    }
    let lab = Lab::new("et", &[("vif5.0", "10.1.0.5"), ("vif6.0", "10.1.0.6")]);
    let (a, b) = (&lab.guests[0], &lab.guests[1]);
    let ma = mac_of(a, "eth0");
    let env = [
        ("vif", "vif5.0"),
        ("XENBUS_PATH", "backend/vif/5/0"),
        ("XENPLUG_ANTISPOOF_ETHERTYPES", "0x88cc"),
    ];
    run_in_ok(
        &lab.host,
        Script::Bridge,
        &["online", "type_if=vif"],
        &env,
        &lab.xs,
    );
    lab.online("vif6.0", "off");
    a.ip(&["link", "set", "eth0", "up"]).unwrap();
    b.ip(&["link", "set", "eth0", "up"]).unwrap();
    wait_ll(b, "eth0");
    let lldp = b"\x02\x07\x04xenplug";
    let cs = [
        ok(
            1,
            "LLDP (0x88cc), allowed by the host",
            eth(BROADCAST, ma, 0x88cc, lldp),
        ),
        bad(
            2,
            "LLDP from another MAC",
            "source MAC",
            eth(BROADCAST, OTHER_MAC, 0x88cc, lldp),
        ),
        bad(
            3,
            "0x88b5, not allowed",
            "not IPv4, ARP or IPv6",
            eth(BROADCAST, ma, 0x88b5, lldp),
        ),
    ];
    let fence = eth(
        BROADCAST,
        ma,
        ETH_IP,
        &udp4(A4, Ipv4Addr::BROADCAST, 9, 9, b"fence"),
    );
    let arrived = exchange(a, b, &cs, fence);
    let (table, wrong) = judge(&cs, &arrived);
    assert!(wrong.is_empty(), "{table}");
}
