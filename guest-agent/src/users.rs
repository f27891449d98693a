//! Users: lookup in `<root>/etc/passwd`, authorized_keys edits with privileges dropped to the
//! user, and /etc/shadow updates under the shadow-utils lock.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::fsutil::{self, under, Owner};
use crate::pwdlock;
use crate::txn::Txn;

/// A passwd entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Passwd {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory as written in passwd (absolute, not yet under the root).
    pub home: String,
}

/// Find `name` in `<root>/etc/passwd`.
pub fn lookup(root: &Path, name: &str) -> Result<Passwd> {
    let path = under(root, "/etc/passwd");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 7 && f[0] == name {
            let uid = f[2]
                .parse()
                .with_context(|| format!("uid of {name} in {}", path.display()))?;
            let gid = f[3]
                .parse()
                .with_context(|| format!("gid of {name} in {}", path.display()))?;
            return Ok(Passwd {
                name: name.to_string(),
                uid,
                gid,
                home: f[5].to_string(),
            });
        }
    }
    bail!("user '{name}' does not exist")
}

/// Runs `f` with the filesystem uid/gid of `user` (setfsuid/setfsgid: per thread, undone
/// afterwards), so a user-controlled symlink under the home directory can never make a root
/// write land elsewhere, and new files belong to the user.
pub fn as_user<T>(user: &Passwd, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !nix::unistd::geteuid().is_root() {
        // Unprivileged (tests without root): we can only act as ourselves anyway.
        return f();
    }
    /// Gives the thread its identity back, also when `f` unwinds.
    struct Back(nix::unistd::Uid, nix::unistd::Gid);
    impl Drop for Back {
        fn drop(&mut self) {
            nix::unistd::setfsuid(self.0);
            nix::unistd::setfsgid(self.1);
        }
    }
    let old_gid = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(user.gid));
    let old_uid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(user.uid));
    let _back = Back(old_uid, old_gid);
    f()
}

/// Marker lines around the keys the agent manages in authorized_keys.
pub const KEYS_BEGIN: &str = "# BEGIN xenplug-agent managed keys (do not edit inside this block)";
/// End marker.
pub const KEYS_END: &str = "# END xenplug-agent managed keys";

fn ssh_paths(root: &Path, user: &Passwd) -> (PathBuf, PathBuf) {
    let ssh = under(root, &user.home).join(".ssh");
    let keys = ssh.join("authorized_keys");
    (ssh, keys)
}

fn ensure_ssh_dir(dir: &Path, user: &Passwd, txn: &mut Txn) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => {
            if m.uid() != user.uid {
                bail!("{} is not owned by {}", dir.display(), user.name);
            }
            Ok(())
        }
        Ok(_) => bail!("{} exists and is not a directory", dir.display()),
        Err(_) => txn.create_dir_as(user, dir, 0o700),
    }
}

/// The user's authorized_keys lines (comments and blank lines dropped); an error when the file
/// does not exist, as qemu-ga.
pub fn read_keys(root: &Path, user: &Passwd) -> Result<Vec<String>> {
    let (_, keys) = ssh_paths(root, user);
    as_user(user, || match fs::read_to_string(&keys) {
        Ok(t) => Ok(t
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()),
        // As qemu-ga: a missing file is an error ("failed to read …").
        Err(e) => Err(e).with_context(|| format!("failed to read '{}'", keys.display())),
    })
}

/// Rewrite the user's authorized_keys with `edit(old text) -> new text`, as the user,
/// atomically, mode 0600, in a 0700 `.ssh`. Returns whether the file changed.
pub fn edit_keys(root: &Path, user: &Passwd, edit: impl FnOnce(&str) -> String) -> Result<bool> {
    let mut txn = Txn::new();
    let r = edit_keys_in(&mut txn, root, user, edit);
    txn.commit();
    r
}

/// [`edit_keys`] as part of a generation's transaction.
pub fn edit_keys_in(
    txn: &mut Txn,
    root: &Path,
    user: &Passwd,
    edit: impl FnOnce(&str) -> String,
) -> Result<bool> {
    let (ssh, keys) = ssh_paths(root, user);
    let home = under(root, &user.home);
    if !home.is_dir() {
        bail!(
            "home directory {} of {} does not exist",
            home.display(),
            user.name
        );
    }
    as_user(user, || {
        ensure_ssh_dir(&ssh, user, txn)?;
        let old = match fs::read_to_string(&keys) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("read {}", keys.display())),
        };
        let new = edit(&old);
        if new == old && keys.exists() {
            return Ok(false);
        }
        // Files created with the fs uid/gid already belong to the user; chown is then a
        // no-op that an unprivileged fsuid is allowed to do.
        txn.write_as(
            user,
            &keys,
            new.as_bytes(),
            0o600,
            Some(Owner {
                uid: user.uid,
                gid: user.gid,
            }),
        )
    })
}

/// Hold the password-database lock (as `lckpwdf`: see [`crate::pwdlock`]) for the duration of
/// `f`, waiting at most `limit` for it.
pub fn with_pwd_lock<T>(root: &Path, limit: Duration, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let lock = pwdlock::acquire(root, limit)?;
    let r = f();
    drop(lock);
    r
}

/// A password change for [`update_shadow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowChange {
    /// User.
    pub name: String,
    /// New hash, if any.
    pub hash: Option<String>,
    /// Lock (`!` prefix) or unlock; None leaves the lock state (a new `hash` is unlocked, as
    /// `chpasswd -e` leaves it).
    pub lock: Option<bool>,
}

/// Apply password changes to `<root>/etc/shadow` in one atomic replacement (mode and owner
/// kept; last-change date set). Returns the users whose entry changed.
pub fn update_shadow(root: &Path, changes: &[ShadowChange]) -> Result<Vec<String>> {
    update_shadow_within(root, changes, pwdlock::LCKPWDF_TIMEOUT)
}

/// [`update_shadow`], waiting at most `limit` for the password-database lock.
pub fn update_shadow_within(
    root: &Path,
    changes: &[ShadowChange],
    limit: Duration,
) -> Result<Vec<String>> {
    let mut txn = Txn::new();
    let r = update_shadow_in(&mut txn, root, changes, limit);
    txn.commit();
    r
}

/// [`update_shadow`] as part of a generation's transaction: the undo puts back the old entries
/// of the changed users (under the lock again), leaving whatever else changed since alone.
pub fn update_shadow_in(
    txn: &mut Txn,
    root: &Path,
    changes: &[ShadowChange],
    limit: Duration,
) -> Result<Vec<String>> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let path = under(root, "/etc/shadow");
    let (changed, old_lines) = with_pwd_lock(root, limit, || {
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / 86400)
            .unwrap_or(0);
        let mut changed = Vec::new();
        let mut old_lines = Vec::new();
        let mut found = std::collections::BTreeSet::new();
        let mut out = String::with_capacity(text.len() + 128);
        for line in text.split_inclusive('\n') {
            let bare = line.trim_end_matches('\n');
            let mut f: Vec<String> = bare.split(':').map(str::to_string).collect();
            let Some(c) = changes.iter().find(|c| f.len() >= 3 && f[0] == c.name) else {
                out.push_str(line);
                continue;
            };
            found.insert(c.name.clone());
            let before = f.clone();
            // A new hash replaces the whole field, lock included (as `chpasswd -e`); then
            // the lock is applied (as `passwd -l`/`-u`).
            let locked = f[1].starts_with('!') && c.hash.is_none();
            let mut pw = f[1].trim_start_matches('!').to_string();
            if let Some(h) = &c.hash {
                pw = h.clone();
            }
            let lock = c.lock.unwrap_or(locked);
            f[1] = if lock { format!("!{pw}") } else { pw };
            if f[1] != before[1] {
                // A new password counts as a change (chpasswd); locking alone does not
                // (passwd -l).
                if c.hash
                    .as_deref()
                    .is_some_and(|h| h != before[1].trim_start_matches('!'))
                {
                    f[2] = today.to_string();
                }
                changed.push(c.name.clone());
                old_lines.push((c.name.clone(), bare.to_string()));
            } else {
                f = before;
            }
            out.push_str(&f.join(":"));
            if line.ends_with('\n') {
                out.push('\n');
            }
        }
        for c in changes {
            if !found.contains(&c.name) {
                bail!("user '{}' has no entry in {}", c.name, path.display());
            }
        }
        if !changed.is_empty() {
            let (mode, owner) =
                fsutil::mode_owner(&path).unwrap_or((0o640, Owner { uid: 0, gid: 0 }));
            fsutil::write_atomic(&path, out.as_bytes(), mode, Some(owner))?;
        }
        Ok((changed, old_lines))
    })?;
    if !old_lines.is_empty() {
        let root = root.to_path_buf();
        txn.on_rollback("/etc/shadow entries", move || {
            restore_entries(&root, "/etc/shadow", &old_lines, limit)
        });
    }
    Ok(changed)
}

/// Expire the passwords of `names` (`passwd --expire`: the last change set to 0, so the user
/// must pick a new password at the next login), as part of a generation's transaction.
pub fn expire_passwords_in(
    txn: &mut Txn,
    root: &Path,
    names: &[String],
    limit: Duration,
) -> Result<Vec<String>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let path = under(root, "/etc/shadow");
    let (changed, old_lines) = with_pwd_lock(root, limit, || {
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let mut changed = Vec::new();
        let mut old_lines = Vec::new();
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            let bare = line.trim_end_matches('\n');
            let mut f: Vec<&str> = bare.split(':').collect();
            if f.len() >= 3 && names.iter().any(|n| n == f[0]) && f[2] != "0" {
                old_lines.push((f[0].to_string(), bare.to_string()));
                changed.push(f[0].to_string());
                f[2] = "0";
                out.push_str(&f.join(":"));
                if line.ends_with('\n') {
                    out.push('\n');
                }
            } else {
                out.push_str(line);
            }
        }
        for n in names {
            if !text
                .lines()
                .any(|l| l.split(':').next() == Some(n.as_str()))
            {
                bail!("user '{n}' has no entry in {}", path.display());
            }
        }
        if !changed.is_empty() {
            let (mode, owner) =
                fsutil::mode_owner(&path).unwrap_or((0o640, Owner { uid: 0, gid: 0 }));
            fsutil::write_atomic(&path, out.as_bytes(), mode, Some(owner))?;
        }
        Ok((changed, old_lines))
    })?;
    if !old_lines.is_empty() {
        let root = root.to_path_buf();
        txn.on_rollback("/etc/shadow expiry", move || {
            restore_entries(&root, "/etc/shadow", &old_lines, limit)
        });
    }
    Ok(changed)
}

/// Put back the lines of the named entries in a password-database file (passwd, group,
/// shadow, gshadow), under the lock: each `(name, line)` replaces the entry of that name, or is
/// appended if the entry is gone; `(name, "")` removes the entry. Other entries are kept as
/// they are now.
pub fn restore_entries(
    root: &Path,
    file: &str,
    entries: &[(String, String)],
    limit: Duration,
) -> Result<()> {
    let path = under(root, file);
    with_pwd_lock(root, limit, || {
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let mut done = std::collections::BTreeSet::new();
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            let name = line.split(':').next().unwrap_or("");
            match entries.iter().find(|(n, _)| n == name) {
                Some((n, old)) => {
                    done.insert(n.clone());
                    if !old.is_empty() {
                        out.push_str(old);
                        out.push('\n');
                    }
                }
                None => out.push_str(line),
            }
        }
        for (n, old) in entries {
            if !done.contains(n) && !old.is_empty() {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(old);
                out.push('\n');
            }
        }
        let (mode, owner) = fsutil::mode_owner(&path).unwrap_or((0o640, Owner { uid: 0, gid: 0 }));
        fsutil::write_atomic(&path, out.as_bytes(), mode, Some(owner)).map(drop)
    })
}

/// Hash a plain-text password with SHA-512 crypt (`$6$`).
pub fn hash_password(plain: &str) -> Result<String> {
    sha_crypt::sha512_simple(plain, &sha_crypt::Sha512Params::default())
        .map_err(|e| anyhow!("hash password: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_update() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/shadow"),
            "root:*:19000:0:99999:7:::\nbob:!:19000:0:99999:7:::\n",
        )
        .unwrap();
        let ch = update_shadow(
            d.path(),
            &[ShadowChange {
                name: "bob".into(),
                hash: Some("$6$s$h".into()),
                lock: Some(false),
            }],
        )
        .unwrap();
        assert_eq!(ch, vec!["bob".to_string()]);
        let t = fs::read_to_string(d.path().join("etc/shadow")).unwrap();
        assert!(t.starts_with("root:*:19000:0:99999:7:::\nbob:$6$s$h:"));
        // Same again: no change.
        let ch = update_shadow(
            d.path(),
            &[ShadowChange {
                name: "bob".into(),
                hash: Some("$6$s$h".into()),
                lock: None,
            }],
        )
        .unwrap();
        assert!(ch.is_empty());
        assert!(update_shadow(
            d.path(),
            &[ShadowChange {
                name: "eve".into(),
                hash: None,
                lock: Some(true)
            }]
        )
        .is_err());
    }

    #[test]
    fn hash_is_sha512_crypt() {
        let h = hash_password("secret").unwrap();
        assert!(h.starts_with("$6$"), "{h}");
        assert!(sha_crypt::sha512_check("secret", &h).is_ok());
    }
}
