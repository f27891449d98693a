//! Applying a [`ConfigDoc`] the way cloud-init would on a Debian guest, in its module order:
//! `bootcmd`, network ([`crate::netapply`]: live through netlink, persisted for the guest's
//! network manager), `write_files`, host name and `/etc/hosts`, `ca_certs`, groups, users,
//! sudo rules, keys and passwords ([`crate::accounts`]), `ssh_pwauth`, `ntp`, `timezone`,
//! deferred `write_files` ([`crate::sysconf`]); then the applied generation is recorded.
//! After that: services restarted, the network manager told to reload, `runcmd`
//! ([`crate::commands`]), `final_message`.
//!
//! **All or nothing per generation.** Every file goes through a [`Txn`] that remembers what it
//! replaced, password-database entries are put back under the lock, users and groups the
//! generation created are removed again (`userdel`, `groupdel`, `gpasswd -d`), live network
//! changes go through a [`NetJournal`] that snapshots the links and addresses it touches, and
//! the kernel host name is remembered. When any step fails, everything done so far is undone
//! (newest first, never stopping at the first error), the previous generation's live routes
//! are put back, and the error says whether the previous generation is whole again. The record
//! of the applied generation is the last write of the transaction, so it only ever names a
//! generation that is completely in place. Commands are the exception: what `bootcmd` did is
//! not undone, which is why it runs only after every check passed and before anything else.
//!
//! **Across a kill.** The same changes are also written, before each is made, to a durable
//! journal ([`crate::journal`]); [`recover`] (run when the agent starts, before it answers,
//! and before every apply) finishes an interrupted generation whose record was written and
//! undoes any other from the journal alone. `runcmd` and `final_message` come after the
//! record: a kill after it leaves the generation in place without them (at most once, never
//! twice).

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use xenplug_channel::config::{ConfigDoc, User};
use xenplug_channel::qga::{ApplyResult, ConfigGeneration};

use crate::fsutil::{self, under};
use crate::journal::{self, AfterRec, Journal, Record, Recovery};
use crate::net::NetOps;
use crate::netapply::{LiveRec, NetJournal};
use crate::render::{self, Renderer};
use crate::tools::{self, Tools};
use crate::txn::Txn;
use crate::{accounts, commands, sysconf};

/// Host-wide effects that tests replace (the kernel host name).
pub trait Host {
    /// sethostname(2).
    fn set_hostname(&mut self, name: &str) -> Result<()>;
    /// The current host name.
    fn hostname(&self) -> Result<String>;
}

/// The real host: sethostname(2)/gethostname(2) in the caller's UTS namespace.
#[derive(Debug, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn set_hostname(&mut self, name: &str) -> Result<()> {
        nix::unistd::sethostname(name).with_context(|| format!("sethostname {name}"))
    }
    fn hostname(&self) -> Result<String> {
        Ok(nix::unistd::gethostname()
            .context("gethostname")?
            .to_string_lossy()
            .into_owned())
    }
}

/// Where the applied generation is recorded (under the root).
pub const STATE_FILE: &str = "/var/lib/xenplug-agent/applied.json";

const HOSTS_BEGIN: &str = "# BEGIN xenplug-agent";
const HOSTS_END: &str = "# END xenplug-agent";

/// Linux HOST_NAME_MAX.
pub const HOST_NAME_MAX: usize = 64;

/// What the guest's owner decides in the agent's configuration (`/etc/xenplug/agent.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApplyOptions {
    /// The image's default user (cloud-init's `system_info.default_user`), with cloud-config's
    /// user keys: `name` (required), `gecos`, `groups`, `shell`, `sudo`, `lock_passwd`, …
    #[serde(default)]
    pub default_user: Option<User>,
    /// Run `bootcmd`/`runcmd` from dom0's documents. Default **false**: those commands run as
    /// root with whatever dom0 wrote, which is more than configuring the guest; images whose
    /// owner wants cloud-init's behaviour turn it on (as distributions ship qemu-ga's
    /// `guest-exec` disabled). A document with commands is refused while it is off, before
    /// anything changes.
    #[serde(default)]
    pub run_commands: bool,
    /// The network manager to write for; absent: detected (see [`render::detect`]).
    #[serde(default)]
    pub network_renderer: Option<Renderer>,
}

impl ApplyOptions {
    /// Check what serde cannot.
    pub fn validate(&self) -> Result<()> {
        if let Some(u) = &self.default_user {
            xenplug_channel::config::validate_username(&u.name)
                .map_err(|e| anyhow!("default-user.name: {e}"))?;
            let doc = ConfigDoc {
                instance_id: "agent.toml".into(),
                users: vec![u.clone()],
                ..Default::default()
            };
            doc.validate()
                .map_err(|e| anyhow!("default-user: {}", e.to_string().replace("users[0].", "")))?;
        }
        Ok(())
    }
}

static OPTIONS: OnceLock<ApplyOptions> = OnceLock::new();

/// Set the process-wide options (the agent does this once, from its configuration file).
pub fn set_options(o: ApplyOptions) {
    let _ = OPTIONS.set(o);
}

/// The process-wide options (defaults until [`set_options`]).
pub fn options() -> ApplyOptions {
    OPTIONS.get().cloned().unwrap_or_default()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
struct State {
    instance_id: String,
    generation: u64,
    /// What the agent configured live, so the next generation can take back what it no
    /// longer asks for (and nothing else).
    #[serde(default)]
    live: Vec<LiveRec>,
    /// The instance whose `bootcmd`/`runcmd` ran (they run once per instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commands_ran: Option<String>,
}

fn read_state(root: &Path) -> Result<Option<State>> {
    let p = under(root, STATE_FILE);
    match fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("parse {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

/// The generation recorded under `root`.
pub fn applied_generation(root: &Path) -> Result<ConfigGeneration> {
    Ok(match read_state(root)? {
        Some(s) => ConfigGeneration {
            instance_id: Some(s.instance_id),
            generation: Some(s.generation),
        },
        None => ConfigGeneration::default(),
    })
}

/// Everything `apply` touches besides files under the root.
pub struct Ctx<'a> {
    /// Files are read and written under this directory.
    pub root: &'a Path,
    /// Host name.
    pub host: &'a mut dyn Host,
    /// Live network; None skips live changes (persisted files are still written).
    pub net: Option<&'a mut dyn NetOps>,
    /// The guest's programs (shadow-utils, visudo, update-ca-certificates, systemctl, sh).
    pub tools: &'a mut dyn Tools,
    /// The agent's configuration.
    pub opts: &'a ApplyOptions,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("root", &self.root).finish()
    }
}

/// Done once the generation is in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum After {
    /// `systemctl try-restart UNIT`.
    Restart(String),
    /// `systemctl try-reload-or-restart UNIT`.
    Reload(String),
    /// Have the network manager pick the new files up.
    Network(Renderer, Vec<String>),
}

impl After {
    fn to_rec(&self) -> AfterRec {
        match self {
            After::Restart(u) => AfterRec::Restart { unit: u.clone() },
            After::Reload(u) => AfterRec::Reload { unit: u.clone() },
            After::Network(r, ids) => AfterRec::Network {
                renderer: *r,
                ids: ids.clone(),
            },
        }
    }

    fn from_rec(r: &AfterRec) -> After {
        match r {
            AfterRec::Restart { unit } => After::Restart(unit.clone()),
            AfterRec::Reload { unit } => After::Reload(unit.clone()),
            AfterRec::Network { renderer, ids } => After::Network(*renderer, ids.clone()),
        }
    }
}

/// Finish or undo an apply that a kill (or a crash of the guest) interrupted, from its durable
/// journal ([`crate::journal`]): forward when the record of the applied generation names it
/// (every change before that last write is in place; the services it would have restarted are
/// restarted), else back to the previous generation. Nothing to do without a journal. An error
/// says what could not be undone; the journal is then kept for the next try.
pub fn recover(ctx: &mut Ctx<'_>) -> Result<Recovery> {
    let Some(records) = journal::read(ctx.root)? else {
        return Ok(Recovery::Nothing);
    };
    let journal_path = under(ctx.root, journal::JOURNAL_FILE);
    let Some(Record::Begin {
        instance_id,
        generation,
        made_dirs,
        ..
    }) = records.first().cloned()
    else {
        // Killed before its first record was whole: nothing was changed.
        fsutil::remove_file(&journal_path)?;
        return Ok(Recovery::Nothing);
    };
    let state = read_state(ctx.root)?;
    let complete = state
        .as_ref()
        .is_some_and(|s| s.instance_id == instance_id && s.generation == generation);
    let fields = [
        ("instance-id", instance_id.clone()),
        ("generation", generation.to_string()),
    ];
    if complete {
        let mut errors = journal::remove_temporaries(&records);
        let after: Vec<After> = records
            .iter()
            .filter_map(|r| match r {
                Record::After { after } => Some(after.iter().map(After::from_rec)),
                _ => None,
            })
            .flatten()
            .collect();
        let mut changes = Vec::new();
        run_after(ctx.root, ctx.tools, &after, &mut changes);
        errors.extend(changes.into_iter().filter(|c| c.contains(" failed")));
        fsutil::remove_file(&journal_path)?;
        let mut f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let e = errors.join("; ");
        f.push(("direction", "forward"));
        if !e.is_empty() {
            f.push(("notes", &e));
        }
        log_event("config-recovered", &f);
        return Ok(Recovery::Forward(instance_id, generation));
    }
    let errors = journal::roll_back(
        ctx.root,
        &records,
        &mut *ctx.host,
        ctx.net.as_mut().map(|n| &mut **n as &mut dyn NetOps),
        &mut *ctx.tools,
    );
    let mut f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if errors.is_empty() {
        fsutil::remove_file(&journal_path)?;
        journal::remove_made_dirs(&made_dirs)?;
        f.push(("direction", "back"));
        log_event("config-recovered", &f);
        Ok(Recovery::Back(instance_id, generation))
    } else {
        let e = errors.join("; ");
        f.push(("errors", &e));
        log_event("config-recovery-incomplete", &f);
        bail!(
            "undoing the interrupted apply of generation {generation} of instance {instance_id} \
             failed ({e}); the journal {} is kept for the next try",
            journal_path.display()
        )
    }
}

/// One generation being applied: the file transaction, the live-network journal, the host
/// name it replaced, what to do once it is in place, and the list of changes for the reply.
pub(crate) struct Run<'a, 'n> {
    pub root: &'a Path,
    pub txn: Txn,
    pub net: Option<NetJournal<'n>>,
    pub host: &'a mut dyn Host,
    pub tools: &'a mut dyn Tools,
    pub opts: &'a ApplyOptions,
    pub old_hostname: Option<String>,
    pub changes: Vec<String>,
    pub after: Vec<After>,
}

impl Run<'_, '_> {
    pub(crate) fn write_changed(&mut self, path: &Path, data: &str, mode: u32) -> Result<()> {
        if let Some(d) = path.parent() {
            self.txn.create_dir_all(d, 0o755)?;
        }
        if self.txn.write(path, data.as_bytes(), mode, None)? {
            let shown = self.shown(path);
            self.changes.push(format!("file {shown}"));
        }
        Ok(())
    }

    pub(crate) fn shown(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .map(|p| format!("/{}", p.display()))
            .unwrap_or_else(|_| path.display().to_string())
    }

    /// Register the undo of a change made with one of the guest's programs.
    pub(crate) fn undo_tool(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce(&mut dyn Tools) -> Result<()> + Send + 'static,
    ) {
        self.txn.on_rollback_run(what, f);
    }
}

/// Apply `doc` (already validated). Same instance id and generation as recorded: nothing is
/// done (`applied: false`). A lower generation for the same instance is refused. On failure
/// nothing of the new generation stays (see the module docs), and the error says so.
pub fn apply(doc: &ConfigDoc, ctx: &mut Ctx<'_>) -> Result<ApplyResult> {
    // An apply a kill interrupted is finished or undone first (the agent does it when it
    // starts; this covers every other caller).
    if journal::pending(ctx.root) {
        recover(ctx).context("an interrupted apply could not be recovered; nothing was changed")?;
    }
    let previous = read_state(ctx.root)?;
    if let Some(prev) = previous
        .as_ref()
        .filter(|p| p.instance_id == doc.instance_id)
    {
        let g = prev.generation;
        if g == doc.generation {
            return Ok(ApplyResult {
                instance_id: doc.instance_id.clone(),
                generation: doc.generation,
                applied: false,
                changes: vec![],
            });
        }
        if g > doc.generation {
            bail!(
                "generation {} of instance {} is older than the applied generation {g}",
                doc.generation,
                doc.instance_id
            );
        }
    }
    let commands_ran = previous
        .as_ref()
        .and_then(|p| p.commands_ran.clone())
        .filter(|i| *i == doc.instance_id);
    // The checks that need the guest, before anything changes.
    if doc.has_commands() && commands_ran.is_none() && !ctx.opts.run_commands {
        let key = if doc.bootcmd.is_empty() {
            "runcmd"
        } else {
            "bootcmd"
        };
        bail!(
            "{key}: not run: the agent's configuration does not allow commands \
             (run-commands = false in /etc/xenplug/agent.toml); nothing was changed"
        );
    }
    // A guest with none of the three gets networkd's files (harmless without networkd, read
    // if it is installed later) besides the live configuration; the reply says so.
    let detected = ctx
        .opts
        .network_renderer
        .or_else(|| render::detect(ctx.root));
    let renderer = Some(detected.unwrap_or(Renderer::Networkd));
    let old_live = previous
        .as_ref()
        .map(|p| p.live.clone())
        .unwrap_or_default();
    // The durable journal, before anything changes.
    let journal = Journal::create(
        ctx.root,
        Record::Begin {
            instance_id: doc.instance_id.clone(),
            generation: doc.generation,
            boot_id: journal::boot_id(),
            previous: previous.as_ref().map(|p| journal::Previous {
                instance_id: p.instance_id.clone(),
                generation: p.generation,
            }),
            previous_live: old_live.clone(),
            made_dirs: Vec::new(),
        },
    )?;
    // The journal borrows the live network for this generation; it is handed back at the end.
    let mut run = Run {
        root: ctx.root,
        txn: Txn::journaled(journal.clone()),
        net: ctx
            .net
            .take()
            .map(|n| NetJournal::new(n).journaled(Some(journal.clone()))),
        host: &mut *ctx.host,
        tools: &mut *ctx.tools,
        opts: ctx.opts,
        old_hostname: None,
        changes: Vec::new(),
        after: Vec::new(),
    };
    if detected.is_none() && doc.network.as_ref().is_some_and(|n| !n.is_empty()) {
        run.changes.push(
            "network: no network manager found in the guest: systemd-networkd files written".into(),
        );
    }
    let result = apply_steps(doc, &old_live, commands_ran.is_some(), renderer, &mut run);
    let outcome = finish(doc, previous.as_ref(), &old_live, &mut run, result, journal);
    let after = std::mem::take(&mut run.after);
    let mut changes = std::mem::take(&mut run.changes);
    let tools = run.tools;
    ctx.net = run.net.map(|j| j.inner);
    let mut r = outcome?;
    // In place: what cannot be part of the transaction.
    after_commit(
        doc,
        ctx.root,
        tools,
        &after,
        commands_ran.is_some(),
        &mut changes,
    );
    r.changes = changes;
    Ok(r)
}

fn apply_steps(
    doc: &ConfigDoc,
    old_live: &[LiveRec],
    commands_ran: bool,
    renderer: Option<Renderer>,
    run: &mut Run<'_, '_>,
) -> Result<()> {
    if !doc.bootcmd.is_empty() {
        if commands_ran {
            run.changes
                .push("bootcmd: already run for this instance".into());
        } else {
            let st = commands::run(
                run.tools,
                run.root,
                "bootcmd",
                &doc.bootcmd,
                &doc.instance_id,
            )?;
            if !st.success() {
                bail!("bootcmd: {st} (see {})", commands::LOG_FILE);
            }
            run.changes.push("bootcmd".into());
        }
    }
    let empty = xenplug_channel::config::NetworkConfig::default();
    let n = doc.network.as_ref().unwrap_or(&empty);
    let live = crate::netapply::apply_network(n, old_live, renderer, run)?;
    if let Some(r) = renderer.filter(|_| !n.is_empty()) {
        let names: Vec<String> = n
            .entries()
            .iter()
            .map(|(_, id, _)| id.to_string())
            .collect();
        run.after.push(After::Network(r, names));
    }
    sysconf::write_files(doc, false, run)?;
    apply_hostname(doc, run)?;
    if let Some(c) = &doc.ca_certs {
        sysconf::ca_certs(c, run)?;
    }
    accounts::apply_accounts(doc, run)?;
    if let Some(on) = doc.ssh_pwauth {
        sysconf::ssh_pwauth(on, run)?;
    }
    if let Some(n) = &doc.ntp {
        sysconf::ntp(n, run)?;
    }
    if let Some(tz) = &doc.timezone {
        sysconf::timezone(tz, run)?;
    }
    sysconf::write_files(doc, true, run)?;
    let state = State {
        instance_id: doc.instance_id.clone(),
        generation: doc.generation,
        live,
        commands_ran: (doc.has_commands() || commands_ran).then(|| doc.instance_id.clone()),
    };
    let p = under(run.root, STATE_FILE);
    run.txn
        .create_dir_all(p.parent().expect("state file has a parent"), 0o755)?;
    // What a recovery that finds this generation complete still has to do.
    journal::log(
        run.txn.journal(),
        Record::After {
            after: run.after.iter().map(After::to_rec).collect(),
        },
    )?;
    run.txn.write(
        &p,
        &serde_json::to_vec_pretty(&state).expect("state serializes"),
        0o644,
        None,
    )?;
    Ok(())
}

/// Commit, or undo everything and say what is in place now.
fn finish(
    doc: &ConfigDoc,
    previous: Option<&State>,
    old_live: &[LiveRec],
    run: &mut Run<'_, '_>,
    result: Result<()>,
    journal: journal::Shared,
) -> Result<ApplyResult> {
    let txn = std::mem::take(&mut run.txn);
    match result {
        Ok(()) => {
            txn.commit();
            // The generation is recorded: a journal left behind would only be rolled forward.
            if let Err(e) = Journal::finish(journal, false) {
                log_event("journal-not-removed", &[("error", &format!("{e:#}"))]);
            }
            log_event(
                "config-applied",
                &[
                    ("instance-id", doc.instance_id.as_str()),
                    ("generation", &doc.generation.to_string()),
                ],
            );
            Ok(ApplyResult {
                instance_id: doc.instance_id.clone(),
                generation: doc.generation,
                applied: true,
                changes: Vec::new(),
            })
        }
        Err(e) => {
            run.after.clear();
            let mut undo_errors = txn.rollback(&mut *run.tools);
            if let Some(j) = run.net.as_mut() {
                undo_errors.extend(j.restore(old_live));
            }
            if let Some(h) = run.old_hostname.take() {
                if let Err(e) = run.host.set_hostname(&h) {
                    undo_errors.push(format!("restore the host name {h}: {e:#}"));
                }
            }
            let before = match previous {
                Some(p) => format!("generation {} of instance {}", p.generation, p.instance_id),
                None => "the configuration from before any generation".to_string(),
            };
            let what = format!(
                "generation {} of instance {} was not applied: {e:#}",
                doc.generation, doc.instance_id
            );
            if undo_errors.is_empty() {
                // Undone: nothing left for a recovery (which would find nothing to do anyway).
                if let Err(e) = Journal::finish(journal, true) {
                    log_event("journal-not-removed", &[("error", &format!("{e:#}"))]);
                }
                log_event(
                    "config-rolled-back",
                    &[
                        ("instance-id", doc.instance_id.as_str()),
                        ("generation", &doc.generation.to_string()),
                    ],
                );
                Err(anyhow!(
                    "{what}; everything it changed was undone: {before} is in place"
                ))
            } else {
                log_event(
                    "config-rollback-incomplete",
                    &[
                        ("instance-id", doc.instance_id.as_str()),
                        ("generation", &doc.generation.to_string()),
                        ("errors", &undo_errors.join("; ")),
                    ],
                );
                Err(anyhow!(
                    "{what}; undoing it failed too ({}), so the guest is partly configured and \
                     {before} is not whole",
                    undo_errors.join("; ")
                ))
            }
        }
    }
}

/// True when the agent runs on the live system with systemd (not on a tree for tests).
fn live_system(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").is_dir()
}

fn after_commit(
    doc: &ConfigDoc,
    root: &Path,
    tools: &mut dyn Tools,
    after: &[After],
    commands_ran: bool,
    changes: &mut Vec<String>,
) {
    run_after(root, tools, after, changes);
    if !doc.runcmd.is_empty() {
        if commands_ran {
            changes.push("runcmd: already run for this instance".into());
        } else {
            match commands::run(tools, root, "runcmd", &doc.runcmd, &doc.instance_id) {
                Ok(st) if st.success() => changes.push("runcmd".into()),
                Ok(st) => changes.push(format!("runcmd: {st} (see {})", commands::LOG_FILE)),
                Err(e) => changes.push(format!("runcmd: {e:#}")),
            }
        }
    }
    if let Some(m) = &doc.final_message {
        let text = sysconf::final_message(m, root);
        changes.push(format!("final-message: {text}"));
    }
}

/// Restart and reload what the generation changed (on the live system only).
fn run_after(root: &Path, tools: &mut dyn Tools, after: &[After], changes: &mut Vec<String>) {
    let live = live_system(root);
    let mut note = |what: String, r: Result<std::process::Output>| match r {
        Ok(o) if o.status.success() => changes.push(what),
        Ok(o) => changes.push(format!(
            "{what} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => changes.push(format!("{what} failed: {e:#}")),
    };
    for a in after {
        if !live {
            continue;
        }
        match a {
            After::Restart(u) => note(
                format!("restarted {u}"),
                tools::in_guest(
                    tools,
                    root,
                    "systemctl",
                    &["try-restart".into(), u.clone()],
                    None,
                ),
            ),
            After::Reload(u) => note(
                format!("reloaded {u}"),
                tools::in_guest(
                    tools,
                    root,
                    "systemctl",
                    &["try-reload-or-restart".into(), u.clone()],
                    None,
                ),
            ),
            After::Network(Renderer::Networkd, _) => note(
                "networkctl reload".into(),
                tools::in_guest(tools, root, "networkctl", &["reload".into()], None),
            ),
            After::Network(Renderer::Ifupdown, _) => note(
                "ifup -a".into(),
                tools::in_guest(tools, root, "ifup", &["-a".into()], None),
            ),
            After::Network(Renderer::NetworkManager, ids) => {
                note(
                    "nmcli connection reload".into(),
                    tools::in_guest(
                        tools,
                        root,
                        "nmcli",
                        &["connection".into(), "reload".into()],
                        None,
                    ),
                );
                for id in ids {
                    note(
                        format!("nmcli connection up xenplug {id}"),
                        tools::in_guest(
                            tools,
                            root,
                            "nmcli",
                            &[
                                "connection".into(),
                                "up".into(),
                                crate::render::nm::uuid(id),
                            ],
                            None,
                        ),
                    );
                }
            }
        }
    }
}

/// Log a security-relevant change as one structured `key=value` line on stderr.
pub fn log_event(event: &str, fields: &[(&str, &str)]) {
    let mut line = format!("xenplug-agent: event={event}");
    for (k, v) in fields {
        let v: String = v
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if v.contains(' ') || v.is_empty() {
            let _ = write!(line, " {k}=\"{}\"", v.replace('"', "'"));
        } else {
            let _ = write!(line, " {k}={v}");
        }
    }
    eprintln!("{line}");
}

fn apply_hostname(doc: &ConfigDoc, run: &mut Run<'_, '_>) -> Result<()> {
    let Some(want) = doc.effective_hostname() else {
        return Ok(());
    };
    let name = xenplug_channel::config::truncate_hostname(&want, HOST_NAME_MAX);
    let now = run.host.hostname().ok();
    if now.as_deref() != Some(name.as_str()) {
        if let Some(before) = &now {
            journal::log(
                run.txn.journal(),
                Record::Hostname {
                    before: before.clone(),
                },
            )?;
        }
        run.host.set_hostname(&name)?;
        if run.old_hostname.is_none() {
            run.old_hostname = now;
        }
        run.changes.push("hostname".into());
        log_event("hostname", &[("name", &name)]);
    }
    let hn = under(run.root, "/etc/hostname");
    run.write_changed(&hn, &format!("{name}\n"), 0o644)?;
    if doc.manage_etc_hosts != Some(false) {
        let hosts = under(run.root, "/etc/hosts");
        let old = fs::read_to_string(&hosts).unwrap_or_default();
        let short = name.split('.').next().unwrap_or(&name).to_string();
        let mut names = Vec::new();
        if let Some(f) = &doc.fqdn {
            names.push(f.clone());
        }
        for n in [&name, &short] {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let line = render_hosts_line(&names)?;
        let new = fsutil::replace_block(&old, HOSTS_BEGIN, HOSTS_END, &[line]);
        let mode = fsutil::mode_owner(&hosts).map(|m| m.0).unwrap_or(0o644);
        run.write_changed(&hosts, &new, mode)?;
    }
    Ok(())
}

/// The agent's `/etc/hosts` line. Every name is re-checked as a host name here, the last place
/// before the file: a name with a space, a `#` or a line break would add names, comment the rest
/// out or add a line.
pub fn render_hosts_line(names: &[String]) -> Result<String> {
    for n in names {
        xenplug_channel::config::validate_hostname(n).map_err(|e| anyhow!("/etc/hosts: {e}"))?;
    }
    Ok(format!("127.0.1.1\t{}", names.join(" ")))
}

/// `/etc/resolv.conf` for these servers and search domains. Search domains are re-checked as
/// DNS names: a space or line break would add domains or a `nameserver` line.
pub fn render_resolv_conf(servers: &[IpAddr], search: &[String]) -> Result<String> {
    let mut s = String::from("# Written by xenplug-agent.\n");
    if !search.is_empty() {
        for d in search {
            xenplug_channel::config::validate_hostname(d)
                .map_err(|e| anyhow!("/etc/resolv.conf: {e}"))?;
        }
        let _ = writeln!(s, "search {}", search.join(" "));
    }
    for a in servers.iter().take(3) {
        let _ = writeln!(s, "nameserver {a}");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A recording fake of the kernel: links, addresses, routes, and the operations in order.
    /// It behaves as the kernel does where the agent relies on it: a link is renamed only
    /// while down, and a link that goes down loses its routes. `fail_at` makes the n-th
    /// changing operation (counted from 0) fail, to inject a failure part way.
    /// (ifindex, destination, prefix, gateway, metric)
    type FakeRoute = (u32, IpAddr, u8, Option<IpAddr>, Option<u32>);

    #[derive(Default, Clone)]
    struct FakeNet {
        links: Vec<crate::net::Link>,
        addrs: Vec<crate::net::Addr>,
        routes: Vec<FakeRoute>,
        ops: Vec<String>,
        fail_at: Option<usize>,
        changes: usize,
    }

    impl FakeNet {
        fn change(&mut self, what: String) -> Result<()> {
            let n = self.changes;
            self.changes += 1;
            if self.fail_at == Some(n) {
                bail!("injected failure of operation {n} ({what})");
            }
            self.ops.push(what);
            Ok(())
        }

        /// What an `ip -j` comparison would see: links, sorted addresses and routes.
        fn state(&self) -> String {
            let mut a: Vec<String> = self.addrs.iter().map(|a| format!("{a:?}")).collect();
            a.sort();
            let mut r: Vec<String> = self.routes.iter().map(|r| format!("{r:?}")).collect();
            r.sort();
            let l: Vec<String> = self
                .links
                .iter()
                .map(|l| format!("{} {} {} {}", l.index, l.name, l.mtu, l.up))
                .collect();
            format!("links {l:?}\naddrs {a:?}\nroutes {r:?}")
        }
    }

    impl NetOps for FakeNet {
        fn links(&mut self) -> Result<Vec<crate::net::Link>> {
            Ok(self.links.clone())
        }
        fn addresses(&mut self) -> Result<Vec<crate::net::Addr>> {
            Ok(self.addrs.clone())
        }
        fn rename(&mut self, index: u32, name: &str) -> Result<()> {
            self.change(format!("rename {index} {name}"))?;
            for l in &mut self.links {
                if l.index == index {
                    if l.up {
                        bail!("rename {index}: device or resource busy");
                    }
                    l.name = name.into();
                }
            }
            Ok(())
        }
        fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
            self.change(format!("up {index} {up}"))?;
            for l in &mut self.links {
                if l.index == index {
                    l.up = up;
                }
            }
            if !up {
                self.routes.retain(|r| r.0 != index);
            }
            Ok(())
        }
        fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
            self.change(format!("mtu {index} {mtu}"))?;
            for l in &mut self.links {
                if l.index == index {
                    l.mtu = mtu;
                }
            }
            Ok(())
        }
        fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
            self.change(format!("add {addr}/{prefix}"))?;
            let a = crate::net::Addr {
                index,
                addr,
                prefix,
                secondary: false,
            };
            if !self.addrs.contains(&a) {
                self.addrs.push(a);
            }
            Ok(())
        }
        fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
            self.change(format!("del {addr}/{prefix}"))?;
            self.addrs
                .retain(|a| !(a.index == index && a.addr == addr && a.prefix == prefix));
            Ok(())
        }
        fn del_route(
            &mut self,
            index: u32,
            dst: IpAddr,
            prefix: u8,
            via: Option<IpAddr>,
        ) -> Result<()> {
            self.change(format!("delroute {dst}/{prefix} {via:?}"))?;
            self.routes
                .retain(|r| !(r.0 == index && r.1 == dst && r.2 == prefix && r.3 == via));
            Ok(())
        }
        fn replace_route(
            &mut self,
            index: u32,
            dst: IpAddr,
            prefix: u8,
            via: Option<IpAddr>,
            metric: Option<u32>,
        ) -> Result<()> {
            self.change(format!("route {dst}/{prefix} {via:?}"))?;
            self.routes
                .retain(|r| !(r.1 == dst && r.2 == prefix && r.4 == metric));
            self.routes.push((index, dst, prefix, via, metric));
            Ok(())
        }
    }

    struct FakeHost(String);
    impl Host for FakeHost {
        fn set_hostname(&mut self, name: &str) -> Result<()> {
            self.0 = name.into();
            Ok(())
        }
        fn hostname(&self) -> Result<String> {
            Ok(self.0.clone())
        }
    }

    /// [`apply`] with the fake host and network, files under `root`.
    fn apply_fake(
        doc: &ConfigDoc,
        root: &Path,
        host: &mut FakeHost,
        net: &mut FakeNet,
    ) -> Result<ApplyResult> {
        apply(
            doc,
            &mut Ctx {
                root,
                host,
                net: Some(net),
                tools: &mut crate::tools::RealTools,
                opts: &ApplyOptions::default(),
            },
        )
    }

    #[test]
    fn apply_order_noop_and_take_back() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        fs::write(root.path().join("etc/shadow"), "root:*:1:0:99999:7:::\n").unwrap();
        // A guest with systemd-networkd.
        fs::create_dir_all(root.path().join("lib/systemd")).unwrap();
        fs::write(root.path().join("lib/systemd/systemd-networkd"), "").unwrap();
        let mut net = FakeNet {
            links: vec![crate::net::Link {
                index: 2,
                name: "eth7".into(),
                mac: Some(
                    "00:16:3e:00:00:09"
                        .parse::<xenplug_channel::config::MacAddr>()
                        .unwrap()
                        .0,
                ),
                up: false,
                mtu: 1500,
                loopback: false,
                stats: None,
                master: None,
                kind: None,
                alias: None,
            }],
            ..Default::default()
        };
        let mut host = FakeHost("old".into());
        let mut doc: ConfigDoc = serde_json::from_value(json!({"instance-id": "i", "generation": 1,
            "hostname": "h1", "network": {"version": 2, "ethernets": {"lan": {
                "match": {"macaddress": "00:16:3e:00:00:09"}, "set-name": "eth0",
                "addresses": ["192.0.2.10/24"], "routes": [{"to": "default", "via": "192.0.2.1"}]}}}}))
        .unwrap();
        let r = apply_fake(&doc, root.path(), &mut host, &mut net).unwrap();
        assert!(r.applied);
        assert_eq!(host.0, "h1");
        assert_eq!(
            net.ops,
            vec![
                "rename 2 eth0",
                "up 2 true",
                "add 192.0.2.10/24",
                "route 0.0.0.0/0 Some(192.0.2.1)"
            ]
        );
        // Same generation: nothing at all.
        net.ops.clear();
        let r = apply_fake(&doc, root.path(), &mut host, &mut net).unwrap();
        assert!(!r.applied);
        assert!(net.ops.is_empty());
        // Next generation: the old address and route are taken back before the new are added.
        doc.generation = 2;
        let lan = doc
            .network
            .as_mut()
            .unwrap()
            .ethernets
            .get_mut("lan")
            .unwrap();
        lan.addresses = vec!["192.0.2.11/24".parse().unwrap()];
        lan.routes.clear();
        let _ = apply_fake(&doc, root.path(), &mut host, &mut net).unwrap();
        assert_eq!(
            net.ops,
            vec![
                "delroute 0.0.0.0/0 Some(192.0.2.1)",
                "del 192.0.2.10/24",
                "add 192.0.2.11/24"
            ]
        );
        let hosts = fs::read_to_string(root.path().join("etc/hosts")).unwrap();
        assert_eq!(
            hosts,
            "# BEGIN xenplug-agent\n127.0.1.1\th1\n# END xenplug-agent\n"
        );
        // An older generation is refused.
        doc.generation = 1;
        assert!(apply_fake(&doc, root.path(), &mut host, &mut net).is_err());
    }

    /// Every file under `root` (path, kind, content, mode), except the lock file the
    /// password-database lock leaves, as `lckpwdf` does.
    fn tree(root: &Path) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if rel == "etc/.pwd.lock" {
                    continue;
                }
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    out.push(format!("{rel}/ {:o}", m.mode() & 0o7777));
                    stack.push(p);
                } else {
                    out.push(format!(
                        "{rel} {:o} {:?}",
                        m.mode() & 0o7777,
                        String::from_utf8_lossy(&fs::read(&p).unwrap())
                    ));
                }
            }
        }
        out.sort();
        out
    }

    /// A syntactically valid ed25519 authorized_keys line.
    fn key(comment: &str) -> String {
        use base64::Engine as _;
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

    fn generation(n: u64) -> ConfigDoc {
        let k = key;
        let v = if n == 1 {
            json!({"instance-id": "i", "generation": 1, "hostname": "one",
                "network": {"version": 2, "ethernets": {"lan": {
                    "match": {"macaddress": "00:16:3e:00:00:09"}, "set-name": "eth0",
                    "addresses": ["192.0.2.10/24"],
                    "routes": [{"to": "default", "via": "192.0.2.1"}]}}},
                "users": [{"name": "alice", "ssh_authorized_keys": [k("one")],
                           "hashed_passwd": "$6$one$one", "lock_passwd": false}]})
        } else {
            json!({"instance-id": "i", "generation": n, "hostname": "two",
                "fqdn": "two.example.org",
                "network": {"version": 2, "ethernets": {
                    "lan": {"match": {"macaddress": "00:16:3e:00:00:09"}, "set-name": "lan0",
                        "mtu": 1400, "addresses": ["198.51.100.7/24", "2001:db8::7/64"],
                        "routes": [{"to": "default", "via": "198.51.100.1"},
                                   {"to": "203.0.113.0/24", "via": "198.51.100.254", "metric": 7}],
                        "nameservers": {"addresses": ["198.51.100.53"], "search": ["example.org"]}},
                    "eth1": {"dhcp4": true}}},
                "users": [{"name": "alice", "ssh_authorized_keys": [k("two")],
                           "hashed_passwd": "$6$two$two", "lock_passwd": true}]})
        };
        ConfigDoc::from_value(v).unwrap()
    }

    /// A guest with generation 1 applied: files under the returned root, the fake kernel, the
    /// fake host name.
    fn world() -> (tempfile::TempDir, FakeNet, FakeHost) {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in ["etc/network/interfaces.d", "home/alice", "sbin"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(
            r.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:4242:4242::/home/alice:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            r.join("etc/shadow"),
            "root:*:1:0:99999:7:::\nalice:!:1:0:99999:7:::\n",
        )
        .unwrap();
        fs::write(r.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
        fs::write(r.join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        fs::write(
            r.join("etc/network/interfaces"),
            "source /etc/network/interfaces.d/*\n",
        )
        .unwrap();
        fs::write(r.join("sbin/ifup"), "").unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(r.join("home/alice"), Some(4242), Some(4242)).unwrap();
        }
        let link = |index, name: &str, mac: &str| crate::net::Link {
            index,
            name: name.into(),
            mac: Some(mac.parse::<xenplug_channel::config::MacAddr>().unwrap().0),
            up: false,
            mtu: 1500,
            loopback: false,
            stats: None,
            master: None,
            kind: None,
            alias: None,
        };
        let mut net = FakeNet {
            links: vec![
                link(2, "ens3", "00:16:3e:00:00:09"),
                link(3, "eth1", "00:16:3e:00:00:0a"),
            ],
            ..Default::default()
        };
        // Something the agent did not configure, which must survive everything.
        net.addrs.push(crate::net::Addr {
            index: 2,
            addr: "10.9.9.9".parse().unwrap(),
            prefix: 32,
            secondary: false,
        });
        let mut host = FakeHost("image".into());
        apply_fake(&generation(1), r, &mut host, &mut net).unwrap();
        (root, net, host)
    }

    /// Issue 12: an apply is all or nothing per generation. A failure injected at every
    /// single step of generation 2 (each kernel operation, a file that cannot be written, the
    /// host name) leaves generation 1 exactly as it was (files, links, addresses, routes,
    /// host name, record), and the error tells the host so.
    #[test]
    fn a_failure_anywhere_leaves_the_previous_generation_whole() {
        let mut k = 0;
        loop {
            let (root, mut net, mut host) = world();
            let (files0, net0, host0) = (tree(root.path()), net.state(), host.0.clone());
            net.fail_at = Some(net.changes + k);
            match apply_fake(&generation(2), root.path(), &mut host, &mut net) {
                Ok(r) => {
                    assert!(r.applied);
                    assert!(k > 5, "only {k} kernel operations?");
                    eprintln!(
                        "generation 2 takes {k} kernel operations; a failure at each was undone"
                    );
                    break;
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(e.contains("injected failure"), "{e}");
                    assert!(
                        e.contains("generation 2 of instance i was not applied")
                            && e.contains("everything it changed was undone: generation 1 of instance i is in place"),
                        "{e}"
                    );
                    assert_eq!(
                        net.state(),
                        net0,
                        "kernel state after a failure at operation {k}: {e}"
                    );
                    assert_eq!(
                        tree(root.path()),
                        files0,
                        "files after a failure at operation {k}"
                    );
                    assert_eq!(host.0, host0);
                }
            }
            k += 1;
        }
        // A file that cannot be written (here: a directory stands where a networkd file goes),
        // after the live network, the host name and some files were changed.
        let (root, mut net, mut host) = world();
        let (files0, net0) = (tree(root.path()), net.state());
        fs::create_dir(
            root.path()
                .join("etc/systemd/network/10-xenplug-eth1.network"),
        )
        .unwrap();
        let files0_with_dir = tree(root.path());
        let e = format!(
            "{:#}",
            apply_fake(&generation(2), root.path(), &mut host, &mut net).unwrap_err()
        );
        assert!(e.contains("generation 1 of instance i is in place"), "{e}");
        assert_eq!(net.state(), net0);
        assert_eq!(host.0, "one");
        assert_eq!(tree(root.path()), files0_with_dir);
        assert_ne!(files0, files0_with_dir);
        // A user that cannot be configured, after everything else.
        let (root, mut net, mut host) = world();
        let (files0, net0) = (tree(root.path()), net.state());
        let mut bad = serde_json::to_value(generation(2)).unwrap();
        bad["users"][0]["name"] = json!("nobody-here");
        let bad = ConfigDoc::from_value(bad).unwrap();
        let e = format!(
            "{:#}",
            apply_fake(&bad, root.path(), &mut host, &mut net).unwrap_err()
        );
        assert!(
            e.contains("nobody-here") && e.contains("generation 1 of instance i is in place"),
            "{e}"
        );
        assert_eq!(
            (tree(root.path()), net.state(), host.0.as_str()),
            (files0, net0, "one")
        );
        assert_eq!(applied_generation(root.path()).unwrap().generation, Some(1));
    }

    /// Issue 13: an apply killed at any journal step — right before a record is written (every
    /// change before it made, this one not recorded) or right after (recorded, not made) —
    /// and then the agent's recovery: the guest is exactly at generation 1 or exactly at
    /// generation 2 (files with modes, links, addresses, routes, host name, record), the
    /// journal is gone, and generation 2 applies cleanly afterwards. The crash is a panic
    /// out of the journal's append: nothing in an apply undoes on unwinding, so what it
    /// leaves is what a SIGKILL leaves (the binary's SIGKILL at each step is exercised in
    /// `tests/apply_ns.rs`).
    #[test]
    fn a_kill_at_any_journal_step_is_recovered_to_one_generation() {
        let at =
            |root: &Path, net: &FakeNet, host: &FakeHost| (tree(root), net.state(), host.0.clone());
        let (root, mut net, mut host) = world();
        let one = at(root.path(), &net, &host);
        apply_fake(&generation(2), root.path(), &mut host, &mut net).unwrap();
        let two = at(root.path(), &net, &host);
        assert_ne!(one, two);
        let (mut back, mut forward) = (0, 0);
        for after in [false, true] {
            let mut step = 0;
            loop {
                let (root, mut net, mut host) = world();
                assert_eq!(at(root.path(), &net, &host), one);
                crate::journal::set_crash_point(Some((after, step)));
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    apply_fake(&generation(2), root.path(), &mut host, &mut net)
                }));
                crate::journal::set_crash_point(None);
                if let Ok(r) = r {
                    r.unwrap();
                    assert!(step > 10, "only {step} journal steps?");
                    eprintln!("generation 2 writes {step} journal records");
                    break;
                }
                assert!(crate::journal::pending(root.path()) || step == 0);
                // The agent starts again: recovery before anything else.
                let rec = recover(&mut Ctx {
                    root: root.path(),
                    host: &mut host,
                    net: Some(&mut net),
                    tools: &mut crate::tools::RealTools,
                    opts: &ApplyOptions::default(),
                })
                .unwrap();
                let now = at(root.path(), &net, &host);
                let side = if after { "after" } else { "before" };
                match rec {
                    crate::journal::Recovery::Forward(..) => {
                        forward += 1;
                        assert_eq!(now, two, "rolled forward, killed {side} record {step}");
                    }
                    _ => {
                        back += 1;
                        assert_eq!(now, one, "rolled back, killed {side} record {step}");
                    }
                }
                assert!(!crate::journal::pending(root.path()));
                // A second recovery has nothing to do; the generation applies.
                let again = recover(&mut Ctx {
                    root: root.path(),
                    host: &mut host,
                    net: Some(&mut net),
                    tools: &mut crate::tools::RealTools,
                    opts: &ApplyOptions::default(),
                })
                .unwrap();
                assert_eq!(again, crate::journal::Recovery::Nothing);
                apply_fake(&generation(2), root.path(), &mut host, &mut net).unwrap();
                assert_eq!(
                    at(root.path(), &net, &host),
                    two,
                    "killed {side} record {step}"
                );
                step += 1;
            }
        }
        assert!(back > 0 && forward > 0, "back {back}, forward {forward}");
    }

    /// The first generation killed part way: the recovery leaves the guest as it was before
    /// any generation, the agent's state directory the journal needed included.
    #[test]
    fn a_first_generation_killed_part_way_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in ["etc/network/interfaces.d", "home/alice", "sbin"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(
            r.join("etc/passwd"),
            "alice:x:4242:4242::/home/alice:/bin/sh\n",
        )
        .unwrap();
        fs::write(r.join("etc/shadow"), "alice:!:1:0:99999:7:::\n").unwrap();
        fs::write(r.join("etc/network/interfaces"), "").unwrap();
        fs::write(r.join("sbin/ifup"), "").unwrap();
        let before = tree(r);
        let mut host = FakeHost("image".into());
        let mut net = FakeNet::default();
        crate::journal::set_crash_point(Some((true, 3)));
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            apply_fake(&generation(1), r, &mut host, &mut net)
        }));
        crate::journal::set_crash_point(None);
        assert!(res.is_err());
        assert_ne!(tree(r), before);
        let rec = recover(&mut Ctx {
            root: r,
            host: &mut host,
            net: Some(&mut net),
            tools: &mut crate::tools::RealTools,
            opts: &ApplyOptions::default(),
        })
        .unwrap();
        assert!(matches!(rec, crate::journal::Recovery::Back(..)), "{rec:?}");
        assert_eq!(tree(r), before);
        assert_eq!(host.0, "image");
        assert_eq!(applied_generation(r).unwrap(), ConfigGeneration::default());
    }

    /// A recovery that is itself killed (here: its journal is read again after a partial
    /// undo) just runs again: every undo step is idempotent.
    #[test]
    fn a_recovery_interrupted_part_way_is_run_again() {
        let (root, mut net, mut host) = world();
        let one = (tree(root.path()), net.state(), host.0.clone());
        crate::journal::set_crash_point(Some((true, 20)));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            apply_fake(&generation(2), root.path(), &mut host, &mut net)
        }));
        crate::journal::set_crash_point(None);
        assert!(r.is_err(), "the apply finished before record 20");
        // Undo only the newest half of the records (a recovery killed part way)...
        let records = crate::journal::read(root.path()).unwrap().unwrap();
        let half = records.len() / 2;
        let mut partial = records[..1].to_vec();
        partial.extend_from_slice(&records[half..]);
        let e = crate::journal::roll_back(
            root.path(),
            &partial,
            &mut host,
            Some(&mut net),
            &mut crate::tools::RealTools,
        );
        assert!(e.is_empty(), "{e:?}");
        // ...then the whole recovery.
        let rec = recover(&mut Ctx {
            root: root.path(),
            host: &mut host,
            net: Some(&mut net),
            tools: &mut crate::tools::RealTools,
            opts: &ApplyOptions::default(),
        })
        .unwrap();
        assert!(matches!(rec, crate::journal::Recovery::Back(..)), "{rec:?}");
        assert_eq!((tree(root.path()), net.state(), host.0.clone()), one);
    }

    /// Records the programs it is asked to run and reports success.
    #[derive(Default)]
    struct RecordingTools(Vec<String>);

    impl Tools for RecordingTools {
        fn run(
            &mut self,
            program: &Path,
            args: &[std::ffi::OsString],
            stdin: Option<&[u8]>,
        ) -> Result<std::process::Output> {
            use std::os::unix::process::ExitStatusExt;
            let a: Vec<String> = args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            self.0.push(format!(
                "{} {} <<{}",
                program.display(),
                a.join(" "),
                String::from_utf8_lossy(stdin.unwrap_or_default())
            ));
            Ok(std::process::Output {
                status: std::process::ExitStatus::from_raw(0),
                stdout: Vec::new(),
                stderr: Vec::new(),
            })
        }
    }

    /// bootcmd/runcmd: refused before anything changes unless the agent's configuration allows
    /// them; then bootcmd first, runcmd after the generation is in place, once per instance.
    #[test]
    fn commands_are_gated_ordered_and_run_once_per_instance() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in ["etc", "bin", "lib/systemd"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("bin/sh"), "").unwrap();
        fs::write(r.join("lib/systemd/systemd-networkd"), "").unwrap();
        let doc = |g: u64| {
            ConfigDoc::from_value(json!({"instance-id": "i", "generation": g, "hostname": "h",
                "bootcmd": ["echo boot"], "runcmd": [["touch", "/x y"]]}))
            .unwrap()
        };
        let before = tree(r);
        let mut host = FakeHost("old".into());
        let mut tools = RecordingTools::default();
        let e = apply(
            &doc(1),
            &mut Ctx {
                root: r,
                host: &mut host,
                net: None,
                tools: &mut tools,
                opts: &ApplyOptions::default(),
            },
        )
        .unwrap_err();
        assert!(
            format!("{e:#}")
                .starts_with("bootcmd: not run: the agent's configuration does not allow commands"),
            "{e:#}"
        );
        assert!(format!("{e:#}").contains("nothing was changed"));
        assert_eq!(
            (tree(r), host.0.as_str(), tools.0.len()),
            (before, "old", 0)
        );
        let opts = ApplyOptions {
            run_commands: true,
            ..Default::default()
        };
        let run = |g: u64, tools: &mut RecordingTools, host: &mut FakeHost| {
            apply(
                &doc(g),
                &mut Ctx {
                    root: r,
                    host,
                    net: None,
                    tools,
                    opts: &opts,
                },
            )
            .unwrap()
        };
        let res = run(1, &mut tools, &mut host);
        let sh = format!("/usr/sbin/chroot {} /bin/sh -s", r.display());
        assert_eq!(
            tools.0,
            vec![
                format!("{sh} <<#!/bin/sh\nexport INSTANCE_ID='i'\necho boot\n"),
                format!("{sh} <<#!/bin/sh\n'touch' '/x y'\n"),
            ]
        );
        let pos = |c: &str| res.changes.iter().position(|x| x == c).unwrap();
        assert!(
            pos("bootcmd") < pos("hostname") && pos("hostname") < pos("runcmd"),
            "{:?}",
            res.changes
        );
        // The same instance again (a new generation): the commands do not run again.
        tools.0.clear();
        let res = run(2, &mut tools, &mut host);
        assert!(tools.0.is_empty(), "{:?}", tools.0);
        assert!(res
            .changes
            .contains(&"runcmd: already run for this instance".to_string()));
        // Once they ran, turning run-commands off does not refuse the instance's later
        // generations (nothing would run).
        let mut d3 = doc(3);
        d3.hostname = Some("h3".into());
        apply(
            &d3,
            &mut Ctx {
                root: r,
                host: &mut host,
                net: None,
                tools: &mut tools,
                opts: &ApplyOptions::default(),
            },
        )
        .unwrap();
        assert!(tools.0.is_empty());
        assert!(r.join("var/log/xenplug-agent-commands.log").exists());
    }
}
