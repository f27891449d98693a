//! Embedded xenstored: the xenstore wire-protocol daemon, and an in-memory store for tests,
//! both running the same [`engine::Engine`].
//!
//! * [`daemon`]: serve Unix sockets ([`daemon::serve`] blocks until a [`daemon::Shutdown`] is
//!   triggered; [`daemon::serve_until_signal`] stops on SIGINT/SIGTERM). Main-socket
//!   connections act as dom0; [`daemon::Options::domain_sockets`] add sockets acting as guests.
//! * [`MemStore`]: an in-memory [`xenplug_xenstore::XenStore`] with watches and transactions,
//!   for unit tests of hotplug logic.
//! * [`testing`]: a daemon on a throwaway socket for other crates' tests
//!   ([`testing::spawn_daemon`], [`testing::shared_daemon_env`]).

pub mod daemon;
pub mod engine;
pub mod memstore;
pub mod testing;

pub use daemon::{serve, Options, Shutdown};
pub use engine::Engine;
pub use memstore::{MemStore, MemTransaction};
