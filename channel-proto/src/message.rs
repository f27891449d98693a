//! QMP-style messages: requests (`execute`/`arguments`/`id`) and replies (`return` or
//! `error{class,desc}`, with `id` echoed).
//!
//! The two directions are told apart by their members, so an echoed request can never be taken
//! for a reply: [`Message::from_object`] classifies a decoded frame.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::frame::RESYNC_BYTE;

/// QMP error classes used by qemu-ga and by xenplug-agent.
pub mod class {
    /// Any failure that has no more specific class (bad arguments, I/O errors, …).
    pub const GENERIC_ERROR: &str = "GenericError";
    /// The `execute` names no command this agent knows.
    pub const COMMAND_NOT_FOUND: &str = "CommandNotFound";
}

/// A request from the host side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The command name.
    pub execute: String,
    /// The command's arguments (absent when it takes none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Map<String, Value>>,
    /// Any JSON value; echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

impl Request {
    /// A request for `execute` with no arguments and no id.
    pub fn new(execute: impl Into<String>) -> Self {
        Request {
            execute: execute.into(),
            arguments: None,
            id: None,
        }
    }

    /// Set the arguments (must serialize to a JSON object; anything else is dropped).
    pub fn with_arguments(mut self, args: impl Serialize) -> Self {
        self.arguments = match serde_json::to_value(args) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        };
        self
    }

    /// Set the id.
    pub fn with_id(mut self, id: impl Into<Value>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Encode: the JSON object followed by `\n`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a Request always serializes");
        v.push(b'\n');
        v
    }

    /// Encode preceded by [`RESYNC_BYTE`] (what a client sends with `guest-sync-delimited`).
    pub fn encode_delimited(&self) -> Vec<u8> {
        let mut v = vec![RESYNC_BYTE];
        v.extend(self.encode());
        v
    }
}

/// The `error` member of a failed reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A QMP error class, e.g. [`class::GENERIC_ERROR`].
    pub class: String,
    /// Human-readable description.
    pub desc: String,
}

impl ErrorBody {
    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> Self {
        ErrorBody {
            class: class::GENERIC_ERROR.into(),
            desc: desc.into(),
        }
    }

    /// A `CommandNotFound` for `name`, worded as qemu-ga words it.
    pub fn command_not_found(name: &str) -> Self {
        ErrorBody {
            class: class::COMMAND_NOT_FOUND.into(),
            desc: format!("The command {name} has not been found"),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

impl std::error::Error for ErrorBody {}

/// A reply from the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// Success with a value.
    Return {
        /// The command's result.
        value: Value,
        /// The request's id, when it had one.
        id: Option<Value>,
    },
    /// Failure.
    Error {
        /// What went wrong.
        error: ErrorBody,
        /// The request's id, when it had one.
        id: Option<Value>,
    },
}

impl Response {
    /// A success reply.
    pub fn ok(value: Value, id: Option<Value>) -> Self {
        Response::Return { value, id }
    }

    /// An error reply.
    pub fn err(error: ErrorBody, id: Option<Value>) -> Self {
        Response::Error { error, id }
    }

    /// The echoed id.
    pub fn id(&self) -> Option<&Value> {
        match self {
            Response::Return { id, .. } | Response::Error { id, .. } => id.as_ref(),
        }
    }

    /// The reply as a JSON object.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        match self {
            Response::Return { value, id } => {
                m.insert("return".into(), value.clone());
                if let Some(id) = id {
                    m.insert("id".into(), id.clone());
                }
            }
            Response::Error { error, id } => {
                m.insert(
                    "error".into(),
                    serde_json::to_value(error).expect("ErrorBody serializes"),
                );
                if let Some(id) = id {
                    m.insert("id".into(), id.clone());
                }
            }
        }
        Value::Object(m)
    }

    /// Encode: the JSON object followed by `\n`; with `delimited`, preceded by
    /// [`RESYNC_BYTE`] (the `guest-sync-delimited` reply).
    pub fn encode(&self, delimited: bool) -> Vec<u8> {
        let mut v = Vec::new();
        if delimited {
            v.push(RESYNC_BYTE);
        }
        // Written field by field so the order is `return`/`error` then `id` whatever
        // serde_json's map ordering is.
        #[derive(Serialize)]
        struct Ok<'a> {
            #[serde(rename = "return")]
            value: &'a Value,
            #[serde(skip_serializing_if = "no_id")]
            id: &'a Option<Value>,
        }
        #[derive(Serialize)]
        struct Err<'a> {
            error: &'a ErrorBody,
            #[serde(skip_serializing_if = "no_id")]
            id: &'a Option<Value>,
        }
        let res = match self {
            Response::Return { value, id } => serde_json::to_writer(&mut v, &Ok { value, id }),
            Response::Error { error, id } => serde_json::to_writer(&mut v, &Err { error, id }),
        };
        res.expect("a reply always serializes");
        v.push(b'\n');
        v
    }

    /// Turn into a `Result` (dropping the id).
    pub fn into_result(self) -> Result<Value, ErrorBody> {
        match self {
            Response::Return { value, .. } => Ok(value),
            Response::Error { error, .. } => Err(error),
        }
    }
}

fn no_id(id: &&Option<Value>) -> bool {
    id.is_none()
}

/// A decoded frame, classified by direction.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Host → guest.
    Request(Request),
    /// Guest → host.
    Response(Response),
}

/// Why a frame is not a well-formed message. `id` is the frame's `id` member, if it had one
/// (so an error reply can still echo it).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageError {
    /// The error to send back (always a `GenericError`).
    pub error: ErrorBody,
    /// The offending frame's `id`, if any.
    pub id: Option<Value>,
}

impl Message {
    /// Classify a frame. Requests are checked as qemu-ga checks them: `execute` must be a string,
    /// `arguments` an object, and no other members than `execute`, `arguments`, `id`.
    pub fn from_object(mut obj: Map<String, Value>) -> Result<Message, MessageError> {
        let id = obj.get("id").cloned();
        let fail = |desc: String, id: Option<Value>| MessageError {
            error: ErrorBody::generic(desc),
            id,
        };
        if obj.contains_key("return") || obj.contains_key("error") {
            if let Some(k) = obj
                .keys()
                .find(|k| !matches!(k.as_str(), "return" | "error" | "id"))
            {
                return Err(fail(format!("QMP reply member '{k}' is unexpected"), id));
            }
            if let Some(v) = obj.remove("return") {
                if obj.contains_key("error") {
                    return Err(fail("QMP reply has both 'return' and 'error'".into(), id));
                }
                return Ok(Message::Response(Response::Return { value: v, id }));
            }
            let err = obj.remove("error").expect("checked above");
            let error: ErrorBody = serde_json::from_value(err).map_err(|e| {
                fail(
                    format!("QMP reply member 'error' is malformed: {e}"),
                    id.clone(),
                )
            })?;
            return Ok(Message::Response(Response::Error { error, id }));
        }
        match obj.get("execute") {
            None => return Err(fail("QMP input lacks member 'execute'".into(), id)),
            Some(Value::String(_)) => {}
            Some(_) => {
                return Err(fail(
                    "QMP input member 'execute' must be a string".into(),
                    id,
                ));
            }
        }
        if let Some(a) = obj.get("arguments") {
            if !a.is_object() {
                return Err(fail(
                    "QMP input member 'arguments' must be an object".into(),
                    id,
                ));
            }
        }
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "execute" | "arguments" | "id"))
        {
            return Err(fail(format!("QMP input member '{k}' is unexpected"), id));
        }
        let req: Request = serde_json::from_value(Value::Object(obj))
            .map_err(|e| fail(format!("malformed QMP input: {e}"), id))?;
        Ok(Message::Request(req))
    }
}

/// A token bucket deciding whether an error reply to garbage may be sent now. Time is passed in
/// (any monotonic clock in milliseconds) so it is deterministic in tests.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    capacity: u32,
    per_token_ms: u64,
    tokens: u32,
    last_ms: Option<u64>,
    suppressed: u64,
}

impl RateLimiter {
    /// At most `capacity` replies in a burst, refilled at one token per `per_token_ms`.
    pub fn new(capacity: u32, per_token_ms: u64) -> Self {
        RateLimiter {
            capacity: capacity.max(1),
            per_token_ms: per_token_ms.max(1),
            tokens: capacity.max(1),
            last_ms: None,
            suppressed: 0,
        }
    }

    /// Take a token at time `now_ms`; false means "stay silent".
    pub fn allow(&mut self, now_ms: u64) -> bool {
        if let Some(last) = self.last_ms {
            let refill = now_ms.saturating_sub(last) / self.per_token_ms;
            if refill > 0 {
                self.tokens = self
                    .tokens
                    .saturating_add(refill.min(u32::MAX as u64) as u32)
                    .min(self.capacity);
                self.last_ms = Some(last + refill * self.per_token_ms);
            }
        } else {
            self.last_ms = Some(now_ms);
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// How many replies were suppressed so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn request_roundtrip() {
        let r = Request::new("guest-sync-delimited")
            .with_arguments(json!({"id": 5}))
            .with_id("x");
        let bytes = r.encode_delimited();
        assert_eq!(bytes[0], 0xFF);
        assert_eq!(bytes.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&bytes[1..]).unwrap();
        assert_eq!(
            v,
            json!({"execute":"guest-sync-delimited","arguments":{"id":5},"id":"x"})
        );
        assert_eq!(Message::from_object(obj(v)).unwrap(), Message::Request(r));
    }

    #[test]
    fn replies_classified() {
        assert_eq!(
            Message::from_object(obj(json!({"return": 5}))).unwrap(),
            Message::Response(Response::ok(json!(5), None))
        );
        let e = Message::from_object(obj(
            json!({"error":{"class":"CommandNotFound","desc":"d"},"id":1}),
        ))
        .unwrap();
        assert_eq!(
            e,
            Message::Response(Response::err(
                ErrorBody {
                    class: "CommandNotFound".into(),
                    desc: "d".into()
                },
                Some(json!(1))
            ))
        );
    }

    #[test]
    fn request_errors_like_qemu() {
        let e = Message::from_object(obj(json!({"arguments":{}, "id": 3}))).unwrap_err();
        assert_eq!(e.error.desc, "QMP input lacks member 'execute'");
        assert_eq!(e.id, Some(json!(3)));
        let e = Message::from_object(obj(json!({"execute": 1}))).unwrap_err();
        assert_eq!(e.error.desc, "QMP input member 'execute' must be a string");
        let e = Message::from_object(obj(json!({"execute": "x", "arguments": []}))).unwrap_err();
        assert_eq!(
            e.error.desc,
            "QMP input member 'arguments' must be an object"
        );
        let e = Message::from_object(obj(json!({"execute": "x", "foo": 1}))).unwrap_err();
        assert_eq!(e.error.desc, "QMP input member 'foo' is unexpected");
        assert_eq!(e.error.class, class::GENERIC_ERROR);
    }

    #[test]
    fn reply_encoding() {
        let r = Response::ok(json!(7), Some(json!("i")));
        assert_eq!(r.encode(false), b"{\"return\":7,\"id\":\"i\"}\n".to_vec());
        assert_eq!(r.encode(true)[0], 0xFF);
        let e = Response::err(ErrorBody::command_not_found("nope"), None);
        assert_eq!(
            e.to_value(),
            json!({"error":{"class":"CommandNotFound","desc":"The command nope has not been found"}})
        );
    }

    #[test]
    fn rate_limiter_bursts_then_refills() {
        let mut r = RateLimiter::new(2, 1000);
        assert!(r.allow(0));
        assert!(r.allow(10));
        assert!(!r.allow(20));
        assert!(!r.allow(999));
        assert!(r.allow(1000));
        assert!(!r.allow(1500));
        assert!(r.allow(5000));
        assert!(r.allow(5000));
        assert!(!r.allow(5000));
        assert_eq!(r.suppressed(), 4);
    }
}
