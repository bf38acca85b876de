//! The Rust worker SDK of Dispatch.
//!
//! Register an async handler per task type, then [`Worker::run`]: the SDK
//! registers with the scheduler, collects the tasks assigned to it, runs up
//! to `concurrency` of them at once, and reports each result. A handler is
//! `async fn(TaskContext, Payload) -> Result<impl Serialize, TaskError>`;
//! its error decides what happens next ([`TaskError::retry`],
//! [`TaskError::retry_after`], [`TaskError::abort`]).
//!
//! What the SDK takes care of:
//! - **Timeouts**: a task with `timeout_ms` is cancelled when it runs out and
//!   reported as failed with error `timeout`.
//! - **Cancellation**: when the scheduler cancels a running task (or takes
//!   it back after a timeout), [`TaskContext::cancelled`] resolves; a
//!   handler that ignores it is dropped at its next `.await`.
//! - **Leases**: it heartbeats and polls within the lease; when the lease
//!   was lost it stops the tasks it held (the scheduler requeued them) and
//!   registers again.
//! - **Reconnects**: network errors are retried with exponential backoff.
//! - **Graceful shutdown**: when the shutdown future resolves it stops taking
//!   tasks, lets the running ones finish, reports them and leaves.
//!
//! Two transports reach the same scheduler on the same URL, and a worker is
//! a worker whatever its transport: the handlers, timeouts, cancellation and
//! shutdown behave alike.
//! - [`Transport::Http`] (the default): the HTTP worker protocol, long-poll
//!   with batched results. It works through any HTTP/1.1 proxy.
//! - [`Transport::Grpc`]: the streaming protocol, one gRPC stream per
//!   session (HTTP/2, cleartext or over TLS). The scheduler pushes tasks as soon as they
//!   are assigned, never more than the slots this worker granted (credits:
//!   its free slots), stop notices arrive at once instead of at the next
//!   heartbeat, and a worker whose process dies has its tasks requeued as
//!   soon as the connection drops rather than when its lease runs out.
//!
//! Both speak TLS to an `https://` URL, trusting the system's certificate
//! authorities, or also a private CA given with [`WorkerBuilder::trust`].
//!
//! With the `generic` feature, `generic` is the generic worker: a TOML file
//! maps each task type to a shell command or an HTTP endpoint, and one
//! worker of this SDK runs them (`dispatch worker --config` is that).
//!
//! ```no_run
//! use dispatch_worker::{TaskContext, TaskError, Worker};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Email { to: String }
//!
//! # async fn demo() -> Result<(), dispatch_worker::WorkerError> {
//! Worker::builder("http://127.0.0.1:7070")
//!     .name("mailer-1")
//!     .concurrency(16)
//!     .handle("email.send", |ctx: TaskContext, email: Email| async move {
//!         if email.to.is_empty() {
//!             return Err(TaskError::abort("no recipient"));
//!         }
//!         Ok(serde_json::json!({ "sent_to": email.to, "attempt": ctx.attempt }))
//!     })
//!     .build()?
//!     .run(async { let _ = tokio::signal::ctrl_c().await; })
//!     .await
//! # }
//! ```

#[cfg(feature = "generic")]
pub mod generic;
mod grpc;
mod handler;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dispatch_client::{Client, TrustStore};

use handler::{BoxedHandler, Handler};
pub use handler::{TaskContext, TaskError};

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration is unusable (no handler, bad URL, zero concurrency).
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// The scheduler refused the registration (a 4xx other than a lost
    /// lease): retrying would not help.
    #[error("the scheduler refused this worker: {0}")]
    Refused(String),
}

/// How the worker talks to the scheduler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// The HTTP/JSON long-poll protocol (`POST /v1/workers/{id}/poll`).
    #[default]
    Http,
    /// The gRPC streaming protocol (`dispatch.v1.WorkerService/Connect`),
    /// served on the same listener as HTTP.
    Grpc,
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    server: String,
    transport: Transport,
    name: String,
    labels: BTreeMap<String, String>,
    concurrency: usize,
    poll_wait: Duration,
    handlers: HashMap<String, BoxedHandler>,
    token: Option<String>,
    trust: Option<TrustStore>,
}

impl WorkerBuilder {
    /// The certificate authorities an `https://` scheduler's certificate
    /// must chain to, on both transports (default: the system's; see
    /// [`TrustStore::with_ca_pem`] for a private CA).
    pub fn trust(mut self, trust: TrustStore) -> Self {
        self.trust = Some(trust);
        self
    }

    /// The bearer token (scope `work`) sent on every HTTP request and as
    /// `authorization` metadata on the gRPC stream. An empty token means
    /// none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token: String = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// The display name the scheduler shows (default: `rust-worker`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// A label describing this worker.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// How many tasks run at once (default 8).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The protocol to use (default [`Transport::Http`]).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// How long one poll may wait for work (default 5 s; the scheduler caps
    /// it at half the lease).
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }

    /// Runs `handler` for tasks of type `kind`. The payload is decoded into
    /// `P`; a payload that does not decode fails the task without retry.
    pub fn handle<H, P>(mut self, kind: impl Into<String>, handler: H) -> Self
    where
        H: Handler<P>,
        P: serde::de::DeserializeOwned + Send + 'static,
    {
        self.handlers.insert(kind.into(), handler::boxed(handler));
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<Worker, WorkerError> {
        if self.handlers.is_empty() {
            return Err(WorkerError::Config("register at least one handler".into()));
        }
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err(WorkerError::Config("concurrency must be 1 to 10000".into()));
        }
        let tls = self.server.starts_with("https://");
        let trust = match self.trust {
            Some(t) => t,
            None if tls => TrustStore::system().map_err(|e| WorkerError::Config(e.to_string()))?,
            None => TrustStore::empty(),
        };
        let mut client = Client::with_trust(&self.server, &trust)
            .map_err(|e| WorkerError::Config(e.to_string()))?;
        let bearer = match &self.token {
            Some(t) => {
                client = client.with_token(t.clone());
                let value = format!("Bearer {t}").parse().map_err(|_| {
                    WorkerError::Config("the token has characters a header cannot carry".into())
                })?;
                Some(value)
            }
            None => None,
        };
        let targets = grpc::Targets::new(&self.server, tls.then_some(&trust))?;
        Ok(Worker {
            client,
            targets,
            bearer,
            transport: self.transport,
            name: self.name,
            labels: self.labels,
            concurrency: self.concurrency,
            poll_wait: self.poll_wait,
            handlers: Arc::new(self.handlers),
        })
    }
}

/// A configured worker; [`Worker::run`] runs it.
pub struct Worker {
    client: Client,
    /// The replicas for the gRPC stream.
    targets: grpc::Targets,
    /// `authorization` metadata for the gRPC stream.
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    transport: Transport,
    name: String,
    labels: BTreeMap<String, String>,
    concurrency: usize,
    poll_wait: Duration,
    handlers: Arc<HashMap<String, BoxedHandler>>,
}

impl Worker {
    /// Starts building a worker for the scheduler at `server`
    /// (e.g. `http://127.0.0.1:7070`), or for several replicas,
    /// comma-separated: a worker moves on to the next when one cannot be
    /// reached, and a gRPC worker follows a standby to its leader.
    pub fn builder(server: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            server: server.into(),
            transport: Transport::Http,
            name: "rust-worker".to_owned(),
            labels: BTreeMap::new(),
            concurrency: 8,
            poll_wait: Duration::from_secs(5),
            handlers: HashMap::new(),
            token: None,
            trust: None,
        }
    }

    /// The task types it handles.
    pub fn types(&self) -> Vec<String> {
        let mut t: Vec<String> = self.handlers.keys().cloned().collect();
        t.sort();
        t
    }

    /// Runs until `shutdown` resolves, then drains and leaves. Returns an
    /// error only when the scheduler refuses the worker outright; network
    /// failures are retried.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), WorkerError> {
        match self.transport {
            Transport::Http => run::run(self, shutdown).await,
            Transport::Grpc => grpc::run(self, shutdown).await,
        }
    }
}
