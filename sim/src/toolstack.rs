//! The libxl side of the hotplug protocol (libxl_device.c, libxl_disk.c, libxl_nic.c,
//! libxl_console.c, libxl_linux.c as of Xen 4.17), replayed against a real xenstored.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use xenplug_xenstore::{transact, Access, Perm, XenStore, XsOps, DEFAULT_TRANSACTION_ATTEMPTS};

use crate::exec::{self, ExecRecord};
use crate::kernel;
use crate::Domain;

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stands for libxl's XEN_SCRIPT_DIR: relative `script=` values are looked up here.
    pub scripts_dir: PathBuf,
    /// The domain id to give the domain.
    pub domid: u32,
    /// libxl's LIBXL_HOTPLUG_TIMEOUT (40 s).
    pub hotplug_timeout: Duration,
    /// Create the kernel/QEMU stand-ins (vifs, taps, bridges, uplink). Needs root and should only
    /// be used inside a private network namespace.
    pub stand_ins: bool,
    /// Stand-in dom0 uplink (`eth0` with an address) for routed and NAT set-ups.
    pub uplink: Option<(String, String)>,
    /// With stand-ins: create the bridges the NICs name when they do not exist (a host would
    /// have them). Off, a missing bridge stays missing, so the script's error path shows.
    pub create_bridges: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scripts_dir: PathBuf::from("/etc/xen/scripts"),
            domid: 1,
            hotplug_timeout: Duration::from_secs(40),
            stand_ins: false,
            uplink: None,
            create_bridges: true,
        }
    }
}

/// One script execution, with what libxl made of it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `create` or `destroy`.
    pub phase: &'static str,
    /// `vbd/51712`, `vif/0`, …
    pub device: String,
    /// The execution.
    pub exec: ExecRecord,
    /// `hotplug-error` as libxl read it after a failure.
    pub hotplug_error: Option<String>,
    /// What libxl would log for this execution, if anything.
    pub libxl_log: Vec<String>,
}

/// Everything the simulator saw, for tests and `--report`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Domain name.
    pub name: String,
    /// Domain id.
    pub domid: u32,
    /// Every script execution in order.
    pub events: Vec<Event>,
    /// Whether `create` succeeded.
    pub created: bool,
    /// libxl's error when it did not.
    pub create_error: Option<String>,
    /// Backend `state` of each device after create (as the kernel stand-in left it).
    pub backend_states: BTreeMap<String, String>,
    /// The xenstore tree under the domain's backends, frontends and home after create.
    pub xenstore_after_create: BTreeMap<String, String>,
    /// `ip -j -d link` after create.
    pub links_after_create: serde_json::Value,
    /// The same after destroy.
    pub xenstore_after_destroy: BTreeMap<String, String>,
    /// `ip -j -d link` after destroy.
    pub links_after_destroy: serde_json::Value,
}

#[derive(Debug, Clone)]
enum Added {
    Disk {
        devid: u32,
        script: Option<String>,
    },
    Nic {
        devid: u32,
        script: String,
        ioemu: bool,
        vifname: Option<String>,
    },
    Channel {
        devid: u32,
    },
}

/// A simulated libxl for one domain.
pub struct Sim<'a> {
    xs: &'a dyn XenStore,
    opts: Options,
    dom: Domain,
    out: &'a mut dyn Write,
    added: Vec<Added>,
    /// QEMU stand-ins of socket channels, by console devid.
    relays: Vec<(u32, String, kernel::ChannelRelay)>,
    /// What happened so far.
    pub report: Report,
}

impl std::fmt::Debug for Sim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("dom", &self.dom.name).finish()
    }
}

type XsResult<T> = xenplug_xenstore::Result<T>;

fn perms(owner: u32, reader: Option<u32>) -> Vec<Perm> {
    let mut p = vec![Perm {
        domid: owner,
        access: Access::None,
    }];
    if let Some(r) = reader {
        p.push(Perm {
            domid: r,
            access: Access::Read,
        });
    }
    p
}

fn write_all(tx: &dyn XsOps, dir: &str, kvs: &[(&str, String)]) -> XsResult<()> {
    for (k, v) in kvs {
        tx.write(&format!("{dir}/{k}"), v)?;
    }
    Ok(())
}

/// Every node below `path` as `path = value`, in tree order (as `xenstore-ls -f`).
pub fn dump(xs: &dyn XsOps, path: &str, into: &mut BTreeMap<String, String>) {
    if let Ok(Some(v)) = xs.read(path) {
        into.insert(path.to_string(), v);
    }
    if let Ok(children) = xs.directory(path) {
        for c in children {
            dump(xs, &format!("{}/{c}", path.trim_end_matches('/')), into);
        }
    }
}

impl<'a> Sim<'a> {
    /// A simulator for `dom` talking to `xs`, printing what it does to `out`.
    pub fn new(xs: &'a dyn XenStore, opts: Options, dom: Domain, out: &'a mut dyn Write) -> Self {
        let report = Report {
            name: dom.name.clone(),
            domid: opts.domid,
            ..Report::default()
        };
        Sim {
            xs,
            opts,
            dom,
            out,
            added: Vec::new(),
            relays: Vec::new(),
            report,
        }
    }

    /// The socket channels served by stand-ins: (name, dom0 socket, guest-side tty).
    pub fn channels(&self) -> Vec<(String, PathBuf, PathBuf)> {
        let dom = &self.dom;
        self.relays
            .iter()
            .filter_map(|(devid, name, r)| {
                let ch = dom.channels.get(*devid as usize - 1)?;
                Some((
                    name.clone(),
                    PathBuf::from(ch.path.clone()?),
                    r.guest_tty().to_path_buf(),
                ))
            })
            .collect()
    }

    /// Where the simulator prints.
    pub fn out(&mut self) -> &mut dyn Write {
        self.out
    }

    fn say(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.out, "{}", line.as_ref());
    }

    fn domid(&self) -> u32 {
        self.opts.domid
    }

    /// libxl__abs_path(script, XEN_SCRIPT_DIR).
    fn script_path(&self, script: &str) -> String {
        if script.starts_with('/') {
            script.to_string()
        } else {
            self.opts.scripts_dir.join(script).display().to_string()
        }
    }

    fn backend(&self, kind: &str, devid: u32) -> String {
        format!("/local/domain/0/backend/{kind}/{}/{devid}", self.domid())
    }

    fn frontend(&self, kind: &str, devid: u32) -> String {
        format!("/local/domain/{}/device/{kind}/{devid}", self.domid())
    }

    fn xs_err(&mut self, what: &str, e: xenplug_xenstore::XsError) -> String {
        let msg = format!("libxl: error: {what}: {e}");
        self.say(&msg);
        msg
    }

    /// `xl create`: the domain's home, then every disk, NIC and channel. On a failure, libxl
    /// destroys the domain (remove scripts included) and the error is returned.
    pub fn create(&mut self) -> Result<(), String> {
        let domid = self.domid();
        let (name, uuid) = (self.dom.name.clone(), self.dom.uuid.clone());
        self.say(format!(
            "== xl create {name} (domid {domid}, {}), scripts from {}",
            self.dom.kind,
            self.opts.scripts_dir.display()
        ));
        if self.opts.stand_ins {
            if let Some((dev, addr)) = self.opts.uplink.clone() {
                if let Err(e) = kernel::ensure_uplink(&dev, &addr) {
                    self.say(format!("   (stand-in uplink: {e})"));
                }
            }
        }
        let home = format!("/local/domain/{domid}");
        let vm = format!("/vm/{uuid}");
        let kind = self.dom.kind.clone();
        let r = transact(self.xs, DEFAULT_TRANSACTION_ATTEMPTS, |tx| {
            tx.mkdir(&home)?;
            tx.set_perms(&home, &perms(0, Some(domid)))?;
            write_all(
                tx,
                &home,
                &[
                    ("name", name.clone()),
                    ("domid", domid.to_string()),
                    ("vm", vm.clone()),
                ],
            )?;
            for sub in [
                "device", "control", "data", "drivers", "feature", "attr", "error",
            ] {
                let p = format!("{home}/{sub}");
                tx.mkdir(&p)?;
                tx.set_perms(&p, &perms(domid, None))?;
            }
            write_all(tx, &vm, &[("name", name.clone()), ("uuid", uuid.clone())])?;
            tx.write(&format!("/libxl/{domid}/type"), &kind)?;
            Ok(())
        });
        if let Err(e) = r {
            let m = self.xs_err("creating the domain's xenstore home", e);
            self.report.create_error = Some(m.clone());
            return Err(m);
        }
        let result = self.add_devices();
        self.snapshot_after_create();
        match result {
            Ok(()) => {
                self.report.created = true;
                self.say(format!("== {name} is up"));
                Ok(())
            }
            Err(e) => {
                self.report.create_error = Some(e.clone());
                self.say(format!(
                    "libxl: error: libxl_create.c: Domain {domid}:unable to add devices; destroying it"
                ));
                self.destroy();
                Err(e)
            }
        }
    }

    fn add_devices(&mut self) -> Result<(), String> {
        for disk in self.dom.disks.clone() {
            self.add_disk(&disk)?;
        }
        for nic in self.dom.nics.clone() {
            self.add_nic(&nic)?;
        }
        for (i, ch) in self.dom.channels.clone().iter().enumerate() {
            self.add_channel(i, ch)?;
        }
        Ok(())
    }

    fn snapshot_after_create(&mut self) {
        let mut tree = BTreeMap::new();
        self.dump_domain(&mut tree);
        self.report.xenstore_after_create = tree;
        if self.opts.stand_ins {
            self.report.links_after_create = kernel::link_state_json();
        }
    }

    fn dump_domain(&self, tree: &mut BTreeMap<String, String>) {
        let domid = self.domid();
        for kind in ["vbd", "vif", "console"] {
            dump(
                self.xs,
                &format!("/local/domain/0/backend/{kind}/{domid}"),
                tree,
            );
        }
        dump(self.xs, &format!("/local/domain/{domid}"), tree);
    }

    /// Print the domain's xenstore nodes and the namespace's links.
    pub fn show_state(&mut self, title: &str) {
        let mut tree = BTreeMap::new();
        self.dump_domain(&mut tree);
        self.say(format!("-- xenstore {title}:"));
        if tree.is_empty() {
            self.say("   (nothing)");
        }
        let lines: Vec<String> = tree
            .iter()
            .map(|(k, v)| format!("   {k} = {v:?}"))
            .collect();
        for l in lines {
            self.say(l);
        }
        if self.opts.stand_ins {
            self.say(format!("-- links, addresses and routes {title}:"));
            for l in kernel::link_state().lines() {
                let _ = writeln!(self.out, "   {l}");
            }
        }
    }

    fn run_script(
        &mut self,
        phase: &'static str,
        device: &str,
        script: &str,
        args: &[&str],
        env: Vec<(String, String)>,
        backend: &str,
    ) -> bool {
        let mut argv = vec![script.to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        let envs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.say(format!("   exec {}", argv.join(" ")));
        self.say(format!("        {}", envs.join(" ")));
        let rec = exec::run(&argv, &env, self.opts.hotplug_timeout);
        for l in rec.output.lines() {
            let _ = writeln!(self.out, "      | {l}");
        }
        let mut log = Vec::new();
        if rec.timed_out {
            log.push(format!(
                "libxl: error: libxl_aoutils.c: killing execution of {} {} because of timeout",
                script,
                args.first().copied().unwrap_or("")
            ));
        }
        let ok = rec.exit.success();
        let mut hotplug_error = None;
        if !ok {
            let status = match &rec.exit {
                exec::Exit::Code(c) => format!("exited with error status {c}"),
                exec::Exit::Signal(s) => format!("died due to fatal signal {s}"),
                exec::Exit::NotStarted(m) => format!("could not be executed: {m}"),
            };
            log.push(format!(
                "libxl: error: libxl_exec.c: {} {} [{}] {status}",
                script,
                args.first().copied().unwrap_or(""),
                device
            ));
            if let Ok(Some(err)) = self.xs.read(&format!("{backend}/hotplug-error")) {
                // device_hotplug_child_death_cb
                log.push(format!(
                    "libxl: error: libxl_device.c: device_hotplug_child_death_cb: script: {err}"
                ));
                hotplug_error = Some(err);
            }
        }
        self.say(format!(
            "        -> {} in {:.1} ms",
            match &rec.exit {
                exec::Exit::Code(c) => format!("exit {c}"),
                exec::Exit::Signal(s) => format!("signal {s}"),
                exec::Exit::NotStarted(m) => format!("not started ({m})"),
            },
            rec.duration_ms
        ));
        for l in &log {
            self.say(format!("   {l}"));
        }
        self.report.events.push(Event {
            phase,
            device: device.to_string(),
            exec: rec,
            hotplug_error,
            libxl_log: log,
        });
        ok
    }

    fn hotplug_env(&self, script: &str, kind: &str, devid: u32) -> Vec<(String, String)> {
        vec![
            ("script".into(), script.to_string()),
            ("XENBUS_TYPE".into(), kind.to_string()),
            (
                "XENBUS_PATH".into(),
                format!("backend/{kind}/{}/{devid}", self.domid()),
            ),
            ("XENBUS_BASE_PATH".into(), "backend".into()),
        ]
    }

    fn set_state(&mut self, path: &str, state: &str) {
        if let Err(e) = self.xs.write(&format!("{path}/state"), state) {
            self.xs_err(&format!("writing {path}/state"), e);
        }
    }

    fn add_disk(&mut self, disk: &crate::devices::Disk) -> Result<(), String> {
        let domid = self.domid();
        let devid = disk.devid;
        let (be, fe) = (self.backend("vbd", devid), self.frontend("vbd", devid));
        // libxl__device_disk_set_backend: a script forces phy; raw block devices and regular
        // files go to phy (the `block` script); anything else to qdisk (QEMU, no script).
        let phy = disk.script.is_some()
            || (disk.format == "raw"
                && std::fs::metadata(&disk.target)
                    .map(|m| {
                        use std::os::unix::fs::FileTypeExt;
                        m.file_type().is_block_device() || m.is_file()
                    })
                    .unwrap_or(false));
        let script = phy.then(|| self.script_path(disk.script.as_deref().unwrap_or("block")));
        self.say(format!(
            "-- vbd {devid} ({}): {} backend, params={:?} mode={}",
            disk.vdev,
            if phy { "phy" } else { "qdisk" },
            disk.target,
            if disk.readwrite { "w" } else { "r" }
        ));
        let cdrom = disk.devtype == "cdrom";
        let mut back = vec![
            ("frontend", fe.clone()),
            ("frontend-id", domid.to_string()),
            ("online", "1".into()),
            ("removable", if cdrom { "1" } else { "0" }.into()),
            ("bootable", "1".into()),
            ("state", "1".into()),
            ("dev", disk.vdev.clone()),
            ("type", if phy { "phy" } else { "qdisk" }.into()),
            ("mode", if disk.readwrite { "w" } else { "r" }.into()),
            ("device-type", disk.devtype.clone()),
            (
                "discard-enable",
                if disk.discard == Some(false) {
                    "0"
                } else {
                    "1"
                }
                .into(),
            ),
            ("specification", "xen".into()),
            ("params", disk.target.clone()),
        ];
        if let Some(s) = &script {
            back.push(("script", s.clone()));
        }
        let front = vec![
            ("backend", be.clone()),
            ("backend-id", "0".into()),
            ("state", "1".into()),
            ("virtual-device", devid.to_string()),
            ("device-type", disk.devtype.clone()),
            ("trusted", "1".into()),
        ];
        self.write_device(&be, &fe, "vbd", devid, &back, &front)?;
        self.added.push(Added::Disk {
            devid,
            script: script.clone(),
        });
        let Some(script) = script else {
            self.say("   (qdisk: QEMU serves it; libxl runs no hotplug script)");
            return Ok(());
        };
        // The kernel backend (blkback) moves to InitWait once it has seen the nodes.
        self.set_state(&be, "2");
        self.say("   blkback: state 2 (InitWait)");
        let env = self.hotplug_env(&script, "vbd", devid);
        let device = format!("vbd/{devid}");
        if !self.run_script("create", &device, &script, &["add"], env, &be) {
            return Err(self.failure_message(&device));
        }
        // blkback opens what physical-device names.
        match self.xs.read(&format!("{be}/physical-device")) {
            Ok(Some(pd)) => {
                let path = self
                    .xs
                    .read(&format!("{be}/physical-device-path"))
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let exists = parse_major_minor(&pd)
                    .map(|(ma, mi)| Path::new(&format!("/sys/dev/block/{ma}:{mi}")).exists())
                    .unwrap_or(false);
                if exists {
                    self.set_state(&be, "4");
                    self.set_state(&fe, "4");
                    self.say(format!(
                        "   blkback: opened {pd} ({path}); state 4 (Connected)"
                    ));
                } else {
                    self.say(format!(
                        "   blkback: physical-device {pd:?} is not a block device here; stays in InitWait"
                    ));
                }
            }
            _ => self.say("   blkback: no physical-device written; stays in InitWait"),
        }
        self.report.backend_states.insert(
            device,
            self.xs
                .read(&format!("{be}/state"))
                .ok()
                .flatten()
                .unwrap_or_default(),
        );
        Ok(())
    }

    fn failure_message(&self, device: &str) -> String {
        let ev = self.report.events.last();
        match ev.and_then(|e| e.hotplug_error.clone()) {
            Some(err) => format!("{device}: script: {err}"),
            None => format!("{device}: hotplug script failed"),
        }
    }

    fn write_device(
        &mut self,
        be: &str,
        fe: &str,
        kind: &str,
        devid: u32,
        back: &[(&str, String)],
        front: &[(&str, String)],
    ) -> Result<(), String> {
        let domid = self.domid();
        let libxl = format!("/libxl/{domid}/device/{kind}/{devid}");
        let r = transact(self.xs, DEFAULT_TRANSACTION_ATTEMPTS, |tx| {
            tx.mkdir(be)?;
            tx.set_perms(be, &perms(0, Some(domid)))?;
            tx.mkdir(fe)?;
            tx.set_perms(fe, &perms(domid, Some(0)))?;
            write_all(tx, be, back)?;
            write_all(tx, fe, front)?;
            write_all(
                tx,
                &libxl,
                &[("backend", be.to_string()), ("frontend", fe.to_string())],
            )?;
            write_all(tx, &libxl, back)
        });
        r.map_err(|e| self.xs_err(&format!("writing {kind} {devid} nodes"), e))
    }

    fn add_nic(&mut self, nic: &crate::devices::Nic) -> Result<(), String> {
        let domid = self.domid();
        let devid = nic.devid;
        let (be, fe) = (self.backend("vif", devid), self.frontend("vif", devid));
        let script = self.script_path(&nic.script);
        self.say(format!(
            "-- vif {devid}: mac {} bridge {} script {}{}",
            nic.mac,
            nic.bridge,
            nic.script,
            if nic.ioemu {
                " (emulated NIC: tap too)"
            } else {
                ""
            }
        ));
        let mut back = vec![
            ("frontend", fe.clone()),
            ("frontend-id", domid.to_string()),
            ("online", "1".into()),
            ("state", "1".into()),
            ("script", script.clone()),
            ("mac", nic.mac.clone()),
            ("bridge", nic.bridge.clone()),
            ("handle", devid.to_string()),
            ("type", if nic.ioemu { "vif_ioemu" } else { "vif" }.into()),
            // libxl_nic.c: "Force backend to wait for hotplug script execution".
            ("hotplug-status", String::new()),
        ];
        for (k, v) in [
            ("ip", &nic.ip),
            ("vifname", &nic.vifname),
            ("rate", &nic.rate),
            ("gatewaydev", &nic.gatewaydev),
            ("model", &nic.model),
        ] {
            if let Some(v) = v {
                back.push((k, v.clone()));
            }
        }
        if nic.mtu != 1500 {
            back.push(("mtu", nic.mtu.to_string()));
        }
        let front = vec![
            ("backend", be.clone()),
            ("backend-id", "0".into()),
            ("state", "1".into()),
            ("handle", devid.to_string()),
            ("mac", nic.mac.clone()),
            ("mtu", nic.mtu.to_string()),
        ];
        self.write_device(&be, &fe, "vif", devid, &back, &front)?;
        self.added.push(Added::Nic {
            devid,
            script: script.clone(),
            ioemu: nic.ioemu,
            vifname: nic.vifname.clone(),
        });
        let vif = format!("vif{domid}.{devid}");
        let plain_bridge = !nic.script.contains("openvswitch")
            && !nic.bridge.is_empty()
            && nic.bridge.len() < 16
            && nic
                .bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if self.opts.stand_ins && self.opts.create_bridges && plain_bridge {
            if let Err(e) = kernel::ensure_bridge(&nic.bridge) {
                self.say(format!("   (stand-in bridge {}: {e})", nic.bridge));
            }
        }
        if self.opts.stand_ins {
            if let Err(e) = kernel::create_vif(domid, devid) {
                self.say(format!("   (stand-in {vif}: {e})"));
            }
        }
        self.set_state(&be, "2");
        self.say(format!("   netback: {vif} created; state 2 (InitWait)"));
        let mut env = self.hotplug_env(&script, "vif", devid);
        env.push(("netdev".into(), nic.gatewaydev.clone().unwrap_or_default()));
        env.push(("vif".into(), vif.clone()));
        let device = format!("vif/{devid}");
        if !self.run_script(
            "create",
            &device,
            &script,
            &["online", "type_if=vif"],
            env.clone(),
            &be,
        ) {
            return Err(self.failure_message(&device));
        }
        match self.xs.read(&format!("{be}/hotplug-status")) {
            Ok(Some(s)) if s == "connected" => {
                self.set_state(&be, "4");
                self.set_state(&fe, "4");
                self.say("   netback: hotplug-status=connected; state 4 (Connected)");
            }
            other => {
                let v = other.ok().flatten().unwrap_or_default();
                self.say(format!(
                    "   netback: hotplug-status is {v:?}, not \"connected\": the vif stays in InitWait"
                ));
            }
        }
        self.report.backend_states.insert(
            device.clone(),
            self.xs
                .read(&format!("{be}/state"))
                .ok()
                .flatten()
                .unwrap_or_default(),
        );
        if nic.ioemu {
            // libxl__hotplug_nic, num_exec 1: QEMU has created the tap.
            let tap = format!("vif{domid}.{devid}-emu");
            if self.opts.stand_ins {
                if let Err(e) = kernel::create_tap(domid, devid) {
                    self.say(format!("   (stand-in {tap}: {e})"));
                }
            }
            let mut env = env;
            env.push(("INTERFACE".into(), tap));
            if !self.run_script(
                "create",
                &device,
                &script,
                &["add", "type_if=tap"],
                env,
                &be,
            ) {
                return Err(self.failure_message(&device));
            }
        }
        Ok(())
    }

    fn add_channel(&mut self, index: usize, ch: &crate::devices::Channel) -> Result<(), String> {
        let domid = self.domid();
        // Console devid 0 is the primary console; channels follow.
        let devid = index as u32 + 1;
        let (be, fe) = (
            self.backend("console", devid),
            self.frontend("console", devid),
        );
        self.say(format!(
            "-- channel {devid}: name {} connection {}{}",
            ch.name,
            ch.connection,
            ch.path
                .as_deref()
                .map(|p| format!(" path {p}"))
                .unwrap_or_default()
        ));
        let mut back = vec![
            ("frontend", fe.clone()),
            ("frontend-id", domid.to_string()),
            ("online", "1".into()),
            ("state", "1".into()),
            ("protocol", "vt100".into()),
            ("name", ch.name.clone()),
            ("connection", ch.connection.clone()),
        ];
        if let Some(p) = &ch.path {
            back.push(("path", p.clone()));
        }
        let front = vec![
            ("backend", be.clone()),
            ("backend-id", "0".into()),
            ("state", "1".into()),
            ("limit", "1048576".into()),
            ("name", ch.name.clone()),
            ("output", format!("chardev:libxl-channel{index}")),
            ("protocol", "vt100".into()),
            ("tty", String::new()),
            ("type", "ioemu".into()),
        ];
        self.write_device(&be, &fe, "console", devid, &back, &front)?;
        self.added.push(Added::Channel { devid });
        // QEMU serves channels: no hotplug script. It listens on the socket and marks the
        // backend connected.
        if self.opts.stand_ins && ch.connection == "socket" {
            if let Some(path) = &ch.path {
                match kernel::ChannelRelay::start(Path::new(path)) {
                    Ok(r) => {
                        self.say(format!(
                            "   QEMU: listening on {path}; the guest's end is {}",
                            r.guest_tty().display()
                        ));
                        self.relays.push((devid, ch.name.clone(), r));
                    }
                    Err(e) => self.say(format!("   (stand-in channel: {e})")),
                }
            }
        }
        let _ = self.xs.write(&format!("{be}/hotplug-status"), "connected");
        self.set_state(&be, "4");
        Ok(())
    }

    /// `xl destroy`: libxl's remove sequence for every device added, newest first, then the
    /// domain's home. Remove-script failures are logged and ignored, as libxl does.
    pub fn destroy(&mut self) {
        let domid = self.domid();
        self.say(format!("== xl destroy {} (domid {domid})", self.dom.name));
        let added: Vec<Added> = self.added.drain(..).rev().collect();
        for dev in added {
            match dev {
                Added::Disk { devid, script } => {
                    let (be, fe) = (self.backend("vbd", devid), self.frontend("vbd", devid));
                    self.say(format!("-- vbd {devid}: remove"));
                    if self.begin_remove(&be, false) {
                        if let Some(script) = script {
                            let env = self.hotplug_env(&script, "vbd", devid);
                            self.run_script(
                                "destroy",
                                &format!("vbd/{devid}"),
                                &script,
                                &["remove"],
                                env,
                                &be,
                            );
                        }
                    }
                    self.finish_remove(&be, &fe, "vbd", devid);
                }
                Added::Nic {
                    devid,
                    script,
                    ioemu,
                    vifname,
                } => {
                    let (be, fe) = (self.backend("vif", devid), self.frontend("vif", devid));
                    self.say(format!("-- vif {devid}: remove"));
                    let vif = format!("vif{domid}.{devid}");
                    if self.begin_remove(&be, true) {
                        let mut env = self.hotplug_env(&script, "vif", devid);
                        let gw = self
                            .xs
                            .read(&format!("{be}/gatewaydev"))
                            .ok()
                            .flatten()
                            .unwrap_or_default();
                        env.push(("netdev".into(), gw));
                        env.push(("vif".into(), vif.clone()));
                        let device = format!("vif/{devid}");
                        self.run_script(
                            "destroy",
                            &device,
                            &script,
                            &["offline", "type_if=vif"],
                            env.clone(),
                            &be,
                        );
                        if ioemu {
                            env.push(("INTERFACE".into(), format!("{vif}-emu")));
                            self.run_script(
                                "destroy",
                                &device,
                                &script,
                                &["remove", "type_if=tap"],
                                env,
                                &be,
                            );
                        }
                    }
                    self.finish_remove(&be, &fe, "vif", devid);
                    if self.opts.stand_ins {
                        let emu = format!("{vif}-emu");
                        let named = vifname.clone().unwrap_or_default();
                        let named_emu = format!("{named}-emu");
                        kernel::delete_link(&[&vif, &emu, &named, &named_emu]);
                    }
                }
                Added::Channel { devid } => {
                    self.relays.retain(|(d, _, _)| *d != devid);
                    let (be, fe) = (
                        self.backend("console", devid),
                        self.frontend("console", devid),
                    );
                    self.finish_remove(&be, &fe, "console", devid);
                }
            }
        }
        let home = format!("/local/domain/{domid}");
        let _ = self.xs.rm(&home);
        let _ = self.xs.rm(&format!("/vm/{}", self.dom.uuid));
        let _ = self.xs.rm(&format!("/libxl/{domid}"));
        let mut tree = BTreeMap::new();
        self.dump_domain(&mut tree);
        self.report.xenstore_after_destroy = tree;
        if self.opts.stand_ins {
            self.report.links_after_destroy = kernel::link_state_json();
        }
        self.say(format!("== {} destroyed", self.dom.name));
    }

    /// libxl__initiate_device_generic_remove: online=0 and state=5 in one transaction (none of it
    /// if the backend is gone: then no script runs); the backend stand-in closes (state 6).
    fn begin_remove(&mut self, be: &str, is_vif: bool) -> bool {
        let r = transact(self.xs, DEFAULT_TRANSACTION_ATTEMPTS, |tx| {
            let state = tx.read(&format!("{be}/state"))?;
            let Some(state) = state else {
                return Ok(false);
            };
            tx.write(&format!("{be}/online"), "0")?;
            if state != "6" {
                tx.write(&format!("{be}/state"), "5")?;
            }
            Ok(true)
        });
        match r {
            Ok(true) => {
                self.set_state(be, "6");
                if is_vif {
                    // netback's backend_disconnect removes hotplug-status.
                    let _ = self.xs.rm(&format!("{be}/hotplug-status"));
                }
                self.say("   backend: online=0, state 5 -> 6 (Closed)");
                true
            }
            Ok(false) => {
                self.say("   backend already gone: no script");
                false
            }
            Err(e) => {
                self.xs_err("starting device removal", e);
                false
            }
        }
    }

    /// libxl__device_destroy: delete the backend, frontend and libxl directories, and each
    /// parent left empty (libxl__xs_path_cleanup).
    fn finish_remove(&mut self, be: &str, fe: &str, kind: &str, devid: u32) {
        let libxl = format!("/libxl/{}/device/{kind}/{devid}", self.domid());
        let r = transact(self.xs, DEFAULT_TRANSACTION_ATTEMPTS, |tx| {
            for p in [be, fe, libxl.as_str()] {
                path_cleanup(tx, p)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            if !e.is_not_found() {
                self.xs_err(&format!("removing {kind} {devid} nodes"), e);
            }
        }
    }
}

/// Remove `path`, then each parent that is left empty (libxl__xs_path_cleanup).
fn path_cleanup(tx: &dyn XsOps, path: &str) -> XsResult<()> {
    match tx.rm(path) {
        Err(e) if !e.is_not_found() => return Err(e),
        _ => {}
    }
    let mut p = path;
    while let Some((parent, _)) = p.rsplit_once('/') {
        if parent.is_empty() {
            break;
        }
        let empty = match tx.directory(parent) {
            Ok(children) => children.is_empty(),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e),
        };
        let has_value = tx.read(parent)?.is_some_and(|v| !v.is_empty());
        if !empty || has_value {
            break;
        }
        tx.rm(parent)?;
        p = parent;
    }
    Ok(())
}

/// Parse `physical-device` (`%x:%x`).
pub fn parse_major_minor(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((
        u32::from_str_radix(a, 16).ok()?,
        u32::from_str_radix(b, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_minor_is_hex() {
        assert_eq!(parse_major_minor("7:0"), Some((7, 0)));
        assert_eq!(parse_major_minor("fe:1"), Some((254, 1)));
        assert_eq!(parse_major_minor("103:5"), Some((259, 5)));
        assert_eq!(parse_major_minor("7"), None);
        assert_eq!(parse_major_minor("x:1"), None);
    }
}
