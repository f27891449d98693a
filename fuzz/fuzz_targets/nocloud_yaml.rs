//! The NoCloud mapping (`ConfigDoc::from_nocloud`): `meta-data`, `user-data` (`#cloud-config`)
//! and `network-config` YAML as a cloud-init user writes them, carried to the agent.
//!
//! Input: the three files separated by NUL bytes. Asserts: the conversion's result validates
//! and survives the JSON round trip the peer and agent put it through; memory stays bounded
//! (YAML aliases are the classic amplification).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_channel::{ConfigDoc, NoCloudSeed};
use xenplug_fuzz::{measure, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let seed = NoCloudSeed {
        meta_data: parts.next().unwrap_or("").to_string(),
        user_data: parts.next().map(str::to_string),
        network_config: parts.next().map(str::to_string),
        generation: Some(7),
    };
    let (res, mem) = measure(|| ConfigDoc::from_nocloud(&seed));
    assert!(
        mem.peak <= 64 * 1024 * 1024 && mem.peak <= 4096 * data.len() + (4 << 20),
        "{} bytes of input took {} bytes of heap",
        data.len(),
        mem.peak
    );
    let Ok(doc) = res else { return };
    doc.validate().expect("a converted document validates");
    let bytes = serde_json::to_vec(&doc).expect("a document serialises");
    let again = ConfigDoc::from_json(&bytes).unwrap_or_else(|e| {
        panic!(
            "converted document rejected: {e}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(again, doc, "JSON round trip");
});
