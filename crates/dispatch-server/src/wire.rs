//! Where wire types and store records meet: the conversions between the
//! contract's types (`dispatch-proto`, `dispatch-grpc`) and what the store
//! keeps (`dispatch-store`) or the core holds. Neither side knows the
//! other; only the server does.

use dispatch_core::{Millis, Task, TaskId, TaskState};
use dispatch_proto::time::format_rfc3339;
use dispatch_proto::{
    BackoffJson, FieldError, PolledTask, ScheduleJson, ScheduleParts, TaskJson, TaskRef,
    ValidListTasks, ValidSchedule, ValidTask, stored_json,
};
use dispatch_store::{AttemptRecord, ScheduleRecord, TaskBody, TaskQuery, TaskRecord};

use crate::budget::Body;

/// The record of a newly accepted task, under `id`, as received at `now`.
pub(crate) fn new_record(id: TaskId, v: ValidTask, now: Millis) -> TaskRecord {
    let waits = v.spec.run_at.is_some_and(|at| at > now) || !v.depends_on.is_empty();
    TaskRecord {
        id,
        spec: v.spec,
        body: TaskBody {
            payload: v.payload,
            idempotency_key: v.idempotency_key,
            depends_on: v.depends_on,
            created_at: v.created_at,
            shard: None,
        },
        state: if waits {
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
        request_digest: v.digest,
    }
}

/// The API view of an ended attempt.
pub(crate) fn attempt_json(a: &AttemptRecord) -> dispatch_proto::AttemptJson {
    dispatch_proto::AttemptJson {
        attempt: a.attempt,
        worker_id: a.worker.to_string(),
        worker_name: a.worker_name.clone(),
        collected_at: format_rfc3339(a.collected_at),
        finished_at: Some(format_rfc3339(a.finished_at)),
        outcome: Some(a.outcome.as_str().to_owned()),
        error: a.error.clone(),
        retry_delay_ms: a.retry_delay_ms,
    }
}

/// The API view of a stored or live task.
pub(crate) fn task_json(r: &TaskRecord) -> TaskJson {
    TaskJson {
        id: r.id.to_string(),
        kind: r.spec.kind.to_string(),
        queue: r.spec.queue.to_string(),
        payload: stored_json(&r.body.payload, "null"),
        priority: i64::from(r.spec.priority),
        run_at: r.spec.run_at.map(format_rfc3339),
        timeout_ms: r.spec.timeout_ms,
        max_attempts: r.spec.max_attempts,
        backoff: BackoffJson {
            initial_ms: Some(r.spec.backoff.initial_ms as i64),
            max_ms: Some(r.spec.backoff.max_ms as i64),
            multiplier: Some(r.spec.backoff.multiplier),
        },
        idempotency_key: r.body.idempotency_key.clone(),
        routing_key: r.spec.routing_key.as_deref().map(str::to_owned),
        strategy: Some(r.spec.strategy.as_str().to_owned()),
        labels: r.spec.labels.clone(),
        depends_on: r.body.depends_on.iter().map(ToString::to_string).collect(),
        state: r.state.as_str().to_owned(),
        attempts: r.attempts,
        result: r.result.as_deref().map(|t| stored_json(t, "null")),
        error: r.error.clone(),
        worker_id: r.worker.map(|w| w.to_string()),
        created_at: format_rfc3339(r.body.created_at),
        started_at: r.started_at.map(format_rfc3339),
        finished_at: r.finished_at.map(format_rfc3339),
        shard_index: r.body.shard.map(|(i, _)| i),
        shard_total: r.body.shard.map(|(_, n)| n),
        pinned_worker_id: r.spec.pinned.map(|w| w.to_string()),
    }
}

/// A task as a submission answers it under `Prefer: return=minimal`.
pub(crate) fn task_ref(r: &TaskRecord) -> TaskRef {
    TaskRef {
        id: r.id.to_string(),
        state: r.state.as_str().to_owned(),
    }
}

/// The store query of a validated `GET /v1/tasks`.
pub(crate) fn task_query(q: ValidListTasks) -> TaskQuery {
    TaskQuery {
        state: q.state,
        kind: q.kind,
        queue: q.queue,
        before: q.before,
        limit: q.limit,
    }
}

/// The delivery view of a running task, for an HTTP poll.
pub(crate) fn polled_task(t: &Task<Body>) -> PolledTask {
    PolledTask {
        id: t.id.to_string(),
        kind: t.spec.kind.to_string(),
        queue: t.spec.queue.to_string(),
        payload: stored_json(t.body.payload(), "null"),
        attempt: t.attempts,
        max_attempts: t.spec.max_attempts,
        timeout_ms: t.spec.timeout_ms,
        priority: i64::from(t.spec.priority),
        shard_index: t.body.shard().map(|(i, _)| i),
        shard_total: t.body.shard().map(|(_, n)| n),
    }
}

/// The task message of a running task, for a gRPC stream.
pub(crate) fn task_message(t: &Task<Body>) -> dispatch_grpc::pb::Task {
    dispatch_grpc::pb::Task {
        id: t.id.to_string(),
        r#type: t.spec.kind.to_string(),
        queue: t.spec.queue.to_string(),
        payload_json: t.body.payload().to_string(),
        attempt: t.attempts,
        max_attempts: t.spec.max_attempts,
        timeout_ms: t.spec.timeout_ms,
        priority: i32::from(t.spec.priority),
        shard_index: t.body.shard().map(|(i, _)| i),
        shard_total: t.body.shard().map(|(_, n)| n),
    }
}

/// What the store keeps of a new schedule.
pub(crate) fn schedule_record(v: &ValidSchedule) -> ScheduleRecord {
    ScheduleRecord {
        name: v.name.clone(),
        cron: v.parts.cron.expression().to_owned(),
        timezone: v.parts.cron.timezone().to_owned(),
        task: v.task_text.clone(),
        misfire: v.parts.misfire.as_str().to_owned(),
        catch_up_limit: v.catch_up_limit,
        paused: v.paused,
        created_at: v.created_at,
        last_fire_at: None,
    }
}

/// A stored schedule's parts, decoded (see [`ScheduleParts::decode`]).
pub(crate) fn schedule_parts(r: &ScheduleRecord) -> Result<ScheduleParts, FieldError> {
    ScheduleParts::decode(&r.cron, &r.timezone, &r.misfire, &r.task)
}

/// The API view of a schedule, with its next fire as the server knows it.
pub(crate) fn schedule_json(r: &ScheduleRecord, next_fire_at: Option<Millis>) -> ScheduleJson {
    ScheduleJson {
        name: r.name.clone(),
        cron: r.cron.clone(),
        timezone: r.timezone.clone(),
        task: stored_json(&r.task, "{}"),
        misfire: r.misfire.clone(),
        catch_up_limit: r.catch_up_limit,
        paused: r.paused,
        created_at: format_rfc3339(r.created_at),
        next_fire_at: next_fire_at.map(format_rfc3339),
        last_fire_at: r.last_fire_at.map(format_rfc3339),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_schedule_reads_back_and_shows_as_created() {
        let v: dispatch_proto::CreateSchedule = dispatch_proto::decode(
            br#"{"name": "n", "cron": "* * * * * *", "task": {"type": "x", "payload": {"a": [1]}, "priority": 7}}"#,
        )
        .unwrap();
        let v = v.validate(1_000).unwrap();
        let r = schedule_record(&v);
        assert_eq!(
            (&*r.timezone, &*r.misfire, r.last_fire_at),
            ("UTC", "fire_once", None)
        );
        let parts = schedule_parts(&r).unwrap();
        assert_eq!(parts.cron.expression(), "* * * * * *");
        let j = schedule_json(&r, Some(2_000));
        assert_eq!(j.next_fire_at.as_deref(), Some("1970-01-01T00:00:02.000Z"));
        assert_eq!(
            j.task.get(),
            r#"{"type":"x","payload":{"a": [1]},"priority":7}"#
        );
    }
}
