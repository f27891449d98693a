//! QGA message classification and command/argument parsing (`xenplug_channel::message`,
//! `xenplug_channel::qga`): what the agent does with every frame a dom0 peer sends, and what the
//! peer does with every reply.
//!
//! Asserts: a decoded command turns back into a request that decodes to the same command; a
//! request or response re-encoded by our own encoder classifies to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_channel::frame::{Decoder, Event};
use xenplug_channel::message::{Message, Response};
use xenplug_channel::qga::Command;
use xenplug_fuzz::Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

fn decode_one(bytes: &[u8]) -> Message {
    let evs = Decoder::default().feed(bytes);
    let frames: Vec<_> = evs
        .into_iter()
        .filter_map(|e| match e {
            Event::Frame(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(frames.len(), 1, "our encoding is one frame");
    Message::from_object(frames.into_iter().next().unwrap()).expect("our encoding classifies")
}

fuzz_target!(|data: &[u8]| {
    for ev in Decoder::default().feed(data) {
        let Event::Frame(map) = ev else { continue };
        match Message::from_object(map) {
            Ok(Message::Request(req)) => {
                assert_eq!(decode_one(&req.encode()), Message::Request(req.clone()));
                assert_eq!(
                    decode_one(&req.encode_delimited()),
                    Message::Request(req.clone())
                );
                if let Ok(cmd) = Command::from_request(&req) {
                    let back = cmd.to_request();
                    assert_eq!(back.execute, cmd.name());
                    let again = Command::from_request(&back)
                        .unwrap_or_else(|e| panic!("{cmd:?} -> {back:?} rejected: {e:?}"));
                    assert_eq!(again, cmd, "command round trip");
                }
            }
            Ok(Message::Response(resp)) => {
                for delimited in [false, true] {
                    let again = decode_one(&resp.encode(delimited));
                    assert_eq!(
                        again,
                        Message::Response(resp.clone()),
                        "response round trip"
                    );
                }
                let _ = Response::into_result(resp);
            }
            Err(e) => {
                // The error reply echoes the id and is itself a valid response.
                let reply = Response::err(e.error, e.id);
                let _ = decode_one(&reply.encode(false));
            }
        }
    }
});
