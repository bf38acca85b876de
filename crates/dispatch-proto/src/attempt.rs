//! A task's attempt history as the API shows it
//! (`GET /v1/tasks/{id}/attempts`).

use serde::{Deserialize, Serialize};

/// One attempt of a task: ended, or the one running now (`outcome` and
/// `finished_at` null).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptJson {
    /// Its number, from 1.
    pub attempt: u32,
    /// The worker that collected it.
    pub worker_id: String,
    /// That worker's name.
    pub worker_name: String,
    /// When the worker collected it (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub collected_at: String,
    /// When it ended; null while it runs.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub finished_at: Option<String>,
    /// `succeeded`, `failed`, `timeout`, `lost` or `cancelled`; null while
    /// it runs.
    pub outcome: Option<String>,
    /// Its error, or the reason it was cancelled.
    pub error: Option<String>,
    /// The wait before the next attempt, when one followed.
    pub retry_delay_ms: Option<u64>,
}

/// `{"attempts": [...]}`, by number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptList {
    /// The attempts, oldest first.
    pub attempts: Vec<AttemptJson>,
}
