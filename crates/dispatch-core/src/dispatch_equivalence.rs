//! The incremental dispatch against the reference one.
//!
//! `Scheduler::dispatch` builds its frontier once per call and keeps it up to
//! date through the call; `dispatch_rebuilt` rebuilds it from every lane
//! before each assignment, as the scheduler once did. Two schedulers fed the
//! same random inputs, one ticking each way, must emit the same events:
//! every strategy, labels, pins, queue weights, limits and pauses.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::strategy::Strategy as _;

use crate::{
    Config, Millis, QueueConfig, Scheduler, Strategy, TaskId, TaskSpec, TypeConfig, WorkerSpec,
};

const TYPES: [&str; 3] = ["email", "resize", "pdf"];
const QUEUES: [&str; 3] = ["default", "bulk", "urgent"];
const STRATEGIES: [Strategy; 6] = [
    Strategy::RoundRobin,
    Strategy::WeightedRoundRobin,
    Strategy::Random,
    Strategy::LeastLoaded,
    Strategy::ConsistentHash,
    Strategy::Failover,
];

#[derive(Clone, Debug)]
enum Op {
    Register {
        types: u8,
        capacity: u32,
        weight: u32,
        zone: Option<u8>,
    },
    Submit {
        kind: usize,
        queue: usize,
        priority: i8,
        strategy: usize,
        key: Option<u8>,
        zone: Option<u8>,
        pin: Option<usize>,
    },
    Complete {
        task: usize,
    },
    Lose {
        worker: usize,
    },
    ConfigureQueue {
        queue: usize,
        weight: u32,
        max_running: Option<u32>,
        max_per_key: Option<u32>,
        rate: Option<u8>,
    },
    ConfigureType {
        kind: usize,
        max_running: Option<u32>,
    },
    Pause {
        queue: usize,
        paused: bool,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        2 => (1u8..8, 1u32..=3, 1u32..=3, proptest::option::of(0u8..2)).prop_map(
            |(types, capacity, weight, zone)| Op::Register { types, capacity, weight, zone }
        ),
        8 => (
            0..TYPES.len(),
            0..QUEUES.len(),
            -3i8..=3,
            0..STRATEGIES.len(),
            proptest::option::of(0u8..6),
            proptest::option::weighted(0.2, 0u8..2),
            proptest::option::weighted(0.1, any::<usize>()),
        )
            .prop_map(|(kind, queue, priority, strategy, key, zone, pin)| Op::Submit {
                kind, queue, priority, strategy, key, zone, pin
            }),
        4 => any::<usize>().prop_map(|task| Op::Complete { task }),
        1 => any::<usize>().prop_map(|worker| Op::Lose { worker }),
        1 => (
            0..QUEUES.len(),
            1u32..=4,
            proptest::option::of(1u32..=3),
            proptest::option::of(1u32..=2),
            proptest::option::weighted(0.2, 1u8..=20),
        )
            .prop_map(|(queue, weight, max_running, max_per_key, rate)| Op::ConfigureQueue {
                queue, weight, max_running, max_per_key, rate
            }),
        1 => (0..TYPES.len(), proptest::option::of(1u32..=3))
            .prop_map(|(kind, max_running)| Op::ConfigureType { kind, max_running }),
        1 => (0..QUEUES.len(), any::<bool>()).prop_map(|(queue, paused)| Op::Pause { queue, paused }),
        2 => (0u64..300).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Applies one input to a scheduler; the choices depend only on its state,
/// which both schedulers share while they agree.
fn apply(s: &mut Scheduler<()>, op: &Op, next_id: u64, now: Millis) {
    match op {
        Op::Register {
            types,
            capacity,
            weight,
            zone,
        } => {
            let kinds = TYPES
                .iter()
                .enumerate()
                .filter(|(i, _)| types & (1 << i) != 0)
                .map(|(_, t)| *t);
            let mut spec = WorkerSpec::new("w", kinds, *capacity);
            spec.weight = *weight;
            if let Some(z) = zone {
                spec.labels.insert("zone".into(), format!("z{z}"));
            }
            s.register_worker(spec, now);
        }
        Op::Submit {
            kind,
            queue,
            priority,
            strategy,
            key,
            zone,
            pin,
        } => {
            let mut spec = TaskSpec::new(TYPES[*kind]);
            spec.queue = Arc::from(QUEUES[*queue]);
            spec.priority = *priority;
            spec.strategy = STRATEGIES[*strategy];
            spec.routing_key = key.map(|k| Arc::from(format!("key-{k}")));
            if let Some(z) = zone {
                spec.labels = BTreeMap::from([("zone".into(), format!("z{z}"))]);
            }
            let workers: Vec<_> = s.workers().map(|w| w.id).collect();
            if let Some(i) = pin
                && !workers.is_empty()
            {
                spec.pinned = Some(workers[i % workers.len()]);
            }
            s.submit(TaskId(next_id), spec, (), now)
                .expect("fresh task id");
        }
        Op::Complete { task } => {
            let ids: Vec<_> = s.workers().map(|w| w.id).collect();
            for w in ids {
                s.poll(w, usize::MAX, now).expect("live worker");
            }
            let running: Vec<_> = s
                .workers()
                .flat_map(|w| w.running.iter().map(move |t| (*t, w.id)))
                .collect();
            if !running.is_empty() {
                let (t, w) = running[task % running.len()];
                s.complete(t, w, now).expect("leased task");
            }
        }
        Op::Lose { worker } => {
            let workers: Vec<_> = s.workers().map(|w| w.id).collect();
            if !workers.is_empty() {
                s.lose_worker(workers[worker % workers.len()], now)
                    .expect("live worker");
            }
        }
        // A cap lowered below the attempts already running is legal but
        // breaks `check_invariants`' bound, so limits change while idle.
        Op::ConfigureQueue { .. } | Op::ConfigureType { .. }
            if s.workers().any(|w| !w.running.is_empty()) => {}
        Op::ConfigureQueue {
            queue,
            weight,
            max_running,
            max_per_key,
            rate,
        } => s.configure_queue(
            QUEUES[*queue],
            QueueConfig {
                weight: *weight,
                max_running: *max_running,
                rate_per_sec: rate.map(f64::from),
                burst: None,
                max_per_key: *max_per_key,
            },
        ),
        Op::ConfigureType { kind, max_running } => s.configure_type(
            TYPES[*kind],
            TypeConfig {
                max_running: *max_running,
                ..TypeConfig::default()
            },
        ),
        Op::Pause { queue, paused } => {
            if *paused {
                s.pause_queue(QUEUES[*queue]);
            } else {
                s.resume_queue(QUEUES[*queue]);
            }
        }
        Op::Advance { .. } => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn incremental_dispatch_matches_the_rebuilt_frontier(
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let config = Config { lease_ms: 1 << 40, ..Config::default() };
        let mut incremental: Scheduler<()> = Scheduler::new(config.clone(), seed);
        let mut rebuilt: Scheduler<()> = Scheduler::new(config, seed);
        let mut now = 0;
        for (i, op) in ops.iter().enumerate() {
            if let Op::Advance { ms } = op {
                now += ms;
            }
            apply(&mut incremental, op, i as u64, now);
            apply(&mut rebuilt, op, i as u64, now);
            incremental.tick(now);
            rebuilt.tick_rebuilt(now);
            prop_assert_eq!(incremental.drain_events(), rebuilt.drain_events(), "after {:?}", op);
            prop_assert_eq!(incremental.check_invariants(), Ok(()));
        }
    }
}
