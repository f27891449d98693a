//! QEMU's side of a socket channel, as the simulator stands in for it: bytes cross between the
//! dom0 socket and the guest's tty, guest output waits for a client, and clients come and go.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use xenplug_sim::kernel::ChannelRelay;

fn raw_tty(path: &std::path::Path) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut t = nix::sys::termios::tcgetattr(&f).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&f, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    f
}

fn read_exactly(r: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    r.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn bytes_cross_both_ways_and_wait_for_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("chan.sock");
    let relay = ChannelRelay::start(&sock).unwrap();
    let mut guest = raw_tty(relay.guest_tty());

    // Written before anyone connected (write_all returns once the bytes are in the pty): kept,
    // delivered to the first client.
    guest.write_all(b"early\n").unwrap();
    let mut c = UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_exactly(&mut c, 6), b"early\n");

    c.write_all(b"\xff{\"execute\":\"guest-ping\"}\n").unwrap();
    assert_eq!(
        read_exactly(&mut guest, 26),
        b"\xff{\"execute\":\"guest-ping\"}\n"
    );
    guest.write_all(b"{\"return\":{}}\n").unwrap();
    assert_eq!(read_exactly(&mut c, 14), b"{\"return\":{}}\n");

    // One client at a time; after it leaves, the next one is served.
    drop(c);
    let mut c2 = UnixStream::connect(&sock).unwrap();
    c2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c2.write_all(b"again").unwrap();
    assert_eq!(read_exactly(&mut guest, 5), b"again");

    drop(relay);
    assert!(!sock.exists(), "socket removed when the stand-in stops");
}
