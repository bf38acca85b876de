//! Routing strategies, each against the bound it promises.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::cases;
use dispatch_core::{
    Config, Event, Scheduler, Strategy, TaskId, TaskSpec, TaskState, WorkerId, WorkerSpec,
};
use proptest::prelude::*;

fn scheduler(seed: u64) -> Scheduler<()> {
    Scheduler::new(
        Config {
            lease_ms: 1_000_000,
            ..Config::default()
        },
        seed,
    )
}

fn worker(s: &mut Scheduler<()>, capacity: u32, weight: u32, labels: &[(&str, &str)]) -> WorkerId {
    let mut spec = WorkerSpec::new("w", ["job"], capacity);
    spec.weight = weight;
    spec.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.register_worker(spec, 0)
}

fn spec(strategy: Strategy) -> TaskSpec {
    TaskSpec {
        strategy,
        ..TaskSpec::new("job")
    }
}

/// Submits `n` tasks made by `make`, ticks, and returns where each went.
fn route_all(
    s: &mut Scheduler<()>,
    n: u64,
    make: impl Fn(u64) -> TaskSpec,
) -> BTreeMap<TaskId, WorkerId> {
    let first = s.live_tasks() as u64 + 1_000_000;
    for i in 0..n {
        s.submit(TaskId(first + i), make(i), (), 1).unwrap();
    }
    s.tick(1);
    s.check_invariants().unwrap();
    s.drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Assigned { task, worker } => Some((task, worker)),
            _ => None,
        })
        .collect()
}

fn counts(assigned: &BTreeMap<TaskId, WorkerId>) -> HashMap<WorkerId, usize> {
    let mut c = HashMap::new();
    for w in assigned.values() {
        *c.entry(*w).or_insert(0) += 1;
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]

    /// Round robin over equal workers: max - min <= 1, whatever the counts.
    #[test]
    fn round_robin_spreads_within_one(workers in 1usize..20, tasks in 0u64..500) {
        let mut s = scheduler(1);
        let ids: Vec<WorkerId> = (0..workers).map(|_| worker(&mut s, 10_000, 1, &[])).collect();
        let c = counts(&route_all(&mut s, tasks, |_| spec(Strategy::RoundRobin)));
        let per: Vec<usize> = ids.iter().map(|w| c.get(w).copied().unwrap_or(0)).collect();
        let (min, max) = (per.iter().min().unwrap(), per.iter().max().unwrap());
        prop_assert!(max - min <= 1, "{per:?}");
    }

    /// Removing one of N workers moves only the keys it held: about 1/N of
    /// them, within five standard deviations of the binomial share (a hash
    /// spreads 2,000 keys like 2,000 draws).
    #[test]
    fn consistent_hash_moves_only_the_removed_workers_keys(workers in 3usize..12, seed in 0u64..1_000) {
        let keyed = |i: u64| TaskSpec {
            routing_key: Some(format!("key-{}", i % 2_000).into()),
            ..spec(Strategy::ConsistentHash)
        };
        let mut s = scheduler(seed);
        let ids: Vec<WorkerId> = (0..workers).map(|_| worker(&mut s, 10_000, 1, &[])).collect();
        let before = route_all(&mut s, 2_000, keyed);
        let gone = ids[seed as usize % workers];
        s.deregister(gone, 2).unwrap();
        // The requeued tasks of the removed worker are reassigned too.
        s.tick(2);
        s.drain_events();
        let after = route_all(&mut s, 2_000, keyed);
        let mut moved = 0;
        // Both runs submitted the same keys in the same order.
        for (was, &now) in before.values().zip(after.values()) {
            if *was == gone {
                moved += 1;
                prop_assert_ne!(now, gone);
            } else {
                prop_assert_eq!(now, *was, "a key moved although its worker stayed");
            }
        }
        let share = moved as f64 / 2_000.0;
        let expected = 1.0 / workers as f64;
        let sigma = (expected * (1.0 - expected) / 2_000.0).sqrt();
        prop_assert!(
            (share - expected).abs() <= 5.0 * sigma,
            "moved {share}, expected {expected} ± {}",
            5.0 * sigma
        );
    }
}

#[test]
fn weighted_round_robin_is_within_5_percent_of_the_weights() {
    let mut s = scheduler(3);
    let weights = [1u32, 2, 3, 10];
    let ids: Vec<WorkerId> = weights
        .iter()
        .map(|&w| worker(&mut s, 100_000, w, &[]))
        .collect();
    let c = counts(&route_all(&mut s, 10_000, |_| {
        spec(Strategy::WeightedRoundRobin)
    }));
    let total: u32 = weights.iter().sum();
    for (id, w) in ids.iter().zip(weights) {
        let share = c[id] as f64 / 10_000.0;
        let expected = f64::from(w) / f64::from(total);
        assert!(
            (share - expected).abs() <= 0.05 * expected,
            "weight {w}: {share} vs {expected}"
        );
    }
}

#[test]
fn random_uses_every_worker_and_replays_from_its_seed() {
    let run = |seed| {
        let mut s = scheduler(seed);
        for _ in 0..4 {
            worker(&mut s, 10_000, 1, &[]);
        }
        route_all(&mut s, 4_000, |_| spec(Strategy::Random))
    };
    let a = run(9);
    assert_eq!(a, run(9), "same seed, same choices");
    let c = counts(&a);
    assert_eq!(c.len(), 4);
    // 4,000 uniform draws over 4 workers: 1,000 each, standard deviation
    // sqrt(4000 * 1/4 * 3/4) = 27.4; five of them is 137.
    assert!(c.values().all(|&n| (863..=1_137).contains(&n)), "{c:?}");
}

#[test]
fn least_loaded_fills_the_emptiest_ratio_first() {
    let mut s = scheduler(1);
    let small = worker(&mut s, 2, 1, &[]);
    let big = worker(&mut s, 8, 1, &[]);
    let placed = route_all(&mut s, 10, |_| spec(Strategy::LeastLoaded));
    let c = counts(&placed);
    assert_eq!(
        (c[&small], c[&big]),
        (2, 8),
        "both end full, each by its ratio"
    );
    let first_four: Vec<WorkerId> = placed.values().take(4).copied().collect();
    assert_eq!(
        first_four.iter().filter(|w| **w == big).count(),
        3,
        "{first_four:?}"
    );
}

#[test]
fn failover_sends_everything_to_the_first_live_worker() {
    let mut s = scheduler(1);
    let primary = worker(&mut s, 2, 1, &[]);
    let backup = worker(&mut s, 10, 1, &[]);
    let placed = route_all(&mut s, 5, |_| spec(Strategy::Failover));
    assert!(placed.values().all(|w| *w == primary));
    assert_eq!(
        placed.len(),
        2,
        "the rest wait for the primary rather than go to the backup"
    );
    // The primary leaves: its tasks and the waiting ones go to the backup.
    s.deregister(primary, 2).unwrap();
    s.tick(2);
    let moved: Vec<_> = s
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Assigned { worker, .. } => Some(worker),
            _ => None,
        })
        .collect();
    assert_eq!(moved, vec![backup; 5]);
    s.check_invariants().unwrap();
}

#[test]
fn labels_are_constraints_and_do_not_block_the_tasks_behind() {
    let mut s = scheduler(1);
    let plain = worker(&mut s, 10, 1, &[]);
    let gpu = worker(&mut s, 1, 1, &[("gpu", "a100")]);
    let needs_gpu = |_| TaskSpec {
        labels: BTreeMap::from([("gpu".to_string(), "a100".to_string())]),
        priority: 10,
        ..spec(Strategy::RoundRobin)
    };
    // Three GPU tasks (one fits), then plain tasks that must not wait.
    let gpu_placed = route_all(&mut s, 3, needs_gpu);
    assert_eq!(gpu_placed.values().collect::<Vec<_>>(), vec![&gpu]);
    let plain_placed = route_all(&mut s, 4, |_| spec(Strategy::RoundRobin));
    assert_eq!(plain_placed.len(), 4);
    assert!(
        plain_placed.values().all(|w| *w == plain),
        "GPU tasks never go to the plain worker"
    );
    let nobody = route_all(&mut s, 1, |_| TaskSpec {
        labels: BTreeMap::from([("zone".to_string(), "mars".to_string())]),
        ..spec(Strategy::LeastLoaded)
    });
    assert!(
        nobody.is_empty(),
        "no worker carries the label: the task waits"
    );
    s.check_invariants().unwrap();
}

#[test]
fn pinned_copies_reach_exactly_their_worker_and_a_join_ends_with_them() {
    let mut s = scheduler(1);
    let ws: Vec<WorkerId> = (0..3).map(|_| worker(&mut s, 5, 1, &[])).collect();
    for (i, w) in ws.iter().enumerate() {
        let copy = TaskSpec {
            pinned: Some(*w),
            ..spec(Strategy::RoundRobin)
        };
        s.submit(TaskId(i as u64 + 1), copy, (), 1).unwrap();
    }
    let join = TaskId(10);
    s.submit(
        join,
        TaskSpec {
            join: true,
            ..TaskSpec::new("job")
        },
        (),
        1,
    )
    .unwrap();
    s.hold_for_parents(join, &[TaskId(1), TaskId(2), TaskId(3)])
        .unwrap();
    s.tick(1);
    for (i, w) in ws.iter().enumerate() {
        assert_eq!(
            s.poll(*w, 10, 1).unwrap(),
            vec![TaskId(i as u64 + 1)],
            "each copy on its own worker"
        );
    }
    s.check_invariants().unwrap();
    s.complete(TaskId(1), ws[0], 2).unwrap();
    s.complete(TaskId(2), ws[1], 2).unwrap();
    assert_eq!(
        s.task(join).map(|t| t.state),
        Some(TaskState::Scheduled),
        "waits for the last copy"
    );
    s.complete(TaskId(3), ws[2], 3).unwrap();
    assert!(
        s.task(join).is_none(),
        "the join succeeded with its last copy"
    );
    s.check_invariants().unwrap();
}

#[test]
fn a_copy_whose_worker_is_gone_is_dead_and_fails_its_join() {
    let mut s = scheduler(1);
    let a = worker(&mut s, 5, 1, &[]);
    let b = worker(&mut s, 5, 1, &[]);
    for (id, w) in [(1, a), (2, b)] {
        s.submit(
            TaskId(id),
            TaskSpec {
                pinned: Some(w),
                ..spec(Strategy::RoundRobin)
            },
            (),
            1,
        )
        .unwrap();
    }
    let join = TaskId(10);
    s.submit(
        join,
        TaskSpec {
            join: true,
            ..TaskSpec::new("job")
        },
        (),
        1,
    )
    .unwrap();
    s.hold_for_parents(join, &[TaskId(1), TaskId(2)]).unwrap();
    s.drain_events();
    s.deregister(b, 2).unwrap();
    let ended: Vec<(TaskId, TaskState, Option<String>)> = s
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Transition(t) if t.state.is_terminal() => Some((t.task, t.state, t.error)),
            _ => None,
        })
        .collect();
    assert_eq!(ended[0].0, TaskId(2));
    assert_eq!(ended[0].1, TaskState::Dead);
    assert_eq!(ended[1].0, join);
    assert_eq!(ended[1].2.as_deref(), Some("task 2 ended dead"));
    // A copy for a worker that left before it was admitted dies at once.
    s.submit(
        TaskId(20),
        TaskSpec {
            pinned: Some(b),
            ..spec(Strategy::RoundRobin)
        },
        (),
        3,
    )
    .unwrap();
    assert!(s.task(TaskId(20)).is_none());
    s.check_invariants().unwrap();
}
