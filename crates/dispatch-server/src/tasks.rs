//! Client endpoints: submit (single and batch), read, list, cancel.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use dispatch_core::{CoreError, Strategy, TaskId, TaskSpec, TaskState, WorkerId};
use dispatch_proto::task::parse_task_id;
use dispatch_proto::{
    BulkCount, BulkFilter, FieldError, ListTasks, Problem, SubmitBatch, SubmitTask, TaskBatch,
    TaskJson, TaskList, TaskRefBatch, ValidTask,
};
use dispatch_store::{InsertOutcome, TaskRecord, TaskUpdate, Write, WriteOutcome};

use crate::api::{ApiError, JsonBody, json};
use crate::app::{App, acked, live_record};
use crate::budget::{Body, Charge, footprint};
use crate::clock::now_ms;
use crate::queues::apply_default_strategy;
use crate::wire::{new_record, task_json, task_query, task_ref};

/// Checks that every parent a task names exists (live or stored), so that
/// dependencies can never form a cycle.
async fn check_parents(app: &Arc<App>, task: &ValidTask) -> Result<(), FieldError> {
    for (i, parent) in task.depends_on.iter().enumerate() {
        let exists = app.find_task(*parent).await.map_err(|e| {
            FieldError::new(
                format!("depends_on[{i}]"),
                format!("cannot be checked: {e}"),
            )
        })?;
        if exists.is_none() {
            return Err(FieldError::new(
                format!("depends_on[{i}]"),
                format!("no task {parent}"),
            ));
        }
    }
    Ok(())
}

/// Refuses new tasks that would take a queue past its `max_depth` (its
/// queued and scheduled live tasks), the server past `max_live_tasks`
/// (live tasks and those reserved for, on their way to the store) or past
/// its memory budget; otherwise reserves their memory and slots.
///
/// Checked under the scheduler lock just before the insert is sent. A
/// queue's depth counts only the tasks in the core, so two submissions to
/// one queue racing may both pass and end slightly over `max_depth`. Tasks
/// whose idempotency key was seen before count as new here.
pub(crate) fn check_capacity(app: &App, records: &[TaskRecord]) -> Result<Charge, String> {
    let settings = app.queue_settings();
    let settings = &settings.queues;
    let mut adding: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for r in records {
        if settings
            .get(&*r.spec.queue)
            .is_some_and(|q| q.max_depth.is_some())
        {
            *adding.entry(&*r.spec.queue).or_default() += 1;
        }
    }
    let shared = app.lock();
    let live = shared.sched.live_tasks() as u64 + app.budget.pending_tasks();
    let max = app.config.max_live_tasks as u64;
    if live.saturating_add(records.len() as u64) > max {
        return Err(format!(
            "the server holds {live} live tasks and takes at most {max}; try again later"
        ));
    }
    if adding.is_empty() {
        return reserve_memory(app, records);
    }
    for (queue, n) in adding {
        let max = settings
            .get(queue)
            .and_then(|q| q.max_depth)
            .unwrap_or(u64::MAX);
        let now = shared.sched.queue_depth(queue) as u64;
        if now.saturating_add(n) > max {
            return Err(format!(
                "queue {queue:?} holds {now} waiting tasks and takes at most {max}; try again later"
            ));
        }
    }
    reserve_memory(app, records)
}

/// Reserves the memory `records` will take once live.
fn reserve_memory(app: &App, records: &[TaskRecord]) -> Result<Charge, String> {
    let bytes = records.iter().map(footprint).sum();
    app.budget
        .reserve(bytes, records.len() as u64)
        .map_err(|e| e.to_string())
}

/// Stores new tasks durably, then hands the created ones to the core.
/// Returns, per task, its record and whether it was created (false: its
/// idempotency key named an earlier task, whose record is returned). A key
/// that an earlier task holds for a different request refuses them all with
/// 409 naming it (`tasks[i].idempotency_key` in a `batch`).
async fn accept(
    app: &Arc<App>,
    tasks: Vec<ValidTask>,
    now: u64,
    batch: bool,
) -> Result<Vec<(TaskRecord, bool)>, ApiError> {
    // Each task's record, under its id once the plan is complete.
    let tasks: Vec<(TaskRecord, Option<u32>)> = tasks
        .into_iter()
        .map(|v| {
            let shards = v.shards;
            (new_record(TaskId(0), v, now), shards)
        })
        .collect();
    check_request_size(app, &tasks)?;
    // Broadcast and sharding tasks expand into their copies or shards,
    // stored (with lower ids, in the same all-or-nothing insert) before the
    // submitted task, which becomes the join that waits for them.
    let mut records: Vec<TaskRecord> = Vec::with_capacity(tasks.len());
    let mut roots = Vec::with_capacity(tasks.len());
    let mut joins = Vec::new();
    for (r, shards) in tasks {
        let start = records.len();
        fan_out(app, &r, shards, &mut records)?;
        if records.len() > start {
            joins.push((records.len(), start..records.len()));
        }
        roots.push(records.len());
        records.push(r);
    }
    let first = app.reserve_ids(records.len() as u64)?;
    for (i, r) in records.iter_mut().enumerate() {
        r.id = TaskId(first + i as u64);
    }
    for (join, children) in joins {
        let r = &mut records[join];
        r.body.depends_on = children.map(|k| TaskId(first + k as u64)).collect();
        r.spec.join = true;
        r.state = TaskState::Scheduled;
    }
    let mut reserved = check_capacity(app, &records).map_err(ApiError::overloaded)?;
    let ack = app.write(Write::Insert(records.clone()))?;
    let outcomes = match acked(Some(ack)).await? {
        Some(WriteOutcome::Inserted(o)) if o.len() == records.len() => o,
        Some(WriteOutcome::KeyConflict { index, holder }) => {
            // A copy or shard stands for the task it was made from.
            let submitted = roots.iter().position(|&r| r >= index).unwrap_or(0);
            let key = roots
                .get(submitted)
                .and_then(|&root| records.get(root))
                .and_then(|r| r.body.idempotency_key.as_deref())
                .unwrap_or_default();
            let e = FieldError::new(
                "idempotency_key",
                format!(
                    "key {key:?} was used for task {holder} with a different request; \
                     send the same request to get task {holder}, or use a new key"
                ),
            );
            let e = if batch {
                e.within(&format!("tasks[{submitted}]"))
            } else {
                e
            };
            return Err(Problem::field(409, e).into());
        }
        other => {
            tracing::error!(
                ?other,
                "the store answered an insert with the wrong outcome"
            );
            return Err(ApiError::new(500, "internal store error"));
        }
    };
    let n = records.len();
    let (mut created, mut new_records, mut existing) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (r, o)) in records.into_iter().zip(outcomes).enumerate() {
        match o {
            InsertOutcome::Created => {
                created.push(i);
                new_records.push(r);
            }
            InsertOutcome::Existing(orig) => existing.push((i, orig)),
        }
    }
    admit(app, &mut new_records, &mut reserved, now).await?;
    let mut out: Vec<Option<(TaskRecord, bool)>> = vec![None; n];
    for (i, r) in created.into_iter().zip(new_records) {
        out[i] = Some((r, true));
    }
    for (i, orig) in existing {
        let original = app
            .find_task(orig)
            .await?
            .ok_or_else(|| ApiError::new(500, "idempotency key names a missing task"))?;
        out[i] = Some((original, false));
    }
    Ok(roots.into_iter().filter_map(|i| out[i].take()).collect())
}

/// Counts what a request would create, copies and shards included, and
/// checks it against every bound before any copy or shard is built, so
/// that a request refused for its size costs nothing in proportion to it: at most
/// `--max-tasks-per-request` tasks (413), and room for them under
/// `--max-live-tasks` and `--max-memory-mb` (429). `check_capacity` checks
/// again, exactly, once the records exist.
fn check_request_size(app: &App, tasks: &[(TaskRecord, Option<u32>)]) -> Result<(), ApiError> {
    let mut creates: u64 = 0;
    let mut bytes: u64 = 0;
    for (r, shards) in tasks {
        let n = 1 + fan_out_count(app, &r.spec, *shards)?;
        creates = creates.saturating_add(n);
        bytes = bytes.saturating_add(n.saturating_mul(footprint(r)));
    }
    let cap = app.config.max_tasks_per_request;
    if creates > cap {
        return Err(ApiError::new(
            413,
            format!(
                "this request would create {creates} tasks (copies and shards included); at most {cap} per request (--max-tasks-per-request)"
            ),
        ));
    }
    let live = app.lock().sched.live_tasks() as u64 + app.budget.pending_tasks();
    let max = app.config.max_live_tasks as u64;
    if live.saturating_add(creates) > max {
        return Err(ApiError::overloaded(format!(
            "this request would create {creates} tasks; the server holds {live} live tasks and takes at most {max}; try again later"
        )));
    }
    let (used, limit) = (app.budget.used(), app.budget.limit());
    if used.saturating_add(bytes) > limit {
        return Err(ApiError::overloaded(format!(
            "this request would create {creates} tasks of about {} MiB; live tasks take about {} MiB of the server's {} MiB (--max-memory-mb); try again later",
            bytes >> 20,
            used >> 20,
            limit >> 20
        )));
    }
    Ok(())
}

/// How many copies or shards `v` expands into, counted without making
/// them (see [`fan_out`]).
fn fan_out_count(app: &App, spec: &TaskSpec, shards: Option<u32>) -> Result<u64, ApiError> {
    match spec.strategy {
        Strategy::Sharding => Ok(u64::from(shards.unwrap_or(1))),
        Strategy::Broadcast => {
            let n = broadcast_targets(&app.lock().sched, spec).count();
            if n == 0 {
                return Err(no_broadcast_worker(spec).into());
            }
            Ok(n as u64)
        }
        _ => Ok(0),
    }
}

/// The workers a `broadcast` task sends a copy to: every one that runs its
/// type and carries its labels.
fn broadcast_targets<'a>(
    sched: &'a dispatch_core::Scheduler<Body>,
    spec: &'a TaskSpec,
) -> impl Iterator<Item = WorkerId> + 'a {
    sched
        .workers()
        .filter(|w| w.handles(&spec.kind) && w.has_labels(&spec.labels))
        .map(|w| w.id)
}

fn no_broadcast_worker(spec: &TaskSpec) -> FieldError {
    FieldError::new(
        "strategy",
        format!(
            "no registered worker runs type {} with these labels; a broadcast needs one",
            spec.kind
        ),
    )
}

/// Adds to `plan` the copies of a `broadcast` task (one pinned to each
/// registered worker that runs its type and carries its labels) or the
/// `shards` of a `sharding` one; nothing for other strategies. Copies and
/// shards are routed like any task and inherit the task's own parents; each
/// shares the task's payload.
fn fan_out(
    app: &App,
    r: &TaskRecord,
    shards: Option<u32>,
    plan: &mut Vec<TaskRecord>,
) -> Result<(), ApiError> {
    let child = |i: u32| {
        let mut c = r.clone();
        c.spec.strategy = Strategy::RoundRobin;
        c.body.idempotency_key = r
            .body
            .idempotency_key
            .as_ref()
            .map(|k| dispatch_proto::task::copy_key(k, i));
        c
    };
    match r.spec.strategy {
        Strategy::Sharding => {
            let total = shards.unwrap_or(1);
            plan.extend((0..total).map(|i| {
                let mut c = child(i);
                c.body.shard = Some((i, total));
                c
            }));
        }
        Strategy::Broadcast => {
            let workers: Vec<WorkerId> = broadcast_targets(&app.lock().sched, &r.spec).collect();
            if workers.is_empty() {
                return Err(no_broadcast_worker(&r.spec).into());
            }
            plan.extend(workers.into_iter().enumerate().map(|(i, w)| {
                let mut c = child(i as u32);
                c.spec.pinned = Some(w);
                c
            }));
        }
        _ => {}
    }
    Ok(())
}

/// Hands tasks that are already stored to the core: they wait for their
/// time or their parents, or are assigned at once. Each takes its share of
/// `reserved` (see [`check_capacity`]). Updates each record to the task's
/// state after that.
pub(crate) async fn admit(
    app: &Arc<App>,
    records: &mut [TaskRecord],
    reserved: &mut Charge,
    now: u64,
) -> Result<(), ApiError> {
    let mut delayed = false;
    // Assignment writes need no wait: losing one only means the task is
    // still queued after a crash, and it will run then.
    let (ended_parents, _) = app.apply(|step| {
        let sched = &mut step.shared.sched;
        let mut ended_parents = Vec::new();
        for r in records.iter() {
            delayed |= r.spec.run_at.is_some_and(|at| at > now);
            let body = Body::new(r.body.clone(), reserved.split_off(footprint(r)));
            if let Err(e) = sched.submit(r.id, r.spec.clone(), body, now) {
                tracing::error!(task = %r.id, error = %e, "the core refused a stored task");
                continue;
            }
            if !r.body.depends_on.is_empty() {
                match sched.hold_for_parents(r.id, &r.body.depends_on) {
                    Ok(ended) if !ended.is_empty() => ended_parents.push((r.id, ended)),
                    Ok(_) => {}
                    Err(e) => tracing::error!(task = %r.id, error = %e, "cannot hold for parents"),
                }
            }
        }
        ended_parents
    });
    app.resolve_ended_parents(ended_parents).await?;
    // Show each new task as it is now: it may already be running, or have
    // ended (cancelled at once because a parent had failed).
    let mut ended = Vec::new();
    {
        let shared = app.lock();
        for (i, r) in records.iter_mut().enumerate() {
            match shared.sched.task(r.id) {
                Some(t) => {
                    r.state = t.state;
                    r.attempts = t.attempts;
                    r.worker = t.worker;
                    r.started_at = t.started_at;
                    r.error = t.last_error.as_deref().map(String::from);
                }
                None => ended.push(i),
            }
        }
    }
    for i in ended {
        if let Some(r) = app.find_task(records[i].id).await? {
            records[i] = r;
        }
    }
    app.metrics
        .submitted
        .fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
    // A rate limit may hold tasks back until its next token.
    if delayed || app.queue_settings().rate_limited() {
        app.timer_wake.notify_one();
    }
    Ok(())
}

/// `POST /v1/tasks`: 201 with the task, or 200 with the original when the
/// idempotency key was seen before.
#[utoipa::path(
    post,
    path = "/v1/tasks",
    summary = "Submit a task",
    description = "Validates and stores the task durably before answering. A task with `run_at`, `delay_ms` or `depends_on` waits as `scheduled`; else it is `queued`, or already `running` when a worker was free. With an `idempotency_key` seen before, the same request answers 200 with the original task, and a different request 409. Under `Prefer: return=minimal` the answer holds only `id` and `state`.",
    tag = "tasks",
    request_body = SubmitTask,
    params(("Prefer" = Option<String>, Header, description = "`return=minimal`: answer with ids and states only.")),
    responses(
        (status = 201, description = "Stored durably; the task as it is now (queued, scheduled, or already running).", body = inline(crate::openapi::TaskOrRef)),
        (status = 200, description = "The idempotency key was seen with the same request: the original task.", body = inline(crate::openapi::TaskOrRef)),
        (status = 409, description = "The idempotency key was used for another request; `field` is `idempotency_key`."),
        (status = 413, description = "The body, or the tasks it would create (broadcast copies and shards included), is over the limit."),
        (status = 422, description = "A field is invalid (named in `field`), a parent in `depends_on` does not exist, or a broadcast has no worker."),
        (status = 429, description = "The server, the queue or the memory budget is full; retry after `Retry-After`."),
    ),
)]
pub(crate) async fn submit(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SubmitTask>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let explicit = req.strategy.is_some();
    let mut valid = req.validate(now)?;
    apply_default_strategy(&app.queue_settings(), explicit, &mut valid)?;
    check_parents(&app, &valid).await?;
    let (record, created) = accept(&app, vec![valid], now, false)
        .await?
        .pop()
        .ok_or_else(|| ApiError::new(500, "no outcome for the submitted task"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    if wants_minimal(&headers) {
        return Ok(minimal(json(status, &task_ref(&record))));
    }
    Ok(json(status, &task_json(&record)))
}

/// Whether the client sent `Prefer: return=minimal` (RFC 7240): it wants
/// each submitted task's id and state, not the whole task.
fn wants_minimal(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.split(';').next())
        .filter_map(|p| p.split_once('='))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("return")
                && v.trim().trim_matches('"').eq_ignore_ascii_case("minimal")
        })
}

/// Says that the answer honours `return=minimal`.
fn minimal(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        "preference-applied",
        HeaderValue::from_static("return=minimal"),
    );
    resp
}

/// `POST /v1/tasks/batch`: all valid and stored, or none.
#[utoipa::path(
    post,
    path = "/v1/tasks/batch",
    summary = "Submit tasks in one request",
    description = "All the tasks are stored, or none: one invalid task refuses the batch, naming it (`tasks[3].priority`). The answer lists the tasks in submission order.",
    tag = "tasks",
    request_body = SubmitBatch,
    params(("Prefer" = Option<String>, Header, description = "`return=minimal`: answer with ids and states only.")),
    responses(
        (status = 201, description = "All stored, in submission order (a task whose idempotency key was seen is the original).", body = inline(crate::openapi::BatchOrRefs)),
        (status = 409, description = "An idempotency key was used for another request; `field` names it (`tasks[i].idempotency_key`)."),
        (status = 413, description = "The body, or the tasks it would create, is over the limit."),
        (status = 422, description = "A task is invalid; `field` names it (`tasks[i].priority`). Nothing was stored."),
        (status = 429, description = "The server, a queue or the memory budget is full; retry after `Retry-After`."),
    ),
)]
pub(crate) async fn submit_batch(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
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
            let explicit = t.strategy.is_some();
            t.validate(now)
                .and_then(|mut v| {
                    apply_default_strategy(&app.queue_settings(), explicit, &mut v)?;
                    Ok(v)
                })
                .map_err(|e| e.within(&format!("tasks[{i}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, t) in valid.iter().enumerate() {
        check_parents(&app, t)
            .await
            .map_err(|e| e.within(&format!("tasks[{i}]")))?;
    }
    let accepted = accept(&app, valid, now, true).await?;
    if wants_minimal(&headers) {
        let tasks = accepted.iter().map(|(r, _)| task_ref(r)).collect();
        return Ok(minimal(json(StatusCode::CREATED, &TaskRefBatch { tasks })));
    }
    let tasks: Vec<_> = accepted.iter().map(|(r, _)| task_json(r)).collect();
    Ok(json(StatusCode::CREATED, &TaskBatch { tasks }))
}

fn path_task_id(s: &str) -> Result<TaskId, ApiError> {
    parse_task_id("id", s).map_err(|_| ApiError::not_found(format_args!("task {s:?}")))
}

/// Query of `GET /v1/tasks/{id}`; its parameters are listed in the query
/// table of `router.rs`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetQuery {
    /// Hold the answer up to this long (milliseconds) until the task is
    /// terminal.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 300000)]
    wait_ms: Option<String>,
}

/// Longest `wait_ms` of a task read.
const MAX_TASK_WAIT_MS: u64 = 300_000;

/// `GET /v1/tasks/{id}`, optionally holding up to `wait_ms` until the task
/// is terminal.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    summary = "Read a task",
    description = "With `wait_ms`, the answer waits until the task is terminal or the time passes, whichever comes first.",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id."), GetQuery),
    responses(
        (status = 200, description = "The task (once terminal, or when `wait_ms` passed).", body = TaskJson),
        (status = 404, description = "No such task."),
        (status = 422, description = "`wait_ms` is not an integer between 0 and 300000."),
    ),
)]
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
        let last = tokio::select! {
            r = ended => r.ok(),
            _ = tokio::time::sleep(std::time::Duration::from_millis(wait_ms)) => None,
            _ = stopping.wait_for(|s| *s) => None,
        };
        if let Some(r) = last {
            // Answered once the final state is durable, like a read.
            app.barrier().await?;
            return Ok(json(StatusCode::OK, &task_json(&r)));
        }
    }
    match app.find_task(tid).await? {
        Some(r) => Ok(json(StatusCode::OK, &task_json(&r))),
        None => Err(ApiError::not_found(format_args!("task {id}"))),
    }
}

/// `GET /v1/tasks?state=&type=&queue=&limit=&cursor=`, newest first.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    summary = "List tasks",
    description = "Newest first, filtered by state, type and queue. Pass `next_cursor` as `cursor` for the next page; it is null on the last one.",
    tag = "tasks",
    params(ListTasks),
    responses(
        (status = 200, description = "A page of tasks, newest first.", body = TaskList),
        (status = 422, description = "A filter is invalid; `field` names it."),
    ),
)]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    query: Result<Query<ListTasks>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(400, format!("bad query string: {e}")))?;
    let q = task_query(q.validate()?);
    // The store lists: first let it take every change the core already
    // made (a task collected a moment ago is listed as running). While the
    // store cannot be written, the list is still read, as it stands.
    let _ = app.barrier().await;
    let (app2, budget) = (app.clone(), app.config.max_list_bytes);
    let (records, more) = tokio::task::spawn_blocking(move || list_within(&app2, q, budget))
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))??;
    let next_cursor = more
        .then(|| records.last().map(|r| r.id.to_string()))
        .flatten();
    let tasks = records.iter().map(task_json).collect();
    Ok(json(StatusCode::OK, &TaskList { tasks, next_cursor }))
}

/// A page of `q.limit` tasks at most, and at most `budget` bytes of
/// payloads and results (always at least one task); true when more follow.
///
/// The store is read a few records at a time, so what is held beyond the
/// budget is one read's worth: at most `budget / largest record` records
/// (at least 4), a record being at most a payload and a result of
/// `--max-body-bytes` each.
fn list_within(
    app: &App,
    mut q: dispatch_store::TaskQuery,
    budget: usize,
) -> Result<(Vec<dispatch_store::TaskRecord>, bool), ApiError> {
    let limit = q.limit;
    let largest = app.config.max_body_bytes.saturating_mul(2).max(1);
    let step = (budget / largest).max(4).min(limit + 1);
    let mut page = Vec::new();
    let mut bytes = 0usize;
    loop {
        // One more than asked tells whether another page follows.
        let want = (limit + 1 - page.len()).min(step);
        q.limit = want;
        let read = app.store.list_tasks(&q)?;
        let got = read.len();
        for r in read {
            let size = r.body.payload.len() + r.result.as_deref().map_or(0, str::len);
            if page.len() == limit || (!page.is_empty() && bytes + size > budget) {
                return Ok((page, true));
            }
            bytes += size;
            q.before = Some(r.id);
            page.push(r);
        }
        if got < want {
            return Ok((page, false));
        }
    }
}

/// `POST /v1/tasks/{id}/cancel`: 200 with the cancelled task; 409 when it
/// already ended.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/cancel",
    summary = "Cancel a task",
    description = "A scheduled or queued task is cancelled at once; a running task's worker is told to stop (in its next heartbeat or poll, or on its stream), and tasks that depend on it are cancelled too.",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id.")),
    responses(
        (status = 200, description = "Cancelled (a running task's worker is told to stop).", body = TaskJson),
        (status = 404, description = "No such task."),
        (status = 409, description = "The task already ended, or is ending."),
    ),
)]
pub(crate) async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tid = path_task_id(&id)?;
    let cancelled = app.try_apply(|step| {
        let before = step.shared.sched.task(tid).map(live_record);
        let reason = "cancelled by request".to_owned();
        step.shared.sched.cancel(tid, reason, step.now)?;
        step.watch(tid);
        Ok::<_, CoreError>(before)
    });
    match cancelled {
        Ok((before, mut settled)) => {
            settled.committed().await?;
            let mut r = before.ok_or_else(|| ApiError::new(500, "cancelled task had no record"))?;
            let t = settled
                .transition(tid)
                .ok_or_else(|| ApiError::new(500, "a cancel made no transition"))?;
            r.state = t.state;
            r.finished_at = t.finished_at;
            r.error = t.error.clone();
            Ok(json(StatusCode::OK, &task_json(&r)))
        }
        Err(_) => match app.find_task(tid).await? {
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

/// `POST /v1/tasks/{id}/retry`: requeues a dead task with a fresh set of
/// attempts. 409 unless it is dead.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/retry",
    summary = "Retry a dead task",
    description = "Requeues a `dead` task with a fresh set of attempts; nothing of its last run is kept.",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id.")),
    responses(
        (status = 200, description = "Requeued with a fresh set of attempts.", body = TaskJson),
        (status = 404, description = "No such task."),
        (status = 409, description = "The task is not dead, or is being retried."),
    ),
)]
pub(crate) async fn retry(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tid = path_task_id(&id)?;
    let record = app
        .find_task(tid)
        .await?
        .ok_or_else(|| ApiError::not_found(format_args!("task {id}")))?;
    if record.state != TaskState::Dead {
        return Err(ApiError::conflict(format!(
            "task {id} is {}; only dead tasks can be retried",
            record.state
        )));
    }
    // One retry at a time per task: the second one sees it live, or here.
    if !app.begin_retry(tid) {
        return Err(ApiError::conflict(format!("task {id} is being retried")));
    }
    // Another retry may have finished between the read above and the claim.
    let result = match app.find_task(tid).await {
        Ok(Some(r)) if r.state == TaskState::Dead => requeue_dead(&app, r).await,
        Ok(_) => Err(ApiError::conflict(format!("task {id} is no longer dead"))),
        Err(e) => Err(e.into()),
    };
    app.end_retry(tid);
    let record = result?;
    Ok(json(StatusCode::OK, &task_json(&record)))
}

/// Stores a dead task as queued again, then hands it to the core. The
/// retry starts afresh: no attempts, and nothing of the last run (error,
/// worker, start and end times) is kept.
async fn requeue_dead(app: &Arc<App>, mut record: TaskRecord) -> Result<TaskRecord, ApiError> {
    let update = TaskUpdate {
        id: record.id,
        state: TaskState::Queued,
        attempts: 0,
        worker: None,
        started_at: None,
        finished_at: None,
        run_at: None,
        result: None,
        error: None,
        attempt: None,
    };
    acked(Some(app.write(Write::Update(update))?)).await?;
    record.spec.run_at = None;
    let body = Body::new(record.body.clone(), app.budget.charge(footprint(&record)));
    app.try_apply(|step| {
        let spec = record.spec.clone();
        step.shared
            .sched
            .restore(record.id, spec, body, 0, None, step.now)
            .map_err(|_| ApiError::conflict(format!("task {} is live again", record.id)))
    })?;
    let shared = app.lock();
    match shared.sched.task(record.id) {
        Some(t) => Ok(live_record(t)),
        None => {
            record.state = TaskState::Queued;
            record.attempts = 0;
            record.worker = None;
            record.started_at = None;
            record.finished_at = None;
            record.error = None;
            Ok(record)
        }
    }
}

/// Tasks a bulk operation handles per step: one page read, one batch of
/// writes committed together, before the next page.
const BULK_PAGE: usize = 1_000;

/// Refuses a bulk operation without any filter: one that reaches every
/// task must say so (`{"state": "dead"}` replays every dead task).
fn require_filter(filter: &BulkFilter) -> Result<(), ApiError> {
    if filter.is_empty() {
        return Err(ApiError::new(
            422,
            "give at least one filter: state, type or queue",
        ));
    }
    Ok(())
}

/// `POST /v1/tasks/retry` with `{"state", "type", "queue"}`: requeues
/// every dead task matching the filters with a fresh set of attempts, as
/// `POST /v1/tasks/{id}/retry` does one. Answers `{"count"}`.
///
/// Dead tasks live in the store only: they are read a page at a time,
/// newest first, and each page is requeued before the next is read (its
/// updates committed together by the writer's group commit). A task being
/// retried by another request meanwhile is left to that request.
#[utoipa::path(
    post,
    path = "/v1/tasks/retry",
    summary = "Retry every dead task matching filters",
    description = "Requeues every dead task matching all the filters given (at least one), as the retry of one task does. Answers how many.",
    tag = "tasks",
    request_body = BulkFilter,
    responses(
        (status = 200, description = "How many dead tasks were requeued.", body = BulkCount),
        (status = 422, description = "No filter was given, or one is invalid (`state` must be `dead`)."),
    ),
)]
pub(crate) async fn retry_matching(
    State(app): State<Arc<App>>,
    JsonBody(filter): JsonBody<BulkFilter>,
) -> Result<Response, ApiError> {
    require_filter(&filter)?;
    let filter = filter.validate(&[TaskState::Dead])?;
    let mut count = 0u64;
    let mut before = None;
    loop {
        let q = dispatch_store::TaskQuery {
            state: Some(TaskState::Dead),
            kind: filter.kind.clone(),
            queue: filter.queue.clone(),
            before,
            limit: BULK_PAGE,
        };
        let store = app.store.clone();
        let page = tokio::task::spawn_blocking(move || store.list_tasks(&q))
            .await
            .map_err(|e| ApiError::new(500, e.to_string()))??;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        let full = page.len() == BULK_PAGE;
        let mut requeues = tokio::task::JoinSet::new();
        for record in page {
            let app = app.clone();
            requeues.spawn(async move {
                let id = record.id;
                if !app.begin_retry(id) {
                    return Ok(false);
                }
                // As for one task: another retry may have finished between
                // the page read and the claim.
                let result = match app.find_task(id).await {
                    Ok(Some(r)) if r.state == TaskState::Dead => {
                        requeue_dead(&app, r).await.map(|_| true)
                    }
                    Ok(_) => Ok(false),
                    Err(e) => Err(e.into()),
                };
                app.end_retry(id);
                result
            });
        }
        let mut failure = None;
        while let Some(done) = requeues.join_next().await {
            match done {
                Ok(Ok(true)) => count += 1,
                Ok(Ok(false)) => {}
                // A task that came alive again meanwhile is not counted.
                Ok(Err(e)) if e.is_conflict() => {}
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(ApiError::new(500, e.to_string())),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if !full {
            break;
        }
    }
    Ok(json(StatusCode::OK, &BulkCount { count }))
}

/// `POST /v1/tasks/cancel` with `{"state", "type", "queue"}`: cancels
/// every live (scheduled, queued or running) task matching the filters, as
/// `POST /v1/tasks/{id}/cancel` does one. Answers `{"count"}`.
///
/// The matching ids are taken at once; they are then cancelled a page at a
/// time, each page under one lock and committed as one write batch before
/// the next. Tasks submitted after the request arrived are not touched; a
/// task that ended in between is not counted.
#[utoipa::path(
    post,
    path = "/v1/tasks/cancel",
    summary = "Cancel every live task matching filters",
    description = "Cancels every scheduled, queued or running task matching all the filters given (at least one), as the cancel of one task does. Tasks submitted after the request are not touched. Answers how many.",
    tag = "tasks",
    request_body = BulkFilter,
    responses(
        (status = 200, description = "How many live tasks were cancelled.", body = BulkCount),
        (status = 422, description = "No filter was given, or one is invalid (`state` must be scheduled, queued or running)."),
    ),
)]
pub(crate) async fn cancel_matching(
    State(app): State<Arc<App>>,
    JsonBody(filter): JsonBody<BulkFilter>,
) -> Result<Response, ApiError> {
    require_filter(&filter)?;
    let filter = filter.validate(&[TaskState::Scheduled, TaskState::Queued, TaskState::Running])?;
    let mut ids: Vec<TaskId> = app
        .lock()
        .sched
        .tasks()
        .filter(|t| !t.state.is_terminal())
        .filter(|t| filter.matches(t.state, &t.spec.kind, &t.spec.queue))
        .map(|t| t.id)
        .collect();
    ids.sort_unstable();
    let mut count = 0u64;
    for page in ids.chunks(BULK_PAGE) {
        count += app
            .apply_durably(|step| {
                let reason = || "cancelled by request".to_owned();
                let sched = &mut step.shared.sched;
                let cancelled = page
                    .iter()
                    .filter(|id| sched.cancel(**id, reason(), step.now).is_ok());
                Ok::<_, ApiError>(cancelled.count() as u64)
            })
            .await?;
    }
    Ok(json(StatusCode::OK, &BulkCount { count }))
}
