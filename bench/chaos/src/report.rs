//! The chaos run's report: a table for people, JSON for scripts, and the
//! verdict.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::analysis::Findings;

/// The replicas mode: the leader's strikes and the takeovers.
pub(crate) struct Replicas {
    pub(crate) count: usize,
    pub(crate) leader_lease_ms: u64,
    pub(crate) sigkills: u32,
    pub(crate) sigstops: u32,
    /// How long a SIGSTOP lasts.
    pub(crate) stop_ms: u64,
    /// Per strike: from the kill or stop to the first `/healthz` of another
    /// replica leading at a higher epoch (`None`: no takeover while frozen).
    pub(crate) takeovers: Vec<Option<Duration>>,
}

impl Replicas {
    /// The takeovers measured, sorted.
    fn measured(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self.takeovers.iter().flatten().copied().collect();
        t.sort();
        t
    }

    fn median(&self) -> Option<Duration> {
        let t = self.measured();
        match t.len() {
            0 => None,
            n if n % 2 == 1 => Some(t[n / 2]),
            n => Some((t[n / 2 - 1] + t[n / 2]) / 2),
        }
    }

    fn max(&self) -> Option<Duration> {
        self.measured().last().copied()
    }

    fn missing(&self) -> usize {
        self.takeovers.iter().filter(|t| t.is_none()).count()
    }
}

/// How a takeover is timed, for the report.
const TAKEOVER_MEASURE: &str = "from the leader's SIGKILL or SIGSTOP to the first /healthz of another replica leading at a higher epoch";

/// Everything the chaos run measured.
pub(crate) struct Report {
    pub(crate) seed: u64,
    pub(crate) tasks: u64,
    pub(crate) http_workers: usize,
    pub(crate) grpc_workers: usize,
    pub(crate) durability: String,
    pub(crate) acknowledged: u64,
    pub(crate) submit_retries: u64,
    /// Acknowledged tasks found terminal, by state.
    pub(crate) terminal: BTreeMap<String, u64>,
    /// Acknowledged tasks missing or not terminal, described.
    pub(crate) lost: Vec<String>,
    pub(crate) findings: Findings,
    pub(crate) worker_kills: u32,
    pub(crate) server_kills: u32,
    /// With `--store postgres`.
    pub(crate) replicas: Option<Replicas>,
    /// From the first submission until every acknowledged task was
    /// acknowledged.
    pub(crate) submit_time: Duration,
    /// From the first submission until the server held no live task.
    pub(crate) drain_time: Duration,
}

/// Examples printed of each kind of failure.
const EXAMPLES: usize = 10;

impl Report {
    /// True when nothing acknowledged was lost, every duplicate is
    /// explained, and every strike of the leader led to a takeover.
    pub(crate) fn passed(&self) -> bool {
        self.acknowledged == self.tasks
            && self.lost.is_empty()
            && self.findings.unexplained.is_empty()
            && self.findings.unlogged.is_empty()
            && self.replicas.as_ref().is_none_or(|r| r.missing() == 0)
    }

    fn terminal_total(&self) -> u64 {
        self.terminal.values().sum()
    }

    pub(crate) fn to_json(&self) -> Value {
        let f = &self.findings;
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        let replicas = self.replicas.as_ref().map(|r| {
            json!({
                "replicas": r.count,
                "leader_lease_ms": r.leader_lease_ms,
                "leader_sigkills": r.sigkills,
                "leader_sigstops": r.sigstops,
                "sigstop_ms": r.stop_ms,
                "takeover_ms": {
                    "median": ms(r.median()),
                    "max": ms(r.max()),
                    "each": r.takeovers.iter().map(|t| ms(*t)).collect::<Vec<_>>(),
                    "none_while_frozen": r.missing(),
                    "measured": TAKEOVER_MEASURE,
                },
            })
        });
        json!({
            "store": if self.replicas.is_some() { "postgres" } else { "embedded" },
            "cluster": replicas,
            "passed": self.passed(),
            "seed": self.seed,
            "tasks": self.tasks,
            "durability": self.durability,
            "workers": { "http": self.http_workers, "grpc": self.grpc_workers },
            "acknowledged": self.acknowledged,
            "submit_retries": self.submit_retries,
            "terminal": self.terminal_total(),
            "terminal_by_state": self.terminal,
            "lost": self.lost.len(),
            "lost_examples": &self.lost[..self.lost.len().min(EXAMPLES)],
            "handlers_started": f.started,
            "executions": f.executions,
            "tasks_executed": f.tasks_executed,
            "duplicate_executions": f.duplicates,
            "explained_by_worker_kill": f.explained_worker_kill,
            "explained_by_server_kill": f.explained_server_kill,
            "explained_by_leader_kill": f.explained_leader_kill,
            "unexplained": f.unexplained.len(),
            "unexplained_examples": &f.unexplained[..f.unexplained.len().min(EXAMPLES)],
            "unlogged_results": f.unlogged.len(),
            "unlogged_examples": &f.unlogged[..f.unlogged.len().min(EXAMPLES)],
            "worker_kills": self.worker_kills,
            "server_kills": self.server_kills,
            "submit_secs": self.submit_time.as_secs_f64(),
            "drain_secs": self.drain_time.as_secs_f64(),
        })
    }

    pub(crate) fn print_table(&self) {
        let f = &self.findings;
        let by_state: Vec<String> = self
            .terminal
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        println!("Dispatch chaos run (seed {})", self.seed);
        println!(
            "  tasks               {} ({} mode; {} HTTP + {} gRPC worker processes)",
            self.tasks, self.durability, self.http_workers, self.grpc_workers
        );
        println!("  worker SIGKILLs     {}", self.worker_kills);
        match &self.replicas {
            None => println!("  server SIGKILLs     {}", self.server_kills),
            Some(r) => {
                let ms =
                    |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_millis().to_string());
                println!(
                    "  replicas            {} on PostgreSQL (leader lease {} ms)",
                    r.count, r.leader_lease_ms
                );
                println!(
                    "  leader strikes      {} SIGKILL (restarted), {} SIGSTOP ({} ms, then SIGCONT)",
                    r.sigkills, r.sigstops, r.stop_ms
                );
                println!(
                    "  takeover            median {} ms, max {} ms ({} of {} without one); {}",
                    ms(r.median()),
                    ms(r.max()),
                    r.missing(),
                    r.takeovers.len(),
                    TAKEOVER_MEASURE
                );
            }
        }
        println!(
            "  acknowledged        {} ({} batch attempts retried)",
            self.acknowledged, self.submit_retries
        );
        println!(
            "  terminal            {} ({})",
            self.terminal_total(),
            by_state.join(", ")
        );
        println!("  lost                {}", self.lost.len());
        println!(
            "  executions          {} finished of {} started, for {} tasks",
            f.executions, f.started, f.tasks_executed
        );
        println!(
            "  duplicate runs      {} ({} after a worker SIGKILL, {} after a server SIGKILL, \
             {} on gRPC after a leader strike, {} unexplained)",
            f.duplicates,
            f.explained_worker_kill,
            f.explained_server_kill,
            f.explained_leader_kill,
            f.unexplained.len()
        );
        println!("  unlogged results    {}", f.unlogged.len());
        println!(
            "  time                {:.1} s to acknowledge, {:.1} s to drain",
            self.submit_time.as_secs_f64(),
            self.drain_time.as_secs_f64()
        );
        let examples = [
            ("lost", &self.lost),
            ("unexplained duplicate", &f.unexplained),
            ("unlogged result", &f.unlogged),
        ];
        for (what, list) in examples {
            for line in list.iter().take(EXAMPLES) {
                println!("  {what}: {line}");
            }
        }
        println!(
            "  verdict             {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
    }
}
