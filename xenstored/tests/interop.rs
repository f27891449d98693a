//! Interoperability with a client nobody here wrote: Debian's xenstore-utils (libxenstore),
//! run against the daemon through `XENSTORED_PATH`. Outputs and exit codes are checked exactly.
//! With `CI` set, a missing xenstore-utils fails these tests instead of skipping them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use xenplug_testkit::{require_program, wait_until};
use xenplug_xenstore::{Access, Perm, XsOps};
use xenplug_xenstored::testing::{spawn_daemon, TestDaemon};

fn run(d: &TestDaemon, program: &str, args: &[&str]) -> Output {
    d.command(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

#[track_caller]
fn ok(d: &TestDaemon, program: &str, args: &[&str]) -> String {
    let out = run(d, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "{program} {args:?}"
    );
    String::from_utf8(out.stdout).unwrap()
}

#[track_caller]
fn fails(d: &TestDaemon, program: &str, args: &[&str]) -> (String, String) {
    let out = run(d, program, args);
    assert_eq!(out.status.code(), Some(1), "{program} {args:?}");
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Kills and reaps a child on drop, so a failing test leaves no process behind.
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn write_read_exists_list_rm() {
    if !require_program("xenstore-read") {
        return;
    }
    let d = spawn_daemon();
    assert_eq!(
        ok(&d, "xenstore-write", &["/i/a", "1", "/i/b", "two words"]),
        ""
    );
    assert_eq!(ok(&d, "xenstore-write", &["/i/c/d", "x"]), "");
    assert_eq!(ok(&d, "xenstore-read", &["/i/a"]), "1\n");
    assert_eq!(ok(&d, "xenstore-read", &["/i/a", "/i/b"]), "1\ntwo words\n");
    assert_eq!(
        ok(&d, "xenstore-read", &["-p", "/i/b"]),
        "/i/b: two words\n"
    );
    assert_eq!(ok(&d, "xenstore-read", &["/i/c"]), "\n");
    assert_eq!(
        ok(&d, "xenstore-read", &["name"]),
        "Domain-0\n",
        "relative to dom0"
    );
    assert_eq!(
        fails(&d, "xenstore-read", &["/i/missing"]),
        (
            String::new(),
            "xenstore-read: couldn't read path /i/missing\n".into()
        )
    );
    assert_eq!(
        fails(&d, "xenstore-read", &["/bad path"]).1,
        "xenstore-read: couldn't read path /bad path\n"
    );
    assert_eq!(ok(&d, "xenstore-exists", &["/i/a"]), "");
    assert_eq!(
        fails(&d, "xenstore-exists", &["/i/missing"]),
        (String::new(), String::new())
    );
    assert_eq!(ok(&d, "xenstore-list", &["/i"]), "a\nb\nc\n");
    assert_eq!(ok(&d, "xenstore-list", &["-p", "/i"]), "/i/a\n/i/b\n/i/c\n");
    assert_eq!(
        fails(&d, "xenstore-list", &["/i/none"]).1,
        "xenstore-list: could not list path /i/none\n"
    );
    assert_eq!(ok(&d, "xenstore-rm", &["/i/a"]), "");
    assert_eq!(
        ok(&d, "xenstore-rm", &["/i/a"]),
        "",
        "missing node, parent exists"
    );
    assert_eq!(
        fails(&d, "xenstore-rm", &["/i/none/x"]).1,
        "xenstore-rm: could not remove path /i/none/x\n"
    );
    assert_eq!(ok(&d, "xenstore-rm", &["/i/c"]), "");
    assert_eq!(ok(&d, "xenstore-list", &["/i"]), "b\n");
    // Values with control characters round-trip through libxenstore's escaping.
    assert_eq!(ok(&d, "xenstore-write", &["/i/esc", "a\\tb\\x01"]), "");
    assert_eq!(
        d.store().read("/i/esc").unwrap().as_deref(),
        Some("a\tb\u{1}")
    );
    assert_eq!(ok(&d, "xenstore-read", &["/i/esc"]), "a\\tb\\001\n");
    // What they wrote is what our client reads.
    assert_eq!(
        d.client().read("/i/b").unwrap().as_deref(),
        Some("two words")
    );
}

#[test]
fn ls_flat_and_chmod() {
    if !require_program("xenstore-ls") {
        return;
    }
    let d = spawn_daemon();
    let xs = d.client();
    xs.write("/l/a", "1").unwrap();
    xs.write("/l/b/c", "deep").unwrap();
    xs.write("/l/b/d", "").unwrap();
    assert_eq!(
        ok(&d, "xenstore-ls", &["-f", "/l"]),
        "/l/a = \"1\"\n/l/b = \"\"\n/l/b/c = \"deep\"\n/l/b/d = \"\"\n"
    );
    assert_eq!(
        fails(&d, "xenstore-ls", &["-f", "/l/none"]).1,
        "xenstore-ls: xs_directory (/l/none): No such file or directory\n"
    );
    assert_eq!(ok(&d, "xenstore-chmod", &["/l/a", "n0", "r5", "b7"]), "");
    assert_eq!(
        xs.get_perms("/l/a").unwrap(),
        [
            Perm {
                domid: 0,
                access: Access::None
            },
            Perm {
                domid: 5,
                access: Access::Read
            },
            Perm {
                domid: 7,
                access: Access::Both
            }
        ]
    );
    assert_eq!(ok(&d, "xenstore-chmod", &["-r", "/l/b", "r3"]), "");
    assert_eq!(
        ok(&d, "xenstore-ls", &["-f", "-p", "/l"]),
        "/l/a = \"1\"   (n0,r5,b7)\n/l/b = \"\"   (r3)\n/l/b/c = \"deep\"   (r3)\n/l/b/d = \"\"   (r3)\n"
    );
    assert_eq!(
        fails(&d, "xenstore-chmod", &["/l/none", "n0"]).1,
        "xenstore-chmod: Error occurred setting permissions on '/l/none': No such file or directory\n"
    );
}

#[test]
fn list_of_a_directory_larger_than_one_payload() {
    if !require_program("xenstore-list") {
        return;
    }
    let d = spawn_daemon();
    let store = d.store();
    let names: Vec<String> = (0..600).map(|i| format!("dev-{i:05}")).collect();
    for n in &names {
        store.mkdir(&format!("/big/{n}")).unwrap();
    }
    let expected: String = names.iter().map(|n| format!("{n}\n")).collect();
    // libxenstore gets E2BIG for DIRECTORY and reassembles the list with DIRECTORY_PART.
    assert_eq!(ok(&d, "xenstore-list", &["/big"]), expected);
}

#[test]
fn watch_prints_initial_and_change_events() {
    if !require_program("xenstore-watch") {
        return;
    }
    let d = spawn_daemon();
    let xs = d.client();
    xs.write("/w/x", "0").unwrap();
    let child = d
        .command("xenstore-watch")
        .args(["-n", "4", "/w"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xenstore-watch");
    let mut guard = Reap(Some(child));
    let stdout = guard.0.as_mut().unwrap().stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // The registration event proves the watch is in place before we change anything.
    assert_eq!(lines.next().unwrap().unwrap(), "/w");
    xs.write("/w/x", "1").unwrap();
    xs.write("/elsewhere", "1").unwrap();
    xs.write("/w/y/z", "1").unwrap();
    xs.rm("/w").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "/w/x");
    assert_eq!(lines.next().unwrap().unwrap(), "/w/y/z");
    assert_eq!(lines.next().unwrap().unwrap(), "/w");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = guard.0.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "xenstore-watch -n 4 did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(lines.next().is_none());
    guard.0.take();
    // The daemon sees the connection close when its reader gets EOF, after the client exited.
    wait_until(
        "its watch to go with its connection",
        Duration::from_secs(10),
        || d.engine().total_watches() == 0,
    );
}

#[test]
fn guest_view_through_a_domain_socket() {
    if !require_program("xenstore-read") {
        return;
    }
    let d = xenplug_xenstored::testing::spawn_daemon_with_domains(&[5]);
    let xs = d.client();
    xs.write("/local/domain/5/name", "guest").unwrap();
    xs.set_perms(
        "/local/domain/5",
        &[Perm {
            domid: 5,
            access: Access::None,
        }],
    )
    .unwrap();
    let guest = |args: &[&str]| {
        let mut c = Command::new("xenstore-read");
        c.env("XENSTORED_PATH", d.domain_socket(5).unwrap())
            .args(args)
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    // Owner of its home (the name node was created by dom0 before the home was given away, so
    // it is still n0: unreadable).
    let out = guest(&["name"]);
    assert_eq!(out.status.code(), Some(1));
    xs.set_perms(
        "/local/domain/5/name",
        &[Perm {
            domid: 5,
            access: Access::None,
        }],
    )
    .unwrap();
    let out = guest(&["name"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "guest\n");
    let out = guest(&["/local/domain/0/name"]);
    assert_eq!(out.status.code(), Some(1));
}
