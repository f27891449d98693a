//! The daemon in-process against an embedded xenstored and simulated guests: discovery of
//! existing and new VMs, delivery and verification, document changes, guest reboot (new domid,
//! new QEMU, new socket), peer restart, QEMU not there yet, the policy for guest requests.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use xenplug_simguest::GuestOptions;

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_and_new_vms_are_configured_and_listed() {
    let mut h = Host::new();
    let xs = h.xsd.store();
    // VM 1 exists before the daemon starts, found by name; VM 2 comes later, found by UUID.
    let s1 = h.sock("a");
    std::fs::write(h.store.join("alpha.json"), doc("alpha", 3)).unwrap();
    std::fs::write(h.store.join(format!("{}.json", uuid(2))), doc("beta", 5)).unwrap();
    let g1 = h.guest(&s1, guest_opts());
    add_domain(&xs, 1, "alpha", &uuid(1), &s1);
    h.start(h.config());
    let r = wait_state(&h, 1, "configured", T).await;
    assert_eq!(r["applied_generation"], 3);
    assert_eq!(r["desired_generation"], 3);
    assert_eq!(r["vm_name"], "alpha");
    assert!(r["last_handshake"].as_u64().unwrap() > 0);
    assert_eq!(r["last_error"], serde_json::Value::Null);
    assert_eq!(g1.generation(), Some(3));

    let s2 = h.sock("b");
    let g2 = h.guest(&s2, guest_opts());
    add_domain(&xs, 2, "beta", &uuid(2), &s2);
    let r = wait_state(&h, 2, "configured", T).await;
    assert_eq!(r["applied_generation"], 5);
    assert_eq!(g2.generation(), Some(5));
    assert_eq!(h.list().await.len(), 2);
    // The handshake ignored the stale output every connection starts with.
    assert!(
        r["counters"]["ignored_frames"].as_u64().unwrap() >= 1,
        "{r}"
    );
    let s = xenplug_peer::daemon::control_request(&h.control, "summary")
        .await
        .unwrap();
    assert_eq!(s["states"]["configured"], 2);
    assert_eq!(h.log_lines("channel-up").len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_change_and_missing_document() {
    let mut h = Host::new();
    let xs = h.xsd.store();
    let s = h.sock("c");
    let g = h.guest(&s, guest_opts());
    add_domain(&xs, 4, "gamma", &uuid(4), &s);
    h.start(h.config());
    // No document yet: synchronised, nothing to do, said so.
    let r = wait_state(&h, 4, "no-config", T).await;
    assert!(
        r["last_error"].as_str().unwrap().contains("no document"),
        "{r}"
    );
    std::fs::write(h.store.join("gamma.json"), doc("gamma", 1)).unwrap();
    wait_state(&h, 4, "configured", T).await;
    assert_eq!(g.generation(), Some(1));
    std::fs::write(h.store.join("gamma.json"), doc("gamma", 2)).unwrap();
    wait_for(T, "generation 2 applied", || async {
        h.row(4)
            .await
            .filter(|r| r["applied_generation"] == 2 && r["state"] == "configured")
    })
    .await;
    assert_eq!(g.generation(), Some(2));
    assert_eq!(g.applies.load(Ordering::Relaxed), 2);
    // An invalid edit is reported; the applied configuration stays.
    std::fs::write(h.store.join("gamma.json"), "{\"generation\": 3}").unwrap();
    let r = wait_state(&h, 4, "no-config", T).await;
    assert!(r["last_error"].as_str().unwrap().contains("invalid"), "{r}");
    assert_eq!(g.generation(), Some(2));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_redelivers_on_the_new_domain() {
    let mut h = Host::new();
    let admin = h.xsd.client();
    std::fs::write(h.store.join("delta.json"), doc("delta", 7)).unwrap();
    let s = h.sock("d");
    let g1 = h.guest(&s, guest_opts());
    // libxl's own nodes, written by the toolstack simulator.
    let cfg = format!(
        "name = \"delta\"\nuuid = \"{}\"\ntype = \"pv\"\nchannel = [ 'connection=socket,name={CHANNEL},path={}' ]\n",
        uuid(9),
        s.display()
    );
    let mut out = Vec::new();
    let dom = xenplug_sim::Domain::from_config(&cfg, 5).unwrap();
    let opts = xenplug_sim::Options {
        domid: 5,
        ..Default::default()
    };
    let mut sim = xenplug_sim::Sim::new(&admin, opts, dom, &mut out);
    sim.create().unwrap();
    h.start(h.config());
    wait_state(&h, 5, "configured", T).await;
    assert_eq!(g1.generation(), Some(7));

    // xl reboot: the domain is destroyed (QEMU and its socket go), then recreated as domid 6
    // with a fresh guest whose agent has no state.
    sim.destroy();
    drop(sim);
    h.kill_guest(0, &s);
    wait_for(T, "domain 5 gone from the list", || async {
        h.row(5).await.is_none().then_some(())
    })
    .await;
    let dom = xenplug_sim::Domain::from_config(&cfg, 6).unwrap();
    let opts = xenplug_sim::Options {
        domid: 6,
        ..Default::default()
    };
    let mut out2 = Vec::new();
    let mut sim = xenplug_sim::Sim::new(&admin, opts, dom, &mut out2);
    sim.create().unwrap();
    // QEMU starts a little after libxl wrote the nodes: the daemon backs off meanwhile.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = h.row(6).await.expect("domain 6 listed");
    assert!(
        ["backoff", "connecting"].contains(&r["state"].as_str().unwrap()),
        "{r}"
    );
    let g2 = h.guest(&s, guest_opts());
    let r = wait_state(&h, 6, "configured", T).await;
    assert_eq!(r["applied_generation"], 7);
    assert_eq!(g2.generation(), Some(7));
    assert_eq!(g2.applies.load(Ordering::Relaxed), 1);
    sim.destroy();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_restart_resyncs_without_reapplying() {
    let mut h = Host::new();
    let xs = h.xsd.store();
    std::fs::write(h.store.join("eps.json"), doc("eps", 2)).unwrap();
    let s = h.sock("e");
    let g = h.guest(&s, guest_opts());
    add_domain(&xs, 8, "eps", &uuid(8), &s);
    h.start(h.config());
    wait_state(&h, 8, "configured", T).await;
    h.stop().await;
    let syncs = g.syncs.load(Ordering::Relaxed);
    h.start(h.config());
    let r = wait_state(&h, 8, "configured", T).await;
    assert_eq!(r["counters"]["handshakes"], 1);
    assert!(g.syncs.load(Ordering::Relaxed) > syncs);
    assert_eq!(g.connections.load(Ordering::Relaxed), 2);
    // Already applied: verified, not applied again.
    assert_eq!(g.applies.load(Ordering::Relaxed), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_window_and_slow_agent_start() {
    let mut h = Host::new();
    let xs = h.xsd.store();
    std::fs::write(h.store.join("zeta.json"), doc("zeta", 1)).unwrap();
    let s = h.sock("z");
    // The agent opens the tty 700 ms after the connection: syncs before that are echoed with
    // CR/LF and flushed; the repeated handshake gets through afterwards.
    let g = h.guest(
        &s,
        GuestOptions {
            open_delay: Duration::from_millis(700),
            ..guest_opts()
        },
    );
    add_domain(&xs, 3, "zeta", &uuid(3), &s);
    h.start(h.config());
    let r = wait_state(&h, 3, "configured", T).await;
    assert!(r["counters"]["syncs_sent"].as_u64().unwrap() >= 3, "{r}");
    assert!(
        r["counters"]["ignored_frames"].as_u64().unwrap() >= 2,
        "{r}"
    );
    assert_eq!(g.generation(), Some(1));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_requests_pass_the_policy_and_denials_are_logged() {
    let mut h = Host::new();
    let xs = h.xsd.store();
    let policy = h.dir.path().join("policy");
    std::fs::write(
        &policy,
        "deny all\n\
         allow command xenplug-request-config vm-class web\n\
         allow command xenplug-log if-flag guest-log true\n",
    )
    .unwrap();
    // The VM's document and class are in the store before the daemon starts, so the class the
    // policy matches on is known from the first event on.
    std::fs::write(h.store.join("ev.json"), doc("ev", 1)).unwrap();
    std::fs::write(h.store.join("ev.meta.toml"), "class = \"web\"\n").unwrap();
    let mut cfg = h.config();
    cfg.policy_file = Some(policy);
    h.start(cfg);
    // A hand-driven guest for domain 12: answers the handshake and the generation query like
    // an agent, then sends events (guest-originated requests are only taken once in sync).
    let s = h.sock("ev");
    let l = tokio::net::UnixListener::bind(&s).unwrap();
    add_domain(&xs, 12, "ev", &uuid(12), &s);
    let mut conn = manual_agent(&l, "iid-ev", 1).await;
    wait_state(&h, 12, "configured", T).await;
    conn.write_all(
        b"{\"event\": \"xenplug-log\", \"data\": {\"message\": \"hi\\u0007\"}}\n\
          {\"event\": \"xenplug-request-config\"}\n\
          {\"event\": \"guest-exec\", \"data\": {\"path\": \"/bin/sh\"}}\n",
    )
    .await
    .unwrap();
    let denied = wait_for(T, "two denials logged", || async {
        let d = h.log_lines("guest-request-denied");
        (d.len() >= 2).then_some(d)
    })
    .await;
    let names: Vec<_> = denied.iter().map(|d| d["request"].clone()).collect();
    assert!(names.contains(&json!("xenplug-log")), "{denied:?}");
    assert!(names.contains(&json!("guest-exec")), "{denied:?}");
    assert!(denied.iter().all(|d| d["domid"] == 12));
    // The allowed request's line may come after the denials (they are written by different
    // steps of the session): wait for it rather than race it.
    let allowed = wait_for(T, "the allowed request logged", || async {
        let a = h.log_lines("guest-request-allowed");
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(allowed[0]["request"], "xenplug-request-config");
    assert_eq!(allowed[0]["rule_line"], 2);
    let r = h.row(12).await.unwrap();
    assert_eq!(r["denied_requests"], 2);
    // A flood of events is rate-limited before the policy (and before the log).
    let flood: Vec<u8> = std::iter::repeat_n(&b"{\"event\": \"x\"}"[..], 500)
        .flatten()
        .copied()
        .collect();
    conn.write_all(&flood).await.unwrap();
    wait_for(T, "rate limiting", || async {
        h.row(12)
            .await
            .filter(|r| r["denied_requests"].as_u64().unwrap() >= 400)
    })
    .await;
    let logged = h.log_lines("guest-request-denied").len();
    assert!(logged < 20, "{logged} denials logged for a flood");
    assert_eq!(h.log_lines("guest-request-rate-limited").len(), 1);
    h.stop().await;
}
