//! The dom0 end of the QGA wire protocol: a thin adapter over the shared `xenplug-channel`
//! crate (framing, `0xFF` resync, bounded decoder, message classification, command names), with
//! what only the host side needs on top: sorting a decoded frame into what it can mean to the
//! peer ([`Incoming`]), nonce and id matching, and sanitising guest strings.
//!
//! Bytes from a guest are untrusted. The decoder never holds more than [`Limits::max_frame`]
//! bytes of one frame nor nests deeper than [`Limits::max_depth`]; `0xFF` drops any partial
//! frame; everything outside an object (echoed bytes, AT commands, CR/LF from a cooked tty, the
//! tail of a torn frame) is skipped.

use serde_json::{Map, Value};
use xenplug_channel::message::{Message, Response};
use xenplug_channel::Request;

pub use xenplug_channel::frame::Limits;

/// Command names (from `xenplug-channel`).
pub mod commands {
    pub use xenplug_channel::qga::{
        GUEST_GET_HOST_NAME, GUEST_GET_OSINFO, GUEST_GET_TIME, GUEST_INFO,
        GUEST_NETWORK_GET_INTERFACES, GUEST_PING, GUEST_SSH_GET_AUTHORIZED_KEYS,
        GUEST_SYNC_DELIMITED,
    };
    /// Apply a configuration document: `{"config": {…}}`.
    pub const APPLY_CONFIG: &str = xenplug_channel::qga::XENPLUG_APPLY_CONFIG;
    /// Which configuration is applied: `{"instance-id": …, "generation": N}` (both absent when
    /// none is).
    pub const GET_CONFIG_GENERATION: &str = xenplug_channel::qga::XENPLUG_GET_CONFIG_GENERATION;
}

/// The peer's default bounds on guest frames: far below the protocol's 1 MiB default, since
/// every reply the peer waits for is small.
pub fn peer_limits() -> Limits {
    Limits {
        max_frame: 64 * 1024,
        max_depth: 32,
    }
}

/// What the decoder found in the byte stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A `0xFF`: any partial frame was dropped; the next object starts clean.
    Resync,
    /// A complete JSON object.
    Frame(Map<String, Value>),
    /// An object broke the size or nesting bound; its rest is skipped without being stored.
    Oversize,
    /// Skipped input: garbage outside objects or a balanced `{…}` that is not JSON.
    Garbage(usize),
}

/// Incremental, bounded splitter of a QGA byte stream (the shared decoder).
#[derive(Debug)]
pub struct Decoder {
    inner: xenplug_channel::Decoder,
    /// Bytes dropped outside frames since creation.
    pub garbage_bytes: u64,
}

impl Decoder {
    /// A decoder with the given bounds.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            inner: xenplug_channel::Decoder::new(limits),
            garbage_bytes: 0,
        }
    }

    /// Forget any partial frame (a new connection starts clean).
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// Feed bytes; every event they complete is passed to `sink` in order.
    pub fn feed(&mut self, data: &[u8], mut sink: impl FnMut(Event)) {
        use xenplug_channel::frame::Event as E;
        for e in self.inner.feed(data) {
            sink(match e {
                E::Frame(m) => Event::Frame(m),
                E::Resync => Event::Resync,
                E::TooLarge | E::TooDeep => Event::Oversize,
                E::Garbage { bytes, .. } => {
                    self.garbage_bytes += bytes as u64;
                    Event::Garbage(bytes)
                }
                E::Invalid { .. } => Event::Garbage(0),
            })
        }
    }
}

/// An error reply from an agent (`{"error": {"class": …, "desc": …}}`), sanitised.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentError {
    /// QMP error class (`GenericError`, `CommandNotFound`, …).
    pub class: String,
    /// Human-readable description (control characters filtered, length capped).
    pub desc: String,
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

/// One decoded object from a guest, sorted by what it can mean to the peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `{"return": …}` with the `id` it carried, if any.
    Return {
        /// Echoed id.
        id: Option<Value>,
        /// The result.
        value: Value,
    },
    /// `{"error": {…}}` with the `id` it carried, if any.
    Error {
        /// Echoed id.
        id: Option<Value>,
        /// The error.
        error: AgentError,
    },
    /// A request (`execute`): one of our own requests echoed by the tty, never a reply.
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

/// Longest guest-supplied string the peer keeps (error descriptions, event names, log text).
pub const MAX_GUEST_STRING: usize = 512;

/// Make a guest-supplied string safe to log and display: control characters replaced, length
/// capped (on a character boundary).
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
            error: AgentError {
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

/// `0xFF` + `guest-sync-delimited` with `nonce`: the handshake, repeated until answered.
pub fn encode_sync(nonce: u64) -> Vec<u8> {
    xenplug_channel::sync_request(nonce as i64)
}

/// A request with an `id` (agents echo it in the reply, so stale replies can be told apart).
pub fn encode_request(execute: &str, arguments: Option<&Value>, id: u64) -> Vec<u8> {
    let mut r = Request::new(execute).with_id(id);
    if let Some(a) = arguments {
        r = r.with_arguments(a);
    }
    r.encode()
}

/// The `return` of a `guest-sync-delimited` answered with `nonce`?
pub fn is_sync_reply(inc: &Incoming, nonce: u64) -> bool {
    matches!(inc, Incoming::Return { value, .. } if value.as_u64() == Some(nonce))
}

/// The applied configuration a reply reports: `(instance-id, generation)`, each `None` when
/// absent.
pub fn reply_applied(value: &Value) -> (Option<String>, Option<u64>) {
    (
        value
            .get("instance-id")
            .and_then(Value::as_str)
            .map(sanitize),
        value.get("generation").and_then(Value::as_u64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(d: &mut Decoder, data: &[u8]) -> Vec<Event> {
        let mut v = Vec::new();
        d.feed(data, |e| v.push(e));
        v
    }

    fn frames(ev: &[Event]) -> Vec<Value> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Frame(m) => Some(Value::Object(m.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn garbage_echo_and_resync() {
        let mut d = Decoder::new(peer_limits());
        let ev = run(
            &mut d,
            b"AT\r\nATZ\r\n{\"return\": 1}\r\n{\"return\": \"torn\xff{\"return\": 7}\n",
        );
        assert_eq!(
            frames(&ev),
            vec![json!({"return": 1}), json!({"return": 7})]
        );
        assert!(ev.contains(&Event::Resync));
        assert_eq!(d.garbage_bytes, 5);
    }

    #[test]
    fn oversize_frame_is_skipped() {
        let mut d = Decoder::new(Limits {
            max_frame: 1024,
            max_depth: 8,
        });
        let mut ev = run(&mut d, b"{\"x\":\"");
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..64 {
            ev.extend(run(&mut d, &chunk));
        }
        ev.extend(run(&mut d, b"\"}{\"return\":1}"));
        assert_eq!(ev.iter().filter(|e| **e == Event::Oversize).count(), 1);
        assert_eq!(frames(&ev), vec![json!({"return": 1})]);
    }

    #[test]
    fn classify_shapes() {
        assert_eq!(
            classify_bytes(b"{\"return\": 5, \"id\": 9}"),
            Incoming::Return {
                id: Some(json!(9)),
                value: json!(5)
            }
        );
        assert!(matches!(
            classify_bytes(b"{\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"no\\u0007pe\"}}"),
            Incoming::Error { error: AgentError { ref class, ref desc }, .. }
                if class == "CommandNotFound" && desc == "no\u{fffd}pe"
        ));
        assert_eq!(
            classify_bytes(b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":1}}"),
            Incoming::Echo
        );
        assert_eq!(
            classify_bytes(b"{\"event\":\"x\",\"data\":{\"a\":1}}"),
            Incoming::Event {
                name: "x".into(),
                data: json!({"a":1})
            }
        );
        assert_eq!(classify_bytes(b"{\"foo\":1}"), Incoming::Unknown);
        assert_eq!(
            classify_bytes(b"{\"return\":1,\"bogus\":2}"),
            Incoming::Unknown
        );
    }

    #[test]
    fn sync_encoding_and_matching() {
        let b = encode_sync(42);
        assert_eq!(b[0], 0xFF);
        let v: Value = serde_json::from_slice(&b[1..]).unwrap();
        assert_eq!(v["execute"], "guest-sync-delimited");
        assert_eq!(v["arguments"]["id"], 42);
        assert!(is_sync_reply(&classify_bytes(b"{\"return\": 42}"), 42));
        assert!(!is_sync_reply(&classify_bytes(b"{\"return\": 41}"), 42));
        let r: Value = serde_json::from_slice(&encode_request("guest-ping", None, 7)).unwrap();
        assert_eq!(r, json!({"execute": "guest-ping", "id": 7}));
    }

    #[test]
    fn sanitize_caps_and_filters() {
        let s = sanitize(&"é\n".repeat(1000));
        assert!(s.len() <= MAX_GUEST_STRING + 3);
        assert!(!s.contains('\n'));
    }
}
