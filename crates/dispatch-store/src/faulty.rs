//! [`FaultyStore`]: a wrapper that makes any store fail on demand, for
//! testing what the writer and the server do when the disk fills up or the
//! database goes away. Never used by the server itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dispatch_core::{TaskId, TaskState};

use crate::{
    ErrorKind, ScheduleRecord, Store, StoreError, TaskQuery, TaskRecord, Write, WriteOutcome,
};

/// The switch of a [`FaultyStore`]: flip it from the test while the store
/// is in use elsewhere.
#[derive(Debug, Default)]
pub struct Faults {
    writes: AtomicBool,
    reads: AtomicBool,
    refused: AtomicU64,
    /// While true, write batches wait (a disk that stalls).
    held: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
}

impl Faults {
    /// While `on`, every write batch fails as a full disk would.
    pub fn fail_writes(&self, on: bool) {
        self.writes.store(on, Ordering::SeqCst);
    }

    /// While `on`, every read fails as an unreachable database would.
    pub fn fail_reads(&self, on: bool) {
        self.reads.store(on, Ordering::SeqCst);
    }

    /// While `on`, every write batch waits, as on a stalled disk, and
    /// goes through once it is turned off.
    pub fn hold_writes(&self, on: bool) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = on;
        self.released.notify_all();
    }

    fn wait_while_held(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while *held {
            held = self.released.wait(held).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Write batches refused so far.
    pub fn refused_writes(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    fn write(&self) -> Result<(), StoreError> {
        if self.writes.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::new(
                ErrorKind::Unavailable,
                "database or disk is full (injected fault)",
            ));
        }
        Ok(())
    }

    fn read(&self) -> Result<(), StoreError> {
        if self.reads.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                ErrorKind::Unavailable,
                "cannot reach the database (injected fault)",
            ));
        }
        Ok(())
    }
}

/// `S`, failing whenever its [`Faults`] say so. A failed write batch
/// changes nothing in `S`.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`; the returned switch controls the faults.
    pub fn new(inner: S) -> (Self, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (
            FaultyStore {
                inner,
                faults: faults.clone(),
            },
            faults,
        )
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.faults.wait_while_held();
        self.faults.write()?;
        self.inner.apply(writes)
    }
    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.faults.read()?;
        self.inner.get_task(id)
    }
    fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.faults.read()?;
        self.inner.list_tasks(query)
    }
    fn list_attempts(&self, task: TaskId) -> Result<Vec<crate::AttemptRecord>, StoreError> {
        self.faults.read()?;
        self.inner.list_attempts(task)
    }
    fn list_queue_configs(&self) -> Result<Vec<crate::QueueConfigRecord>, StoreError> {
        self.faults.read()?;
        self.inner.list_queue_configs()
    }
    fn load_live(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.faults.read()?;
        self.inner.load_live()
    }
    fn max_task_id(&self) -> Result<Option<TaskId>, StoreError> {
        self.faults.read()?;
        self.inner.max_task_id()
    }
    fn list_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.faults.read()?;
        self.inner.list_schedules()
    }
    fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        self.faults.read()?;
        self.inner.get_schedule(name)
    }
    fn list_queue_settings(&self) -> Result<Vec<(String, bool)>, StoreError> {
        self.faults.read()?;
        self.inner.list_queue_settings()
    }
    fn count_by_queue_state(&self) -> Result<Vec<(String, TaskState, u64)>, StoreError> {
        self.faults.read()?;
        self.inner.count_by_queue_state()
    }
    fn claim_lease(
        &self,
        partition: &str,
        me: &crate::Replica,
        lease_ms: u64,
    ) -> Result<crate::Lease, StoreError> {
        self.faults.write()?;
        self.inner.claim_lease(partition, me, lease_ms)
    }
    fn release_lease(
        &self,
        partition: &str,
        me: &crate::Replica,
        epoch: u64,
    ) -> Result<(), StoreError> {
        self.faults.write()?;
        self.inner.release_lease(partition, me, epoch)
    }
    fn list_replicas(&self) -> Result<Vec<crate::ReplicaRecord>, StoreError> {
        self.faults.read()?;
        self.inner.list_replicas()
    }
    fn load_workers(&self) -> Result<Vec<crate::WorkerRecord>, StoreError> {
        self.faults.read()?;
        self.inner.load_workers()
    }
    fn reserve_ids(&self, n: u64) -> Result<TaskId, StoreError> {
        self.faults.write()?;
        self.inner.reserve_ids(n)
    }
}
