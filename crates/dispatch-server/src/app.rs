//! [`App`]: the server's shared state and the one path from core events to
//! the store and to waiting workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatch_core::{
    CoreError, Event, Millis, Scheduler, Task, TaskId, TaskState, Transition, WorkerId, WorkerSpec,
};
use dispatch_proto::Outcome;
use dispatch_store::{
    GroupCommitWriter, Store, StoreError, TaskRecord, TaskUpdate, Write, WriteOutcome,
};
use tokio::sync::{Notify, oneshot, watch};

use crate::ServerConfig;
use crate::clock::now_ms;
use crate::counters::Metrics;

pub(crate) use crate::budget::Body;
use crate::budget::{MemoryBudget, footprint};

/// Everything behind the one lock: the scheduler and the workers' wake-ups.
pub(crate) struct Shared {
    pub(crate) sched: Scheduler<Body>,
    /// One per registered worker; notified when tasks are assigned to it.
    wakers: HashMap<WorkerId, Arc<Notify>>,
    /// What each registered worker takes of `--max-memory-mb`, given back
    /// when it goes.
    worker_charges: HashMap<WorkerId, crate::budget::Charge>,
    /// The workers kept in the store (a leading replica's HTTP workers),
    /// forgotten there when they go.
    pub(crate) stored_workers: std::collections::HashSet<WorkerId>,
    /// Requests waiting for a task to end (`GET /v1/tasks/{id}?wait_ms`).
    task_waiters: HashMap<TaskId, TaskWaiters>,
}

/// The requests waiting for one live task to end, and its record as the
/// first of them saw it: its final record is that one with the final
/// transition applied, as the store applies it, so that the answer needs
/// no read of the store.
struct TaskWaiters {
    record: TaskRecord,
    waiters: Vec<oneshot::Sender<TaskRecord>>,
}

/// One step of a request under the scheduler lock (see [`App::apply`]):
/// the shared state to feed the core, and the time the step happens at.
pub(crate) struct Step<'a> {
    pub(crate) shared: &'a mut Shared,
    pub(crate) now: Millis,
    watch: Watch,
}

/// What settling a step does beyond persisting its events: writes the
/// reported results with their tasks' `Succeeded` updates, and notes the
/// last transition of each watched task.
#[derive(Default)]
struct Watch {
    results: HashMap<TaskId, Box<str>>,
    seen: HashMap<TaskId, Option<Transition>>,
}

impl Step<'_> {
    /// Watches `task`: [`Settled::transition`] tells the last transition
    /// the core made of it in this step.
    pub(crate) fn watch(&mut self, task: TaskId) {
        self.watch.seen.insert(task, None);
    }

    /// Applies a worker's report of `task`, the same for both protocols:
    /// its stop notice is heard, the outcome is fed to the core, and a
    /// result is written with the task's `Succeeded` update. Watches the
    /// task.
    pub(crate) fn report(
        &mut self,
        task: TaskId,
        worker: WorkerId,
        outcome: Outcome,
    ) -> Result<(), CoreError> {
        let (sched, now) = (&mut self.shared.sched, self.now);
        sched.stop_heard(worker, task);
        match outcome {
            Outcome::Succeeded(result) => {
                sched.complete(task, worker, now)?;
                self.watch.results.insert(task, result);
            }
            Outcome::Failed {
                error,
                retry_after_ms,
                abort,
            } => sched.fail(task, worker, error, retry_after_ms, abort, now)?,
        }
        self.watch(task);
        Ok(())
    }
}

/// A settled step (see [`App::apply`]).
pub(crate) struct Settled {
    ack: Option<Ack>,
    seen: HashMap<TaskId, Option<Transition>>,
}

impl Settled {
    /// The last transition the step made of a watched task.
    pub(crate) fn transition(&self, task: TaskId) -> Option<&Transition> {
        self.seen.get(&task)?.as_ref()
    }

    /// Waits until the store has committed every write the step sent.
    pub(crate) async fn committed(&mut self) -> Result<(), StoreError> {
        acked(self.ack.take()).await.map(|_| ())
    }

    /// The acknowledgement of the step's writes, to wait for elsewhere.
    pub(crate) fn into_ack(self) -> Option<Ack> {
        self.ack
    }
}

/// Task ids a leading replica reserves from the store at a time.
const ID_RANGE: u64 = 1 << 20;

/// Where task ids come from.
enum Ids {
    /// A lone server: on from the highest stored id.
    Counter(AtomicU64),
    /// A leading replica: ranges the store reserved for it.
    Ranges(Arc<Mutex<IdRanges>>),
}

/// A leading replica's task ids in hand.
struct IdRanges {
    /// What is left of the range in use.
    current: std::ops::Range<u64>,
    /// The range fetched ahead.
    next: Option<std::ops::Range<u64>>,
    /// A fetch is on its way.
    refilling: bool,
}

/// A pending acknowledgement from the store writer.
pub(crate) type Ack = oneshot::Receiver<Result<WriteOutcome, StoreError>>;

/// The server's state, shared by every request.
pub(crate) struct App {
    pub(crate) config: ServerConfig,
    shared: Mutex<Shared>,
    pub(crate) store: Arc<dyn Store>,
    writer: GroupCommitWriter,
    /// Whether registered HTTP workers are kept in the store (a replica
    /// that leads), for the next leader.
    pub(crate) keeps_workers: bool,
    /// The term this app leads in, for a replica; `None` for a lone server.
    pub(crate) epoch: Option<u64>,
    /// This term's mark in the `handout` of poll answers: a worker's
    /// `last_handout` from another scheduler (before a restart, or another
    /// leader's) is told apart and ignored.
    pub(crate) handout_mark: u32,
    ids: Ids,
    /// Woken when a timer earlier than the timer loop's current sleep may
    /// have been added.
    pub(crate) timer_wake: Notify,
    /// Flips to true when the server shuts down; long polls end early.
    pub(crate) stopping: watch::Receiver<bool>,
    stop_tx: watch::Sender<bool>,
    pub(crate) metrics: Metrics,
    /// What live tasks take of `--max-memory-mb`.
    pub(crate) budget: Arc<MemoryBudget>,
    /// Dead tasks being requeued by `POST /v1/tasks/{id}/retry`.
    retrying: Mutex<std::collections::HashSet<TaskId>>,
    /// Cron schedules, fired by `schedules::schedule_loop`.
    pub(crate) schedules: crate::schedules::table::Schedules,
    /// The audit log, when `--audit-log` names one.
    pub(crate) audit: Option<crate::audit::AuditLog>,
    /// Which token registered each worker (with `--tokens`).
    pub(crate) owners: crate::owners::WorkerOwners,
    /// Serializes queue pauses and resumes: each is stored, then applied,
    /// before the next starts, so the core ends in the state the store has
    /// last.
    pub(crate) pause_order: tokio::sync::Mutex<()>,
    /// The queue and type settings in force: the config file's, with the
    /// queues changed through the API replaced (`PATCH /v1/queues`).
    queue_settings: std::sync::RwLock<Arc<crate::queues::QueueSettings>>,
}

/// The full record of a live task, as the API shows it.
pub(crate) fn live_record(t: &Task<Body>) -> TaskRecord {
    let mut spec = t.spec.clone();
    spec.run_at = t.ready_at;
    TaskRecord {
        id: t.id,
        spec,
        body: t.body.to_task_body(),
        state: t.state,
        attempts: t.attempts,
        worker: t.worker,
        started_at: t.started_at,
        finished_at: None,
        result: None,
        error: t.last_error.as_deref().map(String::from),
        // The core does not keep it; the store has it.
        request_digest: None,
    }
}

impl App {
    /// Opens the store, starts the writer and rebuilds the scheduler from
    /// the live tasks. Runs on a blocking thread.
    ///
    /// `epoch` is the term of a replica that leads: its writes are fenced
    /// by it, and its task ids come from ranges the store reserves. A lone
    /// server (`None`) holds its store alone and numbers tasks on from the
    /// highest stored id.
    pub(crate) fn open(
        config: ServerConfig,
        store: Arc<dyn Store>,
        audit: Option<crate::audit::AuditLog>,
        epoch: Option<u64>,
    ) -> Result<(Arc<App>, std::thread::JoinHandle<()>), StoreError> {
        let (writer, writer_thread, ids) = match epoch {
            None => {
                let next = store.max_task_id()?.map_or(1, |id| id.0 + 1);
                let (w, t) = GroupCommitWriter::start(store.clone());
                (w, t, Ids::Counter(AtomicU64::new(next)))
            }
            Some(epoch) => {
                let first = store.reserve_ids(ID_RANGE)?.0;
                let (w, t) = GroupCommitWriter::start_fenced(
                    store.clone(),
                    dispatch_store::DEFAULT_PARTITION,
                    epoch,
                );
                let ranges = IdRanges {
                    current: first..first + ID_RANGE,
                    next: None,
                    refilling: false,
                };
                (w, t, Ids::Ranges(Arc::new(Mutex::new(ranges))))
            }
        };
        let live = match store.load_live() {
            Ok(live) => live,
            Err(e) => {
                drop(writer);
                let _ = writer_thread.join();
                return Err(e);
            }
        };
        let budget = MemoryBudget::new(config.max_memory_bytes);

        let now = now_ms();
        let core_config = dispatch_core::Config {
            lease_ms: config.lease_ms,
            collect_ms: config.collect_ms,
            ..dispatch_core::Config::default()
        };
        let mut sched = Scheduler::new(core_config, seed());
        // The config file gives the defaults; settings changed through the
        // API were stored and win.
        let queue_settings = config
            .queue_settings
            .clone()
            .with_stored(store.list_queue_configs()?);
        queue_settings.apply(&mut sched, &store.list_queue_settings()?);
        // A leading replica keeps its HTTP workers in the store; the next
        // leader restores them, with their leases starting now, so that a
        // takeover leaves the tasks they run with them.
        let mut kept_workers = Vec::new();
        if epoch.is_some() {
            for w in store.load_workers()? {
                let spec = dispatch_core::WorkerSpec {
                    name: w.name.clone(),
                    types: w.types.iter().map(|t| Arc::from(t.as_str())).collect(),
                    labels: w.labels.clone(),
                    capacity: w.capacity,
                    weight: w.weight,
                };
                match sched.restore_worker(w.id, spec, now) {
                    Ok(()) => kept_workers.push(w),
                    Err(e) => {
                        tracing::error!(worker = %w.id, error = %e, "skipping a stored worker")
                    }
                }
            }
        }
        let mut requeued = 0usize;
        let mut adopted = 0usize;
        // Tasks that end as they are restored (a copy pinned to a worker
        // that is gone, as every worker is after a restart): their children
        // must know how, before the store does.
        let mut ended_here: HashMap<TaskId, TaskState> = HashMap::new();
        for r in &live {
            // Still running on a worker that is kept: it stays there.
            let holder = r
                .worker
                .filter(|&w| r.state == TaskState::Running && sched.worker(w).is_some());
            let kept = match holder {
                Some(w) => {
                    let body = Body::new(r.body.clone(), budget.charge(footprint(r)));
                    match sched.restore_running(r.id, r.spec.clone(), body, r.attempts, w, now) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(task = %r.id, error = %e, "requeueing a task its worker cannot hold");
                            false
                        }
                    }
                }
                None => false,
            };
            adopted += usize::from(kept);
            if !kept {
                // An attempt cut short by a scheduler stop is not the task's
                // fault: it does not count.
                let attempts = if r.state == TaskState::Running {
                    requeued += 1;
                    r.attempts.saturating_sub(1)
                } else {
                    r.attempts
                };
                // Recovered tasks are held whatever the budget says.
                let body = Body::new(r.body.clone(), budget.charge(footprint(r)));
                if let Err(e) =
                    sched.restore(r.id, r.spec.clone(), body, attempts, r.error.clone(), now)
                {
                    tracing::error!(task = %r.id, error = %e, "skipping a task at recovery");
                    continue;
                }
                // Parents have lower ids, so live ones are restored already;
                // the others ended, and the store says how.
                if r.state == TaskState::Scheduled && !r.body.depends_on.is_empty() {
                    match sched.hold_for_parents(r.id, &r.body.depends_on) {
                        Ok(ended) => {
                            for p in ended {
                                let state = match ended_here.get(&p) {
                                    Some(&st) => Some(st),
                                    None => store.get_task(p)?.map(|x| x.state),
                                };
                                match state {
                                    Some(st) if st.is_terminal() => {
                                        sched.parent_ended(r.id, p, st, now)
                                    }
                                    None => sched.parent_ended(r.id, p, TaskState::Cancelled, now),
                                    other => {
                                        tracing::error!(task = %r.id, parent = %p, ?other, "a parent is neither live nor ended")
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(task = %r.id, error = %e, "cannot hold for parents")
                        }
                    }
                }
            }
            for event in sched.drain_events() {
                if let Event::Transition(t) = event {
                    if t.state.is_terminal() {
                        ended_here.insert(t.task, t.state);
                    }
                    let _ = writer.write_detached(Write::Update(TaskUpdate::from(t)));
                }
            }
            let Some(t) = sched.task(r.id) else {
                continue;
            };
            if t.state != r.state || t.attempts != r.attempts {
                let update = TaskUpdate::from(dispatch_core::Transition {
                    task: t.id,
                    state: t.state,
                    attempts: t.attempts,
                    worker: None,
                    started_at: None,
                    finished_at: None,
                    ready_at: t.ready_at,
                    error: t.last_error.as_deref().map(String::from),
                    ended: None,
                });
                let _ = writer.write_detached(Write::Update(update));
            }
        }
        tracing::info!(
            live = live.len(),
            requeued,
            workers = kept_workers.len(),
            kept_running = adopted,
            ?epoch,
            "recovered state from the store"
        );
        let (stop_tx, stopping) = watch::channel(false);
        let app = App {
            config,
            keeps_workers: epoch.is_some(),
            epoch,
            handout_mark: handout_mark(),
            shared: Mutex::new(Shared {
                sched,
                stored_workers: kept_workers.iter().map(|w| w.id).collect(),
                wakers: HashMap::new(),
                worker_charges: HashMap::new(),
                task_waiters: HashMap::new(),
            }),
            store,
            writer,
            ids,
            timer_wake: Notify::new(),
            stopping,
            stop_tx,
            metrics: Metrics::default(),
            budget,
            retrying: Mutex::default(),
            schedules: crate::schedules::table::Schedules::default(),
            audit,
            owners: Default::default(),
            pause_order: Default::default(),
            queue_settings: std::sync::RwLock::new(Arc::new(queue_settings)),
        };
        {
            let mut shared = app.lock();
            for w in &kept_workers {
                app.waker(&mut shared, w.id);
                if let Some(digest) = w.owner {
                    app.owners.restore(w.id, digest);
                }
            }
        }
        Ok((Arc::new(app), writer_thread))
    }

    /// The queue and type settings in force.
    pub(crate) fn queue_settings(&self) -> Arc<crate::queues::QueueSettings> {
        self.queue_settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the settings in force (after the store has committed the
    /// change).
    pub(crate) fn set_queue_settings(&self, settings: crate::queues::QueueSettings) {
        *self
            .queue_settings
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }

    /// Takes the lock. A panic elsewhere never leaves it unusable: the
    /// core's state is only changed through methods that keep it valid.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the right to requeue a dead task; false when another request
    /// is doing it.
    pub(crate) fn begin_retry(&self, id: TaskId) -> bool {
        let mut retrying = self.retrying.lock().unwrap_or_else(|e| e.into_inner());
        retrying.insert(id)
    }

    /// Releases the claim of `begin_retry`.
    pub(crate) fn end_retry(&self, id: TaskId) {
        let mut retrying = self.retrying.lock().unwrap_or_else(|e| e.into_inner());
        retrying.remove(&id);
    }

    /// Reserves `n` consecutive task ids.
    ///
    /// A leading replica takes them from ranges the store reserved for it
    /// ([`ID_RANGE`] ids each), so that ids stay unique across replicas and
    /// takeovers. The next range is fetched in the background once half of
    /// the current one is used, so a request never waits on the store for
    /// ids; one that needs more than what is in hand (a burst past half a
    /// million ids before the fetch returned, or a store that is down) is
    /// refused as unavailable, and can be retried.
    pub(crate) fn reserve_ids(&self, n: u64) -> Result<u64, StoreError> {
        let ranges = match &self.ids {
            Ids::Counter(next) => return Ok(next.fetch_add(n, Ordering::Relaxed)),
            Ids::Ranges(r) => r,
        };
        let mut r = ranges.lock().unwrap_or_else(|e| e.into_inner());
        if r.current.end - r.current.start < n
            && let Some(next) = r.next.take()
        {
            r.current = next;
        }
        let got = (r.current.end - r.current.start >= n).then(|| {
            let first = r.current.start;
            r.current.start += n;
            first
        });
        if r.next.is_none() && !r.refilling && r.current.end - r.current.start < ID_RANGE / 2 {
            r.refilling = true;
            let (store, ranges) = (self.store.clone(), ranges.clone());
            tokio::task::spawn_blocking(move || {
                let fetched = store.reserve_ids(ID_RANGE);
                let mut r = ranges.lock().unwrap_or_else(|e| e.into_inner());
                r.refilling = false;
                match fetched {
                    Ok(first) => r.next = Some(first.0..first.0 + ID_RANGE),
                    Err(e) => tracing::warn!(error = %e, "cannot reserve task ids; will try again"),
                }
            });
        }
        got.ok_or_else(|| {
            StoreError::new(
                dispatch_store::ErrorKind::Unavailable,
                "reserving more task ids from the store",
            )
        })
    }

    /// Whether another replica took over: this one's writes are refused
    /// and it must step down.
    pub(crate) fn is_fenced(&self) -> bool {
        self.writer.health().is_fenced()
    }

    /// Queues a write and returns its acknowledgement.
    pub(crate) fn write(&self, w: Write) -> Result<Ack, StoreError> {
        self.writer
            .write(w)
            .map_err(|e| StoreError::new(dispatch_store::ErrorKind::Unavailable, e.to_string()))
    }

    /// Whether the store takes writes, as the writer last saw it.
    pub(crate) fn store_health(&self) -> &dispatch_store::StoreHealth {
        self.writer.health()
    }

    /// Signals shutdown to long polls and the timer loop.
    pub(crate) fn begin_stop(&self) {
        let _ = self.stop_tx.send(true);
    }

    /// One change of state, the way every request makes it: takes the
    /// lock, lets `f` feed the core (a [`Step`]: the shared state and the
    /// time, read once), then settles (ticks the core, persists every event
    /// in order, wakes the workers that got tasks) and releases the lock.
    /// Returns `f`'s value and the [`Settled`] step: the acknowledgement of
    /// its writes (writes commit in order, so it resolves only once
    /// everything sent is committed) and the transitions of the tasks it
    /// watched, to build the answer from.
    ///
    /// [`App::try_apply`] is the same for a step that may be refused.
    pub(crate) fn apply<T>(&self, f: impl FnOnce(&mut Step<'_>) -> T) -> (T, Settled) {
        let Ok(applied) = self.try_apply(|step| Ok::<T, std::convert::Infallible>(f(step)));
        applied
    }

    /// [`App::apply`] for a step that may be refused: when `f` fails,
    /// nothing is settled here (what it fed the core before failing is
    /// persisted by the next step) and its error is returned.
    pub(crate) fn try_apply<T, E>(
        &self,
        f: impl FnOnce(&mut Step<'_>) -> Result<T, E>,
    ) -> Result<(T, Settled), E> {
        let mut shared = self.lock();
        let now = now_ms();
        let mut step = Step {
            shared: &mut shared,
            now,
            watch: Watch::default(),
        };
        let value = f(&mut step)?;
        let mut watch = step.watch;
        shared.sched.tick(now);
        let ack = self.persist(&mut shared, &mut watch);
        let settled = Settled {
            ack,
            seen: watch.seen,
        };
        Ok((value, settled))
    }

    /// [`App::try_apply`], then waits until the store has committed the
    /// step's writes: for answers that say what they did is durable.
    pub(crate) async fn apply_durably<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Step<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let (value, mut settled) = self.try_apply(f)?;
        settled.committed().await?;
        Ok(value)
    }

    /// Advances the core to `now`, then persists every event produced since
    /// the last call, in order, and wakes workers that got tasks (the timer
    /// loop; requests go through [`App::apply`]).
    ///
    /// Returns the acknowledgement of the last write: writes commit in
    /// order, so it resolves only once everything sent here is committed.
    pub(crate) fn settle(&self, shared: &mut Shared, now: Millis) -> Option<Ack> {
        shared.sched.tick(now);
        self.flush(shared)
    }

    /// Persists every event produced since the last call, in order, and
    /// wakes workers that got tasks, without advancing the core (after a
    /// poll has collected tasks, say).
    pub(crate) fn flush(&self, shared: &mut Shared) -> Option<Ack> {
        self.persist(shared, &mut Watch::default())
    }

    /// Drains the core's events: each transition is written (with its
    /// reported result, for a success) and noted when `watch` asks; each
    /// assignment or stop wakes its worker.
    fn persist(&self, shared: &mut Shared, watch: &mut Watch) -> Option<Ack> {
        let mut last = None;
        let mut new_timer = false;
        let mut second = crate::throughput::Second::default();
        for event in shared.sched.drain_events() {
            match event {
                Event::Transition(t) => {
                    self.metrics.transition(t.state);
                    second.count(&t);
                    new_timer |= t.state == TaskState::Scheduled;
                    if let Some(seen) = watch.seen.get_mut(&t.task) {
                        *seen = Some(t.clone());
                    }
                    let ended = t.state.is_terminal();
                    let mut update = TaskUpdate::from(t);
                    if update.state == TaskState::Succeeded
                        && let Some(r) = watch.results.remove(&update.id)
                    {
                        update.result = Some(r);
                    }
                    let waiting = ended
                        .then(|| shared.task_waiters.remove(&update.id))
                        .flatten()
                        .map(|w| (w, update.clone()));
                    // The core has moved on: the store must follow, even
                    // through an outage, so the write is retained.
                    match self.writer.write_retained(Write::Update(update)) {
                        Ok(ack) => last = Some(ack),
                        Err(e) => tracing::error!(error = %e, "cannot persist a transition"),
                    }
                    // Told only once the write is on its way, so that a
                    // waiter's barrier comes after it.
                    if let Some((
                        TaskWaiters {
                            mut record,
                            waiters,
                        },
                        update,
                    )) = waiting
                    {
                        record.apply(&update);
                        for waiter in waiters {
                            let _ = waiter.send(record.clone());
                        }
                    }
                }
                Event::Assigned { worker, .. } => {
                    // The worker collects it: its open poll, or its stream.
                    if let Some(w) = shared.wakers.get(&worker) {
                        w.notify_one();
                    }
                }
                Event::Uncollected { worker, tasks, .. } => {
                    tracing::warn!(%worker, tasks, "worker did not collect its tasks in time; they went back to the queue, and it gets no more until it polls");
                }
                Event::Stop { worker, .. } => {
                    // A streaming worker is told at once; an HTTP worker
                    // reads it from its next heartbeat.
                    if let Some(w) = shared.wakers.get(&worker) {
                        w.notify_one();
                    }
                }
                Event::WorkerLost { worker, .. } => {
                    tracing::warn!(%worker, "worker declared dead (lease expired or stream broken); its tasks were requeued");
                    self.metrics.workers_lost.fetch_add(1, Ordering::Relaxed);
                    shared.wakers.remove(&worker);
                    shared.worker_charges.remove(&worker);
                    self.unstore_worker(shared, worker);
                }
            }
        }
        if new_timer {
            self.timer_wake.notify_one();
        }
        self.metrics.throughput.add(now_ms(), second);
        last
    }

    /// Registers a worker within `--max-workers` and the memory budget
    /// (its registration is held in memory like a task, so it is charged
    /// too), records the token that registered it and makes its wake-up
    /// handle. A `streaming` worker (gRPC) gets tasks only against the
    /// credit it grants, none before. The refusal says why (HTTP answers
    /// 429, gRPC `RESOURCE_EXHAUSTED`).
    pub(crate) fn enroll(
        &self,
        step: &mut Step<'_>,
        spec: WorkerSpec,
        caller: Option<&crate::owners::Caller>,
        streaming: bool,
    ) -> Result<(WorkerId, Arc<Notify>), String> {
        let shared = &mut *step.shared;
        let max = self.config.max_workers;
        if shared.sched.worker_count() >= max {
            return Err(format!(
                "the server has {max} workers registered, as many as --max-workers allows"
            ));
        }
        let charge = self
            .budget
            .reserve(crate::budget::worker_footprint(&spec), 0)
            .map_err(|e| e.to_string())?;
        let id = shared.sched.register_worker(spec, step.now);
        shared.worker_charges.insert(id, charge);
        if streaming {
            let _ = shared.sched.offer(id, 0, step.now);
        }
        self.owners
            .record(caller, id, |w| shared.sched.worker(w).is_some());
        Ok((id, self.waker(shared, id)))
    }

    /// A receiver of the final record of the live task `id` once it ends
    /// and its final write is sent (not yet committed: see [`App::barrier`]);
    /// `None` when the core does not hold it (it already ended, or never
    /// existed).
    pub(crate) fn watch_task(&self, id: TaskId) -> Option<oneshot::Receiver<TaskRecord>> {
        let mut shared = self.lock();
        let shared = &mut *shared;
        let task = shared.sched.task(id)?;
        let (tx, rx) = oneshot::channel();
        let entry = shared
            .task_waiters
            .entry(id)
            .or_insert_with(|| TaskWaiters {
                record: live_record(task),
                waiters: Vec::new(),
            });
        entry.waiters.retain(|w| !w.is_closed());
        entry.waiters.push(tx);
        Some(rx)
    }

    /// Tells the core how parents it no longer held had ended, for tasks
    /// that `hold_for_parents` left waiting on them. Those parents' final
    /// writes were sent before, so after a barrier the store knows.
    pub(crate) async fn resolve_ended_parents(
        self: &Arc<Self>,
        pending: Vec<(TaskId, Vec<TaskId>)>,
    ) -> Result<(), StoreError> {
        if pending.is_empty() {
            return Ok(());
        }
        self.barrier().await?;
        let mut outcomes = Vec::new();
        for (child, parents) in pending {
            for p in parents {
                let state = self.read_stored(p).await?.map(|r| r.state);
                outcomes.push((child, p, state));
            }
        }
        self.apply(|step| {
            let now = step.now;
            for (child, parent, state) in outcomes {
                let sched = &mut step.shared.sched;
                match state {
                    Some(s) if s.is_terminal() => sched.parent_ended(child, parent, s, now),
                    // A parent that does not exist can never succeed: the
                    // task waiting for it ends rather than wait forever.
                    None => {
                        tracing::warn!(%child, %parent, "a parent does not exist; its dependents end");
                        sched.parent_ended(child, parent, TaskState::Cancelled, now)
                    }
                    other => {
                        tracing::error!(%child, %parent, ?other, "a parent is neither live nor ended")
                    }
                }
            }
        });
        Ok(())
    }

    /// Waits until the writer has committed everything sent before this
    /// call: writes commit in order, so an empty write's acknowledgement
    /// comes after all of them.
    pub(crate) async fn barrier(&self) -> Result<(), StoreError> {
        acked(Some(self.write(Write::Insert(Vec::new()))?))
            .await
            .map(|_| ())
    }

    /// The wake-up handle of a registered worker.
    pub(crate) fn waker(&self, shared: &mut Shared, worker: WorkerId) -> Arc<Notify> {
        shared.wakers.entry(worker).or_default().clone()
    }

    /// Forgets a worker's wake-up handle and gives back its memory.
    pub(crate) fn forget_worker(&self, shared: &mut Shared, worker: WorkerId) {
        if let Some(w) = shared.wakers.remove(&worker) {
            w.notify_waiters();
        }
        shared.worker_charges.remove(&worker);
        self.unstore_worker(shared, worker);
    }

    /// Keeps a newly registered HTTP worker in the store, for the next
    /// leader; returns the write's acknowledgement. Sent under the lock,
    /// so that it precedes every transition of the worker's tasks.
    pub(crate) fn store_worker(
        &self,
        shared: &mut Shared,
        record: dispatch_store::WorkerRecord,
    ) -> Result<Option<Ack>, StoreError> {
        if !self.keeps_workers {
            return Ok(None);
        }
        let id = record.id;
        let ack = self.write(Write::PutWorker(record))?;
        shared.stored_workers.insert(id);
        Ok(Some(ack))
    }

    /// Forgets a kept worker in the store once it is gone.
    fn unstore_worker(&self, shared: &mut Shared, worker: WorkerId) {
        if shared.stored_workers.remove(&worker) {
            let _ = self.writer.write_detached(Write::DeleteWorker(worker));
        }
    }

    /// One task, live or stored.
    pub(crate) async fn find_task(
        self: &Arc<Self>,
        id: TaskId,
    ) -> Result<Option<TaskRecord>, StoreError> {
        if let Some(t) = self.lock().sched.task(id) {
            return Ok(Some(live_record(t)));
        }
        let stored = self.read_stored(id).await?;
        if stored.as_ref().is_some_and(|r| !r.state.is_terminal()) {
            // The core let go of it, so its final state is on its way to the
            // store: let the writer pass that write, then read again.
            self.barrier().await?;
            if let Some(t) = self.lock().sched.task(id) {
                return Ok(Some(live_record(t)));
            }
            return self.read_stored(id).await;
        }
        Ok(stored)
    }

    async fn read_stored(self: &Arc<Self>, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.store.get_task(id))
            .await
            .map_err(|e| StoreError::new(dispatch_store::ErrorKind::Unavailable, e.to_string()))?
    }
}

/// Waits for a store acknowledgement.
pub(crate) async fn acked(ack: Option<Ack>) -> Result<Option<WriteOutcome>, StoreError> {
    match ack {
        None => Ok(None),
        Some(rx) => rx
            .await
            .map_err(|_| {
                StoreError::new(
                    dispatch_store::ErrorKind::Unavailable,
                    "the store writer stopped",
                )
            })?
            .map(Some),
    }
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Most tasks deleted by one purge write, so that a large backlog does not
/// hold the writer for long.
const PURGE_BATCH: usize = 10_000;

/// Deletes finished tasks older than the retention period, in batches,
/// every tenth of the period (at most every minute) until the server stops.
pub(crate) async fn purge_loop(app: Arc<App>) {
    let mut stop = app.stopping.clone();
    let retention = app.config.retention_ms;
    let every = Duration::from_millis((retention / 10).clamp(50, 60_000));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let finished_before = now_ms().saturating_sub(retention);
        loop {
            let write = Write::Purge {
                finished_before,
                limit: PURGE_BATCH,
            };
            let purged = match app.write(write) {
                Ok(ack) => acked(Some(ack)).await,
                Err(e) => Err(e),
            };
            match purged {
                Ok(Some(WriteOutcome::Purged(n))) => {
                    app.metrics.purged.fetch_add(n as u64, Ordering::Relaxed);
                    if n < PURGE_BATCH {
                        break;
                    }
                }
                Ok(other) => {
                    tracing::error!(?other, "unexpected answer to a purge");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging finished tasks failed; will retry");
                    break;
                }
            }
        }
    }
}

/// Ticks the core when its next deadline (a timer or a lease) comes, or at
/// least every `idle_tick_ms` (a second by default), until the server stops.
pub(crate) async fn timer_loop(app: Arc<App>) {
    let mut stop = app.stopping.clone();
    let idle = app.config.idle_tick_ms.max(1);
    loop {
        let now = now_ms();
        let next = {
            let mut shared = app.lock();
            let _ = app.settle(&mut shared, now);
            shared.sched.next_deadline()
        };
        let wait = next.map_or(idle, |at| at.saturating_sub(now).clamp(1, idle));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = app.timer_wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// A mark for this term's poll answers, unlike the previous terms' (random:
/// one chance in 2^32 that a worker's stale `last_handout` counts here,
/// which could give back a task whose answer is still on its way).
fn handout_mark() -> u32 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u32::from_le_bytes(bytes),
        // Without randomness, the time differs from any earlier term's.
        Err(_) => now_ms() as u32,
    }
}
