//! MAC addresses as the vif scripts read them from xenstore (`mac` node, for vif-nat's DHCP
//! host line) with `xenplug_netlink::links::parse_mac`.
//!
//! Asserts: an accepted MAC is exactly six colon-separated pairs of hex digits (it is written
//! verbatim into dnsmasq's hosts file), and prints back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_fuzz::{text, Counting};
use xenplug_netlink::links::parse_mac;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let Some(s) = text(data) else { return };
    let Some(mac) = parse_mac(s) else { return };
    let printed = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(printed, s.trim().to_ascii_lowercase(), "{s:?} accepted");
    assert_eq!(parse_mac(&printed), Some(mac));
});
