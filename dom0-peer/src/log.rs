//! Structured logs: one JSON object per line on stderr (`{"level":…,"event":…,…fields}`), no
//! timestamps (journald or the caller adds them). Guest-supplied text is sanitised by the caller
//! before it becomes a field. Tests can capture the lines instead.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// Severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Per-message detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something went wrong with one VM or an input.
    Warn,
    /// The daemon itself is in trouble.
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// Parse `debug|info|warn|error`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" => Level::Warn,
            "error" => Level::Error,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
enum Sink {
    Stderr,
    Capture(Arc<Mutex<Vec<String>>>),
}

/// A cheap, cloneable logger.
#[derive(Debug, Clone)]
pub struct Logger {
    min: Level,
    sink: Sink,
    base: Arc<Vec<(&'static str, Value)>>,
}

impl Default for Logger {
    fn default() -> Self {
        Logger::stderr(Level::Info)
    }
}

impl Logger {
    /// Log to stderr at `min` and above.
    pub fn stderr(min: Level) -> Self {
        Logger {
            min,
            sink: Sink::Stderr,
            base: Arc::new(Vec::new()),
        }
    }

    /// Log into memory (tests); returns the logger and the captured lines.
    pub fn capture(min: Level) -> (Self, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        (
            Logger {
                min,
                sink: Sink::Capture(lines.clone()),
                base: Arc::new(Vec::new()),
            },
            lines,
        )
    }

    /// A logger that adds `fields` to every line.
    pub fn with(&self, fields: &[(&'static str, Value)]) -> Self {
        let mut base = (*self.base).clone();
        base.extend(fields.iter().cloned());
        Logger {
            min: self.min,
            sink: self.sink.clone(),
            base: Arc::new(base),
        }
    }

    /// True when `level` would be written.
    pub fn enabled(&self, level: Level) -> bool {
        level >= self.min
    }

    /// Write one line.
    pub fn log(&self, level: Level, event: &str, fields: &[(&str, Value)]) {
        if level < self.min {
            return;
        }
        let mut m = Map::new();
        m.insert("level".into(), level.name().into());
        m.insert("event".into(), event.into());
        for (k, v) in self.base.iter() {
            m.insert((*k).into(), v.clone());
        }
        for (k, v) in fields {
            m.insert((*k).into(), v.clone());
        }
        let line = Value::Object(m).to_string();
        match &self.sink {
            Sink::Stderr => {
                let mut e = std::io::stderr().lock();
                let _ = writeln!(e, "{line}");
            }
            Sink::Capture(v) => {
                if let Ok(mut v) = v.lock() {
                    v.push(line);
                }
            }
        }
    }

    /// [`Level::Debug`].
    pub fn debug(&self, event: &str, fields: &[(&str, Value)]) {
        self.log(Level::Debug, event, fields)
    }
    /// [`Level::Info`].
    pub fn info(&self, event: &str, fields: &[(&str, Value)]) {
        self.log(Level::Info, event, fields)
    }
    /// [`Level::Warn`].
    pub fn warn(&self, event: &str, fields: &[(&str, Value)]) {
        self.log(Level::Warn, event, fields)
    }
    /// [`Level::Error`].
    pub fn error(&self, event: &str, fields: &[(&str, Value)]) {
        self.log(Level::Error, event, fields)
    }
}

/// Where a rate limiter reads the time: the real monotonic clock in the daemon, a clock the test
/// moves by hand in unit tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Instant) -> Self {
        ManualClock(Mutex::new(start))
    }

    /// Move the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many lines one channel may write: a burst, then one line per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRate {
    /// Lines written at once before the limit applies.
    pub burst: u32,
    /// One more line every this long.
    pub interval: Duration,
}

impl Default for LogRate {
    fn default() -> Self {
        LogRate {
            burst: 10,
            interval: Duration::from_secs(1),
        }
    }
}

/// The event of the line that reports suppressed lines when no other line of the channel
/// came to carry the count.
pub const SUPPRESSED_EVENT: &str = "log-suppressed";

/// One token bucket of a channel and what it dropped since it last let a line through.
#[derive(Debug)]
struct Budget {
    bucket: xenplug_channel::message::RateLimiter,
    /// Dropped since the last written line, by event.
    pending: BTreeMap<String, u64>,
    /// When the first of those was dropped.
    pending_since: Option<Instant>,
}

impl Budget {
    /// The fields reporting what was dropped since the last written line (none if nothing was).
    fn take_pending(&mut self) -> Option<[(&'static str, Value); 2]> {
        self.pending_since = None;
        if self.pending.is_empty() {
            return None;
        }
        let by_event: Map<String, Value> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect();
        let n: u64 = by_event.values().filter_map(Value::as_u64).sum();
        Some([
            ("suppressed", n.into()),
            ("suppressed_events", Value::Object(by_event)),
        ])
    }
}

/// The log of one channel, rate-limited: whatever a guest makes the daemon say about its channel
/// (oversize and too-deep frames, handshakes it forces, denied or dropped requests, invalid
/// reports…) passes a token bucket of the channel ([`LogRate`]), so a hostile guest cannot drown
/// the lines of other VMs, nor spend journald's rate limit on them. Debug lines (written only at
/// `--log-level debug`) have a bucket of their own of the same size, so that detail never takes
/// the place of a warning.
///
/// Lines over the limit are counted, by event. The next line of the same bucket written for the
/// channel carries `suppressed` (how many lines were dropped since the bucket's previous line)
/// and `suppressed_events` (those counts by event); when no line comes, a [`SUPPRESSED_EVENT`]
/// line with the same fields (a warning, or a debug line for dropped debug lines) is due at
/// [`ChannelLog::flush_at`] (one interval after the first dropped line, when the bucket has a
/// token again) and written by [`ChannelLog::flush`]. Every written line, summaries included,
/// takes a token: in any window of `T`, a channel writes at most `burst + T / interval + 1`
/// lines at info level and above. Lines below the logger's level take no token and are not
/// counted.
#[derive(Debug)]
pub struct ChannelLog {
    log: Logger,
    clock: Arc<dyn Clock>,
    epoch: Instant,
    interval: Duration,
    /// Debug lines, and the others.
    budgets: [Budget; 2],
    suppressed: u64,
    written: u64,
}

fn budget_of(level: Level) -> usize {
    usize::from(level != Level::Debug)
}

impl ChannelLog {
    /// Rate-limit the lines written through `log` (its base fields name the channel), reading
    /// the time from `clock`.
    pub fn new(log: Logger, rate: LogRate, clock: Arc<dyn Clock>) -> Self {
        let interval = rate.interval.max(Duration::from_millis(1));
        let per_token_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let budget = || Budget {
            bucket: xenplug_channel::message::RateLimiter::new(rate.burst.max(1), per_token_ms),
            pending: BTreeMap::new(),
            pending_since: None,
        };
        ChannelLog {
            log,
            epoch: clock.now(),
            clock,
            interval,
            budgets: [budget(), budget()],
            suppressed: 0,
            written: 0,
        }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Write one line if the channel's budget allows; true when it was written.
    pub fn log(&mut self, level: Level, event: &str, fields: &[(&str, Value)]) -> bool {
        if !self.log.enabled(level) {
            return false;
        }
        let now = self.clock.now();
        let now_ms = self.now_ms(now);
        let b = &mut self.budgets[budget_of(level)];
        if !b.bucket.allow(now_ms) {
            self.suppressed += 1;
            *b.pending.entry(event.to_string()).or_default() += 1;
            b.pending_since.get_or_insert(now);
            return false;
        }
        self.written += 1;
        match b.take_pending() {
            None => self.log.log(level, event, fields),
            Some(extra) => {
                let mut all: Vec<(&str, Value)> = fields.to_vec();
                all.extend(extra);
                self.log.log(level, event, &all);
            }
        }
        true
    }

    /// When a [`SUPPRESSED_EVENT`] line is due (lines were dropped and none of their bucket was
    /// written since).
    pub fn flush_at(&self) -> Option<Instant> {
        self.budgets
            .iter()
            .filter_map(|b| b.pending_since)
            .min()
            .map(|t| t + self.interval)
    }

    /// Write the [`SUPPRESSED_EVENT`] lines that are due and that the budget allows; true when
    /// one was written.
    pub fn flush(&mut self) -> bool {
        let now = self.clock.now();
        let now_ms = self.now_ms(now);
        let mut wrote = false;
        for (i, level) in [(0, Level::Debug), (1, Level::Warn)] {
            let b = &mut self.budgets[i];
            match b.pending_since {
                Some(t) if now >= t + self.interval => {}
                _ => continue,
            }
            if !b.bucket.allow(now_ms) {
                // Not yet (cannot happen with a monotonic clock): try again one interval later.
                b.pending_since = Some(now);
                continue;
            }
            if let Some(extra) = b.take_pending() {
                let mut all: Vec<(&str, Value)> = extra.to_vec();
                all.push(("suppressed_total", self.suppressed.into()));
                self.log.log(level, SUPPRESSED_EVENT, &all);
                self.written += 1;
                wrote = true;
            }
        }
        wrote
    }

    /// Lines dropped so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Lines written so far (summaries included).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// [`Level::Debug`].
    pub fn debug(&mut self, event: &str, fields: &[(&str, Value)]) -> bool {
        self.log(Level::Debug, event, fields)
    }
    /// [`Level::Info`].
    pub fn info(&mut self, event: &str, fields: &[(&str, Value)]) -> bool {
        self.log(Level::Info, event, fields)
    }
    /// [`Level::Warn`].
    pub fn warn(&mut self, event: &str, fields: &[(&str, Value)]) -> bool {
        self.log(Level::Warn, event, fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(lines: &Mutex<Vec<String>>) -> Vec<Value> {
        lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn channel(
        min: Level,
        rate: LogRate,
    ) -> (ChannelLog, Arc<ManualClock>, Arc<Mutex<Vec<String>>>) {
        let (log, lines) = Logger::capture(min);
        let clock = Arc::new(ManualClock::new(Instant::now()));
        let log = log.with(&[("domid", 7.into())]);
        (ChannelLog::new(log, rate, clock.clone()), clock, lines)
    }

    #[test]
    fn a_burst_then_one_line_per_interval_and_the_next_line_says_what_was_dropped() {
        let (mut c, clock, lines) = channel(Level::Info, LogRate::default());
        for i in 0..10 {
            assert!(c.warn("oversize-frame", &[("n", i.into())]), "line {i}");
        }
        for _ in 0..25 {
            assert!(!c.warn("oversize-frame", &[]));
        }
        assert!(!c.info("handshake", &[]));
        assert_eq!(c.suppressed(), 26);
        assert_eq!(parsed(&lines).len(), 10);
        // Not yet a full interval: still nothing.
        clock.advance(Duration::from_millis(999));
        assert!(!c.warn("oversize-frame", &[]));
        clock.advance(Duration::from_millis(1));
        assert!(c.warn("oversize-frame", &[("n", 99.into())]));
        let all = parsed(&lines);
        assert_eq!(all.len(), 11);
        let last = &all[10];
        assert_eq!(last["event"], "oversize-frame");
        assert_eq!(last["level"], "warn");
        assert_eq!(last["domid"], 7);
        assert_eq!(last["n"], 99);
        assert_eq!(last["suppressed"], 27);
        assert_eq!(
            last["suppressed_events"],
            json!({"oversize-frame": 26, "handshake": 1})
        );
        // The first ten carried no such field; the count starts again after a written line.
        assert!(all[..10].iter().all(|l| l.get("suppressed").is_none()));
        assert_eq!(c.flush_at(), None);
        clock.advance(Duration::from_secs(1));
        assert!(c.info("configured", &[]));
        assert!(parsed(&lines)[11].get("suppressed").is_none());
        assert_eq!(c.suppressed(), 27);
        assert_eq!(c.written(), 12);
    }

    #[test]
    fn a_summary_is_due_one_interval_after_the_first_dropped_line() {
        let rate = LogRate {
            burst: 2,
            interval: Duration::from_secs(5),
        };
        let (mut c, clock, lines) = channel(Level::Info, rate);
        assert!(c.warn("a", &[]));
        assert!(c.warn("a", &[]));
        assert_eq!(c.flush_at(), None);
        assert!(!c.flush(), "nothing to report");
        clock.advance(Duration::from_secs(1));
        let t = clock.now();
        assert!(!c.warn("garbage", &[]));
        clock.advance(Duration::from_secs(3));
        assert!(!c.warn("garbage", &[]));
        assert_eq!(c.flush_at(), Some(t + Duration::from_secs(5)));
        clock.advance(Duration::from_millis(1900));
        assert!(!c.flush(), "not due yet");
        clock.advance(Duration::from_millis(100));
        assert!(c.flush());
        let all = parsed(&lines);
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[2],
            json!({"level": "warn", "event": SUPPRESSED_EVENT, "domid": 7, "suppressed": 2,
                   "suppressed_events": {"garbage": 2}, "suppressed_total": 2})
        );
        assert_eq!(c.flush_at(), None);
        assert!(!c.flush());
        // The summary took the token: the next line waits for the next one.
        assert!(!c.warn("a", &[]));
        clock.advance(Duration::from_secs(5));
        assert!(c.warn("a", &[]));
        assert_eq!(parsed(&lines)[3]["suppressed"], 1);
    }

    #[test]
    fn lines_below_the_level_take_no_token_and_are_not_counted() {
        let (mut c, _clock, lines) = channel(
            Level::Info,
            LogRate {
                burst: 1,
                interval: Duration::from_secs(1),
            },
        );
        for _ in 0..100 {
            assert!(!c.debug("state", &[]));
        }
        assert_eq!(c.suppressed(), 0);
        assert!(c.info("configured", &[]));
        assert_eq!(parsed(&lines).len(), 1);
    }

    #[test]
    fn debug_lines_have_a_budget_of_their_own() {
        let (mut c, clock, lines) = channel(
            Level::Debug,
            LogRate {
                burst: 3,
                interval: Duration::from_secs(1),
            },
        );
        for _ in 0..50 {
            c.debug("state", &[]);
        }
        assert_eq!(c.suppressed(), 47);
        // The detail took nothing from the warnings' bucket.
        for _ in 0..3 {
            assert!(c.warn("oversize-frame", &[]));
        }
        assert!(!c.warn("oversize-frame", &[]));
        clock.advance(Duration::from_secs(1));
        assert!(c.flush());
        let all = parsed(&lines);
        assert_eq!(all.len(), 3 + 3 + 2);
        let summaries: Vec<&Value> = all
            .iter()
            .filter(|l| l["event"] == SUPPRESSED_EVENT)
            .collect();
        assert_eq!(summaries.len(), 2);
        assert_eq!(summaries[0]["level"], "debug");
        assert_eq!(summaries[0]["suppressed_events"], json!({"state": 47}));
        assert_eq!(summaries[1]["level"], "warn");
        assert_eq!(
            summaries[1]["suppressed_events"],
            json!({"oversize-frame": 1})
        );
        assert_eq!(summaries[1]["suppressed_total"], 48);
        assert_eq!(c.flush_at(), None);
    }

    /// The figure of the issue: a guest sending 67-byte nesting bombs at the default 256 KiB/s
    /// makes the daemon want ~3,900 warnings a second. Over a simulated minute its channel writes
    /// at most burst + 60 + 1 lines, every dropped line is accounted for in the lines that were
    /// written, and a quiet channel sharing the same sink keeps every one of its lines.
    #[test]
    fn a_flooding_channel_stays_within_its_budget_and_others_keep_every_line() {
        let (log, lines) = Logger::capture(Level::Info);
        let clock = Arc::new(ManualClock::new(Instant::now()));
        let mut hostile = ChannelLog::new(
            log.with(&[("domid", 1.into())]),
            LogRate::default(),
            clock.clone(),
        );
        let mut quiet = ChannelLog::new(
            log.with(&[("domid", 2.into())]),
            LogRate::default(),
            clock.clone(),
        );
        let per_sec = 256 * 1024 / 67;
        let step = Duration::from_secs(1) / per_sec;
        let mut attempted = 0u64;
        let mut quiet_sent = 0u64;
        let start = clock.now();
        while clock.now() - start < Duration::from_secs(60) {
            hostile.warn("oversize-frame", &[("max_frame", 65536.into())]);
            attempted += 1;
            if hostile.flush_at().is_some_and(|t| clock.now() >= t) {
                hostile.flush();
            }
            if attempted.is_multiple_of(u64::from(per_sec * 7)) {
                // Every 7 s the quiet VM has something to say.
                assert!(quiet.info("configured", &[("generation", quiet_sent.into())]));
                quiet_sent += 1;
            }
            clock.advance(step);
        }
        // The flood stops; the summary comes one interval later.
        if let Some(t) = hostile.flush_at() {
            clock.advance(t.saturating_duration_since(clock.now()));
            assert!(hostile.flush());
        }
        let all = parsed(&lines);
        let of = |d: u64| all.iter().filter(move |l| l["domid"] == d);
        let hostile_lines = of(1).count() as u64;
        assert!(attempted > 60 * 3900, "{attempted}");
        assert!(
            hostile_lines <= 10 + 60 + 2,
            "{hostile_lines} lines for {attempted} bombs"
        );
        assert_eq!(hostile_lines, hostile.written());
        let events = of(1).filter(|l| l["event"] == "oversize-frame").count() as u64;
        assert_eq!(events + hostile.suppressed(), attempted);
        let reported: u64 = of(1).filter_map(|l| l["suppressed"].as_u64()).sum();
        assert_eq!(reported, hostile.suppressed());
        let quiet_lines: Vec<u64> = of(2).map(|l| l["generation"].as_u64().unwrap()).collect();
        assert_eq!(quiet_lines, (0..quiet_sent).collect::<Vec<_>>());
        assert_eq!(quiet.suppressed(), 0);
    }
}
