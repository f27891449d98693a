//! The vif scripts' antispoofing batches as netlink messages
//! (`xenplug_vif::nft_netlink::compile`), from what the toolstack gives a vif: its `ip` list, its
//! `mac`, the mode and the host's extra ethertypes.
//!
//! Asserts: every batch `firewall::vif_batch` writes for accepted input, and its undo, compiles
//! (no antispoofing batch falls back to an `nft` process); each rule becomes one `NEWRULE` (so
//! none is dropped on the way), and the messages encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_fuzz::{text, Counting, Unstructured};
use xenplug_netlink::netlink_packet_netfilter::nftables::NfTablesMessage;
use xenplug_netlink::netlink_packet_netfilter::NetfilterMessageInner;
use xenplug_vif::firewall::{vif_batch, Antispoof};
use xenplug_vif::nft_netlink::compile;
use xenplug_vif::types::{parse_ip_list, Mode, NftCmd};

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mode = match u.byte() % 3 {
        0 => Mode::Enforce,
        1 => Mode::Compat,
        _ => Mode::Off,
    };
    let mac = [u.byte(), u.byte(), u.byte(), u.byte(), u.byte(), u.byte()];
    let mac = (mac[0] & 1 == 0).then_some(mac);
    let ethertypes: Vec<u16> = (0..u.byte() % 4).map(|_| u.u16()).collect();
    let Some(s) = text(u.rest()) else { return };
    let Ok(addrs) = parse_ip_list(s, "backend/vif/1/0/ip") else {
        return;
    };
    let a = Antispoof {
        chain: "vif1.0",
        device: "vif1.0",
        addrs: &addrs,
        mac,
        mode,
        ethertypes: &ethertypes,
    };
    let Ok(Some(batch)) = vif_batch(&a) else {
        return;
    };
    for b in [&batch, batch.undo.as_deref().expect("a set-up batch has its undo")] {
        let msgs = compile(&b.cmds).unwrap_or_else(|e| panic!("not compiled ({e}):\n{b}"));
        let rules = b
            .cmds
            .iter()
            .filter(|c| matches!(c, NftCmd::AddRule { .. }))
            .count();
        let compiled = msgs
            .iter()
            .filter(|m| {
                matches!(
                    m.inner,
                    NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(_))
                )
            })
            .count();
        assert_eq!(rules, compiled, "{b}");
        for m in msgs {
            let mut buf = vec![0u8; netlink_packet_core::Emitable::buffer_len(&m)];
            netlink_packet_core::Emitable::emit(&m, &mut buf);
        }
    }
});
