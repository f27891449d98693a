//! Hostile and broken clients over a raw socket; after each case the daemon must still serve
//! another connection. Also many concurrent clients.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use xenplug_xenstore::wire::{Decoder, Header, Message, MsgType, PAYLOAD_MAX};
use xenplug_xenstore::{XenStore, XsOps};
use xenplug_xenstored::testing::{spawn_daemon, TestDaemon};

struct Raw {
    s: UnixStream,
    d: Decoder,
    pending: Vec<u8>,
}

impl Raw {
    fn connect(d: &TestDaemon) -> Raw {
        let s = UnixStream::connect(d.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw {
            s,
            d: Decoder::new(),
            pending: Vec::new(),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn send(&mut self, msg_type: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
        let m = Message {
            msg_type,
            req_id,
            tx_id,
            payload: payload.to_vec(),
        };
        self.send_raw(&m.encode().unwrap());
    }

    /// The next message, or `None` at end of stream.
    fn recv(&mut self) -> Option<Message> {
        loop {
            if !self.pending.is_empty() {
                let (used, msg) = self.d.feed(&self.pending).unwrap();
                self.pending.drain(..used);
                if msg.is_some() {
                    return msg;
                }
            }
            let mut buf = [0u8; 8192];
            match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn call(&mut self, msg_type: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) -> Message {
        self.send(msg_type.to_u32(), req_id, tx_id, payload);
        self.recv().expect("reply")
    }
}

#[track_caller]
fn assert_error(m: &Message, req_id: u32, name: &str) {
    assert_eq!(m.msg_type, MsgType::ERROR.to_u32(), "{m:?}");
    assert_eq!(m.req_id, req_id);
    assert_eq!(m.payload, format!("{name}\0").into_bytes());
}

/// A fresh connection gets served normally.
#[track_caller]
fn still_serving(d: &TestDaemon) {
    let mut r = Raw::connect(d);
    let m = r.call(MsgType::READ, 77, 0, b"/local/domain/0/name\0");
    assert_eq!(m.msg_type, MsgType::READ.to_u32());
    assert_eq!(m.req_id, 77);
    assert_eq!(m.payload, b"Domain-0");
}

fn wait_for_connections(d: &TestDaemon, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.engine().connection_count() != n {
        assert!(
            Instant::now() < deadline,
            "{} connections, expected {n}",
            d.engine().connection_count()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn unknown_and_client_only_types_get_enosys() {
    let d = spawn_daemon();
    let mut r = Raw::connect(&d);
    for (i, t) in [20u32, 27, 1000, 0xffff, 15, 16, 23, 24, 25, 26]
        .into_iter()
        .enumerate()
    {
        r.send(t, i as u32 + 1, 0, b"/x\0");
        assert_error(&r.recv().unwrap(), i as u32 + 1, "ENOSYS");
    }
    // Same connection keeps working.
    let m = r.call(MsgType::WRITE, 50, 0, b"/ok\0v");
    assert_eq!(
        (m.msg_type, m.req_id, m.payload),
        (11, 50, b"OK\0".to_vec())
    );
    still_serving(&d);
}

#[test]
fn malformed_payloads_get_einval() {
    let d = spawn_daemon();
    let mut r = Raw::connect(&d);
    let cases: &[(MsgType, &[u8])] = &[
        (MsgType::READ, b"/x"),               // no NUL
        (MsgType::READ, b""),                 // nothing
        (MsgType::READ, b"/a\0/b\0"),         // two arguments
        (MsgType::READ, b"/a b\0"),           // bad character
        (MsgType::READ, b"/\xff\0"),          // not ASCII
        (MsgType::WRITE, b"/no-nul"),         // no path terminator
        (MsgType::MKDIR, b"/a/\0"),           // trailing slash
        (MsgType::RM, b"//\0"),               // double slash
        (MsgType::DIRECTORY, b"@x\0"),        // special name
        (MsgType::DIRECTORY_PART, b"/\0"),    // missing offset
        (MsgType::GET_PERMS, b"\0"),          // empty path
        (MsgType::SET_PERMS, b"/\0"),         // no permissions
        (MsgType::SET_PERMS, b"/\0x5\0"),     // bad permission letter
        (MsgType::SET_PERMS, b"/\0r\0"),      // no domid
        (MsgType::WATCH, b"/only-path\0"),    // no token
        (MsgType::WATCH, b"/p\0t\0extra\0"),  // depth without the feature
        (MsgType::UNWATCH, b"/p\0"),          // no token
        (MsgType::TRANSACTION_END, b"X\0"),   // neither T nor F
        (MsgType::GET_DOMAIN_PATH, b"abc\0"), // not a domid
        (MsgType::GET_DOMAIN_PATH, b"70000\0"),
        (MsgType::INTRODUCE, b"5\0"),             // missing mfn, port
        (MsgType::INTRODUCE, b"5\x001\x000\x00"), // port 0
        (MsgType::RELEASE, b"0\0"),               // dom0
        (MsgType::CONTROL, b""),                  // no command
    ];
    for (i, (t, payload)) in cases.iter().enumerate() {
        let m = r.call(*t, i as u32 + 100, 0, payload);
        assert_eq!(
            m.msg_type,
            MsgType::ERROR.to_u32(),
            "case {i}: {t} {payload:?}"
        );
        assert_error(&m, i as u32 + 100, "EINVAL");
    }
    still_serving(&d);
}

#[test]
fn unknown_transaction_ids_get_enoent() {
    let d = spawn_daemon();
    let mut r = Raw::connect(&d);
    assert_error(&r.call(MsgType::READ, 1, 4242, b"/\0"), 1, "ENOENT");
    assert_error(&r.call(MsgType::TRANSACTION_END, 2, 0, b"T\0"), 2, "ENOENT");
    let m = r.call(MsgType::TRANSACTION_START, 3, 0, b"\0");
    assert_eq!(m.msg_type, MsgType::TRANSACTION_START.to_u32());
    let id: u32 = std::str::from_utf8(&m.payload[..m.payload.len() - 1])
        .unwrap()
        .parse()
        .unwrap();
    // Replies echo the transaction id.
    let m = r.call(MsgType::WRITE, 4, id, b"/txw\0v");
    assert_eq!((m.msg_type, m.req_id, m.tx_id), (11, 4, id));
    assert_error(
        &r.call(MsgType::TRANSACTION_START, 5, id, b"\0"),
        5,
        "EBUSY",
    );
    // WATCH ignores the transaction id.
    let m = r.call(MsgType::WATCH, 6, 999, b"/txw\0tok\0");
    assert_eq!(m.msg_type, MsgType::WATCH.to_u32());
    let ev = r.recv().unwrap();
    assert_eq!(ev.msg_type, MsgType::WATCH_EVENT.to_u32());
    assert_eq!((ev.req_id, ev.tx_id), (0, 0));
    assert_eq!(ev.payload, b"/txw\0tok\0");
    // As in xenstored, the events a request causes are queued before its reply.
    let ev = r.call(MsgType::TRANSACTION_END, 7, id, b"T\0");
    assert_eq!(ev.msg_type, MsgType::WATCH_EVENT.to_u32());
    assert_eq!(ev.payload, b"/txw\0tok\0", "commit fires the watch");
    let m = r.recv().unwrap();
    assert_eq!((m.req_id, m.payload), (7, b"OK\0".to_vec()));
    still_serving(&d);
}

#[test]
fn privileged_requests_from_a_guest_get_eacces() {
    let d = xenplug_xenstored::testing::spawn_daemon_with_domains(&[3]);
    let s = UnixStream::connect(d.domain_socket(3).unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = Raw {
        s,
        d: Decoder::new(),
        pending: Vec::new(),
    };
    for (i, (t, p)) in [
        (MsgType::INTRODUCE, &b"4\x001\x001\x00"[..]),
        (MsgType::RELEASE, b"4\0"),
        (MsgType::IS_DOMAIN_INTRODUCED, b"4\0"),
        (MsgType::RESUME, b"4\0"),
        (MsgType::SET_TARGET, b"4\x005\x00"),
        (MsgType::CONTROL, b"check\0"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_error(&r.call(t, i as u32, 0, p), i as u32, "EACCES");
    }
    let m = r.call(MsgType::GET_DOMAIN_PATH, 9, 0, b"3\0");
    assert_eq!(m.payload, b"/local/domain/3\0");
    still_serving(&d);
}

#[test]
fn payload_limit() {
    let d = spawn_daemon();
    let mut r = Raw::connect(&d);
    // Exactly 4096 bytes of payload are fine.
    let mut payload = b"/max\0".to_vec();
    payload.resize(PAYLOAD_MAX, b'v');
    let m = r.call(MsgType::WRITE, 1, 0, &payload);
    assert_eq!(m.payload, b"OK\0");
    let m = r.call(MsgType::READ, 2, 0, b"/max\0");
    assert_eq!(m.payload.len(), PAYLOAD_MAX - 5);
    // A reply that would exceed the limit: E2BIG.
    for i in 0..500 {
        d.store().mkdir(&format!("/wide/entry-{i:04}")).unwrap();
    }
    assert_error(&r.call(MsgType::DIRECTORY, 3, 0, b"/wide\0"), 3, "E2BIG");
    let m = r.call(MsgType::DIRECTORY_PART, 4, 0, b"/wide\x000\x00");
    assert_eq!(m.msg_type, MsgType::DIRECTORY_PART.to_u32());
    assert!(m.payload.len() <= PAYLOAD_MAX);
    // A header announcing more than 4096 bytes: E2BIG, then the connection is closed.
    let h = Header {
        msg_type: MsgType::WRITE.to_u32(),
        req_id: 5,
        tx_id: 0,
        len: PAYLOAD_MAX as u32 + 1,
    };
    r.send_raw(&h.encode());
    assert_error(&r.recv().unwrap(), 5, "E2BIG");
    assert!(r.recv().is_none(), "connection closed");
    let mut r2 = Raw::connect(&d);
    r2.send_raw(&Header { len: u32::MAX, ..h }.encode());
    assert_error(&r2.recv().unwrap(), 5, "E2BIG");
    assert!(r2.recv().is_none());
    still_serving(&d);
    wait_for_connections(&d, 0);
}

#[test]
fn partial_messages_and_mid_message_disconnects() {
    let d = spawn_daemon();
    // Byte by byte: the daemon reassembles.
    let mut r = Raw::connect(&d);
    let msg = Message::new(MsgType::WRITE, 9, 0, b"/slow\0value".to_vec())
        .encode()
        .unwrap();
    for b in &msg {
        r.send_raw(std::slice::from_ref(b));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(r.recv().unwrap().payload, b"OK\0");
    // Pipelined requests in one write: replies in order.
    let mut batch = Vec::new();
    for i in 0..50u32 {
        batch.extend(
            Message::new(MsgType::WRITE, i, 0, format!("/pipe/{i}\0{i}").into_bytes())
                .encode()
                .unwrap(),
        );
    }
    r.send_raw(&batch);
    for i in 0..50u32 {
        let m = r.recv().unwrap();
        assert_eq!((m.req_id, m.payload), (i, b"OK\0".to_vec()));
    }
    drop(r);

    // A watcher, a transaction, then a disconnect in the middle of a header / a payload.
    for cut in [7usize, 16 + 3] {
        let mut r = Raw::connect(&d);
        r.call(MsgType::WATCH, 1, 0, b"/gone\0t\0");
        r.recv().unwrap(); // initial event
        r.call(MsgType::TRANSACTION_START, 2, 0, b"\0");
        let msg = Message::new(MsgType::WRITE, 3, 0, b"/half\0written".to_vec())
            .encode()
            .unwrap();
        r.send_raw(&msg[..cut]);
        drop(r);
        wait_for_connections(&d, 0);
        assert_eq!(d.engine().total_watches(), 0);
        assert_eq!(d.store().read("/half").unwrap(), None);
        still_serving(&d);
    }

    // Shut down the write side after a partial payload: no reply, connection dropped.
    let mut r = Raw::connect(&d);
    r.send_raw(&msg[..msg.len() - 2]);
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(r.recv().is_none());
    assert_eq!(d.store().read("/slow").unwrap().as_deref(), Some("value"));
    still_serving(&d);
}

#[test]
fn a_client_that_never_reads_is_disconnected() {
    let d = spawn_daemon();
    d.store().write("/fat", &"x".repeat(4000)).unwrap();
    let mut r = Raw::connect(&d);
    r.s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // 2600 replies of 4 KB each exceed the 8 MiB output bound; we read none of them.
    let one = Message::new(MsgType::READ, 1, 0, b"/fat\0".to_vec())
        .encode()
        .unwrap();
    let mut sent = 0;
    for _ in 0..2600 {
        if r.s.write_all(&one).is_err() {
            break; // already disconnected
        }
        sent += 1;
    }
    assert!(sent > 0);
    wait_for_connections(&d, 0);
    still_serving(&d);
}

#[test]
fn many_concurrent_clients() {
    const N: usize = 200;
    let d = spawn_daemon();
    let barrier = Arc::new(Barrier::new(N + 1));
    let socket = d.socket().to_path_buf();
    let watcher = d.client();
    watcher.watch("/many", "m").unwrap();
    assert!(watcher
        .read_watch(Some(Duration::from_secs(5)))
        .unwrap()
        .is_some());
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let barrier = barrier.clone();
            let socket = socket.clone();
            std::thread::spawn(move || {
                let xs = xenplug_xenstore::XsClient::open_socket(&socket).unwrap();
                xs.write(&format!("/many/{i}/hello"), "1").unwrap();
                barrier.wait(); // all connected at once
                xs.watch(&format!("/many/{i}"), "own").unwrap();
                let first = xs
                    .read_watch(Some(Duration::from_secs(10)))
                    .unwrap()
                    .unwrap();
                assert_eq!(first.path, format!("/many/{i}"));
                let tx = xs.begin().unwrap();
                tx.write(&format!("/many/{i}/tx"), &i.to_string()).unwrap();
                tx.commit().unwrap();
                let ev = xs
                    .read_watch(Some(Duration::from_secs(10)))
                    .unwrap()
                    .unwrap();
                assert_eq!(ev.path, format!("/many/{i}/tx"));
                xs.read(&format!("/many/{i}/tx")).unwrap().unwrap()
            })
        })
        .collect();
    barrier.wait();
    let values: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v, &i.to_string());
    }
    let mut events = 0;
    while watcher
        .read_watch(Some(Duration::from_millis(500)))
        .unwrap()
        .is_some()
    {
        events += 1;
    }
    assert_eq!(events, 2 * N, "one event per write and per commit");
    assert_eq!(d.store().directory("/many").unwrap().len(), N);
}
