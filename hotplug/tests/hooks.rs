//! `<scripts_dir>/<devtype>-<hook>.d/*.hook`: order, environment, failures, timeouts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{raw, FakeXs, Scratch};
use xenplug_hotplug::hooks::list_hooks;
use xenplug_hotplug::{run_hooks, run_hooks_with, Config, Context, Invocation, Level, Log};

fn hook(dir: &Path, name: &str, body: &str, exec: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    let mode = if exec { 0o755 } else { 0o644 };
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn ctx_parts(s: &Scratch) -> (Invocation, Config) {
    let mut env = s.env(Some("backend/vif/7/0"));
    env.push(("vif".into(), "vif7.0".into()));
    env.push(("LC_ALL".into(), "de_DE.UTF-8".into()));
    let r = raw(
        &[
            "/etc/xen/scripts/vif-bridge",
            "online",
            "type_if=vif",
            "bridge=xenbr1",
        ],
        &env,
    );
    let cfg = Config::load(&r.env).unwrap();
    (Invocation::parse(r).unwrap(), cfg)
}

#[test]
fn hooks_run_in_order_with_the_script_environment() {
    let s = Scratch::new();
    let d = s.scripts_dir().join("vif-post.d");
    let out = s.path().join("out");
    let rec = format!(
        "echo \"$0 command=$command type_if=$type_if bridge=$bridge vif=$vif XENBUS_PATH=$XENBUS_PATH dev=$dev LANG=$LANG LC_ALL=${{LC_ALL-unset}}\" >> {}",
        out.display()
    );
    hook(&d, "20-second.hook", &rec, true);
    hook(&d, "10-first.hook", &rec, true);
    hook(&d, "15-not-executable.hook", &rec, false);
    hook(&d, "05-wrong-suffix.sh", &rec, true);
    let xs = FakeXs::new();
    let (inv, cfg) = ctx_parts(&s);
    let log = Log::new("vif-bridge", &cfg);
    let ctx = Context::new(inv, &xs, log, cfg);
    let listed: Vec<String> = list_hooks(&ctx, "vif", "post")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, vec!["10-first.hook", "20-second.hook"]);
    run_hooks_with(&ctx, "vif", "post", &[("dev", "vif7.0")]).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let tail = "command=online type_if=vif bridge=xenbr1 vif=vif7.0 XENBUS_PATH=backend/vif/7/0 dev=vif7.0 LANG=POSIX LC_ALL=unset";
    assert_eq!(
        text,
        format!(
            "{} {tail}\n{} {tail}\n",
            d.join("10-first.hook").display(),
            d.join("20-second.hook").display()
        )
    );
    // No directory: nothing to do.
    run_hooks(&ctx, "block", "post").unwrap();
}

#[test]
fn failing_hook_is_logged_and_the_rest_run() {
    let s = Scratch::new();
    let d = s.scripts_dir().join("vif-post.d");
    let out = s.path().join("out");
    hook(&d, "10-fails.hook", "exit 4", true);
    hook(
        &d,
        "20-runs.hook",
        &format!("echo ran > {}", out.display()),
        true,
    );
    let xs = FakeXs::new();
    let (inv, cfg) = ctx_parts(&s);
    let log = Log::new("vif-bridge", &cfg);
    let ctx = Context::new(inv, &xs, log, cfg);
    run_hooks(&ctx, "vif", "post").unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n");
    let log = s.log_text();
    assert!(
        log.contains(&format!(
            "warning: hook {} failed (exit status: 4) (ignored)",
            d.join("10-fails.hook").display()
        )),
        "{log}"
    );
}

#[test]
fn hooks_fatal_stops_at_first_failure() {
    let s = Scratch::new();
    let d = s.scripts_dir().join("vif-post.d");
    let out = s.path().join("out");
    hook(&d, "10-fails.hook", "exit 4", true);
    hook(
        &d,
        "20-runs.hook",
        &format!("echo ran > {}", out.display()),
        true,
    );
    let xs = FakeXs::new();
    let (inv, mut cfg) = ctx_parts(&s);
    cfg.hooks_fatal = true;
    let log = Log::stderr_only("vif-bridge", Level::Err).with_stderr(Box::new(std::io::sink()));
    let ctx = Context::new(inv, &xs, log, cfg);
    let e = run_hooks(&ctx, "vif", "post").unwrap_err();
    assert_eq!(
        e.message(),
        format!(
            "hook {} failed (exit status: 4)",
            d.join("10-fails.hook").display()
        )
    );
    assert!(!out.exists());
}

#[test]
fn arguments_never_override_the_hook_environment() {
    let s = Scratch::new();
    let d = s.scripts_dir().join("vif-post.d");
    let out = s.path().join("out");
    hook(
        &d,
        "10-env.hook",
        &format!(
            "echo \"PATH=$PATH LD_PRELOAD=${{LD_PRELOAD-unset}}\" > {}",
            out.display()
        ),
        true,
    );
    let xs = FakeXs::new();
    let (mut inv, cfg) = ctx_parts(&s);
    // Parsing refuses these names; an invocation built by hand must not smuggle them either.
    inv.vars.insert("PATH".into(), "/tmp/evil".into());
    inv.vars.insert("LD_PRELOAD".into(), "/tmp/evil.so".into());
    let log = Log::new("vif-bridge", &cfg);
    let ctx = Context::new(inv, &xs, log, cfg);
    run_hooks(&ctx, "vif", "post").unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("/tmp/evil"), "{text}");
    assert!(text.starts_with("PATH=/usr/bin:/usr/sbin:"), "{text}");
    assert!(text.contains("LD_PRELOAD=unset"), "{text}");
}

/// True when `pid` has exited (gone, or a zombie waiting for its new parent).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_timed_out_hook_is_killed_with_everything_it_started() {
    let s = Scratch::new();
    let d = s.scripts_dir().join("vif-post.d");
    let pids = s.path().join("pids");
    // The hook starts a background job (its own child), then a foreground one.
    hook(
        &d,
        "10-forks.hook",
        &format!(
            "sleep 30 &\necho $! > {0}\nsh -c 'echo $$ >> {0}; exec sleep 30'",
            pids.display()
        ),
        true,
    );
    let xs = FakeXs::new();
    let (inv, mut cfg) = ctx_parts(&s);
    // Long enough for the hook to have started both on a busy machine.
    cfg.hook_timeout = Duration::from_secs(2);
    let log = Log::stderr_only("vif-bridge", Level::Err).with_stderr(Box::new(std::io::sink()));
    let ctx = Context::new(inv, &xs, log, cfg);
    run_hooks(&ctx, "vif", "post").unwrap();
    let pids: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    let left: Vec<i32> = pids.clone();
    xenplug_testkit::wait_until("the hook's children to die", Duration::from_secs(5), || {
        left.iter().all(|p| dead(*p))
    });
}

#[test]
fn slow_hook_is_killed() {
    let s = Scratch::new();
    let d = s.scripts_dir().join("vif-post.d");
    hook(&d, "10-slow.hook", "exec sleep 30", true);
    let xs = FakeXs::new();
    let (inv, mut cfg) = ctx_parts(&s);
    cfg.hooks_fatal = true;
    cfg.hook_timeout = Duration::from_millis(300);
    let log = Log::stderr_only("vif-bridge", Level::Err).with_stderr(Box::new(std::io::sink()));
    let ctx = Context::new(inv, &xs, log, cfg);
    let t0 = Instant::now();
    let e = run_hooks(&ctx, "vif", "post").unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(
        e.message(),
        format!(
            "hook {} timed out after 0.3 s and was killed",
            d.join("10-slow.hook").display()
        )
    );
}
