//! The first-boot configuration document (`xenplug_channel::ConfigDoc`) in its canonical JSON
//! form, as the agent receives it in `xenplug-apply-config`.
//!
//! Asserts: an accepted document validates, and serialises to JSON that parses back to the same
//! document (the peer stores and forwards documents in that form); the JSON value path
//! (`from_value`, used for the command's `config` argument) agrees with the bytes path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_channel::ConfigDoc;
use xenplug_fuzz::Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let parsed = ConfigDoc::from_json(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let via_value = ConfigDoc::from_value(v);
        assert_eq!(
            parsed.is_ok(),
            via_value.is_ok(),
            "{parsed:?} vs {via_value:?}"
        );
        if let (Ok(a), Ok(b)) = (&parsed, &via_value) {
            assert_eq!(a, b);
        }
    }
    let Ok(doc) = parsed else { return };
    doc.validate().expect("an accepted document validates");
    let bytes = serde_json::to_vec(&doc).expect("a document serialises");
    let again = ConfigDoc::from_json(&bytes).unwrap_or_else(|e| {
        panic!(
            "re-encoded document rejected: {e}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(again, doc, "JSON round trip");
});
