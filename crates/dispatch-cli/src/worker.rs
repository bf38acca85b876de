//! `dispatch worker --config worker.toml`: the generic worker of
//! [`dispatch_worker::generic`] (config file, commands, HTTP endpoints),
//! given the CLI's logs, scheduler URL, token and trusted CA.

use std::path::Path;

use anyhow::Result;
use dispatch_worker::generic;

/// Runs the worker described by the config file at `path` until Ctrl-C or
/// SIGTERM. The scheduler is `cli_server` when the CLI named one (`--server`
/// or `DISPATCH_SERVER`), else the file's `server`, else the default.
/// `token` (`--token` / `DISPATCH_TOKEN`) is sent to a server that requires
/// one. `ca` (`--ca` / `DISPATCH_CA`) is a CA certificate trusted besides
/// the system's, for an https:// scheduler and https:// endpoints alike.
/// `log_format` (`--log-format`) chooses text or JSON logs.
pub(crate) async fn run(
    path: &Path,
    cli_server: Option<String>,
    token: Option<String>,
    ca: Option<&Path>,
    log_format: crate::cli::LogFormat,
) -> Result<()> {
    crate::init_logs("info", log_format);
    let config = generic::load(path)?;
    let server = cli_server
        .or(config.server.clone())
        .unwrap_or_else(|| generic::DEFAULT_SERVER.to_owned());
    let trust = crate::trust_store(ca, config.needs_tls(&server))?;
    generic::run(config, &server, token, trust, generic::shutdown_signal()).await?;
    Ok(())
}
