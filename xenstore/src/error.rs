//! Errors of xenstore operations, with xenstored's errno names.

use std::fmt;
use std::io;

/// Result of a xenstore operation.
pub type Result<T> = std::result::Result<T, XsError>;

macro_rules! errnos {
    ($($name:ident => $libc:expr),* $(,)?) => {
        /// The error names xenstored sends in an `ERROR` reply (`xsd_errors` in xs_wire.h).
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Errno { $($name),* }

        impl Errno {
            /// Every errno xenstored knows, in xs_wire.h order.
            pub const ALL: &'static [Errno] = &[$(Errno::$name),*];

            /// The name sent on the wire, e.g. `"ENOENT"`.
            pub fn name(self) -> &'static str {
                match self { $(Errno::$name => stringify!($name)),* }
            }

            /// The matching Linux errno number.
            pub fn raw(self) -> i32 {
                match self { $(Errno::$name => $libc),* }
            }

            /// Parse a wire name.
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $(stringify!($name) => Some(Errno::$name),)* _ => None }
            }
        }
    };
}

errnos! {
    EINVAL => 22,
    EACCES => 13,
    EEXIST => 17,
    EISDIR => 21,
    ENOENT => 2,
    ENOMEM => 12,
    ENOSPC => 28,
    EIO => 5,
    ENOTEMPTY => 39,
    ENOSYS => 38,
    EROFS => 30,
    EBUSY => 16,
    EAGAIN => 11,
    EISCONN => 106,
    E2BIG => 7,
    EPERM => 1,
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed xenstore operation.
#[derive(Debug, thiserror::Error)]
pub enum XsError {
    /// xenstored answered with an error.
    #[error("xenstore {op} {path}: {errno}")]
    Daemon {
        /// The error xenstored named.
        errno: Errno,
        /// The operation, as named in the wire protocol (`READ`, `WRITE`, …).
        op: &'static str,
        /// The path operated on.
        path: String,
    },
    /// The connection failed (xenstored unreachable, closed the connection, …).
    #[error("xenstore connection: {0}")]
    Io(#[from] io::Error),
    /// xenstored sent something that is not valid protocol.
    #[error("xenstore protocol error: {0}")]
    Protocol(String),
}

impl XsError {
    /// The daemon's errno, when the daemon answered with an error.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            XsError::Daemon { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True when the error says the node (or its parent) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(Errno::ENOENT)
    }
}
