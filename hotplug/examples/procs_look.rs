//! What a teardown's look for a killed run's orphans costs on this machine
//! (`Context::wait_for_orphans`, issue 21): `Procs::orphans_of` over every process, repeated.
//!
//! `cargo run --release -p xenplug-hotplug --example procs_look [LOOKS]` prints the median and
//! p90 of one look, the number of processes and kernel threads it went over, and the cost per
//! process. A benchmark, not a test.
use std::time::Instant;

fn main() {
    let looks: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let procs = xenplug_hotplug::procs::Procs::default();
    let (mut all, mut kernel) = (0usize, 0usize);
    for e in std::fs::read_dir("/proc").expect("/proc") {
        let Some(pid) = e
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        all += 1;
        // A kernel thread has no executable.
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_err() {
            kernel += 1;
        }
    }
    let mut ms: Vec<f64> = (0..looks)
        .map(|_| {
            let t = Instant::now();
            let found = procs.orphans_of("backend/vif/999999/0", &["nft", "ovs-vsctl"]);
            assert!(found.is_empty());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let med = ms[ms.len() / 2];
    println!(
        "one look over {all} processes ({kernel} without an executable: kernel threads, zombies): \
         median {med:.2} ms, p90 {:.2} ms, {:.1} µs per process ({looks} looks)",
        ms[ms.len() * 9 / 10],
        med * 1e3 / all as f64
    );
}
