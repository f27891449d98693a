//! `xenplug-agent --prepare-template`: turn this guest into a template that VMs are cloned from
//! (the "sysprep" step of the PV channel document: "prepare the guest to be cloned safely").
//!
//! A clone must boot as a new machine and be configured on its first boot. What the template
//! would otherwise hand down to every clone, and what happens to it here (gather → [`plan`] →
//! [`apply`], everything under an injected root):
//!
//! | what | why clones must not share it | done |
//! |---|---|---|
//! | `/var/lib/xenplug-agent/applied.json` | the agent would report the template's instance id and generation | removed: the clone reports none, the dom0 peer delivers its document |
//! | `/etc/machine-id` | systemd, journald, DHCP client ids (networkd's DUID) derive from it | emptied (machine-id(5): an empty file means "generate one on first boot", which is also systemd's first-boot condition) |
//! | `/var/lib/dbus/machine-id` | a copy of the above on older systems | removed when it is a file (a link to `/etc/machine-id` stays) |
//! | `/etc/ssh/ssh_host_*_key{,.pub}` | identical host keys let one clone impersonate another | removed; `xenplug-agent-ssh-keygen.service` runs `ssh-keygen -A` on the next boot, before `ssh.service` (as Debian's cloud images do through cloud-init) |
//! | `/var/lib/systemd/random-seed` | clones would start from the same entropy seed | removed |
//! | the agent's network files (`/etc/systemd/network/10-xenplug-*`, `/etc/network/interfaces.d/xenplug-agent`) | the template's static addresses on every clone | removed; the clone's document brings its own |
//! | DHCP client leases (`/var/lib/dhcp/*.leases`, `/var/lib/dhcpcd/*.lease`, `/var/lib/NetworkManager/*.lease`) | a clone would ask for the template's address | removed |
//! | `/etc/udev/rules.d/70-persistent-net.rules` | old udev pins interface names to the template's MACs | removed |
//!
//! Left alone on purpose: the host name (the clone's document sets it; without one the clone
//! keeps the template's), users and their keys, logs, package state, cloud-init's own state
//! (`cloud-init clean` does that). Removal goes through [`crate::fsutil::remove_file`] (fsync of
//! the directory), the machine id is emptied atomically; the template should be shut down right
//! after.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::apply::STATE_FILE;
use crate::fsutil::{self, under};

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Remove this file.
    Remove(PathBuf, &'static str),
    /// Empty this file (keeping mode and owner).
    Empty(PathBuf, &'static str),
}

impl Step {
    /// What it does, for the report (`root` is stripped from the path).
    pub fn describe(&self, root: &Path) -> String {
        let show = |p: &Path| match p.strip_prefix(root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => p.display().to_string(),
        };
        match self {
            Step::Remove(p, why) => format!("remove {} ({why})", show(p)),
            Step::Empty(p, why) => format!("empty {} ({why})", show(p)),
        }
    }
}

fn is_file(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// Files in `dir` (not following links) whose names satisfy `keep`, sorted.
fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| keep(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .filter(|p| is_file(p))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What to change under `root` (nothing is touched).
pub fn plan(root: &Path) -> Vec<Step> {
    let mut steps = Vec::new();
    let state = under(root, STATE_FILE);
    if is_file(&state) {
        steps.push(Step::Remove(state, "the applied configuration"));
    }
    let mid = under(root, "/etc/machine-id");
    if fs::metadata(&mid).is_ok_and(|m| m.is_file() && m.len() > 0) {
        steps.push(Step::Empty(mid, "a new machine id on first boot"));
    }
    let dbus = under(root, "/var/lib/dbus/machine-id");
    if is_file(&dbus) {
        steps.push(Step::Remove(dbus, "D-Bus's copy of the machine id"));
    }
    for k in files_in(&under(root, "/etc/ssh"), |n| {
        n.starts_with("ssh_host_") && (n.ends_with("_key") || n.ends_with("_key.pub"))
    }) {
        steps.push(Step::Remove(k, "SSH host key, regenerated on first boot"));
    }
    let seed = under(root, "/var/lib/systemd/random-seed");
    if is_file(&seed) {
        steps.push(Step::Remove(seed, "random seed"));
    }
    // Every network file the agent writes, for whichever network manager (render's list).
    for dir in crate::render::OWNED_DIRS {
        for f in files_in(&under(root, dir), |n| {
            crate::render::is_owned(&format!("{dir}/{n}"))
        }) {
            steps.push(Step::Remove(f, "network configuration the agent wrote"));
        }
    }
    for (dir, suffix) in [
        ("/var/lib/dhcp", ".leases"),
        ("/var/lib/dhcpcd", ".lease"),
        ("/var/lib/NetworkManager", ".lease"),
    ] {
        for f in files_in(&under(root, dir), |n| n.ends_with(suffix)) {
            steps.push(Step::Remove(f, "DHCP lease"));
        }
    }
    let persistent = under(root, "/etc/udev/rules.d/70-persistent-net.rules");
    if is_file(&persistent) {
        steps.push(Step::Remove(persistent, "interface names pinned to MACs"));
    }
    steps
}

/// Carry out `steps`; keeps going after a failure and returns every error.
pub fn apply(steps: &[Step]) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    for s in steps {
        let r: Result<()> = match s {
            Step::Remove(p, _) => fsutil::remove_file(p).map(|_| ()),
            Step::Empty(p, _) => {
                let (mode, owner) = fsutil::mode_owner(p)
                    .map(|(m, o)| (m, Some(o)))
                    .unwrap_or((0o444, None));
                fsutil::write_atomic(p, b"", mode, owner).map(|_| ())
            }
        };
        if let Err(e) = r {
            errors.push(e);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn put(root: &Path, abs: &str, text: &str) -> PathBuf {
        let p = under(root, abs);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn plans_only_what_exists_and_applies_it() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert!(plan(r).is_empty());
        put(r, STATE_FILE, "{}");
        let mid = put(r, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        fs::set_permissions(&mid, fs::Permissions::from_mode(0o444)).unwrap();
        put(r, "/etc/ssh/ssh_host_ed25519_key", "k");
        put(r, "/etc/ssh/ssh_host_ed25519_key.pub", "k");
        put(r, "/etc/ssh/sshd_config", "keep");
        put(r, "/etc/systemd/network/10-xenplug-eth0.network", "n");
        put(r, "/etc/systemd/network/20-admin.network", "keep");
        put(r, "/var/lib/dhcp/dhclient.eth0.leases", "lease");
        let steps = plan(r);
        let shown: Vec<String> = steps.iter().map(|s| s.describe(r)).collect();
        assert_eq!(
            shown,
            [
                "remove /var/lib/xenplug-agent/applied.json (the applied configuration)",
                "empty /etc/machine-id (a new machine id on first boot)",
                "remove /etc/ssh/ssh_host_ed25519_key (SSH host key, regenerated on first boot)",
                "remove /etc/ssh/ssh_host_ed25519_key.pub (SSH host key, regenerated on first boot)",
                "remove /etc/systemd/network/10-xenplug-eth0.network (network configuration the agent wrote)",
                "remove /var/lib/dhcp/dhclient.eth0.leases (DHCP lease)",
            ]
        );
        assert!(apply(&steps).is_empty());
        assert_eq!(fs::read(&mid).unwrap(), b"");
        assert_eq!(
            fs::metadata(&mid).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert!(!under(r, STATE_FILE).exists());
        assert!(under(r, "/etc/ssh/sshd_config").exists());
        assert!(under(r, "/etc/systemd/network/20-admin.network").exists());
        // Done: nothing left to do.
        assert!(plan(r).is_empty());
    }

    #[test]
    fn dbus_machine_id_link_is_kept_and_a_file_removed() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(under(r, "/var/lib/dbus")).unwrap();
        std::os::unix::fs::symlink("/etc/machine-id", under(r, "/var/lib/dbus/machine-id"))
            .unwrap();
        assert!(plan(r).is_empty());
        fs::remove_file(under(r, "/var/lib/dbus/machine-id")).unwrap();
        put(r, "/var/lib/dbus/machine-id", "x");
        assert_eq!(plan(r).len(), 1);
    }

    #[test]
    fn apply_keeps_going_and_reports_each_error() {
        let t = tempfile::tempdir().unwrap();
        let steps = vec![
            Step::Remove(t.path().join("dir-not-file"), "x"),
            Step::Remove(t.path().join("gone"), "x"),
        ];
        fs::create_dir(t.path().join("dir-not-file")).unwrap();
        let errs = apply(&steps);
        assert_eq!(errs.len(), 1, "{errs:?}");
    }
}
