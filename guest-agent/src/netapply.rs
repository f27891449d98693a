//! The network part of a generation: live changes to physical NICs through netlink (rename,
//! MTU, up, addresses, routes — what the previous generation configured and this one does not is
//! taken back first), then the files of the guest's network manager ([`crate::render`]), the
//! agent's stale files removed, and `/etc/resolv.conf` when it is a plain file and the manager
//! does not own it. Everything goes through the generation's transaction and the
//! [`NetJournal`], so a failure anywhere restores what was there.

use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xenplug_channel::config::{Cidr, Ethernet, Interface, MacAddr, NetworkConfig, Route};

use crate::apply::Run;
use crate::fsutil::under;
use crate::journal::{self, AddrRec, LinkRec, NetRec, Record, Shared};
use crate::net::{Addr, Link, NetOps};
use crate::render::{self, Names, Renderer};

/// A route the agent configured: destination (`default` spelled out), gateway, metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct LiveRoute(pub Cidr, pub IpAddr, pub Option<u32>);

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
pub(crate) struct LiveRec {
    pub name: String,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    pub addresses: Vec<Cidr>,
    #[serde(default)]
    pub routes: Vec<LiveRoute>,
}

/// The driver of a NIC, as sysfs names it (`/sys/class/net/<name>/device/driver`).
fn link_driver(name: &str) -> Option<String> {
    let p = std::fs::read_link(format!("/sys/class/net/{name}/device/driver")).ok()?;
    p.file_name().map(|f| f.to_string_lossy().into_owned())
}

fn matches_link(id: &str, e: &Ethernet, l: &Link) -> bool {
    !l.loopback
        && e.matches(
            id,
            &l.name,
            l.mac.map(MacAddr),
            link_driver(&l.name).as_deref(),
        )
}

/// How long an apply waits for systemd-udevd to have handled the NICs ([`wait_for_udev`]).
const UDEV_WAIT: Duration = Duration::from_secs(30);

/// Wait until systemd-udevd has handled every NIC (a link with a device behind it in sysfs):
/// its database entry `/run/udev/data/n<ifindex>` exists. Until then udev may still rename the
/// link (`eth0` → `enX0`), which fails once the agent has set it up, and systemd-networkd leaves
/// a link alone until udev has handled it: seen on Debian 12 guests booting slowly (three at once
/// under TCG), where the agent's live addresses and routes were in place under the kernel's
/// name but the DNS settings in its networkd file never reached systemd-resolved. Only where
/// udevd runs (`/run/udev/control` exists, under `root`); bounded by [`UDEV_WAIT`], after which
/// the apply goes on and says which links udev had not handled.
fn wait_for_udev(
    root: &Path,
    net: &mut dyn NetOps,
    limit: Duration,
    changes: &mut Vec<String>,
) -> Result<()> {
    if !under(root, "/run/udev/control").exists() {
        return Ok(());
    }
    let t0 = Instant::now();
    let mut pause = Duration::from_millis(5);
    let mut said = false;
    loop {
        let pending: Vec<String> = net
            .links()?
            .into_iter()
            .filter(|l| {
                !l.loopback
                    && under(root, &format!("/sys/class/net/{}/device", l.name)).exists()
                    && !under(root, &format!("/run/udev/data/n{}", l.index)).exists()
            })
            .map(|l| l.name)
            .collect();
        if pending.is_empty() {
            if said {
                changes.push(format!(
                    "waited {:.1} s for udev to handle the network links",
                    t0.elapsed().as_secs_f64()
                ));
            }
            return Ok(());
        }
        if !said {
            eprintln!("xenplug-agent: event=udev-wait links={}", pending.join(","));
            said = true;
        }
        if t0.elapsed() >= limit {
            changes.push(format!(
                "udev had not handled {} after {} s; configuring them anyway",
                pending.join(", "),
                limit.as_secs()
            ));
            return Ok(());
        }
        std::thread::sleep(pause.min(limit.saturating_sub(t0.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The ethernets the agent configures live: the ones that are not bond or bridge members (a
/// member's addresses belong to its controller, which the network manager creates).
fn live_entries(n: &NetworkConfig) -> impl Iterator<Item = (&String, &Ethernet)> {
    n.ethernets
        .iter()
        .filter(|(id, _)| n.controller_of(id).is_none())
}

/// Returns what is now configured live (the previous record when live changes are off).
pub(crate) fn apply_network(
    n: &NetworkConfig,
    old_live: &[LiveRec],
    renderer: Option<Renderer>,
    run: &mut Run<'_, '_>,
) -> Result<Vec<LiveRec>> {
    let mut names = Names::default();
    for (id, e) in &n.ethernets {
        if let Some(s) = e.static_name(id) {
            if !s.contains(['*', '?']) {
                names.ethernets.insert(id.clone(), s.to_string());
            }
        }
    }
    let mut live = old_live.to_vec();
    if let Some(net) = run.net.as_mut() {
        // Links udev has yet to name are left to it first.
        if !n.is_empty() {
            wait_for_udev(run.root, net, UDEV_WAIT, &mut run.changes)?;
        }
        // Take back first: deleting an IPv4 primary address also deletes the secondaries of
        // its subnet, which could include one about to be added.
        let links = net.links()?;
        let wanted: Vec<LiveRec> = live_entries(n)
            .filter_map(|(id, e)| {
                let l = links.iter().find(|l| matches_link(id, e, l))?;
                Some(LiveRec {
                    name: l.name.clone(),
                    mac: l.mac.map(MacAddr),
                    addresses: e.addresses.clone(),
                    routes: e.ip().routes.iter().filter_map(route_key).collect(),
                })
            })
            .collect();
        take_back(old_live, &wanted, net, &mut run.changes)?;
        live.clear();
        for (id, e) in &n.ethernets {
            let member = n.controller_of(id).is_some();
            let rec = apply_live(id, e, member, net, &mut run.changes)
                .with_context(|| format!("network.ethernets.{id}"))?;
            if let Some((name, rec)) = rec {
                names.ethernets.insert(id.clone(), name);
                live.extend(rec);
            }
        }
    }
    let nothing_before = old_live.is_empty() && !any_owned_file(run.root);
    if n.is_empty() && nothing_before {
        // Nothing asked now or before: leave the guest's own network files alone.
        return Ok(live);
    }
    let files = match (renderer, n.is_empty()) {
        (_, true) => Vec::new(),
        (Some(r), false) => render::render(r, n, &names)?,
        (None, false) => bail!(
            "network: the guest has none of systemd-networkd, ifupdown and NetworkManager \
             (set network-renderer in the agent's configuration)"
        ),
    };
    let mut keep = Vec::new();
    for f in &files {
        let p = under(run.root, &f.path);
        run.write_changed(&p, &f.content, f.mode)?;
        keep.push(f.path.clone());
    }
    if renderer == Some(Renderer::Ifupdown) && !n.is_empty() {
        ensure_ifupdown_source(run)?;
    }
    remove_stale(&keep, run)?;
    if renderer != Some(Renderer::NetworkManager) {
        write_resolv_conf(n, run)?;
    }
    Ok(live)
}

fn any_owned_file(root: &Path) -> bool {
    render::OWNED_DIRS.iter().any(|d| {
        fs::read_dir(under(root, d))
            .map(|rd| {
                rd.flatten()
                    .any(|e| render::is_owned(&format!("{d}/{}", e.file_name().to_string_lossy())))
            })
            .unwrap_or(false)
    })
}

/// ifupdown only reads the fragment when `/etc/network/interfaces` sources it.
fn ensure_ifupdown_source(run: &mut Run<'_, '_>) -> Result<()> {
    let p = under(run.root, "/etc/network/interfaces");
    let text = fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    let sourced = text.lines().map(str::trim).any(|l| {
        l == "source /etc/network/interfaces.d/*"
            || l == format!("source {}", render::ifupdown::FILE)
            || l == "source-directory /etc/network/interfaces.d"
            || l == "source-directory interfaces.d"
            || l == "source interfaces.d/*"
    });
    if !sourced {
        let mut new = text.clone();
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(&format!(
            "# Added by xenplug-agent.\nsource {}\n",
            render::ifupdown::FILE
        ));
        let mode = crate::fsutil::mode_owner(&p).map(|m| m.0).unwrap_or(0o644);
        run.write_changed(&p, &new, mode)?;
    }
    Ok(())
}

fn remove_stale(keep: &[String], run: &mut Run<'_, '_>) -> Result<()> {
    for d in render::OWNED_DIRS {
        let dir = under(run.root, d);
        let Ok(rd) = fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for f in names {
            let path = format!("{d}/{f}");
            if render::is_owned(&path) && !keep.contains(&path) && run.txn.remove(&dir.join(&f))? {
                run.changes.push(format!("removed {path}"));
            }
        }
    }
    Ok(())
}

/// DNS for guests without a resolver that reads the network files: a plain
/// `/etc/resolv.conf` (a symlink, e.g. to resolved's stub, is left alone).
fn write_resolv_conf(n: &NetworkConfig, run: &mut Run<'_, '_>) -> Result<()> {
    let resolv = under(run.root, "/etc/resolv.conf");
    let is_plain = fs::symlink_metadata(&resolv)
        .map(|m| m.file_type().is_file())
        .unwrap_or(true);
    let mut servers: Vec<IpAddr> = Vec::new();
    let mut search: Vec<String> = Vec::new();
    let global = n.nameservers.clone().unwrap_or_default();
    for ns in
        std::iter::once(global).chain(n.entries().into_iter().map(|(_, _, ip)| ip.nameservers))
    {
        for a in ns.addresses {
            if !servers.contains(&a) {
                servers.push(a);
            }
        }
        for s in ns.search {
            if !search.contains(&s) {
                search.push(s);
            }
        }
    }
    if is_plain && (!servers.is_empty() || !search.is_empty()) {
        let s = crate::apply::render_resolv_conf(&servers, &search)?;
        run.write_changed(&resolv, &s, 0o644)?;
    }
    Ok(())
}

/// A route as the record keeps it (destination with `default` spelled out); on-link routes
/// (no gateway) are not recorded.
fn route_key(r: &Route) -> Option<LiveRoute> {
    r.via.map(|v| LiveRoute(r.destination(), v, r.metric))
}

/// The link a record names: by MAC first, then by name.
pub(crate) fn find_rec_link<'l>(links: &'l [Link], o: &LiveRec) -> Option<&'l Link> {
    links
        .iter()
        .find(|l| o.mac.is_some() && l.mac.map(MacAddr) == o.mac)
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
            .find(|n| n.name == link.name || (n.mac.is_some() && n.mac == link.mac.map(MacAddr)));
        for LiveRoute(dst, via, _) in &o.routes {
            if !cur.is_some_and(|c| c.routes.iter().any(|r| r.0 == *dst && r.1 == *via)) {
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

/// Live changes for one entry; returns the kernel name of the matched NIC and, unless it is a
/// bond or bridge member (renamed and brought up only), what was configured on it. None when
/// no interface matches now: the persisted files still apply when it appears.
fn apply_live(
    id: &str,
    e: &Ethernet,
    member: bool,
    net: &mut dyn NetOps,
    changes: &mut Vec<String>,
) -> Result<Option<(String, Option<LiveRec>)>> {
    let links = net.links()?;
    let Some(link) = links.iter().find(|l| matches_link(id, e, l)).cloned() else {
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
    if member {
        // The network manager enslaves it; addresses belong to the controller.
        return Ok(Some((name, None)));
    }
    let ip = e.ip();
    if let Some(mtu) = ip.mtu {
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
    for a in &ip.addresses {
        if !have
            .iter()
            .any(|h| h.index == link.index && h.addr == a.addr && h.prefix == a.prefix)
        {
            net.add_address(link.index, a.addr, a.prefix)?;
            changes.push(format!("address {a} on {name}"));
        }
    }
    let mut rec_routes = Vec::new();
    for r in &ip.routes {
        let dst = r.destination();
        net.replace_route(link.index, dst.addr, dst.prefix, r.via, r.metric)?;
        match r.via {
            Some(v) => changes.push(format!("route {dst} via {v} on {name}")),
            None => changes.push(format!("route {dst} on {name}")),
        }
        rec_routes.extend(route_key(r));
    }
    Ok(Some((
        name.clone(),
        Some(LiveRec {
            name,
            mac: link.mac.map(MacAddr),
            addresses: ip.addresses.clone(),
            routes: rec_routes,
        }),
    )))
}

/// The live-network side of a generation: passes every operation to the real [`NetOps`] and
/// remembers, before the first change, the links and addresses as they were, which links it
/// changed, which addresses it added and which routes it put in, so [`NetJournal::restore`] can
/// bring the links back to that state. With a durable journal ([`crate::journal`]), each of
/// those is recorded there too before the change is made, so a recovery after a kill can
/// rebuild this journal ([`NetJournal::resume`]) and restore the same way.
pub(crate) struct NetJournal<'n> {
    pub(crate) inner: &'n mut dyn NetOps,
    links0: Option<Vec<Link>>,
    addrs0: Vec<Addr>,
    touched: BTreeSet<u32>,
    added: Vec<(u32, IpAddr, u8)>,
    routes: Vec<(u32, IpAddr, u8, Option<IpAddr>)>,
    journal: Option<Shared>,
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
    pub(crate) fn new(inner: &'n mut dyn NetOps) -> Self {
        NetJournal {
            inner,
            links0: None,
            addrs0: Vec::new(),
            touched: BTreeSet::new(),
            added: Vec::new(),
            routes: Vec::new(),
            journal: None,
        }
    }

    /// Also record every change in `journal` before making it.
    pub(crate) fn journaled(mut self, journal: Option<Shared>) -> Self {
        self.journal = journal;
        self
    }

    /// The journal of an interrupted apply, rebuilt from its records: the links and addresses
    /// before (`net-before`) and the changes (`net`, in the order they were recorded).
    pub(crate) fn resume(
        inner: &'n mut dyn NetOps,
        links: &[LinkRec],
        addrs: &[AddrRec],
        changes: &[(u32, NetRec)],
    ) -> Self {
        let mut j = NetJournal::new(inner);
        j.links0 = Some(
            links
                .iter()
                .map(|l| Link {
                    index: l.index,
                    name: l.name.clone(),
                    mac: None,
                    mtu: l.mtu,
                    up: l.up,
                    loopback: false,
                    master: None,
                    kind: None,
                    stats: None,
                    alias: None,
                })
                .collect(),
        );
        j.addrs0 = addrs
            .iter()
            .map(|a| Addr {
                index: a.index,
                addr: a.addr,
                prefix: a.prefix,
                secondary: false,
            })
            .collect();
        for (index, c) in changes {
            j.touched.insert(*index);
            match c {
                NetRec::Touch => {}
                NetRec::AddAddress { addr, prefix } => j.added.push((*index, *addr, *prefix)),
                NetRec::Route { dst, prefix, via } => j.routes.push((*index, *dst, *prefix, *via)),
            }
        }
        j
    }

    fn before_change(&mut self, index: u32, change: NetRec) -> Result<()> {
        if self.links0.is_none() {
            let links = self.inner.links()?;
            let addrs = self.inner.addresses()?;
            journal::log(
                self.journal.as_ref(),
                Record::NetBefore {
                    links: links
                        .iter()
                        .map(|l| LinkRec {
                            index: l.index,
                            name: l.name.clone(),
                            mtu: l.mtu,
                            up: l.up,
                        })
                        .collect(),
                    addrs: addrs
                        .iter()
                        .map(|a| AddrRec {
                            index: a.index,
                            addr: a.addr,
                            prefix: a.prefix,
                        })
                        .collect(),
                },
            )?;
            self.links0 = Some(links);
            self.addrs0 = addrs;
        }
        journal::log(self.journal.as_ref(), Record::Net { index, change })?;
        self.touched.insert(index);
        Ok(())
    }

    /// Undo: the routes put in go, the links get their names, MTUs, addresses and up state
    /// back, and the previous generation's routes (`old`) are put back on them (the kernel
    /// drops IPv4 routes of a link that goes down or loses the address of the gateway's
    /// subnet). Returns what could not be undone.
    pub(crate) fn restore(&mut self, old: &[LiveRec]) -> Vec<String> {
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
            let r = net.del_route(*index, *dst, *prefix, *via);
            err(
                &mut errors,
                format!("remove route {dst}/{prefix} via {via:?}"),
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
        self.before_change(index, NetRec::Touch)?;
        self.inner.rename(index, name)
    }
    fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
        self.before_change(index, NetRec::Touch)?;
        self.inner.set_up(index, up)
    }
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.before_change(index, NetRec::Touch)?;
        self.inner.set_mtu(index, mtu)
    }
    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        // The snapshot is taken by the first change: make sure it exists before asking it.
        if self.links0.is_none() {
            self.before_change(index, NetRec::Touch)?;
        }
        let existed = self
            .addrs0
            .iter()
            .any(|a| a.index == index && a.addr == addr && a.prefix == prefix);
        let change = if existed {
            NetRec::Touch
        } else {
            NetRec::AddAddress { addr, prefix }
        };
        self.before_change(index, change)?;
        self.inner.add_address(index, addr, prefix)?;
        if !existed {
            self.added.push((index, addr, prefix));
        }
        Ok(())
    }
    fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        self.before_change(index, NetRec::Touch)?;
        self.inner.del_address(index, addr, prefix)
    }
    fn del_route(
        &mut self,
        index: u32,
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
    ) -> Result<()> {
        self.before_change(index, NetRec::Touch)?;
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
        self.before_change(index, NetRec::Route { dst, prefix, via })?;
        // Recorded before the call: a replace the kernel refused part way leaves nothing, and
        // removing a route that is not there is fine.
        self.routes.push((index, dst, prefix, via));
        self.inner.replace_route(index, dst, prefix, via, metric)
    }
}
