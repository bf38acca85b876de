//! What the scheduler tells its caller: refusals ([`CoreError`]) and the
//! [`Event`]s to persist and act on.

use crate::{Millis, TaskId, TaskState, WorkerId};

/// Why an input was refused. Refusals never change state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreError {
    /// The core holds no live task with this id (it may be terminal).
    UnknownTask(TaskId),
    /// No such registered worker (never registered, left, or lease lost).
    UnknownWorker(WorkerId),
    /// A task with this id is already live.
    DuplicateTask(TaskId),
    /// A worker with this id is already registered.
    DuplicateWorker(WorkerId),
    /// The worker cannot hold the task: not its type, or no free slot.
    WorkerCannotHold {
        /// The task.
        task: TaskId,
        /// The worker.
        worker: WorkerId,
    },
    /// The task is not leased to this worker (any more).
    NotLeased {
        /// The task reported on.
        task: TaskId,
        /// The worker that reported.
        worker: WorkerId,
    },
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreError::UnknownTask(t) => write!(f, "no live task {t}"),
            CoreError::UnknownWorker(w) => write!(f, "no registered worker {w}"),
            CoreError::DuplicateTask(t) => write!(f, "task {t} already exists"),
            CoreError::DuplicateWorker(w) => write!(f, "worker {w} is already registered"),
            CoreError::WorkerCannotHold { task, worker } => {
                write!(f, "worker {worker} cannot hold task {task}")
            }
            CoreError::NotLeased { task, worker } => {
                write!(f, "task {task} is not leased to worker {worker}")
            }
        }
    }
}

impl std::error::Error for CoreError {}

/// A task's new state, to be persisted by the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The task.
    pub task: TaskId,
    /// Its new state.
    pub state: TaskState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The worker that collected it when `Running`; for a terminal state
    /// reached from `Running` (success, failure, cancel), the worker that
    /// ran it.
    pub worker: Option<WorkerId>,
    /// When the current or last attempt started.
    pub started_at: Option<Millis>,
    /// When it reached a terminal state.
    pub finished_at: Option<Millis>,
    /// When a `Scheduled` task becomes ready.
    pub ready_at: Option<Millis>,
    /// The error of the last failed attempt, or the reason for cancellation.
    pub error: Option<String>,
    /// The attempt this transition ends, when it ends one that counts (a
    /// report, a timeout, a cancel of a collected task, a lost worker).
    /// Attempts that do not count (a graceful leave, a restart) are not
    /// reported.
    pub ended: Option<Box<AttemptEnd>>,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The worker reported a result.
    Succeeded,
    /// The worker reported an error.
    Failed,
    /// It ran past the task's `timeout_ms`.
    Timeout,
    /// Its worker missed its lease or its stream broke.
    Lost,
    /// The task was cancelled while the worker held it.
    Cancelled,
}

impl AttemptOutcome {
    /// Every outcome, in declaration order.
    pub const ALL: [AttemptOutcome; 5] = [
        AttemptOutcome::Succeeded,
        AttemptOutcome::Failed,
        AttemptOutcome::Timeout,
        AttemptOutcome::Lost,
        AttemptOutcome::Cancelled,
    ];

    /// The outcome's name on the wire and in stores.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }

    /// The outcome of that name.
    pub fn parse(s: &str) -> Option<AttemptOutcome> {
        AttemptOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// One attempt that ended, carried by the transition that ends it.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptEnd {
    /// Its number, from 1.
    pub attempt: u32,
    /// The worker that collected it.
    pub worker: WorkerId,
    /// That worker's name.
    pub worker_name: String,
    /// When the worker collected it.
    pub collected_at: Millis,
    /// When it ended.
    pub finished_at: Millis,
    /// How.
    pub outcome: AttemptOutcome,
    /// The wait before the next attempt, when one follows.
    pub retry_delay_ms: Option<u64>,
}

/// Something the caller must persist or act on.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A task changed state. `Running` transitions are collections: the
    /// worker has the task in hand and the attempt is counted.
    Transition(Transition),
    /// A queued task was assigned to a worker, which has yet to collect it
    /// ([`Scheduler::poll`]): the caller wakes the worker. Nothing to
    /// persist: until collected, the task is still `Queued`.
    Assigned {
        /// The task.
        task: TaskId,
        /// The worker.
        worker: WorkerId,
    },
    /// A worker must stop a task it holds (cancelled, or its attempt timed
    /// out). The notice is also repeated in [`Scheduler::heartbeat`]'s
    /// reply until the worker reports the task.
    Stop {
        /// The worker.
        worker: WorkerId,
        /// The task to stop.
        task: TaskId,
    },
    /// A worker without credit did not collect what was assigned to it in
    /// time (`Config::collect_ms`): those tasks went back to the queue with
    /// no attempt spent, and it is given nothing until it polls again.
    Uncollected {
        /// The worker.
        worker: WorkerId,
        /// How many tasks went back.
        tasks: usize,
        /// When.
        at: Millis,
    },
    /// A worker missed its lease and was removed; its tasks were requeued
    /// (each requeue is its own `Transition`).
    WorkerLost {
        /// The worker.
        worker: WorkerId,
        /// When it was declared dead.
        at: Millis,
    },
}
