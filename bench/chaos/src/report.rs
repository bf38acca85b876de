//! The chaos run's report: a table for people, JSON for scripts, and the
//! verdict.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::analysis::Findings;

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
    /// From the first submission until every acknowledged task was
    /// acknowledged.
    pub(crate) submit_time: Duration,
    /// From the first submission until the server held no live task.
    pub(crate) drain_time: Duration,
}

/// Examples printed of each kind of failure.
const EXAMPLES: usize = 10;

impl Report {
    /// True when nothing acknowledged was lost and every duplicate is
    /// explained.
    pub(crate) fn passed(&self) -> bool {
        self.acknowledged == self.tasks
            && self.lost.is_empty()
            && self.findings.unexplained.is_empty()
            && self.findings.unlogged.is_empty()
    }

    fn terminal_total(&self) -> u64 {
        self.terminal.values().sum()
    }

    pub(crate) fn to_json(&self) -> Value {
        let f = &self.findings;
        json!({
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
        println!("  server SIGKILLs     {}", self.server_kills);
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
            "  duplicate runs      {} ({} after a worker SIGKILL, {} after a server SIGKILL, {} unexplained)",
            f.duplicates,
            f.explained_worker_kill,
            f.explained_server_kill,
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
