//! `xenplug-agent --prepare-template` through the real binary on a private guest root: what a
//! template hands down to clones is gone, the rest untouched; `--dry-run` changes nothing.

use std::fs;
use std::path::Path;
use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_xenplug-agent");

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

#[test]
fn prepare_template_clears_what_clones_must_not_share() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    put(
        r,
        "var/lib/xenplug-agent/applied.json",
        r#"{"instance-id":"i-1","generation":3}"#,
    );
    put(r, "etc/machine-id", "5f3c1a2b9d8e4f60718293a4b5c6d7e8\n");
    for k in ["rsa", "ecdsa", "ed25519"] {
        put(r, &format!("etc/ssh/ssh_host_{k}_key"), "private");
        put(r, &format!("etc/ssh/ssh_host_{k}_key.pub"), "public");
    }
    put(r, "etc/ssh/sshd_config", "PermitRootLogin no\n");
    put(r, "var/lib/systemd/random-seed", "seed");
    put(
        r,
        "etc/systemd/network/10-xenplug-eth0.network",
        "[Match]\n",
    );
    put(r, "etc/hostname", "template\n");
    put(r, "root/.ssh/authorized_keys", "ssh-ed25519 AAAA admin\n");
    let root = r.to_str().unwrap();

    let dry = Command::new(AGENT)
        .args(["--prepare-template", "--dry-run", "--root", root])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{dry:?}");
    let out = String::from_utf8(dry.stdout).unwrap();
    assert_eq!(out.lines().count(), 10, "{out}");
    assert!(out.lines().all(|l| l.starts_with("would ")), "{out}");
    assert!(r.join("etc/ssh/ssh_host_ed25519_key").exists());

    let run = Command::new(AGENT)
        .args(["--prepare-template", "--root", root])
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let out = String::from_utf8(run.stdout).unwrap();
    assert!(out.contains("empty /etc/machine-id"), "{out}");
    assert!(
        out.contains("remove /var/lib/xenplug-agent/applied.json"),
        "{out}"
    );
    let err = String::from_utf8(run.stderr).unwrap();
    assert!(
        err.contains("event=template-prepared changes=10 failed=0"),
        "{err}"
    );
    assert_eq!(fs::read(r.join("etc/machine-id")).unwrap(), b"");
    assert!(!r.join("var/lib/xenplug-agent/applied.json").exists());
    assert!(fs::read_dir(r.join("etc/ssh")).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("ssh_host_")));
    assert!(!r.join("var/lib/systemd/random-seed").exists());
    assert!(!r
        .join("etc/systemd/network/10-xenplug-eth0.network")
        .exists());
    // Not what clones may share: kept.
    assert_eq!(
        fs::read_to_string(r.join("etc/hostname")).unwrap(),
        "template\n"
    );
    assert!(r.join("etc/ssh/sshd_config").exists());
    assert!(r.join("root/.ssh/authorized_keys").exists());

    // A second run has nothing left to do.
    let again = Command::new(AGENT)
        .args(["--prepare-template", "--root", root])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(again.stdout.is_empty(), "{again:?}");

    // --dry-run alone is a usage error.
    let bad = Command::new(AGENT).args(["--dry-run"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// Issue 13: an apply interrupted by a kill is not undone until the agent starts again; a
/// template prepared in between would have its changes overwritten by that recovery. Refused,
/// nothing changed.
#[test]
fn prepare_template_refuses_while_an_interrupted_apply_is_pending() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    put(
        r,
        "var/lib/xenplug-agent/applied.json",
        r#"{"instance-id":"i-1","generation":3}"#,
    );
    put(
        r,
        "var/lib/xenplug-agent/apply.journal",
        "{\"step\":\"begin\",\"instance-id\":\"i-1\",\"generation\":4,\"boot-id\":null,\
         \"previous\":null,\"previous-live\":[]}\n",
    );
    put(r, "etc/machine-id", "5f3c1a2b9d8e4f60718293a4b5c6d7e8\n");
    let run = Command::new(AGENT)
        .args(["--prepare-template", "--root", r.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("an interrupted configuration apply is pending"),
        "{err}"
    );
    assert!(r.join("var/lib/xenplug-agent/applied.json").exists());
    assert_eq!(
        fs::read_to_string(r.join("etc/machine-id")).unwrap(),
        "5f3c1a2b9d8e4f60718293a4b5c6d7e8\n"
    );
}
