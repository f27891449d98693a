//! The dom0 peer of xenplug's Xen PV channels.
//!
//! A channel is a byte stream between a dom0 Unix socket (QEMU listens on it) and a guest tty
//! (`/dev/hvcN`). This crate speaks the QEMU guest agent protocol over it — through the shared
//! `xenplug-channel` crate — to `xenplug-agent` or to Debian's `qemu-ga`:
//!
//! * [`client`]: one-shot `send` / `query` against one socket;
//! * [`daemon`]: discovery of every channel from xenstore ([`discovery`]), one task per channel
//!   running the state machine ([`machine`], driven by [`session`]), configuration from the
//!   store directory ([`store`], [`doc`]) or from etcd ([`etcd`], with status written back by
//!   [`status`]), a default-deny policy for guest-originated requests
//!   ([`policy`]), the guests' own reports of their state ([`guest_state`]), status on a
//!   control socket.
//!
//! Test and benchmark code is not part of it: the simulated guest is the dev-only crate
//! `xenplug-simguest` (`dom0-peer/simguest/`), the benchmark is `examples/peer_bench.rs`.
//!
//! The handshake and reply matching are the shared `xenplug_channel::host::HostSession` (the
//! same code for `send`/`query` and the daemon). The guest is untrusted: see the bounds there
//! and in [`session`].

pub mod cli;
pub mod client;
pub mod daemon;
pub mod discovery;
pub mod doc;
pub mod etcd;
pub mod guest_state;
pub mod log;
pub mod machine;
pub mod policy;
pub mod session;
pub mod status;
pub mod store;
pub mod wire;
