//! Every crate in the dependency tree has a licence compatible with GPL-3.0-only (the allowlist
//! in deny.toml), and every xenplug crate is GPL-3.0-only.

use std::process::Command;

fn allowlist() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deny.toml"))
        .expect("deny.toml");
    let start = text.find("allow = [").expect("allow list") + "allow = [".len();
    let end = start + text[start..].find(']').unwrap();
    text[start..end]
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_end_matches(',');
            l.strip_prefix('"')?.strip_suffix('"').map(str::to_string)
        })
        .collect()
}

/// An SPDX expression is acceptable when one of its `OR` alternatives is (each `AND` part
/// allowed).
fn acceptable(expr: &str, allow: &[String]) -> bool {
    let expr = expr.replace(['(', ')'], "").replace('/', " OR ");
    expr.split(" OR ").any(|alt| {
        alt.split(" AND ")
            .all(|part| allow.iter().any(|a| a == part.trim()))
    })
}

#[test]
fn dependency_licences_are_gpl3_compatible() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
        ])
        .arg(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let allow = allowlist();
    let mut bad = Vec::new();
    let mut checked = 0;
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let license = p["license"].as_str().unwrap_or("");
        checked += 1;
        if name.starts_with("xenplug") {
            assert_eq!(license, "GPL-3.0-only", "{name}");
        } else if !acceptable(license, &allow) {
            bad.push(format!("{name}: {license:?}"));
        }
    }
    assert!(checked > 20, "only {checked} packages in the metadata");
    assert!(
        bad.is_empty(),
        "licences not in deny.toml's allowlist:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_checker_rejects_what_it_should() {
    let allow = vec!["MIT".to_string(), "Apache-2.0".to_string()];
    assert!(acceptable("MIT OR Apache-2.0", &allow));
    assert!(acceptable("MIT/Apache-2.0", &allow));
    assert!(acceptable("(MIT OR Apache-2.0) AND MIT", &allow));
    assert!(!acceptable("GPL-2.0-only", &allow));
    assert!(!acceptable("MIT AND GPL-2.0-only", &allow));
    assert!(!acceptable("", &allow));
}
