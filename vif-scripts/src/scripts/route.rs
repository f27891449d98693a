//! `vif-route`: the guest is reached through a host route on the vif, with dom0's address on
//! it and proxy ARP (reference vif-route, docs/hotplug-scripts.md#vif-route).
//!
//! Facts: `netdev` (default `eth0`) and its primary IPv4 address; the device's links and
//! addresses. Plan: dom0's address on the vif, up, `proxy_arp`, one route per `ip` entry
//! (metric 1 for taps, 2 for vifs; IPv6 hosts also get a proxy neighbour on `netdev`), rules,
//! a tap's rate; teardown in reverse.

use std::net::IpAddr;

use xenplug_hotplug::Failure;
use xenplug_netlink::links::{DevRoute as Route, LinkChange};

use super::{
    fail, plan_firewall_down, plan_firewall_up, plan_rate_down, plan_rate_up, plan_rename,
    require_dev, Gather, Planned, VifScript,
};
use crate::common::{Common, Observed};
use crate::types::{OnError, Plan, Step, TypeIf};

/// `vif-route`.
#[derive(Debug)]
pub struct RouteScript;

impl VifScript for RouteScript {
    const NAME: &'static str = "vif-route";
    const NODES: &'static [&'static str] = &[];
    type Facts = RouteFacts;

    fn gather(g: &mut Gather<'_, '_>, c: &Common) -> Result<(RouteFacts, Observed), Failure> {
        let netdev = g
            .var("netdev")
            .filter(|s| !s.is_empty())
            .unwrap_or("eth0")
            .to_string();
        let mut obs = g.observe(&[&c.dev, &c.name, &netdev], false)?;
        obs.addrs = g.addresses()?;
        let f = RouteFacts {
            netdev,
            program: g.program().to_string(),
        };
        Ok((f, obs))
    }

    fn plan(c: &Common, f: &RouteFacts, obs: &Observed) -> Result<Planned, Failure> {
        Ok(Planned {
            plan: plan_route(c, f, obs)?,
            hook_vars: Vec::new(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::testutil::*;

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
}
