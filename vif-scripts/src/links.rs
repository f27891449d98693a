//! The narrow interface between the vif logic and the kernel's link, address, route and
//! neighbour tables, and a link's ingress policing (tc).
//!
//! [`Links`] has three read methods and one write method taking a [`LinkChange`], so plan/apply
//! logic can be tested with [`RecordingLinks`] (an in-memory model that records every change) and
//! run for real with [`crate::netlink::Netlink`].

use std::fmt;
use std::net::IpAddr;

/// The MAC every bridge port gets, so a bridge never takes its address from a vif (the highest
/// non-broadcast, locally administered address).
pub const BRIDGE_PORT_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// One network interface as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Index of the controller (bridge) the link is enslaved to.
    pub master: Option<u32>,
    /// The link kind (`bridge`, `veth`, `tun`, `openvswitch`, …) when the kernel reports one.
    pub kind: Option<String>,
}

impl Link {
    /// True for a Linux bridge.
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

/// An address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// True when the kernel marks it secondary (IPv4 only).
    pub secondary: bool,
}

/// A host or network route through a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network address.
    pub dst: IpAddr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Output device name.
    pub dev: String,
    /// Preferred source address.
    pub src: Option<IpAddr>,
    /// Route metric (priority).
    pub metric: u32,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} dev {}", self.dst, self.prefix, self.dev)?;
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        write!(f, " metric {}", self.metric)
    }
}

/// One change to the kernel's networking state. Devices are named; the adapter resolves names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// Rename `dev` to `to` (the link must be down).
    Rename { dev: String, to: String },
    /// Set the hardware address.
    SetMac { dev: String, mac: [u8; 6] },
    /// Set the MTU.
    SetMtu { dev: String, mtu: u32 },
    /// Bring the link up or down.
    SetUp { dev: String, up: bool },
    /// Enslave to a bridge (`Some`) or release from its controller (`None`).
    SetMaster { dev: String, master: Option<String> },
    /// Add an address.
    AddAddr {
        dev: String,
        addr: IpAddr,
        prefix: u8,
    },
    /// Delete an address.
    DelAddr {
        dev: String,
        addr: IpAddr,
        prefix: u8,
    },
    /// Delete every address of the link.
    FlushAddrs { dev: String },
    /// Add a route in the main table.
    AddRoute(Route),
    /// Delete a route from the main table.
    DelRoute(Route),
    /// Add a proxy neighbour entry (`ip neigh add proxy ADDR dev DEV`).
    AddProxyNeigh { dev: String, addr: IpAddr },
    /// Delete a proxy neighbour entry.
    DelProxyNeigh { dev: String, addr: IpAddr },
    /// Police what arrives on `dev` (its ingress) to `rate` bytes per second with a bucket of
    /// `burst` bytes, dropping the excess (tc: ingress qdisc, matchall, police). Replaces any
    /// ingress qdisc the link had.
    SetIngressRate { dev: String, rate: u64, burst: u32 },
    /// Delete `dev`'s ingress qdisc with its filters ("already gone" when it has none).
    ClearIngressRate { dev: String },
}

impl fmt::Display for LinkChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkChange::Rename { dev, to } => write!(f, "rename {dev} to {to}"),
            LinkChange::SetMac { dev, mac } => write!(f, "set {dev} address {}", fmt_mac(mac)),
            LinkChange::SetMtu { dev, mtu } => write!(f, "set {dev} mtu {mtu}"),
            LinkChange::SetUp { dev, up } => {
                write!(f, "set {dev} {}", if *up { "up" } else { "down" })
            }
            LinkChange::SetMaster {
                dev,
                master: Some(m),
            } => write!(f, "set {dev} master {m}"),
            LinkChange::SetMaster { dev, master: None } => write!(f, "set {dev} nomaster"),
            LinkChange::AddAddr { dev, addr, prefix } => write!(f, "add {addr}/{prefix} to {dev}"),
            LinkChange::DelAddr { dev, addr, prefix } => {
                write!(f, "delete {addr}/{prefix} from {dev}")
            }
            LinkChange::FlushAddrs { dev } => write!(f, "flush addresses of {dev}"),
            LinkChange::AddRoute(r) => write!(f, "add route {r}"),
            LinkChange::DelRoute(r) => write!(f, "delete route {r}"),
            LinkChange::AddProxyNeigh { dev, addr } => {
                write!(f, "add proxy neighbour {addr} on {dev}")
            }
            LinkChange::DelProxyNeigh { dev, addr } => {
                write!(f, "delete proxy neighbour {addr} on {dev}")
            }
            LinkChange::SetIngressRate { dev, rate, burst } => {
                write!(f, "police {dev} ingress to {rate} B/s burst {burst} B")
            }
            LinkChange::ClearIngressRate { dev } => write!(f, "remove {dev} ingress policing"),
        }
    }
}

/// Format a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Why a link operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message}")]
pub struct LinkError {
    /// What was attempted (`set vif5.0 master xenbr0`, `get link eth0`, …).
    pub op: String,
    /// The kernel's errno, when the failure came from the kernel.
    pub errno: Option<i32>,
    /// Human-readable cause.
    pub message: String,
}

impl LinkError {
    /// Build from an errno.
    pub fn from_errno(op: impl Into<String>, errno: i32) -> Self {
        LinkError {
            op: op.into(),
            errno: Some(errno),
            message: std::io::Error::from_raw_os_error(errno).to_string(),
        }
    }

    /// Build from a message with no errno.
    pub fn other(op: impl Into<String>, message: impl Into<String>) -> Self {
        LinkError {
            op: op.into(),
            errno: None,
            message: message.into(),
        }
    }

    /// True when the failure means "the thing is already gone" (teardown treats it as done):
    /// no such device, no such route/neighbour, address not present.
    pub fn is_gone(&self) -> bool {
        matches!(
            self.errno,
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
        )
    }
}

/// Read and change network links. Implemented by [`crate::netlink::Netlink`] and
/// [`RecordingLinks`].
pub trait Links {
    /// The link called `name`, or `None` when there is none.
    fn link(&mut self, name: &str) -> Result<Option<Link>, LinkError>;
    /// Every link, in index order.
    fn links(&mut self) -> Result<Vec<Link>, LinkError>;
    /// Addresses of one link (`Some(index)`) or of all links.
    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<IfAddr>, LinkError>;
    /// Apply one change.
    fn change(&mut self, change: &LinkChange) -> Result<(), LinkError>;
}

/// An in-memory model of links that records every change and can be told to fail one.
///
/// It models enough of the kernel for the planners and the applier: renames, MAC, MTU, up/down,
/// masters, addresses, routes, proxy neighbours and ingress policing (held by interface index,
/// so it follows a rename as the kernel's does), with the kernel's "already gone" errnos.
#[derive(Debug, Default, Clone)]
pub struct RecordingLinks {
    /// The current links.
    pub links: Vec<Link>,
    /// The current addresses.
    pub addrs: Vec<IfAddr>,
    /// The current routes.
    pub routes: Vec<Route>,
    /// The current proxy neighbours `(dev, addr)`.
    pub proxies: Vec<(String, IpAddr)>,
    /// Ingress policing by interface index: `(rate, burst)`.
    pub ingress: std::collections::BTreeMap<u32, (u64, u32)>,
    /// Every change applied successfully, in order.
    pub log: Vec<LinkChange>,
    /// Changes for which `fail(change)` returns an errno fail with it.
    pub fail: Option<fn(&LinkChange) -> Option<i32>>,
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
            master: None,
            kind: kind.map(str::to_string),
        });
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

    fn links(&mut self) -> Result<Vec<Link>, LinkError> {
        Ok(self.links.clone())
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<IfAddr>, LinkError> {
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
                self.addrs.push(IfAddr {
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
    fn mac_round_trip() {
        assert_eq!(parse_mac("FE:ff:ff:ff:ff:ff"), Some(BRIDGE_PORT_MAC));
        assert_eq!(fmt_mac(&BRIDGE_PORT_MAC), "fe:ff:ff:ff:ff:ff");
        assert_eq!(parse_mac("fe:ff:ff:ff:ff"), None);
        assert_eq!(parse_mac("fe:ff:ff:ff:ff:ff:00"), None);
        assert_eq!(parse_mac("fe:ff:ff:ff:ff:fg"), None);
    }

    #[test]
    fn gone_errnos() {
        assert!(LinkError::from_errno("x", libc::ENODEV).is_gone());
        assert!(LinkError::from_errno("x", libc::ESRCH).is_gone());
        assert!(!LinkError::from_errno("x", libc::EPERM).is_gone());
    }

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
