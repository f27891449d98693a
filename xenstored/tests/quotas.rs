//! C xenstored's per-domain quotas under a hostile guest, each with xenstored's error code, and
//! the daemon's limits on a domain's connections and requests in flight.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenplug_xenstore::wire::{Decoder, Message, MsgType};
use xenplug_xenstore::{Access, Errno, Perm, XenStore, XsError, XsOps};
use xenplug_xenstored::daemon::{self, Options, Shutdown};
use xenplug_xenstored::engine::{Quota, Reply, Request};
use xenplug_xenstored::{Engine, MemStore};

fn p(domid: u32, access: Access) -> Perm {
    Perm { domid, access }
}

fn errno<T: std::fmt::Debug>(r: xenplug_xenstore::Result<T>) -> Errno {
    match r {
        Err(XsError::Daemon { errno, .. }) => errno,
        other => panic!("expected a daemon error, got {other:?}"),
    }
}

/// dom0 and guest 5 with its home `/local/domain/5` (owned by the guest, one node).
fn setup() -> (MemStore, MemStore) {
    let dom0 = MemStore::new();
    dom0.introduce_domain(5).unwrap();
    dom0.mkdir("/local/domain/5").unwrap();
    dom0.set_perms("/local/domain/5", &[p(5, Access::None)])
        .unwrap();
    let guest = dom0.connect(5);
    (dom0, guest)
}

#[test]
fn defaults_are_xenstoreds() {
    let q = Quota::default();
    assert_eq!(
        (
            q.nodes,
            q.entry_bytes,
            q.watches,
            q.transactions,
            q.perms,
            q.outstanding,
            q.transaction_nodes
        ),
        (1000, 2048, 128, 10, 5, 20, 1024)
    );
}

/// Spread over directories: more than about 400 children in one directory would reach the
/// node-size quota of the directory itself.
fn name(i: usize) -> String {
    format!("d{}/n{i}", i / 100)
}

#[test]
fn nodes_per_domain() {
    let (dom0, guest) = setup();
    let engine = dom0.engine().clone();
    assert_eq!(engine.domain_usage(5).nodes, 1);
    let mut i = 0;
    while engine.domain_usage(5).nodes < 1000 {
        guest.write(&name(i), "v").unwrap();
        i += 1;
    }
    assert_eq!(errno(guest.write(&name(i), "v")), Errno::ENOSPC);
    assert_eq!(errno(guest.mkdir("one-more")), Errno::ENOSPC);
    // Creating two levels at once needs two: refused as a whole, nothing half-made.
    guest.rm(&name(0)).unwrap();
    assert_eq!(errno(guest.write("a/b", "v")), Errno::ENOSPC);
    assert_eq!(guest.read("a").unwrap(), None);
    guest.write("a", "v").unwrap();
    // Overwriting needs no new node.
    guest.write("a", "w").unwrap();
    // dom0 is not limited; a node it creates in the guest's directory belongs to the guest (it
    // inherits the directory's owner) and counts for it, as in xenstored.
    dom0.write("/local/domain/5/by-dom0", "x").unwrap();
    assert_eq!(engine.domain_usage(5).nodes, 1001);
    assert_eq!(errno(guest.write("b", "v")), Errno::ENOSPC);
    // Given to dom0, it no longer counts.
    dom0.set_perms("/local/domain/5/by-dom0", &[p(0, Access::Read)])
        .unwrap();
    assert_eq!(engine.domain_usage(5).nodes, 1000);
    guest.rm("a").unwrap();
    guest.write("b", "v").unwrap();
    engine.check().unwrap();
}

#[test]
fn nodes_per_domain_in_transactions() {
    let (dom0, guest) = setup();
    let engine = dom0.engine().clone();
    // Disjoint directories (owned by the guest), so that neither commit conflicts.
    for d in ["a", "b"] {
        guest.mkdir(d).unwrap();
    }
    let a = guest.begin().unwrap();
    let b = guest.begin().unwrap();
    for i in 0..600 {
        a.write(&format!("a/{}", name(i)), "v").unwrap();
        b.write(&format!("b/{}", name(i)), "v").unwrap();
    }
    // Each fits on its own; inside one transaction, its own new nodes count.
    let mut i = 600;
    let err = loop {
        match a.write(&format!("a/{}", name(i)), "v") {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), Some(Errno::ENOSPC), "{err}");
    b.commit().unwrap();
    assert_eq!(engine.domain_usage(5).nodes, 3 + 6 + 600);
    // The first transaction no longer fits once the second committed.
    let err = a.commit().unwrap_err();
    assert_eq!(err.errno(), Some(Errno::ENOSPC), "{err}");
    assert_eq!(engine.domain_usage(5).nodes, 609);
    engine.check().unwrap();
}

#[test]
fn entry_size() {
    let (dom0, guest) = setup();
    // 24-byte header, one permission entry (8): a value of 2015 bytes makes 2047.
    guest.write("v", &"x".repeat(2015)).unwrap();
    assert_eq!(errno(guest.write("v", &"x".repeat(2016))), Errno::ENOSPC);
    assert_eq!(errno(guest.write("w", &"x".repeat(3000))), Errno::ENOSPC);
    assert_eq!(guest.read("w").unwrap(), None);
    // The children's names count in the parent's record.
    let name = "c".repeat(200);
    let mut made = 0;
    let err = loop {
        match guest.mkdir(&format!("dir/{name}{made:03}")) {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), Some(Errno::ENOSPC));
    assert_eq!(made, (2048 - 32 - 1) / 204);
    // dom0 may write larger nodes.
    dom0.write("/local/domain/5/big", &"x".repeat(4000))
        .unwrap();
}

#[test]
fn watches_per_domain_over_connections() {
    let (dom0, guest) = setup();
    let second = dom0.connect(5);
    for i in 0..64 {
        guest.watch(&format!("/w{i}"), "t").unwrap();
        second.watch(&format!("/x{i}"), "t").unwrap();
    }
    assert_eq!(dom0.engine().domain_usage(5).watches, 128);
    assert_eq!(errno(guest.watch("/w-over", "t")), Errno::E2BIG);
    assert_eq!(errno(second.watch("/x-over", "t")), Errno::E2BIG);
    guest.unwatch("/w0", "t").unwrap();
    second.watch("/x-over", "t").unwrap();
    // dom0 has its own, larger limit.
    for i in 0..200 {
        dom0.watch(&format!("/d{i}"), "t").unwrap();
    }
    dom0.engine().check().unwrap();
}

#[test]
fn transactions_per_domain_over_connections() {
    let (dom0, guest) = setup();
    let second = dom0.connect(5);
    let mut open: Vec<Box<dyn xenplug_xenstore::Transaction + '_>> = Vec::new();
    for _ in 0..5 {
        open.push(guest.begin().unwrap());
        open.push(second.begin().unwrap());
    }
    assert_eq!(dom0.engine().domain_usage(5).transactions, 10);
    assert_eq!(errno(guest.begin().map(drop)), Errno::ENOSPC);
    assert_eq!(errno(second.begin().map(drop)), Errno::ENOSPC);
    open.pop();
    guest.begin().unwrap();
    let dom0_txs: Vec<_> = (0..20).map(|_| dom0.begin().unwrap()).collect();
    assert_eq!(dom0_txs.len(), 20);
}

#[test]
fn permission_entries() {
    let (dom0, guest) = setup();
    guest.write("n", "v").unwrap();
    let mut five = vec![p(5, Access::Read); 5];
    five[0] = p(5, Access::None);
    guest.set_perms("n", &five).unwrap();
    let mut six = five.clone();
    six.push(p(9, Access::Read));
    assert_eq!(errno(guest.set_perms("n", &six)), Errno::ENOSPC);
    assert_eq!(guest.get_perms("n").unwrap(), five);
    dom0.set_perms("/local/domain/5/n", &six).unwrap();
}

#[test]
fn nodes_one_transaction_looks_at() {
    let (dom0, guest) = setup();
    // Nodes a guest can read: its own (at most 1000), so lower the quota to keep this short.
    dom0.engine().set_quota(Quota {
        transaction_nodes: 50,
        ..Quota::default()
    });
    for i in 0..60 {
        guest.write(&format!("r{i}"), "v").unwrap();
    }
    let tx = guest.begin().unwrap();
    let mut read = 0;
    let err = loop {
        match tx.read(&format!("r{read}")) {
            Ok(_) => read += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), Some(Errno::ENOSPC));
    // The first read also looked at nothing else; each read records one node.
    assert_eq!(read, 50);
    drop(tx);
    // dom0 is not limited.
    let tx = dom0.begin().unwrap();
    for i in 0..60 {
        tx.read(&format!("/local/domain/5/r{i}")).unwrap();
    }
}

#[test]
fn special_paths_count_permission_entries_too() {
    let (dom0, guest) = setup();
    let many: Vec<Perm> = (0..6).map(|i| p(i, Access::Read)).collect();
    // Through the engine directly: the guest's SET_PERMS of @releaseDomain is refused for the
    // count before the permission check.
    let engine = dom0.engine().clone();
    let g = engine.connect(5, Arc::new(NoEvents));
    assert_eq!(
        engine.execute(g, 0, Request::SetPerms("@releaseDomain".into(), many)),
        Err(Errno::ENOSPC)
    );
    assert_eq!(
        engine.execute(g, 0, Request::GetPerms("@releaseDomain".into())),
        Ok((
            Reply::Perms(vec![p(0, Access::None), p(0x7FF4, Access::Read)]),
            None
        ))
    );
    drop(guest);
}

struct NoEvents;
impl xenplug_xenstored::engine::EventSink for NoEvents {
    fn watch_event(&self, _: &[u8], _: &[u8]) {}
}

// ----- the daemon -----

struct Daemon {
    _dir: tempfile::TempDir,
    guest_socket: std::path::PathBuf,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    engine: Arc<Engine>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn daemon(max_queued_bytes: usize) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::new(dir.path().join("socket"));
    let guest_socket = dir.path().join("domain-5");
    opts.domain_sockets = vec![(5, guest_socket.clone())];
    opts.max_queued_bytes = max_queued_bytes;
    let engine = Engine::new();
    let listeners = daemon::bind_all(&opts).unwrap();
    let shutdown = Shutdown::new();
    let (e, sd) = (engine.clone(), shutdown.clone());
    let thread = std::thread::spawn(move || daemon::serve_listeners(&opts, e, listeners, sd));
    Daemon {
        _dir: dir,
        guest_socket,
        shutdown,
        thread: Some(thread),
        engine,
    }
}

fn read_message(s: &mut UnixStream, d: &mut Decoder, pending: &mut Vec<u8>) -> Option<Message> {
    loop {
        if !pending.is_empty() {
            let (used, msg) = d.feed(pending).unwrap();
            pending.drain(..used);
            if msg.is_some() {
                return msg;
            }
        }
        let mut buf = [0u8; 65536];
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn connections_per_domain_socket() {
    let d = daemon(daemon::DEFAULT_MAX_QUEUED_BYTES);
    let mut open = Vec::new();
    for _ in 0..daemon::DEFAULT_MAX_DOMAIN_CONNECTIONS {
        let c = xenplug_xenstore::XsClient::open_socket(&d.guest_socket).unwrap();
        c.domain_path(5).unwrap();
        open.push(c);
    }
    // One more is closed at once: it reads end of stream.
    let mut extra = UnixStream::connect(&d.guest_socket).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(extra.read(&mut buf).unwrap(), 0);
    // Once one goes, a new one is served.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = xenplug_xenstore::XsClient::open_socket(&d.guest_socket).unwrap();
        match c.domain_path(5) {
            Ok(p) => {
                assert_eq!(p, "/local/domain/5");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never served again: {e}"),
        }
    }
}

#[test]
fn outstanding_requests_throttle_a_guest_that_does_not_read() {
    // 64 KiB of unsent output would disconnect the guest if the daemon kept reading its
    // requests; with at most 20 in flight it stops reading and waits for the guest instead.
    let d = daemon(64 * 1024);
    let mut s = UnixStream::connect(&d.guest_socket).unwrap();
    const N: u32 = 40_000;
    let mut bytes = Vec::new();
    for i in 0..N {
        let m = Message::new(MsgType::READ, i, 0, b"/missing\0".to_vec());
        bytes.extend(m.encode().unwrap());
    }
    // Send without reading until the daemon has taken nothing for 2 s: the socket buffers
    // (requests one way, replies the other) are full and it waits for its replies to go out.
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut off = 0;
    while off < bytes.len() {
        match s.write(&bytes[off..]) {
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("the daemon dropped the guest after {off} bytes: {e}"),
        }
    }
    assert!(
        off < bytes.len(),
        "the daemon read every request without any reply read"
    );
    assert_eq!(
        d.engine.connection_count(),
        1,
        "the guest is still connected"
    );
    // Now read: everything comes back, in order, while the rest is sent.
    s.set_write_timeout(None).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let rest = bytes[off..].to_vec();
    let sender = std::thread::spawn(move || writer.write_all(&rest));
    let (mut dec, mut pending) = (Decoder::new(), Vec::new());
    for i in 0..N {
        let m = read_message(&mut s, &mut dec, &mut pending)
            .unwrap_or_else(|| panic!("disconnected after {i} replies"));
        assert_eq!(m.req_id, i);
        assert_eq!(m.msg_type, MsgType::ERROR.to_u32());
    }
    sender.join().unwrap().unwrap();
    assert_eq!(d.engine.connection_count(), 1);
}
