//! A simulated guest behind a channel socket, for `xenplug-peer`'s tests and its benchmark
//! (`dom0-peer/examples/peer_bench.rs`). Not shipped: only dev-dependencies and examples use it.
//!
//! It plays QEMU (listening on the socket, one client at a time), the guest tty and an agent,
//! reproducing what was observed on real Xen (`xen-e2e-notes.md` §5.6 and the appendix):
//!
//! * output written before dom0 connected is delivered on connect (stale output of an earlier
//!   session: a line of text and a reply to an old nonce);
//! * until the agent has opened the tty (`open_delay` after the connection), the line discipline
//!   echoes dom0's bytes back with `\n` → `\r\n`, and the agent then flushes them (they are
//!   never answered);
//! * the agent decodes requests with the shared `xenplug-channel` code (framing, `0xFF`
//!   resync, typed commands) and answers the QGA subset and `xenplug-apply-config` /
//!   `xenplug-get-config-generation`, remembering the applied configuration across
//!   connections (as the real agent persists it); garbage gets rate-limited error replies, as
//!   qemu-ga gives them.
//!
//! Nothing is written anywhere: applying a configuration only records it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use xenplug_channel::frame::Event;
use xenplug_channel::message::{ErrorBody, Message, RateLimiter, Response};
use xenplug_channel::qga::{self, Command};
use xenplug_channel::{Decoder, Limits};

/// How the simulated guest behaves.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// Time from connection until the agent has the tty open in raw mode; input before that
    /// is echoed (cooked tty) and then flushed.
    pub open_delay: Duration,
    /// Send stale output from an earlier session on every connection.
    pub stale_output: bool,
    /// The guest's host name.
    pub hostname: String,
    /// Delay before each reply (a slow guest).
    pub reply_delay: Duration,
    /// Called with the generation of every apply request (the benchmark times deliveries).
    pub on_apply: Option<ApplyHook>,
    /// When set, `xenplug-subscribe-guest-state` is answered and this state (the `data` of a
    /// `xenplug-guest-state` event: OS, addresses…) is sent right after, as the agent does.
    pub guest_state: Option<Value>,
}

/// A callback run on every apply request, with its generation.
#[derive(Clone)]
pub struct ApplyHook(pub Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for ApplyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApplyHook")
    }
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            open_delay: Duration::ZERO,
            stale_output: true,
            hostname: "simguest".into(),
            reply_delay: Duration::ZERO,
            on_apply: None,
            guest_state: None,
        }
    }
}

/// What the simulated agent remembers (persisted across connections, like the real agent's
/// state file; drop it to simulate a reinstalled guest).
#[derive(Debug, Default)]
pub struct GuestState {
    /// `(instance-id, generation)` applied, if any.
    pub applied: Mutex<Option<(String, u64)>>,
    /// Apply requests served.
    pub applies: AtomicU64,
    /// Every `(instance-id, generation)` an apply request carried, in order (tests check that
    /// nothing was delivered twice or skipped).
    pub history: Mutex<Vec<(String, u64)>>,
    /// Sync requests answered.
    pub syncs: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

impl GuestState {
    /// The applied generation, if any.
    pub fn generation(&self) -> Option<u64> {
        self.applied
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|(_, g)| *g))
    }
}

/// Serve `listener` (one connection at a time, as a QEMU chardev does) until the task is
/// dropped or aborted.
pub async fn serve(listener: UnixListener, opts: GuestOptions, state: Arc<GuestState>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        state.connections.fetch_add(1, Ordering::Relaxed);
        let _ = serve_conn(conn, &opts, &state).await;
    }
}

fn reply(state: &GuestState, opts: &GuestOptions, cmd: Command) -> Option<Value> {
    Some(match cmd {
        Command::Sync(a) | Command::SyncDelimited(a) => {
            state.syncs.fetch_add(1, Ordering::Relaxed);
            json!(a.id)
        }
        Command::Ping => json!({}),
        Command::Info => json!({
            "version": "xenplug-simguest",
            "supported_commands": qga::SPECS.iter().map(|c| json!({
                "name": c.name, "enabled": true, "success-response": c.success_response
            })).collect::<Vec<_>>()
        }),
        Command::GetHostName => json!({"host-name": opts.hostname}),
        Command::GetTime => json!(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)),
        Command::GetConfigGeneration => match state.applied.lock().ok()?.clone() {
            Some((iid, g)) => json!({"instance-id": iid, "generation": g}),
            None => json!({}),
        },
        Command::ApplyConfig(args) => {
            state.applies.fetch_add(1, Ordering::Relaxed);
            match args.into_doc() {
                Ok(doc) => {
                    if let Ok(mut h) = state.history.lock() {
                        h.push((doc.instance_id.clone(), doc.generation));
                    }
                    if let Some(hook) = &opts.on_apply {
                        (hook.0)(doc.generation);
                    }
                    let mut a = state.applied.lock().ok()?;
                    let same = a.as_ref() == Some(&(doc.instance_id.clone(), doc.generation));
                    *a = Some((doc.instance_id.clone(), doc.generation));
                    json!({
                        "instance-id": doc.instance_id,
                        "generation": doc.generation,
                        "applied": !same,
                        "changes": if same { vec![] } else { vec!["simulated"] },
                    })
                }
                Err(e) => return Some(json!({"__error": e.to_string()})),
            }
        }
        Command::SubscribeGuestState if opts.guest_state.is_some() => json!({}),
        Command::Shutdown(_) => return None,
        other => json!({"__error": format!("{} is not simulated", other.name())}),
    })
}

async fn serve_conn(
    mut conn: UnixStream,
    opts: &GuestOptions,
    state: &GuestState,
) -> std::io::Result<()> {
    if opts.stale_output {
        conn.write_all(b"guest-hello 0\r\n{\"return\": 4242}\r\n")
            .await?;
    }
    let opened_at = Instant::now() + opts.open_delay;
    let mut buf = vec![0u8; 4096];
    let mut dec = Decoder::new(Limits::default());
    let mut errors = RateLimiter::new(5, 1000);
    let t0 = Instant::now();
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let data = &buf[..n];
        if Instant::now() < opened_at {
            // Cooked tty, agent not there yet: echo with ONLCR, then the agent's flush.
            let mut echo = Vec::with_capacity(n + 8);
            for &b in data {
                if b == b'\n' {
                    echo.push(b'\r');
                }
                echo.push(b);
            }
            conn.write_all(&echo).await?;
            continue;
        }
        let mut out = Vec::new();
        for ev in dec.feed(data) {
            let resp = match ev {
                Event::Frame(obj) => match Message::from_object(obj) {
                    Ok(Message::Request(req)) => {
                        let delimited = req.execute == qga::GUEST_SYNC_DELIMITED;
                        let subscribe = req.execute == qga::XENPLUG_SUBSCRIBE_GUEST_STATE;
                        let id = req.id.clone();
                        match Command::from_request(&req) {
                            Ok(cmd) => match reply(state, opts, cmd) {
                                None => continue,
                                Some(v) => match v.get("__error").and_then(Value::as_str) {
                                    Some(e) => (Response::err(ErrorBody::generic(e), id), false),
                                    None => {
                                        let r = Response::ok(v, id);
                                        if let (true, Some(st)) = (subscribe, &opts.guest_state) {
                                            out.extend(r.encode(false));
                                            let ev = json!({"event": qga::GUEST_STATE_EVENT, "data": st});
                                            out.extend(ev.to_string().into_bytes());
                                            out.push(b'\n');
                                            continue;
                                        }
                                        (r, delimited)
                                    }
                                },
                            },
                            Err(e) => (Response::err(e, id), false),
                        }
                    }
                    Ok(Message::Response(_)) => continue,
                    Err(e) => (Response::err(e.error, e.id), false),
                },
                Event::Garbage { first, .. } => {
                    let now = t0.elapsed().as_millis() as u64;
                    if !errors.allow(now) {
                        continue;
                    }
                    (
                        Response::err(
                            ErrorBody::generic(format!(
                                "JSON parse error, stray '{}'",
                                char::from(first)
                            )),
                            None,
                        ),
                        false,
                    )
                }
                _ => continue,
            };
            out.extend(resp.0.encode(resp.1));
        }
        if !out.is_empty() {
            if !opts.reply_delay.is_zero() {
                tokio::time::sleep(opts.reply_delay).await;
            }
            conn.write_all(&out).await?;
        }
    }
}
