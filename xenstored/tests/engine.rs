//! Engine semantics through `MemStore` (the same engine the daemon runs).

use std::time::Duration;

use xenplug_xenstore::wire::PAYLOAD_MAX;
use xenplug_xenstore::{transact, Access, Errno, Perm, WatchEvent, XenStore, XsError, XsOps};
use xenplug_xenstored::engine::{Reply, Request, CONTROL_SET_DOMID, DOMID_ANY};
use xenplug_xenstored::MemStore;

fn p(domid: u32, access: Access) -> Perm {
    Perm { domid, access }
}

fn errno<T: std::fmt::Debug>(r: xenplug_xenstore::Result<T>) -> Errno {
    match r {
        Err(XsError::Daemon { errno, .. }) => errno,
        other => panic!("expected a daemon error, got {other:?}"),
    }
}

const NOW: Option<Duration> = Some(Duration::from_millis(0));

fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

fn drain(xs: &MemStore) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    while let Some(e) = xs.read_watch(NOW).unwrap() {
        out.push(e);
    }
    out
}

/// dom0 prepares `/local/domain/<domid>` owned by the guest, as the toolstack does.
fn guest_home(dom0: &MemStore, domid: u32) {
    let home = format!("/local/domain/{domid}");
    dom0.mkdir(&home).unwrap();
    dom0.set_perms(&home, &[p(domid, Access::None)]).unwrap();
}

#[test]
fn initial_tree_is_dom0s() {
    let xs = MemStore::new();
    let paths: Vec<String> = xs.dump("/").into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        [
            "/",
            "/local",
            "/local/domain",
            "/local/domain/0",
            "/local/domain/0/domid",
            "/local/domain/0/name",
            "/tool",
            "/tool/xenstored",
            "/vm"
        ]
    );
    assert_eq!(xs.directory("/").unwrap(), ["tool", "local", "vm"]);
    assert_eq!(
        xs.read("/local/domain/0/name").unwrap().as_deref(),
        Some("Domain-0")
    );
    assert_eq!(xs.get_perms("/local").unwrap(), [p(0, Access::None)]);
    assert_eq!(
        xs.get_perms("@releaseDomain").unwrap(),
        [p(0, Access::None), p(DOMID_ANY, Access::Read)]
    );
    assert_eq!(
        xs.get_perms("@introduceDomain").unwrap(),
        [p(0, Access::None)]
    );
    assert_eq!(errno(xs.get_perms("@other")), Errno::ENOENT);
}

#[test]
fn write_read_mkdir_and_implicit_parents() {
    let xs = MemStore::new();
    assert_eq!(xs.read("/a/b/c").unwrap(), None);
    xs.write("/a/b/c", "v").unwrap();
    assert_eq!(xs.read("/a/b/c").unwrap().as_deref(), Some("v"));
    assert_eq!(
        xs.read("/a/b").unwrap().as_deref(),
        Some(""),
        "parent created empty"
    );
    assert_eq!(xs.directory("/a").unwrap(), ["b"]);
    xs.write("/a/b", "kept").unwrap();
    xs.mkdir("/a/b").unwrap();
    assert_eq!(
        xs.read("/a/b").unwrap().as_deref(),
        Some("kept"),
        "mkdir leaves values"
    );
    xs.mkdir("/m/n").unwrap();
    assert_eq!(xs.read("/m/n").unwrap().as_deref(), Some(""));
    xs.write("/a/b/c", "").unwrap();
    assert_eq!(xs.read("/a/b/c").unwrap().as_deref(), Some(""));
    // Children keep creation order.
    for name in ["z", "y", "x"] {
        xs.write(&format!("/o/{name}"), name).unwrap();
    }
    assert_eq!(xs.directory("/o").unwrap(), ["z", "y", "x"]);
    assert_eq!(errno(xs.directory("/nope")), Errno::ENOENT);
    // Relative paths are dom0's home.
    xs.write("rel/x", "1").unwrap();
    assert_eq!(
        xs.read("/local/domain/0/rel/x").unwrap().as_deref(),
        Some("1")
    );
    assert_eq!(xs.domain_path(7).unwrap(), "/local/domain/7");
}

#[test]
fn rm_semantics() {
    let xs = MemStore::new();
    xs.write("/r/a/b", "1").unwrap();
    xs.write("/r/a/c/d", "2").unwrap();
    xs.rm("/r/a").unwrap();
    assert_eq!(xs.read("/r/a/c/d").unwrap(), None);
    assert_eq!(xs.read("/r/a").unwrap(), None);
    assert_eq!(xs.directory("/r").unwrap(), Vec::<String>::new());
    xs.rm("/r/a").unwrap(); // missing node, parent exists: fine
    assert_eq!(errno(xs.rm("/r/x/y")), Errno::ENOENT); // parent missing too
    assert_eq!(errno(xs.rm("/")), Errno::EINVAL);
    assert_eq!(xs.engine().dump("/r").len(), 1, "no orphans left");
}

#[test]
fn path_validation() {
    let xs = MemStore::new();
    for bad in [
        "", "/a/", "//a", "/a//b", "/a b", "/a\u{e9}", "/a.b", "@x", "/a:b",
    ] {
        assert_eq!(errno(xs.write(bad, "v")), Errno::EINVAL, "{bad:?}");
        assert_eq!(errno(xs.read(bad)), Errno::EINVAL, "{bad:?}");
    }
    assert_eq!(xs.read("/").unwrap().as_deref(), Some(""));
    xs.write("/ok-_@9", "v").unwrap();
    let long = format!("/{}", "a".repeat(3072));
    assert_eq!(errno(xs.write(&long, "v")), Errno::EINVAL);
    let fits = format!("/{}", "a".repeat(3071));
    xs.write(&fits, "v").unwrap();
    // Guests are limited to 2048 bytes below their home.
    let dom0 = MemStore::new();
    guest_home(&dom0, 3);
    let guest = dom0.connect(3);
    assert_eq!(errno(guest.write(&"b".repeat(2049), "v")), Errno::EINVAL);
    // (In 64-byte components: one 2048-byte name would make its parent's record reach the
    // 2048-byte node-size quota.)
    let deep = |len: usize| {
        let full = (len - 1) / 64;
        format!("{}/", "b".repeat(63)).repeat(full) + &"b".repeat(len - 64 * full)
    };
    assert_eq!(deep(2048).len(), 2048);
    assert_eq!(errno(guest.write(&deep(2049), "v")), Errno::EINVAL);
    guest.write(&deep(2048), "v").unwrap();
}

#[test]
fn guest_relative_paths_and_permissions() {
    let dom0 = MemStore::new();
    guest_home(&dom0, 5);
    let guest = dom0.connect(5);
    assert_eq!(guest.domid(), 5);
    guest.write("data/x", "1").unwrap();
    assert_eq!(
        dom0.read("/local/domain/5/data/x").unwrap().as_deref(),
        Some("1")
    );
    assert_eq!(
        dom0.get_perms("/local/domain/5/data/x").unwrap(),
        [p(5, Access::None)],
        "a guest owns what it creates"
    );
    // dom0's nodes are invisible to the guest.
    assert_eq!(errno(guest.read("/local/domain/0/name")), Errno::EACCES);
    assert_eq!(errno(guest.read("/local/domain/0/missing")), Errno::EACCES);
    assert_eq!(
        guest.read("missing").unwrap(),
        None,
        "ENOENT: own home is readable"
    );
    assert_eq!(errno(guest.write("/vm/x", "1")), Errno::EACCES);
    assert_eq!(errno(guest.directory("/")), Errno::EACCES);
    // Explicit grants.
    dom0.write("/shared/ro", "r").unwrap();
    dom0.write("/shared/rw", "w").unwrap();
    dom0.set_perms("/shared/ro", &[p(0, Access::None), p(5, Access::Read)])
        .unwrap();
    dom0.set_perms("/shared/rw", &[p(0, Access::None), p(5, Access::Both)])
        .unwrap();
    assert_eq!(guest.read("/shared/ro").unwrap().as_deref(), Some("r"));
    assert_eq!(errno(guest.write("/shared/ro", "x")), Errno::EACCES);
    guest.write("/shared/rw", "changed").unwrap();
    assert_eq!(dom0.read("/shared/rw").unwrap().as_deref(), Some("changed"));
    // Another guest sees none of it; the default entry applies.
    let other = dom0.connect(6);
    assert_eq!(errno(other.read("/shared/ro")), Errno::EACCES);
    dom0.set_perms("/shared/ro", &[p(0, Access::Read)]).unwrap();
    assert_eq!(other.read("/shared/ro").unwrap().as_deref(), Some("r"));
    // DOMID_ANY entries apply to everyone.
    dom0.set_perms(
        "/shared/rw",
        &[p(0, Access::None), p(DOMID_ANY, Access::Read)],
    )
    .unwrap();
    assert_eq!(
        other.read("/shared/rw").unwrap().as_deref(),
        Some("changed")
    );
    // Children created by a guest under a granted node: owned by the guest, other entries kept.
    dom0.write("/shared/dir", "").unwrap();
    dom0.set_perms("/shared/dir", &[p(0, Access::None), p(5, Access::Both)])
        .unwrap();
    guest.write("/shared/dir/mine", "m").unwrap();
    assert_eq!(
        dom0.get_perms("/shared/dir/mine").unwrap(),
        [p(5, Access::None), p(5, Access::Both)]
    );
    // Created by dom0: exact copy of the parent's list.
    dom0.write("/shared/dir/dom0s", "d").unwrap();
    assert_eq!(
        dom0.get_perms("/shared/dir/dom0s").unwrap(),
        [p(0, Access::None), p(5, Access::Both)]
    );
}

#[test]
fn set_perms_rules() {
    let dom0 = MemStore::new();
    guest_home(&dom0, 5);
    let guest = dom0.connect(5);
    guest.write("mine", "x").unwrap();
    // The owner may change the list but not the owner.
    guest
        .set_perms("mine", &[p(5, Access::Read), p(0, Access::Both)])
        .unwrap();
    assert_eq!(
        guest.get_perms("mine").unwrap(),
        [p(5, Access::Read), p(0, Access::Both)]
    );
    assert_eq!(
        errno(guest.set_perms("mine", &[p(6, Access::None)])),
        Errno::EPERM
    );
    // Write access without ownership is not enough.
    dom0.write("/g", "").unwrap();
    dom0.set_perms("/g", &[p(0, Access::None), p(5, Access::Both)])
        .unwrap();
    assert_eq!(
        errno(guest.set_perms("/g", &[p(0, Access::Read)])),
        Errno::EACCES
    );
    // dom0 may give a node away.
    dom0.set_perms("/g", &[p(5, Access::None)]).unwrap();
    guest.set_perms("/g", &[p(5, Access::Read)]).unwrap();
    assert_eq!(
        errno(dom0.set_perms("/missing", &[p(0, Access::None)])),
        Errno::ENOENT
    );
    assert_eq!(errno(dom0.set_perms("/g", &[])), Errno::EINVAL);
    // Special nodes: dom0 can allow a guest to watch @introduceDomain.
    dom0.set_perms(
        "@introduceDomain",
        &[p(0, Access::None), p(5, Access::Read)],
    )
    .unwrap();
    assert_eq!(
        guest.get_perms("@introduceDomain").unwrap(),
        [p(0, Access::None), p(5, Access::Read)]
    );
    assert_eq!(
        errno(guest.set_perms("@introduceDomain", &[p(0, Access::Both)])),
        Errno::EACCES
    );
}

#[test]
fn transactions_are_isolated_and_fail_when_what_they_saw_changed() {
    let a = MemStore::new();
    let b = a.connect(0);
    a.write("/t/x", "1").unwrap();
    let tx = a.begin().unwrap();
    // Nothing is copied at start: the transaction reads the live tree (as C xenstored does)...
    b.write("/t/new", "n").unwrap();
    assert_eq!(tx.read("/t/new").unwrap().as_deref(), Some("n"));
    assert_eq!(tx.read("/t/x").unwrap().as_deref(), Some("1"));
    // ...its own writes are visible only to itself...
    tx.write("/t/y", "tx").unwrap();
    assert_eq!(tx.read("/t/y").unwrap().as_deref(), Some("tx"));
    assert_eq!(a.read("/t/y").unwrap(), None, "not visible before commit");
    // ...and it cannot commit once something it looked at changed after it looked.
    b.write("/t/x", "2").unwrap();
    assert_eq!(
        tx.read("/t/x").unwrap().as_deref(),
        Some("2"),
        "a later read sees the change, but the transaction is already doomed"
    );
    assert_eq!(
        errno(tx.commit()),
        Errno::EAGAIN,
        "/t/x changed after it was read"
    );
    assert_eq!(
        a.read("/t/y").unwrap(),
        None,
        "failed commit changes nothing"
    );
}

#[test]
fn transaction_commit_applies_and_ignores_unrelated_changes() {
    let a = MemStore::new();
    let b = a.connect(0);
    a.write("/t/x", "1").unwrap();
    a.write("/u/z", "1").unwrap();
    let tx = a.begin().unwrap();
    assert_eq!(tx.read("/t/x").unwrap().as_deref(), Some("1"));
    tx.write("/t/x", "2").unwrap();
    tx.write("/t/sub/deep", "d").unwrap();
    tx.rm("/t/gone").unwrap();
    b.write("/u/z", "other").unwrap(); // untouched by the transaction
    tx.commit().unwrap();
    assert_eq!(a.read("/t/x").unwrap().as_deref(), Some("2"));
    assert_eq!(a.read("/t/sub/deep").unwrap().as_deref(), Some("d"));
    assert_eq!(a.read("/u/z").unwrap().as_deref(), Some("other"));
    assert_eq!(a.directory("/t").unwrap(), ["x", "sub"]);
}

#[test]
fn transaction_conflicts_on_created_parent_and_removed_nodes() {
    let a = MemStore::new();
    let b = a.connect(0);
    a.write("/c", "").unwrap();
    // Both add children to /c: the second commit must fail, not lose the first child.
    let tx = a.begin().unwrap();
    tx.write("/c/one", "1").unwrap();
    b.write("/c/two", "2").unwrap();
    assert_eq!(errno(tx.commit()), Errno::EAGAIN);
    assert_eq!(a.directory("/c").unwrap(), ["two"]);
    // A node read as absent that appears meanwhile.
    let tx = a.begin().unwrap();
    assert_eq!(tx.read("/c/three").unwrap(), None);
    tx.write("/elsewhere", "x").unwrap();
    b.write("/c/three", "3").unwrap();
    assert_eq!(errno(tx.commit()), Errno::EAGAIN);
    // A node removed meanwhile.
    let tx = a.begin().unwrap();
    assert_eq!(tx.read("/c/two").unwrap().as_deref(), Some("2"));
    b.rm("/c/two").unwrap();
    assert_eq!(errno(tx.commit()), Errno::EAGAIN);
}

#[test]
fn transaction_abort_and_end_semantics() {
    let a = MemStore::new();
    {
        let tx = a.begin().unwrap();
        tx.write("/ab/x", "1").unwrap();
        // dropped: aborted
    }
    assert_eq!(a.read("/ab/x").unwrap(), None);
    // Explicit F, then the id is gone.
    let conn = MemStore::new();
    let reply = engine_exec(&conn, 0, Request::TransactionStart).unwrap();
    let Reply::TxId(id) = reply else {
        panic!("{reply:?}")
    };
    engine_exec(&conn, id, Request::Write("/f".into(), b"1".to_vec())).unwrap();
    assert_eq!(
        engine_exec(&conn, id, Request::TransactionEnd(false)),
        Ok(Reply::Ok)
    );
    assert_eq!(conn.read("/f").unwrap(), None);
    assert_eq!(
        engine_exec(&conn, id, Request::Read("/".into())),
        Err(Errno::ENOENT),
        "unknown transaction id"
    );
    assert_eq!(
        engine_exec(&conn, 0, Request::TransactionEnd(true)),
        Err(Errno::ENOENT)
    );
    // Nested start inside a transaction: EBUSY.
    let Ok(Reply::TxId(id)) = engine_exec(&conn, 0, Request::TransactionStart) else {
        panic!()
    };
    assert_eq!(
        engine_exec(&conn, id, Request::TransactionStart),
        Err(Errno::EBUSY)
    );
}

fn engine_exec(store: &MemStore, tx: u32, req: Request) -> Result<Reply, Errno> {
    store.execute(tx, req)
}

#[test]
fn transact_retries_after_conflict() {
    let a = MemStore::new();
    let b = a.connect(0);
    a.write("/counter", "0").unwrap();
    let mut attempts = 0;
    let result = transact(&a, 5, |tx| {
        attempts += 1;
        let v: u32 = tx.read("/counter")?.unwrap().parse().unwrap();
        if attempts == 1 {
            b.write("/counter", "10").unwrap(); // a racing writer
        }
        tx.write("/counter", &(v + 1).to_string())?;
        Ok(v)
    })
    .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(result, 10);
    assert_eq!(a.read("/counter").unwrap().as_deref(), Some("11"));
}

#[test]
fn watches_fire_initially_on_changes_below_and_on_ancestor_removal() {
    let xs = MemStore::new();
    let other = xs.connect(0);
    xs.watch("/w/node", "tok").unwrap();
    assert_eq!(drain(&xs), [ev("/w/node", "tok")], "initial event");
    other.write("/w/node", "1").unwrap();
    other.write("/w/node/child/deep", "2").unwrap();
    other.write("/w/sibling", "x").unwrap(); // not below
    other.write("/w", "x").unwrap(); // above, not removed
    assert_eq!(
        drain(&xs),
        [ev("/w/node", "tok"), ev("/w/node/child/deep", "tok")]
    );
    other.set_perms("/w/node", &[p(0, Access::Read)]).unwrap();
    assert_eq!(drain(&xs), [ev("/w/node", "tok")], "permission change");
    other.rm("/w/node/child").unwrap();
    assert_eq!(drain(&xs), [ev("/w/node/child", "tok")]);
    other.rm("/w").unwrap();
    assert_eq!(
        drain(&xs),
        [ev("/w/node", "tok")],
        "ancestor removed: watched path"
    );
    other.rm("/w").unwrap();
    assert!(drain(&xs).is_empty(), "removing nothing fires nothing");
    // A watch on a path that never existed also hears about its ancestor's removal.
    other.write("/x/y", "1").unwrap();
    xs.watch("/x/y/never", "t2").unwrap();
    assert_eq!(drain(&xs), [ev("/x/y/never", "t2")]);
    other.rm("/x").unwrap();
    assert_eq!(drain(&xs), [ev("/x/y/never", "t2")]);
    // mkdir of an existing node changes nothing and fires nothing.
    xs.watch("/", "root").unwrap();
    assert_eq!(drain(&xs), [ev("/", "root")]);
    other.mkdir("/tool").unwrap();
    assert!(drain(&xs).is_empty());
    other.mkdir("/newdir").unwrap();
    assert_eq!(drain(&xs), [ev("/newdir", "root")]);
}

#[test]
fn watch_registration_rules() {
    let xs = MemStore::new();
    xs.watch("/a", "t").unwrap();
    assert_eq!(errno(xs.watch("/a", "t")), Errno::EEXIST);
    xs.watch("/a", "t2").unwrap();
    assert_eq!(errno(xs.watch("/a b", "t")), Errno::EINVAL);
    assert_eq!(errno(xs.unwatch("/a", "nope")), Errno::ENOENT);
    xs.unwatch("/a", "t").unwrap();
    drain(&xs);
    xs.write("/a", "1").unwrap();
    assert_eq!(
        drain(&xs),
        [ev("/a", "t2")],
        "only the remaining watch fires"
    );
    // Relative registration equals the absolute path for unwatch purposes.
    xs.watch("rel", "r").unwrap();
    xs.unwatch("/local/domain/0/rel", "r").unwrap();
}

#[test]
fn relative_watches_give_relative_paths() {
    let dom0 = MemStore::new();
    guest_home(&dom0, 4);
    let guest = dom0.connect(4);
    guest.watch("device", "dev").unwrap();
    assert_eq!(drain(&guest), [ev("device", "dev")]);
    dom0.write("/local/domain/4/device/vif/0/state", "1")
        .unwrap();
    assert_eq!(drain(&guest), [ev("device/vif/0/state", "dev")]);
    guest.watch("/local/domain/4/device", "abs").unwrap();
    drain(&guest);
    guest.write("device/x", "1").unwrap();
    let mut got = drain(&guest);
    got.sort_by(|a, b| a.token.cmp(&b.token));
    assert_eq!(
        got,
        [ev("/local/domain/4/device/x", "abs"), ev("device/x", "dev")]
    );
    dom0.rm("/local/domain/4").unwrap();
    let mut got = drain(&guest);
    got.sort_by(|a, b| a.token.cmp(&b.token));
    assert_eq!(
        got,
        [ev("/local/domain/4/device", "abs"), ev("device", "dev")]
    );
}

#[test]
fn unprivileged_watchers_only_see_readable_nodes() {
    let dom0 = MemStore::new();
    guest_home(&dom0, 5);
    let guest = dom0.connect(5);
    guest.watch("/", "all").unwrap();
    drain(&guest);
    dom0.write("/secret/x", "1").unwrap();
    assert!(drain(&guest).is_empty(), "n0 node and parent: invisible");
    dom0.write("/local/domain/5/visible", "1").unwrap();
    assert_eq!(drain(&guest), [ev("/local/domain/5/visible", "all")]);
    // Removal of a node the guest could read (below a removed dom0 node) is reported.
    dom0.write("/pub/inner", "1").unwrap();
    dom0.set_perms("/pub/inner", &[p(0, Access::None), p(5, Access::Read)])
        .unwrap();
    drain(&guest);
    guest.watch("/pub/inner", "inner").unwrap();
    drain(&guest);
    dom0.rm("/pub").unwrap();
    assert_eq!(drain(&guest), [ev("/pub/inner", "inner")]);
}

#[test]
fn transaction_events_fire_on_commit_only() {
    let xs = MemStore::new();
    let watcher = xs.connect(0);
    watcher.watch("/tx", "t").unwrap();
    drain(&watcher);
    let tx = xs.begin().unwrap();
    tx.write("/tx/a", "1").unwrap();
    tx.write("/tx/a", "2").unwrap();
    assert!(drain(&watcher).is_empty());
    tx.commit().unwrap();
    assert_eq!(drain(&watcher), [ev("/tx/a", "t")], "one event per node");
    let tx = xs.begin().unwrap();
    tx.write("/tx/b", "1").unwrap();
    drop(tx);
    assert!(drain(&watcher).is_empty(), "aborted: nothing fires");
}

#[test]
fn special_watches_fire_on_introduce_and_release() {
    let dom0 = MemStore::new();
    let guest = dom0.connect(9);
    dom0.watch("@introduceDomain", "intro").unwrap();
    dom0.watch("@releaseDomain", "rel").unwrap();
    dom0.watch("@releaseDomain/7", "rel7").unwrap();
    guest.watch("@introduceDomain", "g-intro").unwrap();
    guest.watch("@releaseDomain", "g-rel").unwrap();
    drain(&dom0);
    drain(&guest);
    dom0.introduce_domain(7).unwrap();
    assert_eq!(drain(&dom0), [ev("@introduceDomain", "intro")]);
    assert!(drain(&guest).is_empty(), "@introduceDomain is n0");
    dom0.introduce_domain(7).unwrap();
    assert!(drain(&dom0).is_empty(), "already introduced");
    dom0.introduce_domain(8).unwrap();
    drain(&dom0);
    dom0.release_domain(7).unwrap();
    let mut got = drain(&dom0);
    got.sort_by(|a, b| a.token.cmp(&b.token));
    assert_eq!(
        got,
        [ev("@releaseDomain", "rel"), ev("@releaseDomain/7", "rel7")]
    );
    assert_eq!(
        drain(&guest),
        [ev("@releaseDomain", "g-rel")],
        "readable by all"
    );
    dom0.release_domain(8).unwrap();
    assert_eq!(drain(&dom0), [ev("@releaseDomain", "rel")]);
    assert_eq!(errno(dom0.release_domain(8)), Errno::ENOENT);
    assert_eq!(errno(dom0.release_domain(0)), Errno::EINVAL);
    assert_eq!(errno(guest.introduce_domain(3)), Errno::EACCES);
    // A changed special node's permissions let the guest see introductions.
    dom0.set_perms(
        "@introduceDomain",
        &[p(0, Access::None), p(9, Access::Read)],
    )
    .unwrap();
    drain(&guest);
    drain(&dom0);
    dom0.introduce_domain(3).unwrap();
    assert_eq!(drain(&guest), [ev("@introduceDomain", "g-intro")]);
}

#[test]
fn domain_requests() {
    let xs = MemStore::new();
    let run = |req| engine_exec(&xs, 0, req);
    assert_eq!(run(Request::IsDomainIntroduced(0)), Ok(Reply::Bool(true)));
    assert_eq!(run(Request::IsDomainIntroduced(4)), Ok(Reply::Bool(false)));
    assert_eq!(run(Request::Introduce(4, 1234, 5)), Ok(Reply::Ok));
    assert_eq!(run(Request::IsDomainIntroduced(4)), Ok(Reply::Bool(true)));
    assert_eq!(xs.engine().introduced_domains(), [4]);
    assert_eq!(run(Request::Resume(4)), Ok(Reply::Ok));
    assert_eq!(run(Request::Resume(5)), Err(Errno::ENOENT));
    assert_eq!(run(Request::SetTarget(4, 5)), Err(Errno::ENOENT));
    assert_eq!(run(Request::Introduce(5, 1, 1)), Ok(Reply::Ok));
    assert_eq!(run(Request::SetTarget(4, 5)), Ok(Reply::Ok));
    // Domain 4 now acts for domain 5 on 5's nodes.
    xs.mkdir("/local/domain/5").unwrap();
    xs.set_perms("/local/domain/5", &[p(5, Access::None)])
        .unwrap();
    xs.write("/local/domain/5/x", "five").unwrap();
    let stub = xs.connect(4);
    assert_eq!(
        stub.read("/local/domain/5/x").unwrap().as_deref(),
        Some("five")
    );
    assert_eq!(run(Request::Release(4)), Ok(Reply::Ok));
    assert_eq!(
        run(Request::GetDomainPath(12)),
        Ok(Reply::Text("/local/domain/12".into()))
    );
}

#[test]
fn control_set_domid_switches_a_connection() {
    let xs = MemStore::new();
    let r = engine_exec(&xs, 0, Request::Control(vec!["help".into()])).unwrap();
    assert!(matches!(r, Reply::Text(t) if t.contains(CONTROL_SET_DOMID)));
    assert_eq!(
        engine_exec(&xs, 0, Request::Control(vec!["bogus".into()])),
        Err(Errno::EINVAL)
    );
    xs.write("/local/domain/0/own", "v").unwrap();
    let ctl = xs.connect(0);
    assert_eq!(
        engine_exec(
            &ctl,
            0,
            Request::Control(vec![CONTROL_SET_DOMID.into(), "6".into()])
        ),
        Ok(Reply::Text("OK".into()))
    );
    assert_eq!(ctl.domid(), 6);
    assert_eq!(errno(ctl.read("/local/domain/0/own")), Errno::EACCES);
    assert_eq!(
        errno(ctl.read("x")),
        Errno::EACCES,
        "relative to /local/domain/6 now"
    );
    // That connection is now unprivileged: CONTROL is refused.
    assert_eq!(
        engine_exec(&ctl, 0, Request::Control(vec!["check".into()])),
        Err(Errno::EACCES)
    );
    // MemStore::set_domid is the same switch, and reversible from the API.
    ctl.set_domid(0);
    assert_eq!(
        ctl.read("/local/domain/0/own").unwrap().as_deref(),
        Some("v")
    );
}

#[test]
fn reset_watches_drops_watches_and_transactions() {
    let xs = MemStore::new();
    let run = |tx, req| engine_exec(&xs, tx, req);
    let Ok(Reply::TxId(id)) = run(0, Request::TransactionStart) else {
        panic!()
    };
    run(0, Request::Watch("/r".into(), b"t".to_vec())).unwrap();
    let before = xs.engine().total_watches();
    assert_eq!(run(0, Request::ResetWatches), Ok(Reply::Ok));
    assert_eq!(xs.engine().total_watches(), before - 1);
    assert_eq!(run(id, Request::Read("/".into())), Err(Errno::ENOENT));
}

#[test]
fn quotas_for_guests() {
    let dom0 = MemStore::new();
    let guest = dom0.connect(5);
    for i in 0..128 {
        guest.watch(&format!("/q{i}"), "t").unwrap();
    }
    assert_eq!(errno(guest.watch("/q-last", "t")), Errno::E2BIG);
    let txs: Vec<_> = (0..10).map(|_| guest.begin().unwrap()).collect();
    assert_eq!(errno(guest.begin().map(drop)), Errno::ENOSPC);
    drop(txs);
    guest.begin().unwrap();
}

#[test]
fn directory_part_spans_payloads() {
    let xs = MemStore::new();
    let names: Vec<String> = (0..400).map(|i| format!("child-{i:05}")).collect();
    let tx = xs.begin().unwrap();
    for n in &names {
        tx.mkdir(&format!("/big/{n}")).unwrap();
    }
    tx.commit().unwrap();
    let total: usize = names.iter().map(|n| n.len() + 1).sum();
    assert!(total > PAYLOAD_MAX);
    assert_eq!(
        engine_exec(&xs, 0, Request::Directory("/big".into())),
        Err(Errno::E2BIG)
    );
    // MemStore falls back to DIRECTORY_PART, as libxenstore does.
    assert_eq!(xs.directory("/big").unwrap(), names);

    // The chunks themselves.
    let part = |off| match engine_exec(&xs, 0, Request::DirectoryPart("/big".into(), off)) {
        Ok(Reply::Part(p)) => p,
        other => panic!("{other:?}"),
    };
    let first = part(0);
    assert!(first.len() <= PAYLOAD_MAX);
    let gen_end = first.iter().position(|&b| b == 0).unwrap();
    let gen = first[..gen_end].to_vec();
    let chunk1 = &first[gen_end + 1..];
    assert!(
        chunk1.ends_with(&[0]) && !chunk1.ends_with(&[0, 0]),
        "whole names, not last"
    );
    let second = part(chunk1.len());
    assert_eq!(&second[..gen_end], &gen[..], "same generation");
    let chunk2 = &second[gen_end + 1..];
    assert!(
        chunk2.ends_with(&[0, 0]),
        "last chunk ends with an empty string"
    );
    let mut all = chunk1.to_vec();
    all.extend_from_slice(&chunk2[..chunk2.len() - 1]);
    let expected: Vec<u8> = names
        .iter()
        .flat_map(|n| format!("{n}\0").into_bytes())
        .collect();
    assert_eq!(all, expected);
    // Past the end: generation and an empty string.
    let past = part(expected.len() + 10);
    assert_eq!(&past[..gen_end + 1], &first[..gen_end + 1]);
    assert_eq!(&past[gen_end + 1..], b"\0");
    // A change to the list changes the generation.
    xs.write("/big/extra", "").unwrap();
    let again = part(0);
    assert_ne!(
        &again[..again.iter().position(|&b| b == 0).unwrap()],
        &gen[..]
    );
    // Empty directory.
    xs.mkdir("/empty").unwrap();
    assert_eq!(xs.directory("/empty").unwrap(), Vec::<String>::new());
}

#[test]
fn release_drops_the_domains_watches_and_transactions() {
    let dom0 = MemStore::new();
    guest_home(&dom0, 7);
    let guest = dom0.connect(7);
    dom0.introduce_domain(7).unwrap();
    guest.watch("data", "g").unwrap();
    drain(&guest);
    let Ok(Reply::TxId(id)) = guest.execute(0, Request::TransactionStart) else {
        panic!()
    };
    dom0.release_domain(7).unwrap();
    assert_eq!(dom0.engine().introduced_domains(), Vec::<u32>::new());
    dom0.write("/local/domain/7/data", "1").unwrap();
    assert!(
        drain(&guest).is_empty(),
        "the released domain's watch is gone"
    );
    assert_eq!(
        guest.execute(id, Request::Read("data".into())),
        Err(Errno::ENOENT)
    );
    // The connection itself still works (its socket is not closed).
    assert_eq!(guest.read("data").unwrap().as_deref(), Some("1"));
}
