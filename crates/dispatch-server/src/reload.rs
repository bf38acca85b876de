//! Reloading the token file and the TLS certificate without a restart: on
//! SIGHUP, and when a file changes (its modification time or size, looked
//! at every second).
//!
//! A reload that fails (a file unreadable, a bad line, a key that does not
//! match its certificate) leaves what is in force as it was and logs an
//! error; the next change or SIGHUP tries again. Revoked tokens are refused
//! from the request after the reload; connections already open keep the
//! certificate they were accepted with.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::auth::Tokens;
use crate::tls::ReloadableAcceptor;

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// What identifies a version of a file: its modification time and size
/// (`None` when it cannot be read).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn tls_stamp(tls: &ReloadableAcceptor) -> (Stamp, Stamp) {
    (stamp(&tls.files().cert), stamp(&tls.files().key))
}

fn reload_tokens(tokens: &Tokens, why: &str) {
    let path = tokens.path().map(|p| p.display().to_string());
    match tokens.reload() {
        Ok(n) => tracing::info!(file = ?path, tokens = n, why, "token file reloaded"),
        Err(e) => tracing::error!(
            file = ?path,
            error = %e,
            why,
            "cannot reload the token file; the tokens in force stay"
        ),
    }
}

fn reload_tls(tls: &ReloadableAcceptor, why: &str) {
    let cert = tls.files().cert.display().to_string();
    match tls.reload() {
        Ok(()) => tracing::info!(%cert, why, "TLS certificate reloaded"),
        Err(e) => tracing::error!(
            %cert,
            error = %e,
            why,
            "cannot reload the TLS certificate and key; the ones in force stay"
        ),
    }
}

/// Watches the token file and the TLS pair until the server stops.
pub(crate) async fn reload_loop(
    tokens: Option<Tokens>,
    tls: Option<Arc<ReloadableAcceptor>>,
    mut stopping: watch::Receiver<bool>,
) {
    let tokens = tokens.filter(|t| t.path().is_some());
    if tokens.is_none() && tls.is_none() {
        return;
    }
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; files are still watched");
            None
        }
    };
    let mut token_stamp = tokens.as_ref().and_then(|t| stamp(t.path()?));
    let mut pair_stamp = tls.as_deref().map(tls_stamp);
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            _ = hup => {
                if let Some(t) = &tokens {
                    token_stamp = t.path().and_then(stamp);
                    reload_tokens(t, "SIGHUP");
                }
                if let Some(t) = &tls {
                    pair_stamp = Some(tls_stamp(t));
                    reload_tls(t, "SIGHUP");
                }
            }
            _ = tokio::time::sleep(POLL) => {
                if let Some(t) = &tokens {
                    let now = t.path().and_then(stamp);
                    if now != token_stamp {
                        token_stamp = now;
                        reload_tokens(t, "the file changed");
                    }
                }
                if let Some(t) = &tls {
                    let now = Some(tls_stamp(t));
                    if now != pair_stamp {
                        pair_stamp = now;
                        reload_tls(t, "a file changed");
                    }
                }
            }
        }
    }
}
