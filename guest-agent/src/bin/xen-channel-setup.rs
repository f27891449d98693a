//! `xen-channel-setup`: udev helper naming Xen PV channel ttys.
//!
//! **Who runs it:** udev, from `90-xen-channel.rules`, by absolute path
//! (`/usr/libexec/xen-channel-setup`), for `SUBSYSTEM=="xen"`, `KERNEL=="console-[1-9]"` on
//! add/bind (create) and remove/unbind (remove). Tests run it with `--sysfs`/`--dev` pointing at
//! temporary trees and `XENSTORED_PATH` at a test xenstored acting as the guest domain.
//!
//! **argv / env:** `ACTION` and `DEVPATH` from the udev environment (or `--action`/`--devpath`);
//! `--sysfs DIR` (default `/sys`), `--dev DIR` (default `/dev`); `XENSTORED_PATH` (optional:
//! the xenstore client otherwise uses `/run/xenstored/socket` then `/dev/xen/xenbus`).
//!
//! **Reads:** `<sysfs><DEVPATH>/nodename` (must be `device/console/<N>`) and the guest's xenstore
//! key `device/console/<N>/name` (relative: `/local/domain/<self>/…`). The name must be 1–255
//! characters of `[A-Za-z0-9._-]`, not starting with `.`, without `..`.
//!
//! **Writes:** `<dev>/xen-channel/<name>` → `../hvc<N>` (a temporary symlink renamed into
//! place); on remove, every link in `<dev>/xen-channel` pointing to `../hvc<N>`. Never opens the
//! tty. Prints `XEN_CHANNEL_NAME=…`, `XEN_CHANNEL_LINK=…`, `XEN_CHANNEL_TARGET=…` (or
//! `XEN_CHANNEL_REMOVED=…`) on stdout and a log line on stderr.
//!
//! **Exit codes:** 0 done (or nothing to do), 1 failure (reason on stderr), 2 usage error.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use xenplug_guest_agent::cli::ChannelSetupArgs as Args;
use xenplug_guest_agent::setup::{self, Done, UdevEvent};
use xenplug_xenstore::client::XsClient;

fn run(args: &Args) -> Result<Done> {
    let ev = UdevEvent {
        action: args.action.clone(),
        devpath: args.devpath.clone(),
    };
    // Only add/bind need xenstore; remove must work when xenstore is already gone.
    if matches!(ev.action.as_str(), "add" | "bind" | "change") {
        let xs = XsClient::open().context("connect to xenstore")?;
        setup::run(&ev, &args.sysfs, &args.dev, Some(&xs))
    } else {
        setup::run(&ev, &args.sysfs, &args.dev, None)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(Done::Linked { name, link, target }) => {
            eprintln!(
                "xen-channel-setup: {} {}: {} -> {target}",
                args.action,
                args.devpath,
                link.display()
            );
            println!("XEN_CHANNEL_NAME={name}");
            println!("XEN_CHANNEL_LINK={}", link.display());
            println!("XEN_CHANNEL_TARGET={target}");
        }
        Ok(Done::Removed { links }) => {
            let list: Vec<String> = links.iter().map(|l| l.display().to_string()).collect();
            eprintln!(
                "xen-channel-setup: {} {}: removed [{}]",
                args.action,
                args.devpath,
                list.join(", ")
            );
            println!("XEN_CHANNEL_REMOVED={}", list.join(" "));
        }
        Ok(Done::Ignored) => {
            eprintln!(
                "xen-channel-setup: {} {}: nothing to do",
                args.action, args.devpath
            );
        }
        Err(e) => {
            eprintln!("xen-channel-setup: {} {}: {e:#}", args.action, args.devpath);
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
