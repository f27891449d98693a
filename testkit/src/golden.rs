//! Golden files: a planner's output kept in the repository, so that a change of behaviour shows
//! up in review as a diff of that file.
//!
//! [`check`] compares a rendered output with its file. To accept a deliberate change, run the
//! tests with `XENPLUG_BLESS=1` (for example `XENPLUG_BLESS=1 cargo test -p xenplug-vif golden`),
//! which (re)writes the files, and commit them with the change.

use std::path::Path;

/// The variable that makes [`check`] write the files instead of comparing.
pub const BLESS_ENV: &str = "XENPLUG_BLESS";

fn blessing() -> bool {
    std::env::var(BLESS_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Compare `actual` with the golden file `path`, or write it under `XENPLUG_BLESS=1`. A missing
/// file is a failure (a golden file is never created silently).
#[track_caller]
pub fn check(path: impl AsRef<Path>, actual: &str) {
    let path = path.as_ref();
    if blessing() {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).expect("create the golden directory");
        }
        std::fs::write(path, actual).expect("write the golden file");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "golden file {}: {e} (run with {BLESS_ENV}=1 to create it)",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let line = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    panic!(
        "{} differs from the planner's output at line {}:\n  golden: {}\n  actual: {}\n\
         (if the change is intended, run with {BLESS_ENV}=1 and commit the file)",
        path.display(),
        line + 1,
        e.get(line).unwrap_or(&"<end of file>"),
        a.get(line).unwrap_or(&"<end of output>"),
    );
}
