//! The Xen PV channel protocol spoken by xenplug's guest agent (`xenplug-agent`) and its dom0
//! peer: the **QEMU guest agent (QGA) wire protocol**, so existing QGA clients can drive our agent
//! and our dom0 peer can drive qemu-ga. The full description a third party can implement from is
//! `docs/channel-protocol.md`; this crate is its reference implementation, pure (no I/O).
//!
//! # Layers
//!
//! * [`frame`]: bytes → [`frame::Event`]s. JSON objects back to back; `0xFF` resynchronises;
//!   garbage outside objects is reported and skipped; frames are bounded in size and nesting.
//! * [`message`]: a frame → [`message::Message`] (a [`message::Request`] with `execute`,
//!   `arguments`, `id`, or a [`message::Response`] with `return` or `error{class,desc}`), plus
//!   encoding and the [`message::RateLimiter`] for error replies to garbage.
//! * [`qga`]: typed commands ([`qga::Command`]) with qemu-ga's names, arguments and reply
//!   shapes, and xenplug's own `xenplug-apply-config` / `xenplug-get-config-generation`.
//! * [`config`]: the first-boot configuration document ([`config::ConfigDoc`]) and its
//!   cloud-init NoCloud mapping.
//! * [`ClientSession`] (this module): the host side's handshake and reply filter.
//!
//! # Handshake (what every new host session does first)
//!
//! ```
//! use xenplug_channel::{ClientEvent, ClientSession};
//! let mut s = ClientSession::new(Default::default());
//! let bytes = s.begin_sync(4242); // 0xFF {"execute":"guest-sync-delimited","arguments":{"id":4242}}
//! assert_eq!(bytes[0], 0xFF);
//! // …write `bytes` to the channel; feed whatever comes back (echo, stale output, replies):
//! let ev = s.feed(b"{\"execute\":\"guest-sync-delimited\"}\r\n\xff{\"return\": 4242}\n");
//! assert_eq!(ev, vec![ClientEvent::Synced]);
//! assert!(s.is_synced());
//! ```
//!
//! The host repeats `begin_sync` with a fresh nonce until [`ClientEvent::Synced`] arrives, and
//! again after any timeout; until then every reply is stale and dropped.

pub mod config;
pub mod frame;
pub mod message;
pub mod qga;

pub use config::{ConfigDoc, ConfigError, NetworkConfig, NoCloudSeed};
pub use frame::{Decoder, Event, Limits, RESYNC_BYTE};
pub use message::{ErrorBody, Message, RateLimiter, Request, Response};
pub use qga::Command;

use serde_json::Value;

/// The channel name xenplug's agent and dom0 peer use unless configured otherwise (xl:
/// `channel = [ "connection=socket, name=org.xenplug.agent.0, path=…" ]`).
pub const DEFAULT_CHANNEL_NAME: &str = "org.xenplug.agent.0";

/// The `guest-sync-delimited` request for `nonce`, preceded by `0xFF`.
pub fn sync_request(nonce: i64) -> Vec<u8> {
    Command::SyncDelimited(qga::SyncArgs { id: nonce })
        .to_request()
        .encode_delimited()
}

/// What a [`ClientSession`] makes of incoming bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The reply to the current `guest-sync-delimited` arrived: the session is in sync.
    Synced,
    /// A reply received while in sync (in order; match them to requests by order or `id`).
    Reply(Response),
}

/// The host side of one session: sends the handshake and filters what comes back. Before the
/// sync reply with the current nonce, everything is dropped (echoed requests, stale replies from
/// an earlier session, error replies to fragments, garbage). After it, replies are delivered and
/// requests (echo) and garbage are still dropped.
#[derive(Debug)]
pub struct ClientSession {
    decoder: Decoder,
    nonce: Option<i64>,
    synced: bool,
    dropped: u64,
}

impl ClientSession {
    /// A new session with the given frame bounds (the host should use small ones: the guest is
    /// untrusted).
    pub fn new(limits: Limits) -> Self {
        ClientSession {
            decoder: Decoder::new(limits),
            nonce: None,
            synced: false,
            dropped: 0,
        }
    }

    /// Start (or restart) the handshake with `nonce`; returns the bytes to send. The session is
    /// out of sync until the matching reply arrives.
    pub fn begin_sync(&mut self, nonce: i64) -> Vec<u8> {
        self.nonce = Some(nonce);
        self.synced = false;
        self.decoder.reset();
        sync_request(nonce)
    }

    /// True once the current handshake was answered.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// How many frames/garbage runs were dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Feed bytes read from the channel.
    pub fn feed(&mut self, data: &[u8]) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        for ev in self.decoder.feed(data) {
            let Event::Frame(obj) = ev else {
                if !matches!(ev, Event::Resync) {
                    self.dropped += 1;
                }
                continue;
            };
            let resp = match Message::from_object(obj) {
                Ok(Message::Response(r)) => r,
                _ => {
                    self.dropped += 1;
                    continue;
                }
            };
            if !self.synced {
                let want = self.nonce.map(Value::from);
                match (&resp, want) {
                    (Response::Return { value, .. }, Some(w)) if *value == w => {
                        self.synced = true;
                        out.push(ClientEvent::Synced);
                    }
                    _ => self.dropped += 1,
                }
            } else {
                out.push(ClientEvent::Reply(resp));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handshake_ignores_stale_and_echo() {
        let mut s = ClientSession::new(Limits::default());
        let first = s.begin_sync(1);
        // The first attempt's request comes back as echo, a stale reply from a previous
        // session and an error reply to a fragment arrive, then the retry is answered.
        let mut ev = s.feed(&first);
        ev.extend(
            s.feed(b"{\"return\": {}}\r\n{\"error\":{\"class\":\"GenericError\",\"desc\":\"x\"}}"),
        );
        ev.extend(s.feed(b"\xff{\"return\": 1"));
        assert!(ev.is_empty(), "{ev:?}");
        let _second = s.begin_sync(2);
        // The old nonce's reply completes after the restart: dropped (begin_sync reset the
        // decoder, so the tail is garbage), then the new one is accepted.
        let ev = s.feed(
            b"}\n\xff{\"return\": 1}\n\xff{\"return\": 2}\n{\"return\":{\"host-name\":\"g\"}}\n",
        );
        assert_eq!(
            ev,
            vec![
                ClientEvent::Synced,
                ClientEvent::Reply(Response::ok(json!({"host-name":"g"}), None))
            ]
        );
        assert!(s.dropped() >= 4);
    }
}
