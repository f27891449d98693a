//! `bootcmd` and `runcmd`, once per instance, as cloud-init runs them: the items make one
//! `/bin/sh` script (a string item is a shell line as written, a list item one command with
//! each element quoted), `INSTANCE_ID` is exported for `bootcmd` (as cloud-init's `cc_bootcmd`
//! does; `runcmd` runs without it, as cloud-init's scripts-user), and the output goes to
//! `/var/log/xenplug-agent-commands.log` (cloud-init's `cloud-init-output.log`) and the agent's
//! log. They only run when the agent's configuration says `run-commands = true`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use xenplug_channel::config::Cmd;

use crate::apply::log_event;
use crate::fsutil::under;
use crate::tools::{self, Tools};

/// Where the commands' output is appended.
pub const LOG_FILE: &str = "/var/log/xenplug-agent-commands.log";

/// `s` in single quotes for the shell (`'` as `'\''`), as cloud-init's `shellify`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The script for `cmds` (cloud-init's `shellify`), with `INSTANCE_ID` exported when given.
pub fn script(cmds: &[Cmd], instance_id: Option<&str>) -> String {
    let mut s = String::from("#!/bin/sh\n");
    if let Some(i) = instance_id {
        let _ = writeln!(s, "export INSTANCE_ID={}", quote(i));
    }
    for c in cmds {
        match c {
            Cmd::Shell(line) => {
                let _ = writeln!(s, "{line}");
            }
            Cmd::Argv(a) => {
                let q: Vec<String> = a.iter().map(|x| quote(x)).collect();
                let _ = writeln!(s, "{}", q.join(" "));
            }
        }
    }
    s
}

/// Run the `which` commands (`bootcmd`/`runcmd`); the exit status, output logged.
pub fn run(
    tools: &mut dyn Tools,
    root: &Path,
    which: &str,
    cmds: &[Cmd],
    instance_id: &str,
) -> Result<std::process::ExitStatus> {
    let text = script(cmds, (which == "bootcmd").then_some(instance_id));
    let out = tools::in_guest(tools, root, "sh", &["-s".into()], Some(text.as_bytes()))
        .with_context(|| format!("run {which}"))?;
    let log = under(root, LOG_FILE);
    if let Some(d) = log.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let entry = format!(
        "xenplug-agent: {which} of instance {instance_id}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(entry.as_bytes()))
        .with_context(|| format!("append to {}", log.display()))?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .take(200)
    {
        eprintln!("xenplug-agent: {which}: {line}");
    }
    log_event(
        "commands",
        &[
            ("which", which),
            ("instance-id", instance_id),
            ("status", &out.status.to_string()),
        ],
    );
    Ok(out.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quotes_lists_and_keeps_lines() {
        let s = script(
            &[
                Cmd::Shell("echo $HOME; ls | wc -l".into()),
                Cmd::Argv(vec!["printf".into(), "%s\\n".into(), "it's $HOME".into()]),
            ],
            Some("iid-'x"),
        );
        assert_eq!(
            s,
            "#!/bin/sh\nexport INSTANCE_ID='iid-'\\''x'\necho $HOME; ls | wc -l\n'printf' '%s\\n' 'it'\\''s $HOME'\n"
        );
        // And the shell agrees: the list item is one command with exactly these arguments.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "{}\necho \"$INSTANCE_ID\"",
                s.lines()
                    .skip(1)
                    .filter(|l| !l.starts_with("echo $HOME"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME\niid-'x\n");
    }
}
