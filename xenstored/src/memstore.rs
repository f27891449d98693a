//! [`MemStore`]: an in-memory [`XenStore`] for unit tests, running the daemon's [`Engine`]
//! directly (no socket, no second tree implementation).
//!
//! A `MemStore` is one connection to an engine. It acts as dom0 unless created with
//! [`MemStore::with_domid`] or changed with [`MemStore::set_domid`]; relative paths resolve
//! below `/local/domain/<domid>` and permissions apply exactly as in the daemon. Several
//! `MemStore`s can share one engine ([`MemStore::connect`]) to play dom0 and a guest, or a test
//! daemon's engine ([`MemStore::on_engine`]) to inspect what a real client did.
//!
//! ```
//! use xenplug_xenstore::{XsOps, XenStore};
//! use xenplug_xenstored::MemStore;
//! let xs = MemStore::new();
//! xs.write("backend/vbd/5/51712/state", "2").unwrap(); // relative: dom0's home
//! assert_eq!(
//!     xs.read("/local/domain/0/backend/vbd/5/51712/state").unwrap().as_deref(),
//!     Some("2")
//! );
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use xenplug_xenstore::{Errno, Perm, Result, Transaction, WatchEvent, XenStore, XsError, XsOps};

use crate::engine::{ConnId, Engine, EventSink, InitialEvent, Reply, Request};

#[derive(Debug, Default)]
struct EventQueue {
    events: Mutex<VecDeque<WatchEvent>>,
    ready: Condvar,
}

impl EventQueue {
    fn push(&self, path: &[u8], token: &[u8]) {
        let ev = WatchEvent {
            path: String::from_utf8_lossy(path).into_owned(),
            token: String::from_utf8_lossy(token).into_owned(),
        };
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(ev);
        self.ready.notify_all();
    }
}

impl EventSink for EventQueue {
    fn watch_event(&self, path: &[u8], token: &[u8]) {
        self.push(path, token);
    }
}

/// One connection to an in-memory engine (see the module docs).
#[derive(Debug)]
pub struct MemStore {
    engine: Arc<Engine>,
    conn: ConnId,
    events: Arc<EventQueue>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// A fresh engine (dom0's initial tree), connected as dom0.
    pub fn new() -> Self {
        Self::on_engine(&Engine::new(), 0)
    }

    /// A fresh engine, connected as `domid`.
    pub fn with_domid(domid: u32) -> Self {
        Self::on_engine(&Engine::new(), domid)
    }

    /// A new connection to an existing engine, acting as `domid`.
    pub fn on_engine(engine: &Arc<Engine>, domid: u32) -> Self {
        let events = Arc::new(EventQueue::default());
        let conn = engine.connect(domid, events.clone());
        MemStore {
            engine: engine.clone(),
            conn,
            events,
        }
    }

    /// Another connection to the same engine, acting as `domid` (e.g. a guest or driver domain).
    pub fn connect(&self, domid: u32) -> MemStore {
        Self::on_engine(&self.engine, domid)
    }

    /// The engine behind this store.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The domain this connection acts as.
    pub fn domid(&self) -> u32 {
        self.engine.domid(self.conn).unwrap_or(0)
    }

    /// Act as another domain from now on.
    pub fn set_domid(&self, domid: u32) {
        self.engine.set_domid(self.conn, domid);
    }

    /// `INTRODUCE` (needs dom0): fires `@introduceDomain`.
    pub fn introduce_domain(&self, domid: u32) -> Result<()> {
        self.exec(0, Request::Introduce(domid, 0, 1), "INTRODUCE", "")
            .map(drop)
    }

    /// `RELEASE` (needs dom0): fires `@releaseDomain`.
    pub fn release_domain(&self, domid: u32) -> Result<()> {
        self.exec(0, Request::Release(domid), "RELEASE", "")
            .map(drop)
    }

    /// Every node at or below `root` with its value (lossy UTF-8), sorted by path.
    pub fn dump(&self, root: &str) -> Vec<(String, String)> {
        self.engine
            .dump(root)
            .into_iter()
            .map(|(p, v)| (p, String::from_utf8_lossy(&v).into_owned()))
            .collect()
    }

    /// Watch events queued and not yet read.
    pub fn pending_events(&self) -> usize {
        self.events
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Execute a raw engine request on this connection in transaction `tx_id` (0: none), as the
    /// daemon would for a wire message; a `WATCH` registration event is queued here.
    pub fn execute(&self, tx_id: u32, req: Request) -> std::result::Result<Reply, Errno> {
        let (reply, initial) = self.engine.execute(self.conn, tx_id, req)?;
        if let Some(InitialEvent { path, token }) = initial {
            self.events.push(&path, &token);
        }
        Ok(reply)
    }

    fn exec(&self, tx: u32, req: Request, op: &'static str, path: &str) -> Result<Reply> {
        match self.engine.execute(self.conn, tx, req) {
            Ok((reply, initial)) => {
                if let Some(InitialEvent { path, token }) = initial {
                    self.events.push(&path, &token);
                }
                Ok(reply)
            }
            Err(errno) => Err(XsError::Daemon {
                errno,
                op,
                path: path.to_string(),
            }),
        }
    }
}

impl Drop for MemStore {
    fn drop(&mut self) {
        self.engine.disconnect(self.conn);
    }
}

fn unexpected(reply: Reply) -> XsError {
    XsError::Protocol(format!("unexpected reply {reply:?}"))
}

fn op_read(s: &MemStore, tx: u32, path: &str) -> Result<Option<String>> {
    match s.exec(tx, Request::Read(path.into()), "READ", path) {
        Ok(Reply::Value(v)) => String::from_utf8(v)
            .map(Some)
            .map_err(|_| XsError::Protocol(format!("value of {path} is not UTF-8"))),
        Ok(r) => Err(unexpected(r)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn op_write(s: &MemStore, tx: u32, path: &str, value: &str) -> Result<()> {
    let req = Request::Write(path.into(), value.as_bytes().to_vec());
    s.exec(tx, req, "WRITE", path).map(drop)
}

fn op_mkdir(s: &MemStore, tx: u32, path: &str) -> Result<()> {
    s.exec(tx, Request::Mkdir(path.into()), "MKDIR", path)
        .map(drop)
}

fn op_rm(s: &MemStore, tx: u32, path: &str) -> Result<()> {
    s.exec(tx, Request::Rm(path.into()), "RM", path).map(drop)
}

fn op_directory(s: &MemStore, tx: u32, path: &str) -> Result<Vec<String>> {
    // The engine answers E2BIG for lists over one payload, like the daemon; in memory there is
    // no payload, so read the list through DIRECTORY_PART semantics instead.
    match s.exec(tx, Request::Directory(path.into()), "DIRECTORY", path) {
        Ok(Reply::Names(n)) => Ok(n),
        Ok(r) => Err(unexpected(r)),
        Err(e) if e.errno() == Some(Errno::E2BIG) => op_directory_part(s, tx, path),
        Err(e) => Err(e),
    }
}

fn op_directory_part(s: &MemStore, tx: u32, path: &str) -> Result<Vec<String>> {
    'restart: loop {
        let mut gen: Option<Vec<u8>> = None;
        let mut data = Vec::new();
        loop {
            let req = Request::DirectoryPart(path.into(), data.len());
            let part = match s.exec(tx, req, "DIRECTORY_PART", path)? {
                Reply::Part(p) => p,
                r => return Err(unexpected(r)),
            };
            let nul = part.iter().position(|&b| b == 0).unwrap_or(part.len());
            let this_gen = part[..nul].to_vec();
            match &gen {
                Some(g) if *g != this_gen => continue 'restart,
                Some(_) => {}
                None => gen = Some(this_gen),
            }
            let chunk = part.get(nul + 1..).unwrap_or_default();
            data.extend_from_slice(chunk);
            if chunk.is_empty() || data.ends_with(&[0, 0]) || data == [0] {
                data.pop();
                let (names, _) = xenplug_xenstore::wire::split_strings(&data);
                return Ok(names
                    .into_iter()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect());
            }
        }
    }
}

fn op_get_perms(s: &MemStore, tx: u32, path: &str) -> Result<Vec<Perm>> {
    match s.exec(tx, Request::GetPerms(path.into()), "GET_PERMS", path)? {
        Reply::Perms(p) => Ok(p),
        r => Err(unexpected(r)),
    }
}

fn op_set_perms(s: &MemStore, tx: u32, path: &str, perms: &[Perm]) -> Result<()> {
    if perms.is_empty() {
        return Err(XsError::Daemon {
            errno: Errno::EINVAL,
            op: "SET_PERMS",
            path: path.to_string(),
        });
    }
    let req = Request::SetPerms(path.into(), perms.to_vec());
    s.exec(tx, req, "SET_PERMS", path).map(drop)
}

impl XsOps for MemStore {
    fn read(&self, path: &str) -> Result<Option<String>> {
        op_read(self, 0, path)
    }
    fn write(&self, path: &str, value: &str) -> Result<()> {
        op_write(self, 0, path, value)
    }
    fn mkdir(&self, path: &str) -> Result<()> {
        op_mkdir(self, 0, path)
    }
    fn rm(&self, path: &str) -> Result<()> {
        op_rm(self, 0, path)
    }
    fn directory(&self, path: &str) -> Result<Vec<String>> {
        op_directory(self, 0, path)
    }
    fn get_perms(&self, path: &str) -> Result<Vec<Perm>> {
        op_get_perms(self, 0, path)
    }
    fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<()> {
        op_set_perms(self, 0, path, perms)
    }
}

impl XenStore for MemStore {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>> {
        match self.exec(0, Request::TransactionStart, "TRANSACTION_START", "")? {
            Reply::TxId(id) => Ok(Box::new(MemTransaction {
                store: self,
                id,
                open: true,
            })),
            r => Err(unexpected(r)),
        }
    }

    fn watch(&self, path: &str, token: &str) -> Result<()> {
        let req = Request::Watch(path.into(), token.as_bytes().to_vec());
        self.exec(0, req, "WATCH", path).map(drop)
    }

    fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        let req = Request::Unwatch(path.into(), token.as_bytes().to_vec());
        self.exec(0, req, "UNWATCH", path).map(drop)
    }

    fn read_watch(&self, timeout: Option<Duration>) -> Result<Option<WatchEvent>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut q = self.events.events.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(ev) = q.pop_front() {
                return Ok(Some(ev));
            }
            q = match deadline {
                None => self.events.ready.wait(q).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    self.events
                        .ready
                        .wait_timeout(q, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    fn domain_path(&self, domid: u32) -> Result<String> {
        match self.exec(0, Request::GetDomainPath(domid), "GET_DOMAIN_PATH", "")? {
            Reply::Text(t) => Ok(t),
            r => Err(unexpected(r)),
        }
    }
}

/// A transaction on a [`MemStore`]; dropping it uncommitted aborts it.
#[derive(Debug)]
pub struct MemTransaction<'a> {
    store: &'a MemStore,
    id: u32,
    open: bool,
}

impl MemTransaction<'_> {
    /// The engine's transaction id.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl XsOps for MemTransaction<'_> {
    fn read(&self, path: &str) -> Result<Option<String>> {
        op_read(self.store, self.id, path)
    }
    fn write(&self, path: &str, value: &str) -> Result<()> {
        op_write(self.store, self.id, path, value)
    }
    fn mkdir(&self, path: &str) -> Result<()> {
        op_mkdir(self.store, self.id, path)
    }
    fn rm(&self, path: &str) -> Result<()> {
        op_rm(self.store, self.id, path)
    }
    fn directory(&self, path: &str) -> Result<Vec<String>> {
        op_directory(self.store, self.id, path)
    }
    fn get_perms(&self, path: &str) -> Result<Vec<Perm>> {
        op_get_perms(self.store, self.id, path)
    }
    fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<()> {
        op_set_perms(self.store, self.id, path, perms)
    }
}

impl Transaction for MemTransaction<'_> {
    fn commit(mut self: Box<Self>) -> Result<()> {
        self.open = false;
        self.store
            .exec(
                self.id,
                Request::TransactionEnd(true),
                "TRANSACTION_END",
                "",
            )
            .map(drop)
    }
}

impl Drop for MemTransaction<'_> {
    fn drop(&mut self) {
        if self.open {
            // Abort; an error only means the engine already dropped the transaction.
            let _ = self.store.exec(
                self.id,
                Request::TransactionEnd(false),
                "TRANSACTION_END",
                "",
            );
        }
    }
}
