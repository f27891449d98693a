//! Children with the environment xen-hotplug-common.sh gives them.
//!
//! The shell scripts do, for themselves and so for every child:
//! `export PATH="${bindir}:${sbindir}:${LIBEXEC_BIN}:/sbin:/bin:/usr/bin:/usr/sbin:$PATH"`,
//! `export LANG="POSIX"` and unset every `LC_*`. Our own code does not depend on the locale, so
//! this matters only for the programs we spawn; [`command`] builds such a [`Command`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::config::Config;

/// `bindir` and `sbindir` of hotplugpath.sh.
const BINDIR: &str = "/usr/bin";
const SBINDIR: &str = "/usr/sbin";

/// The PATH children get: Xen's directories first, then the caller's `PATH` (if any).
pub fn child_path(libexec_bin: &Path, inherited: Option<&str>) -> String {
    let mut p = format!(
        "{BINDIR}:{SBINDIR}:{}:/sbin:/bin:/usr/bin:/usr/sbin",
        libexec_bin.display()
    );
    if let Some(rest) = inherited.filter(|s| !s.is_empty()) {
        p.push(':');
        p.push_str(rest);
    }
    p
}

/// A [`Command`] for `program` with the hotplug environment, built on the current process's
/// environment and the default configuration's Xen libexec directory.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let env: BTreeMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    command_in(program, &env, &Config::default().libexec_bin_dir())
}

/// A [`Command`] for `program` whose environment is exactly `env` with the normalisation applied:
/// `LANG=POSIX`, no `LC_*`, PATH from [`child_path`]. stdin is `/dev/null` (as libxl gives the
/// script).
pub fn command_in(
    program: impl AsRef<OsStr>,
    env: &BTreeMap<String, String>,
    libexec_bin: &Path,
) -> Command {
    let mut c = Command::new(program);
    c.env_clear();
    c.envs(
        env.iter()
            .filter(|(k, _)| !k.starts_with("LC_") && *k != "LANG" && *k != "PATH"),
    );
    c.env("LANG", "POSIX");
    c.env(
        "PATH",
        child_path(libexec_bin, env.get("PATH").map(String::as_str)),
    );
    c.stdin(Stdio::null());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_normalised() {
        let env: BTreeMap<String, String> = [
            ("LC_ALL", "de_DE.UTF-8"),
            ("LC_MESSAGES", "fr_FR"),
            ("LANG", "de_DE.UTF-8"),
            ("PATH", "/opt/bin"),
            ("XENBUS_PATH", "backend/vbd/1/2"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let out = command_in("env", &env, Path::new("/usr/lib/xen-4.17/bin"))
            .output()
            .expect("run env");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            vec![
                "LANG=POSIX",
                "PATH=/usr/bin:/usr/sbin:/usr/lib/xen-4.17/bin:/sbin:/bin:/usr/bin:/usr/sbin:/opt/bin",
                "XENBUS_PATH=backend/vbd/1/2",
            ]
        );
    }

    #[test]
    fn path_without_inherited() {
        assert_eq!(
            child_path(Path::new("/x"), None),
            "/usr/bin:/usr/sbin:/x:/sbin:/bin:/usr/bin:/usr/sbin"
        );
    }
}
