//! The sharing check (`check_sharing` in Xen's `block`), done right, as a pure planner.
//!
//! Inputs are plain facts gathered elsewhere ([`crate::gather`]): the requested device or file,
//! the loop devices backed by the same file, the block-device topology around them (partitions,
//! device-mapper/md holders, parent disks, slaves), dom0's mounts and swap areas, and the other
//! backends of the same kind in xenstore with the identities of their domains. [`decide`] returns
//! a [`Verdict`]; [`busy_message`] turns a conflict into the reference's exact message.
//!
//! Rules (docs/hotplug-scripts.md, "The sharing check"; upstream's bugs fixed, see DIFFERENCES.md):
//! * Mode `!` skips the check entirely ([`Mode::Unchecked`]).
//! * A **file** is in use only through loop devices whose backing file has the same
//!   `(st_dev, st_ino)`; when there is none the answer is [`Verdict::Ok`] at once. (Upstream
//!   compares a hex `st_dev` with `losetup -a`'s decimal one, so on current util-linux the check
//!   never fires.)
//! * The devices considered are the device itself (or those loop devices) plus everything built
//!   on them or containing them: partitions, holders (dm, md, …) transitively, the parent disk of
//!   a partition and the slaves of a holder. Upstream looked at the exact device only.
//! * **Local**: one of those is mounted in dom0 (any mount for `w`; a read-write superblock for
//!   `r`) or is an active swap area.
//! * **Guest**: another backend of the same kind (`backend/<XENBUS_TYPE>/*/*`) has one of those as
//!   `physical-device` and belongs to a different VM: for `w` any such backend conflicts; for `r`
//!   only one whose `mode` canonicalises to `w`. So `w` is exclusive across VMs and `r` shares
//!   with `r`.
//! * "Different VM" is `same_vm` as fixed in Xen 4.19 / 4.17.5 (a device-model stubdom and its
//!   target are the same VM); additionally an empty string never equals anything, so two domains
//!   that both lack a value are not taken for the same VM.
//! * In a driver domain the `vm` nodes are out of reach (libxl 4.17 gives `/local/domain/<d>/vm`
//!   to dom0 and the domain only). An identity that could not be read is unknown, and an unknown
//!   identity is never the same VM: a device in read-write use by another domain is refused
//!   there even when both domains belong to one VM (what a driver domain loses: same-VM
//!   sharing). The reference defaults both sides to `unknown`, takes `unknown` = `unknown` for
//!   the same VM, and so lets any two guests of a driver domain share a device read-write.

use crate::devnum::DevNum;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// A canonical access mode (`canonicalise_mode` in block-common.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `r`: read-only; may share with other readers.
    Read,
    /// `w`: read-write; exclusive.
    Write,
    /// `!`: read-write without any sharing check (`w!`, `rw!`).
    Unchecked,
}

impl Mode {
    /// No `w` gives `r`; `w` without `!` gives `w`; `w` and `!` give `!`. So `r`/`ro` → `r`,
    /// `w`/`rw` → `w`, `w!`/`rw!` → `!`; anything else without a `w` (including "") → `r`.
    pub fn canonicalise(mode: &str) -> Mode {
        if !mode.contains('w') {
            Mode::Read
        } else if !mode.contains('!') {
            Mode::Write
        } else {
            Mode::Unchecked
        }
    }

    /// Strict parsing for the backend's own `mode`: one of `r`, `ro`, `w`, `rw`, `w!`, `rw!`.
    /// (libxl writes only `r` or `w`; the reference canonicalises anything, so garbage becomes a
    /// silent read-only attach.)
    pub fn parse_strict(mode: &str) -> Option<Mode> {
        matches!(mode, "r" | "ro" | "w" | "rw" | "w!" | "rw!").then(|| Mode::canonicalise(mode))
    }

    /// The canonical letter.
    pub fn letter(self) -> &'static str {
        match self {
            Mode::Read => "r",
            Mode::Write => "w",
            Mode::Unchecked => "!",
        }
    }

    /// True unless the mode is `r`.
    pub fn writable(self) -> bool {
        !matches!(self, Mode::Read)
    }
}

/// What is being attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A block device (the resolved path, used in messages).
    Device {
        /// The resolved device path.
        path: PathBuf,
        /// Its device number.
        devnum: DevNum,
    },
    /// A regular file (the canonical path, used in messages).
    File {
        /// The canonical file path.
        path: PathBuf,
        /// Loop devices currently backed by this very file (same `st_dev`, `st_ino`), in loop
        /// number order.
        loops: Vec<DevNum>,
    },
}

/// Block devices related through sysfs: a device's children are its partitions and holders; its
/// parents are the disk of a partition and the slaves of a holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Partitions and holders of each device.
    pub children: BTreeMap<DevNum, BTreeSet<DevNum>>,
    /// Parent disk and slaves of each device.
    pub parents: BTreeMap<DevNum, BTreeSet<DevNum>>,
}

impl Topology {
    /// Record that `child` is a partition or holder of `parent`.
    pub fn link(&mut self, parent: DevNum, child: DevNum) {
        self.children.entry(parent).or_default().insert(child);
        self.parents.entry(child).or_default().insert(parent);
    }

    fn walk(map: &BTreeMap<DevNum, BTreeSet<DevNum>>, start: DevNum, out: &mut BTreeSet<DevNum>) {
        let mut queue = VecDeque::from([start]);
        while let Some(d) = queue.pop_front() {
            for &n in map.get(&d).into_iter().flatten() {
                if out.insert(n) {
                    queue.push_back(n);
                }
            }
        }
    }

    /// `roots`, everything built on them (transitively) and everything they are built on
    /// (transitively). Siblings (another partition of the same disk, another LV of the same PV)
    /// are not included.
    pub fn related(&self, roots: &[DevNum]) -> BTreeSet<DevNum> {
        let mut out: BTreeSet<DevNum> = roots.iter().copied().collect();
        for &r in roots {
            let mut down = BTreeSet::new();
            Self::walk(&self.children, r, &mut down);
            let mut up = BTreeSet::new();
            Self::walk(&self.parents, r, &mut up);
            out.extend(down);
            out.extend(up);
        }
        out
    }
}

/// One dom0 mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountFact {
    /// The device the filesystem lives on.
    pub devnum: DevNum,
    /// The superblock is read-write.
    pub writable: bool,
}

/// Identity of a domain for `same_vm`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainIdentity {
    /// `/local/domain/<d>/vm`, if present.
    pub vm: Option<String>,
    /// `/local/domain/<target>/vm` where `target = /local/domain/<d>/target`, if both present.
    pub target_vm: Option<String>,
    /// xenstored refused to show one of those (`EACCES`: a driver domain): identity unknown.
    pub hidden: bool,
}

/// The frontend's identity (`FRONTEND_UUID` and its target's vm).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontend {
    /// `FRONTEND_UUID`: `/local/domain/<frontend-id>/vm`, default `unknown`.
    pub uuid: String,
    /// The vm path of the frontend's device-model target, if it has one.
    pub target_vm: Option<String>,
    /// xenstored refused to show the frontend's identity (`EACCES`: a driver domain).
    pub hidden: bool,
}

/// Another backend of the same kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendFact {
    /// Its frontend domain (the `<dom>` of `backend/<kind>/<dom>/<dev>`).
    pub domid: String,
    /// Its device id.
    pub devid: String,
    /// Its `physical-device`, if written and well-formed.
    pub physical_device: Option<DevNum>,
    /// Its raw `mode` (only needed for `r` requests; `None` when not read or absent).
    pub mode: Option<String>,
}

/// Everything the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharingFacts {
    /// The requested mode.
    pub mode: Mode,
    /// What is requested.
    pub subject: Subject,
    /// Block topology around the subject.
    pub topology: Topology,
    /// dom0 mounts, in `/proc/self/mountinfo` order.
    pub mounts: Vec<MountFact>,
    /// Active swap partitions.
    pub swaps: Vec<DevNum>,
    /// Backends of the same kind (other than the one being added).
    pub backends: Vec<BackendFact>,
    /// The frontend being served.
    pub frontend: Frontend,
    /// Identities of the other backends' domains, by domid.
    pub domains: BTreeMap<String, DomainIdentity>,
}

/// The outcome of the sharing check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// May be attached.
    Ok,
    /// In use in dom0 through this device.
    Local(DevNum),
    /// In use by another VM through this device.
    Guest(DevNum),
}

/// The devices whose use conflicts with the subject (see the module docs); empty for a file
/// that no loop device is backed by.
pub fn conflict_set(subject: &Subject, topology: &Topology) -> BTreeSet<DevNum> {
    match subject {
        Subject::Device { devnum, .. } => topology.related(&[*devnum]),
        Subject::File { loops, .. } => topology.related(loops),
    }
}

fn eq_nonempty(a: &str, b: &str) -> bool {
    !a.is_empty() && a == b
}

/// `same_vm` (block-common.sh, post-e8f1bb803f): is `other` the same VM as the frontend?
/// A missing `vm` of the other domain counts as the frontend's own (the domain is going away).
/// An identity out of reach (either side) is never the same VM.
pub fn same_vm(frontend: &Frontend, other: &DomainIdentity) -> bool {
    if frontend.hidden || other.hidden {
        return false;
    }
    let othervm = other.vm.as_deref().unwrap_or(&frontend.uuid);
    let targetvm = frontend.target_vm.as_deref().unwrap_or("No Target");
    let otvm = other.target_vm.as_deref().unwrap_or("No Other Target");
    let frontend_uuid = frontend.uuid.strip_suffix("-1").unwrap_or(&frontend.uuid);
    eq_nonempty(frontend_uuid, othervm)
        || eq_nonempty(targetvm, othervm)
        || eq_nonempty(frontend_uuid, otvm)
        || eq_nonempty(targetvm, otvm)
}

/// The backends whose `physical-device` is in `set` (the only ones whose mode and domain
/// identity matter).
pub fn matching_backends<'a>(
    backends: &'a [BackendFact],
    set: &'a BTreeSet<DevNum>,
) -> impl Iterator<Item = &'a BackendFact> + 'a {
    backends
        .iter()
        .filter(move |b| b.physical_device.is_some_and(|d| set.contains(&d)))
}

/// Decide.
pub fn decide(f: &SharingFacts) -> Verdict {
    if f.mode == Mode::Unchecked {
        return Verdict::Ok;
    }
    if let Subject::File { loops, .. } = &f.subject {
        if loops.is_empty() {
            return Verdict::Ok;
        }
    }
    let set = conflict_set(&f.subject, &f.topology);
    for m in &f.mounts {
        if (f.mode == Mode::Write || m.writable) && set.contains(&m.devnum) {
            return Verdict::Local(m.devnum);
        }
    }
    for s in &f.swaps {
        if set.contains(s) {
            return Verdict::Local(*s);
        }
    }
    let unknown = DomainIdentity::default();
    for b in matching_backends(&f.backends, &set) {
        let pd = b.physical_device.expect("matching backends have one");
        let conflicting_use = match f.mode {
            Mode::Write => true,
            _ => Mode::canonicalise(b.mode.as_deref().unwrap_or("")) == Mode::Write,
        };
        if conflicting_use {
            let other = f.domains.get(&b.domid).unwrap_or(&unknown);
            if !same_vm(&f.frontend, other) {
                return Verdict::Guest(pd);
            }
        }
    }
    Verdict::Ok
}

/// The busy message for a conflict (`do_ebusy`), verbatim including its line break; `None` for
/// [`Verdict::Ok`].
pub fn busy_message(subject: &Subject, mode: Mode, verdict: Verdict) -> Option<String> {
    let (guest, mm) = match verdict {
        Verdict::Ok => return None,
        Verdict::Local(d) => (false, d),
        Verdict::Guest(d) => (true, d),
    };
    let prefix = match subject {
        Subject::Device { path, .. } => format!("Device {} is mounted ", path.display()),
        Subject::File { path, .. } => format!(
            "File {} is loopback-mounted through {mm},\nwhich is mounted ",
            path.display()
        ),
    };
    let (dom, when) = if guest {
        ("a guest ", "now")
    } else {
        ("the privileged ", "by a guest")
    };
    let (m1, m2) = if mode == Mode::Write {
        ("", "")
    } else {
        ("read-write ", "read-only ")
    };
    Some(format!(
        "{prefix}{m1}in {dom}domain,\nand so cannot be mounted {m2}{when}."
    ))
}

/// The refusal of a `w` attach of a file without any write permission bit.
pub fn read_only_file_message(file: &Path) -> String {
    format!(
        "File {} is read-only, and so I will not\nmount it read-write in a guest domain.",
        file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOP0: DevNum = DevNum::new(7, 0);
    const LOOP1: DevNum = DevNum::new(7, 1);
    const SDA: DevNum = DevNum::new(8, 0);
    const SDA1: DevNum = DevNum::new(8, 1);
    const SDA2: DevNum = DevNum::new(8, 2);
    const DM0: DevNum = DevNum::new(254, 0);
    const DM1: DevNum = DevNum::new(254, 1);

    fn device(devnum: DevNum) -> Subject {
        Subject::Device {
            path: PathBuf::from("/dev/xyz"),
            devnum,
        }
    }

    fn file(loops: &[DevNum]) -> Subject {
        Subject::File {
            path: PathBuf::from("/images/a.img"),
            loops: loops.to_vec(),
        }
    }

    fn vm(v: &str) -> DomainIdentity {
        DomainIdentity {
            vm: Some(v.into()),
            target_vm: None,
            hidden: false,
        }
    }

    fn facts(mode: Mode, subject: Subject) -> SharingFacts {
        SharingFacts {
            mode,
            subject,
            topology: Topology::default(),
            mounts: vec![],
            swaps: vec![],
            backends: vec![],
            frontend: Frontend {
                uuid: "/vm/aaaa".into(),
                target_vm: None,
                hidden: false,
            },
            domains: BTreeMap::new(),
        }
    }

    fn backend(dom: &str, pd: DevNum, mode: &str) -> BackendFact {
        BackendFact {
            domid: dom.into(),
            devid: "51712".into(),
            physical_device: Some(pd),
            mode: Some(mode.into()),
        }
    }

    fn lvm_topology() -> Topology {
        // sda → sda1, sda2; sda2 is a PV holding dm-0 and dm-1.
        let mut t = Topology::default();
        t.link(SDA, SDA1);
        t.link(SDA, SDA2);
        t.link(SDA2, DM0);
        t.link(SDA2, DM1);
        t
    }

    #[test]
    fn canonical_modes() {
        for (m, c) in [
            ("r", Mode::Read),
            ("ro", Mode::Read),
            ("", Mode::Read),
            ("x", Mode::Read),
            ("w", Mode::Write),
            ("rw", Mode::Write),
            ("w!", Mode::Unchecked),
            ("rw!", Mode::Unchecked),
            ("!", Mode::Read),
        ] {
            assert_eq!(Mode::canonicalise(m), c, "{m:?}");
        }
    }

    #[test]
    fn strict_modes() {
        assert_eq!(Mode::parse_strict("ro"), Some(Mode::Read));
        assert_eq!(Mode::parse_strict("rw!"), Some(Mode::Unchecked));
        assert_eq!(Mode::parse_strict("w"), Some(Mode::Write));
        for bad in ["", "zzz", "R", "wr", "!", " w"] {
            assert_eq!(Mode::parse_strict(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unchecked_and_unused_file_are_ok() {
        let mut f = facts(Mode::Unchecked, device(LOOP0));
        f.mounts.push(MountFact {
            devnum: LOOP0,
            writable: true,
        });
        assert_eq!(decide(&f), Verdict::Ok);
        let mut f = facts(Mode::Write, file(&[]));
        f.mounts.push(MountFact {
            devnum: LOOP0,
            writable: true,
        });
        assert_eq!(decide(&f), Verdict::Ok);
    }

    #[test]
    fn mounted_device_conflicts_unless_ro_for_r() {
        let mut f = facts(Mode::Write, device(LOOP0));
        f.mounts.push(MountFact {
            devnum: LOOP0,
            writable: false,
        });
        assert_eq!(decide(&f), Verdict::Local(LOOP0));
        f.mode = Mode::Read;
        assert_eq!(decide(&f), Verdict::Ok);
        f.mounts[0].writable = true;
        assert_eq!(decide(&f), Verdict::Local(LOOP0));
    }

    #[test]
    fn partitions_holders_and_parents_count() {
        // Whole disk requested, a partition is mounted.
        let mut f = facts(Mode::Write, device(SDA));
        f.topology = lvm_topology();
        f.mounts.push(MountFact {
            devnum: SDA1,
            writable: true,
        });
        assert_eq!(decide(&f), Verdict::Local(SDA1));
        // Whole disk requested, an LV built on a partition is mounted.
        f.mounts[0].devnum = DM1;
        assert_eq!(decide(&f), Verdict::Local(DM1));
        // An LV requested: its sibling LV's mount is no conflict…
        f.subject = device(DM0);
        assert_eq!(decide(&f), Verdict::Ok);
        // …but a swap on the PV under it is.
        f.swaps.push(SDA2);
        assert_eq!(decide(&f), Verdict::Local(SDA2));
        // A partition requested while the other partition is mounted: fine.
        let mut f = facts(Mode::Write, device(SDA2));
        f.topology = lvm_topology();
        f.mounts.push(MountFact {
            devnum: SDA1,
            writable: true,
        });
        assert_eq!(decide(&f), Verdict::Ok);
    }

    #[test]
    fn swap_conflicts_even_for_r() {
        let mut f = facts(Mode::Read, device(SDA1));
        f.swaps.push(SDA1);
        assert_eq!(decide(&f), Verdict::Local(SDA1));
    }

    #[test]
    fn guest_w_exclusive_r_shares() {
        let mut f = facts(Mode::Write, device(LOOP0));
        f.backends.push(backend("5", LOOP0, "r"));
        f.domains.insert("5".into(), vm("/vm/bbbb"));
        assert_eq!(decide(&f), Verdict::Guest(LOOP0));
        // r against an r user: fine.
        f.mode = Mode::Read;
        assert_eq!(decide(&f), Verdict::Ok);
        // r against a w user: conflict.
        f.backends[0].mode = Some("w".into());
        assert_eq!(decide(&f), Verdict::Guest(LOOP0));
        // r against a w! user: like the reference, only a canonical `w` conflicts.
        f.backends[0].mode = Some("w!".into());
        assert_eq!(decide(&f), Verdict::Ok);
        // Another device entirely: no conflict.
        f.mode = Mode::Write;
        f.backends[0].physical_device = Some(LOOP1);
        assert_eq!(decide(&f), Verdict::Ok);
        f.backends[0].physical_device = None;
        assert_eq!(decide(&f), Verdict::Ok);
    }

    #[test]
    fn guest_using_a_partition_conflicts_with_the_disk() {
        let mut f = facts(Mode::Write, device(SDA));
        f.topology = lvm_topology();
        f.backends.push(backend("5", DM0, "w"));
        f.domains.insert("5".into(), vm("/vm/bbbb"));
        assert_eq!(decide(&f), Verdict::Guest(DM0));
    }

    #[test]
    fn same_vm_allows_sharing() {
        let mut f = facts(Mode::Write, device(LOOP0));
        f.backends.push(backend("5", LOOP0, "w"));
        // Same vm path: a second disk of the same VM.
        f.domains.insert("5".into(), vm("/vm/aaaa"));
        assert_eq!(decide(&f), Verdict::Ok);
        // Other domain's vm missing: counts as the same VM.
        f.domains.insert("5".into(), DomainIdentity::default());
        assert_eq!(decide(&f), Verdict::Ok);
        // Domain not gathered at all: likewise (missing nodes).
        f.domains.clear();
        assert_eq!(decide(&f), Verdict::Ok);
    }

    #[test]
    fn identities_out_of_reach_are_never_the_same_vm() {
        // A driver domain: neither the frontend's vm nor the other domain's can be read.
        let mut f = facts(Mode::Write, device(LOOP0));
        f.frontend = Frontend {
            uuid: "unknown".into(),
            target_vm: None,
            hidden: true,
        };
        f.backends.push(backend("5", LOOP0, "w"));
        let hidden = DomainIdentity {
            hidden: true,
            ..Default::default()
        };
        f.domains.insert("5".into(), hidden.clone());
        assert_eq!(decide(&f), Verdict::Guest(LOOP0));
        // The reference's defaults ("unknown" on both sides) would have called them the same.
        assert!(!same_vm(&f.frontend, &DomainIdentity::default()));
        // Only the other side out of reach: still unknown, still refused.
        f.frontend.hidden = false;
        f.frontend.uuid = "/vm/aaaa".into();
        assert_eq!(decide(&f), Verdict::Guest(LOOP0));
        // Read-only shares with read-only users whatever the identities…
        let mut f = facts(Mode::Read, device(LOOP0));
        f.frontend.hidden = true;
        f.backends.push(backend("5", LOOP0, "r"));
        f.domains.insert("5".into(), hidden);
        assert_eq!(decide(&f), Verdict::Ok);
        // …and not with a read-write one.
        f.backends[0].mode = Some("w".into());
        assert_eq!(decide(&f), Verdict::Guest(LOOP0));
    }

    #[test]
    fn same_vm_stubdom_and_target() {
        let fe = Frontend {
            uuid: "/vm/stub".into(),
            target_vm: Some("/vm/guest".into()),
            hidden: false,
        };
        // Frontend is a stubdom; other is its target.
        assert!(same_vm(&fe, &vm("/vm/guest")));
        // Frontend is the guest; other is its stubdom (whose target is the guest).
        let fe2 = Frontend {
            uuid: "/vm/guest".into(),
            target_vm: None,
            hidden: false,
        };
        let stub = DomainIdentity {
            vm: Some("/vm/stub".into()),
            target_vm: Some("/vm/guest".into()),
            hidden: false,
        };
        assert!(same_vm(&fe2, &stub));
        // Two unrelated domains without targets are different (the pre-2024 bug said same).
        assert!(!same_vm(&fe2, &vm("/vm/other")));
        // Two stubdoms of the same target.
        assert!(same_vm(&fe, &stub));
        // Empty strings never match.
        let empty_fe = Frontend {
            uuid: String::new(),
            target_vm: Some(String::new()),
            hidden: false,
        };
        let empty_other = DomainIdentity {
            vm: Some(String::new()),
            target_vm: Some(String::new()),
            hidden: false,
        };
        assert!(!same_vm(&empty_fe, &empty_other));
        // FRONTEND_UUID's "-1" suffix is stripped, as block-common.sh does.
        let fe3 = Frontend {
            uuid: "/vm/x-1".into(),
            target_vm: None,
            hidden: false,
        };
        assert!(same_vm(&fe3, &vm("/vm/x")));
    }

    #[test]
    fn file_conflicts_through_its_loops() {
        let mut f = facts(Mode::Write, file(&[LOOP1]));
        f.backends.push(backend("5", LOOP1, "w"));
        f.domains.insert("5".into(), vm("/vm/bbbb"));
        assert_eq!(decide(&f), Verdict::Guest(LOOP1));
        // The file's loop is mounted in dom0: local wins (checked first).
        f.mounts.push(MountFact {
            devnum: LOOP1,
            writable: true,
        });
        assert_eq!(decide(&f), Verdict::Local(LOOP1));
        // The loop exists but nobody uses it: ok.
        let f = facts(Mode::Write, file(&[LOOP1]));
        assert_eq!(decide(&f), Verdict::Ok);
    }

    #[test]
    fn busy_messages_are_verbatim() {
        let dev = Subject::Device {
            path: PathBuf::from("/dev/loop0"),
            devnum: LOOP0,
        };
        assert_eq!(
            busy_message(&dev, Mode::Write, Verdict::Guest(LOOP0)).unwrap(),
            "Device /dev/loop0 is mounted in a guest domain,\nand so cannot be mounted now."
        );
        assert_eq!(
            busy_message(&dev, Mode::Read, Verdict::Guest(LOOP0)).unwrap(),
            "Device /dev/loop0 is mounted read-write in a guest domain,\nand so cannot be mounted read-only now."
        );
        assert_eq!(
            busy_message(&dev, Mode::Write, Verdict::Local(LOOP0)).unwrap(),
            "Device /dev/loop0 is mounted in the privileged domain,\nand so cannot be mounted by a guest."
        );
        assert_eq!(
            busy_message(&dev, Mode::Read, Verdict::Local(LOOP0)).unwrap(),
            "Device /dev/loop0 is mounted read-write in the privileged domain,\nand so cannot be mounted read-only by a guest."
        );
        let file = Subject::File {
            path: PathBuf::from("/img/a"),
            loops: vec![DevNum::new(7, 16)],
        };
        assert_eq!(
            busy_message(&file, Mode::Write, Verdict::Guest(DevNum::new(7, 16))).unwrap(),
            "File /img/a is loopback-mounted through 7:10,\nwhich is mounted in a guest domain,\nand so cannot be mounted now."
        );
        assert_eq!(busy_message(&file, Mode::Write, Verdict::Ok), None);
        assert_eq!(
            read_only_file_message(Path::new("/img/a")),
            "File /img/a is read-only, and so I will not\nmount it read-write in a guest domain."
        );
    }
}
