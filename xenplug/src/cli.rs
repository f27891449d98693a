//! `xenplug <command>`: the operator and test commands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{CommandFactory, Parser, Subcommand};

use crate::doctor;
use crate::install;
use crate::scripts;

/// The clap definition of `xenplug <command>`, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

#[derive(Parser, Debug)]
#[command(
    name = "xenplug",
    version,
    about = "Native replacements for Xen's dom0 hotplug scripts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Link every hotplug script name in DIR to this binary, backing up what is replaced.
    Install {
        /// Xen's script directory (XEN_SCRIPT_DIR).
        #[arg(long, default_value = "/etc/xen/scripts")]
        scripts_dir: PathBuf,
        /// Put the backed-up scripts back instead.
        #[arg(long)]
        uninstall: bool,
        /// The binary the links point to (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Run the embedded xenstored in the foreground.
    Xenstored {
        /// The Unix socket to listen on (connections act as dom0).
        #[arg(long)]
        socket: PathBuf,
        /// An extra socket whose connections act as domain DOMID, as DOMID=PATH (repeatable).
        #[arg(long = "domain-socket", value_name = "DOMID=PATH")]
        domain_sockets: Vec<String>,
    },
    /// Play libxl for one domain: write its devices' xenstore nodes and run their hotplug
    /// scripts exactly as libxl does, then destroy it.
    Sim(SimArgs),
    /// The demonstration: the embedded xenstored, a private network namespace, an example
    /// domain created and destroyed through xenplug's scripts, every step printed.
    Demo {
        /// Also replay the same domain through these reference scripts (e.g. /etc/xen/scripts of
        /// Debian's xen-utils-common) for comparison.
        #[arg(long)]
        reference: Option<PathBuf>,
    },
    /// Run a hotplug script by name (as if called through its link).
    Run {
        /// Script name (`block`, `vif-bridge`, …).
        script: String,
        /// Its arguments (`add`, `online type_if=vif`, …).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the script names this binary provides.
    List,
    /// Check what breaks hotplug on this host, and say how to fix it.
    ///
    /// The checks: script links, diversions, xenstored, xl.conf, bridges, nft, loop devices,
    /// kernel modules, log/lock/state directories, syslog, leftovers of earlier runs, the peer
    /// daemon.
    ///
    /// Exit status: 0 when every check passed, 1 when one failed, 3 when there are warnings only.
    Doctor(DoctorArgs),
}

#[derive(clap::Args, Debug)]
struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Xen's script directory (XEN_SCRIPT_DIR).
    #[arg(long, default_value = "/etc/xen/scripts")]
    scripts_dir: PathBuf,
    /// The hotplug configuration file [default: $XENPLUG_CONFIG, else /etc/xen/xenplug.toml].
    #[arg(long)]
    config: Option<PathBuf>,
    /// xl's global configuration file.
    #[arg(long, default_value = "/etc/xen/xl.conf")]
    xl_conf: PathBuf,
    /// The dom0 peer daemon's control socket.
    #[arg(long, default_value = "/run/xenplug-peer/control.sock")]
    peer_control: PathBuf,
    /// The xenplug binary the script names should run [default: this one].
    #[arg(long)]
    binary: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct SimArgs {
    /// xl domain configuration file.
    config: PathBuf,
    /// Where relative `script=` names are found (libxl's XEN_SCRIPT_DIR).
    #[arg(long, default_value = "/etc/xen/scripts")]
    scripts_dir: PathBuf,
    /// Domain id to use.
    #[arg(long, default_value_t = 1)]
    domid: u32,
    /// Hotplug script timeout in seconds (libxl: 40).
    #[arg(long, default_value_t = 40)]
    timeout: u64,
    /// Stay in the current network namespace and create no stand-in links.
    #[arg(long)]
    no_netns: bool,
    /// Do not create the bridges the NICs name.
    #[arg(long)]
    no_bridges: bool,
    /// Use this running xenstored instead of starting the embedded one.
    #[arg(long)]
    xenstored_socket: Option<PathBuf>,
    /// Write a JSON report of everything that happened here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Create the domain and exit without destroying it (needs --xenstored-socket, --no-netns
    /// and --hotplug-dir, so that what was created outlives this process).
    #[arg(long)]
    keep: bool,
    /// The directory the scripts see as `/run/xen-hotplug` (their locks and state). Default: a
    /// private empty one that disappears with this process; the host's own is never used.
    #[arg(long)]
    hotplug_dir: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xenplug: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Install {
            scripts_dir,
            uninstall,
            binary,
        } => {
            let binary = match binary {
                Some(b) => b,
                None => install::current_binary().context("finding this executable")?,
            };
            let names = scripts::names();
            let steps = if uninstall {
                install::uninstall(&scripts_dir, &binary, &names)?
            } else {
                install::install(&scripts_dir, &binary, &names)?
            };
            for s in steps {
                println!("{s:?}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Xenstored {
            socket,
            domain_sockets,
        } => {
            let mut extra = Vec::new();
            for d in domain_sockets {
                let (id, path) = d
                    .split_once('=')
                    .context("--domain-socket takes DOMID=PATH")?;
                extra.push((
                    id.parse::<u32>()
                        .with_context(|| format!("bad domid `{id}`"))?,
                    PathBuf::from(path),
                ));
            }
            run_xenstored(&socket, extra)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(args) => sim(args),
        Command::Demo { reference } => demo(reference),
        Command::Run { script, args } => {
            let f = scripts::lookup(&script).with_context(|| {
                format!(
                    "no script `{script}`; try one of: {}",
                    scripts::names().join(" ")
                )
            })?;
            let mut raw = xenplug_hotplug::Raw::from_process();
            raw.argv = std::iter::once(script).chain(args).collect();
            Ok(f(raw))
        }
        Command::List => {
            for n in scripts::names() {
                println!("{n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(a) => {
            let mut paths = doctor::Paths::system();
            paths.scripts_dir = a.scripts_dir;
            if let Some(c) = a.config {
                paths.config_file = c;
            }
            paths.xl_conf = a.xl_conf;
            paths.peer_control = a.peer_control;
            if let Some(b) = a.binary {
                paths.binary = b;
            }
            let report = doctor::run(&paths);
            if a.json {
                println!("{:#}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            Ok(ExitCode::from(report.exit_code()))
        }
    }
}

/// Serve xenstore until SIGINT/SIGTERM.
fn run_xenstored(socket: &Path, extra: Vec<(u32, PathBuf)>) -> Result<()> {
    let mut opts = xenplug_xenstored::Options::new(socket);
    opts.domain_sockets = extra;
    xenplug_xenstored::daemon::serve_until_signal(&opts)
        .with_context(|| format!("xenstored on {}", socket.display()))
}

/// The embedded xenstored on a thread of its own, stopped (and its socket removed) on drop.
pub(crate) struct Daemon {
    shutdown: xenplug_xenstored::Shutdown,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    opts: xenplug_xenstored::Options,
}

impl Daemon {
    pub(crate) fn start(socket: &Path) -> Result<Daemon> {
        let opts = xenplug_xenstored::Options::new(socket);
        // Bound here, so that clients can connect as soon as this returns.
        let listeners = xenplug_xenstored::daemon::bind_all(&opts)?;
        let shutdown = xenplug_xenstored::Shutdown::new();
        let (o, sd) = (opts.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name("xenstored".into())
            .spawn(move || {
                xenplug_xenstored::daemon::serve_listeners(
                    &o,
                    xenplug_xenstored::Engine::new(),
                    listeners,
                    sd,
                )
            })?;
        Ok(Daemon {
            shutdown,
            thread: Some(thread),
            opts,
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.opts.socket);
    }
}

/// A xenstored for the simulator: the embedded one on a private socket (stopped on drop), or
/// one the caller names.
struct Store {
    _daemon: Option<Daemon>,
    _dir: Option<tempfile::TempDir>,
}

fn start_store(external: Option<&Path>) -> Result<Store> {
    if let Some(path) = external {
        std::env::set_var("XENSTORED_PATH", path);
        return Ok(Store {
            _daemon: None,
            _dir: None,
        });
    }
    let dir = tempfile::Builder::new()
        .prefix("xenplug-xenstored.")
        .tempdir()
        .context("creating a directory for the embedded xenstored's socket")?;
    let socket = dir.path().join("socket");
    // Set before any thread exists that could read the environment.
    std::env::set_var("XENSTORED_PATH", &socket);
    let daemon = Daemon::start(&socket).context("starting the embedded xenstored")?;
    Ok(Store {
        _daemon: Some(daemon),
        _dir: Some(dir),
    })
}

/// What to do while a simulated domain is up (the demo talks to its guest agent there).
type WhileUp<'a> = &'a mut dyn FnMut(&mut xenplug_sim::Sim<'_>) -> Result<()>;

struct SimRun<'a> {
    config: String,
    opts: xenplug_sim::Options,
    report: Option<PathBuf>,
    keep: bool,
    while_up: Option<WhileUp<'a>>,
}

fn run_sim(run: SimRun, out: &mut dyn Write) -> Result<xenplug_sim::Report> {
    let dom = xenplug_sim::Domain::from_config(&run.config, run.opts.domid)?;
    let xs = xenplug_xenstore::client::XsClient::open().context("connecting to xenstored")?;
    let mut sim = xenplug_sim::Sim::new(&xs, run.opts, dom, out);
    let created = sim.create().is_ok();
    if created {
        if let Some(f) = run.while_up {
            f(&mut sim)?;
        }
    }
    sim.show_state(if created {
        "after create"
    } else {
        "after the failed create (libxl destroyed the domain)"
    });
    if created && !run.keep {
        sim.destroy();
        sim.show_state("after destroy");
    }
    let report = sim.report.clone();
    if let Some(path) = run.report {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn sim(args: SimArgs) -> Result<ExitCode> {
    if args.keep
        && (args.xenstored_socket.is_none() || !args.no_netns || args.hotplug_dir.is_none())
    {
        bail!("--keep needs --xenstored-socket, --no-netns and --hotplug-dir");
    }
    if args.no_netns {
        xenplug_sim::kernel::enter_private_mounts(args.hotplug_dir.as_deref())?;
    } else {
        xenplug_sim::kernel::enter_private_namespaces(args.hotplug_dir.as_deref())?;
    }
    let config = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let _store = start_store(args.xenstored_socket.as_deref())?;
    let opts = xenplug_sim::Options {
        scripts_dir: args.scripts_dir,
        domid: args.domid,
        hotplug_timeout: Duration::from_secs(args.timeout),
        stand_ins: !args.no_netns,
        uplink: (!args.no_netns).then(|| ("eth0".to_string(), "10.99.0.1/24".to_string())),
        create_bridges: !args.no_bridges,
    };
    let report = run_sim(
        SimRun {
            config,
            opts,
            report: args.report,
            keep: args.keep,
            while_up: None,
        },
        &mut std::io::stdout(),
    )?;
    Ok(if report.created {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The example domain of the demo. `@WORK@` is the demo's work directory.
const DEMO_DOMAIN: &str = r#"# The demo's example domain (xl.cfg syntax).
name = "demo"
type = "hvm"
disk = [ 'format=raw,vdev=xvda,access=rw,target=@WORK@/root.img',
         'format=raw,vdev=xvdb,access=ro,target=@WORK@/data.img' ]
vif = [ 'mac=00:16:3e:00:00:01,bridge=xenbr0,ip=192.0.2.10',
        'mac=00:16:3e:00:00:02,script=vif-route,ip=198.51.100.20,gatewaydev=eth0,type=vif' ]
channel = [ 'connection=socket,name=org.xenplug.agent.0,path=@WORK@/agent.sock' ]
"#;

/// A domain whose NIC names a bridge the host does not have: shows the error contract.
const DEMO_BROKEN: &str = r#"# A domain whose vif names a bridge that does not exist.
name = "broken"
type = "pv"
disk = [ 'format=raw,vdev=xvda,access=rw,target=@WORK@/broken.img' ]
vif = [ 'bridge=nosuchbr0' ]
"#;

fn demo(reference: Option<PathBuf>) -> Result<ExitCode> {
    xenplug_sim::kernel::enter_private_namespaces(None)?;
    let work = tempfile::Builder::new()
        .prefix("xenplug-demo.")
        .tempdir()
        .context("creating the demo's work directory")?;
    let w = work.path();
    for (img, size) in [
        ("root.img", 64u64 << 20),
        ("data.img", 16 << 20),
        ("broken.img", 8 << 20),
    ] {
        let f = std::fs::File::create(w.join(img))?;
        f.set_len(size)?;
    }
    let scripts_dir = w.join("scripts");
    let binary = install::current_binary()?;
    let steps = install::install(&scripts_dir, &binary, &scripts::names())?;
    let _store = start_store(None)?;
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "xenplug demo: embedded xenstored at {}, private network namespace, {} scripts linked in {}",
        std::env::var("XENSTORED_PATH").unwrap_or_default(),
        steps.len(),
        scripts_dir.display()
    );
    let workstr = w.display().to_string();
    let mut runs = vec![(
        "demo",
        DEMO_DOMAIN.replace("@WORK@", &workstr),
        scripts_dir.clone(),
        5u32,
        true,
    )];
    runs.push((
        "broken",
        DEMO_BROKEN.replace("@WORK@", &workstr),
        scripts_dir.clone(),
        6,
        false,
    ));
    if let Some(r) = reference {
        runs.push((
            "reference",
            DEMO_DOMAIN.replace("@WORK@", &workstr),
            r,
            7,
            true,
        ));
    }
    let mut ok = true;
    let mut channel_ok = true;
    for (label, config, dir, domid, expect_ok) in runs {
        let mut talk = |sim: &mut xenplug_sim::Sim<'_>| -> Result<()> {
            channel_ok = crate::demo_channel::run(sim, w)?;
            Ok(())
        };
        let _ = writeln!(
            out,
            "\n################ {label}: {}\n{config}",
            dir.display()
        );
        let report = run_sim(
            SimRun {
                config,
                opts: xenplug_sim::Options {
                    scripts_dir: dir,
                    domid,
                    hotplug_timeout: Duration::from_secs(40),
                    stand_ins: true,
                    uplink: Some(("eth0".into(), "10.99.0.1/24".into())),
                    create_bridges: expect_ok,
                },
                report: None,
                keep: false,
                while_up: (label == "demo").then_some(&mut talk as WhileUp),
            },
            &mut out,
        )?;
        if report.created != expect_ok {
            ok = false;
            let _ = writeln!(
                out,
                "!! {label}: expected the create to {}",
                if expect_ok { "succeed" } else { "fail" }
            );
        }
    }
    if !channel_ok {
        ok = false;
        let _ = writeln!(
            out,
            "!! demo: the channel exchange did not give the expected result"
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
