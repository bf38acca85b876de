//! The HTTP worker protocol: register, heartbeat, poll (with batched
//! results), complete, fail, leave; and the worker list.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dispatch_core::{CoreError, TaskId, WorkerId};
use dispatch_proto::task::parse_task_id;
use dispatch_proto::worker::parse_worker_id;
use dispatch_proto::{
    CompleteTask, FailTask, HeartbeatReply, Outcome, PollReply, PollRequest, PolledTask,
    RegisterReply, RegisterWorker, ResultStatus, WorkerJson, WorkerList,
};

use crate::api::{ApiError, JsonBody, OptionalJsonBody, json};
use crate::app::{Ack, App, Shared, acked, now_ms};
use crate::auth::{Act, Caller};

fn path_worker_id(s: &str) -> Result<WorkerId, ApiError> {
    parse_worker_id("id", Some(s)).map_err(|_| ApiError::not_found(format_args!("worker {s:?}")))
}

/// `id` as the client sent it, so that the error names what it knows.
fn lease_lost(id: &str) -> ApiError {
    ApiError::not_found(format_args!(
        "worker {id}: its lease was lost or it never registered; register again"
    ))
}

/// Why there is no room for one more worker: `--max-workers` are
/// registered (HTTP answers 429, gRPC `RESOURCE_EXHAUSTED`).
pub(crate) fn room_for_a_worker(
    app: &App,
    shared: &Shared,
    spec: &dispatch_core::WorkerSpec,
) -> Result<crate::budget::Charge, String> {
    let max = app.config.max_workers;
    if shared.sched.worker_count() >= max {
        return Err(format!(
            "the server has {max} workers registered, as many as --max-workers allows"
        ));
    }
    // A worker's registration is held in memory like a task: it is charged
    // against `--max-memory-mb` too.
    app.budget
        .reserve(crate::budget::worker_footprint(spec), 0)
        .map_err(|e| e.to_string())
}

/// `POST /v1/workers`: 201 with the id and lease settings.
pub(crate) async fn register(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    JsonBody(req): JsonBody<RegisterWorker>,
) -> Result<Response, ApiError> {
    let spec = req.validate_within(&app.config.worker_limits)?;
    let now = now_ms();
    let id = {
        let mut shared = app.lock();
        let charge = room_for_a_worker(&app, &shared, &spec).map_err(ApiError::overloaded)?;
        let id = shared.sched.register_worker(spec, now);
        app.hold_worker_charge(&mut shared, id, charge);
        app.owners
            .record(caller.as_deref(), id, |w| shared.sched.worker(w).is_some());
        app.waker(&mut shared, id);
        let _ = app.settle(&mut shared, now, None);
        id
    };
    app.timer_wake.notify_one();
    tracing::info!(worker = %id, "worker registered");
    let lease_ms = app.config.lease_ms;
    let reply = RegisterReply {
        id: id.to_string(),
        lease_ms,
        heartbeat_ms: (lease_ms / 3).max(1),
    };
    Ok(json(StatusCode::CREATED, &reply))
}

/// `GET /v1/workers`.
pub(crate) async fn list(State(app): State<Arc<App>>) -> Response {
    let workers = app.lock().sched.workers().map(WorkerJson::new).collect();
    json(StatusCode::OK, &WorkerList { workers })
}

/// `POST /v1/workers/{id}/heartbeat`: 200 with the tasks to stop; 404 when
/// the lease was lost.
pub(crate) async fn heartbeat(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let w = path_worker_id(&id)?;
    app.owners.check(caller.as_deref(), w, Act::AsWorker)?;
    let cancel = app
        .lock()
        .sched
        .heartbeat(w, now_ms())
        .map_err(|_| lease_lost(&id))?;
    let reply = HeartbeatReply {
        cancel: cancel.iter().map(ToString::to_string).collect(),
    };
    Ok(json(StatusCode::OK, &reply))
}

/// `DELETE /v1/workers/{id}`: graceful leave; its tasks are requeued.
pub(crate) async fn leave(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let w = path_worker_id(&id)?;
    app.owners.check(caller.as_deref(), w, Act::Remove)?;
    let now = now_ms();
    let ack = {
        let mut shared = app.lock();
        shared
            .sched
            .deregister(w, now)
            .map_err(|_| lease_lost(&id))?;
        app.forget_worker(&mut shared, w);
        app.settle(&mut shared, now, None)
    };
    acked(ack).await?;
    tracing::info!(worker = %w, "worker left");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Applies one report under the lock. The result is attached to the
/// task's terminal write by `settle`. Shared by the gRPC protocol.
pub(crate) fn report(
    app: &App,
    shared: &mut Shared,
    task: TaskId,
    worker: WorkerId,
    outcome: Outcome,
) -> Result<Option<Ack>, CoreError> {
    let now = now_ms();
    shared.sched.stop_heard(worker, task);
    match outcome {
        Outcome::Succeeded(result) => {
            shared.sched.complete(task, worker, now)?;
            Ok(app.settle(shared, now, Some((task, result))))
        }
        Outcome::Failed {
            error,
            retry_after_ms,
            abort,
        } => {
            shared
                .sched
                .fail(task, worker, error, retry_after_ms, abort, now)?;
            Ok(app.settle(shared, now, None))
        }
    }
}

/// The task and worker as the client named them.
fn not_leased(task: &str, worker: &str) -> ApiError {
    ApiError::conflict(format!(
        "task {task} is not leased to worker {worker} (it finished, was cancelled, or the lease was lost)"
    ))
}

/// The state a task is in once a report was applied: as the core holds it
/// (a retry waits `scheduled`), else the end the report gave it.
fn state_after(shared: &Shared, task: TaskId, succeeded: bool) -> String {
    match shared.sched.task(task) {
        Some(t) => t.state.as_str().to_owned(),
        None if succeeded => "succeeded".to_owned(),
        None => "dead".to_owned(),
    }
}

async fn report_one(
    app: Arc<App>,
    id: String,
    worker: (WorkerId, String),
    outcome: Outcome,
) -> Result<Response, ApiError> {
    let task =
        parse_task_id("id", &id).map_err(|_| ApiError::not_found(format_args!("task {id:?}")))?;
    let succeeded = matches!(outcome, Outcome::Succeeded(_));
    let (ack, state) = {
        let mut shared = app.lock();
        let ack = report(&app, &mut shared, task, worker.0, outcome)
            .map_err(|_| not_leased(&id, &worker.1))?;
        (ack, state_after(&shared, task, succeeded))
    };
    acked(ack).await?;
    let answer = ResultStatus {
        task_id: id,
        status: 200,
        state: Some(state),
        detail: None,
    };
    Ok(json(StatusCode::OK, &answer))
}

/// `POST /v1/tasks/{id}/complete`: 200; 409 when no longer leased to it.
pub(crate) async fn complete(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CompleteTask>,
) -> Result<Response, ApiError> {
    let sent = req.worker_id.clone().unwrap_or_default();
    let (worker, outcome) = req.validate()?;
    app.owners.check(caller.as_deref(), worker, Act::AsWorker)?;
    report_one(app, id, (worker, sent), outcome).await
}

/// `POST /v1/tasks/{id}/fail`: 200; 409 when no longer leased to it.
pub(crate) async fn fail(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<FailTask>,
) -> Result<Response, ApiError> {
    let sent = req.worker_id.clone().unwrap_or_default();
    let (worker, outcome) = req.validate()?;
    app.owners.check(caller.as_deref(), worker, Act::AsWorker)?;
    report_one(app, id, (worker, sent), outcome).await
}

/// Collects the tasks assigned to a worker (at most `max`), persists
/// their start, and reads the notices of tasks it must stop; `None` when
/// the worker is unknown.
fn collect(
    app: &App,
    shared: &mut Shared,
    w: WorkerId,
    max: usize,
) -> Option<(Vec<PolledTask>, Vec<TaskId>)> {
    let ids = shared.sched.poll(w, max, now_ms()).ok()?;
    let tasks = ids
        .iter()
        .filter_map(|id| shared.sched.task(*id))
        .map(crate::wire::polled_task)
        .collect();
    let _ = app.flush(shared, None);
    let cancel = shared.sched.worker(w)?.cancel_notices().to_vec();
    Some((tasks, cancel))
}

/// `POST /v1/workers/{id}/poll`: reports finished tasks (optional), then
/// collects up to `max` of the tasks assigned to the worker, holding up to
/// `wait_ms` when none is (never when the worker has no free slot, or asks
/// for none: `max: 0` is a report-only poll).
pub(crate) async fn poll(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<PollRequest>,
) -> Result<Response, ApiError> {
    let w = path_worker_id(&id)?;
    app.owners.check(caller.as_deref(), w, Act::AsWorker)?;
    // Validate every report before applying any; answer each under the
    // task id as the worker wrote it.
    let mut reports = Vec::new();
    for (i, r) in req
        .results
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let sent = r.task_id.clone();
        let (task, outcome) = r
            .validate()
            .map_err(|e| e.within(&format!("results[{i}]")))?;
        reports.push((task, sent, outcome));
    }
    let (statuses, ack, max, wait_ms) = {
        let mut shared = app.lock();
        let capacity = shared
            .sched
            .worker(w)
            .map(|x| x.spec.capacity)
            .ok_or_else(|| lease_lost(&id))?;
        let (max, wait_ms) = req.limits(capacity)?;
        let mut statuses = Vec::with_capacity(reports.len());
        let mut ack = None;
        for (task, sent, outcome) in reports {
            let succeeded = matches!(outcome, Outcome::Succeeded(_));
            let status = match report(&app, &mut shared, task, w, outcome) {
                Ok(a) => {
                    ack = a.or(ack);
                    ResultStatus {
                        state: Some(state_after(&shared, task, succeeded)),
                        task_id: sent,
                        status: 200,
                        detail: None,
                    }
                }
                Err(_) => ResultStatus {
                    detail: Some(format!("task {sent} is not leased to worker {id}")),
                    task_id: sent,
                    status: 409,
                    state: None,
                },
            };
            statuses.push(status);
        }
        (statuses, ack, max, wait_ms)
    };
    // Reports are acknowledged only once durable, and nothing is handed
    // over before: a poll answered with an error has taken no task.
    acked(ack).await?;

    let (waker, heard, room) = {
        let mut shared = app.lock();
        let _ = app.settle(&mut shared, now_ms(), None);
        let worker = shared.sched.worker(w).ok_or_else(|| lease_lost(&id))?;
        let (heard, room) = (worker.cancel_notices().len(), worker.room());
        (app.waker(&mut shared, w), heard, room)
    };
    // Never hold past half the lease (the poll is what keeps it alive), nor
    // at all when the worker has no free slot or asks for nothing.
    let wait = if max == 0 || room == 0 {
        0
    } else {
        wait_ms.min(app.config.lease_ms / 2)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
    let mut stopping = app.stopping.clone();
    let (tasks, cancel) = loop {
        {
            let mut shared = app.lock();
            let (tasks, cancel) =
                collect(&app, &mut shared, w, max).ok_or_else(|| lease_lost(&id))?;
            let done = !tasks.is_empty()
                || cancel.len() != heard
                || tokio::time::Instant::now() >= deadline
                || *app.stopping.borrow();
            if done {
                break (tasks, cancel);
            }
        }
        tokio::select! {
            _ = waker.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    };
    // Handing over a task with a timeout started its clock: the timer loop
    // must wake for that deadline, not at its next planned tick.
    if tasks.iter().any(|t| t.timeout_ms.is_some()) {
        app.timer_wake.notify_one();
    }
    let reply = PollReply {
        tasks,
        results: statuses,
        cancel: cancel.iter().map(ToString::to_string).collect(),
    };
    Ok(json(StatusCode::OK, &reply))
}
