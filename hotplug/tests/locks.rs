//! Lock interlock with Xen's own /etc/xen/scripts/locking.sh, bounded waits, mutual exclusion
//! under contention, close-on-exec.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ChildGuard;
use xenplug_hotplug::lock::{object_name, validate_name};
use xenplug_hotplug::Locks;

const LOCKING_SH: &str = "/etc/xen/scripts/locking.sh";

fn have_locking_sh() -> bool {
    xenplug_testkit::require(
        Path::new(LOCKING_SH).exists(),
        "needs Xen's /etc/xen/scripts/locking.sh (Debian package xen-utils-common)",
    ) && xenplug_testkit::require_program("flock")
}

/// A bash that sources the real locking.sh with LOCK_BASEDIR pointed at `dir`, then runs `body`.
fn bash(dir: &Path, body: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!(
            "set -e; . {LOCKING_SH}; LOCK_BASEDIR={}; {body}",
            dir.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    c
}

/// Read lines from the child's stdout until one equals `want`.
/// Whether /proc/locks shows a process blocked waiting for a lock on inode `ino`.
fn flock_waiter_on(ino: u64) -> bool {
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"->") && f.get(6).is_some_and(|d| d.ends_with(&format!(":{ino}")))
        })
}

fn wait_line(child: &mut ChildGuard, want: &str) {
    let out = child.child().stdout.take().expect("stdout");
    let mut r = BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).expect("read child stdout");
        assert!(n > 0, "child ended before printing {want:?}");
        if line.trim_end() == want {
            break;
        }
    }
    // Keep the pipe open so the child never gets SIGPIPE.
    std::mem::forget(r);
}

#[test]
fn we_wait_for_locking_sh_holder() {
    if !have_locking_sh() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locks");
    let marker = tmp.path().join("bash-released");
    let mut child = ChildGuard::new(
        bash(
            &dir,
            &format!(
                "claim_lock block; echo locked; sleep 0.7; touch {}; release_lock block",
                marker.display()
            ),
        )
        .spawn()
        .unwrap(),
    );
    wait_line(&mut child, "locked");
    let locks = Locks::new(&dir, Duration::from_secs(10));
    let t0 = Instant::now();
    let g = locks.claim("block").unwrap();
    let waited = t0.elapsed();
    assert!(marker.exists(), "we got the lock before bash released it");
    assert!(
        waited >= Duration::from_millis(400),
        "waited only {waited:?}"
    );
    // We hold the file that is linked at the path.
    let (fd_ino, path_ino) = (
        std::fs::metadata(g.path()).unwrap().ino(),
        std::fs::metadata(dir.join("block")).unwrap().ino(),
    );
    assert_eq!(fd_ino, path_ino);
    g.release().unwrap();
    assert!(!dir.join("block").exists(), "release unlinks the lock file");
}

#[test]
fn locking_sh_waits_for_us() {
    if !have_locking_sh() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locks");
    let marker = tmp.path().join("bash-got-it");
    let locks = Locks::new(&dir, Duration::from_secs(10));
    let g = locks.claim("block").unwrap();
    let mut child = ChildGuard::new(
        bash(
            &dir,
            &format!(
                "echo started; claim_lock block; touch {}; release_lock block",
                marker.display()
            ),
        )
        .spawn()
        .unwrap(),
    );
    wait_line(&mut child, "started");
    // Wait until bash's flock is queued behind ours in the kernel (a "->" waiter on the lock
    // file's inode in /proc/locks): from then on it can only get the lock when we release it.
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join("block")).unwrap());
    xenplug_testkit::wait_until("bash waiting for the lock", Duration::from_secs(10), || {
        assert!(!marker.exists(), "bash took the lock while we held it");
        flock_waiter_on(ino)
    });
    assert!(!marker.exists(), "bash took the lock while we held it");
    g.release().unwrap();
    let st = child.wait();
    assert!(st.success(), "bash: {st}");
    assert!(marker.exists(), "bash got the lock after our release");
}

#[test]
fn timeout_names_lock_and_holder() {
    if !have_locking_sh() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locks");
    let mut child = ChildGuard::new(
        bash(&dir, "claim_lock iptables; echo locked; sleep 30")
            .spawn()
            .unwrap(),
    );
    let bash_pid = child.child().id();
    wait_line(&mut child, "locked");
    let locks = Locks::new(&dir, Duration::from_millis(300));
    let t0 = Instant::now();
    let err = locks.claim("iptables").unwrap_err();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let msg = err.message();
    let path = dir.join("iptables");
    assert!(
        msg.starts_with(&format!(
            "timed out after 0.3 s waiting for lock 'iptables' ({}), held by ",
            path.display()
        )),
        "{msg}"
    );
    // locking.sh's flock(1) has exited; the holder is the shell (exec'd into `sleep`) that
    // keeps the fd open.
    assert!(msg.contains(&format!("pid {bash_pid} (")), "{msg}");
    // try_claim does not wait.
    assert!(locks.try_claim("iptables").unwrap().is_none());
    // The holder's lock file is untouched by our failed attempts.
    assert!(path.exists());
}

#[test]
fn timeout_without_locking_sh() {
    let tmp = tempfile::tempdir().unwrap();
    let locks = Locks::new(tmp.path(), Duration::from_secs(10));
    let held = locks.claim("pickifb").unwrap();
    let t0 = Instant::now();
    let err = locks
        .claim_timeout("pickifb", Duration::from_millis(150))
        .unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert!(
        err.message()
            .starts_with("timed out after 0.1 s waiting for lock 'pickifb'")
            || err
                .message()
                .starts_with("timed out after 0.2 s waiting for lock 'pickifb'"),
        "{}",
        err.message()
    );
    drop(held);
    let again = locks
        .try_claim("pickifb")
        .unwrap()
        .expect("free after drop");
    assert_eq!(again.name(), "pickifb");
}

/// One critical section: detect overlap with an "inside" marker and bump a counter file.
fn critical(work: &Path) {
    let inside = work.join("inside");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&inside)
        .expect("mutual exclusion violated: someone else is inside");
    let counter = work.join("counter");
    let n: u64 = std::fs::read_to_string(&counter)
        .unwrap_or_else(|_| "0".into())
        .trim()
        .parse()
        .unwrap();
    std::thread::yield_now();
    std::fs::write(&counter, format!("{}\n", n + 1)).unwrap();
    std::fs::remove_file(&inside).unwrap();
}

#[test]
fn contention_threads_and_locking_sh_processes() {
    let with_bash = have_locking_sh();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locks");
    let work: PathBuf = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    const THREADS: u64 = 6;
    const ROUNDS: u64 = 25;
    const PROCS: u64 = 3;
    const PROC_ROUNDS: u64 = 15;

    let mut children = Vec::new();
    if with_bash {
        for _ in 0..PROCS {
            let body = format!(
                "cd {w}; for i in $(seq {PROC_ROUNDS}); do claim_lock block; \
                 if [ -e inside ]; then echo VIOLATION >&2; exit 7; fi; : > inside; \
                 c=$(cat counter 2>/dev/null || echo 0); echo $((c+1)) > counter; rm inside; \
                 release_lock block; done",
                w = work.display()
            );
            let mut c = bash(&dir, &body);
            c.stdout(Stdio::null());
            children.push(ChildGuard::new(c.spawn().unwrap()));
        }
    }
    let locks = Arc::new(Locks::new(&dir, Duration::from_secs(20)));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (locks, work) = (locks.clone(), work.clone());
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    let g = locks.claim("block").unwrap();
                    critical(&work);
                    g.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    for c in children {
        let st = c.wait();
        assert!(st.success(), "bash contender: {st}");
    }
    let expect = THREADS * ROUNDS + if with_bash { PROCS * PROC_ROUNDS } else { 0 };
    let n: u64 = std::fs::read_to_string(work.join("counter"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, expect);
    assert!(!dir.join("block").exists(), "last holder unlinked the file");
}

#[test]
fn lock_fd_is_not_inherited() {
    let tmp = tempfile::tempdir().unwrap();
    let locks = Locks::new(tmp.path(), Duration::from_secs(5));
    let g = locks.claim("block").unwrap();
    let out = Command::new("sh")
        .args(["-c", "for f in /proc/self/fd/*; do readlink \"$f\"; done"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains(&g.path().display().to_string()),
        "lock fd leaked into child: {text}"
    );
    // Sanity: the parent does have it open.
    let mine: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(mine.contains(&g.path().display().to_string()), "{mine:?}");
}

#[test]
fn names() {
    for ok in [
        "block",
        "iptables",
        "vif-nat-dhcp",
        "pickifb",
        "block@%2Fdev%2Fsda",
    ] {
        validate_name(ok).unwrap();
    }
    for bad in ["", ".", "..", ".hidden", "a/b", "sp ace"] {
        assert_eq!(
            validate_name(bad).unwrap_err().message(),
            format!("invalid lock name '{bad}'")
        );
    }
    assert_eq!(
        object_name("block", "/dev/vg0/lv1"),
        "block@%2Fdev%2Fvg0%2Flv1"
    );
    let long = object_name("block", &"x/".repeat(200));
    validate_name(&long).unwrap();
    assert!(long.len() < 200);
    assert_ne!(long, object_name("block", &"x/".repeat(201)));
}

#[test]
fn object_locks_are_independent() {
    let tmp = tempfile::tempdir().unwrap();
    let locks = Locks::new(tmp.path(), Duration::from_millis(100));
    let a = locks.claim(&object_name("block", "/dev/sda")).unwrap();
    let b = locks.claim(&object_name("block", "/dev/sdb")).unwrap();
    let global = locks.claim("block").unwrap();
    assert!(locks
        .try_claim(&object_name("block", "/dev/sda"))
        .unwrap()
        .is_none());
    drop((a, b, global));
    // Only the waiting-line files stay (one per name, never unlinked, see the lock module).
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter()
            .all(|n| n.starts_with('.') && n.ends_with(".queue")),
        "{left:?}"
    );
}

#[test]
fn unusable_lock_dir_is_a_clear_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let locks = Locks::new(file.join("sub"), Duration::from_millis(100));
    let msg = locks.claim("block").unwrap_err().message();
    assert!(
        msg.starts_with(&format!(
            "cannot create lock directory {}",
            file.join("sub").display()
        )),
        "{msg}"
    );
}

/// Every guard knows how long its claim waited and how long it was held, and reports both on
/// release (issue 21: lock hold times).
#[test]
fn wait_and_hold_times_are_reported_on_release() {
    use std::sync::mpsc;
    let tmp = tempfile::tempdir().unwrap();
    let locks = Locks::new(tmp.path(), Duration::from_secs(10));
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    let tx_a = tx.clone();
    let a = locks
        .claim("block")
        .unwrap()
        .on_release(move |t| tx_a.send(("a", t.clone())).unwrap());
    let a_held_from = Instant::now();
    assert!(a.waited() <= a_held_from - t0, "{:?}", a.waited());
    let ino = std::fs::metadata(tmp.path().join("block")).unwrap().ino();
    let b_locks = locks.clone();
    let b = std::thread::spawn(move || {
        let s = Instant::now();
        let g = b_locks
            .claim("block")
            .unwrap()
            .on_release(move |t| tx.send(("b", t.clone())).unwrap());
        let got = Instant::now();
        let waited = g.waited();
        drop(g);
        (s, got, waited)
    });
    // B is blocked on A's lock file (the kernel shows its waiter) before A lets go.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !flock_waiter_on(ino) {
        assert!(Instant::now() < deadline, "B never waited for the lock");
        std::thread::yield_now();
    }
    let released = Instant::now();
    drop(a);
    let (s, got, waited) = b.join().unwrap();
    // A's report and B's may arrive in either order: B can take the lock, release it and report
    // between A's unlock and A's own report.
    let mut reports: std::collections::HashMap<_, _> = rx.iter().take(2).collect();
    let ta = reports.remove("a").expect("A reported its release");
    let tb = reports.remove("b").expect("B reported its release");
    assert_eq!(ta.name, "block");
    assert!(ta.held >= released - a_held_from, "{ta:?}");
    assert_eq!(tb.waited, waited);
    // B got the lock only after A's release, and its wait is within its own claim call.
    assert!(
        got >= released && waited > Duration::ZERO && waited <= got - s,
        "{tb:?}"
    );
}
