//! A QGA client nobody here wrote — PyPI `qemu.qmp` (`QEMUMonitorProtocol(...).connect(
//! negotiate=False)`, what qemu's own qemu-ga-client uses) — drives our agent through socat
//! joining a pty to a Unix socket the way QEMU serves a channel's dom0 side. The same commands go
//! to the real qemu-ga (Debian's, from the unpacked package, `-m unix-listen`), and the replies
//! must have the same shape (same members, same JSON types, same error classes).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{guest_root, require_dep, wait_until, AgentProc, Killed};
use serde_json::{json, Value};

const CLIENT: &str = r#"
import json, sys, random
from qemu.qmp.legacy import QEMUMonitorProtocol
q = QEMUMonitorProtocol(sys.argv[1])
q.connect(negotiate=False)
n = random.randint(1, 2**31)
r = q.cmd_obj({"execute": "guest-sync", "arguments": {"id": n}})
assert r.get("return") == n, r
out = [q.cmd_obj(c) for c in json.loads(sys.argv[2])]
q.close()
print(json.dumps(out))
"#;

fn client(py: &Path, dir: &Path, sock: &Path, cmds: &Value) -> Vec<Value> {
    let script = dir.join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let out = Command::new(py)
        .arg(&script)
        .arg(sock)
        .arg(cmds.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu.qmp client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Members that qemu-ga's schema marks optional (present or not depending on the system).
const OPTIONAL: &[&str] = &[
    "variant",
    "variant-id",
    "version",
    "version-id",
    "pretty-name",
    "name",
    "id",
    "ip-addresses",
    "statistics",
    "hardware-address",
];

fn same_shape(path: &str, ours: &Value, theirs: &Value, errs: &mut Vec<String>) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a
                .keys()
                .filter(|k| !b.contains_key(*k) && !OPTIONAL.contains(&k.as_str()))
            {
                errs.push(format!("{path}: we have '{k}', qemu-ga does not"));
            }
            for k in b
                .keys()
                .filter(|k| !a.contains_key(*k) && !OPTIONAL.contains(&k.as_str()))
            {
                errs.push(format!("{path}: qemu-ga has '{k}', we do not"));
            }
            for (k, v) in a {
                if let Some(w) = b.get(k) {
                    if k != "desc" {
                        same_shape(&format!("{path}.{k}"), v, w, errs);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if let (Some(x), Some(y)) = (a.first(), b.first()) {
                same_shape(&format!("{path}[0]"), x, y, errs);
            }
        }
        (Value::String(a), Value::String(b)) if path.ends_with(".class") => {
            if a != b {
                errs.push(format!("{path}: error class {a} vs {b}"));
            }
        }
        (a, b) => {
            let t = |v: &Value| match v {
                Value::Null => "null",
                Value::Bool(_) => "bool",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            if t(a) != t(b) {
                errs.push(format!("{path}: {} vs {}", t(a), t(b)));
            }
        }
    }
}

fn start_our_agent(dir: &Path) -> (Killed, AgentProc, std::path::PathBuf) {
    let socat = xenplug_testkit::which("socat").expect("socat");
    let sock = dir.join("chan.sock");
    let hvc = dir.join("hvc1");
    // QEMU's chardev: a listening Unix socket joined to the channel (here a pty).
    let s = Command::new(socat)
        .arg(format!("PTY,link={}", hvc.display()))
        .arg(format!("UNIX-LISTEN:{}", sock.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let socat = Killed(s);
    wait_until("socat's pty", Duration::from_secs(10), || {
        hvc.exists() && sock.exists()
    });
    let root = guest_root();
    std::fs::create_dir_all(root.path().join("home/alice/.ssh")).unwrap();
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(root.path().join("home/alice/.ssh"), Some(4242), Some(4242))
            .unwrap();
    }
    let agent = AgentProc::spawn(
        &["--device", hvc.to_str().unwrap(), "--no-live-network"],
        root,
    );
    (socat, agent, sock)
}

#[test]
fn qemu_qmp_client_drives_our_agent_like_qemu_ga() {
    let Some(py) = require_dep("python-qmp") else {
        return;
    };
    let Some(qga) = require_dep("qemu-ga") else {
        return;
    };
    if !xenplug_testkit::require_program("socat") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let read_only = json!([
        {"execute": "guest-ping"},
        {"execute": "guest-info"},
        {"execute": "guest-get-host-name"},
        {"execute": "guest-get-osinfo"},
        {"execute": "guest-network-get-interfaces"},
        {"execute": "guest-get-time"},
        {"execute": "guest-sync", "arguments": {"id": 42}},
        {"execute": "guest-ssh-get-authorized-keys", "arguments": {"username": "nosuchuser"}},
        {"execute": "guest-nonexistent"},
        {"execute": "guest-ping", "arguments": {"x": 1}},
        {"execute": "guest-sync", "arguments": {"id": "not-a-number"}},
        {"execute": "guest-shutdown", "arguments": {"mode": "sideways"}},
    ]);

    // The real qemu-ga.
    let qdir = tmp.path().join("qga");
    std::fs::create_dir_all(&qdir).unwrap();
    let qsock = qdir.join("qga.sock");
    let q = Command::new(&qga)
        .args(["-m", "unix-listen", "-p"])
        .arg(&qsock)
        .arg("-t")
        .arg(&qdir)
        .arg("-l")
        .arg(qdir.join("log"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _q = Killed(q);
    wait_until("qemu-ga's socket", Duration::from_secs(10), || {
        qsock.exists()
    });
    let theirs = client(&py, tmp.path(), &qsock, &read_only);

    // Ours, through socat + pty.
    let adir = tmp.path().join("ours");
    std::fs::create_dir_all(&adir).unwrap();
    let (_socat, _agent, sock) = start_our_agent(&adir);
    let ours = client(&py, tmp.path(), &sock, &read_only);

    let mut errs = Vec::new();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let name = read_only[i]["execute"].as_str().unwrap();
        same_shape(&format!("{i}:{name}"), a, b, &mut errs);
    }
    assert_eq!(ours.len(), theirs.len());
    assert!(
        errs.is_empty(),
        "shape differences:\n{}\nours: {ours:#?}\ntheirs: {theirs:#?}",
        errs.join("\n")
    );
    assert_eq!(ours[6], json!({"return": 42}));
    assert_eq!(ours[8]["error"]["class"], json!("CommandNotFound"));
}

#[test]
fn qemu_qmp_client_changes_keys_and_passwords_and_applies_config() {
    let Some(py) = require_dep("python-qmp") else {
        return;
    };
    if !xenplug_testkit::require_program("socat") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_socat, agent, sock) = start_our_agent(tmp.path());
    let key1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKdh7c6XyRUHvJFOz6oUvnG9NDFjeQh79Yr0YH7oWo6q one@example";
    let key2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGyBaeG4itCOk9PaB+cS6ndHBPdHL5YeCsu2JJA1T5ow two@example";
    let root = agent.root.path().to_path_buf();
    std::fs::write(
        root.join("home/alice/.ssh/authorized_keys"),
        "# mine\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 old\n",
    )
    .unwrap();
    let cmds = json!([
        {"execute": "guest-ssh-add-authorized-keys", "arguments": {"username": "alice", "keys": [key1, key2]}},
        {"execute": "guest-ssh-remove-authorized-keys", "arguments": {"username": "alice", "keys": [key1]}},
        {"execute": "guest-ssh-get-authorized-keys", "arguments": {"username": "alice"}},
        {"execute": "guest-ssh-add-authorized-keys", "arguments": {"username": "alice", "keys": ["not a key"]}},
        {"execute": "guest-set-user-password", "arguments": {"username": "alice", "password": "czNjcjN0", "crypted": false}},
        {"execute": "guest-set-user-password", "arguments": {"username": "nobody", "password": "eA==", "crypted": false}},
        {"execute": "xenplug-apply-config", "arguments": {"nocloud": {
            "meta-data": "instance-id: iid-qmp\n",
            "user-data": format!("#cloud-config\nusers:\n  - default\n  - name: alice\n    ssh_authorized_keys: [\"{key1}\"]\n"),
            "generation": 5}}},
        {"execute": "xenplug-get-config-generation"},
    ]);
    let r = client(&py, tmp.path(), &sock, &cmds);
    assert_eq!(r[0], json!({"return": {}}));
    assert_eq!(r[1], json!({"return": {}}));
    assert_eq!(
        r[2]["return"]["keys"],
        json!(["ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 old", key2])
    );
    assert_eq!(r[3]["error"]["class"], json!("GenericError"));
    assert_eq!(r[4], json!({"return": {}}));
    assert!(r[5]["error"]["desc"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    assert_eq!(r[6]["return"]["applied"], json!(true));
    assert_eq!(
        r[7]["return"],
        json!({"instance-id": "iid-qmp", "generation": 5})
    );
    // The file: our block appended, the user's own lines kept, mode 0600 (owner alice as root).
    let path = root.join("home/alice/.ssh/authorized_keys");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# mine\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 old\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "# BEGIN xenplug-agent managed keys (do not edit inside this block)\n{key1}\n# END"
        )),
        "{text}"
    );
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!(m.mode() & 0o777, 0o600);
    if nix::unistd::geteuid().is_root() {
        assert_eq!((m.uid(), m.gid()), (4242, 4242));
    }
    // The password: SHA-512 crypt of "s3cr3t" (base64 czNjcjN0), lock state kept ('!').
    let shadow = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
    let alice = shadow.lines().find(|l| l.starts_with("alice:")).unwrap();
    let hash = alice.split(':').nth(1).unwrap();
    assert!(hash.starts_with("!$6$"), "{alice}");
    assert!(sha_crypt::sha512_check("s3cr3t", &hash[1..]).is_ok());
}
