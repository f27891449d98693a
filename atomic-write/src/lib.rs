//! The one way xenplug replaces a file that other programs, or later runs, read: block's state
//! records, vif-nat's dnsmasq hosts file, `xenplug install`'s manifest, and every file the guest
//! agent writes (`/etc/hostname`, `authorized_keys`, `shadow`, network files, …).
//!
//! [`write`] creates a temporary file in the target's directory (so the rename cannot cross a
//! filesystem), writes the content, sets mode and owner, fsyncs it, renames it over the target
//! and fsyncs the directory. A crash at any point leaves the old file or the new one, never a
//! torn or empty one; a failure at any step removes the temporary file (it is a
//! [`tempfile::NamedTempFile`] until the rename).
//!
//! Why not a crate such as `atomic-write-file`: it does the same (and fsyncs the directory), but
//! pulls in a second `nix` and `rand` for what is twenty lines over `tempfile`, which the
//! workspace already uses.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Owner to give a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// `e` with `what` and the path in front: `fsync /etc/.hostname.xenplug-abc: I/O error`.
fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Replace `path` with `data` atomically and durably, with permission bits `mode` and, when
/// given, `owner` (see the crate documentation). The parent directory must exist.
pub fn write(path: &Path, data: &[u8], mode: u32, owner: Option<Owner>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        Some(_) => Path::new("."),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no parent directory", path.display()),
            ))
        }
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.xenplug-"))
        .tempfile_in(dir)
        .map_err(|e| ctx(e, "create a temporary file in", dir))?;
    tmp.write_all(data)
        .map_err(|e| ctx(e, "write", tmp.path()))?;
    let f = tmp.as_file();
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| ctx(e, &format!("chmod {mode:o}"), tmp.path()))?;
    if let Some(o) = owner {
        std::os::unix::fs::fchown(f, Some(o.uid), Some(o.gid))
            .map_err(|e| ctx(e, &format!("chown {}:{}", o.uid, o.gid), tmp.path()))?;
    }
    f.sync_all().map_err(|e| ctx(e, "fsync", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| ctx(e.error, "rename into", path))?;
    sync_dir(dir)
}

/// fsync a directory, which makes a rename, link or unlink in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ctx(e, "fsync directory", dir))
}

/// Remove `path` if it exists and fsync its directory; true when something was removed.
pub fn remove(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                sync_dir(d)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ctx(e, "remove", path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_with_mode_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write(&p, b"one\n", 0o640, None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        write(&p, b"two\n", 0o600, None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(names(d.path()), ["f"]);
    }

    #[test]
    fn a_failed_replacement_keeps_the_old_file_and_removes_the_temporary_one() {
        let d = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails after everything else worked.
        let p = d.path().join("t");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("inside"), "x").unwrap();
        let e = write(&p, b"new", 0o644, None).unwrap_err();
        assert!(e.to_string().starts_with("rename into "), "{e}");
        assert_eq!(names(d.path()), ["t"]);
        assert_eq!(names(&p), ["inside"]);
        // No parent directory at all.
        assert!(write(&d.path().join("no/such/f"), b"x", 0o644, None).is_err());
    }

    #[test]
    fn owner_is_set_and_removal_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("o");
        let me = fs::metadata(d.path()).unwrap();
        let owner = Owner {
            uid: me.uid(),
            gid: me.gid(),
        };
        write(&p, b"x", 0o644, Some(owner)).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (owner.uid, owner.gid));
        assert!(remove(&p).unwrap());
        assert!(!remove(&p).unwrap());
    }
}
