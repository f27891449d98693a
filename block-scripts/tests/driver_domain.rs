//! `block` in a driver domain, against our xenstored's permission model: the daemon has a
//! socket acting as domain 7 (the driver domain), guests 5 and 6 and their vbds are laid out with
//! libxl 4.17's permissions (`xenplug_xenstored::testing::libxl`), and the script connects
//! through domain 7's socket with the relative `XENBUS_PATH` `xl devd` passes. There the guests'
//! `vm` nodes are out of reach, so the sharing check cannot tell whether two domains are one VM:
//! read-write use by another domain is refused (same-VM sharing is what a driver domain loses),
//! read-only sharing still works. Real loop devices, as block_e2e.rs (privileged).

mod common;

use common::*;
use std::process::ExitCode;
use xenplug_hotplug::Raw;
use xenplug_xenstore::XsOps;
use xenplug_xenstored::testing::libxl;

const DD: u32 = 7;
/// One VM (one uuid) for both guests: dom0 would let them share read-write.
const UUID: &str = "0b5e7a3c-1111-2222-3333-444455556666";

/// The rig with domain 7's socket, the driver domain and guests 5 and 6 (one VM).
fn rig() -> Rig {
    let rig = Rig::with_domains(&[DD]);
    let xs = rig.daemon.client();
    libxl::domain(&xs, DD, "e2e-dd", "7d7d7d7d-0000-4000-8000-000000000007").unwrap();
    libxl::domain(&xs, 5, "vm-a", UUID).unwrap();
    libxl::domain(&xs, 6, "vm-a", UUID).unwrap();
    rig
}

/// Guest `dom`'s vbd `dev` served by the driver domain, as libxl writes it.
fn vbd(rig: &Rig, dom: u32, dev: u32, params: &str, mode: &str) -> String {
    libxl::device(
        &rig.daemon.client(),
        libxl::Dev {
            kind: "vbd",
            guest: dom,
            devid: dev,
            backend: DD,
        },
        &[
            ("params", params),
            ("mode", mode),
            ("type", "phy"),
            ("frontend-id", &dom.to_string()),
            ("online", "1"),
            ("state", "2"),
            ("removable", "0"),
            ("device-type", "disk"),
            ("script", "/etc/xen/scripts/block"),
        ],
        &[
            ("backend-id", "7"),
            ("state", "1"),
            ("virtual-device", &dev.to_string()),
        ],
        &[],
    )
    .unwrap()
}

/// `block ACTION` for guest `dom`'s vbd `dev`, acting as the driver domain.
fn block_dd(rig: &Rig, action: &str, dom: u32, dev: u32) -> ExitCode {
    let mut raw: Raw = rig.raw("block", action, &backend(dom, dev));
    raw.env.insert(
        "XENSTORED_PATH".into(),
        rig.daemon.domain_socket(DD).unwrap().display().to_string(),
    );
    xenplug_block::block::main(raw)
}

fn node(rig: &Rig, be: &str, key: &str) -> Option<String> {
    rig.daemon.client().read(&format!("{be}/{key}")).unwrap()
}

#[test]
fn file_add_and_remove_in_a_driver_domain() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = rig();
    let img = rig.image("dd.img", 8 << 20);
    let be = vbd(&rig, 5, 51712, img.to_str().unwrap(), "w");
    assert!(
        exit_ok(block_dd(&rig, "add", 5, 51712)),
        "{:?}",
        node(&rig, &be, "hotplug-error")
    );
    // Under the driver domain's home: where netback and dom0 look.
    assert_eq!(
        node(&rig, &be, "hotplug-status").as_deref(),
        Some("connected")
    );
    let dev = node(&rig, &be, "physical-device-path").unwrap();
    assert_eq!(
        node(&rig, &be, "physical-device").unwrap(),
        hex_devnum(&dev)
    );
    assert_eq!(
        sysfs(&dev, "loop/backing_file").unwrap(),
        img.to_str().unwrap()
    );
    assert!(rig
        .read("/local/domain/0/backend/vbd/5/51712/hotplug-status")
        .is_none());
    assert!(exit_ok(block_dd(&rig, "remove", 5, 51712)));
    assert!(rig.detached(&img));
}

#[test]
fn sharing_in_a_driver_domain_refuses_read_write_it_cannot_attribute() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let rig = rig();
    let img = rig.image("shared.img", 8 << 20);
    let p = img.to_str().unwrap();
    let first = vbd(&rig, 5, 51712, p, "w");
    assert!(exit_ok(block_dd(&rig, "add", 5, 51712)));
    // Guest 6 is the same VM (same uuid), but the driver domain cannot read either `vm`:
    // refused, with the reference's busy message.
    let second = vbd(&rig, 6, 51712, p, "w");
    assert!(!exit_ok(block_dd(&rig, "add", 6, 51712)));
    let err = node(&rig, &second, "hotplug-error").unwrap();
    assert!(err.contains("mounted in a guest domain"), "{err}");
    assert_eq!(
        node(&rig, &second, "hotplug-status").as_deref(),
        Some("busy")
    );
    assert_eq!(rig.loops_of(&img).len(), 1);
    assert_eq!(
        node(&rig, &first, "hotplug-status").as_deref(),
        Some("connected")
    );
    assert!(exit_ok(block_dd(&rig, "remove", 6, 51712)));
    assert!(exit_ok(block_dd(&rig, "remove", 5, 51712)));
    assert!(rig.detached(&img));
    // libxl then deletes the backend directories: left in place, their `physical-device`
    // would name a loop device the next attach may be given again.
    for be in [&first, &second] {
        rig.daemon.client().rm(be).unwrap();
    }

    // Read-only users still share.
    let ro = rig.image("ro.img", 8 << 20);
    let r = ro.to_str().unwrap();
    let a = vbd(&rig, 5, 768, r, "r");
    let b = vbd(&rig, 6, 768, r, "r");
    assert!(exit_ok(block_dd(&rig, "add", 5, 768)));
    assert!(
        exit_ok(block_dd(&rig, "add", 6, 768)),
        "{:?}",
        node(&rig, &b, "hotplug-error")
    );
    assert_eq!(
        node(&rig, &a, "hotplug-status").as_deref(),
        Some("connected")
    );
    assert_eq!(
        node(&rig, &b, "hotplug-status").as_deref(),
        Some("connected")
    );
    assert!(exit_ok(block_dd(&rig, "remove", 6, 768)));
    assert!(exit_ok(block_dd(&rig, "remove", 5, 768)));
    assert!(rig.detached(&ro));
}
