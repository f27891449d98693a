//! The I/O driver of one channel: runs a [`Machine`] against the channel's Unix socket.
//!
//! One tokio task per channel. Per-channel resources are bounded whatever the guest does:
//! the machine's host session holds at most one frame ([`Limits`]), reads go through a shared
//! per-thread scratch buffer (no per-channel read buffer), inbound bytes pass a token bucket (a flooding
//! guest is simply read more slowly, and QEMU's bounded buffer pushes back on it), guest events
//! pass a second token bucket before the policy, every line the channel writes to the log passes
//! a third ([`ChannelLog`]: dropped lines are counted and summarised), and every wait has a
//! deadline.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::discovery::{ChannelInfo, ChannelKey};
use crate::guest_state::GuestReport;
use crate::log::{ChannelLog, Level, LogRate, Logger, SystemClock};
use crate::machine::{Action, Counters, Desired, Input, Machine, Phase, Timing};
use crate::policy::{Policy, Subject, Verdict};
use crate::status::Reporter;
use crate::store::{Documents, Lookup};
use crate::wire::{self, Limits};
use xenplug_channel::host::{HostSession, Nonces};

/// Guest-originated requests the peer knows how to handle (after the policy allowed them).
pub mod guest_requests {
    /// The guest asks for its configuration to be delivered again.
    pub const REQUEST_CONFIG: &str = "xenplug-request-config";
    /// The guest sends a line for dom0's log (`data.message`, sanitised and capped).
    pub const LOG: &str = "xenplug-log";
}

/// Per-channel rate limits.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Sustained inbound bytes per second.
    pub bytes_per_sec: u64,
    /// Inbound burst in bytes.
    pub bytes_burst: u64,
    /// Guest-originated requests: burst.
    pub events_burst: u32,
    /// Guest-originated requests: one more token every this long.
    pub event_interval: Duration,
    /// Log lines about one channel (everything its guest can make the daemon say).
    pub log: LogRate,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            bytes_per_sec: 256 * 1024,
            bytes_burst: 512 * 1024,
            events_burst: 5,
            event_interval: Duration::from_secs(1),
            log: LogRate::default(),
        }
    }
}

/// What `list` shows for one channel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmStatus {
    /// Domain id.
    pub domid: u32,
    /// Console devid.
    pub devid: u32,
    /// VM name.
    pub vm_name: Option<String>,
    /// VM UUID.
    pub vm_uuid: Option<String>,
    /// Channel name.
    pub channel: String,
    /// Socket path.
    pub path: String,
    /// Channel state ([`Phase`] name, or `rejected`).
    pub state: &'static str,
    /// Last completed handshake, seconds since the epoch.
    pub last_handshake: Option<u64>,
    /// Generation the agent reports applied.
    pub applied_generation: Option<u64>,
    /// Generation the store wants.
    pub desired_generation: Option<u64>,
    /// Instance id the agent reports applied.
    pub applied_instance: Option<String>,
    /// Instance id of the document the store has for the VM.
    pub desired_instance: Option<String>,
    /// Last error.
    pub last_error: Option<String>,
    /// Guest requests denied by policy or rate limit.
    pub denied_requests: u64,
    /// Counters.
    pub counters: Counters,
    /// The guest's last report of its state (OS, addresses, memory), if it sent one.
    pub guest: Option<GuestReport>,
}

impl VmStatus {
    /// A row for a channel that is known but not served.
    pub fn rejected(key: ChannelKey, why: String) -> Self {
        VmStatus {
            domid: key.0,
            devid: key.1,
            vm_name: None,
            vm_uuid: None,
            channel: String::new(),
            path: String::new(),
            state: "rejected",
            last_handshake: None,
            applied_generation: None,
            desired_generation: None,
            applied_instance: None,
            desired_instance: None,
            last_error: Some(why),
            denied_requests: 0,
            counters: Counters::default(),
            guest: None,
        }
    }
}

/// State shared by every channel task.
#[derive(Debug)]
pub struct Shared {
    /// Timing.
    pub timing: Timing,
    /// Frame bounds for guest input.
    pub limits: Limits,
    /// Rate limits.
    pub rates: Rates,
    /// The configuration store (directory or etcd).
    pub store: RwLock<Documents>,
    /// Bumped after every store reload that changed something.
    pub store_epoch: tokio::sync::watch::Sender<u64>,
    /// The policy for guest-originated requests.
    pub policy: RwLock<Arc<Policy>>,
    /// Status rows.
    pub status: Mutex<BTreeMap<ChannelKey, VmStatus>>,
    /// Logger.
    pub log: Logger,
    /// With an etcd store: where status rows go.
    pub reporter: OnceLock<Arc<Reporter>>,
    /// Channels waiting for changes of one store key (an etcd store wakes only the channels
    /// of the VM whose document changed; a re-list still bumps `store_epoch`).
    pub key_waiters: Mutex<HashMap<String, Vec<KeyWaiter>>>,
}

/// One channel waiting for a store key: its registration id and what to notify.
pub type KeyWaiter = (u64, Arc<tokio::sync::Notify>);

/// A channel's registration in [`Shared::key_waiters`], removed when dropped.
#[derive(Debug)]
pub struct KeyWatch {
    shared: Arc<Shared>,
    keys: Vec<String>,
    id: u64,
    /// Notified when one of the keys changed.
    pub notify: Arc<tokio::sync::Notify>,
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let mut w = self
            .shared
            .key_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(v) = w.get_mut(k) {
                v.retain(|(id, _)| *id != self.id);
                if v.is_empty() {
                    w.remove(k);
                }
            }
        }
    }
}

impl Shared {
    /// Shared state around a loaded store and policy.
    pub fn new(
        timing: Timing,
        limits: Limits,
        rates: Rates,
        store: Documents,
        policy: Policy,
        log: Logger,
    ) -> Arc<Self> {
        let (tx, _) = tokio::sync::watch::channel(store.epoch());
        Arc::new(Shared {
            timing,
            limits,
            rates,
            store: RwLock::new(store),
            store_epoch: tx,
            policy: RwLock::new(Arc::new(policy)),
            status: Mutex::new(BTreeMap::new()),
            log,
            reporter: OnceLock::new(),
            key_waiters: Mutex::new(HashMap::new()),
        })
    }

    /// Wake the channels of the VM whose document (or metadata) is stored under `key`.
    pub fn key_changed(&self, key: &str) {
        let w = self.key_waiters.lock().unwrap_or_else(|e| e.into_inner());
        for (_, n) in w.get(key).into_iter().flatten() {
            n.notify_one();
        }
    }

    /// Register a channel for changes of its VM's keys (UUID and name).
    pub fn watch_keys(self: &Arc<Self>, info: &ChannelInfo) -> KeyWatch {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notify = Arc::new(tokio::sync::Notify::new());
        let keys: Vec<String> = info
            .vm_uuid
            .iter()
            .chain(info.vm_name.iter())
            .cloned()
            .collect();
        let mut w = self.key_waiters.lock().unwrap_or_else(|e| e.into_inner());
        for k in &keys {
            w.entry(k.clone()).or_default().push((id, notify.clone()));
        }
        drop(w);
        KeyWatch {
            shared: self.clone(),
            keys,
            id,
            notify,
        }
    }

    /// What the store wants for this channel's VM.
    pub fn desired_for(&self, info: &ChannelInfo) -> Desired {
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        match store.lookup(info.vm_uuid.as_deref(), info.vm_name.as_deref()) {
            Lookup::Found { doc, .. } => Desired::Doc(doc),
            Lookup::Invalid { file, error } => {
                Desired::Nothing(format!("document {file} is invalid: {error}"))
            }
            Lookup::Missing => Desired::Nothing(format!(
                "no document for this VM (uuid {}, name {}) in {}",
                info.vm_uuid.as_deref().unwrap_or("-"),
                info.vm_name.as_deref().unwrap_or("-"),
                store.describe()
            )),
        }
    }
}

/// A token bucket on a monotonic clock.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    /// Full bucket of `capacity`, refilled at `per_sec`.
    pub fn new(capacity: f64, per_sec: f64, now: Instant) -> Self {
        Bucket {
            tokens: capacity,
            capacity,
            per_sec,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// Take `n` tokens if there are enough.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Take `n` tokens, going into debt if needed.
    pub fn take(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens -= n;
    }

    /// How long until the bucket is out of debt.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// Wait until the stream is readable, read once into the thread's scratch buffer and feed what
/// was read to the machine. `Ok(None)` is EOF.
async fn read_into(
    s: &UnixStream,
    machine: &mut Machine,
    bucket: &mut Bucket,
) -> std::io::Result<Option<Vec<Action>>> {
    let wait = bucket.wait(Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    loop {
        s.readable().await?;
        let r = SCRATCH_BUF.with(|b| {
            let mut b = b.borrow_mut();
            match s.try_read(&mut b) {
                Ok(0) => Ok(Some(None)),
                Ok(n) => Ok(Some(Some((n, machine.feed(Instant::now(), &b[..n]))))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        match r {
            None => continue,
            Some(None) => return Ok(None),
            Some(Some((n, actions))) => {
                bucket.take(n as f64, Instant::now());
                return Ok(Some(actions));
            }
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn retryable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::EAGAIN)
    )
}

struct Driver {
    info: ChannelInfo,
    shared: Arc<Shared>,
    /// Every line about this channel goes through its rate limit.
    log: ChannelLog,
    machine: Machine,
    stream: Option<UnixStream>,
    events: Bucket,
    state_events: Bucket,
    guest: Option<GuestReport>,
    denied: u64,
    rate_limited: u64,
    last_rate_log: Option<Instant>,
    last_phase: Phase,
}

impl Driver {
    fn publish(&mut self) {
        let m = &self.machine;
        let row = VmStatus {
            domid: self.info.domid,
            devid: self.info.devid,
            vm_name: self.info.vm_name.clone(),
            vm_uuid: self.info.vm_uuid.clone(),
            channel: self.info.channel.clone(),
            path: self.info.path.display().to_string(),
            state: m.phase().name(),
            last_handshake: m.last_handshake.map(unix_secs),
            applied_generation: m.applied_generation,
            desired_generation: m.desired_generation(),
            applied_instance: m.applied_instance.clone(),
            desired_instance: m.desired_instance().map(str::to_string),
            last_error: m.last_error.clone(),
            denied_requests: self.denied + self.rate_limited,
            counters: Counters {
                log_suppressed: self.log.suppressed(),
                ..m.counters()
            },
            guest: self.guest.clone(),
        };
        if let Some(r) = self.shared.reporter.get() {
            r.update(&row);
        }
        if let Ok(mut s) = self.shared.status.lock() {
            s.insert(self.info.key(), row);
        }
        if m.phase() != self.last_phase {
            self.log.debug(
                "state",
                &[
                    ("from", self.last_phase.name().into()),
                    ("to", m.phase().name().into()),
                ],
            );
            self.last_phase = m.phase();
        }
    }

    /// Keep a guest's report of its state (rate-limited like requests, but not subject to the
    /// policy: it asks for nothing).
    fn guest_state(&mut self, data: Value) {
        if !self.state_events.try_take(1.0, Instant::now()) {
            self.rate_limited += 1;
            return;
        }
        match GuestReport::from_event(data, unix_secs(SystemTime::now())) {
            Ok(r) => {
                if self.guest.as_ref().map(|g| &g.state) != Some(&r.state) {
                    self.log.debug(
                        "guest-state",
                        &[
                            ("os", json!(r.state.os_name)),
                            ("addresses", json!(r.addresses())),
                        ],
                    );
                }
                self.guest = Some(r);
            }
            Err(e) => {
                self.log.warn("guest-state-invalid", &[("error", e.into())]);
            }
        }
    }

    fn guest_request(&mut self, name: String, data: Value) -> Option<Input> {
        let now = Instant::now();
        if !self.events.try_take(1.0, now) {
            self.rate_limited += 1;
            if self
                .last_rate_log
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
            {
                self.last_rate_log = Some(now);
                self.log.warn(
                    "guest-request-rate-limited",
                    &[
                        ("request", name.clone().into()),
                        ("dropped_so_far", self.rate_limited.into()),
                    ],
                );
            }
            return None;
        }
        let meta = {
            let store = self.shared.store.read().unwrap_or_else(|e| e.into_inner());
            store.meta(self.info.vm_uuid.as_deref(), self.info.vm_name.as_deref())
        };
        let policy = self
            .shared
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let decision = policy.decide(&Subject {
            command: &name,
            vm_name: self.info.vm_name.as_deref().unwrap_or(""),
            vm_uuid: self.info.vm_uuid.as_deref().unwrap_or(""),
            vm_class: &meta.class,
            flags: Some(&meta.flags),
        });
        if decision.verdict == Verdict::Deny {
            self.denied += 1;
            self.log.warn(
                "guest-request-denied",
                &[
                    ("request", name.into()),
                    ("rule_line", json!(decision.line)),
                    ("vm_class", meta.class.clone().into()),
                ],
            );
            return None;
        }
        self.log.info(
            "guest-request-allowed",
            &[
                ("request", name.clone().into()),
                ("rule_line", json!(decision.line)),
            ],
        );
        match name.as_str() {
            guest_requests::REQUEST_CONFIG => Some(Input::Redeliver),
            guest_requests::LOG => {
                let msg = data
                    .get("message")
                    .and_then(Value::as_str)
                    .map(wire::sanitize)
                    .unwrap_or_default();
                self.log.info("guest-log", &[("message", msg.into())]);
                None
            }
            _ => {
                self.log
                    .warn("guest-request-unhandled", &[("request", name.into())]);
                None
            }
        }
    }

    async fn perform(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            let input = match a {
                Action::Connect => {
                    let r = tokio::time::timeout(
                        self.shared.timing.request_timeout,
                        UnixStream::connect(&self.info.path),
                    )
                    .await;
                    Some(match r {
                        Ok(Ok(s)) => {
                            self.stream = Some(s);
                            self.log.debug("connected", &[]);
                            Input::Connected
                        }
                        Ok(Err(e)) => Input::ConnectFailed {
                            retryable: retryable(&e),
                            error: e.to_string(),
                        },
                        Err(_) => Input::ConnectFailed {
                            retryable: true,
                            error: "connect timed out".into(),
                        },
                    })
                }
                Action::Send(bytes) => match self.stream.as_mut() {
                    None => None,
                    Some(s) => {
                        match tokio::time::timeout(
                            self.shared.timing.request_timeout,
                            s.write_all(&bytes),
                        )
                        .await
                        {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => {
                                self.stream = None;
                                Some(Input::Closed(format!("write: {e}")))
                            }
                            Err(_) => {
                                self.stream = None;
                                Some(Input::Closed(
                                    "write timed out (nobody drains the channel)".into(),
                                ))
                            }
                        }
                    }
                },
                Action::Disconnect => {
                    self.stream = None;
                    None
                }
                Action::GuestRequest { name, data } => self.guest_request(name, data),
                Action::GuestState(data) => {
                    self.guest_state(data);
                    None
                }
                Action::Log(event, fields) => {
                    let level = match event {
                        "apply-failed" | "request-timeout" | "agent-unsupported"
                        | "oversize-frame" => Level::Warn,
                        _ => Level::Info,
                    };
                    let f: Vec<(&str, Value)> = fields.into_iter().collect();
                    self.log.log(level, event, &f);
                    None
                }
            };
            if let Some(i) = input {
                queue.extend(self.machine.handle(Instant::now(), i));
            }
        }
        self.publish();
    }
}

/// Serve one channel until the task is aborted.
pub async fn run_channel(info: ChannelInfo, shared: Arc<Shared>) {
    let log = ChannelLog::new(
        shared.log.with(&[
            ("domid", info.domid.into()),
            ("devid", info.devid.into()),
            ("vm", json!(info.vm_name)),
        ]),
        shared.rates.log,
        Arc::new(SystemClock),
    );
    let mut epoch = shared.store_epoch.subscribe();
    let key_watch = shared.watch_keys(&info);
    let desired = shared.desired_for(&info);
    let now = Instant::now();
    let mut d = Driver {
        machine: Machine::new(
            shared.timing.clone(),
            desired,
            HostSession::new(
                shared.limits,
                Nonces::seeded((u64::from(info.domid) << 32) | u64::from(info.devid)),
            ),
        ),
        events: Bucket::new(
            f64::from(shared.rates.events_burst),
            1.0 / shared.rates.event_interval.as_secs_f64().max(1e-3),
            now,
        ),
        state_events: Bucket::new(
            f64::from(shared.rates.events_burst),
            1.0 / shared.rates.event_interval.as_secs_f64().max(1e-3),
            now,
        ),
        guest: None,
        stream: None,
        log,
        info,
        shared,
        denied: 0,
        rate_limited: 0,
        last_rate_log: None,
        last_phase: Phase::Backoff,
    };
    let mut bytes = Bucket::new(
        d.shared.rates.bytes_burst as f64,
        d.shared.rates.bytes_per_sec as f64,
        now,
    );
    let first = d.machine.start();
    d.perform(first).await;
    loop {
        let deadline = d.machine.deadline();
        let log_due = d.log.flush_at();
        enum Woke {
            Read(std::io::Result<Option<Vec<Action>>>),
            Timer,
            Store(bool),
            LogDue,
        }
        let woke = {
            let stream = d.stream.as_ref();
            let machine = &mut d.machine;
            let bytes = &mut bytes;
            tokio::select! {
                r = async move {
                    match stream {
                        Some(s) => read_into(s, machine, bytes).await,
                        None => std::future::pending().await,
                    }
                } => Woke::Read(r),
                _ = async {
                    match deadline {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => Woke::Timer,
                r = epoch.changed() => Woke::Store(r.is_ok()),
                _ = key_watch.notify.notified() => Woke::Store(true),
                _ = async {
                    match log_due {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => Woke::LogDue,
            }
        };
        let input = match woke {
            Woke::Read(Ok(Some(actions))) => {
                d.perform(actions).await;
                continue;
            }
            Woke::Read(Ok(None)) => {
                d.stream = None;
                Input::Closed("EOF".into())
            }
            Woke::Read(Err(e)) => {
                d.stream = None;
                Input::Closed(e.to_string())
            }
            Woke::LogDue => {
                // Lines were dropped and none came since to say so: a summary line.
                d.log.flush();
                continue;
            }
            Woke::Timer => Input::Timer,
            Woke::Store(false) => return,
            Woke::Store(true) => Input::Desired(d.shared.desired_for(&d.info)),
        };
        let actions = d.machine.handle(Instant::now(), input);
        d.perform(actions).await;
    }
}
