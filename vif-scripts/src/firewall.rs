//! Antispoofing with nftables: the pure builders of the batches (a tap's `rate` is tc's job:
//! [`crate::rate`]; `nft` itself is run by [`crate::adapters::NftCli`]).
//!
//! Every vif that needs rules gets one base chain, named after the interface, in our own table
//! `netdev xenplug`, hooked at **ingress of the vif itself**. Traffic a guest sends enters dom0
//! through that hook whatever happens to it next (bridged, routed or NATed), so one mechanism
//! serves every script and nothing depends on `br_netfilter` or on the host's own tables.
//! A whole chain is written as ONE JSON batch (`nft -j -f -`), which nftables applies atomically;
//! removal deletes the chain in another batch.
//!
//! Modes (the `antispoof` variable: argument `antispoof=…` or environment):
//! * `enforce` (default): the chain's policy is drop; accepted are ARP whose sender address is a
//!   listed IPv4 address (or 0.0.0.0, address-conflict probes), IPv4 from listed addresses, DHCP
//!   client requests (0.0.0.0:68 → 255.255.255.255:67), IPv6 from listed addresses, and IPv6 from
//!   link-local and unspecified sources (neighbour/router discovery, duplicate address detection,
//!   DHCPv6). Everything else from the guest, including other ethertypes and VLAN tags, is dropped.
//! * `compat`: the reference's ACCEPT-only rules for the same addresses, policy accept (it changes
//!   nothing unless the administrator adds drops elsewhere, exactly like the reference).
//! * `off`: no rules.
//!
//! Rules exist only when the backend `ip` node lists addresses.

use serde_json::{json, Value};

use crate::types::{Mode, Net, NftBatch};

/// Our nftables table (family `netdev`).
pub const TABLE: &str = "xenplug";

fn chain_ref(dev: &str) -> Value {
    json!({"family": "netdev", "table": TABLE, "name": dev})
}

fn m(proto: &str, field: &str, right: Value) -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}}, "right": right}})
}

fn addr_json(n: &Net) -> Value {
    if n.is_host() {
        json!(n.addr.to_string())
    } else {
        json!({"prefix": {"addr": n.addr.to_string(), "len": n.prefix}})
    }
}

fn addr_set(addrs: &[Net]) -> Value {
    if addrs.len() == 1 {
        addr_json(&addrs[0])
    } else {
        json!({"set": addrs.iter().map(addr_json).collect::<Vec<_>>()})
    }
}

fn rule(dev: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "netdev", "table": TABLE, "chain": dev, "expr": expr}}})
}

/// Commands removing chain `name` of table `family table` whether or not it exists: the table
/// and the chain are added (a missing chain as a plain, hook-less chain; an existing base chain
/// is left as it is), then the chain is deleted with its rules. A batch of several such removals
/// cannot fail on one chain already gone (e.g. a netdev chain the kernel dropped with its device)
/// and leave the others behind.
pub fn remove_chain_cmds(family: &str, table: &str, name: &str) -> Vec<Value> {
    let chain = json!({"family": family, "table": table, "name": name});
    vec![
        json!({"add": {"table": {"family": family, "name": table}}}),
        json!({"add": {"chain": chain.clone()}}),
        json!({"delete": {"chain": chain}}),
    ]
}

/// The batch removing `dev`'s chain.
pub fn remove_batch(dev: &str) -> NftBatch {
    NftBatch {
        what: format!("remove netdev {TABLE} chain {dev}"),
        json: json!({"nftables": [{"delete": {"chain": chain_ref(dev)}}]}),
        undo: None,
        removal: true,
    }
}

/// The batch installing `dev`'s chain, or `None` when no rule is needed (mode `off`, or no
/// addresses).
///
/// `addrs` are the guest's addresses from the backend `ip` node.
pub fn vif_batch(dev: &str, addrs: &[Net], mode: Mode) -> Option<NftBatch> {
    if mode == Mode::Off || addrs.is_empty() {
        return None;
    }
    let policy = if mode == Mode::Enforce {
        "drop"
    } else {
        "accept"
    };
    let mut cmds = vec![
        json!({"add": {"table": {"family": "netdev", "name": TABLE}}}),
        // add + delete + add: the chain is created afresh whatever existed (idempotent online).
        json!({"add": {"chain": {"family": "netdev", "table": TABLE, "name": dev,
            "type": "filter", "hook": "ingress", "dev": dev, "prio": 0, "policy": "accept"}}}),
        json!({"delete": {"chain": chain_ref(dev)}}),
        json!({"add": {"chain": {"family": "netdev", "table": TABLE, "name": dev,
            "type": "filter", "hook": "ingress", "dev": dev, "prio": 0, "policy": policy}}}),
    ];
    let v4: Vec<Net> = addrs.iter().filter(|a| a.addr.is_ipv4()).copied().collect();
    let v6: Vec<Net> = addrs.iter().filter(|a| a.addr.is_ipv6()).copied().collect();
    let mut arp = v4.clone();
    arp.push(Net::parse("0.0.0.0").expect("literal"));
    cmds.push(rule(
        dev,
        vec![
            m("arp", "saddr ip", addr_set(&arp)),
            json!({"accept": null}),
        ],
    ));
    if !v4.is_empty() {
        cmds.push(rule(
            dev,
            vec![m("ip", "saddr", addr_set(&v4)), json!({"accept": null})],
        ));
    }
    cmds.push(rule(
        dev,
        vec![
            m("ip", "saddr", json!("0.0.0.0")),
            m("ip", "daddr", json!("255.255.255.255")),
            m("udp", "sport", json!(68)),
            m("udp", "dport", json!(67)),
            json!({"accept": null}),
        ],
    ));
    if !v6.is_empty() {
        cmds.push(rule(
            dev,
            vec![m("ip6", "saddr", addr_set(&v6)), json!({"accept": null})],
        ));
    }
    cmds.push(rule(
        dev,
        vec![
            m(
                "ip6",
                "saddr",
                json!({"prefix": {"addr": "fe80::", "len": 10}}),
            ),
            json!({"accept": null}),
        ],
    ));
    cmds.push(rule(
        dev,
        vec![
            m("ip6", "saddr", json!("::")),
            m("icmpv6", "type", json!("nd-neighbor-solicit")),
            json!({"accept": null}),
        ],
    ));
    let what = format!(
        "netdev {TABLE} chain {dev}: {mode:?} antispoof for {} address(es), policy {policy}",
        addrs.len()
    );
    Some(NftBatch {
        what,
        json: json!({ "nftables": cmds }),
        undo: Some(Box::new(remove_batch(dev))),
        removal: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rules_without_addresses() {
        assert!(vif_batch("vif1.0", &[], Mode::Enforce).is_none());
        assert!(vif_batch("vif1.0", &[Net::parse("10.0.0.5").unwrap()], Mode::Off).is_none());
    }

    #[test]
    fn enforce_batch_shape() {
        let addrs: Vec<Net> = ["10.0.0.5", "2001:db8::5"]
            .iter()
            .map(|a| Net::parse(a).unwrap())
            .collect();
        let b = vif_batch("vif1.0", &addrs, Mode::Enforce).unwrap();
        let cmds = b.json["nftables"].as_array().unwrap();
        assert_eq!(cmds[3]["add"]["chain"]["policy"], "drop");
        assert_eq!(cmds[3]["add"]["chain"]["dev"], "vif1.0");
        let text = b.json.to_string();
        assert!(text.contains(r#""saddr ip""#) && text.contains("0.0.0.0"));
        assert!(text.contains("2001:db8::5"));
        assert_eq!(
            b.undo.unwrap().json["nftables"][0]["delete"]["chain"]["name"],
            "vif1.0"
        );
        let c = vif_batch("vif1.0", &addrs, Mode::Compat).unwrap();
        assert_eq!(c.json["nftables"][3]["add"]["chain"]["policy"], "accept");
    }

    #[test]
    fn robust_removal_and_joined_batches() {
        let cmds = remove_chain_cmds("ip", "t", "c");
        assert_eq!(cmds[0]["add"]["table"]["name"], "t");
        assert_eq!(cmds[1]["add"]["chain"]["name"], "c");
        assert!(
            cmds[1]["add"]["chain"].get("hook").is_none(),
            "a plain chain"
        );
        assert_eq!(cmds[2]["delete"]["chain"]["name"], "c");
        let a = vif_batch("vif1.0", &[Net::parse("10.0.0.5").unwrap()], Mode::Enforce).unwrap();
        let n = a.commands().len();
        let both = a
            .clone()
            .then(remove_batch("x"), Some(remove_batch("vif1.0")));
        assert_eq!(both.commands().len(), n + 1);
        assert_eq!(both.commands()[n]["delete"]["chain"]["name"], "x");
        assert!(!both.removal);
        assert_eq!(both.undo.unwrap().what, remove_batch("vif1.0").what);
        assert!(remove_batch("a").then(remove_batch("b"), None).removal);
    }
}
