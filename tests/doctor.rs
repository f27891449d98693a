//! `xenplug doctor` through the real binary: options, JSON, exit status, and a lock directory on
//! a read-only filesystem (a private mount namespace; needs root).

use std::fs;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_xenplug");

struct Dirs {
    t: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        let t = tempfile::tempdir().unwrap();
        for d in ["scripts", "locks", "state", "log"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let r = t.path().display();
        fs::write(
            t.path().join("xenplug.toml"),
            format!(
                "log_file = \"{r}/log/hotplug.log\"\nlock_dir = \"{r}/locks\"\n\
                 state_dir = \"{r}/state\"\nsyslog = false\n"
            ),
        )
        .unwrap();
        fs::write(t.path().join("xl.conf"), "run_hotplug_scripts=0\n").unwrap();
        Dirs { t }
    }

    fn p(&self, rel: &str) -> String {
        self.t.path().join(rel).display().to_string()
    }

    fn args(&self) -> Vec<String> {
        [
            "doctor",
            "--json",
            "--scripts-dir",
            &self.p("scripts"),
            "--config",
            &self.p("xenplug.toml"),
            "--xl-conf",
            &self.p("xl.conf"),
            "--peer-control",
            &self.p("control.sock"),
        ]
        .map(String::from)
        .to_vec()
    }
}

fn check<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {v:#}"))
}

#[test]
fn json_report_and_exit_status() {
    let d = Dirs::new();
    // Links to this binary for every name but one.
    let names = String::from_utf8(Command::new(BIN).arg("list").output().unwrap().stdout).unwrap();
    for n in names.lines().filter(|n| *n != "block-nbd") {
        std::os::unix::fs::symlink(BIN, d.t.path().join("scripts").join(n)).unwrap();
    }
    let out = Command::new(BIN)
        .args(d.args())
        .args(["--binary", BIN])
        .env("XENSTORED_PATH", d.p("no-xenstored"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "fail");
    assert_eq!(v["exit"], 1);
    let scripts = check(&v, "scripts");
    assert_eq!(scripts["status"], "fail", "{scripts:#}");
    assert_eq!(
        scripts["details"],
        serde_json::json!(["block-nbd: missing: libxl cannot run it"])
    );
    let xs = check(&v, "xenstored");
    assert_eq!(xs["status"], "fail");
    assert!(xs["details"][0].as_str().unwrap().contains("no-xenstored"));
    assert_eq!(check(&v, "xl-conf")["status"], "fail");
    assert_eq!(check(&v, "syslog")["status"], "skip");
    assert_eq!(check(&v, "lock-dir")["status"], "ok");
    assert_eq!(check(&v, "config")["status"], "ok");

    // Text output: one line per check and the summary line.
    let out = Command::new(BIN)
        .args(d.args().into_iter().filter(|a| a != "--json"))
        .env("XENSTORED_PATH", d.p("no-xenstored"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("FAIL  xenstored    no xenstored answers"),
        "{text}"
    );
    assert!(
        text.lines().last().unwrap().starts_with("xenplug doctor: "),
        "{text}"
    );

    // A bad option is a usage error.
    let out = Command::new(BIN)
        .args(["doctor", "--no-such"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn lock_directory_on_a_read_only_filesystem() {
    if !xenplug_testkit::require_root() || !xenplug_testkit::require_program("unshare") {
        return;
    }
    let d = Dirs::new();
    let locks = d.p("locks");
    let mut script = format!("mount --bind -o ro '{locks}' '{locks}' && exec '{BIN}'");
    for a in d.args() {
        script.push_str(&format!(" '{a}'"));
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("XENSTORED_PATH", d.p("no-xenstored"))
        .output()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let c = check(&v, "lock-dir");
    assert_eq!(c["status"], "fail", "{c:#}");
    assert!(
        c["summary"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{c:#}"
    );
    assert!(c["fix"].as_str().unwrap().contains("lock_dir"));
    // The namespace is gone with the process: the directory is writable again here.
    assert!(Path::new(&locks).is_dir());
    fs::write(Path::new(&locks).join("probe"), "").unwrap();
}
