//! `block add|remove` end to end: the real entry point (`xenplug_block::block::main`) through
//! the hotplug runtime, against a real xenstored on a socket, with real loop devices, real files
//! and real mounts. sysfs is the oracle for loop-device state.

mod common;

use common::*;
use std::path::Path;
use std::sync::{Arc, Barrier};
use xenplug_block::loopdev::{Backing, KernelLoops, LoopOps};
use xenplug_xenstore::XsOps;

fn root() -> bool {
    xenplug_testkit::require_root()
}

fn assert_connected_file(rig: &Rig, dom: u32, dev: u32, img: &Path, ro: bool) -> String {
    let node = rig.key(dom, dev, "node").expect("node written");
    assert!(node.starts_with("/dev/loop"), "node {node}");
    assert_eq!(
        rig.key(dom, dev, "physical-device").unwrap(),
        hex_devnum(&node)
    );
    assert_eq!(rig.key(dom, dev, "physical-device-path").unwrap(), node);
    assert_eq!(rig.key(dom, dev, "hotplug-status").unwrap(), "connected");
    assert_eq!(rig.key(dom, dev, "hotplug-error"), None);
    assert_eq!(
        sysfs(&node, "loop/backing_file").unwrap(),
        img.to_str().unwrap()
    );
    assert_eq!(sysfs(&node, "ro").unwrap(), if ro { "1" } else { "0" });
    assert_eq!(sysfs(&node, "loop/autoclear").unwrap(), "0");
    node
}

#[test]
fn file_rw_add_and_remove() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("rw.img", 16 << 20);
    rig.backend(FRONTEND, 51712, img.to_str().unwrap(), "w");
    assert!(exit_ok(rig.block("add", FRONTEND, 51712)));
    let node = assert_connected_file(&rig, FRONTEND, 51712, &img, false);
    assert_eq!(rig.loops_of(&img).len(), 1);
    assert!(rig.state_dir().join("xenplug-block/vbd-5-51712").is_file());

    assert!(exit_ok(rig.block("remove", FRONTEND, 51712)));
    assert!(rig.detached(&img), "{node} detached");
    assert!(!rig.state_dir().join("xenplug-block/vbd-5-51712").exists());
    // Idempotent.
    assert!(exit_ok(rig.block("remove", FRONTEND, 51712)));
    assert_eq!(rig.key(FRONTEND, 51712, "hotplug-error"), None);
}

#[test]
fn file_ro_add() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("ro.img", 4 << 20);
    rig.backend(FRONTEND, 768, img.to_str().unwrap(), "r");
    assert!(exit_ok(rig.block("add", FRONTEND, 768)));
    assert_connected_file(&rig, FRONTEND, 768, &img, true);
    assert!(exit_ok(rig.block("remove", FRONTEND, 768)));
    assert!(rig.detached(&img));
}

#[test]
fn file_through_symlink_is_canonicalised() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("real.img", 4 << 20);
    let link = rig.dir.path().join("link.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    rig.backend(FRONTEND, 1, link.to_str().unwrap(), "w");
    assert!(exit_ok(rig.block("add", FRONTEND, 1)));
    assert_connected_file(&rig, FRONTEND, 1, &img, false);
    assert!(exit_ok(rig.block("remove", FRONTEND, 1)));
    assert!(rig.detached(&img));
}

#[test]
fn physical_device_present_means_no_writes() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("twice.img", 4 << 20);
    rig.backend(FRONTEND, 2, img.to_str().unwrap(), "w");
    rig.xs()
        .write(
            &format!("{}/physical-device", abs_backend(FRONTEND, 2)),
            "7:99",
        )
        .unwrap();
    let before = rig.dump(FRONTEND, 2);
    assert!(exit_ok(rig.block("add", FRONTEND, 2)));
    assert_eq!(rig.dump(FRONTEND, 2), before);
    assert!(rig.detached(&img));
}

#[test]
fn phy_device_add_remove_attaches_nothing() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let phy = PhyDev::new(&rig, "phy");
    // Relative name: looked up under /dev.
    let name = phy.path.file_name().unwrap().to_str().unwrap();
    rig.backend(FRONTEND, 3, name, "w");
    assert!(exit_ok(rig.block("add", FRONTEND, 3)));
    assert_eq!(
        rig.key(FRONTEND, 3, "physical-device").unwrap(),
        hex_devnum(phy.as_str())
    );
    assert_eq!(
        rig.key(FRONTEND, 3, "physical-device-path").unwrap(),
        phy.as_str()
    );
    assert_eq!(rig.key(FRONTEND, 3, "hotplug-status").unwrap(), "connected");
    assert_eq!(rig.key(FRONTEND, 3, "node"), None);
    assert!(exit_ok(rig.block("remove", FRONTEND, 3)));
    assert!(
        sysfs(phy.as_str(), "loop/backing_file").is_some(),
        "phy stays attached"
    );
    let on_phy =
        xenplug_block::loopdev::LoopOps::list(&xenplug_block::loopdev::KernelLoops::default())
            .unwrap()
            .into_iter()
            .filter(|l| l.file_name == phy.path)
            .count();
    assert_eq!(on_phy, 0, "no loop device stacked on the phy device");

    // A symlink to a device is resolved.
    let phy2 = PhyDev::new(&rig, "phy2");
    let link = rig.dir.path().join("disk-link");
    std::os::unix::fs::symlink(&phy2.path, &link).unwrap();
    rig.backend(7, 3, link.to_str().unwrap(), "r");
    assert!(exit_ok(rig.block("add", 7, 3)));
    assert_eq!(
        rig.key(7, 3, "physical-device-path").unwrap(),
        phy2.as_str()
    );
    assert_eq!(
        rig.key(7, 3, "physical-device").unwrap(),
        hex_devnum(phy2.as_str())
    );
}

#[test]
fn guests_w_w_file_is_busy_with_the_reference_message() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("shared.img", 4 << 20);
    rig.backend(5, 51712, img.to_str().unwrap(), "w");
    rig.backend(6, 51712, img.to_str().unwrap(), "w");
    assert!(exit_ok(rig.block("add", 5, 51712)));
    let node = rig.key(5, 51712, "node").unwrap();
    assert!(!exit_ok(rig.block("add", 6, 51712)));
    assert_eq!(rig.key(6, 51712, "hotplug-status").unwrap(), "busy");
    let want = format!(
        "File {} is loopback-mounted through {},\nwhich is mounted in a guest domain,\nand so cannot be mounted now.",
        img.display(),
        hex_devnum(&node)
    );
    assert_eq!(
        rig.key(6, 51712, "hotplug-error").unwrap(),
        rendered_busy(&want)
    );
    assert_eq!(rig.key(6, 51712, "physical-device"), None);
    assert_eq!(rig.key(6, 51712, "node"), None);
    assert_eq!(rig.loops_of(&img).len(), 1, "the loser attached nothing");
    // The loser's remove (libxl runs it after a failed add) must not touch the winner's device.
    assert!(exit_ok(rig.block("remove", 6, 51712)));
    assert_eq!(rig.loops_of(&img).len(), 1);
    assert!(exit_ok(rig.block("remove", 5, 51712)));
    assert!(rig.detached(&img));
}

#[test]
fn readers_share_writers_do_not() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("readers.img", 4 << 20);
    for dom in [5, 6, 7] {
        rig.backend(dom, 1, img.to_str().unwrap(), "r");
        assert!(exit_ok(rig.block("add", dom, 1)), "reader {dom}");
    }
    assert_eq!(rig.loops_of(&img).len(), 3);
    // A writer against readers: the w message.
    rig.backend(8, 1, img.to_str().unwrap(), "w");
    assert!(!exit_ok(rig.block("add", 8, 1)));
    assert_eq!(rig.key(8, 1, "hotplug-status").unwrap(), "busy");
    let err = rig.key(8, 1, "hotplug-error").unwrap();
    assert!(
        err.ends_with(&rendered_busy(
            "which is mounted in a guest domain,\nand so cannot be mounted now."
        )),
        "{err}"
    );
    // A reader against a writer: the r message.
    let img2 = rig.image("writer.img", 4 << 20);
    rig.backend(9, 1, img2.to_str().unwrap(), "w");
    assert!(exit_ok(rig.block("add", 9, 1)));
    let node = rig.key(9, 1, "node").unwrap();
    rig.backend(10, 1, img2.to_str().unwrap(), "r");
    assert!(!exit_ok(rig.block("add", 10, 1)));
    let want = format!(
        "File {} is loopback-mounted through {},\nwhich is mounted read-write in a guest domain,\nand so cannot be mounted read-only now.",
        img2.display(),
        hex_devnum(&node)
    );
    assert_eq!(
        rig.key(10, 1, "hotplug-error").unwrap(),
        rendered_busy(&want)
    );
    // `w!` skips the check.
    rig.backend(11, 1, img2.to_str().unwrap(), "w!");
    assert!(exit_ok(rig.block("add", 11, 1)));
    assert_eq!(rig.loops_of(&img2).len(), 2);
    for (dom, dev) in [(5, 1), (6, 1), (7, 1), (9, 1), (11, 1), (8, 1), (10, 1)] {
        assert!(exit_ok(rig.block("remove", dom, dev)));
    }
    assert!(rig.detached(&img) && rig.detached(&img2));
}

#[test]
fn same_vm_and_stubdom_may_share() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("samevm.img", 4 << 20);
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    assert!(exit_ok(rig.block("add", 5, 1)));
    // A second disk of the same domain.
    rig.backend(5, 2, img.to_str().unwrap(), "w");
    assert!(exit_ok(rig.block("add", 5, 2)));
    // Its device-model stubdom (domain 6, target 5, its own vm path).
    let xs = rig.xs();
    xs.write("/local/domain/6/vm", "/vm/stubdom-of-5").unwrap();
    xs.write("/local/domain/6/target", "5").unwrap();
    rig.backend(6, 1, img.to_str().unwrap(), "w");
    assert!(
        exit_ok(rig.block("add", 6, 1)),
        "stubdom shares with its target"
    );
    // An unrelated domain does not.
    rig.backend(7, 1, img.to_str().unwrap(), "w");
    assert!(!exit_ok(rig.block("add", 7, 1)));
    assert_eq!(rig.key(7, 1, "hotplug-status").unwrap(), "busy");
}

#[test]
fn phy_device_in_use_by_another_guest() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let phy = PhyDev::new(&rig, "guestphy");
    rig.backend(5, 1, phy.as_str(), "w");
    assert!(exit_ok(rig.block("add", 5, 1)));
    rig.backend(6, 1, phy.as_str(), "w");
    assert_eq!(
        rig.add_fails(6, 1),
        rendered_busy(&format!(
            "Device {} is mounted in a guest domain,\nand so cannot be mounted now.",
            phy.as_str()
        ))
    );
    rig.backend(7, 1, phy.as_str(), "r");
    assert_eq!(
        rig.add_fails(7, 1),
        rendered_busy(&format!(
            "Device {} is mounted read-write in a guest domain,\nand so cannot be mounted read-only now.",
            phy.as_str()
        ))
    );
}

#[test]
fn mounted_device_is_busy() {
    if !root() || !xenplug_testkit::require_program("mkfs.ext2") {
        return;
    }
    let rig = Rig::new();
    let phy = PhyDev::new(&rig, "mounted");
    let m = Mounted::new(phy.as_str(), false);
    rig.backend(5, 1, phy.as_str(), "w");
    assert!(!exit_ok(rig.block("add", 5, 1)));
    assert_eq!(rig.key(5, 1, "hotplug-status").unwrap(), "busy");
    assert_eq!(
        rig.key(5, 1, "hotplug-error").unwrap(),
        rendered_busy(&format!(
            "Device {} is mounted in the privileged domain,\nand so cannot be mounted by a guest.",
            phy.as_str()
        ))
    );
    rig.backend(6, 1, phy.as_str(), "r");
    assert_eq!(
        rig.add_fails(6, 1),
        rendered_busy(&format!(
            "Device {} is mounted read-write in the privileged domain,\nand so cannot be mounted read-only by a guest.",
            phy.as_str()
        ))
    );
    drop(m);
    // Mounted read-only: readers may attach, writers may not.
    let _m = Mounted::new(phy.as_str(), true);
    rig.backend(7, 1, phy.as_str(), "r");
    assert!(exit_ok(rig.block("add", 7, 1)));
    rig.backend(8, 1, phy.as_str(), "w");
    assert!(!exit_ok(rig.block("add", 8, 1)));
}

#[test]
fn image_file_mounted_through_its_loop_is_busy() {
    if !root() || !xenplug_testkit::require_program("mkfs.ext2") {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("dom0fs.img", 8 << 20);
    // dom0 itself loop-mounts the image.
    let a = xenplug_block::loopdev::LoopOps::attach(
        &xenplug_block::loopdev::KernelLoops::default(),
        &img,
        false,
    )
    .unwrap();
    rig.detach_later(&a.path);
    let _m = Mounted::new(a.path.to_str().unwrap(), false);
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    assert_eq!(
        rig.add_fails(5, 1),
        rendered_busy(&format!(
            "File {} is loopback-mounted through {},\nwhich is mounted in the privileged domain,\nand so cannot be mounted by a guest.",
            img.display(),
            a.devnum
        ))
    );
    assert_eq!(rig.loops_of(&img).len(), 1, "nothing attached");
}

#[test]
fn remove_after_image_deleted_renamed_or_nodes_gone() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    // Deleted.
    let img = rig.image("deleted.img", 4 << 20);
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    assert!(exit_ok(rig.block("add", 5, 1)));
    let identity = Backing::of(&std::fs::metadata(&img).unwrap());
    std::fs::remove_file(&img).unwrap();
    assert!(exit_ok(rig.block("remove", 5, 1)));
    let none_left = eventually(|| {
        KernelLoops::default()
            .list()
            .unwrap()
            .into_iter()
            .all(|l| l.backing != identity)
    });
    assert!(none_left, "deleted image detached");
    // Renamed.
    let img = rig.image("renamed.img", 4 << 20);
    rig.backend(6, 1, img.to_str().unwrap(), "w");
    assert!(exit_ok(rig.block("add", 6, 1)));
    std::fs::rename(&img, rig.dir.path().join("images/renamed2.img")).unwrap();
    assert!(exit_ok(rig.block("remove", 6, 1)));
    assert!(rig.none_left());
    // Backend directory gone from xenstore.
    let img = rig.image("nodes-gone.img", 4 << 20);
    rig.backend(7, 1, img.to_str().unwrap(), "w");
    assert!(exit_ok(rig.block("add", 7, 1)));
    rig.xs().rm(&abs_backend(7, 1)).unwrap();
    assert!(exit_ok(rig.block("remove", 7, 1)));
    assert!(rig.detached(&img));
}

#[test]
fn remove_never_detaches_a_reused_device() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("reuse.img", 4 << 20);
    rig.backend(5, 1, img.to_str().unwrap(), "r");
    assert!(exit_ok(rig.block("add", 5, 1)));
    let node = rig.key(5, 1, "node").unwrap();
    // Someone detaches it behind our back and re-attaches the same file to the same device.
    // (Other tests run in parallel and may grab the device in between: then there is nothing
    // to show, and the test skips the last check.)
    let loops = KernelLoops::default();
    loops.detach(Path::new(&node)).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-r", &node])
        .arg(&img)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("{node} was taken by another test meanwhile: {out:?}");
        assert!(exit_ok(rig.block("remove", 5, 1)));
        return;
    }
    rig.detach_later(Path::new(&node));
    assert!(exit_ok(rig.block("remove", 5, 1)));
    assert!(
        sysfs(&node, "loop/backing_file").is_some(),
        "a new attachment (new diskseq) is not ours to detach"
    );
}

#[test]
fn state_not_initwait_is_fatal_and_attaches_nothing() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("state.img", 4 << 20);
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    rig.xs()
        .write(&format!("{}/state", abs_backend(5, 1)), "5")
        .unwrap();
    assert!(!exit_ok(rig.block("add", 5, 1)));
    assert_eq!(rig.key(5, 1, "hotplug-status").unwrap(), "error");
    assert_eq!(
        rig.key(5, 1, "hotplug-error").unwrap(),
        "Path closed or removed during hotplug add: backend/vbd/5/1 state: 5"
    );
    rig.xs()
        .rm(&format!("{}/state", abs_backend(5, 1)))
        .unwrap();
    assert_eq!(
        rig.add_fails(5, 1),
        "Path closed or removed during hotplug add: backend/vbd/5/1 state: unknown"
    );
    assert!(rig.detached(&img));
    assert_eq!(rig.key(5, 1, "physical-device"), None);
}

#[test]
fn read_only_file_refused_for_w() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("perm.img", 4 << 20);
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    assert!(!exit_ok(rig.block("add", 5, 1)));
    assert_eq!(rig.key(5, 1, "hotplug-status").unwrap(), "busy");
    assert_eq!(
        rig.key(5, 1, "hotplug-error").unwrap(),
        rendered_busy(&format!(
            "File {} is read-only, and so I will not\nmount it read-write in a guest domain.",
            img.display()
        ))
    );
    assert!(rig.detached(&img));
    // Read-only use is fine.
    rig.backend(6, 1, img.to_str().unwrap(), "r");
    assert!(exit_ok(rig.block("add", 6, 1)));
}

#[test]
fn failed_add_after_attach_leaves_nothing() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("fail.img", 4 << 20);
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    // The state record cannot be written: its directory is a regular file.
    std::fs::write(rig.state_dir().join("xenplug-block"), "not a directory").unwrap();
    assert!(!exit_ok(rig.block("add", 5, 1)));
    assert_eq!(rig.key(5, 1, "hotplug-status").unwrap(), "error");
    assert!(rig
        .key(5, 1, "hotplug-error")
        .unwrap()
        .starts_with("cannot record state for backend/vbd/5/1"));
    assert!(rig.detached(&img), "rolled back");
    for k in ["node", "physical-device", "physical-device-path"] {
        assert_eq!(rig.key(5, 1, k), None, "{k}");
    }
    // Remove after the failed add: exit 0.
    std::fs::remove_file(rig.state_dir().join("xenplug-block")).unwrap();
    assert!(exit_ok(rig.block("remove", 5, 1)));
}

#[test]
fn racing_adds_exactly_one_wins() {
    if !root() {
        return;
    }
    let rig = Arc::new(Rig::new());
    for round in 0..20u32 {
        let img = rig.image(&format!("race{round}.img"), 1 << 20);
        let dev = 100 + round;
        rig.backend(5, dev, img.to_str().unwrap(), "w");
        rig.backend(6, dev, img.to_str().unwrap(), "w");
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [5u32, 6]
            .into_iter()
            .map(|dom| {
                let (rig, barrier) = (rig.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    exit_ok(rig.block("add", dom, dev))
                })
            })
            .collect();
        let results: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|r| **r).count(),
            1,
            "round {round}: exactly one wins: {results:?}"
        );
        let loser = if results[0] { 6 } else { 5 };
        assert_eq!(rig.key(loser, dev, "hotplug-status").unwrap(), "busy");
        assert_eq!(rig.loops_of(&img).len(), 1, "round {round}");
        for dom in [5, 6] {
            assert!(exit_ok(rig.block("remove", dom, dev)));
        }
        assert!(rig.detached(&img));
    }
}

/// Remove the loop devices above `loop7` that nobody uses (the kernel refuses, `EBUSY`, a bound
/// device or one someone holds open), as after boot: a fresh kernel has `loop0`–`loop7` and makes
/// the rest on demand. How many were removed.
fn loop_devices_as_after_boot() -> usize {
    use std::os::fd::AsRawFd;
    const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .unwrap();
    std::fs::read_dir("/sys/block")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("loop")?.parse::<u32>().ok())
        .filter(|n| *n >= 8)
        // SAFETY: LOOP_CTL_REMOVE takes the device number by value; the control fd is open.
        .filter(|n| unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_REMOVE, *n as libc::c_int) } >= 0)
        .count()
}

/// Fifty adds of distinct files at once, on a host that has only the loop devices a fresh boot
/// has: most adds race to add devices too. One's `LOOP_CTL_ADD` of a number another is adding
/// answers `EEXIST` before the device is registered (no node, no sysfs entry yet); that attacher
/// moves on to another device instead of failing (found by `./test.sh` on a fresh machine: 36 of
/// 50 adds failed with "read /sys/block/loop12/dev: No such file or directory").
#[test]
fn fifty_concurrent_distinct_adds_all_succeed() {
    if !root() {
        return;
    }
    const N: u32 = 50;
    eprintln!(
        "removed {} unused loop devices above loop7",
        loop_devices_as_after_boot()
    );
    let rig = Arc::new(Rig::new());
    let imgs: Vec<_> = (0..N)
        .map(|i| {
            let img = rig.image(&format!("many{i}.img"), 1 << 20);
            rig.backend(1000 + i, 51712, img.to_str().unwrap(), "w");
            img
        })
        .collect();
    let barrier = Arc::new(Barrier::new(N as usize));
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let (rig, barrier) = (rig.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                exit_ok(rig.block("add", 1000 + i, 51712))
            })
        })
        .collect();
    let ok = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|x| *x)
        .count();
    eprintln!("{N} concurrent adds: {:?}", start.elapsed());
    let errors: Vec<String> = (0..N)
        .filter_map(|i| rig.key(1000 + i, 51712, "hotplug-error"))
        .collect();
    assert_eq!(ok, N as usize, "{errors:?}");
    let mut nodes: Vec<String> = (0..N)
        .map(|i| rig.key(1000 + i, 51712, "node").unwrap())
        .collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), N as usize, "distinct loop devices");
    for (i, img) in imgs.iter().enumerate() {
        assert_eq!(rig.loops_of(img).len(), 1, "{i}");
        assert!(exit_ok(rig.block("remove", 1000 + i as u32, 51712)));
    }
    assert!(rig.none_left());
}

#[test]
fn bad_input_gives_one_clear_error_and_no_leak() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let b = |dom| abs_backend(dom, 1);
    // Empty params.
    rig.backend(5, 1, "", "w");
    assert_eq!(
        rig.add_fails(5, 1),
        "xenstore-read backend/vbd/5/1/params failed."
    );
    // Nonexistent path.
    rig.backend(6, 1, "/nonexistent/disk.img", "w");
    assert!(!exit_ok(rig.block("add", 6, 1)));
    assert_eq!(rig.key(6, 1, "hotplug-status").unwrap(), "error");
    assert_eq!(
        rig.key(6, 1, "hotplug-error").unwrap(),
        "/nonexistent/disk.img does not exist."
    );
    // A relative name that is nothing.
    rig.backend(7, 1, "no-such-disk", "w");
    assert_eq!(rig.add_fails(7, 1), "no-such-disk does not exist.");
    // A directory, a FIFO.
    let d = rig.dir.path().join("adir");
    std::fs::create_dir(&d).unwrap();
    rig.backend(8, 1, d.to_str().unwrap(), "w");
    assert_eq!(
        rig.add_fails(8, 1),
        format!(
            "{} is neither a block device nor a regular file.",
            d.display()
        )
    );
    let fifo = rig.dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    rig.backend(9, 1, fifo.to_str().unwrap(), "w");
    assert!(!exit_ok(rig.block("add", 9, 1)));
    assert_eq!(rig.key(9, 1, "hotplug-status").unwrap(), "error");
    // Garbage mode.
    let img = rig.image("mode.img", 1 << 20);
    rig.backend(10, 1, img.to_str().unwrap(), "zzz");
    assert_eq!(
        rig.add_fails(10, 1),
        "invalid mode 'zzz' in backend/vbd/10/1/mode (expected r, ro, w, rw, w! or rw!)"
    );
    // Missing frontend-id.
    rig.backend(11, 1, img.to_str().unwrap(), "w");
    rig.xs().rm(&format!("{}/frontend-id", b(11))).unwrap();
    assert_eq!(
        rig.add_fails(11, 1),
        "xenstore-read backend/vbd/11/1/frontend-id failed."
    );
    // Missing mode.
    rig.backend(12, 1, img.to_str().unwrap(), "w");
    rig.xs().rm(&format!("{}/mode", b(12))).unwrap();
    assert_eq!(
        rig.add_fails(12, 1),
        "xenstore-read backend/vbd/12/1/mode failed."
    );
    // Invalid action: nothing written, exit 1.
    rig.backend(13, 1, img.to_str().unwrap(), "w");
    let before = rig.dump(13, 1);
    assert!(!exit_ok(rig.block("online", 13, 1)));
    assert_eq!(rig.dump(13, 1), before);
    for dom in 5..=13 {
        assert_eq!(rig.key(dom, 1, "physical-device"), None, "dom {dom}");
    }
    assert!(rig.none_left(), "no leaked loop device");
}

#[test]
fn other_type_dispatches_to_block_helper() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let marker = rig.dir.path().join("helper.log");
    let helper = rig.scripts_dir().join("block-testkind");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\necho \"$1 $XENBUS_PATH\" >> {}\nexit 0\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    rig.backend(5, 1, "target-for-helper", "w");
    rig.xs()
        .write(&format!("{}/type", abs_backend(5, 1)), "testkind")
        .unwrap();
    assert!(exit_ok(rig.block("add", 5, 1)));
    assert!(exit_ok(rig.block("remove", 5, 1)));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "add backend/vbd/5/1\nremove backend/vbd/5/1\n"
    );
    // The reference would write hotplug-status=connected here; the helper owns the result.
    assert_eq!(rig.key(5, 1, "hotplug-status"), None);
    // A type without a helper (libxl's `phy`): a clear error.
    rig.backend(6, 1, "target-for-nobody", "w");
    assert_eq!(rig.add_fails(6, 1), "target-for-nobody does not exist.");
}

/// Swaps on a device for the test's duration.
struct Swap(String);

impl Drop for Swap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("swapoff").arg(&self.0).status();
    }
}

#[test]
fn swap_device_is_busy_even_for_readers() {
    if !root()
        || !xenplug_testkit::require_program("mkswap")
        || !xenplug_testkit::require_program("swapon")
    {
        return;
    }
    let rig = Rig::new();
    let phy = PhyDev::new(&rig, "swap");
    let ok = std::process::Command::new("mkswap")
        .arg(phy.as_str())
        .output()
        .is_ok_and(|o| o.status.success())
        && std::process::Command::new("swapon")
            .arg(phy.as_str())
            .status()
            .is_ok_and(|s| s.success());
    let _swap = Swap(phy.as_str().to_string());
    if !xenplug_testkit::require(ok, "swapon on a loop device") {
        return;
    }
    rig.backend(5, 1, phy.as_str(), "r");
    assert!(!exit_ok(rig.block("add", 5, 1)));
    assert_eq!(rig.key(5, 1, "hotplug-status").unwrap(), "busy");
    assert_eq!(
        rig.key(5, 1, "hotplug-error").unwrap(),
        rendered_busy(&format!(
            "Device {} is mounted read-write in the privileged domain,\nand so cannot be mounted read-only by a guest.",
            phy.as_str()
        ))
    );
    assert_eq!(rig.key(5, 1, "physical-device"), None);
}

#[test]
fn w_attach_of_an_unwritable_file_is_busy_not_silently_read_only() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let img = rig.image("immutable.img", 1 << 20);
    let ok = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&img)
        .status()
        .is_ok_and(|s| s.success());
    if !xenplug_testkit::require(ok, "chattr +i on the temp filesystem") {
        return;
    }
    rig.backend(5, 1, img.to_str().unwrap(), "w");
    let code = rig.block("add", 5, 1);
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&img)
        .status();
    assert!(!exit_ok(code));
    assert_eq!(rig.key(5, 1, "hotplug-status").unwrap(), "busy");
    assert_eq!(
        rig.key(5, 1, "hotplug-error").unwrap(),
        rendered_busy(&format!(
            "File {} is read-only, and so I will not\nmount it read-write in a guest domain.",
            img.display()
        ))
    );
    assert!(rig.detached(&img));
    assert!(!rig.state_dir().join("xenplug-block/vbd-5-1").exists());
}

/// Adds of different files take different locks (issue 21): while another process holds one
/// file's lock, an add of a second file goes through and an add of the first waits. An add
/// SIGKILLed holding a file's lock before it recorded anything leaves the lock file; the remove
/// libxl runs next takes that same lock (from `params`) and so removes the file.
#[test]
fn file_adds_lock_their_own_file_and_a_killed_adds_lock_file_goes_with_remove() {
    if !root() {
        return;
    }
    let rig = Rig::new();
    let (a, b) = (rig.image("a.img", 1 << 20), rig.image("b.img", 1 << 20));
    rig.backend(5, 51712, a.to_str().unwrap(), "w");
    rig.backend(6, 51712, b.to_str().unwrap(), "w");
    let locks = xenplug_hotplug::Locks::new(
        rig.dir.path().join("locks"),
        std::time::Duration::from_secs(25),
    );
    let name_a = xenplug_block::block::file_lock_name(xenplug_block::loopdev::Backing::of(
        &std::fs::metadata(&a).unwrap(),
    ));
    let held = locks.claim(&name_a).unwrap();
    // b's add does not wait for a's lock.
    assert!(exit_ok(rig.block("add", 6, 51712)));
    assert_eq!(rig.loops_of(&b).len(), 1);
    // a's add waits for it: it has not attached anything while the lock is held.
    let rig = Arc::new(rig);
    let r = rig.clone();
    let adder = std::thread::spawn(move || exit_ok(r.block("add", 5, 51712)));
    let lock_file = rig.dir.path().join("locks").join(&name_a);
    let queue = rig
        .dir
        .path()
        .join("locks")
        .join(format!(".{name_a}.queue"));
    // The waiter lines up on the queue file (created only by someone who has to wait).
    assert!(eventually(|| queue.exists()), "a's add never waited");
    assert_eq!(rig.loops_of(&a).len(), 0);
    drop(held);
    assert!(adder.join().unwrap());
    assert_eq!(rig.loops_of(&a).len(), 1);
    for (dom, img) in [(5, &a), (6, &b)] {
        assert!(exit_ok(rig.block("remove", dom, 51712)));
        assert!(rig.detached(img));
    }
    assert!(!lock_file.exists());
    // A killed add's lock file (the kernel dropped its flock, nothing unlinked the file), no
    // record, no loop device: remove takes the lock from params and releases it.
    rig.backend(7, 51712, a.to_str().unwrap(), "w");
    std::fs::write(&lock_file, "").unwrap();
    assert!(exit_ok(rig.block("remove", 7, 51712)));
    assert!(!lock_file.exists(), "the killed add's lock file stayed");
}
