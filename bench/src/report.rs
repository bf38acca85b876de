//! The machine, the figures, and their table and JSON forms.

use std::time::Duration;

use serde_json::{Value, json};

use crate::Sent;

/// The machine the benchmark ran on.
pub(crate) struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
}

impl Machine {
    /// Reads the CPU model, core count and kernel release (Linux).
    pub(crate) fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        Machine { cpu, cores, kernel }
    }

    fn line(&self) -> String {
        format!("{}, {} cores, Linux {}", self.cpu, self.cores, self.kernel)
    }
}

/// Counts summed over the worker processes.
#[derive(Default)]
pub(crate) struct WorkerTotals {
    pub(crate) completed: u64,
    pub(crate) conflicts: u64,
    polls: u64,
    busy_polls: u64,
    noop_polls: u64,
    noop_completed: u64,
}

impl WorkerTotals {
    /// Adds one worker's report.
    pub(crate) fn add(&mut self, v: &Value) {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        self.completed += n("completed");
        self.conflicts += n("conflicts");
        self.polls += n("polls");
        self.busy_polls += n("busy_polls");
        self.noop_polls += n("noop_polls");
        self.noop_completed += n("noop_completed");
    }
}

/// The open-loop latency phase.
pub(crate) struct Latency {
    rate: u64,
    seconds: u64,
    submitters: u64,
    sent: Sent,
    /// Sorted, in microseconds.
    samples: Vec<u64>,
}

impl Latency {
    pub(crate) fn new(
        rate: u64,
        seconds: u64,
        submitters: u64,
        sent: Sent,
        mut samples: Vec<u64>,
    ) -> Latency {
        samples.sort_unstable();
        Latency {
            rate,
            seconds,
            submitters,
            sent,
            samples,
        }
    }

    /// The `p` quantile (nearest rank), in milliseconds.
    fn quantile_ms(&self, p: f64) -> Option<f64> {
        quantile_of(&self.samples, p)
    }

    fn achieved_rate(&self) -> f64 {
        self.sent.tasks as f64 / self.sent.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Nearest-rank quantile of sorted microsecond samples, in milliseconds.
fn quantile_of(sorted: &[u64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    Some(sorted[rank - 1] as f64 / 1_000.0)
}

/// The sleep phase (W3): tasks that hold a slot for a while.
pub(crate) struct SleepPhase {
    pub(crate) tasks: u64,
    pub(crate) sleep_ms: u64,
    /// Workers x capacity.
    pub(crate) slots: u64,
    /// From the queue's resume until no task was live.
    pub(crate) elapsed: Duration,
    /// From the first task's start to the last one's end, as the workers
    /// stamped them.
    pub(crate) active: Option<Duration>,
}

impl SleepPhase {
    /// The time with every slot busy all along and no overhead.
    fn ideal(&self) -> Duration {
        Duration::from_millis(self.tasks * self.sleep_ms) / (self.slots.max(1) as u32)
    }
}

/// The round-trip phase (W4): submit, then wait for the result.
pub(crate) struct RoundTrips {
    elapsed: Duration,
    /// Sorted, in microseconds.
    samples: Vec<u64>,
}

impl RoundTrips {
    pub(crate) fn new(elapsed: Duration, mut samples: Vec<u64>) -> RoundTrips {
        samples.sort_unstable();
        RoundTrips { elapsed, samples }
    }
}

/// Everything measured.
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) durability: String,
    /// `sqlite`, or `postgres (1 leader, N standbys)`.
    pub(crate) store: String,
    pub(crate) tasks: u64,
    pub(crate) batch: u64,
    pub(crate) submitters: u64,
    /// Whether submissions asked for ids and states only.
    pub(crate) minimal: bool,
    pub(crate) submit: Duration,
    pub(crate) workers: u64,
    pub(crate) capacity: u64,
    /// The workers' protocol: `http` or `grpc`.
    pub(crate) transport: String,
    /// From the workers' launch until no drain task was live.
    pub(crate) drain: Duration,
    /// From the first drain task's start to the last one's end, as the
    /// workers stamped them.
    pub(crate) drain_active: Option<Duration>,
    pub(crate) latency: Latency,
    pub(crate) sleep: Option<SleepPhase>,
    pub(crate) roundtrip: Option<RoundTrips>,
    pub(crate) totals: WorkerTotals,
    pub(crate) data_bytes: u64,
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

impl Report {
    fn submit_rate(&self) -> f64 {
        per_sec(self.tasks, self.submit)
    }

    fn drain_rate(&self) -> f64 {
        per_sec(self.tasks, self.drain)
    }

    /// Drain tasks per poll that brought some.
    fn drain_tasks_per_poll(&self) -> f64 {
        self.totals.noop_completed as f64 / self.totals.noop_polls.max(1) as f64
    }

    /// Prints the figures as a two-column table.
    pub(crate) fn print_table(&self) {
        let l = &self.latency;
        let mut rows: Vec<(&str, String)> = vec![
            ("machine", self.machine.line()),
            ("store", self.store.clone()),
            ("durability", self.durability.clone()),
            ("tasks (N)", self.tasks.to_string()),
            (
                "batch size",
                format!(
                    "{} ({} concurrent submitters, {} answers)",
                    self.batch,
                    self.submitters,
                    if self.minimal { "minimal" } else { "full" }
                ),
            ),
            (
                "submit",
                format!(
                    "{:.0} tasks/s ({:.3} s)",
                    self.submit_rate(),
                    self.submit.as_secs_f64()
                ),
            ),
            (
                "drain",
                format!(
                    "{:.0} tasks/s ({:.3} s, {} workers x capacity {}, {})",
                    self.drain_rate(),
                    self.drain.as_secs_f64(),
                    self.workers,
                    self.capacity,
                    self.transport
                ),
            ),
            (
                "  from first start",
                self.drain_active.map_or_else(
                    || "-".to_owned(),
                    |d| {
                        format!(
                            "{:.0} tasks/s ({:.3} s from the first task's start to the last one's end)",
                            per_sec(self.tasks, d),
                            d.as_secs_f64()
                        )
                    },
                ),
            ),
            (
                "latency load",
                format!(
                    "{} tasks/s for {} s, open loop, 1 task per POST, <= {} in flight",
                    l.rate, l.seconds, l.submitters
                ),
            ),
            (
                "  achieved",
                format!(
                    "{:.0} tasks/s, {} sent, {} sent > 1 ms late (max {:.3} ms)",
                    l.achieved_rate(),
                    l.sent.tasks,
                    l.sent.late,
                    l.sent.max_late_us as f64 / 1_000.0
                ),
            ),
            (
                "submit-to-start ms",
                format!(
                    "p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
                    ms(l.quantile_ms(0.50)),
                    ms(l.quantile_ms(0.99)),
                    ms(l.quantile_ms(0.999)),
                    ms(l.samples.last().map(|&v| v as f64 / 1_000.0)),
                    l.samples.len()
                ),
            ),
            (
                "workers",
                format!(
                    "{} completed, {} conflicts, {} polls ({} non-empty), {:.1} drain tasks per poll",
                    self.totals.completed,
                    self.totals.conflicts,
                    self.totals.polls,
                    self.totals.busy_polls,
                    self.drain_tasks_per_poll()
                ),
            ),
            (
                "data on disk",
                format!("{:.1} MiB", self.data_bytes as f64 / (1024.0 * 1024.0)),
            ),
        ];
        if let Some(s) = &self.sleep {
            rows.push((
                "sleep",
                format!(
                    "{} tasks of {} ms on {} slots: {:.3} s (ideal {:.3} s; {} from the first start)",
                    s.tasks,
                    s.sleep_ms,
                    s.slots,
                    s.elapsed.as_secs_f64(),
                    s.ideal().as_secs_f64(),
                    s.active
                        .map_or_else(|| "-".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()))
                ),
            ));
        }
        if let Some(r) = &self.roundtrip {
            rows.push((
                "round trip ms",
                format!(
                    "p50 {}  p99 {}  p99.9 {}  ({} in {:.3} s)",
                    ms(quantile_of(&r.samples, 0.50)),
                    ms(quantile_of(&r.samples, 0.99)),
                    ms(quantile_of(&r.samples, 0.999)),
                    r.samples.len(),
                    r.elapsed.as_secs_f64()
                ),
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let rule = "-".repeat(width + 2 + rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0));
        println!("Dispatch benchmark");
        println!("{rule}");
        for (k, v) in &rows {
            println!("{k:<width$}  {v}");
        }
        println!("{rule}");
    }

    /// The figures as JSON.
    pub(crate) fn to_json(&self) -> Value {
        let l = &self.latency;
        json!({
            "machine": {
                "cpu": self.machine.cpu,
                "cores": self.machine.cores,
                "kernel": self.machine.kernel,
            },
            "store": self.store,
            "durability": self.durability,
            "tasks": self.tasks,
            "batch": self.batch,
            "submitters": self.submitters,
            "submit": {
                "seconds": self.submit.as_secs_f64(),
                "tasks_per_s": self.submit_rate(),
            },
            "drain": {
                "workers": self.workers,
                "capacity": self.capacity,
                "transport": self.transport,
                "seconds": self.drain.as_secs_f64(),
                "tasks_per_s": self.drain_rate(),
                "from_first_start": self.drain_active.map(|d| json!({
                    "seconds": d.as_secs_f64(),
                    "tasks_per_s": per_sec(self.tasks, d),
                })),
            },
            "latency": {
                "rate": l.rate,
                "seconds": l.seconds,
                "max_in_flight": l.submitters,
                "sent": l.sent.tasks,
                "achieved_rate": l.achieved_rate(),
                "late_sends": l.sent.late,
                "max_late_ms": l.sent.max_late_us as f64 / 1_000.0,
                "samples": l.samples.len(),
                "p50_ms": l.quantile_ms(0.50),
                "p99_ms": l.quantile_ms(0.99),
                "p999_ms": l.quantile_ms(0.999),
                "max_ms": l.samples.last().map(|&v| v as f64 / 1_000.0),
            },
            "workers": {
                "completed": self.totals.completed,
                "conflicts": self.totals.conflicts,
                "polls": self.totals.polls,
                "nonempty_polls": self.totals.busy_polls,
                "drain_tasks_per_poll": self.drain_tasks_per_poll(),
            },
            "sleep": self.sleep.as_ref().map(|s| json!({
                "tasks": s.tasks,
                "sleep_ms": s.sleep_ms,
                "slots": s.slots,
                "seconds": s.elapsed.as_secs_f64(),
                "ideal_seconds": s.ideal().as_secs_f64(),
                "tasks_per_s": per_sec(s.tasks, s.elapsed),
                "from_first_start": s.active.map(|d| json!({
                    "seconds": d.as_secs_f64(),
                    "tasks_per_s": per_sec(s.tasks, d),
                })),
            })),
            "roundtrip": self.roundtrip.as_ref().map(|r| json!({
                "count": r.samples.len(),
                "seconds": r.elapsed.as_secs_f64(),
                "per_s": per_sec(r.samples.len() as u64, r.elapsed),
                "p50_ms": quantile_of(&r.samples, 0.50),
                "p99_ms": quantile_of(&r.samples, 0.99),
                "p999_ms": quantile_of(&r.samples, 0.999),
            })),
            "data_bytes": self.data_bytes,
        })
    }
}
