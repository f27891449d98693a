//! Network configuration files for the guest's network manager: systemd-networkd, ifupdown or
//! NetworkManager, whichever the guest uses ([`detect`]), from the document's network model.
//!
//! Every renderer is a pure function from the model (and the interface names the agent found)
//! to a list of files; writing them, removing the agent's stale files and undoing on failure is
//! [`crate::netapply`]'s. Every name and value that goes into a file is checked again where it
//! is written ([`name`], [`domain`]): nothing a shell or a configuration parser would interpret
//! is ever written, whatever its source.
//!
//! Files the agent owns (and removes again when a later generation no longer needs them):
//!
//! | renderer | files |
//! |---|---|
//! | networkd | `/etc/systemd/network/10-xenplug-<id>.{network,netdev}`, `/etc/systemd/resolved.conf.d/xenplug-agent.conf` (global DNS) |
//! | ifupdown | `/etc/network/interfaces.d/xenplug-agent` |
//! | NetworkManager | `/etc/NetworkManager/system-connections/xenplug-<id>.nmconnection` (0600), `/etc/NetworkManager/conf.d/90-xenplug-agent-dns.conf` (global DNS) |
//! | all | `/etc/systemd/network/10-xenplug-<id>.link` (renames and Wake-on-LAN: udev applies them whatever manages the network) |

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use xenplug_channel::config::{validate_hostname, validate_ifname, NetworkConfig};

use crate::fsutil::under;

pub mod ifupdown;
pub mod networkd;
pub mod nm;

/// The network managers the agent renders for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Renderer {
    /// systemd-networkd.
    Networkd,
    /// Debian's ifupdown (`/etc/network/interfaces`).
    Ifupdown,
    /// NetworkManager (key files).
    NetworkManager,
}

impl Renderer {
    /// The name used in the configuration and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Renderer::Networkd => "networkd",
            Renderer::Ifupdown => "ifupdown",
            Renderer::NetworkManager => "network-manager",
        }
    }
}

fn enabled(root: &Path, unit: &str) -> bool {
    [
        "multi-user.target.wants",
        "network-online.target.wants",
        "sockets.target.wants",
        "sysinit.target.wants",
    ]
    .iter()
    .any(|t| {
        std::fs::symlink_metadata(under(root, &format!("/etc/systemd/system/{t}/{unit}"))).is_ok()
    })
}

fn exists(root: &Path, paths: &[&str]) -> bool {
    paths.iter().any(|p| under(root, p).exists())
}

/// Which network manager the guest uses, in this order: NetworkManager when its service is
/// enabled; systemd-networkd when its service is enabled; ifupdown when
/// `/etc/network/interfaces` and `ifup` exist; systemd-networkd when it is installed. `None`
/// when the guest has none of them (the agent then writes networkd's files, and configures the
/// NICs live as always).
pub fn detect(root: &Path) -> Option<Renderer> {
    let nm = exists(root, &["/usr/sbin/NetworkManager", "/sbin/NetworkManager"]);
    if nm && enabled(root, "NetworkManager.service") {
        return Some(Renderer::NetworkManager);
    }
    let networkd = exists(
        root,
        &[
            "/lib/systemd/systemd-networkd",
            "/usr/lib/systemd/systemd-networkd",
        ],
    );
    if networkd
        && (enabled(root, "systemd-networkd.service") || enabled(root, "systemd-networkd.socket"))
    {
        return Some(Renderer::Networkd);
    }
    if under(root, "/etc/network/interfaces").is_file()
        && exists(root, &["/sbin/ifup", "/usr/sbin/ifup"])
    {
        return Some(Renderer::Ifupdown);
    }
    if networkd {
        return Some(Renderer::Networkd);
    }
    None
}

/// One file a renderer wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOut {
    /// Absolute path in the guest.
    pub path: String,
    /// Content.
    pub content: String,
    /// Mode.
    pub mode: u32,
}

/// What the renderers know besides the model: the kernel name of each `ethernets` entry, when
/// the agent found the NIC (or the entry names it: `set-name`, no `match`).
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Entry id → kernel name.
    pub ethernets: BTreeMap<String, String>,
}

impl Names {
    /// The kernel name of entry `id` of any kind (bonds, bridges and VLANs are named by their
    /// ids), if known.
    pub fn of(&self, n: &NetworkConfig, id: &str) -> Option<String> {
        if n.ethernets.contains_key(id) {
            self.ethernets.get(id).cloned()
        } else if n.kind_of(id).is_some() {
            Some(id.to_string())
        } else {
            None
        }
    }
}

/// An interface name about to be written: checked again here (it may come from the kernel
/// rather than from the document).
pub fn name(n: &str) -> Result<&str> {
    validate_ifname(n).map_err(|e| anyhow!(e))?;
    Ok(n)
}

/// A search domain about to be written: checked again here.
pub fn domain(d: &str) -> Result<&str> {
    validate_hostname(d).map_err(|e| anyhow!("search domain: {e}"))?;
    Ok(d)
}

/// The file name part for entry `id` (ids are validated: letters, digits, `_ - . @ +`).
pub fn file_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The files for `renderer`, plus the `.link` files every guest gets.
pub fn render(renderer: Renderer, n: &NetworkConfig, names: &Names) -> Result<Vec<FileOut>> {
    let mut files = networkd::links(n)?;
    files.extend(match renderer {
        Renderer::Networkd => networkd::render(n)?,
        Renderer::Ifupdown => ifupdown::render(n, names)?,
        Renderer::NetworkManager => nm::render(n, names)?,
    });
    Ok(files)
}

/// Whether a path is one of the files the agent owns for any renderer (see the module docs).
pub fn is_owned(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or("");
    let dir = &path[..path.len() - file.len()];
    match dir {
        "/etc/systemd/network/" => {
            file.starts_with(networkd::PREFIX)
                && [".network", ".netdev", ".link"]
                    .iter()
                    .any(|e| file.ends_with(e))
        }
        "/etc/systemd/resolved.conf.d/" => file == "xenplug-agent.conf",
        "/etc/network/interfaces.d/" => file == "xenplug-agent",
        "/etc/NetworkManager/system-connections/" => {
            file.starts_with("xenplug-") && file.ends_with(".nmconnection")
        }
        "/etc/NetworkManager/conf.d/" => file == "90-xenplug-agent-dns.conf",
        _ => false,
    }
}

/// The directories where the agent's files may be (to find stale ones).
pub const OWNED_DIRS: &[&str] = &[
    "/etc/systemd/network",
    "/etc/systemd/resolved.conf.d",
    "/etc/network/interfaces.d",
    "/etc/NetworkManager/system-connections",
    "/etc/NetworkManager/conf.d",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;
    use xenplug_channel::config::ConfigDoc;

    /// Run every `up`/`down` line of an ifupdown rendering through `/bin/sh -c`, as ifupdown
    /// does, with `IFACE` set and a stub `ip` first in PATH; returns each `ip` invocation's
    /// argv and whether anything else ran (a file `p` the hostile names try to create).
    fn run_up_lines(ifu: &str, iface: &str) -> (Vec<Vec<String>>, bool) {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("ip.log");
        let stub = d.path().join("ip");
        fs::write(
            &stub,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\037' \"$a\" >> '{}'; done\necho >> '{}'\n",
                log.display(),
                log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
        for line in ifu.lines() {
            let t = line.trim_start();
            let Some(cmd) = t.strip_prefix("up ").or_else(|| t.strip_prefix("down ")) else {
                continue;
            };
            let st = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(d.path())
                .env("PATH", format!("{}:/usr/bin:/bin", d.path().display()))
                .env("IFACE", iface)
                .status()
                .unwrap();
            assert!(st.success(), "{cmd}");
        }
        let calls = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                l.split('\x1f')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        (calls, d.path().join("p").exists())
    }

    fn net(v: serde_json::Value) -> NetworkConfig {
        let n: NetworkConfig = serde_json::from_value(v).unwrap();
        n.validate().unwrap();
        n
    }

    fn names(pairs: &[(&str, &str)]) -> Names {
        Names {
            ethernets: pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    fn content<'a>(files: &'a [FileOut], path: &str) -> &'a str {
        &files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| {
                panic!(
                    "no {path} in {:?}",
                    files.iter().map(|f| &f.path).collect::<Vec<_>>()
                )
            })
            .content
    }

    /// Issue 12: a name dom0 sends can never make ifupdown's shell run something. For each
    /// hostile `set-name`, either the document is refused, or the rendered `up` lines, run
    /// through `/bin/sh` as ifupdown runs them, call `ip` and nothing else.
    #[test]
    fn hostile_names_never_reach_ifupdowns_shell() {
        for bad in [
            // At most 15 bytes each, so the kernel's length limit alone does not stop them.
            "a;touch${IFS}p",
            "$(touch${IFS}p)",
            "`touch${IFS}p`",
            "a|touch${IFS}p",
            "a&&touch${IFS}p",
        ] {
            let v = json!({"instance-id": "i", "generation": 1, "network": {"version": 2,
                "ethernets": {"lan": {"match": {"macaddress": "00:16:3e:00:00:01"},
                    "set-name": bad, "addresses": ["192.0.2.10/24"],
                    "routes": [{"to": "default", "via": "192.0.2.1"}]}}}});
            let Ok(doc) = ConfigDoc::from_value(v) else {
                continue;
            };
            let n = doc.network.unwrap();
            if let Ok(files) = render(Renderer::Ifupdown, &n, &names(&[("lan", bad)])) {
                let (_, pwned) = run_up_lines(content(&files, ifupdown::FILE), bad);
                assert!(!pwned, "{bad:?} ran a command through ifupdown's shell");
            }
            panic!("{bad:?} was accepted");
        }
    }

    /// Issue 12: the renderers check again what they write, whatever its source (a name can
    /// come from the kernel, not the document), and what they write means only what it says.
    #[test]
    fn renderers_refuse_hostile_names_and_values() {
        let n = net(json!({"version": 2, "ethernets": {
            "lan": {"match": {"macaddress": "00:16:3e:00:00:01"},
                    "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
                    "routes": [{"to": "default", "via": "192.0.2.1", "metric": 5},
                               {"to": "198.51.100.0/24", "via": "192.0.2.254"},
                               {"to": "default", "via": "2001:db8::1"}],
                    "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.org"]}}}}));
        // A live name the guest's kernel reports (dom0 matched the NIC by MAC).
        for bad in [
            "a;reboot",
            "$(reboot)",
            "`reboot`",
            "a|b",
            "a b",
            "a\nauto evil",
        ] {
            let e = render(Renderer::Ifupdown, &n, &names(&[("lan", bad)])).unwrap_err();
            assert!(format!("{e:#}").contains("network.ethernets.lan"), "{e:#}");
        }
        // Names and values that bypassed the document's validation, for every renderer.
        for bad in ["a;reboot", "eth*", "a b", "a\n[Network]"] {
            let mut m = n.clone();
            m.ethernets.get_mut("lan").unwrap().set_name = Some(bad.into());
            for r in [
                Renderer::Networkd,
                Renderer::Ifupdown,
                Renderer::NetworkManager,
            ] {
                assert!(
                    render(r, &m, &names(&[("lan", "eth0")])).is_err(),
                    "{r:?} {bad:?}"
                );
            }
        }
        let mut m = n.clone();
        m.ethernets
            .get_mut("lan")
            .unwrap()
            .nameservers
            .as_mut()
            .unwrap()
            .search = vec!["example.org\nDNS=6.6.6.6".into()];
        for r in [
            Renderer::Networkd,
            Renderer::Ifupdown,
            Renderer::NetworkManager,
        ] {
            assert!(render(r, &m, &names(&[("lan", "eth0")])).is_err(), "{r:?}");
        }
        // resolv.conf and hosts.
        let ip: std::net::IpAddr = "192.0.2.53".parse().unwrap();
        for bad in ["example.org\nnameserver 6.6.6.6", "a b", "#x", "x;y"] {
            assert!(crate::apply::render_resolv_conf(&[ip], &[bad.to_string()]).is_err());
            assert!(crate::apply::render_hosts_line(&[bad.to_string()]).is_err());
        }
        // What the good document renders to, run as ifupdown runs it: exactly these `ip` calls.
        let files = render(Renderer::Ifupdown, &n, &names(&[("lan", "eth0")])).unwrap();
        let (calls, pwned) = run_up_lines(content(&files, ifupdown::FILE), "eth0");
        assert!(!pwned);
        let want: Vec<Vec<String>> = [
            "route replace default via 192.0.2.1 metric 5 dev eth0",
            "route del default via 192.0.2.1 metric 5 dev eth0",
            "route replace 198.51.100.0/24 via 192.0.2.254 dev eth0",
            "route del 198.51.100.0/24 via 192.0.2.254 dev eth0",
            "-6 route replace default via 2001:db8::1 dev eth0",
            "-6 route del default via 2001:db8::1 dev eth0",
        ]
        .iter()
        .map(|c| c.split(' ').map(str::to_string).collect())
        .collect();
        assert_eq!(calls, want, "{}", content(&files, ifupdown::FILE));
        // Every networkd and NetworkManager line is a section, a comment or Key=Value with a
        // value no parser reads further.
        for r in [Renderer::Networkd, Renderer::NetworkManager] {
            for f in render(r, &n, &names(&[("lan", "eth0")])).unwrap() {
                for line in f.content.lines() {
                    assert!(
                        line.is_empty()
                            || line.starts_with('#')
                            || (line.starts_with('[') && line.ends_with(']'))
                            || line.split_once('=').is_some_and(|(k, v)| {
                                k.chars()
                                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                                    && !v.contains(['*', '?', '[', '"', '\'', '\\', '%', '$'])
                            }),
                        "{line:?} in {}:\n{}",
                        f.path,
                        f.content
                    );
                }
            }
        }
    }

    #[test]
    fn physical_nic_for_every_renderer() {
        let n = net(json!({"version": 2, "ethernets": {
            "lan": {"match": {"macaddress": "00:16:3e:00:00:01"}, "set-name": "eth0",
                    "addresses": ["192.0.2.10/24", "2001:db8::10/64"], "mtu": 1400,
                    "routes": [{"to": "default", "via": "192.0.2.1", "metric": 100}],
                    "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.org"]}},
            "eth1": {"dhcp4": true, "dhcp4-overrides": {"route-metric": 200}}}}));
        let nm = names(&[("lan", "eth0"), ("eth1", "eth1")]);
        let f = render(Renderer::Networkd, &n, &nm).unwrap();
        let lan = content(&f, "/etc/systemd/network/10-xenplug-lan.network");
        assert!(
            lan.contains("[Match]\nMACAddress=00:16:3e:00:00:01\nName=eth0\n"),
            "{lan}"
        );
        assert!(lan.contains("[Link]\nMTUBytes=1400\n"), "{lan}");
        assert!(lan.contains("DHCP=no\nIPv6AcceptRA=no\nAddress=192.0.2.10/24\nAddress=2001:db8::10/64\nDNS=192.0.2.53\nDomains=example.org\n"), "{lan}");
        assert!(
            lan.contains("[Route]\nGateway=192.0.2.1\nMetric=100\n"),
            "{lan}"
        );
        assert_eq!(
            content(&f, "/etc/systemd/network/10-xenplug-lan.link"),
            "# Written by xenplug-agent.\n[Match]\nMACAddress=00:16:3e:00:00:01\n\n[Link]\nName=eth0\n"
        );
        assert!(content(&f, "/etc/systemd/network/10-xenplug-eth1.network").contains("DHCP=ipv4\n"));
        assert!(content(&f, "/etc/systemd/network/10-xenplug-eth1.network")
            .contains("[DHCPv4]\nRouteMetric=200\n"));
        let f = render(Renderer::Ifupdown, &n, &nm).unwrap();
        let ifu = content(&f, ifupdown::FILE);
        assert!(ifu.contains("auto eth0\niface eth0 inet static\n    address 192.0.2.10/24\n    mtu 1400\n    dns-nameservers 192.0.2.53\n    dns-search example.org\n    up ip route replace default via 192.0.2.1 metric 100 dev \"$IFACE\"\n"), "{ifu}");
        assert!(
            ifu.contains("iface eth0 inet6 static\n    address 2001:db8::10/64"),
            "{ifu}"
        );
        assert!(
            ifu.contains("auto eth1\niface eth1 inet dhcp\n    metric 200\n"),
            "{ifu}"
        );
        let f = render(Renderer::NetworkManager, &n, &nm).unwrap();
        let c = content(
            &f,
            "/etc/NetworkManager/system-connections/xenplug-lan.nmconnection",
        );
        assert!(c.contains("type=ethernet\ninterface-name=eth0\n"), "{c}");
        assert!(
            c.contains("[ethernet]\nmac-address=00:16:3E:00:00:01\nmtu=1400\n"),
            "{c}"
        );
        assert!(c.contains("[ipv4]\nmethod=manual\naddress1=192.0.2.10/24\ngateway=192.0.2.1\nroute-metric=100\ndns=192.0.2.53;\ndns-search=example.org;\n"), "{c}");
        assert!(
            c.contains("[ipv6]\nmethod=manual\naddress1=2001:db8::10/64\n"),
            "{c}"
        );
        assert_eq!(
            f.iter()
                .find(|x| x.path.ends_with("xenplug-lan.nmconnection"))
                .unwrap()
                .mode,
            0o600
        );
    }

    /// Golden files (issue 20): every renderer's output for two documents — a physical NIC
    /// with static IPv4/IPv6, a route, DNS and a DHCP NIC; bonds, a bridge and a VLAN — so a
    /// change of what lands in a guest shows as a diff (`XENPLUG_BLESS=1` rewrites them).
    #[test]
    fn golden_rendered_files() {
        let docs = [
            (
                "physical NICs",
                json!({"version": 2, "ethernets": {
                    "lan": {"match": {"macaddress": "00:16:3e:00:00:01"}, "set-name": "eth0",
                            "addresses": ["192.0.2.10/24", "2001:db8::10/64"], "mtu": 1400,
                            "routes": [{"to": "default", "via": "192.0.2.1", "metric": 100},
                                       {"to": "198.51.100.0/24", "via": "192.0.2.254"}],
                            "nameservers": {"addresses": ["192.0.2.53"],
                                            "search": ["example.org"]}},
                    "eth1": {"dhcp4": true, "dhcp6": true,
                             "dhcp4-overrides": {"route-metric": 200}}}}),
                names(&[("lan", "eth0"), ("eth1", "eth1")]),
            ),
            (
                "bond, bridge, VLAN",
                json!({"version": 2,
                    "ethernets": {
                        "a": {"match": {"macaddress": "00:16:3e:00:00:0a"}, "set-name": "ens3"},
                        "b": {"match": {"macaddress": "00:16:3e:00:00:0b"}, "set-name": "ens4"},
                        "c": {"match": {"macaddress": "00:16:3e:00:00:0c"}}},
                    "bonds": {"bond0": {"interfaces": ["a", "b"], "parameters": {
                        "mode": "802.3ad", "mii-monitor-interval": 100, "lacp-rate": "fast",
                        "primary": "a"}, "addresses": ["10.0.0.2/24"]}},
                    "bridges": {"br0": {"interfaces": ["c"], "parameters": {"stp": false,
                        "forward-delay": 4, "path-cost": {"c": 50}}, "dhcp4": true}},
                    "vlans": {"bond0.7": {"id": 7, "link": "bond0",
                        "addresses": ["10.7.0.2/24"]}},
                    "nameservers": {"addresses": ["10.0.0.53"], "search": ["corp.example"]}}),
                names(&[("a", "ens3"), ("b", "ens4"), ("c", "ens5")]),
            ),
        ];
        for renderer in [
            Renderer::Networkd,
            Renderer::Ifupdown,
            Renderer::NetworkManager,
        ] {
            let mut text = String::new();
            for (title, doc, nm) in &docs {
                text += &format!("#### {title}\n");
                let mut files = render(renderer, &net(doc.clone()), nm).unwrap();
                files.sort_by(|a, b| a.path.cmp(&b.path));
                for f in files {
                    text += &format!("== {} ({:o})\n{}", f.path, f.mode, f.content);
                    if !f.content.ends_with('\n') {
                        text += "\n(no newline at end)\n";
                    }
                }
                text += "\n";
            }
            xenplug_testkit::golden::check(
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/render-").to_string()
                    + renderer.name()
                    + ".txt",
                &text,
            );
        }
    }

    #[test]
    fn bonds_bridges_vlans_for_every_renderer() {
        let n = net(json!({"version": 2,
            "ethernets": {"a": {"match": {"macaddress": "00:16:3e:00:00:0a"}, "set-name": "ens3"},
                          "b": {"match": {"macaddress": "00:16:3e:00:00:0b"}, "set-name": "ens4"},
                          "c": {"match": {"macaddress": "00:16:3e:00:00:0c"}}},
            "bonds": {"bond0": {"interfaces": ["a", "b"], "parameters": {"mode": "802.3ad",
                        "mii-monitor-interval": 100, "lacp-rate": "fast", "primary": "a"},
                        "addresses": ["10.0.0.2/24"]}},
            "bridges": {"br0": {"interfaces": ["c"], "parameters": {"stp": false,
                        "forward-delay": 4, "path-cost": {"c": 50}}, "dhcp4": true}},
            "vlans": {"bond0.7": {"id": 7, "link": "bond0", "addresses": ["10.7.0.2/24"]}},
            "nameservers": {"addresses": ["10.0.0.53"], "search": ["corp.example"]}}));
        let nm = names(&[("a", "ens3"), ("b", "ens4"), ("c", "ens5")]);
        let f = render(Renderer::Networkd, &n, &nm).unwrap();
        let d = content(&f, "/etc/systemd/network/10-xenplug-bond0.netdev");
        assert!(d.contains("[NetDev]\nName=bond0\nKind=bond\n"), "{d}");
        assert!(
            d.contains("[Bond]\nMode=802.3ad\nMIIMonitorSec=100ms\nLACPTransmitRate=fast\n"),
            "{d}"
        );
        let a = content(&f, "/etc/systemd/network/10-xenplug-a.network");
        assert!(a.contains("Bond=bond0\nPrimarySlave=yes\n"), "{a}");
        assert!(!a.contains("\nAddress="), "{a}");
        assert!(content(&f, "/etc/systemd/network/10-xenplug-bond0.network")
            .contains("Address=10.0.0.2/24\nVLAN=bond0.7\n"));
        assert!(content(&f, "/etc/systemd/network/10-xenplug-c.network").contains("Bridge=br0\n"));
        assert!(content(&f, "/etc/systemd/network/10-xenplug-c.network")
            .contains("[Bridge]\nCost=50\n"));
        assert!(content(&f, "/etc/systemd/network/10-xenplug-br0.netdev")
            .contains("[Bridge]\nSTP=no\nForwardDelaySec=4s\n"));
        assert!(
            content(&f, "/etc/systemd/network/10-xenplug-bond0.7.netdev")
                .contains("[VLAN]\nId=7\n")
        );
        assert!(
            content(&f, "/etc/systemd/resolved.conf.d/xenplug-agent.conf")
                .contains("[Resolve]\nDNS=10.0.0.53\nDomains=corp.example\n")
        );
        let f = render(Renderer::Ifupdown, &n, &nm).unwrap();
        let i = content(&f, ifupdown::FILE);
        assert!(
            i.contains("auto ens3\niface ens3 inet manual\n    bond-master bond0\n"),
            "{i}"
        );
        assert!(i.contains("auto bond0\niface bond0 inet static\n    address 10.0.0.2/24\n    bond-slaves ens3 ens4\n    bond-mode 802.3ad\n    bond-miimon 100\n    bond-lacp-rate fast\n    bond-primary ens3\n"), "{i}");
        assert!(i.contains("iface br0 inet dhcp\n    bridge_ports ens5\n    bridge_stp off\n    bridge_fd 4\n    bridge_pathcost ens5 50\n"), "{i}");
        assert!(i.contains("iface bond0.7 inet static\n    address 10.7.0.2/24\n    vlan-raw-device bond0\n    vlan_id 7\n"), "{i}");
        let f = render(Renderer::NetworkManager, &n, &nm).unwrap();
        let a = content(
            &f,
            "/etc/NetworkManager/system-connections/xenplug-a.nmconnection",
        );
        assert!(
            a.contains(&format!("master={}\nslave-type=bond\n", nm::uuid("bond0"))),
            "{a}"
        );
        assert!(!a.contains("[ipv4]"), "{a}");
        let b = content(
            &f,
            "/etc/NetworkManager/system-connections/xenplug-bond0.nmconnection",
        );
        assert!(b.contains("type=bond\ninterface-name=bond0\n"), "{b}");
        assert!(
            b.contains("[bond]\nmode=802.3ad\nmiimon=100\nlacp_rate=fast\n"),
            "{b}"
        );
        let v = content(
            &f,
            "/etc/NetworkManager/system-connections/xenplug-bond0.7.nmconnection",
        );
        assert!(
            v.contains(&format!("[vlan]\nid=7\nparent={}\n", nm::uuid("bond0"))),
            "{v}"
        );
        let c = content(
            &f,
            "/etc/NetworkManager/system-connections/xenplug-c.nmconnection",
        );
        assert!(
            c.contains("slave-type=bridge\n") && c.contains("[bridge-port]\npath-cost=50\n"),
            "{c}"
        );
        assert!(
            content(&f, "/etc/NetworkManager/conf.d/90-xenplug-agent-dns.conf")
                .contains("servers=10.0.0.53")
        );
        // The UUIDs are stable and well formed.
        assert_eq!(nm::uuid("bond0"), nm::uuid("bond0"));
        assert_ne!(nm::uuid("bond0"), nm::uuid("bond1"));
        let u = nm::uuid("x");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn detection_follows_what_the_guest_runs() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let touch = |p: &str| {
            let p = r.join(p.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "").unwrap();
        };
        let link = |unit: &str| {
            let p = r
                .join("etc/systemd/system/multi-user.target.wants")
                .join(unit);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink("/lib/systemd/system/x", p).unwrap();
        };
        assert_eq!(detect(r), None);
        touch("/lib/systemd/systemd-networkd");
        assert_eq!(detect(r), Some(Renderer::Networkd));
        touch("/etc/network/interfaces");
        touch("/sbin/ifup");
        assert_eq!(detect(r), Some(Renderer::Ifupdown));
        link("systemd-networkd.service");
        assert_eq!(detect(r), Some(Renderer::Networkd));
        touch("/usr/sbin/NetworkManager");
        assert_eq!(detect(r), Some(Renderer::Networkd));
        link("NetworkManager.service");
        assert_eq!(detect(r), Some(Renderer::NetworkManager));
        assert!(is_owned("/etc/systemd/network/10-xenplug-a.netdev"));
        assert!(!is_owned("/etc/systemd/network/10-other.network"));
        assert!(is_owned(
            "/etc/NetworkManager/system-connections/xenplug-a.nmconnection"
        ));
    }
}
