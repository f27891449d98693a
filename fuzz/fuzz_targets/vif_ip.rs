//! The vif scripts' `ip` list (`xenplug_vif::types::parse_ip_list`): space-separated addresses
//! or networks from the backend's `ip` node or the `ip` variable.
//!
//! Asserts: every accepted entry prints back (`Display`) to text that parses to the same entry;
//! the prefix of an accepted entry is plain decimal digits (no sign), within the family's width.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_fuzz::{text, Counting};
use xenplug_vif::types::{parse_ip_list, Net};

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let Some(s) = text(data) else { return };
    let Ok(list) = parse_ip_list(s, "backend/vif/1/0/ip") else {
        return;
    };
    let words: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(words.len(), list.len());
    for (w, net) in words.iter().zip(&list) {
        let printed = net.to_string();
        assert_eq!(Net::parse(&printed), Some(*net), "{w:?} -> {printed:?}");
        if let Some((_, p)) = w.split_once('/') {
            assert!(
                !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()),
                "prefix {p:?} accepted in {w:?}"
            );
        }
        assert!(net.prefix <= if net.addr.is_ipv4() { 32 } else { 128 });
    }
});
