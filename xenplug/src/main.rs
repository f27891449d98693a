//! `xenplug`: placeholder entry point, replaced by the multi-call dispatcher.
fn main() {}
