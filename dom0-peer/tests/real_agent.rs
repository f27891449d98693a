//! The daemon against the real guest agent code (`xenplug-guest-agent`'s session and command
//! handling) over a pty behind a listening Unix socket ([`common::PtyChannel`]), the way QEMU
//! serves a channel and the guest sees `/dev/hvcN`: delivery and verification, stale guest output and garbage,
//! a peer restart (no re-apply), and a guest reboot (new domid, new socket, fresh agent state).
//!
//! The agent applies under a temporary root with a recording host (no `sethostname` on the test
//! machine) and live networking off.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use xenplug_guest_agent::agent::{Agent, Power};
use xenplug_guest_agent::apply::Host as AgentHost;
use xenplug_guest_agent::session::{self, Options, Session};

const T: Duration = Duration::from_secs(20);

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl AgentHost for Recorder {
    fn set_hostname(&mut self, name: &str) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(name.to_string());
        Ok(())
    }
    fn hostname(&self) -> anyhow::Result<String> {
        Ok(self.0.lock().unwrap().last().cloned().unwrap_or_default())
    }
}

struct NoPower;

impl Power for NoPower {
    fn shutdown(&mut self, _: xenplug_channel::qga::ShutdownMode) -> anyhow::Result<()> {
        anyhow::bail!("no power actions in tests")
    }
}

/// The real agent serving one tty on a thread until `stop`.
struct AgentRun {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub host: Recorder,
    pub root: PathBuf,
    /// The agent's guest-state hub: what its publisher would publish goes here.
    pub hub: Arc<xenplug_guest_agent::publisher::StateHub>,
}

impl AgentRun {
    fn start(tty: &Path, root: &Path) -> AgentRun {
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let host = Recorder::default();
        let mut a = Agent::new(root, Box::new(host.clone()), Box::new(NoPower));
        a.live_network = false;
        a.paths.statedir = root.join("run/xenplug-agent");
        let hub = a.hub.clone();
        let agent = Mutex::new(a);
        let (tty, s) = (tty.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let opts = Options {
                poll_interval: Duration::from_millis(50),
                ..Options::default()
            };
            while !s.load(Ordering::Relaxed) {
                match session::open_tty(&tty) {
                    Ok(mut f) => {
                        let mut sess = Session::new(&agent, opts.clone());
                        sess.run(&mut f, &|| !s.load(Ordering::Relaxed));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        AgentRun {
            stop,
            thread: Some(thread),
            host,
            root: root.to_path_buf(),
            hub,
        }
    }

    fn applied_state(&self) -> Option<serde_json::Value> {
        std::fs::read(self.root.join("var/lib/xenplug-agent/applied.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_over_a_pty_channel() {
    let mut h = Host::new();
    let xs = h.xsd.store();
    std::fs::write(
        h.store.join("agentvm.json"),
        serde_json::json!({"instance-id": "iid-agentvm", "generation": 3, "hostname": "agentvm"})
            .to_string(),
    )
    .unwrap();
    let ch = PtyChannel::new(h.dir.path(), "a");
    // Stale output and modem-prober garbage written by the guest before dom0 connects.
    {
        use std::io::Write;
        let mut t = std::fs::OpenOptions::new()
            .write(true)
            .open(&ch.tty)
            .unwrap();
        t.write_all(b"AT\r\nATZ\r\n{\"return\": 99}\r\nguest-hello 0\r\n")
            .unwrap();
    }
    let agent = AgentRun::start(&ch.tty, &h.dir.path().join("root-a"));
    add_domain(&xs, 50, "agentvm", &uuid(50), &ch.sock);
    h.start(h.config());
    let r = wait_state(&h, 50, "configured", T).await;
    assert_eq!(r["applied_generation"], 3);
    let st = agent
        .applied_state()
        .expect("the agent recorded the applied generation");
    assert_eq!(st["generation"], 3, "{st}");
    assert_eq!(agent.host.0.lock().unwrap().as_slice(), ["agentvm"]);
    let hostname = std::fs::read_to_string(agent.root.join("etc/hostname")).unwrap();
    assert_eq!(hostname.trim(), "agentvm");

    // Peer restart: resync, verify, nothing applied again.
    h.stop().await;
    h.start(h.config());
    let r = wait_state(&h, 50, "configured", T).await;
    assert_eq!(r["counters"]["deliveries"], 0, "{r}");
    assert_eq!(agent.host.0.lock().unwrap().len(), 1);

    // Document change: generation 4 delivered and verified.
    std::fs::write(
        h.store.join("agentvm.json"),
        serde_json::json!({"instance-id": "iid-agentvm", "generation": 4, "hostname": "agentvm2"})
            .to_string(),
    )
    .unwrap();
    wait_for(T, "generation 4", || async {
        h.row(50)
            .await
            .filter(|r| r["applied_generation"] == 4 && r["state"] == "configured")
    })
    .await;
    assert_eq!(agent.applied_state().unwrap()["generation"], 4);

    // Reboot: domain 50 goes with its QEMU; domain 51 comes with a new socket and a guest whose
    // agent state is fresh. The document (by name) is delivered again.
    remove_domain(&xs, 50);
    drop(agent);
    drop(ch);
    let ch2 = PtyChannel::new(h.dir.path(), "b");
    let agent2 = AgentRun::start(&ch2.tty, &h.dir.path().join("root-b"));
    add_domain(&xs, 51, "agentvm", &uuid(50), &ch2.sock);
    let r = wait_state(&h, 51, "configured", T).await;
    assert_eq!(r["applied_generation"], 4);
    assert_eq!(r["counters"]["deliveries"], 1);
    assert_eq!(agent2.applied_state().unwrap()["generation"], 4);
    assert!(h.row(50).await.is_none());

    // Garbage from the guest while in session: ignored, the session stays usable.
    {
        use std::io::Write;
        let mut t = std::fs::OpenOptions::new()
            .write(true)
            .open(&ch2.tty)
            .unwrap();
        t.write_all(b"\x00\x01garbage}}]]{\"bogus\": tr").unwrap();
    }
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_xenplug-peer"));
    c.args(["list", "--json", "--control"]).arg(&h.control);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success());
    std::fs::write(
        h.store.join("agentvm.json"),
        serde_json::json!({"instance-id": "iid-agentvm", "generation": 5}).to_string(),
    )
    .unwrap();
    wait_for(T, "generation 5 after garbage", || async {
        h.row(51)
            .await
            .filter(|r| r["applied_generation"] == 5 && r["state"] == "configured")
    })
    .await;
    h.stop().await;
    drop(agent2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_queries_and_send_against_the_real_agent() {
    let d = tempfile::tempdir().unwrap();
    // One pty for the whole test, every CLI run a new connection to it (as with QEMU).
    let ch = PtyChannel::new(d.path(), "q");
    let agent = AgentRun::start(&ch.tty, &d.path().join("root"));
    let ssh = d.path().join("root/root/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(
        ssh.join("authorized_keys"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEGU+3jLc59XTSVpkhYE264dElesmmtnjE0aNUQfowQp t@x\n",
    )
    .unwrap();
    let run = |args: Vec<String>| async move {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_xenplug-peer"));
        c.args(&args);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    };
    let sock = ch.sock.display().to_string();
    let doc = d.path().join("doc.json");
    std::fs::write(
        &doc,
        serde_json::json!({"instance-id": "iid-q", "generation": 2, "hostname": "qvm"}).to_string(),
    )
    .unwrap();
    let o = run(vec![
        "send".into(),
        "--socket".into(),
        sock.clone(),
        "--config".into(),
        doc.display().to_string(),
    ])
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(agent.applied_state().unwrap()["generation"], 2);
    for (q, want) in [
        ("ping", "{}"),
        ("info", "xenplug-apply-config"),
        ("hostname", "host-name"),
        ("osinfo", "{"),
        ("time", ""),
        ("generation", "iid-q"),
        ("ssh-keys", "AAAAC3NzaC1lZDI1NTE5AAAAIEGU"),
    ] {
        let o = run(vec![
            "query".into(),
            "--socket".into(),
            sock.clone(),
            q.into(),
        ])
        .await;
        assert!(
            o.status.success(),
            "{q}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v.to_string().contains(want), "{q}: {v}");
    }
    // An error reply from the real agent: exit code 5.
    let o = run(vec![
        "query".into(),
        "--socket".into(),
        sock.clone(),
        "--args".into(),
        "{\"username\": \"nobody-here\"}".into(),
        "guest-ssh-get-authorized-keys".into(),
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The guest's own report of its state (what the agent's publisher puts in its hub) reaches the
/// daemon as `xenplug-guest-state` events on the channel, is kept per VM, and `list` shows it,
/// as a table and as JSON; a change is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_state_reports_are_kept_and_listed() {
    use xenplug_channel::qga::{GuestInterface, GuestState};
    let mut h = Host::new();
    let xs = h.xsd.store();
    std::fs::write(
        h.store.join("statevm.json"),
        serde_json::json!({"instance-id": "iid-statevm", "generation": 1}).to_string(),
    )
    .unwrap();
    let ch = PtyChannel::new(h.dir.path(), "s");
    let agent = AgentRun::start(&ch.tty, &h.dir.path().join("root-s"));
    let mut st = GuestState {
        os_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
        os_distro: Some("debian".into()),
        os_majorver: Some("12".into()),
        hostname: Some("statevm".into()),
        meminfo_total: Some(2_000_000),
        interfaces: vec![GuestInterface {
            name: "eth0".into(),
            mac: Some("00:16:3e:00:00:51".into()),
            vif: Some(0),
            ipv4: vec!["192.0.2.51".into()],
            ipv6: vec!["2001:db8::51".into()],
        }],
        ..Default::default()
    };
    agent.hub.publish(st.clone());
    add_domain(&xs, 52, "statevm", &uuid(52), &ch.sock);
    h.start(h.config());
    let r = wait_for(T, "the guest's report", || async {
        h.row(52)
            .await
            .filter(|r| r["guest"]["os-name"] == "Debian GNU/Linux 12 (bookworm)")
    })
    .await;
    assert_eq!(
        r["guest"]["interfaces"][0]["ipv4"],
        serde_json::json!(["192.0.2.51"])
    );
    assert_eq!(r["guest"]["interfaces"][0]["vif"], 0);
    // Delivery went on as before.
    wait_state(&h, 52, "configured", T).await;

    // An address comes: a new report, followed.
    st.interfaces[0].ipv4.push("198.51.100.7".into());
    agent.hub.publish(st.clone());
    wait_for(T, "the second address", || async {
        h.row(52).await.filter(|r| {
            r["guest"]["interfaces"][0]["ipv4"] == serde_json::json!(["192.0.2.51", "198.51.100.7"])
        })
    })
    .await;

    let run = |json: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_xenplug-peer"));
        c.arg("list");
        if json {
            c.arg("--json");
        }
        c.arg("--control").arg(&h.control);
        tokio::task::spawn_blocking(move || c.output().unwrap())
    };
    let o = run(false).await.unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.contains("statevm")).unwrap();
    for want in [
        "Debian GNU/Linux 12",
        "192.0.2.51,198.51.100.7,2001:db8::51",
    ] {
        assert!(line.contains(want), "{want} missing in {line:?}");
    }
    assert!(text.lines().next().unwrap().contains("ADDRESSES"));
    let o = run(true).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["domid"] == 52)
        .unwrap();
    assert_eq!(row["guest"]["hostname"], "statevm");
    assert_eq!(row["guest"]["meminfo-total"], 2_000_000);
    assert!(row["guest"]["reported_at"].as_u64().unwrap() > 0);
    h.stop().await;
    drop(agent);
}
