//! Changing schedules while they run: `PATCH /v1/schedules/{name}`,
//! `POST /v1/schedules/{name}/pause`, `/resume` and `/trigger`.
//!
//! A change is validated like a creation (the merged request), stored
//! ([`Write::UpsertSchedule`], under the schedules lock like every schedule
//! write) and put in memory at once; when the store refuses it, the entry
//! as it was comes back. Fires already decided stay decided, so:
//!
//! - a new expression or zone fires from now on: nothing between the last
//!   fire and the change is run for it;
//! - a pause stops fires; a resume (or `paused: false`) leaves the fires
//!   missed meanwhile to the misfire policy on the loop's next pass (`skip`
//!   runs none, `fire_once` the latest, `catch_up` each up to
//!   `catch_up_limit`);
//! - a trigger is one fire now, outside the expression: its task is keyed
//!   `schedule:{name}:manual:{fire_at_ms}` (a manual fire, told apart from
//!   the expression's), stored with its ledger row like any fire and
//!   handed to the core after the commit.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use dispatch_core::Millis;
use dispatch_proto::{CreateSchedule, PatchSchedule, parse_schedule_name};
use dispatch_store::{FireOutcome, Write, WriteOutcome};

use super::new_fire_task;
use super::table::{Entry, schedule_footprint};
use crate::api::{ApiError, JsonBody, json};
use crate::app::{App, acked};
use crate::clock::{now_ms, wall_ms};
use crate::wire::{schedule_record, task_json};

/// `PATCH /v1/schedules/{name}`: 200 with the schedule.
#[utoipa::path(
    patch,
    path = "/v1/schedules/{name}",
    summary = "Change a schedule",
    description = "Changes the fields given (an absent or null field keeps its value); the result is validated as a creation, stored, and in force at once.",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name.")),
    request_body = dispatch_proto::PatchSchedule,
    responses(
        (status = 200, description = "Changed; the schedule.", body = dispatch_proto::ScheduleJson),
        (status = 404, description = "No such schedule."),
        (status = 409, description = "The schedule is being changed by another request."),
        (status = 422, description = "A field is invalid; `field` names it."),
    ),
)]
pub(crate) async fn patch(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<PatchSchedule>,
) -> Result<Response, ApiError> {
    update(&app, &name, req).await
}

/// `POST /v1/schedules/{name}/pause`: 200 with the schedule.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/pause",
    summary = "Pause a schedule",
    description = "A paused schedule does not fire. Stored and in force at once.",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name.")),
    responses(
        (status = 200, description = "The schedule.", body = dispatch_proto::ScheduleJson),
        (status = 404, description = "No such schedule."),
        (status = 409, description = "The schedule is being changed by another request."),
        (status = 422, description = "The schedule as stored does not validate."),
    ),
)]
pub(crate) async fn pause(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let req = PatchSchedule {
        paused: Some(true),
        ..PatchSchedule::default()
    };
    update(&app, &name, req).await
}

/// `POST /v1/schedules/{name}/resume`: 200 with the schedule.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/resume",
    summary = "Resume a schedule",
    description = "A paused schedule does not fire. Stored and in force at once.",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name.")),
    responses(
        (status = 200, description = "The schedule.", body = dispatch_proto::ScheduleJson),
        (status = 404, description = "No such schedule."),
        (status = 409, description = "The schedule is being changed by another request."),
        (status = 422, description = "The schedule as stored does not validate."),
    ),
)]
pub(crate) async fn resume(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let req = PatchSchedule {
        paused: Some(false),
        ..PatchSchedule::default()
    };
    update(&app, &name, req).await
}

/// What the schedule named `name` was created with, as the store has it.
fn as_created(e: &Entry) -> CreateSchedule {
    CreateSchedule {
        name: Some(e.record.name.clone()),
        cron: Some(e.record.cron.clone()),
        timezone: Some(e.record.timezone.clone()),
        task: e
            .parts
            .as_ref()
            .map(|p| p.template.clone())
            .or_else(|| serde_json::from_str(&e.record.task).ok()),
        misfire: Some(e.record.misfire.clone()),
        catch_up_limit: Some(i64::from(e.record.catch_up_limit)),
        paused: Some(e.record.paused),
    }
}

/// Validates, stores and applies a change of the schedule `name`.
async fn update(app: &Arc<App>, name: &str, req: PatchSchedule) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format_args!("schedule {name:?}"));
    parse_schedule_name(name).map_err(|_| not_found())?;
    let (old, ack) = {
        let mut entries = app.schedules.lock();
        let e = entries
            .get(name)
            .filter(|e| !e.pending)
            .ok_or_else(not_found)?;
        let current = as_created(e);
        let moves = req.moves_fires(&current);
        let valid = req.merge(current)?.validate(now_ms())?;
        crate::queues::check_template(&app.queue_settings(), &valid.parts.template)?;
        let mut record = schedule_record(&valid);
        record.created_at = e.record.created_at;
        record.last_fire_at = e.record.last_fire_at;
        let ack = app.write(Write::UpsertSchedule(record.clone()))?;
        let charge = app.budget.charge(schedule_footprint(&record));
        let decided = if moves {
            e.decided.max(wall_ms())
        } else {
            e.decided
        };
        let mut fresh = Entry::new(record, Some(valid.parts), false, Some(charge));
        fresh.decided = decided;
        fresh.next = fresh
            .parts
            .as_ref()
            .and_then(|p| p.cron.next_after(decided));
        let old = entries.insert(name.to_owned(), fresh);
        (old, ack)
    };
    if let Err(e) = acked(Some(ack)).await {
        // Not stored: memory goes back to what the store has.
        if let Some(old) = old {
            app.schedules.lock().insert(name.to_owned(), old);
        }
        return Err(e.into());
    }
    app.schedules.changed.notify_one();
    tracing::info!(schedule = name, "schedule changed");
    let shown = app
        .schedules
        .lock()
        .get(name)
        .map(Entry::json)
        .ok_or_else(not_found)?;
    Ok(json(StatusCode::OK, &shown))
}

/// `POST /v1/schedules/{name}/trigger`: one fire now, whatever the
/// expression and even when paused; 201 with its task.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/trigger",
    summary = "Fire a schedule now",
    description = "One fire now, whatever the expression and even when paused, recorded as a manual fire; answers its task.",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name.")),
    responses(
        (status = 201, description = "The task of the fire.", body = dispatch_proto::TaskJson),
        (status = 404, description = "No such schedule."),
        (status = 409, description = "The schedule as stored does not validate, or the fire's task conflicts."),
        (status = 422, description = "The fire's task is invalid."),
        (status = 429, description = "The server, the queue or the memory budget is full."),
    ),
)]
pub(crate) async fn trigger(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format_args!("schedule {name:?}"));
    parse_schedule_name(&name).map_err(|_| not_found())?;
    let now = now_ms();
    let (fire_at, mut task, mut reserved, ack) = {
        let entries = app.schedules.lock();
        let e = entries
            .get(&name)
            .filter(|e| !e.pending)
            .ok_or_else(not_found)?;
        let parts = e.parts.as_ref().ok_or_else(|| {
            ApiError::conflict(format!(
                "schedule {name:?} as stored does not validate; change it first"
            ))
        })?;
        // Apart from the expression's fires, in the ledger as in keys.
        let mut fire_at: Millis = wall_ms();
        if parts.cron.next_after(fire_at.saturating_sub(1)) == Some(fire_at) {
            fire_at += 1;
        }
        let mut task = new_fire_task(&app, &parts.template, &name, fire_at, now)??;
        task.body.idempotency_key = Some(format!("schedule:{name}:manual:{fire_at}"));
        let reserved = crate::tasks::check_capacity(&app, std::slice::from_ref(&task))
            .map_err(ApiError::overloaded)?;
        let ack = app.write(Write::Fire {
            schedule: name.clone(),
            fire_at,
            task: task.clone(),
        })?;
        (fire_at, task, reserved, ack)
    };
    match acked(Some(ack)).await? {
        Some(WriteOutcome::Fired(FireOutcome::Created)) => {
            app.schedules.fired(&name, fire_at);
            let mut created = vec![task];
            crate::tasks::admit(&app, &mut created, &mut reserved, now).await?;
            task = created.remove(0);
        }
        Some(WriteOutcome::Fired(FireOutcome::Existing(id))) => {
            task = app
                .find_task(id)
                .await?
                .ok_or_else(|| ApiError::new(500, "a fire's task vanished"))?;
        }
        Some(WriteOutcome::Fired(FireOutcome::UnknownSchedule)) => return Err(not_found()),
        other => {
            return Err(ApiError::new(
                500,
                format!("the store answered a fire with {other:?}"),
            ));
        }
    }
    tracing::info!(schedule = %name, task = %task.id, "schedule triggered by hand");
    Ok(json(StatusCode::CREATED, &task_json(&task)))
}
