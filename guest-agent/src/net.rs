//! Live network state through synchronous rtnetlink: a thin wrapper over the shared client
//! ([`xenplug_netlink::Client`]).

use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use xenplug_channel::config::MacAddr;
use xenplug_netlink::{Client, Create, RouteProtocol};

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address, if 6 bytes long.
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
    /// Loopback.
    pub loopback: bool,
    /// Counters: rx bytes, packets, errors, dropped; tx the same.
    pub stats: Option<[u64; 8]>,
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// ifindex.
    pub index: u32,
    /// Address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

/// The network operations the agent needs (the real one is [`Netlink`]).
pub trait NetOps {
    /// All links.
    fn links(&mut self) -> Result<Vec<Link>>;
    /// All addresses.
    fn addresses(&mut self) -> Result<Vec<Addr>>;
    /// Rename a (down) link.
    fn rename(&mut self, index: u32, name: &str) -> Result<()>;
    /// Set up or down.
    fn set_up(&mut self, index: u32, up: bool) -> Result<()>;
    /// Set the MTU.
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()>;
    /// Add an address (an existing one is fine).
    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()>;
    /// Remove an address (one that is already gone is fine).
    fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()>;
    /// Remove a route from the main table (one that is already gone is fine).
    fn del_route(&mut self, index: u32, dst: IpAddr, prefix: u8, via: Option<IpAddr>)
        -> Result<()>;
    /// Add or replace a route in the main table.
    fn replace_route(
        &mut self,
        index: u32,
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
        metric: Option<u32>,
    ) -> Result<()>;
}

/// A connected rtnetlink socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct Netlink {
    client: Client,
}

impl Netlink {
    /// Open the socket.
    pub fn open() -> Result<Self> {
        let client = Client::open().map_err(|e| anyhow!("{e}"))?;
        Ok(Netlink { client })
    }
}

/// A kernel error for one netlink request.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {errno}")]
pub struct NlError {
    /// What was being done.
    pub what: String,
    /// The kernel's answer.
    pub errno: nix::errno::Errno,
}

/// The client's error for the operation `what`: the kernel's answer as an [`NlError`].
fn nl_error(what: &str, e: xenplug_netlink::Error) -> anyhow::Error {
    match e {
        xenplug_netlink::Error::Kernel(errno) => anyhow!(NlError {
            what: what.to_string(),
            errno: nix::errno::Errno::from_raw(errno),
        }),
        e => anyhow!("{what}: {e}"),
    }
}

/// "Already gone" (ESRCH, EADDRNOTAVAIL, ENODEV, ENOENT) is success for a removal.
fn gone_ok(what: &str, r: Result<(), xenplug_netlink::Error>) -> Result<()> {
    match r {
        Err(e) if !e.is_gone() => Err(nl_error(what, e)),
        _ => Ok(()),
    }
}

fn to_link(l: xenplug_netlink::Link) -> Link {
    Link {
        index: l.index,
        name: l.name,
        mac: l.mac.map(MacAddr),
        up: l.up,
        mtu: l.mtu,
        loopback: l.loopback,
        stats: l.stats,
    }
}

impl NetOps for Netlink {
    fn links(&mut self) -> Result<Vec<Link>> {
        let links = self.client.links().map_err(|e| nl_error("list links", e))?;
        Ok(links.into_iter().map(to_link).collect())
    }

    fn addresses(&mut self) -> Result<Vec<Addr>> {
        let addrs = self
            .client
            .addresses()
            .map_err(|e| nl_error("list addresses", e))?;
        Ok(addrs
            .into_iter()
            .map(|a| Addr {
                index: a.index,
                addr: a.addr,
                prefix: a.prefix,
            })
            .collect())
    }

    fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        self.client
            .set_name(index, name)
            .map_err(|e| nl_error(&format!("rename link {index} to {name}"), e))
    }

    fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
        self.client.set_up(index, up).map_err(|e| {
            nl_error(
                &format!("set link {index} {}", if up { "up" } else { "down" }),
                e,
            )
        })
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.client
            .set_mtu(index, mtu)
            .map_err(|e| nl_error(&format!("set link {index} mtu {mtu}"), e))
    }

    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        // Create::Replace: an address that is already there is refreshed, not an error.
        self.client
            .add_address(index, addr, prefix, Create::Replace)
            .map_err(|e| nl_error(&format!("add address {addr}/{prefix} to link {index}"), e))
    }

    fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let r = self.client.del_address(index, addr, prefix);
        gone_ok(
            &format!("delete address {addr}/{prefix} from link {index}"),
            r,
        )
    }

    fn del_route(
        &mut self,
        index: u32,
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
    ) -> Result<()> {
        let r = self.client.del_route(&xenplug_netlink::Route {
            oif: index,
            dst,
            prefix,
            via,
            src: None,
            metric: None,
            protocol: RouteProtocol::Unspec,
        });
        gone_ok(&format!("delete route {dst}/{prefix} dev {index}"), r)
    }

    fn replace_route(
        &mut self,
        index: u32,
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
        metric: Option<u32>,
    ) -> Result<()> {
        if let Some(v) = via {
            if v.is_ipv4() != dst.is_ipv4() {
                bail!("route {dst}/{prefix} via {v}: address families differ");
            }
        }
        let route = xenplug_netlink::Route {
            oif: index,
            dst,
            prefix,
            via,
            src: None,
            metric,
            protocol: RouteProtocol::Static,
        };
        self.client.add_route(&route, Create::Replace).map_err(|e| {
            let what = match via {
                Some(v) => format!("route {dst}/{prefix} via {v} dev {index}"),
                None => format!("route {dst}/{prefix} dev {index}"),
            };
            nl_error(&what, e)
        })
    }
}
