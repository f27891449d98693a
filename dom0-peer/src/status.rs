//! Status back to etcd: `PREFIX/status/<uuid>` for every VM this host serves.
//!
//! ```json
//! {"uuid": "…", "host": "xen-a", "name": "web-01", "domid": 5, "state": "configured",
//!  "wanted_generation": 3, "applied_generation": 3, "instance_id": "i-42",
//!  "applied_instance_id": "i-42", "last_error": null, "last_handshake": 1733450000,
//!  "guest": {"os-name": "Debian GNU/Linux 12 (bookworm)", "hostname": "web-01",
//!            "interfaces": [{"name": "eth0", "mac": "…", "vif": 0, "ipv4": ["192.0.2.10"], "ipv6": []}]},
//!  "since": 1733450000, "updated_at": 1733450002}
//! ```
//!
//! Every key is attached to one lease per daemon, kept alive while the daemon runs: when a host
//! dies its entries expire after `--lease-ttl`. Channel tasks hand their status row to the
//! [`Reporter`]; it keeps the newest content per VM and a queue of VMs to write (one entry per VM:
//! a newer state replaces an unwritten older one, so the queue is bounded by the number of VMs
//! and nothing is written twice), and a writer task sends them in transactions of up to
//! [`StatusConfig::batch`] keys, retrying with backoff while etcd cannot be reached. A state
//! change is written once; a last error that differs only in its counts is not rewritten.
//!
//! **Ownership.** The host that brings up a VM's channel *claims* its key (an unconditional put
//! under its lease). Later writes are conditional on the key still being under this host's
//! lease (or absent), so a host that lost a VM to another host (a VM moved: destroyed here,
//! started there) can never overwrite the new host's status, and its delete when the VM goes
//! away here removes the key only if it is still its own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::discovery::ChannelKey;
use crate::etcd::{connect, now_secs, AbortOnDrop, EtcdOptions, Health};
use crate::log::Logger;
use crate::session::VmStatus;

/// How statuses are written.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// Connection.
    pub etcd: EtcdOptions,
    /// This host's name, written in every status.
    pub host: String,
    /// Lease TTL, seconds.
    pub lease_ttl: i64,
    /// Most VMs waiting to be written; beyond it the queue is dropped and, once etcd answers,
    /// every VM of this host is written again under a new lease.
    pub max_queue: usize,
    /// Keys per transaction (etcd's `--max-txn-ops` defaults to 128).
    pub batch: usize,
    /// After a change, wait this long for more before writing (coalesces a VM's quick
    /// succession of states into one write).
    pub flush_delay: Duration,
    /// Transactions on their way at once (etcd commits concurrent proposals together: a
    /// host's thousands of statuses are not written one round trip at a time). A VM is never
    /// in two of them.
    pub max_inflight: usize,
    /// Time for one status transaction to be answered. Longer than a read's: a slow etcd is
    /// not a lost one (that is seen at once, or by the connection's keep-alive), and a retry
    /// only adds to its load.
    pub write_timeout: Duration,
    /// Shortest and longest wait between attempts while etcd cannot be reached.
    pub backoff: (Duration, Duration),
}

impl StatusConfig {
    /// Defaults for `etcd` and `host`.
    pub fn new(etcd: EtcdOptions, host: String) -> Self {
        StatusConfig {
            etcd,
            host,
            lease_ttl: 15,
            max_queue: 100_000,
            batch: 100,
            flush_delay: Duration::from_millis(100),
            max_inflight: 4,
            write_timeout: Duration::from_secs(15),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

#[derive(Debug)]
struct Vm {
    owner: ChannelKey,
    /// What is (to be) written, timestamps excluded.
    content: Value,
    /// `content` with the digits of `last_error` masked: what decides whether to write.
    fingerprint: Value,
    since: u64,
    updated_at: u64,
    /// The lease under which this host claimed the key, if it did.
    claimed: Option<i64>,
    /// Another host took the key over: no more writes for this VM from here.
    lost: bool,
}

#[derive(Debug, Default)]
struct Inner {
    vms: HashMap<String, Vm>,
    keys: HashMap<ChannelKey, String>,
    queued: HashSet<String>,
    order: VecDeque<String>,
    /// VMs in a transaction on its way: not put in another until it is answered (two
    /// transactions for one VM could be applied out of order).
    flying: HashSet<String>,
    /// The queue overflowed: revoke the lease and write everything again.
    overflowed: bool,
}

impl Inner {
    fn enqueue(&mut self, uuid: &str, max: usize, log: &Logger) {
        if self.queued.contains(uuid) {
            return;
        }
        if self.queued.len() >= max {
            if !self.overflowed {
                log.error(
                    "status-queue-overflow",
                    &[
                        ("queued", self.queued.len().into()),
                        ("action", "drop the queue; rewrite every status under a new lease once etcd answers".into()),
                    ],
                );
            }
            self.overflowed = true;
            self.queued.clear();
            self.order.clear();
            return;
        }
        self.queued.insert(uuid.to_string());
        self.order.push_back(uuid.to_string());
    }
}

/// Collects status rows from the channel tasks and writes them to etcd.
#[derive(Debug)]
pub struct Reporter {
    cfg: StatusConfig,
    inner: Mutex<Inner>,
    wake: Notify,
    health: Arc<Health>,
    log: Logger,
}

fn mask_digits(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// The status content for a row (timestamps excluded).
pub fn content(row: &VmStatus, host: &str) -> Value {
    let guest = row.guest.as_ref().map(|g| {
        let s = &g.state;
        json!({
            "os-name": s.os_name,
            "hostname": s.hostname,
            "interfaces": s.interfaces.iter().map(|i| json!({
                "name": i.name, "mac": i.mac, "vif": i.vif, "ipv4": i.ipv4, "ipv6": i.ipv6,
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "uuid": row.vm_uuid,
        "host": host,
        "name": row.vm_name,
        "domid": row.domid,
        "devid": row.devid,
        "state": row.state,
        "wanted_generation": row.desired_generation,
        "applied_generation": row.applied_generation,
        "instance_id": row.desired_instance,
        "applied_instance_id": row.applied_instance,
        "last_error": row.last_error,
        "last_handshake": row.last_handshake,
        "guest": guest,
    })
}

impl Reporter {
    /// A reporter for `cfg`; run its writer with [`Reporter::run`].
    pub fn new(cfg: StatusConfig, health: Arc<Health>, log: Logger) -> Arc<Self> {
        Arc::new(Reporter {
            cfg,
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            health,
            log,
        })
    }

    fn key(&self, uuid: &str) -> String {
        format!("{}{uuid}", self.cfg.etcd.url.status_prefix())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A channel published its row.
    pub fn update(&self, row: &VmStatus) {
        let Some(uuid) = row.vm_uuid.as_deref() else {
            return;
        };
        let key = (row.domid, row.devid);
        let c = content(row, &self.cfg.host);
        let mut fp = c.clone();
        if let Some(e) = row.last_error.as_deref() {
            fp["last_error"] = mask_digits(e).into();
        }
        let now = now_secs();
        let mut inner = self.lock();
        let new_owner = inner.keys.get(&key).map(String::as_str) != Some(uuid);
        if new_owner {
            inner.keys.insert(key, uuid.to_string());
        }
        match inner.vms.get_mut(uuid) {
            Some(vm) if !new_owner && vm.owner == key => {
                if vm.fingerprint == fp {
                    return;
                }
                if vm.content["state"] != c["state"] {
                    vm.since = now;
                }
                vm.content = c;
                vm.fingerprint = fp;
                vm.updated_at = now;
                if vm.lost {
                    return;
                }
            }
            Some(vm) if vm.owner != key && !new_owner => return,
            _ => {
                // A channel (re)appeared here for this VM: this host claims its status.
                inner.vms.insert(
                    uuid.to_string(),
                    Vm {
                        owner: key,
                        content: c,
                        fingerprint: fp,
                        since: now,
                        updated_at: now,
                        claimed: None,
                        lost: false,
                    },
                );
            }
        }
        inner.enqueue(uuid, self.cfg.max_queue, &self.log);
        self.health
            .status_queued
            .store(inner.queued.len() as u64, Ordering::Relaxed);
        drop(inner);
        self.wake.notify_one();
    }

    /// A channel went away (VM destroyed, moved, rejected): its status is deleted if this host
    /// still holds it.
    pub fn gone(&self, key: ChannelKey) {
        let mut inner = self.lock();
        let Some(uuid) = inner.keys.remove(&key) else {
            return;
        };
        if inner.vms.get(&uuid).is_some_and(|v| v.owner == key) {
            inner.vms.remove(&uuid);
            inner.enqueue(&uuid, self.cfg.max_queue, &self.log);
        }
        self.health
            .status_queued
            .store(inner.queued.len() as u64, Ordering::Relaxed);
        drop(inner);
        self.wake.notify_one();
    }

    /// VMs waiting to be written.
    pub fn queued(&self) -> usize {
        self.lock().queued.len()
    }

    /// Build the next transaction (up to `batch` VMs) under `lease`.
    fn next_batch(&self, lease: i64) -> (Vec<(String, Op)>, Vec<TxnOp>) {
        let mut inner = self.lock();
        let mut ops = Vec::new();
        let mut txn = Vec::new();
        let mut later = Vec::new();
        while ops.len() < self.cfg.batch {
            let Some(uuid) = inner.order.pop_front() else {
                break;
            };
            if inner.flying.contains(&uuid) {
                // Stays queued, behind its transaction on the way.
                later.push(uuid);
                continue;
            }
            inner.queued.remove(&uuid);
            inner.flying.insert(uuid.clone());
            let key = self.key(&uuid);
            match inner.vms.get(&uuid) {
                Some(vm) if vm.lost => {
                    inner.flying.remove(&uuid);
                    continue;
                }
                Some(vm) => {
                    let mut doc = vm.content.clone();
                    doc["since"] = vm.since.into();
                    doc["updated_at"] = vm.updated_at.into();
                    let put = TxnOp::put(
                        key.clone(),
                        doc.to_string(),
                        Some(PutOptions::new().with_lease(lease)),
                    );
                    if vm.claimed == Some(lease) {
                        // Still ours (or absent): write; someone else's: leave it.
                        let recreate = Txn::new()
                            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                            .and_then([put.clone()]);
                        txn.push(TxnOp::txn(
                            Txn::new()
                                .when([Compare::lease(key, CompareOp::Equal, lease)])
                                .and_then([put])
                                .or_else([TxnOp::txn(recreate)]),
                        ));
                        ops.push((uuid, Op::Update));
                    } else {
                        txn.push(put);
                        ops.push((uuid, Op::Claim));
                    }
                }
                None => {
                    txn.push(TxnOp::txn(
                        Txn::new()
                            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                            .and_then([TxnOp::delete(key, None)]),
                    ));
                    ops.push((uuid, Op::Delete));
                }
            }
        }
        for uuid in later.into_iter().rev() {
            inner.order.push_front(uuid);
        }
        self.health
            .status_inflight
            .store(inner.flying.len() as u64, Ordering::Relaxed);
        (ops, txn)
    }

    /// Put a failed batch back at the front of the queue (entries re-queued meanwhile stay
    /// where they are).
    fn requeue(&self, ops: Vec<(String, Op)>) {
        let mut inner = self.lock();
        for (uuid, _) in ops.into_iter().rev() {
            inner.flying.remove(&uuid);
            if inner.queued.insert(uuid.clone()) {
                inner.order.push_front(uuid);
            }
        }
        self.health
            .status_queued
            .store(inner.queued.len() as u64, Ordering::Relaxed);
        self.health
            .status_inflight
            .store(inner.flying.len() as u64, Ordering::Relaxed);
    }

    /// Every VM of this host, to be written again (a new lease).
    fn requeue_all(&self) {
        let mut inner = self.lock();
        inner.overflowed = false;
        let all: Vec<String> = inner
            .vms
            .iter()
            .filter(|(_, v)| !v.lost)
            .map(|(u, _)| u.clone())
            .collect();
        for u in all {
            inner.enqueue(&u, usize::MAX, &self.log);
        }
        self.health
            .status_queued
            .store(inner.queued.len() as u64, Ordering::Relaxed);
    }

    fn done(&self, ops: &[(String, Op)], responses: Vec<TxnOpResponse>, lease: i64) {
        let mut inner = self.lock();
        let (mut puts, mut deletes) = (0u64, 0u64);
        let responses = responses
            .into_iter()
            .map(Some)
            .chain(std::iter::repeat_with(|| None));
        for ((uuid, op), resp) in ops.iter().zip(responses) {
            inner.flying.remove(uuid);
            match (op, resp) {
                (Op::Claim, _) => {
                    puts += 1;
                    if let Some(vm) = inner.vms.get_mut(uuid) {
                        vm.claimed = Some(lease);
                    }
                }
                (Op::Update, Some(TxnOpResponse::Txn(t))) => {
                    let recreated = t
                        .op_responses()
                        .into_iter()
                        .any(|r| matches!(r, TxnOpResponse::Txn(inner) if inner.succeeded()));
                    if t.succeeded() || recreated {
                        puts += 1;
                    } else if let Some(vm) = inner.vms.get_mut(uuid) {
                        vm.lost = true;
                        self.log.info(
                            "status-taken-over",
                            &[("uuid", uuid.clone().into()), ("by", "another host".into())],
                        );
                    }
                }
                (Op::Delete, Some(TxnOpResponse::Txn(t))) if t.succeeded() => deletes += 1,
                _ => {}
            }
        }
        self.health
            .requests
            .status_puts
            .fetch_add(puts, Ordering::Relaxed);
        self.health
            .requests
            .status_deletes
            .fetch_add(deletes, Ordering::Relaxed);
        self.health
            .status_queued
            .store(inner.queued.len() as u64, Ordering::Relaxed);
        self.health
            .status_inflight
            .store(inner.flying.len() as u64, Ordering::Relaxed);
    }

    fn failing(&self, error: &str) {
        if !self.health.status_failing.swap(true, Ordering::Relaxed) {
            self.log.warn(
                "status-write-failed",
                &[
                    ("error", error.into()),
                    ("queued", self.queued().into()),
                    ("action", "queued; retried with backoff".into()),
                ],
            );
        }
    }

    fn ok(&self) {
        if self.health.status_failing.swap(false, Ordering::Relaxed) {
            self.log
                .info("status-write-resumed", &[("queued", self.queued().into())]);
        }
    }

    async fn grant(&self, client: &Client, old: Option<i64>) -> Result<i64, String> {
        let t = self.cfg.etcd.request_timeout;
        let mut lc = client.lease_client();
        if let Some(id) = old {
            // Our keys go with it (the queue overflowed: they are rewritten below).
            self.health.requests.lease.fetch_add(1, Ordering::Relaxed);
            let _ = tokio::time::timeout(t, lc.revoke(id)).await;
        }
        self.health.requests.lease.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(t, lc.grant(self.cfg.lease_ttl, None))
            .await
            .map_err(|_| "lease grant: no answer".to_string())?
            .map_err(|e| format!("lease grant: {e}"))?;
        Ok(r.id())
    }

    /// Wait until the watcher's first list is in: before it no VM of this host has its
    /// document yet, and what would be written then is only overwritten a moment later.
    async fn wait_listed(&self) {
        loop {
            let n = self.health.list_done.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.health.listed.load(Ordering::Relaxed) {
                return;
            }
            n.await;
        }
    }

    /// After a failure: no new transaction before the backoff has passed.
    fn pause(&self, backoff: &mut Duration) -> tokio::time::Instant {
        let until = tokio::time::Instant::now() + *backoff;
        *backoff = (*backoff * 2).min(self.cfg.backoff.1);
        until
    }

    /// Write statuses until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        self.wait_listed().await;
        let lost = Arc::new(Notify::new());
        let mut client: Option<Client> = None;
        let mut lease: Option<i64> = None;
        let mut _keeper: Option<AbortOnDrop> = None;
        let mut backoff = self.cfg.backoff.0;
        let mut paused: Option<tokio::time::Instant> = None;
        let mut flying: JoinSet<Sent> = JoinSet::new();
        loop {
            if paused.is_some_and(|t| t <= tokio::time::Instant::now()) {
                paused = None;
            }
            if paused.is_none() {
                if let Err(e) = self
                    .ready(&mut client, &mut lease, &mut _keeper, &lost, &flying)
                    .await
                {
                    self.failing(&e);
                    paused = Some(self.pause(&mut backoff));
                } else if let (Some(c), Some(id)) = (&client, lease) {
                    // Fill the pipeline.
                    let mut sent = false;
                    while flying.len() < self.cfg.max_inflight.max(1) {
                        let (ops, txn) = self.next_batch(id);
                        if ops.is_empty() {
                            break;
                        }
                        self.health.requests.txn.fetch_add(1, Ordering::Relaxed);
                        let mut kv = c.kv_client();
                        let t = self.cfg.write_timeout;
                        flying.spawn(async move {
                            let r = tokio::time::timeout(t, kv.txn(Txn::new().and_then(txn))).await;
                            Sent {
                                ops,
                                lease: id,
                                result: match r {
                                    Ok(Ok(resp)) => Ok(resp.op_responses()),
                                    Ok(Err(e)) => Err(e.to_string()),
                                    Err(_) => Err(NO_ANSWER.into()),
                                },
                            }
                        });
                        sent = true;
                    }
                    if !sent && flying.is_empty() && self.lock().order.is_empty() {
                        self.ok();
                    }
                }
            }
            tokio::select! {
                Some(done) = flying.join_next(), if !flying.is_empty() => {
                    let Ok(Sent { ops, lease: id, result }) = done else { continue };
                    match result {
                        Ok(responses) => {
                            self.done(&ops, responses, id);
                            self.ok();
                            backoff = self.cfg.backoff.0;
                        }
                        Err(e) => {
                            self.requeue(ops);
                            if e.contains("lease not found") {
                                if lease == Some(id) {
                                    self.log.warn(
                                        "status-lease-lost",
                                        &[
                                            ("lease", format!("{id:x}").into()),
                                            ("action", "new lease; every status written again".into()),
                                        ],
                                    );
                                    lease = None;
                                }
                            } else {
                                self.failing(&e);
                                paused = Some(self.pause(&mut backoff));
                            }
                        }
                    }
                }
                _ = self.wake.notified() => {
                    // Let a VM's quick succession of states coalesce into one write.
                    if flying.is_empty() {
                        tokio::time::sleep(self.cfg.flush_delay).await;
                    }
                }
                _ = lost.notified() => { lease = None; }
                _ = tokio::time::sleep_until(paused.unwrap_or_else(tokio::time::Instant::now)), if paused.is_some() => {}
            }
        }
    }

    /// A client and a lease (a new one when the old expired, or the queue overflowed).
    async fn ready(
        &self,
        client: &mut Option<Client>,
        lease: &mut Option<i64>,
        keeper: &mut Option<AbortOnDrop>,
        lost: &Arc<Notify>,
        flying: &JoinSet<Sent>,
    ) -> Result<(), String> {
        let c = match client {
            Some(c) => c.clone(),
            None => {
                let c = connect(&self.cfg.etcd).await?;
                *client = Some(c.clone());
                c
            }
        };
        let overflowed = self.lock().overflowed;
        if (lease.is_none() || overflowed) && flying.is_empty() {
            let id = self
                .grant(&c, if overflowed { *lease } else { None })
                .await?;
            // The old keeper (if any) is aborted as it is replaced.
            *keeper = Some(AbortOnDrop(tokio::spawn(keep_alive(
                c.clone(),
                id,
                self.cfg.lease_ttl,
                lost.clone(),
                self.health.clone(),
            ))));
            self.log.info(
                "status-lease",
                &[
                    ("lease", format!("{id:x}").into()),
                    ("ttl", self.cfg.lease_ttl.into()),
                    ("host", self.cfg.host.clone().into()),
                ],
            );
            *lease = Some(id);
            self.requeue_all();
        }
        Ok(())
    }
}

const NO_ANSWER: &str = "status write: no answer";

/// A status transaction, answered (or not).
struct Sent {
    ops: Vec<(String, Op)>,
    lease: i64,
    result: Result<Vec<TxnOpResponse>, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Claim,
    Update,
    Delete,
}

/// Keep `id` alive every third of its TTL; notify `lost` when etcd says it expired.
async fn keep_alive(client: Client, id: i64, ttl: i64, lost: Arc<Notify>, health: Arc<Health>) {
    let every = Duration::from_secs_f64((ttl as f64 / 3.0).max(0.5));
    loop {
        let mut lc = client.lease_client();
        if let Ok(Ok((mut k, mut s))) = tokio::time::timeout(every, lc.keep_alive(id)).await {
            loop {
                health.requests.keepalive.fetch_add(1, Ordering::Relaxed);
                if k.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(every, s.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => {
                        // Expired (this host was away longer than the TTL): a new lease.
                        lost.notify_one();
                        return;
                    }
                    _ => break,
                }
                tokio::time::sleep(every).await;
            }
        }
        tokio::time::sleep(every.min(Duration::from_secs(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::{parse_store, StoreSpec};
    use crate::machine::Counters;

    fn reporter() -> Arc<Reporter> {
        let StoreSpec::Etcd(url) = parse_store("etcd://127.0.0.1:1/p").unwrap() else {
            unreachable!()
        };
        let cfg = StatusConfig::new(EtcdOptions::new(url.clone()), "host-a".into());
        Reporter::new(
            cfg,
            Arc::new(Health::new(url.display())),
            Logger::capture(crate::log::Level::Debug).0,
        )
    }

    fn row(domid: u32, state: &'static str, err: Option<&str>) -> VmStatus {
        VmStatus {
            domid,
            devid: 1,
            vm_name: Some("web".into()),
            vm_uuid: Some("u-1".into()),
            channel: "c".into(),
            path: "/p".into(),
            state,
            last_handshake: None,
            applied_generation: None,
            desired_generation: Some(3),
            applied_instance: None,
            desired_instance: Some("i".into()),
            last_error: err.map(str::to_string),
            denied_requests: 0,
            counters: Counters::default(),
            guest: None,
        }
    }

    #[test]
    fn one_queue_entry_per_vm_and_only_real_changes() {
        let r = reporter();
        r.update(&row(5, "connecting", None));
        r.update(&row(5, "handshaking", None));
        r.update(&row(
            5,
            "handshaking",
            Some("no answer to the handshake for 31s (32 tries)"),
        ));
        assert_eq!(r.queued(), 1);
        let (ops, txn) = r.next_batch(7);
        assert_eq!((ops.len(), txn.len()), (1, 1));
        assert_eq!(ops[0].1, Op::Claim);
        // Written: the newest content only.
        let inner = r.lock();
        assert_eq!(inner.vms["u-1"].content["state"], "handshaking");
        drop(inner);
        r.done(&ops, vec![], 7);
        assert_eq!(r.lock().vms["u-1"].claimed, Some(7));
        // Only the counts changed: nothing to write.
        r.update(&row(
            5,
            "handshaking",
            Some("no answer to the handshake for 41s (42 tries)"),
        ));
        assert_eq!(r.queued(), 0);
        r.update(&row(5, "configured", None));
        let (ops, _) = r.next_batch(7);
        assert_eq!(ops[0].1, Op::Update);
        r.done(&ops, vec![], 7);
        // Under a new lease the VM is claimed again.
        r.update(&row(5, "failed", None));
        assert_eq!(r.next_batch(8).0[0].1, Op::Claim);
    }

    #[test]
    fn a_vm_is_never_in_two_transactions_on_their_way() {
        let r = reporter();
        let mut other = row(7, "connecting", None);
        other.vm_uuid = Some("u-2".into());
        r.update(&row(5, "handshaking", None));
        r.update(&other);
        let (first, _) = r.next_batch(1);
        assert_eq!(first.len(), 2);
        assert_eq!(r.health.status_inflight.load(Ordering::Relaxed), 2);
        // A newer state while the first transaction is on its way: queued, not sent.
        r.update(&row(5, "configured", None));
        assert_eq!(r.queued(), 1);
        let (ops, _) = r.next_batch(1);
        assert!(ops.is_empty(), "{ops:?}");
        assert_eq!(r.queued(), 1);
        // Answered: now it goes, with the newest content.
        r.done(&first, vec![], 1);
        assert_eq!(r.health.status_inflight.load(Ordering::Relaxed), 0);
        let (ops, _) = r.next_batch(1);
        assert_eq!(ops, vec![("u-1".to_string(), Op::Update)]);
        assert_eq!(r.lock().vms["u-1"].content["state"], "configured");
        // A failed transaction goes back to the front of the queue.
        other.state = "handshaking";
        r.update(&other);
        r.requeue(ops);
        assert_eq!(r.queued(), 2);
        let (ops, _) = r.next_batch(1);
        assert_eq!(ops[0].0, "u-1");
    }

    #[test]
    fn reboot_and_removal() {
        let r = reporter();
        r.update(&row(5, "configured", None));
        let (ops, _) = r.next_batch(1);
        r.done(&ops, vec![], 1);
        // Rebooted as domid 6 before domid 5's removal was seen: the new channel owns it.
        r.update(&row(6, "connecting", None));
        r.gone((5, 1));
        let (ops, _) = r.next_batch(1);
        assert_eq!(ops, vec![("u-1".to_string(), Op::Claim)]);
        r.done(&ops, vec![], 1);
        r.gone((6, 1));
        let (ops, _) = r.next_batch(1);
        assert_eq!(ops, vec![("u-1".to_string(), Op::Delete)]);
        assert!(r.lock().vms.is_empty());
    }

    #[test]
    fn overflow_drops_the_queue_and_rewrites_everything_later() {
        let r = reporter();
        let mut r2 = Arc::try_unwrap(r).unwrap();
        r2.cfg.max_queue = 2;
        let r = Arc::new(r2);
        for d in 0..3u32 {
            let mut x = row(d, "connecting", None);
            x.vm_uuid = Some(format!("u-{d}"));
            r.update(&x);
        }
        assert!(r.lock().overflowed);
        assert_eq!(r.queued(), 0);
        r.requeue_all();
        assert_eq!(r.queued(), 3);
        assert!(!r.lock().overflowed);
    }
}
