//! Running a hotplug script the way libxl does (`libxl__exec` + `libxl__async_exec_start`):
//! `execvp(script, [script, args…])` with the libxl variables set on top of the inherited
//! environment, stdin `/dev/null`, stdout and stderr both captured (libxl dups the script's stdout
//! to its own stderr, so both end up in one stream), and a timer after which the script's PID —
//! only the PID, not its process group — gets SIGKILL.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How a script run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// Exited with this status.
    Code(i32),
    /// Killed by this signal (by us on timeout, or by anyone else).
    Signal(i32),
    /// Could not be started at all (libxl reports the exec failure).
    NotStarted(String),
}

impl Exit {
    /// True for exit status 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

/// The record of one script execution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecRecord {
    /// argv, argv\[0\] being the script path.
    pub argv: Vec<String>,
    /// The variables libxl set, in the order it sets them.
    pub env: Vec<(String, String)>,
    /// How it ended.
    pub exit: Exit,
    /// True when the timeout fired and we sent SIGKILL.
    pub timed_out: bool,
    /// Wall-clock time from spawn to reaping.
    pub duration_ms: f64,
    /// stdout and stderr, interleaved as written.
    pub output: String,
}

/// Run `argv` with `env` added to the inherited environment; SIGKILL after `timeout`.
pub fn run(argv: &[String], env: &[(String, String)], timeout: Duration) -> ExecRecord {
    let mut record = ExecRecord {
        argv: argv.to_vec(),
        env: env.to_vec(),
        exit: Exit::NotStarted(String::new()),
        timed_out: false,
        duration_ms: 0.0,
        output: String::new(),
    };
    let (reader, writer): (OwnedFd, OwnedFd) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            record.exit = Exit::NotStarted(format!("pipe: {e}"));
            return record;
        }
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => {
            record.exit = Exit::NotStarted(format!("dup: {e}"));
            return record;
        }
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2));
    let start = Instant::now();
    let spawned = cmd.spawn();
    // Our copies of the write end must be closed, or the reader never sees EOF.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            record.exit = Exit::NotStarted(format!("{}: {e}", argv[0]));
            return record;
        }
    };
    let pid = child.id();
    let (out_tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(reader);
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let _ = out_tx.send(buf);
    });
    let (exit_tx, exit_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });
    let status = match exit_rx.recv_timeout(timeout) {
        Ok(s) => s,
        Err(_) => {
            record.timed_out = true;
            // libxl: kill(pid, SIGKILL) on the script's PID only.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            exit_rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("wait thread died")))
        }
    };
    record.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    record.exit = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(sig)) => Exit::Signal(sig),
                _ => Exit::NotStarted("unknown wait status".into()),
            }
        }
        Err(e) => Exit::NotStarted(format!("wait: {e}")),
    };
    // Descendants that survived the script may still hold the pipe open: don't wait for them.
    match out_rx.recv_timeout(Duration::from_millis(500)) {
        Ok(buf) => record.output = String::from_utf8_lossy(&buf).into_owned(),
        Err(_) => record.output = "(output not collected: a descendant still holds it)".into(),
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn captures_both_streams_in_order_and_the_status() {
        let r = run(
            &sh("echo out; echo err >&2; echo \"$FOO\"; exit 3"),
            &[("FOO".into(), "bar".into())],
            Duration::from_secs(5),
        );
        assert_eq!(r.exit, Exit::Code(3));
        assert_eq!(r.output, "out\nerr\nbar\n");
        assert!(!r.timed_out);
    }

    #[test]
    fn stdin_is_dev_null() {
        let r = run(&sh("cat; echo done"), &[], Duration::from_secs(5));
        assert_eq!(r.output, "done\n");
    }

    #[test]
    fn timeout_kills_the_pid() {
        let r = run(&sh("exec sleep 30"), &[], Duration::from_millis(200));
        assert!(r.timed_out);
        assert_eq!(r.exit, Exit::Signal(9));
        assert!(r.duration_ms < 5000.0);
    }

    #[test]
    fn missing_program_is_reported() {
        let r = run(&["/nonexistent/script".into()], &[], Duration::from_secs(1));
        assert!(matches!(r.exit, Exit::NotStarted(ref m) if m.contains("/nonexistent/script")));
    }
}
