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

mod support;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use support::{Bench, SCENARIOS};

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
