//! xenplug's block hotplug scripts: native replacements for Xen's `block`, `block-dummy`,
//! `block-nbd` and `block-iscsi` (`/etc/xen/scripts`).
//!
//! The multi-call `xenplug` binary (`xenplug/`) dispatches on `argv[0]` through [`SCRIPTS`]; each
//! entry's module documents who calls it, argv/env, the xenstore keys read and written, and the
//! exit codes.
//!
//! Layers, lowest first:
//! * [`devnum`] — `major:minor` in the kernel's, userspace's and xenstore's forms;
//! * [`loopdev`] — race-free loop devices through the kernel API;
//! * [`sharing`] — the sharing check as a pure planner over gathered facts, and the exact busy
//!   messages; [`gather`] — gathering those facts from sysfs, `/proc` and xenstore;
//! * [`state`] — what `add` records for `remove` under the state directory;
//! * the scripts: [`block`], [`dummy`], [`nbd`], [`iscsi`]; [`tools`] runs their external
//!   tools with a deadline.
//!
//! Deliberate differences from the reference scripts are listed in `DIFFERENCES.md`.

pub mod block;
pub mod devnum;
pub mod dummy;
pub mod gather;
pub mod iscsi;
pub mod loopdev;
pub mod nbd;
pub mod sharing;
pub mod state;
pub mod tools;

use xenplug_hotplug::ScriptMain;

/// The scripts of this crate by name, for dispatch on `argv[0]`.
pub const SCRIPTS: &[(&str, ScriptMain)] = &[
    ("block", block::main),
    ("block-dummy", dummy::main),
    ("block-nbd", nbd::main),
    ("block-iscsi", iscsi::main),
];
