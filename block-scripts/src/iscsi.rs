//! `block-iscsi add|remove`: log in to an iSCSI target and use its LUN as the backend device.
//!
//! # Who calls it
//!
//! libxl, for a disk with `script=block-iscsi` or the deprecated `iscsi:` prefix. argv
//! `[block-iscsi, add|remove]`; environment as for `block` (`XENBUS_PATH` required).
//!
//! # params
//!
//! Comma-separated `iqn=<iqn>`, `portal=<address[:port]>`, optional `multipath=y|n` (default
//! `n`). Missing iqn or portal: `iqn= and portal= are required parameters`; another multipath
//! value: `multipath valid values are y and n, <v> not a valid value`; empty or missing params:
//! `No information about the target`. Unknown keys are ignored, as in the reference.
//!
//! # add
//!
//! `iscsiadm` is the tool's interface and is run as a subprocess (missing: `Unable to find
//! iscsiadm tool`; `Unable to find multipath` when multipath is asked for and absent). Under the
//! lock `block-iscsi`: refuse when a session to the iqn exists (`Device already opened`); the
//! portal's discovery must list the iqn (`No matching target iqn found`); log in; wait — with a
//! real bound, unlike the reference, whose timeout never fires — for
//! `/dev/disk/by-path/*-iscsi-<iqn>-lun-<n>` (the lowest LUN that is a block device, so tgtd's
//! LUN-1 disks work too); with multipath, resolve the device-mapper multipath map built on it
//! (`/dev/mapper/<name>`, from sysfs holders). Then `physical-device`, `physical-device-path` and
//! `hotplug-status=connected` in one transaction (the runtime writes them, from the device the
//! body returns). The session is recorded before the login (see "Crash safety") and marked done
//! once the LUN is there; any failure after the record logs out again. Everything ends at the
//! script's deadline (`deadline_secs`); an `iscsiadm` still running then is killed.
//!
//! # remove
//!
//! For a session this backend recorded: `iscsiadm -m node --targetname <iqn> -p <portal>
//! --logout`, repeated until no session is left (iscsid refuses to log out of a session still
//! logging in, "try again later", and an `iscsiadm --login` orphaned by a killed add is waited
//! for first). "No session" with no login in flight counts as done, so remove is idempotent.
//! Writes nothing.
//!
//! # Crash safety
//!
//! libxl SIGKILLs only the script: the `iscsiadm --login` it started lives on and iscsid
//! completes the login. The record is saved before the login, so the `remove` libxl runs next
//! finds it, waits for that orphan and logs out of the session it made. (What no script can
//! see: a login iscsid still retries after our own deadline killed `iscsiadm`, before the
//! kernel session exists; it ends per the node's `initial_login_retry_max` × `login_timeout`.)
//!
//! Exit 0 on success, 1 on failure (`hotplug-error`, `hotplug-status=error`).

use crate::block;
use crate::gather::block_rdev;
use crate::state::{IscsiRecord, Phase, Record};
use crate::tools::{run_checked_until, run_until};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use xenplug_hotplug::procs::{self, Procs};
use xenplug_hotplug::{run, Action, Context, Failure, Outcome, Raw};

/// The lock serialising the session check and the login.
pub const LOCK: &str = "block-iscsi";
/// `ISCSI_ERR_NO_OBJS_FOUND`: iscsiadm's exit status for "no matching session/record".
pub const ISCSI_ERR_NO_OBJS_FOUND: i32 = 21;

/// A parsed `params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiTarget {
    /// Target name.
    pub iqn: String,
    /// Portal, `address[:port]`.
    pub portal: String,
    /// Use the multipath map.
    pub multipath: bool,
}

/// Parse `params`.
pub fn parse_params(params: &str) -> Result<IscsiTarget, String> {
    if params.trim().is_empty() {
        return Err("No information about the target".into());
    }
    let (mut iqn, mut portal, mut multipath) = (String::new(), String::new(), "n".to_string());
    for item in params.split(',') {
        let item = item.trim();
        let value = |v: &str| -> Result<String, String> {
            let v = v.trim();
            if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("{item:?}: blanks or control characters in a value"));
            }
            Ok(v.to_string())
        };
        if let Some(v) = item.strip_prefix("iqn=") {
            iqn = value(v)?;
        } else if let Some(v) = item.strip_prefix("portal=") {
            portal = value(v)?;
        } else if let Some(v) = item.strip_prefix("multipath=") {
            multipath = value(v)?;
        }
    }
    if iqn.is_empty() || portal.is_empty() {
        return Err("iqn= and portal= are required parameters".into());
    }
    let multipath = match multipath.as_str() {
        "y" => true,
        "n" => false,
        v => {
            return Err(format!(
                "multipath valid values are y and n, {v} not a valid value"
            ))
        }
    };
    Ok(IscsiTarget {
        iqn,
        portal,
        multipath,
    })
}

/// True when some line of iscsiadm output (`-m session`, `-m discovery`) names `iqn` as a
/// whole word (the reference's `grep -q` would also match a longer iqn that contains it).
pub fn lists_target(output: &str, iqn: &str) -> bool {
    output
        .lines()
        .any(|l| l.split_whitespace().any(|w| w == iqn))
}

/// The `/dev/disk/by-path` entry of the target's disk among `names`: `…-iscsi-<iqn>-lun-<n>` with
/// the lowest `n` (partitions `…-part<k>` excluded).
pub fn pick_by_path<'a>(
    names: impl IntoIterator<Item = &'a str>,
    iqn: &str,
) -> Vec<(u32, &'a str)> {
    let marker = format!("-iscsi-{iqn}-lun-");
    let mut found: Vec<(u32, &str)> = names
        .into_iter()
        .filter_map(|n| {
            let at = n.find(&marker)?;
            let lun = &n[at + marker.len()..];
            (!lun.is_empty() && lun.bytes().all(|b| b.is_ascii_digit()))
                .then(|| Some((lun.parse().ok()?, n)))
                .flatten()
        })
        .collect();
    found.sort();
    found
}

/// The multipath map (`/dev/mapper/<name>`) built on block device `name` (`sdb`), from sysfs
/// holders whose dm uuid starts with `mpath-`.
pub fn multipath_map(sys_block: &Path, name: &str) -> Option<PathBuf> {
    let holders = std::fs::read_dir(sys_block.join(name).join("holders")).ok()?;
    for h in holders.filter_map(|e| e.ok()) {
        let dm = sys_block.join(h.file_name()).join("dm");
        let uuid = std::fs::read_to_string(dm.join("uuid")).unwrap_or_default();
        if uuid.trim().starts_with("mpath-") {
            let mname = std::fs::read_to_string(dm.join("name")).ok()?;
            return Some(Path::new("/dev/mapper").join(mname.trim()));
        }
    }
    None
}

/// Host paths and tools (injected for tests). Every bound is the script's deadline.
#[derive(Debug, Clone)]
pub struct IscsiHost {
    /// `/dev/disk/by-path`.
    pub by_path: PathBuf,
    /// `/sys/block`.
    pub sys_block: PathBuf,
    /// The `iscsiadm` program (looked up on the hotplug PATH when not a path).
    pub iscsiadm: PathBuf,
    /// The `multipath` program.
    pub multipath: PathBuf,
    /// Where to look for an orphaned `iscsiadm --login` (`/proc`).
    pub procs: Procs,
}

impl Default for IscsiHost {
    fn default() -> Self {
        IscsiHost {
            by_path: "/dev/disk/by-path".into(),
            sys_block: "/sys/block".into(),
            iscsiadm: "iscsiadm".into(),
            multipath: "multipath".into(),
            procs: Procs::default(),
        }
    }
}

/// Entry point of `block-iscsi` (see the module documentation).
pub fn main(raw: Raw) -> ExitCode {
    let host = IscsiHost::default();
    run("block-iscsi", raw, Action::BLOCK, |ctx| body(ctx, &host))
}

const NO_ISCSIADM: &str = "Unable to find iscsiadm tool";
const NO_MULTIPATH: &str = "Unable to find multipath";
/// `ISCSI_ERR_INTERNAL`: what iscsid answers a logout of a session still logging in ("session
/// in invalid state for logout. Try again later").
pub const ISCSI_ERR_INTERNAL: i32 = 9;

/// The script body.
pub fn body(ctx: &Context, host: &IscsiHost) -> Result<Outcome<'static>, Failure> {
    let params = ctx.read("params")?.unwrap_or_default();
    match ctx.action() {
        Action::Add => {
            let t = parse_params(&params).map_err(Failure::Error)?;
            add(ctx, host, &t)
        }
        Action::Remove => remove(ctx, host, &params),
        other => Err(Failure::Error(format!("Invalid command: {other}"))),
    }
}

/// `iscsiadm` arguments for `op` (`--login`, `--logout`) on the target's node record.
fn node_args<'a>(t: &'a IscsiTarget, op: &'a str) -> [&'a str; 7] {
    ["-m", "node", "--targetname", &t.iqn, "-p", &t.portal, op]
}

/// One logout: `Ok(true)` logged out, `Ok(false)` no session, `Err` anything else.
fn logout_once(
    ctx: &Context,
    host: &IscsiHost,
    t: &IscsiTarget,
    deadline: Instant,
) -> Result<bool, Failure> {
    let args = node_args(t, "--logout");
    let o = run_until(ctx, &host.iscsiadm, &args, deadline, NO_ISCSIADM)?;
    if o.status.success() {
        return Ok(true);
    }
    if o.status.code() == Some(ISCSI_ERR_NO_OBJS_FOUND) {
        return Ok(false);
    }
    Err(Failure::Error(format!(
        "iscsiadm {} failed ({}): {}",
        args.join(" "),
        o.status,
        o.text().trim()
    )))
}

/// `iscsiadm` processes logging in to `t` (the orphan of a killed add), and any child a killed
/// run for `backend` was still starting.
fn logins_in_flight(host: &IscsiHost, t: &IscsiTarget, backend: &str) -> Vec<procs::Proc> {
    let mut v = logins_to(host, t);
    for p in host.procs.orphans_of(backend, &["iscsiadm"]) {
        if !v.iter().any(|o| o.pid == p.pid) {
            v.push(p);
        }
    }
    v
}

fn logins_to(host: &IscsiHost, t: &IscsiTarget) -> Vec<procs::Proc> {
    let name = host
        .iscsiadm
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("iscsiadm")
        .to_string();
    host.procs.find(|argv| {
        procs::runs(argv, &name)
            && argv.contains(&t.iqn)
            && argv.iter().any(|a| a == "--login" || a == "-l")
    })
}

/// Log out of `t`'s session until there is none, by `until`: a login still in flight (an
/// `iscsiadm --login` left by a killed add) is waited for first, and a logout iscsid refuses
/// ("try again later": the session is still logging in) is retried.
fn release(
    ctx: &Context,
    host: &IscsiHost,
    t: &IscsiTarget,
    until: Instant,
) -> Result<(), Failure> {
    let mut logged_out = false;
    let mut pause = Duration::from_millis(10);
    loop {
        let pending = logins_in_flight(host, t, ctx.backend());
        if !pending.is_empty() {
            ctx.log.info(format!(
                "waiting for the login to {} in flight (iscsiadm pid {})",
                t.iqn, pending[0].pid
            ));
            let left = host.procs.wait_gone(&pending, until);
            if !left.is_empty() {
                return Err(Failure::error(format!(
                    "iscsiadm --login to {} (pid {}) did not finish in time",
                    t.iqn, left[0].pid
                )));
            }
        }
        let step = logout_once(ctx, host, t, until);
        match step {
            Ok(true) => logged_out = true,
            Ok(false) if logins_in_flight(host, t, ctx.backend()).is_empty() => {
                if !logged_out {
                    ctx.log
                        .info(format!("no session to {}: already logged out", t.iqn));
                }
                return Ok(());
            }
            Ok(false) => {}
            Err(f) if Instant::now() >= until => return Err(f),
            Err(f) => ctx.log.debug(format!("{}; retrying", f.message())),
        }
        let now = Instant::now();
        if now >= until {
            return Err(Failure::error(format!(
                "the session to {} is still there after logging out",
                t.iqn
            )));
        }
        std::thread::sleep(pause.min(until - now));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Log out only of a session this backend's add logged in (or was logging in): a remove after
/// a refused add (the target was already in use by another domain) must not end that domain's
/// session. The record names the session; without one (state lost), only a backend that got
/// its `physical-device` written can own one.
fn remove(ctx: &Context, host: &IscsiHost, params: &str) -> Result<Outcome<'static>, Failure> {
    let store = block::store(ctx)?;
    let target = match store.load(ctx.backend()) {
        Ok(Some(Record::Iscsi(IscsiRecord { iqn, portal, .. }))) => Some(IscsiTarget {
            iqn,
            portal,
            multipath: false,
        }),
        _ if ctx.exists("physical-device")? => parse_params(params).ok(),
        _ => None,
    };
    // Serialised with adds (their session check and login); also takes over the lock file an
    // add killed while holding it left behind.
    let _lock = ctx.claim_lock_until(LOCK, ctx.cleanup_deadline())?;
    match target {
        Some(t) => release(ctx, host, &t, ctx.cleanup_deadline())?,
        None => ctx
            .log
            .info("this backend logged in to no iSCSI session: nothing to log out of"),
    }
    store
        .remove(ctx.backend())
        .map_err(|e| Failure::Error(format!("cannot remove state: {e}")))?;
    Ok(Outcome::Done)
}

fn add(ctx: &Context, host: &IscsiHost, t: &IscsiTarget) -> Result<Outcome<'static>, Failure> {
    if ctx.exists("physical-device")? {
        return Ok(Outcome::Done);
    }
    let deadline = ctx.deadline();
    if t.multipath {
        // Present on PATH? (`multipath -h` exits non-zero on some versions; only a missing
        // program matters here.)
        run_until(ctx, &host.multipath, &["-h"], deadline, NO_MULTIPATH)?;
    }
    let lock = ctx.claim_lock(LOCK)?;
    let store = block::store(ctx)?;
    let backend = ctx.backend().to_string();
    // A session an earlier incarnation of this backend path recorded and never removed.
    if let Ok(Some(Record::Iscsi(old))) = store.load(&backend) {
        let old = IscsiTarget {
            iqn: old.iqn,
            portal: old.portal,
            multipath: false,
        };
        ctx.log.warning(format!(
            "stale state for {backend}: logging out of {}",
            old.iqn
        ));
        release(ctx, host, &old, deadline)?;
        store
            .remove(&backend)
            .map_err(|e| Failure::Error(format!("cannot remove state: {e}")))?;
    }
    let sessions = run_until(
        ctx,
        &host.iscsiadm,
        &["-m", "session"],
        deadline,
        NO_ISCSIADM,
    )?;
    if lists_target(&sessions.text(), &t.iqn) {
        return Err(Failure::error("Device already opened"));
    }
    let disc = run_until(
        ctx,
        &host.iscsiadm,
        &["-m", "discovery", "-t", "st", "-p", &t.portal],
        deadline,
        NO_ISCSIADM,
    )?;
    if !disc.status.success() || !lists_target(&disc.text(), &t.iqn) {
        return Err(Failure::error("No matching target iqn found"));
    }
    let save = |phase: Phase| {
        let rec = Record::Iscsi(IscsiRecord {
            iqn: t.iqn.clone(),
            portal: t.portal.clone(),
            phase,
        });
        store
            .save(&backend, &rec)
            .map_err(|e| Failure::Error(format!("cannot record state for {backend}: {e}")))
    };
    // Recorded before the login: a kill from here on leaves a record naming the session.
    save(Phase::Intent)?;
    let undo = {
        let (host, t, store) = (host.clone(), t.clone(), store.clone());
        move |ctx: &Context<'_>| match release(ctx, &host, &t, ctx.cleanup_deadline()) {
            // Kept when the logout failed, so remove tries again.
            Ok(()) => {
                if let Err(e) = store.remove(ctx.backend()) {
                    ctx.log.err(format!("rollback: cannot remove state: {e}"));
                }
            }
            Err(e) => ctx.log.err(format!("rollback: {}", e.message())),
        }
    };
    let login = node_args(t, "--login");
    let result = run_checked_until(ctx, &host.iscsiadm, &login, deadline, NO_ISCSIADM)
        .and_then(|_| find_device(ctx, host, t, deadline))
        .and_then(|dev| {
            let devnum = block_rdev(&dev)
                .ok_or_else(|| Failure::error("Unable to find attached device path"))?;
            Ok((dev, devnum))
        })
        .and_then(|found| save(Phase::Done).map(|()| found));
    match result {
        Ok((dev, devnum)) => Ok(Outcome::Published(
            block::device_nodes(None, &dev, devnum)
                .hold(lock)
                .undo_on_failure(undo),
        )),
        Err(f) => {
            undo(ctx);
            Err(f)
        }
    }
}

/// Wait (bounded) for the LUN's block device, and its multipath map if asked for.
fn find_device(
    ctx: &Context,
    host: &IscsiHost,
    t: &IscsiTarget,
    deadline: Instant,
) -> Result<PathBuf, Failure> {
    let sd = loop {
        let names: Vec<String> = std::fs::read_dir(&host.by_path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        let found = pick_by_path(names.iter().map(String::as_str), &t.iqn)
            .into_iter()
            .filter_map(|(_, n)| std::fs::canonicalize(host.by_path.join(n)).ok())
            .find(|p| block_rdev(p).is_some());
        if let Some(p) = found {
            break p;
        }
        if Instant::now() >= deadline {
            return Err(Failure::Error(format!(
                "timeout waiting for iSCSI disk to settle ({}/*-iscsi-{}-lun-*)",
                host.by_path.display(),
                t.iqn
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !t.multipath {
        return Ok(sd);
    }
    let name = sd
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let mut kicked = false;
    loop {
        if let Some(m) = multipath_map(&host.sys_block, &name) {
            if block_rdev(&m).is_some() {
                return Ok(m);
            }
        }
        if !kicked {
            // multipathd normally builds the map; ask for it once in case it does not run.
            kicked = true;
            let o = run_until(
                ctx,
                &host.multipath,
                &[&sd.display().to_string()],
                deadline,
                NO_MULTIPATH,
            )?;
            ctx.log
                .debug(format!("multipath {}: {}", sd.display(), o.text().trim()));
        }
        if Instant::now() >= deadline {
            return Err(Failure::error("Unable to find attached device multipath"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        assert_eq!(
            parse_params("iqn=iqn.2003-01.org.x:disk1,portal=10.0.0.1:3260").unwrap(),
            IscsiTarget {
                iqn: "iqn.2003-01.org.x:disk1".into(),
                portal: "10.0.0.1:3260".into(),
                multipath: false
            }
        );
        let t = parse_params("portal=[fd00::1]:3260,iqn=iqn.x:y,multipath=y,extra=1").unwrap();
        assert!(t.multipath);
        assert_eq!(t.portal, "[fd00::1]:3260");
        assert_eq!(
            parse_params("iqn=iqn.x:y").unwrap_err(),
            "iqn= and portal= are required parameters"
        );
        assert_eq!(
            parse_params("iqn=a,portal=b,multipath=yes").unwrap_err(),
            "multipath valid values are y and n, yes not a valid value"
        );
        assert_eq!(
            parse_params("").unwrap_err(),
            "No information about the target"
        );
    }

    #[test]
    fn session_and_discovery_output() {
        let sessions = "tcp: [1] 10.0.0.1:3260,1 iqn.2003-01.org.x:disk10 (non-flash)\n";
        assert!(lists_target(sessions, "iqn.2003-01.org.x:disk10"));
        // The reference's grep would match a prefix of another target.
        assert!(!lists_target(sessions, "iqn.2003-01.org.x:disk1"));
        let disc =
            "10.0.0.1:3260,1 iqn.2003-01.org.x:disk1\n10.0.0.2:3260,1 iqn.2003-01.org.x:disk2\n";
        assert!(lists_target(disc, "iqn.2003-01.org.x:disk2"));
        assert!(!lists_target("iscsiadm: No active sessions.\n", "iqn.x"));
    }

    #[test]
    fn by_path_selection() {
        let iqn = "iqn.2003-01.org.x:disk1";
        let names = [
            "ip-10.0.0.1:3260-iscsi-iqn.2003-01.org.x:disk1-lun-1",
            "ip-10.0.0.1:3260-iscsi-iqn.2003-01.org.x:disk1-lun-1-part1",
            "ip-10.0.0.1:3260-iscsi-iqn.2003-01.org.x:disk10-lun-0",
            "ip-10.0.0.1:3260-iscsi-iqn.2003-01.org.x:disk1-lun-0",
            "pci-0000:00:1f.2-ata-1",
        ];
        let picked = pick_by_path(names, iqn);
        assert_eq!(
            picked,
            vec![
                (0, "ip-10.0.0.1:3260-iscsi-iqn.2003-01.org.x:disk1-lun-0"),
                (1, "ip-10.0.0.1:3260-iscsi-iqn.2003-01.org.x:disk1-lun-1"),
            ]
        );
        assert!(pick_by_path(["x"], iqn).is_empty());
    }

    #[test]
    fn multipath_from_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        std::fs::create_dir_all(s.join("sdb/holders/dm-3")).unwrap();
        std::fs::create_dir_all(s.join("sdb/holders/dm-1")).unwrap();
        std::fs::create_dir_all(s.join("dm-1/dm")).unwrap();
        std::fs::write(s.join("dm-1/dm/uuid"), "LVM-abc\n").unwrap();
        std::fs::write(s.join("dm-1/dm/name"), "vg-lv\n").unwrap();
        std::fs::create_dir_all(s.join("dm-3/dm")).unwrap();
        std::fs::write(s.join("dm-3/dm/uuid"), "mpath-3600140512345\n").unwrap();
        std::fs::write(s.join("dm-3/dm/name"), "mpatha\n").unwrap();
        assert_eq!(
            multipath_map(s, "sdb"),
            Some(PathBuf::from("/dev/mapper/mpatha"))
        );
        assert_eq!(multipath_map(s, "sdc"), None);
    }

    // Found by fuzzing (fuzz target iscsi_params): `iqn=\n1` gave the iqn "\n1" (values were
    // not trimmed) and blanks inside a value reached iscsiadm.
    #[test]
    fn values_are_trimmed_and_plain() {
        assert_eq!(
            parse_params("iqn= iqn.x:d ,portal=\t10.0.0.1").unwrap(),
            IscsiTarget {
                iqn: "iqn.x:d".into(),
                portal: "10.0.0.1".into(),
                multipath: false
            }
        );
        assert!(parse_params("iqn=\n1,portal=y").is_ok_and(|t| t.iqn == "1"));
        assert!(parse_params("iqn=a b,portal=p").is_err());
        assert!(parse_params("iqn=a\u{7},portal=p").is_err());
    }
}
