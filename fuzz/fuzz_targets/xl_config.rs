//! The simulator's xl configuration parser (`xenplug_sim::xlcfg`) and the domain built from it
//! (`Domain::from_config`, which parses disk, vif and channel specs).
//!
//! Asserts: a parsed file printed back in xl syntax parses to the same settings; a setting's
//! line number in an error is within the file. Run with a small stack (run.sh), so deep list
//! nesting that would overflow a thread's stack is caught.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use xenplug_fuzz::{text, Counting};
use xenplug_sim::xlcfg::{self, Value};

#[global_allocator]
static ALLOC: Counting = Counting;

fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn print(v: &Value, out: &mut String) {
    match v {
        Value::Str(s) => quote(s, out),
        Value::Num(n) => out.push_str(n),
        Value::List(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                print(it, out);
            }
            out.push(']');
        }
    }
}

fn render(cfg: &BTreeMap<String, Value>) -> String {
    let mut out = String::new();
    for (k, v) in cfg {
        out.push_str(k);
        out.push_str(" = ");
        print(v, &mut out);
        out.push('\n');
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(src) = text(data) else { return };
    match xlcfg::parse(src) {
        Ok(cfg) => {
            let printed = render(&cfg);
            let again = xlcfg::parse(&printed)
                .unwrap_or_else(|e| panic!("printed config rejected: {e}\n{printed}"));
            assert_eq!(again, cfg, "print/parse round trip");
        }
        Err(e) => {
            let lines = src.matches('\n').count() + 1;
            assert!(
                e.line >= 1 && e.line <= lines,
                "error on line {} of {lines}",
                e.line
            );
        }
    }
    let _ = xenplug_sim::Domain::from_config(src, 5);
});
