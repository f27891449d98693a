//! Device specifications from an xl domain configuration, interpreted as libxl does:
//! `disk=` (xl-disk-configuration(5), libxlu_disk_l.l), `vif=` (xl-network-configuration(5)) and
//! `channel=` (xl.cfg(5)), and the xenstore nodes libxl writes for each.

use std::collections::BTreeMap;

/// A problem with a device specification.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{kind} spec `{spec}`: {msg}")]
pub struct SpecError {
    /// `disk`, `vif` or `channel`.
    pub kind: &'static str,
    /// The specification as written.
    pub spec: String,
    /// What is wrong.
    pub msg: String,
}

fn spec_err<T>(kind: &'static str, spec: &str, msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError {
        kind,
        spec: spec.to_string(),
        msg: msg.into(),
    })
}

/// A disk, after libxl's defaults and deprecated-prefix handling.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    /// The target, written verbatim as `params`.
    pub target: String,
    /// Image format (`raw` by default).
    pub format: String,
    /// Guest device name, e.g. `xvda`.
    pub vdev: String,
    /// The xenstore device id derived from `vdev` (xen-vbd-interface(7)).
    pub devid: u32,
    /// Read-write access.
    pub readwrite: bool,
    /// `cdrom` or `disk`.
    pub devtype: String,
    /// `script=`, or the script implied by a deprecated prefix (`block-iscsi`, …).
    pub script: Option<String>,
    /// `discard` / `no-discard` flag, when given.
    pub discard: Option<bool>,
}

/// Split a device spec on commas. A `target=` parameter consumes the rest of the string.
fn split_params(spec: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = spec;
    loop {
        let trimmed = rest.trim_start();
        if trimmed.starts_with("target=") {
            out.push(trimmed);
            break;
        }
        match rest.find(',') {
            Some(i) => {
                out.push(rest[..i].trim_start());
                rest = &rest[i + 1..];
            }
            None => {
                out.push(rest.trim_start());
                break;
            }
        }
    }
    out
}

/// Letters after a vdev prefix (`a`…`z`, `aa`…) as a 0-based disk number (bijective base 26).
fn disk_letters(s: &str) -> Option<(u32, &str)> {
    let n = s.bytes().take_while(|c| c.is_ascii_lowercase()).count();
    if n == 0 || n > 3 {
        return None;
    }
    let mut disk: u32 = 0;
    for c in s[..n].bytes() {
        disk = disk * 26 + u32::from(c - b'a') + 1;
    }
    Some((disk - 1, &s[n..]))
}

fn partition(s: &str) -> Option<u32> {
    if s.is_empty() {
        return Some(0);
    }
    if s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// The xenstore device id of a virtual device name (xen-vbd-interface(7)): `xvdX[N]`, `hdX[N]`,
/// `sdX[N]` and `dN[pM]`.
pub fn vdev_to_devid(vdev: &str) -> Option<u32> {
    if let Some(rest) = vdev.strip_prefix("xvd") {
        let (disk, rest) = disk_letters(rest)?;
        let part = partition(rest)?;
        return if disk < 16 && part < 16 {
            Some((202 << 8) | (disk << 4) | part)
        } else if disk < (1 << 20) && part < 256 {
            Some((1 << 28) | (disk << 8) | part)
        } else {
            None
        };
    }
    if let Some(rest) = vdev.strip_prefix("hd") {
        let (disk, rest) = disk_letters(rest)?;
        let part = partition(rest)?;
        let major = [3u32, 22, 33, 34, 56, 57, 88, 89, 90, 91].get(disk as usize / 2)?;
        return (part < 64).then_some((major << 8) | ((disk % 2) << 6) | part);
    }
    if let Some(rest) = vdev.strip_prefix("sd") {
        let (disk, rest) = disk_letters(rest)?;
        let part = partition(rest)?;
        return (disk < 16 && part < 16).then_some((8 << 8) | (disk << 4) | part);
    }
    if let Some(rest) = vdev.strip_prefix('d') {
        let (disk, part) = match rest.split_once('p') {
            Some((d, p)) => (d.parse::<u32>().ok()?, p.parse::<u32>().ok()?),
            None => (rest.parse::<u32>().ok()?, 0),
        };
        return (disk < (1 << 20) && part < 256).then_some((1 << 28) | (disk << 8) | part);
    }
    None
}

/// Parse one `disk=` entry.
pub fn parse_disk(spec: &str) -> Result<Disk, SpecError> {
    let k = "disk";
    let mut named: BTreeMap<&str, String> = BTreeMap::new();
    let mut positional: Vec<String> = Vec::new();
    let mut discard = None;
    for p in split_params(spec) {
        match p {
            "cdrom" => {
                named.insert("devtype", "cdrom".into());
            }
            "discard" => discard = Some(true),
            "no-discard" => discard = Some(false),
            "direct-io-safe" | "trusted" | "untrusted" | "colo" => {}
            _ => match p.split_once('=') {
                Some((key, value)) => {
                    let key = key.trim_end();
                    let known = [
                        "target",
                        "format",
                        "vdev",
                        "access",
                        "devtype",
                        "script",
                        "backend",
                        "backendtype",
                        "specification",
                    ];
                    let Some(key) = known.iter().find(|k| **k == key) else {
                        return spec_err(k, spec, format!("unknown parameter `{key}`"));
                    };
                    if named.insert(key, value.to_string()).is_some() {
                        return spec_err(k, spec, format!("`{key}` given twice"));
                    }
                }
                None => positional.push(p.to_string()),
            },
        }
    }
    // The legacy form `phy:/dev/x,hda,w`: after a deprecated prefix on a positional target, the
    // format slot is taken (by the prefix or its default) and positionals go to vdev, access.
    const PREFIXES: [&str; 15] = [
        "iscsi", "nbd", "enbd", "drbd", "raw", "qcow", "qcow2", "vhd", "tapdisk", "tap", "tap2",
        "aio", "ioemu", "file", "phy",
    ];
    let legacy = positional.first().is_some_and(|t| {
        t.split_once(':')
            .is_some_and(|(p, _)| PREFIXES.contains(&p))
    });
    let order: &[&str] = if legacy && !named.contains_key("target") {
        &["target", "vdev", "access"]
    } else {
        &["target", "format", "vdev", "access"]
    };
    let free: Vec<&str> = order
        .iter()
        .copied()
        .filter(|n| !named.contains_key(n))
        .collect();
    let mut free = free.into_iter();
    for value in positional {
        let Some(name) = free.next() else {
            return spec_err(k, spec, "too many positional parameters");
        };
        named.insert(name, value);
    }
    let get = |n: &str| named.get(n).filter(|v| !v.is_empty()).cloned();

    let mut target = get("target").unwrap_or_default();
    let mut format = get("format").unwrap_or_else(|| "raw".into());
    let mut script = get("script");
    let mut devtype = get("devtype").unwrap_or_else(|| "disk".into());
    // Deprecated prefixes (libxlu_disk_l.l): scripts, formats, and ignored ones.
    while let Some((prefix, rest)) = target.split_once(':') {
        match prefix {
            "iscsi" | "nbd" | "enbd" | "drbd" => {
                script = Some(format!("block-{prefix}"));
                target = rest.to_string();
                break;
            }
            "raw" | "qcow" | "qcow2" | "vhd" => {
                format = prefix.to_string();
                target = rest.to_string();
            }
            "tapdisk" | "tap" | "tap2" | "aio" | "ioemu" | "file" | "phy" => {
                target = rest.to_string();
            }
            p if !p.is_empty()
                && p.starts_with(|c: char| c.is_ascii_lowercase())
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && rest.starts_with('/') =>
            {
                return spec_err(k, spec, format!("unknown deprecated disk prefix `{p}:`"));
            }
            _ => break,
        }
    }
    let mut vdev = get("vdev").ok_or_else(|| SpecError {
        kind: k,
        spec: spec.into(),
        msg: "no vdev specified".into(),
    })?;
    if let Some(v) = vdev.strip_suffix(":cdrom") {
        vdev = v.to_string();
        devtype = "cdrom".into();
    }
    let readwrite = match get("access").as_deref() {
        None => devtype != "cdrom",
        Some("rw" | "w") => true,
        Some("ro" | "r") => false,
        Some(other) => return spec_err(k, spec, format!("invalid access `{other}`")),
    };
    let devid = vdev_to_devid(&vdev).ok_or_else(|| SpecError {
        kind: k,
        spec: spec.into(),
        msg: format!("invalid vdev `{vdev}`"),
    })?;
    if !["raw", "qcow", "qcow2", "vhd", "qed", "empty"].contains(&format.as_str()) {
        return spec_err(k, spec, format!("invalid format `{format}`"));
    }
    Ok(Disk {
        target,
        format,
        vdev,
        devid,
        readwrite,
        devtype,
        script,
        discard,
    })
}

/// A network interface (`vif=` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Nic {
    /// Device id (`devid=`, else its position).
    pub devid: u32,
    /// Guest MAC address.
    pub mac: String,
    /// `bridge=` (libxl default `xenbr0`).
    pub bridge: String,
    /// `ip=` (space-separated addresses).
    pub ip: Option<String>,
    /// `script=` (libxl default `vif-bridge`).
    pub script: String,
    /// `vifname=`.
    pub vifname: Option<String>,
    /// `type=ioemu` (an HVM emulated NIC: a second, tap, execution) rather than `vif`.
    pub ioemu: bool,
    /// `model=`.
    pub model: Option<String>,
    /// `rate=` as libxl writes it: `bytes_per_interval,interval_usecs`.
    pub rate: Option<String>,
    /// `mtu=` (1500 by default).
    pub mtu: u32,
    /// `gatewaydev=` (exported to the script as `netdev`).
    pub gatewaydev: Option<String>,
}

/// Parse a libxl rate, `RATE[@INTERVAL]`, RATE like `10Mb/s` or `1GB/s`, INTERVAL like `50ms`
/// (default 50 ms), into `(bytes_per_interval, interval_usecs)` as xlu_vif_parse_rate does.
pub fn parse_rate(s: &str) -> Option<(u64, u32)> {
    let (rate, interval) = match s.split_once('@') {
        Some((r, i)) => (r, Some(i)),
        None => (s, None),
    };
    let rate = rate.strip_suffix("/s")?;
    let (num, unit) = rate.split_at(rate.find(|c: char| !c.is_ascii_digit())?);
    let num: u64 = num.parse().ok()?;
    let (mult, bits) = match unit {
        "B" => (1, false),
        "b" => (1, true),
        "KB" | "kB" => (1_000, false),
        "Kb" | "kb" => (1_000, true),
        "MB" => (1_000_000, false),
        "Mb" => (1_000_000, true),
        "GB" => (1_000_000_000, false),
        "Gb" => (1_000_000_000, true),
        _ => return None,
    };
    let mut bytes_per_sec = num.checked_mul(mult)?;
    if bits {
        bytes_per_sec /= 8;
    }
    let usecs: u32 = match interval {
        None => 50_000,
        Some(i) => {
            let (n, unit) = i.split_at(i.find(|c: char| !c.is_ascii_digit())?);
            let n: u32 = n.parse().ok()?;
            match unit {
                "s" => n.checked_mul(1_000_000)?,
                "ms" => n.checked_mul(1_000)?,
                "us" => n,
                _ => return None,
            }
        }
    };
    if bytes_per_sec == 0 || usecs == 0 {
        return None;
    }
    // A rate whose bytes per interval do not fit in 64 bits is refused.
    Some((
        bytes_per_sec.checked_mul(u64::from(usecs))? / 1_000_000,
        usecs,
    ))
}

/// Parse one `vif=` entry at position `index`, for domain `domid` (used for a stable MAC when
/// none is given: `00:16:3e` plus bytes from the domid and devid).
pub fn parse_nic(spec: &str, index: u32, domid: u32) -> Result<Nic, SpecError> {
    let k = "vif";
    let mut nic = Nic {
        devid: index,
        mac: String::new(),
        bridge: "xenbr0".into(),
        ip: None,
        script: "vif-bridge".into(),
        vifname: None,
        ioemu: false,
        model: None,
        rate: None,
        mtu: 1500,
        gatewaydev: None,
    };
    let mut mac = None;
    for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = p.split_once('=') else {
            return spec_err(k, spec, format!("`{p}` is not key=value"));
        };
        let value = value.to_string();
        match key.trim() {
            "mac" => {
                let ok = value.split(':').count() == 6
                    && value
                        .split(':')
                        .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok());
                if !ok {
                    return spec_err(k, spec, format!("invalid mac `{value}`"));
                }
                mac = Some(value.to_ascii_lowercase());
            }
            "bridge" => nic.bridge = value,
            "ip" => nic.ip = Some(value),
            "script" => nic.script = value,
            "vifname" => nic.vifname = Some(value),
            "type" => match value.as_str() {
                "ioemu" => nic.ioemu = true,
                "vif" => nic.ioemu = false,
                _ => return spec_err(k, spec, format!("invalid type `{value}`")),
            },
            "model" => nic.model = Some(value),
            "rate" => {
                let (b, u) = parse_rate(&value).ok_or_else(|| SpecError {
                    kind: k,
                    spec: spec.into(),
                    msg: format!("invalid rate `{value}`"),
                })?;
                nic.rate = Some(format!("{b},{u}"));
            }
            "mtu" => {
                nic.mtu = value
                    .parse()
                    .ok()
                    .filter(|m| (68..=65535).contains(m))
                    .ok_or_else(|| SpecError {
                        kind: k,
                        spec: spec.into(),
                        msg: format!("invalid mtu `{value}`"),
                    })?
            }
            "devid" => {
                nic.devid = value.parse().map_err(|_| SpecError {
                    kind: k,
                    spec: spec.into(),
                    msg: format!("invalid devid `{value}`"),
                })?
            }
            "gatewaydev" => nic.gatewaydev = Some(value),
            "backend" | "trusted" | "untrusted" | "accel" | "vifname_emu" => {}
            other => return spec_err(k, spec, format!("unknown parameter `{other}`")),
        }
    }
    nic.mac = mac.unwrap_or_else(|| {
        format!(
            "00:16:3e:{:02x}:{:02x}:{:02x}",
            (domid >> 8) & 0x7f,
            domid & 0xff,
            nic.devid & 0xff
        )
    });
    Ok(nic)
}

/// A PV channel (`channel=` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// `name=` (mandatory): what the guest looks it up by.
    pub name: String,
    /// `connection=`: `socket` or `pty`.
    pub connection: String,
    /// `path=` of the socket QEMU listens on (socket connections).
    pub path: Option<String>,
}

/// Parse one `channel=` entry.
pub fn parse_channel(spec: &str) -> Result<Channel, SpecError> {
    let k = "channel";
    let (mut name, mut connection, mut path) = (None, None, None);
    for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = p.split_once('=') else {
            return spec_err(k, spec, format!("`{p}` is not key=value"));
        };
        match key {
            "name" => name = Some(value.to_string()),
            "connection" => connection = Some(value.to_string()),
            "path" => path = Some(value.to_string()),
            "backend" => {}
            other => return spec_err(k, spec, format!("unknown parameter `{other}`")),
        }
    }
    let name = name.ok_or_else(|| SpecError {
        kind: k,
        spec: spec.into(),
        msg: "no name given".into(),
    })?;
    let connection = connection.unwrap_or_else(|| "pty".into());
    match connection.as_str() {
        "socket" if path.is_none() => return spec_err(k, spec, "socket channel needs path="),
        "socket" | "pty" => {}
        other => return spec_err(k, spec, format!("invalid connection `{other}`")),
    }
    Ok(Channel {
        name,
        connection,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vdev_numbers_follow_xen_vbd_interface() {
        assert_eq!(vdev_to_devid("xvda"), Some(51712));
        assert_eq!(vdev_to_devid("xvdb"), Some(51728));
        assert_eq!(vdev_to_devid("xvda1"), Some(51713));
        assert_eq!(vdev_to_devid("xvdq"), Some((1 << 28) | (16 << 8)));
        assert_eq!(vdev_to_devid("hda"), Some(768));
        assert_eq!(vdev_to_devid("hdb"), Some(832));
        assert_eq!(vdev_to_devid("hdc"), Some(22 << 8));
        assert_eq!(vdev_to_devid("sda"), Some(2048));
        assert_eq!(vdev_to_devid("d0p1"), Some((1 << 28) | 1));
        assert_eq!(vdev_to_devid("xvd"), None);
        assert_eq!(vdev_to_devid("xvda01"), None);
        assert_eq!(vdev_to_devid("eth0"), None);
    }

    #[test]
    fn disk_forms_from_the_man_page_are_equivalent() {
        let a = parse_disk("/dev/vg/guest-volume,,hda").unwrap();
        let b = parse_disk("/dev/vg/guest-volume,raw,hda,rw").unwrap();
        let c = parse_disk("format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume").unwrap();
        let d = parse_disk("raw:/dev/vg/guest-volume,hda,w").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(c.target, d.target);
        assert_eq!(d.vdev, "hda");
        assert!(d.readwrite);
        let cd = parse_disk("/root/image.iso,,hdc,cdrom").unwrap();
        assert_eq!(cd.devtype, "cdrom");
        assert!(!cd.readwrite);
    }

    #[test]
    fn target_consumes_the_rest_and_prefixes_select_scripts() {
        let d = parse_disk("vdev=xvdb,access=r,target=iqn=iqn.x,portal=1.2.3.4").unwrap();
        assert_eq!(d.target, "iqn=iqn.x,portal=1.2.3.4");
        assert!(!d.readwrite);
        let d = parse_disk("vdev=xvdb,target=iscsi:iqn=iqn.x,portal=1.2.3.4").unwrap();
        assert_eq!(d.script.as_deref(), Some("block-iscsi"));
        assert_eq!(d.target, "iqn=iqn.x,portal=1.2.3.4");
        let d = parse_disk("nbd:127.0.0.1:10809,xvdc,w").unwrap();
        assert_eq!(d.script.as_deref(), Some("block-nbd"));
        assert_eq!(d.target, "127.0.0.1:10809");
        let d =
            parse_disk("format=raw,vdev=xvda,access=rw,script=block-test,target=/srv/e2e/disk.img")
                .unwrap();
        assert_eq!(d.script.as_deref(), Some("block-test"));
        assert!(parse_disk("foo:/x,xvda")
            .unwrap_err()
            .msg
            .contains("deprecated"));
        assert!(parse_disk("/x").unwrap_err().msg.contains("vdev"));
        assert!(parse_disk("/x,raw,xvda,rw,extra")
            .unwrap_err()
            .msg
            .contains("positional"));
        assert!(parse_disk("bogus=1,xvda")
            .unwrap_err()
            .msg
            .contains("unknown"));
        assert!(parse_disk("/x,,xvda,rx")
            .unwrap_err()
            .msg
            .contains("access"));
    }

    #[test]
    fn nics_get_libxl_defaults() {
        let n = parse_nic("", 0, 5).unwrap();
        assert_eq!(n.bridge, "xenbr0");
        assert_eq!(n.script, "vif-bridge");
        assert_eq!(n.mac, "00:16:3e:00:05:00");
        let n = parse_nic(
            "mac=00:16:3E:AA:BB:CC,bridge=br1,ip=10.0.0.5 10.0.0.6,vifname=web0,type=ioemu,rate=10Mb/s,mtu=9000",
            1,
            5,
        )
        .unwrap();
        assert_eq!(n.mac, "00:16:3e:aa:bb:cc");
        assert!(n.ioemu);
        assert_eq!(n.rate.as_deref(), Some("62500,50000"));
        assert_eq!(n.mtu, 9000);
        assert!(parse_nic("mac=zz", 0, 1).is_err());
        assert!(parse_nic("rate=fast", 0, 1).is_err());
        assert!(parse_nic("bridge", 0, 1).is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10MB/s"), Some((500_000, 50_000)));
        assert_eq!(parse_rate("1Gb/s@20ms"), Some((2_500_000, 20_000)));
        assert_eq!(parse_rate("100KB/s@1s"), Some((100_000, 1_000_000)));
        assert_eq!(parse_rate("0MB/s"), None);
        // The xl_config fuzz target's finding: bytes per second times the interval overflowed
        // (a panic with overflow checks, a wrong rate without them).
        assert_eq!(parse_rate("0000000002865164096831Mb/s"), None);
        assert_eq!(
            parse_rate("100000Gb/s@1s"),
            Some((12_500_000_000_000, 1_000_000))
        );
        assert_eq!(parse_rate("200000Gb/s@1s"), None);
        assert_eq!(parse_rate("10MB"), None);
    }

    #[test]
    fn channels() {
        let c =
            parse_channel("connection=socket,name=org.example.agent.v1,path=/run/c.sock").unwrap();
        assert_eq!(c.name, "org.example.agent.v1");
        assert_eq!(parse_channel("name=x").unwrap().connection, "pty");
        assert!(parse_channel("connection=socket,name=x").is_err());
        assert!(parse_channel("path=/x").is_err());
    }
}
