//! cloud-init itself as the oracle for networking: every network-config of the corpus
//! (channel-proto/tests/corpus/network: cloud-init's documentation examples and xenplug's own,
//! version 1 and 2) that xenplug accepts is rendered by Debian's cloud-init 22.4
//! (`cloud-init devel net-convert -D debian`) and by the agent, for ifupdown (`eni`),
//! systemd-networkd and NetworkManager, and both renderings are read back into one model per
//! interface (addresses, routes, DNS servers and search domains, DHCP, MTU, MAC and renames,
//! bond/bridge/VLAN relations and modes) and compared.
//!
//! Where cloud-init 22.4's renderers are known to lose or misplace something, the comparison
//! says so explicitly instead of comparing (each is a cloud-init bug or limitation, not a
//! choice of ours):
//! * networkd: no `.netdev` and no `Bond=`/`Bridge=`/`VLAN=` (its renderer is "experimental"):
//!   relations are compared for eni and NetworkManager only; version 1 global routes and DNS
//!   are copied into every interface (the agent puts a global route on the interface that
//!   reaches its gateway and global DNS into resolved); a version 1 subnet `metric` for DHCP is
//!   dropped.
//! * NetworkManager: version 1 global routes and DNS are dropped; bond options other than
//!   `mode` and `primary` are dropped (it looks them up under the wrong names; only `mode` and
//!   `primary` are compared); MTUs of bonds, bridges and VLANs are dropped; route metrics are
//!   dropped; a version 1 `static6` subnet becomes `method=auto` (its method table lacks
//!   `static6`), so IPv6 DHCP is not compared on interfaces with static IPv6 addresses.
//! * version 2 route metrics are dropped by its v2 → v1 conversion.
//! * eni: global DNS sits on `lo` (the agent writes it to resolv.conf).
//! * eni and NetworkManager: a version 1 `nameserver` entry tied to an interface is lost (eni
//!   writes a `dns {…}` line ifupdown ignores); compared for networkd only.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::require_dep;
use xenplug_channel::config::{Kind, NetworkConfig};
use xenplug_guest_agent::render::{self, Names, Renderer};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Iface {
    addresses: BTreeSet<String>,
    /// "dst via gw [metric m]"
    routes: BTreeSet<String>,
    dns: BTreeSet<String>,
    search: BTreeSet<String>,
    dhcp4: bool,
    dhcp6: bool,
    mtu: Option<String>,
    /// The controller (bond or bridge) it is a member of.
    controller: Option<String>,
    bond_mode: Option<String>,
    bond_primary: Option<String>,
    bridge_stp: Option<bool>,
    vlan: Option<(String, String)>,
}

type Model = BTreeMap<String, Iface>;

fn route(dst: &str, gw: Option<&str>, metric: Option<&str>) -> String {
    let dst = match dst {
        "0.0.0.0/0" | "::/0" | "default" => "default",
        d => d,
    };
    let mut s = dst.to_string();
    if let Some(g) = gw {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(m) = metric {
        s.push_str(&format!(" metric {m}"));
    }
    s
}

fn words(s: &str) -> Vec<String> {
    s.split([' ', ';', ','])
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// /etc/network/interfaces (cloud-init's and the agent's). A `metric` belongs to the stanza:
/// the DHCP client's routes in a `dhcp` one, the `gateway`'s route in a `static` one.
fn parse_eni(text: &str) -> Model {
    #[derive(Default)]
    struct Stanza {
        name: String,
        method: String,
        gateway: Option<String>,
        metric: Option<String>,
    }
    fn close(m: &mut Model, st: &mut Option<Stanza>) {
        if let Some(s) = st.take() {
            let e = m.get_mut(&s.name).unwrap();
            if let Some(g) = s.gateway {
                e.routes
                    .insert(route("default", Some(&g), s.metric.as_deref()));
            } else if s.method == "dhcp" {
                if let Some(mt) = s.metric {
                    e.routes.insert(format!("dhcp metric {mt}"));
                }
            }
        }
    }
    let mut m = Model::new();
    let mut st: Option<Stanza> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let w: Vec<&str> = t.split_whitespace().collect();
        if w[0] == "auto" || w[0].starts_with("allow-") {
            continue;
        }
        if w[0] == "iface" {
            close(&mut m, &mut st);
            let name = w[1].to_string();
            let e = m.entry(name.clone()).or_default();
            match (w[2], w[3]) {
                ("inet", "dhcp") => e.dhcp4 = true,
                ("inet6", "dhcp") => e.dhcp6 = true,
                _ => {}
            }
            st = Some(Stanza {
                name,
                method: w[3].to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(cur) = st.as_mut() else { continue };
        let name = cur.name.clone();
        let rest = t[w[0].len()..].trim();
        match w[0] {
            "gateway" => cur.gateway = Some(rest.to_string()),
            "metric" => cur.metric = Some(rest.to_string()),
            _ => {}
        }
        let e = m.get_mut(&name).unwrap();
        match w[0] {
            "address" => {
                e.addresses.insert(rest.to_string());
            }
            "dns-nameservers" => e.dns.extend(words(rest)),
            "dns-search" => e.search.extend(words(rest)),
            "mtu" => e.mtu = Some(rest.to_string()),
            "bond-master" => e.controller = Some(rest.to_string()),
            "bond-mode" => e.bond_mode = Some(rest.to_string()),
            "bond-primary" => e.bond_primary = Some(rest.to_string()),
            "bridge_stp" => e.bridge_stp = Some(rest == "on"),
            "vlan-raw-device" => {
                let id = e.vlan.take().map(|v| v.1).unwrap_or_default();
                e.vlan = Some((rest.to_string(), id));
            }
            "vlan_id" => {
                let link = e.vlan.take().map(|v| v.0).unwrap_or_default();
                e.vlan = Some((link, rest.to_string()));
            }
            "bridge_ports" => {
                for p in words(rest).into_iter().filter(|p| p != "none") {
                    m.entry(p).or_default().controller = Some(name.clone());
                }
            }
            "post-up" | "up" => {
                // cloud-init: route add [-A inet6] [-net|-host] DST [gw G] [metric M] || true
                // the agent: ip [-6] route replace DST [via G] [metric M] dev "$IFACE"
                let a: Vec<&str> = rest.split_whitespace().collect();
                let val = |k: &str| a.iter().position(|x| *x == k).map(|i| a[i + 1]);
                if a.first() == Some(&"route") && a.get(1) == Some(&"add") {
                    let dst = a
                        .iter()
                        .skip(2)
                        .find(|x| !x.starts_with('-') && **x != "inet6")
                        .copied()
                        .unwrap_or("");
                    e.routes.insert(route(dst, val("gw"), val("metric")));
                } else if a.first() == Some(&"ip") {
                    let i = a.iter().position(|x| *x == "replace").unwrap();
                    e.routes.insert(route(a[i + 1], val("via"), val("metric")));
                }
            }
            _ => {}
        }
    }
    close(&mut m, &mut st);
    m
}

/// `.network` files (by interface name: the file names carry it).
fn parse_networkd(files: &BTreeMap<String, String>) -> Model {
    let mut m = Model::new();
    for (name, text) in files {
        let e = m.entry(name.clone()).or_default();
        let mut section = String::new();
        let mut rt: (Option<String>, Option<String>, Option<String>) = (None, None, None);
        let flush = |e: &mut Iface, rt: &mut (Option<String>, Option<String>, Option<String>)| {
            if rt.0.is_some() || rt.1.is_some() {
                let dst = rt.0.clone().unwrap_or_else(|| "default".into());
                e.routes
                    .insert(route(&dst, rt.1.as_deref(), rt.2.as_deref()));
            }
            *rt = (None, None, None);
        };
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                if section == "Route" {
                    flush(e, &mut rt);
                }
                section = line.trim_matches(['[', ']']).to_string();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match (section.as_str(), k) {
                (_, "Address") => {
                    e.addresses.insert(v.to_string());
                }
                ("Network", "DNS") => e.dns.extend(words(v)),
                ("Network", "Domains") => e.search.extend(words(v)),
                ("Network", "DHCP") => {
                    e.dhcp4 |= v == "yes" || v == "ipv4";
                    e.dhcp6 |= v == "yes" || v == "ipv6";
                }
                ("Network", "Gateway") => {
                    e.routes.insert(route("default", Some(v), None));
                }
                ("Link", "MTUBytes") => e.mtu = Some(v.to_string()),
                ("Route", "Destination") => rt.0 = Some(v.to_string()),
                ("Route", "Gateway") => rt.1 = Some(v.to_string()),
                ("Route", "Metric") => rt.2 = Some(v.to_string()),
                ("DHCPv4", "RouteMetric") => {
                    e.routes.insert(format!("dhcp metric {v}"));
                }
                _ => {}
            }
        }
        if section == "Route" {
            flush(e, &mut rt);
        }
    }
    m
}

/// NetworkManager connections (by interface name), members resolved through the UUIDs.
fn parse_nm(files: &BTreeMap<String, String>) -> Model {
    let mut uuid_name = BTreeMap::new();
    let mut parsed = BTreeMap::new();
    for (name, text) in files {
        let mut sec = String::new();
        let mut kv: BTreeMap<String, String> = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                sec = line.trim_matches(['[', ']']).to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                kv.insert(format!("{sec}.{k}"), v.to_string());
            }
        }
        if let Some(u) = kv.get("connection.uuid") {
            uuid_name.insert(u.clone(), name.clone());
        }
        parsed.insert(name.clone(), kv);
    }
    let mut m = Model::new();
    for (name, kv) in &parsed {
        let e = m.entry(name.clone()).or_default();
        for fam in ["ipv4", "ipv6"] {
            for i in 1..10 {
                if let Some(a) = kv.get(&format!("{fam}.address{i}")) {
                    let (a, gw) = a
                        .split_once(',')
                        .map(|(a, g)| (a, Some(g)))
                        .unwrap_or((a, None));
                    e.addresses.insert(a.to_string());
                    if let Some(g) = gw {
                        e.routes.insert(route("default", Some(g), None));
                    }
                }
                if let Some(r) = kv.get(&format!("{fam}.route{i}")) {
                    let p: Vec<&str> = r.split(',').collect();
                    let gw = p.get(1).filter(|g| !g.is_empty()).copied();
                    e.routes.insert(route(p[0], gw, p.get(2).copied()));
                }
            }
            if let Some(g) = kv.get(&format!("{fam}.gateway")) {
                e.routes.insert(route("default", Some(g), None));
            }
            if let Some(d) = kv.get(&format!("{fam}.dns")) {
                e.dns.extend(words(d));
            }
            if let Some(d) = kv.get(&format!("{fam}.dns-search")) {
                e.search.extend(words(d));
            }
            if kv.get(&format!("{fam}.method")).map(String::as_str) == Some("auto") {
                if fam == "ipv4" {
                    e.dhcp4 = true;
                } else {
                    e.dhcp6 = true;
                }
            }
        }
        e.mtu = kv.get("ethernet.mtu").or(kv.get("infiniband.mtu")).cloned();
        e.controller = kv
            .get("connection.master")
            .map(|u| uuid_name.get(u).cloned().unwrap_or_else(|| u.clone()));
        e.bond_mode = kv.get("bond.mode").cloned();
        e.bond_primary = kv.get("bond.primary").cloned();
        e.bridge_stp = kv.get("bridge.stp").map(|v| v == "true");
        if let Some(id) = kv.get("vlan.id") {
            let p = kv.get("vlan.parent").cloned().unwrap_or_default();
            e.vlan = Some((uuid_name.get(&p).cloned().unwrap_or(p), id.clone()));
        }
    }
    m
}

fn net_convert(ci: &Path, input: &Path, kind: &str, out: &Path) -> Result<(), String> {
    let o = Command::new(ci)
        .args(["devel", "net-convert", "-p"])
        .arg(input)
        .args(["-k", "yaml", "-D", "debian", "-O", kind, "-d"])
        .arg(out)
        .output()
        .unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// Files in `dir` whose names are `<prefix><name><suffix>`, by name.
fn files_by_name(dir: &Path, prefix: &str, suffix: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = f.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix)) {
                m.insert(n.to_string(), std::fs::read_to_string(e.path()).unwrap());
            }
        }
    }
    m
}

/// The name cloud-init gives each entry when it cannot look the MAC up: `set-name`, else the
/// entry id; the agent is given the same names (as if it had found the NICs so named).
fn names(n: &NetworkConfig) -> (Names, BTreeMap<String, String>) {
    let mut names = Names::default();
    let mut id_name = BTreeMap::new();
    for (id, e) in &n.ethernets {
        let nm = e
            .set_name
            .clone()
            .or_else(|| {
                e.static_name(id)
                    .filter(|s| !s.contains(['*', '?']))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| id.clone());
        names.ethernets.insert(id.clone(), nm.clone());
        id_name.insert(id.clone(), nm);
    }
    for (_, id, _) in n.entries() {
        id_name
            .entry(id.to_string())
            .or_insert_with(|| id.to_string());
    }
    (names, id_name)
}

fn ours(n: &NetworkConfig, r: Renderer) -> Vec<render::FileOut> {
    let (nm, _) = names(n);
    render::render(r, n, &nm).unwrap()
}

/// The facts both sides are compared on, for renderer `r` (see the module docs).
fn normalise(m: &mut Model, r: Renderer, n: &NetworkConfig, v2: bool) {
    let global: BTreeSet<String> = n
        .nameservers
        .iter()
        .flat_map(|ns| ns.addresses.iter().map(|a| a.to_string()))
        .collect();
    let global_search: BTreeSet<String> = n
        .nameservers
        .iter()
        .flat_map(|ns| ns.search.iter().cloned())
        .collect();
    m.remove("lo");
    for (name, e) in m.iter_mut() {
        let virtual_ = matches!(
            n.kind_of(name),
            Some(Kind::Bond | Kind::Bridge | Kind::Vlan)
        );
        if r == Renderer::NetworkManager && e.addresses.iter().any(|a| a.contains(':')) {
            e.dhcp6 = false;
        }
        if r == Renderer::NetworkManager && virtual_ {
            // cloud-init's NetworkManager renderer writes an MTU for ethernets only.
            e.mtu = None;
        }
        if v2 || r == Renderer::NetworkManager {
            // cloud-init 22.4 drops version 2 route metrics, and its NetworkManager renderer
            // every route metric.
            e.routes = e
                .routes
                .iter()
                .map(|r| r.split(" metric ").next().unwrap().to_string())
                .collect();
        }
        if r == Renderer::Networkd && !v2 {
            e.routes.retain(|x| !x.starts_with("dhcp metric"));
        }
        if r == Renderer::Networkd {
            // cloud-init copies version 1 global DNS into every interface; the agent writes it
            // for resolved (checked below): compared without it on both sides.
            e.dns.retain(|d| !global.contains(d));
            e.search.retain(|d| !global_search.contains(d));
        }
        if r == Renderer::Networkd {
            e.controller = None;
            e.bond_mode = None;
            e.bond_primary = None;
            e.bridge_stp = None;
            e.vlan = None;
        }
        if e.controller.is_some() {
            // cloud-init's eni repeats the bond's options on its members (ifenslave reads them
            // from the bond): only the bond's own count.
            e.bond_mode = None;
            e.bond_primary = None;
        }
    }
    // Members have no IP configuration of their own on either side; empty placeholders that
    // one side writes and the other does not are dropped.
    m.retain(|_, e| *e != Iface::default());
}

/// Version 1 `route` entries, as the model spells routes (with and without the metric).
fn global_routes(text: &str) -> BTreeSet<String> {
    let v: serde_norway::Value = serde_norway::from_str(text).unwrap();
    let v = v.get("network").cloned().unwrap_or(v);
    let mut out = BTreeSet::new();
    for e in v
        .get("config")
        .and_then(|c| c.as_sequence())
        .into_iter()
        .flatten()
    {
        if e.get("type").and_then(|t| t.as_str()) != Some("route") {
            continue;
        }
        let s = |k: &str| e.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let dst = s("destination").or(s("network")).unwrap_or_default();
        let gw = s("gateway");
        let metric = e.get("metric").map(|m| match m {
            serde_norway::Value::Number(n) => n.to_string(),
            other => other.as_str().unwrap_or("").to_string(),
        });
        out.insert(route(&dst, gw.as_deref(), None));
        out.insert(route(&dst, gw.as_deref(), metric.as_deref()));
    }
    out
}

/// Version 1 `nameserver` entries with `interface`: interface → their addresses and domains
/// (those not also in the interface's subnets).
fn tied_nameservers(text: &str) -> Vec<(String, BTreeSet<String>)> {
    let v: serde_norway::Value = serde_norway::from_str(text).unwrap();
    let v = v.get("network").cloned().unwrap_or(v);
    let Some(list) = v.get("config").and_then(|c| c.as_sequence()) else {
        return Vec::new();
    };
    let strs = |x: Option<&serde_norway::Value>| -> BTreeSet<String> {
        match x {
            Some(serde_norway::Value::Sequence(s)) => s
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            Some(serde_norway::Value::String(s)) => words(s).into_iter().collect(),
            _ => BTreeSet::new(),
        }
    };
    let mut out = Vec::new();
    for e in list {
        if e.get("type").and_then(|t| t.as_str()) != Some("nameserver") {
            continue;
        }
        let Some(iface) = e.get("interface").and_then(|i| i.as_str()) else {
            continue;
        };
        let mut ns = strs(e.get("address"));
        ns.extend(strs(e.get("search")));
        // What the interface's subnets say themselves is rendered by cloud-init.
        for d in list {
            if d.get("name").and_then(|n| n.as_str()) == Some(iface) {
                for sn in d
                    .get("subnets")
                    .and_then(|x| x.as_sequence())
                    .into_iter()
                    .flatten()
                {
                    for k in ["dns_nameservers", "dns_search"] {
                        for x in strs(sn.get(k)) {
                            ns.remove(&x);
                        }
                    }
                }
            }
        }
        out.push((iface.to_string(), ns));
    }
    out
}

#[test]
fn cloud_init_renders_the_corpus_as_the_agent_does() {
    let Some(ci) = require_dep("cloud-init") else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../channel-proto/tests/corpus/network");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    inputs.sort();
    let tmp = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for input in &inputs {
        let text = std::fs::read_to_string(input).unwrap();
        let Ok(n) = NetworkConfig::from_yaml(&text) else {
            continue; // refused on purpose: channel-proto/tests/network_corpus.rs
        };
        let stem = input.file_stem().unwrap().to_string_lossy().into_owned();
        let v2 = text.contains("version: 2");
        let (_, id_name) = names(&n);
        for r in [
            Renderer::Ifupdown,
            Renderer::Networkd,
            Renderer::NetworkManager,
        ] {
            let kind = match r {
                Renderer::Ifupdown => "eni",
                Renderer::Networkd => "networkd",
                Renderer::NetworkManager => "network-manager",
            };
            let out = tmp.path().join(format!("{stem}-{kind}"));
            net_convert(&ci, input, kind, &out)
                .unwrap_or_else(|e| panic!("{stem}: cloud-init net-convert -O {kind}: {e}"));
            let files = ours(&n, r);
            let by_id = |prefix: &str, suffix: &str| -> BTreeMap<String, String> {
                files
                    .iter()
                    .filter_map(|f| {
                        let file = f.path.rsplit('/').next().unwrap();
                        let id = file.strip_prefix(prefix)?.strip_suffix(suffix)?;
                        Some((
                            id_name.get(id).cloned().unwrap_or(id.to_string()),
                            f.content.clone(),
                        ))
                    })
                    .collect()
            };
            let (mut theirs, mut mine) = match r {
                Renderer::Ifupdown => (
                    parse_eni(
                        &std::fs::read_to_string(
                            out.join("etc/network/interfaces.d/50-cloud-init"),
                        )
                        .unwrap(),
                    ),
                    parse_eni(
                        &files
                            .iter()
                            .find(|f| f.path.ends_with("xenplug-agent"))
                            .unwrap()
                            .content,
                    ),
                ),
                Renderer::Networkd => (
                    parse_networkd(&files_by_name(
                        &out.join("etc/systemd/network"),
                        "10-cloud-init-",
                        ".network",
                    )),
                    parse_networkd(&by_id("10-xenplug-", ".network")),
                ),
                Renderer::NetworkManager => (
                    parse_nm(&files_by_name(
                        &out.join("etc/NetworkManager/system-connections"),
                        "cloud-init-",
                        ".nmconnection",
                    )),
                    parse_nm(&by_id("xenplug-", ".nmconnection")),
                ),
            };
            // Global DNS: cloud-init's eni has it on lo; the agent's document keeps it for
            // resolv.conf (networkd: resolved; NetworkManager: cloud-init drops it).
            if r == Renderer::Ifupdown {
                let lo = theirs.get("lo").cloned().unwrap_or_default();
                // cloud-init makes every version 2 interface's servers global too; the
                // agent's resolv.conf (which ifupdown guests read) lists them all as well.
                let mut want: BTreeSet<String> = n
                    .nameservers
                    .iter()
                    .flat_map(|ns| ns.addresses.iter().map(|a| a.to_string()))
                    .collect();
                if v2 {
                    for (_, _, ip) in n.entries() {
                        want.extend(ip.nameservers.addresses.iter().map(|a| a.to_string()));
                    }
                }
                assert_eq!(lo.dns, want, "{stem}: global DNS");
            }
            if r == Renderer::Networkd {
                if let Some(ns) = n.nameservers.as_ref().filter(|ns| !ns.is_empty()) {
                    let f = files
                        .iter()
                        .find(|f| f.path.ends_with("resolved.conf.d/xenplug-agent.conf"))
                        .unwrap_or_else(|| panic!("{stem}: no resolved drop-in"));
                    for a in &ns.addresses {
                        assert!(f.content.contains(&a.to_string()), "{stem}: {}", f.content);
                    }
                }
            }
            normalise(&mut theirs, r, &n, v2);
            normalise(&mut mine, r, &n, v2);
            // Version 1 nameservers tied to an interface: lost by cloud-init's eni and NM.
            if r != Renderer::Networkd {
                for (iface, ns) in tied_nameservers(&text) {
                    if let Some(e) = mine.get_mut(&iface) {
                        e.dns.retain(|d| !ns.contains(d));
                        e.search.retain(|d| !ns.contains(d));
                    }
                }
                theirs.retain(|_, e| *e != Iface::default());
                mine.retain(|_, e| *e != Iface::default());
            }
            // Version 1 global routes: cloud-init's networkd copies them into every interface,
            // its NetworkManager renderer drops them; the agent puts each on the interface that
            // reaches its gateway (where channel-proto's tests check it; ifupdown compares them).
            if r != Renderer::Ifupdown {
                let global = global_routes(&text);
                for e in theirs.values_mut().chain(mine.values_mut()) {
                    e.routes.retain(|x| !global.contains(x));
                }
            }
            assert_eq!(
                theirs, mine,
                "{stem}: {kind}: cloud-init (left) and xenplug (right) differ"
            );
            compared += 1;
        }
        // Renames: cloud-init's udev rules (eni) against the agent's .link files.
        let rules = std::fs::read_to_string(tmp.path().join(format!(
            "{stem}-eni/etc/udev/rules.d/70-persistent-net.rules"
        )))
        .unwrap_or_default();
        let theirs: BTreeSet<(String, String)> = rules
            .lines()
            .filter_map(|l| {
                let mac = l.split("ATTR{address}==\"").nth(1)?.split('"').next()?;
                let name = l.split("NAME=\"").nth(1)?.split('"').next()?;
                Some((mac.to_lowercase(), name.to_string()))
            })
            .collect();
        let mine: BTreeSet<(String, String)> = render::networkd::links(&n)
            .unwrap()
            .iter()
            .filter_map(|f| {
                let mac = f
                    .content
                    .lines()
                    .find_map(|l| l.strip_prefix("MACAddress="))?;
                let name = f.content.lines().find_map(|l| l.strip_prefix("Name="))?;
                Some((mac.to_string(), name.to_string()))
            })
            .collect();
        if !v2 {
            assert_eq!(theirs, mine, "{stem}: renames (udev rules / .link)");
        }
    }
    eprintln!(
        "compared {compared} renderings of {} corpus files with cloud-init's",
        inputs.len()
    );
    assert!(compared >= 3 * 15, "only {compared} renderings compared");
}
