//! A domain that floods the daemon with pipelined requests does not starve dom0 or another
//! domain: they are served while the flood goes on (progress, not timing, is what is checked).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use xenplug_testkit::wait_until;
use xenplug_xenstore::wire::{Decoder, Message, MsgType};
use xenplug_xenstore::{Access, Perm, XsClient, XsOps};
use xenplug_xenstored::testing::spawn_daemon_with_domains;

/// Guest `socket` writes `counter` = 1, 2, 3, … as fast as the daemon takes the requests
/// (pipelined, never waiting for a reply) until stopped; `answered` counts the replies.
struct Flood {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    stream: UnixStream,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(socket: &std::path::Path) -> Flood {
        let stream = UnixStream::connect(socket).expect("guest socket");
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let mut w = stream.try_clone().unwrap();
        let s = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut i: u32 = 0;
            while !s.load(Ordering::Relaxed) {
                let mut batch = Vec::new();
                for _ in 0..64 {
                    i += 1;
                    let payload = format!("counter\0{i}").into_bytes();
                    batch.extend(
                        Message::new(MsgType::WRITE, i, 0, payload)
                            .encode()
                            .unwrap(),
                    );
                }
                if w.write_all(&batch).is_err() {
                    break;
                }
            }
        });
        let mut r = stream.try_clone().unwrap();
        let a = answered.clone();
        let reader = std::thread::spawn(move || {
            let mut dec = Decoder::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut data = &buf[..n];
                while !data.is_empty() {
                    let (used, msg) = dec.feed(data).expect("valid replies");
                    data = &data[used..];
                    if let Some(m) = msg {
                        assert_eq!(
                            m.msg_type,
                            MsgType::WRITE.to_u32(),
                            "the flood's writes succeed"
                        );
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Flood {
            stop,
            answered,
            stream,
            threads: vec![writer, reader],
        }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

fn value(xs: &XsClient, path: &str) -> u64 {
    xs.read(path)
        .unwrap()
        .expect("the counter exists")
        .parse()
        .unwrap()
}

#[test]
fn dom0_and_another_domain_are_served_while_a_domain_floods() {
    let d = spawn_daemon_with_domains(&[5, 6]);
    let dom0 = d.client();
    for domid in [5, 6] {
        dom0.introduce_domain(domid, 1, 1).unwrap();
        dom0.write(&format!("/local/domain/{domid}/counter"), "0")
            .unwrap();
    }
    // Guest 5's home is its own, and guest 6 may read it.
    let perms = [
        Perm {
            domid: 5,
            access: Access::None,
        },
        Perm {
            domid: 6,
            access: Access::Read,
        },
    ];
    dom0.set_perms("/local/domain/5", &perms).unwrap();
    dom0.set_perms("/local/domain/5/counter", &perms).unwrap();
    dom0.set_perms(
        "/local/domain/6",
        &[Perm {
            domid: 6,
            access: Access::None,
        }],
    )
    .unwrap();

    let flood = Flood::start(d.domain_socket(5).unwrap());
    wait_until(
        "guest 5's flood to be under way",
        Duration::from_secs(60),
        || flood.answered() >= 200,
    );

    // dom0 (reads without the store lock, writes with it) and guest 6 do their work while the
    // flood goes on; a scheduler that served guest 5 first would never let them finish, as the
    // flood does not end until they have.
    let (done_tx, done_rx) = mpsc::channel();
    let (dom0_socket, guest6_socket) = (
        d.socket().to_path_buf(),
        d.domain_socket(6).unwrap().to_path_buf(),
    );
    let work = std::thread::spawn(move || {
        let dom0 = XsClient::open_socket(&dom0_socket).unwrap();
        let guest6 = XsClient::open_socket(&guest6_socket).unwrap();
        let mut seen = Vec::new();
        for i in 0..50 {
            dom0.write("/local/domain/0/probe", &i.to_string()).unwrap();
            seen.push(value(&dom0, "/local/domain/5/counter"));
            guest6.write("mine", &i.to_string()).unwrap();
            seen.push(value(&guest6, "/local/domain/5/counter"));
        }
        assert_eq!(
            dom0.read("/local/domain/6/mine").unwrap().as_deref(),
            Some("49")
        );
        done_tx.send(seen).unwrap();
    });
    let seen = done_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("dom0 and guest 6 finish while guest 5 floods");
    work.join().unwrap();
    let at_done = flood.answered();
    // The flood was still going when they finished, and goes on.
    wait_until("guest 5's flood to go on", Duration::from_secs(60), || {
        flood.answered() >= at_done + 200
    });
    flood.stop();
    let last = value(&dom0, "/local/domain/5/counter");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "the counter never goes back: {seen:?}"
    );
    assert!(
        *seen.last().unwrap() < last,
        "dom0 and guest 6 were served in the middle of the flood (read {}, the flood reached {last})",
        seen.last().unwrap()
    );
    d.engine().check().unwrap();
}
