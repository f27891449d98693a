//! The demo's PV channel exchange: while the example domain is up, xenplug's guest agent serves
//! the guest end of its channel (the simulator's stand-in for `/dev/hvc1`) on a temporary guest
//! root, and xenplug's dom0 peer delivers a configuration document through the dom0 socket and
//! reads the result back — host name, address and ssh key — exactly as on a Xen host. Everything
//! happens inside the demo's private network, mount and UTS namespaces.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKdh7c6XyRUHvJFOz6oUvnG9NDFjeQh79Yr0YH7oWo6q operator@dom0";

/// The agent process, stopped on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.join(name);
    p.is_file().then_some(p)
}

/// A minimal guest root: one user, `demo` (uid 1000), with a home directory.
fn guest_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\ndemo:x:1000:1000:Demo:/home/demo:/bin/sh\n",
    )?;
    std::fs::write(etc.join("group"), "root:x:0:\ndemo:x:1000:\n")?;
    std::fs::write(
        etc.join("shadow"),
        "root:*:19000:0:99999:7:::\ndemo:!:19000:0:99999:7:::\n",
    )?;
    std::fs::set_permissions(etc.join("shadow"), std::fs::Permissions::from_mode(0o640))?;
    std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n")?;
    std::fs::write(etc.join("hostname"), "localhost\n")?;
    std::fs::copy("/etc/os-release", etc.join("os-release")).ok();
    let home = root.join("home/demo");
    std::fs::create_dir_all(&home)?;
    nix::unistd::chown(
        &home,
        Some(nix::unistd::Uid::from_raw(1000)),
        Some(nix::unistd::Gid::from_raw(1000)),
    )?;
    Ok(())
}

fn peer(out: &mut dyn Write, peer: &Path, args: &[&str]) -> Result<(bool, String)> {
    let _ = writeln!(out, "   $ xenplug-peer {}", args.join(" "));
    let o = Command::new(peer).args(args).output()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    // `network` lists every interface of the namespace: show the guest's one.
    let shown = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Array(ifs)) => {
            let mine: Vec<_> = ifs.into_iter().filter(|i| i["name"] == "gst5.0").collect();
            format!(
                "(the guest's interface only)\n{}",
                serde_json::to_string_pretty(&mine)?
            )
        }
        _ => text.clone(),
    };
    for l in shown
        .lines()
        .chain(String::from_utf8_lossy(&o.stderr).lines())
    {
        let _ = writeln!(out, "     | {l}");
    }
    let _ = writeln!(out, "     -> exit {}", o.status.code().unwrap_or(-1));
    Ok((o.status.success(), text))
}

/// Run the exchange on the domain's first socket channel; false when a check failed.
pub fn run(sim: &mut xenplug_sim::Sim<'_>, work: &Path) -> Result<bool> {
    let Some((name, socket, tty)) = sim.channels().into_iter().next() else {
        return Ok(true);
    };
    let out = sim.out();
    let _ = writeln!(
        out,
        "-- channel {name}: guest agent on {}, dom0 peer on {}",
        tty.display(),
        socket.display()
    );
    let (Some(agent_bin), Some(peer_bin)) = (sibling("xenplug-agent"), sibling("xenplug-peer"))
    else {
        let _ = writeln!(
            out,
            "   (xenplug-agent and xenplug-peer are not built next to this binary: \
             `cargo build --release -p xenplug-agent -p xenplug-peer` adds this part)"
        );
        return Ok(true);
    };
    let root = work.join("guest-root");
    guest_root(&root).context("making the demo guest's root")?;
    let agent_log = work.join("agent.log");
    let agent = Agent(
        Command::new(&agent_bin)
            .arg("--device")
            .arg(&tty)
            .arg("--root")
            .arg(&root)
            .args(["--shutdown-program", "/bin/true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log)?)
            .spawn()
            .context("starting xenplug-agent")?,
    );
    let doc = serde_json::json!({
        "instance-id": "demo-0001",
        "generation": 1,
        "hostname": "demo-guest",
        "fqdn": "demo-guest.example.org",
        "network": {"version": 2, "ethernets": {"lan": {
            "match": {"name": "gst5.0"},
            "addresses": ["192.0.2.10/24"],
            "nameservers": {"addresses": ["192.0.2.53"]}
        }}},
        "users": [{"name": "demo", "ssh_authorized_keys": [KEY]}]
    });
    let doc_path = work.join("demo-guest.json");
    std::fs::write(&doc_path, serde_json::to_string_pretty(&doc)?)?;
    let _ = writeln!(out, "   configuration document {}:", doc_path.display());
    for l in serde_json::to_string_pretty(&doc)?.lines() {
        let _ = writeln!(out, "     {l}");
    }
    let sock = socket.display().to_string();
    let doc_arg = doc_path.display().to_string();
    let (sent, _) = peer(
        out,
        &peer_bin,
        &[
            "send",
            "--socket",
            &sock,
            "--config",
            &doc_arg,
            "--timeout",
            "20",
        ],
    )?;
    let (_, host) = peer(out, &peer_bin, &["query", "--socket", &sock, "hostname"])?;
    let (_, keys) = peer(
        out,
        &peer_bin,
        &["query", "--socket", &sock, "ssh-keys", "--user", "demo"],
    )?;
    let (_, net) = peer(out, &peer_bin, &["query", "--socket", &sock, "network"])?;
    drop(agent);
    let _ = writeln!(out, "   the agent's log:");
    for l in std::fs::read_to_string(&agent_log)
        .unwrap_or_default()
        .lines()
    {
        let _ = writeln!(out, "     | {l}");
    }
    let uts = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let keyfile =
        std::fs::read_to_string(root.join("home/demo/.ssh/authorized_keys")).unwrap_or_default();
    let _ = writeln!(out, "   host name in the (private) UTS namespace: {uts}");
    let _ = writeln!(out, "   {}/home/demo/.ssh/authorized_keys:", root.display());
    for l in keyfile.lines() {
        let _ = writeln!(out, "     {l}");
    }
    let ok = sent
        && uts == "demo-guest"
        && host.contains("demo-guest")
        && keys.contains("operator@dom0")
        && keyfile.contains(KEY)
        && net.contains("192.0.2.10");
    let _ = writeln!(
        out,
        "   channel exchange: {}",
        if ok {
            "configuration applied and read back"
        } else {
            "FAILED"
        }
    );
    Ok(ok)
}
