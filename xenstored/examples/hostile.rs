//! Benchmark: does a hostile domain slow dom0 down? (issue 13)
//!
//! `cargo run --release -p xenplug-xenstored --example hostile [-- --nodes N --watches N
//! --rounds R --idle-secs S --min-loaded-secs S --only SCENARIO --guest-load same|idle
//! --domain-thread same|nice10|idle]`
//!
//! A real daemon on throwaway sockets; dom0 reads one node in a loop (with the same client every
//! xenplug program uses) and records each read's latency, with nothing else going on (idle) and
//! while guest 5, on its own domain socket, does one of:
//!
//! * `tx-default`: writes N nodes (200 000) in one transaction under the default quotas (all
//!   but the first ~1000 are refused with `ENOSPC`), then commits;
//! * `tx-lifted`: the same with the node quotas lifted, so all N nodes are written and
//!   committed at once (the commit's own duration is reported, and dom0's reads during it);
//! * `watches`: holds W watches (5 000, watch quota lifted) on distinct paths and keeps writing
//!   below them (rounds of W/5 writes, each firing one event, for at least `--min-loaded-secs`).
//!
//! Each scenario runs `--rounds` times (5), each round an idle window then a loaded window,
//! with a last idle window after the last round; a round's ratio is its loaded p99 against the
//! mean of the idle p99s just before and after it, so that the machine's other work (which
//! changes from second to second on a shared machine) weighs on both. The guest pipelines its
//! requests (as a real ring does), so it goes as fast as the daemon lets it. The target is a
//! ratio of at most 2 in every round.
//!
//! The guest's own threads (the load generator) stand for another domain's vCPUs, which take
//! no CPU time from dom0 on a real host; here they share the machine's cores with dom0, so by
//! default (`--guest-load idle`) they run as `SCHED_IDLE` (they get the CPU dom0 leaves).
//! With `--guest-load same` they run as any other thread, and the figures include the CPU they
//! take from dom0. The daemon's thread for the domain sockets has the daemon's default
//! priority ([`daemon::GuestPriority`]) unless `--domain-thread` says otherwise.
//!
//! Besides dom0's read latency, each loaded window reports the longest time the store lock was
//! held at once, in wall-clock time (a holder that was preempted counts): what a dom0 request
//! that needs the lock may have waited for. `--dom0-writes` measures such requests instead of
//! reads: dom0 writes a node in the loop.

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
        let writer = std::thread::spawn(move || {
            guest_thread();
            w.write_all(&bytes)
        });
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

/// Guest 5's side of a scenario: what it did, and when its commit ran (if it committed).
struct Work {
    note: String,
    commit: Option<(Instant, Instant)>,
}

fn tx_writes(g: &mut Guest, n: usize) -> Work {
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
    let done = Instant::now();
    let outcome = if end.msg_type == MsgType::ERROR.to_u32() {
        String::from_utf8_lossy(xenplug_xenstore::wire::strip_nul(&end.payload)).into_owned()
    } else {
        format!(
            "committed in {:.0} ms",
            done.duration_since(t).as_secs_f64() * 1e3
        )
    };
    Work {
        note: format!("{ok} written, {refused} refused, commit: {outcome}"),
        commit: Some((t, done)),
    }
}

/// Run the calling (guest) thread as `SCHED_IDLE` unless asked not to (see the module docs).
fn guest_thread() {
    if GUEST_SCHED_IDLE.load(Ordering::Relaxed) {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sets the calling thread's own policy; `param` outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        assert_eq!(rc, 0, "sched_setscheduler(SCHED_IDLE)");
    }
}

static GUEST_SCHED_IDLE: AtomicBool = AtomicBool::new(true);

/// `--dom0-writes`: dom0 writes a node instead of reading one (a request that takes the store
/// lock, so what the guest's holding it costs dom0).
static DOM0_WRITES: AtomicBool = AtomicBool::new(false);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// dom0's reads: when each started, and how long it took.
type Samples = Vec<(Instant, Duration)>;

/// dom0 reads while `busy` is set, or for `secs` when it is not given.
fn measure(dom0: &XsClient, busy: Option<&AtomicBool>, secs: f64) -> Samples {
    let mut out = Vec::new();
    let start = Instant::now();
    loop {
        match busy {
            Some(b) if !b.load(Ordering::Relaxed) => break,
            None if start.elapsed().as_secs_f64() >= secs => break,
            _ => {}
        }
        let t = Instant::now();
        if DOM0_WRITES.load(Ordering::Relaxed) {
            dom0.write("/local/domain/0/probe", "1")
                .expect("dom0 write");
            out.push((t, t.elapsed()));
        } else {
            let v = dom0.read("/local/domain/0/name").expect("dom0 read");
            out.push((t, t.elapsed()));
            assert_eq!(v.as_deref(), Some("Domain-0"));
        }
    }
    out
}

struct Stats {
    reads: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(samples: &Samples) -> Stats {
    let mut d: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    d.sort();
    Stats {
        reads: d.len(),
        p50: percentile(&d, 0.5),
        p99: percentile(&d, 0.99),
        max: d.last().copied().unwrap_or_default(),
    }
}

struct Round {
    idle_before: Stats,
    loaded: Stats,
    note: String,
    secs: f64,
    /// Reads that overlapped the commit: count, longest, the commit's duration.
    during_commit: Option<(usize, Duration, Duration)>,
    /// The longest store-lock hold during the loaded window.
    lock_hold: Duration,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn guest_dir(dom0: &XsClient) {
    let own = [xenplug_xenstore::Perm {
        domid: 5,
        access: xenplug_xenstore::Access::None,
    }];
    dom0.write("/local/domain/5/data", "").unwrap();
    dom0.rm("/local/domain/5/data").unwrap();
    dom0.write("/local/domain/5/data", "").unwrap();
    dom0.set_perms("/local/domain/5", &own).unwrap();
    dom0.set_perms("/local/domain/5/data", &own).unwrap();
}

type Scenario = Arc<dyn Fn(&mut Guest) -> Work + Send + Sync>;

fn main() -> std::process::ExitCode {
    let mut nodes = 200_000usize;
    let mut watches = 5_000usize;
    let mut rounds = 5usize;
    let mut idle_secs = 1.0f64;
    let mut min_loaded_secs = 2.0f64;
    let mut only: Option<String> = None;
    let mut domain_thread = daemon::GuestPriority::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--dom0-writes" {
            DOM0_WRITES.store(true, Ordering::Relaxed);
            continue;
        }
        let v = args.next();
        let num = v.as_deref().and_then(|v| v.parse::<f64>().ok());
        match (a.as_str(), v.as_deref()) {
            ("--guest-load", Some("idle")) => GUEST_SCHED_IDLE.store(true, Ordering::Relaxed),
            ("--guest-load", Some("same")) => GUEST_SCHED_IDLE.store(false, Ordering::Relaxed),
            ("--domain-thread", Some("same")) => domain_thread = daemon::GuestPriority::Same,
            ("--domain-thread", Some("nice10")) => domain_thread = daemon::GuestPriority::Nice(10),
            ("--domain-thread", Some("idle")) => domain_thread = daemon::GuestPriority::Idle,
            _ => {}
        }
        if matches!(a.as_str(), "--guest-load" | "--domain-thread")
            && matches!(v.as_deref(), Some("idle" | "same" | "nice10"))
        {
            continue;
        }
        match (a.as_str(), num) {
            ("--nodes", Some(v)) => nodes = v as usize,
            ("--watches", Some(v)) => watches = v as usize,
            ("--rounds", Some(v)) if v >= 1.0 => rounds = v as usize,
            ("--idle-secs", Some(v)) => idle_secs = v,
            ("--min-loaded-secs", Some(v)) => min_loaded_secs = v,
            ("--only", _) if v.is_some() => only = v,
            _ => {
                eprintln!(
                    "usage: hostile [--nodes N] [--watches N] [--rounds R] [--idle-secs S] \
                     [--min-loaded-secs S] [--only tx-default|tx-lifted|watches] \
                     [--guest-load same|idle] [--domain-thread same|nice10|idle] \
                     [--dom0-writes]"
                );
                return std::process::ExitCode::from(2);
            }
        }
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let mut opts = Options::new(dir.path().join("socket"));
    let guest_socket = dir.path().join("domain-5");
    opts.domain_sockets = vec![(5, guest_socket.clone())];
    opts.guest_priority = domain_thread;
    let engine = Engine::new();
    let listeners = daemon::bind_all(&opts).expect("bind");
    let shutdown = Shutdown::new();
    let (e, sd, o) = (engine.clone(), shutdown.clone(), opts.clone());
    let server = std::thread::spawn(move || daemon::serve_listeners(&o, e, listeners, sd));
    let dom0 = XsClient::open_socket(&opts.socket).expect("dom0 client");
    let load_before = load_average();

    let lifted_nodes = Quota {
        nodes: usize::MAX,
        transaction_nodes: usize::MAX,
        ..Quota::default()
    };
    let lifted_watches = Quota {
        nodes: usize::MAX,
        watches: usize::MAX,
        ..Quota::default()
    };
    let n = nodes;
    let w = watches;
    let min_loaded = min_loaded_secs;
    let scenarios: Vec<(&str, Quota, Scenario)> = vec![
        (
            "tx-default",
            Quota::default(),
            Arc::new(move |g| tx_writes(g, n)),
        ),
        (
            "tx-lifted",
            lifted_nodes,
            Arc::new(move |g| tx_writes(g, n)),
        ),
        (
            "watches",
            lifted_watches,
            Arc::new(move |g| {
                let start = Instant::now();
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
                while writes == 0 || start.elapsed().as_secs_f64() < min_loaded {
                    let msgs = (0..w)
                        .step_by(5)
                        .map(|i| write_msg(&format!("data/w{i}/x"), 0))
                        .collect::<Vec<_>>();
                    writes += msgs.len();
                    g.pipeline(msgs);
                }
                Work {
                    note: format!(
                        "{w} watches ({refused} refused), {writes} writes each firing one"
                    ),
                    commit: None,
                }
            }),
        ),
    ];

    println!(
        "dom0 {} latency while guest 5 works; \
         {rounds} rounds per scenario; guest 5's load generator {}; the daemon's domain thread \
         {domain_thread:?} (for a daemon at this process's nice value: {:?})",
        if DOM0_WRITES.load(Ordering::Relaxed) {
            "write (XsClient::write of /local/domain/0/probe)"
        } else {
            "read (XsClient::read of /local/domain/0/name)"
        },
        if GUEST_SCHED_IDLE.load(Ordering::Relaxed) {
            "SCHED_IDLE (another domain's vCPUs)"
        } else {
            "at the same priority as dom0's reader"
        },
        domain_thread.effective()
    );
    let mut worst: f64 = 0.0;
    let mut failed = false;
    for (name, quota, work) in scenarios {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        engine.set_quota(quota);
        let mut done: Vec<Round> = Vec::new();
        let mut idle_after = None;
        for round in 0..=rounds {
            guest_dir(&dom0);
            let idle = stats(&measure(&dom0, None, idle_secs));
            if round == rounds {
                idle_after = Some(idle);
                break;
            }
            let busy = Arc::new(AtomicBool::new(true));
            let (b, path, work) = (busy.clone(), guest_socket.clone(), work.clone());
            let t0 = Instant::now();
            engine.take_longest_lock_hold();
            let worker = std::thread::spawn(move || {
                guest_thread();
                let mut g = Guest::connect(&path);
                let w = work(&mut g);
                b.store(false, Ordering::Relaxed);
                w
            });
            let samples = measure(&dom0, Some(&busy), 0.0);
            let w = worker.join().expect("guest");
            let lock_hold = engine.take_longest_lock_hold();
            let during_commit = w.commit.map(|(from, to)| {
                let over: Vec<Duration> = samples
                    .iter()
                    .filter(|(t, d)| *t + *d >= from && *t <= to)
                    .map(|s| s.1)
                    .collect();
                (
                    over.len(),
                    over.iter().copied().max().unwrap_or_default(),
                    to - from,
                )
            });
            done.push(Round {
                idle_before: idle,
                loaded: stats(&samples),
                note: w.note,
                secs: t0.elapsed().as_secs_f64(),
                during_commit,
                lock_hold,
            });
        }
        println!();
        println!("{name}:");
        println!(
            "{:>5} {:>8} {:>8} {:>9} {:>8} | {:>8} {:>8} {:>9} {:>8} {:>7} {:>9}  what the guest did",
            "round",
            "idle p50",
            "p99",
            "max",
            "reads",
            "load p50",
            "p99",
            "max",
            "reads",
            "p99/idle",
            "lock held"
        );
        let mut ratios = Vec::new();
        for (i, r) in done.iter().enumerate() {
            let next_idle = done
                .get(i + 1)
                .map(|n| &n.idle_before)
                .or(idle_after.as_ref())
                .expect("an idle window after every round");
            let base = (us(r.idle_before.p99) + us(next_idle.p99)) / 2.0;
            let ratio = us(r.loaded.p99) / base;
            ratios.push(ratio);
            let commit = r
                .during_commit
                .map(|(reads, longest, took)| {
                    format!(
                        "; {reads} reads during the {:.0} ms commit, longest {:.0} µs",
                        took.as_secs_f64() * 1e3,
                        us(longest)
                    )
                })
                .unwrap_or_default();
            println!(
                "{:>5} {:>8.1} {:>8.1} {:>9.0} {:>8} | {:>8.1} {:>8.1} {:>9.0} {:>8} {:>6.2}x {:>6.2} ms  {} ({:.1} s{commit})",
                i + 1,
                us(r.idle_before.p50),
                us(r.idle_before.p99),
                us(r.idle_before.max),
                r.idle_before.reads,
                us(r.loaded.p50),
                us(r.loaded.p99),
                us(r.loaded.max),
                r.loaded.reads,
                ratio,
                r.lock_hold.as_secs_f64() * 1e3,
                r.note,
                r.secs,
            );
        }
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
        worst = worst.max(hi);
        failed |= hi > 2.0;
        println!(
            "{name}: p99 loaded/idle median {median:.2}x, range {lo:.2}x–{hi:.2}x over {} rounds \
             — {}",
            ratios.len(),
            if hi <= 2.0 { "PASS" } else { "FAIL" }
        );
    }

    shutdown.trigger();
    let _ = server.join();
    println!();
    println!(
        "worst round: p99 {worst:.2}x idle (target: at most 2x in every round) — {}; load average \
         before {load_before}, after {}",
        if failed { "FAIL" } else { "PASS" },
        load_average()
    );
    std::process::ExitCode::SUCCESS
}
