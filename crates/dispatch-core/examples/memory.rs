//! Bytes the core holds per queued task.
//!
//! Submits 1,000,000 tasks (each spec built the way the server builds one,
//! with its own type and queue strings) to a scheduler with 1,000 workers
//! and a 16-byte body, and reports the heap the scheduler holds per task,
//! counted by a tracking global allocator, and the process's resident set
//! size (Linux). Run it with
//! `cargo run --release -p dispatch-core --example memory [TASKS]`.

use std::alloc::System;
use std::sync::Arc;

use cap::Cap;
use dispatch_core::{Config, Scheduler, Strategy, Task, TaskId, TaskSpec, WorkerSpec};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// A stand-in for the server's body: a small payload kept beside the task.
type Body = [u64; 2];

/// The resident set size in bytes, where `/proc` tells it.
fn rss() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn main() {
    let tasks: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let keys: Vec<Arc<str>> = (0..10_000)
        .map(|i| Arc::from(format!("customer-{i}")))
        .collect();
    let base_heap = ALLOCATOR.allocated();
    let base_rss = rss();
    let mut sched: Scheduler<Body> = Scheduler::new(Config::default(), 1);
    for i in 0..1_000 {
        sched.register_worker(WorkerSpec::new(&format!("worker-{i}"), ["email"], 4), 0);
    }
    for i in 0..tasks {
        let mut spec = TaskSpec::new("email");
        // Every tenth task carries a routing key, as hashed routing would.
        if i % 10 == 0 {
            spec.strategy = Strategy::ConsistentHash;
            spec.routing_key = Some(keys[i as usize % keys.len()].clone());
        }
        sched
            .submit(TaskId(i), spec, [i; 2], 0)
            .expect("fresh task id");
    }
    let heap = ALLOCATOR.allocated() - base_heap;
    println!("tasks queued:            {tasks}");
    println!(
        "size_of::<Task<Body>>(): {} bytes",
        std::mem::size_of::<Task<Body>>()
    );
    println!(
        "heap held by the core:   {:.1} MiB, {:.0} bytes per task",
        heap as f64 / (1 << 20) as f64,
        heap as f64 / tasks as f64
    );
    if let (Some(before), Some(after)) = (base_rss, rss()) {
        println!(
            "resident set growth:     {:.1} MiB, {:.0} bytes per task",
            (after - before) as f64 / (1 << 20) as f64,
            (after - before) as f64 / tasks as f64
        );
    }
    println!("live tasks:              {}", sched.live_tasks());
}
