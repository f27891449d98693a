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
//! * [`qga`]: typed commands ([`qga::Command`], one table [`qga::SPECS`]) with qemu-ga's names,
//!   argument schemas (checked with qemu-ga's wording) and reply shapes, and xenplug's own
//!   `xenplug-…` commands.
//! * [`config`]: the first-boot configuration document ([`config::ConfigDoc`]) and its
//!   cloud-init NoCloud mapping.
//! * [`host`]: the host (dom0) side's handshake and reply matching ([`host::HostSession`]), the
//!   one implementation every dom0 program and test uses.
//!
//! # Handshake (what every new host session does first)
//!
//! ```
//! use xenplug_channel::host::{self, HostEvent, HostSession, Nonces};
//! let mut s = HostSession::new(host::default_limits(), Nonces::from_seed(1));
//! let bytes = s.begin_sync(); // 0xFF {"execute":"guest-sync-delimited","arguments":{"id":N}}
//! assert_eq!(bytes[0], 0xFF);
//! let n = s.nonce().unwrap();
//! // …write `bytes` to the channel; feed whatever comes back (echo, stale output, replies):
//! let mut back = b"{\"execute\":\"guest-sync-delimited\"}\r\n{\"return\": 1}\xff".to_vec();
//! back.extend(format!("{{\"return\": {n}}}\n").bytes());
//! let ev = s.feed(&back);
//! assert_eq!(ev, vec![HostEvent::Synced]);
//! assert!(s.is_synced());
//! ```
//!
//! The host repeats `begin_sync` (a fresh nonce each time) until [`host::HostEvent::Synced`]
//! arrives, and again after any timeout; until then every reply is stale and dropped.

pub mod config;
pub mod frame;
pub mod host;
pub mod message;
pub mod qga;

pub use config::{ConfigDoc, ConfigError, NetworkConfig, NoCloudSeed};
pub use frame::{Decoder, Event, Limits, RESYNC_BYTE};
pub use message::{ErrorBody, Message, RateLimiter, Request, Response};
pub use qga::Command;

/// The channel name xenplug's agent and dom0 peer use unless configured otherwise (xl:
/// `channel = [ "connection=socket, name=org.xenplug.agent.0, path=…" ]`).
pub const DEFAULT_CHANNEL_NAME: &str = "org.xenplug.agent.0";
