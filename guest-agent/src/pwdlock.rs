//! The password-database lock, taken as glibc's `lckpwdf(3)` takes it, so shadow-utils
//! (`useradd`, `usermod`, `chpasswd`, `vipw`: `commonio_lock` calls `lckpwdf` first) and
//! `pam_unix` (`passwd`) are excluded while the agent edits `/etc/passwd`, `/etc/group`,
//! `/etc/shadow` or `/etc/gshadow`, and the agent waits for them.
//!
//! `lckpwdf` opens `/etc/.pwd.lock` (`O_WRONLY|O_CREAT|O_CLOEXEC`, 0600) and takes a POSIX
//! `fcntl` write lock on the whole file, giving up after 15 s (`alarm`). An `flock(2)` lock does
//! not conflict with that, so it excludes nobody. Here the lock is an open-file-description
//! lock (`F_OFD_SETLKW`): it conflicts with POSIX locks of other processes exactly as theirs
//! conflict with each other, but it belongs to the descriptor, not to the process, so another
//! thread of the agent closing some other descriptor of the file cannot drop it by accident.
//! The wait is the kernel's (a helper thread blocks in `F_OFD_SETLKW`) and bounded; a helper
//! that gets the lock after the caller gave up closes the file, which releases it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::fsutil::under;

/// The lock file, as glibc names it (`PWD_LOCKFILE`).
pub const PWD_LOCK: &str = "/etc/.pwd.lock";

/// How long `lckpwdf` waits before it gives up (glibc's `TIMEOUT`).
pub const LCKPWDF_TIMEOUT: Duration = Duration::from_secs(15);

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct PwdLock {
    _file: File,
    path: PathBuf,
}

impl PwdLock {
    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_lock() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // Must be 0 for open file description locks.
        l_pid: 0,
    }
}

/// `fcntl(fd, cmd, &write_lock)`.
fn ofd_lock(file: &File, cmd: libc::c_int) -> std::io::Result<()> {
    let fl = write_lock();
    // SAFETY: fcntl with a lock command reads the flock struct we pass, which outlives the call;
    // the descriptor is owned by `file`.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Take the lock under `root`, waiting at most `limit` for whoever holds it.
pub fn acquire(root: &Path, limit: Duration) -> Result<PwdLock> {
    let path = under(root, PWD_LOCK);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    match ofd_lock(&file, libc::F_OFD_SETLK) {
        Ok(()) => return Ok(PwdLock { _file: file, path }),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {}
        Err(e) => return Err(e).with_context(|| format!("lock {}", path.display())),
    }
    let (tx, rx) = mpsc::channel::<std::io::Result<File>>();
    std::thread::Builder::new()
        .name("pwd-lock-wait".into())
        .spawn(move || loop {
            match ofd_lock(&file, libc::F_OFD_SETLKW) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A send to a caller that gave up drops the file, which releases the lock.
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                Ok(()) => {
                    let _ = tx.send(Ok(file));
                    return;
                }
            }
        })
        .context("start the lock wait thread")?;
    let got = match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => match rx.try_recv() {
            Ok(r) => r,
            Err(_) => bail!(
                "{} is held by another program (passwd, useradd, vipw…) for more than {} s",
                path.display(),
                limit.as_secs_f32()
            ),
        },
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            bail!(
                "lock wait thread for {} ended without an answer",
                path.display()
            )
        }
    };
    let file = got.with_context(|| format!("lock {}", path.display()))?;
    Ok(PwdLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    //! Issue 12: the agent and shadow-utils exclude each other. The other side is a separate
    //! process taking the lock exactly as glibc's `lckpwdf` does (Python's `fcntl.lockf`:
    //! `F_SETLKW`, `F_WRLCK`, whole file), acting as `passwd` would.
    use super::*;
    use crate::users::{update_shadow_within, ShadowChange};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::MetadataExt;
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
    use std::time::Instant;

    /// Locks `<root>/etc/.pwd.lock` (POSIX fcntl), reads shadow, says `locked`; on a line from
    /// us appends `carol` to what it read and writes shadow back (as `passwd` rewrites it),
    /// says `written`, exits (which releases the lock).
    const HOLDER: &str = r#"
import fcntl, os, sys
lock, shadow = sys.argv[1], sys.argv[2]
fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX)
old = open(shadow).read()
print("locked", flush=True)
if sys.stdin.readline().strip() == "write":
    with open(shadow + ".new", "w") as f:
        f.write(old + "carol:!:19000:0:99999:7:::\n")
    os.rename(shadow + ".new", shadow)
    print("written", flush=True)
"#;

    struct Holder {
        child: Child,
        stdin: Option<ChildStdin>,
        out: BufReader<ChildStdout>,
    }

    impl Holder {
        fn start(root: &Path) -> Holder {
            let mut child = Command::new("python3")
                .arg("-c")
                .arg(HOLDER)
                .arg(root.join("etc/.pwd.lock"))
                .arg(root.join("etc/shadow"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3");
            let stdin = child.stdin.take();
            let out = BufReader::new(child.stdout.take().unwrap());
            let mut h = Holder { child, stdin, out };
            assert_eq!(h.line(), "locked");
            h
        }
        fn line(&mut self) -> String {
            let mut l = String::new();
            self.out.read_line(&mut l).unwrap();
            l.trim().to_string()
        }
        fn say(&mut self, what: &str) {
            let s = self.stdin.as_mut().unwrap();
            writeln!(s, "{what}").unwrap();
            s.flush().unwrap();
        }
    }

    impl Drop for Holder {
        fn drop(&mut self) {
            drop(self.stdin.take());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/shadow"),
            "root:*:19000:0:99999:7:::\nbob:!:19000:0:99999:7:::\n",
        )
        .unwrap();
        d
    }

    fn bob() -> Vec<ShadowChange> {
        vec![ShadowChange {
            name: "bob".into(),
            hash: Some("$6$salt$hash".into()),
            lock: Some(false),
        }]
    }

    /// True when /proc/locks shows someone blocked waiting for a lock on `file`.
    fn someone_waits_on(file: &Path) -> bool {
        let m = std::fs::metadata(file).unwrap();
        let ino = format!(":{} ", m.ino());
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("->") && l.contains(&ino))
    }

    #[test]
    fn waits_for_an_fcntl_holder_and_loses_nothing() {
        if !xenplug_testkit::require_program("python3") {
            return;
        }
        let d = root();
        let r = d.path().to_path_buf();
        let mut holder = Holder::start(&r);
        let agent = {
            let r = r.clone();
            std::thread::spawn(move || update_shadow_within(&r, &bob(), Duration::from_secs(30)))
        };
        // The agent must be queued behind the holder in the kernel, not writing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !someone_waits_on(&r.join("etc/.pwd.lock")) {
            assert!(
                Instant::now() < deadline,
                "the agent never waited for the fcntl lock holder"
            );
            assert!(
                !agent.is_finished(),
                "the agent did not wait for the lock holder"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        holder.say("write");
        assert_eq!(holder.line(), "written");
        drop(holder);
        let changed = agent.join().unwrap().unwrap();
        assert_eq!(changed, vec!["bob".to_string()]);
        let shadow = std::fs::read_to_string(r.join("etc/shadow")).unwrap();
        assert!(
            shadow.contains("\ncarol:!:19000:"),
            "the holder's change was lost: {shadow}"
        );
        assert!(shadow.contains("\nbob:$6$salt$hash:"), "{shadow}");
    }

    #[test]
    fn the_wait_is_bounded() {
        if !xenplug_testkit::require_program("python3") {
            return;
        }
        let d = root();
        let before = std::fs::read_to_string(d.path().join("etc/shadow")).unwrap();
        let _holder = Holder::start(d.path());
        let t0 = Instant::now();
        let e = update_shadow_within(d.path(), &bob(), Duration::from_millis(300)).unwrap_err();
        assert!(
            format!("{e:#}").contains("held by another program"),
            "{e:#}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(
            std::fs::read_to_string(d.path().join("etc/shadow")).unwrap(),
            before
        );
    }

    #[test]
    fn while_held_lckpwdf_callers_are_excluded() {
        if !xenplug_testkit::require_program("python3") {
            return;
        }
        let d = root();
        let lock = acquire(d.path(), Duration::from_secs(1)).unwrap();
        let st = Command::new("python3")
            .arg("-c")
            .arg("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\ntry:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(3)\n")
            .arg(lock.path())
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(3), "an lckpwdf caller got the lock we hold");
        drop(lock);
        let st = Command::new("python3")
            .arg("-c")
            .arg("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\nfcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n")
            .arg(d.path().join("etc/.pwd.lock"))
            .status()
            .unwrap();
        assert!(st.success(), "the lock was not released");
        let m = std::fs::metadata(d.path().join("etc/.pwd.lock")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
    }
}
