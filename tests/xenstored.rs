//! `xenplug xenstored --socket PATH` as a process: Debian's xenstore-utils talk to it, a domain
//! socket acts as a guest, and SIGTERM stops it and removes its sockets.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_xenplug");

/// Kills the daemon if a test fails before stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn xs(socket: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("XENSTORED_PATH", socket)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn serves_xenstore_utils_and_stops_on_sigterm() {
    if !xenplug_testkit::require_program("xenstore-read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("socket");
    let guest = dir.path().join("guest5");
    let child = Command::new(BIN)
        .args(["xenstored", "--socket"])
        .arg(&sock)
        .arg("--domain-socket")
        .arg(format!("5={}", guest.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Daemon(child);
    wait_for(&sock);
    wait_for(&guest);

    // As libxl does: the domain's home is dom0's, readable by the domain; nodes created below
    // it inherit that.
    assert_eq!(xs(&sock, &["xenstore-write", "/local/domain/5", ""]).0, 0);
    assert_eq!(
        xs(&sock, &["xenstore-chmod", "/local/domain/5", "n0", "r5"]).0,
        0
    );
    assert_eq!(
        xs(&sock, &["xenstore-write", "/local/domain/5/name", "web"]).0,
        0
    );
    assert_eq!(
        xs(&sock, &["xenstore-read", "/local/domain/5/name"]),
        (0, "web\n".into())
    );
    // Through the domain socket the connection acts as domain 5: relative paths resolve to
    // /local/domain/5, and it may read (r5) but not write there.
    assert_eq!(xs(&guest, &["xenstore-read", "name"]), (0, "web\n".into()));
    let (code, out) = xs(&guest, &["xenstore-write", "name", "evil"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        xs(&sock, &["xenstore-read", "/local/domain/5/name"]),
        (0, "web\n".into())
    );

    // SIGTERM: clean exit, sockets removed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    assert!(!sock.exists());
    assert!(!guest.exists());
}

#[test]
fn refuses_a_socket_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("socket");
    let first = Daemon(
        Command::new(BIN)
            .args(["xenstored", "--socket"])
            .arg(&sock)
            .spawn()
            .unwrap(),
    );
    wait_for(&sock);
    let out = Command::new(BIN)
        .args(["xenstored", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    drop(first);
}
