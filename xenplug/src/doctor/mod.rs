//! `xenplug doctor`: check what breaks hotplug on a Xen host in practice, and say how to fix it.
//!
//! Every check reads the host through [`Paths`] (injected, so each check's failure path is tested
//! against private directories, sockets and files instead of the host), never changes anything
//! (the only write is a probe file created and removed again in the log, lock and state
//! directories), and is bounded in time (xenstored and the peer daemon are asked with a
//! deadline). The checks, in order ([`CHECKS`]):
//!
//! | id | what |
//! |---|---|
//! | `config` | `/etc/xen/xenplug.toml` parses (a broken file fails every script) |
//! | `scripts` | every script name in `/etc/xen/scripts` runs this xenplug, or which do not and why |
//! | `diversions` | the package's dpkg diversions of xen-utils-common's scripts are in place |
//! | `xenstored` | xenstored answers, and on which socket or device |
//! | `xl-conf` | xl.conf's `run_hotplug_scripts` and `vif.default.script` |
//! | `network` | the bridge (or gateway device) xl.conf names exists and is of the right kind |
//! | `nft` | `nft` is there when vif-nat is the default (antispoofing sends its rules over netlink) |
//! | `loop-control` | `/dev/loop-control` for file-backed disks |
//! | `modules` | loop, xen-blkback, xen-netback (needed), nbd, iscsi_tcp (for block-nbd/-iscsi) |
//! | `log-dir`, `lock-dir`, `state-dir` | the directories scripts write are writable |
//! | `syslog` | the syslog socket accepts datagrams (when syslog is on) |
//! | `leftovers` | state records whose backend is gone, lock files nobody holds |
//! | `peer` | the dom0 peer daemon answers on its control socket, and how its VMs are |
//!
//! Exit status ([`Report::exit_code`]): 0 when nothing failed or warned, 1 when a check failed,
//! 3 when there are warnings only (2 stays clap's usage error).

mod checks;
pub mod probe;
pub mod xlconf;

use std::path::{Path, PathBuf};

/// Exit status: every check passed (or did not apply).
pub const EXIT_OK: u8 = 0;
/// Exit status: at least one check failed.
pub const EXIT_FAIL: u8 = 1;
/// Exit status: no failure, at least one warning.
pub const EXIT_WARN: u8 = 3;

/// Where the package puts Debian's own copy of a script it takes over: `<name>` + this suffix,
/// in the same directory (`dpkg-divert --divert`). Kept in step with `debian/xenplug.postinst`.
pub const DIVERT_SUFFIX: &str = ".xen-utils-common";
/// The package that owns the diversions.
pub const PACKAGE: &str = "xenplug";
/// The package that ships the scripts being diverted.
pub const XEN_PACKAGE: &str = "xen-utils-common";

/// The check ids, in the order they run.
pub const CHECKS: &[&str] = &[
    "config",
    "scripts",
    "diversions",
    "xenstored",
    "xl-conf",
    "network",
    "nft",
    "loop-control",
    "modules",
    "log-dir",
    "lock-dir",
    "state-dir",
    "syslog",
    "leftovers",
    "peer",
];

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Does not apply here (not installed from the package, syslog off, …).
    Skip,
    /// Fine.
    Ok,
    /// Works, but something is likely to bite (or cannot be told).
    Warn,
    /// Hotplug is broken or will break.
    Fail,
}

impl Status {
    /// The word printed for it.
    pub fn word(self) -> &'static str {
        match self {
            Status::Skip => "skip",
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Stable id (see [`CHECKS`]).
    pub id: &'static str,
    /// Outcome.
    pub status: Status,
    /// One line.
    pub summary: String,
    /// Details, one item per line (each script name, module, leftover, …).
    pub details: Vec<String>,
    /// How to fix it, when the status is not ok.
    pub fix: Option<String>,
}

impl Check {
    fn new(id: &'static str, status: Status, summary: impl Into<String>) -> Check {
        Check {
            id,
            status,
            summary: summary.into(),
            details: Vec::new(),
            fix: None,
        }
    }

    fn details(mut self, d: Vec<String>) -> Check {
        self.details = d;
        self
    }

    fn fix(mut self, f: impl Into<String>) -> Check {
        self.fix = Some(f.into());
        self
    }
}

/// Where the doctor looks. [`Paths::system`] is the host; tests point every field at private
/// directories.
#[derive(Debug, Clone)]
pub struct Paths {
    /// libxl's script directory (`XEN_SCRIPT_DIR`).
    pub scripts_dir: PathBuf,
    /// The xenplug binary the script names should run.
    pub binary: PathBuf,
    /// The hotplug runtime's configuration file.
    pub config_file: PathBuf,
    /// dpkg's database (`diversions`, `info/<package>.list`).
    pub dpkg_admin: PathBuf,
    /// xl's global configuration.
    pub xl_conf: PathBuf,
    /// xenstored sockets to try, in order.
    pub xenstored_sockets: Vec<PathBuf>,
    /// The xenbus device, tried after the sockets.
    pub xenbus: PathBuf,
    /// sysfs.
    pub sys: PathBuf,
    /// The device directory.
    pub dev: PathBuf,
    /// procfs (`locks`, `sys/kernel/osrelease`, `<pid>/cmdline`).
    pub proc_: PathBuf,
    /// The kernel module tree root (`/lib/modules`; the release comes from procfs).
    pub modules_root: PathBuf,
    /// udev rule directories (for `run_hotplug_scripts=0`).
    pub udev_rules_dirs: Vec<PathBuf>,
    /// Where programs (`nft`) are looked for.
    pub exec_path: Vec<PathBuf>,
    /// The peer daemon's control socket.
    pub peer_control: PathBuf,
    /// Unit files whose presence says the peer daemon is installed.
    pub peer_units: Vec<PathBuf>,
    /// Deadline for each question to xenstored and the peer.
    pub timeout: std::time::Duration,
}

impl Paths {
    /// The host's paths. The binary is this executable; the config file is `XENPLUG_CONFIG`'s
    /// value or `/etc/xen/xenplug.toml`; xenstored is looked for at `XENSTORED_PATH` or
    /// `/run/xenstored/socket`, then `/dev/xen/xenbus`, as every xenstore client does.
    pub fn system() -> Paths {
        let binary = std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .unwrap_or_else(|_| PathBuf::from("/usr/sbin/xenplug"));
        let config_file = std::env::var_os("XENPLUG_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| xenplug_hotplug::config::DEFAULT_CONFIG_FILE.into());
        let xenstored_sockets = match std::env::var_os(xenplug_xenstore::client::XENSTORED_PATH_ENV)
        {
            Some(p) if !p.is_empty() => vec![PathBuf::from(p)],
            _ => vec![PathBuf::from(xenplug_xenstore::client::DEFAULT_SOCKET)],
        };
        let mut exec_path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
            if !exec_path.iter().any(|p| p == Path::new(d)) {
                exec_path.push(d.into());
            }
        }
        Paths {
            scripts_dir: "/etc/xen/scripts".into(),
            binary,
            config_file,
            dpkg_admin: "/var/lib/dpkg".into(),
            xl_conf: "/etc/xen/xl.conf".into(),
            xenstored_sockets,
            xenbus: xenplug_xenstore::client::XENBUS_DEVICE.into(),
            sys: "/sys".into(),
            dev: "/dev".into(),
            proc_: "/proc".into(),
            modules_root: "/lib/modules".into(),
            udev_rules_dirs: [
                "/etc/udev/rules.d",
                "/run/udev/rules.d",
                "/lib/udev/rules.d",
                "/usr/lib/udev/rules.d",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            exec_path,
            peer_control: "/run/xenplug-peer/control.sock".into(),
            peer_units: [
                "/etc/systemd/system/xenplug-peer.service",
                "/lib/systemd/system/xenplug-peer.service",
                "/usr/lib/systemd/system/xenplug-peer.service",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            timeout: std::time::Duration::from_secs(3),
        }
    }
}

/// Every check's result, in order.
#[derive(Debug, Clone)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// The worst status.
    pub fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// The process exit status (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self.worst() {
            Status::Fail => EXIT_FAIL,
            Status::Warn => EXIT_WARN,
            Status::Ok | Status::Skip => EXIT_OK,
        }
    }

    /// The check called `id`.
    pub fn get(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// Plain text, one block per check, then a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<4}  {:<12} {}\n",
                c.status.word(),
                c.id,
                c.summary
            ));
            for d in &c.details {
                out.push_str(&format!("{:<19}{d}\n", ""));
            }
            if let Some(f) = &c.fix {
                out.push_str(&format!("{:<19}fix: {f}\n", ""));
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "xenplug doctor: {} failed, {} warnings, {} ok, {} skipped\n",
            count(Status::Fail),
            count(Status::Warn),
            count(Status::Ok),
            count(Status::Skip)
        ));
        out
    }

    /// JSON: `{"status": worst, "checks": [{"id", "status", "summary", "details", "fix"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": self.worst().word().to_ascii_lowercase(),
            "exit": self.exit_code(),
            "checks": self.checks.iter().map(|c| serde_json::json!({
                "id": c.id,
                "status": c.status.word().to_ascii_lowercase(),
                "summary": c.summary,
                "details": c.details,
                "fix": c.fix,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Run every check.
pub fn run(paths: &Paths) -> Report {
    Report {
        checks: checks::run_all(paths),
    }
}
