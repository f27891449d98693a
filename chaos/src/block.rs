//! The block scenarios: `block` for an image file and for a block device, `block-nbd` and
//! `block-iscsi` (with the stand-ins of `standin.rs`), ours or Debian's `block`.
//!
//! A round is what libxl does for one disk of a domain that fails to start: the backend
//! directory (`params`, `mode`, `type=phy`, `frontend-id`, `state=2`, …), `add` (killed), then
//! `remove`, then the domain's directories removed. Leak classes: loop devices backed by the
//! scenario's images, NBD devices connected, iSCSI sessions and their by-path links, stand-in
//! processes still running, lock and state files under `/run/xen-hotplug`, xenstore nodes.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use xenplug_block::loopdev::{Attached, Backing, KernelLoops, LoopOps};

use crate::harness::{put, Scenario, Snapshot};
use crate::world::{self, Base};

/// Debian's `block` (xen-utils-common).
pub const REFERENCE: &str = "/etc/xen/scripts/block";

/// Which block script and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `block` with an image file (a loop device is attached).
    File,
    /// `block` with a block device (nothing is attached).
    Phy,
    /// `block-nbd` (stand-in `nbd-client`).
    Nbd,
    /// `block-iscsi` (stand-in `iscsiadm` and iscsid).
    Iscsi,
}

impl Kind {
    fn script(self) -> &'static str {
        match self {
            Kind::File | Kind::Phy => "block",
            Kind::Nbd => "block-nbd",
            Kind::Iscsi => "block-iscsi",
        }
    }
}

const DOMID: u32 = 5;
const BACKEND: &str = "backend/vbd/5/51712";
const IQN: &str = "iqn.2003-01.org.xenplug.chaos:disk1";
const PORTAL: &str = "127.0.0.1:3260";
const NBD_DEVICES: u32 = 16;
/// The stand-ins' names (their processes are audited).
const STANDINS: &[&str] = &["nbd-client", "iscsiadm", "iscsid-standin"];

/// A block world.
pub struct Block {
    kind: Kind,
    reference: bool,
    base: Base,
    image: PathBuf,
    /// Identities of the files whose loop devices count as ours.
    ours: Vec<Backing>,
    /// The loop device standing in for a `phy` disk.
    phy: Option<Attached>,
    exe: PathBuf,
    /// The xenstore paths that existed before any round.
    xs_baseline: std::collections::BTreeSet<String>,
    /// The directory of the `nbd-client`/`iscsiadm` stand-ins (removed with the world).
    _standins: tempfile::TempDir,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("kind", &self.kind)
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

fn mknod(path: &str, kind: nix::sys::stat::SFlag, major: u64, minor: u64) -> Result<(), String> {
    nix::sys::stat::mknod(
        path,
        kind,
        nix::sys::stat::Mode::from_bits_truncate(0o660),
        libc::makedev(major as u32, minor as u32),
    )
    .map_err(|e| format!("mknod {path}: {e}"))
}

/// The NBD and iSCSI stand-ins' kernel: private `/sys/block` and `/dev` (tmpfs) with the nodes
/// the scripts and the harness need. Only in the scenario's private mount namespace.
fn fake_kernel(kind: Kind) -> Result<(), String> {
    use nix::sys::stat::SFlag;
    world::tmpfs("/sys/block")?;
    world::tmpfs("/dev")?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
    ] {
        mknod(&format!("/dev/{name}"), SFlag::S_IFCHR, major, minor)?;
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            format!("/dev/{name}").as_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| e.to_string())?;
    }
    if kind == Kind::Nbd {
        for n in 0..NBD_DEVICES {
            std::fs::create_dir_all(format!("/sys/block/nbd{n}")).map_err(|e| e.to_string())?;
            mknod(
                &format!("/dev/nbd{n}"),
                SFlag::S_IFBLK,
                43,
                u64::from(n) * 32,
            )?;
        }
    }
    if kind == Kind::Iscsi {
        std::fs::create_dir_all("/dev/disk/by-path").map_err(|e| e.to_string())?;
        std::fs::create_dir_all("/sys/block/sdb").map_err(|e| e.to_string())?;
        mknod("/dev/sdb", SFlag::S_IFBLK, 8, 16)?;
    }
    Ok(())
}

impl Block {
    /// The world for `kind`; `reference` runs Debian's `block` instead of `binary` (file and
    /// phy only). Call in the scenario's own process, before any thread starts.
    pub fn new(kind: Kind, reference: bool, binary: &Path) -> Result<Block, String> {
        world::private_mounts()?;
        world::private_hotplug_dirs()?;
        world::subreaper()?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        if matches!(kind, Kind::Nbd | Kind::Iscsi) {
            for tool in ["nbd-client", "iscsiadm"] {
                for d in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
                    if Path::new(d).join(tool).exists() {
                        return Err(format!(
                            "{d}/{tool} is installed: the scripts would run it, not the \
                             stand-in (run this scenario on a host without it; the real tool \
                             is covered by tests/xen-e2e)"
                        ));
                    }
                }
            }
            fake_kernel(kind)?;
        }
        // The stand-ins are found on the scripts' PATH through `libexec_bin`.
        let standins = tempfile::Builder::new()
            .prefix("xenplug-chaos-bin-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        for n in ["nbd-client", "iscsiadm"] {
            std::os::unix::fs::symlink(&exe, standins.path().join(n)).map_err(|e| e.to_string())?;
        }
        let config = format!("libexec_bin = \"{}\"\n", standins.path().display());
        let base = Base::new(binary, &[kind.script()], &config)?;
        base.backend_dir("vbd")?;
        let image = base.dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(4 << 20))
            .map_err(|e| e.to_string())?;
        let mut ours = vec![Backing::of(
            &std::fs::metadata(&image).map_err(|e| e.to_string())?,
        )];
        let phy = if kind == Kind::Phy {
            let p = base.dir.path().join("phy.img");
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(4 << 20))
                .map_err(|e| e.to_string())?;
            ours.push(Backing::of(
                &std::fs::metadata(&p).map_err(|e| e.to_string())?,
            ));
            Some(
                KernelLoops::default()
                    .attach(&p, false)
                    .map_err(|e| format!("attach the phy stand-in: {e}"))?,
            )
        } else {
            None
        };
        if kind == Kind::Iscsi {
            std::fs::create_dir_all(base.dir.path().join("iscsi")).map_err(|e| e.to_string())?;
        }
        let xs_baseline = base
            .daemon
            .store()
            .dump("/")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        Ok(Block {
            kind,
            reference,
            base,
            image,
            ours,
            phy,
            exe,
            xs_baseline,
            _standins: standins,
        })
    }

    fn params(&self) -> String {
        match self.kind {
            Kind::File => self.image.display().to_string(),
            Kind::Phy => self
                .phy
                .as_ref()
                .map(|a| a.path.display().to_string())
                .unwrap_or_default(),
            Kind::Nbd => "nbd://127.0.0.1:10809/chaos".into(),
            Kind::Iscsi => format!("iqn={IQN},portal={PORTAL}"),
        }
    }

    fn command(&self, action: &str) -> Command {
        let mut c = if self.reference {
            let mut c = Command::new("bash");
            c.arg(REFERENCE);
            c
        } else {
            let mut c = Command::new(self.base.scripts.join(self.kind.script()));
            c.arg0(format!("/etc/xen/scripts/{}", self.kind.script()));
            c
        };
        c.arg(action);
        self.base.env(&mut c, BACKEND, "vbd");
        c.env("script", format!("/etc/xen/scripts/{}", self.kind.script()))
            .env("CHAOS_ISCSI_DIR", self.base.dir.path().join("iscsi"))
            .env("CHAOS_ISCSI_IQN", IQN);
        c
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let loops = KernelLoops::default();
        if let Ok(all) = loops.list() {
            for l in all.iter().filter(|l| self.ours.contains(&l.backing)) {
                let _ = loops.detach(&l.path);
            }
        }
    }
}

impl Scenario for Block {
    fn name(&self) -> String {
        match self.kind {
            Kind::File => "block-file".into(),
            Kind::Phy => "block-phy".into(),
            Kind::Nbd => "block-nbd".into(),
            Kind::Iscsi => "block-iscsi".into(),
        }
    }

    fn snapshot(&mut self) -> Result<Snapshot, String> {
        let mut s = Snapshot::new();
        if matches!(self.kind, Kind::File | Kind::Phy) {
            let list = KernelLoops::default().list().map_err(|e| e.to_string())?;
            for l in list.iter().filter(|l| self.ours.contains(&l.backing)) {
                put(
                    &mut s,
                    "loop device",
                    format!("{} -> {}", l.path.display(), l.file_name.display()),
                );
            }
        }
        if self.kind == Kind::Nbd {
            for n in 0..NBD_DEVICES {
                if Path::new(&format!("/sys/block/nbd{n}/pid")).exists() {
                    put(&mut s, "nbd device", format!("/dev/nbd{n} connected"));
                }
            }
        }
        if self.kind == Kind::Iscsi {
            for e in std::fs::read_dir(self.base.dir.path().join("iscsi"))
                .map_err(|e| e.to_string())?
                .flatten()
            {
                put(
                    &mut s,
                    "iscsi session",
                    e.file_name().to_string_lossy().into_owned(),
                );
            }
            for e in std::fs::read_dir("/dev/disk/by-path")
                .map_err(|e| e.to_string())?
                .flatten()
            {
                put(
                    &mut s,
                    "iscsi by-path link",
                    e.file_name().to_string_lossy().into_owned(),
                );
            }
        }
        world::processes_of(&self.exe, STANDINS, &mut s);
        world::hotplug_files(&mut s);
        self.base.xenstore(&mut s);
        Ok(s)
    }

    fn setup(&mut self, _round: u32) -> Result<(), String> {
        let b = format!("/local/domain/0/{BACKEND}");
        let script = format!("/etc/xen/scripts/{}", self.kind.script());
        let mut pairs: Vec<(String, String)> = [
            (
                "frontend",
                format!("/local/domain/{DOMID}/device/vbd/51712"),
            ),
            ("params", self.params()),
            ("script", script),
            ("frontend-id", DOMID.to_string()),
            ("online", "1".into()),
            ("removable", "0".into()),
            ("bootable", "1".into()),
            ("state", "2".into()),
            ("dev", "xvda".into()),
            ("type", "phy".into()),
            ("mode", "w".into()),
            ("device-type", "disk".into()),
            ("discard-enable", "1".into()),
            ("hotplug-status", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{b}/{k}"), v))
        .collect();
        pairs.push((
            format!("/local/domain/{DOMID}/vm"),
            format!("/vm/chaos-{DOMID}"),
        ));
        pairs.push((format!("/local/domain/{DOMID}/name"), "chaos".into()));
        pairs.push((
            format!("/local/domain/{DOMID}/device/vbd/51712/state"),
            "1".into(),
        ));
        self.base.write(&pairs)
    }

    fn op(&mut self) -> Result<Command, String> {
        Ok(self.command("add"))
    }

    fn next(&mut self) -> Result<Option<Command>, String> {
        // libxl's removal: the backend is closing.
        let b = format!("/local/domain/0/{BACKEND}");
        self.base.write(&[
            (format!("{b}/online"), "0".into()),
            (format!("{b}/state"), "5".into()),
        ])?;
        Ok(Some(self.command("remove")))
    }

    fn after(&mut self) -> Result<(), String> {
        self.base.destroy_domain("vbd", DOMID);
        // What the killed add left running (a stand-in finishing its handshake or login,
        // Debian's losetup or xenstore-write) finishes: wait for it, so what it does after
        // remove is seen.
        world::wait_children_gone(&[], Duration::from_secs(5))
    }

    fn reset(&mut self) -> Result<(), String> {
        let loops = KernelLoops::default();
        let phy = self.phy.as_ref().map(|a| a.path.clone());
        for l in loops.list().map_err(|e| e.to_string())? {
            if self.ours.contains(&l.backing) && Some(&l.path) != phy.as_ref() {
                let _ = loops.detach(&l.path);
            }
        }
        // Let a deferred detach complete.
        world::wait_for(Duration::from_secs(5), || {
            loops.list().is_ok_and(|all| {
                all.iter()
                    .filter(|l| self.ours.contains(&l.backing))
                    .all(|l| Some(&l.path) == phy.as_ref())
            })
        });
        let mut procs = Snapshot::new();
        world::processes_of(&self.exe, STANDINS, &mut procs);
        for (_, p) in procs {
            if let Some(pid) = p
                .rsplit_once("(pid ")
                .and_then(|(_, r)| r.trim_end_matches(')').parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = world::wait_children_gone(&[], Duration::from_secs(5));
        for n in 0..NBD_DEVICES {
            let _ = std::fs::remove_file(format!("/sys/block/nbd{n}/pid"));
        }
        if self.kind == Kind::Iscsi {
            for d in [
                self.base.dir.path().join("iscsi"),
                PathBuf::from("/dev/disk/by-path"),
            ] {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        world::clear_hotplug_files();
        world::reset_xenstore(&self.base, &self.xs_baseline);
        Ok(())
    }
}
