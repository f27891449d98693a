//! The loop-device layer against the real kernel: attach/detach/status/list on real loop
//! devices backed by sparse temp files. Every device attached is detached by a guard, also when
//! an assertion fails.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use xenplug_block::loopdev::{Attached, Backing, Detached, KernelLoops, LoopOps};

/// Detaches the loop device on drop, if it still is the attachment it was made for (tests run
/// in parallel: a device detached earlier may already belong to another test).
struct Guard(PathBuf, Option<(Backing, Option<u64>)>);

impl Guard {
    fn of(a: &Attached) -> Guard {
        Guard(a.path.clone(), Some((a.backing, a.diskseq)))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let loops = KernelLoops::default();
        if let Some((backing, seq)) = self.1 {
            match loops.status(&self.0) {
                Ok(Some(st)) if st.backing == backing && st.diskseq == seq => {}
                _ => return,
            }
        }
        let _ = loops.detach(&self.0);
    }
}

fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

/// Wait (bounded) until `a`'s attachment is gone: the device is unbound, or it was re-used by
/// a parallel test for another file (new backing or disk sequence number).
fn unbound(loops: &KernelLoops, a: &Attached) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match loops.status(&a.path).unwrap() {
            None => return true,
            Some(st) if st.backing != a.backing || st.diskseq != a.diskseq => return true,
            Some(_) if std::time::Instant::now() >= deadline => return false,
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

fn sysfs(a: &Attached, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/block/loop{}/{file}", a.number))
        .ok()
        .map(|s| s.trim().to_string())
}

#[test]
fn attach_status_list_detach() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = sparse(dir.path(), "disk.img", 16 << 20);
    let loops = KernelLoops::default();

    let a = loops.attach(&img, false).unwrap();
    let _g = Guard::of(&a);
    assert_eq!(a.path, PathBuf::from(format!("/dev/loop{}", a.number)));
    assert_eq!(a.devnum.major, 7);
    assert!(!a.read_only);
    assert_eq!(
        a.backing,
        Backing::of(&std::fs::metadata(&img).unwrap()),
        "backing identity is the file's"
    );
    // Oracle: sysfs.
    assert_eq!(
        sysfs(&a, "loop/backing_file").unwrap(),
        img.to_str().unwrap()
    );
    assert_eq!(sysfs(&a, "ro").unwrap(), "0");
    assert_eq!(sysfs(&a, "loop/autoclear").unwrap(), "0");
    assert_eq!(sysfs(&a, "loop/partscan").unwrap(), "0");
    assert_eq!(sysfs(&a, "dev").unwrap(), a.devnum.decimal());
    if let Some(seq) = sysfs(&a, "diskseq") {
        assert_eq!(Some(seq.parse::<u64>().unwrap()), a.diskseq);
    }

    let st = loops.status(&a.path).unwrap().expect("bound");
    assert_eq!(st.backing, a.backing);
    assert_eq!(st.file_name, img);
    assert!(!st.read_only && !st.autoclear);
    assert_eq!(st.devnum, a.devnum);
    assert_eq!(st.diskseq, a.diskseq);

    let all = loops.list().unwrap();
    assert!(all
        .iter()
        .any(|s| s.number == a.number && s.backing == a.backing));

    // Deferred when a parallel test's enumeration has the device open at this instant.
    assert!(matches!(
        loops.detach(&a.path).unwrap(),
        Detached::Cleared | Detached::Deferred
    ));
    assert!(unbound(&loops, &a));
    assert_eq!(
        loops.detach(Path::new("/dev/loop99999")).unwrap(),
        Detached::NoDevice
    );
}

#[test]
fn read_only_attach() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = sparse(dir.path(), "ro.img", 1 << 20);
    let loops = KernelLoops::default();
    let a = loops.attach(&img, true).unwrap();
    let _g = Guard::of(&a);
    assert!(a.read_only);
    assert_eq!(sysfs(&a, "ro").unwrap(), "1");
    assert!(loops.status(&a.path).unwrap().unwrap().read_only);
    // Writing to the device must fail (at open or at write, depending on the kernel).
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&a.path)
        .and_then(|mut f| f.write_all(&[0u8; 512]).and_then(|()| f.sync_all()));
    assert!(
        written.is_err(),
        "a read-only loop device cannot be written"
    );
}

#[test]
fn status_survives_deleted_and_renamed_backing() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = sparse(dir.path(), "gone.img", 1 << 20);
    let loops = KernelLoops::default();
    let a = loops.attach(&img, false).unwrap();
    let _g = Guard::of(&a);
    let moved = dir.path().join("moved.img");
    std::fs::rename(&img, &moved).unwrap();
    assert_eq!(loops.status(&a.path).unwrap().unwrap().backing, a.backing);
    std::fs::remove_file(&moved).unwrap();
    let st = loops.status(&a.path).unwrap().unwrap();
    assert_eq!(st.backing, a.backing);
    assert!(sysfs(&a, "loop/backing_file")
        .unwrap()
        .ends_with("(deleted)"));
    assert!(matches!(
        loops.detach(&a.path).unwrap(),
        Detached::Cleared | Detached::Deferred
    ));
    assert!(unbound(&loops, &a));
}

#[test]
fn read_write_attach_of_unwritable_file_is_refused() {
    if !xenplug_testkit::require_root() {
        return;
    }
    // Root ignores permission bits, so use a read-only bind mount… simpler: chattr +i makes
    // the file immutable even for root, when the filesystem supports it.
    let dir = tempfile::tempdir().unwrap();
    let img = sparse(dir.path(), "imm.img", 1 << 20);
    let ok = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&img)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !xenplug_testkit::require(ok, "chattr +i on the temp filesystem") {
        return;
    }
    let loops = KernelLoops::default();
    let r = loops.attach(&img, false);
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&img)
        .status();
    match r {
        Err(xenplug_block::loopdev::LoopError::ReadOnlyBacking { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(a) => {
            let _g = Guard::of(&a);
            panic!("attached an immutable file read-write");
        }
    }
}

#[test]
fn concurrent_attaches_get_distinct_devices() {
    if !xenplug_testkit::require_root() {
        return;
    }
    const N: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let imgs: Vec<PathBuf> = (0..N)
        .map(|i| sparse(dir.path(), &format!("c{i}.img"), 1 << 20))
        .collect();
    let barrier = Arc::new(Barrier::new(N + 1));
    let handles: Vec<_> = imgs
        .iter()
        .cloned()
        .map(|img| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                KernelLoops::default().attach(&img, false)
            })
        })
        .collect();
    // A competitor that does not use our protocol: plain losetup -f in parallel.
    let other = sparse(dir.path(), "other.img", 1 << 20);
    barrier.wait();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&other)
        .output()
        .unwrap();
    let other_dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _og = (!other_dev.is_empty()).then(|| Guard(PathBuf::from(&other_dev), None));
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let guards: Vec<Guard> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(Guard::of))
        .collect();
    assert_eq!(guards.len(), N, "all attaches succeed: {results:?}");
    let mut numbers: Vec<u32> = results.iter().map(|r| r.as_ref().unwrap().number).collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), N, "distinct devices");
    let loops = KernelLoops::default();
    for (img, r) in imgs.iter().zip(&results) {
        let a = r.as_ref().unwrap();
        assert_ne!(a.path.to_str().unwrap(), other_dev);
        let st = loops.status(&a.path).unwrap().unwrap();
        assert_eq!(st.file_name, *img, "each device is backed by its own file");
    }
}
