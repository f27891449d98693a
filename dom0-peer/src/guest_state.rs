//! What a guest reports about itself (`xenplug-guest-state` events: OS, host name, memory,
//! interfaces and addresses), as the daemon keeps and shows it.
//!
//! A report is a claim by an untrusted guest, not a fact: every string is sanitised and capped,
//! addresses that do not parse are dropped, lists are bounded, and nothing in it is acted on —
//! it is only shown (`xenplug-peer list`) and kept per channel until the VM goes away.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;
use xenplug_channel::host::sanitize;
use xenplug_channel::qga::{GuestInterface, GuestState};

/// Most interfaces kept from one report.
pub const MAX_INTERFACES: usize = 64;
/// Most addresses kept per interface and family.
pub const MAX_ADDRESSES: usize = 64;

/// A guest's last report, as kept by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestReport {
    /// The reported state, sanitised.
    #[serde(flatten)]
    pub state: GuestState,
    /// When it arrived, seconds since the epoch.
    pub reported_at: u64,
}

fn clean(s: &Option<String>) -> Option<String> {
    s.as_deref().map(sanitize).filter(|s| !s.is_empty())
}

fn addresses(v: &[String], v4: bool) -> Vec<String> {
    v.iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|a| a.is_ipv4() == v4)
        .map(|a| a.to_string())
        .take(MAX_ADDRESSES)
        .collect()
}

fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl GuestReport {
    /// Read an event's `data`; `Err` when it is not a guest state at all.
    pub fn from_event(data: Value, reported_at: u64) -> Result<GuestReport, String> {
        let raw: GuestState = serde_json::from_value(data).map_err(|e| sanitize(&e.to_string()))?;
        let state = GuestState {
            os_name: clean(&raw.os_name),
            os_distro: clean(&raw.os_distro),
            os_majorver: clean(&raw.os_majorver),
            os_minorver: clean(&raw.os_minorver),
            os_uname: clean(&raw.os_uname),
            hostname: clean(&raw.hostname),
            meminfo_total: raw.meminfo_total,
            meminfo_free: raw.meminfo_free,
            interfaces: raw
                .interfaces
                .iter()
                .take(MAX_INTERFACES)
                .map(|i| GuestInterface {
                    name: sanitize(&i.name),
                    mac: i
                        .mac
                        .as_deref()
                        .filter(|m| valid_mac(m))
                        .map(str::to_ascii_lowercase),
                    vif: i.vif,
                    ipv4: addresses(&i.ipv4, true),
                    ipv6: addresses(&i.ipv6, false),
                })
                .collect(),
        };
        Ok(GuestReport { state, reported_at })
    }

    /// Every address, IPv4 first (for the table).
    pub fn addresses(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .state
            .interfaces
            .iter()
            .flat_map(|i| i.ipv4.iter().cloned())
            .collect();
        v.extend(
            self.state
                .interfaces
                .iter()
                .flat_map(|i| i.ipv6.iter().cloned()),
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_are_cleaned() {
        let r = GuestReport::from_event(
            json!({"os-name": "Evil\nOS", "interfaces": [
                {"name": "eth0", "mac": "00:16:3E:00:00:01", "vif": 0,
                 "ipv4": ["192.0.2.1", "not-an-ip", "2001:db8::1"], "ipv6": ["2001:db8::1"]},
                {"name": "x", "mac": "zz"}]}),
            7,
        )
        .unwrap();
        assert_eq!(r.state.os_name.as_deref(), Some("Evil\u{fffd}OS"));
        assert_eq!(r.state.interfaces[0].ipv4, vec!["192.0.2.1"]);
        assert_eq!(
            r.state.interfaces[0].mac.as_deref(),
            Some("00:16:3e:00:00:01")
        );
        assert_eq!(r.state.interfaces[1].mac, None);
        assert_eq!(r.addresses(), vec!["192.0.2.1", "2001:db8::1"]);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["reported_at"], 7);
        assert_eq!(v["os-name"], "Evil\u{fffd}OS");
        assert!(GuestReport::from_event(json!([1]), 0).is_err());
    }
}
