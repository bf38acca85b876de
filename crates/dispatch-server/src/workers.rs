//! The HTTP worker protocol: register, heartbeat, poll (with batched
//! results), complete, fail, leave; and the worker list.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dispatch_core::{Millis, Scheduler, TaskId, WorkerId};
use dispatch_proto::task::parse_task_id;
use dispatch_proto::worker::parse_worker_id;
use dispatch_proto::{
    CompleteTask, FailTask, HeartbeatReply, HeartbeatRequest, LastHandout, Outcome, PollReply,
    PollRequest, PolledTask, RegisterReply, RegisterWorker, ResultStatus, WorkerJson, WorkerList,
};

use crate::api::{ApiError, JsonBody, OptionalJsonBody, json};
use crate::app::{Ack, App, Body, Settled, Shared, acked};
use crate::clock::now_ms;
use crate::owners::{Act, Caller};

fn path_worker_id(s: &str) -> Result<WorkerId, ApiError> {
    parse_worker_id("id", Some(s)).map_err(|_| ApiError::not_found(format_args!("worker {s:?}")))
}

/// `id` as the client sent it, so that the error names what it knows.
fn lease_lost(id: &str) -> ApiError {
    ApiError::not_found(format_args!(
        "worker {id}: its lease was lost or it never registered; register again"
    ))
}

/// `POST /v1/workers`: 201 with the id and lease settings.
#[utoipa::path(
    post,
    path = "/v1/workers",
    summary = "Register a worker",
    description = "Declares the task types the worker runs, its labels and capacity. The worker must then poll or heartbeat within `lease_ms`, or it is declared dead and its tasks go back to their queues.",
    tag = "workers",
    request_body = RegisterWorker,
    responses(
        (status = 201, description = "Registered: its id and lease settings.", body = RegisterReply),
        (status = 422, description = "A field is invalid; `field` names it."),
        (status = 429, description = "The server holds as many workers as it takes (`--max-workers`), or its memory budget is full."),
    ),
)]
pub(crate) async fn register(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    JsonBody(req): JsonBody<RegisterWorker>,
) -> Result<Response, ApiError> {
    let spec = req.validate_within(&app.config.worker_limits)?;
    let kept = app.keeps_workers.then(|| spec.clone());
    let ((id, stored), _) = app.try_apply(|step| {
        let (id, _) = app
            .enroll(step, spec, caller.as_deref(), false)
            .map_err(ApiError::overloaded)?;
        let Some(spec) = kept else {
            return Ok((id, None));
        };
        let record = dispatch_store::WorkerRecord {
            id,
            name: spec.name,
            types: spec.types.iter().map(|t| t.to_string()).collect(),
            labels: spec.labels,
            capacity: spec.capacity,
            weight: spec.weight,
            owner: caller.as_deref().map(|c| c.digest),
            registered_at: step.now,
        };
        match app.store_worker(step.shared, record) {
            Ok(ack) => Ok((id, ack)),
            Err(e) => {
                let _ = step.shared.sched.deregister(id, step.now);
                app.forget_worker(step.shared, id);
                Err(ApiError::from(e))
            }
        }
    })?;
    if let Err(e) = acked(stored).await {
        // Not kept: it is not registered either.
        app.apply(|step| {
            let _ = step.shared.sched.deregister(id, step.now);
            app.forget_worker(step.shared, id);
        });
        return Err(e.into());
    }
    app.timer_wake.notify_one();
    tracing::info!(worker = %id, "worker registered");
    let lease_ms = app.config.lease_ms;
    let reply = RegisterReply {
        id: id.to_string(),
        lease_ms,
        heartbeat_ms: (lease_ms / 3).max(1),
        handout: Some(dispatch_proto::handout_token(app.handout_mark, 0)),
    };
    Ok(json(StatusCode::CREATED, &reply))
}

/// `GET /v1/workers`.
#[utoipa::path(
    get,
    path = "/v1/workers",
    summary = "List workers",
    description = "Every registered worker, with its load.",
    tag = "workers",
    responses((status = 200, description = "Every registered worker.", body = WorkerList)),
)]
pub(crate) async fn list(State(app): State<Arc<App>>) -> Response {
    let workers = app.lock().sched.workers().map(WorkerJson::new).collect();
    json(StatusCode::OK, &WorkerList { workers })
}

/// A worker named what it runs (`held`) and acknowledged poll answers up
/// to `seen`: a task kept on it across a takeover, or handed in an answer
/// it received or lost, that it does not name goes back to its queue. A
/// heartbeat or report-only poll judges the answers it acknowledges (a
/// later one may be on its way); a long poll comes after the previous long
/// poll's answer was read or abandoned, so it judges every earlier answer.
fn account_held(
    sched: &mut Scheduler<Body>,
    w: WorkerId,
    held: &[TaskId],
    seen: Option<LastHandout>,
    long_poll: bool,
    now: Millis,
) {
    sched.claim_running(w, held, now);
    let seen = match seen {
        Some(_) if long_poll => Some(u32::MAX),
        Some(LastHandout::Ours(n)) => Some(n),
        _ => None,
    };
    if let Some(seen) = seen {
        sched.reconcile(w, seen, held, now);
    }
}

/// `POST /v1/workers/{id}/heartbeat`: 200 with the tasks to stop; 404 when
/// the lease was lost.
#[utoipa::path(
    post,
    path = "/v1/workers/{id}/heartbeat",
    summary = "Renew a worker's lease",
    description = "Renews the lease and answers the running tasks the worker must stop (cancelled or past their timeout), repeated until it reports them.",
    tag = "workers",
    params(("id" = String, Path, description = "The worker's id, as registration gave it.")),
    request_body(content = Option<HeartbeatRequest>, description = "Optional: the tasks the worker runs."),
    responses(
        (status = 200, description = "Lease renewed; running tasks to stop.", body = HeartbeatReply),
        (status = 403, description = "The worker was registered with another token."),
        (status = 404, description = "The lease was lost (or the worker never registered): register again."),
        (status = 422, description = "`running` is invalid; `field` names the entry."),
    ),
)]
pub(crate) async fn heartbeat(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    let w = path_worker_id(&id)?;
    let held = dispatch_proto::running_ids(req.running.as_deref())?;
    let seen = dispatch_proto::handout_number(req.last_handout.as_deref(), app.handout_mark)?;
    app.owners.check(caller.as_deref(), w, Act::AsWorker)?;
    let cancel = match held {
        None => app
            .lock()
            .sched
            .heartbeat(w, now_ms())
            .map_err(|_| lease_lost(&id))?,
        // What it still runs: a task kept on it across a takeover, or
        // handed in an answer it acknowledges, that it does not name goes
        // back.
        Some(held) => {
            let (cancel, _) = app.try_apply(|step| {
                let sched = &mut step.shared.sched;
                let cancel = sched.heartbeat(w, step.now).map_err(|_| lease_lost(&id))?;
                account_held(sched, w, &held, seen, false, step.now);
                Ok::<_, ApiError>(cancel)
            })?;
            cancel
        }
    };
    let reply = HeartbeatReply {
        cancel: cancel.iter().map(ToString::to_string).collect(),
    };
    Ok(json(StatusCode::OK, &reply))
}

/// `DELETE /v1/workers/{id}`: graceful leave; its tasks are requeued.
#[utoipa::path(
    delete,
    path = "/v1/workers/{id}",
    summary = "Leave",
    description = "A graceful leave: the worker is removed and its running tasks go back to their queues.",
    tag = "workers",
    params(("id" = String, Path, description = "The worker's id, as registration gave it.")),
    responses(
        (status = 204, description = "Gone; its running tasks are requeued."),
        (status = 403, description = "The worker was registered with another token (an admin token may remove any)."),
        (status = 404, description = "No such worker."),
    ),
)]
pub(crate) async fn leave(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let w = path_worker_id(&id)?;
    app.owners.check(caller.as_deref(), w, Act::Remove)?;
    app.apply_durably(|step| {
        step.shared
            .sched
            .deregister(w, step.now)
            .map_err(|_| lease_lost(&id))?;
        app.forget_worker(step.shared, w);
        Ok::<_, ApiError>(())
    })
    .await?;
    tracing::info!(worker = %w, "worker left");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The task and worker as the client named them.
fn not_leased(task: &str, worker: &str) -> ApiError {
    ApiError::conflict(format!(
        "task {task} is not leased to worker {worker} (it finished, was cancelled, or the lease was lost)"
    ))
}

/// The state a report left its task in (`succeeded`, `dead`, or
/// `scheduled` for a retry), as the core's last transition of it says.
fn state_after(settled: &Settled, task: TaskId) -> Option<String> {
    settled
        .transition(task)
        .map(|t| t.state.as_str().to_owned())
}

/// The answer to one report: accepted, with the state it left the task in,
/// or refused (409: not leased to `worker` any more).
fn result_status(
    sent: String,
    accepted: bool,
    settled: &Settled,
    task: TaskId,
    worker: &str,
) -> ResultStatus {
    if accepted {
        ResultStatus {
            state: state_after(settled, task),
            task_id: sent,
            status: 200,
            detail: None,
        }
    } else {
        ResultStatus {
            detail: Some(format!("task {sent} is not leased to worker {worker}")),
            task_id: sent,
            status: 409,
            state: None,
        }
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
    let ((), mut settled) = app
        .try_apply(|step| step.report(task, worker.0, outcome))
        .map_err(|_| not_leased(&id, &worker.1))?;
    settled.committed().await?;
    let answer = result_status(id, true, &settled, task, &worker.1);
    Ok(json(StatusCode::OK, &answer))
}

/// `POST /v1/tasks/{id}/complete`: 200; 409 when no longer leased to it.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/complete",
    summary = "Report a success",
    description = "The worker that holds the task reports its result. Answers the state it left the task in.",
    tag = "workers",
    params(("id" = String, Path, description = "The task's id.")),
    request_body = CompleteTask,
    responses(
        (status = 200, description = "A success, with its result; the state it left the task in.", body = ResultStatus),
        (status = 403, description = "The worker was registered with another token."),
        (status = 404, description = "No such task."),
        (status = 409, description = "The task is no longer leased to this worker (it finished, was cancelled, or the lease was lost)."),
        (status = 422, description = "`worker_id` is missing or invalid, or another field is; `field` names it."),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/fail",
    summary = "Report a failure",
    description = "The worker that holds the task reports its error. The task is retried after its backoff (or `retry_after_ms`) while attempts remain and `abort` is not set, else it is dead. Answers the state it left the task in.",
    tag = "workers",
    params(("id" = String, Path, description = "The task's id.")),
    request_body = FailTask,
    responses(
        (status = 200, description = "A failure: retried after its backoff, or dead; the state it left the task in.", body = ResultStatus),
        (status = 403, description = "The worker was registered with another token."),
        (status = 404, description = "No such task."),
        (status = 409, description = "The task is no longer leased to this worker (it finished, was cancelled, or the lease was lost)."),
        (status = 422, description = "`worker_id` is missing or invalid, or another field is; `field` names it."),
    ),
)]
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
/// What one pass of a poll collects: the tasks, the stop notices, the
/// answer's `handout` (when it hands tasks) and the write to wait for.
struct Collected {
    tasks: Vec<PolledTask>,
    cancel: Vec<TaskId>,
    handout: Option<String>,
    ack: Option<Ack>,
}

fn collect(app: &App, shared: &mut Shared, w: WorkerId, max: usize) -> Option<Collected> {
    let ids = shared.sched.poll(w, max, now_ms()).ok()?;
    let tasks: Vec<PolledTask> = ids
        .iter()
        .filter_map(|id| shared.sched.task(*id))
        .map(crate::wire::polled_task)
        .collect();
    let ack = app.flush(shared);
    let worker = shared.sched.worker(w)?;
    let handout = (!tasks.is_empty())
        .then(|| dispatch_proto::handout_token(app.handout_mark, worker.handouts));
    let cancel = worker.cancel_notices().to_vec();
    Some(Collected {
        tasks,
        cancel,
        handout,
        ack,
    })
}

/// `POST /v1/workers/{id}/poll`: reports finished tasks (optional), then
/// collects up to `max` of the tasks assigned to the worker, holding up to
/// `wait_ms` when none is (never when the worker has no free slot, or asks
/// for none: `max: 0` is a report-only poll).
#[utoipa::path(
    post,
    path = "/v1/workers/{id}/poll",
    summary = "Report finished tasks and take new ones",
    description = "Applies the reports in `results` (each answered in `results` of the reply), then hands over up to `max` tasks assigned to the worker, holding up to `wait_ms` while none is. `max: 0` only reports. A poll renews the lease.",
    tag = "workers",
    params(("id" = String, Path, description = "The worker's id, as registration gave it.")),
    request_body(content = Option<PollRequest>, description = "Optional: how many tasks, how long to hold, and finished tasks to report."),
    responses(
        (status = 200, description = "Tasks to run, the status of each report, and running tasks to stop.", body = PollReply),
        (status = 403, description = "The worker was registered with another token."),
        (status = 404, description = "The lease was lost (or the worker never registered): register again."),
        (status = 422, description = "A field is invalid; `field` names it (`results[2].task_id`)."),
    ),
)]
pub(crate) async fn poll(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    OptionalJsonBody(mut req): OptionalJsonBody<PollRequest>,
) -> Result<Response, ApiError> {
    let w = path_worker_id(&id)?;
    let held = dispatch_proto::running_ids(req.running.as_deref())?;
    let seen = dispatch_proto::handout_number(req.last_handout.as_deref(), app.handout_mark)?;
    app.owners.check(caller.as_deref(), w, Act::AsWorker)?;
    // Validate every report before applying any; answer each under the
    // task id as the worker wrote it.
    let mut reports = Vec::new();
    for (i, r) in req
        .results
        .take()
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
    let capacity = |shared: &Shared| {
        let worker = shared.sched.worker(w).ok_or_else(|| lease_lost(&id))?;
        Ok::<_, ApiError>(worker.spec.capacity)
    };
    let (statuses, max, wait_ms) = if reports.is_empty() && held.is_none() {
        let (max, wait_ms) = req.limits(capacity(&app.lock())?)?;
        (Vec::new(), max, wait_ms)
    } else {
        let ((applied, max, wait_ms), mut settled) = app.try_apply(|step| {
            let (max, wait_ms) = req.limits(capacity(step.shared)?)?;
            let applied: Vec<_> = reports
                .into_iter()
                .map(|(task, sent, outcome)| (task, sent, step.report(task, w, outcome).is_ok()))
                .collect();
            // What it still runs, once its reports are in.
            if let Some(held) = &held {
                account_held(&mut step.shared.sched, w, held, seen, max > 0, step.now);
            }
            Ok::<_, ApiError>((applied, max, wait_ms))
        })?;
        // Reports are acknowledged only once durable, and nothing is
        // handed over before: a poll answered with an error has taken no
        // task.
        settled.committed().await?;
        let statuses = applied
            .into_iter()
            .map(|(task, sent, accepted)| result_status(sent, accepted, &settled, task, &id))
            .collect();
        (statuses, max, wait_ms)
    };

    let (waker, heard, room) = {
        let mut shared = app.lock();
        let _ = app.settle(&mut shared, now_ms());
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
    let Collected {
        tasks,
        cancel,
        handout,
        ack: handed,
    } = loop {
        {
            let mut shared = app.lock();
            let got = collect(&app, &mut shared, w, max).ok_or_else(|| lease_lost(&id))?;
            let done = !got.tasks.is_empty()
                || got.cancel.len() != heard
                || tokio::time::Instant::now() >= deadline
                || *app.stopping.borrow();
            if done {
                break got;
            }
        }
        tokio::select! {
            _ = waker.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    };
    // A leading replica records the handover before the worker hears of
    // it, so that the next leader knows the worker holds these tasks. A
    // store that is down only delays the record (the writes are kept), but
    // a term that ended must not hand anything out.
    if app.keeps_workers
        && !tasks.is_empty()
        && let Some(ack) = handed
        && let Ok(Err(e)) = ack.await
        && e.kind == dispatch_store::ErrorKind::Fenced
    {
        return Err(e.into());
    }
    // Handing over a task with a timeout started its clock: the timer loop
    // must wake for that deadline, not at its next planned tick.
    if tasks.iter().any(|t| t.timeout_ms.is_some()) {
        app.timer_wake.notify_one();
    }
    let reply = PollReply {
        tasks,
        results: statuses,
        cancel: cancel.iter().map(ToString::to_string).collect(),
        handout,
    };
    Ok(json(StatusCode::OK, &reply))
}
