//! The config file and environment overrides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xenplug_hotplug::{Config, Level};

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(
        c.log_file.as_deref(),
        Some(Path::new("/var/log/xen/xen-hotplug.log"))
    );
    assert_eq!(c.lock_dir, PathBuf::from("/var/run/xen-hotplug"));
    assert_eq!(c.state_dir, PathBuf::from("/run/xen-hotplug"));
    assert_eq!(c.scripts_dir, PathBuf::from("/etc/xen/scripts"));
    assert_eq!(c.syslog_socket, PathBuf::from("/dev/log"));
    assert!(c.syslog);
    assert_eq!(c.lock_timeout, Duration::from_secs(25));
    assert_eq!(c.hook_timeout, Duration::from_secs(10));
    assert_eq!(c.deadline, Duration::from_secs(35));
    assert_eq!(c.cleanup_grace(), Duration::from_secs(5));
    assert!(!c.hooks_fatal);
    assert_eq!(
        (c.stderr_level, c.log_file_level, c.syslog_level),
        (Level::Info, Level::Debug, Level::Debug)
    );
}

#[test]
fn every_key() {
    let text = r#"
log_file = "/tmp/x/hotplug.log"
log_file_level = "info"
stderr_level = "warning"
syslog = false
syslog_socket = "/run/systemd/journal/dev-log"
syslog_level = "err"
lock_dir = "/run/locks"
lock_timeout_secs = 12.5
deadline_secs = 20
scripts_dir = "/usr/local/xen/scripts"
state_dir = "/run/xenplug-state"
libexec_bin = "/usr/lib/xen-4.17/bin"
hook_timeout_secs = 3
hooks_fatal = true
antispoof = "compat"
antispoof_ethertypes = [0x88cc, 0x8863]
"#;
    let c = Config::from_toml(text, Path::new("/etc/xen/xenplug.toml")).unwrap();
    assert_eq!(
        c.source.as_deref(),
        Some(Path::new("/etc/xen/xenplug.toml"))
    );
    assert_eq!(c.log_file.as_deref(), Some(Path::new("/tmp/x/hotplug.log")));
    assert_eq!(c.log_file_level, Level::Info);
    assert_eq!(c.stderr_level, Level::Warning);
    assert!(!c.syslog);
    assert_eq!(
        c.syslog_socket,
        PathBuf::from("/run/systemd/journal/dev-log")
    );
    assert_eq!(c.syslog_level, Level::Err);
    assert_eq!(c.lock_dir, PathBuf::from("/run/locks"));
    assert_eq!(c.lock_timeout, Duration::from_millis(12_500));
    assert_eq!(c.deadline, Duration::from_secs(20));
    assert_eq!(c.scripts_dir, PathBuf::from("/usr/local/xen/scripts"));
    assert_eq!(c.state_dir, PathBuf::from("/run/xenplug-state"));
    assert_eq!(c.libexec_bin_dir(), PathBuf::from("/usr/lib/xen-4.17/bin"));
    assert_eq!(c.hook_timeout, Duration::from_secs(3));
    assert!(c.hooks_fatal);
    assert_eq!(c.antispoof.as_deref(), Some("compat"));
    assert_eq!(c.antispoof_ethertypes, [0x88cc, 0x8863]);
    // An empty log_file disables the file.
    let c = Config::from_toml("log_file = \"\"", Path::new("f")).unwrap();
    assert_eq!(c.log_file, None);
}

#[test]
fn errors_are_precise() {
    let p = Path::new("/etc/xen/xenplug.toml");
    let m = |t: &str| Config::from_toml(t, p).unwrap_err().message();
    let unknown = m("syslog = true\n\nlock_timeout = 5\n");
    assert!(
        unknown.starts_with("config file /etc/xen/xenplug.toml line 3: unknown field `lock_timeout`, expected one of"),
        "{unknown}"
    );
    assert!(!unknown.contains('\n'));
    assert_eq!(
        m("stderr_level = \"loud\""),
        "/etc/xen/xenplug.toml: stderr_level = \"loud\" is not a level (err, warning, info, debug)"
    );
    assert_eq!(
        m("lock_timeout_secs = -1"),
        "/etc/xen/xenplug.toml: lock_timeout_secs = -1 is out of range (seconds, greater than 0, at most 3600)"
    );
    assert_eq!(
        m("lock_dir = \"relative/dir\""),
        "config file /etc/xen/xenplug.toml: lock_dir = \"relative/dir\" must be an absolute path"
    );
    assert_eq!(
        m("antispoof = \"strict\""),
        "/etc/xen/xenplug.toml: antispoof = \"strict\" is not an antispoofing mode (off, compat, enforce)"
    );
    assert_eq!(
        m("antispoof_ethertypes = [0x8100]"),
        "/etc/xen/xenplug.toml: antispoof_ethertypes: 0x8100 is not an ethertype enforce mode can allow (0x0600-0xffff; not IPv4, ARP or IPv6, which have their own rules, nor a VLAN tag)"
    );
    assert!(m("antispoof_ethertypes = [0x0800]").contains("0x0800 is not an ethertype"));
    assert!(m("antispoof_ethertypes = [70000]").contains("0x11170 is not an ethertype"));
    let ty = m("syslog = \"yes\"");
    assert!(
        ty.starts_with("config file /etc/xen/xenplug.toml line 1: invalid type"),
        "{ty}"
    );
}

#[test]
fn file_then_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("xenplug.toml");
    std::fs::write(
        &f,
        "lock_dir = \"/from/file\"\nstate_dir = \"/from/file/state\"\n",
    )
    .unwrap();
    let fs = f.display().to_string();
    let c = Config::load(&env(&[("XENPLUG_CONFIG", &fs)])).unwrap();
    assert_eq!(c.lock_dir, PathBuf::from("/from/file"));
    assert_eq!(c.source.as_deref(), Some(f.as_path()));
    let c = Config::load(&env(&[
        ("XENPLUG_CONFIG", &fs),
        ("XENPLUG_LOCK_DIR", "/from/env"),
        ("XENPLUG_STATE_DIR", "/env/state"),
        ("XENPLUG_LOG_FILE", ""),
        ("XENPLUG_SCRIPTS_DIR", "/env/scripts"),
        ("XENPLUG_SYSLOG", "0"),
        ("XENPLUG_SYSLOG_SOCKET", "/env/log.sock"),
        ("XENPLUG_LOCK_TIMEOUT", "1.5"),
        ("XENPLUG_DEADLINE", "12"),
        ("XENPLUG_STDERR_LEVEL", "debug"),
        ("XENPLUG_ANTISPOOF", "off"),
        ("XENPLUG_ANTISPOOF_ETHERTYPES", "0x88cc, 34915"),
    ]))
    .unwrap();
    assert_eq!(c.lock_dir, PathBuf::from("/from/env"));
    assert_eq!(c.state_dir, PathBuf::from("/env/state"));
    assert_eq!(c.log_file, None);
    assert_eq!(c.scripts_dir, PathBuf::from("/env/scripts"));
    assert!(!c.syslog);
    assert_eq!(c.syslog_socket, PathBuf::from("/env/log.sock"));
    assert_eq!(c.lock_timeout, Duration::from_millis(1500));
    assert_eq!(c.deadline, Duration::from_secs(12));
    assert_eq!(c.stderr_level, Level::Debug);
    assert_eq!(c.antispoof.as_deref(), Some("off"));
    assert_eq!(c.antispoof_ethertypes, [0x88cc, 0x8863]);
    let e = Config::load(&env(&[("XENPLUG_ANTISPOOF_ETHERTYPES", "0x86dd")])).unwrap_err();
    assert!(
        e.message().contains("0x86dd is not an ethertype"),
        "{}",
        e.message()
    );
    let e = Config::load(&env(&[
        ("XENPLUG_CONFIG", &fs),
        ("XENPLUG_LOCK_TIMEOUT", "soon"),
    ]))
    .unwrap_err();
    assert_eq!(
        e.message(),
        "XENPLUG_LOCK_TIMEOUT = \"soon\" is not a number of seconds"
    );
    let e = Config::load(&env(&[("XENPLUG_CONFIG", &fs), ("XENPLUG_DEADLINE", "0")])).unwrap_err();
    assert_eq!(
        e.message(),
        "XENPLUG_DEADLINE: value = 0 is out of range (seconds, greater than 0, at most 3600)"
    );
    let e = Config::load(&env(&[
        ("XENPLUG_CONFIG", &fs),
        ("XENPLUG_SYSLOG", "maybe"),
    ]))
    .unwrap_err();
    assert_eq!(
        e.message(),
        "XENPLUG_SYSLOG = \"maybe\" is not a boolean (1/0, true/false, yes/no, on/off)"
    );
}

#[test]
fn libexec_from_hotplugpath_sh() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("hotplugpath.sh"),
        "sbindir=\"/usr/sbin\"\nLIBEXEC_BIN=\"/usr/lib/xen-9.99/bin\"\n",
    )
    .unwrap();
    let c = Config {
        scripts_dir: tmp.path().to_path_buf(),
        ..Config::default()
    };
    assert_eq!(c.libexec_bin_dir(), PathBuf::from("/usr/lib/xen-9.99/bin"));
    let c = Config {
        scripts_dir: tmp.path().join("none"),
        ..Config::default()
    };
    assert_eq!(c.libexec_bin_dir(), PathBuf::from("/usr/lib/xen/bin"));
}
