//! Property tests: random sequences of inputs never break the scheduler's
//! safety properties, and workers that do their job drain every task.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Ledger, Registered, check_safety};
use dispatch_core::{
    Config, CoreError, Event, Millis, Scheduler, TaskId, TaskSpec, TaskState, WorkerId, WorkerSpec,
};
use proptest::prelude::*;

const LEASE: u64 = 5_000;
const TYPES: [&str; 3] = ["email", "resize", "pdf"];

/// One input to the scheduler. Worker and task choices are indices resolved
/// against the state at the time, so they stay meaningful while shrinking.
#[derive(Clone, Debug)]
enum Op {
    Submit {
        kind: usize,
        priority: i8,
        max_attempts: u32,
        delay_ms: u64,
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
        4 => (0..TYPES.len(), -100i8..=100, 1u32..=4, delay).prop_map(
            |(kind, priority, max_attempts, delay_ms)| Op::Submit { kind, priority, max_attempts, delay_ms }
        ),
        1 => (0..TYPES.len(), 1u32..=4, 0u32..4).prop_map(
            |(kind, max_attempts, used)| Op::Restore { kind, max_attempts, used: used % max_attempts }
        ),
        2 => (1u8..8, 1u32..=4).prop_map(|(types, capacity)| Op::Register { types, capacity }),
        3 => (any::<usize>(), 1usize..4).prop_map(|(worker, max)| Op::Poll { worker, max }),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(worker, task)| Op::Complete { worker, task }),
        2 => (any::<usize>(), any::<usize>(), any::<bool>(), proptest::option::of(0..2_000u64))
            .prop_map(|(worker, task, abort, retry_after_ms)| Op::Fail { worker, task, abort, retry_after_ms }),
        2 => any::<usize>().prop_map(|worker| Op::Heartbeat { worker }),
        2 => (any::<usize>(), 0u32..6, 0u8..3).prop_map(|(worker, slots, how)| Op::Demand { worker, slots, how }),
        1 => any::<usize>().prop_map(|worker| Op::Deregister { worker }),
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
}

impl Model {
    fn new(seed: u64) -> Self {
        Model {
            s: Scheduler::new(
                Config {
                    lease_ms: LEASE,
                    ..Config::default()
                },
                seed,
            ),
            now: 0,
            registered: Registered::new(),
            submitted: Vec::new(),
            ledger: Ledger::default(),
            handed: BTreeMap::new(),
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
            } => {
                let id = TaskId(self.submitted.len() as u64 + 1);
                let spec = TaskSpec {
                    priority,
                    max_attempts,
                    run_at: Some(now + delay_ms),
                    ..TaskSpec::new(TYPES[kind])
                };
                self.s.submit(id, spec, (), now).unwrap();
                self.submitted.push(id);
                let start = if delay_ms > 0 {
                    TaskState::Scheduled
                } else {
                    TaskState::Queued
                };
                self.ledger.submitted(id, start);
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
            Op::Register { types, capacity } => {
                let names = type_names(types);
                let w = self
                    .s
                    .register_worker(WorkerSpec::new("w", names.iter().copied(), capacity), now);
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
                        // Only cancelled tasks are announced, and never while still live.
                        for t in stop {
                            let cancelled = self.ledger.terminal.get(&t).map(|tr| tr.state);
                            prop_assert_eq!(cancelled, Some(TaskState::Cancelled));
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
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

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
    /// How many of its attempts the worker fails before completing one.
    failures: u32,
    /// The step at which it is submitted.
    submit_at: usize,
    /// The step at which the client cancels it, if still live.
    cancel_at: Option<usize>,
}

fn job() -> impl Strategy<Value = Job> {
    (
        0..TYPES.len(),
        -100i8..=100,
        1u32..=4,
        prop_oneof![2 => Just(0u64), 1 => 1..3_000u64],
        0u32..=4,
        0usize..30,
        proptest::option::weighted(0.1, 0usize..60),
    )
        .prop_map(
            |(kind, priority, max_attempts, delay_ms, failures, submit_at, cancel_at)| Job {
                kind,
                priority,
                max_attempts,
                delay_ms,
                failures,
                submit_at,
                cancel_at,
            },
        )
}

/// Each step is this long; workers heartbeat every step, far within the lease.
const STEP_MS: u64 = 100;
/// Enough steps for the last submission (30), its delay (30) and its full
/// default backoff (1 + 2 + 4 + 8 s = 150 steps), with room to spare.
const MAX_STEPS: usize = 400;

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    #[test]
    fn diligent_workers_bring_every_task_to_one_terminal_state(
        seed in any::<u64>(),
        workers in prop::collection::vec((1u8..8, 1u32..=4), 1..=4),
        jobs in prop::collection::vec(job(), 1..60),
    ) {
        let mut s: Scheduler<()> = Scheduler::new(Config { lease_ms: LEASE, ..Config::default() }, seed);
        let mut registered = Registered::new();
        let mut ledger = Ledger::default();
        let ids: Vec<WorkerId> = workers
            .iter()
            .map(|&(mask, capacity)| {
                let names = type_names(mask);
                let w = s.register_worker(WorkerSpec::new("w", names.iter().copied(), capacity), 0);
                registered.insert(w, names.iter().map(|t| t.to_string()).collect());
                w
            })
            .collect();
        // Only types some worker runs, or the task could never finish.
        let covered: Vec<&str> = TYPES
            .iter()
            .copied()
            .filter(|t| registered.values().any(|ts| ts.contains(*t)))
            .collect();
        let mut failed: BTreeMap<TaskId, u32> = BTreeMap::new();
        // The tasks this test cancelled while they were live.
        let mut cancelled_here: std::collections::BTreeSet<TaskId> = Default::default();
        let mut in_hand: BTreeMap<WorkerId, BTreeSet<TaskId>> = BTreeMap::new();

        let mut step = 0;
        while step < MAX_STEPS && ledger.terminal.len() < jobs.len() {
            let now = step as u64 * STEP_MS;
            for (i, j) in jobs.iter().enumerate() {
                let id = TaskId(i as u64 + 1);
                if j.submit_at == step {
                    let spec = TaskSpec {
                        priority: j.priority,
                        max_attempts: j.max_attempts,
                        run_at: Some(now + j.delay_ms),
                        ..TaskSpec::new(covered[j.kind % covered.len()])
                    };
                    s.submit(id, spec, (), now).unwrap();
                    let start = if j.delay_ms > 0 { TaskState::Scheduled } else { TaskState::Queued };
                    ledger.submitted(id, start);
                }
                if j.cancel_at == Some(step) && s.task(id).is_some() {
                    s.cancel(id, "client".into(), now).unwrap();
                    cancelled_here.insert(id);
                }
            }
            s.tick(now);
            for &w in &ids {
                let hand = in_hand.entry(w).or_default();
                for t in s.heartbeat(w, now).unwrap() {
                    prop_assert!(hand.remove(&t), "stop notice for {} which {} does not hold", t, w);
                }
                hand.extend(s.poll(w, usize::MAX, now).unwrap());
                // Finish everything in hand within the step.
                for t in std::mem::take(hand) {
                    let job = &jobs[t.0 as usize - 1];
                    let n = failed.entry(t).or_default();
                    if *n < job.failures {
                        *n += 1;
                        s.fail(t, w, format!("failure {n}"), None, false, now).unwrap();
                    } else {
                        s.complete(t, w, now).unwrap();
                    }
                }
            }
            let events = s.drain_events();
            prop_assert!(
                !events.iter().any(|e| matches!(e, Event::WorkerLost { .. })),
                "a heartbeating worker was lost"
            );
            ledger.apply(&events).map_err(TestCaseError::fail)?;
            ledger.check_against(&s).map_err(TestCaseError::fail)?;
            s.check_invariants().map_err(TestCaseError::fail)?;
            check_safety(&s, &registered).map_err(TestCaseError::fail)?;
            step += 1;
        }
        prop_assert_eq!(ledger.terminal.len(), jobs.len(), "not drained after {} steps", MAX_STEPS);
        prop_assert_eq!(s.live_tasks(), 0);
        let (succeeded, dead, cancelled) = ledger.tally();
        prop_assert_eq!(succeeded + dead + cancelled, jobs.len());
        // Each outcome is the one the plan implies.
        for (i, j) in jobs.iter().enumerate() {
            let id = TaskId(i as u64 + 1);
            let t = &ledger.terminal[&id];
            // From what the test did, never from what the task became.
            let expected = if cancelled_here.contains(&id) {
                TaskState::Cancelled
            } else if j.failures >= j.max_attempts {
                TaskState::Dead
            } else {
                TaskState::Succeeded
            };
            prop_assert_eq!(t.state, expected, "task {}: {:?} for plan {:?}", i + 1, t, j);
        }
    }
}
