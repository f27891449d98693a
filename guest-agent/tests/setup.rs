//! `xen-channel-setup` end to end: the real binary, an injected sysfs tree, a temporary /dev, and
//! the embedded xenstored acting as guest domain 5 (relative keys resolve under
//! /local/domain/5, as from a real guest over /dev/xen/xenbus).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use xenplug_xenstore::{Access, Perm, XsOps};

const DOMID: u32 = 5;

struct Rig {
    _tmp: tempfile::TempDir,
    sys: std::path::PathBuf,
    dev: std::path::PathBuf,
    xsd: xenplug_xenstored::testing::TestDaemon,
}

fn rig() -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("sys");
    let dev = tmp.path().join("dev");
    fs::create_dir_all(&dev).unwrap();
    for n in 0..8 {
        fs::write(dev.join(format!("hvc{n}")), "").unwrap();
    }
    let xsd = xenplug_xenstored::testing::spawn_daemon_with_domains(&[DOMID]);
    Rig {
        _tmp: tmp,
        sys,
        dev,
        xsd,
    }
}

impl Rig {
    fn console(&self, n: u32, nodename: &str, name: Option<&str>) {
        let d = self.sys.join(format!("devices/console-{n}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("nodename"), format!("{nodename}\n")).unwrap();
        fs::write(d.join("devtype"), "console\n").unwrap();
        let store = self.xsd.store();
        let base = format!("/local/domain/{DOMID}/device/console/{n}");
        store.write(&format!("{base}/type"), "ioemu").unwrap();
        if let Some(name) = name {
            store.write(&format!("{base}/name"), name).unwrap();
        }
        // As libxl: the frontend directory belongs to the guest; `name` and `type` are in the
        // read-only part (owned by the backend, dom0, readable by the guest).
        let own = |d| Perm {
            domid: d,
            access: Access::None,
        };
        let read = |d| Perm {
            domid: d,
            access: Access::Read,
        };
        store.set_perms(&base, &[own(DOMID), read(0)]).unwrap();
        store
            .set_perms(&format!("{base}/type"), &[own(0), read(DOMID)])
            .unwrap();
        if name.is_some() {
            store
                .set_perms(&format!("{base}/name"), &[own(0), read(DOMID)])
                .unwrap();
        }
    }

    fn run(&self, action: &str, devpath: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_xen-channel-setup"))
            .env_clear()
            .env("ACTION", action)
            .env("DEVPATH", devpath)
            .env("XENSTORED_PATH", self.xsd.domain_socket(DOMID).unwrap())
            .arg("--sysfs")
            .arg(&self.sys)
            .arg("--dev")
            .arg(&self.dev)
            .output()
            .unwrap()
    }
}

fn link(p: &Path) -> Option<String> {
    fs::read_link(p)
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

#[test]
fn add_then_remove_creates_and_removes_the_link() {
    let r = rig();
    r.console(1, "device/console/1", Some("org.xenplug.agent.0"));
    let out = r.run("add", "/devices/console-1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("XEN_CHANNEL_NAME=org.xenplug.agent.0\n"),
        "{stdout}"
    );
    assert!(stdout.contains("XEN_CHANNEL_TARGET=../hvc1\n"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("-> ../hvc1"));
    let l = r.dev.join("xen-channel/org.xenplug.agent.0");
    assert_eq!(link(&l).as_deref(), Some("../hvc1"));
    // The link resolves to the tty node.
    assert_eq!(
        fs::canonicalize(&l).unwrap(),
        fs::canonicalize(r.dev.join("hvc1")).unwrap()
    );
    // bind after add (the probe order): idempotent, no temporary files left.
    let out = r.run("bind", "/devices/console-1");
    assert!(out.status.success(), "{out:?}");
    let names: Vec<_> = fs::read_dir(r.dev.join("xen-channel"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["org.xenplug.agent.0".to_string()]);
    // remove works without xenstore (the key may be gone already).
    r.xsd
        .store()
        .rm(&format!("/local/domain/{DOMID}/device/console/1"))
        .unwrap();
    let out = r.run("remove", "/devices/console-1");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("XEN_CHANNEL_REMOVED="));
    assert!(link(&l).is_none());
}

#[test]
fn two_channels_and_a_renamed_one() {
    let r = rig();
    r.console(1, "device/console/1", Some("org.example.a"));
    r.console(2, "device/console/2", Some("org.example.b"));
    assert!(r.run("add", "/devices/console-1").status.success());
    assert!(r.run("add", "/devices/console-2").status.success());
    assert_eq!(
        link(&r.dev.join("xen-channel/org.example.a")).as_deref(),
        Some("../hvc1")
    );
    assert_eq!(
        link(&r.dev.join("xen-channel/org.example.b")).as_deref(),
        Some("../hvc2")
    );
    // Removing console-2 leaves console-1's link alone.
    assert!(r.run("remove", "/devices/console-2").status.success());
    assert!(link(&r.dev.join("xen-channel/org.example.b")).is_none());
    assert_eq!(
        link(&r.dev.join("xen-channel/org.example.a")).as_deref(),
        Some("../hvc1")
    );
}

#[test]
fn hostile_or_missing_names_are_refused() {
    let r = rig();
    for (i, bad) in [
        "../../etc/passwd",
        "a/b",
        ".hidden",
        "x\u{1b}[2J",
        "two words",
        "..",
    ]
    .iter()
    .enumerate()
    {
        let n = (i % 9 + 1) as u32;
        r.console(n, &format!("device/console/{n}"), Some(bad));
        let out = r.run("add", &format!("/devices/console-{n}"));
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("channel name"),
            "{out:?}"
        );
    }
    assert!(!r.dev.join("etc").exists());
    let entries = fs::read_dir(r.dev.join("xen-channel"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(entries, 0);
    // No name key: not a named channel.
    r.console(7, "device/console/7", None);
    let out = r.run("add", "/devices/console-7");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    // sysfs nodename that does not match the kernel name.
    r.console(8, "device/console/3", Some("org.example.c"));
    let out = r.run("add", "/devices/console-8");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected \"device/console/8\""));
    // The primary console and non-consoles are not channels.
    let out = r.run("add", "/devices/console-0");
    assert_eq!(out.status.code(), Some(1));
    let out = r.run("add", "/devices/vif-0");
    assert_eq!(out.status.code(), Some(1));
}
