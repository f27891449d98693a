//! The guest's state made visible to dom0: in xenstore, where Xen Orchestra and xapi read it
//! (the keys xe-guest-utilities and Vates' xen-guest-agent write), and to a subscribed dom0 peer
//! as `xenplug-guest-state` events on the channel.
//!
//! **What.** [`collect`] gathers a [`GuestState`]: os-release (`PRETTY_NAME`, `ID`,
//! `VERSION_ID`), `uname -r`, the host name, `MemTotal`/`MemAvailable`, and every interface with
//! its addresses through rtnetlink ([`NetOps`]); an interface whose MAC is the `mac` of a
//! `device/vif/<devid>` in xenstore is that vif.
//!
//! **Xenstore keys** (relative to the domain's home, written in one transaction, only what
//! changed, stale keys removed):
//!
//! | key | value |
//! |---|---|
//! | `data/os_name`, `data/os_distro`, `data/os_majorver`, `data/os_minorver`, `data/os_uname` | from os-release and uname |
//! | `data/meminfo_total`, `data/meminfo_free` | KiB |
//! | `attr/vif/<devid>/ipv4/<n>`, `attr/vif/<devid>/ipv6/<n>` | one address per slot; an address keeps its slot while it exists, a new one takes the lowest free slot |
//! | `attr/PVAddons/{Installed,MajorVersion,MinorVersion,MicroVersion,BuildVersion}` | that a guest agent is present, and its version |
//! | `data/updated` | bumped after every batch (what xapi watches) |
//!
//! **When.** At start, on every rtnetlink link or address event (no polling of the network),
//! but at most once per [`PublisherConfig::min_interval`] (a burst of events makes one
//! update), and every [`PublisherConfig::refresh`] for the memory figures.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use xenplug_channel::qga::{GuestInterface, GuestState};
use xenplug_xenstore::{XenStore, XsOps};

use crate::cmd::sys;
use crate::log;
use crate::net::{NetOps, Netlink};

/// How many addresses per family and vif get a slot.
pub const MAX_SLOTS: usize = 32;

// ---- the hub: latest state, and the channels that want it --------------------------------

/// Wakes one subscribed session (a pipe it polls).
#[derive(Debug)]
pub struct Waker {
    read: OwnedFd,
    write: OwnedFd,
}

impl Waker {
    fn new() -> std::io::Result<Waker> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        Ok(Waker { read, write })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Empty the pipe (after a wake-up).
    pub fn drain(&self) {
        let mut b = [0u8; 64];
        while matches!(nix::unistd::read(&self.read, &mut b), Ok(n) if n > 0) {}
    }

    fn wake(&self) {
        // A full pipe already means "wake up".
        let _ = nix::unistd::write(&self.write, &[1]);
    }
}

#[derive(Debug, Default)]
struct HubInner {
    seq: u64,
    latest: Option<GuestState>,
    wakers: Vec<Weak<Waker>>,
}

/// The latest guest state and the sessions to wake when it changes.
#[derive(Debug, Default)]
pub struct StateHub {
    inner: Mutex<HubInner>,
}

impl StateHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store `st`; when it differs from the latest, bump the sequence and wake every session.
    /// Returns whether it changed.
    pub fn publish(&self, st: GuestState) -> bool {
        let mut g = self.lock();
        if g.latest.as_ref() == Some(&st) {
            return false;
        }
        g.seq += 1;
        g.latest = Some(st);
        g.wakers.retain(|w| match w.upgrade() {
            Some(w) => {
                w.wake();
                true
            }
            None => false,
        });
        true
    }

    /// The latest state and its sequence number.
    pub fn latest(&self) -> Option<(u64, GuestState)> {
        let g = self.lock();
        g.latest.clone().map(|s| (g.seq, s))
    }

    /// The latest state, or one collected now (no publisher running yet).
    pub fn current_or_collect(&self, root: &Path) -> GuestState {
        if let Some((_, s)) = self.latest() {
            return s;
        }
        let mut st = collect(root, Path::new("/proc"));
        if let Ok(mut nl) = Netlink::open() {
            st.interfaces = interfaces(&mut nl, &BTreeMap::new()).unwrap_or_default();
        }
        st
    }

    /// A waker for one session, woken on every change while it is alive.
    pub fn register(&self) -> std::io::Result<Arc<Waker>> {
        let w = Arc::new(Waker::new()?);
        self.lock().wakers.push(Arc::downgrade(&w));
        Ok(w)
    }
}

// ---- collection -----------------------------------------------------------------------------

fn meminfo(proc: &Path) -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string(proc.join("meminfo")).unwrap_or_default();
    let field = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    (
        field("MemTotal:"),
        field("MemAvailable:").or_else(|| field("MemFree:")),
    )
}

/// Everything but the interfaces.
pub fn collect(root: &Path, proc: &Path) -> GuestState {
    let r = sys::os_release(root);
    let version = r.get("VERSION_ID").cloned().unwrap_or_default();
    let mut parts = version.split('.').filter(|p| !p.is_empty());
    let (total, free) = meminfo(proc);
    GuestState {
        os_name: r.get("PRETTY_NAME").or_else(|| r.get("NAME")).cloned(),
        os_distro: r.get("ID").cloned(),
        os_majorver: parts.next().map(str::to_string),
        os_minorver: parts.next().map(str::to_string),
        os_uname: nix::sys::utsname::uname()
            .ok()
            .map(|u| u.release().to_string_lossy().into_owned()),
        hostname: nix::unistd::gethostname()
            .ok()
            .map(|h| h.to_string_lossy().into_owned()),
        meminfo_total: total,
        meminfo_free: free,
        interfaces: Vec::new(),
    }
}

/// Every non-loopback interface with its addresses; `vifs` maps a MAC (lower case) to its vif.
pub fn interfaces(
    net: &mut dyn NetOps,
    vifs: &BTreeMap<String, u32>,
) -> anyhow::Result<Vec<GuestInterface>> {
    let links = net.links()?;
    let addrs = net.addresses()?;
    Ok(links
        .into_iter()
        .filter(|l| !l.loopback)
        .map(|l| {
            let mac = l.mac.map(|m| {
                xenplug_channel::config::MacAddr(m)
                    .to_string()
                    .to_ascii_lowercase()
            });
            let mut ipv4 = Vec::new();
            let mut ipv6 = Vec::new();
            for a in addrs.iter().filter(|a| a.index == l.index) {
                match a.addr {
                    IpAddr::V4(_) => ipv4.push(a.addr.to_string()),
                    IpAddr::V6(_) => ipv6.push(a.addr.to_string()),
                }
            }
            GuestInterface {
                vif: mac.as_ref().and_then(|m| vifs.get(m).copied()),
                name: l.name,
                mac,
                ipv4,
                ipv6,
            }
        })
        .collect())
}

/// The guest's vifs from xenstore: MAC (lower case) → devid.
pub fn vif_macs(xs: &dyn XsOps) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(ids) = xs.directory("device/vif") else {
        return out;
    };
    for id in ids {
        let Ok(devid) = id.parse::<u32>() else {
            continue;
        };
        if let Ok(Some(mac)) = xs.read(&format!("device/vif/{id}/mac")) {
            out.insert(mac.trim().to_ascii_lowercase(), devid);
        }
    }
    out
}

// ---- xenstore -------------------------------------------------------------------------------

/// Stable address slots of one vif and family.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Slots(Vec<Option<String>>);

impl Slots {
    /// Keep present addresses in their slots, put new ones in the lowest free slots.
    pub fn update(&mut self, addrs: &[String]) {
        let want: BTreeSet<&String> = addrs.iter().collect();
        for s in self.0.iter_mut() {
            if s.as_ref().is_some_and(|a| !want.contains(a)) {
                *s = None;
            }
        }
        for a in addrs {
            if self.0.iter().any(|s| s.as_ref() == Some(a)) {
                continue;
            }
            match self.0.iter().position(Option::is_none) {
                Some(i) => self.0[i] = Some(a.clone()),
                None if self.0.len() < MAX_SLOTS => self.0.push(Some(a.clone())),
                None => {}
            }
        }
        while self.0.last().is_some_and(Option::is_none) {
            self.0.pop();
        }
    }

    /// `(slot, address)` pairs.
    pub fn entries(&self) -> impl Iterator<Item = (usize, &String)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|a| (i, a)))
    }
}

/// Turns states into xenstore writes, remembering what it wrote.
#[derive(Debug, Default)]
pub struct XenstoreSink {
    slots: BTreeMap<(u32, u8), Slots>,
    written: BTreeMap<String, String>,
    batches: u64,
}

impl XenstoreSink {
    /// The keys and values `st` stands for (slots updated).
    pub fn keys(&mut self, st: &GuestState) -> BTreeMap<String, String> {
        let mut k = BTreeMap::new();
        let mut put = |key: &str, v: &Option<String>| {
            if let Some(v) = v {
                k.insert(key.to_string(), v.clone());
            }
        };
        put("data/os_name", &st.os_name);
        put("data/os_distro", &st.os_distro);
        put("data/os_majorver", &st.os_majorver);
        put("data/os_minorver", &st.os_minorver);
        put("data/os_uname", &st.os_uname);
        put(
            "data/meminfo_total",
            &st.meminfo_total.map(|v| v.to_string()),
        );
        put("data/meminfo_free", &st.meminfo_free.map(|v| v.to_string()));
        let ver: Vec<&str> = env!("CARGO_PKG_VERSION").split('.').collect();
        k.insert("attr/PVAddons/Installed".into(), "1".into());
        k.insert("attr/PVAddons/MajorVersion".into(), ver[0].into());
        k.insert(
            "attr/PVAddons/MinorVersion".into(),
            ver.get(1).unwrap_or(&"0").to_string(),
        );
        k.insert(
            "attr/PVAddons/MicroVersion".into(),
            ver.get(2).unwrap_or(&"0").to_string(),
        );
        k.insert("attr/PVAddons/BuildVersion".into(), "xenplug-agent".into());
        let mut seen = BTreeSet::new();
        for i in &st.interfaces {
            let Some(devid) = i.vif else { continue };
            for (fam, addrs) in [(4u8, &i.ipv4), (6u8, &i.ipv6)] {
                seen.insert((devid, fam));
                let s = self.slots.entry((devid, fam)).or_default();
                s.update(addrs);
                for (n, a) in s.entries() {
                    k.insert(format!("attr/vif/{devid}/ipv{fam}/{n}"), a.clone());
                }
            }
        }
        self.slots.retain(|key, _| seen.contains(key));
        k
    }

    /// Write what changed since the last call (one transaction), remove what went away, bump
    /// `data/updated`. Returns whether anything was written.
    pub fn publish(
        &mut self,
        xs: &dyn XenStore,
        st: &GuestState,
    ) -> xenplug_xenstore::Result<bool> {
        let keys = self.keys(st);
        let changed: Vec<(&String, &String)> = keys
            .iter()
            .filter(|(k, v)| self.written.get(*k) != Some(*v))
            .collect();
        let gone: Vec<&String> = self
            .written
            .keys()
            .filter(|k| !keys.contains_key(*k))
            .collect();
        if changed.is_empty() && gone.is_empty() {
            return Ok(false);
        }
        let batch = self.batches + 1;
        xenplug_xenstore::transact(xs, xenplug_xenstore::DEFAULT_TRANSACTION_ATTEMPTS, |tx| {
            for k in &gone {
                tx.rm(k)?;
            }
            for (k, v) in &changed {
                tx.write(k, v)?;
            }
            tx.write("data/updated", &batch.to_string())
        })?;
        self.batches = batch;
        self.written = keys;
        Ok(true)
    }
}

// ---- the publisher thread -------------------------------------------------------------------

/// What the publisher does.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Files (os-release) under this root.
    pub root: PathBuf,
    /// `/proc`.
    pub proc: PathBuf,
    /// Write xenstore (false: only the hub, for channel subscribers).
    pub xenstore: bool,
    /// At most one update per this interval.
    pub min_interval: Duration,
    /// Memory figures are refreshed this often.
    pub refresh: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            root: "/".into(),
            proc: "/proc".into(),
            xenstore: true,
            min_interval: Duration::from_secs(1),
            refresh: Duration::from_secs(60),
        }
    }
}

/// An rtnetlink socket subscribed to link and address changes (the publisher's trigger).
fn event_socket() -> nix::Result<OwnedFd> {
    use nix::sys::socket::{
        bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
    };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkRoute,
    )?;
    let groups = (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &NetlinkAddr::new(0, groups),
    )?;
    Ok(fd)
}

/// Drain the event socket; true if anything was there (an overrun counts as an event).
fn drain(fd: &OwnedFd) -> bool {
    let mut any = false;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return any,
            Ok(_) => any = true,
            Err(nix::errno::Errno::EAGAIN) => return any,
            Err(nix::errno::Errno::ENOBUFS) => any = true,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return any,
        }
    }
}

/// Run until `stop`: collect, publish to the hub (and xenstore), wait for the next change.
pub fn run(cfg: PublisherConfig, hub: Arc<StateHub>, stop: &AtomicBool) {
    let events = match event_socket() {
        Ok(fd) => Some(fd),
        Err(e) => {
            log::event("publisher-no-events", &[("error", e.desc())]);
            None
        }
    };
    let mut xs_sink = XenstoreSink::default();
    // xenstore is read (which MAC is which vif) whenever it can be reached, and written only
    // when publishing there is on.
    let xs = match xenplug_xenstore::XsClient::open() {
        Ok(c) => Some(c),
        Err(e) => {
            if cfg.xenstore {
                log::event("publisher-no-xenstore", &[("error", &e.to_string())]);
            }
            None
        }
    };
    let mut last = Instant::now() - cfg.min_interval;
    let mut dirty = true;
    let mut next_refresh = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if dirty && now >= last + cfg.min_interval || now >= next_refresh {
            let vifs = xs.as_ref().map(|x| vif_macs(x)).unwrap_or_default();
            let mut st = collect(&cfg.root, &cfg.proc);
            match Netlink::open()
                .map_err(anyhow::Error::from)
                .and_then(|mut nl| interfaces(&mut nl, &vifs))
            {
                Ok(i) => st.interfaces = i,
                Err(e) => log::event("publisher-netlink", &[("error", &format!("{e:#}"))]),
            }
            if cfg.xenstore && !log::holding() {
                if let Some(x) = &xs {
                    if let Err(e) = xs_sink.publish(x, &st) {
                        log::event("publisher-xenstore", &[("error", &e.to_string())]);
                    }
                }
            }
            hub.publish(st);
            last = Instant::now();
            next_refresh = last + cfg.refresh;
            dirty = false;
        }
        let wake_at = if dirty {
            (last + cfg.min_interval).min(next_refresh)
        } else {
            next_refresh
        };
        // Wake at least every half second to notice `stop`.
        let wait = wake_at
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(500));
        let ms = PollTimeout::from(wait.as_millis().min(60_000) as u16);
        match &events {
            Some(fd) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                if matches!(poll(&mut fds, ms), Ok(n) if n > 0) && drain(fd) {
                    dirty = true;
                }
            }
            None => std::thread::sleep(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable() {
        let mut s = Slots::default();
        let v = |x: &[&str]| x.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        s.update(&v(&["a", "b", "c"]));
        s.update(&v(&["a", "c", "d"]));
        let e: Vec<(usize, String)> = s.entries().map(|(i, a)| (i, a.clone())).collect();
        assert_eq!(e, vec![(0, "a".into()), (1, "d".into()), (2, "c".into())]);
        s.update(&v(&["a"]));
        assert_eq!(s.entries().count(), 1);
    }

    #[test]
    fn keys_for_a_state() {
        let mut sink = XenstoreSink::default();
        let st = GuestState {
            os_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            os_distro: Some("debian".into()),
            os_majorver: Some("12".into()),
            meminfo_total: Some(1000),
            interfaces: vec![
                GuestInterface {
                    name: "eth0".into(),
                    mac: Some("00:16:3e:00:00:01".into()),
                    vif: Some(0),
                    ipv4: vec!["192.0.2.5".into()],
                    ipv6: vec!["2001:db8::5".into(), "fe80::1".into()],
                },
                GuestInterface {
                    name: "dummy0".into(),
                    ipv4: vec!["198.51.100.1".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let k = sink.keys(&st);
        assert_eq!(k["data/os_name"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(k["attr/vif/0/ipv4/0"], "192.0.2.5");
        assert_eq!(k["attr/vif/0/ipv6/1"], "fe80::1");
        assert!(!k.keys().any(|k| k.contains("198.51.100.1")));
        assert!(!k.contains_key("data/os_minorver"));
    }
}
