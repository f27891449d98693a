//! The client against the real kernel, in a throwaway network namespace, with `ip -j` as the
//! oracle. Needs root (skipped otherwise; fails under CI).

use serde_json::Value;
use std::net::IpAddr;
use xenplug_netlink::{Client, Create, Error, Route, RouteProtocol};
use xenplug_testkit::{require_program, require_root, NetNs};

/// A fresh namespace with the veth pair `d0`/`p0`, or `None` when the test cannot run.
fn veth_ns(tag: &str) -> Option<NetNs> {
    if !(require_root() && require_program("ip")) {
        return None;
    }
    let ns = NetNs::new(tag).unwrap();
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "p0"])
        .unwrap();
    Some(ns)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn json(ns: &NetNs, args: &[&str]) -> Value {
    serde_json::from_str(&ns.ip_json(args).unwrap()).unwrap()
}

/// `ip -j link show DEV`, or `None` when there is no such link.
fn ip_link(ns: &NetNs, dev: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(&ns.ip_json(&["link", "show", "dev", dev]).ok()?).ok()?;
    v.as_array()?.first().cloned()
}

/// Run `f` with a client opened on a thread that has entered `ns`.
fn in_ns<T: Send>(ns: &NetNs, f: impl FnOnce(&mut Client) -> T + Send) -> T {
    ns.run(|| f(&mut Client::open().unwrap()))
}

#[test]
fn links_and_link_changes_match_ip() {
    let Some(ns) = veth_ns("nl-link") else {
        return;
    };
    ns.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();

    let (links, d0, none) = in_ns(&ns, |c| {
        (
            c.links().unwrap(),
            c.link("d0").unwrap(),
            c.link("nosuch").unwrap(),
        )
    });
    assert!(none.is_none());
    let oracle = json(&ns, &["-d", "link", "show"]);
    let oracle = oracle.as_array().unwrap();
    assert_eq!(links.len(), oracle.len());
    for (l, o) in links.iter().zip(oracle) {
        assert_eq!(l.index as u64, o["ifindex"].as_u64().unwrap());
        assert_eq!(l.name, o["ifname"].as_str().unwrap());
        assert_eq!(l.mtu as u64, o["mtu"].as_u64().unwrap());
        let flags: Vec<&str> = o["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(l.up, flags.contains(&"UP"), "{o}");
        assert_eq!(l.loopback, flags.contains(&"LOOPBACK"), "{o}");
        assert!(l.stats.is_some(), "the dump carries counters");
    }
    let d0 = d0.unwrap();
    assert_eq!(d0.kind.as_deref(), Some("veth"));
    let br0 = links.iter().find(|l| l.name == "br0").unwrap().clone();
    assert_eq!(br0.kind.as_deref(), Some("bridge"));

    in_ns(&ns, |c| {
        c.set_mtu(d0.index, 1280).unwrap();
        c.set_mac(d0.index, [0x00, 0x16, 0x3e, 0x0a, 0x0b, 0x0c])
            .unwrap();
        c.set_master(d0.index, Some(br0.index)).unwrap();
        c.set_up(d0.index, true).unwrap();
        c.set_alias(d0.index, "xenplug vif5.0").unwrap();
    });
    let o = ip_link(&ns, "d0").unwrap();
    assert_eq!(o["ifalias"], "xenplug vif5.0");
    assert_eq!(o["mtu"], 1280);
    assert_eq!(o["address"], "00:16:3e:0a:0b:0c");
    assert_eq!(o["master"], "br0");
    assert!(o["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let seen = in_ns(&ns, |c| c.link("d0").unwrap().unwrap());
    assert_eq!(seen.master, Some(br0.index));
    assert_eq!(seen.mac, Some([0x00, 0x16, 0x3e, 0x0a, 0x0b, 0x0c]));
    assert!(seen.up);
    assert_eq!(seen.alias.as_deref(), Some("xenplug vif5.0"));

    let e = in_ns(&ns, |c| {
        c.set_alias(d0.index, "").unwrap();
        c.set_up(d0.index, false).unwrap();
        c.set_master(d0.index, None).unwrap();
        c.set_name(d0.index, "guest0").unwrap();
        c.set_mtu(999_999, 1500).unwrap_err()
    });
    assert!(matches!(e, Error::Kernel(19)), "ENODEV: {e:?}");
    assert!(e.is_gone());
    assert!(ip_link(&ns, "d0").is_none());
    let o = ip_link(&ns, "guest0").unwrap();
    assert!(o.get("master").is_none(), "{o}");
    assert!(o.get("ifalias").is_none(), "the alias is gone: {o}");
    assert_eq!(
        in_ns(&ns, |c| c.link("guest0").unwrap().unwrap().alias),
        None
    );
    assert!(!o["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
}

#[test]
fn addresses_routes_and_proxy_neighbours_match_ip() {
    let Some(ns) = veth_ns("nl-addr") else {
        return;
    };
    ns.ip(&["link", "set", "d0", "up"]).unwrap();
    let index = json(&ns, &["link", "show", "dev", "d0"])[0]["ifindex"]
        .as_u64()
        .unwrap() as u32;

    let (addrs, again, refreshed) = in_ns(&ns, |c| {
        c.add_address(index, ip("10.1.0.1"), 24, Create::Exclusive)
            .unwrap();
        c.add_address(index, ip("10.1.0.2"), 24, Create::Exclusive)
            .unwrap();
        c.add_address(index, ip("2001:db8::1"), 64, Create::Exclusive)
            .unwrap();
        let again = c
            .add_address(index, ip("10.1.0.1"), 24, Create::Exclusive)
            .unwrap_err();
        let refreshed = c.add_address(index, ip("10.1.0.1"), 24, Create::Replace);
        (c.addresses().unwrap(), again, refreshed)
    });
    assert_eq!(again.errno(), Some(17), "EEXIST: {again}");
    refreshed.unwrap();
    let mine: Vec<_> = addrs.iter().filter(|a| a.index == index).collect();
    let oracle = json(&ns, &["addr", "show", "dev", "d0"]);
    let oracle: Vec<(IpAddr, u8, bool)> = oracle[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                ip(a["local"].as_str().unwrap()),
                a["prefixlen"].as_u64().unwrap() as u8,
                a.get("secondary").is_some(),
            )
        })
        .collect();
    let mut got: Vec<_> = mine
        .iter()
        .map(|a| (a.addr, a.prefix, a.secondary))
        .collect();
    let mut want = oracle.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(got.contains(&(ip("10.1.0.2"), 24, true)), "{got:?}");
    assert!(addrs.iter().any(|a| a.addr == ip("127.0.0.1")));

    let host = Route {
        oif: index,
        dst: ip("10.2.0.5"),
        prefix: 32,
        via: None,
        src: Some(ip("10.1.0.1")),
        metric: Some(7),
        protocol: RouteProtocol::Boot,
    };
    let default = Route {
        dst: ip("0.0.0.0"),
        prefix: 0,
        via: Some(ip("10.1.0.254")),
        src: None,
        metric: None,
        protocol: RouteProtocol::Static,
        ..host.clone()
    };
    let dup = in_ns(&ns, |c| {
        c.add_route(&host, Create::Exclusive).unwrap();
        c.add_route(&default, Create::Replace).unwrap();
        c.add_route(&default, Create::Replace).unwrap();
        c.add_route(&host, Create::Exclusive).unwrap_err()
    });
    assert_eq!(dup.errno(), Some(17));
    let routes = json(&ns, &["-d", "route", "show", "dev", "d0"]);
    let routes = routes.as_array().unwrap();
    let h = routes.iter().find(|r| r["dst"] == "10.2.0.5").unwrap();
    assert_eq!(h["scope"], "link");
    assert_eq!(h["prefsrc"], "10.1.0.1");
    assert_eq!(h["metric"], 7);
    assert_eq!(h["protocol"], "boot");
    let d = routes.iter().find(|r| r["dst"] == "default").unwrap();
    assert_eq!(d["gateway"], "10.1.0.254");
    assert_eq!(d["protocol"], "static");
    assert_eq!(routes.iter().filter(|r| r["dst"] == "default").count(), 1);

    let gone = in_ns(&ns, |c| {
        c.del_route(&host).unwrap();
        // Deleting with protocol Unspec matches any protocol.
        c.del_route(&Route {
            protocol: RouteProtocol::Unspec,
            ..default.clone()
        })
        .unwrap();
        c.del_route(&host).unwrap_err()
    });
    assert!(gone.is_gone(), "{gone:?}");
    let routes = json(&ns, &["route", "show", "dev", "d0"]);
    assert!(routes
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["dst"] != "10.2.0.5" && r["dst"] != "default"));

    in_ns(&ns, |c| {
        c.add_proxy_neighbour(index, ip("2001:db8::7")).unwrap();
        c.add_proxy_neighbour(index, ip("10.1.0.9")).unwrap();
    });
    let proxies = ns.ip(&["neigh", "show", "proxy", "dev", "d0"]).unwrap();
    assert!(proxies.contains("2001:db8::7"), "{proxies}");
    assert!(proxies.contains("10.1.0.9"), "{proxies}");
    let gone = in_ns(&ns, |c| {
        c.del_proxy_neighbour(index, ip("2001:db8::7")).unwrap();
        c.del_proxy_neighbour(index, ip("10.1.0.9")).unwrap();
        c.del_proxy_neighbour(index, ip("10.1.0.9")).unwrap_err()
    });
    assert!(gone.is_gone(), "{gone:?}");
    assert_eq!(
        ns.ip(&["neigh", "show", "proxy", "dev", "d0"])
            .unwrap()
            .trim(),
        ""
    );

    let gone = in_ns(&ns, |c| {
        c.del_address(index, ip("10.1.0.2"), 24).unwrap();
        c.del_address(index, ip("10.1.0.2"), 24).unwrap_err()
    });
    assert!(gone.is_gone(), "{gone:?}");
    let left = json(&ns, &["addr", "show", "dev", "d0"]);
    assert!(!left.to_string().contains("10.1.0.2"));
}

#[test]
fn addresses_of_one_link_are_filtered_by_the_kernel() {
    let Some(ns) = veth_ns("nl-addrof") else {
        return;
    };
    ns.ip(&["addr", "add", "10.7.0.1/24", "dev", "d0"]).unwrap();
    ns.ip(&["addr", "add", "10.7.0.2/32", "dev", "d0"]).unwrap();
    ns.ip(&["addr", "add", "10.8.0.1/24", "dev", "p0"]).unwrap();
    ns.ip(&["addr", "add", "fd00::8/64", "dev", "p0"]).unwrap();
    let (d0, p0, all, of_d0, of_p0, of_none) = in_ns(&ns, |c| {
        let d0 = c.link("d0").unwrap().unwrap().index;
        let p0 = c.link("p0").unwrap().unwrap().index;
        (
            d0,
            p0,
            c.addresses().unwrap(),
            c.addresses_of(d0).unwrap(),
            c.addresses_of(p0).unwrap(),
            c.addresses_of(999_999).unwrap(),
        )
    });
    let mut want_d0: Vec<IpAddr> = all
        .iter()
        .filter(|a| a.index == d0)
        .map(|a| a.addr)
        .collect();
    want_d0.sort();
    let mut got_d0: Vec<IpAddr> = of_d0.iter().map(|a| a.addr).collect();
    got_d0.sort();
    assert_eq!(got_d0, want_d0);
    assert_eq!(got_d0, vec![ip("10.7.0.1"), ip("10.7.0.2")]);
    assert!(of_p0.iter().all(|a| a.index == p0));
    assert!(of_p0.iter().any(|a| a.addr == ip("fd00::8")));
    assert!(of_none.is_empty());
    // The socket is back to normal checking: a plain dump still lists both links' addresses.
    let again = in_ns(&ns, |c| {
        c.addresses_of(d0).unwrap();
        c.addresses().unwrap()
    });
    assert!(again.iter().any(|a| a.index == p0) && again.iter().any(|a| a.index == d0));
}

/// The system call a thread is blocked in (`/proc/self/task/<tid>/syscall`, first field).
fn blocked_in(tid: i32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

#[test]
fn wait_for_link_sees_a_link_created_while_it_waits() {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    use xenplug_netlink::links::{KernelLinks, Links};
    let Some(ns) = veth_ns("nl-wait") else {
        return;
    };
    // Already there: returned at once.
    let d0 = ns.run(|| {
        let mut l = KernelLinks::open().unwrap();
        l.wait_for_link("d0", Duration::from_secs(30)).unwrap()
    });
    assert_eq!(d0.map(|l| l.name).as_deref(), Some("d0"));
    // Never there: None at the deadline, not before.
    let t = Instant::now();
    let none = ns.run(|| {
        let mut l = KernelLinks::open().unwrap();
        l.wait_for_link("nosuch", Duration::from_millis(300))
            .unwrap()
    });
    assert!(none.is_none());
    assert!(t.elapsed() >= Duration::from_millis(300));
    // Created while the waiter is blocked in poll(2) (after its first lookup): the link
    // notification wakes it. The link is created only once the waiting thread is seen in the
    // system call, so this exercises the notification, not the first lookup.
    let (tx, rx) = mpsc::channel();
    let path = ns.path();
    let waiter = std::thread::spawn(move || {
        use std::os::fd::AsFd;
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tx.send(nix::unistd::gettid().as_raw()).unwrap();
        let mut l = KernelLinks::open().unwrap();
        let t = Instant::now();
        let got = l.wait_for_link("late0", Duration::from_secs(30)).unwrap();
        (got, t.elapsed())
    });
    let tid = rx.recv().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocked_in(tid) != Some(libc::SYS_poll) {
        assert!(
            Instant::now() < deadline,
            "the waiter never blocked in poll(2)"
        );
        std::thread::yield_now();
    }
    ns.ip(&["link", "add", "late0", "type", "bridge"]).unwrap();
    let (got, took) = waiter.join().unwrap();
    assert_eq!(got.map(|l| l.name).as_deref(), Some("late0"));
    assert!(took < Duration::from_secs(30), "woken by the notification");
}
