//! Runs a [`Config`]: one SDK [`Worker`] whose handlers run each task
//! type's command or endpoint, until the shutdown future resolves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_client::TrustStore;
use serde_json::Value;
use serde_json::value::RawValue;

use super::command::run_command;
use super::config::{Action, Config};
use super::http::call_endpoint;
use crate::{TaskContext, TaskError, Worker, WorkerError};

/// The scheduler asked when neither the caller nor the config file names
/// one (the same as the CLI's default).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// The SDK worker that runs `config`: one handler per task type, against
/// the scheduler at `server`, sending `token` to a server that requires
/// one. `trust` holds the CAs an `https://` scheduler and `https://`
/// endpoints are checked against alike.
pub fn worker(
    config: Config,
    server: &str,
    token: Option<String>,
    trust: TrustStore,
) -> Result<Worker, WorkerError> {
    let config_error = |e: &dyn std::fmt::Display| {
        WorkerError::Config(format!("cannot set up the HTTP client: {e}"))
    };
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(
            trust
                .client_config(&[b"http/1.1"])
                .map_err(|e| config_error(&e))?,
        )
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("dispatch-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| config_error(&e))?;
    let mut builder = Worker::builder(server)
        .trust(trust)
        .name(config.name.clone())
        .concurrency(config.concurrency);
    if let Some(t) = token {
        builder = builder.token(t);
    }
    for (k, v) in &config.labels {
        builder = builder.label(k, v);
    }
    for (kind, t) in config.types {
        let handler = Arc::new(TypeHandler {
            action: t.action,
            timeout: t.timeout,
            http: http.clone(),
        });
        builder = builder.handle(kind, move |ctx: TaskContext, payload: Box<RawValue>| {
            let handler = handler.clone();
            async move { handler.run(ctx, payload).await }
        });
    }
    builder.build()
}

/// Runs `config` (see [`worker`]) until `shutdown` resolves, then drains:
/// no new tasks, the running ones finish and are reported.
pub async fn run(
    config: Config,
    server: &str,
    token: Option<String>,
    trust: TrustStore,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    let (name, concurrency) = (config.name.clone(), config.concurrency);
    let worker = worker(config, server, token, trust)?;
    tracing::info!(
        server = %server,
        name = %name,
        concurrency,
        types = ?worker.types(),
        "generic worker starting"
    );
    worker.run(shutdown).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: taking no new tasks, finishing the running ones");
}

/// Runs the tasks of one type.
struct TypeHandler {
    action: Action,
    timeout: Option<Duration>,
    http: reqwest::Client,
}

impl TypeHandler {
    async fn run(&self, ctx: TaskContext, payload: Box<RawValue>) -> Result<Value, TaskError> {
        let started = Instant::now();
        let outcome = match &self.action {
            Action::Command(c) => run_command(c, &ctx, &payload, self.timeout).await,
            Action::Http(e) => call_endpoint(e, &self.http, &ctx, &payload, self.timeout).await,
        };
        let took = started.elapsed();
        match &outcome {
            Ok(_) => {
                tracing::info!(task = %ctx.id, kind = %ctx.kind, attempt = ctx.attempt, ?took, "succeeded")
            }
            Err(e) => {
                tracing::warn!(task = %ctx.id, kind = %ctx.kind, attempt = ctx.attempt, ?took, error = %e, "failed")
            }
        }
        outcome
    }
}
