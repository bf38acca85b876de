//! Cron schedules: `POST /v1/schedules`, `GET /v1/schedules`,
//! `GET`/`DELETE /v1/schedules/{name}`, and [`schedule_loop`], which fires
//! them.
//!
//! Schedules live in memory in [`Schedules`], loaded from the store at
//! start-up. Each entry remembers up to when its fires were decided (run, or
//! dropped by the misfire policy); the loop sleeps until the earliest next
//! fire, asks `dispatch-cron` which fires are due, and for each one writes
//! [`Write::Fire`]: the fire's row, unique on (schedule, fire time), and its
//! task, in one transaction. Only once that is committed does the task reach
//! the core, exactly like a submitted one. So a crash before the commit
//! leaves no trace (the fire is due again at restart, and the misfire
//! policy decides), a crash after it leaves a stored fire and a queued task
//! (recovered like any task), and a fire written twice stores one task.
//!
//! At start-up a schedule's fires are decided up to its `last_fire_at` (or
//! its creation): everything after that which is due is handled by the
//! misfire policy on the loop's first pass.
//!
//! Writes about schedules (create, delete, fires) are sent to the writer
//! while holding the schedules lock, so the store sees them in the order the
//! in-memory map changed: a fire is never written after its schedule's
//! delete.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dispatch_core::{Millis, TaskId};
use dispatch_proto::{
    CreateSchedule, ScheduleJson, ScheduleList, SubmitTask, fire_task, parse_schedule_name,
};
use dispatch_store::{FireOutcome, StoreError, TaskRecord, Write, WriteOutcome};

use crate::api::{ApiError, JsonBody, json};
use crate::app::{Ack, App, acked};
use crate::clock::{now_ms, wall_ms};
use crate::wire::schedule_record;

pub(crate) mod changes;
pub(crate) mod table;

pub(crate) use changes::{patch, pause, resume, trigger};

use table::{Entry, Schedules, rewind, schedule_footprint};

/// The longest the loop sleeps, so that a wall clock that moved is noticed.
const MAX_SLEEP_MS: Millis = 60_000;

/// How long the loop waits before retrying fires the store refused.
const RETRY_MS: Millis = 1_000;

/// A fire written to the store, waiting for its commit.
struct SentFire {
    schedule: String,
    fire_at: Millis,
    task: TaskRecord,
    ack: Ack,
    /// The task's memory, reserved before its write was sent.
    reserved: crate::budget::Charge,
}

/// Decides every schedule's due fires at `now` and writes each one with
/// its task. Returns the writes sent and whether all could be sent.
fn send_due(schedules: &Schedules, app: &App, now: Millis) -> (Vec<SentFire>, bool) {
    let mut sent = Vec::new();
    let mut healthy = true;
    let mut entries = schedules.lock();
    for (name, e) in entries.iter_mut() {
        if e.pending || e.record.paused || e.next.is_none_or(|n| n > now) {
            continue;
        }
        let Some(parts) = e.parts.as_ref() else {
            continue;
        };
        let due = parts.cron.due_fires(e.decided, now, &e.policy(parts));
        if due.missed {
            tracing::warn!(
                schedule = %name,
                misfire = %parts.misfire,
                running = due.fires.len(),
                "fires were missed; the misfire policy decides which run"
            );
        }
        // A wall clock that stepped back must not undecide fires.
        e.decided = e.decided.max(now);
        e.next = due.next;
        for fire_at in due.fires {
            let task = match new_fire_task(app, &parts.template, name, fire_at, now) {
                Ok(Ok(t)) => t,
                Ok(Err(err)) => {
                    tracing::error!(schedule = %name, error = %err, "cannot build a fire's task; skipping the fire");
                    continue;
                }
                Err(err) => {
                    // No id for its task: the fire is due again.
                    tracing::warn!(schedule = %name, error = %err, "cannot reserve a task id; the fire waits");
                    rewind(e, fire_at);
                    healthy = false;
                    break;
                }
            };
            let reserved = match crate::tasks::check_capacity(app, std::slice::from_ref(&task)) {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(schedule = %name, fire_at, reason = %err, "overloaded; skipping the fire");
                    continue;
                }
            };
            let w = Write::Fire {
                schedule: name.clone(),
                fire_at,
                task: task.clone(),
            };
            match app.write(w) {
                Ok(ack) => sent.push(SentFire {
                    schedule: name.clone(),
                    fire_at,
                    task,
                    ack,
                    reserved,
                }),
                Err(err) => {
                    tracing::error!(schedule = %name, error = %err, "cannot write a fire");
                    rewind(e, fire_at);
                    healthy = false;
                    break;
                }
            }
        }
    }
    (sent, healthy)
}

/// The stored record of the task of one fire.
fn new_fire_task(
    app: &App,
    template: &SubmitTask,
    schedule: &str,
    fire_at: Millis,
    now: Millis,
) -> Result<Result<TaskRecord, dispatch_proto::FieldError>, StoreError> {
    let valid = fire_task(template, schedule, fire_at, now).and_then(|mut valid| {
        let explicit = template.strategy.is_some();
        crate::queues::apply_default_strategy(&app.queue_settings(), explicit, &mut valid)?;
        Ok(valid)
    });
    let valid = match valid {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let id = TaskId(app.reserve_ids(1)?);
    Ok(Ok(crate::wire::new_record(id, valid, now)))
}

/// Waits for the fires' commits, then hands the created tasks to the core.
/// Returns false when the store refused some; they are due again.
async fn settle_fires(app: &Arc<App>, sent: Vec<SentFire>) -> bool {
    let mut healthy = true;
    let mut created = Vec::new();
    let mut reserved = app.budget.charge(0);
    for f in sent {
        match acked(Some(f.ack)).await {
            Ok(Some(WriteOutcome::Fired(FireOutcome::Created))) => {
                app.schedules.fired(&f.schedule, f.fire_at);
                created.push(f.task);
                reserved.absorb(f.reserved);
            }
            Ok(Some(WriteOutcome::Fired(FireOutcome::Existing(task)))) => {
                // Recorded before (a restart raced its own commit): that
                // task is the fire's, and it is already stored.
                tracing::info!(schedule = %f.schedule, fire_at = f.fire_at, %task, "fire already recorded");
                app.schedules.fired(&f.schedule, f.fire_at);
            }
            Ok(Some(WriteOutcome::Fired(FireOutcome::UnknownSchedule))) => {}
            Ok(other) => {
                tracing::error!(?other, "the store answered a fire with the wrong outcome");
            }
            Err(e) => {
                tracing::error!(schedule = %f.schedule, fire_at = f.fire_at, error = %e, "a fire was not stored; it is due again");
                app.schedules.retry(&f.schedule, f.fire_at);
                healthy = false;
            }
        }
    }
    if !created.is_empty()
        && let Err(e) = crate::tasks::admit(app, &mut created, &mut reserved, now_ms()).await
    {
        tracing::error!(error = ?e, "stored fire tasks were not admitted; they run after a restart");
    }
    healthy
}

/// Fires schedules when they are due, until the server stops.
pub(crate) async fn schedule_loop(app: Arc<App>) {
    let mut stop = app.stopping.clone();
    loop {
        // Fires follow the calendar: the wall clock, whatever it did. A fire
        // is stored once (unique on schedule and time), so a clock stepped
        // back cannot fire it twice.
        let now = wall_ms();
        let (sent, sent_all) = send_due(&app.schedules, &app, now);
        let stored_all = settle_fires(&app, sent).await;
        let wait = app
            .schedules
            .earliest()
            .map_or(MAX_SLEEP_MS, |at| at.saturating_sub(wall_ms()))
            .clamp(1, MAX_SLEEP_MS);
        let wait = if sent_all && stored_all {
            wait
        } else {
            wait.max(RETRY_MS)
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = app.schedules.changed.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// `POST /v1/schedules`: 201 with the schedule; 409 when the name is taken.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    summary = "Create a cron schedule",
    description = "Each fire submits a task from the template `task`, keyed `schedule:{name}:{fire_at_ms}` so that no fire runs twice.",
    tag = "schedules",
    request_body = CreateSchedule,
    responses(
        (status = 201, description = "Stored; it fires from now on.", body = ScheduleJson),
        (status = 409, description = "A schedule of that name exists."),
        (status = 422, description = "A field is invalid (the expression, the zone, the template...); `field` names it."),
        (status = 429, description = "The memory budget is full."),
    ),
)]
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<CreateSchedule>,
) -> Result<Response, ApiError> {
    let valid = req.validate(now_ms())?;
    crate::queues::check_template(&app.queue_settings(), &valid.parts.template)?;
    let name = valid.name.clone();
    let record = schedule_record(&valid);
    // A schedule is held in memory like a task: charged to the budget.
    let charge = app
        .budget
        .reserve(schedule_footprint(&record), 0)
        .map_err(|e| ApiError::overloaded(e.to_string()))?;
    let ack = {
        let mut entries = app.schedules.lock();
        if entries.contains_key(&name) {
            return Err(ApiError::conflict(format!(
                "a schedule named {name:?} already exists; delete it first"
            )));
        }
        let ack = app.write(Write::UpsertSchedule(record.clone()))?;
        entries.insert(
            name.clone(),
            Entry::new(record, Some(valid.parts), true, Some(charge)),
        );
        ack
    };
    match acked(Some(ack)).await {
        Ok(outcome) => {
            if outcome != Some(WriteOutcome::ScheduleUpserted(false)) {
                tracing::error!(schedule = %name, ?outcome, "unexpected outcome of a schedule insert");
            }
            let shown = {
                let mut entries = app.schedules.lock();
                let e = entries
                    .get_mut(&name)
                    .ok_or_else(|| ApiError::new(500, "a new schedule vanished"))?;
                e.pending = false;
                e.json()
            };
            app.schedules.changed.notify_one();
            Ok(json(StatusCode::CREATED, &shown))
        }
        Err(e) => {
            app.schedules.lock().remove(&name);
            Err(e.into())
        }
    }
}

/// `GET /v1/schedules`: every schedule, by name.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    summary = "List schedules",
    description = "Every schedule, by name, with its next and last fire.",
    tag = "schedules",
    responses((status = 200, description = "Every schedule, by name.", body = ScheduleList)),
)]
pub(crate) async fn list(State(app): State<Arc<App>>) -> Response {
    let schedules = app
        .schedules
        .lock()
        .values()
        .filter(|e| !e.pending)
        .map(Entry::json)
        .collect();
    json(StatusCode::OK, &ScheduleList { schedules })
}

/// `GET /v1/schedules/{name}`: 200 with the schedule, 404.
#[utoipa::path(
    get,
    path = "/v1/schedules/{name}",
    summary = "Read a schedule",
    description = "The schedule with its next fire.",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name.")),
    responses(
        (status = 200, description = "The schedule, with its next fire.", body = ScheduleJson),
        (status = 404, description = "No such schedule."),
    ),
)]
pub(crate) async fn get_one(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let shown = app
        .schedules
        .lock()
        .get(&name)
        .filter(|e| !e.pending)
        .map(Entry::json);
    match shown {
        Some(s) => Ok(json(StatusCode::OK, &s)),
        None => Err(ApiError::not_found(format_args!("schedule {name:?}"))),
    }
}

/// `DELETE /v1/schedules/{name}`: 204, 404 when unknown. The tasks of past
/// fires stay.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{name}",
    summary = "Delete a schedule",
    description = "It fires no more; the tasks of its past fires stay.",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name.")),
    responses(
        (status = 204, description = "Deleted; the tasks of past fires stay."),
        (status = 404, description = "No such schedule."),
    ),
)]
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format_args!("schedule {name:?}"));
    parse_schedule_name(&name).map_err(|_| not_found())?;
    let (removed, ack) = {
        let mut entries = app.schedules.lock();
        if entries.get(&name).is_none_or(|e| e.pending) {
            return Err(not_found());
        }
        let ack = app.write(Write::DeleteSchedule(name.clone()))?;
        (entries.remove(&name), ack)
    };
    match acked(Some(ack)).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => {
            // Still stored: keep it, so memory and store agree.
            if let Some(entry) = removed {
                app.schedules.lock().entry(name).or_insert(entry);
            }
            Err(e.into())
        }
    }
}
