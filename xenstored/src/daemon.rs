//! The socket daemon: serves the xenstore wire protocol on Unix sockets with tokio.
//!
//! Connections on the main socket act as dom0 (privileged). Each `(domid, path)` of
//! [`Options::domain_sockets`] gets its own socket whose connections act as that domain, which
//! is how tests play a guest or a driver domain. A dom0 connection can also switch its own
//! domain id with `CONTROL xenplug-set-domid <domid>` (see [`crate::engine::Request::Control`]).
//!
//! Per connection, requests are handled in order; replies and `WATCH_EVENT`s go through one
//! outgoing queue written by a separate task, so events are pushed while the client is idle.
//!
//! Bad input: unknown or client-only message types get `ENOSYS`, malformed arguments `EINVAL`,
//! an unknown transaction id `ENOENT`; a header announcing more than 4096 bytes gets an `E2BIG`
//! error reply and the connection is closed (C xenstored just closes it), since the stream
//! cannot be resynchronised. A peer that disconnects mid-message is dropped with its watches
//! and transactions. Memory per connection is bounded: one partial message on input, and
//! [`Options::max_queued_bytes`] of unsent output — a client that stops reading replies and
//! events is disconnected when it exceeds that.
//!
//! A hostile domain: the engine's per-domain quotas ([`crate::engine::Quota`]) apply over all
//! of a domain's connections; its requests in flight (read, and whose reply has not yet been
//! written to its socket) are limited to the `outstanding` quota (20), after which the daemon
//! stops reading from that domain until replies go out, as C xenstored does with a ring; and a
//! domain socket accepts at most [`Options::max_domain_connections`] connections at a time
//! (more are closed at once), so connections cannot multiply the per-connection limits.
//!
//! dom0 first. [`serve_listeners`] runs the domains' sockets on a thread of their own (one
//! tokio scheduler for every domain connection, at a lower CPU priority: see
//! [`Options::guest_priority`]) and dom0's on two others, so a domain's work never occupies a
//! thread that dom0's requests wait for. On the domains' thread the connections are served
//! round-robin, one request each per turn, as C xenstored serves its rings: a connection yields
//! after every request, so one that pipelines thousands of requests gets one turn in each round
//! like any other. dom0's plain reads (`READ`, `DIRECTORY`, `DIRECTORY_PART`, `GET_PERMS`
//! outside a transaction) do not take the store lock (they read the engine's published
//! snapshot, behind a lock held for a pointer swap); for
//! dom0's other requests, which take the store lock, domains hold back: while one is waiting,
//! a domain's connection does not start a request (it waits, without spinning, until dom0's
//! requests are through), so dom0 waits at most for the one request a domain is in.
//!
//! ```no_run
//! use xenplug_xenstored::daemon::{serve, Options, Shutdown};
//! let shutdown = Shutdown::new();
//! // From a signal handler or another thread: shutdown.trigger();
//! serve(&Options::new("/run/xenstored/socket"), shutdown).unwrap();
//! ```

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

use xenplug_xenstore::wire::{self, Decoder, Message, MsgType, HEADER_LEN, PAYLOAD_MAX};
use xenplug_xenstore::Errno;

use crate::engine::{ConnId, Engine, EventSink};

/// Default bound on a connection's unsent output.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 8 << 20;

/// Default bound on simultaneous connections to one domain socket.
pub const DEFAULT_MAX_DOMAIN_CONNECTIONS: usize = 8;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The main socket; its connections act as dom0.
    pub socket: PathBuf,
    /// Extra sockets whose connections act as the given domain.
    pub domain_sockets: Vec<(u32, PathBuf)>,
    /// Disconnect a client whose unsent replies and events exceed this many bytes.
    pub max_queued_bytes: usize,
    /// Connections one domain socket accepts at a time (a domain has one ring in real Xen).
    pub max_domain_connections: usize,
    /// Log protocol violations and connection errors to stderr.
    pub verbose: bool,
    /// File mode of the sockets. Anyone who can connect to the main socket acts as dom0, so the
    /// default is `0o600`, as C xenstored's socket.
    pub socket_mode: u32,
    /// CPU priority of the thread serving the domain sockets, against the daemon's other
    /// threads (default: [`GuestPriority::Nice`] 10).
    pub guest_priority: GuestPriority,
}

/// CPU priority of the thread that serves the domain sockets ([`Options::guest_priority`]).
///
/// Whatever it is, a domain's requests are served on that one thread, so a domain that floods
/// the daemon takes at most one CPU from dom0's; a lower priority also lets dom0's requests
/// preempt it. The store lock and the snapshot lock are shared with dom0's threads, so a lower
/// priority could make dom0 wait for a preempted domain thread inside one of them (priority
/// inversion): they are held for one request and for a pointer swap (a commit's tree is built
/// without the lock), and with [`GuestPriority::Idle`], which on a busy machine may not run for
/// a long while, the daemon also lifts the domains' thread to `SCHED_OTHER` while a dom0 thread
/// waits for a lock it holds ([`crate::Engine::set_lock_wait_hook`]), then puts it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestPriority {
    /// As the daemon's other threads.
    Same,
    /// This much higher a nice value than the daemon's (Linux nice values are per thread).
    /// When the daemon's own nice value leaves less room than that below 19 (a daemon started
    /// under `nice -n 19`, say, where it would be [`GuestPriority::Same`]), the thread is made
    /// [`GuestPriority::Idle`] instead: the hostile-domain benchmark (README) met dom0's
    /// latency target with the idle class there, and missed it by up to 62× with equal nice
    /// values.
    Nice(i32),
    /// `SCHED_IDLE`: it runs only on CPU time no other thread of the machine wants.
    Idle,
}

impl Default for GuestPriority {
    fn default() -> Self {
        GuestPriority::Nice(10)
    }
}

impl GuestPriority {
    /// What a thread created by the calling thread gets for `self` (nice values are inherited
    /// from the creating thread): `Nice(by)` becomes `Idle` when the calling thread's nice
    /// value plus `by` would pass 19.
    pub fn effective(self) -> GuestPriority {
        match self {
            GuestPriority::Nice(by) if by > 0 => match thread_nice() {
                Some(now) if now + by > 19 => GuestPriority::Idle,
                _ => self,
            },
            other => other,
        }
    }
}

/// The calling thread's nice value (None if it cannot be read).
fn thread_nice() -> Option<i32> {
    // SAFETY: getpriority on the calling thread's own id; errno is cleared first since -1 is
    // also a valid nice value.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        (now != -1 || *libc::__errno_location() == 0).then_some(now)
    }
}

impl Options {
    /// Serve dom0 on `socket`, no domain sockets, default limits, quiet.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Options {
            socket: socket.into(),
            domain_sockets: Vec::new(),
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            max_domain_connections: DEFAULT_MAX_DOMAIN_CONNECTIONS,
            verbose: false,
            socket_mode: 0o600,
            guest_priority: GuestPriority::default(),
        }
    }
}

/// Tells a running daemon to stop. Clone it freely; [`Shutdown::trigger`] works from any thread
/// (or a signal-handling thread).
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown signal not yet triggered.
    pub fn new() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Stop the daemon: listeners close, connections are dropped, `serve` returns.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Wait until triggered.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // An error means the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// Bind a listening socket at `path`, replacing a stale socket file (never another kind of
/// file).
pub fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    clear_stale(path)?;
    std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))
}

/// Refuse a socket a running daemon answers on; remove a stale one.
fn clear_stale(path: &Path) -> io::Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running daemon", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// [`bind`], with the socket file given `mode` before it appears at `path`: it is bound under a
/// temporary name in the same directory, its mode set, then renamed into place, so nobody can
/// ever find it at `path` with the default (umask) permissions.
pub fn bind_with_mode(path: &Path, mode: u32) -> io::Result<std::os::unix::net::UnixListener> {
    clear_stale(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", tmp.display())))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io::Error::new(
            e.kind(),
            format!("place {}: {e}", path.display()),
        ));
    }
    Ok(l)
}

/// Bind the sockets of `opts`, serve a fresh engine until `shutdown`, then remove the socket
/// files. Blocks the calling thread.
pub fn serve(opts: &Options, shutdown: Shutdown) -> io::Result<()> {
    serve_engine(opts, Engine::new(), shutdown)
}

/// [`serve`] with a given engine (e.g. one a test has filled in).
pub fn serve_engine(opts: &Options, engine: Arc<Engine>, shutdown: Shutdown) -> io::Result<()> {
    let listeners = bind_all(opts)?;
    let result = serve_listeners(opts, engine, listeners, shutdown);
    remove_sockets(opts);
    result
}

/// Bind the main socket (domid 0) and every domain socket, with [`Options::socket_mode`].
pub fn bind_all(opts: &Options) -> io::Result<Vec<(u32, std::os::unix::net::UnixListener)>> {
    let bind_mode = |path: &Path| bind_with_mode(path, opts.socket_mode);
    let mut out = vec![(0, bind_mode(&opts.socket)?)];
    let mut bound = vec![opts.socket.as_path()];
    for (domid, path) in &opts.domain_sockets {
        match bind_mode(path) {
            Ok(l) => {
                out.push((*domid, l));
                bound.push(path);
            }
            Err(e) => {
                // Remove only what this call created, never another daemon's socket.
                for p in bound {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn remove_sockets(opts: &Options) {
    for p in std::iter::once(&opts.socket).chain(opts.domain_sockets.iter().map(|(_, p)| p)) {
        let _ = std::fs::remove_file(p);
    }
}

/// Serve already bound listeners (`(domid, listener)`) until `shutdown`, on a tokio runtime of
/// its own. Blocks the calling thread. Does not remove socket files.
pub fn serve_listeners(
    opts: &Options,
    engine: Arc<Engine>,
    listeners: Vec<(u32, std::os::unix::net::UnixListener)>,
    shutdown: Shutdown,
) -> io::Result<()> {
    let limits = Limits {
        max_queued_bytes: opts.max_queued_bytes,
        max_domain_connections: opts.max_domain_connections,
        verbose: opts.verbose,
    };
    for (_, l) in &listeners {
        l.set_nonblocking(true)?;
    }
    let (dom0, guests): (Vec<_>, Vec<_>) = listeners.into_iter().partition(|(d, _)| *d == 0);
    let gate = Arc::new(Dom0Gate::default());
    let budgets = Arc::new(Budgets::new(engine.quota().outstanding));
    let priority = opts.guest_priority.effective();
    if limits.verbose && priority != opts.guest_priority {
        eprintln!(
            "xenstored: the domains' thread runs {priority:?}: this daemon's nice value leaves \
             no room for {:?}",
            opts.guest_priority
        );
    }
    let booster = (priority == GuestPriority::Idle && !guests.is_empty())
        .then(|| Arc::new(Booster::new(limits.verbose)));
    if let Some(b) = &booster {
        let b = b.clone();
        engine.set_lock_wait_hook(Some(Arc::new(move |waits| b.dom0_waits(waits))));
    }
    // The domains' thread: one scheduler, round-robin over their connections.
    let guest_thread = if guests.is_empty() {
        None
    } else {
        let (engine, gate, budgets, shutdown) = (
            engine.clone(),
            gate.clone(),
            budgets.clone(),
            shutdown.clone(),
        );
        let booster = booster.clone();
        Some(
            std::thread::Builder::new()
                .name("xenstored-domains".into())
                .spawn(move || -> io::Result<()> {
                    lower_thread_priority(priority, limits.verbose);
                    if let Some(b) = booster {
                        b.set_thread();
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let listeners = to_tokio(guests)?;
                        serve_all(engine, listeners, limits, gate, budgets, shutdown).await;
                        Ok(())
                    })
                })?,
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("xenstored")
        .enable_all()
        .build()?;
    let sd = shutdown.clone();
    let e = engine.clone();
    let result = rt.block_on(async move {
        let listeners = to_tokio(dom0)?;
        serve_all(e, listeners, limits, gate, budgets, sd).await;
        Ok(())
    });
    // Whatever stopped dom0's side stops the domains' too.
    shutdown.trigger();
    let guests = match guest_thread.map(|t| t.join()) {
        Some(Ok(r)) => r,
        Some(Err(_)) => Err(io::Error::other("the domains' thread panicked")),
        None => Ok(()),
    };
    if booster.is_some() {
        engine.set_lock_wait_hook(None);
    }
    result.and(guests)
}

/// Lifts the `SCHED_IDLE` domains' thread to `SCHED_OTHER` while another thread waits for a
/// lock (see [`GuestPriority`]): the domains' thread may be holding it, preempted.
#[derive(Debug)]
struct Booster {
    /// The domains' thread (0 until it has started).
    tid: std::sync::atomic::AtomicI32,
    /// Threads waiting now.
    waiting: std::sync::Mutex<usize>,
    verbose: bool,
}

impl Booster {
    fn new(verbose: bool) -> Self {
        Booster {
            tid: std::sync::atomic::AtomicI32::new(0),
            waiting: std::sync::Mutex::new(0),
            verbose,
        }
    }

    /// Called on the domains' thread.
    fn set_thread(&self) {
        // SAFETY: gettid has no arguments and cannot fail.
        self.tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
    }

    fn dom0_waits(&self, begins: bool) {
        let tid = self.tid.load(Ordering::SeqCst);
        // SAFETY: gettid has no arguments and cannot fail.
        if tid == 0 || tid == unsafe { libc::gettid() } {
            return;
        }
        let mut n = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let policy = if begins {
            *n += 1;
            (*n == 1).then_some(libc::SCHED_OTHER)
        } else {
            *n = n.saturating_sub(1);
            (*n == 0).then_some(libc::SCHED_IDLE)
        };
        if let Some(policy) = policy {
            let param = sched_param_zero();
            // SAFETY: changes the policy of a thread of this process; `param` outlives the
            // call. A thread that has exited makes it fail with ESRCH, nothing else.
            let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
            if rc != 0 && self.verbose {
                eprintln!(
                    "xenstored: cannot change the domains' thread's policy: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

fn to_tokio(
    listeners: Vec<(u32, std::os::unix::net::UnixListener)>,
) -> io::Result<Vec<(u32, UnixListener)>> {
    listeners
        .into_iter()
        .map(|(d, l)| Ok((d, UnixListener::from_std(l)?)))
        .collect()
}

/// The parameter `sched_setscheduler` takes for SCHED_OTHER and SCHED_IDLE (priority 0). Not a
/// struct literal: musl's `sched_param` has more fields than glibc's (the static build is musl).
fn sched_param_zero() -> libc::sched_param {
    // SAFETY: sched_param is plain integers and timespecs; all-zero is a valid value of each.
    unsafe { std::mem::zeroed() }
}

/// Give the calling thread `priority`. Best effort: a failure leaves it as it is (and is
/// logged when `verbose`).
fn lower_thread_priority(priority: GuestPriority, verbose: bool) {
    let ok = match priority {
        GuestPriority::Same => true,
        GuestPriority::Nice(by) if by <= 0 => true,
        // SAFETY: getpriority/setpriority on the calling thread's own id (Linux nice values are
        // per thread); no memory is passed.
        GuestPriority::Nice(by) => match thread_nice() {
            // SAFETY: setpriority on the calling thread's own id; no memory is passed.
            Some(now) => unsafe {
                libc::setpriority(
                    libc::PRIO_PROCESS,
                    libc::gettid() as libc::id_t,
                    (now + by).min(19),
                ) == 0
            },
            None => false,
        },
        GuestPriority::Idle => {
            let param = sched_param_zero();
            // SAFETY: sets the calling thread's own policy; `param` outlives the call.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
        }
    };
    if !ok && verbose {
        eprintln!(
            "xenstored: cannot give the domains' thread {priority:?}: {}",
            io::Error::last_os_error()
        );
    }
}

/// dom0's requests that take the store lock, in progress: domains do not start a request while
/// there are any (see the module docs).
#[derive(Debug, Default)]
struct Dom0Gate {
    waiting: AtomicUsize,
    clear: Notify,
}

/// A dom0 request in progress; leaves the gate when dropped (also on a panic).
struct Entered<'a>(&'a Dom0Gate);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.clear.notify_waiters();
        }
    }
}

impl Dom0Gate {
    fn enter(&self) -> Entered<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Entered(self)
    }

    /// Wait until no dom0 request is waiting for the store lock.
    async fn wait_clear(&self) {
        loop {
            let notified = self.clear.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `leave` in between is not missed.
            notified.as_mut().enable();
            if self.waiting.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One budget of requests in flight per domain, shared by all its sockets and connections.
#[derive(Debug)]
struct Budgets {
    per_domain: usize,
    domains: std::sync::Mutex<std::collections::HashMap<u32, Arc<Semaphore>>>,
}

impl Budgets {
    fn new(outstanding: usize) -> Self {
        Budgets {
            per_domain: outstanding.min(Semaphore::MAX_PERMITS),
            domains: Default::default(),
        }
    }

    fn of(&self, domid: u32) -> Arc<Semaphore> {
        self.domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(domid)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_domain)))
            .clone()
    }
}

/// Limits and diagnostics of [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`Options::max_queued_bytes`].
    pub max_queued_bytes: usize,
    /// See [`Options::max_domain_connections`].
    pub max_domain_connections: usize,
    /// See [`Options::verbose`].
    pub verbose: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            max_domain_connections: DEFAULT_MAX_DOMAIN_CONNECTIONS,
            verbose: false,
        }
    }
}

/// Accept and serve connections on tokio listeners until `shutdown` (the async core, for
/// callers with their own runtime). dom0's and the domains' connections share the caller's
/// runtime here; [`serve_listeners`] gives the domains a thread of their own.
pub async fn run(
    engine: Arc<Engine>,
    listeners: Vec<(u32, UnixListener)>,
    limits: Limits,
    shutdown: Shutdown,
) -> io::Result<()> {
    let budgets = Arc::new(Budgets::new(engine.quota().outstanding));
    let gate = Arc::new(Dom0Gate::default());
    serve_all(engine, listeners, limits, gate, budgets, shutdown).await;
    Ok(())
}

async fn serve_all(
    engine: Arc<Engine>,
    listeners: Vec<(u32, UnixListener)>,
    limits: Limits,
    gate: Arc<Dom0Gate>,
    budgets: Arc<Budgets>,
    shutdown: Shutdown,
) {
    let mut accepters = tokio::task::JoinSet::new();
    for (domid, listener) in listeners {
        let budget = (domid != 0).then(|| budgets.of(domid));
        accepters.spawn(accept_loop(
            engine.clone(),
            listener,
            domid,
            budget,
            gate.clone(),
            limits,
            shutdown.clone(),
        ));
    }
    shutdown.wait().await;
    accepters.abort_all();
    while accepters.join_next().await.is_some() {}
}

async fn accept_loop(
    engine: Arc<Engine>,
    listener: UnixListener,
    domid: u32,
    budget: Option<Arc<Semaphore>>,
    gate: Arc<Dom0Gate>,
    limits: Limits,
    shutdown: Shutdown,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if domid != 0 && conns.len() >= limits.max_domain_connections {
                        if limits.verbose {
                            eprintln!(
                                "xenstored: domain {domid} already has {} connections; closing a new one",
                                conns.len()
                            );
                        }
                        drop(stream);
                        continue;
                    }
                    conns.spawn(serve_connection(
                        engine.clone(),
                        stream,
                        domid,
                        budget.clone(),
                        gate.clone(),
                        limits,
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    if limits.verbose {
                        eprintln!("xenstored: accept: {e}");
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.wait() => break,
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// The outgoing queue of one connection; also its engine event sink.
/// Bytes to write, with the in-flight permit of the request they answer (released once
/// written).
type Outgoing = (Vec<u8>, Option<OwnedSemaphorePermit>);

struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    overflowed: AtomicBool,
    overflow: Notify,
}

impl Outbox {
    fn push_with(&self, bytes: Vec<u8>, permit: Option<OwnedSemaphorePermit>) {
        if self.overflowed.load(Ordering::Relaxed) {
            return;
        }
        let total = self.queued.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
        if total > self.limit {
            self.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
            self.overflowed.store(true, Ordering::Relaxed);
            self.overflow.notify_one();
            return;
        }
        let len = bytes.len();
        if self.tx.send((bytes, permit)).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
        }
    }

    fn push_message(&self, msg: &Message) {
        self.push_reply(msg, None);
    }

    fn push_reply(&self, msg: &Message, permit: Option<OwnedSemaphorePermit>) {
        // Replies are checked against the payload limit by the engine; an event that is too
        // long is not sent, as in xenstored.
        if let Ok(bytes) = msg.encode() {
            self.push_with(bytes, permit);
        }
    }
}

impl EventSink for Outbox {
    fn watch_event(&self, path: &[u8], token: &[u8]) {
        let payload = wire::join_strings(&[path, token]);
        if payload.len() <= PAYLOAD_MAX {
            self.push_message(&Message::new(MsgType::WATCH_EVENT, 0, 0, payload));
        }
    }
}

/// Disconnects the engine connection however the connection task ends (even when aborted).
struct ConnGuard {
    engine: Arc<Engine>,
    conn: ConnId,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.engine.disconnect(self.conn);
    }
}

/// Replies gathered into one write at most (they are queued whole, so a write may exceed it by
/// one message).
const WRITE_BATCH: usize = 64 * 1024;

async fn serve_connection(
    engine: Arc<Engine>,
    stream: UnixStream,
    domid: u32,
    budget: Option<Arc<Semaphore>>,
    gate: Arc<Dom0Gate>,
    limits: Limits,
    shutdown: Shutdown,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let outbox = Arc::new(Outbox {
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
        limit: limits.max_queued_bytes,
        overflowed: AtomicBool::new(false),
        overflow: Notify::new(),
    });
    let guard = ConnGuard {
        conn: engine.connect(domid, outbox.clone()),
        engine,
    };
    let written = outbox.queued.clone();
    let mut writer = tokio::spawn(async move {
        // Everything queued by the time the writer runs goes out in one write: a client that
        // pipelines hundreds of requests gets its replies in a few syscalls, not one each.
        let mut batch: Vec<u8> = Vec::new();
        let mut permits = Vec::new();
        while let Some((first, permit)) = rx.recv().await {
            batch.clear();
            batch.extend_from_slice(&first);
            permits.extend(permit);
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok((more, permit)) => {
                        batch.extend_from_slice(&more);
                        permits.extend(permit);
                    }
                    Err(_) => break,
                }
            }
            if wr.write_all(&batch).await.is_err() {
                break;
            }
            written.fetch_sub(batch.len(), Ordering::Relaxed);
            // These requests are answered: the domain may send more.
            permits.clear();
        }
        let _ = wr.shutdown().await;
    });

    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; HEADER_LEN + PAYLOAD_MAX];
    let mut clean = true;
    'conn: loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => break 'conn,
                Ok(n) => n,
                Err(e) => {
                    if limits.verbose {
                        eprintln!("xenstored: read: {e}");
                    }
                    break 'conn;
                }
            },
            _ = outbox.overflow.notified() => {
                if limits.verbose {
                    eprintln!("xenstored: client does not read its replies; disconnecting");
                }
                clean = false;
                break 'conn;
            }
            _ = shutdown.wait() => {
                clean = false;
                break 'conn;
            }
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            match decoder.feed(data) {
                Ok((used, msg)) => {
                    data = &data[used..];
                    if let Some(msg) = msg {
                        // A domain's requests in flight are bounded: wait (without reading
                        // more) until one of its replies has been written.
                        let permit = match &budget {
                            Some(b) => tokio::select! {
                                p = b.clone().acquire_owned() => p.ok(),
                                _ = outbox.overflow.notified() => {
                                    clean = false;
                                    break 'conn;
                                }
                                _ = shutdown.wait() => {
                                    clean = false;
                                    break 'conn;
                                }
                            },
                            None => None,
                        };
                        let resp = if domid == 0 {
                            if Engine::takes_store_lock(&msg) {
                                let _entered = gate.enter();
                                guard.engine.handle_message(guard.conn, &msg)
                            } else {
                                guard.engine.handle_message(guard.conn, &msg)
                            }
                        } else {
                            // After anything dom0 is waiting for the store lock with.
                            gate.wait_clear().await;
                            guard.engine.handle_message(guard.conn, &msg)
                        };
                        outbox.push_reply(&resp.reply, permit);
                        if let Some(ev) = resp.initial_event {
                            outbox.watch_event(&ev.path, &ev.token);
                        }
                        if domid != 0 {
                            // One request per turn: the other connections' go first.
                            tokio::task::yield_now().await;
                        }
                    }
                }
                Err(e) => {
                    if limits.verbose {
                        eprintln!("xenstored: {e}; closing the connection");
                    }
                    if let Some(h) = decoder.rejected_header() {
                        let reply = Message {
                            msg_type: MsgType::ERROR.to_u32(),
                            req_id: h.req_id,
                            tx_id: h.tx_id,
                            payload: wire::join_strings(&[Errno::E2BIG.name()]),
                        };
                        outbox.push_message(&reply);
                    }
                    break 'conn;
                }
            }
        }
    }
    if limits.verbose && !decoder.is_idle() {
        eprintln!("xenstored: client disconnected in the middle of a message");
    }
    // Forget the connection (watches, transactions); the engine drops its outbox reference.
    drop(guard);
    drop(outbox);
    if clean {
        // Let queued replies go out, but never wait for ever on a client that does not read.
        if tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    } else {
        writer.abort();
    }
}

/// Run [`serve`] until SIGINT or SIGTERM (for the `xenplug xenstored` binary).
pub fn serve_until_signal(opts: &Options) -> io::Result<()> {
    let shutdown = Shutdown::new();
    let listeners = bind_all(opts)?;
    let sd = shutdown.clone();
    let waiter = std::thread::Builder::new()
        .name("xenstored-signals".into())
        .spawn(move || -> io::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate())?;
                let mut int = signal(SignalKind::interrupt())?;
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = sd.wait() => {}
                }
                sd.trigger();
                Ok(())
            })
        })?;
    let result = serve_listeners(opts, Engine::new(), listeners, shutdown.clone());
    shutdown.trigger();
    let _ = waiter.join();
    remove_sockets(opts);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tid: i32) -> i32 {
        // SAFETY: queries a thread of this process; no memory is passed.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// Sets the calling thread's nice value (root may lower it again).
    fn set_nice(n: i32) {
        // SAFETY: setpriority on the calling thread's own id.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, n) };
        assert_eq!(rc, 0, "setpriority({n}): {}", io::Error::last_os_error());
    }

    #[test]
    fn nice_10_under_a_daemon_without_room_for_it_is_the_idle_class() {
        // In threads of their own: nice values are per thread, and the test harness's are left
        // alone.
        let at = |nice: i32, p: GuestPriority| {
            std::thread::spawn(move || {
                set_nice(nice);
                assert_eq!(thread_nice(), Some(nice));
                p.effective()
            })
            .join()
            .unwrap()
        };
        let default = GuestPriority::default();
        assert_eq!(default, GuestPriority::Nice(10));
        assert_eq!(at(0, default), GuestPriority::Nice(10));
        assert_eq!(
            at(9, default),
            GuestPriority::Nice(10),
            "9 + 10 = 19: room enough"
        );
        assert_eq!(at(10, default), GuestPriority::Idle);
        assert_eq!(at(19, default), GuestPriority::Idle);
        assert_eq!(at(19, GuestPriority::Same), GuestPriority::Same);
        assert_eq!(at(19, GuestPriority::Nice(0)), GuestPriority::Nice(0));
        assert_eq!(at(15, GuestPriority::Nice(4)), GuestPriority::Nice(4));
    }

    #[test]
    fn the_idle_domains_thread_is_lifted_while_dom0_waits() {
        let booster = Arc::new(Booster::new(true));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let b = booster.clone();
        let domains = std::thread::spawn(move || {
            lower_thread_priority(GuestPriority::Idle, true);
            b.set_thread();
            // SAFETY: gettid has no arguments and cannot fail.
            ready_tx.send(unsafe { libc::gettid() }).unwrap();
            // The thread's own waits change nothing.
            b.dom0_waits(true);
            b.dom0_waits(false);
            let _ = done_rx.recv();
        });
        let tid = ready_rx.recv().unwrap();
        assert_eq!(policy(tid), libc::SCHED_IDLE);
        booster.dom0_waits(true);
        assert_eq!(policy(tid), libc::SCHED_OTHER, "lifted while one waits");
        booster.dom0_waits(true);
        booster.dom0_waits(false);
        assert_eq!(
            policy(tid),
            libc::SCHED_OTHER,
            "still lifted while another waits"
        );
        booster.dom0_waits(false);
        assert_eq!(policy(tid), libc::SCHED_IDLE, "back once nobody waits");
        done_tx.send(()).unwrap();
        domains.join().unwrap();
    }
}
