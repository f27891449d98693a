//! The real [`Links`] adapter: a thin wrapper over the shared synchronous rtnetlink client
//! ([`xenplug_netlink::Client`]) that resolves device names to indexes. Ingress policing is the
//! client's tc support ([`xenplug_netlink::tc`]).

use xenplug_netlink::{Client, Create, RouteProtocol};

use crate::links::{IfAddr, Link, LinkChange, LinkError, Links, Route};

/// A connected rtnetlink socket.
///
/// Links read once are remembered and kept up to date with this adapter's own changes, so a
/// script asks the kernel about each link once (a `RTM_GETLINK` answer carries every attribute
/// and statistic of the link: a dozen of them cost more than the rest of a vif-bridge run).
/// A change that fails forgets the link, so the next read asks the kernel again.
#[derive(Debug)]
pub struct Netlink {
    client: Client,
    /// name → the link as last read, with this adapter's changes applied since.
    seen: std::collections::HashMap<String, Link>,
}

/// The client's error as a [`LinkError`] for the operation `op`.
fn link_error(op: String, e: xenplug_netlink::Error) -> LinkError {
    match e {
        xenplug_netlink::Error::Kernel(errno) => LinkError::from_errno(op, errno),
        xenplug_netlink::Error::Io { source, .. } => LinkError {
            op,
            errno: source.raw_os_error(),
            message: source.to_string(),
        },
        e @ xenplug_netlink::Error::Decode(_) => LinkError::other(op, e.to_string()),
    }
}

impl Netlink {
    /// Open a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, LinkError> {
        let client = Client::open().map_err(|e| link_error("open rtnetlink socket".into(), e))?;
        Ok(Netlink {
            client,
            seen: Default::default(),
        })
    }

    fn index(&mut self, name: &str) -> Result<u32, LinkError> {
        match self.link(name)? {
            Some(l) => Ok(l.index),
            None => Err(LinkError::from_errno(
                format!("find link {name}"),
                libc::ENODEV,
            )),
        }
    }

    fn route(&mut self, r: &Route) -> Result<xenplug_netlink::Route, LinkError> {
        Ok(xenplug_netlink::Route {
            oif: self.index(&r.dev)?,
            dst: r.dst,
            prefix: r.prefix,
            via: None,
            src: r.src,
            metric: Some(r.metric),
            protocol: RouteProtocol::Boot,
        })
    }

    /// Apply `change` with the client (no error mapping).
    fn apply(
        &mut self,
        change: &LinkChange,
    ) -> Result<Result<(), xenplug_netlink::Error>, LinkError> {
        Ok(match change {
            LinkChange::Rename { dev, to } => {
                let index = self.index(dev)?;
                self.client.set_name(index, to)
            }
            LinkChange::SetMac { dev, mac } => {
                let index = self.index(dev)?;
                self.client.set_mac(index, *mac)
            }
            LinkChange::SetMtu { dev, mtu } => {
                let index = self.index(dev)?;
                self.client.set_mtu(index, *mtu)
            }
            LinkChange::SetUp { dev, up } => {
                let index = self.index(dev)?;
                self.client.set_up(index, *up)
            }
            LinkChange::SetMaster { dev, master } => {
                let ctl = match master {
                    Some(b) => Some(self.index(b)?),
                    None => None,
                };
                let index = self.index(dev)?;
                self.client.set_master(index, ctl)
            }
            LinkChange::AddAddr { dev, addr, prefix } => {
                let index = self.index(dev)?;
                self.client
                    .add_address(index, *addr, *prefix, Create::Exclusive)
            }
            LinkChange::DelAddr { dev, addr, prefix } => {
                let index = self.index(dev)?;
                self.client.del_address(index, *addr, *prefix)
            }
            LinkChange::FlushAddrs { dev } => {
                let index = self.index(dev)?;
                // Delete IPv4 secondaries before primaries would be deleted with them anyway;
                // deleting a primary also drops its secondaries, so tolerate "gone" here.
                for a in self.addresses(Some(index))? {
                    let del = LinkChange::DelAddr {
                        dev: dev.clone(),
                        addr: a.addr,
                        prefix: a.prefix,
                    };
                    match self.change(&del) {
                        Err(e) if !e.is_gone() => return Err(e),
                        _ => {}
                    }
                }
                Ok(())
            }
            LinkChange::AddRoute(r) => {
                let r = self.route(r)?;
                self.client.add_route(&r, Create::Exclusive)
            }
            LinkChange::DelRoute(r) => {
                let r = self.route(r)?;
                self.client.del_route(&r)
            }
            LinkChange::AddProxyNeigh { dev, addr } => {
                let index = self.index(dev)?;
                self.client.add_proxy_neighbour(index, *addr)
            }
            LinkChange::DelProxyNeigh { dev, addr } => {
                let index = self.index(dev)?;
                self.client.del_proxy_neighbour(index, *addr)
            }
            LinkChange::SetIngressRate { dev, rate, burst } => {
                let index = self.index(dev)?;
                self.client.set_ingress_police(index, *rate, *burst)
            }
            LinkChange::ClearIngressRate { dev } => {
                let index = self.index(dev)?;
                match self.client.clear_ingress(index) {
                    Ok(true) => Ok(()),
                    // No ingress qdisc: "already gone" for the teardown.
                    Ok(false) => Err(xenplug_netlink::Error::Kernel(libc::ENOENT)),
                    Err(e) => Err(e),
                }
            }
        })
    }
}

fn to_link(l: xenplug_netlink::Link) -> Link {
    Link {
        index: l.index,
        name: l.name,
        mac: l.mac,
        mtu: l.mtu,
        up: l.up,
        master: l.master,
        kind: l.kind,
    }
}

impl Netlink {
    /// Bring the remembered copy of the changed link up to date (or forget it when the change
    /// failed or its effect is not modelled here).
    fn remember(&mut self, change: &LinkChange, ok: bool) {
        let dev = match change {
            LinkChange::Rename { dev, .. }
            | LinkChange::SetMac { dev, .. }
            | LinkChange::SetMtu { dev, .. }
            | LinkChange::SetUp { dev, .. }
            | LinkChange::SetMaster { dev, .. } => dev,
            // Addresses, routes and neighbours are not part of `Link`.
            _ => return,
        };
        let Some(mut link) = self.seen.remove(dev) else {
            return;
        };
        if !ok {
            return;
        }
        match change {
            LinkChange::Rename { to, .. } => {
                self.seen.remove(to);
                link.name = to.clone();
            }
            LinkChange::SetMac { mac, .. } => link.mac = Some(*mac),
            LinkChange::SetMtu { mtu, .. } => link.mtu = *mtu,
            LinkChange::SetUp { up, .. } => link.up = *up,
            LinkChange::SetMaster { master, .. } => {
                link.master = match master {
                    None => None,
                    Some(b) => match self.seen.get(b) {
                        Some(b) => Some(b.index),
                        // Unknown controller index: ask the kernel next time.
                        None => return,
                    },
                }
            }
            _ => return,
        }
        self.seen.insert(link.name.clone(), link);
    }
}

impl Links for Netlink {
    fn link(&mut self, name: &str) -> Result<Option<Link>, LinkError> {
        if let Some(l) = self.seen.get(name) {
            return Ok(Some(l.clone()));
        }
        let link = self
            .client
            .link(name)
            .map_err(|e| link_error(format!("get link {name}"), e))?
            .map(to_link);
        if let Some(l) = &link {
            self.seen.insert(l.name.clone(), l.clone());
        }
        Ok(link)
    }

    fn links(&mut self) -> Result<Vec<Link>, LinkError> {
        let links = self
            .client
            .links()
            .map_err(|e| link_error("list links".into(), e))?;
        Ok(links.into_iter().map(to_link).collect())
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<IfAddr>, LinkError> {
        let addrs = match index {
            Some(i) => self.client.addresses_of(i),
            None => self.client.addresses(),
        }
        .map_err(|e| link_error("list addresses".into(), e))?;
        Ok(addrs
            .into_iter()
            .filter(|a| index.is_none() || index == Some(a.index))
            .map(|a| IfAddr {
                index: a.index,
                addr: a.addr,
                prefix: a.prefix,
                secondary: a.secondary,
            })
            .collect())
    }

    fn change(&mut self, change: &LinkChange) -> Result<(), LinkError> {
        let result = match self.apply(change) {
            Ok(r) => r.map_err(|e| {
                let mut err = link_error(change.to_string(), e);
                if matches!(change, LinkChange::SetIngressRate { .. })
                    && err.errno == Some(libc::ENOENT)
                {
                    // The kernel's answer when a tc module is missing.
                    err.message = format!(
                        "{} (the kernel lacks tc ingress policing: sch_ingress, cls_matchall, act_police)",
                        err.message
                    );
                }
                err
            }),
            Err(e) => Err(e),
        };
        self.remember(change, result.is_ok());
        result
    }
}
