//! Ingress policing against the real kernel, in throwaway network namespaces, with `tc` as the
//! oracle. Needs root, `ip` and `tc`; the police tests also need a kernel with `cls_matchall` and
//! `act_police` (Debian's has them as modules; tools/vm-test.sh runs these tests under it when
//! the host kernel lacks them). Skipped otherwise; fail under CI.

use netlink_packet_route::RouteNetlinkMessage;
use xenplug_netlink::tc::{ingress_qdisc_message, TC_ACT_OK, TC_ACT_SHOT};
use xenplug_netlink::{Client, Error};
use xenplug_testkit::{require, require_program, require_root, NetNs};

/// A fresh namespace with the veth pair `d0`/`p0`, or `None` when the test cannot run.
fn veth_ns(tag: &str) -> Option<NetNs> {
    if !(require_root() && require_program("ip") && require_program("tc")) {
        return None;
    }
    let ns = NetNs::new(tag).unwrap();
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "p0"])
        .unwrap();
    Some(ns)
}

/// Run `f` with a client opened on a thread that has entered `ns`.
fn in_ns<T: Send>(ns: &NetNs, f: impl FnOnce(&mut Client) -> T + Send) -> T {
    ns.run(|| f(&mut Client::open().unwrap()))
}

fn index(ns: &NetNs, dev: &str) -> u32 {
    let dev = dev.to_string();
    in_ns(ns, move |c| c.link(&dev).unwrap().unwrap().index)
}

/// True when the kernel can police (cls_matchall + act_police), probed on `p0`.
fn police_supported(ns: &NetNs) -> bool {
    let i = index(ns, "p0");
    let r = in_ns(ns, move |c| {
        let r = c.set_ingress_police(i, 1000, 131_072);
        let _ = c.clear_ingress(i);
        r
    });
    match r {
        Ok(()) => true,
        Err(Error::Kernel(libc::ENOENT)) => false,
        Err(e) => panic!("probing police: {e}"),
    }
}

#[test]
fn clear_ingress_counts_every_kernel_answer_for_absent_as_gone() {
    let Some(ns) = veth_ns("tc-clear") else {
        return;
    };
    let d0 = index(&ns, "d0");
    // The kernel's own answers to deleting a missing ingress qdisc.
    let raw_del = move |c: &mut Client| {
        c.request(
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc_message(d0)),
            netlink_packet_core::NLM_F_ACK,
        )
        .map(drop)
    };
    // Never had one: ENOENT ("Cannot find specified qdisc on specified device").
    let (raw, cleared) = in_ns(&ns, move |c| (raw_del(c), c.clear_ingress(d0).unwrap()));
    assert!(matches!(raw, Err(Error::Kernel(libc::ENOENT))), "{raw:?}");
    assert!(!cleared);

    ns.tc(&["qdisc", "add", "dev", "d0", "ingress"]);
    assert_eq!(ns.ingress_qdiscs("d0").len(), 1);
    assert!(in_ns(&ns, move |c| c.clear_ingress(d0).unwrap()));
    assert!(ns.ingress_qdiscs("d0").is_empty());
    // Had one, deleted: the slot holds the handle-less noop qdisc, EINVAL ("Invalid handle").
    let (raw, cleared) = in_ns(&ns, move |c| (raw_del(c), c.clear_ingress(d0).unwrap()));
    assert!(matches!(raw, Err(Error::Kernel(libc::EINVAL))), "{raw:?}");
    assert!(!cleared);

    // A clsact qdisc is not ours: EINVAL ("Invalid qdisc name"), and it stays.
    ns.tc(&["qdisc", "add", "dev", "d0", "clsact"]);
    assert!(!in_ns(&ns, move |c| c.clear_ingress(d0).unwrap()));
    assert!(ns.tc(&["qdisc", "show", "dev", "d0"]).contains("clsact"));

    // No such link.
    let e = in_ns(&ns, |c| c.clear_ingress(999_999).unwrap_err());
    assert!(e.is_gone() && e.errno() == Some(libc::ENODEV), "{e}");
}

#[test]
#[ignore = "needs tc policing (cls_matchall, act_police), which some kernels lack: test.sh runs it under Debian's kernel with tools/vm-kernel-tests.sh"]
fn police_is_installed_read_back_replaced_and_removed() {
    let Some(ns) = veth_ns("tc-police") else {
        return;
    };
    if !require(
        police_supported(&ns),
        "a kernel with cls_matchall and act_police (tools/vm-test.sh)",
    ) {
        return;
    }
    let d0 = index(&ns, "d0");
    // 125000,1000000 as a rate node: 1 Mbit/s with netback's 128 KiB bucket.
    in_ns(&ns, move |c| c.set_ingress_police(d0, 125_000, 131_072)).unwrap();

    let q = ns.ingress_qdiscs("d0");
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(
        (q[0]["kind"].as_str(), q[0]["handle"].as_str()),
        (Some("ingress"), Some("ffff:"))
    );
    let f = ns.ingress_filters("d0");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (
            f[0]["kind"].as_str(),
            f[0]["protocol"].as_str(),
            f[0]["pref"].as_u64()
        ),
        (Some("matchall"), Some("all"), Some(1))
    );
    let act = &f[0]["options"]["actions"];
    assert_eq!(act.as_array().unwrap().len(), 1, "{act}");
    assert_eq!(act[0]["kind"], "police");
    assert_eq!(act[0]["control_action"]["type"], "drop");
    // iproute2 6.1 prints the policer's parameters in text only; the conform action (pass,
    // TC_ACT_OK) is the default, which the kernel does not echo back.
    let text = ns.tc(&["filter", "show", "dev", "d0", "ingress"]);
    assert!(
        text.contains("police 0x")
            && text.contains(" rate 1Mbit burst 128Kb mtu 4096Mb action drop "),
        "{text}"
    );
    let p = in_ns(&ns, move |c| c.ingress_police(d0)).unwrap().unwrap();
    assert_eq!(p.rate, 125_000);
    assert!((131_071..=131_073).contains(&p.burst), "{p:?}");
    assert_eq!(
        (p.mtu, p.exceed, p.conform),
        (u32::MAX, TC_ACT_SHOT, TC_ACT_OK)
    );

    // Again with other figures: replaced, still one filter.
    in_ns(&ns, move |c| c.set_ingress_police(d0, 2_500_000, 262_144)).unwrap();
    assert_eq!(ns.ingress_filters("d0").len(), 1);
    let text = ns.tc(&["filter", "show", "dev", "d0", "ingress"]);
    assert!(text.contains("rate 20Mbit burst 256Kb"), "{text}");

    // Above 32 bits of bytes/s: TCA_POLICE_RATE64.
    in_ns(&ns, move |c| {
        c.set_ingress_police(d0, 10_000_000_000, 1 << 20)
    })
    .unwrap();
    let text = ns.tc(&["filter", "show", "dev", "d0", "ingress"]);
    assert!(text.contains("rate 80Gbit burst "), "{text}");
    let p = in_ns(&ns, move |c| c.ingress_police(d0)).unwrap().unwrap();
    assert_eq!(p.rate, 10_000_000_000);
    // Rounded up to whole 64 ns ticks: at 10 GB/s a tick is 640 bytes.
    assert!((1 << 20..(1 << 20) + 640).contains(&p.burst), "{p:?}");

    // Removal takes the filter with it; a second removal finds nothing.
    assert!(in_ns(&ns, move |c| c.clear_ingress(d0)).unwrap());
    assert!(ns.ingress_qdiscs("d0").is_empty());
    assert!(ns
        .tc(&["filter", "show", "dev", "d0", "ingress"])
        .trim()
        .is_empty());
    assert_eq!(in_ns(&ns, move |c| c.ingress_police(d0)).unwrap(), None);
    assert!(!in_ns(&ns, move |c| c.clear_ingress(d0)).unwrap());

    // A missing link.
    let e = in_ns(&ns, |c| {
        c.set_ingress_police(999_999, 1000, 131_072).unwrap_err()
    });
    assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
}
