//! Helpers shared by the privileged tests: a real xenstored, running a script's public entry
//! point inside a namespace, and `ip -j`/`nft -j` oracles.
#![allow(dead_code)]

pub mod frames;

use std::os::fd::AsFd;
use std::process::ExitCode;

use serde_json::Value;
use xenplug_hotplug::Raw;
use xenplug_testkit::NetNs;
use xenplug_vif::scripts::Script;
use xenplug_vif::SCRIPTS;
use xenplug_xenstore::XsOps;
use xenplug_xenstored::testing::{spawn_daemon, TestDaemon};

/// A real xenstored (ours, on a throwaway socket) holding the test's nodes.
pub struct Xs(pub TestDaemon);

impl Xs {
    pub fn new() -> Self {
        Xs(spawn_daemon())
    }

    pub fn abs(p: &str) -> String {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("/local/domain/0/{p}")
        }
    }

    pub fn set(&self, p: &str, v: &str) {
        self.0.store().write(&Self::abs(p), v).unwrap();
    }

    pub fn value(&self, p: &str) -> Option<String> {
        self.0.store().read(&Self::abs(p)).unwrap()
    }

    pub fn socket(&self) -> String {
        self.0.socket().to_str().unwrap().to_string()
    }
}

/// [`run_in`], which must exit successfully.
#[track_caller]
pub fn run_in_ok(ns: &NetNs, script: Script, args: &[&str], env: &[(&str, &str)], xs: &Xs) {
    assert_eq!(run_in(ns, script, args, env, xs), ExitCode::SUCCESS);
}

/// Run `script`'s public entry point (from [`SCRIPTS`]) with `args`/`env` inside `ns`, talking
/// to `xs` through `XENSTORED_PATH`, on a thread `setns`ed into the namespace.
pub fn run_in(
    ns: &NetNs,
    script: Script,
    args: &[&str],
    env: &[(&str, &str)],
    xs: &Xs,
) -> ExitCode {
    run_in_with(ns, script, args, env, &xs.socket(), None)
}

/// [`run_in`] against the xenstored socket `socket` (a domain socket: the script then acts as
/// that domain, e.g. a driver domain), logging to `log` if given.
pub fn run_in_with(
    ns: &NetNs,
    script: Script,
    args: &[&str],
    env: &[(&str, &str)],
    socket: &str,
    log: Option<&std::path::Path>,
) -> ExitCode {
    let path = ns.path();
    let socket = socket.to_string();
    let log = log
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    let main = SCRIPTS
        .iter()
        .find(|(n, _)| *n == script.name())
        .expect("script in SCRIPTS")
        .1;
    let args: Vec<String> = std::iter::once(format!("/etc/xen/scripts/{}", script.name()))
        .chain(args.iter().map(|s| s.to_string()))
        .collect();
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("XENSTORED_PATH".into(), socket));
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("xenplug.toml");
        std::fs::write(&cfg, "").unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let mut env = env;
        for (k, v) in [
            ("XENPLUG_LOG_FILE", log),
            ("XENPLUG_SYSLOG", "false".into()),
            ("XENPLUG_CONFIG", cfg.to_str().unwrap().into()),
            ("XENPLUG_LOCK_DIR", d.clone()),
            ("XENPLUG_SCRIPTS_DIR", d.clone()),
            ("XENPLUG_STATE_DIR", d),
        ] {
            // A test's own setting wins (a state directory it prepared, say).
            if !env.iter().any(|(e, _)| e == k) {
                env.push((k.into(), v));
            }
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let envr: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        main(Raw::new(&argv, &envr))
    })
    .join()
    .expect("script thread")
}

pub fn link(ns: &NetNs, name: &str) -> Option<Value> {
    let out = ns.ip_json(&["link", "show"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == name)
        .cloned()
}

/// The MAC address of `dev` in `ns`, as xenstore's `mac` node holds the guest's.
pub fn mac_of(ns: &NetNs, dev: &str) -> String {
    link(ns, dev).expect("link")["address"]
        .as_str()
        .expect("address")
        .to_string()
}

pub fn up(l: &Value) -> bool {
    l["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

pub fn nft_chains(ns: &NetNs) -> Vec<String> {
    let out = ns
        .command("nft")
        .args(["-j", "list", "chains"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["nftables"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["chain"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// host namespace with bridge xenbr0 (MTU 1400, 10.0.0.1/24, up) and vif5.0 (veth) whose peer
/// `eth0` is in the guest namespace.
pub fn setup(tag: &str) -> (NetNs, NetNs) {
    let host = NetNs::new(tag).unwrap();
    let guest = NetNs::new(&format!("{tag}g")).unwrap();
    host.ip(&["link", "add", "xenbr0", "mtu", "1400", "type", "bridge"])
        .unwrap();
    host.ip(&["addr", "add", "10.0.0.1/24", "dev", "xenbr0"])
        .unwrap();
    host.ip(&["link", "set", "xenbr0", "up"]).unwrap();
    host.ip(&[
        "link",
        "add",
        "vif5.0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        guest.name(),
    ])
    .unwrap();
    guest.ip(&["link", "set", "eth0", "up"]).unwrap();
    (host, guest)
}

/// True when the kernel can police at ingress (cls_matchall + act_police), probed with `tc` on
/// a throwaway veth pair in `ns`.
pub fn police_supported(ns: &NetNs) -> bool {
    ns.ip(&[
        "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
    ])
    .unwrap();
    ns.tc(&["qdisc", "add", "dev", "probe0", "ingress"]);
    let ok = ns
        .command("tc")
        .args([
            "filter", "add", "dev", "probe0", "ingress", "matchall", "action", "police", "rate",
            "1mbit", "burst", "128k", "drop",
        ])
        .output()
        .unwrap()
        .status
        .success();
    ns.ip(&["link", "del", "probe0"]).unwrap();
    ok
}

/// Run `f` on a thread that has entered `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}
