//! Benchmark: does a hostile domain slow dom0 down? (issue 13)
//!
//! `cargo run --release -p xenplug-xenstored --example hostile [-- --nodes N --watches N]`
//!
//! A real daemon on throwaway sockets; dom0 reads one node in a loop (with the same client every
//! xenplug program uses) and records each read's latency, first with nothing else going on
//! (idle), then while guest 5, on its own domain socket, does each of:
//!
//! * `tx-default`: writes N nodes (200 000) in one transaction under the default quotas (all
//!   but the first ~1000 are refused with `ENOSPC`), then commits;
//! * `tx-lifted`: the same with the node quotas lifted, so all N nodes are written and
//!   committed at once;
//! * `watches`: holds W watches (5 000, watch quota lifted) on distinct paths and keeps writing
//!   below them, so every write fires an event that must be matched against them.
//!
//! Each phase is followed by an idle phase again; the figure is the loaded p99 against the mean
//! of the idle p99s around it, and the target is at most 2×. The guest pipelines its requests
//! (as a real ring does), so it goes as fast as the daemon lets it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenplug_xenstore::wire::{Decoder, Message, MsgType};
use xenplug_xenstore::{XsClient, XsOps};
use xenplug_xenstored::daemon::{self, Options, Shutdown};
use xenplug_xenstored::engine::Quota;
use xenplug_xenstored::Engine;

struct Guest {
    s: UnixStream,
    dec: Decoder,
    pending: Vec<u8>,
    next: u32,
}

impl Guest {
    fn connect(path: &std::path::Path) -> Guest {
        Guest {
            s: UnixStream::connect(path).expect("guest socket"),
            dec: Decoder::new(),
            pending: Vec::new(),
            next: 1,
        }
    }

    fn recv(&mut self) -> Message {
        loop {
            if !self.pending.is_empty() {
                let (used, msg) = self.dec.feed(&self.pending).expect("valid replies");
                self.pending.drain(..used);
                if let Some(m) = msg {
                    return m;
                }
            }
            let mut buf = [0u8; 65536];
            let n = self.s.read(&mut buf).expect("guest read");
            assert!(n > 0, "daemon closed the guest");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Send `msgs` pipelined (a writer thread) and collect the replies (watch events skipped).
    fn pipeline(&mut self, msgs: Vec<(MsgType, u32, Vec<u8>)>) -> Vec<Message> {
        let mut bytes = Vec::new();
        let n = msgs.len();
        for (t, tx, payload) in msgs {
            bytes.extend(Message::new(t, self.next, tx, payload).encode().unwrap());
            self.next += 1;
        }
        let mut w = self.s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&bytes));
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let m = self.recv();
            if m.msg_type != MsgType::WATCH_EVENT.to_u32() {
                out.push(m);
            }
        }
        writer.join().unwrap().unwrap();
        out
    }

    fn call(&mut self, t: MsgType, tx: u32, payload: &[u8]) -> Message {
        self.pipeline(vec![(t, tx, payload.to_vec())]).remove(0)
    }
}

fn write_msg(path: &str, tx: u32) -> (MsgType, u32, Vec<u8>) {
    let mut p = path.as_bytes().to_vec();
    p.push(0);
    p.extend_from_slice(b"v");
    (MsgType::WRITE, tx, p)
}

/// Spread names so that no directory's record reaches the node-size quota (at most 200
/// children per directory).
fn node(i: usize) -> String {
    format!("data/a{}/d{}/n{}", i / 40_000, (i / 200) % 200, i % 200)
}

fn tx_writes(g: &mut Guest, n: usize) -> (usize, usize, String) {
    let r = g.call(MsgType::TRANSACTION_START, 0, b"\0");
    let tx: u32 = String::from_utf8_lossy(xenplug_xenstore::wire::strip_nul(&r.payload))
        .parse()
        .expect("transaction id");
    let mut ok = 0;
    let mut refused = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let msgs = chunk.iter().map(|i| write_msg(&node(*i), tx)).collect();
        for m in g.pipeline(msgs) {
            if m.msg_type == MsgType::ERROR.to_u32() {
                refused += 1;
            } else {
                ok += 1;
            }
        }
    }
    let t = Instant::now();
    let end = g.call(MsgType::TRANSACTION_END, tx, b"T\0");
    let took = t.elapsed();
    let outcome = if end.msg_type == MsgType::ERROR.to_u32() {
        String::from_utf8_lossy(xenplug_xenstore::wire::strip_nul(&end.payload)).into_owned()
    } else {
        format!("committed in {:.0} ms", took.as_secs_f64() * 1e3)
    };
    (ok, refused, outcome)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Phase {
    name: String,
    samples: Vec<Duration>,
    note: String,
}

/// dom0 reads until `busy` is cleared (at least `min` reads).
fn measure(dom0: &XsClient, busy: &AtomicBool, min: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    while busy.load(Ordering::Relaxed) || out.len() < min {
        let t = Instant::now();
        let v = dom0.read("/local/domain/0/name").expect("dom0 read");
        out.push(t.elapsed());
        assert_eq!(v.as_deref(), Some("Domain-0"));
        if out.len() >= 2_000_000 {
            break;
        }
    }
    out.sort();
    out
}

fn main() -> std::process::ExitCode {
    let mut nodes = 200_000usize;
    let mut watches = 5_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--nodes", Some(v)) => nodes = v,
            ("--watches", Some(v)) => watches = v,
            _ => {
                eprintln!("usage: hostile [--nodes N] [--watches N]");
                return std::process::ExitCode::from(2);
            }
        }
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let mut opts = Options::new(dir.path().join("socket"));
    let guest_socket = dir.path().join("domain-5");
    opts.domain_sockets = vec![(5, guest_socket.clone())];
    let engine = Engine::new();
    let listeners = daemon::bind_all(&opts).expect("bind");
    let shutdown = Shutdown::new();
    let (e, sd, o) = (engine.clone(), shutdown.clone(), opts.clone());
    let server = std::thread::spawn(move || daemon::serve_listeners(&o, e, listeners, sd));

    let dom0 = XsClient::open_socket(&opts.socket).expect("dom0 client");
    dom0.write("/local/domain/5/data", "").unwrap();
    dom0.set_perms(
        "/local/domain/5",
        &[xenplug_xenstore::Perm {
            domid: 5,
            access: xenplug_xenstore::Access::None,
        }],
    )
    .unwrap();
    dom0.set_perms(
        "/local/domain/5/data",
        &[xenplug_xenstore::Perm {
            domid: 5,
            access: xenplug_xenstore::Access::None,
        }],
    )
    .unwrap();

    let idle_reads = 20_000;
    let mut phases: Vec<Phase> = Vec::new();
    let idle = |phases: &mut Vec<Phase>| {
        let busy = AtomicBool::new(false);
        phases.push(Phase {
            name: "idle".into(),
            samples: measure(&dom0, &busy, idle_reads),
            note: String::new(),
        });
    };

    // A phase: the guest works on its own thread while dom0 measures.
    let loaded = |phases: &mut Vec<Phase>,
                  name: &str,
                  work: Box<dyn FnOnce(&mut Guest) -> String + Send>| {
        let busy = Arc::new(AtomicBool::new(true));
        let b = busy.clone();
        let path = guest_socket.clone();
        let t0 = Instant::now();
        let worker = std::thread::spawn(move || {
            let mut g = Guest::connect(&path);
            let note = work(&mut g);
            b.store(false, Ordering::Relaxed);
            note
        });
        let samples = measure(&dom0, &busy, 1000);
        let note = worker.join().expect("guest");
        phases.push(Phase {
            name: name.into(),
            samples,
            note: format!("{note}; guest took {:.1} s", t0.elapsed().as_secs_f64()),
        });
    };

    idle(&mut phases);
    let n = nodes;
    loaded(
        &mut phases,
        "tx-default",
        Box::new(move |g| {
            let (ok, refused, outcome) = tx_writes(g, n);
            format!("{ok} written, {refused} refused, commit: {outcome}")
        }),
    );
    idle(&mut phases);
    engine.set_quota(Quota {
        nodes: usize::MAX,
        transaction_nodes: usize::MAX,
        ..Quota::default()
    });
    loaded(
        &mut phases,
        "tx-lifted",
        Box::new(move |g| {
            let (ok, refused, outcome) = tx_writes(g, n);
            format!("{ok} written, {refused} refused, commit: {outcome}")
        }),
    );
    idle(&mut phases);
    // Start the watch phase from an empty guest directory (the previous phase's nodes would
    // otherwise dominate its writes' cost).
    dom0.rm("/local/domain/5/data").unwrap();
    dom0.write("/local/domain/5/data", "").unwrap();
    dom0.set_perms(
        "/local/domain/5/data",
        &[xenplug_xenstore::Perm {
            domid: 5,
            access: xenplug_xenstore::Access::None,
        }],
    )
    .unwrap();
    engine.set_quota(Quota {
        nodes: usize::MAX,
        watches: usize::MAX,
        ..Quota::default()
    });
    let w = watches;
    loaded(
        &mut phases,
        "watches",
        Box::new(move |g| {
            let msgs = (0..w)
                .map(|i| {
                    let mut p = format!("data/w{i}").into_bytes();
                    p.push(0);
                    p.extend_from_slice(format!("t{i}\0").as_bytes());
                    (MsgType::WATCH, 0, p)
                })
                .collect();
            let refused = g
                .pipeline(msgs)
                .iter()
                .filter(|m| m.msg_type == MsgType::ERROR.to_u32())
                .count();
            let mut writes = 0;
            for _ in 0..20 {
                let msgs = (0..w)
                    .step_by(5)
                    .map(|i| write_msg(&format!("data/w{i}/x"), 0))
                    .collect::<Vec<_>>();
                writes += msgs.len();
                g.pipeline(msgs);
            }
            format!("{w} watches ({refused} refused), {writes} writes each firing one")
        }),
    );
    idle(&mut phases);

    shutdown.trigger();
    let _ = server.join();

    println!("dom0 read latency (XsClient::read of /local/domain/0/name) while guest 5 works");
    println!(
        "{:<11} {:>8} {:>9} {:>9} {:>9} {:>7}  what the guest did",
        "phase", "reads", "p50 µs", "p99 µs", "max µs", "p99/idle"
    );
    let idle_p99 = |i: usize| -> f64 {
        let around: Vec<f64> = [i.wrapping_sub(1), i + 1]
            .iter()
            .filter_map(|j| phases.get(*j))
            .filter(|p| p.name == "idle")
            .map(|p| percentile(&p.samples, 0.99).as_secs_f64())
            .collect();
        around.iter().sum::<f64>() / around.len().max(1) as f64
    };
    let mut worst: f64 = 0.0;
    for (i, p) in phases.iter().enumerate() {
        let p99 = percentile(&p.samples, 0.99);
        let ratio = if p.name == "idle" {
            String::new()
        } else {
            let r = p99.as_secs_f64() / idle_p99(i);
            worst = worst.max(r);
            format!("{r:.2}x")
        };
        println!(
            "{:<11} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>7}  {}",
            p.name,
            p.samples.len(),
            percentile(&p.samples, 0.5).as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            p.samples.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
            ratio,
            p.note
        );
    }
    println!(
        "worst p99 against idle: {worst:.2}x (target: at most 2x) — {}",
        if worst <= 2.0 { "PASS" } else { "FAIL" }
    );
    std::process::ExitCode::SUCCESS
}
