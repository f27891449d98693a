//! The embedded xenstored's side of the wire (`xenplug_xenstore::wire::Decoder` and
//! `xenplug_xenstored::Engine::handle_message`): what the daemon does with bytes from a guest's
//! domain socket (and from dom0).
//!
//! Input: a split seed, then a stream of messages. Each message goes to one of three
//! connections by its request id: dom0, and two connections of guest domain 5 (so per-domain
//! quotas are shared across connections). Asserts:
//! * decoding does not depend on how the stream is split into reads;
//! * every reply echoes the request's id and transaction, has the request's type or is an
//!   `ERROR` naming a known errno, and fits the wire; a registration event only follows a
//!   successful `WATCH`; watch events fit the wire;
//! * after the stream, the store is consistent (every child listed exists, every node is
//!   listed by its parent, the per-domain accounting matches a recount); the guest never goes
//!   over its quotas by a request of its own (dom0 may give it nodes beyond them, as in
//!   xenstored: a node dom0 creates in the guest's directory belongs to the guest).
#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use xenplug_fuzz::{Chunks, Counting, Unstructured};
use xenplug_xenstore::wire::{self, Decoder, Message, MsgType, PAYLOAD_MAX};
use xenplug_xenstore::Errno;
use xenplug_xenstored::engine::{EventSink, Quota, Request};
use xenplug_xenstored::Engine;

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Default)]
struct Sink(AtomicUsize);

impl EventSink for Sink {
    fn watch_event(&self, path: &[u8], token: &[u8]) {
        assert!(!path.contains(&0) && !token.contains(&0));
        // The daemon drops events that do not fit; count the ones it would send.
        if wire::join_strings(&[path, token]).len() <= PAYLOAD_MAX {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn messages<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Vec<Message> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for mut piece in pieces {
        while !piece.is_empty() {
            match d.feed(piece) {
                Ok((used, msg)) => {
                    piece = &piece[used..];
                    out.extend(msg);
                }
                Err(_) => return out,
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let seed = u32::from(u.u16());
    let stream = u.rest();
    let msgs = messages(std::iter::once(stream));
    assert_eq!(
        msgs,
        messages(Chunks::new(stream, seed)),
        "split-dependent decoding"
    );

    let engine = Engine::new();
    // Small quotas, so that inputs of a few kilobytes reach them.
    engine.set_quota(Quota {
        nodes: 12,
        entry_bytes: 64,
        watches: 6,
        transactions: 3,
        perms: 4,
        outstanding: 16,
        transaction_nodes: 20,
    });
    let sink = Arc::new(Sink::default());
    let dom0 = engine.connect(0, sink.clone());
    engine
        .execute(dom0, 0, Request::Introduce(5, 1, 1))
        .expect("introduce");
    let guests = [
        engine.connect(5, sink.clone()),
        engine.connect(5, sink.clone()),
    ];
    for m in &msgs {
        let conn = match m.req_id % 3 {
            0 => dom0,
            i => guests[i as usize - 1],
        };
        let before = engine.domain_usage(5);
        let resp = engine.handle_message(conn, m);
        let r = &resp.reply;
        if conn != dom0 && r.msg_type != MsgType::ERROR.to_u32() {
            let after = engine.domain_usage(5);
            if after.nodes > before.nodes {
                assert!(after.nodes <= 12, "{before:?} -> {after:?} by {m:?}");
            }
            if after.watches > before.watches {
                assert!(after.watches <= 6, "{after:?}");
            }
            if after.transactions > before.transactions {
                assert!(after.transactions <= 3, "{after:?}");
            }
        }
        assert_eq!((r.req_id, r.tx_id), (m.req_id, m.tx_id));
        r.encode().expect("replies fit the wire");
        if r.msg_type == MsgType::ERROR.to_u32() {
            let name = std::str::from_utf8(wire::strip_nul(&r.payload)).expect("ASCII");
            assert!(Errno::from_name(name).is_some(), "{name:?}");
            assert!(resp.initial_event.is_none());
        } else {
            assert_eq!(r.msg_type, m.msg_type);
            assert_eq!(
                resp.initial_event.is_some(),
                m.msg_type == MsgType::WATCH.to_u32()
            );
        }
    }
    if let Err(e) = engine.check() {
        panic!("inconsistent store: {e}");
    }
});
