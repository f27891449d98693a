//! Gathering the facts the sharing check decides on: sysfs topology, dom0 mounts and swap areas,
//! loop devices, and the other backends and domains in xenstore.
//!
//! Every host path is injected through [`HostPaths`] so the gathering runs against fixture trees
//! in unit tests. The xenstore part only reads what can matter: every backend's
//! `physical-device` (one read per backend), then `mode` and the domain identities only for the
//! backends that use a conflicting device.

use crate::devnum::DevNum;
use crate::loopdev::{Backing, LoopOps, LoopStatus};
use crate::sharing::{
    conflict_set, BackendFact, DomainIdentity, Frontend, Mode, MountFact, SharingFacts, Subject,
    Topology,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use xenplug_xenstore::{Errno, XsError, XsOps};

/// Where the host's kernel interfaces live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// `/proc/swaps`.
    pub swaps: PathBuf,
    /// sysfs mount point (`/sys`).
    pub sys: PathBuf,
    /// Prefix for the device paths named in mountinfo and /proc/swaps (`/`).
    pub root: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            mountinfo: "/proc/self/mountinfo".into(),
            swaps: "/proc/swaps".into(),
            sys: "/sys".into(),
            root: "/".into(),
        }
    }
}

impl HostPaths {
    /// All paths under a fixture root: `<root>/proc/self/mountinfo`, `<root>/proc/swaps`,
    /// `<root>/sys`, and device paths resolved under `<root>`.
    pub fn under(root: &Path) -> Self {
        HostPaths {
            mountinfo: root.join("proc/self/mountinfo"),
            swaps: root.join("proc/swaps"),
            sys: root.join("sys"),
            root: root.to_path_buf(),
        }
    }

    fn host_path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

/// Undo the octal escapes (`\040` for space, …) the kernel uses in mountinfo and /proc/swaps.
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Field 3: the `st_dev` of files on the mount.
    pub devnum: DevNum,
    /// The mount source (after ` - fstype`), unescaped.
    pub source: String,
    /// The superblock is read-write (a read-only bind mount of a read-write superblock still
    /// writes the device).
    pub writable: bool,
}

/// Parse `/proc/self/mountinfo`; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let lf: Vec<&str> = left.split(' ').collect();
        let rf: Vec<&str> = right.split(' ').collect();
        if lf.len() < 6 || rf.len() < 3 {
            continue;
        }
        let Some(devnum) = DevNum::parse_decimal(lf[2]) else {
            continue;
        };
        let opt_rw = |opts: &str| opts.split(',').any(|o| o == "rw");
        // Superblock options decide; fall back to the per-mount ones if they say nothing.
        let sb = rf[2];
        let writable = if sb.split(',').any(|o| o == "rw" || o == "ro") {
            opt_rw(sb)
        } else {
            opt_rw(lf[5])
        };
        out.push(MountEntry {
            devnum,
            source: unescape_octal(rf[1]),
            writable,
        });
    }
    out
}

/// One active swap area from `/proc/swaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapEntry {
    /// The swap device or file, unescaped.
    pub path: String,
    /// `partition` (a block device) rather than `file`.
    pub partition: bool,
}

/// Parse `/proc/swaps` (header line skipped).
pub fn parse_swaps(text: &str) -> Vec<SwapEntry> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            // Fields are separated by spaces and tabs only: the kernel escapes just those (and
            // newline and backslash) in the path, so another blank (form feed, …) is part of it.
            let mut f = l.split([' ', '\t']).filter(|f| !f.is_empty());
            let path = f.next()?;
            let kind = f.next()?;
            Some(SwapEntry {
                path: unescape_octal(path),
                partition: kind == "partition",
            })
        })
        .collect()
}

fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match read_proc(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The device number of a block device node, if `path` is one.
pub fn block_rdev(path: &Path) -> Option<DevNum> {
    let m = std::fs::metadata(path).ok()?;
    m.file_type()
        .is_block_device()
        .then(|| DevNum::from_dev_t(m.rdev()))
}

/// Read a whole (proc) file with a large buffer: proc files report size 0, and growing a
/// small buffer costs a system call per doubling.
fn read_proc(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(64 * 1024);
    std::fs::File::open(path)?.read_to_end(&mut buf)?;
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// dom0's mounts as facts: each mount's device number, plus the source's device number when
/// the source is a block device with another number (btrfs and others report an anonymous
/// `st_dev`).
pub fn gather_mounts(paths: &HostPaths) -> io::Result<Vec<MountFact>> {
    let text = read_proc(&paths.mountinfo)?;
    let mut out = Vec::new();
    for e in parse_mountinfo(&text) {
        out.push(MountFact {
            devnum: e.devnum,
            writable: e.writable,
        });
        if e.source.starts_with('/') {
            if let Some(d) = block_rdev(&paths.host_path(&e.source)) {
                if d != e.devnum {
                    out.push(MountFact {
                        devnum: d,
                        writable: e.writable,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Active swap partitions.
pub fn gather_swaps(paths: &HostPaths) -> io::Result<Vec<DevNum>> {
    let Some(text) = read_optional(&paths.swaps)? else {
        return Ok(Vec::new());
    };
    Ok(parse_swaps(&text)
        .into_iter()
        .filter(|s| s.partition)
        .filter_map(|s| block_rdev(&paths.host_path(&s.path)))
        .collect())
}

fn read_devnum(dir: &Path) -> Option<DevNum> {
    DevNum::parse_decimal(&std::fs::read_to_string(dir.join("dev")).ok()?)
}

fn list_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

/// sysfs views of block devices.
struct Sysfs<'a> {
    sys: &'a Path,
}

impl Sysfs<'_> {
    fn class_dir(&self, name: &str) -> PathBuf {
        self.sys.join("class/block").join(name)
    }

    /// The kernel name (`sda1`, `dm-0`) of a device number.
    fn name_of(&self, d: DevNum) -> Option<String> {
        let link = self.sys.join("dev/block").join(d.decimal());
        let target = std::fs::read_link(&link)
            .ok()
            .or_else(|| std::fs::canonicalize(&link).ok())?;
        Some(target.file_name()?.to_str()?.to_string())
    }

    /// Partitions and holders.
    fn children(&self, name: &str) -> Vec<(String, DevNum)> {
        let dir = self.class_dir(name);
        let mut out = Vec::new();
        let real = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
        // Partitions are named after their disk (sda1, nvme0n1p1, loop0p1).
        for sub in list_names(&real)
            .into_iter()
            .filter(|s| s.starts_with(name))
        {
            let p = real.join(&sub);
            if p.join("partition").is_file() {
                if let Some(d) = read_devnum(&p) {
                    out.push((sub, d));
                }
            }
        }
        for h in list_names(&dir.join("holders")) {
            if let Some(d) = read_devnum(&self.class_dir(&h)) {
                out.push((h, d));
            }
        }
        out
    }

    /// The disk of a partition, and slaves.
    fn parents(&self, name: &str) -> Vec<(String, DevNum)> {
        let dir = self.class_dir(name);
        let mut out = Vec::new();
        if dir.join("partition").is_file() {
            if let Ok(real) = std::fs::canonicalize(&dir) {
                if let Some(parent) = real.parent() {
                    if let (Some(d), Some(n)) = (
                        read_devnum(parent),
                        parent.file_name().and_then(|n| n.to_str()),
                    ) {
                        out.push((n.to_string(), d));
                    }
                }
            }
        }
        for s in list_names(&dir.join("slaves")) {
            if let Some(d) = read_devnum(&self.class_dir(&s)) {
                out.push((s, d));
            }
        }
        out
    }
}

/// The topology around `roots`: everything reachable through partitions/holders (down) and
/// parent disk/slaves (up). Devices sysfs does not know are left alone.
pub fn gather_topology(sys: &Path, roots: &[DevNum]) -> Topology {
    let fs = Sysfs { sys };
    let mut topo = Topology::default();
    for &root in roots {
        let Some(name) = fs.name_of(root) else {
            continue;
        };
        // Down.
        let mut seen = BTreeSet::from([name.clone()]);
        let mut queue = VecDeque::from([(name.clone(), root)]);
        while let Some((n, d)) = queue.pop_front() {
            for (cn, cd) in fs.children(&n) {
                topo.link(d, cd);
                if seen.insert(cn.clone()) {
                    queue.push_back((cn, cd));
                }
            }
        }
        // Up.
        let mut seen = BTreeSet::from([name.clone()]);
        let mut queue = VecDeque::from([(name, root)]);
        while let Some((n, d)) = queue.pop_front() {
            for (pn, pd) in fs.parents(&n) {
                topo.link(pd, d);
                if seen.insert(pn.clone()) {
                    queue.push_back((pn, pd));
                }
            }
        }
    }
    topo
}

/// The loop devices backed by the file with identity `backing`.
pub fn loops_backed_by(loops: &[LoopStatus], backing: Backing) -> Vec<DevNum> {
    loops
        .iter()
        .filter(|l| l.backing == backing)
        .map(|l| l.devnum)
        .collect()
}

/// A read for `xenstore_read_default`: a missing node or any error the daemon reports (e.g.
/// EACCES in a driver domain) gives `None`; a broken connection is an error.
fn read_soft(xs: &dyn XsOps, path: &str) -> Result<Option<String>, XsError> {
    match xs.read(path) {
        Ok(v) => Ok(v),
        Err(XsError::Daemon { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn directory_soft(xs: &dyn XsOps, path: &str) -> Result<Vec<String>, XsError> {
    match xs.directory(path) {
        Ok(v) => Ok(v),
        Err(XsError::Daemon { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// [`read_soft`] that also says whether xenstored refused the read (`EACCES`/`EPERM`: the node
/// is there for other domains only, as another domain's `vm` is for a driver domain).
fn read_reach(xs: &dyn XsOps, path: &str) -> Result<(Option<String>, bool), XsError> {
    match xs.read(path) {
        Ok(v) => Ok((v, false)),
        Err(XsError::Daemon { errno, .. }) => {
            Ok((None, matches!(errno, Errno::EACCES | Errno::EPERM)))
        }
        Err(e) => Err(e),
    }
}

/// The identity of domain `domid` for `same_vm` (`hidden` when xenstored refused to show it).
pub fn domain_identity(xs: &dyn XsOps, domid: &str) -> Result<DomainIdentity, XsError> {
    let (vm, hidden_vm) = read_reach(xs, &format!("/local/domain/{domid}/vm"))?;
    let (target, hidden_target) = read_reach(xs, &format!("/local/domain/{domid}/target"))?;
    let (target_vm, hidden_target_vm) = match target.filter(|t| !t.is_empty()) {
        Some(t) => read_reach(xs, &format!("/local/domain/{t}/vm"))?,
        None => (None, false),
    };
    Ok(DomainIdentity {
        vm,
        target_vm,
        hidden: hidden_vm || hidden_target || hidden_target_vm,
    })
}

/// The frontend's identity: `FRONTEND_UUID` (default `unknown`) and its target's vm.
pub fn frontend_identity(xs: &dyn XsOps, frontend_id: &str) -> Result<Frontend, XsError> {
    let id = domain_identity(xs, frontend_id)?;
    Ok(Frontend {
        uuid: id.vm.unwrap_or_else(|| "unknown".into()),
        target_vm: id.target_vm,
        hidden: id.hidden,
    })
}

/// Every backend under `base` (`backend/<XENBUS_TYPE>`) except `own` (`(domid, devid)`), with its
/// `physical-device`.
pub fn gather_backends(
    xs: &dyn XsOps,
    base: &str,
    own: Option<(&str, &str)>,
) -> Result<Vec<BackendFact>, XsError> {
    // Three batched steps (domains, their devices, the devices' physical-device), each one
    // round trip on a daemon connection however many backends exist.
    let doms = directory_soft(xs, base)?;
    let dom_paths: Vec<String> = doms.iter().map(|d| format!("{base}/{d}")).collect();
    let devs = directory_soft_many(xs, &dom_paths)?;
    let mut keys = Vec::new();
    for (dom, devs) in doms.into_iter().zip(devs) {
        for dev in devs {
            if own != Some((dom.as_str(), dev.as_str())) {
                keys.push((dom.clone(), dev));
            }
        }
    }
    let paths: Vec<String> = keys
        .iter()
        .map(|(dom, dev)| format!("{base}/{dom}/{dev}/physical-device"))
        .collect();
    let pds = read_soft_many(xs, &paths)?;
    Ok(keys
        .into_iter()
        .zip(pds)
        .map(|((domid, devid), pd)| BackendFact {
            physical_device: pd.as_deref().and_then(DevNum::parse_hex),
            domid,
            devid,
            mode: None,
        })
        .collect())
}

/// [`read_soft`] of many paths, batched; if the daemon refuses any of them, path by path.
fn read_soft_many(xs: &dyn XsOps, paths: &[String]) -> Result<Vec<Option<String>>, XsError> {
    match xs.read_many(paths) {
        Err(XsError::Daemon { .. }) => paths.iter().map(|p| read_soft(xs, p)).collect(),
        other => other,
    }
}

/// [`directory_soft`] of many paths, batched; if the daemon refuses any, path by path.
fn directory_soft_many(xs: &dyn XsOps, paths: &[String]) -> Result<Vec<Vec<String>>, XsError> {
    match xs.directory_many(paths) {
        Ok(lists) => Ok(lists.into_iter().map(Option::unwrap_or_default).collect()),
        Err(XsError::Daemon { .. }) => paths.iter().map(|p| directory_soft(xs, p)).collect(),
        Err(e) => Err(e),
    }
}

/// What is needed besides xenstore and the loop devices.
#[derive(Debug, Clone)]
pub struct SharingRequest<'a> {
    /// The canonical mode.
    pub mode: Mode,
    /// A device (path, number) or a file (canonical path, identity).
    pub target: Target<'a>,
    /// `backend/<XENBUS_TYPE>`.
    pub backend_base: &'a str,
    /// This backend's `(frontend domid, devid)`, excluded from the scan.
    pub own: Option<(&'a str, &'a str)>,
    /// `frontend-id`.
    pub frontend_id: &'a str,
}

/// The subject of a [`SharingRequest`].
#[derive(Debug, Clone)]
pub enum Target<'a> {
    /// A block device.
    Device(&'a Path, DevNum),
    /// A regular file.
    File(&'a Path, Backing),
}

/// A failure to gather.
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    /// Host interfaces.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// Loop devices.
    #[error(transparent)]
    Loop(#[from] crate::loopdev::LoopError),
    /// xenstore.
    #[error(transparent)]
    Xs(#[from] XsError),
}

/// Gather every fact [`crate::sharing::decide`] needs for `req`. Nothing is gathered for mode
/// `!`, and only the loop list for a file no loop device is backed by.
pub fn gather_sharing(
    req: &SharingRequest<'_>,
    host: &HostPaths,
    loops: &dyn LoopOps,
    xs: &dyn XsOps,
) -> Result<SharingFacts, GatherError> {
    let subject = match &req.target {
        Target::Device(p, d) => Subject::Device {
            path: p.to_path_buf(),
            devnum: *d,
        },
        Target::File(p, backing) => {
            let found = if req.mode == Mode::Unchecked {
                Vec::new()
            } else {
                loops_backed_by(&loops.list()?, *backing)
            };
            Subject::File {
                path: p.to_path_buf(),
                loops: found,
            }
        }
    };
    let mut facts = SharingFacts {
        mode: req.mode,
        subject,
        topology: Topology::default(),
        mounts: Vec::new(),
        swaps: Vec::new(),
        backends: Vec::new(),
        frontend: Frontend::default(),
        domains: BTreeMap::new(),
    };
    let roots = match &facts.subject {
        Subject::Device { devnum, .. } => vec![*devnum],
        Subject::File { loops, .. } => loops.clone(),
    };
    if req.mode == Mode::Unchecked || roots.is_empty() {
        return Ok(facts);
    }
    facts.topology = gather_topology(&host.sys, &roots);
    facts.mounts = gather_mounts(host).map_err(|source| GatherError::Io {
        what: format!("cannot read {}", host.mountinfo.display()),
        source,
    })?;
    facts.swaps = gather_swaps(host).map_err(|source| GatherError::Io {
        what: format!("cannot read {}", host.swaps.display()),
        source,
    })?;
    // dom0's own use is checked first and settles the question: no need to scan xenstore.
    if crate::sharing::decide(&facts) != crate::sharing::Verdict::Ok {
        return Ok(facts);
    }
    facts.backends = gather_backends(xs, req.backend_base, req.own)?;
    let set = conflict_set(&facts.subject, &facts.topology);
    let matched: Vec<(usize, String)> = facts
        .backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.physical_device.is_some_and(|d| set.contains(&d)))
        .map(|(i, b)| (i, b.domid.clone()))
        .collect();
    if matched.is_empty() {
        return Ok(facts);
    }
    facts.frontend = frontend_identity(xs, req.frontend_id)?;
    for (i, domid) in matched {
        if req.mode == Mode::Read {
            let b = &facts.backends[i];
            let mode = read_soft(
                xs,
                &format!("{}/{}/{}/mode", req.backend_base, b.domid, b.devid),
            )?;
            facts.backends[i].mode = mode;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = facts.domains.entry(domid) {
            let id = domain_identity(xs, slot.key())?;
            slot.insert(id);
        }
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn mountinfo_parsing() {
        let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
36 35 7:0 / /mnt/a\\040b rw,noatime shared:1 - ext2 /dev/loop0 rw,errors=continue
37 35 7:1 / /mnt/ro ro,relatime - ext4 /dev/loop1 ro
38 35 7:2 / /mnt/bind ro,relatime - ext4 /dev/loop2 rw
garbage line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].devnum, DevNum::new(7, 0));
        assert_eq!(m[1].source, "/dev/loop0");
        assert!(m[1].writable);
        assert!(!m[2].writable);
        // A read-only bind of a read-write superblock: the device is still written.
        assert!(m[3].writable);
    }

    #[test]
    fn swaps_parsing_and_unescape() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
/dev/dm-1                               partition\t8388604\t\t0\t\t-2\n\
/swap\\040file                               file\t\t1024\t\t0\t\t-3\n";
        let s = parse_swaps(text);
        assert_eq!(
            s,
            vec![
                SwapEntry {
                    path: "/dev/dm-1".into(),
                    partition: true
                },
                SwapEntry {
                    path: "/swap file".into(),
                    partition: false
                }
            ]
        );
        assert_eq!(unescape_octal("a\\011b\\"), "a\tb\\");
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    /// sda (8:0) with partitions sda1 (8:1), sda2 (8:2); sda2 holds dm-0 (254:0); md0 (9:0) on
    /// sda1 and loop0 (7:0).
    fn fixture() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let devices = sys.join("devices/virtual/block");
        let sda = sys.join("devices/pci/block/sda");
        write(&sda.join("dev"), "8:0\n");
        write(&sda.join("sda1/dev"), "8:1\n");
        write(&sda.join("sda1/partition"), "1\n");
        write(&sda.join("sda2/dev"), "8:2\n");
        write(&sda.join("sda2/partition"), "2\n");
        std::fs::create_dir_all(sda.join("holders")).unwrap();
        std::fs::create_dir_all(sda.join("sda2/holders/dm-0")).unwrap();
        std::fs::create_dir_all(sda.join("sda1/holders/md0")).unwrap();
        write(&devices.join("dm-0/dev"), "254:0\n");
        std::fs::create_dir_all(devices.join("dm-0/slaves/sda2")).unwrap();
        write(&devices.join("md0/dev"), "9:0\n");
        std::fs::create_dir_all(devices.join("md0/slaves/sda1")).unwrap();
        std::fs::create_dir_all(devices.join("md0/slaves/loop0")).unwrap();
        write(&devices.join("loop0/dev"), "7:0\n");
        std::fs::create_dir_all(devices.join("loop0/holders/md0")).unwrap();
        let class = sys.join("class/block");
        let devblock = sys.join("dev/block");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::create_dir_all(&devblock).unwrap();
        for (name, target, num) in [
            ("sda", sda.clone(), "8:0"),
            ("sda1", sda.join("sda1"), "8:1"),
            ("sda2", sda.join("sda2"), "8:2"),
            ("dm-0", devices.join("dm-0"), "254:0"),
            ("md0", devices.join("md0"), "9:0"),
            ("loop0", devices.join("loop0"), "7:0"),
        ] {
            symlink(&target, class.join(name)).unwrap();
            symlink(&target, devblock.join(num)).unwrap();
        }
        write(
            &t.path().join("proc/self/mountinfo"),
            "30 1 9:0 / /data rw - ext4 /dev/md0 rw\n",
        );
        write(
            &t.path().join("proc/swaps"),
            "Filename Type Size Used Priority\n/dev/dm-0 partition 1 0 -2\n",
        );
        t
    }

    #[test]
    fn topology_from_sysfs_fixture() {
        let t = fixture();
        let sys = t.path().join("sys");
        let topo = gather_topology(&sys, &[DevNum::new(8, 0)]);
        let rel = topo.related(&[DevNum::new(8, 0)]);
        let want: BTreeSet<DevNum> = [(8, 0), (8, 1), (8, 2), (254, 0), (9, 0)]
            .into_iter()
            .map(|(a, b)| DevNum::new(a, b))
            .collect();
        assert_eq!(rel, want);
        // From a partition: its holder and its disk, not its sibling.
        let topo = gather_topology(&sys, &[DevNum::new(8, 2)]);
        let rel = topo.related(&[DevNum::new(8, 2)]);
        let want: BTreeSet<DevNum> = [(8, 0), (8, 2), (254, 0)]
            .into_iter()
            .map(|(a, b)| DevNum::new(a, b))
            .collect();
        assert_eq!(rel, want);
        // From loop0: md0 built on it, and md0's other slave is not included.
        let topo = gather_topology(&sys, &[DevNum::new(7, 0)]);
        let rel = topo.related(&[DevNum::new(7, 0)]);
        assert_eq!(rel.len(), 2);
        assert!(rel.contains(&DevNum::new(9, 0)));
        // Unknown device: no links.
        let topo = gather_topology(&sys, &[DevNum::new(1, 1)]);
        assert_eq!(topo, Topology::default());
    }

    #[test]
    fn mounts_and_swaps_from_fixture() {
        let t = fixture();
        let host = HostPaths::under(t.path());
        let mounts = gather_mounts(&host).unwrap();
        assert_eq!(
            mounts,
            vec![MountFact {
                devnum: DevNum::new(9, 0),
                writable: true
            }]
        );
        // The fixture's /dev/dm-0 is no device node, so it cannot be resolved.
        assert_eq!(gather_swaps(&host).unwrap(), vec![]);
        let missing = HostPaths::under(&t.path().join("nothing"));
        assert_eq!(gather_swaps(&missing).unwrap(), vec![]);
        assert!(gather_mounts(&missing).is_err());
    }

    #[test]
    fn decision_on_fixture_topology() {
        use crate::sharing::{decide, Verdict};
        let t = fixture();
        let host = HostPaths::under(t.path());
        // Whole disk sda requested w: md0 (built on sda1) is mounted in dom0.
        let root = DevNum::new(8, 0);
        let facts = SharingFacts {
            mode: Mode::Write,
            subject: Subject::Device {
                path: "/dev/sda".into(),
                devnum: root,
            },
            topology: gather_topology(&host.sys, &[root]),
            mounts: gather_mounts(&host).unwrap(),
            swaps: vec![],
            backends: vec![],
            frontend: Frontend::default(),
            domains: BTreeMap::new(),
        };
        assert_eq!(decide(&facts), Verdict::Local(DevNum::new(9, 0)));
    }

    // Found by fuzzing (fuzz target proc_swaps): a swap file whose name has a form feed (which
    // the kernel does not escape) was cut at it.
    #[test]
    fn swaps_split_on_spaces_and_tabs_only() {
        let text = "Filename\tType\tSize\tUsed\tPriority\n/swap\x0cfile\tfile\t10\t0\t-2\n";
        let e = parse_swaps(text);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "/swap\x0cfile");
        assert!(!e[0].partition);
    }
}
