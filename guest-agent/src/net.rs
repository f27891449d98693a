//! Live network state through synchronous rtnetlink: the agent's [`NetOps`], implemented on the
//! shared client ([`xenplug_netlink::Client`]) with the workspace's one [`Link`]/[`Addr`] types.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use xenplug_netlink::{Client, Create, RouteProtocol};

/// A link as the kernel reports it: the workspace's one link type.
pub use xenplug_netlink::Link;

/// An address on a link: the workspace's one address type (`secondary` is set by the kernel for
/// IPv4 secondaries; the agent does not use it).
pub use xenplug_netlink::Address as Addr;

/// The network operations the agent needs, by interface index (the real one is the shared
/// rtnetlink [`Netlink`] client itself; tests use recording fakes).
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

/// The shared rtnetlink client (a socket in the calling thread's network namespace):
/// `Netlink::open()`.
pub type Netlink = Client;

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

impl NetOps for Netlink {
    fn links(&mut self) -> Result<Vec<Link>> {
        Client::links(self).map_err(|e| nl_error("list links", e))
    }

    fn addresses(&mut self) -> Result<Vec<Addr>> {
        Client::addresses(self).map_err(|e| nl_error("list addresses", e))
    }

    fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        self.set_name(index, name)
            .map_err(|e| nl_error(&format!("rename link {index} to {name}"), e))
    }

    fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
        Client::set_up(self, index, up).map_err(|e| {
            nl_error(
                &format!("set link {index} {}", if up { "up" } else { "down" }),
                e,
            )
        })
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        Client::set_mtu(self, index, mtu)
            .map_err(|e| nl_error(&format!("set link {index} mtu {mtu}"), e))
    }

    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        // Create::Replace: an address that is already there is refreshed, not an error.
        Client::add_address(self, index, addr, prefix, Create::Replace)
            .map_err(|e| nl_error(&format!("add address {addr}/{prefix} to link {index}"), e))
    }

    fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let r = Client::del_address(self, index, addr, prefix);
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
        let r = Client::del_route(
            self,
            &xenplug_netlink::Route {
                oif: index,
                dst,
                prefix,
                via,
                src: None,
                metric: None,
                protocol: RouteProtocol::Unspec,
            },
        );
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
        Client::add_route(self, &route, Create::Replace).map_err(|e| {
            let what = match via {
                Some(v) => format!("route {dst}/{prefix} via {v} dev {index}"),
                None => format!("route {dst}/{prefix} dev {index}"),
            };
            nl_error(&what, e)
        })
    }
}
