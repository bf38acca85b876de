//! Tasks as the core sees them: what to run, where it is in its life, and
//! the opaque body the server keeps alongside.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{Backoff, Millis, Strategy, TaskId, WorkerId};

/// Where a task is in its life. The names are part of the public contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    /// Waiting for its time (`run_at`/`delay_ms`) or a retry backoff.
    Scheduled,
    /// Ready, waiting for a worker with a free slot.
    Queued,
    /// Leased to a worker.
    Running,
    /// Finished successfully (terminal).
    Succeeded,
    /// Attempts exhausted (terminal).
    Dead,
    /// Cancelled by a client (terminal).
    Cancelled,
}

impl TaskState {
    /// Every state, in life order.
    pub const ALL: [TaskState; 6] = [
        TaskState::Scheduled,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Dead,
        TaskState::Cancelled,
    ];

    /// True for states a task never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Dead | TaskState::Cancelled
        )
    }

    /// The contract name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses a contract name.
    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the core needs to know to schedule a task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    /// The task type; only workers that registered it receive the task.
    pub kind: Arc<str>,
    /// The named queue the task belongs to.
    pub queue: Arc<str>,
    /// Higher runs first, -100..=100.
    pub priority: i8,
    /// Earliest start time; `None` means now.
    pub run_at: Option<Millis>,
    /// Attempts before the task is declared dead (>= 1).
    pub max_attempts: u32,
    /// Per-attempt time limit, passed to the worker.
    pub timeout_ms: Option<u64>,
    /// Delay policy between failed attempts.
    pub backoff: Backoff,
    /// How to choose among the workers able to run it.
    pub strategy: Strategy,
    /// The key `consistent_hash` routes by.
    pub routing_key: Option<Arc<str>>,
    /// Labels a worker must carry (same values) to receive the task.
    pub labels: BTreeMap<String, String>,
    /// Only this worker may run it (a `broadcast` copy). When that worker
    /// is gone the task is dead.
    pub pinned: Option<WorkerId>,
    /// A join: it never runs on a worker; it succeeds when every task it
    /// waits for (`hold_for_parents`) succeeded and is dead as soon as one
    /// ends otherwise. The parent of `broadcast` copies and `sharding`
    /// shards.
    pub join: bool,
}

impl TaskSpec {
    /// A spec with the contract's defaults: queue `default`, priority 0,
    /// three attempts, default backoff, no delay, no timeout, round robin,
    /// no labels.
    pub fn new(kind: &str) -> Self {
        TaskSpec {
            kind: Arc::from(kind),
            queue: Arc::from("default"),
            priority: 0,
            run_at: None,
            max_attempts: 3,
            timeout_ms: None,
            backoff: Backoff::default(),
            strategy: Strategy::RoundRobin,
            routing_key: None,
            labels: BTreeMap::new(),
            pinned: None,
            join: false,
        }
    }
}

/// A live task held by the [`crate::Scheduler`].
#[derive(Clone, Debug)]
pub struct Task<B> {
    /// Its identity.
    pub id: TaskId,
    /// What to run.
    pub spec: TaskSpec,
    /// The server's opaque data (payload and the rest of the record).
    pub body: B,
    /// Current state; never terminal while the core holds the task.
    pub state: TaskState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The worker holding the lease while `Running`.
    pub worker: Option<WorkerId>,
    /// When the current attempt started.
    pub started_at: Option<Millis>,
    /// When a `Scheduled` task becomes ready.
    pub ready_at: Option<Millis>,
    /// The error of the last failed attempt.
    pub last_error: Option<Box<str>>,
    /// Parents that have not succeeded yet; a task with any is `Scheduled`
    /// and has no timer.
    pub waiting_on: u32,
    /// Submission order, the tie-breaker between equal ranks.
    pub(crate) seq: u64,
    /// The worker's hand-out number of the poll that collected the current
    /// attempt; 0 when it was not collected by a poll (a stream, a task
    /// restored on its worker).
    pub(crate) handout: u32,
    /// Position in its ready lane while `Queued` (see `Config::aging_ms`).
    pub(crate) rank: i64,
}

impl<B> Task<B> {
    /// When the current attempt times out: `timeout_ms` after the worker
    /// collected it (`started_at`), for a task that has a timeout. Derived,
    /// not stored: each of a million live tasks would carry 16 bytes for
    /// it.
    pub fn deadline(&self) -> Option<Millis> {
        let started = self.started_at?;
        Some(started.saturating_add(self.spec.timeout_ms?))
    }
}
