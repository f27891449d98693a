//! Debian's ifupdown: one fragment, `/etc/network/interfaces.d/xenplug-agent`
//! (interfaces(5); bonds as ifenslave reads them, bridges as bridge-utils does, VLANs as the
//! vlan package does).
//!
//! ifupdown runs its methods as `/bin/sh -c` command lines with the interface name substituted
//! and its `up` lines with `/bin/sh -c`: every name is checked with [`super::name`] where it is
//! written, and the agent's own `up`/`down` lines refer to the interface as `"$IFACE"` (which
//! ifupdown sets), never by splicing the name in.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Context, Result};
use xenplug_channel::config::{Interface, IpConfig, Kind, NetworkConfig, RouteTo};

use super::{domain, name, FileOut, Names};

/// The fragment the agent owns.
pub const FILE: &str = "/etc/network/interfaces.d/xenplug-agent";

fn family_is_v4(a: &IpAddr) -> bool {
    a.is_ipv4()
}

/// The stanzas of one interface.
fn stanzas(
    s: &mut String,
    ifname: &str,
    ip: &IpConfig,
    member: bool,
    options: &[String],
) -> Result<()> {
    let ifname = name(ifname)?;
    let _ = writeln!(s, "\nauto {ifname}");
    let mut wrote_options = false;
    let mut opts = |s: &mut String| {
        if !wrote_options {
            for o in options {
                let _ = writeln!(s, "    {o}");
            }
            if let Some(m) = ip.mtu {
                let _ = writeln!(s, "    mtu {m}");
            }
            wrote_options = true;
        }
    };
    let v4: Vec<_> = ip
        .addresses
        .iter()
        .filter(|a| family_is_v4(&a.addr))
        .collect();
    let v6: Vec<_> = ip
        .addresses
        .iter()
        .filter(|a| !family_is_v4(&a.addr))
        .collect();
    let nothing =
        member || (!ip.dhcp4 && !ip.dhcp6 && ip.addresses.is_empty() && ip.accept_ra != Some(true));
    if nothing {
        let _ = writeln!(s, "iface {ifname} inet manual");
        opts(s);
        return Ok(());
    }
    let dns = |s: &mut String| -> Result<()> {
        if !ip.nameservers.addresses.is_empty() {
            let a: Vec<String> = ip
                .nameservers
                .addresses
                .iter()
                .map(|a| a.to_string())
                .collect();
            let _ = writeln!(s, "    dns-nameservers {}", a.join(" "));
        }
        if !ip.nameservers.search.is_empty() {
            let mut d = Vec::new();
            for x in &ip.nameservers.search {
                d.push(domain(x)?);
            }
            let _ = writeln!(s, "    dns-search {}", d.join(" "));
        }
        Ok(())
    };
    let mut dns_done = false;
    let routes_of = |v4: bool| ip.routes.iter().filter(move |r| r.is_ipv4() == v4);
    let route_lines = |s: &mut String, v4: bool| {
        for r in routes_of(v4) {
            let dst = match r.to {
                RouteTo::Default => "default".to_string(),
                RouteTo::Net(c) => c.to_string(),
            };
            let fam = if v4 { "" } else { "-6 " };
            let via = r.via.map(|v| format!(" via {v}")).unwrap_or_default();
            let metric = r.metric.map(|m| format!(" metric {m}")).unwrap_or_default();
            let _ = writeln!(
                s,
                "    up ip {fam}route replace {dst}{via}{metric} dev \"$IFACE\""
            );
            let _ = writeln!(
                s,
                "    down ip {fam}route del {dst}{via}{metric} dev \"$IFACE\" || true"
            );
        }
    };
    // IPv4.
    if ip.dhcp4 {
        let _ = writeln!(s, "iface {ifname} inet dhcp");
        opts(s);
        if let Some(m) = ip.dhcp4_metric {
            let _ = writeln!(s, "    metric {m}");
        }
        dns(s)?;
        dns_done = true;
        if v4.is_empty() {
            route_lines(s, true);
        }
    }
    for (i, a) in v4.iter().enumerate() {
        let _ = writeln!(s, "iface {ifname} inet static\n    address {a}");
        opts(s);
        if !dns_done {
            dns(s)?;
            dns_done = true;
        }
        if i == 0 {
            route_lines(s, true);
        }
    }
    // IPv6.
    if ip.dhcp6 {
        let _ = writeln!(s, "iface {ifname} inet6 dhcp");
        opts(s);
        if ip.accept_ra == Some(true) {
            s.push_str("    accept_ra 2\n");
        }
        if !dns_done {
            dns(s)?;
            dns_done = true;
        }
        if v6.is_empty() {
            route_lines(s, false);
        }
    } else if ip.accept_ra == Some(true) && v6.is_empty() {
        let _ = writeln!(s, "iface {ifname} inet6 auto");
        opts(s);
        if !dns_done {
            dns(s)?;
            dns_done = true;
        }
        route_lines(s, false);
    }
    for (i, a) in v6.iter().enumerate() {
        let _ = writeln!(s, "iface {ifname} inet6 static\n    address {a}");
        opts(s);
        if let Some(ra) = ip.accept_ra {
            let _ = writeln!(s, "    accept_ra {}", if ra { 2 } else { 0 });
        }
        if !dns_done {
            dns(s)?;
            dns_done = true;
        }
        if i == 0 {
            route_lines(s, false);
        }
    }
    Ok(())
}

/// The options of a bond's own stanza (ifenslave).
fn bond_options(n: &NetworkConfig, id: &str, names: &Names) -> Result<Vec<String>> {
    let b = &n.bonds[id];
    let mut members = Vec::new();
    for m in &b.interfaces {
        let nm = names.of(n, m).with_context(|| {
            format!("bond member {m:?}: its interface name is not known (no NIC matches it now)")
        })?;
        members.push(name(&nm)?.to_string());
    }
    let mut o = vec![format!(
        "bond-slaves {}",
        if members.is_empty() {
            "none".to_string()
        } else {
            members.join(" ")
        }
    )];
    let p = &b.parameters;
    let mut kv = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            o.push(format!("{k} {v}"));
        }
    };
    kv("bond-mode", p.mode.clone());
    kv("bond-miimon", p.mii_monitor_interval.map(|x| x.to_string()));
    kv("bond-lacp-rate", p.lacp_rate.clone());
    kv("bond-xmit-hash-policy", p.transmit_hash_policy.clone());
    kv("bond-ad-select", p.ad_select.clone());
    kv("bond-updelay", p.up_delay.map(|x| x.to_string()));
    kv("bond-downdelay", p.down_delay.map(|x| x.to_string()));
    if let Some(pr) = &p.primary {
        let nm = names
            .of(n, pr)
            .context("bond primary: its interface name is not known")?;
        kv("bond-primary", Some(name(&nm)?.to_string()));
    }
    kv("bond-min-links", p.min_links.map(|x| x.to_string()));
    kv("bond-arp-interval", p.arp_interval.map(|x| x.to_string()));
    if !p.arp_ip_targets.is_empty() {
        let t: Vec<String> = p.arp_ip_targets.iter().map(|a| a.to_string()).collect();
        kv("bond-arp-ip-target", Some(t.join(" ")));
    }
    kv("bond-arp-validate", p.arp_validate.clone());
    kv("bond-fail-over-mac", p.fail_over_mac_policy.clone());
    kv("bond-num-grat-arp", p.gratuitous_arp.map(|x| x.to_string()));
    kv("bond-primary-reselect", p.primary_reselect_policy.clone());
    if let Some(mac) = b.macaddress {
        o.push(format!("hwaddress {mac}"));
    }
    Ok(o)
}

fn bridge_options(n: &NetworkConfig, id: &str, names: &Names) -> Result<Vec<String>> {
    let b = &n.bridges[id];
    let mut ports = Vec::new();
    let mut port_name = std::collections::BTreeMap::new();
    for m in &b.interfaces {
        let nm = names.of(n, m).with_context(|| {
            format!("bridge port {m:?}: its interface name is not known (no NIC matches it now)")
        })?;
        let nm = name(&nm)?.to_string();
        port_name.insert(m.clone(), nm.clone());
        ports.push(nm);
    }
    let mut o = vec![format!(
        "bridge_ports {}",
        if ports.is_empty() {
            "none".to_string()
        } else {
            ports.join(" ")
        }
    )];
    let p = &b.parameters;
    if let Some(stp) = p.stp {
        o.push(format!("bridge_stp {}", if stp { "on" } else { "off" }));
    }
    for (k, v) in [
        ("bridge_fd", p.forward_delay),
        ("bridge_bridgeprio", p.priority),
        ("bridge_hello", p.hello_time),
        ("bridge_maxage", p.max_age),
        ("bridge_ageing", p.ageing_time),
    ] {
        if let Some(v) = v {
            o.push(format!("{k} {v}"));
        }
    }
    for (port, c) in &p.path_cost {
        o.push(format!("bridge_pathcost {} {c}", port_name[port]));
    }
    for (port, c) in &p.port_priority {
        o.push(format!("bridge_portprio {} {c}", port_name[port]));
    }
    if let Some(mac) = b.macaddress {
        o.push(format!("bridge_hw {mac}"));
    }
    Ok(o)
}

/// The fragment.
pub fn render(n: &NetworkConfig, names: &Names) -> Result<Vec<FileOut>> {
    let mut s =
        String::from("# Written by xenplug-agent; replaced on every configuration change.\n");
    // Physical interfaces first, then bonds, bridges and VLANs (ifenslave wants that order).
    for (id, e) in &n.ethernets {
        let Some(ifname) = names.of(n, id) else {
            let _ = writeln!(
                s,
                "\n# network.ethernets.{}: no interface matched when this was written",
                super::file_id(id)
            );
            continue;
        };
        let mut options = Vec::new();
        let member = match n.controller_of(id) {
            Some((Kind::Bond, c)) => {
                options.push(format!("bond-master {}", name(c)?));
                true
            }
            Some(_) => true,
            None => false,
        };
        stanzas(&mut s, &ifname, &e.ip(), member, &options)
            .with_context(|| format!("network.ethernets.{id}"))?;
    }
    for (id, b) in &n.bonds {
        let options = bond_options(n, id, names).with_context(|| format!("network.bonds.{id}"))?;
        let member = n.controller_of(id).is_some();
        stanzas(&mut s, id, &b.ip(), member, &options)
            .with_context(|| format!("network.bonds.{id}"))?;
    }
    for (id, b) in &n.bridges {
        let options =
            bridge_options(n, id, names).with_context(|| format!("network.bridges.{id}"))?;
        stanzas(&mut s, id, &b.ip(), false, &options)
            .with_context(|| format!("network.bridges.{id}"))?;
    }
    for (id, v) in &n.vlans {
        let link = names
            .of(n, &v.link)
            .with_context(|| format!("network.vlans.{id}: the name of its link is not known"))?;
        let mut options = vec![
            format!("vlan-raw-device {}", name(&link)?),
            format!("vlan_id {}", v.id),
        ];
        if let Some(mac) = v.macaddress {
            options.push(format!("hwaddress {mac}"));
        }
        let member = n.controller_of(id).is_some();
        stanzas(&mut s, id, &v.ip(), member, &options)
            .with_context(|| format!("network.vlans.{id}"))?;
    }
    Ok(vec![FileOut {
        path: FILE.into(),
        content: s,
        mode: 0o644,
    }])
}
