//! The client's decoding of what the daemon sends back, kept pure so that it can be tested (and
//! fuzzed) without a connection: reply payloads, error replies, string lists, permission lists,
//! `WATCH_EVENT`s and the chunks of a `DIRECTORY_PART` listing.
//!
//! Everything here treats the daemon's bytes as untrusted: a malformed reply is a
//! [`XsError::Protocol`], and a `DIRECTORY_PART` listing is bounded in size and in restarts, so a
//! daemon that never ends a listing (or keeps changing its generation) cannot make a client
//! loop or grow without bound.

use crate::wire::{self, Message, MsgType};
use crate::{Errno, Perm, Result, WatchEvent, XsError};

/// Largest directory listing a client assembles from `DIRECTORY_PART` chunks (bytes of
/// NUL-terminated names). Far above any real directory (xenstored's own listing of 100 000
/// children named by 5-digit ids is under 1 MiB).
pub const MAX_DIRECTORY_BYTES: usize = 16 << 20;

/// How often a `DIRECTORY_PART` listing restarts because the directory changed between chunks
/// before the client gives up with `EAGAIN`.
pub const MAX_DIRECTORY_RESTARTS: u32 = 32;

/// Decode the reply to a request `op` on `path`: its payload, or the error the daemon named for
/// the path (inner `Err`); a reply that is neither is a protocol error (outer `Err`).
pub fn decode_reply(reply: Message, op: MsgType, path: &str) -> Result<Result<Vec<u8>>> {
    if reply.msg_type == MsgType::ERROR.to_u32() {
        let name = String::from_utf8_lossy(wire::strip_nul(&reply.payload)).into_owned();
        let errno = Errno::from_name(&name)
            .ok_or_else(|| XsError::Protocol(format!("unknown error {name:?}")))?;
        return Ok(Err(XsError::Daemon {
            errno,
            op: op.name(),
            path: path.to_string(),
        }));
    }
    if reply.msg_type != op.to_u32() {
        return Err(XsError::Protocol(format!(
            "reply of type {} to {}",
            reply.msg_type, op
        )));
    }
    Ok(Ok(reply.payload))
}

/// A list of NUL-terminated strings (child names, permissions) as libxenstore reads it: empty
/// strings are skipped, a final string without its NUL still counts.
pub fn parse_list(payload: &[u8]) -> Vec<String> {
    let (parts, tail) = wire::split_strings(payload);
    parts
        .into_iter()
        .chain((!tail.is_empty()).then_some(tail))
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// A `GET_PERMS` reply for `path`.
pub fn parse_perms(payload: &[u8], path: &str) -> Result<Vec<Perm>> {
    parse_list(payload)
        .iter()
        .map(|s| {
            Perm::from_wire(s)
                .ok_or_else(|| XsError::Protocol(format!("bad permission {s:?} on {path}")))
        })
        .collect()
}

/// A `WATCH_EVENT` message: path and token.
pub fn parse_watch_event(msg: &Message) -> Result<WatchEvent> {
    let (parts, _) = wire::split_strings(&msg.payload);
    if parts.len() < 2 {
        return Err(XsError::Protocol("malformed WATCH_EVENT".into()));
    }
    Ok(WatchEvent {
        path: String::from_utf8_lossy(parts[0]).into_owned(),
        token: String::from_utf8_lossy(parts[1]).into_owned(),
    })
}

/// What to do after a `DIRECTORY_PART` chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartStep {
    /// Ask for the chunk starting at this byte offset of the listing.
    Next(usize),
    /// The listing is complete.
    Done(Vec<String>),
}

/// Assembles a directory from `DIRECTORY_PART` replies: each is `<generation>\0` and a slice of
/// the NUL-terminated child list; the last one ends with an extra empty string. A change of
/// generation between chunks restarts the listing from offset 0.
#[derive(Debug, Default)]
pub struct DirectoryParts {
    generation: Option<Vec<u8>>,
    data: Vec<u8>,
    restarts: u32,
}

impl DirectoryParts {
    /// A listing not yet started (ask for offset 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the reply to the last request for `path`.
    pub fn push(&mut self, reply: &[u8], path: &str) -> Result<PartStep> {
        let nul = reply
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| XsError::Protocol("DIRECTORY_PART reply without generation".into()))?;
        let this_gen = &reply[..nul];
        match &self.generation {
            Some(g) if g.as_slice() != this_gen => {
                self.restarts += 1;
                if self.restarts > MAX_DIRECTORY_RESTARTS {
                    return Err(XsError::Daemon {
                        errno: Errno::EAGAIN,
                        op: MsgType::DIRECTORY_PART.name(),
                        path: path.to_string(),
                    });
                }
                self.generation = None;
                self.data.clear();
                return Ok(PartStep::Next(0));
            }
            Some(_) => {}
            None => self.generation = Some(this_gen.to_vec()),
        }
        let chunk = &reply[nul + 1..];
        if self.data.len() + chunk.len() > MAX_DIRECTORY_BYTES {
            return Err(XsError::Protocol(format!(
                "DIRECTORY_PART listing of {path} exceeds {MAX_DIRECTORY_BYTES} bytes"
            )));
        }
        self.data.extend_from_slice(chunk);
        // The last chunk ends with an empty string: the list ends in two NULs.
        if chunk.is_empty() || self.data.ends_with(&[0, 0]) || self.data == [0] {
            let list = self.data.strip_suffix(&[0]).unwrap_or(&self.data);
            return Ok(PartStep::Done(parse_list(list)));
        }
        Ok(PartStep::Next(self.data.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(gen: &str, chunk: &[u8]) -> Vec<u8> {
        let mut v = wire::join_strings(&[gen]);
        v.extend_from_slice(chunk);
        v
    }

    #[test]
    fn directory_parts_assemble_and_restart() {
        let mut d = DirectoryParts::new();
        assert_eq!(
            d.push(&part("7", b"a\0bb\0"), "/p").unwrap(),
            PartStep::Next(5)
        );
        assert_eq!(d.push(&part("8", b"x\0"), "/p").unwrap(), PartStep::Next(0));
        assert_eq!(d.push(&part("8", b"x\0"), "/p").unwrap(), PartStep::Next(2));
        assert_eq!(
            d.push(&part("8", b"y\0\0"), "/p").unwrap(),
            PartStep::Done(vec!["x".into(), "y".into()])
        );
        let mut empty = DirectoryParts::new();
        assert_eq!(
            empty.push(&part("1", b"\0"), "/p").unwrap(),
            PartStep::Done(vec![])
        );
    }

    // A daemon that keeps changing the generation, or never sends the final empty string, kept
    // the client's listing loop going for ever with a growing buffer (issue 13).
    #[test]
    fn hostile_directory_part_replies_end() {
        let mut d = DirectoryParts::new();
        let mut outcome = Ok(PartStep::Next(0));
        for i in 0..1000 {
            outcome = d.push(&part(&i.to_string(), b"a\0"), "/p");
            if outcome.is_err() {
                break;
            }
        }
        assert_eq!(outcome.unwrap_err().errno(), Some(Errno::EAGAIN));

        let mut d = DirectoryParts::new();
        let chunk = vec![b'n'; 4000];
        let mut n = 0;
        let err = loop {
            match d.push(&part("1", &chunk), "/p") {
                Ok(PartStep::Next(_)) => n += 1,
                Ok(done) => panic!("{done:?}"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, XsError::Protocol(_)), "{err}");
        assert_eq!(n, MAX_DIRECTORY_BYTES / 4000);
    }

    #[test]
    fn replies_and_events() {
        let err = Message::new(MsgType::ERROR, 1, 0, b"ENOENT\0".to_vec());
        let e = decode_reply(err, MsgType::READ, "/x").unwrap().unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOENT));
        let odd = Message::new(MsgType::ERROR, 1, 0, b"EWHAT\0".to_vec());
        assert!(decode_reply(odd, MsgType::READ, "/x").is_err());
        let wrong = Message::new(MsgType::WRITE, 1, 0, b"OK\0".to_vec());
        assert!(decode_reply(wrong, MsgType::READ, "/x").is_err());
        assert_eq!(parse_list(b"a\0bb\0"), vec!["a", "bb"]);
        assert_eq!(parse_list(b""), Vec::<String>::new());
        assert_eq!(parse_list(b"b0\0r5\0"), vec!["b0", "r5"]);
        assert!(parse_perms(b"b0\0x5\0", "/p").is_err());
        let ev = Message::new(MsgType::WATCH_EVENT, 0, 0, b"/a\0tok\0".to_vec());
        assert_eq!(
            parse_watch_event(&ev).unwrap(),
            WatchEvent {
                path: "/a".into(),
                token: "tok".into()
            }
        );
        let bad = Message::new(MsgType::WATCH_EVENT, 0, 0, b"/a".to_vec());
        assert!(parse_watch_event(&bad).is_err());
    }
}
