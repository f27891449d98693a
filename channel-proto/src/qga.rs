//! Typed commands: the QGA subset xenplug-agent implements (qemu-ga's names, arguments and reply
//! shapes) and xenplug's own commands (namespaced `xenplug-…` per the QMP convention for
//! downstream extensions).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{ConfigDoc, ConfigError, NoCloudSeed};
use crate::message::{ErrorBody, Request};

/// `guest-sync`: echo `id` (an integer).
pub const GUEST_SYNC: &str = "guest-sync";
/// `guest-sync-delimited`: echo `id`, reply preceded by `0xFF`.
pub const GUEST_SYNC_DELIMITED: &str = "guest-sync-delimited";
/// `guest-ping`: `{}`.
pub const GUEST_PING: &str = "guest-ping";
/// `guest-info`: [`AgentInfo`].
pub const GUEST_INFO: &str = "guest-info";
/// `guest-get-host-name`: [`HostName`].
pub const GUEST_GET_HOST_NAME: &str = "guest-get-host-name";
/// `guest-get-osinfo`: [`OsInfo`].
pub const GUEST_GET_OSINFO: &str = "guest-get-osinfo";
/// `guest-network-get-interfaces`: a list of [`NetworkInterface`].
pub const GUEST_NETWORK_GET_INTERFACES: &str = "guest-network-get-interfaces";
/// `guest-ssh-get-authorized-keys {username}`: [`AuthorizedKeys`].
pub const GUEST_SSH_GET_AUTHORIZED_KEYS: &str = "guest-ssh-get-authorized-keys";
/// `guest-ssh-add-authorized-keys {username, keys, reset?}`: `{}`.
pub const GUEST_SSH_ADD_AUTHORIZED_KEYS: &str = "guest-ssh-add-authorized-keys";
/// `guest-ssh-remove-authorized-keys {username, keys}`: `{}`.
pub const GUEST_SSH_REMOVE_AUTHORIZED_KEYS: &str = "guest-ssh-remove-authorized-keys";
/// `guest-set-user-password {username, password (base64), crypted}`: `{}`.
pub const GUEST_SET_USER_PASSWORD: &str = "guest-set-user-password";
/// `guest-shutdown {mode?}`: no reply on success.
pub const GUEST_SHUTDOWN: &str = "guest-shutdown";
/// `guest-get-time`: nanoseconds since the epoch (integer).
pub const GUEST_GET_TIME: &str = "guest-get-time";
/// `xenplug-apply-config {config} | {nocloud}`: [`ApplyResult`].
pub const XENPLUG_APPLY_CONFIG: &str = "xenplug-apply-config";
/// `xenplug-get-config-generation`: [`ConfigGeneration`].
pub const XENPLUG_GET_CONFIG_GENERATION: &str = "xenplug-get-config-generation";

/// Every command xenplug-agent implements, in `guest-info` order.
pub const COMMANDS: &[&str] = &[
    GUEST_SYNC_DELIMITED,
    GUEST_SYNC,
    GUEST_PING,
    GUEST_INFO,
    GUEST_GET_HOST_NAME,
    GUEST_GET_OSINFO,
    GUEST_NETWORK_GET_INTERFACES,
    GUEST_SSH_GET_AUTHORIZED_KEYS,
    GUEST_SSH_ADD_AUTHORIZED_KEYS,
    GUEST_SSH_REMOVE_AUTHORIZED_KEYS,
    GUEST_SET_USER_PASSWORD,
    GUEST_SHUTDOWN,
    GUEST_GET_TIME,
    XENPLUG_APPLY_CONFIG,
    XENPLUG_GET_CONFIG_GENERATION,
];

/// True for commands that send no reply on success (`guest-shutdown`).
pub fn success_response(name: &str) -> bool {
    name != GUEST_SHUTDOWN
}

/// Arguments of `guest-sync` / `guest-sync-delimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncArgs {
    /// The nonce (qemu-ga: a 64-bit integer; keep below 2^53 for JSON peers).
    pub id: i64,
}

/// Arguments naming a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserArgs {
    /// The user.
    pub username: String,
}

/// Arguments of `guest-ssh-add-authorized-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshAddArgs {
    /// The user.
    pub username: String,
    /// Public keys (authorized_keys lines).
    pub keys: Vec<String>,
    /// Replace the user's keys instead of adding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<bool>,
}

/// Arguments of `guest-ssh-remove-authorized-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshRemoveArgs {
    /// The user.
    pub username: String,
    /// Keys to remove.
    pub keys: Vec<String>,
}

/// Arguments of `guest-set-user-password`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPasswordArgs {
    /// The user (must exist).
    pub username: String,
    /// Base64 of the password (or of its crypt(3) hash when `crypted`).
    pub password: String,
    /// The password is already a crypt(3) hash.
    pub crypted: bool,
}

/// `guest-shutdown` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownMode {
    /// Power off (default).
    #[default]
    Powerdown,
    /// Halt.
    Halt,
    /// Reboot.
    Reboot,
}

/// Arguments of `guest-shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShutdownArgs {
    /// The mode (default powerdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ShutdownMode>,
}

/// Arguments of `xenplug-apply-config`: exactly one of `config` (the canonical document) or
/// `nocloud` (NoCloud seed files as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum ApplyConfigArgs {
    /// `{"config": {…}}` (boxed: the document is much larger than a seed).
    Config(Box<ConfigDoc>),
    /// `{"nocloud": {"meta-data": "…", "user-data": "…", "network-config": "…", "generation": N}}`.
    Nocloud(NoCloudSeed),
}

impl ApplyConfigArgs {
    /// The validated document.
    pub fn into_doc(self) -> Result<ConfigDoc, ConfigError> {
        match self {
            ApplyConfigArgs::Config(d) => {
                d.validate()?;
                Ok(*d)
            }
            ApplyConfigArgs::Nocloud(s) => ConfigDoc::from_nocloud(&s),
        }
    }
}

/// A request decoded into a known command with typed arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `guest-sync`.
    Sync(SyncArgs),
    /// `guest-sync-delimited`.
    SyncDelimited(SyncArgs),
    /// `guest-ping`.
    Ping,
    /// `guest-info`.
    Info,
    /// `guest-get-host-name`.
    GetHostName,
    /// `guest-get-osinfo`.
    GetOsinfo,
    /// `guest-network-get-interfaces`.
    NetworkGetInterfaces,
    /// `guest-ssh-get-authorized-keys`.
    SshGetAuthorizedKeys(UserArgs),
    /// `guest-ssh-add-authorized-keys`.
    SshAddAuthorizedKeys(SshAddArgs),
    /// `guest-ssh-remove-authorized-keys`.
    SshRemoveAuthorizedKeys(SshRemoveArgs),
    /// `guest-set-user-password`.
    SetUserPassword(SetPasswordArgs),
    /// `guest-shutdown`.
    Shutdown(ShutdownArgs),
    /// `guest-get-time`.
    GetTime,
    /// `xenplug-apply-config`.
    ApplyConfig(Box<ApplyConfigArgs>),
    /// `xenplug-get-config-generation`.
    GetConfigGeneration,
}

fn args<T: serde::de::DeserializeOwned>(
    cmd: &str,
    a: &Option<Map<String, Value>>,
) -> Result<T, ErrorBody> {
    let v = Value::Object(a.clone().unwrap_or_default());
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ErrorBody::generic(format!("Invalid arguments for '{cmd}': {}", e.inner()))
        } else {
            ErrorBody::generic(format!(
                "Invalid arguments for '{cmd}' at '{path}': {}",
                e.inner()
            ))
        }
    })
}

fn no_args(cmd: &str, a: &Option<Map<String, Value>>) -> Result<(), ErrorBody> {
    match a {
        Some(m) if !m.is_empty() => {
            let k = m.keys().next().expect("non-empty");
            Err(ErrorBody::generic(format!(
                "Parameter '{k}' is unexpected (command {cmd} takes no arguments)"
            )))
        }
        _ => Ok(()),
    }
}

impl Command {
    /// Decode a request. Unknown names give `CommandNotFound`; bad arguments `GenericError`.
    pub fn from_request(req: &Request) -> Result<Command, ErrorBody> {
        let a = &req.arguments;
        let name = req.execute.as_str();
        Ok(match name {
            GUEST_SYNC => Command::Sync(args(name, a)?),
            GUEST_SYNC_DELIMITED => Command::SyncDelimited(args(name, a)?),
            GUEST_PING => no_args(name, a).map(|_| Command::Ping)?,
            GUEST_INFO => no_args(name, a).map(|_| Command::Info)?,
            GUEST_GET_HOST_NAME => no_args(name, a).map(|_| Command::GetHostName)?,
            GUEST_GET_OSINFO => no_args(name, a).map(|_| Command::GetOsinfo)?,
            GUEST_NETWORK_GET_INTERFACES => {
                no_args(name, a).map(|_| Command::NetworkGetInterfaces)?
            }
            GUEST_SSH_GET_AUTHORIZED_KEYS => Command::SshGetAuthorizedKeys(args(name, a)?),
            GUEST_SSH_ADD_AUTHORIZED_KEYS => Command::SshAddAuthorizedKeys(args(name, a)?),
            GUEST_SSH_REMOVE_AUTHORIZED_KEYS => Command::SshRemoveAuthorizedKeys(args(name, a)?),
            GUEST_SET_USER_PASSWORD => Command::SetUserPassword(args(name, a)?),
            GUEST_SHUTDOWN => Command::Shutdown(args(name, a)?),
            GUEST_GET_TIME => no_args(name, a).map(|_| Command::GetTime)?,
            XENPLUG_APPLY_CONFIG => Command::ApplyConfig(Box::new(args(name, a)?)),
            XENPLUG_GET_CONFIG_GENERATION => {
                no_args(name, a).map(|_| Command::GetConfigGeneration)?
            }
            other => return Err(ErrorBody::command_not_found(other)),
        })
    }

    /// The command's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Sync(_) => GUEST_SYNC,
            Command::SyncDelimited(_) => GUEST_SYNC_DELIMITED,
            Command::Ping => GUEST_PING,
            Command::Info => GUEST_INFO,
            Command::GetHostName => GUEST_GET_HOST_NAME,
            Command::GetOsinfo => GUEST_GET_OSINFO,
            Command::NetworkGetInterfaces => GUEST_NETWORK_GET_INTERFACES,
            Command::SshGetAuthorizedKeys(_) => GUEST_SSH_GET_AUTHORIZED_KEYS,
            Command::SshAddAuthorizedKeys(_) => GUEST_SSH_ADD_AUTHORIZED_KEYS,
            Command::SshRemoveAuthorizedKeys(_) => GUEST_SSH_REMOVE_AUTHORIZED_KEYS,
            Command::SetUserPassword(_) => GUEST_SET_USER_PASSWORD,
            Command::Shutdown(_) => GUEST_SHUTDOWN,
            Command::GetTime => GUEST_GET_TIME,
            Command::ApplyConfig(_) => XENPLUG_APPLY_CONFIG,
            Command::GetConfigGeneration => XENPLUG_GET_CONFIG_GENERATION,
        }
    }

    /// Build the request (no id) that [`Command::from_request`] decodes back to `self`.
    pub fn to_request(&self) -> Request {
        let r = Request::new(self.name());
        match self {
            Command::Sync(a) | Command::SyncDelimited(a) => r.with_arguments(a),
            Command::SshGetAuthorizedKeys(a) => r.with_arguments(a),
            Command::SshAddAuthorizedKeys(a) => r.with_arguments(a),
            Command::SshRemoveAuthorizedKeys(a) => r.with_arguments(a),
            Command::SetUserPassword(a) => r.with_arguments(a),
            Command::Shutdown(a) if a.mode.is_some() => r.with_arguments(a),
            Command::ApplyConfig(a) => r.with_arguments(a),
            _ => r,
        }
    }
}

/// One entry of `guest-info`'s `supported_commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandInfo {
    /// Command name.
    pub name: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Whether it replies on success.
    #[serde(rename = "success-response")]
    pub success_response: bool,
}

/// `guest-info` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Agent version.
    pub version: String,
    /// Commands.
    pub supported_commands: Vec<CommandInfo>,
}

/// `guest-get-host-name` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostName {
    /// The kernel host name.
    #[serde(rename = "host-name")]
    pub host_name: String,
}

/// `guest-get-osinfo` reply (every member optional, as in qemu-ga).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OsInfo {
    /// `uname -r`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// `uname -v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// `uname -m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// os-release `ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// os-release `NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// os-release `PRETTY_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    /// os-release `VERSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// os-release `VERSION_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// os-release `VARIANT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// os-release `VARIANT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_id: Option<String>,
}

/// One address of a [`NetworkInterface`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAddress {
    /// The address.
    #[serde(rename = "ip-address")]
    pub ip_address: String,
    /// `ipv4` or `ipv6`.
    #[serde(rename = "ip-address-type")]
    pub ip_address_type: String,
    /// Prefix length.
    pub prefix: u8,
}

/// Interface counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NetworkStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errs: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errs: u64,
    /// Sent packets dropped.
    pub tx_dropped: u64,
}

/// One entry of `guest-network-get-interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NetworkInterface {
    /// Interface name.
    pub name: String,
    /// MAC address (`00:00:00:00:00:00` for loopback, as qemu-ga reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_address: Option<String>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<Vec<IpAddress>>,
    /// Counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<NetworkStats>,
}

/// `guest-ssh-get-authorized-keys` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedKeys {
    /// The keys.
    pub keys: Vec<String>,
}

/// `xenplug-apply-config` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApplyResult {
    /// The applied document's instance id.
    pub instance_id: String,
    /// The applied generation.
    pub generation: u64,
    /// False when this instance id and generation were already applied (nothing was done).
    pub applied: bool,
    /// What changed, one short item per change (`hostname`, `file /etc/hostname`, …).
    pub changes: Vec<String>,
}

/// `xenplug-get-config-generation` reply; both members absent when nothing was ever applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConfigGeneration {
    /// Instance id of the last applied document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Its generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::class;
    use serde_json::json;

    fn req(v: Value) -> Request {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn decode_qga_commands() {
        assert_eq!(
            Command::from_request(&req(
                json!({"execute":"guest-sync-delimited","arguments":{"id":123456}})
            ))
            .unwrap(),
            Command::SyncDelimited(SyncArgs { id: 123456 })
        );
        assert_eq!(
            Command::from_request(&req(json!({"execute":"guest-ping"}))).unwrap(),
            Command::Ping
        );
        assert_eq!(
            Command::from_request(&req(
                json!({"execute":"guest-shutdown","arguments":{"mode":"reboot"}})
            ))
            .unwrap(),
            Command::Shutdown(ShutdownArgs {
                mode: Some(ShutdownMode::Reboot)
            })
        );
        let c = Command::from_request(&req(json!({"execute":"guest-ssh-add-authorized-keys",
            "arguments":{"username":"u","keys":["k"],"reset":true}})))
        .unwrap();
        assert_eq!(c.to_request().arguments.unwrap()["reset"], json!(true));
    }

    #[test]
    fn errors() {
        let e = Command::from_request(&req(json!({"execute":"guest-exec"}))).unwrap_err();
        assert_eq!(e.class, class::COMMAND_NOT_FOUND);
        let e = Command::from_request(&req(json!({"execute":"guest-sync","arguments":{"id":"x"}})))
            .unwrap_err();
        assert_eq!(e.class, class::GENERIC_ERROR);
        assert!(e.desc.contains("guest-sync"), "{}", e.desc);
        let e = Command::from_request(&req(json!({"execute":"guest-ping","arguments":{"x":1}})))
            .unwrap_err();
        assert!(e.desc.contains("'x' is unexpected"));
        let e = Command::from_request(&req(
            json!({"execute":"guest-shutdown","arguments":{"mode":"explode"}}),
        ))
        .unwrap_err();
        assert!(e.desc.contains("mode"), "{}", e.desc);
    }

    #[test]
    fn apply_config_forms() {
        let c = Command::from_request(&req(json!({"execute":"xenplug-apply-config",
            "arguments":{"config":{"instance-id":"i","generation":1,"hostname":"h"}}})))
        .unwrap();
        let Command::ApplyConfig(a) = &c else {
            panic!()
        };
        let d = (**a).clone().into_doc().unwrap();
        assert_eq!(d.hostname.as_deref(), Some("h"));
        assert_eq!(Command::from_request(&c.to_request()).unwrap(), c);
        let c = Command::from_request(&req(json!({"execute":"xenplug-apply-config",
            "arguments":{"nocloud":{"meta-data":"instance-id: x\n","user-data":"#cloud-config\n","generation":9}}})))
        .unwrap();
        let Command::ApplyConfig(a) = c else { panic!() };
        assert_eq!(a.into_doc().unwrap().generation, 9);
        let e = Command::from_request(&req(json!({"execute":"xenplug-apply-config",
            "arguments":{"config":{"instance-id":"i","generation":1},"nocloud":{"meta-data":""}}})))
        .unwrap_err();
        assert_eq!(e.class, class::GENERIC_ERROR);
        let e = Command::from_request(&req(json!({"execute":"xenplug-apply-config",
            "arguments":{"config":{"instance-id":"i","generation":1,"hostnme":"x"}}})))
        .unwrap_err();
        assert!(e.desc.contains("hostnme"), "{}", e.desc);
    }

    #[test]
    fn every_command_roundtrips() {
        for name in COMMANDS {
            let args = match *name {
                GUEST_SYNC | GUEST_SYNC_DELIMITED => Some(json!({"id": 1})),
                GUEST_SSH_GET_AUTHORIZED_KEYS => Some(json!({"username": "u"})),
                GUEST_SSH_ADD_AUTHORIZED_KEYS | GUEST_SSH_REMOVE_AUTHORIZED_KEYS => {
                    Some(json!({"username": "u", "keys": []}))
                }
                GUEST_SET_USER_PASSWORD => {
                    Some(json!({"username":"u","password":"eA==","crypted":false}))
                }
                XENPLUG_APPLY_CONFIG => Some(json!({"config":{"instance-id":"i","generation":1}})),
                _ => None,
            };
            let mut r = Request::new(*name);
            if let Some(a) = args {
                r = r.with_arguments(a);
            }
            let c = Command::from_request(&r).unwrap();
            assert_eq!(c.name(), *name);
            assert_eq!(Command::from_request(&c.to_request()).unwrap(), c);
        }
    }
}
