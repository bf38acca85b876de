//! The records a store keeps and the writes it applies.

use dispatch_core::{AttemptOutcome, Millis, TaskId, TaskSpec, TaskState, WorkerId};

/// Everything about a task that the scheduling core does not need: kept by
/// the server beside the core's [`dispatch_core::Task`], and stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskBody {
    /// The payload, as JSON text; shared by the copies and shards of a
    /// broadcast or sharding task, and by every clone of the record.
    pub payload: std::sync::Arc<str>,
    /// The client's deduplication key.
    pub idempotency_key: Option<String>,
    /// Tasks that must succeed first.
    pub depends_on: Vec<TaskId>,
    /// When the task was accepted.
    pub created_at: Millis,
    /// `(index, total)` of a `sharding` shard, handed to its worker.
    pub shard: Option<(u32, u32)>,
}

/// A task as stored: spec, body and current state.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRecord {
    /// Its identity.
    pub id: TaskId,
    /// What to run; `spec.run_at` is the time a scheduled task becomes ready.
    pub spec: TaskSpec,
    /// Payload and the rest.
    pub body: TaskBody,
    /// Current state.
    pub state: TaskState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The worker holding or last holding it.
    pub worker: Option<WorkerId>,
    /// When the current or last attempt started.
    pub started_at: Option<Millis>,
    /// When it reached a terminal state.
    pub finished_at: Option<Millis>,
    /// The result of a successful run, as JSON text.
    pub result: Option<Box<str>>,
    /// The last error, or the reason for a cancellation.
    pub error: Option<String>,
    /// SHA-256 of the normalised submission, kept with an idempotency key:
    /// a later insert with the same key must carry the same digest. `None`
    /// (a task stored before digests were kept, a fire's task) matches any.
    pub request_digest: Option<RequestDigest>,
}

/// The SHA-256 digest of a normalised task submission.
pub type RequestDigest = [u8; 32];

impl TaskRecord {
    /// Whether an insert carrying `digest` is the same request as this
    /// stored task: a missing digest on either side matches.
    pub fn same_request(&self, digest: Option<&RequestDigest>) -> bool {
        match (&self.request_digest, digest) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// A change of a stored task's state.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskUpdate {
    /// The task.
    pub id: TaskId,
    /// New state.
    pub state: TaskState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The worker holding or last holding it.
    pub worker: Option<WorkerId>,
    /// When the current or last attempt started.
    pub started_at: Option<Millis>,
    /// When it reached a terminal state.
    pub finished_at: Option<Millis>,
    /// When a scheduled task becomes ready.
    pub run_at: Option<Millis>,
    /// Result of a successful run, as JSON text.
    pub result: Option<Box<str>>,
    /// Last error.
    pub error: Option<String>,
    /// The attempt this change ends, stored in the same transaction.
    pub attempt: Option<Box<AttemptRecord>>,
}

/// One ended attempt of a task, kept with the task and purged with it.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRecord {
    /// The task.
    pub task: TaskId,
    /// Its number, from 1; unique per task.
    pub attempt: u32,
    /// The worker that collected it.
    pub worker: WorkerId,
    /// That worker's name.
    pub worker_name: String,
    /// When the worker collected it.
    pub collected_at: Millis,
    /// When it ended.
    pub finished_at: Millis,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Its error (or a cancellation's reason).
    pub error: Option<String>,
    /// The wait before the next attempt, when one followed.
    pub retry_delay_ms: Option<u64>,
}

impl From<dispatch_core::Transition> for TaskUpdate {
    fn from(t: dispatch_core::Transition) -> Self {
        let attempt = t.ended.map(|e| {
            Box::new(AttemptRecord {
                task: t.task,
                attempt: e.attempt,
                worker: e.worker,
                worker_name: e.worker_name,
                collected_at: e.collected_at,
                finished_at: e.finished_at,
                outcome: e.outcome,
                error: match e.outcome {
                    AttemptOutcome::Succeeded => None,
                    _ => t.error.clone(),
                },
                retry_delay_ms: e.retry_delay_ms,
            })
        });
        TaskUpdate {
            id: t.task,
            state: t.state,
            attempts: t.attempts,
            worker: t.worker,
            started_at: t.started_at,
            finished_at: t.finished_at,
            run_at: t.ready_at,
            result: None,
            error: t.error,
            attempt,
        }
    }
}

/// One write in a batch.
// A write is built once and moved through the writer's channel; boxing the
// fire's task would add an allocation per fire for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// New tasks, all or nothing. A task whose idempotency key is already
    /// stored (or taken earlier in the same insert) by the same request is
    /// not inserted; its outcome names the original instead. When a key is
    /// held for a different request (both digests known and different),
    /// nothing of the insert is stored and the outcome is
    /// [`WriteOutcome::KeyConflict`].
    Insert(Vec<TaskRecord>),
    /// A state change of an existing task, with the attempt it ends. The
    /// attempt is stored when the update is applied (an attempt already
    /// stored under that number is left as it was).
    Update(TaskUpdate),
    /// Creates a schedule, or replaces the one of that name.
    UpsertSchedule(ScheduleRecord),
    /// Removes a schedule and the record of its fires (not their tasks).
    DeleteSchedule(String),
    /// One fire of a schedule: records `(schedule, fire_at)`, inserts its
    /// task and advances the schedule's `last_fire_at`, together. A fire
    /// already recorded inserts nothing and answers its task, so a fire
    /// written twice (a retry, a restart) has one task.
    Fire {
        /// The schedule's name.
        schedule: String,
        /// The fire time.
        fire_at: Millis,
        /// The task this fire creates.
        task: TaskRecord,
    },
    /// Deletes up to `limit` terminal tasks that finished before
    /// `finished_before` (the retention period), with their attempts. The task with the highest
    /// id is always kept, so that ids are never reused.
    Purge {
        /// Only tasks finished before this time.
        finished_before: Millis,
        /// At most this many in one write.
        limit: usize,
    },
    /// Checks, inside the batch's transaction, that `partition`'s lease is
    /// at `epoch`. When it is not (another replica took over, or no lease
    /// was ever claimed), the whole batch fails with
    /// [`crate::ErrorKind::Fenced`] and nothing of it is stored. A leader
    /// begins every batch with one.
    Fence {
        /// The partition led.
        partition: String,
        /// The epoch the writer leads under.
        epoch: u64,
    },
    /// Stores a worker, or replaces the one of that id.
    PutWorker(WorkerRecord),
    /// Forgets a worker (it left, or its lease ran out); `false` outcome
    /// when there was none.
    DeleteWorker(WorkerId),
    /// Stores a queue's settings, set through the API, replacing those of
    /// that name: from then on they win over the config file's.
    PutQueueConfig(QueueConfigRecord),
    /// Pauses or resumes a queue. The state is kept per queue name, so that
    /// it survives a restart; a queue without a stored state is not paused.
    SetQueuePaused {
        /// The queue's name.
        name: String,
        /// Its new state.
        paused: bool,
    },
}

/// What one [`Write`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOutcome {
    /// One outcome per inserted record, in order.
    Inserted(Vec<InsertOutcome>),
    /// A [`Write::Insert`] stored nothing: its record at `index` reuses an
    /// idempotency key that `holder` holds for a different request.
    KeyConflict {
        /// The record at fault, in the insert's order.
        index: usize,
        /// The task holding the key.
        holder: TaskId,
    },
    /// The update was applied (`false`: no such task, or a terminal task
    /// the update may not change).
    Updated(bool),
    /// The schedule was stored (`true`: it replaced one of that name).
    ScheduleUpserted(bool),
    /// The schedule was removed (`false`: there was none of that name).
    ScheduleDeleted(bool),
    /// What a [`Write::Fire`] did.
    Fired(FireOutcome),
    /// How many tasks a [`Write::Purge`] deleted.
    Purged(usize),
    /// A [`Write::SetQueuePaused`] was stored (`true`: it changed the
    /// queue's state; a queue never set before counts as not paused).
    QueuePausedSet(bool),
    /// A [`Write::PutQueueConfig`] was stored (`true`: it replaced one).
    QueueConfigPut(bool),
    /// A [`Write::Fence`] passed: the writer leads at that epoch.
    Fenced,
    /// A [`Write::PutWorker`] was stored (`true`: it replaced one).
    WorkerPut(bool),
    /// A [`Write::DeleteWorker`] ran (`false`: there was none).
    WorkerDeleted(bool),
}

/// What happened to a [`Write::Fire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FireOutcome {
    /// The fire was recorded and its task stored under its own id.
    Created,
    /// The fire was recorded before (or its task's idempotency key was
    /// taken) by this task; nothing was stored.
    Existing(TaskId),
    /// No schedule has that name (it was deleted); nothing was stored.
    UnknownSchedule,
}

/// A worker as stored by a leading replica, so that the next leader knows
/// it after a takeover and the tasks it runs stay with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRecord {
    /// Its id.
    pub id: WorkerId,
    /// Its name.
    pub name: String,
    /// The task types it runs.
    pub types: Vec<String>,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// How many tasks it runs at once.
    pub capacity: u32,
    /// Its share under `weighted_round_robin`.
    pub weight: u32,
    /// SHA-256 of the token that registered it, when the server takes
    /// tokens: only that token may act for it.
    pub owner: Option<[u8; 32]>,
    /// When it registered.
    pub registered_at: Millis,
}

/// A cron schedule as stored. The cron expression, time zone, template and
/// misfire policy are kept as the text the API validated; the store does
/// not interpret them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// Unique name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// IANA time zone name.
    pub timezone: String,
    /// The task template, as JSON text.
    pub task: Box<str>,
    /// Misfire policy: `skip`, `fire_once` or `catch_up`.
    pub misfire: String,
    /// Most missed fires one catch-up runs.
    pub catch_up_limit: u32,
    /// A paused schedule does not fire.
    pub paused: bool,
    /// When it was created: the first fire is after this.
    pub created_at: Millis,
    /// The latest fire recorded, if any.
    pub last_fire_at: Option<Millis>,
}

/// A queue's settings as the API set them: weight and limits, the most
/// tasks it holds waiting, and the strategy of its tasks that name none.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueConfigRecord {
    /// The queue's name.
    pub name: String,
    /// Its share of the workers, at least 1.
    pub weight: u32,
    /// Most of its tasks running at once.
    pub max_running: Option<u32>,
    /// Most of its tasks started per second.
    pub rate_per_sec: Option<f64>,
    /// The rate limit's bucket size.
    pub burst: Option<u32>,
    /// Most of its tasks running at once per routing key.
    pub max_per_key: Option<u32>,
    /// Most of its tasks waiting.
    pub max_depth: Option<u64>,
    /// The default strategy of its tasks.
    pub strategy: Option<dispatch_core::Strategy>,
}

/// What happened to one record of a [`Write::Insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored under its own id.
    Created,
    /// Its idempotency key belongs to this earlier task; nothing was stored.
    Existing(TaskId),
}

/// A filter for [`crate::Store::list_tasks`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskQuery {
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

impl TaskRecord {
    /// Whether a store applies `u` to this record: always while the task
    /// is live; once it is terminal, only a retry (a `dead` task set
    /// `queued` with no attempts).
    pub fn accepts(&self, u: &TaskUpdate) -> bool {
        !self.state.is_terminal()
            || (self.state == TaskState::Dead && u.state == TaskState::Queued && u.attempts == 0)
    }

    /// Applies an update to this record, as a store does.
    pub fn apply(&mut self, u: &TaskUpdate) {
        self.state = u.state;
        self.attempts = u.attempts;
        self.worker = u.worker;
        self.started_at = u.started_at;
        self.finished_at = u.finished_at;
        self.spec.run_at = u.run_at;
        if u.result.is_some() {
            self.result = u.result.clone();
        }
        self.error = u.error.clone();
    }

    /// True when the record matches the query's filters (not its cursor).
    pub fn matches(&self, q: &TaskQuery) -> bool {
        q.state.is_none_or(|s| s == self.state)
            && q.kind.as_deref().is_none_or(|k| k == &*self.spec.kind)
            && q.queue.as_deref().is_none_or(|k| k == &*self.spec.queue)
            && q.before.is_none_or(|b| self.id < b)
    }
}
