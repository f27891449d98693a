//! Network hotplug scripts for Xen: `vif-bridge`, `vif-route`, `vif-nat`, `vif-openvswitch`
//! (and `vif-setup`), native replacements for `/etc/xen/scripts/vif-*`.
//!
//! libxl runs them as `<script> online|offline type_if=vif` with `vif=vif<d>.<n>` and, for an HVM
//! guest's emulated NIC, `<script> add|remove type_if=tap` with `INTERFACE=vif<d>.<n>-emu`; env
//! `XENBUS_PATH=backend/vif/<d>/<n>` and `netdev`. They read the backend nodes `vifname`, `ip`,
//! `bridge`, `mtu`, `rate` (and `frontend-id`, `handle`, `mac`, the VM's `name`/`uuid` for
//! vif-nat/vif-openvswitch), write the frontend `mtu` node (vif-bridge) and, through the hotplug
//! runtime, `hotplug-status=connected` after a successful `online` of a vif, or
//! `hotplug-error`/`hotplug-status=error` on failure (exit 1).
//!
//! Modules, leaf first: [`types`] (the shared vocabulary: `Net`, `TypeIf`, the antispoofing
//! `Mode`, `Plan`/`Step`/`OnError`, `NftBatch`, `StepError`; it imports no other module);
//! [`rate`] (the `rate` node); [`firewall`] (the nftables batches, pure); [`common`]
//! (vif-common.sh: the facts every script gathers first); [`scripts`] (one module per script
//! with its facts, gather and pure planner, and the one runner); [`apply`] (the applier:
//! rollback on failed set-up, keep-going teardown, through narrow traits); [`adapters`] (the
//! real `nft`, /proc/sys, xenstore, `ovs-vsctl`, dnsmasq). Links go through
//! `xenplug_netlink::links` (the `Links` trait, `KernelLinks`; the recording fake is
//! `xenplug_netlink::fake`). The protocol facts are in docs/hotplug-contract.md and
//! docs/hotplug-scripts.md.

pub mod adapters;
pub mod apply;
pub mod common;
#[cfg(test)]
mod fakes;
pub mod firewall;
pub mod nft_netlink;
pub mod rate;
pub mod scripts;
pub mod types;

use std::process::ExitCode;

use xenplug_hotplug::{run, Action, Raw, ScriptMain};

use scripts::{body, Script};

fn main_of(script: Script, raw: Raw) -> ExitCode {
    if is_noop(&raw) {
        return ExitCode::SUCCESS;
    }
    run(script.name(), raw, Action::VIF, |ctx| body(script, ctx))
}

/// vif-common.sh's action filter: `online`/`offline` concern vifs and `add`/`remove` taps; the
/// other combinations exit 0 before anything is read, connected to or touched (as the
/// reference does, before it even requires `XENBUS_PATH`). `type_if` defaults to `vif`; the last
/// `type_if=` argument wins, then the environment.
fn is_noop(raw: &Raw) -> bool {
    let args = raw.argv.get(1..).unwrap_or_default();
    let action = args.iter().find(|a| !a.contains('='));
    let type_if = args
        .iter()
        .rev()
        .find_map(|a| a.strip_prefix("type_if="))
        .or(raw.env.get("type_if").map(String::as_str))
        .unwrap_or("vif");
    match action.map(String::as_str) {
        Some("online" | "offline") => type_if != "vif",
        Some("add" | "remove") => type_if != "tap",
        _ => false,
    }
}

/// `vif-bridge`.
pub fn vif_bridge(raw: Raw) -> ExitCode {
    main_of(Script::Bridge, raw)
}

/// `vif-route`.
pub fn vif_route(raw: Raw) -> ExitCode {
    main_of(Script::Route, raw)
}

/// `vif-nat`.
pub fn vif_nat(raw: Raw) -> ExitCode {
    main_of(Script::Nat, raw)
}

/// `vif-openvswitch`.
pub fn vif_openvswitch(raw: Raw) -> ExitCode {
    main_of(Script::Ovs, raw)
}

/// `vif-setup`: `exec $script "$@"` when the `script` environment variable (libxl exports it)
/// names a script, else `vif-bridge`. Our own scripts run in this process; any other script is
/// executed in place of this one.
pub fn vif_setup(raw: Raw) -> ExitCode {
    let path = raw.env.get("script").cloned().unwrap_or_default();
    let script = match path.rsplit('/').next().unwrap_or("") {
        "" | "vif-setup" | "vif-bridge" => Script::Bridge,
        "vif-route" => Script::Route,
        "vif-nat" => Script::Nat,
        "vif-openvswitch" => Script::Ovs,
        _ => {
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(&path)
                .args(raw.argv.iter().skip(1))
                .env_clear()
                .envs(&raw.env)
                .exec();
            eprintln!("vif-setup: cannot run {path}: {err}");
            return ExitCode::FAILURE;
        }
    };
    main_of(script, raw)
}

/// The programs of this crate, for the multi-call binary.
pub const SCRIPTS: &[(&str, ScriptMain)] = &[
    ("vif-bridge", vif_bridge),
    ("vif-route", vif_route),
    ("vif-nat", vif_nat),
    ("vif-openvswitch", vif_openvswitch),
    ("vif-setup", vif_setup),
];

#[cfg(test)]
mod noop_tests {
    use super::*;

    #[test]
    fn the_action_filter_matches_vif_common() {
        let raw = |args: &[&str], env: &[(&str, &str)]| {
            let mut argv = vec!["vif-bridge"];
            argv.extend_from_slice(args);
            Raw::new(&argv, env)
        };
        assert!(is_noop(&raw(&["online", "type_if=tap"], &[])));
        assert!(is_noop(&raw(&["offline", "type_if=tap"], &[])));
        assert!(is_noop(&raw(&["add", "type_if=vif"], &[])));
        assert!(is_noop(&raw(&["remove"], &[])));
        assert!(is_noop(&raw(&["add"], &[("type_if", "vif")])));
        assert!(!is_noop(&raw(&["online", "type_if=vif"], &[])));
        assert!(!is_noop(&raw(&["online"], &[])));
        assert!(!is_noop(&raw(&["add", "type_if=tap"], &[])));
        assert!(!is_noop(&raw(&["add", "type_if=vif", "type_if=tap"], &[])));
        assert!(!is_noop(&raw(&["bogus", "type_if=tap"], &[])));
        assert!(!is_noop(&raw(&[], &[])));
    }
}
