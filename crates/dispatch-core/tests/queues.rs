//! Queues: pause, weighted fairness, priority aging, and limits. Time is
//! simulated; every step ends with the scheduler's own invariant check,
//! which includes "no limit is ever exceeded".

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::cases;
use dispatch_core::{
    Config, Event, QueueConfig, Scheduler, TaskId, TaskSpec, TaskState, TypeConfig, WorkerId,
    WorkerSpec,
};
use proptest::prelude::*;

fn scheduler(aging_ms: u64) -> Scheduler<()> {
    Scheduler::new(
        Config {
            lease_ms: 1_000_000_000,
            aging_ms,
            ..Config::default()
        },
        5,
    )
}

fn worker(s: &mut Scheduler<()>, capacity: u32) -> WorkerId {
    s.register_worker(WorkerSpec::new("w", ["job", "other"], capacity), 0)
}

fn in_queue(queue: &str) -> TaskSpec {
    TaskSpec {
        queue: Arc::from(queue),
        ..TaskSpec::new("job")
    }
}

/// Ticks, then has `w` complete everything it was handed; returns the
/// tasks started, in order.
fn step(s: &mut Scheduler<()>, w: WorkerId, now: u64) -> Vec<TaskId> {
    s.tick(now);
    let started = s.poll(w, 10_000, now).unwrap();
    s.check_invariants().unwrap();
    for t in &started {
        s.complete(*t, w, now).unwrap();
    }
    s.drain_events();
    started
}

#[test]
fn a_paused_queue_holds_its_tasks_and_others_flow() {
    let mut s = scheduler(1_000);
    let w = worker(&mut s, 10);
    s.pause_queue("bulk");
    s.submit(TaskId(1), in_queue("bulk"), (), 0).unwrap();
    s.submit(TaskId(2), in_queue("default"), (), 0).unwrap();
    assert_eq!(step(&mut s, w, 1), vec![TaskId(2)]);
    let info = s.queues();
    let bulk = info.iter().find(|q| &*q.name == "bulk").unwrap();
    assert!(bulk.paused);
    assert_eq!(bulk.queued, 1);
    s.resume_queue("bulk");
    assert_eq!(step(&mut s, w, 2), vec![TaskId(1)]);
}

#[test]
fn saturated_queues_share_workers_by_weight_within_10_percent() {
    let mut s = scheduler(1_000);
    s.configure_queue(
        "heavy",
        QueueConfig {
            weight: 3,
            ..QueueConfig::default()
        },
    );
    let w = worker(&mut s, 4);
    for i in 0..2_000 {
        let q = if i % 2 == 0 { "light" } else { "heavy" };
        s.submit(TaskId(i), in_queue(q), (), 0).unwrap();
    }
    let mut per_queue: HashMap<bool, usize> = HashMap::new();
    for now in 1..=200 {
        for t in step(&mut s, w, now) {
            *per_queue.entry(t.0 % 2 == 1).or_default() += 1;
        }
    }
    let (heavy, light) = (per_queue[&true] as f64, per_queue[&false] as f64);
    // Stride scheduling is exact over every cycle of 3 + 1 starts: at most
    // one cycle's worth is off at the end.
    let exact = 0.75 * (heavy + light);
    assert!(
        (heavy - exact).abs() <= 3.0,
        "heavy got {heavy} of {} starts, {exact} expected",
        heavy + light
    );
}

#[test]
fn aging_lets_a_low_priority_task_overtake_a_stream_of_high_ones() {
    // One slot, a new priority-100 task every 10 ms: without aging the
    // priority -100 task would never run. With 1 ms per priority point it
    // runs once it has waited about 200 ms more than the newest arrival.
    let mut s = scheduler(1);
    let w = worker(&mut s, 1);
    let low = TaskId(1_000_000);
    s.submit(
        low,
        TaskSpec {
            priority: -100,
            ..TaskSpec::new("job")
        },
        (),
        0,
    )
    .unwrap();
    let mut ran_at = None;
    for i in 0..1_000u64 {
        let now = i * 10;
        s.submit(
            TaskId(i),
            TaskSpec {
                priority: 100,
                ..TaskSpec::new("job")
            },
            (),
            now,
        )
        .unwrap();
        if step(&mut s, w, now).contains(&low) {
            ran_at = Some(now);
            break;
        }
    }
    let ran_at = ran_at.expect("the low-priority task starved");
    assert!((190..=230).contains(&ran_at), "ran at {ran_at} ms");
}

#[test]
fn equal_waits_keep_priority_order_then_submission_order() {
    let mut s = scheduler(1_000);
    for (id, p) in [(1, 0), (2, 10), (3, -5), (4, 10)] {
        s.submit(
            TaskId(id),
            TaskSpec {
                priority: p,
                ..TaskSpec::new("job")
            },
            (),
            0,
        )
        .unwrap();
    }
    let w = worker(&mut s, 1);
    let order: Vec<u64> = (1..=4)
        .flat_map(|now| step(&mut s, w, now))
        .map(|t| t.0)
        .collect();
    assert_eq!(order, vec![2, 4, 1, 3]);
}

#[test]
fn a_rate_limit_spaces_starts_and_wakes_the_scheduler_for_the_next_token() {
    let mut s = scheduler(1_000);
    s.configure_queue(
        "mail",
        QueueConfig {
            rate_per_sec: Some(10.0),
            burst: Some(2),
            ..QueueConfig::default()
        },
    );
    let w = worker(&mut s, 100);
    for i in 0..50 {
        s.submit(TaskId(i), in_queue("mail"), (), 0).unwrap();
    }
    assert_eq!(step(&mut s, w, 0).len(), 2, "the burst");
    assert_eq!(s.next_deadline(), Some(100), "the next token");
    let mut started = 2;
    for now in (5..=1_000).step_by(5) {
        started += step(&mut s, w, now).len();
    }
    assert_eq!(started, 12, "2 at once, then 10 per second");
}

#[test]
fn concurrency_caps_hold_per_queue_per_type_and_per_key() {
    let mut s = scheduler(1_000);
    s.configure_queue(
        "capped",
        QueueConfig {
            max_running: Some(2),
            max_per_key: Some(1),
            ..QueueConfig::default()
        },
    );
    s.configure_type(
        "other",
        TypeConfig {
            max_running: Some(1),
            ..TypeConfig::default()
        },
    );
    let w = worker(&mut s, 100);
    let keyed = |key: &str| TaskSpec {
        routing_key: Some(Arc::from(key)),
        ..in_queue("capped")
    };
    s.submit(TaskId(1), keyed("a"), (), 0).unwrap();
    s.submit(TaskId(2), keyed("a"), (), 0).unwrap();
    s.submit(TaskId(3), keyed("b"), (), 0).unwrap();
    s.submit(TaskId(4), keyed("c"), (), 0).unwrap();
    for i in 10..13 {
        s.submit(TaskId(i), TaskSpec::new("other"), (), 0).unwrap();
    }
    s.tick(1);
    s.check_invariants().unwrap();
    let mut started: Vec<u64> = s.poll(w, 100, 1).unwrap().iter().map(|t| t.0).collect();
    started.sort();
    // Queue cap 2 with one per key: 1 (a) and 3 (b); 2 waits for key a.
    // Type "other" runs one at a time.
    assert_eq!(started, vec![1, 3, 10]);
    s.complete(TaskId(1), w, 2).unwrap();
    s.tick(2);
    let next: Vec<u64> = s.poll(w, 100, 2).unwrap().iter().map(|t| t.0).collect();
    assert_eq!(
        next,
        vec![2],
        "key a is free again; the queue is at its cap"
    );
    s.check_invariants().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    /// Whatever the limits and the load, no limit is exceeded, and with
    /// workers that keep completing every task ends.
    #[test]
    fn limits_hold_and_everything_drains(
        max_running in proptest::option::of(1u32..4),
        max_per_key in proptest::option::of(1u32..3),
        rate in proptest::option::of(1.0f64..50.0),
        type_cap in proptest::option::of(1u32..3),
        pause_until in 0u64..300,
        tasks in proptest::collection::vec((0usize..3, 0u8..4, -100i8..=100), 1..80),
    ) {
        let mut s = scheduler(10);
        s.configure_queue("q0", QueueConfig { max_running, max_per_key, rate_per_sec: rate, ..QueueConfig::default() });
        s.configure_queue("q1", QueueConfig { weight: 2, ..QueueConfig::default() });
        s.configure_type("other", TypeConfig { max_running: type_cap, ..TypeConfig::default() });
        s.pause_queue("q2");
        let w = worker(&mut s, 3);
        for (i, (q, key, priority)) in tasks.iter().enumerate() {
            let spec = TaskSpec {
                queue: Arc::from(format!("q{q}").as_str()),
                routing_key: Some(Arc::from(format!("k{key}").as_str())),
                priority: *priority,
                ..TaskSpec::new(if i % 3 == 0 { "other" } else { "job" })
            };
            s.submit(TaskId(i as u64), spec, (), 0).unwrap();
        }
        let mut ended = 0;
        let mut now = 0;
        while ended < tasks.len() && now < 100_000 {
            now += 10;
            if now >= pause_until {
                s.resume_queue("q2");
            }
            s.tick(now);
            s.check_invariants().map_err(TestCaseError::fail)?;
            for t in s.poll(w, 100, now).unwrap() {
                s.complete(t, w, now).unwrap();
            }
            ended += s.drain_events().iter().filter(|e| matches!(e, Event::Transition(t) if t.state == TaskState::Succeeded)).count();
        }
        prop_assert_eq!(ended, tasks.len(), "not everything drained by {}", now);
    }
}
