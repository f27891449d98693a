//! The error contract of `run_with`, against the in-test xenstore: exact keys, values, exit codes,
//! log lines.

mod common;

use std::process::ExitCode;

use common::{raw, FakeXs, Scratch};
use xenplug_hotplug::{run_with, Action, BorrowedXs, Context, Device, Failure, Outcome};
use xenplug_xenstore::{XenStore, XsError};

const BE: &str = "backend/vbd/5/51712";
const ABS_BE: &str = "/local/domain/0/backend/vbd/5/51712";

fn connect(
    xs: &FakeXs,
) -> impl FnOnce(
    &std::collections::BTreeMap<String, String>,
) -> Result<Box<dyn XenStore + 'static>, XsError> {
    let xs = xs.clone();
    move |_| Ok(Box::new(xs))
}

fn go<'b>(
    xs: &FakeXs,
    s: &Scratch,
    argv: &[&str],
    with_path: bool,
    body: impl FnOnce(&Context) -> Result<Outcome<'b>, Failure>,
) -> ExitCode {
    let env = s.env(with_path.then_some(BE));
    run_with("block", raw(argv, &env), Action::BLOCK, connect(xs), body)
}

#[test]
fn connected_writes_hotplug_status() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    xs.set(&format!("{BE}/params"), "/dev/sda1");
    let code = go(&xs, &s, &["/etc/xen/scripts/block", "add"], true, |ctx| {
        assert_eq!(ctx.backend(), BE);
        assert_eq!(ctx.read_required("params")?, "/dev/sda1");
        ctx.write("physical-device", "8:1")?;
        Ok(Outcome::Connected)
    });
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        xs.writes(),
        vec![
            (format!("{ABS_BE}/physical-device"), "8:1".to_string()),
            (format!("{ABS_BE}/hotplug-status"), "connected".to_string()),
        ]
    );
    let log = s.log_text();
    assert!(log.contains("block["), "{log}");
    assert!(
        log.contains("debug: add XENBUS_PATH=backend/vbd/5/51712"),
        "{log}"
    );
    assert!(log.contains("Writing backend/vbd/5/51712/hotplug-status connected to xenstore."));
}

#[test]
fn done_writes_nothing() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let code = go(&xs, &s, &["block", "remove"], true, |_| Ok(Outcome::Done));
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(xs.writes().is_empty());
}

#[test]
fn borrowed_store() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let env = s.env(Some(BE));
    let code = run_with(
        "block",
        raw(&["block", "add"], &env),
        Action::BLOCK,
        |_| Ok(Box::new(BorrowedXs(&xs))),
        |_| Ok(Outcome::Connected),
    );
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        xs.get(&format!("{BE}/hotplug-status")).as_deref(),
        Some("connected")
    );
}

#[test]
fn error_writes_error_and_status_in_one_transaction() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let code = go(&xs, &s, &["block", "add"], true, |_| {
        Err(Failure::error("Backend device does not exist"))
    });
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(
        xs.writes(),
        vec![
            (
                format!("{ABS_BE}/hotplug-error"),
                "Backend device does not exist".to_string()
            ),
            (format!("{ABS_BE}/hotplug-status"), "error".to_string()),
        ]
    );
    assert_eq!(xs.commits(), 1);
    assert!(s
        .log_text()
        .contains("] err: Backend device does not exist\n"));
}

#[test]
fn busy_writes_busy() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let code = go(&xs, &s, &["block", "add"], true, |ctx| {
        // The lock is released (guard dropped) before run() reports.
        let _g = ctx.claim_lock("block")?;
        Err(Failure::busy(
            "Device /dev/sda1 is mounted in the privileged domain,\nand so cannot be mounted by a guest.",
        ))
    });
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(
        xs.get(&format!("{BE}/hotplug-error")).as_deref(),
        Some("Device /dev/sda1 is mounted in the privileged domain, and so cannot be mounted by a guest.")
    );
    assert_eq!(
        xs.get(&format!("{BE}/hotplug-status")).as_deref(),
        Some("busy")
    );
    assert!(!s.lock_dir().join("block").exists(), "lock released");
}

#[test]
fn missing_required_node() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    xs.set(&format!("{BE}/empty"), "");
    let code = go(&xs, &s, &["block", "add"], true, |ctx| {
        assert_eq!(
            ctx.read_required("empty").unwrap_err().message(),
            format!("xenstore-read {BE}/empty failed.")
        );
        assert_eq!(ctx.read_default("empty", "d")?, "");
        assert_eq!(ctx.read_default("absent", "d")?, "d");
        assert_eq!(ctx.read("absent")?, None);
        assert!(!ctx.exists("absent")?);
        assert_eq!(ctx.path("/local/domain/5/vm"), "/local/domain/5/vm");
        ctx.read_required("/local/domain/5/vm")?;
        Ok(Outcome::Connected)
    });
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(
        xs.get(&format!("{BE}/hotplug-error")).as_deref(),
        Some("xenstore-read /local/domain/5/vm failed.")
    );
    assert_eq!(
        xs.get(&format!("{BE}/hotplug-status")).as_deref(),
        Some("error")
    );
}

#[test]
fn bad_invocations_write_nothing() {
    let cases: &[(&[&str], bool, &str)] = &[
        (&["block", "add"], false, "XENBUS_PATH is not set"),
        (&["block", "online"], true, "Invalid command: online"),
        (&["block", "bogus"], true, "Invalid command: bogus"),
        (&["block", "add", "=x"], true, "malformed argument '=x'"),
        (&[], true, "empty argument list"),
    ];
    for (argv, with_path, expect) in cases {
        let (xs, s) = (FakeXs::new(), Scratch::new());
        let mut ran = false;
        let code = go(&xs, &s, argv, *with_path, |_| {
            ran = true;
            Ok(Outcome::Connected)
        });
        assert_eq!(code, ExitCode::FAILURE, "{argv:?}");
        assert!(!ran, "{argv:?}: body must not run");
        assert!(xs.writes().is_empty(), "{argv:?}: nothing may be written");
        let log = s.log_text();
        let errs: Vec<&str> = log.lines().filter(|l| l.contains("] err: ")).collect();
        assert_eq!(errs.len(), 1, "{argv:?}: {log}");
        assert!(errs[0].contains(expect), "{argv:?}: {log}");
    }
}

#[test]
fn unreachable_xenstore_writes_nothing_and_fails() {
    let s = Scratch::new();
    let env = s.env(Some(BE));
    let code = run_with(
        "block",
        raw(&["block", "add"], &env),
        Action::BLOCK,
        |_| {
            Err(XsError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "/nonexistent/socket: No such file or directory",
            )))
        },
        |_| -> Result<Outcome<'static>, Failure> { panic!("body must not run") },
    );
    assert_eq!(code, ExitCode::FAILURE);
    let log = s.log_text();
    assert!(
        log.contains("err: cannot connect to xenstored: /nonexistent/socket: No such file or directory (nothing written under backend/vbd/5/51712)"),
        "{log}"
    );
}

#[test]
fn panic_becomes_internal_error() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let code = go(&xs, &s, &["block", "add"], true, |_| {
        let v: Vec<u8> = Vec::new();
        let i = v.len() + 3;
        if i == 3 {
            panic!("index {i} out of range");
        }
        Ok(Outcome::Done)
    });
    assert_eq!(code, ExitCode::FAILURE);
    let msg = xs.get(&format!("{BE}/hotplug-error")).unwrap();
    assert!(
        msg.starts_with("internal error: index 3 out of range at hotplug/tests/contract.rs:"),
        "{msg}"
    );
    assert_eq!(
        xs.get(&format!("{BE}/hotplug-status")).as_deref(),
        Some("error")
    );
}

#[test]
fn failed_status_write_is_reported_as_failure() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let code = go(&xs, &s, &["block", "add"], true, |_| {
        xs.fail_writes(true);
        Ok(Outcome::Connected)
    });
    assert_eq!(code, ExitCode::FAILURE);
    assert!(xs.writes().is_empty());
    let log = s.log_text();
    assert!(
        log.contains("err: cannot record the failure in xenstore under backend/vbd/5/51712: xenstore WRITE backend/vbd/5/51712/hotplug-error: EACCES"),
        "{log}"
    );
    assert!(
        log.contains(
            "err: Writing backend/vbd/5/51712/hotplug-status connected to xenstore failed: EACCES"
        ),
        "{log}"
    );
}

#[test]
fn xs_error_conversion_is_one_line() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let code = go(&xs, &s, &["block", "add"], true, |_| {
        Err(XsError::Daemon {
            errno: xenplug_xenstore::Errno::EACCES,
            op: "READ",
            path: "backend/vbd/5/51712/params".into(),
        })?
    });
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(
        xs.get(&format!("{BE}/hotplug-error")).as_deref(),
        Some("xenstore READ backend/vbd/5/51712/params: EACCES")
    );
    let io: Failure = XsError::Io(std::io::Error::other("broken pipe")).into();
    assert_eq!(io.message(), "cannot talk to xenstored: broken pipe");
}

#[test]
fn write_all_is_one_transaction_and_rm_tolerates_absent() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let code = go(&xs, &s, &["block", "add"], true, |ctx| {
        ctx.write_all(&[("node", "/dev/loop0"), ("physical-device", "7:0")])?;
        ctx.rm("does-not-exist")?;
        assert_eq!(ctx.directory("nothing-here")?, Vec::<String>::new());
        let mut d = ctx.directory("")?;
        d.sort();
        assert_eq!(d, vec!["node", "physical-device"]);
        Ok(Outcome::Done)
    });
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(xs.commits(), 1);
    assert_eq!(xs.get(&format!("{BE}/node")).as_deref(), Some("/dev/loop0"));
}

#[test]
fn config_error_is_reported_through_xenstore() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let cfg = s.path().join("bad.toml");
    std::fs::write(&cfg, "lock_dir = \"/tmp/x\"\nlog_flie = \"/tmp/y\"\n").unwrap();
    let mut env = s.env(Some(BE));
    env.retain(|(k, _)| k != "XENPLUG_CONFIG");
    env.push(("XENPLUG_CONFIG".into(), cfg.display().to_string()));
    let code = run_with(
        "block",
        raw(&["block", "add"], &env),
        Action::BLOCK,
        connect(&xs),
        |_| -> Result<Outcome<'static>, Failure> { panic!("body must not run") },
    );
    assert_eq!(code, ExitCode::FAILURE);
    let msg = xs.get(&format!("{BE}/hotplug-error")).unwrap();
    assert!(
        msg.starts_with(&format!(
            "config file {} line 2: unknown field `log_flie`",
            cfg.display()
        )),
        "{msg}"
    );
}

#[test]
fn run_checked_reports_command_failures() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let code = go(&xs, &s, &["block", "add"], true, |ctx| {
        let out = ctx.run_checked(
            ctx.command("sh")
                .args(["-c", "echo $LANG; echo ${LC_ALL-unset}"]),
        )?;
        assert_eq!(out, "POSIX\nunset\n");
        ctx.run_checked(
            ctx.command("sh")
                .args(["-c", "echo first >&2; echo 'no such device' >&2; exit 3"]),
        )?;
        Ok(Outcome::Connected)
    });
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(
        xs.get(&format!("{BE}/hotplug-error")).as_deref(),
        Some("sh -c echo first >&2; echo 'no such device' >&2; exit 3 failed (exit status: 3): no such device")
    );
}

#[test]
fn published_device_nodes_and_status_are_one_transaction_written_under_the_lock() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let lock_file = s.lock_dir().join("block");
    let code = go(&xs, &s, &["block", "add"], true, |ctx| {
        let lock = ctx.claim_lock("block")?;
        Ok(Outcome::Published(
            Device::new()
                .node("node", "/dev/loop3")
                .node("physical-device", "7:3")
                .node("physical-device-path", "/dev/loop3")
                .hold(lock),
        ))
    });
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        xs.writes(),
        [
            ("node", "/dev/loop3"),
            ("physical-device", "7:3"),
            ("physical-device-path", "/dev/loop3"),
            ("hotplug-status", "connected"),
        ]
        .map(|(k, v)| (format!("{ABS_BE}/{k}"), v.to_string()))
    );
    assert_eq!(xs.commits(), 1, "one transaction");
    assert!(!lock_file.exists(), "the lock is released after the write");
}

#[test]
fn a_failed_publication_runs_the_undo_under_the_lock_and_reports() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let lock_file = s.lock_dir().join("block");
    let undone = std::cell::Cell::new(false);
    let code = go(&xs, &s, &["block", "add"], true, |ctx| {
        let lock = ctx.claim_lock("block")?;
        xs.fail_writes(true);
        Ok(Outcome::Published(
            Device::new()
                .node("physical-device", "7:3")
                .hold(lock)
                .undo_on_failure(|_| {
                    assert!(lock_file.exists(), "still locked while undoing");
                    undone.set(true);
                }),
        ))
    });
    assert_eq!(code, ExitCode::FAILURE);
    assert!(undone.get());
    assert!(!lock_file.exists());
    assert!(xs.writes().is_empty());
    let log = s.log_text();
    assert!(
        log.contains("err: Writing backend/vbd/5/51712/physical-device 7:3 backend/vbd/5/51712/hotplug-status connected to xenstore failed: EACCES"),
        "{log}"
    );
}

#[test]
fn the_backend_path_is_parsed_once_into_the_context() {
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let code = go(&xs, &s, &["block", "remove"], true, |ctx| {
        let b = ctx.backend_path().expect("parsed");
        assert_eq!((b.kind.as_str(), b.domid, b.devid), ("vbd", 5, 51712));
        assert_eq!(ctx.kind_dir(), "backend/vbd");
        Ok(Outcome::Done)
    });
    assert_eq!(code, ExitCode::SUCCESS);
}
