//! Benchmark: `block add`/`remove` latency with 0, 100 and 400 existing vbds, ours against
//! Debian's `/etc/xen/scripts/block`, in the same run; and 50 concurrent file adds.
//!
//! `cargo run --release -p xenplug-block --example bench` (root; needs loop devices, Debian's
//! script and xenstore-utils). Both implementations run as separate processes, as libxl runs
//! them: ours is this very binary re-executed with `argv[0]` = `block` (a multi-call binary, like
//! the `xenplug` binary), the reference is `bash /etc/xen/scripts/block`. Each side gets a fresh
//! in-process xenstored on its own socket.
//!
//! Options: `--iterations N` (default 20) per measurement; `--binary XENPLUG` runs that
//! multi-call binary as `block` (e.g. `target/static/xenplug` from `tools/build-static.sh`, the
//! form installed on hosts) instead of this executable. The concurrent adds run with our log at
//! `debug`, so each run's `block` lock hold and wait times are summarised;
//! `BENCH_KEEP_LOG=FILE` keeps that log.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use xenplug_block::loopdev::{KernelLoops, LoopOps};
use xenplug_xenstore::XsOps;
use xenplug_xenstored::testing::{spawn_daemon, TestDaemon};

const REFERENCE: &str = "/etc/xen/scripts/block";

/// The multi-call binary run as `block` for our side (this executable unless `--binary`).
static OURS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if let Some((_, script)) = xenplug_block::SCRIPTS.iter().find(|(n, _)| *n == name) {
        return script(xenplug_hotplug::Raw::from_process());
    }
    let iterations = std::env::args()
        .skip_while(|a| a != "--iterations")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20u32);
    let binary = match std::env::args().skip_while(|a| a != "--binary").nth(1) {
        Some(b) => match std::fs::canonicalize(&b) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("bench: --binary {b}: {e}");
                return ExitCode::from(2);
            }
        },
        None => std::env::current_exe().expect("current exe"),
    };
    let _ = OURS.set(binary);
    match bench(iterations) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Ours,
    Reference,
}

struct World {
    daemon: TestDaemon,
    dir: tempfile::TempDir,
    side: Side,
    /// Our scripts' log file level (`debug` adds each lock's hold time).
    log_level: &'static str,
}

impl World {
    fn new(side: Side) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        World {
            daemon: spawn_daemon(),
            dir,
            side,
            log_level: "info",
        }
    }

    fn command(&self, action: &str, dom: u32, dev: u32) -> Command {
        let mut c = match self.side {
            Side::Ours => {
                let mut c = Command::new(OURS.get().expect("binary chosen in main"));
                std::os::unix::process::CommandExt::arg0(&mut c, "block");
                c.env("XENPLUG_STATE_DIR", self.dir.path().join("state"))
                    .env("XENPLUG_LOCK_DIR", self.dir.path().join("locks"))
                    .env("XENPLUG_LOG_FILE", self.dir.path().join("log"))
                    .env("XENPLUG_LOG_LEVEL", self.log_level)
                    .env("XENPLUG_SYSLOG", "0");
                c
            }
            Side::Reference => {
                let mut c = Command::new("bash");
                c.arg(REFERENCE);
                c
            }
        };
        c.arg(action)
            .env("XENBUS_PATH", format!("backend/vbd/{dom}/{dev}"))
            .env("XENBUS_TYPE", "vbd")
            .env("XENBUS_BASE_PATH", "backend")
            .env("XENSTORED_PATH", self.daemon.socket())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn run(&self, action: &str, dom: u32, dev: u32) -> Result<Duration, String> {
        let t = Instant::now();
        let st = self
            .command(action, dom, dev)
            .status()
            .map_err(|e| e.to_string())?;
        let d = t.elapsed();
        if !st.success() {
            let err = self
                .daemon
                .store()
                .read(&format!(
                    "/local/domain/0/backend/vbd/{dom}/{dev}/hotplug-error"
                ))
                .ok()
                .flatten();
            return Err(format!("{action} {dom}/{dev} failed: {err:?}"));
        }
        Ok(d)
    }

    fn backend(&self, dom: u32, dev: u32, params: &str, mode: &str, phys: Option<&str>) {
        let xs = self.daemon.store();
        let b = format!("/local/domain/0/backend/vbd/{dom}/{dev}");
        for (k, v) in [
            ("params", params),
            ("mode", mode),
            ("type", "phy"),
            ("frontend-id", &dom.to_string()),
            ("state", "2"),
            ("online", "1"),
        ] {
            xs.write(&format!("{b}/{k}"), v).expect("write");
        }
        if let Some(p) = phys {
            xs.write(&format!("{b}/physical-device"), p).expect("write");
        }
        xs.write(&format!("/local/domain/{dom}/vm"), &format!("/vm/{dom}"))
            .expect("write");
    }

    fn clear(&self, dom: u32, dev: u32) {
        let _ = self
            .daemon
            .store()
            .rm(&format!("/local/domain/0/backend/vbd/{dom}/{dev}"));
    }
}

fn mean(v: &[Duration]) -> f64 {
    v.iter().map(|d| d.as_secs_f64() * 1e3).sum::<f64>() / v.len().max(1) as f64
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    p
}

fn latency(side: Side, existing: u32, iterations: u32, phy: &Path) -> Result<(f64, f64), String> {
    let w = World::new(side);
    // Existing vbds of other VMs (on other devices).
    for i in 0..existing {
        w.backend(
            2000 + i,
            51712,
            "/dev/unrelated",
            "w",
            Some(&format!("fe:{:x}", i + 1)),
        );
    }
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for i in 0..iterations {
        let dom = 10 + i;
        w.backend(dom, 768, phy.to_str().unwrap_or_default(), "w", None);
        adds.push(w.run("add", dom, 768)?);
        removes.push(w.run("remove", dom, 768)?);
        w.clear(dom, 768);
    }
    Ok((mean(&adds), mean(&removes)))
}

/// The hold and wait times of the locks our scripts' adds took (`block`, or a file's own
/// `block-file@…`), from their debug log lines (`released lock L: held H ms, waited W ms`).
#[derive(Default)]
struct LockStats {
    held: Vec<f64>,
    waited: Vec<f64>,
}

impl LockStats {
    fn read(log: &Path) -> LockStats {
        let mut s = LockStats::default();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let Some(rest) = line
                .split("released lock ")
                .nth(1)
                .filter(|r| r.starts_with("block"))
                .and_then(|r| r.split(": held ").nth(1))
            else {
                continue;
            };
            let mut nums = rest
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter(|t| !t.is_empty())
                .filter_map(|t| t.parse::<f64>().ok());
            if let (Some(h), Some(w)) = (nums.next(), nums.next()) {
                s.held.push(h);
                s.waited.push(w);
            }
        }
        s
    }

    fn quantile(v: &[f64], q: f64) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    }

    fn summary(&self, wall: Duration) -> String {
        let total: f64 = self.held.iter().sum();
        format!(
            "{} lock holds: held median {:.2} ms, p90 {:.2}, max {:.2}, in all {:.1} ms \
             (their sum is {:.0}% of the wall time); waits median {:.1} ms, max {:.1}",
            self.held.len(),
            Self::quantile(&self.held, 0.5),
            Self::quantile(&self.held, 0.9),
            Self::quantile(&self.held, 1.0),
            total,
            100.0 * total / (wall.as_secs_f64() * 1e3),
            Self::quantile(&self.waited, 0.5),
            Self::quantile(&self.waited, 1.0),
        )
    }
}

fn concurrent(side: Side, n: u32) -> Result<(Duration, LockStats), String> {
    let mut w = World::new(side);
    w.log_level = "debug";
    let imgs: Vec<PathBuf> = (0..n)
        .map(|i| image(w.dir.path(), &format!("c{i}.img")))
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        w.backend(
            3000 + i as u32,
            51712,
            img.to_str().unwrap_or_default(),
            "w",
            None,
        );
    }
    let t = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| w.command("add", 3000 + i, 51712).spawn())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut failed = 0;
    for mut c in children {
        if !c.wait().map_err(|e| e.to_string())?.success() {
            failed += 1;
        }
    }
    let wall = t.elapsed();
    let stats = LockStats::read(&w.dir.path().join("log"));
    // `BENCH_KEEP_LOG=FILE`: keep our scripts' debug log of the concurrent adds.
    if let (Side::Ours, Some(keep)) = (side, std::env::var_os("BENCH_KEEP_LOG")) {
        let _ = std::fs::copy(w.dir.path().join("log"), keep);
    }
    // Clean up: each side removes its own.
    for i in 0..n {
        let _ = w.run("remove", 3000 + i, 51712);
    }
    let loops = KernelLoops::default();
    for l in loops.list().map_err(|e| e.to_string())? {
        if l.file_name.starts_with(w.dir.path()) {
            let _ = loops.detach(&l.path);
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {n} concurrent adds failed"));
    }
    Ok((wall, stats))
}

fn bench(iterations: u32) -> Result<(), String> {
    if !Path::new(REFERENCE).is_file() {
        return Err(format!("{REFERENCE} is missing (install xen-utils-common)"));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let backing = image(dir.path(), "phy.img");
    let loops = KernelLoops::default();
    let phy = loops.attach(&backing, false).map_err(|e| e.to_string())?;
    let result = (|| {
        println!(
            "ours: {}",
            OURS.get()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        println!(
            "block add/remove latency, mean of {iterations} (ms); phy device {}",
            phy.path.display()
        );
        println!(
            "{:>6} | {:>9} {:>9} | {:>9} {:>9} | {:>7}",
            "vbds", "ours add", "rm", "ref add", "rm", "ratio"
        );
        for existing in [0, 100, 400] {
            let (oa, or) = latency(Side::Ours, existing, iterations, &phy.path)?;
            let (ra, rr) = latency(Side::Reference, existing, iterations, &phy.path)?;
            println!(
                "{existing:>6} | {oa:>9.2} {or:>9.2} | {ra:>9.2} {rr:>9.2} | {:>6.1}x",
                ra / oa
            );
        }
        let (ours, locks) = concurrent(Side::Ours, 50)?;
        let (theirs, _) = concurrent(Side::Reference, 50)?;
        println!(
            "50 concurrent file adds (wall): ours {:.0} ms, reference {:.0} ms, ratio {:.1}x",
            ours.as_secs_f64() * 1e3,
            theirs.as_secs_f64() * 1e3,
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
        println!("  ours: {}", locks.summary(ours));
        println!("targets: add <= 5 ms, flat in the number of vbds; 50 concurrent adds <= 300 ms");
        Ok(())
    })();
    let _ = loops.detach(&phy.path);
    result
}
