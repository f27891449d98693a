//! The store engine: the node tree, permissions, transactions and watches, shared by the socket
//! daemon ([`crate::daemon`]) and the in-memory store ([`crate::MemStore`]).
//!
//! Semantics follow C xenstored (`tools/xenstored/core.c`, `transaction.c`, `watch.c`,
//! `domain.c`) and `docs/misc/xenstore.txt`:
//!
//! * Paths: characters `A-Za-z0-9-/_@`, no `//`, no trailing `/` (except `/`), at most 3072 bytes;
//!   for unprivileged connections the part below `/local/domain/<domid>/` at most 2048. A path
//!   not starting with `/` is relative to `/local/domain/<connection domid>`. `@…` names are only
//!   accepted by the watch and permission operations. Violations give `EINVAL`.
//! * Permissions: domain 0 is privileged. Otherwise the owner (first entry) has full access, a
//!   later entry naming the domain (or its `SET_TARGET` target, or `DOMID_ANY` 32756) gives its
//!   access, else the first entry's access applies. Errors for missing nodes only say `ENOENT`
//!   when the nearest existing ancestor grants the wanted access, `EACCES` otherwise. New nodes
//!   inherit their parent's list; an unprivileged creator becomes the owner. Unprivileged
//!   connections may not change a node's owner (`EPERM`).
//! * Transactions copy nothing at `TRANSACTION_START` (as in C xenstored since Xen 4.9): they
//!   read the live tree through an overlay of their own changes. Every node looked at (present
//!   or absent) records its generation when first looked at; `TRANSACTION_END T` fails with
//!   `EAGAIN` when any of them changed globally since, otherwise the nodes the transaction
//!   changed replace the global ones and the queued watch events fire. The transaction is gone
//!   after `TRANSACTION_END` in every case.
//! * Watches fire once on registration, then for every change at or below the watched path, and
//!   for the removal of an ancestor (the event then names the watched path). Events of relative
//!   watches are relative. Unprivileged watchers only get events for nodes they (or the parent)
//!   may read. `@introduceDomain` and `@releaseDomain` (and `@releaseDomain/<domid>`,
//!   `@introduceDomain/<domid>`) fire on `INTRODUCE` and `RELEASE`.
//! * Domains: `INTRODUCE` only records the domain (no ring is mapped; gfn and port are checked
//!   for syntax and ignored); `RELEASE` forgets it, drops the watches and transactions of every
//!   connection acting as it (its sockets stay open), and fires `@releaseDomain`.
//!   `SET_TARGET` lets a domain act for another on permission checks.
//! * Quotas ([`Quota`]): C xenstored's per-domain hard quotas with its defaults and error codes,
//!   applied to every unprivileged domain over all its connections: nodes it owns (1000,
//!   `ENOSPC`), the size of one node's record — value, children's names, permissions — as
//!   xenstored counts it (2048 bytes, `ENOSPC`), watches (128, `E2BIG`), open transactions (10,
//!   `ENOSPC`), permission entries per node (5, `ENOSPC`), nodes one transaction may look at
//!   (1024, `ENOSPC`); outstanding requests (20) are enforced by the daemon, which stops reading
//!   from the domain until its replies have gone out. A domain's nodes are those whose first
//!   permission entry names it, wherever they are and whoever created them; a transaction's new
//!   nodes count when it creates them and again when it commits (`ENOSPC` at commit when the
//!   domain went over meanwhile). dom0 has no quota beyond 4096 watches and 256 transactions
//!   per connection. xenstored's memory quota is not implemented (node, size and count quotas
//!   bound a domain's memory already).
//!
//! Not implemented (answered with `ENOSYS`, as xenstore.txt allows for optional types):
//! `GET_FEATURE`, `SET_FEATURE`, `GET_QUOTA`, `SET_QUOTA`; the `<depth>` argument of `WATCH`
//! (`EINVAL`, as xenstored without the watch-depth feature). Permissions of the special `@` nodes
//! are not transactional.
//!
//! Cost: watches are indexed by path, so an event costs a lookup per ancestor of its path (and
//! a range scan below a removed node), not a comparison with every watch; a transaction keeps
//! one pending event per path and kind (a later change replaces the earlier one), in a map.
//!
//! Concurrency ([`Engine`]): the tree is a persistent map ([`crate::pmap`]), so every change
//! publishes a snapshot at the cost of an `Arc` clone. Plain reads outside a transaction are
//! answered from the latest snapshot without the store lock; everything else takes it, for one
//! request. A commit takes it twice briefly: to snapshot the tree, and to swap in the tree it
//! built meanwhile from that snapshot and its changes, after carrying over what others changed
//! in between (a conflict if the transaction looked at any of it: `EAGAIN`); only
//! its watch events are matched and queued under the lock, after the new tree is published, so
//! that a client reading the node an event names sees the change. What a request dropped (a
//! transaction's overlay of 200 000 nodes) is freed after the lock is released.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use xenplug_xenstore::wire::{self, Message, MsgType, ABS_PATH_MAX, PAYLOAD_MAX, REL_PATH_MAX};
use xenplug_xenstore::{Access, Errno, Perm};

use crate::pmap::PMap;

/// `DOMID_ANY`: a permission entry for this id applies to every domain.
pub const DOMID_ANY: u32 = 0x7FF4;
/// Watches an unprivileged domain may hold (xenstored's default quota).
pub const UNPRIV_MAX_WATCHES: usize = 128;
/// Open transactions an unprivileged domain may hold (xenstored's default quota).
pub const UNPRIV_MAX_TRANSACTIONS: usize = 10;
/// Open transactions a privileged connection may hold.
pub const MAX_TRANSACTIONS: usize = 256;
/// Watches a privileged connection may hold.
pub const MAX_WATCHES: usize = 4096;

/// C xenstored's per-domain hard quotas (`tools/xenstored`, `--quota`), applied to unprivileged
/// domains; see the module docs for what each counts and its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Nodes a domain owns (`nodes`, 1000): `ENOSPC`.
    pub nodes: usize,
    /// Size of one node's record (`node-size`, 2048): `ENOSPC` when a write makes it this
    /// large or larger.
    pub entry_bytes: usize,
    /// Watches of a domain (`watches`, 128): `E2BIG`.
    pub watches: usize,
    /// Open transactions of a domain (`transactions`, 10): `ENOSPC`.
    pub transactions: usize,
    /// Permission entries of one node (`permissions`, 5): `ENOSPC`.
    pub perms: usize,
    /// Requests of a domain in flight (`outstanding`, 20): the daemon stops reading.
    pub outstanding: usize,
    /// Nodes one transaction may look at (`transaction-nodes`, 1024): `ENOSPC`.
    pub transaction_nodes: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            nodes: 1000,
            entry_bytes: 2048,
            watches: UNPRIV_MAX_WATCHES,
            transactions: UNPRIV_MAX_TRANSACTIONS,
            perms: 5,
            outstanding: 20,
            transaction_nodes: 1024,
        }
    }
}

impl Quota {
    /// No limit at all (for benchmarks that measure the engine, not the quotas).
    pub const UNLIMITED: Quota = Quota {
        nodes: usize::MAX,
        entry_bytes: usize::MAX,
        watches: usize::MAX,
        transactions: usize::MAX,
        perms: usize::MAX,
        outstanding: usize::MAX,
        transaction_nodes: usize::MAX,
    };
}

/// What a domain uses of its quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Nodes it owns in the committed tree.
    pub nodes: usize,
    /// Watches over all its connections.
    pub watches: usize,
    /// Open transactions over all its connections.
    pub transactions: usize,
}

/// Size of a node's record as C xenstored counts it against `node-size`: a 24-byte header, 8
/// bytes per permission entry, the value, and the children's names with their NULs.
fn record_size(node: &Node) -> usize {
    24 + 8 * node.perms.len()
        + node.value.len()
        + node.children.iter().map(|c| c.len() + 1).sum::<usize>()
}

/// The CONTROL command that changes the calling connection's domain id (see [`Request::Control`]).
pub const CONTROL_SET_DOMID: &str = "xenplug-set-domid";

const PERM_READ: u8 = 1;
const PERM_WRITE: u8 = 2;
const PERM_OWNER: u8 = 4;

const SPECIAL_INTRODUCE: &str = "@introduceDomain";
const SPECIAL_RELEASE: &str = "@releaseDomain";

/// Receives the watch events of one connection. Called with the engine lock held: it must not
/// block or call back into the engine.
pub trait EventSink: Send + Sync {
    /// A `WATCH_EVENT` for this connection.
    fn watch_event(&self, path: &[u8], token: &[u8]);
}

/// Identifies one connection to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

/// A parsed request (what a wire message asks for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `READ path`.
    Read(String),
    /// `WRITE path value`.
    Write(String, Vec<u8>),
    /// `MKDIR path`.
    Mkdir(String),
    /// `RM path`.
    Rm(String),
    /// `DIRECTORY path`.
    Directory(String),
    /// `DIRECTORY_PART path offset`.
    DirectoryPart(String, usize),
    /// `GET_PERMS path`.
    GetPerms(String),
    /// `SET_PERMS path perms…`.
    SetPerms(String, Vec<Perm>),
    /// `WATCH path token`.
    Watch(String, Vec<u8>),
    /// `UNWATCH path token`.
    Unwatch(String, Vec<u8>),
    /// `TRANSACTION_START`.
    TransactionStart,
    /// `TRANSACTION_END T|F` (true: commit).
    TransactionEnd(bool),
    /// `INTRODUCE domid mfn port` (privileged).
    Introduce(u32, u64, u32),
    /// `RELEASE domid` (privileged).
    Release(u32),
    /// `RESUME domid` (privileged).
    Resume(u32),
    /// `SET_TARGET domid target` (privileged).
    SetTarget(u32, u32),
    /// `GET_DOMAIN_PATH domid`.
    GetDomainPath(u32),
    /// `IS_DOMAIN_INTRODUCED domid` (privileged).
    IsDomainIntroduced(u32),
    /// `RESET_WATCHES`.
    ResetWatches,
    /// `CONTROL command args…` (privileged). Commands: `help`, `check`, `print <text>`, and
    /// `xenplug-set-domid <domid>`, which makes the calling connection act as that domain from
    /// then on (unprivileged unless 0; irreversible then, as CONTROL needs privilege).
    Control(Vec<String>),
}

impl Request {
    fn msg_type(&self) -> MsgType {
        match self {
            Request::Read(_) => MsgType::READ,
            Request::Write(..) => MsgType::WRITE,
            Request::Mkdir(_) => MsgType::MKDIR,
            Request::Rm(_) => MsgType::RM,
            Request::Directory(_) => MsgType::DIRECTORY,
            Request::DirectoryPart(..) => MsgType::DIRECTORY_PART,
            Request::GetPerms(_) => MsgType::GET_PERMS,
            Request::SetPerms(..) => MsgType::SET_PERMS,
            Request::Watch(..) => MsgType::WATCH,
            Request::Unwatch(..) => MsgType::UNWATCH,
            Request::TransactionStart => MsgType::TRANSACTION_START,
            Request::TransactionEnd(_) => MsgType::TRANSACTION_END,
            Request::Introduce(..) => MsgType::INTRODUCE,
            Request::Release(_) => MsgType::RELEASE,
            Request::Resume(_) => MsgType::RESUME,
            Request::SetTarget(..) => MsgType::SET_TARGET,
            Request::GetDomainPath(_) => MsgType::GET_DOMAIN_PATH,
            Request::IsDomainIntroduced(_) => MsgType::IS_DOMAIN_INTRODUCED,
            Request::ResetWatches => MsgType::RESET_WATCHES,
            Request::Control(_) => MsgType::CONTROL,
        }
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK`.
    Ok,
    /// A node's value.
    Value(Vec<u8>),
    /// Child names.
    Names(Vec<String>),
    /// `DIRECTORY_PART` payload: generation, then a slice of the child list.
    Part(Vec<u8>),
    /// A permission list.
    Perms(Vec<Perm>),
    /// A transaction id.
    TxId(u32),
    /// A string (`GET_DOMAIN_PATH`, `CONTROL`).
    Text(String),
    /// `T` / `F`.
    Bool(bool),
}

impl Reply {
    /// The wire payload.
    pub fn payload(&self) -> Vec<u8> {
        match self {
            Reply::Ok => b"OK\0".to_vec(),
            Reply::Value(v) | Reply::Part(v) => v.clone(),
            Reply::Names(n) => wire::join_strings(n),
            Reply::Perms(p) => {
                wire::join_strings(&p.iter().map(|p| p.to_wire()).collect::<Vec<_>>())
            }
            Reply::TxId(id) => wire::join_strings(&[id.to_string()]),
            Reply::Text(t) => wire::join_strings(&[t]),
            Reply::Bool(b) => if *b { b"T\0" } else { b"F\0" }.to_vec(),
        }
    }
}

/// A watch event to deliver after a `WATCH` reply (the registration event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialEvent {
    /// Event path (as the watch was given: relative stays relative).
    pub path: Vec<u8>,
    /// Token.
    pub token: Vec<u8>,
}

/// Outcome of one wire request.
#[derive(Debug)]
pub struct Response {
    /// The reply message (type, req_id and tx_id set; `ERROR` on failure).
    pub reply: Message,
    /// For a successful `WATCH`: the registration event, to be sent after the reply.
    pub initial_event: Option<InitialEvent>,
}

#[derive(Debug, Clone)]
struct Node {
    value: Vec<u8>,
    children: Vec<Arc<str>>,
    perms: Vec<Perm>,
    generation: u64,
}

type Tree = PMap<Arc<Node>>;

#[derive(Debug, Clone, Copy)]
struct Caller {
    domid: u32,
    target: Option<u32>,
}

impl Caller {
    fn privileged(&self) -> bool {
        self.domid == 0
    }

    fn allows(&self, id: u32) -> bool {
        id == self.domid || Some(id) == self.target || id == DOMID_ANY
    }

    fn perm(&self, perms: &[Perm]) -> u8 {
        let bits = |a: Access| match a {
            Access::None => 0,
            Access::Read => PERM_READ,
            Access::Write => PERM_WRITE,
            Access::Both => PERM_READ | PERM_WRITE,
        };
        let Some(first) = perms.first() else {
            return if self.privileged() { 7 } else { 0 };
        };
        if self.privileged() || self.allows(first.domid) {
            return PERM_READ | PERM_WRITE | PERM_OWNER;
        }
        for p in &perms[1..] {
            if self.allows(p.domid) {
                return bits(p.access);
            }
        }
        bits(first.access)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum EventKind {
    /// Node written, created or its permissions changed: fires watches at or above it.
    Changed,
    /// Node (and subtree) removed: also fires watches below it, naming the watched path.
    Removed,
    /// A special event (`@introduceDomain`, `@releaseDomain`) for a domain.
    Special(u32),
}

#[derive(Debug, Clone)]
struct PendingEvent {
    path: String,
    kind: EventKind,
    /// Permission lists of which any granting read makes the event visible (node, parent, old
    /// permissions).
    perms: Vec<Vec<Perm>>,
    /// For `Removed`: permissions of every removed node, to judge watches below the root.
    removed: HashMap<String, Vec<Perm>>,
}

/// A watch as the path index holds it.
#[derive(Debug, Clone)]
struct IndexedWatch {
    conn: u64,
    token: Vec<u8>,
    prefix_len: usize,
}

/// What a transaction changed and looked at. Its maps are persistent maps rather than hash
/// maps, and its events are kept in chunks, so that it grows in steps of bounded cost: a hash
/// map of 100 000 entries that doubles rehashes them all within one request, with the store
/// lock held.
#[derive(Debug)]
struct Tx {
    /// Nodes this transaction wrote (`None`: removed); everything else is read live.
    overlay: PMap<Option<Arc<Node>>>,
    /// Every node looked at, with its global generation then (`None`: absent).
    accessed: PMap<Option<u64>>,
    /// Pending events in order; a later event for the same path and kind replaces the earlier
    /// one (its slot becomes `None`), found through `event_slots` (by path: the slot of its
    /// `Changed` and of its `Removed` event).
    events: Chunked<Option<PendingEvent>>,
    event_slots: PMap<[Option<usize>; 2]>,
    /// Nodes owned per domain that this transaction added (or removed, negative).
    owners: HashMap<u32, isize>,
}

impl Tx {
    fn new() -> Self {
        Tx {
            overlay: PMap::new(),
            accessed: PMap::new(),
            events: Chunked::default(),
            event_slots: PMap::new(),
            owners: HashMap::new(),
        }
    }

    fn queue(&mut self, ev: PendingEvent) {
        let kind = match ev.kind {
            EventKind::Changed => 0,
            EventKind::Removed => 1,
            // (Not transactional: never queued; kept, not de-duplicated, if it were.)
            EventKind::Special(_) => {
                self.events.push(Some(ev));
                return;
            }
        };
        let at = self.events.len();
        let old = match self.event_slots.get_mut(&ev.path) {
            Some(slots) => slots[kind].replace(at),
            None => {
                let mut slots = [None, None];
                slots[kind] = Some(at);
                self.event_slots.insert(Arc::from(ev.path.as_str()), slots);
                None
            }
        };
        if let Some(old) = old {
            *self.events.get_mut(old) = None;
        }
        self.events.push(Some(ev));
    }
}

/// A list kept in chunks of [`CHUNK`]: it grows without moving what it holds.
#[derive(Debug)]
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

const CHUNK: usize = 4096;

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, item: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk").push(item);
        self.len += 1;
    }

    fn get_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

/// A watch event for a connection's sink.
struct Delivery {
    sink: Arc<dyn EventSink>,
    path: Vec<u8>,
    token: Vec<u8>,
}

struct ConnState {
    domid: u32,
    /// `(node, token)` of every watch (the watches themselves are in `State::watch_index`).
    watches: HashSet<(String, Vec<u8>)>,
    txs: HashMap<u32, Tx>,
    /// Bumped whenever the connection's transactions are dropped (`RELEASE`, `RESET_WATCHES`),
    /// so that a commit in progress finds out.
    tx_epoch: u64,
    next_tx: u32,
    sink: Arc<dyn EventSink>,
}

struct State {
    tree: Tree,
    generation: u64,
    conns: HashMap<u64, ConnState>,
    next_conn: u64,
    introduced: BTreeSet<u32>,
    targets: Arc<HashMap<u32, u32>>,
    /// The domain each connection acts as (shared with the published snapshot).
    domids: Arc<HashMap<u64, u32>>,
    /// What the last operation dropped, freed once the lock is released (a committed
    /// transaction of 200 000 nodes takes a while to free).
    garbage: Vec<Tx>,
    /// What [`Engine::published`] holds (compared without its lock).
    last_published: Arc<Published>,
    /// Watch events of the last operation, handed to the sinks once its changes are published
    /// (so that a client reading the node an event names sees the change).
    deliveries: Vec<Delivery>,
    special: HashMap<&'static str, Vec<Perm>>,
    /// Every watch, by watched path.
    watch_index: BTreeMap<String, Vec<IndexedWatch>>,
    /// Nodes of the committed tree per owning domain (first permission entry).
    owners: HashMap<u32, usize>,
    quota: Quota,
}

/// See [`Engine::set_lock_wait_hook`].
pub type LockWaitHook = Arc<dyn Fn(bool) + Send + Sync>;

/// The store lock, held: records how long when released.
struct Held<'a> {
    guard: MutexGuard<'a, State>,
    since: Instant,
    longest: &'a AtomicU64,
}

impl std::ops::Deref for Held<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let ns = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.longest.fetch_max(ns, Ordering::Relaxed);
    }
}

/// What readers see: the committed tree and who every connection is, as of the last change.
struct Published {
    tree: Tree,
    domids: Arc<HashMap<u64, u32>>,
    targets: Arc<HashMap<u32, u32>>,
}

/// The xenstore engine. Cheap to share (`Arc<Engine>`).
///
/// Changes, transactions and watches go through one mutex (the store lock). Plain reads
/// (`READ`, `DIRECTORY`, `DIRECTORY_PART`, `GET_PERMS` outside a transaction) do not take it:
/// every change publishes a snapshot of the store (the tree is a persistent map, so that is an
/// `Arc` clone), and a read looks at the latest one. A reader never waits for a writer, however
/// long the writer holds the store lock (a commit of 200 000 nodes); what it sees is the store
/// as of the last completed request, so reads stay linearisable, and a connection reads its own
/// writes (its requests are handled in order, and a change is published before its reply).
pub struct Engine {
    state: Mutex<State>,
    /// A mutex, not a read-write lock: a writer waiting for a read-write lock holds back the
    /// readers that come after it, and the writer may be the domains' idle-class thread (see
    /// [`crate::daemon::GuestPriority`]); a thread waiting for a mutex holds back nobody. Held
    /// for an `Arc` clone or a pointer swap.
    published: Mutex<Arc<Published>>,
    /// See [`Engine::take_longest_lock_hold`].
    longest_hold_ns: AtomicU64,
    /// See [`Engine::set_lock_wait_hook`].
    wait_hook: Mutex<Option<LockWaitHook>>,
    /// Runs while a commit is being built without the lock (tests interleave changes there).
    #[cfg(test)]
    commit_hook: Mutex<Option<Box<dyn FnMut() + Send>>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Engine")
            .field("nodes", &st.tree.len())
            .field("connections", &st.conns.len())
            .field("generation", &st.generation)
            .finish()
    }
}

fn perm(domid: u32, access: Access) -> Perm {
    Perm { domid, access }
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// `child` equals `parent` or lies below it.
fn is_child(child: &str, parent: &str) -> bool {
    if parent == "/" {
        return child.starts_with('/');
    }
    child == parent
        || (child.starts_with(parent) && child.as_bytes().get(parent.len()) == Some(&b'/'))
}

/// Tree access for one operation: the global tree, or, in a transaction, the global tree seen
/// through the transaction's own changes (its overlay), with access recording.
///
/// A transaction copies nothing when it starts (the store can hold many thousands of nodes):
/// like C xenstored, it reads the live tree except where it changed something itself, and
/// records the generation of every node it looks at; `TRANSACTION_END` fails with `EAGAIN` if
/// any of them changed meanwhile, so what commits is what the transaction saw.
struct View<'a> {
    tree: &'a mut Tree,
    /// Committed nodes per owner, and what this view changed (the transaction's running total,
    /// or this operation's).
    owners: &'a HashMap<u32, usize>,
    owner_delta: &'a mut HashMap<u32, isize>,
    /// The caller's quota (`None`: privileged).
    quota: Option<Quota>,
    /// The transaction's own changes (`None`: removed), in a transaction.
    overlay: Option<&'a mut PMap<Option<Arc<Node>>>>,
    generation: &'a mut u64,
    accessed: Option<&'a mut PMap<Option<u64>>>,
}

fn owner(node: &Node) -> Option<u32> {
    node.perms.first().map(|p| p.domid)
}

impl View<'_> {
    fn count_owner(&mut self, node: &Node, by: isize) {
        if let Some(d) = owner(node) {
            *self.owner_delta.entry(d).or_insert(0) += by;
        }
    }

    /// Nodes `domid` owns as this view sees them.
    fn owned(&self, domid: u32) -> usize {
        let base = self.owners.get(&domid).copied().unwrap_or(0) as isize;
        (base + self.owner_delta.get(&domid).copied().unwrap_or(0)).max(0) as usize
    }

    /// `ENOSPC` when the caller is held to a node-size quota and `node` reaches it.
    fn check_size(&self, node: &Node) -> Result<(), Errno> {
        match self.quota {
            Some(q) if record_size(node) >= q.entry_bytes => Err(Errno::ENOSPC),
            _ => Ok(()),
        }
    }

    /// The node as this view sees it, without recording the access.
    fn peek(&self, path: &str) -> Option<&Arc<Node>> {
        if let Some(ov) = self.overlay.as_deref() {
            if let Some(entry) = ov.get(path) {
                return entry.as_ref();
            }
        }
        self.tree.get(path)
    }

    fn record(&mut self, path: &str) {
        if let Some(acc) = self.accessed.as_deref_mut() {
            if !acc.contains_key(path) {
                // The first access comes before any change of this node by the transaction,
                // so this is the global tree's generation.
                let gen = self.tree.get(path).map(|n| n.generation);
                acc.insert(Arc::from(path), gen);
            }
        }
    }

    fn get(&mut self, path: &str) -> Option<Arc<Node>> {
        self.record(path);
        self.peek(path).cloned()
    }

    /// About to change `path`: in a transaction, a node changed is a node looked at.
    fn mark_modified(&mut self, path: &str) {
        self.record(path);
    }

    /// Mutable access to an existing node, bumping its generation.
    fn node_mut(&mut self, path: &str) -> Option<&mut Node> {
        self.mark_modified(path);
        *self.generation += 1;
        let gen = *self.generation;
        let slot = match self.overlay.as_deref_mut() {
            Some(ov) => {
                if !ov.contains_key(path) {
                    let current = self.tree.get(path)?.clone();
                    ov.insert(Arc::from(path), Some(current));
                }
                ov.get_mut(path)?.as_mut()?
            }
            None => self.tree.get_mut(path)?,
        };
        let node = Arc::make_mut(slot);
        node.generation = gen;
        Some(node)
    }

    fn insert(&mut self, path: &str, mut node: Node) {
        if let Some(old) = self.peek(path).cloned() {
            self.count_owner(&old, -1);
        }
        self.count_owner(&node, 1);
        self.mark_modified(path);
        *self.generation += 1;
        node.generation = *self.generation;
        match self.overlay.as_deref_mut() {
            Some(ov) => {
                ov.insert(Arc::from(path), Some(Arc::new(node)));
            }
            None => {
                self.tree.insert(Arc::from(path), Arc::new(node));
            }
        }
    }

    fn remove(&mut self, path: &str) {
        if let Some(old) = self.peek(path).cloned() {
            self.count_owner(&old, -1);
        }
        self.mark_modified(path);
        match self.overlay.as_deref_mut() {
            Some(ov) => {
                ov.insert(Arc::from(path), None);
            }
            None => {
                self.tree.remove(path);
            }
        }
    }
}

impl View<'_> {
    /// Replace a node's permissions (its owner's count moves with it).
    fn set_perms(&mut self, path: &str, perms: Vec<Perm>) -> Result<(), Errno> {
        let old = self.peek(path).cloned().ok_or(Errno::EIO)?;
        self.count_owner(&old, -1);
        let node = self.node_mut(path).ok_or(Errno::EIO)?;
        node.perms = perms;
        let new_owner = owner(node);
        if let Some(d) = new_owner {
            *self.owner_delta.entry(d).or_insert(0) += 1;
        }
        Ok(())
    }
}

/// Result of an operation before it is turned into a reply.
struct Done {
    reply: Reply,
    events: Vec<PendingEvent>,
    initial: Option<InitialEvent>,
}

impl Done {
    fn reply(reply: Reply) -> Self {
        Done {
            reply,
            events: Vec::new(),
            initial: None,
        }
    }
}

type OpResult = Result<Done, Errno>;

impl Engine {
    /// A fresh store with dom0's initial tree, as C xenstored plus `xen-init-dom0` leave it:
    /// `/`, `/tool`, `/tool/xenstored`, `/local`, `/local/domain`, `/local/domain/0` (with
    /// `domid` = `0` and `name` = `Domain-0`) and `/vm`, all `n0` (owned by dom0, no access for
    /// anyone else). `@releaseDomain` is `n0,r32756` (readable by every domain, as C xenstored
    /// sets it up) and `@introduceDomain` is `n0`.
    pub fn new() -> Arc<Self> {
        let mut tree: Tree = PMap::new();
        let n0 = vec![perm(0, Access::None)];
        let mut generation = 0u64;
        let mut add = |path: &str, value: &str, children: &[&str]| {
            generation += 1;
            tree.insert(
                Arc::from(path),
                Arc::new(Node {
                    value: value.as_bytes().to_vec(),
                    children: children.iter().map(|c| Arc::from(*c)).collect(),
                    perms: n0.clone(),
                    generation,
                }),
            );
        };
        add("/", "", &["tool", "local", "vm"]);
        add("/tool", "", &["xenstored"]);
        add("/tool/xenstored", "", &[]);
        add("/local", "", &["domain"]);
        add("/local/domain", "", &["0"]);
        add("/local/domain/0", "", &["domid", "name"]);
        add("/local/domain/0/domid", "0", &[]);
        add("/local/domain/0/name", "Domain-0", &[]);
        add("/vm", "", &[]);
        let mut special = HashMap::new();
        special.insert(
            SPECIAL_RELEASE,
            vec![perm(0, Access::None), perm(DOMID_ANY, Access::Read)],
        );
        special.insert(SPECIAL_INTRODUCE, vec![perm(0, Access::None)]);
        let mut owners = HashMap::new();
        owners.insert(0, tree.len());
        let published = Arc::new(Published {
            tree: tree.clone(),
            domids: Arc::default(),
            targets: Arc::default(),
        });
        Arc::new(Engine {
            state: Mutex::new(State {
                tree,
                generation,
                conns: HashMap::new(),
                next_conn: 1,
                introduced: BTreeSet::new(),
                targets: Arc::default(),
                domids: Arc::default(),
                garbage: Vec::new(),
                last_published: published.clone(),
                deliveries: Vec::new(),
                special,
                watch_index: BTreeMap::new(),
                owners,
                quota: Quota::default(),
            }),
            published: Mutex::new(published),
            longest_hold_ns: AtomicU64::new(0),
            wait_hook: Mutex::new(None),
            #[cfg(test)]
            commit_hook: Mutex::new(None),
        })
    }

    /// The quotas applied to unprivileged domains.
    pub fn quota(&self) -> Quota {
        self.lock().quota
    }

    /// Change the quotas applied to unprivileged domains (from now on; nothing is taken away).
    pub fn set_quota(&self, quota: Quota) {
        self.lock().quota = quota;
    }

    /// What `domid` uses of its quotas.
    pub fn domain_usage(&self, domid: u32) -> Usage {
        self.lock().usage(domid)
    }

    /// Check the store's invariants (C xenstored's `CONTROL check`): every listed child exists
    /// and every node but `/` is listed by its parent; the per-domain node counts match a recount;
    /// the watch index matches the connections' watches. The first violation found, if any.
    pub fn check(&self) -> Result<(), String> {
        self.lock().check()
    }

    fn lock(&self) -> Held<'_> {
        // A panic while holding the lock leaves the tree consistent enough to keep serving:
        // every operation validates before it mutates.
        let guard = match self.state.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.waiting(|| self.state.lock().unwrap_or_else(|p| p.into_inner()))
            }
        };
        Held {
            guard,
            since: Instant::now(),
            longest: &self.longest_hold_ns,
        }
    }

    /// Wait for a lock someone else holds, telling the hook.
    fn waiting<T>(&self, wait: impl FnOnce() -> T) -> T {
        let hook = self
            .wait_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(h) = &hook {
            h(true);
        }
        let got = wait();
        if let Some(h) = &hook {
            h(false);
        }
        got
    }

    /// Have `hook(true)` called whenever a thread is about to wait for the store lock or the
    /// snapshot lock because another thread holds it, and `hook(false)` once it has it. The
    /// daemon uses it to lift the priority of its domains' thread while dom0 waits for it
    /// ([`crate::daemon::GuestPriority::Idle`]). `None` removes the hook.
    pub fn set_lock_wait_hook(&self, hook: Option<LockWaitHook>) {
        *self.wait_hook.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// The longest time the store lock was held at once since the last call (what a request
    /// that needs the lock may have waited for, besides the lock's other users' turns).
    pub fn take_longest_lock_hold(&self) -> Duration {
        Duration::from_nanos(self.longest_hold_ns.swap(0, Ordering::Relaxed))
    }

    /// The latest published snapshot.
    fn snapshot(&self) -> Arc<Published> {
        match self.published.try_lock() {
            Ok(p) => p.clone(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().clone(),
            Err(TryLockError::WouldBlock) => self.waiting(|| {
                self.published
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            }),
        }
    }

    /// Release the store lock after a change: publish what readers must see from now on, then
    /// free what the operation dropped, outside the lock.
    fn unlock(&self, mut st: Held<'_>) {
        let same = {
            let last = &st.last_published;
            last.tree.same_version(&st.tree)
                && Arc::ptr_eq(&last.domids, &st.domids)
                && Arc::ptr_eq(&last.targets, &st.targets)
        };
        let old = (!same).then(|| {
            let new = Arc::new(Published {
                tree: st.tree.clone(),
                domids: st.domids.clone(),
                targets: st.targets.clone(),
            });
            st.last_published = new.clone();
            // Held for a pointer swap only: readers never wait for more.
            let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *published, new)
        });
        // Events after the publication, still under the lock (each connection gets them in the
        // order of the changes); the sinks only queue them.
        for d in st.deliveries.drain(..) {
            d.sink.watch_event(&d.path, &d.token);
        }
        let garbage = std::mem::take(&mut st.garbage);
        drop(st);
        drop(old);
        drop(garbage);
    }

    /// A read outside a transaction, answered from the published snapshot without the store
    /// lock. `None`: not such a read (or the connection is unknown), take the locked path.
    fn read_unlocked(
        &self,
        conn: ConnId,
        tx_id: u32,
        req: &Request,
    ) -> Option<Result<Reply, Errno>> {
        if tx_id != 0 {
            return None;
        }
        let raw = match req {
            Request::Read(p) | Request::Directory(p) | Request::DirectoryPart(p, _) => p,
            Request::GetPerms(p) if !p.starts_with('@') => p,
            _ => return None,
        };
        let snap = self.snapshot();
        let domid = *snap.domids.get(&conn.0)?;
        let caller = Caller {
            domid,
            target: snap.targets.get(&domid).copied(),
        };
        let allow_special = matches!(req, Request::GetPerms(_));
        Some(canonicalize(caller, raw, allow_special).and_then(|name| {
            let node = check_access(|p| snap.tree.get(p).cloned(), caller, &name, PERM_READ)?;
            Ok(read_reply(req, &node))
        }))
    }

    /// Register a connection acting as `domid` (0: privileged). Its watch events go to `sink`.
    pub fn connect(&self, domid: u32, sink: Arc<dyn EventSink>) -> ConnId {
        let mut st = self.lock();
        let id = st.next_conn;
        st.next_conn += 1;
        st.conns.insert(
            id,
            ConnState {
                domid,
                watches: HashSet::new(),
                txs: HashMap::new(),
                tx_epoch: 0,
                next_tx: 1,
                sink,
            },
        );
        Arc::make_mut(&mut st.domids).insert(id, domid);
        self.unlock(st);
        ConnId(id)
    }

    /// Forget a connection: its watches go, its transactions are aborted.
    pub fn disconnect(&self, conn: ConnId) {
        let mut st = self.lock();
        st.clear_watches(conn.0);
        if let Some(c) = st.conns.remove(&conn.0) {
            st.garbage.extend(c.txs.into_values());
        }
        Arc::make_mut(&mut st.domids).remove(&conn.0);
        self.unlock(st);
    }

    /// The domain a connection acts as.
    pub fn domid(&self, conn: ConnId) -> Option<u32> {
        self.lock().conns.get(&conn.0).map(|c| c.domid)
    }

    /// Make a connection act as another domain (relative paths, permissions, privilege).
    pub fn set_domid(&self, conn: ConnId, domid: u32) {
        let mut st = self.lock();
        st.set_domid(conn.0, domid);
        self.unlock(st);
    }

    /// Number of registered connections.
    pub fn connection_count(&self) -> usize {
        self.lock().conns.len()
    }

    /// Number of watches a connection holds.
    pub fn watch_count(&self, conn: ConnId) -> usize {
        self.lock()
            .conns
            .get(&conn.0)
            .map_or(0, |c| c.watches.len())
    }

    /// Total number of watches over all connections.
    pub fn total_watches(&self) -> usize {
        self.lock().conns.values().map(|c| c.watches.len()).sum()
    }

    /// Domains introduced and not released.
    pub fn introduced_domains(&self) -> Vec<u32> {
        self.lock().introduced.iter().copied().collect()
    }

    /// Every node at or below `root` with its value, sorted by path (for tests and golden files).
    pub fn dump(&self, root: &str) -> Vec<(String, Vec<u8>)> {
        let st = self.lock();
        let mut out: Vec<(String, Vec<u8>)> = st
            .tree
            .iter()
            .filter(|(p, _)| is_child(p, root))
            .map(|(p, n)| (p.to_string(), n.value.clone()))
            .collect();
        out.sort();
        out
    }

    /// Number of nodes in the (global) tree.
    pub fn node_count(&self) -> usize {
        self.lock().tree.len()
    }

    /// Handle one wire message from `conn`: parse, execute, build the reply (an `ERROR` reply
    /// with xenstored's errno name on failure, `ENOSYS` for unknown or unsupported types).
    /// Watch events caused by the request are delivered to the sinks before this returns.
    pub fn handle_message(&self, conn: ConnId, msg: &Message) -> Response {
        let mut initial_event = None;
        let result = match MsgType::from_u32(msg.msg_type) {
            None => Err(Errno::ENOSYS),
            Some(t) => {
                let parsed = match t {
                    MsgType::READ
                    | MsgType::DIRECTORY
                    | MsgType::DIRECTORY_PART
                    | MsgType::GET_PERMS
                        if msg.tx_id == 0 =>
                    {
                        Some(parse_request(t, &msg.payload))
                    }
                    _ => None,
                };
                let unlocked = match &parsed {
                    Some(Ok(req)) => self.read_unlocked(conn, 0, req),
                    _ => None,
                };
                match unlocked {
                    Some(result) => result,
                    None => self
                        .run(conn, t, msg.tx_id, || {
                            parsed.unwrap_or_else(|| parse_request(t, &msg.payload))
                        })
                        .map(|done| {
                            initial_event = done.initial;
                            done.reply
                        }),
                }
            }
        };
        let reply = match result {
            Ok(reply) => {
                let payload = reply.payload();
                if payload.len() > PAYLOAD_MAX {
                    initial_event = None;
                    error_message(msg, Errno::E2BIG)
                } else {
                    Message {
                        msg_type: msg.msg_type,
                        req_id: msg.req_id,
                        tx_id: msg.tx_id,
                        payload,
                    }
                }
            }
            Err(e) => error_message(msg, e),
        };
        Response {
            reply,
            initial_event,
        }
    }

    /// Whether [`Engine::handle_message`] takes the store lock for `msg`: everything but a
    /// plain read (`READ`, `DIRECTORY`, `DIRECTORY_PART`, `GET_PERMS` outside a transaction and
    /// not of an `@` node), which is answered from the published snapshot.
    pub fn takes_store_lock(msg: &Message) -> bool {
        let Some(t) = MsgType::from_u32(msg.msg_type) else {
            return false;
        };
        let read = matches!(
            t,
            MsgType::READ | MsgType::DIRECTORY | MsgType::DIRECTORY_PART | MsgType::GET_PERMS
        );
        !(read && msg.tx_id == 0 && !msg.payload.starts_with(b"@"))
    }

    /// Execute a parsed request for `conn` in transaction `tx_id` (0: none). For a `WATCH`, the
    /// registration event is returned rather than delivered, so that the caller can send it
    /// after the reply as xenstored does ([`Engine::handle_message`] callers) or queue it.
    pub fn execute(
        &self,
        conn: ConnId,
        tx_id: u32,
        req: Request,
    ) -> Result<(Reply, Option<InitialEvent>), Errno> {
        if let Some(result) = self.read_unlocked(conn, tx_id, &req) {
            let reply = result?;
            if reply.payload().len() > PAYLOAD_MAX {
                return Err(Errno::E2BIG);
            }
            return Ok((reply, None));
        }
        let done = self.run(conn, req.msg_type(), tx_id, || Ok(req))?;
        if done.reply.payload().len() > PAYLOAD_MAX {
            return Err(Errno::E2BIG);
        }
        Ok((done.reply, done.initial))
    }

    /// A request that takes the store lock: xenstored's checks, then the request (`parse`
    /// runs after the checks, so that their errors come first, as in xenstored).
    fn run(
        &self,
        conn: ConnId,
        t: MsgType,
        tx_id: u32,
        parse: impl FnOnce() -> Result<Request, Errno>,
    ) -> OpResult {
        let mut st = self.lock();
        let req = match st.check_type(conn, t, tx_id).and_then(|()| parse()) {
            Ok(req) => req,
            Err(e) => {
                self.unlock(st);
                return Err(e);
            }
        };
        if req == Request::TransactionEnd(true) && tx_id != 0 {
            drop(st);
            return self.commit(conn, tx_id);
        }
        let tx_id = if matches!(t, MsgType::WATCH | MsgType::UNWATCH) {
            0
        } else {
            tx_id
        };
        let done = st.execute(conn, tx_id, req);
        self.unlock(st);
        done
    }

    /// `TRANSACTION_END T`. The store lock is held only to take a snapshot and, at the end, to
    /// swap the new tree in: checking what the transaction looked at (`EAGAIN`) and building
    /// the new tree (a persistent map: the snapshot plus the transaction's changes) happen
    /// without it, so a commit of 200 000 nodes keeps neither readers nor writers waiting for
    /// its size. If the store changed in between, the changes (found by comparing the snapshot
    /// with the store, which costs what changed, not the store's size) are a conflict when the
    /// transaction looked at one of them, and are otherwise carried into the new tree.
    fn commit(&self, conn: ConnId, tx_id: u32) -> OpResult {
        let mut st = self.lock();
        let (caller, epoch) = match st.conns.get(&conn.0) {
            Some(c) => (st.caller(conn)?, c.tx_epoch),
            None => return Err(Errno::EIO),
        };
        let Some(mut tx) = st.conns.get_mut(&conn.0).and_then(|c| c.txs.remove(&tx_id)) else {
            return Err(Errno::ENOENT);
        };
        let (base, g0) = (st.tree.clone(), st.generation);
        drop(st);
        #[cfg(test)]
        if let Some(hook) = self.commit_hook.lock().unwrap().as_mut() {
            hook();
        }
        let built = build_commit(&base, g0, &mut tx);
        let mut st = self.lock();
        let result = (|| {
            if st.conns.get(&conn.0).is_none_or(|c| c.tx_epoch != epoch) {
                // The domain was released (or reset its watches) meanwhile: the transaction is
                // gone, as if it had been dropped before this request.
                return Err(Errno::ENOENT);
            }
            let (mut tree, mut generation) = built?;
            if !st.tree.same_version(&base) {
                // Changed meanwhile: what the transaction looked at must not be among the
                // changes; the others go into the new tree as they are now.
                let mut moved = Vec::new();
                base.diff(&st.tree, Arc::ptr_eq, |p| moved.push(p.clone()));
                if moved.iter().any(|p| tx.accessed.contains_key(p)) {
                    return Err(Errno::EAGAIN);
                }
                for p in moved {
                    match st.tree.get(&p) {
                        Some(node) => {
                            tree.insert(p, node.clone());
                        }
                        None => {
                            tree.remove(&p);
                        }
                    }
                }
                // Each node's generation still only grows: the transaction's nodes were not
                // changed meanwhile (it looked at them), and new ones start above both.
                generation = generation.max(st.generation);
            }
            if !caller.privileged() {
                let now = st.owners.get(&caller.domid).copied().unwrap_or(0) as isize;
                let added = tx.owners.get(&caller.domid).copied().unwrap_or(0);
                // (In usize: an unlimited quota is usize::MAX, which does not fit an isize.)
                if added > 0 && (now + added).max(0) as usize > st.quota.nodes {
                    return Err(Errno::ENOSPC);
                }
            }
            st.tree = tree;
            st.generation = generation;
            apply_owner_delta(&mut st.owners, std::mem::take(&mut tx.owners));
            // (The events stay in the transaction, freed after the lock is released.)
            st.fire_events(tx.events.iter().flatten());
            Ok(Done::reply(Reply::Ok))
        })();
        self.unlock(st);
        // The transaction (its overlay, what it looked at) and the snapshot are freed without
        // the lock.
        drop(tx);
        drop(base);
        result
    }
}

/// The tree after committing `tx` on `base` (whose newest generation is `g0`), and the newest
/// generation then; `EAGAIN` if a node the transaction looked at is not as it was then.
fn build_commit(base: &Tree, g0: u64, tx: &mut Tx) -> Result<(Tree, u64), Errno> {
    for (path, gen) in &tx.accessed {
        if base.get(path).map(|n| n.generation) != *gen {
            return Err(Errno::EAGAIN);
        }
    }
    let mut tree = base.clone();
    let mut generation = g0;
    let paths: Vec<Arc<str>> = tx.overlay.iter().map(|(p, _)| p.clone()).collect();
    for path in paths {
        match tx.overlay.get_mut(&path) {
            Some(Some(node)) => {
                generation += 1;
                Arc::make_mut(node).generation = generation;
                tree.insert(path, node.clone());
            }
            Some(None) => {
                tree.remove(&path);
            }
            None => {}
        }
    }
    Ok((tree, generation))
}

fn error_message(req: &Message, e: Errno) -> Message {
    Message {
        msg_type: MsgType::ERROR.to_u32(),
        req_id: req.req_id,
        tx_id: req.tx_id,
        payload: wire::join_strings(&[e.name()]),
    }
}

fn utf8(b: &[u8]) -> Result<String, Errno> {
    String::from_utf8(b.to_vec()).map_err(|_| Errno::EINVAL)
}

fn parse_domid(b: &[u8]) -> Result<u32, Errno> {
    let s = std::str::from_utf8(b).map_err(|_| Errno::EINVAL)?;
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(Errno::EINVAL);
    }
    match s.parse::<u32>() {
        Ok(d) if d <= 65535 => Ok(d),
        _ => Err(Errno::EINVAL),
    }
}

/// C `atoi`: leading digits, 0 if none.
fn atoi(b: &[u8]) -> u64 {
    b.iter()
        .take_while(|c| c.is_ascii_digit())
        .fold(0u64, |acc, c| {
            acc.saturating_mul(10).saturating_add(u64::from(c - b'0'))
        })
}

/// Turn a wire payload into a [`Request`] (`EINVAL` for malformed arguments).
pub fn parse_request(t: MsgType, payload: &[u8]) -> Result<Request, Errno> {
    let one = || wire::one_arg(payload).ok_or(Errno::EINVAL);
    let (strings, _tail) = wire::split_strings(payload);
    Ok(match t {
        MsgType::READ => Request::Read(utf8(one()?)?),
        MsgType::MKDIR => Request::Mkdir(utf8(one()?)?),
        MsgType::RM => Request::Rm(utf8(one()?)?),
        MsgType::DIRECTORY => Request::Directory(utf8(one()?)?),
        MsgType::GET_PERMS => Request::GetPerms(utf8(one()?)?),
        MsgType::WRITE => {
            let nul = payload.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
            Request::Write(utf8(&payload[..nul])?, payload[nul + 1..].to_vec())
        }
        MsgType::DIRECTORY_PART => {
            if strings.len() != 2 {
                return Err(Errno::EINVAL);
            }
            let off = usize::try_from(atoi(strings[1])).unwrap_or(usize::MAX);
            Request::DirectoryPart(utf8(strings[0])?, off)
        }
        MsgType::SET_PERMS => {
            if strings.len() < 2 {
                return Err(Errno::EINVAL);
            }
            let perms = strings[1..]
                .iter()
                .map(|s| {
                    std::str::from_utf8(s)
                        .ok()
                        .and_then(Perm::from_wire)
                        .ok_or(Errno::EINVAL)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Request::SetPerms(utf8(strings[0])?, perms)
        }
        MsgType::WATCH | MsgType::UNWATCH => {
            if strings.len() != 2 {
                return Err(Errno::EINVAL);
            }
            let path = utf8(strings[0])?;
            let token = strings[1].to_vec();
            if t == MsgType::WATCH {
                Request::Watch(path, token)
            } else {
                Request::Unwatch(path, token)
            }
        }
        MsgType::TRANSACTION_START => Request::TransactionStart,
        MsgType::TRANSACTION_END => match one()? {
            b"T" => Request::TransactionEnd(true),
            b"F" => Request::TransactionEnd(false),
            _ => return Err(Errno::EINVAL),
        },
        MsgType::INTRODUCE => {
            if strings.len() < 3 {
                return Err(Errno::EINVAL);
            }
            let port = atoi(strings[2]);
            if port == 0 || port > u64::from(u32::MAX) {
                return Err(Errno::EINVAL);
            }
            Request::Introduce(parse_domid(strings[0])?, atoi(strings[1]), port as u32)
        }
        MsgType::RELEASE => Request::Release(parse_domid(one()?)?),
        MsgType::RESUME => Request::Resume(parse_domid(one()?)?),
        MsgType::GET_DOMAIN_PATH => Request::GetDomainPath(parse_domid(one()?)?),
        MsgType::IS_DOMAIN_INTRODUCED => Request::IsDomainIntroduced(parse_domid(one()?)?),
        MsgType::SET_TARGET => {
            if strings.len() < 2 {
                return Err(Errno::EINVAL);
            }
            Request::SetTarget(parse_domid(strings[0])?, parse_domid(strings[1])?)
        }
        MsgType::RESET_WATCHES => Request::ResetWatches,
        MsgType::CONTROL => {
            if strings.is_empty() {
                return Err(Errno::EINVAL);
            }
            Request::Control(
                strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            )
        }
        MsgType::WATCH_EVENT
        | MsgType::ERROR
        | MsgType::GET_FEATURE
        | MsgType::SET_FEATURE
        | MsgType::GET_QUOTA
        | MsgType::SET_QUOTA => return Err(Errno::ENOSYS),
    })
}

/// A request's path made absolute and checked (`EINVAL` when it is not a valid path).
fn canonicalize(caller: Caller, raw: &str, allow_special: bool) -> Result<String, Errno> {
    let valid = |c: u8| c.is_ascii_alphanumeric() || b"-/_@".contains(&c);
    if raw.is_empty() || !raw.bytes().all(valid) || (raw.starts_with('@') && !allow_special) {
        return Err(Errno::EINVAL);
    }
    let name = if raw.starts_with('/') || raw.starts_with('@') {
        raw.to_string()
    } else {
        format!("/local/domain/{}/{raw}", caller.domid)
    };
    if (name.ends_with('/') && name != "/") || name.contains("//") {
        return Err(Errno::EINVAL);
    }
    if name.len() > ABS_PATH_MAX {
        return Err(Errno::EINVAL);
    }
    if !caller.privileged() && name.len() - local_prefix_len(&name) > REL_PATH_MAX {
        return Err(Errno::EINVAL);
    }
    Ok(name)
}

fn privileged_only(t: MsgType) -> bool {
    matches!(
        t,
        MsgType::CONTROL
            | MsgType::INTRODUCE
            | MsgType::RELEASE
            | MsgType::IS_DOMAIN_INTRODUCED
            | MsgType::RESUME
            | MsgType::SET_TARGET
    )
}

impl State {
    fn set_domid(&mut self, conn: u64, domid: u32) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.domid = domid;
            Arc::make_mut(&mut self.domids).insert(conn, domid);
        }
    }

    fn caller(&self, conn: ConnId) -> Result<Caller, Errno> {
        let c = self.conns.get(&conn.0).ok_or(Errno::EIO)?;
        Ok(Caller {
            domid: c.domid,
            target: self.targets.get(&c.domid).copied(),
        })
    }

    /// xenstored's checks before parsing: unsupported types, privilege, transaction id.
    fn check_type(&self, conn: ConnId, t: MsgType, tx_id: u32) -> Result<(), Errno> {
        if matches!(
            t,
            MsgType::WATCH_EVENT
                | MsgType::ERROR
                | MsgType::GET_FEATURE
                | MsgType::SET_FEATURE
                | MsgType::GET_QUOTA
                | MsgType::SET_QUOTA
        ) {
            return Err(Errno::ENOSYS);
        }
        let caller = self.caller(conn)?;
        if privileged_only(t) && !caller.privileged() {
            return Err(Errno::EACCES);
        }
        if tx_id != 0 && !matches!(t, MsgType::WATCH | MsgType::UNWATCH) {
            let c = self.conns.get(&conn.0).ok_or(Errno::EIO)?;
            if !c.txs.contains_key(&tx_id) {
                return Err(Errno::ENOENT);
            }
        }
        Ok(())
    }

    fn execute(&mut self, conn: ConnId, tx_id: u32, req: Request) -> OpResult {
        let caller = self.caller(conn)?;
        match req {
            Request::TransactionStart => return self.tx_start(conn, caller, tx_id),
            Request::TransactionEnd(commit) => return self.tx_end(conn, tx_id, commit),
            Request::Watch(path, token) => return self.watch(conn, caller, &path, token),
            Request::Unwatch(path, token) => return self.unwatch(conn, caller, &path, &token),
            Request::Introduce(domid, _mfn, _port) => return self.introduce(domid),
            Request::Release(domid) => return self.release(domid),
            Request::Resume(domid) => {
                if domid == 0 {
                    return Err(Errno::EINVAL);
                }
                if !self.introduced.contains(&domid) {
                    return Err(Errno::ENOENT);
                }
                return Ok(Done::reply(Reply::Ok));
            }
            Request::SetTarget(domid, target) => {
                for d in [domid, target] {
                    if d != 0 && !self.introduced.contains(&d) {
                        return Err(Errno::ENOENT);
                    }
                }
                Arc::make_mut(&mut self.targets).insert(domid, target);
                return Ok(Done::reply(Reply::Ok));
            }
            Request::GetDomainPath(domid) => {
                return Ok(Done::reply(Reply::Text(format!("/local/domain/{domid}"))))
            }
            Request::IsDomainIntroduced(domid) => {
                return Ok(Done::reply(Reply::Bool(
                    domid == 0 || self.introduced.contains(&domid),
                )))
            }
            Request::ResetWatches => {
                self.clear_watches(conn.0);
                if let Some(c) = self.conns.get_mut(&conn.0) {
                    self.garbage.extend(c.txs.drain().map(|(_, tx)| tx));
                    c.tx_epoch += 1;
                }
                return Ok(Done::reply(Reply::Ok));
            }
            Request::Control(args) => return self.control(conn, &args),
            Request::GetPerms(ref p) | Request::SetPerms(ref p, _) if p.starts_with('@') => {
                return self.special_perms(caller, req)
            }
            _ => {}
        }

        // Node operations, on the global tree or through a transaction's overlay.
        let name = match &req {
            Request::Read(p)
            | Request::Write(p, _)
            | Request::Mkdir(p)
            | Request::Rm(p)
            | Request::Directory(p)
            | Request::DirectoryPart(p, _)
            | Request::GetPerms(p)
            | Request::SetPerms(p, _) => canonicalize(
                caller,
                p,
                matches!(req, Request::GetPerms(_) | Request::SetPerms(..)),
            )?,
            _ => return Err(Errno::EINVAL),
        };
        let quota = (!caller.privileged()).then_some(self.quota);
        let State {
            tree,
            generation,
            conns,
            owners,
            ..
        } = self;
        let done = if tx_id == 0 {
            let mut delta = HashMap::new();
            let mut view = View {
                tree,
                owners,
                owner_delta: &mut delta,
                quota,
                overlay: None,
                generation,
                accessed: None,
            };
            let done = node_op(&mut view, caller, &name, req)?;
            apply_owner_delta(owners, delta);
            done
        } else {
            let tx = conns
                .get_mut(&conn.0)
                .and_then(|c| c.txs.get_mut(&tx_id))
                .ok_or(Errno::ENOENT)?;
            if quota.is_some_and(|q| tx.accessed.len() >= q.transaction_nodes) {
                return Err(Errno::ENOSPC);
            }
            let mut view = View {
                tree,
                owners,
                owner_delta: &mut tx.owners,
                quota,
                overlay: Some(&mut tx.overlay),
                generation,
                accessed: Some(&mut tx.accessed),
            };
            let mut done = node_op(&mut view, caller, &name, req)?;
            for ev in done.events.drain(..) {
                tx.queue(ev);
            }
            done
        };
        self.fire_events(&done.events);
        Ok(done)
    }

    /// What `domid` uses of its quotas.
    fn usage(&self, domid: u32) -> Usage {
        let mine = self.conns.values().filter(|c| c.domid == domid);
        let (watches, transactions) =
            mine.fold((0, 0), |(w, t), c| (w + c.watches.len(), t + c.txs.len()));
        Usage {
            nodes: self.owners.get(&domid).copied().unwrap_or(0),
            watches,
            transactions,
        }
    }

    fn add_watch(&mut self, conn: u64, node: String, token: Vec<u8>, prefix_len: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.watches.insert((node.clone(), token.clone()));
        }
        self.watch_index
            .entry(node)
            .or_default()
            .push(IndexedWatch {
                conn,
                token,
                prefix_len,
            });
    }

    fn remove_from_index(&mut self, conn: u64, node: &str, token: &[u8]) {
        if let Some(list) = self.watch_index.get_mut(node) {
            list.retain(|w| !(w.conn == conn && w.token == token));
            if list.is_empty() {
                self.watch_index.remove(node);
            }
        }
    }

    /// Drop every watch of `conn`.
    fn clear_watches(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let watches = std::mem::take(&mut c.watches);
        for (node, token) in watches {
            self.remove_from_index(conn, &node, &token);
        }
    }

    fn check(&self) -> Result<(), String> {
        let mut owners: HashMap<u32, usize> = HashMap::new();
        for (path, node) in self.tree.iter() {
            if let Some(d) = owner(node) {
                *owners.entry(d).or_default() += 1;
            }
            let mut seen = HashSet::new();
            for child in &node.children {
                if !seen.insert(child) {
                    return Err(format!("{path} lists {child} twice"));
                }
                if !self.tree.contains_key(child_path(path, child).as_str()) {
                    return Err(format!("{path} lists missing child {child}"));
                }
            }
            if &**path != "/" {
                let leaf = &path[path.rfind('/').map_or(0, |i| i + 1)..];
                let listed = self
                    .tree
                    .get(parent_of(path))
                    .is_some_and(|p| p.children.iter().any(|c| &**c == leaf));
                if !listed {
                    return Err(format!("{path} is not listed by its parent"));
                }
            }
        }
        let counted: HashMap<u32, usize> = self
            .owners
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(d, n)| (*d, *n))
            .collect();
        if counted != owners {
            return Err(format!(
                "node accounting {counted:?} differs from a recount {owners:?}"
            ));
        }
        let mut indexed = 0;
        for (node, list) in &self.watch_index {
            for w in list {
                let known = self
                    .conns
                    .get(&w.conn)
                    .is_some_and(|c| c.watches.contains(&(node.clone(), w.token.clone())));
                if !known {
                    return Err(format!(
                        "indexed watch on {node} of a connection without it"
                    ));
                }
                indexed += 1;
            }
        }
        let held: usize = self.conns.values().map(|c| c.watches.len()).sum();
        if held != indexed {
            return Err(format!("{held} watches held, {indexed} indexed"));
        }
        Ok(())
    }

    fn special_perms(&mut self, caller: Caller, req: Request) -> OpResult {
        let (raw, new) = match req {
            Request::GetPerms(p) => (p, None),
            Request::SetPerms(p, perms) => (p, Some(perms)),
            _ => return Err(Errno::EINVAL),
        };
        let name = canonicalize(caller, &raw, true)?;
        let key = [SPECIAL_INTRODUCE, SPECIAL_RELEASE]
            .into_iter()
            .find(|k| *k == name)
            .ok_or(Errno::ENOENT)?;
        let current = self.special[key].clone();
        let have = caller.perm(&current);
        match new {
            None => {
                if have & PERM_READ == 0 {
                    return Err(Errno::EACCES);
                }
                Ok(Done::reply(Reply::Perms(current)))
            }
            Some(perms) => {
                if !caller.privileged() && perms.len() > self.quota.perms {
                    return Err(Errno::ENOSPC);
                }
                if have & (PERM_WRITE | PERM_OWNER) != PERM_WRITE | PERM_OWNER {
                    return Err(Errno::EACCES);
                }
                if !caller.privileged() && perms[0].domid != current[0].domid {
                    return Err(Errno::EPERM);
                }
                self.special.insert(key, perms.clone());
                let ev = PendingEvent {
                    path: key.to_string(),
                    kind: EventKind::Changed,
                    perms: vec![current, perms],
                    removed: HashMap::new(),
                };
                self.fire_events(std::slice::from_ref(&ev));
                Ok(Done::reply(Reply::Ok))
            }
        }
    }

    fn watch(&mut self, conn: ConnId, caller: Caller, raw: &str, token: Vec<u8>) -> OpResult {
        let relative = !raw.starts_with('/') && !raw.starts_with('@');
        let node = canonicalize(caller, raw, true)?;
        let c = self.conns.get(&conn.0).ok_or(Errno::EIO)?;
        if c.watches.contains(&(node.clone(), token.clone())) {
            return Err(Errno::EEXIST);
        }
        if caller.privileged() {
            if c.watches.len() >= MAX_WATCHES {
                return Err(Errno::E2BIG);
            }
        } else if self.usage(caller.domid).watches >= self.quota.watches {
            return Err(Errno::E2BIG);
        }
        let prefix_len = if relative {
            format!("/local/domain/{}/", caller.domid).len()
        } else {
            0
        };
        let initial = InitialEvent {
            path: node.as_bytes()[prefix_len..].to_vec(),
            token: token.clone(),
        };
        self.add_watch(conn.0, node, token, prefix_len);
        Ok(Done {
            reply: Reply::Ok,
            events: Vec::new(),
            initial: Some(initial),
        })
    }

    fn unwatch(&mut self, conn: ConnId, caller: Caller, raw: &str, token: &[u8]) -> OpResult {
        let node = canonicalize(caller, raw, true)?;
        let c = self.conns.get_mut(&conn.0).ok_or(Errno::EIO)?;
        if !c.watches.remove(&(node.clone(), token.to_vec())) {
            return Err(Errno::ENOENT);
        }
        self.remove_from_index(conn.0, &node, token);
        Ok(Done::reply(Reply::Ok))
    }

    fn tx_start(&mut self, conn: ConnId, caller: Caller, tx_id: u32) -> OpResult {
        if tx_id != 0 {
            // Nested transactions are not supported (the id was found by check_type).
            return Err(Errno::EBUSY);
        }
        let open = if caller.privileged() {
            self.conns.get(&conn.0).ok_or(Errno::EIO)?.txs.len()
        } else {
            self.usage(caller.domid).transactions
        };
        let limit = if caller.privileged() {
            MAX_TRANSACTIONS
        } else {
            self.quota.transactions
        };
        if open >= limit {
            return Err(Errno::ENOSPC);
        }
        let c = self.conns.get_mut(&conn.0).ok_or(Errno::EIO)?;
        let mut id = c.next_tx;
        while id == 0 || c.txs.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        c.next_tx = id.wrapping_add(1);
        c.txs.insert(id, Tx::new());
        Ok(Done::reply(Reply::TxId(id)))
    }

    /// `TRANSACTION_END F` (a commit goes through [`Engine::commit`]).
    fn tx_end(&mut self, conn: ConnId, tx_id: u32, commit: bool) -> OpResult {
        if tx_id == 0 {
            return Err(Errno::ENOENT);
        }
        debug_assert!(!commit, "commits go through Engine::commit");
        let c = self.conns.get_mut(&conn.0).ok_or(Errno::EIO)?;
        let tx = c.txs.remove(&tx_id).ok_or(Errno::ENOENT)?;
        // Freed after the lock is released.
        self.garbage.push(tx);
        Ok(Done::reply(Reply::Ok))
    }

    fn introduce(&mut self, domid: u32) -> OpResult {
        if domid != 0 && self.introduced.insert(domid) {
            self.fire_special(SPECIAL_INTRODUCE, domid);
        }
        Ok(Done::reply(Reply::Ok))
    }

    fn release(&mut self, domid: u32) -> OpResult {
        if domid == 0 {
            return Err(Errno::EINVAL);
        }
        if !self.introduced.remove(&domid) {
            return Err(Errno::ENOENT);
        }
        if self.targets.contains_key(&domid) {
            Arc::make_mut(&mut self.targets).remove(&domid);
        }
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(id, _)| *id)
            .collect();
        for id in conns {
            self.clear_watches(id);
            if let Some(c) = self.conns.get_mut(&id) {
                self.garbage.extend(c.txs.drain().map(|(_, tx)| tx));
                c.tx_epoch += 1;
            }
        }
        self.fire_special(SPECIAL_RELEASE, domid);
        Ok(Done::reply(Reply::Ok))
    }

    fn control(&mut self, conn: ConnId, args: &[String]) -> OpResult {
        let text = match args[0].as_str() {
            "help" => format!("check\nprint\nhelp\n{CONTROL_SET_DOMID}\n"),
            "check" => match self.check() {
                Ok(()) => "OK".to_string(),
                Err(problem) => problem,
            },
            "print" => {
                eprintln!("xenstored: {}", args[1..].join(" "));
                "OK".to_string()
            }
            CONTROL_SET_DOMID => {
                let domid = args
                    .get(1)
                    .ok_or(Errno::EINVAL)
                    .and_then(|a| parse_domid(a.as_bytes()))?;
                if !self.conns.contains_key(&conn.0) {
                    return Err(Errno::EIO);
                }
                self.set_domid(conn.0, domid);
                "OK".to_string()
            }
            _ => return Err(Errno::EINVAL),
        };
        Ok(Done::reply(Reply::Text(text)))
    }

    fn fire_special(&mut self, name: &'static str, domid: u32) {
        let ev = PendingEvent {
            path: name.to_string(),
            kind: EventKind::Special(domid),
            perms: vec![self.special[name].clone()],
            removed: HashMap::new(),
        };
        self.fire_events(std::slice::from_ref(&ev));
    }

    /// Deliver events to every matching watch whose connection may see them. Watches are
    /// found through the path index: those on the event's path and its ancestors, and for a
    /// removal those below it.
    fn fire_events<'e>(&mut self, events: impl IntoIterator<Item = &'e PendingEvent>) {
        let mut out = std::mem::take(&mut self.deliveries);
        self.fire(events, &mut out);
        self.deliveries = out;
    }

    fn fire<'e>(
        &self,
        events: impl IntoIterator<Item = &'e PendingEvent>,
        out: &mut Vec<Delivery>,
    ) {
        if self.watch_index.is_empty() {
            return;
        }
        for ev in events {
            match ev.kind {
                EventKind::Special(domid) => {
                    let with_dom = format!("{}/{domid}", ev.path);
                    for key in [ev.path.as_str(), with_dom.as_str()] {
                        for w in self.watch_index.get(key).into_iter().flatten() {
                            self.deliver(ev, key, w, key, out);
                        }
                    }
                }
                EventKind::Changed | EventKind::Removed => {
                    // Watches at or above the path (only the path itself for `@` names).
                    let mut p = ev.path.as_str();
                    loop {
                        for w in self.watch_index.get(p).into_iter().flatten() {
                            self.deliver(ev, p, w, &ev.path, out);
                        }
                        if p == "/" || !p.starts_with('/') {
                            break;
                        }
                        p = parent_of(p);
                    }
                    if ev.kind == EventKind::Removed && ev.path.starts_with('/') {
                        let below = format!("{}/", ev.path.trim_end_matches('/'));
                        let range = self
                            .watch_index
                            .range::<str, _>((Bound::Included(below.as_str()), Bound::Unbounded));
                        for (node, list) in range.take_while(|(n, _)| n.starts_with(&below)) {
                            for w in list {
                                self.deliver(ev, node, w, node, out);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Send `ev` (naming `epath`) to watch `w` on `node`, if its connection may see it.
    fn deliver(
        &self,
        ev: &PendingEvent,
        node: &str,
        w: &IndexedWatch,
        epath: &str,
        out: &mut Vec<Delivery>,
    ) {
        let Some(c) = self.conns.get(&w.conn) else {
            return;
        };
        let watcher = Caller {
            domid: c.domid,
            target: self.targets.get(&c.domid).copied(),
        };
        let visible = watcher.privileged()
            || if ev.kind == EventKind::Removed && node != ev.path && is_child(node, &ev.path) {
                removed_visible(ev, node, watcher)
            } else {
                ev.perms.iter().any(|p| watcher.perm(p) & PERM_READ != 0)
            };
        if !visible {
            return;
        }
        let shown = epath.get(w.prefix_len..).unwrap_or(epath);
        out.push(Delivery {
            sink: c.sink.clone(),
            path: shown.as_bytes().to_vec(),
            token: w.token.clone(),
        });
    }
}

fn apply_owner_delta(owners: &mut HashMap<u32, usize>, delta: HashMap<u32, isize>) {
    for (d, n) in delta {
        let v = owners.entry(d).or_insert(0);
        *v = (*v as isize + n).max(0) as usize;
        if *v == 0 {
            owners.remove(&d);
        }
    }
}

/// May `watcher` see the removal of the (possibly never existing) node `wpath` below a removed
/// root: judged by the nearest removed node at or above it and that node's parent.
fn removed_visible(ev: &PendingEvent, wpath: &str, watcher: Caller) -> bool {
    let mut p = wpath;
    loop {
        if let Some(perms) = ev.removed.get(p) {
            if watcher.perm(perms) & PERM_READ != 0 {
                return true;
            }
            let parent = parent_of(p);
            let parent_perms = ev
                .removed
                .get(parent)
                .or_else(|| ev.perms.last().filter(|_| p == ev.path));
            return parent_perms.is_some_and(|pp| watcher.perm(pp) & PERM_READ != 0);
        }
        if p == ev.path || p == "/" {
            return false;
        }
        p = parent_of(p);
    }
}

fn local_prefix_len(name: &str) -> usize {
    let Some(rest) = name.strip_prefix("/local/domain/") else {
        return 0;
    };
    let digits = rest.bytes().take_while(|c| c.is_ascii_digit()).count();
    if (1..=5).contains(&digits) && rest.as_bytes().get(digits) == Some(&b'/') {
        "/local/domain/".len() + digits + 1
    } else {
        0
    }
}

/// Look a node up with a permission check; `ENOENT` only when the nearest existing ancestor
/// grants some of `want`.
fn get_checked(
    view: &mut View<'_>,
    caller: Caller,
    name: &str,
    want: u8,
) -> Result<Arc<Node>, Errno> {
    check_access(|p| view.get(p), caller, name, want)
}

/// [`get_checked`] through any lookup (a transaction's view, or a published snapshot).
fn check_access(
    mut get: impl FnMut(&str) -> Option<Arc<Node>>,
    caller: Caller,
    name: &str,
    want: u8,
) -> Result<Arc<Node>, Errno> {
    match get(name) {
        Some(node) if caller.perm(&node.perms) & want == want => Ok(node),
        Some(_) => Err(Errno::EACCES),
        None => {
            let mut p = name;
            loop {
                p = parent_of(p);
                if let Some(anc) = get(p) {
                    return Err(if caller.perm(&anc.perms) & want != 0 {
                        Errno::ENOENT
                    } else {
                        Errno::EACCES
                    });
                }
                if p == "/" {
                    return Err(Errno::EACCES);
                }
            }
        }
    }
}

fn changed_event(view: &mut View<'_>, name: &str, extra: Option<Vec<Perm>>) -> PendingEvent {
    let mut perms = Vec::new();
    if let Some(n) = view.peek(name) {
        perms.push(n.perms.clone());
    }
    if name != "/" {
        if let Some(p) = view.peek(parent_of(name)) {
            perms.push(p.perms.clone());
        }
    }
    perms.extend(extra);
    PendingEvent {
        path: name.to_string(),
        kind: EventKind::Changed,
        perms,
        removed: HashMap::new(),
    }
}

/// Create `name` and missing parents; the new nodes inherit their parent's permissions, with an
/// unprivileged creator as owner.
fn create(view: &mut View<'_>, caller: Caller, name: &str, value: Vec<u8>) -> Result<(), Errno> {
    let mut missing = vec![name.to_string()];
    let mut parent = parent_of(name).to_string();
    let mut parent_node = loop {
        match view.get(&parent) {
            Some(n) => break n,
            None if parent == "/" => return Err(Errno::EIO),
            None => {
                missing.push(parent.clone());
                parent = parent_of(&parent).to_string();
            }
        }
    };
    // Quotas, before anything changes: the new nodes the caller will own, the existing
    // parent's grown list of children, the new node's value.
    if let Some(q) = view.quota {
        if view.owned(caller.domid).saturating_add(missing.len()) > q.nodes {
            return Err(Errno::ENOSPC);
        }
        let top = &missing[missing.len() - 1];
        let leaf = &top[top.rfind('/').map_or(0, |i| i + 1)..];
        let mut grown = (*parent_node).clone();
        grown.children.push(Arc::from(leaf));
        view.check_size(&grown)?;
        view.check_size(&Node {
            value: value.clone(),
            children: Vec::new(),
            perms: parent_node.perms.clone(),
            generation: 0,
        })?;
    }
    while let Some(path) = missing.pop() {
        let leaf = &path[path.rfind('/').map_or(0, |i| i + 1)..];
        let mut perms = parent_node.perms.clone();
        if !caller.privileged() {
            if let Some(first) = perms.first_mut() {
                first.domid = caller.domid;
            }
        }
        view.node_mut(&parent)
            .ok_or(Errno::EIO)?
            .children
            .push(Arc::from(leaf));
        let node = Node {
            value: if missing.is_empty() {
                value.clone()
            } else {
                Vec::new()
            },
            children: Vec::new(),
            perms,
            generation: 0,
        };
        view.insert(&path, node);
        parent_node = view.get(&path).ok_or(Errno::EIO)?;
        parent = path;
    }
    Ok(())
}

/// The reply of a read request (`READ`, `DIRECTORY`, `DIRECTORY_PART`, `GET_PERMS`) on `node`.
fn read_reply(req: &Request, node: &Node) -> Reply {
    match req {
        Request::Read(_) => Reply::Value(node.value.clone()),
        Request::Directory(_) => {
            Reply::Names(node.children.iter().map(|c| c.to_string()).collect())
        }
        Request::DirectoryPart(_, off) => Reply::Part(directory_part(node, *off)),
        _ => Reply::Perms(node.perms.clone()),
    }
}

fn node_op(view: &mut View<'_>, caller: Caller, name: &str, req: Request) -> OpResult {
    match req {
        Request::Read(_)
        | Request::Directory(_)
        | Request::DirectoryPart(..)
        | Request::GetPerms(_) => {
            let n = get_checked(view, caller, name, PERM_READ)?;
            Ok(Done::reply(read_reply(&req, &n)))
        }
        Request::Write(_, value) => {
            match get_checked(view, caller, name, PERM_WRITE) {
                Ok(node) => {
                    view.check_size(&Node {
                        value: value.clone(),
                        ..(*node).clone()
                    })?;
                    view.node_mut(name).ok_or(Errno::EIO)?.value = value;
                }
                Err(Errno::ENOENT) => create(view, caller, name, value)?,
                Err(e) => return Err(e),
            }
            let ev = changed_event(view, name, None);
            Ok(Done {
                reply: Reply::Ok,
                events: vec![ev],
                initial: None,
            })
        }
        Request::Mkdir(_) => match get_checked(view, caller, name, PERM_WRITE) {
            Ok(_) => Ok(Done::reply(Reply::Ok)),
            Err(Errno::ENOENT) => {
                create(view, caller, name, Vec::new())?;
                let ev = changed_event(view, name, None);
                Ok(Done {
                    reply: Reply::Ok,
                    events: vec![ev],
                    initial: None,
                })
            }
            Err(e) => Err(e),
        },
        Request::Rm(_) => match get_checked(view, caller, name, PERM_WRITE) {
            Err(Errno::ENOENT) => {
                if view.get(parent_of(name)).is_some() {
                    Ok(Done::reply(Reply::Ok))
                } else {
                    Err(Errno::ENOENT)
                }
            }
            Err(e) => Err(e),
            Ok(_) if name == "/" => Err(Errno::EINVAL),
            Ok(node) => {
                let parent = parent_of(name).to_string();
                let parent_node = view.get(&parent).ok_or(Errno::EINVAL)?;
                // Collect the subtree (every node is looked at, for transaction checks).
                let mut removed = HashMap::new();
                let mut stack = vec![(name.to_string(), node.clone())];
                let mut order = Vec::new();
                while let Some((path, n)) = stack.pop() {
                    for child in &n.children {
                        let cp = child_path(&path, child);
                        if let Some(cn) = view.get(&cp) {
                            stack.push((cp, cn));
                        }
                    }
                    removed.insert(path.clone(), n.perms.clone());
                    order.push(path);
                }
                for path in order.iter().rev() {
                    view.remove(path);
                }
                let leaf = &name[name.rfind('/').map_or(0, |i| i + 1)..];
                view.node_mut(&parent)
                    .ok_or(Errno::EIO)?
                    .children
                    .retain(|c| &**c != leaf);
                let ev = PendingEvent {
                    path: name.to_string(),
                    kind: EventKind::Removed,
                    perms: vec![node.perms.clone(), parent_node.perms.clone()],
                    removed,
                };
                Ok(Done {
                    reply: Reply::Ok,
                    events: vec![ev],
                    initial: None,
                })
            }
        },
        Request::SetPerms(_, perms) => {
            if view.quota.is_some_and(|q| perms.len() > q.perms) {
                return Err(Errno::ENOSPC);
            }
            let node = get_checked(view, caller, name, PERM_WRITE | PERM_OWNER)?;
            if !caller.privileged() && perms[0].domid != node.perms[0].domid {
                return Err(Errno::EPERM);
            }
            view.check_size(&Node {
                perms: perms.clone(),
                ..(*node).clone()
            })?;
            view.set_perms(name, perms)?;
            let ev = changed_event(view, name, Some(node.perms.clone()));
            Ok(Done {
                reply: Reply::Ok,
                events: vec![ev],
                initial: None,
            })
        }
        _ => Err(Errno::EINVAL),
    }
}

/// `DIRECTORY_PART` payload as xenstored builds it: `<generation>\0`, then whole child names
/// starting at byte `off` of the child list, as many as fit; the final chunk carries an extra
/// empty string.
fn directory_part(node: &Node, off: usize) -> Vec<u8> {
    let list = wire::join_strings(
        &node
            .children
            .iter()
            .map(|c| c.as_bytes())
            .collect::<Vec<_>>(),
    );
    let mut out = wire::join_strings(&[node.generation.to_string()]);
    let genlen = out.len();
    if off >= list.len() {
        out.push(0);
        return out;
    }
    let maxlen = PAYLOAD_MAX - genlen - 1;
    let mut len = 0;
    let rest = &list[off..];
    while len < rest.len() {
        let name_len = rest[len..]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(rest.len() - len);
        if len + name_len >= maxlen {
            break;
        }
        len += name_len + 1;
    }
    out.extend_from_slice(&rest[..len]);
    if off + len >= list.len() {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[derive(Default)]
    struct Events(Mutex<Vec<(String, String)>>);

    impl EventSink for Events {
        fn watch_event(&self, path: &[u8], token: &[u8]) {
            self.0.lock().unwrap().push((
                String::from_utf8_lossy(path).into_owned(),
                String::from_utf8_lossy(token).into_owned(),
            ));
        }
    }

    fn ok(e: &Engine, c: ConnId, tx: u32, req: Request) -> Reply {
        e.execute(c, tx, req).expect("request succeeds").0
    }

    fn read(e: &Engine, c: ConnId, path: &str) -> Result<Reply, Errno> {
        e.execute(c, 0, Request::Read(path.into())).map(|r| r.0)
    }

    fn write(path: &str, v: &str) -> Request {
        Request::Write(path.into(), v.as_bytes().to_vec())
    }

    fn start(e: &Engine, c: ConnId) -> u32 {
        match ok(e, c, 0, Request::TransactionStart) {
            Reply::TxId(id) => id,
            other => panic!("not a transaction id: {other:?}"),
        }
    }

    fn set_hook(e: &Engine, hook: impl FnMut() + Send + 'static) {
        *e.commit_hook.lock().unwrap() = Some(Box::new(hook));
    }

    /// An engine with dom0 and a second dom0 connection, and `n` nodes written by a transaction
    /// of the first that is not yet committed.
    fn big_transaction(n: usize) -> (Arc<Engine>, ConnId, ConnId, u32) {
        let e = Engine::new();
        let a = e.connect(0, Arc::new(Events::default()));
        let b = e.connect(0, Arc::new(Events::default()));
        ok(&e, a, 0, write("/big/seen", "old"));
        let tx = start(&e, a);
        // The transaction looks at /big/seen (a conflict there must fail the commit).
        assert_eq!(
            ok(&e, a, tx, Request::Read("/big/seen".into())),
            Reply::Value(b"old".to_vec())
        );
        for i in 0..n {
            ok(&e, a, tx, write(&format!("/big/d{}/n{i}", i % 50), "v"));
        }
        (e, a, b, tx)
    }

    #[test]
    fn the_wait_hook_hears_of_waits_for_the_store_lock() {
        let e = Engine::new();
        let c = e.connect(0, Arc::new(Events::default()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let rec = calls.clone();
        e.set_lock_wait_hook(Some(Arc::new(move |waits| rec.lock().unwrap().push(waits))));
        ok(&e, c, 0, write("/x", "1"));
        assert!(calls.lock().unwrap().is_empty(), "no wait, no call");
        let held = e.lock();
        let writer = {
            let e = e.clone();
            std::thread::spawn(move || ok(&e, c, 0, write("/x", "2")))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while calls.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never waited"
            );
            std::thread::yield_now();
        }
        drop(held);
        writer.join().unwrap();
        assert_eq!(*calls.lock().unwrap(), [true, false]);
        e.set_lock_wait_hook(None);
    }

    #[test]
    fn plain_reads_do_not_wait_for_the_store_lock() {
        let e = Engine::new();
        let c = e.connect(0, Arc::new(Events::default()));
        ok(&e, c, 0, write("/x", "1"));
        let held = e.lock();
        let (tx, rx) = mpsc::channel();
        let reader = {
            let e = e.clone();
            std::thread::spawn(move || {
                let r = (
                    read(&e, c, "/x"),
                    e.execute(c, 0, Request::Directory("/".into())).map(|r| r.0),
                    e.execute(c, 0, Request::GetPerms("/x".into())).map(|r| r.0),
                    read(&e, c, "/missing"),
                );
                tx.send(r).unwrap();
            })
        };
        // The reads complete while this thread still holds the lock (bounded wait for their
        // answer; with the lock in the way they could never answer).
        let (value, dir, perms, missing) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("reads answered while the store lock is held");
        drop(held);
        reader.join().unwrap();
        assert_eq!(value, Ok(Reply::Value(b"1".to_vec())));
        assert!(matches!(dir, Ok(Reply::Names(n)) if n.contains(&"x".to_string())));
        assert!(matches!(perms, Ok(Reply::Perms(_))));
        assert_eq!(missing, Err(Errno::ENOENT));
    }

    #[test]
    fn a_large_commit_is_built_without_the_lock_and_readers_see_it_whole() {
        let (e, a, b, tx) = big_transaction(20_000);
        let (seen_tx, seen_rx) = mpsc::channel();
        {
            let e2 = e.clone();
            set_hook(&e, move || {
                // The commit is being built: the store lock is free (this takes it), and a
                // reader sees the store as before the commit, none of it half-applied.
                let st = e2.state.try_lock().is_ok();
                let r = (read(&e2, b, "/big/d0/n0"), read(&e2, b, "/big/d49/n19999"));
                seen_tx.send((st, r)).unwrap();
            });
        }
        ok(&e, a, tx, Request::TransactionEnd(true));
        let (lock_free, (first, last)) = seen_rx.try_recv().expect("the hook ran");
        assert!(
            lock_free,
            "the store lock is not held while the commit is built"
        );
        assert_eq!(first, Err(Errno::ENOENT));
        assert_eq!(last, Err(Errno::ENOENT));
        assert_eq!(read(&e, b, "/big/d0/n0"), Ok(Reply::Value(b"v".to_vec())));
        assert_eq!(
            read(&e, b, "/big/d49/n19999"),
            Ok(Reply::Value(b"v".to_vec()))
        );
        e.check().unwrap();
    }

    #[test]
    fn a_change_to_what_the_commit_looked_at_meanwhile_is_a_conflict() {
        let (e, a, b, tx) = big_transaction(1_000);
        let e2 = e.clone();
        let mut once = true;
        set_hook(&e, move || {
            if std::mem::take(&mut once) {
                ok(&e2, b, 0, write("/big/seen", "new"));
            }
        });
        assert_eq!(
            e.execute(a, tx, Request::TransactionEnd(true)).map(|r| r.0),
            Err(Errno::EAGAIN)
        );
        assert_eq!(read(&e, b, "/big/d0/n0"), Err(Errno::ENOENT));
        assert_eq!(read(&e, b, "/big/seen"), Ok(Reply::Value(b"new".to_vec())));
        // The transaction is gone, as after any TRANSACTION_END.
        assert_eq!(
            e.execute(a, tx, Request::TransactionEnd(true)).map(|r| r.0),
            Err(Errno::ENOENT)
        );
        e.check().unwrap();
    }

    #[test]
    fn unrelated_changes_meanwhile_are_kept_without_a_retry() {
        let (e, a, b, tx) = big_transaction(1_000);
        let events = Arc::new(Events::default());
        let w = e.connect(0, events.clone());
        ok(&e, w, 0, Request::Watch("/big".into(), b"t".to_vec()));
        ok(&e, b, 0, write("/other/gone", "x"));
        ok(&e, b, 0, write("/other/seen2", "w"));
        let e2 = e.clone();
        let mut calls = 0;
        set_hook(&e, move || {
            calls += 1;
            // New nodes, a changed one and a removed one, none of which the transaction looked
            // at (a new node below /big would be: it changes /big's list of children).
            ok(&e2, b, 0, write(&format!("/other/{calls}"), "x"));
            ok(&e2, b, 0, write("/other/seen2", "y"));
            ok(&e2, b, 0, Request::Rm("/other/gone".into()));
        });
        ok(&e, a, tx, Request::TransactionEnd(true));
        assert_eq!(read(&e, b, "/other/1"), Ok(Reply::Value(b"x".to_vec())));
        assert_eq!(read(&e, b, "/other/2"), Err(Errno::ENOENT), "built once");
        assert_eq!(read(&e, b, "/other/gone"), Err(Errno::ENOENT));
        assert_eq!(read(&e, b, "/other/seen2"), Ok(Reply::Value(b"y".to_vec())));
        assert_eq!(read(&e, b, "/big/d7/n7"), Ok(Reply::Value(b"v".to_vec())));
        let got = events.0.lock().unwrap().clone();
        // The commit's events, once each, in the order of the transaction's writes.
        let want: Vec<(String, String)> = (0..1_000)
            .map(|i| (format!("/big/d{}/n{i}", i % 50), "t".to_string()))
            .collect();
        assert_eq!(got, want);
        e.check().unwrap();
        // Generations still grow per node: a transaction that looked at /big/seen2 before a
        // change after the commit conflicts.
        let tx2 = start(&e, b);
        ok(&e, b, tx2, Request::Read("/other/seen2".into()));
        ok(&e, a, 0, write("/other/seen2", "z"));
        assert_eq!(
            e.execute(b, tx2, Request::TransactionEnd(true))
                .map(|r| r.0),
            Err(Errno::EAGAIN)
        );
    }

    #[test]
    fn a_commit_whose_domain_is_released_meanwhile_finds_its_transaction_gone() {
        let e = Engine::new();
        let dom0 = e.connect(0, Arc::new(Events::default()));
        let guest = e.connect(5, Arc::new(Events::default()));
        ok(&e, dom0, 0, Request::Introduce(5, 1, 1));
        ok(&e, dom0, 0, write("/local/domain/5", ""));
        ok(
            &e,
            dom0,
            0,
            Request::SetPerms("/local/domain/5".into(), vec![perm(5, Access::None)]),
        );
        let tx = start(&e, guest);
        ok(&e, guest, tx, write("data", "1"));
        let e2 = e.clone();
        set_hook(&e, move || {
            ok(&e2, dom0, 0, Request::Release(5));
        });
        assert_eq!(
            e.execute(guest, tx, Request::TransactionEnd(true))
                .map(|r| r.0),
            Err(Errno::ENOENT)
        );
        assert_eq!(read(&e, dom0, "/local/domain/5/data"), Err(Errno::ENOENT));
        e.check().unwrap();
    }

    #[test]
    fn a_watch_event_comes_after_the_change_is_readable() {
        // A client that reads the node an event names sees the change: events are handed to
        // the connections only once the change is published.
        struct ReadOnEvent {
            engine: Mutex<Option<(Arc<Engine>, ConnId)>>,
            seen: Mutex<Vec<Result<Reply, Errno>>>,
        }
        impl EventSink for ReadOnEvent {
            fn watch_event(&self, path: &[u8], _token: &[u8]) {
                if let Some((e, c)) = self.engine.lock().unwrap().as_ref() {
                    let path = String::from_utf8_lossy(path).into_owned();
                    // The unlocked read path: it does not need the store lock held here.
                    self.seen.lock().unwrap().push(read(e, *c, &path));
                }
            }
        }
        let e = Engine::new();
        let sink = Arc::new(ReadOnEvent {
            engine: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
        });
        let w = e.connect(0, sink.clone());
        let c = e.connect(0, Arc::new(Events::default()));
        ok(&e, w, 0, Request::Watch("/n".into(), b"t".to_vec()));
        *sink.engine.lock().unwrap() = Some((e.clone(), w));
        ok(&e, c, 0, write("/n", "1"));
        let tx = start(&e, c);
        ok(&e, c, tx, write("/n", "2"));
        ok(&e, c, tx, Request::TransactionEnd(true));
        assert_eq!(
            *sink.seen.lock().unwrap(),
            [
                Ok(Reply::Value(b"1".to_vec())),
                Ok(Reply::Value(b"2".to_vec()))
            ]
        );
    }

    #[test]
    fn is_child_matches_whole_components() {
        assert!(is_child("/a/b", "/a"));
        assert!(is_child("/a", "/a"));
        assert!(is_child("/a", "/"));
        assert!(!is_child("/ab", "/a"));
        assert!(!is_child("/a", "/a/b"));
        assert!(!is_child("@introduceDomain", "/"));
        assert!(is_child("@releaseDomain", "@releaseDomain"));
    }

    #[test]
    fn parents_and_children() {
        assert_eq!(parent_of("/a/b"), "/a");
        assert_eq!(parent_of("/a"), "/");
        assert_eq!(parent_of("/"), "/");
        assert_eq!(child_path("/", "a"), "/a");
        assert_eq!(child_path("/a", "b"), "/a/b");
    }

    #[test]
    fn local_prefix() {
        assert_eq!(
            local_prefix_len("/local/domain/5/x"),
            "/local/domain/5/".len()
        );
        assert_eq!(
            local_prefix_len("/local/domain/12345/x"),
            "/local/domain/12345/".len()
        );
        assert_eq!(local_prefix_len("/local/domain/123456/x"), 0);
        assert_eq!(local_prefix_len("/local/domain/5"), 0);
        assert_eq!(local_prefix_len("/vm/x"), 0);
    }

    #[test]
    fn permission_resolution() {
        let guest = Caller {
            domid: 5,
            target: None,
        };
        let dom0 = Caller {
            domid: 0,
            target: None,
        };
        let n0 = [perm(0, Access::None)];
        assert_eq!(dom0.perm(&n0), PERM_READ | PERM_WRITE | PERM_OWNER);
        assert_eq!(guest.perm(&n0), 0);
        assert_eq!(guest.perm(&[perm(5, Access::None)]), 7, "owner");
        assert_eq!(
            guest.perm(&[perm(0, Access::Read)]),
            PERM_READ,
            "default entry"
        );
        assert_eq!(
            guest.perm(&[perm(0, Access::Read), perm(5, Access::Write)]),
            PERM_WRITE,
            "own entry wins over the default"
        );
        assert_eq!(
            guest.perm(&[perm(0, Access::None), perm(DOMID_ANY, Access::Both)]),
            3
        );
        let stub = Caller {
            domid: 6,
            target: Some(5),
        };
        assert_eq!(stub.perm(&[perm(5, Access::None)]), 7, "target's nodes");
    }

    #[test]
    fn directory_part_chunks() {
        let node = Node {
            value: Vec::new(),
            children: vec![Arc::from("a"), Arc::from("bb")],
            perms: Vec::new(),
            generation: 42,
        };
        assert_eq!(directory_part(&node, 0), b"42\0a\0bb\0\0");
        assert_eq!(directory_part(&node, 2), b"42\0bb\0\0");
        assert_eq!(directory_part(&node, 5), b"42\0\0");
        let empty = Node {
            children: Vec::new(),
            ..node
        };
        assert_eq!(directory_part(&empty, 0), b"42\0\0");
    }

    #[test]
    fn request_parsing() {
        assert_eq!(
            parse_request(MsgType::WRITE, b"/a\0v\0w"),
            Ok(Request::Write("/a".into(), b"v\0w".to_vec())),
            "values are binary"
        );
        assert_eq!(
            parse_request(MsgType::DIRECTORY_PART, b"/a\x0012\x00"),
            Ok(Request::DirectoryPart("/a".into(), 12))
        );
        assert_eq!(
            parse_request(MsgType::SET_PERMS, b"/a\0n0\0r5\0"),
            Ok(Request::SetPerms(
                "/a".into(),
                vec![perm(0, Access::None), perm(5, Access::Read)]
            ))
        );
        assert_eq!(
            parse_request(MsgType::INTRODUCE, b"3\x00123\x009\x00"),
            Ok(Request::Introduce(3, 123, 9))
        );
        assert_eq!(
            parse_request(MsgType::TRANSACTION_START, b""),
            Ok(Request::TransactionStart)
        );
        assert_eq!(
            parse_request(MsgType::GET_DOMAIN_PATH, b"65536\0"),
            Err(Errno::EINVAL)
        );
        assert_eq!(parse_request(MsgType::GET_QUOTA, b""), Err(Errno::ENOSYS));
    }
}
