//! The vif scripts in a driver domain, against our xenstored's permission model: the daemon has
//! a socket acting as domain 7 (the driver domain), the nodes of guest 5 and of its vif are laid
//! out with the permissions libxl 4.17 gives them (`xenplug_xenstored::testing::libxl`), and the
//! script connects through domain 7's socket with the relative `XENBUS_PATH` `xl devd` passes,
//! so xenstored resolves it under `/local/domain/7` and refuses what a driver domain may not do
//! (read the guest's `vm`, write the frontend directory). Links are real, in a throwaway network
//! namespace (privileged, like netns.rs).

mod common;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{link, run_in_with, setup, up};
use xenplug_testkit::{require_program, require_root, NetNs};
use xenplug_vif::scripts::Script;
use xenplug_xenstore::XsOps;
use xenplug_xenstored::testing::{libxl, spawn_daemon_with_domains, TestDaemon};

const DD: u32 = 7;
const GUEST: u32 = 5;
const UUID: &str = "5c2b9a57-6a0e-4d3b-9a51-0e2e0e2e0a1b";
const ENV: &[(&str, &str)] = &[
    ("vif", "vif5.0"),
    ("XENBUS_PATH", "backend/vif/5/0"),
    ("XENBUS_TYPE", "vif"),
    ("XENBUS_BASE_PATH", "backend"),
    ("netdev", ""),
];
const FE: &str = "/local/domain/5/device/vif/0";
const BE: &str = "/local/domain/7/backend/vif/5/0";

fn ready() -> bool {
    require_root() && require_program("ip") && require_program("nft")
}

/// A daemon with domain 7's socket, the two domains, and guest 5's vif served by domain 7 with
/// the backend nodes `bents`; with libxl 4.17's read-only frontend `mtu` unless `ro_mtu` is
/// false (a toolstack that leaves the frontend's nodes to the guest).
fn world(bents: &[(&str, &str)], ro_mtu: bool) -> TestDaemon {
    let d = spawn_daemon_with_domains(&[DD]);
    let xs = d.client();
    libxl::domain(&xs, DD, "e2e-dd", "7d7d7d7d-0000-4000-8000-000000000007").unwrap();
    libxl::domain(&xs, GUEST, "web server", UUID).unwrap();
    let mut b = vec![
        ("frontend-id", "5"),
        ("online", "1"),
        ("state", "2"),
        ("script", "/etc/xen/scripts/vif-bridge"),
        ("mac", "00:16:3e:00:05:00"),
        ("handle", "0"),
        ("type", "vif"),
        ("hotplug-status", ""),
    ];
    b.extend_from_slice(bents);
    let ro: &[(&str, &str)] = if ro_mtu { &[("mtu", "1500")] } else { &[] };
    libxl::device(
        &xs,
        libxl::Dev {
            kind: "vif",
            guest: GUEST,
            devid: 0,
            backend: DD,
        },
        &b,
        &[
            ("backend-id", "7"),
            ("state", "1"),
            ("handle", "0"),
            ("mac", "00:16:3e:00:05:00"),
        ],
        ro,
    )
    .unwrap();
    d
}

fn read(d: &TestDaemon, p: &str) -> Option<String> {
    d.client().read(p).unwrap()
}

fn socket(d: &TestDaemon) -> String {
    d.domain_socket(DD).unwrap().to_str().unwrap().to_string()
}

/// What the driver domain may and may not do, as our xenstored enforces it: the premise of the
/// tests below.
#[test]
fn the_permission_model_is_libxls() {
    let d = world(&[("bridge", "xenbr0")], true);
    let dd = d.client_as(DD);
    assert_eq!(
        dd.read("backend/vif/5/0/mac").unwrap().as_deref(),
        Some("00:16:3e:00:05:00")
    );
    for hidden in [
        "/local/domain/5/vm",
        &format!("/vm/{UUID}/name"),
        "/local/domain/5/name",
    ] {
        let e = dd.read(hidden).unwrap_err();
        assert_eq!(e.errno(), Some(xenplug_xenstore::Errno::EACCES), "{hidden}");
    }
    // The frontend: readable; libxl's read-only mtu node is the backend domain's to rewrite;
    // anything else there is the guest's.
    assert_eq!(
        dd.read(&format!("{FE}/state")).unwrap().as_deref(),
        Some("1")
    );
    dd.write(&format!("{FE}/mtu"), "1500").unwrap();
    let e = dd.write(&format!("{FE}/state"), "4").unwrap_err();
    assert_eq!(e.errno(), Some(xenplug_xenstore::Errno::EACCES));
}

#[test]
fn bridge_online_offline_in_a_driver_domain() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("ddb");
    let d = world(&[("bridge", "xenbr0")], true);
    let rc = run_in_with(
        &host,
        Script::Bridge,
        &["online", "type_if=vif"],
        ENV,
        &socket(&d),
        None,
    );
    assert_eq!(
        rc,
        ExitCode::SUCCESS,
        "{:?}",
        read(&d, &format!("{BE}/hotplug-error"))
    );
    // Written under the driver domain's home, where dom0 and netback look.
    assert_eq!(
        read(&d, &format!("{BE}/hotplug-status")).as_deref(),
        Some("connected")
    );
    assert_eq!(
        read(&d, "/local/domain/0/backend/vif/5/0/hotplug-status"),
        None
    );
    // The bridge's MTU reached the frontend through libxl's node, which the driver domain owns.
    assert_eq!(read(&d, &format!("{FE}/mtu")).as_deref(), Some("1400"));
    let l = link(&host, "vif5.0").unwrap();
    assert_eq!(
        (l["master"].as_str(), l["mtu"].as_u64()),
        (Some("xenbr0"), Some(1400))
    );
    assert!(up(&l));

    let rc = run_in_with(
        &host,
        Script::Bridge,
        &["offline", "type_if=vif"],
        ENV,
        &socket(&d),
        None,
    );
    assert_eq!(rc, ExitCode::SUCCESS);
    assert!(link(&host, "vif5.0").unwrap().get("master").is_none());
}

/// A toolstack that leaves the frontend directory to the guest (no read-only `mtu` node owned
/// by the backend domain): the driver domain may not write the frontend's `mtu`. That is a
/// warning, not a failure: the vif is plumbed with the bridge's MTU and the guest keeps the MTU
/// the toolstack gave it.
#[test]
fn a_frontend_mtu_out_of_reach_is_a_warning() {
    if !ready() {
        return;
    }
    let (host, _guest) = setup("ddm");
    let d = world(&[("bridge", "xenbr0")], false);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hotplug.log");
    let rc = run_in_with(
        &host,
        Script::Bridge,
        &["online", "type_if=vif"],
        ENV,
        &socket(&d),
        Some(&log),
    );
    assert_eq!(
        rc,
        ExitCode::SUCCESS,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        read(&d, &format!("{BE}/hotplug-status")).as_deref(),
        Some("connected")
    );
    assert_eq!(read(&d, &format!("{FE}/mtu")), None);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("warning:")
            && l.contains("xenstore write /local/domain/5/device/vif/0/mtu=1400")),
        "{text}"
    );
    let l = link(&host, "vif5.0").unwrap();
    assert_eq!(
        (l["master"].as_str(), l["mtu"].as_u64()),
        (Some("xenbr0"), Some(1400))
    );
}

/// Wait until `path` holds a line containing `needle` (bounded).
fn wait_for_line(path: &Path, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
}

/// Netback may create the vif after `xl devd` started the script (Qubes OS issue 4446): the
/// script waits for it. The vif is created only once the script says it is waiting.
#[test]
fn a_vif_netback_creates_late_is_waited_for() {
    if !ready() {
        return;
    }
    let host = NetNs::new("ddl").unwrap();
    let guest = NetNs::new("ddlg").unwrap();
    host.ip(&["link", "add", "xenbr0", "mtu", "1400", "type", "bridge"])
        .unwrap();
    host.ip(&["link", "set", "xenbr0", "up"]).unwrap();
    let d = world(&[("bridge", "xenbr0")], true);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hotplug.log");
    let t = Instant::now();
    let rc = std::thread::scope(|s| {
        let script = s.spawn(|| {
            run_in_with(
                &host,
                Script::Bridge,
                &["online", "type_if=vif"],
                ENV,
                &socket(&d),
                Some(&log),
            )
        });
        assert!(
            wait_for_line(
                &log,
                "vif5.0 does not exist yet: waiting",
                Duration::from_secs(15)
            ),
            "the script never said it waits: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
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
        script.join().unwrap()
    });
    assert_eq!(
        rc,
        ExitCode::SUCCESS,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "woken by the link's creation"
    );
    assert_eq!(
        read(&d, &format!("{BE}/hotplug-status")).as_deref(),
        Some("connected")
    );
    assert_eq!(link(&host, "vif5.0").unwrap()["master"], "xenbr0");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("vif5.0 appeared after"));
}
