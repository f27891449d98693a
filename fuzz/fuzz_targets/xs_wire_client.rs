//! The xenstore client's side of the wire (`xenplug_xenstore::wire::Decoder` and
//! `xenplug_xenstore::reply`): what a program in dom0 or a guest does with bytes from the
//! daemon (or, in a guest, from whatever answers on the xenbus device).
//!
//! Input: a byte that picks the request each reply answers, a split seed, then the daemon's
//! byte stream. Asserts:
//! * decoding does not depend on how the stream is split into reads, and an oversize length is
//!   rejected at the same message either way; the decoder never holds more than one message;
//! * every decoded message re-encodes to exactly the bytes it came from;
//! * replies: string lists and permission lists print back and parse to the same values; a
//!   `DIRECTORY_PART` listing fed the decoded replies ends (done or error) within its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_fuzz::{measure, Chunks, Counting, Unstructured};
use xenplug_xenstore::reply::{
    decode_reply, parse_list, parse_perms, parse_watch_event, DirectoryParts, PartStep,
    MAX_DIRECTORY_BYTES,
};
use xenplug_xenstore::wire::{self, Decoder, Message, MsgType, HEADER_LEN, PAYLOAD_MAX};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Messages of `stream` fed in the given pieces, and whether the decoder rejected a header.
fn decode<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> (Vec<Message>, bool, isize) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut worst = 0isize;
    let mut kept = 0isize;
    for mut piece in pieces {
        while !piece.is_empty() {
            let (r, mem) = measure(|| d.feed(piece));
            match r {
                Ok((used, msg)) => {
                    // A completed message leaves the decoder: count only what it keeps.
                    kept +=
                        mem.retained - msg.as_ref().map_or(0, |m| m.payload.capacity() as isize);
                    worst = worst.max(kept);
                    piece = &piece[used..];
                    out.extend(msg);
                }
                Err(_) => return (out, true, worst),
            }
        }
    }
    (out, false, worst)
}

const OPS: &[MsgType] = &[
    MsgType::READ,
    MsgType::DIRECTORY,
    MsgType::GET_PERMS,
    MsgType::TRANSACTION_START,
    MsgType::DIRECTORY_PART,
    MsgType::WRITE,
    MsgType::GET_DOMAIN_PATH,
];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let op = OPS[usize::from(u.byte()) % OPS.len()];
    let seed = u32::from(u.u16());
    let stream = u.rest();

    let (whole, rejected, _) = decode(std::iter::once(stream));
    let (split, rejected_split, kept) = decode(Chunks::new(stream, seed));
    assert_eq!(whole, split, "split-dependent decoding");
    assert_eq!(rejected, rejected_split);
    assert!(
        kept <= (HEADER_LEN + PAYLOAD_MAX) as isize,
        "decoder kept {kept} bytes"
    );
    let mut encoded = Vec::new();
    for m in &whole {
        assert!(m.payload.len() <= PAYLOAD_MAX);
        encoded.extend(m.encode().expect("decoded messages fit"));
    }
    assert_eq!(
        &stream[..encoded.len()],
        &encoded[..],
        "re-encoding differs"
    );

    let mut parts = DirectoryParts::new();
    let mut listing_over = false;
    for m in whole {
        if m.msg_type == MsgType::WATCH_EVENT.to_u32() {
            if let Ok(ev) = parse_watch_event(&m) {
                assert!(!ev.path.contains('\0') && !ev.token.contains('\0'));
            }
            continue;
        }
        let Ok(Ok(payload)) = decode_reply(m, op, "/local/domain/1/x") else {
            continue;
        };
        match op {
            MsgType::DIRECTORY => {
                let list = parse_list(&payload);
                assert_eq!(parse_list(&wire::join_strings(&list)), list);
            }
            MsgType::GET_PERMS => {
                if let Ok(perms) = parse_perms(&payload, "/p") {
                    let printed: Vec<String> = perms.iter().map(|p| p.to_wire()).collect();
                    assert_eq!(
                        parse_perms(&wire::join_strings(&printed), "/p").unwrap(),
                        perms
                    );
                }
            }
            MsgType::DIRECTORY_PART if !listing_over => match parts.push(&payload, "/p") {
                Ok(PartStep::Next(off)) => assert!(off <= MAX_DIRECTORY_BYTES),
                Ok(PartStep::Done(list)) => {
                    assert!(list.iter().all(|n| !n.is_empty()));
                    listing_over = true;
                }
                Err(_) => listing_over = true,
            },
            _ => {
                let _ = String::from_utf8(wire::strip_nul(&payload).to_vec());
            }
        }
    }
});
