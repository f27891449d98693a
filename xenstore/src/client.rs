//! [`XsClient`]: the real [`XenStore`] implementation.
//!
//! Plain, non-transactional `read`/`write`/`rm`/`directory` go through xenstore-rs
//! ([`xenstore_rs::unix::XsUnix`]), which finds the daemon at `$XENSTORED_PATH`, then
//! `/run/xenstored/socket`, then the `/dev/xen/xenbus` device. Everything xenstore-rs lacks —
//! transactions, `mkdir`, permissions, watches, `GET_DOMAIN_PATH`, `DIRECTORY_PART` for
//! directories over one payload — goes over a second connection speaking [`crate::wire`],
//! opened on first use with the same search order, so a hotplug script that only reads and
//! writes opens a single connection.
//!
//! Watch events that arrive on that connection while a reply is awaited are queued and
//! returned by [`XenStore::read_watch`] in order.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xenstore_rs::Xs;

use crate::reply::{
    decode_reply, parse_list, parse_perms, parse_watch_event, DirectoryParts, PartStep,
};
use crate::wire::{self, Decoder, Message, MsgType};
use crate::{Errno, Perm, Result, Transaction, WatchEvent, XenStore, XsError, XsOps};

/// Default socket of the local xenstored.
pub const DEFAULT_SOCKET: &str = "/run/xenstored/socket";
/// The xenbus device, used when no daemon socket is reachable (inside a guest).
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";
/// Environment variable naming the daemon socket (honoured by libxenstore and xenstore-rs).
pub const XENSTORED_PATH_ENV: &str = "XENSTORED_PATH";

/// Where the second connection goes.
#[derive(Debug, Clone)]
enum Target {
    /// Same search order as xenstore-rs, from the process environment.
    Default,
    /// An explicit socket.
    Socket(PathBuf),
}

/// A connection to xenstored (see the module docs for which operation uses which transport).
pub struct XsClient {
    rs: Option<xenstore_rs::unix::XsUnix>,
    target: Target,
    conn: RefCell<Option<Conn>>,
}

impl fmt::Debug for XsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XsClient")
            .field("xenstore_rs", &self.rs.is_some())
            .field("target", &self.target)
            .field("wire_connection_open", &self.conn.borrow().is_some())
            .finish()
    }
}

impl XsClient {
    /// Connect as the process environment says (`XENSTORED_PATH`, then
    /// `/run/xenstored/socket`, then `/dev/xen/xenbus`). Opens exactly one connection.
    pub fn open() -> Result<Self> {
        let rs = xenstore_rs::unix::XsUnix::new()?;
        Ok(XsClient {
            rs: Some(rs),
            target: Target::Default,
            conn: RefCell::new(None),
        })
    }

    /// Connect to the daemon socket at `path`, ignoring the environment. Every operation uses
    /// this crate's wire codec over that one socket (xenstore-rs cannot be pointed at a path).
    pub fn open_socket(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = Conn::connect_socket(&path)?;
        Ok(XsClient {
            rs: None,
            target: Target::Socket(path),
            conn: RefCell::new(Some(conn)),
        })
    }

    /// True once the second (wire codec) connection has been opened.
    pub fn wire_connection_open(&self) -> bool {
        self.conn.borrow().is_some()
    }

    /// Run `f` on the wire connection, opening it first if needed.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        let mut slot = self.conn.borrow_mut();
        if slot.is_none() {
            *slot = Some(match &self.target {
                Target::Default => Conn::connect_default()?,
                Target::Socket(p) => Conn::connect_socket(p)?,
            });
        }
        f(slot.as_mut().expect("connection just opened"))
    }

    fn request(&self, op: MsgType, tx_id: u32, payload: Vec<u8>, path: &str) -> Result<Vec<u8>> {
        self.with_conn(|c| c.request(op, tx_id, payload, path))
    }

    /// Send one `op` request per path (outside any transaction), all before reading a reply;
    /// the per-path results in order.
    fn pipeline(&self, op: MsgType, paths: &[String]) -> Result<Vec<Result<Vec<u8>>>> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        self.with_conn(|c| c.pipeline(op, paths))
    }

    /// `INTRODUCE domid mfn port`: tell xenstored about a domain (dom0 only). Fires
    /// `@introduceDomain`.
    pub fn introduce_domain(&self, domid: u32, mfn: u64, port: u32) -> Result<()> {
        let payload = wire::join_strings(&[domid.to_string(), mfn.to_string(), port.to_string()]);
        self.request(MsgType::INTRODUCE, 0, payload, "").map(drop)
    }

    /// `RELEASE domid` (dom0 only). Fires `@releaseDomain`.
    pub fn release_domain(&self, domid: u32) -> Result<()> {
        let payload = wire::join_strings(&[domid.to_string()]);
        self.request(MsgType::RELEASE, 0, payload, "").map(drop)
    }

    /// `IS_DOMAIN_INTRODUCED domid` (dom0 only).
    pub fn is_domain_introduced(&self, domid: u32) -> Result<bool> {
        let payload = wire::join_strings(&[domid.to_string()]);
        let reply = self.request(MsgType::IS_DOMAIN_INTRODUCED, 0, payload, "")?;
        Ok(wire::strip_nul(&reply) == b"T")
    }

    /// `RESET_WATCHES`: drop all watches and transactions of this connection.
    pub fn reset_watches(&self) -> Result<()> {
        self.request(MsgType::RESET_WATCHES, 0, vec![0], "")
            .map(drop)?;
        self.with_conn(|c| {
            c.events.clear();
            Ok(())
        })
    }

    /// `CONTROL` with the given arguments; returns the reply text.
    pub fn control(&self, args: &[&str]) -> Result<String> {
        let reply = self.request(MsgType::CONTROL, 0, wire::join_strings(args), "")?;
        Ok(String::from_utf8_lossy(wire::strip_nul(&reply)).into_owned())
    }

    /// Read a node's raw bytes (values need not be UTF-8).
    pub fn read_bytes(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.request(MsgType::READ, 0, wire::join_strings(&[path]), path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn rs_error(e: io::Error, op: &'static str, path: &str) -> XsError {
        let msg = e.to_string();
        if let Some(name) = msg.strip_prefix("XS interface error ") {
            if let Some(errno) = Errno::from_name(name.trim()) {
                return XsError::Daemon {
                    errno,
                    op,
                    path: path.to_string(),
                };
            }
        }
        if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::Unsupported {
            return XsError::Protocol(format!("{op} {path}: {msg}"));
        }
        XsError::Io(e)
    }
}

// ----- operations shared by the plain client and its transactions -----

fn op_read(c: &XsClient, tx: u32, path: &str) -> Result<Option<String>> {
    match c.request(MsgType::READ, tx, wire::join_strings(&[path]), path) {
        Ok(v) => String::from_utf8(v)
            .map(Some)
            .map_err(|_| XsError::Protocol(format!("value of {path} is not UTF-8"))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn op_write(c: &XsClient, tx: u32, path: &str, value: &str) -> Result<()> {
    let mut payload = wire::join_strings(&[path]);
    payload.extend_from_slice(value.as_bytes());
    c.request(MsgType::WRITE, tx, payload, path).map(drop)
}

fn op_simple(c: &XsClient, tx: u32, op: MsgType, path: &str) -> Result<()> {
    c.request(op, tx, wire::join_strings(&[path]), path)
        .map(drop)
}

fn op_directory(c: &XsClient, tx: u32, path: &str) -> Result<Vec<String>> {
    match c.request(MsgType::DIRECTORY, tx, wire::join_strings(&[path]), path) {
        Ok(reply) => Ok(parse_list(&reply)),
        Err(e) if e.errno() == Some(Errno::E2BIG) => op_directory_part(c, tx, path),
        Err(e) => Err(e),
    }
}

/// `DIRECTORY_PART` loop, restarting when the node's generation changes between chunks
/// (bounded: see [`DirectoryParts`]).
fn op_directory_part(c: &XsClient, tx: u32, path: &str) -> Result<Vec<String>> {
    let mut parts = DirectoryParts::new();
    let mut offset = 0;
    loop {
        let payload = wire::join_strings(&[path, &offset.to_string()]);
        let reply = c.request(MsgType::DIRECTORY_PART, tx, payload, path)?;
        match parts.push(&reply, path)? {
            PartStep::Next(next) => offset = next,
            PartStep::Done(list) => return Ok(list),
        }
    }
}

fn op_get_perms(c: &XsClient, tx: u32, path: &str) -> Result<Vec<Perm>> {
    let reply = c.request(MsgType::GET_PERMS, tx, wire::join_strings(&[path]), path)?;
    parse_perms(&reply, path)
}

fn op_set_perms(c: &XsClient, tx: u32, path: &str, perms: &[Perm]) -> Result<()> {
    let mut parts = vec![path.to_string()];
    parts.extend(perms.iter().map(|p| p.to_wire()));
    c.request(MsgType::SET_PERMS, tx, wire::join_strings(&parts), path)
        .map(drop)
}

impl XsOps for XsClient {
    fn read(&self, path: &str) -> Result<Option<String>> {
        match &self.rs {
            Some(rs) => match rs.read(path) {
                Ok(v) => Ok(Some(v.into_string())),
                Err(e) => match Self::rs_error(e, "READ", path) {
                    e if e.is_not_found() => Ok(None),
                    e => Err(e),
                },
            },
            None => op_read(self, 0, path),
        }
    }

    fn write(&self, path: &str, value: &str) -> Result<()> {
        match &self.rs {
            Some(rs) => rs
                .write(path, value)
                .map_err(|e| Self::rs_error(e, "WRITE", path)),
            None => op_write(self, 0, path, value),
        }
    }

    fn mkdir(&self, path: &str) -> Result<()> {
        op_simple(self, 0, MsgType::MKDIR, path)
    }

    fn rm(&self, path: &str) -> Result<()> {
        match &self.rs {
            Some(rs) => rs.rm(path).map_err(|e| Self::rs_error(e, "RM", path)),
            None => op_simple(self, 0, MsgType::RM, path),
        }
    }

    fn directory(&self, path: &str) -> Result<Vec<String>> {
        match &self.rs {
            Some(rs) => match rs.directory(path) {
                Ok(list) => Ok(list
                    .into_iter()
                    .map(|s| s.into_string())
                    .filter(|s| !s.is_empty())
                    .collect()),
                Err(e) => match Self::rs_error(e, "DIRECTORY", path) {
                    e if e.errno() == Some(Errno::E2BIG) => op_directory_part(self, 0, path),
                    e => Err(e),
                },
            },
            None => op_directory(self, 0, path),
        }
    }

    fn get_perms(&self, path: &str) -> Result<Vec<Perm>> {
        op_get_perms(self, 0, path)
    }

    fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<()> {
        op_set_perms(self, 0, path, perms)
    }

    fn read_many(&self, paths: &[String]) -> Result<Vec<Option<String>>> {
        let replies = self.pipeline(MsgType::READ, paths)?;
        replies
            .into_iter()
            .zip(paths)
            .map(|(r, p)| match r {
                Ok(payload) => String::from_utf8(payload)
                    .map(Some)
                    .map_err(|_| XsError::Protocol(format!("value of {p} is not UTF-8"))),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            })
            .collect()
    }

    fn directory_many(&self, paths: &[String]) -> Result<Vec<Option<Vec<String>>>> {
        let replies = self.pipeline(MsgType::DIRECTORY, paths)?;
        replies
            .into_iter()
            .zip(paths)
            .map(|(r, p)| match r {
                Ok(payload) => Ok(Some(parse_list(&payload))),
                Err(e) if e.is_not_found() => Ok(None),
                // A listing too long for one reply: fetch it in parts, as `directory` does.
                Err(e) if e.errno() == Some(Errno::E2BIG) => {
                    op_directory_part(self, 0, p).map(Some)
                }
                Err(e) => Err(e),
            })
            .collect()
    }
}

impl XenStore for XsClient {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>> {
        let reply = self.request(MsgType::TRANSACTION_START, 0, vec![0], "")?;
        let text = String::from_utf8_lossy(wire::strip_nul(&reply)).into_owned();
        let id: u32 = text
            .parse()
            .map_err(|_| XsError::Protocol(format!("bad transaction id {text:?}")))?;
        Ok(Box::new(XsTransaction {
            client: self,
            id,
            open: true,
        }))
    }

    fn watch(&self, path: &str, token: &str) -> Result<()> {
        self.request(MsgType::WATCH, 0, wire::join_strings(&[path, token]), path)
            .map(drop)
    }

    fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        self.request(
            MsgType::UNWATCH,
            0,
            wire::join_strings(&[path, token]),
            path,
        )
        .map(drop)
    }

    fn read_watch(&self, timeout: Option<Duration>) -> Result<Option<WatchEvent>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.with_conn(|c| c.next_event(deadline))
    }

    fn domain_path(&self, domid: u32) -> Result<String> {
        let reply = self.request(
            MsgType::GET_DOMAIN_PATH,
            0,
            wire::join_strings(&[domid.to_string()]),
            "",
        )?;
        String::from_utf8(wire::strip_nul(&reply).to_vec())
            .map_err(|_| XsError::Protocol("GET_DOMAIN_PATH reply is not UTF-8".into()))
    }
}

/// A transaction on [`XsClient`]'s wire connection. Dropping it uncommitted aborts it.
#[derive(Debug)]
pub struct XsTransaction<'a> {
    client: &'a XsClient,
    id: u32,
    open: bool,
}

impl XsTransaction<'_> {
    /// The daemon's transaction id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn end(&mut self, commit: bool) -> Result<()> {
        self.open = false;
        let arg = if commit { "T" } else { "F" };
        self.client
            .request(
                MsgType::TRANSACTION_END,
                self.id,
                wire::join_strings(&[arg]),
                "",
            )
            .map(drop)
    }
}

impl XsOps for XsTransaction<'_> {
    fn read(&self, path: &str) -> Result<Option<String>> {
        op_read(self.client, self.id, path)
    }
    fn write(&self, path: &str, value: &str) -> Result<()> {
        op_write(self.client, self.id, path, value)
    }
    fn mkdir(&self, path: &str) -> Result<()> {
        op_simple(self.client, self.id, MsgType::MKDIR, path)
    }
    fn rm(&self, path: &str) -> Result<()> {
        op_simple(self.client, self.id, MsgType::RM, path)
    }
    fn directory(&self, path: &str) -> Result<Vec<String>> {
        op_directory(self.client, self.id, path)
    }
    fn get_perms(&self, path: &str) -> Result<Vec<Perm>> {
        op_get_perms(self.client, self.id, path)
    }
    fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<()> {
        op_set_perms(self.client, self.id, path, perms)
    }
}

impl Transaction for XsTransaction<'_> {
    fn commit(mut self: Box<Self>) -> Result<()> {
        self.end(true)
    }
}

impl Drop for XsTransaction<'_> {
    fn drop(&mut self) {
        if self.open {
            // Abort; a failure only means the daemon already forgot the transaction.
            let _ = self.end(false);
        }
    }
}

// ----- the wire connection -----

enum Endpoint {
    Socket(UnixStream),
    Device(File),
}

impl Endpoint {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Endpoint::Socket(s) => s.as_fd(),
            Endpoint::Device(f) => f.as_fd(),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Endpoint::Socket(s) => s.read(buf),
            Endpoint::Device(f) => f.read(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Endpoint::Socket(s) => s.write_all(buf),
            Endpoint::Device(f) => f.write_all(buf),
        }
    }
    /// Send several encoded requests. On the socket, in one write. On the xenbus device, one
    /// write each: Linux's xenbus_dev_frontend (`xenbus_file_write`) handles the first complete
    /// message of a write and drops whatever follows it in the same write, so a batch written
    /// at once gets one reply and the rest are never answered (a domU or driver domain would
    /// wait for ever). The device queues the replies, so they still arrive in one pass.
    fn write_requests(&mut self, requests: &[Vec<u8>]) -> io::Result<()> {
        match self {
            Endpoint::Socket(s) => s.write_all(&requests.concat()),
            Endpoint::Device(f) => requests.iter().try_for_each(|r| f.write_all(r)),
        }
    }
}

struct Conn {
    io: Endpoint,
    decoder: Decoder,
    /// Bytes read but not yet fed to the decoder start at `consumed`.
    unparsed: Vec<u8>,
    consumed: usize,
    next_req_id: u32,
    events: VecDeque<WatchEvent>,
}

impl Conn {
    fn new(io: Endpoint) -> Self {
        Conn {
            io,
            decoder: Decoder::new(),
            unparsed: Vec::new(),
            consumed: 0,
            next_req_id: 1,
            events: VecDeque::new(),
        }
    }

    fn connect_socket(path: &Path) -> io::Result<Self> {
        Ok(Self::new(Endpoint::Socket(UnixStream::connect(path)?)))
    }

    /// The search order of xenstore-rs (and libxenstore): the socket named by
    /// `XENSTORED_PATH` or the default socket, then the xenbus device.
    fn connect_default() -> io::Result<Self> {
        let socket = std::env::var_os(XENSTORED_PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let is_socket = std::fs::metadata(&socket)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        if is_socket {
            if let Ok(s) = UnixStream::connect(&socket) {
                return Ok(Self::new(Endpoint::Socket(s)));
            }
        }
        let dev = File::options().read(true).write(true).open(XENBUS_DEVICE)?;
        Ok(Self::new(Endpoint::Device(dev)))
    }

    fn request(
        &mut self,
        op: MsgType,
        tx_id: u32,
        payload: Vec<u8>,
        path: &str,
    ) -> Result<Vec<u8>> {
        let (req_id, bytes) = self.encode_request(op, tx_id, payload, path)?;
        self.io.write_all(&bytes)?;
        let reply = self.next_reply()?;
        if reply.req_id != req_id {
            return Err(XsError::Protocol(format!(
                "reply for request {} while waiting for {req_id}",
                reply.req_id
            )));
        }
        decode_reply(reply, op, path)?
    }

    /// Number and encode one request (too large for the wire: `E2BIG` for `path`).
    fn encode_request(
        &mut self,
        op: MsgType,
        tx_id: u32,
        payload: Vec<u8>,
        path: &str,
    ) -> Result<(u32, Vec<u8>)> {
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
        let msg = Message::new(op, req_id, tx_id, payload);
        let bytes = msg.encode().map_err(|_| XsError::Daemon {
            errno: Errno::E2BIG,
            op: op.name(),
            path: path.to_string(),
        })?;
        Ok((req_id, bytes))
    }

    /// The next message that is not a watch event (those met on the way are queued).
    fn next_reply(&mut self) -> Result<Message> {
        loop {
            let reply = self
                .read_message(None)?
                .ok_or_else(|| XsError::Protocol("no reply".into()))?;
            if reply.msg_type == MsgType::WATCH_EVENT.to_u32() {
                self.queue_event(&reply)?;
                continue;
            }
            return Ok(reply);
        }
    }

    /// Send one request per path (in a single write on a socket, see
    /// [`Endpoint::write_requests`]), then collect the replies by request id (watch events met
    /// on the way are queued). Errors the daemon names are per path; a connection or protocol
    /// error fails the whole batch.
    fn pipeline(&mut self, op: MsgType, paths: &[String]) -> Result<Vec<Result<Vec<u8>>>> {
        let first = self.next_req_id;
        let mut requests = Vec::with_capacity(paths.len());
        for p in paths {
            let payload = wire::join_strings(&[p.as_bytes()]);
            requests.push(self.encode_request(op, 0, payload, p)?.1);
        }
        self.io.write_requests(&requests)?;
        let mut out: Vec<Option<Result<Vec<u8>>>> = (0..paths.len()).map(|_| None).collect();
        let mut pending = paths.len();
        while pending > 0 {
            let reply = self.next_reply()?;
            let index = reply.req_id.wrapping_sub(first) as usize;
            let slot = out.get_mut(index).filter(|s| s.is_none()).ok_or_else(|| {
                XsError::Protocol(format!("unexpected reply for request {}", reply.req_id))
            })?;
            *slot = Some(decode_reply(reply, op, &paths[index])?);
            pending -= 1;
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn queue_event(&mut self, msg: &Message) -> Result<()> {
        self.events.push_back(parse_watch_event(msg)?);
        Ok(())
    }

    fn next_event(&mut self, deadline: Option<Instant>) -> Result<Option<WatchEvent>> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(Some(ev));
            }
            match self.read_message(deadline)? {
                None => return Ok(None),
                Some(m) if m.msg_type == MsgType::WATCH_EVENT.to_u32() => self.queue_event(&m)?,
                Some(m) => {
                    return Err(XsError::Protocol(format!(
                        "unexpected message type {} while waiting for a watch event",
                        m.msg_type
                    )))
                }
            }
        }
    }

    /// The next complete message; `None` when `deadline` passes first.
    fn read_message(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        loop {
            if self.consumed < self.unparsed.len() {
                let (used, msg) = self
                    .decoder
                    .feed(&self.unparsed[self.consumed..])
                    .map_err(|e| XsError::Protocol(e.to_string()))?;
                // Advance a cursor instead of shifting the buffer per message: a pipelined
                // batch brings hundreds of replies in one read.
                self.consumed += used;
                if self.consumed == self.unparsed.len() {
                    self.unparsed.clear();
                    self.consumed = 0;
                }
                if let Some(m) = msg {
                    return Ok(Some(m));
                }
            }
            if !self.wait_readable(deadline)? {
                return Ok(None);
            }
            let mut buf = [0u8; wire::HEADER_LEN + wire::PAYLOAD_MAX];
            let n = match self.io.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(XsError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "xenstored closed the connection",
                )));
            }
            if self.consumed > 0 {
                self.unparsed.drain(..self.consumed);
                self.consumed = 0;
            }
            self.unparsed.extend_from_slice(&buf[..n]);
        }
    }

    fn wait_readable(&self, deadline: Option<Instant>) -> Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so that a sub-millisecond remainder still waits.
                    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.io.fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(XsError::Io(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rs_errors_map_back_to_errno() {
        let e = io::Error::new(io::ErrorKind::NotFound, "XS interface error ENOENT");
        let mapped = XsClient::rs_error(e, "READ", "/x");
        assert_eq!(mapped.errno(), Some(Errno::ENOENT));
        assert!(mapped.is_not_found());
        let e = io::Error::new(io::ErrorKind::WouldBlock, "XS interface error EAGAIN");
        assert_eq!(
            XsClient::rs_error(e, "WRITE", "/x").errno(),
            Some(Errno::EAGAIN)
        );
        let e = io::Error::new(io::ErrorKind::BrokenPipe, "pipe");
        assert!(matches!(
            XsClient::rs_error(e, "READ", "/x"),
            XsError::Io(_)
        ));
    }

    #[test]
    fn lists_parse_like_libxenstore() {
        assert_eq!(parse_list(b"a\0bb\0"), vec!["a", "bb"]);
        assert_eq!(parse_list(b""), Vec::<String>::new());
        assert_eq!(parse_list(b"b0\0r5\0"), vec!["b0", "r5"]);
    }

    /// Plays Linux's /dev/xen/xenbus on a seqpacket socket (one record per `write()`): it
    /// answers the first complete message of each write and drops the rest of that write, as
    /// `xenbus_file_write` does. A READ of `p` is answered with the value `v:p`. It stops (and
    /// closes, so a client still waiting fails instead of hanging) after 2 s without a request.
    fn xenbus_device_stand_in() -> (File, std::thread::JoinHandle<usize>) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (client, device) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut device = UnixStream::from(device);
        let serve = std::thread::spawn(move || {
            let mut answered = 0;
            let mut buf = vec![0u8; 65536];
            device
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            while let Ok(n) = device.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let (_, msg) = Decoder::new().feed(&buf[..n]).unwrap();
                let msg = msg.expect("a write holds at least one complete message");
                let path = String::from_utf8_lossy(wire::strip_nul(&msg.payload)).into_owned();
                let reply = Message::new(MsgType::READ, msg.req_id, 0, format!("v:{path}").into());
                device.write_all(&reply.encode().unwrap()).unwrap();
                answered += 1;
            }
            answered
        });
        (File::from(client), serve)
    }

    #[test]
    fn pipelined_reads_over_the_xenbus_device_write_one_message_per_write() {
        let (file, serve) = xenbus_device_stand_in();
        let mut conn = Conn::new(Endpoint::Device(file));
        let paths: Vec<String> = [
            "backend/vif/5/0/vifname",
            "backend/vif/5/0/ip",
            "backend/vif/5/0/rate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Written at once, the stand-in would answer only the first read, then close after 2 s
        // ("xenstored closed the connection").
        let mut got = Vec::new();
        let replies = conn.pipeline(MsgType::READ, &paths).unwrap();
        for r in replies {
            got.push(String::from_utf8(r.unwrap()).unwrap());
        }
        assert_eq!(
            got,
            paths.iter().map(|p| format!("v:{p}")).collect::<Vec<_>>()
        );
        drop(conn);
        assert_eq!(serve.join().unwrap(), 3);
    }

    #[test]
    fn open_socket_fails_cleanly_without_daemon() {
        let dir = std::env::temp_dir().join(format!("xsclient-none-{}", std::process::id()));
        let err = XsClient::open_socket(dir.join("nothing")).unwrap_err();
        assert!(matches!(err, XsError::Io(_)), "{err}");
    }
}
