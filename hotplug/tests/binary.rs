//! The contract as the toolstack sees it: the `xenplug-hotplug-demo` binary run as a separate process
//! (exit status, stderr lines, xenstore keys).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::Scratch;

const BE: &str = "backend/vbd/5/51712";

/// The demo script binary of this crate.
fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xenplug-hotplug-demo"))
}

fn run_demo(s: &Scratch, args: &[&str], env: &[(String, String)]) -> Output {
    let mut c = Command::new(demo());
    c.args(args)
        .env_clear()
        .envs(s.env(None))
        .envs(env.iter().cloned())
        .stdin(Stdio::null());
    c.output().unwrap()
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[test]
fn bad_invocations_give_one_line_and_exit_1() {
    let s = Scratch::new();
    let path = kv("XENBUS_PATH", BE);
    // XENSTORED_PATH points nowhere: none of these may even try to connect.
    let nowhere = kv("XENSTORED_PATH", "/nonexistent/xenstored.sock");
    type Case<'a> = (Vec<&'a str>, Vec<(String, String)>, String);
    let cases: Vec<Case> = vec![
        (
            vec!["add"],
            vec![nowhere.clone()],
            "xenplug-hotplug-demo: error: XENBUS_PATH is not set: this script must be run by the toolstack (XENBUS_PATH=backend/<kind>/<domid>/<devid>)".into(),
        ),
        (
            vec!["online", "type_if=vif"],
            vec![path.clone(), nowhere.clone()],
            "xenplug-hotplug-demo: error: Invalid command: online".into(),
        ),
        (
            vec!["add", "=x"],
            vec![path.clone(), nowhere.clone()],
            "xenplug-hotplug-demo: error: malformed argument '=x': expected key=value with a non-empty key".into(),
        ),
        (
            vec![],
            vec![path.clone(), nowhere.clone()],
            "xenplug-hotplug-demo: error: missing action: expected add, remove, online or offline".into(),
        ),
    ];
    for (args, env, expect) in cases {
        let o = run_demo(&s, &args, &env);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr_lines(&o), vec![expect], "{args:?}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn unreachable_xenstored_is_one_clear_line() {
    let s = Scratch::new();
    let o = run_demo(
        &s,
        &["add"],
        &[
            kv("XENBUS_PATH", BE),
            kv("XENSTORED_PATH", "/nonexistent/xenstored.sock"),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&o),
        vec!["xenplug-hotplug-demo: error: cannot connect to xenstored: /nonexistent/xenstored.sock (XENSTORED_PATH): No such file or directory (os error 2) (nothing written under backend/vbd/5/51712)".to_string()]
    );
    // The same line, with time and pid, is in the log file.
    let log = s.log_text();
    assert!(log.contains("xenplug-hotplug-demo["), "{log}");
    assert!(
        log.contains("] err: cannot connect to xenstored: /nonexistent/xenstored.sock"),
        "{log}"
    );
}

#[test]
fn config_from_file_is_honoured_by_the_binary() {
    let s = Scratch::new();
    let cfg = s.path().join("xenplug.toml");
    let other_log = s.path().join("other/hotplug.log");
    std::fs::write(
        &cfg,
        format!(
            "log_file = \"{}\"\nstderr_level = \"err\"\nsyslog = false\n",
            other_log.display()
        ),
    )
    .unwrap();
    let mut env = s.env(None);
    env.retain(|(k, _)| k != "XENPLUG_LOG_FILE" && k != "XENPLUG_CONFIG");
    let o = Command::new(demo())
        .arg("bogus")
        .env_clear()
        .envs(env)
        .env("XENPLUG_CONFIG", &cfg)
        .env("XENBUS_PATH", BE)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&o),
        vec!["xenplug-hotplug-demo: error: Invalid command: bogus".to_string()]
    );
    let text = std::fs::read_to_string(&other_log).unwrap();
    assert!(text.ends_with("] err: Invalid command: bogus\n"), "{text}");
}
