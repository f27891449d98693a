//! Channel figures (run by `tools/channel-bench.sh`, not a test): over a pty standing in for the
//! channel, (1) handshake-to-applied latency of `xenplug-apply-config` (live network in the
//! caller's namespaces; no DAD wait is involved: the agent never waits for it), (2) the agent's
//! RSS, (3) `guest-ping` round trips for our agent and, when given, the real qemu-ga in
//! `-m isa-serial` mode on its own pty.
//!
//! Usage: `channel_bench AGENT_BINARY ROOT_DIR [QEMU_GA_BINARY]` — ROOT_DIR must hold etc/passwd
//! (the script builds one); run it inside throwaway namespaces.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::json;
use xenplug_channel::host::{HostEvent, HostSession, Nonces};
use xenplug_channel::{Limits, Request};

struct Chan {
    master: File,
    _slave: std::os::fd::OwnedFd,
    path: std::path::PathBuf,
    session: HostSession,
}

impl Chan {
    fn new() -> Chan {
        let p = nix::pty::openpty(None, None).expect("openpty");
        let path = std::fs::read_link(format!("/proc/self/fd/{}", p.slave.as_raw_fd())).unwrap();
        Chan {
            master: File::from(p.master),
            _slave: p.slave,
            path,
            session: HostSession::new(Limits::default(), Nonces::seeded(0)),
        }
    }

    fn until(&mut self, wait: Duration, want: &dyn Fn(&HostEvent) -> bool) -> Option<HostEvent> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            if poll(
                &mut fds,
                PollTimeout::from(left.as_millis().min(1000) as u16),
            )
            .unwrap_or(0)
                == 0
            {
                continue;
            }
            let n = self.master.read(&mut buf).expect("read pty");
            for ev in self.session.feed(&buf[..n]) {
                if want(&ev) {
                    return Some(ev);
                }
            }
        }
    }

    fn handshake(&mut self) -> u32 {
        for tries in 1..=200 {
            let b = self.session.begin_sync();
            self.master.write_all(&b).unwrap();
            if self
                .until(Duration::from_millis(100), &|e| *e == HostEvent::Synced)
                .is_some()
            {
                return tries;
            }
        }
        panic!("no handshake");
    }

    fn call(&mut self, req: &Request) -> serde_json::Value {
        let args = req.arguments.clone().map(serde_json::Value::Object);
        let (_id, bytes) = self.session.request(&req.execute, args.as_ref());
        self.master.write_all(&bytes).unwrap();
        match self.until(Duration::from_secs(10), &|e| {
            matches!(e, HostEvent::Reply { .. })
        }) {
            Some(HostEvent::Reply { result, .. }) => {
                result.unwrap_or_else(|e| panic!("{}: {e}", req.execute))
            }
            _ => panic!("no reply to {}", req.execute),
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn pings(c: &mut Chan, n: usize) -> (f64, f64) {
    let req = Request::new("guest-ping");
    for _ in 0..20 {
        c.call(&req);
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        c.call(&req);
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    (pct(&mut t.clone(), 0.5), pct(&mut t, 0.99))
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        std::thread::sleep(Duration::from_millis(100));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agent = &args[1];
    let root = Path::new(&args[2]);
    let mut c = Chan::new();
    let child = Kill(
        Command::new(agent)
            .arg("--device")
            .arg(&c.path)
            .arg("--root")
            .arg(root)
            .arg("--config")
            .arg(root.join("agent.toml"))
            .arg("--shutdown-program")
            .arg("/bin/false")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent"),
    );
    let t_start = Instant::now();
    let tries = c.handshake();
    println!(
        "agent up to first handshake: {:.1} ms ({tries} tries at 100 ms)",
        t_start.elapsed().as_secs_f64() * 1e3
    );

    let mut lat = Vec::new();
    for i in 0..20 {
        let doc = json!({"instance-id": format!("iid-bench-{i}"), "generation": 1,
            "hostname": format!("bench{i}"), "fqdn": format!("bench{i}.example.org"),
            "network": {"version": 2, "ethernets": {"lan": {"match": {"macaddress": "00:16:3e:be:0c:01"},
                "addresses": [format!("192.0.2.{}/24", 10 + i), "2001:db8::10/64"],
                "routes": [{"to": "default", "via": "192.0.2.1"}],
                "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.org"]}}}},
            "users": [{"name": "bench", "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKdh7c6XyRUHvJFOz6oUvnG9NDFjeQh79Yr0YH7oWo6q bench@example"],
                       "hashed_passwd": "$6$saltsalt$Hk7mF4.x1y2z3"}]});
        let req = Request::new("xenplug-apply-config").with_arguments(json!({"config": doc}));
        let s = Instant::now();
        c.handshake();
        let r = c.call(&req);
        assert_eq!(r["applied"], json!(true), "{r}");
        lat.push(s.elapsed().as_secs_f64() * 1e3);
    }
    let first = lat[0];
    println!(
        "handshake-to-applied: first {:.2} ms, median {:.2} ms, max {:.2} ms (20 fresh instance ids, live netlink + files + fsync)",
        first,
        pct(&mut lat.clone(), 0.5),
        pct(&mut lat, 1.0)
    );
    let (p50, p99) = pings(&mut c, 1000);
    println!(
        "xenplug-agent guest-ping round trip: median {p50:.3} ms, p99 {p99:.3} ms (1000 pings)"
    );
    println!(
        "xenplug-agent RSS after the run: {} KiB",
        rss_kib(child.0.id())
    );
    drop(child);

    if let Some(qga) = args.get(3) {
        let mut q = Chan::new();
        let dir = tempfile::tempdir().unwrap();
        let child = Kill(
            Command::new(qga)
                .args(["-m", "isa-serial", "-p"])
                .arg(&q.path)
                .arg("-t")
                .arg(dir.path())
                .arg("-l")
                .arg(dir.path().join("log"))
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn qemu-ga"),
        );
        q.handshake();
        let (p50, p99) = pings(&mut q, 1000);
        println!(
            "qemu-ga guest-ping round trip:       median {p50:.3} ms, p99 {p99:.3} ms (1000 pings)"
        );
        println!("qemu-ga RSS after the run: {} KiB", rss_kib(child.0.id()));
    }
}
