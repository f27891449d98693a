//! Atomic file writes (afterburn's discipline) and paths under an injected root.
//!
//! Every file another program reads is replaced, never rewritten in place, with the workspace's
//! one atomic write ([`xenplug_atomic_write::write`]: a temporary file in the same directory gets
//! the content, mode and owner, is fsynced, renamed over the target, and the directory is
//! fsynced). A crash at any point leaves either the old or the new file.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

/// `abs` (an absolute path such as `/etc/hostname`) under `root`.
pub fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Owner to give a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Replace `path` with `data` atomically, with `mode` and (when given) `owner`. Returns false
/// (and touches nothing) when the file already has exactly this content and mode.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, owner: Option<Owner>) -> Result<bool> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_file()
            && meta.mode() & 0o7777 == mode
            && owner.is_none_or(|o| o.uid == meta.uid() && o.gid == meta.gid())
        {
            if let Ok(old) = fs::read(path) {
                if old == data {
                    return Ok(false);
                }
            }
        }
    }
    xenplug_atomic_write::write(
        path,
        data,
        mode,
        owner.map(|o| xenplug_atomic_write::Owner {
            uid: o.uid,
            gid: o.gid,
        }),
    )?;
    Ok(true)
}

/// fsync a directory (makes a rename or unlink in it durable).
pub fn sync_dir(dir: &Path) -> Result<()> {
    Ok(xenplug_atomic_write::sync_dir(dir)?)
}

/// Remove a file if it exists (and fsync its directory); true when something was removed.
pub fn remove_file(path: &Path) -> Result<bool> {
    Ok(xenplug_atomic_write::remove(path)?)
}

/// Mode and owner of an existing file, to keep them when replacing it.
pub fn mode_owner(path: &Path) -> Option<(u32, Owner)> {
    fs::metadata(path).ok().map(|m| {
        (
            m.mode() & 0o7777,
            Owner {
                uid: m.uid(),
                gid: m.gid(),
            },
        )
    })
}

/// Replace the lines between `begin` and `end` marker lines in `text` with `body` (a block is
/// appended when there is none; removed when `body` is empty). Text outside the block is kept
/// byte for byte.
pub fn replace_block(text: &str, begin: &str, end: &str, body: &[String]) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut placed = false;
    let block = |out: &mut String| {
        if !body.is_empty() {
            out.push_str(begin);
            out.push('\n');
            for l in body {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str(end);
            out.push('\n');
        }
    };
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if !inside && bare == begin {
            inside = true;
            if !placed {
                block(&mut out);
                placed = true;
            }
            continue;
        }
        if inside {
            if bare == end {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
    }
    if !placed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        block(&mut out);
    }
    out
}

/// The lines inside the block (empty when there is none).
pub fn read_block(text: &str, begin: &str, end: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line == begin {
            inside = true;
        } else if line == end {
            inside = false;
        } else if inside {
            out.push(line.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_detects_noop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        assert!(write_atomic(&p, b"one\n", 0o640, None).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"one\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert!(!write_atomic(&p, b"one\n", 0o640, None).unwrap());
        assert!(write_atomic(&p, b"one\n", 0o600, None).unwrap());
        assert!(write_atomic(&p, b"two\n", 0o600, None).unwrap());
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }

    #[test]
    fn blocks() {
        let b = "# BEGIN x";
        let e = "# END x";
        let t = "keep1\n# BEGIN x\nold\n# END x\nkeep2";
        assert_eq!(
            replace_block(t, b, e, &["new".into()]),
            "keep1\n# BEGIN x\nnew\n# END x\nkeep2"
        );
        assert_eq!(replace_block(t, b, e, &[]), "keep1\nkeep2");
        assert_eq!(
            replace_block("a", b, e, &["n".into()]),
            "a\n# BEGIN x\nn\n# END x\n"
        );
        assert_eq!(read_block(t, b, e), vec!["old".to_string()]);
    }
}
