//! Applying a configuration for real, inside private UTS + mount + network namespaces with a
//! temporary root: the agent runs as `ip netns exec NS unshare --uts --mount -- xenplug-agent
//! --device PTY --root TMP` and is driven over the pty. Checked against the kernel with `ip -j`
//! (netlink dumps) and `nsenter -u hostname`, and against the files written. This machine's host
//! name, addresses, users and keys are never touched.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::{guest_root, AgentProc, Host, Pty};
use serde_json::{json, Value};
use xenplug_channel::host::HostEvent;
use xenplug_testkit::NetNs;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKdh7c6XyRUHvJFOz6oUvnG9NDFjeQh79Yr0YH7oWo6q admin@example";

fn ipj(ns: &NetNs, args: &[&str]) -> Value {
    serde_json::from_str(&ns.ip_json(args).unwrap()).unwrap()
}

/// The addresses of `dev` as `addr/prefix`, from `ip -j addr show`.
fn addresses(ns: &NetNs, dev: &str) -> Vec<String> {
    let addrs = ipj(ns, &["addr", "show", "dev", dev]);
    addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The prefix that runs the agent in `ns` and private UTS and mount namespaces (every program
/// execs, so the child's pid is the agent's).
fn in_namespaces(ns: &NetNs) -> [&str; 8] {
    [
        "ip",
        "netns",
        "exec",
        ns.name(),
        "unshare",
        "--uts",
        "--mount",
        "--",
    ]
}

#[test]
fn apply_in_private_namespaces() {
    if !xenplug_testkit::require_root()
        || !xenplug_testkit::require_program("unshare")
        || !xenplug_testkit::require_program("nsenter")
        || !xenplug_testkit::require_program("ip")
    {
        return;
    }
    let host_name_before = nix::unistd::gethostname().unwrap();
    let ns = NetNs::new("chan").unwrap();
    // Two NICs (veth pairs: this kernel has no dummy driver); the peers stay down.
    ns.ip(&[
        "link",
        "add",
        "nic0",
        "address",
        "00:16:3e:aa:bb:01",
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
    ])
    .unwrap();
    ns.ip(&[
        "link",
        "add",
        "nic1",
        "address",
        "00:16:3e:aa:bb:02",
        "type",
        "veth",
        "peer",
        "name",
        "peer1",
    ])
    .unwrap();

    let root = guest_root();
    let r = root.path().to_path_buf();
    // A guest that uses ifupdown too, with a plain resolv.conf.
    std::fs::create_dir_all(r.join("etc/network/interfaces.d")).unwrap();
    std::fs::write(
        r.join("etc/network/interfaces"),
        "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n",
    )
    .unwrap();
    std::fs::create_dir_all(r.join("sbin")).unwrap();
    std::fs::write(r.join("sbin/ifup"), "").unwrap();
    std::fs::write(r.join("etc/resolv.conf"), "nameserver 10.255.255.1\n").unwrap();
    std::fs::write(
        r.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n",
    )
    .unwrap();

    let pty = Pty::new();
    let dev = pty.slave_path.to_str().unwrap().to_string();
    let prefix = in_namespaces(&ns);
    let agent = AgentProc::spawn_in(&prefix, &["--device", &dev], root);
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(15));

    let doc = json!({
        "instance-id": "iid-ns", "generation": 1,
        "hostname": "guest-one", "fqdn": "guest-one.example.org",
        "network": {"version": 2, "ethernets": {
            "lan": {"match": {"macaddress": "00:16:3e:aa:bb:01"}, "set-name": "lan0", "mtu": 1400,
                    "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
                    "routes": [{"to": "default", "via": "192.0.2.1"},
                               {"to": "198.51.100.0/24", "via": "192.0.2.254", "metric": 50}],
                    "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.org"]}},
            "nic1": {"dhcp4": true}}},
        "users": [{"name": "alice", "ssh_authorized_keys": [KEY],
                   "hashed_passwd": "$6$saltsalt$Hk7mF4.x1y2z3", "lock_passwd": false}]
    });
    let t0 = std::time::Instant::now();
    let res = host.ok("xenplug-apply-config", Some(json!({"config": doc})));
    eprintln!("apply took {:?}: {res}", t0.elapsed());
    assert_eq!(res["applied"], json!(true), "{res}");

    // Host name: in the agent's UTS namespace only.
    let out = Command::new("nsenter")
        .args(["-t", &agent.pid().to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "guest-one");
    assert_eq!(nix::unistd::gethostname().unwrap(), host_name_before);
    assert_eq!(
        host.ok("guest-get-host-name", None),
        json!({"host-name": "guest-one"})
    );

    // Links, addresses, routes: netlink dumps through `ip -j`.
    let links = ipj(&ns, &["link", "show", "lan0"]);
    assert_eq!(links[0]["address"], json!("00:16:3e:aa:bb:01"));
    assert_eq!(links[0]["mtu"], json!(1400));
    assert!(links[0]["flags"].as_array().unwrap().contains(&json!("UP")));
    let have = addresses(&ns, "lan0");
    assert!(have.contains(&"192.0.2.10/24".to_string()), "{have:?}");
    assert!(have.contains(&"2001:db8::10/64".to_string()), "{have:?}");
    let routes = ipj(&ns, &["route", "show"]);
    let rs = routes.as_array().unwrap();
    assert!(
        rs.iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "192.0.2.1" && r["dev"] == "lan0"),
        "{routes}"
    );
    assert!(
        rs.iter().any(|r| r["dst"] == "198.51.100.0/24"
            && r["gateway"] == "192.0.2.254"
            && r["metric"] == 50),
        "{routes}"
    );
    // nic1 (DHCP) is persisted, not given static addresses.
    let d1 = ipj(&ns, &["-4", "addr", "show", "dev", "nic1"]);
    assert!(d1[0]["addr_info"]
        .as_array()
        .map(|a| a.is_empty())
        .unwrap_or(true));

    // guest-network-get-interfaces sees the namespace.
    let ifs = host.ok("guest-network-get-interfaces", None);
    let lan = ifs
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "lan0")
        .unwrap();
    assert_eq!(lan["hardware-address"], json!("00:16:3e:aa:bb:01"));
    assert!(lan["ip-addresses"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["ip-address"] == "192.0.2.10"
            && a["prefix"] == 24
            && a["ip-address-type"] == "ipv4"));

    // Files.
    let rd = |p: &str| std::fs::read_to_string(r.join(p)).unwrap();
    assert_eq!(rd("etc/hostname"), "guest-one\n");
    assert!(rd("etc/hosts").starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n# BEGIN xenplug-agent\n127.0.1.1\tguest-one.example.org guest-one\n# END xenplug-agent\n"), "{}", rd("etc/hosts"));
    // The guest uses ifupdown: its fragment (and the rename for udev), no networkd files.
    assert!(rd("etc/systemd/network/10-xenplug-lan.link").contains("[Link]\nName=lan0\n"));
    assert!(!r
        .join("etc/systemd/network/10-xenplug-lan.network")
        .exists());
    let ifu = rd("etc/network/interfaces.d/xenplug-agent");
    assert!(
        ifu.contains("auto lan0\niface lan0 inet static\n    address 192.0.2.10/24\n"),
        "{ifu}"
    );
    assert!(ifu.contains("auto nic1\niface nic1 inet dhcp\n"), "{ifu}");
    assert_eq!(
        rd("etc/resolv.conf"),
        "# Written by xenplug-agent.\nsearch example.org\nnameserver 192.0.2.53\n"
    );
    for p in [
        "etc/hostname",
        "etc/hosts",
        "etc/network/interfaces.d/xenplug-agent",
    ] {
        assert_eq!(
            std::fs::metadata(r.join(p)).unwrap().mode() & 0o777,
            0o644,
            "{p}"
        );
    }
    // Keys: owner alice, 0600 in a 0700 .ssh, our block only.
    let ssh = r.join("home/alice/.ssh");
    let dm = std::fs::metadata(&ssh).unwrap();
    assert_eq!((dm.uid(), dm.gid(), dm.mode() & 0o777), (4242, 4242, 0o700));
    let km = std::fs::metadata(ssh.join("authorized_keys")).unwrap();
    assert_eq!((km.uid(), km.gid(), km.mode() & 0o777), (4242, 4242, 0o600));
    assert!(rd("home/alice/.ssh/authorized_keys").contains(&format!("\n{KEY}\n")));
    // Password: hash set, unlocked; shadow keeps its mode.
    let shadow = rd("etc/shadow");
    assert!(
        shadow.contains("alice:$6$saltsalt$Hk7mF4.x1y2z3:"),
        "{shadow}"
    );
    assert!(shadow.starts_with("root:*:19000:0:99999:7:::\n"));
    // State recorded; no temporary files anywhere under etc/.
    assert_eq!(
        host.ok("xenplug-get-config-generation", None),
        json!({"instance-id": "iid-ns", "generation": 1})
    );
    let stray = Command::new("find")
        .arg(r.join("etc"))
        .arg(r.join("home"))
        .args(["-name", ".*xenplug-*"])
        .output()
        .unwrap();
    assert!(
        stray.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&stray.stdout)
    );

    // Same generation again: a no-op.
    let res = host.ok("xenplug-apply-config", Some(json!({"config": doc})));
    assert_eq!(
        res,
        json!({"instance-id": "iid-ns", "generation": 1, "applied": false, "changes": []})
    );
    // A new generation changing only the keys: the network is re-checked, nothing re-added.
    let mut doc2 = doc.clone();
    doc2["generation"] = json!(2);
    doc2["users"][0]["ssh_authorized_keys"] = json!([]);
    let res = host.ok("xenplug-apply-config", Some(json!({"config": doc2})));
    let changes: Vec<String> = serde_json::from_value(res["changes"].clone()).unwrap();
    assert!(
        changes.contains(&"ssh-keys alice".to_string()),
        "{changes:?}"
    );
    assert!(
        !changes.iter().any(|c| c.starts_with("address")),
        "{changes:?}"
    );
    assert!(!rd("home/alice/.ssh/authorized_keys").contains("xenplug-agent"));

    // Generation 3 moves the address and drops the extra route: what generation 2 configured
    // and 3 no longer asks for is taken back; an address we never configured stays.
    ns.ip(&["addr", "add", "10.9.9.9/32", "dev", "lan0"])
        .unwrap();
    let mut doc3 = doc2.clone();
    doc3["generation"] = json!(3);
    doc3["network"]["ethernets"]["lan"]["addresses"] = json!(["192.0.2.11/24", "2001:db8::10/64"]);
    doc3["network"]["ethernets"]["lan"]["routes"] = json!([{"to": "default", "via": "192.0.2.1"}]);
    let res = host.ok("xenplug-apply-config", Some(json!({"config": doc3})));
    assert_eq!(res["applied"], json!(true));
    let have = addresses(&ns, "lan0");
    assert!(have.contains(&"192.0.2.11/24".to_string()), "{have:?}");
    assert!(!have.contains(&"192.0.2.10/24".to_string()), "{have:?}");
    assert!(have.contains(&"10.9.9.9/32".to_string()), "{have:?}");
    let routes = ipj(&ns, &["route", "show"]);
    let rs = routes.as_array().unwrap();
    assert!(
        !rs.iter().any(|r| r["dst"] == "198.51.100.0/24"),
        "{routes}"
    );
    assert!(
        rs.iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "192.0.2.1"),
        "{routes}"
    );
    assert!(rd("etc/network/interfaces.d/xenplug-agent").contains("address 192.0.2.11/24\n"));
    drop(agent);
}

/// Every file under `root` with its mode and content (the lock file `lckpwdf` leaves aside).
fn tree(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == "etc/.pwd.lock" || rel == "shutdown.log" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.push(format!("{rel}/ {:o}", m.mode() & 0o7777));
                stack.push(p);
            } else {
                out.push(format!(
                    "{rel} {:o} {}:{} {:?}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap())
                ));
            }
        }
    }
    out.sort();
    out
}

/// The kernel's view of one link: name, MTU, flags, addresses, and the main table's routes.
fn kernel_state(ns: &NetNs, mac: &str) -> String {
    let links = ipj(ns, &["link", "show"]);
    let link = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == mac)
        .unwrap()
        .clone();
    let name = link["ifname"].as_str().unwrap().to_string();
    let mut addrs = addresses(ns, &name);
    addrs.sort();
    let mut routes: Vec<String> = ipj(ns, &["route", "show", "table", "main"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} via {} dev {} metric {}",
                r["dst"], r["gateway"], r["dev"], r["metric"]
            )
        })
        .collect();
    routes.sort();
    // Administrative state only: carrier flags follow the kernel's link watch, asynchronously.
    let up = link["flags"].as_array().unwrap().contains(&json!("UP"));
    format!(
        "link {name} mtu {} up {up}\naddrs {addrs:?}\nroutes {routes:?}",
        link["mtu"]
    )
}

/// Issue 12: a generation that fails part way (here the kernel refuses a route whose gateway
/// is on no subnet, after the agent already took back the old address and route, renamed the
/// link, changed its MTU, added the new address and a default route, and before the host name
/// and the keys) leaves the previous generation exactly in place, and the host is told so.
#[test]
fn a_generation_that_fails_part_way_is_rolled_back() {
    if !xenplug_testkit::require_root()
        || !xenplug_testkit::require_program("unshare")
        || !xenplug_testkit::require_program("nsenter")
        || !xenplug_testkit::require_program("ip")
    {
        return;
    }
    let mac = "00:16:3e:aa:bc:01";
    let ns = NetNs::new("chanrb").unwrap();
    ns.ip(&[
        "link", "add", "nic0", "address", mac, "type", "veth", "peer", "name", "peer0",
    ])
    .unwrap();
    let root = guest_root();
    let r = root.path().to_path_buf();
    std::fs::create_dir_all(r.join("etc/network/interfaces.d")).unwrap();
    std::fs::write(
        r.join("etc/network/interfaces"),
        "source /etc/network/interfaces.d/*\n",
    )
    .unwrap();
    std::fs::create_dir_all(r.join("sbin")).unwrap();
    std::fs::write(r.join("sbin/ifup"), "").unwrap();
    std::fs::write(r.join("etc/resolv.conf"), "nameserver 10.255.255.1\n").unwrap();
    let pty = Pty::new();
    let dev = pty.slave_path.to_str().unwrap().to_string();
    let prefix = in_namespaces(&ns);
    let agent = AgentProc::spawn_in(&prefix, &["--device", &dev], root);
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(15));
    let hostname = || {
        let out = Command::new("nsenter")
            .args(["-t", &agent.pid().to_string(), "-u", "hostname"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    let one = json!({
        "instance-id": "iid-rb", "generation": 1, "hostname": "one",
        "network": {"version": 2, "ethernets": {"lan": {
            "match": {"macaddress": mac}, "set-name": "lan0",
            "addresses": ["192.0.2.10/24"],
            "routes": [{"to": "default", "via": "192.0.2.1"}],
            "nameservers": {"addresses": ["192.0.2.53"]}}}},
        "users": [{"name": "alice", "ssh_authorized_keys": [KEY], "lock_passwd": true}]
    });
    assert_eq!(
        host.ok("xenplug-apply-config", Some(json!({"config": one})))["applied"],
        json!(true)
    );
    let (kernel1, files1, host1) = (kernel_state(&ns, mac), tree(&r), hostname());
    assert!(
        kernel1.starts_with("link lan0 mtu 1500 up true"),
        "{kernel1}"
    );
    assert!(kernel1.contains("192.0.2.10/24"), "{kernel1}");
    assert_eq!(host1, "one");

    let two = json!({
        "instance-id": "iid-rb", "generation": 2, "hostname": "two",
        "network": {"version": 2, "ethernets": {"lan": {
            "match": {"macaddress": mac}, "set-name": "lan1", "mtu": 1400,
            "addresses": ["198.51.100.7/24"],
            "routes": [{"to": "default", "via": "198.51.100.1"},
                       {"to": "203.0.113.0/24", "via": "10.200.0.1"}],
            "nameservers": {"addresses": ["198.51.100.53"]}}}},
        "users": [{"name": "alice", "ssh_authorized_keys": [], "lock_passwd": false,
                   "hashed_passwd": "$6$two$two"}]
    });
    let err = match host.call("xenplug-apply-config", Some(json!({"config": two}))) {
        xenplug_channel::Response::Error { error, .. } => error.desc,
        other => panic!("generation 2 was applied: {other:?}"),
    };
    assert!(
        err.contains("generation 2 of instance iid-rb was not applied")
            && err.contains("generation 1 of instance iid-rb is in place"),
        "{err}"
    );
    assert_eq!(
        kernel_state(&ns, mac),
        kernel1,
        "the kernel after the failed generation"
    );
    assert_eq!(tree(&r), files1, "the files after the failed generation");
    assert_eq!(hostname(), "one");
    assert_eq!(
        host.ok("xenplug-get-config-generation", None),
        json!({"instance-id": "iid-rb", "generation": 1})
    );
    drop(agent);
}

/// A UTS namespace that outlives the agents, as a guest's kernel outlives its agent: held by
/// `cat` on a pipe (killed on drop).
struct Uts(common::Killed);

impl Uts {
    fn new(hostname: &str) -> Uts {
        let child = Command::new("unshare")
            .args(["--uts", "--", "cat"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let u = Uts(common::Killed(child));
        // Never act on this machine's namespace: wait until the holder has its own.
        let mine = std::fs::read_link("/proc/self/ns/uts").unwrap();
        let theirs = format!("/proc/{}/ns/uts", u.pid());
        common::wait_until("the UTS namespace", Duration::from_secs(10), || {
            std::fs::read_link(&theirs).is_ok_and(|l| l != mine)
        });
        let st = Command::new("nsenter")
            .args(["-t", &u.pid(), "-u", "hostname", hostname])
            .status()
            .unwrap();
        assert!(st.success());
        u
    }

    fn pid(&self) -> String {
        self.0 .0.id().to_string()
    }

    fn hostname(&self) -> String {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid(), "-u", "hostname"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The NIC found by `mac`: name, MTU, up; global addresses; routes other than link-local.
fn nic_state(ns: &NetNs, mac: &str) -> String {
    let links = ipj(ns, &["link", "show"]);
    let link = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == mac)
        .unwrap()
        .clone();
    let name = link["ifname"].as_str().unwrap().to_string();
    let mut addrs: Vec<String> = ipj(ns, &["addr", "show", "dev", &name])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    addrs.sort();
    let mut routes = Vec::new();
    for fam in ["-4", "-6"] {
        let rs = ipj(ns, &[fam, "route", "show", "table", "main", "dev", &name]);
        routes.extend(
            rs.as_array()
                .unwrap()
                .iter()
                .filter(|r| !r["dst"].as_str().unwrap_or("").starts_with("fe80"))
                .map(|r| format!("{} via {} metric {}", r["dst"], r["gateway"], r["metric"])),
        );
    }
    routes.sort();
    let up = link["flags"].as_array().unwrap().contains(&json!("UP"));
    format!(
        "link {name} mtu {} up {up}\naddrs {addrs:?}\nroutes {routes:?}",
        link["mtu"]
    )
}

/// One guest for the crash test: a network namespace with the NIC, a UTS namespace, a root
/// with the host's shadow-utils (`useradd`, `groupadd` run with `--root`), and the channel.
struct CrashWorld {
    ns: NetNs,
    uts: Uts,
    /// The root, while no agent holds it.
    root: Option<tempfile::TempDir>,
    root_path: std::path::PathBuf,
    host: Host,
    dev: String,
}

const CRASH_MAC: &str = "00:16:3e:aa:bc:0d";

impl CrashWorld {
    fn new() -> CrashWorld {
        let ns = NetNs::new("chancrash").unwrap();
        ns.ip(&[
            "link", "add", "nic0", "address", CRASH_MAC, "type", "veth", "peer", "name", "peer0",
        ])
        .unwrap();
        ns.ip(&["link", "set", "peer0", "up"]).unwrap();
        let root = guest_root();
        let r = root.path();
        for d in ["usr/sbin", "etc/default", "etc/skel"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for p in ["useradd", "groupadd"] {
            std::fs::copy(format!("/usr/sbin/{p}"), r.join("usr/sbin").join(p)).unwrap();
        }
        std::fs::write(r.join("etc/group"), "root:x:0:\nalice:x:4242:\n").unwrap();
        std::fs::write(
            r.join("etc/login.defs"),
            "USERGROUPS_ENAB yes\nUID_MIN 1000\nUID_MAX 60000\nGID_MIN 1000\nGID_MAX 60000\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/default/useradd"), "SHELL=/bin/sh\n").unwrap();
        std::fs::write(r.join("etc/skel/.profile"), "# skeleton\n").unwrap();
        std::fs::write(r.join("etc/resolv.conf"), "nameserver 10.255.255.1\n").unwrap();
        let pty = Pty::new();
        let dev = pty.slave_path.to_str().unwrap().to_string();
        CrashWorld {
            ns,
            uts: Uts::new("image"),
            root_path: root.path().to_path_buf(),
            root: Some(root),
            host: Host::new(pty),
            dev,
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.root_path.clone()
    }

    /// Start an agent in the guest's namespaces (with `env`), and handshake unless it is to
    /// die on its own.
    fn agent(&mut self, env: &[(&str, &std::ffi::OsStr)]) -> AgentProc {
        let pid = self.uts.pid();
        let prefix = [
            "nsenter",
            "-t",
            &pid,
            "-u",
            "--",
            "ip",
            "netns",
            "exec",
            self.ns.name(),
        ];
        let a = AgentProc::spawn_env(
            &prefix,
            &["--device", &self.dev],
            env,
            self.root.take().unwrap(),
        );
        self.host.handshake(Duration::from_secs(15));
        a
    }

    /// Wait for the agent's end (after a SIGKILL when `kill`: it is idle, its last apply
    /// finished), and take the root back.
    fn stop(&mut self, mut a: AgentProc, kill: bool) -> std::process::ExitStatus {
        if kill {
            a.child.kill().unwrap();
        }
        let st = a.child.wait().unwrap();
        let placeholder = tempfile::tempdir().unwrap();
        self.root = Some(std::mem::replace(&mut a.root, placeholder));
        st
    }

    /// Every file (the copied programs and the shutdown recorder, which names the root,
    /// aside), the NIC, the host name.
    fn state(&self) -> (Vec<String>, String, String) {
        let files = tree(&self.path())
            .into_iter()
            .filter(|l| !l.starts_with("usr/sbin/") && !l.starts_with("fake-shutdown "))
            .collect();
        (files, nic_state(&self.ns, CRASH_MAC), self.uts.hostname())
    }
}

fn crash_doc(g: u64) -> Value {
    if g == 1 {
        json!({"instance-id": "iid-crash", "generation": 1, "hostname": "one",
            "network": {"version": 2, "ethernets": {"lan": {
                "match": {"macaddress": CRASH_MAC}, "set-name": "lan0",
                "addresses": ["192.0.2.10/24"],
                "routes": [{"to": "default", "via": "192.0.2.1"}],
                "nameservers": {"addresses": ["192.0.2.53"]}}}},
            "users": [{"name": "alice", "ssh_authorized_keys": [KEY], "lock_passwd": true}]})
    } else {
        json!({"instance-id": "iid-crash", "generation": 2, "hostname": "two",
            "fqdn": "two.example.org",
            "network": {"version": 2, "ethernets": {"lan": {
                "match": {"macaddress": CRASH_MAC}, "set-name": "lan1", "mtu": 1400,
                "addresses": ["198.51.100.7/24", "2001:db8::7/64"],
                "routes": [{"to": "default", "via": "198.51.100.1"},
                           {"to": "203.0.113.0/24", "via": "198.51.100.254", "metric": 7}],
                "nameservers": {"addresses": ["198.51.100.53"], "search": ["example.org"]}}}},
            "users": [{"name": "alice", "ssh_authorized_keys": [], "lock_passwd": false,
                       "hashed_passwd": "$6$two$two"},
                      {"name": "carol", "groups": ["ops"], "ssh_authorized_keys": [KEY]}]})
    }
}

/// Issue 13: the agent SIGKILLed (by itself, through the fault-injection variable
/// `XENPLUG_AGENT_CRASH_AT`) right before and right after writing each record of its apply
/// journal — with the real kernel (link renamed, MTU, addresses, routes), the real host name,
/// shadow-utils creating a group, a user and its home — then started again as systemd would:
/// before it answers anything, the guest is exactly at generation 1 or exactly at generation 2
/// (every file with its mode and owner, the NIC, the host name), the generation it reports is
/// that one, and re-sending generation 2 brings it there.
///
/// Two tests, kills before and kills after each record, so that the harness runs them side by
/// side (each is about 30 agent restarts).
#[test]
fn a_kill_before_each_journal_record_then_a_restart_leaves_one_generation() {
    if let Some((back, forward)) = kill_at_every_journal_step("before") {
        // The last kill point, before the finished journal is removed (the generation marker
        // written), rolls forward; every earlier one back.
        assert!(back > 0 && forward > 0, "{back} back, {forward} forward");
    }
}

/// See `a_kill_before_each_journal_record_then_a_restart_leaves_one_generation`.
#[test]
fn a_kill_after_each_journal_record_then_a_restart_leaves_one_generation() {
    if let Some((back, forward)) = kill_at_every_journal_step("after") {
        assert!(back > 0, "{back} back, {forward} forward");
    }
}

/// Kills `when` ("before" or "after") each journal record of generation 2's apply; returns how
/// many recoveries rolled back and forward (None when it cannot run here: the skip is logged).
fn kill_at_every_journal_step(when: &str) -> Option<(usize, usize)> {
    if !xenplug_testkit::require_root()
        || !xenplug_testkit::require_program("unshare")
        || !xenplug_testkit::require_program("nsenter")
        || !xenplug_testkit::require_program("ip")
        || !xenplug_testkit::require(
            std::path::Path::new("/usr/sbin/useradd").exists()
                && std::path::Path::new("/usr/sbin/groupadd").exists(),
            "needs shadow-utils (package passwd) on this machine",
        )
    {
        return None;
    }
    let apply = |host: &mut Host, g: u64| {
        host.ok(
            "xenplug-apply-config",
            Some(json!({"config": crash_doc(g)})),
        )
    };
    // The two generations, uninterrupted.
    let mut w = CrashWorld::new();
    let a = w.agent(&[]);
    assert_eq!(apply(&mut w.host, 1)["applied"], json!(true));
    let one = w.state();
    assert_eq!(apply(&mut w.host, 2)["applied"], json!(true));
    let two = w.state();
    drop(a);
    assert!(
        two.0.iter().any(|l| l.starts_with("home/carol/.profile ")),
        "{:?}",
        two.0
    );
    assert!(two.1.starts_with("link lan1 mtu 1400 up true"), "{}", two.1);
    assert_ne!(one, two);
    let (mut back, mut forward, mut points) = (0, 0, 0);
    {
        for step in 0.. {
            let mut w = CrashWorld::new();
            // Generation 1, then 2 killed at the step (the crash point names its generation).
            let spec = format!("{when}:{step}@2");
            let a = w.agent(&[("XENPLUG_AGENT_CRASH_AT", spec.as_ref())]);
            assert_eq!(apply(&mut w.host, 1)["applied"], json!(true));
            let (_, bytes) = w.host.session.request(
                "xenplug-apply-config",
                Some(&json!({"config": crash_doc(2)})),
            );
            w.host.pty.send(&bytes);
            // Either the agent kills itself at the step, or there is no such step and the
            // reply comes: whichever happens first, within a deadline.
            let mut a = a;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut replied = false;
            while a.child.try_wait().unwrap().is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{spec}: no kill, no reply"
                );
                let evs = w.host.recv(Duration::from_millis(50), &|e| {
                    e.iter()
                        .any(|e| matches!(e, xenplug_channel::host::HostEvent::Reply { .. }))
                });
                if evs
                    .iter()
                    .any(|e| matches!(e, xenplug_channel::host::HostEvent::Reply { .. }))
                {
                    replied = true;
                    break;
                }
            }
            if replied {
                // This step does not exist: the apply went through.
                w.stop(a, true);
                assert!(step > 10, "only {step} journal steps?");
                eprintln!("generation 2 has {step} crash points {when} a record");
                break;
            }
            let st = w.stop(a, false);
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(st.signal(), Some(libc::SIGKILL), "{spec}: {st:?}");
            points += 1;
            // Started again: recovery before the handshake is answered.
            let a = w.agent(&[]);
            let now = w.state();
            let g = w.host.ok("xenplug-get-config-generation", None);
            if now == two {
                forward += 1;
                assert_eq!(g["generation"], json!(2), "{spec}");
            } else {
                back += 1;
                let only = |x: &Vec<String>, y: &Vec<String>| -> Vec<String> {
                    x.iter().filter(|l| !y.contains(l)).cloned().collect()
                };
                assert!(
                    now == one,
                    "killed {spec}: neither generation 1 nor 2:\nnot in 1: {:?}\nmissing of 1: \
                     {:?}\nnic {} (1: {}), host name {} (1: {})",
                    only(&now.0, &one.0),
                    only(&one.0, &now.0),
                    now.1,
                    one.1,
                    now.2,
                    one.2
                );
                assert_eq!(g["generation"], json!(1), "{spec}");
            }
            assert!(!w
                .path()
                .join("var/lib/xenplug-agent/apply.journal")
                .exists());
            let r = apply(&mut w.host, 2);
            assert_eq!(r["generation"], json!(2), "{spec}: {r}");
            assert_eq!(w.state(), two, "killed {spec}, then generation 2 re-sent");
            w.stop(a, true);
        }
    }
    eprintln!("{points} kill points {when} a record: {back} rolled back, {forward} rolled forward");
    Some((back, forward))
}

/// A NIC that systemd-udevd has not handled yet (no `/run/udev/data/n<ifindex>` while udevd
/// runs) is left alone: the apply waits, touching nothing, until udev's entry appears (udev may
/// still rename the link, which fails once it is up, and systemd-networkd ignores a link udev
/// has not handled: seen on Debian 12 guests booting slowly on the real-Xen rig). udevd's
/// control socket, the link's sysfs device and udev's database are files under the agent's
/// root here; the link, its addresses and the apply are real.
#[test]
fn apply_waits_for_udev_to_handle_the_nic() {
    if !xenplug_testkit::require_root()
        || !xenplug_testkit::require_program("unshare")
        || !xenplug_testkit::require_program("ip")
    {
        return;
    }
    let ns = NetNs::new("udevw").unwrap();
    ns.ip(&[
        "link",
        "add",
        "nic0",
        "address",
        "00:16:3e:aa:bb:21",
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
    ])
    .unwrap();
    let index = ipj(&ns, &["link", "show", "nic0"])[0]["ifindex"]
        .as_u64()
        .unwrap();
    let root = guest_root();
    let r = root.path().to_path_buf();
    std::fs::create_dir_all(r.join("run/udev/data")).unwrap();
    std::fs::write(r.join("run/udev/control"), "").unwrap();
    std::fs::create_dir_all(r.join("sys/class/net/nic0/device")).unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("agent.stderr");

    let pty = Pty::new();
    let dev = pty.slave_path.to_str().unwrap().to_string();
    let prefix = in_namespaces(&ns);
    let _agent = AgentProc::spawn_logged(&prefix, &["--device", &dev], root, &log);
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(15));

    let doc = json!({
        "instance-id": "iid-udev", "generation": 1, "hostname": "guest-udev",
        "network": {"version": 2, "ethernets": {
            "lan": {"match": {"macaddress": "00:16:3e:aa:bb:21"},
                    "addresses": ["192.0.2.21/24"],
                    "nameservers": {"addresses": ["192.0.2.53"]}}}}
    });
    let (id, bytes) = host
        .session
        .request("xenplug-apply-config", Some(&json!({"config": doc})));
    host.pty.send(&bytes);
    // The agent says it waits for udev, and has configured nothing on the link meanwhile.
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    common::wait_until(
        "the agent's udev-wait event",
        Duration::from_secs(20),
        || read_log().contains("event=udev-wait links=nic0"),
    );
    assert!(
        addresses(&ns, "nic0").is_empty(),
        "{:?}",
        addresses(&ns, "nic0")
    );
    let links = ipj(&ns, &["link", "show", "nic0"]);
    assert!(
        !links[0]["flags"].as_array().unwrap().contains(&json!("UP")),
        "{links}"
    );
    // udev handles the link: the apply goes on and finishes.
    std::fs::write(r.join(format!("run/udev/data/n{index}")), "I:1\n").unwrap();
    let evs = host.recv(Duration::from_secs(30), &|e| {
        e.iter().any(|e| matches!(e, HostEvent::Reply { .. }))
    });
    let reply = evs
        .into_iter()
        .find_map(|e| match e {
            HostEvent::Reply { id: rid, result } => Some((rid, result)),
            _ => None,
        })
        .expect("a reply to the apply");
    assert_eq!(reply.0, id);
    let res = reply.1.expect("the apply succeeded");
    assert_eq!(res["applied"], json!(true), "{res}");
    assert!(
        res.to_string()
            .contains("for udev to handle the network links"),
        "{res}"
    );
    assert_eq!(addresses(&ns, "nic0"), vec!["192.0.2.21/24".to_string()]);
}
