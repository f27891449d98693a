//! Hostile guests against the real daemon binary: a garbage flood, one frame of 1 GiB without a
//! newline (the per-guest read rate is raised so the daemon really consumes all of it), a
//! nesting bomb, a slowloris, and a guest answering with stale nonces — next to well-behaved
//! VMs, which must all be configured promptly while the daemon's peak memory stays bounded.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vm_hwm_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Accept the daemon's connections forever and run `f` on each.
fn hostile<F, Fut>(sock: &std::path::Path, f: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(tokio::net::UnixStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = UnixListener::bind(sock).unwrap();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            f(c).await;
        }
    })
}

const GOOD: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_cannot_raise_memory_or_delay_others() {
    let mut h = Host::new();
    let xs = h.xsd.store();
    let giant: u64 = 1 << 30;

    // Well-behaved VMs.
    let mut goods = Vec::new();
    for i in 0..GOOD {
        let name = format!("good{i}");
        std::fs::write(h.store.join(format!("{name}.json")), doc(&name, 1)).unwrap();
        let s = h.sock(&name);
        goods.push(h.guest(&s, guest_opts()));
        add_domain(&xs, 100 + i, &name, &uuid(100 + i), &s);
    }
    // Hostile VMs (with documents, so they would be configured if they behaved).
    for n in ["flood", "giant", "deep", "slow", "stale"] {
        std::fs::write(h.store.join(format!("{n}.json")), doc(n, 1)).unwrap();
    }
    let flood = h.sock("flood");
    let _f = hostile(&flood, |mut c| async move {
        let junk: Vec<u8> = (0..65536u32)
            .map(|i| b"AT\r\nATZ garbage ]]]\"\\ \x01\x7f"[(i % 24) as usize])
            .collect();
        while c.write_all(&junk).await.is_ok() {}
    });
    let giant_sock = h.sock("giant");
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let _g = hostile(&giant_sock, move |mut c| {
        let done_tx = done_tx.clone();
        async move {
            let chunk = vec![b'a'; 1 << 20];
            if c.write_all(b"{\"return\": \"").await.is_err() {
                return;
            }
            let mut sent = 0u64;
            while sent < giant {
                if c.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len() as u64;
            }
            let _ = done_tx.send(true);
            let mut sink = [0u8; 1024];
            while matches!(c.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    });
    let deep = h.sock("deep");
    let _d = hostile(&deep, |mut c| async move {
        let mut bomb = vec![b'{'];
        bomb.extend(std::iter::repeat_n(b'[', 1 << 20));
        let _ = c.write_all(&bomb).await;
        let mut sink = [0u8; 1024];
        while matches!(c.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let slow = h.sock("slow");
    let _s = hostile(&slow, |mut c| async move {
        for b in b"{\"return\": ".iter().cycle() {
            if c.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let stale = h.sock("stale");
    let _st = hostile(&stale, |mut c| async move {
        // Answers every sync with the previous nonce and replays old replies.
        let mut dec = xenplug_channel::Decoder::default();
        let mut buf = vec![0u8; 4096];
        let mut last: i64 = 1;
        loop {
            let n = match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut out = Vec::new();
            for ev in dec.feed(&buf[..n]) {
                if let xenplug_channel::Event::Frame(f) = ev {
                    if let Some(id) = f["arguments"]["id"].as_i64() {
                        out.push(0xFF);
                        out.extend(
                            format!("{{\"return\": {last}}}\n{{\"return\": {}}}\n", id + 1).bytes(),
                        );
                        last = id;
                    }
                }
            }
            if c.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    for (i, (n, s)) in [
        ("flood", &flood),
        ("giant", &giant_sock),
        ("deep", &deep),
        ("slow", &slow),
        ("stale", &stale),
    ]
    .iter()
    .enumerate()
    {
        add_domain(&xs, 200 + i as u32, n, &uuid(200 + i as u32), s);
    }

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
        .args(["--guest-rate", "2147483648", "--handshake-timeout", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&logfile).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _daemon = Daemon(child);

    // Every good VM configured within 10 s despite the hostile ones.
    wait_for(
        Duration::from_secs(10),
        "all good VMs configured",
        || async {
            let rows = h.list().await;
            let n = rows
                .iter()
                .filter(|r| {
                    r["vm_name"].as_str().unwrap_or("").starts_with("good")
                        && r["state"] == "configured"
                })
                .count();
            (n == GOOD as usize).then_some(())
        },
    )
    .await;
    let good_time = t0.elapsed();
    assert!(goods.iter().all(|g| g.generation() == Some(1)));

    // Let the giant frame go through completely (the daemon reads it as fast as it can).
    // Meanwhile the control socket answers promptly (a channel kept full must not hold back
    // the daemon's other work).
    let mut rx = done_rx;
    let mut slowest = Duration::ZERO;
    let mut asked = 0u32;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    tokio::time::timeout(Duration::from_secs(240), async {
        loop {
            tokio::select! {
                r = rx.wait_for(|d| *d) => { r.unwrap(); break; }
                _ = every.tick() => {
                    let t = Instant::now();
                    assert_eq!(h.list().await.len(), GOOD as usize + 5);
                    slowest = slowest.max(t.elapsed());
                    asked += 1;
                }
            }
        }
    })
    .await
    .expect("the daemon consumed the giant frame");
    assert!(
        slowest < Duration::from_secs(1),
        "a `list` took {slowest:?} while the giant frame streamed ({asked} asked)"
    );
    let rows = wait_for(Duration::from_secs(60), "hostile rows settled", || async {
        let rows = h.list().await;
        let get = |n: &str| rows.iter().find(|r| r["vm_name"] == n).cloned();
        let deep = get("deep")?;
        let slow = get("slow")?;
        let stale = get("stale")?;
        let ok = deep["counters"]["oversize_frames"].as_u64()? >= 1
            && slow["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("no answer to the handshake")
            && stale["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("no answer to the handshake");
        ok.then_some(rows)
    })
    .await;
    for r in &rows {
        let name = r["vm_name"].as_str().unwrap();
        if !name.starts_with("good") {
            assert_ne!(
                r["state"], "configured",
                "hostile {name} got configured: {r}"
            );
        }
    }
    let giant_row = rows.iter().find(|r| r["vm_name"] == "giant").unwrap();
    assert!(
        giant_row["counters"]["oversize_frames"].as_u64().unwrap() >= 1,
        "{giant_row}"
    );
    let hwm = vm_hwm_mib(pid);
    assert!(
        hwm < 64.0,
        "daemon peak RSS {hwm:.1} MiB after {giant} bytes in one frame and a garbage flood"
    );
    // Still responsive: a good VM's document change is picked up promptly.
    std::fs::write(h.store.join("good0.json"), doc("good0", 2)).unwrap();
    wait_for(Duration::from_secs(10), "good0 at generation 2", || async {
        h.list()
            .await
            .into_iter()
            .find(|r| r["vm_name"] == "good0" && r["applied_generation"] == 2)
    })
    .await;
    eprintln!(
        "good VMs configured in {good_time:?}; daemon peak RSS {hwm:.1} MiB after a {} MiB frame; \
         slowest of {asked} lists meanwhile {slowest:?}",
        giant >> 20
    );
    let log = std::fs::read_to_string(&logfile).unwrap();
    assert!(
        log.contains("\"event\":\"oversize-frame\""),
        "oversize frames are logged"
    );
}
