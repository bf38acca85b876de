//! Runs one attempt as a process ([`run_command`]): the payload on stdin,
//! the result on stdout, in a process group of its own that is killed whole
//! when the attempt is dropped.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::config::Command;
use super::output::{
    ERROR_TAIL, MAX_OUTPUT, local_timeout, output_value, sleep_or_forever, tail_text,
};
use crate::{TaskContext, TaskError};

/// Exit code with which a command fails its task for good (no retry).
pub const EXIT_ABORT: i32 = 100;

/// Reads up to `limit` bytes, then discards the rest (so the writer never
/// blocks); says whether there was more.
async fn read_bounded(mut r: impl AsyncRead + Unpin, limit: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let _ = (&mut r).take(limit as u64 + 1).read_to_end(&mut buf).await;
    let over = buf.len() > limit;
    if over {
        buf.truncate(limit);
        let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    }
    (buf, over)
}

/// Reads everything, keeping the last `keep` bytes.
async fn read_tail(mut r: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > 2 * keep {
            tail.drain(..tail.len() - keep);
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}

/// SIGKILLs a command's whole process group when dropped (the SDK drops a
/// handler on timeout, cancellation or a lost lease), unless disarmed once
/// the command was reaped. The leader is not reaped while armed, so its
/// process group id cannot have been reused.
struct GroupKill(Option<rustix::process::Pid>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs one attempt as a process: payload on stdin, result on stdout.
pub(super) async fn run_command(
    c: &Command,
    ctx: &TaskContext,
    payload: &RawValue,
    cap: Option<Duration>,
) -> Result<Value, TaskError> {
    // A path is taken relative to where the command runs (whatever the
    // platform would do); a bare name is looked up in PATH.
    let program = if c.argv[0].contains('/') {
        c.cwd.join(&c.argv[0])
    } else {
        PathBuf::from(&c.argv[0])
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&c.argv[1..])
        .envs(&c.env)
        .env("DISPATCH_TASK_ID", &ctx.id)
        .env("DISPATCH_TASK_TYPE", &ctx.kind)
        .env("DISPATCH_ATTEMPT", ctx.attempt.to_string())
        .env("DISPATCH_MAX_ATTEMPTS", ctx.max_attempts.to_string())
        .env("DISPATCH_QUEUE", &ctx.queue)
        .current_dir(&c.cwd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group: Ctrl-C at the terminal reaches the worker
        // only (which then drains), and a kill reaches all it started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        let text = format!("cannot start {:?}: {e}", c.argv[0]);
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                TaskError::abort(text)
            }
            _ => TaskError::retry(text),
        }
    })?;
    let mut group = GroupKill(
        child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32)),
    );
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let input = payload.get().as_bytes();
    let finished = {
        let work = async {
            let feed = async {
                if let Some(mut w) = stdin.take() {
                    // A command that does not read its input is fine.
                    let _ = w.write_all(input).await;
                    let _ = w.shutdown().await;
                }
            };
            let out = async {
                match stdout {
                    Some(r) => read_bounded(r, MAX_OUTPUT).await,
                    None => (Vec::new(), false),
                }
            };
            let err = async {
                match stderr {
                    Some(r) => read_tail(r, ERROR_TAIL).await,
                    None => Vec::new(),
                }
            };
            let ((), out, err, status) = tokio::join!(feed, out, err, child.wait());
            (out, err, status)
        };
        // The task's own timeout_ms is the SDK's: it drops this future,
        // and `group` and kill_on_drop stop the process.
        tokio::select! {
            r = work => Ok(r),
            _ = ctx.cancelled() => Err(TaskError::retry("cancelled")),
            _ = sleep_or_forever(cap) => Err(local_timeout(cap)),
        }
    };
    let ((stdout, too_big), stderr, status) = match finished {
        Ok(r) => r,
        Err(e) => {
            // Stop it and all it started, then reap it.
            group.kill();
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            return Err(e);
        }
    };
    let status =
        status.map_err(|e| TaskError::retry(format!("cannot wait for the command: {e}")))?;
    group.disarm();
    let with_stderr = |head: String| {
        let tail = tail_text(&stderr);
        if tail.is_empty() {
            head
        } else {
            format!("{head}: {tail}")
        }
    };
    match status.code() {
        Some(0) if too_big => Err(TaskError::abort(format!(
            "the command printed more than {MAX_OUTPUT} bytes on stdout (the result limit)"
        ))),
        Some(0) => Ok(output_value(&stdout)),
        Some(EXIT_ABORT) => Err(TaskError::abort(with_stderr(format!(
            "exit status {EXIT_ABORT}"
        )))),
        Some(code) => Err(TaskError::retry(with_stderr(format!("exit status {code}")))),
        None => {
            use std::os::unix::process::ExitStatusExt;
            let signal = status.signal().unwrap_or(0);
            Err(TaskError::retry(with_stderr(format!(
                "killed by signal {signal}"
            ))))
        }
    }
}
