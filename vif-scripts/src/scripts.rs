//! The four scripts: gather (xenstore + observed links) → pure planner → apply → outcome.
//!
//! Planners (`plan_bridge`, `plan_route`, `plan_nat`, `plan_ovs`) are pure functions of
//! [`Common`], the script's own xenstore facts and the [`Observed`] links; [`body_with`] wires
//! them to a hotplug [`Context`] and the applier's traits, [`body`] uses the real adapters.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use xenplug_hotplug::{run_hooks_with, Action, Context, Failure, Outcome};

use crate::adapters::{CtxXs, DnsmasqHosts, OvsCli, ProcSys};
use crate::common::{resolve, Common, CommonInputs, Net, Observed, TypeIf};
use crate::firewall::{self, Firewall, Mode, NftBatch, NftCli};
use crate::plan::{apply, Dhcp, OnError, Ovs, Plan, Step, Sysctl, System};
use xenplug_netlink::links::KernelLinks;
use xenplug_netlink::links::{DevRoute as Route, LinkChange, Links};

/// Which script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// vif-bridge.
    Bridge,
    /// vif-route.
    Route,
    /// vif-nat.
    Nat,
    /// vif-openvswitch.
    Ovs,
}

impl Script {
    /// The script's file name.
    pub fn name(self) -> &'static str {
        match self {
            Script::Bridge => "vif-bridge",
            Script::Route => "vif-route",
            Script::Nat => "vif-nat",
            Script::Ovs => "vif-openvswitch",
        }
    }
}

fn fail(msg: impl std::fmt::Display) -> Failure {
    Failure::error(msg)
}

/// Rename (online/add with `vifname`), refusing an existing name.
fn plan_rename(c: &Common, obs: &Observed, plan: &mut Plan) -> Result<(), Failure> {
    if !c.rename || c.dev == c.name {
        return Ok(());
    }
    if obs.get(&c.name).is_some() {
        return Err(fail(format!(
            "Cannot rename interface {}. An interface with name {} already exists.",
            c.dev, c.name
        )));
    }
    plan.link(LinkChange::SetUp {
        dev: c.dev.clone(),
        up: false,
    });
    plan.link(LinkChange::Rename {
        dev: c.dev.clone(),
        to: c.name.clone(),
    });
    Ok(())
}

/// The device must exist for set-up.
fn require_dev(c: &Common, obs: &Observed) -> Result<(), Failure> {
    if obs.get(&c.dev).is_none() {
        return Err(fail(format!("Cannot find interface {}", c.dev)));
    }
    Ok(())
}

/// The MAC every bridge port gets, so a bridge never takes its address from a vif (the highest
/// non-broadcast, locally administered address).
pub const BRIDGE_PORT_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// The start of a switch port's set-up (bridge, Open vSwitch): the device must exist; rename
/// it, take it down, give it [`BRIDGE_PORT_MAC`] and flush its addresses.
fn plan_port_setup(c: &Common, obs: &Observed, plan: &mut Plan) -> Result<(), Failure> {
    require_dev(c, obs)?;
    plan_rename(c, obs, plan)?;
    let dev = &c.name;
    plan.link(LinkChange::SetUp {
        dev: dev.clone(),
        up: false,
    });
    plan.link_lenient(LinkChange::SetMac {
        dev: dev.clone(),
        mac: BRIDGE_PORT_MAC,
    });
    plan.link(LinkChange::FlushAddrs { dev: dev.clone() });
    Ok(())
}

/// The antispoofing batch for set-up and what its failure does (enforce: fatal, fail closed;
/// compat: logged).
fn firewall_up(c: &Common) -> Option<(NftBatch, OnError)> {
    let b = firewall::vif_batch(&c.name, &c.ip, c.antispoof)?;
    let on = if c.antispoof == Mode::Enforce {
        OnError::Fatal
    } else {
        OnError::Ignore
    };
    Some((b, on))
}

fn plan_firewall_up(c: &Common, plan: &mut Plan) {
    if let Some((b, on)) = firewall_up(c) {
        plan.push(Step::Nft(b, on));
    }
}

/// True when set-up installs antispoofing rules (teardown removes them).
fn has_firewall(c: &Common) -> bool {
    c.antispoof != Mode::Off && !c.ip.is_empty()
}

fn plan_firewall_down(c: &Common, plan: &mut Plan) {
    if has_firewall(c) {
        plan.push(Step::Nft(firewall::remove_batch(&c.name), OnError::Ignore));
    }
}

/// A tap's `rate`, policed at the tap's ingress with tc ([`crate::rate`]); vifs have netback.
/// Planned before the link comes up. A failure (a kernel without `act_police`, say) is logged
/// and the tap is plumbed unlimited, as the rate-only nft rule used to be.
fn plan_rate_up(c: &Common, plan: &mut Plan) {
    if let (TypeIf::Tap, Some(r)) = (c.type_if, c.rate) {
        plan.link_lenient(LinkChange::SetIngressRate {
            dev: c.name.clone(),
            rate: r.bytes_per_second(),
            burst: r.burst(),
        });
    }
}

/// Teardown of [`plan_rate_up`]: only while the tap exists (its policer dies with it).
fn plan_rate_down(c: &Common, obs: &Observed, plan: &mut Plan) {
    if c.type_if == TypeIf::Tap && c.rate.is_some() && obs.get(&c.name).is_some() {
        plan.link(LinkChange::ClearIngressRate {
            dev: c.name.clone(),
        });
    }
}

/// vif-bridge's own inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeFacts {
    /// The `bridge` node, else the `bridge` argument/environment variable.
    pub bridge: String,
    /// The backend `mtu` node.
    pub mtu: Option<String>,
}

/// Resolve the bridge name as vif-bridge does.
pub fn resolve_bridge(requested: &str, obs: &Observed) -> Result<String, Failure> {
    if requested.is_empty() {
        return obs
            .first_bridge()
            .map(|b| b.name.clone())
            .ok_or_else(|| fail("Could not find bridge, and none was specified"));
    }
    let mut br = requested.to_string();
    if obs.get(&br).is_none() {
        if let Some(n) = br.strip_prefix("xenbr") {
            let eth = format!("eth{n}");
            if obs.get(&eth).is_some_and(|l| l.is_bridge()) {
                br = eth;
            }
        }
    }
    match obs.get(&br) {
        None => Err(fail(format!("Could not find bridge device {br}"))),
        Some(l) if !l.is_bridge() => Err(fail(format!("{br} is not a bridge"))),
        Some(_) => Ok(br),
    }
}

/// Plan vif-bridge. Returns the plan and the bridge used.
pub fn plan_bridge(c: &Common, f: &BridgeFacts, obs: &Observed) -> Result<(Plan, String), Failure> {
    let mut plan = Plan::default();
    if c.setup() {
        let br = resolve_bridge(&f.bridge, obs)?;
        plan_port_setup(c, obs, &mut plan)?;
        let dev = c.name.clone();
        plan_firewall_up(c, &mut plan);
        plan_rate_up(c, &mut plan);
        let mtu = match f.mtu.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) => m
                .parse::<u32>()
                .map_err(|_| fail(format!("invalid mtu '{m}' in {}/mtu", c.backend)))?,
            None => obs.get(&br).map(|b| b.mtu).unwrap_or(0),
        };
        if mtu > 0 {
            plan.link_lenient(LinkChange::SetMtu {
                dev: dev.clone(),
                mtu,
            });
            if c.type_if == TypeIf::Vif {
                if let Some(fe) = &c.frontend {
                    plan.push(Step::XsWrite {
                        path: format!("{fe}/mtu"),
                        value: mtu.to_string(),
                    });
                }
            }
        }
        let br_index = obs.get(&br).map(|b| b.index);
        let cur = obs.get(&c.dev).and_then(|l| l.master);
        if cur.is_none() || cur != br_index {
            plan.link(LinkChange::SetMaster {
                dev: dev.clone(),
                master: Some(br.clone()),
            });
        }
        plan.link(LinkChange::SetUp { dev, up: true });
        Ok((plan, br))
    } else {
        // Teardown: the bridge is only used for logging; a missing bridge does not stop it.
        let br = resolve_bridge(&f.bridge, obs).unwrap_or_else(|_| f.bridge.clone());
        if let Some(l) = obs.get(&c.name) {
            plan.link(LinkChange::SetUp {
                dev: c.name.clone(),
                up: false,
            });
            if l.master.is_some() {
                plan.link(LinkChange::SetMaster {
                    dev: c.name.clone(),
                    master: None,
                });
            }
        }
        plan_rate_down(c, obs, &mut plan);
        plan_firewall_down(c, &mut plan);
        Ok((plan, br))
    }
}

/// vif-route's own inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteFacts {
    /// The dom0 interface whose address is used (`netdev`, default `eth0`).
    pub netdev: String,
    /// The program name for the error message.
    pub program: String,
}

/// The metric of guest routes: 1 for taps, 2 for vifs.
pub fn route_metric(t: TypeIf) -> u32 {
    match t {
        TypeIf::Tap => 1,
        TypeIf::Vif => 2,
    }
}

/// Plan vif-route.
pub fn plan_route(c: &Common, f: &RouteFacts, obs: &Observed) -> Result<Plan, Failure> {
    let mut plan = Plan::default();
    let dev = c.name.clone();
    let metric = route_metric(c.type_if);
    if c.setup() {
        let main_ip = obs.primary_v4(&f.netdev).ok_or_else(|| {
            fail(format!(
                "{} is not up.  Bring it up or specify another interface with netdev=<if> as a parameter to {}.",
                f.netdev, f.program
            ))
        })?;
        require_dev(c, obs)?;
        plan_rename(c, obs, &mut plan)?;
        plan_firewall_up(c, &mut plan);
        plan_rate_up(c, &mut plan);
        if !obs.has_addr(&c.dev, IpAddr::V4(main_ip)) {
            plan.link(LinkChange::AddAddr {
                dev: dev.clone(),
                addr: IpAddr::V4(main_ip),
                prefix: 32,
            });
        }
        plan.link(LinkChange::SetUp {
            dev: dev.clone(),
            up: true,
        });
        plan.push(Step::Sysctl {
            key: format!("net/ipv4/conf/{dev}/proxy_arp"),
            value: "1".into(),
            on_error: OnError::Fatal,
        });
        let mut ndp = false;
        for n in &c.ip {
            let src = n.addr.is_ipv4().then_some(IpAddr::V4(main_ip));
            plan.push(Step::Link(
                LinkChange::AddRoute(Route {
                    dst: n.addr,
                    prefix: n.prefix,
                    dev: dev.clone(),
                    src,
                    metric,
                }),
                OnError::FatalUnlessExists,
            ));
            if n.addr.is_ipv6() && n.is_host() {
                if !ndp {
                    plan.push(Step::Sysctl {
                        key: format!("net/ipv6/conf/{}/proxy_ndp", f.netdev),
                        value: "1".into(),
                        on_error: OnError::Fatal,
                    });
                    ndp = true;
                }
                plan.push(Step::Link(
                    LinkChange::AddProxyNeigh {
                        dev: f.netdev.clone(),
                        addr: n.addr,
                    },
                    OnError::FatalUnlessExists,
                ));
            }
        }
    } else {
        // Routes first: taking the link down makes the kernel drop them itself.
        for n in &c.ip {
            plan.link(LinkChange::DelRoute(Route {
                dst: n.addr,
                prefix: n.prefix,
                dev: dev.clone(),
                src: None,
                metric,
            }));
            if n.addr.is_ipv6() && n.is_host() {
                plan.link(LinkChange::DelProxyNeigh {
                    dev: f.netdev.clone(),
                    addr: n.addr,
                });
            }
        }
        if obs.get(&dev).is_some() {
            plan.link(LinkChange::SetUp {
                dev: dev.clone(),
                up: false,
            });
        }
        if let Some(l) = obs.get(&dev) {
            for a in obs
                .addrs
                .iter()
                .filter(|a| a.index == l.index && a.prefix == 32 && a.addr.is_ipv4())
            {
                if obs.primary_v4(&f.netdev).map(IpAddr::V4) == Some(a.addr) {
                    plan.link(LinkChange::DelAddr {
                        dev: dev.clone(),
                        addr: a.addr,
                        prefix: 32,
                    });
                }
            }
        }
        plan_rate_down(c, obs, &mut plan);
        plan_firewall_down(c, &mut plan);
    }
    Ok(plan)
}

/// vif-nat's own inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatFacts {
    /// `frontend-id`.
    pub domid: u32,
    /// `handle`.
    pub handle: u32,
    /// `mac` (needed for DHCP).
    pub mac: Option<String>,
    /// DHCP enabled (`dhcp=yes`).
    pub dhcp: bool,
    /// Masquerade the guest's traffic (`nat_masquerade`, default yes).
    pub masquerade: bool,
}

/// The reference's NAT address plan: (guest address with prefix, router address, hostname).
pub fn nat_addresses(c: &Common, f: &NatFacts) -> Result<(Net, Ipv4Addr, String), Failure> {
    let vifid = f.handle + 1;
    let guest = match c.ip.first() {
        Some(n) => *n,
        None => Net {
            addr: IpAddr::V4(Ipv4Addr::new(
                10,
                (f.domid / 256) as u8,
                (f.domid % 256) as u8,
                vifid.min(255) as u8,
            )),
            prefix: 16,
        },
    };
    if f.domid > 65535 || vifid > 255 {
        return Err(fail(format!(
            "domain {} vif {} is outside the 10.x.y.z/16 NAT plan",
            f.domid, f.handle
        )));
    }
    let IpAddr::V4(v4) = guest.addr else {
        return Err(fail(format!(
            "vif-nat needs an IPv4 address, got {}",
            guest.addr
        )));
    };
    let o = v4.octets();
    let last = u32::from(o[3]) + 127;
    if last > 255 {
        return Err(fail(format!(
            "cannot derive the router address from {v4} (last octet + 127 > 255)"
        )));
    }
    let router = Ipv4Addr::new(o[0], o[1], o[2], last as u8);
    let hostname = if vifid == 1 {
        format!("dom{}", f.domid)
    } else {
        format!("dom{}-{vifid}", f.domid)
    };
    Ok((guest, router, hostname))
}

/// The NAT masquerade batch: chain `nat-<dev>` in table `ip xenplug-nat`.
pub fn nat_batch(dev: &str, guest: Ipv4Addr) -> NftBatch {
    use serde_json::json;
    let chain = format!("nat-{dev}");
    let cref = json!({"family": "ip", "table": "xenplug-nat", "name": chain});
    firewall::NftBatch {
        what: format!("ip xenplug-nat chain {chain}: masquerade {guest}"),
        json: json!({"nftables": [
            {"add": {"table": {"family": "ip", "name": "xenplug-nat"}}},
            {"add": {"chain": {"family": "ip", "table": "xenplug-nat", "name": chain,
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
            {"flush": {"chain": cref}},
            {"add": {"rule": {"family": "ip", "table": "xenplug-nat", "chain": chain, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": guest.to_string()}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": dev}},
                {"masquerade": null}
            ]}}}
        ]}),
        undo: Some(Box::new(nat_remove_batch(dev))),
        removal: false,
    }
}

/// Removal of [`nat_batch`].
pub fn nat_remove_batch(dev: &str) -> NftBatch {
    use serde_json::json;
    NftBatch {
        what: format!("remove ip xenplug-nat chain nat-{dev}"),
        json: json!({"nftables": [{"delete": {"chain": {"family": "ip", "table": "xenplug-nat", "name": format!("nat-{dev}")}}}]}),
        undo: None,
        removal: true,
    }
}

/// vif-nat's set-up batch: ONE `nft -j -f -` run for the vif's antispoofing chain (when
/// configured) and its masquerade chain (when enabled), applied atomically, with one undo. Its
/// failure is fatal when either part's would be: masquerading always, antispoofing in enforce
/// mode; only a compat-mode antispoofing batch alone is logged and ignored. (With compat and
/// masquerading, a failing batch installs neither, so the online fails.)
pub fn nat_firewall_up(
    c: &Common,
    guest: Ipv4Addr,
    masquerade: bool,
) -> Option<(NftBatch, OnError)> {
    let dev = &c.name;
    match (firewall_up(c), masquerade) {
        (None, false) => None,
        (Some(spoof), false) => Some(spoof),
        (None, true) => Some((nat_batch(dev, guest), OnError::Fatal)),
        (Some((spoof, _)), true) => Some((
            spoof.then(nat_batch(dev, guest), Some(nat_remove_both(dev))),
            OnError::Fatal,
        )),
    }
}

/// vif-nat's teardown batch (one `nft` run): removes what [`nat_firewall_up`] installs.
pub fn nat_firewall_down(c: &Common, masquerade: bool) -> Option<NftBatch> {
    match (has_firewall(c), masquerade) {
        (false, false) => None,
        (true, false) => Some(firewall::remove_batch(&c.name)),
        (false, true) => Some(nat_remove_batch(&c.name)),
        (true, true) => Some(nat_remove_both(&c.name)),
    }
}

/// Removal of both chains in one batch that succeeds whichever of them still exists (a netdev
/// chain may have gone with its device): see [`firewall::remove_chain_cmds`].
fn nat_remove_both(dev: &str) -> NftBatch {
    let mut cmds = firewall::remove_chain_cmds("netdev", firewall::TABLE, dev);
    cmds.extend(firewall::remove_chain_cmds(
        "ip",
        "xenplug-nat",
        &format!("nat-{dev}"),
    ));
    NftBatch {
        what: format!(
            "remove netdev {} chain {dev} and ip xenplug-nat chain nat-{dev}",
            firewall::TABLE
        ),
        json: serde_json::json!({ "nftables": cmds }),
        undo: None,
        removal: true,
    }
}

/// Plan vif-nat.
pub fn plan_nat(c: &Common, f: &NatFacts, obs: &Observed) -> Result<Plan, Failure> {
    let mut plan = Plan::default();
    let dev = c.name.clone();
    let (guest, router, hostname) = nat_addresses(c, f)?;
    let IpAddr::V4(guest_v4) = guest.addr else {
        unreachable!("checked by nat_addresses")
    };
    if c.setup() {
        require_dev(c, obs)?;
        plan_rename(c, obs, &mut plan)?;
        // Antispoofing and masquerading: one batch, where the other scripts put antispoofing
        // (before the link comes up). The masquerade rule only matches the guest's source
        // address, so installing it this early changes nothing else.
        if let Some((b, on)) = nat_firewall_up(c, guest_v4, f.masquerade) {
            plan.push(Step::Nft(b, on));
        }
        plan_rate_up(c, &mut plan);
        plan.link(LinkChange::SetUp {
            dev: dev.clone(),
            up: true,
        });
        plan.push(Step::Link(
            LinkChange::AddAddr {
                dev: dev.clone(),
                addr: IpAddr::V4(router),
                prefix: 32,
            },
            OnError::FatalUnlessExists,
        ));
        plan.push(Step::Link(
            LinkChange::AddRoute(Route {
                dst: guest.addr,
                prefix: 32,
                dev: dev.clone(),
                src: Some(IpAddr::V4(router)),
                metric: 0,
            }),
            OnError::FatalUnlessExists,
        ));
        plan.push(Step::Sysctl {
            key: format!("net/ipv4/conf/{dev}/proxy_arp"),
            value: "1".into(),
            on_error: OnError::Fatal,
        });
        if f.dhcp {
            let mac = f
                .mac
                .clone()
                .filter(|m| xenplug_netlink::links::parse_mac(m).is_some())
                .ok_or_else(|| fail(format!("xenstore-read {}/mac failed.", c.backend)))?;
            plan.push(Step::Dhcp {
                key: hostname.clone(),
                line: Some(format!("{mac},{guest_v4},{hostname}")),
            });
        }
    } else {
        if f.dhcp {
            plan.push(Step::Dhcp {
                key: hostname,
                line: None,
            });
        }
        plan.link(LinkChange::DelRoute(Route {
            dst: guest.addr,
            prefix: 32,
            dev: dev.clone(),
            src: None,
            metric: 0,
        }));
        if obs.get(&dev).is_some() {
            plan.link(LinkChange::SetUp {
                dev: dev.clone(),
                up: false,
            });
        }
        if obs.has_addr(&dev, IpAddr::V4(router)) {
            plan.link(LinkChange::DelAddr {
                dev: dev.clone(),
                addr: IpAddr::V4(router),
                prefix: 32,
            });
        }
        plan_rate_down(c, obs, &mut plan);
        if let Some(b) = nat_firewall_down(c, f.masquerade) {
            plan.push(Step::Nft(b, OnError::Ignore));
        }
    }
    Ok(plan)
}

/// `bridge[.tag][:trunk…]` of vif-openvswitch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsBridge {
    /// Bridge name.
    pub bridge: String,
    /// Access VLAN.
    pub tag: Option<u16>,
    /// Trunk VLANs.
    pub trunks: Vec<u16>,
}

/// Parse `^([^.:]+)(\.([0-9]+))?(:([0-9]+(:[0-9]+)*))?$`.
pub fn parse_ovs_bridge(s: &str) -> Option<OvsBridge> {
    let (head, trunks) = match s.split_once(':') {
        Some((h, t)) => (h, Some(t)),
        None => (s, None),
    };
    let (bridge, tag) = match head.split_once('.') {
        Some((b, t)) => (b, Some(t)),
        None => (head, None),
    };
    if bridge.is_empty() || bridge.contains(['.', ':']) {
        return None;
    }
    let num = |t: &str| -> Option<u16> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let tag = match tag {
        Some(t) => Some(num(t)?),
        None => None,
    };
    let trunks = match trunks {
        Some(t) => t.split(':').map(num).collect::<Option<Vec<_>>>()?,
        None => Vec::new(),
    };
    Some(OvsBridge {
        bridge: bridge.to_string(),
        tag,
        trunks,
    })
}

/// vif-openvswitch's own inputs (the identity values are read only for online/add).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvsFacts {
    /// `bridge` node, else variable.
    pub bridge: String,
    /// `<vm>/name`.
    pub vm_name: String,
    /// `<vm>/uuid`.
    pub vm_uuid: String,
    /// `mac`.
    pub mac: String,
}

fn ovs_quote(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            o.push('\\');
        }
        o.push(ch);
    }
    o.push('"');
    o
}

/// Plan vif-openvswitch.
pub fn plan_ovs(c: &Common, f: &OvsFacts, obs: &Observed) -> Result<Plan, Failure> {
    let mut plan = Plan::default();
    let dev = c.name.clone();
    let del = vec![
        "--timeout=30".to_string(),
        "--".into(),
        "--if-exists".into(),
        "del-port".into(),
        dev.clone(),
    ];
    if c.setup() {
        let b = parse_ovs_bridge(&f.bridge).ok_or_else(|| fail("No valid bridge was specified"))?;
        plan_port_setup(c, obs, &mut plan)?;
        // As the reference, rules only for vifs. A tap's `rate` is not policed here either:
        // ovs-vswitchd owns an OVS port's ingress qdisc (it applies the Interface's own
        // `ingress_policing_rate` with one, and deletes whatever ingress qdisc a port has when
        // the port is added: seen with Debian 12's Open vSwitch), so ours would not last.
        if c.type_if == TypeIf::Vif {
            plan_firewall_up(c, &mut plan);
        }
        let mut args = del.clone();
        args.extend([
            "--".into(),
            "add-port".into(),
            b.bridge.clone(),
            dev.clone(),
        ]);
        if let Some(t) = b.tag {
            args.push(format!("tag={t}"));
        }
        if !b.trunks.is_empty() {
            args.push(format!(
                "trunks={}",
                b.trunks
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        for (k, v) in [
            ("xen-vm-name", &f.vm_name),
            ("xen-vm-uuid", &f.vm_uuid),
            ("attached-mac", &f.mac),
        ] {
            args.extend([
                "--".into(),
                "set".into(),
                "interface".into(),
                dev.clone(),
                format!("external-ids:{}={}", ovs_quote(k), ovs_quote(v)),
            ]);
        }
        plan.push(Step::Ovs {
            args,
            undo: Some(del),
        });
        plan.link(LinkChange::SetUp { dev, up: true });
    } else {
        plan.push(Step::Ovs {
            args: del,
            undo: None,
        });
        if obs.get(&dev).is_some() {
            plan.link(LinkChange::SetUp {
                dev: dev.clone(),
                up: false,
            });
        }
        if c.type_if == TypeIf::Vif {
            plan_firewall_down(c, &mut plan);
        }
    }
    Ok(plan)
}

/// The applier's traits other than xenstore, for [`body_with`].
#[allow(missing_debug_implementations)]
pub struct Backends<'a> {
    /// Links.
    pub links: &'a mut dyn Links,
    /// Sysctls.
    pub sysctl: &'a mut dyn Sysctl,
    /// nftables.
    pub firewall: &'a mut dyn Firewall,
    /// Open vSwitch.
    pub ovs: &'a mut dyn Ovs,
    /// DHCP hosts (built once the script knows it needs one).
    pub dhcp: &'a mut dyn Dhcp,
}

fn yes(v: Option<&str>, default: bool) -> bool {
    match v.map(str::trim) {
        None | Some("") => default,
        Some(v) => !matches!(v, "no" | "0" | "false" | "off"),
    }
}

/// Read a node by its own path (relative paths are relative to this domain's home, not to
/// XENBUS_PATH: the tap case derives its backend path).
fn xs_read(ctx: &Context<'_>, path: &str) -> Result<Option<String>, Failure> {
    ctx.xs.read(path).map_err(|e| {
        fail(format!(
            "xenstore-read {path} failed: {}",
            xenplug_hotplug::describe_xs_error(&e)
        ))
    })
}

/// The backend nodes a script reads, fetched in one pipelined round trip on the first read and
/// then served from memory (one request/answer pair per node costs more than the planning).
///
/// The backend directory is guessed from the environment before [`resolve`] checks it (a
/// wrong guess only wastes that round trip: every read not answered here goes to xenstore).
struct Nodes<'c, 'x> {
    ctx: &'c Context<'x>,
    /// Paths to fetch on the first read.
    pending: std::cell::RefCell<Vec<String>>,
    /// Values fetched (`None`: no such node).
    known: std::cell::RefCell<std::collections::HashMap<String, Option<String>>>,
}

impl<'c, 'x> Nodes<'c, 'x> {
    fn new(ctx: &'c Context<'x>, script: Script, inp: &CommonInputs) -> Self {
        let backend = match inp.type_if.as_deref().unwrap_or("") {
            "tap" => crate::common::parse_vif_name(&inp.interface)
                .map(|(d, n)| format!("backend/vif/{d}/{n}")),
            _ => Some(inp.xenbus_path.clone()).filter(|p| !p.is_empty()),
        };
        let own: &[&str] = match script {
            Script::Bridge => &["bridge", "mtu"],
            Script::Route => &[],
            Script::Nat => &["frontend-id", "handle", "mac"],
            Script::Ovs => &["bridge", "frontend-id", "mac"],
        };
        let pending = backend
            .map(|b| {
                ["vifname", "ip", "rate"]
                    .iter()
                    .chain(own)
                    .map(|k| format!("{}/{k}", b.trim_end_matches('/')))
                    .collect()
            })
            .unwrap_or_default();
        Nodes {
            ctx,
            pending: std::cell::RefCell::new(pending),
            known: Default::default(),
        }
    }

    /// `xenstore-read`: `None` for a missing node.
    fn read(&self, path: &str) -> Result<Option<String>, Failure> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        if !pending.is_empty() {
            // A failure here is not reported: the single read below reports it for the node
            // that is actually needed.
            if let Ok(values) = self.ctx.xs.read_many(&pending) {
                self.known
                    .borrow_mut()
                    .extend(pending.into_iter().zip(values));
            }
        }
        if let Some(v) = self.known.borrow().get(path) {
            return Ok(v.clone());
        }
        xs_read(self.ctx, path)
    }

    /// `xenstore_read`: a missing or empty node is fatal.
    fn required(&self, path: &str) -> Result<String, Failure> {
        match self.read(path)? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(fail(format!("xenstore-read {path} failed."))),
        }
    }
}

/// Run `script` for the invocation in `ctx` against `be` (see the module docs).
pub fn body_with(
    script: Script,
    ctx: &Context<'_>,
    be: Backends<'_>,
) -> Result<Outcome<'static>, Failure> {
    let inp = CommonInputs {
        type_if: ctx.var("type_if").map(str::to_string),
        vif: ctx.inv.env.vif.clone(),
        interface: ctx.inv.env.interface.clone(),
        xenbus_path: ctx.inv.env.xenbus_path.clone(),
        ip_var: ctx.var("ip").map(str::to_string),
        // `antispoof=` argument (or `antispoof` environment variable), else the host's
        // setting (`antispoof` in xenplug.toml, or `XENPLUG_ANTISPOOF`).
        antispoof: ctx
            .var("antispoof")
            .map(str::to_string)
            .or_else(|| ctx.config.antispoof.clone()),
    };
    let nodes = Nodes::new(ctx, script, &inp);
    let Some(c) = resolve(ctx.action(), &inp, &mut |p| nodes.read(p))? else {
        ctx.log.debug(format!(
            "{} type_if={} : nothing to do",
            ctx.action(),
            inp.type_if.as_deref().unwrap_or("vif")
        ));
        return Ok(Outcome::Done);
    };
    let node = |k: &str| format!("{}/{k}", c.backend.trim_end_matches('/'));
    let links_err = |e: xenplug_netlink::links::LinkError| fail(e);
    // Look up only the links the planner needs (a full dump costs more than the whole rest of
    // a run on a host with many vifs); `dump` when it needs every link.
    let observe =
        |links: &mut dyn Links, names: &[&str], dump: bool| -> Result<Observed, Failure> {
            if dump {
                return Ok(Observed {
                    links: links.links().map_err(links_err)?,
                    addrs: Vec::new(),
                });
            }
            let mut o = Observed::default();
            for n in names {
                if !n.is_empty() && o.get(n).is_none() {
                    if let Some(l) = links.link(n).map_err(links_err)? {
                        o.links.push(l);
                    }
                }
            }
            Ok(o)
        };
    let mut hook_vars: Vec<(String, String)> = vec![
        ("dev".into(), c.name.clone()),
        ("vif".into(), c.name.clone()),
    ];
    let plan = match script {
        Script::Bridge => {
            let bridge = nodes
                .read(&node("bridge"))?
                .unwrap_or_else(|| ctx.var("bridge").unwrap_or("").to_string());
            let f = BridgeFacts {
                bridge,
                mtu: nodes.read(&node("mtu"))?,
            };
            let mut obs = observe(
                &mut *be.links,
                &[&c.dev, &c.name, &f.bridge],
                f.bridge.is_empty(),
            )?;
            // The legacy `xenbrN` → `ethN` translation needs `ethN` only when `xenbrN` is
            // missing.
            if !f.bridge.is_empty() && obs.get(&f.bridge).is_none() {
                if let Some(n) = f.bridge.strip_prefix("xenbr") {
                    if let Some(l) = be.links.link(&format!("eth{n}")).map_err(links_err)? {
                        obs.links.push(l);
                    }
                }
            }
            let (plan, br) = plan_bridge(&c, &f, &obs)?;
            hook_vars.push(("bridge".into(), br));
            plan
        }
        Script::Route => {
            let netdev = ctx
                .var("netdev")
                .filter(|s| !s.is_empty())
                .unwrap_or("eth0")
                .to_string();
            let mut obs = observe(&mut *be.links, &[&c.dev, &c.name, &netdev], false)?;
            obs.addrs = be.links.addresses(None).map_err(links_err)?;
            let f = RouteFacts {
                netdev,
                program: ctx.inv.program.clone(),
            };
            plan_route(&c, &f, &obs)?
        }
        Script::Nat => {
            let num = |k: &str| -> Result<u32, Failure> {
                let v = nodes.required(&node(k))?;
                v.trim()
                    .parse()
                    .map_err(|_| fail(format!("invalid {k} '{v}' in {}", node(k))))
            };
            let dhcp = yes(ctx.var("dhcp"), false);
            let f = NatFacts {
                domid: num("frontend-id")?,
                handle: num("handle")?,
                mac: if dhcp && c.setup() {
                    Some(nodes.required(&node("mac"))?)
                } else {
                    None
                },
                dhcp,
                masquerade: yes(ctx.var("nat_masquerade"), true),
            };
            let mut obs = observe(&mut *be.links, &[&c.dev, &c.name], false)?;
            obs.addrs = be.links.addresses(None).map_err(links_err)?;
            plan_nat(&c, &f, &obs)?
        }
        Script::Ovs => {
            let bridge = nodes
                .read(&node("bridge"))?
                .unwrap_or_else(|| ctx.var("bridge").unwrap_or("").to_string());
            let mut f = OvsFacts {
                bridge,
                ..Default::default()
            };
            if c.setup() {
                let fe = nodes.required(&node("frontend-id"))?;
                let vm = nodes.required(&format!("/local/domain/{fe}/vm"))?;
                f.vm_name = nodes.required(&format!("{vm}/name"))?;
                f.vm_uuid = nodes.required(&format!("{vm}/uuid"))?;
                f.mac = nodes.required(&node("mac"))?;
            }
            let obs = observe(&mut *be.links, &[&c.dev, &c.name], false)?;
            plan_ovs(&c, &f, &obs)?
        }
    };
    let _nat_lock = match (
        script,
        plan.steps.iter().any(|s| matches!(s, Step::Dhcp { .. })),
    ) {
        (Script::Nat, true) => Some(ctx.claim_lock("vif-nat-dhcp")?),
        _ => None,
    };
    let mut xs = CtxXs { ctx };
    let mut sys = System {
        links: be.links,
        sysctl: be.sysctl,
        firewall: be.firewall,
        xs: &mut xs,
        ovs: be.ovs,
        dhcp: be.dhcp,
    };
    let teardown = !c.setup();
    let result = apply(&plan, &mut sys, teardown);
    let report = match &result {
        Ok(r) => r,
        Err(e) => &e.report,
    };
    // One line for the whole plan: every log line is a write to a shared file.
    if !report.done.is_empty() {
        ctx.log.debug(format!("done: {}", report.done.join("; ")));
    }
    for n in &report.notes {
        ctx.log.warning(n);
    }
    if let Err(e) = result {
        return Err(fail(e.message));
    }
    let extra: Vec<(&str, &str)> = hook_vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    run_hooks_with(ctx, "vif", "post", &extra)?;
    ctx.log.debug(format!(
        "Successful {} {} for {}.",
        script.name(),
        ctx.action(),
        c.name
    ));
    Ok(match (c.type_if, ctx.action()) {
        (TypeIf::Vif, Action::Online) => Outcome::Connected,
        _ => Outcome::Done,
    })
}

/// Paths and programs of the real adapters, from variables (argument or environment).
fn dnsmasq_for(ctx: &Context<'_>) -> DnsmasqHosts {
    DnsmasqHosts {
        file: PathBuf::from(
            ctx.var("dhcp_hostsfile")
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_DHCP_HOSTSFILE),
        ),
        pidfile: PathBuf::from(
            ctx.var("dnsmasq_pidfile")
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_DNSMASQ_PIDFILE),
        ),
    }
}

/// Default dnsmasq `dhcp-hostsfile` maintained by vif-nat.
pub const DEFAULT_DHCP_HOSTSFILE: &str = "/var/lib/xenplug/vif-nat-dhcp-hosts";
/// Default dnsmasq pid file (Debian's dnsmasq service).
pub const DEFAULT_DNSMASQ_PIDFILE: &str = "/run/dnsmasq/dnsmasq.pid";

/// Run `script` with the real adapters (netlink, /proc/sys, `nft`, `ovs-vsctl`, dnsmasq).
pub fn body(script: Script, ctx: &Context<'_>) -> Result<Outcome<'static>, Failure> {
    let mut links = KernelLinks::open().map_err(fail)?;
    let mut sysctl = ProcSys::default();
    let mut fw = NftCli {
        program: ctx
            .var("nft")
            .filter(|s| !s.is_empty())
            .unwrap_or("nft")
            .into(),
    };
    let mut ovs = OvsCli::for_context(ctx);
    let mut dhcp = dnsmasq_for(ctx);
    body_with(
        script,
        ctx,
        Backends {
            links: &mut links,
            sysctl: &mut sysctl,
            firewall: &mut fw,
            ovs: &mut ovs,
            dhcp: &mut dhcp,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::CommonInputs;
    use crate::fakes::{FakeDhcp, FakeFirewall, FakeOvs, FakeSysctl, MemXs};
    use std::process::ExitCode;
    use xenplug_hotplug::{run_with, Raw};
    use xenplug_netlink::fake::RecordingLinks;
    use xenplug_netlink::Address as IfAddr;

    fn common(action: Action, type_if: &str, nodes: &[(&str, &str)]) -> Common {
        let inp = CommonInputs {
            type_if: Some(type_if.into()),
            vif: "vif5.0".into(),
            interface: "vif5.0-emu".into(),
            xenbus_path: "backend/vif/5/0".into(),
            ..Default::default()
        };
        let m: std::collections::BTreeMap<String, String> = nodes
            .iter()
            .map(|(k, v)| (format!("backend/vif/5/0/{k}"), v.to_string()))
            .collect();
        resolve(action, &inp, &mut |p| Ok(m.get(p).cloned()))
            .unwrap()
            .unwrap()
    }

    fn observed(links: &RecordingLinks) -> Observed {
        Observed {
            links: links.links.clone(),
            addrs: links.addrs.clone(),
        }
    }

    /// [`plan_bridge`] onto `xenbr0` with the MTU node `mtu`, against `links`.
    fn plan_xenbr0(
        c: &Common,
        mtu: Option<&str>,
        links: &RecordingLinks,
    ) -> Result<(Plan, String), Failure> {
        let f = BridgeFacts {
            bridge: "xenbr0".into(),
            mtu: mtu.map(Into::into),
        };
        plan_bridge(c, &f, &observed(links))
    }

    fn host() -> RecordingLinks {
        let mut l = RecordingLinks::default();
        l.add("eth0", Some("veth"))
            .add("xenbr0", Some("bridge"))
            .add("vif5.0", Some("veth"));
        l.links[1].mtu = 1400;
        l.addrs.push(IfAddr {
            index: 1,
            addr: "192.0.2.10".parse().unwrap(),
            prefix: 24,
            secondary: false,
        });
        l
    }

    #[test]
    fn bridge_online_plan_order() {
        let l = host();
        let c = common(Action::Online, "vif", &[]);
        let (plan, br) = plan_xenbr0(&c, None, &l).unwrap();
        assert_eq!(br, "xenbr0");
        let text: Vec<String> = plan.steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "set vif5.0 down",
                "set vif5.0 address fe:ff:ff:ff:ff:ff",
                "flush addresses of vif5.0",
                "set vif5.0 mtu 1400",
                "xenstore write /local/domain/5/device/vif/0/mtu=1400",
                "set vif5.0 master xenbr0",
                "set vif5.0 up",
            ]
        );
    }

    #[test]
    fn bridge_resolution() {
        let mut l = host();
        let obs = observed(&l);
        assert_eq!(resolve_bridge("", &obs).unwrap(), "xenbr0");
        assert_eq!(
            resolve_bridge("br9", &obs).unwrap_err().message(),
            "Could not find bridge device br9"
        );
        assert_eq!(
            resolve_bridge("eth0", &obs).unwrap_err().message(),
            "eth0 is not a bridge"
        );
        l.add("eth1", Some("bridge"));
        assert_eq!(resolve_bridge("xenbr1", &observed(&l)).unwrap(), "eth1");
        let mut none = RecordingLinks::default();
        none.add("eth0", None);
        assert_eq!(
            resolve_bridge("", &observed(&none)).unwrap_err().message(),
            "Could not find bridge, and none was specified"
        );
    }

    #[test]
    fn bridge_mtu_node_and_vifname_rename() {
        let mut l = host();
        let c = common(Action::Online, "vif", &[("vifname", "web0")]);
        let (plan, _) = plan_xenbr0(&c, Some("9000"), &l).unwrap();
        let text: Vec<String> = plan.steps.iter().map(ToString::to_string).collect();
        assert_eq!(text[1], "rename vif5.0 to web0");
        assert!(text.contains(&"set web0 mtu 9000".to_string()));
        // The frontend path comes from XENBUS_PATH, not from the vifname.
        assert!(text.contains(&"xenstore write /local/domain/5/device/vif/0/mtu=9000".to_string()));
        l.add("web0", Some("veth"));
        let e = plan_xenbr0(&c, None, &l).unwrap_err();
        assert_eq!(
            e.message(),
            "Cannot rename interface vif5.0. An interface with name web0 already exists."
        );
        assert!(plan_xenbr0(&c, Some("big"), &host()).is_err());
    }

    #[test]
    fn bridge_offline_tolerates_missing_bridge_and_vif() {
        let mut l = RecordingLinks::default();
        l.add("eth0", None);
        let c = common(Action::Offline, "vif", &[("ip", "10.0.0.5")]);
        let (plan, _) = plan_xenbr0(&c, None, &l).unwrap();
        assert_eq!(plan.steps.len(), 1, "only the firewall removal: {plan:?}");
    }

    #[test]
    fn tap_bridge_writes_no_frontend_mtu_and_polices_the_rate_before_up() {
        let mut l = host();
        l.add("vif5.0-emu", Some("tun"));
        let c = common(Action::Add, "tap", &[("rate", "125000,1000000")]);
        let (plan, _) = plan_xenbr0(&c, None, &l).unwrap();
        assert!(!plan.steps.iter().any(|s| matches!(s, Step::XsWrite { .. })));
        assert!(
            !plan.steps.iter().any(|s| matches!(s, Step::Nft(..))),
            "the rate is no nft rule: {plan:?}"
        );
        let text: Vec<String> = plan.steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "set vif5.0-emu down",
                "set vif5.0-emu address fe:ff:ff:ff:ff:ff",
                "flush addresses of vif5.0-emu",
                "police vif5.0-emu ingress to 125000 B/s burst 131072 B",
                "set vif5.0-emu mtu 1400",
                "set vif5.0-emu master xenbr0",
                "set vif5.0-emu up",
            ]
        );
        // Lenient: a kernel without act_police leaves the tap unlimited, with a warning.
        assert!(plan.steps.iter().any(|s| matches!(
            s,
            Step::Link(LinkChange::SetIngressRate { .. }, OnError::Ignore)
        )));
        // The bucket is the credit when that is above netback's 128 KiB floor.
        let big = common(Action::Add, "tap", &[("rate", "1000000,50000")]);
        let (plan, _) = plan_xenbr0(&big, None, &l).unwrap();
        assert!(plan
            .steps
            .iter()
            .any(|s| s.to_string() == "police vif5.0-emu ingress to 20000000 B/s burst 1000000 B"));
        // Removal, only while the tap exists.
        let rm = common(Action::Remove, "tap", &[("rate", "125000,1000000")]);
        let (plan, _) = plan_xenbr0(&rm, None, &l).unwrap();
        assert_eq!(
            plan.steps.last().map(ToString::to_string).as_deref(),
            Some("remove vif5.0-emu ingress policing")
        );
        let (plan, _) = plan_xenbr0(&rm, None, &host()).unwrap();
        assert!(plan.steps.is_empty(), "{plan:?}");
    }

    #[test]
    fn vifs_leave_the_rate_to_netback() {
        let c = common(Action::Online, "vif", &[("rate", "125000,1000000")]);
        let (plan, _) = plan_xenbr0(&c, None, &host()).unwrap();
        assert!(!plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::Link(LinkChange::SetIngressRate { .. }, _))));
        let f = RouteFacts {
            netdev: "eth0".into(),
            program: "vif-route".into(),
        };
        let plan = plan_route(&c, &f, &observed(&host())).unwrap();
        assert!(!plan
            .steps
            .iter()
            .any(|s| s.to_string().starts_with("police")));
    }

    #[test]
    fn tap_rate_in_route_and_nat_plans_comes_before_up() {
        let mut l = host();
        l.add("vif5.0-emu", Some("tun"));
        let c = common(Action::Add, "tap", &[("rate", "125000,1000000")]);
        let f = RouteFacts {
            netdev: "eth0".into(),
            program: "vif-route".into(),
        };
        let pos = |plan: &Plan, p: &str| {
            plan.steps
                .iter()
                .position(|s| s.to_string().starts_with(p))
                .unwrap_or_else(|| panic!("{p} in {plan:?}"))
        };
        let plan = plan_route(&c, &f, &observed(&l)).unwrap();
        assert!(pos(&plan, "police vif5.0-emu") < pos(&plan, "set vif5.0-emu up"));
        let n = NatFacts {
            domid: 5,
            handle: 0,
            masquerade: true,
            ..Default::default()
        };
        let plan = plan_nat(&c, &n, &observed(&l)).unwrap();
        assert!(pos(&plan, "police vif5.0-emu") < pos(&plan, "set vif5.0-emu up"));
        let rm = common(Action::Remove, "tap", &[("rate", "125000,1000000")]);
        let plan = plan_route(&rm, &f, &observed(&l)).unwrap();
        pos(&plan, "remove vif5.0-emu ingress policing");
        let plan = plan_nat(&rm, &n, &observed(&l)).unwrap();
        pos(&plan, "remove vif5.0-emu ingress policing");
    }

    #[test]
    fn failed_tap_add_removes_the_policer_and_a_police_failure_is_only_logged() {
        let mut l = host();
        l.add("vif5.0-emu", Some("tun"));
        let c = common(Action::Add, "tap", &[("rate", "125000,1000000")]);
        let (plan, _) = plan_xenbr0(&c, None, &l).unwrap();
        // A later step fails: rolled back, the policer with the rest.
        let mut links = l.clone();
        links.fail = Some(|c| matches!(c, LinkChange::SetUp { up: true, .. }).then_some(libc::EIO));
        let mut parts = crate::fakes::Parts::default();
        let err = apply(&plan, &mut parts.system(&mut links), false).unwrap_err();
        assert!(err
            .report
            .done
            .contains(&"rollback: remove vif5.0-emu ingress policing".to_string()));
        assert_eq!(links.ingress_of("vif5.0-emu"), None);
        assert_eq!(links.get("vif5.0-emu").master, None);
        // The kernel cannot police (ENOENT for a missing tc module): plumbed anyway, noted.
        let mut links = l.clone();
        links.fail =
            Some(|c| matches!(c, LinkChange::SetIngressRate { .. }).then_some(libc::ENOENT));
        let report = apply(&plan, &mut parts.system(&mut links), false).unwrap();
        assert!(
            report.notes.iter().any(|n| n.starts_with(
                "police vif5.0-emu ingress to 125000 B/s burst 131072 B failed (ignored)"
            )),
            "{report:?}"
        );
        assert!(links.get("vif5.0-emu").up);
        // Success, then a teardown that finds it gone already (tap re-created, say).
        let mut links = l.clone();
        apply(&plan, &mut parts.system(&mut links), false).unwrap();
        assert_eq!(links.ingress_of("vif5.0-emu"), Some((125_000, 131_072)));
        let rm = common(Action::Remove, "tap", &[("rate", "125000,1000000")]);
        let (down, _) = plan_xenbr0(&rm, None, &links).unwrap();
        apply(&down, &mut parts.system(&mut links), true).unwrap();
        assert_eq!(links.ingress_of("vif5.0-emu"), None);
        let report = apply(&down, &mut parts.system(&mut links), true).unwrap();
        assert!(
            report.notes.iter().any(|n| n.contains("already gone")),
            "{report:?}"
        );
    }

    #[test]
    fn route_plan() {
        let l = host();
        let c = common(Action::Online, "vif", &[("ip", "10.0.0.5 2001:db8::5")]);
        let f = RouteFacts {
            netdev: "eth0".into(),
            program: "vif-route".into(),
        };
        let plan = plan_route(&c, &f, &observed(&l)).unwrap();
        let text: Vec<String> = plan.steps.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"add 192.0.2.10/32 to vif5.0".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"add route 10.0.0.5/32 dev vif5.0 src 192.0.2.10 metric 2".to_string())
        );
        assert!(text.contains(&"add route 2001:db8::5/128 dev vif5.0 metric 2".to_string()));
        assert!(text.contains(&"sysctl net/ipv4/conf/vif5.0/proxy_arp=1".to_string()));
        assert!(text.contains(&"sysctl net/ipv6/conf/eth0/proxy_ndp=1".to_string()));
        assert!(text.contains(&"add proxy neighbour 2001:db8::5 on eth0".to_string()));
        let bad = RouteFacts {
            netdev: "eth7".into(),
            program: "vif-route".into(),
        };
        assert_eq!(
            plan_route(&c, &bad, &observed(&l)).unwrap_err().message(),
            "eth7 is not up.  Bring it up or specify another interface with netdev=<if> as a parameter to vif-route."
        );
        let tap = common(Action::Remove, "tap", &[("ip", "10.0.0.5")]);
        let plan = plan_route(&tap, &f, &observed(&l)).unwrap();
        assert!(plan
            .steps
            .iter()
            .any(|s| s.to_string() == "delete route 10.0.0.5/32 dev vif5.0-emu metric 1"));
    }

    #[test]
    fn nat_plan() {
        let c = common(Action::Online, "vif", &[]);
        let f = NatFacts {
            domid: 300,
            handle: 1,
            mac: Some("00:16:3e:01:02:03".into()),
            dhcp: true,
            masquerade: true,
        };
        let (g, r, h) = nat_addresses(&c, &f).unwrap();
        assert_eq!(
            (g.to_string(), r.to_string(), h.as_str()),
            (
                "10.1.44.2/16".to_string(),
                "10.1.44.129".to_string(),
                "dom300-2"
            )
        );
        let plan = plan_nat(&c, &f, &observed(&host())).unwrap();
        let text: Vec<String> = plan.steps.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"add 10.1.44.129/32 to vif5.0".to_string()),
            "{text:?}"
        );
        assert!(text
            .contains(&"add route 10.1.44.2/32 dev vif5.0 src 10.1.44.129 metric 0".to_string()));
        assert!(
            text.contains(&"dhcp-hosts dom300-2: 00:16:3e:01:02:03,10.1.44.2,dom300-2".to_string())
        );
        let c1 = common(Action::Online, "vif", &[("ip", "10.0.0.200")]);
        assert!(nat_addresses(&c1, &f).is_err());
    }

    /// The `Step::Nft`s of `plan` with their error handling.
    fn nft_steps(plan: &Plan) -> Vec<(&NftBatch, OnError)> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Nft(b, o) => Some((b, *o)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn nat_applies_one_nft_batch_each_way() {
        let l = host();
        let f = NatFacts {
            domid: 5,
            handle: 0,
            masquerade: true,
            ..Default::default()
        };
        let c = common(Action::Online, "vif", &[("ip", "10.0.5.1")]);
        let plan = plan_nat(&c, &f, &observed(&l)).unwrap();
        let nft = nft_steps(&plan);
        assert_eq!(nft.len(), 1, "{plan:?}");
        assert_eq!(nft[0].1, OnError::Fatal);
        let cmds = nft[0].0.commands();
        let chains: Vec<&str> = cmds
            .iter()
            .filter_map(|c| c["add"]["chain"]["name"].as_str())
            .collect();
        assert_eq!(chains, ["vif5.0", "vif5.0", "nat-vif5.0"]);
        // The antispoofing part is exactly the other scripts' batch.
        let spoof = firewall::vif_batch("vif5.0", &c.ip, Mode::Enforce).unwrap();
        assert_eq!(
            nft[0].0.commands()[..spoof.commands().len()],
            spoof.commands()[..]
        );

        let mut links = l.clone();
        let mut parts = crate::fakes::Parts::default();
        apply(&plan, &mut parts.system(&mut links), false).unwrap();
        assert_eq!(parts.fw.applied.len(), 1);
        assert_eq!(parts.fw.chains, ["vif5.0", "nat-vif5.0"]);

        let off = common(Action::Offline, "vif", &[("ip", "10.0.5.1")]);
        let down = plan_nat(&off, &f, &observed(&links)).unwrap();
        assert_eq!(nft_steps(&down).len(), 1, "{down:?}");
        apply(&down, &mut parts.system(&mut links), true).unwrap();
        assert_eq!(parts.fw.applied.len(), 2);
        assert!(parts.fw.chains.is_empty(), "{:?}", parts.fw.chains);
        // Whichever chain is already gone (a netdev chain can go with its device), the batch
        // still removes the other one, and nothing is left to report.
        apply(&plan, &mut parts.system(&mut links), false).unwrap();
        parts.fw.chains.retain(|c| c != "vif5.0");
        let report = apply(&down, &mut parts.system(&mut links), true).unwrap();
        assert!(parts.fw.chains.is_empty());
        assert!(
            report.notes.iter().all(|n| !n.contains("nft")),
            "{report:?}"
        );
    }

    #[test]
    fn nat_batch_error_handling_and_rollback() {
        let l = host();
        let nat = |masquerade| NatFacts {
            domid: 5,
            handle: 0,
            masquerade,
            ..Default::default()
        };
        let on = |mode: &str, masq: bool| {
            let mut c = common(Action::Online, "vif", &[("ip", "10.0.5.1")]);
            c.antispoof = mode.parse().unwrap();
            nft_steps(&plan_nat(&c, &nat(masq), &observed(&l)).unwrap())
                .iter()
                .map(|(b, o)| (b.commands().len(), *o))
                .collect::<Vec<_>>()
        };
        // Fatal when either part would be: masquerading always, antispoofing in enforce mode.
        assert_eq!(on("compat", true)[0].1, OnError::Fatal);
        assert_eq!(on("compat", false), [(9, OnError::Ignore)]);
        assert_eq!(on("enforce", false), [(9, OnError::Fatal)]);
        assert_eq!(on("off", true), [(4, OnError::Fatal)]);
        assert_eq!(on("off", false), []);
        assert_eq!(on("compat", true), [(13, OnError::Fatal)]);

        // A failing batch (compat + masquerade) fails the online, and nothing stays.
        let mut c = common(Action::Online, "vif", &[("ip", "10.0.5.1")]);
        c.antispoof = Mode::Compat;
        let plan = plan_nat(&c, &nat(true), &observed(&l)).unwrap();
        let mut links = l.clone();
        let mut parts = crate::fakes::Parts::default();
        parts.fw.fail = Some("nft: boom".into());
        let err = apply(&plan, &mut parts.system(&mut links), false).unwrap_err();
        assert_eq!(err.message, "nft: boom");
        assert!(parts.fw.chains.is_empty() && links.log.is_empty());
        // A later failure undoes the batch with one removal batch.
        parts.fw.fail = None;
        links.fail = Some(|c| matches!(c, LinkChange::AddRoute(_)).then_some(libc::EIO));
        apply(&plan, &mut parts.system(&mut links), false).unwrap_err();
        assert!(parts.fw.chains.is_empty(), "{:?}", parts.fw.chains);
        assert_eq!(parts.fw.applied.len(), 2, "the batch and its undo");
    }

    #[test]
    fn ovs_bridge_syntax_and_plan() {
        assert_eq!(
            parse_ovs_bridge("br0"),
            Some(OvsBridge {
                bridge: "br0".into(),
                tag: None,
                trunks: vec![]
            })
        );
        assert_eq!(
            parse_ovs_bridge("br0.10:20:30"),
            Some(OvsBridge {
                bridge: "br0".into(),
                tag: Some(10),
                trunks: vec![20, 30]
            })
        );
        assert_eq!(
            parse_ovs_bridge("br0:5"),
            Some(OvsBridge {
                bridge: "br0".into(),
                tag: None,
                trunks: vec![5]
            })
        );
        for bad in ["", ".10", "br0.", "br0.x", "br0:", "br0:1:", "br0.1.2"] {
            assert_eq!(parse_ovs_bridge(bad), None, "{bad}");
        }
        let c = common(Action::Online, "vif", &[]);
        let f = OvsFacts {
            bridge: "ovsbr.7".into(),
            vm_name: "my \"vm\"".into(),
            vm_uuid: "u-1".into(),
            mac: "00:16:3e:00:00:01".into(),
        };
        let plan = plan_ovs(&c, &f, &observed(&host())).unwrap();
        let Some(Step::Ovs { args, undo }) =
            plan.steps.iter().find(|s| matches!(s, Step::Ovs { .. }))
        else {
            panic!()
        };
        assert_eq!(
            args[..9].join(" "),
            "--timeout=30 -- --if-exists del-port vif5.0 -- add-port ovsbr vif5.0"
        );
        assert_eq!(args[9], "tag=7");
        assert!(args.contains(&r#"external-ids:"xen-vm-name"="my \"vm\"""#.to_string()));
        assert_eq!(
            undo.as_ref().unwrap().join(" "),
            "--timeout=30 -- --if-exists del-port vif5.0"
        );
        assert_eq!(
            plan_ovs(
                &c,
                &OvsFacts {
                    bridge: "a.b".into(),
                    ..f
                },
                &observed(&host())
            )
            .unwrap_err()
            .message(),
            "No valid bridge was specified"
        );
    }

    /// A whole run through the hotplug runtime with every adapter faked.
    fn run_fake(
        argv: &[&str],
        env: &[(&str, &str)],
        xs: &MemXs,
        links: &mut RecordingLinks,
        fw: &mut FakeFirewall,
    ) -> ExitCode {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("xenplug.toml");
        std::fs::write(&cfg, "").unwrap();
        let d = dir.path().to_str().unwrap();
        let cfg = cfg.to_str().unwrap();
        // Defaults first: the caller's variables override them.
        let mut all: Vec<(&str, &str)> = vec![
            ("XENPLUG_LOG_FILE", ""),
            ("XENPLUG_SYSLOG", "false"),
            ("XENPLUG_CONFIG", cfg),
            ("XENPLUG_LOCK_DIR", d),
            ("XENPLUG_SCRIPTS_DIR", d),
            ("XENPLUG_STATE_DIR", d),
        ];
        all.extend(env.iter().copied());
        let raw = Raw::new(argv, &all);
        let script = match argv[0] {
            "vif-route" => Script::Route,
            _ => Script::Bridge,
        };
        let xs2 = xs.clone();
        run_with(
            argv[0],
            raw,
            Action::VIF,
            move |_| Ok(Box::new(xs2)),
            |ctx| {
                let mut sysctl = FakeSysctl::default();
                let mut ovs = FakeOvs::default();
                let mut dhcp = FakeDhcp::default();
                body_with(
                    script,
                    ctx,
                    Backends {
                        links,
                        sysctl: &mut sysctl,
                        firewall: fw,
                        ovs: &mut ovs,
                        dhcp: &mut dhcp,
                    },
                )
            },
        )
    }

    /// `vif5.0` of domain 5 as the toolstack names it.
    const VIF5: [(&str, &str); 2] = [("vif", "vif5.0"), ("XENBUS_PATH", "backend/vif/5/0")];

    /// One host for whole `vif-bridge` runs: its xenstore, links and firewall, all fake.
    struct Bench {
        xs: MemXs,
        links: RecordingLinks,
        fw: FakeFirewall,
    }

    impl Bench {
        /// [`host`], with `backend/vif/5/0/bridge` set to `bridge`.
        fn new(bridge: &str) -> Self {
            let xs = MemXs::default();
            xs.set("backend/vif/5/0/bridge", bridge);
            Bench {
                xs,
                links: host(),
                fw: FakeFirewall::default(),
            }
        }

        /// `vif-bridge COMMAND type_if=vif` with `env`.
        fn bridge(&mut self, command: &str, env: &[(&str, &str)]) -> ExitCode {
            run_fake(
                &["vif-bridge", command, "type_if=vif"],
                env,
                &self.xs,
                &mut self.links,
                &mut self.fw,
            )
        }

        /// The backend node `backend/vif/5/0/<key>`.
        fn node(&self, key: &str) -> Option<String> {
            self.xs.value(&format!("backend/vif/5/0/{key}"))
        }
    }

    #[test]
    fn whole_run_online_offline_with_fakes() {
        let mut b = Bench::new("xenbr0");
        b.xs.set("backend/vif/5/0/ip", "10.0.0.5");
        assert_eq!(b.bridge("online", &VIF5), ExitCode::SUCCESS);
        assert_eq!(b.node("hotplug-status").as_deref(), Some("connected"));
        assert_eq!(
            b.xs.value("/local/domain/5/device/vif/0/mtu").as_deref(),
            Some("1400")
        );
        assert_eq!(b.links.get("vif5.0").master, Some(2));
        assert_eq!(b.fw.chains, vec!["vif5.0".to_string()]);
        assert_eq!(b.bridge("offline", &VIF5), ExitCode::SUCCESS);
        assert_eq!(b.links.get("vif5.0").master, None);
        assert!(b.fw.chains.is_empty());
        // Idempotent.
        assert_eq!(b.bridge("offline", &VIF5), ExitCode::SUCCESS);
        // The no-op combination touches nothing.
        let before = b.links.log.len();
        let rc = b.bridge("add", &VIF5);
        assert_eq!((rc, b.links.log.len()), (ExitCode::SUCCESS, before));
    }

    #[test]
    fn whole_run_error_contract_and_rollback() {
        let mut b = Bench::new("nobr");
        assert_eq!(b.bridge("online", &VIF5), ExitCode::FAILURE);
        assert_eq!(
            b.node("hotplug-error").as_deref(),
            Some("Could not find bridge device nobr")
        );
        assert_eq!(b.node("hotplug-status").as_deref(), Some("error"));
        assert!(b.links.log.is_empty());
        // A failure late in online rolls everything back.
        b.xs.set("backend/vif/5/0/bridge", "xenbr0");
        b.links.fail =
            Some(|c| matches!(c, LinkChange::SetUp { up: true, .. }).then_some(libc::EIO));
        assert_eq!(b.bridge("online", &VIF5), ExitCode::FAILURE);
        let v = b.links.get("vif5.0");
        assert_eq!(
            (v.master, v.mtu, v.mac),
            (None, 1500, Some([0, 0x16, 0x3e, 0, 0, 3]))
        );
        assert_eq!(b.xs.value("/local/domain/5/device/vif/0/mtu"), None);
        assert_eq!(b.node("hotplug-status").as_deref(), Some("error"));
    }

    #[test]
    fn whole_run_runs_post_hooks_with_the_device() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("vif-post.d");
        std::fs::create_dir(&hooks).unwrap();
        let out = dir.path().join("seen");
        let hook = hooks.join("10-record.hook");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\necho \"$command $dev $bridge $type_if\" >> {}\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut b = Bench::new("xenbr0");
        let d = dir.path().to_str().unwrap();
        let env = [VIF5[0], VIF5[1], ("XENPLUG_SCRIPTS_DIR", d)];
        assert_eq!(b.bridge("online", &env), ExitCode::SUCCESS);
        assert_eq!(b.bridge("offline", &env), ExitCode::SUCCESS);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "online vif5.0 xenbr0 vif\noffline vif5.0 xenbr0 vif\n"
        );
    }

    #[test]
    fn whole_run_bad_input_through_the_error_contract() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("backend/vif/5/0/ip", "10.0.0.1 nonsense")],
                "invalid address 'nonsense' in backend/vif/5/0/ip",
            ),
            (
                &[("backend/vif/5/0/rate", "10,x")],
                "invalid rate '10,x' (expected <bytes>,<usecs>) in backend/vif/5/0/rate",
            ),
            (
                &[("backend/vif/5/0/mtu", "-1")],
                "invalid mtu '-1' in backend/vif/5/0/mtu",
            ),
            (
                &[("backend/vif/5/0/bridge", "br/0")],
                "Could not find bridge device br/0",
            ),
            (
                &[("backend/vif/5/0/vifname", "much-too-long-name")],
                "invalid interface name 'much-too-long-name'",
            ),
        ];
        for (nodes, msg) in cases {
            let mut b = Bench::new("xenbr0");
            for (k, v) in *nodes {
                b.xs.set(k, v);
            }
            assert_eq!(b.bridge("online", &VIF5), ExitCode::FAILURE, "{msg}");
            assert_eq!(b.node("hotplug-error").as_deref(), Some(*msg));
            assert_eq!(b.node("hotplug-status").as_deref(), Some("error"));
            assert!(b.links.log.is_empty(), "nothing touched for {msg}");
        }
        // A vif that does not exist.
        let mut b = Bench::new("xenbr0");
        let env = [("vif", "vif9.9"), ("XENBUS_PATH", "backend/vif/5/0")];
        assert_eq!(b.bridge("online", &env), ExitCode::FAILURE);
        assert_eq!(
            b.node("hotplug-error").as_deref(),
            Some("Cannot find interface vif9.9")
        );
        // No vif variable at all.
        assert_eq!(b.bridge("online", &VIF5[1..]), ExitCode::FAILURE);
        assert!(b
            .node("hotplug-error")
            .unwrap()
            .starts_with("vif: parameter null or not set"));
    }

    #[test]
    fn nat_requires_a_valid_mac_for_dhcp() {
        let c = common(Action::Online, "vif", &[]);
        let f = NatFacts {
            domid: 5,
            handle: 0,
            mac: Some("not-a-mac".into()),
            dhcp: true,
            masquerade: false,
        };
        assert_eq!(
            plan_nat(&c, &f, &observed(&host())).unwrap_err().message(),
            "xenstore-read backend/vif/5/0/mac failed."
        );
    }
}
