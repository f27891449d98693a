//! Shared test rig: a pty pair standing in for the channel, the agent binary as a child process
//! (killed on drop, also when a test panics), and a host-side client using the protocol crate.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::{json, Value};
use xenplug_channel::host::{HostEvent, HostSession, Nonces};
use xenplug_channel::{Limits, Response};

pub mod minroot;

pub use xenplug_testkit::Killed;

/// A pty pair. `master` is the dom0 side; `slave_path` is what the agent opens. The slave fd is
/// kept open, as the hvc ring keeps its state (and a closed pty slave would make master reads fail).
pub struct Pty {
    pub master: File,
    pub slave: OwnedFd,
    pub slave_path: PathBuf,
}

impl Pty {
    pub fn new() -> Pty {
        let p = nix::pty::openpty(None, None).expect("openpty");
        let slave_path =
            std::fs::read_link(format!("/proc/self/fd/{}", p.slave.as_raw_fd())).unwrap();
        let master = File::from(p.master);
        nix::fcntl::fcntl(
            master.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        Pty {
            master,
            slave: p.slave,
            slave_path,
        }
    }

    /// True when the slave is in raw mode (no ECHO, no ICANON, no OPOST).
    pub fn slave_is_raw(&self) -> bool {
        let t = nix::sys::termios::tcgetattr(self.slave.as_fd()).unwrap();
        use nix::sys::termios::{LocalFlags, OutputFlags};
        !t.local_flags.contains(LocalFlags::ECHO)
            && !t.local_flags.contains(LocalFlags::ICANON)
            && !t.output_flags.contains(OutputFlags::OPOST)
    }

    pub fn send(&mut self, data: &[u8]) {
        let mut rest = data;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !rest.is_empty() {
            match self.master.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "pty write stuck");
                    let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(100u16));
                }
                Err(e) => panic!("pty write: {e}"),
            }
        }
    }

    /// Read whatever arrives within `wait` (returns early once `done` says so).
    pub fn read_for(&mut self, wait: Duration, done: &mut dyn FnMut(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            let _ = poll(
                &mut fds,
                PollTimeout::from(left.as_millis().min(200) as u16),
            );
            match self.master.read(&mut buf) {
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if done(&out) {
                        return out;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("pty read: {e}"),
            }
        }
    }
}

/// The agent as a child process; SIGTERM then SIGKILL on drop.
pub struct AgentProc {
    pub child: Child,
    pub root: tempfile::TempDir,
}

impl AgentProc {
    pub fn spawn(args: &[&str], root: tempfile::TempDir) -> AgentProc {
        Self::spawn_in(&[], args, root)
    }

    /// Run the agent under `prefix` (e.g. `ip netns exec NS unshare --uts --mount --`); every
    /// prefix program must exec (not fork) so the child's pid is the agent's.
    pub fn spawn_in(prefix: &[&str], args: &[&str], root: tempfile::TempDir) -> AgentProc {
        Self::spawn_env(prefix, args, &[], root)
    }

    /// `spawn_in` with environment variables.
    pub fn spawn_env(
        prefix: &[&str],
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        root: tempfile::TempDir,
    ) -> AgentProc {
        Self::spawn_full(prefix, args, env, root, Stdio::inherit())
    }

    /// `spawn_in` with the agent's stderr (its log) going to `log`.
    pub fn spawn_logged(
        prefix: &[&str],
        args: &[&str],
        root: tempfile::TempDir,
        log: &Path,
    ) -> AgentProc {
        let f = std::fs::File::create(log).expect("agent log");
        Self::spawn_full(prefix, args, &[], root, Stdio::from(f))
    }

    fn spawn_full(
        prefix: &[&str],
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        root: tempfile::TempDir,
        stderr: Stdio,
    ) -> AgentProc {
        let agent = env!("CARGO_BIN_EXE_xenplug-agent");
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(agent);
                c
            }
            None => Command::new(agent),
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Never publish into whatever xenstore the test machine has, unless asked to.
        if !args.contains(&"--guest-state") {
            cmd.arg("--no-guest-state");
        }
        let child = cmd
            .args(args)
            .arg("--root")
            .arg(root.path())
            .arg("--config")
            .arg(root.path().join("etc/xenplug/agent.toml"))
            .arg("--shutdown-program")
            .arg(root.path().join("fake-shutdown"))
            .arg("--statedir")
            .arg(root.path().join("run/xenplug-agent"))
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn xenplug-agent");
        AgentProc { child, root }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // Already reaped (a test waited for it): its pid may be someone else's now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A guest root with passwd/shadow/os-release, a user `alice` (uid 4242) with a home, and a
/// recording shutdown program.
pub fn guest_root() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("xenplug-guest-")
        .tempdir()
        .unwrap();
    let r = d.path();
    for sub in ["etc", "home/alice", "root", "var/lib", "lib/systemd"] {
        std::fs::create_dir_all(r.join(sub)).unwrap();
    }
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nalice:x:4242:4242:Alice:/home/alice:/bin/bash\n",
    )
    .unwrap();
    std::fs::write(
        r.join("etc/shadow"),
        "root:*:19000:0:99999:7:::\nalice:!:19000:0:99999:7:::\n",
    )
    .unwrap();
    std::fs::write(
        r.join("etc/os-release"),
        "PRETTY_NAME=\"Test GNU/Linux 12\"\nNAME=\"Test GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (test)\"\nID=test\n",
    )
    .unwrap();
    std::fs::write(r.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    // systemd-networkd is installed (what the agent detects when nothing else is).
    std::fs::write(r.join("lib/systemd/systemd-networkd"), "").unwrap();
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(r.join("home/alice"), Some(4242), Some(4242)).unwrap();
    }
    let rec = r.join("fake-shutdown");
    std::fs::write(
        &rec,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\n",
            r.join("shutdown.log").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Wait until `cond` holds (polling), panicking with `what` after `wait`.
pub fn wait_until(what: &str, wait: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Host side of a session over a pty, through the shared host session (the dom0 peer's
/// handshake and reply matching).
pub struct Host {
    pub pty: Pty,
    pub session: HostSession,
    /// Every byte received (for assertions on the raw stream).
    pub raw: Vec<u8>,
    /// Every guest event received, in order.
    pub events: Vec<(String, Value)>,
}

impl Host {
    pub fn new(pty: Pty) -> Host {
        Host {
            pty,
            session: HostSession::new(Limits::default(), Nonces::seeded(0)),
            raw: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Read for up to `wait`, feeding the session, until `stop` accepts the events so far.
    pub fn recv(&mut self, wait: Duration, stop: &dyn Fn(&[HostEvent]) -> bool) -> Vec<HostEvent> {
        let deadline = Instant::now() + wait;
        let mut evs = Vec::new();
        let mut buf = [0u8; 65536];
        while !stop(&evs) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut fds = [PollFd::new(self.pty.master.as_fd(), PollFlags::POLLIN)];
            let _ = poll(
                &mut fds,
                PollTimeout::from(left.as_millis().min(100) as u16),
            );
            match self.pty.master.read(&mut buf) {
                Ok(n) => {
                    self.raw.extend_from_slice(&buf[..n]);
                    for e in self.session.feed(&buf[..n]) {
                        if let HostEvent::GuestEvent { name, data } = &e {
                            self.events.push((name.clone(), data.clone()));
                        }
                        evs.push(e);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("pty read: {e}"),
            }
        }
        evs
    }

    /// Repeat `0xFF` + guest-sync-delimited (fresh nonce each time) until answered; returns
    /// the number of attempts.
    pub fn handshake(&mut self, wait: Duration) -> u32 {
        let deadline = Instant::now() + wait;
        let mut tries = 0;
        loop {
            assert!(
                Instant::now() < deadline,
                "no handshake after {tries} tries"
            );
            tries += 1;
            let bytes = self.session.begin_sync();
            self.pty.send(&bytes);
            let evs = self.recv(Duration::from_millis(300), &|e| {
                e.contains(&HostEvent::Synced)
            });
            if evs.contains(&HostEvent::Synced) {
                return tries;
            }
        }
    }

    /// Send a request (after a handshake) and wait for its reply; the reply's `id` is the
    /// request's (the session matched it).
    pub fn call(&mut self, execute: &str, args: Option<Value>) -> Response {
        self.call_for(execute, args, Duration::from_secs(10))
    }

    /// `call` with a deadline of its own.
    pub fn call_for(&mut self, execute: &str, args: Option<Value>, wait: Duration) -> Response {
        let (id, bytes) = self.session.request(execute, args.as_ref());
        self.pty.send(&bytes);
        let evs = self.recv(wait, &|e| {
            e.iter().any(|e| matches!(e, HostEvent::Reply { .. }))
        });
        for e in evs {
            if let HostEvent::Reply { id: rid, result } = e {
                assert_eq!(rid, id);
                return match result {
                    Ok(value) => Response::ok(value, Some(json!(id))),
                    Err(error) => Response::err(error, Some(json!(id))),
                };
            }
        }
        panic!("no reply to {execute}");
    }

    /// `call` expecting success.
    pub fn ok(&mut self, execute: &str, args: Option<Value>) -> Value {
        match self.call(execute, args) {
            Response::Return { value, .. } => value,
            Response::Error { error, .. } => panic!("{execute}: {error}"),
        }
    }
}

/// A path to a helper program the channel tests use (see tools/channel-deps.sh).
pub fn dep(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("XENPLUG_CHANNEL_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/xenplug-channel-deps"));
    let p = dir.join("bin").join(name);
    p.exists().then_some(p)
}

/// `dep`, or fail in CI / skip elsewhere.
pub fn require_dep(name: &str) -> Option<PathBuf> {
    let p = dep(name);
    if xenplug_testkit::require(
        p.is_some(),
        &format!("needs {name}: run tools/channel-deps.sh"),
    ) {
        p
    } else {
        None
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
