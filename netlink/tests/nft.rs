//! nftables set listings over netlink against the real kernel, in a throwaway network namespace,
//! with `nft -j list set` as the oracle. Needs root and nft (skipped otherwise; fails under CI).

use std::collections::BTreeSet;

use serde_json::Value;
use xenplug_netlink::nft::{key_hex, set_elements, Nft, Removal};
use xenplug_testkit::{require_program, require_root, NetNs};

fn ns(tag: &str) -> Option<NetNs> {
    if !(require_root() && require_program("nft")) {
        return None;
    }
    Some(NetNs::new(tag).unwrap())
}

/// The elements of a set as `nft -j` lists them (small values as numbers, others as hex).
fn nft_elements(ns: &NetNs, family: &str, table: &str, set: &str) -> BTreeSet<u128> {
    let v: Value =
        serde_json::from_str(&ns.nft(&["-j", "list", "set", family, table, set])).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten()
        .map(|e| match e {
            Value::Number(n) => u128::from(n.as_u64().unwrap()),
            Value::String(s) => u128::from_str_radix(s.trim_start_matches("0x"), 16).unwrap(),
            other => panic!("unexpected element {other}"),
        })
        .collect()
}

/// Netlink's keys of a set, read from a thread in `ns`.
fn netlink_elements(ns: &NetNs, family: &str, table: &str, set: &str) -> BTreeSet<u128> {
    let keys = ns.run(|| set_elements(family, table, set)).unwrap();
    keys.iter()
        .map(|k| {
            assert_eq!(k.len(), 16, "a 128-bit key: {k:?}");
            u128::from_be_bytes(k.as_slice().try_into().unwrap())
        })
        .collect()
}

#[test]
fn set_elements_match_nft_and_read_back_into_nft() {
    let Some(ns) = ns("nl-nft") else {
        return;
    };
    // The vif scripts' kind of set (typeof @nh,64,128, dynamic), small and large: a set of
    // thousands of elements takes several dump messages.
    ns.nft_script(
        "table netdev xenplug {\n\
         set small { typeof @nh,64,128; size 8; flags dynamic; }\n\
         set empty { typeof @nh,64,128; size 8; flags dynamic; }\n\
         set big { typeof @nh,64,128; size 65535; flags dynamic; }\n\
         }\n\
         add element netdev xenplug small { 0xfe8000000000000002163efffe123456, 1, 0xfe80000000000000a5a5a5a5a5a5a5a5 }\n",
    );
    let big: Vec<String> = (0..3000u128)
        .map(|i| format!("0x{:032x}", (0xfe80u128 << 112) | (i * 0x1_0001_0001)))
        .collect();
    for chunk in big.chunks(500) {
        ns.nft_script(&format!(
            "add element netdev xenplug big {{ {} }}\n",
            chunk.join(", ")
        ));
    }
    for set in ["small", "empty", "big"] {
        let ours = netlink_elements(&ns, "netdev", "xenplug", set);
        assert_eq!(ours, nft_elements(&ns, "netdev", "xenplug", set), "{set}");
    }
    assert_eq!(
        netlink_elements(&ns, "netdev", "xenplug", "big").len(),
        3000
    );
    assert!(netlink_elements(&ns, "netdev", "xenplug", "empty").is_empty());

    // What the scripts do with them: written back in nft's syntax, they delete exactly those.
    let keys = ns
        .run(|| set_elements("netdev", "xenplug", "small"))
        .unwrap();
    let text: Vec<String> = keys.iter().map(|k| key_hex(k)).collect();
    assert!(
        text.contains(&"0x00000000000000000000000000000001".to_string()),
        "{text:?}"
    );
    ns.nft_script(&format!(
        "delete element netdev xenplug small {{ {} }}\n",
        text.join(", ")
    ));
    assert!(nft_elements(&ns, "netdev", "xenplug", "small").is_empty());

    // No such set, no such table, no such family: gone, gone, refused.
    for (family, table, set) in [
        ("netdev", "xenplug", "nosuch"),
        ("netdev", "nosuch", "small"),
        ("ip", "xenplug", "small"),
    ] {
        let e = ns.run(|| set_elements(family, table, set)).unwrap_err();
        assert!(e.is_gone(), "{family} {table} {set}: {e}");
    }
    assert!(ns.run(|| set_elements("ipx", "xenplug", "small")).is_err());
}

/// The chains of table `netdev xenplug`, by name.
fn chains(ns: &NetNs) -> BTreeSet<String> {
    let out = ns
        .command("nft")
        .args(["-j", "list", "chains", "netdev"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["chain"]["name"].as_str().map(str::to_string))
        .collect()
}

/// True when set `name` of table `netdev xenplug` exists.
fn has_set(ns: &NetNs, name: &str) -> bool {
    ns.command("nft")
        .args(["list", "set", "netdev", "xenplug", name])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn a_vif_s_chain_set_and_claims_are_removed_in_one_transaction() {
    let Some(ns) = ns("nl-nftrm") else {
        return;
    };
    for (d, p) in [("d5", "p5"), ("d6", "p6")] {
        ns.ip(&["link", "add", d, "type", "veth", "peer", "name", p])
            .unwrap();
    }
    // Two vifs' chains as the antispoofing leaves them, in miniature: each looks its own set
    // and the set of every claim up, and adds to its own.
    let mut rules = String::from(
        "table netdev xenplug {\n\
         set ll6-claimed { typeof @nh,64,128; size 65535; flags dynamic; }\n",
    );
    for (v, d) in [("vif5.0", "d5"), ("vif6.0", "d6")] {
        rules.push_str(&format!(
            "set {v}-ll6 {{ typeof @nh,64,128; size 8; flags dynamic; }}\n\
             chain {v} {{ type filter hook ingress device \"{d}\" priority 0; policy accept;\n\
             meta protocol ip6 @nh,64,128 @{v}-ll6 accept\n\
             meta protocol ip6 @nh,64,128 @ll6-claimed drop\n\
             meta protocol ip6 add @{v}-ll6 {{ @nh,64,128 }}\n\
             }}\n"
        ));
    }
    rules.push_str("}\n");
    rules.push_str(
        "add element netdev xenplug vif5.0-ll6 { 0xfe800000000000000000000000000005, 0xfe80000000000000a5a5a5a5a5a5a5a5 }\n\
         add element netdev xenplug vif6.0-ll6 { 0xfe800000000000000000000000000006 }\n\
         add element netdev xenplug ll6-claimed { 0xfe800000000000000000000000000005, 0xfe80000000000000a5a5a5a5a5a5a5a5, 0xfe800000000000000000000000000006 }\n",
    );
    ns.nft_script(&rules);
    let s = |x: &str| x.to_string();
    let remove_vif = |keys: Vec<Vec<u8>>| {
        vec![
            Removal::Chain {
                family: s("netdev"),
                table: s("xenplug"),
                chain: s("vif5.0"),
            },
            Removal::Elements {
                family: s("netdev"),
                table: s("xenplug"),
                set: s("ll6-claimed"),
                keys,
            },
            Removal::Set {
                family: s("netdev"),
                table: s("xenplug"),
                set: s("vif5.0-ll6"),
            },
        ]
    };

    // All or nothing: the vif's chain with a set another chain still uses fails whole.
    let busy = vec![
        Removal::Chain {
            family: s("netdev"),
            table: s("xenplug"),
            chain: s("vif5.0"),
        },
        Removal::Set {
            family: s("netdev"),
            table: s("xenplug"),
            set: s("ll6-claimed"),
        },
    ];
    let e = ns.run(|| Nft::open().unwrap().remove(&busy)).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
    assert_eq!(chains(&ns), BTreeSet::from([s("vif5.0"), s("vif6.0")]));

    // What the teardown does: the vif's claims, read, then released with its chain and set.
    let keys = ns
        .run(|| set_elements("netdev", "xenplug", "vif5.0-ll6"))
        .unwrap();
    assert_eq!(keys.len(), 2);
    let n = ns
        .run(|| Nft::open().unwrap().remove(&remove_vif(keys.clone())))
        .unwrap();
    assert_eq!(n, 4, "delete chain, add + delete elements, delete set");
    assert_eq!(chains(&ns), BTreeSet::from([s("vif6.0")]));
    assert!(!has_set(&ns, "vif5.0-ll6"));
    assert_eq!(
        nft_elements(&ns, "netdev", "xenplug", "ll6-claimed"),
        BTreeSet::from([0xfe80_0000_0000_0000_0000_0000_0000_0006u128])
    );

    // Again: what is gone is left out, and claims already released stay released.
    let n = ns
        .run(|| Nft::open().unwrap().remove(&remove_vif(keys.clone())))
        .unwrap();
    assert_eq!(
        n, 2,
        "only the claims' add + delete: the chain and the set are gone"
    );
    assert_eq!(
        nft_elements(&ns, "netdev", "xenplug", "ll6-claimed").len(),
        1
    );
    // No such table (or family's table): nothing to do.
    let elsewhere = vec![
        Removal::Chain {
            family: s("ip"),
            table: s("xenplug-nat"),
            chain: s("nat-vif5.0"),
        },
        Removal::Set {
            family: s("netdev"),
            table: s("nosuch"),
            set: s("x"),
        },
    ];
    assert_eq!(
        ns.run(|| Nft::open().unwrap().remove(&elsewhere)).unwrap(),
        0
    );
    assert_eq!(chains(&ns), BTreeSet::from([s("vif6.0")]));
}
