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
//! body returns). Any failure after the login logs out again.
//!
//! # remove
//!
//! `iscsiadm -m node --targetname <iqn> -p <portal> --logout`; "no session" counts as done, so
//! remove is idempotent. Writes nothing.
//!
//! Exit 0 on success, 1 on failure (`hotplug-error`, `hotplug-status=error`).

use crate::block;
use crate::gather::block_rdev;
use crate::state::Record;
use crate::tools::{run_checked_until, run_until};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
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

/// Host paths and bounds (injected for tests).
#[derive(Debug, Clone)]
pub struct IscsiHost {
    /// `/dev/disk/by-path`.
    pub by_path: PathBuf,
    /// `/sys/block`.
    pub sys_block: PathBuf,
    /// Bound on the whole add (discovery, login, waiting for the LUN and the multipath map) and
    /// on a remove's logout; every tool run is killed at that deadline.
    pub wait: Duration,
    /// The `iscsiadm` program (looked up on the hotplug PATH when not a path).
    pub iscsiadm: PathBuf,
    /// The `multipath` program.
    pub multipath: PathBuf,
}

impl Default for IscsiHost {
    fn default() -> Self {
        IscsiHost {
            by_path: "/dev/disk/by-path".into(),
            sys_block: "/sys/block".into(),
            // Below libxl's 40 s SIGKILL, leaving time for logout and the writes.
            wait: Duration::from_secs(30),
            iscsiadm: "iscsiadm".into(),
            multipath: "multipath".into(),
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
/// Bound on the logout that undoes a failed add.
const ROLLBACK_WAIT: Duration = Duration::from_secs(5);

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

fn logout(
    ctx: &Context,
    host: &IscsiHost,
    t: &IscsiTarget,
    deadline: Instant,
) -> Result<(), Failure> {
    let args = node_args(t, "--logout");
    let o = run_until(ctx, &host.iscsiadm, &args, deadline, NO_ISCSIADM)?;
    if o.status.success() {
        return Ok(());
    }
    if o.status.code() == Some(ISCSI_ERR_NO_OBJS_FOUND) {
        ctx.log
            .info(format!("no session to {}: already logged out", t.iqn));
        return Ok(());
    }
    Err(Failure::Error(format!(
        "iscsiadm {} failed ({}): {}",
        args.join(" "),
        o.status,
        o.text().trim()
    )))
}

/// Log out only of a session this backend's add logged in: a remove after a refused add (the
/// target was already in use by another domain) must not end that domain's session. The record
/// names the session; without one (state lost), only a backend that got its `physical-device`
/// written can own one.
fn remove(ctx: &Context, host: &IscsiHost, params: &str) -> Result<Outcome<'static>, Failure> {
    let store = block::store(ctx)?;
    let target = match store.load(ctx.backend()) {
        Ok(Some(Record::Iscsi { iqn, portal })) => Some(IscsiTarget {
            iqn,
            portal,
            multipath: false,
        }),
        _ if ctx.exists("physical-device")? => parse_params(params).ok(),
        _ => None,
    };
    match target {
        Some(t) => logout(ctx, host, &t, Instant::now() + host.wait)?,
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
    let deadline = Instant::now() + host.wait;
    if t.multipath {
        // Present on PATH? (`multipath -h` exits non-zero on some versions; only a missing
        // program matters here.)
        run_until(ctx, &host.multipath, &["-h"], deadline, NO_MULTIPATH)?;
    }
    let lock = ctx.claim_lock(LOCK)?;
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
    let login = node_args(t, "--login");
    // From here on a failure logs out again (also after a login that was killed half-way).
    let store = block::store(ctx)?;
    let record = Record::Iscsi {
        iqn: t.iqn.clone(),
        portal: t.portal.clone(),
    };
    let result = run_checked_until(ctx, &host.iscsiadm, &login, deadline, NO_ISCSIADM)
        .and_then(|_| {
            store
                .save(ctx.backend(), &record)
                .map_err(|e| Failure::Error(format!("cannot record state: {e}")))
        })
        .and_then(|_| find_device(ctx, host, t, deadline))
        .and_then(|dev| {
            let devnum = block_rdev(&dev)
                .ok_or_else(|| Failure::error("Unable to find attached device path"))?;
            Ok((dev, devnum))
        });
    let undo = {
        let (host, t, store) = (host.clone(), t.clone(), store.clone());
        move |ctx: &Context<'_>| {
            if let Err(e) = logout(ctx, &host, &t, Instant::now() + ROLLBACK_WAIT) {
                ctx.log.err(format!("rollback: {e}"));
            }
            if let Err(e) = store.remove(ctx.backend()) {
                ctx.log.err(format!("rollback: cannot remove state: {e}"));
            }
        }
    };
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
                "timeout waiting for iSCSI disk to settle ({}s, {}/*-iscsi-{}-lun-*)",
                host.wait.as_secs(),
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
