//! Privileged tests: the scripts run for real (netlink, /proc/sys, nft) inside throwaway network
//! namespaces, with `ip -j` and `nft -j` as oracles. A veth pair stands in for netback's vif
//! (the peer end lives in a "guest" namespace).
//!
//! xenstore is a real daemon (xenplug-xenstored on a throwaway socket, reached through
//! `XENSTORED_PATH`), and each script run goes through the public entry point in `SCRIPTS`, on a thread that has `setns`ed into the test namespace; netlink
//! sockets, /proc/sys/net and spawned `nft` all follow that thread's network namespace.

mod common;

use std::os::fd::AsFd;
use std::process::ExitCode;

use common::{
    in_netns, link, mac_of, nft_chains, police_supported, run_in, run_in_ok, setup, up, Xs,
};
use serde_json::Value;
use xenplug_testkit::{require, require_program, require_root, NetNs};
use xenplug_vif::scripts::Script;

fn ready() -> bool {
    require_root() && require_program("nft") && require_program("ip") && require_program("tc")
}

const ENV: &[(&str, &str)] = &[("vif", "vif5.0"), ("XENBUS_PATH", "backend/vif/5/0")];

#[test]
fn bridge_online_offline_real_links() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("vb");
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr0");
    run_in_ok(&host, Script::Bridge, &["online", "type_if=vif"], ENV, &xs);
    let l = link(&host, "vif5.0").unwrap();
    assert_eq!(l["master"], "xenbr0");
    assert_eq!(l["mtu"], 1400);
    assert_eq!(l["address"], "fe:ff:ff:ff:ff:ff");
    assert!(up(&l));
    assert_eq!(
        xs.value("backend/vif/5/0/hotplug-status").as_deref(),
        Some("connected")
    );
    assert_eq!(
        xs.value("/local/domain/5/device/vif/0/mtu").as_deref(),
        Some("1400")
    );
    assert!(nft_chains(&host).is_empty(), "no ip node, no rules");

    run_in_ok(&host, Script::Bridge, &["offline", "type_if=vif"], ENV, &xs);
    let l = link(&host, "vif5.0").unwrap();
    assert!(l.get("master").is_none(), "{l}");
    assert!(!up(&l));
    // Idempotent, and fine once the vif is gone.
    run_in_ok(&host, Script::Bridge, &["offline", "type_if=vif"], ENV, &xs);
    host.ip(&["link", "del", "vif5.0"]).unwrap();
    run_in_ok(&host, Script::Bridge, &["offline", "type_if=vif"], ENV, &xs);
}

#[test]
fn bridge_vifname_rename_and_refusal() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("vn");
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr0");
    xs.set("backend/vif/5/0/vifname", "web0");
    xs.set("backend/vif/5/0/mtu", "1300");
    run_in_ok(&host, Script::Bridge, &["online", "type_if=vif"], ENV, &xs);
    assert!(link(&host, "vif5.0").is_none());
    let l = link(&host, "web0").unwrap();
    assert_eq!(
        (l["master"].as_str(), l["mtu"].as_u64()),
        (Some("xenbr0"), Some(1300))
    );
    assert_eq!(
        xs.value("/local/domain/5/device/vif/0/mtu").as_deref(),
        Some("1300")
    );
    run_in_ok(&host, Script::Bridge, &["offline", "type_if=vif"], ENV, &xs);
    assert!(link(&host, "web0").unwrap().get("master").is_none());

    // A second vif asking for the same name is refused through the error contract.
    host.ip(&[
        "link", "add", "vif6.0", "type", "veth", "peer", "name", "p6",
    ])
    .unwrap();
    let xs6 = Xs::new();
    xs6.set("backend/vif/6/0/vifname", "web0");
    xs6.set("backend/vif/6/0/bridge", "xenbr0");
    let env6 = [("vif", "vif6.0"), ("XENBUS_PATH", "backend/vif/6/0")];
    assert_eq!(
        run_in(
            &host,
            Script::Bridge,
            &["online", "type_if=vif"],
            &env6,
            &xs6
        ),
        ExitCode::FAILURE
    );
    assert_eq!(
        xs6.value("backend/vif/6/0/hotplug-error").as_deref(),
        Some("Cannot rename interface vif6.0. An interface with name web0 already exists.")
    );
    assert_eq!(
        xs6.value("backend/vif/6/0/hotplug-status").as_deref(),
        Some("error")
    );
    assert!(link(&host, "vif6.0").unwrap().get("master").is_none());
}

#[test]
fn bridge_missing_bridge_error_contract() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("mb");
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr7");
    assert_eq!(
        run_in(&host, Script::Bridge, &["online", "type_if=vif"], ENV, &xs),
        ExitCode::FAILURE
    );
    assert_eq!(
        xs.value("backend/vif/5/0/hotplug-error").as_deref(),
        Some("Could not find bridge device xenbr7")
    );
    assert_eq!(
        xs.value("backend/vif/5/0/hotplug-status").as_deref(),
        Some("error")
    );
    let l = link(&host, "vif5.0").unwrap();
    assert!(
        l.get("master").is_none() && l["address"] != "fe:ff:ff:ff:ff:ff",
        "untouched: {l}"
    );
}

#[test]
fn bridge_rollback_on_failed_online() {
    if !ready() {
        return;
    }
    let (host, guest) = setup("rb");
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr0");
    xs.set("backend/vif/5/0/ip", "10.0.0.5");
    xs.set("backend/vif/5/0/mac", &mac_of(&guest, "eth0"));
    let before = link(&host, "vif5.0").unwrap();
    // `nft` that always fails: enforce-mode antispoofing is fatal, so online fails after the
    // port was prepared, and everything done so far is undone.
    let mut env = ENV.to_vec();
    env.push(("nft", "/bin/false"));
    assert_eq!(
        run_in(&host, Script::Bridge, &["online", "type_if=vif"], &env, &xs),
        ExitCode::FAILURE
    );
    let after = link(&host, "vif5.0").unwrap();
    assert_eq!(after["address"], before["address"]);
    assert_eq!(after["mtu"], before["mtu"]);
    assert!(after.get("master").is_none() && !up(&after));
    assert_eq!(
        xs.value("backend/vif/5/0/hotplug-status").as_deref(),
        Some("error")
    );
}

#[test]
fn tap_add_remove() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("tp");
    host.ip(&["tuntap", "add", "vif5.0-emu", "mode", "tap"])
        .unwrap();
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr0");
    xs.set("backend/vif/5/0/rate", "125000,1000000");
    let env = [
        ("INTERFACE", "vif5.0-emu"),
        ("vif", "vif5.0"),
        ("XENBUS_PATH", "backend/vif/5/0"),
    ];
    // online of a tap: nothing to do.
    run_in_ok(&host, Script::Bridge, &["online", "type_if=tap"], &env, &xs);
    assert!(link(&host, "vif5.0-emu").unwrap().get("master").is_none());
    run_in_ok(&host, Script::Bridge, &["add", "type_if=tap"], &env, &xs);
    let l = link(&host, "vif5.0-emu").unwrap();
    assert_eq!(l["master"], "xenbr0");
    assert_eq!(
        xs.value("backend/vif/5/0/hotplug-status"),
        None,
        "taps never write connected"
    );
    assert_eq!(xs.value("/local/domain/5/device/vif/0/mtu"), None);
    // The rate is no nft rule any more; it is tc's (see tap_rate_is_policed_at_ingress), and
    // on a kernel without act_police the add still succeeds, with a warning, unpoliced.
    assert!(
        nft_chains(&host).is_empty(),
        "no antispoofing, and no nft rate"
    );
    let police = police_supported(&host);
    assert_eq!(host.ingress_qdiscs("vif5.0-emu").len(), usize::from(police));
    run_in_ok(&host, Script::Bridge, &["remove", "type_if=tap"], &env, &xs);
    assert!(link(&host, "vif5.0-emu").unwrap().get("master").is_none());
    assert!(host.ingress_qdiscs("vif5.0-emu").is_empty());
    assert!(nft_chains(&host).is_empty());
    // Idempotent, also once the tap is gone (QEMU removes it).
    run_in_ok(&host, Script::Bridge, &["remove", "type_if=tap"], &env, &xs);
    host.ip(&["link", "del", "vif5.0-emu"]).unwrap();
    run_in_ok(&host, Script::Bridge, &["remove", "type_if=tap"], &env, &xs);
}

/// Datagrams and IP bytes (payload + 28) that reached a UDP socket, per phase marker.
#[derive(Debug, Default, Clone, Copy)]
struct Got {
    packets: u64,
    bytes: u64,
}

const PAYLOAD: usize = 1000;
const IP_BYTES: u64 = PAYLOAD as u64 + 28;

/// Send `PAYLOAD`-byte datagrams marked `phase` from `from` to `to`: `count` of them spaced by
/// `gap`, or as fast as possible for `flood` (then `count` is ignored). Returns (sent, elapsed
/// from the first to the last send).
fn send(
    sock: &std::net::UdpSocket,
    phase: u8,
    count: u64,
    gap: std::time::Duration,
    flood: Option<std::time::Duration>,
) -> (u64, std::time::Duration) {
    let mut buf = [0u8; PAYLOAD];
    buf[0] = phase;
    let start = std::time::Instant::now();
    let mut sent = 0;
    let mut last = start;
    loop {
        match flood {
            Some(d) if start.elapsed() >= d => break,
            None if sent == count => break,
            _ => {}
        }
        // ENOBUFS and the like under a flood: not sent, not counted.
        if sock.send(&buf).is_ok() {
            sent += 1;
            last = std::time::Instant::now();
        }
        if flood.is_none() {
            std::thread::sleep(gap);
        }
    }
    (sent, last - start)
}

/// The police action's counters on `dev`'s ingress: (bytes, packets, drops, overlimits).
fn police_stats(ns: &NetNs, dev: &str) -> (u64, u64, u64, u64) {
    let f = ns.ingress_filters(dev);
    let s = &f[0]["options"]["actions"][0]["stats"];
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    (n("bytes"), n("packets"), n("drops"), n("overlimits"))
}

#[test]
#[ignore = "needs tc policing (cls_matchall, act_police), which some kernels lack: test.sh runs it under Debian's kernel with tools/vm-kernel-tests.sh"]
fn tap_rate_is_policed_at_ingress() {
    if !ready() {
        return;
    }
    // A veth pair stands in for the tap, so that traffic can enter its ingress from a "guest".
    let (host, guest) = setup("tr");
    if !require(
        police_supported(&host),
        "a kernel with cls_matchall and act_police (tools/vm-test.sh runs Debian's)",
    ) {
        return;
    }
    host.ip(&["link", "del", "vif5.0"]).unwrap();
    guest.ip(&["link", "del", "eth0"]).ok();
    host.ip(&[
        "link",
        "add",
        "vif5.0-emu",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        guest.name(),
    ])
    .unwrap();
    guest
        .ip(&["addr", "add", "10.0.0.5/24", "dev", "eth0"])
        .unwrap();
    guest.ip(&["link", "set", "eth0", "up"]).unwrap();
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr0");
    // 125000 bytes every second: 1 Mbit/s, bucket max(125000, 128 KiB) = 131072 bytes.
    xs.set("backend/vif/5/0/rate", "125000,1000000");
    const RATE: f64 = 125_000.0;
    const BURST: f64 = 131_072.0;
    let env = [
        ("INTERFACE", "vif5.0-emu"),
        ("vif", "vif5.0"),
        ("XENBUS_PATH", "backend/vif/5/0"),
    ];
    run_in_ok(&host, Script::Bridge, &["add", "type_if=tap"], &env, &xs);

    // What vif-bridge installed, as tc sees it.
    let q = host.ingress_qdiscs("vif5.0-emu");
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(
        (q[0]["kind"].as_str(), q[0]["handle"].as_str()),
        (Some("ingress"), Some("ffff:"))
    );
    let f = host.ingress_filters("vif5.0-emu");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0]["kind"].as_str(), f[0]["protocol"].as_str()),
        (Some("matchall"), Some("all"))
    );
    assert_eq!(f[0]["options"]["actions"][0]["kind"], "police");
    assert_eq!(
        f[0]["options"]["actions"][0]["control_action"]["type"],
        "drop"
    );
    let text = host.tc(&["filter", "show", "dev", "vif5.0-emu", "ingress"]);
    assert!(
        text.contains(" rate 1Mbit burst 128Kb mtu 4096Mb action drop "),
        "{text}"
    );

    // Real traffic from the guest into the tap's ingress, to a socket on the bridge.
    let sink = in_netns(&host, || {
        let s = std::net::UdpSocket::bind("10.0.0.1:9000").unwrap();
        // Room for the whole bucket arriving at once (the receiver is a thread of a loaded
        // test process): a datagram lost here would look like one the policer dropped.
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20))
            .unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(3000)))
            .unwrap();
        s
    })
    .join()
    .unwrap();
    let receiver = std::thread::spawn(move || {
        let mut got = [Got::default(); 3];
        let mut buf = [0u8; 2048];
        // Ends 3 s after the last datagram (the phases pause 1.5 s).
        while let Ok(n) = sink.recv(&mut buf) {
            let g = &mut got[usize::from(buf[0]).min(2)];
            g.packets += 1;
            g.bytes += n as u64 + 28;
        }
        got
    });
    let sender = in_netns(&guest, || {
        use std::time::Duration;
        let s = std::net::UdpSocket::bind("10.0.0.5:0").unwrap();
        s.connect("10.0.0.1:9000").unwrap();
        // Phase 0: a few packets to resolve ARP; then let the bucket fill up again.
        send(&s, 0, 5, Duration::from_millis(50), None);
        std::thread::sleep(Duration::from_millis(1500));
        // Phase 1: flood for 2 s.
        let flood = send(&s, 1, 0, Duration::ZERO, Some(Duration::from_secs(2)));
        // Phase 2: after a refill, 100 packets at 50 per second (~51 kB/s, well below the rate).
        std::thread::sleep(Duration::from_millis(1500));
        let paced = send(&s, 2, 100, Duration::from_millis(20), None);
        (flood, paced)
    });
    let ((flood_sent, flood_time), (paced_sent, _)) = sender.join().unwrap();
    let got = receiver.join().unwrap();
    let (seen_bytes, seen_packets, drops, overlimits) = police_stats(&host, "vif5.0-emu");
    let t = flood_time.as_secs_f64();
    let allowed = BURST + RATE * t;
    let passed = seen_packets - drops;
    eprintln!(
        "flood: sent {flood_sent} datagrams ({} IP bytes) in {t:.3} s; received {} ({} bytes, \
         {:.0} B/s); bound burst + rate × t = {allowed:.0} bytes; police saw {seen_packets} \
         packets ({seen_bytes} bytes) in all phases, passed {passed}, dropped {drops}, \
         overlimits {overlimits}; paced: sent {paced_sent}, received {}",
        flood_sent * IP_BYTES,
        got[1].packets,
        got[1].bytes,
        got[1].bytes as f64 / t,
        got[2].packets,
    );
    assert!(
        seen_bytes as f64 > 2.0 * allowed,
        "the flood must offer well over the rate to show anything"
    );
    assert!(drops > 0 && overlimits > 0);
    // At most the bucket plus the rate over the flood (5 % and two packets of slack for timing),
    // and not much less: the policer passes what the rate allows, it does not starve.
    let got_flood = got[1].bytes as f64;
    assert!(
        got_flood <= BURST + RATE * t * 1.05 + 2.0 * IP_BYTES as f64,
        "{got_flood} > {allowed}"
    );
    assert!(got_flood >= 0.9 * allowed, "{got_flood} < 0.9 × {allowed}");
    // Below the rate, everything passes.
    assert_eq!((paced_sent, got[2].packets), (100, 100));

    run_in_ok(&host, Script::Bridge, &["remove", "type_if=tap"], &env, &xs);
    assert!(host.ingress_qdiscs("vif5.0-emu").is_empty());
    assert!(host
        .tc(&["filter", "show", "dev", "vif5.0-emu", "ingress"])
        .trim()
        .is_empty());
}

fn ping(ns: &NetNs, args: &[&str]) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "1"])
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn antispoof_enforce_drops_forged_sources() {
    if !ready() || !require_program("ping") {
        return;
    }
    let (host, guest) = setup("as");
    guest
        .ip(&["addr", "add", "10.0.0.5/24", "dev", "eth0"])
        .unwrap();
    guest
        .ip(&["addr", "add", "10.0.0.66/24", "dev", "eth0"])
        .unwrap();
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr0");
    xs.set("backend/vif/5/0/ip", "10.0.0.5");
    xs.set("backend/vif/5/0/mac", &mac_of(&guest, "eth0"));
    run_in_ok(&host, Script::Bridge, &["online", "type_if=vif"], ENV, &xs);
    assert_eq!(nft_chains(&host), vec!["vif5.0".to_string()]);
    assert!(
        ping(&guest, &["-I", "10.0.0.5", "10.0.0.1"]),
        "legitimate source must pass"
    );
    guest
        .command("ip")
        .args(["neigh", "flush", "all"])
        .status()
        .unwrap();
    host.command("ip")
        .args(["neigh", "flush", "all"])
        .status()
        .unwrap();
    assert!(
        !ping(&guest, &["-I", "10.0.0.66", "10.0.0.1"]),
        "forged source must be dropped"
    );
    run_in_ok(&host, Script::Bridge, &["offline", "type_if=vif"], ENV, &xs);
    assert!(nft_chains(&host).is_empty());
    run_in_ok(&host, Script::Bridge, &["offline", "type_if=vif"], ENV, &xs);
}

#[test]
fn route_online_offline() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("rt");
    host.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .unwrap();
    host.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"])
        .unwrap();
    host.ip(&["link", "set", "eth0", "up"]).unwrap();
    let xs = Xs::new();
    xs.set("backend/vif/5/0/ip", "10.0.9.5 2001:db8::5");
    let mut env = ENV.to_vec();
    env.push(("antispoof", "off"));
    run_in_ok(&host, Script::Route, &["online", "type_if=vif"], &env, &xs);
    let routes: Value =
        serde_json::from_str(&host.ip_json(&["route", "show", "dev", "vif5.0"]).unwrap()).unwrap();
    let r = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst"] == "10.0.9.5")
        .expect("route")
        .clone();
    assert_eq!(
        (r["prefsrc"].as_str(), r["metric"].as_u64()),
        (Some("192.0.2.10"), Some(2))
    );
    let r6: Value = serde_json::from_str(
        &host
            .ip_json(&["-6", "route", "show", "dev", "vif5.0"])
            .unwrap(),
    )
    .unwrap();
    assert!(
        r6.as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "2001:db8::5" && r["metric"] == 2),
        "{r6}"
    );
    let pa = host
        .command("cat")
        .arg("/proc/sys/net/ipv4/conf/vif5.0/proxy_arp")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&pa.stdout).trim(), "1");
    let addrs = host.ip_json(&["addr", "show", "dev", "vif5.0"]).unwrap();
    assert!(
        addrs.contains("192.0.2.10") && addrs.contains(r#""prefixlen":32"#),
        "{addrs}"
    );
    let proxies = host.ip(&["-6", "neigh", "show", "proxy"]).unwrap();
    assert!(proxies.contains("2001:db8::5"), "{proxies}");
    assert_eq!(
        xs.value("backend/vif/5/0/hotplug-status").as_deref(),
        Some("connected")
    );

    run_in_ok(&host, Script::Route, &["offline", "type_if=vif"], &env, &xs);
    let routes = host.ip_json(&["route", "show", "dev", "vif5.0"]).unwrap();
    assert!(!routes.contains("10.0.9.5"), "{routes}");
    assert!(!host
        .ip(&["-6", "neigh", "show", "proxy"])
        .unwrap()
        .contains("2001:db8::5"));
    run_in_ok(&host, Script::Route, &["offline", "type_if=vif"], &env, &xs);

    // No address on netdev: the reference's error.
    let mut env = env.clone();
    env.push(("netdev", "xenbr9"));
    assert_eq!(
        run_in(&host, Script::Route, &["online", "type_if=vif"], &env, &xs),
        ExitCode::FAILURE
    );
    assert!(xs
        .value("backend/vif/5/0/hotplug-error")
        .unwrap()
        .starts_with("xenbr9 is not up."));
}

#[test]
fn netlink_adapter_matches_ip() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("nl");
    let path = host.path();
    let seen = std::thread::spawn(move || {
        use xenplug_netlink::links::{LinkChange, Links};
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut nl = xenplug_netlink::links::KernelLinks::open().unwrap();
        nl.change(&LinkChange::SetMtu {
            dev: "vif5.0".into(),
            mtu: 1280,
        })
        .unwrap();
        nl.change(&LinkChange::AddAddr {
            dev: "vif5.0".into(),
            addr: "10.9.9.9".parse().unwrap(),
            prefix: 32,
        })
        .unwrap();
        let e = nl
            .change(&LinkChange::SetUp {
                dev: "nosuch".into(),
                up: true,
            })
            .unwrap_err();
        assert!(e.is_gone());
        (
            nl.links().unwrap(),
            nl.link("xenbr0").unwrap().unwrap(),
            nl.addresses(None).unwrap(),
        )
    })
    .join()
    .unwrap();
    let (links, br, addrs) = seen;
    let oracle: Value =
        serde_json::from_str(&host.ip_json(&["-d", "link", "show"]).unwrap()).unwrap();
    for o in oracle.as_array().unwrap() {
        let l = links
            .iter()
            .find(|l| l.index as u64 == o["ifindex"].as_u64().unwrap())
            .expect("same links");
        assert_eq!(l.name, o["ifname"].as_str().unwrap());
        assert_eq!(u64::from(l.mtu), o["mtu"].as_u64().unwrap());
        if let Some(k) = o["linkinfo"]["info_kind"].as_str() {
            assert_eq!(l.kind.as_deref(), Some(k));
        }
    }
    assert!(br.is_bridge() && br.mtu == 1400);
    assert!(addrs
        .iter()
        .any(|a| a.addr.to_string() == "10.9.9.9" && a.prefix == 32));
    assert!(addrs
        .iter()
        .any(|a| a.addr.to_string() == "10.0.0.1" && a.prefix == 24));
}

#[test]
fn nat_online_offline_with_dnsmasq_hosts() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("nt");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("dhcp-hosts");
    // A process called dnsmasq (vif-nat signals nothing else).
    let fake = dir.path().join("dnsmasq");
    std::fs::copy(xenplug_testkit::which("sleep").unwrap(), &fake).unwrap();
    let mut sleeper = {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&fake);
        cmd.arg("30");
        // SIGHUP's default action (an ignored SIGHUP, as under `nohup`, survives exec).
        // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    };
    // Its `comm` is this test's until it has exec'd: vif-nat would rightly not signal it.
    let comm = format!("/proc/{}/comm", sleeper.id());
    xenplug_testkit::wait_until(
        "the fake dnsmasq's exec",
        std::time::Duration::from_secs(10),
        || std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "dnsmasq"),
    );
    let pidfile = dir.path().join("dnsmasq.pid");
    std::fs::write(&pidfile, sleeper.id().to_string()).unwrap();
    let xs = Xs::new();
    xs.set("backend/vif/5/0/frontend-id", "5");
    xs.set("backend/vif/5/0/handle", "0");
    xs.set("backend/vif/5/0/mac", "00:16:3e:00:05:00");
    // The plan's own address, listed: antispoofing too, in the same nft batch as masquerading.
    xs.set("backend/vif/5/0/ip", "10.0.5.1");
    let mut env = ENV.to_vec();
    let (h, p) = (
        hosts.to_str().unwrap().to_string(),
        pidfile.to_str().unwrap().to_string(),
    );
    env.extend([
        ("dhcp", "yes"),
        ("dhcp_hostsfile", h.as_str()),
        ("dnsmasq_pidfile", p.as_str()),
    ]);
    run_in_ok(&host, Script::Nat, &["online", "type_if=vif"], &env, &xs);
    assert_eq!(
        xs.value("backend/vif/5/0/hotplug-status").as_deref(),
        Some("connected")
    );
    let addrs = host
        .ip_json(&["-4", "addr", "show", "dev", "vif5.0"])
        .unwrap();
    assert!(
        addrs.contains("10.0.5.128") && addrs.contains(r#""prefixlen":32"#),
        "{addrs}"
    );
    let routes: Value =
        serde_json::from_str(&host.ip_json(&["route", "show", "dev", "vif5.0"]).unwrap()).unwrap();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "10.0.5.1" && r["prefsrc"] == "10.0.5.128"),
        "{routes}"
    );
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "00:16:3e:00:05:00,10.0.5.1,dom5\n"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        sleeper.wait().unwrap().signal(),
        Some(libc::SIGHUP),
        "dnsmasq is told to reload"
    );
    let rules = String::from_utf8(
        host.command("nft")
            .args(["list", "table", "ip", "xenplug-nat"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        rules.contains("ip saddr 10.0.5.1") && rules.contains("masquerade"),
        "{rules}"
    );
    let mut chains = nft_chains(&host);
    chains.sort();
    assert_eq!(chains, ["nat-vif5.0", "vif5.0"]);
    // A second online (e.g. after a failed offline) still ends connected.
    xs.set("backend/vif/5/0/hotplug-status", "");
    run_in_ok(&host, Script::Nat, &["online", "type_if=vif"], &env, &xs);
    assert_eq!(
        xs.value("backend/vif/5/0/hotplug-status").as_deref(),
        Some("connected")
    );

    run_in_ok(&host, Script::Nat, &["offline", "type_if=vif"], &env, &xs);
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "");
    let routes = host.ip_json(&["route", "show", "dev", "vif5.0"]).unwrap();
    assert!(!routes.contains("10.0.5.1"), "{routes}");
    assert!(nft_chains(&host).is_empty(), "{:?}", nft_chains(&host));
    run_in_ok(&host, Script::Nat, &["offline", "type_if=vif"], &env, &xs);

    // Offline after the vif went away: whether or not the kernel dropped the netdev chain
    // with its device, the one removal batch still removes the masquerade chain.
    run_in_ok(&host, Script::Nat, &["online", "type_if=vif"], &env, &xs);
    assert_eq!(nft_chains(&host).len(), 2);
    host.ip(&["link", "del", "vif5.0"]).unwrap();
    run_in_ok(&host, Script::Nat, &["offline", "type_if=vif"], &env, &xs);
    assert!(nft_chains(&host).is_empty(), "{:?}", nft_chains(&host));
}

#[test]
fn two_hundred_concurrent_onlines_all_connected() {
    if !ready() {
        return;
    }
    const N: u32 = 200;
    let host = NetNs::new("cc").unwrap();
    let mut batch = String::from("link add xenbr0 type bridge\nlink set xenbr0 up\n");
    for i in 0..N {
        batch.push_str(&format!("link add vif{i}.0 type veth peer name g{i}\n"));
    }
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), batch).unwrap();
    host.ip(&["-batch", f.path().to_str().unwrap()]).unwrap();
    let xs = Xs::new();
    for i in 0..N {
        xs.set(&format!("backend/vif/{i}/0/bridge"), "xenbr0");
        xs.set(&format!("backend/vif/{i}/0/hotplug-status"), "");
    }
    let start = std::time::Instant::now();
    let results: Vec<ExitCode> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..N)
            .map(|i| {
                let (host, xs) = (&host, &xs);
                s.spawn(move || {
                    let vif = format!("vif{i}.0");
                    let path = format!("backend/vif/{i}/0");
                    run_in(
                        host,
                        Script::Bridge,
                        &["online", "type_if=vif"],
                        &[("vif", &vif), ("XENBUS_PATH", &path)],
                        xs,
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("{N} concurrent onlines: {:?}", start.elapsed());
    assert!(results.iter().all(|r| *r == ExitCode::SUCCESS));
    let links: Value =
        serde_json::from_str(&host.ip_json(&["link", "show", "master", "xenbr0"]).unwrap())
            .unwrap();
    assert_eq!(links.as_array().unwrap().len(), N as usize);
    for i in 0..N {
        assert_eq!(
            xs.value(&format!("backend/vif/{i}/0/hotplug-status"))
                .as_deref(),
            Some("connected"),
            "vif{i}.0"
        );
    }
}

#[test]
fn vif_setup_dispatches() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("vs");
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr0");
    // `script` names vif-bridge: vif-setup runs it in-process.
    let env = [
        ("vif", "vif5.0"),
        ("XENBUS_PATH", "backend/vif/5/0"),
        ("script", "/etc/xen/scripts/vif-bridge"),
    ];
    let path = host.path();
    let sock = xs.socket();
    let code = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("xenplug.toml");
        std::fs::write(&cfg, "").unwrap();
        let mut e: Vec<(&str, &str)> = env.to_vec();
        let (c, d) = (cfg.to_str().unwrap(), dir.path().to_str().unwrap());
        e.extend([
            ("XENSTORED_PATH", sock.as_str()),
            ("XENPLUG_CONFIG", c),
            ("XENPLUG_LOG_FILE", ""),
            ("XENPLUG_SYSLOG", "false"),
            ("XENPLUG_SCRIPTS_DIR", d),
        ]);
        xenplug_vif::vif_setup(xenplug_hotplug::Raw::new(
            &["/etc/xen/scripts/vif-setup", "online", "type_if=vif"],
            &e,
        ))
    })
    .join()
    .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(link(&host, "vif5.0").unwrap()["master"], "xenbr0");
    assert_eq!(
        xs.value("backend/vif/5/0/hotplug-status").as_deref(),
        Some("connected")
    );
}

#[test]
fn antispoof_enforce_ipv6() {
    if !ready() || !require_program("ping") {
        return;
    }
    let (host, guest) = setup("a6");
    host.ip(&["addr", "add", "2001:db8::1/64", "dev", "xenbr0", "nodad"])
        .unwrap();
    guest
        .ip(&["addr", "add", "2001:db8::5/64", "dev", "eth0", "nodad"])
        .unwrap();
    guest
        .ip(&["addr", "add", "2001:db8::66/64", "dev", "eth0", "nodad"])
        .unwrap();
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr0");
    xs.set("backend/vif/5/0/ip", "10.0.0.5 2001:db8::5");
    xs.set("backend/vif/5/0/mac", &mac_of(&guest, "eth0"));
    run_in_ok(&host, Script::Bridge, &["online", "type_if=vif"], ENV, &xs);
    assert!(
        ping(&guest, &["-6", "-I", "2001:db8::5", "2001:db8::1"]),
        "listed IPv6 source must pass"
    );
    assert!(
        !ping(&guest, &["-6", "-I", "2001:db8::66", "2001:db8::1"]),
        "unlisted IPv6 source must be dropped"
    );
    run_in_ok(&host, Script::Bridge, &["offline", "type_if=vif"], ENV, &xs);
    // Control: without our rules the same forged source gets through.
    host.ip(&["link", "set", "vif5.0", "master", "xenbr0", "up"])
        .unwrap();
    guest.ip(&["neigh", "flush", "all"]).unwrap();
    assert!(
        ping(
            &guest,
            &["-6", "-W", "3", "-I", "2001:db8::66", "2001:db8::1"]
        ),
        "control: passes without rules"
    );
}

/// The host's own `eth9`: up, with the address, route and bridge port `f` gives it.
fn host_eth9(host: &NetNs) {
    host.ip(&[
        "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p",
    ])
    .unwrap();
    host.ip(&["link", "set", "eth9", "up"]).unwrap();
}

/// `(up, master)` of `dev` in `ns`.
fn state_of(ns: &NetNs, dev: &str) -> (bool, Option<String>) {
    let l = link(ns, dev).unwrap_or_else(|| panic!("{dev} exists"));
    (up(&l), l["master"].as_str().map(str::to_string))
}

/// `vifname` names an interface the host already has: `online` fails (the rename is refused),
/// and the `offline` libxl runs after a failed `online` must leave that interface alone:
/// teardown acts only on the device this backend created.
#[test]
fn bridge_teardown_leaves_a_host_interface_named_by_vifname_alone() {
    if !ready() {
        return;
    }
    let (host, guest) = setup("fb");
    host.ip(&["link", "add", "hostbr", "type", "bridge"])
        .unwrap();
    host.ip(&["link", "set", "hostbr", "up"]).unwrap();
    host_eth9(&host);
    host.ip(&["link", "set", "eth9", "master", "hostbr"])
        .unwrap();
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr0");
    xs.set("backend/vif/5/0/vifname", "eth9");
    xs.set("backend/vif/5/0/ip", "10.0.0.5");
    xs.set("backend/vif/5/0/mac", &mac_of(&guest, "eth0"));
    assert_eq!(
        run_in(&host, Script::Bridge, &["online", "type_if=vif"], ENV, &xs),
        ExitCode::FAILURE
    );
    assert_eq!(
        xs.value("backend/vif/5/0/hotplug-error").as_deref(),
        Some("Cannot rename interface vif5.0. An interface with name eth9 already exists.")
    );
    run_in(&host, Script::Bridge, &["offline", "type_if=vif"], ENV, &xs);
    assert_eq!(state_of(&host, "eth9"), (true, Some("hostbr".into())));
    // The same once netback's device is gone (libxl may run offline after that).
    host.ip(&["link", "del", "vif5.0"]).unwrap();
    run_in(&host, Script::Bridge, &["offline", "type_if=vif"], ENV, &xs);
    assert_eq!(state_of(&host, "eth9"), (true, Some("hostbr".into())));
}

/// A renamed vif is still torn down under its new name (it carries this backend's mark), also
/// when the name is not libxl's.
#[test]
fn bridge_teardown_acts_on_our_renamed_vif() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("fr");
    let xs = Xs::new();
    xs.set("backend/vif/5/0/bridge", "xenbr0");
    xs.set("backend/vif/5/0/vifname", "web0");
    run_in_ok(&host, Script::Bridge, &["online", "type_if=vif"], ENV, &xs);
    let l = link(&host, "web0").unwrap();
    assert_eq!(l["ifalias"], "xenplug vif5.0", "{l}");
    run_in_ok(&host, Script::Bridge, &["offline", "type_if=vif"], ENV, &xs);
    assert_eq!(state_of(&host, "web0"), (false, None));
}

/// vif-route and vif-nat: the routes and addresses of a host interface that `vifname` names
/// survive the `offline` after the refused `online`.
#[test]
fn route_and_nat_teardown_leave_a_host_interface_s_routes_alone() {
    if !ready() {
        return;
    }
    for script in [Script::Route, Script::Nat] {
        let (host, _guest) = setup(if script == Script::Route { "fr" } else { "fn" });
        host.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ])
        .unwrap();
        host.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"])
            .unwrap();
        host.ip(&["link", "set", "eth0", "up"]).unwrap();
        host_eth9(&host);
        // What the scripts' teardown would delete on a device of theirs: the host route to the
        // guest (metric 2 for vif-route, 0 for vif-nat), dom0's address /32.
        let (dst, metric) = match script {
            Script::Route => ("10.0.9.5", "2"),
            _ => ("10.0.9.5", "0"),
        };
        host.ip(&["route", "add", dst, "dev", "eth9", "metric", metric])
            .unwrap();
        host.ip(&["addr", "add", "10.0.9.133/32", "dev", "eth9"])
            .unwrap();
        let xs = Xs::new();
        xs.set("backend/vif/5/0/vifname", "eth9");
        xs.set("backend/vif/5/0/ip", "10.0.9.5");
        xs.set("backend/vif/5/0/frontend-id", "5");
        xs.set("backend/vif/5/0/handle", "0");
        let mut env = ENV.to_vec();
        env.push(("antispoof", "off"));
        assert_eq!(
            run_in(&host, script, &["online", "type_if=vif"], &env, &xs),
            ExitCode::FAILURE,
            "{script:?}"
        );
        run_in(&host, script, &["offline", "type_if=vif"], &env, &xs);
        assert!(state_of(&host, "eth9").0, "{script:?}: eth9 stays up");
        let routes = host.ip_json(&["route", "show", "dev", "eth9"]).unwrap();
        assert!(routes.contains(dst), "{script:?}: {routes}");
        let addrs = host.ip_json(&["addr", "show", "dev", "eth9"]).unwrap();
        assert!(addrs.contains("10.0.9.133"), "{script:?}: {addrs}");
    }
}

/// vif-nat with DHCP signals the pid in `dnsmasq_pidfile` only when it is dnsmasq's: a stale
/// pid file whose pid another process now has signals nobody.
#[test]
fn nat_dhcp_does_not_signal_a_stale_pid() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("ns");
    let dir = tempfile::tempdir().unwrap();
    let other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pidfile = dir.path().join("dnsmasq.pid");
    std::fs::write(&pidfile, other.id().to_string()).unwrap();
    let hosts = dir.path().join("dhcp-hosts");
    let xs = Xs::new();
    xs.set("backend/vif/5/0/frontend-id", "5");
    xs.set("backend/vif/5/0/handle", "0");
    xs.set("backend/vif/5/0/mac", "00:16:3e:00:05:00");
    let (h, p) = (
        hosts.to_str().unwrap().to_string(),
        pidfile.to_str().unwrap().to_string(),
    );
    let mut env = ENV.to_vec();
    env.extend([
        ("dhcp", "yes"),
        ("dhcp_hostsfile", h.as_str()),
        ("dnsmasq_pidfile", p.as_str()),
    ]);
    run_in_ok(&host, Script::Nat, &["online", "type_if=vif"], &env, &xs);
    assert!(std::fs::read_to_string(&hosts).unwrap().contains(",dom5"));
    // Pending signals are delivered lowest number first: a SIGHUP would win over our SIGTERM.
    use std::os::unix::process::ExitStatusExt;
    let mut other = other;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(other.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(
        other.wait().unwrap().signal(),
        Some(libc::SIGTERM),
        "the unrelated process was not sent SIGHUP"
    );
}
