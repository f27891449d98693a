//! `xen-channel-setup`: name a Xen PV channel's tty. Gather (udev environment, sysfs `nodename`,
//! xenstore `device/console/<N>/name`) → validate → create or remove
//! `/dev/xen-channel/<name>` → `../hvc<N>`. The tty itself is never opened: opening it would
//! move queued ring data into the line discipline, and the last close would discard it.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xenplug_xenstore::XsOps;

/// Directory of the channel links, relative to the dev directory.
pub const CHANNEL_DIR: &str = "xen-channel";

/// What udev tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdevEvent {
    /// `ACTION`.
    pub action: String,
    /// `DEVPATH`, e.g. `/devices/console-1`.
    pub devpath: String,
}

/// What was done, printed as `KEY=VALUE` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// A link was created (or already right).
    Linked {
        /// The channel name.
        name: String,
        /// The link path.
        link: PathBuf,
        /// The tty it points to (`../hvcN`).
        target: String,
    },
    /// Links to `../hvcN` were removed.
    Removed {
        /// The removed links.
        links: Vec<PathBuf>,
    },
    /// Nothing to do for this action.
    Ignored,
}

/// Validate a channel name: 1–255 characters of `[A-Za-z0-9._-]` (the reverse-DNS charset),
/// not starting with `.` and without `..` — so never a path, a hidden file or a traversal.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("channel name must be 1-255 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "channel name contains {:?}: only letters, digits, '.', '_' and '-' are allowed",
            c
        ));
    }
    if name.starts_with('.') || name.contains("..") {
        return Err("channel name must not start with '.' or contain '..'".into());
    }
    Ok(())
}

/// The console number N of `DEVPATH=/devices/console-N` (1–9: hvc_xen uses only the last digit
/// and rejects 0, which is the primary console).
pub fn console_number(devpath: &str) -> Result<u8> {
    let kernel = devpath.rsplit('/').next().unwrap_or("");
    let n = kernel
        .strip_prefix("console-")
        .with_context(|| format!("DEVPATH {devpath} is not a xen console device"))?;
    match n.as_bytes() {
        [d @ b'1'..=b'9'] => Ok(d - b'0'),
        _ => bail!("console number {n:?} in {devpath} is not a channel (1-9)"),
    }
}

/// Handle one event. `sysfs` is the sysfs mount (`/sys`), `dev` the device directory (`/dev`).
/// `xs` is needed for add/bind only (remove works when xenstore is gone).
pub fn run(ev: &UdevEvent, sysfs: &Path, dev: &Path, xs: Option<&dyn XsOps>) -> Result<Done> {
    let n = console_number(&ev.devpath)?;
    let dir = dev.join(CHANNEL_DIR);
    let target = format!("../hvc{n}");
    match ev.action.as_str() {
        "add" | "bind" | "change" => {
            let node_file = sysfs
                .join(ev.devpath.trim_start_matches('/'))
                .join("nodename");
            let nodename = fs::read_to_string(&node_file)
                .with_context(|| format!("read {}", node_file.display()))?;
            let nodename = nodename.trim();
            let want = format!("device/console/{n}");
            if nodename != want {
                bail!(
                    "{} says {nodename:?}, expected {want:?}",
                    node_file.display()
                );
            }
            let key = format!("{nodename}/name");
            let xs = xs.context("no xenstore connection")?;
            let name = xs
                .read(&key)
                .with_context(|| format!("read xenstore {key}"))?
                .with_context(|| format!("xenstore {key} does not exist (not a named channel)"))?;
            validate_name(&name).map_err(|e| anyhow::anyhow!("xenstore {key} = {name:?}: {e}"))?;
            if !dev.join(format!("hvc{n}")).exists() {
                eprintln!(
                    "xen-channel-setup: warning: {}/hvc{n} does not exist (yet); linking anyway",
                    dev.display()
                );
            }
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .with_context(|| format!("create {}", dir.display()))?;
            let link = dir.join(&name);
            if fs::read_link(&link).ok().as_deref() == Some(Path::new(&target)) {
                return Ok(Done::Linked { name, link, target });
            }
            // Atomic: a temporary link renamed over the final name.
            let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp)
                .with_context(|| format!("symlink {} -> {target}", tmp.display()))?;
            if let Err(e) = fs::rename(&tmp, &link) {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("rename to {}", link.display()));
            }
            Ok(Done::Linked { name, link, target })
        }
        "remove" | "unbind" => {
            // xenstore may already be gone: remove every link that points at our tty.
            let mut links = Vec::new();
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Done::Removed { links })
                }
                Err(e) => return Err(e).with_context(|| format!("list {}", dir.display())),
            };
            for ent in entries {
                let p = ent?.path();
                if fs::read_link(&p).ok().as_deref() == Some(Path::new(&target)) {
                    fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))?;
                    links.push(p);
                }
            }
            Ok(Done::Removed { links })
        }
        _ => Ok(Done::Ignored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("org.xenplug.agent.0").is_ok());
        assert!(validate_name("org.my-cloud_x.v1").is_ok());
        for bad in [
            "", ".", "..", "a/b", "../x", "a..b", ".hidden", "a b", "a\nb", "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(console_number("/devices/console-1").unwrap(), 1);
        assert_eq!(console_number("/devices/console-9").unwrap(), 9);
        assert!(console_number("/devices/console-0").is_err());
        assert!(console_number("/devices/console-10").is_err());
        assert!(console_number("/devices/vbd-51712").is_err());
    }
}
