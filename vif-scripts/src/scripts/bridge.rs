//! `vif-bridge`: the vif (or tap) becomes a port of a Linux bridge (reference vif-bridge,
//! docs/hotplug-scripts.md#vif-bridge).
//!
//! Facts: the `bridge` node (else the `bridge` variable), the `mtu` node; the links of the
//! device, its new name and the bridge (every link when no bridge is named: the first bridge is
//! taken). Plan: port set-up (down, MAC `fe:ff:…`, flush), antispoofing, a tap's rate, MTU (and
//! the frontend's `mtu` node for a vif), enslave, up; teardown: down, release, rate, rules.

use xenplug_hotplug::Failure;
use xenplug_netlink::links::LinkChange;

use super::{
    backend_node, fail, own_device, plan_firewall_down, plan_firewall_up, plan_port_setup,
    plan_rate_down, plan_rate_up, Gather, Planned, VifScript,
};
use crate::common::{Common, Observed};
use crate::types::{OnError, Plan, Step, TypeIf};

/// `vif-bridge`.
#[derive(Debug)]
pub struct Bridge;

impl VifScript for Bridge {
    const NAME: &'static str = "vif-bridge";
    const NODES: &'static [&'static str] = &["bridge", "mtu"];
    type Facts = BridgeFacts;

    fn gather(g: &mut Gather<'_, '_>, c: &Common) -> Result<(BridgeFacts, Observed), Failure> {
        let bridge = g
            .read(&backend_node(c, "bridge"))?
            .unwrap_or_else(|| g.var("bridge").unwrap_or("").to_string());
        let f = BridgeFacts {
            bridge,
            mtu: g.read(&backend_node(c, "mtu"))?,
        };
        let mut obs = g.observe(&[&c.dev, &c.name, &f.bridge], f.bridge.is_empty())?;
        // The legacy `xenbrN` → `ethN` translation needs `ethN` only when `xenbrN` is missing.
        if !f.bridge.is_empty() && obs.get(&f.bridge).is_none() {
            if let Some(n) = f.bridge.strip_prefix("xenbr") {
                if let Some(l) = g.link(&format!("eth{n}"))? {
                    obs.links.push(l);
                }
            }
        }
        Ok((f, obs))
    }

    fn plan(c: &Common, f: &BridgeFacts, obs: &Observed) -> Result<Planned, Failure> {
        let (plan, br) = plan_bridge(c, f, obs)?;
        Ok(Planned {
            plan,
            hook_vars: vec![("bridge", br)],
        })
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
        plan_firewall_up(c, &mut plan)?;
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
            // The frontend's `mtu` node, as the reference's set_mtu writes it. libxl (4.17)
            // writes that node itself with the vif's configured MTU (1500 by default), owned by
            // the backend domain and read-only for the guest, so dom0 and a driver domain may
            // both rewrite it (with the bridge's MTU when no `mtu` was configured). A toolstack
            // that leaves the node to the guest makes the write fail for a driver domain
            // (EACCES): that is a warning, and the guest keeps the toolstack's MTU.
            if c.type_if == TypeIf::Vif {
                if let Some(fe) = &c.frontend {
                    plan.push(Step::XsWrite {
                        path: format!("{fe}/mtu"),
                        value: mtu.to_string(),
                        on_error: OnError::Ignore,
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
        // Only the device this backend set up: never an interface that merely has its name.
        if let Some(l) = own_device(c, obs) {
            plan.link(LinkChange::SetUp {
                dev: l.name.clone(),
                up: false,
            });
            if l.master.is_some() {
                plan.link(LinkChange::SetMaster {
                    dev: l.name.clone(),
                    master: None,
                });
            }
        }
        plan_rate_down(c, obs, &mut plan);
        plan_firewall_down(c, obs, &mut plan);
        Ok((plan, br))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::scripts::testutil::*;
    use crate::types::OnError;

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
                "set vif5.0 alias \"xenplug vif5.0\"",
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
        assert_eq!(text[0], "set vif5.0 alias \"xenplug vif5.0\"");
        assert_eq!(text[2], "rename vif5.0 to web0");
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
                "set vif5.0-emu alias \"xenplug vif5.0-emu\"",
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
}
