//! The guest's own programs the agent runs where the guest has a tool that does the job the
//! way everything else on it expects: shadow-utils (`useradd`, `groupadd`, `usermod`,
//! `userdel`, `groupdel`, `gpasswd`), `visudo`, `update-ca-certificates`, `systemctl`, and the
//! shell for `bootcmd`/`runcmd`. Behind a trait so tests record what would run, or run the
//! real programs against a throwaway root.
//!
//! Programs are looked up in the guest's tree (`/usr/sbin`, `/sbin`, `/usr/bin`, `/bin` under
//! the root) and never through `PATH`. With a root other than `/` (tests, image preparation)
//! shadow-utils get `--root DIR` (they chroot themselves), and other programs are run by
//! `chroot DIR`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

use crate::fsutil::under;

/// Runs programs.
pub trait Tools {
    /// Run `program` (an absolute path as the host sees it) with `args`, feeding `stdin`;
    /// returns its output whatever its exit status.
    fn run(&mut self, program: &Path, args: &[OsString], stdin: Option<&[u8]>) -> Result<Output>;
}

/// Runs them for real.
#[derive(Debug, Default)]
pub struct RealTools;

impl Tools for RealTools {
    fn run(&mut self, program: &Path, args: &[OsString], stdin: Option<&[u8]>) -> Result<Output> {
        use std::io::Write as _;
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {}", program.display()))?;
        if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
            w.write_all(data)
                .with_context(|| format!("write to {}", program.display()))?;
        }
        child
            .wait_with_output()
            .with_context(|| format!("wait for {}", program.display()))
    }
}

/// Where `name` is in the guest's tree (`/usr/sbin`, `/sbin`, `/usr/bin`, `/bin`), as a path
/// inside the guest.
pub fn find(root: &Path, name: &str) -> Option<String> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| under(root, p).is_file())
}

fn is_host_root(root: &Path) -> bool {
    root == Path::new("/")
}

fn describe(program: &str, args: &[OsString], out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let text = if text.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        text.into_owned()
    };
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!(
        "{program} {} failed ({}): {}",
        shown.join(" "),
        out.status,
        text.trim()
    )
}

/// Run a shadow-utils program of the guest (`useradd`, …) with `args`, with `--root` when the
/// root is not `/`. An error names the command and what it said.
pub fn shadow(tools: &mut dyn Tools, root: &Path, program: &str, args: &[String]) -> Result<()> {
    let Some(p) = find(root, program) else {
        bail!("{program} is not installed in the guest (shadow-utils, which cloud-init needs too)");
    };
    let mut a: Vec<OsString> = Vec::new();
    if !is_host_root(root) {
        a.push("--root".into());
        a.push(root.as_os_str().to_owned());
    }
    a.extend(args.iter().map(OsString::from));
    let out = tools.run(&under(root, &p), &a, None)?;
    if !out.status.success() {
        bail!("{}", describe(program, &a, &out));
    }
    Ok(())
}

/// Run a program of the guest inside it (`chroot` when the root is not `/`); returns the output
/// whatever the exit status.
pub fn in_guest(
    tools: &mut dyn Tools,
    root: &Path,
    program: &str,
    args: &[String],
    stdin: Option<&[u8]>,
) -> Result<Output> {
    let Some(p) = find(root, program) else {
        bail!("{program} is not installed in the guest");
    };
    if is_host_root(root) {
        let a: Vec<OsString> = args.iter().map(OsString::from).collect();
        tools.run(Path::new(&p), &a, stdin)
    } else {
        let mut a: Vec<OsString> = vec![root.as_os_str().to_owned(), p.into()];
        a.extend(args.iter().map(OsString::from));
        tools.run(&PathBuf::from("/usr/sbin/chroot"), &a, stdin)
    }
}

/// [`in_guest`], requiring success.
pub fn in_guest_ok(
    tools: &mut dyn Tools,
    root: &Path,
    program: &str,
    args: &[String],
) -> Result<Output> {
    let out = in_guest(tools, root, program, args, None)?;
    if !out.status.success() {
        let a: Vec<OsString> = args.iter().map(OsString::from).collect();
        bail!("{}", describe(program, &a, &out));
    }
    Ok(out)
}
