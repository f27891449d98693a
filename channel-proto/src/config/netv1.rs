//! cloud-init network-config **version 1** → the version 2 model ([`NetworkConfig`]), with
//! cloud-init's meanings (its `network_state` does the same conversion the other way round):
//!
//! * `physical` with `mac_address` → an `ethernets` entry matching that MAC and renaming the
//!   NIC to `name` (cloud-init keeps that mapping persistent); without it, the entry's id is the
//!   interface name. `bond`, `bridge`, `vlan` → `bonds`, `bridges`, `vlans`, their `params`
//!   converted to netplan's names (`bond-miimon` → `mii-monitor-interval`, `bridge_fd` →
//!   `forward-delay`, …). Members named but not defined are plain `ethernets` entries, as
//!   cloud-init's placeholders.
//! * `subnets`: `static`/`static6` → `addresses` (`netmask` or a missing prefix as cloud-init:
//!   /24 for IPv4, /64 for IPv6), `gateway` → a default route (with the subnet's `metric`),
//!   `routes`, `dns_nameservers`/`dns_search`; `dhcp`/`dhcp4` → `dhcp4` (the subnet's `metric`
//!   → `dhcp4-overrides.route-metric`); `dhcp6` and `ipv6_dhcpv6-stateful` → `dhcp6`;
//!   `ipv6_slaac` → `accept-ra`; `ipv6_dhcpv6-stateless` → `accept-ra` and `dhcp6`; `manual` →
//!   nothing; an IPv4 subnet `mtu` → the interface's MTU.
//! * `nameserver` with `interface` → that interface's `nameservers`; without → the global
//!   `nameservers`.
//! * `route` → attached to the interface whose static subnet holds the gateway (or the only
//!   interface using DHCP for that family); a route whose gateway is on none is refused: it could
//!   not work.
//!
//! Anything else is refused with its path and "not supported by xenplug-agent".

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_norway::{Mapping, Value};

use super::network::{
    parse_yaml11_bool, Bond, BondParameters, Bridge, BridgeParameters, Cidr, DhcpOverrides,
    Ethernet, MacAddr, Match, Nameservers, NetworkConfig, Route, RouteTo, Vlan,
};
use super::{ConfigError, NOT_SUPPORTED};

type R<T> = Result<T, ConfigError>;

fn err(at: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::new(at, msg)
}

fn map<'a>(v: &'a Value, at: &str) -> R<&'a Mapping> {
    v.as_mapping().ok_or_else(|| err(at, "must be a mapping"))
}

fn keys(m: &Mapping, allowed: &[&str], at: &str) -> R<()> {
    for k in m.keys() {
        let Some(k) = k.as_str() else {
            return Err(err(at, "keys must be strings"));
        };
        if !allowed.contains(&k) {
            return Err(err(&format!("{at}.{k}"), NOT_SUPPORTED));
        }
    }
    Ok(())
}

fn string(v: &Value, at: &str) -> R<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(err(at, "must be a string")),
    }
}

fn opt_string(m: &Mapping, k: &str, at: &str) -> R<Option<String>> {
    m.get(k)
        .filter(|v| !v.is_null())
        .map(|v| string(v, &format!("{at}.{k}")))
        .transpose()
}

fn number(v: &Value, at: &str) -> R<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| err(at, "must be a non-negative integer"))
}

fn boolean(v: &Value, at: &str) -> R<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        Value::String(s) => parse_yaml11_bool(s)
            .or(match s.as_str() {
                "0" => Some(false),
                "1" => Some(true),
                _ => None,
            })
            .ok_or_else(|| err(at, format!("{s:?} is not a boolean"))),
        _ => Err(err(at, "must be a boolean")),
    }
}

/// A list of strings, or one string of space-separated items (cloud-init accepts both).
fn string_list(v: &Value, at: &str) -> R<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(s) => s
            .iter()
            .enumerate()
            .map(|(i, x)| string(x, &format!("{at}[{i}]")))
            .collect(),
        Value::String(s) => Ok(s.split_whitespace().map(str::to_string).collect()),
        _ => Err(err(at, "must be a list of strings")),
    }
}

fn ip(s: &str, at: &str) -> R<IpAddr> {
    s.parse()
        .map_err(|_| err(at, format!("{s:?} is not an IPv4 or IPv6 address")))
}

/// A netmask (dotted IPv4, IPv6 mask, or a prefix length) → prefix length.
fn mask_prefix(mask: &str, v6: bool, at: &str) -> R<u8> {
    if let Ok(n) = mask.parse::<u8>() {
        if n <= if v6 { 128 } else { 32 } {
            return Ok(n);
        }
    }
    let bits: u128 = match mask.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) if !v6 => u128::from(u32::from(a)) << 96,
        Ok(IpAddr::V6(a)) if v6 => u128::from(a),
        _ => return Err(err(at, format!("{mask:?} is not a netmask"))),
    };
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return Err(err(at, format!("{mask:?} is not a contiguous netmask")));
    }
    Ok(ones as u8)
}

/// An address with optional `/prefix` and an optional separate netmask/prefix, as cloud-init
/// normalises them (no prefix: /24 for IPv4, /64 for IPv6).
fn cidr(addr: &str, netmask: Option<&str>, prefix: Option<u32>, at: &str) -> R<Cidr> {
    let (a, p) = match addr.split_once('/') {
        Some((a, p)) => (a, Some(p.to_string())),
        None => (addr, None),
    };
    let a = ip(a, at)?;
    let v6 = a.is_ipv6();
    let prefix = match (p, netmask, prefix) {
        (Some(p), _, _) => mask_prefix(&p, v6, at)?,
        (None, _, Some(n)) => mask_prefix(&n.to_string(), v6, at)?,
        (None, Some(m), None) => mask_prefix(m, v6, &format!("{at}(netmask)"))?,
        (None, None, None) => {
            if v6 {
                64
            } else {
                24
            }
        }
    };
    Ok(Cidr { addr: a, prefix })
}

fn route(v: &Value, at: &str) -> R<Route> {
    let m = map(v, at)?;
    keys(
        m,
        &[
            "network",
            "destination",
            "netmask",
            "prefix",
            "gateway",
            "metric",
            "type",
        ],
        at,
    )?;
    let dst = opt_string(m, "destination", at)?
        .or(opt_string(m, "network", at)?)
        .ok_or_else(|| err(at, "needs `destination` (or `network`)"))?;
    let netmask = opt_string(m, "netmask", at)?;
    let prefix = m
        .get("prefix")
        .map(|p| number(p, &format!("{at}.prefix")))
        .transpose()?;
    let c = cidr(
        &dst,
        netmask.as_deref(),
        prefix,
        &format!("{at}.destination"),
    )?;
    let via = opt_string(m, "gateway", at)?
        .map(|g| ip(&g, &format!("{at}.gateway")))
        .transpose()?;
    let metric = m
        .get("metric")
        .filter(|x| !x.is_null())
        .map(|x| number(x, &format!("{at}.metric")))
        .transpose()?;
    let c = Cidr {
        addr: mask_network(c.addr, c.prefix),
        prefix: c.prefix,
    };
    let to = if c.prefix == 0 {
        RouteTo::Default
    } else {
        RouteTo::Net(c)
    };
    Ok(Route { to, via, metric })
}

fn mask_network(a: IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((u32::from(v) & m).into())
        }
        IpAddr::V6(v) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((u128::from(v) & m).into())
        }
    }
}

/// The IP side of one interface, accumulated from its subnets.
#[derive(Default)]
struct Ip {
    dhcp4: bool,
    dhcp6: bool,
    dhcp4_metric: Option<u32>,
    dhcp6_metric: Option<u32>,
    accept_ra: Option<bool>,
    addresses: Vec<Cidr>,
    routes: Vec<Route>,
    ns: Nameservers,
    mtu: Option<u32>,
}

fn subnets(v: Option<&Value>, at: &str, ip4: &mut Ip) -> R<()> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let list = v.as_sequence().ok_or_else(|| err(at, "must be a list"))?;
    for (i, s) in list.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let m = map(s, &at)?;
        keys(
            m,
            &[
                "type",
                "address",
                "netmask",
                "prefix",
                "gateway",
                "dns_nameservers",
                "dns_search",
                "routes",
                "metric",
                "mtu",
                "control",
            ],
            &at,
        )?;
        if let Some(c) = opt_string(m, "control", &at)? {
            if c != "auto" {
                return Err(err(
                    &format!("{at}.control"),
                    format!("{c:?}: {NOT_SUPPORTED} (interfaces are brought up at boot)"),
                ));
            }
        }
        let t = opt_string(m, "type", &at)?.ok_or_else(|| err(&at, "needs `type`"))?;
        let metric = m
            .get("metric")
            .filter(|x| !x.is_null())
            .map(|x| number(x, &format!("{at}.metric")))
            .transpose()?;
        let static_ = matches!(t.as_str(), "static" | "static6");
        if !static_ {
            for k in ["address", "netmask", "prefix", "gateway"] {
                if m.contains_key(k) {
                    return Err(err(
                        &format!("{at}.{k}"),
                        format!("only for static subnets, not {t:?}"),
                    ));
                }
            }
        }
        match t.as_str() {
            "static" | "static6" => {
                let a = opt_string(m, "address", &at)?
                    .ok_or_else(|| err(&at, "a static subnet needs `address`"))?;
                let prefix = m
                    .get("prefix")
                    .map(|p| number(p, &format!("{at}.prefix")))
                    .transpose()?;
                let c = cidr(
                    &a,
                    opt_string(m, "netmask", &at)?.as_deref(),
                    prefix,
                    &format!("{at}.address"),
                )?;
                if t == "static6" && c.addr.is_ipv4() {
                    return Err(err(
                        &format!("{at}.address"),
                        "static6 needs an IPv6 address",
                    ));
                }
                ip4.addresses.push(c);
                if let Some(g) = opt_string(m, "gateway", &at)? {
                    let g = ip(&g, &format!("{at}.gateway"))?;
                    if g.is_ipv4() != c.addr.is_ipv4() {
                        return Err(err(&format!("{at}.gateway"), "not of the address's family"));
                    }
                    ip4.routes.push(Route {
                        to: RouteTo::Default,
                        via: Some(g),
                        metric,
                    });
                }
                if let Some(mtu) = m.get("mtu").filter(|x| !x.is_null()) {
                    let mtu = number(mtu, &format!("{at}.mtu"))?;
                    if c.addr.is_ipv6() {
                        return Err(err(
                            &format!("{at}.mtu"),
                            format!("{NOT_SUPPORTED} on an IPv6 subnet"),
                        ));
                    }
                    ip4.mtu = Some(mtu);
                }
            }
            "dhcp" | "dhcp4" => {
                ip4.dhcp4 = true;
                ip4.dhcp4_metric = metric.or(ip4.dhcp4_metric);
            }
            "dhcp6" | "ipv6_dhcpv6-stateful" => {
                ip4.dhcp6 = true;
                ip4.dhcp6_metric = metric.or(ip4.dhcp6_metric);
            }
            "ipv6_slaac" => ip4.accept_ra = Some(true),
            "ipv6_dhcpv6-stateless" => {
                ip4.accept_ra = Some(true);
                ip4.dhcp6 = true;
            }
            "manual" => {}
            other => {
                return Err(err(
                    &format!("{at}.type"),
                    format!("{other:?}: {NOT_SUPPORTED}"),
                ))
            }
        }
        if !static_ && m.contains_key("mtu") {
            return Err(err(&format!("{at}.mtu"), "only for static subnets"));
        }
        if let Some(r) = m.get("routes").filter(|x| !x.is_null()) {
            let list = r
                .as_sequence()
                .ok_or_else(|| err(&format!("{at}.routes"), "must be a list"))?;
            for (k, r) in list.iter().enumerate() {
                ip4.routes.push(route(r, &format!("{at}.routes[{k}]"))?);
            }
        }
        if let Some(d) = m.get("dns_nameservers") {
            for (k, a) in string_list(d, &format!("{at}.dns_nameservers"))?
                .iter()
                .enumerate()
            {
                let a = ip(a, &format!("{at}.dns_nameservers[{k}]"))?;
                if !ip4.ns.addresses.contains(&a) {
                    ip4.ns.addresses.push(a);
                }
            }
        }
        if let Some(d) = m.get("dns_search") {
            for s in string_list(d, &format!("{at}.dns_search"))? {
                if !ip4.ns.search.contains(&s) {
                    ip4.ns.search.push(s);
                }
            }
        }
    }
    Ok(())
}

/// Fill the shared fields of an entry of any kind.
macro_rules! set_ip {
    ($e:expr, $ip:expr, $mtu:expr) => {{
        let ip = $ip;
        $e.dhcp4 = ip.dhcp4.then_some(true);
        $e.dhcp6 = ip.dhcp6.then_some(true);
        $e.dhcp4_overrides = ip.dhcp4_metric.map(|m| DhcpOverrides {
            route_metric: Some(m),
        });
        $e.dhcp6_overrides = ip.dhcp6_metric.map(|m| DhcpOverrides {
            route_metric: Some(m),
        });
        $e.accept_ra = ip.accept_ra;
        $e.addresses = ip.addresses;
        $e.routes = ip.routes;
        $e.nameservers = (!ip.ns.is_empty()).then_some(ip.ns);
        // An IPv4 subnet's MTU wins over the device's (as cloud-init's eni and NM renderers).
        $e.mtu = ip.mtu.or($mtu);
    }};
}

/// Version 1 bond parameter → netplan name (cloud-init's own table; `_` and `-` are the same).
fn bond_param(k: &str) -> Option<&'static str> {
    Some(match k.replace('_', "-").as_str() {
        "bond-mode" | "mode" => "mode",
        "bond-miimon" | "miimon" => "mii-monitor-interval",
        "bond-lacp-rate" | "lacp-rate" => "lacp-rate",
        "bond-xmit-hash-policy" | "xmit-hash-policy" => "transmit-hash-policy",
        "bond-ad-select" | "ad-select" => "ad-select",
        "bond-updelay" | "updelay" => "up-delay",
        "bond-downdelay" | "downdelay" => "down-delay",
        "bond-primary" | "primary" => "primary",
        "bond-min-links" | "min-links" => "min-links",
        "bond-arp-interval" | "arp-interval" => "arp-interval",
        "bond-arp-ip-target" | "arp-ip-target" => "arp-ip-targets",
        "bond-arp-validate" | "arp-validate" => "arp-validate",
        "bond-fail-over-mac" | "fail-over-mac" => "fail-over-mac-policy",
        "bond-num-grat-arp" | "num-grat-arp" => "gratuitous-arp",
        "bond-primary-reselect" | "primary-reselect" => "primary-reselect-policy",
        _ => return None,
    })
}

fn bond_params(v: Option<&Value>, at: &str) -> R<BondParameters> {
    let mut p = BondParameters::default();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(p);
    };
    for (k, val) in map(v, at)? {
        let k = string(k, at)?;
        let kat = format!("{at}.{k}");
        let Some(name) = bond_param(&k) else {
            return Err(err(&kat, NOT_SUPPORTED));
        };
        let s = || string(val, &kat);
        match name {
            "mode" => {
                let m = s()?;
                p.mode = Some(match m.as_str() {
                    "0" => "balance-rr".into(),
                    "1" => "active-backup".into(),
                    "2" => "balance-xor".into(),
                    "3" => "broadcast".into(),
                    "4" => "802.3ad".into(),
                    "5" => "balance-tlb".into(),
                    "6" => "balance-alb".into(),
                    _ => m,
                })
            }
            "mii-monitor-interval" => p.mii_monitor_interval = Some(number(val, &kat)?),
            "lacp-rate" => {
                let r = s()?;
                p.lacp_rate = Some(match r.as_str() {
                    "0" => "slow".into(),
                    "1" => "fast".into(),
                    _ => r,
                })
            }
            "transmit-hash-policy" => p.transmit_hash_policy = Some(s()?),
            "ad-select" => p.ad_select = Some(s()?),
            "up-delay" => p.up_delay = Some(number(val, &kat)?),
            "down-delay" => p.down_delay = Some(number(val, &kat)?),
            "primary" => p.primary = Some(s()?),
            "min-links" => p.min_links = Some(number(val, &kat)?),
            "arp-interval" => p.arp_interval = Some(number(val, &kat)?),
            "arp-ip-targets" => {
                for (i, t) in string_list(val, &kat)?.iter().enumerate() {
                    p.arp_ip_targets.push(ip(t, &format!("{kat}[{i}]"))?);
                }
            }
            "arp-validate" => p.arp_validate = Some(s()?),
            "fail-over-mac-policy" => p.fail_over_mac_policy = Some(s()?),
            "gratuitous-arp" => p.gratuitous_arp = Some(number(val, &kat)?),
            "primary-reselect-policy" => p.primary_reselect_policy = Some(s()?),
            _ => unreachable!("bond_param returns these names only"),
        }
    }
    Ok(p)
}

/// `["eth0 50", …]` (or one such string) → port → value.
fn per_port(v: &Value, at: &str) -> R<BTreeMap<String, u32>> {
    let items = match v {
        Value::Sequence(_) => string_list(v, at)?,
        Value::String(s) => vec![s.clone()],
        _ => return Err(err(at, "must be a list of \"<port> <value>\"")),
    };
    let mut out = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        let mut w = it.split_whitespace();
        let (Some(port), Some(val), None) = (w.next(), w.next(), w.next()) else {
            return Err(err(&format!("{at}[{i}]"), "must be \"<port> <value>\""));
        };
        let n = val
            .parse()
            .map_err(|_| err(&format!("{at}[{i}]"), "the value must be a number"))?;
        out.insert(port.to_string(), n);
    }
    Ok(out)
}

fn bridge_params(v: Option<&Value>, at: &str) -> R<(BridgeParameters, Option<MacAddr>)> {
    let mut p = BridgeParameters::default();
    let mut hw = None;
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok((p, hw));
    };
    for (k, val) in map(v, at)? {
        let k = string(k, at)?;
        let kat = format!("{at}.{k}");
        match k.as_str() {
            "bridge_stp" => p.stp = Some(boolean(val, &kat)?),
            "bridge_fd" => p.forward_delay = Some(number(val, &kat)?),
            "bridge_ageing" => p.ageing_time = Some(number(val, &kat)?),
            "bridge_bridgeprio" => p.priority = Some(number(val, &kat)?),
            "bridge_hello" => p.hello_time = Some(number(val, &kat)?),
            "bridge_maxage" => p.max_age = Some(number(val, &kat)?),
            "bridge_pathcost" => p.path_cost = per_port(val, &kat)?,
            "bridge_portprio" => p.port_priority = per_port(val, &kat)?,
            "bridge_hw" => {
                hw = Some(
                    string(val, &kat)?
                        .parse()
                        .map_err(|e: String| err(&kat, e))?,
                )
            }
            // How long ifupdown waits for the bridge or its ports at boot, and a garbage
            // collection interval modern kernels no longer have: no effect on the configured
            // bridge (cloud-init too drops them for every renderer but ifupdown's).
            "bridge_maxwait" | "bridge_waitport" | "bridge_gcint" => {}
            _ => return Err(err(&kat, NOT_SUPPORTED)),
        }
    }
    Ok((p, hw))
}

fn mac(m: &Mapping, at: &str) -> R<Option<MacAddr>> {
    opt_string(m, "mac_address", at)?
        .map(|s| {
            s.parse()
                .map_err(|e: String| err(&format!("{at}.mac_address"), e))
        })
        .transpose()
}

fn device_mtu(m: &Mapping, at: &str) -> R<Option<u32>> {
    m.get("mtu")
        .filter(|x| !x.is_null())
        .map(|x| number(x, &format!("{at}.mtu")))
        .transpose()
}

fn accept_ra(m: &Mapping, at: &str, ip: &mut Ip) -> R<()> {
    if let Some(v) = m.get("accept-ra").filter(|x| !x.is_null()) {
        ip.accept_ra = Some(boolean(v, &format!("{at}.accept-ra"))?);
    }
    Ok(())
}

fn name(m: &Mapping, at: &str) -> R<String> {
    opt_string(m, "name", at)?.ok_or_else(|| err(at, "needs `name`"))
}

fn members(m: &Mapping, k: &str, at: &str) -> R<Vec<String>> {
    match m.get(k) {
        None => Err(err(at, format!("needs `{k}`"))),
        Some(v) => string_list(v, &format!("{at}.{k}")),
    }
}

/// Convert a version 1 `network` mapping (with `version: 1`).
pub(super) fn convert(v: Value) -> R<NetworkConfig> {
    let top = map(&v, "")?;
    keys(top, &["version", "config"], "")
        .map_err(|e| ConfigError::new(e.path.trim_start_matches('.'), e.message))?;
    let list = top
        .get("config")
        .and_then(Value::as_sequence)
        .ok_or_else(|| err("config", "must be a list"))?;
    let mut n = NetworkConfig::default();
    let mut iface_dns: Vec<(String, Nameservers, String)> = Vec::new();
    let mut global_routes: Vec<(Route, String)> = Vec::new();
    let mut global = Nameservers::default();
    let mut members_of: Vec<(String, String)> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let at = format!("config[{i}]");
        let m = map(item, &at)?;
        let t = opt_string(m, "type", &at)?.ok_or_else(|| err(&at, "needs `type`"))?;
        let common = ["type", "name", "mac_address", "mtu", "subnets", "accept-ra"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            common.iter().chain(extra.iter()).copied().collect()
        };
        match t.as_str() {
            "physical" => {
                keys(m, &with(&[]), &at)?;
                let nm = name(m, &at)?;
                let mut ip = Ip::default();
                accept_ra(m, &at, &mut ip)?;
                subnets(m.get("subnets"), &format!("{at}.subnets"), &mut ip)?;
                let mut e = Ethernet::default();
                if let Some(mac) = mac(m, &at)? {
                    e.match_ = Some(Match {
                        macaddress: Some(mac),
                        ..Default::default()
                    });
                    e.set_name = Some(nm.clone());
                }
                set_ip!(e, ip, device_mtu(m, &at)?);
                if n.ethernets.insert(nm.clone(), e).is_some() {
                    return Err(err(
                        &format!("{at}.name"),
                        format!("{nm:?} is defined twice"),
                    ));
                }
            }
            "bond" => {
                keys(m, &with(&["bond_interfaces", "params"]), &at)?;
                let nm = name(m, &at)?;
                let mut ip = Ip::default();
                accept_ra(m, &at, &mut ip)?;
                subnets(m.get("subnets"), &format!("{at}.subnets"), &mut ip)?;
                let mut b = Bond {
                    interfaces: members(m, "bond_interfaces", &at)?,
                    parameters: bond_params(m.get("params"), &format!("{at}.params"))?,
                    macaddress: mac(m, &at)?,
                    ..Default::default()
                };
                for x in &b.interfaces {
                    members_of.push((x.clone(), at.clone()));
                }
                set_ip!(b, ip, device_mtu(m, &at)?);
                if n.bonds.insert(nm.clone(), b).is_some() {
                    return Err(err(
                        &format!("{at}.name"),
                        format!("{nm:?} is defined twice"),
                    ));
                }
            }
            "bridge" => {
                keys(m, &with(&["bridge_interfaces", "params"]), &at)?;
                let nm = name(m, &at)?;
                let mut ip = Ip::default();
                accept_ra(m, &at, &mut ip)?;
                subnets(m.get("subnets"), &format!("{at}.subnets"), &mut ip)?;
                let (parameters, hw) = bridge_params(m.get("params"), &format!("{at}.params"))?;
                let mut b = Bridge {
                    interfaces: members(m, "bridge_interfaces", &at)?,
                    parameters,
                    macaddress: mac(m, &at)?.or(hw),
                    ..Default::default()
                };
                for x in &b.interfaces {
                    members_of.push((x.clone(), at.clone()));
                }
                set_ip!(b, ip, device_mtu(m, &at)?);
                if n.bridges.insert(nm.clone(), b).is_some() {
                    return Err(err(
                        &format!("{at}.name"),
                        format!("{nm:?} is defined twice"),
                    ));
                }
            }
            "vlan" => {
                keys(m, &with(&["vlan_link", "vlan_id"]), &at)?;
                let nm = name(m, &at)?;
                let mut ip = Ip::default();
                accept_ra(m, &at, &mut ip)?;
                subnets(m.get("subnets"), &format!("{at}.subnets"), &mut ip)?;
                let id = m
                    .get("vlan_id")
                    .ok_or_else(|| err(&at, "needs `vlan_id`"))
                    .and_then(|x| number(x, &format!("{at}.vlan_id")))?;
                let mut vl = Vlan {
                    id: u16::try_from(id)
                        .map_err(|_| err(&format!("{at}.vlan_id"), "must be 1-4094"))?,
                    link: opt_string(m, "vlan_link", &at)?
                        .ok_or_else(|| err(&at, "needs `vlan_link`"))?,
                    macaddress: mac(m, &at)?,
                    ..Default::default()
                };
                set_ip!(vl, ip, device_mtu(m, &at)?);
                if n.vlans.insert(nm.clone(), vl).is_some() {
                    return Err(err(
                        &format!("{at}.name"),
                        format!("{nm:?} is defined twice"),
                    ));
                }
            }
            "nameserver" => {
                keys(m, &["type", "address", "search", "interface"], &at)?;
                let mut ns = Nameservers::default();
                if let Some(a) = m.get("address") {
                    for (k, s) in string_list(a, &format!("{at}.address"))?.iter().enumerate() {
                        ns.addresses.push(ip(s, &format!("{at}.address[{k}]"))?);
                    }
                }
                if let Some(s) = m.get("search") {
                    ns.search = string_list(s, &format!("{at}.search"))?;
                }
                match opt_string(m, "interface", &at)? {
                    Some(iface) => iface_dns.push((iface, ns, at)),
                    None => {
                        for a in ns.addresses {
                            if !global.addresses.contains(&a) {
                                global.addresses.push(a);
                            }
                        }
                        for s in ns.search {
                            if !global.search.contains(&s) {
                                global.search.push(s);
                            }
                        }
                    }
                }
            }
            "route" => {
                global_routes.push((route(item, &at)?, at.clone()));
            }
            "loopback" => {
                keys(m, &["type", "name", "subnets"], &at)?;
                // The guest configures its loopback itself; only the standard one is accepted.
                let ok = name(m, &at)? == "lo"
                    && m.get("subnets").is_none_or(|s| {
                        s.as_sequence().is_some_and(|l| {
                            l.iter()
                                .all(|x| x.get("type").and_then(Value::as_str) == Some("loopback"))
                        })
                    });
                if !ok {
                    return Err(err(
                        &at,
                        format!("a loopback other than `lo`: {NOT_SUPPORTED}"),
                    ));
                }
            }
            other => {
                return Err(err(
                    &format!("{at}.type"),
                    format!("{other:?}: {NOT_SUPPORTED}"),
                ))
            }
        }
    }
    // Members named but not defined: plain interfaces, as cloud-init's placeholders.
    for (member, _) in &members_of {
        if n.kind_of(member).is_none() {
            n.ethernets.insert(member.clone(), Ethernet::default());
        }
    }
    for (iface, ns, at) in iface_dns {
        let target = n
            .ethernets
            .get_mut(&iface)
            .map(|e| &mut e.nameservers)
            .or_else(|| n.bonds.get_mut(&iface).map(|e| &mut e.nameservers))
            .or_else(|| n.bridges.get_mut(&iface).map(|e| &mut e.nameservers))
            .or_else(|| n.vlans.get_mut(&iface).map(|e| &mut e.nameservers))
            .ok_or_else(|| {
                err(
                    &format!("{at}.interface"),
                    format!("{iface:?} is not an interface of this configuration"),
                )
            })?;
        // As cloud-init: an interface's own nameserver entry replaces what its subnets said.
        *target = Some(ns);
    }
    for (r, at) in global_routes {
        attach_route(&mut n, r, &at)?;
    }
    if !global.is_empty() {
        n.nameservers = Some(global);
    }
    Ok(n)
}

/// Put a global route on the interface that can reach its gateway (see the module docs).
fn attach_route(n: &mut NetworkConfig, r: Route, at: &str) -> R<()> {
    let Some(gw) = r.via else {
        return Err(err(at, "a global route needs `gateway`"));
    };
    let on_subnet = |ip: &super::network::IpConfig| {
        ip.addresses.iter().any(|a| {
            a.addr.is_ipv4() == gw.is_ipv4()
                && mask_network(a.addr, a.prefix) == mask_network(gw, a.prefix)
        })
    };
    let entries: Vec<(super::network::Kind, String, super::network::IpConfig)> = n
        .entries()
        .into_iter()
        .map(|(k, id, ip)| (k, id.to_string(), ip))
        .collect();
    let mut hits: Vec<&(super::network::Kind, String, super::network::IpConfig)> =
        entries.iter().filter(|(_, _, ip)| on_subnet(ip)).collect();
    if hits.is_empty() {
        hits = entries
            .iter()
            .filter(|(_, _, ip)| {
                if gw.is_ipv4() {
                    ip.dhcp4
                } else {
                    ip.dhcp6 || ip.accept_ra == Some(true)
                }
            })
            .collect();
    }
    if hits.len() != 1 {
        return Err(err(
            &format!("{at}.gateway"),
            if hits.is_empty() {
                format!("{gw} is on none of the configured subnets: the route could not work")
            } else {
                format!("{gw} is reachable through more than one interface: put the route in one interface's subnet `routes`")
            },
        ));
    }
    let (kind, id, _) = hits[0].clone();
    let routes = match kind {
        super::network::Kind::Ethernet => &mut n.ethernets.get_mut(&id).expect("listed").routes,
        super::network::Kind::Bond => &mut n.bonds.get_mut(&id).expect("listed").routes,
        super::network::Kind::Bridge => &mut n.bridges.get_mut(&id).expect("listed").routes,
        super::network::Kind::Vlan => &mut n.vlans.get_mut(&id).expect("listed").routes,
    };
    routes.push(r);
    Ok(())
}
