//! Filesystems: the mount table as qemu-ga reads it, `guest-fsfreeze-*` (FIFREEZE/FITHAW and
//! the fsfreeze hook), `guest-fstrim` (FITRIM), `guest-get-fsinfo` and `guest-get-disks`.
//!
//! **Which filesystems.** `/proc/self/mountinfo`, keeping every mount whose device has a major
//! number (btrfs reports 0: its source device is stat'ed instead), as qemu-ga does: pseudo and
//! network filesystems drop out, bind mounts of one filesystem appear more than once (freezing
//! the second time gives EBUSY, which is ignored).
//!
//! **Freeze.** The hook runs with `freeze` first (its failure refuses the freeze); a marker
//! listing the frozen mount points is written to the state directory (on tmpfs) *before* any
//! FIFREEZE, so an agent that dies mid-freeze thaws them when it starts again; mounts are frozen
//! in reverse mount order (children before parents); any error other than EOPNOTSUPP/EBUSY
//! thaws everything and fails. Thaw issues FITHAW on every local filesystem until it fails (a
//! filesystem frozen twice needs two), counts each one thawed, removes the marker and runs the
//! hook with `thaw`.
//!
//! **The hook.** qemu-ga's convention: `/etc/qemu/fsfreeze-hook` (or the configured path) runs
//! with one argument, `freeze` or `thaw`, stdio on /dev/null, in its own process group; a
//! non-zero exit is an error. The stock hook runs the executables of `fsfreeze-hook.d/` next to
//! it; when the hook itself is absent but that directory exists, the agent runs them itself, in
//! name order, skipping the same backup files, so drop-ins work without qemu-ga's package.

use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use xenplug_channel::qga::{
    DiskAddress, DiskInfo, FilesystemInfo, PciAddress, TrimResponse, TrimResult,
};
use xenplug_channel::ErrorBody;

use crate::log;

nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);

/// `struct fstrim_range`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct FstrimRange {
    start: u64,
    len: u64,
    minlen: u64,
}
nix::ioctl_readwrite!(fitrim, b'X', 121, FstrimRange);

fn errno_desc(e: nix::errno::Errno) -> String {
    super::strerror(e as i32)
}

/// One local filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount point.
    pub dir: String,
    /// Filesystem type.
    pub fstype: String,
    /// Device major.
    pub major: u32,
    /// Device minor.
    pub minor: u32,
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\\`).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if let Some(d) = b.get(i + 1..i + 4) {
                if (b'0'..=b'3').contains(&d[0]) && d[1..].iter().all(|c| (b'0'..=b'7').contains(c))
                {
                    out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The local filesystems in `mountinfo` text, in mount order.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 5 || f.len() < dash + 3 {
            continue;
        }
        let Some((ma, mi)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(mut major), Ok(mut minor)) = (ma.parse::<u32>(), mi.parse::<u32>()) else {
            continue;
        };
        let fstype = f[dash + 1].to_string();
        let source = unescape(f[dash + 2]);
        if major == 0 {
            // btrfs reports major 0: its source device tells the truth.
            if fstype != "btrfs" {
                continue;
            }
            match fs::metadata(&source) {
                Ok(m) if m.file_type().is_block_device() => {
                    major = libc::major(m.rdev());
                    minor = libc::minor(m.rdev());
                }
                _ => continue,
            }
        }
        out.push(Mount {
            dir: unescape(f[4]),
            fstype,
            major,
            minor,
        });
    }
    out
}

/// The local filesystems of this mount namespace.
pub fn mounts(proc: &Path) -> Result<Vec<Mount>, ErrorBody> {
    let p = proc.join("self/mountinfo");
    let text = fs::read_to_string(&p).map_err(|e| {
        ErrorBody::generic(format!("failed to open mtab file: '{}': {e}", p.display()))
    })?;
    Ok(parse_mountinfo(&text))
}

fn open_dir(dir: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dir)
}

/// Where the fsfreeze hook is and whether it must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// No hook.
    None,
    /// Run this hook if it exists (or its `.d` directory's drop-ins).
    IfPresent(PathBuf),
    /// Run this hook; a missing one is an error (as qemu-ga's `-F PATH`).
    Required(PathBuf),
}

/// qemu-ga's default hook.
pub const DEFAULT_HOOK: &str = "/etc/qemu/fsfreeze-hook";

const IGNORED_SUFFIXES: &[&str] = &[
    "~",
    ".bak",
    ".orig",
    ".rpmnew",
    ".rpmorig",
    ".rpmsave",
    ".sample",
    ".dpkg-old",
    ".dpkg-new",
    ".dpkg-tmp",
    ".dpkg-dist",
    ".dpkg-bak",
    ".dpkg-backup",
    ".dpkg-remove",
];

fn run_hook_program(path: &Path, arg: &str) -> Result<(), ErrorBody> {
    let st = Command::new(path)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .map_err(|e| {
            ErrorBody::generic(format!(
                "failed to run fsfreeze hook '{}': {e}",
                path.display()
            ))
        })?;
    match st.code() {
        Some(0) => Ok(()),
        Some(n) => Err(ErrorBody::generic(format!(
            "fsfreeze hook has failed with status {n}"
        ))),
        None => Err(ErrorBody::generic(
            "fsfreeze hook has terminated abnormally",
        )),
    }
}

fn is_executable_file(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Hook {
    /// Run the hook with `freeze` or `thaw`.
    pub fn run(&self, arg: &str) -> Result<(), ErrorBody> {
        let (path, required) = match self {
            Hook::None => return Ok(()),
            Hook::IfPresent(p) => (p, false),
            Hook::Required(p) => (p, true),
        };
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: access(2) reads the NUL-terminated path only.
        let accessible = unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0;
        if accessible {
            log::event(
                "fsfreeze-hook",
                &[("hook", &path.display().to_string()), ("arg", arg)],
            );
            return run_hook_program(path, arg);
        }
        let err = nix::errno::Errno::last();
        if required || path.exists() {
            return Err(ErrorBody::generic(format!(
                "can't access fsfreeze hook '{}': {}",
                path.display(),
                errno_desc(err)
            )));
        }
        // No hook: run its drop-ins as the stock hook would.
        let mut d = path.as_os_str().to_owned();
        d.push(".d");
        let Ok(rd) = fs::read_dir(PathBuf::from(d)) else {
            return Ok(());
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)) || !is_executable_file(&f) {
                continue;
            }
            let r = run_hook_program(&f, arg);
            log::event(
                "fsfreeze-hook",
                &[
                    ("hook", &f.display().to_string()),
                    ("arg", arg),
                    (
                        "result",
                        &r.as_ref().map_or_else(|e| e.desc.clone(), |_| "ok".into()),
                    ),
                ],
            );
        }
        Ok(())
    }
}

/// Freeze `mounts` (all of them, or those whose mount point is in `only`) in reverse order;
/// returns how many were frozen, or the error after thawing them all again.
pub fn freeze(mounts: &[Mount], only: Option<&[String]>) -> Result<i64, ErrorBody> {
    let mut n = 0;
    for m in mounts.iter().rev() {
        if only.is_some_and(|l| !l.contains(&m.dir)) {
            continue;
        }
        let f = open_dir(&m.dir).map_err(|e| {
            let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
            ErrorBody::generic(format!("failed to open {}: {}", m.dir, errno_desc(errno)))
        })?;
        let mut arg: libc::c_int = 0;
        // SAFETY: `f` is an open descriptor of the mount point for the duration of the call;
        // FIFREEZE does not use its argument beyond the pointer we pass, which is valid.
        match unsafe { fifreeze(f.as_raw_fd(), &mut arg) } {
            Ok(_) => n += 1,
            Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => {
                return Err(ErrorBody::generic(format!(
                    "failed to freeze {}: {}",
                    m.dir,
                    errno_desc(e)
                )))
            }
        }
    }
    Ok(n)
}

/// Thaw every filesystem in `mounts`; returns how many were frozen.
pub fn thaw(mounts: &[Mount]) -> i64 {
    let mut n = 0;
    for m in mounts {
        let Ok(f) = open_dir(&m.dir) else { continue };
        let mut thawed = false;
        loop {
            let mut arg: libc::c_int = 0;
            // SAFETY: as in `freeze`.
            match unsafe { fithaw(f.as_raw_fd(), &mut arg) } {
                Ok(_) => thawed = true,
                Err(_) => break,
            }
        }
        if thawed {
            n += 1;
        }
    }
    n
}

/// `guest-fstrim`.
pub fn fstrim(mounts: &[Mount], minimum: Option<i64>) -> TrimResponse {
    let mut paths = Vec::new();
    for m in mounts {
        let mut r = TrimResult {
            path: m.dir.clone(),
            trimmed: None,
            minimum: None,
            error: None,
        };
        match open_dir(&m.dir) {
            Err(e) => {
                let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
                r.error = Some(format!("failed to open: {}", errno_desc(errno)));
            }
            Ok(f) => {
                let mut range = FstrimRange {
                    start: 0,
                    len: u64::MAX,
                    minlen: minimum.unwrap_or(0).max(0) as u64,
                };
                // SAFETY: `f` is open for the call; `range` is a valid, writable fstrim_range.
                match unsafe { fitrim(f.as_raw_fd(), &mut range) } {
                    Ok(_) => {
                        r.minimum = Some(range.minlen as i64);
                        r.trimmed = Some(range.len as i64);
                    }
                    Err(nix::errno::Errno::ENOTTY) | Err(nix::errno::Errno::EOPNOTSUPP) => {
                        r.error = Some("trim not supported".into());
                    }
                    Err(e) => r.error = Some(format!("failed to trim: {}", errno_desc(e))),
                }
            }
        }
        paths.push(r);
    }
    TrimResponse { paths }
}

/// Where the block-device views of sysfs and udev are (injected by tests).
#[derive(Debug, Clone)]
pub struct BlockPaths {
    /// `/sys`.
    pub sys: PathBuf,
    /// udev's database (`/run/udev/data`).
    pub udev_data: PathBuf,
}

impl BlockPaths {
    fn uevent(&self, syspath: &Path) -> Vec<(String, String)> {
        fs::read_to_string(syspath.join("uevent"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// `/dev/<DEVNAME>` of a block device's sysfs directory.
    fn devnode(&self, syspath: &Path) -> Option<String> {
        self.uevent(syspath)
            .into_iter()
            .find(|(k, _)| k == "DEVNAME")
            .map(|(_, v)| format!("/dev/{v}"))
    }

    /// A property udev recorded for the device (`E:KEY=value` in its database entry).
    fn udev_property(&self, syspath: &Path, key: &str) -> Option<String> {
        let dev = fs::read_to_string(syspath.join("dev")).ok()?;
        let db = fs::read_to_string(self.udev_data.join(format!("b{}", dev.trim()))).ok()?;
        db.lines()
            .filter_map(|l| l.strip_prefix("E:"))
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty())
    }
}

fn is_virtual(syspath: &Path) -> bool {
    syspath
        .to_string_lossy()
        .contains("/devices/virtual/block/")
}

fn pci_driver(dir: &Path) -> Option<String> {
    fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn parse_pci(s: &str) -> Option<[i64; 4]> {
    // dddd:bb:ss.f
    let (dom, rest) = s.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (slot, func) = rest.split_once('.')?;
    Some([
        i64::from_str_radix(dom, 16).ok()?,
        i64::from_str_radix(bus, 16).ok()?,
        i64::from_str_radix(slot, 16).ok()?,
        i64::from_str_radix(func, 16).ok()?,
    ])
}

/// `host<N>` / `ata<N>` siblings of a component, sorted (qemu-ga's bus numbering).
fn hosts(dir: &Path, prefix: &str) -> Vec<u32> {
    let mut v: Vec<u32> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// SCSI `target*:C:T:L` → (C? no: channel, target, lun) after the `targetH:C:T` component.
fn scsi_hctl(syspath: &str) -> Option<[u32; 3]> {
    let i = syspath.find("/target")?;
    let rest = &syspath[i + 1..];
    let mut comps = rest.split('/');
    comps.next()?; // targetH:C:T
    let hctl = comps.next()?; // H:C:T:L
    let v: Vec<u32> = hctl.split(':').filter_map(|x| x.parse().ok()).collect();
    (v.len() == 4).then(|| [v[1], v[2], v[3]])
}

/// The hardware address of a real (non-virtual) block device, as far as its sysfs path tells.
fn real_device_address(bp: &BlockPaths, syspath: &Path) -> Option<DiskAddress> {
    let s = syspath.to_string_lossy().into_owned();
    let mut a = DiskAddress {
        pci_controller: PciAddress::NONE,
        bus_type: "unknown".into(),
        bus: 0,
        target: 0,
        unit: 0,
        serial: bp.udev_property(syspath, "ID_SERIAL"),
        dev: bp.devnode(syspath),
    };
    let known = if let Some(i) = s.find("/devices/pci") {
        // /devices/pciDDDD:BB/DDDD:BB:SS.F[/DDDD:BB:SS.F…]/…: the first function whose driver
        // is a storage controller.
        let rest = &s[i + "/devices/".len()..];
        let comps: Vec<&str> = rest.split('/').collect();
        let mut path = PathBuf::from(&s[..i + "/devices/".len()]);
        path.push(comps[0]);
        let mut found = None;
        for c in &comps[1..] {
            let Some(addr) = parse_pci(c) else { break };
            path.push(c);
            if let Some(d) = pci_driver(&path).filter(|d| {
                matches!(
                    d.as_str(),
                    "ata_piix"
                        | "sym53c8xx"
                        | "virtio-pci"
                        | "ahci"
                        | "nvme"
                        | "xhci_hcd"
                        | "ehci-pci"
                )
            }) {
                found = Some((addr, d));
                break;
            }
        }
        match found {
            None => false,
            Some((pci, driver)) => {
                let tgt = scsi_hctl(&s);
                let host_of = |prefix: &str| -> Option<(u32, Vec<u32>)> {
                    let j = s.find(&format!("/{prefix}"))?;
                    let n: u32 = s[j + 1 + prefix.len()..]
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()?;
                    Some((n, hosts(Path::new(&s[..j]), prefix)))
                };
                a.pci_controller = PciAddress {
                    domain: pci[0],
                    bus: pci[1],
                    slot: pci[2],
                    function: pci[3],
                };
                match driver.as_str() {
                    "ata_piix" => match (host_of("host"), tgt) {
                        (Some((h, hs)), Some(t)) => match hs.iter().position(|x| *x == h) {
                            Some(i) => {
                                a.bus_type = "ide".into();
                                a.bus = i as i64;
                                a.unit = i64::from(t[1]);
                                true
                            }
                            None => false,
                        },
                        _ => false,
                    },
                    "sym53c8xx" => match tgt {
                        Some(t) => {
                            a.bus_type = "scsi".into();
                            a.unit = i64::from(t[1]);
                            true
                        }
                        None => false,
                    },
                    "virtio-pci" => {
                        match tgt {
                            Some(t) => {
                                a.bus_type = "scsi".into();
                                a.unit = i64::from(t[2]);
                            }
                            None => a.bus_type = "virtio".into(),
                        }
                        true
                    }
                    "ahci" => match (host_of("ata"), tgt) {
                        (Some((h, hs)), Some(_)) => match hs.iter().position(|x| *x == h) {
                            Some(i) => {
                                a.bus_type = "sata".into();
                                a.unit = i as i64;
                                true
                            }
                            None => false,
                        },
                        _ => false,
                    },
                    "nvme" => {
                        a.bus_type = "nvme".into();
                        true
                    }
                    _ => {
                        a.bus_type = "usb".into();
                        true
                    }
                }
            }
        }
    } else if let Some(i) = s.find("/devices/vbd-") {
        // A Xen PV disk: /devices/vbd-<vdev>/block/xvdX. The virtual device number encodes
        // the disk index (xen-blkfront's rules): extended (bit 28): index << 8 | partition;
        // xvd (major 202): index << 4 | partition; sd (8): the same; hd (3, 22): two per major,
        // 64 minors each.
        let vdev: u64 = s[i + 13..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let index = if vdev & (1 << 28) != 0 {
            (vdev & !(1 << 28)) >> 8
        } else {
            let (major, minor) = (vdev >> 8, vdev & 0xff);
            match major {
                3 => minor >> 6,
                22 => 2 + (minor >> 6),
                _ => minor >> 4,
            }
        };
        a.bus_type = "xen".into();
        a.unit = index as i64;
        true
    } else {
        false
    };
    (known || a.dev.is_some() || a.serial.is_some()).then_some(a)
}

/// Disk addresses for a block device (`/sys/dev/block/M:m` or a `slaves/` link), following the
/// members of virtual devices (device-mapper, md) down to real disks.
fn addresses_for(bp: &BlockPaths, devpath: &Path, out: &mut Vec<DiskAddress>, depth: u32) {
    let Ok(syspath) = fs::canonicalize(devpath) else {
        return;
    };
    if is_virtual(&syspath) {
        if depth > 16 {
            return;
        }
        let Ok(rd) = fs::read_dir(syspath.join("slaves")) else {
            return;
        };
        let mut slaves: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        slaves.sort();
        for s in slaves {
            addresses_for(bp, &s, out, depth + 1);
        }
    } else if let Some(a) = real_device_address(bp, &syspath) {
        out.push(a);
    }
}

fn statvfs_bytes(dir: &str) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let fr = s.fragment_size() as u64;
    let used = (s.blocks() as u64).saturating_sub(s.blocks_free() as u64);
    Some((used * fr, (used + s.blocks_available() as u64) * fr))
}

/// `guest-get-fsinfo`.
pub fn fsinfo(bp: &BlockPaths, mounts: &[Mount]) -> Vec<FilesystemInfo> {
    mounts
        .iter()
        .map(|m| {
            let devpath = bp.sys.join(format!("dev/block/{}:{}", m.major, m.minor));
            let name = fs::canonicalize(&devpath)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| format!("{}:{}", m.major, m.minor));
            let mut disk = Vec::new();
            addresses_for(bp, &devpath, &mut disk, 0);
            let bytes = statvfs_bytes(&m.dir);
            FilesystemInfo {
                name,
                mountpoint: m.dir.clone(),
                fs_type: m.fstype.clone(),
                used_bytes: bytes.map(|b| b.0),
                total_bytes: bytes.map(|b| b.1),
                disk,
            }
        })
        .collect()
}

fn is_partition_of(disk: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(disk) else {
        return false;
    };
    let rest = rest
        .strip_prefix('p')
        .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(rest);
    rest.starts_with(|c: char| c.is_ascii_digit())
}

/// `guest-get-disks`: every block device of non-zero size, then its partitions.
pub fn disks(bp: &BlockPaths) -> Result<Vec<DiskInfo>, ErrorBody> {
    let block = bp.sys.join("block");
    let rd = fs::read_dir(&block).map_err(|e| {
        ErrorBody::generic(format!("Can't open directory \"{}\": {e}", block.display()))
    })?;
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let dir = block.join(&name);
        if fs::read_to_string(dir.join("size")).map_or(true, |s| s.trim() == "0") {
            continue;
        }
        let Some(dev) = bp.devnode(&dir) else {
            continue;
        };
        let syspath = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        let address = if is_virtual(&syspath) {
            None
        } else {
            real_device_address(bp, &syspath)
        };
        let dependencies = fs::read_dir(dir.join("slaves")).ok().map(|rd| {
            let mut d: Vec<String> = rd.flatten().filter_map(|e| bp.devnode(&e.path())).collect();
            d.sort();
            d
        });
        out.push(DiskInfo {
            name: dev.clone(),
            partition: false,
            dependencies,
            address,
            alias: bp.udev_property(&syspath, "DM_NAME"),
        });
        let mut parts: Vec<PathBuf> = fs::read_dir(&syspath)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| is_partition_of(&name, n))
            })
            .map(|e| e.path())
            .collect();
        parts.sort();
        for p in parts {
            if let Some(pdev) = bp.devnode(&p) {
                out.push(DiskInfo {
                    name: pdev,
                    partition: true,
                    dependencies: Some(vec![dev.clone()]),
                    address: None,
                    alias: None,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_keeps_local_filesystems() {
        let t = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                 27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                 40 27 254:1 / /srv/my\\040data rw shared:1 - xfs /dev/vdb rw\n\
                 41 27 0:44 / /mnt/nfs rw - nfs4 srv:/x rw\n\
                 garbage\n";
        let m = parse_mountinfo(t);
        assert_eq!(
            m.iter().map(|m| m.dir.as_str()).collect::<Vec<_>>(),
            vec!["/", "/srv/my data"]
        );
        assert_eq!(
            (m[1].major, m[1].minor, m[1].fstype.as_str()),
            (254, 1, "xfs")
        );
        assert_eq!(unescape("a\\\\b\\011c"), "a\\b\tc");
    }

    #[test]
    fn partitions_and_pci() {
        assert!(is_partition_of("vda", "vda1"));
        assert!(is_partition_of("nvme0n1", "nvme0n1p2"));
        assert!(!is_partition_of("vda", "vdab"));
        assert_eq!(parse_pci("0000:00:1f.2"), Some([0, 0, 0x1f, 2]));
        assert_eq!(
            scsi_hctl(
                "/sys/devices/pci0000:00/0000:00:05.0/virtio2/host2/target2:0:0/2:0:0:3/block/sda"
            ),
            Some([0, 0, 3])
        );
    }

    #[test]
    fn xen_disk_indexes_from_a_fake_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("devices/vbd-51728/block/xvdb");
        fs::create_dir_all(&dev).unwrap();
        fs::write(
            dev.join("uevent"),
            "MAJOR=202\nMINOR=16\nDEVNAME=xvdb\nDEVTYPE=disk\n",
        )
        .unwrap();
        fs::write(dev.join("dev"), "202:16\n").unwrap();
        let bp = BlockPaths {
            sys: t.path().to_path_buf(),
            udev_data: t.path().join("udev"),
        };
        fs::create_dir_all(&bp.udev_data).unwrap();
        fs::write(
            bp.udev_data.join("b202:16"),
            "S:disk/by-id/x\nE:ID_SERIAL=vol-7\n",
        )
        .unwrap();
        let a = real_device_address(&bp, &dev).unwrap();
        assert_eq!(a.bus_type, "xen");
        assert_eq!(a.unit, 1);
        assert_eq!(a.pci_controller, PciAddress::NONE);
        assert_eq!(a.dev.as_deref(), Some("/dev/xvdb"));
        assert_eq!(a.serial.as_deref(), Some("vol-7"));
    }
}
