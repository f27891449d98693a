//! Running the storage tools that are the interface to their subsystems (`iscsiadm`,
//! `nbd-client`, `multipath`) with a bound on their run time.
//!
//! libxl SIGKILLs a hotplug script after 40 s, and only the script: a child stuck on an
//! unreachable portal or server would outlive it and the failure would reach the user as a bare
//! timeout. So every tool run here gets a deadline (the script's, [`Context::deadline`], or a
//! clean-up step's); past it the child is killed and the failure names the tool.

use std::io;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Instant;
use xenplug_hotplug::command::output_until;
use xenplug_hotplug::{Context, Failure};

/// What a tool run produced.
#[derive(Debug)]
pub struct ToolOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ToolOutput {
    /// stdout followed by stderr (what `2>&1` gives the reference's `grep`).
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run `program args…` with the hotplug environment ([`Context::command`]) until `deadline`
/// ([`xenplug_hotplug::command::output_until`]). A program that cannot be found is the failure
/// `missing`; one still running at the deadline is killed.
pub fn run_until(
    ctx: &Context,
    program: &Path,
    args: &[&str],
    deadline: Instant,
    missing: &str,
) -> Result<ToolOutput, Failure> {
    let shown = format!("{} {}", program.display(), args.join(" "));
    ctx.log.debug(format!("running {shown}"));
    let mut cmd: Command = ctx.command(program);
    cmd.args(args);
    let out = match output_until(&mut cmd, None, deadline) {
        Ok(Some(out)) => out,
        Ok(None) => {
            return Err(Failure::error(format!(
                "{shown} did not finish in time and was killed"
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Failure::error(missing)),
        Err(e) => return Err(Failure::error(format!("cannot run {shown}: {e}"))),
    };
    let o = ToolOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for line in o.stderr.lines().filter(|l| !l.trim().is_empty()) {
        ctx.log.debug(format!("{}: {line}", program.display()));
    }
    Ok(o)
}

/// [`run_until`], failing unless the tool exits 0: `<program args…> failed (<status>): <last
/// stderr line>`.
pub fn run_checked_until(
    ctx: &Context,
    program: &Path,
    args: &[&str],
    deadline: Instant,
    missing: &str,
) -> Result<ToolOutput, Failure> {
    let o = run_until(ctx, program, args, deadline, missing)?;
    if o.status.success() {
        return Ok(o);
    }
    let last = o
        .stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .or_else(|| o.stdout.lines().rev().find(|l| !l.trim().is_empty()))
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default();
    Err(Failure::error(format!(
        "{} {} failed ({}){last}",
        program.display(),
        args.join(" "),
        o.status
    )))
}
