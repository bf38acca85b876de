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

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;

use serde::Serialize;

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

/// The sending end of the audit log; the writer thread ends when it is
/// dropped, after writing everything sent.
pub(crate) struct AuditLog {
    tx: mpsc::Sender<String>,
}

impl AuditLog {
    /// Opens (creates, appends to) `path` and starts the writer thread.
    pub(crate) fn open(path: &Path) -> std::io::Result<AuditLog> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::channel::<String>();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("dispatch-audit".into())
            .spawn(move || {
                for line in rx {
                    if let Err(e) = file.write_all(line.as_bytes()) {
                        tracing::error!(file = %shown, error = %e, "cannot write the audit log");
                    }
                }
            })?;
        Ok(AuditLog { tx })
    }

    /// Queues one line; never blocks on the file.
    pub(crate) fn record(&self, entry: &Entry<'_>) {
        match serde_json::to_string(entry) {
            Ok(mut line) => {
                line.push('\n');
                let _ = self.tx.send(line);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode an audit entry"),
        }
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
}
