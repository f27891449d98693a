//! The applier: [`apply`] carries a [`Plan`] (an ordered list of [`Step`]s: link changes and tc
//! ingress policing, sysctls, one nftables batch, xenstore writes, an `ovs-vsctl` transaction, a
//! DHCP host entry) out through the narrow [`System`] traits, passed in as arguments:
//!
//! * set-up (`online`/`add`): a [`OnError::Fatal`] step that fails stops the plan and every step
//!   done so far is undone in reverse order (the undo is computed from the state observed just
//!   before each step), so nothing half-configured is left behind;
//! * teardown (`offline`/`remove`): every step runs whatever happens; "already gone" is a note,
//!   other failures are collected and reported together at the end.

use xenplug_netlink::links::{LinkChange, Links};

use crate::types::{NftBatch, OnError, Plan, Step, StepError};

/// Applies nftables batches.
pub trait Firewall {
    /// Apply a batch atomically.
    fn apply(&mut self, batch: &NftBatch) -> Result<(), StepError>;
    /// The elements of set `set` of table `family table`, as `nft` reads them ("already gone"
    /// when there is no such set).
    fn elements(&mut self, family: &str, table: &str, set: &str) -> Result<Vec<String>, StepError>;
}

/// Sysctl access (paths relative to /proc/sys).
pub trait Sysctl {
    /// Read a value (trimmed).
    fn read(&mut self, key: &str) -> Result<String, StepError>;
    /// Write a value.
    fn write(&mut self, key: &str, value: &str) -> Result<(), StepError>;
}

/// Xenstore writes and reads needed to apply and roll back.
pub trait XsWrite {
    /// Read a node.
    fn read(&mut self, path: &str) -> Result<Option<String>, StepError>;
    /// Write a node.
    fn write(&mut self, path: &str, value: &str) -> Result<(), StepError>;
    /// Remove a node.
    fn rm(&mut self, path: &str) -> Result<(), StepError>;
}

/// Open vSwitch's database client.
pub trait Ovs {
    /// Run `ovs-vsctl ARGS…`.
    fn vsctl(&mut self, args: &[String]) -> Result<(), StepError>;
    /// The `external_ids` of interface `name` (`None`: no such interface).
    fn external_ids(
        &mut self,
        name: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, StepError>;
}

/// The DHCP server's per-vif host entries.
pub trait Dhcp {
    /// Set (`Some`) or remove (`None`) the entry `key`, then make the server reload.
    fn set_host(&mut self, key: &str, line: Option<&str>) -> Result<(), StepError>;
    /// The current entry `key`.
    fn host(&mut self, key: &str) -> Result<Option<String>, StepError>;
}

/// Everything the applier changes, passed in as narrow traits.
#[allow(missing_debug_implementations)]
pub struct System<'a> {
    /// Links, addresses, routes, neighbours.
    pub links: &'a mut dyn Links,
    /// /proc/sys.
    pub sysctl: &'a mut dyn Sysctl,
    /// nftables.
    pub firewall: &'a mut dyn Firewall,
    /// xenstore.
    pub xs: &'a mut dyn XsWrite,
    /// Open vSwitch.
    pub ovs: &'a mut dyn Ovs,
    /// DHCP hosts.
    pub dhcp: &'a mut dyn Dhcp,
}

/// What happened while applying a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Steps done, in order (for logs and tests).
    pub done: Vec<String>,
    /// Non-fatal problems (ignored failures, "already gone", rollback failures).
    pub notes: Vec<String>,
}

/// Why applying a plan failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    /// The error message for `hotplug-error`.
    pub message: String,
    /// What was done and noted, including the rollback.
    pub report: Report,
}

/// Apply `plan`. `teardown` selects keep-going semantics (see the module docs).
pub fn apply(plan: &Plan, sys: &mut System<'_>, teardown: bool) -> Result<Report, ApplyError> {
    let mut report = Report::default();
    let mut undo: Vec<Step> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for step in &plan.steps {
        let inverse = if teardown {
            None
        } else {
            inverse_of(step, sys)
        };
        match run(step, sys) {
            Ok(()) => {
                report.done.push(step.to_string());
                if let Some(inv) = inverse {
                    undo.push(inv);
                }
            }
            Err(e) if teardown => {
                if e.gone {
                    report
                        .notes
                        .push(format!("{step}: already gone ({})", e.message));
                } else {
                    report.notes.push(format!("{step}: {}", e.message));
                    failures.push(e.message);
                }
            }
            Err(e) if e.exists && on_error(step) == OnError::FatalUnlessExists => {
                report.notes.push(format!("{step}: already there"));
            }
            Err(e) if on_error(step) == OnError::Ignore => {
                report
                    .notes
                    .push(format!("{step} failed (ignored): {}", e.message));
            }
            Err(e) => {
                for inv in undo.iter().rev() {
                    match run(inv, sys) {
                        Ok(()) => report.done.push(format!("rollback: {inv}")),
                        Err(re) => report.notes.push(format!("rollback {inv}: {}", re.message)),
                    }
                }
                return Err(ApplyError {
                    message: e.message,
                    report,
                });
            }
        }
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(ApplyError {
            message: failures.join("; "),
            report,
        })
    }
}

fn on_error(step: &Step) -> OnError {
    match step {
        Step::Link(_, o) | Step::Nft(_, o) => *o,
        Step::Sysctl { on_error, .. } | Step::XsWrite { on_error, .. } => *on_error,
        Step::XsRm { .. } | Step::Ovs { .. } | Step::Dhcp { .. } => OnError::Fatal,
    }
}

fn run(step: &Step, sys: &mut System<'_>) -> Result<(), StepError> {
    match step {
        Step::Link(c, _) => sys.links.change(c).map_err(StepError::from),
        Step::Sysctl { key, value, .. } => sys.sysctl.write(key, value),
        Step::Nft(b, _) => sys.firewall.apply(b),
        Step::XsWrite { path, value, .. } => sys.xs.write(path, value),
        Step::XsRm { path } => sys.xs.rm(path),
        Step::Ovs { args, .. } => sys.ovs.vsctl(args),
        Step::Dhcp { key, line } => sys.dhcp.set_host(key, line.as_deref()),
    }
}

/// The step that undoes `step`, from the state observed now (before `step` runs).
fn inverse_of(step: &Step, sys: &mut System<'_>) -> Option<Step> {
    let lenient = |c| Some(Step::Link(c, OnError::Ignore));
    match step {
        Step::Link(c, _) => {
            let dev_of = |c: &LinkChange| match c {
                LinkChange::Rename { dev, .. }
                | LinkChange::SetAlias { dev, .. }
                | LinkChange::SetMac { dev, .. }
                | LinkChange::SetMtu { dev, .. }
                | LinkChange::SetUp { dev, .. }
                | LinkChange::SetMaster { dev, .. } => Some(dev.clone()),
                _ => None,
            };
            let before = match dev_of(c) {
                Some(d) => sys.links.link(&d).ok().flatten(),
                None => None,
            };
            match c {
                LinkChange::Rename { dev, to } => lenient(LinkChange::Rename {
                    dev: to.clone(),
                    to: dev.clone(),
                }),
                LinkChange::SetAlias { dev, .. } => lenient(LinkChange::SetAlias {
                    dev: dev.clone(),
                    alias: before?.alias.unwrap_or_default(),
                }),
                LinkChange::SetMac { dev, .. } => before?.mac.map(|mac| {
                    Step::Link(
                        LinkChange::SetMac {
                            dev: dev.clone(),
                            mac,
                        },
                        OnError::Ignore,
                    )
                }),
                LinkChange::SetMtu { dev, .. } => lenient(LinkChange::SetMtu {
                    dev: dev.clone(),
                    mtu: before?.mtu,
                }),
                LinkChange::SetUp { dev, .. } => lenient(LinkChange::SetUp {
                    dev: dev.clone(),
                    up: before?.up,
                }),
                LinkChange::SetMaster { dev, .. } => {
                    let old = before?.master;
                    let name = match old {
                        Some(idx) => sys
                            .links
                            .links()
                            .ok()?
                            .into_iter()
                            .find(|l| l.index == idx)
                            .map(|l| l.name),
                        None => None,
                    };
                    lenient(LinkChange::SetMaster {
                        dev: dev.clone(),
                        master: name,
                    })
                }
                LinkChange::AddAddr { dev, addr, prefix } => lenient(LinkChange::DelAddr {
                    dev: dev.clone(),
                    addr: *addr,
                    prefix: *prefix,
                }),
                LinkChange::AddRoute(r) => lenient(LinkChange::DelRoute(r.clone())),
                LinkChange::AddProxyNeigh { dev, addr } => lenient(LinkChange::DelProxyNeigh {
                    dev: dev.clone(),
                    addr: *addr,
                }),
                // A fresh tap has no ingress qdisc: undo removes ours.
                LinkChange::SetIngressRate { dev, .. } => {
                    lenient(LinkChange::ClearIngressRate { dev: dev.clone() })
                }
                // Flushing a fresh vif's addresses and deletions are not undone.
                LinkChange::FlushAddrs { .. }
                | LinkChange::DelAddr { .. }
                | LinkChange::DelRoute(_)
                | LinkChange::DelProxyNeigh { .. }
                | LinkChange::ClearIngressRate { .. } => None,
            }
        }
        Step::Sysctl { key, .. } => {
            let old = sys.sysctl.read(key).ok()?;
            Some(Step::Sysctl {
                key: key.clone(),
                value: old,
                on_error: OnError::Ignore,
            })
        }
        Step::Nft(b, _) => b.undo.clone().map(|u| Step::Nft(*u, OnError::Ignore)),
        Step::XsWrite { path, .. } => match sys.xs.read(path) {
            Ok(Some(old)) => Some(Step::XsWrite {
                path: path.clone(),
                value: old,
                on_error: OnError::Ignore,
            }),
            // The node did not exist: undo removes it.
            Ok(None) => Some(Step::XsRm { path: path.clone() }),
            Err(_) => None,
        },
        Step::XsRm { path } => match sys.xs.read(path) {
            Ok(Some(old)) => Some(Step::XsWrite {
                path: path.clone(),
                value: old,
                on_error: OnError::Ignore,
            }),
            _ => None,
        },
        Step::Ovs { undo, .. } => undo.clone().map(|args| Step::Ovs { args, undo: None }),
        Step::Dhcp { key, .. } => {
            let old = sys.dhcp.host(key).ok()?;
            Some(Step::Dhcp {
                key: key.clone(),
                line: old,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::Parts;
    use xenplug_netlink::fake::RecordingLinks;
    use xenplug_netlink::links::LinkChange;

    #[test]
    fn failed_setup_rolls_back_in_reverse() {
        let mut links = RecordingLinks::default();
        links.add("br0", Some("bridge")).add("vif1.0", Some("veth"));
        links.fail =
            Some(|c| matches!(c, LinkChange::SetUp { up: true, .. }).then_some(libc::EPERM));
        let mut parts = Parts::default();
        let mut plan = Plan::default();
        plan.link(LinkChange::SetMtu {
            dev: "vif1.0".into(),
            mtu: 1400,
        })
        .push(Step::XsWrite {
            path: "/fe/mtu".into(),
            value: "1400".into(),
            on_error: OnError::Fatal,
        })
        .link(LinkChange::SetMaster {
            dev: "vif1.0".into(),
            master: Some("br0".into()),
        })
        .link(LinkChange::SetUp {
            dev: "vif1.0".into(),
            up: true,
        });
        let err = {
            let mut sys = parts.system(&mut links);
            apply(&plan, &mut sys, false).unwrap_err()
        };
        assert!(
            err.message.contains("Operation not permitted"),
            "{}",
            err.message
        );
        let l = links.get("vif1.0");
        assert_eq!((l.mtu, l.master), (1500, None));
        assert_eq!(parts.xs.get("/fe/mtu"), None);
        assert_eq!(
            err.report
                .done
                .iter()
                .filter(|d| d.starts_with("rollback"))
                .count(),
            3,
            "{:?}",
            err.report
        );
    }

    #[test]
    fn teardown_keeps_going_and_tolerates_gone() {
        let mut links = RecordingLinks::default();
        links.add("vif1.0", Some("veth"));
        links.fail = Some(|c| matches!(c, LinkChange::SetUp { .. }).then_some(libc::EPERM));
        let mut parts = Parts::default();
        let mut plan = Plan::default();
        plan.link(LinkChange::SetUp {
            dev: "vif1.0".into(),
            up: false,
        })
        .link(LinkChange::SetMaster {
            dev: "gone0".into(),
            master: None,
        })
        .link(LinkChange::SetMtu {
            dev: "vif1.0".into(),
            mtu: 1000,
        });
        let mut sys = parts.system(&mut links);
        let err = apply(&plan, &mut sys, true).unwrap_err();
        assert!(err.message.contains("not permitted"));
        assert!(err.report.notes.iter().any(|n| n.contains("already gone")));
        assert_eq!(err.report.done, vec!["set vif1.0 mtu 1000".to_string()]);
    }
}
