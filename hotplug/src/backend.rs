//! `XENBUS_PATH` taken apart once: the typed backend path every script uses.
//!
//! libxl gives a script its backend directory as the relative path
//! `backend/<kind>/<frontend domid>/<devid>` (docs/hotplug-contract.md, "Environment"), which
//! xenstored resolves under the running domain's home (`/local/domain/0` in dom0, the driver
//! domain's in a driver domain). The scripts need its parts: block's sharing check scans every
//! backend of the same kind and must skip its own, the vif scripts write the frontend's `mtu`,
//! a tap derives its backend from `INTERFACE`.

use std::fmt;

/// A backend directory: `[<prefix>/]<kind>/<domid>/<devid>`, e.g. `backend/vbd/5/51712`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPath {
    /// The path as given (relative or absolute, without a trailing `/`).
    pub path: String,
    /// The device kind component: `vbd`, `vbd3`, `vif`.
    pub kind: String,
    /// The frontend's domain id.
    pub domid: u32,
    /// The device id (`51712` for xvda, the vif's handle).
    pub devid: u32,
}

impl BackendPath {
    /// Parse `[<prefix>/]<kind>/<domid>/<devid>`; `None` when the last three components are not
    /// a kind and two numbers.
    pub fn parse(path: &str) -> Option<BackendPath> {
        let path = path.trim_end_matches('/');
        let mut it = path.rsplit('/');
        let devid = number(it.next()?)?;
        let domid = number(it.next()?)?;
        let kind = it.next().filter(|k| !k.is_empty())?;
        Some(BackendPath {
            path: path.to_string(),
            kind: kind.to_string(),
            domid,
            devid,
        })
    }

    /// The backend path libxl gives a vif script for `vif<domid>.<devid>` (relative, as libxl
    /// passes it): `backend/vif/<domid>/<devid>`.
    pub fn vif(domid: u32, devid: u32) -> BackendPath {
        BackendPath {
            path: format!("backend/vif/{domid}/{devid}"),
            kind: "vif".into(),
            domid,
            devid,
        }
    }

    /// The frontend directory: `/local/domain/<domid>/device/<kind>/<devid>` (`vbd3` devices have
    /// `vbd` frontends).
    pub fn frontend(&self) -> String {
        let kind = if self.kind == "vbd3" {
            "vbd"
        } else {
            &self.kind
        };
        format!("/local/domain/{}/device/{kind}/{}", self.domid, self.devid)
    }

    /// The node `key` of this backend.
    pub fn node(&self, key: &str) -> String {
        format!("{}/{key}", self.path)
    }
}

/// A decimal number without sign or leading `+` (xenstore ids are written so).
fn number(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

impl fmt::Display for BackendPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let b = BackendPath::parse("backend/vbd/5/51712").unwrap();
        assert_eq!((b.kind.as_str(), b.domid, b.devid), ("vbd", 5, 51712));
        assert_eq!(b.frontend(), "/local/domain/5/device/vbd/51712");
        assert_eq!(b.node("params"), "backend/vbd/5/51712/params");
        let b = BackendPath::parse("/local/domain/0/backend/vif/7/1/").unwrap();
        assert_eq!(b.path, "/local/domain/0/backend/vif/7/1");
        assert_eq!(b.frontend(), "/local/domain/7/device/vif/1");
        assert_eq!(
            BackendPath::parse("backend/vbd3/2/768").unwrap().frontend(),
            "/local/domain/2/device/vbd/768"
        );
        assert_eq!(
            BackendPath::vif(3, 0),
            BackendPath::parse("backend/vif/3/0").unwrap()
        );
        for bad in [
            "",
            "whatever",
            "5/1",
            "/5/1",
            "backend/vbd/x/1",
            "backend/vbd/1/-1",
            "backend/vbd/1/+1",
        ] {
            assert_eq!(BackendPath::parse(bad), None, "{bad}");
        }
    }
}
