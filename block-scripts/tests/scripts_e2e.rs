//! End-to-end runs of the other entry points and of failure paths that need a hand on the
//! xenstore connection or on the tools: xenstored going away in the middle of an add,
//! `block-dummy` on real loop devices, and `block-iscsi` / `block-nbd` driving stand-in tools
//! (the host kernel has neither iSCSI nor NBD; the stand-ins record their argv and expose a real
//! loop device where the real tool would make the kernel create a disk).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use xenplug_block::block::Host;
use xenplug_block::gather::HostPaths;
use xenplug_block::loopdev::KernelLoops;
use xenplug_hotplug::{run_with, Action};
use xenplug_xenstore::client::XsClient;
use xenplug_xenstore::{
    Perm, Result as XsResult, Transaction, WatchEvent, XenStore, XsError, XsOps,
};

/// A connection that loses xenstored once the script starts writing.
struct Vanishing(XsClient);

fn gone() -> XsError {
    XsError::Io(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "xenstored went away",
    ))
}

impl XsOps for Vanishing {
    fn read(&self, path: &str) -> XsResult<Option<String>> {
        self.0.read(path)
    }
    fn write(&self, _: &str, _: &str) -> XsResult<()> {
        Err(gone())
    }
    fn mkdir(&self, _: &str) -> XsResult<()> {
        Err(gone())
    }
    fn rm(&self, _: &str) -> XsResult<()> {
        Err(gone())
    }
    fn directory(&self, path: &str) -> XsResult<Vec<String>> {
        self.0.directory(path)
    }
    fn get_perms(&self, path: &str) -> XsResult<Vec<Perm>> {
        self.0.get_perms(path)
    }
    fn set_perms(&self, _: &str, _: &[Perm]) -> XsResult<()> {
        Err(gone())
    }
}

impl XenStore for Vanishing {
    fn begin(&self) -> XsResult<Box<dyn Transaction + '_>> {
        Err(gone())
    }
    fn watch(&self, path: &str, token: &str) -> XsResult<()> {
        self.0.watch(path, token)
    }
    fn unwatch(&self, path: &str, token: &str) -> XsResult<()> {
        self.0.unwatch(path, token)
    }
    fn read_watch(&self, timeout: Option<Duration>) -> XsResult<Option<WatchEvent>> {
        self.0.read_watch(timeout)
    }
    fn domain_path(&self, domid: u32) -> XsResult<String> {
        self.0.domain_path(domid)
    }
}

#[test]
fn xenstored_going_away_mid_add_leaks_nothing() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("vanish.img", 1 << 20);
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    let loops = KernelLoops::default();
    let paths = HostPaths::default();
    let host = Host {
        loops: &loops,
        paths: &paths,
        dev_dir: Path::new("/dev"),
    };
    let socket = rig.daemon.socket().to_path_buf();
    let code = run_with(
        "block",
        rig.raw("block", "add", &backend(5, 1)),
        Action::BLOCK,
        move |_| Ok(Box::new(Vanishing(XsClient::open_socket(&socket)?)) as Box<dyn XenStore>),
        |ctx| xenplug_block::block::body(ctx, &host),
    );
    assert!(!exit_ok(code));
    assert!(rig.detached(&img), "the loop device was rolled back");
    assert!(!rig.state_dir().join("xenplug-block/vbd-5-1").exists());
    assert_eq!(rig.key(5, 1, "physical-device"), None);
    let log = std::fs::read_to_string(rig.dir.path().join("hotplug.log")).unwrap();
    assert!(log.contains("xenstored went away"), "{log}");
}

#[test]
fn block_dummy_add_remove() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("dummy.img", 2 << 20);
    rig.backend(5, 1, &format!("dummy:{}", img.display()), "r");
    assert!(exit_ok(xenplug_block::dummy::main(rig.raw(
        "block-dummy",
        "add",
        &backend(5, 1)
    ))));
    let node = rig.key(5, 1, "node").unwrap();
    assert_eq!(rig.key(5, 1, "physical-device").unwrap(), hex_devnum(&node));
    assert_eq!(rig.key(5, 1, "physical-device-path").unwrap(), node);
    assert_eq!(rig.key(5, 1, "hotplug-status").unwrap(), "connected");
    assert_eq!(sysfs(&node, "ro").unwrap(), "1");
    assert!(exit_ok(xenplug_block::dummy::main(rig.raw(
        "block-dummy",
        "remove",
        &backend(5, 1)
    ))));
    assert!(rig.detached(&img));
    // Idempotent, and bad params are one clear error.
    assert!(exit_ok(xenplug_block::dummy::main(rig.raw(
        "block-dummy",
        "remove",
        &backend(5, 1)
    ))));
    rig.backend(6, 1, &format!("phy:{}", img.display()), "w");
    assert!(!exit_ok(xenplug_block::dummy::main(rig.raw(
        "block-dummy",
        "add",
        &backend(6, 1)
    ))));
    assert_eq!(rig.key(6, 1, "hotplug-error").unwrap(), "Invalid type: phy");
}

/// Write an executable shell script.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

#[test]
fn block_iscsi_with_a_stand_in_iscsiadm() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    let bin = rig.dir.path().join("bin");
    let by_path = rig.dir.path().join("by-path");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&by_path).unwrap();
    let lun = PhyDev::new(&rig, "lun");
    let iqn = "iqn.2003-01.org.example:disk1";
    let calls = rig.dir.path().join("iscsiadm.calls");
    let link = by_path.join(format!("ip-10.0.0.1:3260-iscsi-{iqn}-lun-0"));
    // Discovery lists the target; login makes the LUN appear; logout removes it.
    script(
        &bin.join("iscsiadm"),
        &format!(
            r#"echo "$*" >> {calls}
case "$*" in
  "-m session") echo "iscsiadm: No active sessions."; exit 21;;
  "-m discovery -t st -p 10.0.0.1:3260") echo "10.0.0.1:3260,1 {iqn}";;
  *--login) ln -s {dev} '{link}';;
  *--logout) [ -e '{link}' ] || exit 21; rm -f '{link}';;
esac
exit 0"#,
            calls = calls.display(),
            dev = lun.as_str(),
            link = link.display(),
        ),
    );
    let host = xenplug_block::iscsi::IscsiHost {
        by_path: by_path.clone(),
        sys_block: "/sys/block".into(),
        iscsiadm: bin.join("iscsiadm"),
        multipath: bin.join("multipath"),
        procs: Default::default(),
    };
    rig.backend(5, 1, &format!("iqn={iqn},portal=10.0.0.1:3260"), "w");
    let run = |action: &str, dom: u32| {
        let mut raw = rig.raw("block-iscsi", action, &backend(dom, 1));
        // 4 s in all: 3 s of work, 1 s to undo.
        raw.env.insert("XENPLUG_DEADLINE".into(), "4".into());
        xenplug_hotplug::run("block-iscsi", raw, Action::BLOCK, |ctx| {
            xenplug_block::iscsi::body(ctx, &host)
        })
    };
    assert!(exit_ok(run("add", 5)));
    assert_eq!(
        rig.key(5, 1, "physical-device").unwrap(),
        hex_devnum(lun.as_str())
    );
    assert_eq!(rig.key(5, 1, "physical-device-path").unwrap(), lun.as_str());
    assert_eq!(rig.key(5, 1, "hotplug-status").unwrap(), "connected");
    assert!(exit_ok(run("remove", 5)));
    assert!(!link.exists());
    assert!(exit_ok(run("remove", 5)), "no session left: still fine");
    let log = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec![
            "-m session".to_string(),
            "-m discovery -t st -p 10.0.0.1:3260".to_string(),
            format!("-m node --targetname {iqn} -p 10.0.0.1:3260 --login"),
            // remove: logged out, then "no session" (21) confirms none is left.
            format!("-m node --targetname {iqn} -p 10.0.0.1:3260 --logout"),
            format!("-m node --targetname {iqn} -p 10.0.0.1:3260 --logout"),
            // The second remove: nothing to log out of.
            format!("-m node --targetname {iqn} -p 10.0.0.1:3260 --logout"),
        ]
    );

    // A second domain asking for a target in use is refused, and libxl's remove for it must
    // not end the first domain's session.
    std::fs::remove_file(&calls).unwrap();
    let session = rig.dir.path().join("session");
    script(
        &bin.join("iscsiadm"),
        &format!(
            r#"echo "$*" >> {calls}
case "$*" in
  "-m session") [ -e '{session}' ] && {{ echo "tcp: [1] 10.0.0.1:3260,1 {iqn} (non-flash)"; exit 0; }}; exit 21;;
  "-m discovery -t st -p 10.0.0.1:3260") echo "10.0.0.1:3260,1 {iqn}";;
  *--login) touch '{session}'; ln -s {dev} '{link}';;
  *--logout) [ -e '{session}' ] || exit 21; rm -f '{session}' '{link}';;
esac
exit 0"#,
            calls = calls.display(),
            session = session.display(),
            dev = lun.as_str(),
            link = link.display(),
        ),
    );
    rig.backend(9, 1, &format!("iqn={iqn},portal=10.0.0.1:3260"), "w");
    rig.backend(10, 1, &format!("iqn={iqn},portal=10.0.0.1:3260"), "w");
    assert!(exit_ok(run("add", 9)));
    assert!(!exit_ok(run("add", 10)));
    assert_eq!(
        rig.key(10, 1, "hotplug-error").unwrap(),
        "Device already opened"
    );
    assert!(exit_ok(run("remove", 10)));
    assert!(
        session.exists(),
        "domain 9's session was logged out by domain 10's remove"
    );
    assert!(link.exists());
    assert!(exit_ok(run("remove", 9)));
    assert!(!session.exists());
    let logouts = std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .filter(|l| l.ends_with("--logout"))
        .count();
    // Domain 9's remove: the logout and the "no session" that confirms it.
    assert_eq!(logouts, 2);

    // The LUN never shows up: a bounded wait, then logout (nothing left behind).
    std::fs::remove_file(&calls).unwrap();
    script(
        &bin.join("iscsiadm"),
        &format!(
            r#"echo "$*" >> {calls}
case "$*" in
  "-m session") exit 21;;
  "-m discovery"*) echo "10.0.0.1:3260,1 {iqn}";;
  *--login) touch '{session}';;
  *--logout) [ -e '{session}' ] || exit 21; rm -f '{session}';;
esac
exit 0"#,
            calls = calls.display(),
            session = session.display(),
        ),
    );
    rig.backend(6, 1, &format!("iqn={iqn},portal=10.0.0.1:3260"), "w");
    let t0 = std::time::Instant::now();
    assert!(!exit_ok(run("add", 6)));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(rig
        .key(6, 1, "hotplug-error")
        .unwrap()
        .starts_with("timeout waiting for iSCSI disk to settle"));
    assert!(std::fs::read_to_string(&calls)
        .unwrap()
        .ends_with("--logout\n"));
    assert!(!session.exists(), "logged out again");
    assert!(!rig.state_dir().join("xenplug-block/vbd-6-1").exists());
    // A login that hangs (unreachable portal): killed at the deadline, then a logout.
    std::fs::remove_file(&calls).unwrap();
    script(
        &bin.join("iscsiadm"),
        &format!(
            r#"echo "$*" >> {calls}
case "$*" in
  "-m session") exit 21;;
  "-m discovery"*) echo "10.0.0.1:3260,1 {iqn}";;
  *--login) exec sleep 60;;
  *--logout) exit 21;;
esac
exit 0"#,
            calls = calls.display()
        ),
    );
    rig.backend(8, 1, &format!("iqn={iqn},portal=10.0.0.1:3260"), "w");
    let t0 = std::time::Instant::now();
    assert!(!exit_ok(run("add", 8)));
    assert!(t0.elapsed() < Duration::from_secs(10));
    let err = rig.key(8, 1, "hotplug-error").unwrap();
    assert!(
        err.ends_with("--login did not finish in time and was killed"),
        "{err}"
    );
    assert!(std::fs::read_to_string(&calls)
        .unwrap()
        .ends_with("--logout\n"));

    // Unknown target.
    rig.backend(7, 1, "iqn=iqn.other:x,portal=10.0.0.1:3260", "w");
    assert!(!exit_ok(run("add", 7)));
    assert_eq!(
        rig.key(7, 1, "hotplug-error").unwrap(),
        "No matching target iqn found"
    );
}

#[test]
fn block_nbd_with_a_stand_in_nbd_client() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    let bin = rig.dir.path().join("bin");
    let sys = rig.dir.path().join("sys-block");
    let dev = rig.dir.path().join("dev");
    for d in [&bin, &dev] {
        std::fs::create_dir_all(d).unwrap();
    }
    // nbd0 is taken by someone else; nbd1 and nbd2 are free.
    for n in 0..3 {
        std::fs::create_dir_all(sys.join(format!("nbd{n}"))).unwrap();
    }
    std::fs::write(sys.join("nbd0/pid"), "1\n").unwrap();
    let disk = PhyDev::new(&rig, "nbdstandin");
    let calls = rig.dir.path().join("nbd.calls");
    // Connecting creates the sysfs pid file and a device node (a real loop device standing in).
    script(
        &bin.join("nbd-client"),
        &format!(
            r#"echo "$*" >> {calls}
if [ "$1" = -d ]; then n=$(basename "$2"); rm -f {sys}/$n/pid "$2"; exit 0; fi
for a in "$@"; do case "$a" in {dev}/nbd*) d="$a";; esac; done
n=$(basename "$d")
echo $$ > {sys}/$n/pid
ln -s {disk} "$d"
exit 0"#,
            calls = calls.display(),
            sys = sys.display(),
            dev = dev.display(),
            disk = disk.as_str(),
        ),
    );
    rig.backend(5, 1, "nbd://srv.example:10810/vm1", "r");
    let host = xenplug_block::nbd::NbdHost {
        sys_block: sys.clone(),
        dev_dir: dev.clone(),
        nbd_client: bin.join("nbd-client"),
        modprobe: bin.join("modprobe"),
        procs: Default::default(),
    };
    let run = |action: &str| {
        let raw = rig.raw("block-nbd", action, &backend(5, 1));
        xenplug_hotplug::run("block-nbd", raw, Action::BLOCK, |ctx| {
            xenplug_block::nbd::body(ctx, &host)
        })
    };
    assert!(exit_ok(run("add")));
    let nbd1: PathBuf = dev.join("nbd1");
    assert_eq!(
        rig.key(5, 1, "physical-device-path").unwrap(),
        nbd1.to_str().unwrap()
    );
    assert_eq!(
        rig.key(5, 1, "physical-device").unwrap(),
        hex_devnum(disk.as_str())
    );
    assert_eq!(rig.key(5, 1, "hotplug-status").unwrap(), "connected");
    assert!(exit_ok(run("remove")));
    assert!(!sys.join("nbd1/pid").exists());
    assert!(exit_ok(run("remove")), "idempotent");
    let log = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec![
            format!("srv.example 10810 {} -name vm1 -readonly", nbd1.display()),
            format!("-d {}", nbd1.display()),
        ]
    );
}
