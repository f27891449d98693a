//! The agent: every command qemu-ga answers on Linux and xenplug's own, over injected effects.
//!
//! [`Agent::dispatch`] is the one path a request takes: the command must exist
//! (`CommandNotFound` "The command … has not been found" otherwise), be enabled by the policy
//! ([`crate::policy`]: allow/block lists, frozen filesystems), have arguments that fit its
//! schema (checked with qemu-ga's wording), and then runs. Adding a command means one entry in
//! `xenplug_channel::qga::SPECS`, one `Command` variant and one arm in [`Agent::handle`].
//!
//! State that outlives a request lives here: processes started by `guest-exec`, files opened by
//! `guest-file-open`, and the frozen filesystems (with their auto-thaw deadlines; see
//! [`Agent::freeze_deadline`]).

use std::path::PathBuf;
use std::process::Command as Process;
use std::sync::{Arc, Condvar};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use xenplug_channel::config::{parse_ssh_key, validate_password_hash};
use xenplug_channel::qga::{
    self, AgentInfo, AuthorizedKeys, Command, CommandInfo, FreezeStatus, HostName, IpAddress,
    NetworkInterface, NetworkStats, ShutdownMode,
};
use xenplug_channel::{ErrorBody, Request};

use crate::apply::{self, Host};
use crate::cmd::exec::ExecTable;
use crate::cmd::file::FileTable;
use crate::cmd::fs::{self as fsops, BlockPaths, Hook};
use crate::cmd::sys::{self, SuspendMode};
use crate::log;
use crate::net::{NetOps, Netlink};
use crate::policy::RpcPolicy;
use crate::publisher::StateHub;
use crate::users;

/// What a handled command produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Reply with this value.
    Reply(Value),
    /// Reply, preceded by `0xFF` (guest-sync-delimited).
    DelimitedReply(Value),
    /// Send nothing (guest-shutdown, guest-suspend-* on success).
    NoReply,
    /// Reply `{}` and send this channel the guest state now and after every change.
    Subscribe,
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
        log::event("shutdown", &[("mode", flag)]);
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

/// Where the agent finds the kernel's views and keeps its state (injected by tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysPaths {
    /// `/proc`.
    pub proc: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
    /// The utmp file (`/var/run/utmp`).
    pub utmp: PathBuf,
    /// udev's database (`/run/udev/data`).
    pub udev_data: PathBuf,
    /// The state directory (`/run/xenplug-agent`: tmpfs, never frozen, empty after boot).
    pub statedir: PathBuf,
    /// `hwclock` (`/sbin/hwclock`).
    pub hwclock: PathBuf,
}

impl Default for SysPaths {
    fn default() -> Self {
        SysPaths {
            proc: "/proc".into(),
            sys: "/sys".into(),
            utmp: "/var/run/utmp".into(),
            udev_data: "/run/udev/data".into(),
            statedir: "/run/xenplug-agent".into(),
            hwclock: "/sbin/hwclock".into(),
        }
    }
}

/// When frozen filesystems are thawed without being asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThawPolicy {
    /// Longest a freeze may last (`None`: until thawed).
    pub max_frozen: Option<Duration>,
    /// How long after the channel that froze went away (device removed, hung up).
    pub after_channel_loss: Duration,
}

impl Default for ThawPolicy {
    fn default() -> Self {
        ThawPolicy {
            max_frozen: Some(Duration::from_secs(300)),
            after_channel_loss: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct Frozen {
    since: Instant,
    lost_at: Option<Instant>,
}

/// The name of the freeze marker in the state directory.
pub const FROZEN_MARKER: &str = "frozen";

/// The agent's state and effects.
pub struct Agent {
    /// Configuration files (passwd, shadow, keys, applied state) are under this root.
    pub root: PathBuf,
    /// Kernel host name.
    pub host: Box<dyn Host + Send>,
    /// Power actions.
    pub power: Box<dyn Power>,
    /// Apply network changes live (false: persisted files only).
    pub live_network: bool,
    /// Kernel views and state directory.
    pub paths: SysPaths,
    /// Which commands are enabled.
    pub policy: RpcPolicy,
    /// The fsfreeze hook.
    pub hook: Hook,
    /// Auto-thaw.
    pub thaw: ThawPolicy,
    /// The guest state published to subscribed channels.
    pub hub: Arc<StateHub>,
    /// Notified whenever the freeze state or its deadlines change (the watchdog waits on it
    /// with the agent's mutex).
    pub freeze_changed: Arc<Condvar>,
    exec: ExecTable,
    files: Option<FileTable>,
    frozen: Option<Frozen>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("root", &self.root)
            .field("live_network", &self.live_network)
            .field("paths", &self.paths)
            .field("frozen", &self.frozen)
            .finish()
    }
}

fn generic(e: anyhow::Error) -> ErrorBody {
    ErrorBody::generic(format!("{e:#}"))
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("reply types serialize")
}

impl Agent {
    /// An agent with the default paths, policy, hook and thaw policy.
    pub fn new(
        root: impl Into<PathBuf>,
        host: Box<dyn Host + Send>,
        power: Box<dyn Power>,
    ) -> Self {
        Agent {
            root: root.into(),
            host,
            power,
            live_network: true,
            paths: SysPaths::default(),
            policy: RpcPolicy::xenplug_default(),
            hook: Hook::IfPresent(fsops::DEFAULT_HOOK.into()),
            thaw: ThawPolicy::default(),
            hub: Arc::new(StateHub::default()),
            freeze_changed: Arc::new(Condvar::new()),
            exec: ExecTable::default(),
            files: None,
            frozen: None,
        }
    }

    fn files(&mut self) -> &mut FileTable {
        let dir = self.paths.statedir.clone();
        self.files.get_or_insert_with(|| FileTable::new(Some(&dir)))
    }

    fn block_paths(&self) -> BlockPaths {
        BlockPaths {
            sys: self.paths.sys.clone(),
            udev_data: self.paths.udev_data.clone(),
        }
    }

    /// True while this agent holds filesystems frozen.
    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// Run one request: existence, policy, arguments, then the command.
    pub fn dispatch(&mut self, req: &Request) -> Result<Outcome, ErrorBody> {
        let name = req.execute.as_str();
        if qga::spec_of(name).is_none() {
            return Err(ErrorBody::command_not_found(name));
        }
        self.policy.check(name, self.is_frozen())?;
        let cmd = Command::from_request(req)?;
        self.handle(cmd)
    }

    /// Handle one decoded command (the policy was checked by [`Agent::dispatch`]).
    pub fn handle(&mut self, cmd: Command) -> Result<Outcome, ErrorBody> {
        let ok = |v: Value| Ok(Outcome::Reply(v));
        match cmd {
            Command::Sync(a) => ok(json!(a.id)),
            Command::SyncDelimited(a) => Ok(Outcome::DelimitedReply(json!(a.id))),
            Command::Ping => ok(json!({})),
            Command::Info => ok(to_value(self.info())),
            Command::GetHostName => {
                let h = self.host.hostname().map_err(generic)?;
                ok(to_value(HostName { host_name: h }))
            }
            Command::GetOsinfo => ok(to_value(sys::osinfo(&self.root))),
            Command::NetworkGetInterfaces => {
                let l = network_interfaces().map_err(generic)?;
                ok(to_value(l))
            }
            Command::GetTime => {
                let ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0);
                ok(json!(ns))
            }
            Command::SetTime(a) => {
                sys::set_time(a.time, &self.paths.hwclock)?;
                ok(json!({}))
            }
            Command::SshGetAuthorizedKeys(a) => {
                let pw = users::lookup(&self.root, &a.username).map_err(generic)?;
                let keys = users::read_keys(&self.root, &pw).map_err(generic)?;
                ok(to_value(AuthorizedKeys { keys }))
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
                log::event(
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
                log::event(
                    "ssh-keys-remove",
                    &[("user", &a.username), ("keys", &a.keys.len().to_string())],
                );
                ok(json!({}))
            }
            Command::SetUserPassword(a) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.password.trim())
                    .map_err(|_| ErrorBody::generic("Base64 data contains invalid characters"))?;
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
                log::event("password", &[("user", &a.username)]);
                ok(json!({}))
            }
            Command::Shutdown(a) => {
                let mode = a.mode()?;
                self.power.shutdown(mode).map_err(generic)?;
                Ok(Outcome::NoReply)
            }
            Command::SuspendDisk | Command::SuspendRam | Command::SuspendHybrid => {
                let mode = match cmd {
                    Command::SuspendDisk => SuspendMode::Disk,
                    Command::SuspendRam => SuspendMode::Ram,
                    _ => SuspendMode::Hybrid,
                };
                sys::suspend(&self.paths.sys, mode)?;
                Ok(Outcome::NoReply)
            }
            Command::Exec(a) => {
                let r = self.exec.start(&a)?;
                log::event(
                    "exec",
                    &[
                        ("path", &a.path),
                        ("args", &a.arg.as_ref().map_or(0, Vec::len).to_string()),
                        ("pid", &r.pid.to_string()),
                    ],
                );
                ok(to_value(r))
            }
            Command::ExecStatus(a) => ok(to_value(self.exec.status(a.pid)?)),
            Command::FileOpen(a) => {
                let h = self.files().open(&a.path, a.mode.as_deref())?;
                ok(json!(h))
            }
            Command::FileClose(a) => {
                self.files().close(a.handle)?;
                ok(json!({}))
            }
            Command::FileRead(a) => ok(to_value(self.files().read(a.handle, a.count)?)),
            Command::FileWrite(a) => {
                ok(to_value(self.files().write(a.handle, &a.buf_b64, a.count)?))
            }
            Command::FileSeek(a) => ok(to_value(self.files().seek(a.handle, a.offset, a.whence)?)),
            Command::FileFlush(a) => {
                self.files().flush(a.handle)?;
                ok(json!({}))
            }
            Command::FsfreezeStatus => ok(to_value(if self.is_frozen() {
                FreezeStatus::Frozen
            } else {
                FreezeStatus::Thawed
            })),
            Command::FsfreezeFreeze => ok(json!(self.freeze(None)?)),
            Command::FsfreezeFreezeList(a) => ok(json!(self.freeze(a.mountpoints.as_deref())?)),
            Command::FsfreezeThaw => ok(json!(self.thaw_all("requested")?)),
            Command::Fstrim(a) => {
                let mounts = fsops::mounts(&self.paths.proc)?;
                log::event("fstrim", &[("filesystems", &mounts.len().to_string())]);
                ok(to_value(fsops::fstrim(&mounts, a.minimum)))
            }
            Command::GetFsinfo => {
                let mounts = fsops::mounts(&self.paths.proc)?;
                ok(to_value(fsops::fsinfo(&self.block_paths(), &mounts)))
            }
            Command::GetDisks => ok(to_value(fsops::disks(&self.block_paths())?)),
            Command::GetVcpus => ok(to_value(sys::vcpus(&self.paths.sys)?)),
            Command::SetVcpus(a) => ok(json!(sys::set_vcpus(&self.paths.sys, &a.vcpus)?)),
            Command::GetMemoryBlocks => ok(to_value(sys::memory_blocks(&self.paths.sys)?)),
            Command::SetMemoryBlocks(a) => ok(to_value(sys::set_memory_blocks(
                &self.paths.sys,
                &a.mem_blks,
            ))),
            Command::GetMemoryBlockInfo => ok(to_value(sys::memory_block_info(&self.paths.sys)?)),
            Command::GetUsers => ok(to_value(sys::users(&self.paths.utmp)?)),
            Command::GetTimezone => ok(to_value(sys::timezone())),
            Command::GetCpustats => ok(to_value(sys::cpustats(&self.paths.proc)?)),
            Command::GetDiskstats => ok(to_value(sys::diskstats(&self.paths.proc)?)),
            Command::GetLoad => ok(to_value(sys::load(&self.paths.proc)?)),
            Command::NetworkGetRoute => ok(to_value(sys::routes(&self.paths.proc)?)),
            // Disabled by the policy on Linux; kept for a direct `handle` call.
            Command::GetDevices => Err(ErrorBody::generic(
                "this feature or command is not currently supported",
            )),
            Command::ApplyConfig(a) => {
                let doc = a
                    .into_doc()
                    .map_err(|e| ErrorBody::generic(format!("invalid configuration: {e}")))?;
                // An interrupted apply the start-up recovery could not finish: again now,
                // with the live network whatever this document asks.
                if crate::journal::pending(&self.root) {
                    self.recover_apply().map_err(|e| {
                        generic(e.context("an interrupted apply could not be recovered"))
                    })?;
                }
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
                ok(to_value(r))
            }
            Command::GetConfigGeneration => {
                let g = apply::applied_generation(&self.root).map_err(generic)?;
                ok(to_value(g))
            }
            Command::GetGuestState => ok(to_value(self.hub.current_or_collect(&self.root))),
            Command::SubscribeGuestState => Ok(Outcome::Subscribe),
        }
    }

    /// `guest-info`: every command, `enabled` as the policy says now.
    pub fn info(&self) -> AgentInfo {
        let frozen = self.is_frozen();
        AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            supported_commands: qga::SPECS
                .iter()
                .map(|s| CommandInfo {
                    name: s.name.to_string(),
                    enabled: self.policy.enabled(s.name, frozen),
                    success_response: s.success_response,
                })
                .collect(),
        }
    }

    fn marker(&self) -> PathBuf {
        self.paths.statedir.join(FROZEN_MARKER)
    }

    fn set_frozen(&mut self, mountpoints: &[String]) -> Result<(), ErrorBody> {
        // The marker goes to tmpfs before anything is frozen: an agent killed mid-freeze finds
        // it when it starts again and thaws.
        let m = self.marker();
        std::fs::create_dir_all(&self.paths.statedir)
            .and_then(|_| std::fs::write(&m, mountpoints.join("\n") + "\n"))
            .map_err(|e| {
                ErrorBody::generic(format!("cannot record the freeze in {}: {e}", m.display()))
            })?;
        log::event("fsfreeze", &[("filesystems", &mountpoints.join(","))]);
        log::hold();
        self.frozen = Some(Frozen {
            since: Instant::now(),
            lost_at: None,
        });
        self.freeze_changed.notify_all();
        Ok(())
    }

    fn unset_frozen(&mut self) {
        self.frozen = None;
        let _ = std::fs::remove_file(self.marker());
        log::release();
        self.freeze_changed.notify_all();
    }

    /// `guest-fsfreeze-freeze` / `-freeze-list`.
    fn freeze(&mut self, only: Option<&[String]>) -> Result<i64, ErrorBody> {
        self.hook.run("freeze")?;
        let mounts = fsops::mounts(&self.paths.proc)?;
        let chosen: Vec<String> = mounts
            .iter()
            .filter(|m| only.is_none_or(|l| l.contains(&m.dir)))
            .map(|m| m.dir.clone())
            .collect();
        self.set_frozen(&chosen)?;
        match fsops::freeze(&mounts, only) {
            Ok(0) => {
                // Nothing could be frozen: not frozen (qemu-ga runs no thaw hook here either).
                self.unset_frozen();
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) => {
                let _ = self.thaw_all("freeze-failed");
                Err(e)
            }
        }
    }

    /// Thaw every local filesystem, forget the freeze, run the hook with `thaw`; returns how
    /// many filesystems were frozen.
    pub fn thaw_all(&mut self, why: &str) -> Result<i64, ErrorBody> {
        let mounts = fsops::mounts(&self.paths.proc)?;
        let n = fsops::thaw(&mounts);
        let was = self.is_frozen();
        self.unset_frozen();
        if was || why != "requested" {
            log::event(
                "fsthaw",
                &[("reason", why), ("filesystems", &n.to_string())],
            );
        }
        self.hook.run("thaw")?;
        Ok(n)
    }

    /// When the watchdog must thaw, if frozen: the freeze's age limit, or the grace period
    /// after the channel went away, whichever comes first.
    pub fn freeze_deadline(&self) -> Option<Instant> {
        let f = self.frozen.as_ref()?;
        let by_age = self.thaw.max_frozen.map(|d| f.since + d);
        let by_loss = f.lost_at.map(|t| t + self.thaw.after_channel_loss);
        match (by_age, by_loss) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The watchdog's check: thaw when a deadline passed. Returns true when it thawed.
    pub fn auto_thaw_if_due(&mut self, now: Instant) -> bool {
        let Some(d) = self.freeze_deadline() else {
            return false;
        };
        if now < d {
            return false;
        }
        let why = match self.frozen.as_ref().and_then(|f| f.lost_at) {
            Some(t) if t + self.thaw.after_channel_loss <= now => "channel-lost",
            _ => "timeout",
        };
        if let Err(e) = self.thaw_all(why) {
            log::event("fsthaw-failed", &[("error", &e.desc)]);
        }
        true
    }

    /// A channel went away (device removed, hung up, failed).
    pub fn channel_lost(&mut self) {
        if let Some(f) = self.frozen.as_mut() {
            f.lost_at.get_or_insert(Instant::now());
            self.freeze_changed.notify_all();
        }
    }

    /// A channel is served again.
    pub fn channel_up(&mut self) {
        if let Some(f) = self.frozen.as_mut() {
            f.lost_at = None;
            self.freeze_changed.notify_all();
        }
    }

    /// At start, before answering anything (and before an apply): an apply a kill or a crash
    /// interrupted is finished or undone from its durable journal ([`crate::journal`]), so the
    /// guest is in the previous or the new generation, never between.
    pub fn recover_apply(&mut self) -> anyhow::Result<crate::journal::Recovery> {
        if !crate::journal::pending(&self.root) {
            return Ok(crate::journal::Recovery::Nothing);
        }
        let mut nl;
        let net: Option<&mut dyn NetOps> = if self.live_network {
            nl = Netlink::open()?;
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
        apply::recover(&mut ctx)
    }

    /// At start: a freeze marker means an earlier agent died with filesystems frozen. Thaw.
    pub fn recover_freeze(&mut self) {
        if !self.marker().exists() {
            return;
        }
        match self.thaw_all("agent-restarted") {
            Ok(n) => log::event("fsthaw-recovered", &[("filesystems", &n.to_string())]),
            Err(e) => log::event("fsthaw-failed", &[("error", &e.desc)]),
        }
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
