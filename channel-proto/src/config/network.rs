//! The network part of the configuration document: cloud-init network-config **version 2**
//! (netplan spelling) with `ethernets`, `bonds`, `bridges` and `vlans`, which is what the agent
//! renders. A **version 1** `network-config` (what Xen Orchestra and most NoCloud seeds write)
//! is converted to it by [`NetworkConfig::from_yaml`] (see `netv1.rs`), so both arrive at the
//! guest in one form.
//!
//! One extension to version 2: `nameservers` at the top level, the global resolvers of a
//! version 1 `nameserver` entry without `interface`.
//!
//! Everything is checked here, before anything is sent: names (see
//! [`super::validate_ifname`]), references between entries (bond and bridge members, VLAN
//! links), address families, and the values of bond and bridge parameters. A key this model
//! does not have is refused with its path and "not supported by xenplug-agent".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{
    path_err, validate_domain, validate_entry_id, validate_ifname, validate_ifname_pattern,
    ConfigError,
};

/// An interface address or network with its prefix length, e.g. `192.0.2.10/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (0–32 for IPv4, 0–128 for IPv6).
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' lacks a prefix length (address/prefix)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("'{p}' is not a prefix length between 0 and {max}"))?;
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a MAC address (six hex pairs separated by ':')");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(bad());
            }
            m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(m))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A route destination: `default` or a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTo {
    /// `default` (`0.0.0.0/0` or `::/0`, by the gateway's family).
    Default,
    /// A network.
    Net(Cidr),
}

impl Serialize for RouteTo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RouteTo::Default => s.serialize_str("default"),
            RouteTo::Net(c) => s.collect_str(c),
        }
    }
}

impl<'de> Deserialize<'de> for RouteTo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "default" {
            return Ok(RouteTo::Default);
        }
        s.parse::<Cidr>()
            .map(RouteTo::Net)
            .map_err(serde::de::Error::custom)
    }
}

/// Which NIC an `ethernets` entry applies to (all given conditions must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The NIC's permanent MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macaddress: Option<MacAddr>,
    /// The kernel interface name; `*` and `?` globs allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The kernel driver (`virtio_net`, `vif`, …); `*` and `?` globs allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination.
    pub to: RouteTo,
    /// Gateway; without one the destination is on the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    /// Route metric (priority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

impl Route {
    /// True for an IPv4 route (by the destination, or the gateway for `default`).
    pub fn is_ipv4(&self) -> bool {
        match (self.to, self.via) {
            (RouteTo::Net(c), _) => c.addr.is_ipv4(),
            (RouteTo::Default, Some(v)) => v.is_ipv4(),
            (RouteTo::Default, None) => true,
        }
    }

    /// The destination with `default` spelled out for the route's family.
    pub fn destination(&self) -> Cidr {
        match self.to {
            RouteTo::Net(c) => c,
            RouteTo::Default => Cidr {
                addr: if self.is_ipv4() {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                },
                prefix: 0,
            },
        }
    }
}

/// DNS servers and search domains.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nameservers {
    /// Server addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

impl Nameservers {
    /// True when there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.search.is_empty()
    }
}

/// The IP configuration every kind of interface has (netplan's common properties).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpConfig {
    /// Run DHCPv4.
    pub dhcp4: bool,
    /// Run DHCPv6.
    pub dhcp6: bool,
    /// Metric of the routes DHCPv4 installs.
    pub dhcp4_metric: Option<u32>,
    /// Metric of the routes DHCPv6 installs.
    pub dhcp6_metric: Option<u32>,
    /// Accept IPv6 router advertisements (None: the renderer's default).
    pub accept_ra: Option<bool>,
    /// Static addresses with prefix length.
    pub addresses: Vec<Cidr>,
    /// Routes, with `gateway4`/`gateway6` as default routes.
    pub routes: Vec<Route>,
    /// DNS.
    pub nameservers: Nameservers,
    /// Link MTU.
    pub mtu: Option<u32>,
    /// Not needed for the system to be online.
    pub optional: bool,
}

/// Interfaces of every kind: the shared properties.
pub trait Interface {
    /// The IP configuration.
    fn ip(&self) -> IpConfig;
}

macro_rules! interface_struct {
    (
        $(#[$doc:meta])*
        $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty,)* }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
            /// Run DHCPv4.
            #[serde(default, deserialize_with = "yaml11_bool", skip_serializing_if = "Option::is_none")]
            pub dhcp4: Option<bool>,
            /// Run DHCPv6.
            #[serde(default, deserialize_with = "yaml11_bool", skip_serializing_if = "Option::is_none")]
            pub dhcp6: Option<bool>,
            /// DHCPv4 options (`route-metric`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dhcp4_overrides: Option<DhcpOverrides>,
            /// DHCPv6 options (`route-metric`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dhcp6_overrides: Option<DhcpOverrides>,
            /// Accept IPv6 router advertisements (SLAAC).
            #[serde(default, deserialize_with = "yaml11_bool", skip_serializing_if = "Option::is_none")]
            pub accept_ra: Option<bool>,
            /// Static addresses with prefix length.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub addresses: Vec<Cidr>,
            /// Deprecated netplan spelling of an IPv4 default route.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub gateway4: Option<IpAddr>,
            /// Deprecated netplan spelling of an IPv6 default route.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub gateway6: Option<IpAddr>,
            /// Static routes.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub routes: Vec<Route>,
            /// DNS.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub nameservers: Option<Nameservers>,
            /// Link MTU.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub mtu: Option<u32>,
            /// Not needed for the system to be considered online.
            #[serde(default, deserialize_with = "yaml11_bool", skip_serializing_if = "Option::is_none")]
            pub optional: Option<bool>,
        }

        impl Interface for $name {
            fn ip(&self) -> IpConfig {
                let mut routes = self.routes.clone();
                for gw in [self.gateway4, self.gateway6].into_iter().flatten() {
                    routes.push(Route { to: RouteTo::Default, via: Some(gw), metric: None });
                }
                IpConfig {
                    dhcp4: self.dhcp4 == Some(true),
                    dhcp6: self.dhcp6 == Some(true),
                    dhcp4_metric: self.dhcp4_overrides.as_ref().and_then(|o| o.route_metric),
                    dhcp6_metric: self.dhcp6_overrides.as_ref().and_then(|o| o.route_metric),
                    accept_ra: self.accept_ra,
                    addresses: self.addresses.clone(),
                    routes,
                    nameservers: self.nameservers.clone().unwrap_or_default(),
                    mtu: self.mtu,
                    optional: self.optional == Some(true),
                }
            }
        }
    };
}

interface_struct! {
    /// One `ethernets` entry: a physical NIC.
    Ethernet {
        /// Which NIC; without it, the entry's id is the interface name.
        #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
        match_: Option<Match>,
        /// Rename the matched NIC to this (requires `match`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        set_name: Option<String>,
        /// Wake on LAN (magic packet).
        #[serde(default, deserialize_with = "yaml11_bool", skip_serializing_if = "Option::is_none")]
        wakeonlan: Option<bool>,
    }
}

interface_struct! {
    /// One `bonds` entry; its id is the bond's interface name.
    Bond {
        /// Member entries (ids of `ethernets`).
        #[serde(default)]
        interfaces: Vec<String>,
        /// Bonding options.
        #[serde(default, skip_serializing_if = "BondParameters::is_empty")]
        parameters: BondParameters,
        /// MAC address for the bond.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        macaddress: Option<MacAddr>,
    }
}

interface_struct! {
    /// One `bridges` entry; its id is the bridge's interface name.
    Bridge {
        /// Ports (ids of other entries).
        #[serde(default)]
        interfaces: Vec<String>,
        /// Bridge options.
        #[serde(default, skip_serializing_if = "BridgeParameters::is_empty")]
        parameters: BridgeParameters,
        /// MAC address for the bridge.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        macaddress: Option<MacAddr>,
    }
}

interface_struct! {
    /// One `vlans` entry; its id is the VLAN interface's name.
    Vlan {
        /// VLAN id, 1–4094.
        id: u16,
        /// The entry (id) the VLAN runs on.
        link: String,
        /// MAC address for the VLAN interface.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        macaddress: Option<MacAddr>,
    }
}

/// DHCP client options (netplan's `dhcp4-overrides`, of which `route-metric`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DhcpOverrides {
    /// Metric of the routes the DHCP client installs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_metric: Option<u32>,
}

/// A boolean as YAML 1.1 (cloud-init's PyYAML) reads it: `true`/`false`, and also
/// `yes`/`no`/`on`/`off`/`y`/`n` in any case, which YAML 1.2 leaves as strings.
pub fn yaml11_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Str(String),
    }
    match Option::<B>::deserialize(d)? {
        None => Ok(None),
        Some(B::Bool(b)) => Ok(Some(b)),
        Some(B::Str(s)) => parse_yaml11_bool(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a boolean"))),
    }
}

/// `yes`/`no`/`on`/`off`/`y`/`n`/`true`/`false` (any case) as a boolean.
pub fn parse_yaml11_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "y" => Some(true),
        "false" | "no" | "off" | "n" => Some(false),
        _ => None,
    }
}

/// Bonding modes (the kernel's names).
pub const BOND_MODES: &[&str] = &[
    "balance-rr",
    "active-backup",
    "balance-xor",
    "broadcast",
    "802.3ad",
    "balance-tlb",
    "balance-alb",
];

/// Bond parameters (netplan names; version 1 `bond-*` names are converted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BondParameters {
    /// One of [`BOND_MODES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// MII link monitoring interval, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mii_monitor_interval: Option<u32>,
    /// LACPDU rate: `slow` or `fast`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacp_rate: Option<String>,
    /// `layer2`, `layer3+4`, `layer2+3`, `encap2+3`, `encap3+4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transmit_hash_policy: Option<String>,
    /// 802.3ad aggregator selection: `stable`, `bandwidth`, `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_select: Option<String>,
    /// Delay before enabling a member after link up, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_delay: Option<u32>,
    /// Delay before disabling a member after link down, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_delay: Option<u32>,
    /// Primary member (an entry id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Minimum members up for the bond to be up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_links: Option<u32>,
    /// ARP monitoring interval, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_interval: Option<u32>,
    /// ARP monitoring targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arp_ip_targets: Vec<IpAddr>,
    /// `none`, `active`, `backup`, `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_validate: Option<String>,
    /// `none`, `active`, `follow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_over_mac_policy: Option<String>,
    /// Gratuitous ARPs after a failover (netplan also accepts the misspelling
    /// `gratuitious-arp`).
    #[serde(
        default,
        alias = "gratuitious-arp",
        skip_serializing_if = "Option::is_none"
    )]
    pub gratuitous_arp: Option<u32>,
    /// `always`, `better`, `failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_reselect_policy: Option<String>,
}

impl BondParameters {
    /// True when no parameter is set.
    pub fn is_empty(&self) -> bool {
        *self == BondParameters::default()
    }
}

/// Bridge parameters (netplan names; version 1 `bridge_*` names are converted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BridgeParameters {
    /// Spanning tree protocol.
    #[serde(
        default,
        deserialize_with = "yaml11_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub stp: Option<bool>,
    /// Forward delay, s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_delay: Option<u32>,
    /// Bridge priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Hello time, s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello_time: Option<u32>,
    /// Max age, s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
    /// Ageing time, s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ageing_time: Option<u32>,
    /// STP path cost per port (entry id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub path_cost: BTreeMap<String, u32>,
    /// STP priority per port (entry id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_priority: BTreeMap<String, u32>,
}

impl BridgeParameters {
    /// True when no parameter is set.
    pub fn is_empty(&self) -> bool {
        *self == BridgeParameters::default()
    }
}

impl Ethernet {
    /// True when the NIC `name` (with `mac` and `driver`) is the one this entry (with id `id`)
    /// applies to.
    pub fn matches(
        &self,
        id: &str,
        name: &str,
        mac: Option<MacAddr>,
        driver: Option<&str>,
    ) -> bool {
        match &self.match_ {
            None => id == name,
            Some(m) => {
                let mac_ok = match m.macaddress {
                    None => true,
                    Some(want) => mac == Some(want),
                };
                let name_ok = match &m.name {
                    None => true,
                    Some(pat) => glob_match(pat, name),
                };
                let driver_ok = match &m.driver {
                    None => true,
                    Some(pat) => driver.is_some_and(|d| glob_match(pat, d)),
                };
                mac_ok && name_ok && driver_ok
            }
        }
    }

    /// The interface name this entry gives its NIC when the agent cannot look at the kernel:
    /// `set-name`, the entry id without `match`, or a `match.name` that is not a glob.
    pub fn static_name<'a>(&'a self, id: &'a str) -> Option<&'a str> {
        if let Some(n) = &self.set_name {
            return Some(n);
        }
        match &self.match_ {
            None => Some(id),
            Some(m) => m.name.as_deref().filter(|n| !n.contains(['*', '?'])),
        }
    }
}

/// Match `name` against a glob with `*` (any run) and `?` (any one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// The network configuration (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Always 2 (a version 1 input is converted).
    pub version: u8,
    /// Physical NICs by entry id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ethernets: BTreeMap<String, Ethernet>,
    /// Bonds by interface name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bonds: BTreeMap<String, Bond>,
    /// Bridges by interface name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bridges: BTreeMap<String, Bridge>,
    /// VLANs by interface name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vlans: BTreeMap<String, Vlan>,
    /// Global resolvers (version 1 `nameserver` without `interface`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Nameservers>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            version: 2,
            ethernets: BTreeMap::new(),
            bonds: BTreeMap::new(),
            bridges: BTreeMap::new(),
            vlans: BTreeMap::new(),
            nameservers: None,
        }
    }
}

/// The kind of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `ethernets`.
    Ethernet,
    /// `bonds`.
    Bond,
    /// `bridges`.
    Bridge,
    /// `vlans`.
    Vlan,
}

impl Kind {
    /// The section name.
    pub fn section(self) -> &'static str {
        match self {
            Kind::Ethernet => "ethernets",
            Kind::Bond => "bonds",
            Kind::Bridge => "bridges",
            Kind::Vlan => "vlans",
        }
    }
}

impl NetworkConfig {
    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.ethernets.is_empty()
            && self.bonds.is_empty()
            && self.bridges.is_empty()
            && self.vlans.is_empty()
            && self.nameservers.as_ref().is_none_or(Nameservers::is_empty)
    }

    /// Every entry: kind, id, IP configuration.
    pub fn entries(&self) -> Vec<(Kind, &str, IpConfig)> {
        let mut v: Vec<(Kind, &str, IpConfig)> = Vec::new();
        v.extend(
            self.ethernets
                .iter()
                .map(|(k, e)| (Kind::Ethernet, k.as_str(), e.ip())),
        );
        v.extend(
            self.bonds
                .iter()
                .map(|(k, e)| (Kind::Bond, k.as_str(), e.ip())),
        );
        v.extend(
            self.bridges
                .iter()
                .map(|(k, e)| (Kind::Bridge, k.as_str(), e.ip())),
        );
        v.extend(
            self.vlans
                .iter()
                .map(|(k, e)| (Kind::Vlan, k.as_str(), e.ip())),
        );
        v
    }

    /// The kind of the entry `id`, if any.
    pub fn kind_of(&self, id: &str) -> Option<Kind> {
        if self.ethernets.contains_key(id) {
            Some(Kind::Ethernet)
        } else if self.bonds.contains_key(id) {
            Some(Kind::Bond)
        } else if self.bridges.contains_key(id) {
            Some(Kind::Bridge)
        } else if self.vlans.contains_key(id) {
            Some(Kind::Vlan)
        } else {
            None
        }
    }

    /// The bond or bridge `id` is a member of, if any.
    pub fn controller_of(&self, id: &str) -> Option<(Kind, &str)> {
        self.bonds
            .iter()
            .find(|(_, b)| b.interfaces.iter().any(|i| i == id))
            .map(|(k, _)| (Kind::Bond, k.as_str()))
            .or_else(|| {
                self.bridges
                    .iter()
                    .find(|(_, b)| b.interfaces.iter().any(|i| i == id))
                    .map(|(k, _)| (Kind::Bridge, k.as_str()))
            })
    }

    /// Parse a cloud-init `network-config` file (YAML or JSON, version 1 or 2), with or without
    /// the top-level `network:` key, and validate it. Paths in errors start at the file's top.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let v: serde_norway::Value = serde_norway::from_str(text)
            .map_err(|e| ConfigError::new("", format!("not YAML: {e}")))?;
        let (v, prefix) = match v {
            serde_norway::Value::Mapping(mut m) if m.contains_key("network") => {
                if m.len() != 1 {
                    let other = m
                        .keys()
                        .filter_map(|k| k.as_str())
                        .find(|k| *k != "network")
                        .unwrap_or("?")
                        .to_string();
                    return Err(ConfigError::new(other, "not supported by xenplug-agent"));
                }
                (m.remove("network").expect("checked"), "network")
            }
            other => (other, ""),
        };
        let version = v.get("version").and_then(|x| x.as_u64());
        let n = match version {
            Some(1) => super::netv1::convert(v).map_err(|e| e.within_opt(prefix))?,
            Some(2) => {
                let n: NetworkConfig = serde_path_to_error::deserialize(v)
                    .map_err(|e| path_err(e).within_opt(prefix))?;
                if n.nameservers.is_some() {
                    return Err(ConfigError::new(
                        "nameservers",
                        "not supported by xenplug-agent in version 2 (give them per interface)",
                    )
                    .within_opt(prefix));
                }
                n
            }
            _ => {
                return Err(ConfigError::new(
                    "version",
                    "must be 1 or 2 (cloud-init network-config versions)",
                )
                .within_opt(prefix))
            }
        };
        n.validate().map_err(|e| e.within_opt(prefix))?;
        Ok(n)
    }

    /// Check what serde cannot: names, references, families, values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != 2 {
            return Err(ConfigError::new(
                "version",
                "the document carries network-config version 2 (convert version 1 first)",
            ));
        }
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut claim = |name: &str, at: &str| -> Result<(), ConfigError> {
            if let Some(prev) = names.insert(name.to_string(), at.to_string()) {
                return Err(ConfigError::new(
                    at,
                    format!("interface name {name:?} is also given by {prev}"),
                ));
            }
            Ok(())
        };
        for (id, e) in &self.ethernets {
            let at = format!("ethernets.{id}");
            match &e.match_ {
                None => {
                    validate_ifname(id).map_err(|m| ConfigError::new(&at, m))?;
                }
                Some(m) => {
                    validate_entry_id(id).map_err(|m| ConfigError::new(&at, m))?;
                    if m.macaddress.is_none() && m.name.is_none() && m.driver.is_none() {
                        return Err(ConfigError::new(
                            format!("{at}.match"),
                            "needs `macaddress`, `name` or `driver`",
                        ));
                    }
                    if let Some(n) = &m.name {
                        validate_ifname_pattern(n)
                            .map_err(|m| ConfigError::new(format!("{at}.match.name"), m))?;
                    }
                    if let Some(d) = &m.driver {
                        validate_driver(d)
                            .map_err(|m| ConfigError::new(format!("{at}.match.driver"), m))?;
                    }
                }
            }
            if let Some(s) = &e.set_name {
                if e.match_.is_none() {
                    return Err(ConfigError::new(
                        format!("{at}.set-name"),
                        "requires `match`",
                    ));
                }
                validate_ifname(s).map_err(|m| ConfigError::new(format!("{at}.set-name"), m))?;
            }
            if let Some(n) = e.static_name(id) {
                if !n.contains(['*', '?']) {
                    claim(n, &at)?;
                }
            }
            check_ip(&at, e)?;
            check_common(&at, e.gateway4, e.gateway6)?;
        }
        for (id, b) in &self.bonds {
            let at = format!("bonds.{id}");
            validate_ifname(id).map_err(|m| ConfigError::new(&at, m))?;
            claim(id, &at)?;
            self.check_members(&at, &b.interfaces, Kind::Bond)?;
            check_bond(&at, &b.parameters, &b.interfaces)?;
            check_ip(&at, b)?;
            check_common(&at, b.gateway4, b.gateway6)?;
        }
        for (id, b) in &self.bridges {
            let at = format!("bridges.{id}");
            validate_ifname(id).map_err(|m| ConfigError::new(&at, m))?;
            claim(id, &at)?;
            self.check_members(&at, &b.interfaces, Kind::Bridge)?;
            for (k, port) in [
                ("path-cost", &b.parameters.path_cost),
                ("port-priority", &b.parameters.port_priority),
            ] {
                for p in port.keys() {
                    if !b.interfaces.contains(p) {
                        return Err(ConfigError::new(
                            format!("{at}.parameters.{k}.{p}"),
                            "not a port of this bridge",
                        ));
                    }
                }
            }
            if let Some(p) = b.parameters.priority {
                if p > 65535 {
                    return Err(ConfigError::new(
                        format!("{at}.parameters.priority"),
                        "must be 0-65535",
                    ));
                }
            }
            check_ip(&at, b)?;
            check_common(&at, b.gateway4, b.gateway6)?;
        }
        for (id, v) in &self.vlans {
            let at = format!("vlans.{id}");
            validate_ifname(id).map_err(|m| ConfigError::new(&at, m))?;
            claim(id, &at)?;
            if !(1..=4094).contains(&v.id) {
                return Err(ConfigError::new(format!("{at}.id"), "must be 1-4094"));
            }
            match self.kind_of(&v.link) {
                None => {
                    return Err(ConfigError::new(
                        format!("{at}.link"),
                        format!("{:?} is not an entry of this configuration", v.link),
                    ))
                }
                Some(Kind::Vlan) => {
                    return Err(ConfigError::new(
                        format!("{at}.link"),
                        "a VLAN cannot run on a VLAN",
                    ))
                }
                Some(_) => {}
            }
            check_ip(&at, v)?;
            check_common(&at, v.gateway4, v.gateway6)?;
        }
        if let Some(ns) = &self.nameservers {
            for (i, s) in ns.search.iter().enumerate() {
                validate_domain(s)
                    .map_err(|m| ConfigError::new(format!("nameservers.search[{i}]"), m))?;
            }
        }
        Ok(())
    }

    fn check_members(&self, at: &str, members: &[String], kind: Kind) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for (i, m) in members.iter().enumerate() {
            let mat = format!("{at}.interfaces[{i}]");
            let Some(k) = self.kind_of(m) else {
                return Err(ConfigError::new(
                    mat,
                    format!("{m:?} is not an entry of this configuration"),
                ));
            };
            if kind == Kind::Bond && k != Kind::Ethernet {
                return Err(ConfigError::new(
                    mat,
                    "bond members must be `ethernets` entries",
                ));
            }
            if !seen.insert(m) {
                return Err(ConfigError::new(mat, format!("{m:?} is listed twice")));
            }
            let owners = self
                .bonds
                .iter()
                .filter(|(_, b)| b.interfaces.contains(m))
                .count()
                + self
                    .bridges
                    .iter()
                    .filter(|(_, b)| b.interfaces.contains(m))
                    .count();
            if owners > 1 {
                return Err(ConfigError::new(
                    mat,
                    format!("{m:?} is a member of more than one bond or bridge"),
                ));
            }
        }
        Ok(())
    }
}

fn validate_driver(d: &str) -> Result<(), String> {
    let ok = !d.is_empty()
        && d.len() <= 64
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*' | '?'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{d:?} is not a driver name (letters, digits, _ - . and the globs * ?)"
        ))
    }
}

fn check_common(at: &str, gw4: Option<IpAddr>, gw6: Option<IpAddr>) -> Result<(), ConfigError> {
    if gw4.is_some_and(|g| !g.is_ipv4()) {
        return Err(ConfigError::new(format!("{at}.gateway4"), "not IPv4"));
    }
    if gw6.is_some_and(|g| !g.is_ipv6()) {
        return Err(ConfigError::new(format!("{at}.gateway6"), "not IPv6"));
    }
    Ok(())
}

fn check_ip(at: &str, i: &dyn Interface) -> Result<(), ConfigError> {
    let ip = i.ip();
    for (n, r) in ip.routes.iter().enumerate() {
        if let (RouteTo::Net(c), Some(v)) = (r.to, r.via) {
            if c.addr.is_ipv4() != v.is_ipv4() {
                return Err(ConfigError::new(
                    format!("{at}.routes[{n}]"),
                    "`to` and `via` are of different address families",
                ));
            }
        }
        if r.to == RouteTo::Default && r.via.is_none() {
            return Err(ConfigError::new(
                format!("{at}.routes[{n}]"),
                "a default route needs `via`",
            ));
        }
    }
    if let Some(mtu) = ip.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(ConfigError::new(
                format!("{at}.mtu"),
                "must be between 68 and 65535",
            ));
        }
    }
    for (n, s) in ip.nameservers.search.iter().enumerate() {
        validate_domain(s)
            .map_err(|m| ConfigError::new(format!("{at}.nameservers.search[{n}]"), m))?;
    }
    Ok(())
}

fn check_bond(at: &str, p: &BondParameters, members: &[String]) -> Result<(), ConfigError> {
    let one_of = |k: &str, v: &Option<String>, set: &[&str]| -> Result<(), ConfigError> {
        match v {
            Some(x) if !set.contains(&x.as_str()) => Err(ConfigError::new(
                format!("{at}.parameters.{k}"),
                format!("{x:?} is not one of {}", set.join(", ")),
            )),
            _ => Ok(()),
        }
    };
    one_of("mode", &p.mode, BOND_MODES)?;
    one_of("lacp-rate", &p.lacp_rate, &["slow", "fast"])?;
    one_of(
        "transmit-hash-policy",
        &p.transmit_hash_policy,
        &["layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4"],
    )?;
    one_of("ad-select", &p.ad_select, &["stable", "bandwidth", "count"])?;
    one_of(
        "arp-validate",
        &p.arp_validate,
        &["none", "active", "backup", "all"],
    )?;
    one_of(
        "fail-over-mac-policy",
        &p.fail_over_mac_policy,
        &["none", "active", "follow"],
    )?;
    one_of(
        "primary-reselect-policy",
        &p.primary_reselect_policy,
        &["always", "better", "failure"],
    )?;
    if let Some(pr) = &p.primary {
        if !members.contains(pr) {
            return Err(ConfigError::new(
                format!("{at}.parameters.primary"),
                format!("{pr:?} is not a member of this bond"),
            ));
        }
    }
    Ok(())
}
