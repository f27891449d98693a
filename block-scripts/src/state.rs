//! The little state `block add` leaves for `block remove`, under the runtime's state directory
//! (`/run/xen-hotplug/xenplug-block/<kind>-<domid>-<devid>`).
//!
//! `remove` must detach exactly what `add` attached, also when the image file was deleted or
//! renamed meanwhile and when the xenstore nodes are already gone (docs/hotplug-scripts.md,
//! "block"; Qubes keeps the same kind of record for the same reason). The record names the loop
//! device, its disk sequence number (which changes on every attach, so a device reused by
//! someone else later is never mistaken for ours) and the backing file's identity. A record for
//! a helper script (`block-<type>`) remembers which helper `add` ran, so `remove` runs the same
//! one.
//!
//! # Intent first: crash safety by construction
//!
//! libxl SIGKILLs a script that overruns, hosts crash, and `remove` must still clean up exactly
//! what exists. So every record is saved **before** the thing it names is created, and updated
//! once it exists:
//!
//! * a loop device: [`LoopStage::Binding`] while the device is claimed exclusively and not yet
//!   bound (with its disk sequence number then), [`LoopStage::Bound`] after the bind (with the
//!   attachment's own sequence number);
//! * an NBD device: [`Phase::Intent`] before `nbd-client` is started on the device (the record
//!   reserves the device against other adds), [`Phase::Done`] once the kernel reports it
//!   connected;
//! * an iSCSI session: [`Phase::Intent`] before the login, [`Phase::Done`] once the LUN is there;
//! * a helper: before it runs.
//!
//! A kill between the save and the creation leaves a record of something that may not exist,
//! which `remove` handles as "already gone"; a kill after the creation leaves a record of
//! something that exists, which `remove` undoes. No instant leaves something unrecorded.
//!
//! Files are small `key=value` lines, mode 0600, written with the workspace's one atomic
//! replacement ([`xenplug_atomic_write::write`]: temporary file, fsync, rename, fsync of the
//! directory), so a reader sees the old record or the new one, never a torn one, and a failed
//! save leaves no temporary file. (`/run` is a tmpfs on the hosts we know, where the fsyncs cost
//! next to nothing.)
//!
//! # Encoding (format version 2)
//!
//! Values come from xenstore (`params`, so an iSCSI iqn or portal), from paths and from
//! `XENBUS_PATH`, and any of them may hold a newline or an `=`. Every value is therefore written
//! percent-encoded: a byte other than printable ASCII (`!`..`~`), and `%` itself, becomes `%XX`
//! (upper-case hex), so a value is always one line without spaces and no value can end its line
//! and forge another field. Paths are encoded byte for byte, so a non-UTF-8 file name survives
//! too. Reading is strict: a bad escape, a line without `=`, an unknown or repeated key, or a
//! string field that is not UTF-8 once decoded makes the whole record malformed (`remove` then
//! falls back to xenstore's `node`, as with no record). Records of format version 1 (written
//! unescaped by earlier xenplug releases, possibly still present in `/run` after an upgrade while
//! domains run) are still read.

use crate::devnum::DevNum;
use std::io;
use std::path::{Path, PathBuf};

/// Subdirectory of the state directory holding the records.
pub const STATE_SUBDIR: &str = "xenplug-block";

/// What one backend's add left behind (or is about to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A loop device attached (or being attached) for a file.
    Loop(LoopRecord),
    /// An NBD device connected (or being connected) by `block-nbd`.
    Nbd(NbdRecord),
    /// An iSCSI session logged in (or being logged in) by `block-iscsi` for this backend.
    Iscsi(IscsiRecord),
    /// A helper `block-<type>` handled the add.
    Helper {
        /// The `<type>` of `block-<type>`.
        kind: String,
    },
}

/// How far an NBD connection or iSCSI login got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// About to be created: it may exist or not (the script may have been killed anywhere).
    Intent,
    /// Created and checked.
    Done,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Intent => "intent",
            Phase::Done => "done",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        match s {
            "intent" => Some(Phase::Intent),
            "done" => Some(Phase::Done),
            _ => None,
        }
    }
}

/// How far a loop attachment got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopStage {
    /// The device is claimed and about to be bound; its disk sequence number before the bind.
    /// It is ours only if now bound to our backing file with a higher sequence number.
    Binding {
        /// `BLKGETDISKSEQ` before the bind, when the kernel has one.
        diskseq_before: Option<u64>,
    },
    /// Bound: the attachment's disk sequence number.
    Bound {
        /// `BLKGETDISKSEQ` of the attachment, when the kernel has one.
        diskseq: Option<u64>,
    },
}

/// A loop device attached (or being attached) for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopRecord {
    /// The device node, `/dev/loopN`.
    pub device: PathBuf,
    /// The device number.
    pub devnum: DevNum,
    /// How far the attachment got.
    pub stage: LoopStage,
    /// The backing file's `st_dev`.
    pub backing_dev: DevNum,
    /// The backing file's `st_ino`.
    pub backing_ino: u64,
    /// The backing file's path at attach time (informational).
    pub file: PathBuf,
}

/// An NBD device connected (or being connected) by `block-nbd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdRecord {
    /// The device node, `/dev/nbdN`.
    pub device: PathBuf,
    /// How far the connection got.
    pub phase: Phase,
}

/// An iSCSI session logged in (or being logged in) by `block-iscsi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiRecord {
    /// The target's IQN.
    pub iqn: String,
    /// The portal logged in through.
    pub portal: String,
    /// How far the login got.
    pub phase: Phase,
}

/// The record file name for a backend path: `vbd-5-51712` for `backend/vbd/5/51712` (relative
/// or absolute); other paths are escaped whole.
pub fn key_for(backend: &str) -> String {
    let comps: Vec<&str> = backend.split('/').filter(|c| !c.is_empty()).collect();
    let safe = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            && !c.starts_with('.')
    };
    if comps.len() >= 4
        && comps[comps.len() - 4] == "backend"
        && comps[comps.len() - 3..].iter().all(|c| safe(c))
    {
        let n = comps.len();
        return format!("{}-{}-{}", comps[n - 3], comps[n - 2], comps[n - 1]);
    }
    let mut out = String::from("path");
    for b in backend.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The format version [`Record::to_text`] writes.
pub const FORMAT_VERSION: u32 = 2;

/// Percent-encode `bytes` (see the module documentation).
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undo [`encode`]; `None` for a malformed escape or an unescaped byte `encode` never writes.
fn decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c if c.is_ascii_graphic() => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The fields of a version-2 record, decoded; `None` when any line is malformed or a key repeats.
struct Fields(std::collections::BTreeMap<String, Vec<u8>>);

impl Fields {
    fn parse(text: &str) -> Option<Fields> {
        let mut map = std::collections::BTreeMap::new();
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return None;
            }
            if map.insert(k.to_string(), decode(v)?).is_some() {
                return None;
            }
        }
        Some(Fields(map))
    }

    fn bytes(&self, k: &str) -> Option<&[u8]> {
        self.0.get(k).map(Vec::as_slice)
    }

    fn text(&self, k: &str) -> Option<&str> {
        std::str::from_utf8(self.bytes(k)?).ok()
    }

    fn path(&self, k: &str) -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(self.bytes(k)?)))
    }

    /// Only these keys may appear.
    fn only(&self, allowed: &[&str]) -> Option<()> {
        self.0
            .keys()
            .all(|k| allowed.contains(&k.as_str()))
            .then_some(())
    }
}

/// One `key=<encoded value>` line.
fn line(out: &mut String, key: &str, value: &[u8]) {
    out.push_str(key);
    out.push('=');
    out.push_str(&encode(value));
    out.push('\n');
}

fn path_bytes(p: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

impl Record {
    /// Serialise (format version [`FORMAT_VERSION`], every value encoded).
    pub fn to_text(&self, backend: &str) -> String {
        let mut s = String::new();
        line(&mut s, "version", FORMAT_VERSION.to_string().as_bytes());
        line(&mut s, "backend", backend.as_bytes());
        match self {
            Record::Loop(l) => {
                line(&mut s, "kind", b"loop");
                line(&mut s, "device", path_bytes(&l.device));
                line(&mut s, "devnum", l.devnum.to_string().as_bytes());
                match l.stage {
                    LoopStage::Binding { diskseq_before } => {
                        line(&mut s, "stage", b"binding");
                        if let Some(q) = diskseq_before {
                            line(&mut s, "diskseq_before", q.to_string().as_bytes());
                        }
                    }
                    LoopStage::Bound { diskseq } => {
                        line(&mut s, "stage", b"bound");
                        if let Some(q) = diskseq {
                            line(&mut s, "diskseq", q.to_string().as_bytes());
                        }
                    }
                }
                line(&mut s, "backing_dev", l.backing_dev.to_string().as_bytes());
                line(&mut s, "backing_ino", l.backing_ino.to_string().as_bytes());
                line(&mut s, "file", path_bytes(&l.file));
            }
            Record::Nbd(n) => {
                line(&mut s, "kind", b"nbd");
                line(&mut s, "phase", n.phase.as_str().as_bytes());
                line(&mut s, "device", path_bytes(&n.device));
            }
            Record::Iscsi(i) => {
                line(&mut s, "kind", b"iscsi");
                line(&mut s, "phase", i.phase.as_str().as_bytes());
                line(&mut s, "iqn", i.iqn.as_bytes());
                line(&mut s, "portal", i.portal.as_bytes());
            }
            Record::Helper { kind } => {
                line(&mut s, "kind", b"helper");
                line(&mut s, "helper", kind.as_bytes());
            }
        }
        s
    }

    /// Parse; `None` for anything malformed (see the module documentation).
    pub fn from_text(text: &str) -> Option<Record> {
        let version = text.lines().find_map(|l| l.strip_prefix("version="))?;
        match version {
            "1" => Self::from_text_v1(text),
            "2" => Self::from_text_v2(text),
            _ => None,
        }
    }

    fn from_text_v2(text: &str) -> Option<Record> {
        let f = Fields::parse(text)?;
        f.text("backend")?;
        const COMMON: [&str; 3] = ["version", "backend", "kind"];
        let with = |more: &[&'static str]| -> Vec<&'static str> {
            COMMON.iter().chain(more).copied().collect()
        };
        let num = |k: &str| -> Option<u64> { f.text(k)?.parse().ok() };
        let devnum = |k: &str| -> Option<DevNum> { DevNum::parse_hex(f.text(k)?) };
        match f.text("kind")? {
            "loop" => {
                f.only(&with(&[
                    "device",
                    "devnum",
                    "stage",
                    "diskseq_before",
                    "diskseq",
                    "backing_dev",
                    "backing_ino",
                    "file",
                ]))?;
                let opt = |k: &str| -> Option<Option<u64>> {
                    match f.bytes(k) {
                        Some(_) => Some(Some(num(k)?)),
                        None => Some(None),
                    }
                };
                let stage = match f.text("stage")? {
                    "binding" if f.bytes("diskseq").is_none() => LoopStage::Binding {
                        diskseq_before: opt("diskseq_before")?,
                    },
                    "bound" if f.bytes("diskseq_before").is_none() => LoopStage::Bound {
                        diskseq: opt("diskseq")?,
                    },
                    _ => return None,
                };
                Some(Record::Loop(LoopRecord {
                    device: f.path("device")?,
                    devnum: devnum("devnum")?,
                    stage,
                    backing_dev: devnum("backing_dev")?,
                    backing_ino: num("backing_ino")?,
                    file: f.path("file")?,
                }))
            }
            "nbd" => {
                f.only(&with(&["phase", "device"]))?;
                Some(Record::Nbd(NbdRecord {
                    device: f.path("device")?,
                    phase: Phase::parse(f.text("phase")?)?,
                }))
            }
            "iscsi" => {
                f.only(&with(&["phase", "iqn", "portal"]))?;
                Some(Record::Iscsi(IscsiRecord {
                    iqn: f.text("iqn")?.to_string(),
                    portal: f.text("portal")?.to_string(),
                    phase: Phase::parse(f.text("phase")?)?,
                }))
            }
            "helper" => {
                f.only(&with(&["helper"]))?;
                Some(Record::Helper {
                    kind: f.text("helper")?.to_string(),
                })
            }
            _ => None,
        }
    }

    /// Format version 1: unescaped `key=value` lines, the first line of a key wins (what
    /// releases before the encoding wrote; kept so their records are still honoured). They
    /// were saved only once the thing existed: [`LoopStage::Bound`], [`Phase::Done`].
    fn from_text_v1(text: &str) -> Option<Record> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
        };
        match get("kind")? {
            "loop" => Some(Record::Loop(LoopRecord {
                device: PathBuf::from(get("device")?),
                devnum: DevNum::parse_hex(get("devnum")?)?,
                stage: LoopStage::Bound {
                    diskseq: match get("diskseq") {
                        Some(v) => Some(v.parse().ok()?),
                        None => None,
                    },
                },
                backing_dev: DevNum::parse_hex(get("backing_dev")?)?,
                backing_ino: get("backing_ino")?.parse().ok()?,
                file: PathBuf::from(get("file").unwrap_or("")),
            })),
            "nbd" => Some(Record::Nbd(NbdRecord {
                device: PathBuf::from(get("device")?),
                phase: Phase::Done,
            })),
            "iscsi" => Some(Record::Iscsi(IscsiRecord {
                iqn: get("iqn")?.to_string(),
                portal: get("portal")?.to_string(),
                phase: Phase::Done,
            })),
            "helper" => Some(Record::Helper {
                kind: get("helper")?.to_string(),
            }),
            _ => None,
        }
    }
}

/// The records of one state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Records under `<state_dir>/xenplug-block`.
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join(STATE_SUBDIR),
        }
    }

    /// The record file of `backend`.
    pub fn path(&self, backend: &str) -> PathBuf {
        self.dir.join(key_for(backend))
    }

    /// Load `backend`'s record. A malformed record is reported as an error naming the file.
    pub fn load(&self, backend: &str) -> io::Result<Option<Record>> {
        let p = self.path(backend);
        match std::fs::read_to_string(&p) {
            Ok(text) => Record::from_text(&text).map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed state file {}", p.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Save `backend`'s record, replacing any previous one atomically and durably (the file
    /// and the directory are fsynced before this returns: the record survives a crash of the
    /// host as well as a SIGKILL of the script).
    pub fn save(&self, backend: &str, rec: &Record) -> io::Result<()> {
        if !self.dir.is_dir() {
            std::fs::create_dir_all(&self.dir)?;
            if let Some(parent) = self.dir.parent() {
                xenplug_atomic_write::sync_dir(parent)?;
            }
        }
        let text = rec.to_text(backend);
        let path = self.path(backend);
        xenplug_atomic_write::remove_stale_temporaries(&path)?;
        xenplug_atomic_write::write(&path, text.as_bytes(), 0o600, None)
    }

    /// Delete `backend`'s record durably, and any temporary file a save killed before its
    /// rename left; a missing record is fine. (Saves and removes of one backend are serialised
    /// by the script's lock.)
    pub fn remove(&self, backend: &str) -> io::Result<()> {
        let path = self.path(backend);
        xenplug_atomic_write::remove_stale_temporaries(&path)?;
        xenplug_atomic_write::remove(&path).map(drop)
    }

    /// Every readable record except `backend`'s, with its file name (what other backends hold
    /// or are about to create: a device named there is not free).
    pub fn others(&self, backend: &str) -> Vec<(String, Record)> {
        let own = key_for(backend);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name == own || name.starts_with('.') {
                    return None;
                }
                let rec = Record::from_text(&std::fs::read_to_string(e.path()).ok()?)?;
                Some((name, rec))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: a newline (or `=`, `%`, any byte) in a value must not end its line and forge
    /// another field. Every value round-trips exactly, whatever it holds.
    #[test]
    fn no_value_can_forge_a_field() {
        // An iqn from `params` claiming another portal.
        let iscsi = Record::Iscsi(IscsiRecord {
            iqn: "iqn.2003-01.org.x:d\nportal=10.6.6.6:3260".into(),
            portal: "10.0.0.1:3260".into(),
            phase: Phase::Done,
        });
        assert_eq!(
            Record::from_text(&iscsi.to_text("backend/vbd/1/768")),
            Some(iscsi)
        );
        // A backend path claiming the record is a helper's (remove would run `block-evil`).
        let hostile_backend = "backend/vbd/1/768\nkind=helper\nhelper=evil";
        let rec = Record::Loop(LoopRecord {
            device: "/dev/loop3".into(),
            devnum: DevNum::new(7, 3),
            stage: LoopStage::Bound { diskseq: Some(42) },
            backing_dev: DevNum::new(254, 1),
            backing_ino: 1234,
            file: "/img/a\ndevice=/dev/sda\nfile=/x %41=\r\t".into(),
        });
        let text = rec.to_text(hostile_backend);
        assert_eq!(Record::from_text(&text), Some(rec.clone()));
        // One line per field, whatever the values.
        assert_eq!(text.lines().count(), 10, "{text}");
        let helper = Record::Helper {
            kind: "dummy".into(),
        };
        assert_eq!(
            Record::from_text(&helper.to_text(hostile_backend)),
            Some(helper)
        );
        let nbd = Record::Nbd(NbdRecord {
            device: "/dev/nbd0\ndevice=/dev/sda".into(),
            phase: Phase::Intent,
        });
        assert_eq!(Record::from_text(&nbd.to_text("b")), Some(nbd));
        // Through the store, too (what `remove` reads back).
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.save("backend/vbd/1/768", &rec).unwrap();
        assert_eq!(store.load("backend/vbd/1/768").unwrap(), Some(rec));
    }

    #[test]
    fn non_utf8_paths_survive_and_bad_text_is_malformed() {
        use std::os::unix::ffi::OsStrExt;
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/img/\xff\xfe.img"));
        let rec = Record::Loop(LoopRecord {
            device: "/dev/loop1".into(),
            devnum: DevNum::new(7, 1),
            stage: LoopStage::Binding {
                diskseq_before: None,
            },
            backing_dev: DevNum::new(8, 1),
            backing_ino: 9,
            file: odd,
        });
        assert_eq!(Record::from_text(&rec.to_text("b")), Some(rec.clone()));
        let good = rec.to_text("b");
        for bad in [
            // A repeated key (a forged line written by hand).
            format!("{good}device=/dev/sda\n"),
            // A bad escape, an unescaped space, a line without `=`, an unknown key.
            good.replace("device=/dev/loop1", "device=/dev/loop1%4"),
            good.replace("device=/dev/loop1", "device=/dev/loop 1"),
            format!("{good}junk\n"),
            format!("{good}extra=1\n"),
            // A string field that is not UTF-8.
            Record::Helper { kind: "x".into() }
                .to_text("b")
                .replace("helper=x", "helper=%FF"),
            good.replace("version=2", "version=3"),
            // A stage with the other stage's sequence number.
            format!("{good}diskseq=5\n"),
        ] {
            assert_eq!(Record::from_text(&bad), None, "{bad}");
        }
    }

    /// Records written by releases before the encoding (version 1) are still honoured.
    #[test]
    fn version_1_records_are_still_read() {
        let v1 = "version=1\nbackend=backend/vbd/1/768\nkind=loop\ndevice=/dev/loop3\ndevnum=7:3\ndiskseq=42\nbacking_dev=fe:1\nbacking_ino=1234\nfile=/img/a b.img\n";
        assert_eq!(
            Record::from_text(v1),
            Some(Record::Loop(LoopRecord {
                device: "/dev/loop3".into(),
                devnum: DevNum::new(7, 3),
                stage: LoopStage::Bound { diskseq: Some(42) },
                backing_dev: DevNum::new(254, 1),
                backing_ino: 1234,
                file: "/img/a b.img".into(),
            }))
        );
        assert_eq!(
            Record::from_text("version=1\nbackend=b\nkind=iscsi\niqn=iqn.x:y\nportal=p:3260\n"),
            Some(Record::Iscsi(IscsiRecord {
                iqn: "iqn.x:y".into(),
                portal: "p:3260".into(),
                phase: Phase::Done,
            }))
        );
    }

    #[test]
    fn keys() {
        assert_eq!(key_for("backend/vbd/5/51712"), "vbd-5-51712");
        assert_eq!(
            key_for("/local/domain/0/backend/vbd/5/51712"),
            "vbd-5-51712"
        );
        assert_eq!(key_for("/local/domain/3/backend/vbd3/7/768/"), "vbd3-7-768");
        assert_eq!(key_for("weird/../x"), "pathweird_2f.._2fx");
        assert_eq!(key_for("backend/vbd/../x"), "pathbackend_2fvbd_2f.._2fx");
    }

    #[test]
    fn round_trip_and_atomic_save() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let rec = Record::Loop(LoopRecord {
            device: "/dev/loop3".into(),
            devnum: DevNum::new(7, 3),
            stage: LoopStage::Binding {
                diskseq_before: Some(41),
            },
            backing_dev: DevNum::new(254, 1),
            backing_ino: 1234,
            file: "/img/a b.img".into(),
        });
        assert_eq!(store.load("backend/vbd/1/768").unwrap(), None);
        store.save("backend/vbd/1/768", &rec).unwrap();
        assert_eq!(store.load("backend/vbd/1/768").unwrap(), Some(rec.clone()));
        for phase in [Phase::Intent, Phase::Done] {
            let n = Record::Nbd(NbdRecord {
                device: "/dev/nbd2".into(),
                phase,
            });
            assert_eq!(Record::from_text(&n.to_text("b")), Some(n));
        }
        // Another backend's records are listed for this one, not its own.
        let other = Record::Nbd(NbdRecord {
            device: "/dev/nbd2".into(),
            phase: Phase::Intent,
        });
        store.save("backend/vbd/2/768", &other).unwrap();
        assert_eq!(
            store.others("backend/vbd/1/768"),
            vec![("vbd-2-768".to_string(), other)]
        );
        store.remove("backend/vbd/2/768").unwrap();
        let h = Record::Helper {
            kind: "dummy".into(),
        };
        store.save("backend/vbd/1/768", &h).unwrap();
        assert_eq!(store.load("backend/vbd/1/768").unwrap(), Some(h));
        // Only the record remains (no temp files).
        let names: Vec<_> = std::fs::read_dir(dir.path().join(STATE_SUBDIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("vbd-1-768")]);
        store.remove("backend/vbd/1/768").unwrap();
        store.remove("backend/vbd/1/768").unwrap();
        assert_eq!(store.load("backend/vbd/1/768").unwrap(), None);
        assert!(store.others("backend/vbd/1/768").is_empty());
        // Bound, with and without diskseq.
        for diskseq in [Some(42), None] {
            let bound = Record::Loop(LoopRecord {
                stage: LoopStage::Bound { diskseq },
                ..match rec.clone() {
                    Record::Loop(l) => l,
                    _ => unreachable!(),
                }
            });
            assert_eq!(Record::from_text(&bound.to_text("b")), Some(bound));
        }
        std::fs::write(store.path("x/backend/vbd/1/1"), "garbage").unwrap();
        assert!(store.load("x/backend/vbd/1/1").is_err());
    }
}
