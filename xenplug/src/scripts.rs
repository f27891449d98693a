//! The table of hotplug programs this binary answers to, by name.

use xenplug_hotplug::ScriptMain;

/// Every script, block and network.
pub fn all() -> impl Iterator<Item = &'static (&'static str, ScriptMain)> {
    xenplug_block::SCRIPTS.iter().chain(xenplug_vif::SCRIPTS)
}

/// The script called `name`.
pub fn lookup(name: &str) -> Option<ScriptMain> {
    all().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Every script name.
pub fn names() -> Vec<&'static str> {
    all().map(|(n, _)| *n).collect()
}
