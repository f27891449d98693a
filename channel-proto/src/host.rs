//! The host (dom0) side of a session, free of I/O: the one implementation of the handshake and
//! of reply matching, used by `xenplug-peer send`/`query`, by the peer daemon's per-channel state
//! machine and by the tests that play dom0.
//!
//! A [`HostSession`] turns what the host wants to say into bytes and what comes back into
//! [`HostEvent`]s:
//!
//! * [`HostSession::begin_sync`] starts (or restarts) the handshake: `0xFF` +
//!   `guest-sync-delimited` with a fresh nonce from the session's own [`Nonces`]. Until the reply
//!   carrying that nonce arrives, *everything* is dropped and counted: the tty's echo of our own
//!   requests, stale replies from an earlier session still buffered in QEMU, error replies to
//!   fragments, garbage.
//! * [`HostSession::request`] encodes a request with a fresh `id`. Requests go one at a time;
//!   the reply carrying that id (or carrying no id: the stream was resynchronised, so an id-less
//!   reply can only be ours) is delivered as [`HostEvent::Reply`], any other reply is stale.
//! * Guest-originated events (`{"event": NAME, "data": …}`) are delivered once in sync.
//!
//! The guest is untrusted: the decoder holds at most [`Limits::max_frame`] bytes of one frame
//! ([`DEFAULT_MAX_FRAME`] unless the caller chooses otherwise), every guest string that is kept
//! goes through [`sanitize`].

use serde_json::{Map, Value};

use crate::frame::{Decoder, Event, Limits};
use crate::message::{ErrorBody, Message, Request, Response};
use crate::qga::{SyncArgs, GUEST_SYNC_DELIMITED};

/// The host's default bound on one guest frame (64 KiB). Every reply a peer waits for when it
/// delivers configuration or checks liveness is far smaller; the daemon keeps one partial frame
/// per VM, so this bound times the number of VMs is its worst-case buffer use. One-shot queries
/// whose replies are large by nature (file contents, long lists) raise it explicitly.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// The host's default frame bounds: [`DEFAULT_MAX_FRAME`] bytes, nesting 32.
pub fn default_limits() -> Limits {
    Limits {
        max_frame: DEFAULT_MAX_FRAME,
        max_depth: 32,
    }
}

/// Longest guest-supplied string a host keeps (error descriptions, event names, log text).
pub const MAX_GUEST_STRING: usize = 512;

/// Make a guest-supplied string safe to log and display: control characters replaced, length
/// capped (on a character boundary, marked with `…`).
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_GUEST_STRING));
    for c in s.chars() {
        if out.len() + c.len_utf8() > MAX_GUEST_STRING {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '\u{fffd}' } else { c });
    }
    out
}

/// Handshake nonces: xorshift64* over a seed. They must be unpredictable to a stale buffer and
/// differ between sessions and channels, not be cryptographic. Every value is in
/// `1..2^53`, so any JSON implementation keeps it exact.
#[derive(Debug, Clone)]
pub struct Nonces(u64);

impl Nonces {
    /// A generator from an explicit seed (tests).
    pub fn from_seed(seed: u64) -> Self {
        Nonces(seed | 1)
    }

    /// A generator seeded from the clock, the process id and `salt` (e.g. the channel's domid
    /// and devid), so concurrent sessions and restarted processes do not repeat each other.
    pub fn seeded(salt: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self::from_seed(
            t ^ (u64::from(std::process::id()) << 20)
                ^ salt.rotate_left(32)
                ^ 0x9e37_79b9_7f4a_7c15,
        )
    }

    /// The next nonce.
    pub fn next_nonce(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11).max(1)
    }
}

/// One decoded object from a guest, sorted by what it can mean to a host.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `{"return": …}` with the `id` it carried, if any.
    Return {
        /// Echoed id.
        id: Option<Value>,
        /// The result.
        value: Value,
    },
    /// `{"error": {…}}` with the `id` it carried, if any (class and description sanitised).
    Error {
        /// Echoed id.
        id: Option<Value>,
        /// The error.
        error: ErrorBody,
    },
    /// A request (`execute`): one of the host's own requests echoed by the tty, never a reply.
    Echo,
    /// A QMP-style event `{"event": NAME, "data": …}`: a guest-originated request.
    Event {
        /// Its name (sanitised).
        name: String,
        /// Its data.
        data: Value,
    },
    /// Anything else (malformed reply, unknown shape).
    Unknown,
}

/// Sort one decoded frame.
pub fn classify(mut obj: Map<String, Value>) -> Incoming {
    if !obj.contains_key("execute") && !obj.contains_key("return") && !obj.contains_key("error") {
        if let Some(Value::String(name)) = obj.get("event") {
            let name = sanitize(name);
            let data = obj.remove("data").unwrap_or(Value::Null);
            return Incoming::Event { name, data };
        }
    }
    match Message::from_object(obj) {
        Ok(Message::Response(Response::Return { value, id })) => Incoming::Return { id, value },
        Ok(Message::Response(Response::Error { error, id })) => Incoming::Error {
            id,
            error: ErrorBody {
                class: sanitize(&error.class),
                desc: sanitize(&error.desc),
            },
        },
        Ok(Message::Request(_)) => Incoming::Echo,
        Err(_) => Incoming::Unknown,
    }
}

/// Parse bytes holding one JSON object and sort it (tests and tools).
pub fn classify_bytes(frame: &[u8]) -> Incoming {
    match serde_json::from_slice::<Value>(frame) {
        Ok(Value::Object(m)) => classify(m),
        _ => Incoming::Unknown,
    }
}

/// `0xFF` + `guest-sync-delimited` with `nonce`.
pub fn encode_sync(nonce: u64) -> Vec<u8> {
    Request::new(GUEST_SYNC_DELIMITED)
        .with_arguments(SyncArgs { id: nonce as i64 })
        .encode_delimited()
}

/// A request carrying `id` (agents echo it in the reply).
pub fn encode_request(execute: &str, arguments: Option<&Value>, id: u64) -> Vec<u8> {
    let mut r = Request::new(execute).with_id(id);
    if let Some(a) = arguments {
        r = r.with_arguments(a);
    }
    r.encode()
}

/// What a [`HostSession`] made of incoming bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum HostEvent {
    /// The reply to the current `guest-sync-delimited` arrived: the session is in sync.
    Synced,
    /// The reply to the outstanding request.
    Reply {
        /// The id the request was sent with.
        id: u64,
        /// Its result (an error's class and description are sanitised).
        result: Result<Value, ErrorBody>,
    },
    /// A guest-originated event (only delivered in sync).
    GuestEvent {
        /// Its name (sanitised).
        name: String,
        /// Its data.
        data: Value,
    },
    /// A frame broke the size or nesting bound; its rest is skipped without being stored. If a
    /// reply was awaited it may have been that frame: the caller should resynchronise.
    Oversize,
}

/// Counters of one session (cumulative across [`HostSession::reset`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostCounters {
    /// Handshakes sent.
    pub syncs_sent: u64,
    /// Handshakes answered.
    pub handshakes: u64,
    /// Frames dropped (echo, stale replies, replies to nothing, unknown shapes, invalid JSON).
    pub ignored_frames: u64,
    /// Frames over the size/nesting bound.
    pub oversize_frames: u64,
    /// Bytes of garbage outside frames.
    pub garbage_bytes: u64,
}

/// The host side of one session; see the module docs.
#[derive(Debug)]
pub struct HostSession {
    decoder: Decoder,
    nonces: Nonces,
    nonce: Option<u64>,
    synced: bool,
    next_id: u64,
    pending: Option<u64>,
    counters: HostCounters,
}

impl HostSession {
    /// A session with the given frame bounds and nonce generator.
    pub fn new(limits: Limits, nonces: Nonces) -> Self {
        HostSession {
            decoder: Decoder::new(limits),
            nonces,
            nonce: None,
            synced: false,
            next_id: 1,
            pending: None,
            counters: HostCounters::default(),
        }
    }

    /// The frame bounds in force.
    pub fn limits(&self) -> Limits {
        self.decoder.limits()
    }

    /// Forget the connection (a new one starts unsynchronised, with a clean decoder). Request
    /// ids keep increasing so a reply to a request of the old connection is never taken for
    /// one of the new.
    pub fn reset(&mut self) {
        self.decoder.reset();
        self.nonce = None;
        self.synced = false;
        self.pending = None;
    }

    /// Start (or restart) the handshake with a fresh nonce; returns the bytes to send. The
    /// session is out of sync (and nothing is pending) until the matching reply arrives.
    pub fn begin_sync(&mut self) -> Vec<u8> {
        let n = self.nonces.next_nonce();
        self.nonce = Some(n);
        self.synced = false;
        self.pending = None;
        self.decoder.reset();
        self.counters.syncs_sent += 1;
        encode_sync(n)
    }

    /// The nonce of the current handshake.
    pub fn nonce(&self) -> Option<u64> {
        self.nonce
    }

    /// True once the current handshake was answered.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The id of the request whose reply is awaited, if any.
    pub fn pending(&self) -> Option<u64> {
        self.pending
    }

    /// Forget the outstanding request (its reply, should it come, is then stale).
    pub fn abandon(&mut self) {
        self.pending = None;
    }

    /// Counters so far.
    pub fn counters(&self) -> &HostCounters {
        &self.counters
    }

    /// Encode a request with a fresh id and await its reply; returns `(id, bytes)`.
    pub fn request(&mut self, execute: &str, arguments: Option<&Value>) -> (u64, Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending = Some(id);
        (id, encode_request(execute, arguments, id))
    }

    /// Feed bytes read from the channel.
    pub fn feed(&mut self, data: &[u8]) -> Vec<HostEvent> {
        let mut out = Vec::new();
        for ev in self.decoder.feed(data) {
            match ev {
                Event::Frame(obj) => self.on_frame(classify(obj), &mut out),
                Event::Resync => {}
                Event::Garbage { bytes, .. } => self.counters.garbage_bytes += bytes as u64,
                Event::Invalid { .. } => self.counters.ignored_frames += 1,
                Event::TooLarge | Event::TooDeep => {
                    self.counters.oversize_frames += 1;
                    out.push(HostEvent::Oversize);
                }
            }
        }
        out
    }

    fn on_frame(&mut self, inc: Incoming, out: &mut Vec<HostEvent>) {
        if !self.synced {
            match (&inc, self.nonce) {
                (Incoming::Return { value, .. }, Some(n)) if value.as_u64() == Some(n) => {
                    self.synced = true;
                    self.counters.handshakes += 1;
                    out.push(HostEvent::Synced);
                }
                _ => self.counters.ignored_frames += 1,
            }
            return;
        }
        let (id, result) = match inc {
            Incoming::Return { id, value } => (id, Ok(value)),
            Incoming::Error { id, error } => (id, Err(error)),
            Incoming::Event { name, data } => {
                out.push(HostEvent::GuestEvent { name, data });
                return;
            }
            Incoming::Echo | Incoming::Unknown => {
                self.counters.ignored_frames += 1;
                return;
            }
        };
        let Some(want) = self.pending else {
            self.counters.ignored_frames += 1;
            return;
        };
        // Agents echo `id`; a reply carrying another id is stale. One without an id can only be
        // ours: the stream was resynchronised and requests go one at a time.
        if id.is_some_and(|i| i.as_u64() != Some(want)) {
            self.counters.ignored_frames += 1;
            return;
        }
        self.pending = None;
        out.push(HostEvent::Reply { id: want, result });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session() -> HostSession {
        HostSession::new(default_limits(), Nonces::from_seed(7))
    }

    /// `text` with every `~` replaced by the resync byte.
    fn wire(text: &str) -> Vec<u8> {
        text.bytes()
            .map(|b| if b == b'~' { 0xFF } else { b })
            .collect()
    }

    fn sent(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes.strip_prefix(&[0xFF]).unwrap_or(bytes)).unwrap()
    }

    #[test]
    fn handshake_ignores_echo_stale_and_old_nonces() {
        let mut s = session();
        let first = s.begin_sync();
        let n1 = s.nonce().unwrap();
        assert_eq!(sent(&first)["arguments"]["id"], n1);
        // Echo of our own request, a stale reply of an earlier session, an error reply to a
        // fragment, the start of the old nonce's reply.
        let mut ev = s.feed(&first);
        ev.extend(
            s.feed(b"{\"return\": {}}\r\n{\"error\":{\"class\":\"GenericError\",\"desc\":\"x\"}}"),
        );
        ev.extend(s.feed(&wire(&format!("~{{\"return\": {n1}"))));
        assert!(ev.is_empty(), "{ev:?}");
        let _ = s.begin_sync();
        let n2 = s.nonce().unwrap();
        assert_ne!(n1, n2);
        // The old nonce's reply completes after the restart: its tail is garbage (the decoder
        // was reset), a whole reply with the old nonce is dropped, the new one is accepted.
        let ev = s.feed(&wire(&format!(
            "}}\n~{{\"return\": {n1}}}\n~{{\"return\": {n2}}}\n"
        )));
        assert_eq!(ev, vec![HostEvent::Synced]);
        assert!(s.is_synced());
        assert!(s.counters().ignored_frames >= 4, "{:?}", s.counters());
        assert_eq!(s.counters().syncs_sent, 2);
    }

    #[test]
    fn replies_are_matched_by_id() {
        let mut s = session();
        let _ = s.begin_sync();
        let n = s.nonce().unwrap();
        assert_eq!(
            s.feed(&wire(&format!("~{{\"return\": {n}}}"))),
            vec![HostEvent::Synced]
        );
        // A reply to nothing is stale.
        assert!(s.feed(b"{\"return\": 1, \"id\": 1}").is_empty());
        let (id, bytes) = s.request("guest-ping", None);
        assert_eq!(sent(&bytes), json!({"execute": "guest-ping", "id": id}));
        // Echo, another id, then ours; a second reply to it is stale.
        let mut ev = s.feed(&bytes);
        ev.extend(s.feed(format!("{{\"return\": 5, \"id\": {}}}", id + 10).as_bytes()));
        assert!(ev.is_empty());
        let ev = s.feed(
            format!("{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"n\\u0007o\"}}, \"id\": {id}}}{{\"return\": {{}}, \"id\": {id}}}")
                .as_bytes(),
        );
        assert_eq!(
            ev,
            vec![HostEvent::Reply {
                id,
                result: Err(ErrorBody {
                    class: "CommandNotFound".into(),
                    desc: "n\u{fffd}o".into()
                })
            }]
        );
        // An id-less reply is taken for the outstanding request.
        let (id, _) = s.request("guest-info", None);
        assert_eq!(
            s.feed(b"{\"return\": {\"version\": \"1\"}}"),
            vec![HostEvent::Reply {
                id,
                result: Ok(json!({"version": "1"}))
            }]
        );
        assert_eq!(s.pending(), None);
    }

    #[test]
    fn guest_events_only_in_sync_and_oversize_reported() {
        let mut s = HostSession::new(
            Limits {
                max_frame: 256,
                max_depth: 8,
            },
            Nonces::from_seed(3),
        );
        assert!(s.feed(b"{\"event\": \"x\", \"data\": 1}").is_empty());
        let _ = s.begin_sync();
        let n = s.nonce().unwrap();
        s.feed(&wire(&format!("~{{\"return\": {n}}}")));
        assert_eq!(
            s.feed(b"{\"event\": \"x\\n\", \"data\": {\"k\": 1}}"),
            vec![HostEvent::GuestEvent {
                name: "x\u{fffd}".into(),
                data: json!({"k": 1})
            }]
        );
        let big = format!("{{\"return\": \"{}\"}}{{\"return\": 1}}", "a".repeat(1000));
        let (_id, _) = s.request("guest-ping", None);
        let ev = s.feed(big.as_bytes());
        assert_eq!(ev[0], HostEvent::Oversize);
        assert_eq!(s.counters().oversize_frames, 1);
    }

    #[test]
    fn nonces_differ_and_stay_json_exact() {
        let mut a = Nonces::seeded(1);
        let mut b = Nonces::seeded(2);
        for _ in 0..1000 {
            let (x, y) = (a.next_nonce(), b.next_nonce());
            assert!((1..1 << 53).contains(&x));
            assert_ne!(x, y);
        }
    }

    #[test]
    fn sanitize_caps_and_filters() {
        let s = sanitize(&"é\n".repeat(1000));
        assert!(s.len() <= MAX_GUEST_STRING + 3);
        assert!(!s.contains('\n'));
    }

    #[test]
    fn classify_shapes() {
        assert_eq!(
            classify_bytes(b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":1}}"),
            Incoming::Echo
        );
        assert_eq!(classify_bytes(b"{\"foo\":1}"), Incoming::Unknown);
        assert_eq!(
            classify_bytes(b"{\"return\":1,\"bogus\":2}"),
            Incoming::Unknown
        );
    }
}
