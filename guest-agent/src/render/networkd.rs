//! systemd-networkd: `.network` per entry, `.netdev` per bond, bridge and VLAN, `.link` for
//! renames and Wake-on-LAN, and a resolved drop-in for global DNS (systemd.network(5),
//! systemd.netdev(5), systemd.link(5)).

use std::fmt::Write as _;

use anyhow::{Context, Result};
use xenplug_channel::config::{
    validate_ifname_pattern, Ethernet, Interface, IpConfig, Kind, NetworkConfig, RouteTo,
};

use super::{domain, file_id, name, FileOut};

/// Prefix of the agent's files in `/etc/systemd/network`.
pub const PREFIX: &str = "10-xenplug-";

const HEADER: &str = "# Written by xenplug-agent; replaced on every configuration change.\n";

fn file(kind: &str, id: &str, content: String) -> FileOut {
    FileOut {
        path: format!("/etc/systemd/network/{PREFIX}{}.{kind}", file_id(id)),
        content,
        mode: 0o644,
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The `[Match]` lines for an `ethernets` entry.
fn match_ethernet(id: &str, e: &Ethernet) -> Result<String> {
    let mut s = String::from("[Match]\n");
    match &e.match_ {
        None => {
            let _ = writeln!(s, "Name={}", name(id)?);
        }
        Some(m) => {
            if let Some(mac) = m.macaddress {
                let _ = writeln!(s, "MACAddress={mac}");
            }
            // After a rename the NIC is known by its new name.
            match (&e.set_name, &m.name) {
                (Some(n), _) => {
                    let _ = writeln!(s, "Name={}", name(n)?);
                }
                (None, Some(p)) => {
                    validate_ifname_pattern(p).map_err(anyhow::Error::msg)?;
                    let _ = writeln!(s, "Name={p}");
                }
                (None, None) => {}
            }
            if let Some(d) = &m.driver {
                let _ = writeln!(s, "Driver={d}");
            }
        }
    }
    Ok(s)
}

/// `[Network]`, `[Address]`-less addresses, `[DHCPv4]`, `[Route]` for an IP configuration.
fn ip_sections(s: &mut String, ip: &IpConfig, extra_network: &[String]) -> Result<()> {
    s.push_str("\n[Network]\n");
    let dhcp = match (ip.dhcp4, ip.dhcp6) {
        (true, true) => "yes",
        (true, false) => "ipv4",
        (false, true) => "ipv6",
        (false, false) => "no",
    };
    let _ = writeln!(s, "DHCP={dhcp}");
    // As netplan: router advertisements only with DHCPv6 or when asked for.
    let _ = writeln!(s, "IPv6AcceptRA={}", yes(ip.accept_ra.unwrap_or(ip.dhcp6)));
    for a in &ip.addresses {
        let _ = writeln!(s, "Address={a}");
    }
    for a in &ip.nameservers.addresses {
        let _ = writeln!(s, "DNS={a}");
    }
    if !ip.nameservers.search.is_empty() {
        let mut d = Vec::new();
        for x in &ip.nameservers.search {
            d.push(domain(x)?);
        }
        let _ = writeln!(s, "Domains={}", d.join(" "));
    }
    for l in extra_network {
        s.push_str(l);
        s.push('\n');
    }
    if let Some(m) = ip.dhcp4_metric {
        let _ = writeln!(s, "\n[DHCPv4]\nRouteMetric={m}");
    }
    if let Some(m) = ip.dhcp6_metric {
        let _ = writeln!(s, "\n[DHCPv6]\nRouteMetric={m}");
    }
    for r in &ip.routes {
        s.push_str("\n[Route]\n");
        if let RouteTo::Net(c) = r.to {
            let _ = writeln!(s, "Destination={c}");
        }
        match r.via {
            Some(v) => {
                let _ = writeln!(s, "Gateway={v}");
            }
            None => s.push_str("Scope=link\n"),
        }
        if let Some(m) = r.metric {
            let _ = writeln!(s, "Metric={m}");
        }
    }
    Ok(())
}

/// `[Link]` lines of a `.network` file.
fn link_section(s: &mut String, ip: &IpConfig) {
    if ip.mtu.is_some() || ip.optional {
        s.push_str("\n[Link]\n");
        if let Some(m) = ip.mtu {
            let _ = writeln!(s, "MTUBytes={m}");
        }
        if ip.optional {
            s.push_str("RequiredForOnline=no\n");
        }
    }
}

/// The lines a member or VLAN parent gets in its `[Network]` section.
fn member_lines(n: &NetworkConfig, id: &str) -> Result<Vec<String>> {
    let mut v = Vec::new();
    if let Some((k, c)) = n.controller_of(id) {
        match k {
            Kind::Bond => {
                v.push(format!("Bond={}", name(c)?));
                if n.bonds[c].parameters.primary.as_deref() == Some(id) {
                    v.push("PrimarySlave=yes".into());
                }
            }
            Kind::Bridge => v.push(format!("Bridge={}", name(c)?)),
            _ => {}
        }
    }
    for (vid, vl) in &n.vlans {
        if vl.link == id {
            v.push(format!("VLAN={}", name(vid)?));
        }
    }
    Ok(v)
}

/// The `[Bridge]` section of a bridge port's `.network`.
fn port_section(n: &NetworkConfig, id: &str) -> String {
    let mut s = String::new();
    if let Some((Kind::Bridge, c)) = n.controller_of(id) {
        let p = &n.bridges[c].parameters;
        let cost = p.path_cost.get(id);
        let prio = p.port_priority.get(id);
        if cost.is_some() || prio.is_some() {
            s.push_str("\n[Bridge]\n");
            if let Some(c) = cost {
                let _ = writeln!(s, "Cost={c}");
            }
            if let Some(p) = prio {
                let _ = writeln!(s, "Priority={p}");
            }
        }
    }
    s
}

fn network_file(n: &NetworkConfig, id: &str, matcher: String, ip: &IpConfig) -> Result<String> {
    let mut s = String::from(HEADER);
    s.push_str(&matcher);
    link_section(&mut s, ip);
    let member = n.controller_of(id).is_some();
    let extra = member_lines(n, id)?;
    if member {
        // A bond or bridge member has no addresses of its own.
        s.push_str("\n[Network]\n");
        for l in &extra {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("LinkLocalAddressing=no\nIPv6AcceptRA=no\n");
        s.push_str(&port_section(n, id));
    } else {
        ip_sections(&mut s, ip, &extra)?;
    }
    Ok(s)
}

/// Seconds as networkd's time span.
fn secs(n: u32) -> String {
    format!("{n}s")
}

/// Milliseconds as networkd's time span.
fn ms(n: u32) -> String {
    format!("{n}ms")
}

/// The `.network` and `.netdev` files.
pub fn render(n: &NetworkConfig) -> Result<Vec<FileOut>> {
    let mut out = Vec::new();
    for (id, e) in &n.ethernets {
        let m = match_ethernet(id, e)?;
        let text =
            network_file(n, id, m, &e.ip()).with_context(|| format!("network.ethernets.{id}"))?;
        out.push(file("network", id, text));
    }
    for (id, b) in &n.bonds {
        let mut d = format!("{HEADER}[NetDev]\nName={}\nKind=bond\n", name(id)?);
        if let Some(mac) = b.macaddress {
            let _ = writeln!(d, "MACAddress={mac}");
        }
        if let Some(m) = b.mtu {
            let _ = writeln!(d, "MTUBytes={m}");
        }
        let p = &b.parameters;
        let mut bond = String::new();
        let mut kv = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = writeln!(bond, "{k}={v}");
            }
        };
        kv("Mode", p.mode.clone());
        kv("MIIMonitorSec", p.mii_monitor_interval.map(ms));
        kv("LACPTransmitRate", p.lacp_rate.clone());
        kv("TransmitHashPolicy", p.transmit_hash_policy.clone());
        kv("AdSelect", p.ad_select.clone());
        kv("UpDelaySec", p.up_delay.map(ms));
        kv("DownDelaySec", p.down_delay.map(ms));
        kv("MinLinks", p.min_links.map(|x| x.to_string()));
        kv("ARPIntervalSec", p.arp_interval.map(ms));
        if !p.arp_ip_targets.is_empty() {
            let t: Vec<String> = p.arp_ip_targets.iter().map(|a| a.to_string()).collect();
            kv("ARPIPTargets", Some(t.join(" ")));
        }
        kv("ARPValidate", p.arp_validate.clone());
        kv("FailOverMACPolicy", p.fail_over_mac_policy.clone());
        kv("GratuitousARP", p.gratuitous_arp.map(|x| x.to_string()));
        kv("PrimaryReselectPolicy", p.primary_reselect_policy.clone());
        if !bond.is_empty() {
            d.push_str("\n[Bond]\n");
            d.push_str(&bond);
        }
        out.push(file("netdev", id, d));
        let text = network_file(n, id, format!("[Match]\nName={}\n", name(id)?), &b.ip())
            .with_context(|| format!("network.bonds.{id}"))?;
        out.push(file("network", id, text));
    }
    for (id, b) in &n.bridges {
        let mut d = format!("{HEADER}[NetDev]\nName={}\nKind=bridge\n", name(id)?);
        if let Some(mac) = b.macaddress {
            let _ = writeln!(d, "MACAddress={mac}");
        }
        if let Some(m) = b.mtu {
            let _ = writeln!(d, "MTUBytes={m}");
        }
        let p = &b.parameters;
        let mut br = String::new();
        let mut kv = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = writeln!(br, "{k}={v}");
            }
        };
        kv("STP", p.stp.map(|b| yes(b).to_string()));
        kv("ForwardDelaySec", p.forward_delay.map(secs));
        kv("Priority", p.priority.map(|x| x.to_string()));
        kv("HelloTimeSec", p.hello_time.map(secs));
        kv("MaxAgeSec", p.max_age.map(secs));
        kv("AgeingTimeSec", p.ageing_time.map(secs));
        if !br.is_empty() {
            d.push_str("\n[Bridge]\n");
            d.push_str(&br);
        }
        out.push(file("netdev", id, d));
        let text = network_file(n, id, format!("[Match]\nName={}\n", name(id)?), &b.ip())
            .with_context(|| format!("network.bridges.{id}"))?;
        out.push(file("network", id, text));
    }
    for (id, v) in &n.vlans {
        let mut d = format!("{HEADER}[NetDev]\nName={}\nKind=vlan\n", name(id)?);
        if let Some(mac) = v.macaddress {
            let _ = writeln!(d, "MACAddress={mac}");
        }
        if let Some(m) = v.mtu {
            let _ = writeln!(d, "MTUBytes={m}");
        }
        let _ = writeln!(d, "\n[VLAN]\nId={}", v.id);
        out.push(file("netdev", id, d));
        let text = network_file(n, id, format!("[Match]\nName={}\n", name(id)?), &v.ip())
            .with_context(|| format!("network.vlans.{id}"))?;
        out.push(file("network", id, text));
    }
    if let Some(ns) = n.nameservers.as_ref().filter(|ns| !ns.is_empty()) {
        let mut s = format!("{HEADER}[Resolve]\n");
        if !ns.addresses.is_empty() {
            let a: Vec<String> = ns.addresses.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(s, "DNS={}", a.join(" "));
        }
        if !ns.search.is_empty() {
            let mut d = Vec::new();
            for x in &ns.search {
                d.push(domain(x)?);
            }
            let _ = writeln!(s, "Domains={}", d.join(" "));
        }
        out.push(FileOut {
            path: "/etc/systemd/resolved.conf.d/xenplug-agent.conf".into(),
            content: s,
            mode: 0o644,
        });
    }
    Ok(out)
}

/// `.link` files: the rename of `set-name` and Wake-on-LAN, which udev applies whatever
/// manages the network.
pub fn links(n: &NetworkConfig) -> Result<Vec<FileOut>> {
    let mut out = Vec::new();
    for (id, e) in &n.ethernets {
        if e.set_name.is_none() && e.wakeonlan.is_none() {
            continue;
        }
        let mut s = String::from("# Written by xenplug-agent.\n[Match]\n");
        match &e.match_ {
            Some(m) => {
                if let Some(mac) = m.macaddress {
                    let _ = writeln!(s, "MACAddress={mac}");
                }
                if let Some(p) = &m.name {
                    validate_ifname_pattern(p).map_err(anyhow::Error::msg)?;
                    let _ = writeln!(s, "OriginalName={p}");
                }
                if let Some(d) = &m.driver {
                    let _ = writeln!(s, "Driver={d}");
                }
            }
            None => {
                let _ = writeln!(s, "OriginalName={}", name(id)?);
            }
        }
        s.push_str("\n[Link]\n");
        if let Some(nm) = &e.set_name {
            let _ = writeln!(s, "Name={}", name(nm)?);
        } else {
            // Keep the kernel's naming when only Wake-on-LAN is set.
            s.push_str("NamePolicy=keep kernel database onboard slot path\n");
        }
        if let Some(w) = e.wakeonlan {
            let _ = writeln!(s, "WakeOnLan={}", if w { "magic" } else { "off" });
        }
        out.push(file("link", id, s));
    }
    Ok(out)
}
