//! A minimal block-style hotplug script built on xenplug-hotplug: the crate's integration tests
//! run it as a separate process, and it shows how a script uses the runtime. It is not installed
//! as a Xen script.
//!
//! Called as `xenplug-hotplug-demo add|remove [key=value…]` with libxl's environment (`XENBUS_PATH`, …).
//! `add` reads `<XENBUS_PATH>/params` (required), takes the `block` lock, writes
//! `physical-device=<params>`, runs the `block-post.d` hooks and reports `connected`.
//! The argument `fail=busy` makes `add` fail as busy, `fail=error` as an error, `fail=panic`
//! panics (the runtime must turn that into an `internal error` failure). `remove` does nothing.
//! Exit status: 0 on success, 1 on any failure.

use std::process::ExitCode;

use xenplug_hotplug::{run, run_hooks, Action, Context, Failure, Outcome, Raw};

fn body(ctx: &Context) -> Result<Outcome<'static>, Failure> {
    match ctx.action() {
        Action::Add => {
            let params = ctx.read_required("params")?;
            match ctx.var("fail") {
                Some("busy") => return Err(Failure::busy(format!("{params} is in use"))),
                Some("error") => return Err(Failure::error(format!("cannot attach {params}"))),
                Some("panic") => {
                    let v: Vec<&str> = params.split(',').collect();
                    // Deliberately out of range: the runtime must catch this.
                    let _ = v[v.len() + 1];
                }
                _ => {}
            }
            let lock = ctx.claim_lock("block")?;
            ctx.write("physical-device", &params)?;
            lock.release()?;
            run_hooks(ctx, "block", "post")?;
            ctx.log.info(format!("attached {params}"));
            Ok(Outcome::Connected)
        }
        _ => Ok(Outcome::Done),
    }
}

fn main() -> ExitCode {
    run(
        "xenplug-hotplug-demo",
        Raw::from_process(),
        Action::BLOCK,
        body,
    )
}
