//! Runtime configuration: `/etc/xen/xenplug.toml` (optional), then environment overrides.
//!
//! Every key is documented in `hotplug/CONFIG.md`. The file is read only if it exists; a file
//! that exists but cannot be read or parsed, or has an unknown key, is an error naming the file,
//! the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::failure::Failure;
use crate::log::Level;

/// Default config file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/xen/xenplug.toml";
/// Default log file (xen-hotplug-common.sh: `exec 2>>/var/log/xen/xen-hotplug.log`).
pub const DEFAULT_LOG_FILE: &str = "/var/log/xen/xen-hotplug.log";
/// Default syslog socket.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";
/// Default lock directory (locking.sh: `LOCK_BASEDIR=/var/run/xen-hotplug`).
pub const DEFAULT_LOCK_DIR: &str = "/var/run/xen-hotplug";
/// Default script directory (`XEN_SCRIPT_DIR`).
pub const DEFAULT_SCRIPTS_DIR: &str = "/etc/xen/scripts";
/// Default state directory for scripts' persistent state.
pub const DEFAULT_STATE_DIR: &str = "/run/xen-hotplug";
/// Default bound on a lock wait: well under libxl's 40 s SIGKILL.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(25);
/// Default bound on one hook's run time.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a script may take from its start, everything included: libxl SIGKILLs it
/// after 40 s (`LIBXL_HOTPLUG_TIMEOUT`), so a script always ends, and says why, before that.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(35);
/// The last part of the deadline that only clean-up may use (undoing a failed add, reporting):
/// work stops at `deadline - min(CLEANUP_GRACE, deadline / 4)`.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(5);

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file the settings came from, if one was read.
    pub source: Option<PathBuf>,
    /// Append log lines here; `None` disables the file.
    pub log_file: Option<PathBuf>,
    /// Lowest level written to the log file.
    pub log_file_level: Level,
    /// Lowest level written to stderr.
    pub stderr_level: Level,
    /// Send log lines to syslog (facility daemon).
    pub syslog: bool,
    /// The syslog datagram socket.
    pub syslog_socket: PathBuf,
    /// Lowest level sent to syslog.
    pub syslog_level: Level,
    /// Directory of the lock files.
    pub lock_dir: PathBuf,
    /// Bound on every lock wait (and the script's deadline bounds it too).
    pub lock_timeout: Duration,
    /// The time a script may take from its start, everything included (lock waits, helpers
    /// such as `nbd-client`/`iscsiadm`/`nft`/`ovs-vsctl`, `modprobe`, the clean-up of a failed
    /// add); see [`crate::Context::deadline`].
    pub deadline: Duration,
    /// `XEN_SCRIPT_DIR`: hooks live in `<scripts_dir>/<devtype>-<hook>.d/`.
    pub scripts_dir: PathBuf,
    /// Directory for scripts' persistent state.
    pub state_dir: PathBuf,
    /// Xen's libexec bin directory, put on children's PATH; `None` = read `LIBEXEC_BIN` from
    /// `<scripts_dir>/hotplugpath.sh`, else `/usr/lib/xen/bin`.
    pub libexec_bin: Option<PathBuf>,
    /// Bound on each hook's run time.
    pub hook_timeout: Duration,
    /// A failing hook fails the script (true) or is only logged (false).
    pub hooks_fatal: bool,
    /// The vif scripts' antispoofing mode for this host (`off`, `compat`, `enforce`); `None`
    /// leaves the scripts' default. A `antispoof=` argument still wins.
    pub antispoof: Option<String>,
    /// Ethertypes (besides IPv4, ARP and IPv6) the vif scripts' `enforce` antispoofing lets
    /// through from a guest (still only from the vif's own MAC address).
    pub antispoof_ethertypes: Vec<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            log_file: Some(DEFAULT_LOG_FILE.into()),
            log_file_level: Level::Debug,
            stderr_level: Level::Info,
            syslog: true,
            syslog_socket: DEFAULT_SYSLOG_SOCKET.into(),
            syslog_level: Level::Debug,
            lock_dir: DEFAULT_LOCK_DIR.into(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            scripts_dir: DEFAULT_SCRIPTS_DIR.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            libexec_bin: None,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            hooks_fatal: false,
            antispoof: None,
            antispoof_ethertypes: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    log_file: Option<String>,
    log_file_level: Option<String>,
    stderr_level: Option<String>,
    syslog: Option<bool>,
    syslog_socket: Option<String>,
    syslog_level: Option<String>,
    lock_dir: Option<String>,
    lock_timeout_secs: Option<f64>,
    deadline_secs: Option<f64>,
    scripts_dir: Option<String>,
    state_dir: Option<String>,
    libexec_bin: Option<String>,
    hook_timeout_secs: Option<f64>,
    hooks_fatal: Option<bool>,
    antispoof: Option<String>,
    antispoof_ethertypes: Option<Vec<i64>>,
}

/// The ethertypes `enforce` has its own rules for (IPv4, ARP, IPv6) or refuses on principle
/// (VLAN tags: 802.1Q, 802.1ad, the old QinQ 0x9100): a tagged frame would carry IP past the
/// address checks, which look at the outer header.
const RESERVED_ETHERTYPES: &[u16] = &[0x0800, 0x0806, 0x86dd, 0x8100, 0x88a8, 0x9100];

fn ethertype(origin: &str, key: &str, v: i64) -> Result<u16, Failure> {
    match u16::try_from(v) {
        Ok(t) if t >= 0x0600 && !RESERVED_ETHERTYPES.contains(&t) => Ok(t),
        _ => Err(Failure::error(format!(
            "{origin}: {key}: {v:#06x} is not an ethertype enforce mode can allow (0x0600-0xffff; \
             not IPv4, ARP or IPv6, which have their own rules, nor a VLAN tag)"
        ))),
    }
}

fn antispoof_mode(origin: &str, key: &str, v: String) -> Result<String, Failure> {
    match v.as_str() {
        "off" | "compat" | "enforce" => Ok(v),
        _ => Err(Failure::error(format!(
            "{origin}: {key} = \"{v}\" is not an antispoofing mode (off, compat, enforce)"
        ))),
    }
}

fn level(origin: &str, key: &str, v: &str) -> Result<Level, Failure> {
    v.parse().map_err(|_| {
        Failure::error(format!(
            "{origin}: {key} = \"{v}\" is not a level (err, warning, info, debug)"
        ))
    })
}

fn secs(origin: &str, key: &str, v: f64) -> Result<Duration, Failure> {
    if v.is_finite() && v > 0.0 && v <= 3600.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(Failure::error(format!(
            "{origin}: {key} = {v} is out of range (seconds, greater than 0, at most 3600)"
        )))
    }
}

fn opt_path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

fn bool_env(origin: &str, v: &str) -> Result<bool, Failure> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(Failure::error(format!(
            "{origin} = \"{v}\" is not a boolean (1/0, true/false, yes/no, on/off)"
        ))),
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// Load the configuration for a script whose environment is `env`: the file named by
    /// `XENPLUG_CONFIG` (else [`DEFAULT_CONFIG_FILE`]) if it exists, then the `XENPLUG_*`
    /// overrides (see CONFIG.md).
    pub fn load(env: &BTreeMap<String, String>) -> Result<Config, Failure> {
        let explicit = env.get("XENPLUG_CONFIG").filter(|v| !v.is_empty());
        let path = PathBuf::from(explicit.map_or(DEFAULT_CONFIG_FILE, String::as_str));
        let mut cfg = match std::fs::read_to_string(&path) {
            Ok(text) => Config::from_toml(&text, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                Config::default()
            }
            Err(e) => {
                return Err(Failure::error(format!(
                    "cannot read config file {}: {e}",
                    path.display()
                )))
            }
        };
        cfg.apply_env(env)?;
        Ok(cfg)
    }

    /// Parse the TOML text of a config file (`path` is used in messages only).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, Failure> {
        let origin = path.display().to_string();
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" line {}", line_of(text, s.start)))
                .unwrap_or_default();
            Failure::error(format!("config file {origin}{at}: {}", e.message()))
        })?;
        let mut c = Config {
            source: Some(path.to_path_buf()),
            ..Config::default()
        };
        if let Some(v) = file.log_file {
            c.log_file = opt_path(&v);
        }
        if let Some(v) = file.log_file_level {
            c.log_file_level = level(&origin, "log_file_level", &v)?;
        }
        if let Some(v) = file.stderr_level {
            c.stderr_level = level(&origin, "stderr_level", &v)?;
        }
        if let Some(v) = file.syslog {
            c.syslog = v;
        }
        if let Some(v) = file.syslog_socket {
            c.syslog_socket = v.into();
        }
        if let Some(v) = file.syslog_level {
            c.syslog_level = level(&origin, "syslog_level", &v)?;
        }
        if let Some(v) = file.lock_dir {
            c.lock_dir = v.into();
        }
        if let Some(v) = file.lock_timeout_secs {
            c.lock_timeout = secs(&origin, "lock_timeout_secs", v)?;
        }
        if let Some(v) = file.deadline_secs {
            c.deadline = secs(&origin, "deadline_secs", v)?;
        }
        if let Some(v) = file.scripts_dir {
            c.scripts_dir = v.into();
        }
        if let Some(v) = file.state_dir {
            c.state_dir = v.into();
        }
        if let Some(v) = file.libexec_bin {
            c.libexec_bin = opt_path(&v);
        }
        if let Some(v) = file.hook_timeout_secs {
            c.hook_timeout = secs(&origin, "hook_timeout_secs", v)?;
        }
        if let Some(v) = file.hooks_fatal {
            c.hooks_fatal = v;
        }
        if let Some(v) = file.antispoof {
            c.antispoof = Some(antispoof_mode(&origin, "antispoof", v)?);
        }
        if let Some(v) = file.antispoof_ethertypes {
            c.antispoof_ethertypes = v
                .into_iter()
                .map(|t| ethertype(&origin, "antispoof_ethertypes", t))
                .collect::<Result<_, _>>()?;
        }
        for (key, p) in [
            ("lock_dir", &c.lock_dir),
            ("scripts_dir", &c.scripts_dir),
            ("state_dir", &c.state_dir),
            ("syslog_socket", &c.syslog_socket),
        ] {
            if !p.is_absolute() {
                return Err(Failure::error(format!(
                    "config file {origin}: {key} = \"{}\" must be an absolute path",
                    p.display()
                )));
            }
        }
        Ok(c)
    }

    /// Apply the `XENPLUG_*` environment overrides.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), Failure> {
        let get = |k: &str| env.get(k).map(String::as_str);
        if let Some(v) = get("XENPLUG_LOG_FILE") {
            self.log_file = opt_path(v);
        }
        if let Some(v) = get("XENPLUG_LOG_LEVEL") {
            let l = level("XENPLUG_LOG_LEVEL", "value", v)?;
            self.log_file_level = l;
            self.syslog_level = l;
        }
        if let Some(v) = get("XENPLUG_STDERR_LEVEL") {
            self.stderr_level = level("XENPLUG_STDERR_LEVEL", "value", v)?;
        }
        if let Some(v) = get("XENPLUG_SYSLOG") {
            self.syslog = bool_env("XENPLUG_SYSLOG", v)?;
        }
        if let Some(v) = get("XENPLUG_SYSLOG_SOCKET") {
            self.syslog_socket = v.into();
        }
        if let Some(v) = get("XENPLUG_LOCK_DIR") {
            self.lock_dir = v.into();
        }
        if let Some(v) = get("XENPLUG_LOCK_TIMEOUT") {
            let n: f64 = v.parse().map_err(|_| {
                Failure::error(format!(
                    "XENPLUG_LOCK_TIMEOUT = \"{v}\" is not a number of seconds"
                ))
            })?;
            self.lock_timeout = secs("XENPLUG_LOCK_TIMEOUT", "value", n)?;
        }
        if let Some(v) = get("XENPLUG_DEADLINE") {
            let n: f64 = v.parse().map_err(|_| {
                Failure::error(format!(
                    "XENPLUG_DEADLINE = \"{v}\" is not a number of seconds"
                ))
            })?;
            self.deadline = secs("XENPLUG_DEADLINE", "value", n)?;
        }
        if let Some(v) = get("XENPLUG_SCRIPTS_DIR") {
            self.scripts_dir = v.into();
        }
        if let Some(v) = get("XENPLUG_STATE_DIR") {
            self.state_dir = v.into();
        }
        if let Some(v) = get("XENPLUG_ANTISPOOF") {
            self.antispoof = Some(antispoof_mode("XENPLUG_ANTISPOOF", "value", v.to_string())?);
        }
        if let Some(v) = get("XENPLUG_ANTISPOOF_ETHERTYPES") {
            self.antispoof_ethertypes = v
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
                .map(|t| {
                    let n = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                        Some(h) => i64::from_str_radix(h, 16),
                        None => t.parse(),
                    };
                    let n = n.map_err(|_| {
                        Failure::error(format!(
                            "XENPLUG_ANTISPOOF_ETHERTYPES: \"{t}\" is not a number"
                        ))
                    })?;
                    ethertype("XENPLUG_ANTISPOOF_ETHERTYPES", "value", n)
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }

    /// The part of [`Config::deadline`] reserved for clean-up: `min(CLEANUP_GRACE, deadline/4)`.
    pub fn cleanup_grace(&self) -> Duration {
        CLEANUP_GRACE.min(self.deadline / 4)
    }

    /// The directory put on children's PATH for Xen's helper binaries (see
    /// [`Config::libexec_bin`]).
    pub fn libexec_bin_dir(&self) -> PathBuf {
        if let Some(p) = &self.libexec_bin {
            return p.clone();
        }
        let hp = self.scripts_dir.join("hotplugpath.sh");
        if let Ok(text) = std::fs::read_to_string(hp) {
            for line in text.lines() {
                if let Some(v) = line.trim().strip_prefix("LIBEXEC_BIN=") {
                    let v = v.trim().trim_matches('"').trim_matches('\'');
                    if !v.is_empty() {
                        return v.into();
                    }
                }
            }
        }
        PathBuf::from("/usr/lib/xen/bin")
    }
}
