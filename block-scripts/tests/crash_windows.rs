//! The states a SIGKILL of `add` can leave, and the `remove` libxl runs next, against real loop
//! devices and stand-in `nbd-client`/`iscsiadm` orphans (the host kernel has neither NBD nor
//! iSCSI; `tests/xen-e2e` runs the real ones). The chaos command (`xenplug-chaos`, also in
//! `./test.sh`) kills real script processes at random instants; these tests pin each window
//! down one by one.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use xenplug_block::loopdev::{Binding, KernelLoops, LoopOps};
use xenplug_block::state::{IscsiRecord, LoopRecord, LoopStage, NbdRecord, Phase, Record, Store};
use xenplug_hotplug::Action;
use xenplug_testkit::Killed;

/// Attach `img` as block's add does up to the instant it is killed: the intent record saved
/// while the device is claimed, then (when `bind`) the bind, and nothing after.
fn add_killed_around_the_bind(rig: &Rig, img: &Path, bind: bool) -> PathBuf {
    let store = Store::new(&rig.state_dir());
    let mut device = PathBuf::new();
    let r = KernelLoops::default().attach_with_intent(img, false, &mut |b: &Binding| {
        device = b.path.clone();
        let rec = Record::Loop(LoopRecord {
            device: b.path.clone(),
            devnum: b.devnum,
            stage: LoopStage::Binding {
                diskseq_before: b.diskseq_before,
            },
            backing_dev: b.backing.dev,
            backing_ino: b.backing.ino,
            file: img.to_path_buf(),
        });
        store
            .save(&backend(5, 1), &rec)
            .map_err(|e| e.to_string())?;
        if bind {
            Ok(())
        } else {
            Err("killed".into())
        }
    });
    assert_eq!(r.is_ok(), bind, "{r:?}");
    device
}

#[test]
fn block_remove_after_a_kill_right_after_the_bind() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("killed.img", 1 << 20);
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    let dev = add_killed_around_the_bind(&rig, &img, true);
    rig.detach_later(&dev);
    assert_eq!(rig.loops_of(&img).len(), 1, "bound, unpublished");
    assert_eq!(rig.key(5, 1, "node"), None);
    assert!(exit_ok(rig.block("remove", 5, 1)));
    assert!(rig.detached(&img), "remove detached the unpublished device");
    assert!(!rig.state_dir().join("xenplug-block/vbd-5-1").exists());
}

#[test]
fn block_remove_after_a_kill_right_before_the_bind() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("killed-early.img", 1 << 20);
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    add_killed_around_the_bind(&rig, &img, false);
    assert!(rig.loops_of(&img).is_empty());
    assert!(rig.state_dir().join("xenplug-block/vbd-5-1").exists());
    assert!(exit_ok(rig.block("remove", 5, 1)));
    assert!(!rig.state_dir().join("xenplug-block/vbd-5-1").exists());
    // And an add after all that works as usual.
    assert!(exit_ok(rig.block("add", 5, 1)));
    assert_eq!(rig.loops_of(&img).len(), 1);
    assert!(exit_ok(rig.block("remove", 5, 1)));
    assert!(rig.detached(&img));
}

/// Write an executable shell script.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Wait (bounded) for `cond`.
#[track_caller]
fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    xenplug_testkit::wait_until(what, Duration::from_secs(10), cond);
}

struct NbdStandIn {
    bin: PathBuf,
    sys: PathBuf,
    dev: PathBuf,
    gate: PathBuf,
    _disk: PhyDev,
}

/// An `nbd-client` stand-in that connects (sysfs `pid`, a device node) once `gate` exists, as
/// a client finishing its handshake after its script was killed; `-d` disconnects.
fn nbd_stand_in(rig: &Rig) -> NbdStandIn {
    let bin = rig.dir.path().join("bin");
    let sys = rig.dir.path().join("sys-block");
    let dev = rig.dir.path().join("dev");
    for d in [&bin, &dev] {
        std::fs::create_dir_all(d).unwrap();
    }
    for n in 0..3 {
        std::fs::create_dir_all(sys.join(format!("nbd{n}"))).unwrap();
    }
    let disk = PhyDev::new(rig, "nbdstandin");
    let gate = rig.dir.path().join("gate");
    script(
        &bin.join("nbd-client"),
        &format!(
            r#"if [ "$1" = -d ]; then n=$(basename "$2"); rm -f {sys}/$n/pid; exit 0; fi
for a in "$@"; do case "$a" in {dev}/nbd*) d="$a";; esac; done
n=$(basename "$d")
while [ ! -e {gate} ]; do sleep 0.01; done
echo $$ > {sys}/$n/pid
ln -sf {disk} "$d"
exit 0"#,
            sys = sys.display(),
            dev = dev.display(),
            gate = gate.display(),
            disk = disk.as_str(),
        ),
    );
    NbdStandIn {
        bin,
        sys,
        dev,
        gate,
        _disk: disk,
    }
}

fn nbd_run(rig: &Rig, s: &NbdStandIn, action: &str) -> std::process::ExitCode {
    let host = xenplug_block::nbd::NbdHost {
        sys_block: s.sys.clone(),
        dev_dir: s.dev.clone(),
        nbd_client: s.bin.join("nbd-client"),
        modprobe: s.bin.join("modprobe"),
        procs: Default::default(),
    };
    let raw = rig.raw("block-nbd", action, &backend(5, 1));
    xenplug_hotplug::run("block-nbd", raw, Action::BLOCK, |ctx| {
        xenplug_block::nbd::body(ctx, &host)
    })
}

/// The orphan: add was killed while `nbd-client` was connecting; its record says `intent`.
fn orphaned_client(rig: &Rig, s: &NbdStandIn) -> (Killed, PathBuf) {
    let nbd1 = s.dev.join("nbd1");
    Store::new(&rig.state_dir())
        .save(
            &backend(5, 1),
            &Record::Nbd(NbdRecord {
                device: nbd1.clone(),
                phase: Phase::Intent,
            }),
        )
        .unwrap();
    let child = std::process::Command::new(s.bin.join("nbd-client"))
        .args(["srv.example", "10809"])
        .arg(&nbd1)
        .spawn()
        .unwrap();
    // No wait for it to get going: `remove` may find it in the middle of its `exec`, when its
    // command line is still empty (`spawn` returns before the kernel has set it up).
    (Killed(child), nbd1)
}

/// Wait (bounded) for `orphan` to exit.
#[track_caller]
fn exit_of(orphan: &mut Killed) -> std::process::ExitStatus {
    let mut status = None;
    wait_for("the orphan to exit", || {
        status = orphan.0.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

#[test]
fn block_nbd_remove_stops_an_orphaned_nbd_client_before_it_connects() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    rig.backend(5, 1, "srv.example:10809", "w");
    let s = nbd_stand_in(&rig);
    let (mut orphan, _nbd1) = orphaned_client(&rig, &s);
    assert!(exit_ok(nbd_run(&rig, &s, "remove")));
    // The orphan was killed: it never connects, even once the server would have answered.
    let status = exit_of(&mut orphan);
    assert!(!status.success(), "{status:?}");
    std::fs::write(&s.gate, "").unwrap();
    assert!(!s.sys.join("nbd1/pid").exists());
    assert!(!rig.state_dir().join("xenplug-block/vbd-5-1").exists());
}

#[test]
fn block_nbd_remove_disconnects_what_an_orphan_connected() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    rig.backend(5, 1, "srv.example:10809", "w");
    let s = nbd_stand_in(&rig);
    std::fs::write(&s.gate, "").unwrap();
    let (mut orphan, _) = orphaned_client(&rig, &s);
    assert!(exit_of(&mut orphan).success());
    assert!(s.sys.join("nbd1/pid").exists(), "the orphan connected nbd1");
    assert!(exit_ok(nbd_run(&rig, &s, "remove")));
    assert!(!s.sys.join("nbd1/pid").exists());
    assert!(!rig.state_dir().join("xenplug-block/vbd-5-1").exists());
}

#[test]
fn block_nbd_add_skips_a_device_another_backend_recorded() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    rig.backend(5, 1, "srv.example:10809", "w");
    let s = nbd_stand_in(&rig);
    std::fs::write(&s.gate, "").unwrap();
    // Backend 6/1's add was killed while connecting nbd0: nbd0 is not free, connected or not.
    Store::new(&rig.state_dir())
        .save(
            &backend(6, 1),
            &Record::Nbd(NbdRecord {
                device: s.dev.join("nbd0"),
                phase: Phase::Intent,
            }),
        )
        .unwrap();
    assert!(exit_ok(nbd_run(&rig, &s, "add")));
    assert_eq!(
        rig.key(5, 1, "physical-device-path").unwrap(),
        s.dev.join("nbd1").to_str().unwrap()
    );
    assert!(exit_ok(nbd_run(&rig, &s, "remove")));
    assert!(!s.sys.join("nbd1/pid").exists());
}

/// The deadline bounds `modprobe` too (no device yet: the module is loaded first).
#[test]
fn block_nbd_modprobe_and_connect_end_at_the_deadline() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    rig.backend(5, 1, "srv.example:10809", "w");
    let s = nbd_stand_in(&rig);
    script(&s.bin.join("modprobe"), "exec sleep 60");
    for n in 0..3 {
        std::fs::remove_dir_all(s.sys.join(format!("nbd{n}"))).unwrap();
    }
    let host = xenplug_block::nbd::NbdHost {
        sys_block: s.sys.clone(),
        dev_dir: s.dev.clone(),
        nbd_client: s.bin.join("nbd-client"),
        modprobe: s.bin.join("modprobe"),
        procs: Default::default(),
    };
    let mut raw = rig.raw("block-nbd", "add", &backend(5, 1));
    raw.env.insert("XENPLUG_DEADLINE".into(), "2".into());
    let t0 = Instant::now();
    let code = xenplug_hotplug::run("block-nbd", raw, Action::BLOCK, |ctx| {
        xenplug_block::nbd::body(ctx, &host)
    });
    assert!(!exit_ok(code));
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(
        rig.key(5, 1, "hotplug-error").unwrap(),
        "no free NBD device (is the nbd kernel module loaded?)"
    );
}

#[test]
fn block_iscsi_remove_waits_for_an_orphaned_login_and_logs_out() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    let bin = rig.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let iqn = "iqn.2003-01.org.example:orphan";
    let session = rig.dir.path().join("session");
    let gate = rig.dir.path().join("gate");
    // iscsid's behaviour as seen through iscsiadm: a login waits for the target (the gate),
    // a logout while the session is still logging in is refused ("try again later", 9), no
    // session is 21.
    script(
        &bin.join("iscsiadm"),
        &format!(
            r#"case "$*" in
  *--login) echo logging-in > {session}; while [ ! -e {gate} ]; do sleep 0.01; done; echo in > {session};;
  *--logout) [ -e {session} ] || exit 21; grep -q logging-in {session} && exit 9; rm -f {session};;
  "-m session") [ -e {session} ] && echo "tcp: [1] 10.0.0.1:3260,1 {iqn} (non-flash)" && exit 0; exit 21;;
esac
exit 0"#,
            session = session.display(),
            gate = gate.display(),
        ),
    );
    rig.backend(5, 1, &format!("iqn={iqn},portal=10.0.0.1:3260"), "w");
    Store::new(&rig.state_dir())
        .save(
            &backend(5, 1),
            &Record::Iscsi(IscsiRecord {
                iqn: iqn.into(),
                portal: "10.0.0.1:3260".into(),
                phase: Phase::Intent,
            }),
        )
        .unwrap();
    // The add's iscsiadm, orphaned by the kill, still waiting for iscsid's login.
    let mut orphan = Killed(
        std::process::Command::new(bin.join("iscsiadm"))
            .args([
                "-m",
                "node",
                "--targetname",
                iqn,
                "-p",
                "10.0.0.1:3260",
                "--login",
            ])
            .spawn()
            .unwrap(),
    );
    wait_for("the login to start", || session.exists());
    let host = xenplug_block::iscsi::IscsiHost {
        by_path: rig.dir.path().join("by-path"),
        sys_block: "/sys/block".into(),
        iscsiadm: bin.join("iscsiadm"),
        multipath: bin.join("multipath"),
        procs: Default::default(),
    };
    let log = rig.dir.path().join("hotplug.log");
    let remover = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let mut raw = rig.raw("block-iscsi", "remove", &backend(5, 1));
            raw.env.insert("XENPLUG_STDERR_LEVEL".into(), "err".into());
            raw.env.insert("XENPLUG_LOG_LEVEL".into(), "debug".into());
            xenplug_hotplug::run("block-iscsi", raw, Action::BLOCK, |ctx| {
                xenplug_block::iscsi::body(ctx, &host)
            })
        });
        // remove sees the login in flight and waits for it; then iscsid completes it.
        wait_for("remove to wait for the login", || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("waiting for the login to")
        });
        std::fs::write(&gate, "").unwrap();
        h.join().unwrap()
    });
    assert!(exit_ok(remover));
    assert!(exit_of(&mut orphan).success());
    assert!(
        !session.exists(),
        "the session the orphan made was logged out"
    );
    assert!(!rig.state_dir().join("xenplug-block/vbd-5-1").exists());
}

/// A kill during the save of the intent record leaves its temporary file (and no record):
/// remove clears it.
#[test]
fn block_remove_clears_the_temporary_file_of_an_interrupted_save() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("half-saved.img", 1 << 20);
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    let dir = rig.state_dir().join("xenplug-block");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".vbd-5-1.xenplug-Ab12Cd"), "version=2\nback").unwrap();
    std::fs::write(dir.join(".vbd-6-1.xenplug-Ab12Cd"), "another backend's").unwrap();
    assert!(exit_ok(rig.block("remove", 5, 1)));
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [".vbd-6-1.xenplug-Ab12Cd"]);
}
