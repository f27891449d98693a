//! What every scenario's world is made of: a private mount namespace (so the scripts run with
//! their default paths, `/run/xen-hotplug` and `/var/log/xen`, on a tmpfs of their own and the
//! host's are never touched), a real xenstored on a throwaway socket, the scripts as libxl runs
//! them (links to the multi-call binary), and the observations shared by the audits.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, MsFlags};
use xenplug_xenstore::XsOps;
use xenplug_xenstored::testing::{spawn_daemon, TestDaemon};

use crate::harness::{put, Snapshot};

/// The directory every script keeps its locks and state in (ours by default, and Debian's
/// `locking.sh`).
pub const HOTPLUG_DIR: &str = "/run/xen-hotplug";

/// Leave the host's mount namespace: everything mounted from here on is private to this
/// process and its children. Call before any thread is started.
pub fn private_mounts() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))
}

/// A fresh tmpfs on `dir` (which must exist), in this process's private namespace.
pub fn tmpfs(dir: &str) -> Result<(), String> {
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
    .map_err(|e| format!("mount tmpfs on {dir}: {e}"))
}

/// Private `/run/xen-hotplug` and `/var/log/xen` (created empty under a private `/run` when
/// the host has none, so the host's `/run` is never written either).
pub fn private_hotplug_dirs() -> Result<(), String> {
    if !Path::new(HOTPLUG_DIR).is_dir() {
        // The host has never run a hotplug script: hide its /run behind a tmpfs, keeping the
        // network namespaces visible (`ip netns` needs /run/netns).
        let keep = tempfile::Builder::new()
            .prefix("xenplug-chaos-run-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let has_netns = Path::new("/run/netns").is_dir();
        if has_netns {
            mount(
                Some("/run/netns"),
                &keep,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| format!("bind /run/netns: {e}"))?;
        }
        tmpfs("/run")?;
        std::fs::create_dir_all(HOTPLUG_DIR).map_err(|e| e.to_string())?;
        if has_netns {
            std::fs::create_dir_all("/run/netns").map_err(|e| e.to_string())?;
            mount(
                Some(&keep),
                "/run/netns",
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| format!("bind back /run/netns: {e}"))?;
        }
    } else {
        tmpfs(HOTPLUG_DIR)?;
    }
    if !Path::new("/var/log/xen").is_dir() {
        std::fs::create_dir_all("/var/log/xen").map_err(|e| e.to_string())?;
    }
    tmpfs("/var/log/xen")
}

/// Become a child subreaper: what a killed script orphans is reparented to us (and reaped by
/// [`crate::harness::reap_orphans`]), not to an init that may never reap it.
pub fn subreaper() -> Result<(), String> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r != 0 {
        return Err(format!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The pieces every script world has.
pub struct Base {
    /// Scratch directory (images, scripts, stand-in state), removed on drop.
    pub dir: tempfile::TempDir,
    /// The xenstored the scripts talk to.
    pub daemon: TestDaemon,
    /// Links named after the scripts, to the binary under test.
    pub scripts: PathBuf,
    /// An empty `xenplug.toml` (or one with settings), so the host's is never read.
    pub config: PathBuf,
}

impl std::fmt::Debug for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Base")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Base {
    /// A scratch directory, a xenstored, and `names` linked to `binary`.
    pub fn new(binary: &Path, names: &[&str], config: &str) -> Result<Base, String> {
        let dir = tempfile::Builder::new()
            .prefix("xenplug-chaos-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let scripts = dir.path().join("scripts");
        std::fs::create_dir_all(&scripts).map_err(|e| e.to_string())?;
        for n in names {
            std::os::unix::fs::symlink(binary, scripts.join(n)).map_err(|e| e.to_string())?;
        }
        let config_path = dir.path().join("xenplug.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        Ok(Base {
            dir,
            daemon: spawn_daemon(),
            scripts,
            config: config_path,
        })
    }

    /// The environment libxl gives a script (plus our test settings), for backend `be`.
    pub fn env(&self, c: &mut Command, be: &str, kind: &str) {
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("XENBUS_PATH", be)
            .env("XENBUS_TYPE", kind)
            .env("XENBUS_BASE_PATH", "backend")
            .env("XENSTORED_PATH", self.daemon.socket())
            .env("XENPLUG_CONFIG", &self.config)
            .env("XENPLUG_SYSLOG", "0")
            .env("XENPLUG_STDERR_LEVEL", "err");
    }

    /// The whole store as items of class `xenstore node`.
    pub fn xenstore(&self, s: &mut Snapshot) {
        for (k, v) in self.daemon.store().dump("/") {
            put(s, "xenstore node", format!("{k} = {v}"));
        }
    }

    /// Write `pairs` (absolute paths).
    pub fn write(&self, pairs: &[(String, String)]) -> Result<(), String> {
        let xs = self.daemon.store();
        for (k, v) in pairs {
            xs.write(k, v).map_err(|e| format!("write {k}: {e}"))?;
        }
        Ok(())
    }

    /// What libxl does when the domain is gone: its backend directories of `kind` and its
    /// frontend domain directory are removed.
    pub fn destroy_domain(&self, kind: &str, domid: u32) {
        let xs = self.daemon.store();
        let _ = xs.rm(&format!("/local/domain/0/backend/{kind}/{domid}"));
        let _ = xs.rm(&format!("/local/domain/{domid}"));
    }

    /// `backend/<kind>` as on a host that has run domains (libxl never removes it).
    pub fn backend_dir(&self, kind: &str) -> Result<(), String> {
        self.daemon
            .store()
            .mkdir(&format!("/local/domain/0/backend/{kind}"))
            .map_err(|e| e.to_string())
    }
}

/// Files under `/run/xen-hotplug`: state records (`xenplug-block/*`, class `state file`),
/// lock files (class `lock file`); the waiting-line files (`.<name>.queue`) are kept on purpose
/// (hotplug/src/lock.rs) and not counted.
pub fn hotplug_files(s: &mut Snapshot) {
    fn walk(dir: &Path, s: &mut Snapshot) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                walk(&p, s);
                continue;
            }
            let rel = p
                .strip_prefix(HOTPLUG_DIR)
                .unwrap_or(&p)
                .display()
                .to_string();
            if name.starts_with('.') && name.ends_with(".queue") {
                continue;
            }
            let class = if rel.contains('/') {
                "state file"
            } else {
                "lock file"
            };
            put(s, class, rel);
        }
    }
    walk(Path::new(HOTPLUG_DIR), s);
}

/// Remove everything under `/run/xen-hotplug` but the waiting-line files (after a leaky round).
pub fn clear_hotplug_files() {
    let mut s = Snapshot::new();
    hotplug_files(&mut s);
    for (_, rel) in s {
        let _ = std::fs::remove_file(Path::new(HOTPLUG_DIR).join(rel));
    }
}

/// Live processes whose executable is `exe` and whose `argv[0]` is one of `names` (the
/// stand-ins are this binary under other names): class `process`, item `argv (pid N)`.
pub fn processes_of(exe: &Path, names: &[&str], s: &mut Snapshot) {
    let me = std::process::id().to_string();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let p = e.path();
        if std::fs::read_link(p.join("exe")).ok().as_deref() != Some(exe) {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_none_or(|st| st == "Z" || st == "X")
        {
            continue;
        }
        let argv = std::fs::read(p.join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let argv0 = argv.split(' ').next().unwrap_or("");
        let base = Path::new(argv0)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !names.contains(&base.as_str()) {
            continue;
        }
        put(s, "process", format!("{argv} (pid {pid})"));
    }
}

/// Run `cmd`, its stdout as text; an error names the command.
pub fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command given as words; its stdout.
pub fn sh(words: &[&str]) -> Result<String, String> {
    let (prog, args) = words.split_first().ok_or("empty command")?;
    output(Command::new(prog).args(args))
}

/// Wait (bounded by `limit`) until `cond` holds; false if it never did.
pub fn wait_for(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

/// Remove every xenstore node that is not in `baseline` (deepest first).
pub fn reset_xenstore(base: &Base, baseline: &std::collections::BTreeSet<String>) {
    let xs = base.daemon.store();
    let mut extra: Vec<String> = xs
        .dump("/")
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !baseline.contains(k))
        .collect();
    extra.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for k in extra {
        let _ = xs.rm(&k);
    }
}

/// This process's children (all threads), reaping the ones that exited.
pub fn children() -> Vec<i32> {
    crate::harness::reap_orphans();
    let me = std::process::id();
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{me}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            v.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    v
}

/// Wait (bounded by `limit`) until every child but `keep` is gone: what a killed script left
/// running (a stand-in, a forked child that had not yet exec'd) is reparented to this process
/// (a subreaper), so when none is left, nothing of the round can still change the world.
pub fn wait_children_gone(keep: &[i32], limit: std::time::Duration) -> Result<(), String> {
    let done = wait_for(limit, || children().iter().all(|c| keep.contains(c)));
    if done {
        Ok(())
    } else {
        let left: Vec<i32> = children()
            .into_iter()
            .filter(|c| !keep.contains(c))
            .collect();
        Err(format!("processes still running after {limit:?}: {left:?}"))
    }
}
