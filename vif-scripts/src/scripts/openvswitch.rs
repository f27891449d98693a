//! `vif-openvswitch`: the vif (or tap) becomes a port of an Open vSwitch bridge, with VLAN tag,
//! trunks and the VM's identity in `external-ids` (reference vif-openvswitch,
//! docs/hotplug-scripts.md#vif-openvswitch).
//!
//! Facts: the `bridge` node or variable (`bridge[.tag][:trunk…]`); for set-up the VM's `name`
//! and `uuid` (through `/local/domain/<frontend-id>/vm`) and `mac`; the device's links. Plan:
//! port set-up, antispoofing (vifs), ONE `ovs-vsctl` transaction, up; teardown: `del-port`,
//! down, rules.
//!
//! In a driver domain the VM's `vm` node and `/vm/<uuid>` are out of reach (libxl gives them to
//! dom0 and the guest only): the port then gets `attached-mac` but no `xen-vm-name` or
//! `xen-vm-uuid` (the reference's script, failing to read them there, sets neither and leaves
//! a `hotplug-error` behind). A missing node is still fatal, as in the reference.

use xenplug_hotplug::Failure;
use xenplug_netlink::links::LinkChange;

use super::{
    backend_node, fail, own_device, plan_firewall_down, plan_firewall_up, plan_port_setup, Gather,
    Planned, Reach, VifScript,
};
use crate::common::{Common, Observed};
use crate::types::{Plan, Step, TypeIf};

/// `vif-openvswitch`.
#[derive(Debug)]
pub struct OpenVswitch;

impl VifScript for OpenVswitch {
    const NAME: &'static str = "vif-openvswitch";
    const NODES: &'static [&'static str] = &["bridge", "frontend-id"];
    type Facts = OvsFacts;

    fn gather(g: &mut Gather<'_, '_>, c: &Common) -> Result<(OvsFacts, Observed), Failure> {
        let bridge = g
            .read(&backend_node(c, "bridge"))?
            .unwrap_or_else(|| g.var("bridge").unwrap_or("").to_string());
        let mut f = OvsFacts {
            bridge,
            ..Default::default()
        };
        if c.setup() {
            let fe = g.required(&backend_node(c, "frontend-id"))?;
            // A node out of reach is `None`; a missing or empty one is fatal (xenstore_read).
            let reach = |p: &str| -> Result<Option<String>, Failure> {
                match g.read_reach(p)? {
                    Reach::Read(Some(v)) if !v.is_empty() => Ok(Some(v)),
                    Reach::Read(_) => Err(fail(format!("xenstore-read {p} failed."))),
                    Reach::Denied => Ok(None),
                }
            };
            if let Some(vm) = reach(&format!("/local/domain/{fe}/vm"))? {
                f.vm_name = reach(&format!("{vm}/name"))?;
                f.vm_uuid = reach(&format!("{vm}/uuid"))?;
            }
            if f.vm_name.is_none() || f.vm_uuid.is_none() {
                g.info(format!(
                    "the VM's name and uuid of domain {fe} are out of this domain's reach (a \
                     driver domain): {} gets no xen-vm-name/xen-vm-uuid external-ids",
                    c.name
                ));
            }
            f.mac = g.required(&backend_node(c, "mac"))?;
        } else {
            f.port = match g.ovs_external_ids(&c.name) {
                Ok(None) => PortRow::Absent,
                Ok(Some(ids)) => PortRow::Ids(ids),
                Err(e) => PortRow::Unreadable(e),
            };
        }
        let obs = g.observe(&[&c.dev, &c.name], false)?;
        Ok((f, obs))
    }

    fn plan(c: &Common, f: &OvsFacts, obs: &Observed) -> Result<Planned, Failure> {
        Ok(Planned {
            plan: plan_ovs(c, f, obs)?,
            hook_vars: Vec::new(),
        })
    }
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

/// The external id that marks an Open vSwitch interface as this backend's: its value is the
/// backend path.
pub const BACKEND_ID: &str = "xenplug-backend";

/// What Open vSwitch has for the port (read for teardown).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PortRow {
    /// Not read (set-up).
    #[default]
    NotRead,
    /// No interface of that name.
    Absent,
    /// The interface's `external_ids`.
    Ids(std::collections::BTreeMap<String, String>),
    /// `ovs-vsctl` could not tell.
    Unreadable(String),
}

/// vif-openvswitch's own inputs (the identity values are read only for online/add, the port's
/// row only for offline/remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvsFacts {
    /// `bridge` node, else variable.
    pub bridge: String,
    /// `<vm>/name` (`None`: out of this domain's reach).
    pub vm_name: Option<String>,
    /// `<vm>/uuid` (`None`: out of this domain's reach).
    pub vm_uuid: Option<String>,
    /// `mac`.
    pub mac: String,
    /// The port's row, for teardown.
    pub port: PortRow,
}

/// True when teardown may delete the port named `c.name`: its interface carries this backend's
/// [`BACKEND_ID`], or (set up before ports were marked, or when `ovs-vsctl` cannot tell) it has
/// libxl's name for this backend's device and no other backend's mark.
fn port_is_ours(c: &Common, row: &PortRow) -> bool {
    match row {
        PortRow::NotRead | PortRow::Absent => false,
        PortRow::Ids(ids) => match ids.get(BACKEND_ID) {
            Some(b) => *b == c.backend,
            None => c.name == c.dev,
        },
        PortRow::Unreadable(_) => c.name == c.dev,
    }
}

/// `s` as a quoted ovs-vsctl string.
pub fn ovs_quote(s: &str) -> String {
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
            plan_firewall_up(c, &mut plan)?;
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
            ("xen-vm-name", f.vm_name.as_ref()),
            ("xen-vm-uuid", f.vm_uuid.as_ref()),
            ("attached-mac", Some(&f.mac)),
            (BACKEND_ID, Some(&c.backend)),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        {
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
        // Only this backend's port and device: never an interface that merely has the name.
        if port_is_ours(c, &f.port) {
            plan.push(Step::Ovs {
                args: del,
                undo: None,
            });
        }
        if let Some(l) = own_device(c, obs) {
            plan.link(LinkChange::SetUp {
                dev: l.name.clone(),
                up: false,
            });
        }
        if c.type_if == TypeIf::Vif {
            plan_firewall_down(c, obs, &mut plan);
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::testutil::*;

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
            vm_name: Some("my \"vm\"".into()),
            vm_uuid: Some("u-1".into()),
            mac: "00:16:3e:00:00:01".into(),
            port: PortRow::NotRead,
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
}
