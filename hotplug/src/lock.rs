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
//! Unlike locking.sh, every wait is bounded (the lock timeout, default 25 s, below libxl's 40 s
//! SIGKILL): we poll with `LOCK_EX|LOCK_NB` and back off up to 20 ms. A timeout is a
//! [`Failure::Error`] naming the lock, its file and, when `/proc/locks` tells, the holder's pid
//! and command line. The fd is close-on-exec, so children (tapdisk, …) never inherit the lock.

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

/// Longest wait between two attempts. A waiter is woken as soon as the holder unlinks or
/// closes the lock file (see [`ReleaseWaker`]), so this only bounds the wait for releases that
/// make no inotify event (a holder's flock dropped by another process closing a shared fd).
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// Wakes a lock waiter when the lock is likely free: the holder releases by unlinking the file
/// (ours and locking.sh's `release_lock`) and then closing it, or by exiting (close). inotify
/// reports both on the file the waiter holds open, so waiters take over at once instead of
/// sleeping through a back-off.
struct ReleaseWaker {
    inotify: nix::sys::inotify::Inotify,
}

impl ReleaseWaker {
    fn new(path: &std::path::Path) -> Option<Self> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok()?;
        inotify
            .add_watch(
                path,
                AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_CLOSE_NOWRITE,
            )
            .ok()?;
        Some(ReleaseWaker { inotify })
    }

    /// Wait for an event on the lock file, at most `limit`; then drain what is queued.
    fn wait(&self, limit: Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = u16::try_from(limit.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
        let _ = self.inotify.read_events();
    }
}

/// The lock directory and the bound on waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locks {
    dir: PathBuf,
    timeout: Duration,
}

/// A held lock. Dropping it releases it (unlink, then close); [`LockGuard::release`] does the
/// same and reports an unlink failure.
#[derive(Debug)]
pub struct LockGuard {
    name: String,
    path: PathBuf,
    lock: Option<Flock<File>>,
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
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            Acquire::Failed(Failure::error(format!(
                "cannot create lock directory {}: {e}",
                self.dir.display()
            )))
        })?;
        let path = self.path(name);
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(1);
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
            // Watches this inode; a stale file (unlinked by its holder) gets a new one.
            let mut waker: Option<Option<ReleaseWaker>> = None;
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
                                return Ok(LockGuard {
                                    name: name.to_string(),
                                    path,
                                    lock: Some(held),
                                });
                            }
                            // Stale: the previous holder unlinked the file. Start again.
                            _ => break,
                        }
                    }
                    Err((f, Errno::EINTR)) => file = Some(f),
                    Err((f, Errno::EWOULDBLOCK)) => {
                        let now = Instant::now();
                        if now >= deadline {
                            let meta = f.metadata().ok();
                            return Err(Acquire::TimedOut {
                                dev: meta.as_ref().map(|m| m.dev()),
                                ino: meta.as_ref().map(|m| m.ino()),
                            });
                        }
                        match waker.as_ref() {
                            // The first time: start watching, then try again at once, so a
                            // release between the failed attempt and the watch is not missed.
                            None => waker = Some(ReleaseWaker::new(&path)),
                            Some(Some(w)) => w.wait(MAX_BACKOFF.min(deadline - now)),
                            // No inotify (exhausted instances): poll with back-off.
                            Some(None) => {
                                std::thread::sleep(backoff.min(deadline - now));
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            }
                        }
                        file = Some(f);
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
