//! The fleet store: VM documents from etcd, the Kubernetes way (list once, then watch from the
//! next revision), for a daemon that serves the VMs running on its own host.
//!
//! ```text
//! PREFIX/vms/<uuid>        the VM's document: the canonical JSON the directory store accepts,
//!                          or a NoCloud seed as a JSON object of the three files
//!                          ({"meta-data": …, "user-data": …, "network-config": …, "generation": N})
//! PREFIX/vms/<uuid>.meta   optional: {"class": "web", "flags": {"guest-log": true}} (JSON or TOML)
//! PREFIX/policy            optional: the policy for guest-originated requests (the policy file's
//!                          syntax; `--policy FILE` takes precedence)
//! PREFIX/status/<uuid>     written by the host running the VM (see [`crate::status`])
//! ```
//!
//! `PREFIX` is the path of the store URL, leading slash included: `etcd://h1:2379,h2:2379/xenplug`
//! puts documents at `/xenplug/vms/<uuid>`.
//!
//! The watcher ([`run_watcher`]) lists `PREFIX/vms/` page by page (pages of about 4 MiB) at one
//! revision, reads `PREFIX/policy` at that revision, then watches both from the next revision.
//! After a disconnect it resumes each watch from the last revision it saw; when that revision
//! has been compacted meanwhile (the watch is cancelled with a `compact_revision`) it lists again
//! and reports what changed. While etcd cannot be reached the documents already seen stay in
//! force.
//!
//! Documents are kept as the bytes etcd holds and parsed once, when a VM of this host first
//! looks one up: a host serving 10 000 VMs in a fleet of 100 000 parses its own, not the fleet's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, SortOrder, SortTarget, TlsOptions,
    WatchOptions,
};
use serde_json::{json, Value};

use crate::doc::{self, Document};
use crate::policy::Policy;
use crate::session::Shared;
use crate::store::{valid_key, Lookup, Meta};

/// An `etcd://` (or `etcds://`, TLS) store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `host:port` of each member, as given.
    pub endpoints: Vec<String>,
    /// The key prefix, with its leading slash and without a trailing one (`/xenplug`).
    pub prefix: String,
    /// `etcds://`: TLS.
    pub tls: bool,
}

impl EtcdUrl {
    /// The URL as given (normalised).
    pub fn display(&self) -> String {
        format!(
            "{}://{}{}",
            if self.tls { "etcds" } else { "etcd" },
            self.endpoints.join(","),
            self.prefix
        )
    }

    /// `PREFIX/vms/`.
    pub fn vms_prefix(&self) -> String {
        format!("{}/vms/", self.prefix)
    }

    /// `PREFIX/policy`.
    pub fn policy_key(&self) -> String {
        format!("{}/policy", self.prefix)
    }

    /// `PREFIX/status/`.
    pub fn status_prefix(&self) -> String {
        format!("{}/status/", self.prefix)
    }
}

/// What `--store` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// A directory (the embedded default).
    Dir(PathBuf),
    /// An etcd cluster.
    Etcd(EtcdUrl),
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::Dir(p) => write!(f, "{}", p.display()),
            StoreSpec::Etcd(u) => write!(f, "{}", u.display()),
        }
    }
}

const URL_FORM: &str = "etcd://HOST:PORT[,HOST:PORT…]/PREFIX";

fn check_endpoint(ep: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = ep.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("endpoint {ep:?}: an IPv6 address is written [ADDR]:PORT"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("endpoint {ep:?}: {h:?} is not an IPv6 address"))?;
        (h, p)
    } else {
        ep.rsplit_once(':')
            .ok_or_else(|| format!("endpoint {ep:?} has no port (HOST:PORT)"))?
    };
    if host.is_empty() {
        return Err(format!("endpoint {ep:?} has no host"));
    }
    if !ep.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!(
            "endpoint {ep:?}: {host:?} is not a host name or address"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "endpoint {ep:?}: port {port:?} is not a number from 1 to 65535"
        )),
    }
}

/// Parse `--store`: a directory, or `etcd://HOST:PORT[,HOST:PORT…]/PREFIX` (`etcds://` for TLS).
pub fn parse_store(s: &str) -> Result<StoreSpec, String> {
    if s.is_empty() {
        return Err(format!("empty store: give a directory or {URL_FORM}"));
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Ok(StoreSpec::Dir(PathBuf::from(s)));
    };
    let tls = match scheme {
        "etcd" => false,
        "etcds" => true,
        other => {
            return Err(format!(
                "unsupported store URL scheme {other:?}: give a directory, {URL_FORM} or etcds://… (TLS)"
            ))
        }
    };
    if rest.contains(['?', '#']) {
        return Err(format!(
            "{s:?}: a store URL has no query or fragment ({URL_FORM})"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => {
            return Err(format!(
                "{s:?} has no /PREFIX: documents live under PREFIX/vms/ ({URL_FORM})"
            ))
        }
    };
    if authority.contains('@') {
        return Err(format!(
            "{s:?}: no credentials in the URL; use --user or ETCDCTL_USER/ETCDCTL_PASSWORD"
        ));
    }
    if authority.is_empty() {
        return Err(format!("{s:?} names no etcd endpoint ({URL_FORM})"));
    }
    let mut endpoints = Vec::new();
    for ep in authority.split(',') {
        if ep.is_empty() {
            return Err(format!("{s:?}: empty endpoint in the list ({URL_FORM})"));
        }
        check_endpoint(ep)?;
        endpoints.push(ep.to_string());
    }
    let prefix = path.trim_end_matches('/');
    if prefix.is_empty() {
        return Err(format!(
            "{s:?}: PREFIX is empty; give the key prefix the fleet's documents live under, e.g. {}/xenplug",
            &s[..s.len() - path.len()]
        ));
    }
    for seg in prefix[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!(
                "{s:?}: PREFIX {prefix:?} has an empty, `.` or `..` component"
            ));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "{s:?}: PREFIX {prefix:?} may only hold letters, digits, `.`, `_`, `-` and `/`"
            ));
        }
    }
    Ok(StoreSpec::Etcd(EtcdUrl {
        endpoints,
        prefix: prefix.to_string(),
        tls,
    }))
}

/// How to reach the cluster: the URL and what etcdctl users pass as `--cacert`, `--cert`,
/// `--key`, `--user` (or `ETCDCTL_*`).
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// The URL.
    pub url: EtcdUrl,
    /// CA bundle that signed the members' certificates (turns TLS on).
    pub cacert: Option<PathBuf>,
    /// Client certificate (with `key`; turns TLS on).
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
    /// `NAME` or `NAME:PASSWORD`.
    pub user: Option<String>,
    /// Password when `user` has none.
    pub password: Option<String>,
    /// Time to establish a connection.
    pub dial_timeout: Duration,
    /// Time for one request.
    pub request_timeout: Duration,
}

impl EtcdOptions {
    /// Options with no TLS and no user.
    pub fn new(url: EtcdUrl) -> Self {
        EtcdOptions {
            url,
            cacert: None,
            cert: None,
            key: None,
            user: None,
            password: None,
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// True when the connection uses TLS.
    pub fn tls(&self) -> bool {
        self.url.tls || self.cacert.is_some() || self.cert.is_some()
    }

    /// Check what can be checked before connecting (usage errors).
    pub fn check(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("--cert and --key go together (ETCDCTL_CERT, ETCDCTL_KEY)".into());
        }
        if self.tls() && self.cacert.is_none() {
            return Err(
                "TLS needs --cacert (ETCDCTL_CACERT): the CA that signed the etcd members' certificates"
                    .into(),
            );
        }
        if let Some(u) = &self.user {
            if u.is_empty() || u.starts_with(':') {
                return Err("--user needs a user name (NAME or NAME:PASSWORD)".into());
            }
            if !u.contains(':') && self.password.is_none() {
                return Err(format!(
                    "--user {u}: no password (give NAME:PASSWORD, --password or ETCDCTL_PASSWORD)"
                ));
            }
        }
        Ok(())
    }

    fn credentials(&self) -> Option<(String, String)> {
        let u = self.user.as_ref()?;
        Some(match u.split_once(':') {
            Some((n, p)) => (n.to_string(), p.to_string()),
            None => (u.clone(), self.password.clone().unwrap_or_default()),
        })
    }
}

/// Connect a client (lazily: only an authenticating client talks to etcd here).
pub async fn connect(o: &EtcdOptions) -> Result<Client, String> {
    o.check()?;
    // etcd refuses HTTP/2 pings more often than every 5 s (--grpc-keepalive-min-time).
    let mut co = ConnectOptions::new()
        .with_require_leader(true)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_connect_timeout(o.dial_timeout)
        .with_auto_token_refresh(true);
    let tls = o.tls();
    if tls {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut t = TlsOptions::new();
        if let Some(ca) = &o.cacert {
            t = t.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(c), Some(k)) = (&o.cert, &o.key) {
            t = t.identity(Identity::from_pem(read(c)?, read(k)?));
        }
        co = co.with_tls(t);
    }
    if let Some((n, p)) = o.credentials() {
        co = co.with_user(n, p);
    }
    let scheme = if tls { "https://" } else { "http://" };
    let eps: Vec<String> = o
        .url
        .endpoints
        .iter()
        .map(|e| format!("{scheme}{e}"))
        .collect();
    tokio::time::timeout(o.request_timeout, Client::connect(eps, Some(co)))
        .await
        .map_err(|_| {
            format!(
                "no answer from {} within {:?}",
                o.url.display(),
                o.request_timeout
            )
        })?
        .map_err(|e| e.to_string())
}

/// Counts of the requests a daemon made to etcd (`summary`'s `store.requests`).
#[derive(Debug, Default)]
pub struct Requests {
    /// Range requests (list pages, the policy).
    pub range: AtomicU64,
    /// Watch streams opened.
    pub watch: AtomicU64,
    /// Transactions (batched status writes).
    pub txn: AtomicU64,
    /// Lease grants and revocations.
    pub lease: AtomicU64,
    /// Lease keep-alive messages.
    pub keepalive: AtomicU64,
    /// Status keys written (puts inside transactions).
    pub status_puts: AtomicU64,
    /// Status keys deleted.
    pub status_deletes: AtomicU64,
}

impl Requests {
    fn json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "range": g(&self.range),
            "watch": g(&self.watch),
            "txn": g(&self.txn),
            "lease": g(&self.lease),
            "keepalive": g(&self.keepalive),
            "total": g(&self.range) + g(&self.watch) + g(&self.txn) + g(&self.lease) + g(&self.keepalive),
            "status_puts": g(&self.status_puts),
            "status_deletes": g(&self.status_deletes),
        })
    }
}

/// What the daemon knows about its link to etcd (for `list`, `summary` and the log).
#[derive(Debug, Default)]
pub struct Health {
    /// The URL, for messages.
    pub url: String,
    /// The document watch is established.
    pub connected: AtomicBool,
    /// A list completed at least once.
    pub listed: AtomicBool,
    /// Notified when the first list completed (the status writer waits for it).
    pub list_done: tokio::sync::Notify,
    /// Seconds since the epoch of the last change of `connected`.
    pub since: AtomicU64,
    /// The last revision seen on `PREFIX/vms/`.
    pub revision: AtomicI64,
    /// Full lists done (the first, and one after each compaction that outran a disconnect).
    pub lists: AtomicU64,
    /// Watches found compacted on resume.
    pub compacted: AtomicU64,
    /// The last connection error.
    pub last_error: Mutex<Option<String>>,
    /// Status writer: entries waiting to be written.
    pub status_queued: AtomicU64,
    /// Status writer: entries in the transaction on its way.
    pub status_inflight: AtomicU64,
    /// Status writer: the last write failed (etcd unreachable for status).
    pub status_failing: AtomicBool,
    /// Requests made.
    pub requests: Requests,
}

/// A spawned task that ends with its owner (dropping a tokio `JoinHandle` would detach it).
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Health {
    /// A fresh record for `url`.
    pub fn new(url: String) -> Self {
        Health {
            url,
            since: AtomicU64::new(now_secs()),
            ..Health::default()
        }
    }

    /// As JSON (the control socket's `store` and `summary.store`).
    pub fn json(&self) -> Value {
        json!({
            "kind": "etcd",
            "url": self.url,
            "connected": self.connected.load(Ordering::Relaxed),
            "listed": self.listed.load(Ordering::Relaxed),
            "since": self.since.load(Ordering::Relaxed),
            "revision": self.revision.load(Ordering::Relaxed),
            "lists": self.lists.load(Ordering::Relaxed),
            "compacted": self.compacted.load(Ordering::Relaxed),
            "last_error": self.last_error.lock().ok().and_then(|e| e.clone()),
            "status_queued": self.status_queued.load(Ordering::Relaxed),
            "status_inflight": self.status_inflight.load(Ordering::Relaxed),
            "status_failing": self.status_failing.load(Ordering::Relaxed),
            "requests": self.requests.json(),
        })
    }
}

/// One document as etcd holds it, parsed on first use.
#[derive(Debug)]
struct Raw {
    rev: i64,
    bytes: Box<[u8]>,
    parsed: OnceLock<Result<Arc<Document>, String>>,
}

/// The documents seen in etcd (what `PREFIX/vms/` held at the last revision seen).
#[derive(Debug)]
pub struct EtcdDocs {
    url: EtcdUrl,
    docs: HashMap<String, Raw>,
    metas: HashMap<String, (i64, Result<Arc<Meta>, String>)>,
    /// Set once a list completed.
    pub listed: bool,
    /// Increases on every change.
    pub epoch: u64,
    /// Where invalid documents are reported the first time a VM of this host looks them up.
    log: crate::log::Logger,
}

/// One change seen on `PREFIX/vms/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocEvent {
    /// `key` holds `value` since `rev`.
    Put {
        /// The key below `PREFIX/vms/`.
        key: String,
        /// Its value.
        value: Vec<u8>,
        /// Its mod revision.
        rev: i64,
    },
    /// `key` was deleted.
    Delete {
        /// The key below `PREFIX/vms/`.
        key: String,
    },
}

/// Parse a metadata entry: JSON (`{"class": …, "flags": {…}}`) or TOML, as in `<key>.meta.toml`.
pub fn parse_meta(bytes: &[u8]) -> Result<Meta, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

impl EtcdDocs {
    /// No documents yet.
    pub fn new(url: EtcdUrl, log: crate::log::Logger) -> Self {
        EtcdDocs {
            url,
            docs: HashMap::new(),
            metas: HashMap::new(),
            listed: false,
            epoch: 0,
            log,
        }
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Where documents come from, for messages.
    pub fn describe(&self) -> String {
        format!("{}{}", self.url.display(), "/vms/")
    }

    /// Apply one change; true when something changed.
    pub fn apply(&mut self, ev: DocEvent) -> bool {
        match ev {
            DocEvent::Put { key, value, rev } => {
                if let Some(stem) = key.strip_suffix(".meta") {
                    if !valid_key(stem) {
                        return false;
                    }
                    let m = parse_meta(&value).map(Arc::new);
                    if let Err(e) = &m {
                        self.log.warn(
                            "store-invalid-document",
                            &[
                                ("key", format!("{}{key}", self.url.vms_prefix()).into()),
                                ("error", e.clone().into()),
                            ],
                        );
                    }
                    self.metas.insert(stem.to_string(), (rev, m));
                    return true;
                }
                if !valid_key(&key) {
                    return false;
                }
                if self.docs.get(&key).is_some_and(|r| r.rev == rev) {
                    return false;
                }
                self.docs.insert(
                    key,
                    Raw {
                        rev,
                        bytes: value.into_boxed_slice(),
                        parsed: OnceLock::new(),
                    },
                );
                true
            }
            DocEvent::Delete { key } => match key.strip_suffix(".meta") {
                Some(stem) => self.metas.remove(stem).is_some(),
                None => self.docs.remove(&key).is_some(),
            },
        }
    }

    /// Replace everything with a fresh list; returns how many keys changed.
    pub fn replace(&mut self, all: Vec<(String, Vec<u8>, i64)>) -> usize {
        let mut seen = std::collections::HashSet::with_capacity(all.len());
        let mut changed = 0;
        for (key, value, rev) in all {
            seen.insert(key.clone());
            if self.apply(DocEvent::Put { key, value, rev }) {
                changed += 1;
            }
        }
        let gone: Vec<String> = self
            .docs
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .chain(
                self.metas
                    .keys()
                    .map(|k| format!("{k}.meta"))
                    .filter(|k| !seen.contains(k)),
            )
            .collect();
        for key in gone {
            if self.apply(DocEvent::Delete { key }) {
                changed += 1;
            }
        }
        self.listed = true;
        changed
    }

    /// The document for a VM: by UUID first, then by name (as in the directory store).
    pub fn lookup(&self, uuid: Option<&str>, name: Option<&str>) -> Lookup {
        for k in uuid.into_iter().chain(name).filter(|k| valid_key(k)) {
            let Some(raw) = self.docs.get(k) else {
                continue;
            };
            let mut first = false;
            let parsed = raw.parsed.get_or_init(|| {
                first = true;
                doc::parse_json_or_nocloud(&raw.bytes).map(Arc::new)
            });
            let file = format!("{}{k} (revision {})", self.url.vms_prefix(), raw.rev);
            return match parsed {
                Ok(d) => Lookup::Found {
                    doc: d.clone(),
                    key: k.to_string(),
                },
                Err(error) => {
                    if first {
                        self.log.warn(
                            "store-invalid-document",
                            &[
                                ("key", file.clone().into()),
                                ("error", error.clone().into()),
                            ],
                        );
                    }
                    Lookup::Invalid {
                        file,
                        error: error.clone(),
                    }
                }
            };
        }
        Lookup::Missing
    }

    /// The policy metadata for a VM (UUID first, then name).
    pub fn meta(&self, uuid: Option<&str>, name: Option<&str>) -> Arc<Meta> {
        for k in uuid.into_iter().chain(name).filter(|k| valid_key(k)) {
            if let Some((_, Ok(m))) = self.metas.get(k) {
                return m.clone();
            }
        }
        Arc::new(Meta::default())
    }
}

/// The largest gRPC message accepted from etcd (a list page, a watch response). tonic's default
/// of 4 MiB is less than a page of documents near their 1 MiB bound, or a resumed watch
/// catching up on a few of them; etcd is trusted, its pages are sized below.
pub const MAX_RESPONSE: usize = 256 << 20;

/// A list page aims at this many bytes: the page's key count follows the documents' size.
pub const PAGE_BYTES: usize = 4 << 20;

fn too_large(e: &etcd_client::Error) -> bool {
    e.to_string().contains("message length too large")
}

/// Read every key below `prefix` at one revision, page by page; returns the keys (without the
/// prefix), values and mod revisions, and the revision. A page holds at most `page` keys and
/// about [`PAGE_BYTES`] (the count follows the mean size seen so far, from a first page of at
/// most 128 keys); a page still too large for one message is asked again at half the count.
pub async fn list_prefix(
    client: &Client,
    prefix: &str,
    keys_only: bool,
    page: i64,
    timeout: Duration,
    requests: Option<&Requests>,
) -> Result<(Vec<(String, Vec<u8>, i64)>, i64), String> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_RESPONSE);
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut out = Vec::new();
    let page = page.max(1);
    // The first page is small: nothing is known of the documents' size yet (etcd takes values
    // up to 1.5 MiB by default, so 128 of them fit in one message).
    let mut limit = page.min(128);
    let (mut seen_bytes, mut seen_keys) = (0usize, 0usize);
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(limit)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if keys_only {
            opts = opts.with_keys_only();
        }
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        if let Some(r) = requests {
            r.range.fetch_add(1, Ordering::Relaxed);
        }
        let resp = match tokio::time::timeout(timeout, kv.get(from.clone(), Some(opts)))
            .await
            .map_err(|_| format!("list of {prefix}: no answer within {timeout:?}"))?
        {
            Ok(r) => r,
            Err(e) if too_large(&e) && limit > 1 => {
                limit = (limit / 2).max(1);
                continue;
            }
            Err(e) => return Err(format!("list of {prefix}: {e}")),
        };
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let more = resp.more();
        let mut last = None;
        for kv in resp.kvs() {
            seen_bytes += kv.key().len() + kv.value().len();
            seen_keys += 1;
            last = Some(kv.key().to_vec());
            let Ok(k) = std::str::from_utf8(kv.key()) else {
                continue;
            };
            let Some(rel) = k.strip_prefix(prefix) else {
                continue;
            };
            out.push((rel.to_string(), kv.value().to_vec(), kv.mod_revision()));
        }
        if let Some(mean) = seen_bytes.checked_div(seen_keys) {
            limit = ((PAGE_BYTES / mean.max(1)) as i64).clamp(1, page);
        }
        match (more, last) {
            (true, Some(mut l)) => {
                l.push(0);
                from = l;
            }
            _ => break,
        }
    }
    Ok((out, revision))
}

/// The end of the range of keys starting with `p`.
pub fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What the watcher keeps between connections.
#[derive(Debug, Default)]
struct Cursor {
    /// A list is needed (first start, or a watch start revision was compacted).
    need_list: bool,
    /// Last revision seen on `PREFIX/vms/`.
    vms: i64,
    /// Last revision seen on `PREFIX/policy`.
    policy: i64,
}

fn set_policy(shared: &Shared, text: Option<&[u8]>, rev: i64) {
    let new = match text {
        None => Ok(Policy::deny_all()),
        Some(b) => std::str::from_utf8(b)
            .map_err(|e| e.to_string())
            .and_then(|t| Policy::parse(t).map_err(|e| e.to_string())),
    };
    match new {
        Ok(p) => {
            let mut cur = shared.policy.write().unwrap_or_else(|e| e.into_inner());
            if **cur != p {
                shared.log.info(
                    "policy-loaded",
                    &[("rules", p.len().into()), ("revision", rev.into())],
                );
                *cur = Arc::new(p);
            }
        }
        Err(e) => shared.log.error(
            "policy-invalid",
            &[("error", e.into()), ("revision", rev.into())],
        ),
    }
}

fn with_docs<R>(shared: &Shared, f: impl FnOnce(&mut EtcdDocs) -> R) -> Option<R> {
    let mut store = shared.store.write().unwrap_or_else(|e| e.into_inner());
    match &mut *store {
        crate::store::Documents::Etcd(d) => Some(f(d)),
        crate::store::Documents::Dir(_) => None,
    }
}

fn bump(shared: &Shared) {
    let epoch = with_docs(shared, |d| {
        d.epoch += 1;
        d.epoch
    });
    if let Some(e) = epoch {
        let _ = shared.store_epoch.send(e);
    }
}

/// How the watcher behaves.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Connection.
    pub etcd: EtcdOptions,
    /// Keys per list page.
    pub page: i64,
    /// Take the policy from `PREFIX/policy` (false when `--policy FILE` is given).
    pub policy_from_etcd: bool,
    /// Shortest and longest wait between reconnection attempts.
    pub backoff: (Duration, Duration),
}

async fn list_all(
    client: &Client,
    cfg: &WatchConfig,
    shared: &Shared,
    health: &Health,
    cur: &mut Cursor,
) -> Result<(), String> {
    let url = &cfg.etcd.url;
    let (all, rev) = list_prefix(
        client,
        &url.vms_prefix(),
        false,
        cfg.page,
        cfg.etcd.request_timeout * 4,
        Some(&health.requests),
    )
    .await?;
    let n = all.len();
    let changed = with_docs(shared, |d| d.replace(all)).unwrap_or(0);
    if cfg.policy_from_etcd {
        let mut kv = client.kv_client();
        health.requests.range.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(
            cfg.etcd.request_timeout,
            kv.get(url.policy_key(), Some(GetOptions::new().with_revision(rev))),
        )
        .await
        .map_err(|_| "policy: no answer".to_string())?
        .map_err(|e| format!("policy: {e}"))?;
        set_policy(shared, r.kvs().first().map(|kv| kv.value()), rev);
    }
    cur.vms = rev;
    cur.policy = rev;
    cur.need_list = false;
    health.revision.store(rev, Ordering::Relaxed);
    health.listed.store(true, Ordering::Relaxed);
    health.list_done.notify_waiters();
    let lists = health.lists.fetch_add(1, Ordering::Relaxed) + 1;
    shared.log.info(
        "store-listed",
        &[
            ("documents", n.into()),
            ("changed", changed.into()),
            ("revision", rev.into()),
            ("lists", lists.into()),
        ],
    );
    if changed > 0 || lists == 1 {
        bump(shared);
    }
    Ok(())
}

fn set_connected(shared: &Shared, health: &Health, up: bool, error: Option<String>) {
    let was = health.connected.swap(up, Ordering::Relaxed);
    if let Some(e) = &error {
        *health.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
    }
    if was == up {
        return;
    }
    health.since.store(now_secs(), Ordering::Relaxed);
    let rev = health.revision.load(Ordering::Relaxed);
    if up {
        shared.log.info(
            "store-connected",
            &[("url", health.url.clone().into()), ("revision", rev.into())],
        );
    } else {
        shared.log.warn(
            "store-disconnected",
            &[
                ("url", health.url.clone().into()),
                ("error", json!(error)),
                ("revision", rev.into()),
                (
                    "serving",
                    "the last documents seen; status updates are queued".into(),
                ),
            ],
        );
    }
}

/// Why one watch session ended.
enum Ended {
    /// Reconnect and resume.
    Retry(String),
    /// A start revision was compacted: list again.
    Compacted(i64),
}

async fn watch_once(
    client: &Client,
    cfg: &WatchConfig,
    shared: &Shared,
    health: &Health,
    cur: &mut Cursor,
) -> Ended {
    let url = &cfg.etcd.url;
    let vms_prefix = url.vms_prefix();
    let mut wc = client
        .watch_client()
        .max_decoding_message_size(MAX_RESPONSE);
    health.requests.watch.fetch_add(1, Ordering::Relaxed);
    let opened = tokio::time::timeout(
        cfg.etcd.request_timeout,
        wc.watch(
            vms_prefix.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(cur.vms + 1)
                    .with_progress_notify(),
            ),
        ),
    )
    .await;
    let mut stream = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Ended::Retry(format!("watch: {e}")),
        Err(_) => return Ended::Retry("watch: no answer".into()),
    };
    if cfg.policy_from_etcd {
        if let Err(e) = stream
            .watch(
                url.policy_key(),
                Some(
                    WatchOptions::new()
                        .with_start_revision(cur.policy + 1)
                        .with_progress_notify(),
                ),
            )
            .await
        {
            return Ended::Retry(format!("watch: {e}"));
        }
    }
    let want_created = if cfg.policy_from_etcd { 2 } else { 1 };
    let mut created = Vec::new();
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ended::Retry("watch stream closed".into()),
            Err(e) => return Ended::Retry(format!("watch: {e}")),
        };
        // Watches are created in order: the first id is the documents', the second the policy's.
        if msg.created() {
            created.push(msg.watch_id());
            if created.len() == want_created {
                set_connected(shared, health, true, None);
            }
        }
        let is_policy = created.get(1) == Some(&msg.watch_id()) && created.len() > 1;
        if msg.canceled() {
            if msg.compact_revision() > 0 {
                return Ended::Compacted(msg.compact_revision());
            }
            let reason = msg.cancel_reason();
            return Ended::Retry(format!(
                "watch cancelled: {}",
                if reason.is_empty() {
                    "no reason given"
                } else {
                    reason
                }
            ));
        }
        let header_rev = msg.header().map(|h| h.revision()).unwrap_or(0);
        if msg.events().is_empty() {
            // A progress notification: every event up to the header's revision was sent.
            if !msg.created() {
                if is_policy {
                    cur.policy = cur.policy.max(header_rev);
                } else {
                    cur.vms = cur.vms.max(header_rev);
                    health.revision.store(cur.vms, Ordering::Relaxed);
                }
            }
            continue;
        }
        if is_policy {
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                let rev = kv.mod_revision();
                match ev.event_type() {
                    etcd_client::EventType::Put => set_policy(shared, Some(kv.value()), rev),
                    etcd_client::EventType::Delete => set_policy(shared, None, rev),
                }
                cur.policy = cur.policy.max(rev);
            }
            continue;
        }
        let mut evs = Vec::with_capacity(msg.events().len());
        let mut last = cur.vms;
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            last = last.max(kv.mod_revision());
            let Some(key) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(vms_prefix.as_str()))
            else {
                continue;
            };
            evs.push(match ev.event_type() {
                etcd_client::EventType::Put => DocEvent::Put {
                    key: key.to_string(),
                    value: kv.value().to_vec(),
                    rev: kv.mod_revision(),
                },
                etcd_client::EventType::Delete => DocEvent::Delete {
                    key: key.to_string(),
                },
            });
        }
        let n = evs.len();
        let changed: Vec<String> = with_docs(shared, |d| {
            evs.into_iter()
                .filter(|e| d.apply(e.clone()))
                .map(|e| match e {
                    DocEvent::Put { key, .. } | DocEvent::Delete { key } => key,
                })
                .collect()
        })
        .unwrap_or_default();
        cur.vms = last;
        health.revision.store(last, Ordering::Relaxed);
        shared.log.debug(
            "store-events",
            &[
                ("events", n.into()),
                ("changed", changed.len().into()),
                ("revision", last.into()),
            ],
        );
        // Only the channels of the VMs concerned wake up, not every channel of the host.
        for k in &changed {
            shared.key_changed(k.strip_suffix(".meta").unwrap_or(k));
        }
    }
}

/// Keep the documents (and, unless a policy file is given, the policy) in step with etcd until
/// the task is aborted. Never returns an error: etcd being away is a state, reported in `health` and
/// the log, during which the documents already seen stay in force.
pub async fn run_watcher(cfg: WatchConfig, shared: Arc<Shared>, health: Arc<Health>) {
    let mut cur = Cursor {
        need_list: true,
        ..Cursor::default()
    };
    let mut backoff = cfg.backoff.0;
    let mut client: Option<Client> = None;
    loop {
        let c = match &client {
            Some(c) => c.clone(),
            None => match connect(&cfg.etcd).await {
                Ok(c) => {
                    client = Some(c.clone());
                    c
                }
                Err(e) => {
                    set_connected(&shared, &health, false, Some(e));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(cfg.backoff.1);
                    continue;
                }
            },
        };
        if cur.need_list {
            if let Err(e) = list_all(&c, &cfg, &shared, &health, &mut cur).await {
                set_connected(&shared, &health, false, Some(e));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.backoff.1);
                continue;
            }
        }
        match watch_once(&c, &cfg, &shared, &health, &mut cur).await {
            Ended::Compacted(at) => {
                health.compacted.fetch_add(1, Ordering::Relaxed);
                shared.log.warn(
                    "store-compacted",
                    &[
                        ("resume_revision", (cur.vms + 1).into()),
                        ("compact_revision", at.into()),
                        ("action", "list again".into()),
                    ],
                );
                cur.need_list = true;
                backoff = cfg.backoff.0;
            }
            Ended::Retry(e) => {
                let was_up = health.connected.load(Ordering::Relaxed);
                set_connected(&shared, &health, false, Some(e));
                if was_up {
                    backoff = cfg.backoff.0;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.backoff.1);
            }
        }
    }
}

/// One row of `fleet-status`.
pub async fn fleet_status(o: &EtcdOptions) -> Result<Vec<Value>, String> {
    let client = connect(o).await?;
    let (statuses, _) = list_prefix(
        &client,
        &o.url.status_prefix(),
        false,
        10_000,
        o.request_timeout,
        None,
    )
    .await?;
    let (docs, _) = list_prefix(
        &client,
        &o.url.vms_prefix(),
        true,
        10_000,
        o.request_timeout,
        None,
    )
    .await?;
    let mut rows: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
    for (uuid, value, rev) in statuses {
        let mut v: Value = serde_json::from_slice(&value).unwrap_or_else(
            |e| json!({"state": "unreadable", "last_error": format!("status is not JSON: {e}")}),
        );
        if let Some(o) = v.as_object_mut() {
            o.insert("uuid".into(), uuid.clone().into());
            o.insert("document".into(), false.into());
            o.insert("status_revision".into(), rev.into());
        }
        rows.insert(uuid, v);
    }
    for (key, _, _) in docs {
        if key.ends_with(".meta") {
            continue;
        }
        let row = rows.entry(key.clone()).or_insert_with(
            || json!({"uuid": key, "host": null, "state": "not-running", "document": false}),
        );
        row["document"] = true.into();
    }
    Ok(rows.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(s: &str) -> EtcdUrl {
        match parse_store(s).unwrap() {
            StoreSpec::Etcd(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn store_urls() {
        assert_eq!(
            parse_store("/srv/xenplug/store").unwrap(),
            StoreSpec::Dir("/srv/xenplug/store".into())
        );
        assert_eq!(
            parse_store("relative").unwrap(),
            StoreSpec::Dir("relative".into())
        );
        let u =
            etcd("etcd://10.0.0.1:2379,etcd-2.example.org:2379,[fd00::3]:2379/xenplug/fleet-a/");
        assert_eq!(
            u.endpoints,
            ["10.0.0.1:2379", "etcd-2.example.org:2379", "[fd00::3]:2379"]
        );
        assert_eq!(u.prefix, "/xenplug/fleet-a");
        assert!(!u.tls);
        assert_eq!(u.vms_prefix(), "/xenplug/fleet-a/vms/");
        assert_eq!(u.status_prefix(), "/xenplug/fleet-a/status/");
        assert_eq!(u.policy_key(), "/xenplug/fleet-a/policy");
        assert_eq!(
            u.display(),
            "etcd://10.0.0.1:2379,etcd-2.example.org:2379,[fd00::3]:2379/xenplug/fleet-a"
        );
        assert!(etcd("etcds://h:2379/x").tls);
    }

    #[test]
    fn bad_store_urls_say_why() {
        for (url, why) in [
            ("", "empty store"),
            ("http://h:2379/x", "unsupported store URL scheme \"http\""),
            ("etcd://", "has no /PREFIX"),
            ("etcd://h:2379", "has no /PREFIX"),
            ("etcd://h:2379/", "PREFIX is empty"),
            ("etcd:///x", "names no etcd endpoint"),
            ("etcd://h/x", "has no port"),
            ("etcd://h:0/x", "not a number from 1 to 65535"),
            ("etcd://h:99999/x", "not a number from 1 to 65535"),
            ("etcd://h:port/x", "not a number"),
            ("etcd://h:1,,g:2/x", "empty endpoint"),
            ("etcd://:2379/x", "has no host"),
            ("etcd://h_x:2379/x", "not a host name"),
            ("etcd://[zz]:2379/x", "not an IPv6 address"),
            ("etcd://user:pw@h:2379/x", "no credentials in the URL"),
            ("etcd://h:2379/a//b", "empty, `.` or `..` component"),
            ("etcd://h:2379/a/../b", "empty, `.` or `..` component"),
            ("etcd://h:2379/a b", "may only hold"),
            ("etcd://h:2379/x?y=1", "no query"),
        ] {
            let e = parse_store(url).expect_err(url);
            assert!(e.contains(why), "{url:?}: {e}");
        }
    }

    #[test]
    fn options_are_checked() {
        let mut o = EtcdOptions::new(etcd("etcd://h:1/x"));
        assert!(o.check().is_ok());
        o.cert = Some("c.pem".into());
        assert!(o.check().unwrap_err().contains("--cert and --key"));
        o.key = Some("k.pem".into());
        assert!(o.check().unwrap_err().contains("--cacert"));
        o.cacert = Some("ca.pem".into());
        assert!(o.check().is_ok());
        o.user = Some("root".into());
        assert!(o.check().unwrap_err().contains("no password"));
        o.password = Some("pw".into());
        assert_eq!(o.credentials(), Some(("root".into(), "pw".into())));
        o.user = Some("admin:s3:cret".into());
        assert_eq!(o.credentials(), Some(("admin".into(), "s3:cret".into())));
        let mut t = EtcdOptions::new(etcd("etcds://h:1/x"));
        assert!(t.check().unwrap_err().contains("--cacert"));
        t.cacert = Some("ca.pem".into());
        assert!(t.check().is_ok());
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn documents_cache() {
        let (log, lines) = crate::log::Logger::capture(crate::log::Level::Debug);
        let mut d = EtcdDocs::new(etcd("etcd://h:1/p"), log);
        let uuid = "6f1c7f4e-2b1a-4c3d-9e8f-0123456789ab";
        assert!(d.apply(DocEvent::Put {
            key: uuid.into(),
            value: br#"{"instance-id": "i", "generation": 2}"#.to_vec(),
            rev: 5
        }));
        // The same revision again (a resumed watch overlapping a list) changes nothing.
        assert!(!d.apply(DocEvent::Put {
            key: uuid.into(),
            value: br#"{"instance-id": "i", "generation": 2}"#.to_vec(),
            rev: 5
        }));
        assert!(
            matches!(d.lookup(Some(uuid), None), Lookup::Found { doc, .. } if doc.generation == 2)
        );
        // NoCloud as a JSON object of the three files.
        d.apply(DocEvent::Put {
            key: "seeded".into(),
            value: serde_json::to_vec(&json!({
                "meta-data": "instance-id: iid-9\nlocal-hostname: web9\n",
                "user-data": "#cloud-config\nfqdn: web9.example.org\n",
                "generation": 4
            }))
            .unwrap(),
            rev: 6,
        });
        match d.lookup(Some("nope"), Some("seeded")) {
            Lookup::Found { doc, key } => {
                assert_eq!(
                    (doc.instance_id.as_str(), doc.generation, key.as_str()),
                    ("iid-9", 4, "seeded")
                );
                assert_eq!(doc.value["hostname"], "web9");
            }
            other => panic!("{other:?}"),
        }
        d.apply(DocEvent::Put {
            key: "bad".into(),
            value: b"{\"generation\": 1".to_vec(),
            rev: 7,
        });
        for _ in 0..2 {
            match d.lookup(Some("bad"), None) {
                Lookup::Invalid { file, .. } => assert_eq!(file, "/p/vms/bad (revision 7)"),
                other => panic!("{other:?}"),
            }
        }
        // Reported once, when first looked up.
        assert_eq!(
            lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("store-invalid-document"))
                .count(),
            1
        );
        d.apply(DocEvent::Put {
            key: format!("{uuid}.meta"),
            value: br#"{"class": "web", "flags": {"guest-log": true}}"#.to_vec(),
            rev: 8,
        });
        assert_eq!(d.meta(Some(uuid), None).class, "web");
        assert_eq!(d.len(), 3);
        // A re-list drops what disappeared (the meta too) and keeps what did not change.
        let n = d.replace(vec![(
            uuid.into(),
            br#"{"instance-id": "i", "generation": 2}"#.to_vec(),
            5,
        )]);
        assert_eq!(n, 3);
        assert_eq!(d.len(), 1);
        assert_eq!(d.meta(Some(uuid), None).class, "");
        assert!(d.apply(DocEvent::Delete { key: uuid.into() }));
        assert_eq!(d.lookup(Some(uuid), None), Lookup::Missing);
        // Keys that could never be a VM's are ignored.
        assert!(!d.apply(DocEvent::Put {
            key: "a/b".into(),
            value: b"{}".to_vec(),
            rev: 9
        }));
    }
}
