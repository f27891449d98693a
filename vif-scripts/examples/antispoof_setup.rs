//! What installing a vif's antispoofing chain costs (issue 21): the batch `vif-route online`
//! and `vif-bridge online` write for a guest with one IPv4 address, sent over netlink as one
//! transaction (what the scripts do now) against `nft -f -` with the same batch's text (what
//! they did before), side by side in one run, each in a throwaway network namespace of its own
//! where the earlier vifs' chains stay (as on a host with many guests).
//!
//! `sudo cargo run --release -p xenplug-vif --example antispoof_setup [VIFS]` (default 64)
//! installs VIFS chains each way, alternating, and prints the median and p90 of each, the
//! ratio, and whether the two namespaces ended with the same ruleset. A benchmark, not a test.
//! Needs root, `ip` and `nft`.
use std::time::{Duration, Instant};

use xenplug_netlink::nft::Nft;
use xenplug_testkit::NetNs;
use xenplug_vif::firewall::{vif_batch, Antispoof};
use xenplug_vif::nft_netlink::compile;
use xenplug_vif::types::{Mode, Net};

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 9 / 10).min(v.len() - 1)]),
    )
}

fn main() {
    let vifs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("VIFS: a number"))
        .unwrap_or(64);
    let (a, b) = (
        NetNs::new("setup-nft").unwrap(),
        NetNs::new("setup-nl").unwrap(),
    );
    let (mut by_nft, mut by_netlink) = (Vec::new(), Vec::new());
    // The socket belongs to `b`'s namespace, whichever thread uses it afterwards.
    let mut nl = b.run(Nft::open).expect("netlink socket");
    for i in 0..vifs {
        let dev = format!("vif{}.0", i + 1);
        for ns in [&a, &b] {
            ns.ip(&[
                "link",
                "add",
                &dev,
                "type",
                "veth",
                "peer",
                "name",
                &format!("p{i}"),
            ])
            .unwrap();
        }
        let addrs = [Net::parse(&format!("10.0.{}.{}", i / 200, i % 200 + 2)).unwrap()];
        let mac = [0, 0x16, 0x3e, 0, (i >> 8) as u8, i as u8];
        let batch = vif_batch(&Antispoof {
            chain: &dev,
            device: &dev,
            addrs: &addrs,
            mac: Some(mac),
            mode: Mode::Enforce,
            ethertypes: &[],
        })
        .unwrap()
        .unwrap();
        let text = batch.text();
        // Each way from what the script has in hand (the batch) to the kernel's answer.
        let t = Instant::now();
        a.nft_script(&text);
        by_nft.push(t.elapsed());
        let t = Instant::now();
        let msgs = compile(&batch.cmds).expect("the compiler knows the batch");
        nl.apply(msgs).expect("netlink transaction");
        by_netlink.push(t.elapsed());
    }
    drop(nl);
    let same = a.nft(&["list", "ruleset"]) == b.nft(&["list", "ruleset"]);
    let (nm, np) = stats(by_nft);
    let (lm, lp) = stats(by_netlink);
    println!("antispoofing chains installed: {vifs} per way (one IPv4 address each, enforce)");
    println!("over netlink: median {lm:.2} ms, p90 {lp:.2} ms");
    println!("nft -f -:     median {nm:.2} ms, p90 {np:.2} ms");
    println!("ratio (nft / netlink): {:.1}x median", nm / lm);
    println!("same ruleset both ways: {same}");
    assert!(same, "the two namespaces differ");
}
