//! Crafted Ethernet frames for the antispoofing tests, and raw `AF_PACKET` sockets to send and
//! capture them.
//!
//! Every frame a test sends ends with an 8-byte trailer, `XPLG` and a big-endian `u32` id, after
//! the packet itself (an Ethernet trailer: IP's length fields exclude it, nothing on the path
//! strips it), so the receiver can tell which crafted frame arrived.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
pub const ETH_IP: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IP6: u16 = 0x86dd;
pub const ETH_VLAN: u16 = 0x8100;
const MAGIC: &[u8; 4] = b"XPLG";

/// `aa:bb:…` of a MAC.
pub fn mac_str(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Mac {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}

/// The EUI-64 link-local address of `mac`.
pub fn eui64_ll(mac: &Mac) -> Ipv6Addr {
    let mut b = [0u8; 16];
    b[0] = 0xfe;
    b[1] = 0x80;
    b[8] = mac[0] ^ 0x02;
    b[9] = mac[1];
    b[10] = mac[2];
    b[11] = 0xff;
    b[12] = 0xfe;
    b[13] = mac[3];
    b[14] = mac[4];
    b[15] = mac[5];
    Ipv6Addr::from(b)
}

/// An Ethernet frame: `dst`, `src`, `ethertype`, `payload`.
pub fn eth(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An 802.1Q-tagged frame (VLAN `vid`) carrying `inner` with `payload`.
pub fn eth_vlan(dst: Mac, src: Mac, vid: u16, inner: u16, payload: &[u8]) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(4 + payload.len());
    tagged.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    tagged.extend_from_slice(&inner.to_be_bytes());
    tagged.extend_from_slice(payload);
    eth(dst, src, ETH_VLAN, &tagged)
}

/// An ARP packet (Ethernet/IPv4): `op` 1 request, 2 reply.
pub fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa.octets());
    p
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (TTL 64, header checksum set).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum_fold(csum_add(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A UDP datagram in IPv4 (checksum 0: none, which IPv4 allows).
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    ipv4(src, dst, 17, &u)
}

/// An ICMP message in IPv4.
pub fn icmp4(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(rest);
    let c = csum_fold(csum_add(0, &m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, &m)
}

/// An IPv6 packet: `nexthdr`, `hop_limit`, `payload` (extension headers included).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, nexthdr: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(nexthdr);
    h.push(hop_limit);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// The transport checksum over IPv6's pseudo-header.
fn csum6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut s = csum_add(0, &src.octets());
    s = csum_add(s, &dst.octets());
    s = csum_add(s, &(l4.len() as u32).to_be_bytes());
    s = csum_add(s, &[0, 0, 0, proto]);
    csum_fold(csum_add(s, l4))
}

/// An ICMPv6 message (`ty`, `code`, `body` after the checksum) with its checksum, in IPv6
/// (hop limit 255, as neighbour discovery requires).
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(body);
    let c = csum6(src, dst, 58, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv6(src, dst, 58, 255, &m)
}

/// A UDP datagram in IPv6 (checksum set).
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = csum6(src, dst, 17, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ipv6(src, dst, 17, 64, &u)
}

/// A link-layer address option of neighbour discovery (`ty` 1 source, 2 target).
fn lla(ty: u8, mac: Mac) -> Vec<u8> {
    let mut o = vec![ty, 1];
    o.extend_from_slice(&mac);
    o
}

/// Neighbour solicitation for `target`, with a source link-layer address option when `slla`.
pub fn ns(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, slla: Option<Mac>) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.extend_from_slice(&target.octets());
    if let Some(m) = slla {
        b.extend(lla(1, m));
    }
    icmp6(src, dst, 135, 0, &b)
}

/// Duplicate address detection's solicitation (source `::`, a nonce option as Linux sends).
pub fn dad_ns(target: Ipv6Addr) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.extend_from_slice(&target.octets());
    b.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
    let o = target.octets();
    let snm = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    icmp6(Ipv6Addr::UNSPECIFIED, snm, 135, 0, &b)
}

/// Neighbour advertisement for `target` (override flag set), with a target link-layer address
/// option when `tlla`.
pub fn na(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, tlla: Option<Mac>) -> Vec<u8> {
    let mut b = vec![0x20, 0, 0, 0];
    b.extend_from_slice(&target.octets());
    if let Some(m) = tlla {
        b.extend(lla(2, m));
    }
    icmp6(src, dst, 136, 0, &b)
}

/// Router solicitation with a source link-layer address option.
pub fn rs(src: Ipv6Addr, slla: Mac) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.extend(lla(1, slla));
    icmp6(src, "ff02::2".parse().unwrap(), 133, 0, &b)
}

/// Router advertisement (lifetime 1800 s) with a source link-layer address option and, when
/// given, an autonomous on-link prefix option for `prefix`/64.
pub fn ra(src: Ipv6Addr, slla: Mac, prefix: Option<Ipv6Addr>) -> Vec<u8> {
    let mut b = vec![64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    b.extend(lla(1, slla));
    if let Some(p) = prefix {
        b.extend_from_slice(&[3, 4, 64, 0xc0]);
        b.extend_from_slice(&86400u32.to_be_bytes());
        b.extend_from_slice(&14400u32.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(&p.octets());
    }
    icmp6(src, "ff02::1".parse().unwrap(), 134, 0, &b)
}

/// ICMPv6 redirect: `target` is a better first hop for `dest`.
pub fn redirect6(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, dest: Ipv6Addr) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.extend_from_slice(&target.octets());
    b.extend_from_slice(&dest.octets());
    icmp6(src, dst, 137, 0, &b)
}

/// MLD listener query (general).
pub fn mld_query(src: Ipv6Addr) -> Vec<u8> {
    let b = vec![0u8; 20];
    icmp6(src, "ff02::1".parse().unwrap(), 130, 0, &b)
}

/// MLDv2 report (one record: exclude-mode for `group`) behind a hop-by-hop header with the
/// router alert option, as Linux sends it.
pub fn mld2_report(src: Ipv6Addr, group: Ipv6Addr) -> Vec<u8> {
    let dst: Ipv6Addr = "ff02::16".parse().unwrap();
    let mut m = vec![143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0];
    m.extend_from_slice(&group.octets());
    let c = csum6(src, dst, 58, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![58, 0, 5, 2, 0, 0, 1, 0];
    p.extend_from_slice(&m);
    ipv6(src, dst, 0, 1, &p)
}

/// `frame` with the id trailer (padded to Ethernet's 60-byte minimum).
pub fn tagged(mut frame: Vec<u8>, id: u32) -> Vec<u8> {
    while frame.len() < 52 {
        frame.push(0);
    }
    frame.extend_from_slice(MAGIC);
    frame.extend_from_slice(&id.to_be_bytes());
    frame
}

/// The id of a frame that carries the trailer.
pub fn id_of(frame: &[u8]) -> Option<u32> {
    let n = frame.len();
    if n < 8 || &frame[n - 8..n - 4] != MAGIC {
        return None;
    }
    Some(u32::from_be_bytes(frame[n - 4..].try_into().ok()?))
}

/// A raw `AF_PACKET` socket bound to the interface `ifname` of the calling thread's network
/// namespace, receiving every protocol.
pub fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let index = nix::net::if_::if_nametoindex(ifname).expect("interface index");
    // SAFETY: sockaddr_ll is plain old data; zeroed is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = index as i32;
    // SAFETY: `sa` is a valid sockaddr_ll and its size is passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    fd
}

/// Send one whole frame on a socket from [`packet_socket`].
pub fn send_frame(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        n,
        frame.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
}

/// Receive frames on `fd` until `stop` (an id) arrives or `timeout` passes; returns the ids seen
/// (`stop` included when it arrived), in arrival order.
pub fn receive_until(fd: &OwnedFd, stop: u32, timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return seen;
        }
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros().max(1) as libc::suseconds_t,
        };
        // SAFETY: a timeval option of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if let Some(id) = id_of(&buf[..n as usize]) {
            seen.push(id);
            if id == stop {
                return seen;
            }
        }
    }
}

/// Pin the calling thread to one CPU, so that frames it sends are processed in order (one
/// backlog queue): once a later frame has arrived, every earlier one has been delivered or
/// dropped.
pub fn pin_to_first_cpu() {
    let mut set = nix::sched::CpuSet::new();
    let cpu = (0..nix::sched::CpuSet::count())
        .find(|c| {
            nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
                .map(|s| s.is_set(*c).unwrap_or(false))
                .unwrap_or(false)
        })
        .unwrap_or(0);
    set.set(cpu).expect("cpu");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("affinity");
}
