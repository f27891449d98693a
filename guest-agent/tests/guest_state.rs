//! The guest-state publisher against the embedded xenstored, connected the way a guest is: over
//! a domain socket acting as domain 7, with the permissions libxl gives a guest (its home is
//! dom0's and only readable; `data/`, `attr/` and its vif frontend directory are its own). The
//! agent runs in a throwaway network namespace whose links and addresses the test changes with
//! `ip`: the xenstore keys follow (rtnetlink events, no polling), vifs are matched by MAC,
//! address slots are stable, a burst of changes makes few updates, and the same state reaches a
//! subscribed channel as `xenplug-guest-state` events. Off by configuration, nothing is written.

mod common;

use std::time::{Duration, Instant};

use common::{guest_root, AgentProc, Host, Pty};
use serde_json::{json, Value};
use xenplug_channel::host::HostEvent;
use xenplug_testkit::NetNs;
use xenplug_xenstore::{Access, Perm, XsOps};

const DOMID: u32 = 7;
const MAC: &str = "00:16:3e:5e:00:01";
const T: Duration = Duration::from_secs(20);

fn home(k: &str) -> String {
    format!("/local/domain/{DOMID}/{k}")
}

/// libxl's layout for domain 7 with one vif.
fn make_domain(xs: &dyn XsOps) {
    let own = |d| Perm {
        domid: d,
        access: Access::None,
    };
    let read = |d| Perm {
        domid: d,
        access: Access::Read,
    };
    xs.write(&home("name"), "gsvm").unwrap();
    xs.set_perms(&format!("/local/domain/{DOMID}"), &[own(0), read(DOMID)])
        .unwrap();
    for d in ["data", "attr", "device", "device/vif", "device/vif/0"] {
        xs.mkdir(&home(d)).unwrap();
        xs.set_perms(&home(d), &[own(DOMID)]).unwrap();
    }
    xs.write(&home("device/vif/0/mac"), MAC).unwrap();
    xs.set_perms(&home("device/vif/0/mac"), &[own(DOMID)])
        .unwrap();
}

fn read(xs: &dyn XsOps, k: &str) -> Option<String> {
    xs.read(&home(k)).unwrap()
}

fn wait_key(xs: &dyn XsOps, k: &str, want: Option<&str>) {
    let deadline = Instant::now() + T;
    loop {
        let got = read(xs, k);
        if got.as_deref() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{k}: waited for {want:?}, have {got:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn updated(xs: &dyn XsOps) -> u64 {
    read(xs, "data/updated")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn setup_links(ns: &NetNs) {
    // veth pairs (this kind of host's kernel has no dummy links); the peers are interfaces
    // without a vif, like other0.
    ns.ip(&[
        "link", "add", "eth0", "address", MAC, "type", "veth", "peer", "name", "eth0p",
    ])
    .unwrap();
    ns.ip(&[
        "link",
        "add",
        "other0",
        "address",
        "02:00:00:00:00:09",
        "type",
        "veth",
        "peer",
        "name",
        "other0p",
    ])
    .unwrap();
    for l in ["eth0", "eth0p", "other0", "other0p"] {
        ns.ip(&["link", "set", l, "up"]).unwrap();
    }
    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&["addr", "add", "2001:db8::10/64", "dev", "eth0", "nodad"])
        .unwrap();
    ns.ip(&["addr", "add", "198.51.100.9/24", "dev", "other0"])
        .unwrap();
}

fn start_agent(
    ns: &NetNs,
    pty: &Pty,
    xsd: &xenplug_xenstored::testing::TestDaemon,
    config: &str,
    extra: &[&str],
) -> AgentProc {
    let root = guest_root();
    std::fs::create_dir_all(root.path().join("etc/xenplug")).unwrap();
    std::fs::write(root.path().join("etc/xenplug/agent.toml"), config).unwrap();
    let mut args = vec![
        "--device",
        pty.slave_path.to_str().unwrap(),
        "--no-live-network",
    ];
    args.extend_from_slice(extra);
    AgentProc::spawn_env(
        &["ip", "netns", "exec", ns.name()],
        &args,
        &[(
            "XENSTORED_PATH",
            xsd.domain_socket(DOMID).unwrap().as_os_str(),
        )],
        root,
    )
}

#[test]
fn state_is_published_in_xenstore_and_follows_the_network() {
    if !xenplug_testkit::require_root() || !xenplug_testkit::require_program("ip") {
        return;
    }
    let xsd = xenplug_xenstored::testing::spawn_daemon_with_domains(&[DOMID]);
    let xs = xsd.store();
    make_domain(&xs);
    let ns = NetNs::new("gst").unwrap();
    setup_links(&ns);
    let pty = Pty::new();
    let _agent = start_agent(
        &ns,
        &pty,
        &xsd,
        "guest-state-min-interval-ms = 1000\n",
        &["--guest-state"],
    );

    // The OS (from the guest root's os-release), the vif's addresses, memory, the agent.
    wait_key(&xs, "attr/vif/0/ipv4/0", Some("192.0.2.10"));
    wait_key(&xs, "attr/vif/0/ipv6/0", Some("2001:db8::10"));
    assert_eq!(
        read(&xs, "data/os_name").as_deref(),
        Some("Test GNU/Linux 12")
    );
    assert_eq!(read(&xs, "data/os_distro").as_deref(), Some("test"));
    assert_eq!(read(&xs, "data/os_majorver").as_deref(), Some("12"));
    let uname = nix::sys::utsname::uname().unwrap();
    assert_eq!(
        read(&xs, "data/os_uname").as_deref(),
        uname.release().to_str()
    );
    let total: u64 = read(&xs, "data/meminfo_total").unwrap().parse().unwrap();
    assert!(total > 0);
    assert!(read(&xs, "data/meminfo_free").is_some());
    assert_eq!(read(&xs, "attr/PVAddons/Installed").as_deref(), Some("1"));
    assert!(updated(&xs) >= 1);
    // Only the vif is published, not the other interface (no device/vif for its MAC).
    assert_eq!(xs.directory(&home("attr/vif")).unwrap(), vec!["0"]);
    // Written as the guest: the keys are the guest's own.
    let perms = xs.get_perms(&home("attr/vif/0/ipv4/0")).unwrap();
    assert_eq!(perms[0].domid, DOMID, "{perms:?}");

    // A new address takes the next slot; the first one leaving keeps the second in place.
    // (Another subnet: removing a primary address takes its subnet's secondaries with it.)
    ns.ip(&["addr", "add", "203.0.113.11/24", "dev", "eth0"])
        .unwrap();
    wait_key(&xs, "attr/vif/0/ipv4/1", Some("203.0.113.11"));
    ns.ip(&["addr", "del", "192.0.2.10/24", "dev", "eth0"])
        .unwrap();
    wait_key(&xs, "attr/vif/0/ipv4/0", None);
    assert_eq!(
        read(&xs, "attr/vif/0/ipv4/1").as_deref(),
        Some("203.0.113.11")
    );

    // A burst of 20 changes in one go: few updates (at most one per second, plus the one the
    // burst started).
    let before = updated(&xs);
    let t0 = Instant::now();
    let batch: String = (20..40)
        .map(|i| format!("addr add 192.0.2.{i}/24 dev eth0\n"))
        .collect();
    let mut c = ns.command("ip");
    c.args(["-batch", "-"]).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), batch.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let deadline = Instant::now() + T;
    while (0..32)
        .filter_map(|n| read(&xs, &format!("attr/vif/0/ipv4/{n}")))
        .count()
        < 21
    {
        assert!(Instant::now() < deadline, "the burst never fully arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let batches = updated(&xs) - before;
    let seconds = t0.elapsed().as_secs_f64();
    assert!(
        (batches as f64) <= seconds + 2.0,
        "{batches} updates in {seconds:.1} s"
    );

    // The link goes: its addresses go.
    ns.ip(&["link", "del", "eth0"]).unwrap();
    wait_key(&xs, "attr/vif/0/ipv6/0", None);
    assert!(xs
        .directory(&home("attr/vif/0/ipv4"))
        .map(|d| d.is_empty())
        .unwrap_or(true));
}

fn subscribe(host: &mut Host) -> Value {
    host.handshake(T);
    assert_eq!(host.ok("xenplug-subscribe-guest-state", None), json!({}));
    next_event(host, &|_| true)
}

fn next_event(host: &mut Host, want: &dyn Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no such guest-state event");
        for e in host.recv(left.min(Duration::from_millis(500)), &|e| !e.is_empty()) {
            if let HostEvent::GuestEvent { name, data } = e {
                assert_eq!(name, "xenplug-guest-state");
                if want(&data) {
                    return data;
                }
            }
        }
    }
}

#[test]
fn subscribed_channels_get_the_state_and_its_changes_and_xenstore_can_be_off() {
    if !xenplug_testkit::require_root() || !xenplug_testkit::require_program("ip") {
        return;
    }
    let xsd = xenplug_xenstored::testing::spawn_daemon_with_domains(&[DOMID]);
    let xs = xsd.store();
    make_domain(&xs);
    let ns = NetNs::new("gse").unwrap();
    setup_links(&ns);
    let pty = Pty::new();
    let agent = start_agent(
        &ns,
        &pty,
        &xsd,
        "guest-state = false\nguest-state-min-interval-ms = 200\n",
        &[],
    );
    let mut host = Host::new(pty);
    let first = subscribe(&mut host);
    let eth0 = first["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "eth0")
        .unwrap()
        .clone();
    assert_eq!(eth0["vif"], 0, "{first}");
    assert_eq!(eth0["mac"], MAC);
    assert_eq!(eth0["ipv4"], json!(["192.0.2.10"]));
    let other = first["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "other0")
        .unwrap();
    assert!(other.get("vif").is_none(), "{other}");
    assert_eq!(first["os-name"], "Test GNU/Linux 12");
    // xenstore publishing is off by configuration: the publisher ran (an event came from it),
    // nothing was written.
    assert_eq!(read(&xs, "data/os_name"), None);
    assert_eq!(read(&xs, "data/updated"), None);

    // A change is sent without being asked for.
    ns.ip(&["addr", "add", "192.0.2.77/24", "dev", "eth0"])
        .unwrap();
    let ev = next_event(&mut host, &|d| d.to_string().contains("192.0.2.77"));
    assert!(ev["interfaces"].to_string().contains("192.0.2.10"));
    // The same state on request.
    let st = host.ok("xenplug-get-guest-state", None);
    assert!(st.to_string().contains("192.0.2.77"), "{st}");
    // A new client (guest-sync) ends the subscription: nothing unasked for reaches it.
    host.handshake(T);
    let seen = host.events.len();
    ns.ip(&["addr", "add", "192.0.2.78/24", "dev", "eth0"])
        .unwrap();
    // The publisher has seen the change once get-guest-state reports it…
    let deadline = Instant::now() + T;
    while !host
        .ok("xenplug-get-guest-state", None)
        .to_string()
        .contains("192.0.2.78")
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    // …and a ping's reply, which comes after anything queued before it, brings no event.
    assert_eq!(host.ok("guest-ping", None), json!({}));
    assert!(
        host.events[seen..].is_empty(),
        "events after the subscription ended: {:?}",
        &host.events[seen..]
    );
    drop(agent);
}
