//! The configuration document, as the peer handles it: the shared `xenplug-channel`
//! [`ConfigDoc`], parsed and validated once when the store loads it, then sent as the `config`
//! argument of `xenplug-apply-config`.
//!
//! Two sources are accepted: the canonical JSON document, and a cloud-init NoCloud seed
//! directory (`meta-data`, `user-data`, `network-config`, plus an optional `generation` file
//! holding the generation as a decimal number, default 1), converted by the shared crate's
//! NoCloud mapping so the agent always receives the canonical form.

use std::hash::{Hash, Hasher};
use std::path::Path;

use serde_json::Value;
use xenplug_channel::{ConfigDoc, NoCloudSeed};

/// A checked configuration document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The canonical document as JSON, exactly what is sent to the agent.
    pub value: Value,
    /// Its instance id.
    pub instance_id: String,
    /// Its generation (the agent reports the applied one; equal means nothing to do).
    pub generation: u64,
    /// A digest of the canonical JSON, to notice edits that forgot to bump the generation.
    pub digest: u64,
}

/// Source format of a store entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `<key>.json`: the canonical document.
    Json,
    /// `<key>.nocloud/`: a NoCloud seed directory.
    NoCloud,
}

fn digest(v: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// Wrap a validated [`ConfigDoc`].
pub fn from_config(doc: &ConfigDoc) -> Document {
    let value = serde_json::to_value(doc).expect("a ConfigDoc always serializes");
    Document {
        digest: digest(&value),
        instance_id: doc.instance_id.clone(),
        generation: doc.generation,
        value,
    }
}

/// Parse and validate a canonical JSON document.
pub fn parse_json(bytes: &[u8]) -> Result<Document, String> {
    ConfigDoc::from_json(bytes)
        .map(|d| from_config(&d))
        .map_err(|e| e.to_string())
}

/// Largest file read from a NoCloud directory.
const MAX_SEED_FILE: u64 = 1 << 20;

fn read_small(dir: &Path, name: &str) -> Result<Option<String>, String> {
    let p = dir.join(name);
    match std::fs::metadata(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{name}: {e}")),
        Ok(m) if m.len() > MAX_SEED_FILE => {
            return Err(format!("{name}: larger than {MAX_SEED_FILE} bytes"))
        }
        Ok(_) => {}
    }
    std::fs::read_to_string(&p)
        .map(Some)
        .map_err(|e| format!("{name}: {e}"))
}

/// Read a NoCloud seed directory.
pub fn parse_nocloud_dir(dir: &Path) -> Result<Document, String> {
    let meta_data = read_small(dir, "meta-data")?.ok_or("meta-data: missing")?;
    let generation = match read_small(dir, "generation")? {
        None => None,
        Some(t) => Some(
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("generation: {:?} is not a number", t.trim()))?,
        ),
    };
    let seed = NoCloudSeed {
        meta_data,
        user_data: read_small(dir, "user-data")?,
        network_config: read_small(dir, "network-config")?,
        generation,
    };
    ConfigDoc::from_nocloud(&seed)
        .map(|d| from_config(&d))
        .map_err(|e| e.to_string())
}

/// Largest document accepted from a store entry (etcd's own default request limit is 1.5 MiB).
pub const MAX_DOCUMENT: usize = 1 << 20;

/// Parse a store entry holding either the canonical JSON document or a NoCloud seed as a JSON
/// object of the three files (`{"meta-data": …, "user-data": …, "network-config": …,
/// "generation": N}`; an object with a `meta-data` member is a seed). This is what an etcd
/// store holds at `PREFIX/vms/<uuid>`.
pub fn parse_json_or_nocloud(bytes: &[u8]) -> Result<Document, String> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(format!("larger than {MAX_DOCUMENT} bytes"));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("meta-data").is_some() {
        let seed: NoCloudSeed =
            serde_json::from_value(v).map_err(|e| format!("NoCloud seed: {e}"))?;
        return ConfigDoc::from_nocloud(&seed)
            .map(|d| from_config(&d))
            .map_err(|e| e.to_string());
    }
    from_value(v)
}

/// Check an already parsed JSON document.
pub fn from_value(value: Value) -> Result<Document, String> {
    ConfigDoc::from_value(value)
        .map(|d| from_config(&d))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_documents() {
        let d =
            parse_json(br#"{"instance-id": "i-1", "generation": 3, "hostname": "web1"}"#).unwrap();
        assert_eq!((d.generation, d.instance_id.as_str()), (3, "i-1"));
        let e = parse_json(br#"{"instance-id": "i-1", "hostname": "web1"}"#).unwrap_err();
        assert!(e.contains("generation"), "{e}");
        let e = parse_json(br#"{"instance-id": "i", "generation": 1, "colour": 1}"#).unwrap_err();
        assert!(e.contains("colour"), "{e}");
        assert!(parse_json(b"[1]").is_err());
        let d2 =
            parse_json(br#"{"instance-id": "i-1", "generation": 3, "hostname": "web2"}"#).unwrap();
        assert_ne!(d.digest, d2.digest);
    }

    #[test]
    fn json_or_nocloud_entries() {
        let d = parse_json_or_nocloud(br#"{"instance-id": "i-1", "generation": 3}"#).unwrap();
        assert_eq!(d.generation, 3);
        let seed = serde_json::json!({"meta-data": "instance-id: iid-7\n",
            "user-data": "#cloud-config\nhostname: web7\n", "generation": 2});
        let d = parse_json_or_nocloud(seed.to_string().as_bytes()).unwrap();
        assert_eq!((d.instance_id.as_str(), d.generation), ("iid-7", 2));
        assert_eq!(d.value["hostname"], "web7");
        let e = parse_json_or_nocloud(br#"{"meta-data": "instance-id: x\n", "vendor-data": ""}"#)
            .unwrap_err();
        assert!(e.contains("vendor-data"), "{e}");
        assert!(parse_json_or_nocloud(b"{\"generation\": 1")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_json_or_nocloud(br#"{"generation": 1}"#)
            .unwrap_err()
            .contains("instance-id"));
    }

    #[test]
    fn nocloud_directories() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("meta-data"),
            "instance-id: iid-42\nlocal-hostname: web42\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("user-data"),
            "#cloud-config\nfqdn: web42.example.org\n",
        )
        .unwrap();
        std::fs::write(t.path().join("generation"), "7\n").unwrap();
        let d = parse_nocloud_dir(t.path()).unwrap();
        assert_eq!((d.generation, d.instance_id.as_str()), (7, "iid-42"));
        assert_eq!(d.value["hostname"], "web42");
        std::fs::write(
            t.path().join("user-data"),
            "#cloud-config\npackages: [nginx]\n",
        )
        .unwrap();
        let e = parse_nocloud_dir(t.path()).unwrap_err();
        assert!(
            e.contains("user-data.packages: not supported by xenplug-agent"),
            "{e}"
        );
    }
}
