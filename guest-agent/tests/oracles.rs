//! Outside oracles: cloud-init's own tools accept what we accept and what we generate
//! (`cloud-init schema`, `cloud-init devel net-convert`, Debian's cloud-init 22.4.2 unpacked),
//! and systemd ≥ 254's `udevadm verify` (bookworm-backports, unpacked) accepts the rules file.
//! See tools/channel-deps.sh for how the tools are fetched.

mod common;

use std::path::Path;
use std::process::Command;

use common::require_dep;
use xenplug_channel::{ConfigDoc, NoCloudSeed};

fn key() -> String {
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKdh7c6XyRUHvJFOz6oUvnG9NDFjeQh79Yr0YH7oWo6q admin@example"
        .into()
}

fn seed() -> NoCloudSeed {
    NoCloudSeed {
        meta_data: "instance-id: iid-oracle\nlocal-hostname: seedhost\n".into(),
        user_data: Some(format!(
            "#cloud-config\nhostname: web3\nfqdn: web3.example.org\nmanage_etc_hosts: true\nusers:\n  - default\n  - name: admin\n    lock_passwd: false\n    hashed_passwd: $6$saltsalt$Hk7mF4.x1y2z3\n    ssh_authorized_keys:\n      - {}\nchpasswd:\n  expire: false\n",
            key()
        )),
        network_config: Some(
            "network:\n  version: 2\n  ethernets:\n    id0:\n      match:\n        macaddress: '00:16:3e:00:00:01'\n      set-name: eth0\n      mtu: 1400\n      addresses: [192.0.2.5/24, '2001:db8::5/64']\n      gateway4: 192.0.2.1\n      routes:\n        - to: 198.51.100.0/24\n          via: 192.0.2.254\n          metric: 50\n      nameservers:\n        addresses: [192.0.2.53]\n        search: [example.org]\n    eth1:\n      dhcp4: true\n      dhcp6: true\n".into(),
        ),
        generation: Some(1),
    }
}

fn cloud_init(ci: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(ci).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn check_with_cloud_init(ci: &Path, s: &NoCloudSeed, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ud = dir.join("user-data");
    std::fs::write(&ud, s.user_data.as_deref().unwrap()).unwrap();
    let (ok, text) = cloud_init(ci, &["schema", "--config-file", ud.to_str().unwrap()]);
    assert!(
        ok && text.contains("Valid cloud-config"),
        "cloud-init schema: {text}"
    );
    let nc = dir.join("network-config");
    std::fs::write(&nc, s.network_config.as_deref().unwrap()).unwrap();
    for (renderer, file) in [
        ("networkd", "etc/systemd/network/10-cloud-init-eth0.network"),
        ("eni", "etc/network/interfaces.d/50-cloud-init"),
    ] {
        let out = dir.join(format!("out-{renderer}"));
        let (ok, text) = cloud_init(
            ci,
            &[
                "devel",
                "net-convert",
                "-p",
                nc.to_str().unwrap(),
                "-k",
                "yaml",
                "-D",
                "debian",
                "-O",
                renderer,
                "-d",
                out.to_str().unwrap(),
            ],
        );
        assert!(ok, "net-convert -O {renderer}: {text}");
        let rendered = std::fs::read_to_string(out.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}: {text}"));
        assert!(rendered.contains("192.0.2.5"), "{renderer}: {rendered}");
    }
}

#[test]
fn cloud_init_accepts_what_we_accept_and_refuses_what_we_refuse() {
    let Some(ci) = require_dep("cloud-init") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // An existing NoCloud seed: we accept it, and so does cloud-init.
    let s = seed();
    ConfigDoc::from_nocloud(&s).expect("we accept the seed");
    check_with_cloud_init(&ci, &s, &tmp.path().join("accepted"));
    // And what cloud-init rejects, we reject.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let bad_ud = "#cloud-config\nhostname: 42\n";
    std::fs::write(bad.join("user-data"), bad_ud).unwrap();
    let (ok, text) = cloud_init(
        &ci,
        &[
            "schema",
            "--config-file",
            bad.join("user-data").to_str().unwrap(),
        ],
    );
    assert!(!ok, "{text}");
    let e = ConfigDoc::from_nocloud(&NoCloudSeed {
        user_data: Some(bad_ud.into()),
        ..s.clone()
    })
    .unwrap_err();
    assert_eq!(e.path, "user-data.hostname");
    let bad_nc =
        "network:\n  version: 2\n  ethernets:\n    eth0:\n      addresses: [192.0.2.300/24]\n";
    std::fs::write(bad.join("network-config"), bad_nc).unwrap();
    let (ok, text) = cloud_init(
        &ci,
        &[
            "devel",
            "net-convert",
            "-p",
            bad.join("network-config").to_str().unwrap(),
            "-k",
            "yaml",
            "-D",
            "debian",
            "-O",
            "networkd",
            "-d",
            bad.join("out").to_str().unwrap(),
        ],
    );
    assert!(!ok, "cloud-init accepted a bad address: {text}");
    let e = ConfigDoc::from_nocloud(&NoCloudSeed {
        network_config: Some(bad_nc.into()),
        ..s
    })
    .unwrap_err();
    assert_eq!(e.path, "network-config.network.ethernets.eth0.addresses[0]");
}

#[test]
fn udevadm_verify_accepts_the_rules_file() {
    let Some(verify) = require_dep("udevadm-verify") else {
        return;
    };
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../udev-rules/90-xen-channel.rules");
    let out = Command::new(&verify).arg(&rules).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("Success: 1"),
        "{text}"
    );
    // The oracle does reject a broken rule (so the pass above means something).
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("99-bad.rules");
    std::fs::write(&bad, "SUBSYSTEM=\"xen\", RUN+=\"/bin/true\"\n").unwrap();
    let out = Command::new(&verify).arg(&bad).output().unwrap();
    assert!(!out.status.success());
}

/// `cloud-init schema` accepts every user-data seed of the corpus, and xenplug accepts them too.
#[test]
fn cloud_init_schema_accepts_every_seed_of_the_corpus() {
    let Some(ci) = require_dep("cloud-init") else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../channel-proto/tests/corpus/seeds");
    let mut n = 0;
    for seed in std::fs::read_dir(&dir).unwrap() {
        let seed = seed.unwrap().path();
        let ud = seed.join("user-data");
        let (ok, text) = cloud_init(&ci, &["schema", "--config-file", ud.to_str().unwrap()]);
        assert!(
            ok && text.contains("Valid cloud-config"),
            "{}: {text}",
            seed.display()
        );
        ConfigDoc::from_nocloud(&NoCloudSeed {
            meta_data: std::fs::read_to_string(seed.join("meta-data")).unwrap(),
            user_data: Some(std::fs::read_to_string(&ud).unwrap()),
            network_config: None,
            generation: None,
        })
        .unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        n += 1;
    }
    assert!(n >= 4);
}

/// The cloud-config examples Debian's cloud-init package ships
/// (/usr/share/doc/cloud-init/examples): each is either accepted by xenplug, or refused with the
/// path of a key and the reason; what xenplug accepts, `cloud-init schema` accepts too.
#[test]
fn cloud_init_documentation_examples_are_accepted_or_refused_with_their_path() {
    let Some(ci) = require_dep("cloud-init") else {
        return;
    };
    let deps = ci.parent().unwrap().parent().unwrap();
    let dir = deps.join("cloud-init/root/usr/share/doc/cloud-init/examples");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("cloud-config") && (n.ends_with(".txt") || n.ends_with(".txt.gz"))
        })
        .collect();
    names.sort();
    let tmp = tempfile::tempdir().unwrap();
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for p in &names {
        let raw = std::fs::read(p).unwrap();
        let text = if p.extension().is_some_and(|x| x == "gz") {
            let out = Command::new("gzip").arg("-dc").arg(p).output().unwrap();
            String::from_utf8(out.stdout).unwrap()
        } else {
            String::from_utf8(raw).unwrap()
        };
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let r = ConfigDoc::from_nocloud(&NoCloudSeed {
            meta_data: "instance-id: iid-doc\n".into(),
            user_data: Some(text.clone()),
            network_config: None,
            generation: None,
        });
        match r {
            Ok(_) => {
                let f = tmp.path().join(&name);
                std::fs::write(&f, &text).unwrap();
                let (ok, out) = cloud_init(&ci, &["schema", "--config-file", f.to_str().unwrap()]);
                assert!(
                    ok,
                    "{name}: accepted by xenplug, refused by cloud-init: {out}"
                );
                accepted.push(name);
            }
            Err(e) => {
                assert!(
                    e.path.starts_with("user-data") || !e.path.is_empty(),
                    "{name}: a refusal without a path: {e}"
                );
                refused.push(format!("{name}: {e}"));
            }
        }
    }
    eprintln!("accepted: {accepted:?}");
    for r in &refused {
        eprintln!("refused: {r}");
    }
    assert!(names.len() > 20, "only {} examples", names.len());
    // The examples of what xenplug implements are accepted.
    for want in [
        "cloud-config-boot-cmds.txt",
        "cloud-config-run-cmds.txt",
        "cloud-config-ntp.txt",
    ] {
        assert!(
            accepted.iter().any(|a| a == want),
            "{want} refused: {refused:?}"
        );
    }
    // The examples of what it does not are refused, naming the key.
    // Examples whose data is a placeholder are refused with the reason.
    for (file, why) in [
        (
            "cloud-config-ca-certs.txt",
            "user-data.ca_certs.trusted[0]: certificate body is not base64",
        ),
        (
            "cloud-config-write-files.txt",
            "user-data.write_files[0].content: is not base64",
        ),
    ] {
        let r = refused
            .iter()
            .find(|r| r.starts_with(file))
            .unwrap_or_else(|| panic!("{file} accepted"));
        assert!(r.contains(why), "{r}");
    }
    for (file, path) in [
        ("cloud-config-install-packages.txt", "user-data.packages"),
        ("cloud-config-lxd.txt", "user-data.lxd"),
        ("cloud-config-mount-points.txt", "user-data.mounts"),
        (
            "cloud-config-user-groups.txt.gz",
            "user-data.users[1].selinux_user",
        ),
    ] {
        let r = refused
            .iter()
            .find(|r| r.starts_with(file))
            .unwrap_or_else(|| panic!("{file} accepted"));
        assert!(
            r.contains(&format!("{path}: not supported by xenplug-agent")),
            "{r}"
        );
    }
}
