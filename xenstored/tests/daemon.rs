//! Starting and stopping the daemon: `serve`, socket files, `Shutdown`.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use xenplug_xenstore::{XenStore, XsClient, XsOps};
use xenplug_xenstored::daemon::{bind, serve, Options, Shutdown};

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Triggers the shutdown and joins the daemon thread even when an assertion fails.
struct Stop(
    Shutdown,
    Option<std::thread::JoinHandle<std::io::Result<()>>>,
);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.trigger();
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn serve_runs_until_shutdown_and_removes_its_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::new(dir.path().join("sock"));
    opts.domain_sockets = vec![(4, dir.path().join("dom4"))];
    let shutdown = Shutdown::new();
    let thread = {
        let (opts, shutdown) = (opts.clone(), shutdown.clone());
        std::thread::spawn(move || serve(&opts, shutdown))
    };
    let mut stop = Stop(shutdown.clone(), Some(thread));
    wait_for(&opts.socket);
    wait_for(&opts.domain_sockets[0].1);
    for p in [&opts.socket, &opts.domain_sockets[0].1] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let xs = XsClient::open_socket(&opts.socket).unwrap();
    xs.write("/served", "yes").unwrap();
    let guest = XsClient::open_socket(&opts.domain_sockets[0].1).unwrap();
    assert_eq!(guest.domain_path(4).unwrap(), "/local/domain/4");
    assert!(!shutdown.is_triggered());
    shutdown.trigger();
    let result = stop.1.take().unwrap().join().unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(!opts.socket.exists());
    assert!(!opts.domain_sockets[0].1.exists());
    assert!(xs.read("/served").is_err(), "connections closed");
}

#[test]
fn bind_replaces_only_stale_sockets() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file is never removed.
    let file = dir.path().join("file");
    std::fs::write(&file, "keep").unwrap();
    assert!(bind(&file).is_err());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    // A socket somebody listens on is in use.
    let live = dir.path().join("live");
    let _listener = bind(&live).unwrap();
    assert_eq!(
        bind(&live).unwrap_err().kind(),
        std::io::ErrorKind::AddrInUse
    );
    // A socket file left behind by a dead daemon is replaced.
    let stale = dir.path().join("stale");
    drop(bind(&stale).unwrap());
    assert!(stale.exists());
    let _again = bind(&stale).unwrap();
}

#[test]
fn a_second_daemon_on_the_same_socket_fails() {
    let d = xenplug_xenstored::testing::spawn_daemon();
    let opts = Options::new(d.socket());
    let err = serve(&opts, Shutdown::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    // The running daemon's socket is untouched.
    d.client().write("/still", "here").unwrap();
}
