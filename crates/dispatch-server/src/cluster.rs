//! Replicas: one leads, the others stand by and forward to it.
//!
//! A [`Node`] is this process's server. Its [`Role`] says what it does with
//! a request:
//!
//! - **Leader**: a [`Term`] runs — the core restored from the store, the
//!   group-commit writer fenced by the term's epoch, the timer, purge and
//!   cron loops, and the router of every endpoint.
//! - **Taking over**: it won the lease and is restoring the state; requests
//!   are answered 503 with `Retry-After` until the term runs.
//! - **Standby**: requests are forwarded to the leader's URL (gRPC streams
//!   are refused `UNAVAILABLE`, naming the leader in the `dispatch-leader`
//!   metadata), so that clients and workers may be given any replica.
//!
//! A lone server (no [`ClusterConfig`]) leads from start to stop, unfenced.
//! In a cluster the election loop claims the store's lease every third of
//! `lease_ms`, on the store's clock. A leader steps down, ending its term
//! (long polls and worker streams end with it), as soon as its writes are
//! refused for a stale epoch, or when it could not renew for five sixths of
//! the lease: before the lease can run out under it, whatever its clock
//! says. `/healthz`, `GET /v1/cluster`, `/openapi.json` and the gRPC health
//! and reflection services (`grpc_tools`) are answered by every replica
//! itself.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dispatch_proto::{ClusterJson, HealthJson, ReplicaJson};
use dispatch_store::{DEFAULT_PARTITION, Lease, Replica, Store, StoreError};
use tokio::sync::watch;

use crate::ServerConfig;
use crate::api::{ApiError, json};
use crate::app::App;
use crate::audit::AuditLog;

/// How a server takes part in a cluster of replicas on one store.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This replica: its id, unique among the replicas, and the URL the
    /// others, clients and workers reach it at (`--advertise-url`). An
    /// empty URL is the address the server binds (`http://IP:PORT`); an
    /// empty id is the URL.
    pub replica: Replica,
    /// The leader's lease, renewed about every third of it.
    pub lease_ms: u64,
}

/// Set on a request a standby forwards, with its replica id: a replica
/// that gets one and does not lead answers 503 instead of forwarding again.
const FORWARDED_BY: &str = "dispatch-forwarded-by";

/// gRPC metadata naming the leader's URL, on `UNAVAILABLE` from a standby.
const LEADER_METADATA: &str = "dispatch-leader";

/// What this replica does with requests now.
#[derive(Clone)]
enum Role {
    Leader(Arc<Term>),
    TakingOver { epoch: u64 },
    Standby { leader: Option<Leader>, epoch: u64 },
}

impl Role {
    /// What a change of role is judged by: the role, the epoch and the
    /// leader this replica knows.
    fn identity(&self) -> (u8, u64, Option<&str>) {
        match self {
            Role::Leader(term) => (0, term.epoch.unwrap_or(0), None),
            Role::TakingOver { epoch } => (1, *epoch, None),
            Role::Standby { leader, epoch } => (2, *epoch, leader.as_ref().map(|l| l.id.as_str())),
        }
    }
}

#[derive(Clone, Debug)]
struct Leader {
    id: String,
    url: String,
}

/// A leader's term: the scheduler restored from the store, and everything
/// that runs while it leads.
pub(crate) struct Term {
    app: Arc<App>,
    router: Router,
    epoch: Option<u64>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Term {
    /// Restores the state from the store and starts the term's loops.
    async fn open(
        config: ServerConfig,
        store: Arc<dyn Store>,
        audit: Option<AuditLog>,
        epoch: Option<u64>,
    ) -> Result<Arc<Term>, StoreError> {
        let joined = |e: tokio::task::JoinError| {
            StoreError::new(dispatch_store::ErrorKind::Unavailable, e.to_string())
        };
        let (app, writer) =
            tokio::task::spawn_blocking(move || App::open(config, store, audit, epoch))
                .await
                .map_err(joined)??;
        let schedules = {
            let app = app.clone();
            tokio::task::spawn_blocking(move || app.store.list_schedules())
                .await
                .map_err(joined)?
        };
        let schedules = match schedules {
            Ok(s) => s,
            Err(e) => {
                app.begin_stop();
                return Err(e);
            }
        };
        app.schedules.load(schedules, &app.budget);
        tokio::spawn(crate::app::timer_loop(app.clone()));
        tokio::spawn(crate::app::purge_loop(app.clone()));
        tokio::spawn(crate::schedules::schedule_loop(app.clone()));
        let router = crate::router::router(app.clone());
        Ok(Arc::new(Term {
            app,
            router,
            epoch,
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// Ends the term: long polls, streams and loops stop; the writer
    /// commits what it holds (unless fenced) once the last request is done.
    fn end(&self) -> Option<std::thread::JoinHandle<()>> {
        self.app.begin_stop();
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// This process's server: its role and what it needs to change it.
pub(crate) struct Node {
    config: ServerConfig,
    store: Arc<dyn Store>,
    audit: Option<AuditLog>,
    /// This replica's id and URL (a lone server: its listen address).
    me: Replica,
    role: RwLock<Role>,
    /// The lease as the last claim found it.
    lease: Mutex<Option<Lease>>,
    stop_tx: watch::Sender<bool>,
    /// Counts changes of role (and so of the leader this replica knows):
    /// a request forwarded to a leader that was replaced is answered 503
    /// at once instead of waiting on it.
    role_changes: watch::Sender<u64>,
    /// Writer threads of ended terms, joined at shutdown.
    ended: Mutex<Vec<std::thread::JoinHandle<()>>>,
    proxy: reqwest::Client,
}

impl Node {
    /// A lone server leads at once; a replica claims the lease once, then
    /// keeps claiming in the background.
    pub(crate) async fn start(
        config: ServerConfig,
        store: Arc<dyn Store>,
        audit: Option<AuditLog>,
        addr: std::net::SocketAddr,
        proxy: reqwest::Client,
    ) -> Result<Arc<Node>, StoreError> {
        // Without an advertised URL (or id), the listen address it bound.
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut me = config.cluster.as_ref().map_or_else(
            || Replica {
                id: String::new(),
                url: String::new(),
            },
            |c| c.replica.clone(),
        );
        if me.url.is_empty() {
            me.url = format!("{scheme}://{addr}");
        }
        if me.id.is_empty() {
            me.id = me.url.clone();
        }
        let mut config = config;
        if let Some(c) = &mut config.cluster {
            c.replica = me.clone();
        }
        let (stop_tx, _) = watch::channel(false);
        let lone = config.cluster.is_none();
        let node = Arc::new(Node {
            role: RwLock::new(Role::Standby {
                leader: None,
                epoch: 0,
            }),
            lease: Mutex::new(None),
            config,
            store,
            audit,
            me,
            stop_tx,
            role_changes: watch::channel(0).0,
            ended: Mutex::new(Vec::new()),
            proxy,
        });
        if lone {
            let term = Term::open(
                node.config.clone(),
                node.store.clone(),
                node.audit.clone(),
                None,
            )
            .await?;
            *node.role.write().unwrap_or_else(|e| e.into_inner()) = Role::Leader(term);
        } else {
            tokio::spawn(election_loop(node.clone()));
        }
        Ok(node)
    }

    fn role(&self) -> Role {
        self.role.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_role(&self, role: Role) -> Role {
        let mut current = self.role.write().unwrap_or_else(|e| e.into_inner());
        let changed = current.identity() != role.identity();
        let old = std::mem::replace(&mut *current, role);
        drop(current);
        if changed {
            self.role_changes.send_modify(|n| *n += 1);
        }
        old
    }

    /// Flips to true when the server shuts down.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Signals shutdown: the term's long polls, streams and loops end.
    pub(crate) fn begin_stop(&self) {
        let _ = self.stop_tx.send(true);
        if let Role::Leader(term) = self.role() {
            term.app.begin_stop();
        }
    }

    /// After the last connection closed: ends the term, waits for its
    /// writer to commit everything, and releases the lease so that a
    /// standby takes over without waiting for it to expire.
    pub(crate) async fn finish(&self) {
        let role = self.set_role(Role::Standby {
            leader: None,
            epoch: 0,
        });
        let mut threads: Vec<_> =
            std::mem::take(&mut *self.ended.lock().unwrap_or_else(|e| e.into_inner()));
        let mut epoch = None;
        if let Role::Leader(term) = role {
            threads.extend(term.end());
            epoch = term.epoch;
            drop(term);
        }
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        if let Some(epoch) = epoch {
            let (store, me) = (self.store.clone(), self.me.clone());
            let released = tokio::task::spawn_blocking(move || {
                store.release_lease(DEFAULT_PARTITION, &me, epoch)
            })
            .await;
            match released {
                Ok(Ok(())) => tracing::info!(epoch, "released the lead"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot release the lead; it expires by itself")
                }
                Err(_) => {}
            }
        }
    }

    /// Ends the current term, if any, and stands by.
    fn step_down(&self, leader: Option<Leader>, epoch: u64, why: &str) {
        let old = self.set_role(Role::Standby { leader, epoch });
        match old {
            Role::Leader(term) => {
                tracing::warn!(
                    epoch = term.epoch,
                    why,
                    "stepping down: this replica no longer leads"
                );
                if let Some(t) = term.end() {
                    self.ended.lock().unwrap_or_else(|e| e.into_inner()).push(t);
                }
            }
            Role::TakingOver { epoch } => {
                tracing::warn!(epoch, why, "giving up the takeover");
            }
            Role::Standby { .. } => {}
        }
    }

    /// What the last claim said: act on it.
    fn on_lease(self: &Arc<Self>, lease: Lease, sent: Instant, renewed_at: &mut Option<Instant>) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease.clone());
        if !lease.held {
            let leader = Some(Leader {
                id: lease.holder.clone(),
                url: lease.holder_url.clone(),
            });
            match self.role() {
                Role::Standby { .. } => {
                    self.set_role(Role::Standby {
                        leader,
                        epoch: lease.epoch,
                    });
                }
                _ => self.step_down(leader, lease.epoch, "another replica holds the lease"),
            }
            *renewed_at = None;
            return;
        }
        match self.role() {
            Role::Leader(term) if term.epoch == Some(lease.epoch) && !term.app.is_fenced() => {
                *renewed_at = Some(sent);
            }
            Role::TakingOver { epoch } if epoch == lease.epoch => *renewed_at = Some(sent),
            _ => {
                self.step_down(None, lease.epoch, "a new term begins");
                self.set_role(Role::TakingOver { epoch: lease.epoch });
                *renewed_at = Some(sent);
                tracing::info!(epoch = lease.epoch, "won the lease: taking over");
                tokio::spawn(take_over(self.clone(), lease.epoch));
            }
        }
    }

    /// The router every request goes through: `/healthz`, `/v1/cluster`,
    /// `/openapi.json` and the gRPC health and reflection services here, the
    /// rest by role.
    pub(crate) fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/healthz", axum::routing::get(healthz))
            .merge(crate::grpc_tools::router(self.clone()))
            .route("/v1/cluster", axum::routing::get(cluster))
            .route("/openapi.json", axum::routing::get(crate::openapi::serve))
            .fallback(|State(node): State<Arc<Node>>, req: Request| async move {
                node.handle(req).await
            })
            .method_not_allowed_fallback(crate::router::method_not_allowed)
            .layer(axum::middleware::from_fn(
                crate::router::refuse_unknown_query,
            ))
            .with_state(self.clone())
    }

    async fn handle(self: Arc<Self>, req: Request) -> Response {
        let path = req.uri().path();
        let grpc = path.starts_with(crate::auth::GRPC_PREFIX);
        match self.role() {
            Role::Leader(term) => {
                let mut router = term.router.clone();
                match tower_service::Service::call(&mut router, req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
            Role::TakingOver { .. } => unavailable(
                grpc,
                "this replica is taking over the lead; retry shortly",
                None,
            ),
            Role::Standby { leader: None, .. } => {
                unavailable(grpc, "no replica leads right now; retry shortly", None)
            }
            Role::Standby {
                leader: Some(leader),
                ..
            } => {
                if grpc {
                    return unavailable(
                        true,
                        &format!("this replica stands by; the leader is {}", leader.url),
                        Some(&leader.url),
                    );
                }
                if req.headers().contains_key(FORWARDED_BY) || leader.id == self.me.id {
                    return unavailable(false, "this replica does not lead; retry shortly", None);
                }
                self.forward(req, &leader).await
            }
        }
    }

    /// Sends `req` on to the leader and its answer back.
    async fn forward(&self, req: Request, leader: &Leader) -> Response {
        let (parts, body) = req.into_parts();
        let body = match axum::body::to_bytes(body, self.config.max_body_bytes).await {
            Ok(b) => b,
            Err(_) => {
                return ApiError::new(
                    413,
                    format!(
                        "the request body is larger than {} bytes",
                        self.config.max_body_bytes
                    ),
                )
                .into_response();
            }
        };
        let target = format!(
            "{}{}",
            leader.url.trim_end_matches('/'),
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut outgoing = self.proxy.request(parts.method, &target);
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                outgoing = outgoing.header(name, value);
            }
        }
        let mut changed = self.role_changes.subscribe();
        changed.mark_unchanged();
        let sending = outgoing
            .header(FORWARDED_BY, self.me.id.as_str())
            .body(body)
            .send();
        let sent = tokio::select! {
            sent = sending => sent,
            // A frozen or dead leader would hold the request forever.
            _ = changed.changed() => {
                return unavailable(false, "the leader changed while the request waited; retry", None);
            }
        };
        let answer = match sent {
            Ok(a) => a,
            Err(e) => {
                return ApiError::new(
                    503,
                    format!("the leader at {} cannot be reached: {e}", leader.url),
                )
                .into_response();
            }
        };
        let status = answer.status();
        let headers = answer.headers().clone();
        let body = match answer.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return ApiError::new(
                    502,
                    format!("the leader at {} broke off its answer: {e}", leader.url),
                )
                .into_response();
            }
        };
        let mut resp = (status, body).into_response();
        for (name, value) in &headers {
            if !hop_by_hop(name) && name != header::CONTENT_LENGTH {
                resp.headers_mut().append(name, value.clone());
            }
        }
        resp
    }

    /// `GET /healthz`: the leader's health with this replica's role.
    fn healthz(&self) -> Response {
        let (status, mut body, role, epoch, leader) = match self.role() {
            Role::Leader(term) => {
                let (status, body) = crate::metrics::health(&term.app);
                let leader = Some(Leader {
                    id: self.me.id.clone(),
                    url: self.me.url.clone(),
                });
                (status, body, "leader", term.epoch.unwrap_or(0), leader)
            }
            Role::TakingOver { epoch } => (
                StatusCode::OK,
                HealthJson {
                    status: "taking_over".to_owned(),
                    ..HealthJson::default()
                },
                "standby",
                epoch,
                None,
            ),
            Role::Standby { leader, epoch } => (
                StatusCode::OK,
                HealthJson {
                    status: "ok".to_owned(),
                    ..HealthJson::default()
                },
                "standby",
                epoch,
                leader,
            ),
        };
        body.role = role.to_owned();
        body.epoch = epoch;
        body.replica = self.me.id.clone();
        body.leader_url = leader.map(|l| l.url);
        json(status, &body)
    }

    /// `GET /v1/cluster`: the replicas the store knows, their roles and the
    /// epoch.
    async fn cluster(&self, req: Request) -> Response {
        if let Err(e) = crate::auth::any_token(self.config.tokens.as_ref(), &req) {
            return e.into_response();
        }
        let store = self.store.clone();
        let replicas = match tokio::task::spawn_blocking(move || store.list_replicas()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return ApiError::from(e).into_response(),
            Err(e) => return ApiError::new(500, e.to_string()).into_response(),
        };
        let (leader_id, epoch) = match self.role() {
            Role::Leader(term) => (Some(self.me.id.clone()), term.epoch.unwrap_or(0)),
            Role::Standby { leader, epoch } => (leader.map(|l| l.id), epoch),
            Role::TakingOver { epoch } => (None, epoch),
        };
        let lease_ms = self.config.cluster.as_ref().map_or(0, |c| c.lease_ms);
        let now = crate::clock::wall_ms();
        let replicas = replicas
            .iter()
            .map(|r| {
                let role = if Some(&r.id) == leader_id.as_ref() {
                    "leader"
                } else {
                    "standby"
                };
                ReplicaJson {
                    id: r.id.clone(),
                    url: r.url.clone(),
                    role: role.to_owned(),
                    last_seen_at: dispatch_proto::time::format_rfc3339(r.last_seen_at),
                    // Seen within two leases: it claims every third of one.
                    alive: lease_ms == 0 || now.saturating_sub(r.last_seen_at) <= 2 * lease_ms,
                }
            })
            .collect();
        let body = ClusterJson {
            partition: DEFAULT_PARTITION.to_owned(),
            epoch,
            leader: leader_id,
            replica: self.me.id.clone(),
            replicas,
        };
        json(StatusCode::OK, &body)
    }
}

impl crate::grpc_tools::Readiness for Node {
    /// Like `/healthz`'s status: leading, with a store that takes writes.
    fn serving(&self) -> bool {
        if *self.stop_tx.borrow() {
            return false;
        }
        match self.role() {
            Role::Leader(term) => {
                let health = term.app.store_health();
                !health.is_failing() && !health.is_fenced()
            }
            Role::TakingOver { .. } | Role::Standby { .. } => false,
        }
    }

    fn role_changes(&self) -> watch::Receiver<u64> {
        self.role_changes.subscribe()
    }

    fn stopping(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }
}

/// `GET /healthz`, answered by every replica itself.
#[utoipa::path(
    get,
    path = "/healthz",
    summary = "Health",
    description = "Answered by every replica itself: its role, the term, and the leader's health.",
    tag = "operations",
    responses(
        (status = 200, description = "The store takes writes (or this replica stands by).", body = HealthJson),
        (status = 503, description = "The leader's store fails: nothing new is accepted until it works again.", body = HealthJson),
    ),
)]
async fn healthz(State(node): State<Arc<Node>>) -> Response {
    node.healthz()
}

/// `GET /v1/cluster`, answered by every replica itself.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    summary = "Replicas",
    description = "Answered by every replica itself: the replicas sharing the store, which leads, and the term.",
    tag = "operations",
    responses(
        (status = 200, description = "The replicas sharing the store, the leader and the term.", body = ClusterJson),
    ),
)]
async fn cluster(State(node): State<Arc<Node>>, req: Request) -> Response {
    node.cluster(req).await
}

/// Headers of one connection, not of the request: never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::HOST
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
}

/// 503 with `Retry-After: 1`, or for gRPC `UNAVAILABLE` with the leader's
/// URL in the `dispatch-leader` metadata when it is known.
fn unavailable(grpc: bool, why: &str, leader: Option<&str>) -> Response {
    if !grpc {
        let mut resp = ApiError::new(503, why).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    let mut resp = StatusCode::OK.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("14"));
    if let Ok(v) =
        HeaderValue::from_str(&why.replace(|c: char| !c.is_ascii_graphic() && c != ' ', ""))
    {
        headers.insert("grpc-message", v);
    }
    if let Some(v) = leader.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(LEADER_METADATA, v);
    }
    resp
}

/// Restores the state for a term won at `epoch` and, unless the lead was
/// lost meanwhile, starts leading.
async fn take_over(node: Arc<Node>, epoch: u64) {
    let started = Instant::now();
    let opened = Term::open(
        node.config.clone(),
        node.store.clone(),
        node.audit.clone(),
        Some(epoch),
    )
    .await;
    let term = match opened {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(epoch, error = %e, "cannot restore the state; standing by");
            if matches!(node.role(), Role::TakingOver { epoch: e } if e == epoch) {
                node.set_role(Role::Standby {
                    leader: None,
                    epoch,
                });
            }
            return;
        }
    };
    let mut role = node.role.write().unwrap_or_else(|e| e.into_inner());
    match &*role {
        Role::TakingOver { epoch: e } if *e == epoch && !*node.stop_tx.borrow() => {
            tracing::info!(
                epoch,
                restore_ms = started.elapsed().as_millis() as u64,
                "leading"
            );
            *role = Role::Leader(term);
            node.role_changes.send_modify(|n| *n += 1);
        }
        _ => {
            drop(role);
            if let Some(t) = term.end() {
                node.ended.lock().unwrap_or_else(|e| e.into_inner()).push(t);
            }
        }
    }
}

/// Claims the lease every third of it until the server stops; between
/// claims, watches for the end of the lead.
async fn election_loop(node: Arc<Node>) {
    let Some(mut cluster) = node.config.cluster.clone() else {
        return;
    };
    cluster.replica = node.me.clone();
    let lease_ms = cluster.lease_ms.max(3);
    let every = Duration::from_millis(lease_ms / 3);
    // A lead is given up this long after the claim that last renewed it
    // was sent: the store granted it at that moment or later.
    let hold = Duration::from_millis(lease_ms * 5 / 6);
    let mut stop = node.stopping();
    let mut renewed_at: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        let claim = {
            let (store, me) = (node.store.clone(), cluster.replica.clone());
            tokio::time::timeout(
                every,
                tokio::task::spawn_blocking(move || {
                    store.claim_lease(DEFAULT_PARTITION, &me, lease_ms)
                }),
            )
            .await
        };
        if *stop.borrow() {
            return;
        }
        match claim {
            Ok(Ok(Ok(lease))) => node.on_lease(lease, sent, &mut renewed_at),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "cannot claim the lease"),
            Ok(Err(e)) => tracing::error!(error = %e, "the lease claim panicked"),
            Err(_) => tracing::warn!("the lease claim timed out"),
        }
        let next = sent + every;
        loop {
            let lost = match node.role() {
                Role::Leader(term) if term.app.is_fenced() => {
                    Some("its writes were refused: another replica leads")
                }
                Role::Leader(_) | Role::TakingOver { .. }
                    if renewed_at.is_none_or(|at| at.elapsed() >= hold) =>
                {
                    Some("the lease could not be renewed in time")
                }
                _ => None,
            };
            if let Some(why) = lost {
                let epoch = node
                    .lease
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map_or(0, |l| l.epoch);
                node.step_down(None, epoch, why);
                renewed_at = None;
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep((next - now).min(Duration::from_millis(50))) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}
