//! Structured event lines on stderr (`xenplug-agent: event=… key=value`), for the changes an
//! operator must be able to audit (keys, passwords, shutdown, exec, file access, freeze).
//!
//! While the agent holds filesystems frozen, nothing is written: the journal may live on a
//! frozen filesystem, and a logger that blocks on it would block the agent that must thaw it
//! (qemu-ga stops logging for the same reason). Lines are kept (at most [`HELD_MAX`]) and
//! written after the thaw.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Most lines kept while frozen; later ones are counted and dropped.
pub const HELD_MAX: usize = 256;

static FROZEN: AtomicBool = AtomicBool::new(false);
static HELD: Mutex<(Vec<String>, u64)> = Mutex::new((Vec::new(), 0));

/// Format one event line.
pub fn format_event(event: &str, fields: &[(&str, &str)]) -> String {
    let mut line = format!("xenplug-agent: event={event}");
    for (k, v) in fields {
        let v: String = v
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if v.contains(' ') || v.is_empty() {
            let _ = write!(line, " {k}=\"{}\"", v.replace('"', "'"));
        } else {
            let _ = write!(line, " {k}={v}");
        }
    }
    line
}

/// Log one event (held while frozen).
pub fn event(event: &str, fields: &[(&str, &str)]) {
    let line = format_event(event, fields);
    if FROZEN.load(Ordering::SeqCst) {
        let mut h = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if h.0.len() < HELD_MAX {
            h.0.push(line);
        } else {
            h.1 += 1;
        }
        return;
    }
    eprintln!("{line}");
}

/// Stop writing (filesystems are about to be frozen).
pub fn hold() {
    FROZEN.store(true, Ordering::SeqCst);
}

/// Write what was held and go back to writing at once.
pub fn release() {
    FROZEN.store(false, Ordering::SeqCst);
    let (lines, dropped) = {
        let mut h = HELD.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut h.0), std::mem::take(&mut h.1))
    };
    for l in lines {
        eprintln!("{l}");
    }
    if dropped > 0 {
        eprintln!(
            "{}",
            format_event("log-dropped", &[("lines", &dropped.to_string())])
        );
    }
}

/// True while lines are held.
pub fn holding() -> bool {
    FROZEN.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_quotes_and_filters() {
        assert_eq!(
            format_event("x", &[("a", "b c"), ("d", ""), ("e", "f\ng")]),
            "xenplug-agent: event=x a=\"b c\" d=\"\" e=f?g"
        );
    }
}
