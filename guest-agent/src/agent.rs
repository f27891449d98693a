//! The command handlers: the QGA subset and xenplug's commands, over injected effects.

use std::path::PathBuf;
use std::process::Command as Process;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use xenplug_channel::config::{parse_ssh_key, validate_password_hash};
use xenplug_channel::qga::{
    self, AgentInfo, AuthorizedKeys, Command, CommandInfo, HostName, IpAddress, NetworkInterface,
    NetworkStats, OsInfo, ShutdownMode,
};
use xenplug_channel::ErrorBody;

use crate::apply::{self, Host};
use crate::fsutil::under;
use crate::net::{NetOps, Netlink};
use crate::users;

/// What a handled command produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Reply with this value.
    Reply(Value),
    /// Reply, preceded by `0xFF` (guest-sync-delimited).
    DelimitedReply(Value),
    /// Send nothing (guest-shutdown on success).
    NoReply,
}

/// Power actions (injectable: tests never power anything off).
pub trait Power: Send {
    /// Shut down, halt or reboot the guest.
    fn shutdown(&mut self, mode: ShutdownMode) -> Result<()>;
}

/// Runs a shutdown program as qemu-ga does: `PROGRAM -P|-H|-r +0 "hypervisor initiated …"`.
#[derive(Debug, Clone)]
pub struct ShutdownProgram(pub PathBuf);

impl Power for ShutdownProgram {
    fn shutdown(&mut self, mode: ShutdownMode) -> Result<()> {
        let flag = match mode {
            ShutdownMode::Powerdown => "-P",
            ShutdownMode::Halt => "-H",
            ShutdownMode::Reboot => "-r",
        };
        apply::log_event("shutdown", &[("mode", flag)]);
        let st = Process::new(&self.0)
            .args([flag, "+0", "hypervisor initiated shutdown"])
            .status()
            .with_context(|| format!("run {}", self.0.display()))?;
        if !st.success() {
            bail!("{} {flag} failed: {st}", self.0.display());
        }
        Ok(())
    }
}

/// The agent's state and effects.
pub struct Agent {
    /// Files are read and written under this root.
    pub root: PathBuf,
    /// Kernel host name.
    pub host: Box<dyn Host + Send>,
    /// Power actions.
    pub power: Box<dyn Power>,
    /// Apply network changes live (false: persisted files only).
    pub live_network: bool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("root", &self.root)
            .field("live_network", &self.live_network)
            .finish()
    }
}

fn generic(e: anyhow::Error) -> ErrorBody {
    ErrorBody::generic(format!("{e:#}"))
}

impl Agent {
    /// Handle one decoded command.
    pub fn handle(&mut self, cmd: Command) -> Result<Outcome, ErrorBody> {
        let ok = |v: Value| Ok(Outcome::Reply(v));
        match cmd {
            Command::Sync(a) => ok(json!(a.id)),
            Command::SyncDelimited(a) => Ok(Outcome::DelimitedReply(json!(a.id))),
            Command::Ping => ok(json!({})),
            Command::Info => ok(serde_json::to_value(AgentInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                supported_commands: qga::COMMANDS
                    .iter()
                    .map(|n| CommandInfo {
                        name: n.to_string(),
                        enabled: true,
                        success_response: qga::success_response(n),
                    })
                    .collect(),
            })
            .expect("serializes")),
            Command::GetHostName => {
                let h = self.host.hostname().map_err(generic)?;
                ok(serde_json::to_value(HostName { host_name: h }).expect("serializes"))
            }
            Command::GetOsinfo => ok(serde_json::to_value(self.osinfo()).expect("serializes")),
            Command::NetworkGetInterfaces => {
                let l = network_interfaces().map_err(generic)?;
                ok(serde_json::to_value(l).expect("serializes"))
            }
            Command::GetTime => {
                let ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0);
                ok(json!(ns))
            }
            Command::SshGetAuthorizedKeys(a) => {
                let pw = users::lookup(&self.root, &a.username).map_err(generic)?;
                let keys = users::read_keys(&self.root, &pw).map_err(generic)?;
                ok(serde_json::to_value(AuthorizedKeys { keys }).expect("serializes"))
            }
            Command::SshAddAuthorizedKeys(a) => {
                check_keys(&a.keys)?;
                let pw = users::lookup(&self.root, &a.username).map_err(generic)?;
                let reset = a.reset == Some(true);
                let keys = a.keys.clone();
                users::edit_keys(&self.root, &pw, |old| {
                    let mut lines: Vec<String> = if reset {
                        Vec::new()
                    } else {
                        old.lines().map(str::to_string).collect()
                    };
                    for k in &keys {
                        if !lines.iter().any(|l| l.trim() == k.trim()) {
                            lines.push(k.trim().to_string());
                        }
                    }
                    join_lines(&lines)
                })
                .map_err(generic)?;
                apply::log_event(
                    "ssh-keys-add",
                    &[
                        ("user", &a.username),
                        ("keys", &a.keys.len().to_string()),
                        ("reset", &reset.to_string()),
                    ],
                );
                ok(json!({}))
            }
            Command::SshRemoveAuthorizedKeys(a) => {
                check_keys(&a.keys)?;
                let pw = users::lookup(&self.root, &a.username).map_err(generic)?;
                let keys = a.keys.clone();
                users::edit_keys(&self.root, &pw, |old| {
                    let lines: Vec<String> = old
                        .lines()
                        .filter(|l| !keys.iter().any(|k| k.trim() == l.trim()))
                        .map(str::to_string)
                        .collect();
                    join_lines(&lines)
                })
                .map_err(generic)?;
                apply::log_event(
                    "ssh-keys-remove",
                    &[("user", &a.username), ("keys", &a.keys.len().to_string())],
                );
                ok(json!({}))
            }
            Command::SetUserPassword(a) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.password.trim())
                    .map_err(|_| ErrorBody::generic("Invalid base64 data"))?;
                let text = String::from_utf8(raw)
                    .map_err(|_| ErrorBody::generic("password is not UTF-8"))?;
                if text.contains(['\n', ':', '\0']) {
                    return Err(ErrorBody::generic(
                        "password contains a forbidden character",
                    ));
                }
                users::lookup(&self.root, &a.username).map_err(generic)?;
                let hash = if a.crypted {
                    validate_password_hash(&text).map_err(ErrorBody::generic)?;
                    text
                } else {
                    users::hash_password(&text).map_err(generic)?
                };
                users::update_shadow(
                    &self.root,
                    &[users::ShadowChange {
                        name: a.username.clone(),
                        hash: Some(hash),
                        lock: None,
                    }],
                )
                .map_err(generic)?;
                apply::log_event("password", &[("user", &a.username)]);
                ok(json!({}))
            }
            Command::Shutdown(a) => {
                self.power
                    .shutdown(a.mode.unwrap_or_default())
                    .map_err(generic)?;
                Ok(Outcome::NoReply)
            }
            Command::ApplyConfig(a) => {
                let doc = a
                    .into_doc()
                    .map_err(|e| ErrorBody::generic(format!("invalid configuration: {e}")))?;
                let mut nl;
                let net: Option<&mut dyn NetOps> = if self.live_network && doc.network.is_some() {
                    nl = Netlink::open().map_err(|e| generic(e.into()))?;
                    Some(&mut nl)
                } else {
                    None
                };
                let opts = apply::options();
                let mut ctx = apply::Ctx {
                    root: &self.root,
                    host: &mut *self.host,
                    net,
                    tools: &mut crate::tools::RealTools,
                    opts: &opts,
                };
                let r = apply::apply(&doc, &mut ctx).map_err(generic)?;
                ok(serde_json::to_value(r).expect("serializes"))
            }
            Command::GetConfigGeneration => {
                let g = apply::applied_generation(&self.root).map_err(generic)?;
                ok(serde_json::to_value(g).expect("serializes"))
            }
        }
    }

    fn osinfo(&self) -> OsInfo {
        let mut o = OsInfo::default();
        if let Ok(u) = nix::sys::utsname::uname() {
            o.kernel_release = Some(u.release().to_string_lossy().into_owned());
            o.kernel_version = Some(u.version().to_string_lossy().into_owned());
            o.machine = Some(u.machine().to_string_lossy().into_owned());
        }
        let text = std::fs::read_to_string(under(&self.root, "/etc/os-release"))
            .or_else(|_| std::fs::read_to_string(under(&self.root, "/usr/lib/os-release")))
            .unwrap_or_default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
            let slot = match k.trim() {
                "ID" => &mut o.id,
                "NAME" => &mut o.name,
                "PRETTY_NAME" => &mut o.pretty_name,
                "VERSION" => &mut o.version,
                "VERSION_ID" => &mut o.version_id,
                "VARIANT" => &mut o.variant,
                "VARIANT_ID" => &mut o.variant_id,
                _ => continue,
            };
            *slot = Some(v);
        }
        o
    }
}

fn join_lines(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

fn check_keys(keys: &[String]) -> Result<(), ErrorBody> {
    for (i, k) in keys.iter().enumerate() {
        parse_ssh_key(k)
            .map_err(|e| ErrorBody::generic(format!("keys[{i}]: invalid public key: {e}")))?;
    }
    Ok(())
}

/// `guest-network-get-interfaces` from a netlink dump.
pub fn network_interfaces() -> Result<Vec<NetworkInterface>> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let addrs = nl.addresses()?;
    Ok(links
        .into_iter()
        .map(|l| {
            let ips: Vec<IpAddress> = addrs
                .iter()
                .filter(|a| a.index == l.index)
                .map(|a| IpAddress {
                    ip_address: a.addr.to_string(),
                    ip_address_type: if a.addr.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
                    prefix: a.prefix,
                })
                .collect();
            NetworkInterface {
                name: l.name,
                hardware_address: Some(
                    l.mac
                        .map(|m| xenplug_channel::config::MacAddr(m).to_string())
                        .unwrap_or_else(|| "00:00:00:00:00:00".into()),
                ),
                ip_addresses: if ips.is_empty() { None } else { Some(ips) },
                statistics: l.stats.map(|s| NetworkStats {
                    rx_bytes: s[0],
                    rx_packets: s[1],
                    rx_errs: s[2],
                    rx_dropped: s[3],
                    tx_bytes: s[4],
                    tx_packets: s[5],
                    tx_errs: s[6],
                    tx_dropped: s[7],
                }),
            }
        })
        .collect())
}
