//! The Dispatch scheduler service: the shell around the pure core.
//!
//! [`start`] locks the data folder (an OS file lock on its `lock` file,
//! held for the server's life: a second server on the folder is refused),
//! opens the store, rebuilds the scheduler's state from it
//! (requeueing tasks that were running), starts the group-commit writer and
//! the timer loop, and serves HTTP until [`RunningServer::shutdown`].
//!
//! - `app`: [`app::App`], the shared state — the [`dispatch_core::Scheduler`]
//!   behind one mutex, the store for reads, the writer for writes — and the
//!   one path by which a request changes state (`App::apply`) and core
//!   events reach the store and wake workers. `clock`: its clocks.
//! - `api`: problem+json errors (`ApiError`) and the JSON body
//!   extractors (size and depth limits), used by every handler.
//! - `router`: the one place that names every route and its handler, with
//!   the middleware around them and the query table.
//! - `tasks`, `workers`: the client endpoints and the HTTP worker protocol.
//! - `wire`: the conversions between the wire types and the store's
//!   records, which meet only here.
//! - `grpc`: the streaming worker protocol (gRPC, credit-based push), served
//!   on the same listener as HTTP. `grpc_tools`: the standard gRPC health
//!   and reflection services, for load balancers and `grpcurl`.
//! - `schedules`: cron schedules' endpoints and the loop that fires them,
//!   each fire stored with its task before the task reaches the core;
//!   `schedules::table` holds them in memory.
//! - `queues`: `/v1/queues` (listing, pause, resume), the queue and type
//!   settings of the config file ([`QueueSettings`]) and default strategies.
//! - `openapi`: the OpenAPI 3.1 document at `/openapi.json`, generated
//!   from the handlers' annotations and the wire types.
//! - `counters`, `metrics`: the counters, and the Prometheus text at
//!   `/metrics`.
//! - `audit`: the audit log (`--audit-log`), one JSON line per admin action
//!   or refused request, written by its own thread.
//! - `auth`: bearer tokens with scopes ([`Tokens`], read from a token file
//!   of SHA-256 digests) and the one table of what each route needs,
//!   enforced by one middleware around REST and gRPC alike; `owners`:
//!   which token registered each worker.
//! - `ui`: the dashboard under `/ui` (pages rendered here, assets compiled
//!   in; sign-in sessions and CSRF), whose actions are requests to the REST
//!   router; `throughput`: the per-second counts of its chart.
//! - `serve`: the connection loop — a cap on open connections, header and
//!   idle timeouts for HTTP/1.1, keep-alive pings for HTTP/2.
//! - `tls`: HTTPS on the same listener ([`TlsFiles`], `--tls-cert` and
//!   `--tls-key`): rustls with the `ring` provider, ALPN `h2` and
//!   `http/1.1`, handshakes off the accept loop.
//!
//! Every mutating request is acknowledged only after the store committed it
//! (fsynced in the `durable` mode), so an acknowledged task survives a crash.

mod api;
mod app;
mod attempts;
mod audit;
pub mod auth;
mod budget;
mod clock;
mod cluster;
mod counters;
mod grpc;
mod grpc_tools;
mod metrics;
mod openapi;
mod owners;
mod queues;
mod reload;
mod router;
mod schedules;
mod serve;
mod tasks;
mod throughput;
mod tls;
mod ui;
mod wire;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use auth::{Scope, Tokens};
pub use cluster::ClusterConfig;
pub use dispatch_core::{QueueConfig, Strategy, TypeConfig};
pub use dispatch_store::Replica;
pub use queues::{QueueDefaults, QueueSettings, TypeDefaults};
pub use tls::{TlsError, TlsFiles};

use dispatch_store::Store;

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// How logs and errors name the store: its folder, or its database
    /// address without a password.
    pub store_name: String,
    /// Several replicas on one store: how this one takes part. `None`: a
    /// lone server, which leads for as long as it runs.
    pub cluster: Option<ClusterConfig>,
    /// Worker lease: silence longer than this and a worker is dead.
    pub lease_ms: u64,
    /// An HTTP worker must collect a task assigned to it within this long,
    /// or everything assigned to it goes back to the queue.
    pub collect_ms: u64,
    /// The longest the scheduler's timer sleeps when nothing is due.
    /// Timers, leases and timeouts wake it when they fall due whatever
    /// this is; the idle tick is only a safety net.
    pub idle_tick_ms: u64,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How long finished tasks (and their results) are kept.
    pub retention_ms: u64,
    /// Queue and type settings (weights, limits, default strategies).
    pub queue_settings: QueueSettings,
    /// Accepted bearer tokens; `None` serves without authentication.
    pub tokens: Option<Tokens>,
    /// Allow listening beyond loopback without tokens.
    pub insecure: bool,
    /// Most live tasks the server holds; submissions beyond answer 429.
    pub max_live_tasks: usize,
    /// Most tasks one request may create, copies of a `broadcast` and
    /// shards included; requests beyond answer 413.
    pub max_tasks_per_request: u64,
    /// Most memory live tasks may take, in bytes (estimated per task from
    /// its payload and strings plus a fixed overhead); submissions beyond
    /// answer 429.
    pub max_memory_bytes: u64,
    /// File that admin actions and refused requests are appended to, one
    /// JSON line each; `None` keeps no audit log.
    pub audit_log: Option<PathBuf>,
    /// Certificate and key to serve HTTPS (REST and gRPC on the same
    /// port); `None` serves cleartext HTTP.
    pub tls: Option<TlsFiles>,
    /// Most connections open at once; past it a new connection is answered
    /// 503 and closed. Lowered at start when the open-files limit (raised
    /// to its hard limit) could not hold them.
    pub max_connections: usize,
    /// Time an HTTP/1.1 client has to send a whole request head, counted
    /// from its first byte (or from the connection's opening).
    pub header_timeout: std::time::Duration,
    /// Time an HTTP/1.1 keep-alive connection may sit without a request
    /// before it is closed.
    pub idle_timeout: std::time::Duration,
    /// Bounds on one worker's registration (types, labels, label size).
    pub worker_limits: dispatch_proto::worker::RegistrationLimits,
    /// Most workers registered at once; registrations beyond answer 429.
    pub max_workers: usize,
    /// Payload and result bytes one page of `GET /v1/tasks` may carry; a
    /// page stops early at it and gives a `next_cursor`.
    pub max_list_bytes: usize,
    /// Size at which the audit log is rotated (`FILE.1`, `FILE.2`, ...).
    pub audit_log_max_bytes: u64,
}

impl ServerConfig {
    /// The defaults of the contract, for a store named `store_name` in
    /// logs and errors.
    pub fn new(listen: SocketAddr, store_name: impl Into<String>) -> Self {
        ServerConfig {
            listen,
            store_name: store_name.into(),
            cluster: None,
            lease_ms: 10_000,
            collect_ms: 3_000,
            idle_tick_ms: 1_000,
            max_body_bytes: 10 * 1024 * 1024,
            retention_ms: 7 * 24 * 3_600_000,
            queue_settings: QueueSettings::default(),
            tokens: None,
            insecure: false,
            max_live_tasks: 1_000_000,
            max_tasks_per_request: 100_000,
            max_memory_bytes: 1 << 30,
            audit_log: None,
            tls: None,
            max_connections: 10_000,
            header_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(60),
            worker_limits: dispatch_proto::worker::RegistrationLimits::default(),
            max_workers: 10_000,
            max_list_bytes: 4 << 20,
            audit_log_max_bytes: 100 << 20,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be read.
    #[error("cannot read the store {store}: {source}")]
    Store {
        /// The store's name.
        store: String,
        /// What failed.
        source: dispatch_store::StoreError,
    },
    /// A non-loopback address without tokens, and no `insecure`.
    #[error(
        "refusing to listen on {0} without tokens: anyone who can reach it could submit and run tasks; pass --tokens FILE (see `dispatch token create`) or --insecure"
    )]
    Insecure(SocketAddr),
    /// The audit log could not be opened.
    #[error("cannot open the audit log {path}: {source}")]
    AuditLog {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The client that forwards a standby's requests could not be made.
    #[error("cannot set up forwarding to the leader: {0}")]
    Proxy(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
}

/// A server running on the current tokio runtime.
pub struct RunningServer {
    addr: SocketAddr,
    node: Arc<cluster::Node>,
    serve: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting requests, lets the ones in progress finish, waits
    /// until the writer has committed everything and, when it led other
    /// replicas, hands the lead over at once.
    pub async fn shutdown(self) {
        self.node.begin_stop();
        let _ = self.serve.await;
        self.node.finish().await;
    }

    /// Serves until the process gets Ctrl-C or SIGTERM, then shuts down.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn check_exposure(config: &ServerConfig) -> Result<(), StartError> {
    if !config.listen.ip().is_loopback() && config.tokens.is_none() && !config.insecure {
        return Err(StartError::Insecure(config.listen));
    }
    Ok(())
}

/// Recovers from `store`, binds and starts serving.
///
/// The caller opens the store (the binary chooses the backend from its
/// flags; tests wrap one in [`dispatch_store::FaultyStore`]) and keeps
/// whatever guards it (the SQLite folder's lock) for the server's life.
/// With [`ServerConfig::cluster`], the server is one replica of several on
/// the store: it serves as a standby, forwarding to the leader, until it
/// wins the lease.
pub async fn start(
    config: ServerConfig,
    store: Arc<dyn Store>,
) -> Result<RunningServer, StartError> {
    check_exposure(&config)?;
    let tls = config
        .tls
        .as_ref()
        .map(tls::ReloadableAcceptor::load)
        .transpose()?
        .map(Arc::new);
    let audit = match &config.audit_log {
        Some(path) => Some(
            audit::AuditLog::open(path, config.audit_log_max_bytes).map_err(|source| {
                StartError::AuditLog {
                    path: path.clone(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let proxy = reqwest::Client::builder()
        .tls_backend_preconfigured(tls::forwarding_config(config.tls.as_ref())?)
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .map_err(|e| StartError::Proxy(e.to_string()))?;
    let node = cluster::Node::start(config.clone(), store, audit, addr, proxy)
        .await
        .map_err(|source| StartError::Store {
            store: config.store_name.clone(),
            source,
        })?;
    let router = node.router();
    tokio::spawn(reload::reload_loop(
        config.tokens.clone(),
        tls.clone(),
        node.stopping(),
    ));
    let mut stopped = node.stopping();
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let limits = serve::ConnLimits {
        max_connections: serve::fit_open_files(config.max_connections),
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
    };
    let serve = match tls {
        None => tokio::spawn(serve::serve(listener, router, limits, shutdown)),
        Some(acceptor) => {
            let listener = tls::TlsListener::new(listener, acceptor);
            tokio::spawn(serve::serve(listener, router, limits, shutdown))
        }
    };
    match &config.tokens {
        Some(t) => tracing::info!(tokens = t.len(), "bearer token authentication on"),
        None => tracing::warn!("no --tokens: every endpoint is open to anyone who can reach it"),
    }
    tracing::info!(
        %addr,
        tls = config.tls.is_some(),
        store = %config.store_name,
        replica = config.cluster.as_ref().map(|c| c.replica.id.as_str()),
        "dispatch server listening"
    );
    Ok(RunningServer { addr, node, serve })
}
