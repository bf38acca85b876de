//! A seeded simulation of a busy cluster: over a hundred workers with random
//! types, capacities and labels, thousands of tasks in weighted queues with
//! limits, crashes, graceful leaves, new workers, cancellations, failures,
//! pauses, pinned tasks and dependency chains, all on simulated time. And
//! the faults of the scheduler itself: restarts (the core is dropped and
//! restored from what the events persisted so far, as the server does at
//! start), a clock stepped back, and long pauses (time jumping forward past
//! every lease).
//!
//! Everything random comes from one seeded generator and the simulation only
//! iterates ordered maps, so a seed replays exactly. The suite runs a fixed
//! set of seeds and one that changes with every run; a failure prints its
//! seed and step; replay it with
//! `DISPATCH_SIM_SEED=<seed> cargo test -p dispatch-core --test simulation`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{self, AssertUnwindSafe};

use common::{Ledger, Registered, check_safety};
use dispatch_core::{
    Backoff, Config, CoreError, Event, Millis, QueueConfig, Scheduler, Strategy, TaskId, TaskSpec,
    TaskState, TypeConfig, WorkerId, WorkerSpec,
};

const TYPES: [&str; 5] = ["email", "resize", "pdf", "report", "webhook"];
const LEASE: u64 = 3_000;
/// Healthy workers heartbeat this often, well within the lease.
const HEARTBEAT_EVERY: u64 = 1_000;
const INITIAL_WORKERS: usize = 120;
/// Crashes and leaves stop when this few healthy workers remain.
const MIN_HEALTHY: usize = 100;
const TASKS: u64 = 2_000;
/// The main phase ends after this many steps even if not all were submitted.
const MAX_STEPS: usize = 20_000;
/// Drain-phase steps of `DRAIN_STEP_MS` allowed before we call it stuck.
const MAX_DRAIN_STEPS: usize = 5_000;
const DRAIN_STEP_MS: u64 = 100;
const DEFAULT_SEEDS: [u64; 3] = [1, 42, 0x5EED_CAFE];
/// Queues, with weights and limits set in `configure`.
const QUEUES: [&str; 3] = ["default", "bulk", "urgent"];
/// `bulk`'s per-key cap.
const BULK_PER_KEY: u32 = 2;
/// `bulk`'s cap on running attempts.
const BULK_MAX_RUNNING: u32 = 30;
/// Labels some workers carry and some tasks require.
const ZONES: [&str; 2] = ["a", "b"];

/// SplitMix64: tiny, good enough for a simulation, and fully ours so the
/// sequence never changes under us.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The simulation's view of one worker process.
struct SimWorker {
    /// Crashed workers do nothing more: they wait for their lease to expire.
    crashed: bool,
    /// What it registered with, to register again after a restart.
    types: Vec<&'static str>,
    zone: Option<&'static str>,
    next_heartbeat: Millis,
    capacity: u32,
    /// Tasks it polled and is running: when each will finish, and its
    /// failure rate read from the body it was handed.
    in_hand: BTreeMap<TaskId, (Millis, u64)>,
}

#[derive(Debug, Default)]
struct Stats {
    lost: usize,
    crashes: usize,
    leaves: usize,
    joins: usize,
    cancels: usize,
    stop_notices: usize,
    late_reports: usize,
    timeouts: usize,
    children: usize,
    restarts: usize,
    steps_back: usize,
    pauses: usize,
    pinned: usize,
    main_steps: usize,
    drain_steps: usize,
    max_queued: usize,
}

/// A task as the store holds it: what it was submitted with, updated by
/// every transition the core emitted (what the server persists).
#[derive(Clone, Debug)]
struct Stored {
    spec: TaskSpec,
    body: u64,
    parents: Vec<TaskId>,
    state: TaskState,
    attempts: u32,
    error: Option<String>,
}

struct Sim {
    step: usize,
    /// The store, as the events left it.
    stored: BTreeMap<TaskId, Stored>,
    /// Queues paused now.
    paused: BTreeSet<&'static str>,
    /// Set while time jumps past every lease: healthy workers may be lost.
    jumping: bool,
    /// The latest time the core was given (the clock may step back).
    latest: Millis,
    rng: Rng,
    /// The body is the task's failure rate in percent, read by the worker.
    s: Scheduler<u64>,
    now: Millis,
    workers: BTreeMap<WorkerId, SimWorker>,
    registered: Registered,
    next_task: u64,
    /// Tasks submitted with a `timeout_ms`: their attempts may be taken
    /// away (a stop notice, a refused report) without a cancellation.
    timed: std::collections::BTreeSet<TaskId>,
    ledger: Ledger,
    /// Every event, for the determinism check.
    log: Vec<Event>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let core_seed = rng.next_u64();
        let mut sim = Sim {
            step: 0,
            stored: BTreeMap::new(),
            paused: BTreeSet::new(),
            jumping: false,
            latest: 0,
            rng,
            s: Scheduler::new(
                Config {
                    lease_ms: LEASE,
                    ..Config::default()
                },
                core_seed,
            ),
            now: 1_700_000_000_000,
            workers: BTreeMap::new(),
            registered: Registered::new(),
            next_task: 1,
            timed: Default::default(),
            ledger: Ledger::default(),
            log: Vec::new(),
            stats: Stats::default(),
        };
        configure(&mut sim.s);
        for _ in 0..INITIAL_WORKERS {
            sim.join();
        }
        sim.stats.joins = 0;
        sim
    }

    /// Runs the whole scenario and returns the event log.
    fn run(&mut self) -> Vec<Event> {
        self.after_step();
        while self.next_task <= TASKS && self.step < MAX_STEPS {
            self.step += 1;
            self.random_step();
            self.after_step();
        }
        self.stats.main_steps = self.step;
        self.drain();
        self.stats.drain_steps = self.step - self.stats.main_steps;
        std::mem::take(&mut self.log)
    }

    fn random_step(&mut self) {
        match self.rng.below(100) {
            0..=34 => self.advance(1, 200),
            35..=59 => {
                let n = self.rng.between(1, 3);
                self.submit(n);
            }
            // A burst, so that queues build up and priorities matter.
            60 => {
                let n = self.rng.between(20, 80);
                self.submit(n);
            }
            61..=63 => self.crash(),
            64..=65 => self.leave(),
            66..=70 => self.join(),
            71..=75 => self.cancel(),
            76..=79 => match self.rng.below(10) {
                0 => self.restart(),
                1 => self.step_back(),
                2 => self.pause_the_scheduler(),
                3..=5 => self.toggle_pause(),
                _ => self.submit_pinned(),
            },
            _ => {
                // One worker acts between two ticks, without time passing.
                let healthy = self.healthy();
                if !healthy.is_empty() {
                    let w = self.rng.pick(&healthy);
                    self.act(w);
                }
            }
        }
    }

    /// No more submissions or trouble: one extra worker per type joins and
    /// time moves until every task is terminal.
    fn drain(&mut self) {
        for q in std::mem::take(&mut self.paused) {
            self.s.resume_queue(q);
        }
        for kind in TYPES {
            for zone in [None, Some(ZONES[0]), Some(ZONES[1])] {
                self.register(vec![kind], 8, zone);
            }
        }
        for _ in 0..MAX_DRAIN_STEPS {
            if self.ledger.live.is_empty() {
                return;
            }
            self.step += 1;
            self.advance(DRAIN_STEP_MS, DRAIN_STEP_MS);
            self.after_step();
        }
        panic!(
            "{} tasks still live after draining: {:?}",
            self.ledger.live.len(),
            self.ledger.live.iter().take(5).collect::<Vec<_>>()
        );
    }

    fn healthy(&self) -> Vec<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, w)| !w.crashed)
            .map(|(&id, _)| id)
            .collect()
    }

    // ---- the world's inputs ---------------------------------------------

    fn submit(&mut self, n: u64) {
        for _ in 0..n {
            if self.next_task > TASKS {
                return;
            }
            let id = TaskId(self.next_task);
            self.next_task += 1;
            let delayed = self.rng.chance(20);
            let timeout_ms = self.rng.chance(20).then(|| self.rng.between(300, 3_000));
            if timeout_ms.is_some() {
                self.timed.insert(id);
            }
            // Fan-out strategies are expanded by the shell, not routed.
            let routed: Vec<Strategy> = Strategy::ALL
                .into_iter()
                .filter(|s| !s.fans_out())
                .collect();
            let strategy = self.rng.pick(&routed);
            let queue = self.rng.pick(&QUEUES);
            let routing_key = (strategy == Strategy::ConsistentHash || queue == "bulk")
                .then(|| format!("key-{}", self.rng.below(20)).into());
            let labels = if self.rng.chance(10) {
                BTreeMap::from([("zone".to_owned(), self.rng.pick(&ZONES).to_owned())])
            } else {
                BTreeMap::new()
            };
            let spec = TaskSpec {
                strategy,
                routing_key,
                timeout_ms,
                priority: (self.rng.between(0, 200) as i64 - 100) as i8,
                max_attempts: self.rng.between(1, 4) as u32,
                run_at: delayed.then(|| self.now + self.rng.between(1, 5_000)),
                backoff: Backoff {
                    initial_ms: 200,
                    max_ms: 5_000,
                    multiplier: 2.0,
                },
                queue: queue.into(),
                labels,
                ..TaskSpec::new(self.rng.pick(&TYPES))
            };
            let fail_percent = if self.rng.chance(70) {
                self.rng.below(10)
            } else {
                self.rng.between(30, 70)
            };
            self.s
                .submit(id, spec.clone(), fail_percent, self.now)
                .unwrap();
            let delayed = spec.run_at.is_some();
            self.stored.insert(
                id,
                Stored {
                    spec,
                    body: fail_percent,
                    parents: Vec::new(),
                    state: if delayed {
                        TaskState::Scheduled
                    } else {
                        TaskState::Queued
                    },
                    attempts: 0,
                    error: None,
                },
            );
            // Some tasks wait for one or two earlier ones, live or ended;
            // some for the task just before them (chains).
            if id.0 > 10 && self.rng.chance(10) {
                let parents: Vec<TaskId> = if self.rng.chance(30) {
                    vec![TaskId(id.0 - 1)]
                } else {
                    (0..self.rng.between(1, 2))
                        .map(|_| TaskId(self.rng.between(id.0.saturating_sub(50).max(1), id.0 - 1)))
                        .collect()
                };
                if let Some(r) = self.stored.get_mut(&id) {
                    r.parents = parents.clone();
                    r.state = TaskState::Scheduled;
                }
                let ended = self.s.hold_for_parents(id, &parents).unwrap();
                for p in ended {
                    let st = self
                        .terminal_state(p)
                        .expect("a parent the core let go of ended");
                    self.s.parent_ended(id, p, st, self.now);
                }
                self.stats.children += 1;
                let start = self.s.task(id).map_or(TaskState::Scheduled, |t| t.state);
                self.ledger.submitted(id, start);
                // A child cancelled at once may be the next one's parent:
                // the ledger must know how it ended.
                self.after_step();
                continue;
            }
            let start = if delayed {
                TaskState::Scheduled
            } else {
                TaskState::Queued
            };
            self.ledger.submitted(id, start);
        }
    }

    fn register(&mut self, types: Vec<&'static str>, capacity: u32, zone: Option<&'static str>) {
        let mut spec = WorkerSpec::new("sim", types.iter().copied(), capacity);
        if let Some(z) = zone {
            spec.labels.insert("zone".into(), z.into());
        }
        let id = self.s.register_worker(spec, self.now);
        self.registered
            .insert(id, types.iter().map(|t| t.to_string()).collect());
        let worker = SimWorker {
            crashed: false,
            types,
            zone,
            next_heartbeat: self.now + HEARTBEAT_EVERY,
            capacity,
            in_hand: BTreeMap::new(),
        };
        assert!(
            self.workers.insert(id, worker).is_none(),
            "worker id {id} reused"
        );
    }

    fn join(&mut self) {
        let mut types: Vec<&'static str> = (0..self.rng.between(1, 3))
            .map(|_| self.rng.pick(&TYPES))
            .collect();
        types.sort();
        types.dedup();
        let capacity = self.rng.between(1, 8) as u32;
        let zone = self.rng.chance(50).then(|| self.rng.pick(&ZONES));
        self.register(types, capacity, zone);
        self.stats.joins += 1;
    }

    /// A worker dies silently: it keeps its lease until it expires.
    fn crash(&mut self) {
        let healthy = self.healthy();
        if healthy.len() > MIN_HEALTHY {
            let w = self.rng.pick(&healthy);
            self.workers.get_mut(&w).unwrap().crashed = true;
            self.stats.crashes += 1;
        }
    }

    /// A worker leaves gracefully, abandoning what it was running.
    fn leave(&mut self) {
        let healthy = self.healthy();
        if healthy.len() > MIN_HEALTHY {
            let w = self.rng.pick(&healthy);
            self.s.deregister(w, self.now).unwrap();
            self.workers.remove(&w);
            self.stats.leaves += 1;
        }
    }

    fn cancel(&mut self) {
        if self.next_task == 1 {
            return;
        }
        // Half the time a live task; otherwise any id, which is mostly a
        // terminal one by now and must be refused.
        let id = if self.rng.chance(50) && !self.ledger.live.is_empty() {
            let i = self.rng.below(self.ledger.live.len() as u64) as usize;
            *self.ledger.live.keys().nth(i).unwrap()
        } else {
            TaskId(self.rng.between(1, self.next_task - 1))
        };
        let live = self.ledger.live.contains_key(&id);
        match self.s.cancel(id, "client cancelled".into(), self.now) {
            Ok(()) => assert!(live, "cancelled {id}, which is terminal"),
            Err(e) => assert_eq!((live, e), (false, CoreError::UnknownTask(id))),
        }
        self.stats.cancels += usize::from(live);
    }

    /// Time passes; the scheduler ticks and every healthy worker acts.
    fn advance(&mut self, min_ms: u64, max_ms: u64) {
        self.now += self.rng.between(min_ms, max_ms);
        self.s.tick(self.now);
        for w in self.healthy() {
            self.act(w);
        }
    }

    /// The scheduler restarts: the core is dropped and a new one restored
    /// from the store, as the server does at start (an attempt that was
    /// running does not count; a task waiting for parents waits again, told
    /// how those that ended did). Every worker's registration is gone with
    /// it: live workers register again and abandon what they held.
    fn restart(&mut self) {
        self.after_step();
        self.stats.restarts += 1;
        let mut s = Scheduler::new(
            Config {
                lease_ms: LEASE,
                ..Config::default()
            },
            self.rng.next_u64(),
        );
        configure(&mut s);
        for q in &self.paused {
            s.pause_queue(q);
        }
        let live: Vec<TaskId> = self
            .stored
            .iter()
            .filter(|(_, r)| !r.state.is_terminal())
            .map(|(&id, _)| id)
            .collect();
        for id in live {
            let r = self.stored[&id].clone();
            let attempts = if r.state == TaskState::Running {
                r.attempts - 1
            } else {
                r.attempts
            };
            s.restore(
                id,
                r.spec.clone(),
                r.body,
                attempts,
                r.error.clone(),
                self.now,
            )
            .unwrap();
            if r.state == TaskState::Scheduled && !r.parents.is_empty() {
                for p in s.hold_for_parents(id, &r.parents).unwrap() {
                    let st = self.stored[&p].state;
                    assert!(
                        st.is_terminal(),
                        "parent {p} of {id} is {st:?} but not live"
                    );
                    s.parent_ended(id, p, st, self.now);
                }
            }
            // A task may end as it is restored (a copy pinned to a worker
            // that is gone): its end is written before the next is read.
            let events = s.drain_events();
            self.ledger.apply(&events).unwrap_or_else(|e| panic!("{e}"));
            self.persist(&events);
            self.log.extend(events);
        }
        self.s = s;
        let old = std::mem::take(&mut self.workers);
        self.registered.clear();
        for w in old.into_values().filter(|w| !w.crashed) {
            self.register(w.types, w.capacity, w.zone);
        }
        // What the restore changed is what the server writes back at start.
        let events = self.s.drain_events();
        self.ledger.apply(&events).unwrap_or_else(|e| panic!("{e}"));
        self.persist(&events);
        self.log.extend(events);
        for (id, state) in self.ledger.live.iter_mut() {
            let t = self.s.task(*id).expect("a live task was restored");
            *state = t.state;
            let r = self.stored.get_mut(id).expect("stored");
            r.state = t.state;
            r.attempts = t.attempts;
        }
    }

    /// The wall clock is stepped back: the core must neither stall nor
    /// fire a timer twice.
    fn step_back(&mut self) {
        self.stats.steps_back += 1;
        self.latest = self.latest.max(self.now);
        self.now -= self.rng.between(1, 2_000);
        self.s.tick(self.now);
    }

    /// The scheduler is paused (stopped, or its machine was) for longer
    /// than a lease: when it runs again, the leases that ran out while it
    /// was away expire, healthy workers' too, and they register again.
    fn pause_the_scheduler(&mut self) {
        self.stats.pauses += 1;
        self.now += self.rng.between(LEASE, 3 * LEASE);
        self.jumping = true;
        self.s.tick(self.now);
        self.after_step();
        self.jumping = false;
    }

    fn toggle_pause(&mut self) {
        let q = self.rng.pick(&QUEUES);
        if self.paused.remove(q) {
            self.s.resume_queue(q);
        } else {
            self.paused.insert(q);
            self.s.pause_queue(q);
        }
    }

    /// A task pinned to one live worker, as a broadcast copy is.
    fn submit_pinned(&mut self) {
        let healthy = self.healthy();
        if healthy.is_empty() || self.next_task > TASKS {
            return;
        }
        let w = self.rng.pick(&healthy);
        let id = TaskId(self.next_task);
        self.next_task += 1;
        let spec = TaskSpec {
            pinned: Some(w),
            ..TaskSpec::new(self.workers[&w].types[0])
        };
        self.s.submit(id, spec.clone(), 0, self.now).unwrap();
        self.stored.insert(
            id,
            Stored {
                spec,
                body: 0,
                parents: Vec::new(),
                state: TaskState::Queued,
                attempts: 0,
                error: None,
            },
        );
        self.ledger.submitted(id, TaskState::Queued);
        self.stats.pinned += 1;
    }

    /// Writes what the events say to the store model.
    fn persist(&mut self, events: &[Event]) {
        for e in events {
            if let Event::Transition(t) = e {
                let r = self.stored.get_mut(&t.task).expect("a stored task");
                r.state = t.state;
                r.attempts = t.attempts;
                r.error = t.error.clone();
                r.spec.run_at = t.ready_at;
            }
        }
    }

    // ---- a healthy worker's behaviour -------------------------------------

    /// Reports finished tasks, heartbeats when due, and polls for more.
    fn act(&mut self, id: WorkerId) {
        let now = self.now;
        let done: Vec<(TaskId, u64)> = self.workers[&id]
            .in_hand
            .iter()
            .filter(|&(_, &(at, _))| at <= now)
            .map(|(&t, &(_, fail_percent))| (t, fail_percent))
            .collect();
        for (t, fail_percent) in done {
            self.workers.get_mut(&id).unwrap().in_hand.remove(&t);
            self.report(id, t, fail_percent);
        }

        if self.workers[&id].next_heartbeat <= now {
            self.workers.get_mut(&id).unwrap().next_heartbeat = now + HEARTBEAT_EVERY;
            for t in self.s.heartbeat(id, now).unwrap() {
                // The task may still be in hand, or its report was refused.
                self.workers.get_mut(&id).unwrap().in_hand.remove(&t);
                assert!(
                    self.timed.contains(&t) || self.terminal_state(t) == Some(TaskState::Cancelled),
                    "stop notice for {t}"
                );
                self.stats.stop_notices += 1;
                if self.terminal_state(t) != Some(TaskState::Cancelled) {
                    self.stats.timeouts += 1;
                }
            }
        }

        let capacity = self.workers[&id].capacity as usize;
        for t in self.s.poll(id, capacity, now).unwrap() {
            let fail_percent = self.s.task(t).expect("a polled task is live").body;
            // Most tasks are quick, some take a while.
            let duration = if self.rng.chance(80) {
                self.rng.between(10, 500)
            } else {
                self.rng.between(500, 5_000)
            };
            let timed = self.timed.contains(&t);
            let w = self.workers.get_mut(&id).unwrap();
            // A timed-out attempt may come back to the same worker before
            // its stop notice did: the new attempt replaces the stale one.
            let stale = w.in_hand.insert(t, (now + duration, fail_percent));
            assert!(stale.is_none() || timed, "{t} handed to {id} twice");
            // A cancelled or timed-out attempt frees its slot at once,
            // before the worker hears of it, so only the tasks it still
            // holds count.
            let sched = &self.s;
            let held = w
                .in_hand
                .keys()
                .filter(|t| !self.ledger.terminal.contains_key(t))
                .filter(|t| {
                    !self.timed.contains(t) || sched.task(**t).is_some_and(|x| x.worker == Some(id))
                })
                .count();
            assert!(held <= capacity, "{id} was handed more than its capacity");
        }
    }

    /// Completes or fails a finished task, as its failure rate says.
    fn report(&mut self, worker: WorkerId, t: TaskId, fail_percent: u64) {
        let now = self.now;
        let result = if self.rng.chance(fail_percent) {
            let abort = self.rng.chance(5);
            let retry_after = self.rng.chance(30).then(|| self.rng.below(1_000));
            self.s.fail(
                t,
                worker,
                format!("error at {now}"),
                retry_after,
                abort,
                now,
            )
        } else {
            self.s.complete(t, worker, now)
        };
        match result {
            Ok(()) => {}
            // A healthy worker only loses a task it holds to a cancellation
            // whose stop notice it has not collected yet.
            Err(CoreError::NotLeased { .. }) => {
                assert!(
                    self.timed.contains(&t) || self.terminal_state(t) == Some(TaskState::Cancelled),
                    "report on {t} refused"
                );
                self.stats.late_reports += 1;
            }
            Err(e) => panic!("report on {t} by {worker}: {e}"),
        }
    }

    fn terminal_state(&self, t: TaskId) -> Option<TaskState> {
        self.ledger.terminal.get(&t).map(|tr| tr.state)
    }

    // ---- checks -------------------------------------------------------------

    /// Drains and checks the events, then checks every safety property.
    fn after_step(&mut self) {
        let events = self.s.drain_events();
        if let Err(e) = self.ledger.apply(&events) {
            panic!("{e}");
        }
        self.persist(&events);
        for e in &events {
            if let Event::Assigned { task, worker } = *e {
                let t = self.s.task(task).expect("an assigned task is live");
                assert!(
                    !self.paused.contains(&*t.spec.queue),
                    "{task} assigned from paused queue {}",
                    t.spec.queue
                );
                assert!(
                    t.spec.pinned.is_none_or(|p| p == worker),
                    "{task} pinned elsewhere went to {worker}"
                );
                assert!(
                    t.spec
                        .run_at
                        .is_none_or(|at| at <= self.now.max(self.latest)),
                    "{task} assigned before its time"
                );
            }
            if let Event::WorkerLost { worker, at } = *e {
                assert_eq!(at, self.now);
                let w = self
                    .workers
                    .remove(&worker)
                    .unwrap_or_else(|| panic!("lost unknown worker {worker}"));
                assert!(
                    w.crashed || self.jumping,
                    "healthy worker {worker} lost its lease"
                );
                if !w.crashed {
                    // Paused past its lease, the scheduler lost it: it
                    // registers again.
                    self.register(w.types.clone(), w.capacity, w.zone);
                }
                self.stats.lost += 1;
                // A zombie's report on a task it held is refused, unchanged.
                if let Some(&t) = w.in_hand.keys().next() {
                    let refused = self.s.complete(t, worker, self.now);
                    assert_eq!(refused, Err(CoreError::NotLeased { task: t, worker }));
                }
            }
        }
        self.log.extend(events);
        let queued = self
            .ledger
            .live
            .values()
            .filter(|&&st| st == TaskState::Queued)
            .count();
        self.stats.max_queued = self.stats.max_queued.max(queued);
        let bulk_running: usize = self
            .s
            .queues()
            .iter()
            .filter(|q| &*q.name == "bulk")
            .map(|q| q.running)
            .sum();
        assert!(
            bulk_running <= BULK_MAX_RUNNING as usize,
            "bulk runs {bulk_running}"
        );
        let mut per_key: BTreeMap<&str, u32> = BTreeMap::new();
        for t in self
            .s
            .tasks()
            .filter(|t| t.worker.is_some() && &*t.spec.queue == "bulk")
        {
            let n = per_key
                .entry(t.spec.routing_key.as_deref().unwrap_or(""))
                .or_default();
            *n += 1;
            assert!(
                *n <= BULK_PER_KEY,
                "bulk key {:?} over its cap",
                t.spec.routing_key
            );
        }
        let checks = [
            self.s.check_invariants(),
            check_safety(&self.s, &self.registered),
            self.ledger.check_against(&self.s),
        ];
        for c in checks {
            if let Err(e) = c {
                panic!("{e}");
            }
        }
    }
}

/// The queues' weights and limits, and a type with a rate limit, as the
/// server's config file sets them.
fn configure(s: &mut Scheduler<u64>) {
    s.configure_queue(
        "bulk",
        QueueConfig {
            weight: 1,
            max_running: Some(BULK_MAX_RUNNING),
            max_per_key: Some(BULK_PER_KEY),
            ..QueueConfig::default()
        },
    );
    s.configure_queue(
        "urgent",
        QueueConfig {
            weight: 4,
            ..QueueConfig::default()
        },
    );
    s.configure_type(
        "webhook",
        TypeConfig {
            rate_per_sec: Some(200.0),
            burst: Some(20),
            ..TypeConfig::default()
        },
    );
}

/// Runs one seed; any panic is reported with the seed and step to replay.
fn run_seed(seed: u64) -> (Vec<Event>, Ledger, Stats) {
    let mut sim = Sim::new(seed);
    match panic::catch_unwind(AssertUnwindSafe(|| sim.run())) {
        Ok(log) => (log, sim.ledger, sim.stats),
        Err(cause) => {
            let msg = cause
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| cause.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            panic!(
                "simulation failed at seed {seed}, step {} (t={}): {msg}\n\
                 replay with: DISPATCH_SIM_SEED={seed} cargo test -p dispatch-core --test simulation",
                sim.step, sim.now
            );
        }
    }
}

/// `DISPATCH_SIM_SEED` (decimal or 0x-hex) if set, else the default seeds
/// and one that changes with every run (printed with any failure).
fn seeds() -> Vec<u64> {
    let Ok(v) = std::env::var("DISPATCH_SIM_SEED") else {
        let rotating = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64);
        let mut seeds = DEFAULT_SEEDS.to_vec();
        seeds.push(rotating);
        return seeds;
    };
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    vec![parsed.unwrap_or_else(|e| panic!("bad DISPATCH_SIM_SEED {v:?}: {e}"))]
}

#[test]
fn every_task_reaches_exactly_one_terminal_state() {
    for seed in seeds() {
        let (log, ledger, stats) = run_seed(seed);
        let (succeeded, dead, cancelled) = ledger.tally();
        eprintln!(
            "seed {seed}: {} events, {succeeded} succeeded, {dead} dead, {cancelled} cancelled; {stats:?}",
            log.len()
        );
        // `Ledger::apply` already refused a second terminal transition.
        assert!(ledger.live.is_empty(), "seed {seed}");
        assert_eq!(ledger.terminal.len() as u64, TASKS, "seed {seed}");
        assert_eq!(succeeded + dead + cancelled, TASKS as usize, "seed {seed}");
        let terminal_events = log
            .iter()
            .filter(|e| matches!(e, Event::Transition(t) if t.state.is_terminal()))
            .count();
        assert_eq!(terminal_events, TASKS as usize, "seed {seed}");
        let ids: BTreeSet<TaskId> = ledger.terminal.keys().copied().collect();
        assert_eq!(ids, (1..=TASKS).map(TaskId).collect(), "seed {seed}");
        // The scenario must really have exercised the rough paths.
        assert!(succeeded > 0 && dead > 0 && cancelled > 0, "seed {seed}");
        assert!(
            stats.lost > 0
                && stats.leaves > 0
                && stats.joins > 0
                && stats.timeouts > 0
                && stats.children > 0
                && stats.restarts > 0
                && stats.steps_back > 0
                && stats.pauses > 0
                && stats.pinned > 0,
            "seed {seed}: {stats:?}"
        );
    }
}

/// Each `Scheduler` gets its own hash seed for its `HashMap`s, so this also
/// catches output that depends on hash-map iteration order.
#[test]
fn the_same_seed_replays_the_same_events() {
    let seed = seeds()[0];
    let (first, _, _) = run_seed(seed);
    let (second, _, _) = run_seed(seed);
    if let Some(i) = (0..first.len().min(second.len())).find(|&i| first[i] != second[i]) {
        panic!(
            "seed {seed}: event {i} differs:\n{:?}\n{:?}",
            first[i], second[i]
        );
    }
    assert_eq!(
        first.len(),
        second.len(),
        "seed {seed}: logs differ in length"
    );
}
