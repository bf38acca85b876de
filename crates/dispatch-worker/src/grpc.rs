//! The gRPC transport: one `dispatch.v1.WorkerService/Connect` stream per
//! session.
//!
//! A session connects, sends `Register`, waits for `Registered`, grants
//! `concurrency` credits, then runs one loop over four inputs:
//! - messages from the scheduler: `Tasks` start attempts (never more than
//!   the credit granted, so never more than `concurrency` at once), `Stop`
//!   flips an attempt's cancel switch, `ReportAcks` are logged;
//! - attempts that ended: their reports go out together in one `Reports`
//!   message, followed by one `Credit` for the slots they freed;
//! - a heartbeat tick, so that an idle worker keeps its lease;
//! - shutdown: stop granting credit and starting tasks, let the running
//!   ones finish and report, then half-close the stream, which the
//!   scheduler takes as a graceful leave, and wait for it to end the stream.
//!
//! A stream that breaks ends the session: the scheduler has requeued what
//! this worker held, so the attempts in hand are stopped, and the worker
//! connects and registers again with backoff. Attempts run through
//! `run::attempt`, the same code as over HTTP.
//!
//! The worker may be given several replicas (comma-separated URLs, as for
//! the client). One that cannot be reached, or refuses the stream, passes
//! the turn to the next at once; the backoff applies once every URL has
//! failed. A standby refuses the stream `UNAVAILABLE` with the leader's URL
//! in the `dispatch-leader` metadata: the worker connects to that leader
//! next, without waiting.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use dispatch_client::TrustStore;
use dispatch_grpc::WorkerServiceClient;
use dispatch_grpc::pb::{self, scheduler_message::Kind};
use dispatch_proto::RegisterWorker;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};

use crate::handler::TaskError;
use crate::run::{Backoff, attempt};
use crate::{Worker, WorkerError};

/// Messages queued for the scheduler before the session waits for the
/// connection to take them.
const OUTBOUND_QUEUE: usize = 256;

/// How long connecting and registering may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a leaving worker waits for the scheduler to confirm.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// gRPC metadata in which a standby names the leader.
const LEADER_METADATA: &str = "dispatch-leader";

/// The replicas a gRPC worker may connect to, in the order given.
pub(crate) struct Targets {
    /// Each URL and its connection settings.
    listed: Vec<(String, Endpoint)>,
    /// The roots for a leader's `https://` URL learnt from a standby.
    tls: Option<TrustStore>,
}

impl Targets {
    /// The comma-separated URLs of `servers`.
    pub(crate) fn new(servers: &str, tls: Option<&TrustStore>) -> Result<Targets, WorkerError> {
        let listed = servers
            .split(',')
            .map(|s| s.trim().trim_end_matches('/'))
            .map(|s| Ok((s.to_owned(), endpoint(s, tls)?)))
            .collect::<Result<Vec<_>, WorkerError>>()?;
        Ok(Targets {
            listed,
            tls: tls.cloned(),
        })
    }
}

/// The connection settings for the scheduler at `server`; `tls` holds the
/// roots to verify an `https://` scheduler with.
fn endpoint(server: &str, tls: Option<&TrustStore>) -> Result<Endpoint, WorkerError> {
    let mut endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| WorkerError::Config(format!("{server:?} is not a usable URL: {e}")))?;
    if let Some(trust) = tls {
        // tonic offers ALPN `h2` and verifies the host of the URL.
        let config = ClientTlsConfig::new().trust_anchors(trust.roots().roots.iter().cloned());
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| WorkerError::Config(format!("cannot set up TLS for {server}: {e}")))?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A scheduler that vanished without closing the connection is
        // noticed by HTTP/2 pings, not only by a write that never ends.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// How a session ended.
enum SessionEnd {
    /// Shutdown was asked for; the worker left (or could not, and its lease
    /// will tell).
    Shutdown,
    /// The stream could not be opened or broke; connect again.
    Dropped {
        /// Whether the scheduler had accepted the registration.
        registered: bool,
        /// The leader a standby named when it refused the stream.
        leader: Option<String>,
    },
}

pub(crate) async fn run(w: Worker, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Backoff::new();
    let listed = &w.targets.listed;
    // The listed URL tried next, and the leader a standby named, tried
    // before it.
    let mut at = 0;
    let mut named: Option<(String, Endpoint)> = None;
    loop {
        let following = named.take();
        let (url, target) = following.as_ref().unwrap_or(&listed[at]);
        match session(&w, url, target, shutdown.as_mut()).await? {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Dropped { registered, leader } => {
                if registered {
                    backoff = Backoff::new();
                }
                // Follow a standby to its leader at once, but not from one
                // leader named to the next: that is a takeover under way,
                // which the backoff waits out.
                if let Some(leader) = leader
                    && following.is_none()
                {
                    match endpoint(&leader, w.targets.tls.as_ref()) {
                        Ok(e) => {
                            tracing::info!(standby = %url, leader = %leader, "connecting to the leader");
                            named = Some((leader, e));
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(leader = %leader, error = %e, "cannot use the leader's URL")
                        }
                    }
                }
                // A listed URL that failed before registering passes the
                // turn to the next one; the backoff waits once all failed.
                if !registered && following.is_none() {
                    at = (at + 1) % listed.len();
                    if at != 0 {
                        continue;
                    }
                }
                let delay = backoff.next();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.as_mut() => return Ok(()),
                }
            }
        }
    }
}

fn registration(w: &Worker) -> pb::Register {
    pb::Register::from(&RegisterWorker {
        name: Some(w.name.clone()),
        types: Some(w.types()),
        labels: Some(w.labels.clone()),
        capacity: Some(w.concurrency as i64),
        weight: None,
    })
}

/// Why a stream could not be opened.
enum OpenError {
    /// The scheduler said no; retrying would not help.
    Refused(String),
    /// Try again later.
    Retry(String),
    /// A standby: the leader is at this URL.
    Standby(String),
}

impl From<Status> for OpenError {
    fn from(s: Status) -> Self {
        let leader = s
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        if s.code() == Code::Unavailable
            && let Some(leader) = leader
        {
            return OpenError::Standby(leader.to_owned());
        }
        match s.code() {
            Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated => {
                OpenError::Refused(s.message().to_owned())
            }
            // An HTTP 404: a scheduler without this protocol.
            Code::Unimplemented => OpenError::Refused(format!(
                "the scheduler does not serve the gRPC worker protocol ({}); use Transport::Http",
                s.message()
            )),
            _ => OpenError::Retry(format!("{}: {}", s.code(), s.message())),
        }
    }
}

/// Connects, registers and waits for `Registered`.
async fn open(
    w: &Worker,
    endpoint: &Endpoint,
    outbound: mpsc::Receiver<pb::WorkerMessage>,
) -> Result<(Streaming<pb::SchedulerMessage>, pb::Registered), OpenError> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| OpenError::Retry(format!("cannot connect: {e}")))?;
    let mut client = WorkerServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut request = tonic::Request::new(ReceiverStream::new(outbound));
    if let Some(b) = &w.bearer {
        request.metadata_mut().insert("authorization", b.clone());
    }
    let mut inbound = client.connect(request).await?.into_inner();
    match inbound.message().await? {
        Some(pb::SchedulerMessage {
            kind: Some(Kind::Registered(r)),
        }) => Ok((inbound, r)),
        other => Err(OpenError::Retry(format!(
            "the scheduler answered Register with {other:?}"
        ))),
    }
}

/// One registration with the scheduler at `url`, from connecting to the
/// end of the stream.
async fn session(
    w: &Worker,
    url: &str,
    endpoint: &Endpoint,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<SessionEnd, WorkerError> {
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    // The queue is new and empty: this cannot fail.
    let _ = tx.try_send(pb::WorkerMessage::register(registration(w)));
    let opened = tokio::select! {
        r = tokio::time::timeout(OPEN_TIMEOUT, open(w, endpoint, rx)) => {
            r.unwrap_or_else(|_| Err(OpenError::Retry("no answer to Register".into())))
        }
        _ = shutdown.as_mut() => return Ok(SessionEnd::Shutdown),
    };
    let (inbound, registered) = match opened {
        Ok(x) => x,
        Err(OpenError::Refused(why)) => return Err(WorkerError::Refused(why)),
        Err(OpenError::Retry(why)) => {
            tracing::warn!(server = %url, error = %why, "cannot open a gRPC session; retrying");
            return Ok(SessionEnd::Dropped {
                registered: false,
                leader: None,
            });
        }
        Err(OpenError::Standby(leader)) => {
            return Ok(SessionEnd::Dropped {
                registered: false,
                leader: Some(leader),
            });
        }
    };
    tracing::info!(worker = %registered.worker_id, server = %url, types = ?w.types(), "registered over gRPC");
    let credit = u32::try_from(w.concurrency).unwrap_or(u32::MAX);
    let _ = tx.send(pb::WorkerMessage::credit(credit)).await;
    let session = Session {
        w,
        worker_id: registered.worker_id.clone(),
        tx: Some(tx),
        running: HashMap::new(),
        attempts: JoinSet::new(),
        spawned: HashMap::new(),
        next_seq: 0,
        stopping: false,
    };
    let heartbeat = Duration::from_millis(registered.heartbeat_ms.max(1));
    Ok(session.run(inbound, heartbeat, shutdown).await)
}

/// What an attempt's tokio task returns.
struct Done {
    task_id: String,
    seq: u64,
    /// `None` when the scheduler stopped it.
    outcome: Option<Result<Box<RawValue>, TaskError>>,
}

/// The state of one open stream.
struct Session<'a> {
    w: &'a Worker,
    worker_id: String,
    /// To the scheduler; `None` once half-closed (leaving).
    tx: Option<mpsc::Sender<pb::WorkerMessage>>,
    /// The cancel switch of each running attempt, by task id, with the
    /// attempt's number in this session: a task that timed out may come
    /// back under the same id while its previous attempt is still stopping.
    running: HashMap<String, (u64, watch::Sender<bool>)>,
    attempts: JoinSet<Done>,
    /// Which attempt each tokio task runs, to report a handler that panicked.
    spawned: HashMap<tokio::task::Id, (String, u64)>,
    next_seq: u64,
    /// Shutdown was asked for: no new tasks, no more credit.
    stopping: bool,
}

impl Session<'_> {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::SchedulerMessage>,
        heartbeat: Duration,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> SessionEnd {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leave_by = None;
        loop {
            if self.stopping && self.attempts.is_empty() && self.tx.is_some() {
                // Everything in hand is reported: closing our side is the
                // leave. The scheduler ends the stream once it is durable.
                self.tx = None;
                leave_by = Some(tokio::time::Instant::now() + LEAVE_TIMEOUT);
                tracing::debug!(worker = %self.worker_id, "leaving");
            }
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(m)) => self.on_message(m),
                    Ok(None) if self.stopping => {
                        tracing::info!(worker = %self.worker_id, "left");
                        return SessionEnd::Shutdown;
                    }
                    Ok(None) => return self.dropped("the scheduler ended the stream").await,
                    Err(status) => {
                        let why = format!("{}: {}", status.code(), status.message());
                        return self.dropped(&why).await;
                    }
                },
                Some(joined) = self.attempts.join_next_with_id(), if !self.attempts.is_empty() => {
                    self.report(joined).await;
                }
                _ = tick.tick(), if self.tx.is_some() => {
                    self.send(pb::WorkerMessage::heartbeat()).await;
                }
                _ = shutdown.as_mut(), if !self.stopping => {
                    tracing::info!(worker = %self.worker_id, running = self.running.len(), "shutting down: finishing the tasks in hand");
                    self.stopping = true;
                }
                _ = sleep_until(leave_by), if leave_by.is_some() => {
                    tracing::warn!(worker = %self.worker_id, "the scheduler did not confirm the leave; its lease will expire");
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    fn on_message(&mut self, message: pb::SchedulerMessage) {
        match message.kind {
            Some(Kind::Tasks(batch)) => {
                for task in batch.tasks {
                    self.start(task);
                }
            }
            Some(Kind::Stop(stop)) => {
                for id in stop.task_ids {
                    if let Some((_, cancel)) = self.running.get(&id) {
                        let _ = cancel.send(true);
                    }
                }
            }
            Some(Kind::ReportAcks(acks)) => {
                for ack in acks.acks {
                    match ack.status {
                        200 => {}
                        409 => {
                            tracing::info!(task = %ack.task_id, "report refused: the scheduler took the task back")
                        }
                        _ => {
                            tracing::error!(task = %ack.task_id, status = ack.status, detail = %ack.detail, "report refused")
                        }
                    }
                }
            }
            Some(Kind::Registered(_)) | None => {}
        }
    }

    /// Starts one attempt in its own tokio task.
    fn start(&mut self, task: pb::Task) {
        if self.stopping {
            // Leaving gives it back to the scheduler, attempt not counted.
            tracing::debug!(task = %task.id, "not starting a task: shutting down");
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let task_id = task.id.clone();
        let key = task.id.clone();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        self.running.insert(task_id.clone(), (seq, cancel_tx));
        let handler = self.w.handlers.get(&task.r#type).cloned();
        let polled = dispatch_grpc::polled_task(task);
        let work = async move {
            let outcome = match (handler, polled) {
                (Some(handler), Ok(task)) => attempt(handler, &task, cancel_rx).await,
                (None, _) => Some(Err(TaskError::retry(
                    "this worker has no handler for the type",
                ))),
                (_, Err(e)) => Some(Err(TaskError::abort(e))),
            };
            Done {
                task_id,
                seq,
                outcome,
            }
        };
        let handle = self.attempts.spawn(work);
        self.spawned.insert(handle.id(), (key, seq));
    }

    /// Sends the reports of every attempt that has ended, and the credit
    /// they freed, in one message each.
    async fn report(&mut self, first: Result<(tokio::task::Id, Done), JoinError>) {
        let mut reports = Vec::new();
        let mut freed = 0u32;
        let mut next = Some(first);
        while let Some(joined) = next {
            freed += 1;
            if let Some(report) = self.ended(joined) {
                reports.push(report);
            }
            next = self.attempts.try_join_next_with_id();
        }
        if !reports.is_empty() {
            self.send(pb::WorkerMessage::reports(reports)).await;
        }
        if !self.stopping {
            self.send(pb::WorkerMessage::credit(freed)).await;
        }
    }

    /// Forgets an ended attempt and returns its report, if it has one.
    fn ended(&mut self, joined: Result<(tokio::task::Id, Done), JoinError>) -> Option<pb::Report> {
        let (task_id, seq, outcome) = match joined {
            Ok((id, done)) => {
                self.spawned.remove(&id);
                (done.task_id, done.seq, done.outcome)
            }
            Err(e) => {
                let (task_id, seq) = self.spawned.remove(&e.id())?;
                tracing::error!(task = %task_id, error = %e, "the handler panicked");
                let error = TaskError::retry(format!("the handler panicked: {e}"));
                (task_id, seq, Some(Err(error)))
            }
        };
        if self.running.get(&task_id).is_some_and(|(s, _)| *s == seq) {
            self.running.remove(&task_id);
        }
        Some(match outcome? {
            Ok(result) => pb::Report::succeeded(task_id, &result),
            Err(e) => pb::Report::failed(
                task_id,
                e.message,
                e.retry_after.map(|d| d.as_millis() as u64),
                e.abort,
            ),
        })
    }

    async fn send(&self, message: pb::WorkerMessage) {
        // A send fails only when the stream is gone, which the inbound side
        // reports.
        if let Some(tx) = &self.tx {
            let _ = tx.send(message).await;
        }
    }

    /// The stream broke: the scheduler requeued what this worker held, so
    /// stop it all, then let the caller connect again.
    async fn dropped(mut self, why: &str) -> SessionEnd {
        tracing::warn!(worker = %self.worker_id, error = %why, "the gRPC session ended; stopping the tasks in hand");
        for (_, cancel) in self.running.values() {
            let _ = cancel.send(true);
        }
        while self.attempts.join_next().await.is_some() {}
        if self.stopping {
            SessionEnd::Shutdown
        } else {
            SessionEnd::Dropped {
                registered: true,
                leader: None,
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
