//! The agent over a pty pair standing in for the channel (the master is the dom0 side): tty
//! echo and CR/LF before raw mode, the handshake, garbage / AT commands / torn and oversize
//! frames, a peer that disappears mid-request, a device that goes away and comes back, the
//! inotify wait for the channel link, and the injected power action.

mod common;

use std::time::Duration;

use common::{guest_root, wait_until, AgentProc, Host, Pty};
use serde_json::json;
use xenplug_channel::Response;

fn start(pty: &Pty) -> AgentProc {
    let dev = pty.slave_path.to_str().unwrap().to_string();
    AgentProc::spawn(&["--device", &dev, "--no-live-network"], guest_root())
}

#[test]
fn non_raw_tty_echoes_and_maps_crlf_until_the_agent_makes_it_raw() {
    let mut pty = Pty::new();
    assert!(!pty.slave_is_raw());
    // Before the agent runs: what dom0 writes is echoed back, with "\n" shown as "\r\n".
    pty.send(b"{\"execute\":\"guest-ping\"}\n");
    let echo = pty.read_for(Duration::from_secs(2), &mut |b| b.ends_with(b"\r\n"));
    assert_eq!(echo, b"{\"execute\":\"guest-ping\"}\r\n".to_vec());
    // And what the guest side writes gets ONLCR.
    nix::unistd::write(&pty.slave, b"ok\n").unwrap();
    let out = pty.read_for(Duration::from_secs(2), &mut |b| b.ends_with(b"\n"));
    assert_eq!(out, b"ok\r\n".to_vec());

    let agent = start(&pty);
    wait_until("raw mode", Duration::from_secs(10), || pty.slave_is_raw());
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(10));
    // The early guest-ping was flushed with the cooked input (as qemu-ga does): the first
    // reply after the handshake is to the new request, and raw replies end in a bare "\n".
    host.raw.clear();
    let v = host.ok("guest-ping", None);
    assert_eq!(v, json!({}));
    assert!(
        !host.raw.contains(&b'\r'),
        "{:?}",
        String::from_utf8_lossy(&host.raw)
    );
    assert!(host.raw.ends_with(b"}\n"));
    // Nothing we send is echoed any more.
    host.raw.clear();
    host.pty.send(b"\n\n");
    host.recv(Duration::from_millis(300), &|_| false);
    assert!(host.raw.is_empty(), "{:?}", host.raw);
    drop(agent);
}

#[test]
fn garbage_at_commands_torn_and_oversize_frames() {
    let pty = Pty::new();
    let agent = start(&pty);
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(10));

    // Oversize first (the garbage below spends the error-reply budget).
    let big = format!(
        "{{\"execute\":\"guest-ping\",\"arguments\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(1_100_000)
    );
    host.raw.clear();
    host.pty.send(big.as_bytes());
    host.recv(Duration::from_secs(5), &|_| false);
    let raw = String::from_utf8_lossy(&host.raw).into_owned();
    assert!(raw.contains("too large"), "{raw}");
    // The session is still usable without a resync: the rest of the big frame was skipped.
    assert_eq!(host.ok("guest-ping", None), json!({}));

    // A modem prober: error replies, rate-limited (burst of 3, then silence).
    host.raw.clear();
    for _ in 0..20 {
        host.pty.send(b"AT\r\nATZ\r\nAT+CGMI\r\n");
    }
    host.recv(Duration::from_millis(800), &|_| false);
    let raw = String::from_utf8_lossy(&host.raw).into_owned();
    let n = raw.matches("stray 'A'").count();
    assert!(
        (1..=4).contains(&n),
        "{n} error replies to 60 lines of garbage: {raw}"
    );
    // Garbage, then a request on the same line: still answered.
    assert_eq!(host.ok("guest-get-osinfo", None)["id"], json!("test"));

    // A torn frame (the peer disappeared mid-request), then the next session's resync.
    host.pty
        .send(b"{\"execute\":\"guest-set-user-password\",\"arguments\":{\"user");
    let tries = host.handshake(Duration::from_secs(10));
    assert_eq!(tries, 1);
    assert_eq!(
        host.ok("guest-get-host-name", None)
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["host-name"]
    );
    // The torn request was never executed.
    let shadow = std::fs::read_to_string(agent.root.path().join("etc/shadow")).unwrap();
    assert!(shadow.contains("alice:!:19000"));

    // A stale reply from an earlier session and a bare non-object: dropped / error, no crash.
    host.pty.send(b"{\"return\": 17}\n[1,2,3]\n\"str\"\n");
    assert_eq!(host.ok("guest-ping", None), json!({}));
    drop(agent);
}

#[test]
fn qga_errors_have_qemu_shapes() {
    let pty = Pty::new();
    let agent = start(&pty);
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(10));
    match host.call("guest-exec", Some(json!({"path": "/bin/true"}))) {
        Response::Error { error, id } => {
            assert_eq!(error.class, "CommandNotFound");
            // The agent echoed the request's id (the session matched the reply by it).
            let id = id.unwrap();
            let raw = String::from_utf8_lossy(&host.raw);
            assert!(raw.contains(&format!("\"id\":{id}}}")), "{raw}");
        }
        r => panic!("{r:?}"),
    }
    match host.call("guest-ping", Some(json!({"bogus": 1}))) {
        Response::Error { error, .. } => assert_eq!(error.class, "GenericError"),
        r => panic!("{r:?}"),
    }
    match host.call(
        "xenplug-apply-config",
        Some(json!({"config": {"instance-id": "i", "generation": 1, "hostname": "bad_name"}})),
    ) {
        Response::Error { error, .. } => assert!(error.desc.contains("hostname"), "{}", error.desc),
        r => panic!("{r:?}"),
    }
    drop(agent);
}

#[test]
fn shutdown_is_injected_and_sends_no_reply() {
    let pty = Pty::new();
    let agent = start(&pty);
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(10));
    host.pty.send(
        b"{\"execute\":\"guest-shutdown\",\"arguments\":{\"mode\":\"reboot\"},\"id\":\"sd\"}",
    );
    let log = agent.root.path().join("shutdown.log");
    wait_until("the shutdown recorder", Duration::from_secs(10), || {
        log.exists()
    });
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "-r +0 hypervisor initiated shutdown\n"
    );
    // No reply on success (qemu-ga's success-response: false): replies come in order, so once
    // the ping's is in, a reply to the shutdown would have arrived before it.
    assert_eq!(host.ok("guest-ping", None), json!({}));
    let raw = String::from_utf8_lossy(&host.raw);
    assert!(
        !raw.contains("\"sd\""),
        "guest-shutdown was answered: {raw}"
    );
    let info = host.ok("guest-info", None);
    let sd = info["supported_commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "guest-shutdown")
        .unwrap();
    assert_eq!(sd["success-response"], json!(false));
    drop(agent);
}

#[test]
fn waits_for_the_channel_link_and_reopens_when_it_is_repointed() {
    let root = guest_root();
    let chan_dir = root.path().join("dev/xen-channel");
    let chan = chan_dir.join("org.test.agent.1");
    let dir_s = chan_dir.to_str().unwrap().to_string();
    // /dev exists in a guest; /dev/xen-channel appears with the first channel.
    std::fs::create_dir_all(chan_dir.parent().unwrap()).unwrap();
    let agent = AgentProc::spawn(
        &[
            "--channel-dir",
            &dir_s,
            "--name",
            "org.test.agent.1",
            "--no-live-network",
        ],
        root,
    );
    // The directory and the link appear later (udev), once the agent is waiting for them with
    // inotify (its watch shows in /proc/PID/fdinfo).
    let pid = agent.pid();
    wait_until(
        "the agent watching for its channel",
        Duration::from_secs(10),
        || has_inotify_watch(pid),
    );
    let pty1 = Pty::new();
    std::fs::create_dir_all(&chan_dir).unwrap();
    std::os::unix::fs::symlink(&pty1.slave_path, &chan).unwrap();
    wait_until(
        "raw mode on the first channel",
        Duration::from_secs(10),
        || pty1.slave_is_raw(),
    );
    let mut host = Host::new(pty1);
    host.handshake(Duration::from_secs(10));
    assert_eq!(host.ok("guest-ping", None), json!({}));

    // The channel goes away and a new tty takes its name (re-pointed atomically).
    let pty2 = Pty::new();
    let tmp = chan_dir.join(".tmp");
    std::os::unix::fs::symlink(&pty2.slave_path, &tmp).unwrap();
    std::fs::rename(&tmp, &chan).unwrap();
    drop(host);
    wait_until(
        "raw mode on the second channel",
        Duration::from_secs(10),
        || pty2.slave_is_raw(),
    );
    let mut host = Host::new(pty2);
    host.handshake(Duration::from_secs(10));
    assert_eq!(host.ok("guest-ping", None), json!({}));
    drop(agent);
}

#[test]
fn apply_config_over_the_channel_records_the_generation() {
    let pty = Pty::new();
    let agent = start(&pty);
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(10));
    assert_eq!(host.ok("xenplug-get-config-generation", None), json!({}));
    // Persist-only network (--no-live-network), no host name: nothing host-wide changes.
    let doc = json!({"instance-id": "iid-pty", "generation": 3, "manage-etc-hosts": true,
        "network": {"version": 2, "ethernets": {"eth0": {"addresses": ["192.0.2.7/24"]}}}});
    let r = host.ok("xenplug-apply-config", Some(json!({"config": doc})));
    assert_eq!(r["applied"], json!(true));
    assert!(agent
        .root
        .path()
        .join("etc/systemd/network/10-xenplug-eth0.network")
        .is_file());
    let r = host.ok("xenplug-apply-config", Some(json!({"config": doc})));
    assert_eq!(r["applied"], json!(false));
    assert_eq!(r["changes"], json!([]));
    assert_eq!(
        host.ok("xenplug-get-config-generation", None),
        json!({"instance-id": "iid-pty", "generation": 3})
    );
    let mut older = doc.clone();
    older["generation"] = json!(2);
    match host.call("xenplug-apply-config", Some(json!({"config": older}))) {
        Response::Error { error, .. } => assert!(error.desc.contains("older"), "{}", error.desc),
        r => panic!("{r:?}"),
    }
    drop(agent);
}

#[test]
fn a_failure_mid_apply_leaves_nothing_and_no_record() {
    let pty = Pty::new();
    let agent = start(&pty);
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(10));
    let root = agent.root.path().to_path_buf();
    let mut before = walk(&root);
    before.sort();
    // The network and /etc files are written, then the user step fails (bob cannot be created:
    // this guest has no shadow-utils).
    let doc = json!({"instance-id": "iid-fail", "generation": 1, "manage-etc-hosts": true,
        "network": {"version": 2, "ethernets": {"eth0": {"addresses": ["192.0.2.9/24"]}}},
        "users": [{"name": "bob", "ssh_authorized_keys": []}]});
    match host.call("xenplug-apply-config", Some(json!({"config": doc}))) {
        Response::Error { error, .. } => assert!(
            error.desc.contains("create user bob: useradd is not installed")
                && error.desc.contains(
                    "everything it changed was undone: the configuration from before any generation is in place"
                ),
            "{}",
            error.desc
        ),
        r => panic!("{r:?}"),
    }
    // Not recorded: the host will send it again.
    assert_eq!(host.ok("xenplug-get-config-generation", None), json!({}));
    // Nothing of it stays: no file, no directory, no temporary file.
    let mut after: Vec<String> = walk(&root)
        .into_iter()
        .filter(|p| !p.ends_with("etc/.pwd.lock"))
        .collect();
    after.sort();
    assert_eq!(after, before);
    // Fixed document, same generation: applied now (the earlier attempt did not count).
    let mut fixed = doc.clone();
    fixed["users"] = json!([{"name": "alice", "ssh_authorized_keys": []}]);
    let r = host.ok("xenplug-apply-config", Some(json!({"config": fixed})));
    assert_eq!(r["applied"], json!(true));
    assert!(r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c.as_str().unwrap().contains("10-xenplug-eth0")));
    drop(agent);
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            out.push(path.display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&path));
            }
        }
    }
    out
}

#[test]
fn one_dom0_session_after_another() {
    let pty = Pty::new();
    let agent = start(&pty);
    let mut host = Host::new(pty);
    host.handshake(Duration::from_secs(10));
    for round in 0..5 {
        // The previous peer died mid-request, left a stale reply in flight, and a prober
        // wrote to the port; the new peer starts with the resync and is answered at once.
        host.pty.send(b"{\"execute\":\"guest-get-osinfo\",\"argum");
        host.pty.send(b"ATZ\r\n");
        let tries = host.handshake(Duration::from_secs(10));
        assert_eq!(tries, 1, "round {round}");
        assert_eq!(
            host.ok("guest-sync", Some(json!({"id": round}))),
            json!(round)
        );
    }
    drop(agent);
}

/// Whether process `pid` holds an inotify descriptor with at least one watch.
fn has_inotify_watch(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    fds.flatten()
        .any(|f| std::fs::read_to_string(f.path()).is_ok_and(|info| info.contains("inotify wd:")))
}
