//! `xenplug`: the multi-call binary behind every xenplug program.
//!
//! Who calls it:
//! * libxl (also `xl devd` in driver domains, libvirt's `<script path=…>`), through the links
//!   `xenplug install` puts in `/etc/xen/scripts` (`block`, `vif-bridge`, …). The program is
//!   chosen by the basename of `argv[0]`; argv, environment (`XENBUS_PATH`, `vif`, …), the
//!   xenstore keys read and written and the exit codes are those of that script (see the
//!   `xenplug-block` and `xenplug-vif` crates). Exit 0 on success, 1 on failure with
//!   `hotplug-error`/`hotplug-status` written.
//! * Operators and tests, as `xenplug <command>`:
//!   - `xenplug install [--scripts-dir DIR] [--uninstall]`: put every script name in place as a
//!     link to this binary, backing up what it replaces; `--uninstall` restores the backups.
//!   - `xenplug xenstored --socket PATH`: the embedded xenstored, in the foreground.
//!   - `xenplug sim [CONFIG]`: play libxl for one domain against xenstore and run its hotplug
//!     scripts (see `xenplug-sim`); `xenplug demo`: the README's demonstration.
//!   - `xenplug run SCRIPT ARGS…`: run a script by name without a link.
//!   - `xenplug list`: the script names.
//!   - `xenplug doctor [--json]`: check the host (see `doctor`); exit 0 healthy, 1 a check
//!     failed, 3 warnings only.
//!
//!   Exit 0 on success, 1 on failure (one line on stderr), 2 on a usage error.

use std::process::ExitCode;

/// The static build's allocator (musl's own costs dozens of mmap/munmap calls per script run).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(script) = xenplug::scripts::lookup(&name) {
        return script(xenplug_hotplug::Raw::from_process());
    }
    xenplug::cli::main()
}
