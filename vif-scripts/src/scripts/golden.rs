//! Golden files of the planners' outputs (`vif-scripts/tests/golden/*.txt`): every step of a
//! plan as the applier logs it, with each nftables batch (and the batch that undoes it) as the
//! text `nft -f -` receives, and each xenstore write. A change of behaviour is a diff of these
//! files; `XENPLUG_BLESS=1 cargo test -p xenplug-vif golden` rewrites them (see
//! `xenplug_testkit::golden`).

use std::fmt::Write;

use super::bridge::{plan_bridge, BridgeFacts};
use super::nat::{plan_nat, NatFacts};
use super::openvswitch::{plan_ovs, OvsFacts, PortRow, BACKEND_ID};
use super::route::{plan_route, RouteFacts};
use super::testutil::*;
use crate::types::Mode;

/// The plan as text: one line per step; an nft batch is followed by its commands (JSON, one a
/// line) and its undo's.
fn render(title: &str, plan: &Plan) -> String {
    let mut out = format!("# {title}\n");
    for s in &plan.steps {
        let on = match s {
            Step::Link(_, o) | Step::Nft(_, o) => *o,
            Step::Sysctl { on_error, .. } | Step::XsWrite { on_error, .. } => *on_error,
            _ => OnError::Fatal,
        };
        writeln!(out, "{s} [{on:?}]").unwrap();
        if let Step::Nft(b, _) = s {
            // One command of the batch per line, so a change is a one-line diff.
            let cmds = |out: &mut String, b: &NftBatch| {
                for c in &b.cmds {
                    writeln!(out, "    {c}").unwrap();
                }
            };
            cmds(&mut out, b);
            if let Some(u) = &b.undo {
                writeln!(out, "  undo: nft batch ({})", u.what).unwrap();
                cmds(&mut out, u);
            }
        }
    }
    out.push('\n');
    out
}

fn check(name: &str, text: &str) {
    let path = format!("{}/tests/golden/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    xenplug_testkit::golden::check(path, text);
}

const IPS: (&str, &str) = ("ip", "10.0.0.5 2001:db8::5 192.0.2.128/25");

#[test]
fn golden_vif_bridge() {
    let mut links = host();
    links.add("vif5.0-emu", Some("tun"));
    let f = BridgeFacts {
        bridge: "xenbr0".into(),
        mtu: None,
    };
    let mut text = String::new();
    for (title, action, type_if, nodes) in [
        (
            "online type_if=vif, ip listed, enforce",
            Action::Online,
            "vif",
            vec![IPS],
        ),
        ("offline type_if=vif", Action::Offline, "vif", vec![IPS]),
        (
            "online type_if=vif, vifname web0, mtu 9000 node",
            Action::Online,
            "vif",
            vec![("vifname", "web0"), ("mtu", "9000")],
        ),
        (
            "online type_if=vif, vifname web0, ip listed: the chain keeps the backend's name",
            Action::Online,
            "vif",
            vec![("vifname", "web0"), ("ip", "10.0.0.5")],
        ),
        (
            "add type_if=tap, rate 125000,50000",
            Action::Add,
            "tap",
            vec![("rate", "125000,50000"), IPS],
        ),
        (
            "remove type_if=tap, rate",
            Action::Remove,
            "tap",
            vec![("rate", "125000,50000"), IPS],
        ),
    ] {
        let c = common(action, type_if, &nodes);
        let mtu = nodes
            .iter()
            .find(|(k, _)| *k == "mtu")
            .map(|(_, v)| v.to_string());
        let f = BridgeFacts { mtu, ..f.clone() };
        let (plan, br) = plan_bridge(&c, &f, &observed(&links)).unwrap();
        text += &render(&format!("vif-bridge {title} (bridge {br})"), &plan);
    }
    let mut compat = common(Action::Online, "vif", &[IPS]);
    compat.antispoof = Mode::Compat;
    let (plan, _) = plan_bridge(&compat, &f, &observed(&links)).unwrap();
    text += &render("vif-bridge online type_if=vif, antispoof=compat", &plan);
    check("vif-bridge", &text);
}

#[test]
fn golden_vif_route() {
    let f = RouteFacts {
        netdev: "eth0".into(),
        program: "vif-route".into(),
    };
    let mut text = String::new();
    for (title, action) in [("online", Action::Online), ("offline", Action::Offline)] {
        let c = common(action, "vif", &[IPS]);
        text += &render(
            &format!("vif-route {title} type_if=vif, netdev eth0"),
            &plan_route(&c, &f, &observed(&host())).unwrap(),
        );
    }
    check("vif-route", &text);
}

#[test]
fn golden_vif_nat() {
    let f = NatFacts {
        domid: 300,
        handle: 1,
        mac: Some("00:16:3e:01:02:03".into()),
        dhcp: true,
        masquerade: true,
    };
    let mut text = String::new();
    for (title, action, nodes) in [
        (
            "online, default address, dhcp, masquerade",
            Action::Online,
            vec![],
        ),
        ("offline", Action::Offline, vec![]),
        (
            "online, ip 10.0.5.1, antispoof enforce",
            Action::Online,
            vec![("ip", "10.0.5.1")],
        ),
        (
            "offline, ip 10.0.5.1",
            Action::Offline,
            vec![("ip", "10.0.5.1")],
        ),
    ] {
        let c = common(action, "vif", &nodes);
        text += &render(
            &format!("vif-nat {title}"),
            &plan_nat(&c, &f, &observed(&host())).unwrap(),
        );
    }
    check("vif-nat", &text);
}

#[test]
fn golden_vif_openvswitch() {
    let f = OvsFacts {
        bridge: "ovsbr.7:20:30".into(),
        vm_name: Some("web \"1\"".into()),
        vm_uuid: Some("8c4b3a3e-0000-4000-8000-000000000005".into()),
        mac: "00:16:3e:00:00:05".into(),
        port: PortRow::NotRead,
    };
    let ids = |b: &str| PortRow::Ids([(BACKEND_ID.to_string(), b.to_string())].into());
    let mut text = String::new();
    for (title, action, port) in [
        ("online", Action::Online, PortRow::NotRead),
        ("offline", Action::Offline, ids("backend/vif/5/0")),
        (
            "offline, the port named so is another backend's",
            Action::Offline,
            ids("backend/vif/7/0"),
        ),
    ] {
        let c = common(action, "vif", &[IPS]);
        let f = OvsFacts { port, ..f.clone() };
        text += &render(
            &format!("vif-openvswitch {title} type_if=vif, bridge {}", f.bridge),
            &plan_ovs(&c, &f, &observed(&host())).unwrap(),
        );
    }
    // In a driver domain, where the VM's vm node and /vm/<uuid> are out of reach.
    let dd = OvsFacts {
        vm_name: None,
        vm_uuid: None,
        ..f.clone()
    };
    text += &render(
        "vif-openvswitch online type_if=vif in a driver domain (no VM name or uuid)",
        &plan_ovs(
            &common(Action::Online, "vif", &[IPS]),
            &dd,
            &observed(&host()),
        )
        .unwrap(),
    );
    check("vif-openvswitch", &text);
}
