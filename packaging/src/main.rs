//! `xenplug-docgen OUT`: the man pages and bash completions of every xenplug program, written into
//! `OUT/<package>/` for `tools/build-deb.sh`:
//!
//! ```text
//! OUT/xenplug/man/man8/xenplug.8, xenplug-<command>.8, xenplug-peer.8, xenplug-peer-<command>.8,
//!                      xenplug-scripts.8 and one `.so` page per script name (block.8, vif-bridge.8, …)
//! OUT/xenplug/man/man5/xenplug.toml.5
//! OUT/xenplug/bash-completion/xenplug, xenplug-peer
//! OUT/xenplug-agent/man/man8/xenplug-agent.8, xen-channel-setup.8
//! OUT/xenplug-agent/bash-completion/xenplug-agent
//! ```
//!
//! NAME, SYNOPSIS, DESCRIPTION, OPTIONS and the command lists come from the programs' clap
//! definitions (`clap_mangen`), so they cannot drift from the programs; what users need beyond
//! that (xenstore keys, files, exit status, the service, …) is hand-written in
//! `packaging/man/*.md` (see [`roff`]). xenplug.toml(5)'s keys and environment variables are
//! rendered from the tables of `hotplug/CONFIG.md`, the runtime's own reference. The footer date
//! is `SOURCE_DATE_EPOCH`'s (reproducible builds; `tools/build-deb.sh` sets it from
//! `debian/changelog`), else empty.
//!
//! Exit status: 0, or 1 with a message when a file cannot be written.

mod roff;

#[cfg(test)]
mod conffiles_tests;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Command, CommandFactory};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const CONFIG_MD: &str = include_str!("../../hotplug/CONFIG.md");

/// Hand-written parts, by page name.
const EXTRA: &[(&str, &str)] = &[
    ("xenplug", include_str!("../man/xenplug.8.md")),
    ("xenplug-doctor", include_str!("../man/xenplug-doctor.8.md")),
    (
        "xenplug-install",
        include_str!("../man/xenplug-install.8.md"),
    ),
    ("xenplug-peer", include_str!("../man/xenplug-peer.8.md")),
    ("xenplug-agent", include_str!("../man/xenplug-agent.8.md")),
    (
        "xen-channel-setup",
        include_str!("../man/xen-channel-setup.8.md"),
    ),
];
const SCRIPTS_PAGE: &str = include_str!("../man/xenplug-scripts.8.md");
const TOML_PAGE: &str = include_str!("../man/xenplug.toml.5.md");

struct Out {
    dir: PathBuf,
    date: String,
}

impl Out {
    fn write(&self, package: &str, rel: &str, text: &str) -> Result<()> {
        let p = self.dir.join(package).join(rel);
        fs::create_dir_all(p.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("create {}", p.display()))?;
        fs::write(&p, text).with_context(|| format!("write {}", p.display()))
    }

    fn th(&self, name: &str, section: &str) -> String {
        format!(
            ".TH {} {section} \"{}\" \"xenplug {VERSION}\" \"System Administration\"\n",
            name.to_uppercase(),
            self.date
        )
    }
}

/// `SOURCE_DATE_EPOCH` as `YYYY-MM-DD` (UTC).
fn date_from_epoch(secs: i64) -> String {
    // Howard Hinnant's days-to-civil.
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One page from a clap command plus its hand-written part.
fn clap_page(out: &Out, package: &str, cmd: &Command) -> Result<()> {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let man = clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("8")
        .date(out.date.clone())
        .source(format!("xenplug {VERSION}"))
        .manual("System Administration");
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut buf)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut buf)?;
    }
    let mut text = String::from_utf8(buf)?;
    if let Some((_, md)) = EXTRA.iter().find(|(n, _)| *n == name) {
        text.push_str(&roff::markdown(md));
    }
    out.write(package, &format!("man/man8/{name}.8"), &text)
}

/// A program's page, one page per (visible) subcommand, and its bash completion.
fn program(out: &Out, package: &str, cmd: Command, completion: bool) -> Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    clap_page(out, package, &cmd)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        clap_page(out, package, sub)?;
    }
    if completion {
        let name = cmd.get_name().to_string();
        let mut buf = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, &name, &mut buf);
        out.write(
            package,
            &format!("bash-completion/{name}"),
            &String::from_utf8(buf)?,
        )?;
    }
    Ok(())
}

/// The rows of the first Markdown table after `heading` in `md`, cells trimmed.
pub fn md_table(md: &str, heading: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut seen = false;
    let mut in_table = false;
    for l in md.lines() {
        if l.trim() == heading {
            seen = true;
            continue;
        }
        if !seen {
            continue;
        }
        let t = l.trim();
        if t.starts_with('|') {
            in_table = true;
            let cells: Vec<String> = t
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                continue;
            }
            rows.push(cells);
        } else if in_table {
            break;
        }
    }
    // The header row.
    if !rows.is_empty() {
        rows.remove(0);
    }
    rows
}

/// xenplug.toml(5): the hand-written page with `{{KEYS}}` and `{{ENV}}` rendered from
/// CONFIG.md's tables.
fn toml_page(out: &Out) -> Result<()> {
    let keys: String = md_table(CONFIG_MD, "## Keys")
        .iter()
        .map(|r| {
            format!(
                ".TP\n{} ({}; default: {})\n{}\n",
                roff::inline(&r[0]),
                roff::inline(&r[1]),
                roff::inline(&r[2]),
                roff::line(&roff::inline(&r[3]))
            )
        })
        .collect();
    let env: String = md_table(CONFIG_MD, "## Environment overrides")
        .iter()
        .map(|r| {
            format!(
                ".TP\n{}\n{}\n",
                roff::inline(&r[0]),
                roff::line(&roff::inline(&r[1]))
            )
        })
        .collect();
    anyhow::ensure!(
        !keys.is_empty() && !env.is_empty(),
        "CONFIG.md has no tables"
    );
    let body = roff::markdown(TOML_PAGE)
        .replace("{{KEYS}}\n", &keys)
        .replace("{{ENV}}\n", &env);
    out.write(
        "xenplug",
        "man/man5/xenplug.toml.5",
        &format!("{}{body}", out.th("xenplug.toml", "5")),
    )
}

/// xenplug-scripts(8) and a `.so` page for every script name.
fn scripts_page(out: &Out) -> Result<()> {
    out.write(
        "xenplug",
        "man/man8/xenplug-scripts.8",
        &format!(
            "{}{}",
            out.th("xenplug-scripts", "8"),
            roff::markdown(SCRIPTS_PAGE)
        ),
    )?;
    for n in xenplug::scripts::names() {
        out.write(
            "xenplug",
            &format!("man/man8/{n}.8"),
            ".so man8/xenplug-scripts.8\n",
        )?;
    }
    Ok(())
}

fn run(dir: &Path) -> Result<()> {
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => date_from_epoch(
            s.trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={s}"))?,
        ),
        Err(_) => String::new(),
    };
    let out = Out {
        dir: dir.to_path_buf(),
        date,
    };
    program(&out, "xenplug", xenplug::cli::command(), true)?;
    program(&out, "xenplug", xenplug_peer::cli::Cli::command(), true)?;
    scripts_page(&out)?;
    toml_page(&out)?;
    program(
        &out,
        "xenplug-agent",
        xenplug_guest_agent::cli::AgentArgs::command(),
        true,
    )?;
    program(
        &out,
        "xenplug-agent",
        xenplug_guest_agent::cli::ChannelSetupArgs::command(),
        false,
    )?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: xenplug-docgen OUT");
        return std::process::ExitCode::from(2);
    };
    match run(Path::new(&dir)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenplug-docgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date_from_epoch(0), "1970-01-01");
        assert_eq!(date_from_epoch(951_782_400), "2000-02-29");
        assert_eq!(date_from_epoch(1_767_225_599), "2025-12-31");
    }

    #[test]
    fn config_md_tables() {
        let keys = md_table(CONFIG_MD, "## Keys");
        assert!(keys.iter().any(|r| r[0] == "`lock_dir`"), "{keys:?}");
        assert!(keys.iter().all(|r| r.len() == 4), "{keys:?}");
        let env = md_table(CONFIG_MD, "## Environment overrides");
        assert!(env.iter().any(|r| r[0] == "`XENPLUG_CONFIG`"), "{env:?}");
    }
}
