//! `guest-exec` / `guest-exec-status`: run a program, capture its output, report its end.
//!
//! As qemu-ga: `path` is `argv[0]` and is looked up in `PATH` when it has no `/`; `env`, when
//! given, is the program's whole environment; stdin is `input-data` (base64) or `/dev/null`;
//! stdout/stderr are captured up to [`MAX_OUTPUT`] bytes each (the rest is read and dropped,
//! `*-truncated` says so) or go to `/dev/null`. `guest-exec-status` reports `exited: false`
//! until the process has ended *and* its captured output is complete; the report that says
//! `exited: true` also forgets the process (a second call answers "Invalid parameter 'pid'").
//! Output is read by one thread per stream, so a chatty program never blocks on a full pipe.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use base64::Engine as _;
use xenplug_channel::qga::{CaptureMode, ExecArgs, ExecPid, ExecStatus};
use xenplug_channel::ErrorBody;

/// Bytes captured per stream (qemu-ga's `GUEST_EXEC_MAX_OUTPUT`).
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// Processes started and not yet reported as ended.
pub const MAX_CHILDREN: usize = 256;

#[derive(Debug, Default)]
struct Captured {
    data: Vec<u8>,
    truncated: bool,
}

#[derive(Debug)]
struct Stream {
    buf: Arc<Mutex<Captured>>,
    reader: Option<JoinHandle<()>>,
}

impl Stream {
    fn start(fd: OwnedFd) -> Stream {
        let buf = Arc::new(Mutex::new(Captured::default()));
        let b = buf.clone();
        let reader = std::thread::Builder::new()
            .name("exec-output".into())
            .spawn(move || {
                let mut f = std::fs::File::from(fd);
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    match f.read(&mut chunk) {
                        Ok(0) => return,
                        Ok(n) => {
                            let mut c = b.lock().unwrap_or_else(|e| e.into_inner());
                            let room = MAX_OUTPUT - c.data.len();
                            if n > room {
                                c.truncated = true;
                            }
                            let take = n.min(room);
                            c.data.extend_from_slice(&chunk[..take]);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            })
            .ok();
        Stream { buf, reader }
    }

    fn done(&self) -> bool {
        self.reader.as_ref().is_none_or(|r| r.is_finished())
    }

    fn take(mut self) -> Captured {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[derive(Debug)]
struct Running {
    child: Child,
    status: Option<std::process::ExitStatus>,
    out: Option<Stream>,
    err: Option<Stream>,
}

/// The processes `guest-exec` started.
#[derive(Debug, Default)]
pub struct ExecTable {
    children: HashMap<i64, Running>,
}

/// glib's wording of a spawn failure, inside qemu-ga's "command failed" message.
fn spawn_error(path: &str, e: &std::io::Error) -> ErrorBody {
    let why = super::io_desc(e);
    ErrorBody::generic(format!(
        "Guest agent command failed, error was 'Failed to execute child process \u{201c}{path}\u{201d} ({why})'"
    ))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ErrorBody> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
        ErrorBody::generic(format!(
            "failed to create a pipe: {}",
            super::strerror(e as i32)
        ))
    })
}

impl ExecTable {
    /// `guest-exec`.
    pub fn start(&mut self, a: &ExecArgs) -> Result<ExecPid, ErrorBody> {
        if self.children.len() >= MAX_CHILDREN {
            return Err(ErrorBody::generic(format!(
                "too many processes not yet reported by guest-exec-status (limit {MAX_CHILDREN})"
            )));
        }
        let input = match &a.input_data {
            Some(b) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|_| ErrorBody::generic("Base64 data contains invalid characters"))?,
            ),
            None => None,
        };
        let mode = a.capture_output.map_or(CaptureMode::None, |c| c.mode());
        let mut cmd = Command::new(&a.path);
        cmd.args(a.arg.iter().flatten());
        if let Some(env) = &a.env {
            cmd.env_clear();
            for kv in env {
                if let Some((k, v)) = kv.split_once('=') {
                    cmd.env(k, v);
                }
            }
        }
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let (mut out_r, mut err_r) = (None, None);
        match mode {
            CaptureMode::None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
            CaptureMode::Stdout => {
                let (r, w) = pipe()?;
                out_r = Some(r);
                cmd.stdout(w).stderr(Stdio::null());
            }
            CaptureMode::Stderr => {
                let (r, w) = pipe()?;
                err_r = Some(r);
                cmd.stdout(Stdio::null()).stderr(w);
            }
            CaptureMode::Separated => {
                let (r1, w1) = pipe()?;
                let (r2, w2) = pipe()?;
                out_r = Some(r1);
                err_r = Some(r2);
                cmd.stdout(w1).stderr(w2);
            }
            CaptureMode::Merged => {
                let (r, w) = pipe()?;
                let w2 = w
                    .try_clone()
                    .map_err(|e| ErrorBody::generic(format!("failed to duplicate a pipe: {e}")))?;
                out_r = Some(r);
                cmd.stdout(w).stderr(w2);
            }
        }
        let mut child = cmd.spawn().map_err(|e| spawn_error(&a.path, &e))?;
        // Our copies of the write ends went with `cmd`: drop it so EOF comes when the child
        // (and its own children) close theirs.
        drop(cmd);
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            // A program that does not read its input must not block the agent.
            let _ = std::thread::Builder::new()
                .name("exec-input".into())
                .spawn(move || {
                    let _ = stdin.write_all(&data);
                });
        }
        let pid = i64::from(child.id());
        self.children.insert(
            pid,
            Running {
                child,
                status: None,
                out: out_r.map(Stream::start),
                err: err_r.map(Stream::start),
            },
        );
        Ok(ExecPid { pid })
    }

    /// `guest-exec-status`.
    pub fn status(&mut self, pid: i64) -> Result<ExecStatus, ErrorBody> {
        let Some(r) = self.children.get_mut(&pid) else {
            return Err(ErrorBody::generic("Invalid parameter 'pid'"));
        };
        if r.status.is_none() {
            r.status = r
                .child
                .try_wait()
                .map_err(|e| ErrorBody::generic(format!("failed to wait for {pid}: {e}")))?;
        }
        let streams_done =
            r.out.as_ref().is_none_or(Stream::done) && r.err.as_ref().is_none_or(Stream::done);
        let Some(st) = r.status.filter(|_| streams_done) else {
            return Ok(ExecStatus::default());
        };
        let r = self.children.remove(&pid).expect("present above");
        let mut s = ExecStatus {
            exited: true,
            exitcode: st.code().map(i64::from),
            signal: st.signal().map(i64::from),
            ..ExecStatus::default()
        };
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        if let Some(c) = r.out.map(Stream::take).filter(|c| !c.data.is_empty()) {
            s.out_data = Some(b64(&c.data));
            s.out_truncated = Some(c.truncated);
        }
        if let Some(c) = r.err.map(Stream::take).filter(|c| !c.data.is_empty()) {
            s.err_data = Some(b64(&c.data));
            s.err_truncated = Some(c.truncated);
        }
        Ok(s)
    }
}
