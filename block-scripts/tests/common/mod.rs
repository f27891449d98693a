//! Shared rig for the end-to-end tests: a real xenstored on a throwaway socket, a private
//! state/lock/log directory, image files, and guards that detach every loop device the test
//! created (also when an assertion fails).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use xenplug_block::loopdev::{KernelLoops, LoopOps};
use xenplug_hotplug::{Failure, Raw};
use xenplug_xenstore::XsOps;
use xenplug_xenstored::testing::TestDaemon;

pub const FRONTEND: u32 = 5;

/// One test's world.
pub struct Rig {
    pub daemon: TestDaemon,
    pub dir: tempfile::TempDir,
    cleanup_devices: std::sync::Mutex<Vec<PathBuf>>,
}

pub fn exit_ok(c: ExitCode) -> bool {
    format!("{c:?}") == format!("{:?}", ExitCode::SUCCESS)
}

/// How the runtime renders a message into `hotplug-error` (it owns that contract).
pub fn rendered_busy(msg: &str) -> String {
    Failure::Busy(msg.to_string()).message()
}

/// How the runtime renders an error message.
pub fn rendered_error(msg: &str) -> String {
    Failure::Error(msg.to_string()).message()
}

impl Rig {
    pub fn new() -> Rig {
        Rig::with_domains(&[])
    }

    /// A rig whose xenstored also has a socket acting as each of `domids` (to play a driver
    /// domain).
    pub fn with_domains(domids: &[u32]) -> Rig {
        let dir = tempfile::Builder::new()
            .prefix("xenplug-block-test-")
            .tempdir()
            .unwrap();
        for d in ["state", "locks", "images", "scripts"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Rig {
            daemon: xenplug_xenstored::testing::spawn_daemon_with_domains(domids),
            dir,
            cleanup_devices: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn xs(&self) -> xenplug_xenstored::MemStore {
        self.daemon.store()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn scripts_dir(&self) -> PathBuf {
        self.dir.path().join("scripts")
    }

    /// A sparse image file.
    pub fn image(&self, name: &str, size: u64) -> PathBuf {
        let p = self.dir.path().join("images").join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }

    /// Detach `dev` when the rig is dropped (for devices the test attached itself), if it is
    /// then still backed by a file of this rig.
    pub fn detach_later(&self, dev: &Path) {
        self.cleanup_devices.lock().unwrap().push(dev.to_path_buf());
    }

    /// Environment for a script run.
    pub fn env(&self, backend: &str) -> Vec<(String, String)> {
        vec![
            ("XENBUS_PATH".into(), backend.into()),
            ("XENBUS_TYPE".into(), "vbd".into()),
            ("XENBUS_BASE_PATH".into(), "backend".into()),
            ("script".into(), "/etc/xen/scripts/block".into()),
            (
                "XENSTORED_PATH".into(),
                self.daemon.socket().display().to_string(),
            ),
            (
                "XENPLUG_STATE_DIR".into(),
                self.state_dir().display().to_string(),
            ),
            (
                "XENPLUG_LOCK_DIR".into(),
                self.dir.path().join("locks").display().to_string(),
            ),
            (
                "XENPLUG_LOG_FILE".into(),
                self.dir.path().join("hotplug.log").display().to_string(),
            ),
            ("XENPLUG_SYSLOG".into(), "0".into()),
            ("XENPLUG_STDERR_LEVEL".into(), "err".into()),
            (
                "XENPLUG_SCRIPTS_DIR".into(),
                self.scripts_dir().display().to_string(),
            ),
            ("XENPLUG_CONFIG".into(), String::new()),
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ]
    }

    pub fn raw(&self, script: &str, action: &str, backend: &str) -> Raw {
        Raw {
            argv: vec![format!("/etc/xen/scripts/{script}"), action.to_string()],
            env: self.env(backend).into_iter().collect::<BTreeMap<_, _>>(),
        }
    }

    /// Run `block <action>` for `backend/vbd/<dom>/<dev>` through the real entry point.
    pub fn block(&self, action: &str, dom: u32, dev: u32) -> ExitCode {
        xenplug_block::block::main(self.raw("block", action, &backend(dom, dev)))
    }

    /// Run `block add` for `backend/vbd/<dom>/<dev>`, which must fail: the `hotplug-error` it
    /// wrote.
    #[track_caller]
    pub fn add_fails(&self, dom: u32, dev: u32) -> String {
        assert!(!exit_ok(self.block("add", dom, dev)));
        self.key(dom, dev, "hotplug-error").unwrap()
    }

    /// Create backend `backend/vbd/<dom>/<dev>` as libxl would (state InitWait), and the
    /// frontend domain's `vm` (`/vm/vm-<dom>` unless `vm` is given).
    pub fn backend(&self, dom: u32, dev: u32, params: &str, mode: &str) {
        let xs = self.xs();
        let b = abs_backend(dom, dev);
        for (k, v) in [
            ("params", params),
            ("mode", mode),
            ("type", "phy"),
            ("frontend-id", &dom.to_string()),
            ("online", "1"),
            ("state", "2"),
            ("removable", "0"),
            ("device-type", "disk"),
            ("script", "/etc/xen/scripts/block"),
        ] {
            xs.write(&format!("{b}/{k}"), v).unwrap();
        }
        if xs
            .read(&format!("/local/domain/{dom}/vm"))
            .unwrap()
            .is_none()
        {
            xs.write(&format!("/local/domain/{dom}/vm"), &format!("/vm/vm-{dom}"))
                .unwrap();
        }
    }

    pub fn read(&self, path: &str) -> Option<String> {
        self.xs().read(path).unwrap()
    }

    pub fn key(&self, dom: u32, dev: u32, key: &str) -> Option<String> {
        self.read(&format!("{}/{key}", abs_backend(dom, dev)))
    }

    /// Every node under the backend directory.
    pub fn dump(&self, dom: u32, dev: u32) -> Vec<(String, String)> {
        self.xs().dump(&abs_backend(dom, dev))
    }

    /// Loop devices backed by files in this rig's image directory.
    pub fn our_loops(&self) -> Vec<xenplug_block::loopdev::LoopStatus> {
        let images = self.dir.path().join("images");
        KernelLoops::default()
            .list()
            .unwrap()
            .into_iter()
            .filter(|l| l.file_name.starts_with(&images))
            .collect()
    }

    /// Loop devices backed by `img` (by identity).
    pub fn loops_of(&self, img: &Path) -> Vec<xenplug_block::loopdev::LoopStatus> {
        let b = xenplug_block::loopdev::Backing::of(&std::fs::metadata(img).unwrap());
        KernelLoops::default()
            .list()
            .unwrap()
            .into_iter()
            .filter(|l| l.backing == b)
            .collect()
    }
}

impl Rig {
    /// No loop device is (any longer) backed by `img`. A detach of a device that someone else
    /// has open at that instant (e.g. a parallel test enumerating loop devices) completes at
    /// that opener's close, so this waits a little.
    pub fn detached(&self, img: &Path) -> bool {
        eventually(|| self.loops_of(img).is_empty())
    }

    /// No loop device backed by a file of this rig is left.
    pub fn none_left(&self) -> bool {
        eventually(|| self.our_loops().is_empty())
    }
}

/// Poll `cond` for up to 5 s.
pub fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let loops = KernelLoops::default();
        for l in self.our_loops() {
            let _ = loops.detach(&l.path);
        }
        for d in self.cleanup_devices.lock().unwrap().drain(..) {
            if let Ok(Some(st)) = loops.status(&d) {
                if st.file_name.starts_with(self.dir.path()) {
                    let _ = loops.detach(&d);
                }
            }
        }
    }
}

pub fn backend(dom: u32, dev: u32) -> String {
    format!("backend/vbd/{dom}/{dev}")
}

pub fn abs_backend(dom: u32, dev: u32) -> String {
    format!("/local/domain/0/backend/vbd/{dom}/{dev}")
}

/// sysfs attribute of a block device by its path (`/dev/loop3` → `/sys/block/loop3/<attr>`).
pub fn sysfs(dev: &str, attr: &str) -> Option<String> {
    let name = Path::new(dev).file_name()?.to_str()?.to_string();
    std::fs::read_to_string(format!("/sys/block/{name}/{attr}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// `%x:%x` of a device node.
pub fn hex_devnum(dev: &str) -> String {
    xenplug_block::gather::block_rdev(Path::new(dev))
        .unwrap()
        .to_string()
}

/// A loop device attached for use as a "phy" disk; detached on drop (if still the same
/// attachment).
pub struct PhyDev {
    pub path: PathBuf,
    attached: xenplug_block::loopdev::Attached,
}

impl PhyDev {
    pub fn new(rig: &Rig, name: &str) -> PhyDev {
        let img = rig.dir.path().join(format!("{name}.phy"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let a = KernelLoops::default().attach(&img, false).unwrap();
        PhyDev {
            path: a.path.clone(),
            attached: a,
        }
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for PhyDev {
    fn drop(&mut self) {
        let loops = KernelLoops::default();
        if let Ok(Some(st)) = loops.status(&self.path) {
            if st.backing == self.attached.backing && st.diskseq == self.attached.diskseq {
                let _ = loops.detach(&self.path);
            }
        }
    }
}

/// A filesystem mounted on a device; unmounted on drop.
pub struct Mounted {
    pub dir: tempfile::TempDir,
}

impl Mounted {
    pub fn new(dev: &str, read_only: bool) -> Mounted {
        let out = std::process::Command::new("mkfs.ext2")
            .args(["-q", "-F", dev])
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfs: {out:?}");
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new("mount");
        if read_only {
            cmd.args(["-o", "ro"]);
        }
        let out = cmd.arg(dev).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "mount: {out:?}");
        Mounted { dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}
