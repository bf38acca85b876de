//! The Task JSON, submissions and their validation.

use std::collections::BTreeMap;
use std::sync::Arc;

use dispatch_core::{Backoff, Millis, Strategy, TaskId, TaskSpec, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::FieldError;
use crate::time::parse_rfc3339;

/// Longest task type, queue or schedule name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest idempotency or routing key.
pub const MAX_KEY_LEN: usize = 256;
/// Most tasks in one batch submission.
pub const MAX_BATCH: usize = 10_000;
/// Most shards of a `sharding` task.
pub const MAX_SHARDS: i64 = 1_000;
/// Most parents a task may wait for.
pub const MAX_PARENTS: usize = 1_000;
/// Most attempts a task may ask for.
pub const MAX_ATTEMPTS: i64 = 1_000;
/// Routing strategies named by the contract.
pub const STRATEGIES: [&str; 8] = [
    "round_robin",
    "weighted_round_robin",
    "random",
    "least_loaded",
    "consistent_hash",
    "failover",
    "broadcast",
    "sharding",
];

/// Retry backoff on the wire.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackoffJson {
    /// Delay after the first failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 86400000))]
    pub initial_ms: Option<i64>,
    /// Cap on any delay.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 604800000))]
    pub max_ms: Option<i64>,
    /// Growth between delays.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub multiplier: Option<f64>,
}

/// A task submission (`POST /v1/tasks`, one element of a batch).
///
/// Every field is optional at the serde level so that validation, not the
/// parser, explains what is missing or wrong.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    /// Task type (required).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, pattern = "^[A-Za-z0-9._:-]{1,128}$")
    )]
    pub kind: Option<String>,
    /// Queue, default `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._:-]{1,128}$"))]
    pub queue: Option<String>,
    /// Any JSON, default null.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub payload: Option<Box<RawValue>>,
    /// -100..=100, default 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = -100, maximum = 100))]
    pub priority: Option<i64>,
    /// Earliest start, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub run_at: Option<String>,
    /// Earliest start, relative to now.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 315_360_000_000.0))]
    pub delay_ms: Option<i64>,
    /// Per-attempt time limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604800000))]
    pub timeout_ms: Option<i64>,
    /// Attempts before `dead`, default 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max_attempts: Option<i64>,
    /// Retry delays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffJson>,
    /// Deduplication key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub idempotency_key: Option<String>,
    /// Key for key-based routing.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub routing_key: Option<String>,
    /// Routing strategy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Required worker labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Parent task ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_items = 1000))]
    pub depends_on: Option<Vec<String>>,
    /// How many shards, with strategy `sharding` (1 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub shards: Option<i64>,
}

/// `POST /v1/tasks/batch`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    /// The tasks, accepted all or none.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 10000))]
    pub tasks: Vec<SubmitTask>,
}

/// The SHA-256 digest of a normalised task submission.
pub type RequestDigest = [u8; 32];

/// A submission that passed validation: what the core schedules, and what
/// the server keeps beside it (it makes the store's record of it).
#[derive(Clone, Debug, PartialEq)]
pub struct ValidTask {
    /// What the core schedules.
    pub spec: TaskSpec,
    /// The payload, as JSON text; shared, never copied, by the copies and
    /// shards made of the task and by the records the server keeps.
    pub payload: Arc<str>,
    /// The client's deduplication key.
    pub idempotency_key: Option<String>,
    /// Tasks that must succeed first, each named once.
    pub depends_on: Vec<TaskId>,
    /// When the submission was received.
    pub created_at: Millis,
    /// The shard count of a `sharding` task.
    pub shards: Option<u32>,
    /// The digest of the normalised submission ([`request_digest`]), for a
    /// task with an idempotency key; stored with the key.
    pub digest: Option<RequestDigest>,
}

/// Checks a type, queue or schedule name: 1 to 128 of `[A-Za-z0-9._:-]`.
pub fn validate_name(field: &str, s: &str) -> Result<(), FieldError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:-".contains(*c)))
    {
        return Err(FieldError::new(
            field,
            format!("character {c:?} is not allowed; use letters, digits and . _ : -"),
        ));
    }
    Ok(())
}

/// Prefixes of the idempotency keys the server derives itself: a cron
/// fire's (`schedule:NAME:MS`) and a broadcast copy's or shard's
/// (`dispatch:copy:I:KEY`). Clients may not use them, so that no client
/// key can take the place of a derived one.
pub const RESERVED_KEY_PREFIXES: [&str; 2] = ["schedule:", "dispatch:"];

/// The idempotency key of copy or shard `i` of a task submitted with `key`.
pub fn copy_key(key: &str, i: u32) -> String {
    format!("dispatch:copy:{i}:{key}")
}

fn check_key(field: &str, s: &str) -> Result<(), FieldError> {
    if s.is_empty() || s.len() > MAX_KEY_LEN {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {MAX_KEY_LEN} bytes"),
        ));
    }
    Ok(())
}

fn in_range(field: &str, v: i64, lo: i64, hi: i64) -> Result<i64, FieldError> {
    if v < lo || v > hi {
        return Err(FieldError::new(
            field,
            format!("must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(v)
}

/// Parses a task id as given in a path, query or `depends_on`.
pub fn parse_task_id(field: &str, s: &str) -> Result<TaskId, FieldError> {
    s.parse()
        .map_err(|_| FieldError::new(field, format!("{s:?} is not a task id")))
}

impl SubmitTask {
    /// A submission of `kind` with `payload`.
    pub fn new(kind: &str, payload: Box<RawValue>) -> Self {
        SubmitTask {
            kind: Some(kind.to_owned()),
            payload: Some(payload),
            ..SubmitTask::default()
        }
    }

    /// Validates the submission received at `now`.
    pub fn validate(self, now: Millis) -> Result<ValidTask, FieldError> {
        let kind = self
            .kind
            .ok_or_else(|| FieldError::new("type", "is required"))?;
        validate_name("type", &kind)?;
        let queue = self.queue.unwrap_or_else(|| "default".to_owned());
        validate_name("queue", &queue)?;
        let priority = in_range("priority", self.priority.unwrap_or(0), -100, 100)? as i8;
        let (given_run_at, given_delay) = (self.run_at.clone(), self.delay_ms);
        let run_at = match (self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "delay_ms",
                    "give run_at or delay_ms, not both",
                ));
            }
            (Some(at), None) => Some(parse_rfc3339(&at).map_err(|m| FieldError::new("run_at", m))?),
            (None, Some(d)) => {
                let d = in_range("delay_ms", d, 0, 10 * 365 * 86_400_000)?;
                Some(now.saturating_add(d as u64))
            }
            (None, None) => None,
        };
        let timeout_ms = self
            .timeout_ms
            .map(|t| in_range("timeout_ms", t, 1, 7 * 86_400_000).map(|t| t as u64))
            .transpose()?;
        let max_attempts = in_range(
            "max_attempts",
            self.max_attempts.unwrap_or(3),
            1,
            MAX_ATTEMPTS,
        )? as u32;
        let backoff = validate_backoff(self.backoff.unwrap_or_default())?;
        if let Some(k) = &self.idempotency_key {
            check_key("idempotency_key", k)?;
            if let Some(p) = RESERVED_KEY_PREFIXES.iter().find(|p| k.starts_with(*p)) {
                return Err(FieldError::new(
                    "idempotency_key",
                    format!(
                        "keys starting with {p:?} are reserved for the keys Dispatch derives (cron fires, broadcast copies, shards)"
                    ),
                ));
            }
        }
        if let Some(k) = &self.routing_key {
            check_key("routing_key", k)?;
        }
        let strategy = match &self.strategy {
            None => Strategy::RoundRobin,
            Some(s) => Strategy::parse(s).ok_or_else(|| {
                FieldError::new(
                    "strategy",
                    format!("unknown strategy {s:?}; one of {}", STRATEGIES.join(", ")),
                )
            })?,
        };
        let shards = match (strategy, self.shards) {
            (Strategy::Sharding, None) => {
                return Err(FieldError::new(
                    "shards",
                    "is required with strategy sharding",
                ));
            }
            (Strategy::Sharding, Some(n)) => Some(in_range("shards", n, 1, MAX_SHARDS)? as u32),
            (_, Some(_)) => {
                return Err(FieldError::new("shards", "is only for strategy sharding"));
            }
            (_, None) => None,
        };
        if strategy == Strategy::ConsistentHash && self.routing_key.is_none() {
            return Err(FieldError::new(
                "routing_key",
                "is required with strategy consistent_hash",
            ));
        }
        let labels = self.labels.unwrap_or_default();
        if labels.len() > 64 {
            return Err(FieldError::new("labels", "at most 64 labels"));
        }
        for (k, v) in &labels {
            if k.is_empty() || k.len() > 128 || v.len() > 256 {
                return Err(FieldError::new(
                    format!("labels.{k}"),
                    "label names are 1 to 128 bytes, values up to 256",
                ));
            }
        }
        let depends_on = self.depends_on.unwrap_or_default();
        if depends_on.len() > MAX_PARENTS {
            return Err(FieldError::new(
                "depends_on",
                format!("at most {MAX_PARENTS} parents"),
            ));
        }
        let mut parents = Vec::with_capacity(depends_on.len());
        for (i, p) in depends_on.iter().enumerate() {
            let id = parse_task_id(&format!("depends_on[{i}]"), p)?;
            if !parents.contains(&id) {
                parents.push(id);
            }
        }
        // Shared, never copied, by the copies and shards made of the task
        // and by the records the server keeps and writes.
        let payload: Arc<str> = match self.payload {
            Some(p) => Arc::from(Box::<str>::from(p)),
            None => null_payload(),
        };
        let mut valid = ValidTask {
            spec: TaskSpec {
                kind: Arc::from(kind),
                queue: Arc::from(queue),
                priority,
                run_at,
                max_attempts,
                timeout_ms,
                backoff,
                strategy,
                routing_key: self.routing_key.map(Arc::from),
                labels,
                pinned: None,
                join: false,
            },
            payload,
            idempotency_key: self.idempotency_key,
            depends_on: parents,
            created_at: now,
            shards,
            digest: None,
        };
        if valid.idempotency_key.is_some() {
            // `run_at` was parsed above, so it is valid here.
            let when = match (given_run_at, given_delay) {
                (Some(at), _) => When::At(parse_rfc3339(&at).unwrap_or_default()),
                (None, Some(d)) => When::Delay(d),
                (None, None) => When::Now,
            };
            valid.digest = Some(request_digest(&valid, when, self.strategy.as_deref()));
        }
        Ok(valid)
    }
}

/// When a submission asked to start, as it asked: a `delay_ms` stays
/// relative, so that the same request sent again digests the same.
enum When {
    Now,
    At(Millis),
    Delay(i64),
}

/// SHA-256 of a submission in canonical form: every field after the
/// contract's defaults are applied (queue `default`, priority 0, three
/// attempts, the default backoff), the payload with its object keys sorted,
/// parents sorted, `run_at` as milliseconds or `delay_ms` as given, and the strategy as
/// named (null when none was). Two submissions digest the same when they
/// ask for the same work, however their JSON is spaced or ordered. The
/// idempotency key itself is not part of it.
fn request_digest(v: &ValidTask, when: When, strategy: Option<&str>) -> RequestDigest {
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};
    let payload: Value = serde_json::from_str(&v.payload).unwrap_or(Value::Null);
    let (run_at, delay_ms) = match when {
        When::Now => (None, None),
        When::At(at) => (Some(at), None),
        When::Delay(d) => (None, Some(d)),
    };
    let s = &v.spec;
    // Parents are a set: their order asks for nothing.
    let mut parents: Vec<u64> = v.depends_on.iter().map(|d| d.0).collect();
    parents.sort_unstable();
    let normalised = json!({
        "type": &*s.kind,
        "queue": &*s.queue,
        "payload": payload,
        "priority": s.priority,
        "run_at": run_at,
        "delay_ms": delay_ms,
        "timeout_ms": s.timeout_ms,
        "max_attempts": s.max_attempts,
        "backoff": {
            "initial_ms": s.backoff.initial_ms,
            "max_ms": s.backoff.max_ms,
            "multiplier": s.backoff.multiplier,
        },
        "routing_key": s.routing_key.as_deref(),
        "strategy": strategy,
        "labels": &s.labels,
        "depends_on": parents,
        "shards": v.shards,
    });
    let mut text = String::new();
    canonical_json(&normalised, &mut text);
    Sha256::digest(text.as_bytes()).into()
}

/// Writes `v` as JSON with every object's keys in sorted order and no
/// spaces, whatever order the map type keeps.
fn canonical_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn validate_backoff(b: BackoffJson) -> Result<Backoff, FieldError> {
    let d = Backoff::default();
    let day = 86_400_000;
    let initial_ms = in_range(
        "backoff.initial_ms",
        b.initial_ms.unwrap_or(d.initial_ms as i64),
        0,
        day,
    )? as u64;
    let max_ms = in_range(
        "backoff.max_ms",
        b.max_ms.unwrap_or(d.max_ms.max(initial_ms) as i64),
        0,
        7 * day,
    )? as u64;
    if max_ms < initial_ms {
        return Err(FieldError::new(
            "backoff.max_ms",
            "must be at least backoff.initial_ms",
        ));
    }
    let multiplier = b.multiplier.unwrap_or(d.multiplier);
    if !(1.0..=100.0).contains(&multiplier) {
        return Err(FieldError::new(
            "backoff.multiplier",
            "must be between 1 and 100",
        ));
    }
    Ok(Backoff {
        initial_ms,
        max_ms,
        multiplier,
    })
}

/// A task as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskJson {
    /// Server-assigned id.
    pub id: String,
    /// Task type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Payload.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub payload: Box<RawValue>,
    /// Priority.
    pub priority: i64,
    /// When a scheduled task becomes ready.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub run_at: Option<String>,
    /// Per-attempt time limit.
    pub timeout_ms: Option<u64>,
    /// Attempts before `dead`.
    pub max_attempts: u32,
    /// Retry delays.
    pub backoff: BackoffJson,
    /// Deduplication key.
    pub idempotency_key: Option<String>,
    /// Routing key.
    pub routing_key: Option<String>,
    /// Routing strategy asked for.
    pub strategy: Option<String>,
    /// Required worker labels.
    pub labels: BTreeMap<String, String>,
    /// Parent task ids.
    pub depends_on: Vec<String>,
    /// Current state.
    pub state: String,
    /// Attempts started.
    pub attempts: u32,
    /// Result of a successful run.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub result: Option<Box<RawValue>>,
    /// Last error.
    pub error: Option<String>,
    /// Worker holding or last holding it.
    pub worker_id: Option<String>,
    /// Accepted at.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    /// Current or last attempt started at.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub started_at: Option<String>,
    /// Terminal since.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub finished_at: Option<String>,
    /// A `sharding` shard's index (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_index: Option<u32>,
    /// A `sharding` shard's total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_total: Option<u32>,
    /// The only worker a `broadcast` copy runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_worker_id: Option<String>,
}

/// JSON text the server kept (a payload, a result, a template) as a raw
/// JSON value; text that is not JSON, which only a damaged store could
/// hand back, shows as `fallback`.
pub fn stored_json(text: &str, fallback: &'static str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned())
        .unwrap_or_else(|_| RawValue::from_string(fallback.to_owned()).expect("fallback is JSON"))
}

/// The payload of a task submitted without one: one `null` shared by all
/// of them, rather than an allocation per task.
fn null_payload() -> Arc<str> {
    static NULL: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    NULL.get_or_init(|| Arc::from("null")).clone()
}

/// `GET /v1/tasks` query parameters, as given.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ListTasks {
    /// Only this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only this type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only this queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Page size, 1..=1000, default 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(value_type = Option<i64>, minimum = 1, maximum = 1000))]
    pub limit: Option<String>,
    /// Where the previous page ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A [`ListTasks`] that passed validation: the filter of a page of tasks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValidListTasks {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this type.
    pub kind: Option<String>,
    /// Only tasks in this queue.
    pub queue: Option<String>,
    /// Only tasks with an id below this one (the page cursor).
    pub before: Option<TaskId>,
    /// At most this many.
    pub limit: usize,
}

impl ListTasks {
    /// Validates the parameters.
    pub fn validate(self) -> Result<ValidListTasks, FieldError> {
        let state = self
            .state
            .map(|s| {
                TaskState::parse(&s).ok_or_else(|| {
                    let names: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
                    FieldError::new(
                        "state",
                        format!("unknown state {s:?}; one of {}", names.join(", ")),
                    )
                })
            })
            .transpose()?;
        if let Some(k) = &self.kind {
            validate_name("type", k)?;
        }
        if let Some(q) = &self.queue {
            validate_name("queue", q)?;
        }
        let limit = match self.limit {
            None => 100,
            Some(l) => {
                let n: i64 = l
                    .parse()
                    .map_err(|_| FieldError::new("limit", format!("{l:?} is not an integer")))?;
                in_range("limit", n, 1, 1000)? as usize
            }
        };
        let before = self
            .cursor
            .map(|c| parse_task_id("cursor", &c))
            .transpose()?;
        Ok(ValidListTasks {
            state,
            kind: self.kind,
            queue: self.queue,
            before,
            limit,
        })
    }
}

/// Reply to a batch submission.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskBatch {
    /// The tasks, in submission order.
    pub tasks: Vec<TaskJson>,
}

/// A task as a submission answers it under `Prefer: return=minimal`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskRef {
    /// Server-assigned id.
    pub id: String,
    /// Current state.
    pub state: String,
}

/// Reply to a batch submission under `Prefer: return=minimal`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskRefBatch {
    /// The tasks' ids and states, in submission order.
    pub tasks: Vec<TaskRef>,
}

/// A page of tasks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskList {
    /// The tasks, newest first.
    pub tasks: Vec<TaskJson>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(json: &str) -> Result<ValidTask, FieldError> {
        crate::decode::<SubmitTask>(json.as_bytes())
            .map_err(|p| FieldError::new(p.field.unwrap_or_default(), p.detail))?
            .validate(1_000)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let t = submit(r#"{"type": "email", "payload": {"to": "a@b"}}"#).unwrap();
        assert_eq!(&*t.spec.queue, "default");
        assert_eq!(t.spec.priority, 0);
        assert_eq!(t.spec.max_attempts, 3);
        assert_eq!(&*t.payload, r#"{"to": "a@b"}"#);
        assert_eq!(t.spec.run_at, None);
    }

    #[test]
    fn the_digest_ignores_spacing_order_and_spelt_out_defaults() {
        let d = |json: &str| submit(json).unwrap().digest;
        let a = d(
            r#"{"type": "x", "idempotency_key": "k", "payload": {"a": 1, "b": [1, {"d": 2, "c": 3}]}}"#,
        );
        assert!(a.is_some());
        assert_eq!(
            a,
            d(
                r#"{"payload":{"b":[1,{"c":3,"d":2}],"a":1},"idempotency_key":"other","type":"x","queue":"default","priority":0,"max_attempts":3}"#
            )
        );
        for other in [
            r#"{"type": "x", "idempotency_key": "k", "payload": {"a": 2, "b": [1, {"d": 2, "c": 3}]}}"#,
            r#"{"type": "y", "idempotency_key": "k", "payload": {"a": 1, "b": [1, {"d": 2, "c": 3}]}}"#,
            r#"{"type": "x", "idempotency_key": "k", "priority": 1, "payload": {"a": 1, "b": [1, {"d": 2, "c": 3}]}}"#,
            r#"{"type": "x", "idempotency_key": "k", "delay_ms": 5, "payload": {"a": 1, "b": [1, {"d": 2, "c": 3}]}}"#,
        ] {
            assert_ne!(a, d(other), "{other}");
        }
        // A delay digests as given, not as the instant it became.
        let later =
            crate::decode::<SubmitTask>(br#"{"type": "x", "idempotency_key": "k", "delay_ms": 5}"#)
                .unwrap()
                .validate(9_000)
                .unwrap();
        assert_eq!(
            later.digest,
            d(r#"{"type": "x", "idempotency_key": "k", "delay_ms": 5}"#)
        );
        // Parents are a set.
        assert_eq!(
            d(r#"{"type": "x", "idempotency_key": "k", "depends_on": ["2", "1"]}"#),
            d(r#"{"type": "x", "idempotency_key": "k", "depends_on": ["1", "2", "1"]}"#)
        );
        // Without a key there is nothing to compare: no digest.
        assert_eq!(d(r#"{"type": "x"}"#), None);
    }

    #[test]
    fn delay_becomes_run_at() {
        let t = submit(r#"{"type": "x", "delay_ms": 500}"#).unwrap();
        assert_eq!(t.spec.run_at, Some(1_500));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (r#"{}"#, "type"),
            (r#"{"type": ""}"#, "type"),
            (r#"{"type": "a b"}"#, "type"),
            (r#"{"type": "x", "priority": 101}"#, "priority"),
            (r#"{"type": "x", "priority": "high"}"#, "priority"),
            (r#"{"type": "x", "queue": "q/1"}"#, "queue"),
            (r#"{"type": "x", "delay_ms": -1}"#, "delay_ms"),
            (r#"{"type": "x", "run_at": "soon"}"#, "run_at"),
            (r#"{"type": "x", "max_attempts": 0}"#, "max_attempts"),
            (r#"{"type": "x", "timeout_ms": 0}"#, "timeout_ms"),
            (
                r#"{"type": "x", "backoff": {"multiplier": 0.5}}"#,
                "backoff.multiplier",
            ),
            (r#"{"type": "x", "strategy": "fastest"}"#, "strategy"),
            (r#"{"type": "x", "prioirty": 1}"#, "prioirty"),
        ];
        for (json, field) in cases {
            let e = submit(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }
}

/// The filters of a bulk operation (`POST /v1/tasks/retry`,
/// `POST /v1/tasks/cancel`): the tasks matching all of those given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    /// Only tasks in this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only tasks of this type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only tasks in this queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// A [`BulkFilter`] that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidBulkFilter {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this type.
    pub kind: Option<String>,
    /// Only tasks in this queue.
    pub queue: Option<String>,
}

impl BulkFilter {
    /// Whether no filter is given (the operation would reach every task).
    pub fn is_empty(&self) -> bool {
        self.state.is_none() && self.kind.is_none() && self.queue.is_none()
    }

    /// Validates the filters; a `state` must be one of `allowed`.
    pub fn validate(self, allowed: &[TaskState]) -> Result<ValidBulkFilter, FieldError> {
        let state = match self.state {
            None => None,
            Some(s) => {
                let names: Vec<_> = allowed.iter().map(|s| s.as_str()).collect();
                match TaskState::parse(&s) {
                    Some(st) if allowed.contains(&st) => Some(st),
                    _ => {
                        return Err(FieldError::new(
                            "state",
                            format!("must be {}, got {s:?}", names.join(" or ")),
                        ));
                    }
                }
            }
        };
        if let Some(k) = &self.kind {
            validate_name("type", k)?;
        }
        if let Some(q) = &self.queue {
            validate_name("queue", q)?;
        }
        Ok(ValidBulkFilter {
            state,
            kind: self.kind,
            queue: self.queue,
        })
    }
}

impl ValidBulkFilter {
    /// Whether a task of `state`, `kind` and `queue` matches.
    pub fn matches(&self, state: TaskState, kind: &str, queue: &str) -> bool {
        self.state.is_none_or(|s| s == state)
            && self.kind.as_deref().is_none_or(|k| k == kind)
            && self.queue.as_deref().is_none_or(|q| q == queue)
    }
}

/// The answer of a bulk operation: how many tasks it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkCount {
    /// Tasks retried or cancelled.
    pub count: u64,
}
