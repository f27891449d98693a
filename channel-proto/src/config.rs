//! The first-boot configuration document, its validation, and the cloud-init NoCloud mapping.
//!
//! The canonical form is JSON (what `xenplug-apply-config` carries under `config`):
//!
//! ```json
//! {
//!   "instance-id": "iid-0f3c", "generation": 3,
//!   "hostname": "web1", "fqdn": "web1.example.org",
//!   "network": {"version": 2, "ethernets": {"lan": {
//!       "match": {"macaddress": "00:16:3e:12:34:56"}, "set-name": "eth0",
//!       "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
//!       "routes": [{"to": "default", "via": "192.0.2.1"}],
//!       "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.org"]}}}},
//!   "users": [{"name": "admin", "ssh_authorized_keys": ["ssh-ed25519 AAAA… me@host"],
//!              "hashed_passwd": "$6$salt$hash"}]
//! }
//! ```
//!
//! `network` is the cloud-init network-config version 2 subset (netplan spelling) and `users`
//! entries use cloud-init's key names, so existing cloud-init data maps one to one; the NoCloud
//! YAML files themselves are accepted by [`ConfigDoc::from_nocloud`]. Unknown keys are rejected
//! with the path of the offending key ([`ConfigError`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A configuration error: where (a dotted path such as `network.ethernets.lan.addresses[1]`)
/// and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the offending value; empty for the document itself.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    fn within(mut self, prefix: &str) -> Self {
        self.path = if self.path.is_empty() {
            prefix.to_string()
        } else if self.path.starts_with('[') {
            format!("{prefix}{}", self.path)
        } else {
            format!("{prefix}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn path_err<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> ConfigError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    ConfigError::new(path, e.inner().to_string())
}

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

/// Which NIC an `ethernets` entry applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The NIC's permanent MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macaddress: Option<MacAddr>,
    /// The kernel interface name; `*` and `?` globs allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination.
    pub to: RouteTo,
    /// Gateway.
    pub via: IpAddr,
    /// Route metric (priority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
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

/// One `ethernets` entry (netplan / cloud-init v2 spelling).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Ethernet {
    /// Which NIC; without it, the entry's id is the interface name.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_: Option<Match>,
    /// Rename the matched NIC to this (requires `match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_name: Option<String>,
    /// Run DHCPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp4: Option<bool>,
    /// Run DHCPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp6: Option<bool>,
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
}

impl Ethernet {
    /// All routes, with `gateway4`/`gateway6` turned into default routes.
    pub fn all_routes(&self) -> Vec<Route> {
        let mut r = self.routes.clone();
        for gw in [self.gateway4, self.gateway6].into_iter().flatten() {
            r.push(Route {
                to: RouteTo::Default,
                via: gw,
                metric: None,
            });
        }
        r
    }

    /// True when `name`/`mac` is the NIC this entry (with id `id`) applies to.
    pub fn matches(&self, id: &str, name: &str, mac: Option<MacAddr>) -> bool {
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
                mac_ok && name_ok
            }
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

/// cloud-init network-config version 2 (the subset described in the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Must be 2.
    pub version: u8,
    /// Ethernet interfaces by id.
    #[serde(default)]
    pub ethernets: BTreeMap<String, Ethernet>,
}

impl NetworkConfig {
    /// Parse a cloud-init `network-config` file (YAML or JSON), with or without the top-level
    /// `network:` key, and validate it.
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
                    return Err(ConfigError::new(other, "unknown key next to `network`"));
                }
                (m.remove("network").expect("checked"), "network")
            }
            other => (other, ""),
        };
        if let Some(ver) = v.get("version") {
            if ver.as_u64() != Some(2) {
                return Err(ConfigError::new(
                    "version",
                    "only network-config version 2 is supported",
                )
                .within_opt(prefix));
            }
        }
        let n: NetworkConfig =
            serde_path_to_error::deserialize(v).map_err(|e| path_err(e).within_opt(prefix))?;
        n.validate().map_err(|e| e.within_opt(prefix))?;
        Ok(n)
    }

    /// Check what serde cannot: version, interface names, families.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != 2 {
            return Err(ConfigError::new(
                "version",
                "only network-config version 2 is supported",
            ));
        }
        for (id, e) in &self.ethernets {
            let at = format!("ethernets.{id}");
            if e.match_.is_none() {
                validate_ifname(id).map_err(|m| ConfigError::new(&at, m))?;
            } else {
                validate_entry_id(id).map_err(|m| ConfigError::new(&at, m))?;
            }
            if let Some(m) = &e.match_ {
                if m.macaddress.is_none() && m.name.is_none() {
                    return Err(ConfigError::new(
                        format!("{at}.match"),
                        "needs `macaddress` or `name`",
                    ));
                }
                if let Some(n) = &m.name {
                    validate_ifname_pattern(n)
                        .map_err(|m| ConfigError::new(format!("{at}.match.name"), m))?;
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
            if let Some(g) = e.gateway4 {
                if !g.is_ipv4() {
                    return Err(ConfigError::new(format!("{at}.gateway4"), "not IPv4"));
                }
            }
            if let Some(g) = e.gateway6 {
                if !g.is_ipv6() {
                    return Err(ConfigError::new(format!("{at}.gateway6"), "not IPv6"));
                }
            }
            for (i, r) in e.routes.iter().enumerate() {
                if let RouteTo::Net(c) = r.to {
                    if c.addr.is_ipv4() != r.via.is_ipv4() {
                        return Err(ConfigError::new(
                            format!("{at}.routes[{i}]"),
                            "`to` and `via` are of different address families",
                        ));
                    }
                }
            }
            if let Some(mtu) = e.mtu {
                if !(68..=65535).contains(&mtu) {
                    return Err(ConfigError::new(
                        format!("{at}.mtu"),
                        "must be between 68 and 65535",
                    ));
                }
            }
            if let Some(ns) = &e.nameservers {
                for (i, s) in ns.search.iter().enumerate() {
                    validate_domain(s).map_err(|m| {
                        ConfigError::new(format!("{at}.nameservers.search[{i}]"), m)
                    })?;
                }
            }
        }
        Ok(())
    }

    /// The same network rendered for cloud-init 22.x, which rejects `to: default`: default
    /// routes are spelled `0.0.0.0/0` / `::/0`.
    pub fn for_old_cloud_init(&self) -> NetworkConfig {
        let mut n = self.clone();
        for e in n.ethernets.values_mut() {
            for r in &mut e.routes {
                if r.to == RouteTo::Default {
                    let addr: IpAddr = if r.via.is_ipv4() {
                        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                    };
                    r.to = RouteTo::Net(Cidr { addr, prefix: 0 });
                }
            }
        }
        n
    }
}

impl ConfigError {
    fn within_opt(self, prefix: &str) -> Self {
        if prefix.is_empty() {
            self
        } else {
            self.within(prefix)
        }
    }
}

/// A user to configure. The user must already exist in the guest (the agent creates none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Keys to install (in the agent's managed block; other keys are kept). An empty list
    /// removes the managed block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// A crypt(3) hash (`$id$…`) for /etc/shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_passwd: Option<String>,
    /// Lock (true) or unlock (false) the password; absent leaves it as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_passwd: Option<bool>,
}

/// The configuration document (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigDoc {
    /// Identifies the instance (cloud-init's `instance-id`).
    pub instance_id: String,
    /// Increases whenever the host changes the configuration of this instance.
    pub generation: u64,
    /// Short host name (or an FQDN, of which the first label is used when `fqdn` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Fully qualified name for /etc/hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// Use the FQDN as the kernel host name (cloud-init `prefer_fqdn_over_hostname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_fqdn_over_hostname: Option<bool>,
    /// Maintain the agent's /etc/hosts entry (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manage_etc_hosts: Option<bool>,
    /// Network configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// Users' keys and passwords.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
}

/// The three NoCloud seed files (as text), plus the generation the host assigns (NoCloud has
/// none; default 1). This is also the `nocloud` argument of `xenplug-apply-config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NoCloudSeed {
    /// `meta-data` (YAML): `instance-id`, `local-hostname`.
    pub meta_data: String,
    /// `user-data` (`#cloud-config` YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// `network-config` (YAML, version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
    /// Generation for the resulting document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// cloud-config keys accepted in NoCloud `user-data`.
pub const USER_DATA_KEYS: &[&str] = &[
    "hostname",
    "fqdn",
    "prefer_fqdn_over_hostname",
    "preserve_hostname",
    "manage_etc_hosts",
    "users",
    "chpasswd",
];

/// Keys accepted in NoCloud `meta-data`.
pub const META_DATA_KEYS: &[&str] = &["instance-id", "local-hostname"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChpasswdUser {
    name: String,
    password: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Chpasswd {
    #[serde(default)]
    expire: Option<bool>,
    #[serde(default)]
    users: Vec<ChpasswdUser>,
}

fn yaml_at<T: serde::de::DeserializeOwned>(
    v: serde_norway::Value,
    at: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| path_err(e).within(at))
}

fn yaml_mapping(text: &str, file: &str) -> Result<serde_norway::Mapping, ConfigError> {
    let v: serde_norway::Value = serde_norway::from_str(text)
        .map_err(|e| ConfigError::new(file, format!("not YAML: {e}")))?;
    match v {
        serde_norway::Value::Null => Ok(serde_norway::Mapping::new()),
        serde_norway::Value::Mapping(m) => Ok(m),
        _ => Err(ConfigError::new(file, "must be a YAML mapping")),
    }
}

fn check_keys(m: &serde_norway::Mapping, allowed: &[&str], file: &str) -> Result<(), ConfigError> {
    for k in m.keys() {
        let Some(k) = k.as_str() else {
            return Err(ConfigError::new(file, "keys must be strings"));
        };
        if !allowed.contains(&k) {
            return Err(ConfigError::new(
                format!("{file}.{k}"),
                format!("unsupported key (supported: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

impl ConfigDoc {
    /// Parse the canonical JSON form and validate it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let doc: ConfigDoc = serde_path_to_error::deserialize(&mut de).map_err(path_err)?;
        doc.validate()?;
        Ok(doc)
    }

    /// Convert a JSON value (e.g. the `config` argument) and validate it.
    pub fn from_value(v: Value) -> Result<Self, ConfigError> {
        let doc: ConfigDoc = serde_path_to_error::deserialize(v).map_err(path_err)?;
        doc.validate()?;
        Ok(doc)
    }

    /// Build a document from NoCloud seed files. Accepts the keys in [`META_DATA_KEYS`] and
    /// [`USER_DATA_KEYS`] and a version 2 `network-config`; anything else is an error naming the
    /// file and key. `chpasswd` entries must be hashes (`type: hash`, or a `$id$…` string
    /// without `type`), and `expire: true` is refused.
    pub fn from_nocloud(seed: &NoCloudSeed) -> Result<Self, ConfigError> {
        let md = yaml_mapping(&seed.meta_data, "meta-data")?;
        check_keys(&md, META_DATA_KEYS, "meta-data")?;
        let instance_id = match md.get("instance-id") {
            Some(serde_norway::Value::String(s)) => s.clone(),
            Some(serde_norway::Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(ConfigError::new(
                    "meta-data.instance-id",
                    "must be a string",
                ))
            }
            None => return Err(ConfigError::new("meta-data.instance-id", "is required")),
        };
        let mut doc = ConfigDoc {
            instance_id,
            generation: seed.generation.unwrap_or(1),
            ..Default::default()
        };
        if let Some(h) = md.get("local-hostname") {
            doc.hostname = Some(yaml_at(h.clone(), "meta-data.local-hostname")?);
        }
        if let Some(ud) = &seed.user_data {
            let first = ud.lines().next().unwrap_or("").trim_end();
            if first != "#cloud-config" {
                return Err(ConfigError::new(
                    "user-data",
                    "must start with the line `#cloud-config` (scripts, MIME and includes are not supported)",
                ));
            }
            let m = yaml_mapping(ud, "user-data")?;
            check_keys(&m, USER_DATA_KEYS, "user-data")?;
            let get_bool = |k: &str| -> Result<Option<bool>, ConfigError> {
                m.get(k)
                    .map(|v| yaml_at::<bool>(v.clone(), &format!("user-data.{k}")))
                    .transpose()
            };
            let preserve = get_bool("preserve_hostname")?.unwrap_or(false);
            if let Some(v) = m.get("hostname") {
                doc.hostname = Some(yaml_at(v.clone(), "user-data.hostname")?);
            }
            if let Some(v) = m.get("fqdn") {
                doc.fqdn = Some(yaml_at(v.clone(), "user-data.fqdn")?);
            }
            if preserve {
                doc.hostname = None;
                doc.fqdn = None;
            }
            doc.prefer_fqdn_over_hostname = get_bool("prefer_fqdn_over_hostname")?;
            if let Some(v) = m.get("manage_etc_hosts") {
                doc.manage_etc_hosts = Some(match v {
                    serde_norway::Value::Bool(b) => *b,
                    serde_norway::Value::String(s) if s == "localhost" || s == "template" => true,
                    _ => {
                        return Err(ConfigError::new(
                            "user-data.manage_etc_hosts",
                            "must be true, false, \"localhost\" or \"template\"",
                        ))
                    }
                });
            }
            if let Some(serde_norway::Value::Sequence(list)) = m.get("users") {
                for (i, u) in list.iter().enumerate() {
                    let at = format!("user-data.users[{i}]");
                    match u {
                        serde_norway::Value::String(s) if s == "default" => {}
                        serde_norway::Value::String(_) => {
                            return Err(ConfigError::new(
                                at,
                                "only `default` may be given as a bare string; use a mapping with `name`",
                            ))
                        }
                        other => doc.users.push(yaml_at(other.clone(), &at)?),
                    }
                }
            } else if m.contains_key("users") {
                return Err(ConfigError::new("user-data.users", "must be a list"));
            }
            if let Some(v) = m.get("chpasswd") {
                let c: Chpasswd = yaml_at(v.clone(), "user-data.chpasswd")?;
                if c.expire == Some(true) {
                    return Err(ConfigError::new(
                        "user-data.chpasswd.expire",
                        "password expiry is not supported; set `expire: false`",
                    ));
                }
                for (i, cu) in c.users.into_iter().enumerate() {
                    let at = format!("user-data.chpasswd.users[{i}]");
                    match cu.kind.as_deref() {
                        Some("hash") => {}
                        None if cu.password.starts_with('$') => {}
                        _ => {
                            return Err(ConfigError::new(
                                at,
                                "only hashed passwords are accepted (`type: hash`)",
                            ))
                        }
                    }
                    match doc.users.iter_mut().find(|u| u.name == cu.name) {
                        Some(u) => u.hashed_passwd = Some(cu.password),
                        None => doc.users.push(User {
                            name: cu.name,
                            hashed_passwd: Some(cu.password),
                            ..Default::default()
                        }),
                    }
                }
            }
        }
        if let Some(nc) = &seed.network_config {
            doc.network =
                Some(NetworkConfig::from_yaml(nc).map_err(|e| e.within("network-config"))?);
        }
        doc.validate()?;
        Ok(doc)
    }

    /// Render as NoCloud seed files that cloud-init itself accepts (used to check our documents
    /// against `cloud-init schema` and `cloud-init devel net-convert`). Default routes are
    /// spelled for cloud-init 22.x (see [`NetworkConfig::for_old_cloud_init`]).
    pub fn to_nocloud(&self) -> NoCloudSeed {
        let mut md = serde_norway::Mapping::new();
        md.insert("instance-id".into(), self.instance_id.clone().into());
        if let Some(h) = &self.hostname {
            md.insert("local-hostname".into(), h.clone().into());
        }
        let mut ud = serde_norway::Mapping::new();
        if let Some(h) = &self.hostname {
            ud.insert("hostname".into(), h.clone().into());
        }
        if let Some(f) = &self.fqdn {
            ud.insert("fqdn".into(), f.clone().into());
        }
        if let Some(b) = self.prefer_fqdn_over_hostname {
            ud.insert("prefer_fqdn_over_hostname".into(), b.into());
        }
        if let Some(b) = self.manage_etc_hosts {
            ud.insert("manage_etc_hosts".into(), b.into());
        }
        if !self.users.is_empty() {
            ud.insert(
                "users".into(),
                serde_norway::to_value(&self.users).expect("users serialize"),
            );
        }
        let user_data = format!(
            "#cloud-config\n{}",
            serde_norway::to_string(&ud).expect("mapping serializes")
        );
        let network_config = self.network.as_ref().map(|n| {
            let mut m = serde_norway::Mapping::new();
            m.insert(
                "network".into(),
                serde_norway::to_value(n.for_old_cloud_init()).expect("network serializes"),
            );
            serde_norway::to_string(&m).expect("mapping serializes")
        });
        NoCloudSeed {
            meta_data: serde_norway::to_string(&md).expect("mapping serializes"),
            user_data: Some(user_data),
            network_config,
            generation: Some(self.generation),
        }
    }

    /// Check what serde cannot (names, hashes, keys, network families).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.instance_id.is_empty()
            || self.instance_id.len() > 255
            || self.instance_id.chars().any(|c| c.is_control())
        {
            return Err(ConfigError::new(
                "instance-id",
                "must be 1-255 characters without control characters",
            ));
        }
        if let Some(h) = &self.hostname {
            validate_hostname(h).map_err(|m| ConfigError::new("hostname", m))?;
        }
        if let Some(f) = &self.fqdn {
            validate_hostname(f).map_err(|m| ConfigError::new("fqdn", m))?;
            if !f.contains('.') {
                return Err(ConfigError::new("fqdn", "must contain a dot"));
            }
        }
        if let Some(n) = &self.network {
            n.validate().map_err(|e| e.within("network"))?;
        }
        let mut seen = BTreeSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let at = format!("users[{i}]");
            validate_username(&u.name).map_err(|m| ConfigError::new(format!("{at}.name"), m))?;
            if !seen.insert(u.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("user '{}' is listed twice", u.name),
                ));
            }
            for (k, key) in u.ssh_authorized_keys.iter().enumerate() {
                parse_ssh_key(key)
                    .map_err(|m| ConfigError::new(format!("{at}.ssh_authorized_keys[{k}]"), m))?;
            }
            if let Some(h) = &u.hashed_passwd {
                validate_password_hash(h)
                    .map_err(|m| ConfigError::new(format!("{at}.hashed_passwd"), m))?;
            }
        }
        Ok(())
    }

    /// The kernel host name this document asks for (see `prefer_fqdn_over_hostname`), not yet
    /// truncated (see [`truncate_hostname`]).
    pub fn effective_hostname(&self) -> Option<String> {
        if self.prefer_fqdn_over_hostname == Some(true) {
            if let Some(f) = &self.fqdn {
                return Some(f.clone());
            }
        }
        match (&self.hostname, &self.fqdn) {
            (Some(h), _) => Some(h.clone()),
            (None, Some(f)) => f.split('.').next().map(str::to_string),
            (None, None) => None,
        }
    }
}

/// Validate a DNS host name (one label or several): labels of 1–63 `[A-Za-z0-9-]` not starting
/// or ending with `-`, 253 characters at most.
pub fn validate_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 253 {
        return Err(format!("'{h}' must be 1-253 characters"));
    }
    for label in h.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "'{h}' is not a valid host name (labels of letters, digits and '-')"
            ));
        }
    }
    Ok(())
}

fn validate_domain(d: &str) -> Result<(), String> {
    validate_hostname(d).map_err(|_| format!("'{d}' is not a valid domain name"))
}

/// Cut a host name to `max` bytes (HOST_NAME_MAX, 64 on Linux): if it is longer, keep the first
/// label, and cut that too if needed (afterburn's rule).
pub fn truncate_hostname(h: &str, max: usize) -> String {
    if h.len() <= max {
        return h.to_string();
    }
    let first = h.split('.').next().unwrap_or(h);
    first.chars().take(max).collect()
}

/// The kernel's `dev_valid_name()` (net/core/dev.c): not empty, at most IFNAMSIZ-1 = 15 bytes,
/// not `.` or `..`, and no `/`, `:` or byte the kernel's `isspace()` accepts (`\t \n \v \f \r`,
/// space, and 0xA0, which it counts as a space too). A NUL byte would end the name early, so it
/// is refused as well.
pub fn kernel_valid_ifname(n: &str) -> Result<(), String> {
    let b = n.as_bytes();
    let why = if b.is_empty() {
        Some("is empty".to_string())
    } else if b.len() > 15 {
        Some(format!("is {} bytes long (at most 15)", b.len()))
    } else if n == "." || n == ".." {
        Some("is reserved".to_string())
    } else {
        b.iter()
            .find(|c| {
                matches!(
                    c,
                    b'/' | b':' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0xa0 | 0
                )
            })
            .map(|c| format!("contains {}", show_byte(*c)))
    };
    match why {
        Some(w) => Err(format!("{:?} is not a valid interface name: it {w}", n)),
        None => Ok(()),
    }
}

fn show_byte(c: u8) -> String {
    match c {
        b' ' => "a space".into(),
        b'/' | b':' => format!("'{}'", c as char),
        _ => format!("the byte 0x{c:02x}"),
    }
}

/// Characters an interface name may have in a document: the ones that mean themselves in every
/// place xenplug-agent writes a name (a command line ifupdown hands to `/bin/sh`, networkd's
/// `Name=` glob lists, NetworkManager key files, `ip`'s argument list).
fn ifname_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | '+')
}

/// Validate an interface name: [`kernel_valid_ifname`], and then only the characters a shell or
/// a configuration parser takes literally (letters, digits, `_ - . @ +`), not starting with `-`
/// (an option to `ip`/`ifup`) and not all digits (systemd reads that as an ifindex). The kernel
/// would accept `a;reboot` or `$(x)`; every renderer would hand them to something that does not
/// take them literally (ifupdown runs its commands through `/bin/sh` with the name substituted),
/// so they are refused here, before anything is sent or written.
pub fn validate_ifname(n: &str) -> Result<(), String> {
    kernel_valid_ifname(n)?;
    check_ifname_chars(n, false)
}

/// Validate a `match.name` pattern: as [`validate_ifname`], plus the globs `*` (any run) and `?`
/// (one character), which is what [`glob_match`] and the renderers understand.
pub fn validate_ifname_pattern(p: &str) -> Result<(), String> {
    kernel_valid_ifname(p)?;
    check_ifname_chars(p, true)
}

fn check_ifname_chars(n: &str, glob: bool) -> Result<(), String> {
    if let Some(c) = n
        .chars()
        .find(|c| !(ifname_char_ok(*c) || (glob && matches!(c, '*' | '?'))))
    {
        let allowed = if glob {
            "letters, digits, _ - . @ + and the globs * ?"
        } else {
            "letters, digits and _ - . @ +"
        };
        return Err(format!(
            "{n:?} is not accepted as an interface name: {c:?} would be interpreted by a shell or \
             a configuration parser (allowed: {allowed})"
        ));
    }
    if n.starts_with('-') {
        return Err(format!(
            "{n:?} is not accepted as an interface name: it starts with '-'"
        ));
    }
    if n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{n:?} is not accepted as an interface name: it is all digits (an interface index)"
        ));
    }
    Ok(())
}

/// Validate the id of a network entry that has a `match` (so the id is not an interface name):
/// 1–64 of the characters an interface name may have, not starting with `-` or `.`. The id
/// names the agent's files and NetworkManager connections.
pub fn validate_entry_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(ifname_char_ok)
        && !id.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not accepted as an entry id (1-64 letters, digits, _ - . @ +, not starting with - or .)"
        ))
    }
}

/// Validate a login name the way useradd's default NAME_REGEX does (plus upper case): starts
/// with a letter or `_`, then letters, digits, `_`, `-`, `.`, optionally a trailing `$`; at most
/// 32 characters.
pub fn validate_username(n: &str) -> Result<(), String> {
    let b = n.as_bytes();
    let body = b.strip_suffix(b"$").unwrap_or(b);
    let ok = !body.is_empty()
        && n.len() <= 32
        && (body[0].is_ascii_alphabetic() || body[0] == b'_')
        && body
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("'{n}' is not a valid user name"))
    }
}

/// Validate a crypt(3) hash in modular format: `$id$…` using only the crypt alphabet
/// `[./0-9A-Za-z]` plus `$`, `=` and `,` (parameters). Nothing else can reach /etc/shadow.
pub fn validate_password_hash(h: &str) -> Result<(), String> {
    let ok = h.len() >= 4
        && h.len() <= 512
        && h.starts_with('$')
        && h[1..].contains('$')
        && h.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'/' | b'$' | b'=' | b','));
    if ok {
        Ok(())
    } else {
        Err("not a crypt(3) hash of the form $id$salt$hash".into())
    }
}

/// An OpenSSH `authorized_keys` line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    /// Leading options (e.g. `from="10.0.0.0/8",no-pty`), if any.
    pub options: Option<String>,
    /// Key type, e.g. `ssh-ed25519`.
    pub kind: String,
    /// The base64 key blob.
    pub blob: String,
    /// Trailing comment, if any.
    pub comment: Option<String>,
}

/// Key types accepted in authorized_keys lines.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
];

/// Parse and check one authorized_keys line: a known key type and a base64 blob whose embedded
/// type matches it; optional leading options and trailing comment. Rejects newlines and control
/// characters, so a key can never inject a second line.
pub fn parse_ssh_key(line: &str) -> Result<SshKey, String> {
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("contains a control character or line break".into());
    }
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Err("empty key".into());
    }
    let (options, rest) = match line.split_whitespace().next() {
        Some(t) if SSH_KEY_TYPES.contains(&t) => (None, line),
        _ => {
            // Options run to the first whitespace outside double quotes.
            let mut in_q = false;
            let mut esc = false;
            let mut end = None;
            for (i, c) in line.char_indices() {
                if esc {
                    esc = false;
                } else if c == '\\' && in_q {
                    esc = true;
                } else if c == '"' {
                    in_q = !in_q;
                } else if c.is_whitespace() && !in_q {
                    end = Some(i);
                    break;
                }
            }
            let end = end.ok_or("no key type (expected e.g. ssh-ed25519 AAAA…)")?;
            (Some(line[..end].to_string()), line[end..].trim_start())
        }
    };
    let mut it = rest.splitn(3, char::is_whitespace);
    let kind = it.next().unwrap_or("");
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!("unknown key type '{kind}'"));
    }
    let blob = it.next().unwrap_or("").trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| "key data is not base64".to_string())?;
    if raw.len() < 4 {
        return Err("key data is too short".into());
    }
    let n = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    if raw.len() < 4 + n || &raw[4..4 + n] != kind.as_bytes() {
        return Err(format!("key data does not hold a {kind} key"));
    }
    let comment = it
        .next()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    Ok(SshKey {
        options,
        kind: kind.to_string(),
        blob: blob.to_string(),
        comment,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A syntactically valid ed25519 public key line (random key material).
    pub fn test_key(comment: &str) -> String {
        let mut raw = Vec::new();
        raw.extend_from_slice(&11u32.to_be_bytes());
        raw.extend_from_slice(b"ssh-ed25519");
        raw.extend_from_slice(&32u32.to_be_bytes());
        raw.extend((0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(comment.len() as u8)));
        format!(
            "ssh-ed25519 {} {comment}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn doc() -> Value {
        json!({
            "instance-id": "iid-1", "generation": 2,
            "hostname": "web1", "fqdn": "web1.example.org",
            "network": {"version": 2, "ethernets": {
                "lan": {"match": {"macaddress": "00:16:3E:12:34:56"}, "set-name": "eth0",
                        "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
                        "routes": [{"to": "default", "via": "192.0.2.1"},
                                   {"to": "198.51.100.0/24", "via": "192.0.2.254", "metric": 50}],
                        "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.org"]}},
                "eth1": {"dhcp4": true, "dhcp6": true}}},
            "users": [{"name": "admin", "ssh_authorized_keys": [test_key("me@host")],
                       "hashed_passwd": "$6$salt$abcdefghijklmnop"}]
        })
    }

    #[test]
    fn canonical_roundtrip() {
        let d = ConfigDoc::from_value(doc()).unwrap();
        assert_eq!(d.generation, 2);
        let lan = &d.network.as_ref().unwrap().ethernets["lan"];
        assert_eq!(
            lan.match_.as_ref().unwrap().macaddress.unwrap().to_string(),
            "00:16:3e:12:34:56"
        );
        assert_eq!(lan.all_routes().len(), 2);
        let back = serde_json::to_value(&d).unwrap();
        assert_eq!(ConfigDoc::from_value(back).unwrap(), d);
        assert_eq!(
            ConfigDoc::from_json(serde_json::to_string(&d).unwrap().as_bytes()).unwrap(),
            d
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_path() {
        let mut v = doc();
        v["network"]["ethernets"]["lan"]["wakeonlan"] = json!(true);
        let e = ConfigDoc::from_value(v).unwrap_err();
        assert_eq!(e.path, "network.ethernets.lan.wakeonlan");
        assert!(e.message.contains("unknown field `wakeonlan`"), "{e}");
        let mut v = doc();
        v["colour"] = json!("red");
        let e = ConfigDoc::from_value(v).unwrap_err();
        assert!(e.message.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn invalid_values_are_rejected_precisely() {
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str, &str)> = vec![
            (
                Box::new(|v| v["network"]["ethernets"]["lan"]["addresses"][1] = json!("10.0.0.1")),
                "network.ethernets.lan.addresses[1]",
                "lacks a prefix length",
            ),
            (
                Box::new(|v| {
                    v["network"]["ethernets"]["lan"]["addresses"][0] = json!("10.0.0.1/33")
                }),
                "network.ethernets.lan.addresses[0]",
                "prefix length",
            ),
            (
                Box::new(|v| v["hostname"] = json!("bad_name")),
                "hostname",
                "not a valid host name",
            ),
            (
                Box::new(|v| v["users"][0]["hashed_passwd"] = json!("plaintext")),
                "users[0].hashed_passwd",
                "crypt(3)",
            ),
            (
                Box::new(|v| v["users"][0]["hashed_passwd"] = json!("$6$a:b$c")),
                "users[0].hashed_passwd",
                "crypt(3)",
            ),
            (
                Box::new(|v| {
                    v["users"][0]["ssh_authorized_keys"][0] = json!("ssh-ed25519 AAAA\nssh-rsa x")
                }),
                "users[0].ssh_authorized_keys[0]",
                "line break",
            ),
            (
                Box::new(|v| v["users"][0]["name"] = json!("../root")),
                "users[0].name",
                "not a valid user name",
            ),
            (
                Box::new(|v| {
                    v["network"]["ethernets"]["lan"]["routes"][1]["via"] = json!("2001:db8::1")
                }),
                "network.ethernets.lan.routes[1]",
                "different address families",
            ),
            (
                Box::new(|v| v["network"]["version"] = json!(1)),
                "network.version",
                "version 2",
            ),
            (
                Box::new(|v| {
                    v["network"]["ethernets"]["eth1"]["set-name"] = json!("x");
                }),
                "network.ethernets.eth1.set-name",
                "requires `match`",
            ),
            (
                Box::new(|v| {
                    v["network"]["ethernets"]["lan"]["match"]["macaddress"] = json!("00:16")
                }),
                "network.ethernets.lan.match.macaddress",
                "not a MAC address",
            ),
            (
                Box::new(|v| v["generation"] = json!(-1)),
                "generation",
                "invalid value",
            ),
        ];
        for (edit, path, msg) in cases {
            let mut v = doc();
            edit(&mut v);
            let e = ConfigDoc::from_value(v).unwrap_err();
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains(msg), "{e}");
        }
    }

    #[test]
    fn nocloud_is_accepted() {
        let seed = NoCloudSeed {
            meta_data: "instance-id: iid-local01\nlocal-hostname: cloudimg\n".into(),
            user_data: Some(format!(
                "#cloud-config\nhostname: web2\nfqdn: web2.example.org\nmanage_etc_hosts: true\nusers:\n  - default\n  - name: admin\n    ssh_authorized_keys:\n      - {}\n    lock_passwd: false\nchpasswd:\n  expire: false\n  users:\n    - name: admin\n      password: $6$rounds=4096$salt$hash\n      type: hash\n",
                test_key("k1")
            )),
            network_config: Some(
                "network:\n  version: 2\n  ethernets:\n    id0:\n      match:\n        macaddress: '00:16:3e:00:00:01'\n      set-name: eth0\n      addresses: [192.0.2.5/24]\n      gateway4: 192.0.2.1\n      nameservers:\n        addresses: [192.0.2.53]\n        search: [example.org]\n".into(),
            ),
            generation: Some(4),
        };
        let d = ConfigDoc::from_nocloud(&seed).unwrap();
        assert_eq!(d.instance_id, "iid-local01");
        assert_eq!(d.generation, 4);
        assert_eq!(d.hostname.as_deref(), Some("web2"));
        assert_eq!(d.effective_hostname().as_deref(), Some("web2"));
        assert_eq!(d.users.len(), 1);
        assert_eq!(
            d.users[0].hashed_passwd.as_deref(),
            Some("$6$rounds=4096$salt$hash")
        );
        assert_eq!(d.users[0].lock_passwd, Some(false));
        let eth = &d.network.as_ref().unwrap().ethernets["id0"];
        assert_eq!(eth.all_routes()[0].to, RouteTo::Default);
        // And back: our rendering parses to the same document.
        let again = ConfigDoc::from_nocloud(&d.to_nocloud()).unwrap();
        assert_eq!(again.users, d.users);
        assert_eq!(again.hostname, d.hostname);
        assert_eq!(again.generation, 4);
    }

    #[test]
    fn nocloud_rejections() {
        let base = NoCloudSeed {
            meta_data: "instance-id: i\n".into(),
            ..Default::default()
        };
        let with_ud = |ud: &str| NoCloudSeed {
            user_data: Some(ud.into()),
            ..base.clone()
        };
        let e = ConfigDoc::from_nocloud(&with_ud("#cloud-config\nruncmd: [ls]\n")).unwrap_err();
        assert_eq!(e.path, "user-data.runcmd");
        assert!(e.message.contains("unsupported key"));
        let e = ConfigDoc::from_nocloud(&with_ud("#!/bin/sh\necho hi\n")).unwrap_err();
        assert_eq!(e.path, "user-data");
        let e = ConfigDoc::from_nocloud(&with_ud(
            "#cloud-config\nusers:\n  - name: bob\n    sudo: ALL\n",
        ))
        .unwrap_err();
        assert_eq!(e.path, "user-data.users[0].sudo");
        assert!(e.message.contains("unknown field `sudo`"), "{e}");
        let e = ConfigDoc::from_nocloud(&with_ud(
            "#cloud-config\nchpasswd:\n  users:\n    - {name: bob, password: secret, type: text}\n",
        ))
        .unwrap_err();
        assert_eq!(e.path, "user-data.chpasswd.users[0]");
        let e = ConfigDoc::from_nocloud(&with_ud("#cloud-config\nhostname: 42\n")).unwrap_err();
        assert_eq!(e.path, "user-data.hostname");
        let e = ConfigDoc::from_nocloud(&NoCloudSeed {
            meta_data: "local-hostname: x\n".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.path, "meta-data.instance-id");
        let e = ConfigDoc::from_nocloud(&NoCloudSeed {
            network_config: Some("version: 1\nconfig: []\n".into()),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.path, "network-config.version");
        let e = ConfigDoc::from_nocloud(&NoCloudSeed {
            network_config: Some(
                "version: 2\nethernets:\n  eth0:\n    addresses: [192.0.2.1]\n".into(),
            ),
            ..base
        })
        .unwrap_err();
        assert_eq!(e.path, "network-config.ethernets.eth0.addresses[0]");
    }

    #[test]
    fn ssh_key_parsing() {
        let k = test_key("me@host");
        let p = parse_ssh_key(&k).unwrap();
        assert_eq!(p.kind, "ssh-ed25519");
        assert_eq!(p.comment.as_deref(), Some("me@host"));
        let with_opts = format!("from=\"10.0.0.0/8,a b\",no-pty {k}");
        let p = parse_ssh_key(&with_opts).unwrap();
        assert_eq!(p.options.as_deref(), Some("from=\"10.0.0.0/8,a b\",no-pty"));
        assert!(parse_ssh_key("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIA== x")
            .unwrap_err()
            .contains("does not hold a ssh-rsa key"));
        assert!(parse_ssh_key("ssh-ed25519 !!!").is_err());
        assert!(parse_ssh_key("hello world").is_err());
        assert!(parse_ssh_key("").is_err());
    }

    #[test]
    fn hostnames() {
        assert!(validate_hostname("a-b.example.org").is_ok());
        assert!(validate_hostname("-a").is_err());
        assert!(validate_hostname(&"a".repeat(64)).is_err());
        let long = format!("{}.{}", "a".repeat(60), "b".repeat(60));
        assert_eq!(truncate_hostname(&long, 64), "a".repeat(60));
        assert_eq!(truncate_hostname("short.example", 64), "short.example");
    }

    /// Issue 12: interface names are validated as the kernel does (`dev_valid_name`) and
    /// nothing a shell or parser would interpret gets through, wherever a name comes in.
    #[test]
    fn hostile_interface_names_are_refused_where_they_come_in() {
        let hostile = [
            "a;reboot",
            "$(reboot)",
            "`reboot`",
            "a|b",
            "a b",
            "a&b",
            "a>b",
            "a'b",
            "a\"b",
            "a\\b",
            "${IFS}",
            "a\nb",
            "a\tb",
            "a/b",
            "a:1",
            ".",
            "..",
            "",
            "sixteen-bytes-xx",
            "-x",
            "42",
            "\u{e0}",
            "a%b",
            "a#b",
            "a[0]",
        ];
        for bad in hostile {
            let mut v = doc();
            v["network"]["ethernets"]["lan"]["set-name"] = json!(bad);
            let e = ConfigDoc::from_value(v).unwrap_err();
            assert_eq!(e.path, "network.ethernets.lan.set-name", "{bad:?}: {e}");
            let mut v = doc();
            v["network"]["ethernets"]["lan"]["match"] = json!({"name": bad});
            let e = ConfigDoc::from_value(v).unwrap_err();
            assert_eq!(e.path, "network.ethernets.lan.match.name", "{bad:?}: {e}");
            let mut v = doc();
            v["network"]["ethernets"][bad] = json!({"dhcp4": true});
            let e = ConfigDoc::from_value(v).unwrap_err();
            assert_eq!(e.path, format!("network.ethernets.{bad}"), "{bad:?}: {e}");
        }
        // The kernel's own rule, byte for byte.
        assert!(kernel_valid_ifname("a;reboot").is_ok());
        assert!(kernel_valid_ifname("fifteen-bytes-x").is_ok());
        for bad in [
            "", ".", "..", "a/b", "a:b", "a b", "a\u{b}b", "a\u{c}b", "\u{e0}",
        ] {
            assert!(kernel_valid_ifname(bad).is_err(), "{bad:?}");
        }
        // Names and patterns a guest really has still pass.
        for good in [
            "eth0",
            "ens3",
            "enp0s31f6",
            "br-lan",
            "bond0.100",
            "vif5.0",
            "wg0",
            "lan@1",
        ] {
            validate_ifname(good).unwrap();
        }
        validate_ifname_pattern("enp*s?").unwrap();
        assert!(validate_ifname("enp*").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("eth*", "eth0"));
        assert!(glob_match("en?0s*", "enp0s3"));
        assert!(!glob_match("eth?", "eth10"));
        assert!(glob_match("*", ""));
    }
}
