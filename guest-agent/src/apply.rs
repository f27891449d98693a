//! Applying a [`ConfigDoc`]: network (live through netlink, persisted for systemd-networkd and,
//! when the guest uses it, ifupdown), DNS, host name, users' keys and passwords; then the applied
//! generation is recorded. Every step is idempotent and every file is replaced atomically, so a
//! crash mid-apply leaves whole files and an unrecorded generation that the host re-sends.

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xenplug_channel::config::{Cidr, ConfigDoc, Ethernet, MacAddr, NetworkConfig, Route, RouteTo};
use xenplug_channel::qga::{ApplyResult, ConfigGeneration};

use crate::fsutil::{self, under};
use crate::net::NetOps;
use crate::users;

/// Host-wide effects that tests replace (the kernel host name).
pub trait Host {
    /// sethostname(2).
    fn set_hostname(&mut self, name: &str) -> Result<()>;
    /// The current host name.
    fn hostname(&self) -> Result<String>;
}

/// The real host: sethostname(2)/gethostname(2) in the caller's UTS namespace.
#[derive(Debug, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn set_hostname(&mut self, name: &str) -> Result<()> {
        nix::unistd::sethostname(name).with_context(|| format!("sethostname {name}"))
    }
    fn hostname(&self) -> Result<String> {
        Ok(nix::unistd::gethostname()
            .context("gethostname")?
            .to_string_lossy()
            .into_owned())
    }
}

/// Where the applied generation is recorded (under the root).
pub const STATE_FILE: &str = "/var/lib/xenplug-agent/applied.json";
/// Prefix of the networkd/link files the agent owns.
pub const NETWORKD_PREFIX: &str = "10-xenplug-";
/// The ifupdown fragment the agent owns.
pub const IFUPDOWN_FILE: &str = "/etc/network/interfaces.d/xenplug-agent";

const HOSTS_BEGIN: &str = "# BEGIN xenplug-agent";
const HOSTS_END: &str = "# END xenplug-agent";

/// Linux HOST_NAME_MAX.
pub const HOST_NAME_MAX: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
struct State {
    instance_id: String,
    generation: u64,
    /// What the agent configured live, so the next generation can take back what it no
    /// longer asks for (and nothing else).
    #[serde(default)]
    live: Vec<LiveRec>,
}

/// Addresses and routes the agent put on one interface.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
struct LiveRec {
    name: String,
    #[serde(default)]
    mac: Option<MacAddr>,
    #[serde(default)]
    addresses: Vec<Cidr>,
    /// (destination, gateway)
    #[serde(default)]
    routes: Vec<(Cidr, IpAddr)>,
}

fn read_state(root: &Path) -> Result<Option<State>> {
    let p = under(root, STATE_FILE);
    match fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("parse {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

/// The generation recorded under `root`.
pub fn applied_generation(root: &Path) -> Result<ConfigGeneration> {
    Ok(match read_state(root)? {
        Some(s) => ConfigGeneration {
            instance_id: Some(s.instance_id),
            generation: Some(s.generation),
        },
        None => ConfigGeneration::default(),
    })
}

/// Everything `apply` touches besides files under the root.
pub struct Ctx<'a> {
    /// Files are read and written under this directory.
    pub root: &'a Path,
    /// Host name.
    pub host: &'a mut dyn Host,
    /// Live network; None skips live changes (persisted files are still written).
    pub net: Option<&'a mut dyn NetOps>,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("root", &self.root).finish()
    }
}

fn mkdirs(p: &Path) -> Result<()> {
    fs::create_dir_all(p).with_context(|| format!("create directory {}", p.display()))
}

/// Apply `doc` (already validated). Same instance id and generation as recorded: nothing is
/// done (`applied: false`). A lower generation for the same instance is refused.
pub fn apply(doc: &ConfigDoc, ctx: &mut Ctx<'_>) -> Result<ApplyResult> {
    let previous = read_state(ctx.root)?;
    if let Some(prev) = previous
        .as_ref()
        .filter(|p| p.instance_id == doc.instance_id)
    {
        let g = prev.generation;
        if g == doc.generation {
            return Ok(ApplyResult {
                instance_id: doc.instance_id.clone(),
                generation: doc.generation,
                applied: false,
                changes: vec![],
            });
        }
        if g > doc.generation {
            bail!(
                "generation {} of instance {} is older than the applied generation {g}",
                doc.generation,
                doc.instance_id
            );
        }
    }
    let mut changes = Vec::new();
    let old_live = previous.map(|p| p.live).unwrap_or_default();
    let empty = NetworkConfig {
        version: 2,
        ethernets: Default::default(),
    };
    let live = apply_network(
        doc.network.as_ref().unwrap_or(&empty),
        &old_live,
        ctx,
        &mut changes,
    )?;
    apply_hostname(doc, ctx, &mut changes)?;
    apply_users(doc, ctx.root, &mut changes)?;
    let state = State {
        instance_id: doc.instance_id.clone(),
        generation: doc.generation,
        live,
    };
    let p = under(ctx.root, STATE_FILE);
    mkdirs(p.parent().expect("state file has a parent"))?;
    fsutil::write_atomic(
        &p,
        &serde_json::to_vec_pretty(&state).expect("state serializes"),
        0o644,
        None,
    )?;
    log_event(
        "config-applied",
        &[
            ("instance-id", doc.instance_id.as_str()),
            ("generation", &doc.generation.to_string()),
        ],
    );
    Ok(ApplyResult {
        instance_id: doc.instance_id.clone(),
        generation: doc.generation,
        applied: true,
        changes,
    })
}

/// Log a security-relevant change as one structured `key=value` line on stderr.
pub fn log_event(event: &str, fields: &[(&str, &str)]) {
    let mut line = format!("xenplug-agent: event={event}");
    for (k, v) in fields {
        let v: String = v
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if v.contains(' ') || v.is_empty() {
            let _ = write!(line, " {k}=\"{}\"", v.replace('"', "'"));
        } else {
            let _ = write!(line, " {k}={v}");
        }
    }
    eprintln!("{line}");
}

fn write_changed(
    path: &Path,
    data: &str,
    mode: u32,
    changes: &mut Vec<String>,
    root: &Path,
) -> Result<()> {
    if let Some(d) = path.parent() {
        mkdirs(d)?;
    }
    if fsutil::write_atomic(path, data.as_bytes(), mode, None)? {
        let shown = path.strip_prefix(root).map(|p| format!("/{}", p.display()));
        changes.push(format!(
            "file {}",
            shown.unwrap_or_else(|_| path.display().to_string())
        ));
    }
    Ok(())
}

fn apply_hostname(doc: &ConfigDoc, ctx: &mut Ctx<'_>, changes: &mut Vec<String>) -> Result<()> {
    let Some(want) = doc.effective_hostname() else {
        return Ok(());
    };
    let name = xenplug_channel::config::truncate_hostname(&want, HOST_NAME_MAX);
    if ctx.host.hostname().ok().as_deref() != Some(name.as_str()) {
        ctx.host.set_hostname(&name)?;
        changes.push("hostname".into());
        log_event("hostname", &[("name", &name)]);
    }
    let hn = under(ctx.root, "/etc/hostname");
    write_changed(&hn, &format!("{name}\n"), 0o644, changes, ctx.root)?;
    if doc.manage_etc_hosts != Some(false) {
        let hosts = under(ctx.root, "/etc/hosts");
        let old = fs::read_to_string(&hosts).unwrap_or_default();
        let short = name.split('.').next().unwrap_or(&name).to_string();
        let mut names = Vec::new();
        if let Some(f) = &doc.fqdn {
            names.push(f.clone());
        }
        for n in [&name, &short] {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let line = format!("127.0.1.1\t{}", names.join(" "));
        let new = fsutil::replace_block(&old, HOSTS_BEGIN, HOSTS_END, &[line]);
        let mode = fsutil::mode_owner(&hosts).map(|m| m.0).unwrap_or(0o644);
        write_changed(&hosts, &new, mode, changes, ctx.root)?;
    }
    Ok(())
}

fn apply_users(doc: &ConfigDoc, root: &Path, changes: &mut Vec<String>) -> Result<()> {
    let mut shadow = Vec::new();
    for u in &doc.users {
        let pw = users::lookup(root, &u.name)?;
        let keys = u.ssh_authorized_keys.clone();
        let changed = users::edit_keys(root, &pw, |old| {
            fsutil::replace_block(old, users::KEYS_BEGIN, users::KEYS_END, &keys)
        })
        .with_context(|| format!("authorized_keys of {}", u.name))?;
        if changed {
            changes.push(format!("ssh-keys {}", u.name));
            log_event(
                "ssh-keys",
                &[("user", &u.name), ("managed-keys", &keys.len().to_string())],
            );
        }
        if u.hashed_passwd.is_some() || u.lock_passwd.is_some() {
            shadow.push(users::ShadowChange {
                name: u.name.clone(),
                hash: u.hashed_passwd.clone(),
                lock: u.lock_passwd,
            });
        }
    }
    for name in users::update_shadow(root, &shadow)? {
        log_event("password", &[("user", &name)]);
        changes.push(format!("password {name}"));
    }
    Ok(())
}

/// The networkd `.network` (and `.link` for `set-name`) files for one entry.
pub fn render_networkd(id: &str, e: &Ethernet) -> (String, Option<String>) {
    let mut s = String::from(
        "# Written by xenplug-agent; replaced on every configuration change.\n[Match]\n",
    );
    let mac = e.match_.as_ref().and_then(|m| m.macaddress);
    let name = match (&e.set_name, &e.match_) {
        (Some(n), _) => Some(n.clone()),
        (None, Some(m)) => m.name.clone(),
        (None, None) => Some(id.to_string()),
    };
    if let Some(m) = mac {
        let _ = writeln!(s, "MACAddress={m}");
    }
    if let Some(n) = &name {
        let _ = writeln!(s, "Name={n}");
    }
    if let Some(mtu) = e.mtu {
        let _ = writeln!(s, "\n[Link]\nMTUBytes={mtu}");
    }
    s.push_str("\n[Network]\n");
    let dhcp = match (e.dhcp4 == Some(true), e.dhcp6 == Some(true)) {
        (true, true) => "yes",
        (true, false) => "ipv4",
        (false, true) => "ipv6",
        (false, false) => "no",
    };
    let _ = writeln!(s, "DHCP={dhcp}");
    if e.dhcp6 != Some(true) {
        // As netplan: no SLAAC/RA unless DHCPv6 is asked for.
        s.push_str("IPv6AcceptRA=no\n");
    }
    for a in &e.addresses {
        let _ = writeln!(s, "Address={a}");
    }
    if let Some(ns) = &e.nameservers {
        for a in &ns.addresses {
            let _ = writeln!(s, "DNS={a}");
        }
        if !ns.search.is_empty() {
            let _ = writeln!(s, "Domains={}", ns.search.join(" "));
        }
    }
    for r in e.all_routes() {
        s.push_str("\n[Route]\n");
        match r.to {
            RouteTo::Default => {}
            RouteTo::Net(c) => {
                let _ = writeln!(s, "Destination={c}");
            }
        }
        let _ = writeln!(s, "Gateway={}", r.via);
        if let Some(m) = r.metric {
            let _ = writeln!(s, "Metric={m}");
        }
    }
    let link = match (&e.set_name, mac) {
        (Some(n), Some(m)) => Some(format!(
            "# Written by xenplug-agent.\n[Match]\nMACAddress={m}\n\n[Link]\nName={n}\n"
        )),
        (Some(n), None) => e.match_.as_ref().and_then(|m| m.name.as_ref()).map(|orig| {
            format!(
                "# Written by xenplug-agent.\n[Match]\nOriginalName={orig}\n\n[Link]\nName={n}\n"
            )
        }),
        _ => None,
    };
    (s, link)
}

/// The ifupdown stanzas for the whole network (interfaces named by `resolved` id → kernel name).
pub fn render_ifupdown(
    n: &NetworkConfig,
    names: &dyn Fn(&str, &Ethernet) -> Option<String>,
) -> String {
    let mut s =
        String::from("# Written by xenplug-agent; replaced on every configuration change.\n");
    for (id, e) in &n.ethernets {
        let Some(ifname) = names(id, e) else {
            let _ = writeln!(s, "# {id}: no interface matched when this was written");
            continue;
        };
        let _ = writeln!(s, "\nauto {ifname}");
        if e.dhcp4 == Some(true) {
            let _ = writeln!(s, "iface {ifname} inet dhcp");
        }
        if e.dhcp6 == Some(true) {
            let _ = writeln!(s, "iface {ifname} inet6 dhcp");
        }
        let routes = e.all_routes();
        for (i, a) in e.addresses.iter().enumerate() {
            let fam = if a.addr.is_ipv4() { "inet" } else { "inet6" };
            let _ = writeln!(s, "iface {ifname} {fam} static\n    address {a}");
            if let Some(m) = e.mtu {
                let _ = writeln!(s, "    mtu {m}");
            }
            if i == 0 {
                if let Some(ns) = &e.nameservers {
                    if !ns.addresses.is_empty() {
                        let list: Vec<String> =
                            ns.addresses.iter().map(|a| a.to_string()).collect();
                        let _ = writeln!(s, "    dns-nameservers {}", list.join(" "));
                    }
                    if !ns.search.is_empty() {
                        let _ = writeln!(s, "    dns-search {}", ns.search.join(" "));
                    }
                }
            }
            for r in routes
                .iter()
                .filter(|r| r.via.is_ipv4() == a.addr.is_ipv4())
            {
                let metric = r.metric.map(|m| format!(" metric {m}")).unwrap_or_default();
                let dst = match r.to {
                    RouteTo::Default => "default".to_string(),
                    RouteTo::Net(c) => c.to_string(),
                };
                let _ = writeln!(
                    s,
                    "    up ip route replace {dst} via {}{metric} dev {ifname}",
                    r.via
                );
            }
        }
    }
    s
}

fn uses_ifupdown(root: &Path) -> bool {
    under(root, "/etc/network/interfaces").is_file()
        && ["/sbin/ifup", "/usr/sbin/ifup"]
            .iter()
            .any(|p| under(root, p).exists())
}

/// Returns what is now configured live (the previous record when live changes are off).
fn apply_network(
    n: &NetworkConfig,
    old_live: &[LiveRec],
    ctx: &mut Ctx<'_>,
    changes: &mut Vec<String>,
) -> Result<Vec<LiveRec>> {
    // Live first: learn which kernel interface each entry means (and rename it).
    let mut resolved: Vec<(String, Option<String>)> = Vec::new();
    let mut live = old_live.to_vec();
    if let Some(net) = ctx.net.as_deref_mut() {
        // Take back first: deleting an IPv4 primary address also deletes the secondaries of
        // its subnet, which could include one about to be added.
        let links = net.links()?;
        let wanted: Vec<LiveRec> = n
            .ethernets
            .iter()
            .filter_map(|(id, e)| {
                let l = links
                    .iter()
                    .find(|l| !l.loopback && e.matches(id, &l.name, l.mac.map(MacAddr)))?;
                Some(LiveRec {
                    name: l.name.clone(),
                    mac: l.mac.map(MacAddr),
                    addresses: e.addresses.clone(),
                    routes: e.all_routes().iter().map(route_key).collect(),
                })
            })
            .collect();
        take_back(old_live, &wanted, net, changes)?;
        live.clear();
        for (id, e) in &n.ethernets {
            let rec = apply_live(id, e, net, changes)
                .with_context(|| format!("network.ethernets.{id}"))?;
            resolved.push((id.clone(), rec.as_ref().map(|r| r.name.clone())));
            live.extend(rec);
        }
    }
    if n.ethernets.is_empty() && old_live.is_empty() {
        // Nothing asked now or before: leave the guest's own network files alone.
        let dir = under(ctx.root, "/etc/systemd/network");
        if dir.is_dir() {
            remove_stale(&dir, &[], changes, ctx.root)?;
        }
        return Ok(live);
    }
    // Persist for systemd-networkd (udev applies .link files even without networkd).
    let dir = under(ctx.root, "/etc/systemd/network");
    mkdirs(&dir)?;
    let mut keep = Vec::new();
    for (id, e) in &n.ethernets {
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let (network, link) = render_networkd(id, e);
        let np = dir.join(format!("{NETWORKD_PREFIX}{safe}.network"));
        write_changed(&np, &network, 0o644, changes, ctx.root)?;
        keep.push(np);
        if let Some(l) = link {
            let lp = dir.join(format!("{NETWORKD_PREFIX}{safe}.link"));
            write_changed(&lp, &l, 0o644, changes, ctx.root)?;
            keep.push(lp);
        }
    }
    remove_stale(&dir, &keep, changes, ctx.root)?;
    // ifupdown, when that is what the guest uses.
    if uses_ifupdown(ctx.root) {
        let names = |id: &str, e: &Ethernet| -> Option<String> {
            if let Some(n) = &e.set_name {
                return Some(n.clone());
            }
            if let Some((_, Some(n))) = resolved.iter().find(|(i, _)| i == id) {
                return Some(n.clone());
            }
            match &e.match_ {
                None => Some(id.to_string()),
                Some(m) => m.name.clone().filter(|n| !n.contains(['*', '?'])),
            }
        };
        let text = render_ifupdown(n, &names);
        write_changed(
            &under(ctx.root, IFUPDOWN_FILE),
            &text,
            0o644,
            changes,
            ctx.root,
        )?;
    }
    // DNS for guests without resolved: a plain /etc/resolv.conf file (a symlink, e.g. to the
    // resolved stub, is left alone: networkd's DNS= feeds resolved).
    let resolv = under(ctx.root, "/etc/resolv.conf");
    let is_plain = fs::symlink_metadata(&resolv)
        .map(|m| m.file_type().is_file())
        .unwrap_or(true);
    let servers: Vec<IpAddr> = n
        .ethernets
        .values()
        .filter_map(|e| e.nameservers.as_ref())
        .flat_map(|ns| ns.addresses.iter().copied())
        .collect();
    let search: Vec<String> = n
        .ethernets
        .values()
        .filter_map(|e| e.nameservers.as_ref())
        .flat_map(|ns| ns.search.iter().cloned())
        .collect();
    if is_plain && (!servers.is_empty() || !search.is_empty()) {
        let mut s = String::from("# Written by xenplug-agent.\n");
        if !search.is_empty() {
            let _ = writeln!(s, "search {}", search.join(" "));
        }
        for a in servers.iter().take(3) {
            let _ = writeln!(s, "nameserver {a}");
        }
        write_changed(&resolv, &s, 0o644, changes, ctx.root)?;
    }
    Ok(live)
}

/// A route as (destination with `default` spelled out, gateway).
fn route_key(r: &Route) -> (Cidr, IpAddr) {
    let dst = match r.to {
        RouteTo::Default => Cidr {
            addr: if r.via.is_ipv4() {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            },
            prefix: 0,
        },
        RouteTo::Net(c) => c,
    };
    (dst, r.via)
}

/// Remove the addresses and routes a previous generation configured that the current one does
/// not (on the same interface, found by MAC first, then by name). Gone is fine.
fn take_back(
    old: &[LiveRec],
    now: &[LiveRec],
    net: &mut dyn NetOps,
    changes: &mut Vec<String>,
) -> Result<()> {
    if old.is_empty() {
        return Ok(());
    }
    let links = net.links()?;
    for o in old {
        let Some(link) = links
            .iter()
            .find(|l| o.mac.is_some() && l.mac.map(MacAddr) == o.mac)
            .or_else(|| links.iter().find(|l| l.name == o.name))
        else {
            continue;
        };
        let cur = now
            .iter()
            .find(|n| n.name == link.name || (n.mac.is_some() && n.mac == link.mac.map(MacAddr)));
        for (dst, via) in &o.routes {
            if !cur.is_some_and(|c| c.routes.contains(&(*dst, *via))) {
                net.del_route(link.index, dst.addr, dst.prefix, Some(*via))?;
                changes.push(format!("route {dst} via {via} removed from {}", link.name));
            }
        }
        for a in &o.addresses {
            if !cur.is_some_and(|c| c.addresses.contains(a)) {
                net.del_address(link.index, a.addr, a.prefix)?;
                changes.push(format!("address {a} removed from {}", link.name));
            }
        }
    }
    Ok(())
}

fn remove_stale(
    dir: &Path,
    keep: &[PathBuf],
    changes: &mut Vec<String>,
    root: &Path,
) -> Result<()> {
    for ent in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let p = ent?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(NETWORKD_PREFIX)
            && (name.ends_with(".network") || name.ends_with(".link"))
            && !keep.contains(&p)
            && fsutil::remove_file(&p)?
        {
            let shown = p.strip_prefix(root).map(|p| format!("/{}", p.display()));
            changes.push(format!("removed {}", shown.unwrap_or_default()));
        }
    }
    Ok(())
}

/// Live changes for one entry; returns what was configured on which interface (None when no
/// interface matches now; the persisted files still apply when it appears).
fn apply_live(
    id: &str,
    e: &Ethernet,
    net: &mut dyn NetOps,
    changes: &mut Vec<String>,
) -> Result<Option<LiveRec>> {
    let links = net.links()?;
    let Some(link) = links
        .iter()
        .find(|l| !l.loopback && e.matches(id, &l.name, l.mac.map(MacAddr)))
        .cloned()
    else {
        changes.push(format!("no interface matches {id} now (persisted only)"));
        return Ok(None);
    };
    let mut name = link.name.clone();
    if let Some(want) = &e.set_name {
        if *want != link.name {
            if links.iter().any(|l| l.name == *want) {
                bail!("cannot rename {} to {want}: the name is taken", link.name);
            }
            if link.up {
                net.set_up(link.index, false)?;
            }
            net.rename(link.index, want)?;
            changes.push(format!("link {} renamed {want}", link.name));
            name = want.clone();
        }
    }
    if let Some(mtu) = e.mtu {
        if link.mtu != mtu {
            net.set_mtu(link.index, mtu)?;
            changes.push(format!("link {name} mtu {mtu}"));
        }
    }
    if !link.up || e.set_name.as_ref().is_some_and(|w| *w != link.name) {
        net.set_up(link.index, true)?;
        changes.push(format!("link {name} up"));
    }
    let have = net.addresses()?;
    for a in &e.addresses {
        if !have
            .iter()
            .any(|h| h.index == link.index && h.addr == a.addr && h.prefix == a.prefix)
        {
            net.add_address(link.index, a.addr, a.prefix)?;
            changes.push(format!("address {a} on {name}"));
        }
    }
    let mut rec_routes = Vec::new();
    for r in e.all_routes() {
        let (Cidr { addr: dst, prefix }, _) = route_key(&r);
        net.replace_route(link.index, dst, prefix, Some(r.via), r.metric)?;
        changes.push(format!("route {dst}/{prefix} via {} on {name}", r.via));
        rec_routes.push(route_key(&r));
    }
    Ok(Some(LiveRec {
        name,
        mac: link.mac.map(MacAddr),
        addresses: e.addresses.clone(),
        routes: rec_routes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn networkd_rendering() {
        let n: NetworkConfig = serde_json::from_value(json!({"version": 2, "ethernets": {
            "lan": {"match": {"macaddress": "00:16:3e:00:00:01"}, "set-name": "eth0",
                    "addresses": ["192.0.2.10/24", "2001:db8::10/64"], "mtu": 1400,
                    "routes": [{"to": "default", "via": "192.0.2.1", "metric": 100}],
                    "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.org"]}}}}))
        .unwrap();
        let (net, link) = render_networkd("lan", &n.ethernets["lan"]);
        assert!(
            net.contains("[Match]\nMACAddress=00:16:3e:00:00:01\nName=eth0\n"),
            "{net}"
        );
        assert!(net.contains("MTUBytes=1400"));
        assert!(net.contains("DHCP=no\nIPv6AcceptRA=no\nAddress=192.0.2.10/24\nAddress=2001:db8::10/64\nDNS=192.0.2.53\nDomains=example.org\n"), "{net}");
        assert!(net.contains("[Route]\nGateway=192.0.2.1\nMetric=100\n"));
        assert_eq!(
            link.unwrap(),
            "# Written by xenplug-agent.\n[Match]\nMACAddress=00:16:3e:00:00:01\n\n[Link]\nName=eth0\n"
        );
        let ifu = render_ifupdown(&n, &|_, _| Some("eth0".into()));
        assert!(ifu.contains("auto eth0\niface eth0 inet static\n    address 192.0.2.10/24\n    mtu 1400\n    dns-nameservers 192.0.2.53\n    dns-search example.org\n    up ip route replace default via 192.0.2.1 metric 100 dev eth0\n"), "{ifu}");
        assert!(ifu.contains("iface eth0 inet6 static\n    address 2001:db8::10/64"));
    }

    /// A recording fake of the kernel: links, addresses, and the operations in order.
    #[derive(Default)]
    struct FakeNet {
        links: Vec<crate::net::Link>,
        addrs: Vec<crate::net::Addr>,
        ops: Vec<String>,
    }

    impl NetOps for FakeNet {
        fn links(&mut self) -> Result<Vec<crate::net::Link>> {
            Ok(self.links.clone())
        }
        fn addresses(&mut self) -> Result<Vec<crate::net::Addr>> {
            Ok(self.addrs.clone())
        }
        fn rename(&mut self, index: u32, name: &str) -> Result<()> {
            self.ops.push(format!("rename {index} {name}"));
            for l in &mut self.links {
                if l.index == index {
                    l.name = name.into();
                }
            }
            Ok(())
        }
        fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
            self.ops.push(format!("up {index} {up}"));
            for l in &mut self.links {
                if l.index == index {
                    l.up = up;
                }
            }
            Ok(())
        }
        fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
            self.ops.push(format!("mtu {index} {mtu}"));
            Ok(())
        }
        fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
            self.ops.push(format!("add {addr}/{prefix}"));
            self.addrs.push(crate::net::Addr {
                index,
                addr,
                prefix,
                secondary: false,
            });
            Ok(())
        }
        fn del_address(&mut self, _: u32, addr: IpAddr, prefix: u8) -> Result<()> {
            self.ops.push(format!("del {addr}/{prefix}"));
            self.addrs.retain(|a| a.addr != addr);
            Ok(())
        }
        fn del_route(
            &mut self,
            _: u32,
            dst: IpAddr,
            prefix: u8,
            via: Option<IpAddr>,
        ) -> Result<()> {
            self.ops.push(format!("delroute {dst}/{prefix} {via:?}"));
            Ok(())
        }
        fn replace_route(
            &mut self,
            _: u32,
            dst: IpAddr,
            prefix: u8,
            via: Option<IpAddr>,
            _: Option<u32>,
        ) -> Result<()> {
            self.ops.push(format!("route {dst}/{prefix} {via:?}"));
            Ok(())
        }
    }

    struct FakeHost(String);
    impl Host for FakeHost {
        fn set_hostname(&mut self, name: &str) -> Result<()> {
            self.0 = name.into();
            Ok(())
        }
        fn hostname(&self) -> Result<String> {
            Ok(self.0.clone())
        }
    }

    /// [`apply`] with the fake host and network, files under `root`.
    fn apply_fake(
        doc: &ConfigDoc,
        root: &Path,
        host: &mut FakeHost,
        net: &mut FakeNet,
    ) -> Result<ApplyResult> {
        apply(
            doc,
            &mut Ctx {
                root,
                host,
                net: Some(net),
            },
        )
    }

    #[test]
    fn apply_order_noop_and_take_back() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        fs::write(root.path().join("etc/shadow"), "root:*:1:0:99999:7:::\n").unwrap();
        let mut net = FakeNet {
            links: vec![crate::net::Link {
                index: 2,
                name: "eth7".into(),
                mac: Some("00:16:3e:00:00:09".parse::<MacAddr>().unwrap().0),
                up: false,
                mtu: 1500,
                loopback: false,
                master: None,
                kind: None,
                stats: None,
                alias: None,
            }],
            ..Default::default()
        };
        let mut host = FakeHost("old".into());
        let mut doc: ConfigDoc = serde_json::from_value(json!({"instance-id": "i", "generation": 1,
            "hostname": "h1", "network": {"version": 2, "ethernets": {"lan": {
                "match": {"macaddress": "00:16:3e:00:00:09"}, "set-name": "eth0",
                "addresses": ["192.0.2.10/24"], "routes": [{"to": "default", "via": "192.0.2.1"}]}}}}))
        .unwrap();
        let r = apply_fake(&doc, root.path(), &mut host, &mut net).unwrap();
        assert!(r.applied);
        assert_eq!(host.0, "h1");
        assert_eq!(
            net.ops,
            vec![
                "rename 2 eth0",
                "up 2 true",
                "add 192.0.2.10/24",
                "route 0.0.0.0/0 Some(192.0.2.1)"
            ]
        );
        // Same generation: nothing at all.
        net.ops.clear();
        let r = apply_fake(&doc, root.path(), &mut host, &mut net).unwrap();
        assert!(!r.applied);
        assert!(net.ops.is_empty());
        // Next generation: the old address and route are taken back before the new are added.
        doc.generation = 2;
        let lan = doc
            .network
            .as_mut()
            .unwrap()
            .ethernets
            .get_mut("lan")
            .unwrap();
        lan.addresses = vec!["192.0.2.11/24".parse().unwrap()];
        lan.routes.clear();
        let _ = apply_fake(&doc, root.path(), &mut host, &mut net).unwrap();
        assert_eq!(
            net.ops,
            vec![
                "delroute 0.0.0.0/0 Some(192.0.2.1)",
                "del 192.0.2.10/24",
                "add 192.0.2.11/24"
            ]
        );
        let hosts = fs::read_to_string(root.path().join("etc/hosts")).unwrap();
        assert_eq!(
            hosts,
            "# BEGIN xenplug-agent\n127.0.1.1\th1\n# END xenplug-agent\n"
        );
        // An older generation is refused.
        doc.generation = 1;
        assert!(apply_fake(&doc, root.path(), &mut host, &mut net).is_err());
    }
}
