//! `block add|remove`: the default block hotplug script (Xen's `/etc/xen/scripts/block`).
//!
//! # Who calls it
//!
//! libxl (`xl create`, `xl block-attach`, `xl devd` in a driver domain) for every `phy`-backend
//! disk without its own `script=`: `block add` after the backend reached InitWait, `block remove`
//! after it reached Closed (docs/hotplug-contract.md, "Sequencing and time limits"). argv is `[block, add|remove]`; any other action is
//! `Invalid command` (exit 1, nothing written). Environment: `XENBUS_PATH` (required, usually the
//! relative `backend/vbd/<domid>/<devid>`), `XENBUS_TYPE` (`vbd`), `XENBUS_BASE_PATH`
//! (`backend`), plus the runtime's `XENPLUG_*` settings (state and lock directories, …).
//!
//! # add
//!
//! Reads `<backend>/type` (default `MISSING`), `params` and `mode` (both required),
//! `physical-device`, `frontend-id` (required), `state`, and for the sharing check
//! `backend/<XENBUS_TYPE>/*/*/{physical-device,mode}` and `/local/domain/<d>/{vm,target}`.
//!
//! * `physical-device` already present: exit 0, nothing written (checked again under the lock, so
//!   a duplicate add racing the first one does not attach twice).
//! * `params` is classified by the filesystem, not by `type`: a relative name is taken under
//!   `/dev/`; a block device is `phy`, a regular file is `file`, anything else is "other".
//! * **phy**: a symlink is resolved; under the `block` lock the sharing check runs (unless mode
//!   `!`), then `physical-device` (`%x:%x`), `physical-device-path` and
//!   `hotplug-status=connected` are written in one transaction, in that order, still under the
//!   lock (the body returns them as an [`Outcome::Published`] device; the runtime writes them).
//! * **file**: the path is canonicalised; under the lock of that file (`block-file@<st_dev>:<st_ino>`,
//!   not the global `block`: adds of different files run side by side, see [`file_lock_name`]):
//!   backend `state` must be `2`
//!   (otherwise the fatal `Path closed or removed during hotplug add: <path> state: <s>`); a `w`
//!   attach of a file without any write permission bit (or on a read-only filesystem) is refused
//!   as busy; the sharing check; then a loop device is attached race-free (read-only for `r`), a
//!   state record is saved for `remove`, and `node=/dev/loopN`, `physical-device`,
//!   `physical-device-path`, `hotplug-status=connected` are written in one transaction. Any
//!   failure after the attach detaches the loop device and deletes the record: a failed add leaves
//!   nothing behind.
//! * **other** (missing path, directory, FIFO, …): when `<scripts_dir>/block-<type>` exists and
//!   is executable it is run with `add` and the same environment, its exit status is ours, and
//!   `remove` will run it too. Otherwise the fatal `<params> does not exist.` /
//!   `<params> is neither a block device nor a regular file.` (The reference writes
//!   `hotplug-status=connected` and then exits 1 here; see DIFFERENCES.md.)
//!
//! # remove
//!
//! Detaches only what `add` attached, from the state record (so it works when the image was
//! deleted or renamed, or the xenstore nodes are gone), checking that the loop device still is
//! the same attachment (disk sequence number and backing identity). Without a record (an add
//! made by another implementation) it falls back to the reference's `node`, but only when that
//! loop device is still backed by `params` and no other backend uses it. Block devices: nothing
//! is detached. Idempotent: a second remove, or a remove after a failed add, exits 0. Writes
//! nothing to xenstore.
//!
//! # Exit status and errors
//!
//! 0 on success and on every "nothing to do". 1 on failure, with `hotplug-error=<message>` and
//! `hotplug-status=error` (or `busy` for a sharing conflict or a read-only file), written by the
//! runtime ([`xenplug_hotplug::run`]).

use crate::devnum::DevNum;
use crate::gather::{self, HostPaths, SharingRequest, Target};
use crate::loopdev::{Backing, Binding, Detached, KernelLoops, LoopError, LoopOps};
use crate::sharing::{self, Mode};
use crate::state::{IscsiRecord, LoopRecord, LoopStage, Record, Store};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use xenplug_hotplug::lock::names;
use xenplug_hotplug::{run, Action, Context, Device, Failure, LockGuard, Outcome, Raw};

/// The host interfaces `block` uses besides the runtime context.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    /// Loop devices.
    pub loops: &'a dyn LoopOps,
    /// `/proc` and `/sys` paths for the sharing check.
    pub paths: &'a HostPaths,
    /// Where relative `params` are looked up (`/dev`).
    pub dev_dir: &'a Path,
}

impl std::fmt::Debug for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("paths", self.paths)
            .field("dev_dir", &self.dev_dir)
            .finish_non_exhaustive()
    }
}

/// Entry point of `block` (see the module documentation).
pub fn main(raw: Raw) -> ExitCode {
    run_on_host("block", raw, body)
}

/// Run the script `name` with `body` against the real host (kernel loop devices, the host's
/// paths, `/dev`).
pub(crate) fn run_on_host(
    name: &str,
    raw: Raw,
    body: for<'a> fn(&Context, &Host<'a>) -> Result<Outcome<'a>, Failure>,
) -> ExitCode {
    let loops = KernelLoops::default();
    let paths = HostPaths::default();
    let host = Host {
        loops: &loops,
        paths: &paths,
        dev_dir: Path::new("/dev"),
    };
    run(name, raw, Action::BLOCK, |ctx| body(ctx, &host))
}

/// The script body: dispatch on the action.
pub fn body<'a>(ctx: &Context, host: &Host<'a>) -> Result<Outcome<'a>, Failure> {
    match ctx.action() {
        Action::Add => add(ctx, host),
        Action::Remove => remove(ctx, host),
        other => Err(Failure::Error(format!("Invalid command: {other}"))),
    }
}

/// How `params` is classified (by the filesystem, not by xenstore's `type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Params {
    /// A block device (path as given, `/dev/`-prefixed when it was relative).
    Device(PathBuf),
    /// A regular file (path as given).
    File(PathBuf),
    /// Neither (or nothing at all).
    Other(PathBuf),
}

/// Classify `params`. A relative name is a device name under `dev_dir` (`xvda` → `/dev/xvda`)
/// when such a block device exists; otherwise it is taken as given, as the reference does.
/// Symlinks are followed.
pub fn classify(params: &str, dev_dir: &Path) -> Params {
    let given = PathBuf::from(params);
    if !given.is_absolute() {
        let under = dev_dir.join(params);
        if std::fs::metadata(&under).is_ok_and(|m| m.file_type().is_block_device()) {
            return Params::Device(under);
        }
    }
    match std::fs::metadata(&given) {
        Ok(m) if m.file_type().is_block_device() => Params::Device(given),
        Ok(m) if m.is_file() => Params::File(given),
        _ => Params::Other(given),
    }
}

/// This backend's `(domid, devid)` as the sharing check's scan of `backend/<kind>/*/*` names
/// them, to skip it.
fn own_ids(ctx: &Context) -> Option<(String, String)> {
    ctx.backend_path()
        .map(|b| (b.domid.to_string(), b.devid.to_string()))
}

fn sharing_check(
    ctx: &Context,
    host: &Host,
    mode: Mode,
    target: Target<'_>,
    frontend_id: &str,
) -> Result<(), Failure> {
    if mode == Mode::Unchecked {
        return Ok(());
    }
    let (base, own) = (ctx.kind_dir(), own_ids(ctx));
    let req = SharingRequest {
        mode,
        target,
        backend_base: &base,
        own: own.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        frontend_id,
    };
    let facts = gather::gather_sharing(&req, host.paths, host.loops, ctx.xs)
        .map_err(|e| Failure::Error(format!("sharing check failed: {e}")))?;
    let verdict = sharing::decide(&facts);
    ctx.log
        .debug(format!("sharing check ({}): {verdict:?}", mode.letter()));
    match sharing::busy_message(&facts.subject, mode, verdict) {
        // The message keeps the reference's line break; see DIFFERENCES.md.
        Some(msg) => Err(Failure::Busy(msg)),
        None => Ok(()),
    }
}

/// The nodes Xen's `write_dev` writes for a device (plus `node` first for loop devices), in the
/// reference's order; the runtime writes them with `hotplug-status=connected` in one transaction.
pub fn device_nodes<'a>(node: Option<&Path>, dev: &Path, devnum: DevNum) -> Device<'a> {
    let d = match node {
        Some(n) => Device::new().node("node", n.display()),
        None => Device::new(),
    };
    d.node("physical-device", devnum)
        .node("physical-device-path", dev.display())
}

/// The error for a `mode` that is not one of the six accepted spellings.
pub(crate) fn invalid_mode(ctx: &Context, mode: &str) -> String {
    format!(
        "invalid mode '{mode}' in {} (expected r, ro, w, rw, w! or rw!)",
        ctx.path("mode")
    )
}

fn physical_device_present(ctx: &Context) -> Result<bool, Failure> {
    if ctx.exists("physical-device")? {
        ctx.log
            .debug("physical-device already present: nothing to do (add may be called twice)");
        return Ok(true);
    }
    Ok(false)
}

fn add<'a>(ctx: &Context, host: &Host<'a>) -> Result<Outcome<'a>, Failure> {
    let kind = ctx.read_default("type", "MISSING")?;
    let params = ctx.read_required("params")?;
    let mode_raw = ctx.read_required("mode")?;
    let class = classify(&params, host.dev_dir);
    if physical_device_present(ctx)? {
        return Ok(Outcome::Done);
    }
    if Mode::parse_strict(&mode_raw).is_none() {
        return Err(Failure::Error(invalid_mode(ctx, &mode_raw)));
    }
    let frontend_id = ctx.read_required("frontend-id")?;
    match class {
        Params::Device(dev) => add_phy(ctx, host, &dev, &mode_raw, &frontend_id),
        Params::File(file) => add_file(ctx, host, &params, &file, &mode_raw, &frontend_id),
        Params::Other(path) => add_other(ctx, &kind, &params, &path),
    }
}

fn add_phy<'a>(
    ctx: &Context,
    host: &Host<'a>,
    dev: &Path,
    mode_raw: &str,
    frontend_id: &str,
) -> Result<Outcome<'a>, Failure> {
    let mut dev = dev.to_path_buf();
    if std::fs::symlink_metadata(&dev).is_ok_and(|m| m.file_type().is_symlink()) {
        dev = std::fs::canonicalize(&dev)
            .map_err(|_| Failure::Error(format!("{} link does not exist.", dev.display())))?;
    }
    let meta = std::fs::metadata(&dev)
        .map_err(|_| Failure::Error(format!("{} does not exist.", dev.display())))?;
    if !meta.file_type().is_block_device() {
        return Err(Failure::Error(format!(
            "{} is not a block device.",
            dev.display()
        )));
    }
    let devnum = DevNum::from_dev_t(meta.rdev());
    let mode = Mode::canonicalise(mode_raw);

    let lock = ctx.claim_lock(names::BLOCK)?;
    if physical_device_present(ctx)? {
        return Ok(Outcome::Done);
    }
    sharing_check(ctx, host, mode, Target::Device(&dev, devnum), frontend_id)?;
    ctx.log.info(format!(
        "{}: {} ({devnum}) mode {}",
        ctx.backend(),
        dev.display(),
        mode.letter()
    ));
    // Published under the lock that guarded the sharing check.
    Ok(Outcome::Published(
        device_nodes(None, &dev, devnum).hold(lock),
    ))
}

pub(crate) fn store(ctx: &Context) -> Result<Store, Failure> {
    Ok(Store::new(ctx.state_dir()?))
}

/// Who else holds loop device `devnum` (`device`): another backend of this kind that published
/// it as `physical-device`, or another backend's record naming it. `None`: nobody.
fn held_elsewhere(
    ctx: &Context,
    store: &Store,
    device: &Path,
    devnum: DevNum,
) -> Result<Option<String>, Failure> {
    let (base, own) = (ctx.kind_dir(), own_ids(ctx));
    let others = gather::gather_backends(
        ctx.xs,
        &base,
        own.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
    )?;
    if let Some(b) = others.iter().find(|b| b.physical_device == Some(devnum)) {
        return Ok(Some(format!("backend {base}/{}/{}", b.domid, b.devid)));
    }
    Ok(store
        .others(ctx.backend())
        .into_iter()
        .find(|(_, r)| matches!(r, Record::Loop(l) if l.device == device))
        .map(|(name, _)| format!("the state record {name}")))
}

/// Detach the loop device of `rec` if it is that attachment: for a [`LoopStage::Bound`] record,
/// the same device bound to the same file with the same disk sequence number; for a
/// [`LoopStage::Binding`] record (the add was killed around the bind), the device bound to that
/// file since the record was made (a higher sequence number) and held by no other backend.
fn detach_recorded(
    ctx: &Context,
    host: &Host,
    store: &Store,
    rec: &LoopRecord,
) -> Result<(), Failure> {
    let dev = &rec.device;
    let st = host
        .loops
        .status(dev)
        .map_err(|e| Failure::Error(format!("cannot inspect {}: {e}", dev.display())))?;
    let Some(st) = st else {
        ctx.log
            .info(format!("{} is already detached", dev.display()));
        return Ok(());
    };
    let same_file = st.devnum == rec.devnum
        && st.backing
            == (Backing {
                dev: rec.backing_dev,
                ino: rec.backing_ino,
            });
    let ours = same_file
        && match rec.stage {
            LoopStage::Bound { diskseq } => match (diskseq, st.diskseq) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            },
            LoopStage::Binding { diskseq_before } => {
                let since = match (diskseq_before, st.diskseq) {
                    (Some(a), Some(b)) => b > a,
                    _ => true,
                };
                since
                    && match held_elsewhere(ctx, store, dev, st.devnum)? {
                        Some(who) => {
                            ctx.log.warning(format!(
                                "not detaching {}: {who} holds it",
                                dev.display()
                            ));
                            false
                        }
                        None => true,
                    }
            }
        };
    if !ours {
        ctx.log.warning(format!(
            "not detaching {}: it is not the device attached for {} (now backed by {}:{})",
            dev.display(),
            rec.file.display(),
            st.backing.dev,
            st.backing.ino
        ));
        return Ok(());
    }
    match host.loops.detach(dev) {
        Ok(Detached::Cleared) => ctx.log.debug(format!("detached {}", dev.display())),
        Ok(Detached::Deferred) => ctx.log.info(format!(
            "{} is still open; the kernel detaches it at the last close",
            dev.display()
        )),
        Ok(Detached::NotBound | Detached::NoDevice) => ctx
            .log
            .info(format!("{} is already detached", dev.display())),
        Err(e) => {
            return Err(Failure::Error(format!(
                "losetup -d {} failed: {e}",
                dev.display()
            )))
        }
    }
    Ok(())
}

fn add_file<'a>(
    ctx: &Context,
    host: &Host<'a>,
    params: &str,
    given: &Path,
    mode_raw: &str,
    frontend_id: &str,
) -> Result<Outcome<'a>, Failure> {
    let file = std::fs::canonicalize(given)
        .map_err(|_| Failure::Error(format!("{params} does not exist.")))?;
    let meta = std::fs::metadata(&file)
        .ok()
        .filter(|m| m.is_file())
        .ok_or_else(|| Failure::Error(format!("{} does not exist.", file.display())))?;
    let mode = Mode::canonicalise(mode_raw);

    let backing = Backing::of(&meta);
    let lock = claim_file_lock(ctx, backing)?;
    if physical_device_present(ctx)? {
        return Ok(Outcome::Done);
    }
    let state = ctx.read_default("state", "unknown")?;
    if state != "2" {
        return Err(Failure::Error(format!(
            "Path closed or removed during hotplug add: {} state: {state}",
            ctx.backend()
        )));
    }
    if mode == Mode::Write && meta.permissions().mode() & 0o222 == 0 {
        return Err(Failure::Busy(sharing::read_only_file_message(&file)));
    }
    sharing_check(ctx, host, mode, Target::File(&file, backing), frontend_id)?;

    let device = attach(ctx, host, &file, backing, mode)?;
    Ok(Outcome::Published(device.hold(lock)))
}

/// Attach `file` (whose identity is `backing`) to a loop device for `mode` and record it for
/// `remove`; returns the device to publish (`node`, `physical-device`, `physical-device-path`),
/// whose undo detaches it again if the runtime cannot write them. On any failure here,
/// everything is undone. The caller holds the file's lock (and hands it to the device).
pub(crate) fn attach<'a>(
    ctx: &Context,
    host: &Host<'a>,
    file: &Path,
    backing: Backing,
    mode: Mode,
) -> Result<Device<'a>, Failure> {
    let store = store(ctx)?;
    let backend = ctx.backend().to_string();
    // A record left by an earlier incarnation of this backend path whose remove never ran.
    match store.load(&backend) {
        Ok(Some(Record::Loop(old))) => {
            ctx.log.warning(format!(
                "stale state for {backend}: cleaning up {}",
                old.device.display()
            ));
            detach_recorded(ctx, host, &store, &old)?;
        }
        Ok(_) => {}
        Err(e) => ctx.log.warning(format!("ignoring unreadable state: {e}")),
    }

    // The record is saved before the bind, while the device is claimed (crash safety: see
    // state.rs), and replaced by the bound one after it.
    let record = |device: &Path, devnum: DevNum, stage: LoopStage, b: Backing| {
        Record::Loop(LoopRecord {
            device: device.to_path_buf(),
            devnum,
            stage,
            backing_dev: b.dev,
            backing_ino: b.ino,
            file: file.to_path_buf(),
        })
    };
    let cannot_record = |e: std::io::Error| {
        format!(
            "cannot record state for {backend} in {}: {e}",
            store.path(&backend).display()
        )
    };
    let mut intent = |b: &Binding| {
        let stage = LoopStage::Binding {
            diskseq_before: b.diskseq_before,
        };
        store
            .save(&backend, &record(&b.path, b.devnum, stage, b.backing))
            .map_err(cannot_record)
    };
    let attached = host
        .loops
        .attach_with_intent(file, mode == Mode::Read, &mut intent)
        .map_err(|e| {
            // Nothing is bound; an intent record may name a device we did not get.
            if let Err(e) = store.remove(&backend) {
                ctx.log.err(format!("cannot remove state: {e}"));
            }
            match e {
                LoopError::ReadOnlyBacking { .. } => {
                    Failure::Busy(sharing::read_only_file_message(file))
                }
                LoopError::NoFreeDevice { .. } => {
                    Failure::Error(format!("Failed to find an unused loop device ({e})"))
                }
                LoopError::Intent(msg) => Failure::Error(msg),
                other => Failure::Error(format!(
                    "cannot attach {} to a loop device: {other}",
                    file.display()
                )),
            }
        })?;
    let loops = host.loops;
    let undo = {
        let (device, store, backend) = (attached.path.clone(), store.clone(), backend.clone());
        move |ctx: &Context<'_>| {
            if let Err(e) = loops.detach(&device) {
                ctx.log
                    .err(format!("rollback: cannot detach {}: {e}", device.display()));
            }
            if let Err(e) = store.remove(&backend) {
                ctx.log.err(format!("rollback: cannot remove state: {e}"));
            }
        }
    };
    let rollback = |why: Failure| -> Failure {
        undo.clone()(ctx);
        why
    };
    if attached.backing != backing {
        return Err(rollback(Failure::Error(format!(
            "{} was replaced during hotplug add",
            file.display()
        ))));
    }
    let bound = LoopStage::Bound {
        diskseq: attached.diskseq,
    };
    let rec = record(&attached.path, attached.devnum, bound, attached.backing);
    if let Err(e) = store.save(&backend, &rec) {
        return Err(rollback(Failure::Error(cannot_record(e))));
    }
    ctx.log.info(format!(
        "{backend}: {} on {} ({}) mode {}",
        file.display(),
        attached.path.display(),
        attached.devnum,
        mode.letter()
    ));
    Ok(device_nodes(Some(&attached.path), &attached.path, attached.devnum).undo_on_failure(undo))
}

/// `remove` through the state record, if there is one. The caller holds [`claim_remove_lock`]'s lock
/// (`lock`), so a concurrent add of the same backend has either recorded its attachment or not
/// started it. `Ok(None)`: no record (the lock is still held by the caller's guard, which is
/// handed back).
pub(crate) fn remove_recorded(
    ctx: &Context,
    host: &Host,
    lock: LockGuard,
) -> Result<Result<Outcome<'static>, LockGuard>, Failure> {
    let store = store(ctx)?;
    let backend = ctx.backend().to_string();
    let forget = |store: &Store| {
        store
            .remove(&backend)
            .map_err(|e| Failure::Error(format!("cannot remove state for {backend}: {e}")))
    };
    match store.load(&backend) {
        Ok(Some(Record::Loop(rec))) => {
            detach_recorded(ctx, host, &store, &rec)?;
            forget(&store)?;
            Ok(Ok(Outcome::Done))
        }
        Ok(Some(Record::Nbd(rec))) => {
            crate::nbd::release(ctx, &crate::nbd::NbdHost::default(), &rec.device)?;
            forget(&store)?;
            Ok(Ok(Outcome::Done))
        }
        Ok(Some(Record::Helper { kind })) => {
            // The helper may take the lock itself.
            drop(lock);
            let result = match helper_path(ctx, &kind) {
                Some(script) => run_helper(ctx, &kind, &script, Action::Remove),
                None => {
                    ctx.log.warning(format!(
                        "block-{kind} (used by add) is gone; nothing to remove"
                    ));
                    Ok(())
                }
            };
            forget(&store)?;
            result.map(|()| Ok(Outcome::Done))
        }
        Ok(Some(Record::Iscsi(IscsiRecord { iqn, .. }))) => {
            // block-iscsi's session: only block-iscsi's remove may end it.
            ctx.log.warning(format!(
                "{backend} holds block-iscsi's session to {iqn}; left for block-iscsi remove"
            ));
            Ok(Ok(Outcome::Done))
        }
        Ok(None) => {
            // No record, but perhaps the temporary file of a save a kill interrupted.
            if let Err(e) = forget(&store) {
                ctx.log.warning(e);
            }
            Ok(Err(lock))
        }
        Err(e) => {
            ctx.log
                .warning(format!("{e}; falling back to xenstore's node"));
            if let Err(e) = forget(&store) {
                ctx.log.warning(e);
            }
            Ok(Err(lock))
        }
    }
}

/// A `type` that may name a helper script `block-<type>`.
fn helper_name_ok(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn helper_path(ctx: &Context, kind: &str) -> Option<PathBuf> {
    if !helper_name_ok(kind) {
        return None;
    }
    let p = ctx.config.scripts_dir.join(format!("block-{kind}"));
    let m = std::fs::metadata(&p).ok()?;
    (m.is_file() && m.permissions().mode() & 0o111 != 0).then_some(p)
}

/// Run `block-<kind> <action>`; on failure, pass on what it reported.
fn run_helper(ctx: &Context, kind: &str, script: &Path, action: Action) -> Result<(), Failure> {
    ctx.log
        .debug(format!("running {} {action}", script.display()));
    let out = xenplug_hotplug::command::output_until(
        ctx.command(script).arg(action.as_str()),
        None,
        ctx.deadline(),
    )
    .map_err(|e| Failure::Error(format!("cannot run {}: {e}", script.display())))?
    .ok_or_else(|| {
        Failure::Error(format!(
            "{} {action} did not finish before the script's deadline and was killed",
            script.display()
        ))
    })?;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        ctx.log.debug(format!("block-{kind}: {line}"));
    }
    if out.status.success() {
        return Ok(());
    }
    let status = ctx.read("hotplug-status").ok().flatten();
    let error = ctx.read("hotplug-error").ok().flatten();
    let msg =
        error.unwrap_or_else(|| format!("{} {action} failed ({})", script.display(), out.status));
    Err(match status.as_deref() {
        Some("busy") => Failure::Busy(msg),
        _ => Failure::Error(msg),
    })
}

fn add_other(
    ctx: &Context,
    kind: &str,
    params: &str,
    path: &Path,
) -> Result<Outcome<'static>, Failure> {
    if let Some(script) = helper_path(ctx, kind) {
        let store = store(ctx)?;
        let backend = ctx.backend().to_string();
        store
            .save(
                &backend,
                &Record::Helper {
                    kind: kind.to_string(),
                },
            )
            .map_err(|e| Failure::Error(format!("cannot record state for {backend}: {e}")))?;
        return match run_helper(ctx, kind, &script, Action::Add) {
            Ok(()) => Ok(Outcome::Done),
            Err(f) => {
                let _ = store.remove(&backend);
                Err(f)
            }
        };
    }
    if std::fs::symlink_metadata(path).is_err() && std::fs::metadata(path).is_err() {
        return Err(Failure::Error(format!("{params} does not exist.")));
    }
    Err(Failure::Error(format!(
        "{params} is neither a block device nor a regular file."
    )))
}

/// The lock of one backing file (by identity: `block-file@<st_dev>:<st_ino>`): what an add of
/// that file holds from its sharing check until its device is published, and its remove while
/// it detaches. Adds of different files do not wait for each other: the sharing decision for a
/// file depends only on the loop devices backed by it and on who published them, and the
/// kernel hands out free loop devices race-free (`loopdev.rs`). Physical devices keep the
/// `block` lock (their conflicts follow the device topology).
pub fn file_lock_name(backing: Backing) -> String {
    xenplug_hotplug::lock::object_name("block-file", &format!("{}:{}", backing.dev, backing.ino))
}

pub(crate) fn claim_file_lock(ctx: &Context, backing: Backing) -> Result<LockGuard, Failure> {
    ctx.claim_lock(&file_lock_name(backing))
}

/// The lock a remove takes: the backing file's, when this backend's record is a loop device
/// (its add held the same one) or, without a record, when `params` names a file that exists
/// (an add killed before it recorded anything held that lock, and this release removes the
/// lock file it left); otherwise `block`.
pub(crate) fn claim_remove_lock(
    ctx: &Context,
    params_file: impl FnOnce() -> Result<Option<PathBuf>, Failure>,
) -> Result<LockGuard, Failure> {
    match store(ctx)?.load(ctx.backend()) {
        Ok(Some(Record::Loop(rec))) => claim_file_lock(
            ctx,
            Backing {
                dev: rec.backing_dev,
                ino: rec.backing_ino,
            },
        ),
        Ok(None) => match params_file()?
            .and_then(|f| std::fs::metadata(f).ok())
            .filter(|m| m.is_file())
        {
            Some(meta) => claim_file_lock(ctx, Backing::of(&meta)),
            None => ctx.claim_lock(names::BLOCK),
        },
        _ => ctx.claim_lock(names::BLOCK),
    }
}

fn remove(ctx: &Context, host: &Host) -> Result<Outcome<'static>, Failure> {
    let lock = claim_remove_lock(ctx, || {
        Ok(match ctx.read("params")? {
            Some(p) if !p.is_empty() => match classify(&p, host.dev_dir) {
                Params::File(f) => Some(f),
                _ => None,
            },
            _ => None,
        })
    })?;
    match remove_recorded(ctx, host, lock)? {
        Ok(outcome) => Ok(outcome),
        Err(_lock) => remove_without_record(ctx, host),
    }
}

/// The reference's way, made safe: `node` is detached only when it is still backed by `params`
/// and no other backend uses it. The caller holds the `block` lock (no record named a file).
pub(crate) fn remove_without_record(
    ctx: &Context,
    host: &Host,
) -> Result<Outcome<'static>, Failure> {
    let Some(params) = ctx.read("params")?.filter(|p| !p.is_empty()) else {
        ctx.log.debug("no state and no params: nothing to remove");
        return Ok(Outcome::Done);
    };
    let Params::File(file) = classify(&params, host.dev_dir) else {
        return Ok(Outcome::Done);
    };
    let Some(node) = ctx.read("node")?.filter(|n| !n.is_empty()) else {
        ctx.log.debug("no loop device recorded: nothing to remove");
        return Ok(Outcome::Done);
    };
    remove_loop_node(ctx, host, &file, Path::new(&node))
}

/// Detach loop device `node` if it is backed by `file` and no other backend uses it. The
/// caller holds the `block` lock or the file's.
pub(crate) fn remove_loop_node(
    ctx: &Context,
    host: &Host,
    file: &Path,
    node: &Path,
) -> Result<Outcome<'static>, Failure> {
    let Ok(meta) = std::fs::metadata(file) else {
        ctx.log.warning(format!(
            "{} is gone and no state was recorded: not detaching {}",
            file.display(),
            node.display()
        ));
        return Ok(Outcome::Done);
    };
    let st = host
        .loops
        .status(node)
        .map_err(|e| Failure::Error(format!("cannot inspect {}: {e}", node.display())))?;
    let Some(st) = st else {
        ctx.log
            .info(format!("{} is already detached", node.display()));
        return Ok(Outcome::Done);
    };
    if st.backing != Backing::of(&meta) {
        ctx.log.warning(format!(
            "not detaching {}: it is not backed by {}",
            node.display(),
            file.display()
        ));
        return Ok(Outcome::Done);
    }
    let (base, own) = (ctx.kind_dir(), own_ids(ctx));
    let others = gather::gather_backends(
        ctx.xs,
        &base,
        own.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
    )?;
    if let Some(b) = others.iter().find(|b| b.physical_device == Some(st.devnum)) {
        ctx.log.warning(format!(
            "not detaching {}: backend {}/{}/{} uses it",
            node.display(),
            base,
            b.domid,
            b.devid
        ));
        return Ok(Outcome::Done);
    }
    match host.loops.detach(node) {
        Ok(d) => ctx.log.debug(format!("{}: {d:?}", node.display())),
        Err(e) => {
            return Err(Failure::Error(format!(
                "losetup -d {} failed: {e}",
                node.display()
            )))
        }
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopdev::{Attached, LoopStatus};
    use std::cell::RefCell;
    use xenplug_hotplug::{Config, Invocation, Level, Log};
    use xenplug_xenstore::XsOps;
    use xenplug_xenstored::MemStore;

    #[test]
    fn classification() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        std::fs::write(&f, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(
            classify(f.to_str().unwrap(), Path::new("/dev")),
            Params::File(f.clone())
        );
        assert_eq!(
            classify(link.to_str().unwrap(), Path::new("/dev")),
            Params::File(link.clone())
        );
        assert_eq!(
            classify(dir.path().to_str().unwrap(), Path::new("/dev")),
            Params::Other(dir.path().to_path_buf())
        );
        assert_eq!(
            classify("/nonexistent/x", Path::new("/dev")),
            Params::Other("/nonexistent/x".into())
        );
        // /dev/null is a character device: other.
        assert_eq!(
            classify("null", Path::new("/dev")),
            Params::Other("null".into())
        );
    }

    #[test]
    fn helper_names() {
        assert!(helper_name_ok("dummy"));
        assert!(helper_name_ok("my_type-2"));
        assert!(!helper_name_ok(""));
        assert!(!helper_name_ok("../../bin/sh"));
        assert!(!helper_name_ok("a/b"));
        assert!(!helper_name_ok("a b"));
    }

    /// A recording loop driver: every call is logged; attachments live in a table.
    #[derive(Default)]
    struct FakeLoops {
        calls: RefCell<Vec<String>>,
        bound: RefCell<Vec<LoopStatus>>,
        next: RefCell<u32>,
        refuse_rw: bool,
        /// A state record to copy into `calls` at the instant of the bind.
        snapshot_at_bind: RefCell<Option<PathBuf>>,
    }

    impl FakeLoops {
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl LoopOps for FakeLoops {
        fn attach_with_intent(
            &self,
            file: &Path,
            read_only: bool,
            intent: &mut crate::loopdev::Intent<'_>,
        ) -> Result<Attached, LoopError> {
            self.calls
                .borrow_mut()
                .push(format!("attach {} ro={read_only}", file.display()));
            if self.refuse_rw && !read_only {
                return Err(LoopError::ReadOnlyBacking {
                    path: file.to_path_buf(),
                    source: std::io::Error::from_raw_os_error(libc::EROFS),
                });
            }
            let n = {
                let mut next = self.next.borrow_mut();
                *next += 1;
                40 + *next
            };
            let backing = Backing::of(&std::fs::metadata(file).unwrap());
            let path = PathBuf::from(format!("/dev/loop{n}"));
            intent(&Binding {
                number: n,
                path: path.clone(),
                devnum: DevNum::new(7, n),
                diskseq_before: Some(999 + u64::from(n)),
                backing,
            })
            .map_err(LoopError::Intent)?;
            // What a SIGKILL right before the bind would leave on disk.
            if let Some(f) = self.snapshot_at_bind.borrow().as_ref() {
                self.calls.borrow_mut().push(format!(
                    "record at bind: {}",
                    std::fs::read_to_string(f).unwrap_or_default()
                ));
            }
            let a = Attached {
                number: n,
                path,
                devnum: DevNum::new(7, n),
                diskseq: Some(1000 + u64::from(n)),
                backing,
                read_only,
            };
            self.bound.borrow_mut().push(LoopStatus {
                number: n,
                path: a.path.clone(),
                devnum: a.devnum,
                backing: a.backing,
                file_name: file.to_path_buf(),
                read_only,
                autoclear: false,
                diskseq: a.diskseq,
            });
            Ok(a)
        }
        fn detach(&self, device: &Path) -> Result<Detached, LoopError> {
            self.calls
                .borrow_mut()
                .push(format!("detach {}", device.display()));
            let mut b = self.bound.borrow_mut();
            let before = b.len();
            b.retain(|s| s.path != device);
            Ok(if b.len() < before {
                Detached::Cleared
            } else {
                Detached::NotBound
            })
        }
        fn status(&self, device: &Path) -> Result<Option<LoopStatus>, LoopError> {
            Ok(self
                .bound
                .borrow()
                .iter()
                .find(|s| s.path == device)
                .cloned())
        }
        fn list(&self) -> Result<Vec<LoopStatus>, LoopError> {
            Ok(self.bound.borrow().clone())
        }
    }

    struct World {
        dir: tempfile::TempDir,
        xs: MemStore,
        loops: FakeLoops,
        paths: HostPaths,
    }

    const B: &str = "/local/domain/0/backend/vbd/5/1";

    impl World {
        fn new() -> World {
            let dir = tempfile::tempdir().unwrap();
            // An empty host: no mounts, no swaps, no sysfs topology.
            std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
            std::fs::write(dir.path().join("proc/self/mountinfo"), "").unwrap();
            let paths = HostPaths::under(dir.path());
            World {
                dir,
                xs: MemStore::new(),
                loops: FakeLoops::default(),
                paths,
            }
        }

        fn image(&self) -> PathBuf {
            let p = self.dir.path().join("disk.img");
            std::fs::write(&p, b"").unwrap();
            p
        }

        fn backend(&self, params: &str, mode: &str) {
            for (k, v) in [
                ("params", params),
                ("mode", mode),
                ("frontend-id", "5"),
                ("state", "2"),
                ("type", "phy"),
            ] {
                self.xs.write(&format!("{B}/{k}"), v).unwrap();
            }
        }

        /// Run the body, then report as the runtime does (publishing the device).
        fn run(&self, action: &str) -> Result<Outcome<'static>, Failure> {
            let inv = Invocation::parse(Raw::new(
                &["block", action],
                &[("XENBUS_PATH", "backend/vbd/5/1"), ("XENBUS_TYPE", "vbd")],
            ))
            .unwrap();
            let config = Config {
                lock_dir: self.dir.path().join("locks"),
                state_dir: self.dir.path().join("state"),
                scripts_dir: self.dir.path().join("scripts"),
                log_file: None,
                syslog: false,
                ..Config::default()
            };
            let ctx = Context::new(inv, &self.xs, Log::stderr_only("block", Level::Err), config);
            let host = Host {
                loops: &self.loops,
                paths: &self.paths,
                dev_dir: Path::new("/dev"),
            };
            ctx.finish(body(&ctx, &host))
        }

        fn key(&self, k: &str) -> Option<String> {
            self.xs.read(&format!("{B}/{k}")).unwrap()
        }
    }

    /// The backend writes of a publication, as the runtime makes them (in one transaction).
    fn render(title: &str, d: &Device<'_>) -> String {
        let mut out = format!("# {title}\n");
        for (k, v) in d.nodes() {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push_str("hotplug-status = connected\n\n");
        out
    }

    /// Golden file `block-scripts/tests/golden/published.txt` (`XENPLUG_BLESS=1` rewrites it).
    #[test]
    fn golden_published_nodes() {
        let mut text = String::new();
        for (mode, what) in [
            ("r", "file, mode r"),
            ("w!", "file, mode w! (no sharing check)"),
        ] {
            let w = World::new();
            let img = w.image();
            w.backend(img.to_str().unwrap(), mode);
            let inv = Invocation::parse(Raw::new(
                &["block", "add"],
                &[("XENBUS_PATH", "backend/vbd/5/1"), ("XENBUS_TYPE", "vbd")],
            ))
            .unwrap();
            let config = Config {
                lock_dir: w.dir.path().join("locks"),
                state_dir: w.dir.path().join("state"),
                log_file: None,
                syslog: false,
                ..Config::default()
            };
            let ctx = Context::new(inv, &w.xs, Log::stderr_only("block", Level::Err), config);
            let host = Host {
                loops: &w.loops,
                paths: &w.paths,
                dev_dir: Path::new("/dev"),
            };
            let published = body(&ctx, &host);
            match &published {
                Ok(Outcome::Published(d)) => text += &render(&format!("block add: {what}"), d),
                other => panic!("{other:?}"),
            };
        }
        let phy = device_nodes(None, Path::new("/dev/xvdb"), DevNum::new(202, 16));
        text += &render(
            "block add: block device (also block-nbd, block-iscsi)",
            &phy,
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/published.txt");
        xenplug_testkit::golden::check(path, &text);
    }

    #[test]
    fn file_add_writes_in_order_and_remove_detaches_exactly_that() {
        let w = World::new();
        let img = w.image();
        w.backend(img.to_str().unwrap(), "r");
        assert_eq!(w.run("add"), Ok(Outcome::Connected));
        assert_eq!(w.key("node").as_deref(), Some("/dev/loop41"));
        assert_eq!(w.key("physical-device").as_deref(), Some("7:29"));
        assert_eq!(
            w.key("physical-device-path").as_deref(),
            Some("/dev/loop41")
        );
        assert_eq!(w.key("hotplug-status").as_deref(), Some("connected"));
        let canonical = std::fs::canonicalize(&img).unwrap();
        assert_eq!(
            w.loops.calls(),
            vec![format!("attach {} ro=true", canonical.display())]
        );
        // A second add (physical-device present): nothing happens.
        assert_eq!(w.run("add"), Ok(Outcome::Done));
        assert_eq!(w.loops.calls().len(), 1);
        assert_eq!(w.run("remove"), Ok(Outcome::Done));
        assert_eq!(w.loops.calls()[1], "detach /dev/loop41");
        assert_eq!(w.run("remove"), Ok(Outcome::Done));
        // The second remove finds no record and falls back to `node`, which is unbound.
        assert_eq!(w.loops.calls().len(), 2);
    }

    #[test]
    fn remove_leaves_a_reattached_device_alone() {
        let w = World::new();
        let img = w.image();
        w.backend(img.to_str().unwrap(), "w");
        assert_eq!(w.run("add"), Ok(Outcome::Connected));
        // Someone else detached and re-attached it: new disk sequence number.
        w.loops.bound.borrow_mut()[0].diskseq = Some(1);
        assert_eq!(w.run("remove"), Ok(Outcome::Done));
        assert_eq!(w.loops.calls().len(), 1, "no detach: {:?}", w.loops.calls());
    }

    #[test]
    fn unwritable_backing_is_busy_and_leaves_nothing() {
        let w = World {
            loops: FakeLoops {
                refuse_rw: true,
                ..FakeLoops::default()
            },
            ..World::new()
        };
        let img = w.image();
        w.backend(img.to_str().unwrap(), "rw");
        let r = w.run("add");
        assert!(
            matches!(r, Err(Failure::Busy(ref m)) if m.contains("is read-only")),
            "{r:?}"
        );
        assert_eq!(w.key("node"), None);
        assert!(!w.dir.path().join("state/xenplug-block/vbd-5-1").exists());
    }

    #[test]
    fn stale_record_is_cleaned_up_before_a_new_attach() {
        let w = World::new();
        let img = w.image();
        w.backend(img.to_str().unwrap(), "w");
        assert_eq!(w.run("add"), Ok(Outcome::Connected));
        // The domain died without a remove; a new one gets the same backend path.
        w.xs.rm(B).unwrap();
        w.backend(img.to_str().unwrap(), "w");
        assert_eq!(w.run("add"), Ok(Outcome::Connected));
        let calls = w.loops.calls();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(calls[0].starts_with("attach"));
        assert_eq!(calls[1], "detach /dev/loop41");
        assert!(calls[2].starts_with("attach"));
        assert_eq!(w.key("node").as_deref(), Some("/dev/loop42"));
    }

    #[test]
    fn another_guest_using_the_file_makes_it_busy() {
        let w = World::new();
        let img = w.image();
        w.backend(img.to_str().unwrap(), "w");
        assert_eq!(w.run("add"), Ok(Outcome::Connected));
        // Move the first backend to domain 6 (another VM) and add again for domain 5.
        let pd = w.key("physical-device").unwrap();
        for (k, v) in [
            ("physical-device", pd.as_str()),
            ("mode", "w"),
            ("frontend-id", "6"),
        ] {
            w.xs.write(&format!("/local/domain/0/backend/vbd/6/1/{k}"), v)
                .unwrap();
        }
        w.xs.write("/local/domain/6/vm", "/vm/six").unwrap();
        w.xs.write("/local/domain/5/vm", "/vm/five").unwrap();
        w.xs.rm(B).unwrap();
        w.backend(img.to_str().unwrap(), "w");
        std::fs::remove_dir_all(w.dir.path().join("state")).unwrap();
        let r = w.run("add");
        let canonical = std::fs::canonicalize(&img).unwrap();
        assert_eq!(
            r,
            Err(Failure::Busy(format!(
                "File {} is loopback-mounted through 7:29,\nwhich is mounted in a guest domain,\nand so cannot be mounted now.",
                canonical.display()
            )))
        );
        assert_eq!(w.loops.calls().len(), 1, "no second attach");
    }

    fn record_path(w: &World) -> PathBuf {
        w.dir.path().join("state/xenplug-block/vbd-5-1")
    }

    fn loop_record(w: &World) -> LoopRecord {
        let store = Store::new(&w.dir.path().join("state"));
        match store.load("backend/vbd/5/1").unwrap() {
            Some(Record::Loop(l)) => l,
            other => panic!("{other:?}"),
        }
    }

    /// The record names the device before the bind (a kill right before it leaves a record of
    /// a device that may be bound a moment later), and the bound one after.
    #[test]
    fn the_device_is_recorded_before_it_is_bound() {
        let w = World::new();
        let img = w.image();
        w.backend(img.to_str().unwrap(), "w");
        *w.loops.snapshot_at_bind.borrow_mut() = Some(record_path(&w));
        assert_eq!(w.run("add"), Ok(Outcome::Connected));
        let at_bind = w.loops.calls()[1].clone();
        assert!(
            at_bind.contains("kind=loop")
                && at_bind.contains("device=/dev/loop41")
                && at_bind.contains("stage=binding")
                && at_bind.contains("diskseq_before=1040"),
            "{at_bind}"
        );
        let rec = loop_record(&w);
        assert_eq!(
            rec.stage,
            LoopStage::Bound {
                diskseq: Some(1041)
            }
        );
    }

    /// Play a kill between the bind and the second save: the record still says `binding`.
    fn killed_after_bind(w: &World) -> LoopRecord {
        assert_eq!(w.run("add"), Ok(Outcome::Connected));
        let mut rec = loop_record(w);
        rec.stage = LoopStage::Binding {
            diskseq_before: Some(1040),
        };
        Store::new(&w.dir.path().join("state"))
            .save("backend/vbd/5/1", &Record::Loop(rec.clone()))
            .unwrap();
        // Nothing was published: libxl saw the script die.
        for k in [
            "node",
            "physical-device",
            "physical-device-path",
            "hotplug-status",
        ] {
            w.xs.rm(&format!("{B}/{k}")).unwrap();
        }
        rec
    }

    #[test]
    fn remove_after_a_kill_around_the_bind_detaches_exactly_that_device() {
        let w = World::new();
        let img = w.image();
        w.backend(img.to_str().unwrap(), "w");
        killed_after_bind(&w);
        assert_eq!(w.run("remove"), Ok(Outcome::Done));
        assert_eq!(w.loops.calls().last().unwrap(), "detach /dev/loop41");
        assert!(w.loops.bound.borrow().is_empty());
        assert!(!record_path(&w).exists());
        // Killed before the bind: the device is free; remove has nothing to detach.
        let w = World::new();
        let img = w.image();
        w.backend(img.to_str().unwrap(), "w");
        killed_after_bind(&w);
        w.loops.bound.borrow_mut().clear();
        assert_eq!(w.run("remove"), Ok(Outcome::Done));
        assert!(!w.loops.calls().iter().any(|c| c.starts_with("detach")));
        assert!(!record_path(&w).exists());
    }

    #[test]
    fn a_binding_record_never_detaches_someone_elses_device() {
        // The device was bound before the record was made (same disk sequence number): not
        // ours (killed before the bind; someone attached the same file there earlier).
        let w = World::new();
        let img = w.image();
        w.backend(img.to_str().unwrap(), "w");
        killed_after_bind(&w);
        w.loops.bound.borrow_mut()[0].diskseq = Some(1040);
        assert_eq!(w.run("remove"), Ok(Outcome::Done));
        assert!(!w.loops.calls().iter().any(|c| c.starts_with("detach")));
        // Bound since, but published by another backend (another VM sharing the file `r`).
        let w = World::new();
        let img = w.image();
        w.backend(img.to_str().unwrap(), "w");
        killed_after_bind(&w);
        w.xs.write("/local/domain/0/backend/vbd/6/1/physical-device", "7:29")
            .unwrap();
        assert_eq!(w.run("remove"), Ok(Outcome::Done));
        assert!(!w.loops.calls().iter().any(|c| c.starts_with("detach")));
        // Named by another backend's record.
        let w = World::new();
        let img = w.image();
        w.backend(img.to_str().unwrap(), "w");
        let rec = killed_after_bind(&w);
        Store::new(&w.dir.path().join("state"))
            .save("backend/vbd/6/1", &Record::Loop(rec))
            .unwrap();
        assert_eq!(w.run("remove"), Ok(Outcome::Done));
        assert!(!w.loops.calls().iter().any(|c| c.starts_with("detach")));
    }
}
