//! The runtime shared by every xenplug hotplug script: what `xen-hotplug-common.sh`,
//! `xen-script-common.sh`, `logging.sh` and `locking.sh` do for Xen's shell scripts.
//!
//! # Shape of a script
//!
//! ```no_run
//! use std::process::ExitCode;
//! use xenplug_hotplug::{run, Action, Context, Device, Failure, Outcome, Raw};
//!
//! fn body(ctx: &Context) -> Result<Outcome<'static>, Failure> {
//!     match ctx.action() {
//!         Action::Add => {
//!             let params = ctx.read_required("params")?; // "xenstore-read <path> failed."
//!             let lock = ctx.claim_lock(xenplug_hotplug::lock::names::BLOCK)?;
//!             ctx.log.info(format!("attached {params}"));
//!             // run() writes physical-device and hotplug-status=connected in one
//!             // transaction, then releases the lock.
//!             Ok(Outcome::Published(Device::new().node("physical-device", "8:1").hold(lock)))
//!         }
//!         _ => Ok(Outcome::Done), // writes nothing
//!     }
//! }
//!
//! fn main() -> ExitCode {
//!     run("block", Raw::from_process(), Action::BLOCK, body)
//! }
//! ```
//!
//! # The pieces
//!
//! * [`Raw`] (argv + env) → [`Invocation::parse`] / [`Invocation::parse_for`]: `program`,
//!   [`Action`] (first argument without `=`), `vars` (every `key=value` argument),
//!   [`HotplugEnv`] (`script`, `XENBUS_TYPE`, `XENBUS_PATH`, `XENBUS_BASE_PATH`, `vif`, `netdev`,
//!   `INTERFACE`). [`Invocation::var`]: argument, else environment variable. Which actions a
//!   script accepts is the `accepted` slice it gives to [`run`] ([`Action::BLOCK`],
//!   [`Action::VIF`]); any other is `Invalid command: <word>`.
//! * [`Failure`] (`Error`/`Busy`, one-line message) and [`Outcome`] (`Connected`, `Published`
//!   with a [`Device`], `Done`): the body's result. `From<XsError>` and [`OrFail::or_fail`] turn
//!   other errors into one-line failures. A block script returns the nodes of the device it
//!   attached ([`Device`]: `node`, `physical-device`, `physical-device-path`, the locks to hold
//!   until they are written, the undo if they cannot be); the runtime writes them with
//!   `hotplug-status=connected` in one transaction. No script writes `hotplug-status`.
//! * [`run`] / [`run_with`] — the hotplug-status/hotplug-error contract, in one place (see
//!   [`run_with`] for the steps; [`Context::finish`] is its success half).
//!   On failure: `<XENBUS_PATH>/hotplug-error=<msg>` and `hotplug-status=error|busy` in one
//!   transaction, `err` logged, exit 1. A bad invocation or unreachable xenstored: one `err`
//!   line, exit 1, nothing written. Panics in the body become `internal error: …` failures.
//! * [`Context`] — `inv`, `xs`, `log`, `locks`, `config`, plus `backend()` (XENBUS_PATH),
//!   `backend_path()` (XENBUS_PATH taken apart once: [`BackendPath`] — kind, frontend domid,
//!   devid, frontend directory), `kind_dir()` (`$XENBUS_BASE_PATH/$XENBUS_TYPE`), `path()`,
//!   `read()`, `read_required()`, `read_default()`, `exists()`, `directory()`, `write()`,
//!   `write_all()` (one transaction), `rm()`, `claim_lock()`, `state_dir()`, `command()`,
//!   `run_checked()` (`do_or_die`, killed at the deadline), `deadline()`,
//!   `cleanup_deadline()`. A key starting with `/` is absolute; any other is relative to
//!   `XENBUS_PATH`.
//! * [`log::Log`] — stderr (plain), `/var/log/xen/xen-hotplug.log` (appended), syslog
//!   `daemon.<level>` tagged with the script name (non-blocking datagrams to `/dev/log`).
//! * [`lock::Locks`] — locking.sh-compatible named locks with a bounded wait
//!   ([`lock::names`] has Xen's names; [`lock::object_name`] makes finer-grained ones).
//! * [`config::Config`] — `/etc/xen/xenplug.toml` (or `$XENPLUG_CONFIG`) and `XENPLUG_*`
//!   overrides; every key is in `CONFIG.md`.
//! * [`hooks::run_hooks`] — `<scripts_dir>/<devtype>-<hook>.d/*.hook`.
//! * [`command::command`] / [`Context::command`] — children with `LANG=POSIX`, no `LC_*`, Xen's
//!   PATH first.
//!
//! # Where this differs from Xen's shell runtime, and why
//!
//! * **Lock waits are bounded** (`lock_timeout_secs`, default 25 s); locking.sh waits for ever
//!   and relies on libxl's 40 s SIGKILL, which leaves no `hotplug-error` behind.
//! * **One deadline per script** (`deadline_secs`, default 35 s from the start, below libxl's
//!   40 s): lock waits, children ([`command::output_until`]: helpers, `nbd-client`, `iscsiadm`,
//!   `modprobe`, `nft`, `ovs-vsctl`) and waits for the kernel end at [`Context::deadline`]
//!   (children are killed then), clean-up of a failed add at [`Context::cleanup_deadline`]; the
//!   shell scripts have no bound at all, and a child outlives libxl's SIGKILL of its script.
//! * **`hotplug-error` and `hotplug-status` are written in one transaction**; `fatal` writes them
//!   with one `xenstore-write` call, which is two separate requests.
//! * **`read_default` fails on errors other than "not found"** (`xenstore_read_default` turns any
//!   failure, even a lost connection, into the default).
//! * **Bad arguments are errors**: `=x`, a key that is not a shell identifier, a second bare word
//!   (bash ignores them or fails obscurely); unknown actions give `Invalid command: <word>` as
//!   the reference does, and nothing is written to xenstore.
//! * **Hooks are executed, not sourced**, and a failing hook is only logged unless
//!   `hooks_fatal = true` (see [`hooks`]).
//! * **stderr is not redirected to the log file**: our messages go to both (and to syslog), and
//!   children's stderr stays with libxl unless a script captures it ([`Context::run_checked`]
//!   logs it).
//! * Unexpected errors do not need an ERR trap: every failure is a value, and a panic becomes
//!   `internal error: …` (the reference's `"<script> failed; error detected."`).
//!
//! # Panics and `panic = "abort"`
//!
//! The body runs under `catch_unwind`, so script binaries must be built with the default
//! `panic = "unwind"` (the workspace's profiles are). Under `panic = "abort"` nothing can be
//! caught: the panic hook then prints one `<script>: error: internal error: …` line to stderr
//! and the process aborts, so no `hotplug-error` is written.

mod backend;
pub mod command;
pub mod config;
mod context;
mod failure;
pub mod hooks;
mod invocation;
pub mod lock;
pub mod log;
mod outcome;
pub mod procs;
pub mod runs;

pub use backend::BackendPath;
pub use command::command;
pub use config::Config;
pub use context::{run, run_with, BorrowedXs, Context};
pub use failure::{describe_xs_error, Failure, OrFail};
pub use hooks::{run_hooks, run_hooks_with};
pub use invocation::{Action, HotplugEnv, Invocation, Raw, ScriptMain};
pub use lock::{LockGuard, Locks};
pub use log::{Level, Log};
pub use outcome::{Device, Outcome};

use std::collections::BTreeMap;
use xenplug_xenstore::{XenStore, XsError};

/// The connection [`run`] uses: [`xenplug_xenstore::client::XsClient`]. When `env` has
/// `XENSTORED_PATH`, that socket (and only it) is used, and a failure names it; otherwise the
/// client's own search order applies (`/run/xenstored/socket`, then `/dev/xen/xenbus`).
pub fn default_connect(
    env: &BTreeMap<String, String>,
) -> Result<Box<dyn XenStore + 'static>, XsError> {
    use xenplug_xenstore::client::{XsClient, XENSTORED_PATH_ENV};
    match env.get(XENSTORED_PATH_ENV).filter(|p| !p.is_empty()) {
        Some(path) => match XsClient::open_socket(path) {
            Ok(c) => Ok(Box::new(c)),
            Err(XsError::Io(e)) => Err(XsError::Io(std::io::Error::new(
                e.kind(),
                format!("{path} ({XENSTORED_PATH_ENV}): {e}"),
            ))),
            Err(e) => Err(e),
        },
        None => Ok(Box::new(XsClient::open()?)),
    }
}
