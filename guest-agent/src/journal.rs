//! The durable apply journal: what makes one generation all or nothing across a SIGKILL, a
//! crash of the agent or of the whole guest, not only across a failure the apply sees.
//!
//! [`crate::txn::Txn`] and [`crate::netapply::NetJournal`] undo a failed apply from memory; a
//! killed agent has no memory. So before an apply touches anything, it writes the intent to
//! `/var/lib/xenplug-agent/apply.journal` (under the root), one JSON record per line, each
//! appended and fdatasync'ed **before** the change it describes (the file and its directory are
//! fsynced when the journal is created):
//!
//! * `begin`: the instance and generation being applied, the boot it runs in, the previous
//!   generation and what that generation configured live;
//! * `file`: what a path held (bytes, mode, owner; a symbolic link; nothing) before the first
//!   write, removal or replacement of it (the authorized_keys of a user are restored as that
//!   user, as they were written);
//! * `dir`: a directory about to be created (removed again when empty); `tree`: a home
//!   directory `useradd -m` is about to create (removed with its skeleton);
//! * `password-database`: `/etc/passwd`, `shadow`, `group`, `gshadow`, `subuid`, `subgid` and
//!   their `-` backups, as `file` records, before the first `useradd`/`groupadd`/`usermod` or
//!   entry edit (they change what they like in them: put back whole, under the lock);
//! * `hostname`: the kernel host name before `sethostname`;
//! * `net-before`: the links and addresses before the first live network change; `net`: each
//!   change (the link it touches, an address it adds, a route it puts in) before it is made;
//! * `rerun`: a program to run again after the files are back (`update-ca-certificates`);
//! * `after`: the services to restart or reload once the generation is in place.
//!
//! Every file is replaced atomically (temporary file, fsync, rename, fsync of the directory),
//! and the record of the applied generation (`applied.json`) is the last write of the
//! generation, so the journal and that record tell the truth together. When the apply ends,
//! committed or undone from memory, the journal is removed (and the directory fsynced).
//!
//! **Recovery** ([`recover`]) runs when the agent starts, before it answers anything, and
//! before every apply. A journal still there means an apply was interrupted:
//!
//! * if `applied.json` names the journal's generation, every change before that last write is
//!   in place: the generation is complete (**forward**), the services of its `after` record are
//!   restarted as the apply would have, and the journal goes;
//! * else everything is put back (**back**), newest first: files, directories, the host name
//!   and the live network (only in the boot that made the changes: a reboot reset the kernel's
//!   side, and the files it boots from are the ones put back), then the `rerun` programs; the
//!   temporary files of an interrupted atomic write next to every journaled path are removed.
//!   Every step is idempotent, so a recovery that is itself killed is simply run again.
//!
//! A record torn by a crash (only the last line can be) describes a change that was not made
//! yet, and is ignored. What a recovery cannot undo is reported and the journal is kept (the
//! next start or apply tries again; an apply is refused meanwhile).

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, under};
use crate::netapply::LiveRec;
use crate::txn::Before;
use crate::users::Passwd;

/// Where the journal is (under the root).
pub const JOURNAL_FILE: &str = "/var/lib/xenplug-agent/apply.journal";

/// The password-database files shadow-utils may rewrite (and their backups).
pub const PASSWORD_DATABASE: &[&str] = &[
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/gshadow",
    "/etc/subuid",
    "/etc/subgid",
    "/etc/passwd-",
    "/etc/shadow-",
    "/etc/group-",
    "/etc/gshadow-",
    "/etc/subuid-",
    "/etc/subgid-",
];

/// A link as it was before the first live change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LinkRec {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
}

/// An address as it was before the first live change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AddrRec {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
}

/// One live network change, recorded before it is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(crate) enum NetRec {
    /// A change to the link (rename, MTU, up/down, an address or route removed): the link is
    /// brought back to its `net-before` state.
    Touch,
    /// An address that was not there before.
    AddAddress { addr: IpAddr, prefix: u8 },
    /// A route put in (added or replaced).
    Route {
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
    },
}

/// What the previous generation was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Previous {
    pub instance_id: String,
    pub generation: u64,
}

/// Done once the generation is in place (restart, reload; see `apply::After`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "kebab-case")]
pub(crate) enum AfterRec {
    Restart {
        unit: String,
    },
    Reload {
        unit: String,
    },
    Network {
        renderer: crate::render::Renderer,
        ids: Vec<String>,
    },
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub(crate) enum Record {
    Begin {
        instance_id: String,
        generation: u64,
        boot_id: Option<String>,
        previous: Option<Previous>,
        previous_live: Vec<LiveRec>,
        /// The directories made for the journal (the agent's state directory and any missing
        /// parent), removed again (when empty) when the generation is undone.
        #[serde(default)]
        made_dirs: Vec<PathBuf>,
    },
    File {
        path: PathBuf,
        before: Before,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<Passwd>,
        /// A password-database file: restored under the lock.
        #[serde(default)]
        locked: bool,
    },
    Dir {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<Passwd>,
    },
    Tree {
        path: PathBuf,
    },
    Hostname {
        before: String,
    },
    NetBefore {
        links: Vec<LinkRec>,
        addrs: Vec<AddrRec>,
    },
    Net {
        index: u32,
        #[serde(flatten)]
        change: NetRec,
    },
    Rerun {
        program: String,
        args: Vec<String>,
    },
    After {
        after: Vec<AfterRec>,
    },
}

/// The kernel's boot id (a reboot resets the host name and the live network).
pub(crate) fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Fault injection for the crash tests: `XENPLUG_AGENT_CRASH_AT=before:N` (or `after:N`, with
/// `@G` to apply to the apply of generation G only) makes the agent SIGKILL itself right before
/// (after) writing its journal's record N (0: `begin`; one past the last: the journal's
/// removal); unit tests set a per-thread crash point that panics instead (the apply leaves what
/// it did in place either way: nothing undoes on unwinding).
mod crash {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};

    thread_local! {
        static POINT: Cell<Option<(bool, usize)>> = const { Cell::new(None) };
    }

    /// The generation being applied (for `@G`).
    static GENERATION: AtomicU64 = AtomicU64::new(0);

    pub(super) fn applying(generation: u64) {
        GENERATION.store(generation, Ordering::SeqCst);
    }

    /// (after, step) from the environment, when it applies to this generation.
    fn from_env() -> Option<(bool, usize)> {
        let v = std::env::var("XENPLUG_AGENT_CRASH_AT").ok()?;
        let (when, rest) = v.split_once(':')?;
        let (n, generation) = match rest.split_once('@') {
            Some((n, g)) => (n, Some(g.parse::<u64>().ok()?)),
            None => (rest, None),
        };
        if generation.is_some_and(|g| g != GENERATION.load(Ordering::SeqCst)) {
            return None;
        }
        Some((when == "after", n.parse().ok()?))
    }

    /// Set this thread's crash point (unit tests).
    #[cfg(test)]
    pub(crate) fn set(p: Option<(bool, usize)>) {
        POINT.with(|c| c.set(p));
    }

    /// Crash here if this is the point.
    pub(super) fn at(after: bool, step: usize) {
        if POINT.with(|c| c.get()) == Some((after, step)) {
            POINT.with(|c| c.set(None));
            panic!(
                "injected crash {} journal record {step}",
                if after { "after" } else { "before" }
            );
        }
        if from_env() == Some((after, step)) {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
pub(crate) use crash::set as set_crash_point;

/// The open journal of the apply under way.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    steps: usize,
    made_dirs: Vec<PathBuf>,
}

/// The journal, shared by the file transaction and the live-network journal of one apply.
pub type Shared = Arc<Mutex<Journal>>;

/// Append `r` to the journal, if there is one.
pub(crate) fn log(j: Option<&Shared>, r: Record) -> Result<()> {
    match j {
        Some(j) => j.lock().unwrap_or_else(|e| e.into_inner()).record(&r),
        None => Ok(()),
    }
}

impl Journal {
    /// Start the journal of an apply with its `begin` record (durable when this returns). The
    /// caller ran [`recover`] first: a journal still there is an error.
    pub(crate) fn create(root: &Path, mut begin: Record) -> Result<Shared> {
        if let Record::Begin { generation, .. } = &begin {
            crash::applying(*generation);
        }
        let path = under(root, JOURNAL_FILE);
        let dir = path
            .parent()
            .expect("the journal has a directory")
            .to_path_buf();
        // The agent's own state directory (kept once a generation is in place), and the
        // missing directories above it, outermost first.
        let mut made_dirs: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.is_dir())
            .map(Path::to_path_buf)
            .collect();
        made_dirs.reverse();
        for d in &made_dirs {
            fs::create_dir(d).with_context(|| format!("create {}", d.display()))?;
            if let Some(p) = d.parent() {
                fsutil::sync_dir(p)?;
            }
        }
        if let Record::Begin { made_dirs: m, .. } = &mut begin {
            m.clone_from(&made_dirs);
        }
        crash::at(false, 0);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        let mut j = Journal {
            file,
            path,
            steps: 0,
            made_dirs,
        };
        j.append(&begin)?;
        fsutil::sync_dir(&dir)?;
        crash::at(true, 0);
        j.steps = 1;
        Ok(Arc::new(Mutex::new(j)))
    }

    fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(r).expect("journal records serialize");
        line.push(b'\n');
        // One write(2) per record: a kill cannot tear it; a crash of the machine can tear
        // the last one only, which recovery ignores.
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("write {}", self.path.display()))
    }

    /// Append one record, durably, before the change it describes.
    pub(crate) fn record(&mut self, r: &Record) -> Result<()> {
        crash::at(false, self.steps);
        self.append(r)?;
        crash::at(true, self.steps);
        self.steps += 1;
        Ok(())
    }

    /// Append several records in one durable write (before the changes they describe).
    pub(crate) fn record_all(&mut self, rs: &[Record]) -> Result<()> {
        if rs.is_empty() {
            return Ok(());
        }
        crash::at(false, self.steps);
        let mut data = Vec::new();
        for r in rs {
            data.extend(serde_json::to_vec(r).expect("journal records serialize"));
            data.push(b'\n');
        }
        self.file
            .write_all(&data)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("write {}", self.path.display()))?;
        crash::at(true, self.steps);
        self.steps += 1;
        Ok(())
    }

    /// The apply is over (committed, or undone from memory when `undone`): remove the
    /// journal, durably (and the state directory it made, when the generation was undone and
    /// the directory is empty).
    pub(crate) fn finish(j: Shared, undone: bool) -> Result<()> {
        let (path, steps, made_dirs) = {
            let g = j.lock().unwrap_or_else(|e| e.into_inner());
            (g.path.clone(), g.steps, g.made_dirs.clone())
        };
        // The removal counts as the step after the last record (a kill here: the apply is
        // complete or undone, and the journal is still there).
        crash::at(false, steps);
        fsutil::remove_file(&path)?;
        if undone {
            remove_made_dirs(&made_dirs)?;
        }
        Ok(())
    }
}

/// The records of the journal under `root` (None: there is none). A last line that does not
/// parse was torn by a crash before its change was made, and is left out.
pub(crate) fn read(root: &Path) -> Result<Option<Vec<Record>>> {
    let path = under(root, JOURNAL_FILE);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(l) {
            Ok(r) => out.push(r),
            // The last line, without its newline: torn.
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => {
                return Err(anyhow!(
                    "{} line {}: {e} (not written by this agent?)",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    Ok(Some(out))
}

/// Remove the directories made for the journal (innermost first) when they are empty.
pub(crate) fn remove_made_dirs(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs.iter().rev() {
        crate::txn::remove_created_dir(d, None)?;
        if let Some(p) = d.parent() {
            fsutil::sync_dir(p)?;
        }
    }
    Ok(())
}

/// Is there an unfinished apply?
pub fn pending(root: &Path) -> bool {
    under(root, JOURNAL_FILE).exists()
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No journal: the last apply finished.
    Nothing,
    /// The interrupted generation was complete: kept (`instance`, `generation`).
    Forward(String, u64),
    /// The interrupted generation was undone: the previous one is in place (`instance`,
    /// `generation` of the undone one).
    Back(String, u64),
}

/// Base64 for file contents in the journal.
pub(crate) mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// Remove the temporary files of interrupted atomic writes next to every journaled path (the
/// agent is the only writer of those paths while it recovers). Returns what failed.
pub(crate) fn remove_temporaries(records: &[Record]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut done = std::collections::BTreeSet::new();
    for r in records {
        if let Record::File { path, .. } = r {
            if done.insert(path.clone()) {
                if let Err(e) = xenplug_atomic_write::remove_stale_temporaries(path) {
                    errors.push(format!("remove temporary files of {}: {e}", path.display()));
                }
            }
        }
    }
    errors
}

/// Undo an interrupted apply from its records, newest first, never stopping at the first
/// failure (see the module docs). Returns what could not be undone.
pub(crate) fn roll_back(
    root: &Path,
    records: &[Record],
    host: &mut dyn crate::apply::Host,
    mut net: Option<&mut dyn crate::net::NetOps>,
    tools: &mut dyn crate::tools::Tools,
) -> Vec<String> {
    let mut errors = Vec::new();
    let (same_boot, previous_live) = match records.first() {
        Some(Record::Begin {
            boot_id: b,
            previous_live,
            ..
        }) => (b.is_some() && *b == boot_id(), previous_live.clone()),
        _ => (false, Vec::new()),
    };
    // The password database is put back under its lock (which also waits for a shadow-utils
    // program the kill orphaned to finish).
    let _lock = if records
        .iter()
        .any(|r| matches!(r, Record::File { locked: true, .. }))
    {
        match crate::pwdlock::acquire(root, crate::pwdlock::LCKPWDF_TIMEOUT) {
            Ok(l) => Some(l),
            Err(e) => {
                errors.push(format!("{e:#}"));
                return errors;
            }
        }
    } else {
        None
    };
    // The live changes, newest first as met; restored in their order when `net-before` (the
    // first of them) is reached.
    let mut net_changes: Vec<(u32, NetRec)> = Vec::new();
    let mut reruns = Vec::new();
    for r in records.iter().rev() {
        let res = match r {
            Record::Begin { .. } | Record::After { .. } => Ok(()),
            Record::File {
                path, before, user, ..
            } => {
                let f = || {
                    before
                        .restore(path)
                        .with_context(|| format!("restore {}", path.display()))
                };
                match user {
                    Some(u) => crate::users::as_user(u, f),
                    None => f(),
                }
            }
            Record::Dir { path, user } => crate::txn::remove_created_dir(path, user.as_ref()),
            Record::Tree { path } => match fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(path)
                    .with_context(|| format!("remove {}", path.display()))
                    .and_then(|()| match path.parent() {
                        Some(p) => fsutil::sync_dir(p),
                        None => Ok(()),
                    }),
                _ => Ok(()),
            },
            Record::Hostname { before } if same_boot => host
                .set_hostname(before)
                .with_context(|| format!("restore the host name {before}")),
            Record::Hostname { .. } => Ok(()),
            Record::Net { index, change } => {
                net_changes.push((*index, change.clone()));
                Ok(())
            }
            Record::NetBefore { links, addrs } if same_boot => match net.as_deref_mut() {
                Some(n) => {
                    net_changes.reverse();
                    let mut j = crate::netapply::NetJournal::resume(n, links, addrs, &net_changes);
                    let e = j.restore(&previous_live);
                    net_changes.clear();
                    if e.is_empty() {
                        Ok(())
                    } else {
                        Err(anyhow!("{}", e.join("; ")))
                    }
                }
                None => Err(anyhow!(
                    "the live network changes were not undone (no access to the live network)"
                )),
            },
            Record::NetBefore { .. } => Ok(()),
            Record::Rerun { program, args } => {
                reruns.push((program.clone(), args.clone()));
                Ok(())
            }
        };
        if let Err(e) = res {
            errors.push(format!("{e:#}"));
        }
    }
    drop(_lock);
    // Derived state, from the files as they are back.
    reruns.dedup();
    for (program, args) in reruns {
        if crate::tools::find(root, &program).is_none() {
            continue;
        }
        if let Err(e) = crate::tools::in_guest_ok(tools, root, &program, &args) {
            errors.push(format!("{e:#}"));
        }
    }
    errors.extend(remove_temporaries(records));
    errors
}
