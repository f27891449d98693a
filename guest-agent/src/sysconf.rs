//! The rest of cloud-config, with cloud-init's results on a Debian guest: `write_files`
//! (`cc_write_files`, deferred ones after the users), `timezone` (`/etc/timezone` and
//! `/etc/localtime`), `ntp` (systemd-timesyncd or chrony, whichever the guest has),
//! `ssh_pwauth` (sshd's `PasswordAuthentication`), `ca_certs` (`update-ca-certificates`) and
//! `final_message`. Files go through the generation's transaction; services are restarted
//! after the generation is in place.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use xenplug_channel::config::{CaCerts, ConfigDoc, Ntp, WriteFile};

use crate::apply::{log_event, After, Run};
use crate::fsutil::{under, Owner};
use crate::tools;

fn id_of(root: &Path, file: &str, name: &str) -> Result<u32> {
    let p = under(root, file);
    let text = fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name)
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .ok_or_else(|| anyhow!("{name:?} is not in {file}"))
}

/// `user` or `user:group` (names) → ids; default root:root.
fn owner(root: &Path, spec: Option<&str>) -> Result<Owner> {
    let spec = spec.unwrap_or("root:root");
    let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(Owner {
        uid: id_of(root, "/etc/passwd", u)?,
        gid: if g.is_empty() {
            // chown user: keeps the group; cloud-init's chownbyname(-1) does the same.
            0
        } else {
            id_of(root, "/etc/group", g)?
        },
    })
}

/// The `write_files` entries with `defer` equal to `deferred`.
pub(crate) fn write_files(doc: &ConfigDoc, deferred: bool, run: &mut Run<'_, '_>) -> Result<()> {
    for (i, f) in doc.write_files.iter().enumerate() {
        if f.defer != deferred {
            continue;
        }
        write_file(f, run).with_context(|| format!("write-files[{i}] ({})", f.path))?;
    }
    Ok(())
}

fn write_file(f: &WriteFile, run: &mut Run<'_, '_>) -> Result<()> {
    let path = under(run.root, &f.path);
    let mut data = f.bytes().map_err(|e| anyhow!(e))?;
    let mode = f.mode().map_err(|e| anyhow!(e))?;
    let own = owner(run.root, f.owner.as_deref())?;
    if f.append {
        match fs::read(&path) {
            Ok(mut old) => {
                old.extend_from_slice(&data);
                data = old;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        }
    }
    if let Some(d) = path.parent() {
        run.txn.create_dir_all(d, 0o755)?;
    }
    if run.txn.write(&path, &data, mode, Some(own))? {
        run.changes.push(format!("file {}", f.path));
        log_event(
            "file-written",
            &[("path", &f.path), ("mode", &format!("{mode:o}"))],
        );
    }
    Ok(())
}

/// `timezone`: `/etc/timezone` and `/etc/localtime` (a symbolic link when it is one or is
/// missing, else a copy), as cloud-init's Debian distro does.
pub(crate) fn timezone(tz: &str, run: &mut Run<'_, '_>) -> Result<()> {
    let zone = format!("/usr/share/zoneinfo/{tz}");
    let zf = under(run.root, &zone);
    if !zf.is_file() {
        bail!("timezone: {tz:?} is not a time zone of this guest ({zone} does not exist)");
    }
    let conf = under(run.root, "/etc/timezone");
    run.write_changed(&conf, &format!("{tz}\n"), 0o644)?;
    let local = under(run.root, "/etc/localtime");
    let meta = fs::symlink_metadata(&local);
    let is_link = meta
        .as_ref()
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(true);
    if is_link {
        let now = fs::read_link(&local).ok();
        if now.as_deref() != Some(Path::new(&zone)) {
            run.txn.symlink(&local, Path::new(&zone))?;
            run.changes.push(format!("/etc/localtime -> {zone}"));
        }
    } else {
        let data = fs::read(&zf).with_context(|| format!("read {}", zf.display()))?;
        if run.txn.write(&local, &data, 0o644, None)? {
            run.changes.push("file /etc/localtime".into());
        }
    }
    Ok(())
}

fn os_id(root: &Path) -> String {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| fs::read_to_string(under(root, p)).ok())
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("ID=")
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        })
        .unwrap_or_default()
}

/// `ntp`: servers and pools for systemd-timesyncd or chrony.
pub(crate) fn ntp(n: &Ntp, run: &mut Run<'_, '_>) -> Result<()> {
    let chrony = ["/usr/sbin/chronyd", "/sbin/chronyd"]
        .iter()
        .any(|p| under(run.root, p).exists());
    let timesyncd = [
        "/lib/systemd/systemd-timesyncd",
        "/usr/lib/systemd/systemd-timesyncd",
    ]
    .iter()
    .any(|p| under(run.root, p).exists());
    let client = match n.ntp_client.as_deref() {
        Some("chrony") if chrony => "chrony",
        Some("systemd-timesyncd") if timesyncd => "systemd-timesyncd",
        Some(c) => bail!(
            "ntp.ntp_client: {c} is not installed in the guest (installing packages is not supported by xenplug-agent)"
        ),
        // cloud-init's Debian order: chrony, then systemd-timesyncd.
        None if chrony => "chrony",
        None if timesyncd => "systemd-timesyncd",
        None => bail!(
            "ntp: neither chrony nor systemd-timesyncd is installed in the guest (installing packages is not supported by xenplug-agent)"
        ),
    };
    let mut pools = n.pools.clone();
    if n.servers.is_empty() && pools.is_empty() {
        // cloud-init's generate_server_names for the distribution.
        let id = os_id(run.root);
        for i in 0..4 {
            pools.push(if id.is_empty() {
                format!("{i}.pool.ntp.org")
            } else {
                format!("{i}.{id}.pool.ntp.org")
            });
        }
    }
    for h in n.servers.iter().chain(pools.iter()) {
        if h.parse::<std::net::IpAddr>().is_err() {
            xenplug_channel::config::validate_hostname(h).map_err(|e| anyhow!("ntp: {e}"))?;
        }
    }
    if client == "systemd-timesyncd" {
        let mut s = String::from("# Written by xenplug-agent.\n[Time]\n");
        let all: Vec<&str> = n
            .servers
            .iter()
            .chain(pools.iter())
            .map(String::as_str)
            .collect();
        let _ = writeln!(s, "NTP={}", all.join(" "));
        let p = under(run.root, "/etc/systemd/timesyncd.conf.d/xenplug-agent.conf");
        run.write_changed(&p, &s, 0o644)?;
        run.after
            .push(After::Restart("systemd-timesyncd.service".into()));
    } else {
        let mut s = String::from("# Written by xenplug-agent.\n");
        for h in &n.servers {
            let _ = writeln!(s, "server {h} iburst");
        }
        for h in &pools {
            let _ = writeln!(s, "pool {h} iburst");
        }
        let p = under(run.root, "/etc/chrony/sources.d/xenplug-agent.sources");
        run.write_changed(&p, &s, 0o644)?;
        // cloud-init replaces chrony.conf with its servers only: the distribution's own
        // `pool`/`server` lines are commented out, and the sources directory read.
        let conf = under(run.root, "/etc/chrony/chrony.conf");
        let text = fs::read_to_string(&conf).unwrap_or_default();
        let mut out = String::new();
        let mut sourcedir = false;
        for line in text.lines() {
            let t = line.trim_start();
            if t.starts_with("pool ") || t.starts_with("server ") || t.starts_with("peer ") {
                let _ = writeln!(out, "#xenplug-agent: {line}");
            } else {
                sourcedir |= t.starts_with("sourcedir /etc/chrony/sources.d");
                let _ = writeln!(out, "{line}");
            }
        }
        if !sourcedir {
            out.push_str("# Added by xenplug-agent.\nsourcedir /etc/chrony/sources.d\n");
        }
        run.write_changed(&conf, &out, 0o644)?;
        run.after.push(After::Restart("chrony.service".into()));
    }
    Ok(())
}

/// `ssh_pwauth`: `PasswordAuthentication` for sshd. With the Debian layout (`Include
/// /etc/ssh/sshd_config.d/*.conf` before any `PasswordAuthentication` line: sshd takes the first
/// value it reads) in a drop-in, else in `sshd_config` itself as cloud-init edits it.
pub(crate) fn ssh_pwauth(on: bool, run: &mut Run<'_, '_>) -> Result<()> {
    let value = if on { "yes" } else { "no" };
    let main = under(run.root, "/etc/ssh/sshd_config");
    let Ok(text) = fs::read_to_string(&main) else {
        run.changes
            .push("ssh_pwauth: sshd is not installed (nothing to configure)".into());
        return Ok(());
    };
    let mut include_first = false;
    for l in text.lines().map(str::trim) {
        let key = l
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if key == "passwordauthentication" {
            break;
        }
        if key == "include" && l.contains("/etc/ssh/sshd_config.d/") {
            include_first = true;
            break;
        }
    }
    if include_first {
        let p = under(run.root, "/etc/ssh/sshd_config.d/50-xenplug-agent.conf");
        run.write_changed(
            &p,
            &format!("# Written by xenplug-agent.\nPasswordAuthentication {value}\n"),
            0o644,
        )?;
    } else {
        let mut out = String::new();
        let mut found = false;
        for line in text.lines() {
            let key = line
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if key == "passwordauthentication" {
                found = true;
                let _ = writeln!(out, "PasswordAuthentication {value}");
            } else {
                let _ = writeln!(out, "{line}");
            }
        }
        if !found {
            let _ = writeln!(out, "PasswordAuthentication {value}");
        }
        let mode = crate::fsutil::mode_owner(&main)
            .map(|m| m.0)
            .unwrap_or(0o644);
        run.write_changed(&main, &out, mode)?;
    }
    run.after.push(After::Reload("ssh.service".into()));
    Ok(())
}

/// `ca_certs`: the certificates in `/usr/local/share/ca-certificates/xenplug-agent-ca-certs.crt`,
/// the distribution's deselected in `/etc/ca-certificates.conf` with `remove_defaults`, then the
/// guest's `update-ca-certificates` (run again after an undo).
pub(crate) fn ca_certs(c: &CaCerts, run: &mut Run<'_, '_>) -> Result<()> {
    // Registered before the first change, so an undo (from memory: newest first; from the
    // journal: after every file) runs it once the certificate files are back.
    crate::journal::log(
        run.txn.journal(),
        crate::journal::Record::Rerun {
            program: "update-ca-certificates".into(),
            args: vec!["--fresh".into()],
        },
    )?;
    let root = run.root.to_path_buf();
    run.txn.on_rollback_run("update-ca-certificates", move |t| {
        if tools::find(&root, "update-ca-certificates").is_none() {
            return Ok(());
        }
        tools::in_guest_ok(t, &root, "update-ca-certificates", &["--fresh".into()]).map(drop)
    });
    let crt = under(
        run.root,
        "/usr/local/share/ca-certificates/xenplug-agent-ca-certs.crt",
    );
    if c.trusted.is_empty() {
        if run.txn.remove(&crt)? {
            run.changes
                .push("removed xenplug-agent-ca-certs.crt".into());
        }
    } else {
        let mut all = String::new();
        for pem in &c.trusted {
            xenplug_channel::config::validate_pem_certificates(pem).map_err(|e| anyhow!(e))?;
            all.push_str(pem.trim());
            all.push('\n');
        }
        run.write_changed(&crt, &all, 0o644)?;
    }
    if c.remove_defaults {
        let conf = under(run.root, "/etc/ca-certificates.conf");
        let text = fs::read_to_string(&conf).unwrap_or_default();
        let mut out = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with('!') {
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(out, "!{t}");
            }
        }
        run.write_changed(&conf, &out, 0o644)?;
    }
    if tools::find(run.root, "update-ca-certificates").is_none() {
        bail!("ca_certs: update-ca-certificates is not installed in the guest (package ca-certificates)");
    }
    let args = ["--fresh".to_string()];
    tools::in_guest_ok(run.tools, run.root, "update-ca-certificates", &args)?;
    run.changes.push("update-ca-certificates".into());
    Ok(())
}

/// `final_message` with cloud-init's substitutions (`$version`, `$timestamp`, `$datasource`,
/// `$uptime`, also as `{{…}}`), printed on the console and logged.
pub(crate) fn final_message(msg: &str, root: &Path) -> String {
    let uptime = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_default();
    let version = format!("xenplug-agent {}", env!("CARGO_PKG_VERSION"));
    let mut text = msg.to_string();
    for (k, v) in [
        ("version", version.as_str()),
        ("timestamp", ts.as_str()),
        ("datasource", "xenplug"),
        ("uptime", uptime.as_str()),
    ] {
        text = text
            .replace(&format!("${k}"), v)
            .replace(&format!("{{{{{k}}}}}"), v)
            .replace(&format!("{{{{ {k} }}}}"), v);
    }
    crate::accounts::to_console(root, &format!("{text}\n"));
    log_event("final-message", &[("message", &text)]);
    text
}
