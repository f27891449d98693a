//! One environment for both agents: a private mount namespace whose root is a tmpfs holding
//! Debian's qemu-ga, our agent, /bin/sh and their libraries, with /proc, /sys and /dev from the
//! host and ONE real filesystem: an ext4 image on a loop device at /mnt/data. Inside the chroot,
//! /proc/self/mountinfo lists only that filesystem as local, so `guest-fsfreeze-freeze`,
//! `guest-fstrim` and `guest-get-fsinfo` of either agent act on it alone — never on the host's.
//!
//! The loop filesystem is also mounted on the host (a temporary directory), where the tests
//! write to it and watch writes block while it is frozen. Everything is undone on drop, also
//! when a test panics: agents killed, the filesystem thawed, unmounted, the loop device freed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xenplug_channel::host::{HostEvent, HostSession, Nonces};
use xenplug_channel::Limits;

/// Where tools/channel-deps.sh unpacked Debian's qemu-guest-agent.
pub fn qemu_ga_binary() -> Option<PathBuf> {
    let dir = std::env::var_os("XENPLUG_CHANNEL_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/xenplug-channel-deps"));
    let p = dir.join("qga/root/usr/sbin/qemu-ga");
    p.exists().then_some(p)
}

const SETUP: &str = r#"#!/bin/sh
# setup.sh ROOT DATA QGA AGENT UTMP_TEXT: build the root, then hold the namespace.
set -e
R=$1; DATA=$2; QGA=$3; AGENT=$4; UTMP=$5
mount -t tmpfs -o size=256m,mode=755 xenplug-minroot "$R"
mkdir -p "$R/bin" "$R/sbin" "$R/etc/qemu" "$R/etc/xenplug" "$R/dev" "$R/proc" "$R/sys" \
  "$R/run" "$R/tmp" "$R/mnt/data" "$R/st" "$R/var" "$R/home/alice/.ssh" "$R/root"
chmod 1777 "$R/tmp"
ln -s ../run "$R/var/run"
copy() { # FILE DEST: the file and its libraries
  mkdir -p "$R$(dirname "$2")"; cp -L "$1" "$R$2"
  ldd "$1" 2>/dev/null | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | while read -r l; do
    if [ -n "$l" ] && [ -e "$l" ]; then mkdir -p "$R$(dirname "$l")"; cp -Ln "$l" "$R$l"; fi
  done
}
copy "$QGA" /usr/sbin/qemu-ga
copy "$AGENT" /usr/sbin/xenplug-agent
copy /bin/dash /bin/sh
cp /etc/os-release "$R/etc/os-release" 2>/dev/null || cp /usr/lib/os-release "$R/etc/os-release"
[ -e /etc/localtime ] && cp -L /etc/localtime "$R/etc/localtime"
printf 'root:x:0:0:root:/root:/bin/sh\nalice:x:4242:4242:Alice:/home/alice:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\nalice:x:4242:\n' > "$R/etc/group"
printf 'root:*:19000:0:99999:7:::\nalice:!:19000:0:99999:7:::\n' > "$R/etc/shadow"
chmod 640 "$R/etc/shadow"
chown -R 4242:4242 "$R/home/alice"
# An hwclock that fails: set-time reaches it without ever touching the host's clocks.
printf '#!/bin/sh\nexit 1\n' > "$R/sbin/hwclock"; chmod 755 "$R/sbin/hwclock"
printf '%s\n' "$UTMP" | utmpdump -r > "$R/run/utmp" 2>/dev/null
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --bind "$DATA" "$R/mnt/data"
echo ready
exec sleep infinity
"#;

/// A login record (utmpdump's text format): alice on pts/1 since 2024-03-01 10:00:00.5 UTC.
pub const UTMP_RECORD: &str = "[7] [04242] [ts/1] [alice   ] [pts/1       ] [192.0.2.7           ] [192.0.2.7      ] [2024-03-01T10:00:00,500000+00:00]";

/// The environment (see the module docs).
pub struct MiniRoot {
    pub tmp: tempfile::TempDir,
    /// The loop filesystem as the host sees it.
    pub data: PathBuf,
    loopdev: String,
    holder: Child,
    /// The chroot's root, as seen from inside the namespace.
    pub root: PathBuf,
    children: Vec<Child>,
    /// Names channel sockets and links uniquely.
    seq: usize,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl MiniRoot {
    /// Build it (root needed).
    pub fn new(qga: &Path) -> MiniRoot {
        let tmp = tempfile::Builder::new()
            .prefix("xenplug-minroot-")
            .tempdir()
            .unwrap();
        let img = tmp.path().join("data.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        let loopdev = run(Command::new("losetup").args(["-f", "--show"]).arg(&img));
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let mounted = Command::new("mount").arg(&loopdev).arg(&data).status();
        if !mounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("losetup").arg("-d").arg(&loopdev).status();
            panic!("mount {loopdev}");
        }
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let script = tmp.path().join("setup.sh");
        std::fs::write(&script, SETUP).unwrap();
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh"])
            .arg(&script)
            .arg(&root)
            .arg(&data)
            .arg(qga)
            .arg(env!("CARGO_BIN_EXE_xenplug-agent"))
            .arg(UTMP_RECORD)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mr = MiniRoot {
            tmp,
            data,
            loopdev,
            holder,
            root,
            children: Vec::new(),
            seq: 0,
        };
        assert_eq!(line.trim(), "ready", "the namespace set-up failed");
        mr
    }

    /// A command run inside the namespace, chrooted (`nsenter` and `chroot` exec: the child's
    /// pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg("chroot")
            .arg(&self.root)
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null());
        c
    }

    /// Run a shell command inside the chroot, returning its stdout.
    pub fn sh(&self, script: &str) -> String {
        run(self.command("/bin/sh").arg("-c").arg(script))
    }

    /// A file of the chroot, reached from the host through the holder's root.
    pub fn path(&self, abs: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root{}{}",
            self.holder.id(),
            self.root.display(),
            abs
        ))
    }

    /// Start a long-running program in the chroot; it is killed on drop.
    pub fn spawn(&mut self, cmd: &mut Command) -> u32 {
        let c = cmd.spawn().unwrap();
        let pid = c.id();
        self.children.push(c);
        pid
    }

    /// Stop one program started with [`MiniRoot::spawn`] with `signal`, and reap it.
    pub fn signal(&mut self, pid: u32, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                assert!(Instant::now() < deadline, "pid {pid} did not stop");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Debian's qemu-ga in the chroot, listening on /run/qga.sock; with `hook`, running the
    /// fsfreeze hook (`-F`, /etc/qemu/fsfreeze-hook).
    pub fn start_qemu_ga(&mut self, hook: bool) -> Agent {
        let mut c = self.command("/usr/sbin/qemu-ga");
        c.args([
            "-m",
            "unix-listen",
            "-p",
            "/run/qga.sock",
            "-t",
            "/st",
            "-l",
            "/run/qga.log",
        ]);
        if hook {
            c.arg("-F");
        }
        let pid = self.spawn(&mut c);
        let sock = PathBuf::from(format!("/proc/{pid}/root/run/qga.sock"));
        crate::common::wait_until("qemu-ga's socket", Duration::from_secs(10), || {
            sock.exists()
        });
        Agent {
            pid,
            sock,
            _socat: None,
        }
    }

    /// Our agent in the chroot on a pty joined to a Unix socket by socat (as QEMU joins a
    /// channel), with `extra` arguments; every command enabled unless `extra` says otherwise.
    pub fn start_ours(&mut self, config: &str, extra: &[&str]) -> Agent {
        let dir = self.tmp.path();
        self.seq += 1;
        let n = self.seq;
        let sock = dir.join(format!("ours{n}.sock"));
        let link = dir.join(format!("hvc{n}"));
        // QEMU keeps the channel's pty open whatever the guest does; socat ends when it reads
        // EIO from a pty whose slave nobody holds, so it starts serving only once the agent
        // opened the slave (`wait-slave`): its socket appearing means the agent is up.
        let socat = Command::new(xenplug_testkit::which("socat").expect("socat"))
            .arg(format!("PTY,link={},wait-slave", link.display()))
            .arg(format!("UNIX-LISTEN:{}", sock.display()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let socat = crate::common::Killed(socat);
        crate::common::wait_until("socat's pty", Duration::from_secs(10), || link.exists());
        let pts = std::fs::read_link(&link).unwrap();
        std::fs::write(self.path("/etc/xenplug/agent.toml"), config).unwrap();
        let mut c = self.command("/usr/sbin/xenplug-agent");
        c.arg("--device")
            .arg(&pts)
            .args(["--statedir", "/st/ours", "--no-guest-state"])
            .args(["--shutdown-program", "/bin/false", "--no-live-network"])
            .args(extra);
        let pid = self.spawn(&mut c);
        crate::common::wait_until("our agent on the pty", Duration::from_secs(20), || {
            sock.exists()
        });
        Agent {
            pid,
            sock,
            _socat: Some(socat),
        }
    }

    /// A writer on the host: `sh -c 'printf DATA > FILE'` on the loop filesystem.
    pub fn writer(&self, name: &str, payload: &str) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf %s '{payload}' > '{}'",
                self.data.join(name).display()
            ))
            .spawn()
            .unwrap()
    }
}

impl Drop for MiniRoot {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The holder's process group: the shell's `sleep` and anything it started.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.holder.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.holder.wait();
        // A test that failed while frozen must not leave the filesystem frozen.
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.data)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount").arg(&self.data).status();
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.loopdev)
            .status();
    }
}

/// One agent of the environment and its channel socket.
pub struct Agent {
    pub pid: u32,
    pub sock: PathBuf,
    _socat: Option<crate::common::Killed>,
}

/// A dom0-side client through the shared host session.
pub struct Client {
    stream: UnixStream,
    pub session: HostSession,
    buf: Vec<u8>,
    /// Guest events received.
    pub events: Vec<(String, Value)>,
}

impl Client {
    /// Connect and handshake (retrying until the agent answers).
    pub fn connect(agent: &Agent) -> Client {
        let stream = UnixStream::connect(&agent.sock)
            .unwrap_or_else(|e| panic!("{}: {e}", agent.sock.display()));
        let mut c = Client {
            stream,
            session: HostSession::new(
                Limits {
                    max_frame: 64 << 20,
                    max_depth: 64,
                },
                Nonces::seeded(u64::from(agent.pid)),
            ),
            buf: vec![0; 1 << 16],
            events: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no handshake");
            let b = c.session.begin_sync();
            c.stream.write_all(&b).unwrap();
            if c.recv(Duration::from_millis(500))
                .contains(&HostEvent::Synced)
            {
                return c;
            }
        }
    }

    fn recv(&mut self, wait: Duration) -> Vec<HostEvent> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        match self.stream.read(&mut self.buf) {
            Ok(0) => panic!("the channel closed"),
            Ok(n) => {
                let evs = self.session.feed(&self.buf[..n]);
                for e in &evs {
                    if let HostEvent::GuestEvent { name, data } = e {
                        self.events.push((name.clone(), data.clone()));
                    }
                }
                evs
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        // A signal (the children the agent starts end with SIGCHLD): read again.
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                Vec::new()
            }
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Run a command; the reply as `{"return": …}` or `{"error": …}`.
    pub fn call(&mut self, execute: &str, args: Option<Value>) -> Value {
        self.call_for(execute, args, Duration::from_secs(30))
    }

    /// `call` with a deadline.
    pub fn call_for(&mut self, execute: &str, args: Option<Value>, wait: Duration) -> Value {
        let (id, bytes) = self.session.request(execute, args.as_ref());
        if let Err(e) = self.stream.write_all(&bytes) {
            panic!("{execute}: {e}");
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no reply to {execute}");
            for e in self.recv(left.min(Duration::from_millis(500))) {
                if let HostEvent::Reply { id: rid, result } = e {
                    assert_eq!(rid, id);
                    return match result {
                        Ok(v) => json!({ "return": v }),
                        Err(e) => json!({ "error": { "class": e.class, "desc": e.desc } }),
                    };
                }
            }
        }
    }

    /// Send without waiting (commands that do not reply on success).
    pub fn send(&mut self, execute: &str, args: Option<Value>) {
        let (_id, bytes) = self.session.request(execute, args.as_ref());
        self.session.abandon();
        self.stream.write_all(&bytes).unwrap();
    }

    /// Wait up to `wait` for a guest event satisfying `f`.
    pub fn wait_event(&mut self, wait: Duration, f: &dyn Fn(&str, &Value) -> bool) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((_, d)) = self.events.iter().rev().find(|(n, d)| f(n, d)) {
                return d.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no such event; got {:?}", self.events);
            self.recv(left.min(Duration::from_millis(500)));
        }
    }
}

/// The state letter of a process (`R`, `S`, `D`, …) from /proc/PID/stat.
pub fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}
