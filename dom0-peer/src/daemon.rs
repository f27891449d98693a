//! The daemon: discovery → one task per channel → status on a control socket.
//!
//! [`run`] takes the bound control listener and a shutdown future (mini-redis style), so tests
//! drive it in-process. The control protocol is one line in, one JSON document out:
//! `list` (every known channel, see [`VmStatus`]), `summary` (counts per state, and the
//! store's state), `store` (the store's state: with etcd, whether it is reachable, the revision
//! seen, queued status writes and request counts) or `reload` (re-read the store directory and
//! the policy file now; also done on SIGHUP by the binary and every `reload_interval`).
//!
//! With an etcd store ([`Config::fleet`]) documents come from [`crate::etcd::run_watcher`] and
//! every channel's status goes to etcd through a [`Reporter`]; the daemon waits a little for
//! the first list before it serves, so that VMs get their documents from the start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::discovery::{self, Change, ChannelKey};
use crate::etcd::{EtcdDocs, Health, WatchConfig};
use crate::log::Logger;
use crate::machine::Timing;
use crate::policy::Policy;
use crate::session::{self, Rates, Shared, VmStatus};
use crate::status::{Reporter, StatusConfig};
use crate::store::{Documents, Store};
use crate::wire::Limits;

/// Where the xenstore connection goes.
#[derive(Debug, Clone)]
pub enum XenstoreTarget {
    /// As the environment says (`XENSTORED_PATH`, `/run/xenstored/socket`, `/dev/xen/xenbus`).
    Default,
    /// This socket.
    Socket(PathBuf),
}

/// Daemon configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where xenstore is.
    pub xenstore: XenstoreTarget,
    /// The console backend root (`/local/domain/0/backend/console`).
    pub backend_root: String,
    /// Channel names served.
    pub channel_names: BTreeSet<String>,
    /// The configuration store directory.
    pub store_dir: PathBuf,
    /// The policy file (none: deny every guest-originated request).
    pub policy_file: Option<PathBuf>,
    /// How often the store and policy are re-read.
    pub reload_interval: Duration,
    /// Timing of each channel.
    pub timing: Timing,
    /// Bounds on guest frames.
    pub limits: Limits,
    /// Per-channel rate limits.
    pub rates: Rates,
    /// Extra xenstore connections used in parallel for full scans (0: scan on the watch
    /// connection).
    pub scan_connections: usize,
    /// Documents from etcd and status back to it, instead of `store_dir`.
    pub fleet: Option<FleetConfig>,
}

/// The etcd store's settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Documents and policy.
    pub watch: WatchConfig,
    /// Status.
    pub status: StatusConfig,
    /// How long to wait for the first list before serving anyway.
    pub initial_list_wait: Duration,
}

impl Config {
    /// Defaults for everything but the store and the channel names.
    pub fn new(store_dir: impl Into<PathBuf>, channel_names: BTreeSet<String>) -> Self {
        Config {
            xenstore: XenstoreTarget::Default,
            backend_root: discovery::DEFAULT_BACKEND_ROOT.into(),
            channel_names,
            store_dir: store_dir.into(),
            policy_file: None,
            reload_interval: Duration::from_secs(2),
            timing: Timing::default(),
            limits: xenplug_channel::host::default_limits(),
            rates: Rates::default(),
            scan_connections: 4,
            fleet: None,
        }
    }
}

/// Errors that stop the daemon before it serves.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store directory cannot be read.
    #[error("configuration store {0}: {1}")]
    Store(String, std::io::Error),
    /// The policy file is invalid.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The discovery thread could not start.
    #[error("xenstore watcher: {0}")]
    Watcher(std::io::Error),
}

fn open_xenstore(t: &XenstoreTarget) -> xenplug_xenstore::Result<xenplug_xenstore::XsClient> {
    match t {
        XenstoreTarget::Default => xenplug_xenstore::XsClient::open(),
        XenstoreTarget::Socket(p) => xenplug_xenstore::XsClient::open_socket(p),
    }
}

/// Re-read the store (and the policy, when given); log what changed.
pub fn reload(shared: &Shared, policy_file: Option<&PathBuf>) {
    {
        let mut docs = shared.store.write().unwrap_or_else(|e| e.into_inner());
        // An etcd store follows its watch; only the policy file is re-read.
        let Documents::Dir(store) = &mut *docs else {
            drop(docs);
            reload_policy(shared, policy_file);
            return;
        };
        match store.reload() {
            Ok(c) => {
                if !c.is_empty() {
                    for (file, error) in store.errors() {
                        shared.log.warn(
                            "store-invalid-document",
                            &[("file", file.into()), ("error", error.into())],
                        );
                    }
                    shared.log.info(
                        "store-reloaded",
                        &[
                            ("changed", c.len().into()),
                            ("documents", store.len().into()),
                        ],
                    );
                    let _ = shared.store_epoch.send(store.epoch);
                }
            }
            Err(e) => {
                shared.log.error(
                    "store-unreadable",
                    &[
                        ("dir", store.dir().display().to_string().into()),
                        ("error", e.to_string().into()),
                    ],
                );
            }
        }
    }
    reload_policy(shared, policy_file);
}

fn reload_policy(shared: &Shared, policy_file: Option<&PathBuf>) {
    if let Some(p) = policy_file {
        match Policy::load(p) {
            Ok(new) => {
                let mut cur = shared.policy.write().unwrap_or_else(|e| e.into_inner());
                if **cur != new {
                    shared
                        .log
                        .info("policy-loaded", &[("rules", new.len().into())]);
                    *cur = Arc::new(new);
                }
            }
            // Keep the old policy: a broken edit must not open anything.
            Err(e) => shared
                .log
                .error("policy-invalid", &[("error", e.to_string().into())]),
        }
    }
}

fn summary(rows: &BTreeMap<ChannelKey, VmStatus>, store: Value) -> Value {
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rows.values() {
        *by_state.entry(r.state).or_default() += 1;
    }
    json!({ "channels": rows.len(), "states": by_state, "store": store })
}

/// The store's state for `summary` and `store`.
fn store_state(shared: &Shared, health: Option<&Health>) -> Value {
    let docs = shared.store.read().unwrap_or_else(|e| e.into_inner());
    match health {
        Some(h) => {
            let mut v = h.json();
            v["documents"] = docs.len().into();
            v
        }
        None => json!({"kind": "dir", "dir": docs.describe(), "documents": docs.len()}),
    }
}

async fn control(
    conn: UnixStream,
    shared: Arc<Shared>,
    policy_file: Option<PathBuf>,
    health: Option<Arc<Health>>,
) {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    let mut r = BufReader::new(r).take(256);
    let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let reply = match line.trim() {
        "list" => {
            let rows: Vec<VmStatus> = shared
                .status
                .lock()
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default();
            serde_json::to_value(rows).unwrap_or(Value::Null)
        }
        "summary" => {
            let store = store_state(&shared, health.as_deref());
            shared
                .status
                .lock()
                .map(|s| summary(&s, store))
                .unwrap_or(Value::Null)
        }
        "store" => store_state(&shared, health.as_deref()),
        "reload" => {
            let s = shared.clone();
            let p = policy_file.clone();
            let _ = tokio::task::spawn_blocking(move || reload(&s, p.as_ref())).await;
            json!({"reloaded": true})
        }
        other => {
            json!({"error": format!("unknown control command {:?}", crate::wire::sanitize(other))})
        }
    };
    let mut out = reply.to_string().into_bytes();
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}

/// Run the daemon until `shutdown` completes. `listener` is the bound control socket.
pub async fn run(
    cfg: Config,
    log: Logger,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let documents = match &cfg.fleet {
        None => {
            let mut store = Store::new(&cfg.store_dir);
            store
                .reload()
                .map_err(|e| DaemonError::Store(cfg.store_dir.display().to_string(), e))?;
            for (file, error) in store.errors() {
                log.warn(
                    "store-invalid-document",
                    &[("file", file.into()), ("error", error.into())],
                );
            }
            Documents::Dir(store)
        }
        Some(f) => Documents::Etcd(EtcdDocs::new(f.watch.etcd.url.clone(), log.clone())),
    };
    let policy = match &cfg.policy_file {
        Some(p) => Policy::load(p)?,
        None => Policy::deny_all(),
    };
    log.info(
        "start",
        &[
            ("channels", json!(cfg.channel_names)),
            ("store", documents.describe().into()),
            ("documents", documents.len().into()),
            ("policy_rules", policy.len().into()),
            ("backend_root", cfg.backend_root.clone().into()),
            (
                "host",
                json!(cfg.fleet.as_ref().map(|f| f.status.host.clone())),
            ),
        ],
    );
    let shared = Shared::new(
        cfg.timing.clone(),
        cfg.limits,
        cfg.rates,
        documents,
        policy,
        log.clone(),
    );
    let mut background: Vec<crate::etcd::AbortOnDrop> = Vec::new();
    let mut health: Option<Arc<Health>> = None;
    if let Some(f) = &cfg.fleet {
        let h = Arc::new(Health::new(f.watch.etcd.url.display()));
        let reporter = Reporter::new(f.status.clone(), h.clone(), log.clone());
        let _ = shared.reporter.set(reporter.clone());
        let mut first = shared.store_epoch.subscribe();
        background.push(crate::etcd::AbortOnDrop(tokio::spawn(
            crate::etcd::run_watcher(f.watch.clone(), shared.clone(), h.clone()),
        )));
        background.push(crate::etcd::AbortOnDrop(tokio::spawn(reporter.run())));
        // Serve once the first list is in (or after a bounded wait: etcd may be away, and the
        // VMs are served without documents until it answers).
        if tokio::time::timeout(f.initial_list_wait, first.changed())
            .await
            .is_err()
        {
            log.warn(
                "store-not-listed",
                &[
                    ("url", h.url.clone().into()),
                    ("waited_secs", f.initial_list_wait.as_secs_f64().into()),
                    (
                        "error",
                        json!(h.last_error.lock().ok().and_then(|e| e.clone())),
                    ),
                ],
            );
        }
        health = Some(h);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let target = cfg.xenstore.clone();
    let watcher = discovery::spawn_watcher(
        move || open_xenstore(&target),
        cfg.scan_connections,
        cfg.backend_root.clone(),
        cfg.channel_names.clone(),
        stop.clone(),
        tx,
        log.clone(),
    )
    .map_err(DaemonError::Watcher)?;

    let mut tasks: HashMap<ChannelKey, JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(cfg.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changes = rx.recv() => {
                let Some(changes) = changes else {
                    log.error("discovery-stopped", &[]);
                    break;
                };
                for c in changes {
                    match c {
                        Change::Up(info) => {
                            log.info("channel-up", &[
                                ("domid", info.domid.into()),
                                ("devid", info.devid.into()),
                                ("vm", json!(info.vm_name)),
                                ("uuid", json!(info.vm_uuid)),
                                ("path", info.path.display().to_string().into()),
                            ]);
                            let key = info.key();
                            let h = tokio::spawn(session::run_channel(info, shared.clone()));
                            if let Some(old) = tasks.insert(key, h) {
                                old.abort();
                            }
                        }
                        Change::Down(key) => {
                            log.info("channel-down", &[("domid", key.0.into()), ("devid", key.1.into())]);
                            if let Some(h) = tasks.remove(&key) {
                                h.abort();
                                let _ = h.await;
                            }
                            if let Some(r) = shared.reporter.get() {
                                r.gone(key);
                            }
                            if let Ok(mut s) = shared.status.lock() {
                                s.remove(&key);
                            }
                        }
                        Change::Rejected(key, why) => {
                            log.warn("channel-rejected", &[
                                ("domid", key.0.into()),
                                ("devid", key.1.into()),
                                ("reason", why.clone().into()),
                            ]);
                            if let Some(h) = tasks.remove(&key) {
                                h.abort();
                            }
                            if let Some(r) = shared.reporter.get() {
                                r.gone(key);
                            }
                            if let Ok(mut s) = shared.status.lock() {
                                s.insert(key, VmStatus::rejected(key, why));
                            }
                        }
                    }
                }
            }
            conn = listener.accept() => {
                if let Ok((conn, _)) = conn {
                    tokio::spawn(control(conn, shared.clone(), cfg.policy_file.clone(), health.clone()));
                }
            }
            _ = tick.tick() => {
                let s = shared.clone();
                let p = cfg.policy_file.clone();
                let _ = tokio::task::spawn_blocking(move || reload(&s, p.as_ref())).await;
            }
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending().await,
                }
            } => {
                log.info("sighup", &[]);
                let s = shared.clone();
                let p = cfg.policy_file.clone();
                let _ = tokio::task::spawn_blocking(move || reload(&s, p.as_ref())).await;
            }
        }
    }
    log.info("stop", &[("channels", tasks.len().into())]);
    stop.store(true, Ordering::Relaxed);
    for (_, h) in tasks.drain() {
        h.abort();
    }
    drop(background);
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || watcher.join()).await;
    Ok(())
}

/// Raise `RLIMIT_NOFILE` to `want` (or as far as the hard limit allows, raising that too when
/// privileged); returns the soft limit now in force. The daemon holds one socket per VM channel
/// plus its xenstore connections, so a host with thousands of VMs needs far more than the
/// usual 1024.
pub fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit struct for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur >= want {
        return r.rlim_cur;
    }
    let new = libc::rlimit {
        rlim_cur: want,
        rlim_max: want.max(r.rlim_max),
    };
    // SAFETY: `new` is a valid rlimit struct; the call only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
        return new.rlim_cur;
    }
    let soft = libc::rlimit {
        rlim_cur: r.rlim_max.min(want),
        rlim_max: r.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        return soft.rlim_cur;
    }
    r.rlim_cur
}

/// Send one control command to a running daemon and return its JSON reply.
pub async fn control_request(socket: &std::path::Path, command: &str) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(format!("{command}\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    serde_json::from_slice(&buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_is_raised_within_the_hard_limit() {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `r` is a valid, writable rlimit struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
        let want = r.rlim_cur + 1;
        let got = raise_nofile(want);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
        assert_eq!(got, r.rlim_cur);
        assert!(got >= want || got == r.rlim_max, "{got} {r:?}");
        // Asking for less than what is in force changes nothing.
        assert_eq!(raise_nofile(1), got);
    }
}
