//! Logging sinks: the log file (appended, directory created), syslog datagrams (to a test
//! socket), stderr format, and failure to open the file being non-fatal.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use xenplug_hotplug::{Config, Level, Log};

fn cfg(dir: &std::path::Path) -> Config {
    Config {
        log_file: Some(dir.join("sub/dir/xen-hotplug.log")),
        syslog: false,
        ..Config::default()
    }
}

#[derive(Clone, Default)]
struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Buf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[test]
fn file_is_appended_and_directory_created() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let path = c.log_file.clone().unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "earlier line\n").unwrap();
    let buf = Buf::default();
    let log = Log::new("vif-bridge", &c).with_stderr(Box::new(buf.clone()));
    log.err("first\nsecond");
    log.warning("careful");
    log.info("note");
    log.debug("detail");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "earlier line");
    assert_eq!(lines.len(), 5, "{text}");
    let pid = std::process::id();
    for (line, tail) in lines[1..].iter().zip([
        "err: first; second",
        "warning: careful",
        "info: note",
        "debug: detail",
    ]) {
        // 2026-11-22T02:15:59.123Z vif-bridge[1234] err: …
        assert_eq!(&line[10..11], "T", "{line}");
        assert_eq!(&line[23..25], "Z ", "{line}");
        assert_eq!(&line[25..], format!("vif-bridge[{pid}] {tail}"), "{line}");
    }
    // stderr: plain lines, default threshold info.
    assert_eq!(
        buf.text(),
        "vif-bridge: error: first; second\nvif-bridge: warning: careful\nvif-bridge: note\n"
    );
}

#[test]
fn directory_of_log_file_created_and_unopenable_file_is_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let log = Log::new("block", &c);
    log.info("hello");
    assert!(std::fs::read_to_string(c.log_file.unwrap())
        .unwrap()
        .contains("block["));

    // A log "file" whose parent is a regular file cannot be opened: warn on stderr, go on.
    let blocker = tmp.path().join("plain-file");
    std::fs::write(&blocker, "").unwrap();
    let c2 = Config {
        log_file: Some(blocker.join("x.log")),
        syslog: false,
        ..Config::default()
    };
    let buf = Buf::default();
    let log = Log::new("block", &c2);
    let log = log.with_stderr(Box::new(buf.clone()));
    log.err("still works");
    assert_eq!(buf.text(), "block: error: still works\n");
}

#[test]
fn syslog_datagrams_to_configured_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("log.sock");
    let server = UnixDatagram::bind(&sock).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let c = Config {
        log_file: None,
        syslog: true,
        syslog_socket: sock.clone(),
        syslog_level: Level::Info,
        ..Config::default()
    };
    let log = Log::new("vif-route", &c).with_stderr(Box::new(std::io::sink()));
    log.err("oops");
    log.debug("not sent: below the syslog threshold");
    log.info("fine");
    let pid = std::process::id();
    let mut buf = [0u8; 8192];
    let mut got = Vec::new();
    for _ in 0..2 {
        let n = server.recv(&mut buf).unwrap();
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // <27> = daemon(3)*8 + err(3); <30> = daemon*8 + info(6). "Mmm dd hh:mm:ss" is 15 chars.
    assert!(got[0].starts_with("<27>"), "{}", got[0]);
    assert_eq!(&got[0][19..], format!(" vif-route[{pid}]: oops"));
    assert!(got[1].starts_with("<30>"), "{}", got[1]);
    assert_eq!(&got[1][19..], format!(" vif-route[{pid}]: fine"));
    server.set_nonblocking(true).unwrap();
    assert!(
        server.recv(&mut buf).is_err(),
        "debug line must not be sent"
    );
}

#[test]
fn missing_or_stuck_syslog_never_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    // Absent socket: silently no syslog.
    let c = Config {
        log_file: None,
        syslog: true,
        syslog_socket: tmp.path().join("absent.sock"),
        ..Config::default()
    };
    let log = Log::new("block", &c).with_stderr(Box::new(std::io::sink()));
    log.err("no syslogd here");
    // A socket nobody reads: the queue fills, sends fail with EAGAIN, we carry on quickly.
    let sock = tmp.path().join("stuck.sock");
    let _server = UnixDatagram::bind(&sock).unwrap();
    let c = Config {
        log_file: None,
        syslog: true,
        syslog_socket: sock,
        ..Config::default()
    };
    let log = Log::new("block", &c).with_stderr(Box::new(std::io::sink()));
    let t0 = std::time::Instant::now();
    for i in 0..5000 {
        log.debug(format!("message {i} {}", "x".repeat(200)));
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[test]
fn log_level_env_override() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("XENPLUG_CONFIG", tmp.path().join("absent.toml")),
        ("XENPLUG_LOG_FILE", tmp.path().join("l.log")),
    ];
    let mut map: std::collections::BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect();
    // An explicit XENPLUG_CONFIG that does not exist is an error naming it.
    let e = Config::load(&map).unwrap_err();
    assert!(e.message().starts_with(&format!(
        "cannot read config file {}: No such file or directory",
        tmp.path().join("absent.toml").display()
    )));
    map.remove("XENPLUG_CONFIG");
    map.insert("XENPLUG_LOG_LEVEL".into(), "info".into());
    map.insert("XENPLUG_SYSLOG".into(), "off".into());
    // (If /etc/xen/xenplug.toml exists on this machine it is read; the overrides still win.)
    let c = Config::load(&map).unwrap();
    assert_eq!(c.log_file_level, Level::Info);
    assert!(!c.syslog);
    let log = Log::new("block", &c).with_stderr(Box::new(std::io::sink()));
    log.debug("hidden");
    log.info("shown");
    let text = std::fs::read_to_string(tmp.path().join("l.log")).unwrap();
    assert!(!text.contains("hidden") && text.contains("shown"), "{text}");
}

/// With the log file at `debug`, a lock a script takes through its context logs its wait when
/// held and its hold time when released (issue 21); at `info` nothing is added.
#[test]
fn lock_hold_times_are_logged_at_debug() {
    use common::{raw, FakeXs, Scratch};
    let (xs, s) = (FakeXs::new(), Scratch::new());
    let tmp = tempfile::tempdir().unwrap();
    for level in [Level::Debug, Level::Info] {
        let path = tmp.path().join(format!("{level}.log"));
        let config = Config {
            lock_dir: s.lock_dir(),
            log_file: Some(path.clone()),
            log_file_level: level,
            syslog: false,
            ..Config::default()
        };
        let inv = xenplug_hotplug::Invocation::parse(raw(
            &["block", "add"],
            &s.env(Some("backend/vbd/5/51712")),
        ))
        .unwrap();
        let log = Log::new("block", &config).with_stderr(Box::new(Buf::default()));
        let ctx = xenplug_hotplug::Context::new(inv, &xs, log, config);
        let g = ctx.claim_lock("block").unwrap();
        g.release().unwrap();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let released: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("released lock block: held "))
            .collect();
        match level {
            Level::Debug => {
                assert_eq!(released.len(), 1, "{text}");
                assert!(released[0].ends_with(" ms"), "{text}");
                assert!(text.contains("holding lock block (waited "), "{text}");
            }
            _ => assert!(released.is_empty(), "{text}"),
        }
    }
}
