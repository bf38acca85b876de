//! The [`Scheduler`]: the state machine that decides which task runs where.
//!
//! Every public method is one input. Methods that change state append
//! [`Event`]s to an internal buffer that the caller drains with
//! [`Scheduler::drain_events`] and persists; `tick` fires timers, expires
//! worker leases and assigns ready tasks to workers with free slots.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::ops::Bound;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use crate::queues::{Limiter, QueueConfig, QueueInfo, QueueState, TypeConfig};
use crate::rng::SplitMix64;
use crate::routing::{self, Candidate};
use crate::table::TaskTable;
use crate::{
    Millis, Strategy, Task, TaskId, TaskSpec, TaskState, Worker, WorkerId, WorkerSpec, WorkerState,
};

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// A worker that neither heartbeats, polls nor reports for this long is
    /// declared dead and its tasks are requeued.
    pub lease_ms: u64,
    /// Priority aging: waiting this long counts as one priority point. A
    /// ready task's rank is the time it became ready minus its priority
    /// times this; lower ranks run first, so a task of priority p - 10
    /// overtakes one of priority p that became ready 10 × `aging_ms` later,
    /// and no priority starves another.
    pub aging_ms: u64,
    /// A worker that takes tasks up to its capacity (no credit: the HTTP
    /// protocol) must collect a task assigned to it within this long. If
    /// it does not, everything assigned to it and not collected goes back
    /// to the queue, no attempt spent, and it is given nothing more until
    /// it polls again: a worker that registered and hung holds no task.
    pub collect_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease_ms: 10_000,
            aging_ms: 1_000,
            collect_ms: 3_000,
        }
    }
}

/// Why an input was refused. Refusals never change state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreError {
    /// The core holds no live task with this id (it may be terminal).
    UnknownTask(TaskId),
    /// No such registered worker (never registered, left, or lease lost).
    UnknownWorker(WorkerId),
    /// A task with this id is already live.
    DuplicateTask(TaskId),
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

/// Order within a ready lane: rank (ready time minus aged priority), then
/// submission order.
type ReadyKey = (i64, u64, TaskId);

/// A ready lane: the queued tasks of one type in one queue.
type Lane = (Arc<str>, Arc<str>);

/// An entry of the dispatch frontier: a lane's next candidate task, at
/// `depth` tasks past the lane's head, ordered by the pass its queue had
/// when the entry was pushed, then by the task's key.
type FrontierEntry = (u64, ReadyKey, usize, Lane);

/// The workers that run one task type, for routing.
#[derive(Debug, Default)]
struct TypeWorkers {
    /// In registration order, with their load: the round-robin ring and
    /// what every strategy reads.
    workers: Vec<Candidate>,
    /// Where each worker sits in `workers`.
    position: HashMap<WorkerId, usize>,
    /// Where the next round-robin scan starts.
    cursor: usize,
    /// Free slots summed over `workers`, so that a type with nobody free is
    /// skipped without scanning.
    free: u64,
    /// The `consistent_hash` choice (a position in `workers`) of routing
    /// keys seen lately, for tasks without labels: a hash of the key
    /// against every worker costs a microsecond with a thousand workers,
    /// and a task waiting for its worker is looked at on every tick.
    /// Cleared whenever `workers` changes, and when it grows past
    /// `HASH_CACHE_LIMIT`.
    hashed: HashMap<Arc<str>, usize>,
}

impl TypeWorkers {
    /// Brings a worker's routing view up to date after its load or demand
    /// changed; `before` is what its free slots were.
    fn sync(&mut self, w: &Worker, before: u32) {
        let Some(&i) = self.position.get(&w.id) else {
            return;
        };
        let c = &mut self.workers[i];
        c.in_flight = w.in_flight();
        c.demand = w.asks();
        self.free = self.free + u64::from(w.free_slots()) - u64::from(before);
    }
}

/// How deep into one type's ready queue dispatch looks for a task it can
/// place when the ones ahead are waiting for a particular worker (by
/// `consistent_hash`, `failover` or labels). Bounds the work per decision.
const SCAN_LIMIT: usize = 64;

/// Routing keys whose `consistent_hash` choice a type remembers at most.
const HASH_CACHE_LIMIT: usize = 1 << 16;

/// Why a running attempt ended without a result.
enum Interruption {
    /// The worker died: the attempt counts and its error is recorded.
    WorkerLost,
    /// The worker left or the scheduler gave the task back: the attempt does
    /// not count.
    Returned,
}

/// The scheduling state machine. `B` is the caller's opaque task body.
#[derive(Debug)]
pub struct Scheduler<B> {
    config: Config,
    rng: SplitMix64,
    /// Boxed: a table of a million entries has two million slots, and a
    /// slot of a pointer costs far less than a slot of a whole task.
    tasks: TaskTable<B>,
    /// Queued tasks, per type then queue (a lane each), so that dispatch
    /// skips every lane of a type nobody can take at once.
    ready: HashMap<Arc<str>, HashMap<Arc<str>, BTreeSet<ReadyKey>>>,
    /// Every queue ever named, with its settings and counters.
    queues: HashMap<Arc<str>, QueueState>,
    /// Limits of task types that have any.
    type_limits: HashMap<Arc<str>, Limiter>,
    /// The pass of the queue served last (stride scheduling).
    global_pass: u64,
    /// Scheduled tasks by the time they become ready.
    timers: BTreeSet<(Millis, TaskId)>,
    /// Running tasks by the time their attempt times out.
    deadlines: BTreeSet<(Millis, TaskId)>,
    /// Workers without credit by the time their oldest uncollected
    /// assignment must be collected (see `Config::collect_ms`); entries of
    /// workers gone or caught up are skipped when they come up.
    collect_checks: BTreeSet<(Millis, WorkerId)>,
    /// Live parents and the tasks waiting for them.
    children: HashMap<TaskId, Vec<TaskId>>,
    /// Live tasks pinned to each worker (broadcast copies).
    pinned: HashMap<WorkerId, BTreeSet<TaskId>>,
    workers: BTreeMap<WorkerId, Worker>,
    by_type: HashMap<Arc<str>, TypeWorkers>,
    next_seq: u64,
    /// No lease can expire before this time; a lower bound recomputed by
    /// each scan so that most ticks skip the scan.
    lease_check_at: Millis,
    /// Free slots summed over every worker: when none is left, dispatch
    /// stops without looking at a lane.
    free_slots: u64,
    events: Vec<Event>,
}

impl<B> Scheduler<B> {
    /// An empty scheduler. `seed` drives worker ids and retry jitter.
    pub fn new(config: Config, seed: u64) -> Self {
        Scheduler {
            config,
            rng: SplitMix64::new(seed),
            tasks: TaskTable::new(),
            ready: HashMap::new(),
            queues: HashMap::new(),
            type_limits: HashMap::new(),
            global_pass: 0,
            timers: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            collect_checks: BTreeSet::new(),
            children: HashMap::new(),
            pinned: HashMap::new(),
            workers: BTreeMap::new(),
            by_type: HashMap::new(),
            next_seq: 0,
            lease_check_at: Millis::MAX,
            free_slots: 0,
            events: Vec::new(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---- inputs: tasks ------------------------------------------------

    /// Admits a newly submitted task. It is `Scheduled` when `spec.run_at`
    /// is in the future, `Queued` otherwise. No event: the caller persisted
    /// the task before handing it over.
    pub fn submit(
        &mut self,
        id: TaskId,
        spec: TaskSpec,
        body: B,
        now: Millis,
    ) -> Result<(), CoreError> {
        self.restore(id, spec, body, 0, None, now)
    }

    /// Admits a task read back from the store after a restart, with the
    /// attempts it already used. A task that was running when the scheduler
    /// stopped must be passed with that interrupted attempt not counted.
    pub fn restore(
        &mut self,
        id: TaskId,
        mut spec: TaskSpec,
        body: B,
        attempts: u32,
        last_error: Option<String>,
        now: Millis,
    ) -> Result<(), CoreError> {
        if self.tasks.contains_key(&id) {
            return Err(CoreError::DuplicateTask(id));
        }
        self.intern(&mut spec);
        let seq = self.next_seq;
        self.next_seq += 1;
        let ready_at = spec.run_at.filter(|&t| t > now);
        let task = Task {
            id,
            spec,
            body,
            state: TaskState::Queued,
            attempts,
            worker: None,
            started_at: None,
            ready_at: None,
            last_error: last_error.map(String::into_boxed_str),
            waiting_on: 0,
            deadline: None,
            seq,
            rank: 0,
        };
        let queue = task.spec.queue.clone();
        if let Some(w) = task.spec.pinned {
            self.pinned.entry(w).or_default().insert(id);
        }
        self.tasks.insert(Box::new(task));
        self.queue_mut(&queue).live += 1;
        match ready_at {
            Some(at) => self.make_scheduled(id, at),
            None => self.make_queued(id, now),
        }
        // A copy for a worker that is already gone can never run.
        if let Some(w) = self.tasks[&id].spec.pinned
            && !self.workers.contains_key(&w)
        {
            self.unindex(id);
            self.finish(
                id,
                TaskState::Dead,
                Some(format!("worker {w} is gone")),
                now,
            );
        }
        Ok(())
    }

    /// A worker finished a task successfully.
    pub fn complete(
        &mut self,
        task: TaskId,
        worker: WorkerId,
        now: Millis,
    ) -> Result<(), CoreError> {
        self.end_attempt(task, worker, true, now)?;
        self.finish(task, TaskState::Succeeded, None, now);
        Ok(())
    }

    /// A worker reports a failed attempt. The task is retried after
    /// `retry_after_ms` (or the task's backoff) unless `abort` is set or its
    /// attempts are exhausted, in which case it is `Dead`.
    pub fn fail(
        &mut self,
        task: TaskId,
        worker: WorkerId,
        error: String,
        retry_after_ms: Option<u64>,
        abort: bool,
        now: Millis,
    ) -> Result<(), CoreError> {
        self.end_attempt(task, worker, false, now)?;
        self.attempt_failed(task, error, retry_after_ms, abort, now);
        Ok(())
    }

    /// Holds a task just admitted by `submit` or `restore` until every one
    /// of `parents` has succeeded; it is cancelled if one ends otherwise.
    ///
    /// Returns the parents the core does not hold (they already ended): the
    /// caller must look up how each ended and report it with
    /// [`Scheduler::parent_ended`].
    pub fn hold_for_parents(
        &mut self,
        task: TaskId,
        parents: &[TaskId],
    ) -> Result<Vec<TaskId>, CoreError> {
        let t = self.tasks.get(&task).ok_or(CoreError::UnknownTask(task))?;
        if t.worker.is_some() {
            return Err(CoreError::UnknownTask(task));
        }
        let mut parents: Vec<TaskId> = parents.iter().copied().filter(|p| *p != task).collect();
        parents.sort();
        parents.dedup();
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        self.unindex(task);
        let t = self.tasks.get_mut(&task).expect("checked above");
        t.state = TaskState::Scheduled;
        t.waiting_on = parents.len() as u32;
        let mut ended = Vec::new();
        for p in parents {
            if self.tasks.contains_key(&p) {
                self.children.entry(p).or_default().push(task);
            } else {
                ended.push(p);
            }
        }
        Ok(ended)
    }

    /// Reports how a parent the core does not hold ended (see
    /// [`Scheduler::hold_for_parents`]).
    pub fn parent_ended(&mut self, task: TaskId, parent: TaskId, state: TaskState, now: Millis) {
        if let Some(ended) = self.settle_parent(task, parent, state, now) {
            self.cascade(vec![ended], now);
        }
    }

    /// Cancels a live task. A running task's worker is told through
    /// [`Scheduler::heartbeat`]; its slot is freed at once. A task assigned
    /// to a worker that has not collected it is simply taken back.
    pub fn cancel(&mut self, task: TaskId, reason: String, now: Millis) -> Result<(), CoreError> {
        let t = self.tasks.get(&task).ok_or(CoreError::UnknownTask(task))?;
        if let Some(worker) = t.worker {
            let undelivered = self.release(task);
            if undelivered {
                self.tasks.get_mut(&task).expect("live").worker = None;
            } else if let Some(w) = self.workers.get_mut(&worker) {
                notify_stop(w, task);
                self.events.push(Event::Stop { worker, task });
            }
        } else {
            self.unindex(task);
        }
        self.finish(task, TaskState::Cancelled, Some(reason), now);
        Ok(())
    }

    // ---- inputs: workers ----------------------------------------------

    /// Registers a worker; it can receive tasks at the next `tick`.
    pub fn register_worker(&mut self, mut spec: WorkerSpec, now: Millis) -> WorkerId {
        spec.types.sort();
        spec.types.dedup();
        let id = loop {
            if let Some(id) = WorkerId::new(self.rng.next_u64())
                && !self.workers.contains_key(&id)
            {
                break id;
            }
        };
        for kind in &spec.types {
            let tw = self.by_type.entry(kind.clone()).or_default();
            tw.position.insert(id, tw.workers.len());
            tw.hashed.clear();
            tw.workers
                .push(Candidate::new(id, spec.capacity, spec.weight));
            tw.free += u64::from(spec.capacity);
        }
        self.free_slots += u64::from(spec.capacity);
        self.workers.insert(
            id,
            Worker {
                id,
                spec,
                state: WorkerState::Active,
                registered_at: now,
                last_seen_at: now,
                running: BTreeSet::new(),
                undelivered: Default::default(),
                demand: None,
                stalled: false,
                collect_by: None,
                cancel_notices: Vec::new(),
                completed: 0,
                failed: 0,
            },
        );
        self.lease_check_at = self
            .lease_check_at
            .min(now.saturating_add(self.config.lease_ms));
        id
    }

    /// Renews a worker's lease and returns the running tasks it must stop:
    /// every notice is repeated until the worker reports that task (a
    /// report answered "not leased" counts) or goes, so a lost reply loses
    /// nothing.
    pub fn heartbeat(&mut self, worker: WorkerId, now: Millis) -> Result<Vec<TaskId>, CoreError> {
        let w = self
            .workers
            .get_mut(&worker)
            .ok_or(CoreError::UnknownWorker(worker))?;
        w.last_seen_at = w.last_seen_at.max(now);
        Ok(w.cancel_notices.clone())
    }

    /// The worker reported on `task` (even too late, refused as not
    /// leased): it has heard of any stop notice for it, which is no longer
    /// repeated.
    pub fn stop_heard(&mut self, worker: WorkerId, task: TaskId) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.cancel_notices.retain(|&t| t != task);
        }
    }

    /// Renews a worker's lease and hands over up to `max` of the tasks
    /// assigned to it, oldest assignment first: each becomes `Running`, its
    /// attempt is counted and its clock starts now (a `Running` transition
    /// each).
    pub fn poll(
        &mut self,
        worker: WorkerId,
        max: usize,
        now: Millis,
    ) -> Result<Vec<TaskId>, CoreError> {
        let w = self
            .workers
            .get_mut(&worker)
            .ok_or(CoreError::UnknownWorker(worker))?;
        w.last_seen_at = w.last_seen_at.max(now);
        let n = max.min(w.undelivered.len());
        let handed: Vec<TaskId> = w.undelivered.drain(..n).map(|(t, _)| t).collect();
        // A stop notice is about an earlier attempt: not this one.
        if !w.cancel_notices.is_empty() {
            w.cancel_notices.retain(|t| !handed.contains(t));
        }
        if w.stalled {
            // It polls again: it takes tasks again.
            self.change_worker(worker, |w| w.stalled = false);
        }
        for &id in &handed {
            self.collect(id, now);
        }
        self.unwatch_if_caught_up(worker);
        Ok(handed)
    }

    /// Adds to the credit a worker granted (a stream's), up to its
    /// capacity. From its first grant on, a worker is given tasks only
    /// against its credit; `offer(w, 0)` makes it a credit worker with none.
    pub fn offer(&mut self, worker: WorkerId, slots: u32, now: Millis) -> Result<(), CoreError> {
        self.change_worker(worker, |w| {
            w.last_seen_at = w.last_seen_at.max(now);
            let asked = w.demand.unwrap_or(0).saturating_add(slots);
            w.demand = Some(asked.min(w.spec.capacity));
        })
        .ok_or(CoreError::UnknownWorker(worker))
    }

    /// The worker asks for nothing more for now: the tasks assigned to it
    /// that it has not collected go back to their queues, in their old
    /// places, with no attempt counted, and it is given nothing until it
    /// polls again (or, a credit worker, grants credit again). Returns how
    /// many went back.
    pub fn withdraw(&mut self, worker: WorkerId) -> Result<usize, CoreError> {
        let returned = self
            .change_worker(worker, |w| {
                match &mut w.demand {
                    Some(d) => *d = 0,
                    None => w.stalled = true,
                }
                let returned: Vec<TaskId> = w.undelivered.drain(..).map(|(t, _)| t).collect();
                for t in &returned {
                    w.running.remove(t);
                }
                returned
            })
            .ok_or(CoreError::UnknownWorker(worker))?;
        self.unwatch_if_caught_up(worker);
        for &task in &returned {
            self.attempt_ended(task);
            self.put_back(task);
        }
        Ok(returned.len())
    }

    /// A worker leaves gracefully; its tasks go back to the queue without
    /// counting the interrupted attempts.
    pub fn deregister(&mut self, worker: WorkerId, now: Millis) -> Result<(), CoreError> {
        if !self.workers.contains_key(&worker) {
            return Err(CoreError::UnknownWorker(worker));
        }
        self.remove_worker(worker, Interruption::Returned, now);
        Ok(())
    }

    /// Sets a queue's weight and limits (creating it if needed).
    pub fn configure_queue(&mut self, name: &str, config: QueueConfig) {
        let q = self.queue_mut(&Arc::from(name));
        q.limiter.reconfigure(Limiter::new(
            config.max_running,
            config.rate_per_sec,
            config.burst,
        ));
        q.config = config;
    }

    /// Sets a task type's limits.
    pub fn configure_type(&mut self, kind: &str, config: TypeConfig) {
        let fresh = Limiter::new(config.max_running, config.rate_per_sec, config.burst);
        if let Some(l) = self.type_limits.get_mut(kind) {
            l.reconfigure(fresh);
            return;
        }
        // A type's first limits count the attempts already running.
        let mut l = fresh;
        l.running = self
            .tasks
            .values()
            .filter(|t| t.worker.is_some() && &*t.spec.kind == kind)
            .count() as u32;
        self.type_limits.insert(Arc::from(kind), l);
    }

    /// Stops dispatching from a queue (creating it if needed); running
    /// tasks go on, new ones wait.
    pub fn pause_queue(&mut self, name: &str) {
        self.queue_mut(&Arc::from(name)).paused = true;
    }

    /// Resumes dispatching from a queue (creating it if needed).
    pub fn resume_queue(&mut self, name: &str) {
        self.queue_mut(&Arc::from(name)).paused = false;
    }

    /// Every queue ever named, by name, with its live counts.
    pub fn queues(&self) -> Vec<QueueInfo> {
        let mut out: Vec<QueueInfo> = self
            .queues
            .iter()
            .map(|(name, q)| {
                let (scheduled, queued, running) = q.counts();
                QueueInfo {
                    name: name.clone(),
                    paused: q.paused,
                    config: q.config.clone(),
                    scheduled,
                    queued,
                    running,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Declares a worker dead now, as if its lease had expired: its tasks
    /// are requeued at once and each interrupted attempt counts. For a
    /// transport that sees the worker go (a dropped stream).
    pub fn lose_worker(&mut self, worker: WorkerId, now: Millis) -> Result<(), CoreError> {
        if !self.workers.contains_key(&worker) {
            return Err(CoreError::UnknownWorker(worker));
        }
        self.remove_worker(worker, Interruption::WorkerLost, now);
        self.events.push(Event::WorkerLost { worker, at: now });
        Ok(())
    }

    /// Advances time: fires due timers, expires lapsed worker leases, then
    /// assigns ready tasks to workers with free slots.
    pub fn tick(&mut self, now: Millis) {
        self.fire_timers(now);
        self.expire_timeouts(now);
        self.expire_leases(now);
        self.expire_uncollected(now);
        self.dispatch(now);
    }

    /// The events produced since the last drain, in order.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    // ---- queries ------------------------------------------------------

    /// A live task.
    pub fn task(&self, id: TaskId) -> Option<&Task<B>> {
        self.tasks.get(&id)
    }

    /// Every live task, in no particular order.
    pub fn tasks(&self) -> impl Iterator<Item = &Task<B>> {
        self.tasks.values()
    }

    /// Number of live tasks.
    pub fn live_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// A registered worker.
    pub fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get(&id)
    }

    /// Every registered worker, by id.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// Tasks assigned to a worker and not yet collected by a poll.
    pub fn undelivered(&self, worker: WorkerId) -> usize {
        self.workers.get(&worker).map_or(0, |w| w.undelivered.len())
    }

    /// The earliest time at which `tick` has something to do without any
    /// other input (a timer or a lease check), if any.
    pub fn next_deadline(&self) -> Option<Millis> {
        let timer = self
            .timers
            .first()
            .into_iter()
            .chain(self.deadlines.first())
            .map(|&(at, _)| at)
            .chain(self.collect_checks.first().map(|&(at, _)| at))
            .min();
        let lease = (!self.workers.is_empty()).then_some(self.lease_check_at);
        // A rate-limited lane with ready tasks wakes up at its next token.
        let tokens = self
            .ready
            .iter()
            .flat_map(|(kind, lanes)| lanes.keys().map(move |queue| (kind, queue)))
            .filter_map(|(kind, queue)| {
                let q = self
                    .queues
                    .get(queue)
                    .and_then(|q| q.limiter.next_token_at());
                let t = self.type_limits.get(kind).and_then(Limiter::next_token_at);
                q.into_iter().chain(t).max()
            })
            .min();
        timer.into_iter().chain(lease).chain(tokens).min()
    }

    /// Checks the internal invariants; tests call it after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut leased = BTreeSet::new();
        for w in self.workers.values() {
            if w.in_flight() > w.spec.capacity {
                return Err(format!("worker {} over capacity", w.id));
            }
            for t in &w.running {
                let task = self
                    .tasks
                    .get(t)
                    .ok_or(format!("worker {} holds unknown task {t}", w.id))?;
                let collected = !w.undelivered.iter().any(|(u, _)| u == t);
                let state = if collected {
                    TaskState::Running
                } else {
                    TaskState::Queued
                };
                if task.state != state || task.worker != Some(w.id) {
                    return Err(format!(
                        "task {t} on worker {} is {:?}/{:?}",
                        w.id, task.state, task.worker
                    ));
                }
                if collected && (task.attempts == 0 || task.started_at.is_none()) {
                    return Err(format!("running task {t} has no attempt or start"));
                }
                if collected && task.spec.timeout_ms.is_some() != task.deadline.is_some() {
                    return Err(format!("running task {t} and its deadline disagree"));
                }
                if task.spec.pinned.is_some_and(|p| p != w.id) {
                    return Err(format!("task {t} pinned elsewhere runs on {}", w.id));
                }
                if task.spec.join {
                    return Err(format!("join {t} was given to worker {}", w.id));
                }
                if !w.has_labels(&task.spec.labels) {
                    return Err(format!("worker {} lacks the labels of task {t}", w.id));
                }
                if !w.handles(&task.spec.kind) {
                    return Err(format!(
                        "worker {} got type {} it did not register",
                        w.id, task.spec.kind
                    ));
                }
                if !leased.insert(*t) {
                    return Err(format!("task {t} leased twice"));
                }
            }
            for (t, _) in &w.undelivered {
                if !w.running.contains(t) {
                    return Err(format!("undelivered task {t} not held by {}", w.id));
                }
            }
            if let (Some((_, at)), None) = (w.undelivered.front(), w.demand) {
                let watched = w.collect_by.is_some_and(|by| {
                    by <= at.saturating_add(self.config.collect_ms)
                        && self.collect_checks.contains(&(by, w.id))
                });
                if !watched {
                    return Err(format!("uncollected tasks of {} are not watched", w.id));
                }
            }
            if w.demand.is_some_and(|d| d > w.spec.capacity) {
                return Err(format!("worker {} asks for more than its capacity", w.id));
            }
        }
        let mut queued = 0;
        let mut scheduled = 0;
        for t in self.tasks.values() {
            match t.state {
                TaskState::Running if !leased.contains(&t.id) => {
                    return Err(format!("running task {} held by no worker", t.id));
                }
                TaskState::Queued if t.worker.is_some() && !leased.contains(&t.id) => {
                    return Err(format!("assigned task {} held by no worker", t.id));
                }
                TaskState::Queued if t.worker.is_some() => {}
                TaskState::Queued => {
                    queued += 1;
                    let key = (t.rank, t.seq, t.id);
                    if !self
                        .lane(&t.spec.kind, &t.spec.queue)
                        .is_some_and(|r| r.contains(&key))
                    {
                        return Err(format!("queued task {} not in the ready queue", t.id));
                    }
                }
                TaskState::Scheduled
                    if t.waiting_on > 0
                        && t.ready_at
                            .is_some_and(|at| self.timers.contains(&(at, t.id))) =>
                {
                    return Err(format!("task {} waits for parents and has a timer", t.id));
                }
                TaskState::Scheduled if t.waiting_on > 0 => {}
                TaskState::Scheduled => {
                    scheduled += 1;
                    let at = t
                        .ready_at
                        .ok_or(format!("scheduled task {} without time", t.id))?;
                    if !self.timers.contains(&(at, t.id)) {
                        return Err(format!("scheduled task {} has no timer", t.id));
                    }
                }
                s if s.is_terminal() => return Err(format!("terminal task {} still held", t.id)),
                _ => {}
            }
        }
        let mut per_queue: HashMap<&str, (usize, u32)> = HashMap::new();
        let mut per_type: HashMap<&str, u32> = HashMap::new();
        let mut live: HashMap<&str, (usize, usize)> = HashMap::new();
        // Limits count the tasks holding a slot, collected or not.
        for t in self.tasks.values() {
            let l = live.entry(&t.spec.queue).or_default();
            l.0 += 1;
            l.1 += usize::from(t.state == TaskState::Running);
            let e = per_queue.entry(&t.spec.queue).or_default();
            if t.worker.is_some() {
                e.1 += 1;
                *per_type.entry(&t.spec.kind).or_default() += 1;
            } else if t.state == TaskState::Queued {
                e.0 += 1;
            }
        }
        for name in live.keys() {
            if !self.queues.contains_key(*name) {
                return Err(format!("queue {name} of live tasks was forgotten"));
            }
        }
        for (name, q) in &self.queues {
            let (n, collected) = live.get(&**name).copied().unwrap_or_default();
            if q.live != n || q.collected != collected {
                return Err(format!(
                    "queue {name}: counted {} live / {} running, but {n} / {collected}",
                    q.live, q.collected
                ));
            }
            let (ready, running) = per_queue.get(&**name).copied().unwrap_or_default();
            if q.ready != ready || q.limiter.running != running {
                return Err(format!(
                    "queue {name}: counted {} ready / {} running, but {ready} / {running}",
                    q.ready, q.limiter.running
                ));
            }
            if let Some(max) = q.config.max_running
                && running > max
            {
                return Err(format!("queue {name} runs {running} > max {max}"));
            }
            q.limiter
                .check()
                .map_err(|e| format!("queue {name}: {e}"))?;
            if let Some(max) = q.config.max_per_key
                && let Some((key, n)) = q.by_key.iter().find(|(_, n)| **n > max)
            {
                return Err(format!(
                    "queue {name} runs {n} tasks of key {key}, over its max_per_key {max}"
                ));
            }
        }
        for (kind, l) in &self.type_limits {
            l.check().map_err(|e| format!("type {kind}: {e}"))?;
            let running = per_type.get(&**kind).copied().unwrap_or_default();
            if l.running != running || l.max_running.is_some_and(|m| running > m) {
                return Err(format!(
                    "type {kind}: limiter says {} running, really {running}",
                    l.running
                ));
            }
        }
        for &(at, id) in &self.deadlines {
            let ok = self
                .tasks
                .get(&id)
                .is_some_and(|t| t.state == TaskState::Running && t.deadline == Some(at));
            if !ok {
                return Err(format!(
                    "deadline of task {id} does not match a running attempt"
                ));
            }
        }
        let ready_len: usize = self
            .ready
            .values()
            .flat_map(HashMap::values)
            .map(BTreeSet::len)
            .sum();
        if ready_len != queued || self.timers.len() != scheduled {
            return Err(format!(
                "index sizes: ready {ready_len} vs {queued} queued, timers {} vs {scheduled} scheduled",
                self.timers.len()
            ));
        }
        let free: u64 = self
            .workers
            .values()
            .map(|w| u64::from(w.free_slots()))
            .sum();
        if free != self.free_slots {
            return Err(format!(
                "free slots: counted {} but {free}",
                self.free_slots
            ));
        }
        for (kind, tw) in &self.by_type {
            for (i, c) in tw.workers.iter().enumerate() {
                let w = self
                    .workers
                    .get(&c.id)
                    .ok_or(format!("type {kind} routes to unknown worker {}", c.id))?;
                if c.in_flight != w.in_flight()
                    || c.capacity != w.spec.capacity
                    || c.demand != w.asks()
                {
                    return Err(format!(
                        "routing view of worker {} in {kind} is stale",
                        c.id
                    ));
                }
                if tw.position.get(&c.id) != Some(&i) || tw.position.len() != tw.workers.len() {
                    return Err(format!("position of worker {} in {kind} is wrong", c.id));
                }
            }
            for (key, &i) in &tw.hashed {
                if routing::rendezvous(&tw.workers, |_| true, key) != Some(i) {
                    return Err(format!(
                        "stale consistent_hash choice for key {key} in {kind}"
                    ));
                }
            }
            let free: u64 = tw
                .workers
                .iter()
                .map(|c| u64::from(self.workers[&c.id].free_slots()))
                .sum();
            if free != tw.free {
                return Err(format!(
                    "free slots of {kind}: counted {} but {free}",
                    tw.free
                ));
            }
        }
        Ok(())
    }

    // ---- internals ----------------------------------------------------

    fn check_lease(&self, task: TaskId, worker: WorkerId) -> Result<(), CoreError> {
        match self.tasks.get(&task) {
            Some(t) if t.state == TaskState::Running && t.worker == Some(worker) => Ok(()),
            _ => Err(CoreError::NotLeased { task, worker }),
        }
    }

    /// Decides what follows a failed attempt: a retry after `retry_after_ms`
    /// or the backoff, or `Dead` when aborted or out of attempts.
    fn attempt_failed(
        &mut self,
        task: TaskId,
        error: String,
        retry_after_ms: Option<u64>,
        abort: bool,
        now: Millis,
    ) {
        let t = &self.tasks[&task];
        if abort || t.attempts >= t.spec.max_attempts {
            self.finish(task, TaskState::Dead, Some(error), now);
        } else {
            let delay = retry_after_ms.unwrap_or_else(|| {
                let unit = self.rng.next_f64();
                t.spec.backoff.delay(t.attempts, unit)
            });
            self.retry(task, error, now.saturating_add(delay), now);
        }
    }

    /// Ends the attempt a worker reports on: checks the lease, renews the
    /// worker's own lease, frees the slot and counts the outcome.
    fn end_attempt(
        &mut self,
        task: TaskId,
        worker: WorkerId,
        succeeded: bool,
        now: Millis,
    ) -> Result<(), CoreError> {
        self.check_lease(task, worker)?;
        self.renew(worker, now);
        self.release(task);
        if let Some(w) = self.workers.get_mut(&worker) {
            if succeeded {
                w.completed += 1;
            } else {
                w.failed += 1;
            }
        }
        Ok(())
    }

    fn renew(&mut self, worker: WorkerId, now: Millis) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen_at = w.last_seen_at.max(now);
        }
    }

    /// Takes a task off the worker it was assigned to, freeing the slot.
    /// Returns true when the worker had not collected it yet.
    fn release(&mut self, task: TaskId) -> bool {
        self.clear_deadline(task);
        let Some(wid) = self.tasks.get(&task).and_then(|t| t.worker) else {
            return false;
        };
        let released = self.change_worker(wid, |w| {
            if !w.running.remove(&task) {
                return None;
            }
            let pos = w.undelivered.iter().position(|&(t, _)| t == task);
            Some(pos.and_then(|p| w.undelivered.remove(p)).is_some())
        });
        match released.flatten() {
            Some(undelivered) => {
                if !undelivered {
                    self.uncollect(task);
                }
                self.attempt_ended(task);
                self.unwatch_if_caught_up(wid);
                undelivered
            }
            None => false,
        }
    }

    /// A collected task leaves its worker: one fewer running in its queue.
    fn uncollect(&mut self, task: TaskId) {
        if let Some(q) = self
            .tasks
            .get(&task)
            .and_then(|t| self.queues.get_mut(&t.spec.queue))
        {
            q.collected -= 1;
        }
    }

    /// The waiting (scheduled and queued) live tasks of a queue, in
    /// constant time: what a queue's `max_depth` bounds.
    pub fn queue_depth(&self, name: &str) -> usize {
        self.queues.get(name).map_or(0, |q| {
            let (scheduled, queued, _) = q.counts();
            scheduled + queued
        })
    }

    /// Stops watching a worker's collections once it has none pending.
    fn unwatch_if_caught_up(&mut self, id: WorkerId) {
        if let Some(w) = self.workers.get_mut(&id)
            && w.undelivered.is_empty()
            && let Some(by) = w.collect_by.take()
        {
            self.collect_checks.remove(&(by, id));
        }
    }

    /// Applies a change to a worker's load or demand, keeping every count
    /// of free slots true; `None` for an unknown worker.
    fn change_worker<R>(
        &mut self,
        id: WorkerId,
        change: impl FnOnce(&mut Worker) -> R,
    ) -> Option<R> {
        let w = self.workers.get_mut(&id)?;
        let before = w.free_slots();
        let r = change(w);
        let w = &self.workers[&id];
        self.free_slots = self.free_slots + u64::from(w.free_slots()) - u64::from(before);
        for kind in &w.spec.types {
            if let Some(tw) = self.by_type.get_mut(kind) {
                tw.sync(w, before);
            }
        }
        Some(r)
    }

    /// A worker collects a task assigned to it: the attempt starts now.
    fn collect(&mut self, id: TaskId, now: Millis) {
        let t = self.tasks.get_mut(&id).expect("an assigned task is live");
        if let Some(q) = self.queues.get_mut(&t.spec.queue) {
            q.collected += 1;
        }
        t.state = TaskState::Running;
        t.attempts += 1;
        t.started_at = Some(now);
        t.last_error = None;
        // The attempt's clock starts when the worker has the task in hand.
        if let Some(timeout) = t.spec.timeout_ms {
            let at = now.saturating_add(timeout);
            t.deadline = Some(at);
            self.deadlines.insert((at, id));
        }
        self.emit(id, None);
    }

    fn clear_deadline(&mut self, task: TaskId) {
        if let Some(at) = self.tasks.get_mut(&task).and_then(|t| t.deadline.take()) {
            self.deadlines.remove(&(at, task));
        }
    }

    /// Removes a queued or scheduled task from its ready lane or timers.
    fn unindex(&mut self, task: TaskId) {
        let t = &self.tasks[&task];
        match t.state {
            TaskState::Queued => {
                let lane = (t.spec.kind.clone(), t.spec.queue.clone());
                let key = (t.rank, t.seq, task);
                self.remove_ready(&lane, key);
            }
            TaskState::Scheduled => {
                if let Some(at) = t.ready_at {
                    self.timers.remove(&(at, task));
                }
            }
            _ => {}
        }
    }

    /// Takes a key out of its lane, keeping the queue's count.
    fn remove_ready(&mut self, lane: &Lane, key: ReadyKey) {
        if let Some(lanes) = self.ready.get_mut(&lane.0)
            && let Some(r) = lanes.get_mut(&lane.1)
            && r.remove(&key)
        {
            if r.is_empty() {
                lanes.remove(&lane.1);
                if lanes.is_empty() {
                    self.ready.remove(&lane.0);
                }
            }
            if let Some(q) = self.queues.get_mut(&lane.1) {
                q.ready = q.ready.saturating_sub(1);
            }
        }
    }

    /// Makes the spec share the scheduler's copy of its queue name, and of
    /// its type name when a worker runs the type or tasks of it are queued,
    /// so that a million queued tasks do not hold a million copies of the
    /// same few strings.
    fn intern(&mut self, spec: &mut TaskSpec) {
        self.queue_mut(&spec.queue);
        if let Some((k, _)) = self.queues.get_key_value(&*spec.queue) {
            spec.queue = k.clone();
        }
        let kind = self
            .by_type
            .get_key_value(&*spec.kind)
            .map(|(k, _)| k)
            .or_else(|| self.ready.get_key_value(&*spec.kind).map(|(k, _)| k));
        if let Some(k) = kind {
            spec.kind = k.clone();
        }
    }

    /// The queue of that name, created with default settings when first
    /// named.
    fn queue_mut(&mut self, name: &Arc<str>) -> &mut QueueState {
        self.queues
            .entry(name.clone())
            .or_insert_with(|| QueueState::new(QueueConfig::default()))
    }

    fn make_queued(&mut self, id: TaskId, now: Millis) {
        let aging = self.config.aging_ms as i64;
        let t = self.tasks.get_mut(&id).expect("task is live");
        t.started_at = None;
        t.rank = (now as i64).saturating_sub(i64::from(t.spec.priority).saturating_mul(aging));
        self.put_back(id);
    }

    /// Puts a task into its ready lane at its current rank: a task assigned
    /// to a worker that never collected it goes back to where it was.
    fn put_back(&mut self, id: TaskId) {
        let t = self.tasks.get_mut(&id).expect("task is live");
        t.state = TaskState::Queued;
        t.worker = None;
        t.ready_at = None;
        let key = (t.rank, t.seq, id);
        let lane = (t.spec.kind.clone(), t.spec.queue.clone());
        let global = self.global_pass;
        let q = self.queue_mut(&lane.1);
        // A queue that wakes up starts at the current pass: it gets its
        // share from now on, not a burst for the time it was idle.
        if q.ready == 0 {
            q.pass = q.pass.max(global);
        }
        q.ready += 1;
        self.ready
            .entry(lane.0)
            .or_default()
            .entry(lane.1)
            .or_default()
            .insert(key);
    }

    fn make_scheduled(&mut self, id: TaskId, at: Millis) {
        let t = self.tasks.get_mut(&id).expect("task is live");
        t.state = TaskState::Scheduled;
        t.worker = None;
        t.started_at = None;
        t.ready_at = Some(at);
        self.timers.insert((at, id));
    }

    /// Requeues a task after a failed attempt, at once or after a delay.
    fn retry(&mut self, id: TaskId, error: String, at: Millis, now: Millis) {
        if let Some(t) = self.tasks.get_mut(&id) {
            t.last_error = Some(error.into_boxed_str());
        }
        if at > now {
            self.make_scheduled(id, at);
        } else {
            self.make_queued(id, now);
        }
        self.emit(id, None);
    }

    /// Moves a task to a terminal state and forgets it, then settles the
    /// tasks waiting for it.
    fn finish(&mut self, id: TaskId, state: TaskState, error: Option<String>, now: Millis) {
        if self.finish_one(id, state, error, now) {
            self.cascade(vec![(id, state)], now);
        }
    }

    /// Settles the children of ended parents, and theirs in turn when they
    /// are cancelled. A work list, not recursion: chains can be long.
    fn cascade(&mut self, mut ended: Vec<(TaskId, TaskState)>, now: Millis) {
        while let Some((parent, state)) = ended.pop() {
            for child in self.children.remove(&parent).unwrap_or_default() {
                ended.extend(self.settle_parent(child, parent, state, now));
            }
        }
    }

    /// One parent of a waiting task ended: one fewer to wait for when it
    /// succeeded, otherwise the task is cancelled (and returned, so that its
    /// own children are settled too).
    fn settle_parent(
        &mut self,
        task: TaskId,
        parent: TaskId,
        state: TaskState,
        now: Millis,
    ) -> Option<(TaskId, TaskState)> {
        let t = self.tasks.get_mut(&task)?;
        if t.waiting_on == 0 {
            return None;
        }
        if t.spec.join {
            // A join ends with its last child, or its first failed one.
            let done = if state == TaskState::Succeeded {
                t.waiting_on -= 1;
                (t.waiting_on == 0).then_some((TaskState::Succeeded, None))
            } else {
                t.waiting_on = 0;
                Some((
                    TaskState::Dead,
                    Some(format!("task {parent} ended {state}")),
                ))
            };
            let (end, error) = done?;
            return self
                .finish_one(task, end, error, now)
                .then_some((task, end));
        }
        if state == TaskState::Succeeded {
            t.waiting_on -= 1;
            if t.waiting_on == 0 {
                match t.ready_at.filter(|&at| at > now) {
                    Some(at) => self.make_scheduled(task, at),
                    None => self.make_queued(task, now),
                }
                self.emit(task, None);
            }
            None
        } else {
            t.waiting_on = 0;
            let reason = format!("parent task {parent} ended {state}");
            self.finish_one(task, TaskState::Cancelled, Some(reason), now)
                .then_some((task, TaskState::Cancelled))
        }
    }

    /// Moves one task to a terminal state and forgets it; false when the
    /// core does not hold it.
    fn finish_one(
        &mut self,
        id: TaskId,
        state: TaskState,
        error: Option<String>,
        now: Millis,
    ) -> bool {
        self.clear_deadline(id);
        let Some(mut t) = self.tasks.remove(&id) else {
            return false;
        };
        if let Some(q) = self.queues.get_mut(&t.spec.queue) {
            q.live -= 1;
            if q.is_idle() {
                self.queues.remove(&t.spec.queue);
            }
        }
        if let Some(w) = t.spec.pinned
            && let Some(set) = self.pinned.get_mut(&w)
        {
            set.remove(&id);
            if set.is_empty() {
                self.pinned.remove(&w);
            }
        }
        t.state = state;
        if let Some(e) = error {
            t.last_error = Some(e.into_boxed_str());
        }
        self.events.push(Event::Transition(Transition {
            task: id,
            state,
            attempts: t.attempts,
            worker: t.worker,
            started_at: t.started_at,
            finished_at: Some(now),
            ready_at: None,
            error: t.last_error.map(String::from),
        }));
        true
    }

    /// Records the current state of a live task as an event.
    fn emit(&mut self, id: TaskId, finished_at: Option<Millis>) {
        let t = &self.tasks[&id];
        self.events.push(Event::Transition(Transition {
            task: id,
            state: t.state,
            attempts: t.attempts,
            worker: t.worker,
            started_at: t.started_at,
            finished_at,
            ready_at: t.ready_at,
            error: t.last_error.as_deref().map(String::from),
        }));
    }

    fn fire_timers(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            self.make_queued(id, now);
            self.emit(id, None);
        }
    }

    /// Fails attempts past their `timeout_ms`: the worker is told to stop
    /// (as for a cancel), the slot is freed, and the task is retried or dead.
    fn expire_timeouts(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            let worker = self.tasks.get(&id).and_then(|t| t.worker);
            let limit = self.tasks.get(&id).and_then(|t| t.spec.timeout_ms);
            self.release(id);
            if let Some(w) = worker.and_then(|w| self.workers.get_mut(&w)) {
                notify_stop(w, id);
                self.events.push(Event::Stop {
                    worker: w.id,
                    task: id,
                });
                w.failed += 1;
            }
            let error = format!(
                "timeout after {} ms (the task's timeout_ms)",
                limit.unwrap_or_default()
            );
            self.attempt_failed(id, error, None, false, now);
        }
    }

    fn expire_leases(&mut self, now: Millis) {
        if now < self.lease_check_at {
            return;
        }
        let lease = self.config.lease_ms;
        let lapsed: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| w.last_seen_at.saturating_add(lease) <= now)
            .map(|w| w.id)
            .collect();
        // Out of routing all at once: a fleet expiring together costs one
        // pass over each type, not one per worker.
        self.detach(&lapsed);
        for id in lapsed {
            self.drop_worker(id, Interruption::WorkerLost, now);
            self.events.push(Event::WorkerLost {
                worker: id,
                at: now,
            });
        }
        self.lease_check_at = self
            .workers
            .values()
            .map(|w| w.last_seen_at.saturating_add(lease))
            .min()
            .unwrap_or(Millis::MAX);
    }

    /// Takes back what workers without credit left uncollected past
    /// `Config::collect_ms` (see there).
    fn expire_uncollected(&mut self, now: Millis) {
        let collect_ms = self.config.collect_ms;
        while let Some(&(at, id)) = self.collect_checks.first() {
            if at > now {
                break;
            }
            self.collect_checks.remove(&(at, id));
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            if w.collect_by != Some(at) {
                continue;
            }
            w.collect_by = None;
            let Some(&(_, oldest)) = w.undelivered.front() else {
                continue;
            };
            let by = oldest.saturating_add(collect_ms);
            if by > now {
                // It collected the older ones: watch the oldest left.
                w.collect_by = Some(by);
                self.collect_checks.insert((by, id));
                continue;
            }
            let n = self.withdraw(id).unwrap_or(0);
            self.events.push(Event::Uncollected {
                worker: id,
                tasks: n,
                at: now,
            });
        }
    }

    fn remove_worker(&mut self, id: WorkerId, why: Interruption, now: Millis) {
        self.detach(&[id]);
        self.drop_worker(id, why, now);
    }

    /// Takes workers out of routing (and their free slots out of the
    /// counts), in one pass over each type they run however many go.
    fn detach(&mut self, ids: &[WorkerId]) {
        let mut kinds: Vec<Arc<str>> = Vec::new();
        for id in ids {
            let Some(w) = self.workers.get(id) else {
                continue;
            };
            let free = u64::from(w.free_slots());
            self.free_slots -= free;
            for kind in &w.spec.types {
                if let Some(tw) = self.by_type.get_mut(kind) {
                    tw.free -= free;
                }
                kinds.push(kind.clone());
            }
        }
        kinds.sort();
        kinds.dedup();
        let gone: std::collections::HashSet<WorkerId> = ids.iter().copied().collect();
        for kind in kinds {
            let Some(tw) = self.by_type.get_mut(&kind) else {
                continue;
            };
            tw.workers.retain(|c| !gone.contains(&c.id));
            tw.hashed.clear();
            tw.position = tw
                .workers
                .iter()
                .enumerate()
                .map(|(i, c)| (c.id, i))
                .collect();
            if tw.workers.is_empty() {
                self.by_type.remove(&kind);
            }
        }
    }

    /// Forgets a worker already detached from routing, and requeues what it
    /// held.
    fn drop_worker(&mut self, id: WorkerId, why: Interruption, now: Millis) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        for task in w.running {
            self.clear_deadline(task);
            self.attempt_ended(task);
            let t = self.tasks.get_mut(&task).expect("running task is live");
            if t.state != TaskState::Running {
                // Assigned, never collected: nothing ran, nothing counts.
                self.put_back(task);
                continue;
            }
            self.uncollect(task);
            let t = self.tasks.get_mut(&task).expect("running task is live");
            match why {
                Interruption::Returned => {
                    t.attempts = t.attempts.saturating_sub(1);
                    self.make_queued(task, now);
                    self.emit(task, None);
                }
                Interruption::WorkerLost => {
                    let error = format!("worker {id} lost");
                    if t.attempts >= t.spec.max_attempts {
                        self.finish(task, TaskState::Dead, Some(error), now);
                    } else {
                        self.retry(task, error, now, now);
                    }
                }
            }
        }
        // Tasks only this worker could run can never run now.
        for task in self.pinned.remove(&id).unwrap_or_default() {
            if let Some(t) = self.tasks.get(&task)
                && t.worker.is_none()
            {
                self.unindex(task);
                self.finish(
                    task,
                    TaskState::Dead,
                    Some(format!("worker {id} is gone")),
                    now,
                );
            }
        }
    }

    /// Assigns ready tasks to workers with free slots.
    ///
    /// A frontier holds the head of every lane (type, queue) that may start
    /// a task now: a worker has a free slot for the type, the queue is not
    /// paused, and neither the queue's nor the type's limits are reached.
    /// It is ordered by the queue's stride pass, then the task's rank, so
    /// queues share workers by weight and tasks within a queue go by aged
    /// priority. The first task its strategy (and per-key limit) can place
    /// is assigned; a task that must wait for one particular worker is
    /// passed over, up to `SCAN_LIMIT` deep per lane, so it does not hold up
    /// the tasks behind it.
    ///
    /// The frontier is built once per call, not once per assignment: within
    /// one call assignments only use up slots, tokens and per-key room, so
    /// a lane that may not start, or a task that could not be placed, stays
    /// so until the call ends and need not be looked at again. Passes only
    /// grow, so an entry whose queue moved on since it was pushed is pushed
    /// back with the new pass when it comes up. The result is the same as
    /// rebuilding the frontier before every assignment (`dispatch_rebuilt`,
    /// which the tests compare it with).
    fn dispatch(&mut self, now: Millis) {
        self.refill_limits(now);
        if self.free_slots == 0 {
            return;
        }
        let mut frontier: BinaryHeap<Reverse<FrontierEntry>> = BinaryHeap::new();
        for (kind, lanes) in &self.ready {
            if !self.type_may_start(kind) {
                continue;
            }
            for (queue, keys) in lanes {
                let Some(q) = self.queues.get(queue) else {
                    continue;
                };
                if q.may_start()
                    && let Some(key) = keys.first()
                {
                    frontier.push(Reverse((q.pass, *key, 0, (kind.clone(), queue.clone()))));
                }
            }
        }
        while self.free_slots > 0
            && let Some(Reverse((pushed_pass, key, depth, lane))) = frontier.pop()
        {
            let pass = self.queues.get(&lane.1).map_or(0, |q| q.pass);
            if pass != pushed_pass {
                frontier.push(Reverse((pass, key, depth, lane)));
                continue;
            }
            if !self.lane_may_start(&lane) {
                continue;
            }
            let next = self.lane(&lane.0, &lane.1).and_then(|r| {
                r.range((Bound::Excluded(key), Bound::Unbounded))
                    .next()
                    .copied()
            });
            if self.key_allows(key.2)
                && let Some(worker) = self.route(key.2, &lane.0)
            {
                self.take_ready(&lane, key);
                self.assign(key.2, worker, now);
                // The task after it moves up to its place in the lane.
                if let Some(next) = next {
                    let pass = self.queues.get(&lane.1).map_or(0, |q| q.pass);
                    frontier.push(Reverse((pass, next, depth, lane)));
                }
            } else if depth + 1 < SCAN_LIMIT
                && let Some(next) = next
            {
                frontier.push(Reverse((pass, next, depth + 1, lane)));
            }
        }
    }

    /// The reference `dispatch`: rebuilds the frontier from every lane
    /// before each assignment. Slower, and obviously right.
    #[cfg(test)]
    pub(crate) fn dispatch_rebuilt(&mut self, now: Millis) {
        self.refill_limits(now);
        loop {
            let mut frontier: BinaryHeap<Reverse<(u64, ReadyKey, Lane, usize)>> = self
                .ready
                .iter()
                .flat_map(|(kind, lanes)| lanes.iter().map(move |(queue, r)| (kind, queue, r)))
                .map(|(kind, queue, r)| ((kind.clone(), queue.clone()), r))
                .filter(|(lane, _)| self.lane_may_start(lane))
                .filter_map(|(lane, r)| {
                    let pass = self.queues.get(&lane.1).map_or(0, |q| q.pass);
                    r.first().map(|key| Reverse((pass, *key, lane, 0)))
                })
                .collect();
            let mut placed = None;
            while let Some(Reverse((pass, key, lane, depth))) = frontier.pop() {
                if self.key_allows(key.2)
                    && let Some(worker) = self.route(key.2, &lane.0)
                {
                    placed = Some((key, lane, worker));
                    break;
                }
                if depth + 1 < SCAN_LIMIT
                    && let Some(next) = self
                        .lane(&lane.0, &lane.1)
                        .and_then(|r| r.range((Bound::Excluded(key), Bound::Unbounded)).next())
                {
                    frontier.push(Reverse((pass, *next, lane, depth + 1)));
                }
            }
            let Some((key, lane, worker)) = placed else {
                break;
            };
            self.take_ready(&lane, key);
            self.assign(key.2, worker, now);
        }
    }

    /// Like `tick`, with the reference dispatch.
    #[cfg(test)]
    pub(crate) fn tick_rebuilt(&mut self, now: Millis) {
        self.fire_timers(now);
        self.expire_timeouts(now);
        self.expire_leases(now);
        self.expire_uncollected(now);
        self.dispatch_rebuilt(now);
    }

    fn refill_limits(&mut self, now: Millis) {
        for q in self.queues.values_mut() {
            q.limiter.refill(now);
        }
        for l in self.type_limits.values_mut() {
            l.refill(now);
        }
    }

    /// Takes the task being assigned out of its lane and advances its
    /// queue's stride pass.
    fn take_ready(&mut self, lane: &Lane, key: ReadyKey) {
        self.remove_ready(lane, key);
        let q = self.queue_mut(&lane.1);
        let pass = q.pass;
        q.pass += q.stride();
        self.global_pass = self.global_pass.max(pass);
    }

    /// The queued tasks of one lane.
    fn lane(&self, kind: &str, queue: &str) -> Option<&BTreeSet<ReadyKey>> {
        self.ready.get(kind).and_then(|lanes| lanes.get(queue))
    }

    /// True when a task of this type may start now, as far as free slots
    /// and the type's limits go.
    fn type_may_start(&self, kind: &str) -> bool {
        self.by_type.get(kind).is_some_and(|tw| tw.free > 0)
            && self.type_limits.get(kind).is_none_or(Limiter::allows)
    }

    /// True when a task of this lane may start now, as far as free slots,
    /// pause and limits go.
    fn lane_may_start(&self, (kind, queue): &Lane) -> bool {
        self.type_may_start(kind) && self.queues.get(queue).is_none_or(QueueState::may_start)
    }

    /// True when the task's routing key is under its queue's per-key limit.
    fn key_allows(&self, task: TaskId) -> bool {
        let t = &self.tasks[&task];
        self.queues
            .get(&t.spec.queue)
            .is_none_or(|q| q.key_allows(t.spec.routing_key.as_ref()))
    }

    /// Counts an attempt against its queue, type and key limits.
    fn attempt_started(&mut self, task: TaskId) {
        let t = &self.tasks[&task];
        let (kind, queue, key) = (
            t.spec.kind.clone(),
            t.spec.queue.clone(),
            t.spec.routing_key.clone(),
        );
        let q = self.queue_mut(&queue);
        q.limiter.start();
        if let (Some(_), Some(k)) = (q.config.max_per_key, key) {
            *q.by_key.entry(k).or_insert(0) += 1;
        }
        if let Some(l) = self.type_limits.get_mut(&kind) {
            l.start();
        }
    }

    /// Releases what `attempt_started` counted.
    fn attempt_ended(&mut self, task: TaskId) {
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        if let Some(q) = self.queues.get_mut(&t.spec.queue) {
            q.limiter.end();
            if let Some(k) = &t.spec.routing_key
                && let Some(n) = q.by_key.get_mut(k)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    q.by_key.remove(k);
                }
            }
        }
        if let Some(l) = self.type_limits.get_mut(&t.spec.kind) {
            l.end();
        }
    }

    /// The worker `task` goes to now by its strategy, among the workers of
    /// its type that carry its labels; `None` when it must wait.
    fn route(&mut self, task: TaskId, kind: &str) -> Option<WorkerId> {
        let t = &self.tasks[&task];
        let tw = self.by_type.get_mut(kind)?;
        let workers = &self.workers;
        let spec = &t.spec;
        if spec.join {
            return None;
        }
        let fits =
            |c: &Candidate| spec.labels.is_empty() || workers[&c.id].has_labels(&spec.labels);
        // A pinned task has one candidate, whatever its strategy.
        if let Some(p) = spec.pinned {
            let c = &tw.workers[*tw.position.get(&p)?];
            return (c.free() > 0 && fits(c)).then_some(p);
        }
        let unless_full = |c: &Candidate| (c.free() > 0).then_some(c.id);
        match spec.strategy {
            Strategy::RoundRobin => {
                let n = tw.workers.len();
                let i = (0..n)
                    .map(|step| (tw.cursor + step) % n)
                    .find(|&i| tw.workers[i].free() > 0 && fits(&tw.workers[i]))?;
                tw.cursor = (i + 1) % n;
                Some(tw.workers[i].id)
            }
            // Only joins carry these, and joins never run on a worker.
            Strategy::Broadcast | Strategy::Sharding => None,
            Strategy::WeightedRoundRobin => routing::weighted_round_robin(&mut tw.workers, fits),
            Strategy::Random => routing::random(&tw.workers, fits, || self.rng.next_f64()),
            Strategy::LeastLoaded => routing::least_loaded(&tw.workers, fits),
            Strategy::ConsistentHash if spec.labels.is_empty() && spec.routing_key.is_some() => {
                let key = spec.routing_key.as_ref()?;
                let i = match tw.hashed.get(key) {
                    Some(&i) => i,
                    None => {
                        let i = routing::rendezvous(&tw.workers, |_| true, key)?;
                        if tw.hashed.len() >= HASH_CACHE_LIMIT {
                            tw.hashed.clear();
                        }
                        tw.hashed.insert(key.clone(), i);
                        i
                    }
                };
                unless_full(&tw.workers[i])
            }
            Strategy::ConsistentHash => {
                let fallback;
                let key: &str = match &spec.routing_key {
                    Some(k) => k,
                    None => {
                        fallback = task.to_string();
                        &fallback
                    }
                };
                routing::rendezvous(&tw.workers, fits, key)
                    .and_then(|i| unless_full(&tw.workers[i]))
            }
            // Registration order decides who is first.
            Strategy::Failover => tw.workers.iter().find(|c| fits(c)).and_then(unless_full),
        }
    }

    /// Gives a ready task (just taken out of its lane) to a worker: it
    /// holds a slot there and stays `Queued` until the worker collects it.
    fn assign(&mut self, task: TaskId, worker: WorkerId, now: Millis) {
        let collect_ms = self.config.collect_ms;
        let watch = self
            .change_worker(worker, |w| {
                w.running.insert(task);
                w.undelivered.push_back((task, now));
                match &mut w.demand {
                    Some(d) => *d = d.saturating_sub(1),
                    None if w.collect_by.is_none() => {
                        let by = now.saturating_add(collect_ms);
                        w.collect_by = Some(by);
                        return Some(by);
                    }
                    None => {}
                }
                None
            })
            .expect("routed to a live worker");
        if let Some(by) = watch {
            self.collect_checks.insert((by, worker));
        }
        self.attempt_started(task);
        let t = self.tasks.get_mut(&task).expect("ready task is live");
        t.worker = Some(worker);
        self.events.push(Event::Assigned { task, worker });
    }
}

/// Tells a worker to stop a task it collected, once: notices wait until the
/// worker reports the task, and a worker holds at most its capacity, so
/// older notices than twice that are about tasks it stopped long ago.
fn notify_stop(w: &mut Worker, task: TaskId) {
    if w.cancel_notices.contains(&task) {
        return;
    }
    let keep = 2 * w.spec.capacity.max(1) as usize;
    if w.cancel_notices.len() >= keep {
        w.cancel_notices.remove(0);
    }
    w.cancel_notices.push(task);
}
