//! One generation, all or nothing: every change [`crate::apply`] makes to files goes through a
//! [`Txn`], which first records what it replaces, so that a failure part way through puts
//! every file back as it was (same bytes, mode and owner; a file that did not exist is removed
//! again, a directory the generation created is removed when it is empty again). Changes that
//! are not files (password-database entries edited under the lock, live network state, the
//! kernel host name) are undone by the code that made them, registered here as actions or kept
//! by the caller.
//!
//! Undo runs in reverse order and never stops at the first error: it does all it can and
//! reports every failure, so the caller can tell the host whether the previous generation is
//! whole again.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, Owner};
use crate::journal::{self, Record, Shared};
use crate::tools::Tools;
use crate::users::{self, Passwd};

/// What a path held before the transaction first touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Before {
    /// Nothing.
    Absent,
    /// A regular file.
    File {
        /// Content.
        #[serde(with = "journal::b64")]
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Owner.
        owner: Owner,
    },
    /// A symbolic link (to this target).
    Symlink {
        /// Where it points.
        target: PathBuf,
    },
}

impl Before {
    /// Read what `path` is now (as the caller's filesystem identity).
    pub fn read(path: &Path) -> Result<Before> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Before::Absent),
            Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let t = fs::read_link(path).with_context(|| format!("readlink {}", path.display()))?;
            Ok(Before::Symlink { target: t })
        } else if ft.is_file() {
            let data = fs::read(path).with_context(|| format!("read {}", path.display()))?;
            Ok(Before::File {
                data,
                mode: meta.mode() & 0o7777,
                owner: Owner {
                    uid: meta.uid(),
                    gid: meta.gid(),
                },
            })
        } else {
            anyhow::bail!(
                "{} is not a regular file or a symbolic link; not replacing it",
                path.display()
            )
        }
    }

    /// Put `path` back to this state (idempotent).
    pub(crate) fn restore(&self, path: &Path) -> Result<()> {
        match self {
            Before::Absent => fsutil::remove_file(path).map(drop),
            Before::File { data, mode, owner } => {
                fsutil::write_atomic(path, data, *mode, Some(*owner)).map(drop)
            }
            Before::Symlink { target } => {
                let dir = path.parent().context("a path without a parent")?;
                let tmp = dir.join(format!(
                    ".{}.xenplug-restore",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ));
                if fs::read_link(path).ok().as_deref() == Some(target.as_path()) {
                    return Ok(());
                }
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(target, &tmp)
                    .with_context(|| format!("symlink {}", tmp.display()))?;
                fs::rename(&tmp, path)
                    .with_context(|| format!("rename into {}", path.display()))?;
                fsutil::sync_dir(dir)
            }
        }
    }
}

type Action = Box<dyn FnOnce() -> Result<()> + Send>;
type ToolAction = Box<dyn FnOnce(&mut dyn Tools) -> Result<()> + Send>;

enum Undo {
    File {
        path: PathBuf,
        before: Before,
        user: Option<Passwd>,
    },
    Dir {
        path: PathBuf,
        user: Option<Passwd>,
    },
    Action {
        what: String,
        f: Action,
    },
    Tool {
        what: String,
        f: ToolAction,
    },
}

/// Remove a directory an interrupted or undone generation created, when it is empty (as
/// `user` when given). Gone is fine; one something else put a file in since is kept.
pub(crate) fn remove_created_dir(path: &Path, user: Option<&Passwd>) -> Result<()> {
    let f = || match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
    };
    match user {
        Some(u) => users::as_user(u, f),
        None => f(),
    }
}

/// The record of one generation's file changes (see the module docs).
#[derive(Default)]
pub struct Txn {
    undo: Vec<Undo>,
    seen: Vec<PathBuf>,
    /// The durable journal ([`crate::journal`]): every change is recorded there before it is
    /// made.
    journal: Option<Shared>,
    journal_seen: Vec<PathBuf>,
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("steps", &self.undo.len())
            .finish()
    }
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// A transaction that also writes every change's intent to `journal` before making it.
    pub fn journaled(journal: Shared) -> Txn {
        Txn {
            journal: Some(journal),
            ..Txn::default()
        }
    }

    /// The durable journal, if there is one.
    pub fn journal(&self) -> Option<&Shared> {
        self.journal.as_ref()
    }

    /// Record in the journal only (no undo from memory: the caller has its own) what each of
    /// `paths` holds now, once per path, in one durable append. `locked`: password-database
    /// files, restored under the lock.
    pub fn journal_before(&mut self, paths: &[PathBuf], locked: bool) -> Result<()> {
        let Some(j) = self.journal.clone() else {
            return Ok(());
        };
        let mut recs = Vec::new();
        for p in paths {
            if self.journal_seen.contains(p) {
                continue;
            }
            recs.push(Record::File {
                path: p.clone(),
                before: Before::read(p)?,
                user: None,
                locked,
            });
            self.journal_seen.push(p.clone());
        }
        let r = j
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_all(&recs);
        r
    }

    /// Record in the journal that a program is about to create the directory tree `path`
    /// (absent now), which a recovery removes with everything in it.
    pub fn journal_tree(&mut self, path: &Path) -> Result<()> {
        journal::log(
            self.journal.as_ref(),
            Record::Tree {
                path: path.to_path_buf(),
            },
        )
    }

    /// Number of recorded steps.
    pub fn len(&self) -> usize {
        self.undo.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }

    /// Record what `path` holds now, the first time the transaction touches it.
    fn remember(&mut self, path: &Path, user: Option<&Passwd>) -> Result<()> {
        if self.seen.iter().any(|p| p == path) {
            return Ok(());
        }
        let before = Before::read(path)?;
        journal::log(
            self.journal.as_ref(),
            Record::File {
                path: path.to_path_buf(),
                before: before.clone(),
                user: user.cloned(),
                locked: false,
            },
        )?;
        self.seen.push(path.to_path_buf());
        self.undo.push(Undo::File {
            path: path.to_path_buf(),
            before,
            user: user.cloned(),
        });
        Ok(())
    }

    /// [`fsutil::write_atomic`], recorded.
    pub fn write(
        &mut self,
        path: &Path,
        data: &[u8],
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<bool> {
        self.remember(path, None)?;
        fsutil::write_atomic(path, data, mode, owner)
    }

    /// [`fsutil::write_atomic`] of a file in `user`'s home, recorded; the caller runs as the user
    /// already ([`users::as_user`]), and the undo will too.
    pub fn write_as(
        &mut self,
        user: &Passwd,
        path: &Path,
        data: &[u8],
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<bool> {
        self.remember(path, Some(user))?;
        fsutil::write_atomic(path, data, mode, owner)
    }

    /// [`fsutil::remove_file`], recorded.
    pub fn remove(&mut self, path: &Path) -> Result<bool> {
        self.remember(path, None)?;
        fsutil::remove_file(path)
    }

    /// Make `path` a symbolic link to `target` (atomically: a new link renamed over it),
    /// recorded.
    pub fn symlink(&mut self, path: &Path, target: &Path) -> Result<()> {
        self.remember(path, None)?;
        Before::Symlink {
            target: target.to_path_buf(),
        }
        .restore(path)
    }

    /// `mkdir -p` with `mode` for the directories it creates (recorded, so the undo removes them
    /// again when they are empty).
    pub fn create_dir_all(&mut self, path: &Path, mode: u32) -> Result<()> {
        self.create_dirs(path, mode, None)
    }

    /// Create one directory as `user` (the caller runs as the user already); recorded.
    pub fn create_dir_as(&mut self, user: &Passwd, path: &Path, mode: u32) -> Result<()> {
        journal::log(
            self.journal.as_ref(),
            Record::Dir {
                path: path.to_path_buf(),
                user: Some(user.clone()),
            },
        )?;
        fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .with_context(|| format!("create {} as {}", path.display(), user.name))?;
        self.undo.push(Undo::Dir {
            path: path.to_path_buf(),
            user: Some(user.clone()),
        });
        Ok(())
    }

    fn create_dirs(&mut self, path: &Path, mode: u32, user: Option<&Passwd>) -> Result<()> {
        let mut missing = Vec::new();
        let mut p = Some(path);
        while let Some(d) = p {
            if d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        for d in missing.into_iter().rev() {
            journal::log(
                self.journal.as_ref(),
                Record::Dir {
                    path: d.clone(),
                    user: user.cloned(),
                },
            )?;
            match fs::DirBuilder::new().mode(mode).create(&d) {
                Ok(()) => self.undo.push(Undo::Dir {
                    path: d,
                    user: user.cloned(),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("create directory {}", d.display()))
                }
            }
        }
        Ok(())
    }

    /// Register an undo step that is not a file (e.g. password-database entries put back under
    /// the lock). `what` names it in error reports.
    pub fn on_rollback(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce() -> Result<()> + Send + 'static,
    ) {
        self.undo.push(Undo::Action {
            what: what.into(),
            f: Box::new(f),
        });
    }

    /// Register an undo step that runs one of the guest's programs (e.g. `userdel` for a
    /// `useradd`).
    pub fn on_rollback_run(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce(&mut dyn Tools) -> Result<()> + Send + 'static,
    ) {
        self.undo.push(Undo::Tool {
            what: what.into(),
            f: Box::new(f),
        });
    }

    /// The changes stay (the generation is in place).
    pub fn commit(self) {}

    /// Undo everything, newest first, running programs through `tools`. Returns what could not
    /// be undone (empty: all of it was).
    pub fn rollback(self, tools: &mut dyn Tools) -> Vec<String> {
        let mut errors = Vec::new();
        for u in self.undo.into_iter().rev() {
            let r = match u {
                Undo::File { path, before, user } => {
                    let f = || {
                        before
                            .restore(&path)
                            .with_context(|| format!("restore {}", path.display()))
                    };
                    match &user {
                        Some(u) => users::as_user(u, f),
                        None => f(),
                    }
                }
                Undo::Dir { path, user } => remove_created_dir(&path, user.as_ref()),
                Undo::Action { what, f } => f().with_context(|| format!("undo {what}")),
                Undo::Tool { what, f } => f(tools).with_context(|| format!("undo {what}")),
            };
            if let Err(e) = r {
                errors.push(format!("{e:#}"));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rollback_puts_every_file_back() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::write(r.join("kept"), "old\n").unwrap();
        fs::set_permissions(r.join("kept"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("kept", r.join("link")).unwrap();
        fs::write(r.join("gone"), "was here\n").unwrap();
        let mut t = Txn::new();
        t.write(&r.join("kept"), b"new\n", 0o644, None).unwrap();
        t.write(&r.join("kept"), b"newer\n", 0o644, None).unwrap();
        t.write(&r.join("link"), b"replaced the link\n", 0o644, None)
            .unwrap();
        t.create_dir_all(&r.join("a/b"), 0o755).unwrap();
        t.write(&r.join("a/b/new"), b"x", 0o600, None).unwrap();
        t.remove(&r.join("gone")).unwrap();
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f2 = flag.clone();
        t.on_rollback("flag", move || {
            f2.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        assert!(t.rollback(&mut crate::tools::RealTools).is_empty());
        assert_eq!(fs::read_to_string(r.join("kept")).unwrap(), "old\n");
        assert_eq!(fs::metadata(r.join("kept")).unwrap().mode() & 0o777, 0o640);
        assert_eq!(fs::read_link(r.join("link")).unwrap(), Path::new("kept"));
        assert_eq!(fs::read_to_string(r.join("gone")).unwrap(), "was here\n");
        assert!(!r.join("a").exists());
        assert!(flag.load(std::sync::atomic::Ordering::SeqCst));
        let mut names: Vec<_> = fs::read_dir(r)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["gone", "kept", "link"]);
    }

    #[test]
    fn undo_keeps_going_and_reports() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Txn::new();
        t.write(&d.path().join("f"), b"x", 0o644, None).unwrap();
        t.on_rollback("failing step", || anyhow::bail!("boom"));
        let errs = t.rollback(&mut crate::tools::RealTools);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("undo failing step: boom"), "{errs:?}");
        assert!(!d.path().join("f").exists());
    }
}
