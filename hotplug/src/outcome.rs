//! What a successful body returns: [`Outcome`], and the [`Device`] a block script publishes.
//!
//! The runtime ([`crate::run_with`], through [`crate::Context::finish`]) is the one place that
//! writes `hotplug-status`: a body never writes it. A block script that attached a device
//! returns [`Outcome::Published`] with the nodes describing it (`node`, `physical-device`,
//! `physical-device-path`); the runtime writes them and `hotplug-status=connected` in one
//! transaction, then releases the locks the device holds (blkback opens `physical-device`, so
//! it is written under the `block` lock that guarded the sharing check), or, when that write
//! fails, runs the device's undo (detach what was attached) before reporting the failure.

use std::fmt;

use crate::context::Context;
use crate::lock::LockGuard;

/// What a successful body asks the runtime to report.
pub enum Outcome<'a> {
    /// Write `hotplug-status=connected` (a vif's `online`: netback connects on it).
    Connected,
    /// Write the device's nodes and `hotplug-status=connected` in one transaction (a block
    /// script's `add`).
    Published(Device<'a>),
    /// Write nothing (remove, offline, "already done", no-op runs).
    Done,
}

impl fmt::Debug for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Connected => f.write_str("Connected"),
            Outcome::Published(d) => f.debug_tuple("Published").field(d).finish(),
            Outcome::Done => f.write_str("Done"),
        }
    }
}

/// Outcomes are equal when they write the same nodes (locks and undo are not compared).
impl PartialEq for Outcome<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Outcome::Connected, Outcome::Connected) | (Outcome::Done, Outcome::Done) => true,
            (Outcome::Published(a), Outcome::Published(b)) => a.nodes == b.nodes,
            _ => false,
        }
    }
}

/// The undo of a device whose publication failed.
type Undo<'a> = Box<dyn FnOnce(&Context<'_>) + 'a>;

/// The backend nodes that describe an attached device, in the order they are written, with the
/// locks to hold until they are written and what undoes the attachment if they cannot be.
#[derive(Default)]
pub struct Device<'a> {
    pub(crate) nodes: Vec<(String, String)>,
    pub(crate) held: Vec<LockGuard>,
    pub(crate) undo: Option<Undo<'a>>,
}

impl<'a> Device<'a> {
    /// A device with no nodes yet.
    pub fn new() -> Self {
        Device::default()
    }

    /// Add the node `key` (relative to `XENBUS_PATH`, or absolute) with `value`.
    pub fn node(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.nodes.push((key.to_string(), value.to_string()));
        self
    }

    /// Keep `lock` until the nodes are written (or the undo has run).
    pub fn hold(mut self, lock: LockGuard) -> Self {
        self.held.push(lock);
        self
    }

    /// Run `undo` if the nodes cannot be written (the locks are still held while it runs).
    pub fn undo_on_failure(mut self, undo: impl FnOnce(&Context<'_>) + 'a) -> Self {
        self.undo = Some(Box::new(undo));
        self
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[(String, String)] {
        &self.nodes
    }
}

impl fmt::Debug for Device<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("nodes", &self.nodes)
            .field("held", &self.held.len())
            .field("undo", &self.undo.is_some())
            .finish()
    }
}
