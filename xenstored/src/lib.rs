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
//!
//! # Durability: none — the store is in memory only
//!
//! Nothing is written to disk. A daemon that is SIGKILLed, crashes or goes down with its host
//! loses every node and every committed transaction, whether or not it acknowledged them, and
//! its clients' pending requests fail (none hangs). Restarted, it replaces the dead daemon's
//! socket file and starts empty. That is what it is for: the simulator, the demo and the tests
//! build their worlds from scratch; a real Xen host runs Xen's own xenstored. (Checked by
//! `tests/xenstored.rs`: `sigkill_under_load_loses_the_in_memory_store_and_restarts_empty`.)

pub mod daemon;
pub mod engine;
pub mod memstore;
pub mod pmap;
pub mod testing;

pub use daemon::{serve, Options, Shutdown};
pub use engine::Engine;
pub use memstore::{MemStore, MemTransaction};
