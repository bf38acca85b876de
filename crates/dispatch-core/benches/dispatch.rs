//! The cost of one dispatch decision: nanoseconds per assignment with 1,000
//! workers and 1,000,000 queued tasks, for each routing strategy, with
//! label-constrained routing, and with 1,000 lanes (100 types x 10 queues).
//!
//! Each scenario builds its scheduler once, outside the measurement: the
//! workers register, a million tasks are submitted and the first tick fills
//! every slot. Each measured step then runs in steady state: the oldest
//! running task completes and a replacement is submitted (not timed), then
//! `tick` assigns the freed slot (timed, with the draining of its events).
//! The reported time is the time spent in `tick` divided by the assignments
//! it made, so it reads as nanoseconds per assignment even for strategies
//! that sometimes wait (a `consistent_hash` task waits for its own worker).
//!
//! `cargo bench -p dispatch-core --bench dispatch` runs the full sizes; run
//! any other way (`cargo test --benches`) it runs each scenario once on
//! 10,000 tasks. `DISPATCH_BENCH_TASKS` overrides the number of tasks.

// criterion's macros generate the undocumented `main` and group functions.
#![allow(missing_docs)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dispatch_core::{
    Config, Event, Millis, Scheduler, Strategy, TaskId, TaskSpec, TaskState, WorkerId, WorkerSpec,
};

const WORKERS: usize = 1_000;
const CAPACITY: u32 = 2;
const ZONES: usize = 4;
const ROUTING_KEYS: usize = 10_000;

/// The shape of one benchmark scenario.
#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
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

const SCENARIOS: [Scenario; 9] = [
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
struct Bench {
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
    fn new(scenario: Scenario, tasks: usize) -> Self {
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
    fn step(&mut self) -> (Duration, u64) {
        self.now += 1;
        if let Some((task, worker)) = self.running.pop_front() {
            self.sched
                .complete(task, worker, self.now)
                .expect("leased task");
            self.submit_one();
        }
        self.sched.drain_events();
        let start = Instant::now();
        self.sched.tick(black_box(self.now));
        let events = black_box(self.sched.drain_events());
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

fn task_count() -> usize {
    if let Some(n) = std::env::var("DISPATCH_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    // `cargo bench` passes `--bench`; a test run does not and stays small.
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    }
}

fn dispatch(c: &mut Criterion) {
    let tasks = task_count();
    let mut group = c.benchmark_group("dispatch");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for scenario in SCENARIOS {
        let mut b = Bench::new(scenario, tasks);
        group.bench_function(scenario.name, |bencher| {
            bencher.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut assigned = 0;
                for _ in 0..iters {
                    let (t, n) = b.step();
                    spent += t;
                    assigned += n;
                }
                // Time per assignment, scaled back to the iterations asked.
                spent.mul_f64(iters as f64 / assigned.max(1) as f64)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
