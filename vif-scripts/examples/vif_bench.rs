//! Benchmark (a command, not a test): vif-bridge online+offline cycles and 50 concurrent
//! onlines, ours against Debian's `/etc/xen/scripts/vif-bridge`, in one run.
//!
//! ```sh
//! cargo run --release -p xenplug-vif --example vif_bench [-- CYCLES CONCURRENT] [--binary XENPLUG]
//! ```
//!
//! `--binary` measures that `xenplug` binary (e.g. `target/static/xenplug` from
//! `tools/build-static.sh`, the form installed on hosts) instead of this executable.
//!
//! Needs root. Everything happens in a throwaway network namespace (and a private mount
//! namespace with the namespace's sysfs, which the reference's `/sys/class/net/…` checks need),
//! against a real xenstored (xenplug-xenstored on a throwaway socket, `XENSTORED_PATH`). Both
//! implementations are run as separate processes exactly as libxl would: this executable is
//! multi-call and behaves as `vif-bridge` when invoked under that name.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use xenplug_hotplug::Raw;
use xenplug_xenstore::XsOps;

const REFERENCE: &str = "/etc/xen/scripts/vif-bridge";

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    if Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "vif-bridge")
    {
        return xenplug_vif::vif_bridge(Raw::from_process());
    }
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let binary = match args.iter().position(|a| a == "--binary") {
        Some(i) if i + 1 < args.len() => {
            let b = PathBuf::from(args.remove(i + 1));
            args.remove(i);
            Some(b)
        }
        Some(_) => {
            eprintln!("vif_bench: --binary needs a path");
            return ExitCode::from(2);
        }
        None => None,
    };
    let cycles: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(100);
    let concurrent: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    match bench(cycles, concurrent, binary) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vif_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sh(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(cycles: usize, concurrent: u32, binary: Option<PathBuf>) -> Result<(), String> {
    if !Path::new(REFERENCE).exists() {
        return Err(format!(
            "{REFERENCE} is missing (Debian's xen-utils-common)"
        ));
    }
    let ns = Ns(format!("xpbench-{}", std::process::id()));
    sh(Command::new("ip").args(["netns", "add", &ns.0]))?;
    let mut batch =
        String::from("link set lo up\nlink add xenbr0 type bridge\nlink set xenbr0 up\n");
    for i in 0..concurrent.max(1) {
        batch.push_str(&format!("link add vif{i}.0 type veth peer name g{i}\n"));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let batch_file = dir.path().join("batch");
    std::fs::write(&batch_file, batch).map_err(|e| e.to_string())?;
    sh(Command::new("ip")
        .args(["-n", &ns.0, "-batch"])
        .arg(&batch_file))?;

    let daemon = xenplug_xenstored::testing::spawn_daemon();
    let store = daemon.store();
    for i in 0..concurrent.max(1) {
        store
            .write(
                &format!("/local/domain/0/backend/vif/{i}/0/bridge"),
                "xenbr0",
            )
            .map_err(|e| e.to_string())?;
    }
    // Ours runs as libxl runs it: a program called vif-bridge (a link to the multi-call binary).
    let target = match &binary {
        Some(b) => std::fs::canonicalize(b).map_err(|e| format!("{}: {e}", b.display()))?,
        None => std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let ours: PathBuf = dir.path().join("vif-bridge");
    std::os::unix::fs::symlink(&target, &ours).map_err(|e| e.to_string())?;

    // Enter the namespace (the whole process: children inherit it) and give it its own sysfs.
    let f = std::fs::File::open(format!("/run/netns/{}", ns.0)).map_err(|e| e.to_string())?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare: {e}"))?;
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns: {e}"))?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mount sysfs: {e}"))?;

    let socket = daemon.socket().to_path_buf();
    let run = |prog: &Path, action: &str, i: u32| -> Command {
        let mut c = Command::new(prog);
        c.args([action, "type_if=vif"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("vif", format!("vif{i}.0"))
            .env("XENBUS_PATH", format!("backend/vif/{i}/0"))
            .env("XENBUS_TYPE", "vif")
            .env("XENSTORED_PATH", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let cycle = |prog: &Path| -> Result<Duration, String> {
        let t = Instant::now();
        for action in ["online", "offline"] {
            let st = run(prog, action, 0).status().map_err(|e| e.to_string())?;
            if !st.success() {
                return Err(format!("{} {action} failed ({st})", prog.display()));
            }
        }
        Ok(t.elapsed())
    };
    let conc = |prog: &Path| -> Result<Duration, String> {
        let t = Instant::now();
        let children: Vec<_> = (0..concurrent)
            .map(|i| run(prog, "online", i).spawn().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        for mut c in children {
            let st = c.wait().map_err(|e| e.to_string())?;
            if !st.success() {
                return Err(format!(
                    "{} concurrent online failed ({st})",
                    prog.display()
                ));
            }
        }
        let wall = t.elapsed();
        for i in 0..concurrent {
            run(prog, "offline", i)
                .status()
                .map_err(|e| e.to_string())?;
        }
        Ok(wall)
    };
    let reference = Path::new(REFERENCE);
    if let Ok(wrapper) = std::env::var("VIF_BENCH_WRAP") {
        // Diagnostics: one online, offline and no-op of ours under a wrapper command, e.g.
        // VIF_BENCH_WRAP="perf stat -e task-clock,page-faults" or "strace -T -tt -o /tmp/x".
        for action in ["online", "offline", "add"] {
            let c = run(&ours, action, 0);
            let mut w = wrapper.split_whitespace();
            let mut s = Command::new(w.next().unwrap_or("env"));
            s.args(w).arg(c.get_program()).args(c.get_args());
            for (k, v) in c.get_envs() {
                if let Some(v) = v {
                    s.env(k, v);
                }
            }
            eprintln!("== {action}");
            s.status().map_err(|e| e.to_string())?;
        }
    }
    // Interleave so both see the same machine load.
    let (mut o, mut r) = (Vec::new(), Vec::new());
    for _ in 0..cycles {
        o.push(cycle(&ours)?);
        r.push(cycle(reference)?);
    }
    let (om, rm) = (median(o), median(r));
    // The fixed cost of one process: a no-op action (connects, reads nothing, exits 0).
    let noop = |prog: &Path| -> Result<Duration, String> {
        let mut v = Vec::new();
        for _ in 0..cycles {
            let t = Instant::now();
            run(prog, "add", 0).status().map_err(|e| e.to_string())?;
            v.push(t.elapsed());
        }
        Ok(median(v))
    };
    let (on, rn) = (noop(&ours)?, noop(Path::new(REFERENCE))?);
    // The same cycle in this process (no fork/exec/dynamic loading): what the script itself costs.
    let inproc = {
        let mut v = Vec::new();
        for _ in 0..cycles {
            let t = Instant::now();
            for action in ["online", "offline"] {
                let c = run(&ours, action, 0);
                let argv: Vec<String> = std::iter::once("vif-bridge".to_string())
                    .chain(c.get_args().map(|a| a.to_string_lossy().into_owned()))
                    .collect();
                let env: std::collections::BTreeMap<String, String> = c
                    .get_envs()
                    .filter_map(|(k, v)| {
                        Some((
                            k.to_string_lossy().into_owned(),
                            v?.to_string_lossy().into_owned(),
                        ))
                    })
                    .collect();
                if xenplug_vif::vif_bridge(Raw { argv, env }) != ExitCode::SUCCESS {
                    return Err(format!("in-process {action} failed"));
                }
            }
            v.push(t.elapsed());
        }
        median(v)
    };
    let oc = conc(&ours)?;
    let rc = conc(reference)?;
    println!(
        "xenplug = {}{}",
        target.display(),
        if binary.is_some() {
            ""
        } else {
            " (this benchmark, dynamically linked; --binary target/static/xenplug measures the static build hosts install)"
        }
    );
    println!("vif-bridge online+offline cycle, median of {cycles}:");
    println!("  xenplug    {:>9.3} ms", om.as_secs_f64() * 1e3);
    println!("  reference  {:>9.3} ms", rm.as_secs_f64() * 1e3);
    println!(
        "  ratio      {:>9.1}x faster",
        rm.as_secs_f64() / om.as_secs_f64()
    );
    println!(
        "  (in-process cycle, no fork/exec: {:.3} ms)",
        inproc.as_secs_f64() * 1e3
    );
    println!("no-op invocation (`add type_if=vif`), median:");
    println!("  xenplug    {:>9.3} ms", on.as_secs_f64() * 1e3);
    println!("  reference  {:>9.3} ms", rn.as_secs_f64() * 1e3);
    println!("{concurrent} concurrent onlines, wall time:");
    println!("  xenplug    {:>9.3} ms", oc.as_secs_f64() * 1e3);
    println!("  reference  {:>9.3} ms", rc.as_secs_f64() * 1e3);
    println!(
        "  ratio      {:>9.1}x faster",
        rc.as_secs_f64() / oc.as_secs_f64()
    );
    println!("targets: cycle <= 3 ms, {concurrent} concurrent <= 150 ms");
    Ok(())
}
