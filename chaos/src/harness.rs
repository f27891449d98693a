//! The round loop every scenario shares: measure the operation, then SIGKILL it at a uniformly
//! random instant of that duration, run what libxl runs next, let libxl and the kernel finish
//! (remove the domain's xenstore directories, netback's vif), and compare everything that could
//! leak with the state before the round.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The scripts' log file (their default path, on the scenario's private tmpfs).
const HOTPLUG_LOG: &str = "/var/log/xen/xen-hotplug.log";

/// One observable thing: `(class, item)`, e.g. `("loop device", "/dev/loop3 -> /tmp/x/disk.img")`.
pub type Item = (String, String);

/// Everything a scenario can observe that a script could leave behind.
pub type Snapshot = BTreeSet<Item>;

/// Add `item` of `class` to `s`.
pub fn put(s: &mut Snapshot, class: &str, item: impl Into<String>) {
    s.insert((class.to_string(), item.into()));
}

/// The operation under way, to be killed.
pub trait Running {
    /// True once it finished by itself.
    fn done(&mut self) -> Result<bool, String>;
    /// SIGKILL it.
    fn kill(&mut self);
    /// Wait for its end; true when it succeeded.
    fn wait(&mut self) -> Result<bool, String>;
}

/// A child process as the operation.
struct ChildOp(std::process::Child);

impl Running for ChildOp {
    fn done(&mut self) -> Result<bool, String> {
        Ok(self.0.try_wait().map_err(|e| e.to_string())?.is_some())
    }
    fn kill(&mut self) {
        let _ = self.0.kill();
    }
    fn wait(&mut self) -> Result<bool, String> {
        self.0
            .wait()
            .map(|st| st.success())
            .map_err(|e| e.to_string())
    }
}

/// A scenario: one script (or the agent) and the world around it.
pub trait Scenario {
    /// What it is called in the figures (`block-file`, `vif-bridge`, …).
    fn name(&self) -> String;
    /// Everything observable now.
    fn snapshot(&mut self) -> Result<Snapshot, String>;
    /// Prepare one round as the toolstack and the kernel would (backend nodes, netback's vif).
    fn setup(&mut self, round: u32) -> Result<(), String>;
    /// The operation that gets killed (`add`, `online`), as a command.
    fn op(&mut self) -> Result<Command, String>;
    /// Start the operation (by default: spawn [`Scenario::op`]; the agent's apply is a request
    /// to an agent already running).
    fn start(&mut self) -> Result<Box<dyn Running>, String> {
        let child = silence(self.op()?)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        Ok(Box::new(ChildOp(child)))
    }
    /// What libxl runs next (`remove`, `offline`); `None` when nothing runs (the agent: its
    /// audit is of the state the kill left).
    fn next(&mut self) -> Result<Option<Command>, String>;
    /// What the toolstack and the kernel do after that (the domain's xenstore directories
    /// removed, the vif deleted), and waiting (bounded) for children the kill orphaned. An
    /// `Err` is a finding of the round, not a failure of the harness.
    fn after(&mut self) -> Result<(), String>;
    /// Checks a scenario makes that are not a set difference (the agent: previous or new
    /// generation, never between); each string is one leak, of the given class.
    fn verdict(&mut self) -> Vec<Item> {
        Vec::new()
    }
    /// What a round showed that is not a leak (the agent: a guest torn right after the kill,
    /// which the restarted agent's recovery repairs; which generation it recovered to), counted
    /// by class in the figures.
    fn observations(&mut self) -> Vec<Item> {
        Vec::new()
    }
    /// Clean up whatever a round leaked (or damaged) so the next one starts from the baseline.
    fn reset(&mut self) -> Result<(), String>;
}

/// splitmix64: a small, well-known generator; the figures only need uniform instants, and the
/// seed is printed so a run can be repeated.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, d)`.
    pub fn below(&mut self, d: Duration) -> Duration {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(self.next_u64() % ns)
    }
}

/// What a run of rounds found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// `xenplug` or `reference`.
    pub side: String,
    /// Rounds run.
    pub rounds: u32,
    /// Rounds whose operation was still running when the SIGKILL came.
    pub killed: u32,
    /// Median duration of the operation, measured before the rounds.
    pub duration: Duration,
    /// Rounds that leaked or damaged anything.
    pub leaky_rounds: u32,
    /// Leaked items by class (an item left after the round that was not there before).
    pub leaks: BTreeMap<String, u32>,
    /// Items of the host that the round removed, by class.
    pub damage: BTreeMap<String, u32>,
    /// Rounds where what libxl runs next failed (exit status ≠ 0).
    pub next_failed: u32,
    /// What the rounds showed that is not a leak, by class ([`Scenario::observations`]).
    pub observed: BTreeMap<String, u32>,
    /// The first few findings, for the log.
    pub examples: Vec<String>,
}

impl Report {
    /// Total leaked items.
    pub fn leaked(&self) -> u32 {
        self.leaks.values().sum::<u32>() + self.damage.values().sum::<u32>()
    }

    /// One JSON object (what `xenplug-chaos` prints per scenario run).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "side": self.side,
            "rounds": self.rounds,
            "killed": self.killed,
            "duration_ms": self.duration.as_secs_f64() * 1e3,
            "leaky_rounds": self.leaky_rounds,
            "leaks": self.leaks,
            "damage": self.damage,
            "next_failed": self.next_failed,
            "observed": self.observed,
            "examples": self.examples,
        })
    }
}

fn silence(mut c: Command) -> Command {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Reap every exited process that is not a child we wait for ourselves: the chaos process is
/// a child subreaper, so what a killed script orphaned ends up here.
pub fn reap_orphans() {
    loop {
        match nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(-1),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// The median duration of the operation, measured over `n` uninterrupted rounds (each then
/// undone by what libxl runs next, and checked to leave the baseline).
pub fn measure(s: &mut dyn Scenario, n: u32) -> Result<Duration, String> {
    let mut ds = Vec::new();
    for i in 0..n {
        let base = s.snapshot()?;
        s.setup(1_000_000 + i)?;
        let t0 = Instant::now();
        let mut op = s.start()?;
        if !op.wait()? {
            return Err(format!("{}: the operation failed without a kill", s.name()));
        }
        ds.push(t0.elapsed());
        if let Some(next) = s.next()? {
            let out = silence(next).output().map_err(|e| format!("next: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{}: what libxl runs next failed without a kill ({}): {}",
                    s.name(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        s.after()?;
        let after = s.snapshot()?;
        if after != base {
            let diff: Vec<_> = after.symmetric_difference(&base).take(5).collect();
            return Err(format!(
                "{}: an uninterrupted round does not return to the baseline: {diff:?}",
                s.name()
            ));
        }
        reap_orphans();
    }
    ds.sort();
    Ok(ds[ds.len() / 2])
}

/// `rounds` rounds of kill-at-a-random-instant over `duration`.
pub fn run(
    s: &mut dyn Scenario,
    side: &str,
    rounds: u32,
    duration: Duration,
    rng: &mut Rng,
) -> Result<Report, String> {
    let mut r = Report {
        name: s.name(),
        side: side.to_string(),
        duration,
        ..Report::default()
    };
    for i in 0..rounds {
        let base = s.snapshot()?;
        // The scripts' log of this round only (a tmpfs of the scenario's own).
        let _ = std::fs::write(HOTPLUG_LOG, "");
        s.setup(i)?;
        let at = rng.below(duration);
        let t0 = Instant::now();
        let mut op = s.start()?;
        std::thread::sleep(at.saturating_sub(t0.elapsed()));
        let running = !op.done()?;
        if running {
            op.kill();
            r.killed += 1;
        }
        let _ = op.wait();
        drop(op);
        let mut findings: Vec<String> = Vec::new();
        if let Some(next) = s.next()? {
            let out = silence(next).output().map_err(|e| format!("next: {e}"))?;
            if !out.status.success() {
                r.next_failed += 1;
                findings.push(format!(
                    "next failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                ));
            }
        }
        if let Err(e) = s.after() {
            findings.push(format!("after: {e}"));
        }
        let fin = s.snapshot()?;
        let mut leaked: Vec<Item> = fin.difference(&base).cloned().collect();
        leaked.extend(s.verdict());
        for (class, _) in s.observations() {
            *r.observed.entry(class).or_default() += 1;
        }
        let damaged: Vec<Item> = base.difference(&fin).cloned().collect();
        for (class, _) in &leaked {
            *r.leaks.entry(class.clone()).or_default() += 1;
        }
        for (class, _) in &damaged {
            *r.damage.entry(class.clone()).or_default() += 1;
        }
        if !leaked.is_empty() || !damaged.is_empty() {
            r.leaky_rounds += 1;
            if r.examples.len() < 8 {
                let log = std::fs::read_to_string(HOTPLUG_LOG).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(12).collect();
                r.examples.push(format!(
                    "round {i}: killed at {:.3} ms{}: leaked {:?} removed {:?} {}{}",
                    at.as_secs_f64() * 1e3,
                    if running { "" } else { " (already done)" },
                    leaked,
                    damaged,
                    findings.join("; "),
                    if std::env::var_os("CHAOS_LOG").is_some() {
                        format!(
                            "\n      log: {}",
                            tail.into_iter()
                                .rev()
                                .collect::<Vec<_>>()
                                .join("\n      log: ")
                        )
                    } else {
                        String::new()
                    }
                ));
            }
            s.reset()?;
            let again = s.snapshot()?;
            if again != base {
                return Err(format!(
                    "{}: cannot return to the baseline after round {i} (which leaked {:?}, \
                     removed {:?}): {:?}",
                    s.name(),
                    leaked,
                    damaged,
                    again
                        .symmetric_difference(&base)
                        .take(5)
                        .collect::<Vec<_>>()
                ));
            }
        } else if !findings.is_empty() && r.examples.len() < 8 {
            r.examples
                .push(format!("round {i}: no leak, but {}", findings.join("; ")));
        }
        reap_orphans();
        r.rounds += 1;
    }
    Ok(r)
}
