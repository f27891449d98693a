//! `guest-file-*`: files opened by handle, read and written in base64, as qemu-ga does.
//!
//! * `mode` is an fopen(3) mode; files are opened `O_NOCTTY|O_NONBLOCK|O_CLOEXEC` (a named pipe
//!   never hangs the agent). A file the mode creates gets 0666 whatever the umask: it is created
//!   exclusively with mode 0, then chmod'ed (an existing file keeps its mode).
//! * Handles are 64-bit numbers that are never reused, even across agent restarts: the counter
//!   lives in the state directory (`fd-counter`) and starts at 1000, as qemu-ga's.
//! * No user-space buffering: writes reach the kernel at once, so `guest-file-flush` has nothing
//!   to push and succeeds.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use xenplug_channel::qga::{FileRead, FileSeek, FileWrite, SeekName, Whence};
use xenplug_channel::ErrorBody;

/// Default `count` of `guest-file-read`.
pub const READ_DEFAULT: i64 = 4096;
/// Largest `count` of `guest-file-read` (48 MiB, qemu-ga's limit).
pub const READ_MAX: i64 = 48 * 1024 * 1024;
/// First handle number.
pub const FIRST_HANDLE: i64 = 1000;
/// Files open at once.
pub const MAX_OPEN: usize = 1024;

use super::io_desc as errno_desc;

/// The open flags of an fopen(3) mode (qemu-ga's table).
pub fn open_flags(mode: &str) -> Option<libc::c_int> {
    use libc::{O_APPEND, O_CREAT, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY};
    Some(match mode {
        "r" | "rb" => O_RDONLY,
        "w" | "wb" => O_WRONLY | O_CREAT | O_TRUNC,
        "a" | "ab" => O_WRONLY | O_CREAT | O_APPEND,
        "r+" | "rb+" | "r+b" => O_RDWR,
        "w+" | "wb+" | "w+b" => O_RDWR | O_CREAT | O_TRUNC,
        "a+" | "ab+" | "a+b" => O_RDWR | O_CREAT | O_APPEND,
        _ => return None,
    })
}

/// Files opened by `guest-file-open`.
#[derive(Debug)]
pub struct FileTable {
    files: HashMap<i64, File>,
    counter_file: Option<PathBuf>,
    next: i64,
}

impl FileTable {
    /// A table whose handle counter is kept in `statedir/fd-counter` (none: in memory only).
    pub fn new(statedir: Option<&Path>) -> Self {
        let counter_file = statedir.map(|d| d.join("fd-counter"));
        let next = counter_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= FIRST_HANDLE)
            .unwrap_or(FIRST_HANDLE);
        FileTable {
            files: HashMap::new(),
            counter_file,
            next,
        }
    }

    fn new_handle(&mut self) -> Result<i64, ErrorBody> {
        let h = self.next;
        let next = h + 1;
        if let Some(f) = &self.counter_file {
            // The state directory is on /run (tmpfs): never frozen, gone at reboot.
            if let Some(d) = f.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            crate::fsutil::write_atomic(f, format!("{next}\n").as_bytes(), 0o600, None)
                .map_err(|e| ErrorBody::generic(format!("failed to record the handle: {e:#}")))?;
        }
        self.next = next;
        Ok(h)
    }

    fn get(&mut self, handle: i64) -> Result<&mut File, ErrorBody> {
        self.files
            .get_mut(&handle)
            .ok_or_else(|| ErrorBody::generic(format!("handle '{handle}' has not been found")))
    }

    /// `guest-file-open`.
    pub fn open(&mut self, path: &str, mode: Option<&str>) -> Result<i64, ErrorBody> {
        let mode = mode.unwrap_or("r");
        let Some(flags) = open_flags(mode) else {
            return Err(ErrorBody::generic(format!(
                "invalid file open mode '{mode}'"
            )));
        };
        if self.files.len() >= MAX_OPEN {
            return Err(ErrorBody::generic(format!(
                "too many open handles (limit {MAX_OPEN})"
            )));
        }
        let fail = |e: std::io::Error| {
            ErrorBody::generic(format!(
                "failed to open file '{path}' (mode: '{mode}'): {}",
                errno_desc(&e)
            ))
        };
        let options = |flags: libc::c_int| {
            let mut o = std::fs::OpenOptions::new();
            let acc = flags & libc::O_ACCMODE;
            o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
                .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
                .custom_flags(
                    (flags & !(libc::O_ACCMODE | libc::O_CREAT))
                        | libc::O_NOCTTY
                        | libc::O_NONBLOCK
                        | libc::O_CLOEXEC,
                )
                .mode(0o0);
            o
        };
        let created;
        let file = if flags & libc::O_CREAT != 0 {
            let mut o = options(flags);
            o.create_new(true);
            match o.open(path) {
                Ok(f) => {
                    created = true;
                    f
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    created = false;
                    options(flags).open(path).map_err(fail)?
                }
                Err(e) => return Err(fail(e)),
            }
        } else {
            created = false;
            options(flags).open(path).map_err(fail)?
        };
        if created {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(0o666)) {
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(ErrorBody::generic(format!(
                    "failed to set permission 0666 on new file '{path}' (mode: '{mode}'): {}",
                    errno_desc(&e)
                )));
            }
        }
        let h = self.new_handle()?;
        self.files.insert(h, file);
        crate::log::event(
            "file-open",
            &[("path", path), ("mode", mode), ("handle", &h.to_string())],
        );
        Ok(h)
    }

    /// `guest-file-close`.
    pub fn close(&mut self, handle: i64) -> Result<(), ErrorBody> {
        self.get(handle)?;
        // Nothing is buffered here, so there is nothing a failing close(2) could lose.
        drop(self.files.remove(&handle));
        Ok(())
    }

    /// `guest-file-read`.
    pub fn read(&mut self, handle: i64, count: Option<i64>) -> Result<FileRead, ErrorBody> {
        let f = self.get(handle)?;
        let count = count.unwrap_or(READ_DEFAULT);
        if !(0..=READ_MAX).contains(&count) {
            return Err(ErrorBody::generic(format!(
                "value '{count}' is invalid for argument count"
            )));
        }
        let count = count as usize;
        let mut buf = vec![0u8; count];
        let mut got = 0;
        let mut eof = false;
        while got < count {
            match f.read(&mut buf[got..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A pipe with nothing more to give now: what was read is the answer.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => break,
                Err(e) => {
                    return Err(ErrorBody::generic(format!(
                        "failed to read file: {}",
                        errno_desc(&e)
                    )))
                }
            }
        }
        buf.truncate(got);
        Ok(FileRead {
            count: got as i64,
            buf_b64: base64::engine::general_purpose::STANDARD.encode(&buf),
            eof,
        })
    }

    /// `guest-file-write`.
    pub fn write(
        &mut self,
        handle: i64,
        buf_b64: &str,
        count: Option<i64>,
    ) -> Result<FileWrite, ErrorBody> {
        let f = self.get(handle)?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(buf_b64.trim())
            .map_err(|_| ErrorBody::generic("Base64 data contains invalid characters"))?;
        let count = match count {
            None => data.len(),
            Some(c) if c >= 0 && (c as u64) <= data.len() as u64 => c as usize,
            Some(c) => {
                return Err(ErrorBody::generic(format!(
                    "value '{c}' is invalid for argument count"
                )))
            }
        };
        f.write_all(&data[..count]).map_err(|e| {
            ErrorBody::generic(format!("failed to write to file: {}", errno_desc(&e)))
        })?;
        Ok(FileWrite {
            count: count as i64,
            eof: false,
        })
    }

    /// `guest-file-seek`.
    pub fn seek(
        &mut self,
        handle: i64,
        offset: i64,
        whence: Whence,
    ) -> Result<FileSeek, ErrorBody> {
        let f = self.get(handle)?;
        let name = match whence {
            Whence::Name(n) => n,
            Whence::Value(0) => SeekName::Set,
            Whence::Value(1) => SeekName::Cur,
            Whence::Value(2) => SeekName::End,
            Whence::Value(n) => return Err(ErrorBody::generic(format!("invalid whence code {n}"))),
        };
        let to = match name {
            SeekName::Set if offset < 0 => {
                return Err(ErrorBody::generic("failed to seek file: Invalid argument"))
            }
            SeekName::Set => SeekFrom::Start(offset as u64),
            SeekName::Cur => SeekFrom::Current(offset),
            SeekName::End => SeekFrom::End(offset),
        };
        let position = f
            .seek(to)
            .map_err(|e| ErrorBody::generic(format!("failed to seek file: {}", errno_desc(&e))))?;
        Ok(FileSeek {
            position: position as i64,
            eof: false,
        })
    }

    /// `guest-file-flush`: nothing is buffered in the agent.
    pub fn flush(&mut self, handle: i64) -> Result<(), ErrorBody> {
        self.get(handle).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_handles() {
        assert_eq!(open_flags("zz"), None);
        assert_eq!(open_flags("r+b"), Some(libc::O_RDWR));
        let d = tempfile::tempdir().unwrap();
        let mut t = FileTable::new(Some(d.path()));
        let p = d.path().join("f");
        let h = t.open(p.to_str().unwrap(), Some("w+")).unwrap();
        assert_eq!(h, FIRST_HANDLE);
        assert_eq!(t.write(h, "AAEC/w==", None).unwrap().count, 4);
        assert_eq!(
            t.write(h, "AAEC/w==", Some(9)).unwrap_err().desc,
            "value '9' is invalid for argument count"
        );
        t.seek(h, 0, Whence::Value(0)).unwrap();
        let r = t.read(h, None).unwrap();
        assert_eq!((r.count, r.buf_b64.as_str(), r.eof), (4, "AAEC/w==", true));
        t.close(h).unwrap();
        assert_eq!(
            t.close(h).unwrap_err().desc,
            format!("handle '{h}' has not been found")
        );
        // Never reused, also by a new table on the same state directory.
        let mut t2 = FileTable::new(Some(d.path()));
        assert_eq!(
            t2.open(p.to_str().unwrap(), None).unwrap(),
            FIRST_HANDLE + 1
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o666);
    }
}
