//! The vocabulary every other module of the crate shares, and which imports none of them: the
//! `ip` entries ([`Net`]), the interface type ([`TypeIf`]), the antispoofing [`Mode`], and a
//! plan's parts ([`Plan`], [`Step`], [`OnError`], [`NftBatch`], [`StepError`]).
//!
//! Planners (`crate::scripts`) produce these, the applier (`crate::apply`) carries them out.

use std::fmt;
use std::net::IpAddr;

use serde_json::{json, Value};
use xenplug_hotplug::Failure;
use xenplug_netlink::links::{LinkChange, LinkError};

/// `type_if`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeIf {
    /// A netback interface (`vif<d>.<n>`), actions online/offline.
    Vif,
    /// QEMU's emulated NIC (`vif<d>.<n>-emu`), actions add/remove.
    Tap,
}

/// An entry of the `ip` list: an address or a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    /// Address.
    pub addr: IpAddr,
    /// Prefix length (32/128 for a plain address).
    pub prefix: u8,
}

impl Net {
    /// Parse `a.b.c.d`, `a.b.c.d/nn`, `x::y` or `x::y/nn`.
    pub fn parse(s: &str) -> Option<Net> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            // Digits only: `parse` also takes a leading `+`.
            Some(p) if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) => return None,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Net { addr, prefix })
    }

    /// True for a single host (/32 or /128).
    pub fn is_host(&self) -> bool {
        self.prefix == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Parse the space-separated `ip` list.
pub fn parse_ip_list(s: &str, path: &str) -> Result<Vec<Net>, Failure> {
    s.split_whitespace()
        .map(|w| {
            Net::parse(w).ok_or_else(|| Failure::error(format!("invalid address '{w}' in {path}")))
        })
        .collect()
}

/// Antispoofing mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// No rules.
    Off,
    /// Accept-only rules, as the reference.
    Compat,
    /// Accept listed sources, drop everything else.
    #[default]
    Enforce,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" | "no" | "0" => Ok(Mode::Off),
            "compat" => Ok(Mode::Compat),
            "enforce" | "on" | "yes" | "1" => Ok(Mode::Enforce),
            other => Err(format!(
                "invalid antispoof mode '{other}' (expected off, compat or enforce)"
            )),
        }
    }
}

/// One nftables JSON batch and what undoes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NftBatch {
    /// Short description for logs.
    pub what: String,
    /// The document given to `nft -j -f -`.
    pub json: Value,
    /// The batch that undoes this one (for rollback).
    pub undo: Option<Box<NftBatch>>,
    /// A failure meaning "no such object" counts as "already gone".
    pub removal: bool,
}

impl NftBatch {
    /// The commands of the batch (the `nftables` array).
    pub fn commands(&self) -> Vec<Value> {
        self.json["nftables"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// One batch doing `self`'s commands then `other`'s, atomically; `undo` undoes both.
    pub fn then(self, other: NftBatch, undo: Option<NftBatch>) -> NftBatch {
        let mut cmds = self.commands();
        cmds.extend(other.commands());
        NftBatch {
            what: format!("{}; {}", self.what, other.what),
            json: json!({ "nftables": cmds }),
            undo: undo.map(Box::new),
            removal: self.removal && other.removal,
        }
    }
}

impl fmt::Display for NftBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json.to_string())
    }
}

/// What to do when a step fails during set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Stop and roll back.
    Fatal,
    /// Log and go on (the reference's `|| true`).
    Ignore,
    /// Fatal, except that "already exists" counts as done (and is not undone).
    FatalUnlessExists,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A link/address/route/neighbour change, or a link's ingress policing.
    Link(LinkChange, OnError),
    /// Write a sysctl (a path below /proc/sys, e.g. `net/ipv4/conf/vif1.0/proxy_arp`).
    Sysctl {
        key: String,
        value: String,
        on_error: OnError,
    },
    /// Apply an nftables batch (one `nft -j -f -` run).
    Nft(NftBatch, OnError),
    /// Write a xenstore node.
    XsWrite { path: String, value: String },
    /// Remove a xenstore node (the undo of writing one that did not exist).
    XsRm { path: String },
    /// One `ovs-vsctl` run (argv after the program name); `undo` is run on rollback.
    Ovs {
        args: Vec<String>,
        undo: Option<Vec<String>>,
    },
    /// Set (`Some`) or remove (`None`) this vif's dnsmasq dhcp-hosts entry, then signal dnsmasq.
    Dhcp { key: String, line: Option<String> },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Link(c, _) => write!(f, "{c}"),
            Step::Sysctl { key, value, .. } => write!(f, "sysctl {key}={value}"),
            Step::Nft(b, _) => write!(f, "nft batch ({})", b.what),
            Step::XsWrite { path, value } => write!(f, "xenstore write {path}={value}"),
            Step::XsRm { path } => write!(f, "xenstore rm {path}"),
            Step::Ovs { args, .. } => write!(f, "ovs-vsctl {}", args.join(" ")),
            Step::Dhcp { key, line: Some(l) } => write!(f, "dhcp-hosts {key}: {l}"),
            Step::Dhcp { key, line: None } => write!(f, "dhcp-hosts {key}: remove"),
        }
    }
}

/// An ordered plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// Append a step.
    pub fn push(&mut self, s: Step) -> &mut Self {
        self.steps.push(s);
        self
    }

    /// Append a fatal link change.
    pub fn link(&mut self, c: LinkChange) -> &mut Self {
        self.push(Step::Link(c, OnError::Fatal))
    }

    /// Append a link change whose failure is only logged.
    pub fn link_lenient(&mut self, c: LinkChange) -> &mut Self {
        self.push(Step::Link(c, OnError::Ignore))
    }
}

/// A failure of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepError {
    /// Human-readable cause.
    pub message: String,
    /// True when it means "already gone".
    pub gone: bool,
    /// True when it means "already exists".
    pub exists: bool,
}

impl From<LinkError> for StepError {
    fn from(e: LinkError) -> Self {
        StepError {
            gone: e.is_gone(),
            exists: e.errno == Some(libc::EEXIST),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by fuzzing (fuzz target vif_ip): `0::1/+14` was accepted.
    #[test]
    fn prefixes_are_plain_digits() {
        assert_eq!(Net::parse("0::1/+14"), None);
        assert_eq!(Net::parse("10.0.0.0/"), None);
        assert_eq!(Net::parse("10.0.0.0/33"), None);
        assert_eq!(
            Net::parse("10.0.0.0/8").map(|n| n.to_string()),
            Some("10.0.0.0/8".into())
        );
        assert_eq!(Net::parse("fe80::1").map(|n| n.prefix), Some(128));
    }
}
