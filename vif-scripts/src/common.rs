//! What every vif script gathers first (`vif-common.sh`): interface type, device, backend and
//! frontend paths, `vifname`, the `ip` list, antispoofing mode, `rate`.

use std::net::IpAddr;

use xenplug_hotplug::{Action, BackendPath, Failure};

use crate::rate::Rate;
use crate::types::{parse_ip_list, Mode, Net, TypeIf};
use xenplug_netlink::{Address, Link};

/// The facts common to every vif script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    /// The action.
    pub action: Action,
    /// vif or tap.
    pub type_if: TypeIf,
    /// The kernel's name for the device (env `vif` or `INTERFACE`).
    pub dev: String,
    /// The name the device has after this script (`vifname`, `-emu` for taps), else `dev`.
    pub name: String,
    /// True when this run renames `dev` to `name`.
    pub rename: bool,
    /// The backend directory (XENBUS_PATH; derived from `INTERFACE` for taps).
    pub backend: String,
    /// The frontend directory `/local/domain/<d>/device/vif/<n>`, when XENBUS_PATH names one.
    pub frontend: Option<String>,
    /// The guest's addresses/networks (`ip` node, else the `ip` variable).
    pub ip: Vec<Net>,
    /// Antispoofing mode.
    pub antispoof: Mode,
    /// The `rate` node (enforced here for taps only; netback enforces it for vifs).
    pub rate: Option<Rate>,
}

impl Common {
    /// True for the set-up actions (online/add).
    pub fn setup(&self) -> bool {
        matches!(self.action, Action::Online | Action::Add)
    }

    /// The `ip` entries' addresses.
    pub fn addrs(&self) -> Vec<Net> {
        self.ip.clone()
    }
}

/// Split `vif<d>.<n>` / `vif<d>.<n>-emu` into (d, n).
pub fn parse_vif_name(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("vif")?;
    let rest = rest.strip_suffix("-emu").unwrap_or(rest);
    let (d, n) = rest.split_once('.')?;
    Some((d.parse().ok()?, n.parse().ok()?))
}

/// What [`resolve`] needs besides xenstore.
#[derive(Debug, Clone, Default)]
pub struct CommonInputs {
    /// `type_if` variable.
    pub type_if: Option<String>,
    /// env `vif`.
    pub vif: String,
    /// env `INTERFACE`.
    pub interface: String,
    /// XENBUS_PATH.
    pub xenbus_path: String,
    /// `ip` variable.
    pub ip_var: Option<String>,
    /// `antispoof` variable.
    pub antispoof: Option<String>,
}

/// Step one of every vif script: decide the device and paths. `Ok(None)` means the action does
/// not apply to this interface type (online/offline of a tap, add/remove of a vif): exit 0
/// before touching anything. `read` reads a xenstore node (absolute or relative path).
pub fn resolve(
    action: Action,
    inp: &CommonInputs,
    read: &mut dyn FnMut(&str) -> Result<Option<String>, Failure>,
) -> Result<Option<Common>, Failure> {
    let type_if = match inp.type_if.as_deref().unwrap_or("") {
        "" | "vif" => TypeIf::Vif,
        "tap" => TypeIf::Tap,
        other => return Err(Failure::error(format!("unknown interface type {other}"))),
    };
    match (action, type_if) {
        (Action::Online | Action::Offline, TypeIf::Vif)
        | (Action::Add | Action::Remove, TypeIf::Tap) => {}
        _ => return Ok(None),
    }
    let (dev, backend) = match type_if {
        TypeIf::Vif => {
            if inp.vif.is_empty() {
                return Err(Failure::error("vif: parameter null or not set (the vif environment variable names the interface)"));
            }
            (inp.vif.clone(), inp.xenbus_path.clone())
        }
        TypeIf::Tap => {
            if inp.interface.is_empty() {
                return Err(Failure::error("INTERFACE: parameter null or not set"));
            }
            let (d, n) = parse_vif_name(&inp.interface).ok_or_else(|| {
                Failure::error(format!("cannot derive the backend path from INTERFACE={} (expected vif<domid>.<devid>-emu)", inp.interface))
            })?;
            // Relative: xenstored resolves it under this (backend) domain, as
            // /local/domain/0/backend/vif/<d>/<n> in dom0, and correctly in a driver domain.
            (inp.interface.clone(), BackendPath::vif(d, n).path)
        }
    };
    let node = |k: &str| format!("{}/{k}", backend.trim_end_matches('/'));
    let vifname = read(&node("vifname"))?.unwrap_or_default();
    let (name, rename) = if vifname.is_empty() {
        (dev.clone(), false)
    } else {
        let n = match type_if {
            TypeIf::Vif => vifname,
            TypeIf::Tap => format!("{vifname}-emu"),
        };
        (n, matches!(action, Action::Online | Action::Add))
    };
    if !valid_ifname(&name) {
        return Err(Failure::error(format!("invalid interface name '{name}'")));
    }
    let frontend = BackendPath::parse(&backend)
        .filter(|b| b.kind == "vif")
        .map(|b| b.frontend());
    let ip_text = match read(&node("ip"))? {
        Some(v) => v,
        None => inp.ip_var.clone().unwrap_or_default(),
    };
    let ip = parse_ip_list(&ip_text, &node("ip"))?;
    let antispoof = match inp.antispoof.as_deref() {
        None | Some("") => Mode::default(),
        Some(s) => s.parse().map_err(Failure::error)?,
    };
    let rate = match read(&node("rate"))? {
        Some(r) if !r.is_empty() => {
            Some(Rate::parse(&r).map_err(|e| Failure::error(format!("{e} in {}", node("rate"))))?)
        }
        _ => None,
    };
    Ok(Some(Common {
        action,
        type_if,
        dev,
        name,
        rename,
        backend,
        frontend,
        ip,
        antispoof,
        rate,
    }))
}

/// Linux interface name rules: 1–15 bytes, no `/`, whitespace or `:`, not `.`/`..`.
pub fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n != "."
        && n != ".."
        && !n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// The links and addresses observed before planning.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every link.
    pub links: Vec<Link>,
    /// Addresses (of the links the script cares about).
    pub addrs: Vec<Address>,
}

impl Observed {
    /// The link called `name`.
    pub fn get(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The link with index `i`.
    pub fn by_index(&self, i: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == i)
    }

    /// The first bridge, by index.
    pub fn first_bridge(&self) -> Option<&Link> {
        let mut b: Vec<&Link> = self.links.iter().filter(|l| l.is_bridge()).collect();
        b.sort_by_key(|l| l.index);
        b.first().copied()
    }

    /// The first primary IPv4 address of `name`.
    pub fn primary_v4(&self, name: &str) -> Option<std::net::Ipv4Addr> {
        let idx = self.get(name)?.index;
        self.addrs.iter().find_map(|a| match a.addr {
            IpAddr::V4(v4) if a.index == idx && !a.secondary => Some(v4),
            _ => None,
        })
    }

    /// True when `name` has `addr`.
    pub fn has_addr(&self, name: &str, addr: IpAddr) -> bool {
        self.get(name).is_some_and(|l| {
            self.addrs
                .iter()
                .any(|a| a.index == l.index && a.addr == addr)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn inputs(type_if: &str) -> CommonInputs {
        CommonInputs {
            type_if: Some(type_if.into()),
            vif: "vif5.0".into(),
            interface: "vif5.0-emu".into(),
            xenbus_path: "backend/vif/5/0".into(),
            ..Default::default()
        }
    }

    fn run(
        action: Action,
        inp: &CommonInputs,
        nodes: &[(&str, &str)],
    ) -> Result<Option<Common>, Failure> {
        let m: BTreeMap<String, String> = nodes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(action, inp, &mut |p| Ok(m.get(p).cloned()))
    }

    #[test]
    fn no_op_combinations() {
        assert_eq!(run(Action::Add, &inputs("vif"), &[]).unwrap(), None);
        assert_eq!(run(Action::Remove, &inputs(""), &[]).unwrap(), None);
        assert_eq!(run(Action::Online, &inputs("tap"), &[]).unwrap(), None);
        assert!(run(Action::Online, &inputs("bogus"), &[]).is_err());
    }

    #[test]
    fn vif_with_vifname_and_ips() {
        let c = run(
            Action::Online,
            &inputs("vif"),
            &[
                ("backend/vif/5/0/vifname", "web0"),
                ("backend/vif/5/0/ip", "10.0.0.5 2001:db8::/64"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.dev.as_str(), c.name.as_str(), c.rename),
            ("vif5.0", "web0", true)
        );
        assert_eq!(c.frontend.as_deref(), Some("/local/domain/5/device/vif/0"));
        assert_eq!(c.ip.len(), 2);
        assert_eq!(c.ip[1].prefix, 64);
        let off = run(
            Action::Offline,
            &inputs("vif"),
            &[("backend/vif/5/0/vifname", "web0")],
        )
        .unwrap()
        .unwrap();
        assert_eq!((off.name.as_str(), off.rename), ("web0", false));
    }

    #[test]
    fn tap_derives_backend_and_emu_name() {
        let mut inp = inputs("tap");
        inp.xenbus_path = "whatever".into();
        let c = run(Action::Add, &inp, &[("backend/vif/5/0/vifname", "web0")])
            .unwrap()
            .unwrap();
        assert_eq!(c.backend, "backend/vif/5/0");
        assert_eq!(c.name, "web0-emu");
        assert_eq!(c.dev, "vif5.0-emu");
    }

    #[test]
    fn bad_input() {
        assert!(run(
            Action::Online,
            &inputs("vif"),
            &[("backend/vif/5/0/ip", "10.0.0.300")]
        )
        .is_err());
        assert!(run(
            Action::Online,
            &inputs("vif"),
            &[("backend/vif/5/0/rate", "fast")]
        )
        .is_err());
        assert!(run(
            Action::Online,
            &inputs("vif"),
            &[("backend/vif/5/0/vifname", "a/b")]
        )
        .is_err());
        let mut inp = inputs("vif");
        inp.vif.clear();
        assert!(run(Action::Online, &inp, &[]).is_err());
        let mut inp = inputs("tap");
        inp.interface = "eth0".into();
        assert!(run(Action::Add, &inp, &[]).is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(parse_vif_name("vif12.3-emu"), Some((12, 3)));
        // The frontend comes from XENBUS_PATH (taken apart by the runtime's BackendPath), and
        // only for a vif backend.
        let mut inp = inputs("vif");
        inp.xenbus_path = "/local/domain/0/backend/vif/7/1".into();
        let c = run(Action::Online, &inp, &[]).unwrap().unwrap();
        assert_eq!(c.frontend.as_deref(), Some("/local/domain/7/device/vif/1"));
        inp.xenbus_path = "backend/vbd/7/1".into();
        let c = run(Action::Online, &inp, &[]).unwrap().unwrap();
        assert_eq!(c.frontend, None);
    }
}
