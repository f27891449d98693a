//! Shared test helpers: an in-test xenstore implementing the traits, temp environments, and
//! child-process guards.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xenplug_xenstore::{
    Errno, Perm, Result as XsResult, Transaction, WatchEvent, XenStore, XsError, XsOps,
};

/// The domain id the fake resolves relative paths for.
pub const OWN_DOMAIN: &str = "/local/domain/0";

#[derive(Debug, Default)]
struct Inner {
    nodes: Mutex<BTreeMap<String, String>>,
    /// Every committed write, in order (absolute path, value).
    writes: Mutex<Vec<(String, String)>>,
    fail_writes: AtomicBool,
    commits: AtomicU32,
}

/// A small xenstore: absolute paths, relative ones resolved under `/local/domain/0`, parents
/// created on write, transactions buffered and applied on commit.
#[derive(Debug, Clone, Default)]
pub struct FakeXs(Arc<Inner>);

fn abs(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{OWN_DOMAIN}/{path}")
    }
}

fn parents(p: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut cur = p;
    while let Some(i) = cur.rfind('/') {
        cur = &cur[..i];
        if cur.is_empty() {
            break;
        }
        v.push(cur.to_string());
    }
    v
}

impl FakeXs {
    pub fn new() -> FakeXs {
        FakeXs::default()
    }

    /// Set a node directly (test setup; not recorded as a script write).
    pub fn set(&self, path: &str, value: &str) {
        let p = abs(path);
        let mut n = self.0.nodes.lock().unwrap();
        for q in parents(&p) {
            n.entry(q).or_default();
        }
        n.insert(p, value.to_string());
    }

    /// The value at `path`, if any.
    pub fn get(&self, path: &str) -> Option<String> {
        self.0.nodes.lock().unwrap().get(&abs(path)).cloned()
    }

    /// Writes made by the code under test, in order.
    pub fn writes(&self) -> Vec<(String, String)> {
        self.0.writes.lock().unwrap().clone()
    }

    /// Number of committed transactions.
    pub fn commits(&self) -> u32 {
        self.0.commits.load(Ordering::SeqCst)
    }

    /// Make every write fail with EACCES.
    pub fn fail_writes(&self, on: bool) {
        self.0.fail_writes.store(on, Ordering::SeqCst);
    }

    fn apply(&self, p: &str, v: &str) -> XsResult<()> {
        if self.0.fail_writes.load(Ordering::SeqCst) {
            return Err(XsError::Daemon {
                errno: Errno::EACCES,
                op: "WRITE",
                path: p.to_string(),
            });
        }
        self.set(p, v);
        self.0.writes.lock().unwrap().push((abs(p), v.to_string()));
        Ok(())
    }
}

impl XsOps for FakeXs {
    fn read(&self, path: &str) -> XsResult<Option<String>> {
        Ok(self.get(path))
    }
    fn write(&self, path: &str, value: &str) -> XsResult<()> {
        self.apply(path, value)
    }
    fn mkdir(&self, path: &str) -> XsResult<()> {
        if self.get(path).is_none() {
            self.apply(path, "")?;
        }
        Ok(())
    }
    fn rm(&self, path: &str) -> XsResult<()> {
        let p = abs(path);
        let mut n = self.0.nodes.lock().unwrap();
        let prefix = format!("{p}/");
        n.retain(|k, _| k != &p && !k.starts_with(&prefix));
        Ok(())
    }
    fn directory(&self, path: &str) -> XsResult<Vec<String>> {
        let p = abs(path);
        let n = self.0.nodes.lock().unwrap();
        if !n.contains_key(&p) {
            return Err(XsError::Daemon {
                errno: Errno::ENOENT,
                op: "DIRECTORY",
                path: p,
            });
        }
        let prefix = format!("{p}/");
        Ok(n.keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_string)
            .collect())
    }
    fn get_perms(&self, _path: &str) -> XsResult<Vec<Perm>> {
        Ok(vec![Perm {
            domid: 0,
            access: xenplug_xenstore::Access::None,
        }])
    }
    fn set_perms(&self, _path: &str, _perms: &[Perm]) -> XsResult<()> {
        Ok(())
    }
}

/// A buffered transaction.
pub struct FakeTx<'a> {
    xs: &'a FakeXs,
    pending: Mutex<Vec<(String, String)>>,
}

impl XsOps for FakeTx<'_> {
    fn read(&self, path: &str) -> XsResult<Option<String>> {
        let p = abs(path);
        if let Some((_, v)) = self
            .pending
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(k, _)| *k == p)
        {
            return Ok(Some(v.clone()));
        }
        self.xs.read(path)
    }
    fn write(&self, path: &str, value: &str) -> XsResult<()> {
        if self.xs.0.fail_writes.load(Ordering::SeqCst) {
            return Err(XsError::Daemon {
                errno: Errno::EACCES,
                op: "WRITE",
                path: path.to_string(),
            });
        }
        self.pending
            .lock()
            .unwrap()
            .push((abs(path), value.to_string()));
        Ok(())
    }
    fn mkdir(&self, path: &str) -> XsResult<()> {
        self.write(path, "")
    }
    fn rm(&self, path: &str) -> XsResult<()> {
        self.xs.rm(path)
    }
    fn directory(&self, path: &str) -> XsResult<Vec<String>> {
        self.xs.directory(path)
    }
    fn get_perms(&self, path: &str) -> XsResult<Vec<Perm>> {
        self.xs.get_perms(path)
    }
    fn set_perms(&self, path: &str, perms: &[Perm]) -> XsResult<()> {
        self.xs.set_perms(path, perms)
    }
}

impl Transaction for FakeTx<'_> {
    fn commit(self: Box<Self>) -> XsResult<()> {
        for (p, v) in self.pending.lock().unwrap().drain(..) {
            self.xs.apply(&p, &v)?;
        }
        self.xs.0.commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl XenStore for FakeXs {
    fn begin(&self) -> XsResult<Box<dyn Transaction + '_>> {
        Ok(Box::new(FakeTx {
            xs: self,
            pending: Mutex::new(Vec::new()),
        }))
    }
    fn watch(&self, _path: &str, _token: &str) -> XsResult<()> {
        Ok(())
    }
    fn unwatch(&self, _path: &str, _token: &str) -> XsResult<()> {
        Ok(())
    }
    fn read_watch(&self, timeout: Option<Duration>) -> XsResult<Option<WatchEvent>> {
        std::thread::sleep(timeout.unwrap_or_default());
        Ok(None)
    }
    fn domain_path(&self, domid: u32) -> XsResult<String> {
        Ok(format!("/local/domain/{domid}"))
    }
}

/// A scratch directory with the paths a script run needs, and the matching `XENPLUG_*` env.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn log_file(&self) -> PathBuf {
        self.path().join("log/xen-hotplug.log")
    }
    pub fn lock_dir(&self) -> PathBuf {
        self.path().join("locks")
    }
    pub fn scripts_dir(&self) -> PathBuf {
        self.path().join("scripts")
    }
    /// Environment for a script run: libxl's vbd variables plus overrides pointing here.
    pub fn env(&self, xenbus_path: Option<&str>) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = vec![
            (
                "XENPLUG_CONFIG".into(),
                self.path().join("none.toml").display().to_string(),
            ),
            (
                "XENPLUG_LOG_FILE".into(),
                self.log_file().display().to_string(),
            ),
            (
                "XENPLUG_LOCK_DIR".into(),
                self.lock_dir().display().to_string(),
            ),
            (
                "XENPLUG_STATE_DIR".into(),
                self.path().join("state").display().to_string(),
            ),
            (
                "XENPLUG_SCRIPTS_DIR".into(),
                self.scripts_dir().display().to_string(),
            ),
            ("XENPLUG_SYSLOG".into(), "0".into()),
            ("XENBUS_TYPE".into(), "vbd".into()),
            ("XENBUS_BASE_PATH".into(), "backend".into()),
            ("script".into(), "/etc/xen/scripts/block".into()),
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ];
        if let Some(p) = xenbus_path {
            v.push(("XENBUS_PATH".into(), p.into()));
        }
        // An explicit XENPLUG_CONFIG that does not exist is an error; write an empty file.
        std::fs::write(self.path().join("none.toml"), "").unwrap();
        v
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }
}

/// Build a Raw from argv and an env list.
pub fn raw(argv: &[&str], env: &[(String, String)]) -> xenplug_hotplug::Raw {
    xenplug_hotplug::Raw {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: env.iter().cloned().collect(),
    }
}

/// Kills (and reaps) a child process on drop, so a failing test leaves nothing behind. When the
/// child leads its own process group (`CommandExt::process_group(0)`), the whole group is
/// killed, so grandchildren (`sleep`, `flock`) go too.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn new(c: Child) -> ChildGuard {
        ChildGuard(Some(c))
    }
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child")
    }
    /// Wait for the child and return its status (the guard then has nothing to kill).
    pub fn wait(mut self) -> std::process::ExitStatus {
        let mut c = self.0.take().expect("child");
        c.wait().expect("wait")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
