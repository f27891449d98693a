//! Ingress policing with tc, over rtnetlink: an `ingress` qdisc (handle `ffff:`) on a link, one
//! `matchall` filter (all protocols) whose only action is `police`.
//!
//! What the kernel receives (`tc qdisc add dev D ingress` +
//! `tc filter add dev D parent ffff: protocol all prio 1 handle 1 matchall action police …` in
//! iproute2 terms):
//!
//! * `RTM_NEWQDISC` {ifindex, handle `ffff:0`, parent `ffff:fff1` (TC_H_INGRESS)},
//!   `TCA_KIND "ingress"`; `NLM_F_CREATE | NLM_F_EXCL`.
//! * `RTM_NEWTFILTER` {ifindex, handle `0:1`, parent `ffff:0`, info `prio 1 << 16 |
//!   htons(ETH_P_ALL)`}, `TCA_KIND "matchall"`, `TCA_OPTIONS` { `TCA_MATCHALL_ACT` { action 1 {
//!   `TCA_ACT_KIND "police"`, `TCA_ACT_OPTIONS` {
//!   * `TCA_POLICE_TBF`: `struct tc_police` — exceed action `TC_ACT_SHOT`, `burst` in psched
//!     ticks (64 ns) = the time the bucket takes to fill at the rate, `mtu` = `u32::MAX` (no size
//!     check: the bucket alone decides), `rate` = `struct tc_ratespec` {cell_log 3, linklayer
//!     ethernet, cell_align -1, rate = bytes/s capped at `u32::MAX`}, no peak rate;
//!   * `TCA_POLICE_RATE`: the 256-entry rate table. The kernel refuses a byte rate without one
//!     (`qdisc_get_rtab` wants exactly 1024 bytes and a cell_log in 1..31; Debian's 6.1 answers
//!     `ENOMEM`), although it computes with the rate itself, not with the table. Sending only
//!     `TCA_POLICE_RATE64` with a zero `tc_ratespec.rate` is accepted but installs a policer
//!     *without* a rate (it reads back as rate 0 and passes everything): measured on 6.1;
//!   * `TCA_POLICE_RATE64`: only for rates above `u32::MAX` bytes/s (the kernel takes the larger
//!     of this and `tc_ratespec.rate`, as iproute2 sends it);
//!   * `TCA_POLICE_RESULT`: conform action `TC_ACT_OK` (pass)
//!
//!   } } } }; `NLM_F_CREATE | NLM_F_EXCL`.
//!
//! Removal is `RTM_DELQDISC` of the ingress qdisc (the kernel drops its filters and actions with
//! it). A link without one answers `ENOENT` ("Cannot find specified qdisc on specified device")
//! when it never had an ingress qdisc, and `EINVAL` ("Invalid handle") once it had one that was
//! deleted (its ingress slot then holds the handle-less noop qdisc), or when another kind
//! (`clsact`) sits there ("Invalid qdisc name"): all three mean "no ingress qdisc here".
//! Measured on Linux 6.18 and Debian 12's 6.1.

use netlink_packet_core::{DefaultNla, Nla, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionOption, TcAttribute, TcFilterMatchAllOption, TcHandle,
    TcMessage, TcOption, TcStats2,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::{Client, Error};

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Our filter's priority and handle.
const FILTER_PRIO: u16 = 1;
const FILTER_HANDLE: TcHandle = TcHandle { major: 0, minor: 1 };
/// `ETH_P_ALL`: every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// `TCA_POLICE_*` attribute types (linux/pkt_cls.h).
const TCA_POLICE_TBF: u16 = 1;
const TCA_POLICE_RATE: u16 = 2;
const TCA_POLICE_RESULT: u16 = 5;
const TCA_POLICE_RATE64: u16 = 8;

/// `TC_ACT_OK` (pass) and `TC_ACT_SHOT` (drop).
pub const TC_ACT_OK: i32 = 0;
/// Drop.
pub const TC_ACT_SHOT: i32 = 2;

/// `TC_LINKLAYER_ETHERNET`: no ATM cell arithmetic.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// Size of `struct tc_police`.
const TC_POLICE_LEN: usize = 56;
/// Cell size exponent of the rate table (8-byte cells up to 2 KiB, as iproute2 picks for its
/// default 2047-byte MTU).
const CELL_LOG: u8 = 3;
/// psched ticks per second: a tick is 64 ns (`PSCHED_SHIFT` 6; `/proc/net/psched` reports it as
/// `000003e8 00000040`, 64 ns per tick, 15.625 ticks per µs).
const TICKS_PER_SEC: u128 = 1_000_000_000 / 64;

/// A police action on a link's ingress as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressPolice {
    /// Rate, bytes per second.
    pub rate: u64,
    /// Bucket size in bytes, converted back from the kernel's ticks (so within a tick's worth
    /// of bytes of what was asked for).
    pub burst: u64,
    /// Burst as the kernel holds it, psched ticks (64 ns).
    pub burst_ticks: u32,
    /// Largest packet the policer lets through (`u32::MAX`: no limit).
    pub mtu: u32,
    /// Action for packets over the rate (`TC_ACT_SHOT` = drop).
    pub exceed: i32,
    /// Action for packets within the rate (`TC_ACT_OK` = pass).
    pub conform: i32,
    /// Packets and bytes the action saw (passed and dropped).
    pub packets: u64,
    /// See `packets`.
    pub bytes: u64,
    /// Packets dropped for exceeding the rate.
    pub drops: u32,
    /// Packets over the rate.
    pub overlimits: u32,
}

/// psched ticks to send `bytes` at `rate` bytes/s, rounded up, saturating at `u32::MAX`.
pub fn ticks_for(bytes: u64, rate: u64) -> u32 {
    let rate = u128::from(rate.max(1));
    let t = (u128::from(bytes) * TICKS_PER_SEC).div_ceil(rate);
    t.min(u128::from(u32::MAX)) as u32
}

/// Bytes sent in `ticks` at `rate` bytes/s (rounded down).
pub fn bytes_for(ticks: u32, rate: u64) -> u64 {
    (u128::from(ticks) * u128::from(rate) / TICKS_PER_SEC).min(u128::from(u64::MAX)) as u64
}

/// `struct tc_police` for a byte rate with bucket `burst_ticks`.
fn tc_police(rate: u64, burst_ticks: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(TC_POLICE_LEN);
    b.extend_from_slice(&0u32.to_ne_bytes()); // index: the kernel picks one
    b.extend_from_slice(&TC_ACT_SHOT.to_ne_bytes()); // action (exceed)
    b.extend_from_slice(&0u32.to_ne_bytes()); // limit
    b.extend_from_slice(&burst_ticks.to_ne_bytes()); // burst
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // mtu: no size limit
                                                  // rate: struct tc_ratespec
    b.push(CELL_LOG);
    b.push(TC_LINKLAYER_ETHERNET);
    b.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    b.extend_from_slice(&(-1i16).to_ne_bytes()); // cell_align
    b.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    b.extend_from_slice(&(rate.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    b.extend_from_slice(&[0u8; 12]); // peakrate: none
    b.extend_from_slice(&0i32.to_ne_bytes()); // refcnt
    b.extend_from_slice(&0i32.to_ne_bytes()); // bindcnt
    b.extend_from_slice(&0u32.to_ne_bytes()); // capab
    debug_assert_eq!(b.len(), TC_POLICE_LEN);
    b
}

/// The rate table: entry `i` is the ticks to send `(i + 1) << CELL_LOG` bytes at `rate`.
fn rate_table(rate: u64) -> Vec<u8> {
    (1..=256u64)
        .flat_map(|i| ticks_for(i << CELL_LOG, rate).to_ne_bytes())
        .collect()
}

/// The police action's attributes (`TCA_ACT_OPTIONS` content).
pub fn police_options(rate: u64, burst_bytes: u32) -> Vec<TcActionOption> {
    let rate = rate.max(1);
    let nla = |kind, value| TcActionOption::Other(DefaultNla::new(kind, value));
    let mut opts = vec![
        nla(
            TCA_POLICE_TBF,
            tc_police(rate, ticks_for(burst_bytes.into(), rate)),
        ),
        nla(TCA_POLICE_RATE, rate_table(rate)),
    ];
    if rate > u64::from(u32::MAX) {
        opts.push(nla(TCA_POLICE_RATE64, rate.to_ne_bytes().to_vec()));
    }
    opts.push(nla(TCA_POLICE_RESULT, TC_ACT_OK.to_ne_bytes().to_vec()));
    opts
}

/// `RTM_NEWQDISC`/`RTM_DELQDISC` body for the ingress qdisc of link `index`.
pub fn ingress_qdisc_message(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// `RTM_NEWTFILTER` body: matchall on every protocol with one police action.
pub fn police_filter_message(index: u32, rate: u64, burst_bytes: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = FILTER_HANDLE;
    m.header.parent = INGRESS_HANDLE;
    // TC_H_MAKE(prio << 16, protocol); the protocol is in network byte order.
    m.header.info = (u32::from(FILTER_PRIO) << 16) | u32::from(ETH_P_ALL.to_be());
    let mut action = TcAction::default(); // order 1
    action.attributes = vec![
        TcActionAttribute::Kind("police".into()),
        TcActionAttribute::Options(police_options(rate, burst_bytes)),
    ];
    m.attributes.extend([
        TcAttribute::Kind("matchall".into()),
        TcAttribute::Options(vec![TcOption::MatchAll(TcFilterMatchAllOption::Action(
            vec![action],
        ))]),
    ]);
    m
}

fn value_of(nla: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// The police action of one filter message, if it has one.
pub fn police_of(m: &TcMessage) -> Option<IngressPolice> {
    let actions = m.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::MatchAll(TcFilterMatchAllOption::Action(acts)) => Some(acts),
            _ => None,
        }),
        _ => None,
    })?;
    let action = actions.iter().find(|a| {
        a.attributes
            .iter()
            .any(|x| matches!(x, TcActionAttribute::Kind(k) if k == "police"))
    })?;
    let mut tbf = None;
    let mut rate64 = None;
    let mut conform = TC_ACT_OK;
    let mut p = IngressPolice {
        rate: 0,
        burst: 0,
        burst_ticks: 0,
        mtu: 0,
        exceed: 0,
        conform,
        packets: 0,
        bytes: 0,
        drops: 0,
        overlimits: 0,
    };
    for a in &action.attributes {
        match a {
            TcActionAttribute::Options(opts) => {
                for o in opts {
                    let TcActionOption::Other(nla) = o else {
                        continue;
                    };
                    let v = value_of(nla);
                    match nla.kind() {
                        TCA_POLICE_TBF if v.len() >= TC_POLICE_LEN => tbf = Some(v),
                        TCA_POLICE_RATE64 if v.len() == 8 => {
                            rate64 = Some(u64::from_ne_bytes(v[..8].try_into().ok()?))
                        }
                        TCA_POLICE_RESULT if v.len() == 4 => conform = u32_at(&v, 0)? as i32,
                        _ => {}
                    }
                }
            }
            TcActionAttribute::Stats(stats) => {
                for s in stats {
                    match s {
                        TcStats2::Basic(b) => {
                            p.bytes = b.bytes;
                            p.packets = u64::from(b.packets);
                        }
                        TcStats2::Queue(q) => {
                            p.drops = q.drops;
                            p.overlimits = q.overlimits;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let tbf = tbf?;
    p.exceed = u32_at(&tbf, 4)? as i32;
    p.burst_ticks = u32_at(&tbf, 12)?;
    p.mtu = u32_at(&tbf, 16)?;
    let rate32 = u64::from(u32_at(&tbf, 28)?);
    p.rate = rate64.map_or(rate32, |r| r.max(rate32));
    p.burst = bytes_for(p.burst_ticks, p.rate);
    p.conform = conform;
    Some(p)
}

impl Client {
    /// Police everything arriving on link `index` (its ingress) to `rate` bytes per second
    /// with a bucket of `burst_bytes`; packets over the rate are dropped. Replaces whatever
    /// ingress qdisc (and filters) the link had. A rate of 0 counts as 1 byte/s.
    ///
    /// On a kernel without `sch_ingress`, `cls_matchall` or `act_police` the kernel answers
    /// `ENOENT` (modules are loaded on demand where the kernel has them). A failed filter leaves
    /// no ingress qdisc behind.
    pub fn set_ingress_police(
        &mut self,
        index: u32,
        rate: u64,
        burst_bytes: u32,
    ) -> Result<(), Error> {
        self.clear_ingress(index)?;
        self.ack(
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc_message(index)),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        let filter = police_filter_message(index, rate, burst_bytes);
        if let Err(e) = self.ack(
            RouteNetlinkMessage::NewTrafficFilter(filter),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            let _ = self.clear_ingress(index);
            return Err(e);
        }
        Ok(())
    }

    /// Delete link `index`'s ingress qdisc with its filters. `Ok(false)` when it has none (the
    /// kernel's `ENOENT`/`EINVAL` for a missing ingress qdisc, see the module docs); a missing
    /// link is `Err` with `ENODEV`.
    pub fn clear_ingress(&mut self, index: u32) -> Result<bool, Error> {
        match self.ack(
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc_message(index)),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(Error::Kernel(libc::ENOENT | libc::EINVAL)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The police action on link `index`'s ingress (the first matchall filter with one), with
    /// its counters; `None` without one.
    pub fn ingress_police(&mut self, index: u32) -> Result<Option<IngressPolice>, Error> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = INGRESS_HANDLE;
        let msgs = self.request(RouteNetlinkMessage::GetTrafficFilter(m), NLM_F_DUMP)?;
        Ok(msgs.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) if f.header.index == index as i32 => {
                police_of(f)
            }
            _ => None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, NLA_F_NESTED};

    #[test]
    fn ticks_round_up_and_saturate() {
        // 125000 B/s: 1000 bytes take 8 ms = 125000 ticks of 64 ns.
        assert_eq!(ticks_for(1000, 125_000), 125_000);
        assert_eq!(ticks_for(1, 3), 5_208_334); // 1/3 s = 5208333.33 ticks, up
        assert_eq!(ticks_for(131_072, 1), u32::MAX);
        assert_eq!(bytes_for(125_000, 125_000), 1000);
        assert_eq!(ticks_for(10, 0), ticks_for(10, 1), "rate 0 is 1 B/s");
    }

    #[test]
    fn tc_police_layout() {
        let b = tc_police(2_500_000, 77);
        assert_eq!(b.len(), TC_POLICE_LEN);
        assert_eq!(u32_at(&b, 4), Some(TC_ACT_SHOT as u32));
        assert_eq!(u32_at(&b, 12), Some(77));
        assert_eq!(u32_at(&b, 16), Some(u32::MAX));
        assert_eq!((b[20], b[21]), (CELL_LOG, TC_LINKLAYER_ETHERNET));
        assert_eq!(i16::from_ne_bytes([b[24], b[25]]), -1);
        assert_eq!(u32_at(&b, 28), Some(2_500_000));
        assert!(b[32..44].iter().all(|x| *x == 0), "no peak rate");
        // A rate above 32 bits is capped in the struct and sent as RATE64.
        let big = 1u64 << 33;
        assert_eq!(u32_at(&tc_police(big, 1), 28), Some(u32::MAX));
        let opts = police_options(big, 131_072);
        assert!(opts.iter().any(|o| o.kind() == TCA_POLICE_RATE64));
        assert!(!police_options(1000, 131_072)
            .iter()
            .any(|o| o.kind() == TCA_POLICE_RATE64));
    }

    #[test]
    fn rate_table_is_1024_bytes_of_cell_times() {
        let t = rate_table(1_000_000);
        assert_eq!(t.len(), 1024);
        // Entry 0: 8 bytes at 1 MB/s = 8 µs = 125 ticks; entry 255: 2048 bytes.
        assert_eq!(u32_at(&t, 0), Some(125));
        assert_eq!(u32_at(&t, 1020), Some(32_000));
    }

    #[test]
    fn filter_message_shape() {
        let m = police_filter_message(7, 125_000, 131_072);
        assert_eq!(m.header.index, 7);
        assert_eq!(m.header.parent, INGRESS_HANDLE);
        assert_eq!(u32::from(m.header.handle), 1);
        assert_eq!(m.header.info >> 16, 1, "prio");
        assert_eq!(
            u16::from_be(m.header.info as u16),
            ETH_P_ALL,
            "all protocols, network order"
        );
        // Encoded and parsed back as the kernel would report it.
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let parsed = <TcMessage as netlink_packet_core::Parseable<[u8]>>::parse(&buf).unwrap();
        let p = police_of(&parsed).expect("police action");
        assert_eq!(p.rate, 125_000);
        assert_eq!(p.burst_ticks, ticks_for(131_072, 125_000));
        assert!(p.burst >= 131_071 && p.burst <= 131_073, "{}", p.burst);
        assert_eq!(
            (p.exceed, p.conform, p.mtu),
            (TC_ACT_SHOT, TC_ACT_OK, u32::MAX)
        );
        // The action options are a nested attribute.
        let TcAttribute::Options(o) = &m.attributes[1] else {
            panic!()
        };
        let TcOption::MatchAll(TcFilterMatchAllOption::Action(acts)) = &o[0] else {
            panic!()
        };
        assert!(acts[0].attributes[1].kind() & NLA_F_NESTED != 0);
    }

    #[test]
    fn qdisc_message_shape() {
        let m = ingress_qdisc_message(3);
        assert_eq!(
            (
                u32::from(m.header.handle),
                u32::from(m.header.parent),
                m.header.index
            ),
            (0xffff_0000, 0xffff_fff1, 3)
        );
        assert_eq!(m.attributes, [TcAttribute::Kind("ingress".into())]);
    }
}
