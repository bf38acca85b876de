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
            strategy: strategy.map(|s| s.as_str().to_owned()),
            counts,
        }
    }
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
        let q = QueueJson::new(&info, Some(Strategy::ConsistentHash), stored);
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            serde_json::json!({
                "name": "bulk", "paused": true, "weight": 3, "max_running": 2,
                "rate_per_sec": null, "burst": null, "max_per_key": null,
                "strategy": "consistent_hash",
                "counts": {"scheduled": 1, "queued": 2, "running": 3,
                           "succeeded": 4, "dead": 5, "cancelled": 6},
            })
        );
    }

    #[test]
    fn queue_names_follow_the_rules_of_types() {
        assert_eq!(parse_queue_name("bulk.v2:eu-1_a"), Ok("bulk.v2:eu-1_a"));
        for bad in ["", "a b", "a/b", "ü", &"q".repeat(129)] {
            assert_eq!(parse_queue_name(bad).unwrap_err().field, "name", "{bad:?}");
        }
    }
}
