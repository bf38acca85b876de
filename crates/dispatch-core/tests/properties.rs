//! Property tests: random sequences of inputs never break the scheduler's
//! safety properties, and workers that do their job drain every task.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Ledger, Registered, cases, check_safety};
use dispatch_core::{
    Config, CoreError, Event, Millis, QueueConfig, Scheduler, Strategy as Route, TaskId, TaskSpec,
    TaskState, WorkerId, WorkerSpec,
};
use proptest::prelude::*;

const LEASE: u64 = 5_000;
const TYPES: [&str; 3] = ["email", "resize", "pdf"];
/// The queues inputs choose from, each with limits of its own (see
/// [`configure_queues`]).
const QUEUES: [&str; 3] = ["default", "bulk", "urgent"];
/// Every strategy the core routes by itself (broadcast and sharding are
/// expanded into pinned copies and joins by the shell).
const ROUTES: [Route; 6] = [
    Route::RoundRobin,
    Route::WeightedRoundRobin,
    Route::Random,
    Route::LeastLoaded,
    Route::ConsistentHash,
    Route::Failover,
];
/// Values of the `zone` label a task may require and a worker may carry.
const ZONES: [&str; 2] = ["a", "b"];

/// `bulk` runs two at a time and one per key; `urgent` weighs four times
/// `default` and starts at most five a second.
fn configure_queues<B>(s: &mut Scheduler<B>) {
    s.configure_queue(
        "bulk",
        QueueConfig {
            max_running: Some(2),
            max_per_key: Some(1),
            ..QueueConfig::default()
        },
    );
    s.configure_queue(
        "urgent",
        QueueConfig {
            weight: 4,
            rate_per_sec: Some(5.0),
            burst: Some(2),
            ..QueueConfig::default()
        },
    );
}

/// How a generated task is routed and limited, beyond its type.
#[derive(Clone, Debug)]
struct Shape {
    queue: usize,
    route: usize,
    /// The `zone` it requires, if any.
    zone: Option<usize>,
    timeout_ms: Option<u64>,
    /// Its routing key (hashing, per-key limits), if any.
    key: Option<u8>,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop_oneof![2 => Just(0usize), 1 => 1..QUEUES.len()],
        prop_oneof![2 => Just(0usize), 1 => 1..ROUTES.len()],
        proptest::option::weighted(0.25, 0..ZONES.len()),
        proptest::option::weighted(0.25, 200..3_000u64),
        proptest::option::weighted(0.5, 0u8..3),
    )
        .prop_map(|(queue, route, zone, timeout_ms, key)| Shape {
            queue,
            route,
            zone,
            timeout_ms,
            key,
        })
}

impl Shape {
    fn spec(&self, kind: &str) -> TaskSpec {
        TaskSpec {
            queue: QUEUES[self.queue].into(),
            strategy: ROUTES[self.route],
            labels: self
                .zone
                .map(|z| [("zone".to_string(), ZONES[z].to_string())].into())
                .unwrap_or_default(),
            timeout_ms: self.timeout_ms,
            routing_key: self.key.map(|k| format!("key-{k}").into()),
            ..TaskSpec::new(kind)
        }
    }
}

/// A worker spec: its types, capacity, `zone` label and weight.
fn worker_spec(types: u8, capacity: u32, zone: Option<usize>, weight: u32) -> WorkerSpec {
    let mut spec = WorkerSpec::new("w", type_names(types), capacity);
    if let Some(z) = zone {
        spec.labels.insert("zone".into(), ZONES[z].into());
    }
    spec.weight = weight;
    spec
}

/// One input to the scheduler. Worker and task choices are indices resolved
/// against the state at the time, so they stay meaningful while shrinking.
#[derive(Clone, Debug)]
enum Op {
    Submit {
        kind: usize,
        priority: i8,
        max_attempts: u32,
        delay_ms: u64,
        shape: Shape,
        /// Earlier submissions it waits for (indices, resolved at the time).
        parents: Vec<usize>,
    },
    /// A task read back from the store with some attempts already used.
    Restore {
        kind: usize,
        max_attempts: u32,
        used: u32,
    },
    Register {
        types: u8,
        capacity: u32,
        zone: Option<usize>,
        weight: u32,
    },
    Poll {
        worker: usize,
        max: usize,
    },
    Complete {
        worker: usize,
        task: usize,
    },
    Fail {
        worker: usize,
        task: usize,
        abort: bool,
        retry_after_ms: Option<u64>,
    },
    Heartbeat {
        worker: usize,
    },
    /// A stream's credit (`offer`), or a worker giving back what it has not
    /// collected (`withdraw`).
    Demand {
        worker: usize,
        slots: u32,
        how: u8,
    },
    Deregister {
        worker: usize,
    },
    /// A worker that crashed: its lease is given up at once.
    Lose {
        worker: usize,
    },
    /// A worker acknowledges poll answers up to `behind` before its last
    /// and names the tasks of `held` (a mask over what it runs).
    Reconcile {
        worker: usize,
        behind: u32,
        held: u64,
    },
    Pause {
        queue: usize,
    },
    Resume {
        queue: usize,
    },
    Cancel {
        task: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let delay = prop_oneof![3 => Just(0u64), 1 => 1..3_000u64];
    prop_oneof![
        4 => (
            (0..TYPES.len(), -100i8..=100, 1u32..=4, delay),
            shape(),
            prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(any::<usize>(), 1..3)],
        ).prop_map(
            |((kind, priority, max_attempts, delay_ms), shape, parents)| Op::Submit {
                kind, priority, max_attempts, delay_ms, shape, parents,
            }
        ),
        1 => (0..TYPES.len(), 1u32..=4, 0u32..4).prop_map(
            |(kind, max_attempts, used)| Op::Restore { kind, max_attempts, used: used % max_attempts }
        ),
        2 => (1u8..8, 1u32..=4, proptest::option::weighted(0.5, 0..ZONES.len()), 1u32..=3)
            .prop_map(|(types, capacity, zone, weight)| Op::Register { types, capacity, zone, weight }),
        3 => (any::<usize>(), 1usize..4).prop_map(|(worker, max)| Op::Poll { worker, max }),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(worker, task)| Op::Complete { worker, task }),
        2 => (any::<usize>(), any::<usize>(), any::<bool>(), proptest::option::of(0..2_000u64))
            .prop_map(|(worker, task, abort, retry_after_ms)| Op::Fail { worker, task, abort, retry_after_ms }),
        2 => any::<usize>().prop_map(|worker| Op::Heartbeat { worker }),
        2 => (any::<usize>(), 0u32..6, 0u8..3).prop_map(|(worker, slots, how)| Op::Demand { worker, slots, how }),
        1 => any::<usize>().prop_map(|worker| Op::Deregister { worker }),
        1 => any::<usize>().prop_map(|worker| Op::Lose { worker }),
        1 => (any::<usize>(), 0u32..3, any::<u64>())
            .prop_map(|(worker, behind, held)| Op::Reconcile { worker, behind, held }),
        1 => (0..QUEUES.len()).prop_map(|queue| Op::Pause { queue }),
        1 => (0..QUEUES.len()).prop_map(|queue| Op::Resume { queue }),
        2 => any::<usize>().prop_map(|task| Op::Cancel { task }),
        // Mostly small steps, sometimes a jump past the lease.
        3 => prop_oneof![6 => 0..1_000u64, 1 => LEASE..2 * LEASE].prop_map(|ms| Op::Advance { ms }),
    ]
}

fn type_names(mask: u8) -> Vec<&'static str> {
    TYPES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| *t)
        .collect()
}

/// The test's side of the conversation: what it registered and submitted,
/// and what the events said.
struct Model {
    s: Scheduler<()>,
    now: Millis,
    registered: Registered,
    submitted: Vec<TaskId>,
    ledger: Ledger,
    /// Each handed-over task with the worker and attempt it was handed for,
    /// to catch a poll handing the same assignment over twice.
    handed: BTreeMap<TaskId, (WorkerId, u32)>,
    /// Tasks submitted with a timeout.
    timed: BTreeSet<TaskId>,
}

impl Model {
    fn new(seed: u64) -> Self {
        let mut s = Scheduler::new(
            Config {
                lease_ms: LEASE,
                ..Config::default()
            },
            seed,
        );
        configure_queues(&mut s);
        Model {
            s,
            now: 0,
            registered: Registered::new(),
            submitted: Vec::new(),
            ledger: Ledger::default(),
            handed: BTreeMap::new(),
            timed: BTreeSet::new(),
        }
    }

    /// A registered worker, or now and then one that is not (as after a
    /// lost lease), to exercise the refusals.
    fn pick_worker(&self, i: usize) -> WorkerId {
        let live: Vec<WorkerId> = self.s.workers().map(|w| w.id).collect();
        if live.is_empty() || i.is_multiple_of(10) {
            return WorkerId::new(1).expect("not 0");
        }
        live[i / 10 % live.len()]
    }

    /// A task and the worker to report on it: mostly a real lease, now and
    /// then (or when nothing is leased) a pair that is most likely not one.
    /// The flag says whether it is a lease. `None` before any submission.
    fn pick_report(&self, worker: usize, task: usize) -> Option<(TaskId, WorkerId, bool)> {
        let leases: Vec<(TaskId, WorkerId)> = self
            .s
            .workers()
            .flat_map(|w| w.running.iter().map(move |&t| (t, w.id)))
            // Collected tasks only: an assigned one is not the worker's yet.
            .filter(|(t, _)| {
                self.s
                    .task(*t)
                    .is_some_and(|x| x.state == TaskState::Running)
            })
            .collect();
        if !leases.is_empty() && !task.is_multiple_of(10) {
            let (t, w) = leases[task / 10 % leases.len()];
            return Some((t, w, true));
        }
        let t = *self.submitted.get(task % self.submitted.len().max(1))?;
        let w = self.pick_worker(worker);
        let leased = self
            .s
            .task(t)
            .is_some_and(|x| x.state == TaskState::Running && x.worker == Some(w));
        Some((t, w, leased))
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.now;
        // A refused input must leave the scheduler exactly as it was.
        let before = format!("{:?}", self.s);
        let refused: Option<CoreError> = match *op {
            Op::Submit {
                kind,
                priority,
                max_attempts,
                delay_ms,
                ref shape,
                ref parents,
            } => {
                let id = TaskId(self.submitted.len() as u64 + 1);
                let spec = TaskSpec {
                    priority,
                    max_attempts,
                    run_at: Some(now + delay_ms),
                    ..shape.spec(TYPES[kind])
                };
                self.s.submit(id, spec, (), now).unwrap();
                let parents: Vec<TaskId> = parents
                    .iter()
                    .filter_map(|&i| self.submitted.get(i % self.submitted.len().max(1)))
                    .copied()
                    .collect();
                self.submitted.push(id);
                if shape.timeout_ms.is_some() {
                    self.timed.insert(id);
                }
                let start = if !parents.is_empty() || delay_ms > 0 {
                    TaskState::Scheduled
                } else {
                    TaskState::Queued
                };
                self.ledger.submitted(id, start);
                // Parents that already ended are told as the shell tells
                // them: with the state the store kept.
                for p in self.s.hold_for_parents(id, &parents).unwrap() {
                    let ended = self.ledger.terminal[&p].state;
                    self.s.parent_ended(id, p, ended, now);
                }
                None
            }
            Op::Restore {
                kind,
                max_attempts,
                used,
            } => {
                let id = TaskId(self.submitted.len() as u64 + 1);
                let spec = TaskSpec {
                    max_attempts,
                    ..TaskSpec::new(TYPES[kind])
                };
                let error = (used > 0).then(|| "before the restart".to_string());
                self.s.restore(id, spec, (), used, error, now).unwrap();
                prop_assert_eq!(self.s.task(id).unwrap().attempts, used);
                self.submitted.push(id);
                self.ledger.submitted(id, TaskState::Queued);
                None
            }
            Op::Register {
                types,
                capacity,
                zone,
                weight,
            } => {
                let names = type_names(types);
                let w = self
                    .s
                    .register_worker(worker_spec(types, capacity, zone, weight), now);
                self.registered
                    .insert(w, names.iter().map(|t| t.to_string()).collect());
                None
            }
            Op::Poll { worker, max } => {
                let w = self.pick_worker(worker);
                match self.s.poll(w, max, now) {
                    Ok(got) => {
                        prop_assert!(got.len() <= max, "poll returned {} > max {max}", got.len());
                        for t in got {
                            let task = self.s.task(t).expect("a handed-over task is live");
                            prop_assert_eq!(task.worker, Some(w));
                            let lease = (w, task.attempts);
                            prop_assert_ne!(
                                self.handed.insert(t, lease),
                                Some(lease),
                                "{} handed over twice",
                                t
                            );
                        }
                        None
                    }
                    Err(e) => Some(e),
                }
            }
            Op::Complete { worker, task } => {
                let Some((t, w, leased)) = self.pick_report(worker, task) else {
                    return Ok(());
                };
                let r = self.s.complete(t, w, now);
                prop_assert_eq!(r.is_ok(), leased, "complete {} by {}: {:?}", t, w, r);
                r.err()
            }
            Op::Fail {
                worker,
                task,
                abort,
                retry_after_ms,
            } => {
                let Some((t, w, leased)) = self.pick_report(worker, task) else {
                    return Ok(());
                };
                let r = self.s.fail(t, w, "boom".into(), retry_after_ms, abort, now);
                prop_assert_eq!(r.is_ok(), leased, "fail {} by {}: {:?}", t, w, r);
                r.err()
            }
            Op::Heartbeat { worker } => {
                let w = self.pick_worker(worker);
                match self.s.heartbeat(w, now) {
                    Ok(stop) => {
                        // Only attempts that ended without the worker are
                        // announced: cancelled, or past their timeout. The
                        // worker no longer holds them.
                        for t in stop {
                            let cancelled = self.ledger.terminal.get(&t).map(|tr| tr.state)
                                == Some(TaskState::Cancelled);
                            let timed = self.timed.contains(&t);
                            prop_assert!(cancelled || timed, "stop notice for {}", t);
                            // Assigned to it again is fine: collecting it
                            // again withdraws the notice.
                            let held = self.s.task(t).is_some_and(|x| {
                                x.worker == Some(w) && x.state == TaskState::Running
                            });
                            prop_assert!(!held, "stop notice for {} which {} runs again", t, w);
                        }
                        None
                    }
                    Err(e) => Some(e),
                }
            }
            Op::Demand { worker, slots, how } => {
                let w = self.pick_worker(worker);
                match how {
                    0 | 1 => self.s.offer(w, slots, now).err(),
                    _ => self.s.withdraw(w).err(),
                }
            }
            Op::Deregister { worker } => {
                let w = self.pick_worker(worker);
                self.s.deregister(w, now).err()
            }
            Op::Lose { worker } => {
                let w = self.pick_worker(worker);
                self.s.lose_worker(w, now).err()
            }
            Op::Reconcile {
                worker,
                behind,
                held,
            } => {
                let w = self.pick_worker(worker);
                let Some(wk) = self.s.worker(w) else {
                    return Ok(());
                };
                let seen = wk.handouts.saturating_sub(behind);
                let held: Vec<TaskId> = wk
                    .running
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| held & (1 << (i % 64)) != 0)
                    .map(|(_, t)| *t)
                    .collect();
                let before: Vec<TaskId> = wk.running.iter().copied().collect();
                self.s.reconcile(w, seen, &held, now);
                // A task given back may be handed to it again, same attempt.
                for t in before {
                    if self.s.task(t).is_none_or(|x| x.worker != Some(w)) {
                        self.handed.remove(&t);
                    }
                }
                // What it names, it keeps.
                for t in &held {
                    prop_assert!(
                        self.s.task(*t).is_some_and(|x| x.worker == Some(w)),
                        "{} named by {} was taken away",
                        t,
                        w
                    );
                }
                None
            }
            Op::Pause { queue } => {
                self.s.pause_queue(QUEUES[queue]);
                None
            }
            Op::Resume { queue } => {
                self.s.resume_queue(QUEUES[queue]);
                None
            }
            Op::Cancel { task } => {
                // Half the time a running task, the case with the most to undo.
                let pick = if task.is_multiple_of(2) {
                    self.pick_report(0, task)
                } else {
                    None
                };
                let Some(t) = pick.map(|(t, _, _)| t).or_else(|| {
                    self.submitted
                        .get(task % self.submitted.len().max(1))
                        .copied()
                }) else {
                    return Ok(());
                };
                let live = self.s.task(t).is_some();
                let r = self.s.cancel(t, "cancelled".into(), now);
                prop_assert_eq!(r.is_ok(), live, "cancel {}: {:?}", t, r);
                r.err()
            }
            Op::Advance { ms } => {
                self.now += ms;
                self.s.tick(self.now);
                None
            }
        };
        if let Some(e) = refused {
            prop_assert_eq!(
                &before,
                &format!("{:?}", self.s),
                "refusal {:?} changed the state",
                e
            );
        }
        self.check()
    }

    /// Everything that must hold after every input.
    fn check(&mut self) -> Result<(), TestCaseError> {
        let events = self.s.drain_events();
        self.s.check_invariants().map_err(TestCaseError::fail)?;
        check_safety(&self.s, &self.registered).map_err(TestCaseError::fail)?;
        self.ledger.apply(&events).map_err(TestCaseError::fail)?;
        self.ledger
            .check_against(&self.s)
            .map_err(TestCaseError::fail)?;
        // A lost worker must really have been silent for a whole lease.
        for e in &events {
            if let Event::WorkerLost { worker, at } = *e {
                prop_assert!(self.s.worker(worker).is_none());
                prop_assert_eq!(at, self.now);
            }
        }
        prop_assert_eq!(
            self.submitted.len(),
            self.ledger.live.len() + self.ledger.terminal.len()
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(200)))]

    #[test]
    fn random_inputs_keep_leases_safe(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..150)) {
        let mut m = Model::new(seed);
        for op in &ops {
            m.apply(op)?;
        }
    }
}

/// A task for the liveness property, with the worker's plan for it.
#[derive(Clone, Debug)]
struct Job {
    kind: usize,
    priority: i8,
    max_attempts: u32,
    delay_ms: u64,
    shape: Shape,
    /// An earlier job it waits for (an index, kept only when that job is
    /// submitted no later than this one).
    parent: Option<usize>,
    /// How many of its attempts the worker fails before completing one.
    failures: u32,
    /// The step at which it is submitted.
    submit_at: usize,
    /// The step at which the client cancels it, if still live.
    cancel_at: Option<usize>,
}

fn job() -> impl Strategy<Value = Job> {
    (
        (0..TYPES.len(), -100i8..=100, 1u32..=4),
        prop_oneof![2 => Just(0u64), 1 => 1..3_000u64],
        shape(),
        proptest::option::weighted(0.2, any::<usize>()),
        0u32..=4,
        0usize..30,
        proptest::option::weighted(0.1, 0usize..60),
    )
        .prop_map(
            |(
                (kind, priority, max_attempts),
                delay_ms,
                shape,
                parent,
                failures,
                submit_at,
                cancel_at,
            )| Job {
                kind,
                priority,
                max_attempts,
                delay_ms,
                shape,
                parent,
                failures,
                submit_at,
                cancel_at,
            },
        )
}

/// A worker of the liveness property: its types, capacity, `zone` and
/// weight, and the step at which it crashes, if it does.
#[derive(Clone, Debug)]
struct Crew {
    types: u8,
    capacity: u32,
    zone: Option<usize>,
    weight: u32,
    crash_at: Option<usize>,
}

fn crew() -> impl Strategy<Value = Crew> {
    (
        1u8..8,
        1u32..=4,
        proptest::option::weighted(0.5, 0..ZONES.len()),
        1u32..=3,
        proptest::option::weighted(0.5, 0usize..30),
    )
        .prop_map(|(types, capacity, zone, weight, crash_at)| Crew {
            types,
            capacity,
            zone,
            weight,
            crash_at,
        })
}

/// Each step is this long; workers heartbeat every step, far within the lease.
const STEP_MS: u64 = 100;
/// A crashed worker's replacement registers this many steps later, once
/// the crashed one's lease has run out.
const RESTART_STEPS: usize = (LEASE / STEP_MS) as usize + 5;
/// Enough steps for the last submission (30), its delay (30), a crash (30)
/// and its restart (55), the lease of the crashed worker, and a full
/// default backoff (1 + 2 + 4 + 8 s = 150 steps) twice over.
const MAX_STEPS: usize = 800;

/// What the test did to a task: the attempts it failed on purpose, those a
/// crash took with it, and whether it completed one.
#[derive(Default)]
struct Done {
    failed: u32,
    lost: u32,
    completed: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(100)))]

    #[test]
    fn diligent_workers_bring_every_task_to_one_terminal_state(
        seed in any::<u64>(),
        crews in prop::collection::vec(crew(), 1..=4),
        jobs in prop::collection::vec(job(), 1..60),
    ) {
        let mut s: Scheduler<()> = Scheduler::new(Config { lease_ms: LEASE, ..Config::default() }, seed);
        configure_queues(&mut s);
        let mut registered = Registered::new();
        let mut ledger = Ledger::default();
        // Live workers by crew, and the crews that crashed, with the step
        // their replacement registers.
        let mut crew_of: BTreeMap<WorkerId, usize> = BTreeMap::new();
        let mut restart_at: BTreeMap<usize, usize> = BTreeMap::new();
        let mut crashed: BTreeSet<WorkerId> = BTreeSet::new();
        let register = |s: &mut Scheduler<()>, registered: &mut Registered, c: &Crew, now: Millis| {
            let w = s.register_worker(worker_spec(c.types, c.capacity, c.zone, c.weight), now);
            registered.insert(w, type_names(c.types).iter().map(|t| t.to_string()).collect());
            w
        };
        for (i, c) in crews.iter().enumerate() {
            let w = register(&mut s, &mut registered, c, 0);
            crew_of.insert(w, i);
        }
        // Only types some worker runs, and zones one of them carries, or
        // the task could never finish.
        let covered: Vec<usize> = (0..TYPES.len())
            .filter(|&k| crews.iter().any(|c| c.types & (1 << k) != 0))
            .collect();
        let plan: Vec<(TaskSpec, Option<TaskId>)> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let kind = covered[j.kind % covered.len()];
                let mut shape = j.shape.clone();
                let zoned = |z: usize| crews.iter().any(|c| c.types & (1 << kind) != 0 && c.zone == Some(z));
                shape.zone = shape.zone.filter(|&z| zoned(z));
                let parent = j
                    .parent
                    .map(|p| p % i.max(1))
                    .filter(|&p| p < i && jobs[p].submit_at <= j.submit_at)
                    .map(|p| TaskId(p as u64 + 1));
                let spec = TaskSpec {
                    priority: j.priority,
                    max_attempts: j.max_attempts,
                    ..shape.spec(TYPES[kind])
                };
                (spec, parent)
            })
            .collect();
        let mut done: BTreeMap<TaskId, Done> = BTreeMap::new();
        // The tasks this test cancelled while they were live.
        let mut cancelled_here: BTreeSet<TaskId> = BTreeSet::new();

        let mut step = 0;
        while step < MAX_STEPS && ledger.terminal.len() < jobs.len() {
            let now = step as u64 * STEP_MS;
            for (i, j) in jobs.iter().enumerate() {
                if j.submit_at != step {
                    continue;
                }
                let id = TaskId(i as u64 + 1);
                let (spec, parent) = &plan[i];
                let spec = TaskSpec { run_at: Some(now + j.delay_ms), ..spec.clone() };
                s.submit(id, spec, (), now).unwrap();
                let start = if parent.is_some() || j.delay_ms > 0 { TaskState::Scheduled } else { TaskState::Queued };
                ledger.submitted(id, start);
                // A parent that already ended is told with its end, as the
                // shell does from the store.
                for p in s.hold_for_parents(id, parent.as_slice()).unwrap() {
                    s.parent_ended(id, p, ledger.terminal[&p].state, now);
                }
                // It may have ended at once (its parent had failed), and be
                // the parent of the next one.
                ledger.apply(&s.drain_events()).map_err(TestCaseError::fail)?;
            }
            for (i, j) in jobs.iter().enumerate() {
                let id = TaskId(i as u64 + 1);
                if j.cancel_at == Some(step) && s.task(id).is_some() {
                    s.cancel(id, "client".into(), now).unwrap();
                    cancelled_here.insert(id);
                }
            }
            for (&c, _) in restart_at.iter().filter(|(_, at)| **at == step) {
                let w = register(&mut s, &mut registered, &crews[c], now);
                crew_of.insert(w, c);
            }
            s.tick(now);
            let ids: Vec<WorkerId> = crew_of.keys().copied().collect();
            for w in ids {
                let crew = crew_of[&w];
                for t in s.heartbeat(w, now).unwrap() {
                    prop_assert!(false, "stop notice for {} which {} does not hold", t, w);
                }
                let hand = s.poll(w, usize::MAX, now).unwrap();
                if crews[crew].crash_at == Some(step) && !restart_at.contains_key(&crew) {
                    // It dies holding what it just took: each is an attempt lost.
                    for t in hand {
                        done.entry(t).or_default().lost += 1;
                    }
                    crew_of.remove(&w);
                    crashed.insert(w);
                    restart_at.insert(crew, step + RESTART_STEPS);
                    continue;
                }
                // Finish everything in hand within the step.
                for t in hand {
                    let job = &jobs[t.0 as usize - 1];
                    let d = done.entry(t).or_default();
                    if d.failed < job.failures {
                        d.failed += 1;
                        s.fail(t, w, format!("failure {}", d.failed), None, false, now).unwrap();
                    } else {
                        d.completed = true;
                        s.complete(t, w, now).unwrap();
                    }
                }
            }
            let events = s.drain_events();
            for e in &events {
                if let Event::WorkerLost { worker, .. } = e {
                    prop_assert!(crashed.contains(worker), "heartbeating worker {} was lost", worker);
                }
            }
            ledger.apply(&events).map_err(TestCaseError::fail)?;
            ledger.check_against(&s).map_err(TestCaseError::fail)?;
            s.check_invariants().map_err(TestCaseError::fail)?;
            check_safety(&s, &registered).map_err(TestCaseError::fail)?;
            step += 1;
        }
        prop_assert_eq!(ledger.terminal.len(), jobs.len(), "not drained after {} steps", MAX_STEPS);
        prop_assert_eq!(s.live_tasks(), 0);
        // Each outcome is the one the test's own actions imply, never what
        // the task became: parents first, as a child's end follows theirs.
        let mut expected: BTreeMap<TaskId, TaskState> = BTreeMap::new();
        for (i, j) in jobs.iter().enumerate() {
            let id = TaskId(i as u64 + 1);
            let d = done.remove(&id).unwrap_or_default();
            let parent_failed = plan[i].1.is_some_and(|p| expected[&p] != TaskState::Succeeded);
            let e = if cancelled_here.contains(&id) || parent_failed {
                TaskState::Cancelled
            } else if d.completed {
                TaskState::Succeeded
            } else if d.failed + d.lost >= j.max_attempts {
                TaskState::Dead
            } else {
                return Err(TestCaseError::fail(format!(
                    "task {id} ended {:?} with attempts to spare: {} failed, {} lost, plan {:?}",
                    ledger.terminal[&id], d.failed, d.lost, j
                )));
            };
            prop_assert_eq!(ledger.terminal[&id].state, e, "task {}: plan {:?}", id, j);
            expected.insert(id, e);
        }
    }
}
