//! Differential parity with Debian 12's real qemu-ga (7.2): the same calls to both agents, in
//! the same environment ([`common::minroot`]: one chroot, one mount namespace whose only local
//! filesystem is an ext4 image on a loop device, the host's /proc, /sys and /dev, a real login
//! record in /run/utmp), and the replies compared:
//!
//! * schemas — members and JSON types, recursively, for every command;
//! * errors — class and description, word for word, for unknown and disabled commands, bad
//!   arguments and the failures both hit in this environment;
//! * semantics where the answers must agree — users after the login record, vCPUs, memory
//!   blocks, filesystems and disks, exec output and exit code, file bytes, freeze/thaw counts
//!   and the hook's arguments, writes blocking on a frozen filesystem and resuming after thaw.
//!
//! Needs root, tools/channel-deps.sh (qemu-ga), socat, util-linux (losetup, utmpdump, unshare,
//! nsenter, fsfreeze) and e2fsprogs; fails under CI when one is missing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::minroot::{proc_state, qemu_ga_binary, Client, MiniRoot};
use serde_json::{json, Value};

/// Our agent with every command enabled, as qemu-ga's default is.
const ALL_ENABLED: &str = "block-rpcs = []\n";

fn prerequisites() -> Option<std::path::PathBuf> {
    if !xenplug_testkit::require_root() {
        return None;
    }
    for p in [
        "socat",
        "losetup",
        "mkfs.ext4",
        "utmpdump",
        "unshare",
        "nsenter",
        "fsfreeze",
    ] {
        if !xenplug_testkit::require_program(p) {
            return None;
        }
    }
    let q = qemu_ga_binary();
    xenplug_testkit::require(q.is_some(), "needs qemu-ga: run tools/channel-deps.sh")
        .then_some(q)
        .flatten()
}

/// A JSON value's shape: objects by member, arrays by the union of their elements' shapes.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => {
            let mut merged = serde_json::Map::new();
            let mut scalar = None;
            for x in a {
                match shape(x) {
                    Value::Object(m) => {
                        for (k, v) in m {
                            merged.entry(k).or_insert(v);
                        }
                    }
                    s => scalar = Some(s),
                }
            }
            json!([scalar.unwrap_or(Value::Object(merged))])
        }
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(n) if n.is_f64() => json!("number"),
        Value::Number(_) => json!("integer"),
        Value::String(_) => json!("string"),
    }
}

fn sorted_by(v: &Value, key: &str) -> Value {
    let mut a = v.as_array().cloned().unwrap_or_default();
    a.sort_by_key(|x| x[key].to_string());
    Value::Array(a)
}

struct Pair {
    ours: Client,
    theirs: Client,
    diffs: Vec<String>,
    _agents: [common::minroot::Agent; 2],
}

impl Pair {
    fn both(&mut self, cmd: &str, args: Option<Value>) -> (Value, Value) {
        (
            self.ours.call(cmd, args.clone()),
            self.theirs.call(cmd, args),
        )
    }

    fn check(&mut self, what: &str, ok: bool, ours: &Value, theirs: &Value) {
        if !ok {
            self.diffs
                .push(format!("{what}:\n  ours:    {ours}\n  qemu-ga: {theirs}"));
        }
    }

    /// Same reply, value for value.
    fn same(&mut self, cmd: &str, args: Option<Value>) -> Value {
        let (a, b) = self.both(cmd, args.clone());
        self.check(&format!("{cmd} {args:?}"), a == b, &a, &b);
        a
    }

    /// Same shape (members and types).
    fn same_shape(&mut self, cmd: &str, args: Option<Value>) -> (Value, Value) {
        let (a, b) = self.both(cmd, args.clone());
        self.check(
            &format!("shape of {cmd} {args:?}"),
            shape(&a) == shape(&b),
            &shape(&a),
            &shape(&b),
        );
        (a, b)
    }
}

fn pair(mr: &mut MiniRoot, config: &str, hook: bool) -> Pair {
    let q = mr.start_qemu_ga(hook);
    let o = mr.start_ours(config, &[]);
    Pair {
        theirs: Client::connect(&q),
        ours: Client::connect(&o),
        diffs: Vec::new(),
        _agents: [q, o],
    }
}

#[test]
fn every_command_same_schema_errors_and_readings_as_qemu_ga() {
    let Some(qga) = prerequisites() else { return };
    let mut mr = MiniRoot::new(&qga);
    let mut p = pair(&mut mr, ALL_ENABLED, false);

    // guest-info: every qemu-ga command is ours too, enabled and answered alike.
    let (a, b) = p.same_shape("guest-info", None);
    let cmds = |v: &Value| -> BTreeMap<String, Value> {
        v["return"]["supported_commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_string(), c.clone()))
            .collect()
    };
    let (ours, theirs) = (cmds(&a), cmds(&b));
    for (name, c) in &theirs {
        match ours.get(name) {
            None => p.diffs.push(format!("guest-info: we lack {name}")),
            Some(o) if o != c => p.diffs.push(format!("guest-info: {o} vs {c}")),
            Some(_) => {}
        }
    }
    assert_eq!(theirs.len(), 42, "qemu-ga 7.2 has 42 commands");

    // Readings of the same system.
    for cmd in [
        "guest-ping",
        "guest-get-host-name",
        "guest-get-osinfo",
        "guest-get-timezone",
        "guest-get-memory-block-info",
        "guest-fsfreeze-status",
        "guest-get-users",
        "guest-fsfreeze-thaw",
    ] {
        p.same(cmd, None);
    }
    p.same("guest-sync", Some(json!({"id": 42})));
    let users = p.same("guest-get-users", None);
    assert_eq!(
        users,
        json!({"return": [{"user": "alice", "login-time": 1709287200.5}]}),
        "the login record"
    );
    for (cmd, key) in [
        ("guest-get-vcpus", "logical-id"),
        ("guest-get-memory-blocks", "phys-index"),
        ("guest-get-disks", "name"),
        ("guest-get-fsinfo", "mountpoint"),
    ] {
        let (a, b) = p.both(cmd, None);
        let (a, b) = (sorted_by(&a["return"], key), sorted_by(&b["return"], key));
        p.check(cmd, a == b, &a, &b);
    }
    let fs = p.ours.call("guest-get-fsinfo", None);
    assert_eq!(fs["return"].as_array().unwrap().len(), 1, "{fs}");
    assert_eq!(fs["return"][0]["mountpoint"], "/mnt/data");
    assert_eq!(fs["return"][0]["type"], "ext4");
    // The vCPUs are the host's.
    let n = std::fs::read_dir("/sys/devices/system/cpu")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("cpu"))
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count();
    assert_eq!(
        p.ours.call("guest-get-vcpus", None)["return"]
            .as_array()
            .unwrap()
            .len(),
        n
    );

    // Same shapes where the values move (counters, clocks, trimmed bytes).
    for cmd in [
        "guest-get-time",
        "guest-get-cpustats",
        "guest-get-diskstats",
        "guest-network-get-interfaces",
        "guest-fstrim",
    ] {
        let (a, b) = p.same_shape(cmd, None);
        if cmd != "guest-get-time" {
            let names = |v: &Value| -> Vec<String> {
                let mut n: Vec<String> = v["return"]
                    .as_array()
                    .or_else(|| v["return"]["paths"].as_array())
                    .unwrap()
                    .iter()
                    .map(|x| {
                        ["cpu", "name", "path"]
                            .iter()
                            .map(|k| x[*k].to_string())
                            .collect::<String>()
                    })
                    .collect();
                n.sort();
                n
            };
            let (na, nb) = (names(&a), names(&b));
            p.check(&format!("{cmd} entries"), na == nb, &json!(na), &json!(nb));
        }
    }
    let (a, b) = p.both("guest-get-time", None);
    let diff = (a["return"].as_i64().unwrap() - b["return"].as_i64().unwrap()).abs();
    assert!(diff < 30_000_000_000, "clocks {diff} ns apart");

    // Changes that change nothing here, and their failures.
    p.same(
        "guest-set-vcpus",
        Some(json!({"vcpus": [{"logical-id": 0, "online": true}]})),
    );
    p.same("guest-set-vcpus", Some(json!({"vcpus": []})));
    p.same(
        "guest-set-memory-blocks",
        Some(json!({"mem-blks": [{"phys-index": 0, "online": true},
                                 {"phys-index": 99999999, "online": true}]})),
    );

    // Errors, word for word.
    for (cmd, args) in [
        ("guest-nonexistent", None),
        ("guest-get-devices", None),
        ("guest-ping", Some(json!({"x": 1}))),
        ("guest-sync", None),
        ("guest-sync", Some(json!({"id": "x"}))),
        ("guest-sync", Some(json!({"id": 1.5}))),
        (
            "guest-set-vcpus",
            Some(json!({"vcpus": [{"logical-id": 0}]})),
        ),
        ("guest-set-vcpus", Some(json!({"vcpus": {}}))),
        (
            "guest-set-vcpus",
            Some(json!({"vcpus": [{"logical-id": 0, "online": true, "x": 1}]})),
        ),
        (
            "guest-set-vcpus",
            Some(json!({"vcpus": [{"logical-id": 0, "online": false}]})),
        ),
        (
            "guest-set-vcpus",
            Some(json!({"vcpus": [{"logical-id": 9999, "online": true}]})),
        ),
        (
            "guest-file-seek",
            Some(json!({"handle": 1, "offset": 0, "whence": "foo"})),
        ),
        (
            "guest-file-seek",
            Some(json!({"handle": 1, "offset": 0, "whence": true})),
        ),
        ("guest-exec", None),
        ("guest-exec", Some(json!({"path": "/bin/true", "arg": [1]}))),
        ("guest-exec", Some(json!({"path": "/nonexistent"}))),
        ("guest-exec-status", Some(json!({"pid": 1}))),
        ("guest-file-read", Some(json!({"handle": 5}))),
        ("guest-file-open", Some(json!({"path": "/nonexistent/x"}))),
        (
            "guest-file-open",
            Some(json!({"path": "/tmp/x", "mode": "zz"})),
        ),
        // Refused by the kernel before hwclock runs: the clock never changes.
        ("guest-set-time", Some(json!({"time": -5}))),
        ("guest-set-time", Some(json!({"time": 1.5}))),
        // The chroot's hwclock fails.
        ("guest-set-time", None),
        ("guest-shutdown", Some(json!({"mode": "sideways"}))),
        ("guest-fstrim", Some(json!({"minimum": "x"}))),
        (
            "guest-fsfreeze-freeze-list",
            Some(json!({"mountpoints": "x"})),
        ),
        ("guest-suspend-ram", None),
        ("guest-suspend-disk", None),
        ("guest-suspend-hybrid", None),
    ] {
        let r = p.same(cmd, args);
        assert!(r.get("error").is_some(), "{cmd}: {r}");
    }
    // Failures whose wording is qemu-ga's helper programs' (chpasswd) or an errno artifact
    // ("…: Success"): the class agrees.
    for (cmd, args) in [
        (
            "guest-ssh-get-authorized-keys",
            json!({"username": "nosuchuser"}),
        ),
        (
            "guest-set-user-password",
            json!({"username": "nosuchuser", "password": "eA==", "crypted": false}),
        ),
    ] {
        let (a, b) = p.both(cmd, Some(args));
        p.check(
            cmd,
            a["error"]["class"] == b["error"]["class"] && a["error"]["class"] == "GenericError",
            &a,
            &b,
        );
    }
    assert!(p.diffs.is_empty(), "differences:\n{}", p.diffs.join("\n"));
}

fn exec_until_exited(c: &mut Client, args: Value) -> Value {
    let pid = c.call("guest-exec", Some(args))["return"]["pid"].clone();
    assert!(pid.is_i64(), "{pid}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.call("guest-exec-status", Some(json!({"pid": pid})));
        if s["return"]["exited"] == json!(true) {
            // Reaped: the pid is forgotten.
            let again = c.call("guest-exec-status", Some(json!({"pid": pid})));
            assert_eq!(again["error"]["desc"], "Invalid parameter 'pid'");
            return s["return"].clone();
        }
        assert_eq!(s["return"], json!({"exited": false}));
        assert!(Instant::now() < deadline, "the process never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn exec_and_files_behave_as_qemu_ga() {
    let Some(qga) = prerequisites() else { return };
    let mut mr = MiniRoot::new(&qga);
    let mut p = pair(&mut mr, ALL_ENABLED, false);
    for args in [
        json!({"path": "/bin/sh", "arg": ["-c", "printf out; printf err >&2; exit 3"],
               "capture-output": true}),
        json!({"path": "/bin/sh", "arg": ["-c", "exit 0"], "capture-output": true}),
        json!({"path": "/bin/sh", "arg": ["-c", "printf x"]}),
        json!({"path": "sh", "arg": ["-c", "read a; echo got:$a; kill -9 $$"],
               "input-data": b64(b"hello\n"), "capture-output": true}),
        json!({"path": "/bin/sh", "arg": ["-c", "echo $FOO; echo ${PATH:-unset}"],
               "env": ["FOO=bar"], "capture-output": true}),
        json!({"path": "/bin/sh", "arg": ["-c", "i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done"],
               "capture-output": true}),
    ] {
        let a = exec_until_exited(&mut p.ours, args.clone());
        let b = exec_until_exited(&mut p.theirs, args.clone());
        p.check(&format!("exec {args}"), a == b, &a, &b);
    }
    let r = exec_until_exited(
        &mut p.ours,
        json!({"path": "/bin/sh", "arg": ["-c", "printf out; printf err >&2; exit 3"],
               "capture-output": true}),
    );
    assert_eq!(
        r,
        json!({"exited": true, "exitcode": 3, "out-data": b64(b"out"), "err-data": b64(b"err"),
               "out-truncated": false, "err-truncated": false})
    );

    // Files: every byte value round-trips, modes, seeks and errors alike.
    let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let mut handles = Vec::new();
    for (who, c) in [("ours", &mut p.ours), ("qemu-ga", &mut p.theirs)] {
        let path = format!("/tmp/f-{who}");
        let h = c.call("guest-file-open", Some(json!({"path": path, "mode": "w+"})))["return"]
            .as_i64()
            .unwrap();
        assert!(h >= 1000, "{who}: handle {h}");
        let w = c.call(
            "guest-file-write",
            Some(json!({"handle": h, "buf-b64": b64(&bytes)})),
        );
        assert_eq!(w["return"], json!({"count": 512, "eof": false}), "{who}");
        handles.push((path, h));
    }
    let (ho, ht) = (handles[0].1, handles[1].1);
    let steps: Vec<(&str, Value)> = vec![
        (
            "guest-file-write",
            json!({"buf-b64": "AAEC/w==", "count": 2}),
        ),
        (
            "guest-file-write",
            json!({"buf-b64": "AAEC/w==", "count": 9}),
        ),
        ("guest-file-write", json!({"buf-b64": "!!!"})),
        ("guest-file-seek", json!({"offset": 0, "whence": "set"})),
        ("guest-file-read", json!({"count": 300})),
        ("guest-file-read", json!({})),
        ("guest-file-read", json!({})),
        ("guest-file-seek", json!({"offset": 1, "whence": 0})),
        ("guest-file-read", json!({"count": 2})),
        ("guest-file-seek", json!({"offset": -1, "whence": "end"})),
        ("guest-file-seek", json!({"offset": 0, "whence": 7})),
        ("guest-file-seek", json!({"offset": -1000, "whence": "cur"})),
        ("guest-file-read", json!({"count": -1})),
        ("guest-file-read", json!({"count": 50331649})),
        ("guest-file-flush", json!({})),
        ("guest-file-close", json!({})),
        ("guest-file-close", json!({})),
    ];
    for (cmd, args) in steps {
        let with = |h: i64| {
            let mut a = args.clone();
            a["handle"] = json!(h);
            Some(a)
        };
        let a = p.ours.call(cmd, with(ho));
        let b = p.theirs.call(cmd, with(ht));
        // Handles are numbered by each agent: in an error, ours stands in qemu-ga's place.
        let mut b = b;
        if let Some(d) = b["error"]["desc"].as_str() {
            b["error"]["desc"] = json!(d.replace(&ht.to_string(), &ho.to_string()));
        }
        p.check(&format!("{cmd} {args}"), a == b, &a, &b);
    }
    for (path, _) in &handles {
        let host = mr.path(path);
        let data = std::fs::read(&host).unwrap();
        let mut want = bytes.clone();
        want.extend_from_slice(&[0, 1]);
        assert_eq!(data, want, "{path}");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&host).unwrap().mode() & 0o777,
            0o666,
            "{path}"
        );
    }
    // Reading a read-only handle's file back; writing to it fails alike.
    for (path, _) in handles.clone() {
        let a = p.ours.call("guest-file-open", Some(json!({"path": path})));
        let b = p
            .theirs
            .call("guest-file-open", Some(json!({"path": path})));
        let (ha, hb) = (a["return"].as_i64().unwrap(), b["return"].as_i64().unwrap());
        let wa = p.ours.call(
            "guest-file-write",
            Some(json!({"handle": ha, "buf-b64": "AA=="})),
        );
        let wb = p.theirs.call(
            "guest-file-write",
            Some(json!({"handle": hb, "buf-b64": "AA=="})),
        );
        p.check("write to a read-only handle", wa == wb, &wa, &wb);
        let ra = p
            .ours
            .call("guest-file-read", Some(json!({"handle": ha, "count": 600})));
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(ra["return"]["buf-b64"].as_str().unwrap())
                .unwrap()
                .len(),
            514
        );
    }
    assert!(p.diffs.is_empty(), "differences:\n{}", p.diffs.join("\n"));
}

/// One agent's freeze: the hook's arguments, writes blocking while frozen and resuming after
/// thaw, the commands disabled meanwhile, freeze-list.
fn freeze_scenario(mr: &MiniRoot, c: &mut Client, who: &str) -> Vec<Value> {
    let hook_log = mr.path("/run/hook.log");
    let _ = std::fs::remove_file(&hook_log);
    let mut replies = vec![c.call("guest-fsfreeze-status", None)];
    replies.push(c.call("guest-fsfreeze-freeze", None));
    replies.push(c.call("guest-fsfreeze-status", None));
    assert_eq!(replies[1], json!({"return": 1}), "{who}: frozen count");
    // A write on the host now blocks in the kernel…
    let file = format!("w-{who}");
    let mut w = mr.writer(&file, "payload");
    let deadline = Instant::now() + Duration::from_secs(20);
    while proc_state(w.id()) != Some('D') {
        assert!(
            w.try_wait().unwrap().is_none(),
            "{who}: the write finished on a frozen filesystem"
        );
        assert!(Instant::now() < deadline, "{who}: the writer never blocked");
        std::thread::sleep(Duration::from_millis(10));
    }
    // …while only the freeze-safe commands answer.
    replies.push(c.call("guest-get-osinfo", None));
    replies.push(c.call("guest-fsfreeze-freeze", None));
    replies.push(c.call("guest-ping", None));
    let info = c.call("guest-info", None);
    let mut enabled: Vec<String> = info["return"]["supported_commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["enabled"] == json!(true))
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect();
    enabled.sort();
    replies.push(json!(enabled));
    assert!(w.try_wait().unwrap().is_none(), "{who}: the writer went on");
    replies.push(c.call("guest-fsfreeze-thaw", None));
    assert_eq!(replies.last().unwrap(), &json!({"return": 1}), "{who}");
    // …and goes through after the thaw.
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        if let Some(st) = w.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "{who}: the write never resumed");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(st.success());
    assert_eq!(
        std::fs::read_to_string(mr.data.join(&file)).unwrap(),
        "payload"
    );
    replies.push(c.call("guest-fsfreeze-status", None));
    replies.push(c.call(
        "guest-fsfreeze-freeze-list",
        Some(json!({"mountpoints": ["/mnt/data", "/nope"]})),
    ));
    replies.push(c.call("guest-fsfreeze-thaw", None));
    replies.push(c.call(
        "guest-fsfreeze-freeze-list",
        Some(json!({"mountpoints": ["/nope"]})),
    ));
    replies.push(c.call("guest-fsfreeze-status", None));
    replies.push(c.call("guest-fsfreeze-thaw", None));
    replies.push(json!(std::fs::read_to_string(&hook_log).unwrap_or_default()));
    replies
}

#[test]
fn fsfreeze_blocks_writes_runs_the_hook_and_thaws_as_qemu_ga() {
    let Some(qga) = prerequisites() else { return };
    let mut mr = MiniRoot::new(&qga);
    let hook = mr.path("/etc/qemu/fsfreeze-hook");
    std::fs::write(&hook, "#!/bin/sh\necho \"$1\" >> /run/hook.log\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut p = pair(&mut mr, ALL_ENABLED, true);
    let theirs = freeze_scenario(&mr, &mut p.theirs, "qemu-ga");
    let ours = freeze_scenario(&mr, &mut p.ours, "ours");
    assert_eq!(
        ours.last().unwrap(),
        &json!("freeze\nthaw\nfreeze\nthaw\nfreeze\nthaw\n"),
        "the hook ran with freeze/thaw"
    );
    assert_eq!(
        ours[3]["error"]["desc"],
        "Command guest-get-osinfo has been disabled: the agent is in frozen state"
    );
    // Our guest-info lists our extra commands too: compare qemu-ga's names only.
    let qemu_names: Vec<Value> = theirs[6].as_array().unwrap().clone();
    let ours_enabled: Vec<Value> = ours[6]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| qemu_names.contains(n))
        .cloned()
        .collect();
    assert_eq!(ours_enabled, qemu_names);
    let strip = |v: &[Value]| -> Vec<Value> {
        v.iter()
            .enumerate()
            .filter(|(i, _)| *i != 6)
            .map(|(_, x)| x.clone())
            .collect()
    };
    assert_eq!(strip(&ours), strip(&theirs));
}
