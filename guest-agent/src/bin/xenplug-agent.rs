//! `xenplug-agent`: the in-guest agent on a Xen PV channel.
//!
//! **Who runs it:** systemd (`xenplug-agent.service`, shipped in `udev-rules/`), for the whole
//! life of the guest; tests run it with `--device` on a pty and `--root` on a temporary tree.
//!
//! **What it does:** speaks the QEMU guest agent wire protocol (see `docs/channel-protocol.md`)
//! on the channel tty and answers every command qemu-ga answers on Linux (qemu-ga 7.2's set,
//! plus `guest-get-load` and `guest-network-get-route`), with qemu-ga's argument and reply
//! schemas, and xenplug's `xenplug-apply-config` / `xenplug-get-config-generation` /
//! `xenplug-get-guest-state` / `xenplug-subscribe-guest-state`. The tty is opened once,
//! switched to raw mode on its own fd at once, kept open, and re-opened when it fails (EIO,
//! ENODEV, hang-up) or its link disappears or is re-pointed. It publishes the guest's state
//! (OS, memory, vif addresses) in xenstore, following rtnetlink events.
//!
//! **argv / env** (the long options mirror qemu-ga's where they exist):
//! * `--device PATH`: serve this tty (no udev, tests). Without it: watch `--channel-dir`
//!   (default `/dev/xen-channel`) with inotify for each configured channel name.
//! * `--root DIR` (default `/`): configuration files (passwd, shadow, keys, network, applied
//!   state) are read and written under DIR (tests).
//! * `--config FILE` (default `/etc/xenplug/agent.toml`, optional): see `guest-agent/README.md`
//!   and the shipped file for every key (`channels`, `shutdown-program`, `live-network`,
//!   `run-commands` (allow dom0's `bootcmd`/`runcmd`), `network-renderer`, `[default-user]`,
//!   `allow-rpcs`, `block-rpcs`, `fsfreeze-hook`, `fsfreeze-timeout`,
//!   `fsfreeze-thaw-after-channel-loss`, `statedir`, `guest-state`,
//!   `guest-state-min-interval-ms`, `guest-state-refresh`).
//! * `--name NAME` (repeatable): channel names, overriding the configuration.
//! * `-a/--allow-rpcs LIST`, `-b/--block-rpcs LIST` (comma-separated, repeatable, added to the
//!   configuration's lists; `help` lists the commands): qemu-ga's command filters. With no list
//!   anywhere, `guest-exec*` and `guest-file-*` are blocked (see `policy.rs` for why).
//! * `-F/--fsfreeze-hook PATH` (required to exist) / `--no-fsfreeze-hook`; default: run
//!   `/etc/qemu/fsfreeze-hook` (or its `.d` drop-ins) when present.
//! * `-t/--statedir DIR` (default `/run/xenplug-agent`): handle counter, freeze marker.
//! * `--guest-state` / `--no-guest-state`: publish the guest state in xenstore (default: when
//!   xenstore can be reached, i.e. in a Xen guest).
//! * `--shutdown-program PATH` / `XENPLUG_AGENT_SHUTDOWN_PROGRAM`: what `guest-shutdown` runs,
//!   as `PATH -P|-H|-r +0 "hypervisor initiated shutdown"` (injectable: tests pass a recorder).
//! * `--no-live-network`: write network configuration files only, change nothing live.
//! * `--max-frame BYTES` (default 1048576): largest accepted request.
//! * `--proc`, `--sys`, `--utmp`, `--udev-data`, `--hwclock`: where the kernel views, the
//!   login records and hwclock are (tests).
//! * `XENSTORED_PATH`: the xenstore socket (default `/dev/xen/xenbus`).
//! * `--prepare-template [--dry-run]`: prepare this guest to be cloned and exit, without
//!   serving anything: forget the applied generation, empty the machine id, remove SSH host
//!   keys, the random seed, the agent's network files and DHCP leases (`template` module); each
//!   change is printed on stdout (`would …` with `--dry-run`).
//!
//! **Files:** reads `/proc`, `/sys`, `/var/run/utmp`, `/run/udev/data`, `/etc/os-release`;
//! configuration application writes atomically under `--root` (`/etc/hostname`, `/etc/hosts`,
//! the network manager's files (`/etc/systemd/network/10-xenplug-*`,
//! `/etc/network/interfaces.d/xenplug-agent` or `/etc/NetworkManager/system-connections/
//! xenplug-*`), `/etc/resolv.conf`, `~user/.ssh/authorized_keys`, `/etc/shadow` (under the
//! `lckpwdf` lock), `/etc/sudoers.d/90-xenplug-agent-users`, what `write_files`/`ntp`/
//! `timezone`/`ssh_pwauth`/`ca_certs` ask for, `/var/lib/xenplug-agent/applied.json`) and runs
//! the guest's shadow-utils, `visudo`, `update-ca-certificates`, `systemctl`, and (with
//! `run-commands`) `/bin/sh` for `bootcmd`/`runcmd`; the state directory holds `fd-counter` and, while
//! filesystems are frozen, `frozen`. Security-relevant actions are logged to stderr as
//! `xenplug-agent: event=… key=value` lines (held while filesystems are frozen).
//!
//! **Exit codes:** 0 after SIGTERM/SIGINT (filesystems it froze are thawed first) or a prepared
//! template; 1 when it cannot start (bad configuration, signal set-up) or a template change
//! failed; 2 for usage errors (clap).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use xenplug_channel::frame::Limits;
use xenplug_guest_agent::agent::{Agent, ShutdownProgram, SysPaths, ThawPolicy};
use xenplug_guest_agent::apply::RealHost;
use xenplug_guest_agent::cli::{load_config, AgentArgs as Args, HookSetting};
use xenplug_guest_agent::cmd::fs::{Hook, DEFAULT_HOOK};
use xenplug_guest_agent::policy::{split_list, RpcPolicy};
use xenplug_guest_agent::publisher::{self, PublisherConfig};
use xenplug_guest_agent::session::{self, Options, STOP};
use xenplug_guest_agent::template;

/// `--prepare-template [--dry-run]`: see `xenplug_guest_agent::template`.
fn prepare_template(root: &std::path::Path, dry_run: bool) -> Result<()> {
    // A journal means an apply was interrupted and is not undone yet: its recovery (at the
    // agent's next start) would put back what it recorded, over the template's changes.
    if xenplug_guest_agent::journal::pending(root) {
        anyhow::bail!(
            "an interrupted configuration apply is pending ({}): start the agent once (it \
             finishes or undoes it), then prepare the template",
            xenplug_guest_agent::journal::JOURNAL_FILE
        );
    }
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

/// The configuration's list, then the command line's (qemu-ga: lists accumulate).
fn merged(file: Option<Vec<String>>, cli: &[String]) -> Option<Vec<String>> {
    if file.is_none() && cli.is_empty() {
        return None;
    }
    let mut v = file.unwrap_or_default();
    for c in cli {
        v.extend(split_list(c));
    }
    Some(v)
}

fn wants_help(lists: &[String]) -> bool {
    lists.iter().any(|l| matches!(l.trim(), "help" | "?"))
}

fn run(args: Args) -> Result<()> {
    if args.prepare_template {
        return prepare_template(&args.root, args.dry_run);
    }
    if wants_help(&args.allow_rpcs) || wants_help(&args.block_rpcs) {
        for n in xenplug_channel::qga::command_names() {
            println!("{n}");
        }
        return Ok(());
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
    let policy = RpcPolicy::from_lists(
        merged(cfg.allow_rpcs.clone(), &args.allow_rpcs),
        merged(cfg.block_rpcs.clone(), &args.block_rpcs),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hook = if args.no_fsfreeze_hook {
        Hook::None
    } else if let Some(p) = &args.fsfreeze_hook {
        Hook::Required(p.clone())
    } else {
        match &cfg.fsfreeze_hook {
            None | Some(HookSetting::Enabled(true)) => Hook::IfPresent(DEFAULT_HOOK.into()),
            Some(HookSetting::Enabled(false)) => Hook::None,
            Some(HookSetting::Path(p)) if p.as_os_str().is_empty() => Hook::None,
            Some(HookSetting::Path(p)) => Hook::Required(p.clone()),
        }
    };
    let shutdown = args
        .shutdown_program
        .or(cfg.shutdown_program)
        .unwrap_or_else(|| PathBuf::from("/sbin/shutdown"));
    let paths = SysPaths {
        proc: args.proc.clone(),
        sys: args.sys.clone(),
        utmp: args.utmp.clone(),
        udev_data: args.udev_data.clone(),
        statedir: args
            .statedir
            .or(cfg.statedir)
            .unwrap_or_else(|| SysPaths::default().statedir),
        hwclock: args.hwclock.clone(),
    };
    let mut a = Agent::new(
        args.root.clone(),
        Box::new(RealHost),
        Box::new(ShutdownProgram(shutdown)),
    );
    a.live_network = !args.no_live_network && cfg.live_network != Some(false);
    a.paths = paths;
    a.policy = policy;
    a.hook = hook;
    a.thaw = ThawPolicy {
        max_frozen: match cfg.fsfreeze_timeout {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => ThawPolicy::default().max_frozen,
        },
        after_channel_loss: cfg
            .fsfreeze_thaw_after_channel_loss
            .map(Duration::from_secs)
            .unwrap_or(ThawPolicy::default().after_channel_loss),
    };
    let disabled = a.policy.disabled();
    xenplug_guest_agent::log::event("start", &[("disabled", &disabled.join(","))]);
    // An earlier agent that died with filesystems frozen: thaw them before anything else.
    a.recover_freeze();
    // An apply it was killed in: finish or undo it before answering anything (what it did is
    // logged as `event=config-recovered`; a failure is logged, and retried before the next
    // apply, which is refused until it succeeds).
    if let Err(e) = a.recover_apply() {
        eprintln!("xenplug-agent: {e:#}");
    }
    let hub = a.hub.clone();
    let cv = a.freeze_changed.clone();
    let xenstore = match &cfg.guest_state {
        _ if args.no_guest_state => false,
        _ if args.guest_state => true,
        Some(toml::Value::Boolean(b)) => *b,
        None => xenplug_xenstore::XsClient::open().is_ok(),
        Some(toml::Value::String(s)) if s == "auto" => xenplug_xenstore::XsClient::open().is_ok(),
        Some(v) => anyhow::bail!("guest-state must be true, false or \"auto\", not {v}"),
    };
    let pub_cfg = PublisherConfig {
        root: args.root.clone(),
        proc: args.proc.clone(),
        xenstore,
        min_interval: Duration::from_millis(cfg.guest_state_min_interval_ms.unwrap_or(1000)),
        refresh: Duration::from_secs(cfg.guest_state_refresh.unwrap_or(60).max(1)),
    };
    let agent = Mutex::new(a);
    let opts = Options {
        limits: Limits {
            max_frame: args.max_frame.max(1024),
            ..Limits::default()
        },
        ..Options::default()
    };
    session::install_signal_handlers().context("install signal handlers")?;
    std::thread::scope(|s| {
        s.spawn(|| publisher::run(pub_cfg, hub, &STOP));
        // The freeze watchdog: thaws when a freeze outlives its limits.
        s.spawn(|| {
            while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
                let mut g = agent.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if g.auto_thaw_if_due(now) {
                    continue;
                }
                let wait = g
                    .freeze_deadline()
                    .map_or(Duration::from_millis(500), |d| {
                        d.saturating_duration_since(now)
                    })
                    .min(Duration::from_millis(500));
                let _ = cv.wait_timeout(g, wait);
            }
        });
        match &args.device {
            Some(dev) => {
                let dir = dev
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."));
                let name = dev
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                session::run_channel(&dir, &name, &agent, &opts);
            }
            None => {
                eprintln!(
                    "xenplug-agent: waiting for {} in {}",
                    names.join(", "),
                    args.channel_dir.display()
                );
                for n in &names {
                    let (agent, opts, dir) = (&agent, &opts, &args.channel_dir);
                    s.spawn(move || session::run_channel(dir, n, agent, opts));
                }
            }
        }
    });
    // Never leave the guest frozen behind us.
    let mut a = agent.lock().unwrap_or_else(|e| e.into_inner());
    if a.is_frozen() {
        let _ = a.thaw_all("agent-exit");
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
