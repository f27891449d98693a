//! Applying a [`ConfigDoc`]: network (live through netlink, persisted for systemd-networkd and,
//! when the guest uses it, ifupdown), DNS, host name, users' keys and passwords; then the applied
//! generation is recorded.
//!
//! **All or nothing per generation.** Every file goes through a [`Txn`] that remembers what it
//! replaced, password-database entries are put back under the lock, live network changes go
//! through a [`NetJournal`] that snapshots the links and addresses it touches, and the kernel
//! host name is remembered. When any step fails, everything done so far is undone (newest
//! first, never stopping at the first error), the previous generation's live routes are put
//! back, and the error says whether the previous generation is whole again. The record of the
//! applied generation is the last write of the transaction, so it only ever names a generation
//! that is completely in place.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use xenplug_channel::config::{
    validate_ifname, validate_ifname_pattern, Cidr, ConfigDoc, Ethernet, MacAddr, NetworkConfig,
    Route, RouteTo,
};
use xenplug_channel::qga::{ApplyResult, ConfigGeneration};

use crate::fsutil::{self, under};
use crate::net::{Addr, Link, NetOps};
use crate::pwdlock::LCKPWDF_TIMEOUT;
use crate::txn::Txn;
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

/// A route the agent configured: destination (`default` spelled out), gateway, metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct LiveRoute(Cidr, IpAddr, Option<u32>);

impl<'de> Deserialize<'de> for LiveRoute {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Records written before the metric was kept are pairs.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            Three(Cidr, IpAddr, Option<u32>),
            Two(Cidr, IpAddr),
        }
        Ok(match Any::deserialize(d)? {
            Any::Three(c, v, m) => LiveRoute(c, v, m),
            Any::Two(c, v) => LiveRoute(c, v, None),
        })
    }
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
    #[serde(default)]
    routes: Vec<LiveRoute>,
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

/// One generation being applied: the file transaction, the live-network journal, the host
/// name it replaced, and the list of changes for the reply.
struct Run<'a, 'n> {
    root: &'a Path,
    txn: Txn,
    net: Option<NetJournal<'n>>,
    host: &'a mut dyn Host,
    old_hostname: Option<String>,
    changes: Vec<String>,
}

/// Apply `doc` (already validated). Same instance id and generation as recorded: nothing is
/// done (`applied: false`). A lower generation for the same instance is refused. On failure
/// nothing of the new generation stays (see the module docs), and the error says so.
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
    let old_live = previous
        .as_ref()
        .map(|p| p.live.clone())
        .unwrap_or_default();
    // The journal borrows the live network for this generation; it is handed back at the end.
    let mut run = Run {
        root: ctx.root,
        txn: Txn::new(),
        net: ctx.net.take().map(NetJournal::new),
        host: &mut *ctx.host,
        old_hostname: None,
        changes: Vec::new(),
    };
    let result = apply_steps(doc, &old_live, &mut run);
    let outcome = finish(doc, previous.as_ref(), &old_live, &mut run, result);
    ctx.net = run.net.map(|j| j.inner);
    outcome
}

/// Commit, or undo everything and say what is in place now.
fn finish(
    doc: &ConfigDoc,
    previous: Option<&State>,
    old_live: &[LiveRec],
    run: &mut Run<'_, '_>,
    result: Result<()>,
) -> Result<ApplyResult> {
    let txn = std::mem::take(&mut run.txn);
    match result {
        Ok(()) => {
            txn.commit();
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
                changes: std::mem::take(&mut run.changes),
            })
        }
        Err(e) => {
            let mut undo_errors = txn.rollback();
            if let Some(j) = run.net.as_mut() {
                undo_errors.extend(j.restore(old_live));
            }
            if let Some(h) = run.old_hostname.take() {
                if let Err(e) = run.host.set_hostname(&h) {
                    undo_errors.push(format!("restore the host name {h}: {e:#}"));
                }
            }
            let before = match previous {
                Some(p) => format!("generation {} of instance {}", p.generation, p.instance_id),
                None => "the configuration from before any generation".to_string(),
            };
            let what = format!(
                "generation {} of instance {} was not applied: {e:#}",
                doc.generation, doc.instance_id
            );
            if undo_errors.is_empty() {
                log_event(
                    "config-rolled-back",
                    &[
                        ("instance-id", doc.instance_id.as_str()),
                        ("generation", &doc.generation.to_string()),
                    ],
                );
                Err(anyhow!(
                    "{what}; everything it changed was undone: {before} is in place"
                ))
            } else {
                log_event(
                    "config-rollback-incomplete",
                    &[
                        ("instance-id", doc.instance_id.as_str()),
                        ("generation", &doc.generation.to_string()),
                        ("errors", &undo_errors.join("; ")),
                    ],
                );
                Err(anyhow!(
                    "{what}; undoing it failed too ({}), so the guest is partly configured and \
                     {before} is not whole",
                    undo_errors.join("; ")
                ))
            }
        }
    }
}

fn apply_steps(doc: &ConfigDoc, old_live: &[LiveRec], run: &mut Run<'_, '_>) -> Result<()> {
    let empty = NetworkConfig {
        version: 2,
        ethernets: Default::default(),
    };
    let live = apply_network(doc.network.as_ref().unwrap_or(&empty), old_live, run)?;
    apply_hostname(doc, run)?;
    apply_users(doc, run)?;
    let state = State {
        instance_id: doc.instance_id.clone(),
        generation: doc.generation,
        live,
    };
    let p = under(run.root, STATE_FILE);
    run.txn
        .create_dir_all(p.parent().expect("state file has a parent"), 0o755)?;
    run.txn.write(
        &p,
        &serde_json::to_vec_pretty(&state).expect("state serializes"),
        0o644,
        None,
    )?;
    Ok(())
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

impl Run<'_, '_> {
    fn write_changed(&mut self, path: &Path, data: &str, mode: u32) -> Result<()> {
        if let Some(d) = path.parent() {
            self.txn.create_dir_all(d, 0o755)?;
        }
        if self.txn.write(path, data.as_bytes(), mode, None)? {
            let shown = self.shown(path);
            self.changes.push(format!("file {shown}"));
        }
        Ok(())
    }

    fn shown(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .map(|p| format!("/{}", p.display()))
            .unwrap_or_else(|_| path.display().to_string())
    }
}

fn apply_hostname(doc: &ConfigDoc, run: &mut Run<'_, '_>) -> Result<()> {
    let Some(want) = doc.effective_hostname() else {
        return Ok(());
    };
    let name = xenplug_channel::config::truncate_hostname(&want, HOST_NAME_MAX);
    let now = run.host.hostname().ok();
    if now.as_deref() != Some(name.as_str()) {
        run.host.set_hostname(&name)?;
        if run.old_hostname.is_none() {
            run.old_hostname = now;
        }
        run.changes.push("hostname".into());
        log_event("hostname", &[("name", &name)]);
    }
    let hn = under(run.root, "/etc/hostname");
    run.write_changed(&hn, &format!("{name}\n"), 0o644)?;
    if doc.manage_etc_hosts != Some(false) {
        let hosts = under(run.root, "/etc/hosts");
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
        let line = render_hosts_line(&names)?;
        let new = fsutil::replace_block(&old, HOSTS_BEGIN, HOSTS_END, &[line]);
        let mode = fsutil::mode_owner(&hosts).map(|m| m.0).unwrap_or(0o644);
        run.write_changed(&hosts, &new, mode)?;
    }
    Ok(())
}

/// The agent's `/etc/hosts` line. Every name is re-checked as a host name here, the last place
/// before the file: a name with a space, a `#` or a line break would add names, comment the rest
/// out or add a line.
pub fn render_hosts_line(names: &[String]) -> Result<String> {
    for n in names {
        xenplug_channel::config::validate_hostname(n).map_err(|e| anyhow!("/etc/hosts: {e}"))?;
    }
    Ok(format!("127.0.1.1\t{}", names.join(" ")))
}

fn apply_users(doc: &ConfigDoc, run: &mut Run<'_, '_>) -> Result<()> {
    let mut shadow = Vec::new();
    for u in &doc.users {
        let pw = users::lookup(run.root, &u.name)?;
        let keys = u.ssh_authorized_keys.clone();
        let changed = users::edit_keys_in(&mut run.txn, run.root, &pw, |old| {
            fsutil::replace_block(old, users::KEYS_BEGIN, users::KEYS_END, &keys)
        })
        .with_context(|| format!("authorized_keys of {}", u.name))?;
        if changed {
            run.changes.push(format!("ssh-keys {}", u.name));
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
    for name in users::update_shadow_in(&mut run.txn, run.root, &shadow, LCKPWDF_TIMEOUT)? {
        log_event("password", &[("user", &name)]);
        run.changes.push(format!("password {name}"));
    }
    Ok(())
}

/// An interface name about to be written into a configuration file: checked again here (it may
/// come from the kernel rather than from the document), so no renderer ever writes a name a
/// shell or parser would interpret.
fn render_name(n: &str) -> Result<&str> {
    validate_ifname(n).map_err(|e| anyhow!(e))?;
    Ok(n)
}

/// The networkd `.network` (and `.link` for `set-name`) files for one entry.
pub fn render_networkd(id: &str, e: &Ethernet) -> Result<(String, Option<String>)> {
    let mut s = String::from(
        "# Written by xenplug-agent; replaced on every configuration change.\n[Match]\n",
    );
    let mac = e.match_.as_ref().and_then(|m| m.macaddress);
    let name = match (&e.set_name, &e.match_) {
        (Some(n), _) => Some(render_name(n)?.to_string()),
        (None, Some(m)) => match &m.name {
            Some(p) => {
                validate_ifname_pattern(p).map_err(|e| anyhow!(e))?;
                Some(p.clone())
            }
            None => None,
        },
        (None, None) => Some(render_name(id)?.to_string()),
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
            for d in &ns.search {
                xenplug_channel::config::validate_hostname(d).map_err(|e| anyhow!(e))?;
            }
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
    Ok((s, link))
}

/// The ifupdown stanzas for the whole network (interfaces named by `names`: id → kernel name).
///
/// ifupdown hands the interface name of a stanza to `/bin/sh` (its methods are command
/// templates with `%iface%` substituted) and runs `up` lines with `/bin/sh -c`; every name is
/// checked with [`validate_ifname`] here, and the agent's own `up` lines refer to the interface
/// as `"$IFACE"` (set by ifupdown), never by splicing the name in.
pub fn render_ifupdown(
    n: &NetworkConfig,
    names: &dyn Fn(&str, &Ethernet) -> Option<String>,
) -> Result<String> {
    let mut s =
        String::from("# Written by xenplug-agent; replaced on every configuration change.\n");
    for (id, e) in &n.ethernets {
        let Some(ifname) = names(id, e) else {
            xenplug_channel::config::validate_entry_id(id)
                .or_else(|_| validate_ifname(id))
                .map_err(|e| anyhow!(e))?;
            let _ = writeln!(s, "# {id}: no interface matched when this was written");
            continue;
        };
        let ifname = render_name(&ifname)
            .with_context(|| format!("network.ethernets.{id}: not written for ifupdown"))?;
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
                        for d in &ns.search {
                            xenplug_channel::config::validate_hostname(d)
                                .map_err(|e| anyhow!(e))?;
                        }
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
                    "    up ip route replace {dst} via {}{metric} dev \"$IFACE\"",
                    r.via
                );
            }
        }
    }
    Ok(s)
}

/// `/etc/resolv.conf` for these servers and search domains. Search domains are re-checked as
/// DNS names: a space or line break would add domains or a `nameserver` line.
pub fn render_resolv_conf(servers: &[IpAddr], search: &[String]) -> Result<String> {
    let mut s = String::from("# Written by xenplug-agent.\n");
    if !search.is_empty() {
        for d in search {
            xenplug_channel::config::validate_hostname(d)
                .map_err(|e| anyhow!("/etc/resolv.conf: {e}"))?;
        }
        let _ = writeln!(s, "search {}", search.join(" "));
    }
    for a in servers.iter().take(3) {
        let _ = writeln!(s, "nameserver {a}");
    }
    Ok(s)
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
    run: &mut Run<'_, '_>,
) -> Result<Vec<LiveRec>> {
    // Live first: learn which kernel interface each entry means (and rename it).
    let mut resolved: Vec<(String, Option<String>)> = Vec::new();
    let mut live = old_live.to_vec();
    if let Some(net) = run.net.as_mut() {
        // Take back first: deleting an IPv4 primary address also deletes the secondaries of
        // its subnet, which could include one about to be added.
        let links = net.links()?;
        let wanted: Vec<LiveRec> = n
            .ethernets
            .iter()
            .filter_map(|(id, e)| {
                let l = links
                    .iter()
                    .find(|l| !l.loopback && e.matches(id, &l.name, l.mac))?;
                Some(LiveRec {
                    name: l.name.clone(),
                    mac: l.mac,
                    addresses: e.addresses.clone(),
                    routes: e.all_routes().iter().map(route_key).collect(),
                })
            })
            .collect();
        take_back(old_live, &wanted, net, &mut run.changes)?;
        live.clear();
        for (id, e) in &n.ethernets {
            let rec = apply_live(id, e, net, &mut run.changes)
                .with_context(|| format!("network.ethernets.{id}"))?;
            resolved.push((id.clone(), rec.as_ref().map(|r| r.name.clone())));
            live.extend(rec);
        }
    }
    if n.ethernets.is_empty() && old_live.is_empty() {
        // Nothing asked now or before: leave the guest's own network files alone.
        let dir = under(run.root, "/etc/systemd/network");
        if dir.is_dir() {
            remove_stale(&dir, &[], run)?;
        }
        return Ok(live);
    }
    // Persist for systemd-networkd (udev applies .link files even without networkd).
    let dir = under(run.root, "/etc/systemd/network");
    run.txn.create_dir_all(&dir, 0o755)?;
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
        let (network, link) = render_networkd(id, e)
            .with_context(|| format!("network.ethernets.{id}: not written for networkd"))?;
        let np = dir.join(format!("{NETWORKD_PREFIX}{safe}.network"));
        run.write_changed(&np, &network, 0o644)?;
        keep.push(np);
        if let Some(l) = link {
            let lp = dir.join(format!("{NETWORKD_PREFIX}{safe}.link"));
            run.write_changed(&lp, &l, 0o644)?;
            keep.push(lp);
        }
    }
    remove_stale(&dir, &keep, run)?;
    // ifupdown, when that is what the guest uses.
    if uses_ifupdown(run.root) {
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
        let text = render_ifupdown(n, &names)?;
        let p = under(run.root, IFUPDOWN_FILE);
        run.write_changed(&p, &text, 0o644)?;
    }
    // DNS for guests without resolved: a plain /etc/resolv.conf file (a symlink, e.g. to the
    // resolved stub, is left alone: networkd's DNS= feeds resolved).
    let resolv = under(run.root, "/etc/resolv.conf");
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
        let s = render_resolv_conf(&servers, &search)?;
        run.write_changed(&resolv, &s, 0o644)?;
    }
    Ok(live)
}

/// A route as the record keeps it (destination with `default` spelled out).
fn route_key(r: &Route) -> LiveRoute {
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
    LiveRoute(dst, r.via, r.metric)
}

/// The link a record names: by MAC first, then by name.
fn find_rec_link<'l>(links: &'l [Link], o: &LiveRec) -> Option<&'l Link> {
    links
        .iter()
        .find(|l| o.mac.is_some() && l.mac == o.mac)
        .or_else(|| links.iter().find(|l| l.name == o.name))
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
        let Some(link) = find_rec_link(&links, o) else {
            continue;
        };
        let cur = now
            .iter()
            .find(|n| n.name == link.name || (n.mac.is_some() && n.mac == link.mac));
        for LiveRoute(dst, via, metric) in &o.routes {
            if !cur.is_some_and(|c| c.routes.iter().any(|r| r.0 == *dst && r.1 == *via)) {
                let _ = metric;
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

fn remove_stale(dir: &Path, keep: &[PathBuf], run: &mut Run<'_, '_>) -> Result<()> {
    for ent in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let p = ent?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(NETWORKD_PREFIX)
            && (name.ends_with(".network") || name.ends_with(".link"))
            && !keep.contains(&p)
            && run.txn.remove(&p)?
        {
            let shown = run.shown(&p);
            run.changes.push(format!("removed {shown}"));
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
        .find(|l| !l.loopback && e.matches(id, &l.name, l.mac))
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
        let LiveRoute(Cidr { addr: dst, prefix }, _, _) = route_key(&r);
        net.replace_route(link.index, dst, prefix, Some(r.via), r.metric)?;
        changes.push(format!("route {dst}/{prefix} via {} on {name}", r.via));
        rec_routes.push(route_key(&r));
    }
    Ok(Some(LiveRec {
        name,
        mac: link.mac,
        addresses: e.addresses.clone(),
        routes: rec_routes,
    }))
}

/// The live-network side of a generation: passes every operation to the real [`NetOps`] and
/// remembers, before the first change, the links and addresses as they were, which links it
/// changed, which addresses it added and which routes it put in, so [`NetJournal::restore`] can
/// bring the links back to that state.
struct NetJournal<'n> {
    inner: &'n mut dyn NetOps,
    links0: Option<Vec<Link>>,
    addrs0: Vec<Addr>,
    touched: BTreeSet<u32>,
    added: Vec<(u32, IpAddr, u8)>,
    routes: Vec<(u32, IpAddr, u8, IpAddr)>,
}

impl std::fmt::Debug for NetJournal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetJournal")
            .field("touched", &self.touched)
            .finish()
    }
}

impl<'n> NetJournal<'n> {
    /// Journal the operations on `inner`.
    fn new(inner: &'n mut dyn NetOps) -> Self {
        NetJournal {
            inner,
            links0: None,
            addrs0: Vec::new(),
            touched: BTreeSet::new(),
            added: Vec::new(),
            routes: Vec::new(),
        }
    }

    fn before_change(&mut self, index: u32) -> Result<()> {
        if self.links0.is_none() {
            self.links0 = Some(self.inner.links()?);
            self.addrs0 = self.inner.addresses()?;
        }
        self.touched.insert(index);
        Ok(())
    }

    /// Undo: the routes put in go, the links get their names, MTUs, addresses and up state
    /// back, and the previous generation's routes (`old`) are put back on them (the kernel
    /// drops IPv4 routes of a link that goes down or loses the address of the gateway's
    /// subnet). Returns what could not be undone.
    fn restore(&mut self, old: &[LiveRec]) -> Vec<String> {
        let mut errors = Vec::new();
        let Some(links0) = self.links0.take() else {
            return errors;
        };
        let touched = std::mem::take(&mut self.touched);
        let added = std::mem::take(&mut self.added);
        let routes = std::mem::take(&mut self.routes);
        let addrs0 = std::mem::take(&mut self.addrs0);
        let net = &mut *self.inner;
        let err = |errors: &mut Vec<String>, what: String, r: Result<()>| {
            if let Err(e) = r {
                errors.push(format!("{what}: {e:#}"));
            }
        };
        for (index, dst, prefix, via) in routes.iter().rev() {
            let r = net.del_route(*index, *dst, *prefix, Some(*via));
            err(
                &mut errors,
                format!("remove route {dst}/{prefix} via {via}"),
                r,
            );
        }
        let now = match net.links() {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("list links: {e:#}"));
                return errors;
            }
        };
        for l0 in links0.iter().filter(|l| touched.contains(&l.index)) {
            let Some(l) = now.iter().find(|l| l.index == l0.index) else {
                errors.push(format!("link {} is gone", l0.name));
                continue;
            };
            if l.name != l0.name {
                if l.up {
                    err(
                        &mut errors,
                        format!("set {} down", l.name),
                        net.set_up(l.index, false),
                    );
                }
                err(
                    &mut errors,
                    format!("rename {} back to {}", l.name, l0.name),
                    net.rename(l.index, &l0.name),
                );
            }
            if l.mtu != l0.mtu {
                err(
                    &mut errors,
                    format!("mtu {} on {}", l0.mtu, l0.name),
                    net.set_mtu(l.index, l0.mtu),
                );
            }
        }
        for (index, addr, prefix) in added.iter().rev() {
            let r = net.del_address(*index, *addr, *prefix);
            err(&mut errors, format!("remove address {addr}/{prefix}"), r);
        }
        let have = net.addresses().unwrap_or_default();
        for a in addrs0.iter().filter(|a| touched.contains(&a.index)) {
            // The kernel makes IPv6 link-local addresses itself when the link comes up.
            let link_local =
                matches!(a.addr, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if link_local || have.iter().any(|h| h == a) {
                continue;
            }
            let r = net.add_address(a.index, a.addr, a.prefix);
            err(
                &mut errors,
                format!("put back address {}/{}", a.addr, a.prefix),
                r,
            );
        }
        for l0 in links0.iter().filter(|l| touched.contains(&l.index)) {
            let up_now = net
                .links()
                .ok()
                .and_then(|ls| ls.into_iter().find(|l| l.index == l0.index))
                .map(|l| l.up);
            if up_now.is_some_and(|u| u != l0.up) {
                err(
                    &mut errors,
                    format!("set {} {}", l0.name, if l0.up { "up" } else { "down" }),
                    net.set_up(l0.index, l0.up),
                );
            }
        }
        let links = net.links().unwrap_or_default();
        for o in old {
            let Some(link) = find_rec_link(&links, o) else {
                continue;
            };
            if !touched.contains(&link.index) || !link.up {
                continue;
            }
            for LiveRoute(dst, via, metric) in &o.routes {
                let r = net.replace_route(link.index, dst.addr, dst.prefix, Some(*via), *metric);
                err(&mut errors, format!("put back route {dst} via {via}"), r);
            }
        }
        errors
    }
}

impl NetOps for NetJournal<'_> {
    fn links(&mut self) -> Result<Vec<Link>> {
        self.inner.links()
    }
    fn addresses(&mut self) -> Result<Vec<Addr>> {
        self.inner.addresses()
    }
    fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        self.before_change(index)?;
        self.inner.rename(index, name)
    }
    fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
        self.before_change(index)?;
        self.inner.set_up(index, up)
    }
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.before_change(index)?;
        self.inner.set_mtu(index, mtu)
    }
    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        self.before_change(index)?;
        let existed = self
            .addrs0
            .iter()
            .any(|a| a.index == index && a.addr == addr && a.prefix == prefix);
        self.inner.add_address(index, addr, prefix)?;
        if !existed {
            self.added.push((index, addr, prefix));
        }
        Ok(())
    }
    fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        self.before_change(index)?;
        self.inner.del_address(index, addr, prefix)
    }
    fn del_route(
        &mut self,
        index: u32,
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
    ) -> Result<()> {
        self.before_change(index)?;
        self.inner.del_route(index, dst, prefix, via)
    }
    fn replace_route(
        &mut self,
        index: u32,
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
        metric: Option<u32>,
    ) -> Result<()> {
        self.before_change(index)?;
        // Recorded before the call: a replace the kernel refused part way leaves nothing, and
        // removing a route that is not there is fine.
        if let Some(v) = via {
            self.routes.push((index, dst, prefix, v));
        }
        self.inner.replace_route(index, dst, prefix, via, metric)
    }
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
        let (net, link) = render_networkd("lan", &n.ethernets["lan"]).unwrap();
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
        let ifu = render_ifupdown(&n, &|_, _| Some("eth0".into())).unwrap();
        assert!(ifu.contains("auto eth0\niface eth0 inet static\n    address 192.0.2.10/24\n    mtu 1400\n    dns-nameservers 192.0.2.53\n    dns-search example.org\n    up ip route replace default via 192.0.2.1 metric 100 dev \"$IFACE\"\n"), "{ifu}");
        assert!(ifu.contains("iface eth0 inet6 static\n    address 2001:db8::10/64"));
    }

    /// A recording fake of the kernel: links, addresses, routes, and the operations in order.
    /// It behaves as the kernel does where the agent relies on it: a link is renamed only
    /// while down, and a link that goes down loses its routes. `fail_at` makes the n-th
    /// changing operation (counted from 0) fail, to inject a failure part way.
    /// (ifindex, destination, prefix, gateway, metric)
    type FakeRoute = (u32, IpAddr, u8, Option<IpAddr>, Option<u32>);

    #[derive(Default, Clone)]
    struct FakeNet {
        links: Vec<crate::net::Link>,
        addrs: Vec<crate::net::Addr>,
        routes: Vec<FakeRoute>,
        ops: Vec<String>,
        fail_at: Option<usize>,
        changes: usize,
    }

    impl FakeNet {
        fn change(&mut self, what: String) -> Result<()> {
            let n = self.changes;
            self.changes += 1;
            if self.fail_at == Some(n) {
                bail!("injected failure of operation {n} ({what})");
            }
            self.ops.push(what);
            Ok(())
        }

        /// What an `ip -j` comparison would see: links, sorted addresses and routes.
        fn state(&self) -> String {
            let mut a: Vec<String> = self.addrs.iter().map(|a| format!("{a:?}")).collect();
            a.sort();
            let mut r: Vec<String> = self.routes.iter().map(|r| format!("{r:?}")).collect();
            r.sort();
            let l: Vec<String> = self
                .links
                .iter()
                .map(|l| format!("{} {} {} {}", l.index, l.name, l.mtu, l.up))
                .collect();
            format!("links {l:?}\naddrs {a:?}\nroutes {r:?}")
        }
    }

    impl NetOps for FakeNet {
        fn links(&mut self) -> Result<Vec<crate::net::Link>> {
            Ok(self.links.clone())
        }
        fn addresses(&mut self) -> Result<Vec<crate::net::Addr>> {
            Ok(self.addrs.clone())
        }
        fn rename(&mut self, index: u32, name: &str) -> Result<()> {
            self.change(format!("rename {index} {name}"))?;
            for l in &mut self.links {
                if l.index == index {
                    if l.up {
                        bail!("rename {index}: device or resource busy");
                    }
                    l.name = name.into();
                }
            }
            Ok(())
        }
        fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
            self.change(format!("up {index} {up}"))?;
            for l in &mut self.links {
                if l.index == index {
                    l.up = up;
                }
            }
            if !up {
                self.routes.retain(|r| r.0 != index);
            }
            Ok(())
        }
        fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
            self.change(format!("mtu {index} {mtu}"))?;
            for l in &mut self.links {
                if l.index == index {
                    l.mtu = mtu;
                }
            }
            Ok(())
        }
        fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
            self.change(format!("add {addr}/{prefix}"))?;
            let a = crate::net::Addr {
                index,
                addr,
                prefix,
            };
            if !self.addrs.contains(&a) {
                self.addrs.push(a);
            }
            Ok(())
        }
        fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
            self.change(format!("del {addr}/{prefix}"))?;
            self.addrs
                .retain(|a| !(a.index == index && a.addr == addr && a.prefix == prefix));
            Ok(())
        }
        fn del_route(
            &mut self,
            index: u32,
            dst: IpAddr,
            prefix: u8,
            via: Option<IpAddr>,
        ) -> Result<()> {
            self.change(format!("delroute {dst}/{prefix} {via:?}"))?;
            self.routes
                .retain(|r| !(r.0 == index && r.1 == dst && r.2 == prefix && r.3 == via));
            Ok(())
        }
        fn replace_route(
            &mut self,
            index: u32,
            dst: IpAddr,
            prefix: u8,
            via: Option<IpAddr>,
            metric: Option<u32>,
        ) -> Result<()> {
            self.change(format!("route {dst}/{prefix} {via:?}"))?;
            self.routes
                .retain(|r| !(r.1 == dst && r.2 == prefix && r.4 == metric));
            self.routes.push((index, dst, prefix, via, metric));
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
                mac: Some("00:16:3e:00:00:09".parse().unwrap()),
                up: false,
                mtu: 1500,
                loopback: false,
                stats: None,
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

    /// Every file under `root` (path, kind, content, mode), except the lock file the
    /// password-database lock leaves, as `lckpwdf` does.
    fn tree(root: &Path) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if rel == "etc/.pwd.lock" {
                    continue;
                }
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    out.push(format!("{rel}/ {:o}", m.mode() & 0o7777));
                    stack.push(p);
                } else {
                    out.push(format!(
                        "{rel} {:o} {:?}",
                        m.mode() & 0o7777,
                        String::from_utf8_lossy(&fs::read(&p).unwrap())
                    ));
                }
            }
        }
        out.sort();
        out
    }

    /// A syntactically valid ed25519 authorized_keys line.
    fn key(comment: &str) -> String {
        use base64::Engine as _;
        let mut raw = Vec::new();
        raw.extend_from_slice(&11u32.to_be_bytes());
        raw.extend_from_slice(b"ssh-ed25519");
        raw.extend_from_slice(&32u32.to_be_bytes());
        raw.extend((0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(comment.len() as u8)));
        format!(
            "ssh-ed25519 {} {comment}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn generation(n: u64) -> ConfigDoc {
        let k = key;
        let v = if n == 1 {
            json!({"instance-id": "i", "generation": 1, "hostname": "one",
                "network": {"version": 2, "ethernets": {"lan": {
                    "match": {"macaddress": "00:16:3e:00:00:09"}, "set-name": "eth0",
                    "addresses": ["192.0.2.10/24"],
                    "routes": [{"to": "default", "via": "192.0.2.1"}]}}},
                "users": [{"name": "alice", "ssh_authorized_keys": [k("one")],
                           "hashed_passwd": "$6$one$one", "lock_passwd": false}]})
        } else {
            json!({"instance-id": "i", "generation": n, "hostname": "two",
                "fqdn": "two.example.org",
                "network": {"version": 2, "ethernets": {
                    "lan": {"match": {"macaddress": "00:16:3e:00:00:09"}, "set-name": "lan0",
                        "mtu": 1400, "addresses": ["198.51.100.7/24", "2001:db8::7/64"],
                        "routes": [{"to": "default", "via": "198.51.100.1"},
                                   {"to": "203.0.113.0/24", "via": "198.51.100.254", "metric": 7}],
                        "nameservers": {"addresses": ["198.51.100.53"], "search": ["example.org"]}},
                    "eth1": {"dhcp4": true}}},
                "users": [{"name": "alice", "ssh_authorized_keys": [k("two")],
                           "hashed_passwd": "$6$two$two", "lock_passwd": true}]})
        };
        ConfigDoc::from_value(v).unwrap()
    }

    /// A guest with generation 1 applied: files under the returned root, the fake kernel, the
    /// fake host name.
    fn world() -> (tempfile::TempDir, FakeNet, FakeHost) {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in ["etc/network/interfaces.d", "home/alice", "sbin"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(
            r.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:4242:4242::/home/alice:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            r.join("etc/shadow"),
            "root:*:1:0:99999:7:::\nalice:!:1:0:99999:7:::\n",
        )
        .unwrap();
        fs::write(r.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
        fs::write(r.join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        fs::write(
            r.join("etc/network/interfaces"),
            "source /etc/network/interfaces.d/*\n",
        )
        .unwrap();
        fs::write(r.join("sbin/ifup"), "").unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(r.join("home/alice"), Some(4242), Some(4242)).unwrap();
        }
        let link = |index, name: &str, mac: &str| crate::net::Link {
            index,
            name: name.into(),
            mac: Some(mac.parse().unwrap()),
            up: false,
            mtu: 1500,
            loopback: false,
            stats: None,
        };
        let mut net = FakeNet {
            links: vec![
                link(2, "ens3", "00:16:3e:00:00:09"),
                link(3, "eth1", "00:16:3e:00:00:0a"),
            ],
            ..Default::default()
        };
        // Something the agent did not configure, which must survive everything.
        net.addrs.push(crate::net::Addr {
            index: 2,
            addr: "10.9.9.9".parse().unwrap(),
            prefix: 32,
        });
        let mut host = FakeHost("image".into());
        apply_fake(&generation(1), r, &mut host, &mut net).unwrap();
        (root, net, host)
    }

    /// Issue 12: an apply is all or nothing per generation. A failure injected at every
    /// single step of generation 2 (each kernel operation, a file that cannot be written, the
    /// host name) leaves generation 1 exactly as it was (files, links, addresses, routes,
    /// host name, record), and the error tells the host so.
    #[test]
    fn a_failure_anywhere_leaves_the_previous_generation_whole() {
        let mut k = 0;
        loop {
            let (root, mut net, mut host) = world();
            let (files0, net0, host0) = (tree(root.path()), net.state(), host.0.clone());
            net.fail_at = Some(net.changes + k);
            match apply_fake(&generation(2), root.path(), &mut host, &mut net) {
                Ok(r) => {
                    assert!(r.applied);
                    assert!(k > 5, "only {k} kernel operations?");
                    eprintln!(
                        "generation 2 takes {k} kernel operations; a failure at each was undone"
                    );
                    break;
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(e.contains("injected failure"), "{e}");
                    assert!(
                        e.contains("generation 2 of instance i was not applied")
                            && e.contains("everything it changed was undone: generation 1 of instance i is in place"),
                        "{e}"
                    );
                    assert_eq!(
                        net.state(),
                        net0,
                        "kernel state after a failure at operation {k}: {e}"
                    );
                    assert_eq!(
                        tree(root.path()),
                        files0,
                        "files after a failure at operation {k}"
                    );
                    assert_eq!(host.0, host0);
                }
            }
            k += 1;
        }
        // A file that cannot be written (here: a directory stands where a networkd file goes),
        // after the live network, the host name and some files were changed.
        let (root, mut net, mut host) = world();
        let (files0, net0) = (tree(root.path()), net.state());
        fs::create_dir(
            root.path()
                .join("etc/systemd/network/10-xenplug-eth1.network"),
        )
        .unwrap();
        let files0_with_dir = tree(root.path());
        let e = format!(
            "{:#}",
            apply_fake(&generation(2), root.path(), &mut host, &mut net).unwrap_err()
        );
        assert!(e.contains("generation 1 of instance i is in place"), "{e}");
        assert_eq!(net.state(), net0);
        assert_eq!(host.0, "one");
        assert_eq!(tree(root.path()), files0_with_dir);
        assert_ne!(files0, files0_with_dir);
        // A user that cannot be configured, after everything else.
        let (root, mut net, mut host) = world();
        let (files0, net0) = (tree(root.path()), net.state());
        let mut bad = serde_json::to_value(generation(2)).unwrap();
        bad["users"][0]["name"] = json!("nobody-here");
        let bad = ConfigDoc::from_value(bad).unwrap();
        let e = format!(
            "{:#}",
            apply_fake(&bad, root.path(), &mut host, &mut net).unwrap_err()
        );
        assert!(
            e.contains("nobody-here") && e.contains("generation 1 of instance i is in place"),
            "{e}"
        );
        assert_eq!(
            (tree(root.path()), net.state(), host.0.as_str()),
            (files0, net0, "one")
        );
        assert_eq!(applied_generation(root.path()).unwrap().generation, Some(1));
    }

    /// Run every `up` line of an ifupdown rendering through `/bin/sh -c`, as ifupdown does,
    /// with `IFACE` set and a stub `ip` first in PATH; returns each `ip` invocation's argv and
    /// whether anything else ran (a file `p` the hostile names try to create).
    fn run_up_lines(ifu: &str, iface: &str) -> (Vec<Vec<String>>, bool) {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("ip.log");
        let stub = d.path().join("ip");
        fs::write(
            &stub,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\037' \"$a\" >> '{}'; done\necho >> '{}'\n",
                log.display(),
                log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
        for line in ifu.lines() {
            let Some(cmd) = line.trim_start().strip_prefix("up ") else {
                continue;
            };
            let st = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(d.path())
                .env("PATH", format!("{}:/usr/bin:/bin", d.path().display()))
                .env("IFACE", iface)
                .status()
                .unwrap();
            assert!(st.success(), "{cmd}");
        }
        let calls = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                l.split('\x1f')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        (calls, d.path().join("p").exists())
    }

    /// Issue 12: a name dom0 sends can never make ifupdown's shell run something. For each
    /// hostile `set-name`, either the document is refused, or the rendered `up` lines, run
    /// through `/bin/sh` as ifupdown runs them, call `ip` and nothing else.
    #[test]
    fn hostile_names_never_reach_ifupdowns_shell() {
        for bad in [
            // At most 15 bytes each, so the kernel's length limit alone does not stop them.
            "a;touch${IFS}p",
            "$(touch${IFS}p)",
            "`touch${IFS}p`",
            "a|touch${IFS}p",
            "a&&touch${IFS}p",
        ] {
            let v = json!({"instance-id": "i", "generation": 1, "network": {"version": 2,
                "ethernets": {"lan": {"match": {"macaddress": "00:16:3e:00:00:01"},
                    "set-name": bad, "addresses": ["192.0.2.10/24"],
                    "routes": [{"to": "default", "via": "192.0.2.1"}]}}}});
            let Ok(doc) = ConfigDoc::from_value(v) else {
                continue;
            };
            let n = doc.network.unwrap();
            let names = |_: &str, e: &Ethernet| e.set_name.clone();
            if let Ok(ifu) = render_ifupdown(&n, &names) {
                let (_, pwned) = run_up_lines(&ifu, bad);
                assert!(
                    !pwned,
                    "{bad:?} ran a command through ifupdown's shell:\n{ifu}"
                );
            }
            panic!("{bad:?} was accepted");
        }
    }

    /// Issue 12: the renderers check again what they write, whatever its source (a name can
    /// come from the kernel, not the document), and what they write means only what it says.
    #[test]
    fn renderers_refuse_hostile_names_and_values() {
        let n: NetworkConfig = serde_json::from_value(json!({"version": 2, "ethernets": {
            "lan": {"match": {"macaddress": "00:16:3e:00:00:01"},
                    "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
                    "routes": [{"to": "default", "via": "192.0.2.1", "metric": 5},
                               {"to": "198.51.100.0/24", "via": "192.0.2.254"},
                               {"to": "default", "via": "2001:db8::1"}],
                    "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.org"]}}}}))
        .unwrap();
        // A live name the guest's kernel reports (dom0 matched the NIC by MAC).
        for bad in [
            "a;reboot",
            "$(reboot)",
            "`reboot`",
            "a|b",
            "a b",
            "a\nauto evil",
        ] {
            let e = render_ifupdown(&n, &|_, _| Some(bad.to_string())).unwrap_err();
            assert!(format!("{e:#}").contains("network.ethernets.lan"), "{e:#}");
        }
        // networkd: a name that bypassed the document's validation.
        let mut e = n.ethernets["lan"].clone();
        for bad in ["a;reboot", "eth*", "a b", "a\n[Network]"] {
            e.set_name = Some(bad.into());
            assert!(render_networkd("lan", &e).is_err(), "{bad:?}");
        }
        e.set_name = None;
        e.nameservers.as_mut().unwrap().search = vec!["example.org\nDNS=6.6.6.6".into()];
        assert!(render_networkd("lan", &e).is_err());
        // resolv.conf and hosts.
        let ip: IpAddr = "192.0.2.53".parse().unwrap();
        for bad in ["example.org\nnameserver 6.6.6.6", "a b", "#x", "x;y"] {
            assert!(
                render_resolv_conf(&[ip], &[bad.to_string()]).is_err(),
                "{bad:?}"
            );
            assert!(render_hosts_line(&[bad.to_string()]).is_err(), "{bad:?}");
        }
        // What the good document renders to, run as ifupdown runs it: exactly these `ip` calls.
        let ifu = render_ifupdown(&n, &|_, _| Some("eth0".into())).unwrap();
        let (calls, pwned) = run_up_lines(&ifu, "eth0");
        assert!(!pwned);
        let want: Vec<Vec<String>> = [
            "route replace default via 192.0.2.1 metric 5 dev eth0",
            "route replace 198.51.100.0/24 via 192.0.2.254 dev eth0",
            "route replace default via 2001:db8::1 dev eth0",
        ]
        .iter()
        .map(|c| c.split(' ').map(str::to_string).collect())
        .collect();
        assert_eq!(calls, want, "{ifu}");
        // The networkd file: every line a section, a comment or Key=Value with a value that is
        // one of the document's values.
        let (net, _) = render_networkd("lan", &n.ethernets["lan"]).unwrap();
        for line in net.lines() {
            assert!(
                line.is_empty()
                    || line.starts_with('#')
                    || (line.starts_with('[') && line.ends_with(']'))
                    || line.split_once('=').is_some_and(|(k, v)| {
                        k.chars().all(|c| c.is_ascii_alphanumeric())
                            && !v.contains(['*', '?', '[', '"', '\'', '\\', '%', '$'])
                    }),
                "{line:?} in\n{net}"
            );
        }
        let resolv = render_resolv_conf(&[ip], &["example.org".into()]).unwrap();
        assert_eq!(
            resolv,
            "# Written by xenplug-agent.\nsearch example.org\nnameserver 192.0.2.53\n"
        );
    }
}
