//! The QGA frame decoder (`xenplug_channel::frame`): bytes from a guest or a dom0 peer.
//!
//! Asserts, beyond "no panic":
//! * the events do not depend on how the bytes are split into reads (garbage runs aside,
//!   which the decoder reports per call by design: adjacent ones are merged before comparing);
//! * what the decoder keeps between calls stays within its `max_frame` bound;
//! * after any input, `0xFF` followed by a frame yields exactly `Resync` then that frame (the
//!   decoder resynchronises whatever came before);
//! * every frame re-encoded by serde_json decodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_channel::frame::{Decoder, Event, Limits};
use xenplug_fuzz::{measure, Chunks, Counting, Unstructured};

#[global_allocator]
static ALLOC: Counting = Counting;

fn normalise(evs: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for e in evs {
        if let (
            Some(Event::Garbage { bytes, .. }),
            Event::Garbage {
                bytes: more,
                first: _,
            },
        ) = (out.last_mut(), &e)
        {
            *bytes += more;
            continue;
        }
        out.push(e);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    // At least the resync probe below (24 bytes) must fit.
    let max_frame = 32 + usize::from(u.u16() % 4096);
    let max_depth = 1 + usize::from(u.byte() % 40);
    let seed = u32::from(u.u16()) << 8 | u32::from(u.byte());
    let stream = u.rest();
    let limits = Limits {
        max_frame,
        max_depth,
    };

    let mut whole = Decoder::new(limits);
    let all = whole.feed(stream);

    let mut pieces = Decoder::new(limits);
    let mut split = Vec::new();
    for chunk in Chunks::new(stream, seed) {
        split.extend(pieces.feed(chunk));
    }
    // What a decoder keeps between calls: feed a third one the same pieces, dropping the events
    // inside the measurement, and add up what each call left allocated.
    let mut probe = Decoder::new(limits);
    let mut kept = 0isize;
    let mut worst_kept = 0isize;
    for chunk in Chunks::new(stream, seed) {
        let ((), mem) = measure(|| drop(probe.feed(chunk)));
        kept += mem.retained;
        worst_kept = worst_kept.max(kept);
    }
    assert_eq!(
        normalise(all.clone()),
        normalise(split),
        "split-dependent decoding"
    );
    assert_eq!(whole.is_idle(), pieces.is_idle());
    // Vec growth doubles from 256: the buffer never exceeds the next power of two of the bound.
    let cap = max_frame.next_power_of_two().max(256) as isize;
    assert!(
        worst_kept <= cap + 64,
        "decoder kept {worst_kept} bytes with max_frame {max_frame}"
    );

    // Resynchronisation: whatever state the stream left, 0xFF and a frame decode cleanly.
    let evs = whole.feed(b"\xff{\"execute\":\"guest-ping\"}");
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert_eq!(evs[0], Event::Resync);
    match &evs[1] {
        Event::Frame(m) => assert_eq!(
            m.get("execute").and_then(|v| v.as_str()),
            Some("guest-ping")
        ),
        other => panic!("no frame after resync: {other:?}"),
    }
    assert!(whole.is_idle());

    // Frames round-trip through serde_json's encoding.
    for ev in all {
        if let Event::Frame(map) = ev {
            let bytes = serde_json::to_vec(&map).expect("a map serializes");
            let mut d = Decoder::new(Limits {
                max_frame: bytes.len() + 1,
                max_depth,
            });
            let again = d.feed(&bytes);
            assert_eq!(again, vec![Event::Frame(map)], "re-encoded frame");
        }
    }
});
