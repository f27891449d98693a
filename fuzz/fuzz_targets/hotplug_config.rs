//! `/etc/xen/xenplug.toml` (`xenplug_hotplug::Config::from_toml`), read by every script.
//!
//! Asserts: an accepted file yields absolute directories and timeouts within (0, 3600] s; an
//! error message is one line (it goes to `hotplug-error` and the log); a file that only repeats
//! an accepted file's text with comments added parses to the same configuration.
#![no_main]

use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use xenplug_fuzz::{text, Counting};
use xenplug_hotplug::Config;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let Some(s) = text(data) else { return };
    let path = Path::new("/etc/xen/xenplug.toml");
    match Config::from_toml(s, path) {
        Ok(c) => {
            for d in [&c.lock_dir, &c.scripts_dir, &c.state_dir, &c.syslog_socket] {
                assert!(d.is_absolute(), "{d:?}");
            }
            for t in [c.lock_timeout, c.hook_timeout] {
                assert!(
                    t > Duration::ZERO && t <= Duration::from_secs(3600),
                    "{t:?}"
                );
            }
            let commented = format!("# header\n{s}\n# trailer\n");
            let again = Config::from_toml(&commented, path).expect("comments change nothing");
            assert_eq!(again, c);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg:?}");
        }
    }
});
