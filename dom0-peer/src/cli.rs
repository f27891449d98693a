//! The command line of `xenplug-peer` (its clap definitions), shared by the binary
//! (`src/main.rs`, which documents the interface) and the packaging's man page and completion
//! generator.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "xenplug-peer",
    version,
    about = "dom0 peer of xenplug's Xen PV channels"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(clap::Args, Debug)]
pub struct Timeouts {
    /// Seconds to wait for an answer to the handshake, repeated every second (default: the
    /// value of --timeout).
    #[arg(long)]
    pub handshake_timeout: Option<f64>,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Largest frame accepted from the guest, in bytes.
    #[arg(long, default_value_t = xenplug_channel::host::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Deliver a configuration document to one VM's channel and verify it is applied.
    Send {
        /// The channel's Unix socket.
        #[arg(long)]
        socket: PathBuf,
        /// The document: canonical JSON file, or a NoCloud seed directory.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        t: Timeouts,
    },
    /// Run one query on one VM's channel and print the reply as JSON.
    Query {
        /// The channel's Unix socket.
        #[arg(long)]
        socket: PathBuf,
        /// ping, info, network, hostname, osinfo, time, ssh-keys, generation, guest-state, users,
        /// vcpus, fsinfo, disks, timezone, load, routes, or a full command name.
        cmd: String,
        /// User for ssh-keys.
        #[arg(long, default_value = "root")]
        user: String,
        /// Arguments (a JSON object) for a full command name.
        #[arg(long)]
        args: Option<String>,
        #[command(flatten)]
        t: Timeouts,
    },
    /// Serve every channel on this host.
    Daemon(DaemonArgs),
    /// Show every channel the daemon knows.
    List {
        /// Control socket.
        #[arg(long, default_value = "/run/xenplug-peer/control.sock")]
        control: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `xenplug-peer daemon`'s options.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// The configuration store directory.
    #[arg(long)]
    pub store: PathBuf,
    /// Channel name(s) to serve.
    #[arg(long = "channel-name", default_value = xenplug_channel::DEFAULT_CHANNEL_NAME)]
    pub channel_names: Vec<String>,
    /// Policy file for guest-originated requests (none: deny all).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Control socket.
    #[arg(long, default_value = "/run/xenplug-peer/control.sock")]
    pub control: PathBuf,
    /// xenstored socket (default: the environment's xenstore).
    #[arg(long)]
    pub xenstore: Option<PathBuf>,
    /// Console backend root.
    #[arg(long, default_value = crate::discovery::DEFAULT_BACKEND_ROOT)]
    pub backend_root: String,
    /// debug, info, warn or error.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Largest frame accepted from a guest, in bytes.
    #[arg(long, default_value_t = xenplug_channel::host::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
    /// Sustained bytes per second read from one guest (a flooding guest is read no faster).
    #[arg(long, default_value_t = 256 * 1024)]
    pub guest_rate: u64,
    /// Seconds without an answer to the handshake before it is reported as failing.
    #[arg(long, default_value_t = 30.0)]
    pub handshake_timeout: f64,
    /// Seconds a request may wait for its reply.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}
