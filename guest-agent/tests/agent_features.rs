//! What our agent does beyond qemu-ga, and the paths of it that only act on a real system:
//!
//! * a guest is never left frozen — a freeze nobody thaws ends at its time limit, when the
//!   channel goes away, when the agent is stopped, and, after the agent was killed, when it
//!   starts again; the `fsfreeze-hook.d` drop-ins run without the hook script;
//! * command filters from the configuration file and the command line, as qemu-ga combines
//!   them, shown in `guest-info`;
//! * suspend, vCPUs, memory blocks and set-time acting on an injected sysfs and recording
//!   programs (the real ones would suspend or re-clock the test machine).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::minroot::{proc_state, qemu_ga_binary, Client, MiniRoot};
use common::{guest_root, AgentProc, Host, Pty};
use serde_json::{json, Value};

fn wait_blocked(w: &std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while proc_state(w.id()) != Some('D') {
        assert!(
            proc_state(w.id()).is_some(),
            "the write finished on a frozen filesystem"
        );
        assert!(Instant::now() < deadline, "the writer never blocked");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_done(w: &mut std::process::Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = w.try_wait().unwrap() {
            assert!(st.success(), "{what}: writer failed");
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never thawed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn executable(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_guest_is_never_left_frozen() {
    if !xenplug_testkit::require_root()
        || ![
            "socat",
            "losetup",
            "mkfs.ext4",
            "utmpdump",
            "unshare",
            "nsenter",
            "fsfreeze",
        ]
        .iter()
        .all(|p| xenplug_testkit::require_program(p))
    {
        return;
    }
    let Some(qga) = qemu_ga_binary() else {
        assert!(
            !xenplug_testkit::in_ci(),
            "needs qemu-ga's unpacked package (tools/channel-deps.sh) for the test root"
        );
        return;
    };
    let mut mr = MiniRoot::new(&qga);
    executable(
        &mr.path("/etc/qemu/fsfreeze-hook"),
        "#!/bin/sh\necho \"$1\" >> /run/hook.log\n",
    );
    let log = mr.path("/run/hook.log");
    let freeze = |c: &mut Client| {
        assert_eq!(c.call("guest-fsfreeze-freeze", None), json!({"return": 1}));
    };

    // 1. Nobody thaws: the time limit does.
    let a = mr.start_ours("fsfreeze-timeout = 2\n", &[]);
    let mut c = Client::connect(&a);
    let t0 = Instant::now();
    freeze(&mut c);
    let mut w = mr.writer("timeout", "1");
    wait_blocked(&w);
    wait_done(&mut w, "time limit");
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        c.call("guest-fsfreeze-status", None),
        json!({"return": "thawed"})
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "freeze\nthaw\n");
    mr.signal(a.pid, nix::sys::signal::Signal::SIGTERM);
    drop((c, a));

    // 2. The channel goes away (QEMU's side closes: the tty hangs up).
    let a = mr.start_ours(
        "fsfreeze-timeout = 0\nfsfreeze-thaw-after-channel-loss = 1\n",
        &[],
    );
    let mut c = Client::connect(&a);
    freeze(&mut c);
    let mut w = mr.writer("channel", "2");
    wait_blocked(&w);
    let pid = a.pid;
    drop((c, a)); // kills socat: the pty goes
    wait_done(&mut w, "channel loss");
    mr.signal(pid, nix::sys::signal::Signal::SIGTERM);

    // 3. The agent is stopped.
    let a = mr.start_ours("fsfreeze-timeout = 0\n", &[]);
    let mut c = Client::connect(&a);
    freeze(&mut c);
    let mut w = mr.writer("stop", "3");
    wait_blocked(&w);
    mr.signal(a.pid, nix::sys::signal::Signal::SIGTERM);
    wait_done(&mut w, "agent stopped");
    drop((c, a));

    // 4. The agent is killed: the filesystem stays frozen until an agent starts again.
    let a = mr.start_ours("fsfreeze-timeout = 0\n", &[]);
    let mut c = Client::connect(&a);
    freeze(&mut c);
    let mut w = mr.writer("killed", "4");
    wait_blocked(&w);
    mr.signal(a.pid, nix::sys::signal::Signal::SIGKILL);
    drop((c, a));
    assert_eq!(proc_state(w.id()), Some('D'), "nothing else thaws");
    std::fs::write(&log, "").unwrap();
    let a = mr.start_ours("fsfreeze-timeout = 0\n", &[]);
    wait_done(&mut w, "agent restarted");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "thaw\n");
    assert_eq!(
        std::fs::read_to_string(mr.data.join("killed")).unwrap(),
        "4"
    );

    // 5. Drop-ins without the hook script: run in name order, backup files skipped.
    std::fs::remove_file(mr.path("/etc/qemu/fsfreeze-hook")).unwrap();
    let d = mr.path("/etc/qemu/fsfreeze-hook.d");
    std::fs::create_dir_all(&d).unwrap();
    executable(
        &d.join("10-log"),
        "#!/bin/sh\necho \"d $1\" >> /run/hook.log\n",
    );
    executable(
        &d.join("20-old.dpkg-old"),
        "#!/bin/sh\necho bad >> /run/hook.log\n",
    );
    std::fs::write(&log, "").unwrap();
    let mut c = Client::connect(&a);
    freeze(&mut c);
    assert_eq!(c.call("guest-fsfreeze-thaw", None), json!({"return": 1}));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "d freeze\nd thaw\n");
}

fn start_pty_agent(
    config: &str,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (AgentProc, Host) {
    let pty = Pty::new();
    let root = guest_root();
    std::fs::create_dir_all(root.path().join("etc/xenplug")).unwrap();
    std::fs::write(root.path().join("etc/xenplug/agent.toml"), config).unwrap();
    let mut a = vec!["--device", pty.slave_path.to_str().unwrap()];
    a.extend_from_slice(args);
    let agent = AgentProc::spawn_env(&[], &a, env, root);
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(20));
    (agent, host)
}

fn enabled(host: &mut Host) -> Vec<String> {
    let info = host.ok("guest-info", None);
    info["supported_commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["enabled"] == json!(true))
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn error(host: &mut Host, cmd: &str, args: Option<Value>) -> Value {
    let r = host.call(cmd, args);
    serde_json::to_value(match r {
        xenplug_channel::Response::Error { error, .. } => error,
        other => panic!("{cmd}: {other:?}"),
    })
    .unwrap()
}

#[test]
fn command_filters_from_file_and_command_line_as_qemu_ga_combines_them() {
    // The default: exec and file access off, listed as disabled, answered as qemu-ga answers.
    let (_a, mut h) = start_pty_agent("", &[], &[]);
    let on = enabled(&mut h);
    for off in [
        "guest-exec",
        "guest-exec-status",
        "guest-file-open",
        "guest-file-write",
        "guest-get-devices",
    ] {
        assert!(!on.contains(&off.to_string()), "{off} enabled");
    }
    assert!(on.contains(&"guest-fsfreeze-freeze".to_string()));
    assert_eq!(
        error(&mut h, "guest-exec", Some(json!({"path": "/bin/true"}))),
        json!({"class": "CommandNotFound", "desc": "Command guest-exec has been disabled"})
    );

    // An allow list in the file, a block list on the command line: allowed minus blocked.
    let (_a, mut h) = start_pty_agent(
        "allow-rpcs = [\"guest-ping\", \"guest-info\", \"guest-sync\", \"guest-sync-delimited\", \"guest-exec\"]\n",
        &["--block-rpcs", "guest-exec,guest-ping", "-b", "guest-info"],
        &[],
    );
    // guest-info is blocked too: ask what is enabled through the command's error instead.
    assert_eq!(
        error(&mut h, "guest-info", None)["desc"],
        "Command guest-info has been disabled"
    );
    for cmd in ["guest-ping", "guest-exec", "guest-get-osinfo"] {
        assert_eq!(
            error(&mut h, cmd, None),
            json!({"class": "CommandNotFound", "desc": format!("Command {cmd} has been disabled")})
        );
    }
    assert_eq!(h.ok("guest-sync", Some(json!({"id": 5}))), json!(5));
    let (_a, mut h) = start_pty_agent("", &["-a", "guest-info,guest-sync-delimited"], &[]);
    assert_eq!(enabled(&mut h), vec!["guest-sync-delimited", "guest-info"]);

    // `help` lists the commands; an unknown name is refused at start.
    let o = Command::new(env!("CARGO_BIN_EXE_xenplug-agent"))
        .args(["--block-rpcs", "help"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(
        list.lines().any(|l| l == "guest-fsfreeze-freeze-list"),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l == "guest-network-get-route"),
        "{list}"
    );
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.toml"), "block-rpcs = [\"guest-bogus\"]\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_xenplug-agent"))
        .arg("--config")
        .arg(d.path().join("a.toml"))
        .args(["--device", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("guest-bogus"));
}

#[test]
fn suspend_vcpus_memory_blocks_and_hwclock_act_on_the_system() {
    let t = tempfile::tempdir().unwrap();
    let sys = t.path().join("sys");
    let bin = t.path().join("bin");
    for d in [
        "devices/system/cpu/cpu0",
        "devices/system/cpu/cpu1",
        "devices/system/memory/memory5",
        "power",
    ] {
        std::fs::create_dir_all(sys.join(d)).unwrap();
    }
    std::fs::write(sys.join("devices/system/cpu/cpu1/online"), "1\n").unwrap();
    std::fs::write(sys.join("devices/system/memory/memory5/state"), "online\n").unwrap();
    std::fs::write(sys.join("devices/system/memory/memory5/removable"), "1\n").unwrap();
    std::fs::write(
        sys.join("devices/system/memory/block_size_bytes"),
        "8000000\n",
    )
    .unwrap();
    std::fs::write(sys.join("power/state"), "freeze mem disk\n").unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let log = t.path().join("programs.log");
    // systemd knows suspend only; no pm-utils.
    executable(
        &bin.join("systemctl"),
        &format!(
            "#!/bin/sh\necho \"systemctl $*\" >> '{}'\ncase \"$*\" in\n  'status systemd-suspend') exit 3;;\n  suspend) exit 0;;\n  *) exit 4;;\nesac\n",
            log.display()
        ),
    );
    executable(
        &bin.join("hwclock"),
        &format!("#!/bin/sh\necho \"hwclock $*\" >> '{}'\n", log.display()),
    );
    let path = std::ffi::OsString::from(format!("{}:/usr/bin:/bin", bin.display()));
    let (_a, mut h) = start_pty_agent(
        "",
        &[
            "--sys",
            sys.to_str().unwrap(),
            "--hwclock",
            bin.join("hwclock").to_str().unwrap(),
        ],
        &[("PATH", &path)],
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Suspend to RAM through systemd: no reply on success (the ping's reply is the next one).
    let (_, bytes) = h.session.request("guest-suspend-ram", None);
    h.session.abandon();
    h.pty.send(&bytes);
    assert_eq!(h.ok("guest-ping", None), json!({}));
    assert!(read_log().contains("systemctl status systemd-suspend\nsystemctl suspend\n"));
    // Hibernate: systemd says no unit, no pm-utils: the kernel's interface.
    let (_, bytes) = h.session.request("guest-suspend-disk", None);
    h.session.abandon();
    h.pty.send(&bytes);
    assert_eq!(h.ok("guest-ping", None), json!({}));
    assert_eq!(
        std::fs::read_to_string(sys.join("power/state")).unwrap(),
        "disk"
    );
    // Hybrid: nothing supports it.
    assert_eq!(
        error(&mut h, "guest-suspend-hybrid", None)["desc"],
        "the requested suspend mode is not supported by the guest"
    );

    // vCPUs and memory blocks.
    assert_eq!(
        h.ok(
            "guest-set-vcpus",
            Some(json!({"vcpus": [{"logical-id": 1, "online": false}]}))
        ),
        json!(1)
    );
    assert_eq!(
        std::fs::read_to_string(sys.join("devices/system/cpu/cpu1/online")).unwrap(),
        "0\n"
    );
    assert_eq!(
        h.ok("guest-get-vcpus", None),
        json!([{"logical-id": 0, "online": true, "can-offline": false},
               {"logical-id": 1, "online": false, "can-offline": true}])
    );
    assert_eq!(
        h.ok(
            "guest-set-memory-blocks",
            Some(json!({"mem-blks": [{"phys-index": 5, "online": false}]}))
        ),
        json!([{"phys-index": 5, "response": "success"}])
    );
    assert_eq!(
        std::fs::read_to_string(sys.join("devices/system/memory/memory5/state")).unwrap(),
        "offline"
    );
    assert_eq!(
        h.ok("guest-get-memory-blocks", None),
        json!([{"phys-index": 5, "online": false, "can-offline": true}])
    );
    assert_eq!(
        h.ok("guest-get-memory-block-info", None),
        json!({"size": 134217728})
    );

    // set-time without a time: the system clock from the RTC (`hwclock -s`).
    assert_eq!(h.ok("guest-set-time", None), json!({}));
    assert!(read_log().ends_with("hwclock -s\n"), "{}", read_log());
}

/// `guest-network-get-route` and `guest-get-load` (QEMU 9.1/10.0, absent from Debian's 7.2):
/// the kernel's routing table of a throwaway namespace, `ip -j route` as the oracle, and
/// /proc/loadavg.
#[test]
fn routes_and_load_as_the_kernel_has_them() {
    if !xenplug_testkit::require_root() || !xenplug_testkit::require_program("ip") {
        return;
    }
    let ns = xenplug_testkit::NetNs::new("rt").unwrap();
    for args in [
        &["link", "add", "rt0", "type", "veth", "peer", "name", "rt1"][..],
        &["link", "set", "rt0", "up"],
        &["link", "set", "rt1", "up"],
        &["addr", "add", "10.77.0.2/24", "dev", "rt0"],
        &[
            "route",
            "add",
            "10.99.0.0/16",
            "via",
            "10.77.0.1",
            "metric",
            "50",
        ],
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:7::2/64",
            "dev",
            "rt0",
            "nodad",
        ],
        &[
            "-6",
            "route",
            "add",
            "2001:db8:99::/48",
            "via",
            "2001:db8:7::1",
            "metric",
            "70",
        ],
    ] {
        ns.ip(args).unwrap();
    }
    let pty = Pty::new();
    let root = guest_root();
    let agent = AgentProc::spawn_in(
        &["ip", "netns", "exec", ns.name()],
        &["--device", pty.slave_path.to_str().unwrap()],
        root,
    );
    let mut h = Host::new(pty);
    h.handshake(Duration::from_secs(20));
    let routes = h.ok("guest-network-get-route", None);
    let rs = routes.as_array().unwrap();
    let find = |dst: &str| {
        rs.iter()
            .find(|r| r["destination"] == dst)
            .unwrap_or_else(|| panic!("no route to {dst} in {routes}"))
            .clone()
    };
    let r = find("10.99.0.0");
    assert_eq!(
        (
            &r["iface"],
            &r["gateway"],
            &r["mask"],
            &r["metric"],
            &r["version"]
        ),
        (
            &json!("rt0"),
            &json!("10.77.0.1"),
            &json!("255.255.0.0"),
            &json!(50),
            &json!(4)
        )
    );
    assert_eq!(find("10.77.0.0")["mask"], "255.255.255.0");
    let r = find("2001:db8:99::");
    assert_eq!(
        (
            &r["iface"],
            &r["nexthop"],
            &r["desprefixlen"],
            &r["metric"],
            &r["version"]
        ),
        (
            &json!("rt0"),
            &json!("2001:db8:7::1"),
            &json!("48"),
            &json!(70),
            &json!(6)
        )
    );
    // Every IPv4 route `ip` shows in the main table is there.
    let oracle: Value =
        serde_json::from_str(&ns.ip(&["-j", "route", "show", "table", "main"]).unwrap()).unwrap();
    for o in oracle.as_array().unwrap() {
        let dst = o["dst"].as_str().unwrap();
        let dst = dst.split('/').next().unwrap();
        let dst = if dst == "default" { "0.0.0.0" } else { dst };
        assert!(
            rs.iter()
                .any(|r| r["destination"] == dst && r["iface"] == o["dev"]),
            "{o} missing from {routes}"
        );
    }
    let l = h.ok("guest-get-load", None);
    let text = std::fs::read_to_string("/proc/loadavg").unwrap();
    let now: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .map(|x| x.parse().unwrap())
        .collect();
    for (k, v) in ["load1m", "load5m", "load15m"].iter().zip(now) {
        let got = l[*k].as_f64().unwrap();
        assert!((got - v).abs() < 2.0, "{k}: {got} vs {v}");
    }
    drop(agent);
}
