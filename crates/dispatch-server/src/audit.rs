//! The audit log (`--audit-log FILE`): one JSON line per admin action and
//! per refused request (401/403), appended by a dedicated thread so that
//! request handlers never wait for the file.
//!
//! A line: `at` (RFC 3339), `action`, `target`, `outcome` (the status
//! code), `token` (its name in the token file, else `sha256:` and the
//! start of its digest; never the token), `remote` (the peer's address),
//! and for refusals `method` and `path`. Which requests are actions is
//! [`crate::auth::audited`], keyed like the scope table; the auth
//! middleware records both.
//!
//! A client without a token must not be able to fill the disk through it:
//!
//! - every field a client chooses (`target`, `method`, `path`) is cut at
//!   [`MAX_FIELD`] bytes, ending in `...` and the full length;
//! - `auth.denied` lines are at most [`DENIED_PER_SECOND`] a second; the
//!   ones beyond are counted, and one `auth.denied.suppressed` line gives
//!   their `count` and the `since` of the second they began in;
//! - the file is rotated past `--audit-log-max-mb`: FILE becomes FILE.1,
//!   FILE.1 becomes FILE.2, up to [`KEEP`] rotated files.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Longest client-chosen field kept, in bytes.
pub(crate) const MAX_FIELD: usize = 256;

/// Most `auth.denied` lines written in a second.
pub(crate) const DENIED_PER_SECOND: u32 = 100;

/// Rotated files kept beside the log (FILE.1 ... FILE.KEEP).
pub(crate) const KEEP: usize = 3;

/// One line of the audit log.
#[derive(Serialize)]
pub(crate) struct Entry<'a> {
    /// When, RFC 3339.
    pub(crate) at: String,
    /// What: `task.cancel`, `queue.pause`, `auth.denied`, ...
    pub(crate) action: &'a str,
    /// What it was done to: a task id, a queue or schedule name, a path.
    pub(crate) target: Option<String>,
    /// The status code answered.
    pub(crate) outcome: u16,
    /// Who: the token's name, or its digest prefix.
    pub(crate) token: Option<String>,
    /// The peer's address, when known.
    pub(crate) remote: Option<SocketAddr>,
    /// The request's method (refusals only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<&'a str>,
    /// The request's path (refusals only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<&'a str>,
}

/// The line that stands for the `auth.denied` lines left out.
#[derive(Serialize)]
struct Suppressed {
    at: String,
    action: &'static str,
    /// How many were left out.
    count: u64,
    /// The start of the second in which the first was left out.
    since: String,
}

/// `s`, cut at [`MAX_FIELD`] bytes (on a character boundary) with `...`
/// and the full length appended.
pub(crate) fn bounded(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_owned();
    }
    let mut cut = MAX_FIELD;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...({} bytes)", &s[..cut], s.len())
}

/// The `auth.denied` lines of the current second.
struct DeniedWindow {
    start: Instant,
    /// When `start` was, for the `since` of a summary.
    start_ms: u64,
    written: u32,
    dropped: u64,
}

impl DeniedWindow {
    /// The summary of the lines dropped in a second that is over, if any,
    /// and a fresh window when `now` is past it.
    fn roll(&mut self, now: Instant) -> Option<String> {
        if now.duration_since(self.start) < Duration::from_secs(1) {
            return None;
        }
        let summary = (self.dropped > 0).then(|| {
            let line = Suppressed {
                at: dispatch_proto::time::format_rfc3339(crate::clock::now_ms()),
                action: "auth.denied.suppressed",
                count: self.dropped,
                since: dispatch_proto::time::format_rfc3339(self.start_ms),
            };
            serde_json::to_string(&line).unwrap_or_default() + "\n"
        });
        *self = DeniedWindow {
            start: now,
            start_ms: crate::clock::now_ms(),
            written: 0,
            dropped: 0,
        };
        summary
    }
}

/// The sending end of the audit log; the writer thread ends when it is
/// dropped, after writing everything sent.
#[derive(Clone)]
pub(crate) struct AuditLog {
    tx: mpsc::Sender<String>,
    denied: Arc<Mutex<DeniedWindow>>,
}

impl AuditLog {
    /// Opens (creates, appends to) `path` and starts the writer thread,
    /// which rotates the file when it would grow past `max_bytes`.
    pub(crate) fn open(path: &Path, max_bytes: u64) -> std::io::Result<AuditLog> {
        let file = Rotating::open(path.to_owned(), max_bytes)?;
        let (tx, rx) = mpsc::channel::<String>();
        let denied = Arc::new(Mutex::new(DeniedWindow {
            start: Instant::now(),
            start_ms: crate::clock::now_ms(),
            written: 0,
            dropped: 0,
        }));
        let window = denied.clone();
        std::thread::Builder::new()
            .name("dispatch-audit".into())
            .spawn(move || write_lines(file, rx, &window))?;
        Ok(AuditLog { tx, denied })
    }

    /// Queues one line; never blocks on the file.
    pub(crate) fn record(&self, entry: &Entry<'_>) {
        if let Some(line) = encode(entry) {
            let _ = self.tx.send(line);
        }
    }

    /// Queues an `auth.denied` line unless [`DENIED_PER_SECOND`] were
    /// queued this second already; those beyond are only counted.
    pub(crate) fn record_denied(&self, entry: &Entry<'_>) {
        let (summary, write) = {
            let mut w = self.denied.lock().unwrap_or_else(|e| e.into_inner());
            let summary = w.roll(Instant::now());
            let write = w.written < DENIED_PER_SECOND;
            if write {
                w.written += 1;
            } else {
                w.dropped += 1;
            }
            (summary, write)
        };
        if let Some(s) = summary {
            let _ = self.tx.send(s);
        }
        if write {
            self.record(entry);
        }
    }
}

fn encode(entry: &Entry<'_>) -> Option<String> {
    let bounded_entry = Entry {
        at: entry.at.clone(),
        action: entry.action,
        target: entry.target.as_deref().map(bounded),
        outcome: entry.outcome,
        token: entry.token.clone(),
        remote: entry.remote,
        method: None,
        path: None,
    };
    let method = entry.method.map(bounded);
    let path = entry.path.map(bounded);
    let bounded_entry = Entry {
        method: method.as_deref(),
        path: path.as_deref(),
        ..bounded_entry
    };
    match serde_json::to_string(&bounded_entry) {
        Ok(mut line) => {
            line.push('\n');
            Some(line)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an audit entry");
            None
        }
    }
}

/// The writer thread: appends each line, and the summary of dropped
/// `auth.denied` lines once their second is over, even when nothing else
/// comes.
fn write_lines(mut file: Rotating, rx: mpsc::Receiver<String>, denied: &Mutex<DeniedWindow>) {
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => file.write(&line),
            Err(RecvTimeoutError::Timeout) => {
                let summary = denied
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .roll(Instant::now());
                if let Some(s) = summary {
                    file.write(&s);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The log file and its rotation.
struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl Rotating {
    fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<Rotating> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Rotating {
            path,
            file,
            size,
            max_bytes,
        })
    }

    fn write(&mut self, line: &str) {
        let len = line.len() as u64;
        if self.size > 0
            && self.size + len > self.max_bytes
            && let Err(e) = self.rotate()
        {
            tracing::error!(file = %self.path.display(), error = %e, "cannot rotate the audit log");
        }
        match self.file.write_all(line.as_bytes()) {
            Ok(()) => self.size += len,
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "cannot write the audit log")
            }
        }
    }

    /// FILE.(KEEP-1) to FILE.KEEP, ..., FILE to FILE.1, and a new FILE.
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..KEEP).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// The value of the first `{param}` of `route` in `path`.
pub(crate) fn path_param(route: &str, path: &str) -> Option<String> {
    route
        .split('/')
        .zip(path.split('/'))
        .find(|(r, _)| r.starts_with('{'))
        .map(|(_, p)| p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_first_path_parameter() {
        assert_eq!(
            path_param("/v1/tasks/{id}/cancel", "/v1/tasks/42/cancel").as_deref(),
            Some("42")
        );
        assert_eq!(path_param("/v1/schedules", "/v1/schedules"), None);
    }

    #[test]
    fn a_long_field_is_cut_and_says_its_length() {
        assert_eq!(bounded("/v1/tasks"), "/v1/tasks");
        let long = "é".repeat(200);
        let cut = bounded(&long);
        assert!(cut.len() < MAX_FIELD + 32, "{cut}");
        assert!(cut.ends_with("...(400 bytes)"), "{cut}");
    }

    #[test]
    fn the_log_rotates_past_its_size_keeping_three_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = Rotating::open(path.clone(), 100).unwrap();
        for i in 0..20 {
            log.write(&format!(
                "{{\"line\":{i:02},\"pad\":\"{}\"}}\n",
                "x".repeat(20)
            ));
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert!(read(&path).len() <= 100);
        for n in 1..=KEEP {
            let rotated = dir.path().join(format!("audit.log.{n}"));
            let text = read(&rotated);
            assert!(!text.is_empty() && text.len() <= 100, "{n}: {text}");
        }
        assert!(!dir.path().join(format!("audit.log.{}", KEEP + 1)).exists());
        // The newest line is in the live file, older ones in .1, .2, .3.
        assert!(read(&path).contains("\"line\":19"));
        assert!(read(&dir.path().join("audit.log.1")).contains("\"line\":1"));
    }
}
