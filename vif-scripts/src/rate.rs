//! The backend `rate` node, enforced here for taps only.
//!
//! libxl writes `rate` as `<bytes>,<usecs>`: `bytes` of credit every `usecs` microseconds.
//! netback enforces it on a vif's transmit ring (what the guest sends). QEMU's emulated NIC
//! (the `vif<d>.<n>-emu` tap) has no netback, so the scripts enforce it with tc: what the guest
//! transmits arrives in dom0 as the tap's receive traffic, i.e. at the tap's **ingress**, where an
//! `ingress` qdisc with one matchall filter polices it (see [`xenplug_netlink::tc`]):
//!
//! * rate: [`Rate::bytes_per_second`], `bytes × 10⁶ / usecs`;
//! * bucket: [`Rate::burst`], `max(bytes, 128 KiB)` — the floor netback itself applies to its
//!   credit ("allow a burst big enough to transmit a jumbo packet of up to 128 kB", xen-netback's
//!   `tx_add_credit`), and for tc it is also a necessity: a packet larger than the bucket can
//!   never conform, and a tap with QEMU's vnet header offloads hands the kernel 64 KiB GSO
//!   frames, so a smaller bucket would drop them all;
//! * excess: dropped (netback delays instead: it stops reading the ring until credit returns;
//!   a tap offers no such back-pressure point, so a policer drops and TCP backs off).

/// Smallest bucket, in bytes: netback's own floor (128 KiB).
pub const MIN_BURST: u64 = 128 * 1024;

/// A `rate` node: `bytes` of credit every `usecs` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Credit per interval.
    pub bytes: u64,
    /// Interval.
    pub usecs: u32,
}

impl Rate {
    /// Parse `bytes,usecs` as libxl writes it.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("invalid rate '{s}' (expected <bytes>,<usecs>)");
        let (b, u) = s.trim().split_once(',').ok_or_else(bad)?;
        // Digits only: `parse` also takes a leading `+`.
        let digits = |f: &str| !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit());
        if !digits(b.trim()) || !digits(u.trim()) {
            return Err(bad());
        }
        let bytes: u64 = b.trim().parse().map_err(|_| bad())?;
        let usecs: u32 = u.trim().parse().map_err(|_| bad())?;
        if bytes == 0 || usecs == 0 {
            return Err(bad());
        }
        Ok(Rate { bytes, usecs })
    }

    /// The rate in bytes per second (saturating; at least 1, as a policer of 0 would pass
    /// everything).
    pub fn bytes_per_second(self) -> u64 {
        (u128::from(self.bytes) * 1_000_000 / u128::from(self.usecs)).clamp(1, u128::from(u64::MAX))
            as u64
    }

    /// The policer's bucket in bytes: the credit per interval, at least [`MIN_BURST`], at most
    /// `u32::MAX` (the kernel holds it as 32-bit 64 ns ticks, so at rates below ~30 kB/s a
    /// bucket of more than 274 s worth of traffic is cut to 274 s).
    pub fn burst(self) -> u32 {
        self.bytes.max(MIN_BURST).min(u64::from(u32::MAX)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_and_figures() {
        let r = Rate::parse("125000,50000").unwrap();
        assert_eq!(r.bytes_per_second(), 2_500_000);
        assert_eq!(r.burst(), 131_072, "netback's floor");
        assert_eq!(
            Rate::parse(" 1000000 , 1000000 ").unwrap().burst(),
            1_000_000
        );
        assert_eq!(Rate::parse("1,2000000").unwrap().bytes_per_second(), 1);
        assert_eq!(
            Rate::parse("18446744073709551615,1")
                .unwrap()
                .bytes_per_second(),
            u64::MAX
        );
        assert_eq!(
            Rate::parse("18446744073709551615,1").unwrap().burst(),
            u32::MAX
        );
        assert!(Rate::parse("12").is_err());
        assert!(Rate::parse("a,b").is_err());
        assert!(Rate::parse("0,5").is_err());
        assert!(Rate::parse("1,-5").is_err());
    }

    // Found by fuzzing (fuzz target vif_rate): `391,+1` was accepted.
    #[test]
    fn signs_are_refused() {
        assert!(Rate::parse("391,+1").is_err());
        assert!(Rate::parse("+391,1").is_err());
        assert_eq!(
            Rate::parse(" 391 , 1 ").map(|r| (r.bytes, r.usecs)),
            Ok((391, 1))
        );
    }
}
