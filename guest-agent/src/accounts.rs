//! Groups, users, sudo rules, SSH keys and passwords with cloud-init's meanings
//! (`cc_users_groups`, `cc_ssh`, `cc_set_passwords`):
//!
//! * `groups` are created first (`groupadd`), then their members added (`usermod -aG`) if they
//!   exist at that point — a member created later is not added, as in cloud-init.
//! * A user that does not exist is created with `useradd` from the creation keys (missing
//!   `groups` and `primary_group` created first unless `create_groups: false`; home with `-m`
//!   unless `system` or `no_create_home`). An existing user gets only what cloud-init gives
//!   existing users: `hashed_passwd`, `lock_passwd`, sudo rules and keys.
//! * `default` is the image's default user from the agent's configuration (`[default-user]`),
//!   its groups merged with the entry's, the entry's other keys taking priority.
//! * sudo rules of every user go to `/etc/sudoers.d/90-xenplug-agent-users` (0440), checked
//!   with the guest's `visudo -c` when it has one, and `/etc/sudoers` gets an `#includedir` if
//!   it lacks one.
//! * Keys: each user's keys in the agent's block of its `authorized_keys`; the top-level keys
//!   go to the default user, and to root: behind cloud-init's "Please login as the user …"
//!   command with `disable_root`, as they are without.
//! * `chpasswd`: hashes set, random passwords made and printed on the console, `expire`
//!   (last change = 0, as `passwd --expire`).
//!
//! **Why shadow-utils and not our own file edits:** measured on a Debian 12 tree (`useradd -R`,
//! 20 users with home and skeleton: 11 ms each; 20 system users: 9 ms; `groupadd`: 5 ms), the
//! programs cost nothing that matters at first boot, and they are what cloud-init runs, so the
//! result is the same by construction: UID/GID allocation from `login.defs` (system ranges
//! counted down), user private groups (`USERGROUPS_ENAB`), subordinate ID ranges, the
//! skeleton, `HOME_MODE`/`UMASK`, the `lastlog`/`faillog` entries, SELinux labels, nscd/sssd
//! cache flushes and audit records. Editing the files ourselves would have to re-implement all
//! of that and would drift. They lock the password database themselves (`lckpwdf`); the agent's
//! own entry edits (passwords, locks, expiry) take the same lock ([`crate::pwdlock`]). Every
//! creation is undone with its inverse (`userdel`, `groupdel`, `gpasswd -d`) if the generation
//! fails.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use xenplug_channel::config::{ConfigDoc, User};

use crate::apply::{log_event, Run};
use crate::fsutil::{self, under};
use crate::pwdlock::LCKPWDF_TIMEOUT;
use crate::tools;
use crate::users::{self, Passwd};

/// cloud-init's `DISABLE_USER_OPTS`: what root's keys get with `disable_root`.
pub const DISABLE_ROOT_OPTS: &str = "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"echo 'Please login as the user \\\"$USER\\\" rather than the user \\\"$DISABLE_USER\\\".';echo;sleep 10;exit 142\"";

/// The agent's sudoers file.
pub const SUDOERS_FILE: &str = "/etc/sudoers.d/90-xenplug-agent-users";

/// Group names in `<root>/etc/group`, with their members.
fn groups_of(root: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let p = under(root, "/etc/group");
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", p.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then(|| {
                (
                    f[0].to_string(),
                    f[3].split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            })
        })
        .collect())
}

fn group_exists(root: &Path, name: &str) -> Result<bool> {
    Ok(groups_of(root)?.iter().any(|(g, _)| g == name))
}

fn user_exists(root: &Path, name: &str) -> bool {
    users::lookup(root, name).is_ok()
}

/// The users of the document with the default user resolved (see the module docs), in the
/// document's order; the default user's name if there is one.
pub(crate) fn resolve_users(
    doc: &ConfigDoc,
    default_user: Option<&User>,
    changes: &mut Vec<String>,
) -> (Vec<User>, Option<String>) {
    let mut out = Vec::new();
    let mut default_name = None;
    for u in &doc.users {
        if !u.default {
            out.push(u.clone());
            continue;
        }
        let Some(base) = default_user else {
            changes.push(
                "no default user in the agent's configuration: the default user entry is skipped"
                    .into(),
            );
            continue;
        };
        let mut m = base.clone();
        m.default = false;
        if !u.name.is_empty() {
            m.name = u.name.clone();
        }
        // The entry's keys take priority; groups are merged and sorted, as cloud-init does.
        let mut groups: BTreeSet<String> = base.groups.iter().cloned().collect();
        groups.extend(u.groups.iter().cloned());
        m.groups = groups.into_iter().collect();
        macro_rules! take {
            ($($f:ident),*) => {$( if u.$f.is_some() { m.$f = u.$f.clone(); } )*};
        }
        take!(
            hashed_passwd,
            lock_passwd,
            gecos,
            homedir,
            primary_group,
            shell,
            system,
            uid,
            no_create_home,
            no_user_group,
            no_log_init,
            create_groups,
            passwd,
            expiredate,
            inactive
        );
        if !u.sudo.is_empty() {
            m.sudo = u.sudo.clone();
        }
        m.ssh_authorized_keys
            .extend(u.ssh_authorized_keys.iter().cloned());
        default_name = Some(m.name.clone());
        out.push(m);
    }
    (out, default_name)
}

/// Record the whole password database in the journal before the first change to it: a
/// recovery after a kill puts the files back as they were (shadow-utils programs rewrite what
/// they like in them, and a killed agent cannot run their inverses reliably).
pub(crate) fn journal_password_database(run: &mut Run<'_, '_>) -> Result<()> {
    let paths: Vec<PathBuf> = crate::journal::PASSWORD_DATABASE
        .iter()
        .map(|p| under(run.root, p))
        .collect();
    run.txn.journal_before(&paths, true)
}

fn add_group(run: &mut Run<'_, '_>, name: &str, why: &str) -> Result<()> {
    tools::shadow(run.tools, run.root, "groupadd", &[name.to_string()])
        .with_context(|| format!("create group {name}"))?;
    let root = run.root.to_path_buf();
    let n = name.to_string();
    run.undo_tool(format!("group {name}"), move |t| {
        tools::shadow(t, &root, "groupdel", std::slice::from_ref(&n))
    });
    run.changes.push(format!("group {name} created{why}"));
    log_event("group-created", &[("group", name)]);
    Ok(())
}

fn add_member(run: &mut Run<'_, '_>, group: &str, user: &str) -> Result<()> {
    tools::shadow(
        run.tools,
        run.root,
        "usermod",
        &["-a".into(), "-G".into(), group.into(), user.into()],
    )
    .with_context(|| format!("add {user} to {group}"))?;
    let root = run.root.to_path_buf();
    let (g, u) = (group.to_string(), user.to_string());
    run.undo_tool(format!("membership of {user} in {group}"), move |t| {
        tools::shadow(t, &root, "gpasswd", &["-d".into(), u.clone(), g.clone()])
    });
    run.changes
        .push(format!("user {user} added to group {group}"));
    Ok(())
}

/// `useradd` for a user that does not exist (the arguments cloud-init's `add_user` passes).
fn create_user(run: &mut Run<'_, '_>, u: &User, at: &str) -> Result<()> {
    let mut groups = u.groups.clone();
    if let Some(p) = &u.primary_group {
        if !groups.contains(p) {
            groups.push(p.clone());
        }
    }
    if u.create_groups != Some(false) {
        for g in &groups {
            if !group_exists(run.root, g)? {
                add_group(run, g, &format!(" for user {}", u.name))
                    .with_context(|| at.to_string())?;
            }
        }
    }
    let mut a: Vec<String> = Vec::new();
    let mut opt = |flag: &str, v: &Option<String>| {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            a.push(flag.into());
            a.push(v.clone());
        }
    };
    opt("--comment", &u.gecos);
    opt("--home", &u.homedir);
    opt("--gid", &u.primary_group);
    opt("--uid", &u.uid.map(|x| x.to_string()));
    opt("--password", &u.passwd);
    opt("--shell", &u.shell);
    opt("--expiredate", &u.expiredate);
    opt("--inactive", &u.inactive);
    if !u.groups.is_empty() {
        a.push("--groups".into());
        a.push(u.groups.join(","));
    }
    if u.no_user_group == Some(true) {
        a.push("--no-user-group".into());
    }
    if u.system == Some(true) {
        a.push("--system".into());
    }
    if u.no_log_init == Some(true) {
        a.push("--no-log-init".into());
    }
    let home = !(u.no_create_home == Some(true) || u.system == Some(true));
    a.push(if home { "-m" } else { "-M" }.into());
    a.push(u.name.clone());
    // What useradd creates besides the database, for a recovery after a kill: the home
    // directory (absent now) and the mail spool.
    if home {
        let dir = under(run.root, &home_of(run.root, u));
        if fs::symlink_metadata(&dir).is_err() {
            run.txn.journal_tree(&dir)?;
        }
    }
    let spools: Vec<PathBuf> = ["/var/mail", "/var/spool/mail"]
        .iter()
        .map(|d| under(run.root, &format!("{d}/{}", u.name)))
        .collect();
    run.txn.journal_before(&spools, false)?;
    tools::shadow(run.tools, run.root, "useradd", &a)
        .with_context(|| format!("{at}: create user {}", u.name))?;
    let root = run.root.to_path_buf();
    let name = u.name.clone();
    run.undo_tool(format!("user {name}"), move |t| {
        let mut args = Vec::new();
        if home {
            args.push("--remove".to_string());
        }
        args.push(name.clone());
        tools::shadow(t, &root, "userdel", &args)
    });
    run.changes.push(format!("user {} created", u.name));
    log_event("user-created", &[("user", &u.name)]);
    Ok(())
}

/// The home directory useradd gives `u`: its `homedir`, else `HOME` of the guest's
/// `/etc/default/useradd` (default `/home`) and the name.
fn home_of(root: &Path, u: &User) -> String {
    if let Some(h) = u.homedir.as_ref().filter(|h| !h.is_empty()) {
        return h.clone();
    }
    let base = fs::read_to_string(under(root, "/etc/default/useradd"))
        .ok()
        .and_then(|t| {
            t.lines()
                .filter_map(|l| l.trim().strip_prefix("HOME="))
                .next_back()
                .map(|v| v.trim().trim_matches('"').to_string())
        })
        .filter(|v| v.starts_with('/'))
        .unwrap_or_else(|| "/home".into());
    format!("{}/{}", base.trim_end_matches('/'), u.name)
}

/// `/etc/sudoers` must include `/etc/sudoers.d` (cloud-init's `ensure_sudo_dir`).
fn ensure_sudo_dir(run: &mut Run<'_, '_>) -> Result<()> {
    let p = under(run.root, "/etc/sudoers");
    let text = match fs::read_to_string(&p) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", p.display())),
    };
    let included = text.as_deref().is_some_and(|t| {
        t.lines().any(|l| {
            let l = l.trim();
            (l.starts_with("#includedir") || l.starts_with("@includedir"))
                && l.split_whitespace().nth(1) == Some("/etc/sudoers.d")
        })
    });
    if !included {
        let mut new = text.unwrap_or_default();
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str("\n# Added by xenplug-agent.\n#includedir /etc/sudoers.d\n");
        run.write_changed(&p, &new, 0o440)?;
    }
    run.txn
        .create_dir_all(&under(run.root, "/etc/sudoers.d"), 0o750)
}

/// The agent's sudoers file for these users' rules (None: no rules).
pub fn render_sudoers(users: &[User]) -> Result<Option<String>> {
    let mut s =
        String::from("# Written by xenplug-agent; replaced on every configuration change.\n");
    let mut any = false;
    for u in users.iter().filter(|u| !u.sudo.is_empty()) {
        xenplug_channel::config::validate_username(&u.name).map_err(|e| anyhow!(e))?;
        s.push_str(&format!("\n# User rules for {}\n", u.name));
        for r in &u.sudo {
            xenplug_channel::config::validate_sudo_rule(r)
                .map_err(|e| anyhow!("sudo rule of {}: {e}", u.name))?;
            s.push_str(&format!("{} {}\n", u.name, r.trim()));
            any = true;
        }
    }
    Ok(any.then_some(s))
}

fn write_sudoers(run: &mut Run<'_, '_>, users: &[User]) -> Result<()> {
    let path = under(run.root, SUDOERS_FILE);
    match render_sudoers(users)? {
        None => {
            if run.txn.remove(&path)? {
                run.changes.push(format!("removed {SUDOERS_FILE}"));
            }
        }
        Some(text) => {
            ensure_sudo_dir(run)?;
            run.write_changed(&path, &text, 0o440)?;
            if tools::find(run.root, "visudo").is_some() {
                let out = tools::in_guest(
                    run.tools,
                    run.root,
                    "visudo",
                    &["-c".into(), "-f".into(), SUDOERS_FILE.into()],
                    None,
                )?;
                if !out.status.success() {
                    bail!(
                        "visudo refuses the sudo rules: {}",
                        String::from_utf8_lossy(&out.stdout).trim().to_string()
                            + String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
            }
        }
    }
    Ok(())
}

/// `always`: the default user and root, whose keys cloud-init's `cc_ssh` always writes (an
/// empty file when there are none).
fn install_keys(run: &mut Run<'_, '_>, pw: &Passwd, keys: &[String], always: bool) -> Result<()> {
    // As cloud-init: no keys, no `.ssh` for another user that has none (an earlier
    // generation's block is still taken out of an existing file).
    let file = under(run.root, &pw.home).join(".ssh/authorized_keys");
    if keys.is_empty() && !always && !file.exists() {
        return Ok(());
    }
    let changed = users::edit_keys_in(&mut run.txn, run.root, pw, |old| {
        fsutil::replace_block(old, users::KEYS_BEGIN, users::KEYS_END, keys)
    })
    .with_context(|| format!("authorized_keys of {}", pw.name))?;
    if changed {
        run.changes.push(format!("ssh-keys {}", pw.name));
        log_event(
            "ssh-keys",
            &[
                ("user", &pw.name),
                ("managed-keys", &keys.len().to_string()),
            ],
        );
    }
    Ok(())
}

/// A random password as cloud-init makes them: 20 characters of letters and digits.
fn random_password() -> Result<String> {
    const SET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789";
    let mut raw = [0u8; 64];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("read /dev/urandom")?;
    Ok(raw
        .iter()
        .filter(|b| usize::from(**b) < 256 - 256 % SET.len())
        .take(20)
        .map(|b| SET[usize::from(*b) % SET.len()] as char)
        .collect())
}

/// Print on the guest's console (what cloud-init does with random passwords and the final
/// message): `/dev/console` on the live system; for a tree (tests, image preparation) its
/// `dev/console` only if that is a regular file (a device node there would be this machine's
/// console); else the agent's standard error.
pub(crate) fn to_console(root: &Path, text: &str) {
    use std::io::Write as _;
    let console: PathBuf = under(root, "/dev/console");
    let usable = root == Path::new("/")
        || fs::symlink_metadata(&console).is_ok_and(|m| m.file_type().is_file());
    let ok = usable
        && fs::OpenOptions::new()
            .append(true)
            .open(&console)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .is_ok();
    if !ok {
        eprint!("{text}");
    }
}

/// Groups, users, sudoers, keys (users and root), `chpasswd`, in cloud-init's order.
pub(crate) fn apply_accounts(doc: &ConfigDoc, run: &mut Run<'_, '_>) -> Result<()> {
    let (list, default_name) = {
        let mut changes = Vec::new();
        let r = resolve_users(doc, run.opts.default_user.as_ref(), &mut changes);
        run.changes.extend(changes);
        r
    };
    let wants_accounts = !doc.groups.is_empty()
        || !list.is_empty()
        || !doc.chpasswd.is_empty()
        || doc.disable_root.is_some();
    if !wants_accounts {
        return Ok(());
    }
    journal_password_database(run)?;
    // Groups, then their members that exist now.
    for (i, g) in doc.groups.iter().enumerate() {
        let at = format!("groups[{i}]");
        if !group_exists(run.root, &g.name)? {
            add_group(run, &g.name, "").with_context(|| at.clone())?;
        }
        let members: Vec<String> = groups_of(run.root)?
            .into_iter()
            .find(|(n, _)| *n == g.name)
            .map(|(_, m)| m)
            .unwrap_or_default();
        for m in &g.members {
            if members.contains(m) {
                continue;
            }
            if user_exists(run.root, m) {
                add_member(run, &g.name, m).with_context(|| at.clone())?;
            } else {
                // cloud-init: "Unable to add group member … user does not exist."
                run.changes.push(format!(
                    "group {}: member {m} does not exist (not added, as cloud-init)",
                    g.name
                ));
            }
        }
    }
    // Users.
    let mut shadow = Vec::new();
    for (i, u) in list.iter().enumerate() {
        let at = format!("users[{i}]");
        if user_exists(run.root, &u.name) {
            let created_keys = u.gecos.is_some()
                || u.homedir.is_some()
                || u.shell.is_some()
                || !u.groups.is_empty()
                || u.uid.is_some();
            if created_keys {
                run.changes.push(format!(
                    "user {} exists: only its password, lock, sudo rules and keys are applied",
                    u.name
                ));
            }
        } else {
            create_user(run, u, &at)?;
        }
        if u.hashed_passwd.is_some() || u.lock_passwd == Some(true) {
            shadow.push(users::ShadowChange {
                name: u.name.clone(),
                hash: u.hashed_passwd.clone(),
                lock: (u.lock_passwd == Some(true)).then_some(true),
            });
        }
    }
    for name in users::update_shadow_in(&mut run.txn, run.root, &shadow, LCKPWDF_TIMEOUT)? {
        log_event("password", &[("user", &name)]);
        run.changes.push(format!("password {name}"));
    }
    write_sudoers(run, &list)?;
    // Keys.
    for u in &list {
        let pw = users::lookup(run.root, &u.name)?;
        let mut keys = u.ssh_authorized_keys.clone();
        if default_name.as_deref() == Some(u.name.as_str()) {
            for k in &doc.ssh_authorized_keys {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        let is_default = default_name.as_deref() == Some(u.name.as_str());
        install_keys(run, &pw, &keys, is_default && doc.disable_root.is_some())?;
    }
    if let Some(disable) = doc.disable_root {
        let pw = users::lookup(run.root, "root")?;
        let keys: Vec<String> = if disable {
            let opts = doc
                .disable_root_opts
                .as_deref()
                .unwrap_or(DISABLE_ROOT_OPTS)
                .replace("$USER", default_name.as_deref().unwrap_or("NONE"))
                .replace("$DISABLE_USER", "root");
            doc.ssh_authorized_keys
                .iter()
                .map(|k| format!("{opts} {}", k.trim()))
                .collect()
        } else {
            doc.ssh_authorized_keys.clone()
        };
        install_keys(run, &pw, &keys, true)?;
    }
    // chpasswd.
    let mut changes = Vec::new();
    let mut randoms = Vec::new();
    let mut expire = Vec::new();
    for (i, c) in doc.chpasswd.iter().enumerate() {
        let name = if c.default {
            match &default_name {
                Some(n) => n.clone(),
                None => {
                    run.changes
                        .push("password: no default user to set it for (as cloud-init)".into());
                    continue;
                }
            }
        } else {
            c.name.clone()
        };
        if !user_exists(run.root, &name) {
            bail!("chpasswd[{i}]: user {name:?} does not exist");
        }
        let hash = match (&c.hashed_passwd, c.random) {
            (Some(h), _) => h.clone(),
            (None, _) => {
                let p = random_password()?;
                let h = users::hash_password(&p)?;
                randoms.push(format!("{name}:{p}"));
                h
            }
        };
        changes.push(users::ShadowChange {
            name: name.clone(),
            hash: Some(hash),
            lock: None,
        });
        if c.expire {
            expire.push(name);
        }
    }
    for name in users::update_shadow_in(&mut run.txn, run.root, &changes, LCKPWDF_TIMEOUT)? {
        log_event("password", &[("user", &name)]);
        run.changes.push(format!("password {name}"));
    }
    for name in users::expire_passwords_in(&mut run.txn, run.root, &expire, LCKPWDF_TIMEOUT)? {
        run.changes.push(format!("password of {name} expired"));
    }
    if !randoms.is_empty() {
        to_console(
            run.root,
            &format!(
                "Set the following 'random' passwords\n{}\n",
                randoms.join("\n")
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, sudo: &[&str]) -> User {
        User {
            name: name.into(),
            sudo: sudo.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Issue 12: a sudo rule is one rule for its user and nothing else: no second line, no
    /// continuation, no extra users — refused by the document and again by the renderer.
    #[test]
    fn sudoers_rules_cannot_grant_more_than_their_line() {
        let text = render_sudoers(&[user("alice", &["ALL=(ALL) NOPASSWD:ALL"]), user("bob", &[])])
            .unwrap()
            .unwrap();
        assert_eq!(
            text,
            "# Written by xenplug-agent; replaced on every configuration change.\n\n# User rules for alice\nalice ALL=(ALL) NOPASSWD:ALL\n"
        );
        assert_eq!(render_sudoers(&[user("bob", &[])]).unwrap(), None);
        for bad in [
            "ALL=(ALL) ALL\nALL ALL=(ALL) NOPASSWD: ALL",
            "ALL=(ALL) ALL\r#includedir /tmp/evil",
            "ALL=(ALL) /bin/true \\",
            ",mallory ALL=(ALL) NOPASSWD: ALL",
            "",
        ] {
            assert!(render_sudoers(&[user("alice", &[bad])]).is_err(), "{bad:?}");
            let doc = serde_json::json!({"instance-id": "i", "generation": 1,
                "users": [{"name": "alice", "sudo": [bad]}]});
            let e = ConfigDoc::from_value(doc).unwrap_err();
            assert_eq!(e.path, "users[0].sudo[0]", "{bad:?}: {e}");
        }
        // A user name that bypassed validation cannot open the line either.
        assert!(render_sudoers(&[user("ALL ALL=(ALL) ALL\nx", &["ALL=(ALL) ALL"])]).is_err());
    }

    #[test]
    fn the_default_user_is_the_images_with_the_entrys_keys() {
        let base = User {
            name: "debian".into(),
            groups: vec!["sudo".into(), "adm".into()],
            shell: Some("/bin/bash".into()),
            sudo: vec!["ALL=(ALL) NOPASSWD:ALL".into()],
            lock_passwd: Some(true),
            ..Default::default()
        };
        let doc: ConfigDoc = serde_json::from_value(serde_json::json!({
            "instance-id": "i", "generation": 1,
            "users": [{"name": "bob"}, {"default": true, "groups": ["video"], "shell": "/bin/zsh",
                       "ssh_authorized_keys": []}]}))
        .unwrap();
        let mut changes = Vec::new();
        let (users, default) = resolve_users(&doc, Some(&base), &mut changes);
        assert_eq!(default.as_deref(), Some("debian"));
        assert_eq!(users[0].name, "bob");
        let d = &users[1];
        assert_eq!(d.groups, ["adm", "sudo", "video"]);
        assert_eq!(d.shell.as_deref(), Some("/bin/zsh"));
        assert_eq!(d.sudo, base.sudo);
        // No default user configured: the entry is skipped, and the reply says so.
        let (users, default) = resolve_users(&doc, None, &mut changes);
        assert_eq!((users.len(), default), (1, None));
        assert!(changes[0].contains("no default user"), "{changes:?}");
    }
}
