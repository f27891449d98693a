//! The dom0 peer's policy file (`xenplug_peer::policy::Policy`): which requests of which VMs
//! are handled.
//!
//! Input: policy text, then NUL, then four NUL-separated subject fields (command, VM name,
//! UUID, class). Asserts: parsing never panics; a parsed policy's decision names a rule line
//! that exists, and is a deny when no rule exists; the glob matcher agrees with a simple
//! reference matcher (rule `allow command <pattern>`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenplug_fuzz::{text, Counting};
use xenplug_peer::policy::{Policy, Subject, Verdict};

#[global_allocator]
static ALLOC: Counting = Counting;

/// `*` matches any run of characters, everything else itself (dynamic programming over bytes;
/// `*` is ASCII so byte positions are fine).
fn reference_glob(p: &[u8], t: &[u8]) -> bool {
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for &c in p {
        let mut next = vec![false; t.len() + 1];
        if c == b'*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 0..t.len() {
                next[j + 1] = row[j] && t[j] == c;
            }
        }
        row = next;
    }
    row[t.len()]
}

fuzz_target!(|data: &[u8]| {
    let Some(s) = text(data) else { return };
    let (policy_text, subject) = s.split_once('\0').unwrap_or((s, ""));
    let mut f = subject.split('\0');
    let sub = Subject {
        command: f.next().unwrap_or(""),
        vm_name: f.next().unwrap_or(""),
        vm_uuid: f.next().unwrap_or(""),
        vm_class: f.next().unwrap_or(""),
        flags: None,
    };
    if let Ok(p) = Policy::parse(policy_text) {
        let d = p.decide(&sub);
        match d.line {
            None => assert_eq!(d.verdict, Verdict::Deny),
            Some(l) => assert!(l >= 1 && l <= policy_text.lines().count()),
        }
        if p.is_empty() {
            assert_eq!(d.line, None);
        }
    }
    // Differential glob check: the first word of the policy text as a command pattern.
    let Some(pattern) = policy_text.split_whitespace().next() else {
        return;
    };
    if pattern.contains('#') {
        return;
    }
    let p = Policy::parse(&format!("allow command {pattern}\n")).expect("a one-rule policy");
    let want = reference_glob(pattern.as_bytes(), sub.command.as_bytes());
    assert_eq!(
        p.decide(&sub).verdict == Verdict::Allow,
        want,
        "pattern {pattern:?} command {:?}",
        sub.command
    );
});
