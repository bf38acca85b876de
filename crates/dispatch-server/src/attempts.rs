//! `GET /v1/tasks/{id}/attempts`: a task's attempt history.
//!
//! Ended attempts are stored with the transition that ends them (see
//! `App::persist`); the attempt running now is read from the core. The
//! handler snapshots the core first, then waits for the writes sent before
//! (a barrier) and reads the store, so an attempt that ended before the
//! request is always listed, once.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use dispatch_core::TaskState;
use dispatch_proto::time::format_rfc3339;
use dispatch_proto::{AttemptJson, AttemptList, parse_task_id};
use dispatch_store::StoreError;

use crate::api::{ApiError, json};
use crate::app::App;
use crate::wire::attempt_json;

/// `GET /v1/tasks/{id}/attempts` -> 200 `{"attempts": [...]}`, 404 for a
/// task that does not exist (or was purged).
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/attempts",
    summary = "A task's attempts",
    description = "Every attempt of the task, oldest first: its worker, when it was collected and ended, its outcome (`succeeded`, `failed`, `timeout`, `lost` or `cancelled`), its error and the wait before the next one. The attempt running now has no end and no outcome. Kept with the task and purged with it.",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id.")),
    responses(
        (status = 200, description = "The attempts, oldest first.", body = AttemptList),
        (status = 404, description = "No such task (or it was purged)."),
    ),
)]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tid =
        parse_task_id("id", &id).map_err(|_| ApiError::not_found(format_args!("task {id:?}")))?;
    // The attempt in progress, and whether the core holds the task at all.
    let (live, running) = {
        let shared = app.lock();
        match shared.sched.task(tid) {
            None => (false, None),
            Some(t) => {
                let running = match (t.state, t.worker, t.started_at) {
                    (TaskState::Running, Some(w), Some(at)) => Some(AttemptJson {
                        attempt: t.attempts,
                        worker_id: w.to_string(),
                        worker_name: shared
                            .sched
                            .worker(w)
                            .map(|w| w.spec.name.clone())
                            .unwrap_or_default(),
                        collected_at: format_rfc3339(at),
                        finished_at: None,
                        outcome: None,
                        error: None,
                        retry_delay_ms: None,
                    }),
                    _ => None,
                };
                (true, running)
            }
        }
    };
    app.barrier().await?;
    let store = app.store.clone();
    let (exists, ended) = tokio::task::spawn_blocking(move || {
        let exists = live || store.get_task(tid)?.is_some();
        Ok::<_, StoreError>((exists, store.list_attempts(tid)?))
    })
    .await
    .map_err(|e| ApiError::new(500, e.to_string()))??;
    if !exists {
        return Err(ApiError::not_found(format_args!("task {id}")));
    }
    let mut attempts: Vec<AttemptJson> = ended.iter().map(attempt_json).collect();
    // The running attempt may have ended while the barrier waited: it is
    // then listed from the store.
    if let Some(r) = running
        && !ended.iter().any(|a| a.attempt == r.attempt)
    {
        attempts.push(r);
    }
    Ok(json(StatusCode::OK, &AttemptList { attempts }))
}
