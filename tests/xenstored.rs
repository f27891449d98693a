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

/// What the embedded xenstored claims about a crash (xenstored/src/lib.rs, "Durability"): the
/// store is in memory only. SIGKILLed under load it loses everything, acknowledged or not; the
/// clients in the middle of a request get an error, none hangs; and it restarts on the same
/// socket path, empty.
#[test]
fn sigkill_under_load_loses_the_in_memory_store_and_restarts_empty() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use xenplug_xenstore::client::XsClient;
    use xenplug_xenstore::XsOps;

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("socket");
    let start = || {
        Daemon(
            Command::new(BIN)
                .args(["xenstored", "--socket"])
                .arg(&sock)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut daemon = start();
    wait_for(&sock);
    // Four writers, two of them in transactions, until the daemon goes away.
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (sock, acked) = (sock.clone(), acked.clone());
            std::thread::spawn(move || -> String {
                let xs = XsClient::open_socket(&sock).expect("connect");
                for i in 0u64.. {
                    let path = format!("/load/{t}/{i}");
                    let r = if t % 2 == 0 {
                        xs.write(&path, "v")
                    } else {
                        xenplug_xenstore::transact(&xs, 1, |tx| {
                            tx.write(&path, "v")?;
                            tx.write(&format!("{path}-b"), "w")
                        })
                    };
                    match r {
                        Ok(()) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => return e.to_string(),
                    }
                }
                unreachable!()
            })
        })
        .collect();
    let t0 = Instant::now();
    while acked.load(Ordering::SeqCst) < 500 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no load");
        std::thread::sleep(Duration::from_millis(2));
    }
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    // Every writer gets an error promptly (the connection is gone), none hangs.
    let t1 = Instant::now();
    for w in writers {
        let err = w.join().unwrap();
        assert!(!err.is_empty());
    }
    assert!(t1.elapsed() < Duration::from_secs(10));
    let acknowledged = acked.load(Ordering::SeqCst);
    assert!(acknowledged >= 500);
    // A SIGKILL leaves the socket file; a new daemon replaces it and starts empty: nothing of
    // the acknowledged writes survived, as documented.
    assert!(sock.exists());
    let _daemon = start();
    let t2 = Instant::now();
    let xs = loop {
        if let Ok(c) = XsClient::open_socket(&sock) {
            if c.read("/").is_ok() {
                break c;
            }
        }
        assert!(t2.elapsed() < Duration::from_secs(10), "no restart");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(xs.read("/load/0/0").unwrap(), None);
    assert!(xs.directory("/load").is_err(), "/load survived the crash");
}
