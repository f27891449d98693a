//! argv/env parsing for every form libxl uses, and bad input.

use xenplug_hotplug::{Action, Failure, Invocation, Raw};

const BLOCK_ENV: &[(&str, &str)] = &[
    ("script", "/etc/xen/scripts/block"),
    ("XENBUS_TYPE", "vbd"),
    ("XENBUS_PATH", "backend/vbd/5/51712"),
    ("XENBUS_BASE_PATH", "backend"),
];

const VIF_ENV: &[(&str, &str)] = &[
    ("script", "/etc/xen/scripts/vif-bridge"),
    ("XENBUS_TYPE", "vif"),
    ("XENBUS_PATH", "backend/vif/7/0"),
    ("XENBUS_BASE_PATH", "backend"),
    ("vif", "vif7.0"),
    ("netdev", ""),
];

fn parse(argv: &[&str], env: &[(&str, &str)]) -> Result<Invocation, Failure> {
    Invocation::parse(Raw::new(argv, env))
}

#[test]
fn block_add_and_remove() {
    for (word, action) in [("add", Action::Add), ("remove", Action::Remove)] {
        let inv = parse(&["/etc/xen/scripts/block", word], BLOCK_ENV).unwrap();
        assert_eq!(inv.program, "block");
        assert_eq!(inv.action, action);
        assert!(inv.vars.is_empty());
        assert_eq!(inv.env.xenbus_path, "backend/vbd/5/51712");
        assert_eq!(inv.env.xenbus_type, "vbd");
        assert_eq!(inv.env.xenbus_base_path, "backend");
        assert_eq!(inv.env.script, "/etc/xen/scripts/block");
        assert_eq!(inv.env.vif, "");
        assert_eq!(inv.args, vec![word.to_string()]);
    }
}

#[test]
fn vif_online_offline_type_if_vif() {
    for (word, action) in [("online", Action::Online), ("offline", Action::Offline)] {
        let inv = parse(
            &["/etc/xen/scripts/vif-bridge", word, "type_if=vif"],
            VIF_ENV,
        )
        .unwrap();
        assert_eq!(inv.program, "vif-bridge");
        assert_eq!(inv.action, action);
        assert_eq!(inv.vars.get("type_if").map(String::as_str), Some("vif"));
        assert_eq!(inv.var("type_if"), Some("vif"));
        assert_eq!(inv.env.vif, "vif7.0");
        assert_eq!(inv.env.netdev, "");
        assert_eq!(inv.env.xenbus_type, "vif");
    }
}

#[test]
fn vif_add_remove_type_if_tap() {
    let mut env = VIF_ENV.to_vec();
    env.push(("INTERFACE", "vif7.0-emu"));
    for (word, action) in [("add", Action::Add), ("remove", Action::Remove)] {
        let inv = parse(&["vif-bridge", word, "type_if=tap"], &env).unwrap();
        assert_eq!(inv.action, action);
        assert_eq!(inv.var("type_if"), Some("tap"));
        assert_eq!(inv.env.interface, "vif7.0-emu");
    }
}

#[test]
fn extra_key_value_arguments_and_order() {
    // k=v before the action is allowed (findCommand takes the first word without '=').
    let inv = parse(
        &[
            "vif-bridge",
            "bridge=xenbr1",
            "online",
            "type_if=vif",
            "ip=10.0.0.2 10.0.0.3",
        ],
        VIF_ENV,
    )
    .unwrap();
    assert_eq!(inv.action, Action::Online);
    assert_eq!(inv.var("bridge"), Some("xenbr1"));
    assert_eq!(inv.var("ip"), Some("10.0.0.2 10.0.0.3"));
    // Values may contain '=' and may be empty.
    let inv = parse(&["vif-bridge", "online", "a=b=c", "empty="], VIF_ENV).unwrap();
    assert_eq!(inv.var("a"), Some("b=c"));
    assert_eq!(inv.var("empty"), Some(""));
    assert_eq!(inv.var_or("empty", "dflt"), "dflt");
    // The last occurrence wins, as with eval.
    let inv = parse(&["vif-bridge", "online", "bridge=a", "bridge=b"], VIF_ENV).unwrap();
    assert_eq!(inv.var("bridge"), Some("b"));
}

#[test]
fn var_prefers_arguments_over_environment() {
    let mut env = VIF_ENV.to_vec();
    env.push(("bridge", "from-env"));
    env.push(("type_if", "vif"));
    let inv = parse(&["vif-bridge", "add", "type_if=tap"], &env).unwrap();
    assert_eq!(inv.var("type_if"), Some("tap"));
    assert_eq!(inv.var("bridge"), Some("from-env"));
    assert_eq!(inv.var("vif"), Some("vif7.0"));
    assert_eq!(inv.var("nonexistent"), None);
    assert_eq!(inv.var_or("nonexistent", "x"), "x");
}

fn err(argv: &[&str], env: &[(&str, &str)]) -> String {
    match parse(argv, env) {
        Ok(inv) => panic!("expected an error, got {inv:?}"),
        Err(Failure::Busy(m)) => panic!("expected Error, got Busy({m})"),
        Err(Failure::Error(m)) => {
            assert!(!m.contains('\n'), "multi-line message {m:?}");
            m
        }
    }
}

#[test]
fn missing_xenbus_path() {
    let env: Vec<_> = BLOCK_ENV
        .iter()
        .copied()
        .filter(|(k, _)| *k != "XENBUS_PATH")
        .collect();
    let m = err(&["block", "add"], &env);
    assert!(m.starts_with("XENBUS_PATH is not set"), "{m}");
    let mut env_empty = env.clone();
    env_empty.push(("XENBUS_PATH", ""));
    assert!(err(&["block", "add"], &env_empty).starts_with("XENBUS_PATH is not set"));
}

#[test]
fn unknown_action() {
    assert_eq!(
        err(&["block", "frobnicate"], BLOCK_ENV),
        "Invalid command: frobnicate"
    );
    // An action outside the accepted set, checked before XENBUS_PATH as block-common.sh does.
    let r = Invocation::parse_for(Raw::new(&["block", "online"], &[]), Action::BLOCK);
    assert_eq!(
        r.unwrap_err(),
        Failure::Error("Invalid command: online".into())
    );
    let inv = parse(&["block", "online"], BLOCK_ENV).unwrap();
    assert_eq!(
        inv.check(Action::BLOCK).unwrap_err().message(),
        "Invalid command: online"
    );
    assert!(inv.check(Action::VIF).is_ok());
}

#[test]
fn reserved_names_are_refused_as_arguments() {
    for key in [
        "PATH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "IFS",
        "BASH_ENV",
        "LC_ALL",
        "GCONV_PATH",
        "PYTHONPATH",
        "XENBUS_PATH",
        "XENSTORED_PATH",
        "XENPLUG_CONFIG",
    ] {
        let arg = format!("{key}=/tmp/evil");
        assert_eq!(
            err(&["vif-bridge", "online", "type_if=vif", &arg], VIF_ENV),
            format!(
                "refused argument '{key}=…': {key} is reserved (it would change how the script's children and hooks run)"
            )
        );
    }
    // The script's own variables, and names that merely contain a reserved one, are fine.
    for ok in [
        "bridge=xenbr0",
        "antispoof=off",
        "MYPATH=x",
        "path=x",
        "dhcp=yes",
    ] {
        assert!(
            parse(&["vif-bridge", "online", ok], VIF_ENV).is_ok(),
            "{ok}"
        );
    }
    // The environment itself is the caller's: PATH there is not an argument.
    let mut env = VIF_ENV.to_vec();
    env.push(("PATH", "/usr/bin"));
    assert!(parse(&["vif-bridge", "online"], &env).is_ok());
}

#[test]
fn malformed_arguments() {
    assert_eq!(
        err(&["vif-bridge", "online", "=x"], VIF_ENV),
        "malformed argument '=x': expected key=value with a non-empty key"
    );
    assert_eq!(
        err(&["vif-bridge", "online", "1abc=x"], VIF_ENV),
        "malformed argument '1abc=x': '1abc' is not a valid variable name"
    );
    assert_eq!(
        err(&["vif-bridge", "online", "a-b=x"], VIF_ENV),
        "malformed argument 'a-b=x': 'a-b' is not a valid variable name"
    );
    assert_eq!(
        err(&["block", "add", "remove"], BLOCK_ENV),
        "unexpected argument 'remove' after the action 'add'"
    );
}

#[test]
fn empty_argv_and_missing_action() {
    assert_eq!(
        err(&[], BLOCK_ENV),
        "empty argument list: expected <script> <action> [key=value…]"
    );
    assert_eq!(
        err(&["block"], BLOCK_ENV),
        "missing action: expected add, remove, online or offline"
    );
    assert_eq!(
        err(&["vif-bridge", "type_if=vif"], VIF_ENV),
        "missing action: expected add, remove, online or offline"
    );
}

#[test]
fn action_strings_round_trip() {
    for a in Action::ALL {
        assert_eq!(a.as_str().parse::<Action>().unwrap(), *a);
        assert_eq!(a.to_string(), a.as_str());
    }
    assert!(Action::Remove.is_teardown() && Action::Offline.is_teardown());
    assert!(!Action::Add.is_teardown() && !Action::Online.is_teardown());
}

#[test]
fn from_process_reads_this_process() {
    let raw = Raw::from_process();
    assert!(!raw.argv.is_empty());
    assert_eq!(raw.env.get("PATH").cloned(), std::env::var("PATH").ok());
}
