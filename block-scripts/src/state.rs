//! The little state `block add` leaves for `block remove`, under the runtime's state directory
//! (`/run/xen-hotplug/xenplug-block/<kind>-<domid>-<devid>`).
//!
//! `remove` must detach exactly what `add` attached, also when the image file was deleted or
//! renamed meanwhile and when the xenstore nodes are already gone (docs/hotplug-scripts.md, "block"; Qubes keeps
//! the same kind of record for the same reason). The record names the loop device, its disk
//! sequence number (which changes on every attach, so a device reused by someone else later is
//! never mistaken for ours) and the backing file's identity. A record for a helper script
//! (`block-<type>`) remembers which helper `add` ran, so `remove` runs the same one.
//!
//! Files are small `key=value` lines, mode 0600, written with the workspace's one atomic
//! replacement ([`xenplug_atomic_write::write`]: temporary file, fsync, rename, fsync of the
//! directory), so a reader sees the old record or the new one, never a torn one, and a failed
//! save leaves no temporary file. (`/run` is a tmpfs on the hosts we know, where the fsyncs cost
//! next to nothing.)

use crate::devnum::DevNum;
use std::io;
use std::path::{Path, PathBuf};

/// Subdirectory of the state directory holding the records.
pub const STATE_SUBDIR: &str = "xenplug-block";

/// What one backend's add left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A loop device attached for a file.
    Loop(LoopRecord),
    /// An NBD device connected by `block-nbd`.
    Nbd {
        /// The device node, `/dev/nbdN`.
        device: PathBuf,
        /// Its device number.
        devnum: DevNum,
    },
    /// An iSCSI session logged in by `block-iscsi` for this backend.
    Iscsi {
        /// The target's IQN.
        iqn: String,
        /// The portal logged in through.
        portal: String,
    },
    /// A helper `block-<type>` handled the add.
    Helper {
        /// The `<type>` of `block-<type>`.
        kind: String,
    },
}

/// A loop device attached for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopRecord {
    /// The device node, `/dev/loopN`.
    pub device: PathBuf,
    /// The device number.
    pub devnum: DevNum,
    /// The attachment's disk sequence number, when the kernel has one.
    pub diskseq: Option<u64>,
    /// The backing file's `st_dev`.
    pub backing_dev: DevNum,
    /// The backing file's `st_ino`.
    pub backing_ino: u64,
    /// The backing file's path at attach time (informational).
    pub file: PathBuf,
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

impl Record {
    /// Serialise.
    pub fn to_text(&self, backend: &str) -> String {
        let mut s = format!("version=1\nbackend={backend}\n");
        match self {
            Record::Loop(l) => {
                s.push_str("kind=loop\n");
                s.push_str(&format!("device={}\n", l.device.display()));
                s.push_str(&format!("devnum={}\n", l.devnum));
                if let Some(q) = l.diskseq {
                    s.push_str(&format!("diskseq={q}\n"));
                }
                s.push_str(&format!("backing_dev={}\n", l.backing_dev));
                s.push_str(&format!("backing_ino={}\n", l.backing_ino));
                s.push_str(&format!("file={}\n", l.file.display()));
            }
            Record::Nbd { device, devnum } => {
                s.push_str("kind=nbd\n");
                s.push_str(&format!("device={}\n", device.display()));
                s.push_str(&format!("devnum={devnum}\n"));
            }
            Record::Iscsi { iqn, portal } => {
                s.push_str("kind=iscsi\n");
                s.push_str(&format!("iqn={iqn}\n"));
                s.push_str(&format!("portal={portal}\n"));
            }
            Record::Helper { kind } => {
                s.push_str("kind=helper\n");
                s.push_str(&format!("helper={kind}\n"));
            }
        }
        s
    }

    /// Parse; `None` for anything malformed.
    pub fn from_text(text: &str) -> Option<Record> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
        };
        if get("version")? != "1" {
            return None;
        }
        match get("kind")? {
            "loop" => Some(Record::Loop(LoopRecord {
                device: PathBuf::from(get("device")?),
                devnum: DevNum::parse_hex(get("devnum")?)?,
                diskseq: match get("diskseq") {
                    Some(v) => Some(v.parse().ok()?),
                    None => None,
                },
                backing_dev: DevNum::parse_hex(get("backing_dev")?)?,
                backing_ino: get("backing_ino")?.parse().ok()?,
                file: PathBuf::from(get("file").unwrap_or("")),
            })),
            "nbd" => Some(Record::Nbd {
                device: PathBuf::from(get("device")?),
                devnum: DevNum::parse_hex(get("devnum")?)?,
            }),
            "iscsi" => Some(Record::Iscsi {
                iqn: get("iqn")?.to_string(),
                portal: get("portal")?.to_string(),
            }),
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

    /// Save `backend`'s record, replacing any previous one atomically.
    pub fn save(&self, backend: &str, rec: &Record) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = rec.to_text(backend);
        xenplug_atomic_write::write(&self.path(backend), text.as_bytes(), 0o600, None)
    }

    /// Delete `backend`'s record; a missing one is fine.
    pub fn remove(&self, backend: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(backend)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            diskseq: Some(42),
            backing_dev: DevNum::new(254, 1),
            backing_ino: 1234,
            file: "/img/a b.img".into(),
        });
        assert_eq!(store.load("backend/vbd/1/768").unwrap(), None);
        store.save("backend/vbd/1/768", &rec).unwrap();
        assert_eq!(store.load("backend/vbd/1/768").unwrap(), Some(rec.clone()));
        let n = Record::Nbd {
            device: "/dev/nbd2".into(),
            devnum: DevNum::new(43, 64),
        };
        assert_eq!(Record::from_text(&n.to_text("b")), Some(n));
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
        // Without diskseq.
        let rec2 = Record::Loop(LoopRecord {
            diskseq: None,
            ..match rec {
                Record::Loop(l) => l,
                _ => unreachable!(),
            }
        });
        assert_eq!(Record::from_text(&rec2.to_text("b")), Some(rec2));
        std::fs::write(store.path("x/backend/vbd/1/1"), "garbage").unwrap();
        assert!(store.load("x/backend/vbd/1/1").is_err());
    }
}
