//! The network-config corpus (cloud-init's documentation examples and xenplug's own, in
//! tests/corpus/network) through the version 1/2 parser: what is accepted, what is refused and
//! with which path, and what the accepted ones mean. The same files are rendered by cloud-init
//! itself and compared with the agent's renderings in guest-agent/tests/cloud_init_net.rs.

use std::net::IpAddr;
use std::path::PathBuf;

use xenplug_channel::config::{Interface, NetworkConfig, RouteTo};

fn corpus() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/network");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Corpus files refused on purpose: (file, path of the refusal, words of the reason).
const REFUSED: &[(&str, &str, &str)] = &[
    // The example repeats the key `bridge_maxwait`; PyYAML keeps the last, a strict YAML parser
    // refuses the ambiguity.
    ("doc-v1-bridge", "", "duplicate entry"),
    // The route's gateway 192.168.24.1 is on no configured subnet (192.168.23.0/24): cloud-init
    // writes a route that can never be installed.
    (
        "doc-v1-route",
        "network.config[1].gateway",
        "on none of the configured subnets",
    ),
    // `wlp1s0` is named as a bridge port but defined nowhere.
    (
        "doc-v2-complex",
        "network.bridges.br0.interfaces[0]",
        "not an entry",
    ),
];

#[test]
fn every_corpus_file_is_accepted_or_refused_with_its_path() {
    let files = corpus();
    assert!(files.len() >= 20, "corpus has {} files", files.len());
    for (name, text) in &files {
        let r = NetworkConfig::from_yaml(text);
        match REFUSED.iter().find(|(n, _, _)| n == name) {
            Some((_, path, why)) => {
                let e = r.expect_err(name);
                assert_eq!(e.path, *path, "{name}: {e}");
                assert!(e.message.contains(why), "{name}: {e}");
            }
            None => {
                let n = r.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(!n.is_empty(), "{name}");
                n.validate().unwrap();
                // The canonical JSON form carries it unchanged.
                let back: NetworkConfig =
                    serde_json::from_value(serde_json::to_value(&n).unwrap()).unwrap();
                assert_eq!(back, n, "{name}");
            }
        }
    }
}

fn load(name: &str) -> NetworkConfig {
    let (_, text) = corpus().into_iter().find(|(n, _)| n == name).unwrap();
    NetworkConfig::from_yaml(&text).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn version_1_means_what_cloud_init_makes_of_it() {
    // A physical NIC with a MAC: matched by MAC and renamed; netmask → prefix; gateway → default
    // route; per-subnet DNS.
    let n = load("v1-xo");
    let e = &n.ethernets["eth0"];
    assert_eq!(
        e.match_.as_ref().unwrap().macaddress.unwrap().to_string(),
        "00:16:3e:5a:01:02"
    );
    assert_eq!(e.set_name.as_deref(), Some("eth0"));
    let ip4 = e.ip();
    assert_eq!(ip4.addresses[0].to_string(), "198.51.100.20/24");
    assert_eq!(ip4.routes.len(), 1);
    assert_eq!(
        (ip4.routes[0].to, ip4.routes[0].via),
        (RouteTo::Default, Some(ip("198.51.100.1")))
    );
    assert_eq!(
        ip4.nameservers.addresses,
        vec![ip("198.51.100.53"), ip("9.9.9.9")]
    );
    assert_eq!(ip4.nameservers.search, vec!["example.net".to_string()]);
    // Subnet metric and netmask routes (cloud-init's own example).
    let n = load("doc-v1-subnet-routes");
    let ip4 = n.ethernets["interface0"].ip();
    assert!(ip4.dhcp4);
    assert_eq!(ip4.dhcp4_metric, Some(200));
    assert_eq!(ip4.addresses[0].to_string(), "10.184.225.122/30");
    let dsts: Vec<String> = ip4
        .routes
        .iter()
        .map(|r| format!("{:?} {:?}", r.to, r.via))
        .collect();
    assert_eq!(ip4.routes.len(), 2, "{dsts:?}");
    assert!(matches!(ip4.routes[0].to, RouteTo::Net(c) if c.to_string() == "10.176.0.0/12"));
    // An interface's own nameserver entry; bond parameters with mixed spellings; VLAN on a bond.
    let n = load("doc-v1-nameserver");
    assert_eq!(
        n.ethernets["interface0"].ip().nameservers.addresses,
        vec![ip("192.168.23.2"), ip("8.8.8.8")]
    );
    let n = load("doc-v1-bonded-vlan");
    let b = &n.bonds["bond0"];
    assert_eq!(b.interfaces, ["gbe0", "gbe1"]);
    assert_eq!(b.parameters.mode.as_deref(), Some("802.3ad"));
    assert_eq!(b.parameters.lacp_rate.as_deref(), Some("fast"));
    assert_eq!(n.vlans["bond0.200"].link, "bond0");
    assert_eq!(n.vlans["bond0.200"].id, 200);
    assert!(n.vlans["bond0.200"].ip().dhcp4);
    // Global DNS, and a global route put on the interface that reaches its gateway.
    let n = load("v1-global-route");
    assert_eq!(
        n.nameservers.as_ref().unwrap().addresses,
        vec![ip("192.168.50.53"), ip("10.0.9.53")]
    );
    let r = &n.ethernets["eth1"].routes;
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].via, r[0].metric), (Some(ip("10.0.9.1")), Some(30)));
    // IPv6 subnet types.
    let n = load("v1-ipv6");
    assert!(n.ethernets["eth1"].ip().dhcp6);
    assert_eq!(n.ethernets["eth2"].ip().accept_ra, Some(true));
    assert_eq!(n.ethernets["eth0"].ip().routes.len(), 3);
    // Bridge parameters, per port.
    let n = load("v1-bridge-static");
    let p = &n.bridges["br0"].parameters;
    assert_eq!(
        (p.stp, p.forward_delay, p.priority),
        (Some(true), Some(4), Some(4096))
    );
    assert_eq!(p.path_cost["eth1"], 20);
    assert_eq!(p.port_priority["eth0"], 16);
}

#[test]
fn version_2_extras_and_refusals() {
    let n = load("v2-bond-bridge-vlan");
    assert_eq!(n.bonds["bond0"].parameters.primary.as_deref(), Some("nic0"));
    assert_eq!(n.controller_of("nic2").unwrap().1, "br0");
    let bad = |y: &str| NetworkConfig::from_yaml(y).unwrap_err();
    let e = bad("version: 2\nethernets:\n  e: {match: {name: eth0}}\nwifis: {}\n");
    assert_eq!(
        (e.path.as_str(), e.message.starts_with("not supported")),
        ("wifis", true),
        "{e}"
    );
    let e = bad("version: 2\nrenderer: networkd\nethernets: {}\n");
    assert_eq!(e.path, "renderer", "{e}");
    let e = bad("version: 2\nbonds:\n  bond0:\n    interfaces: [x]\n");
    assert_eq!(e.path, "bonds.bond0.interfaces[0]", "{e}");
    let e = bad("version: 2\nethernets:\n  a: {}\n  b: {}\nbonds:\n  bond0:\n    interfaces: [a]\nbridges:\n  br0:\n    interfaces: [a]\n");
    assert!(e.message.contains("more than one"), "{e}");
    let e = bad("version: 2\nethernets:\n  a: {}\nvlans:\n  v: {id: 5000, link: a}\n");
    assert_eq!(e.path, "vlans.v.id", "{e}");
    let e = bad("version: 2\nethernets:\n  a: {}\nbonds:\n  b0:\n    interfaces: [a]\n    parameters: {mode: fastest}\n");
    assert_eq!(e.path, "bonds.b0.parameters.mode", "{e}");
    let e = bad("version: 1\nconfig:\n  - {type: infiniband, name: ib0}\n");
    assert_eq!(e.path, "config[0].type", "{e}");
    let e = bad("network:\n  version: 1\n  config:\n    - {type: physical, name: eth0, subnets: [{type: static, address: 10.0.0.1/24, control: manual}]}\n");
    assert_eq!(e.path, "network.config[0].subnets[0].control", "{e}");
    let e = bad("version: 1\nconfig:\n  - {type: bond, name: b, bond_interfaces: [e], params: {bond-tlb-dynamic-lb: 1}}\n");
    assert_eq!(e.path, "config[0].params.bond-tlb-dynamic-lb", "{e}");
    // YAML 1.1 booleans, as cloud-init reads them.
    let n = NetworkConfig::from_yaml(
        "version: 2\nethernets:\n  eth0:\n    dhcp4: yes\n    dhcp6: off\n",
    )
    .unwrap();
    assert_eq!(
        (n.ethernets["eth0"].dhcp4, n.ethernets["eth0"].dhcp6),
        (Some(true), Some(false))
    );
}
