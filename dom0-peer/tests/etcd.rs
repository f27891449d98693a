//! The daemon with an etcd store, against a real 3-member etcd cluster (Debian's etcd 3.4 on
//! loopback, `common/etcd.rs`): documents before and after the start, changes, NoCloud seeds,
//! status with the guest's addresses, a malformed document, compaction while the daemon is cut
//! off, the leader killed mid-run, a VM moving between two hosts (both orders), etcd down for a
//! while, a host cut off past its lease with its status queue overflowing, the policy and
//! classes from etcd, TLS with client certificates and authentication, and `fleet-status` /
//! `list` through the binary. Every delivery is checked against the simulated
//! guest's history of applies: nothing lost, nothing twice.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::etcd::{available, EtcdCluster, Relay, TlsFiles, SERIAL};
use common::*;
use serde_json::{json, Value};
use xenplug_simguest::{GuestOptions, GuestState};

const T: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_xenplug-peer");

fn history(g: &GuestState) -> Vec<u64> {
    g.history.lock().unwrap().iter().map(|(_, g)| *g).collect()
}

async fn status(c: &EtcdCluster, prefix: &str, uuid: &str) -> Option<Value> {
    c.get(&format!("{prefix}/status/{uuid}")).await
}

/// Wait until the status key of `uuid` satisfies `f`; returns it.
async fn wait_status(
    c: &EtcdCluster,
    prefix: &str,
    uuid: &str,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(T, what, || async {
        status(c, prefix, uuid).await.filter(|v| f(v))
    })
    .await
}

async fn wait_connected(h: &Host) {
    wait_for(T, "the daemon's watch established", || async {
        (h.store_state().await["connected"] == true).then_some(())
    })
    .await;
}

/// Put with retries (a member may be down: the client moves to another).
async fn put(c: &EtcdCluster, key: &str, value: &str) {
    wait_for(T, &format!("put {key}"), || async {
        let mut cl = c.client().await;
        tokio::time::timeout(Duration::from_secs(2), cl.put(key, value, None))
            .await
            .ok()?
            .ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_before_and_after_start_changes_status_and_fleet_status() {
    if !available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = EtcdCluster::start(3).await;
    let p = "/fleet1";
    let mut h = Host::new();
    let xs = h.xsd.store();
    // Documents of VMs of other hosts (never parsed here), and VM 1's, before the start.
    for i in 100..105 {
        c.put(
            &format!("{p}/vms/{}", uuid(i)),
            &doc(&format!("other{i}"), 1),
        )
        .await;
    }
    c.put(&format!("{p}/vms/{}", uuid(1)), &doc("alpha", 3))
        .await;
    c.put(
        &format!("{p}/vms/{}.meta", uuid(1)),
        r#"{"class": "web", "flags": {"guest-log": true}}"#,
    )
    .await;
    let s1 = h.sock("a");
    let g1 = h.guest(
        &s1,
        GuestOptions {
            guest_state: Some(
                json!({"os-name": "Debian GNU/Linux 12 (bookworm)", "hostname": "alpha",
                "interfaces": [{"name": "eth0", "mac": "00:16:3e:00:00:01", "vif": 0,
                                "ipv4": ["192.0.2.10"], "ipv6": ["2001:db8::10"]}]}),
            ),
            ..guest_opts()
        },
    );
    add_domain(&xs, 1, "alpha", &uuid(1), &s1);
    h.start(h.etcd_config(&c.url(p), "xen-a"));
    let r = wait_state(&h, 1, "configured", T).await;
    assert_eq!(r["applied_generation"], 3);
    let st = wait_status(&c, p, &uuid(1), "VM 1's status configured", |v| {
        v["state"] == "configured" && v["guest"]["interfaces"][0]["ipv4"][0] == "192.0.2.10"
    })
    .await;
    assert_eq!(st["host"], "xen-a");
    assert_eq!(st["domid"], 1);
    assert_eq!(st["name"], "alpha");
    assert_eq!(st["wanted_generation"], 3);
    assert_eq!(st["applied_generation"], 3);
    assert_eq!(st["instance_id"], "iid-alpha");
    assert_eq!(st["applied_instance_id"], "iid-alpha");
    assert_eq!(st["guest"]["interfaces"][0]["ipv6"][0], "2001:db8::10");
    assert!(st["updated_at"].as_u64().unwrap() >= st["since"].as_u64().unwrap());
    assert!(st["last_error"].is_null());

    // A VM whose document is written after the start (a NoCloud seed as a JSON object).
    let s2 = h.sock("b");
    let g2 = h.guest(&s2, guest_opts());
    add_domain(&xs, 2, "beta", &uuid(2), &s2);
    let r = wait_state(&h, 2, "no-config", T).await;
    assert!(
        r["last_error"].as_str().unwrap().contains("no document"),
        "{r}"
    );
    let seed = json!({"meta-data": "instance-id: iid-beta\nlocal-hostname: beta\n",
                      "user-data": "#cloud-config\nfqdn: beta.example.org\n", "generation": 2});
    c.put(&format!("{p}/vms/{}", uuid(2)), &seed.to_string())
        .await;
    let r = wait_state(&h, 2, "configured", T).await;
    assert_eq!(r["applied_generation"], 2);

    // A change reaches the running VM without a restart, exactly once.
    c.put(&format!("{p}/vms/{}", uuid(1)), &doc("alpha", 4))
        .await;
    wait_status(&c, p, &uuid(1), "generation 4 in VM 1's status", |v| {
        v["applied_generation"] == 4 && v["state"] == "configured"
    })
    .await;
    assert_eq!(history(&g1), vec![3, 4]);
    assert_eq!(history(&g2), vec![2]);

    // fleet-status: every VM of the fleet, with its host and state; documents without a
    // running VM too.
    let out = Command::new(BIN)
        .args(["fleet-status", "--store", &c.url(p), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 7, "{rows:?}");
    let one = rows.iter().find(|r| r["uuid"] == uuid(1)).unwrap();
    assert_eq!(
        (one["host"].as_str(), one["state"].as_str()),
        (Some("xen-a"), Some("configured"))
    );
    assert_eq!(one["document"], true);
    let other = rows.iter().find(|r| r["uuid"] == uuid(100)).unwrap();
    assert_eq!(other["state"], "not-running");
    let out = Command::new(BIN)
        .args(["fleet-status", "--store", &c.url(p)])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let line = table.lines().find(|l| l.contains(&uuid(1))).unwrap();
    assert!(
        line.contains("xen-a") && line.contains("configured") && line.contains("192.0.2.10"),
        "{table}"
    );

    // list says where documents come from.
    let out = Command::new(BIN)
        .args(["list", "--control"])
        .arg(&h.control)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("store {}: connected", c.url(p))),
        "{text}"
    );
    let st = h.store_state().await;
    assert_eq!(st["documents"], 7);
    assert!(st["requests"]["txn"].as_u64().unwrap() >= 1, "{st}");
    // Pages of two keys: the first list took several range requests.
    assert!(st["requests"]["range"].as_u64().unwrap() >= 4, "{st}");

    // The VM goes away: its status is deleted.
    remove_domain(&xs, 2);
    wait_for(T, "VM 2's status deleted", || async {
        status(&c, p, &uuid(2)).await.is_none().then_some(())
    })
    .await;
    h.stop().await;
    // A dead host's statuses expire with its lease (5 s here).
    wait_for(T, "VM 1's status expired", || async {
        status(&c, p, &uuid(1)).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_document_is_refused_and_reported() {
    if !available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = EtcdCluster::start(3).await;
    let p = "/fleet2";
    let mut h = Host::new();
    let xs = h.xsd.store();
    c.put(
        &format!("{p}/vms/{}", uuid(3)),
        r#"{"instance-id": "iid-g", "generation": 1, "colour": "red"}"#,
    )
    .await;
    let s = h.sock("g");
    let g = h.guest(&s, guest_opts());
    add_domain(&xs, 3, "gamma", &uuid(3), &s);
    h.start(h.etcd_config(&c.url(p), "xen-a"));
    let r = wait_state(&h, 3, "no-config", T).await;
    assert!(r["last_error"].as_str().unwrap().contains("invalid"), "{r}");
    let st = wait_status(&c, p, &uuid(3), "the refusal in the status", |v| {
        v["state"] == "no-config"
    })
    .await;
    let e = st["last_error"].as_str().unwrap();
    assert!(
        e.contains(&format!("{p}/vms/{}", uuid(3))) && e.contains("colour"),
        "{e}"
    );
    assert!(st["wanted_generation"].is_null());
    let logged = h.log_lines("store-invalid-document");
    assert_eq!(logged.len(), 1, "{logged:?}");
    // Nothing was sent to the guest.
    assert_eq!(g.applies.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Fixed: delivered.
    c.put(&format!("{p}/vms/{}", uuid(3)), &doc("gamma", 1))
        .await;
    wait_status(&c, p, &uuid(3), "configured after the fix", |v| {
        v["state"] == "configured" && v["last_error"].is_null()
    })
    .await;
    assert_eq!(history(&g), vec![1]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_disconnected_lists_again() {
    if !available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = EtcdCluster::start(3).await;
    let relay = Relay::new(&c.endpoints()).await;
    let p = "/fleet3";
    let mut h = Host::new();
    let xs = h.xsd.store();
    c.put(&format!("{p}/vms/{}", uuid(4)), &doc("delta", 1))
        .await;
    c.put(&format!("{p}/vms/{}", uuid(5)), &doc("eps", 1)).await;
    let s4 = h.sock("d");
    let g4 = h.guest(&s4, guest_opts());
    add_domain(&xs, 4, "delta", &uuid(4), &s4);
    let s5 = h.sock("e");
    let g5 = h.guest(&s5, guest_opts());
    add_domain(&xs, 5, "eps", &uuid(5), &s5);
    h.start(h.etcd_config(&relay.url(p), "xen-a"));
    wait_state(&h, 4, "configured", T).await;
    wait_state(&h, 5, "configured", T).await;
    wait_connected(&h).await;

    relay.cut();
    wait_for(T, "the daemon sees etcd gone", || async {
        (h.store_state().await["connected"] == false).then_some(())
    })
    .await;
    assert_eq!(h.log_lines("store-disconnected").len(), 1);
    // While it is cut off: a change, a deletion, more history, and a compaction past all of it.
    c.put(&format!("{p}/vms/{}", uuid(4)), &doc("delta", 2))
        .await;
    c.delete(&format!("{p}/vms/{}", uuid(5))).await;
    for i in 0..20 {
        c.put(&format!("{p}/vms/{}", uuid(200 + i)), &doc("x", 1))
            .await;
    }
    c.compact().await;
    // The daemon keeps serving what it saw.
    let r = h.row(4).await.unwrap();
    assert_eq!(
        (r["state"].as_str(), r["applied_generation"].as_u64()),
        (Some("configured"), Some(1))
    );

    relay.restore();
    wait_for(T, "generation 2 delivered after the re-list", || async {
        h.row(4)
            .await
            .filter(|r| r["applied_generation"] == 2 && r["state"] == "configured")
    })
    .await;
    let r = wait_state(&h, 5, "no-config", T).await;
    assert!(
        r["last_error"].as_str().unwrap().contains("no document"),
        "{r}"
    );
    let st = h.store_state().await;
    assert!(st["compacted"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["lists"].as_u64().unwrap() >= 2, "{st}");
    assert_eq!(st["documents"], 21);
    assert!(!h.log_lines("store-compacted").is_empty());
    assert_eq!(history(&g4), vec![1, 2]);
    assert_eq!(history(&g5), vec![1]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_run_loses_and_duplicates_nothing() {
    if !available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = EtcdCluster::start(3).await;
    let p = "/fleet4";
    let mut h = Host::new();
    let xs = h.xsd.store();
    let n = 5u32;
    let mut guests = Vec::new();
    for i in 0..n {
        let s = h.sock(&format!("v{i}"));
        guests.push(h.guest(&s, guest_opts()));
        add_domain(&xs, 10 + i, &format!("vm{i}"), &uuid(10 + i), &s);
    }
    h.start(h.etcd_config(&c.url(p), "xen-a"));
    let mut killed = None;
    for g in 1..=8u64 {
        for i in 0..n {
            put(
                &c,
                &format!("{p}/vms/{}", uuid(10 + i)),
                &doc(&format!("vm{i}"), g),
            )
            .await;
        }
        if g == 4 {
            // The leader dies while the changes are on their way.
            let l = c.leader().await;
            c.kill(l);
            killed = Some(l);
        }
        for i in 0..n {
            wait_for(T, &format!("vm{i} at generation {g}"), || async {
                h.row(10 + i)
                    .await
                    .filter(|r| r["applied_generation"] == g && r["state"] == "configured")
            })
            .await;
        }
        if g == 6 {
            c.start_member(killed.unwrap());
        }
    }
    for (i, g) in guests.iter().enumerate() {
        assert_eq!(history(g), (1..=8).collect::<Vec<_>>(), "vm{i}");
    }
    // The statuses caught up too.
    for i in 0..n {
        wait_status(&c, p, &uuid(10 + i), "status at generation 8", |v| {
            v["applied_generation"] == 8
        })
        .await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_moves_between_two_hosts() {
    if !available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = EtcdCluster::start(3).await;
    let p = "/fleet5";
    let mut a = Host::new();
    let mut b = Host::new();
    c.put(&format!("{p}/vms/{}", uuid(7)), &doc("mover", 5))
        .await;
    a.start(a.etcd_config(&c.url(p), "xen-a"));
    b.start(b.etcd_config(&c.url(p), "xen-b"));
    // The VM's agent state lives on its disk: the same state on whichever host runs it.
    let disk = Arc::new(GuestState::default());
    let sa = a.sock("m");
    let ia = a.guest_with(&sa, guest_opts(), disk.clone());
    add_domain(&a.xsd.store(), 3, "mover", &uuid(7), &sa);
    wait_status(&c, p, &uuid(7), "configured on xen-a", |v| {
        v["host"] == "xen-a" && v["state"] == "configured"
    })
    .await;
    assert_eq!(history(&disk), vec![5]);

    // Migration: the VM starts on B (another domid) while A still has its domain…
    let sb = b.sock("m");
    let ib = b.guest_with(&sb, guest_opts(), disk.clone());
    add_domain(&b.xsd.store(), 9, "mover", &uuid(7), &sb);
    wait_status(&c, p, &uuid(7), "configured on xen-b", |v| {
        v["host"] == "xen-b" && v["state"] == "configured" && v["domid"] == 9
    })
    .await;
    // …then A destroys it. A's delete must not remove B's status.
    remove_domain(&a.xsd.store(), 3);
    a.kill_guest(ia, &sa);
    wait_for(T, "A forgets the VM", || async {
        a.row(3).await.is_none().then_some(())
    })
    .await;
    wait_for(T, "A's status queue drained", || async {
        (a.store_state().await["status_queued"] == 0).then_some(())
    })
    .await;
    let st = status(&c, p, &uuid(7))
        .await
        .expect("B's status survives A's removal");
    assert_eq!(
        (st["host"].as_str(), st["state"].as_str()),
        (Some("xen-b"), Some("configured"))
    );
    // B verified what the guest already had: no second delivery.
    assert_eq!(history(&disk), vec![5]);
    // A change now reaches the VM on B.
    c.put(&format!("{p}/vms/{}", uuid(7)), &doc("mover", 6))
        .await;
    wait_status(&c, p, &uuid(7), "generation 6 on xen-b", |v| {
        v["host"] == "xen-b" && v["applied_generation"] == 6
    })
    .await;
    assert_eq!(history(&disk), vec![5, 6]);

    // And back, the other way round: destroyed on B first (B deletes its status, which is
    // still its own), then started on A, which verifies the guest and shows A.
    remove_domain(&b.xsd.store(), 9);
    b.kill_guest(ib, &sb);
    wait_for(T, "B's status deleted with the VM", || async {
        status(&c, p, &uuid(7)).await.is_none().then_some(())
    })
    .await;
    let sa = a.sock("m2");
    a.guest_with(&sa, guest_opts(), disk.clone());
    add_domain(&a.xsd.store(), 4, "mover", &uuid(7), &sa);
    wait_status(&c, p, &uuid(7), "configured on xen-a again", |v| {
        v["host"] == "xen-a" && v["state"] == "configured" && v["domid"] == 4
    })
    .await;
    assert_eq!(history(&disk), vec![5, 6]);
    let rows = b.list().await;
    assert!(rows.is_empty(), "B still lists the VM: {rows:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_for_a_while_then_back() {
    if !available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = EtcdCluster::start(3).await;
    let p = "/fleet6";
    let mut h = Host::new();
    let xs = h.xsd.store();
    c.put(&format!("{p}/vms/{}", uuid(21)), &doc("one", 1))
        .await;
    c.put(&format!("{p}/vms/{}", uuid(22)), &doc("two", 1))
        .await;
    let s1 = h.sock("one");
    let g1 = h.guest(&s1, guest_opts());
    add_domain(&xs, 21, "one", &uuid(21), &s1);
    h.start(h.etcd_config(&c.url(p), "xen-a"));
    wait_status(&c, p, &uuid(21), "VM one configured", |v| {
        v["state"] == "configured"
    })
    .await;
    wait_connected(&h).await;

    c.kill_all();
    wait_for(T, "the daemon sees etcd gone", || async {
        (h.store_state().await["connected"] == false).then_some(())
    })
    .await;
    // A VM started during the outage is served from the documents already seen; its status
    // waits in the queue.
    let s2 = h.sock("two");
    let g2 = h.guest(&s2, guest_opts());
    add_domain(&xs, 22, "two", &uuid(22), &s2);
    let r = wait_state(&h, 22, "configured", T).await;
    assert_eq!(r["applied_generation"], 1);
    let st = wait_for(T, "status writes failing and queued", || async {
        let s = h.store_state().await;
        (s["status_failing"] == true && s["status_queued"].as_u64() >= Some(1)).then_some(s)
    })
    .await;
    assert_eq!(st["revision"].as_i64().map(|r| r > 0), Some(true));
    // `list` says so, on stdout with the table and on stderr with --json.
    let out = Command::new(BIN)
        .args(["list", "--control"])
        .arg(&h.control)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().next().unwrap().contains("UNREACHABLE"),
        "{text}"
    );
    assert!(text.contains("serving the last documents seen"), "{text}");
    let out = Command::new(BIN)
        .args(["list", "--json", "--control"])
        .arg(&h.control)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNREACHABLE"));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(!h.log_lines("status-write-failed").is_empty());

    c.start_all();
    wait_status(&c, p, &uuid(22), "VM two's queued status written", |v| {
        v["state"] == "configured" && v["host"] == "xen-a"
    })
    .await;
    wait_for(T, "the daemon reconnected", || async {
        let s = h.store_state().await;
        (s["connected"] == true && s["status_queued"] == 0 && s["status_failing"] == false)
            .then_some(())
    })
    .await;
    // The outage changed nothing for the guests: one delivery each.
    assert_eq!(history(&g1), vec![1]);
    assert_eq!(history(&g2), vec![1]);
    // And documents flow again.
    put(&c, &format!("{p}/vms/{}", uuid(21)), &doc("one", 2)).await;
    wait_status(&c, p, &uuid(21), "generation 2 after the outage", |v| {
        v["applied_generation"] == 2
    })
    .await;
    assert_eq!(history(&g1), vec![1, 2]);
    assert!(!h.log_lines("store-connected").is_empty());
    h.stop().await;
}

#[test]
fn bad_store_urls_are_usage_errors() {
    for (url, why) in [
        ("etcd://", "has no /PREFIX"),
        ("etcd://127.0.0.1:2379", "has no /PREFIX"),
        ("etcd://127.0.0.1:2379/", "PREFIX is empty"),
        ("etcd://127.0.0.1/x", "has no port"),
        ("etcd://127.0.0.1:70000/x", "not a number from 1 to 65535"),
        ("etcd://u:p@127.0.0.1:2379/x", "no credentials in the URL"),
        ("http://127.0.0.1:2379/x", "unsupported store URL scheme"),
        ("etcd://127.0.0.1:2379/a/../b", "`..`"),
    ] {
        let out = Command::new(BIN)
            .args(["daemon", "--store", url, "--control", "/nonexistent/c.sock"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains("--store") && err.contains(why), "{url}: {err}");
    }
    // Options that cannot work are refused before anything starts.
    let out = Command::new(BIN)
        .args([
            "daemon",
            "--store",
            "etcd://127.0.0.1:2379/x",
            "--cert",
            "/c.pem",
        ])
        .env_remove("ETCDCTL_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cert and --key go together"));
    let out = Command::new(BIN)
        .args(["daemon", "--store", "etcds://127.0.0.1:2379/x"])
        .env_remove("ETCDCTL_CACERT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS needs --cacert"));
    let out = Command::new(BIN)
        .args(["fleet-status", "--store", "/srv/store"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs an etcd store"));
    // Nobody there: a clear error and its own exit code.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args([
            "fleet-status",
            "--store",
            &format!("etcd://127.0.0.1:{port}/x"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("etcd etcd://127.0.0.1:{port}/x"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_classes_come_from_etcd() {
    use tokio::io::AsyncWriteExt;
    if !available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = EtcdCluster::start(3).await;
    let p = "/fleet7";
    let mut h = Host::new();
    let xs = h.xsd.store();
    let allow_web = "deny all\nallow command xenplug-log vm-class web\n";
    c.put(&format!("{p}/policy"), allow_web).await;
    c.put(&format!("{p}/vms/{}", uuid(31)), &doc("ev", 1)).await;
    let meta = format!("{p}/vms/{}.meta", uuid(31));
    c.put(&meta, r#"{"class": "web"}"#).await;
    // No --policy: the policy is PREFIX/policy. (More events than the default burst of 5.)
    let mut cfg = h.etcd_config(&c.url(p), "xen-a");
    cfg.rates.events_burst = 100;
    h.start(cfg);
    let s = h.sock("ev");
    let l = tokio::net::UnixListener::bind(&s).unwrap();
    add_domain(&xs, 31, "ev", &uuid(31), &s);
    let mut conn = manual_agent(&l, "iid-ev", 1).await;
    wait_state(&h, 31, "configured", T).await;
    let event = b"{\"event\": \"xenplug-log\", \"data\": {\"message\": \"hello\"}}\n";
    let count = |what: &'static str, n: usize| {
        let h = &h;
        async move {
            wait_for(T, &format!("{n} {what}"), || async {
                let l = h.log_lines(what);
                (l.len() >= n).then_some(l)
            })
            .await
        }
    };
    conn.write_all(event).await.unwrap();
    let allowed = count("guest-request-allowed", 1).await;
    assert_eq!(allowed[0]["rule_line"], 2, "{allowed:?}");

    // The VM's class changes in etcd: the policy no longer matches it.
    let rev = c.put(&meta, "class = \"db\"\n").await;
    wait_for(T, "the daemon at the class change's revision", || async {
        (h.store_state().await["revision"].as_i64() >= Some(rev)).then_some(())
    })
    .await;
    conn.write_all(event).await.unwrap();
    let denied = count("guest-request-denied", 1).await;
    assert_eq!(
        (
            denied[0]["request"].as_str(),
            denied[0]["vm_class"].as_str()
        ),
        (Some("xenplug-log"), Some("db")),
        "{denied:?}"
    );

    // The class back, and the policy changed in etcd to deny everything.
    c.put(&meta, r#"{"class": "web"}"#).await;
    let rev = c.put(&format!("{p}/policy"), "deny all\n").await;
    wait_for(T, "the new policy loaded", || async {
        h.log_lines("policy-loaded")
            .into_iter()
            .find(|l| l["revision"] == rev && l["rules"] == 1)
    })
    .await;
    conn.write_all(event).await.unwrap();
    count("guest-request-denied", 2).await;

    // An invalid policy is refused and the one in force stays; a valid one allows again.
    let bad = c.put(&format!("{p}/policy"), "allow command\n").await;
    wait_for(T, "the invalid policy reported", || async {
        h.log_lines("policy-invalid")
            .into_iter()
            .find(|l| l["revision"] == bad)
    })
    .await;
    conn.write_all(event).await.unwrap();
    count("guest-request-denied", 3).await;
    let rev = c.put(&format!("{p}/policy"), allow_web).await;
    wait_for(T, "the allowing policy loaded again", || async {
        h.log_lines("policy-loaded")
            .into_iter()
            .find(|l| l["revision"] == rev)
    })
    .await;
    conn.write_all(event).await.unwrap();
    assert_eq!(count("guest-request-allowed", 2).await.len(), 2);
    // Deleted: deny all.
    c.delete(&format!("{p}/policy")).await;
    wait_for(T, "the deleted policy dropped", || async {
        h.log_lines("policy-loaded")
            .into_iter()
            .find(|l| l["revision"].as_i64() > Some(rev) && l["rules"] == 0)
    })
    .await;
    conn.write_all(event).await.unwrap();
    count("guest-request-denied", 4).await;
    assert_eq!(h.log_lines("guest-request-allowed").len(), 2);
    h.stop().await;
}

/// Use `tls`'s client certificate and CA and log in as `user` (NAME:PASSWORD).
fn secure(cfg: &mut xenplug_peer::daemon::Config, tls: &TlsFiles, user: &str) {
    let f = cfg.fleet.as_mut().unwrap();
    for o in [&mut f.watch.etcd, &mut f.status.etcd] {
        o.cacert = Some(tls.ca.clone());
        o.cert = Some(tls.client_cert.clone());
        o.key = Some(tls.client_key.clone());
        o.user = Some(user.into());
    }
}

/// Kills a daemon process if the test fails with it running.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates_and_authentication() {
    if !available() || !xenplug_testkit::require_program("openssl") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let p = "/fleet8";
    // Clients over TLS with client certificates required, and authentication on: the peer's
    // user may read and write below PREFIX/ only.
    let mut c = EtcdCluster::start_tls(3).await;
    c.enable_auth("root-pw", "xenplug-peer", "peer-pw", &format!("{p}/"))
        .await;
    let url = c.url(p);
    assert!(url.starts_with("etcds://"), "{url}");
    c.put(&format!("{p}/vms/{}", uuid(41)), &doc("secure", 2))
        .await;
    c.put(&format!("{p}/vms/{}", uuid(42)), &doc("cli", 1))
        .await;
    c.put(&format!("{p}/policy"), "deny all\n").await;
    let tls = c.tls.as_ref().unwrap();

    // In-process daemon standing for xen-a.
    let mut a = Host::new();
    let sa = a.sock("s");
    let ga = a.guest(&sa, guest_opts());
    add_domain(&a.xsd.store(), 41, "secure", &uuid(41), &sa);
    let mut cfg = a.etcd_config(&url, "xen-a");
    secure(&mut cfg, tls, "xenplug-peer:peer-pw");
    a.start(cfg);
    wait_status(&c, p, &uuid(41), "VM 41 configured over TLS", |v| {
        v["state"] == "configured" && v["host"] == "xen-a"
    })
    .await;
    // The watch works through TLS and authentication too.
    c.put(&format!("{p}/vms/{}", uuid(41)), &doc("secure", 3))
        .await;
    wait_status(&c, p, &uuid(41), "generation 3 over TLS", |v| {
        v["applied_generation"] == 3
    })
    .await;
    assert_eq!(history(&ga), vec![2, 3]);
    assert!(a.log_lines("policy-loaded").iter().any(|l| l["rules"] == 1));

    // The binary, standing for xen-b, with etcdctl's options and environment.
    let mut b = Host::new();
    let sb = b.sock("s");
    let gb = b.guest(&sb, guest_opts());
    add_domain(&b.xsd.store(), 42, "cli", &uuid(42), &sb);
    let mut cmd = Command::new(BIN);
    cmd.args([
        "daemon",
        "--store",
        &url,
        "--host",
        "xen-b",
        "--lease-ttl",
        "5",
    ])
    .arg("--cacert")
    .arg(&tls.ca)
    .arg("--cert")
    .arg(&tls.client_cert)
    .arg("--key")
    .arg(&tls.client_key)
    .args(["--user", "xenplug-peer", "--log-level", "error"])
    .arg("--control")
    .arg(&b.control)
    .arg("--xenstore")
    .arg(b.xsd.socket())
    .env("ETCDCTL_PASSWORD", "peer-pw")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null());
    let mut daemon = Running(Some(cmd.spawn().unwrap()));
    wait_status(&c, p, &uuid(42), "VM 42 configured by the binary", |v| {
        v["state"] == "configured" && v["host"] == "xen-b"
    })
    .await;
    assert_eq!(history(&gb), vec![1]);

    // fleet-status with etcdctl's environment.
    let fleet = |user: &str, with_cert: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["fleet-status", "--json", "--store", &url])
            .env("ETCDCTL_CACERT", &tls.ca)
            .env("ETCDCTL_USER", user)
            .env_remove("ETCDCTL_PASSWORD")
            .env_remove("ETCDCTL_CERT")
            .env_remove("ETCDCTL_KEY");
        if with_cert {
            cmd.env("ETCDCTL_CERT", &tls.client_cert)
                .env("ETCDCTL_KEY", &tls.client_key);
        }
        cmd.output().unwrap()
    };
    let out = fleet("xenplug-peer:peer-pw", true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let hosts: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["host"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        hosts,
        [("xen-a", "configured"), ("xen-b", "configured")],
        "{rows:?}"
    );
    // A wrong password and a missing client certificate are errors that say so (exit 10).
    let out = fleet("xenplug-peer:wrong", true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    let out = fleet("xenplug-peer:peer-pw", false);
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A daemon with a wrong password serves nothing from etcd and says why.
    let mut w = Host::new();
    let sw = w.sock("s");
    let gw = w.guest(&sw, guest_opts());
    add_domain(&w.xsd.store(), 43, "secure", &uuid(41), &sw);
    let mut cfg = w.etcd_config(&url, "xen-w");
    secure(&mut cfg, tls, "xenplug-peer:wrong");
    cfg.fleet.as_mut().unwrap().initial_list_wait = Duration::from_millis(500);
    w.start(cfg);
    let st = wait_for(T, "the wrong password reported", || async {
        let s = w.store_state().await;
        (s["connected"] == false
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("authentication failed")))
        .then_some(s)
    })
    .await;
    assert_eq!(st["listed"], false, "{st}");
    let r = wait_state(&w, 43, "no-config", T).await;
    assert!(
        r["last_error"].as_str().unwrap().contains("no document"),
        "{r}"
    );
    assert_eq!(gw.applies.load(std::sync::atomic::Ordering::Relaxed), 0);
    // …and wrote nothing: VM 41's status is still xen-a's.
    assert_eq!(status(&c, p, &uuid(41)).await.unwrap()["host"], "xen-a");

    let mut child = daemon.0.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    w.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_past_the_lease_with_the_status_queue_overflowing() {
    if !available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = EtcdCluster::start(3).await;
    let relay = Relay::new(&c.endpoints()).await;
    let p = "/fleet9";
    let mut h = Host::new();
    let xs = h.xsd.store();
    for i in 51..=55 {
        c.put(&format!("{p}/vms/{}", uuid(i)), &doc(&format!("q{i}"), 1))
            .await;
    }
    let mut guests = Vec::new();
    let mut add = |h: &mut Host, i: u32| {
        let s = h.sock(&format!("q{i}"));
        guests.push(h.guest(&s, guest_opts()));
        add_domain(&xs, i, &format!("q{i}"), &uuid(i), &s);
    };
    add(&mut h, 51);
    add(&mut h, 52);
    let mut cfg = h.etcd_config(&relay.url(p), "xen-a");
    // At most two VMs' statuses wait while etcd is away (lease: 5 s).
    cfg.fleet.as_mut().unwrap().status.max_queue = 2;
    h.start(cfg);
    for i in [51, 52] {
        wait_status(&c, p, &uuid(i), "configured before the cut", |v| {
            v["state"] == "configured"
        })
        .await;
    }
    wait_connected(&h).await;

    relay.cut();
    wait_for(T, "the daemon sees etcd gone", || async {
        (h.store_state().await["connected"] == false).then_some(())
    })
    .await;
    // Three VMs start meanwhile: served from the documents seen, their statuses overflow the
    // queue.
    for i in 53..=55 {
        add(&mut h, i);
    }
    for i in 53..=55 {
        wait_state(&h, i, "configured", T).await;
    }
    wait_for(T, "the queue overflow reported", || async {
        (!h.log_lines("status-queue-overflow").is_empty()).then_some(())
    })
    .await;
    // The host stays away longer than its lease: etcd expires its statuses.
    wait_for(T, "the cut-off host's statuses expired", || async {
        c.get_prefix(&format!("{p}/status/"))
            .await
            .is_empty()
            .then_some(())
    })
    .await;

    relay.restore();
    // Every status of the host is written again, under a new lease.
    for i in 51..=55 {
        wait_status(&c, p, &uuid(i), "every status back after the outage", |v| {
            v["state"] == "configured" && v["host"] == "xen-a"
        })
        .await;
    }
    let leases: Vec<Value> = h.log_lines("status-lease");
    assert!(leases.len() >= 2, "{leases:?}");
    let mut cl = c.client().await;
    let kv = cl
        .get(format!("{p}/status/{}", uuid(51)), None)
        .await
        .unwrap();
    let lease = kv.kvs()[0].lease();
    assert_eq!(
        format!("{lease:x}"),
        leases.last().unwrap()["lease"].as_str().unwrap()
    );
    wait_for(T, "the queue drained", || async {
        let s = h.store_state().await;
        (s["status_queued"] == 0 && s["status_failing"] == false).then_some(())
    })
    .await;
    // Nothing was delivered twice.
    for (g, i) in guests.iter().zip(51..) {
        assert_eq!(history(g), vec![1], "q{i}");
    }
    h.stop().await;
}

/// A document near the 1 MiB bound: a cloud-config whose user-data carries a large file.
fn big_doc(name: &str, generation: u64) -> String {
    let payload = "x".repeat(700 * 1024);
    json!({
        "meta-data": format!("instance-id: iid-{name}\nlocal-hostname: {name}\n"),
        "user-data": format!(
            "#cloud-config\nwrite_files:\n  - path: /var/lib/{name}.blob\n    content: {payload}\n"
        ),
        "generation": generation,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_near_the_size_bound_are_listed_and_watched() {
    if !available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = EtcdCluster::start(3).await;
    let relay = Relay::new(&c.endpoints()).await;
    let p = "/fleet10";
    let mut h = Host::new();
    let xs = h.xsd.store();
    // Seven documents of 700 KiB: more than one gRPC message of 4 MiB holds, in a list page
    // of the default 1 000 keys.
    for i in 61..=67 {
        put(
            &c,
            &format!("{p}/vms/{}", uuid(i)),
            &big_doc(&format!("b{i}"), 1),
        )
        .await;
    }
    let s = h.sock("b61");
    let g = h.guest(&s, guest_opts());
    add_domain(&xs, 61, "b61", &uuid(61), &s);
    let mut cfg = h.etcd_config(&relay.url(p), "xen-a");
    cfg.fleet.as_mut().unwrap().watch.page = 1000;
    h.start(cfg);
    let r = wait_state(&h, 61, "configured", T).await;
    assert_eq!(r["applied_generation"], 1);
    wait_connected(&h).await;
    // Cut off while all seven change: the resumed watch catches up on 5 MiB of events.
    relay.cut();
    wait_for(T, "the daemon sees etcd gone", || async {
        (h.store_state().await["connected"] == false).then_some(())
    })
    .await;
    for i in 61..=66 {
        put(
            &c,
            &format!("{p}/vms/{}", uuid(i)),
            &big_doc(&format!("b{i}"), 2),
        )
        .await;
    }
    relay.restore();
    wait_for(T, "generation 2 after catching up", || async {
        h.row(61)
            .await
            .filter(|r| r["applied_generation"] == 2 && r["state"] == "configured")
    })
    .await;
    assert_eq!(history(&g), vec![1, 2]);
    let st = h.store_state().await;
    assert_eq!(st["documents"], 7, "{st}");
    // Caught up by resuming the watch from the last revision seen, not by listing again.
    assert_eq!(
        (st["lists"].as_u64(), st["compacted"].as_u64()),
        (Some(1), Some(0)),
        "{st}"
    );
    h.stop().await;
}
