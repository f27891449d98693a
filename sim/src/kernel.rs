//! Stand-ins for what the dom0 kernel and QEMU would create, so the scripts find real objects:
//! netback's `vifD.N` (a veth pair), QEMU's `vifD.N-emu` tap, the bridges a host would have, and a
//! dom0 uplink for routed and NAT set-ups. The simulator is a test harness, so it drives iproute2
//! here; the scripts themselves never do.
//!
//! [`enter_private_namespaces`] moves the whole process into a fresh network and mount namespace
//! (with /sys remounted so sysfs shows the new namespace's links); the namespace and everything in
//! it disappears when the process exits, which is what makes the simulator clean up after itself
//! even when it is killed. Both it and [`enter_private_mounts`] give the process a private, empty
//! `/run/xen-hotplug` (and `/var/run/xen-hotplug`), where the scripts keep their locks and state:
//! the machine running the simulator may be a real dom0 whose own hotplug state must not be
//! touched or seen.

use std::process::Command;

/// A stand-in operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {msg}")]
pub struct KernelError {
    what: String,
    msg: String,
}

fn ip(args: &[&str]) -> Result<String, KernelError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| KernelError {
            what: format!("ip {}", args.join(" ")),
            msg: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(KernelError {
            what: format!("ip {}", args.join(" ")),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Move this process into new network, mount and UTS namespaces (so nothing done inside can
/// touch the host's links, mounts or host name), remount /sys for the new network namespace and
/// bring up `lo`. Must be called while the process has a single thread.
///
/// `hotplug_dir`, when given, is bind-mounted on the private `/run/xen-hotplug` so that the
/// scripts' state outlives the process; otherwise that directory is an empty tmpfs directory.
pub fn enter_private_namespaces(hotplug_dir: Option<&std::path::Path>) -> Result<(), KernelError> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let err = |what: &str| {
        let what = what.to_string();
        move |e: nix::Error| KernelError {
            what,
            msg: e.to_string(),
        }
    };
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(err(
            "unshare(CLONE_NEWNET|CLONE_NEWNS|CLONE_NEWUTS) (needs root)",
        ))?;
    private_mounts(hotplug_dir)?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(err("mount sysfs on /sys"))?;
    ip(&["link", "set", "lo", "up"])?;
    Ok(())
}

/// Move this process into a new mount namespace only (the host's network stays visible) with a
/// private `/run/xen-hotplug` (see [`enter_private_namespaces`]). Must be called while the process
/// has a single thread.
pub fn enter_private_mounts(hotplug_dir: Option<&std::path::Path>) -> Result<(), KernelError> {
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| KernelError {
        what: "unshare(CLONE_NEWNS) (needs root)".into(),
        msg: e.to_string(),
    })?;
    private_mounts(hotplug_dir)
}

/// In a new mount namespace: make every mount private, then hide the host's hotplug lock and
/// state directory (or put `hotplug_dir` in its place).
fn private_mounts(hotplug_dir: Option<&std::path::Path>) -> Result<(), KernelError> {
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| KernelError {
        what: "make / private".into(),
        msg: e.to_string(),
    })?;
    let run = std::path::Path::new("/run");
    hide_entry(run, "xen-hotplug")?;
    // Debian's /var/run is a link to /run; where it is a directory of its own, hide there too.
    let var_run = std::path::Path::new("/var/run");
    if var_run.is_dir()
        && !var_run.is_symlink()
        && std::fs::canonicalize(var_run).ok().as_deref() != Some(run)
    {
        hide_entry(var_run, "xen-hotplug")?;
    }
    if let Some(d) = hotplug_dir {
        let at = run.join("xen-hotplug");
        std::fs::create_dir(&at).map_err(|e| KernelError {
            what: format!("mkdir {}", at.display()),
            msg: e.to_string(),
        })?;
        mount(Some(d), &at, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
            KernelError {
                what: format!("bind {} on {}", d.display(), at.display()),
                msg: e.to_string(),
            }
        })?;
    }
    Ok(())
}

/// Replace `dir` (in this private mount namespace) by a tmpfs holding everything `dir` held
/// except `hidden`: sub-directories, files and sockets are bind-mounted from the original, links
/// copied. Nothing is created on the host (the host's `dir/hidden` need not exist, and if it
/// does it is neither read nor changed).
fn hide_entry(dir: &std::path::Path, hidden: &str) -> Result<(), KernelError> {
    use nix::mount::{mount, MsFlags};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let fail = |what: String| {
        move |e: std::io::Error| KernelError {
            what,
            msg: e.to_string(),
        }
    };
    let nixfail = |what: String| {
        move |e: nix::Error| KernelError {
            what,
            msg: e.to_string(),
        }
    };
    // The original stays reachable through this descriptor once the tmpfs covers `dir`.
    let orig = std::fs::File::open(dir).map_err(fail(format!("open {}", dir.display())))?;
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(fail(format!("list {}", dir.display())))? {
        let e = e.map_err(fail(format!("list {}", dir.display())))?;
        if e.file_name() != hidden {
            entries.push(e);
        }
    }
    let mode = std::fs::metadata(dir)
        .map_err(fail(format!("stat {}", dir.display())))?
        .permissions()
        .mode()
        & 0o7777;
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("mode={mode:o}").as_str()),
    )
    .map_err(nixfail(format!(
        "mount a private tmpfs on {}",
        dir.display()
    )))?;
    let fd_dir = std::path::PathBuf::from(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        orig.as_raw_fd()
    }));
    for e in entries {
        let name = e.file_name();
        let src = fd_dir.join(&name);
        let dst = dir.join(&name);
        let ft = e
            .file_type()
            .map_err(fail(format!("stat {}", src.display())))?;
        if ft.is_symlink() {
            let target =
                std::fs::read_link(&src).map_err(fail(format!("readlink {}", src.display())))?;
            std::os::unix::fs::symlink(target, &dst)
                .map_err(fail(format!("link {}", dst.display())))?;
            continue;
        }
        if ft.is_dir() {
            std::fs::create_dir(&dst).map_err(fail(format!("mkdir {}", dst.display())))?;
        } else if ft.is_file()
            || ft.is_socket()
            || ft.is_fifo()
            || ft.is_char_device()
            || ft.is_block_device()
        {
            std::fs::File::create(&dst).map_err(fail(format!("create {}", dst.display())))?;
        } else {
            continue;
        }
        mount(
            Some(&src),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(nixfail(format!(
            "bind {} on {}",
            dir.join(&name).display(),
            dst.display()
        )))?;
    }
    Ok(())
}

fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Create a bridge (STP off, forward delay 0, as Xen's `create_bridge`) if it does not exist.
pub fn ensure_bridge(name: &str) -> Result<bool, KernelError> {
    if exists(name) {
        return Ok(false);
    }
    ip(&[
        "link",
        "add",
        "name",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    ])?;
    ip(&["link", "set", name, "up"])?;
    Ok(true)
}

/// Create a dom0 uplink `name` with `addr` (CIDR), standing in for `eth0`: one end of a veth
/// pair (the `dummy` driver is not on every kernel), the other end `<name>p` up too.
pub fn ensure_uplink(name: &str, addr: &str) -> Result<bool, KernelError> {
    if exists(name) {
        return Ok(false);
    }
    let peer = format!("{name}p");
    ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])?;
    ip(&["link", "set", &peer, "up"])?;
    ip(&["addr", "add", addr, "dev", name])?;
    ip(&["link", "set", name, "up"])?;
    Ok(true)
}

/// The guest-side peer name of a vif stand-in (kept within IFNAMSIZ).
pub fn guest_peer_name(domid: u32, devid: u32) -> String {
    format!("gst{domid}.{devid}")
}

/// netback's `vif<domid>.<devid>`: a veth pair whose other end stands for the guest's eth.
pub fn create_vif(domid: u32, devid: u32) -> Result<String, KernelError> {
    let name = format!("vif{domid}.{devid}");
    let peer = guest_peer_name(domid, devid);
    ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer])?;
    ip(&["link", "set", &peer, "up"])?;
    Ok(name)
}

/// QEMU's emulated-NIC tap, `vif<domid>.<devid>-emu`.
pub fn create_tap(domid: u32, devid: u32) -> Result<String, KernelError> {
    let name = format!("vif{domid}.{devid}-emu");
    ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
    Ok(name)
}

/// Delete a link if it exists (by any of the names it may have now).
pub fn delete_link(names: &[&str]) {
    for n in names {
        if exists(n) {
            let _ = ip(&["link", "del", n]);
        }
    }
}

/// `ip -br link` and `ip -br addr` plus routes, nftables rules and tc ingress policing, for the
/// human report.
pub fn link_state() -> String {
    let mut s = String::new();
    for args in [
        &["-br", "link", "show"][..],
        &["-br", "-4", "addr", "show"][..],
        &["route", "show"][..],
    ] {
        match ip(args) {
            Ok(out) => s.push_str(&out),
            Err(e) => s.push_str(&format!("({e})\n")),
        }
    }
    // The namespace's nftables rules (antispoofing, NAT), when nft is installed.
    if let Ok(out) = Command::new("nft").args(["list", "ruleset"]).output() {
        if out.status.success() && !out.stdout.is_empty() {
            s.push_str("nft list ruleset:\n");
            s.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    s.push_str(&tc_ingress_state());
    s
}

/// Ingress policing (a tap's `rate`): the filters of every link with an ingress qdisc, when tc
/// is installed. One `tc` run when there is none.
fn tc_ingress_state() -> String {
    let mut s = String::new();
    let Ok(out) = Command::new("tc").args(["qdisc", "show"]).output() else {
        return s;
    };
    let qdiscs = String::from_utf8_lossy(&out.stdout);
    for line in qdiscs.lines().filter(|l| l.starts_with("qdisc ingress ")) {
        let Some(dev) = line.split_whitespace().skip_while(|w| *w != "dev").nth(1) else {
            continue;
        };
        s.push_str(&format!("tc filter show dev {dev} ingress:\n"));
        if let Ok(f) = Command::new("tc")
            .args(["filter", "show", "dev", dev, "ingress"])
            .output()
        {
            s.push_str(&String::from_utf8_lossy(&f.stdout));
        }
    }
    s
}

/// `ip -j -d link show` for the machine-readable report.
pub fn link_state_json() -> serde_json::Value {
    ip(&["-j", "-d", "link", "show"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// QEMU's side of a `connection=socket` PV channel: it listens on the channel's `path` (one
/// client at a time, like QEMU's `server=on,wait=off` chardev) and relays bytes to and from a
/// pty whose other end stands in for the guest's `/dev/hvcN`. While no client is connected,
/// guest output stays queued in the pty, as it stays in QEMU and the ring. Stopped on drop.
#[derive(Debug)]
pub struct ChannelRelay {
    guest_tty: std::path::PathBuf,
    socket: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    // Keeps the guest end open, so the pty survives agents that close and re-open it.
    _guest_end: std::os::fd::OwnedFd,
}

impl ChannelRelay {
    /// Listen on `socket` and open a pty for the guest side.
    pub fn start(socket: &std::path::Path) -> Result<ChannelRelay, KernelError> {
        use std::os::unix::net::UnixListener;
        let err = |what: &str, e: &dyn std::fmt::Display| KernelError {
            what: what.to_string(),
            msg: e.to_string(),
        };
        let pty = nix::pty::openpty(None, None).map_err(|e| err("openpty", &e))?;
        let guest_tty = std::fs::read_link(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            pty.slave.as_raw_fd()
        }))
        .map_err(|e| err("naming the pty", &e))?;
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .map_err(|e| err(&format!("listening on {}", socket.display()), &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err("set_nonblocking", &e))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let master = std::fs::File::from(pty.master);
        let thread = std::thread::Builder::new()
            .name("channel-relay".into())
            .spawn(move || relay_loop(listener, master, st))
            .map_err(|e| err("spawning the relay", &e))?;
        Ok(ChannelRelay {
            guest_tty,
            socket: socket.to_path_buf(),
            stop,
            thread: Some(thread),
            _guest_end: pty.slave,
        })
    }

    /// The guest's end (a pty standing in for `/dev/hvcN`).
    pub fn guest_tty(&self) -> &std::path::Path {
        &self.guest_tty
    }
}

impl Drop for ChannelRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn relay_loop(
    listener: std::os::unix::net::UnixListener,
    mut master: std::fs::File,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::sync::atomic::Ordering;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let mut client = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let (client_ready, guest_ready) = {
                let mut fds = [
                    PollFd::new(client.as_fd(), PollFlags::POLLIN),
                    PollFd::new(master.as_fd(), PollFlags::POLLIN),
                ];
                if poll(&mut fds, PollTimeout::from(100u16)).is_err() {
                    break;
                }
                let ready = |f: &PollFd| {
                    f.revents()
                        .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
                };
                (ready(&fds[0]), ready(&fds[1]))
            };
            if client_ready {
                match client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if master.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            if guest_ready {
                match master.read(&mut buf) {
                    // EIO: no guest has the tty open right now; wait for one.
                    Ok(0) | Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                    Ok(n) => {
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
}
