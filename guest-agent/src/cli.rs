//! The command lines of `xenplug-agent` and `xen-channel-setup` (their clap definitions) and the
//! agent's configuration file, shared by the binaries (`src/bin/`, which document the interface)
//! and the packaging's man page and completion generator.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use serde::Deserialize;

/// `xenplug-agent`'s options.
#[derive(Parser, Debug)]
#[command(
    name = "xenplug-agent",
    version,
    about = "Xen PV channel guest agent (QGA protocol)"
)]
pub struct AgentArgs {
    /// Serve this tty instead of watching the channel directory.
    #[arg(long)]
    pub device: Option<PathBuf>,
    /// Apply files under this root.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Configuration file (TOML).
    #[arg(long, default_value = "/etc/xenplug/agent.toml")]
    pub config: PathBuf,
    /// Directory the udev helper fills with channel links.
    #[arg(long, default_value = "/dev/xen-channel")]
    pub channel_dir: PathBuf,
    /// Channel name(s) to serve (overrides the configuration).
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// Program run by guest-shutdown.
    #[arg(long, env = "XENPLUG_AGENT_SHUTDOWN_PROGRAM")]
    pub shutdown_program: Option<PathBuf>,
    /// Only write network files; change nothing live.
    #[arg(long)]
    pub no_live_network: bool,
    /// Largest request in bytes.
    #[arg(long, default_value_t = xenplug_channel::frame::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
    /// Commands to allow (all others disabled); comma-separated, repeatable; `help` lists them.
    #[arg(short = 'a', long = "allow-rpcs")]
    pub allow_rpcs: Vec<String>,
    /// Commands to disable; comma-separated, repeatable; `help` lists them.
    #[arg(short = 'b', long = "block-rpcs")]
    pub block_rpcs: Vec<String>,
    /// The fsfreeze hook (must exist).
    #[arg(short = 'F', long)]
    pub fsfreeze_hook: Option<PathBuf>,
    /// Run no fsfreeze hook.
    #[arg(long, conflicts_with = "fsfreeze_hook")]
    pub no_fsfreeze_hook: bool,
    /// State directory (tmpfs).
    #[arg(short = 't', long)]
    pub statedir: Option<PathBuf>,
    /// Publish the guest state in xenstore.
    #[arg(long, conflicts_with = "no_guest_state")]
    pub guest_state: bool,
    /// Do not publish the guest state in xenstore.
    #[arg(long)]
    pub no_guest_state: bool,
    /// /proc (tests).
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc: PathBuf,
    /// /sys (tests).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sys: PathBuf,
    /// The utmp file (tests).
    #[arg(long, default_value = "/var/run/utmp", hide = true)]
    pub utmp: PathBuf,
    /// udev's database (tests).
    #[arg(long, default_value = "/run/udev/data", hide = true)]
    pub udev_data: PathBuf,
    /// hwclock (tests).
    #[arg(long, default_value = "/sbin/hwclock", hide = true)]
    pub hwclock: PathBuf,
    /// Prepare this guest to be a template for clones, then exit: forget the applied
    /// configuration and remove what would make clones alike (machine id, SSH host keys,
    /// random seed, the agent's network files, DHCP leases). Run it last, then shut down.
    #[arg(long)]
    pub prepare_template: bool,
    /// With --prepare-template: print what would be removed, change nothing.
    #[arg(long, requires = "prepare_template")]
    pub dry_run: bool,
}

/// `fsfreeze-hook`: a path (which must exist), or `false` for none.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum HookSetting {
    /// This hook, which must exist.
    Path(PathBuf),
    /// `true`: the default hook if present; `false`: none.
    Enabled(bool),
}

/// `/etc/xenplug/agent.toml`.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    /// Channel names to serve (default: `org.xenplug.agent.0`).
    #[serde(default)]
    pub channels: Vec<String>,
    /// What `guest-shutdown` runs.
    pub shutdown_program: Option<PathBuf>,
    /// `false`: write network files only, change nothing live.
    pub live_network: Option<bool>,
    /// `[default-user]`: the image's default user (cloud-init's `default`); see
    /// `apply::ApplyOptions`.
    pub default_user: Option<xenplug_channel::config::User>,
    /// Run `bootcmd`/`runcmd` (default false).
    pub run_commands: Option<bool>,
    /// The network manager to render for (default: detected).
    pub network_renderer: Option<crate::render::Renderer>,
    /// qemu-ga's allow list (all other commands disabled).
    pub allow_rpcs: Option<Vec<String>>,
    /// qemu-ga's block list.
    pub block_rpcs: Option<Vec<String>>,
    /// The fsfreeze hook.
    pub fsfreeze_hook: Option<HookSetting>,
    /// Seconds a freeze may last before the agent thaws by itself (0: no limit).
    pub fsfreeze_timeout: Option<u64>,
    /// Seconds after the channel went away before the agent thaws by itself.
    pub fsfreeze_thaw_after_channel_loss: Option<u64>,
    /// State directory (tmpfs).
    pub statedir: Option<PathBuf>,
    /// `true`, `false` or `"auto"` (publish when xenstore can be reached).
    pub guest_state: Option<toml::Value>,
    /// Fewest milliseconds between two guest-state updates.
    pub guest_state_min_interval_ms: Option<u64>,
    /// Seconds between re-reads of the memory figures.
    pub guest_state_refresh: Option<u64>,
}

/// Read the agent's configuration; a missing file is the defaults.
pub fn load_config(path: &Path) -> Result<AgentConfig> {
    match std::fs::read_to_string(path) {
        Ok(t) => toml::from_str(&t).with_context(|| format!("parse {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentConfig::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// `xen-channel-setup`'s options.
#[derive(Parser, Debug)]
#[command(
    name = "xen-channel-setup",
    version,
    about = "Create /dev/xen-channel/<name> for a Xen PV channel"
)]
pub struct ChannelSetupArgs {
    /// udev ACTION.
    #[arg(long, env = "ACTION")]
    pub action: String,
    /// udev DEVPATH (e.g. /devices/console-1).
    #[arg(long, env = "DEVPATH")]
    pub devpath: String,
    /// sysfs mount point.
    #[arg(long, default_value = "/sys")]
    pub sysfs: PathBuf,
    /// Device directory.
    #[arg(long, default_value = "/dev")]
    pub dev: PathBuf,
}
