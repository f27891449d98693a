//! Incremental framing of a QGA byte stream.
//!
//! The stream carries JSON objects back to back (whitespace, including `\r` and `\n`, may
//! separate them). [`Decoder`] finds them without a JSON lexer of its own: outside a frame it
//! waits for `{`; inside, it tracks string/escape state and brace depth until the object closes,
//! then hands the bytes to `serde_json`. Everything else is reported, never silently merged:
//!
//! * bytes outside a frame that are not whitespace (echoed text, `AT` commands, stale output
//!   from an earlier session, a top-level array or scalar) → [`Event::Garbage`], one per run;
//! * the byte `0xFF` anywhere (it never occurs in UTF-8) → [`Event::Resync`]: a partial frame is
//!   dropped and decoding restarts from idle (the QGA flush rule);
//! * a balanced object that is not valid JSON → [`Event::Invalid`];
//! * a frame over [`Limits::max_frame`] bytes or nested deeper than [`Limits::max_depth`] →
//!   [`Event::TooLarge`] / [`Event::TooDeep`] at once; its remaining bytes are skipped (still
//!   tracking strings and braces, without buffering) until it closes or a `0xFF` arrives.
//!
//! Memory use is bounded by `max_frame` whatever the input.

use serde_json::{Map, Value};

/// The resynchronisation byte. Sent by a client before `guest-sync-delimited`, and by the agent
/// before that command's reply. A receiver that sees it drops any partial frame.
pub const RESYNC_BYTE: u8 = 0xFF;

/// Default bound on one frame's size in bytes (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Default bound on object/array nesting inside one frame.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// Bounds applied by a [`Decoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, in bytes, from its `{` to its `}` inclusive.
    pub max_frame: usize,
    /// Deepest nesting of `{`/`[` (the frame's own `{` counts as 1).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// What the decoder found in the bytes fed to it, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A complete, valid JSON object.
    Frame(Map<String, Value>),
    /// A `0xFF` byte: any partial frame was dropped.
    Resync,
    /// A run of `bytes` non-whitespace bytes outside any frame, starting with `first`.
    Garbage {
        /// How many bytes were discarded.
        bytes: usize,
        /// The first of them (for a QGA-style "stray" message).
        first: u8,
    },
    /// A balanced `{…}` that is not valid JSON; `error` is serde_json's message.
    Invalid {
        /// Why the frame is not JSON.
        error: String,
    },
    /// A frame grew past [`Limits::max_frame`]; the rest of it is being skipped.
    TooLarge,
    /// A frame nested past [`Limits::max_depth`]; the rest of it is being skipped.
    TooDeep,
}

#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    depth: usize,
    in_string: bool,
    escape: bool,
}

impl Scan {
    /// Advance over one byte; returns true when the outermost object just closed.
    fn step(&mut self, b: u8) -> bool {
        if self.in_string {
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return false;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth = self.depth.saturating_add(1),
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }
}

#[derive(Debug)]
enum State {
    Idle,
    Frame { buf: Vec<u8>, scan: Scan },
    Skip { scan: Scan },
}

/// Incremental decoder; see the module docs. Feed it whatever `read(2)` returned.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
    garbage: Option<(usize, u8)>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl Decoder {
    /// A decoder with the given bounds.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            state: State::Idle,
            garbage: None,
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// True when no partial frame is buffered or being skipped.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Drop any partial frame (as a `0xFF` would, but without an event). Use when the transport
    /// was re-opened.
    pub fn reset(&mut self) {
        self.state = State::Idle;
        self.garbage = None;
    }

    fn flush_garbage(&mut self, out: &mut Vec<Event>) {
        if let Some((bytes, first)) = self.garbage.take() {
            out.push(Event::Garbage { bytes, first });
        }
    }

    /// Feed bytes; returns the events they completed, in order. A run of garbage is reported
    /// when it ends (a frame starts or a resync arrives) or at the end of this call.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for &b in data {
            if b == RESYNC_BYTE {
                self.flush_garbage(&mut out);
                self.state = State::Idle;
                out.push(Event::Resync);
                continue;
            }
            match &mut self.state {
                State::Idle => {
                    if b == b'{' {
                        self.flush_garbage(&mut out);
                        let mut scan = Scan::default();
                        scan.step(b);
                        let mut buf = Vec::with_capacity(256);
                        buf.push(b);
                        self.state = State::Frame { buf, scan };
                    } else if b == b'\n' {
                        // A line ends a garbage run (one report per line of AT chatter).
                        self.flush_garbage(&mut out);
                    } else if !is_space(b) {
                        match &mut self.garbage {
                            Some((n, _)) => *n += 1,
                            None => self.garbage = Some((1, b)),
                        }
                    }
                }
                State::Frame { buf, scan } => {
                    let closed = scan.step(b);
                    buf.push(b);
                    if closed {
                        let buf = std::mem::take(buf);
                        self.state = State::Idle;
                        out.push(parse_frame(&buf));
                    } else if scan.depth > self.limits.max_depth {
                        let scan = *scan;
                        self.state = State::Skip { scan };
                        out.push(Event::TooDeep);
                    } else if buf.len() >= self.limits.max_frame {
                        let scan = *scan;
                        self.state = State::Skip { scan };
                        out.push(Event::TooLarge);
                    }
                }
                State::Skip { scan } => {
                    if scan.step(b) {
                        self.state = State::Idle;
                    }
                }
            }
        }
        self.flush_garbage(&mut out);
        out
    }
}

fn parse_frame(buf: &[u8]) -> Event {
    match serde_json::from_slice::<Value>(buf) {
        Ok(Value::Object(map)) => Event::Frame(map),
        // The scanner only closes on the brace matching a leading `{`, so anything that parses
        // is an object; keep the arm for robustness.
        Ok(_) => Event::Invalid {
            error: "not a JSON object".into(),
        },
        Err(e) => Event::Invalid {
            error: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frames(evs: &[Event]) -> Vec<Value> {
        evs.iter()
            .filter_map(|e| match e {
                Event::Frame(m) => Some(Value::Object(m.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_frame_and_whitespace() {
        let mut d = Decoder::default();
        let ev = d.feed(b"\r\n {\"execute\":\"guest-ping\"}\r\n");
        assert_eq!(
            ev,
            vec![Event::Frame(
                json!({"execute":"guest-ping"}).as_object().unwrap().clone()
            )]
        );
        assert!(d.is_idle());
    }

    #[test]
    fn frames_back_to_back_and_byte_by_byte() {
        let input = br#"{"a":"}{\"x"}{"b":[1,{"c":"]"}]}"#;
        let mut whole = Decoder::default();
        let a = whole.feed(input);
        let mut bytewise = Decoder::default();
        let mut b = Vec::new();
        for byte in input {
            b.extend(bytewise.feed(std::slice::from_ref(byte)));
        }
        assert_eq!(
            frames(&a),
            vec![json!({"a":"}{\"x"}), json!({"b":[1,{"c":"]"}]})]
        );
        assert_eq!(frames(&a), frames(&b));
    }

    #[test]
    fn at_commands_and_echo_are_garbage() {
        let mut d = Decoder::default();
        let ev = d.feed(b"AT\r\nATZ\r\n{\"execute\":\"guest-ping\"}");
        assert_eq!(
            ev[0],
            Event::Garbage {
                bytes: 2,
                first: b'A'
            }
        );
        assert_eq!(
            ev[1],
            Event::Garbage {
                bytes: 3,
                first: b'A'
            }
        );
        assert_eq!(frames(&ev), vec![json!({"execute":"guest-ping"})]);
    }

    #[test]
    fn top_level_array_is_garbage_not_a_frame() {
        let mut d = Decoder::default();
        let ev = d.feed(b"[1,2]");
        assert_eq!(
            ev,
            vec![Event::Garbage {
                bytes: 5,
                first: b'['
            }]
        );
    }

    #[test]
    fn resync_drops_torn_frame() {
        let mut d = Decoder::default();
        let mut ev = d.feed(b"{\"execute\":\"guest-pi");
        assert!(ev.is_empty());
        assert!(!d.is_idle());
        ev = d.feed(b"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":7}}");
        assert_eq!(ev[0], Event::Resync);
        assert_eq!(
            frames(&ev),
            vec![json!({"execute":"guest-sync-delimited","arguments":{"id":7}})]
        );
    }

    #[test]
    fn resync_inside_string_resets() {
        let mut d = Decoder::default();
        let ev = d.feed(b"{\"a\":\"x\xff{\"b\":1}");
        assert_eq!(
            ev,
            vec![
                Event::Resync,
                Event::Frame(json!({"b":1}).as_object().unwrap().clone())
            ]
        );
    }

    #[test]
    fn invalid_json_reported_then_next_frame_ok() {
        let mut d = Decoder::default();
        let ev = d.feed(b"{nope}{\"ok\":true}");
        assert!(matches!(ev[0], Event::Invalid { .. }));
        assert_eq!(frames(&ev), vec![json!({"ok":true})]);
    }

    #[test]
    fn oversize_frame_is_skipped_whole() {
        let mut d = Decoder::new(Limits {
            max_frame: 64,
            max_depth: 8,
        });
        let big = format!("{{\"k\":\"{}\",\"n\":{{\"m\":1}}}}", "x".repeat(200));
        let mut input = big.into_bytes();
        input.extend_from_slice(b"{\"after\":1}");
        let ev = d.feed(&input);
        assert_eq!(ev[0], Event::TooLarge);
        assert_eq!(frames(&ev), vec![json!({"after":1})]);
        assert!(d.is_idle());
    }

    #[test]
    fn too_deep_is_skipped_whole() {
        let mut d = Decoder::new(Limits {
            max_frame: 1 << 16,
            max_depth: 4,
        });
        let deep = format!(
            "{}{}",
            "{\"a\":".repeat(10),
            "1".to_owned() + &"}".repeat(10)
        );
        let mut input = deep.into_bytes();
        input.extend_from_slice(b" {\"after\":[1,[2]]}");
        let ev = d.feed(&input);
        assert_eq!(ev[0], Event::TooDeep);
        assert_eq!(frames(&ev), vec![json!({"after":[1,[2]]})]);
    }

    #[test]
    fn unterminated_oversize_frame_recovers_on_resync() {
        let mut d = Decoder::new(Limits {
            max_frame: 32,
            max_depth: 8,
        });
        let mut ev = d.feed(b"{");
        ev.extend(d.feed(b"\""));
        ev.extend(d.feed(&[b'x'; 10_000]));
        assert_eq!(ev, vec![Event::TooLarge]);
        let ev = d.feed(b"\xff{\"ok\":1}");
        assert_eq!(ev[0], Event::Resync);
        assert_eq!(frames(&ev), vec![json!({"ok":1})]);
    }

    #[test]
    fn crlf_mangled_reply_still_parses() {
        // A non-raw tty turns "\n" into "\r\n" (ONLCR): harmless between frames.
        let mut d = Decoder::default();
        let ev = d.feed(b"\xff{\"return\": 5}\r\n{\"return\": {}}\r\n");
        assert_eq!(ev[0], Event::Resync);
        assert_eq!(frames(&ev), vec![json!({"return":5}), json!({"return":{}})]);
    }

    /// A small deterministic generator (xorshift) for the property tests: no extra crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Property: for any garbage prefix (including stray braces and quotes) followed by `0xFF`
    /// and a valid frame, split at arbitrary points, the decoder (a) never buffers more than
    /// `max_frame`, (b) never panics, and (c) delivers the frame after the resync.
    #[test]
    fn property_resync_always_recovers() {
        let alphabet: &[u8] = b"{}[]\"\\:, aAT\r\n0123456789xyz\x00\x1b\x7f\xc3\xa9";
        let limits = Limits {
            max_frame: 256,
            max_depth: 6,
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let mut d = Decoder::new(limits);
            let len = rng.below(600);
            let mut input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            input.push(RESYNC_BYTE);
            input.extend_from_slice(br#"{"execute":"guest-sync-delimited","arguments":{"id":42}}"#);
            let mut evs = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(40));
                evs.extend(d.feed(&rest[..n]));
                rest = &rest[n..];
                if let State::Frame { buf, .. } = &d.state {
                    assert!(buf.len() <= limits.max_frame);
                }
            }
            let last_resync = evs.iter().rposition(|e| *e == Event::Resync).unwrap();
            let after: Vec<_> = evs[last_resync..].to_vec();
            assert_eq!(
                frames(&after),
                vec![json!({"execute":"guest-sync-delimited","arguments":{"id":42}})],
                "input {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    /// Property: valid frames interleaved with whitespace-only separators and split anywhere
    /// decode to exactly the frames sent.
    #[test]
    fn property_split_anywhere() {
        let msgs = [
            json!({"execute":"guest-ping","id":"a{b"}),
            json!({"return":{"host-name":"x\"}{"}}),
            json!({"error":{"class":"GenericError","desc":"[\\]"}}),
        ];
        let mut input = Vec::new();
        for m in &msgs {
            input.extend(serde_json::to_vec(m).unwrap());
            input.extend_from_slice(b"\r\n");
        }
        let mut rng = Rng(12345);
        for _ in 0..500 {
            let mut d = Decoder::default();
            let mut evs = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len());
                evs.extend(d.feed(&rest[..n]));
                rest = &rest[n..];
            }
            assert_eq!(frames(&evs), msgs.to_vec());
            assert_eq!(evs.len(), msgs.len());
        }
    }

    // Found by fuzzing (fuzz target qga_frame): without serde_json's float_roundtrip, a number
    // such as 33333333333333333333333333333333 was parsed to a float 1 ulp off, so the frame
    // re-encoded to a different value than it carried.
    #[test]
    fn numbers_round_trip_exactly() {
        let mut d = Decoder::default();
        let evs = d.feed(b"{\"b\":33333333333333333333333333333333}");
        let Event::Frame(map) = &evs[0] else {
            panic!("{evs:?}")
        };
        let again = Decoder::default().feed(&serde_json::to_vec(map).unwrap());
        assert_eq!(again, evs);
    }
}
