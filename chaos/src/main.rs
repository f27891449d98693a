//! `xenplug-chaos`: crash-safety figures (issue 13), a command and not a timed test.
//!
//! For each scenario it measures the operation (the median of a few uninterrupted runs), then
//! for every round prepares what the toolstack would (backend nodes, netback's vif), starts the
//! operation, SIGKILLs it at an instant drawn uniformly over that duration, runs what libxl runs
//! next (`remove`, `offline`), lets libxl and the kernel finish (the domain's xenstore
//! directories removed, the vif deleted), and compares everything that could leak with the
//! state before the round. A leaked item is anything left that was not there before; a removed
//! item of the host counts too. Each scenario runs in its own process with private mount (and,
//! for vifs, network) namespaces: the host is never touched.
//!
//! ```text
//! xenplug-chaos [--rounds N] [--binary XENPLUG] [--agent XENPLUG_AGENT] [--seed N]
//!               [--reference] [--report-only SCENARIO]… SCENARIO…
//! ```
//!
//! Scenarios: `block-file`, `block-phy`, `block-nbd`, `block-iscsi`, `vif-bridge`,
//! `vif-route`, `vif-nat`, `vif-openvswitch`, `agent`, or `all`. `--reference` also runs
//! Debian's `/etc/xen/scripts/block` through `block-file` and `block-phy` (the comparison
//! figure). `--binary` is the `xenplug` multi-call binary under test (default: `xenplug` next to
//! this executable); `--agent` the `xenplug-agent` binary (default: next to this executable).
//!
//! Prints one line per scenario and side (rounds, how many were still running when killed,
//! the kill window, leaks by class, the first findings), then a JSON line per scenario. Exit
//! status: 0 when xenplug leaked nothing (leaks of a `--report-only` scenario are printed, not
//! counted), 1 when it did, 2 on a usage or set-up error. Needs root (loop devices,
//! namespaces). `CHAOS_LOG=1` adds the scripts' log of each leaky round to the findings;
//! `CHAOS_VIFNAME=<name>` gives the vifs a `vifname` (renamed on `online`).
//!
//! The same binary is the stand-ins of `standin.rs` when called `nbd-client`, `iscsiadm` or
//! `iscsid-standin`.

mod agent;
mod block;
mod harness;
mod standin;
mod vif;
mod world;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use harness::{Report, Rng, Scenario};

const SCENARIOS: &[&str] = &[
    "block-file",
    "block-phy",
    "block-nbd",
    "block-iscsi",
    "vif-bridge",
    "vif-route",
    "vif-nat",
    "vif-openvswitch",
    "agent",
];

struct Options {
    rounds: u32,
    binary: PathBuf,
    agent: PathBuf,
    seed: u64,
    reference: bool,
    report_only: Vec<String>,
    scenarios: Vec<String>,
    /// Internal: run one scenario in this process (`--one NAME --side S`).
    one: Option<(String, String)>,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: xenplug-chaos [--rounds N] [--binary XENPLUG] [--agent XENPLUG_AGENT] [--seed N] \
         [--reference] [--report-only SCENARIO]… SCENARIO…\nscenarios: {} all",
        SCENARIOS.join(" ")
    );
    ExitCode::from(2)
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        rounds: 1000,
        binary: sibling("xenplug"),
        agent: sibling("xenplug-agent"),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        reference: false,
        report_only: Vec::new(),
        scenarios: Vec::new(),
        one: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().ok_or(format!("{what} needs a value"));
        match a.as_str() {
            "--rounds" => o.rounds = value("--rounds")?.parse().map_err(|e| format!("{e}"))?,
            "--binary" => o.binary = value("--binary")?.into(),
            "--agent" => o.agent = value("--agent")?.into(),
            "--seed" => o.seed = value("--seed")?.parse().map_err(|e| format!("{e}"))?,
            "--reference" => o.reference = true,
            "--report-only" => o.report_only.push(value("--report-only")?),
            "--one" => {
                let name = value("--one")?;
                o.one = Some((name, "xenplug".into()));
            }
            "--side" => {
                let side = value("--side")?;
                if let Some(one) = o.one.as_mut() {
                    one.1 = side;
                }
            }
            "all" => o.scenarios.extend(SCENARIOS.iter().map(|s| s.to_string())),
            s if SCENARIOS.contains(&s) => o.scenarios.push(s.to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    o.binary = std::fs::canonicalize(&o.binary)
        .map_err(|e| format!("--binary {}: {e}", o.binary.display()))?;
    if o.scenarios.is_empty() && o.one.is_none() {
        return Err("no scenario given".into());
    }
    Ok(o)
}

fn scenario(name: &str, side: &str, o: &Options) -> Result<Box<dyn Scenario>, String> {
    let reference = side == "reference";
    Ok(match name {
        "block-file" => Box::new(block::Block::new(block::Kind::File, reference, &o.binary)?),
        "block-phy" => Box::new(block::Block::new(block::Kind::Phy, reference, &o.binary)?),
        "block-nbd" => Box::new(block::Block::new(block::Kind::Nbd, reference, &o.binary)?),
        "block-iscsi" => Box::new(block::Block::new(block::Kind::Iscsi, reference, &o.binary)?),
        "vif-bridge" => Box::new(vif::Vif::new(vif::Kind::Bridge, &o.binary)?),
        "vif-route" => Box::new(vif::Vif::new(vif::Kind::Route, &o.binary)?),
        "vif-nat" => Box::new(vif::Vif::new(vif::Kind::Nat, &o.binary)?),
        "vif-openvswitch" => Box::new(vif::Vif::new(vif::Kind::Ovs, &o.binary)?),
        "agent" => Box::new(agent::Agent::new(&o.agent)?),
        other => return Err(format!("unknown scenario {other}")),
    })
}

/// Run one scenario in this process and print its report as JSON (the last stdout line).
fn run_one(name: &str, side: &str, o: &Options) -> Result<Report, String> {
    let mut s = scenario(name, side, o)?;
    let duration = harness::measure(s.as_mut(), 15)?;
    let mut rng = Rng::new(o.seed ^ fnv(name) ^ fnv(side));
    harness::run(s.as_mut(), side, o.rounds, duration, &mut rng)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn line(r: &Report) -> String {
    let classes = if r.leaks.is_empty() && r.damage.is_empty() {
        String::new()
    } else {
        let mut v: Vec<String> = r.leaks.iter().map(|(c, n)| format!("{c} {n}")).collect();
        v.extend(r.damage.iter().map(|(c, n)| format!("removed {c} {n}")));
        format!("  ({})", v.join(", "))
    };
    let classes = if r.observed.is_empty() {
        classes
    } else {
        let v: Vec<String> = r.observed.iter().map(|(c, n)| format!("{c} {n}")).collect();
        format!("{classes}  [not leaks: {}]", v.join(", "))
    };
    format!(
        "{:<16} {:<9} {:>6} {:>7}   U(0, {:>7.2} ms) {:>6} {:>6}{classes}",
        r.name,
        r.side,
        r.rounds,
        r.killed,
        r.duration.as_secs_f64() * 1e3,
        r.leaky_rounds,
        r.leaked(),
    )
}

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    let called = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest: Vec<String> = std::env::args().skip(1).collect();
    match called.as_str() {
        "nbd-client" => return standin::nbd_client(&rest),
        "iscsiadm" => return standin::iscsiadm(&rest),
        "iscsid-standin" => return standin::iscsid(&rest),
        _ => {}
    }
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xenplug-chaos: {e}");
            return usage();
        }
    };
    if let Some((name, side)) = &o.one {
        return match run_one(name, side, &o) {
            Ok(r) => {
                println!("{}", r.to_json());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xenplug-chaos: {name} ({side}): {e}");
                ExitCode::from(2)
            }
        };
    }
    println!(
        "== xenplug-chaos: {} rounds per scenario, seed {}, xenplug {}",
        o.rounds,
        o.seed,
        o.binary.display()
    );
    println!(
        "{:<16} {:<9} {:>6} {:>7}   {:<17} {:>6} {:>6}",
        "scenario", "side", "rounds", "killed", "kill instant", "leaky", "leaks"
    );
    let exe = std::env::current_exe().unwrap_or_default();
    let mut reports = Vec::new();
    let mut setup_failed = false;
    for name in &o.scenarios {
        let mut sides = vec!["xenplug"];
        if o.reference && (name == "block-file" || name == "block-phy") {
            sides.push("reference");
        }
        for side in sides {
            let mut c = Command::new(&exe);
            c.args(["--one", name, "--side", side])
                .args(["--rounds", &o.rounds.to_string()])
                .args(["--seed", &o.seed.to_string()])
                .arg("--binary")
                .arg(&o.binary)
                .arg("--agent")
                .arg(&o.agent)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit());
            let out = match c.output() {
                Ok(out) => out,
                Err(e) => {
                    eprintln!("xenplug-chaos: {name}: {e}");
                    setup_failed = true;
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let parsed = text
                .lines()
                .last()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
            let Some(v) = parsed.filter(|_| out.status.success()) else {
                eprintln!(
                    "xenplug-chaos: {name} ({side}) did not complete ({})",
                    out.status
                );
                setup_failed = true;
                continue;
            };
            let r = report_of(&v);
            let note = if o.report_only.contains(&r.name) && r.leaked() > 0 {
                "  [report only]"
            } else {
                ""
            };
            println!("{}{note}", line(&r));
            for e in &r.examples {
                println!("    {e}");
            }
            reports.push((r, v));
        }
    }
    for (_, v) in &reports {
        println!("{v}");
    }
    if setup_failed {
        return ExitCode::from(2);
    }
    if reports
        .iter()
        .any(|(r, _)| r.side == "xenplug" && r.leaked() > 0 && !o.report_only.contains(&r.name))
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn report_of(v: &serde_json::Value) -> Report {
    let count = |v: &serde_json::Value| -> std::collections::BTreeMap<String, u32> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0) as u32))
                    .collect()
            })
            .unwrap_or_default()
    };
    Report {
        name: v["name"].as_str().unwrap_or("").into(),
        side: v["side"].as_str().unwrap_or("").into(),
        rounds: v["rounds"].as_u64().unwrap_or(0) as u32,
        killed: v["killed"].as_u64().unwrap_or(0) as u32,
        duration: std::time::Duration::from_secs_f64(
            v["duration_ms"].as_f64().unwrap_or(0.0) / 1e3,
        ),
        leaky_rounds: v["leaky_rounds"].as_u64().unwrap_or(0) as u32,
        leaks: count(&v["leaks"]),
        damage: count(&v["damage"]),
        next_failed: v["next_failed"].as_u64().unwrap_or(0) as u32,
        observed: count(&v["observed"]),
        examples: v["examples"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    }
}
