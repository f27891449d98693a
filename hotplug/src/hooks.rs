//! User hooks: `<scripts_dir>/<devtype>-<hook>.d/*.hook` (`call_hooks` in xen-hotplug-common.sh).
//!
//! The reference **sources** each executable hook into the running bash script, so a hook sees
//! every shell variable and, under the script's `set -e` / `trap sigerr ERR`, a failing command
//! in a hook makes the whole script fail. A native program cannot source bash, so each hook is
//! **executed** instead (it needs a `#!` line), in sorted file-name order, with:
//! * the script's environment, normalised as [`crate::command::command_in`] does;
//! * every `key=value` argument exported (`type_if`, `bridge`, …), plus `command=<action>`;
//! * whatever extra variables the caller passes to [`run_hooks_with`] (e.g. `dev`, `bridge`).
//!
//! A hook that fails (non-zero exit, cannot start, or runs longer than `hook_timeout_secs`, after
//! which it is killed with its whole process group: each hook runs in a group of its own) is
//! logged as a warning and the next hook runs; with `hooks_fatal = true` the first failure fails
//! the script instead, as in the reference. `key=value` arguments never carry a
//! [reserved](crate::invocation::reserved_name) name (`PATH`, `LD_*`, …), so they cannot
//! override the cleaned environment.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::context::Context;
use crate::failure::Failure;

/// The hooks that would run, sorted: regular files ending in `.hook` with an execute bit.
pub fn list_hooks(ctx: &Context<'_>, devtype: &str, hook: &str) -> Vec<PathBuf> {
    let dir = ctx.config.scripts_dir.join(format!("{devtype}-{hook}.d"));
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hook"))
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .collect();
    v.sort();
    v
}

/// Run the `<devtype>-<hook>.d` hooks (see the module docs).
pub fn run_hooks(ctx: &Context<'_>, devtype: &str, hook: &str) -> Result<(), Failure> {
    run_hooks_with(ctx, devtype, hook, &[])
}

/// [`run_hooks`] with extra variables exported to the hooks.
pub fn run_hooks_with(
    ctx: &Context<'_>,
    devtype: &str,
    hook: &str,
    extra: &[(&str, &str)],
) -> Result<(), Failure> {
    for path in list_hooks(ctx, devtype, hook) {
        ctx.log.debug(format!("running hook {}", path.display()));
        match run_one(ctx, &path, extra) {
            Ok(()) => {}
            Err(msg) if ctx.config.hooks_fatal => return Err(Failure::error(msg)),
            Err(msg) => ctx.log.warning(format!("{msg} (ignored)")),
        }
    }
    Ok(())
}

fn run_one(
    ctx: &Context<'_>,
    path: &std::path::Path,
    extra: &[(&str, &str)],
) -> Result<(), String> {
    let mut cmd = ctx.command(path);
    // Reserved names never reach a hook from the arguments (parsing refuses them; an
    // invocation built by hand is filtered here too).
    cmd.envs(
        ctx.inv
            .vars
            .iter()
            .filter(|(k, _)| !crate::invocation::reserved_name(k)),
    );
    cmd.env("command", ctx.inv.action.as_str());
    cmd.envs(extra.iter().copied());
    // Its own process group, so that a timeout kills whatever the hook started too.
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("hook {} could not be started: {e}", path.display()))?;
    let timeout = ctx.config.hook_timeout;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("hook {} failed ({st})", path.display())),
            Ok(None) if Instant::now() >= deadline => {
                // The whole group: the hook and every process it started that did not leave it.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "hook {} timed out after {:.1} s and was killed",
                    path.display(),
                    timeout.as_secs_f64()
                ));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("hook {}: {e}", path.display())),
        }
    }
}
