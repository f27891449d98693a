//! Helpers for tests that need real kernel objects or real peer programs.
//!
//! A test that cannot get what it needs (root, a network namespace, loop devices, a program from
//! Debian) calls [`require`]. Outside CI it prints why it is skipped and returns `false`; with the
//! `CI` environment variable set it panics, so a privileged test can never pass silently in CI.
//! Either way, when `XENPLUG_SKIP_LOG` names a file, a line naming the test and the reason is
//! appended to it, so the test command can list every skip at the end (the test harness keeps a
//! passing test's stderr to itself).
//!
//! [`golden`] compares planners' outputs with golden files kept in the repository.

use std::path::Path;
use std::process::Command;

pub mod golden;

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => false,
    }
}

/// Gate a test on a precondition. Returns `ok`. When `ok` is false: in CI, panic naming `what`;
/// elsewhere, print a skip line to stderr.
#[track_caller]
pub fn require(ok: bool, what: &str) -> bool {
    if !ok {
        record_skip(&format!(
            "{} ({}): {what}",
            std::thread::current().name().unwrap_or("?"),
            std::panic::Location::caller()
        ));
        if in_ci() {
            panic!("CI is set and this test cannot run: {what}");
        }
        eprintln!("SKIP ({}): {what}", std::panic::Location::caller());
    }
    ok
}

/// Append `line` to the file `XENPLUG_SKIP_LOG` names, if any (one `write` of a whole line with
/// O_APPEND, so tests running in parallel never interleave).
fn record_skip(line: &str) {
    use std::io::Write;
    let Some(path) = std::env::var_os("XENPLUG_SKIP_LOG").filter(|p| !p.is_empty()) else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// Wait until `cond` holds, polling it (every 10 ms) up to `timeout`; panic naming `what` if it
/// never does. Tests wait for the condition itself this way, never for a fixed time.
#[track_caller]
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        if std::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A child process killed (and reaped) on drop, so a test that fails leaves it behind neither
/// running nor as a zombie.
#[derive(Debug)]
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True when the effective user is root.
pub fn is_root() -> bool {
    // `id -u` keeps this crate free of libc/unsafe.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Require root (see [`require`]).
#[track_caller]
pub fn require_root() -> bool {
    require(is_root(), "needs root")
}

/// Require an executable on PATH (see [`require`]).
#[track_caller]
pub fn require_program(name: &str) -> bool {
    require(
        which(name).is_some(),
        &format!("needs the program `{name}`"),
    )
}

/// Find an executable on PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(Into::into))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A network namespace made for one test, deleted (with every link in it) on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Create a fresh namespace named `xpt-<tag>-<pid>-<n>` with its loopback up.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "xpt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// The namespace's name (for `ip -n NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mount path, `/run/netns/<name>`.
    pub fn path(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which also remounts
    /// /sys so sysfs shows the namespace's links).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Run `ip -n <ns> <args…>` and fail on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> std::io::Result<String> {
        let out = run_ok(Command::new("ip").args(["-n", &self.name]).args(args))?;
        Ok(out)
    }

    /// Run `f` on a thread that has entered the namespace (so sockets it opens, netlink
    /// included, live there), and return what it returns. Panics in `f` propagate.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsFd;
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path).expect("open the namespace");
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter the namespace");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// `tc ARGS…` in the namespace, its stdout (panics on failure: a test oracle).
    pub fn tc(&self, args: &[&str]) -> String {
        let out = self.command("tc").args(args).output().expect("run tc");
        assert!(out.status.success(), "tc {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("tc output is UTF-8")
    }

    /// `nft ARGS…` in the namespace, its stdout (panics on failure: a test oracle).
    pub fn nft(&self, args: &[&str]) -> String {
        let out = self.command("nft").args(args).output().expect("run nft");
        assert!(out.status.success(), "nft {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("nft output is UTF-8")
    }

    /// `nft -f -` in the namespace with `script` on stdin (panics on failure: a test's set-up).
    pub fn nft_script(&self, script: &str) {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .expect("nft's stdin")
            .write_all(script.as_bytes())
            .expect("write nft's script");
        assert!(
            child.wait().expect("wait for nft").success(),
            "nft -f - failed on:\n{script}"
        );
    }

    /// `tc -j ARGS…` in the namespace as a JSON array (empty output: empty array).
    pub fn tc_json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let text = self.tc(&a);
        if text.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str::<serde_json::Value>(&text)
            .expect("tc -j output is JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The ingress qdiscs of `dev` (`tc -j qdisc show dev DEV ingress`).
    pub fn ingress_qdiscs(&self, dev: &str) -> Vec<serde_json::Value> {
        self.tc_json(&["qdisc", "show", "dev", dev, "ingress"])
    }

    /// The filters of `dev`'s ingress that carry options, with statistics (`tc -s -j filter
    /// show`; the other entries are per-priority headers).
    pub fn ingress_filters(&self, dev: &str) -> Vec<serde_json::Value> {
        self.tc_json(&["-s", "filter", "show", "dev", dev, "ingress"])
            .into_iter()
            .filter(|f| f.get("options").is_some())
            .collect()
    }

    /// `ip -j -n <ns> <args…>` parsed output as a string (callers parse the JSON they need).
    pub fn ip_json(&self, args: &[&str]) -> std::io::Result<String> {
        let out = run_ok(Command::new("ip").args(["-j", "-n", &self.name]).args(args))?;
        Ok(out)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Run a command; error (with its stderr) on a non-zero exit; return its stdout.
pub fn run_ok(cmd: &mut Command) -> std::io::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
