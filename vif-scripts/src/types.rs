//! The vocabulary every other module of the crate shares, and which imports none of them: the
//! `ip` entries ([`Net`]), the interface type ([`TypeIf`]), the antispoofing [`Mode`], and a
//! plan's parts ([`Plan`], [`Step`], [`OnError`], [`NftBatch`] of [`NftCmd`]s, [`StepError`]).
//!
//! Planners (`crate::scripts`) produce these, the applier (`crate::apply`) carries them out.

use std::fmt;
use std::net::IpAddr;

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

    /// The first and last address of the network, as integers of the address's width.
    pub fn range(&self) -> (u128, u128) {
        let (v, width) = match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        let host_bits = width - u32::from(self.prefix);
        let mask = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        (v & !mask, v | mask)
    }

    /// True when every address of `other` is in this network.
    pub fn contains(&self, other: &Net) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() || other.prefix < self.prefix {
            return false;
        }
        let ((lo, hi), (olo, ohi)) = (self.range(), other.range());
        lo <= olo && ohi <= hi
    }
}

/// `nets` without the entries another entry already covers (in their first order), so that
/// nftables gets no overlapping intervals.
pub fn minimal_nets(nets: &[Net]) -> Vec<Net> {
    let mut out: Vec<Net> = Vec::new();
    for (i, n) in nets.iter().enumerate() {
        let covered = nets
            .iter()
            .enumerate()
            .any(|(j, m)| j != i && m.contains(n) && (m != n || j < i));
        if !covered {
            out.push(*n);
        }
    }
    out
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

/// A base chain's hook: `type <kind> hook <hook> [device "<device>"] priority <prio>; policy
/// <policy>;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// `ingress`, `postrouting`, …
    pub hook: &'static str,
    /// The device of a `netdev` ingress hook.
    pub device: Option<String>,
    /// Priority.
    pub prio: i32,
    /// `accept` or `drop`.
    pub policy: &'static str,
}

/// One nftables command, as `nft -f` reads it. Names come from the planners, which only put in
/// names [`nft_identifier`] accepts (tables, chains, sets) and devices [`nft_quotable`] accepts;
/// rule expressions are built by the planners from numbers, addresses and fixed keywords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftCmd {
    /// `add table <family> <table>`.
    AddTable { family: &'static str, table: String },
    /// `add chain …` (a plain chain without a hook; an existing chain is left as it is).
    AddChain {
        family: &'static str,
        table: String,
        chain: String,
        hook: Option<Hook>,
    },
    /// `delete chain …` with its rules.
    DeleteChain {
        family: &'static str,
        table: String,
        chain: String,
    },
    /// `flush chain …`.
    FlushChain {
        family: &'static str,
        table: String,
        chain: String,
    },
    /// `add set … { typeof <key>; size <size>; flags dynamic; }`: a set the rules may add
    /// elements to.
    AddSet {
        family: &'static str,
        table: String,
        set: String,
        key: &'static str,
        size: u32,
    },
    /// `delete set …`.
    DeleteSet {
        family: &'static str,
        table: String,
        set: String,
    },
    /// `add element … { e, … }`.
    AddElements {
        family: &'static str,
        table: String,
        set: String,
        elems: Vec<String>,
    },
    /// `delete element … { e, … }`.
    DeleteElements {
        family: &'static str,
        table: String,
        set: String,
        elems: Vec<String>,
    },
    /// `add rule <family> <table> <chain> <expr> [comment "<comment>"]`.
    AddRule {
        family: &'static str,
        table: String,
        chain: String,
        expr: String,
        comment: Option<&'static str>,
    },
}

/// True for a name nft's grammar takes unquoted (tables, chains, sets): a letter, then letters,
/// digits, `_`, `-`, `.` or `/`.
pub fn nft_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '_' | '-' | '.' | '/'))
        && s.len() < 256
}

/// True for a string nft can take between double quotes (a device name): printable ASCII
/// without `"` (nft's quoted strings have no escapes).
pub fn nft_quotable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"')
}

impl fmt::Display for NftCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NftCmd::AddTable { family, table } => write!(f, "add table {family} {table}"),
            NftCmd::AddChain {
                family,
                table,
                chain,
                hook,
            } => {
                write!(f, "add chain {family} {table} {chain}")?;
                if let Some(h) = hook {
                    write!(f, " {{ type {} hook {}", h.kind, h.hook)?;
                    if let Some(d) = &h.device {
                        write!(f, " device \"{d}\"")?;
                    }
                    write!(f, " priority {}; policy {}; }}", h.prio, h.policy)?;
                }
                Ok(())
            }
            NftCmd::DeleteChain {
                family,
                table,
                chain,
            } => write!(f, "delete chain {family} {table} {chain}"),
            NftCmd::FlushChain {
                family,
                table,
                chain,
            } => write!(f, "flush chain {family} {table} {chain}"),
            NftCmd::AddSet {
                family,
                table,
                set,
                key,
                size,
            } => write!(
                f,
                "add set {family} {table} {set} {{ typeof {key}; size {size}; flags dynamic; }}"
            ),
            NftCmd::DeleteSet { family, table, set } => {
                write!(f, "delete set {family} {table} {set}")
            }
            NftCmd::AddElements {
                family,
                table,
                set,
                elems,
            } => write!(
                f,
                "add element {family} {table} {set} {{ {} }}",
                elems.join(", ")
            ),
            NftCmd::DeleteElements {
                family,
                table,
                set,
                elems,
            } => write!(
                f,
                "delete element {family} {table} {set} {{ {} }}",
                elems.join(", ")
            ),
            NftCmd::AddRule {
                family,
                table,
                chain,
                expr,
                comment,
            } => {
                write!(f, "add rule {family} {table} {chain} {expr}")?;
                if let Some(c) = comment {
                    write!(f, " comment \"{c}\"")?;
                }
                Ok(())
            }
        }
    }
}

/// One nftables batch (one `nft -f -` run, which nftables applies atomically) and what undoes
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftBatch {
    /// Short description for logs.
    pub what: String,
    /// The commands, in order.
    pub cmds: Vec<NftCmd>,
    /// The batch that undoes this one (for rollback).
    pub undo: Option<Box<NftBatch>>,
    /// A failure meaning "no such object" counts as "already gone".
    pub removal: bool,
}

impl NftBatch {
    /// The text given to `nft -f -`: one command a line.
    pub fn text(&self) -> String {
        let mut t = String::new();
        for c in &self.cmds {
            t.push_str(&c.to_string());
            t.push('\n');
        }
        t
    }

    /// One batch doing `self`'s commands then `other`'s, atomically; `undo` undoes both.
    pub fn then(self, other: NftBatch, undo: Option<NftBatch>) -> NftBatch {
        let mut cmds = self.cmds;
        cmds.extend(other.cmds);
        NftBatch {
            what: format!("{}; {}", self.what, other.what),
            cmds,
            undo: undo.map(Box::new),
            removal: self.removal && other.removal,
        }
    }
}

impl fmt::Display for NftBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
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
    /// Apply an nftables batch (one `nft -f -` run).
    Nft(NftBatch, OnError),
    /// Write a xenstore node.
    XsWrite {
        path: String,
        value: String,
        on_error: OnError,
    },
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
            Step::XsWrite { path, value, .. } => write!(f, "xenstore write {path}={value}"),
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
