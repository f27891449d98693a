//! Xen PV channel, guest side.
//!
//! * `xenplug-agent` (see `src/bin/xenplug-agent.rs`): a QEMU-guest-agent-compatible agent on
//!   the channel tty that answers the QGA subset and applies first-boot configuration.
//! * `xen-channel-setup` (see `src/bin/xen-channel-setup.rs`): the udev helper naming channel
//!   ttys `/dev/xen-channel/<name>`.
//!
//! Modules follow gather → plan → apply: [`setup`] (udev helper logic), [`session`] (tty, framing,
//! re-open, inotify wait, guest-state events), [`agent`] (dispatch: existence, [`policy`],
//! arguments, then the command), [`cmd`] (the qemu-ga commands: exec, files, filesystems and
//! freeze, system information), [`publisher`] (guest state to xenstore and to subscribed
//! channels), [`apply`] (configuration application, with [`netapply`], [`render`],
//! [`accounts`], [`sysconf`], [`commands`], the all-or-nothing [`txn`] and the durable
//! [`journal`] that recovers an apply a kill interrupted), [`net`]
//! (rtnetlink), [`users`] (passwd/shadow/authorized_keys, under [`pwdlock`]), [`tools`] (the
//! guest's programs), [`fsutil`] (atomic writes), [`log`] (audit lines, held while frozen),
//! [`cli`] (the command lines), [`template`] (`--prepare-template`). The wire protocol itself
//! is the `xenplug-channel` crate.

pub mod accounts;
pub mod agent;
pub mod apply;
pub mod cli;
pub mod cmd;
pub mod commands;
pub mod fsutil;
pub mod journal;
pub mod log;
pub mod net;
pub mod netapply;
pub mod policy;
pub mod publisher;
pub mod pwdlock;
pub mod render;
pub mod session;
pub mod setup;
pub mod sysconf;
pub mod template;
pub mod tools;
pub mod txn;
pub mod users;

/// The channel name the agent serves when its configuration names none. The dom0 peer uses the
/// same default (`xenplug_channel::DEFAULT_CHANNEL_NAME`).
pub use xenplug_channel::DEFAULT_CHANNEL_NAME;
