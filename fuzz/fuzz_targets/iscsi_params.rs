//! `block-iscsi`'s `params` (`iqn=…,portal=…[,multipath=y|n]`).
//!
//! Asserts: an accepted target printed back parses to the same target; iqn and portal are
//! non-empty and carry no separator or surrounding blanks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_block::iscsi::{lists_target, parse_params};
use xenplug_fuzz::{text, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let Some(s) = text(data) else { return };
    let Ok(t) = parse_params(s) else { return };
    for v in [&t.iqn, &t.portal] {
        assert!(!v.is_empty() && !v.contains(','), "{t:?} from {s:?}");
        assert_eq!(v.trim(), v.as_str(), "{t:?} from {s:?}");
    }
    let printed = format!(
        "iqn={},portal={},multipath={}",
        t.iqn,
        t.portal,
        if t.multipath { "y" } else { "n" }
    );
    assert_eq!(parse_params(&printed).as_ref(), Ok(&t), "{printed:?}");
    // A session listing naming the target is recognised, one naming a longer iqn is not.
    assert_eq!(
        lists_target(
            &format!("tcp: [1] {} {} (non-flash)", t.portal, t.iqn),
            &t.iqn
        ),
        !t.iqn.contains(char::is_whitespace)
    );
});
