//! Steady-state dispatch scenarios, shared by the `dispatch` benchmark and
//! the `dispatch_steps` example (which runs one under callgrind).
//!
//! A scenario builds its scheduler once: 1,000 workers register, the tasks
//! are submitted and the first tick fills every slot. Each `step` then runs
//! in steady state: the oldest running task completes and a replacement is
//! submitted, then `tick` assigns what it can (the only part timed).

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_core::{
    Config, Event, Millis, Scheduler, Strategy, TaskId, TaskSpec, TaskState, WorkerId, WorkerSpec,
};

const WORKERS: usize = 1_000;
const CAPACITY: u32 = 2;
const ZONES: usize = 4;
const ROUTING_KEYS: usize = 10_000;

/// The shape of one benchmark scenario.
#[derive(Clone, Copy)]
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    strategy: Strategy,
    /// Tasks require a `zone` label that a quarter of the workers carry.
    labels: bool,
    /// Task types; each worker registers `types_per_worker` of them.
    types: usize,
    types_per_worker: usize,
    queues: usize,
}

impl Scenario {
    const fn strategy(name: &'static str, strategy: Strategy) -> Self {
        Scenario {
            name,
            strategy,
            labels: false,
            types: 1,
            types_per_worker: 1,
            queues: 1,
        }
    }
}

pub(crate) const SCENARIOS: [Scenario; 9] = [
    Scenario::strategy("round_robin", Strategy::RoundRobin),
    Scenario::strategy("weighted_round_robin", Strategy::WeightedRoundRobin),
    Scenario::strategy("random", Strategy::Random),
    Scenario::strategy("least_loaded", Strategy::LeastLoaded),
    Scenario::strategy("consistent_hash", Strategy::ConsistentHash),
    Scenario::strategy("failover", Strategy::Failover),
    Scenario {
        labels: true,
        ..Scenario::strategy("round_robin_labels", Strategy::RoundRobin)
    },
    Scenario {
        labels: true,
        ..Scenario::strategy("least_loaded_labels", Strategy::LeastLoaded)
    },
    Scenario {
        types: 100,
        types_per_worker: 10,
        queues: 10,
        ..Scenario::strategy("round_robin_1000_lanes", Strategy::RoundRobin)
    },
];

/// A scheduler in steady state and what the loop needs to keep it there.
pub(crate) struct Bench {
    scenario: Scenario,
    sched: Scheduler<()>,
    kinds: Vec<Arc<str>>,
    queues: Vec<Arc<str>>,
    keys: Vec<Arc<str>>,
    /// Running tasks, oldest assignment first.
    running: VecDeque<(TaskId, WorkerId)>,
    next_task: u64,
    now: Millis,
}

impl Bench {
    pub(crate) fn new(scenario: Scenario, tasks: usize) -> Self {
        let config = Config {
            // Workers that wait for their own tasks neither poll nor report;
            // the lease must not end the run.
            lease_ms: 1 << 40,
            ..Config::default()
        };
        let mut b = Bench {
            scenario,
            sched: Scheduler::new(config, 42),
            kinds: (0..scenario.types)
                .map(|i| Arc::from(format!("type-{i}")))
                .collect(),
            queues: (0..scenario.queues)
                .map(|i| Arc::from(format!("queue-{i}")))
                .collect(),
            keys: (0..ROUTING_KEYS)
                .map(|i| Arc::from(format!("customer-{i}")))
                .collect(),
            running: VecDeque::new(),
            next_task: 0,
            now: 1,
        };
        for i in 0..WORKERS {
            let first = (i * scenario.types_per_worker) % scenario.types;
            let types = (0..scenario.types_per_worker)
                .map(|t| &*b.kinds[(first + t) % scenario.types])
                .collect::<Vec<_>>();
            let mut spec = WorkerSpec::new(&format!("worker-{i}"), types, CAPACITY);
            spec.weight = 1 + (i % 3) as u32;
            if scenario.labels {
                spec.labels
                    .insert("zone".to_owned(), format!("z{}", i % ZONES));
            }
            b.sched.register_worker(spec, 0);
        }
        for _ in 0..tasks {
            b.submit_one();
        }
        b.sched.tick(b.now);
        b.collect();
        b
    }

    fn submit_one(&mut self) {
        let n = self.next_task;
        self.next_task += 1;
        let i = n as usize;
        let s = self.scenario;
        let mut spec = TaskSpec::new("unused");
        spec.kind = self.kinds[i % s.types].clone();
        spec.queue = self.queues[(i / s.types) % s.queues].clone();
        spec.strategy = s.strategy;
        if s.strategy == Strategy::ConsistentHash {
            spec.routing_key = Some(self.keys[i % ROUTING_KEYS].clone());
        }
        if s.labels {
            spec.labels
                .insert("zone".to_owned(), format!("z{}", i % ZONES));
        }
        self.sched
            .submit(TaskId(n), spec, (), self.now)
            .expect("fresh task id");
    }

    /// The measured part: one tick and its events. Never inlined, so that
    /// callgrind can count the instructions of this function alone.
    #[inline(never)]
    pub(crate) fn tick(&mut self) -> Vec<Event> {
        self.sched.tick(black_box(self.now));
        black_box(self.sched.drain_events())
    }

    /// Drains the events, records the assignments and hands them over as a
    /// worker's poll would.
    fn collect(&mut self) {
        for e in self.sched.drain_events() {
            if let Event::Transition(t) = e
                && t.state == TaskState::Running
                && let Some(w) = t.worker
            {
                self.running.push_back((t.task, w));
                self.sched
                    .poll(w, usize::MAX, self.now)
                    .expect("live worker");
            }
        }
    }

    /// One steady-state step; returns the time spent in `tick` and the
    /// assignments it made.
    pub(crate) fn step(&mut self) -> (Duration, u64) {
        self.now += 1;
        if let Some((task, worker)) = self.running.pop_front() {
            self.sched
                .complete(task, worker, self.now)
                .expect("leased task");
            self.submit_one();
        }
        self.sched.drain_events();
        let start = Instant::now();
        let events = self.tick();
        let spent = start.elapsed();
        let mut assigned = 0;
        for e in events {
            if let Event::Transition(t) = e
                && t.state == TaskState::Running
                && let Some(w) = t.worker
            {
                self.running.push_back((t.task, w));
                assigned += 1;
                // Hand the task over, as the worker's long-poll would.
                self.sched
                    .poll(w, usize::MAX, self.now)
                    .expect("live worker");
            }
        }
        (spent, assigned)
    }
}
