//! Benchmark aid for `tools/bench-startup.sh`: a binary holding only the network scripts, to
//! compare the start-up cost of separate binaries against the multi-call `xenplug`.
//! Dispatches on argv[0] like `xenplug` does.
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = argv0.rsplit('/').next().unwrap_or_default().to_string();
    match xenplug_vif::SCRIPTS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => f(xenplug_hotplug::Raw::from_process()),
        None => {
            eprintln!("single_script: no script {name}");
            ExitCode::FAILURE
        }
    }
}
