//! The one-shot CLI (`send`, `query`, `list`) as other tools run it: against a simulated guest,
//! against Debian's real `qemu-ga` (over a Unix socket, and over a pty behind a listening socket
//! the way QEMU serves a channel, with a cooked tty echoing), and its exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use xenplug_peer::client::exit;

fn peer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xenplug-peer"))
}

/// Run the binary off the async runtime (the guests are served by it meanwhile).
async fn run(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn code(o: &Output) -> u8 {
    o.status.code().unwrap() as u8
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_path(p: &Path) {
    let end = Instant::now() + Duration::from_secs(10);
    while !p.exists() {
        assert!(Instant::now() < end, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// qemu-ga: `$QEMU_GA`, then the copy `tools/channel-deps.sh` unpacks, then PATH.
fn qemu_ga() -> Option<PathBuf> {
    let deps = std::env::var_os("XENPLUG_CHANNEL_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/xenplug-channel-deps"));
    std::env::var_os("QEMU_GA")
        .map(PathBuf::from)
        .or_else(|| Some(deps.join("qga/root/usr/sbin/qemu-ga")).filter(|p| p.is_file()))
        .or_else(|| xenplug_testkit::which("qemu-ga"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_query_against_the_simulated_agent() {
    let mut h = Host::new();
    let s = h.sock("one");
    let g = h.guest(
        &s,
        xenplug_simguest::GuestOptions {
            open_delay: Duration::from_millis(300),
            hostname: "sim-one".into(),
            ..guest_opts()
        },
    );
    let cfg = h.dir.path().join("one.json");
    std::fs::write(&cfg, doc("one", 4)).unwrap();
    let mut c = peer();
    c.arg("send")
        .arg("--socket")
        .arg(&s)
        .arg("--config")
        .arg(&cfg);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v = json_out(&o);
    assert_eq!(v["generation"], 4);
    assert_eq!(v["verified"], true);
    assert_eq!(g.generation(), Some(4));

    for (q, check) in [
        ("ping", Value::Object(Default::default())),
        ("hostname", serde_json::json!({"host-name": "sim-one"})),
        (
            "generation",
            serde_json::json!({"instance-id": "iid-one", "generation": 4}),
        ),
    ] {
        let mut c = peer();
        c.arg("query").arg("--socket").arg(&s).arg(q);
        let o = run(c).await;
        assert_eq!(code(&o), 0, "{q}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(json_out(&o), check, "{q}");
    }
    // A reply over the frame bound (the same bound as the daemon's unless raised): refused
    // with a word on --max-frame, and fine once raised.
    let mut c = peer();
    c.args(["query", "--max-frame", "1024", "--socket"])
        .arg(&s)
        .arg("info");
    let o = run(c).await;
    assert_eq!(code(&o), exit::OTHER);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--max-frame"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut c = peer();
    c.args(["query", "--max-frame", "65536", "--socket"])
        .arg(&s)
        .arg("info");
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(json_out(&o)["supported_commands"].as_array().unwrap().len() > 40);
    // NoCloud seed directory.
    let nc = h.dir.path().join("seed");
    std::fs::create_dir(&nc).unwrap();
    std::fs::write(
        nc.join("meta-data"),
        "instance-id: iid-nc\nlocal-hostname: nc\n",
    )
    .unwrap();
    std::fs::write(nc.join("user-data"), "#cloud-config\n").unwrap();
    std::fs::write(nc.join("generation"), "9\n").unwrap();
    let mut c = peer();
    c.arg("send")
        .arg("--socket")
        .arg(&s)
        .arg("--config")
        .arg(&nc);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(g.generation(), Some(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    let mut h = Host::new();
    // Socket missing.
    let mut c = peer();
    c.args(["query", "--socket"])
        .arg(h.sock("none"))
        .arg("ping");
    let o = run(c).await;
    assert_eq!(code(&o), exit::SOCKET_MISSING);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is the VM running"));
    // Socket exists, nobody listening (stale socket file): ECONNREFUSED.
    let dead = h.sock("dead");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let mut c = peer();
    c.args(["query", "--socket"]).arg(&dead).arg("ping");
    assert_eq!(code(&run(c).await), exit::SOCKET_MISSING);
    // Listening but nobody answers the handshake (QEMU up, no agent): echo only.
    let mute = h.sock("mute");
    let l = tokio::net::UnixListener::bind(&mute).unwrap();
    let mute_task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let mut c = peer();
    c.args(["query", "--handshake-timeout", "1.5", "--socket"])
        .arg(&mute)
        .arg("ping");
    let t = Instant::now();
    let o = run(c).await;
    assert_eq!(
        code(&o),
        exit::HANDSHAKE_TIMEOUT,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&o.stderr).contains("handshake"));
    mute_task.abort();
    // Agent error reply.
    let s = h.sock("err");
    h.guest(&s, guest_opts());
    let mut c = peer();
    c.args(["query", "--socket"])
        .arg(&s)
        .arg("guest-no-such-command");
    let o = run(c).await;
    assert_eq!(code(&o), exit::AGENT_ERROR);
    assert!(String::from_utf8_lossy(&o.stderr).contains("CommandNotFound"));
    // Invalid document: refused before connecting.
    let bad = h.dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\"instance-id\": \"x\", \"generation\": 1, \"packages\": []}",
    )
    .unwrap();
    let mut c = peer();
    c.args(["send", "--socket"])
        .arg(&s)
        .arg("--config")
        .arg(&bad);
    let o = run(c).await;
    assert_eq!(code(&o), exit::BAD_DOCUMENT);
    // Unknown query name: usage.
    let mut c = peer();
    c.args(["query", "--socket"]).arg(&s).arg("reboot");
    assert_eq!(code(&run(c).await), exit::USAGE);
    // A log budget that is not a number of seconds: usage, before anything is started.
    for bad in ["0", "-1", "NaN", "inf"] {
        let mut c = peer();
        c.args(["daemon", &format!("--log-interval={bad}"), "--store"])
            .arg(&h.store)
            .arg("--control")
            .arg(h.sock("ctl"));
        let o = run(c).await;
        assert_eq!(code(&o), exit::USAGE, "--log-interval {bad}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--log-interval"));
        assert!(!h.sock("ctl").exists());
    }
    // `list` without a daemon.
    let mut c = peer();
    c.args(["list", "--control"]).arg(h.sock("nodaemon"));
    assert_eq!(code(&run(c).await), exit::DAEMON_UNREACHABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_the_daemon_inventory() {
    let mut h = Host::new();
    let xs = h.xsd.store();
    std::fs::write(h.store.join("lv.json"), doc("lv", 2)).unwrap();
    let s = h.sock("lv");
    h.guest(&s, guest_opts());
    add_domain(&xs, 30, "lv", &uuid(30), &s);
    h.start(h.config());
    wait_state(&h, 30, "configured", Duration::from_secs(15)).await;
    let mut c = peer();
    c.args(["list", "--control"]).arg(&h.control);
    let o = run(c).await;
    assert_eq!(code(&o), 0);
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.contains("lv")).unwrap();
    for want in ["30", &uuid(30), "configured", "ago", "2"] {
        assert!(line.contains(want), "{want} missing in {line:?}");
    }
    let mut c = peer();
    c.args(["list", "--json", "--control"]).arg(&h.control);
    let v = json_out(&run(c).await);
    assert_eq!(v[0]["applied_generation"], 2);
    assert_eq!(v[0]["counters"]["log_suppressed"], 0);
    h.stop().await;
}

fn start_qemu_ga(dir: &Path, args: &[&str]) -> Option<Proc> {
    let ga = qemu_ga()?;
    let child = Command::new(ga)
        .args(args)
        .arg("-t")
        .arg(dir)
        .arg("-f")
        .arg(dir.join("qga.pid"))
        .arg("-l")
        .arg(dir.join("qga.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Some(Proc(child))
}

async fn qga_queries(sock: &Path) {
    for (q, check) in [
        ("ping", "{}"),
        ("info", "supported_commands"),
        ("hostname", "host-name"),
        ("network", "hardware-address"),
        ("osinfo", "kernel-release"),
    ] {
        let mut c = peer();
        c.args(["query", "--socket"]).arg(sock).arg(q);
        let o = run(c).await;
        assert_eq!(code(&o), 0, "{q}: {}", String::from_utf8_lossy(&o.stderr));
        let v = json_out(&o);
        assert!(v.to_string().contains(check), "{q}: {v}");
    }
    // qemu-ga has no configuration commands: a clear agent error.
    let mut c = peer();
    c.args(["query", "--socket"]).arg(sock).arg("generation");
    let o = run(c).await;
    assert_eq!(code(&o), exit::AGENT_ERROR);
    assert!(String::from_utf8_lossy(&o.stderr).contains("CommandNotFound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_qemu_ga_over_a_unix_socket() {
    if !xenplug_testkit::require(
        qemu_ga().is_some(),
        "needs qemu-ga (Debian qemu-guest-agent)",
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("qga.sock");
    let _ga = start_qemu_ga(
        d.path(),
        &["-m", "unix-listen", "-p", sock.to_str().unwrap()],
    );
    wait_path(&sock);
    qga_queries(&sock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_qemu_ga_over_a_pty_channel_with_echo() {
    if !xenplug_testkit::require(
        qemu_ga().is_some(),
        "needs qemu-ga (Debian qemu-guest-agent)",
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // QEMU + the hvc tty: a persistent pty (cooked until qemu-ga opens it) behind a listening
    // socket. The query starts before qemu-ga: its first syncs are echoed with CR/LF by the
    // cooked tty, then flushed by qemu-ga on open; the repeated handshake gets through.
    let ch = PtyChannel::new(d.path(), "hvc1");
    let mut c = peer();
    c.args(["query", "--handshake-timeout", "15", "--socket"])
        .arg(&ch.sock)
        .arg("hostname");
    let q = tokio::task::spawn_blocking(move || c.output().unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ga = start_qemu_ga(
        d.path(),
        &["-m", "isa-serial", "-p", ch.tty.to_str().unwrap()],
    );
    let o = q.await.unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(json_out(&o)["host-name"].is_string());
    for q in ["ping", "info"] {
        let mut c = peer();
        c.args(["query", "--socket"]).arg(&ch.sock).arg(q);
        let o = run(c).await;
        assert_eq!(code(&o), 0, "{q}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_serves_real_qemu_ga_and_reports_unsupported() {
    if !xenplug_testkit::require(
        qemu_ga().is_some(),
        "needs qemu-ga (Debian qemu-guest-agent)",
    ) {
        return;
    }
    let mut h = Host::new();
    let xs = h.xsd.store();
    let sock = h.sock("qga");
    let _ga = start_qemu_ga(
        h.dir.path(),
        &["-m", "unix-listen", "-p", sock.to_str().unwrap()],
    );
    wait_path(&sock);
    std::fs::write(h.store.join("qgavm.json"), doc("qgavm", 1)).unwrap();
    add_domain(&xs, 40, "qgavm", &uuid(40), &sock);
    h.start(h.config());
    // The handshake works against qemu-ga; configuration is not something it implements.
    let r = wait_state(&h, 40, "unsupported", Duration::from_secs(15)).await;
    assert!(r["last_handshake"].as_u64().is_some());
    assert!(
        r["last_error"]
            .as_str()
            .unwrap()
            .contains("CommandNotFound"),
        "{r}"
    );
    h.stop().await;
}
