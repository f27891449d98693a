//! The `xenplug` library: everything behind the multi-call binary (`src/main.rs`), as a library so
//! that the packaging tools can render the command line's man pages and completions from the
//! same clap definitions ([`cli::command`]).
//!
//! * [`scripts`]: the hotplug programs by name (dispatch on `argv[0]`);
//! * [`cli`]: `xenplug <command>` (install, doctor, xenstored, sim, demo, run, list);
//! * [`doctor`]: `xenplug doctor`, the host checks;
//! * [`install`]: `xenplug install`, links without a package manager.

pub mod cli;
mod demo_channel;
pub mod doctor;
pub mod install;
pub mod scripts;
