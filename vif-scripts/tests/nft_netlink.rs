//! The antispoofing batches over netlink against `nft -f -`, side by side (privileged).
//!
//! For each vif configuration, one network namespace gets the batch from `nft -f -` (the text
//! every earlier release applied) and another gets the same batch compiled to netlink messages
//! ([`xenplug_vif::nft_netlink::compile`]); the two rulesets must be the same twice over: the
//! bytecode and set elements the kernel holds (`nft --debug=netlink list ruleset`) and what
//! `nft list ruleset` prints. The same for a batch applied again over itself (an `online`
//! repeated), for one vif after another sharing the claims set, with `nft` and netlink mixed,
//! and for the removal.

use xenplug_netlink::nft::Nft;
use xenplug_testkit::{require_program, require_root, NetNs};
use xenplug_vif::firewall::{eui64_link_local, remove_batch, vif_batch, Antispoof};
use xenplug_vif::nft_netlink::compile;
use xenplug_vif::types::{Mode, Net, NftBatch};

fn ready() -> bool {
    require_root() && require_program("nft") && require_program("ip")
}

fn nets(a: &[&str]) -> Vec<Net> {
    a.iter().map(|s| Net::parse(s).unwrap()).collect()
}

/// A namespace with devices `vif1.0` and `vif2.0` to hook (veths: this kernel may have no
/// dummy devices).
fn host(tag: &str) -> NetNs {
    let ns = NetNs::new(tag).unwrap();
    for (d, peer) in [("vif1.0", "p1"), ("vif2.0", "p2")] {
        ns.ip(&["link", "add", d, "type", "veth", "peer", "name", peer])
            .unwrap();
    }
    ns
}

fn by_nft(ns: &NetNs, b: &NftBatch) {
    ns.nft_script(&b.text());
}

fn by_netlink(ns: &NetNs, b: &NftBatch) {
    let msgs = compile(&b.cmds).unwrap_or_else(|e| panic!("cannot compile ({e}):\n{b}"));
    ns.run(|| Nft::open().and_then(|mut n| n.apply(msgs)))
        .unwrap_or_else(|e| panic!("netlink refused ({e}):\n{b}"));
}

/// The ruleset twice: bytecode with set elements, and the listing.
fn ruleset(ns: &NetNs) -> (String, String) {
    (
        ns.nft(&["--debug=netlink", "list", "ruleset"]),
        ns.nft(&["list", "ruleset"]),
    )
}

/// Panic with the first lines where `by_nft` and `by_netlink` differ, if they do.
fn equal_text(what: &str, by_nft: &str, by_netlink: &str) {
    if by_nft == by_netlink {
        return;
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (by_nft.lines().collect(), by_netlink.lines().collect());
    let i = (0..a.len().max(b.len()))
        .find(|&i| a.get(i) != b.get(i))
        .unwrap_or(0);
    let window = |l: &[&str]| l[i.saturating_sub(8).min(l.len())..(i + 8).min(l.len())].join("\n");
    panic!(
        "{what}: differs at line {i}\n--- by nft:\n{}\n--- over netlink:\n{}",
        window(&a),
        window(&b)
    );
}

/// The bytecode listing with each set's elements sorted: a hash set lists them in the order of
/// its buckets, which depends on a random seed of its own, whatever filled it.
fn sorted_elements(listing: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut elements: Vec<&str> = Vec::new();
    let flush = |out: &mut Vec<String>, elements: &mut Vec<&str>| {
        elements.sort_unstable();
        out.extend(elements.drain(..).map(String::from));
    };
    for line in listing.lines() {
        if line.starts_with("\telement ") {
            elements.push(line);
        } else {
            flush(&mut out, &mut elements);
            out.push(line.to_string());
        }
    }
    flush(&mut out, &mut elements);
    out.join("\n")
}

fn same(what: &str, a: &NetNs, b: &NetNs) {
    let (ca, la) = ruleset(a);
    let (cb, lb) = ruleset(b);
    let (ca, cb) = (sorted_elements(&ca), sorted_elements(&cb));
    equal_text(&format!("{what}, listing"), &la, &lb);
    equal_text(&format!("{what}, bytecode"), &ca, &cb);
    assert!(
        la.contains("table netdev xenplug"),
        "{what}: nothing installed:\n{la}"
    );
}

#[derive(Clone, Copy)]
enum Path {
    Nft,
    Netlink,
}

fn apply(ns: &NetNs, p: Path, b: &NftBatch) {
    match p {
        Path::Nft => by_nft(ns, b),
        Path::Netlink => by_netlink(ns, b),
    }
}

struct Case {
    addrs: &'static [&'static str],
    mode: Mode,
    ethertypes: &'static [u16],
}

fn spec<'a>(chain: &'a str, addrs: &'a [Net], c: &Case, mac: u8) -> Antispoof<'a> {
    Antispoof {
        chain,
        device: chain,
        addrs,
        mac: Some([0, 0x16, 0x3e, 0, 0x12, mac]),
        mode: c.mode,
        ethertypes: c.ethertypes,
    }
}

const CASES: &[Case] = &[
    // What the benchmark and most hosts have: one IPv4 address.
    Case {
        addrs: &["10.0.0.5"],
        mode: Mode::Enforce,
        ethertypes: &[],
    },
    Case {
        addrs: &["2001:db8::5"],
        mode: Mode::Enforce,
        ethertypes: &[],
    },
    // Prefixes of whole and partial bytes, adjacent hosts (nft joins them), a listed
    // link-local address, a covered host, extra ethertypes (one: a comparison; two: a set).
    Case {
        addrs: &[
            "10.0.0.5",
            "10.0.0.6",
            "192.0.2.0/24",
            "198.51.100.0/23",
            "2001:db8::5",
            "2001:db8::/64",
            "2001:db8:1::/61",
            "fe80::1",
        ],
        mode: Mode::Enforce,
        ethertypes: &[0x88cc],
    },
    Case {
        addrs: &["10.0.0.5", "2001:db8::5", "2001:db8::6"],
        mode: Mode::Enforce,
        ethertypes: &[0x88cc, 0x88f7],
    },
    // Ranges that start at 0 or end at the top (no end marker for those).
    Case {
        addrs: &["0.0.0.0/1", "255.255.255.0/24", "::/1", "ffff::/16"],
        mode: Mode::Enforce,
        ethertypes: &[],
    },
    Case {
        addrs: &["10.0.0.5"],
        mode: Mode::Compat,
        ethertypes: &[],
    },
    Case {
        addrs: &["10.0.0.5", "10.9.0.0/16", "2001:db8::5", "2001:db8:2::/48"],
        mode: Mode::Compat,
        ethertypes: &[],
    },
];

#[test]
fn netlink_installs_what_nft_installs() {
    if !ready() {
        return;
    }
    for (i, c) in CASES.iter().enumerate() {
        let addrs = nets(c.addrs);
        let b = vif_batch(&spec("vif1.0", &addrs, c, 5)).unwrap().unwrap();
        let what = format!("case {i} ({:?} {:?})", c.mode, c.addrs);
        let (a, n) = (host("nfta"), host("nftb"));
        by_nft(&a, &b);
        by_netlink(&n, &b);
        same(&what, &a, &n);
        // `online` again over the same vif.
        by_nft(&a, &b);
        by_netlink(&n, &b);
        same(&format!("{what}, again"), &a, &n);
    }
}

#[test]
fn two_vifs_mixing_nft_and_netlink() {
    if !ready() {
        return;
    }
    let c = &CASES[2];
    let addrs = nets(c.addrs);
    let other: Vec<Net> = nets(&["10.0.0.7", "2001:db8::7"]);
    let first = vif_batch(&spec("vif1.0", &addrs, c, 5)).unwrap().unwrap();
    let second = vif_batch(&spec("vif2.0", &other, c, 6)).unwrap().unwrap();
    // Whoever made the table and the claims set, the other path adds to them.
    for (p1, p2) in [
        (Path::Nft, Path::Netlink),
        (Path::Netlink, Path::Nft),
        (Path::Netlink, Path::Netlink),
    ] {
        let (a, n) = (host("mixa"), host("mixb"));
        by_nft(&a, &first);
        by_nft(&a, &second);
        apply(&n, p1, &first);
        apply(&n, p2, &second);
        same("two vifs", &a, &n);
        // The first vif goes; its claims are released, the second's stay.
        let ll = vec![format!(
            "0x{:032x}",
            u128::from(eui64_link_local(&[0, 0x16, 0x3e, 0, 0x12, 5]))
        )];
        let gone = remove_batch("vif1.0", &ll);
        by_nft(&a, &gone);
        apply(&n, p1, &gone);
        same("two vifs, one removed", &a, &n);
    }
}
