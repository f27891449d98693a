//! The command line of `xenplug-peer` (its clap definitions), shared by the binary
//! (`src/main.rs`, which documents the interface) and the packaging's man page and completion
//! generator.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::etcd::StoreSpec;

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
    Daemon(Box<DaemonArgs>),
    /// Every VM of the fleet with its host and state, from an etcd store's status keys.
    FleetStatus {
        /// The fleet's store: etcd://HOST:PORT[,HOST:PORT…]/PREFIX (etcds:// for TLS).
        #[arg(long, value_parser = parse_store_arg)]
        store: StoreSpec,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
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

fn parse_store_arg(s: &str) -> Result<StoreSpec, String> {
    crate::etcd::parse_store(s)
}

/// How to reach an etcd store: the options (and environment variables) etcdctl users know.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EtcdArgs {
    /// etcd: CA bundle that signed the members' certificates (turns TLS on).
    #[arg(long, env = "ETCDCTL_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// etcd: client certificate (with --key).
    #[arg(long, env = "ETCDCTL_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// etcd: client key.
    #[arg(long, env = "ETCDCTL_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// etcd: user, NAME or NAME:PASSWORD.
    #[arg(
        long,
        env = "ETCDCTL_USER",
        value_name = "NAME[:PASSWORD]",
        hide_env_values = true
    )]
    pub user: Option<String>,
    /// etcd: password of --user (prefer ETCDCTL_PASSWORD in an environment file).
    #[arg(long, env = "ETCDCTL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// etcd: seconds to establish a connection.
    #[arg(long, env = "ETCDCTL_DIAL_TIMEOUT", default_value_t = 2.0)]
    pub dial_timeout: f64,
}

impl EtcdArgs {
    /// Connection options for `url`, checked.
    pub fn options(&self, url: crate::etcd::EtcdUrl) -> Result<crate::etcd::EtcdOptions, String> {
        let mut o = crate::etcd::EtcdOptions::new(url);
        o.cacert = self.cacert.clone();
        o.cert = self.cert.clone();
        o.key = self.key.clone();
        o.user = self.user.clone();
        o.password = self.password.clone();
        o.dial_timeout = std::time::Duration::from_secs_f64(self.dial_timeout.clamp(0.1, 600.0));
        o.check()?;
        Ok(o)
    }
}

/// `xenplug-peer daemon`'s options.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// The configuration store: a directory, or etcd://HOST:PORT[,HOST:PORT…]/PREFIX (etcds://
    /// for TLS) for a fleet: documents at PREFIX/vms/<uuid>, status to PREFIX/status/<uuid>.
    #[arg(long, value_parser = parse_store_arg)]
    pub store: StoreSpec,
    /// With an etcd store: this host's name in the VMs' status (default: the host name).
    #[arg(long, value_name = "NAME", env = "XENPLUG_PEER_HOST")]
    pub host: Option<String>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// With an etcd store: seconds a status outlives this daemon (its lease's TTL).
    #[arg(long, default_value_t = 15)]
    pub lease_ttl: u32,
    /// With an etcd store: most VMs whose status waits to be written while etcd is away.
    #[arg(long, default_value_t = 100_000)]
    pub status_queue: usize,
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
    /// Log lines one channel may write at once (everything its guest can make the daemon say);
    /// further lines are dropped, counted and summarised.
    #[arg(long, default_value_t = 10, value_name = "LINES")]
    pub log_burst: u32,
    /// Seconds for one more log line of a channel past its burst.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub log_interval: f64,
    /// Seconds without an answer to the handshake before it is reported as failing.
    #[arg(long, default_value_t = 30.0)]
    pub handshake_timeout: f64,
    /// Seconds a request may wait for its reply.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Seconds an apply may wait for its reply (the agent answers once the whole generation is
    /// applied).
    #[arg(long, default_value_t = 120.0)]
    pub apply_timeout: f64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}
