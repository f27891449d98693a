//! The files the packages install, read by the programs' own parsers: the conffiles document
//! every key with its true default, and the examples are valid.

use std::path::{Path, PathBuf};

fn packaging(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(packaging(rel)).unwrap()
}

/// The `#key = value` lines of a commented conffile, uncommented.
fn uncomment(text: &str) -> String {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('#')?;
            let key = rest.split_once(" = ")?.0;
            (!key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '-'))
            .then(|| format!("{rest}\n"))
        })
        .collect()
}

fn keys_of(toml_text: &str) -> Vec<String> {
    toml_text
        .lines()
        .map(|l| l.split_once(" = ").unwrap().0.to_string())
        .collect()
}

#[test]
fn xenplug_toml_documents_every_key_with_its_default() {
    use xenplug_hotplug::Config;
    let text = read("etc/xen/xenplug.toml");
    let path = Path::new("/etc/xen/xenplug.toml");
    // As shipped: nothing set, the defaults.
    let shipped = Config::from_toml(&text, path).unwrap();
    assert_eq!(
        Config {
            source: None,
            ..shipped
        },
        Config::default()
    );
    // Every key of the runtime's reference (CONFIG.md) is there, and nothing else.
    let documented: Vec<String> = crate::md_table(crate::CONFIG_MD, "## Keys")
        .iter()
        .map(|r| r[0].trim_matches('`').to_string())
        .collect();
    let on = uncomment(&text);
    let mut keys = keys_of(&on);
    keys.sort();
    let mut want = documented.clone();
    want.sort();
    assert_eq!(keys, want);
    // Uncommented, every value is the default (the two without a fixed default show the
    // effective value).
    let all = Config::from_toml(&on, path).unwrap_or_else(|e| panic!("{e}\n{on}"));
    assert_eq!(all.antispoof.as_deref(), Some("enforce"));
    assert!(all.libexec_bin.is_some());
    assert_eq!(
        Config {
            source: None,
            antispoof: None,
            libexec_bin: None,
            ..all
        },
        Config::default()
    );
}

#[test]
fn agent_toml_documents_every_key_with_its_default() {
    use xenplug_guest_agent::cli::{load_config, AgentConfig};
    let t = tempfile::tempdir().unwrap();
    let shipped = packaging("etc/xenplug/agent.toml");
    assert_eq!(load_config(&shipped).unwrap(), AgentConfig::default());
    let on = t.path().join("agent.toml");
    std::fs::write(&on, uncomment(&read("etc/xenplug/agent.toml"))).unwrap();
    // deny_unknown_fields and every field set: every key is documented, each with the value
    // the agent uses when it is absent.
    assert_eq!(
        load_config(&on).unwrap(),
        AgentConfig {
            channels: vec![xenplug_guest_agent::DEFAULT_CHANNEL_NAME.to_string()],
            shutdown_program: Some("/sbin/shutdown".into()),
            live_network: Some(true),
            run_commands: Some(false),
            // Documented as examples: their default is "none" (detected; no default user).
            default_user: None,
            network_renderer: None,
            allow_rpcs: None,
            block_rpcs: None,
            fsfreeze_hook: Some(xenplug_guest_agent::cli::HookSetting::Enabled(true)),
            fsfreeze_timeout: Some(300),
            fsfreeze_thaw_after_channel_loss: Some(10),
            statedir: Some("/run/xenplug-agent".into()),
            guest_state: Some(toml::Value::String("auto".into())),
            guest_state_min_interval_ms: Some(1000),
            guest_state_refresh: Some(60),
        }
    );
}

#[test]
fn peer_policy_denies_by_default_and_its_examples_parse() {
    use xenplug_peer::policy::{Policy, Subject, Verdict};
    let text = read("etc/xenplug/peer.policy");
    let p = Policy::parse(&text).unwrap();
    assert_eq!(p.len(), 1);
    let ask = |p: &Policy| {
        p.decide(&Subject {
            command: "xenplug-request-config",
            vm_name: "web-01",
            vm_uuid: "6f1c7f4e-2b1a-4c3d-9e8f-0123456789ab",
            vm_class: "",
            flags: None,
        })
        .verdict
    };
    assert_eq!(ask(&p), Verdict::Deny);
    let examples: String = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.starts_with("allow") || l.starts_with("deny"))
        .map(|l| format!("{l}\n"))
        .collect();
    let all = Policy::parse(&format!("{text}{examples}")).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(ask(&all), Verdict::Allow);
}

#[test]
fn store_examples_are_valid_entries() {
    use xenplug_peer::store::{Lookup, Store};
    let mut s = Store::new(packaging("examples/store"));
    s.reload().unwrap();
    assert_eq!(s.errors(), Vec::<(String, String)>::new());
    assert_eq!(s.len(), 2);
    match s.lookup(Some("6f1c7f4e-2b1a-4c3d-9e8f-0123456789ab"), Some("x")) {
        Lookup::Found { doc, .. } => assert_eq!(doc.instance_id, "i-0042"),
        other => panic!("{other:?}"),
    }
    match s.lookup(None, Some("db-01")) {
        Lookup::Found { doc, .. } => {
            assert_eq!(doc.instance_id, "i-0043");
            assert_eq!(doc.value["hostname"], "db-01");
        }
        other => panic!("{other:?}"),
    }
    let meta = s.meta(Some("6f1c7f4e-2b1a-4c3d-9e8f-0123456789ab"), None);
    assert_eq!(meta.class, "web");
}

#[test]
fn etcd_drop_in_and_environment_give_a_valid_daemon_command() {
    use clap::Parser;
    use xenplug_peer::cli::{Cli, Cmd};
    use xenplug_peer::etcd::StoreSpec;
    let env = read("examples/etcd/peer-etcd.env");
    let vars: std::collections::BTreeMap<&str, &str> = env
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('='))
        .collect();
    let dropin = read("examples/etcd/xenplug-peer-etcd.conf");
    // The drop-in resets ExecStart and sets one; systemd expands ${VAR} from the environment file.
    let exec: Vec<&str> = dropin
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .collect();
    assert_eq!(exec[0], "", "ExecStart= must be reset first");
    let mut line = exec[1].to_string();
    for (k, v) in &vars {
        line = line.replace(&format!("${{{k}}}"), v);
    }
    assert!(!line.contains("${"), "{line}");
    let argv: Vec<&str> = line.split_whitespace().collect();
    assert!(argv[0].ends_with("/xenplug-peer"));
    let cli = Cli::try_parse_from(argv).unwrap();
    let Cmd::Daemon(d) = cli.cmd else {
        panic!("not the daemon")
    };
    let StoreSpec::Etcd(url) = d.store else {
        panic!("not an etcd store")
    };
    assert_eq!(url.prefix, "/xenplug");
    assert!(url.tls && vars.contains_key("ETCDCTL_CACERT"));
    // The sandbox is relaxed only as far as etcd needs.
    for want in [
        "PrivateNetwork=no",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "IPAddressAllow=",
        "EnvironmentFile=/etc/xenplug/peer-etcd.env",
    ] {
        assert!(dropin.lines().any(|l| l.starts_with(want)), "{want}");
    }
    // …and the packaged unit itself still has no network.
    let unit = std::fs::read_to_string(packaging("../udev-rules/xenplug-peer.service")).unwrap();
    for want in [
        "PrivateNetwork=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "IPAddressDeny=any",
    ] {
        assert!(unit.lines().any(|l| l == want), "{want}");
    }
}

#[test]
fn every_page_renders_without_groff_warnings() {
    // man(1) as lintian runs it: any warning is a defect in the page.
    if !xenplug_testkit::require_program("man") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    crate::run(t.path()).unwrap();
    let mut pages = Vec::new();
    for pkg in ["xenplug", "xenplug-agent"] {
        for sec in ["man5", "man8"] {
            if let Ok(rd) = std::fs::read_dir(t.path().join(pkg).join("man").join(sec)) {
                pages.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    assert!(pages.len() > 20, "{pages:?}");
    for p in pages {
        if std::fs::read_to_string(&p).unwrap().starts_with(".so ") {
            continue;
        }
        let out = std::process::Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
            .arg(&p)
            .env("LC_ALL", "C.UTF-8")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {out:?}", p.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.trim().is_empty(), "{}: {err}", p.display());
    }
}
