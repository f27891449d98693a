//! The peer daemon SIGKILLed in the middle of a delivery and restarted (issue 13): the new
//! instance re-verifies every VM and applies each generation to each VM exactly once — a VM
//! whose apply was sent before the kill is found at the wanted generation and only verified, a
//! VM the old instance never reached gets its apply now.
//!
//! The daemon is the real `xenplug-peer daemon` process (SIGKILL needs a process); the VMs are
//! simulated guests (`xenplug-simguest`, which counts every apply request it serves) behind
//! their channel sockets, with replies delayed by 0–390 ms so deliveries spread out and the kill
//! lands while some VMs are configured and others are not.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use xenplug_simguest::{GuestOptions, GuestState};

const VMS: u32 = 40;
const ROUNDS: u64 = 4;

fn daemon(h: &Host) -> Child {
    let _ = std::fs::remove_file(&h.control);
    Command::new(env!("CARGO_BIN_EXE_xenplug-peer"))
        .arg("daemon")
        .arg("--store")
        .arg(&h.store)
        .arg("--control")
        .arg(&h.control)
        .arg("--xenstore")
        .arg(h.xsd.socket())
        .args(["--log-level", "error", "--request-timeout", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("xenplug-peer daemon")
}

/// Kills the daemon if the test fails with it running.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_then_restart_reverifies_every_vm_without_a_duplicate_apply() {
    let mut h = Host::new();
    let xs = h.xsd.store();
    let mut guests: Vec<Arc<GuestState>> = Vec::new();
    let name = |i: u32| format!("vm{i}");
    for i in 0..VMS {
        std::fs::write(h.store.join(format!("{}.json", name(i))), doc(&name(i), 1)).unwrap();
        let s = h.sock(&name(i));
        let opts = GuestOptions {
            reply_delay: Duration::from_millis(u64::from(i % 40) * 10),
            ..guest_opts()
        };
        guests.push(h.guest(&s, opts));
        add_domain(&xs, 10 + i, &name(i), &uuid(10 + i), &s);
    }
    let mut d = Running(Some(daemon(&h)));
    let mut killed_between = Vec::new();
    for round in 1..=ROUNDS {
        let applies_before: Vec<u64> = guests
            .iter()
            .map(|g| g.applies.load(Ordering::SeqCst))
            .collect();
        if round > 1 {
            for i in 0..VMS {
                std::fs::write(
                    h.store.join(format!("{}.json", name(i))),
                    doc(&name(i), round),
                )
                .unwrap();
            }
            // Re-read the store now (the daemon also does every 2 s).
            let pid = d.0.as_ref().unwrap().id() as libc::pid_t;
            // SAFETY: kill(2) with a pid of our own child and a signal number.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        }
        // SIGKILL once some VMs, but not all, have this generation: a quarter, a half, …
        let at = (VMS * round as u32 / (ROUNDS as u32 + 1)).max(1);
        let at_round = |g: &Arc<GuestState>| g.generation() == Some(round);
        until("part of the delivery", Duration::from_secs(60), || {
            guests.iter().filter(|g| at_round(g)).count() >= at as usize
        })
        .await;
        let mut old = d.0.take().unwrap();
        old.kill().unwrap();
        old.wait().unwrap();
        let done_at_kill = guests.iter().filter(|g| at_round(g)).count();
        killed_between.push(done_at_kill);
        let connections_at_kill: Vec<u64> = guests
            .iter()
            .map(|g| g.connections.load(Ordering::SeqCst))
            .collect();
        // The restarted daemon finishes the delivery.
        d.0 = Some(daemon(&h));
        until(
            "every VM at this generation",
            Duration::from_secs(60),
            || guests.iter().all(at_round),
        )
        .await;
        // … and re-verifies every VM: each one's channel is connected again and queried, and
        // listed as configured.
        until("every VM re-verified", Duration::from_secs(60), || {
            guests
                .iter()
                .zip(&connections_at_kill)
                .all(|(g, c)| g.connections.load(Ordering::SeqCst) > *c)
        })
        .await;
        wait_for(
            Duration::from_secs(60),
            "every VM listed configured",
            || async {
                let rows = h.list().await;
                (rows.len() == VMS as usize
                    && rows
                        .iter()
                        .all(|r| r["state"] == "configured" && r["applied_generation"] == round))
                .then_some(())
            },
        )
        .await;
        // Exactly one apply per VM for this generation: none repeated after the restart.
        for (i, g) in guests.iter().enumerate() {
            assert_eq!(
                g.applies.load(Ordering::SeqCst) - applies_before[i],
                1,
                "vm{i}: applies in round {round} (killed with {done_at_kill} of {VMS} done)"
            );
        }
    }
    eprintln!(
        "peer SIGKILLed mid-delivery: {ROUNDS} rounds x {VMS} VMs, killed with {killed_between:?} \
         VMs done; every VM re-verified, 0 duplicate applies"
    );
}
