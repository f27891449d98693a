//! Stand-ins for the NBD and iSCSI tools on a host whose kernel has neither (this binary,
//! called by other names). They model what the block scripts rely on, including what outlives
//! a SIGKILL of the script:
//!
//! * `nbd-client` (netlink mode, Debian 12's default): the handshake takes a few milliseconds
//!   (`CHAOS_NBD_CONNECT_US`), then the device is connected (`/sys/block/nbdN/pid`, created
//!   exclusively: a second client on the same device fails as the kernel's `EBUSY` would) and
//!   the client exits; `-d` disconnects. Killed mid-handshake, nothing is connected; its script
//!   killed, it carries on and connects.
//! * `iscsiadm` + iscsid: a login asks iscsid (`iscsid-standin`, a process of its own), which
//!   makes the session visible at once (`-m session`), logs in within `CHAOS_ISCSI_LOGIN_US`,
//!   then links `/dev/disk/by-path/ip-<portal>-iscsi-<iqn>-lun-1` to the LUN; `iscsiadm` waits
//!   for it. A logout while the session is still logging in is refused with 9 ("try again
//!   later", as iscsid does), no session is 21. Killing `iscsiadm` does not stop iscsid.
//!
//! State lives where the scripts look: `/sys/block` and `/dev` are tmpfs in the scenario's
//! private mount namespace; the sessions are files under `CHAOS_ISCSI_DIR`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

fn delay(var: &str, default_us: u64) -> Duration {
    Duration::from_micros(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_us),
    )
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(code)
}

/// `nbd-client` (see the module documentation).
pub fn nbd_client(args: &[String]) -> ExitCode {
    let name = |dev: &str| {
        Path::new(dev)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if args.first().map(String::as_str) == Some("-d") {
        let Some(dev) = args.get(1) else {
            return fail(1, "nbd-client -d: no device");
        };
        let _ = std::fs::remove_file(format!("/sys/block/{}/pid", name(dev)));
        return ExitCode::SUCCESS;
    }
    let Some(dev) = args.iter().find(|a| a.starts_with("/dev/nbd")) else {
        return fail(1, "nbd-client: no device");
    };
    std::thread::sleep(delay("CHAOS_NBD_CONNECT_US", 3000));
    let pid = format!("/sys/block/{}/pid", name(dev));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&pid)
    {
        Ok(mut f) => {
            use std::io::Write;
            let _ = writeln!(f, "{}", std::process::id());
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => fail(
            1,
            &format!("Error: Failed to setup device: Device or resource busy ({dev})"),
        ),
        Err(e) => fail(1, &format!("nbd-client: {pid}: {e}")),
    }
}

fn sessions_dir() -> PathBuf {
    PathBuf::from(std::env::var("CHAOS_ISCSI_DIR").unwrap_or_default())
}

fn session_file(iqn: &str) -> PathBuf {
    sessions_dir().join(iqn.replace('/', "_"))
}

/// The by-path link of `iqn`'s LUN 1 through `portal`.
pub fn by_path_link(portal: &str, iqn: &str) -> PathBuf {
    PathBuf::from(format!("/dev/disk/by-path/ip-{portal}-iscsi-{iqn}-lun-1"))
}

fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Replace `path`'s content atomically.
fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// `iscsiadm` (see the module documentation).
pub fn iscsiadm(args: &[String]) -> ExitCode {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["-m", "session"] => {
            let mut any = false;
            for (n, e) in std::fs::read_dir(sessions_dir())
                .into_iter()
                .flatten()
                .flatten()
                .enumerate()
            {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                if let Some((_, portal)) = text.split_once(' ') {
                    println!(
                        "tcp: [{}] {},1 {} (non-flash)",
                        n + 1,
                        portal.trim(),
                        e.file_name().to_string_lossy()
                    );
                    any = true;
                }
            }
            if any {
                ExitCode::SUCCESS
            } else {
                fail(21, "iscsiadm: No active sessions.")
            }
        }
        ["-m", "discovery", "-t", "st", "-p", portal] => {
            println!(
                "{portal},1 {}",
                std::env::var("CHAOS_ISCSI_IQN").unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        ["-m", "node", ..] => {
            let (Some(iqn), Some(portal)) =
                (arg_after(args, "--targetname"), arg_after(args, "-p"))
            else {
                return fail(7, "iscsiadm: bad node arguments");
            };
            let f = session_file(iqn);
            if a.contains(&"--login") {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&f)
                {
                    Ok(mut h) => {
                        use std::io::Write;
                        let _ = write!(h, "logging-in {portal}");
                    }
                    Err(_) => return fail(15, "iscsiadm: session exists"),
                }
                // iscsid does the login; iscsiadm waits for its answer.
                let exe = std::env::current_exe().unwrap_or_default();
                let worker = std::process::Command::new(exe)
                    .arg0_compat("iscsid-standin")
                    .args([iqn, portal])
                    .status();
                return match worker {
                    Ok(st) if st.success() => ExitCode::SUCCESS,
                    _ => fail(5, "iscsiadm: login failed"),
                };
            }
            if a.contains(&"--logout") {
                let Ok(text) = std::fs::read_to_string(&f) else {
                    return fail(21, "iscsiadm: No matching sessions found");
                };
                if text.starts_with("logging-in") {
                    return fail(
                        9,
                        "iscsiadm: session in invalid state for logout. Try again later",
                    );
                }
                let _ = std::fs::remove_file(by_path_link(portal, iqn));
                let _ = std::fs::remove_file(&f);
                return ExitCode::SUCCESS;
            }
            fail(7, "iscsiadm: unsupported node operation")
        }
        _ => fail(7, "iscsiadm: unsupported arguments"),
    }
}

/// iscsid's side of a login: `iscsid-standin IQN PORTAL`.
pub fn iscsid(args: &[String]) -> ExitCode {
    let (Some(iqn), Some(portal)) = (args.first(), args.get(1)) else {
        return fail(1, "iscsid-standin IQN PORTAL");
    };
    std::thread::sleep(delay("CHAOS_ISCSI_LOGIN_US", 5000));
    let f = session_file(iqn);
    match std::fs::read_to_string(&f) {
        Ok(t) if t.starts_with("logging-in") => {}
        _ => return fail(5, "iscsid: session gone during login"),
    }
    let link = by_path_link(portal, iqn);
    let _ = std::os::unix::fs::symlink("/dev/sdb", &link);
    put(&f, &format!("logged-in {portal}"));
    ExitCode::SUCCESS
}

/// `Command::arg0` under a name that reads well at the call site.
trait Arg0 {
    fn arg0_compat(&mut self, name: &str) -> &mut Self;
}

impl Arg0 for std::process::Command {
    fn arg0_compat(&mut self, name: &str) -> &mut Self {
        std::os::unix::process::CommandExt::arg0(self, name)
    }
}
