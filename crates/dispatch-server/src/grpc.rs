//! The streaming worker protocol: gRPC `dispatch.v1.WorkerService.Connect`,
//! one bidirectional stream per worker session, served on the HTTP listener.
//!
//! A gRPC worker is a worker like any other: it registers with the core
//! (validated like `POST /v1/workers`), the routing strategy assigns tasks to
//! it, and its reports go through the same `Step::report` as the HTTP
//! protocol's. What the stream changes is delivery:
//!
//! - **Push with credits.** Each `Credit` the worker grants is handed to the
//!   core (`Scheduler::offer`), which assigns tasks to the worker only
//!   against it, so a stream that grants nothing is given nothing. Whenever
//!   the worker's waker fires (tasks were assigned to it, or it must stop
//!   one), the session sends the assigned tasks in one `Tasks` message
//!   (sending collects them: they become `running` and the attempt counts)
//!   and any new stop notices in one `Stop` message. A tick every
//!   `heartbeat_ms` does the same, as a safety net.
//! - **Durable acks.** A `Reports` message is applied at once; its
//!   `ReportAcks` are sent once the store committed the results, by a
//!   per-session task that awaits the acknowledgements in order, so the
//!   session keeps reading while the store syncs. While `MAX_UNACKED` (16)
//!   report batches wait for the store, no new task is pushed:
//!   a fast worker cannot run ahead of the disk and pile up a backlog of
//!   writes that every other request would queue behind (an HTTP worker is
//!   held the same way, its next poll answered once its results are durable).
//! - **Leases.** Any message renews the lease. A session that hears nothing
//!   for `lease_ms` declares the worker dead itself, since its own deliveries
//!   renew the core's lease.
//! - **Endings.** A clean half-close from the worker is a graceful leave
//!   (`deregister`: held tasks requeued, attempts not counted). A broken
//!   stream (the worker process died, the connection dropped) is a loss
//!   (`lose_worker`): its tasks are requeued at once, the attempts counting,
//!   without waiting for the lease to run out.
//!
//! Serving on the same listener: gRPC is HTTP/2 with paths of the form
//! `/dispatch.v1.WorkerService/Connect`, which no REST route uses, so the
//! generated tonic service is mounted on the axum router as a route service
//! under `/dispatch.v1.WorkerService/*`. tonic's own `Routes` would do the
//! same but brings a fallback of its own, which axum refuses to merge with
//! ours. `axum::serve` speaks HTTP/1.1 and cleartext HTTP/2 (prior
//! knowledge) on one port, so REST clients and gRPC workers share it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dispatch_core::{TaskId, WorkerId};
use dispatch_grpc::pb::{self, worker_message::Kind};
use dispatch_grpc::{SERVICE_NAME, WorkerService, WorkerServiceServer};
use dispatch_proto::RegisterWorker;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::app::{Ack, App, acked};
use crate::clock::now_ms;

/// Messages queued for a worker before the session waits for it to read.
const OUTBOUND_QUEUE: usize = 64;

/// Report batches of one session waiting for the store that stop new tasks
/// from being pushed: the worker's next tasks run while its earlier results
/// are being synced (the syncs are pipelined: with two, a durable drain of
/// 2 x 16 slots ran at 30-45% of a relaxed one, with sixteen at 75-95%),
/// and the writes it has in flight stay bounded (at most sixteen reports of
/// its capacity).
const MAX_UNACKED: usize = 16;

/// The routes of the gRPC worker service, to merge into the HTTP router.
pub(crate) fn router(app: Arc<App>) -> axum::Router {
    let limit = app.config.max_body_bytes;
    let service = WorkerServiceServer::new(GrpcWorkers { app: app.clone() })
        // A message is bounded like a request body.
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    axum::Router::new()
        .route_service(&format!("/{SERVICE_NAME}/{{*method}}"), service)
        .layer(axum::middleware::from_fn(require_grpc))
        .layer(axum::middleware::from_fn_with_state(
            app,
            crate::auth::require,
        ))
}

/// Refuses a request on a gRPC path that is not gRPC (plain HTTP, JSON)
/// with a 415 problem, as the REST routes do, instead of letting the gRPC
/// server read its body as frames.
pub(crate) async fn require_grpc(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let grpc = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        return next.run(req).await;
    }
    let not_grpc = crate::api::ApiError::new(
        415,
        "this is a gRPC service: send application/grpc over HTTP/2",
    );
    axum::response::IntoResponse::into_response(not_grpc)
}

/// The service: each `Connect` call is one worker session.
struct GrpcWorkers {
    app: Arc<App>,
}

type Outbound = mpsc::Sender<Result<pb::SchedulerMessage, Status>>;

#[tonic::async_trait]
impl WorkerService for GrpcWorkers {
    type ConnectStream = ReceiverStream<Result<pb::SchedulerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let app = self.app.clone();
        let caller = request.extensions().get::<crate::owners::Caller>().copied();
        let mut inbound = request.into_inner();
        let lease = Duration::from_millis(app.config.lease_ms);
        let first = tokio::time::timeout(lease, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register message within the lease"))?
            .map_err(unreadable)?;
        let Some(Kind::Register(register)) = first.and_then(|m| m.kind) else {
            return Err(Status::invalid_argument(
                "the first message of a session must be Register",
            ));
        };
        let spec = RegisterWorker::from(register)
            .validate_within(&app.config.worker_limits)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // It gets tasks as it grants credit, not before.
        let ((worker, waker), _) = app
            .try_apply(|step| app.enroll(step, spec, caller.as_ref(), true))
            .map_err(Status::resource_exhausted)?;
        app.timer_wake.notify_one();
        tracing::info!(%worker, "worker registered over gRPC");
        let lease_ms = app.config.lease_ms;
        let heartbeat_ms = (lease_ms / 3).max(1);
        let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let registered =
            pb::SchedulerMessage::registered(worker.to_string(), lease_ms, heartbeat_ms);
        // The queue is new and empty: this cannot fail.
        let _ = out.try_send(Ok(registered));
        let session = Session {
            app,
            worker,
            waker,
            out,
            told: Vec::new(),
            last_heard: Instant::now(),
            unacked: Arc::default(),
            acked: Arc::default(),
        };
        tokio::spawn(session.run(inbound, Duration::from_millis(heartbeat_ms)));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The status for a message the worker sent that could not be read.
/// tonic reports bytes that are not protobuf as `INTERNAL`, but the fault
/// is the worker's input: the protocol answers `INVALID_ARGUMENT`, as for
/// any other refused message, with tonic's reason.
fn unreadable(status: Status) -> Status {
    match status.code() {
        tonic::Code::Internal => Status::invalid_argument(status.message().to_owned()),
        _ => status,
    }
}

/// Why a session ended.
enum End {
    /// The worker half-closed its stream: a graceful leave.
    Left,
    /// The stream broke or the worker stopped reading: it is gone.
    Broken(String),
    /// A message could not be read (not protobuf, too large): the worker
    /// is gone, and told why if it still listens.
    Unreadable(Status),
    /// Nothing heard for a whole lease.
    Silent,
    /// The worker broke the protocol.
    Refused(Status),
    /// The core no longer knows the worker (its lease expired).
    Unknown,
    /// The server is shutting down.
    Stopping,
}

/// One worker's stream.
struct Session {
    app: Arc<App>,
    worker: WorkerId,
    waker: Arc<Notify>,
    out: Outbound,
    /// The stop notices already sent: the stream is reliable, so each is
    /// sent once, though the core keeps it until the worker reports.
    told: Vec<TaskId>,
    last_heard: Instant,
    /// Report batches waiting for the store.
    unacked: Arc<AtomicUsize>,
    /// Notified each time one of them is durable.
    acked: Arc<Notify>,
}

/// Results waiting for the store, and their statuses.
type PendingAcks = (Option<Ack>, Vec<pb::ReportAck>);

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::WorkerMessage>, every: Duration) {
        let lease = Duration::from_millis(self.app.config.lease_ms);
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let acker = tokio::spawn(send_acks(
            acks_rx,
            self.out.clone(),
            self.app.clone(),
            (self.unacked.clone(), self.acked.clone()),
        ));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = self.app.stopping.clone();
        let end = loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(m)) => {
                        self.last_heard = Instant::now();
                        if let Err(end) = self.on_message(m, &acks_tx) {
                            break end;
                        }
                    }
                    Ok(None) => break End::Left,
                    Err(status) => break End::Unreadable(unreadable(status)),
                },
                _ = self.waker.notified() => {}
                _ = self.acked.notified() => {}
                _ = tick.tick() => {
                    if self.last_heard.elapsed() >= lease {
                        break End::Silent;
                    }
                }
                _ = self.out.closed() => break End::Broken("the worker stopped reading".into()),
                _ = stopping.wait_for(|s| *s) => break End::Stopping,
            }
            if let Err(end) = self.deliver().await {
                break end;
            }
        };
        // Acknowledge what was reported before ending the stream.
        drop(acks_tx);
        let _ = acker.await;
        self.finish(end).await;
    }

    /// Applies one message from the worker.
    fn on_message(
        &mut self,
        message: pb::WorkerMessage,
        acks: &mpsc::UnboundedSender<PendingAcks>,
    ) -> Result<(), End> {
        match message.kind {
            Some(Kind::Credit(c)) => {
                // The core assigns against the credit; `deliver` pushes.
                self.app
                    .try_apply(|step| step.shared.sched.offer(self.worker, c.slots, step.now))
                    .map_err(|_| End::Unknown)?;
            }
            Some(Kind::Reports(r)) => {
                self.unacked.fetch_add(1, Ordering::SeqCst);
                let _ = acks.send(self.apply_reports(r.reports));
            }
            Some(Kind::Register(_)) => {
                return Err(End::Refused(Status::invalid_argument(
                    "Register is only the first message of a session",
                )));
            }
            // A heartbeat renews the lease in `deliver`, like any message;
            // unknown kinds (a newer worker) are ignored.
            Some(Kind::Heartbeat(_)) | None => {}
        }
        Ok(())
    }

    /// Applies reports through the HTTP protocol's path; returns the last
    /// store acknowledgement and one status per report.
    fn apply_reports(&self, reports: Vec<pb::Report>) -> PendingAcks {
        let w = self.worker;
        let (statuses, settled) = self.app.apply(|step| {
            reports
                .into_iter()
                .map(|r| {
                    let task_id = r.task_id.clone();
                    let (status, detail) = match r.validate() {
                        Err(e) => (400, e.to_string()),
                        Ok((task, outcome)) => match step.report(task, w, outcome) {
                            Ok(()) => (200, String::new()),
                            Err(_) => (409, format!("task {task} is not leased to worker {w}")),
                        },
                    };
                    pb::ReportAck {
                        task_id,
                        status,
                        detail,
                    }
                })
                .collect()
        });
        (settled.into_ack(), statuses)
    }

    /// Renews the lease, then pushes any new stop notices and the tasks
    /// assigned against the worker's credit (sending one collects it).
    async fn deliver(&mut self) -> Result<(), End> {
        let (tasks, stops) = {
            let mut shared = self.app.lock();
            let now = now_ms();
            let notices = shared
                .sched
                .heartbeat(self.worker, now)
                .map_err(|_| End::Unknown)?;
            let stops: Vec<TaskId> = notices
                .iter()
                .filter(|t| !self.told.contains(t))
                .copied()
                .collect();
            self.told = notices;
            let held_back = self.unacked.load(Ordering::SeqCst) >= MAX_UNACKED;
            let handed = if held_back {
                Vec::new()
            } else {
                shared
                    .sched
                    .poll(self.worker, usize::MAX, now)
                    .map_err(|_| End::Unknown)?
            };
            let tasks: Vec<pb::Task> = handed
                .iter()
                .filter_map(|id| shared.sched.task(*id))
                .map(crate::wire::task_message)
                .collect();
            if !handed.is_empty() {
                let _ = self.app.flush(&mut shared);
            }
            (tasks, stops)
        };
        // Stops first: they are about attempts handed over before, and a
        // task that timed out may come back in `tasks` as its next attempt.
        if !stops.is_empty() {
            let ids = stops.iter().map(ToString::to_string).collect();
            self.send(pb::SchedulerMessage::stop(ids)).await?;
        }
        if !tasks.is_empty() {
            // Handing over a task with a timeout started its clock: the
            // timer loop must wake for that deadline.
            if tasks.iter().any(|t| t.timeout_ms.is_some()) {
                self.app.timer_wake.notify_one();
            }
            self.send(pb::SchedulerMessage::tasks(tasks)).await?;
        }
        Ok(())
    }

    async fn send(&self, message: pb::SchedulerMessage) -> Result<(), End> {
        send_within_lease(&self.out, &self.app, Ok(message))
            .await
            .map_err(|_| End::Broken("the worker stopped reading".into()))
    }

    /// Tells the core how the session ended, waits until that is durable,
    /// and ends the stream with a status saying what the worker should do.
    async fn finish(self, end: End) {
        let w = self.worker;
        if let End::Stopping = end {
            // A restart requeues everything without counting attempts: the
            // core is told nothing, and nothing is settled.
            self.app.forget_worker(&mut self.app.lock(), w);
            let status = Status::unavailable("the scheduler is shutting down");
            let _ = send_within_lease(&self.out, &self.app, Err(status)).await;
            return;
        }
        let (status, mut settled) = self.app.apply(|step| {
            let (sched, now) = (&mut step.shared.sched, step.now);
            let status = match &end {
                End::Left => {
                    let _ = sched.deregister(w, now);
                    tracing::info!(worker = %w, "gRPC worker left");
                    None
                }
                End::Broken(why) => {
                    let _ = sched.lose_worker(w, now);
                    tracing::warn!(worker = %w, why = %why, "gRPC worker stream broke; its tasks were requeued");
                    None
                }
                End::Unreadable(status) => {
                    let _ = sched.lose_worker(w, now);
                    tracing::warn!(worker = %w, why = %status.message(), "gRPC worker stream failed; its tasks were requeued");
                    Some(status.clone())
                }
                End::Silent => {
                    let _ = sched.lose_worker(w, now);
                    Some(Status::deadline_exceeded(
                        "nothing heard within the lease; register again",
                    ))
                }
                End::Refused(status) => {
                    let _ = sched.lose_worker(w, now);
                    Some(status.clone())
                }
                End::Unknown => Some(Status::not_found(
                    "the lease was lost and the tasks requeued; register again",
                )),
                // Answered above.
                End::Stopping => None,
            };
            self.app.forget_worker(step.shared, w);
            status
        });
        if let Err(e) = settled.committed().await {
            tracing::error!(worker = %w, error = %e, "cannot persist the end of a gRPC session");
        }
        if let Some(status) = status {
            let _ = send_within_lease(&self.out, &self.app, Err(status)).await;
        }
    }
}

/// Sends each batch of statuses once the store acknowledged its results.
/// Writes commit in order, so awaiting them in order costs nothing.
async fn send_acks(
    mut pending: mpsc::UnboundedReceiver<PendingAcks>,
    out: Outbound,
    app: Arc<App>,
    (unacked, durable): (Arc<AtomicUsize>, Arc<Notify>),
) {
    while let Some((ack, mut statuses)) = pending.recv().await {
        let committed = acked(ack).await;
        unacked.fetch_sub(1, Ordering::SeqCst);
        durable.notify_one();
        if let Err(e) = committed {
            tracing::error!(error = %e, "reported results are not durable");
            for s in statuses.iter_mut().filter(|s| s.status == 200) {
                s.status = 503;
                s.detail = format!("the store could not commit the result: {e}");
            }
        }
        let acks = Ok(pb::SchedulerMessage::report_acks(statuses));
        if send_within_lease(&out, &app, acks).await.is_err() {
            return;
        }
    }
}

/// Queues a message for the worker; fails when the stream is gone or the
/// worker has not read for a whole lease (so a stuck worker cannot hold a
/// session, nor the server's shutdown, forever).
async fn send_within_lease(
    out: &Outbound,
    app: &App,
    message: Result<pb::SchedulerMessage, Status>,
) -> Result<(), ()> {
    let lease = Duration::from_millis(app.config.lease_ms);
    match tokio::time::timeout(lease, out.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
