//! The vif scenarios: `vif-bridge`, `vif-route`, `vif-nat` (with DHCP through a real dnsmasq)
//! and `vif-openvswitch` (a real ovsdb-server and ovs-vswitchd, userspace datapath), in a
//! throwaway network namespace.
//!
//! A round is what libxl and netback do for one NIC of a domain that fails to start: netback's
//! `vif5.0` (a veth), the backend directory (`mac`, `ip`, `bridge`, `handle`, …), `online`
//! (killed), then `offline`, then the vif deleted (netback) and the domain's directories
//! removed. The audit, with the command-line tools as oracles: links (name, kind, master, up,
//! MTU), bridge ports, addresses, routes (both families, every table), proxy neighbours, the
//! nftables ruleset, tc qdiscs, Open vSwitch ports and interface rows, dnsmasq host lines, lock
//! and state files, xenstore nodes.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{put, Scenario, Snapshot};
use crate::world::{self, output, Base};

/// Which vif script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// vif-bridge on `xenbr0`.
    Bridge,
    /// vif-route through `eth0`.
    Route,
    /// vif-nat with DHCP (dnsmasq) and masquerading.
    Nat,
    /// vif-openvswitch on `ovsbr0`, VLAN 10.
    Ovs,
}

impl Kind {
    fn script(self) -> &'static str {
        match self {
            Kind::Bridge => "vif-bridge",
            Kind::Route => "vif-route",
            Kind::Nat => "vif-nat",
            Kind::Ovs => "vif-openvswitch",
        }
    }
}

const DOMID: u32 = 5;
const VIF: &str = "vif5.0";
const BACKEND: &str = "backend/vif/5/0";
const VM: &str = "/vm/00000000-0000-0000-0000-00000000c4a5";

/// A vif world.
pub struct Vif {
    kind: Kind,
    base: Base,
    ns: String,
    /// Long-lived children (dnsmasq, the OVS daemons): not a round's leftovers.
    keep: Vec<i32>,
    dnsmasq: Option<Child>,
    ovs_dir: Option<PathBuf>,
    hosts: PathBuf,
    pidfile: PathBuf,
    /// netback's vif of the current round, by interface index (it may have been renamed).
    vif_index: Option<u64>,
    xs_baseline: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for Vif {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vif")
            .field("kind", &self.kind)
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

fn run(words: &[&str]) -> Result<String, String> {
    world::sh(words)
}

fn json(words: &[&str]) -> Result<Value, String> {
    let out = run(words)?;
    if out.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&out).map_err(|e| format!("{words:?}: {e}"))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Vif {
    /// The world for `kind`, with `binary` as the scripts. Call in the scenario's own process,
    /// before any thread starts.
    pub fn new(kind: Kind, binary: &Path) -> Result<Vif, String> {
        let ns = format!("xpchaos-{}-{}", std::process::id(), kind.script());
        run(&["ip", "netns", "add", &ns])?;
        let f = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| e.to_string());
        let entered = f.and_then(|f| {
            world::private_mounts()?;
            world::private_hotplug_dirs()?;
            world::subreaper()?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))?;
            // The namespace's own sysfs (/sys/class/net).
            nix::mount::mount(
                Some("sysfs"),
                "/sys",
                Some("sysfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| format!("mount sysfs: {e}"))
        });
        if let Err(e) = entered {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
            return Err(e);
        }
        let base = Base::new(binary, &[kind.script()], "")?;
        base.backend_dir("vif")?;
        let hosts = base.dir.path().join("dhcp-hosts");
        let pidfile = base.dir.path().join("dnsmasq.pid");
        let mut v = Vif {
            kind,
            base,
            ns,
            keep: Vec::new(),
            dnsmasq: None,
            ovs_dir: None,
            hosts,
            pidfile,
            vif_index: None,
            xs_baseline: Default::default(),
        };
        v.fixtures()?;
        v.keep = world::children();
        v.xs_baseline = v
            .base
            .daemon
            .store()
            .dump("/")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        Ok(v)
    }

    /// The host side: `lo`, the bridge, the uplink `eth0` (with addresses, vif-route's and
    /// vif-nat's `netdev`), and per script dnsmasq or Open vSwitch.
    fn fixtures(&mut self) -> Result<(), String> {
        for c in [
            &["ip", "link", "set", "lo", "up"][..],
            &["ip", "link", "add", "xenbr0", "type", "bridge"],
            &["ip", "link", "set", "xenbr0", "up"],
            &[
                "ip",
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0-peer",
            ],
            &["ip", "link", "set", "eth0", "up"],
            &["ip", "link", "set", "eth0-peer", "up"],
            &["ip", "addr", "add", "10.99.9.1/24", "dev", "eth0"],
            &[
                "ip",
                "addr",
                "add",
                "2001:db8:9::1/64",
                "dev",
                "eth0",
                "nodad",
            ],
        ] {
            run(c)?;
        }
        // The kernel adds the local routes of eth0's addresses on its own time (IPv6: once the
        // link is ready, even with nodad). A baseline taken before that differs from every
        // later snapshot: wait for both.
        let ready = || {
            run(&["ip", "route", "show", "table", "local", "dev", "eth0"])
                .is_ok_and(|r| r.contains("10.99.9.1"))
                && run(&["ip", "-6", "route", "show", "table", "local", "dev", "eth0"])
                    .is_ok_and(|r| r.contains("2001:db8:9::1"))
        };
        if !world::wait_for(Duration::from_secs(10), ready) {
            return Err("eth0's local routes never appeared".into());
        }
        std::fs::write(&self.hosts, "").map_err(|e| e.to_string())?;
        match self.kind {
            Kind::Nat => {
                let child = Command::new("dnsmasq")
                    .args([
                        "--keep-in-foreground",
                        "--conf-file=/dev/null",
                        "--port=0",
                        "--bind-interfaces",
                        "--interface=lo",
                    ])
                    .arg(format!("--pid-file={}", self.pidfile.display()))
                    .arg(format!("--dhcp-hostsfile={}", self.hosts.display()))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("dnsmasq: {e}"))?;
                self.dnsmasq = Some(child);
                let pidfile = self.pidfile.clone();
                if !world::wait_for(Duration::from_secs(10), || {
                    std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.trim().is_empty())
                }) {
                    return Err("dnsmasq wrote no pid file".into());
                }
            }
            Kind::Ovs => self.start_ovs()?,
            _ => {}
        }
        Ok(())
    }

    fn ovs_env<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        let d = self.ovs_dir.clone().unwrap_or_default();
        c.env("OVS_RUNDIR", &d)
            .env("OVS_DBDIR", &d)
            .env("OVS_LOGDIR", &d)
            .env("OVS_SYSCONFDIR", &d)
    }

    fn vsctl(&self, args: &[&str]) -> Result<String, String> {
        output(
            self.ovs_env(&mut Command::new("ovs-vsctl"))
                .arg("--timeout=10")
                .args(args),
        )
    }

    fn start_ovs(&mut self) -> Result<(), String> {
        let d = self.base.dir.path().join("ovs");
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        self.ovs_dir = Some(d.clone());
        let ds = d.display().to_string();
        run(&[
            "ovsdb-tool",
            "create",
            &format!("{ds}/conf.db"),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ])?;
        output(self.ovs_env(&mut Command::new("ovsdb-server")).args([
            format!("{ds}/conf.db"),
            format!("--remote=punix:{ds}/db.sock"),
            format!("--pidfile={ds}/ovsdb-server.pid"),
            format!("--log-file={ds}/ovsdb-server.log"),
            "--detach".into(),
        ]))?;
        self.vsctl(&["--no-wait", "init"])?;
        output(self.ovs_env(&mut Command::new("ovs-vswitchd")).args([
            format!("unix:{ds}/db.sock"),
            format!("--pidfile={ds}/ovs-vswitchd.pid"),
            format!("--log-file={ds}/ovs-vswitchd.log"),
            "--detach".into(),
        ]))?;
        self.vsctl(&[
            "add-br",
            "ovsbr0",
            "--",
            "set",
            "bridge",
            "ovsbr0",
            "datapath_type=netdev",
        ])?;
        run(&["ip", "link", "set", "ovsbr0", "up"]).map(drop)
    }

    fn command(&self, action: &str) -> Command {
        let script = self.kind.script();
        let mut c = Command::new(self.base.scripts.join(script));
        c.arg0(format!("/etc/xen/scripts/{script}"));
        c.args([action, "type_if=vif"]);
        self.base.env(&mut c, BACKEND, "vif");
        c.env("script", format!("/etc/xen/scripts/{script}"))
            .env("vif", VIF);
        match self.kind {
            Kind::Route => {
                c.env("netdev", "eth0");
            }
            Kind::Nat => {
                c.env("netdev", "eth0")
                    .env("dhcp", "yes")
                    .env("dhcp_hostsfile", &self.hosts)
                    .env("dnsmasq_pidfile", &self.pidfile);
            }
            Kind::Ovs => {
                self.ovs_env(&mut c);
            }
            Kind::Bridge => {}
        }
        c
    }

    fn links(&self, snap: &mut Snapshot) -> Result<(), String> {
        for l in json(&["ip", "-j", "-d", "link", "show"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            let flags: Vec<String> = l["flags"].as_array().into_iter().flatten().map(s).collect();
            put(
                snap,
                "link",
                format!(
                    "{} kind={} master={} up={} mtu={}",
                    s(&l["ifname"]),
                    s(&l["linkinfo"]["info_kind"]),
                    s(&l["master"]),
                    flags.iter().any(|f| f == "UP"),
                    s(&l["mtu"])
                ),
            );
        }
        for p in json(&["bridge", "-j", "link", "show"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            put(
                snap,
                "bridge port",
                format!("{} on {}", s(&p["ifname"]), s(&p["master"])),
            );
        }
        for l in json(&["ip", "-j", "addr", "show"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            for a in l["addr_info"].as_array().into_iter().flatten() {
                // Link-local addresses come and go with their link.
                if s(&a["scope"]) == "link" && s(&a["family"]) == "inet6" {
                    continue;
                }
                put(
                    snap,
                    "address",
                    format!(
                        "{} {}/{}",
                        s(&l["ifname"]),
                        s(&a["local"]),
                        s(&a["prefixlen"])
                    ),
                );
            }
        }
        for fam in ["-4", "-6"] {
            for r in json(&["ip", "-j", fam, "route", "show", "table", "all"])?
                .as_array()
                .into_iter()
                .flatten()
            {
                if s(&r["dev"]).is_empty() && s(&r["type"]).is_empty() {
                    continue;
                }
                // fe80::/64 and multicast routes follow the links' addresses.
                let dst = s(&r["dst"]);
                if dst.starts_with("fe80:") || dst.starts_with("ff00:") || dst.starts_with("ff02:")
                {
                    continue;
                }
                put(
                    snap,
                    "route",
                    format!(
                        "{} {} dev {} src {} table {} metric {}",
                        s(&r["type"]),
                        dst,
                        s(&r["dev"]),
                        s(&r["prefsrc"]),
                        s(&r["table"]),
                        s(&r["metric"])
                    ),
                );
            }
            for n in json(&["ip", "-j", fam, "neigh", "show", "proxy"])?
                .as_array()
                .into_iter()
                .flatten()
            {
                put(
                    snap,
                    "proxy neighbour",
                    format!("{} dev {}", s(&n["dst"]), s(&n["dev"])),
                );
            }
        }
        for q in json(&["tc", "-j", "qdisc", "show"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            let kind = s(&q["kind"]);
            // Every link has its default qdisc; only what a script adds counts.
            if matches!(
                kind.as_str(),
                "noqueue" | "noop" | "pfifo_fast" | "mq" | "fq_codel"
            ) {
                continue;
            }
            put(
                snap,
                "tc qdisc",
                format!("{kind} dev {} parent {}", s(&q["dev"]), s(&q["parent"])),
            );
        }
        Ok(())
    }

    fn nft(&self, snap: &mut Snapshot) -> Result<(), String> {
        nft_items(&run(&["nft", "list", "ruleset"])?, snap);
        Ok(())
    }
}

/// The set of `netdev xenplug` shared by every vif (`vif-scripts/src/firewall.rs`,
/// `CLAIMED_SET`): made with the table and kept, like it; its elements are audited.
const SHARED_SET: &str = "ll6-claimed";

/// The items of `nft list ruleset`'s text: chains, their rules, sets (but the shared one) and
/// every set's elements. The scripts' tables (`netdev xenplug`, `ip xenplug-nat`) and the shared
/// set stay, empty, once made; what a vif adds is chains, rules, its own set of link-local
/// addresses and claims (elements).
fn nft_items(text: &str, snap: &mut Snapshot) {
    let mut table = String::new();
    let mut chain: Option<String> = None;
    let mut set: Option<String> = None;
    // Inside a set's `elements = { …` that spans lines.
    let mut elements = false;
    let put_elements = |snap: &mut Snapshot, table: &str, set: &str, list: &str| {
        for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            put(snap, "nft set element", format!("{table} {set}: {e}"));
        }
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(name) = &set {
            if elements {
                let done = line.ends_with('}');
                put_elements(snap, &table, name, line.trim_end_matches('}'));
                elements = !done;
            } else if let Some(rest) = line.strip_prefix("elements = {") {
                let done = rest.ends_with('}');
                put_elements(snap, &table, name, rest.trim_end_matches('}'));
                elements = !done;
            } else if line == "}" {
                set = None;
            }
            // `typeof`, `size`, `flags`, … are the set's declaration: it is counted by name.
        } else if let Some(t) = line.strip_prefix("table ") {
            table = t.trim_end_matches(" {").to_string();
        } else if let Some(c) = line.strip_prefix("chain ") {
            let c = c.trim_end_matches(" {").to_string();
            put(snap, "nft chain", format!("{table} {c}"));
            chain = Some(c);
        } else if let Some(n) = line.strip_prefix("set ") {
            let n = n.trim_end_matches(" {").to_string();
            if n != SHARED_SET {
                put(snap, "nft set", format!("{table} {n}"));
            }
            set = Some(n);
        } else if line == "}" {
            // The end of a chain, or of the table.
            chain = None;
        } else {
            let c = chain.as_deref().unwrap_or("");
            put(snap, "nft rule", format!("{table} {c}: {line}"));
        }
    }
}

impl Drop for Vif {
    fn drop(&mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if let Some(d) = &self.ovs_dir {
            for p in ["ovs-vswitchd.pid", "ovsdb-server.pid"] {
                if let Some(pid) = std::fs::read_to_string(d.join(p))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
    }
}

impl Scenario for Vif {
    fn name(&self) -> String {
        self.kind.script().into()
    }

    fn snapshot(&mut self) -> Result<Snapshot, String> {
        let mut snap = Snapshot::new();
        self.links(&mut snap)?;
        self.nft(&mut snap)?;
        if self.kind == Kind::Ovs {
            for p in self.vsctl(&["list-ports", "ovsbr0"])?.lines() {
                put(&mut snap, "ovs port", format!("{p} on ovsbr0"));
            }
            for row in self
                .vsctl(&["--bare", "--columns=name,external_ids", "list", "Interface"])?
                .split("\n\n")
            {
                let row = row.split_whitespace().collect::<Vec<_>>().join(" ");
                if !row.is_empty() {
                    put(&mut snap, "ovs interface", row);
                }
            }
        }
        for l in std::fs::read_to_string(&self.hosts)
            .unwrap_or_default()
            .lines()
        {
            put(&mut snap, "dnsmasq host line", l);
        }
        world::hotplug_files(&mut snap);
        self.base.xenstore(&mut snap);
        Ok(snap)
    }

    fn setup(&mut self, _round: u32) -> Result<(), String> {
        // netback's vif (the peer stands for the guest's end).
        run(&[
            "ip",
            "link",
            "add",
            VIF,
            "type",
            "veth",
            "peer",
            "name",
            "vif5.0-guest",
        ])?;
        let l = json(&["ip", "-j", "link", "show", "dev", VIF])?;
        self.vif_index = l[0]["ifindex"].as_u64();
        let b = format!("/local/domain/0/{BACKEND}");
        let (bridge, ip) = match self.kind {
            Kind::Bridge => ("xenbr0", "10.1.0.5 2001:db8::5"),
            Kind::Route => ("", "10.1.0.5 2001:db8::5"),
            Kind::Nat => ("", "10.1.0.5"),
            Kind::Ovs => ("ovsbr0.10", "10.1.0.5 2001:db8::5"),
        };
        let script = format!("/etc/xen/scripts/{}", self.kind.script());
        let mut pairs: Vec<(String, String)> = [
            ("frontend", format!("/local/domain/{DOMID}/device/vif/0")),
            ("frontend-id", DOMID.to_string()),
            ("online", "1".into()),
            ("state", "2".into()),
            ("script", script),
            ("mac", "00:16:3e:c4:a5:05".into()),
            ("handle", "0".into()),
            ("type", "vif".into()),
            ("ip", ip.into()),
            ("hotplug-status", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{b}/{k}"), v))
        .collect();
        if !bridge.is_empty() {
            pairs.push((format!("{b}/bridge"), bridge.into()));
        }
        if let Ok(name) = std::env::var("CHAOS_VIFNAME") {
            pairs.push((format!("{b}/vifname"), name));
        }
        for (k, v) in [
            (format!("/local/domain/{DOMID}/vm"), VM.to_string()),
            (format!("/local/domain/{DOMID}/name"), "chaos".into()),
            (
                format!("/local/domain/{DOMID}/device/vif/0/state"),
                "1".into(),
            ),
            (
                format!("/local/domain/{DOMID}/device/vif/0/mac"),
                "00:16:3e:c4:a5:05".into(),
            ),
            (format!("{VM}/name"), "chaos".into()),
            (format!("{VM}/uuid"), VM.trim_start_matches("/vm/").into()),
        ] {
            pairs.push((k, v));
        }
        self.base.write(&pairs)
    }

    fn op(&mut self) -> Result<Command, String> {
        Ok(self.command("online"))
    }

    fn next(&mut self) -> Result<Option<Command>, String> {
        let b = format!("/local/domain/0/{BACKEND}");
        self.base.write(&[
            (format!("{b}/online"), "0".into()),
            (format!("{b}/state"), "5".into()),
        ])?;
        Ok(Some(self.command("offline")))
    }

    fn after(&mut self) -> Result<(), String> {
        // netback deletes its vif, whatever it is called now.
        if let Some(idx) = self.vif_index.take() {
            let links = json(&["ip", "-j", "link", "show"])?;
            if let Some(name) = links
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["ifindex"].as_u64() == Some(idx))
                .map(|l| s(&l["ifname"]))
            {
                run(&["ip", "link", "del", "dev", &name])?;
            }
        }
        self.base.destroy_domain("vif", DOMID);
        let _ = xenplug_xenstore::XsOps::rm(&self.base.daemon.store(), VM);
        world::wait_children_gone(&self.keep, Duration::from_secs(5))
    }

    fn reset(&mut self) -> Result<(), String> {
        let _ = world::wait_children_gone(&self.keep, Duration::from_secs(5));
        // What a round may leave: rules, routes, proxy neighbours, ports, lines, files, nodes.
        for t in ["netdev xenplug", "ip xenplug-nat", "inet xenplug"] {
            let mut w = vec!["nft", "delete", "table"];
            w.extend(t.split(' '));
            let _ = run(&w);
        }
        for fam in ["-4", "-6"] {
            for n in json(&["ip", "-j", fam, "neigh", "show", "proxy"])?
                .as_array()
                .into_iter()
                .flatten()
            {
                let _ = run(&[
                    "ip",
                    fam,
                    "neigh",
                    "del",
                    "proxy",
                    &s(&n["dst"]),
                    "dev",
                    &s(&n["dev"]),
                ]);
            }
        }
        for r in json(&["ip", "-j", "-4", "route", "show"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            if s(&r["dst"]).starts_with("10.1.0.") {
                let _ = run(&["ip", "route", "del", &s(&r["dst"])]);
            }
        }
        for r in json(&["ip", "-j", "-6", "route", "show"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            if s(&r["dst"]).starts_with("2001:db8::5") {
                let _ = run(&["ip", "-6", "route", "del", &s(&r["dst"])]);
            }
        }
        for name in [VIF, "vif5.0-guest"] {
            let _ = Command::new("ip")
                .args(["link", "del", "dev", name])
                .stderr(Stdio::null())
                .status();
        }
        let _ = run(&["ip", "link", "set", "eth0", "up"]);
        let _ = run(&["ip", "link", "set", "xenbr0", "up"]);
        if self.kind == Kind::Ovs {
            for p in self.vsctl(&["list-ports", "ovsbr0"])?.lines() {
                let _ = self.vsctl(&["--if-exists", "del-port", "ovsbr0", p]);
            }
        }
        std::fs::write(&self.hosts, "").map_err(|e| e.to_string())?;
        world::clear_hotplug_files();
        world::reset_xenstore(&self.base, &self.xs_baseline);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULESET: &str = "\
table netdev xenplug {
\tset ll6-claimed {
\t\ttypeof @nh,64,128
\t\tsize 65535
\t\tflags dynamic
\t\telements = { 0xfe80000000000000000000000000abcd,
\t\t\t     0xfe80000000000000000000000000abce }
\t}

\tset vif5.0-ll6 {
\t\ttypeof @nh,64,128
\t\tsize 8
\t\tflags dynamic
\t\telements = { 0xfe80000000000000000000000000abcd }
\t}

\tchain vif5.0 {
\t\ttype filter hook ingress device \"vif5.0\" priority filter; policy accept;
\t\tether saddr != 00:16:3e:00:00:01 counter packets 0 bytes 0 drop
\t}
}
table ip xenplug-nat {
}
";

    #[test]
    fn nft_items_counts_chains_rules_sets_and_claims_but_not_the_shared_set() {
        let mut snap = Snapshot::new();
        nft_items(RULESET, &mut snap);
        let claim_a = "0xfe80000000000000000000000000abcd";
        let claim_b = "0xfe80000000000000000000000000abce";
        let rule = "ether saddr != 00:16:3e:00:00:01 counter packets 0 bytes 0 drop";
        let hook = "type filter hook ingress device \"vif5.0\" priority filter; policy accept;";
        let mut expected = Snapshot::new();
        for (class, item) in [
            ("nft chain", "netdev xenplug vif5.0".to_string()),
            ("nft rule", format!("netdev xenplug vif5.0: {rule}")),
            ("nft rule", format!("netdev xenplug vif5.0: {hook}")),
            ("nft set", "netdev xenplug vif5.0-ll6".to_string()),
            (
                "nft set element",
                format!("netdev xenplug ll6-claimed: {claim_a}"),
            ),
            (
                "nft set element",
                format!("netdev xenplug ll6-claimed: {claim_b}"),
            ),
            (
                "nft set element",
                format!("netdev xenplug vif5.0-ll6: {claim_a}"),
            ),
        ] {
            put(&mut expected, class, item);
        }
        assert_eq!(snap, expected);
    }

    #[test]
    fn nft_items_of_the_tables_and_the_empty_shared_set_are_none() {
        let mut snap = Snapshot::new();
        nft_items(
            "table netdev xenplug {\n\tset ll6-claimed {\n\t\ttypeof @nh,64,128\n\t\tsize 65535\n\t\tflags dynamic\n\t}\n}\ntable ip xenplug-nat {\n}\n",
            &mut snap,
        );
        assert!(snap.is_empty(), "{snap:?}");
    }
}
