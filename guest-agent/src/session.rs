//! The channel side of the agent: open the tty raw, serve requests on it, re-open it when it goes
//! away, and wait for the channel's `/dev/xen-channel/<name>` link with inotify.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::termios;
use std::sync::Arc;

use xenplug_channel::frame::{Decoder, Event, Limits};
use xenplug_channel::message::{ErrorBody, Message, RateLimiter, Response};
use xenplug_channel::qga;

use crate::agent::{Agent, Outcome};
use crate::publisher::{StateHub, Waker};

/// Set by SIGTERM/SIGINT; every loop checks it at least every [`Options::poll_interval`].
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Install SIGTERM/SIGINT handlers that set [`STOP`].
pub fn install_signal_handlers() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let sa = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; no other
        // handler for these signals is relied on by this program.
        unsafe { sigaction(s, &sa)? };
    }
    Ok(())
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Tunables of a session.
#[derive(Debug, Clone)]
pub struct Options {
    /// Frame bounds.
    pub limits: Limits,
    /// Give up on a reply that cannot be written for this long (dom0 absent, ring full).
    pub write_timeout: Duration,
    /// How often idle loops look at [`STOP`] and at the device path.
    pub poll_interval: Duration,
    /// Error replies to garbage: burst size.
    pub garbage_burst: u32,
    /// Error replies to garbage: one more allowed per this many milliseconds.
    pub garbage_refill_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: Limits::default(),
            write_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(500),
            garbage_burst: 3,
            garbage_refill_ms: 2000,
        }
    }
}

/// Open a channel tty once: O_RDWR|O_NOCTTY|O_NONBLOCK, raw mode on this fd at once (hvc resets
/// termios on last close, and until then the line discipline echoes and maps CR/LF), then drop
/// whatever arrived before raw mode (echoed or mangled, as qemu-ga does).
pub fn open_tty(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let mut t = termios::tcgetattr(f.as_fd()).map_err(io::Error::from)?;
    termios::cfmakeraw(&mut t);
    t.control_chars[termios::SpecialCharacterIndices::VMIN as usize] = 1;
    t.control_chars[termios::SpecialCharacterIndices::VTIME as usize] = 0;
    termios::tcsetattr(f.as_fd(), termios::SetArg::TCSANOW, &t).map_err(io::Error::from)?;
    termios::tcflush(f.as_fd(), termios::FlushArg::TCIFLUSH).map_err(io::Error::from)?;
    Ok(f)
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// [`STOP`] was set.
    Stopped,
    /// The device failed or went away (EIO, ENODEV, hangup, link removed or re-pointed).
    Gone(String),
}

fn write_all_timeout(f: &mut File, mut data: &[u8], timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !data.is_empty() {
        match f.write(data) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "channel not draining",
                    ));
                }
                let ms = left.as_millis().min(1000) as u16;
                let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLOUT)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves requests on one open channel until it goes away or [`STOP`] is set. `still_there` is
/// asked on idle ticks (the link may be removed while the fd stays readable but silent).
pub struct Session<'a> {
    agent: &'a Mutex<Agent>,
    opts: Options,
    decoder: Decoder,
    limiter: RateLimiter,
    started: Instant,
    hub: Arc<StateHub>,
    /// Set while dom0 subscribed to the guest state on this channel.
    waker: Option<Arc<Waker>>,
    /// The state sequence number last sent as an event.
    sent_seq: u64,
    /// Replies sent (for logs and tests).
    pub replies: u64,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("replies", &self.replies)
            .finish()
    }
}

impl<'a> Session<'a> {
    /// A fresh session (fresh decoder: a re-opened device starts from idle).
    pub fn new(agent: &'a Mutex<Agent>, opts: Options) -> Self {
        let hub = match agent.lock() {
            Ok(a) => a.hub.clone(),
            Err(p) => p.into_inner().hub.clone(),
        };
        Session {
            agent,
            decoder: Decoder::new(opts.limits),
            limiter: RateLimiter::new(opts.garbage_burst, opts.garbage_refill_ms),
            opts,
            started: Instant::now(),
            hub,
            waker: None,
            sent_seq: 0,
            replies: 0,
        }
    }

    /// True while dom0 is subscribed to guest-state events on this channel.
    pub fn subscribed(&self) -> bool {
        self.waker.is_some()
    }

    /// The `xenplug-guest-state` event to send, if subscribed and the state changed since the
    /// last one sent.
    pub fn pending_event(&mut self) -> Option<Vec<u8>> {
        self.waker.as_ref()?.drain();
        let (seq, st) = self.hub.latest()?;
        if seq == self.sent_seq {
            return None;
        }
        self.sent_seq = seq;
        let mut v = serde_json::to_vec(&serde_json::json!({
            "event": qga::GUEST_STATE_EVENT,
            "data": st,
        }))
        .expect("guest state serializes");
        v.push(b'\n');
        Some(v)
    }

    /// The replies (bytes to write) for the events in `data`.
    pub fn on_bytes(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for ev in self.decoder.feed(data) {
            let now = self.started.elapsed().as_millis() as u64;
            let garbage_reply = |lim: &mut RateLimiter, desc: String| -> Option<Vec<u8>> {
                if lim.allow(now) {
                    Some(Response::err(ErrorBody::generic(desc), None).encode(false))
                } else {
                    None
                }
            };
            let reply = match ev {
                Event::Resync => None,
                Event::Garbage { first, bytes } => {
                    let c = if first.is_ascii_graphic() {
                        format!("'{}'", first as char)
                    } else {
                        format!("'\\x{first:02x}'")
                    };
                    garbage_reply(
                        &mut self.limiter,
                        format!("JSON parse error, stray {c} ({bytes} bytes discarded)"),
                    )
                }
                Event::Invalid { error } => {
                    garbage_reply(&mut self.limiter, format!("JSON parse error, {error}"))
                }
                Event::TooLarge => garbage_reply(
                    &mut self.limiter,
                    format!(
                        "JSON frame too large (limit {} bytes); discarded",
                        self.opts.limits.max_frame
                    ),
                ),
                Event::TooDeep => garbage_reply(
                    &mut self.limiter,
                    format!(
                        "JSON frame nested too deeply (limit {}); discarded",
                        self.opts.limits.max_depth
                    ),
                ),
                Event::Frame(obj) => self.on_frame(obj),
            };
            if let Some(r) = reply {
                out.push(r);
            }
        }
        out
    }

    fn on_frame(&mut self, obj: serde_json::Map<String, serde_json::Value>) -> Option<Vec<u8>> {
        let req = match Message::from_object(obj) {
            // A reply arriving here is never answered: answering could start a ping-pong with
            // a peer that echoes.
            Ok(Message::Response(_)) => return None,
            Ok(Message::Request(r)) => r,
            Err(e) => return Some(Response::err(e.error, e.id).encode(false)),
        };
        let id = req.id.clone();
        if req.execute == qga::GUEST_SYNC || req.execute == qga::GUEST_SYNC_DELIMITED {
            // A new client: whatever an earlier one subscribed to ends here.
            self.waker = None;
        }
        let outcome = {
            let mut agent = match self.agent.lock() {
                Ok(a) => a,
                Err(p) => p.into_inner(),
            };
            agent.dispatch(&req)
        };
        match outcome {
            Ok(Outcome::Reply(v)) => Some(Response::ok(v, id).encode(false)),
            Ok(Outcome::DelimitedReply(v)) => Some(Response::ok(v, id).encode(true)),
            Ok(Outcome::NoReply) => None,
            Ok(Outcome::Subscribe) => match self.hub.register() {
                Ok(w) => {
                    self.waker = Some(w);
                    self.sent_seq = 0;
                    Some(Response::ok(serde_json::json!({}), id).encode(false))
                }
                Err(e) => Some(
                    Response::err(ErrorBody::generic(format!("cannot subscribe: {e}")), id)
                        .encode(false),
                ),
            },
            Err(e) => Some(Response::err(e, id).encode(false)),
        }
    }

    /// Serve `f` until it fails or [`STOP`] is set.
    pub fn run(&mut self, f: &mut File, still_there: &dyn Fn() -> bool) -> End {
        let mut buf = vec![0u8; 4096];
        let tick = self.opts.poll_interval.as_millis().min(60_000) as u16;
        loop {
            if stopped() {
                return End::Stopped;
            }
            let waker = self.waker.clone();
            let (ready, revents, woken) = {
                let mut fds = vec![PollFd::new(f.as_fd(), PollFlags::POLLIN)];
                if let Some(w) = &waker {
                    fds.push(PollFd::new(w.fd(), PollFlags::POLLIN));
                }
                let ready = match poll(&mut fds, PollTimeout::from(tick)) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return End::Gone(format!("poll: {e}")),
                };
                let rev = |i: usize| {
                    fds.get(i)
                        .and_then(|p| p.revents())
                        .unwrap_or(PollFlags::empty())
                };
                (ready, rev(0), rev(1).contains(PollFlags::POLLIN))
            };
            if woken || ready == 0 {
                if let Some(ev) = self.pending_event() {
                    match write_all_timeout(f, &ev, self.opts.write_timeout) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            eprintln!("xenplug-agent: guest-state event dropped: {e}");
                        }
                        Err(e) => return End::Gone(format!("write: {e}")),
                    }
                }
            }
            // Nothing from the tty (a time-out or only the waker): check the device is still ours.
            if revents.is_empty() {
                if !still_there() {
                    return End::Gone("the device link was removed or re-pointed".into());
                }
                continue;
            }
            if revents.contains(PollFlags::POLLNVAL) {
                return End::Gone("fd invalid".into());
            }
            match f.read(&mut buf) {
                Ok(0) => {
                    if revents.contains(PollFlags::POLLHUP) {
                        return End::Gone("hangup".into());
                    }
                    // A tty read of 0 with VMIN=1 means hangup/EOF.
                    return End::Gone("end of file".into());
                }
                Ok(n) => {
                    let mut out = self.on_bytes(&buf[..n]);
                    // A new subscription gets the current state right after its reply.
                    out.extend(self.pending_event());
                    for reply in out {
                        match write_all_timeout(f, &reply, self.opts.write_timeout) {
                            Ok(()) => self.replies += 1,
                            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                                eprintln!("xenplug-agent: reply dropped: {e}");
                            }
                            Err(e) => return End::Gone(format!("write: {e}")),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return End::Gone(format!("read: {e}")),
            }
        }
    }
}

/// Wait until `dir/name` exists (following symlinks), using inotify on `dir` (or on its parent
/// while `dir` does not exist yet). Returns None when [`STOP`] is set.
pub fn wait_for(dir: &Path, name: &str, tick: Duration) -> Option<PathBuf> {
    let target = dir.join(name);
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok();
    let mut watching_dir = false;
    let mut watching_parent = false;
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF;
    loop {
        if stopped() {
            return None;
        }
        if std::fs::metadata(&target).is_ok() {
            return Some(target);
        }
        if let Some(ino) = &ino {
            if !watching_dir && dir.is_dir() {
                watching_dir = ino.add_watch(dir, flags).is_ok();
            }
            if !watching_dir && !watching_parent {
                if let Some(p) = dir.parent() {
                    watching_parent = ino
                        .add_watch(p, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                        .is_ok();
                }
            }
            let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
            let _ = poll(
                &mut fds,
                PollTimeout::from(tick.as_millis().min(60_000) as u16),
            );
            while let Ok(evs) = ino.read_events() {
                if evs.is_empty() {
                    break;
                }
                if evs
                    .iter()
                    .any(|e| e.mask.contains(AddWatchFlags::IN_DELETE_SELF))
                {
                    watching_dir = false;
                }
            }
        } else {
            std::thread::sleep(tick);
        }
    }
}

/// The (device number, inode) a path resolves to now, if it is a character device.
pub fn device_id(path: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    if m.file_type().is_char_device() {
        Some((m.rdev(), m.ino()))
    } else {
        None
    }
}

/// Serve the channel at `dir/name` for ever: wait for it, open it, serve, and on any failure
/// re-open (with a back-off of up to 5 s). Returns when [`STOP`] is set.
pub fn run_channel(dir: &Path, name: &str, agent: &Mutex<Agent>, opts: &Options) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(path) = wait_for(dir, name, opts.poll_interval) else {
            return;
        };
        let mut f = match open_tty(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!(
                    "xenplug-agent: open {}: {e}; retrying in {:?}",
                    path.display(),
                    backoff
                );
                sleep_unless_stopped(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let opened = device_id(&path);
        eprintln!("xenplug-agent: serving {} (raw mode)", path.display());
        lock(agent).channel_up();
        let still = || device_id(&path).is_some() && device_id(&path) == opened;
        let mut s = Session::new(agent, opts.clone());
        match s.run(&mut f, &still) {
            End::Stopped => return,
            End::Gone(why) => {
                // Frozen filesystems are thawed if the channel does not come back in time.
                lock(agent).channel_lost();
                eprintln!("xenplug-agent: {}: {why}; re-opening", path.display());
                drop(f);
                if s.replies > 0 {
                    backoff = Duration::from_millis(200);
                }
                sleep_unless_stopped(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn lock(agent: &Mutex<Agent>) -> std::sync::MutexGuard<'_, Agent> {
    agent.lock().unwrap_or_else(|e| e.into_inner())
}

fn sleep_unless_stopped(d: Duration) {
    let end = Instant::now() + d;
    while !stopped() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Agent, Power};
    use crate::apply::Host;
    use xenplug_channel::qga::ShutdownMode;

    struct FakeHost(String);
    impl Host for FakeHost {
        fn set_hostname(&mut self, n: &str) -> anyhow::Result<()> {
            self.0 = n.into();
            Ok(())
        }
        fn hostname(&self) -> anyhow::Result<String> {
            Ok(self.0.clone())
        }
    }
    struct NoPower;
    impl Power for NoPower {
        fn shutdown(&mut self, _: ShutdownMode) -> anyhow::Result<()> {
            Ok(())
        }
    }

    fn agent(root: &Path) -> Mutex<Agent> {
        let mut a = Agent::new(root, Box::new(FakeHost("g1".into())), Box::new(NoPower));
        a.live_network = false;
        Mutex::new(a)
    }

    fn text(r: &[Vec<u8>]) -> Vec<String> {
        r.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn handshake_garbage_and_rate_limit() {
        let d = tempfile::tempdir().unwrap();
        let a = agent(d.path());
        let mut s = Session::new(&a, Options::default());
        let r = s.on_bytes(b"AT\r\nATZ\r\nAT+CGMI\r\nATI\r\n\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":77}}");
        let t = text(&r);
        // Three error replies (the burst), the fourth line suppressed, then the sync reply.
        assert_eq!(t.len(), 4, "{t:?}");
        assert!(t[0].contains("stray 'A'"));
        assert_eq!(r[3], b"\xff{\"return\":77}\n".to_vec());
        let r = s.on_bytes(b"{\"execute\":\"guest-get-host-name\",\"id\":\"q1\"}");
        assert_eq!(
            text(&r),
            vec!["{\"return\":{\"host-name\":\"g1\"},\"id\":\"q1\"}\n"]
        );
        // Replies are never answered.
        assert!(s.on_bytes(b"{\"return\":{}}").is_empty());
        // Torn request, then a new session's resync: only the sync is answered.
        let r = s.on_bytes(b"{\"execute\":\"guest-ping\",\"argu");
        assert!(r.is_empty());
        let r = s.on_bytes(b"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":78}}");
        assert_eq!(r, vec![b"\xff{\"return\":78}\n".to_vec()]);
        let r = s.on_bytes(b"{\"execute\":\"guest-bogus\"}");
        assert!(text(&r)[0].contains("CommandNotFound"));
    }
}
