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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dispatch_core::{Millis, TaskId};
use dispatch_cron::MisfirePolicy;
use dispatch_proto::{
    CreateSchedule, ScheduleJson, ScheduleList, ScheduleParts, SubmitTask, fire_task,
    parse_schedule_name,
};
use dispatch_store::{FireOutcome, ScheduleRecord, StoreError, TaskRecord, Write, WriteOutcome};
use tokio::sync::Notify;

use crate::api::{ApiError, JsonBody, json};
use crate::app::{Ack, App, acked, now_ms, wall_ms};
use crate::wire::{schedule_json, schedule_parts, schedule_record};

/// How late the latest due fire may run and still count as on time.
pub(crate) const MISFIRE_GRACE_MS: Millis = 60_000;

/// The longest the loop sleeps, so that a wall clock that moved is noticed.
const MAX_SLEEP_MS: Millis = 60_000;

/// How long the loop waits before retrying fires the store refused.
const RETRY_MS: Millis = 1_000;

/// One schedule in memory.
struct Entry {
    record: ScheduleRecord,
    /// `None` when the stored schedule no longer validates: it is listed
    /// but never fires.
    parts: Option<ScheduleParts>,
    /// Every fire at or before this was run or dropped.
    decided: Millis,
    /// The next fire after `decided`.
    next: Option<Millis>,
    /// Created but not yet committed: holds the name, invisible otherwise.
    pending: bool,
    /// What it takes of `--max-memory-mb` (its template twice over: as
    /// text and parsed), given back when it is deleted.
    _charge: Option<crate::budget::Charge>,
}

impl Entry {
    fn new(
        record: ScheduleRecord,
        parts: Option<ScheduleParts>,
        pending: bool,
        charge: Option<crate::budget::Charge>,
    ) -> Entry {
        let decided = record.last_fire_at.unwrap_or(record.created_at);
        let next = parts.as_ref().and_then(|p| p.cron.next_after(decided));
        Entry {
            record,
            parts,
            decided,
            next,
            pending,
            _charge: charge,
        }
    }

    fn json(&self) -> ScheduleJson {
        let next = if self.record.paused { None } else { self.next };
        schedule_json(&self.record, next)
    }

    fn policy(&self, parts: &ScheduleParts) -> MisfirePolicy {
        MisfirePolicy {
            misfire: parts.misfire,
            catch_up_limit: self.record.catch_up_limit as usize,
            grace_ms: MISFIRE_GRACE_MS,
        }
    }
}

/// Every schedule, by name, and the loop's wake-up.
#[derive(Default)]
pub(crate) struct Schedules {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Notified when a schedule was added or removed.
    changed: Notify,
}

/// A fire written to the store, waiting for its commit.
struct SentFire {
    schedule: String,
    fire_at: Millis,
    task: TaskRecord,
    ack: Ack,
    /// The task's memory, reserved before its write was sent.
    reserved: crate::budget::Charge,
}

impl Schedules {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // Entries are replaced whole; any state a panic left is consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the stored schedules at start-up; they are charged to
    /// `budget` whatever it says, like recovered tasks.
    pub(crate) fn load(
        &self,
        records: Vec<ScheduleRecord>,
        budget: &std::sync::Arc<crate::budget::MemoryBudget>,
    ) {
        let mut entries = self.lock();
        for r in records {
            let parts = match schedule_parts(&r) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(schedule = %r.name, error = %e, "a stored schedule does not validate; it will not fire");
                    None
                }
            };
            let charge = budget.charge(schedule_footprint(&r));
            entries.insert(r.name.clone(), Entry::new(r, parts, false, Some(charge)));
        }
        tracing::info!(schedules = entries.len(), "loaded cron schedules");
        drop(entries);
        self.changed.notify_one();
    }

    /// The earliest next fire of an active schedule.
    fn earliest(&self) -> Option<Millis> {
        self.lock()
            .values()
            .filter(|e| !e.pending && !e.record.paused)
            .filter_map(|e| e.next)
            .min()
    }

    /// Decides every schedule's due fires at `now` and writes each one with
    /// its task. Returns the writes sent and whether all could be sent.
    fn send_due(&self, app: &App, now: Millis) -> (Vec<SentFire>, bool) {
        let mut sent = Vec::new();
        let mut healthy = true;
        let mut entries = self.lock();
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
                let reserved = match crate::tasks::check_capacity(app, std::slice::from_ref(&task))
                {
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

    /// Records a committed fire.
    fn fired(&self, schedule: &str, fire_at: Millis) {
        if let Some(e) = self.lock().get_mut(schedule) {
            e.record.last_fire_at = e.record.last_fire_at.max(Some(fire_at));
        }
    }

    /// Makes a fire the store refused due again.
    fn retry(&self, schedule: &str, fire_at: Millis) {
        if let Some(e) = self.lock().get_mut(schedule) {
            rewind(e, fire_at);
        }
    }
}

/// Undecides `fire_at` and everything after it.
fn rewind(e: &mut Entry, fire_at: Millis) {
    e.decided = e.decided.min(fire_at.saturating_sub(1));
    e.next = Some(e.next.map_or(fire_at, |n| n.min(fire_at)));
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
        crate::queues::apply_default_strategy(&app.config.queue_settings, explicit, &mut valid)?;
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
        let (sent, sent_all) = app.schedules.send_due(&app, now);
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
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<CreateSchedule>,
) -> Result<Response, ApiError> {
    let valid = req.validate(now_ms())?;
    crate::queues::check_template(&app.config.queue_settings, &valid.parts.template)?;
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

/// What a schedule is charged: its strings, its template twice over (kept
/// as text and parsed) and a fixed share for its entry.
fn schedule_footprint(r: &ScheduleRecord) -> u64 {
    let strings = r.name.len() + r.cron.len() + r.timezone.len() + r.misfire.len();
    (1_024 + strings + 2 * r.task.len()) as u64
}

/// `GET /v1/schedules`: every schedule, by name.
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
