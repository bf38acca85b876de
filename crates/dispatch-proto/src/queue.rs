//! Queues on the wire: `GET /v1/queues` and the pause/resume answers.

use dispatch_core::{QueueInfo, Strategy, TaskState};
use serde::{Deserialize, Serialize};

use crate::FieldError;
use crate::task::validate_name;

/// Tasks of one queue by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueCounts {
    /// Waiting for their time, a retry backoff or their parents.
    pub scheduled: u64,
    /// Ready, waiting for a worker.
    pub queued: u64,
    /// Leased to a worker.
    pub running: u64,
    /// Finished successfully (and not yet purged).
    pub succeeded: u64,
    /// Attempts exhausted.
    pub dead: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl QueueCounts {
    /// The count of one state.
    pub fn get_mut(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Scheduled => &mut self.scheduled,
            TaskState::Queued => &mut self.queued,
            TaskState::Running => &mut self.running,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Dead => &mut self.dead,
            TaskState::Cancelled => &mut self.cancelled,
        }
    }
}

/// A queue as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueJson {
    /// Its name.
    pub name: String,
    /// Whether dispatch from it is paused.
    pub paused: bool,
    /// Its share of the workers under saturation, relative to other queues.
    pub weight: u32,
    /// Most of its tasks running at once.
    pub max_running: Option<u32>,
    /// Most of its tasks started per second.
    pub rate_per_sec: Option<f64>,
    /// Starts the rate limit allows at once after a quiet spell.
    pub burst: Option<u32>,
    /// Most of its tasks running at once for one routing key.
    pub max_per_key: Option<u32>,
    /// Most of its tasks waiting (queued and scheduled) before
    /// submissions are refused with 429.
    #[serde(default)]
    pub max_depth: Option<u64>,
    /// The routing strategy of its tasks that name none (and whose type
    /// has no default); null: `round_robin`.
    pub strategy: Option<String>,
    /// Its tasks by state: live ones from the scheduler, finished ones
    /// from the store (until purged).
    pub counts: QueueCounts,
}

impl QueueJson {
    /// The API view of a queue: its settings and live counts from the
    /// core, its default strategy, and `finished` counts by state (only
    /// terminal states are taken from it).
    pub fn new(
        info: &QueueInfo,
        strategy: Option<Strategy>,
        max_depth: Option<u64>,
        finished: impl IntoIterator<Item = (TaskState, u64)>,
    ) -> Self {
        let mut counts = QueueCounts {
            scheduled: info.scheduled as u64,
            queued: info.queued as u64,
            running: info.running as u64,
            ..QueueCounts::default()
        };
        for (state, n) in finished {
            if state.is_terminal() {
                *counts.get_mut(state) += n;
            }
        }
        QueueJson {
            name: info.name.to_string(),
            paused: info.paused,
            weight: info.config.weight,
            max_running: info.config.max_running,
            rate_per_sec: info.config.rate_per_sec,
            burst: info.config.burst,
            max_per_key: info.config.max_per_key,
            max_depth,
            strategy: strategy.map(|s| s.as_str().to_owned()),
            counts,
        }
    }
}

/// Most a queue's weight may be.
pub const MAX_WEIGHT: u32 = 1_000;
/// Most a rate limit may be, in starts per second.
pub const MAX_RATE: f64 = 1_000_000.0;

/// What a `PATCH` does to one setting: leaves it (member absent), clears
/// it (JSON null: no limit, or the default) or sets it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Change<T> {
    /// Absent: the setting stays as it is.
    #[default]
    Keep,
    /// `null`: back to no limit (weight: back to 1).
    Clear,
    /// A new value.
    Set(T),
}

impl<T: Copy> Change<T> {
    fn apply_to(self, slot: &mut Option<T>) {
        match self {
            Change::Keep => {}
            Change::Clear => *slot = None,
            Change::Set(v) => *slot = Some(v),
        }
    }
}

/// A queue's settings as `PATCH /v1/queues/{name}` and the config file
/// give them: the core's weight and limits, `max_depth` and the default
/// strategy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueSettingsPatch {
    /// `weight`, 1 to [`MAX_WEIGHT`].
    pub weight: Change<u32>,
    /// `max_running`, at least 1.
    pub max_running: Change<u32>,
    /// `rate_per_sec`, above 0 and at most [`MAX_RATE`].
    pub rate_per_sec: Change<f64>,
    /// `burst`, at least 1; only with a rate.
    pub burst: Change<u32>,
    /// `max_per_key`, at least 1.
    pub max_per_key: Change<u32>,
    /// `max_depth`, at least 1.
    pub max_depth: Change<u64>,
    /// `strategy`: any that is not a fan-out (`broadcast`, `sharding`).
    pub strategy: Change<Strategy>,
}

/// The members `PATCH /v1/queues/{name}` takes.
pub const QUEUE_PATCH_FIELDS: [&str; 7] = [
    "weight",
    "max_running",
    "rate_per_sec",
    "burst",
    "max_per_key",
    "max_depth",
    "strategy",
];

fn whole(field: &str, v: &serde_json::Value, min: u64, max: u64) -> Result<u64, FieldError> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(FieldError::new(
            field,
            format!("must be an integer from {min} to {max} (or null), got {v}"),
        )),
    }
}

impl QueueSettingsPatch {
    /// Reads a `PATCH` body: a JSON object of the members in
    /// [`QUEUE_PATCH_FIELDS`], each a value or null. Every refusal (422)
    /// names its member.
    pub fn parse(body: &serde_json::Map<String, serde_json::Value>) -> Result<Self, FieldError> {
        let mut p = QueueSettingsPatch::default();
        if body.is_empty() {
            return Err(FieldError::new(
                "body",
                format!(
                    "names no setting; give one of {}",
                    QUEUE_PATCH_FIELDS.join(", ")
                ),
            ));
        }
        for (k, v) in body {
            let count =
                |v: &serde_json::Value| whole(k, v, 1, u64::from(u32::MAX)).map(|n| n as u32);
            if v.is_null() {
                match k.as_str() {
                    "weight" => p.weight = Change::Clear,
                    "max_running" => p.max_running = Change::Clear,
                    "rate_per_sec" => p.rate_per_sec = Change::Clear,
                    "burst" => p.burst = Change::Clear,
                    "max_per_key" => p.max_per_key = Change::Clear,
                    "max_depth" => p.max_depth = Change::Clear,
                    "strategy" => p.strategy = Change::Clear,
                    _ => return Err(unknown(k)),
                }
                continue;
            }
            match k.as_str() {
                "weight" => p.weight = Change::Set(whole(k, v, 1, u64::from(MAX_WEIGHT))? as u32),
                "max_running" => p.max_running = Change::Set(count(v)?),
                "burst" => p.burst = Change::Set(count(v)?),
                "max_per_key" => p.max_per_key = Change::Set(count(v)?),
                "max_depth" => p.max_depth = Change::Set(whole(k, v, 1, i64::MAX as u64)?),
                "rate_per_sec" => match v.as_f64() {
                    Some(r) if r > 0.0 && r <= MAX_RATE => p.rate_per_sec = Change::Set(r),
                    _ => {
                        return Err(FieldError::new(
                            k,
                            format!(
                                "must be a number above 0 and at most {MAX_RATE} (or null), got {v}"
                            ),
                        ));
                    }
                },
                "strategy" => {
                    let names: Vec<&str> = Strategy::ALL
                        .iter()
                        .filter(|s| !s.fans_out())
                        .map(|s| s.as_str())
                        .collect();
                    match v.as_str().and_then(Strategy::parse) {
                        Some(s) if !s.fans_out() => p.strategy = Change::Set(s),
                        _ => {
                            return Err(FieldError::new(
                                k,
                                format!("must be one of {} (or null), got {v}", names.join(", ")),
                            ));
                        }
                    }
                }
                _ => return Err(unknown(k)),
            }
        }
        Ok(p)
    }

    /// Applies the patch to a queue's current settings; refuses a `burst`
    /// left without a rate.
    pub fn apply(
        &self,
        config: &mut dispatch_core::QueueConfig,
        max_depth: &mut Option<u64>,
        strategy: &mut Option<Strategy>,
    ) -> Result<(), FieldError> {
        match self.weight {
            Change::Keep => {}
            Change::Clear => config.weight = 1,
            Change::Set(w) => config.weight = w,
        }
        self.max_running.apply_to(&mut config.max_running);
        self.rate_per_sec.apply_to(&mut config.rate_per_sec);
        self.burst.apply_to(&mut config.burst);
        self.max_per_key.apply_to(&mut config.max_per_key);
        self.max_depth.apply_to(max_depth);
        self.strategy.apply_to(strategy);
        if config.burst.is_some() && config.rate_per_sec.is_none() {
            return Err(FieldError::new(
                "burst",
                "applies to rate_per_sec, which is not set",
            ));
        }
        Ok(())
    }
}

fn unknown(k: &str) -> FieldError {
    FieldError::new(
        k,
        format!(
            "is not a queue setting; the settings are {}",
            QUEUE_PATCH_FIELDS.join(", ")
        ),
    )
}

/// `GET /v1/queues`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueList {
    /// Every queue ever named or configured, by name.
    pub queues: Vec<QueueJson>,
}

/// Checks a queue name given in a path: the rules of a task type, and the
/// error names `name`.
pub fn parse_queue_name(s: &str) -> Result<&str, FieldError> {
    validate_name("name", s).map(|()| s)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dispatch_core::QueueConfig;

    use super::*;

    #[test]
    fn live_counts_come_from_the_core_and_finished_ones_from_the_store() {
        let info = QueueInfo {
            name: Arc::from("bulk"),
            paused: true,
            config: QueueConfig {
                weight: 3,
                max_running: Some(2),
                ..QueueConfig::default()
            },
            scheduled: 1,
            queued: 2,
            running: 3,
        };
        let stored = [
            (TaskState::Queued, 9),
            (TaskState::Succeeded, 4),
            (TaskState::Dead, 5),
            (TaskState::Cancelled, 6),
        ];
        let q = QueueJson::new(&info, Some(Strategy::ConsistentHash), Some(7), stored);
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            serde_json::json!({
                "name": "bulk", "paused": true, "weight": 3, "max_running": 2,
                "rate_per_sec": null, "burst": null, "max_per_key": null,
                "max_depth": 7, "strategy": "consistent_hash",
                "counts": {"scheduled": 1, "queued": 2, "running": 3,
                           "succeeded": 4, "dead": 5, "cancelled": 6},
            })
        );
    }

    fn patch(body: serde_json::Value) -> Result<QueueSettingsPatch, FieldError> {
        QueueSettingsPatch::parse(body.as_object().unwrap())
    }

    #[test]
    fn a_patch_sets_clears_and_keeps() {
        let p = patch(serde_json::json!({
            "weight": 4, "max_running": null, "rate_per_sec": 2.5, "burst": 3,
            "max_depth": 10, "strategy": "least_loaded",
        }))
        .unwrap();
        let mut config = QueueConfig {
            max_running: Some(9),
            max_per_key: Some(2),
            ..QueueConfig::default()
        };
        let (mut depth, mut strategy) = (None, None);
        p.apply(&mut config, &mut depth, &mut strategy).unwrap();
        assert_eq!(config.weight, 4);
        assert_eq!(config.max_running, None, "null clears");
        assert_eq!(config.max_per_key, Some(2), "absent keeps");
        assert_eq!((config.rate_per_sec, config.burst), (Some(2.5), Some(3)));
        assert_eq!((depth, strategy), (Some(10), Some(Strategy::LeastLoaded)));
        let p = patch(serde_json::json!({"rate_per_sec": null})).unwrap();
        let e = p.apply(&mut config, &mut depth, &mut strategy).unwrap_err();
        assert_eq!(e.field, "burst");
    }

    #[test]
    fn a_bad_patch_names_its_member() {
        for (body, field) in [
            (serde_json::json!({"weight": 0}), "weight"),
            (serde_json::json!({"weight": 1001}), "weight"),
            (serde_json::json!({"max_running": -1}), "max_running"),
            (serde_json::json!({"max_running": 1.5}), "max_running"),
            (serde_json::json!({"rate_per_sec": 0}), "rate_per_sec"),
            (serde_json::json!({"rate_per_sec": "fast"}), "rate_per_sec"),
            (serde_json::json!({"burst": 0}), "burst"),
            (serde_json::json!({"max_depth": 0}), "max_depth"),
            (serde_json::json!({"strategy": "broadcast"}), "strategy"),
            (serde_json::json!({"strategy": "nope"}), "strategy"),
            (serde_json::json!({"colour": 1}), "colour"),
            (serde_json::json!({}), "body"),
        ] {
            assert_eq!(patch(body.clone()).unwrap_err().field, field, "{body}");
        }
    }

    #[test]
    fn queue_names_follow_the_rules_of_types() {
        assert_eq!(parse_queue_name("bulk.v2:eu-1_a"), Ok("bulk.v2:eu-1_a"));
        for bad in ["", "a b", "a/b", "ü", &"q".repeat(129)] {
            assert_eq!(parse_queue_name(bad).unwrap_err().field, "name", "{bad:?}");
        }
    }
}
