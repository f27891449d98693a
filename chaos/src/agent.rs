//! The guest agent's apply, driven from outside as the dom0 peer drives it: our `xenplug-agent`
//! binary on a pty standing in for the channel, inside a throwaway network namespace and
//! private UTS and mount namespaces (host name, addresses and routes are the namespace's), with
//! a scratch directory as the guest's root (`--root`).
//!
//! A round: the guest is at generation A (an apply of A that completed: host name, the NIC's
//! name and MTU, an IPv4 and an IPv6 address and a default route on it, DNS, a user's ssh key
//! and password), the peer sends generation B (every one of those different), and the agent
//! is SIGKILLed at an instant drawn uniformly over the measured apply (request sent to reply
//! received). Then the agent is restarted (as systemd would), and the guest must be entirely
//! at A or entirely at B — never between — and the audit records it:
//!
//! * `guest between generations after restart` (a leak): once a fresh agent answers the
//!   handshake, before anything is re-sent — the agent recovers an interrupted apply from its
//!   durable journal when it starts (`guest-agent/src/journal.rs`), before it answers;
//! * `guest not at B after re-delivery` (a leak): after the peer re-sends B, as it does after a
//!   failure (whether the apply converges);
//! * `temporary file` (a leak): a half-written file the kill left under the root;
//! * not leaks, counted: `torn until the restart` (right after the kill, what the guest runs
//!   with until its agent is back: no apply of a dozen files and the kernel can be atomic),
//!   `at A after restart` / `at B after restart` (which way the recovery went).
//!
//! "At A" compares the host name; the NIC found by its MAC (name, MTU, up), its global
//! addresses and its routes; every entry under the root (kind, mode, owner, and the content of
//! files or the target of links, directories included; the agent's journal is a file like any
//! other, so one left behind is a difference) — with a snapshot taken after an uninterrupted
//! apply of A (B likewise). The generation number in the agent's record is checked on its own:
//! it must be A's or B's. B differs from A in every one of them (the NIC renamed, its MTU, the
//! addresses, the default route, DNS, the host name, the user's key and password).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::{json, Value};
use xenplug_channel::host::{default_limits, HostEvent, HostSession, Nonces};

use crate::harness::{put, Item, Running, Scenario, Snapshot};
use crate::world;

const MAC: &str = "00:16:3e:be:0c:01";
const INSTANCE: &str = "iid-chaos";

/// The guest's state: `(what, value)` pairs.
type State = BTreeMap<String, String>;

/// The pty standing in for the channel, and the peer's session on it (the one host-side
/// session implementation, `xenplug_channel::host`).
struct Chan {
    master: File,
    _slave: OwnedFd,
    path: PathBuf,
    session: HostSession,
}

fn session() -> HostSession {
    HostSession::new(
        default_limits(),
        Nonces::seeded(u64::from(std::process::id())),
    )
}

impl Chan {
    fn new() -> Result<Chan, String> {
        let p = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", p.slave.as_raw_fd()))
            .map_err(|e| e.to_string())?;
        Ok(Chan {
            master: File::from(p.master),
            _slave: p.slave,
            path,
            session: session(),
        })
    }

    /// Read until `want` matches an event or `wait` passes.
    fn until(&mut self, wait: Duration, want: &dyn Fn(&HostEvent) -> bool) -> Option<HostEvent> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis().clamp(1, 1000)).unwrap_or(1000);
            if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) == 0 {
                continue;
            }
            let Ok(n) = self.master.read(&mut buf) else {
                return None;
            };
            for ev in self.session.feed(&buf[..n]) {
                if want(&ev) {
                    return Some(ev);
                }
            }
        }
    }

    /// Handshake with the agent (retried: it may still be starting).
    fn handshake(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let b = self.session.begin_sync();
            self.master.write_all(&b).map_err(|e| e.to_string())?;
            if self
                .until(Duration::from_millis(100), &|e| *e == HostEvent::Synced)
                .is_some()
            {
                return Ok(());
            }
        }
        Err("the agent does not answer the handshake".into())
    }

    /// Send `xenplug-apply-config` with `config`.
    fn send(&mut self, config: &Value) -> Result<(), String> {
        let (_, bytes) = self
            .session
            .request("xenplug-apply-config", Some(&json!({ "config": config })));
        self.master.write_all(&bytes).map_err(|e| e.to_string())
    }

    fn reply(&mut self, wait: Duration) -> Result<Value, String> {
        match self.until(wait, &|e| matches!(e, HostEvent::Reply { .. })) {
            Some(HostEvent::Reply { result, .. }) => result.map_err(|e| format!("{e:?}")),
            _ => Err("no reply".into()),
        }
    }
}

/// The configuration document of generation `gen` with content `which` (`'a'` or `'b'`).
fn doc(which: char, gen: u64) -> Value {
    let (host, dev, mtu, v4, v6, gw, dns, key, hash) = match which {
        'a' => (
            "chaos-a",
            "nic0",
            1500,
            "192.0.2.10/24",
            "2001:db8:a::10/64",
            "192.0.2.1",
            "192.0.2.53",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKdh7c6XyRUHvJFOz6oUvnG9NDFjeQh79Yr0YH7oWo6q a@chaos",
            "$6$saltA$Hk7mF4.x1y2z3",
        ),
        _ => (
            "chaos-b",
            "lan0",
            1400,
            "198.51.100.20/24",
            "2001:db8:b::20/64",
            "198.51.100.1",
            "198.51.100.53",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOm8HZm3yM5Xa3yYqgJ8W6tE0YoA5cLZ8n6Rg4Xo7t2p b@chaos",
            "$6$saltB$Qw8nE5.a9b8c7",
        ),
    };
    json!({"instance-id": INSTANCE, "generation": gen,
        "hostname": host, "fqdn": format!("{host}.example.org"),
        "network": {"version": 2, "ethernets": {"lan": {"match": {"macaddress": MAC},
            "set-name": dev, "mtu": mtu,
            "addresses": [v4, v6],
            "routes": [{"to": "default", "via": gw}],
            "nameservers": {"addresses": [dns], "search": ["example.org"]}}}},
        "users": [{"name": "bench", "ssh_authorized_keys": [key], "hashed_passwd": hash}]})
}

/// The agent scenario.
pub struct Agent {
    binary: PathBuf,
    root: tempfile::TempDir,
    ns: String,
    chan: Chan,
    agent: Option<Child>,
    /// The last generation number used.
    gen: u64,
    /// `(state, generation)` of A and of B after uninterrupted applies.
    at_a: State,
    at_b: State,
    /// The generations of this round: previous (A) and new (B).
    round_gens: (u64, u64),
    /// What the round found, for [`Scenario::verdict`].
    found: Vec<Item>,
    /// What the round showed that is not a leak, for [`Scenario::observations`].
    observed: Vec<Item>,
    /// Set when the round's SIGKILL was sent.
    killed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("root", &self.root.path())
            .finish_non_exhaustive()
    }
}

/// The apply under way: the agent's pid (the kill target) and the peer's end of the channel.
struct Apply {
    pid: i32,
    chan: Chan,
    reply: Option<bool>,
    killed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Running for Apply {
    fn done(&mut self) -> Result<bool, String> {
        if self.reply.is_none() {
            if let Some(HostEvent::Reply { result, .. }) =
                self.chan.until(Duration::from_micros(1), &|e| {
                    matches!(e, HostEvent::Reply { .. })
                })
            {
                self.reply = Some(result.is_ok_and(|v| v["applied"] == json!(true)));
            }
        }
        Ok(self.reply.is_some())
    }
    fn kill(&mut self) {
        self.killed.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    fn wait(&mut self) -> Result<bool, String> {
        if self.killed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        if self.reply.is_none() {
            let v = self.chan.reply(Duration::from_secs(10))?;
            self.reply = Some(v["applied"] == json!(true));
        }
        Ok(self.reply == Some(true))
    }
}

/// The NIC with the scenario's MAC (whatever its name now): name, MTU, administrative state.
fn nic() -> Result<(String, String), String> {
    let links: Value = serde_json::from_str(&world::sh(&["ip", "-j", "link", "show"])?)
        .map_err(|e| e.to_string())?;
    let l = links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["address"] == MAC)
        .ok_or("the guest's NIC is gone")?;
    let name = l["ifname"].as_str().unwrap_or("").to_string();
    let up = l["flags"]
        .as_array()
        .is_some_and(|f| f.contains(&json!("UP")));
    Ok((name.clone(), format!("{name} mtu {} up {up}", l["mtu"])))
}

fn state_of(root: &Path) -> Result<(State, Option<u64>, Vec<String>), String> {
    let mut st = State::new();
    let mut temps = Vec::new();
    st.insert(
        "hostname".into(),
        nix::unistd::gethostname()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned(),
    );
    let (dev, link) = nic()?;
    st.insert("nic link".into(), link);
    let addrs: Value =
        serde_json::from_str(&world::sh(&["ip", "-j", "addr", "show", "dev", &dev])?)
            .map_err(|e| e.to_string())?;
    let mut a: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["scope"] == "global")
        .map(|x| format!("{}/{}", x["local"].as_str().unwrap_or(""), x["prefixlen"]))
        .collect();
    a.sort();
    st.insert("nic addresses".into(), a.join(" "));
    for fam in ["-4", "-6"] {
        let routes: Value = serde_json::from_str(&world::sh(&[
            "ip", "-j", fam, "route", "show", "table", "main", "dev", &dev,
        ])?)
        .map_err(|e| e.to_string())?;
        let mut r: Vec<String> = routes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| !x["dst"].as_str().unwrap_or("").starts_with("fe80"))
            .map(|x| format!("{} via {} metric {}", x["dst"], x["gateway"], x["metric"]))
            .collect();
        r.sort();
        st.insert(format!("nic routes {fam}"), r.join(", "));
    }
    let mut gen = None;
    fn walk(
        root: &Path,
        dir: &Path,
        st: &mut State,
        temps: &mut Vec<String>,
        gen: &mut Option<u64>,
    ) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        for e in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains("xenplug") {
                temps.push(rel);
                continue;
            }
            let m = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
            // Kind, permissions and owner of every entry, directories included.
            let meta = format!("{:o} {}:{}", m.mode(), m.uid(), m.gid());
            if m.is_dir() {
                st.insert(format!("dir {rel}"), meta);
                walk(root, &p, st, temps, gen)?;
                continue;
            }
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).map_err(|e| e.to_string())?;
                st.insert(format!("link {rel}"), format!("{meta} -> {}", t.display()));
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let text = if rel.ends_with("applied.json") {
                // The generation is checked on its own.
                let mut v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                *gen = v["generation"].as_u64();
                if let Some(o) = v.as_object_mut() {
                    o.remove("generation");
                }
                v.to_string()
            } else {
                text
            };
            st.insert(format!("file {rel}"), format!("{meta} {text}"));
        }
        Ok(())
    }
    walk(root, root, &mut st, &mut temps, &mut gen)?;
    Ok((st, gen, temps))
}

/// What differs between two states (names only), for the findings.
fn diff(have: &State, want: &State) -> Vec<String> {
    let mut keys: Vec<&String> = have.keys().chain(want.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| have.get(*k) != want.get(*k))
        .cloned()
        .collect()
}

impl Agent {
    /// The world: namespaces, the guest's root and NIC, and the states of A and B. Call in the
    /// scenario's own process, before any thread starts.
    pub fn new(binary: &Path) -> Result<Agent, String> {
        if !binary.is_file() {
            return Err(format!(
                "{} is missing (cargo build -p xenplug-guest-agent)",
                binary.display()
            ));
        }
        let ns = format!("xpchaos-{}-agent", std::process::id());
        world::sh(&["ip", "netns", "add", &ns])?;
        let entered = (|| {
            let f = File::open(format!("/run/netns/{ns}")).map_err(|e| e.to_string())?;
            world::private_mounts()?;
            world::subreaper()?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)
                .map_err(|e| format!("unshare(CLONE_NEWUTS): {e}"))?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))
        })();
        if let Err(e) = entered {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
            return Err(e);
        }
        for c in [
            &["ip", "link", "set", "lo", "up"][..],
            &[
                "ip", "link", "add", "nic0", "address", MAC, "type", "veth", "peer", "name",
                "peer0",
            ],
            &["ip", "link", "set", "peer0", "up"],
        ] {
            world::sh(c)?;
        }
        let root = tempfile::Builder::new()
            .prefix("xenplug-chaos-guest-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let r = root.path();
        std::fs::set_permissions(r, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(r.join("etc")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(r.join("home/bench")).map_err(|e| e.to_string())?;
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbench:x:4243:4243::/home/bench:/bin/sh\n",
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            r.join("etc/shadow"),
            "root:*:19000:0:99999:7:::\nbench:!:19000:0:99999:7:::\n",
        )
        .map_err(|e| e.to_string())?;
        nix::unistd::chown(
            &r.join("home/bench"),
            Some(nix::unistd::Uid::from_raw(4243)),
            Some(nix::unistd::Gid::from_raw(4243)),
        )
        .map_err(|e| e.to_string())?;
        let mut a = Agent {
            binary: binary.to_path_buf(),
            root,
            ns,
            chan: Chan::new()?,
            agent: None,
            gen: 0,
            at_a: State::new(),
            at_b: State::new(),
            round_gens: (0, 0),
            found: Vec::new(),
            observed: Vec::new(),
            killed: Default::default(),
        };
        a.restart()?;
        a.apply_fully('a')?;
        a.at_a = state_of(a.root.path())?.0;
        a.apply_fully('b')?;
        a.at_b = state_of(a.root.path())?.0;
        if a.at_a == a.at_b {
            return Err("generations A and B look the same".into());
        }
        Ok(a)
    }

    /// Kill any agent, start a fresh one, handshake.
    fn restart(&mut self) -> Result<(), String> {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let child = Command::new(&self.binary)
            .arg("--device")
            .arg(&self.chan.path)
            .arg("--root")
            .arg(self.root.path())
            .arg("--config")
            .arg(self.root.path().join("agent.toml"))
            .arg("--shutdown-program")
            .arg("/bin/false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", self.binary.display()))?;
        self.agent = Some(child);
        self.chan.session = session();
        self.chan.handshake(Duration::from_secs(10))
    }

    /// Apply generation `which` with the next generation number, to completion.
    fn apply_fully(&mut self, which: char) -> Result<u64, String> {
        self.gen += 1;
        self.chan.handshake(Duration::from_secs(5))?;
        self.chan.send(&doc(which, self.gen))?;
        let v = self.chan.reply(Duration::from_secs(10))?;
        if v["applied"] != json!(true) {
            return Err(format!("apply of {which} not applied: {v}"));
        }
        Ok(self.gen)
    }

    /// Where the guest is: `Some('a')`/`Some('b')`, or `None` (between), with the differences.
    fn position(&self) -> Result<(Option<char>, Vec<String>), String> {
        let (st, gen, _) = state_of(self.root.path())?;
        let (ga, gb) = self.round_gens;
        if st == self.at_a && gen == Some(ga) {
            return Ok((Some('a'), Vec::new()));
        }
        if st == self.at_b && gen == Some(gb) {
            return Ok((Some('b'), Vec::new()));
        }
        let mut why = vec![format!(
            "unlike A: [{}]; unlike B: [{}]",
            diff(&st, &self.at_a).join(", "),
            diff(&st, &self.at_b).join(", ")
        )];
        why.push(format!("recorded generation {gen:?} (A {ga}, B {gb})"));
        Ok((None, why))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
    }
}

impl Scenario for Agent {
    fn name(&self) -> String {
        "agent".into()
    }

    fn snapshot(&mut self) -> Result<Snapshot, String> {
        let mut s = Snapshot::new();
        for t in state_of(self.root.path())?.2 {
            put(&mut s, "temporary file", t);
        }
        Ok(s)
    }

    fn setup(&mut self, _round: u32) -> Result<(), String> {
        self.found.clear();
        self.observed.clear();
        if self.agent.is_none() {
            self.restart()?;
        }
        let ga = self.apply_fully('a')?;
        self.round_gens = (ga, ga + 1);
        Ok(())
    }

    fn op(&mut self) -> Result<Command, String> {
        Err("the agent's apply is a request, not a command".into())
    }

    fn start(&mut self) -> Result<Box<dyn Running>, String> {
        self.gen += 1;
        let pid = self
            .agent
            .as_ref()
            .map(|c| c.id() as i32)
            .ok_or("no agent")?;
        self.chan.handshake(Duration::from_secs(5))?;
        let config = doc('b', self.gen);
        // The apply's channel end: the pty master and the synced session move to the handle;
        // the scenario keeps a duplicate of the master for the next agent.
        let master = self.chan.master.try_clone().map_err(|e| e.to_string())?;
        let session = std::mem::replace(&mut self.chan.session, session());
        let mut chan = Chan {
            master,
            _slave: self.chan._slave.try_clone().map_err(|e| e.to_string())?,
            path: self.chan.path.clone(),
            session,
        };
        chan.send(&config)?;
        self.killed
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(Apply {
            pid,
            chan,
            reply: None,
            killed: self.killed.clone(),
        }))
    }

    fn next(&mut self) -> Result<Option<Command>, String> {
        if self.killed.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some(mut c) = self.agent.take() {
                let _ = c.wait();
            }
            // What the guest runs with until its agent is back (and repairs it): not a leak,
            // a kill cannot be atomic with a dozen files and the kernel, but counted.
            if let (None, why) = self.position()? {
                self.observed.push((
                    "torn until the restart".into(),
                    format!("after the kill: {}", why.join(", ")),
                ));
            }
        } else if self.position()?.0 != Some('b') {
            self.found.push((
                "guest not at B after a complete apply".into(),
                self.position()?.1.join(", "),
            ));
        }
        Ok(None)
    }

    fn after(&mut self) -> Result<(), String> {
        if self.agent.is_some() {
            return Ok(());
        }
        // The agent comes back (systemd restarts it); nothing re-sent yet.
        self.restart()?;
        match self.position()? {
            (None, why) => self.found.push((
                "guest between generations after restart".into(),
                why.join(", "),
            )),
            (Some(g), _) => self.observed.push((
                format!("at {} after restart", g.to_ascii_uppercase()),
                String::new(),
            )),
        }
        // The peer re-sends B.
        self.chan.handshake(Duration::from_secs(5))?;
        self.chan.send(&doc('b', self.round_gens.1))?;
        let v = self.chan.reply(Duration::from_secs(10));
        match self.position()? {
            (Some('b'), _) => {}
            (_, why) => self.found.push((
                "guest not at B after re-delivery".into(),
                format!("{v:?}: {}", why.join(", ")),
            )),
        }
        Ok(())
    }

    fn verdict(&mut self) -> Vec<Item> {
        std::mem::take(&mut self.found)
    }

    fn observations(&mut self) -> Vec<Item> {
        std::mem::take(&mut self.observed)
    }

    fn reset(&mut self) -> Result<(), String> {
        let (_, _, temps) = state_of(self.root.path())?;
        for t in temps {
            let _ = std::fs::remove_file(self.root.path().join(t));
        }
        Ok(())
    }
}
