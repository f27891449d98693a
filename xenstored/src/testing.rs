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

/// Guests and their devices laid out in xenstore as libxl 4.17 writes them, permissions
/// included, for tests that act as a driver domain (a daemon with a domain socket for it,
/// [`spawn_daemon_with_domains`]): `libxl_create.c` `libxl__domain_make` and `libxl_device.c`
/// `libxl__device_generic_add`.
///
/// * A domain's home `/local/domain/<d>` and `/vm/<uuid>` belong to dom0 and are readable by the
///   domain only (so a driver domain cannot read a guest's `vm`, `name` or `/vm/<uuid>/…`, and
///   only reads its own home); its `data` is its own.
/// * A device's frontend directory belongs to the guest and is readable by the backend domain;
///   the frontend nodes the guest must not change (`ro_fents`, e.g. a vif's `mtu`) belong to the
///   backend domain and are readable by the guest; the backend directory belongs to the backend
///   domain and is readable by the guest.
pub mod libxl {
    use xenplug_xenstore::{Access, Perm, Result, XsOps};

    fn perms(owner: u32, reader: u32) -> [Perm; 2] {
        [
            Perm {
                domid: owner,
                access: Access::None,
            },
            Perm {
                domid: reader,
                access: Access::Read,
            },
        ]
    }

    /// `libxl__domain_make` for domain `domid` called `name` with `uuid`, through a dom0
    /// connection `xs`: its home and `/vm/<uuid>` (dom0's, readable by the domain), `vm`,
    /// `name`, `domid`, `device` (dom0's, readable by the domain) and `data` (the domain's).
    pub fn domain(xs: &dyn XsOps, domid: u32, name: &str, uuid: &str) -> Result<()> {
        let home = format!("/local/domain/{domid}");
        let vm = format!("/vm/{uuid}");
        for dir in [&home, &vm] {
            xs.mkdir(dir)?;
            xs.set_perms(dir, &perms(0, domid))?;
        }
        xs.write(&format!("{home}/vm"), &vm)?;
        xs.write(&format!("{home}/name"), name)?;
        xs.write(&format!("{home}/domid"), &domid.to_string())?;
        xs.mkdir(&format!("{home}/device"))?;
        xs.mkdir(&format!("{home}/data"))?;
        xs.set_perms(
            &format!("{home}/data"),
            &[Perm {
                domid,
                access: Access::None,
            }],
        )?;
        xs.write(&format!("{vm}/uuid"), uuid)?;
        xs.write(&format!("{vm}/name"), name)?;
        Ok(())
    }

    /// Which device: `devid` of kind `kind` (`vif`, `vbd`) of guest `guest`, served by domain
    /// `backend`.
    #[derive(Debug, Clone, Copy)]
    pub struct Dev<'a> {
        /// `vif`, `vbd`, …
        pub kind: &'a str,
        /// The frontend domain.
        pub guest: u32,
        /// The device id.
        pub devid: u32,
        /// The backend domain.
        pub backend: u32,
    }

    /// `libxl__device_generic_add` for `dev` through a dom0 connection `xs`. The backend gets
    /// `frontend` and `bents`, the frontend `backend` and `fents`, and `ro_fents` with the
    /// backend domain's ownership. Returns the backend path.
    pub fn device(
        xs: &dyn XsOps,
        dev: Dev<'_>,
        bents: &[(&str, &str)],
        fents: &[(&str, &str)],
        ro_fents: &[(&str, &str)],
    ) -> Result<String> {
        let Dev {
            kind,
            guest,
            devid,
            backend,
        } = dev;
        let fe = format!("/local/domain/{guest}/device/{kind}/{devid}");
        let be = format!("/local/domain/{backend}/backend/{kind}/{guest}/{devid}");
        xs.mkdir(&fe)?;
        xs.set_perms(&fe, &perms(guest, backend))?;
        xs.write(&format!("{fe}/backend"), &be)?;
        for (k, v) in fents {
            xs.write(&format!("{fe}/{k}"), v)?;
            xs.set_perms(&format!("{fe}/{k}"), &perms(guest, backend))?;
        }
        for (k, v) in ro_fents {
            xs.write(&format!("{fe}/{k}"), v)?;
            xs.set_perms(&format!("{fe}/{k}"), &perms(backend, guest))?;
        }
        xs.mkdir(&be)?;
        xs.set_perms(&be, &perms(backend, guest))?;
        xs.write(&format!("{be}/frontend"), &fe)?;
        for (k, v) in bents {
            xs.write(&format!("{be}/{k}"), v)?;
        }
        Ok(be)
    }
}
