//! Which commands are enabled: qemu-ga's `--allow-rpcs` / `--block-rpcs` (and their
//! configuration-file keys), the commands that are unavailable on this system, and the
//! frozen-filesystem restriction. The one place that decides whether a command may run.
//!
//! Semantics are qemu-ga's (QEMU ≥ 9.1, `docs/interop/qemu-ga.rst`): with an allow list, every
//! command not on it is disabled; then every command on the block list is disabled; while the
//! agent holds filesystems frozen only [`FREEZE_ALLOWLIST`] is enabled, whatever the lists say.
//! Lists from the configuration file and the command line accumulate.
//!
//! **Default.** qemu-ga enables everything, including `guest-exec` and `guest-file-*`. When
//! neither the configuration nor the command line names a list, xenplug-agent blocks
//! [`DEFAULT_BLOCKED`]: running programs and reading or writing arbitrary files as root. The
//! dom0 peer parses untrusted output of every guest on the host, and any dom0 process that can
//! open a channel socket speaks to the agent: neither should be one bug away from a root shell
//! in every guest. Everything backup, monitoring and orchestration tools rely on — freeze and
//! thaw, fsinfo, users, statistics, shutdown, keys, passwords — stays enabled, and xenplug's own
//! configuration path (`xenplug-apply-config`) is typed and needs neither. RHEL and Rocky ship
//! qemu-ga with the same commands disabled. An operator who wants qemu-ga's behaviour writes
//! `block-rpcs = []` in `/etc/xenplug/agent.toml`. Disabled commands are listed in `guest-info`
//! with `"enabled": false` and answer `CommandNotFound` "Command … has been disabled", as
//! qemu-ga's do.

use std::collections::BTreeSet;

use xenplug_channel::message::class;
use xenplug_channel::qga;
use xenplug_channel::ErrorBody;

/// Blocked when no list is configured (see the module docs).
pub const DEFAULT_BLOCKED: &[&str] = &[
    qga::GUEST_EXEC,
    qga::GUEST_EXEC_STATUS,
    qga::GUEST_FILE_OPEN,
    qga::GUEST_FILE_CLOSE,
    qga::GUEST_FILE_READ,
    qga::GUEST_FILE_WRITE,
    qga::GUEST_FILE_SEEK,
    qga::GUEST_FILE_FLUSH,
];

/// The commands that stay enabled while filesystems are frozen (qemu-ga's list).
pub const FREEZE_ALLOWLIST: &[&str] = &[
    qga::GUEST_PING,
    qga::GUEST_INFO,
    qga::GUEST_SYNC,
    qga::GUEST_SYNC_DELIMITED,
    qga::GUEST_FSFREEZE_STATUS,
    qga::GUEST_FSFREEZE_THAW,
];

/// Commands that exist in qemu-ga's Linux build but do nothing there: always disabled, as
/// qemu-ga 7.2 disables them (`guest-get-devices` is Windows-only).
pub const UNAVAILABLE: &[&str] = &[qga::GUEST_GET_DEVICES];

/// Why a list is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a command of this agent (see --block-rpcs=help)")]
pub struct UnknownCommand(pub String);

/// The allow and block lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcPolicy {
    allow: Option<BTreeSet<String>>,
    block: BTreeSet<String>,
}

/// Split a `--block-rpcs`/`--allow-rpcs` value: comma-separated, spaces trimmed, empties ignored.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn check_names(names: &[String]) -> Result<(), UnknownCommand> {
    for n in names {
        if qga::spec_of(n).is_none() {
            return Err(UnknownCommand(n.clone()));
        }
    }
    Ok(())
}

impl RpcPolicy {
    /// Everything enabled (qemu-ga's default).
    pub fn allow_all() -> Self {
        RpcPolicy::default()
    }

    /// xenplug-agent's default: [`DEFAULT_BLOCKED`] blocked.
    pub fn xenplug_default() -> Self {
        RpcPolicy {
            allow: None,
            block: DEFAULT_BLOCKED.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// From the accumulated lists (configuration file first, then command line); `None` for a
    /// list named nowhere. With neither list named anywhere, the default applies.
    pub fn from_lists(
        allow: Option<Vec<String>>,
        block: Option<Vec<String>>,
    ) -> Result<Self, UnknownCommand> {
        if allow.is_none() && block.is_none() {
            return Ok(Self::xenplug_default());
        }
        if let Some(a) = &allow {
            check_names(a)?;
        }
        if let Some(b) = &block {
            check_names(b)?;
        }
        Ok(RpcPolicy {
            allow: allow.map(|a| a.into_iter().collect()),
            block: block.unwrap_or_default().into_iter().collect(),
        })
    }

    /// Whether `name` is enabled by the lists (and not unavailable), ignoring freeze.
    pub fn configured(&self, name: &str) -> bool {
        !UNAVAILABLE.contains(&name)
            && self.allow.as_ref().is_none_or(|a| a.contains(name))
            && !self.block.contains(name)
    }

    /// Whether `name` is enabled now.
    pub fn enabled(&self, name: &str, frozen: bool) -> bool {
        if frozen && !FREEZE_ALLOWLIST.contains(&name) {
            return false;
        }
        self.configured(name)
    }

    /// `Ok` when `name` (a known command) may run now; otherwise the error qemu-ga answers.
    pub fn check(&self, name: &str, frozen: bool) -> Result<(), ErrorBody> {
        if self.enabled(name, frozen) {
            return Ok(());
        }
        // The frozen reason wins: it is the one that goes away by itself.
        let desc = if frozen && !FREEZE_ALLOWLIST.contains(&name) {
            format!("Command {name} has been disabled: the agent is in frozen state")
        } else {
            format!("Command {name} has been disabled")
        };
        Err(ErrorBody {
            class: class::COMMAND_NOT_FOUND.into(),
            desc,
        })
    }

    /// The commands the lists disable (for the start-up log).
    pub fn disabled(&self) -> Vec<&'static str> {
        qga::command_names()
            .filter(|n| !self.configured(n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Option<Vec<String>> {
        Some(s.iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn default_blocks_exec_and_files_only() {
        let p = RpcPolicy::from_lists(None, None).unwrap();
        assert!(!p.enabled("guest-exec", false));
        assert!(!p.enabled("guest-file-open", false));
        assert!(p.enabled("guest-fsfreeze-freeze", false));
        assert!(!p.enabled("guest-get-devices", false));
        let e = p.check("guest-exec", false).unwrap_err();
        assert_eq!(e.class, "CommandNotFound");
        assert_eq!(e.desc, "Command guest-exec has been disabled");
        // An empty block list is qemu-ga's behaviour: everything on.
        let p = RpcPolicy::from_lists(None, Some(vec![])).unwrap();
        assert!(p.enabled("guest-exec", false));
    }

    #[test]
    fn allow_then_block_then_freeze() {
        let p = RpcPolicy::from_lists(
            v(&["guest-ping", "guest-info", "guest-exec"]),
            v(&["guest-exec"]),
        )
        .unwrap();
        assert!(p.enabled("guest-ping", false));
        assert!(!p.enabled("guest-exec", false));
        assert!(!p.enabled("guest-get-osinfo", false));
        // Frozen: only the freeze allow list, and only what the lists allow of it.
        assert!(p.enabled("guest-ping", true));
        assert!(!p.enabled("guest-fsfreeze-thaw", true));
        let p = RpcPolicy::allow_all();
        assert!(p.enabled("guest-fsfreeze-thaw", true));
        assert_eq!(
            p.check("guest-get-osinfo", true).unwrap_err().desc,
            "Command guest-get-osinfo has been disabled: the agent is in frozen state"
        );
        assert_eq!(
            RpcPolicy::from_lists(None, v(&["guest-bogus"])).unwrap_err(),
            UnknownCommand("guest-bogus".into())
        );
        assert_eq!(split_list(" a, b,,c "), vec!["a", "b", "c"]);
    }
}
