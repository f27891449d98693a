//! `XsClient` against the real daemon over its socket.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use xenplug_xenstore::{
    transact, Access, Errno, Perm, WatchEvent, XenStore, XsClient, XsError, XsOps,
};
use xenplug_xenstored::testing::{shared_daemon_env, spawn_daemon, spawn_daemon_with_domains};

fn p(domid: u32, access: Access) -> Perm {
    Perm { domid, access }
}

fn errno<T: std::fmt::Debug>(r: xenplug_xenstore::Result<T>) -> Errno {
    match r {
        Err(XsError::Daemon { errno, .. }) => errno,
        other => panic!("expected a daemon error, got {other:?}"),
    }
}

fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

const WAIT: Option<Duration> = Some(Duration::from_secs(5));
const BRIEF: Option<Duration> = Some(Duration::from_millis(100));

#[test]
fn every_trait_method_over_the_socket() {
    let d = spawn_daemon();
    let xs = d.client();
    assert_eq!(xs.read("/c/x").unwrap(), None);
    xs.write("/c/x", "value with spaces").unwrap();
    assert_eq!(
        xs.read("/c/x").unwrap().as_deref(),
        Some("value with spaces")
    );
    xs.mkdir("/c/dir/sub").unwrap();
    assert_eq!(xs.directory("/c").unwrap(), ["x", "dir"]);
    assert_eq!(xs.get_perms("/c/x").unwrap(), [p(0, Access::None)]);
    xs.set_perms("/c/x", &[p(0, Access::Read), p(3, Access::Both)])
        .unwrap();
    assert_eq!(
        xs.get_perms("/c/x").unwrap(),
        [p(0, Access::Read), p(3, Access::Both)]
    );
    xs.rm("/c/dir").unwrap();
    xs.rm("/c/dir").unwrap();
    assert_eq!(errno(xs.rm("/c/none/deeper")), Errno::ENOENT);
    assert_eq!(errno(xs.directory("/c/none")), Errno::ENOENT);
    assert_eq!(errno(xs.write("bad path", "x")), Errno::EINVAL);
    assert_eq!(xs.domain_path(3).unwrap(), "/local/domain/3");
    assert_eq!(
        xs.read("name").unwrap().as_deref(),
        Some("Domain-0"),
        "relative to dom0"
    );

    // Transactions.
    let tx = xs.begin().unwrap();
    tx.write("/c/tx", "1").unwrap();
    tx.mkdir("/c/txdir").unwrap();
    assert_eq!(tx.read("/c/tx").unwrap().as_deref(), Some("1"));
    assert_eq!(tx.directory("/c").unwrap(), ["x", "tx", "txdir"]);
    tx.set_perms("/c/tx", &[p(0, Access::Read)]).unwrap();
    assert_eq!(tx.get_perms("/c/tx").unwrap(), [p(0, Access::Read)]);
    tx.rm("/c/x").unwrap();
    assert_eq!(xs.read("/c/tx").unwrap(), None, "not yet committed");
    tx.commit().unwrap();
    assert_eq!(xs.read("/c/tx").unwrap().as_deref(), Some("1"));
    assert_eq!(xs.read("/c/x").unwrap(), None);
    {
        let tx = xs.begin().unwrap();
        tx.write("/c/aborted", "1").unwrap();
    }
    assert_eq!(xs.read("/c/aborted").unwrap(), None);

    // Watches.
    xs.watch("/c", "tok").unwrap();
    assert_eq!(xs.read_watch(WAIT).unwrap(), Some(ev("/c", "tok")));
    xs.write("/c/w", "1").unwrap();
    assert_eq!(xs.read_watch(WAIT).unwrap(), Some(ev("/c/w", "tok")));
    xs.unwatch("/c", "tok").unwrap();
    xs.write("/c/w", "2").unwrap();
    assert_eq!(xs.read_watch(BRIEF).unwrap(), None);
    assert_eq!(errno(xs.unwatch("/c", "tok")), Errno::ENOENT);
}

#[test]
fn events_arriving_during_requests_are_queued() {
    let d = spawn_daemon();
    let watcher = d.client();
    let writer = d.client();
    watcher.watch("/q", "t").unwrap();
    for i in 0..20 {
        writer.write(&format!("/q/{i}"), "x").unwrap();
    }
    // These replies come after the queued events on the same socket.
    watcher.write("/q/own", "y").unwrap();
    assert_eq!(watcher.read("/q/0").unwrap().as_deref(), Some("x"));
    let mut got = Vec::new();
    while let Some(e) = watcher.read_watch(BRIEF).unwrap() {
        got.push(e.path);
    }
    let mut expected = vec!["/q".to_string()];
    expected.extend((0..20).map(|i| format!("/q/{i}")));
    expected.push("/q/own".into());
    assert_eq!(got, expected);
}

#[test]
fn read_watch_times_out_and_waits() {
    let d = spawn_daemon();
    let xs = d.client();
    xs.watch("/later", "t").unwrap();
    assert_eq!(xs.read_watch(WAIT).unwrap(), Some(ev("/later", "t")));
    let start = Instant::now();
    assert_eq!(
        xs.read_watch(Some(Duration::from_millis(200))).unwrap(),
        None
    );
    assert!(start.elapsed() >= Duration::from_millis(190));
    let writer = d.client();
    // The write comes once this thread is asleep in read_watch (its state in /proc is 'S').
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let t = std::thread::spawn(move || {
        xenplug_testkit::wait_until("the reader blocked", Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/self/task/{me}/stat")).is_ok_and(|st| {
                st.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('S'))
            })
        });
        writer.write("/later/x", "1").unwrap();
    });
    assert_eq!(xs.read_watch(None).unwrap(), Some(ev("/later/x", "t")));
    t.join().unwrap();
}

#[test]
fn transact_retries_under_a_real_concurrent_conflict() {
    let d = spawn_daemon();
    let xs = d.client();
    xs.write("/cnt", "0").unwrap();
    // Two threads increment the same counter in transactions; a barrier makes the first
    // attempts overlap so at least one commit must fail with EAGAIN and be retried.
    let barrier = Arc::new(Barrier::new(2));
    let socket = d.socket().to_path_buf();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            let socket = socket.clone();
            std::thread::spawn(move || {
                let xs = XsClient::open_socket(&socket).unwrap();
                let mut attempts = 0u32;
                transact(&xs, 10, |tx| {
                    attempts += 1;
                    let v: u32 = tx.read("/cnt")?.unwrap().parse().unwrap();
                    tx.write("/cnt", &(v + 1).to_string())?;
                    if attempts == 1 {
                        barrier.wait(); // both have read and written, neither committed
                    }
                    Ok(())
                })
                .unwrap();
                attempts
            })
        })
        .collect();
    let attempts: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        xs.read("/cnt").unwrap().as_deref(),
        Some("2"),
        "no lost update"
    );
    assert_eq!(
        attempts.iter().sum::<u32>(),
        3,
        "exactly one retry: {attempts:?}"
    );

    // A conflict that never goes away exhausts the attempts with EAGAIN.
    let other = d.client();
    let mut n = 0;
    let r = transact(&xs, 3, |tx| {
        n += 1;
        tx.read("/cnt")?;
        tx.write("/cnt2", "x")?;
        other.write("/cnt", &n.to_string())?;
        Ok(())
    });
    assert_eq!(errno(r), Errno::EAGAIN);
    assert_eq!(n, 3);
}

#[test]
fn domain_sockets_act_as_guests() {
    let d = spawn_daemon_with_domains(&[5]);
    let dom0 = d.client();
    dom0.mkdir("/local/domain/5").unwrap();
    dom0.set_perms("/local/domain/5", &[p(5, Access::None)])
        .unwrap();
    let guest = d.client_as(5);
    guest.write("device/vif/0/state", "1").unwrap();
    assert_eq!(
        dom0.read("/local/domain/5/device/vif/0/state")
            .unwrap()
            .as_deref(),
        Some("1")
    );
    assert_eq!(errno(guest.read("/local/domain/0/name")), Errno::EACCES);
    assert_eq!(errno(guest.is_domain_introduced(5)), Errno::EACCES);
    guest.watch("device", "rel").unwrap();
    assert_eq!(guest.read_watch(WAIT).unwrap(), Some(ev("device", "rel")));
    dom0.write("/local/domain/5/device/vif/0/state", "4")
        .unwrap();
    assert_eq!(
        guest.read_watch(WAIT).unwrap(),
        Some(ev("device/vif/0/state", "rel"))
    );
    // Domain management, special watches.
    dom0.watch("@introduceDomain", "i").unwrap();
    dom0.watch("@releaseDomain", "r").unwrap();
    assert_eq!(
        dom0.read_watch(WAIT).unwrap(),
        Some(ev("@introduceDomain", "i"))
    );
    assert_eq!(
        dom0.read_watch(WAIT).unwrap(),
        Some(ev("@releaseDomain", "r"))
    );
    assert!(!dom0.is_domain_introduced(5).unwrap());
    dom0.introduce_domain(5, 0x1234, 7).unwrap();
    assert!(dom0.is_domain_introduced(5).unwrap());
    assert_eq!(
        dom0.read_watch(WAIT).unwrap(),
        Some(ev("@introduceDomain", "i"))
    );
    dom0.release_domain(5).unwrap();
    assert_eq!(
        dom0.read_watch(WAIT).unwrap(),
        Some(ev("@releaseDomain", "r"))
    );
    assert!(!dom0.is_domain_introduced(5).unwrap());
    assert_eq!(errno(dom0.release_domain(5)), Errno::ENOENT);
    // CONTROL switch of a dom0 connection.
    let switched = d.client();
    assert_eq!(switched.control(&["xenplug-set-domid", "5"]).unwrap(), "OK");
    assert_eq!(
        switched.read("device/vif/0/state").unwrap().as_deref(),
        Some("4")
    );
    assert_eq!(errno(switched.control(&["check"])), Errno::EACCES);
    // RESET_WATCHES
    dom0.reset_watches().unwrap();
    dom0.introduce_domain(6, 1, 1).unwrap();
    assert_eq!(dom0.read_watch(BRIEF).unwrap(), None);
}

#[test]
fn directory_part_over_the_socket() {
    let d = spawn_daemon();
    let xs = d.client();
    let names: Vec<String> = (0..600).map(|i| format!("entry-{i:05}")).collect();
    let tx = xs.begin().unwrap();
    for n in &names {
        tx.write(&format!("/big/{n}"), "").unwrap();
    }
    tx.commit().unwrap();
    assert_eq!(xs.directory("/big").unwrap(), names);
    let tx = xs.begin().unwrap();
    assert_eq!(
        tx.directory("/big").unwrap(),
        names,
        "inside a transaction too"
    );
}

/// The environment-configured client: xenstore-rs for plain operations, one connection only
/// until something needs the second.
#[test]
fn open_from_environment_uses_xenstore_rs_first() {
    let d = shared_daemon_env();
    let xs = XsClient::open().unwrap();
    xs.write("/env/x", "1").unwrap();
    assert_eq!(xs.read("/env/x").unwrap().as_deref(), Some("1"));
    assert_eq!(xs.read("/env/missing").unwrap(), None);
    assert_eq!(xs.directory("/env").unwrap(), ["x"]);
    xs.rm("/env/x").unwrap();
    assert_eq!(errno(xs.rm("/env/a/b")), Errno::ENOENT);
    assert_eq!(errno(xs.write("/bad path", "v")), Errno::EINVAL);
    assert!(
        !xs.wire_connection_open(),
        "plain operations need one connection"
    );
    xs.mkdir("/env/m").unwrap();
    assert!(xs.wire_connection_open());
    assert_eq!(d.store().read("/env/m").unwrap().as_deref(), Some(""));
    // A directory over one payload: xenstore-rs gets E2BIG, the client falls back.
    let names: Vec<String> = (0..500).map(|i| format!("n-{i:06}")).collect();
    transact(&xs, 3, |tx| {
        for n in &names {
            tx.mkdir(&format!("/env/big/{n}"))?;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(xs.directory("/env/big").unwrap(), names);
}

#[test]
fn client_reports_a_vanished_daemon() {
    let mut d = spawn_daemon();
    let xs = d.client();
    xs.write("/v", "1").unwrap();
    d.stop();
    let err = xs.read("/v").unwrap_err();
    assert!(matches!(err, XsError::Io(_)), "{err}");
}

#[test]
fn batched_reads_and_listings_take_one_round_trip_each() {
    let d = spawn_daemon();
    let xs = d.client();
    for i in 0..300 {
        xs.write(&format!("/b/{i}/physical-device"), &format!("7:{i:x}"))
            .unwrap();
    }
    // A listing too long for one reply (E2BIG) inside a batch.
    for i in 0..400 {
        xs.write(&format!("/big/a-rather-long-node-name-{i:04}"), "")
            .unwrap();
    }
    xs.watch("/b/7", "tok").unwrap();
    assert_eq!(xs.read_watch(WAIT).unwrap(), Some(ev("/b/7", "tok")));

    let mut paths: Vec<String> = (0..300)
        .map(|i| format!("/b/{i}/physical-device"))
        .collect();
    paths.push("/b/none/physical-device".into());
    // A watch event arrives while the batch is in flight: it is queued, not lost.
    let other = d.client();
    other.write("/b/7/mode", "w").unwrap();
    let values = xs.read_many(&paths).unwrap();
    assert_eq!(values.len(), 301);
    for (i, v) in values.iter().take(300).enumerate() {
        assert_eq!(v.as_deref(), Some(format!("7:{i:x}").as_str()));
    }
    assert_eq!(values[300], None);
    assert_eq!(xs.read_watch(WAIT).unwrap(), Some(ev("/b/7/mode", "tok")));

    let lists = xs
        .directory_many(&["/b/1".into(), "/missing".into(), "/big".into()])
        .unwrap();
    assert_eq!(
        lists[0].as_deref(),
        Some(&["physical-device".to_string()][..])
    );
    assert_eq!(lists[1], None);
    assert_eq!(lists[2].as_ref().unwrap().len(), 400);

    // Errors other than ENOENT are reported; the connection stays usable.
    assert!(xs.read_many(&[]).unwrap().is_empty());
    assert_eq!(
        errno(xs.read_many(&["relative/../bad".into(), "/b/1/physical-device".into()])),
        Errno::EINVAL
    );
    assert_eq!(
        xs.read("/b/1/physical-device").unwrap().as_deref(),
        Some("7:1")
    );

    // The in-memory store gives the same answers through the trait's defaults.
    let mem = d.store();
    assert_eq!(mem.read_many(&paths).unwrap(), values);
}
