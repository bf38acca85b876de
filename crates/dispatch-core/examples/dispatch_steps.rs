//! Runs one benchmark scenario for a number of steady-state steps and
//! prints the assignments made, for instruction counts under callgrind:
//!
//! ```text
//! cargo build --release -p dispatch-core --example dispatch_steps
//! valgrind --tool=callgrind --toggle-collect='*Bench*tick*' \
//!     target/release/examples/dispatch_steps least_loaded 100000 2000
//! ```
//!
//! Callgrind's total (`Ir` in the `summary` line) divided by the printed
//! assignments is instructions per assignment. Arguments: scenario name
//! (see `benches/support`), tasks queued, steps.

#[path = "../benches/support/mod.rs"]
mod support;

use support::{Bench, SCENARIOS};

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "round_robin".to_owned());
    let tasks: usize = args
        .next()
        .map_or(Ok(100_000), |a| a.parse())
        .map_err(|e| format!("tasks: {e}"))?;
    let steps: u64 = args
        .next()
        .map_or(Ok(2_000), |a| a.parse())
        .map_err(|e| format!("steps: {e}"))?;
    let scenario = SCENARIOS
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
            format!("no scenario {name}; one of {}", names.join(", "))
        })?;
    let mut bench = Bench::new(scenario, tasks);
    let mut assigned = 0;
    let mut spent = std::time::Duration::ZERO;
    for _ in 0..steps {
        let (t, n) = bench.step();
        spent += t;
        assigned += n;
    }
    println!(
        "{name}: {assigned} assignments in {steps} steps, {:.0} ns per assignment",
        spent.as_nanos() as f64 / assigned.max(1) as f64
    );
    Ok(())
}
