//! The run of one script: [`Context`] and the error contract ([`run`], [`run_with`]).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Once;
use std::time::{Duration, Instant};

use xenplug_xenstore::{
    transact, Perm, Transaction, WatchEvent, XenStore, XsError, XsOps, DEFAULT_TRANSACTION_ATTEMPTS,
};

use crate::backend::BackendPath;
use crate::command::{command_in, output_until};
use crate::config::Config;
use crate::failure::{describe_xs_error, one_line, Failure};
use crate::invocation::{Action, Invocation, Raw};
use crate::lock::{LockGuard, Locks};
use crate::log::{Level, Log};
use crate::outcome::{Device, Outcome};

/// The reason of a failed operation whose path the caller already names: the daemon's errno
/// (`EACCES`), else the connection problem.
fn why(e: &XsError) -> String {
    match e {
        XsError::Daemon { errno, .. } => errno.name().to_string(),
        other => describe_xs_error(other),
    }
}

/// Everything a script body needs.
pub struct Context<'a> {
    /// The parsed invocation.
    pub inv: Invocation,
    /// The xenstore connection.
    pub xs: &'a dyn XenStore,
    /// The logger (stderr, log file, syslog).
    pub log: Log,
    /// Named locks (locking.sh compatible).
    pub locks: Locks,
    /// The configuration.
    pub config: Config,
    /// `XENBUS_PATH` taken apart, when it has the form `…/<kind>/<domid>/<devid>`.
    backend_path: Option<BackendPath>,
    /// When the script started (its deadline counts from here).
    started: Instant,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("inv", &self.inv)
            .field("log", &self.log)
            .field("locks", &self.locks)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<'a> Context<'a> {
    /// Assemble a context (what [`run_with`] does after connecting; also for tests).
    pub fn new(inv: Invocation, xs: &'a dyn XenStore, log: Log, config: Config) -> Context<'a> {
        let locks = Locks::new(config.lock_dir.clone(), config.lock_timeout);
        let backend_path = BackendPath::parse(&inv.env.xenbus_path);
        Context {
            inv,
            xs,
            log,
            locks,
            config,
            backend_path,
            started: Instant::now(),
        }
    }

    /// The same context, its deadline counted from `started` (when the process started, for
    /// [`run_with`]; tests use it to play a script that has already spent some of its time).
    pub fn started_at(mut self, started: Instant) -> Self {
        self.started = started;
        self
    }

    /// The script's deadline for work: every lock wait, every child (helpers, `nbd-client`,
    /// `iscsiadm`, `nft`, `ovs-vsctl`, `modprobe`) and every bounded wait for the kernel ends
    /// by then. It is `deadline_secs` (default 35 s, below libxl's 40 s SIGKILL) after the
    /// start, minus the clean-up grace ([`Context::cleanup_deadline`]).
    pub fn deadline(&self) -> Instant {
        self.cleanup_deadline() - self.config.cleanup_grace()
    }

    /// The end of the script's time (`deadline_secs` after its start): what undoes a failed
    /// add after [`Context::deadline`] passed (a logout, a disconnect, a detach) must be done
    /// by then.
    pub fn cleanup_deadline(&self) -> Instant {
        self.started + self.config.deadline
    }

    /// Time left until [`Context::deadline`] (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    /// A deadline for one clean-up step that started now: `step` from now, but never past
    /// [`Context::cleanup_deadline`] (and at least until then when `step` is longer).
    pub fn cleanup_step(&self, step: Duration) -> Instant {
        (Instant::now() + step).min(self.cleanup_deadline())
    }

    /// The action.
    pub fn action(&self) -> Action {
        self.inv.action
    }

    /// `XENBUS_PATH`, the backend directory (usually relative, which xenstored resolves under
    /// this domain's home path).
    pub fn backend(&self) -> &str {
        &self.inv.env.xenbus_path
    }

    /// `XENBUS_PATH` taken apart (kind, frontend domid, devid); `None` when it does not have the
    /// form `…/<kind>/<domid>/<devid>` (libxl's is always `backend/<kind>/<domid>/<devid>`).
    pub fn backend_path(&self) -> Option<&BackendPath> {
        self.backend_path.as_ref()
    }

    /// The directory holding every backend of this script's kind in this domain, as the
    /// reference scripts name it: `$XENBUS_BASE_PATH/$XENBUS_TYPE` (`backend/vbd`). Without those
    /// variables: `backend/<kind of XENBUS_PATH>` (`vbd` when XENBUS_PATH has none).
    pub fn kind_dir(&self) -> String {
        let env = &self.inv.env;
        let base = match env.xenbus_base_path.as_str() {
            "" => "backend",
            b => b,
        };
        let kind = match env.xenbus_type.as_str() {
            "" => self.backend_path().map_or("vbd", |b| b.kind.as_str()),
            t => t,
        };
        format!("{base}/{kind}")
    }

    /// The xenstore path of `key`: `key` itself when absolute (starts with `/`), else
    /// `<XENBUS_PATH>/<key>` (`""` is `XENBUS_PATH` itself).
    pub fn path(&self, key: &str) -> String {
        if key.is_empty() {
            self.backend().to_string()
        } else if key.starts_with('/') {
            key.to_string()
        } else {
            format!("{}/{}", self.backend().trim_end_matches('/'), key)
        }
    }

    /// See [`Invocation::var`].
    pub fn var(&self, name: &str) -> Option<&str> {
        self.inv.var(name)
    }

    /// Read `key` (see [`Context::path`]); `None` when the node does not exist.
    pub fn read(&self, key: &str) -> Result<Option<String>, Failure> {
        let p = self.path(key);
        self.xs.read(&p).map_err(|e| {
            Failure::error(format!(
                "xenstore-read {p} failed: {}",
                describe_xs_error(&e)
            ))
        })
    }

    /// `xenstore_read`: the value of `key`; a missing or empty node is the fatal
    /// `xenstore-read <path> failed.`
    pub fn read_required(&self, key: &str) -> Result<String, Failure> {
        match self.read(key)? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Failure::error(format!(
                "xenstore-read {} failed.",
                self.path(key)
            ))),
        }
    }

    /// `xenstore_read_default`: the value of `key`, or `default` when the node does not exist
    /// (an existing empty node gives ""). Errors other than "not found" still fail: a lost
    /// connection must not silently turn into defaults.
    pub fn read_default(&self, key: &str, default: &str) -> Result<String, Failure> {
        Ok(self.read(key)?.unwrap_or_else(|| default.to_string()))
    }

    /// True when `key` exists.
    pub fn exists(&self, key: &str) -> Result<bool, Failure> {
        Ok(self.read(key)?.is_some())
    }

    /// The children of `key` (empty when it does not exist).
    pub fn directory(&self, key: &str) -> Result<Vec<String>, Failure> {
        let p = self.path(key);
        match self.xs.directory(&p) {
            Ok(v) => Ok(v),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(Failure::error(format!(
                "xenstore-list {p} failed: {}",
                why(&e)
            ))),
        }
    }

    /// `xenstore_write`: write `value` at `key`; failure is
    /// `Writing <path> <value> to xenstore failed: <why>`.
    pub fn write(&self, key: &str, value: &str) -> Result<(), Failure> {
        self.write_all(&[(key, value)])
    }

    /// Write several keys in one transaction (all or nothing).
    pub fn write_all(&self, pairs: &[(&str, &str)]) -> Result<(), Failure> {
        let pairs: Vec<(String, &str)> = pairs.iter().map(|(k, v)| (self.path(k), *v)).collect();
        let shown = pairs
            .iter()
            .map(|(p, v)| format!("{p} {v}"))
            .collect::<Vec<_>>()
            .join(" ");
        self.log.debug(format!("Writing {shown} to xenstore."));
        let r = if pairs.len() == 1 {
            self.xs.write(&pairs[0].0, pairs[0].1)
        } else {
            transact(self.xs, DEFAULT_TRANSACTION_ATTEMPTS, |tx| {
                pairs.iter().try_for_each(|(p, v)| tx.write(p, v))
            })
        };
        r.map_err(|e| Failure::error(format!("Writing {shown} to xenstore failed: {}", why(&e))))
    }

    /// Remove `key` and everything below it; a node that is already gone is fine.
    pub fn rm(&self, key: &str) -> Result<(), Failure> {
        let p = self.path(key);
        match self.xs.rm(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Failure::error(format!(
                "xenstore-rm {p} failed: {}",
                why(&e)
            ))),
        }
    }

    /// `claim_lock <name>`, bounded by the configured lock timeout and by the script's
    /// [`Context::deadline`], whichever comes first.
    pub fn claim_lock(&self, name: &str) -> Result<LockGuard, Failure> {
        self.claim_lock_until(name, self.deadline())
    }

    /// `claim_lock <name>` for clean-up work (a remove), bounded by the lock timeout and by
    /// `until`.
    pub fn claim_lock_until(&self, name: &str, until: Instant) -> Result<LockGuard, Failure> {
        self.log.debug(format!("claiming lock {name}"));
        let left = until.saturating_duration_since(Instant::now());
        let g = if left < self.config.lock_timeout {
            self.locks.claim_timeout(name, left).map_err(|f| {
                Failure::error(format!(
                    "{} (the script's deadline, deadline_secs = {})",
                    f.message(),
                    self.config.deadline.as_secs_f64()
                ))
            })?
        } else {
            self.locks.claim_timeout(name, self.config.lock_timeout)?
        };
        self.log.debug(format!(
            "holding lock {name} (waited {:.1} ms)",
            g.waited().as_secs_f64() * 1e3
        ));
        if !self.log.enabled(Level::Debug) {
            return Ok(g);
        }
        // Lock hold times (issue 21): one line per release, for the benchmark and operators
        // chasing contention (`log_file_level = "debug"`).
        let log = self.log.clone();
        Ok(g.on_release(move |t| {
            log.debug(format!(
                "released lock {}: held {:.1} ms, waited {:.1} ms",
                t.name,
                t.held.as_secs_f64() * 1e3,
                t.waited.as_secs_f64() * 1e3
            ))
        }))
    }

    /// The directory for this host's persistent script state (`state_dir`, created on demand).
    pub fn state_dir(&self) -> Result<&Path, Failure> {
        let d = &self.config.state_dir;
        std::fs::create_dir_all(d).map_err(|e| {
            Failure::error(format!(
                "cannot create state directory {}: {e}",
                d.display()
            ))
        })?;
        Ok(d)
    }

    /// A [`Command`] for `program` with the script's environment normalised like
    /// xen-hotplug-common.sh (`LANG=POSIX`, no `LC_*`, Xen's PATH first, stdin `/dev/null`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(program, &self.inv.raw_env, &self.config.libexec_bin_dir())
    }

    /// Mark this run as one that starts programs for its backend, until the returned guard is
    /// dropped (after every child has been reaped): a mark left behind tells a later teardown
    /// that this run was killed and what it started may still be running ([`crate::runs`],
    /// [`Context::wait_for_orphans`]). Take it before starting any program.
    pub fn mark_run(&self) -> Result<crate::runs::RunMark, Failure> {
        let marks = crate::runs::Marks::new(&self.config.state_dir);
        marks.mark(self.backend()).map_err(|e| {
            Failure::error(format!(
                "cannot record this run in {}: {e}",
                marks.dir.display()
            ))
        })
    }

    /// Wait (until the script's [`Context::deadline`]) for children an earlier, killed run of a
    /// script for this backend left running `programs` (say an `ovs-vsctl` or `nft` that was
    /// still committing when its `online` was SIGKILLed): a teardown must come after them, or
    /// what they commit outlives it. Found by the `XENBUS_PATH` they inherited
    /// ([`crate::procs::Procs::orphans_of`]), and looked for only when another run for this
    /// backend left its mark ([`Context::mark_run`]): one that was killed, or is still running.
    /// Once nothing they left runs, the marks of runs no longer alive are removed.
    pub fn wait_for_orphans(&self, programs: &[&str]) -> Result<(), Failure> {
        let marks = crate::runs::Marks::new(&self.config.state_dir);
        let others = match marks.others(self.backend()) {
            Ok(o) if o.is_empty() => {
                self.log
                    .debug("no other run for this backend left its mark: nothing to look for");
                return Ok(());
            }
            Ok(o) => Some(o),
            Err(e) => {
                self.log.warning(format!(
                    "cannot read the runs' marks in {} ({e}): looking for orphans anyway",
                    marks.dir.display()
                ));
                None
            }
        };
        let procs = crate::procs::Procs::default();
        let t = Instant::now();
        let orphans = procs.orphans_of(self.backend(), programs);
        if orphans.is_empty() {
            // What the look cost (it reads every process's /proc entries): issue 21.
            self.log.debug(format!(
                "nothing a killed run left running ({:.1} ms to look)",
                t.elapsed().as_secs_f64() * 1e3
            ));
        } else {
            self.log.warning(format!(
                "waiting for what a killed run for {} left running: {}",
                self.backend(),
                orphans
                    .iter()
                    .map(|p| format!("{} (pid {})", p.argv.join(" "), p.pid))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if let Some(p) = procs.wait_gone(&orphans, self.deadline()).first() {
                return Err(Failure::error(format!(
                    "{} (pid {}), left by a killed run for {}, did not finish in time",
                    p.argv.join(" "),
                    p.pid,
                    self.backend()
                )));
            }
        }
        if let Some(others) = others {
            let n = marks.remove_dead(&others);
            if n > 0 {
                self.log
                    .debug(format!("removed the marks of {n} killed run(s)"));
            }
        }
        Ok(())
    }

    /// `do_or_die`: run `cmd` until the script's [`Context::deadline`], return its stdout; a
    /// failure (cannot start, non-zero exit, still running at the deadline: then killed) is the
    /// fatal `<program args…> failed (<status>): <last stderr line>`. Its stderr is logged at
    /// debug level.
    pub fn run_checked(&self, cmd: &mut Command) -> Result<String, Failure> {
        self.run_checked_until(cmd, self.deadline())
    }

    /// [`Context::run_checked`] with another bound (`until`), e.g. a clean-up step's.
    pub fn run_checked_until(&self, cmd: &mut Command, until: Instant) -> Result<String, Failure> {
        let shown = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        self.log.debug(format!("running {shown}"));
        let out = output_until(cmd, None, until)
            .map_err(|e| Failure::error(format!("{shown} failed: {e}")))?
            .ok_or_else(|| {
                Failure::error(format!(
                    "{shown} did not finish before the script's deadline and was killed"
                ))
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            self.log.debug(format!("{shown}: {line}"));
        }
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!(": {}", l.trim()))
                .unwrap_or_default();
            Err(Failure::error(format!(
                "{shown} failed ({}){last}",
                out.status
            )))
        }
    }
}

impl Context<'_> {
    /// Report a body's result, as [`run_with`] does after the body (tests call it to play the
    /// runtime): [`Outcome::Published`] writes the device's nodes and `hotplug-status=connected`
    /// in one transaction, then releases the device's locks (if the write fails, the device's
    /// undo runs first, under those locks); [`Outcome::Connected`] writes
    /// `hotplug-status=connected`; [`Outcome::Done`] writes nothing. Returns `Connected` or
    /// `Done`, or the failure to report.
    pub fn finish(
        &self,
        result: Result<Outcome<'_>, Failure>,
    ) -> Result<Outcome<'static>, Failure> {
        match result? {
            Outcome::Done => Ok(Outcome::Done),
            Outcome::Connected => self.publish(Device::new()),
            Outcome::Published(device) => self.publish(device),
        }
    }

    /// The one place that writes `hotplug-status=connected`.
    fn publish(&self, device: Device<'_>) -> Result<Outcome<'static>, Failure> {
        let Device { nodes, held, undo } = device;
        let mut pairs: Vec<(&str, &str)> = nodes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.push(("hotplug-status", "connected"));
        let result = self.write_all(&pairs);
        if result.is_err() {
            if let Some(undo) = undo {
                undo(self);
            }
        }
        drop(held);
        result.map(|()| Outcome::Connected)
    }
}

/// Write `hotplug-error` and `hotplug-status` (one transaction), log `err`. Returns FAILURE.
fn report(xs: &dyn XenStore, backend: &str, log: &Log, f: &Failure) -> ExitCode {
    let msg = f.message();
    let base = backend.trim_end_matches('/');
    let (ke, ks) = (
        format!("{base}/hotplug-error"),
        format!("{base}/hotplug-status"),
    );
    log.debug(format!(
        "Writing {ke} {msg} {ks} {} to xenstore.",
        f.status()
    ));
    let r = transact(xs, DEFAULT_TRANSACTION_ATTEMPTS, |tx| {
        tx.write(&ke, &msg)?;
        tx.write(&ks, f.status())
    });
    if let Err(e) = r {
        log.err(format!(
            "cannot record the failure in xenstore under {base}: {}",
            describe_xs_error(&e)
        ));
    }
    log.err(&msg);
    ExitCode::FAILURE
}

thread_local! {
    /// Set while a body runs under [`run_with`] on this thread.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    /// The script name, for the abort-mode line.
    static CAPTURE_TAG: RefCell<String> = const { RefCell::new(String::new()) };
    /// The message of the last panic on this thread while capturing.
    static PANIC_MSG: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn payload_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Install (once per process) a panic hook that, on a thread running a script body, records the
/// message instead of printing the default report and backtrace note; other threads get the
/// previous hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                let loc = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let msg = one_line(&format!("{}{loc}", payload_text(info.payload())));
                if cfg!(panic = "abort") {
                    // The process is about to abort: this line is all the operator will get.
                    let tag = CAPTURE_TAG.with(|t| t.borrow().clone());
                    eprintln!("{tag}: error: internal error: {msg}");
                }
                PANIC_MSG.with(|m| *m.borrow_mut() = Some(msg));
            } else {
                prev(info)
            }
        }));
    });
}

/// The whole life of a hotplug script, with the default xenstore connection
/// (`XsClient::open()`, which honours `XENSTORED_PATH`). See [`run_with`].
pub fn run<'b>(
    program: &str,
    raw: Raw,
    accepted: &[Action],
    body: impl FnOnce(&Context) -> Result<Outcome<'b>, Failure>,
) -> ExitCode {
    run_with(program, raw, accepted, crate::default_connect, body)
}

/// The whole life of a hotplug script; the error contract lives here and only here.
///
/// 1. Load the configuration and open the logs.
/// 2. Parse argv/env ([`Invocation::parse_for`] with `accepted`). A bad invocation (no
///    `XENBUS_PATH`, unknown or unaccepted action, malformed argument) is logged as one `err`
///    line and exits 1 **without writing anything** (block-common.sh behaves so).
/// 3. Connect to xenstore with `connect`; failure: logged, exit 1, nothing written.
/// 4. A configuration error is now reported like a body failure.
/// 5. Run `body`. A panic is caught and becomes the failure `internal error: <msg> at <file:line>`
///    (no panic report or backtrace reaches the user).
/// 6. `Ok(Outcome::Published(device))`: write the device's nodes and
///    `hotplug-status=connected` in one transaction, then release the device's locks (a write
///    failure is a failure, after the device's undo ran); `Ok(Outcome::Connected)`: write
///    `hotplug-status=connected`; `Ok(Outcome::Done)`: write nothing. Exit 0. (See
///    [`Context::finish`]: no script writes `hotplug-status` itself.)
/// 7. `Err(failure)`: write `<XENBUS_PATH>/hotplug-error=<msg>` and
///    `<XENBUS_PATH>/hotplug-status=error` (`busy` for [`Failure::Busy`]) in one transaction
///    (if that fails, log why and still exit 1), log `err <msg>`, exit 1.
pub fn run_with<'x, 'b>(
    program: &str,
    raw: Raw,
    accepted: &[Action],
    connect: impl FnOnce(&BTreeMap<String, String>) -> Result<Box<dyn XenStore + 'x>, XsError>,
    body: impl FnOnce(&Context) -> Result<Outcome<'b>, Failure>,
) -> ExitCode {
    let started = Instant::now();
    let tag = raw
        .argv
        .first()
        .and_then(|a0| a0.rsplit('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or(program)
        .to_string();
    let (config, config_err) = match Config::load(&raw.env) {
        Ok(c) => (c, None),
        Err(e) => {
            let mut c = Config::default();
            let _ = c.apply_env(&raw.env);
            (c, Some(e))
        }
    };
    let log = Log::new(&tag, &config);
    let inv = match Invocation::parse_for(raw, accepted) {
        Ok(inv) => inv,
        Err(f) => {
            if let Some(ce) = &config_err {
                log.err(ce.message());
            }
            log.err(f.message());
            return ExitCode::FAILURE;
        }
    };
    log.debug(format!(
        "{} XENBUS_PATH={}",
        inv.args.join(" "),
        inv.env.xenbus_path
    ));
    let xs = match connect(&inv.raw_env) {
        Ok(xs) => xs,
        Err(e) => {
            if let Some(ce) = &config_err {
                log.err(ce.message());
            }
            let why = match &e {
                XsError::Io(io) => io.to_string(),
                other => other.to_string(),
            };
            log.err(format!(
                "cannot connect to xenstored: {} (nothing written under {})",
                one_line(&why),
                inv.env.xenbus_path
            ));
            return ExitCode::FAILURE;
        }
    };
    let backend = inv.env.xenbus_path.clone();
    if let Some(f) = config_err {
        return report(&*xs, &backend, &log, &f);
    }
    let ctx = Context::new(inv, &*xs, log, config).started_at(started);

    install_panic_hook();
    CAPTURE_TAG.with(|t| *t.borrow_mut() = tag.clone());
    CAPTURING.with(|c| c.set(true));
    PANIC_MSG.with(|m| m.borrow_mut().take());
    let result = catch_unwind(AssertUnwindSafe(|| body(&ctx)));
    CAPTURING.with(|c| c.set(false));
    let result = result.unwrap_or_else(|p| {
        let msg = PANIC_MSG
            .with(|m| m.borrow_mut().take())
            .unwrap_or_else(|| payload_text(&*p));
        Err(Failure::error(format!("internal error: {msg}")))
    });

    match ctx.finish(result) {
        Ok(outcome) => {
            ctx.log
                .debug(format!("{} {} done ({outcome:?})", ctx.inv.action, backend));
            ExitCode::SUCCESS
        }
        Err(f) => report(ctx.xs, &backend, &ctx.log, &f),
    }
}

/// A borrowed connection usable where [`run_with`] wants an owned one:
/// `run_with(.., |_| Ok(Box::new(BorrowedXs(&store))), body)` runs a script against a store the
/// test keeps (e.g. `xenplug_xenstored::MemStore`) and inspects afterwards.
#[derive(Clone, Copy)]
pub struct BorrowedXs<'a>(pub &'a dyn XenStore);

impl std::fmt::Debug for BorrowedXs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BorrowedXs")
    }
}

impl XsOps for BorrowedXs<'_> {
    fn read(&self, path: &str) -> xenplug_xenstore::Result<Option<String>> {
        self.0.read(path)
    }
    fn write(&self, path: &str, value: &str) -> xenplug_xenstore::Result<()> {
        self.0.write(path, value)
    }
    fn mkdir(&self, path: &str) -> xenplug_xenstore::Result<()> {
        self.0.mkdir(path)
    }
    fn rm(&self, path: &str) -> xenplug_xenstore::Result<()> {
        self.0.rm(path)
    }
    fn directory(&self, path: &str) -> xenplug_xenstore::Result<Vec<String>> {
        self.0.directory(path)
    }
    fn get_perms(&self, path: &str) -> xenplug_xenstore::Result<Vec<Perm>> {
        self.0.get_perms(path)
    }
    fn set_perms(&self, path: &str, perms: &[Perm]) -> xenplug_xenstore::Result<()> {
        self.0.set_perms(path, perms)
    }
}

impl XenStore for BorrowedXs<'_> {
    fn begin(&self) -> xenplug_xenstore::Result<Box<dyn Transaction + '_>> {
        self.0.begin()
    }
    fn watch(&self, path: &str, token: &str) -> xenplug_xenstore::Result<()> {
        self.0.watch(path, token)
    }
    fn unwatch(&self, path: &str, token: &str) -> xenplug_xenstore::Result<()> {
        self.0.unwatch(path, token)
    }
    fn read_watch(
        &self,
        timeout: Option<std::time::Duration>,
    ) -> xenplug_xenstore::Result<Option<WatchEvent>> {
        self.0.read_watch(timeout)
    }
    fn domain_path(&self, domid: u32) -> xenplug_xenstore::Result<String> {
        self.0.domain_path(domid)
    }
}
