//! Structured logs: one JSON object per line on stderr (`{"level":…,"event":…,…fields}`), no
//! timestamps (journald or the caller adds them). Guest-supplied text is sanitised by the caller
//! before it becomes a field. Tests can capture the lines instead.

use std::io::Write;
use std::sync::{Arc, Mutex};

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
