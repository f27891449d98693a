//! Every doctor check against a private host tree: first a healthy one, then each failure path.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use xenplug_xenstore::XsOps;

use super::super::{run, Check, Paths, Status, CHECKS, DIVERT_SUFFIX};
use crate::scripts;

const RELEASE: &str = "6.1.0-test-amd64";

/// A private host: every path of [`Paths`] under one temporary directory.
struct Host {
    dir: tempfile::TempDir,
    paths: Paths,
    _xenstored: Option<crate::cli::Daemon>,
    _syslog: Option<UnixDatagram>,
    _peer: Option<std::thread::JoinHandle<()>>,
}

fn write(p: &Path, text: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn exe(p: &Path) {
    write(p, "#!/bin/sh\nexit 0\n");
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

impl Host {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Everything missing: no xenstored, no links, no package.
    fn bare() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path().to_path_buf();
        for d in [
            "etc/xen/scripts",
            "var/lib/dpkg/info",
            "sys/class/net",
            "sys/module",
            "sys/block",
            "dev",
            "proc/sys/kernel",
            "lib/modules",
            "udev",
            "sbin",
            "run",
            "units",
            "log",
            "locks",
            "state",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        write(
            &r.join("proc/sys/kernel/osrelease"),
            &format!("{RELEASE}\n"),
        );
        write(&r.join("proc/locks"), "");
        exe(&r.join("usr/sbin/xenplug"));
        write(
            &r.join("etc/xen/xenplug.toml"),
            &format!(
                "log_file = \"{}/log/xen-hotplug.log\"\nlock_dir = \"{}/locks\"\n\
                 state_dir = \"{}/state\"\nsyslog_socket = \"{}/run/log\"\n",
                r.display(),
                r.display(),
                r.display(),
                r.display()
            ),
        );
        let paths = Paths {
            scripts_dir: r.join("etc/xen/scripts"),
            binary: r.join("usr/sbin/xenplug"),
            config_file: r.join("etc/xen/xenplug.toml"),
            dpkg_admin: r.join("var/lib/dpkg"),
            xl_conf: r.join("etc/xen/xl.conf"),
            xenstored_sockets: vec![r.join("run/xenstored/socket")],
            xenbus: r.join("dev/xen/xenbus"),
            sys: r.join("sys"),
            dev: r.join("dev"),
            proc_: r.join("proc"),
            modules_root: r.join("lib/modules"),
            udev_rules_dirs: vec![r.join("udev")],
            exec_path: vec![r.join("sbin")],
            peer_control: r.join("run/xenplug-peer/control.sock"),
            peer_units: vec![r.join("units/xenplug-peer.service")],
            timeout: Duration::from_millis(500),
        };
        Host {
            dir,
            paths,
            _xenstored: None,
            _syslog: None,
            _peer: None,
        }
    }

    /// A host where every check passes: the package installed with its diversions and
    /// Debian's copies, a running (embedded) xenstored, the bridge, nft, loop, modules, a syslog
    /// socket, the peer daemon answering.
    fn healthy() -> Host {
        let mut h = Host::bare();
        let names = scripts::names();
        let dir = h.paths.scripts_dir.clone();
        let mut diversions = String::new();
        let mut xen_list = String::new();
        for n in &names {
            let f = dir.join(n);
            let d = dir.join(format!("{n}{DIVERT_SUFFIX}"));
            write(&d, &format!("#!/bin/bash\n# Debian's {n}\n"));
            symlink(&h.paths.binary, &f).unwrap();
            diversions.push_str(&format!("{}\n{}\nxenplug\n", f.display(), d.display()));
            xen_list.push_str(&format!("{}\n", f.display()));
        }
        write(&h.at("var/lib/dpkg/diversions"), &diversions);
        write(&h.at("var/lib/dpkg/info/xen-utils-common.list"), &xen_list);
        write(
            &h.at("var/lib/dpkg/status"),
            "Package: xen-utils-common\nStatus: install ok installed\n\n\
             Package: xenplug\nStatus: install ok installed\nVersion: 0.1.0\n\n",
        );
        // xenstored
        let sock = h.paths.xenstored_sockets[0].clone();
        fs::create_dir_all(sock.parent().unwrap()).unwrap();
        h._xenstored = Some(crate::cli::Daemon::start(&sock).unwrap());
        // xl.conf as Debian ships it (all comments), a Linux bridge xenbr0, nft.
        write(
            &h.paths.xl_conf,
            "#run_hotplug_scripts=1\n#vif.default.script=\"vif-bridge\"\n",
        );
        fs::create_dir_all(h.at("sys/class/net/xenbr0/bridge")).unwrap();
        fs::create_dir_all(h.at("sys/class/net/eth0")).unwrap();
        exe(&h.at("sbin/nft"));
        // /dev/loop-control: the host's own character device, through a link.
        symlink("/dev/loop-control", h.at("dev/loop-control")).unwrap();
        for m in ["loop", "xen_blkback", "xen_netback", "nbd", "iscsi_tcp"] {
            fs::create_dir_all(h.at(&format!("sys/module/{m}"))).unwrap();
        }
        // syslog
        h._syslog = Some(UnixDatagram::bind(h.at("run/log")).unwrap());
        // The peer daemon's control socket, answering `summary` as the daemon does.
        write(&h.at("units/xenplug-peer.service"), "[Service]\n");
        h._peer = Some(fake_peer(
            &h.paths.peer_control,
            r#"{"channels":2,"states":{"configured":2}}"#,
        ));
        h
    }

    fn report(&self) -> super::super::Report {
        run(&self.paths)
    }

    fn check(&self, id: &str) -> Check {
        self.report().get(id).cloned().unwrap()
    }
}

/// A control socket answering every connection's first line with `reply` (empty: never
/// answers, holding the connection).
fn fake_peer(path: &Path, reply: &'static str) -> std::thread::JoinHandle<()> {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let mut line = String::new();
            let _ = BufReader::new(&c).read_line(&mut line);
            if line.trim() != "summary" {
                return;
            }
            if reply.is_empty() {
                held.push(c);
                continue;
            }
            let _ = c.write_all(reply.as_bytes());
            let _ = c.write_all(b"\n");
        }
    })
}

fn assert_status(c: &Check, want: Status) {
    assert_eq!(c.status, want, "{c:#?}");
}

fn text_of(c: &Check) -> String {
    format!(
        "{} {} {}",
        c.summary,
        c.details.join(" "),
        c.fix.clone().unwrap_or_default()
    )
}

#[test]
fn healthy_host_passes_every_check() {
    let h = Host::healthy();
    let r = h.report();
    let ids: Vec<&str> = r.checks.iter().map(|c| c.id).collect();
    assert_eq!(ids, CHECKS);
    for c in &r.checks {
        assert_status(c, Status::Ok);
    }
    assert_eq!(r.exit_code(), 0);
    assert!(r.get("xenstored").unwrap().summary.contains("socket"));
    assert!(r.get("peer").unwrap().summary.contains("2 channels"));
    let json = r.to_json();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["checks"].as_array().unwrap().len(), CHECKS.len());
}

#[test]
fn bare_host_fails_with_a_fix_for_each_failure() {
    let h = Host::bare();
    let r = h.report();
    assert_eq!(r.exit_code(), 1);
    for c in &r.checks {
        if c.status == Status::Fail || c.status == Status::Warn {
            assert!(c.fix.is_some() || !c.details.is_empty(), "{c:#?}");
        }
    }
    let text = r.to_text();
    assert!(text.contains("FAIL  scripts"), "{text}");
    assert!(text.ends_with("skipped\n"), "{text}");
}

#[test]
fn config_errors_fail() {
    let h = Host::healthy();
    write(
        &h.paths.config_file,
        "lock_dir = \"/x\"\nlock_timeout = 3\n",
    );
    let c = h.check("config");
    assert_status(&c, Status::Fail);
    assert!(c.summary.contains("line 2"), "{c:#?}");
    assert!(c.summary.contains("lock_timeout"), "{c:#?}");
    fs::remove_file(&h.paths.config_file).unwrap();
    fs::create_dir(&h.paths.config_file).unwrap();
    assert_status(&h.check("config"), Status::Fail);
}

#[test]
fn scripts_that_do_not_run_xenplug_are_named_with_the_reason() {
    let h = Host::healthy();
    let dir = &h.paths.scripts_dir;
    fs::remove_file(dir.join("block")).unwrap();
    fs::remove_file(dir.join("vif-route")).unwrap();
    symlink("/nonexistent/xenplug", dir.join("vif-route")).unwrap();
    // Debian's script written back over the link (what an upgrade without the diversion does).
    fs::remove_file(dir.join("vif-bridge")).unwrap();
    fs::copy(
        dir.join(format!("vif-bridge{DIVERT_SUFFIX}")),
        dir.join("vif-bridge"),
    )
    .unwrap();
    let c = h.check("scripts");
    assert_status(&c, Status::Fail);
    assert!(c.summary.starts_with("3 of"), "{c:#?}");
    let t = text_of(&c);
    assert!(t.contains("block: missing"), "{t}");
    assert!(
        t.contains("vif-route: a link to /nonexistent/xenplug"),
        "{t}"
    );
    assert!(
        t.contains("vif-bridge: Debian's shell script is back"),
        "{t}"
    );
    assert!(t.contains("dpkg-reconfigure xenplug"), "{t}");

    // Another xenplug binary: a warning only.
    let h = Host::healthy();
    let other = h.at("usr/local/sbin/xenplug");
    exe(&other);
    let f = h.paths.scripts_dir.join("block-nbd");
    fs::remove_file(&f).unwrap();
    symlink(&other, &f).unwrap();
    let c = h.check("scripts");
    assert_status(&c, Status::Warn);
    assert!(text_of(&c).contains("block-nbd: runs another xenplug binary"));

    // The binary itself not executable.
    let h = Host::healthy();
    fs::set_permissions(&h.paths.binary, fs::Permissions::from_mode(0o644)).unwrap();
    let c = h.check("scripts");
    assert_status(&c, Status::Fail);
    assert!(text_of(&c).contains("is not executable"));
}

#[test]
fn diversions_missing_foreign_or_without_debians_copy() {
    let h = Host::healthy();
    let div = h.at("var/lib/dpkg/diversions");
    let text = fs::read_to_string(&div).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Drop block's diversion, hand vif-nat's to another package, lose Debian's vif-route.
    let mut out = String::new();
    for c in lines.chunks(3) {
        if c[0].ends_with("/block") {
            continue;
        }
        let pkg = if c[0].ends_with("/vif-nat") {
            "other"
        } else {
            c[2]
        };
        out.push_str(&format!("{}\n{}\n{pkg}\n", c[0], c[1]));
    }
    fs::write(&div, out).unwrap();
    let c = h.check("diversions");
    assert_status(&c, Status::Fail);
    let t = text_of(&c);
    assert!(t.contains("block: not diverted"), "{t}");
    assert!(
        t.contains("vif-nat: diverted to") && t.contains("by other"),
        "{t}"
    );

    let h = Host::healthy();
    fs::remove_file(
        h.paths
            .scripts_dir
            .join(format!("vif-route{DIVERT_SUFFIX}")),
    )
    .unwrap();
    let c = h.check("diversions");
    assert_status(&c, Status::Warn);
    assert!(text_of(&c).contains("vif-route: Debian's copy"));

    // `xenplug install` without the package, on a host with xen-utils-common: a warning.
    let h = Host::healthy();
    write(
        &h.at("var/lib/dpkg/status"),
        "Package: xen-utils-common\nStatus: install ok installed\n\n",
    );
    write(
        &h.paths.scripts_dir.join(".xenplug-backup/MANIFEST"),
        "block\n",
    );
    let c = h.check("diversions");
    assert_status(&c, Status::Warn);
    assert!(c.summary.contains("xenplug install"));
    fs::remove_file(h.paths.scripts_dir.join(".xenplug-backup/MANIFEST")).unwrap();
    assert_status(&h.check("diversions"), Status::Skip);
}

#[test]
fn xenstored_absent_or_silent_fails() {
    let mut h = Host::healthy();
    h._xenstored = None;
    let c = h.check("xenstored");
    assert_status(&c, Status::Fail);
    assert!(text_of(&c).contains("socket"));
    // Something listening that never answers: reported within the deadline.
    let sock = h.paths.xenstored_sockets[0].clone();
    let _l = UnixListener::bind(&sock).unwrap();
    let t0 = std::time::Instant::now();
    let c = h.check("xenstored");
    assert_status(&c, Status::Fail);
    assert!(text_of(&c).contains("no answer in time"), "{c:#?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn xl_conf_that_stops_or_bypasses_hotplug() {
    let h = Host::healthy();
    write(&h.paths.xl_conf, "run_hotplug_scripts=0\n");
    let c = h.check("xl-conf");
    assert_status(&c, Status::Fail);
    assert!(text_of(&c).contains("no udev rule"));
    write(
        &h.at("udev/xen-backend.rules"),
        "SUBSYSTEM==\"xen-backend\", RUN+=\"/etc/xen/scripts/block $env{ACTION}\"\n",
    );
    assert_status(&h.check("xl-conf"), Status::Warn);
    write(&h.paths.xl_conf, "run_hotplug_scripts=\"yes\"\n");
    assert_status(&h.check("xl-conf"), Status::Fail);
    write(&h.paths.xl_conf, "vif.default.script=\"my-vif\"\n");
    let c = h.check("xl-conf");
    assert_status(&c, Status::Warn);
    assert!(text_of(&c).contains("my-vif is not a xenplug script"));
    write(&h.paths.xl_conf, "defaultbridge=\"xenbr0\"\n");
    let c = h.check("xl-conf");
    assert_status(&c, Status::Warn);
    assert!(text_of(&c).contains("defaultbridge is deprecated"));
}

#[test]
fn network_devices_xl_conf_names() {
    let h = Host::healthy();
    write(&h.paths.xl_conf, "vif.default.bridge=\"br-missing\"\n");
    let c = h.check("network");
    assert_status(&c, Status::Fail);
    assert!(c.summary.contains("br-missing"));
    // Xen's legacy naming: no xenbr1, but eth1 is a bridge.
    fs::create_dir_all(h.at("sys/class/net/eth1/bridge")).unwrap();
    write(&h.paths.xl_conf, "vif.default.bridge=\"xenbr1\"\n");
    let c = h.check("network");
    assert_status(&c, Status::Ok);
    assert!(c.summary.contains("eth1 is a bridge"), "{c:#?}");
    fs::create_dir_all(h.at("sys/class/net/eth9")).unwrap();
    write(&h.paths.xl_conf, "vif.default.bridge=\"eth9\"\n");
    let c = h.check("network");
    assert_status(&c, Status::Fail);
    assert!(c.summary.contains("not a Linux bridge"));
    write(
        &h.paths.xl_conf,
        "vif.default.script=\"vif-openvswitch\"\nvif.default.bridge=\"xenbr0\"\n",
    );
    assert_status(&h.check("network"), Status::Fail);
    write(
        &h.paths.xl_conf,
        "vif.default.script=\"vif-openvswitch\"\nvif.default.bridge=\"eth9.10:20:30\"\n",
    );
    let c = h.check("network");
    assert_status(&c, Status::Ok);
    assert!(c.summary.starts_with("eth9 exists"), "{c:#?}");
    write(
        &h.paths.xl_conf,
        "vif.default.script=\"vif-route\"\nvif.default.gatewaydev=\"uplink7\"\n",
    );
    let c = h.check("network");
    assert_status(&c, Status::Warn);
    assert!(c.summary.contains("uplink7"));
}

#[test]
fn nft_needed_by_vif_nat_only() {
    let h = Host::healthy();
    assert_status(&h.check("nft"), Status::Ok);
    fs::remove_file(h.at("sbin/nft")).unwrap();
    // Antispoofing (enforce, the default) sends its rules over netlink: no nft needed.
    let c = h.check("nft");
    assert_status(&c, Status::Ok);
    assert!(text_of(&c).contains("over netlink"), "{}", text_of(&c));
    let cfg = fs::read_to_string(&h.paths.config_file).unwrap();
    write(&h.paths.config_file, &format!("{cfg}antispoof = \"off\"\n"));
    assert_status(&h.check("nft"), Status::Skip);
    // vif-nat masquerades with nft, whatever antispoof says.
    write(&h.paths.xl_conf, "vif.default.script=\"vif-nat\"\n");
    let c = h.check("nft");
    assert_status(&c, Status::Fail);
    assert!(text_of(&c).contains("apt install nftables"));
}

#[test]
fn loop_control_missing_or_not_a_device() {
    let h = Host::healthy();
    fs::remove_file(h.at("dev/loop-control")).unwrap();
    let c = h.check("loop-control");
    assert_status(&c, Status::Fail);
    assert!(text_of(&c).contains("modprobe loop"));
    write(&h.at("dev/loop-control"), "");
    assert_status(&h.check("loop-control"), Status::Fail);
}

#[test]
fn modules_missing_available_and_builtin() {
    let h = Host::healthy();
    for m in ["loop", "xen_blkback", "xen_netback", "nbd", "iscsi_tcp"] {
        fs::remove_dir(h.at(&format!("sys/module/{m}"))).unwrap();
    }
    // No module tree for the running kernel: cannot tell.
    assert_status(&h.check("modules"), Status::Warn);
    let tree = h.at(&format!("lib/modules/{RELEASE}"));
    write(
        &tree.join("modules.dep"),
        "kernel/drivers/block/xen-blkback/xen-blkback.ko.xz:\n\
         kernel/drivers/net/xen-netback/xen-netback.ko.xz:\n\
         kernel/drivers/scsi/iscsi_tcp.ko.xz: kernel/drivers/scsi/libiscsi.ko.xz\n",
    );
    write(
        &tree.join("modules.builtin"),
        "kernel/drivers/block/loop.ko\n",
    );
    // nbd missing: block-nbd only, a warning.
    let c = h.check("modules");
    assert_status(&c, Status::Warn);
    let t = text_of(&c);
    assert!(t.contains("loop: built into the kernel"), "{t}");
    assert!(t.contains("xen-blkback: available"), "{t}");
    assert!(t.contains("nbd: not in this kernel"), "{t}");
    // netback missing: every vif, a failure.
    write(
        &tree.join("modules.dep"),
        "kernel/drivers/block/xen-blkback/xen-blkback.ko.xz:\n",
    );
    let c = h.check("modules");
    assert_status(&c, Status::Fail);
    assert!(c.summary.contains("xen-netback"), "{c:#?}");
}

#[test]
fn directories_that_cannot_be_written() {
    let h = Host::healthy();
    let r = h.root().display().to_string();
    // A file where the lock directory should be; a state directory under a file; the log file a
    // directory.
    write(&h.at("locks-file"), "");
    write(&h.at("afile"), "");
    fs::create_dir_all(h.at("log/xen-hotplug.log")).unwrap();
    write(
        &h.paths.config_file,
        &format!(
            "log_file = \"{r}/log/xen-hotplug.log\"\nlock_dir = \"{r}/locks-file\"\n\
             state_dir = \"{r}/afile/state\"\nsyslog_socket = \"{r}/run/log\"\n"
        ),
    );
    let rep = h.report();
    let lock = rep.get("lock-dir").unwrap();
    assert_status(lock, Status::Fail);
    assert!(lock.summary.contains("is not a directory"), "{lock:#?}");
    let state = rep.get("state-dir").unwrap();
    assert_status(state, Status::Fail);
    assert!(
        state.summary.contains("afile is not a directory"),
        "{state:#?}"
    );
    let log = rep.get("log-dir").unwrap();
    assert_status(log, Status::Fail);
    assert!(log.summary.contains("not a regular file"), "{log:#?}");
    // A directory that does not exist yet under a writable one is fine.
    write(
        &h.paths.config_file,
        &format!(
            "log_file = \"{r}/new/log/x.log\"\nlock_dir = \"{r}/new/locks\"\n\
             state_dir = \"{r}/new/state\"\nsyslog_socket = \"{r}/run/log\"\n"
        ),
    );
    let rep = h.report();
    for id in ["log-dir", "lock-dir", "state-dir"] {
        let c = rep.get(id).unwrap();
        assert_status(c, Status::Ok);
        assert!(c.summary.contains("does not exist yet"), "{c:#?}");
    }
}

#[test]
fn syslog_socket_missing() {
    let mut h = Host::healthy();
    h._syslog = None;
    fs::remove_file(h.at("run/log")).unwrap();
    let c = h.check("syslog");
    assert_status(&c, Status::Warn);
    assert!(text_of(&c).contains("syslog = false"));
    // A warning and nothing worse: exit status 3.
    assert_eq!(h.report().exit_code(), super::super::EXIT_WARN);
    let cfg = fs::read_to_string(&h.paths.config_file).unwrap();
    write(&h.paths.config_file, &format!("{cfg}syslog = false\n"));
    assert_status(&h.check("syslog"), Status::Skip);
}

#[test]
fn leftover_records_and_lock_files() {
    let mut h = Host::healthy();
    h.paths.proc_ = PathBuf::from("/proc"); // real lock holders
    let sock = h.paths.xenstored_sockets[0].clone();
    let xs = xenplug_xenstore::XsClient::open_socket(&sock).unwrap();
    xs.write("backend/vbd/5/51712/state", "4").unwrap();
    let rec = h.at("state/xenplug-block");
    write(
        &rec.join("vbd-5-51712"),
        "version=1\nbackend=backend/vbd/5/51712\nkind=helper\nhelper=drbd\n",
    );
    assert_status(&h.check("leftovers"), Status::Ok);
    // A record whose backend is gone (the domain was destroyed while the script was killed).
    write(
        &rec.join("vbd-6-768"),
        "version=1\nbackend=backend/vbd/6/768\nkind=loop\ndevice=/dev/loop99\ndevnum=7:63\n\
         backing_dev=fe:1\nbacking_ino=12\nfile=/images/gone.img\n",
    );
    let c = h.check("leftovers");
    assert_status(&c, Status::Warn);
    let t = text_of(&c);
    assert!(t.contains("backend backend/vbd/6/768 is gone"), "{t}");
    assert!(t.contains("/dev/loop99 is no longer attached: rm"), "{t}");
    assert!(!t.contains("vbd-5-51712"), "{t}");
    fs::remove_file(rec.join("vbd-6-768")).unwrap();

    // A lock file held by a live process is fine; one nobody holds is a leftover.
    let held = h.at("locks/block");
    write(&held, "");
    let f = fs::File::open(&held).unwrap();
    let _lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    write(&h.at("locks/.block.queue"), "");
    let c = h.check("leftovers");
    assert_status(&c, Status::Ok);
    assert!(
        text_of(&c).contains(&format!("lock block: held by pid {}", std::process::id())),
        "{c:#?}"
    );
    write(&h.at("locks/iptables"), "");
    let c = h.check("leftovers");
    assert_status(&c, Status::Warn);
    let t = text_of(&c);
    assert!(t.contains("locks/iptables: lock file nobody holds"), "{t}");
    assert!(!t.contains(".block.queue"), "{t}");

    // Without xenstored, records cannot be judged: said so.
    h._xenstored = None;
    fs::remove_file(h.at("locks/iptables")).unwrap();
    let c = h.check("leftovers");
    assert_status(&c, Status::Warn);
    assert!(text_of(&c).contains("not checked: xenstored does not answer"));
}

#[test]
fn peer_daemon_down_dead_silent_or_with_failing_vms() {
    let mut h = Host::healthy();
    h._peer = None;
    fs::remove_file(&h.paths.peer_control).unwrap();
    let c = h.check("peer");
    assert_status(&c, Status::Warn);
    assert!(text_of(&c).contains("systemctl start xenplug-peer"));
    fs::remove_file(h.at("units/xenplug-peer.service")).unwrap();
    assert_status(&h.check("peer"), Status::Skip);
    // A socket file nobody listens on any more.
    drop(UnixListener::bind(&h.paths.peer_control).unwrap());
    let c = h.check("peer");
    assert_status(&c, Status::Warn);
    assert!(c.summary.contains("died"), "{c:#?}");
    fs::remove_file(&h.paths.peer_control).unwrap();
    // A daemon that never answers: bounded.
    h._peer = Some(fake_peer(&h.paths.peer_control, ""));
    let c = h.check("peer");
    assert_status(&c, Status::Warn);
    assert!(c.summary.contains("did not answer"), "{c:#?}");
    fs::remove_file(&h.paths.peer_control).unwrap();
    // VMs the daemon cannot serve.
    h._peer = Some(fake_peer(
        &h.paths.peer_control,
        r#"{"channels":3,"states":{"configured":1,"failed":1,"rejected":1}}"#,
    ));
    let c = h.check("peer");
    assert_status(&c, Status::Warn);
    assert!(c.summary.contains("failed 1"), "{c:#?}");
    assert!(text_of(&c).contains("xenplug-peer list"));
}
