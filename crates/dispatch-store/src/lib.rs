//! Durable storage for Dispatch, behind one narrow trait.
//!
//! - [`Store`]: what every backend implements — apply a batch of writes in one
//!   transaction, read a task, list tasks, load the live ones at start-up,
//!   read cron schedules, read the queues' pause states and count tasks per
//!   queue and state.
//! - Each ended attempt of a task ([`AttemptRecord`]) rides on the
//!   [`Write::Update`] of the transition that ends it, so the history costs
//!   no write of its own; [`Store::list_attempts`] reads it back.
//! - A queue's settings changed through the API ([`QueueConfigRecord`],
//!   [`Write::PutQueueConfig`]) are kept by name, like its pause state,
//!   and win over the config file's at the next start.
//! - [`StoreError`] / [`ErrorKind`]: what can go wrong, classified so that the
//!   server can answer 503 for an unavailable store and 500 for a bug.
//! - [`GroupCommitWriter`]: the single writer thread in front of a store. It
//!   drains a channel and commits everything waiting as one transaction, so
//!   one fsync acknowledges many tasks (group commit).
//! - With the `testing` feature only, so that production builds do not
//!   compile them: `MemoryStore`, an in-memory double for tests (not
//!   durable, never used by the server); `FaultyStore`, which wraps any
//!   store and fails its reads or writes, or holds its writes, on demand
//!   (`Faults`), to test
//!   behaviour under a full disk or a lost database; and `conformance`,
//!   the suite every backend must pass, instantiated with
//!   `store_conformance_tests!`.
//!
//! A schedule's fire ([`Write::Fire`]) is recorded, unique on (schedule,
//! fire time), in the same transaction as the task it creates: a fire is
//! either wholly stored or not at all, and never stored twice.
//!
//! A queue's pause state ([`Write::SetQueuePaused`]) is kept by name, apart
//! from the tasks: a queue can be paused before any task names it.
//!
//! The record types ([`TaskRecord`], [`TaskBody`], [`TaskUpdate`],
//! [`ScheduleRecord`]) are plain
//! Rust: serialization to JSON happens in `dispatch-proto`, and each backend
//! chooses its own column encoding.

mod coalesce;
#[cfg(feature = "testing")]
mod faulty;
mod lease;
#[cfg(feature = "testing")]
mod memory;
mod record;
mod writer;

#[cfg(feature = "testing")]
pub mod conformance;

#[cfg(feature = "testing")]
pub use faulty::{Faults, FaultyStore};
pub use lease::{DEFAULT_PARTITION, Lease, Replica, ReplicaRecord};
#[cfg(feature = "testing")]
pub use memory::MemoryStore;
pub use record::{
    AttemptRecord, FireOutcome, InsertOutcome, QueueConfigRecord, RequestDigest, ScheduleRecord,
    TaskBody, TaskQuery, TaskRecord, TaskUpdate, WorkerRecord, Write, WriteOutcome,
};
pub use writer::{GroupCommitWriter, LINGER, StoreHealth, WriterClosed};

/// How a store failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The store cannot be reached or written right now (disk full, I/O
    /// error, database down). Retrying later may succeed.
    Unavailable,
    /// The stored data could not be decoded: a bug or a corrupted file.
    Corrupt,
    /// A constraint the caller should have upheld was violated (a duplicate
    /// task id): a bug in the caller.
    Conflict,
    /// The batch began with a [`Write::Fence`] whose epoch is no longer the
    /// partition's: another replica leads now. Nothing was stored.
    Fenced,
}

/// A store failure with its kind and a message for logs.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A human-readable description.
    pub message: String,
}

impl StoreError {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }
}

/// A durable home for tasks. Implementations are used from one writer
/// thread ([`Store::apply`]) and from any number of readers at once.
pub trait Store: Send + Sync + 'static {
    /// Applies `writes` in order as one transaction: all take effect or none
    /// does. When it returns `Ok` the batch is as durable as the store's
    /// durability mode promises. Returns one outcome per write.
    fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// One task, terminal or not.
    fn get_task(&self, id: dispatch_core::TaskId) -> Result<Option<TaskRecord>, StoreError>;

    /// Tasks matching `query`, newest (highest id) first, starting below
    /// `query.before`.
    fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError>;

    /// The ended attempts of a task, by number (none for a task unknown or
    /// purged).
    fn list_attempts(&self, task: dispatch_core::TaskId) -> Result<Vec<AttemptRecord>, StoreError>;

    /// Every task that is not terminal, oldest first: what the scheduler
    /// rebuilds its state from at start-up.
    fn load_live(&self) -> Result<Vec<TaskRecord>, StoreError>;

    /// The highest task id ever stored, so that new ids never reuse one.
    fn max_task_id(&self) -> Result<Option<dispatch_core::TaskId>, StoreError>;

    /// Every schedule, by name.
    fn list_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError>;

    /// One schedule.
    fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError>;

    /// Every queue whose pause state was ever set, by name, with that
    /// state (`true`: paused).
    fn list_queue_settings(&self) -> Result<Vec<(String, bool)>, StoreError>;

    /// Every queue whose settings were set through the API
    /// ([`Write::PutQueueConfig`]), by name.
    fn list_queue_configs(&self) -> Result<Vec<QueueConfigRecord>, StoreError>;

    /// How many stored tasks each queue holds in each state, by queue name
    /// then state in life order ([`dispatch_core::TaskState::ALL`]); counts
    /// of zero are left out.
    fn count_by_queue_state(
        &self,
    ) -> Result<Vec<(String, dispatch_core::TaskState, u64)>, StoreError>;

    /// Claims or renews the lease of `partition` for `me`, for `lease_ms`
    /// on the store's own clock, and records `me` as seen now.
    ///
    /// - `me` holds it and it has not expired: renewed, same epoch.
    /// - Nobody holds it, it expired, or it was released: `me` takes it
    ///   and the epoch rises by one (also when `me` held it before).
    /// - Another replica holds it: nothing changes; the answer names the
    ///   holder, with `held` false.
    fn claim_lease(
        &self,
        partition: &str,
        me: &Replica,
        lease_ms: u64,
    ) -> Result<Lease, StoreError>;

    /// Gives the lease up at once when `me` holds it at `epoch` (a clean
    /// stop), so that another replica need not wait for it to expire.
    /// Does nothing otherwise.
    fn release_lease(&self, partition: &str, me: &Replica, epoch: u64) -> Result<(), StoreError>;

    /// Every replica that ever claimed a lease, by id.
    fn list_replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError>;

    /// Every stored worker ([`Write::PutWorker`]), by id.
    fn load_workers(&self) -> Result<Vec<WorkerRecord>, StoreError>;

    /// Reserves `n` consecutive task ids, never handed out before and above
    /// every stored task's, and returns the first. Callers at once (several
    /// replicas) get ranges that do not overlap.
    fn reserve_ids(&self, n: u64) -> Result<dispatch_core::TaskId, StoreError>;
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        (**self).apply(writes)
    }
    fn get_task(&self, id: dispatch_core::TaskId) -> Result<Option<TaskRecord>, StoreError> {
        (**self).get_task(id)
    }
    fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        (**self).list_tasks(query)
    }
    fn list_attempts(&self, task: dispatch_core::TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
        (**self).list_attempts(task)
    }
    fn load_live(&self) -> Result<Vec<TaskRecord>, StoreError> {
        (**self).load_live()
    }
    fn max_task_id(&self) -> Result<Option<dispatch_core::TaskId>, StoreError> {
        (**self).max_task_id()
    }
    fn list_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        (**self).list_schedules()
    }
    fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        (**self).get_schedule(name)
    }
    fn list_queue_settings(&self) -> Result<Vec<(String, bool)>, StoreError> {
        (**self).list_queue_settings()
    }
    fn list_queue_configs(&self) -> Result<Vec<QueueConfigRecord>, StoreError> {
        (**self).list_queue_configs()
    }
    fn count_by_queue_state(
        &self,
    ) -> Result<Vec<(String, dispatch_core::TaskState, u64)>, StoreError> {
        (**self).count_by_queue_state()
    }
    fn claim_lease(
        &self,
        partition: &str,
        me: &Replica,
        lease_ms: u64,
    ) -> Result<Lease, StoreError> {
        (**self).claim_lease(partition, me, lease_ms)
    }
    fn release_lease(&self, partition: &str, me: &Replica, epoch: u64) -> Result<(), StoreError> {
        (**self).release_lease(partition, me, epoch)
    }
    fn list_replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        (**self).list_replicas()
    }
    fn load_workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        (**self).load_workers()
    }
    fn reserve_ids(&self, n: u64) -> Result<dispatch_core::TaskId, StoreError> {
        (**self).reserve_ids(n)
    }
}
