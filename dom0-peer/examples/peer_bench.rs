//! The benchmark of the dom0 peer (a command, not a test; not shipped): N simulated VMs, the
//! real daemon (`xenplug-peer daemon`) in a child process, time until every VM is configured,
//! the daemon's peak RSS and CPU. Run by `tools/bench-peer.sh`:
//!
//! ```text
//! cargo build --release -p xenplug-peer --bins --example peer_bench
//! target/release/examples/peer_bench --vms 1000 [--peer-binary target/release/xenplug-peer] [--json]
//! ```
//!
//! This process plays the host: an embedded xenstored (from `xenplug-xenstored`) with libxl's
//! console backend nodes and domain homes for N domains, N listening sockets served by
//! `xenplug-simguest` (stale output on connect, shared `xenplug-channel` request handling), and
//! a store directory with N documents. The daemon (`xenplug-peer daemon`, started as a child so
//! its resources are measured alone) discovers the channels through the xenstore watch, connects,
//! handshakes, delivers and verifies. The clock starts when the child is spawned and stops when
//! its `summary` reports N channels `configured`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use xenplug_peer::daemon::raise_nofile;
use xenplug_simguest::{self as simguest, GuestOptions, GuestState};
use xenplug_xenstore::XsOps;

/// Channel name used by the benchmark.
pub const BENCH_CHANNEL: &str = "org.xenplug.bench.v1";

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Number of VMs.
    pub vms: usize,
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

/// Results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Number of VMs.
    pub vms: usize,
    /// How many were configured at the end.
    pub configured: u64,
    /// Seconds from daemon start until all were configured (or the timeout).
    pub seconds_to_all_configured: f64,
    /// Daemon peak resident set size, MiB (VmHWM).
    pub daemon_peak_rss_mib: f64,
    /// Daemon CPU time (user + system), seconds.
    pub daemon_cpu_seconds: f64,
    /// Daemon CPU time / wall time.
    pub daemon_cpu_utilisation: f64,
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

/// Stops the child daemon on every exit path.
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

/// VMs served by one guest host process.
pub const GUESTS_PER_PROCESS: usize = 4000;

/// A `bench-guests` child: stdin closed means "report and exit".
struct GuestHost {
    child: Option<Child>,
    reader: std::io::BufReader<std::process::ChildStdout>,
}

impl GuestHost {
    /// Close its stdin, read how many guests applied generation 1.
    fn finish(&mut self) -> anyhow::Result<usize> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| anyhow::anyhow!("finished twice"))?;
        drop(c.stdin.take());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.reader, &mut line)?;
        let _ = c.wait();
        line.trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("guest host reported {line:?}"))
    }
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
/// and when stdin closes print how many applied generation 1.
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
    let opts = GuestOptions {
        open_delay,
        ..GuestOptions::default()
    };
    let mut states = Vec::with_capacity(to - from);
    for i in from..to {
        let path = dir.join(i.to_string());
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("bind {}", path.display()))?
        };
        let st = Arc::new(GuestState::default());
        rt.spawn(simguest::serve(listener, opts.clone(), st.clone()));
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
    let applied = states.iter().filter(|s| s.generation() == Some(1)).count();
    println!("{applied}");
    Ok(())
}

fn uuid_for(i: usize) -> String {
    format!("00000000-0000-4000-8000-{:012x}", i)
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

/// Run the benchmark.
pub fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    use anyhow::Context;
    let setup_t0 = Instant::now();
    raise_nofile((opts.vms as u64) * 3 + 1024);
    let dir = tempfile::Builder::new()
        .prefix("xpb-")
        .tempdir()
        .context("temporary directory")?;
    let store = dir.path().join("store");
    let socks = dir.path().join("s");
    std::fs::create_dir(&store)?;
    std::fs::create_dir(&socks)?;
    let xsd = xenplug_xenstored::testing::spawn_daemon();
    let mem = xsd.store();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    // Guests are served by helper processes of at most GUESTS_PER_PROCESS each (a listening
    // socket and a connection per VM would exceed one process's descriptor limit).
    let mut hosts = Vec::new();
    let mut from = 0;
    while from < opts.vms {
        let to = (from + GUESTS_PER_PROCESS).min(opts.vms);
        let mut c = Command::new(&opts.guest_host)
            .arg("bench-guests")
            .arg("--dir")
            .arg(&socks)
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .args(["--open-delay-ms", &opts.open_delay.as_millis().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start a guest host")?;
        let mut line = String::new();
        let stdout = c.stdout.take().context("guest host stdout")?;
        let mut reader = std::io::BufReader::new(stdout);
        std::io::BufRead::read_line(&mut reader, &mut line)?;
        if line.trim() != "ready" {
            let _ = c.kill();
            anyhow::bail!("guest host for {from}..{to} failed: {line:?}");
        }
        hosts.push(GuestHost {
            child: Some(c),
            reader,
        });
        from = to;
    }
    for i in 0..opts.vms {
        let name = format!("vm{i}");
        let uuid = uuid_for(i);
        let path = socks.join(i.to_string());
        let doc = json!({"instance-id": format!("i-{i}"), "generation": 1, "hostname": name});
        std::fs::write(store.join(format!("{name}.json")), doc.to_string())?;
        add_domain(&mem, i as u32 + 1, &name, &uuid, &path)
            .map_err(|e| anyhow::anyhow!("xenstore: {e}"))?;
    }
    let setup_seconds = setup_t0.elapsed().as_secs_f64();

    let control = dir.path().join("control.sock");
    let t0 = Instant::now();
    let child = Command::new(&opts.peer_binary)
        .args(["daemon", "--channel-name", BENCH_CHANNEL])
        .arg("--log-level")
        .arg(&opts.daemon_log_level)
        .arg("--xenstore")
        .arg(xsd.socket())
        .arg("--store")
        .arg(&store)
        .arg("--control")
        .arg(&control)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", opts.peer_binary.display()))?;
    let pid = child.id();
    let mut guard = ChildGuard(Some(child));
    let mut configured = 0;
    let elapsed = loop {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(c) = guard.0.as_mut() {
            if let Some(st) = c.try_wait()? {
                anyhow::bail!("the daemon exited early: {st}");
            }
        }
        if let Ok(v) = rt.block_on(xenplug_peer::daemon::control_request(&control, "summary")) {
            configured = v["states"]["configured"].as_u64().unwrap_or(0);
            if configured as usize >= opts.vms {
                break t0.elapsed();
            }
        }
        if t0.elapsed() > opts.timeout {
            break t0.elapsed();
        }
    };
    let rss = proc_status_kib(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0;
    let cpu = proc_cpu_seconds(pid).unwrap_or(0.0);
    drop(guard);
    let wall = elapsed.as_secs_f64();
    let mut applied = 0;
    for h in &mut hosts {
        applied += h.finish()?;
    }
    if configured as usize >= opts.vms && applied != opts.vms {
        anyhow::bail!("daemon reports all configured but only {applied} guests applied");
    }
    drop(rt);
    drop(xsd);
    Ok(BenchReport {
        vms: opts.vms,
        configured,
        seconds_to_all_configured: wall,
        daemon_peak_rss_mib: rss,
        daemon_cpu_seconds: cpu,
        daemon_cpu_utilisation: if wall > 0.0 { cpu / wall } else { 0.0 },
        setup_seconds,
    })
}

#[derive(Parser, Debug)]
#[command(
    name = "peer_bench",
    about = "Benchmark xenplug-peer's daemon against N simulated VMs"
)]
struct Cli {
    /// Number of VMs.
    #[arg(long, default_value_t = 1000)]
    vms: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
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
        peer_binary,
        guest_host: exe,
        timeout: Duration::from_secs_f64(cli.timeout.clamp(0.0, 86_400.0)),
        open_delay: Duration::from_millis(cli.open_delay_ms),
        daemon_log_level: cli.daemon_log_level,
    };
    match run(&opts) {
        Ok(r) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).unwrap_or_else(|e| e.to_string())
                );
            } else {
                println!(
                    "{} VMs: {} configured in {:.2} s; daemon peak RSS {:.1} MiB, CPU {:.2} s ({:.0}% of one core); setup {:.1} s",
                    r.vms,
                    r.configured,
                    r.seconds_to_all_configured,
                    r.daemon_peak_rss_mib,
                    r.daemon_cpu_seconds,
                    r.daemon_cpu_utilisation * 100.0,
                    r.setup_seconds
                );
            }
            if r.configured as usize == r.vms {
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
