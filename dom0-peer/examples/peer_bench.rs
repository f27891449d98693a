//! The benchmark of the dom0 peer (a command, not a test; not shipped): H hosts with N simulated
//! VMs each, one real daemon (`xenplug-peer daemon`) per host in a child process, time until
//! every VM is configured, the daemons' peak RSS and CPU, and how long a document change takes
//! to reach its VM. Run by `tools/bench-peer.sh`:
//!
//! ```text
//! cargo build --release -p xenplug-peer --bins --example peer_bench
//! target/release/examples/peer_bench --vms 1000 [--hosts H] [--store etcd://HOST:PORT,…/PREFIX]
//!                                    [--changes K] [--peer-binary target/release/xenplug-peer] [--json]
//! ```
//!
//! This process plays the hosts: per host an embedded xenstored (from `xenplug-xenstored`) with
//! libxl's console backend nodes and domain homes for its N domains; N×H listening sockets served
//! by `xenplug-simguest` in helper processes (stale output on connect, shared `xenplug-channel`
//! request handling; each apply of a changed document is reported back with its time). The
//! daemons discover the channels through their xenstore watch, connect, handshake, deliver and
//! verify.
//!
//! Every run measures the directory store (a store directory per host with its N documents).
//! With `--store etcd://…` the same hosts then run against etcd, side by side in the same run:
//! the fleet's N×H documents at `PREFIX/vms/<uuid>` (a fresh PREFIX below the given one), every
//! daemon listing and watching them and writing `PREFIX/status/<uuid>`. The clock starts when
//! the daemons are spawned and stops when their `summary` reports every VM configured and, for
//! etcd, no status write queued or on its way (then every status is read back from etcd and
//! must say `configured`). The change latency is measured from just before the change is
//! written (a file renamed into the store directory / a put to etcd) until the guest receives
//! the apply request: K documents get a new generation, one every `--change-interval-ms`.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use xenplug_peer::daemon::raise_nofile;
use xenplug_simguest::{self as simguest, ApplyHook, GuestOptions, GuestState};
use xenplug_xenstore::XsOps;

/// Channel name used by the benchmark.
pub const BENCH_CHANNEL: &str = "org.xenplug.bench.v1";

/// VMs served by one guest host process.
pub const GUESTS_PER_PROCESS: usize = 4000;

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// VMs per host.
    pub vms: usize,
    /// Hosts (one daemon and one xenstored each).
    pub hosts: usize,
    /// The etcd store to compare with (`etcd://…/PREFIX`), if any.
    pub etcd: Option<String>,
    /// Documents changed to measure the latency.
    pub changes: usize,
    /// Time between two changes.
    pub change_interval: Duration,
    /// The `xenplug-peer` binary to run as the daemon.
    pub peer_binary: PathBuf,
    /// This program (it serves the simulated guests in helper processes of its own).
    pub guest_host: PathBuf,
    /// Give up after this long.
    pub timeout: Duration,
    /// Simulated agent's open delay (echo window).
    pub open_delay: Duration,
    /// The daemon's `--log-level`.
    pub daemon_log_level: String,
}

/// Results for one store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// `dir` or `etcd`.
    pub store: String,
    /// Hosts.
    pub hosts: usize,
    /// VMs per host.
    pub vms: usize,
    /// VMs in all.
    pub total_vms: usize,
    /// How many were configured at the end.
    pub configured: u64,
    /// Seconds from the daemons' start until all were configured (for etcd: and every status
    /// written), or the timeout.
    pub seconds_to_all_configured: f64,
    /// Seconds until every VM was configured as the daemons see it (for etcd: before the last
    /// statuses were written).
    pub seconds_to_vms_configured: Option<f64>,
    /// etcd: seconds until every daemon had listed the fleet's documents.
    pub seconds_to_all_listed: Option<f64>,
    /// etcd: statuses read back saying `configured`.
    pub statuses_configured: Option<usize>,
    /// etcd: requests made by all daemons (ranges, watches, transactions, lease grants and
    /// keep-alives) per VM.
    pub etcd_requests_per_vm: Option<f64>,
    /// etcd: status keys written per VM (inside those transactions).
    pub status_writes_per_vm: Option<f64>,
    /// Largest daemon peak RSS, MiB (VmHWM).
    pub daemon_peak_rss_mib_max: f64,
    /// Mean daemon peak RSS, MiB.
    pub daemon_peak_rss_mib_mean: f64,
    /// CPU time of all daemons (user + system), seconds.
    pub daemons_cpu_seconds: f64,
    /// Document changes measured.
    pub changes: usize,
    /// Change-to-VM latency, median, ms.
    pub change_latency_p50_ms: Option<f64>,
    /// Change-to-VM latency, 99th percentile, ms.
    pub change_latency_p99_ms: Option<f64>,
    /// Seconds spent setting up (xenstore nodes, sockets, documents).
    pub setup_seconds: f64,
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15 (1-based).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// Stops a child daemon on every exit path.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a guest helper says on its stdout.
enum HelperMsg {
    Ready,
    Applied { vm: usize, gen: u64, at: Instant },
    Count(usize),
    Failed(String),
}

/// A `bench-guests` child: stdin closed means "report and exit".
struct GuestHost {
    child: Option<Child>,
}

impl Drop for GuestHost {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `bench-guests` helper: serve simulated guests `from..to` on `dir/<i>`, print `ready`,
/// `applied <i> <generation>` for every apply of a generation above 1, and when stdin closes
/// the number of guests that applied a document.
pub fn serve_guests(
    dir: &Path,
    from: usize,
    to: usize,
    open_delay: Duration,
) -> anyhow::Result<()> {
    use anyhow::Context;
    raise_nofile(((to - from) as u64) * 2 + 256);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut states = Vec::with_capacity(to - from);
    for i in from..to {
        let path = dir.join(i.to_string());
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("bind {}", path.display()))?
        };
        let o = out.clone();
        let opts = GuestOptions {
            open_delay,
            on_apply: Some(ApplyHook(Arc::new(move |generation| {
                if generation > 1 {
                    use std::io::Write;
                    let mut o = o.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(o, "applied {i} {generation}");
                    let _ = o.flush();
                }
            }))),
            ..GuestOptions::default()
        };
        let st = Arc::new(GuestState::default());
        rt.spawn(simguest::serve(listener, opts, st.clone()));
        states.push(st);
    }
    println!("ready");
    // The guests run on the runtime while this blocking task waits for stdin to close.
    rt.block_on(async {
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await
    })
    .context("waiting for stdin")?;
    let applied = states.iter().filter(|s| s.generation().is_some()).count();
    println!("{applied}");
    Ok(())
}

fn uuid_for(i: usize) -> String {
    format!("00000000-0000-4000-8000-{:012x}", i)
}

fn doc_for(i: usize, generation: u64) -> String {
    json!({"instance-id": format!("i-{i}"), "generation": generation, "hostname": format!("vm{i}")})
        .to_string()
}

/// Write the nodes libxl writes for domain `domid` with one channel on `path`.
fn add_domain(
    xs: &dyn XsOps,
    domid: u32,
    name: &str,
    uuid: &str,
    path: &Path,
) -> xenplug_xenstore::Result<()> {
    let home = format!("/local/domain/{domid}");
    xs.write(&format!("{home}/name"), name)?;
    xs.write(&format!("{home}/vm"), &format!("/vm/{uuid}"))?;
    let be = format!(
        "{}/{domid}/1",
        xenplug_peer::discovery::DEFAULT_BACKEND_ROOT
    );
    for (k, v) in [
        ("frontend", format!("{home}/device/console/1")),
        ("frontend-id", domid.to_string()),
        ("online", "1".into()),
        ("state", "4".into()),
        ("protocol", "vt100".into()),
        ("name", BENCH_CHANNEL.into()),
        ("connection", "socket".into()),
        ("path", path.display().to_string()),
    ] {
        xs.write(&format!("{be}/{k}"), &v)?;
    }
    Ok(())
}

/// Start the guest helpers for VMs `0..total` (sockets in `socks`); their messages go to `tx`.
fn start_guests(
    opts: &BenchOptions,
    socks: &Path,
    total: usize,
    tx: &mpsc::Sender<HelperMsg>,
) -> anyhow::Result<Vec<GuestHost>> {
    use anyhow::Context;
    let mut hosts = Vec::new();
    let mut from = 0;
    while from < total {
        let to = (from + GUESTS_PER_PROCESS).min(total);
        let mut c = Command::new(&opts.guest_host)
            .arg("bench-guests")
            .arg("--dir")
            .arg(socks)
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .args(["--open-delay-ms", &opts.open_delay.as_millis().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start a guest host")?;
        let stdout = c.stdout.take().context("guest host stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                let mut w = line.split_whitespace();
                let msg = match (w.next(), w.next(), w.next()) {
                    (Some("ready"), None, _) => HelperMsg::Ready,
                    (Some("applied"), Some(i), Some(g)) => match (i.parse(), g.parse()) {
                        (Ok(vm), Ok(gen)) => HelperMsg::Applied { vm, gen, at },
                        _ => HelperMsg::Failed(line.clone()),
                    },
                    (Some(n), None, _) => match n.parse() {
                        Ok(n) => HelperMsg::Count(n),
                        Err(_) => HelperMsg::Failed(line.clone()),
                    },
                    _ => HelperMsg::Failed(line.clone()),
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        hosts.push(GuestHost { child: Some(c) });
        from = to;
    }
    Ok(hosts)
}

/// Wait for `n` `ready` lines (applies that arrive meanwhile are kept in `early`).
fn wait_ready(rx: &mpsc::Receiver<HelperMsg>, n: usize) -> anyhow::Result<()> {
    let mut ready = 0;
    while ready < n {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(HelperMsg::Ready) => ready += 1,
            Ok(HelperMsg::Failed(l)) => anyhow::bail!("a guest host failed: {l}"),
            Ok(_) => {}
            Err(e) => anyhow::bail!("guest hosts not ready: {e}"),
        }
    }
    Ok(())
}

async fn etcd_client(url: &xenplug_peer::etcd::EtcdUrl) -> anyhow::Result<etcd_client::Client> {
    let eps: Vec<String> = url
        .endpoints
        .iter()
        .map(|e| format!("http://{e}"))
        .collect();
    Ok(etcd_client::Client::connect(eps, None).await?)
}

/// Put `docs` in transactions of 100.
async fn etcd_put_all(c: &etcd_client::Client, docs: Vec<(String, String)>) -> anyhow::Result<()> {
    let mut kv = c.kv_client();
    for chunk in docs.chunks(100) {
        let ops: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        kv.txn(etcd_client::Txn::new().and_then(ops)).await?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// Which store a run uses.
#[derive(Debug, Clone)]
enum Mode {
    Dir,
    Etcd(xenplug_peer::etcd::EtcdUrl),
}

/// Run the benchmark for one store.
fn run_mode(opts: &BenchOptions, mode: &Mode) -> anyhow::Result<BenchReport> {
    use anyhow::Context;
    let setup_t0 = Instant::now();
    let total = opts.vms * opts.hosts;
    raise_nofile(20_000);
    let dir = tempfile::Builder::new()
        .prefix("xpb-")
        .tempdir()
        .context("temporary directory")?;
    let socks = dir.path().join("s");
    std::fs::create_dir(&socks)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let (tx, rx) = mpsc::channel();
    let mut guests = start_guests(opts, &socks, total, &tx)?;
    drop(tx);
    wait_ready(&rx, guests.len())?;

    // The documents.
    let (etcd, prefix) = match mode {
        Mode::Dir => (None, String::new()),
        Mode::Etcd(u) => {
            let mut u = u.clone();
            u.prefix = format!(
                "{}/bench-{}-{}",
                u.prefix,
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            );
            let c = rt.block_on(etcd_client(&u))?;
            let docs = (0..total)
                .map(|i| (format!("{}{}", u.vms_prefix(), uuid_for(i)), doc_for(i, 1)))
                .collect();
            rt.block_on(etcd_put_all(&c, docs))
                .context("writing the documents to etcd")?;
            let p = u.display();
            (Some((c, u)), p)
        }
    };
    let mut xsds = Vec::new();
    let mut stores = Vec::new();
    for h in 0..opts.hosts {
        let xsd = xenplug_xenstored::testing::spawn_daemon();
        let mem = xsd.store();
        let store = dir.path().join(format!("store{h}"));
        std::fs::create_dir(&store)?;
        for l in 0..opts.vms {
            let i = h * opts.vms + l;
            let uuid = uuid_for(i);
            if etcd.is_none() {
                std::fs::write(store.join(format!("{uuid}.json")), doc_for(i, 1))?;
            }
            add_domain(
                &mem,
                l as u32 + 1,
                &format!("vm{i}"),
                &uuid,
                &socks.join(i.to_string()),
            )
            .map_err(|e| anyhow::anyhow!("xenstore: {e}"))?;
        }
        xsds.push(xsd);
        stores.push(store);
    }
    let setup_seconds = setup_t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let mut daemons = Vec::new();
    for h in 0..opts.hosts {
        let control = dir.path().join(format!("control{h}.sock"));
        let mut cmd = Command::new(&opts.peer_binary);
        cmd.args(["daemon", "--channel-name", BENCH_CHANNEL])
            .arg("--log-level")
            .arg(&opts.daemon_log_level)
            .arg("--xenstore")
            .arg(xsds[h].socket())
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        match &etcd {
            None => {
                cmd.arg("--store").arg(&stores[h]);
            }
            Some(_) => {
                cmd.args(["--store", &prefix, "--host", &format!("bench-host-{h}")]);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", opts.peer_binary.display()))?;
        daemons.push((child.id(), control, ChildGuard(Some(child))));
    }
    let mut configured;
    let mut last: Vec<Value> = vec![Value::Null; opts.hosts];
    let mut vms_configured_at = None;
    let mut listed_at = None;
    let elapsed = loop {
        std::thread::sleep(Duration::from_millis(100));
        for (_, _, g) in daemons.iter_mut() {
            if let Some(c) = g.0.as_mut() {
                if let Some(st) = c.try_wait()? {
                    anyhow::bail!("a daemon exited early: {st}");
                }
            }
        }
        let mut done = true;
        let mut listed = etcd.is_some();
        configured = 0;
        for (h, (_, control, _)) in daemons.iter().enumerate() {
            match rt.block_on(xenplug_peer::daemon::control_request(control, "summary")) {
                Ok(v) => {
                    let n = v["states"]["configured"].as_u64().unwrap_or(0);
                    configured += n;
                    let s = &v["store"];
                    let written = etcd.is_none()
                        || (s["status_queued"] == 0
                            && s["status_inflight"] == 0
                            && s["status_failing"] == false);
                    done &= n as usize >= opts.vms && written;
                    listed &= s["listed"] == true;
                    last[h] = v;
                }
                Err(_) => {
                    done = false;
                    listed = false;
                }
            }
        }
        if listed && listed_at.is_none() {
            listed_at = Some(t0.elapsed().as_secs_f64());
        }
        if configured as usize >= total && vms_configured_at.is_none() {
            vms_configured_at = Some(t0.elapsed().as_secs_f64());
        }
        if done {
            break t0.elapsed();
        }
        if t0.elapsed() > opts.timeout {
            break t0.elapsed();
        }
    };
    let wall = elapsed.as_secs_f64();

    // etcd: read every status back.
    let statuses_configured = match &etcd {
        None => None,
        Some((c, u)) => {
            let (all, _) = rt
                .block_on(xenplug_peer::etcd::list_prefix(
                    c,
                    &u.status_prefix(),
                    false,
                    2000,
                    Duration::from_secs(30),
                    None,
                ))
                .map_err(|e| anyhow::anyhow!(e))?;
            Some(
                all.iter()
                    .filter(|(_, v, _)| {
                        serde_json::from_slice::<Value>(v)
                            .map(|v| v["state"] == "configured")
                            .unwrap_or(false)
                    })
                    .count(),
            )
        }
    };

    // Change latency: K documents spread over the fleet get generation 2.
    let k = opts.changes.min(total);
    let picks: Vec<usize> = (0..k).map(|j| j * total / k.max(1)).collect();
    let mut written_at: HashMap<usize, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let mut early: Vec<(usize, Instant)> = Vec::new();
    for &i in &picks {
        let doc = doc_for(i, 2);
        let t = Instant::now();
        match &etcd {
            None => {
                let h = i / opts.vms;
                let f = stores[h].join(format!("{}.json", uuid_for(i)));
                let tmp = stores[h].join(format!(".{}.tmp", uuid_for(i)));
                std::fs::write(&tmp, &doc)?;
                std::fs::rename(&tmp, &f)?;
            }
            Some((c, u)) => {
                let mut kv = c.kv_client();
                rt.block_on(kv.put(format!("{}{}", u.vms_prefix(), uuid_for(i)), doc, None))?;
            }
        }
        written_at.insert(i, t);
        // Collect what arrived meanwhile, then pace the next change.
        let next = t + opts.change_interval;
        while let Ok(m) = rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            if let HelperMsg::Applied { vm, gen: 2, at } = m {
                early.push((vm, at));
            }
        }
    }
    for (vm, at) in early.drain(..) {
        if let Some(t) = written_at.remove(&vm) {
            latencies.push(at.saturating_duration_since(t).as_secs_f64() * 1000.0);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !written_at.is_empty() && Instant::now() < deadline {
        if let Ok(HelperMsg::Applied { vm, gen: 2, at }) =
            rx.recv_timeout(Duration::from_millis(200))
        {
            if let Some(t) = written_at.remove(&vm) {
                latencies.push(at.saturating_duration_since(t).as_secs_f64() * 1000.0);
            }
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));

    let mut rss = Vec::new();
    let mut cpu = 0.0;
    for (pid, _, _) in &daemons {
        rss.push(proc_status_kib(*pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0);
        cpu += proc_cpu_seconds(*pid).unwrap_or(0.0);
    }
    let (requests, puts) = last.iter().fold((0u64, 0u64), |(r, p), v| {
        (
            r + v["store"]["requests"]["total"].as_u64().unwrap_or(0),
            p + v["store"]["requests"]["status_puts"].as_u64().unwrap_or(0),
        )
    });
    drop(daemons);
    let mut applied = 0;
    for g in guests.iter_mut() {
        if let Some(mut c) = g.child.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
    while let Ok(m) = rx.recv_timeout(Duration::from_secs(10)) {
        if let HelperMsg::Count(n) = m {
            applied += n;
        }
    }
    if configured as usize >= total && applied != total {
        anyhow::bail!("daemons report all configured but only {applied} guests applied");
    }
    if let Some((c, u)) = &etcd {
        // Leave the cluster as it was.
        let mut kv = c.kv_client();
        let _ = rt.block_on(kv.delete(
            u.prefix.clone() + "/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        ));
    }
    drop(xsds);
    Ok(BenchReport {
        store: match mode {
            Mode::Dir => "dir".into(),
            Mode::Etcd(_) => "etcd".into(),
        },
        hosts: opts.hosts,
        vms: opts.vms,
        total_vms: total,
        configured,
        seconds_to_all_configured: wall,
        seconds_to_vms_configured: vms_configured_at,
        seconds_to_all_listed: listed_at,
        statuses_configured,
        etcd_requests_per_vm: etcd.as_ref().map(|_| requests as f64 / total as f64),
        status_writes_per_vm: etcd.as_ref().map(|_| puts as f64 / total as f64),
        daemon_peak_rss_mib_max: rss.iter().copied().fold(0.0, f64::max),
        daemon_peak_rss_mib_mean: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
        daemons_cpu_seconds: cpu,
        changes: latencies.len(),
        change_latency_p50_ms: percentile(&latencies, 0.5),
        change_latency_p99_ms: percentile(&latencies, 0.99),
        setup_seconds,
    })
}

/// Run the benchmark: the directory store, then etcd if given.
pub fn run(opts: &BenchOptions) -> anyhow::Result<Vec<BenchReport>> {
    let mut out = vec![run_mode(opts, &Mode::Dir)?];
    if let Some(url) = &opts.etcd {
        let xenplug_peer::etcd::StoreSpec::Etcd(u) =
            xenplug_peer::etcd::parse_store(url).map_err(|e| anyhow::anyhow!(e))?
        else {
            anyhow::bail!("--store must be an etcd:// URL");
        };
        out.push(run_mode(opts, &Mode::Etcd(u))?);
    }
    Ok(out)
}

#[derive(Parser, Debug)]
#[command(
    name = "peer_bench",
    about = "Benchmark xenplug-peer's daemon: H hosts × N simulated VMs, directory store and etcd side by side"
)]
struct Cli {
    /// VMs per host.
    #[arg(long, default_value_t = 1000)]
    vms: usize,
    /// Hosts (a daemon and a xenstored each).
    #[arg(long, default_value_t = 1)]
    hosts: usize,
    /// Also run against this etcd store (etcd://HOST:PORT,…/PREFIX).
    #[arg(long)]
    store: Option<String>,
    /// Documents changed to measure the change-to-VM latency.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Milliseconds between two changes.
    #[arg(long, default_value_t = 20)]
    change_interval_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Simulated agents open their tty this many ms after the connection (echo window).
    #[arg(long, default_value_t = 0)]
    open_delay_ms: u64,
    /// The daemon's log level (its log goes to stderr).
    #[arg(long, default_value = "warn")]
    daemon_log_level: String,
    /// The xenplug-peer binary (default: the one built next to this example).
    #[arg(long)]
    peer_binary: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    helper: Option<Helper>,
}

#[derive(Subcommand, Debug)]
enum Helper {
    /// (Internal.) Serve simulated guests `from..to` under `dir`.
    #[command(hide = true)]
    BenchGuests {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        from: usize,
        #[arg(long)]
        to: usize,
        #[arg(long, default_value_t = 0)]
        open_delay_ms: u64,
    },
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    let cli = Cli::parse();
    if let Some(Helper::BenchGuests {
        dir,
        from,
        to,
        open_delay_ms,
    }) = cli.helper
    {
        return match serve_guests(&dir, from, to, Duration::from_millis(open_delay_ms)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench: cannot find my own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    // target/<profile>/examples/peer_bench → target/<profile>/xenplug-peer
    let peer_binary = cli.peer_binary.unwrap_or_else(|| {
        exe.parent()
            .and_then(Path::parent)
            .map(|d| d.join("xenplug-peer"))
            .unwrap_or_else(|| PathBuf::from("xenplug-peer"))
    });
    if !peer_binary.exists() {
        eprintln!(
            "bench: {} not found (build it: cargo build --release -p xenplug-peer --bins)",
            peer_binary.display()
        );
        return ExitCode::FAILURE;
    }
    let opts = BenchOptions {
        vms: cli.vms,
        hosts: cli.hosts.max(1),
        etcd: cli.store,
        changes: cli.changes,
        change_interval: Duration::from_millis(cli.change_interval_ms),
        peer_binary,
        guest_host: exe,
        timeout: Duration::from_secs_f64(cli.timeout.clamp(0.0, 86_400.0)),
        open_delay: Duration::from_millis(cli.open_delay_ms),
        daemon_log_level: cli.daemon_log_level,
    };
    match run(&opts) {
        Ok(rs) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rs).unwrap_or_else(|e| e.to_string())
                );
            } else {
                println!(
                    "{:<6} {:>5} {:>8} {:>10} {:>9} {:>13} {:>12} {:>11} {:>10} {:>9} {:>9} {:>7}",
                    "store",
                    "hosts",
                    "VMs",
                    "configured",
                    "seconds",
                    "etcd req/VM",
                    "status w/VM",
                    "RSS max MiB",
                    "daemon CPU",
                    "change p50",
                    "p99 ms",
                    "setup s"
                );
                for r in &rs {
                    println!(
                        "{:<6} {:>5} {:>8} {:>10} {:>9.2} {:>13} {:>12} {:>11.1} {:>10.1} {:>9} {:>9} {:>7.1}",
                        r.store,
                        r.hosts,
                        r.total_vms,
                        r.configured,
                        r.seconds_to_all_configured,
                        fmt_opt(r.etcd_requests_per_vm, 3),
                        fmt_opt(r.status_writes_per_vm, 2),
                        r.daemon_peak_rss_mib_max,
                        r.daemons_cpu_seconds,
                        fmt_opt(r.change_latency_p50_ms, 0),
                        fmt_opt(r.change_latency_p99_ms, 0),
                        r.setup_seconds
                    );
                }
                for r in &rs {
                    println!(
                        "{}: every VM configured (daemons' view) after {} s{}; {} changes timed; mean daemon RSS {:.1} MiB",
                        r.store,
                        fmt_opt(r.seconds_to_vms_configured, 2),
                        match (r.seconds_to_all_listed, r.statuses_configured) {
                            (Some(l), Some(n)) => format!(
                                ", every daemon listed after {l:.2} s, {n} of {} statuses in etcd say configured",
                                r.total_vms
                            ),
                            (None, Some(n)) => format!(
                                ", {n} of {} statuses in etcd say configured",
                                r.total_vms
                            ),
                            _ => String::new(),
                        },
                        r.changes,
                        r.daemon_peak_rss_mib_mean
                    );
                }
            }
            let ok = rs.iter().all(|r| {
                r.configured as usize == r.total_vms
                    && r.statuses_configured.is_none_or(|n| n == r.total_vms)
            });
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
