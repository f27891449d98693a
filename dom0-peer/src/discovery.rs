//! Channel discovery from xenstore.
//!
//! libxl writes, for every `channel=` entry of a domain, the console backend directory
//! `/local/domain/0/backend/console/<domid>/<N>/` with `name` (the channel name), `connection`
//! (`socket` or `pty`) and `path` (the Unix socket QEMU listens on), and the domain's home
//! `/local/domain/<domid>/` with `name` and `vm` (`/vm/<uuid>`). The peer serves the socket
//! channels whose name is one of ours.
//!
//! [`scan_domain`] reads one domain's channels; [`Inventory`] keeps what is known and turns a
//! rescan into [`Change`]s; [`watch_loop`] watches the backend root (which also fires once at
//! registration, picking up the VMs that existed before the daemon started) and rescans only the
//! domains an event names. It also watches `@releaseDomain`, which xenstored fires when a domain
//! dies (and when one shuts down): the known domains xenstored no longer knows
//! (`IS_DOMAIN_INTRODUCED`, [`DomainProbe`]) are dropped at once, before the toolstack has
//! removed their backend nodes — and even if it never does (a toolstack that died with them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xenplug_xenstore::{XenStore, XsClient, XsOps};

/// Where libxl puts console backends in dom0.
pub const DEFAULT_BACKEND_ROOT: &str = "/local/domain/0/backend/console";

/// The special watch xenstored fires when a domain dies or shuts down.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// Whether xenstored still knows a domain.
pub trait DomainProbe {
    /// `IS_DOMAIN_INTRODUCED domid`: false once the domain is dying or gone.
    fn domain_alive(&self, domid: u32) -> xenplug_xenstore::Result<bool>;
}

impl DomainProbe for XsClient {
    fn domain_alive(&self, domid: u32) -> xenplug_xenstore::Result<bool> {
        self.is_domain_introduced(domid)
    }
}

/// The longest Unix socket path (`sun_path` holds 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Key of a channel: (domid, console devid).
pub type ChannelKey = (u32, u32);

/// One channel the peer should serve.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelInfo {
    /// Domain id.
    pub domid: u32,
    /// Console device id (`N` of `console/<domid>/<N>`).
    pub devid: u32,
    /// Channel name (`name`).
    pub channel: String,
    /// Socket QEMU listens on (`path`).
    pub path: PathBuf,
    /// The VM's name, when xenstore has one.
    pub vm_name: Option<String>,
    /// The VM's UUID, when xenstore has one.
    pub vm_uuid: Option<String>,
}

impl ChannelInfo {
    /// The key of this channel.
    pub fn key(&self) -> ChannelKey {
        (self.domid, self.devid)
    }
}

/// A change in the set of served channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A channel appeared (or changed: then it was removed first).
    Up(ChannelInfo),
    /// A channel disappeared.
    Down(ChannelKey),
    /// A channel matching our names that cannot be served, with why (logged, listed).
    Rejected(ChannelKey, String),
}

/// Check a socket path taken from xenstore before it is used.
pub fn check_socket_path(p: &str) -> Result<PathBuf, String> {
    if !p.starts_with('/') {
        return Err(format!("socket path {p:?} is not absolute"));
    }
    if p.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "socket path is {} bytes, over the {MAX_SOCKET_PATH}-byte sun_path limit",
            p.len()
        ));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err("socket path contains control characters".into());
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!("socket path {p:?} contains `..`"));
    }
    Ok(PathBuf::from(p))
}

/// A UUID in the canonical 8-4-4-4-12 hex form, lower-cased; `None` otherwise.
pub fn check_uuid(s: &str) -> Option<String> {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    (groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, l)| g.len() == l && g.bytes().all(|b| b.is_ascii_hexdigit())))
    .then(|| s.to_ascii_lowercase())
}

/// `(domid, devid)` of a watch path below `root`; `(domid, None)` for the domain's directory
/// itself; `None` when the path is the root itself or not below it (rescan everything).
pub fn parse_event_path(root: &str, path: &str) -> Option<(u32, Option<u32>)> {
    let rest = path.strip_prefix(root)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let domid = parts.next()?.parse().ok()?;
    let devid = parts.next().and_then(|d| d.parse().ok());
    Some((domid, devid))
}

/// The VM's name and UUID from its xenstore home.
fn vm_identity(xs: &dyn XsOps, domid: u32) -> (Option<String>, Option<String>) {
    let home = format!("/local/domain/{domid}");
    let name = xs
        .read(&format!("{home}/name"))
        .ok()
        .flatten()
        .filter(|n| !n.is_empty());
    let uuid = xs
        .read(&format!("{home}/vm"))
        .ok()
        .flatten()
        .and_then(|vm| vm.rsplit('/').next().and_then(check_uuid));
    (name, uuid)
}

/// Read one domain's channels below `root` whose name is in `names`. Channels whose nodes are
/// incomplete (libxl writes them in one transaction, so that means "going away") are left out;
/// ones that are complete but unusable come back as `Err` with a reason.
pub fn scan_domain(
    xs: &dyn XsOps,
    root: &str,
    domid: u32,
    names: &BTreeSet<String>,
) -> Vec<(ChannelKey, Result<ChannelInfo, String>)> {
    let dir = format!("{root}/{domid}");
    let Ok(devids) = xs.directory(&dir) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = devids.iter().filter_map(|d| d.parse().ok()).collect();
    ids.sort_unstable();
    let mut identity = None;
    let mut out = Vec::new();
    for devid in ids {
        let be = format!("{dir}/{devid}");
        let read = |k: &str| xs.read(&format!("{be}/{k}")).ok().flatten();
        let Some(name) = read("name") else { continue };
        if !names.contains(&name) {
            continue;
        }
        // Closing (5) / Closed (6) or offline: the device is being removed.
        if matches!(read("state").as_deref(), Some("5") | Some("6"))
            || read("online").as_deref() == Some("0")
        {
            continue;
        }
        let key = (domid, devid);
        match read("connection").as_deref() {
            Some("socket") => {}
            Some(other) => {
                out.push((
                    key,
                    Err(format!(
                        "channel {name} has connection={other}; only socket channels are served"
                    )),
                ));
                continue;
            }
            None => continue,
        }
        let Some(raw_path) = read("path") else {
            continue;
        };
        let path = match check_socket_path(&raw_path) {
            Ok(p) => p,
            Err(e) => {
                out.push((key, Err(e)));
                continue;
            }
        };
        let (vm_name, vm_uuid) = identity
            .get_or_insert_with(|| vm_identity(xs, domid))
            .clone();
        out.push((
            key,
            Ok(ChannelInfo {
                domid,
                devid,
                channel: name,
                path,
                vm_name,
                vm_uuid,
            }),
        ));
    }
    out
}

/// The domains that have a console backend directory below `root`.
pub fn list_domains(xs: &dyn XsOps, root: &str) -> Vec<u32> {
    let mut v: Vec<u32> = xs
        .directory(root)
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// What discovery knows; turns rescans into changes.
#[derive(Debug, Default)]
pub struct Inventory {
    known: BTreeMap<ChannelKey, Result<ChannelInfo, String>>,
    /// Domains xenstored knew when their channels were found: the ones a `@releaseDomain` may
    /// concern (a simulated toolstack that never introduces its domains is left alone).
    tracked: BTreeSet<u32>,
    /// Domains dropped because xenstored no longer knows them, while backend nodes of theirs
    /// may still be there: not served again unless introduced again (a reused domid).
    released: BTreeSet<u32>,
}

impl Inventory {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of known channels (served or rejected).
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Replace what is known about `domid` by a fresh scan of it; the changes in order.
    pub fn update_domain(
        &mut self,
        domid: u32,
        scanned: Vec<(ChannelKey, Result<ChannelInfo, String>)>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let fresh: BTreeMap<_, _> = scanned.into_iter().collect();
        let old: Vec<ChannelKey> = self
            .known
            .range((domid, 0)..=(domid, u32::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            if !fresh.contains_key(&k) {
                self.known.remove(&k);
                changes.push(Change::Down(k));
            }
        }
        for (k, v) in fresh {
            if self.known.get(&k) == Some(&v) {
                continue;
            }
            if self.known.contains_key(&k) {
                changes.push(Change::Down(k));
            }
            changes.push(match &v {
                Ok(info) => Change::Up(info.clone()),
                Err(e) => Change::Rejected(k, e.clone()),
            });
            self.known.insert(k, v);
        }
        if !self.has_domain(domid) {
            self.tracked.remove(&domid);
        }
        changes
    }

    /// Domains currently known.
    pub fn domains(&self) -> BTreeSet<u32> {
        self.known.keys().map(|(d, _)| *d).collect()
    }

    /// Does `domid` have a known channel?
    pub fn has_domain(&self, domid: u32) -> bool {
        self.known
            .range((domid, 0)..=(domid, u32::MAX))
            .next()
            .is_some()
    }

    /// Note that xenstored knew `domid` when its channels were found.
    pub fn track(&mut self, domid: u32) {
        self.tracked.insert(domid);
    }

    /// Domains whose channels came up in `changes` and that are not tracked yet.
    pub fn untracked_in(&self, changes: &[Change]) -> BTreeSet<u32> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Up(i) if !self.tracked.contains(&i.domid) => Some(i.domid),
                _ => None,
            })
            .collect()
    }

    /// Was `domid` dropped as released (and not introduced again since)?
    pub fn is_released(&self, domid: u32) -> bool {
        self.released.contains(&domid)
    }

    /// `domid` is known to xenstored again, or its leftover nodes are gone: scan it normally.
    pub fn unrelease(&mut self, domid: u32) {
        self.released.remove(&domid);
    }

    /// After `@releaseDomain`: drop every tracked domain `alive` says is gone (an error counts
    /// as alive: the backend watch still removes it), and remember it as released.
    pub fn release_dead(
        &mut self,
        alive: impl Fn(u32) -> xenplug_xenstore::Result<bool>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let candidates: Vec<u32> = self
            .domains()
            .into_iter()
            .filter(|d| self.tracked.contains(d))
            .collect();
        for d in candidates {
            if alive(d).unwrap_or(true) {
                continue;
            }
            changes.extend(self.update_domain(d, Vec::new()));
            self.tracked.remove(&d);
            self.released.insert(d);
        }
        changes
    }
}

/// Rescan everything below `root`: every listed domain, and every known domain that vanished
/// (not the released ones: their leftover nodes are not served).
pub fn rescan_all(
    xs: &dyn XsOps,
    root: &str,
    names: &BTreeSet<String>,
    inv: &mut Inventory,
) -> Vec<Change> {
    let mut domains: BTreeSet<u32> = list_domains(xs, root).into_iter().collect();
    domains.extend(inv.domains());
    domains.retain(|d| !inv.is_released(*d));
    let mut changes = Vec::new();
    for d in domains {
        changes.extend(inv.update_domain(d, scan_domain(xs, root, d, names)));
    }
    changes
}

/// Scan `domids` with every connection of `pool` in parallel (xenstore round trips dominate a
/// scan of thousands of domains); `sink` gets each domain's result on the calling thread, in
/// completion order.
pub fn parallel_scan<X: XsOps + Send>(
    pool: &mut [X],
    root: &str,
    names: &BTreeSet<String>,
    domids: &[u32],
    mut sink: impl FnMut(u32, Vec<(ChannelKey, Result<ChannelInfo, String>)>),
) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for xs in pool.iter_mut() {
            let tx = tx.clone();
            let next = &next;
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&d) = domids.get(i) else { break };
                if tx.send((d, scan_domain(xs, root, d, names))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (d, r) in rx {
            sink(d, r);
        }
    });
}

/// A full rescan using `pool` when it has connections (else `xs`), emitting changes every
/// `batch` domains so channels start being served while the scan goes on. False when `emit`
/// wants to stop.
fn full_scan<X: XsOps + Send>(
    xs: &dyn XsOps,
    pool: &mut [X],
    root: &str,
    names: &BTreeSet<String>,
    inv: &mut Inventory,
    emit: &mut dyn FnMut(Vec<Change>) -> bool,
) -> bool {
    if pool.is_empty() {
        let c = rescan_all(xs, root, names, inv);
        return c.is_empty() || emit(c);
    }
    let mut domains: BTreeSet<u32> = list_domains(xs, root).into_iter().collect();
    domains.extend(inv.domains());
    domains.retain(|d| !inv.is_released(*d));
    let domains: Vec<u32> = domains.into_iter().collect();
    let mut pending = Vec::new();
    let mut n = 0;
    let mut go_on = true;
    parallel_scan(pool, root, names, &domains, |d, r| {
        pending.extend(inv.update_domain(d, r));
        n += 1;
        if go_on && (n % 256 == 0) && !pending.is_empty() {
            go_on = emit(std::mem::take(&mut pending));
        }
    });
    go_on && (pending.is_empty() || emit(pending))
}

/// The watch token discovery registers.
pub const WATCH_TOKEN: &str = "xenplug-peer-console";

/// The token of the `@releaseDomain` watch.
pub const RELEASE_TOKEN: &str = "xenplug-peer-release";

/// Is this event `@releaseDomain` (or, from a xenstored that names the domain,
/// `@releaseDomain/<domid>`)?
fn is_release(path: &str) -> bool {
    path == RELEASE_DOMAIN
        || path
            .strip_prefix(RELEASE_DOMAIN)
            .is_some_and(|r| r.starts_with('/'))
}

/// What [`watch_loop`] watches and how.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    /// The console backend root.
    pub root: &'a str,
    /// Channel names served.
    pub names: &'a BTreeSet<String>,
    /// Set to stop.
    pub stop: &'a AtomicBool,
    /// How often `stop` and `alive` are checked.
    pub tick: Duration,
    /// False when nobody listens any more.
    pub alive: &'a dyn Fn() -> bool,
    /// Told the number of channels and the time after the first full scan.
    pub scanned: &'a dyn Fn(usize, Duration),
}

impl std::fmt::Debug for Watch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("root", &self.root).finish()
    }
}

/// Watch `root` and `@releaseDomain` and report changes through `emit` until `stop` is set or
/// `emit`'s receiver is gone (`alive` returns false; both checked every `tick`).
/// The watch fires once at registration: the first pass is a full scan, so channels of VMs that
/// existed before the daemon started are found. Later events rescan only the domains they name.
/// On `@releaseDomain` every tracked domain xenstored no longer knows is dropped (its channels
/// go down) and its leftover backend nodes are ignored until xenstored knows the domid again.
pub fn watch_loop<W, X>(
    xs: &W,
    pool: &mut [X],
    w: &Watch<'_>,
    mut emit: impl FnMut(Vec<Change>) -> bool,
) -> xenplug_xenstore::Result<()>
where
    W: XenStore + DomainProbe,
    X: XsOps + Send,
{
    let Watch {
        root,
        names,
        stop,
        tick,
        alive,
        scanned,
    } = *w;
    let mut inv = Inventory::new();
    // The backend root: libxl adds and removes channels there. @releaseDomain: a domain died
    // (its backend nodes stay until the toolstack removes them, if it ever does).
    xs.watch(root, WATCH_TOKEN)?;
    xs.watch(RELEASE_DOMAIN, RELEASE_TOKEN)?;
    // Domains whose channels came up, to be checked against xenstored after they were emitted.
    let mut came_up: BTreeSet<u32> = BTreeSet::new();
    let mut emit_noting = |c: Vec<Change>, came_up: &mut BTreeSet<u32>| {
        came_up.extend(c.iter().filter_map(|c| match c {
            Change::Up(i) => Some(i.domid),
            _ => None,
        }));
        emit(c)
    };
    let t0 = std::time::Instant::now();
    if !full_scan(xs, pool, root, names, &mut inv, &mut |c| {
        emit_noting(c, &mut came_up)
    }) {
        return Ok(());
    }
    scanned(inv.len(), t0.elapsed());
    track(xs, &mut inv, &mut came_up);
    let mut initial_fire = true;
    while !stop.load(Ordering::Relaxed) && alive() {
        let Some(first) = xs.read_watch(Some(tick))? else {
            continue;
        };
        let mut full = false;
        let mut release = false;
        let mut dirty = BTreeSet::new();
        // The registration fires the watch once on `root` itself: the scan above covered it.
        let first_is_registration = initial_fire && first.path == root;
        initial_fire = false;
        let note = |path: &str, dirty: &mut BTreeSet<u32>, full: &mut bool, release: &mut bool| {
            if is_release(path) {
                *release = true;
                return;
            }
            match parse_event_path(root, path) {
                Some((d, _)) => {
                    dirty.insert(d);
                }
                None => *full = true,
            }
        };
        if !first_is_registration {
            note(&first.path, &mut dirty, &mut full, &mut release);
        }
        // Batch what is already queued (libxl writes many nodes per domain).
        while let Some(ev) = xs.read_watch(Some(Duration::from_millis(1)))? {
            note(&ev.path, &mut dirty, &mut full, &mut release);
            if dirty.len() > 4096 {
                break;
            }
        }
        let mut changes = if full {
            if !full_scan(xs, pool, root, names, &mut inv, &mut |c| {
                emit_noting(c, &mut came_up)
            }) {
                break;
            }
            Vec::new()
        } else {
            let mut c = Vec::new();
            for d in dirty {
                if inv.is_released(d) {
                    // Leftover nodes of a dead domain, or the domid is in use again.
                    let back = xs.domain_alive(d).unwrap_or(false);
                    let nodes_gone = xs.directory(&format!("{root}/{d}")).is_err();
                    if back || nodes_gone {
                        inv.unrelease(d);
                    }
                    if !back {
                        continue;
                    }
                }
                c.extend(inv.update_domain(d, scan_domain(xs, root, d, names)));
            }
            c
        };
        if release {
            changes.extend(inv.release_dead(|d| xs.domain_alive(d)));
        }
        if !changes.is_empty() && !emit_noting(changes, &mut came_up) {
            break;
        }
        track(xs, &mut inv, &mut came_up);
    }
    Ok(())
}

/// Track the domains in `came_up` that xenstored knows (all of them with a real toolstack:
/// libxl introduces a domain before it adds its channels).
fn track<W: DomainProbe>(xs: &W, inv: &mut Inventory, came_up: &mut BTreeSet<u32>) {
    for d in std::mem::take(came_up) {
        if inv.has_domain(d) && xs.domain_alive(d).unwrap_or(false) {
            inv.track(d);
        }
    }
}

/// Run [`watch_loop`] on its own thread with a connection opened by `open` (plus
/// `scan_connections` more for parallel full scans); changes go to `tx`. A lost xenstore
/// connection is retried every second until `stop` is set.
pub fn spawn_watcher<X, F>(
    open: F,
    scan_connections: usize,
    root: String,
    names: BTreeSet<String>,
    stop: Arc<AtomicBool>,
    tx: tokio::sync::mpsc::UnboundedSender<Vec<Change>>,
    log: crate::log::Logger,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    X: XenStore + DomainProbe + Send,
    F: Fn() -> xenplug_xenstore::Result<X> + Send + 'static,
{
    std::thread::Builder::new()
        .name("xenstore-watch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = open().and_then(|xs| {
                    let mut pool: Vec<X> =
                        (0..scan_connections).filter_map(|_| open().ok()).collect();
                    let scanned = |n: usize, t: Duration| {
                        log.info(
                            "scan-complete",
                            &[
                                ("channels", n.into()),
                                ("ms", (t.as_millis() as u64).into()),
                            ],
                        )
                    };
                    let alive = || !tx.is_closed();
                    let w = Watch {
                        root: &root,
                        names: &names,
                        stop: &stop,
                        tick: Duration::from_millis(200),
                        alive: &alive,
                        scanned: &scanned,
                    };
                    watch_loop(&xs, &mut pool, &w, |c| tx.send(c).is_ok())
                });
                if tx.is_closed() {
                    break;
                }
                if let Err(e) = r {
                    log.warn("xenstore-error", &[("error", e.to_string().into())]);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenplug_xenstored::MemStore;

    const ROOT: &str = DEFAULT_BACKEND_ROOT;
    const UUID: &str = "6f1c7f4e-2b1a-4c3d-9e8f-0123456789ab";

    fn names() -> BTreeSet<String> {
        ["org.xenplug.agent.v1".to_string()].into()
    }

    fn add(xs: &MemStore, domid: u32, devid: u32, name: &str, conn: &str, path: &str) {
        let be = format!("{ROOT}/{domid}/{devid}");
        for (k, v) in [
            ("frontend-id", domid.to_string()),
            ("online", "1".into()),
            ("state", "4".into()),
            ("protocol", "vt100".into()),
            ("name", name.into()),
            ("connection", conn.into()),
            ("path", path.into()),
        ] {
            xs.write(&format!("{be}/{k}"), &v).unwrap();
        }
        xs.write(
            &format!("/local/domain/{domid}/name"),
            &format!("vm{domid}"),
        )
        .unwrap();
        xs.write(&format!("/local/domain/{domid}/vm"), &format!("/vm/{UUID}"))
            .unwrap();
    }

    #[test]
    fn finds_our_socket_channels_only() {
        let xs = MemStore::new();
        add(&xs, 3, 1, "org.example.dummy", "socket", "/run/d.sock");
        add(&xs, 3, 2, "org.xenplug.agent.v1", "socket", "/run/c3.sock");
        add(&xs, 4, 1, "org.xenplug.agent.v1", "pty", "");
        let mut inv = Inventory::new();
        let ch = rescan_all(&xs, ROOT, &names(), &mut inv);
        assert_eq!(ch.len(), 2, "{ch:?}");
        match &ch[0] {
            Change::Up(i) => {
                assert_eq!((i.domid, i.devid), (3, 2));
                assert_eq!(i.path, PathBuf::from("/run/c3.sock"));
                assert_eq!(i.vm_name.as_deref(), Some("vm3"));
                assert_eq!(i.vm_uuid.as_deref(), Some(UUID));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&ch[1], Change::Rejected((4, 1), e) if e.contains("pty")));
        // Nothing changed: no changes.
        assert!(rescan_all(&xs, ROOT, &names(), &mut inv).is_empty());
    }

    #[test]
    fn reboot_and_removal() {
        let xs = MemStore::new();
        add(&xs, 5, 1, "org.xenplug.agent.v1", "socket", "/run/c.sock");
        let mut inv = Inventory::new();
        assert_eq!(rescan_all(&xs, ROOT, &names(), &mut inv).len(), 1);
        // Reboot: domain 5 goes, domain 6 comes with the same socket path.
        xs.rm(&format!("{ROOT}/5")).unwrap();
        add(&xs, 6, 1, "org.xenplug.agent.v1", "socket", "/run/c.sock");
        let ch = rescan_all(&xs, ROOT, &names(), &mut inv);
        assert_eq!(ch[0], Change::Down((5, 1)));
        assert!(matches!(&ch[1], Change::Up(i) if i.domid == 6));
        // Closing backend counts as gone.
        xs.write(&format!("{ROOT}/6/1/state"), "5").unwrap();
        assert_eq!(
            inv.update_domain(6, scan_domain(&xs, ROOT, 6, &names())),
            vec![Change::Down((6, 1))]
        );
    }

    #[test]
    fn path_change_is_down_then_up() {
        let xs = MemStore::new();
        add(&xs, 7, 1, "org.xenplug.agent.v1", "socket", "/run/a.sock");
        let mut inv = Inventory::new();
        rescan_all(&xs, ROOT, &names(), &mut inv);
        xs.write(&format!("{ROOT}/7/1/path"), "/run/b.sock")
            .unwrap();
        let ch = inv.update_domain(7, scan_domain(&xs, ROOT, 7, &names()));
        assert_eq!(ch[0], Change::Down((7, 1)));
        assert!(matches!(&ch[1], Change::Up(i) if i.path == std::path::Path::new("/run/b.sock")));
    }

    #[test]
    fn bad_paths_are_rejected() {
        let xs = MemStore::new();
        let long = format!("/{}", "x".repeat(200));
        add(&xs, 8, 1, "org.xenplug.agent.v1", "socket", "relative.sock");
        add(&xs, 9, 1, "org.xenplug.agent.v1", "socket", &long);
        add(
            &xs,
            10,
            1,
            "org.xenplug.agent.v1",
            "socket",
            "/run/../etc/x",
        );
        let mut inv = Inventory::new();
        let ch = rescan_all(&xs, ROOT, &names(), &mut inv);
        assert_eq!(ch.len(), 3);
        assert!(
            ch.iter().all(|c| matches!(c, Change::Rejected(..))),
            "{ch:?}"
        );
    }

    #[test]
    fn event_paths() {
        assert_eq!(parse_event_path(ROOT, ROOT), None);
        assert_eq!(
            parse_event_path(ROOT, &format!("{ROOT}/12/3/path")),
            Some((12, Some(3)))
        );
        assert_eq!(
            parse_event_path(ROOT, &format!("{ROOT}/12")),
            Some((12, None))
        );
        assert_eq!(parse_event_path(ROOT, "@releaseDomain"), None);
        assert_eq!(check_uuid("not-a-uuid"), None);
        assert_eq!(check_uuid(&UUID.to_uppercase()).as_deref(), Some(UUID));
    }

    /// Run `watch_loop` against the embedded xenstored on a thread; changes come out of the
    /// returned receiver.
    fn spawn_loop(
        d: &xenplug_xenstored::testing::TestDaemon,
        stop: &Arc<AtomicBool>,
    ) -> (
        std::sync::mpsc::Receiver<Vec<Change>>,
        std::thread::JoinHandle<()>,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = stop.clone();
        let sock = d.socket().to_path_buf();
        let t = std::thread::spawn(move || {
            let xs = XsClient::open_socket(&sock).unwrap();
            let mut pool: Vec<XsClient> = (0..2)
                .map(|_| XsClient::open_socket(&sock).unwrap())
                .collect();
            let names = names();
            let w = Watch {
                root: ROOT,
                names: &names,
                stop: &stop,
                tick: Duration::from_millis(50),
                alive: &|| true,
                scanned: &|_, _| {},
            };
            watch_loop(&xs, &mut pool, &w, |c| tx.send(c).is_ok()).unwrap();
        });
        (rx, t)
    }

    /// Every change until `until` holds for one of them (5 s at most).
    fn changes_until(
        rx: &std::sync::mpsc::Receiver<Vec<Change>>,
        until: impl Fn(&Change) -> bool,
    ) -> Vec<Change> {
        let mut seen = Vec::new();
        while !seen.iter().any(&until) {
            seen.extend(
                rx.recv_timeout(Duration::from_secs(5))
                    .unwrap_or_else(|_| panic!("no change to wait for; seen {seen:?}")),
            );
        }
        seen
    }

    #[test]
    fn a_released_domain_goes_down_before_its_nodes_do() {
        let d = xenplug_xenstored::testing::spawn_daemon();
        let admin = d.client();
        let mem = d.store();
        // Domains 1 and 2 as libxl makes them: introduced, then their channels added. Domain 3
        // is never introduced (a simulated toolstack): a release concerns it not.
        for dom in [1, 2] {
            mem.introduce_domain(dom).unwrap();
        }
        for dom in [1, 2, 3] {
            add(
                &mem,
                dom,
                1,
                "org.xenplug.agent.v1",
                "socket",
                &format!("/run/c{dom}.sock"),
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (rx, t) = spawn_loop(&d, &stop);
        let seen = changes_until(&rx, |c| matches!(c, Change::Up(i) if i.domid == 3));
        assert_eq!(
            seen.iter().filter(|c| matches!(c, Change::Up(_))).count(),
            3,
            "{seen:?}"
        );
        // Domain 2 is announced as a new VM after the scan (tracked from its Up, too).
        admin.rm(&format!("{ROOT}/2")).unwrap();
        changes_until(&rx, |c| *c == Change::Down((2, 1)));
        add(&mem, 2, 1, "org.xenplug.agent.v1", "socket", "/run/c2.sock");
        changes_until(&rx, |c| matches!(c, Change::Up(i) if i.domid == 2));

        // Domain 1 dies; its backend nodes stay (the toolstack has not cleaned up, or died).
        admin.release_domain(1).unwrap();
        let seen = changes_until(&rx, |c| *c == Change::Down((1, 1)));
        assert_eq!(seen, vec![Change::Down((1, 1))]);
        // A leftover node changing does not bring it back; a new VM still comes up.
        mem.write(&format!("{ROOT}/1/1/state"), "4").unwrap();
        add(&mem, 4, 1, "org.xenplug.agent.v1", "socket", "/run/c4.sock");
        let seen = changes_until(&rx, |c| matches!(c, Change::Up(i) if i.domid == 4));
        assert!(
            !seen
                .iter()
                .any(|c| matches!(c, Change::Up(i) if i.domid == 1)),
            "{seen:?}"
        );
        // Domain 2 dies too: only it goes (3 was never introduced, 4 neither).
        admin.release_domain(2).unwrap();
        let seen = changes_until(&rx, |c| *c == Change::Down((2, 1)));
        assert_eq!(seen, vec![Change::Down((2, 1))]);
        // The toolstack removes domain 1's nodes; later the domid is used again.
        admin.rm(&format!("{ROOT}/1")).unwrap();
        mem.introduce_domain(1).unwrap();
        add(
            &mem,
            1,
            1,
            "org.xenplug.agent.v1",
            "socket",
            "/run/c1-new.sock",
        );
        let seen = changes_until(&rx, |c| matches!(c, Change::Up(i) if i.domid == 1));
        assert!(
            seen.iter().any(
                |c| matches!(c, Change::Up(i) if i.path == std::path::Path::new("/run/c1-new.sock"))
            ),
            "{seen:?}"
        );
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }

    #[test]
    fn watch_loop_against_a_real_daemon() {
        let d = xenplug_xenstored::testing::spawn_daemon();
        let admin = d.client();
        let mem = d.store();
        add(
            &mem,
            1,
            1,
            "org.xenplug.agent.v1",
            "socket",
            "/run/pre.sock",
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let t = {
            let stop = stop.clone();
            let sock = d.socket().to_path_buf();
            std::thread::spawn(move || {
                let xs = xenplug_xenstore::XsClient::open_socket(&sock).unwrap();
                let mut pool: Vec<xenplug_xenstore::XsClient> = (0..2)
                    .map(|_| xenplug_xenstore::XsClient::open_socket(&sock).unwrap())
                    .collect();
                let names = names();
                let w = Watch {
                    root: ROOT,
                    names: &names,
                    stop: &stop,
                    tick: Duration::from_millis(50),
                    alive: &|| true,
                    scanned: &|_, _| {},
                };
                watch_loop(&xs, &mut pool, &w, |c| tx.send(c).is_ok()).unwrap();
            })
        };
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            matches!(&first[..], [Change::Up(i)] if i.domid == 1),
            "{first:?}"
        );
        add(
            &mem,
            2,
            1,
            "org.xenplug.agent.v1",
            "socket",
            "/run/new.sock",
        );
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|c| matches!(c, Change::Up(i) if i.domid == 2))
        {
            seen.extend(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        admin.rm(&format!("{ROOT}/1")).unwrap();
        let mut seen = Vec::new();
        while !seen.contains(&Change::Down((1, 1))) {
            seen.extend(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
