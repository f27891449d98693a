//! `xenplug install --scripts-dir DIR [--uninstall]`: put every hotplug script name in place as a
//! symlink to this multi-call binary, keeping a backup of each file it replaces, and put the
//! backups back on uninstall.
//!
//! Replacing is atomic per name: the original is first hard-linked into the backup directory,
//! then a new symlink is renamed over it, so a toolstack that runs a script at that moment finds
//! either the old script or ours, never nothing. Backups live in `DIR/.xenplug-backup/`, with a
//! manifest of what was installed; an existing backup is never overwritten (a second install
//! keeps the original, not our own link). Every rename and link is made durable (fsync of the
//! directory) and the manifest is replaced with the workspace's one atomic write
//! (`xenplug_atomic_write`).

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// Where backups and the manifest go, inside the scripts directory.
pub const BACKUP_DIR: &str = ".xenplug-backup";
const MANIFEST: &str = "MANIFEST";

/// What happened to one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Installed; the file that was there is backed up.
    Replaced(String),
    /// Installed where nothing was.
    Created(String),
    /// Already our link.
    Unchanged(String),
    /// Uninstall: the backup is back.
    Restored(String),
    /// Uninstall: our link removed, there was nothing to restore.
    Removed(String),
    /// Uninstall: the name is no longer our link (someone replaced it): left alone.
    LeftAlone(String),
}

fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn is_link_to(path: &Path, binary: &Path) -> bool {
    match fs::read_link(path) {
        Ok(t) => {
            let t = if t.is_relative() {
                path.parent().unwrap_or(Path::new("/")).join(t)
            } else {
                t
            };
            t == binary || fs::canonicalize(&t).ok().as_deref() == Some(binary)
        }
        Err(_) => false,
    }
}

fn exists_no_follow(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Install `names` into `dir` as symlinks to `binary`.
pub fn install(dir: &Path, binary: &Path, names: &[&str]) -> io::Result<Vec<Step>> {
    let binary = fs::canonicalize(binary).map_err(|e| ctx(e, "resolving", binary))?;
    fs::create_dir_all(dir).map_err(|e| ctx(e, "creating", dir))?;
    let backup = dir.join(BACKUP_DIR);
    fs::create_dir_all(&backup).map_err(|e| ctx(e, "creating", &backup))?;
    let mut manifest = read_manifest(dir)?;
    let mut steps = Vec::new();
    for &name in names {
        let target = dir.join(name);
        if is_link_to(&target, &binary) {
            steps.push(Step::Unchanged(name.into()));
            if !manifest.iter().any(|n| n == name) {
                manifest.push(name.into());
            }
            continue;
        }
        let saved = backup.join(name);
        let had = exists_no_follow(&target);
        if had && !exists_no_follow(&saved) {
            fs::hard_link(&target, &saved).map_err(|e| ctx(e, "backing up", &target))?;
            xenplug_atomic_write::sync_dir(&backup)?;
        }
        let tmp = dir.join(format!(".{name}.xenplug-new"));
        let _ = fs::remove_file(&tmp);
        symlink(&binary, &tmp).map_err(|e| ctx(e, "creating", &tmp))?;
        fs::rename(&tmp, &target).map_err(|e| ctx(e, "replacing", &target))?;
        xenplug_atomic_write::sync_dir(dir)?;
        if !manifest.iter().any(|n| n == name) {
            manifest.push(name.into());
        }
        steps.push(if had {
            Step::Replaced(name.into())
        } else {
            Step::Created(name.into())
        });
    }
    write_manifest(dir, &manifest)?;
    Ok(steps)
}

/// Undo [`install`]: restore backups of the names in the manifest (or `names`, if no manifest).
pub fn uninstall(dir: &Path, binary: &Path, names: &[&str]) -> io::Result<Vec<Step>> {
    let binary = fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    let backup = dir.join(BACKUP_DIR);
    let mut manifest = read_manifest(dir)?;
    if manifest.is_empty() {
        manifest = names.iter().map(|s| s.to_string()).collect();
    }
    let mut steps = Vec::new();
    for name in &manifest {
        let target = dir.join(name);
        let saved = backup.join(name);
        let ours = is_link_to(&target, &binary)
            || fs::read_link(&target)
                .ok()
                .and_then(|t| t.file_name().map(|f| f == "xenplug"))
                .unwrap_or(false);
        if !ours {
            if exists_no_follow(&saved) {
                // Keep the backup: the name belongs to someone else now.
                steps.push(Step::LeftAlone(name.clone()));
            } else if !exists_no_follow(&target) {
                steps.push(Step::Removed(name.clone()));
            } else {
                steps.push(Step::LeftAlone(name.clone()));
            }
            continue;
        }
        if exists_no_follow(&saved) {
            fs::rename(&saved, &target).map_err(|e| ctx(e, "restoring", &target))?;
            xenplug_atomic_write::sync_dir(dir)?;
            steps.push(Step::Restored(name.clone()));
        } else {
            fs::remove_file(&target).map_err(|e| ctx(e, "removing", &target))?;
            steps.push(Step::Removed(name.clone()));
        }
    }
    let left: Vec<String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::LeftAlone(n) if exists_no_follow(&backup.join(n)) => Some(n.clone()),
            _ => None,
        })
        .collect();
    if left.is_empty() {
        let _ = fs::remove_file(backup.join(MANIFEST));
        let _ = fs::remove_dir(&backup);
    } else {
        write_manifest(dir, &left)?;
    }
    Ok(steps)
}

fn read_manifest(dir: &Path) -> io::Result<Vec<String>> {
    let p = dir.join(BACKUP_DIR).join(MANIFEST);
    match fs::read_to_string(&p) {
        Ok(s) => Ok(s
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ctx(e, "reading", &p)),
    }
}

fn write_manifest(dir: &Path, names: &[String]) -> io::Result<()> {
    let backup = dir.join(BACKUP_DIR);
    fs::create_dir_all(&backup).map_err(|e| ctx(e, "creating", &backup))?;
    let p = backup.join(MANIFEST);
    let mut text = String::from(
        "# names installed by `xenplug install`; backups of replaced files are beside this file\n",
    );
    for n in names {
        text.push_str(n);
        text.push('\n');
    }
    xenplug_atomic_write::write(&p, text.as_bytes(), 0o644, None).map_err(|e| ctx(e, "writing", &p))
}

/// The default binary to link to: this executable.
pub fn current_binary() -> io::Result<PathBuf> {
    std::env::current_exe()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("xenplug");
        fs::write(&bin, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let dir = t.path().join("scripts");
        fs::create_dir(&dir).unwrap();
        (t, bin, dir)
    }

    #[test]
    fn install_backs_up_and_uninstall_restores() {
        let (_t, bin, dir) = setup();
        fs::write(dir.join("block"), "original block").unwrap();
        fs::write(dir.join("block-common.sh"), "untouched").unwrap();
        let steps = install(&dir, &bin, &["block", "vif-bridge"]).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Replaced("block".into()),
                Step::Created("vif-bridge".into())
            ]
        );
        let canon = fs::canonicalize(&bin).unwrap();
        assert_eq!(fs::read_link(dir.join("block")).unwrap(), canon);
        assert_eq!(fs::read_link(dir.join("vif-bridge")).unwrap(), canon);
        assert_eq!(
            fs::read_to_string(dir.join(BACKUP_DIR).join("block")).unwrap(),
            "original block"
        );
        // A second install changes nothing and keeps the original backup.
        let steps = install(&dir, &bin, &["block", "vif-bridge"]).unwrap();
        assert!(steps.iter().all(|s| matches!(s, Step::Unchanged(_))));
        assert_eq!(
            fs::read_to_string(dir.join(BACKUP_DIR).join("block")).unwrap(),
            "original block"
        );
        let steps = uninstall(&dir, &bin, &[]).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Restored("block".into()),
                Step::Removed("vif-bridge".into())
            ]
        );
        assert_eq!(
            fs::read_to_string(dir.join("block")).unwrap(),
            "original block"
        );
        assert!(!dir.join("vif-bridge").exists());
        assert!(!dir.join(BACKUP_DIR).exists());
        assert_eq!(
            fs::read_to_string(dir.join("block-common.sh")).unwrap(),
            "untouched"
        );
    }

    #[test]
    fn uninstall_leaves_names_someone_else_replaced() {
        let (_t, bin, dir) = setup();
        fs::write(dir.join("block"), "original").unwrap();
        install(&dir, &bin, &["block"]).unwrap();
        fs::remove_file(dir.join("block")).unwrap();
        fs::write(dir.join("block"), "package upgrade").unwrap();
        let steps = uninstall(&dir, &bin, &[]).unwrap();
        assert_eq!(steps, vec![Step::LeftAlone("block".into())]);
        assert_eq!(
            fs::read_to_string(dir.join("block")).unwrap(),
            "package upgrade"
        );
        // The backup of the original is kept for the operator.
        assert!(dir.join(BACKUP_DIR).join("block").exists());
    }

    #[test]
    fn install_replaces_symlinks_without_following_them() {
        let (t, bin, dir) = setup();
        let elsewhere = t.path().join("elsewhere");
        fs::write(&elsewhere, "other").unwrap();
        symlink(&elsewhere, dir.join("vif-route")).unwrap();
        install(&dir, &bin, &["vif-route"]).unwrap();
        assert_eq!(
            fs::read_link(dir.join(BACKUP_DIR).join("vif-route")).unwrap(),
            elsewhere
        );
        uninstall(&dir, &bin, &[]).unwrap();
        assert_eq!(fs::read_link(dir.join("vif-route")).unwrap(), elsewhere);
        assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "other");
    }
}
