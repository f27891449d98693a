//! Real adapters of the applier's traits: `nft`, /proc/sys, xenstore through the hotplug
//! context, `ovs-vsctl`, and dnsmasq's dhcp-hosts file.

use std::path::PathBuf;

use xenplug_hotplug::Context;

use std::io::Write;
use std::process::{Command, Stdio};

use crate::apply::{Dhcp, Firewall, Ovs, Sysctl, XsWrite};
use crate::types::{NftBatch, StepError};

fn err(message: impl Into<String>) -> StepError {
    StepError {
        message: message.into(),
        gone: false,
        ..Default::default()
    }
}

/// The real firewall: runs `nft -j -f -` with the batch on stdin.
#[derive(Debug, Clone)]
pub struct NftCli {
    /// The `nft` program.
    pub program: std::path::PathBuf,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli {
            program: "nft".into(),
        }
    }
}

impl Firewall for NftCli {
    fn apply(&mut self, batch: &NftBatch) -> Result<(), StepError> {
        let fail = |message: String| StepError {
            message,
            gone: false,
            ..Default::default()
        };
        let mut child = Command::new(&self.program)
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StepError {
                // No nft at all: no rule of ours can exist, so a removal is done.
                gone: batch.removal && e.kind() == std::io::ErrorKind::NotFound,
                ..fail(format!(
                    "cannot run {} (antispoofing and masquerading need nftables; \
                     antispoof=off disables antispoofing): {e}",
                    self.program.display()
                ))
            })?;
        let text = batch.json.to_string();
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| fail(format!("writing to nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| fail(format!("waiting for nft: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let first = match err
            .lines()
            .find(|l| l.starts_with("Error"))
            .unwrap_or(err.trim())
        {
            "" => format!("exited with {}", out.status),
            line => line.to_string(),
        };
        Err(StepError {
            gone: batch.removal && err.contains("No such file or directory"),
            message: format!("nft ({}): {first}", batch.what),
            ..Default::default()
        })
    }
}

/// Sysctls under a /proc/sys root (injected for tests). The network entries follow the calling
/// thread's network namespace.
#[derive(Debug, Clone)]
pub struct ProcSys {
    /// Usually `/proc/sys`.
    pub root: PathBuf,
}

impl Default for ProcSys {
    fn default() -> Self {
        ProcSys {
            root: "/proc/sys".into(),
        }
    }
}

impl Sysctl for ProcSys {
    fn read(&mut self, key: &str) -> Result<String, StepError> {
        let p = self.root.join(key);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(|e| StepError {
                gone: e.kind() == std::io::ErrorKind::NotFound,
                message: format!("read {}: {e}", p.display()),
                ..Default::default()
            })
    }

    fn write(&mut self, key: &str, value: &str) -> Result<(), StepError> {
        let p = self.root.join(key);
        std::fs::write(&p, value).map_err(|e| StepError {
            gone: e.kind() == std::io::ErrorKind::NotFound,
            message: format!("write {} to {}: {e}", value, p.display()),
            ..Default::default()
        })
    }
}

/// Xenstore through the hotplug [`Context`]'s connection (paths as given: absolute, or relative
/// to this domain's home).
#[allow(missing_debug_implementations)]
pub struct CtxXs<'c, 'x> {
    /// The context.
    pub ctx: &'c Context<'x>,
}

impl XsWrite for CtxXs<'_, '_> {
    fn read(&mut self, path: &str) -> Result<Option<String>, StepError> {
        self.ctx
            .xs
            .read(path)
            .map_err(|e| err(format!("xenstore-read {path} failed: {e}")))
    }
    fn write(&mut self, path: &str, value: &str) -> Result<(), StepError> {
        self.ctx
            .xs
            .write(path, value)
            .map_err(|e| err(format!("Writing {path} {value} to xenstore failed: {e}")))
    }
    fn rm(&mut self, path: &str) -> Result<(), StepError> {
        self.ctx
            .xs
            .rm(path)
            .map_err(|e| err(format!("xenstore-rm {path} failed: {e}")))
    }
}

/// `ovs-vsctl` run with the script's environment, normalised as the hotplug runtime does for
/// every child (Xen's PATH first, `LANG=POSIX`); `OVS_RUNDIR` and friends pass through.
#[derive(Debug, Clone)]
pub struct OvsCli {
    /// The program.
    pub program: PathBuf,
    /// The script's environment.
    pub env: std::collections::BTreeMap<String, String>,
    /// Xen's libexec bin directory (part of the children's PATH).
    pub libexec_bin: PathBuf,
}

impl OvsCli {
    /// For the script running in `ctx`.
    pub fn for_context(ctx: &Context<'_>) -> Self {
        OvsCli {
            program: "ovs-vsctl".into(),
            env: ctx.inv.raw_env.clone(),
            libexec_bin: ctx.config.libexec_bin_dir(),
        }
    }
}

impl Ovs for OvsCli {
    fn vsctl(&mut self, args: &[String]) -> Result<(), StepError> {
        let out = xenplug_hotplug::command::command_in(&self.program, &self.env, &self.libexec_bin)
            .args(args)
            .output()
            .map_err(|e| err(format!("cannot run {}: {e}", self.program.display())))?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(err(format!(
                "ovs-vsctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                stderr.trim()
            )))
        }
    }
}

/// dnsmasq's `dhcp-hostsfile`: one `mac,ip,hostname` line per vif, keyed by hostname; after a
/// change dnsmasq (pid from `pidfile`) gets SIGHUP, which makes it re-read the file.
#[derive(Debug, Clone)]
pub struct DnsmasqHosts {
    /// The hosts file (dnsmasq: `dhcp-hostsfile=<file>`).
    pub file: PathBuf,
    /// dnsmasq's pid file.
    pub pidfile: PathBuf,
}

impl DnsmasqHosts {
    fn lines(&self) -> Result<Vec<String>, StepError> {
        match std::fs::read_to_string(&self.file) {
            Ok(s) => Ok(s.lines().map(str::to_string).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(err(format!("read {}: {e}", self.file.display()))),
        }
    }

    fn keyed(line: &str, key: &str) -> bool {
        line.rsplit(',').next() == Some(key)
    }

    /// SIGHUP dnsmasq; a missing pid file or process is not an error (nothing to reload).
    fn reload(&self) -> Result<(), StepError> {
        let Ok(text) = std::fs::read_to_string(&self.pidfile) else {
            return Ok(());
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return Err(err(format!("{}: not a pid", self.pidfile.display())));
        };
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        ) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(err(format!("SIGHUP dnsmasq ({pid}): {e}"))),
        }
    }
}

impl Dhcp for DnsmasqHosts {
    fn set_host(&mut self, key: &str, line: Option<&str>) -> Result<(), StepError> {
        let old = self.lines()?;
        let mut new: Vec<String> = old
            .iter()
            .filter(|l| !Self::keyed(l, key))
            .cloned()
            .collect();
        if let Some(l) = line {
            new.push(l.to_string());
        }
        if new == old {
            return Ok(());
        }
        let mut text = new.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        // dnsmasq reads the file after dropping root: world-readable, as before.
        let dir = self.file.parent().filter(|d| !d.as_os_str().is_empty());
        dir.map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| xenplug_atomic_write::write(&self.file, text.as_bytes(), 0o644, None))
            .map_err(|e| err(format!("write {}: {e}", self.file.display())))?;
        self.reload()
    }

    fn host(&mut self, key: &str) -> Result<Option<String>, StepError> {
        Ok(self.lines()?.into_iter().find(|l| Self::keyed(l, key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhcp_hosts_file_entries() {
        let d = tempfile::tempdir().unwrap();
        let mut h = DnsmasqHosts {
            file: d.path().join("sub/hosts"),
            pidfile: d.path().join("none.pid"),
        };
        h.set_host("dom5", Some("00:16:3e:00:00:01,10.0.5.1,dom5"))
            .unwrap();
        h.set_host("dom6-2", Some("00:16:3e:00:00:02,10.0.6.2,dom6-2"))
            .unwrap();
        h.set_host("dom5", Some("00:16:3e:00:00:03,10.0.5.1,dom5"))
            .unwrap();
        let text = std::fs::read_to_string(&h.file).unwrap();
        assert_eq!(
            text,
            "00:16:3e:00:00:02,10.0.6.2,dom6-2\n00:16:3e:00:00:03,10.0.5.1,dom5\n"
        );
        assert_eq!(
            h.host("dom6-2").unwrap().as_deref(),
            Some("00:16:3e:00:00:02,10.0.6.2,dom6-2")
        );
        h.set_host("dom6-2", None).unwrap();
        h.set_host("dom6-2", None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&h.file).unwrap(),
            "00:16:3e:00:00:03,10.0.5.1,dom5\n"
        );
    }

    #[test]
    fn dhcp_reload_signals_the_pid() {
        let d = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(d.path().join("pid"), child.id().to_string()).unwrap();
        let mut h = DnsmasqHosts {
            file: d.path().join("hosts"),
            pidfile: d.path().join("pid"),
        };
        h.set_host("dom1", Some("00:16:3e:00:00:01,10.0.1.1,dom1"))
            .unwrap();
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGHUP));
    }

    #[test]
    fn proc_sys_under_a_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("net/ipv4/conf/vif1.0")).unwrap();
        std::fs::write(d.path().join("net/ipv4/conf/vif1.0/proxy_arp"), "0\n").unwrap();
        let mut s = ProcSys {
            root: d.path().into(),
        };
        s.write("net/ipv4/conf/vif1.0/proxy_arp", "1").unwrap();
        assert_eq!(s.read("net/ipv4/conf/vif1.0/proxy_arp").unwrap(), "1");
        assert!(
            s.write("net/ipv4/conf/gone/proxy_arp", "1")
                .unwrap_err()
                .gone
        );
    }
}
