//! `/proc/swaps` as the `block` script's sharing check reads it
//! (`xenplug_block::gather::parse_swaps`).
//!
//! Two modes, chosen by the first byte: raw text (at most one entry per line after the
//! header), or a built table whose swap path (any text, escaped as the kernel's `seq_file_path`
//! does: space, tab, newline, backslash) must come back exactly with its type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_block::gather::parse_swaps;
use xenplug_fuzz::{Counting, Unstructured};

#[global_allocator]
static ALLOC: Counting = Counting;

fn mangle(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mode = u.byte();
    let Ok(s) = std::str::from_utf8(u.rest()) else {
        return;
    };
    if mode & 1 == 0 {
        let entries = parse_swaps(s);
        assert!(entries.len() <= s.lines().count().saturating_sub(1));
        return;
    }
    if s.is_empty() {
        return;
    }
    let partition = mode & 2 != 0;
    let text = format!(
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/vdb1\tpartition\t1048572\t\t0\t\t-2\n{}\t{}\t1048572\t\t0\t\t-3\n",
        mangle(s),
        if partition { "partition" } else { "file" }
    );
    let entries = parse_swaps(&text);
    assert_eq!(entries.len(), 2, "{text:?}");
    assert_eq!(entries[1].path, s);
    assert_eq!(entries[1].partition, partition);
});
