//! The vif `rate` node (`bytes,usecs` as libxl writes it; `xenplug_vif::rate::Rate`).
//!
//! Asserts: an accepted rate prints back to text that parses to the same rate; both fields are
//! plain decimal digits; the derived policer figures stay in range (no overflow, never 0).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_fuzz::{text, Counting};
use xenplug_vif::rate::{Rate, MIN_BURST};

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let Some(s) = text(data) else { return };
    let Ok(r) = Rate::parse(s) else { return };
    let (b, u) = s.trim().split_once(',').unwrap();
    for f in [b.trim(), u.trim()] {
        assert!(f.bytes().all(|c| c.is_ascii_digit()), "rate {s:?} accepted");
    }
    assert_eq!(Rate::parse(&format!("{},{}", r.bytes, r.usecs)), Ok(r));
    assert!(r.bytes_per_second() >= 1);
    let burst = u64::from(r.burst());
    assert!(burst >= MIN_BURST.min(u64::from(u32::MAX)));
    assert!(burst >= r.bytes.min(u64::from(u32::MAX)));
});
