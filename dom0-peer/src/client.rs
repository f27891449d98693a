//! A one-shot QGA client for one channel socket: connect, handshake, run requests. Used by the
//! `send` and `query` commands; works against `xenplug-agent` and `qemu-ga` alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use xenplug_channel::host::{HostEvent, HostSession, Nonces};

use crate::wire::{self, commands, AgentError, Limits};

/// Why a one-shot operation failed; each maps to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (ENOENT / ECONNREFUSED): the VM or its QEMU is not there.
    #[error("channel socket {path}: {source} (is the VM running?)")]
    SocketMissing {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Any other connect error (permissions, path too long…).
    #[error("channel socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Nobody answered the handshake in time (no agent, or not started yet).
    #[error("no answer to the handshake within {0:?} ({1} tries): is the guest agent running?")]
    HandshakeTimeout(Duration, u32),
    /// The agent answered with an error.
    #[error("agent error: {0}")]
    Agent(AgentError),
    /// A request got no reply in time.
    #[error("no reply to {0} within {1:?}")]
    RequestTimeout(String, Duration),
    /// The reply was larger than the frame bound.
    #[error("the reply to {0} exceeds {1} bytes (raise --max-frame)")]
    Oversize(String, usize),
    /// The peer closed the connection.
    #[error("the channel was closed")]
    Closed,
    /// I/O error after connecting.
    #[error("channel I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The applied generation is not the one sent.
    #[error("the agent reports generation {got:?} applied, expected {want}")]
    Verify {
        /// Sent.
        want: u64,
        /// Reported.
        got: Option<u64>,
    },
    /// The configuration document is unusable.
    #[error("configuration document {0}: {1}")]
    BadDocument(String, String),
}

/// Exit codes of `send`/`query` (also in the binary's docs).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Anything not listed below (I/O after connecting, closed channel).
    pub const OTHER: u8 = 1;
    /// Usage error.
    pub const USAGE: u8 = 2;
    /// The socket is missing or nobody listens on it.
    pub const SOCKET_MISSING: u8 = 3;
    /// Nobody answered the handshake within the timeout.
    pub const HANDSHAKE_TIMEOUT: u8 = 4;
    /// The agent replied with an error.
    pub const AGENT_ERROR: u8 = 5;
    /// A request was not answered within the timeout.
    pub const REQUEST_TIMEOUT: u8 = 6;
    /// The applied generation does not match what was sent.
    pub const VERIFY_FAILED: u8 = 7;
    /// The configuration document is invalid.
    pub const BAD_DOCUMENT: u8 = 8;
    /// The daemon's control socket cannot be reached (`list`).
    pub const DAEMON_UNREACHABLE: u8 = 9;
    /// The etcd store cannot be reached (`fleet-status`).
    pub const STORE_UNREACHABLE: u8 = 10;
}

impl ClientError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::SocketMissing { .. } => exit::SOCKET_MISSING,
            ClientError::Connect { .. }
            | ClientError::Io(_)
            | ClientError::Closed
            | ClientError::Oversize(..) => exit::OTHER,
            ClientError::HandshakeTimeout(..) => exit::HANDSHAKE_TIMEOUT,
            ClientError::Agent(_) => exit::AGENT_ERROR,
            ClientError::RequestTimeout(..) => exit::REQUEST_TIMEOUT,
            ClientError::Verify { .. } => exit::VERIFY_FAILED,
            ClientError::BadDocument(..) => exit::BAD_DOCUMENT,
        }
    }
}

/// A connected channel, driven through the shared host session (the same handshake and reply
/// matching as the daemon's).
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    session: HostSession,
    buf: Vec<u8>,
    /// Sync requests sent by the last handshake.
    pub syncs: u32,
}

impl Client {
    /// Connect to `path`; guest frames are bounded by `limits`
    /// ([`xenplug_channel::host::default_limits`] unless a query needs more).
    pub async fn connect(path: &Path, limits: Limits) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| match source.raw_os_error() {
                    Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => ClientError::SocketMissing {
                        path: path.to_path_buf(),
                        source,
                    },
                    _ => ClientError::Connect {
                        path: path.to_path_buf(),
                        source,
                    },
                })?;
        Ok(Client {
            stream,
            session: HostSession::new(limits, Nonces::seeded(0)),
            buf: vec![0; 16 * 1024],
            syncs: 0,
        })
    }

    /// Read until `until` and feed the session; `Ok(None)` on timeout.
    async fn next_events(&mut self, until: Instant) -> Result<Option<Vec<HostEvent>>, ClientError> {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.stream.read(&mut self.buf)).await {
            Err(_) => Ok(None),
            Ok(Ok(0)) => Err(ClientError::Closed),
            Ok(Ok(n)) => Ok(Some(self.session.feed(&self.buf[..n]))),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// The resync handshake: `0xFF` + `guest-sync-delimited` with a fresh nonce every
    /// `retry`, until the matching reply arrives or `timeout` passes. Everything else is
    /// ignored (echo, stale replies, error replies to garbage).
    pub async fn handshake(
        &mut self,
        timeout: Duration,
        retry: Duration,
    ) -> Result<(), ClientError> {
        let end = Instant::now() + timeout;
        self.syncs = 0;
        loop {
            let now = Instant::now();
            if now >= end {
                return Err(ClientError::HandshakeTimeout(timeout, self.syncs));
            }
            self.syncs += 1;
            let bytes = self.session.begin_sync();
            self.stream.write_all(&bytes).await?;
            let until = (now + retry).min(end);
            while let Some(evs) = self.next_events(until).await? {
                if evs.contains(&HostEvent::Synced) {
                    return Ok(());
                }
            }
        }
    }

    /// Run one request and wait for its reply (stale replies are dropped by the session).
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let (_id, bytes) = self.session.request(command, arguments);
        self.stream.write_all(&bytes).await?;
        let end = Instant::now() + timeout;
        loop {
            let Some(evs) = self.next_events(end).await? else {
                self.session.abandon();
                return Err(ClientError::RequestTimeout(command.to_string(), timeout));
            };
            for e in evs {
                match e {
                    HostEvent::Reply { result, .. } => return result.map_err(ClientError::Agent),
                    HostEvent::Oversize => {
                        self.session.abandon();
                        return Err(ClientError::Oversize(
                            command.to_string(),
                            self.session.limits().max_frame,
                        ));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Deliver a document and verify the agent reports its generation applied. Returns the
    /// apply reply.
    pub async fn deliver(
        &mut self,
        doc: &crate::doc::Document,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let args = serde_json::json!({ "config": doc.value });
        let reply = self
            .execute(commands::APPLY_CONFIG, Some(&args), timeout)
            .await?;
        let v = self
            .execute(commands::GET_CONFIG_GENERATION, None, timeout)
            .await?;
        let (iid, got) = wire::reply_applied(&v);
        if got != Some(doc.generation) || iid.is_some_and(|i| i != doc.instance_id) {
            return Err(ClientError::Verify {
                want: doc.generation,
                got,
            });
        }
        Ok(reply)
    }
}

/// The `query` commands: short name → (QGA command, whether it takes `username`).
pub const QUERIES: &[(&str, &str)] = &[
    ("ping", "guest-ping"),
    ("info", "guest-info"),
    ("network", "guest-network-get-interfaces"),
    ("hostname", "guest-get-host-name"),
    ("osinfo", "guest-get-osinfo"),
    ("time", "guest-get-time"),
    ("ssh-keys", "guest-ssh-get-authorized-keys"),
    ("generation", commands::GET_CONFIG_GENERATION),
    ("guest-state", xenplug_channel::qga::XENPLUG_GET_GUEST_STATE),
    ("users", "guest-get-users"),
    ("vcpus", "guest-get-vcpus"),
    ("fsinfo", "guest-get-fsinfo"),
    ("disks", "guest-get-disks"),
    ("timezone", "guest-get-timezone"),
    ("load", "guest-get-load"),
    ("routes", "guest-network-get-route"),
];

/// Resolve a `query` name: a short name from [`QUERIES`], or a full command name
/// (`guest-…`, `xenplug-…`, `__…`).
pub fn resolve_query(name: &str) -> Option<&str> {
    QUERIES
        .iter()
        .find(|(short, _)| *short == name)
        .map(|(_, full)| *full)
        .or_else(|| {
            (name.starts_with("guest-") || name.starts_with("xenplug-") || name.starts_with("__"))
                .then_some(name)
                .filter(|n| {
                    n.len() <= 128
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        assert_eq!(resolve_query("ping"), Some("guest-ping"));
        assert_eq!(
            resolve_query("network"),
            Some("guest-network-get-interfaces")
        );
        assert_eq!(resolve_query("guest-get-fsinfo"), Some("guest-get-fsinfo"));
        assert_eq!(resolve_query("reboot"), None);
        assert_eq!(
            resolve_query("guest-state"),
            Some("xenplug-get-guest-state")
        );
        assert_eq!(
            resolve_query("xenplug-get-guest-state"),
            Some("xenplug-get-guest-state")
        );
        assert_eq!(resolve_query("guest-x\"y"), None);
    }
}
