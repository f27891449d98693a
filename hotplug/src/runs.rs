//! Marks of the runs that may leave children behind, so that a teardown looks under `/proc` for
//! what a killed run left running ([`crate::procs::Procs::orphans_of`]) only when a run was
//! killed.
//!
//! A run creates its mark (an empty file in `<state_dir>/xenplug-runs/`, named after the
//! backend, its pid and its start time) before it starts any program, and removes it once every
//! child it started has been reaped. A mark that outlives its run is the trace of a run killed
//! (or crashed) in between: its `nft` or `ovs-vsctl` may still be committing. The look itself
//! reads every process's `/proc` entries: 55 ms of a `vif-route offline`'s 283 ms in a dom0
//! under TCG, paid by every teardown although libxl kills a script only when it overruns its
//! 40 s (issue 21). With the marks, a teardown that finds none for its backend has nothing to
//! wait for and skips it.
//!
//! Marks live on the tmpfs under `/run`: a reboot, which ends every orphan too, clears them.
//! A teardown removes the marks of runs no longer alive once nothing they left is running.

use std::io;
use std::path::{Path, PathBuf};

use crate::procs::Procs;

/// The directory under the state directory.
pub const RUNS_DIR: &str = "xenplug-runs";

/// The mark of one run: `<dir>/<escaped backend>@<pid>@<start>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Its file.
    pub path: PathBuf,
    /// The run's pid.
    pub pid: i32,
    /// The run's start time (clock ticks after boot, as in `/proc/<pid>/stat`).
    pub start: u64,
}

/// This run's own mark: removed when dropped.
#[derive(Debug)]
pub struct RunMark {
    path: PathBuf,
}

impl RunMark {
    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunMark {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The marks in a directory, with the processes they name.
#[derive(Debug, Clone)]
pub struct Marks {
    /// `<state_dir>/xenplug-runs`.
    pub dir: PathBuf,
    /// Where the processes are.
    pub procs: Procs,
}

/// `backend` with every byte but ASCII letters, digits, `-` and `_` written `%XX`: a file name
/// that ends where the `@` after it begins.
fn escape(backend: &str) -> String {
    let mut s = String::with_capacity(backend.len() + 8);
    for b in backend.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The file name of the mark of run `pid` (started at `start`) for `backend`.
pub fn mark_name(backend: &str, pid: i32, start: u64) -> String {
    format!("{}@{pid}@{start}", escape(backend))
}

impl Marks {
    /// The marks under `state_dir`.
    pub fn new(state_dir: &Path) -> Marks {
        Marks {
            dir: state_dir.join(RUNS_DIR),
            procs: Procs::default(),
        }
    }

    /// Mark this process as a run for `backend` that may start programs.
    pub fn mark(&self, backend: &str) -> io::Result<RunMark> {
        let pid = std::process::id() as i32;
        let start = self.procs.start_of(pid).ok_or_else(|| {
            io::Error::other(format!(
                "cannot read this process's start time under {}",
                self.procs.root.display()
            ))
        })?;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{}@{pid}@{start}", escape(backend)));
        std::fs::File::create(&path)?;
        Ok(RunMark { path })
    }

    /// The marks of other runs for `backend` (this process's own left out). No directory: none.
    pub fn others(&self, backend: &str) -> io::Result<Vec<Mark>> {
        let prefix = format!("{}@", escape(backend));
        // Our own mark: this pid with this start time (a killed run may have had our pid).
        let me = std::process::id() as i32;
        let my_start = self.procs.start_of(me);
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut v = Vec::new();
        for e in entries {
            let e = e?;
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let Some((pid, start)) = rest.split_once('@') else {
                continue;
            };
            let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
                continue;
            };
            if (pid, Some(start)) != (me, my_start) {
                v.push(Mark {
                    path: e.path(),
                    pid,
                    start,
                });
            }
        }
        v.sort_by_key(|m| m.pid);
        Ok(v)
    }

    /// True while the run of mark `m` is alive (the same pid, started at the same time).
    pub fn alive(&self, m: &Mark) -> bool {
        self.procs.start_of(m.pid) == Some(m.start)
    }

    /// Remove the marks among `marks` whose run is no longer alive; how many were removed.
    pub fn remove_dead(&self, marks: &[Mark]) -> usize {
        marks
            .iter()
            .filter(|m| !self.alive(m) && std::fs::remove_file(&m.path).is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_names_keep_backends_apart() {
        assert_eq!(escape("backend/vif/5/0"), "backend%2Fvif%2F5%2F0");
        assert_ne!(escape("a@1"), escape("a%401"));
        assert_eq!(escape("a@1"), "a%401");
        // One backend's prefix is never another's: the `@` after it is never escaped text.
        assert!(!format!("{}@", escape("backend/vif/5/0"))
            .starts_with(&format!("{}@", escape("backend/vif/5/01"))));
    }

    #[test]
    fn a_mark_lives_as_long_as_its_guard_and_dead_runs_are_told_from_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let marks = Marks::new(dir.path());
        assert!(
            marks.others("backend/vif/5/0").unwrap().is_empty(),
            "no directory yet"
        );
        let mine = marks.mark("backend/vif/5/0").unwrap();
        assert!(mine.path().exists());
        // Our own mark is not another run's; a killed run that had our pid is.
        assert!(marks.others("backend/vif/5/0").unwrap().is_empty());
        let me = std::process::id() as i32;
        let old_me = marks.dir.join(mark_name(
            "backend/vif/5/0",
            me,
            marks.procs.start_of(me).unwrap() - 1,
        ));
        std::fs::write(&old_me, "").unwrap();
        assert_eq!(marks.others("backend/vif/5/0").unwrap().len(), 1);
        std::fs::remove_file(&old_me).unwrap();
        // A run that died with its mark in place (pid 1 with a start time it does not have, and
        // a pid that cannot exist), one alive (pid 1, as it is), another backend's, and names
        // that are not marks.
        let init = marks.procs.start_of(1).unwrap();
        for name in [
            format!("backend%2Fvif%2F5%2F0@1@{}", init + 1),
            "backend%2Fvif%2F5%2F0@2147483647@5".to_string(),
            format!("backend%2Fvif%2F5%2F0@1@{init}"),
            "backend%2Fvif%2F6%2F0@1@5".to_string(),
            "backend%2Fvif%2F5%2F0@x@5".to_string(),
            "stray".to_string(),
        ] {
            std::fs::write(marks.dir.join(name), "").unwrap();
        }
        let others = marks.others("backend/vif/5/0").unwrap();
        assert_eq!(others.len(), 3, "{others:?}");
        assert_eq!(others.iter().filter(|m| marks.alive(m)).count(), 1);
        assert_eq!(marks.remove_dead(&others), 2);
        let left = marks.others("backend/vif/5/0").unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].pid, left[0].start), (1, init));
        drop(mine);
        assert!(std::fs::read_dir(&marks.dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(&format!("@{}@", std::process::id()))));
    }
}
