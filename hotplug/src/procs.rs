//! Finding the children a killed script left behind.
//!
//! libxl SIGKILLs only the script: an `nbd-client` it started keeps connecting, an `iscsiadm`
//! keeps waiting for iscsid's login, an `ovs-vsctl` or `nft` still commits its transaction, and
//! each then finishes with nobody to record what it made — possibly after the teardown libxl
//! runs next has already run. A teardown finds such orphans under `/proc`, by their command
//! line (the program and the device or target they were given) or by the `XENBUS_PATH` every
//! child of a script inherits ([`Procs::orphans_of`]), and stops them or waits for them before
//! it undoes what they did.
//!
//! A child caught between its creation and its `exec` (the script killed while spawning it)
//! still looks like the script — our executable, the script's command line — and only becomes
//! the tool a moment later, so [`Procs::orphans_of`] counts those too, and a process is
//! followed by its pid and start time, not by its command line, which the `exec` changes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a process's empty command line is taken for one in the middle of its `exec`.
const EXEC_SETTLES: Duration = Duration::from_millis(500);

/// `PF_KTHREAD` in the flags of `/proc/<pid>/stat`: a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// A process found under `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its pid.
    pub pid: i32,
    /// Its command line.
    pub argv: Vec<String>,
    /// Its start time (clock ticks after boot): with the pid, what tells it from a later process
    /// that got the same pid.
    pub start: u64,
}

/// Where the processes are (`/proc`; injected for tests).
#[derive(Debug, Clone)]
pub struct Procs {
    /// The proc filesystem.
    pub root: PathBuf,
}

impl Default for Procs {
    fn default() -> Self {
        Procs {
            root: "/proc".into(),
        }
    }
}

/// True when `argv` runs `program`: its first word, or (for a script run through its
/// interpreter, `sh /path/program …`) its second, has that file name.
pub fn runs(argv: &[String], program: &str) -> bool {
    let named = |a: &String| Path::new(a).file_name().is_some_and(|n| n == program);
    argv.first().is_some_and(named) || (argv.len() > 1 && named(&argv[1]))
}

/// The whole of a small `/proc` file: open, read, close (`std::fs::read` also asks the file's
/// size first, which `/proc` files do not know); a file larger than the first read is read on
/// until its end.
fn read_proc_file(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                // A short read of a /proc file that fits is all of it (one `show` call).
                if len < buf.len() {
                    break;
                }
                buf.resize(buf.len() * 2, 0);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    Some(buf)
}

impl Procs {
    /// The start time of process `pid` (field 22 of its `stat`), while it is alive and not a
    /// zombie; `None` otherwise. One read: what tells a run's mark from a later process that got
    /// its pid ([`crate::runs`]).
    pub fn start_of(&self, pid: i32) -> Option<u64> {
        let stat = read_proc_file(&self.root.join(pid.to_string()).join("stat"))?;
        let stat = String::from_utf8(stat).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        if matches!(*fields.first()?, "Z" | "X") {
            return None;
        }
        fields.get(19)?.parse().ok()
    }

    fn live(&self, pid: i32) -> Option<Proc> {
        let dir = self.root.join(pid.to_string());
        // A zombie (exited, not reaped yet) is gone for our purposes.
        let stat = String::from_utf8(read_proc_file(&dir.join("stat"))?).ok()?;
        // After the command name: state (field 3), …, starttime (field 22).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let state = *fields.first()?;
        if state == "Z" || state == "X" {
            return None;
        }
        // A kernel thread (field 9, flags) has no command line and no executable: nothing a
        // script started. Skipping it here spares the reads below for each of them, which is
        // most of a look in a dom0 (blkback and netback run threads per device): issue 21.
        if fields.get(6)?.parse::<u64>().ok()? & PF_KTHREAD != 0 {
            return None;
        }
        let start = fields.get(19)?.parse().ok()?;
        let cmdline = || read_proc_file(&dir.join("cmdline")).unwrap_or_default();
        let mut raw = cmdline();
        // Empty for a process that is exiting, and for a moment during an `exec`: the kernel
        // lets the parent of a `vfork` (what `posix_spawn` is) go on before it has set the new
        // command line up, so a child just spawned may still show none. Only the last has an
        // executable (`exe`): its command line is there a moment later.
        if raw.is_empty() && std::fs::read_link(dir.join("exe")).is_ok() {
            let deadline = Instant::now() + EXEC_SETTLES;
            while raw.is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
                raw = cmdline();
            }
        }
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some(Proc { pid, argv, start })
    }

    /// Every live process (not this one) whose command line satisfies `pred`.
    pub fn find(&self, pred: impl Fn(&[String]) -> bool) -> Vec<Proc> {
        let me = std::process::id() as i32;
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut v: Vec<Proc> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != me)
            .filter_map(|pid| self.live(pid))
            .filter(|p| pred(&p.argv))
            .collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    /// True when process `pid`'s environment has `key=value`.
    pub fn env_has(&self, pid: i32, key: &str, value: &str) -> bool {
        let want = format!("{key}={value}");
        read_proc_file(&self.root.join(pid.to_string()).join("environ"))
            .map(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
            .unwrap_or(false)
    }

    /// Processes a script for `backend` started (their environment has `XENBUS_PATH=<backend>`:
    /// children get the script's environment) that run one of `programs` (by [`runs`]) or are
    /// still this executable (a child not yet `exec`ed: it will become one of them).
    pub fn orphans_of(&self, backend: &str, programs: &[&str]) -> Vec<Proc> {
        let me = std::fs::read_link(self.root.join("self/exe")).ok();
        self.find(|_| true)
            .into_iter()
            .filter(|p| {
                programs.iter().any(|prog| runs(&p.argv, prog))
                    || (me.is_some()
                        && std::fs::read_link(self.root.join(p.pid.to_string()).join("exe")).ok()
                            == me)
            })
            .filter(|p| self.env_has(p.pid, "XENBUS_PATH", backend))
            .collect()
    }

    /// True while `p` (the same pid, started at the same time) is alive, whatever it `exec`ed
    /// since.
    pub fn alive(&self, p: &Proc) -> bool {
        self.live(p.pid).is_some_and(|q| q.start == p.start)
    }

    /// SIGKILL each of `procs` and wait until all are gone, at most until `until`; the ones
    /// still alive then.
    pub fn kill_and_wait(&self, procs: &[Proc], until: Instant) -> Vec<Proc> {
        for p in procs {
            if self.alive(p) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        self.wait_gone(procs, until)
    }

    /// Wait until each of `procs` has exited, at most until `until`; the ones still alive then.
    pub fn wait_gone(&self, procs: &[Proc], until: Instant) -> Vec<Proc> {
        let mut pause = Duration::from_millis(1);
        loop {
            let left: Vec<Proc> = procs.iter().filter(|p| self.alive(p)).cloned().collect();
            let now = Instant::now();
            if left.is_empty() || now >= until {
                return left;
            }
            std::thread::sleep(pause.min(until - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(runs(
            &v(&["nbd-client", "h", "10809", "/dev/nbd0"]),
            "nbd-client"
        ));
        assert!(runs(
            &v(&["/usr/sbin/nbd-client", "-d", "/dev/nbd0"]),
            "nbd-client"
        ));
        assert!(runs(
            &v(&["/bin/sh", "/tmp/bin/nbd-client", "x"]),
            "nbd-client"
        ));
        assert!(!runs(&v(&["nbd-clientx"]), "nbd-client"));
        assert!(!runs(&v(&["vi", "x", "nbd-client"]), "nbd-client"));
        assert!(!runs(&v(&[]), "nbd-client"));
    }

    /// A process is followed through its `exec` (a child caught before it, when its script
    /// was killed, becomes the tool later), and not confused with a later one on its pid.
    #[test]
    fn a_process_is_followed_through_exec() {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let procs = Procs::default();
        let pid = child.id() as i32;
        // Spawned: the shell once it has exec'd (before that it is still this test binary).
        let deadline = Instant::now() + Duration::from_secs(5);
        let before = loop {
            let p = procs.live(pid).expect("the child");
            if p.argv.first().map(String::as_str) == Some("sh") {
                break p;
            }
            assert!(Instant::now() < deadline, "no exec of sh");
            std::thread::sleep(Duration::from_millis(2));
        };
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while procs
            .live(pid)
            .is_some_and(|p| p.argv.first().map(String::as_str) != Some("sleep"))
        {
            assert!(Instant::now() < deadline, "no exec");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(procs.alive(&before), "the same process, now sleep");
        let left = procs.kill_and_wait(
            std::slice::from_ref(&before),
            Instant::now() + Duration::from_secs(5),
        );
        assert!(left.is_empty());
        let _ = child.wait();
        assert!(!procs.alive(&before));
        // A pid reused later is another process.
        let other = Proc {
            start: before.start + 1,
            ..before
        };
        assert!(!procs.alive(&other));
    }

    /// Kernel threads are never taken for processes (they have neither a command line nor an
    /// executable), and a look does not read their command lines: every one on this host (there
    /// always are some: `kthreadd` and its children) is absent from `live`, while this process
    /// is there.
    #[test]
    fn kernel_threads_are_not_processes() {
        let procs = Procs::default();
        let kthreads: Vec<i32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid: &i32| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                    st.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
                        .is_some_and(|f| f & PF_KTHREAD != 0)
                })
            })
            .collect();
        assert!(!kthreads.is_empty(), "no kernel thread found under /proc");
        for pid in &kthreads {
            assert_eq!(procs.live(*pid), None, "kernel thread {pid}");
        }
        let me = procs.live(std::process::id() as i32).expect("this process");
        assert!(!me.argv.is_empty());
    }

    /// A child looked at right after `spawn` returned, before the kernel finished its `exec`,
    /// shows its command line all the same (without the wait, one in ~40 here shows none).
    #[test]
    fn a_child_in_the_middle_of_its_exec_shows_its_command_line() {
        let procs = Procs::default();
        for round in 0..300 {
            // A second interval `sleep` adds up: what tells this child from any other.
            let tag = format!("0.{}{round:03}", std::process::id());
            let mut child = std::process::Command::new("sleep")
                .args(["30", &tag])
                .spawn()
                .unwrap();
            let p = procs.live(child.id() as i32);
            let _ = child.kill();
            let _ = child.wait();
            let argv = p.expect("the child").argv;
            assert_eq!(argv, ["sleep", "30", &tag], "round {round}");
        }
    }

    #[test]
    fn orphans_are_found_by_their_backend() {
        let tag = format!("backend/vif/{}/9", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("XENBUS_PATH", &tag)
            .spawn()
            .unwrap();
        let procs = Procs::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let f = procs.orphans_of(&tag, &["sleep"]);
            if !f.is_empty() || Instant::now() >= deadline {
                break f;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid, child.id() as i32);
        assert!(procs.orphans_of("backend/vif/0/0", &["sleep"]).is_empty());
        assert!(procs.orphans_of(&tag, &["nft"]).is_empty());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn finds_kills_and_waits_for_a_process() {
        let tag = format!("xenplug-procs-test-{}", std::process::id());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exec sleep 30", &tag])
            .spawn()
            .unwrap();
        let procs = Procs::default();
        let want = |a: &[String]| a.first().is_some_and(|a| a == "sleep") && a.len() == 2;
        // `exec` replaces the shell; wait (bounded) until the exec happened.
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let f: Vec<Proc> = procs
                .find(want)
                .into_iter()
                .filter(|p| p.pid == child.id() as i32)
                .collect();
            if !f.is_empty() || Instant::now() >= deadline {
                break f;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].argv, ["sleep", "30"]);
        // A zombie counts as gone: the child is not reaped until after the wait.
        let left = procs.kill_and_wait(&found, Instant::now() + Duration::from_secs(5));
        assert!(left.is_empty(), "{left:?}");
        let _ = child.wait();
        assert!(!procs.alive(&found[0]));
    }
}
