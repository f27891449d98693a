//! What reading a vif's link-local claims costs (issue 21): the elements of a `typeof
//! @nh,64,128` set over `NETLINK_NETFILTER` (what the vif scripts' teardown does now) against
//! `nft -j list set` (what it did), side by side in one run, in a throwaway network namespace.
//!
//! `sudo cargo run --release -p xenplug-netlink --example set_listing [RUNS]` prints the median
//! and p90 of each and the ratio. A benchmark, not a test. Needs root and nft.
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use xenplug_testkit::NetNs;

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
    let mut nft = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    nft.stdin
        .take()
        .unwrap()
        .write_all(
            b"table netdev xenplug {\n\
              set vif5.0-ll6 { typeof @nh,64,128; size 8; flags dynamic; }\n\
              }\n\
              add element netdev xenplug vif5.0-ll6 { 0xfe8000000000000002163efffe123456, \
              0xfe800000000000000000000000000005, 0xfe80000000000000a5a53c1e99b20f41 }\n",
        )
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft -f -");
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
    let (nm, n90) = stats(netlink);
    let (cm, c90) = stats(cli);
    println!("{runs} listings of a vif's 3 link-local claims, in a network namespace:");
    println!("  over netlink (now):        median {nm:.3} ms, p90 {n90:.3} ms");
    println!(
        "  nft -j list set (before):  median {cm:.3} ms, p90 {c90:.3} ms ({:.0}x the netlink read)",
        cm / nm
    );
}
