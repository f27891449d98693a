//! Benchmark: what one look at every bound loop device costs (`KernelLoops::list`, which
//! `block add` does for a file image to find whether it is attached already), against how many
//! loop devices are bound: the part of a file `add` that grows with the host's devices.
//!
//! `cargo run --release -p xenplug-block --example loop_list [-- 0 50 200 500]` (root; attaches
//! that many loop devices over sparse files in a temporary directory, detaches them at the end,
//! also when a step fails). Prints, for each count, the median and the slowest of 20 looks and
//! the cost per bound device.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use xenplug_block::loopdev::{KernelLoops, LoopOps};

/// Detaches what it attached when dropped.
struct Attached<'a> {
    loops: &'a KernelLoops,
    devices: Vec<PathBuf>,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        for d in &self.devices {
            let _ = self.loops.detach(d);
        }
    }
}

fn main() -> ExitCode {
    let counts: Vec<usize> = {
        let given: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if given.is_empty() {
            vec![0, 50, 200, 500]
        } else {
            given
        }
    };
    match run(&counts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loop_list: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(counts: &[usize]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let loops = KernelLoops::default();
    let mut ours = Attached {
        loops: &loops,
        devices: Vec::new(),
    };
    let before = loops.list().map_err(|e| e.to_string())?.len();
    println!("bound before: {before} (not ours, counted in every row)");
    println!(
        "{:>8} {:>8} | {:>10} {:>10} | {:>14}",
        "ours", "bound", "median ms", "max ms", "µs per device"
    );
    for &want in counts {
        while ours.devices.len() < want {
            let f = dir.path().join(format!("img{}", ours.devices.len()));
            std::fs::File::create(&f)
                .and_then(|h| h.set_len(1 << 20))
                .map_err(|e| format!("{}: {e}", f.display()))?;
            let a = loops.attach(&f, false).map_err(|e| e.to_string())?;
            ours.devices.push(a.path);
        }
        let mut times = Vec::new();
        let mut bound = 0;
        for _ in 0..20 {
            let t = Instant::now();
            bound = loops.list().map_err(|e| e.to_string())?.len();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{:>8} {:>8} | {:>10.3} {:>10.3} | {:>14.1}",
            ours.devices.len(),
            bound,
            median,
            times[times.len() - 1],
            if bound > 0 {
                median * 1e3 / bound as f64
            } else {
                0.0
            }
        );
    }
    Ok(())
}
