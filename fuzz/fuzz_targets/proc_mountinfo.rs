//! `/proc/self/mountinfo` as the `block` script's sharing check reads it
//! (`xenplug_block::gather::parse_mountinfo`).
//!
//! Two modes, chosen by the first byte:
//! * raw text: at most one entry per line, each entry's source the unescaped fifth field after
//!   ` - `;
//! * built line: the rest of the input is a mount source (any text the kernel can report, e.g.
//!   a path with blanks or backslashes), escaped as the kernel's `mangle()` does, placed in a
//!   well-formed line after random other lines: it must come back exactly, with its device number
//!   and writability.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_block::devnum::DevNum;
use xenplug_block::gather::parse_mountinfo;
use xenplug_fuzz::{Counting, Unstructured};

#[global_allocator]
static ALLOC: Counting = Counting;

/// The kernel's `mangle()` for mountinfo: space, tab, newline and backslash as `\ooo`.
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
    let major = u32::from(u.byte());
    let minor = u32::from(u.u16());
    let rest = u.rest();
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    if mode & 1 == 0 {
        let entries = parse_mountinfo(s);
        assert!(entries.len() <= s.lines().count());
        return;
    }
    let (junk, source) = s.split_once('\0').unwrap_or(("", s));
    if source.is_empty() {
        return;
    }
    let rw = mode & 2 != 0;
    let line = format!(
        "36 35 {major}:{minor} / /mnt/x ro,noatime master:1 - ext4 {} {},errors=continue\n",
        mangle(source),
        if rw { "rw" } else { "ro" }
    );
    let text = format!("{junk}\n{line}");
    let entries = parse_mountinfo(&text);
    let last = entries.last().expect("the built line parses");
    assert_eq!(last.source, source, "{line:?}");
    assert_eq!(last.devnum, DevNum { major, minor });
    assert_eq!(last.writable, rw);
});
