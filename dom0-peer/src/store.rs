//! The embedded default configuration store: a directory of per-VM documents.
//!
//! ```text
//! STORE/
//!   <uuid>.json         the VM's configuration document (canonical JSON), by UUID
//!   <name>.json         … or by VM name
//!   <key>.nocloud/      … or a cloud-init NoCloud seed directory instead (meta-data,
//!                       user-data, network-config, optional `generation`)
//!   <key>.meta.toml     optional: policy class and flags of that VM
//! ```
//!
//! A VM's document is found by its UUID first, then by its name. Keys are the file names found
//! in the directory (a name must match `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`; other files are
//! ignored): the lookup is a map lookup, so a VM name never becomes part of a path. The store is
//! re-read when [`Store::reload`] is called (the daemon does so every few seconds and on SIGHUP);
//! only files whose size or mtime changed are parsed again.
//!
//! `<key>.meta.toml`:
//!
//! ```toml
//! class = "web"                 # matched by `vm-class` in the policy
//! [flags]
//! guest-log = true              # matched by `if-flag guest-log true`
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::doc::{self, Document, Format};

/// Per-VM metadata for the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// The VM's class.
    #[serde(default)]
    pub class: String,
    /// Per-VM boolean flags.
    #[serde(default)]
    pub flags: BTreeMap<String, bool>,
}

/// Size and modification time of a store entry: re-parse only when it changes.
type Stamp = (u64, Option<SystemTime>);

#[derive(Debug, Clone)]
struct Entry<T> {
    stamp: Stamp,
    file: PathBuf,
    value: Result<Arc<T>, String>,
}

/// What the store has for one VM.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A valid document, with the key and file it came from.
    Found {
        /// The document.
        doc: Arc<Document>,
        /// The key it was found under (UUID or name).
        key: String,
    },
    /// The VM's document exists but is invalid.
    Invalid {
        /// The file.
        file: String,
        /// Why.
        error: String,
    },
    /// No document for this VM.
    Missing,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    docs: HashMap<String, Entry<Document>>,
    metas: HashMap<String, Entry<Meta>>,
    /// Increases on every reload that changed anything.
    pub epoch: u64,
}

/// True for a usable store key (VM name or UUID as a file stem).
pub fn valid_key(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn split_name(file: &str) -> Option<(String, Option<Format>)> {
    let (stem, fmt) = if let Some(stem) = file.strip_suffix(".meta.toml") {
        (stem, None)
    } else if let Some(stem) = file.strip_suffix(".json") {
        (stem, Some(Format::Json))
    } else if let Some(stem) = file.strip_suffix(".nocloud") {
        (stem, Some(Format::NoCloud))
    } else {
        return None;
    };
    valid_key(stem).then(|| (stem.to_string(), fmt))
}

/// Size and newest mtime of a file, or of the files directly inside a directory.
fn stamp_of(path: &Path, md: &std::fs::Metadata) -> Stamp {
    if !md.is_dir() {
        return (md.len(), md.modified().ok());
    }
    let mut len = 0;
    let mut newest = md.modified().ok();
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                len += m.len();
                newest = newest.max(m.modified().ok());
            }
        }
    }
    (len, newest)
}

impl Store {
    /// A store over `dir` (not read yet: call [`Store::reload`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store {
            dir: dir.into(),
            docs: HashMap::new(),
            metas: HashMap::new(),
            epoch: 0,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of document keys (valid or not).
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// True when the store has no document.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Re-read the directory; returns the keys whose document or metadata changed (appeared,
    /// changed or disappeared). Bumps [`Store::epoch`] when that is not empty.
    pub fn reload(&mut self) -> std::io::Result<Vec<String>> {
        let mut seen_docs: HashMap<String, (PathBuf, Format, Stamp)> = HashMap::new();
        let mut seen_metas: HashMap<String, (PathBuf, Stamp)> = HashMap::new();
        for ent in std::fs::read_dir(&self.dir)? {
            let ent = ent?;
            let Some(fname) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some((key, fmt)) = split_name(&fname) else {
                continue;
            };
            // Symlinks are followed (a store may be assembled from links).
            let Ok(md) = std::fs::metadata(ent.path()) else {
                continue;
            };
            if md.is_dir() != (fmt == Some(Format::NoCloud)) {
                continue;
            }
            let stamp = stamp_of(&ent.path(), &md);
            match fmt {
                Some(f) => {
                    // Two sources for one key: keep the first in a stable order (json < nocloud).
                    let e = seen_docs.entry(key).or_insert((ent.path(), f, stamp));
                    if ent.path() < e.0 {
                        *e = (ent.path(), f, stamp);
                    }
                }
                None => {
                    seen_metas.insert(key, (ent.path(), stamp));
                }
            }
        }
        let mut changed = Vec::new();
        self.docs.retain(|k, _| {
            let keep = seen_docs.contains_key(k);
            if !keep {
                changed.push(k.clone());
            }
            keep
        });
        self.metas.retain(|k, _| {
            let keep = seen_metas.contains_key(k);
            if !keep {
                changed.push(k.clone());
            }
            keep
        });
        for (key, (file, fmt, stamp)) in seen_docs {
            if let Some(e) = self.docs.get(&key) {
                if e.stamp == stamp && e.file == file {
                    continue;
                }
            }
            let value = match fmt {
                Format::Json => std::fs::read(&file)
                    .map_err(|e| e.to_string())
                    .and_then(|b| doc::parse_json(&b)),
                Format::NoCloud => doc::parse_nocloud_dir(&file),
            }
            .map(Arc::new);
            let same = matches!(
                (self.docs.get(&key).map(|e| &e.value), &value),
                (Some(Ok(a)), Ok(b)) if a.digest == b.digest
            );
            self.docs.insert(key.clone(), Entry { stamp, file, value });
            if !same {
                changed.push(key);
            }
        }
        for (key, (file, stamp)) in seen_metas {
            if let Some(e) = self.metas.get(&key) {
                if e.stamp == stamp {
                    continue;
                }
            }
            let value = std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|t| toml::from_str::<Meta>(&t).map_err(|e| e.to_string()))
                .map(Arc::new);
            self.metas.insert(key.clone(), Entry { stamp, file, value });
            changed.push(key);
        }
        if !changed.is_empty() {
            self.epoch += 1;
        }
        Ok(changed)
    }

    fn keys<'a>(uuid: Option<&'a str>, name: Option<&'a str>) -> impl Iterator<Item = &'a str> {
        uuid.into_iter().chain(name).filter(|k| valid_key(k))
    }

    /// The document for a VM: by UUID first, then by name.
    pub fn lookup(&self, uuid: Option<&str>, name: Option<&str>) -> Lookup {
        for k in Self::keys(uuid, name) {
            if let Some(e) = self.docs.get(k) {
                return match &e.value {
                    Ok(doc) => Lookup::Found {
                        doc: doc.clone(),
                        key: k.to_string(),
                    },
                    Err(error) => Lookup::Invalid {
                        file: e.file.display().to_string(),
                        error: error.clone(),
                    },
                };
            }
        }
        Lookup::Missing
    }

    /// The policy metadata for a VM (UUID first, then name); invalid metadata counts as none
    /// (default deny still applies) and is reported by [`Store::errors`].
    pub fn meta(&self, uuid: Option<&str>, name: Option<&str>) -> Arc<Meta> {
        for k in Self::keys(uuid, name) {
            if let Some(Entry { value: Ok(m), .. }) = self.metas.get(k) {
                return m.clone();
            }
        }
        Arc::new(Meta::default())
    }

    /// Every invalid file with its error.
    pub fn errors(&self) -> Vec<(String, String)> {
        let d = self.docs.values().filter_map(|e| {
            e.value
                .as_ref()
                .err()
                .map(|x| (e.file.display().to_string(), x.clone()))
        });
        let m = self.metas.values().filter_map(|e| {
            e.value
                .as_ref()
                .err()
                .map(|x| (e.file.display().to_string(), x.clone()))
        });
        d.chain(m).collect()
    }
}

/// Where a daemon's documents come from: the directory (the embedded default) or etcd.
#[derive(Debug)]
pub enum Documents {
    /// `--store DIR`.
    Dir(Store),
    /// `--store etcd://…`.
    Etcd(crate::etcd::EtcdDocs),
}

impl Documents {
    /// The document for a VM: by UUID first, then by name.
    pub fn lookup(&self, uuid: Option<&str>, name: Option<&str>) -> Lookup {
        match self {
            Documents::Dir(s) => s.lookup(uuid, name),
            Documents::Etcd(d) => d.lookup(uuid, name),
        }
    }

    /// The policy metadata for a VM.
    pub fn meta(&self, uuid: Option<&str>, name: Option<&str>) -> Arc<Meta> {
        match self {
            Documents::Dir(s) => s.meta(uuid, name),
            Documents::Etcd(d) => d.meta(uuid, name),
        }
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        match self {
            Documents::Dir(s) => s.len(),
            Documents::Etcd(d) => d.len(),
        }
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Increases on every change.
    pub fn epoch(&self) -> u64 {
        match self {
            Documents::Dir(s) => s.epoch,
            Documents::Etcd(d) => d.epoch,
        }
    }

    /// Where the documents are, for messages ("… in DIR", "… in etcd://…/vms/").
    pub fn describe(&self) -> String {
        match self {
            Documents::Dir(s) => s.dir().display().to_string(),
            Documents::Etcd(d) if !d.listed => {
                format!("{} (not listed yet: etcd not reached)", d.describe())
            }
            Documents::Etcd(d) => d.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "6f1c7f4e-2b1a-4c3d-9e8f-0123456789ab";
    const DOC1: &str = r#"{"instance-id": "i", "generation": 1}"#;
    const DOC2: &str = r#"{"instance-id": "i", "generation": 2}"#;
    const DOC22: &str = r#"{"instance-id": "i", "generation": 22}"#;

    #[test]
    fn lookup_by_uuid_then_name() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("web1.json"), DOC1).unwrap();
        std::fs::write(t.path().join(format!("{UUID}.json")), DOC2).unwrap();
        std::fs::write(t.path().join("bad.json"), r#"{"hostname": "x"}"#).unwrap();
        std::fs::write(t.path().join("README"), "ignored").unwrap();
        let nc = t.path().join("seeded.nocloud");
        std::fs::create_dir(&nc).unwrap();
        std::fs::write(nc.join("meta-data"), "instance-id: iid-9\n").unwrap();
        std::fs::write(nc.join("user-data"), "#cloud-config\n").unwrap();
        std::fs::write(t.path().join(".hidden.json"), "{}").unwrap();
        let mut s = Store::new(t.path());
        let changed = s.reload().unwrap();
        assert_eq!(changed.len(), 4);
        assert_eq!(s.len(), 4);
        assert!(
            matches!(s.lookup(None, Some("seeded")), Lookup::Found { doc, .. } if doc.instance_id == "iid-9")
        );
        match s.lookup(Some(UUID), Some("web1")) {
            Lookup::Found { doc, key } => {
                assert_eq!(doc.generation, 2);
                assert_eq!(key, UUID);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(s.lookup(None, Some("web1")), Lookup::Found { doc, .. } if doc.generation == 1)
        );
        assert!(matches!(
            s.lookup(None, Some("bad")),
            Lookup::Invalid { .. }
        ));
        assert_eq!(s.lookup(None, Some("nope")), Lookup::Missing);
        // A hostile name never reaches the filesystem: it is not even a valid key.
        assert_eq!(s.lookup(None, Some("../web1")), Lookup::Missing);
        assert_eq!(s.errors().len(), 1);
    }

    #[test]
    fn reload_reports_changes_only() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("vm.json");
        std::fs::write(&f, DOC1).unwrap();
        let mut s = Store::new(t.path());
        assert_eq!(s.reload().unwrap(), vec!["vm".to_string()]);
        let e = s.epoch;
        assert!(s.reload().unwrap().is_empty());
        assert_eq!(s.epoch, e);
        std::fs::write(&f, DOC22).unwrap();
        assert_eq!(s.reload().unwrap(), vec!["vm".to_string()]);
        assert!(
            matches!(s.lookup(None, Some("vm")), Lookup::Found { doc, .. } if doc.generation == 22)
        );
        std::fs::remove_file(&f).unwrap();
        assert_eq!(s.reload().unwrap(), vec!["vm".to_string()]);
        assert_eq!(s.lookup(None, Some("vm")), Lookup::Missing);
    }

    #[test]
    fn metadata() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("vm.meta.toml"),
            "class = \"web\"\n[flags]\nguest-log = true\n",
        )
        .unwrap();
        std::fs::write(t.path().join("other.meta.toml"), "colour = 1\n").unwrap();
        let mut s = Store::new(t.path());
        s.reload().unwrap();
        let m = s.meta(None, Some("vm"));
        assert_eq!(m.class, "web");
        assert_eq!(m.flags.get("guest-log"), Some(&true));
        assert_eq!(*s.meta(None, Some("other")), Meta::default());
        assert_eq!(s.errors().len(), 1);
    }

    #[test]
    fn keys() {
        assert!(valid_key("web-01.example"));
        assert!(valid_key(UUID));
        for k in ["", ".x", "a/b", "..", "a b", "é"] {
            assert!(!valid_key(k), "{k:?}");
        }
    }
}
