//! The `block` script's inputs from the backend directory: `params` (classified as device, file
//! or other), `mode` (strict) and `physical-device` (hex `major:minor`).
//!
//! Asserts: `params` classifies to the path as given or, for a relative name, the same name
//! under the device directory, and only to `Device` when that is a block device; a strictly
//! parsed mode prints back to one of the six spellings; an accepted `physical-device` prints
//! back (lower-case hex) to the same numbers.
#![no_main]

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xenplug_block::block::{classify, Params};
use xenplug_block::devnum::DevNum;
use xenplug_block::sharing::Mode;
use xenplug_fuzz::{text, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let Some(s) = text(data) else { return };
    let dev = Path::new("/dev");
    match classify(s, dev) {
        Params::Device(p) => {
            assert!(p == Path::new(s) || p == dev.join(s), "{p:?} from {s:?}");
            let m = std::fs::metadata(&p).expect("a device exists");
            assert!(m.file_type().is_block_device());
        }
        Params::File(p) => {
            assert_eq!(p, Path::new(s));
            assert!(std::fs::metadata(&p).expect("the file exists").is_file());
        }
        Params::Other(p) => assert_eq!(p, Path::new(s)),
    }
    if let Some(m) = Mode::parse_strict(s) {
        assert!(
            ["r", "ro", "w", "rw", "w!", "rw!"].contains(&s),
            "mode {s:?} accepted"
        );
        assert_eq!(Mode::canonicalise(s), m);
    }
    if let Some(d) = DevNum::parse_hex(s) {
        let printed = format!("{:x}:{:x}", d.major, d.minor);
        assert_eq!(DevNum::parse_hex(&printed), Some(d));
        let (ma, mi) = s.trim().split_once(':').unwrap();
        for part in [ma, mi] {
            assert!(
                part.bytes().all(|c| c.is_ascii_hexdigit()),
                "physical-device {s:?} accepted"
            );
        }
    }
    if let Some(d) = DevNum::parse_decimal(s) {
        assert_eq!(DevNum::parse_decimal(&d.decimal()), Some(d));
        let (ma, mi) = s.trim().split_once(':').unwrap();
        for part in [ma, mi] {
            assert!(
                part.bytes().all(|c| c.is_ascii_digit()),
                "major:minor {s:?} accepted"
            );
        }
    }
});
