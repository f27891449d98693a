//! Logging where operators look (docs/hotplug-contract.md, "Logging"):
//!
//! * **stderr**: `<tag>: <msg>` (`<tag>: error: <msg>`, `<tag>: warning: <msg>`), no colours or
//!   timestamps; libxl passes it on. Default threshold `info`.
//! * **the log file** (`/var/log/xen/xen-hotplug.log`, appended, directory created if needed):
//!   `<UTC time> <tag>[<pid>] <level>: <msg>`. Failing to open it is not fatal.
//! * **syslog**, facility `daemon`, tagged with the script name: RFC 3164 datagrams written to
//!   `/dev/log` on a non-blocking socket, so a missing or stuck syslogd never blocks or fails the
//!   script (the message is dropped).
//!
//! Every message is forced onto one line.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::failure::one_line;

/// Severity, ordered from the most to the least important (so `Err < Debug`). A sink with
/// threshold `t` writes the messages with `level <= t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `err`
    Err,
    /// `warning`
    Warning,
    /// `info`
    Info,
    /// `debug`
    Debug,
}

impl Level {
    /// The syslog name (`logger -p daemon.<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Err => "err",
            Level::Warning => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// The syslog severity number.
    pub fn severity(self) -> u8 {
        match self {
            Level::Err => 3,
            Level::Warning => 4,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "err" | "error" => Ok(Level::Err),
            "warning" | "warn" => Ok(Level::Warning),
            "info" | "notice" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            _ => Err(()),
        }
    }
}

/// syslog facility `daemon`.
const FACILITY_DAEMON: u8 = 3;
/// Longest message sent to syslog.
const SYSLOG_MAX: usize = 4096;

/// The logger of one script run. Clones share the sinks (a lock reports its hold time on release
/// through one).
#[derive(Clone)]
pub struct Log {
    tag: String,
    pid: u32,
    stderr_level: Level,
    stderr: Arc<Mutex<Box<dyn Write + Send>>>,
    file: Option<(Arc<File>, Level)>,
    syslog: Option<(Arc<UnixDatagram>, Level)>,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("tag", &self.tag)
            .field("stderr_level", &self.stderr_level)
            .field("file", &self.file.as_ref().map(|(_, l)| l))
            .field("syslog", &self.syslog.as_ref().map(|(_, l)| l))
            .finish()
    }
}

/// Open the log file for appending, creating its directory. `None` (after a note on stderr) when
/// it cannot be opened.
fn open_log_file(path: &Path) -> Result<File, std::io::Error> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    OpenOptions::new().append(true).create(true).open(path)
}

fn open_syslog(socket: &Path) -> Option<UnixDatagram> {
    let s = UnixDatagram::unbound().ok()?;
    s.set_nonblocking(true).ok()?;
    s.connect(socket).ok()?;
    Some(s)
}

impl Log {
    /// A logger tagged `tag` with the sinks `cfg` asks for. Sinks that cannot be opened are
    /// skipped (a note goes to stderr for the log file).
    pub fn new(tag: &str, cfg: &Config) -> Log {
        let mut log = Log::stderr_only(tag, cfg.stderr_level);
        if let Some(path) = &cfg.log_file {
            match open_log_file(path) {
                Ok(f) => log.file = Some((Arc::new(f), cfg.log_file_level)),
                Err(e) => log.warning(format!(
                    "cannot open log file {}: {e} (logging to stderr and syslog only)",
                    path.display()
                )),
            }
        }
        if cfg.syslog {
            log.syslog = open_syslog(&cfg.syslog_socket).map(|s| (Arc::new(s), cfg.syslog_level));
        }
        log
    }

    /// A logger that writes to stderr only.
    pub fn stderr_only(tag: &str, level: Level) -> Log {
        Log {
            tag: tag.to_string(),
            pid: std::process::id(),
            stderr_level: level,
            stderr: Arc::new(Mutex::new(Box::new(std::io::stderr()))),
            file: None,
            syslog: None,
        }
    }

    /// Replace the stderr sink (tests capture it this way).
    pub fn with_stderr(mut self, w: Box<dyn Write + Send>) -> Log {
        self.stderr = Arc::new(Mutex::new(w));
        self
    }

    /// The tag (script name).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// True when a message at `level` goes to at least one sink (to skip building costly
    /// debug messages).
    pub fn enabled(&self, level: Level) -> bool {
        level <= self.stderr_level
            || self.file.as_ref().is_some_and(|(_, l)| level <= *l)
            || self.syslog.as_ref().is_some_and(|(_, l)| level <= *l)
    }

    /// Log one message at `level`.
    pub fn log(&self, level: Level, msg: impl fmt::Display) {
        if !self.enabled(level) {
            return;
        }
        let msg = one_line(&msg.to_string());
        if level <= self.stderr_level {
            let line = match level {
                Level::Err => format!("{}: error: {msg}\n", self.tag),
                Level::Warning => format!("{}: warning: {msg}\n", self.tag),
                _ => format!("{}: {msg}\n", self.tag),
            };
            if let Ok(mut w) = self.stderr.lock() {
                let _ = w.write_all(line.as_bytes());
                let _ = w.flush();
            }
        }
        if let Some((f, l)) = &self.file {
            if level <= *l {
                let line = format!(
                    "{} {}[{}] {level}: {msg}\n",
                    utc_timestamp(SystemTime::now()),
                    self.tag,
                    self.pid
                );
                // One write(2) on an O_APPEND file: lines from concurrent scripts do not mix.
                let _ = (&**f).write_all(line.as_bytes());
            }
        }
        if let Some((s, l)) = &self.syslog {
            if level <= *l {
                let mut body = msg;
                if body.len() > SYSLOG_MAX {
                    let mut cut = SYSLOG_MAX;
                    while !body.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    body.truncate(cut);
                }
                let dgram = format!(
                    "<{}>{} {}[{}]: {body}",
                    FACILITY_DAEMON * 8 + level.severity(),
                    syslog_timestamp(),
                    self.tag,
                    self.pid
                );
                // Non-blocking: a full or absent syslogd loses the message, never stalls us.
                let _ = s.send(dgram.as_bytes());
            }
        }
    }

    /// `log err`.
    pub fn err(&self, msg: impl fmt::Display) {
        self.log(Level::Err, msg)
    }
    /// `log warning`.
    pub fn warning(&self, msg: impl fmt::Display) {
        self.log(Level::Warning, msg)
    }
    /// `log info`.
    pub fn info(&self, msg: impl fmt::Display) {
        self.log(Level::Info, msg)
    }
    /// `log debug`.
    pub fn debug(&self, msg: impl fmt::Display) {
        self.log(Level::Debug, msg)
    }
}

/// `2026-01-31T12:34:56.789Z`.
pub(crate) fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// RFC 3164 local time stamp, `Mmm dd hh:mm:ss` (day space-padded).
fn syslog_timestamp() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: time(NULL) only returns the current time.
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to valid, live locals; localtime_r is the reentrant variant.
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if !ok {
        return "Jan  1 00:00:00".into();
    }
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_timestamps() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // 2000-02-29
        assert_eq!(utc_timestamp(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31T23:59:59
        assert_eq!(utc_timestamp(t), "2026-12-31T23:59:59.000Z");
    }

    #[test]
    fn levels_parse_and_order() {
        assert!(Level::Err < Level::Debug);
        assert_eq!("warn".parse::<Level>(), Ok(Level::Warning));
        assert_eq!("error".parse::<Level>(), Ok(Level::Err));
        assert!("loud".parse::<Level>().is_err());
    }

    #[test]
    fn syslog_timestamp_shape() {
        let t = syslog_timestamp();
        assert_eq!(t.len(), 15, "{t:?}");
        assert_eq!(&t[3..4], " ");
    }
}
