//! Test helpers for every crate's tests: a real daemon on a throwaway socket.
//!
//! * [`spawn_daemon`] / [`spawn_daemon_with_domains`] start a daemon on its own thread, with
//!   its sockets in a fresh temporary directory; the returned [`TestDaemon`] stops it and removes
//!   the sockets when dropped (also when the test panics).
//! * [`shared_daemon_env`] starts one daemon per test binary and sets `XENSTORED_PATH` to it
//!   once, for code that finds xenstored through the process environment
//!   ([`XsClient::open`], xenstore-rs, libxenstore tools run as children). Its directory is
//!   removed when the test process exits.
//!
//! ```
//! use xenplug_xenstore::XsOps;
//! let d = xenplug_xenstored::testing::spawn_daemon();
//! let xs = d.client();
//! xs.write("/a", "1").unwrap();
//! assert_eq!(d.store().read("/a").unwrap().as_deref(), Some("1"));
//! let out = d.command("xenstore-read").arg("/a").output();
//! # drop(out);
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use xenplug_xenstore::client::{XsClient, XENSTORED_PATH_ENV};

use crate::daemon::{self, Options, Shutdown};
use crate::engine::Engine;
use crate::MemStore;

/// A daemon serving a temporary socket; stopped and cleaned up on drop.
#[derive(Debug)]
pub struct TestDaemon {
    dir: Option<tempfile::TempDir>,
    opts: Options,
    engine: Arc<Engine>,
    shutdown: Shutdown,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

/// Start a daemon with only the dom0 socket.
pub fn spawn_daemon() -> TestDaemon {
    spawn_daemon_with_domains(&[])
}

/// Start a daemon with the dom0 socket and one socket per domain in `domids`.
///
/// Panics when the sockets cannot be created (a test cannot go on without them).
pub fn spawn_daemon_with_domains(domids: &[u32]) -> TestDaemon {
    let dir = tempfile::Builder::new()
        .prefix("xenplug-xsd-")
        .tempdir()
        .expect("temporary directory for the test xenstored");
    let mut opts = Options::new(dir.path().join("socket"));
    opts.domain_sockets = domids
        .iter()
        .map(|d| (*d, dir.path().join(format!("domain-{d}.socket"))))
        .collect();
    let engine = Engine::new();
    let listeners = daemon::bind_all(&opts).expect("bind the test xenstored sockets");
    let shutdown = Shutdown::new();
    let thread = {
        let (opts, engine, shutdown) = (opts.clone(), engine.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("test-xenstored".into())
            .spawn(move || daemon::serve_listeners(&opts, engine, listeners, shutdown))
            .expect("spawn the test xenstored thread")
    };
    TestDaemon {
        dir: Some(dir),
        opts,
        engine,
        shutdown,
        thread: Some(thread),
    }
}

impl TestDaemon {
    /// The dom0 socket.
    pub fn socket(&self) -> &Path {
        &self.opts.socket
    }

    /// The socket acting as `domid`, if the daemon was started with one.
    pub fn domain_socket(&self, domid: u32) -> Option<&Path> {
        self.opts
            .domain_sockets
            .iter()
            .find(|(d, _)| *d == domid)
            .map(|(_, p)| p.as_path())
    }

    /// The daemon's engine (inspect it, or attach a [`MemStore`] to it).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// A direct (socket-less) dom0 connection to the daemon's engine.
    pub fn store(&self) -> MemStore {
        MemStore::on_engine(&self.engine, 0)
    }

    /// A new [`XsClient`] on the dom0 socket.
    pub fn client(&self) -> XsClient {
        XsClient::open_socket(self.socket()).expect("connect to the test xenstored")
    }

    /// A new [`XsClient`] acting as `domid` (needs a domain socket for it).
    pub fn client_as(&self, domid: u32) -> XsClient {
        let path = self
            .domain_socket(domid)
            .unwrap_or_else(|| panic!("the test xenstored has no socket for domain {domid}"));
        XsClient::open_socket(path).expect("connect to the test xenstored")
    }

    /// A command for `program` with `XENSTORED_PATH` pointing at the dom0 socket (for
    /// xenstore-utils and for programs under test that use [`XsClient::open`]).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env(XENSTORED_PATH_ENV, self.socket());
        c
    }

    /// Stop the daemon now (also done on drop).
    pub fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.opts.socket);
        for (_, p) in &self.opts.domain_sockets {
            let _ = std::fs::remove_file(p);
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

static SHARED: OnceLock<TestDaemon> = OnceLock::new();
static SHARED_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_shared_dir() {
    if let Some(dir) = SHARED_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The test binary's shared daemon: started on first call, with `XENSTORED_PATH` set to its
/// socket (once, before any other thread could read it through this function). Lives until the
/// process exits; its directory is removed then.
pub fn shared_daemon_env() -> &'static TestDaemon {
    SHARED.get_or_init(|| {
        let d = spawn_daemon();
        std::env::set_var(XENSTORED_PATH_ENV, d.socket());
        if let Some(dir) = d.dir.as_ref() {
            if SHARED_DIR.set(dir.path().to_path_buf()).is_ok() {
                // SAFETY: `remove_shared_dir` is a plain `extern "C" fn()` that only reads a
                // `OnceLock` and removes files; registering it has no other preconditions.
                unsafe {
                    libc::atexit(remove_shared_dir);
                }
            }
        }
        d
    })
}
