//! What a vif teardown's nftables work costs (issue 21), over `NETLINK_NETFILTER` (what the vif
//! scripts do now) against the `nft` runs they made before, side by side in one run, in a
//! throwaway network namespace: reading the vif's link-local claims (`NFT_MSG_GETSETELEM`
//! against `nft -j list set`), and removing its chain, its set and its claims (one netlink
//! transaction against `nft -f -` with the same batch's text).
//!
//! `sudo cargo run --release -p xenplug-netlink --example set_listing [RUNS]` prints the median
//! and p90 of each and the ratios. A benchmark, not a test. Needs root and nft.
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use xenplug_netlink::nft::{Nft, Removal};
use xenplug_testkit::NetNs;

/// Run `nft -f -` with `script` on the calling thread's namespace.
fn nft_f(script: &str) -> bool {
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    c.wait().unwrap().success()
}

/// A vif's chain, its set and its claims, as the antispoofing leaves them (in miniature).
const VIF: &str = "add chain netdev xenplug vif5.0 { type filter hook ingress device \"d5\" priority 0; policy accept; }\n\
    add set netdev xenplug vif5.0-ll6 { typeof @nh,64,128; size 8; flags dynamic; }\n\
    add rule netdev xenplug vif5.0 meta protocol ip6 @nh,64,128 @vif5.0-ll6 accept\n\
    add rule netdev xenplug vif5.0 meta protocol ip6 @nh,64,128 @ll6-claimed drop\n\
    add element netdev xenplug vif5.0-ll6 { 0xfe800000000000000000000000000005 }\n\
    add element netdev xenplug ll6-claimed { 0xfe800000000000000000000000000005 }\n";

/// What the vif scripts gave `nft -f -` for its removal (`firewall::remove_batch`).
const REMOVE: &str = "add table netdev xenplug\n\
    add chain netdev xenplug vif5.0\n\
    delete chain netdev xenplug vif5.0\n\
    add set netdev xenplug vif5.0-ll6 { typeof @nh,64,128; size 8; flags dynamic; }\n\
    add set netdev xenplug ll6-claimed { typeof @nh,64,128; size 65535; flags dynamic; }\n\
    add element netdev xenplug ll6-claimed { 0xfe800000000000000000000000000005 }\n\
    delete element netdev xenplug ll6-claimed { 0xfe800000000000000000000000000005 }\n\
    delete set netdev xenplug vif5.0-ll6\n";

fn stats(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() * 9 / 10])
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let ns = NetNs::new("setlist").expect("network namespace (root?)");
    // A vif's set as the antispoofing chain leaves it: the EUI-64 address, a listed one and a
    // claimed stable-privacy one.
    ns.nft_script(
        "table netdev xenplug {\n\
         set vif5.0-ll6 { typeof @nh,64,128; size 8; flags dynamic; }\n\
         }\n\
         add element netdev xenplug vif5.0-ll6 { 0xfe8000000000000002163efffe123456, \
         0xfe800000000000000000000000000005, 0xfe80000000000000a5a53c1e99b20f41 }\n",
    );
    let netlink: Vec<f64> = ns.run(|| {
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let keys =
                    xenplug_netlink::nft::set_elements("netdev", "xenplug", "vif5.0-ll6").unwrap();
                assert_eq!(keys.len(), 3);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect()
    });
    // What a script paid: `nft` started from inside the namespace.
    let cli: Vec<f64> = ns.run(|| {
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let out = Command::new("nft")
                    .args(["-j", "list", "set", "netdev", "xenplug", "vif5.0-ll6"])
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                assert!(out.status.success());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect()
    });
    // Removals, alternating: set the vif up with nft (not timed), take it away one way or
    // the other (timed).
    ns.ip(&["link", "add", "d5", "type", "veth", "peer", "name", "p5"])
        .expect("veth");
    let s = |x: &str| x.to_string();
    let items = vec![
        Removal::Chain {
            family: s("netdev"),
            table: s("xenplug"),
            chain: s("vif5.0"),
        },
        Removal::Elements {
            family: s("netdev"),
            table: s("xenplug"),
            set: s("ll6-claimed"),
            keys: vec![0xfe80_0000_0000_0000_0000_0000_0000_0005u128
                .to_be_bytes()
                .to_vec()],
        },
        Removal::Set {
            family: s("netdev"),
            table: s("xenplug"),
            set: s("vif5.0-ll6"),
        },
    ];
    let (remove_netlink, remove_cli) = ns.run(|| {
        assert!(nft_f(
            "add set netdev xenplug ll6-claimed { typeof @nh,64,128; size 65535; flags dynamic; }\n"
        ));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            assert!(nft_f(VIF));
            let t = Instant::now();
            assert_eq!(Nft::open().unwrap().remove(&items).unwrap(), 4);
            a.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(nft_f(VIF));
            let t = Instant::now();
            assert!(nft_f(REMOVE));
            b.push(t.elapsed().as_secs_f64() * 1e3);
        }
        (a, b)
    });
    let (rm, r90) = stats(remove_netlink);
    let (rc, rc90) = stats(remove_cli);
    let (nm, n90) = stats(netlink);
    let (cm, c90) = stats(cli);
    println!("{runs} listings of a vif's 3 link-local claims, in a network namespace:");
    println!("  over netlink (now):        median {nm:.3} ms, p90 {n90:.3} ms");
    println!(
        "  nft -j list set (before):  median {cm:.3} ms, p90 {c90:.3} ms ({:.1}x the netlink read)",
        cm / nm
    );
    println!("{runs} removals of a vif's chain, set and claim:");
    println!("  over netlink (now):        median {rm:.3} ms, p90 {r90:.3} ms");
    println!(
        "  nft -f - (before):         median {rc:.3} ms, p90 {rc90:.3} ms ({:.1}x the netlink removal)",
        rc / rm
    );
    println!(
        "a teardown's nftables work: {:.3} ms now, {:.3} ms before ({:.1}x)",
        nm + rm,
        cm + rc,
        (cm + rc) / (nm + rm)
    );
}
