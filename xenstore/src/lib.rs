//! xenstore access for every xenplug program.
//!
//! Programs talk to xenstore through the narrow [`XsOps`] / [`XenStore`] traits defined here, so
//! that their logic can be unit-tested against an in-memory store (`xenplug_xenstored::MemStore`)
//! and run for real against xenstored (ours or Xen's) through [`client::XsClient`].
//!
//! Paths are passed to the daemon as given: a relative path means what xenstored says it means,
//! `/local/domain/<own domid>/<path>`.

pub mod client;
pub mod error;
pub mod reply;
pub mod wire;

pub use client::XsClient;

pub use error::{Errno, Result, XsError};

use std::time::Duration;

/// Access right of one entry of a node's permission list (`n`, `r`, `w`, `b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// The wire letter of this access right.
    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    /// Parse a wire letter.
    pub fn from_letter(c: char) -> Option<Self> {
        match c {
            'n' => Some(Access::None),
            'r' => Some(Access::Read),
            'w' => Some(Access::Write),
            'b' => Some(Access::Both),
            _ => None,
        }
    }
}

/// One entry of a node's permission list. The first entry names the owner and the access of
/// every domain not listed; later entries grant access to one domain each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain the entry applies to.
    pub domid: u32,
    /// What it may do.
    pub access: Access,
}

impl Perm {
    /// Wire form, e.g. `r5` or `n0`.
    pub fn to_wire(self) -> String {
        format!("{}{}", self.access.letter(), self.domid)
    }

    /// Parse the wire form (`b0`, `r12`, …).
    pub fn from_wire(s: &str) -> Option<Self> {
        let mut chars = s.chars();
        let access = Access::from_letter(chars.next()?)?;
        let domid = chars.as_str().parse().ok()?;
        Some(Perm { domid, access })
    }
}

/// A watch firing: the path that changed (relative if the watch was registered relative) and the
/// token given at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed, or the special path (`@introduceDomain`, …) that fired.
    pub path: String,
    /// The token the watch was registered with.
    pub token: String,
}

/// Node operations, available both outside and inside a transaction.
pub trait XsOps {
    /// Read a node; `Ok(None)` when it does not exist (ENOENT).
    fn read(&self, path: &str) -> Result<Option<String>>;
    /// Write a node, creating it and any missing parents.
    fn write(&self, path: &str, value: &str) -> Result<()>;
    /// Create a node (empty value) and any missing parents; an existing node is left alone.
    fn mkdir(&self, path: &str) -> Result<()>;
    /// Remove a node and everything below it. As in xenstored, removing a missing node whose
    /// parent exists succeeds; ENOENT means the parent is missing too.
    fn rm(&self, path: &str) -> Result<()>;
    /// The names of a node's children.
    fn directory(&self, path: &str) -> Result<Vec<String>>;
    /// A node's permission list.
    fn get_perms(&self, path: &str) -> Result<Vec<Perm>>;
    /// Replace a node's permission list.
    fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<()>;

    /// Read many nodes; `None` for each one that does not exist. A connection to a daemon sends
    /// all the requests before reading the replies, so this costs one round trip however many
    /// paths there are (the default does one read after another).
    fn read_many(&self, paths: &[String]) -> Result<Vec<Option<String>>> {
        paths.iter().map(|p| self.read(p)).collect()
    }

    /// The children of many nodes; `None` for each one that does not exist. Pipelined like
    /// [`XsOps::read_many`].
    fn directory_many(&self, paths: &[String]) -> Result<Vec<Option<Vec<String>>>> {
        paths
            .iter()
            .map(|p| match self.directory(p) {
                Ok(c) => Ok(Some(c)),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            })
            .collect()
    }
}

/// A transaction: node operations isolated from everyone else until [`Transaction::commit`].
/// Dropping it without committing aborts it.
pub trait Transaction: XsOps {
    /// Commit. Fails with [`Errno::EAGAIN`] when a node it touched changed meanwhile; the caller
    /// then retries the whole transaction (see [`transact`]).
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A connection to xenstore.
pub trait XenStore: XsOps {
    /// Start a transaction.
    fn begin(&self) -> Result<Box<dyn Transaction + '_>>;
    /// Register a watch. xenstored fires it once at once, then on every change at or below
    /// `path` (or on the special event `path` names when it starts with `@`).
    fn watch(&self, path: &str, token: &str) -> Result<()>;
    /// Remove a watch.
    fn unwatch(&self, path: &str, token: &str) -> Result<()>;
    /// The next watch event: waits up to `timeout` (for ever with `None`); `Ok(None)` on timeout.
    fn read_watch(&self, timeout: Option<Duration>) -> Result<Option<WatchEvent>>;
    /// `GET_DOMAIN_PATH`: the home path of a domain (`/local/domain/<domid>`).
    fn domain_path(&self, domid: u32) -> Result<String>;
}

/// How many times [`transact`] retries a transaction that lost a race, by default.
pub const DEFAULT_TRANSACTION_ATTEMPTS: u32 = 32;

/// Run `body` in a transaction and commit it, retrying the whole transaction while the commit
/// fails with EAGAIN (at most `attempts` times). Any other error aborts and is returned.
pub fn transact<T>(
    xs: &dyn XenStore,
    attempts: u32,
    mut body: impl FnMut(&dyn XsOps) -> Result<T>,
) -> Result<T> {
    let mut last = None;
    for _ in 0..attempts.max(1) {
        let tx = xs.begin()?;
        let value = body(&*tx)?;
        match tx.commit() {
            Ok(()) => return Ok(value),
            Err(e) if e.errno() == Some(Errno::EAGAIN) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(XsError::Daemon {
        errno: Errno::EAGAIN,
        op: "TRANSACTION_END",
        path: String::new(),
    }))
}
