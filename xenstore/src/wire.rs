//! The xenstore wire protocol (`xen/include/public/io/xs_wire.h`, `docs/misc/xenstore.txt`).
//!
//! Every message in either direction is a 16-byte header — `type`, `req_id`, `tx_id`, `len`, each
//! a `u32` in native byte order — followed by `len` bytes of payload, at most
//! [`PAYLOAD_MAX`]. Payloads are mostly NUL-terminated strings.
//!
//! Everything here is pure: [`Message::encode`] builds bytes, [`Decoder`] turns a byte stream
//! that arrives in arbitrary pieces (a socket's partial reads) into messages, rejecting an
//! oversize length as soon as the header is complete, before any payload is buffered.

use std::fmt;

/// Largest payload either side may send (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// Size of the message header.
pub const HEADER_LEN: usize = 16;
/// Longest absolute path xenstored accepts (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// Longest relative path (below `/local/domain/<domid>/`) xenstored accepts for guests
/// (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;

macro_rules! msg_types {
    ($($(#[$doc:meta])* $name:ident = $num:expr),* $(,)?) => {
        /// Message types (`enum xsd_sockmsg_type`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(clippy::upper_case_acronyms, non_camel_case_types)]
        pub enum MsgType { $($(#[$doc])* $name),* }

        impl MsgType {
            /// Every known type, in numeric order.
            pub const ALL: &'static [MsgType] = &[$(MsgType::$name),*];

            /// The number sent on the wire.
            pub fn to_u32(self) -> u32 {
                match self { $(MsgType::$name => $num),* }
            }

            /// The type with this number; `None` for unknown numbers (20 = the removed
            /// `RESTRICT`, anything ≥ 27, `XS_INVALID`).
            pub fn from_u32(n: u32) -> Option<Self> {
                match n { $($num => Some(MsgType::$name),)* _ => None }
            }

            /// The name used in xenstore.txt, e.g. `"TRANSACTION_START"`.
            pub fn name(self) -> &'static str {
                match self { $(MsgType::$name => stringify!($name)),* }
            }
        }
    };
}

msg_types! {
    /// `CONTROL` (alias `DEBUG`).
    CONTROL = 0,
    /// `DIRECTORY`.
    DIRECTORY = 1,
    /// `READ`.
    READ = 2,
    /// `GET_PERMS`.
    GET_PERMS = 3,
    /// `WATCH`.
    WATCH = 4,
    /// `UNWATCH`.
    UNWATCH = 5,
    /// `TRANSACTION_START`.
    TRANSACTION_START = 6,
    /// `TRANSACTION_END`.
    TRANSACTION_END = 7,
    /// `INTRODUCE`.
    INTRODUCE = 8,
    /// `RELEASE`.
    RELEASE = 9,
    /// `GET_DOMAIN_PATH`.
    GET_DOMAIN_PATH = 10,
    /// `WRITE`.
    WRITE = 11,
    /// `MKDIR`.
    MKDIR = 12,
    /// `RM`.
    RM = 13,
    /// `SET_PERMS`.
    SET_PERMS = 14,
    /// `WATCH_EVENT` (daemon to client only).
    WATCH_EVENT = 15,
    /// `ERROR` (daemon to client only).
    ERROR = 16,
    /// `IS_DOMAIN_INTRODUCED`.
    IS_DOMAIN_INTRODUCED = 17,
    /// `RESUME`.
    RESUME = 18,
    /// `SET_TARGET`.
    SET_TARGET = 19,
    /// `RESET_WATCHES`.
    RESET_WATCHES = 21,
    /// `DIRECTORY_PART`.
    DIRECTORY_PART = 22,
    /// `GET_FEATURE`.
    GET_FEATURE = 23,
    /// `SET_FEATURE`.
    SET_FEATURE = 24,
    /// `GET_QUOTA`.
    GET_QUOTA = 25,
    /// `SET_QUOTA`.
    SET_QUOTA = 26,
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The header announces (or the caller tried to send) a payload over [`PAYLOAD_MAX`].
    #[error("payload of {0} bytes exceeds the xenstore limit of 4096")]
    Oversize(usize),
}

/// A message header (`struct xsd_sockmsg`). `msg_type` stays a raw number so that a server can
/// answer unknown types with ENOSYS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type number.
    pub msg_type: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0: none).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Encode in native byte order.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (i, v) in [self.msg_type, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        out
    }

    /// Decode from native byte order (any 16 bytes are a header; the length is not checked).
    pub fn decode(raw: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_ne_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        Header {
            msg_type: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    /// The known type, if any.
    pub fn known_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.msg_type)
    }
}

/// A complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Message type number (see [`MsgType`]).
    pub msg_type: u32,
    /// Request id.
    pub req_id: u32,
    /// Transaction id.
    pub tx_id: u32,
    /// Payload, at most [`PAYLOAD_MAX`] bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// A message of a known type.
    pub fn new(msg_type: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Self {
        Message {
            msg_type: msg_type.to_u32(),
            req_id,
            tx_id,
            payload,
        }
    }

    /// The known type, if any.
    pub fn known_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.msg_type)
    }

    /// The header describing this message.
    pub fn header(&self) -> Header {
        Header {
            msg_type: self.msg_type,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: self.payload.len() as u32,
        }
    }

    /// Header plus payload; fails when the payload is over [`PAYLOAD_MAX`].
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.payload.len() > PAYLOAD_MAX {
            return Err(WireError::Oversize(self.payload.len()));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.header().encode());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }
}

/// Incremental decoder: feed it whatever the transport returned, take out complete messages.
///
/// It buffers at most one header plus one payload ([`PAYLOAD_MAX`]) beyond what the caller has
/// not yet taken: [`Decoder::feed`] only accepts bytes up to the end of the current message, so a
/// server reading into a fixed buffer never grows memory because of a fast or hostile client.
#[derive(Debug, Default)]
pub struct Decoder {
    header: [u8; HEADER_LEN],
    header_used: usize,
    current: Option<Header>,
    payload: Vec<u8>,
    rejected: Option<Header>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no partial message is buffered.
    pub fn is_idle(&self) -> bool {
        self.header_used == 0 && self.current.is_none()
    }

    /// The header whose length [`Decoder::feed`] rejected, to address an error reply.
    pub fn rejected_header(&self) -> Option<Header> {
        self.rejected
    }

    /// The header of the message being received, once complete.
    pub fn pending_header(&self) -> Option<Header> {
        self.current
    }

    /// Consume bytes from `data` up to the end of the current message. Returns how many bytes
    /// were used and the message if it is now complete. Call again with the rest of `data`.
    /// An oversize length is reported as soon as its header is complete; the decoder is then
    /// left unusable for this stream (the peer must be disconnected, as xenstored does).
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<Message>), WireError> {
        let mut used = 0;
        if self.current.is_none() {
            let want = HEADER_LEN - self.header_used;
            let take = want.min(data.len());
            self.header[self.header_used..self.header_used + take].copy_from_slice(&data[..take]);
            self.header_used += take;
            used += take;
            if self.header_used < HEADER_LEN {
                return Ok((used, None));
            }
            let header = Header::decode(&self.header);
            if header.len as usize > PAYLOAD_MAX {
                self.rejected = Some(header);
                return Err(WireError::Oversize(header.len as usize));
            }
            self.current = Some(header);
            self.payload = Vec::with_capacity(header.len as usize);
        }
        let header = self.current.expect("header present");
        let want = header.len as usize - self.payload.len();
        let take = want.min(data.len() - used);
        self.payload.extend_from_slice(&data[used..used + take]);
        used += take;
        if self.payload.len() < header.len as usize {
            return Ok((used, None));
        }
        self.current = None;
        self.header_used = 0;
        let payload = std::mem::take(&mut self.payload);
        Ok((
            used,
            Some(Message {
                msg_type: header.msg_type,
                req_id: header.req_id,
                tx_id: header.tx_id,
                payload,
            }),
        ))
    }

    /// Feed all of `data`, returning every message completed by it.
    pub fn feed_all(&mut self, mut data: &[u8]) -> Result<Vec<Message>, WireError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (used, msg) = self.feed(data)?;
            data = &data[used..];
            out.extend(msg);
        }
        Ok(out)
    }
}

/// Build a payload of NUL-terminated strings (`a|b|`).
pub fn join_strings<S: AsRef<[u8]>>(parts: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_ref());
        out.push(0);
    }
    out
}

/// Split a payload into its NUL-terminated strings, as xenstored's `get_strings` does: every
/// string must end with a NUL; bytes after the last NUL are returned separately as the tail
/// (binary data, e.g. a `WRITE` value, or garbage).
pub fn split_strings(payload: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut parts = Vec::new();
    let mut rest = payload;
    while let Some(pos) = rest.iter().position(|&b| b == 0) {
        parts.push(&rest[..pos]);
        rest = &rest[pos + 1..];
    }
    (parts, rest)
}

/// The single argument of a payload that must be exactly one NUL-terminated string
/// (xenstored's `onearg`): `None` for an empty payload, a missing final NUL or an inner NUL.
pub fn one_arg(payload: &[u8]) -> Option<&[u8]> {
    match payload.split_last() {
        Some((0, body)) if !body.contains(&0) => Some(body),
        _ => None,
    }
}

/// A payload's single string with the trailing NUL (if any) removed, as clients read replies.
pub fn strip_nul(payload: &[u8]) -> &[u8] {
    payload.strip_suffix(&[0]).unwrap_or(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_numbers_match_xs_wire_h() {
        assert_eq!(MsgType::CONTROL.to_u32(), 0);
        assert_eq!(MsgType::DIRECTORY.to_u32(), 1);
        assert_eq!(MsgType::WATCH_EVENT.to_u32(), 15);
        assert_eq!(MsgType::ERROR.to_u32(), 16);
        assert_eq!(MsgType::SET_TARGET.to_u32(), 19);
        assert_eq!(MsgType::RESET_WATCHES.to_u32(), 21);
        assert_eq!(MsgType::DIRECTORY_PART.to_u32(), 22);
        assert_eq!(MsgType::SET_QUOTA.to_u32(), 26);
        assert_eq!(MsgType::from_u32(20), None, "RESTRICT was removed");
        assert_eq!(MsgType::from_u32(27), None);
        assert_eq!(MsgType::from_u32(0xffff), None);
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_u32(t.to_u32()), Some(*t));
        }
        assert_eq!(MsgType::TRANSACTION_START.name(), "TRANSACTION_START");
    }

    #[test]
    fn header_is_native_endian() {
        let h = Header {
            msg_type: 2,
            req_id: 0x01020304,
            tx_id: 7,
            len: 5,
        };
        let raw = h.encode();
        assert_eq!(&raw[0..4], &2u32.to_ne_bytes());
        assert_eq!(&raw[4..8], &0x01020304u32.to_ne_bytes());
        assert_eq!(&raw[8..12], &7u32.to_ne_bytes());
        assert_eq!(&raw[12..16], &5u32.to_ne_bytes());
        assert_eq!(Header::decode(&raw), h);
    }

    #[test]
    fn encode_decode_roundtrip() {
        let m = Message::new(MsgType::WRITE, 9, 3, b"/a/b\0value".to_vec());
        let bytes = m.encode().unwrap();
        assert_eq!(bytes.len(), 16 + 10);
        let mut d = Decoder::new();
        assert_eq!(d.feed_all(&bytes).unwrap(), vec![m]);
        assert!(d.is_idle());
    }

    #[test]
    fn encode_rejects_oversize_payload() {
        let ok = Message::new(MsgType::WRITE, 0, 0, vec![b'x'; PAYLOAD_MAX]);
        assert!(ok.encode().is_ok());
        let big = Message::new(MsgType::WRITE, 0, 0, vec![b'x'; PAYLOAD_MAX + 1]);
        assert_eq!(big.encode(), Err(WireError::Oversize(PAYLOAD_MAX + 1)));
    }

    #[test]
    fn decoder_handles_byte_by_byte_and_batched_input() {
        let a = Message::new(MsgType::READ, 1, 0, b"/x\0".to_vec());
        let b = Message::new(MsgType::DIRECTORY, 2, 0, b"/\0".to_vec());
        let c = Message::new(MsgType::TRANSACTION_START, 3, 0, Vec::new());
        let mut stream = a.encode().unwrap();
        stream.extend(b.encode().unwrap());
        stream.extend(c.encode().unwrap());

        let mut d = Decoder::new();
        let mut got = Vec::new();
        for byte in &stream {
            let (used, msg) = d.feed(std::slice::from_ref(byte)).unwrap();
            assert_eq!(used, 1);
            got.extend(msg);
        }
        assert_eq!(got, vec![a.clone(), b.clone(), c.clone()]);

        let mut d = Decoder::new();
        assert_eq!(d.feed_all(&stream).unwrap(), vec![a, b, c]);
    }

    #[test]
    fn decoder_stops_at_message_boundary() {
        let a = Message::new(MsgType::READ, 1, 0, b"/x\0".to_vec());
        let mut stream = a.encode().unwrap();
        stream.extend_from_slice(&[1, 2, 3]);
        let mut d = Decoder::new();
        let (used, msg) = d.feed(&stream).unwrap();
        assert_eq!(used, stream.len() - 3);
        assert_eq!(msg, Some(a));
        let (used, msg) = d.feed(&stream[used..]).unwrap();
        assert_eq!((used, msg), (3, None));
        assert!(!d.is_idle());
        assert_eq!(d.pending_header(), None);
    }

    #[test]
    fn decoder_rejects_oversize_length_from_header_alone() {
        let h = Header {
            msg_type: 2,
            req_id: 1,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        };
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&h.encode()[..15]).unwrap(),
            (15, None),
            "incomplete header"
        );
        assert_eq!(
            d.feed(&h.encode()[15..]),
            Err(WireError::Oversize(PAYLOAD_MAX + 1))
        );
        assert_eq!(d.rejected_header(), Some(h));
        let huge = Header { len: u32::MAX, ..h };
        assert_eq!(
            Decoder::new().feed(&huge.encode()),
            Err(WireError::Oversize(u32::MAX as usize))
        );
    }

    #[test]
    fn partial_payload_is_reported_pending() {
        let m = Message::new(MsgType::WRITE, 4, 0, b"/p\0abc".to_vec());
        let bytes = m.encode().unwrap();
        let mut d = Decoder::new();
        let (_, msg) = d.feed(&bytes[..18]).unwrap();
        assert_eq!(msg, None);
        assert_eq!(d.pending_header(), Some(m.header()));
        let (_, msg) = d.feed(&bytes[18..]).unwrap();
        assert_eq!(msg, Some(m));
    }

    #[test]
    fn string_helpers() {
        assert_eq!(join_strings(&["a", "bc"]), b"a\0bc\0");
        assert_eq!(join_strings::<&str>(&[]), b"");
        let (parts, tail) = split_strings(b"/p\0val\0ue");
        assert_eq!(parts, vec![&b"/p"[..], &b"val"[..]]);
        assert_eq!(tail, b"ue");
        let (parts, tail) = split_strings(b"a\0\0");
        assert_eq!(parts, vec![&b"a"[..], &b""[..]]);
        assert!(tail.is_empty());
        assert_eq!(one_arg(b"/a\0"), Some(&b"/a"[..]));
        assert_eq!(one_arg(b"/a"), None);
        assert_eq!(one_arg(b""), None);
        assert_eq!(one_arg(b"/a\0b\0"), None);
        assert_eq!(strip_nul(b"OK\0"), b"OK");
        assert_eq!(strip_nul(b"v"), b"v");
    }
}
