//! `block-nbd add|remove`: attach a Network Block Device export as the backend device.
//!
//! Xen's `block-nbd` is a xend-era script that reads the server and port from `$2 $3`, which
//! libxl never passes, so it cannot work (docs/hotplug-scripts.md, "block-nbd"). This one takes everything from
//! `params`, as every libxl block script does.
//!
//! # Who calls it
//!
//! libxl, for a disk with `script=block-nbd` or the deprecated `nbd:` target prefix (the rest of
//! the target is `params`). argv `[block-nbd, add|remove]`; environment as for `block`
//! (`XENBUS_PATH` required).
//!
//! # params
//!
//! * `host:port`, `host` (port 10809), `[v6addr]:port`;
//! * `nbd://host[:port][/export]` (export name percent-decoded);
//! * `nbd+unix:///export?socket=/path` (`nbd+unix:///?socket=/path` for the default export).
//!
//! # add
//!
//! Reads `params` (empty or missing: `No information about the target`) and `mode` (required;
//! `r` connects read-only). Under the lock `block-nbd` (loading the `nbd` module first when no
//! device exists), takes the first free `/dev/nbdN` — sysfs `pid` absent and named by no other
//! backend's state record — records it (**before** connecting: see "Crash safety") and runs
//! `nbd-client` on it (the NBD tool's interface: handshake, TLS, and the kernel's netlink/ioctl
//! setup), moving on to the next device only when another process won the device meanwhile.
//! Then waits until the kernel reports the device connected, marks the record done, and writes
//! `physical-device`, `physical-device-path` and `hotplug-status=connected` in one transaction
//! (the runtime writes them, from the device the body returns). A failure after the record
//! releases the device again. Lock wait, `modprobe`, `nbd-client` and the wait for the kernel
//! all end at the script's deadline (`deadline_secs`): a child still running then is killed.
//!
//! # remove
//!
//! Under the lock `block-nbd`, releases the recorded device ([`release`]): `nbd-client -d` if
//! connected, then any `nbd-client` still working on that device (the orphan of an add killed
//! while connecting) is killed, then `nbd-client -d` again if the orphan got the device
//! connected meanwhile. Without a record: `nbd-client -d` on `physical-device-path` if that is
//! a connected NBD device. Idempotent; writes nothing.
//!
//! # Crash safety
//!
//! libxl SIGKILLs a script that overruns, and only the script: an `nbd-client` it started keeps
//! connecting. Because the device is recorded before `nbd-client` starts, a kill at any instant
//! leaves a record naming it, and the `remove` libxl runs next stops the orphan and disconnects
//! whatever it connected. The record also reserves the device, so no other add picks it while
//! the orphan may still connect it.
//!
//! Exit 0 on success, 1 on failure (`hotplug-error`, `hotplug-status=error`).

use crate::block;
use crate::sharing::Mode;
use crate::state::{NbdRecord, Phase, Record};
use crate::tools::{run_checked_until, run_until};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use xenplug_hotplug::procs::{self, Procs};
use xenplug_hotplug::{run, Action, Context, Failure, Outcome, Raw};

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;
/// The lock serialising device selection among `block-nbd` runs.
pub const LOCK: &str = "block-nbd";
const NO_CLIENT: &str = "Unable to find nbd-client";
/// Bound on one `nbd-client -d` (and never past the script's end).
const DISCONNECT_WAIT: Duration = Duration::from_secs(10);

/// Where an export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdTarget {
    /// Over TCP.
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// Export name; `None` for the server's default export.
        export: Option<String>,
    },
    /// Over a Unix socket.
    Unix {
        /// The socket path.
        socket: PathBuf,
        /// Export name; `None` for the default export.
        export: Option<String>,
    },
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

fn parse_port(s: &str, whole: &str) -> Result<u16, String> {
    Some(s)
        .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("invalid NBD port {s:?} in {whole:?}"))
}

/// A host name or IPv4 address (letters, digits, `.`, `-`, `_`), or inside brackets an IPv6
/// address with an optional `%zone`. It becomes an argument of `nbd-client`, so it must never
/// look like an option (`-…`) or carry anything but these characters.
fn check_host(h: &str, bracketed: bool, whole: &str) -> Result<(), String> {
    let ok = if bracketed {
        let (addr, zone) = h.split_once('%').unwrap_or((h, ""));
        addr.parse::<std::net::Ipv6Addr>().is_ok()
            && (h.len() == addr.len() || !zone.is_empty())
            && zone
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
    } else {
        h.is_empty()
            || (!h.starts_with('-')
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)))
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid NBD host {h:?} in {whole:?} (a host name or address: anything else would \
             be an option of nbd-client or a stray argument)"
        ))
    }
}

/// Split `host[:port]` / `[v6]:port`.
fn host_port(hp: &str, whole: &str) -> Result<(String, u16), String> {
    let (host, port) = split_host_port(hp, whole)?;
    check_host(&host, hp.starts_with('['), whole)?;
    Ok((host, port))
}

fn split_host_port(hp: &str, whole: &str) -> Result<(String, u16), String> {
    if let Some(rest) = hp.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unterminated [ in {whole:?}"))?;
        let port = match after {
            "" => DEFAULT_PORT,
            p => parse_port(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("junk after ] in {whole:?}"))?,
                whole,
            )?,
        };
        return Ok((h.to_string(), port));
    }
    match hp.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Err(format!(
            "IPv6 address must be in brackets, e.g. [::1]:10809: {whole:?}"
        )),
        Some((h, p)) => Ok((h.to_string(), parse_port(p, whole)?)),
        None => Ok((hp.to_string(), DEFAULT_PORT)),
    }
}

/// Parse `params` (see the module documentation).
pub fn parse_target(params: &str) -> Result<NbdTarget, String> {
    let p = params.trim();
    if p.is_empty() {
        return Err("No information about the target".into());
    }
    if let Some(rest) = p.strip_prefix("nbd+unix://") {
        let (path_part, query) = rest.split_once('?').unwrap_or((rest, ""));
        let export_raw = path_part
            .strip_prefix('/')
            .ok_or_else(|| format!("nbd+unix URI must have an empty authority: {p:?}"))?;
        let mut socket = None;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("socket", v)) => socket = Some(percent_decode(v)?),
                _ => return Err(format!("unsupported query parameter {kv:?} in {p:?}")),
            }
        }
        let socket = socket.ok_or_else(|| format!("nbd+unix URI without ?socket=: {p:?}"))?;
        if !socket.starts_with('/') {
            return Err(format!("socket path must be absolute: {socket:?}"));
        }
        let export = percent_decode(export_raw)?;
        return Ok(NbdTarget::Unix {
            socket: socket.into(),
            export: (!export.is_empty()).then_some(export),
        });
    }
    if let Some(rest) = p.strip_prefix("nbd://") {
        if rest.contains('?') {
            return Err(format!("query parameters are not supported: {p:?}"));
        }
        let (authority, export_raw) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(format!("nbd URI without a host: {p:?}"));
        }
        let (host, port) = host_port(authority, p)?;
        if host.is_empty() {
            return Err(format!("nbd URI without a host: {p:?}"));
        }
        let export = percent_decode(export_raw)?;
        return Ok(NbdTarget::Tcp {
            host,
            port,
            export: (!export.is_empty()).then_some(export),
        });
    }
    if let Some((scheme, _)) = p.split_once("://") {
        return Err(format!("unsupported NBD URI scheme {scheme:?} in {p:?}"));
    }
    if p.contains(char::is_whitespace) || p.contains('/') {
        return Err(format!(
            "cannot parse NBD target {p:?} (expected host:port, nbd://host[:port]/export or nbd+unix:///export?socket=/path)"
        ));
    }
    let (host, port) = host_port(p, p)?;
    if host.is_empty() {
        return Err(format!("NBD target without a host: {p:?}"));
    }
    Ok(NbdTarget::Tcp {
        host,
        port,
        export: None,
    })
}

/// The `nbd-client` arguments that connect `target` to `device`.
pub fn connect_args(target: &NbdTarget, device: &Path, mode: Mode) -> Vec<String> {
    let mut a = Vec::new();
    let export = match target {
        NbdTarget::Tcp { host, port, export } => {
            a.push(host.clone());
            a.push(port.to_string());
            a.push(device.display().to_string());
            export
        }
        NbdTarget::Unix { socket, export } => {
            a.push("-unix".into());
            a.push(socket.display().to_string());
            a.push(device.display().to_string());
            export
        }
    };
    if let Some(e) = export {
        a.push("-name".into());
        a.push(e.clone());
    }
    if mode == Mode::Read {
        a.push("-readonly".into());
    }
    a
}

/// An NBD device as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdDevice {
    /// N of `nbdN`.
    pub number: u32,
    /// Connected (`pid` attribute present).
    pub connected: bool,
}

fn nbd_number(name: &str) -> Option<u32> {
    let d = name.strip_prefix("nbd")?;
    (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .then(|| d.parse().ok())
        .flatten()
}

/// The NBD devices under `sys_block` in number order.
pub fn list_devices(sys_block: &Path) -> Vec<NbdDevice> {
    let mut v: Vec<NbdDevice> = std::fs::read_dir(sys_block)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = nbd_number(e.file_name().to_str()?)?;
            Some(NbdDevice {
                number: n,
                connected: e.path().join("pid").exists(),
            })
        })
        .collect();
    v.sort_by_key(|d| d.number);
    v
}

fn is_connected(sys_block: &Path, device: &Path) -> bool {
    device
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(nbd_number)
        .is_some_and(|n| sys_block.join(format!("nbd{n}/pid")).exists())
}

/// Host paths and tools (injected for tests).
#[derive(Debug, Clone)]
pub struct NbdHost {
    /// `/sys/block`.
    pub sys_block: PathBuf,
    /// Where device nodes live (`/dev`).
    pub dev_dir: PathBuf,
    /// The `nbd-client` program (looked up on the hotplug PATH when not a path).
    pub nbd_client: PathBuf,
    /// The `modprobe` program.
    pub modprobe: PathBuf,
    /// Where to look for orphaned `nbd-client`s (`/proc`).
    pub procs: Procs,
}

impl Default for NbdHost {
    fn default() -> Self {
        NbdHost {
            sys_block: "/sys/block".into(),
            dev_dir: "/dev".into(),
            nbd_client: "nbd-client".into(),
            modprobe: "modprobe".into(),
            procs: Procs::default(),
        }
    }
}

/// Entry point of `block-nbd` (see the module documentation).
pub fn main(raw: Raw) -> ExitCode {
    let host = NbdHost::default();
    run("block-nbd", raw, Action::BLOCK, |ctx| body(ctx, &host))
}

fn disconnect(ctx: &Context, host: &NbdHost, device: &Path) -> Result<(), Failure> {
    let dev = device.display().to_string();
    run_checked_until(
        ctx,
        &host.nbd_client,
        &["-d", &dev],
        ctx.cleanup_step(DISCONNECT_WAIT),
        NO_CLIENT,
    )
    .map(drop)
}

/// `nbd-client`s working on `device` (connecting it, or serving it in ioctl mode), other than a
/// disconnect.
fn clients_of(host: &NbdHost, device: &Path) -> Vec<procs::Proc> {
    let dev = device.display().to_string();
    let name = host
        .nbd_client
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("nbd-client")
        .to_string();
    host.procs.find(|argv| {
        procs::runs(argv, &name)
            && argv.contains(&dev)
            && !argv.iter().any(|a| a == "-d" || a == "-disconnect")
    })
}

/// Release `device`, which this backend recorded (connected or about to be): a clean
/// `nbd-client -d` if it is connected; then every `nbd-client` still working on it (the orphan
/// of a killed add) is killed and waited for; then `-d` again if that orphan connected it
/// meanwhile. The caller holds the `block-nbd` lock. Ends at the script's end at the latest.
pub(crate) fn release(ctx: &Context, host: &NbdHost, device: &Path) -> Result<(), Failure> {
    let until = ctx.cleanup_deadline();
    let mut disconnected = false;
    if is_connected(&host.sys_block, device) {
        disconnect(ctx, host, device)?;
        disconnected = true;
    }
    // The client named by its device, and any child the killed add was still starting.
    let mut orphans = clients_of(host, device);
    for p in host.procs.orphans_of(ctx.backend(), &["nbd-client"]) {
        if !orphans.iter().any(|o| o.pid == p.pid) {
            orphans.push(p);
        }
    }
    if !orphans.is_empty() {
        ctx.log.warning(format!(
            "stopping nbd-client left working on {}: pid {}",
            device.display(),
            orphans
                .iter()
                .map(|p| p.pid.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let left = host.procs.kill_and_wait(&orphans, until);
        if !left.is_empty() {
            return Err(Failure::error(format!(
                "nbd-client (pid {}) on {} did not exit",
                left[0].pid,
                device.display()
            )));
        }
    }
    if is_connected(&host.sys_block, device) {
        disconnect(ctx, host, device)?;
        disconnected = true;
    }
    if !disconnected {
        ctx.log
            .info(format!("{} is already disconnected", device.display()));
    }
    Ok(())
}

/// The script body.
pub fn body(ctx: &Context, host: &NbdHost) -> Result<Outcome<'static>, Failure> {
    match ctx.action() {
        Action::Add => add(ctx, host),
        Action::Remove => remove(ctx, host),
        other => Err(Failure::Error(format!("Invalid command: {other}"))),
    }
}

fn add(ctx: &Context, host: &NbdHost) -> Result<Outcome<'static>, Failure> {
    let (sys_block, dev_dir) = (host.sys_block.as_path(), host.dev_dir.as_path());
    let params = ctx.read("params")?.unwrap_or_default();
    let target = parse_target(&params).map_err(Failure::Error)?;
    let mode_raw = ctx.read_required("mode")?;
    let mode = Mode::parse_strict(&mode_raw)
        .ok_or_else(|| Failure::Error(block::invalid_mode(ctx, &mode_raw)))?;
    if ctx.exists("physical-device")? {
        return Ok(Outcome::Done);
    }
    let lock = ctx.claim_lock(LOCK)?;
    let deadline = ctx.deadline();
    if list_devices(sys_block).is_empty() {
        match run_until(
            ctx,
            &host.modprobe,
            &["nbd"],
            deadline,
            "Unable to find modprobe",
        ) {
            Ok(o) if o.status.success() => {}
            Ok(o) => ctx.log.warning(format!(
                "modprobe nbd failed ({}): {}",
                o.status,
                o.text().trim()
            )),
            Err(f) => ctx.log.warning(format!("modprobe nbd: {}", f.message())),
        }
    }
    let store = block::store(ctx)?;
    let backend = ctx.backend().to_string();
    // A record left by an earlier incarnation of this backend path whose remove never ran.
    match store.load(&backend) {
        Ok(Some(Record::Nbd(old))) => {
            ctx.log.warning(format!(
                "stale state for {backend}: releasing {}",
                old.device.display()
            ));
            release(ctx, host, &old.device)?;
            store
                .remove(&backend)
                .map_err(|e| Failure::Error(format!("cannot remove state: {e}")))?;
        }
        Ok(_) => {}
        Err(e) => ctx.log.warning(format!("ignoring unreadable state: {e}")),
    }
    // Devices other backends recorded are theirs, connected yet or not.
    let reserved: Vec<PathBuf> = store
        .others(&backend)
        .into_iter()
        .filter_map(|(_, r)| match r {
            Record::Nbd(n) => Some(n.device),
            _ => None,
        })
        .collect();
    let save = |device: &Path, phase: Phase| {
        let rec = Record::Nbd(NbdRecord {
            device: device.to_path_buf(),
            phase,
        });
        store
            .save(&backend, &rec)
            .map_err(|e| Failure::Error(format!("cannot record state for {backend}: {e}")))
    };
    let forget = |ctx: &Context| {
        if let Err(e) = store.remove(&backend) {
            ctx.log.err(format!("cannot remove state: {e}"));
        }
    };
    let mut last = None;
    let mut connected = None;
    for dev in list_devices(sys_block).into_iter().filter(|d| !d.connected) {
        let path = dev_dir.join(format!("nbd{}", dev.number));
        if reserved.contains(&path) {
            continue;
        }
        // Recorded before nbd-client starts: a kill from here on leaves a record naming it.
        save(&path, Phase::Intent)?;
        let args = connect_args(&target, &path, mode);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match run_until(ctx, &host.nbd_client, &args, deadline, NO_CLIENT) {
            Ok(o) if o.status.success() => {
                connected = Some(path);
                break;
            }
            // It exited by itself and the device is connected: another process won it.
            Ok(o) if is_connected(sys_block, &path) => {
                last = Some(Failure::error(format!(
                    "nbd-client on {} failed ({}): {}",
                    path.display(),
                    o.status,
                    o.text().trim()
                )))
            }
            Ok(o) => {
                let f = Failure::error(format!(
                    "{} {} failed ({}): {}",
                    host.nbd_client.display(),
                    args.join(" "),
                    o.status,
                    o.text().trim()
                ));
                return Err(rollback(ctx, host, &path, &forget, f));
            }
            // Killed at the deadline (it may have connected just before): ours to release.
            Err(f) => return Err(rollback(ctx, host, &path, &forget, f)),
        }
    }
    let Some(device) = connected else {
        forget(ctx);
        return Err(last.unwrap_or_else(|| {
            Failure::error("no free NBD device (is the nbd kernel module loaded?)")
        }));
    };
    while !is_connected(sys_block, &device) {
        if Instant::now() >= deadline {
            let f = Failure::Error(format!(
                "timeout waiting for {} to connect",
                device.display()
            ));
            return Err(rollback(ctx, host, &device, &forget, f));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(devnum) = crate::gather::block_rdev(&device) else {
        let f = Failure::Error(format!("{} is not a block device.", device.display()));
        return Err(rollback(ctx, host, &device, &forget, f));
    };
    if let Err(f) = save(&device, Phase::Done) {
        return Err(rollback(ctx, host, &device, &forget, f));
    }
    let undo = {
        let (host, device, store, backend) =
            (host.clone(), device.clone(), store.clone(), backend.clone());
        move |ctx: &Context<'_>| {
            if let Err(e) = release(ctx, &host, &device) {
                ctx.log.err(format!("rollback: {}", e.message()));
            }
            if let Err(e) = store.remove(&backend) {
                ctx.log.err(format!("rollback: cannot remove state: {e}"));
            }
        }
    };
    Ok(Outcome::Published(
        block::device_nodes(None, &device, devnum)
            .hold(lock)
            .undo_on_failure(undo),
    ))
}

/// Undo a failed add on `device`: release it, then forget the record (kept when the release
/// failed, so `remove` tries again). Returns `why`.
fn rollback(
    ctx: &Context,
    host: &NbdHost,
    device: &Path,
    forget: &dyn Fn(&Context),
    why: Failure,
) -> Failure {
    match release(ctx, host, device) {
        Ok(()) => forget(ctx),
        Err(e) => ctx.log.err(format!("rollback: {}", e.message())),
    }
    why
}

fn remove(ctx: &Context, host: &NbdHost) -> Result<Outcome<'static>, Failure> {
    // Serialised with adds, so an add of this backend is either done or gone.
    let _lock = ctx.claim_lock(LOCK)?;
    let store = block::store(ctx)?;
    match store.load(ctx.backend()) {
        Ok(Some(Record::Nbd(rec))) => release(ctx, host, &rec.device)?,
        other => {
            if let Err(e) = other {
                ctx.log
                    .warning(format!("{e}; falling back to physical-device-path"));
            }
            let device = ctx
                .read("physical-device-path")?
                .map(PathBuf::from)
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(nbd_number)
                        .is_some()
                });
            if let Some(device) = device {
                if is_connected(&host.sys_block, &device) {
                    disconnect(ctx, host, &device)?;
                }
            }
        }
    }
    store
        .remove(ctx.backend())
        .map_err(|e| Failure::Error(format!("cannot remove state: {e}")))?;
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: Option<&str>) -> NbdTarget {
        NbdTarget::Tcp {
            host: host.into(),
            port,
            export: export.map(Into::into),
        }
    }

    #[test]
    fn legacy_host_port() {
        assert_eq!(
            parse_target("10.0.0.1:10810").unwrap(),
            tcp("10.0.0.1", 10810, None)
        );
        assert_eq!(
            parse_target("server").unwrap(),
            tcp("server", DEFAULT_PORT, None)
        );
        assert_eq!(
            parse_target("[fd00::1]:2000").unwrap(),
            tcp("fd00::1", 2000, None)
        );
        assert!(parse_target("fd00::1:2000").is_err());
        assert!(parse_target("host:0").is_err());
        assert!(parse_target("host:99999").is_err());
        assert!(parse_target("host:abc").is_err());
        assert!(parse_target(":10809").is_err());
        assert!(parse_target("host 10809").is_err());
        // A host nbd-client would take for an option (`-d`: disconnect), in every syntax.
        for bad in [
            "-d",
            "-d:10809",
            "--help",
            "[-d]:10809",
            "nbd://-d/x",
            "nbd://[-d]:1/x",
        ] {
            let e = parse_target(bad).unwrap_err();
            assert!(e.contains("would be an option of nbd-client"), "{bad}: {e}");
        }
        // A dash inside a host name is fine.
        assert_eq!(
            parse_target("nbd-server-1:10810").unwrap(),
            tcp("nbd-server-1", 10810, None)
        );
        assert_eq!(
            parse_target("").unwrap_err(),
            "No information about the target"
        );
    }

    #[test]
    fn nbd_uris() {
        assert_eq!(
            parse_target("nbd://srv:1234/disk%201").unwrap(),
            tcp("srv", 1234, Some("disk 1"))
        );
        assert_eq!(
            parse_target("nbd://srv").unwrap(),
            tcp("srv", DEFAULT_PORT, None)
        );
        assert_eq!(
            parse_target("nbd://srv/").unwrap(),
            tcp("srv", DEFAULT_PORT, None)
        );
        assert_eq!(
            parse_target("nbd://[::1]/e").unwrap(),
            tcp("::1", DEFAULT_PORT, Some("e"))
        );
        assert_eq!(
            parse_target("nbd+unix:///vm1?socket=/run/nbd.sock").unwrap(),
            NbdTarget::Unix {
                socket: "/run/nbd.sock".into(),
                export: Some("vm1".into())
            }
        );
        assert_eq!(
            parse_target("nbd+unix:///?socket=/run/blktap-control/nbd12.3").unwrap(),
            NbdTarget::Unix {
                socket: "/run/blktap-control/nbd12.3".into(),
                export: None
            }
        );
        assert!(parse_target("nbd+unix:///x").is_err());
        assert!(parse_target("nbd+unix://host/x?socket=/s").is_err());
        assert!(parse_target("nbd+unix:///x?socket=rel").is_err());
        assert!(parse_target("nbd+unix:///x?socket=/s&tls=1").is_err());
        assert!(parse_target("nbds://srv/x").is_err());
        assert!(parse_target("nbd:///x").is_err());
        assert!(parse_target("nbd://srv/%zz").is_err());
    }

    #[test]
    fn client_arguments() {
        let dev = Path::new("/dev/nbd3");
        assert_eq!(
            connect_args(&tcp("srv", 10809, Some("e")), dev, Mode::Write),
            ["srv", "10809", "/dev/nbd3", "-name", "e"]
        );
        assert_eq!(
            connect_args(&tcp("srv", 2000, None), dev, Mode::Read),
            ["srv", "2000", "/dev/nbd3", "-readonly"]
        );
        let unix = NbdTarget::Unix {
            socket: "/s".into(),
            export: None,
        };
        assert_eq!(
            connect_args(&unix, dev, Mode::Unchecked),
            ["-unix", "/s", "/dev/nbd3"]
        );
    }

    #[test]
    fn device_listing() {
        let t = tempfile::tempdir().unwrap();
        for n in ["nbd0", "nbd1", "nbd10", "nbd2", "loop0", "nbdx"] {
            std::fs::create_dir(t.path().join(n)).unwrap();
        }
        std::fs::write(t.path().join("nbd1/pid"), "123\n").unwrap();
        let l = list_devices(t.path());
        assert_eq!(
            l.iter()
                .map(|d| (d.number, d.connected))
                .collect::<Vec<_>>(),
            vec![(0, false), (1, true), (2, false), (10, false)]
        );
        assert!(is_connected(t.path(), Path::new("/dev/nbd1")));
        assert!(!is_connected(t.path(), Path::new("/dev/nbd0")));
        assert!(!is_connected(t.path(), Path::new("/dev/loop1")));
    }

    // Found by fuzzing (fuzz target nbd_target): the host:port form took any characters but
    // blanks and `/` for the host (NULs, `?`, and a leading `-` that nbd-client would read as an
    // option); ports and percent escapes took a `+` sign.
    #[test]
    fn hosts_ports_and_escapes_are_strict() {
        for bad in [
            "wtK\0\0?s:10809",
            "-c",
            "-c:10809",
            "nbd://-c/x",
            "nbd://:10809/x",
            "host:+80",
            "nbd://h/%+f",
            "[fd00::1%]:10",
            "[nothex]:10",
            "nbd://ho;st/x",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_target("[fe80::1%eth0]:10809").unwrap(),
            tcp("fe80::1%eth0", 10809, None)
        );
        assert_eq!(
            parse_target("nbd://nbd-1.example_x:10/e%2F").unwrap(),
            tcp("nbd-1.example_x", 10, Some("e/"))
        );
    }
}
