//! `vif-nat`: the guest gets a private address behind a router address on the vif, is
//! masqueraded, and optionally gets a DHCP lease (reference vif-nat,
//! docs/hotplug-scripts.md#vif-nat).
//!
//! Facts: `frontend-id`, `handle` (the default address `10.<d/256>.<d%256>.<handle+1>/16`),
//! `mac` when DHCP is on, the `dhcp` and `nat_masquerade` variables; the device's links and
//! addresses. Plan: ONE nft batch (antispoofing and masquerading), a tap's rate, up, the router
//! address, the host route, `proxy_arp`, the dnsmasq host entry; teardown in reverse.

use std::net::{IpAddr, Ipv4Addr};

use xenplug_hotplug::Failure;
use xenplug_netlink::links::{DevRoute as Route, LinkChange};

use super::{
    backend_node, fail, firewall_up, has_firewall, plan_rate_down, plan_rate_up, plan_rename,
    require_dev, yes, Gather, Planned, VifScript,
};
use crate::common::{Common, Observed};
use crate::firewall;
use crate::types::{Net, NftBatch, OnError, Plan, Step};

/// `vif-nat`.
#[derive(Debug)]
pub struct Nat;

impl VifScript for Nat {
    const NAME: &'static str = "vif-nat";
    const NODES: &'static [&'static str] = &["frontend-id", "handle", "mac"];
    type Facts = NatFacts;

    fn gather(g: &mut Gather<'_, '_>, c: &Common) -> Result<(NatFacts, Observed), Failure> {
        let num = |g: &Gather<'_, '_>, k: &str| -> Result<u32, Failure> {
            let v = g.required(&backend_node(c, k))?;
            v.trim()
                .parse()
                .map_err(|_| fail(format!("invalid {k} '{v}' in {}", backend_node(c, k))))
        };
        let dhcp = yes(g.var("dhcp"), false);
        let f = NatFacts {
            domid: num(g, "frontend-id")?,
            handle: num(g, "handle")?,
            mac: if dhcp && c.setup() {
                Some(g.required(&backend_node(c, "mac"))?)
            } else {
                None
            },
            dhcp,
            masquerade: yes(g.var("nat_masquerade"), true),
        };
        let mut obs = g.observe(&[&c.dev, &c.name], false)?;
        obs.addrs = g.addresses()?;
        Ok((f, obs))
    }

    fn plan(c: &Common, f: &NatFacts, obs: &Observed) -> Result<Planned, Failure> {
        Ok(Planned {
            plan: plan_nat(c, f, obs)?,
            hook_vars: Vec::new(),
        })
    }
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
    NftBatch {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::scripts::testutil::*;
    use crate::types::Mode;
    use xenplug_netlink::links::LinkChange;

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
