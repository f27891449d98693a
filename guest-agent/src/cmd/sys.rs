//! What the guest reports about itself and the few things it changes: vCPUs and memory blocks
//! (sysfs), CPU and disk statistics, load, routes (procfs), logged-in users (utmp), time zone,
//! OS identity, suspend and set-time. Each follows qemu-ga's reading of the same kernel files,
//! so both agents answer alike on one system; `/proc` and `/sys` are injected for tests.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use xenplug_channel::qga::{
    CpuStats, DiskStats, DiskStatsInfo, LoadAverage, LogicalProcessor, MemoryBlock,
    MemoryBlockInfo, MemoryBlockResponse, NetworkRoute, OsInfo, Timezone, User,
};
use xenplug_channel::ErrorBody;

use super::io_desc as desc;

// ---- vCPUs --------------------------------------------------------------------------------

/// `guest-get-vcpus`: every `cpuN` of `<sys>/devices/system/cpu`. A CPU without an `online`
/// file (usually cpu0) is online and cannot be taken offline.
pub fn vcpus(sys: &Path) -> Result<Vec<LogicalProcessor>, ErrorBody> {
    let dir = sys.join("devices/system/cpu");
    let rd = fs::read_dir(&dir).map_err(|e| {
        ErrorBody::generic(format!(
            "failed to list entries: {}: {}",
            dir.display(),
            desc(&e)
        ))
    })?;
    let mut ids: Vec<i64> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("cpu")?.parse().ok())
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        let (online, can_offline) = match fs::read(dir.join(format!("cpu{id}/online"))) {
            Ok(b) => (b.first().is_some_and(|c| *c != b'0'), true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (true, false),
            Err(e) => {
                return Err(ErrorBody::generic(format!(
                    "open(\"{}/cpu{id}/online\"): {}",
                    dir.display(),
                    desc(&e)
                )))
            }
        };
        out.push(LogicalProcessor {
            logical_id: id,
            online,
            can_offline: Some(can_offline),
        });
    }
    Ok(out)
}

fn set_vcpu(sys: &Path, v: &LogicalProcessor) -> Result<(), ErrorBody> {
    let dir = sys.join(format!("devices/system/cpu/cpu{}/", v.logical_id));
    if !dir.is_dir() {
        return Err(ErrorBody::generic(format!(
            "open(\"{}\"): No such file or directory",
            dir.display()
        )));
    }
    let file = dir.join("online");
    let mut f = match fs::OpenOptions::new().read(true).write(true).open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if v.online {
                Ok(())
            } else {
                Err(ErrorBody::generic(format!(
                    "logical processor #{} can't be offlined",
                    v.logical_id
                )))
            };
        }
        Err(e) => {
            return Err(ErrorBody::generic(format!(
                "open(\"{}\"): {}",
                file.display(),
                desc(&e)
            )))
        }
    };
    let mut cur = [0u8; 1];
    f.read_exact(&mut cur)
        .map_err(|e| ErrorBody::generic(format!("pread(\"{}\"): {}", file.display(), desc(&e))))?;
    if (cur[0] != b'0') != v.online {
        f.rewind()
            .and_then(|_| f.write_all(if v.online { b"1" } else { b"0" }))
            .map_err(|e| {
                ErrorBody::generic(format!("pwrite(\"{}\"): {}", file.display(), desc(&e)))
            })?;
        crate::log::event(
            "vcpu",
            &[
                ("cpu", &v.logical_id.to_string()),
                ("online", &v.online.to_string()),
            ],
        );
    }
    Ok(())
}

/// `guest-set-vcpus`: in order, as far as it goes; an error on the first is the reply.
pub fn set_vcpus(sys: &Path, vcpus: &[LogicalProcessor]) -> Result<i64, ErrorBody> {
    let mut done = 0;
    for v in vcpus {
        match set_vcpu(sys, v) {
            Ok(()) => done += 1,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

// ---- memory blocks ------------------------------------------------------------------------

fn memory_dir(sys: &Path) -> PathBuf {
    sys.join("devices/system/memory")
}

/// `guest-get-memory-blocks`.
pub fn memory_blocks(sys: &Path) -> Result<Vec<MemoryBlock>, ErrorBody> {
    let dir = memory_dir(sys);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ErrorBody::generic(format!(
                "Can't open directory\"{}/\": {}",
                dir.display(),
                desc(&e)
            )))
        }
    };
    let mut ids: Vec<u64> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("memory")?.parse().ok())
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        let b = dir.join(format!("memory{id}"));
        let (online, can_offline) = match fs::read_to_string(b.join("state")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (true, false),
            Err(e) => {
                return Err(ErrorBody::generic(format!(
                    "open sysfs file \"state\": {}",
                    desc(&e)
                )))
            }
            Ok(s) => (
                s.starts_with("online"),
                fs::read(b.join("removable"))
                    .map(|r| r.first().is_some_and(|c| *c != b'0'))
                    .unwrap_or(false),
            ),
        };
        out.push(MemoryBlock {
            phys_index: id,
            online,
            can_offline: Some(can_offline),
        });
    }
    if out.is_empty() {
        return Err(ErrorBody::generic("guest reported zero memory blocks!"));
    }
    Ok(out)
}

/// `guest-set-memory-blocks`: one response per request, in order.
pub fn set_memory_blocks(sys: &Path, blocks: &[MemoryBlock]) -> Vec<MemoryBlockResponse> {
    let dir = memory_dir(sys);
    blocks
        .iter()
        .map(|m| {
            let resp = |r: &str, code: Option<i32>| MemoryBlockResponse {
                phys_index: m.phys_index,
                response: r.to_string(),
                error_code: code.map(i64::from),
            };
            if !dir.is_dir() {
                return resp("operation-not-supported", Some(libc::ENOENT));
            }
            let b = dir.join(format!("memory{}", m.phys_index));
            if !b.is_dir() {
                return resp("not-found", Some(libc::ENOENT));
            }
            let cur = match fs::read_to_string(b.join("state")) {
                Ok(s) => s.starts_with("online"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return if m.online {
                        resp("success", None)
                    } else {
                        resp("operation-not-supported", Some(libc::ENOENT))
                    }
                }
                Err(e) => return resp("operation-failed", e.raw_os_error()),
            };
            if cur != m.online {
                let want = if m.online { "online" } else { "offline" };
                if let Err(e) = fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(b.join("state"))
                    .and_then(|mut f| f.write_all(want.as_bytes()))
                {
                    return resp("operation-failed", e.raw_os_error());
                }
                crate::log::event(
                    "memory-block",
                    &[("block", &m.phys_index.to_string()), ("state", want)],
                );
            }
            resp("success", None)
        })
        .collect()
}

/// `guest-get-memory-block-info`.
pub fn memory_block_info(sys: &Path) -> Result<MemoryBlockInfo, ErrorBody> {
    let p = memory_dir(sys).join("block_size_bytes");
    let s = fs::read_to_string(&p).map_err(|e| {
        ErrorBody::generic(format!(
            "open sysfs file \"block_size_bytes\": {}",
            desc(&e)
        ))
    })?;
    let size = u64::from_str_radix(s.trim(), 16).unwrap_or(0);
    Ok(MemoryBlockInfo { size })
}

// ---- statistics ---------------------------------------------------------------------------

/// `guest-get-cpustats` from `<proc>/stat`: per CPU, in milliseconds.
pub fn cpustats(proc: &Path) -> Result<Vec<CpuStats>, ErrorBody> {
    let p = proc.join("stat");
    let text = fs::read_to_string(&p)
        .map_err(|e| ErrorBody::generic(format!("open(\"{}\"): {}", p.display(), desc(&e))))?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ms = |t: u64| t * 1000 / hz;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(cpu) = name.strip_prefix("cpu").filter(|n| !n.is_empty()) else {
            continue;
        };
        let Ok(cpu) = cpu.parse::<i64>() else {
            continue;
        };
        let v: Vec<u64> = it.map_while(|x| x.parse().ok()).take(10).collect();
        if v.len() < 4 {
            break;
        }
        let at = |i: usize| v.get(i).copied().map(ms);
        out.push(CpuStats {
            kind: "linux".into(),
            cpu,
            user: ms(v[0]),
            nice: ms(v[1]),
            system: ms(v[2]),
            idle: ms(v[3]),
            iowait: at(4),
            irq: at(5).filter(|_| v.len() > 5),
            softirq: at(6).filter(|_| v.len() > 5),
            steal: at(7).filter(|_| v.len() > 7),
            guest: at(8),
            guestnice: at(9),
        });
    }
    Ok(out)
}

/// `guest-get-diskstats` from `<proc>/diskstats`.
pub fn diskstats(proc: &Path) -> Result<Vec<DiskStatsInfo>, ErrorBody> {
    let p = proc.join("diskstats");
    let text = fs::read_to_string(&p)
        .map_err(|e| ErrorBody::generic(format!("open(\"{}\"): {}", p.display(), desc(&e))))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 7 {
            continue;
        }
        let (Ok(major), Ok(minor)) = (f[0].parse::<u64>(), f[1].parse::<u64>()) else {
            continue;
        };
        let n: Vec<u64> = f[3..].iter().map_while(|x| x.parse().ok()).collect();
        let at = |i: usize| n.get(i).copied();
        let mut s = DiskStats::default();
        if n.len() == 4 {
            // Old partition lines: reads, sectors read, writes, sectors written.
            s.read_ios = at(0);
            s.read_sectors = at(1);
            s.write_ios = at(2);
            s.write_sectors = at(3);
        }
        if n.len() >= 11 {
            s.read_ios = at(0);
            s.read_merges = at(1);
            s.read_sectors = at(2);
            s.read_ticks = at(3);
            s.write_ios = at(4);
            s.write_merges = at(5);
            s.write_sectors = at(6);
            s.write_ticks = at(7);
            s.ios_pgr = at(8);
            s.total_ticks = at(9);
            s.weight_ticks = at(10);
        }
        if n.len() >= 15 {
            s.discard_ios = at(11);
            s.discard_merges = at(12);
            s.discard_sectors = at(13);
            s.discard_ticks = at(14);
        }
        if n.len() >= 17 {
            s.flush_ios = at(15);
            s.flush_ticks = at(16);
        }
        out.push(DiskStatsInfo {
            name: f[2].to_string(),
            major,
            minor,
            stats: s,
        });
    }
    Ok(out)
}

/// `guest-get-load` from `<proc>/loadavg`.
pub fn load(proc: &Path) -> Result<LoadAverage, ErrorBody> {
    let p = proc.join("loadavg");
    let text = fs::read_to_string(&p)
        .map_err(|e| ErrorBody::generic(format!("open(\"{}\"): {}", p.display(), desc(&e))))?;
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() != 3 {
        return Err(ErrorBody::generic(format!("cannot parse {}", p.display())));
    }
    Ok(LoadAverage {
        load1m: v[0],
        load5m: v[1],
        load15m: v[2],
    })
}

fn hex_v4(h: &str) -> Option<String> {
    // /proc/net/route prints the address as a host-order (little-endian) hex word.
    let v = u32::from_str_radix(h, 16).ok()?;
    Some(Ipv4Addr::from(v.swap_bytes()).to_string())
}

fn hex_v6(h: &str) -> Option<String> {
    let v = u128::from_str_radix(h, 16).ok()?;
    Some(Ipv6Addr::from(v).to_string())
}

/// `guest-network-get-route` from `<proc>/net/route` and `<proc>/net/ipv6_route`.
pub fn routes(proc: &Path) -> Result<Vec<NetworkRoute>, ErrorBody> {
    let mut out = Vec::new();
    let v4 = proc.join("net/route");
    let text = fs::read_to_string(&v4)
        .map_err(|e| ErrorBody::generic(format!("open(\"{}\"): {}", v4.display(), desc(&e))))?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 11 {
            continue;
        }
        let int = |i: usize| f[i].parse::<i64>().ok();
        let (Some(dst), Some(gw), Some(mask), Ok(flags)) = (
            hex_v4(f[1]),
            hex_v4(f[2]),
            hex_v4(f[7]),
            u64::from_str_radix(f[3], 16),
        ) else {
            continue;
        };
        out.push(NetworkRoute {
            iface: f[0].to_string(),
            destination: dst,
            metric: int(6).unwrap_or(0),
            gateway: Some(gw),
            mask: Some(mask),
            irtt: int(10),
            flags: Some(flags),
            refcnt: int(4),
            use_: int(5),
            window: int(9),
            mtu: int(8),
            desprefixlen: None,
            source: None,
            srcprefixlen: None,
            nexthop: None,
            version: 4,
        });
    }
    if let Ok(text) = fs::read_to_string(proc.join("net/ipv6_route")) {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let hex = |i: usize| i64::from_str_radix(f[i], 16).ok();
            let (Some(dst), Some(src), Some(nh)) = (hex_v6(f[0]), hex_v6(f[2]), hex_v6(f[4]))
            else {
                continue;
            };
            out.push(NetworkRoute {
                iface: f[9].to_string(),
                destination: dst,
                metric: hex(5).unwrap_or(0) as i32 as i64,
                gateway: None,
                mask: None,
                irtt: None,
                flags: hex(8).map(|x| x as u64),
                refcnt: hex(6),
                use_: hex(7),
                window: None,
                mtu: None,
                desprefixlen: hex(1).map(|x| x.to_string()),
                source: Some(src),
                srcprefixlen: hex(3).map(|x| x.to_string()),
                nexthop: Some(nh),
                version: 6,
            });
        }
    }
    Ok(out)
}

// ---- users, time zone, OS -----------------------------------------------------------------

/// `guest-get-users`: the `USER_PROCESS` entries of the utmp file at `utmp`, one per user with
/// the earliest login.
pub fn users(utmp: &Path) -> Result<Vec<User>, ErrorBody> {
    let data = match fs::read(utmp) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ErrorBody::generic(format!(
                "failed to read {}: {}",
                utmp.display(),
                desc(&e)
            )))
        }
    };
    let size = std::mem::size_of::<libc::utmpx>();
    let mut first: BTreeMap<String, f64> = BTreeMap::new();
    for rec in data.chunks_exact(size) {
        // SAFETY: `rec` holds exactly size_of::<utmpx>() bytes of the file glibc writes; utmpx
        // is plain old data (integers and byte arrays), valid for any bit pattern, and
        // read_unaligned copies it out without an alignment requirement.
        let u: libc::utmpx = unsafe { std::ptr::read_unaligned(rec.as_ptr().cast()) };
        if u.ut_type != libc::USER_PROCESS {
            continue;
        }
        let name: Vec<u8> = u
            .ut_user
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        if name.is_empty() {
            continue;
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        let t = f64::from(u.ut_tv.tv_sec) + f64::from(u.ut_tv.tv_usec) / 1e6;
        first.entry(name).and_modify(|x| *x = x.min(t)).or_insert(t);
    }
    Ok(first
        .into_iter()
        .map(|(user, login_time)| User {
            user,
            login_time,
            domain: None,
        })
        .collect())
}

extern "C" {
    /// POSIX tzset(3) (not exported by the libc crate).
    fn tzset();
}

/// `guest-get-timezone`: the zone in force now (`TZ`, else `/etc/localtime`).
pub fn timezone() -> Timezone {
    let now: libc::time_t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: an all-zero tm is a valid value to be overwritten.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: tzset has no preconditions; localtime_r writes into `tm`, which we own, and
    // leaves tm_zone pointing at static storage that stays valid until the next tzset.
    let (offset, zone) = unsafe {
        tzset();
        if libc::localtime_r(&now, &mut tm).is_null() {
            (0, None)
        } else {
            let z = (!tm.tm_zone.is_null()).then(|| {
                std::ffi::CStr::from_ptr(tm.tm_zone)
                    .to_string_lossy()
                    .into_owned()
            });
            (tm.tm_gmtoff, z)
        }
    };
    Timezone { zone, offset }
}

/// Parse an os-release(5) value: shell-style quoting with `\"`, `\\`, `` \` ``, `\$` escapes.
pub fn os_release_value(v: &str) -> String {
    let v = v.trim();
    let (q, body) = match v.chars().next() {
        Some(c @ ('"' | '\'')) if v.len() >= 2 && v.ends_with(c) => (Some(c), &v[1..v.len() - 1]),
        _ => (None, v),
    };
    if q == Some('\'') {
        return body.to_string();
    }
    let mut out = String::with_capacity(body.len());
    let mut it = body.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some(n @ ('"' | '\\' | '`' | '$')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `KEY=value` pairs of the first of `/etc/os-release`, `/usr/lib/os-release` under `root`.
pub fn os_release(root: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(crate::fsutil::under(root, "/etc/os-release"))
        .or_else(|_| fs::read_to_string(crate::fsutil::under(root, "/usr/lib/os-release")))
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), os_release_value(v)))
        .collect()
}

/// `guest-get-osinfo`.
pub fn osinfo(root: &Path) -> OsInfo {
    let mut o = OsInfo::default();
    if let Ok(u) = nix::sys::utsname::uname() {
        o.kernel_release = Some(u.release().to_string_lossy().into_owned());
        o.kernel_version = Some(u.version().to_string_lossy().into_owned());
        o.machine = Some(u.machine().to_string_lossy().into_owned());
    }
    let r = os_release(root);
    let get = |k: &str| r.get(k).cloned();
    o.id = get("ID");
    o.name = get("NAME");
    o.pretty_name = get("PRETTY_NAME");
    o.version = get("VERSION");
    o.version_id = get("VERSION_ID");
    o.variant = get("VARIANT");
    o.variant_id = get("VARIANT_ID");
    o
}

// ---- programs: suspend, hwclock -----------------------------------------------------------

/// Run `argv` (searched in `PATH`), output discarded; `Ok(None)` when the program is not there.
fn run_quiet(argv: &[&str]) -> Result<Option<i32>, ErrorBody> {
    match Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(st) => Ok(Some(st.code().unwrap_or(-1))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ErrorBody::generic(format!(
            "failed to create child process, error '{e}'"
        ))),
    }
}

/// A `guest-suspend-*` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspendMode {
    /// To disk.
    Disk,
    /// To RAM.
    Ram,
    /// Both.
    Hybrid,
}

/// Suspend as qemu-ga does: systemd (`systemctl status systemd-<mode>` exits 1–3 when the unit
/// exists), then pm-utils, then `<sys>/power/state`. Returns when the guest has resumed (or at
/// once, for systemd); no reply is sent on success.
pub fn suspend(sys: &Path, mode: SuspendMode) -> Result<(), ErrorBody> {
    let (unit, verb, pm_arg, pm_bin, state) = match mode {
        SuspendMode::Disk => (
            "systemd-hibernate",
            "hibernate",
            "--hibernate",
            "pm-hibernate",
            Some("disk"),
        ),
        SuspendMode::Ram => (
            "systemd-suspend",
            "suspend",
            "--suspend",
            "pm-suspend",
            Some("mem"),
        ),
        SuspendMode::Hybrid => (
            "systemd-hybrid-sleep",
            "hybrid-sleep",
            "--suspend-hybrid",
            "pm-suspend-hybrid",
            None,
        ),
    };
    let mut supported = false;
    let mut last_err = None;
    if matches!(run_quiet(&["systemctl", "status", unit]), Ok(Some(1..=3))) {
        supported = true;
        crate::log::event("suspend", &[("via", "systemd"), ("mode", verb)]);
        match run_quiet(&["systemctl", verb]) {
            Ok(Some(0)) => return Ok(()),
            Ok(Some(n)) => {
                last_err = Some(ErrorBody::generic(format!(
                    "the helper program 'systemctl {verb}' returned an unexpected exit status code ({n})"
                )))
            }
            Ok(None) => {
                last_err = Some(ErrorBody::generic(format!(
                    "the helper program 'systemctl {verb}' was not found"
                )))
            }
            Err(e) => last_err = Some(e),
        }
    }
    if matches!(run_quiet(&["pm-is-supported", pm_arg]), Ok(Some(0))) {
        supported = true;
        crate::log::event("suspend", &[("via", "pm-utils"), ("mode", verb)]);
        match run_quiet(&[pm_bin]) {
            Ok(Some(0)) => return Ok(()),
            Ok(Some(n)) => {
                last_err = Some(ErrorBody::generic(format!(
                    "the helper program '{pm_bin}' returned an unexpected exit status code ({n})"
                )))
            }
            Ok(None) => {
                last_err = Some(ErrorBody::generic(format!(
                    "the helper program '{pm_bin}' was not found"
                )))
            }
            Err(e) => last_err = Some(e),
        }
    }
    let state_file = sys.join("power/state");
    if let Some(word) = state {
        let avail = fs::read_to_string(&state_file).unwrap_or_default();
        if avail.split_whitespace().any(|w| w == word) {
            crate::log::event("suspend", &[("via", "sysfs"), ("mode", word)]);
            return fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&state_file)
                .and_then(|mut f| f.write_all(word.as_bytes()))
                .map_err(|e| {
                    ErrorBody::generic(format!(
                        "suspend: cannot write to '{}': {}",
                        state_file.display(),
                        desc(&e)
                    ))
                });
        }
    }
    if !supported {
        return Err(ErrorBody::generic(
            "the requested suspend mode is not supported by the guest",
        ));
    }
    Err(last_err.unwrap_or_else(|| ErrorBody::generic("suspend failed")))
}

/// `guest-set-time`: set the system time (when given) and then the RTC from it with
/// `hwclock -w`, or, without a time, the system time from the RTC with `hwclock -s`.
pub fn set_time(time: Option<i64>, hwclock: &Path) -> Result<(), ErrorBody> {
    // As qemu-ga: without hwclock the command is unsupported, before anything is changed.
    let c = std::ffi::CString::new(hwclock.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: access(2) reads the NUL-terminated path only.
    if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
        return Err(ErrorBody::generic(
            "this feature or command is not currently supported",
        ));
    }
    if let Some(ns) = time {
        let tv = libc::timeval {
            tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
            tv_usec: (ns.rem_euclid(1_000_000_000) / 1000) as libc::suseconds_t,
        };
        // SAFETY: `tv` is a valid timeval; the timezone argument may be null.
        if unsafe { libc::settimeofday(&tv, std::ptr::null()) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(ErrorBody::generic(format!(
                "Failed to set time to guest: {}",
                desc(&e)
            )));
        }
        crate::log::event("set-time", &[("ns", &ns.to_string())]);
    }
    let flag = if time.is_some() { "-w" } else { "-s" };
    let st = Command::new(hwclock)
        .arg(flag)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status();
    match st {
        Ok(s) if s.success() => Ok(()),
        Ok(s) if s.code().is_none() => Err(ErrorBody::generic(
            "child process has terminated abnormally",
        )),
        _ => Err(ErrorBody::generic(
            "hwclock failed to set hardware clock to system time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quoting() {
        assert_eq!(
            os_release_value("\"Debian GNU/Linux 12 (bookworm)\""),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(os_release_value("'a \\\"b'"), "a \\\"b");
        assert_eq!(os_release_value("\"say \\\"hi\\\" \\$x\""), "say \"hi\" $x");
        assert_eq!(os_release_value("plain"), "plain");
    }

    #[test]
    fn routes_from_proc_text() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("net")).unwrap();
        fs::write(
            t.path().join("net/route"),
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t0102000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
        )
        .unwrap();
        fs::write(
            t.path().join("net/ipv6_route"),
            "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n",
        )
        .unwrap();
        let r = routes(t.path()).unwrap();
        assert_eq!(r[0].destination, "0.0.0.0");
        assert_eq!(r[0].gateway.as_deref(), Some("10.0.2.1"));
        assert_eq!(r[0].metric, 100);
        assert_eq!(r[1].mask.as_deref(), Some("255.255.255.0"));
        assert_eq!(r[2].destination, "fe80::");
        assert_eq!(r[2].desprefixlen.as_deref(), Some("64"));
        assert_eq!(r[2].metric, 256);
        assert_eq!(r[2].version, 6);
    }

    #[test]
    fn vcpus_and_memory_blocks_on_a_fake_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let cpu = t.path().join("devices/system/cpu");
        fs::create_dir_all(cpu.join("cpu0")).unwrap();
        fs::create_dir_all(cpu.join("cpu1")).unwrap();
        fs::write(cpu.join("cpu1/online"), "1\n").unwrap();
        fs::create_dir_all(cpu.join("cpufreq")).unwrap();
        let v = vcpus(t.path()).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].can_offline, Some(false));
        let off = |id, online| LogicalProcessor {
            logical_id: id,
            online,
            can_offline: None,
        };
        assert_eq!(
            set_vcpus(t.path(), &[off(1, false), off(0, false)]).unwrap(),
            1
        );
        assert_eq!(
            fs::read_to_string(cpu.join("cpu1/online"))
                .unwrap()
                .as_bytes()[0],
            b'0'
        );
        assert_eq!(
            set_vcpus(t.path(), &[off(0, false)]).unwrap_err().desc,
            "logical processor #0 can't be offlined"
        );
        let mem = t.path().join("devices/system/memory");
        fs::create_dir_all(mem.join("memory3")).unwrap();
        fs::write(mem.join("memory3/state"), "online\n").unwrap();
        fs::write(mem.join("memory3/removable"), "1\n").unwrap();
        fs::write(mem.join("block_size_bytes"), "8000000\n").unwrap();
        assert_eq!(memory_block_info(t.path()).unwrap().size, 0x800_0000);
        let b = memory_blocks(t.path()).unwrap();
        assert_eq!(
            (b[0].phys_index, b[0].online, b[0].can_offline),
            (3, true, Some(true))
        );
        let r = set_memory_blocks(
            t.path(),
            &[
                MemoryBlock {
                    phys_index: 3,
                    online: false,
                    can_offline: None,
                },
                MemoryBlock {
                    phys_index: 9,
                    online: true,
                    can_offline: None,
                },
            ],
        );
        assert_eq!(r[0].response, "success");
        assert_eq!(
            fs::read_to_string(mem.join("memory3/state")).unwrap(),
            "offline"
        );
        assert_eq!(
            (r[1].response.as_str(), r[1].error_code),
            ("not-found", Some(2))
        );
    }
}
