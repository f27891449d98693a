//! The per-channel state machine, free of I/O.
//!
//! The driver ([`crate::session`]) feeds it [`Input`]s (connection results, timer expiry,
//! document changes) and the bytes it reads ([`Machine::feed`]) with the current time, performs
//! the [`Action`]s it returns (connect, send bytes, disconnect, hand a guest request to the
//! policy) and sleeps until [`Machine::deadline`]. The handshake and reply matching themselves are
//! the shared [`HostSession`] (`xenplug-channel`), the same code `send`/`query` use.
//!
//! ```text
//!  Backoff ──timer──▶ Connecting ──ok──▶ Handshaking ──sync reply──▶ Querying ──gen == want──▶ Configured
//!     ▲                  │ ENOENT/ECONNREFUSED      │ (0xFF + sync, new nonce      │ gen != want
//!     └──────────────────┘                          │  every retry interval)       ▼
//!     ▲                                             │                           Applying ──▶ Verifying ──▶ Configured
//!     └──────── EOF / write error ◀─────────────────┴── request timeout: back to Handshaking
//! ```
//!
//! Everything that is not the reply it waits for — echoed requests, stale replies of an earlier
//! session, replies with an old nonce or id, garbage — is ignored and counted.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use xenplug_channel::host::{HostEvent, HostSession};
use xenplug_channel::qga;

use crate::doc::Document;
use crate::wire::{self, commands, AgentError};

/// Timing and bounds of one channel.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Interval between handshake attempts at first.
    pub sync_retry: Duration,
    /// The interval grows up to this while nobody answers.
    pub sync_retry_max: Duration,
    /// After this long without an answer the handshake is reported as failing (it goes on).
    pub handshake_timeout: Duration,
    /// How long a request may wait for its reply.
    pub request_timeout: Duration,
    /// How long an apply may wait for its reply: the agent answers once the whole generation is
    /// in place (users, files, network), which on a slow guest takes far longer than a query.
    pub apply_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// After an apply failed, how long until it is tried again.
    pub retry_failed: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            sync_retry: Duration::from_millis(1000),
            sync_retry_max: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            apply_timeout: Duration::from_secs(120),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            retry_failed: Duration::from_secs(30),
        }
    }
}

/// Where a channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting before (re)connecting.
    Backoff,
    /// Connecting to the socket.
    Connecting,
    /// Connected, repeating the resync handshake.
    Handshaking,
    /// Asking which generation is applied.
    Querying,
    /// Waiting for the apply reply.
    Applying,
    /// Asking again to verify.
    Verifying,
    /// The wanted generation is applied.
    Configured,
    /// Connected and synchronised, but the store has no (valid) document for this VM.
    NoConfig,
    /// The agent does not implement configuration (e.g. plain qemu-ga).
    Unsupported,
    /// Applying failed; retried later.
    Failed,
}

impl Phase {
    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Backoff => "backoff",
            Phase::Connecting => "connecting",
            Phase::Handshaking => "handshaking",
            Phase::Querying => "querying",
            Phase::Applying => "applying",
            Phase::Verifying => "verifying",
            Phase::Configured => "configured",
            Phase::NoConfig => "no-config",
            Phase::Unsupported => "unsupported",
            Phase::Failed => "failed",
        }
    }
}

/// What the store wants for this VM.
#[derive(Debug, Clone, PartialEq)]
pub enum Desired {
    /// Deliver this document.
    Doc(Arc<Document>),
    /// Nothing to deliver, with why (missing or invalid document).
    Nothing(String),
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The connection is up.
    Connected,
    /// Connecting failed; `retryable` for ENOENT/ECONNREFUSED (QEMU not there yet).
    ConnectFailed {
        /// Whether the failure is the expected "not yet".
        retryable: bool,
        /// The error.
        error: String,
    },
    /// The connection ended (EOF, reset, write error).
    Closed(String),
    /// The deadline passed.
    Timer,
    /// The store's answer for this VM changed.
    Desired(Desired),
    /// The guest asked for its configuration again (allowed by policy).
    Redeliver,
}

/// Something to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Connect to the socket; report with `Connected` / `ConnectFailed`.
    Connect,
    /// Write these bytes.
    Send(Vec<u8>),
    /// Close the connection (a `Connect` follows later).
    Disconnect,
    /// A guest-originated request, for the policy.
    GuestRequest {
        /// Its name (sanitised).
        name: String,
        /// Its data.
        data: Value,
    },
    /// The guest reported its state (OS, addresses, memory): a claim to keep and show, not a
    /// request.
    GuestState(Value),
    /// A line for the log: event name and fields.
    Log(&'static str, Vec<(&'static str, Value)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Ask for guest-state events (answered or not, the machine goes on).
    Subscribe,
    Query,
    Apply,
    Verify,
}

/// Counters of one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Connections made.
    pub connects: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Sync requests sent.
    pub syncs_sent: u64,
    /// Documents delivered (apply requests answered with success).
    pub deliveries: u64,
    /// Frames ignored (echo, stale replies, unknown shapes, invalid JSON).
    pub ignored_frames: u64,
    /// Frames over the size/nesting bound.
    pub oversize_frames: u64,
    /// Log lines about this channel dropped by its rate limit ([`crate::log::ChannelLog`]);
    /// the machine leaves it at 0, the driver fills it in.
    pub log_suppressed: u64,
}

/// The state machine of one channel.
#[derive(Debug)]
pub struct Machine {
    timing: Timing,
    phase: Phase,
    deadline: Option<Instant>,
    connected: bool,
    desired: Desired,
    session: HostSession,
    /// What the outstanding request (the session's pending id) is for.
    purpose: Option<Purpose>,
    hs_started: Option<Instant>,
    sync_interval: Duration,
    backoff: Duration,
    /// The generation the agent last reported applied.
    pub applied_generation: Option<u64>,
    /// The instance id the agent last reported applied.
    pub applied_instance: Option<String>,
    /// When the last handshake completed.
    pub last_handshake: Option<SystemTime>,
    /// The last error, if any.
    pub last_error: Option<String>,
    connects: u64,
    deliveries: u64,
    force_apply: bool,
    /// The agent left a subscription unanswered once: do not ask again.
    no_subscribe: bool,
}

impl Machine {
    /// A machine for a channel that should be connected now, speaking through `session` (its
    /// frame bounds and nonce generator are the caller's choice).
    pub fn new(timing: Timing, desired: Desired, session: HostSession) -> Self {
        let backoff = timing.backoff_min;
        let sync_interval = timing.sync_retry;
        Machine {
            timing,
            phase: Phase::Backoff,
            deadline: None,
            connected: false,
            desired,
            session,
            purpose: None,
            hs_started: None,
            sync_interval,
            backoff,
            applied_generation: None,
            applied_instance: None,
            last_handshake: None,
            last_error: None,
            connects: 0,
            deliveries: 0,
            force_apply: false,
            no_subscribe: false,
        }
    }

    /// The first actions: connect at once.
    pub fn start(&mut self) -> Vec<Action> {
        self.phase = Phase::Connecting;
        self.deadline = None;
        vec![Action::Connect]
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When to feed [`Input::Timer`].
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The generation wanted, if any.
    pub fn desired_generation(&self) -> Option<u64> {
        match &self.desired {
            Desired::Doc(d) => Some(d.generation),
            Desired::Nothing(_) => None,
        }
    }

    /// The instance id wanted, if any.
    pub fn desired_instance(&self) -> Option<&str> {
        match &self.desired {
            Desired::Doc(d) => Some(&d.instance_id),
            Desired::Nothing(_) => None,
        }
    }

    /// The nonce of the current handshake (tests, diagnostics).
    pub fn nonce(&self) -> u64 {
        self.session.nonce().unwrap_or(0)
    }

    /// The channel's counters.
    pub fn counters(&self) -> Counters {
        let c = self.session.counters();
        Counters {
            connects: self.connects,
            handshakes: c.handshakes,
            syncs_sent: c.syncs_sent,
            deliveries: self.deliveries,
            ignored_frames: c.ignored_frames,
            oversize_frames: c.oversize_frames,
            log_suppressed: 0,
        }
    }

    /// Does what the agent reported match `doc`? (The instance id is compared when reported.)
    fn is_applied(&self, doc: &Document) -> bool {
        self.applied_generation == Some(doc.generation)
            && self
                .applied_instance
                .as_deref()
                .is_none_or(|i| i == doc.instance_id)
    }

    fn record_applied(&mut self, v: &Value) {
        let (iid, gen) = wire::reply_applied(v);
        self.applied_instance = iid;
        self.applied_generation = gen;
    }

    fn send_sync(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.purpose = None;
        self.deadline = Some(now + self.sync_interval);
        out.push(Action::Send(self.session.begin_sync()));
    }

    fn begin_handshake(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.phase = Phase::Handshaking;
        self.hs_started = Some(now);
        self.sync_interval = self.timing.sync_retry;
        self.send_sync(now, out);
    }

    fn request(
        &mut self,
        now: Instant,
        purpose: Purpose,
        execute: &str,
        args: Option<&Value>,
        out: &mut Vec<Action>,
    ) {
        let (_id, bytes) = self.session.request(execute, args);
        self.purpose = Some(purpose);
        self.deadline = Some(
            now + if purpose == Purpose::Apply {
                self.timing.apply_timeout
            } else {
                self.timing.request_timeout
            },
        );
        out.push(Action::Send(bytes));
    }

    fn query(&mut self, now: Instant, purpose: Purpose, out: &mut Vec<Action>) {
        self.phase = if purpose == Purpose::Verify {
            Phase::Verifying
        } else {
            Phase::Querying
        };
        self.request(now, purpose, commands::GET_CONFIG_GENERATION, None, out);
    }

    /// Synchronised and idle: decide what to do about the wanted document.
    fn settle(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.desired.clone() {
            Desired::Nothing(why) => {
                self.phase = Phase::NoConfig;
                self.deadline = None;
                self.last_error = Some(why);
            }
            Desired::Doc(doc) => {
                if self.is_applied(&doc) && !self.force_apply {
                    self.phase = Phase::Configured;
                    self.deadline = None;
                    self.last_error = None;
                } else {
                    self.force_apply = false;
                    self.phase = Phase::Applying;
                    let args = json!({ "config": doc.value });
                    self.request(
                        now,
                        Purpose::Apply,
                        commands::APPLY_CONFIG,
                        Some(&args),
                        out,
                    );
                }
            }
        }
    }

    fn go_backoff(&mut self, now: Instant, error: String, out: &mut Vec<Action>) {
        if self.connected {
            self.connected = false;
            out.push(Action::Disconnect);
        }
        self.session.reset();
        self.purpose = None;
        self.phase = Phase::Backoff;
        self.last_error = Some(error);
        self.deadline = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(self.timing.backoff_max);
    }

    fn on_reply(&mut self, now: Instant, result: Result<Value, AgentError>, out: &mut Vec<Action>) {
        let Some(purpose) = self.purpose.take() else {
            return;
        };
        match (purpose, result) {
            (Purpose::Subscribe, _) => self.after_subscribe(now, out),
            (Purpose::Query, Ok(v)) => {
                self.record_applied(&v);
                self.settle(now, out);
            }
            (Purpose::Query, Err(e)) => {
                self.phase = Phase::Unsupported;
                self.deadline = None;
                self.last_error = Some(format!(
                    "agent cannot report a configuration generation ({e})"
                ));
                out.push(Action::Log(
                    "agent-unsupported",
                    vec![("error", e.to_string().into())],
                ));
            }
            (Purpose::Apply, Ok(_)) => {
                self.deliveries += 1;
                self.query(now, Purpose::Verify, out);
            }
            (Purpose::Apply, Err(e)) => self.fail(now, format!("apply failed: {e}"), out),
            (Purpose::Verify, Ok(v)) => {
                self.record_applied(&v);
                let got = self.applied_generation;
                let want = self.desired_generation();
                let ok = match &self.desired {
                    Desired::Doc(d) => self.is_applied(d),
                    Desired::Nothing(_) => true,
                };
                if ok {
                    if got.is_some() {
                        out.push(Action::Log("configured", vec![("generation", json!(got))]));
                    }
                    self.settle(now, out);
                } else {
                    self.fail(
                        now,
                        format!(
                            "agent reports generation {} after applying {}",
                            got.map_or("none".to_string(), |g| g.to_string()),
                            want.unwrap_or(0)
                        ),
                        out,
                    );
                }
            }
            (Purpose::Verify, Err(e)) => self.fail(now, format!("verify failed: {e}"), out),
        }
    }

    /// In sync and subscribed (or refused): on to the configuration.
    fn after_subscribe(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.desired {
            Desired::Doc(_) => self.query(now, Purpose::Query, out),
            Desired::Nothing(_) => self.settle(now, out),
        }
    }

    fn fail(&mut self, now: Instant, error: String, out: &mut Vec<Action>) {
        out.push(Action::Log(
            "apply-failed",
            vec![("error", error.clone().into())],
        ));
        self.phase = Phase::Failed;
        self.last_error = Some(error);
        self.deadline = Some(now + self.timing.retry_failed);
    }

    /// Feed bytes read from the channel at time `now`; returns what to do, in order.
    pub fn feed(&mut self, now: Instant, data: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        for ev in self.session.feed(data) {
            match ev {
                HostEvent::Synced => {
                    self.last_handshake = Some(SystemTime::now());
                    self.backoff = self.timing.backoff_min;
                    self.hs_started = None;
                    out.push(Action::Log(
                        "handshake",
                        vec![("syncs", json!(self.session.counters().syncs_sent))],
                    ));
                    // First ask the agent to report its state on this channel (qemu-ga and
                    // older agents refuse: that changes nothing).
                    self.phase = Phase::Querying;
                    if self.no_subscribe {
                        self.after_subscribe(now, &mut out);
                    } else {
                        self.request(
                            now,
                            Purpose::Subscribe,
                            qga::XENPLUG_SUBSCRIBE_GUEST_STATE,
                            None,
                            &mut out,
                        );
                    }
                }
                HostEvent::Reply { result, .. } => self.on_reply(now, result, &mut out),
                HostEvent::GuestEvent { name, data } if name == qga::GUEST_STATE_EVENT => {
                    out.push(Action::GuestState(data));
                }
                HostEvent::GuestEvent { name, data } => {
                    out.push(Action::GuestRequest { name, data });
                }
                HostEvent::Oversize => {
                    out.push(Action::Log(
                        "oversize-frame",
                        vec![("max_frame", json!(self.session.limits().max_frame))],
                    ));
                    if self.purpose.is_some() {
                        // The awaited reply may have been that frame: start over cleanly.
                        self.last_error =
                            Some("guest sent a frame over the size/nesting bound".into());
                        self.begin_handshake(now, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Feed one input at time `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Connected => {
                self.connected = true;
                self.connects += 1;
                self.session.reset();
                self.begin_handshake(now, &mut out);
            }
            Input::ConnectFailed { retryable, error } => {
                self.connected = false;
                if !retryable {
                    self.backoff = self.timing.backoff_max;
                }
                self.go_backoff(now, format!("connect: {error}"), &mut out);
            }
            Input::Closed(why) => {
                self.connected = false;
                self.go_backoff(now, format!("connection closed: {why}"), &mut out);
            }
            Input::Timer => match self.phase {
                Phase::Backoff => {
                    self.phase = Phase::Connecting;
                    self.deadline = None;
                    out.push(Action::Connect);
                }
                Phase::Handshaking => {
                    let waited = self
                        .hs_started
                        .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                    if waited >= self.timing.handshake_timeout {
                        let msg = format!(
                            "no answer to the handshake for {}s ({} tries)",
                            waited.as_secs(),
                            self.session.counters().syncs_sent
                        );
                        if self.last_error.as_deref() != Some(&msg) {
                            self.last_error = Some(msg);
                        }
                        self.sync_interval =
                            (self.sync_interval * 2).min(self.timing.sync_retry_max);
                    }
                    self.send_sync(now, &mut out);
                }
                Phase::Querying | Phase::Applying | Phase::Verifying => {
                    let what = match (self.phase, self.purpose) {
                        (Phase::Applying, _) => "apply",
                        (_, Some(Purpose::Subscribe)) => {
                            // An agent that leaves it unanswered is not asked again.
                            self.no_subscribe = true;
                            "guest-state subscription"
                        }
                        _ => "generation query",
                    };
                    let waited = if self.phase == Phase::Applying {
                        self.timing.apply_timeout
                    } else {
                        self.timing.request_timeout
                    };
                    self.last_error = Some(format!(
                        "no reply to the {what} within {}s",
                        waited.as_secs()
                    ));
                    out.push(Action::Log(
                        "request-timeout",
                        vec![("request", what.into())],
                    ));
                    self.begin_handshake(now, &mut out);
                }
                Phase::Failed => {
                    if self.connected {
                        self.begin_handshake(now, &mut out);
                    }
                }
                _ => self.deadline = None,
            },
            Input::Desired(d) => {
                let changed = d != self.desired;
                self.desired = d;
                if changed && self.connected {
                    match self.phase {
                        Phase::Configured | Phase::NoConfig | Phase::Failed => {
                            if let Desired::Doc(doc) = &self.desired {
                                if self.is_applied(doc) {
                                    out.push(Action::Log(
                                        "generation-unchanged",
                                        vec![("generation", json!(doc.generation))],
                                    ));
                                }
                            }
                            self.query(now, Purpose::Query, &mut out);
                        }
                        // Mid-request: the reply path ends in `settle`, which sees the new one.
                        _ => {}
                    }
                }
            }
            Input::Redeliver => {
                self.force_apply = true;
                if self.connected && matches!(self.phase, Phase::Configured | Phase::Failed) {
                    self.settle(now, &mut out);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc;
    use xenplug_channel::host::{default_limits, Nonces};

    fn sess(seed: u64) -> HostSession {
        HostSession::new(default_limits(), Nonces::from_seed(seed))
    }

    fn doc(g: u64) -> Desired {
        Desired::Doc(Arc::new(
            doc::from_value(json!({"instance-id": "i-1", "generation": g, "hostname": "h"}))
                .unwrap(),
        ))
    }

    fn sent(actions: &[Action]) -> Vec<Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(b) => {
                    let b = b.strip_prefix(&[0xFF]).unwrap_or(b);
                    Some(serde_json::from_slice(b).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    fn frame(m: &mut Machine, now: Instant, s: &str) -> Vec<Action> {
        m.feed(now, s.as_bytes())
    }

    #[test]
    fn other_instance_is_not_applied() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(2), sess(5));
        let a = synced(&mut m, t0);
        let id = sent(&a)[0]["id"].clone();
        // Same generation, but another instance (a VM cloned from a configured template).
        let a = frame(
            &mut m,
            t0,
            &format!(
                "{{\"return\": {{\"instance-id\": \"tmpl\", \"generation\": 2}}, \"id\": {id}}}"
            ),
        );
        assert_eq!(m.phase(), Phase::Applying);
        assert_eq!(sent(&a)[0]["execute"], commands::APPLY_CONFIG);
    }

    fn synced(m: &mut Machine, now: Instant) -> Vec<Action> {
        assert_eq!(m.start(), vec![Action::Connect]);
        let a = m.handle(now, Input::Connected);
        let s = sent(&a);
        assert_eq!(s[0]["execute"], "guest-sync-delimited");
        let nonce = m.nonce();
        assert_eq!(s[0]["arguments"]["id"], nonce);
        let a = frame(m, now, &format!("{{\"return\": {nonce}}}"));
        subscribed(m, now, a)
    }

    /// Answer the subscription that follows every handshake; the actions after it.
    fn subscribed(m: &mut Machine, now: Instant, a: Vec<Action>) -> Vec<Action> {
        let s = &sent(&a)[0];
        assert_eq!(s["execute"], qga::XENPLUG_SUBSCRIBE_GUEST_STATE);
        frame(
            m,
            now,
            &format!("{{\"return\": {{}}, \"id\": {}}}", s["id"]),
        )
    }

    #[test]
    fn full_delivery() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(4), sess(7));
        let a = synced(&mut m, t0);
        assert_eq!(m.phase(), Phase::Querying);
        let q = &sent(&a)[0];
        assert_eq!(q["execute"], commands::GET_CONFIG_GENERATION);
        let a = frame(
            &mut m,
            t0,
            &format!(
                "{{\"return\": {{\"generation\": null}}, \"id\": {}}}",
                q["id"]
            ),
        );
        assert_eq!(m.phase(), Phase::Applying);
        let ap = &sent(&a)[0];
        assert_eq!(ap["execute"], commands::APPLY_CONFIG);
        assert_eq!(ap["arguments"]["config"]["generation"], 4);
        let a = frame(
            &mut m,
            t0,
            &format!("{{\"return\": {{}}, \"id\": {}}}", ap["id"]),
        );
        assert_eq!(m.phase(), Phase::Verifying);
        let v = &sent(&a)[0];
        frame(
            &mut m,
            t0,
            &format!("{{\"return\": {{\"generation\": 4}}, \"id\": {}}}", v["id"]),
        );
        assert_eq!(m.phase(), Phase::Configured);
        assert_eq!(m.applied_generation, Some(4));
        assert_eq!(m.counters().deliveries, 1);
        assert!(m.last_handshake.is_some());
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn already_applied_is_not_resent() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(2), sess(1));
        let a = synced(&mut m, t0);
        let q = &sent(&a)[0];
        let a = frame(
            &mut m,
            t0,
            &format!("{{\"return\": {{\"generation\": 2}}, \"id\": {}}}", q["id"]),
        );
        assert!(sent(&a).is_empty());
        assert_eq!(m.phase(), Phase::Configured);
    }

    #[test]
    fn handshake_ignores_echo_stale_and_wrong_nonce_and_retries() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(1), sess(3));
        m.start();
        let a = m.handle(t0, Input::Connected);
        let first = sent(&a)[0]["arguments"]["id"].as_u64().unwrap();
        // The tty echoes our request, old output arrives, a stale reply to an old nonce.
        let echoed =
            format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{first}}}}}");
        assert!(frame(&mut m, t0, &echoed).is_empty());
        assert!(frame(&mut m, t0, "{\"return\": 12345}").is_empty());
        assert!(frame(
            &mut m,
            t0,
            "{\"error\":{\"class\":\"GenericError\",\"desc\":\"stray\"}}"
        )
        .is_empty());
        assert_eq!(m.phase(), Phase::Handshaking);
        assert_eq!(m.counters().ignored_frames, 3);
        // No answer: a new sync with a new nonce; the old nonce no longer counts.
        let a = m.handle(t0 + Duration::from_secs(1), Input::Timer);
        let second = sent(&a)[0]["arguments"]["id"].as_u64().unwrap();
        assert_ne!(first, second);
        frame(&mut m, t0, &format!("{{\"return\": {first}}}"));
        assert_eq!(m.phase(), Phase::Handshaking);
        let a = frame(&mut m, t0, &format!("{{\"return\": {second}}}"));
        assert_eq!(m.phase(), Phase::Querying);
        // qemu-ga refuses the subscription: the machine goes on to the generation query.
        let id = sent(&a)[0]["id"].clone();
        let a = frame(
            &mut m,
            t0,
            &format!(
                "{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"x\"}}, \"id\": {id}}}"
            ),
        );
        assert_eq!(sent(&a)[0]["execute"], commands::GET_CONFIG_GENERATION);
    }

    #[test]
    fn handshake_timeout_is_reported_and_backs_off() {
        let timing = Timing {
            handshake_timeout: Duration::from_secs(3),
            ..Timing::default()
        };
        let t0 = Instant::now();
        let mut m = Machine::new(timing, doc(1), sess(3));
        m.start();
        m.handle(t0, Input::Connected);
        let mut t = t0;
        for _ in 0..6 {
            t = m.deadline().unwrap();
            m.handle(t, Input::Timer);
        }
        assert_eq!(m.phase(), Phase::Handshaking);
        assert!(m
            .last_error
            .as_deref()
            .unwrap()
            .contains("no answer to the handshake"));
        let gap = m.deadline().unwrap() - t;
        assert!(gap > Duration::from_secs(1), "retry interval grew: {gap:?}");
    }

    #[test]
    fn connect_backoff_grows_and_resets() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(1), sess(3));
        m.start();
        let mut gaps = Vec::new();
        for _ in 0..8 {
            m.handle(
                t0,
                Input::ConnectFailed {
                    retryable: true,
                    error: "ENOENT".into(),
                },
            );
            assert_eq!(m.phase(), Phase::Backoff);
            gaps.push(m.deadline().unwrap() - t0);
            assert_eq!(m.handle(t0, Input::Timer), vec![Action::Connect]);
        }
        assert_eq!(gaps[0], Duration::from_millis(100));
        assert_eq!(gaps[1], Duration::from_millis(200));
        assert_eq!(*gaps.last().unwrap(), Duration::from_secs(5));
        synced(&mut Machine::new(Timing::default(), doc(1), sess(3)), t0);
        m.handle(t0, Input::Connected);
        let n = m.nonce();
        let a = frame(&mut m, t0, &format!("{{\"return\": {n}}}"));
        subscribed(&mut m, t0, a);
        m.handle(t0, Input::Closed("EOF".into()));
        assert_eq!(m.deadline().unwrap() - t0, Duration::from_millis(100));
    }

    #[test]
    fn stale_reply_ids_are_ignored_and_timeouts_resync() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(5), sess(9));
        let a = synced(&mut m, t0);
        let id = sent(&a)[0]["id"].as_u64().unwrap();
        assert!(frame(
            &mut m,
            t0,
            &format!(
                "{{\"return\": {{\"generation\": 5}}, \"id\": {}}}",
                id + 100
            )
        )
        .is_empty());
        assert_eq!(m.phase(), Phase::Querying);
        let a = m.handle(t0 + Duration::from_secs(11), Input::Timer);
        assert_eq!(m.phase(), Phase::Handshaking);
        assert_eq!(sent(&a)[0]["execute"], "guest-sync-delimited");
        assert!(m.last_error.as_deref().unwrap().contains("no reply"));
    }

    #[test]
    fn an_apply_waits_for_its_own_deadline_not_a_querys() {
        let t0 = Instant::now();
        let timing = Timing::default();
        let mut m = Machine::new(timing.clone(), doc(3), sess(11));
        let a = synced(&mut m, t0);
        let q = &sent(&a)[0];
        let a = frame(
            &mut m,
            t0,
            &format!(
                "{{\"return\": {{\"generation\": null}}, \"id\": {}}}",
                q["id"]
            ),
        );
        assert_eq!(sent(&a)[0]["execute"], commands::APPLY_CONFIG);
        // A slow guest is still applying when a query would have timed out.
        assert_eq!(m.deadline(), Some(t0 + timing.apply_timeout));
        assert!(timing.apply_timeout > timing.request_timeout * 6);
        let past_query = t0 + timing.request_timeout + Duration::from_secs(1);
        assert!(m.deadline().unwrap() > past_query);
        // Its reply settles it; the verify that follows has a query's deadline.
        let ap = sent(&a)[0]["id"].clone();
        let a = frame(
            &mut m,
            past_query,
            &format!("{{\"return\": {{}}, \"id\": {ap}}}"),
        );
        assert_eq!(m.phase(), Phase::Verifying);
        assert_eq!(m.deadline(), Some(past_query + timing.request_timeout));
        let v = &sent(&a)[0];
        frame(
            &mut m,
            past_query,
            &format!("{{\"return\": {{\"generation\": 3}}, \"id\": {}}}", v["id"]),
        );
        assert_eq!(m.phase(), Phase::Configured);
        assert_eq!(m.counters().deliveries, 1);

        // An apply never answered: back to the handshake at the apply deadline, saying so.
        let mut m = Machine::new(timing.clone(), doc(3), sess(12));
        let a = synced(&mut m, t0);
        let q = &sent(&a)[0];
        frame(
            &mut m,
            t0,
            &format!("{{\"return\": {{\"generation\": 1}}, \"id\": {}}}", q["id"]),
        );
        assert_eq!(m.phase(), Phase::Applying);
        let a = m.handle(m.deadline().unwrap(), Input::Timer);
        assert_eq!(m.phase(), Phase::Handshaking);
        assert_eq!(sent(&a)[0]["execute"], "guest-sync-delimited");
        assert_eq!(
            m.last_error.as_deref(),
            Some("no reply to the apply within 120s")
        );
    }

    #[test]
    fn qemu_ga_without_our_commands_is_unsupported() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(1), sess(9));
        synced(&mut m, t0);
        frame(&mut m, t0, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command xenplug-get-config-generation has not been found\"}}");
        assert_eq!(m.phase(), Phase::Unsupported);
        assert!(m.last_error.as_deref().unwrap().contains("CommandNotFound"));
    }

    #[test]
    fn document_change_redelivers_and_failed_apply_retries() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(1), sess(9));
        let a = synced(&mut m, t0);
        let id = sent(&a)[0]["id"].clone();
        frame(
            &mut m,
            t0,
            &format!("{{\"return\": {{\"generation\": 1}}, \"id\": {id}}}"),
        );
        assert_eq!(m.phase(), Phase::Configured);
        let a = m.handle(t0, Input::Desired(doc(2)));
        assert_eq!(m.phase(), Phase::Querying);
        let id = sent(&a)[0]["id"].clone();
        let a = frame(
            &mut m,
            t0,
            &format!("{{\"return\": {{\"generation\": 1}}, \"id\": {id}}}"),
        );
        let id = sent(&a)[0]["id"].clone();
        frame(&mut m, t0, &format!("{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"disk full\"}}, \"id\": {id}}}"));
        assert_eq!(m.phase(), Phase::Failed);
        assert!(m.last_error.as_deref().unwrap().contains("disk full"));
        let a = m.handle(m.deadline().unwrap(), Input::Timer);
        assert_eq!(m.phase(), Phase::Handshaking);
        assert_eq!(sent(&a).len(), 1);
        // The store loses the document: nothing to do, said so.
        let n = m.nonce();
        m.handle(t0, Input::Desired(Desired::Nothing("no document".into())));
        let a = frame(&mut m, t0, &format!("{{\"return\": {n}}}"));
        subscribed(&mut m, t0, a);
        assert_eq!(m.phase(), Phase::NoConfig);
        assert_eq!(m.last_error.as_deref(), Some("no document"));
    }

    #[test]
    fn an_unanswered_subscription_is_not_asked_again() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(1), sess(4));
        m.start();
        m.handle(t0, Input::Connected);
        let n = m.nonce();
        let a = frame(&mut m, t0, &format!("{{\"return\": {n}}}"));
        assert_eq!(sent(&a)[0]["execute"], qga::XENPLUG_SUBSCRIBE_GUEST_STATE);
        // Nothing comes back: the request times out, the machine resynchronises…
        let a = m.handle(t0 + Duration::from_secs(11), Input::Timer);
        assert_eq!(sent(&a)[0]["execute"], "guest-sync-delimited");
        let n = m.nonce();
        // …and goes straight on to the configuration.
        let a = frame(&mut m, t0, &format!("{{\"return\": {n}}}"));
        assert_eq!(sent(&a)[0]["execute"], commands::GET_CONFIG_GENERATION);
    }

    #[test]
    fn verify_mismatch_fails() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(3), sess(9));
        let a = synced(&mut m, t0);
        let id = sent(&a)[0]["id"].clone();
        let a = frame(
            &mut m,
            t0,
            &format!("{{\"return\": {{\"generation\": 1}}, \"id\": {id}}}"),
        );
        let id = sent(&a)[0]["id"].clone();
        let a = frame(&mut m, t0, &format!("{{\"return\": {{}}, \"id\": {id}}}"));
        let id = sent(&a)[0]["id"].clone();
        frame(
            &mut m,
            t0,
            &format!("{{\"return\": {{\"generation\": 1}}, \"id\": {id}}}"),
        );
        assert_eq!(m.phase(), Phase::Failed);
        assert!(m
            .last_error
            .as_deref()
            .unwrap()
            .contains("generation 1 after applying 3"));
    }

    #[test]
    fn guest_events_and_oversize() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), doc(1), sess(9));
        let a = synced(&mut m, t0);
        let id = sent(&a)[0]["id"].clone();
        frame(
            &mut m,
            t0,
            &format!("{{\"return\": {{\"generation\": 1}}, \"id\": {id}}}"),
        );
        let a = frame(&mut m, t0, "{\"event\": \"x\", \"data\": {\"k\": 1}}");
        assert_eq!(
            a,
            vec![Action::GuestRequest {
                name: "x".into(),
                data: json!({"k": 1})
            }]
        );
        // A state report is not a request: it goes around the policy.
        let a = frame(
            &mut m,
            t0,
            "{\"event\": \"xenplug-guest-state\", \"data\": {\"os-name\": \"D\"}}",
        );
        assert_eq!(a, vec![Action::GuestState(json!({"os-name": "D"}))]);
        // Redelivery requested (policy allowed it): apply even though the generation matches.
        let a = m.handle(t0, Input::Redeliver);
        assert_eq!(sent(&a)[0]["execute"], commands::APPLY_CONFIG);
        // An oversize frame while a reply is awaited: resynchronise.
        let big = format!("{{\"return\": \"{}\"}}", "x".repeat(70 * 1024));
        let a = m.feed(t0, big.as_bytes());
        assert_eq!(m.phase(), Phase::Handshaking);
        assert_eq!(sent(&a)[0]["execute"], "guest-sync-delimited");
        assert_eq!(m.counters().oversize_frames, 1);
    }
}
