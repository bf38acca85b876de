//! The [`Scheduler`]: the state machine that decides which task runs where.
//!
//! Every public method is one input. Methods that change state append
//! [`Event`]s to an internal buffer that the caller drains with
//! [`Scheduler::drain_events`] and persists; `tick` fires timers, expires
//! worker leases and assigns ready tasks to workers with free slots.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::rng::SplitMix64;
use crate::routing::{self, Candidate};
use crate::{
    Millis, Strategy, Task, TaskId, TaskSpec, TaskState, Worker, WorkerId, WorkerSpec, WorkerState,
};

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// A worker that neither heartbeats, polls nor reports for this long is
    /// declared dead and its tasks are requeued.
    pub lease_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { lease_ms: 10_000 }
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
    /// The worker holding it when `Running`; for a terminal state reached
    /// from `Running` (success, failure, cancel), the worker that ran it.
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
    /// A task changed state. `Running` transitions are assignments: the
    /// task waits in the worker's delivery queue.
    Transition(Transition),
    /// A worker must stop a task it holds (cancelled, or its attempt timed
    /// out). The notice also waits in [`Scheduler::heartbeat`]'s reply.
    Stop {
        /// The worker.
        worker: WorkerId,
        /// The task to stop.
        task: TaskId,
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

/// Order of the ready queue: higher priority first, then submission order.
type ReadyKey = (Reverse<i8>, u64, TaskId);

/// The workers that run one task type, for routing.
#[derive(Debug, Default)]
struct TypeWorkers {
    /// In registration order; the round-robin ring.
    workers: Vec<WorkerId>,
    /// Where the next round-robin scan starts.
    cursor: usize,
    /// Free slots summed over `workers`, so that a type with nobody free is
    /// skipped without scanning.
    free: u64,
    /// Current weights of the smooth weighted round robin.
    current: HashMap<WorkerId, i64>,
}

/// How deep into one type's ready queue dispatch looks for a task it can
/// place when the ones ahead are waiting for a particular worker (by
/// `consistent_hash`, `failover` or labels). Bounds the work per decision.
const SCAN_LIMIT: usize = 64;

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
    tasks: HashMap<TaskId, Task<B>>,
    /// Queued tasks, per type.
    ready: HashMap<Arc<str>, BTreeSet<ReadyKey>>,
    /// Scheduled tasks by the time they become ready.
    timers: BTreeSet<(Millis, TaskId)>,
    /// Running tasks by the time their attempt times out.
    deadlines: BTreeSet<(Millis, TaskId)>,
    /// Live parents and the tasks waiting for them.
    children: HashMap<TaskId, Vec<TaskId>>,
    workers: BTreeMap<WorkerId, Worker>,
    by_type: HashMap<Arc<str>, TypeWorkers>,
    next_seq: u64,
    next_worker_order: u64,
    /// No lease can expire before this time; a lower bound recomputed by
    /// each scan so that most ticks skip the scan.
    lease_check_at: Millis,
    events: Vec<Event>,
}

impl<B> Scheduler<B> {
    /// An empty scheduler. `seed` drives worker ids and retry jitter.
    pub fn new(config: Config, seed: u64) -> Self {
        Scheduler {
            config,
            rng: SplitMix64::new(seed),
            tasks: HashMap::new(),
            ready: HashMap::new(),
            timers: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            children: HashMap::new(),
            workers: BTreeMap::new(),
            by_type: HashMap::new(),
            next_seq: 0,
            next_worker_order: 0,
            lease_check_at: Millis::MAX,
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
        spec: TaskSpec,
        body: B,
        attempts: u32,
        last_error: Option<String>,
        now: Millis,
    ) -> Result<(), CoreError> {
        if self.tasks.contains_key(&id) {
            return Err(CoreError::DuplicateTask(id));
        }
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
            last_error,
            waiting_on: 0,
            deadline: None,
            seq,
        };
        self.tasks.insert(id, task);
        match ready_at {
            Some(at) => self.make_scheduled(id, at),
            None => self.make_queued(id),
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
        if t.state == TaskState::Running {
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
    /// [`Scheduler::heartbeat`]; its slot is freed at once.
    pub fn cancel(&mut self, task: TaskId, reason: String, now: Millis) -> Result<(), CoreError> {
        let t = self.tasks.get(&task).ok_or(CoreError::UnknownTask(task))?;
        if t.state == TaskState::Running {
            let worker = t.worker;
            let undelivered = self.release(task);
            if let (Some(w), false) = (worker.and_then(|w| self.workers.get_mut(&w)), undelivered) {
                w.cancel_notices.push(task);
                self.events.push(Event::Stop { worker: w.id, task });
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
            let id = WorkerId(self.rng.next_u64());
            if !self.workers.contains_key(&id) {
                break id;
            }
        };
        for kind in &spec.types {
            let tw = self.by_type.entry(kind.clone()).or_default();
            tw.workers.push(id);
            tw.free += u64::from(spec.capacity);
        }
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
                cancel_notices: Vec::new(),
                completed: 0,
                failed: 0,
                order: self.next_worker_order,
            },
        );
        self.next_worker_order += 1;
        self.lease_check_at = self
            .lease_check_at
            .min(now.saturating_add(self.config.lease_ms));
        id
    }

    /// Renews a worker's lease and returns the running tasks it must stop.
    pub fn heartbeat(&mut self, worker: WorkerId, now: Millis) -> Result<Vec<TaskId>, CoreError> {
        let w = self
            .workers
            .get_mut(&worker)
            .ok_or(CoreError::UnknownWorker(worker))?;
        w.last_seen_at = w.last_seen_at.max(now);
        Ok(std::mem::take(&mut w.cancel_notices))
    }

    /// Renews a worker's lease and hands over up to `max` of the tasks
    /// assigned to it, oldest assignment first.
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
        let handed: Vec<TaskId> = w.undelivered.drain(..n).collect();
        // The attempt's clock starts when the worker has the task in hand.
        for id in &handed {
            if let Some(t) = self.tasks.get_mut(id)
                && let Some(timeout) = t.spec.timeout_ms
            {
                let at = now.saturating_add(timeout);
                t.deadline = Some(at);
                self.deadlines.insert((at, *id));
            }
        }
        Ok(handed)
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
            .min();
        let lease = (!self.workers.is_empty()).then_some(self.lease_check_at);
        timer.into_iter().chain(lease).min()
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
                if task.state != TaskState::Running || task.worker != Some(w.id) {
                    return Err(format!(
                        "task {t} on worker {} is {:?}/{:?}",
                        w.id, task.state, task.worker
                    ));
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
            for t in &w.undelivered {
                if !w.running.contains(t) {
                    return Err(format!("undelivered task {t} not running on {}", w.id));
                }
            }
        }
        let mut queued = 0;
        let mut scheduled = 0;
        for t in self.tasks.values() {
            match t.state {
                TaskState::Running if !leased.contains(&t.id) => {
                    return Err(format!("running task {} held by no worker", t.id));
                }
                TaskState::Queued => {
                    queued += 1;
                    let key = (Reverse(t.spec.priority), t.seq, t.id);
                    if !self
                        .ready
                        .get(&t.spec.kind)
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
        let ready_len: usize = self.ready.values().map(BTreeSet::len).sum();
        if ready_len != queued || self.timers.len() != scheduled {
            return Err(format!(
                "index sizes: ready {ready_len} vs {queued} queued, timers {} vs {scheduled} scheduled",
                self.timers.len()
            ));
        }
        for (kind, tw) in &self.by_type {
            let free: u64 = tw
                .workers
                .iter()
                .map(|w| u64::from(self.workers[w].free_slots()))
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

    /// Takes a running task off its worker, freeing the slot. Returns true
    /// when the worker had not collected it yet.
    fn release(&mut self, task: TaskId) -> bool {
        self.clear_deadline(task);
        let Some(wid) = self.tasks.get_mut(&task).and_then(|t| t.worker) else {
            return false;
        };
        let Some(w) = self.workers.get_mut(&wid) else {
            return false;
        };
        let mut undelivered = false;
        if w.running.remove(&task) {
            if let Some(pos) = w.undelivered.iter().position(|&t| t == task) {
                w.undelivered.remove(pos);
                undelivered = true;
            }
            for kind in &w.spec.types {
                if let Some(tw) = self.by_type.get_mut(kind) {
                    tw.free += 1;
                }
            }
        }
        undelivered
    }

    fn clear_deadline(&mut self, task: TaskId) {
        if let Some(at) = self.tasks.get_mut(&task).and_then(|t| t.deadline.take()) {
            self.deadlines.remove(&(at, task));
        }
    }

    /// Removes a queued or scheduled task from the ready queue or timers.
    fn unindex(&mut self, task: TaskId) {
        let t = &self.tasks[&task];
        match t.state {
            TaskState::Queued => {
                if let Some(r) = self.ready.get_mut(&t.spec.kind) {
                    r.remove(&(Reverse(t.spec.priority), t.seq, task));
                }
            }
            TaskState::Scheduled => {
                if let Some(at) = t.ready_at {
                    self.timers.remove(&(at, task));
                }
            }
            _ => {}
        }
    }

    fn make_queued(&mut self, id: TaskId) {
        let t = self.tasks.get_mut(&id).expect("task is live");
        t.state = TaskState::Queued;
        t.worker = None;
        t.ready_at = None;
        self.ready.entry(t.spec.kind.clone()).or_default().insert((
            Reverse(t.spec.priority),
            t.seq,
            id,
        ));
    }

    fn make_scheduled(&mut self, id: TaskId, at: Millis) {
        let t = self.tasks.get_mut(&id).expect("task is live");
        t.state = TaskState::Scheduled;
        t.worker = None;
        t.ready_at = Some(at);
        self.timers.insert((at, id));
    }

    /// Requeues a task after a failed attempt, at once or after a delay.
    fn retry(&mut self, id: TaskId, error: String, at: Millis, now: Millis) {
        if let Some(t) = self.tasks.get_mut(&id) {
            t.last_error = Some(error);
        }
        if at > now {
            self.make_scheduled(id, at);
        } else {
            self.make_queued(id);
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
        if state == TaskState::Succeeded {
            t.waiting_on -= 1;
            if t.waiting_on == 0 {
                match t.ready_at.filter(|&at| at > now) {
                    Some(at) => self.make_scheduled(task, at),
                    None => self.make_queued(task),
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
        t.state = state;
        if error.is_some() {
            t.last_error = error;
        }
        self.events.push(Event::Transition(Transition {
            task: id,
            state,
            attempts: t.attempts,
            worker: t.worker,
            started_at: t.started_at,
            finished_at: Some(now),
            ready_at: None,
            error: t.last_error,
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
            error: t.last_error.clone(),
        }));
    }

    fn fire_timers(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            self.make_queued(id);
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
            self.release(id);
            if let Some(w) = worker.and_then(|w| self.workers.get_mut(&w)) {
                w.cancel_notices.push(id);
                self.events.push(Event::Stop {
                    worker: w.id,
                    task: id,
                });
                w.failed += 1;
            }
            self.attempt_failed(id, "timeout".to_owned(), None, false, now);
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
        for id in lapsed {
            self.remove_worker(id, Interruption::WorkerLost, now);
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

    fn remove_worker(&mut self, id: WorkerId, why: Interruption, now: Millis) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        for kind in &w.spec.types {
            if let Some(tw) = self.by_type.get_mut(kind) {
                tw.workers.retain(|&x| x != id);
                tw.current.remove(&id);
                tw.free -= u64::from(w.free_slots());
                if tw.workers.is_empty() {
                    self.by_type.remove(kind);
                }
            }
        }
        for task in w.running {
            self.clear_deadline(task);
            let t = self.tasks.get_mut(&task).expect("running task is live");
            match why {
                Interruption::Returned => {
                    t.attempts = t.attempts.saturating_sub(1);
                    self.make_queued(task);
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
    }

    /// Assigns ready tasks, best first, to workers with free slots.
    ///
    /// Each round considers, across every type some worker has a free slot
    /// for, the ready tasks in global order (priority, then submission) and
    /// assigns the first one its strategy can place now. A task that must
    /// wait for one particular worker is passed over, up to `SCAN_LIMIT`
    /// deep per type, so it does not hold up the tasks behind it.
    fn dispatch(&mut self, now: Millis) {
        loop {
            let mut frontier: BinaryHeap<Reverse<(ReadyKey, Arc<str>, usize)>> = self
                .ready
                .iter()
                .filter(|(kind, _)| self.by_type.get(*kind).is_some_and(|tw| tw.free > 0))
                .filter_map(|(kind, r)| r.first().map(|key| Reverse((*key, kind.clone(), 0))))
                .collect();
            let mut placed = None;
            while let Some(Reverse((key, kind, depth))) = frontier.pop() {
                if let Some(worker) = self.route(key.2, &kind) {
                    placed = Some((key, kind, worker));
                    break;
                }
                if depth + 1 < SCAN_LIMIT
                    && let Some(next) = self.ready[&kind]
                        .range((Bound::Excluded(key), Bound::Unbounded))
                        .next()
                {
                    frontier.push(Reverse((*next, kind, depth + 1)));
                }
            }
            let Some((key, kind, worker)) = placed else {
                break;
            };
            let ready = self.ready.get_mut(&kind).expect("type has a ready queue");
            ready.remove(&key);
            if ready.is_empty() {
                self.ready.remove(&kind);
            }
            self.assign(key.2, worker, now);
        }
    }

    /// The worker `task` goes to now by its strategy, among the workers of
    /// its type that carry its labels; `None` when it must wait.
    fn route(&mut self, task: TaskId, kind: &str) -> Option<WorkerId> {
        let t = &self.tasks[&task];
        let tw = self.by_type.get_mut(kind)?;
        let workers = &self.workers;
        let fits = |w: &Worker| w.has_labels(&t.spec.labels);
        if t.spec.strategy == Strategy::RoundRobin {
            // The common case walks the ring without building candidates.
            let n = tw.workers.len();
            let i = (0..n).map(|step| (tw.cursor + step) % n).find(|&i| {
                let w = &workers[&tw.workers[i]];
                w.free_slots() > 0 && fits(w)
            })?;
            tw.cursor = (i + 1) % n;
            return Some(tw.workers[i]);
        }
        let cands: Vec<Candidate> = tw
            .workers
            .iter()
            .map(|id| &workers[id])
            .filter(|w| fits(w))
            .map(|w| Candidate {
                id: w.id,
                free: w.free_slots(),
                in_flight: w.in_flight(),
                capacity: w.spec.capacity,
                weight: w.spec.weight,
            })
            .collect();
        let unless_full = |c: Candidate| (c.free > 0).then_some(c.id);
        match t.spec.strategy {
            Strategy::RoundRobin => None,
            Strategy::WeightedRoundRobin => routing::weighted_round_robin(&cands, &mut tw.current),
            Strategy::Random => routing::random(&cands, self.rng.next_f64()),
            Strategy::LeastLoaded => routing::least_loaded(&cands),
            Strategy::ConsistentHash => {
                let key = t
                    .spec
                    .routing_key
                    .clone()
                    .unwrap_or_else(|| task.to_string().into());
                routing::rendezvous(&cands, &key).and_then(unless_full)
            }
            // Registration order decides who is first.
            Strategy::Failover => cands
                .iter()
                .min_by_key(|c| workers[&c.id].order)
                .copied()
                .and_then(unless_full),
        }
    }

    fn assign(&mut self, task: TaskId, worker: WorkerId, now: Millis) {
        let w = self
            .workers
            .get_mut(&worker)
            .expect("routed to a live worker");
        w.running.insert(task);
        w.undelivered.push_back(task);
        for kind in &w.spec.types {
            if let Some(tw) = self.by_type.get_mut(kind) {
                tw.free -= 1;
            }
        }
        let t = self.tasks.get_mut(&task).expect("ready task is live");
        t.state = TaskState::Running;
        t.attempts += 1;
        t.worker = Some(worker);
        t.started_at = Some(now);
        self.emit(task, None);
    }
}
