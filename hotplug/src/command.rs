//! Children with the environment xen-hotplug-common.sh gives them.
//!
//! The shell scripts do, for themselves and so for every child:
//! `export PATH="${bindir}:${sbindir}:${LIBEXEC_BIN}:/sbin:/bin:/usr/bin:/usr/sbin:$PATH"`,
//! `export LANG="POSIX"` and unset every `LC_*`. Our own code does not depend on the locale, so
//! this matters only for the programs we spawn; [`command`] builds such a [`Command`].
//!
//! libxl SIGKILLs a script after 40 s, and only the script: a child still running then (an
//! `nbd-client` connecting, an `iscsiadm` login, `modprobe`, `nft`) outlives it and finishes
//! unobserved. So every child of a script runs under the script's deadline ([`output_until`]):
//! killed when it is reached, which the script then reports and undoes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Read `r` to its end on a thread; the result arrives on the returned channel. (A grandchild
/// that inherited the pipe can keep it open after the child exits: the caller bounds its wait.)
fn drain(mut r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// A pidfd for `child` (Linux 5.3+), readable once it exits; `None` where the kernel has none.
fn pidfd_of(child: &Child) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(child.id()).ok()?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; the child is not
    // reaped yet (only `Child::wait` reaps it), so the pid still names it.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Wait for `child` to exit until `deadline`; `None` when it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    if let Some(fd) = pidfd_of(child) {
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(Some(st));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on one valid pollfd that lives for the call.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    // No pidfd: poll the child, backing off from 0.1 ms to 5 ms.
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Run `cmd` to completion, feeding it `input` on stdin when given (else the command's own
/// stdin), capturing stdout and stderr, but no later than `deadline`: a child still running
/// then is killed (SIGKILL) and reaped, and `Ok(None)` is returned. `Err` when it cannot be
/// started.
pub fn output_until(
    cmd: &mut Command,
    input: Option<&[u8]>,
    deadline: Instant,
) -> io::Result<Option<Output>> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn()?;
    let out = drain(child.stdout.take().expect("stdout is piped"));
    let err = drain(child.stderr.take().expect("stderr is piped"));
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // A child that exits without reading everything closes the pipe: not our error.
        let _ = stdin.write_all(data);
    }
    let status = match wait_until(&mut child, deadline) {
        Ok(Some(st)) => st,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    // What the child wrote is complete once its pipes close; a grandchild holding them open
    // (a daemon that kept its stdio) is waited for at most a second (and never past the
    // deadline), then its pipe's contents are dropped.
    let collect = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left.min(Duration::from_secs(1)))
            .unwrap_or_default()
    };
    Ok(Some(Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    }))
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
    fn output_until_feeds_stdin_and_kills_at_the_deadline() {
        let far = Instant::now() + Duration::from_secs(30);
        let out = output_until(Command::new("cat").arg("-"), Some(b"hello\n"), far)
            .unwrap()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello\n");
        let out = output_until(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            None,
            far,
        )
        .unwrap()
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
        let t0 = Instant::now();
        let killed = output_until(
            Command::new("sleep").arg("30"),
            None,
            t0 + Duration::from_millis(200),
        )
        .unwrap();
        assert!(killed.is_none());
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(output_until(&mut Command::new("/nonexistent/x"), None, far).is_err());
    }

    #[test]
    fn path_without_inherited() {
        assert_eq!(
            child_path(Path::new("/x"), None),
            "/usr/bin:/usr/sbin:/x:/sbin:/bin:/usr/bin:/usr/sbin"
        );
    }
}
