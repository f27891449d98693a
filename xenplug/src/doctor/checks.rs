//! The checks behind `xenplug doctor` (see the module docs of [`super`]).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};

use xenplug_block::state::{Record, STATE_SUBDIR};
use xenplug_hotplug::Config;

use super::probe::Probe;
use super::xlconf::XlConf;
use super::{Check, Paths, Status, DIVERT_SUFFIX, PACKAGE, XEN_PACKAGE};
use crate::scripts;

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

pub(super) fn run_all(p: &Paths) -> Vec<Check> {
    let (config_check, cfg) = config(p);
    let mut out = vec![config_check, scripts_check(p), diversions(p)];
    let (xs_check, mut xs) = xenstored(p);
    out.push(xs_check);
    let xl = read_xl_conf(p);
    out.push(xl_conf(p, &xl));
    let xl = xl.ok().flatten().unwrap_or_default();
    out.push(network(p, &xl));
    out.push(nft(p, &cfg, &xl));
    out.push(loop_control(p));
    out.push(modules(p));
    out.push(log_dir(&cfg));
    out.push(dir_check(
        "lock-dir",
        "lock directory",
        &cfg.lock_dir,
        "lock_dir",
        p,
    ));
    out.push(dir_check(
        "state-dir",
        "state directory",
        &cfg.state_dir,
        "state_dir",
        p,
    ));
    out.push(syslog(p, &cfg));
    out.push(leftovers(p, &cfg, xs.as_mut()));
    out.push(peer(p));
    out
}

// ------------------------------------------------------------------------------------ helpers

/// The `Status:` of a package in dpkg's database (`install ok installed`, …), if it is known.
fn package_status(p: &Paths, package: &str) -> Option<String> {
    let text = fs::read_to_string(p.dpkg_admin.join("status")).ok()?;
    for stanza in text.split("\n\n") {
        let mut name = None;
        let mut status = None;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                status = Some(v.trim());
            }
        }
        if name == Some(package) {
            return status.map(str::to_string);
        }
    }
    None
}

/// True when the package's files are on the system (unpacked or configured).
fn package_present(p: &Paths, package: &str) -> bool {
    package_status(p, package)
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_string))
        .is_some_and(|st| {
            matches!(
                st.as_str(),
                "installed"
                    | "half-configured"
                    | "unpacked"
                    | "triggers-awaited"
                    | "triggers-pending"
            )
        })
}

/// The files dpkg lists for a package (`info/<package>.list` or `info/<package>:<arch>.list`).
fn package_files(p: &Paths, package: &str) -> Vec<String> {
    let info = p.dpkg_admin.join("info");
    let mut files = Vec::new();
    let Ok(rd) = fs::read_dir(&info) else {
        return files;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = n.strip_suffix(".list") else {
            continue;
        };
        if stem == package || stem.split_once(':').is_some_and(|(s, _)| s == package) {
            if let Ok(t) = fs::read_to_string(e.path()) {
                files.extend(t.lines().map(str::to_string));
            }
        }
    }
    files
}

/// dpkg's diversions: (from, to, package; `:` for a local diversion).
fn diversions_table(p: &Paths) -> io::Result<Vec<(String, String, String)>> {
    let text = match fs::read_to_string(p.dpkg_admin.join("diversions")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines
        .chunks(3)
        .filter(|c| c.len() == 3)
        .map(|c| (c[0].to_string(), c[1].to_string(), c[2].to_string()))
        .collect())
}

fn exists_no_follow(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_program(p: &Paths, name: &str) -> Option<PathBuf> {
    p.exec_path
        .iter()
        .map(|d| d.join(name))
        .find(|c| is_executable(c))
}

fn config_path_hint(p: &Paths) -> String {
    p.config_file.display().to_string()
}

// ------------------------------------------------------------------------------------ config

fn config(p: &Paths) -> (Check, Config) {
    let f = p.config_file.display();
    match fs::read_to_string(&p.config_file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => (
            Check::new(
                "config",
                Status::Ok,
                format!("{f} is absent: the defaults apply (xenplug.toml(5))"),
            ),
            Config::default(),
        ),
        Err(e) => (
            Check::new("config", Status::Fail, format!("cannot read {f}: {e}"))
                .fix("make it a readable file, or remove it to use the defaults"),
            Config::default(),
        ),
        Ok(text) => match Config::from_toml(&text, &p.config_file) {
            Ok(c) => (Check::new("config", Status::Ok, format!("{f} is valid")), c),
            Err(e) => (
                Check::new("config", Status::Fail, e.message()).fix(format!(
                    "correct {f} (every key and value is in xenplug.toml(5)); until then every \
                     xenplug hotplug script fails with this message"
                )),
                Config::default(),
            ),
        },
    }
}

// ------------------------------------------------------------------------------------ scripts

/// What one script name is.
enum Name {
    Ours,
    OtherXenplug(PathBuf),
    Broken(String),
}

fn classify(p: &Paths, want: &Path, name: &str) -> Name {
    let f = p.scripts_dir.join(name);
    let md = match fs::symlink_metadata(&f) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Name::Broken("missing: libxl cannot run it".into())
        }
        Err(e) => return Name::Broken(format!("cannot stat: {e}")),
    };
    let link = fs::read_link(&f).ok();
    let target = match fs::canonicalize(&f) {
        Ok(t) => t,
        Err(e) => {
            return Name::Broken(match link {
                Some(l) => format!("a link to {}, which cannot be resolved: {e}", l.display()),
                None => format!("cannot be resolved: {e}"),
            })
        }
    };
    if target == want || target.file_name().is_some_and(|n| n == "xenplug") {
        if !is_executable(&target) {
            return Name::Broken(format!("{} is not executable", target.display()));
        }
        return if target == want {
            Name::Ours
        } else {
            Name::OtherXenplug(target)
        };
    }
    if md.file_type().is_symlink() {
        return Name::Broken(format!("a link to {}, not xenplug", target.display()));
    }
    let diverted = p.scripts_dir.join(format!("{name}{DIVERT_SUFFIX}"));
    let content = fs::read(&f).unwrap_or_default();
    if content.starts_with(b"#!") {
        if fs::read(&diverted).is_ok_and(|d| d == content) {
            return Name::Broken(format!(
                "Debian's shell script is back (identical to {}): something restored it over \
                 the link",
                diverted.display()
            ));
        }
        let debians = package_files(p, XEN_PACKAGE).contains(&f.display().to_string());
        return Name::Broken(if debians {
            format!("Debian's shell script ({XEN_PACKAGE}), not xenplug")
        } else {
            "a shell script, not xenplug".into()
        });
    }
    Name::Broken("a regular file, not xenplug".into())
}

fn scripts_check(p: &Paths) -> Check {
    let want = fs::canonicalize(&p.binary).unwrap_or_else(|_| p.binary.clone());
    let names = scripts::names();
    let mut broken = Vec::new();
    let mut other = Vec::new();
    for name in &names {
        match classify(p, &want, name) {
            Name::Ours => {}
            Name::OtherXenplug(t) => other.push(format!(
                "{name}: runs another xenplug binary, {}",
                t.display()
            )),
            Name::Broken(why) => broken.push(format!("{name}: {why}")),
        }
    }
    let dir = p.scripts_dir.display();
    let fix = if package_present(p, PACKAGE) {
        "dpkg-reconfigure xenplug (puts every link and diversion back)".to_string()
    } else {
        format!("xenplug install --scripts-dir {dir} (or install the xenplug package)")
    };
    if !broken.is_empty() {
        let n = broken.len();
        broken.extend(other);
        return Check::new(
            "scripts",
            Status::Fail,
            format!(
                "{n} of {} script names in {dir} do not run xenplug",
                names.len()
            ),
        )
        .details(broken)
        .fix(fix);
    }
    if !other.is_empty() {
        return Check::new(
            "scripts",
            Status::Warn,
            format!(
                "every script name runs xenplug, but not {} (this binary)",
                want.display()
            ),
        )
        .details(other)
        .fix(fix);
    }
    Check::new(
        "scripts",
        Status::Ok,
        format!(
            "all {} script names in {dir} run {}",
            names.len(),
            want.display()
        ),
    )
}

fn diversions(p: &Paths) -> Check {
    let xen = package_present(p, XEN_PACKAGE);
    if !package_present(p, PACKAGE) {
        let manifest = p
            .scripts_dir
            .join(crate::install::BACKUP_DIR)
            .join("MANIFEST");
        if xen && manifest.exists() {
            return Check::new(
                "diversions",
                Status::Warn,
                format!(
                    "installed with `xenplug install`, not from the package: an upgrade or \
                     reinstall of {XEN_PACKAGE} puts Debian's scripts back over the links"
                ),
            )
            .fix(format!(
                "install the xenplug package (it diverts {XEN_PACKAGE}'s scripts), or run \
                 `xenplug install` again after every {XEN_PACKAGE} upgrade"
            ));
        }
        return Check::new(
            "diversions",
            Status::Skip,
            "the xenplug package is not installed: no diversions to check",
        );
    }
    let table = match diversions_table(p) {
        Ok(t) => t,
        Err(e) => {
            return Check::new(
                "diversions",
                Status::Fail,
                format!(
                    "cannot read {}: {e}",
                    p.dpkg_admin.join("diversions").display()
                ),
            )
        }
    };
    let shipped = package_files(p, XEN_PACKAGE);
    let mut bad = Vec::new();
    let mut warn = Vec::new();
    let names = scripts::names();
    for name in &names {
        let from = p.scripts_dir.join(name).display().to_string();
        let want_to = format!("{from}{DIVERT_SUFFIX}");
        match table.iter().find(|(f, _, _)| *f == from) {
            None => bad.push(format!(
                "{name}: not diverted (an upgrade of {XEN_PACKAGE} would write Debian's script \
                 over the link)"
            )),
            Some((_, to, pkg)) if pkg != PACKAGE => bad.push(format!(
                "{name}: diverted to {to} by {}, not by {PACKAGE}",
                if pkg == ":" { "the administrator" } else { pkg }
            )),
            Some((_, to, _)) if *to != want_to => {
                warn.push(format!("{name}: diverted to {to}, expected {want_to}"))
            }
            Some(_) => {
                if xen && shipped.contains(&from) && !exists_no_follow(Path::new(&want_to)) {
                    warn.push(format!(
                        "{name}: Debian's copy {want_to} is missing: removing xenplug cannot put \
                         {name} back"
                    ));
                }
            }
        }
    }
    if !bad.is_empty() {
        let n = bad.len();
        bad.extend(warn);
        return Check::new(
            "diversions",
            Status::Fail,
            format!(
                "{n} of {} script names are not diverted to xenplug",
                names.len()
            ),
        )
        .details(bad)
        .fix("dpkg-reconfigure xenplug (adds the missing diversions)");
    }
    if !warn.is_empty() {
        return Check::new(
            "diversions",
            Status::Warn,
            "the diversions are in place, with problems",
        )
        .details(warn)
        .fix(format!(
            "apt install --reinstall {XEN_PACKAGE} (writes Debian's copies to their diverted \
             names)"
        ));
    }
    Check::new(
        "diversions",
        Status::Ok,
        format!(
            "all {} names diverted by {PACKAGE}; Debian's scripts kept as <name>{DIVERT_SUFFIX}",
            names.len()
        ),
    )
}

// ------------------------------------------------------------------------------------ xenstored

fn xenstored(p: &Paths) -> (Check, Option<Probe>) {
    let mut tried = Vec::new();
    let mut ask = |what: &Path, pr: io::Result<Probe>| -> Option<(Probe, Vec<String>)> {
        let mut pr = match pr {
            Ok(pr) => pr,
            Err(e) => {
                tried.push(format!("{}: {e}", what.display()));
                return None;
            }
        };
        match pr.directory("/") {
            Ok(Ok(names)) => Some((pr, names)),
            Ok(Err(errname)) => {
                tried.push(format!(
                    "{}: DIRECTORY / answered {errname}",
                    what.display()
                ));
                None
            }
            Err(e) => {
                tried.push(format!("{}: {e}", what.display()));
                None
            }
        }
    };
    let mut found = None;
    for s in &p.xenstored_sockets {
        if let Some(x) = ask(s, Probe::socket(s, p.timeout)) {
            found = Some((s.clone(), "socket", x));
            break;
        }
    }
    if found.is_none() {
        if let Some(x) = ask(&p.xenbus, Probe::device(&p.xenbus, p.timeout)) {
            found = Some((p.xenbus.clone(), "device", x));
        }
    }
    match found {
        Some((path, kind, (probe, top))) => (
            Check::new(
                "xenstored",
                Status::Ok,
                format!(
                    "xenstored answers on the {kind} {} (top level: {})",
                    path.display(),
                    top.join(", ")
                ),
            )
            .details(tried),
            Some(probe),
        ),
        None => (
            Check::new("xenstored", Status::Fail, "no xenstored answers")
                .details(tried)
                .fix(
                    "start xenstored (on Debian `systemctl start xen`, whose /etc/init.d/xen \
                     starts it); scripts look at $XENSTORED_PATH or /run/xenstored/socket, then \
                     /dev/xen/xenbus",
                ),
            None,
        ),
    }
}

// ------------------------------------------------------------------------------------ xl.conf

fn read_xl_conf(p: &Paths) -> Result<Option<XlConf>, String> {
    match fs::read_to_string(&p.xl_conf) {
        Ok(t) => Ok(Some(XlConf::parse(&t))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", p.xl_conf.display())),
    }
}

/// A udev rule that runs hotplug scripts (what `run_hotplug_scripts=0` relies on).
fn udev_rule_running_scripts(p: &Paths) -> Option<PathBuf> {
    for d in &p.udev_rules_dirs {
        let Ok(rd) = fs::read_dir(d) else { continue };
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for f in entries {
            if f.extension().is_some_and(|e| e == "rules")
                && fs::read_to_string(&f).is_ok_and(|t| {
                    t.lines()
                        .any(|l| !l.trim_start().starts_with('#') && l.contains("/xen/scripts/"))
                })
            {
                return Some(f);
            }
        }
    }
    None
}

fn xl_conf(p: &Paths, xl: &Result<Option<XlConf>, String>) -> Check {
    let f = p.xl_conf.display();
    let c = match xl {
        Err(e) => {
            return Check::new("xl-conf", Status::Warn, e.clone())
                .fix("make it readable; xl cannot read it either")
        }
        Ok(None) => {
            return Check::new(
                "xl-conf",
                Status::Ok,
                format!(
                    "{f} is absent: libxl runs the scripts, default vif script vif-bridge, \
                     bridge xenbr0"
                ),
            )
        }
        Ok(Some(c)) => c,
    };
    let mut status = Status::Ok;
    let mut details = Vec::new();
    let mut fixes = Vec::new();
    for e in &c.errors {
        status = status.max(Status::Warn);
        details.push(format!("cannot parse {e}"));
    }
    match c.run_hotplug_scripts() {
        Ok(0) => match udev_rule_running_scripts(p) {
            Some(rule) => {
                status = status.max(Status::Warn);
                details.push(format!(
                    "run_hotplug_scripts=0: udev runs the scripts ({}), not libxl; xenplug \
                     follows libxl's protocol and is tested that way",
                    rule.display()
                ));
                fixes.push(format!("set run_hotplug_scripts=1 in {f}"));
            }
            None => {
                status = Status::Fail;
                details.push(
                    "run_hotplug_scripts=0 and no udev rule runs the scripts: nothing sets up \
                     disks and NICs"
                        .into(),
                );
                fixes.push(format!("set run_hotplug_scripts=1 in {f}"));
            }
        },
        Ok(n) => details.push(format!("run_hotplug_scripts={n}: libxl runs the scripts")),
        Err(v) => {
            status = Status::Fail;
            details.push(format!("run_hotplug_scripts = {v} is not a number"));
            fixes.push(format!("set run_hotplug_scripts=1 in {f}"));
        }
    }
    let script = c.vif_script();
    let names = scripts::names();
    let base = Path::new(script)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_ours = if script.contains('/') {
        fs::canonicalize(script).is_ok_and(|t| t.file_name().is_some_and(|n| n == "xenplug"))
    } else {
        names.contains(&base.as_str())
    };
    if is_ours {
        details.push(format!("vif.default.script = {script} (xenplug)"));
    } else {
        status = status.max(Status::Warn);
        details.push(format!(
            "vif.default.script = {script} is not a xenplug script: every NIC without script= \
             runs it"
        ));
        fixes.push(format!(
            "set vif.default.script to one of {} in {f}, if that is what you want",
            names
                .iter()
                .filter(|n| n.starts_with("vif-"))
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (old, new) in c.deprecated() {
        status = status.max(Status::Warn);
        details.push(format!("{old} is deprecated: use {new}"));
    }
    let summary = match status {
        Status::Ok | Status::Skip => {
            format!("{f}: libxl runs the scripts, default vif script {script}")
        }
        _ => format!("{f} has settings that break or bypass hotplug"),
    };
    let mut ch = Check::new("xl-conf", status, summary).details(details);
    if !fixes.is_empty() {
        ch = ch.fix(fixes.join("; "));
    }
    ch
}

// ------------------------------------------------------------------------------------ network

fn network(p: &Paths, xl: &XlConf) -> Check {
    let net = p.sys.join("class/net");
    let script = Path::new(xl.vif_script())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let f = p.xl_conf.display();
    match script.as_str() {
        "vif-bridge" | "vif-openvswitch" => {
            // vif-openvswitch takes `bridge[.vlan][:trunk…]`.
            let br = if script == "vif-openvswitch" {
                let b = xl.bridge();
                let b = b.split(':').next().unwrap_or(b);
                b.split('.').next().unwrap_or(b)
            } else {
                xl.bridge()
            };
            let mut dev = net.join(br);
            // vif-bridge's legacy translation: a missing `xenbrN` is `ethN` when that is a
            // bridge (Xen's old network-bridge script renamed the uplink so).
            let legacy = br
                .strip_prefix("xenbr")
                .filter(|_| script == "vif-bridge" && !dev.exists())
                .map(|n| format!("eth{n}"))
                .filter(|eth| net.join(eth).join("bridge").is_dir());
            if let Some(eth) = &legacy {
                dev = net.join(eth);
            }
            let is_linux_bridge = dev.join("bridge").is_dir();
            if !dev.exists() {
                return Check::new(
                    "network",
                    Status::Fail,
                    format!(
                        "bridge {br} (the default for {script}) does not exist: every NIC \
                         without bridge= fails to come up"
                    ),
                )
                .fix(if script == "vif-bridge" {
                    format!(
                        "create it (e.g. in /etc/network/interfaces: `auto {br}`, `iface {br} \
                         inet dhcp`, `bridge_ports eth0`), or set vif.default.bridge in {f}"
                    )
                } else {
                    format!("ovs-vsctl add-br {br}, or set vif.default.bridge in {f}")
                });
            }
            match (script.as_str(), is_linux_bridge) {
                ("vif-bridge", true) => Check::new(
                    "network",
                    Status::Ok,
                    match &legacy {
                        Some(eth) => format!(
                            "{br} does not exist, but {eth} is a bridge: vif-bridge uses it"
                        ),
                        None => format!("bridge {br} exists (Linux bridge)"),
                    },
                ),
                ("vif-bridge", false) => Check::new(
                    "network",
                    Status::Fail,
                    format!("{br} exists but is not a Linux bridge: vif-bridge cannot enslave vifs to it"),
                )
                .fix(format!(
                    "make {br} a Linux bridge, or use vif-openvswitch if it is an Open vSwitch bridge"
                )),
                (_, true) => Check::new(
                    "network",
                    Status::Fail,
                    format!("{br} is a Linux bridge, but the default script is vif-openvswitch"),
                )
                .fix(format!("set vif.default.script=\"vif-bridge\" in {f}, or use an Open vSwitch bridge")),
                (_, false) => Check::new(
                    "network",
                    Status::Ok,
                    format!("{br} exists and is not a Linux bridge (Open vSwitch)"),
                ),
            }
        }
        "vif-route" | "vif-nat" => {
            let gw = xl.gatewaydev();
            if net.join(gw).exists() {
                Check::new(
                    "network",
                    Status::Ok,
                    format!("gateway device {gw} ({script}) exists"),
                )
            } else {
                Check::new(
                    "network",
                    Status::Warn,
                    format!(
                        "gateway device {gw} (vif.default.gatewaydev, used by {script}) does not \
                         exist"
                    ),
                )
                .fix(format!(
                    "set vif.default.gatewaydev in {f} to the host's uplink"
                ))
            }
        }
        other => Check::new(
            "network",
            Status::Skip,
            format!("default vif script {other}: no bridge or gateway to check"),
        ),
    }
}

fn nft(p: &Paths, cfg: &Config, xl: &XlConf) -> Check {
    let mode = cfg.antispoof.as_deref().unwrap_or("enforce");
    let nat = xl.vif_script().ends_with("vif-nat");
    if mode == "off" && !nat {
        return Check::new(
            "nft",
            Status::Skip,
            "antispoof = \"off\": the vif scripts add no nftables rules",
        );
    }
    let found = find_program(p, "nft");
    if !nat {
        // The antispoofing chains go to the kernel over netlink: nft only lists them.
        let default = if cfg.antispoof.is_none() {
            ", the default,"
        } else {
            ""
        };
        return Check::new(
            "nft",
            Status::Ok,
            match found {
                Some(n) => format!(
                    "antispoof = \"{mode}\"{default} sends its rules over netlink; {} lists them \
                     (nft list table netdev xenplug)",
                    n.display()
                ),
                None => format!(
                    "antispoof = \"{mode}\"{default} sends its rules over netlink and needs no nft \
                     (install nftables to list them)"
                ),
            },
        );
    }
    let why = "vif-nat (the default vif script) masquerades with nft";
    match found {
        Some(n) => Check::new(
            "nft",
            Status::Ok,
            format!("{} is there: {why}", n.display()),
        ),
        None => Check::new(
            "nft",
            Status::Fail,
            format!(
                "{why}, and nft is not installed: NICs whose ip= lists addresses fail to come up"
            ),
        )
        .fix(format!(
            "apt install nftables, or set vif.default.script to another vif script in {}",
            p.xl_conf.display()
        )),
    }
}

// ------------------------------------------------------------------------------------ block devices

fn loop_control(p: &Paths) -> Check {
    let f = p.dev.join("loop-control");
    match fs::metadata(&f) {
        Ok(m) if m.file_type().is_char_device() => Check::new(
            "loop-control",
            Status::Ok,
            format!("{} is there", f.display()),
        ),
        Ok(_) => Check::new(
            "loop-control",
            Status::Fail,
            format!("{} is not a character device", f.display()),
        )
        .fix("remove it and run `modprobe loop` (it is 10:237)"),
        Err(e) => Check::new(
            "loop-control",
            Status::Fail,
            format!("{}: {e}: file-backed disks cannot be attached", f.display()),
        )
        .fix("modprobe loop (and add `loop` to /etc/modules to load it at boot)"),
    }
}

/// How a kernel module is present.
#[derive(Debug, PartialEq, Eq)]
enum Module {
    Loaded,
    Builtin,
    Available,
    Missing,
}

fn module_base(entry: &str) -> String {
    let file = entry.rsplit('/').next().unwrap_or(entry);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn module_state(p: &Paths, release: Option<&str>, name: &str) -> Module {
    let norm = name.replace('-', "_");
    if p.sys.join("module").join(&norm).exists() {
        return Module::Loaded;
    }
    let Some(rel) = release else {
        return Module::Missing;
    };
    let dir = p.modules_root.join(rel);
    let listed = |file: &str, split: bool| {
        fs::read_to_string(dir.join(file)).is_ok_and(|t| {
            t.lines().any(|l| {
                let entry = if split {
                    l.split(':').next().unwrap_or("")
                } else {
                    l
                };
                !entry.is_empty() && module_base(entry) == norm
            })
        })
    };
    if listed("modules.builtin", false) {
        Module::Builtin
    } else if listed("modules.dep", true) {
        Module::Available
    } else {
        Module::Missing
    }
}

fn modules(p: &Paths) -> Check {
    let release = fs::read_to_string(p.proc_.join("sys/kernel/osrelease"))
        .ok()
        .map(|s| s.trim().to_string());
    let tree = release.as_deref().map(|r| p.modules_root.join(r));
    let have_tree = tree
        .as_ref()
        .is_some_and(|t| t.join("modules.dep").exists());
    let wanted: [(&str, Status, &str); 5] = [
        ("loop", Status::Fail, "file-backed disks"),
        ("xen-blkback", Status::Fail, "every disk backend"),
        ("xen-netback", Status::Fail, "every vif backend"),
        ("nbd", Status::Warn, "block-nbd"),
        ("iscsi_tcp", Status::Warn, "block-iscsi"),
    ];
    let mut status = Status::Ok;
    let mut details = Vec::new();
    let mut missing = Vec::new();
    for (name, severity, what) in wanted {
        let st = module_state(p, release.as_deref(), name);
        let line = match st {
            Module::Loaded => format!("{name}: loaded"),
            Module::Builtin => format!("{name}: built into the kernel"),
            Module::Available => format!("{name}: available, loaded on first use"),
            Module::Missing if !have_tree => {
                status = status.max(Status::Warn);
                format!("{name}: not loaded, and the module tree cannot be read")
            }
            Module::Missing => {
                status = status.max(severity);
                missing.push(name);
                format!("{name}: not in this kernel ({what} cannot work)")
            }
        };
        details.push(line);
    }
    let summary = match status {
        Status::Ok | Status::Skip => {
            "loop, xen-blkback, xen-netback, nbd, iscsi_tcp are there".to_string()
        }
        _ if !have_tree => format!(
            "cannot read the module tree {}",
            tree.map(|t| t.display().to_string())
                .unwrap_or_else(|| "(kernel release unknown)".into())
        ),
        _ => format!("missing kernel modules: {}", missing.join(", ")),
    };
    let mut ch = Check::new("modules", status, summary).details(details);
    if status != Status::Ok {
        ch = ch.fix(
            "install the kernel's modules package (linux-image-<release>) or a kernel that \
             has them; `modprobe <name>` loads one now",
        );
    }
    ch
}

// ------------------------------------------------------------------------------------ directories

/// Can a root script create files in `dir` (or create `dir`)? Probes by creating and removing
/// a file: permission bits do not stop root, a read-only or full filesystem, an immutable
/// directory or a file in the way do.
fn writable_dir(dir: &Path) -> Result<String, String> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            let probe = dir.join(format!(".xenplug-doctor.{}", std::process::id()));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
            {
                Ok(_) => {
                    let _ = fs::remove_file(&probe);
                    Ok(format!("{} is writable", dir.display()))
                }
                Err(e) => Err(format!("cannot create a file in {}: {e}", dir.display())),
            }
        }
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        // Missing, or something on the way is not a directory: find the nearest ancestor that
        // exists and say whether the scripts can create the rest under it.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
        {
            let mut up = dir.parent();
            while let Some(a) = up {
                match fs::metadata(a) {
                    Ok(m) if m.is_dir() => {
                        return match nix::unistd::access(a, nix::unistd::AccessFlags::W_OK) {
                            Ok(()) => Ok(format!(
                                "{} does not exist yet; scripts create it ({} is writable)",
                                dir.display(),
                                a.display()
                            )),
                            Err(e) => Err(format!(
                                "{} does not exist and cannot be created: {}: {e}",
                                dir.display(),
                                a.display()
                            )),
                        };
                    }
                    Ok(_) => {
                        return Err(format!(
                            "{} cannot be created: {} is not a directory",
                            dir.display(),
                            a.display()
                        ))
                    }
                    Err(e)
                        if e.kind() == io::ErrorKind::NotFound
                            || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
                    {
                        up = a.parent()
                    }
                    Err(e) => return Err(format!("{}: {e}", a.display())),
                }
            }
            Err(format!("{}: {e}", dir.display()))
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

fn dir_check(id: &'static str, what: &str, dir: &Path, key: &str, p: &Paths) -> Check {
    match writable_dir(dir) {
        Ok(s) => Check::new(id, Status::Ok, s),
        Err(e) => Check::new(id, Status::Fail, format!("{what}: {e}")).fix(format!(
            "make {} a writable directory on a writable filesystem, or set {key} in {}",
            dir.display(),
            config_path_hint(p)
        )),
    }
}

fn log_dir(cfg: &Config) -> Check {
    let Some(file) = &cfg.log_file else {
        return Check::new("log-dir", Status::Skip, "log_file = \"\": no log file");
    };
    let fix =
        |what: &str| format!("{what}, or set log_file in xenplug.toml (\"\" disables the file)");
    if let Ok(m) = fs::metadata(file) {
        if !m.is_file() {
            return Check::new(
                "log-dir",
                Status::Fail,
                format!("the log file {} is not a regular file", file.display()),
            )
            .fix(fix(&format!("remove {}", file.display())));
        }
        if let Err(e) = fs::OpenOptions::new().append(true).open(file) {
            return Check::new(
                "log-dir",
                Status::Fail,
                format!("cannot append to {}: {e}", file.display()),
            )
            .fix(fix("make it writable"));
        }
    }
    let dir = file.parent().unwrap_or(Path::new("/"));
    match writable_dir(dir) {
        Ok(s) => Check::new(
            "log-dir",
            Status::Ok,
            format!("{s} (log file {})", file.display()),
        ),
        // Scripts do not fail for want of a log file (they warn on stderr); their log is lost.
        Err(e) => Check::new(
            "log-dir",
            Status::Fail,
            format!("log directory: {e}: the hotplug log is lost"),
        )
        .fix(fix(&format!("make {} a writable directory", dir.display()))),
    }
}

fn syslog(p: &Paths, cfg: &Config) -> Check {
    if !cfg.syslog {
        return Check::new("syslog", Status::Skip, "syslog = false");
    }
    let s = &cfg.syslog_socket;
    let r = UnixDatagram::unbound().and_then(|d| d.connect(s));
    match r {
        Ok(()) => Check::new(
            "syslog",
            Status::Ok,
            format!("{} accepts log datagrams", s.display()),
        ),
        Err(e) => Check::new(
            "syslog",
            Status::Warn,
            format!(
                "{}: {e}: the scripts' syslog lines are dropped (they still run)",
                s.display()
            ),
        )
        .fix(format!(
            "run a syslog daemon (systemd-journald provides /dev/log), or set syslog = false in {}",
            config_path_hint(p)
        )),
    }
}

// ------------------------------------------------------------------------------------ leftovers

/// Who holds flocks: (major, minor, inode) → pid, from `/proc/locks` (blocked waiters, `->`,
/// are not holders).
fn lock_holders(proc_: &Path) -> HashMap<(u64, u64, u64), u32> {
    let mut out = HashMap::new();
    let Ok(text) = fs::read_to_string(proc_.join("locks")) else {
        return out;
    };
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.get(1) == Some(&"->") || t.len() < 6 {
            continue;
        }
        let (Ok(pid), Some(dev)) = (t[4].parse::<u32>(), t.get(5)) else {
            continue;
        };
        let parts: Vec<&str> = dev.split(':').collect();
        if parts.len() != 3 {
            continue;
        }
        if let (Ok(ma), Ok(mi), Ok(ino)) = (
            u64::from_str_radix(parts[0], 16),
            u64::from_str_radix(parts[1], 16),
            parts[2].parse::<u64>(),
        ) {
            out.insert((ma, mi, ino), pid);
        }
    }
    out
}

fn cmdline(proc_: &Path, pid: u32) -> String {
    fs::read(proc_.join(pid.to_string()).join("cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// What to do about a record whose backend is gone.
fn record_hint(p: &Paths, file: &Path, rec: Option<&Record>) -> String {
    let rm = format!("rm {}", file.display());
    match rec {
        Some(Record::Loop(l)) => {
            let name = l
                .device
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let backing = p.sys.join("block").join(&name).join("loop/backing_file");
            match fs::read_to_string(&backing) {
                Ok(b) => format!(
                    "{} is still attached to {}: losetup -d {}; {rm}",
                    l.device.display(),
                    b.trim(),
                    l.device.display()
                ),
                Err(_) => format!("{} is no longer attached: {rm}", l.device.display()),
            }
        }
        Some(Record::Nbd(xenplug_block::state::NbdRecord { device, .. })) => {
            let name = device
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if p.sys.join("block").join(&name).join("pid").exists() {
                format!(
                    "{} is still connected: nbd-client -d {}; {rm}",
                    device.display(),
                    device.display()
                )
            } else {
                format!("{} is no longer connected: {rm}", device.display())
            }
        }
        Some(Record::Iscsi(xenplug_block::state::IscsiRecord { iqn, portal, .. })) => format!(
            "if no other domain uses it: iscsiadm -m node -T {iqn} -p {portal} --logout; {rm}"
        ),
        Some(Record::Helper { kind }) => format!("block-{kind} handled it: {rm}"),
        None => format!("unreadable record: {rm}"),
    }
}

fn leftovers(p: &Paths, cfg: &Config, mut xs: Option<&mut Probe>) -> Check {
    let mut left = Vec::new();
    let mut notes = Vec::new();
    let mut unknown = 0usize;
    let mut live = 0usize;
    // Records `block add` left for `block remove`.
    let rec_dir = cfg.state_dir.join(STATE_SUBDIR);
    let mut records: Vec<PathBuf> = fs::read_dir(&rec_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|f| {
                    f.is_file()
                        && !f
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    records.sort();
    for f in &records {
        let text = fs::read_to_string(f).unwrap_or_default();
        let backend = text
            .lines()
            .find_map(|l| l.strip_prefix("backend="))
            .map(str::to_string);
        let rec = Record::from_text(&text);
        let Some(backend) = backend else {
            left.push(format!(
                "{}: no backend= line: {}",
                f.display(),
                record_hint(p, f, rec.as_ref())
            ));
            continue;
        };
        match xs.as_deref_mut().map(|x| x.read(&backend)) {
            Some(Ok(Ok(_))) => live += 1,
            Some(Ok(Err(e))) if e == "ENOENT" => left.push(format!(
                "{}: backend {backend} is gone; {}",
                f.display(),
                record_hint(p, f, rec.as_ref())
            )),
            Some(Ok(Err(e))) => {
                unknown += 1;
                notes.push(format!("{}: reading {backend}: {e}", f.display()));
            }
            Some(Err(e)) => {
                unknown += 1;
                notes.push(format!("{}: reading {backend}: {e}", f.display()));
            }
            None => unknown += 1,
        }
    }
    if unknown > 0 && xs.is_none() {
        notes.push(format!(
            "{unknown} state records in {} not checked: xenstored does not answer",
            rec_dir.display()
        ));
    }
    // Lock files: a holder unlinks its file on release, so a file nobody holds was left by a
    // script that was killed while holding it.
    let holders = lock_holders(&p.proc_);
    let mut locks: Vec<PathBuf> = fs::read_dir(&cfg.lock_dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    locks.sort();
    for f in locks {
        let Some(name) = f.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        // `.<name>.queue` files are never removed, by design; the state records have their own
        // subdirectories.
        if name.starts_with('.') {
            continue;
        }
        let Ok(m) = fs::symlink_metadata(&f) else {
            continue;
        };
        if !m.is_file() {
            continue;
        }
        let key = (
            nix::sys::stat::major(m.dev()),
            nix::sys::stat::minor(m.dev()),
            m.ino(),
        );
        match holders.get(&key) {
            Some(pid) => notes.push(format!(
                "lock {name}: held by pid {pid} ({})",
                cmdline(&p.proc_, *pid)
            )),
            None => left.push(format!(
                "{}: lock file nobody holds (a script was killed while holding it?): rm {}",
                f.display(),
                f.display()
            )),
        }
    }
    if !left.is_empty() {
        let n = left.len();
        left.extend(notes);
        return Check::new(
            "leftovers",
            Status::Warn,
            format!("{n} leftovers of earlier script runs"),
        )
        .details(left)
        .fix("each line says what is left and how to clean it up");
    }
    if unknown > 0 {
        return Check::new(
            "leftovers",
            Status::Warn,
            format!("{unknown} state records could not be checked"),
        )
        .details(notes);
    }
    Check::new(
        "leftovers",
        Status::Ok,
        format!("no leftover state records or lock files ({live} records of live backends)"),
    )
    .details(notes)
}

// ------------------------------------------------------------------------------------ peer

fn ask_peer(p: &Paths) -> io::Result<serde_json::Value> {
    let mut s = UnixStream::connect(&p.peer_control)?;
    s.set_read_timeout(Some(p.timeout))?;
    s.set_write_timeout(Some(p.timeout))?;
    s.write_all(b"summary\n")?;
    let mut buf = Vec::new();
    s.take(1 << 16).read_to_end(&mut buf)?;
    serde_json::from_slice(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn peer(p: &Paths) -> Check {
    let installed = p.peer_units.iter().any(|u| u.exists());
    let sock = p.peer_control.display();
    match ask_peer(p) {
        Ok(v) => {
            let channels = v["channels"].as_u64().unwrap_or(0);
            let states: Vec<(String, u64)> = v["states"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            if v.get("channels").is_none() {
                return Check::new(
                    "peer",
                    Status::Warn,
                    format!("{sock} answered `summary` with {v}"),
                );
            }
            let list = states
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let bad: u64 = states
                .iter()
                .filter(|(k, _)| k == "failed" || k == "rejected")
                .map(|(_, n)| n)
                .sum();
            let summary = format!(
                "xenplug-peer is running: {channels} channels{}",
                if list.is_empty() {
                    String::new()
                } else {
                    format!(" ({list})")
                }
            );
            if bad > 0 {
                Check::new("peer", Status::Warn, summary)
                    .fix("xenplug-peer list shows each VM's state and last error")
            } else {
                Check::new("peer", Status::Ok, summary)
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && !installed => Check::new(
            "peer",
            Status::Skip,
            "xenplug-peer is not installed as a service",
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Check::new(
            "peer",
            Status::Warn,
            format!("xenplug-peer is not running: no {sock}"),
        )
        .fix("systemctl start xenplug-peer; journalctl -u xenplug-peer says why it stopped"),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Check::new(
            "peer",
            Status::Warn,
            format!("nobody answers on {sock}: the daemon died?"),
        )
        .fix("systemctl restart xenplug-peer; journalctl -u xenplug-peer says why it stopped"),
        Err(e) => Check::new(
            "peer",
            Status::Warn,
            format!("xenplug-peer on {sock} did not answer `summary`: {e}"),
        )
        .fix("systemctl status xenplug-peer"),
    }
}
