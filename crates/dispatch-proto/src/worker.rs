//! The HTTP worker protocol: register, heartbeat, poll, report, leave.

use std::collections::BTreeMap;
use std::sync::Arc;

use dispatch_core::{TaskId, Worker, WorkerId, WorkerSpec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::FieldError;
use crate::task::{parse_task_id, validate_name};
use crate::time::format_rfc3339;

/// Most tasks one worker may run at once.
pub const MAX_CAPACITY: i64 = 10_000;
/// Longest a poll may hold.
pub const MAX_WAIT_MS: i64 = 60_000;
/// Longest error text kept; longer errors are truncated.
pub const MAX_ERROR_LEN: usize = 16 * 1024;

/// Bounds on one worker's registration, set by the server
/// (`--max-worker-types`, `--max-worker-labels`, `--max-label-bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistrationLimits {
    /// Most task types one worker may name.
    pub max_types: usize,
    /// Most labels one worker may carry.
    pub max_labels: usize,
    /// Longest label name or value, in bytes.
    pub max_label_bytes: usize,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        RegistrationLimits {
            max_types: 64,
            max_labels: 64,
            max_label_bytes: 256,
        }
    }
}

/// `POST /v1/workers`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterWorker {
    /// Display name (host, pod); default `worker`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub name: Option<String>,
    /// Task types it runs (non-empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(required = true, min_items = 1))]
    pub types: Option<Vec<String>>,
    /// Its labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Tasks at once (>= 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    pub capacity: Option<i64>,
    /// Share under `weighted_round_robin`, 1..=1000 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub weight: Option<i64>,
}

impl RegisterWorker {
    /// Validates a registration within the default [`RegistrationLimits`].
    pub fn validate(self) -> Result<WorkerSpec, FieldError> {
        self.validate_within(&RegistrationLimits::default())
    }

    /// Validates a registration within `limits`.
    pub fn validate_within(self, limits: &RegistrationLimits) -> Result<WorkerSpec, FieldError> {
        let name = self.name.unwrap_or_else(|| "worker".to_owned());
        if name.is_empty() || name.len() > 256 {
            return Err(FieldError::new("name", "must be 1 to 256 bytes"));
        }
        let types = self
            .types
            .ok_or_else(|| FieldError::new("types", "is required"))?;
        if types.is_empty() {
            return Err(FieldError::new("types", "must name at least one task type"));
        }
        if types.len() > limits.max_types {
            return Err(FieldError::new(
                "types",
                format!(
                    "at most {} task types per worker (--max-worker-types), got {}",
                    limits.max_types,
                    types.len()
                ),
            ));
        }
        for (i, t) in types.iter().enumerate() {
            validate_name(&format!("types[{i}]"), t)?;
        }
        let labels = self.labels.unwrap_or_default();
        if labels.len() > limits.max_labels {
            return Err(FieldError::new(
                "labels",
                format!(
                    "at most {} labels per worker (--max-worker-labels), got {}",
                    limits.max_labels,
                    labels.len()
                ),
            ));
        }
        for (k, v) in &labels {
            if k.is_empty() || k.len() > limits.max_label_bytes || v.len() > limits.max_label_bytes
            {
                // The field names the label, shortened: the name itself
                // may be what is too long.
                let mut shown = k.as_str();
                if shown.len() > 64 {
                    let mut cut = 64;
                    while !shown.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    shown = &shown[..cut];
                }
                return Err(FieldError::new(
                    format!("labels.{shown}"),
                    format!(
                        "label names are 1 to {0} bytes, values up to {0} (--max-label-bytes)",
                        limits.max_label_bytes
                    ),
                ));
            }
        }
        let capacity = self.capacity.unwrap_or(1);
        if !(1..=MAX_CAPACITY).contains(&capacity) {
            return Err(FieldError::new(
                "capacity",
                format!("must be between 1 and {MAX_CAPACITY}, got {capacity}"),
            ));
        }
        let weight = self.weight.unwrap_or(1);
        if !(1..=1_000).contains(&weight) {
            return Err(FieldError::new(
                "weight",
                format!("must be between 1 and 1000, got {weight}"),
            ));
        }
        Ok(WorkerSpec {
            name,
            types: types.into_iter().map(Arc::from).collect(),
            labels,
            capacity: capacity as u32,
            weight: weight as u32,
        })
    }
}

/// Reply to a registration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterReply {
    /// The worker's id, for every later call.
    pub id: String,
    /// Silence longer than this and the worker is declared dead.
    pub lease_ms: u64,
    /// How often to heartbeat when not polling.
    pub heartbeat_ms: u64,
    /// The worker's first `last_handout` (hand-out number 0: nothing
    /// handed yet), until a poll answer gives a later one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handout: Option<String>,
}

/// Most task ids a worker may name in `running` (a heartbeat's or a
/// poll's).
pub const MAX_RUNNING_IDS: usize = 100_000;

/// `POST /v1/workers/{id}/heartbeat`'s body, optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Every task the worker is running now. After a scheduler takeover,
    /// a task the new leader kept on the worker and that it does not name
    /// goes back to its queue at once (it never reached the worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Vec<String>>,
    /// The `handout` of the last poll answer that gave the worker tasks,
    /// sent once those tasks are in `running`: with `running`, it tells
    /// the scheduler that a task of that answer or an earlier one that the
    /// worker does not name never reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handout: Option<String>,
}

/// The `handout` a poll answer (or a registration, number 0) carries: this
/// scheduler's mark (a new one each time a scheduler starts leading) and
/// the worker's hand-out number.
pub fn handout_token(mark: u32, number: u32) -> String {
    format!("{mark:08x}.{number}")
}

/// What a worker's `last_handout` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastHandout {
    /// It received this scheduler's answers up to this hand-out number.
    Ours(u32),
    /// A mark of another scheduler (before a restart or a takeover): it
    /// received none of this one's answers.
    Other,
}

/// A worker's `last_handout`, read against this scheduler's mark; `None`
/// when the field is absent.
pub fn handout_number(token: Option<&str>, mark: u32) -> Result<Option<LastHandout>, FieldError> {
    let Some(token) = token else {
        return Ok(None);
    };
    let parsed = token.split_once('.').and_then(|(m, n)| {
        let m = (m.len() == 8).then(|| u32::from_str_radix(m, 16).ok())??;
        Some((m, n.parse::<u32>().ok()?))
    });
    match parsed {
        Some((m, n)) if m == mark => Ok(Some(LastHandout::Ours(n))),
        Some(_) => Ok(Some(LastHandout::Other)),
        None => Err(FieldError::new(
            "last_handout",
            "is not the `handout` of a poll answer",
        )),
    }
}

/// The task ids of a `running` list, checked: each an id, at most
/// [`MAX_RUNNING_IDS`]. `None` when the list was not given.
pub fn running_ids(running: Option<&[String]>) -> Result<Option<Vec<TaskId>>, FieldError> {
    let Some(list) = running else {
        return Ok(None);
    };
    if list.len() > MAX_RUNNING_IDS {
        return Err(FieldError::new(
            "running",
            format!("names at most {MAX_RUNNING_IDS} tasks"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, id)| parse_task_id(&format!("running[{i}]"), id))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Reply to a heartbeat.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatReply {
    /// Running tasks that were cancelled: stop them.
    pub cancel: Vec<String>,
}

/// A finished task reported inside a poll.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReportResult {
    /// The task.
    pub task_id: String,
    /// Its result, for a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub result: Option<Box<RawValue>>,
    /// Its error, for a failure (a string or any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub error: Option<serde_json::Value>,
    /// Retry after this long instead of the task's backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 604800000))]
    pub retry_after_ms: Option<i64>,
    /// Do not retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<bool>,
}

/// A report, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Success with its result (JSON text).
    Succeeded(Box<str>),
    /// Failure.
    Failed {
        /// What went wrong.
        error: String,
        /// Retry after this long.
        retry_after_ms: Option<u64>,
        /// Never retry.
        abort: bool,
    },
}

/// Turns an error given as any JSON into text, bounded in length.
pub fn error_text(e: Option<serde_json::Value>) -> String {
    let mut s = match e {
        None | Some(serde_json::Value::Null) => "failed".to_owned(),
        Some(serde_json::Value::String(s)) => s,
        Some(v) => v.to_string(),
    };
    if s.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn retry_after(v: Option<i64>) -> Result<Option<u64>, FieldError> {
    match v {
        Some(ms) if !(0..=7 * 86_400_000).contains(&ms) => Err(FieldError::new(
            "retry_after_ms",
            "must be between 0 and 604800000",
        )),
        v => Ok(v.map(|ms| ms as u64)),
    }
}

impl ReportResult {
    /// Validates a report into its task and outcome.
    pub fn validate(self) -> Result<(TaskId, Outcome), FieldError> {
        let id = parse_task_id("task_id", &self.task_id)?;
        let outcome = match (self.result, self.error) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new("error", "give result or error, not both"));
            }
            (_, Some(e)) => Outcome::Failed {
                error: error_text(Some(e)),
                retry_after_ms: retry_after(self.retry_after_ms)?,
                abort: self.abort.unwrap_or(false),
            },
            (r, None) => Outcome::Succeeded(r.map_or_else(|| "null".into(), Box::<str>::from)),
        };
        Ok((id, outcome))
    }
}

/// `POST /v1/workers/{id}/poll`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// Most tasks to take (default: the worker's capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 10000))]
    pub max: Option<i64>,
    /// Hold up to this long when nothing is assigned (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 60000))]
    pub wait_ms: Option<i64>,
    /// Finished tasks, reported in the same round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<ReportResult>>,
    /// Every task the worker is still running (those in `results` aside);
    /// see `running` of a heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Vec<String>>,
    /// See `last_handout` of a heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handout: Option<String>,
}

impl PollRequest {
    /// The validated `max` (given the worker's capacity) and `wait_ms`.
    /// `max: 0` is a report-only poll.
    pub fn limits(&self, capacity: u32) -> Result<(usize, u64), FieldError> {
        let max = self.max.unwrap_or(i64::from(capacity));
        if !(0..=MAX_CAPACITY).contains(&max) {
            return Err(FieldError::new(
                "max",
                format!("must be between 0 and {MAX_CAPACITY}"),
            ));
        }
        let wait = self.wait_ms.unwrap_or(0);
        if !(0..=MAX_WAIT_MS).contains(&wait) {
            return Err(FieldError::new(
                "wait_ms",
                format!("must be between 0 and {MAX_WAIT_MS}"),
            ));
        }
        Ok((max as usize, wait as u64))
    }
}

/// A task handed to a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolledTask {
    /// Task id, for the report.
    pub id: String,
    /// Task type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Payload.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub payload: Box<RawValue>,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Time limit for this attempt.
    pub timeout_ms: Option<u64>,
    /// Priority.
    pub priority: i64,
    /// A `sharding` shard's index (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_index: Option<u32>,
    /// A `sharding` shard's total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_total: Option<u32>,
}

/// What happened to one report: the answer of `POST /v1/tasks/{id}/complete`
/// and `.../fail`, and each item of a poll reply's `results`, in one shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultStatus {
    /// The task, as the worker named it.
    pub task_id: String,
    /// 200 accepted, 409 not leased to this worker any more, 4xx invalid.
    pub status: u16,
    /// The task's state once the report was applied (`succeeded`, `dead`,
    /// or `scheduled` for a retry); null when the report was refused.
    #[serde(default)]
    pub state: Option<String>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Reply to a poll.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PollReply {
    /// Tasks to run.
    pub tasks: Vec<PolledTask>,
    /// One status per reported result, in order (empty when none were sent).
    #[serde(default)]
    pub results: Vec<ResultStatus>,
    /// Running tasks to stop (cancelled, or past their timeout), repeated in
    /// every reply until the worker reports them.
    #[serde(default)]
    pub cancel: Vec<String>,
    /// Present when `tasks` is not empty: send it back as `last_handout`
    /// (with `running`) once these tasks are in your hands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handout: Option<String>,
}

/// `POST /v1/tasks/{id}/complete`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteTask {
    /// The reporting worker.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub worker_id: Option<String>,
    /// The result (any JSON, default null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub result: Option<Box<RawValue>>,
}

/// `POST /v1/tasks/{id}/fail`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FailTask {
    /// The reporting worker.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub worker_id: Option<String>,
    /// What went wrong (a string or any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub error: Option<serde_json::Value>,
    /// Retry after this long instead of the task's backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 604800000))]
    pub retry_after_ms: Option<i64>,
    /// Do not retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<bool>,
}

/// Parses a worker id given in a path or body.
pub fn parse_worker_id(field: &str, s: Option<&str>) -> Result<WorkerId, FieldError> {
    let s = s.ok_or_else(|| FieldError::new(field, "is required"))?;
    s.parse()
        .map_err(|_| FieldError::new(field, format!("{s:?} is not a worker id")))
}

impl CompleteTask {
    /// The reporting worker and the outcome.
    pub fn validate(self) -> Result<(WorkerId, Outcome), FieldError> {
        let w = parse_worker_id("worker_id", self.worker_id.as_deref())?;
        let r = self.result.map_or_else(|| "null".into(), Box::<str>::from);
        Ok((w, Outcome::Succeeded(r)))
    }
}

impl FailTask {
    /// The reporting worker and the outcome.
    pub fn validate(self) -> Result<(WorkerId, Outcome), FieldError> {
        let w = parse_worker_id("worker_id", self.worker_id.as_deref())?;
        Ok((
            w,
            Outcome::Failed {
                error: error_text(self.error),
                retry_after_ms: retry_after(self.retry_after_ms)?,
                abort: self.abort.unwrap_or(false),
            },
        ))
    }
}

/// A worker as `GET /v1/workers` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerJson {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Types it runs.
    pub types: Vec<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Tasks at once.
    pub capacity: u32,
    /// Share under `weighted_round_robin`.
    pub weight: u32,
    /// Tasks it holds now.
    pub in_flight: u32,
    /// `active`.
    pub state: String,
    /// Last heartbeat, poll or report.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub last_seen_at: String,
    /// Registered at.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub registered_at: String,
    /// Tasks completed.
    pub completed: u64,
    /// Attempts failed.
    pub failed: u64,
}

impl WorkerJson {
    /// The API view of a registered worker.
    pub fn new(w: &Worker) -> Self {
        WorkerJson {
            id: w.id.to_string(),
            name: w.spec.name.clone(),
            types: w.spec.types.iter().map(ToString::to_string).collect(),
            labels: w.spec.labels.clone(),
            capacity: w.spec.capacity,
            weight: w.spec.weight,
            in_flight: w.in_flight(),
            state: w.state.as_str().to_owned(),
            last_seen_at: format_rfc3339(w.last_seen_at),
            registered_at: format_rfc3339(w.registered_at),
            completed: w.completed,
            failed: w.failed,
        }
    }
}

/// `GET /v1/workers`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerList {
    /// Registered workers.
    pub workers: Vec<WorkerJson>,
}
