//! nftables set listings over netlink against the real kernel, in a throwaway network namespace,
//! with `nft -j list set` as the oracle. Needs root and nft (skipped otherwise; fails under CI).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Stdio;

use serde_json::Value;
use xenplug_netlink::nft::{key_hex, set_elements};
use xenplug_testkit::{require_program, require_root, NetNs};

fn ns(tag: &str) -> Option<NetNs> {
    if !(require_root() && require_program("nft")) {
        return None;
    }
    Some(NetNs::new(tag).unwrap())
}

/// Run `nft -f -` with `script` in `ns`.
fn nft(ns: &NetNs, script: &str) {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nft -f - failed on:\n{script}"
    );
}

/// The elements of a set as `nft -j` lists them (small values as numbers, others as hex).
fn nft_elements(ns: &NetNs, family: &str, table: &str, set: &str) -> BTreeSet<u128> {
    let out = ns
        .command("nft")
        .args(["-j", "list", "set", family, table, set])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
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
    nft(
        &ns,
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
        nft(
            &ns,
            &format!(
                "add element netdev xenplug big {{ {} }}\n",
                chunk.join(", ")
            ),
        );
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
    nft(
        &ns,
        &format!(
            "delete element netdev xenplug small {{ {} }}\n",
            text.join(", ")
        ),
    );
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
