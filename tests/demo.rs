//! The README's demonstration (`xenplug demo`) runs to completion and shows each capability:
//! block and vif scripts through the simulator, the error contract, and the PV channel exchange
//! between xenplug-peer and xenplug-agent.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_xenplug");

#[test]
fn the_demo_shows_everything_and_leaves_nothing_behind() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let dir = Path::new(BIN).parent().unwrap();
    if !xenplug_testkit::require(
        dir.join("xenplug-agent").is_file() && dir.join("xenplug-peer").is_file(),
        "needs xenplug-agent and xenplug-peer built beside xenplug (cargo test --workspace)",
    ) {
        return;
    }
    let out = Command::new(BIN)
        .arg("demo")
        .env("XENPLUG_LOG_FILE", "")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "== demo is up",
        "blkback: opened 7:",
        "netback: hotplug-status=connected; state 4 (Connected)",
        "vif-route online type_if=vif",
        "vif-bridge add type_if=tap",
        "script: Could not find bridge device nosuchbr0",
        "channel exchange: configuration applied and read back",
        "== demo destroyed",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Everything happened in the demo's own namespaces and work directory.
    let work = text
        .lines()
        .find_map(|l| l.split("scripts linked in ").nth(1))
        .map(|s| Path::new(s).parent().unwrap().to_path_buf())
        .unwrap();
    assert!(!work.exists(), "{} left behind", work.display());
}
