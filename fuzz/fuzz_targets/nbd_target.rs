//! `block-nbd`'s `params` (`host:port`, `nbd://host[:port]/export`,
//! `nbd+unix:///export?socket=/path`).
//!
//! Asserts: an accepted target printed back as a URI (percent-encoding what needs it) parses to
//! the same target; percent escapes are exactly two hex digits (a `%` inside an IPv6 host's
//! brackets is its zone); the nbd-client argv has no empty host and no option-looking host or
//! socket.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xenplug_block::nbd::{connect_args, parse_target, NbdTarget};
use xenplug_block::sharing::Mode;
use xenplug_fuzz::{text, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn uri(t: &NbdTarget) -> String {
    match t {
        NbdTarget::Tcp { host, port, export } => {
            let h = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            format!("nbd://{h}:{port}/{}", pct(export.as_deref().unwrap_or("")))
        }
        NbdTarget::Unix { socket, export } => format!(
            "nbd+unix:///{}?socket={}",
            pct(export.as_deref().unwrap_or("")),
            pct(&socket.to_string_lossy())
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(s) = text(data) else { return };
    let Ok(t) = parse_target(s) else { return };
    // Every `%` in the input starts a two-hex-digit escape, except inside the brackets of an
    // IPv6 host, where it separates the zone (`[fe80::1%eth0]`, accepted on purpose).
    let b = s.as_bytes();
    let in_brackets = |i: usize| {
        let before = &s[..i];
        before.rfind('[').is_some_and(|o| before[o..].find(']').is_none())
    };
    for (i, _) in s.match_indices('%').filter(|(i, _)| !in_brackets(*i)) {
        assert!(
            b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit(),
            "bad escape accepted in {s:?}"
        );
    }
    let printed = uri(&t);
    let again = parse_target(&printed).unwrap_or_else(|e| panic!("{printed:?} rejected: {e}"));
    assert_eq!(again, t, "{s:?} -> {printed:?}");
    let args = connect_args(&t, Path::new("/dev/nbd0"), Mode::Write);
    match &t {
        NbdTarget::Tcp { host, .. } => {
            assert!(!host.is_empty(), "empty host from {s:?}");
            assert!(
                !host.starts_with('-'),
                "option-like host {host:?} in {args:?}"
            );
        }
        NbdTarget::Unix { socket, .. } => assert!(socket.is_absolute()),
    }
});
