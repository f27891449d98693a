//! The toolstack simulator end to end: `xenplug sim` plays libxl against the embedded xenstored
//! in a private network namespace, running xenplug's own scripts (installed with
//! `xenplug install`) or Debian's reference scripts, on real loop devices and real links.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_xenplug");

struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Option<Rig> {
        if !xenplug_testkit::require_root() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let scripts = dir.path().join("scripts");
        let out = Command::new(BIN)
            .args(["install", "--scripts-dir", scripts.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Rig { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn image(&self, name: &str, mib: u64) -> PathBuf {
        let p = self.path(name);
        fs::File::create(&p).unwrap().set_len(mib << 20).unwrap();
        p
    }

    /// Run the simulator on `config` with `scripts`; returns (exit code, stdout, report).
    fn sim(&self, config: &str, scripts: &Path, extra: &[&str]) -> (i32, String, Value) {
        let cfg = self.path("domain.cfg");
        fs::write(&cfg, config).unwrap();
        let report = self.path("report.json");
        let _ = fs::remove_file(&report);
        let out = Command::new(BIN)
            .args(["sim", cfg.to_str().unwrap(), "--scripts-dir"])
            .arg(scripts)
            .args(["--report", report.to_str().unwrap()])
            .args(extra)
            .env("XENPLUG_LOG_FILE", self.path("hotplug.log"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let text = fs::read_to_string(&report).unwrap_or_else(|_| {
            panic!(
                "no report; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (
            out.status.code().unwrap_or(-1),
            stdout,
            serde_json::from_str(&text).unwrap(),
        )
    }
}

/// Loop devices whose backing file is `image` (after a run, there must be none).
fn loops_backed_by(image: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/sys/block").unwrap() {
        let e = e.unwrap();
        let bf = e.path().join("loop/backing_file");
        if let Ok(b) = fs::read_to_string(&bf) {
            let b = b.trim().trim_end_matches(" (deleted)");
            if Path::new(b) == image {
                found.push(e.file_name().into_string().unwrap());
            }
        }
    }
    found
}

fn events(report: &Value) -> Vec<(String, Vec<String>, i64)> {
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["device"].as_str().unwrap().to_string(),
                e["exec"]["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
                e["exec"]["exit"]["code"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn env_of(report: &Value, i: usize) -> Vec<(String, String)> {
    report["events"][i]["exec"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv[0].as_str().unwrap().to_string(),
                kv[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_domain_with_a_file_disk_and_a_bridged_vif_through_our_scripts() {
    let Some(rig) = Rig::new() else { return };
    let img = rig.image("disk.img", 16);
    let config = format!(
        "name='t1'\ndisk=['format=raw,vdev=xvda,access=rw,target={}']\nvif=['bridge=xenbr0,mac=00:16:3e:00:00:07']\n",
        img.display()
    );
    let scripts = rig.path("scripts");
    let (code, stdout, report) = rig.sim(&config, &scripts, &["--domid", "3"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(report["created"], true);

    // libxl's argv and environment, exactly.
    let ev = events(&report);
    let block = scripts.join("block").display().to_string();
    let vifb = scripts.join("vif-bridge").display().to_string();
    assert_eq!(
        ev,
        vec![
            ("vbd/51712".into(), vec![block.clone(), "add".into()], 0),
            (
                "vif/0".into(),
                vec![vifb.clone(), "online".into(), "type_if=vif".into()],
                0
            ),
            (
                "vif/0".into(),
                vec![vifb.clone(), "offline".into(), "type_if=vif".into()],
                0
            ),
            ("vbd/51712".into(), vec![block.clone(), "remove".into()], 0),
        ]
    );
    assert_eq!(
        env_of(&report, 0),
        vec![
            ("script".into(), block),
            ("XENBUS_TYPE".into(), "vbd".into()),
            ("XENBUS_PATH".into(), "backend/vbd/3/51712".into()),
            ("XENBUS_BASE_PATH".into(), "backend".into()),
        ]
    );
    assert_eq!(
        env_of(&report, 1)[4..],
        [
            ("netdev".to_string(), String::new()),
            ("vif".to_string(), "vif3.0".to_string())
        ]
    );

    // What the kernel backends need was written, and both connected.
    let xs = &report["xenstore_after_create"];
    let be = "/local/domain/0/backend/vbd/3/51712";
    let pd = xs[format!("{be}/physical-device")].as_str().unwrap();
    assert!(pd.starts_with("7:"), "{pd}");
    let node = xs[format!("{be}/physical-device-path")].as_str().unwrap();
    assert!(node.starts_with("/dev/loop"), "{node}");
    assert_eq!(xs[format!("{be}/hotplug-status")], "connected");
    assert_eq!(report["backend_states"]["vbd/51712"], "4");
    let vbe = "/local/domain/0/backend/vif/3/0";
    assert_eq!(xs[format!("{vbe}/hotplug-status")], "connected");
    assert_eq!(report["backend_states"]["vif/0"], "4");

    // The vif was plumbed into the bridge while the domain was up.
    let links = report["links_after_create"].as_array().unwrap();
    let vif = links.iter().find(|l| l["ifname"] == "vif3.0").unwrap();
    assert_eq!(vif["master"], "xenbr0");
    assert_eq!(vif["address"], "fe:ff:ff:ff:ff:ff");
    assert!(vif["flags"].as_array().unwrap().iter().any(|f| f == "UP"));

    // Nothing left after destroy: xenstore, loop device.
    assert_eq!(report["xenstore_after_destroy"], serde_json::json!({}));
    assert!(loops_backed_by(&img).is_empty(), "loop device leaked");
}

#[test]
fn our_scripts_write_what_debians_reference_scripts_write() {
    let Some(rig) = Rig::new() else { return };
    let reference = Path::new("/etc/xen/scripts");
    if !xenplug_testkit::require(
        reference.join("block").exists() && xenplug_testkit::which("xenstore-read").is_some(),
        "needs Debian's xen-utils-common and xenstore-utils",
    ) {
        return;
    }
    let img = rig.image("disk.img", 16);
    let config = format!(
        "name='diff'\ndisk=['format=raw,vdev=xvda,access=rw,target={}', 'format=raw,vdev=xvdb,access=ro,target={}']\nvif=['bridge=xenbr0,mac=00:16:3e:00:00:08,mtu=1400']\n",
        img.display(),
        rig.image("ro.img", 8).display()
    );
    let (code_ref, out_ref, rep_ref) = rig.sim(&config, reference, &["--domid", "4"]);
    assert_eq!(code_ref, 0, "reference run failed:\n{out_ref}");
    let (code, out, rep) = rig.sim(&config, &rig.path("scripts"), &["--domid", "4"]);
    assert_eq!(code, 0, "{out}");
    // Compare every node under the domain's backends and frontends, with loop numbers
    // normalised (each run attaches fresh loop devices).
    let norm = |v: &Value| -> Vec<(String, String)> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().unwrap();
                let v = if k.ends_with("/physical-device") {
                    v.split(':').next().unwrap().to_string() + ":N"
                } else if v.starts_with("/dev/loop") {
                    "/dev/loopN".to_string()
                } else if k.ends_with("/script") {
                    Path::new(v)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                } else {
                    v.to_string()
                };
                (k.clone(), v)
            })
            .collect()
    };
    assert_eq!(
        norm(&rep["xenstore_after_create"]),
        norm(&rep_ref["xenstore_after_create"]),
        "\nours:\n{out}\nreference:\n{out_ref}"
    );
    assert_eq!(
        rep["xenstore_after_destroy"],
        rep_ref["xenstore_after_destroy"]
    );
    assert!(loops_backed_by(&img).is_empty(), "loop device leaked");
}

#[test]
fn a_failing_script_is_reported_as_libxl_does_and_the_domain_torn_down() {
    let Some(rig) = Rig::new() else { return };
    let img = rig.image("disk.img", 8);
    let config = format!(
        "name='broken'\ndisk=['format=raw,vdev=xvda,access=rw,target={}']\nvif=['bridge=nosuchbr0']\n",
        img.display()
    );
    let (code, stdout, report) = rig.sim(&config, &rig.path("scripts"), &["--no-bridges"]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(report["created"], false);
    let err = report["create_error"].as_str().unwrap();
    assert_eq!(err, "vif/0: script: Could not find bridge device nosuchbr0");
    assert!(stdout
        .contains("device_hotplug_child_death_cb: script: Could not find bridge device nosuchbr0"));
    // libxl destroys the domain: remove scripts for both devices, the failed one included.
    let ev = events(&report);
    let tail: Vec<_> = ev
        .iter()
        .skip(2)
        .map(|(d, a, _)| (d.as_str(), a[1].as_str()))
        .collect();
    assert_eq!(tail, vec![("vif/0", "offline"), ("vbd/51712", "remove")]);
    assert_eq!(report["xenstore_after_destroy"], serde_json::json!({}));
    assert!(loops_backed_by(&img).is_empty(), "loop device leaked");
}

#[test]
fn a_hung_script_is_killed_at_the_timeout() {
    let Some(rig) = Rig::new() else { return };
    let dir = rig.path("slow");
    fs::create_dir(&dir).unwrap();
    let script = dir.join("block-slow");
    fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = add ] && exec sleep 60\nexit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let config = "name='slow'\ndisk=['vdev=xvda,script=block-slow,target=whatever']\n";
    let start = std::time::Instant::now();
    let (code, stdout, report) = rig.sim(config, &dir, &["--timeout", "1"]);
    assert!(start.elapsed().as_secs() < 20);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(report["events"][0]["exec"]["timed_out"], true);
    assert_eq!(report["events"][0]["exec"]["exit"]["signal"], 9);
    assert!(stdout.contains("killing execution of"));
    assert_eq!(report["events"][1]["exec"]["argv"][1], "remove");
}

/// What a directory holds, recursively (names, relative to it), or `None` if it does not exist.
fn snapshot(dir: &Path) -> Option<Vec<String>> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &p, out);
            }
        }
    }
    if !dir.exists() {
        return None;
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    Some(out)
}

#[test]
fn the_hosts_hotplug_directory_is_never_touched() {
    // The machine running the simulator may be a real dom0: its /run/xen-hotplug (locks and
    // xenplug's block state) must be neither used nor created. Scripts inside the simulator see
    // a private one: empty by default, or the directory given with --hotplug-dir.
    let Some(rig) = Rig::new() else { return };
    let host = Path::new("/run/xen-hotplug");
    let before = snapshot(host);
    let img = rig.image("disk.img", 16);
    let config = format!(
        "name='t5'\ndisk=['format=raw,vdev=xvda,access=rw,target={}']\n",
        img.display()
    );
    // A `block` that leaves a mark in the /run/xen-hotplug it sees, then is ours.
    let scripts = rig.path("scripts");
    let ours = fs::read_link(scripts.join("block")).unwrap();
    fs::remove_file(scripts.join("block")).unwrap();
    fs::write(
        scripts.join("block"),
        format!(
            "#!/bin/bash\ntouch /run/xen-hotplug/seen-$1\nexec -a \"$0\" {} \"$@\"\n",
            ours.display()
        ),
    )
    .unwrap();
    fs::set_permissions(
        scripts.join("block"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    // Private by default.
    let (code, stdout, _) = rig.sim(&config, &scripts, &["--domid", "5"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        snapshot(host),
        before,
        "the simulator changed the host's {}",
        host.display()
    );

    // --hotplug-dir: the scripts' locks and state go there (and the host's is still untouched).
    let mine = rig.path("hotplug");
    fs::create_dir(&mine).unwrap();
    let (code, stdout, _) = rig.sim(
        &config,
        &scripts,
        &["--domid", "6", "--hotplug-dir", mine.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stdout}");
    let seen = snapshot(&mine).unwrap();
    for want in ["seen-add", "seen-remove", "xenplug-block"] {
        assert!(seen.iter().any(|s| s == want), "{want} not in {seen:?}");
    }
    assert_eq!(
        snapshot(host),
        before,
        "the simulator changed the host's {}",
        host.display()
    );
    assert!(loops_backed_by(&img).is_empty(), "loop device leaked");
}
