//! `xenplug-peer`: the dom0 side of xenplug's Xen PV channels.
//!
//! **Who calls it.** An administrator or orchestration tool (one-shot `send` / `query` against
//! one VM's channel socket), the init system (`daemon`, one process for every VM on the host),
//! operators and monitoring (`list`: every channel with its state, and what each guest reports
//! about itself — OS and addresses — when its agent sends `xenplug-guest-state` events). (The benchmark is a separate, unshipped program:
//! `dom0-peer/examples/peer_bench.rs`, run by `tools/bench-peer.sh`.)
//!
//! **argv** (these forms are an interface other tools rely on):
//!
//! ```text
//! xenplug-peer send  --socket PATH --config FILE|DIR [--timeout SECS] [--handshake-timeout SECS] [--max-frame BYTES]
//! xenplug-peer query --socket PATH CMD [--user NAME] [--args JSON] [--timeout SECS] [--handshake-timeout SECS] [--max-frame BYTES]
//! xenplug-peer daemon --store DIR|etcd://HOST:PORT[,HOST:PORT…]/PREFIX [--host NAME]
//!                     [--cacert FILE] [--cert FILE --key FILE] [--user NAME[:PASSWORD]] [--password PW]
//!                     [--dial-timeout SECS] [--lease-ttl SECS] [--status-queue N]
//!                     [--channel-name NAME]… [--policy FILE] [--control PATH]
//!                     [--xenstore PATH] [--backend-root PATH] [--log-level LEVEL] [--max-frame BYTES]
//!                     [--guest-rate BYTES_PER_SEC] [--log-burst LINES] [--log-interval SECS]
//!                     [--handshake-timeout SECS]
//!                     [--request-timeout SECS] [--apply-timeout SECS] [--workers N]
//! xenplug-peer list  [--control PATH] [--json]
//! xenplug-peer fleet-status --store etcd://HOST:PORT[,HOST:PORT…]/PREFIX [etcd options] [--json]
//! ```
//!
//! The etcd options take their defaults from etcdctl's environment: `ETCDCTL_CACERT`,
//! `ETCDCTL_CERT`, `ETCDCTL_KEY`, `ETCDCTL_USER`, `ETCDCTL_PASSWORD`, `ETCDCTL_DIAL_TIMEOUT`.
//! `etcds://` (or any of `--cacert`/`--cert`) means TLS; TLS needs `--cacert`.
//!
//! `CMD` is `ping`, `info`, `network`, `hostname`, `osinfo`, `time`, `ssh-keys` (with `--user`,
//! default `root`), `generation`, `guest-state`, `users`, `vcpus`, `fsinfo`, `disks`,
//! `timezone`, `load`, `routes`, or any full command name starting with `guest-`, `xenplug-` or
//! `__` (arguments from `--args`). `send` takes a canonical JSON document (`.json`) or a cloud-init
//! NoCloud seed directory (see `dom0-peer/README.md`). `--max-frame` bounds one frame from the
//! guest for every command (default 65536, the same bound for `send`, `query` and the daemon;
//! raise it for queries whose replies are large, such as `guest-file-read`).
//!
//! **Files.** Reads the channel socket (`--socket`; as a client — QEMU listens), the document
//! (`--config`), the store directory (`--store`: `<uuid|name>.json`, `<uuid|name>.nocloud/`,
//! `<uuid|name>.meta.toml`) or, with an etcd store, the keys `PREFIX/vms/<uuid>`,
//! `PREFIX/vms/<uuid>.meta` and `PREFIX/policy` (list, then watch) and writes
//! `PREFIX/status/<uuid>` under a lease of `--lease-ttl` seconds kept alive by the daemon
//! (`fleet-status` reads `PREFIX/status/` and `PREFIX/vms/`), the policy file (`--policy`); xenstore through `XENSTORED_PATH`,
//! `/run/xenstored/socket` or `/dev/xen/xenbus` unless `--xenstore` names a socket (reads
//! `/local/domain/0/backend/console/*/*/{name,connection,path,state,online}` and
//! `/local/domain/<domid>/{name,vm}`, writes nothing); creates the control socket
//! (`--control`, default `/run/xenplug-peer/control.sock`, mode 0600). Replies go to stdout as JSON;
//! diagnostics to stderr (the daemon: one JSON object per line). `SIGHUP` makes the daemon
//! re-read the store and policy; `SIGTERM`/`SIGINT` stop it.
//!
//! **Exit codes.** 0 success; 1 other error (I/O after connecting, channel closed, daemon
//! failure); 2 usage; 3 channel socket missing or nobody listening (ENOENT/ECONNREFUSED);
//! 4 nobody answered the handshake within the timeout; 5 the agent replied with an error;
//! 6 a request was not answered in time; 7 the applied generation does not match what was sent;
//! 8 invalid configuration document; 9 the daemon's control socket cannot be reached (`list`);
//! 10 the etcd store cannot be reached (`fleet-status`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

use xenplug_peer::cli::{Cli, Cmd, DaemonArgs, EtcdArgs, Timeouts};
use xenplug_peer::client::{self, exit, Client, ClientError};
use xenplug_peer::daemon::{self, FleetConfig, XenstoreTarget};
use xenplug_peer::etcd::{StoreSpec, WatchConfig};
use xenplug_peer::log::{Level, Logger};
use xenplug_peer::status::StatusConfig;
use xenplug_peer::{doc, wire};

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("xenplug-peer: {e}");
    ExitCode::from(e.exit_code())
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}

fn load_document(p: &Path) -> Result<doc::Document, ClientError> {
    let name = p.display().to_string();
    let r = if p.is_dir() {
        doc::parse_nocloud_dir(p)
    } else {
        std::fs::read(p)
            .map_err(|e| e.to_string())
            .and_then(|b| doc::parse_json(&b))
    };
    r.map_err(|e| ClientError::BadDocument(name, e))
}

async fn connect(socket: &Path, t: &Timeouts) -> Result<Client, ClientError> {
    let limits = wire::Limits {
        max_frame: t.max_frame.clamp(1024, 64 << 20),
        ..xenplug_channel::host::default_limits()
    };
    let mut c = Client::connect(socket, limits).await?;
    c.handshake(
        secs(t.handshake_timeout.unwrap_or(t.timeout)),
        Duration::from_secs(1),
    )
    .await?;
    Ok(c)
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn one_shot(cmd: Cmd) -> ExitCode {
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xenplug-peer: tokio runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    let r: Result<Value, ClientError> = rt.block_on(async {
        match cmd {
            Cmd::Send { socket, config, t } => {
                let d = load_document(&config)?;
                let mut c = connect(&socket, &t).await?;
                let reply = c.deliver(&d, secs(t.timeout)).await?;
                Ok(serde_json::json!({
                    "instance-id": d.instance_id,
                    "generation": d.generation,
                    "verified": true,
                    "reply": reply,
                }))
            }
            Cmd::Query {
                socket,
                cmd,
                user,
                args,
                t,
            } => {
                let Some(full) = client::resolve_query(&cmd) else {
                    return Err(ClientError::BadDocument(
                        "query".into(),
                        format!("unknown query {cmd:?}"),
                    ));
                };
                let arguments =
                    match (full, args) {
                        (wire::commands::GUEST_SSH_GET_AUTHORIZED_KEYS, None) => {
                            Some(serde_json::json!({ "username": user }))
                        }
                        (_, Some(a)) => Some(serde_json::from_str::<Value>(&a).map_err(|e| {
                            ClientError::BadDocument("--args".into(), e.to_string())
                        })?),
                        _ => None,
                    };
                let mut c = connect(&socket, &t).await?;
                c.execute(full, arguments.as_ref(), secs(t.timeout)).await
            }
            _ => unreachable!("not a one-shot command"),
        }
    });
    match r {
        Ok(v) => {
            print_json(&v);
            ExitCode::SUCCESS
        }
        Err(ClientError::BadDocument(what, e)) if what == "query" || what == "--args" => {
            eprintln!("xenplug-peer: {what}: {e}");
            ExitCode::from(exit::USAGE)
        }
        Err(e) => fail(&e),
    }
}

/// One line about the store: where documents come from and, for etcd, whether it answers.
fn store_line(s: &Value) -> Option<(bool, String)> {
    match s["kind"].as_str()? {
        "dir" => Some((
            true,
            format!(
                "store {}: {} documents",
                s["dir"].as_str().unwrap_or("-"),
                s["documents"]
            ),
        )),
        "etcd" => {
            let ok = s["connected"] == true && s["status_failing"] != true;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let since = now.saturating_sub(s["since"].as_u64().unwrap_or(now));
            let state = if s["connected"] == true {
                format!("connected for {since}s")
            } else {
                format!(
                    "UNREACHABLE for {since}s ({}); serving the last documents seen",
                    s["last_error"].as_str().unwrap_or("not reached yet")
                )
            };
            Some((
                ok,
                format!(
                    "store {}: {state}; {} documents at revision {}; {} status updates queued{}",
                    s["url"].as_str().unwrap_or("-"),
                    s["documents"],
                    s["revision"],
                    s["status_queued"],
                    if s["status_failing"] == true {
                        " (status writes failing, retried with backoff)"
                    } else {
                        ""
                    }
                ),
            ))
        }
        _ => None,
    }
}

fn list(control: &Path, json: bool) -> ExitCode {
    let r = runtime().and_then(|rt| {
        rt.block_on(async {
            let rows = daemon::control_request(control, "list").await?;
            let store = daemon::control_request(control, "store")
                .await
                .unwrap_or(Value::Null);
            Ok::<_, std::io::Error>((rows, store))
        })
    });
    let (v, store) = match r {
        Ok(v) => v,
        Err(e) => {
            eprintln!("xenplug-peer: control socket {}: {e}", control.display());
            return ExitCode::from(exit::DAEMON_UNREACHABLE);
        }
    };
    let line = store_line(&store);
    if json {
        // The array is the interface; a store in trouble is said on stderr.
        if let Some((false, l)) = &line {
            eprintln!("xenplug-peer: {l}");
        }
        print_json(&v);
        return ExitCode::SUCCESS;
    }
    // With an etcd store the table starts with the store's state (the directory store's table
    // is unchanged).
    if let (Some((_, l)), Some("etcd")) = (&line, store["kind"].as_str()) {
        println!("{l}");
    }
    println!(
        "{:>6} {:>3}  {:<20} {:<36} {:<12} {:>10} {:>9} {:>9}  {:<24} {:<32} LAST ERROR",
        "DOMID",
        "DEV",
        "NAME",
        "UUID",
        "STATE",
        "HANDSHAKE",
        "APPLIED",
        "WANTED",
        "OS",
        "ADDRESSES"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for r in v.as_array().into_iter().flatten() {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let n = |k: &str| r[k].as_u64().map_or("-".to_string(), |x| x.to_string());
        let hs = r["last_handshake"].as_u64().map_or("-".to_string(), |t| {
            format!("{}s ago", now.saturating_sub(t))
        });
        // What the guest says about itself: its OS and addresses (IPv4 first).
        let g = &r["guest"];
        let os = g["os-name"].as_str().unwrap_or("-");
        let mut addrs: Vec<&str> = Vec::new();
        for fam in ["ipv4", "ipv6"] {
            for i in g["interfaces"].as_array().into_iter().flatten() {
                addrs.extend(
                    i[fam]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str),
                );
            }
        }
        let addrs = if addrs.is_empty() {
            "-".to_string()
        } else {
            addrs.join(",")
        };
        println!(
            "{:>6} {:>3}  {:<20} {:<36} {:<12} {:>10} {:>9} {:>9}  {:<24} {:<32} {}",
            n("domid"),
            n("devid"),
            s("vm_name"),
            s("vm_uuid"),
            s("state"),
            hs,
            n("applied_generation"),
            n("desired_generation"),
            os,
            addrs,
            r["last_error"].as_str().unwrap_or("")
        );
    }
    ExitCode::SUCCESS
}

fn fleet_status(store: StoreSpec, etcd: EtcdArgs, json: bool) -> ExitCode {
    let StoreSpec::Etcd(url) = store else {
        eprintln!(
            "xenplug-peer: fleet-status needs an etcd store (--store etcd://HOST:PORT/PREFIX)"
        );
        return ExitCode::from(exit::USAGE);
    };
    let opts = match etcd.options(url) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xenplug-peer: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let r = runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(xenplug_peer::etcd::fleet_status(&opts)));
    let rows = match r {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xenplug-peer: etcd {}: {e}", opts.url.display());
            return ExitCode::from(exit::STORE_UNREACHABLE);
        }
    };
    if json {
        print_json(&Value::Array(rows));
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<36} {:<16} {:>6} {:<12} {:>7} {:>7}  {:<32} LAST ERROR",
        "UUID", "HOST", "DOMID", "STATE", "APPLIED", "WANTED", "ADDRESSES"
    );
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let n = |k: &str| r[k].as_u64().map_or("-".to_string(), |x| x.to_string());
        let mut addrs: Vec<&str> = Vec::new();
        for fam in ["ipv4", "ipv6"] {
            for i in r["guest"]["interfaces"].as_array().into_iter().flatten() {
                addrs.extend(
                    i[fam]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str),
                );
            }
        }
        println!(
            "{:<36} {:<16} {:>6} {:<12} {:>7} {:>7}  {:<32} {}",
            s("uuid"),
            s("host"),
            n("domid"),
            s("state"),
            n("applied_generation"),
            n("wanted_generation"),
            if addrs.is_empty() {
                "-".to_string()
            } else {
                addrs.join(",")
            },
            r["last_error"].as_str().unwrap_or("")
        );
    }
    ExitCode::SUCCESS
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn run_daemon(a: DaemonArgs) -> ExitCode {
    let DaemonArgs {
        store,
        host,
        etcd,
        lease_ttl,
        status_queue,
        channel_names,
        policy,
        control,
        xenstore,
        backend_root,
        log_level,
        max_frame,
        guest_rate,
        log_burst,
        log_interval,
        handshake_timeout,
        request_timeout,
        apply_timeout,
        workers,
    } = a;
    let Some(level) = Level::parse(&log_level) else {
        eprintln!("xenplug-peer: --log-level must be debug, info, warn or error");
        return ExitCode::from(exit::USAGE);
    };
    if !(log_interval.is_finite() && log_interval > 0.0) {
        eprintln!("xenplug-peer: --log-interval must be a number of seconds above 0");
        return ExitCode::from(exit::USAGE);
    }
    let log = Logger::stderr(level);
    let (store_dir, fleet) = match store {
        StoreSpec::Dir(d) => (d, None),
        StoreSpec::Etcd(url) => {
            let opts = match etcd.options(url) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("xenplug-peer: {e}");
                    return ExitCode::from(exit::USAGE);
                }
            };
            let host = host.unwrap_or_else(host_name);
            let mut status = StatusConfig::new(opts.clone(), host);
            status.lease_ttl = i64::from(lease_ttl.clamp(2, 3600));
            status.max_queue = status_queue.max(1);
            let fleet = FleetConfig {
                watch: WatchConfig {
                    etcd: opts,
                    // etcd 3.4 counts the rest of the range for every page: few large pages
                    // list a fleet much faster than many small ones (list_prefix keeps each
                    // page near 4 MiB whatever the documents' size).
                    page: 10_000,
                    policy_from_etcd: policy.is_none(),
                    backoff: (Duration::from_millis(100), Duration::from_secs(5)),
                },
                status,
                initial_list_wait: Duration::from_secs(10),
            };
            (std::path::PathBuf::new(), Some(fleet))
        }
    };
    daemon::raise_nofile(1 << 16);
    let mut cfg = daemon::Config::new(
        store_dir,
        channel_names.into_iter().collect::<BTreeSet<_>>(),
    );
    cfg.fleet = fleet;
    cfg.policy_file = policy;
    cfg.backend_root = backend_root;
    cfg.xenstore = match xenstore {
        Some(p) => XenstoreTarget::Socket(p),
        None => XenstoreTarget::Default,
    };
    cfg.limits.max_frame = max_frame.clamp(1024, 16 << 20);
    cfg.timing.handshake_timeout = secs(handshake_timeout);
    cfg.timing.request_timeout = secs(request_timeout.max(0.1));
    cfg.timing.apply_timeout = secs(apply_timeout.max(0.1));
    cfg.rates.bytes_per_sec = guest_rate.max(1024);
    cfg.rates.bytes_burst = cfg.rates.bytes_burst.max(guest_rate.max(1024) * 2);
    cfg.rates.log.burst = log_burst.max(1);
    cfg.rates.log.interval = Duration::from_secs_f64(log_interval.clamp(0.001, 86_400.0));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.clamp(1, 64))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            log.error("runtime", &[("error", e.to_string().into())]);
            return ExitCode::from(exit::OTHER);
        }
    };
    let r: anyhow::Result<()> = rt.block_on(async {
        if let Some(dir) = control.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A stale socket from a previous run: remove it only if nobody answers on it.
        if control.exists() && tokio::net::UnixStream::connect(&control).await.is_err() {
            let _ = std::fs::remove_file(&control);
        }
        let listener = tokio::net::UnixListener::bind(&control)
            .map_err(|e| anyhow::anyhow!("control socket {}: {e}", control.display()))?;
        // The inventory names every VM: only root (the daemon's user) may ask for it.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| anyhow::anyhow!("control socket {}: {e}", control.display()))?;
        }
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match term.as_mut() {
                        Some(t) => { t.recv().await; }
                        None => std::future::pending().await,
                    }
                } => {}
            }
        };
        let r = daemon::run(cfg, log.clone(), listener, shutdown).await;
        let _ = std::fs::remove_file(&control);
        r.map_err(anyhow::Error::from)
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log.error("fatal", &[("error", format!("{e:#}").into())]);
            ExitCode::from(exit::OTHER)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        c @ (Cmd::Send { .. } | Cmd::Query { .. }) => one_shot(c),
        Cmd::List { control, json } => list(&control, json),
        Cmd::FleetStatus { store, etcd, json } => fleet_status(store, etcd, json),
        Cmd::Daemon(a) => run_daemon(*a),
    }
}
