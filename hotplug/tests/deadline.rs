//! One deadline per script, counted from its start (`deadline_secs`, below libxl's 40 s SIGKILL):
//! lock waits and children end by [`Context::deadline`], clean-up by
//! [`Context::cleanup_deadline`], and the failure is reported (libxl's SIGKILL would leave no
//! `hotplug-error`).

mod common;

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use common::{raw, FakeXs, Scratch};
use xenplug_hotplug::{run_with, Action, Config, Context, Failure, Level, Log, Outcome};
use xenplug_xenstore::{XenStore, XsError};

const BE: &str = "backend/vbd/5/51712";

fn context<'a>(xs: &'a FakeXs, s: &Scratch, deadline: Duration) -> Context<'a> {
    let inv = xenplug_hotplug::Invocation::parse(raw(&["block", "add"], &s.env(Some(BE)))).unwrap();
    let config = Config {
        lock_dir: s.lock_dir(),
        state_dir: s.path().join("state"),
        log_file: None,
        syslog: false,
        deadline,
        ..Config::default()
    };
    Context::new(inv, xs, Log::stderr_only("block", Level::Err), config)
}

#[test]
fn the_deadline_leaves_a_grace_for_clean_up() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let t0 = Instant::now();
    let ctx = context(&xs, &s, Duration::from_secs(35)).started_at(t0);
    assert_eq!(ctx.cleanup_deadline(), t0 + Duration::from_secs(35));
    assert_eq!(ctx.deadline(), t0 + Duration::from_secs(30));
    // A short deadline keeps three quarters for work.
    let ctx = context(&xs, &s, Duration::from_secs(2)).started_at(t0);
    assert_eq!(ctx.deadline(), t0 + Duration::from_millis(1500));
    // A step of clean-up never runs past the end.
    assert!(ctx.cleanup_step(Duration::from_secs(60)) <= t0 + Duration::from_secs(2));
    // Time already spent counts: a script that started 40 s ago has none left.
    let old = context(&xs, &s, Duration::from_secs(35))
        .started_at(Instant::now() - Duration::from_secs(40));
    assert_eq!(old.remaining(), Duration::ZERO);
}

#[test]
fn a_lock_wait_ends_at_the_deadline_before_the_lock_timeout() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let holder = context(&xs, &s, Duration::from_secs(35));
    let _held = holder.claim_lock("block").unwrap();
    // lock_timeout is 25 s, but the script has 1 s in all (0.75 s of work).
    let ctx = context(&xs, &s, Duration::from_secs(1));
    let t0 = Instant::now();
    let err = ctx.claim_lock("block").unwrap_err();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let msg = err.message();
    assert!(
        msg.contains("waiting for lock 'block'") && msg.contains("the script's deadline"),
        "{msg}"
    );
    // Clean-up may wait until the very end instead.
    let t0 = Instant::now();
    assert!(ctx
        .claim_lock_until("block", ctx.cleanup_deadline())
        .is_err());
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_child_still_running_at_the_deadline_is_killed_and_reported() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let ctx = context(&xs, &s, Duration::from_millis(800));
    let t0 = Instant::now();
    let err = ctx
        .run_checked(Command::new("sleep").arg("30"))
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(
        err.message(),
        "sleep 30 did not finish before the script's deadline and was killed"
    );
    // A quick child is unaffected, its stdout returned.
    let ctx = context(&xs, &s, Duration::from_secs(35));
    assert_eq!(
        ctx.run_checked(Command::new("echo").arg("hi")).unwrap(),
        "hi\n"
    );
}

fn connect(
    xs: &FakeXs,
) -> impl FnOnce(
    &std::collections::BTreeMap<String, String>,
) -> Result<Box<dyn XenStore + 'static>, XsError> {
    let xs = xs.clone();
    move |_| Ok(Box::new(xs))
}

/// The whole script: it reports its failure itself, well before libxl's SIGKILL would.
#[test]
fn a_script_stuck_on_a_lock_reports_before_its_deadline() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let holder = context(&xs, &s, Duration::from_secs(35));
    let _held = holder.claim_lock("block").unwrap();
    let mut env = s.env(Some(BE));
    env.push(("XENPLUG_DEADLINE".into(), "1.2".into()));
    let t0 = Instant::now();
    let code = run_with(
        "block",
        raw(&["block", "add"], &env),
        Action::BLOCK,
        connect(&xs),
        |ctx| -> Result<Outcome<'static>, Failure> {
            let _g = ctx.claim_lock("block")?;
            Ok(Outcome::Connected)
        },
    );
    assert_eq!(code, ExitCode::FAILURE);
    assert!(t0.elapsed() < Duration::from_millis(1200 + 1000));
    let err = xs.get(&format!("{BE}/hotplug-error")).unwrap();
    assert!(err.contains("the script's deadline"), "{err}");
    assert_eq!(
        xs.get(&format!("{BE}/hotplug-status")).as_deref(),
        Some("error")
    );
}

/// A child killed and reaped when dropped: a failed assertion leaves no `sleep 30` behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sleep_30(xenbus_path: Option<&str>) -> Reaped {
    let mut c = Command::new("sleep");
    c.arg("30");
    if let Some(be) = xenbus_path {
        c.env("XENBUS_PATH", be);
    }
    Reaped(c.spawn().unwrap())
}

/// A run for `BE` as the test's "killed" or "live" run: a `sleep` with the mark a script run
/// leaves ([`Context::mark_run`]) in `state_dir`, named after its pid and start time.
fn marked_run(state_dir: &std::path::Path) -> (Reaped, std::path::PathBuf) {
    let run = sleep_30(None);
    let procs = xenplug_hotplug::procs::Procs::default();
    let pid = run.0.id() as i32;
    let start = procs.start_of(pid).unwrap();
    let dir = state_dir.join(xenplug_hotplug::runs::RUNS_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let mark = dir.join(xenplug_hotplug::runs::mark_name(BE, pid, start));
    std::fs::write(&mark, "").unwrap();
    (run, mark)
}

/// A teardown waits for what a killed run for the same backend left running (found by the
/// `XENBUS_PATH` children inherit), and only until the deadline; it looks only when another run
/// for the backend left its mark, and removes the marks of runs that are gone once their orphans
/// are.
#[test]
fn a_teardown_waits_for_the_orphans_of_a_killed_run() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let state = s.path().join("state");
    let procs = xenplug_hotplug::procs::Procs::default();
    // Another backend's child is none of ours.
    let _other = sleep_30(Some("backend/vbd/6/51712"));
    // No run left a mark: none was killed, so no look and no wait (what runs there is not a
    // script's: a finished run has reaped its children).
    let unmarked = sleep_30(Some(BE));
    xenplug_testkit::wait_until("the unmarked one to exec", Duration::from_secs(5), || {
        !procs.orphans_of(BE, &["sleep"]).is_empty()
    });
    let ctx = context(&xs, &s, Duration::from_secs(35));
    let t0 = Instant::now();
    ctx.wait_for_orphans(&["sleep"]).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "not waited for");
    drop(unmarked);
    // The orphan: a child of an earlier run for this backend, still committing.
    let mut orphan = Command::new("sleep")
        .arg("0.4")
        .env("XENBUS_PATH", BE)
        .spawn()
        .unwrap();
    xenplug_testkit::wait_until("the orphan to exec", Duration::from_secs(5), || {
        !procs.orphans_of(BE, &["sleep"]).is_empty()
    });
    // The run that started it was killed: its mark stayed.
    let (killed, mark) = marked_run(&state);
    drop(killed);
    ctx.wait_for_orphans(&["sleep"]).unwrap();
    assert!(
        procs.orphans_of(BE, &["sleep"]).is_empty(),
        "waited until it exited"
    );
    assert!(
        !mark.exists(),
        "the dead run's mark is removed once its orphans are gone"
    );
    let _ = orphan.wait();
    // The mark of a run still alive stays (its own end removes it).
    let (_live, mark) = marked_run(&state);
    ctx.wait_for_orphans(&["sleep"]).unwrap();
    assert!(mark.exists());
    // This run's own mark is not another's, and is gone with its guard.
    let own = ctx.mark_run().unwrap();
    assert!(own.path().starts_with(&state));
    drop(own);
    assert_eq!(
        std::fs::read_dir(mark.parent().unwrap()).unwrap().count(),
        1
    );
    // One that outlives the deadline is an error, in time (the live run's mark makes it look).
    let _stuck = sleep_30(Some(BE));
    xenplug_testkit::wait_until("the stuck one to exec", Duration::from_secs(5), || {
        !procs.orphans_of(BE, &["sleep"]).is_empty()
    });
    let ctx = context(&xs, &s, Duration::from_millis(800));
    let t0 = Instant::now();
    let err = ctx.wait_for_orphans(&["sleep"]).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(err.message().contains("did not finish in time"), "{err:?}");
    assert!(mark.exists());
}
