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
//! The document speaks cloud-init's language: `network` is cloud-init network-config version 2
//! (netplan spelling, see [`network`]), and the other members are cloud-config's keys with
//! their meanings (`users`, `groups`, `chpasswd`, `write_files`, …, kebab-case at the top
//! level). Where cloud-init has a default (`lock_passwd: true`, `disable_root: true`), the
//! document carries it explicitly: the NoCloud mapping ([`nocloud`], behind
//! [`ConfigDoc::from_nocloud`]) fills cloud-init's defaults in, so a seed written for cloud-init
//! gives the same guest. Unknown keys are rejected with their path and "not supported by
//! xenplug-agent" ([`ConfigError`]), on dom0, before anything is sent.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

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

mod netv1;
pub mod network;
pub mod nocloud;

pub use network::{
    glob_match, Bond, BondParameters, Bridge, BridgeParameters, Cidr, Ethernet, Interface,
    IpConfig, Kind, MacAddr, Match, Nameservers, NetworkConfig, Route, RouteTo, Vlan,
};

/// The message every refusal of a key xenplug-agent does not implement carries.
pub const NOT_SUPPORTED: &str = "not supported by xenplug-agent";

fn path_err<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> ConfigError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let msg = e.inner().to_string();
    // serde: "unknown field `x`, expected one of `a`, `b`": the path already names `x`.
    let msg = match msg.strip_prefix("unknown field `") {
        Some(rest) => {
            let known = rest
                .split_once(", expected ")
                .map(|(_, k)| format!(" (here: {})", k.trim_start_matches("one of ")))
                .unwrap_or_default();
            format!("{NOT_SUPPORTED}{known}")
        }
        None => msg,
    };
    ConfigError::new(path, msg)
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

fn is_false(b: &bool) -> bool {
    !*b
}

/// A user, with cloud-init's key names and meanings. A user that does not exist is created
/// (with the creation keys); an existing one gets what cloud-init applies to existing users:
/// password (`hashed_passwd`), lock state, sudo rules and keys. A document carries explicit
/// values: cloud-init's defaults (`lock_passwd: true`) are filled in by the NoCloud mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name (not with `default`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The image's default user (named in the agent's configuration, with its groups, shell
    /// and sudo rules there); the keys of this entry override those.
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
    /// Keys to install (in the agent's managed block; other keys are kept). An empty list
    /// removes the managed block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// A crypt(3) hash (`$id$…`) for /etc/shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_passwd: Option<String>,
    /// true locks the password (as `passwd -l`); false or absent leaves the lock as it is (as
    /// cloud-init: a new `hashed_passwd` is what makes a password usable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_passwd: Option<bool>,
    /// sudoers rules, each written as `<name> <rule>` in `/etc/sudoers.d/90-xenplug-agent-users`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sudo: Vec<String>,
    /// Creation only: comment (GECOS) field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gecos: Option<String>,
    /// Creation only: home directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homedir: Option<String>,
    /// Creation only: primary group (created if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_group: Option<String>,
    /// Creation only: supplementary groups (created if missing unless `create_groups: false`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Creation only: login shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Creation only: a system account (system UID range, no home directory created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<bool>,
    /// Creation only: the UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Creation only: do not create the home directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_create_home: Option<bool>,
    /// Creation only: do not create a group named after the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_user_group: Option<bool>,
    /// Creation only: do not add the user to the lastlog and faillog databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_log_init: Option<bool>,
    /// Creation only: create missing `groups` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_groups: Option<bool>,
    /// Creation only: a crypt(3) hash given to `useradd --password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passwd: Option<String>,
    /// Creation only: account expiry date, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiredate: Option<String>,
    /// Creation only: days after password expiry until the account is disabled (`-1`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive: Option<String>,
}

/// A group to create (before the users), and members to add to it (users that exist then).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Users to add.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

/// A `chpasswd` entry: a hash, or a random password the agent makes and prints on the
/// console (cloud-init's `RANDOM`); `expire` forces a change at the next login.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// User (empty with `default`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The default user (cloud-config's top-level `password`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
    /// crypt(3) hash (plain text in the NoCloud seed was hashed on dom0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_passwd: Option<String>,
    /// Make a random password instead.
    #[serde(default, skip_serializing_if = "is_false")]
    pub random: bool,
    /// Expire the password (the user must change it at the next login).
    #[serde(default, skip_serializing_if = "is_false")]
    pub expire: bool,
}

/// One `write_files` entry. `content` is text, or base64 with `encoding: b64` (gzip in the
/// NoCloud seed was inflated on dom0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// Absolute path.
    pub path: String,
    /// Content.
    #[serde(default)]
    pub content: String,
    /// `b64` for base64 content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// `user` or `user:group` (default `root:root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Octal mode (default `0644`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    /// Append to the file instead of replacing it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub append: bool,
    /// Write after the users are created (cloud-init's `write_files_deferred`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub defer: bool,
}

impl WriteFile {
    /// The bytes to write.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match self.encoding.as_deref() {
            None => Ok(self.content.clone().into_bytes()),
            Some("b64") => base64::engine::general_purpose::STANDARD
                .decode(self.content.trim())
                .map_err(|e| format!("content is not base64: {e}")),
            Some(other) => Err(format!("unknown encoding {other:?} (only b64)")),
        }
    }

    /// The mode bits.
    pub fn mode(&self) -> Result<u32, String> {
        match &self.permissions {
            None => Ok(0o644),
            Some(p) => parse_mode(p),
        }
    }
}

/// `0644`, `644`, `0o644` → 0o644 (at most 0o7777).
pub fn parse_mode(p: &str) -> Result<u32, String> {
    let digits = p.strip_prefix("0o").unwrap_or(p);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !digits.is_empty())
        .ok_or_else(|| format!("{p:?} is not an octal mode like '0644'"))
}

/// A `bootcmd`/`runcmd` item: a shell line, or an argument vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cmd {
    /// Run by the shell as written.
    Shell(String),
    /// Each element one argument (quoted for the shell).
    Argv(Vec<String>),
}

/// Time servers (`ntp`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ntp {
    /// Servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    /// `chrony` or `systemd-timesyncd`; absent: whichever the guest has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp_client: Option<String>,
}

/// Trusted CA certificates (`ca_certs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaCerts {
    /// PEM certificates to trust.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted: Vec<String>,
    /// Stop trusting the distribution's certificates.
    #[serde(default, skip_serializing_if = "is_false")]
    pub remove_defaults: bool,
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
    /// Groups to create, before the users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    /// Users to create or update.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    /// Keys for the default user, and for root (see `disable-root`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// When `ssh-authorized-keys` are given: true installs them for root behind a command
    /// that tells the user to log in as the default user (cloud-init's `disable_root`), false
    /// installs them for root as they are. Absent: root's keys are left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_root: Option<bool>,
    /// The options put before root's keys with `disable-root` (`$USER`: the default user,
    /// `$DISABLE_USER`: root); absent: cloud-init's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_root_opts: Option<String>,
    /// sshd `PasswordAuthentication`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_pwauth: Option<bool>,
    /// Password changes, after the users are created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chpasswd: Vec<PasswordChange>,
    /// Time zone (a name under /usr/share/zoneinfo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Time servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp: Option<Ntp>,
    /// Files to write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_files: Vec<WriteFile>,
    /// Commands run once per instance before everything else (needs `run-commands` in the
    /// agent's configuration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootcmd: Vec<Cmd>,
    /// Commands run once per instance after everything else (needs `run-commands`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runcmd: Vec<Cmd>,
    /// Logged when the configuration is applied (`$version`, `$timestamp`, `$datasource`,
    /// `$uptime` are replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_message: Option<String>,
    /// CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<CaCerts>,
}

/// The three NoCloud seed files (as text), plus the generation the host assigns (NoCloud has
/// none; default 1). This is also the `nocloud` argument of `xenplug-apply-config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NoCloudSeed {
    /// `meta-data` (YAML): `instance-id`, `local-hostname`, `public-keys`.
    pub meta_data: String,
    /// `user-data` (`#cloud-config` YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// `network-config` (YAML, version 1 or 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
    /// Generation for the resulting document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

impl ConfigDoc {
    /// Parse the canonical JSON form and validate it.
    ///
    /// The bytes are read as a JSON value first, as the `config` argument of
    /// `xenplug-apply-config` (and an etcd entry of the peer) is, so that every path accepts the
    /// same documents with the same meaning: a member given twice takes its last value, as in
    /// serde_json's values (and cloud-init's YAML), instead of being refused on this path only
    /// (found by the `config_json` fuzz target).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::new("", e.to_string()))?;
        Self::from_value(v)
    }

    /// Convert a JSON value (e.g. the `config` argument) and validate it.
    pub fn from_value(v: Value) -> Result<Self, ConfigError> {
        let doc: ConfigDoc = serde_path_to_error::deserialize(v).map_err(path_err)?;
        doc.validate()?;
        Ok(doc)
    }

    /// Build a document from NoCloud seed files with cloud-init's meanings (see
    /// [`nocloud`]); anything xenplug-agent does not do is refused with the file and key path
    /// and "not supported by xenplug-agent".
    pub fn from_nocloud(seed: &NoCloudSeed) -> Result<Self, ConfigError> {
        nocloud::convert(seed)
    }

    /// Check what serde cannot (names, hashes, keys, paths, network references).
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
        for (i, g) in self.groups.iter().enumerate() {
            let at = format!("groups[{i}]");
            validate_username(&g.name)
                .map_err(|m| ConfigError::new(format!("{at}.name"), m.replace("user", "group")))?;
            for (k, m) in g.members.iter().enumerate() {
                validate_username(m)
                    .map_err(|e| ConfigError::new(format!("{at}.members[{k}]"), e))?;
            }
        }
        let mut seen = BTreeSet::new();
        let mut defaults = 0;
        for (i, u) in self.users.iter().enumerate() {
            let at = format!("users[{i}]");
            if u.default {
                defaults += 1;
                if defaults > 1 {
                    return Err(ConfigError::new(
                        format!("{at}.default"),
                        "the default user is listed twice",
                    ));
                }
                if !u.name.is_empty() {
                    validate_username(&u.name)
                        .map_err(|m| ConfigError::new(format!("{at}.name"), m))?;
                }
            } else {
                validate_username(&u.name)
                    .map_err(|m| ConfigError::new(format!("{at}.name"), m))?;
                if !seen.insert(u.name.as_str()) {
                    return Err(ConfigError::new(
                        format!("{at}.name"),
                        format!("user '{}' is listed twice", u.name),
                    ));
                }
            }
            validate_user(u).map_err(|e| e.within(&at))?;
        }
        for (k, key) in self.ssh_authorized_keys.iter().enumerate() {
            parse_ssh_key(key)
                .map_err(|m| ConfigError::new(format!("ssh-authorized-keys[{k}]"), m))?;
        }
        if let Some(o) = &self.disable_root_opts {
            if o.is_empty() || o.chars().any(|c| c.is_control()) {
                return Err(ConfigError::new(
                    "disable-root-opts",
                    "must be one line of authorized_keys options",
                ));
            }
        }
        for (i, c) in self.chpasswd.iter().enumerate() {
            let at = format!("chpasswd[{i}]");
            if !(c.default && c.name.is_empty()) {
                validate_username(&c.name)
                    .map_err(|m| ConfigError::new(format!("{at}.name"), m))?;
            }
            match (&c.hashed_passwd, c.random) {
                (Some(h), false) => validate_password_hash(h)
                    .map_err(|m| ConfigError::new(format!("{at}.hashed_passwd"), m))?,
                (None, true) => {}
                _ => {
                    return Err(ConfigError::new(
                        at,
                        "needs exactly one of `hashed_passwd` and `random`",
                    ))
                }
            }
        }
        if let Some(tz) = &self.timezone {
            validate_timezone(tz).map_err(|m| ConfigError::new("timezone", m))?;
        }
        if let Some(n) = &self.ntp {
            for (k, list) in [("servers", &n.servers), ("pools", &n.pools)] {
                for (i, s) in list.iter().enumerate() {
                    if s.parse::<IpAddr>().is_err() {
                        validate_hostname(s)
                            .map_err(|m| ConfigError::new(format!("ntp.{k}[{i}]"), m))?;
                    }
                }
            }
            if let Some(c) = &n.ntp_client {
                if !["chrony", "systemd-timesyncd"].contains(&c.as_str()) {
                    return Err(ConfigError::new(
                        "ntp.ntp_client",
                        format!(
                            "{c:?}: not supported by xenplug-agent (chrony or systemd-timesyncd)"
                        ),
                    ));
                }
            }
        }
        for (i, f) in self.write_files.iter().enumerate() {
            validate_write_file(f).map_err(|e| e.within(&format!("write-files[{i}]")))?;
        }
        for (key, list) in [("bootcmd", &self.bootcmd), ("runcmd", &self.runcmd)] {
            for (i, c) in list.iter().enumerate() {
                let bad = match c {
                    Cmd::Shell(s) => s.contains('\0'),
                    Cmd::Argv(a) => a.is_empty() || a.iter().any(|x| x.contains('\0')),
                };
                if bad {
                    return Err(ConfigError::new(
                        format!("{key}[{i}]"),
                        "must be a non-empty command without NUL bytes",
                    ));
                }
            }
        }
        if self
            .final_message
            .as_deref()
            .is_some_and(|m| m.contains('\0'))
        {
            return Err(ConfigError::new("final-message", "contains a NUL byte"));
        }
        if let Some(ca) = &self.ca_certs {
            for (i, c) in ca.trusted.iter().enumerate() {
                validate_pem_certificates(c)
                    .map_err(|m| ConfigError::new(format!("ca-certs.trusted[{i}]"), m))?;
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

    /// True when the document asks for commands to run (`bootcmd`, `runcmd`).
    pub fn has_commands(&self) -> bool {
        !self.bootcmd.is_empty() || !self.runcmd.is_empty()
    }
}

pub(crate) fn validate_user(u: &User) -> Result<(), ConfigError> {
    for (k, key) in u.ssh_authorized_keys.iter().enumerate() {
        parse_ssh_key(key).map_err(|m| ConfigError::new(format!("ssh_authorized_keys[{k}]"), m))?;
    }
    for (k, h) in [("hashed_passwd", &u.hashed_passwd), ("passwd", &u.passwd)] {
        if let Some(h) = h {
            validate_password_hash(h).map_err(|m| ConfigError::new(k, m))?;
        }
    }
    for (i, r) in u.sudo.iter().enumerate() {
        validate_sudo_rule(r).map_err(|m| ConfigError::new(format!("sudo[{i}]"), m))?;
    }
    if let Some(g) = &u.gecos {
        if g.contains(':') || g.chars().any(|c| c.is_control()) {
            return Err(ConfigError::new(
                "gecos",
                "must not contain ':' or control characters (it is a passwd field)",
            ));
        }
    }
    for (k, p) in [("homedir", &u.homedir), ("shell", &u.shell)] {
        if let Some(p) = p {
            validate_abs_path(p).map_err(|m| ConfigError::new(k, m))?;
            if p.contains(':') {
                return Err(ConfigError::new(
                    k,
                    "must not contain ':' (it is a passwd field)",
                ));
            }
        }
    }
    if let Some(g) = &u.primary_group {
        validate_username(g)
            .map_err(|m| ConfigError::new("primary_group", m.replace("user", "group")))?;
    }
    for (i, g) in u.groups.iter().enumerate() {
        validate_username(g)
            .map_err(|m| ConfigError::new(format!("groups[{i}]"), m.replace("user", "group")))?;
    }
    if let Some(d) = &u.expiredate {
        validate_date(d).map_err(|m| ConfigError::new("expiredate", m))?;
    }
    if let Some(n) = &u.inactive {
        if n.parse::<i64>().map(|n| n < -1).unwrap_or(true) {
            return Err(ConfigError::new(
                "inactive",
                "must be a number of days, or -1",
            ));
        }
    }
    if u.uid == Some(u32::MAX) {
        return Err(ConfigError::new("uid", "4294967295 is not a valid UID"));
    }
    Ok(())
}

/// A sudoers rule as cloud-init writes it after the user name (`<name> <rule>`): one line, no
/// line continuation (a trailing `\` joins the next line), and nothing that would extend the
/// user list (`,` first). The agent also has `visudo` check the whole file when the guest has
/// it.
pub fn validate_sudo_rule(r: &str) -> Result<(), String> {
    let t = r.trim();
    if t.is_empty() {
        return Err("empty rule".into());
    }
    if r.chars().any(|c| c.is_control()) {
        return Err("must be one line without control characters".into());
    }
    if t.ends_with('\\') {
        return Err("must not end with '\\' (it would continue on the next line)".into());
    }
    if t.starts_with(',') {
        return Err("must not start with ',' (it would add users to the rule)".into());
    }
    Ok(())
}

fn validate_abs_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err(format!("{p:?} contains a control character"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!("{p:?} contains '..'"));
    }
    Ok(())
}

fn validate_date(d: &str) -> Result<(), String> {
    let p: Vec<&str> = d.split('-').collect();
    let ok = p.len() == 3
        && p[0].len() == 4
        && p[1].len() == 2
        && p[2].len() == 2
        && p.iter().all(|x| x.bytes().all(|b| b.is_ascii_digit()))
        && (1..=12).contains(&p[1].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&p[2].parse::<u32>().unwrap_or(0));
    if ok {
        Ok(())
    } else {
        Err(format!("{d:?} is not a date YYYY-MM-DD"))
    }
}

/// A time zone name: `Area/Location` segments of letters, digits, `_ + -`, no `..`.
pub fn validate_timezone(tz: &str) -> Result<(), String> {
    let ok = !tz.is_empty()
        && tz.len() <= 64
        && tz.split('/').all(|s| {
            !s.is_empty()
                && s != ".."
                && s != "."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{tz:?} is not a time zone name like Europe/Paris"))
    }
}

pub(crate) fn validate_write_file(f: &WriteFile) -> Result<(), ConfigError> {
    validate_abs_path(&f.path).map_err(|m| ConfigError::new("path", m))?;
    if f.path.ends_with('/') {
        return Err(ConfigError::new("path", "names a directory"));
    }
    f.bytes().map_err(|m| ConfigError::new("content", m))?;
    f.mode().map_err(|m| ConfigError::new("permissions", m))?;
    if let Some(o) = &f.owner {
        let (u, g) = o.split_once(':').unwrap_or((o, ""));
        validate_username(u).map_err(|m| ConfigError::new("owner", m))?;
        if !g.is_empty() {
            validate_username(g)
                .map_err(|m| ConfigError::new("owner", m.replace("user", "group")))?;
        }
    }
    Ok(())
}

/// One or more PEM certificates (`-----BEGIN CERTIFICATE-----` … base64 … `-----END …`).
pub fn validate_pem_certificates(pem: &str) -> Result<(), String> {
    let mut count = 0;
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match (&mut body, line) {
            (None, "-----BEGIN CERTIFICATE-----") => body = Some(String::new()),
            (None, "") => {}
            (None, other) => {
                return Err(format!("unexpected line outside a certificate: {other:?}"))
            }
            (Some(b), "-----END CERTIFICATE-----") => {
                base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|_| "certificate body is not base64".to_string())?;
                count += 1;
                body = None;
            }
            (Some(b), l) => b.push_str(l),
        }
    }
    if body.is_some() {
        return Err("a certificate has no END line".into());
    }
    if count == 0 {
        return Err("no PEM certificate".into());
    }
    Ok(())
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
        assert_eq!(lan.ip().routes.len(), 2);
        let back = serde_json::to_value(&d).unwrap();
        assert_eq!(ConfigDoc::from_value(back).unwrap(), d);
        assert_eq!(
            ConfigDoc::from_json(serde_json::to_string(&d).unwrap().as_bytes()).unwrap(),
            d
        );
    }

    /// A member given twice means the same on the bytes path and on the value path (the
    /// `config` argument): its last value. The bytes path used to refuse it ("duplicate field")
    /// while the value path took the last one: the `config_json` fuzz target's finding.
    #[test]
    fn a_duplicated_member_means_the_same_on_both_paths() {
        let text = br#"{"instance-id": "i-1", "generation": 1, "hostname": "a",
                        "generation": 2, "hostname": "b",
                        "network": {"version": 2, "ethernets": {"eth0": {"dhcp4": false,
                                     "dhcp4": true}}}}"#;
        let from_bytes = ConfigDoc::from_json(text).unwrap();
        let v: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(ConfigDoc::from_value(v).unwrap(), from_bytes);
        assert_eq!(from_bytes.generation, 2);
        assert_eq!(from_bytes.hostname.as_deref(), Some("b"));
        assert_eq!(
            from_bytes.network.as_ref().unwrap().ethernets["eth0"].dhcp4,
            Some(true)
        );
        // Not JSON at all is still refused, with serde_json's position.
        let e = ConfigDoc::from_json(b"{\"instance-id\": ").unwrap_err();
        assert!(e.message.contains("line 1"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_path() {
        let mut v = doc();
        v["network"]["ethernets"]["lan"]["link-local"] = json!(["ipv4"]);
        let e = ConfigDoc::from_value(v).unwrap_err();
        assert_eq!(e.path, "network.ethernets.lan.link-local");
        assert!(
            e.message.starts_with("not supported by xenplug-agent"),
            "{e}"
        );
        let mut v = doc();
        v["colour"] = json!("red");
        let e = ConfigDoc::from_value(v).unwrap_err();
        assert_eq!(e.path, "colour");
        assert!(
            e.message.starts_with("not supported by xenplug-agent"),
            "{e}"
        );
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
        // cloud-init order: the listed users, then the default user.
        assert_eq!(d.users.len(), 2);
        assert!(d.users[1].default && d.users[1].lock_passwd.is_none());
        assert_eq!(d.users[0].name, "admin");
        assert_eq!(d.users[0].lock_passwd, Some(false));
        assert_eq!(
            d.chpasswd,
            vec![PasswordChange {
                name: "admin".into(),
                hashed_passwd: Some("$6$rounds=4096$salt$hash".into()),
                ..Default::default()
            }]
        );
        assert_eq!(d.manage_etc_hosts, Some(true));
        assert_eq!(d.disable_root, Some(true));
        let eth = &d.network.as_ref().unwrap().ethernets["id0"];
        assert_eq!(eth.ip().routes[0].to, RouteTo::Default);
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
        for (ud, path) in [
            ("#cloud-config\npackages: [nginx]\n", "user-data.packages"),
            ("#cloud-config\napt: {}\n", "user-data.apt"),
            ("#cloud-config\nsnap: {}\n", "user-data.snap"),
            ("#cloud-config\nchef: {}\n", "user-data.chef"),
            (
                "#cloud-config\npower_state: {mode: reboot}\n",
                "user-data.power_state",
            ),
            (
                "#cloud-config\nusers:\n  - name: bob\n    ssh_import_id: [gh:bob]\n",
                "user-data.users[0].ssh_import_id",
            ),
            (
                "#cloud-config\nntp: {config: {confpath: /x}}\n",
                "user-data.ntp.config",
            ),
            (
                "#cloud-config\nwrite_files: [{path: /x, mode: '0644'}]\n",
                "user-data.write_files[0].mode",
            ),
        ] {
            let e = ConfigDoc::from_nocloud(&with_ud(ud)).unwrap_err();
            assert_eq!(e.path, path, "{e}");
            assert_eq!(e.message, "not supported by xenplug-agent", "{e}");
            assert_eq!(
                e.to_string(),
                format!("{path}: not supported by xenplug-agent")
            );
        }
        let e = ConfigDoc::from_nocloud(&with_ud("#!/bin/sh\necho hi\n")).unwrap_err();
        assert_eq!(e.path, "user-data");
        assert!(e.message.contains("not supported by xenplug-agent"), "{e}");
        let e = ConfigDoc::from_nocloud(&with_ud("#cloud-config\nhostname: 42\n")).unwrap_err();
        assert_eq!(e.path, "user-data.hostname");
        let e = ConfigDoc::from_nocloud(&NoCloudSeed {
            meta_data: "local-hostname: x\n".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.path, "meta-data.instance-id");
        let base = NoCloudSeed {
            user_data: Some("#cloud-config\n".into()),
            ..base
        };
        let e = ConfigDoc::from_nocloud(&NoCloudSeed {
            network_config: Some("version: 3\nconfig: []\n".into()),
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
