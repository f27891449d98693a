//! `block-dummy add|remove`: Xen's test block script (`script=block-dummy`,
//! `target=dummy:<file>`), which attaches a regular file to a loop device without any sharing
//! check.
//!
//! # Who calls it
//!
//! libxl, for a disk configured with `script=block-dummy` (also reachable from `block` through
//! `type=dummy` for a `params` that is neither a device nor a file). argv `[block-dummy,
//! add|remove]`; environment as for `block` (`XENBUS_PATH` required).
//!
//! # add
//!
//! Reads `params` (`dummy:<file>`; empty or missing is the fatal `No information about the
//! target`; no `:`-separated file is `Cannot parse required parameters`; another prefix is
//! `Invalid type: <type>`) and `mode` (required, canonicalised). The file must be a regular file
//! (`<file> does not exist.`). Under the file's lock (`block`'s per-file lock, which the reference
//! does not take; it serialises against `block`'s sharing check of the same file) a loop device is attached race-free, read-only for
//! mode `r`, and `node`, `physical-device`, `physical-device-path`, `hotplug-status=connected` are
//! written in one transaction (by the runtime, from the device the body returns). A failed add leaves nothing behind.
//!
//! # remove
//!
//! Detaches the loop device recorded by add (state under the runtime's state directory), or,
//! without a record, `node` when it is still backed by the file and unused by other backends.
//! Idempotent.
//!
//! Exit 0 on success, 1 on failure (`hotplug-error`, `hotplug-status=error|busy`).

use crate::block::{self, Host};
use crate::loopdev::Backing;
use crate::sharing::Mode;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use xenplug_hotplug::{Action, Context, Failure, Outcome, Raw};

/// Parse `dummy:<file>`: the file (everything after the first `:`).
pub fn parse_target(params: &str) -> Result<PathBuf, Failure> {
    let (kind, file) = params.split_once(':').unwrap_or((params, ""));
    if kind.is_empty() || file.is_empty() {
        return Err(Failure::error("Cannot parse required parameters"));
    }
    if kind != "dummy" {
        return Err(Failure::error(format!("Invalid type: {kind}")));
    }
    Ok(PathBuf::from(file))
}

/// Entry point of `block-dummy` (see the module documentation).
pub fn main(raw: Raw) -> ExitCode {
    block::run_on_host("block-dummy", raw, body)
}

/// The script body.
pub fn body<'a>(ctx: &Context, host: &Host<'a>) -> Result<Outcome<'a>, Failure> {
    let mut remove_lock = None;
    if ctx.action() == Action::Remove {
        let lock = block::claim_remove_lock(ctx, || {
            Ok(ctx.read("params")?.and_then(|p| parse_target(&p).ok()))
        })?;
        match block::remove_recorded(ctx, host, lock)? {
            Ok(outcome) => return Ok(outcome),
            Err(lock) => remove_lock = Some(lock),
        }
    }
    let params = ctx
        .read("params")?
        .filter(|p| !p.is_empty())
        .ok_or_else(|| Failure::error("No information about the target"))?;
    let file = parse_target(&params)?;
    match ctx.action() {
        Action::Add => {
            let mode_raw = ctx.read_required("mode")?;
            let mode = Mode::parse_strict(&mode_raw)
                .ok_or_else(|| Failure::Error(block::invalid_mode(ctx, &mode_raw)))?;
            let meta = std::fs::metadata(&file)
                .ok()
                .filter(|m| m.is_file())
                .ok_or_else(|| Failure::Error(format!("{} does not exist.", file.display())))?;
            let backing = Backing::of(&meta);
            let lock = block::claim_file_lock(ctx, backing)?;
            let device = block::attach(ctx, host, &file, backing, mode)?;
            Ok(Outcome::Published(device.hold(lock)))
        }
        Action::Remove => {
            let Some(node) = ctx.read("node")?.filter(|n| !n.is_empty()) else {
                return Ok(Outcome::Done);
            };
            let outcome = block::remove_loop_node(ctx, host, &file, Path::new(&node));
            drop(remove_lock);
            outcome
        }
        other => Err(Failure::Error(format!("Invalid command: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("dummy:/img/a").unwrap(),
            PathBuf::from("/img/a")
        );
        assert_eq!(
            parse_target("dummy:/img/a:b").unwrap(),
            PathBuf::from("/img/a:b")
        );
        assert_eq!(
            parse_target("dummy:").unwrap_err().message(),
            "Cannot parse required parameters"
        );
        assert_eq!(
            parse_target("/img/a").unwrap_err().message(),
            "Cannot parse required parameters"
        );
        assert_eq!(
            parse_target("phy:/img/a").unwrap_err().message(),
            "Invalid type: phy"
        );
    }
}
