//! A bounded xenstore probe for the doctor: one connection (a daemon socket or the xenbus
//! device), requests answered within a deadline, so a wedged xenstored makes the doctor report it
//! instead of hanging with it.
//!
//! The regular client (`xenplug_xenstore::XsClient`) waits for ever, as a hotplug script must;
//! this speaks the same wire format (`xenplug_xenstore::wire`) with a poll timeout on every read.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use xenplug_xenstore::wire::{Decoder, Message, MsgType};

#[derive(Debug)]
enum Endpoint {
    Socket(UnixStream),
    Device(File),
}

impl Endpoint {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Endpoint::Socket(s) => s.write_all(b),
            Endpoint::Device(f) => f.write_all(b),
        }
    }

    /// Read what is there, waiting at most until `deadline`.
    fn read_until(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let ready = {
            let fd = match &*self {
                Endpoint::Socket(s) => s.as_fd(),
                Endpoint::Device(f) => f.as_fd(),
            };
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            poll(&mut fds, timeout).map_err(io::Error::from)?
        };
        if ready == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer in time (is xenstored wedged?)",
            ));
        }
        match self {
            Endpoint::Socket(s) => s.read(buf),
            Endpoint::Device(f) => f.read(buf),
        }
    }
}

/// One xenstore connection with a per-request deadline.
#[derive(Debug)]
pub struct Probe {
    io: Endpoint,
    timeout: Duration,
    next_id: u32,
}

/// A request's outcome: the reply payload, or xenstored's error name (`ENOENT`, …).
pub type Reply = Result<Vec<u8>, String>;

impl Probe {
    /// Connect to a daemon socket.
    pub fn socket(path: &Path, timeout: Duration) -> io::Result<Probe> {
        let s = UnixStream::connect(path)?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Probe {
            io: Endpoint::Socket(s),
            timeout,
            next_id: 1,
        })
    }

    /// Open the xenbus device (the kernel forwards to xenstored wherever it runs).
    pub fn device(path: &Path, timeout: Duration) -> io::Result<Probe> {
        let f = File::options().read(true).write(true).open(path)?;
        Ok(Probe {
            io: Endpoint::Device(f),
            timeout,
            next_id: 1,
        })
    }

    /// Send one request (outside any transaction) and wait for its reply.
    pub fn request(&mut self, ty: MsgType, payload: &[u8]) -> io::Result<Reply> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let msg = Message::new(ty, id, 0, payload.to_vec())
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
        self.io.write_all(&msg)?;
        let deadline = Instant::now() + self.timeout;
        let mut dec = Decoder::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.io.read_until(&mut buf, deadline)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "xenstored closed the connection",
                ));
            }
            let msgs = dec
                .feed_all(&buf[..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
            for m in msgs {
                if m.req_id != id {
                    continue;
                }
                return Ok(if m.known_type() == Some(MsgType::ERROR) {
                    Err(
                        String::from_utf8_lossy(xenplug_xenstore::wire::strip_nul(&m.payload))
                            .into_owned(),
                    )
                } else {
                    Ok(m.payload)
                });
            }
        }
    }

    fn path_arg(path: &str) -> Vec<u8> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p
    }

    /// `DIRECTORY path`: the children's names.
    pub fn directory(&mut self, path: &str) -> io::Result<Result<Vec<String>, String>> {
        Ok(self
            .request(MsgType::DIRECTORY, &Self::path_arg(path))?
            .map(|p| {
                p.split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            }))
    }

    /// `READ path`.
    pub fn read(&mut self, path: &str) -> io::Result<Reply> {
        self.request(MsgType::READ, &Self::path_arg(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_from_the_embedded_xenstored_and_times_out_on_a_silent_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xs");
        let opts = xenplug_xenstored::Options::new(&sock);
        let listeners = xenplug_xenstored::daemon::bind_all(&opts).unwrap();
        let shutdown = xenplug_xenstored::Shutdown::new();
        let (o, sd) = (opts.clone(), shutdown.clone());
        let t = std::thread::spawn(move || {
            xenplug_xenstored::daemon::serve_listeners(
                &o,
                xenplug_xenstored::Engine::new(),
                listeners,
                sd,
            )
        });
        let mut p = Probe::socket(&sock, Duration::from_secs(5)).unwrap();
        let top = p.directory("/").unwrap().unwrap();
        assert!(top.iter().any(|n| n == "local"), "{top:?}");
        assert_eq!(p.read("/no/such/node").unwrap(), Err("ENOENT".to_string()));
        shutdown.trigger();
        let _ = t.join();

        // A listener that accepts and never answers.
        let silent = dir.path().join("silent");
        let _l = std::os::unix::net::UnixListener::bind(&silent).unwrap();
        let mut p = Probe::socket(&silent, Duration::from_millis(200)).unwrap();
        let e = p.directory("/").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
