//! Links by name: the narrow [`Links`] trait (three reads and one write taking a [`LinkChange`])
//! that planners and appliers are written against, its real implementation [`KernelLinks`] over
//! the [`Client`], and (feature `fake`) a recording in-memory model, [`crate::fake::RecordingLinks`].
//!
//! Changes name their devices; [`KernelLinks`] resolves names to indexes and remembers the links
//! it has read (see its documentation). The types observed are the crate's own [`Link`] and
//! [`Address`].

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::{Address, Client, Create, Link, RouteProtocol};

/// A host or network route through a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevRoute {
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

impl fmt::Display for DevRoute {
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
    /// Set the interface alias (`""` removes it).
    SetAlias { dev: String, alias: String },
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
    AddRoute(DevRoute),
    /// Delete a route from the main table.
    DelRoute(DevRoute),
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
            LinkChange::SetAlias { dev, alias } if alias.is_empty() => {
                write!(f, "remove the alias of {dev}")
            }
            LinkChange::SetAlias { dev, alias } => write!(f, "set {dev} alias \"{alias}\""),
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
        // Two hex digits (from_str_radix alone also takes `+1`).
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
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

/// Read and change network links. Implemented by [`KernelLinks`] and (feature `fake`)
/// [`crate::fake::RecordingLinks`].
pub trait Links {
    /// The link called `name`, or `None` when there is none.
    fn link(&mut self, name: &str) -> Result<Option<Link>, LinkError>;
    /// Every link, in index order.
    fn links(&mut self) -> Result<Vec<Link>, LinkError>;
    /// Addresses of one link (`Some(index)`) or of all links.
    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, LinkError>;
    /// Apply one change.
    fn change(&mut self, change: &LinkChange) -> Result<(), LinkError>;
    /// The link called `name`, waiting for it to appear for at most `timeout`; `None` when it
    /// has not by then.
    fn wait_for_link(&mut self, name: &str, timeout: Duration) -> Result<Option<Link>, LinkError>;
}

/// A connected rtnetlink socket.
///
/// Links read once are remembered and kept up to date with this adapter's own changes, so a
/// script asks the kernel about each link once (a `RTM_GETLINK` answer carries every attribute
/// and statistic of the link: a dozen of them cost more than the rest of a vif-bridge run).
/// A change that fails forgets the link, so the next read asks the kernel again.
#[derive(Debug)]
pub struct KernelLinks {
    client: Client,
    /// name → the link as last read, with this adapter's changes applied since.
    seen: std::collections::HashMap<String, Link>,
}

/// The client's error as a [`LinkError`] for the operation `op`.
fn link_error(op: String, e: crate::Error) -> LinkError {
    match e {
        crate::Error::Kernel(errno) => LinkError::from_errno(op, errno),
        crate::Error::Io { source, .. } => LinkError {
            op,
            errno: source.raw_os_error(),
            message: source.to_string(),
        },
        e @ crate::Error::Decode(_) => LinkError::other(op, e.to_string()),
    }
}

impl KernelLinks {
    /// Open a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, LinkError> {
        let client = Client::open().map_err(|e| link_error("open rtnetlink socket".into(), e))?;
        Ok(KernelLinks {
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

    fn route(&mut self, r: &DevRoute) -> Result<crate::Route, LinkError> {
        Ok(crate::Route {
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
    fn apply(&mut self, change: &LinkChange) -> Result<Result<(), crate::Error>, LinkError> {
        Ok(match change {
            LinkChange::Rename { dev, to } => {
                let index = self.index(dev)?;
                self.client.set_name(index, to)
            }
            LinkChange::SetAlias { dev, alias } => {
                let index = self.index(dev)?;
                self.client.set_alias(index, alias)
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
                    Ok(false) => Err(crate::Error::Kernel(libc::ENOENT)),
                    Err(e) => Err(e),
                }
            }
        })
    }
}

impl KernelLinks {
    /// Bring the remembered copy of the changed link up to date (or forget it when the change
    /// failed or its effect is not modelled here).
    fn remember(&mut self, change: &LinkChange, ok: bool) {
        let dev = match change {
            LinkChange::Rename { dev, .. }
            | LinkChange::SetAlias { dev, .. }
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
            LinkChange::SetAlias { alias, .. } => {
                link.alias = Some(alias.clone()).filter(|a| !a.is_empty())
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

impl Links for KernelLinks {
    /// Subscribes to link notifications first, then looks the link up, then again after each
    /// notification until the deadline: no polling interval, and no window in which a link
    /// created between the lookup and the subscription would be missed.
    fn wait_for_link(&mut self, name: &str, timeout: Duration) -> Result<Option<Link>, LinkError> {
        let deadline = Instant::now() + timeout;
        let mut events = crate::LinkEvents::open()
            .map_err(|e| link_error("subscribe to link notifications".into(), e))?;
        loop {
            if let Some(l) = self.link(name)? {
                return Ok(Some(l));
            }
            let more = events
                .wait(deadline)
                .map_err(|e| link_error(format!("wait for link {name}"), e))?;
            if !more {
                return self.link(name);
            }
        }
    }

    fn link(&mut self, name: &str) -> Result<Option<Link>, LinkError> {
        if let Some(l) = self.seen.get(name) {
            return Ok(Some(l.clone()));
        }
        let link = self
            .client
            .link(name)
            .map_err(|e| link_error(format!("get link {name}"), e))?;
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
        Ok(links)
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, LinkError> {
        let addrs = match index {
            Some(i) => self.client.addresses_of(i),
            None => self.client.addresses(),
        }
        .map_err(|e| link_error("list addresses".into(), e))?;
        Ok(addrs
            .into_iter()
            .filter(|a| index.is_none() || index == Some(a.index))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        assert_eq!(
            parse_mac("FE:ff:ff:ff:ff:ff"),
            Some([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff])
        );
        assert_eq!(
            fmt_mac(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]),
            "fe:ff:ff:ff:ff:ff"
        );
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

    // Found by fuzzing (fuzz target vif_mac): `00:16:3e:+1:02:ab` was accepted (and would have
    // been written as such into dnsmasq's hosts file).
    #[test]
    fn mac_pairs_are_hex_digits() {
        assert_eq!(parse_mac("00:16:3e:+1:02:ab"), None);
        assert_eq!(
            parse_mac(" 00:16:3E:01:02:ab\n"),
            Some([0, 0x16, 0x3e, 1, 2, 0xab])
        );
    }
}
