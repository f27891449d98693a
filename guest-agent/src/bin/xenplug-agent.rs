//! `xenplug-agent`: the in-guest agent on a Xen PV channel.
//!
//! **Who runs it:** systemd (`xenplug-agent.service`, shipped in `udev-rules/`), for the whole
//! life of the guest; tests run it with `--device` on a pty and `--root` on a temporary tree.
//!
//! **What it does:** speaks the QEMU guest agent wire protocol (see `docs/channel-protocol.md`)
//! on the channel tty: answers `guest-sync`, `guest-sync-delimited`, `guest-ping`, `guest-info`,
//! `guest-get-host-name`, `guest-get-osinfo`, `guest-network-get-interfaces`,
//! `guest-ssh-{get,add,remove}-authorized-keys`, `guest-set-user-password`, `guest-shutdown`,
//! `guest-get-time`, and xenplug's `xenplug-apply-config` / `xenplug-get-config-generation`.
//! The tty is opened once, switched to raw mode on its own fd at once, kept open, and re-opened
//! when it fails (EIO, ENODEV, hang-up) or its link disappears or is re-pointed.
//!
//! **argv / env:**
//! * `--device PATH`: serve this tty (no udev, tests). Without it: watch `--channel-dir`
//!   (default `/dev/xen-channel`) with inotify for each configured channel name.
//! * `--root DIR` (default `/`): read and write every file under DIR (tests).
//! * `--config FILE` (default `/etc/xenplug/agent.toml`, optional): `channels = ["name", …]`,
//!   `shutdown-program = "/sbin/shutdown"`, `live-network = true`, `run-commands = false`
//!   (allow dom0's `bootcmd`/`runcmd`), `network-renderer = "networkd" | "ifupdown" |
//!   "network-manager"` (default: detected), and a `[default-user]` table (the image's default
//!   user, cloud-config user keys: `name`, `gecos`, `groups`, `shell`, `sudo`, `lock_passwd`,
//!   …). Without channels the default name `org.xenplug.agent.0` is served.
//! * `--name NAME` (repeatable): channel names, overriding the configuration.
//! * `--shutdown-program PATH` / `XENPLUG_AGENT_SHUTDOWN_PROGRAM`: what `guest-shutdown` runs,
//!   as `PATH -P|-H|-r +0 "hypervisor initiated shutdown"` (injectable: tests pass a recorder).
//! * `--no-live-network`: write network configuration files only, change nothing live.
//! * `--max-frame BYTES` (default 1048576): largest accepted request.
//! * `--prepare-template [--dry-run]`: prepare this guest to be cloned and exit, without
//!   serving anything: forget the applied generation, empty the machine id, remove SSH host
//!   keys, the random seed, the agent's network files and DHCP leases (`template` module); each
//!   change is printed on stdout (`would …` with `--dry-run`).
//!
//! **Files** (all under `--root`): reads `/etc/passwd`, `/etc/group`, `/etc/os-release`; writes
//! atomically `/etc/hostname`, `/etc/hosts` (a marked block), the network manager's files
//! (`/etc/systemd/network/10-xenplug-*`, `/etc/network/interfaces.d/xenplug-agent` or
//! `/etc/NetworkManager/system-connections/xenplug-*`; see `render`), `/etc/resolv.conf` (only
//! when it is a plain file), `~user/.ssh/authorized_keys` (as the user; a marked block for
//! configuration, whole-file semantics for the QGA commands), `/etc/shadow` (under the
//! `lckpwdf` lock on `/etc/.pwd.lock`), `/etc/sudoers.d/90-xenplug-agent-users`, what
//! `write_files`/`ntp`/`timezone`/`ssh_pwauth`/`ca_certs` ask for, and
//! `/var/lib/xenplug-agent/applied.json` (the applied generation). Runs the guest's
//! shadow-utils, `visudo`, `update-ca-certificates`, `systemctl`, and (with `run-commands`)
//! `/bin/sh` for `bootcmd`/`runcmd` (output in `/var/log/xenplug-agent-commands.log`).
//! Security-relevant changes are logged to stderr as `xenplug-agent: event=… key=value` lines.
//!
//! **Exit codes:** 0 after SIGTERM/SIGINT (or a prepared template); 1 when it cannot start
//! (bad configuration, signal set-up) or a template change failed; 2 for usage errors (clap).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::Parser;
use xenplug_channel::frame::Limits;
use xenplug_guest_agent::agent::{Agent, ShutdownProgram};
use xenplug_guest_agent::apply::RealHost;
use xenplug_guest_agent::cli::{load_config, AgentArgs as Args};
use xenplug_guest_agent::session::{self, Options};
use xenplug_guest_agent::template;

/// `--prepare-template [--dry-run]`: see `xenplug_guest_agent::template`.
fn prepare_template(root: &std::path::Path, dry_run: bool) -> Result<()> {
    let steps = template::plan(root);
    for s in &steps {
        println!(
            "{}{}",
            if dry_run { "would " } else { "" },
            s.describe(root)
        );
    }
    if dry_run {
        return Ok(());
    }
    let errors = template::apply(&steps);
    for e in &errors {
        eprintln!("xenplug-agent: {e:#}");
    }
    eprintln!(
        "xenplug-agent: event=template-prepared changes={} failed={}",
        steps.len(),
        errors.len()
    );
    if !errors.is_empty() {
        anyhow::bail!("{} of {} changes failed", errors.len(), steps.len());
    }
    eprintln!(
        "xenplug-agent: shut down now: the next boot of this disk (or a clone) is a first boot"
    );
    Ok(())
}

fn run(args: Args) -> Result<()> {
    if args.prepare_template {
        return prepare_template(&args.root, args.dry_run);
    }
    let cfg = load_config(&args.config)?;
    let mut names = if args.names.is_empty() {
        cfg.channels.clone()
    } else {
        args.names.clone()
    };
    if names.is_empty() {
        names.push(xenplug_channel::DEFAULT_CHANNEL_NAME.to_string());
    }
    for n in &names {
        xenplug_guest_agent::setup::validate_name(n)
            .map_err(|e| anyhow::anyhow!("channel name {n:?}: {e}"))?;
    }
    let apply_opts = xenplug_guest_agent::apply::ApplyOptions {
        default_user: cfg.default_user.clone(),
        run_commands: cfg.run_commands.unwrap_or(false),
        network_renderer: cfg.network_renderer,
    };
    apply_opts
        .validate()
        .with_context(|| format!("{}", args.config.display()))?;
    xenplug_guest_agent::apply::set_options(apply_opts);
    let shutdown = args
        .shutdown_program
        .or(cfg.shutdown_program)
        .unwrap_or_else(|| PathBuf::from("/sbin/shutdown"));
    let agent = Mutex::new(Agent {
        root: args.root.clone(),
        host: Box::new(RealHost),
        power: Box::new(ShutdownProgram(shutdown)),
        live_network: !args.no_live_network && cfg.live_network != Some(false),
    });
    let opts = Options {
        limits: Limits {
            max_frame: args.max_frame.max(1024),
            ..Limits::default()
        },
        ..Options::default()
    };
    session::install_signal_handlers().context("install signal handlers")?;
    match &args.device {
        Some(dev) => {
            let dir = dev
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            let name = dev
                .file_name()
                .context("--device must name a file")?
                .to_string_lossy()
                .into_owned();
            session::run_channel(&dir, &name, &agent, &opts);
        }
        None => {
            eprintln!(
                "xenplug-agent: waiting for {} in {}",
                names.join(", "),
                args.channel_dir.display()
            );
            std::thread::scope(|s| {
                for n in &names {
                    let (agent, opts, dir) = (&agent, &opts, &args.channel_dir);
                    s.spawn(move || session::run_channel(dir, n, agent, opts));
                }
            });
        }
    }
    eprintln!("xenplug-agent: stopped");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenplug-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}
