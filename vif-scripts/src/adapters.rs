//! Real adapters of the applier's traits: `nft`, /proc/sys, xenstore through the hotplug
//! context, `ovs-vsctl`, and dnsmasq's dhcp-hosts file.

use std::path::PathBuf;

use xenplug_hotplug::Context;

use std::process::Command;
use std::time::Instant;

use xenplug_hotplug::command::output_until;

use crate::apply::{Dhcp, Firewall, Ovs, Sysctl, XsWrite};
use crate::types::{NftBatch, NftCmd, StepError};
use xenplug_netlink::nft::{key_bytes, Nft, Removal};

fn err(message: impl Into<String>) -> StepError {
    StepError {
        message: message.into(),
        gone: false,
        ..Default::default()
    }
}

/// The real firewall. A set-up batch goes to the kernel over netlink as one transaction
/// ([`crate::nft_netlink::compile`], [`xenplug_netlink::nft::Nft::apply`]: no process), unless
/// it holds what the compiler does not know (vif-nat's masquerading) or an `nft` program was
/// named (`netlink` false): then `nft -f -` runs with it on stdin (nft's own syntax: Debian
/// 12's nft 1.0.6 cannot express the link-local sets in JSON). A removal batch is taken away
/// over netlink ([`removal_over_netlink`], [`xenplug_netlink::nft::Nft::remove`]: what is gone
/// left out). A set's elements are read over netlink, written as nft reads them.
#[derive(Debug, Clone)]
pub struct NftCli {
    /// The `nft` program.
    pub program: std::path::PathBuf,
    /// Set-up batches over netlink when the compiler knows them (the default; false when the
    /// host names an `nft` program of its own).
    pub netlink: bool,
    /// Kill `nft` if it is still running then (the script's deadline); `None`: no bound.
    pub deadline: Option<Instant>,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli {
            program: "nft".into(),
            netlink: true,
            deadline: None,
        }
    }
}

impl NftCli {
    fn spawn_error(&self, removal: bool, e: std::io::Error) -> StepError {
        StepError {
            // No nft at all: no rule of ours can exist, so a removal is done.
            gone: removal && e.kind() == std::io::ErrorKind::NotFound,
            ..err(format!(
                "cannot run {} ({NEEDS_NFTABLES}): {e}",
                self.program.display()
            ))
        }
    }
}

/// What a host without nftables is told.
const NEEDS_NFTABLES: &str =
    "antispoofing and masquerading need nftables; antispoof=off disables antispoofing";

/// The first error line of nft's stderr.
fn nft_error(stderr: &str, status: std::process::ExitStatus) -> String {
    match stderr
        .lines()
        .find(|l| l.contains("Error"))
        .unwrap_or(stderr.trim())
    {
        "" => format!("exited with {status}"),
        line => line.to_string(),
    }
}

/// A bound far enough away to mean "none".
fn no_bound() -> Instant {
    Instant::now() + std::time::Duration::from_secs(24 * 3600)
}

/// A removal batch as netlink removals ([`xenplug_netlink::nft::Nft::remove`]): its deletions
/// in order, without the additions that only make them unconditional for `nft -f` (the table,
/// the chain, the set, the elements: the netlink removal leaves out what is gone instead).
/// `None` for a batch with anything else (rules, a hooked chain, elements of a set whose key
/// is not a link-local address): that one goes to `nft`.
pub fn removal_over_netlink(cmds: &[NftCmd]) -> Option<Vec<Removal>> {
    use crate::firewall::CLAIMED_SET;
    let keys = |set: &str, elems: &[String]| -> Option<Vec<Vec<u8>>> {
        // Only the link-local sets: 128-bit keys.
        (set == CLAIMED_SET || set.ends_with("-ll6"))
            .then(|| {
                elems
                    .iter()
                    .map(|e| key_bytes(e, 16))
                    .collect::<Option<Vec<_>>>()
            })
            .flatten()
    };
    let mut out = Vec::new();
    for (i, c) in cmds.iter().enumerate() {
        match c {
            NftCmd::AddTable { .. } | NftCmd::AddSet { .. } => {}
            NftCmd::AddChain { hook: None, .. } => {}
            NftCmd::DeleteChain {
                family,
                table,
                chain,
            } => out.push(Removal::Chain {
                family: family.to_string(),
                table: table.clone(),
                chain: chain.clone(),
            }),
            // Added only to be deleted right after (the same elements, next command).
            NftCmd::AddElements {
                family,
                table,
                set,
                elems,
            } => match cmds.get(i + 1) {
                Some(NftCmd::DeleteElements {
                    family: f,
                    table: t,
                    set: s,
                    elems: e,
                }) if (f, t, s, e) == (family, table, set, elems) => {}
                _ => return None,
            },
            NftCmd::DeleteElements {
                family,
                table,
                set,
                elems,
            } => out.push(Removal::Elements {
                family: family.to_string(),
                table: table.clone(),
                set: set.clone(),
                keys: keys(set, elems)?,
            }),
            NftCmd::DeleteSet { family, table, set } => out.push(Removal::Set {
                family: family.to_string(),
                table: table.clone(),
                set: set.clone(),
            }),
            NftCmd::AddChain { hook: Some(_), .. }
            | NftCmd::FlushChain { .. }
            | NftCmd::AddRule { .. } => return None,
        }
    }
    Some(out)
}

impl NftCli {
    /// A removal over netlink: one transaction of what still exists, tried again once if
    /// something vanished between the look and the transaction.
    fn remove_over_netlink(&self, batch: &NftBatch, items: &[Removal]) -> Result<(), StepError> {
        // Gone twice in a row (something keeps taking it away): already gone, as `nft`'s
        // "No such file or directory" was.
        let failed = |e: xenplug_netlink::Error| StepError {
            gone: no_nftables(&e) || e.is_gone(),
            message: format!("nftables ({}) over netlink: {e}", batch.what),
            ..Default::default()
        };
        let mut nft = Nft::open().map_err(failed)?;
        match nft.remove(items) {
            Err(e) if e.is_gone() => nft.remove(items).map(drop).map_err(failed),
            r => r.map(drop).map_err(failed),
        }
    }
}

impl Firewall for NftCli {
    fn apply(&mut self, batch: &NftBatch) -> Result<(), StepError> {
        // Removals without a process (issue 21): deletions need no grammar.
        if batch.removal {
            if let Some(items) = removal_over_netlink(&batch.cmds) {
                return self.remove_over_netlink(batch, &items);
            }
        } else if self.netlink {
            // A set-up batch the compiler knows: one transaction, no process (issue 21).
            if let Ok(msgs) = crate::nft_netlink::compile(&batch.cmds) {
                return Nft::open().and_then(|mut n| n.apply(msgs)).map_err(|e| {
                    err(if no_nftables(&e) {
                        format!(
                            "nftables ({}) over netlink: {e} ({NEEDS_NFTABLES})",
                            batch.what
                        )
                    } else {
                        format!("nftables ({}) over netlink: {e}", batch.what)
                    })
                });
            }
        }
        let text = batch.text();
        let out = output_until(
            Command::new(&self.program).args(["-f", "-"]),
            Some(text.as_bytes()),
            self.deadline.unwrap_or_else(no_bound),
        )
        .map_err(|e| self.spawn_error(batch.removal, e))?
        .ok_or_else(|| {
            err(format!(
                "nft ({}) did not finish before the script's deadline and was killed",
                batch.what
            ))
        })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(StepError {
            gone: batch.removal && stderr.contains("No such file or directory"),
            message: format!("nft ({}): {}", batch.what, nft_error(&stderr, out.status)),
            ..Default::default()
        })
    }

    fn elements(&mut self, family: &str, table: &str, set: &str) -> Result<Vec<String>, StepError> {
        // Over netlink, not `nft -j list set`: one socket instead of a process (issue 21).
        match Nft::open().and_then(|mut n| n.set_elements(family, table, set)) {
            Ok(keys) => Ok(keys
                .iter()
                .map(|k| xenplug_netlink::nft::key_hex(k))
                .collect()),
            // No such table or set; or no nftables in this kernel (the nfnetlink subsystem or
            // the socket family missing): no set of ours can exist either.
            Err(e) if e.is_gone() || no_nftables(&e) => Err(StepError {
                gone: true,
                message: format!("no set {family} {table} {set}: {e}"),
                ..Default::default()
            }),
            Err(e) => Err(err(format!("cannot list set {family} {table} {set}: {e}"))),
        }
    }
}

/// True when the kernel has no nftables to ask.
fn no_nftables(e: &xenplug_netlink::Error) -> bool {
    matches!(
        e.errno(),
        Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT)
    )
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
    /// Kill `ovs-vsctl` if it is still running then (the script's deadline); `None`: no bound.
    pub deadline: Option<Instant>,
}

impl OvsCli {
    /// For the script running in `ctx`.
    pub fn for_context(ctx: &Context<'_>) -> Self {
        OvsCli {
            program: "ovs-vsctl".into(),
            env: ctx.inv.raw_env.clone(),
            libexec_bin: ctx.config.libexec_bin_dir(),
            deadline: Some(ctx.deadline()),
        }
    }
}

impl Ovs for OvsCli {
    fn vsctl(&mut self, args: &[String]) -> Result<(), StepError> {
        let out = output_until(
            xenplug_hotplug::command::command_in(&self.program, &self.env, &self.libexec_bin)
                .args(args),
            None,
            self.deadline.unwrap_or_else(no_bound),
        )
        .map_err(|e| err(format!("cannot run {}: {e}", self.program.display())))?
        .ok_or_else(|| {
            err(format!(
                "ovs-vsctl {} did not finish before the script's deadline and was killed",
                args.join(" ")
            ))
        })?;
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

    fn external_ids(
        &mut self,
        name: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, StepError> {
        let cond = format!("name={}", crate::scripts::openvswitch::ovs_quote(name));
        let args = [
            "--timeout=30",
            "--format=json",
            "--",
            "--columns=external_ids",
            "find",
            "Interface",
            cond.as_str(),
        ];
        let out = xenplug_hotplug::command::command_in(&self.program, &self.env, &self.libexec_bin)
            .args(args)
            .output()
            .map_err(|e| err(format!("cannot run {}: {e}", self.program.display())))?;
        if !out.status.success() {
            return Err(err(format!(
                "ovs-vsctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        parse_external_ids(&out.stdout)
            .map_err(|e| err(format!("ovs-vsctl {}: {e}", args.join(" "))))
    }
}

/// The `external_ids` map of the first row of `ovs-vsctl --format=json --columns=external_ids
/// find …` (`None` when no row matched).
pub fn parse_external_ids(
    json: &[u8],
) -> Result<Option<std::collections::BTreeMap<String, String>>, String> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let Some(row) = v["data"].as_array().and_then(|rows| rows.first()) else {
        return Ok(None);
    };
    let pairs = row[0][1]
        .as_array()
        .ok_or_else(|| format!("not a map: {row}"))?;
    Ok(Some(
        pairs
            .iter()
            .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
            .collect(),
    ))
}

/// dnsmasq's `dhcp-hostsfile`: one `mac,ip,hostname` line per vif, keyed by hostname; after a
/// change dnsmasq (pid from `pidfile`) gets SIGHUP, which makes it re-read the file.
///
/// The pid file is not trusted: only a pid above 1 whose process is called `dnsmasq`
/// (`/proc/<pid>/comm`) is signalled. A stale file (dnsmasq gone, its pid reused by another
/// process) then signals nobody, and `0`, `1` or `-1` (a process group, init, every process)
/// are refused.
#[derive(Debug, Clone)]
pub struct DnsmasqHosts {
    /// The hosts file (dnsmasq: `dhcp-hostsfile=<file>`).
    pub file: PathBuf,
    /// dnsmasq's pid file.
    pub pidfile: PathBuf,
    /// Where `/proc` is (injected for tests).
    pub proc: PathBuf,
}

/// The pid a dnsmasq pid file holds, if it is one dnsmasq could have: a decimal number above 1.
pub fn dnsmasq_pid(text: &str) -> Option<i32> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<i32>().ok().filter(|p| *p > 1)
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

    /// SIGHUP dnsmasq; a missing pid file or process, or a process that is not dnsmasq (a
    /// stale pid file), is not an error: there is no dnsmasq to reload.
    fn reload(&self) -> Result<(), StepError> {
        let Ok(text) = std::fs::read_to_string(&self.pidfile) else {
            return Ok(());
        };
        let Some(pid) = dnsmasq_pid(&text) else {
            return Err(err(format!(
                "{}: '{}' is not a dnsmasq pid (a number above 1); nothing signalled",
                self.pidfile.display(),
                text.trim()
            )));
        };
        let comm = std::fs::read_to_string(self.proc.join(pid.to_string()).join("comm"));
        match comm.as_deref().map(str::trim) {
            Ok("dnsmasq") => {}
            // No such process, or another program: a stale pid file.
            _ => return Ok(()),
        }
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
    fn removal_batches_go_over_netlink_and_others_to_nft() {
        let claims = vec![
            "0xfe8000000000000002163efffe123456".to_string(),
            "5".to_string(),
        ];
        let items = removal_over_netlink(&crate::firewall::remove_batch("vif5.0", &claims).cmds)
            .expect("a vif's removal goes over netlink");
        let s = |x: &str| x.to_string();
        let mut five = vec![0u8; 16];
        five[15] = 5;
        assert_eq!(
            items,
            vec![
                Removal::Chain {
                    family: s("netdev"),
                    table: s("xenplug"),
                    chain: s("vif5.0")
                },
                Removal::Elements {
                    family: s("netdev"),
                    table: s("xenplug"),
                    set: s("ll6-claimed"),
                    keys: vec![
                        0xfe80_0000_0000_0000_0216_3eff_fe12_3456u128
                            .to_be_bytes()
                            .to_vec(),
                        five
                    ],
                },
                Removal::Set {
                    family: s("netdev"),
                    table: s("xenplug"),
                    set: s("vif5.0-ll6")
                },
            ]
        );
        // Without claims: the chain and the vif's set.
        assert_eq!(
            removal_over_netlink(&crate::firewall::remove_batch("vif5.0", &[]).cmds)
                .unwrap()
                .len(),
            2
        );
        // vif-nat's masquerade chain.
        assert_eq!(
            removal_over_netlink(&crate::scripts::nat::nat_remove_batch("vif5.0").cmds),
            Some(vec![Removal::Chain {
                family: s("ip"),
                table: s(crate::scripts::nat::NAT_TABLE),
                chain: s("nat-vif5.0")
            }])
        );
        // A set-up batch (rules, a hooked chain) is nft's; its undo is a removal.
        let addrs = [crate::types::Net::parse("10.0.0.5").unwrap()];
        let up = crate::firewall::vif_batch(&crate::firewall::Antispoof {
            chain: "vif5.0",
            device: "vif5.0",
            addrs: &addrs,
            mac: Some([0, 0x16, 0x3e, 0, 0, 5]),
            mode: crate::types::Mode::Enforce,
            ethertypes: &[],
        })
        .unwrap()
        .unwrap();
        assert_eq!(removal_over_netlink(&up.cmds), None);
        assert!(removal_over_netlink(&up.undo.unwrap().cmds).is_some());
        // An element nft could not have listed: nft's, with its own error.
        assert_eq!(
            removal_over_netlink(
                &crate::firewall::remove_batch("vif5.0", &["fe80::1".to_string()]).cmds
            ),
            None
        );
    }

    #[test]
    fn ovs_external_ids_from_find_json() {
        let row = br#"{"data":[[["map",[["attached-mac","00:16:3e:00:05:00"],["xenplug-backend","backend/vif/5/0"]]]]],"headings":["external_ids"]}"#;
        let ids = parse_external_ids(row).unwrap().unwrap();
        assert_eq!(ids["xenplug-backend"], "backend/vif/5/0");
        assert_eq!(ids.len(), 2);
        let empty = br#"{"data":[[["map",[]]]],"headings":["external_ids"]}"#;
        assert!(parse_external_ids(empty).unwrap().unwrap().is_empty());
        let none = br#"{"data":[],"headings":["external_ids"]}"#;
        assert_eq!(parse_external_ids(none).unwrap(), None);
        assert!(parse_external_ids(b"garbage").is_err());
    }

    #[test]
    fn dhcp_hosts_file_entries() {
        let d = tempfile::tempdir().unwrap();
        let mut h = DnsmasqHosts {
            file: d.path().join("sub/hosts"),
            pidfile: d.path().join("none.pid"),
            proc: "/proc".into(),
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

    /// A process called `dnsmasq` (a copy of `sleep`) that sleeps, returned once it has
    /// exec'd (until then its `comm` is still this test's).
    fn fake_dnsmasq(dir: &std::path::Path) -> std::process::Child {
        let exe = dir.join("dnsmasq");
        std::fs::copy(crate::adapters::tests::which("sleep"), &exe).unwrap();
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("30");
        default_sighup(&mut cmd);
        let child = cmd.spawn().unwrap();
        let comm = format!("/proc/{}/comm", child.id());
        xenplug_testkit::wait_until(
            "the fake dnsmasq's exec",
            std::time::Duration::from_secs(10),
            || std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "dnsmasq"),
        );
        child
    }

    /// SIGHUP's default action in the child: an ignored SIGHUP (a test run under `nohup`)
    /// survives `exec`, and the child would outlive the signal these tests look for.
    pub(crate) fn default_sighup(cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
    }

    pub(crate) fn which(p: &str) -> PathBuf {
        ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(p))
            .find(|p| p.exists())
            .expect("sleep")
    }

    /// The signal `child` died of, after we send it SIGTERM: SIGHUP if it had one pending
    /// (signals are delivered lowest number first), else SIGTERM.
    fn first_signal(mut child: std::process::Child) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        child.wait().unwrap().signal()
    }

    #[test]
    fn dhcp_reload_signals_dnsmasq() {
        let d = tempfile::tempdir().unwrap();
        let child = fake_dnsmasq(d.path());
        std::fs::write(d.path().join("pid"), format!("{}\n", child.id())).unwrap();
        let mut h = DnsmasqHosts {
            file: d.path().join("hosts"),
            pidfile: d.path().join("pid"),
            proc: "/proc".into(),
        };
        h.set_host("dom1", Some("00:16:3e:00:00:01,10.0.1.1,dom1"))
            .unwrap();
        assert_eq!(first_signal(child), Some(libc::SIGHUP));
    }

    #[test]
    fn a_stale_pid_file_signals_nobody() {
        let d = tempfile::tempdir().unwrap();
        // dnsmasq is gone; its pid now belongs to another (root) process.
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        default_sighup(&mut cmd);
        let other = cmd.spawn().unwrap();
        std::fs::write(d.path().join("pid"), other.id().to_string()).unwrap();
        let mut h = DnsmasqHosts {
            file: d.path().join("hosts"),
            pidfile: d.path().join("pid"),
            proc: "/proc".into(),
        };
        h.set_host("dom1", Some("00:16:3e:00:00:01,10.0.1.1,dom1"))
            .unwrap();
        assert_eq!(first_signal(other), Some(libc::SIGTERM), "not SIGHUP");
        // A pid file naming no process, init, a process group or every process: refused (the
        // hosts file is written, nothing is signalled).
        for bad in ["-1", "0", "1", "-42", "12abc", ""] {
            std::fs::write(d.path().join("pid"), bad).unwrap();
            let e = h.set_host(
                "dom2",
                Some(&format!("00:16:3e:00:00:02,10.0.2.1,dom2-{bad}")),
            );
            assert!(
                e.unwrap_err().message.contains("is not a dnsmasq pid"),
                "{bad}"
            );
        }
        assert_eq!(dnsmasq_pid(" 4242\n"), Some(4242));
        assert_eq!(dnsmasq_pid("+5"), None);
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
