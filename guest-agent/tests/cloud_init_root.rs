//! cloud-init itself as the oracle for user-data: every seed of the corpus
//! (channel-proto/tests/corpus/seeds) is applied twice to copies of one Debian 12 minbase tree
//! (tools/guest-root.sh): once by Debian's cloud-init 22.4 (run in the tree with chroot, in
//! private mount, network, UTS and PID namespaces, its NoCloud datasource reading the seed
//! directory), once by xenplug-agent's apply with the image's default user taken from the
//! tree's own /etc/cloud/cloud.cfg. The two trees must hold the same result:
//!
//! * `/etc/passwd`, `/etc/group`, `/etc/gshadow`, `/etc/subuid`, `/etc/subgid`, `/etc/sudoers`
//!   byte for byte; `/etc/shadow` field for field (a password given in plain text is hashed with
//!   different salts: both hashes must verify it);
//! * every home directory: the same files, modes and owners;
//! * each user's and root's authorized keys (as sets of key lines: xenplug keeps its keys in a
//!   marked block), the sudo rules (cloud-init's 90-cloud-init-users and xenplug's
//!   90-xenplug-agent-users as sets of rule lines);
//! * every written file (content, mode, owner), what `bootcmd`/`runcmd` produced, the host
//!   name, the names `/etc/hosts` gives 127.0.1.1, the time zone, timesyncd's servers, the CA
//!   bundle, and sshd's effective `PasswordAuthentication` (`sshd -T`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use xenplug_channel::config::User;
use xenplug_channel::{ConfigDoc, NoCloudSeed};
use xenplug_guest_agent::apply::{self, ApplyOptions, Ctx, Host};

/// The cached tree, or a CI failure / local skip.
fn guest_tree() -> Option<PathBuf> {
    let p = std::env::var_os("XENPLUG_GUEST_ROOT")
        .map(|d| PathBuf::from(d).join("current/root"))
        .unwrap_or_else(|| PathBuf::from("/var/cache/xenplug-guest-root/current/root"));
    let ok = p.join("usr/bin/cloud-init").exists();
    xenplug_testkit::require(
        ok,
        "needs the Debian tree with cloud-init: run tools/guest-root.sh",
    )
    .then_some(p)
}

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../channel-proto/tests/corpus/seeds")
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

/// A copy of the tree that removes itself.
struct Tree(tempfile::TempDir);

impl Tree {
    fn copy(of: &Path, tag: &str) -> Tree {
        let d = tempfile::Builder::new()
            .prefix(&format!("xenplug-ci-{tag}-"))
            .tempdir_in("/var/tmp")
            .unwrap();
        sh(Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(format!("{}/.", of.display()))
            .arg(d.path()));
        // The tree's dev/console is this machine's console: make it a file.
        let console = d.path().join("dev/console");
        let _ = std::fs::remove_file(&console);
        std::fs::write(&console, "").unwrap();
        Tree(d)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

const ORACLE_CFG: &str = "datasource_list: [NoCloud, None]
cloud_init_modules: [bootcmd, write-files, set_hostname, update_hostname, update_etc_hosts, ca-certs, users-groups, ssh]
cloud_config_modules: [set-passwords, ntp, timezone, runcmd]
cloud_final_modules: [write-files-deferred, scripts-user, final-message]
";

/// Debian's cloud-init on `tree` with the seed in `seed`.
fn run_cloud_init(tree: &Path, seed: &Path) -> String {
    let sd = tree.join("var/lib/cloud/seed/nocloud");
    std::fs::create_dir_all(&sd).unwrap();
    for f in ["meta-data", "user-data"] {
        if seed.join(f).exists() {
            std::fs::copy(seed.join(f), sd.join(f)).unwrap();
        }
    }
    // Only the modules this comparison is about (the others need a network or packages).
    // Booted as the image would be: the kernel's host name is its /etc/hostname.
    std::fs::write(
        tree.join("etc/cloud/cloud.cfg.d/99-xenplug-oracle.cfg"),
        ORACLE_CFG,
    )
    .unwrap();
    let r = tree.display();
    let script = format!(
        "mount -t proc proc {r}/proc && mount -t sysfs sys {r}/sys && mount -t tmpfs tmpfs {r}/run && \
         hostname \"$(cat {r}/etc/hostname)\" && \
         for st in 'init --local' 'init' 'modules --mode config' 'modules --mode final'; do \
           chroot {r} /usr/bin/cloud-init $st || echo \"stage $st: $?\"; done"
    );
    let out = Command::new("unshare")
        .args([
            "-m",
            "-n",
            "-u",
            "-p",
            "-f",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct FakeHost(String);
impl Host for FakeHost {
    fn set_hostname(&mut self, name: &str) -> anyhow::Result<()> {
        self.0 = name.into();
        Ok(())
    }
    fn hostname(&self) -> anyhow::Result<String> {
        Ok(self.0.clone())
    }
}

/// The tree's own default user (cloud.cfg `system_info.default_user`), as the agent's
/// `[default-user]` would say it.
fn image_default_user(tree: &Path) -> User {
    let text = std::fs::read_to_string(tree.join("etc/cloud/cloud.cfg")).unwrap();
    let v: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let du = v["system_info"]["default_user"].clone();
    let json = serde_json::to_value(du).unwrap();
    serde_json::from_value(json).unwrap()
}

fn run_agent(tree: &Path, seed: &Path) -> Result<serde_json::Value, String> {
    let read = |f: &str| std::fs::read_to_string(seed.join(f)).ok();
    let doc = ConfigDoc::from_nocloud(&NoCloudSeed {
        meta_data: read("meta-data").unwrap(),
        user_data: read("user-data"),
        network_config: None,
        generation: Some(1),
    })
    .map_err(|e| e.to_string())?;
    let opts = ApplyOptions {
        default_user: Some(image_default_user(tree)),
        run_commands: true,
        network_renderer: None,
    };
    // The kernel's name at boot is the image's /etc/hostname (systemd sets it from there).
    let booted = std::fs::read_to_string(tree.join("etc/hostname")).unwrap();
    let mut host = FakeHost(booted.trim().to_string());
    let mut ctx = Ctx {
        root: tree,
        host: &mut host,
        net: None,
        tools: &mut xenplug_guest_agent::tools::RealTools,
        opts: &opts,
    };
    apply::apply(&doc, &mut ctx)
        .map(|r| serde_json::to_value(r).unwrap())
        .map_err(|e| format!("{e:#}"))
}

fn read(tree: &Path, p: &str) -> String {
    std::fs::read_to_string(tree.join(p.trim_start_matches('/'))).unwrap_or_default()
}

/// name → fields of a colon-separated database.
fn db(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<String> = l.split(':').map(str::to_string).collect();
            (f[0].clone(), f)
        })
        .collect()
}

/// Every file under `dir` (relative path, kind, mode, uid, gid, and content for files).
fn listing(tree: &Path, dir: &str) -> Vec<String> {
    let root = tree.join(dir.trim_start_matches('/'));
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(&root).unwrap().display().to_string();
            // Keys are compared as sets below (xenplug marks its block).
            if rel.ends_with(".ssh/authorized_keys") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let body = if m.is_file() {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
            } else {
                String::new()
            };
            out.push(format!(
                "{rel} {} {:o} {}:{} {body:?}",
                if m.is_dir() { "d" } else { "f" },
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn key_lines(tree: &Path, home: &str) -> BTreeSet<String> {
    read(tree, &format!("{home}/.ssh/authorized_keys"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn rule_lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// sshd's effective PasswordAuthentication in `tree` (sshd -T, with a throwaway host key).
fn sshd_password_auth(tree: &Path) -> String {
    let key = tree.join("var/tmp/oracle_host_key");
    if !key.exists() {
        sh(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key));
    }
    let r = tree.display();
    let out = sh(Command::new("unshare").args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!(
            "mount -t tmpfs tmpfs {r}/run && mkdir -p {r}/run/sshd && chroot {r} /usr/sbin/sshd -T -h /var/tmp/oracle_host_key"
        ),
    ]));
    out.lines()
        .find_map(|l| l.strip_prefix("passwordauthentication "))
        .unwrap_or("?")
        .to_string()
}

/// The names /etc/hosts gives 127.0.1.1.
fn hosts_names(tree: &Path) -> BTreeSet<String> {
    read(tree, "/etc/hosts")
        .lines()
        .filter(|l| l.split_whitespace().next() == Some("127.0.1.1"))
        .flat_map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn timesyncd_servers(tree: &Path, file: &str) -> String {
    read(tree, file)
        .lines()
        .find_map(|l| l.strip_prefix("NTP="))
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// libxcrypt's verdict (any algorithm it knows: yescrypt, SHA-512, …).
fn crypt_verifies(pw: &str, hash: &str) -> bool {
    let out = Command::new("python3")
        .args(["-W", "ignore", "-c", "import crypt, sys; sys.exit(0 if crypt.crypt(sys.argv[1], sys.argv[2]) == sys.argv[2] else 1)", pw, hash])
        .status()
        .unwrap();
    out.success()
}

/// The plain-text passwords of the corpus (the seeds give them in the clear).
const PLAIN: &[(&str, &str)] = &[
    ("carol", "Carol-2032!"),
    ("frank", "frank-secret"),
    ("admin", "admin-secret"),
];

fn compare(seed: &str, ci: &Path, xp: &Path) {
    let ctx = |what: &str| format!("{seed}: {what} differs (cloud-init left, xenplug right)");
    for f in [
        "/etc/passwd",
        "/etc/group",
        "/etc/gshadow",
        "/etc/subuid",
        "/etc/subgid",
        "/etc/sudoers",
        "/etc/hostname",
    ] {
        assert_eq!(read(ci, f), read(xp, f), "{}", ctx(f));
    }
    let (s1, s2) = (db(&read(ci, "/etc/shadow")), db(&read(xp, "/etc/shadow")));
    assert_eq!(
        s1.keys().collect::<Vec<_>>(),
        s2.keys().collect::<Vec<_>>(),
        "{}",
        ctx("shadow users")
    );
    for (name, a) in &s1 {
        let b = &s2[name];
        match PLAIN.iter().find(|(n, _)| n == name) {
            Some((_, pw)) if a[1] != b[1] => {
                // Debian's chpasswd makes yescrypt, the agent SHA-512 crypt: both must verify
                // the password (libxcrypt through Python's crypt is the judge).
                for h in [&a[1], &b[1]] {
                    assert!(
                        crypt_verifies(pw, h.trim_start_matches('!')),
                        "{seed}: {name}'s hash {h} does not verify"
                    );
                }
                assert_eq!(
                    a[1].starts_with('!'),
                    b[1].starts_with('!'),
                    "{}",
                    ctx("lock")
                );
                assert_eq!(a[2..], b[2..], "{}", ctx(&format!("shadow of {name}")));
            }
            _ => assert_eq!(a, b, "{}", ctx(&format!("shadow of {name}"))),
        }
    }
    for d in [
        "/home",
        "/srv",
        "/etc/motd.d",
        "/etc/default",
        "/opt",
        "/var/tmp",
    ] {
        let (a, b): (Vec<String>, Vec<String>) = (listing(ci, d), listing(xp, d));
        let a: BTreeSet<&String> = a
            .iter()
            .filter(|l| !l.starts_with("oracle_host_key"))
            .collect();
        let b: BTreeSet<&String> = b
            .iter()
            .filter(|l| !l.starts_with("oracle_host_key"))
            .collect();
        let short = |v: Vec<&&String>| -> Vec<String> {
            v.iter().map(|l| l.chars().take(120).collect()).collect()
        };
        assert!(
            a == b,
            "{}: only cloud-init: {:?}; only xenplug: {:?}",
            ctx(d),
            short(a.difference(&b).collect()),
            short(b.difference(&a).collect())
        );
    }
    for (name, home) in db(&read(ci, "/etc/passwd"))
        .values()
        .map(|f| (f[0].clone(), f[5].clone()))
    {
        assert_eq!(
            key_lines(ci, &home),
            key_lines(xp, &home),
            "{}",
            ctx(&format!("keys of {name}"))
        );
    }
    assert_eq!(
        rule_lines(&read(ci, "/etc/sudoers.d/90-cloud-init-users")),
        rule_lines(&read(xp, "/etc/sudoers.d/90-xenplug-agent-users")),
        "{}",
        ctx("sudo rules")
    );
    for f in ["/etc/issue", "/etc/timezone"] {
        assert_eq!(read(ci, f), read(xp, f), "{}", ctx(f));
    }
    assert_eq!(
        std::fs::read_link(ci.join("etc/localtime")).ok(),
        std::fs::read_link(xp.join("etc/localtime")).ok(),
        "{}",
        ctx("/etc/localtime")
    );
    assert_eq!(hosts_names(ci), hosts_names(xp), "{}", ctx("/etc/hosts"));
    assert_eq!(
        timesyncd_servers(ci, "/etc/systemd/timesyncd.conf.d/cloud-init.conf"),
        timesyncd_servers(xp, "/etc/systemd/timesyncd.conf.d/xenplug-agent.conf"),
        "{}",
        ctx("timesyncd servers")
    );
    assert_eq!(
        read(ci, "/etc/ssl/certs/ca-certificates.crt"),
        read(xp, "/etc/ssl/certs/ca-certificates.crt"),
        "{}",
        ctx("CA bundle")
    );
    assert_eq!(
        sshd_password_auth(ci),
        sshd_password_auth(xp),
        "{}",
        ctx("sshd")
    );
}

#[test]
fn the_agent_leaves_the_tree_cloud_init_leaves() {
    if !xenplug_testkit::require_root()
        || !xenplug_testkit::require_program("unshare")
        || !xenplug_testkit::require_program("ssh-keygen")
    {
        return;
    }
    let Some(tree) = guest_tree() else {
        return;
    };
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(seeds_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 4);
    for seed in seeds {
        let name = seed.file_name().unwrap().to_string_lossy().into_owned();
        let ci = Tree::copy(&tree, "cloud-init");
        let xp = Tree::copy(&tree, "xenplug");
        let log = run_cloud_init(ci.path(), &seed);
        let ci_log = read(ci.path(), "/var/log/cloud-init.log");
        let res = run_agent(xp.path(), &seed).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name}: xenplug: {res}");
        assert_eq!(res["applied"], serde_json::json!(true));
        // cloud-init ran its modules (the ones restarting services fail in a chroot).
        assert!(
            ci_log.contains("running 'modules:final'"),
            "{name}: cloud-init did not finish:\n{log}\n{ci_log}"
        );
        compare(&name, ci.path(), xp.path());
    }
}

/// All or nothing with the real shadow-utils: a generation that creates groups and users,
/// sets passwords, sudo rules and keys, then fails (a deferred file for an owner that does not
/// exist) leaves the tree's account databases and homes exactly as they were.
#[test]
fn a_failed_generation_takes_its_users_and_groups_back() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let Some(tree) = guest_tree() else {
        return;
    };
    let xp = Tree::copy(&tree, "rollback");
    let files = [
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/subuid",
        "/etc/subgid",
        "/etc/sudoers",
    ];
    let before: Vec<String> = files.iter().map(|f| read(xp.path(), f)).collect();
    let homes = listing(xp.path(), "/home");
    let seed = seeds_dir().join("users-full");
    let mut ud = std::fs::read_to_string(seed.join("user-data")).unwrap();
    ud.push_str("write_files:\n  - path: /etc/late\n    content: x\n    owner: nosuchuser\n    defer: true\n");
    let doc = ConfigDoc::from_nocloud(&NoCloudSeed {
        meta_data: std::fs::read_to_string(seed.join("meta-data")).unwrap(),
        user_data: Some(ud),
        network_config: None,
        generation: Some(1),
    })
    .unwrap();
    let opts = ApplyOptions {
        default_user: Some(image_default_user(xp.path())),
        run_commands: false,
        network_renderer: None,
    };
    let mut host = FakeHost("vm".into());
    let e = apply::apply(
        &doc,
        &mut Ctx {
            root: xp.path(),
            host: &mut host,
            net: None,
            tools: &mut xenplug_guest_agent::tools::RealTools,
            opts: &opts,
        },
    )
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("nosuchuser") && e.contains("everything it changed was undone"),
        "{e}"
    );
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&read(xp.path(), f), b, "{f} after the rollback");
    }
    assert_eq!(listing(xp.path(), "/home"), homes);
    assert!(!xp.path().join("srv/carol").exists());
    assert!(!xp
        .path()
        .join("etc/sudoers.d/90-xenplug-agent-users")
        .exists());
}

/// The guest's own visudo judges the sudo rules: a rule that is one line but not sudoers syntax
/// fails the generation, and nothing of it stays (no sudoers file, no user).
#[test]
fn visudo_refuses_a_bad_rule_and_nothing_stays() {
    if !xenplug_testkit::require_root() {
        return;
    }
    let Some(tree) = guest_tree() else {
        return;
    };
    let xp = Tree::copy(&tree, "visudo");
    let passwd = read(xp.path(), "/etc/passwd");
    let doc = ConfigDoc::from_nocloud(&NoCloudSeed {
        meta_data: "instance-id: iid-visudo\n".into(),
        user_data: Some(
            "#cloud-config\nusers:\n  - name: zed\n    sudo: \"ALL=(ALL NOPASSWD: ALL\"\n".into(),
        ),
        network_config: None,
        generation: Some(1),
    })
    .unwrap();
    let mut host = FakeHost("vm".into());
    let e = apply::apply(
        &doc,
        &mut Ctx {
            root: xp.path(),
            host: &mut host,
            net: None,
            tools: &mut xenplug_guest_agent::tools::RealTools,
            opts: &ApplyOptions::default(),
        },
    )
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("visudo refuses the sudo rules") && e.contains("is in place"),
        "{e}"
    );
    assert!(!xp
        .path()
        .join("etc/sudoers.d/90-xenplug-agent-users")
        .exists());
    assert_eq!(read(xp.path(), "/etc/passwd"), passwd);
}
