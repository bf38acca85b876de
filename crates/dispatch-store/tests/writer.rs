//! The group-commit writer when the store fails: fail-fast writes are
//! refused and leave nothing behind, retained writes are kept and committed
//! in order once the store works again, and one bad write does not sink the
//! rest of its batch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dispatch_core::{TaskId, TaskState};
use dispatch_store::conformance::sample;
use dispatch_store::{
    ErrorKind, FaultyStore, GroupCommitWriter, InsertOutcome, MemoryStore, ScheduleRecord, Store,
    StoreError, TaskQuery, TaskRecord, TaskUpdate, Write, WriteOutcome,
};

fn update(id: u64, state: TaskState, attempts: u32) -> Write {
    Write::Update(TaskUpdate {
        id: TaskId(id),
        state,
        attempts,
        worker: None,
        started_at: None,
        finished_at: None,
        run_at: None,
        result: None,
        error: None,
        attempt: None,
    })
}

fn insert(ids: &[u64]) -> Write {
    Write::Insert(ids.iter().map(|&id| sample(id, "email")).collect())
}

type Answer = tokio::sync::oneshot::Receiver<Result<WriteOutcome, StoreError>>;

fn wait(rx: Answer) -> Result<WriteOutcome, StoreError> {
    rx.blocking_recv().expect("the writer answers every waiter")
}

/// Polls `check` for up to ten seconds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn state_of(store: &impl Store, id: u64) -> Option<TaskState> {
    store
        .get_task(TaskId(id))
        .expect("reads work")
        .map(|r| r.state)
}

#[test]
fn a_fail_fast_write_is_refused_and_leaves_nothing() {
    let store = Arc::new(MemoryStore::new());
    let (faulty, faults) = FaultyStore::new(store.clone());
    let (writer, thread) = GroupCommitWriter::start(faulty);

    faults.fail_writes(true);
    let err = wait(writer.write(insert(&[1])).expect("running")).expect_err("the store is failing");
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(writer.health().is_failing());
    assert!(writer.health().last_error().is_some());

    faults.fail_writes(false);
    let ok = wait(writer.write(insert(&[2])).expect("running"));
    assert!(matches!(ok, Ok(WriteOutcome::Inserted(_))), "{ok:?}");
    assert_eq!(
        state_of(&store, 1),
        None,
        "a refused insert is never stored"
    );
    assert_eq!(state_of(&store, 2), Some(TaskState::Queued));
    assert!(!writer.health().is_failing());
    assert_eq!(writer.health().last_error(), None);

    drop(writer);
    thread.join().expect("the writer stops cleanly");
}

#[test]
fn retained_writes_survive_an_outage_and_keep_their_order() {
    let store = Arc::new(MemoryStore::new());
    let (faulty, faults) = FaultyStore::new(store.clone());
    let (writer, thread) = GroupCommitWriter::start(faulty);
    wait(writer.write(insert(&[1, 2])).expect("running")).expect("the store works");

    faults.fail_writes(true);
    let first = wait(
        writer
            .write_retained(update(1, TaskState::Running, 1))
            .expect("running"),
    );
    assert_eq!(first.expect_err("the outage").kind, ErrorKind::Unavailable);
    writer
        .write_detached(update(1, TaskState::Succeeded, 1))
        .expect("running");
    writer
        .write_detached(update(2, TaskState::Running, 1))
        .expect("running");
    eventually("three writes retained", || writer.health().retained() == 3);
    // The writer keeps retrying by itself while the fault lasts.
    let tries = faults.refused_writes();
    eventually("retries with back-off", || {
        faults.refused_writes() > tries + 1
    });
    assert_eq!(state_of(&store, 1), Some(TaskState::Queued));
    assert!(writer.health().is_failing());

    faults.fail_writes(false);
    eventually("the retained writes land", || {
        state_of(&store, 1) == Some(TaskState::Succeeded)
            && state_of(&store, 2) == Some(TaskState::Running)
    });
    eventually("healthy again", || {
        !writer.health().is_failing() && writer.health().retained() == 0
    });
    // Later writes come after the retained ones.
    wait(
        writer
            .write_retained(update(2, TaskState::Succeeded, 1))
            .expect("running"),
    )
    .expect("the store works");
    assert_eq!(state_of(&store, 2), Some(TaskState::Succeeded));

    drop(writer);
    thread.join().expect("the writer stops cleanly");
}

#[test]
fn fail_fast_writes_sent_during_an_outage_do_not_overtake_retained_ones() {
    let store = Arc::new(MemoryStore::new());
    let (faulty, faults) = FaultyStore::new(store.clone());
    let (writer, thread) = GroupCommitWriter::start(faulty);
    wait(writer.write(insert(&[1])).expect("running")).expect("works");

    faults.fail_writes(true);
    writer
        .write_detached(update(1, TaskState::Running, 1))
        .expect("running");
    for id in 10..20 {
        let answer = wait(writer.write(insert(&[id])).expect("running"));
        assert_eq!(answer.expect_err("outage").kind, ErrorKind::Unavailable);
    }
    faults.fail_writes(false);
    let answer = wait(writer.write(insert(&[30])).expect("running"));
    assert!(answer.is_ok(), "{answer:?}");
    // The retained write went in the same transaction or before.
    assert_eq!(state_of(&store, 1), Some(TaskState::Running));
    for id in 10..20 {
        assert_eq!(state_of(&store, id), None);
    }

    drop(writer);
    thread.join().expect("the writer stops cleanly");
}

/// Whether the gate is open, and its condition variable.
type Gate = Arc<(Mutex<bool>, Condvar)>;

/// A store whose `apply` waits at a gate the test opens, so that writes
/// sent meanwhile pile up into one batch; it records each batch's size.
struct Gated<S> {
    inner: S,
    open: Gate,
    waiting: Arc<AtomicUsize>,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl<S> Gated<S> {
    fn new(inner: S) -> Self {
        Gated {
            inner,
            open: Arc::new((Mutex::new(true), Condvar::new())),
            waiting: Arc::new(AtomicUsize::new(0)),
            batches: Arc::default(),
        }
    }

    fn handles(&self) -> (Gate, Arc<AtomicUsize>, Arc<Mutex<Vec<usize>>>) {
        (
            self.open.clone(),
            self.waiting.clone(),
            self.batches.clone(),
        )
    }
}

impl<S: Store> Store for Gated<S> {
    fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.batches.lock().expect("batches").push(writes.len());
        let (open, cv) = &*self.open;
        let mut open = open.lock().expect("gate");
        if !*open {
            self.waiting.fetch_add(1, Ordering::SeqCst);
        }
        while !*open {
            open = cv.wait(open).expect("gate");
        }
        drop(open);
        self.inner.apply(writes)
    }
    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.inner.get_task(id)
    }
    fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.list_tasks(query)
    }
    fn list_attempts(
        &self,
        task: TaskId,
    ) -> Result<Vec<dispatch_store::AttemptRecord>, StoreError> {
        self.inner.list_attempts(task)
    }
    fn list_queue_configs(&self) -> Result<Vec<dispatch_store::QueueConfigRecord>, StoreError> {
        self.inner.list_queue_configs()
    }
    fn load_live(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.load_live()
    }
    fn max_task_id(&self) -> Result<Option<TaskId>, StoreError> {
        self.inner.max_task_id()
    }
    fn list_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.inner.list_schedules()
    }
    fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        self.inner.get_schedule(name)
    }
    fn list_queue_settings(&self) -> Result<Vec<(String, bool)>, StoreError> {
        self.inner.list_queue_settings()
    }
    fn count_by_queue_state(&self) -> Result<Vec<(String, TaskState, u64)>, StoreError> {
        self.inner.count_by_queue_state()
    }
    fn claim_lease(
        &self,
        partition: &str,
        me: &dispatch_store::Replica,
        lease_ms: u64,
    ) -> Result<dispatch_store::Lease, StoreError> {
        self.inner.claim_lease(partition, me, lease_ms)
    }
    fn release_lease(
        &self,
        partition: &str,
        me: &dispatch_store::Replica,
        epoch: u64,
    ) -> Result<(), StoreError> {
        self.inner.release_lease(partition, me, epoch)
    }
    fn list_replicas(&self) -> Result<Vec<dispatch_store::ReplicaRecord>, StoreError> {
        self.inner.list_replicas()
    }
    fn load_workers(&self) -> Result<Vec<dispatch_store::WorkerRecord>, StoreError> {
        self.inner.load_workers()
    }
    fn reserve_ids(&self, n: u64) -> Result<TaskId, StoreError> {
        self.inner.reserve_ids(n)
    }
}

#[test]
fn one_bad_write_does_not_sink_its_batch() {
    let store = Arc::new(MemoryStore::new());
    let gated = Gated::new(store.clone());
    let (open, waiting, _) = gated.handles();
    let (writer, thread) = GroupCommitWriter::start(gated);
    wait(writer.write(insert(&[1])).expect("running")).expect("works");

    // Hold the writer at the gate with one write, then queue a batch
    // behind it: a duplicate id (a bug), a good insert and a transition.
    *open.0.lock().expect("gate") = false;
    let blocker = writer.write(insert(&[2])).expect("running");
    eventually("the writer is at the gate", || {
        waiting.load(Ordering::SeqCst) == 1
    });
    let duplicate = writer.write(insert(&[1])).expect("running");
    let good = writer.write(insert(&[3])).expect("running");
    let transition = writer
        .write_retained(update(1, TaskState::Running, 1))
        .expect("running");
    *open.0.lock().expect("gate") = true;
    open.1.notify_all();

    assert!(wait(blocker).is_ok());
    assert_eq!(
        wait(duplicate).expect_err("an existing id").kind,
        ErrorKind::Conflict
    );
    match wait(good) {
        Ok(WriteOutcome::Inserted(v)) => assert_eq!(v, [InsertOutcome::Created]),
        other => panic!("the good insert must go through: {other:?}"),
    }
    assert!(wait(transition).is_ok());
    assert_eq!(state_of(&store, 1), Some(TaskState::Running));
    assert_eq!(state_of(&store, 3), Some(TaskState::Queued));
    assert!(!writer.health().is_failing(), "a bug is not an outage");

    drop(writer);
    thread.join().expect("the writer stops cleanly");
}

/// A write nobody waits for (a task handed out) lingers for one someone
/// waits for and shares its commit; alone, it is committed all the same.
#[test]
fn writes_nobody_waits_for_share_the_next_awaited_commit() {
    let store = Arc::new(MemoryStore::new());
    let gated = Gated::new(store.clone());
    let (_, _, batches) = gated.handles();
    // A linger far longer than the test: only the awaited write ends it.
    let (writer, thread) = GroupCommitWriter::start_lingering(gated, Duration::from_secs(600));
    wait(writer.write(insert(&[1, 2, 3])).expect("running")).expect("works");
    writer
        .write_detached(update(1, TaskState::Running, 1))
        .expect("running");
    writer
        .write_detached(update(2, TaskState::Running, 1))
        .expect("running");
    // Time to commit them early, were they not waiting for company.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(state_of(&store, 1), Some(TaskState::Queued));
    wait(
        writer
            .write_retained(update(1, TaskState::Succeeded, 1))
            .expect("running"),
    )
    .expect("works");
    // One commit for the three, and task 1's start is not even sent: its
    // outcome, in the same batch, stands for it.
    assert_eq!(*batches.lock().expect("batches"), [1, 2]);
    assert_eq!(state_of(&store, 1), Some(TaskState::Succeeded));
    assert_eq!(state_of(&store, 2), Some(TaskState::Running));
    drop(writer);
    thread.join().expect("the writer stops cleanly");

    // Alone, after its linger.
    let gated = Gated::new(store.clone());
    let (_, _, batches) = gated.handles();
    let (writer, thread) = GroupCommitWriter::start_lingering(gated, Duration::from_millis(20));
    writer
        .write_detached(update(3, TaskState::Running, 1))
        .expect("running");
    eventually("the lone write is committed", || {
        state_of(&store, 3) == Some(TaskState::Running)
    });
    assert_eq!(*batches.lock().expect("batches"), [1]);
    drop(writer);
    thread.join().expect("the writer stops cleanly");
}

/// A term's writer stores while its epoch leads; once another replica took
/// over, its batch fails as fenced, its retained writes are dropped rather
/// than retried, and every later write fails without reaching the store.
#[test]
fn a_fenced_writer_stops_for_good_when_another_replica_takes_over() {
    use dispatch_store::{ErrorKind, Replica};
    let store = Arc::new(MemoryStore::new());
    let a = Replica {
        id: "a".into(),
        url: "http://a.invalid".into(),
    };
    let b = Replica {
        id: "b".into(),
        url: "http://b.invalid".into(),
    };
    let lease = store.claim_lease("default", &a, 60_000).expect("claim");
    let (writer, thread) = GroupCommitWriter::start_fenced(store.clone(), "default", lease.epoch);
    let outcome = wait(writer.write(insert(&[1])).expect("running")).expect("leads");
    assert!(matches!(outcome, WriteOutcome::Inserted(_)), "{outcome:?}");
    assert!(!writer.health().is_fenced());

    store
        .release_lease("default", &a, lease.epoch)
        .expect("release");
    assert!(
        store
            .claim_lease("default", &b, 60_000)
            .expect("claim")
            .held
    );

    let e = wait(writer.write_retained(insert(&[2])).expect("running")).expect_err("fenced");
    assert_eq!(e.kind, ErrorKind::Fenced);
    assert!(writer.health().is_fenced());
    assert_eq!(
        writer.health().retained(),
        0,
        "a fenced write is not retried"
    );
    let e = wait(writer.write(insert(&[3])).expect("running")).expect_err("still fenced");
    assert_eq!(e.kind, ErrorKind::Fenced);
    assert_eq!(state_of(&store, 2), None);
    assert_eq!(state_of(&store, 3), None);
    assert_eq!(state_of(&store, 1), Some(TaskState::Queued));

    drop(writer);
    thread.join().expect("the writer stops cleanly");
}
