//! Shared helpers: a host with an embedded xenstored, a store directory, simulated guests and an
//! in-process daemon. Everything is owned by [`Host`] and cleaned up when it drops (also when a
//! test panics).

#![allow(dead_code)]

pub mod etcd;

use std::collections::BTreeSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use xenplug_peer::daemon::{self, Config, XenstoreTarget};
use xenplug_peer::log::{Level, Logger};
use xenplug_simguest::{self as simguest, GuestOptions, GuestState};
use xenplug_xenstore::XsOps;
use xenplug_xenstored::testing::TestDaemon;

pub const CHANNEL: &str = xenplug_channel::DEFAULT_CHANNEL_NAME;

pub fn uuid(i: u32) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

pub fn doc(name: &str, generation: u64) -> String {
    json!({"instance-id": format!("iid-{name}"), "generation": generation, "hostname": name})
        .to_string()
}

/// Write libxl's nodes for a domain with one channel (console devid 1).
pub fn add_domain(xs: &dyn XsOps, domid: u32, name: &str, uuid: &str, sock: &Path) {
    let home = format!("/local/domain/{domid}");
    xs.write(&format!("{home}/name"), name).unwrap();
    xs.write(&format!("{home}/vm"), &format!("/vm/{uuid}"))
        .unwrap();
    let be = format!("/local/domain/0/backend/console/{domid}/1");
    for (k, v) in [
        ("frontend-id", domid.to_string()),
        ("online", "1".into()),
        ("state", "4".into()),
        ("protocol", "vt100".into()),
        ("name", CHANNEL.into()),
        ("connection", "socket".into()),
        ("path", sock.display().to_string()),
    ] {
        xs.write(&format!("{be}/{k}"), &v).unwrap();
    }
}

pub fn remove_domain(xs: &dyn XsOps, domid: u32) {
    xs.rm(&format!("/local/domain/0/backend/console/{domid}"))
        .unwrap();
    xs.rm(&format!("/local/domain/{domid}")).unwrap();
}

pub struct Host {
    pub xsd: TestDaemon,
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub control: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub log: Logger,
    daemon: Option<(JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>,
    guests: Vec<JoinHandle<()>>,
}

impl Host {
    pub fn new() -> Host {
        let dir = tempfile::Builder::new().prefix("xpp-").tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let (log, logs) = Logger::capture(Level::Debug);
        Host {
            xsd: xenplug_xenstored::testing::spawn_daemon(),
            control: dir.path().join("control.sock"),
            store,
            dir,
            logs,
            log,
            daemon: None,
            guests: Vec::new(),
        }
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    pub fn config(&self) -> Config {
        let mut c = Config::new(&self.store, BTreeSet::from([CHANNEL.to_string()]));
        c.xenstore = XenstoreTarget::Socket(self.xsd.socket().to_path_buf());
        c.reload_interval = Duration::from_millis(200);
        c.timing.sync_retry = Duration::from_millis(200);
        c.timing.backoff_max = Duration::from_millis(500);
        c.timing.request_timeout = Duration::from_secs(3);
        c.timing.retry_failed = Duration::from_secs(1);
        c
    }

    /// The daemon's configuration with an etcd store at `url`, standing for host `host`; short
    /// timings, a lease of 5 s, and list pages of 2 keys (so that paging is exercised).
    pub fn etcd_config(&self, url: &str, host: &str) -> Config {
        use xenplug_peer::etcd::{parse_store, EtcdOptions, StoreSpec, WatchConfig};
        use xenplug_peer::status::StatusConfig;
        let mut c = self.config();
        let StoreSpec::Etcd(u) = parse_store(url).unwrap() else {
            panic!("{url} is not an etcd URL")
        };
        let mut opts = EtcdOptions::new(u);
        opts.request_timeout = Duration::from_secs(3);
        let mut status = StatusConfig::new(opts.clone(), host.into());
        status.lease_ttl = 5;
        status.flush_delay = Duration::from_millis(50);
        status.backoff = (Duration::from_millis(50), Duration::from_millis(500));
        c.fleet = Some(daemon::FleetConfig {
            watch: WatchConfig {
                etcd: opts,
                page: 2,
                policy_from_etcd: true,
                backoff: (Duration::from_millis(50), Duration::from_millis(500)),
            },
            status,
            initial_list_wait: Duration::from_secs(10),
        });
        c
    }

    /// The daemon's `store` state.
    pub async fn store_state(&self) -> Value {
        daemon::control_request(&self.control, "store")
            .await
            .unwrap_or(Value::Null)
    }

    /// Start the daemon in this runtime.
    pub fn start(&mut self, cfg: Config) {
        let _ = std::fs::remove_file(&self.control);
        let listener = UnixListener::bind(&self.control).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let log = self.log.clone();
        let h = tokio::spawn(async move {
            daemon::run(cfg, log, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        self.daemon = Some((h, tx));
    }

    pub async fn stop(&mut self) {
        if let Some((h, tx)) = self.daemon.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }

    /// A simulated guest listening on `sock`.
    pub fn guest(&mut self, sock: &Path, opts: GuestOptions) -> Arc<GuestState> {
        let st = Arc::new(GuestState::default());
        self.guest_with(sock, opts, st.clone());
        st
    }

    pub fn guest_with(&mut self, sock: &Path, opts: GuestOptions, st: Arc<GuestState>) -> usize {
        let _ = std::fs::remove_file(sock);
        let l = UnixListener::bind(sock).unwrap();
        self.guests.push(tokio::spawn(simguest::serve(l, opts, st)));
        self.guests.len() - 1
    }

    /// Stop a guest (its QEMU goes away with the socket).
    pub fn kill_guest(&mut self, idx: usize, sock: &Path) {
        self.guests[idx].abort();
        let _ = std::fs::remove_file(sock);
    }

    pub async fn list(&self) -> Vec<Value> {
        // Empty while the daemon is not up yet.
        daemon::control_request(&self.control, "list")
            .await
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    pub async fn row(&self, domid: u32) -> Option<Value> {
        self.list().await.into_iter().find(|r| r["domid"] == domid)
    }

    pub fn log_lines(&self, event: &str) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for g in &self.guests {
            g.abort();
        }
        if let Some((h, tx)) = self.daemon.take() {
            let _ = tx.send(());
            h.abort();
        }
    }
}

/// Poll `f` until it returns `Some` or `timeout` passes (then panic with `what`).
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `domid`'s row has `state` and return it.
pub async fn wait_state(h: &Host, domid: u32, state: &str, timeout: Duration) -> Value {
    wait_for(
        timeout,
        &format!("domain {domid} in state {state}"),
        || async { h.row(domid).await.filter(|r| r["state"] == state) },
    )
    .await
}

/// A hand-driven agent on `l`: accepts the daemon's connection and answers the handshake, the
/// guest-state subscription (not supported) and the generation query with `(iid, generation)`,
/// as an agent that already has that document; returns the connection once the query is
/// answered, for the test to send guest events on.
pub async fn manual_agent(l: &UnixListener, iid: &str, generation: u64) -> tokio::net::UnixStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Duration::from_secs(30);
    let (mut conn, _) = tokio::time::timeout(t, l.accept()).await.unwrap().unwrap();
    let mut dec = xenplug_channel::Decoder::default();
    let mut buf = vec![0u8; 4096];
    let mut answered_query = false;
    while !answered_query {
        let n = tokio::time::timeout(t, conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the daemon closed the channel during the handshake");
        for ev in dec.feed(&buf[..n]) {
            let xenplug_channel::Event::Frame(f) = ev else {
                continue;
            };
            let reply = match f["execute"].as_str() {
                Some("guest-sync-delimited") => {
                    format!("\u{ff}{{\"return\": {}}}\n", f["arguments"]["id"])
                }
                // An agent without guest-state reports says so.
                Some("xenplug-subscribe-guest-state") => format!(
                    "{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"no\"}}, \"id\": {}}}\n",
                    f["id"]
                ),
                Some("xenplug-get-config-generation") => {
                    answered_query = true;
                    format!(
                        "{{\"return\": {{\"instance-id\": {}, \"generation\": {generation}}}, \"id\": {}}}\n",
                        json!(iid),
                        f["id"]
                    )
                }
                _ => continue,
            };
            let bytes: Vec<u8> = reply
                .chars()
                .map(|c| if c == '\u{ff}' { 0xFF } else { c as u8 })
                .collect();
            conn.write_all(&bytes).await.unwrap();
        }
    }
    conn
}

pub fn guest_opts() -> GuestOptions {
    GuestOptions::default()
}

/// QEMU's side of a channel, emulated in-process: a pty whose slave plays the guest's
/// `/dev/hvcN` (it persists across dom0 connections, as the hvc does) and a listening Unix
/// socket serving one client at a time, bytes copied both ways. Guest output written while no
/// client is connected waits in the pty, as QEMU buffers it.
pub struct PtyChannel {
    pub tty: PathBuf,
    pub sock: PathBuf,
    task: JoinHandle<()>,
    _slave: std::os::fd::OwnedFd,
}

impl PtyChannel {
    pub fn new(dir: &Path, tag: &str) -> PtyChannel {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: posix_openpt returns a new fd or -1; we take ownership of it at once.
        let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK) };
        assert!(m >= 0, "posix_openpt");
        // SAFETY: `m` is a valid fd owned by nobody else.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: `m` is a pty master; `name` is a writable buffer of the given length.
        unsafe {
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        }
        // SAFETY: ptsname_r wrote a NUL-terminated string into `name`.
        let slave_path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_str()
            .unwrap()
            .to_string();
        // Keep the slave open so the pty lives while the agent re-opens it.
        let slave: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&slave_path)
            .unwrap()
            .into();
        let tty = dir.join(format!("hvc-{tag}"));
        let sock = dir.join(format!("{tag}.sock"));
        std::os::unix::fs::symlink(&slave_path, &tty).unwrap();
        let listener = UnixListener::bind(&sock).unwrap();
        // SAFETY: `master` is an OwnedFd moved into the AsyncFd: it stays open and is the same
        // descriptor for the AsyncFd's whole life.
        let master = unsafe { tokio::io::unix::AsyncFd::register(master) }.unwrap();
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0u8; 4096];
            let mut from_client = vec![0u8; 4096];
            while let Ok((mut c, _)) = listener.accept().await {
                loop {
                    tokio::select! {
                        r = c.read(&mut from_client) => {
                            let n = match r { Ok(0) | Err(_) => break, Ok(n) => n };
                            let mut off = 0;
                            while off < n {
                                let Ok(mut g) = master.writable().await else { return };
                                let w = g.try_io(|fd| {
                                    // SAFETY: writing from a valid buffer to a valid fd.
                                    let r = unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(fd.get_ref()), from_client[off..n].as_ptr().cast(), n - off) };
                                    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as usize) }
                                });
                                match w {
                                    Ok(Ok(k)) => off += k,
                                    Ok(Err(_)) => break,
                                    Err(_would_block) => continue,
                                }
                            }
                        }
                        g = master.readable() => {
                            let Ok(mut g) = g else { return };
                            let r = g.try_io(|fd| {
                                // SAFETY: reading into a valid buffer from a valid fd.
                                let r = unsafe { libc::read(std::os::fd::AsRawFd::as_raw_fd(fd.get_ref()), buf.as_mut_ptr().cast(), buf.len()) };
                                if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as usize) }
                            });
                            match r {
                                Ok(Ok(n)) if n > 0 => {
                                    if c.write_all(&buf[..n]).await.is_err() { break }
                                }
                                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                                Err(_would_block) => {}
                            }
                        }
                    }
                }
            }
        });
        PtyChannel {
            tty,
            sock,
            task,
            _slave: slave,
        }
    }
}

impl Drop for PtyChannel {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.sock);
        let _ = std::fs::remove_file(&self.tty);
    }
}
