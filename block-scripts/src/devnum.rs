//! Block device numbers (`major:minor`) in the forms the kernel, userspace and xenstore use.
//!
//! xenstore's `physical-device` is `%x:%x` (lower-case hex, unpadded: `7:0`, `fe:1`, `103:5`),
//! which is what blkback parses. `/proc/self/mountinfo` and sysfs `dev` files use decimal
//! `major:minor`. `stat(2)` returns glibc-encoded `dev_t`s and `LOOP_GET_STATUS64` returns the
//! kernel's `huge_encode_dev` form; both are decoded here so they can be compared.

use std::fmt;
use std::str::FromStr;

/// A device number split into major and minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DevNum {
    /// A device number from its parts.
    pub const fn new(major: u32, minor: u32) -> Self {
        DevNum { major, minor }
    }

    /// Decode a userspace `dev_t` (`st_dev`, `st_rdev`).
    pub fn from_dev_t(dev: libc::dev_t) -> Self {
        DevNum {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }

    /// Decode the kernel's `huge_encode_dev`/`new_encode_dev` form, as found in
    /// `loop_info64.lo_device` and `lo_rdevice`.
    pub fn from_kernel_encoded(dev: u64) -> Self {
        let dev = dev as u32 as u64;
        DevNum {
            major: ((dev & 0xfff00) >> 8) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32,
        }
    }

    /// Parse the decimal `major:minor` of sysfs `dev` files and mountinfo.
    pub fn parse_decimal(s: &str) -> Option<Self> {
        let (ma, mi) = s.trim().split_once(':')?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
        if !digits(ma) || !digits(mi) {
            return None;
        }
        Some(DevNum {
            major: ma.parse().ok()?,
            minor: mi.parse().ok()?,
        })
    }

    /// Parse the hex `%x:%x` form used by xenstore's `physical-device` (upper or lower case).
    pub fn parse_hex(s: &str) -> Option<Self> {
        let (ma, mi) = s.trim().split_once(':')?;
        // Digits only: from_str_radix also takes a leading sign.
        let hex = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_hexdigit());
        if !hex(ma) || !hex(mi) {
            return None;
        }
        Some(DevNum {
            major: u32::from_str_radix(ma, 16).ok()?,
            minor: u32::from_str_radix(mi, 16).ok()?,
        })
    }

    /// The decimal `major:minor` form (sysfs, `/sys/dev/block/<M:m>`).
    pub fn decimal(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// `%x:%x`, the `physical-device` form.
impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}:{:x}", self.major, self.minor)
    }
}

impl FromStr for DevNum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DevNum::parse_hex(s).ok_or_else(|| format!("not a %x:%x device number: {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_display_is_lower_case_unpadded() {
        assert_eq!(DevNum::new(7, 0).to_string(), "7:0");
        assert_eq!(DevNum::new(254, 1).to_string(), "fe:1");
        assert_eq!(DevNum::new(259, 5).to_string(), "103:5");
        assert_eq!(DevNum::new(8, 16).to_string(), "8:10");
    }

    #[test]
    fn parse_forms() {
        assert_eq!(DevNum::parse_hex("fe:1"), Some(DevNum::new(254, 1)));
        assert_eq!(DevNum::parse_hex("FE:0a"), Some(DevNum::new(254, 10)));
        assert_eq!(DevNum::parse_hex(":1"), None);
        assert_eq!(DevNum::parse_hex("zz:1"), None);
        assert_eq!(DevNum::parse_decimal("259:5\n"), Some(DevNum::new(259, 5)));
        assert_eq!(DevNum::parse_decimal("259"), None);
        assert_eq!("7:1f".parse::<DevNum>(), Ok(DevNum::new(7, 31)));
    }

    #[test]
    fn kernel_encoding_matches_userspace() {
        for (ma, mi) in [
            (7u32, 0u32),
            (8, 17),
            (254, 3),
            (259, 300),
            (7, 1048575),
            (4095, 1),
        ] {
            let user = libc::makedev(ma, mi);
            // new_encode_dev(MKDEV(ma, mi))
            let kernel = ((mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12)) as u64;
            assert_eq!(DevNum::from_kernel_encoded(kernel), DevNum::new(ma, mi));
            assert_eq!(DevNum::from_dev_t(user), DevNum::new(ma, mi));
        }
    }

    // Found by fuzzing (fuzz target block_params): a sign was accepted.
    #[test]
    fn signs_are_not_digits() {
        assert_eq!(DevNum::parse_hex("+155:510"), None);
        assert_eq!(DevNum::parse_hex("ca:-1"), None);
        assert_eq!(DevNum::parse_decimal("+7:0"), None);
        assert_eq!(DevNum::parse_decimal("7:+0"), None);
        assert_eq!(
            DevNum::parse_hex("CA:10").map(|d| d.decimal()),
            Some("202:16".into())
        );
    }
}
