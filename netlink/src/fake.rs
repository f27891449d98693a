//! [`RecordingLinks`], the recording fake behind the same [`Links`] trait as [`KernelLinks`]
//! (feature `fake`; for tests of planners and appliers in other crates).
//!
//! [`KernelLinks`]: crate::links::KernelLinks

use std::net::IpAddr;

use crate::links::{DevRoute, LinkChange, LinkError, Links};
use crate::{Address, Link};

/// An in-memory model of links that records every change and can be told to fail one.
///
/// It models enough of the kernel for the planners and the applier: renames, aliases, MAC, MTU, up/down,
/// masters, addresses, routes, proxy neighbours and ingress policing (held by interface index,
/// so it follows a rename as the kernel's does), with the kernel's "already gone" errnos.
#[derive(Debug, Default, Clone)]
pub struct RecordingLinks {
    /// The current links.
    pub links: Vec<Link>,
    /// The current addresses.
    pub addrs: Vec<Address>,
    /// The current routes.
    pub routes: Vec<DevRoute>,
    /// The current proxy neighbours `(dev, addr)`.
    pub proxies: Vec<(String, IpAddr)>,
    /// Ingress policing by interface index: `(rate, burst)`.
    pub ingress: std::collections::BTreeMap<u32, (u64, u32)>,
    /// Every change applied successfully, in order.
    pub log: Vec<LinkChange>,
    /// Changes for which `fail(change)` returns an errno fail with it.
    pub fail: Option<fn(&LinkChange) -> Option<i32>>,
    /// Links not there yet: each appears (joins `links`) when [`Links::wait_for_link`] waits
    /// for it, as netback's vif appears while a script waits (see [`RecordingLinks::add_late`]).
    pub late: Vec<Link>,
    /// The names [`Links::wait_for_link`] was asked for, with the timeout, in order.
    pub waits: Vec<(String, std::time::Duration)>,
}

impl RecordingLinks {
    /// Add a link (index = position + 1) with MAC 00:16:3e:00:00:NN, MTU 1500, down.
    pub fn add(&mut self, name: &str, kind: Option<&str>) -> &mut Self {
        let index = self.links.iter().map(|l| l.index).max().unwrap_or(0) + 1;
        self.links.push(Link {
            index,
            name: name.to_string(),
            mac: Some([0x00, 0x16, 0x3e, 0, 0, index as u8]),
            mtu: 1500,
            up: false,
            loopback: false,
            master: None,
            kind: kind.map(str::to_string),
            stats: None,
            alias: None,
        });
        self
    }

    /// Like [`RecordingLinks::add`], but the link only appears once waited for.
    pub fn add_late(&mut self, name: &str, kind: Option<&str>) -> &mut Self {
        self.add(name, kind);
        let l = self.links.pop().expect("just added");
        self.late.push(l);
        self
    }

    /// The ingress policing `(rate, burst)` of the link called `name`, if any.
    pub fn ingress_of(&self, name: &str) -> Option<(u64, u32)> {
        let l = self.links.iter().find(|l| l.name == name)?;
        self.ingress.get(&l.index).copied()
    }

    /// The link called `name` (panics when absent: for tests).
    pub fn get(&self, name: &str) -> &Link {
        self.links
            .iter()
            .find(|l| l.name == name)
            .expect("link exists")
    }

    fn find_mut(&mut self, name: &str, op: &LinkChange) -> Result<&mut Link, LinkError> {
        self.links
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| LinkError::from_errno(op.to_string(), libc::ENODEV))
    }

    fn index_of(&self, name: &str, op: &LinkChange) -> Result<u32, LinkError> {
        self.links
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| LinkError::from_errno(op.to_string(), libc::ENODEV))
    }
}

impl Links for RecordingLinks {
    fn link(&mut self, name: &str) -> Result<Option<Link>, LinkError> {
        Ok(self.links.iter().find(|l| l.name == name).cloned())
    }

    fn wait_for_link(
        &mut self,
        name: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<Link>, LinkError> {
        self.waits.push((name.to_string(), timeout));
        if let Some(i) = self.late.iter().position(|l| l.name == name) {
            let l = self.late.remove(i);
            self.links.push(l);
        }
        self.link(name)
    }

    fn links(&mut self) -> Result<Vec<Link>, LinkError> {
        Ok(self.links.clone())
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, LinkError> {
        Ok(self
            .addrs
            .iter()
            .filter(|a| index.is_none_or(|i| a.index == i))
            .copied()
            .collect())
    }

    fn change(&mut self, change: &LinkChange) -> Result<(), LinkError> {
        if let Some(errno) = self.fail.and_then(|f| f(change)) {
            return Err(LinkError::from_errno(change.to_string(), errno));
        }
        let err = |errno| Err(LinkError::from_errno(change.to_string(), errno));
        match change {
            LinkChange::Rename { dev, to } => {
                if self.links.iter().any(|l| &l.name == to) {
                    return err(libc::EEXIST);
                }
                let l = self.find_mut(dev, change)?;
                if l.up {
                    return err(libc::EBUSY);
                }
                l.name = to.clone();
            }
            LinkChange::SetAlias { dev, alias } => {
                self.find_mut(dev, change)?.alias = Some(alias.clone()).filter(|a| !a.is_empty())
            }
            LinkChange::SetMac { dev, mac } => self.find_mut(dev, change)?.mac = Some(*mac),
            LinkChange::SetMtu { dev, mtu } => self.find_mut(dev, change)?.mtu = *mtu,
            LinkChange::SetUp { dev, up } => self.find_mut(dev, change)?.up = *up,
            LinkChange::SetMaster { dev, master } => {
                let m = match master {
                    Some(m) => {
                        let idx = self.index_of(m, change)?;
                        Some(idx)
                    }
                    None => None,
                };
                self.find_mut(dev, change)?.master = m;
            }
            LinkChange::AddAddr { dev, addr, prefix } => {
                let index = self.index_of(dev, change)?;
                if self
                    .addrs
                    .iter()
                    .any(|a| a.index == index && a.addr == *addr)
                {
                    return err(libc::EEXIST);
                }
                self.addrs.push(Address {
                    index,
                    addr: *addr,
                    prefix: *prefix,
                    secondary: false,
                });
            }
            LinkChange::DelAddr { dev, addr, .. } => {
                let index = self.index_of(dev, change)?;
                let before = self.addrs.len();
                self.addrs
                    .retain(|a| !(a.index == index && a.addr == *addr));
                if before == self.addrs.len() {
                    return err(libc::EADDRNOTAVAIL);
                }
            }
            LinkChange::FlushAddrs { dev } => {
                let index = self.index_of(dev, change)?;
                self.addrs.retain(|a| a.index != index);
            }
            LinkChange::AddRoute(r) => {
                self.index_of(&r.dev, change)?;
                if self
                    .routes
                    .iter()
                    .any(|x| x.dst == r.dst && x.prefix == r.prefix && x.metric == r.metric)
                {
                    return err(libc::EEXIST);
                }
                self.routes.push(r.clone());
            }
            LinkChange::DelRoute(r) => {
                let before = self.routes.len();
                self.routes.retain(|x| {
                    !(x.dst == r.dst
                        && x.prefix == r.prefix
                        && x.dev == r.dev
                        && x.metric == r.metric)
                });
                if before == self.routes.len() {
                    return err(libc::ESRCH);
                }
            }
            LinkChange::AddProxyNeigh { dev, addr } => {
                self.index_of(dev, change)?;
                let e = (dev.clone(), *addr);
                if !self.proxies.contains(&e) {
                    self.proxies.push(e);
                }
            }
            LinkChange::DelProxyNeigh { dev, addr } => {
                let before = self.proxies.len();
                self.proxies.retain(|(d, a)| !(d == dev && a == addr));
                if before == self.proxies.len() {
                    return err(libc::ENOENT);
                }
            }
            LinkChange::SetIngressRate { dev, rate, burst } => {
                let index = self.index_of(dev, change)?;
                self.ingress.insert(index, (*rate, *burst));
            }
            LinkChange::ClearIngressRate { dev } => {
                let index = self.index_of(dev, change)?;
                if self.ingress.remove(&index).is_none() {
                    return err(libc::ENOENT);
                }
            }
        }
        self.log.push(change.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_models_renames_and_masters() {
        let mut l = RecordingLinks::default();
        l.add("br0", Some("bridge")).add("vif1.0", Some("veth"));
        l.change(&LinkChange::Rename {
            dev: "vif1.0".into(),
            to: "web".into(),
        })
        .unwrap();
        let e = l
            .change(&LinkChange::Rename {
                dev: "web".into(),
                to: "br0".into(),
            })
            .unwrap_err();
        assert_eq!(e.errno, Some(libc::EEXIST));
        l.change(&LinkChange::SetMaster {
            dev: "web".into(),
            master: Some("br0".into()),
        })
        .unwrap();
        assert_eq!(l.get("web").master, Some(1));
        let e = l
            .change(&LinkChange::SetUp {
                dev: "gone".into(),
                up: false,
            })
            .unwrap_err();
        assert!(e.is_gone());
    }

    #[test]
    fn fake_models_ingress_policing_by_index() {
        let mut l = RecordingLinks::default();
        l.add("vif1.0-emu", Some("tun"));
        let set = |dev: &str, rate| LinkChange::SetIngressRate {
            dev: dev.into(),
            rate,
            burst: 131_072,
        };
        let clear = |dev: &str| LinkChange::ClearIngressRate { dev: dev.into() };
        l.change(&set("vif1.0-emu", 1000)).unwrap();
        l.change(&set("vif1.0-emu", 2000)).unwrap();
        assert_eq!(
            l.ingress_of("vif1.0-emu"),
            Some((2000, 131_072)),
            "replaced"
        );
        // It follows the link through a rename.
        l.change(&LinkChange::Rename {
            dev: "vif1.0-emu".into(),
            to: "web-emu".into(),
        })
        .unwrap();
        assert_eq!(l.ingress_of("web-emu"), Some((2000, 131_072)));
        l.change(&clear("web-emu")).unwrap();
        assert_eq!(l.ingress_of("web-emu"), None);
        // Nothing to remove, or no link: both "already gone".
        assert!(l.change(&clear("web-emu")).unwrap_err().is_gone());
        assert_eq!(
            l.change(&clear("nosuch")).unwrap_err().errno,
            Some(libc::ENODEV)
        );
        assert_eq!(
            l.change(&set("nosuch", 1)).unwrap_err().errno,
            Some(libc::ENODEV)
        );
    }
}
