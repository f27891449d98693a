//! Named locks, interoperable with Xen's `locking.sh`.
//!
//! Same files (`<lock_dir>/<name>`, default `/var/run/xen-hotplug`), same protocol (the
//! with-lock-ex protocol over `flock`, proved correct in locking.sh):
//!
//! 1. `open(<lock_dir>/<name>, O_RDWR|O_CREAT|O_CLOEXEC)`;
//! 2. `flock(LOCK_EX)`;
//! 3. compare `fstat(fd)` with `stat(path)` (device and inode); equal: held; otherwise close and
//!    start again (the holder we waited for unlinked the file on release).
//!
//! Release unlinks the path, then closes the fd ([`LockGuard`]'s drop does this).
//!
//! **Waiting in line.** Because release unlinks the file, every process blocked on it wakes up
//! at each release, finds its file stale and starts again on the new one; with fifty scripts
//! waiting for `block` that herd cost more than the critical sections themselves (50
//! concurrent `block add`s took 420 ms, 117 ms without it). So xenplug's waiters first line up
//! on a second, private lock, `<lock_dir>/.<name>.queue` (never unlinked, so the kernel hands
//! it from one waiter to the next), and only the head of that line takes part in the protocol
//! above; it leaves the line as soon as it holds the real lock. A lock that is free is taken
//! at once, without the line (so the file appears only once someone had to wait). locking.sh's scripts know
//! nothing of the line and simply compete with its head, exactly as with one xenplug waiter.
//! (A real lock name never starts with `.`, so the two cannot collide.)
//!
//! Unlike locking.sh, every wait is bounded (the lock timeout, default 25 s, below libxl's 40 s
//! SIGKILL): the blocking `flock` runs on a helper thread (`wait_for_flock`). A timeout is a
//! [`Failure::Error`] naming the lock, its file and, when `/proc/locks` tells, the holder's pid
//! and command line. The fds are close-on-exec, so children (tapdisk, …) never inherit a lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::failure::Failure;

/// The lock names Xen's scripts use.
pub mod names {
    /// `block`, `block-tap`: the sharing check and `physical-device` write.
    pub const BLOCK: &str = "block";
    /// `vif-common.sh` `handle_iptable`.
    pub const IPTABLES: &str = "iptables";
    /// `vif-nat` dhcpd configuration.
    pub const VIF_NAT_DHCP: &str = "vif-nat-dhcp";
    /// `remus-netbuf-setup`.
    pub const PICKIFB: &str = "pickifb";
}

/// Wait until `file`'s open file description holds the exclusive flock, at most `limit`.
/// `Ok(true)`: held now (the caller's `LOCK_EX|LOCK_NB` on `file` then succeeds at once);
/// `Ok(false)`: the time ran out.
///
/// The wait is the kernel's: a helper thread blocks in `flock(LOCK_EX)` on a duplicate of the
/// descriptor (a flock belongs to the open file description, which both share), so waiters
/// queue in the kernel and the next one runs the moment the holder lets go, with no polling
/// and no wake-up of every waiter in user space. When the time runs out first, the helper
/// keeps waiting and, should it get the lock later, releases it at once.
fn wait_for_flock(file: &File, limit: Duration) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;
    let dup = file.try_clone()?;
    let (tx, rx) = mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("lock-wait".into())
        .spawn(move || loop {
            // SAFETY: flock(2) on a descriptor this closure owns.
            let r = unsafe { libc::flock(dup.as_raw_fd(), libc::LOCK_EX) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                let _ = tx.send(Err(e));
                return;
            }
            if tx.send(Ok(())).is_err() {
                // The waiter gave up: let go of the lock it no longer wants.
                // SAFETY: as above.
                unsafe { libc::flock(dup.as_raw_fd(), libc::LOCK_UN) };
            }
            return;
        })?;
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(e),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // Got it in the meantime after all? Then keep it (a message is waiting).
            match rx.try_recv() {
                Ok(Ok(())) => Ok(true),
                Ok(Err(e)) => Err(e),
                Err(_) => Ok(false),
            }
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(std::io::Error::other(
            "lock wait thread ended without an answer",
        )),
    }
}

/// One attempt at the with-lock-ex protocol without waiting: the lock held on the file that
/// is at `path`, or `None` when someone holds it (or the file we got was just unlinked).
fn try_once(path: &Path) -> std::io::Result<Option<Flock<File>>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => {
            let fd_meta = held.metadata()?;
            match std::fs::metadata(path) {
                Ok(m) if m.dev() == fd_meta.dev() && m.ino() == fd_meta.ino() => Ok(Some(held)),
                _ => Ok(None),
            }
        }
        Err((_, Errno::EWOULDBLOCK | Errno::EINTR)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// Open `path` (creating it) and take its exclusive flock, waiting until `deadline`; `None`
/// when the time ran out. For a file nobody unlinks (the waiting line).
fn take_flock(path: &Path, deadline: Instant) -> std::io::Result<Option<Flock<File>>> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(Some(held)),
            Err((f, Errno::EINTR)) => file = f,
            Err((f, Errno::EWOULDBLOCK)) => {
                let now = Instant::now();
                if now >= deadline || !wait_for_flock(&f, deadline - now)? {
                    return Ok(None);
                }
                file = f;
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
}

/// The lock directory and the bound on waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locks {
    dir: PathBuf,
    timeout: Duration,
}

/// A held lock. Dropping it releases it (unlink, then close); [`LockGuard::release`] does the
/// same and reports an unlink failure. It knows how long it was waited for and held, and calls
/// its [`LockGuard::on_release`] report with both once released.
pub struct LockGuard {
    name: String,
    path: PathBuf,
    lock: Option<Flock<File>>,
    waited: Duration,
    acquired: Instant,
    report: Option<LockReport>,
}

/// What a guard calls with its times once released.
type LockReport = Box<dyn FnOnce(&LockTimes) + Send>;

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("held", &self.lock.is_some())
            .field("waited", &self.waited)
            .finish()
    }
}

/// How long a lock was waited for and held (given to [`LockGuard::on_release`]'s report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockTimes {
    /// The lock's name.
    pub name: String,
    /// From the claim to holding it.
    pub waited: Duration,
    /// From holding it to its release.
    pub held: Duration,
}

/// Check a lock name: one path component of `[A-Za-z0-9._+:@%-]`, not starting with `.`.
pub fn validate_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+:@%-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Failure::error(format!("invalid lock name '{name}'")))
    }
}

/// A lock name for one object within a class, for callers that need no global serialisation:
/// `object_name("block", "/dev/vg0/lv1")` is `block@%2Fdev%2Fvg0%2Flv1`. Bytes other than
/// `[A-Za-z0-9._-]` are %-escaped; long objects are cut and suffixed with a hash so the name stays
/// a valid file name. Such locks are independent of the class lock itself (`block`).
pub fn object_name(class: &str, object: &str) -> String {
    let mut esc = String::with_capacity(object.len());
    for b in object.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            esc.push(b as char);
        } else {
            esc.push_str(&format!("%{b:02X}"));
        }
    }
    if esc.len() > 150 {
        // FNV-1a, enough to keep distinct long objects apart.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in object.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut cut = 120;
        while !esc.is_char_boundary(cut) {
            cut -= 1;
        }
        esc.truncate(cut);
        esc.push_str(&format!("+{h:016x}"));
    }
    format!("{class}@{esc}")
}

fn cmdline(pid: &str) -> Option<String> {
    let b = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let s = String::from_utf8_lossy(&b)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Some(s)
}

fn describe(pid: &str) -> Option<String> {
    cmdline(pid).map(|c| {
        if c.is_empty() {
            format!("pid {pid}")
        } else {
            format!("pid {pid} ({c})")
        }
    })
}

/// Who holds the flock on (dev, ino). First /proc/locks; the pid recorded there is the process
/// that called flock, which for locking.sh is a `flock(1)` that has exited, so when that pid is
/// gone, name the processes that have the file open instead. Only used to word a timeout.
fn holder(dev: u64, ino: u64) -> Option<String> {
    let (maj, min) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let want = [
        format!("{maj:02x}:{min:02x}:{ino}"),
        format!("{maj:x}:{min:x}:{ino}"),
    ];
    if let Ok(locks) = std::fs::read_to_string("/proc/locks") {
        for line in locks.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 00:1a:567 0 EOF"; waiters have a "->" field.
            if f.len() < 6 || f[1] != "FLOCK" || f.contains(&"->") {
                continue;
            }
            if want.iter().any(|w| w == f[5]) {
                if let Some(d) = describe(f[4]) {
                    return Some(d);
                }
            }
        }
    }
    let me = std::process::id().to_string();
    let mut open_by = Vec::new();
    for p in std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()) {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let has = fds
            .filter_map(|e| e.ok())
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino));
        if has {
            if let Some(d) = describe(&pid) {
                open_by.push(d);
            }
        }
        if open_by.len() == 3 {
            break;
        }
    }
    (!open_by.is_empty()).then(|| format!("a process that has it open: {}", open_by.join(", ")))
}

impl Locks {
    /// Locks in `dir`, each wait bounded by `timeout`.
    pub fn new(dir: impl Into<PathBuf>, timeout: Duration) -> Locks {
        Locks {
            dir: dir.into(),
            timeout,
        }
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The default bound on a wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The file of lock `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `claim_lock <name>`, waiting at most the configured timeout.
    pub fn claim(&self, name: &str) -> Result<LockGuard, Failure> {
        self.claim_timeout(name, self.timeout)
    }

    /// Take lock `name` only if it is free now; `Ok(None)` when someone holds it.
    pub fn try_claim(&self, name: &str) -> Result<Option<LockGuard>, Failure> {
        match self.acquire(name, Duration::ZERO) {
            Ok(g) => Ok(Some(g)),
            Err(Acquire::TimedOut { .. }) => Ok(None),
            Err(Acquire::Failed(f)) => Err(f),
        }
    }

    /// `claim_lock <name>`, waiting at most `timeout`.
    pub fn claim_timeout(&self, name: &str, timeout: Duration) -> Result<LockGuard, Failure> {
        self.acquire(name, timeout).map_err(|e| match e {
            Acquire::Failed(f) => f,
            Acquire::TimedOut { dev, ino } => {
                let who = dev
                    .zip(ino)
                    .and_then(|(d, i)| holder(d, i))
                    .map(|h| format!(", held by {h}"))
                    .unwrap_or_default();
                Failure::error(format!(
                    "timed out after {:.1} s waiting for lock '{name}' ({}){who}",
                    timeout.as_secs_f64(),
                    self.path(name).display()
                ))
            }
        })
    }

    fn acquire(&self, name: &str, timeout: Duration) -> Result<LockGuard, Acquire> {
        validate_name(name).map_err(Acquire::Failed)?;
        let started = Instant::now();
        let guard = |path: PathBuf, held: Flock<File>| {
            let acquired = Instant::now();
            LockGuard {
                name: name.to_string(),
                path,
                lock: Some(held),
                waited: acquired - started,
                acquired,
                report: None,
            }
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            Acquire::Failed(Failure::error(format!(
                "cannot create lock directory {}: {e}",
                self.dir.display()
            )))
        })?;
        let path = self.path(name);
        let deadline = Instant::now() + timeout;
        let timed_out_on_path = || {
            let meta = std::fs::metadata(&path).ok();
            Acquire::TimedOut {
                dev: meta.as_ref().map(|m| m.dev()),
                ino: meta.as_ref().map(|m| m.ino()),
            }
        };
        // Free right now (the common case): take it without touching the waiting line.
        if let Some(held) = try_once(&path).map_err(|e| {
            Acquire::Failed(Failure::error(format!(
                "cannot lock {}: {e}",
                path.display()
            )))
        })? {
            return Ok(guard(path, held));
        }
        // Otherwise wait in line (see the module documentation); leave it once the lock is held.
        let queue = self.dir.join(format!(".{name}.queue"));
        let _in_line = match take_flock(&queue, deadline).map_err(|e| {
            Acquire::Failed(Failure::error(format!(
                "cannot lock {}: {e}",
                queue.display()
            )))
        })? {
            Some(held) => held,
            None => return Err(timed_out_on_path()),
        };
        loop {
            // std opens with O_CLOEXEC.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| {
                    Acquire::Failed(Failure::error(format!(
                        "cannot open lock file {}: {e}",
                        path.display()
                    )))
                })?;
            let mut file = Some(file);
            loop {
                let f = file.take().ok_or_else(|| {
                    Acquire::Failed(Failure::error("lock file handle lost".to_string()))
                })?;
                match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                    Ok(held) => {
                        let fd_meta = held.metadata().map_err(|e| {
                            Acquire::Failed(Failure::error(format!(
                                "cannot fstat lock file {}: {e}",
                                path.display()
                            )))
                        })?;
                        match std::fs::metadata(&path) {
                            Ok(m) if m.dev() == fd_meta.dev() && m.ino() == fd_meta.ino() => {
                                return Ok(guard(path, held));
                            }
                            // Stale: a locking.sh holder unlinked the file on release. Start
                            // again with the current file.
                            _ => break,
                        }
                    }
                    Err((f, Errno::EINTR)) => file = Some(f),
                    Err((f, Errno::EWOULDBLOCK)) => {
                        let now = Instant::now();
                        let timed_out = |f: &File| {
                            let meta = f.metadata().ok();
                            Acquire::TimedOut {
                                dev: meta.as_ref().map(|m| m.dev()),
                                ino: meta.as_ref().map(|m| m.ino()),
                            }
                        };
                        if now >= deadline {
                            return Err(timed_out(&f));
                        }
                        match wait_for_flock(&f, deadline - now) {
                            // Held on this description now: the next attempt takes it.
                            Ok(true) => file = Some(f),
                            Ok(false) => return Err(timed_out(&f)),
                            Err(e) => {
                                return Err(Acquire::Failed(Failure::error(format!(
                                    "cannot lock {}: {e}",
                                    path.display()
                                ))))
                            }
                        }
                    }
                    Err((_, e)) => {
                        return Err(Acquire::Failed(Failure::error(format!(
                            "cannot lock {}: {e}",
                            path.display()
                        ))))
                    }
                }
            }
        }
    }
}

enum Acquire {
    Failed(Failure),
    TimedOut { dev: Option<u64>, ino: Option<u64> },
}

impl LockGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long the claim waited before the lock was held.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// How long it has been held so far.
    pub fn held_for(&self) -> Duration {
        self.acquired.elapsed()
    }

    /// Call `report` with the wait and hold times once the lock is released (by
    /// [`LockGuard::release`] or drop), e.g. to log them.
    pub fn on_release(mut self, report: impl FnOnce(&LockTimes) + Send + 'static) -> Self {
        self.report = Some(Box::new(report));
        self
    }

    /// `release_lock`: unlink the file, then close the fd.
    pub fn release(mut self) -> Result<(), Failure> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), Failure> {
        let Some(lock) = self.lock.take() else {
            return Ok(());
        };
        // Unlink while still holding the flock (only the holder may unlink), then close.
        let r = std::fs::remove_file(&self.path);
        drop(lock);
        if let Some(report) = self.report.take() {
            report(&LockTimes {
                name: self.name.clone(),
                waited: self.waited,
                held: self.acquired.elapsed(),
            });
        }
        match r {
            Ok(()) => Ok(()),
            Err(e) => Err(Failure::error(format!(
                "cannot remove lock file {}: {e}",
                self.path.display()
            ))),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.release_inner();
    }
}
