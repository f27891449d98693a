//! The error contract against a real xenstored (xenplug's daemon on a throwaway socket), both
//! in-process through `run` (the default connection, `XENSTORED_PATH`) and as the toolstack
//! sees it, with the `xenplug-hotplug-demo` binary as a separate process.

mod common;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Output, Stdio};

use common::{raw, Scratch};
use xenplug_hotplug::{run, Action, Failure, Outcome};
use xenplug_xenstore::{Access, Perm, XsOps};
use xenplug_xenstored::testing::{spawn_daemon, spawn_daemon_with_domains, TestDaemon};

const BE: &str = "backend/vbd/5/51712";
const ABS: &str = "/local/domain/0/backend/vbd/5/51712";

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xenplug-hotplug-demo"))
}

fn read(d: &TestDaemon, key: &str) -> Option<String> {
    d.store().read(&format!("{ABS}/{key}")).unwrap()
}

fn setup(d: &TestDaemon, params: Option<&str>) {
    let st = d.store();
    st.write(&format!("{ABS}/state"), "2").unwrap();
    if let Some(p) = params {
        st.write(&format!("{ABS}/params"), p).unwrap();
    }
}

/// Every node under the backend directory, to check that nothing was written.
fn snapshot(d: &TestDaemon) -> Vec<(String, String)> {
    d.store().dump("/local/domain/0/backend")
}

fn run_demo(d: &TestDaemon, s: &Scratch, args: &[&str]) -> Output {
    Command::new(demo())
        .args(args)
        .env_clear()
        .envs(s.env(Some(BE)))
        .env("XENSTORED_PATH", d.socket())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn binary_add_connects() {
    let (d, s) = (spawn_daemon(), Scratch::new());
    setup(&d, Some("/dev/sdz1"));
    let o = run_demo(&d, &s, &["add"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(read(&d, "physical-device").as_deref(), Some("/dev/sdz1"));
    assert_eq!(read(&d, "hotplug-status").as_deref(), Some("connected"));
    assert_eq!(read(&d, "hotplug-error"), None);
    assert_eq!(stderr(&o), "xenplug-hotplug-demo: attached /dev/sdz1\n");
    // The lock was released (file unlinked).
    assert!(!s.lock_dir().join("block").exists());
}

#[test]
fn binary_remove_writes_nothing() {
    let (d, s) = (spawn_daemon(), Scratch::new());
    setup(&d, Some("/dev/sdz1"));
    let before = snapshot(&d);
    let o = run_demo(&d, &s, &["remove"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(snapshot(&d), before);
    assert_eq!(stderr(&o), "");
}

#[test]
fn binary_error_and_busy() {
    for (arg, status, msg) in [
        ("fail=error", "error", "cannot attach /dev/sdz1"),
        ("fail=busy", "busy", "/dev/sdz1 is in use"),
    ] {
        let (d, s) = (spawn_daemon(), Scratch::new());
        setup(&d, Some("/dev/sdz1"));
        let o = run_demo(&d, &s, &["add", arg]);
        assert_eq!(o.status.code(), Some(1), "{arg}");
        assert_eq!(read(&d, "hotplug-error").as_deref(), Some(msg), "{arg}");
        assert_eq!(read(&d, "hotplug-status").as_deref(), Some(status), "{arg}");
        assert_eq!(read(&d, "physical-device"), None, "{arg}");
        assert_eq!(stderr(&o), format!("xenplug-hotplug-demo: error: {msg}\n"));
    }
}

#[test]
fn binary_missing_required_node() {
    let (d, s) = (spawn_daemon(), Scratch::new());
    setup(&d, None);
    let o = run_demo(&d, &s, &["add"]);
    assert_eq!(o.status.code(), Some(1));
    let msg = format!("xenstore-read {BE}/params failed.");
    assert_eq!(read(&d, "hotplug-error").as_deref(), Some(msg.as_str()));
    assert_eq!(read(&d, "hotplug-status").as_deref(), Some("error"));
    assert_eq!(stderr(&o), format!("xenplug-hotplug-demo: error: {msg}\n"));
}

#[test]
fn binary_panic_is_an_internal_error_without_backtrace() {
    let (d, s) = (spawn_daemon(), Scratch::new());
    setup(&d, Some("/dev/sdz1"));
    let o = Command::new(demo())
        .args(["add", "fail=panic"])
        .env_clear()
        .envs(s.env(Some(BE)))
        .env("XENSTORED_PATH", d.socket())
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(
            "xenplug-hotplug-demo: error: internal error: index out of bounds: the len is 1 but the index is 2 at hotplug/src/bin/xenplug-hotplug-demo.rs:"
        ),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    let msg = read(&d, "hotplug-error").unwrap();
    assert!(
        msg.starts_with("internal error: index out of bounds"),
        "{msg}"
    );
    assert_eq!(read(&d, "hotplug-status").as_deref(), Some("error"));
}

#[test]
fn binary_daemon_gone() {
    let (mut d, s) = (spawn_daemon(), Scratch::new());
    let sock = d.socket().to_path_buf();
    d.stop();
    let o = Command::new(demo())
        .arg("add")
        .env_clear()
        .envs(s.env(Some(BE)))
        .env("XENSTORED_PATH", &sock)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "xenplug-hotplug-demo: error: cannot connect to xenstored: {} (XENSTORED_PATH): No such file or directory (os error 2) (nothing written under {BE})\n",
            sock.display()
        )
    );
}

/// `run` in-process with the default connection, as a script's `main` calls it.
fn go(
    d: &TestDaemon,
    s: &Scratch,
    argv: &[&str],
    body: impl FnOnce(&xenplug_hotplug::Context) -> Result<Outcome<'static>, Failure>,
) -> ExitCode {
    let mut env = s.env(Some(BE));
    env.push(("XENSTORED_PATH".into(), d.socket().display().to_string()));
    run("block", raw(argv, &env), Action::BLOCK, body)
}

#[test]
fn run_in_process_against_daemon() {
    let (d, s) = (spawn_daemon(), Scratch::new());
    setup(&d, Some("/dev/sdz1"));
    let code = go(&d, &s, &["block", "add"], |ctx| {
        assert_eq!(ctx.read_required("params")?, "/dev/sdz1");
        assert_eq!(ctx.read_default("mode", "w")?, "w");
        assert_eq!(ctx.read_required(&format!("{ABS}/state"))?, "2");
        ctx.write_all(&[
            ("physical-device", "8:1"),
            ("physical-device-path", "/dev/sdz1"),
        ])?;
        let mut dir = ctx.directory("")?;
        dir.sort();
        assert_eq!(
            dir,
            vec!["params", "physical-device", "physical-device-path", "state"]
        );
        Ok(Outcome::Connected)
    });
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(read(&d, "physical-device").as_deref(), Some("8:1"));
    assert_eq!(read(&d, "hotplug-status").as_deref(), Some("connected"));

    // A failure overwrites a previous status, and the log file has the err line.
    let code = go(&d, &s, &["block", "add"], |_| {
        Err(Failure::error("second attempt failed"))
    });
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(read(&d, "hotplug-status").as_deref(), Some("error"));
    assert_eq!(
        read(&d, "hotplug-error").as_deref(),
        Some("second attempt failed")
    );
    assert!(s.log_text().contains("] err: second attempt failed\n"));
}

#[test]
fn run_in_process_bad_invocation_writes_nothing() {
    let (d, s) = (spawn_daemon(), Scratch::new());
    setup(&d, Some("/dev/sdz1"));
    let before = snapshot(&d);
    for argv in [
        &["block", "online"][..],
        &["block", "bogus"],
        &["block", "add", "=x"],
    ] {
        let code = go(&d, &s, argv, |_| -> Result<Outcome<'static>, Failure> {
            panic!("body must not run")
        });
        assert_eq!(code, ExitCode::FAILURE, "{argv:?}");
    }
    assert_eq!(snapshot(&d), before);
}

#[test]
fn unwritable_backend_still_exits_1_and_logs() {
    // Run as domain 5, whose connection may not write dom0's backend directory.
    let (d, s) = (spawn_daemon_with_domains(&[5]), Scratch::new());
    let st = d.store();
    st.write(&format!("{ABS}/params"), "/dev/sdz1").unwrap();
    for node in [ABS.to_string(), format!("{ABS}/params")] {
        let others_read = [Perm {
            domid: 0,
            access: Access::Read,
        }];
        st.set_perms(&node, &others_read).unwrap();
    }
    let mut env = s.env(Some(ABS));
    env.push((
        "XENSTORED_PATH".into(),
        d.domain_socket(5).unwrap().display().to_string(),
    ));
    let code = run(
        "block",
        raw(&["block", "add"], &env),
        Action::BLOCK,
        |ctx| {
            assert_eq!(ctx.read_required("params")?, "/dev/sdz1");
            Ok(Outcome::Connected)
        },
    );
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(read(&d, "hotplug-status"), None);
    assert_eq!(read(&d, "hotplug-error"), None);
    let log = s.log_text();
    assert!(
        log.contains(&format!(
            "err: cannot record the failure in xenstore under {ABS}: xenstore "
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "err: Writing {ABS}/hotplug-status connected to xenstore failed: EACCES"
        )),
        "{log}"
    );
}
