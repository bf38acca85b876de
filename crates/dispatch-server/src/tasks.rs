//! Client endpoints: submit (single and batch), read, list, cancel.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use dispatch_core::{TaskId, TaskState};
use dispatch_proto::task::parse_task_id;
use dispatch_proto::{
    FieldError, ListTasks, SubmitBatch, SubmitTask, TaskBatch, TaskList, ValidTask, task_json,
};
use dispatch_store::{InsertOutcome, TaskRecord, Write, WriteOutcome};

use crate::app::{App, acked, live_record, now_ms};
use crate::http::{ApiError, JsonBody, json};

/// The record of a newly accepted task.
fn new_record(id: TaskId, v: ValidTask, now: u64) -> TaskRecord {
    let scheduled = v.spec.run_at.is_some_and(|at| at > now);
    TaskRecord {
        id,
        spec: v.spec,
        body: v.body,
        state: if scheduled {
            TaskState::Scheduled
        } else {
            TaskState::Queued
        },
        attempts: 0,
        worker: None,
        started_at: None,
        finished_at: None,
        result: None,
        error: None,
    }
}

/// Stores new tasks durably, then hands the created ones to the core.
/// Returns, per task, its record and whether it was created (false: its
/// idempotency key named an earlier task, whose record is returned).
async fn accept(
    app: &Arc<App>,
    tasks: Vec<ValidTask>,
    now: u64,
) -> Result<Vec<(TaskRecord, bool)>, ApiError> {
    let first = app.reserve_ids(tasks.len() as u64);
    let mut records: Vec<TaskRecord> = tasks
        .into_iter()
        .enumerate()
        .map(|(i, v)| new_record(TaskId(first + i as u64), v, now))
        .collect();
    let ack = app.write(Write::Insert(records.clone()))?;
    let outcomes = match acked(Some(ack)).await? {
        Some(WriteOutcome::Inserted(o)) if o.len() == records.len() => o,
        other => {
            tracing::error!(
                ?other,
                "the store answered an insert with the wrong outcome"
            );
            return Err(ApiError::new(500, "internal store error"));
        }
    };
    let mut created = 0u64;
    let mut delayed = false;
    {
        let mut shared = app.lock();
        for (r, o) in records.iter().zip(&outcomes) {
            if *o == InsertOutcome::Created {
                created += 1;
                delayed |= r.state == TaskState::Scheduled;
                let body = Arc::new(r.body.clone());
                if let Err(e) = shared.sched.submit(r.id, r.spec.clone(), body, now) {
                    tracing::error!(task = %r.id, error = %e, "the core refused a stored task");
                }
            }
        }
        // Assignment writes need no wait: losing one only means the task is
        // still queued after a crash, and it will run then.
        let _ = app.settle(&mut shared, now_ms(), None);
        // Show each new task as it is now: it may already be running.
        for (r, o) in records.iter_mut().zip(&outcomes) {
            if let (InsertOutcome::Created, Some(t)) = (o, shared.sched.task(r.id)) {
                r.state = t.state;
                r.attempts = t.attempts;
                r.worker = t.worker;
                r.started_at = t.started_at;
            }
        }
    }
    app.metrics
        .submitted
        .fetch_add(created, std::sync::atomic::Ordering::Relaxed);
    if delayed {
        app.timer_wake.notify_one();
    }
    let mut out = Vec::with_capacity(records.len());
    for (r, o) in records.into_iter().zip(outcomes) {
        match o {
            InsertOutcome::Created => out.push((r, true)),
            InsertOutcome::Existing(orig) => {
                let original = app
                    .find_task(orig)
                    .await?
                    .ok_or_else(|| ApiError::new(500, "idempotency key names a missing task"))?;
                out.push((original, false));
            }
        }
    }
    Ok(out)
}

/// `POST /v1/tasks`: 201 with the task, or 200 with the original when the
/// idempotency key was seen before.
pub(crate) async fn submit(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<SubmitTask>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let valid = req.validate(now)?;
    let (record, created) = accept(&app, vec![valid], now)
        .await?
        .pop()
        .ok_or_else(|| ApiError::new(500, "no outcome for the submitted task"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &task_json(&record)))
}

/// `POST /v1/tasks/batch`: all valid and stored, or none.
pub(crate) async fn submit_batch(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<SubmitBatch>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    if req.tasks.is_empty() {
        return Err(FieldError::new("tasks", "must hold at least one task").into());
    }
    if req.tasks.len() > dispatch_proto::task::MAX_BATCH {
        return Err(FieldError::new(
            "tasks",
            format!(
                "at most {} tasks per batch",
                dispatch_proto::task::MAX_BATCH
            ),
        )
        .into());
    }
    let valid = req
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.validate(now)
                .map_err(|e| e.within(&format!("tasks[{i}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let accepted = accept(&app, valid, now).await?;
    let tasks: Vec<_> = accepted.iter().map(|(r, _)| task_json(r)).collect();
    Ok(json(StatusCode::CREATED, &TaskBatch { tasks }))
}

fn path_task_id(s: &str) -> Result<TaskId, ApiError> {
    parse_task_id("id", s).map_err(|_| ApiError::not_found(format_args!("task {s:?}")))
}

/// Query of `GET /v1/tasks/{id}`.
#[derive(serde::Deserialize)]
pub(crate) struct GetQuery {
    wait_ms: Option<String>,
}

/// Longest `wait_ms` of a task read.
const MAX_TASK_WAIT_MS: u64 = 300_000;

/// `GET /v1/tasks/{id}`, optionally holding up to `wait_ms` until the task
/// is terminal.
pub(crate) async fn get_one(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(400, format!("bad query string: {e}")))?;
    let wait_ms = match q.wait_ms {
        None => 0,
        Some(w) => match w.parse::<u64>() {
            Ok(ms) if ms <= MAX_TASK_WAIT_MS => ms,
            _ => {
                return Err(FieldError::new(
                    "wait_ms",
                    format!("must be an integer between 0 and {MAX_TASK_WAIT_MS}, got {w:?}"),
                )
                .into());
            }
        },
    };
    let tid = path_task_id(&id)?;
    if wait_ms > 0
        && let Some(ended) = app.watch_task(tid)
    {
        let mut stopping = app.stopping.clone();
        tokio::select! {
            _ = ended => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(wait_ms)) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }
    match app.find_task(tid).await? {
        Some(r) => Ok(json(StatusCode::OK, &task_json(&r))),
        None => Err(ApiError::not_found(format_args!("task {id}"))),
    }
}

/// `GET /v1/tasks?state=&type=&queue=&limit=&cursor=`, newest first.
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    query: Result<Query<ListTasks>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(400, format!("bad query string: {e}")))?;
    let mut q = q.validate()?;
    let limit = q.limit;
    // One more than asked tells whether another page follows.
    q.limit += 1;
    let store = app.store.clone();
    let mut records = tokio::task::spawn_blocking(move || store.list_tasks(&q))
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))??;
    let next_cursor = (records.len() > limit).then(|| {
        records.truncate(limit);
        records.last().map(|r| r.id.to_string())
    });
    let next_cursor = next_cursor.flatten();
    let tasks = records.iter().map(task_json).collect();
    Ok(json(StatusCode::OK, &TaskList { tasks, next_cursor }))
}

/// `POST /v1/tasks/{id}/cancel`: 200 with the cancelled task; 409 when it
/// already ended.
pub(crate) async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tid = path_task_id(&id)?;
    let now = now_ms();
    let outcome = {
        let mut shared = app.lock();
        let before = shared.sched.task(tid).map(live_record);
        match shared
            .sched
            .cancel(tid, "cancelled by request".to_owned(), now)
        {
            Ok(()) => {
                let ack = app.settle(&mut shared, now, None);
                Some((before, ack))
            }
            Err(_) => None,
        }
    };
    match outcome {
        Some((before, ack)) => {
            acked(ack).await?;
            let mut r = before.ok_or_else(|| ApiError::new(500, "cancelled task had no record"))?;
            r.state = TaskState::Cancelled;
            r.finished_at = Some(now);
            r.error = Some("cancelled by request".to_owned());
            Ok(json(StatusCode::OK, &task_json(&r)))
        }
        None => match app.find_task(tid).await? {
            None => Err(ApiError::not_found(format_args!("task {id}"))),
            Some(r) if r.state.is_terminal() => Err(ApiError::conflict(format!(
                "task {id} already ended ({})",
                r.state
            ))),
            Some(_) => Err(ApiError::conflict(format!(
                "task {id} is finishing; try again"
            ))),
        },
    }
}
