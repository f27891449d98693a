//! `xenplug install --scripts-dir DIR [--uninstall]` through the real binary, and dispatch by
//! argv[0] through the links it makes.

use std::fs;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_xenplug");

fn xenplug(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run xenplug")
}

fn names() -> Vec<String> {
    let out = xenplug(&["list"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn lists_the_names_libxl_runs() {
    let names = names();
    for n in [
        "block",
        "block-iscsi",
        "block-nbd",
        "block-dummy",
        "vif-bridge",
        "vif-route",
        "vif-nat",
        "vif-openvswitch",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
}

#[test]
fn install_then_uninstall_restores_a_copy_of_debians_scripts() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("scripts");
    fs::create_dir(&dir).unwrap();
    // Stand-ins for the files a Debian host has there (exact content checked on restore).
    for n in ["block", "vif-bridge", "vif-common.sh", "locking.sh"] {
        fs::write(dir.join(n), format!("#!/bin/bash\n# original {n}\n")).unwrap();
    }
    let d = dir.to_str().unwrap();
    let out = xenplug(&["install", "--scripts-dir", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = fs::canonicalize(BIN).unwrap();
    for n in names() {
        assert_eq!(fs::read_link(dir.join(&n)).unwrap(), bin, "{n}");
    }
    // Helpers the scripts do not replace stay as they were.
    assert!(fs::read_to_string(dir.join("vif-common.sh"))
        .unwrap()
        .contains("original"));

    // Dispatch by argv[0]: the `block` link behaves as the block script (no XENBUS_PATH here:
    // a one-line error and exit 1, nothing else).
    let out = Command::new(dir.join("block"))
        .arg("add")
        .env_remove("XENBUS_PATH")
        .env("XENPLUG_LOG_FILE", t.path().join("log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("XENBUS_PATH"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = xenplug(&["install", "--scripts-dir", d, "--uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in ["block", "vif-bridge", "vif-common.sh", "locking.sh"] {
        assert_eq!(
            fs::read_to_string(dir.join(n)).unwrap(),
            format!("#!/bin/bash\n# original {n}\n")
        );
    }
    for n in names() {
        if !["block", "vif-bridge"].contains(&n.as_str()) {
            assert!(!dir.join(&n).exists(), "{n} left behind");
        }
    }
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 4, "{left:?}");
}

#[test]
fn usage_errors_exit_2() {
    let out = xenplug(&["install", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let out = xenplug(&["run", "no-such-script"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no script"));
}
