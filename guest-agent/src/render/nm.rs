//! NetworkManager key files: one connection per entry in
//! `/etc/NetworkManager/system-connections/xenplug-<id>.nmconnection` (mode 0600, as NM requires),
//! members pointing at their controller's UUID (nm-settings-keyfile(5), nm-settings(5)), and a
//! `conf.d` drop-in with global DNS.
//!
//! Key files are GLib key files: values are written only after [`super::name`] and
//! [`super::domain`] checks (no `;`, `#`, `\`, line breaks, or leading spaces can occur) and
//! the connection ids are the entries' validated ids.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use xenplug_channel::config::{
    validate_ifname_pattern, Interface, IpConfig, Kind, NetworkConfig, RouteTo,
};

use super::{domain, file_id, name, FileOut, Names};

/// A stable UUID for entry `id` (so a new generation updates the same connection): two 64-bit
/// FNV-1a hashes of a fixed namespace and the id, shaped as a version 4, variant 1 UUID.
pub fn uuid(id: &str) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in "xenplug-agent/nm/".bytes().chain(id.bytes()) {
        a ^= u64::from(byte);
        a = a.wrapping_mul(0x0000_0100_0000_01b3);
        b ^= u64::from(byte.rotate_left(3));
        b = b.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut x = (u128::from(a) << 64) | u128::from(b);
    x = (x & !(0xf << 76)) | (0x4 << 76);
    x = (x & !(0x3 << 62)) | (0x2 << 62);
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn ip_sections(s: &mut String, ip: &IpConfig) -> Result<()> {
    let v4: Vec<_> = ip.addresses.iter().filter(|a| a.addr.is_ipv4()).collect();
    let v6: Vec<_> = ip.addresses.iter().filter(|a| a.addr.is_ipv6()).collect();
    for (fam, is4) in [("ipv4", true), ("ipv6", false)] {
        let addrs = if is4 { &v4 } else { &v6 };
        let dhcp = if is4 { ip.dhcp4 } else { ip.dhcp6 };
        let slaac = !is4 && ip.accept_ra == Some(true);
        let method = if dhcp || slaac {
            "auto"
        } else if !addrs.is_empty() {
            "manual"
        } else if is4 {
            "disabled"
        } else {
            "ignore"
        };
        let _ = writeln!(s, "\n[{fam}]\nmethod={method}");
        for (i, a) in addrs.iter().enumerate() {
            let _ = writeln!(s, "address{}={a}", i + 1);
        }
        let mut k = 0;
        for r in ip.routes.iter().filter(|r| r.is_ipv4() == is4) {
            match (r.to, r.via) {
                (RouteTo::Default, Some(v)) => {
                    let _ = writeln!(s, "gateway={v}");
                    if let Some(m) = r.metric {
                        let _ = writeln!(s, "route-metric={m}");
                    }
                }
                (RouteTo::Net(c), via) => {
                    k += 1;
                    let mut v = c.to_string();
                    match (via, r.metric) {
                        (Some(g), Some(m)) => {
                            let _ = write!(v, ",{g},{m}");
                        }
                        (Some(g), None) => {
                            let _ = write!(v, ",{g}");
                        }
                        (None, Some(m)) => {
                            let _ = write!(v, ",,{m}");
                        }
                        (None, None) => {}
                    }
                    let _ = writeln!(s, "route{k}={v}");
                }
                (RouteTo::Default, None) => {}
            }
        }
        let metric = if is4 {
            ip.dhcp4_metric
        } else {
            ip.dhcp6_metric
        };
        if let Some(m) = metric {
            let _ = writeln!(s, "route-metric={m}");
        }
        let dns: Vec<String> = ip
            .nameservers
            .addresses
            .iter()
            .filter(|a| a.is_ipv4() == is4)
            .map(|a| format!("{a};"))
            .collect();
        if !dns.is_empty() {
            let _ = writeln!(s, "dns={}", dns.concat());
        }
        if !ip.nameservers.search.is_empty() && (is4 || v4.is_empty() && !ip.dhcp4) {
            let mut d = String::new();
            for x in &ip.nameservers.search {
                d.push_str(domain(x)?);
                d.push(';');
            }
            let _ = writeln!(s, "dns-search={d}");
        }
        if method != "disabled" && method != "ignore" {
            s.push_str("may-fail=false\n");
        }
    }
    Ok(())
}

fn connection(
    n: &NetworkConfig,
    id: &str,
    ctype: &str,
    ifname: Option<&str>,
    ip: &IpConfig,
    body: &str,
) -> Result<FileOut> {
    let mut s = String::from(
        "# Written by xenplug-agent; replaced on every configuration change.\n[connection]\n",
    );
    let _ = writeln!(s, "id=xenplug {id}");
    let _ = writeln!(s, "uuid={}", uuid(id));
    let _ = writeln!(s, "type={ctype}");
    if let Some(nm) = ifname {
        let _ = writeln!(s, "interface-name={}", name(nm)?);
    }
    s.push_str("autoconnect=true\n");
    let member = n.controller_of(id);
    if let Some((k, c)) = member {
        let _ = writeln!(s, "master={}", uuid(c));
        let _ = writeln!(
            s,
            "slave-type={}",
            if k == Kind::Bond { "bond" } else { "bridge" }
        );
    }
    s.push_str(body);
    if let Some((Kind::Bridge, c)) = member {
        let p = &n.bridges[c].parameters;
        if p.path_cost.contains_key(id) || p.port_priority.contains_key(id) {
            s.push_str("\n[bridge-port]\n");
            if let Some(c) = p.path_cost.get(id) {
                let _ = writeln!(s, "path-cost={c}");
            }
            if let Some(pr) = p.port_priority.get(id) {
                let _ = writeln!(s, "priority={pr}");
            }
        }
    }
    if member.is_none() {
        ip_sections(&mut s, ip)?;
    }
    s.push_str("\n[user]\norg.freedesktop.NetworkManager.origin=xenplug-agent\n");
    Ok(FileOut {
        path: format!(
            "/etc/NetworkManager/system-connections/xenplug-{}.nmconnection",
            file_id(id)
        ),
        content: s,
        mode: 0o600,
    })
}

/// The connections and the DNS drop-in (`names`: the kernel names the agent found, for bond
/// options that name a member).
pub fn render(n: &NetworkConfig, names: &Names) -> Result<Vec<FileOut>> {
    let mut out = Vec::new();
    for (id, e) in &n.ethernets {
        let ip = e.ip();
        let mut body = String::from("\n[ethernet]\n");
        let mut ifname = None;
        let mut matcher = String::new();
        match &e.match_ {
            None => ifname = Some(id.as_str()),
            Some(m) => {
                if let Some(mac) = m.macaddress {
                    let _ = writeln!(body, "mac-address={}", mac.to_string().to_uppercase());
                }
                if let Some(sn) = &e.set_name {
                    ifname = Some(sn.as_str());
                } else if let Some(p) = &m.name {
                    validate_ifname_pattern(p).map_err(anyhow::Error::msg)?;
                    if p.contains(['*', '?']) {
                        let _ = writeln!(matcher, "interface-name={p}");
                    } else {
                        ifname = Some(p.as_str());
                    }
                }
                if let Some(d) = &m.driver {
                    let _ = writeln!(matcher, "driver={d}");
                }
            }
        }
        if let Some(m) = ip.mtu {
            let _ = writeln!(body, "mtu={m}");
        }
        if let Some(w) = e.wakeonlan {
            let _ = writeln!(body, "wake-on-lan={}", if w { 64 } else { 0 });
        }
        if !matcher.is_empty() {
            body.push_str("\n[match]\n");
            body.push_str(&matcher);
        }
        out.push(
            connection(n, id, "ethernet", ifname, &ip, &body)
                .with_context(|| format!("network.ethernets.{id}"))?,
        );
    }
    for (id, b) in &n.bonds {
        let p = &b.parameters;
        let mut body = String::from("\n[bond]\n");
        let mut kv = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = writeln!(body, "{k}={v}");
            }
        };
        kv("mode", p.mode.clone());
        kv("miimon", p.mii_monitor_interval.map(|x| x.to_string()));
        kv("lacp_rate", p.lacp_rate.clone());
        kv("xmit_hash_policy", p.transmit_hash_policy.clone());
        kv("ad_select", p.ad_select.clone());
        kv("updelay", p.up_delay.map(|x| x.to_string()));
        kv("downdelay", p.down_delay.map(|x| x.to_string()));
        if let Some(pr) = &p.primary {
            let nm = names.of(n, pr).with_context(|| {
                format!(
                    "network.bonds.{id}.parameters.primary: the interface name of {pr:?} is not \
                     known (no NIC matches it now)"
                )
            })?;
            kv("primary", Some(name(&nm)?.to_string()));
        }
        kv("min_links", p.min_links.map(|x| x.to_string()));
        kv("arp_interval", p.arp_interval.map(|x| x.to_string()));
        if !p.arp_ip_targets.is_empty() {
            let t: Vec<String> = p.arp_ip_targets.iter().map(|a| a.to_string()).collect();
            kv("arp_ip_target", Some(t.join(",")));
        }
        kv("arp_validate", p.arp_validate.clone());
        kv("fail_over_mac", p.fail_over_mac_policy.clone());
        kv("num_grat_arp", p.gratuitous_arp.map(|x| x.to_string()));
        kv("primary_reselect", p.primary_reselect_policy.clone());
        let ip = b.ip();
        body.push_str("\n[ethernet]\n");
        if let Some(mac) = b.macaddress {
            let _ = writeln!(
                body,
                "cloned-mac-address={}",
                mac.to_string().to_uppercase()
            );
        }
        if let Some(m) = ip.mtu {
            let _ = writeln!(body, "mtu={m}");
        }
        out.push(
            connection(n, id, "bond", Some(id), &ip, &body)
                .with_context(|| format!("network.bonds.{id}"))?,
        );
    }
    for (id, b) in &n.bridges {
        let p = &b.parameters;
        let mut body = String::from("\n[bridge]\n");
        if let Some(stp) = p.stp {
            let _ = writeln!(body, "stp={stp}");
        }
        for (k, v) in [
            ("forward-delay", p.forward_delay),
            ("priority", p.priority),
            ("hello-time", p.hello_time),
            ("max-age", p.max_age),
            ("ageing-time", p.ageing_time),
        ] {
            if let Some(v) = v {
                let _ = writeln!(body, "{k}={v}");
            }
        }
        if let Some(mac) = b.macaddress {
            let _ = writeln!(body, "mac-address={}", mac.to_string().to_uppercase());
        }
        let ip = b.ip();
        if let Some(m) = ip.mtu {
            let _ = writeln!(body, "\n[ethernet]\nmtu={m}");
        }
        out.push(
            connection(n, id, "bridge", Some(id), &ip, &body)
                .with_context(|| format!("network.bridges.{id}"))?,
        );
    }
    for (id, v) in &n.vlans {
        let mut body = format!("\n[vlan]\nid={}\nparent={}\n", v.id, uuid(&v.link));
        let ip = v.ip();
        if v.macaddress.is_some() || ip.mtu.is_some() {
            body.push_str("\n[ethernet]\n");
            if let Some(mac) = v.macaddress {
                let _ = writeln!(
                    body,
                    "cloned-mac-address={}",
                    mac.to_string().to_uppercase()
                );
            }
            if let Some(m) = ip.mtu {
                let _ = writeln!(body, "mtu={m}");
            }
        }
        out.push(
            connection(n, id, "vlan", Some(id), &ip, &body)
                .with_context(|| format!("network.vlans.{id}"))?,
        );
    }
    if let Some(ns) = n.nameservers.as_ref().filter(|ns| !ns.is_empty()) {
        let mut s = String::from("# Written by xenplug-agent.\n");
        if !ns.search.is_empty() {
            let mut d = Vec::new();
            for x in &ns.search {
                d.push(domain(x)?);
            }
            let _ = writeln!(s, "[global-dns]\nsearches={}\n", d.join(","));
        }
        let a: Vec<String> = ns.addresses.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(s, "[global-dns-domain-*]\nservers={}", a.join(","));
        out.push(FileOut {
            path: "/etc/NetworkManager/conf.d/90-xenplug-agent-dns.conf".into(),
            content: s,
            mode: 0o644,
        });
    }
    Ok(out)
}
