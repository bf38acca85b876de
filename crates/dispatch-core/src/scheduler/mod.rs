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

mod dispatch;
mod events;
mod invariants;
mod lifecycle;
mod workers;

pub use events::{AttemptEnd, AttemptOutcome, CoreError, Event, Transition};
use workers::notify_stop;

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
    /// Tasks kept on their workers across a takeover
    /// ([`Scheduler::restore_running`]) that the worker has not yet said it
    /// holds, with the time they go back to their queues if it does not.
    unclaimed: BTreeSet<(Millis, TaskId)>,
    claim_by: HashMap<TaskId, Millis>,
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
    /// The attempt being ended, until the transition that ends it is
    /// emitted (see [`Scheduler::end_attempt_as`]).
    ending: Option<(TaskId, AttemptEnd)>,
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
            unclaimed: BTreeSet::new(),
            claim_by: HashMap::new(),
            children: HashMap::new(),
            pinned: HashMap::new(),
            workers: BTreeMap::new(),
            by_type: HashMap::new(),
            next_seq: 0,
            lease_check_at: Millis::MAX,
            free_slots: 0,
            ending: None,
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
            seq,
            rank: 0,
            handout: 0,
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

    /// Admits a task read back from the store that was running on `worker`
    /// when the previous scheduler stopped, still running there: a worker
    /// restored with [`Scheduler::restore_worker`] that has the task's type
    /// and a free slot. The attempt it was running stays counted (`attempts`
    /// as stored); its clock (timeout) restarts now. Refused, changing
    /// nothing, when the worker cannot hold it: the caller then restores it
    /// as an interrupted task.
    ///
    /// The worker must claim the task within a lease: report it, or name it
    /// among the tasks it holds ([`Scheduler::claim_running`]). Otherwise
    /// it never got it (the answer that handed it over was lost with the
    /// previous scheduler) and it goes back to its queue, no attempt
    /// counted.
    pub fn restore_running(
        &mut self,
        id: TaskId,
        spec: TaskSpec,
        body: B,
        attempts: u32,
        worker: WorkerId,
        now: Millis,
    ) -> Result<(), CoreError> {
        let fits = self.workers.get(&worker).is_some_and(|w| {
            w.state == WorkerState::Active
                && w.spec.types.iter().any(|t| **t == *spec.kind)
                && (w.running.len() as u64) < u64::from(w.spec.capacity)
                && spec.pinned.is_none_or(|p| p == worker)
        });
        if !fits {
            return Err(CoreError::WorkerCannotHold { task: id, worker });
        }
        if spec.join {
            return Err(CoreError::WorkerCannotHold { task: id, worker });
        }
        self.restore(id, spec, body, attempts.saturating_sub(1), None, now)?;
        if self.tasks[&id].state != TaskState::Queued {
            return Ok(());
        }
        self.unindex(id);
        self.change_worker(worker, |w| {
            w.running.insert(id);
            if let Some(d) = &mut w.demand {
                *d = d.saturating_sub(1);
            }
        });
        self.attempt_started(id);
        if let Some(t) = self.tasks.get_mut(&id) {
            t.worker = Some(worker);
        }
        self.collect(id, now);
        let by = now.saturating_add(self.config.lease_ms);
        self.unclaimed.insert((by, id));
        self.claim_by.insert(id, by);
        Ok(())
    }

    /// A worker names every task it holds (its heartbeat or poll after a
    /// takeover): the tasks kept on it that it names are claimed; those it
    /// does not name it never got, and they go back to their queues at
    /// once, no attempt counted. Does nothing for a worker with no task
    /// waiting for its claim.
    pub fn claim_running(&mut self, worker: WorkerId, held: &[TaskId], now: Millis) {
        if self.claim_by.is_empty() {
            return;
        }
        let Some(w) = self.workers.get(&worker) else {
            return;
        };
        let waiting: Vec<TaskId> = w
            .running
            .iter()
            .copied()
            .filter(|t| self.claim_by.contains_key(t))
            .collect();
        for t in waiting {
            self.forget_claim(t);
            if !held.contains(&t) {
                self.return_unclaimed(t, now);
            }
        }
    }

    /// Whether a task kept across a takeover still waits for its worker's
    /// claim.
    pub fn is_unclaimed(&self, task: TaskId) -> bool {
        self.claim_by.contains_key(&task)
    }

    /// A worker finished a task successfully.
    pub fn complete(
        &mut self,
        task: TaskId,
        worker: WorkerId,
        now: Millis,
    ) -> Result<(), CoreError> {
        self.end_attempt(task, worker, true, now)?;
        self.end_attempt_as(task, AttemptOutcome::Succeeded, now);
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
        self.end_attempt_as(task, AttemptOutcome::Failed, now);
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
            if t.state == TaskState::Running {
                self.end_attempt_as(task, AttemptOutcome::Cancelled, now);
            }
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

    /// Advances time: fires due timers, expires lapsed worker leases, then
    /// assigns ready tasks to workers with free slots.
    pub fn tick(&mut self, now: Millis) {
        self.fire_timers(now);
        self.expire_timeouts(now);
        self.expire_leases(now);
        self.expire_uncollected(now);
        self.expire_unclaimed(now);
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

    /// Number of registered workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
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
            .chain(self.unclaimed.first().map(|&(at, _)| at))
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

    /// The waiting (scheduled and queued) live tasks of a queue, in
    /// constant time: what a queue's `max_depth` bounds.
    pub fn queue_depth(&self, name: &str) -> usize {
        self.queues.get(name).map_or(0, |q| {
            let (scheduled, queued, _) = q.counts();
            scheduled + queued
        })
    }
}
