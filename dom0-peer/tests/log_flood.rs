//! One hostile guest against the real daemon binary, logging to a file as it does to journald:
//! it floods its channel with 67-byte nesting bombs (one too-deep frame each, ~3,900 a second
//! at the default read rate) and answers every handshake so that each bomb arriving while a
//! request is pending forces a new one. Meanwhile a well-behaved VM is configured and
//! reconfigured. The hostile channel's lines must stay within its budget (burst + one per
//! second), every dropped line must be accounted for in the lines that were written, and every
//! line of the other VM must be in the log.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `{` then 32 `[` (one level past the bound of 32), closed again, and a newline: 67 bytes.
fn bomb() -> Vec<u8> {
    let mut b = vec![b'{'];
    b.extend([b'['; 32]);
    b.extend([b']'; 32]);
    b.extend(b"}\n");
    b
}

const BATCH: u64 = 64;
const BURST: u64 = 10;

struct Bomber {
    /// Bombs written completely.
    sent: Arc<AtomicU64>,
    /// Connections accepted.
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    _task: tokio::task::JoinHandle<()>,
}

/// The hostile guest: on each connection, a reader answers every `guest-sync-delimited` (so the
/// handshake completes, and the next bomb cuts the request that follows it) and a writer sends
/// bombs in batches, the sync answers between them, until `stop`; it then closes its side, so
/// that the daemon sees the end of the stream once it has read every bomb (and reconnects).
/// Connections accepted after `stop` are held open, silent.
fn bomber(sock: &std::path::Path) -> Bomber {
    let l = UnixListener::bind(sock).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, a, st) = (sent.clone(), accepted.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let batch: Vec<u8> = (0..BATCH).flat_map(|_| bomb()).collect();
        assert_eq!(batch.len() as u64, 67 * BATCH);
        let mut held = Vec::new();
        let mut tasks = Vec::new();
        while let Ok((c, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            if st.load(Ordering::SeqCst) {
                held.push(c);
                continue;
            }
            let (mut r, mut w) = c.into_split();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
            let reader = tokio::spawn(async move {
                let mut dec = xenplug_channel::Decoder::default();
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for ev in dec.feed(&buf[..n]) {
                        if let xenplug_channel::Event::Frame(f) = ev {
                            if f["execute"] == "guest-sync-delimited" {
                                if let Some(id) = f["arguments"]["id"].as_u64() {
                                    let _ = tx.send(id);
                                }
                            }
                        }
                    }
                }
            });
            let (s, st, batch) = (s.clone(), st.clone(), batch.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::with_capacity(batch.len() + 256);
                while !st.load(Ordering::SeqCst) {
                    while let Ok(id) = rx.try_recv() {
                        out.push(0xFF);
                        out.extend(format!("{{\"return\": {id}}}\n").bytes());
                    }
                    out.extend(&batch);
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                    s.fetch_add(BATCH, Ordering::SeqCst);
                    out.clear();
                }
                reader.abort();
                let _ = w.shutdown().await;
            }));
        }
    });
    Bomber {
        sent,
        accepted,
        stop,
        _task: task,
    }
}

/// The lines about one channel, but for discovery's (`channel-up`/`channel-down`: written by
/// the daemon as xenstore changes, not by the channel's task, so not the guest's doing).
fn lines_of(log: &str, domid: u32) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["domid"] == domid && v["event"] != "channel-up" && v["event"] != "channel-down"
        })
        .collect()
}

/// Dropped lines the written lines of a channel account for: `(all, of event)`.
fn reported(lines: &[Value], event: &str) -> (u64, u64) {
    let all = lines.iter().filter_map(|l| l["suppressed"].as_u64()).sum();
    let of = lines
        .iter()
        .filter_map(|l| l["suppressed_events"][event].as_u64())
        .sum();
    (all, of)
}

const GOOD: u32 = 10;
const HOSTILE: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_cannot_push_other_vms_out_of_the_log() {
    let mut h = Host::new();
    let xs = h.xsd.store();
    std::fs::write(h.store.join("good.json"), doc("good", 1)).unwrap();
    std::fs::write(h.store.join("bomber.json"), doc("bomber", 1)).unwrap();
    let good_sock = h.sock("good");
    let good = h.guest(&good_sock, guest_opts());
    add_domain(&xs, GOOD, "good", &uuid(GOOD), &good_sock);
    let bomber_sock = h.sock("bomber");
    let b = bomber(&bomber_sock);
    add_domain(&xs, HOSTILE, "bomber", &uuid(HOSTILE), &bomber_sock);

    let logfile = h.dir.path().join("daemon.log");
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_xenplug-peer"))
        .args(["daemon", "--channel-name", CHANNEL, "--log-level", "info"])
        .arg("--xenstore")
        .arg(h.xsd.socket())
        .arg("--store")
        .arg(&h.store)
        .arg("--control")
        .arg(&h.control)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&logfile).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let _daemon = Daemon(child);

    wait_state(&h, GOOD, "configured", Duration::from_secs(10)).await;
    // The flood is well under way: many times the burst, and handshakes forced by it.
    wait_for(Duration::from_secs(20), "the bomber's flood", || async {
        let r = h.row(HOSTILE).await?;
        let c = &r["counters"];
        (c["oversize_frames"].as_u64()? > 4000 && c["handshakes"].as_u64()? > 20).then_some(())
    })
    .await;
    // The good VM is reconfigured three times during the flood.
    for g in 2..=4u64 {
        std::fs::write(h.store.join("good.json"), doc("good", g)).unwrap();
        // SAFETY: kill(2) on the daemon child this test spawned and still owns.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        wait_for(
            Duration::from_secs(10),
            &format!("good at generation {g}"),
            || async { h.row(GOOD).await.filter(|r| r["applied_generation"] == g) },
        )
        .await;
    }
    assert_eq!(good.generation(), Some(4));
    b.stop.store(true, Ordering::SeqCst);

    // The daemon reconnects once it has read every bomb and the end of the stream; then no
    // dropped line may stay unreported (the summary comes one interval after the last one).
    wait_for(
        Duration::from_secs(20),
        "the bomber's stream drained",
        || async {
            let r = h.row(HOSTILE).await?;
            (r["counters"]["connects"].as_u64()? >= 2).then_some(())
        },
    )
    .await;
    let (rows, log) = wait_for(
        Duration::from_secs(10),
        "every dropped line reported",
        || async {
            let rows = h.list().await;
            let row = rows.iter().find(|r| r["domid"] == HOSTILE)?;
            let log = std::fs::read_to_string(&logfile).ok()?;
            let (all, _) = reported(&lines_of(&log, HOSTILE), "oversize-frame");
            (all == row["counters"]["log_suppressed"].as_u64()?).then_some((rows, log))
        },
    )
    .await;
    let elapsed = t0.elapsed();
    let sent = b.sent.load(Ordering::SeqCst);
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        2,
        "the flood and the idle reconnection"
    );
    let hostile_row = rows.iter().find(|r| r["domid"] == HOSTILE).unwrap();
    let good_row = rows.iter().find(|r| r["domid"] == GOOD).unwrap();
    let hc = &hostile_row["counters"];
    let suppressed = hc["log_suppressed"].as_u64().unwrap();
    assert!(suppressed > 0, "{hostile_row}");
    assert_eq!(good_row["counters"]["log_suppressed"], 0, "{good_row}");
    // Each handshake the bombs force drops the partial frame in the decoder: one bomb at most.
    let oversize = hc["oversize_frames"].as_u64().unwrap();
    let syncs = hc["syncs_sent"].as_u64().unwrap();
    assert!(
        oversize <= sent && oversize + syncs >= sent,
        "{oversize} oversize frames counted, {sent} bombs sent, {syncs} syncs"
    );

    // Bounded: the burst, one line per second since the daemon started, one more for the
    // alignment of the refill.
    let hostile_lines = lines_of(&log, HOSTILE);
    let bound = BURST + elapsed.as_secs() + 1;
    assert!(
        hostile_lines.len() as u64 <= bound,
        "{} lines of the hostile channel in {elapsed:?} (bound {bound})",
        hostile_lines.len()
    );
    // Every oversize frame is either a line or counted in a later line's `suppressed_events`.
    let oversize_lines = hostile_lines
        .iter()
        .filter(|l| l["event"] == "oversize-frame")
        .count() as u64;
    let (_, oversize_dropped) = reported(&hostile_lines, "oversize-frame");
    assert_eq!(oversize_lines + oversize_dropped, oversize);
    assert!(
        hostile_lines
            .iter()
            .any(|l| l["event"] == "log-suppressed" || l.get("suppressed").is_some()),
        "the log says lines were dropped"
    );
    // The forced handshakes were limited too (the same budget).
    let (_, handshakes_dropped) = reported(&hostile_lines, "handshake");
    assert!(handshakes_dropped > 0);

    // The other VM: every line is there, none dropped.
    let good_lines = lines_of(&log, GOOD);
    let configured: Vec<u64> = good_lines
        .iter()
        .filter(|l| l["event"] == "configured")
        .filter_map(|l| l["generation"].as_u64())
        .collect();
    assert_eq!(configured, vec![1, 2, 3, 4], "{good_lines:?}");
    assert!(good_lines.iter().all(|l| l.get("suppressed").is_none()));

    eprintln!(
        "hostile guest: {sent} nesting bombs ({} bytes) in {elapsed:.1?}, {} forced handshakes; \
         the daemon had {} lines to write about its channel, wrote {} (bound {bound}) and \
         dropped {suppressed}; the good VM's {} lines are all there",
        sent * 67,
        hc["handshakes"],
        hostile_lines
            .iter()
            .filter(|l| l["event"] != "log-suppressed")
            .count() as u64
            + suppressed,
        hostile_lines.len(),
        good_lines.len()
    );
}
