//! The error contract: what a script body returns.

use std::fmt;

use xenplug_xenstore::XsError;

/// Why a script failed. The message becomes `<backend>/hotplug-error` (libxl logs it as
/// `script: <msg>`), so it must be one line naming what is wrong; constructors and
/// [`Failure::message`] collapse any line breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A fatal error: `hotplug-status=error` (`fatal` in xen-hotplug-common.sh).
    Error(String),
    /// The device is in use elsewhere: `hotplug-status=busy` (`ebusy` in block-common.sh).
    Busy(String),
}

/// Replace line breaks (and other control characters) so a message stays on one line. A break
/// after punctuation becomes a space (`"domain,\nand so"` → `"domain, and so"`), any other
/// break `"; "`.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_sep = false;
    for c in s.trim().chars() {
        if c == '\n' || c == '\r' {
            pending_sep = true;
            continue;
        }
        if pending_sep {
            if c == ' ' || c == '\t' {
                continue; // indentation of the next line
            }
            out.truncate(out.trim_end().len());
            out.push_str(if out.ends_with([',', ';', ':', '.']) {
                " "
            } else {
                "; "
            });
            pending_sep = false;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

impl Failure {
    /// A fatal error with this message.
    pub fn error(msg: impl fmt::Display) -> Failure {
        Failure::Error(one_line(&msg.to_string()))
    }

    /// A busy failure with this message.
    pub fn busy(msg: impl fmt::Display) -> Failure {
        Failure::Busy(one_line(&msg.to_string()))
    }

    /// `"<what>: <err>"` as a fatal error, e.g. `Failure::io("cannot open /dev/loop7", e)`.
    pub fn io(what: impl fmt::Display, err: impl fmt::Display) -> Failure {
        Failure::error(format!("{what}: {err}"))
    }

    /// The one-line message.
    pub fn message(&self) -> String {
        match self {
            Failure::Error(m) | Failure::Busy(m) => one_line(m),
        }
    }

    /// The value written to `hotplug-status`: `error` or `busy`.
    pub fn status(&self) -> &'static str {
        match self {
            Failure::Error(_) => "error",
            Failure::Busy(_) => "busy",
        }
    }

    /// True for [`Failure::Busy`].
    pub fn is_busy(&self) -> bool {
        matches!(self, Failure::Busy(_))
    }

    /// Prefix the message with context: `"<what>: <message>"`, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Failure {
        match self {
            Failure::Error(m) => Failure::Error(format!("{what}: {m}")),
            Failure::Busy(m) => Failure::Busy(format!("{what}: {m}")),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Failure {}

/// A xenstore error as one line: `xenstore READ backend/vbd/1/768/params: EACCES`, or
/// `cannot talk to xenstored: <io error>` when the connection itself failed.
pub fn describe_xs_error(e: &XsError) -> String {
    match e {
        XsError::Io(io) => one_line(&format!("cannot talk to xenstored: {io}")),
        other => one_line(&other.to_string()),
    }
}

impl From<XsError> for Failure {
    fn from(e: XsError) -> Failure {
        Failure::Error(describe_xs_error(&e))
    }
}

/// Attach a message to any error: `.or_fail(|| format!("cannot open {p}"))` gives the fatal
/// failure `"cannot open <p>: <error>"`.
pub trait OrFail<T> {
    /// Map the error to [`Failure::Error`] with `what` as prefix.
    fn or_fail<S: fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T, Failure>;
}

impl<T, E: fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail<S: fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T, Failure> {
        self.map_err(|e| Failure::io(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_joins_sensibly() {
        assert_eq!(one_line("domain,\nand so"), "domain, and so");
        assert_eq!(one_line("first\nsecond\r\n\nthird"), "first; second; third");
        assert_eq!(one_line("  tab\there\n"), "tab here");
        assert_eq!(one_line("ends.\n  next"), "ends. next");
    }
}
