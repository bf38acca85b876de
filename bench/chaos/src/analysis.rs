//! What the execution logs say, against the kills and the final tasks.
//!
//! An *execution* is a handler that finished its work (a `D` line). A task
//! executed `n > 1` times has `n - 1` duplicates: every finished execution
//! but the last one started. Each is *explained* when its result could
//! have been lost by at-least-once delivery: between its start and the
//! start of the task's next attempt, the worker running it was SIGKILLed,
//! or the server was. A server kill counts from [`DELIVERY_SLACK_US`] before
//! the start: a task handed out just before the kill starts just after it.
//! With replicas, a SIGKILL or SIGSTOP of the leader explains a duplicate
//! the same way, but only on a gRPC worker: its stream ends with the old
//! leader and the new one requeues its tasks, whereas an HTTP worker keeps
//! its tasks across a takeover. Anything else is *unexplained* (a bug).
//!
//! A succeeded task's result names the process and attempt that produced
//! it; a result with no matching `D` line is *unlogged* (also a bug: the
//! server kept a result no handler produced).

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use crate::execlog::{Mark, Record};

/// How long before a handler's start its task may have been handed out.
pub(crate) const DELIVERY_SLACK_US: u64 = 250_000;

/// The kills, by time.
#[derive(Default)]
pub(crate) struct Kills {
    /// SIGKILL time of each killed worker process, by pid.
    pub(crate) workers: HashMap<u32, u64>,
    /// SIGKILL times of the server.
    pub(crate) server: Vec<u64>,
    /// SIGKILL and SIGSTOP times of the leading replica.
    pub(crate) leader: Vec<u64>,
    /// The pids of the gRPC worker processes.
    pub(crate) grpc_workers: HashSet<u32>,
}

/// A task as the server finally reports it.
pub(crate) struct FinalTask {
    pub(crate) state: String,
    /// The `{pid, attempt}` of a succeeded task's result.
    pub(crate) result: Option<ResultMark>,
}

/// What the chaos handler returns.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct ResultMark {
    pub(crate) pid: u32,
    pub(crate) attempt: u32,
}

/// The verdict on the executions.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Handlers started.
    pub(crate) started: u64,
    /// Handlers that finished their work.
    pub(crate) executions: u64,
    /// Tasks with at least one finished execution.
    pub(crate) tasks_executed: u64,
    /// Finished executions beyond the first, per task.
    pub(crate) duplicates: u64,
    /// Duplicates whose worker was SIGKILLed in the window.
    pub(crate) explained_worker_kill: u64,
    /// Duplicates with a server SIGKILL in the window (and no worker kill).
    pub(crate) explained_server_kill: u64,
    /// Duplicates on a gRPC worker with a leader SIGKILL or SIGSTOP in the
    /// window (and no other kill).
    pub(crate) explained_leader_kill: u64,
    /// Duplicates with no kill to explain them, described.
    pub(crate) unexplained: Vec<String>,
    /// Succeeded tasks whose result matches no finished execution.
    pub(crate) unlogged: Vec<String>,
}

/// Classifies every execution in `records`.
pub(crate) fn analyse(
    records: &[Record],
    kills: &Kills,
    tasks: &HashMap<String, FinalTask>,
) -> Findings {
    let mut f = Findings::default();
    let mut by_task: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in records {
        match r.mark {
            Mark::Start => f.started += 1,
            Mark::Done => f.executions += 1,
        }
        by_task.entry(&r.task).or_default().push(r);
    }
    for (task, recs) in &by_task {
        let mut starts: Vec<&Record> = recs
            .iter()
            .copied()
            .filter(|r| r.mark == Mark::Start)
            .collect();
        starts.sort_by_key(|r| r.at_us);
        let started_at = |d: &Record| {
            starts
                .iter()
                .find(|s| s.pid == d.pid && s.attempt == d.attempt)
                .map_or(d.at_us, |s| s.at_us)
        };
        let mut dones: Vec<(u64, &Record)> = recs
            .iter()
            .copied()
            .filter(|r| r.mark == Mark::Done)
            .map(|d| (started_at(d), d))
            .collect();
        dones.sort_by_key(|(s, _)| *s);
        if !dones.is_empty() {
            f.tasks_executed += 1;
        }
        for (start, done) in dones.iter().take(dones.len().saturating_sub(1)) {
            f.duplicates += 1;
            let next = starts
                .iter()
                .map(|s| s.at_us)
                .find(|t| *t > *start)
                .unwrap_or(u64::MAX);
            let window = *start..=next;
            if kills
                .workers
                .get(&done.pid)
                .is_some_and(|t| window.contains(t))
            {
                f.explained_worker_kill += 1;
            } else if kills
                .server
                .iter()
                .any(|t| (start.saturating_sub(DELIVERY_SLACK_US)..=next).contains(t))
            {
                f.explained_server_kill += 1;
            } else if kills.grpc_workers.contains(&done.pid)
                && kills
                    .leader
                    .iter()
                    .any(|t| (start.saturating_sub(DELIVERY_SLACK_US)..=next).contains(t))
            {
                f.explained_leader_kill += 1;
            } else {
                let nearest = kills
                    .server
                    .iter()
                    .chain(&kills.leader)
                    .chain(kills.workers.get(&done.pid))
                    .map(|t| *t as i64 - *start as i64)
                    .min_by_key(|d| d.unsigned_abs());
                f.unexplained.push(format!(
                    "task {task}: attempt {} on pid {} started at {start} µs and finished; \
                     next start at {next} µs, no kill in between (nearest kill at {} µs from its start)",
                    done.attempt,
                    done.pid,
                    nearest.map_or("none".to_owned(), |d| format!("{d:+}"))
                ));
            }
        }
    }
    for (id, t) in tasks {
        let Some(mark) = t.result else { continue };
        let logged = by_task.get(id.as_str()).is_some_and(|recs| {
            recs.iter()
                .any(|r| r.mark == Mark::Done && r.pid == mark.pid && r.attempt == mark.attempt)
        });
        if !logged {
            f.unlogged.push(format!(
                "task {id} ({}): result of pid {} attempt {} matches no finished execution",
                t.state, mark.pid, mark.attempt
            ));
        }
    }
    f.unexplained.sort();
    f.unlogged.sort();
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(mark: Mark, task: &str, attempt: u32, pid: u32, at_us: u64) -> Record {
        Record {
            mark,
            task: task.to_owned(),
            attempt,
            pid,
            at_us,
        }
    }

    fn succeeded(pid: u32, attempt: u32) -> FinalTask {
        FinalTask {
            state: "succeeded".into(),
            result: Some(ResultMark { pid, attempt }),
        }
    }

    #[test]
    fn a_duplicate_is_explained_by_its_worker_kill_or_a_server_kill_only_in_its_window() {
        let records = vec![
            // t1: done on pid 10, which is killed before the report lands.
            rec(Mark::Start, "t1", 1, 10, 100),
            rec(Mark::Done, "t1", 1, 10, 110),
            rec(Mark::Start, "t1", 2, 20, 300),
            rec(Mark::Done, "t1", 2, 20, 310),
            // t2: done on pid 30 while the server is killed.
            rec(Mark::Start, "t2", 1, 30, 100),
            rec(Mark::Done, "t2", 1, 30, 150),
            rec(Mark::Start, "t2", 1, 40, 400),
            rec(Mark::Done, "t2", 1, 40, 410),
            // t3: run twice with no kill in its window.
            rec(Mark::Start, "t3", 1, 30, 1_000_000),
            rec(Mark::Done, "t3", 1, 30, 1_000_010),
            rec(Mark::Start, "t3", 2, 40, 1_100_000),
            rec(Mark::Done, "t3", 2, 40, 1_100_010),
            // t5: handed out just before the server kill, started after it.
            rec(Mark::Start, "t5", 1, 30, 260),
            rec(Mark::Done, "t5", 1, 30, 270),
            rec(Mark::Start, "t5", 1, 40, 900),
            rec(Mark::Done, "t5", 1, 40, 910),
            // t4: started on a killed worker, finished once elsewhere.
            rec(Mark::Start, "t4", 1, 10, 100),
            rec(Mark::Start, "t4", 2, 20, 300),
            rec(Mark::Done, "t4", 2, 20, 320),
        ];
        let kills = Kills {
            workers: HashMap::from([(10, 200)]),
            server: vec![250],
            ..Kills::default()
        };
        let tasks = HashMap::from([
            ("t1".to_owned(), succeeded(20, 2)),
            ("t2".to_owned(), succeeded(40, 1)),
            ("t3".to_owned(), succeeded(40, 2)),
            ("t4".to_owned(), succeeded(20, 2)),
            ("t5".to_owned(), succeeded(40, 1)),
        ]);
        let f = analyse(&records, &kills, &tasks);
        assert_eq!(f.started, 10);
        assert_eq!(f.executions, 9);
        assert_eq!(f.tasks_executed, 5);
        assert_eq!(f.duplicates, 4);
        assert_eq!(f.explained_worker_kill, 1);
        assert_eq!(f.explained_server_kill, 2);
        assert_eq!(f.unexplained.len(), 1);
        assert!(f.unexplained[0].starts_with("task t3:"));
        assert!(f.unlogged.is_empty());
    }

    #[test]
    fn a_leader_kill_explains_a_duplicate_only_on_a_grpc_worker() {
        let records = vec![
            // t1: on gRPC worker 30 when the leader is killed.
            rec(Mark::Start, "t1", 1, 30, 100),
            rec(Mark::Done, "t1", 1, 30, 150),
            rec(Mark::Start, "t1", 1, 40, 400),
            rec(Mark::Done, "t1", 1, 40, 410),
            // t2: on HTTP worker 50 at the same time: it keeps its task.
            rec(Mark::Start, "t2", 1, 50, 100),
            rec(Mark::Done, "t2", 1, 50, 150),
            rec(Mark::Start, "t2", 2, 40, 400),
            rec(Mark::Done, "t2", 2, 40, 410),
        ];
        let kills = Kills {
            leader: vec![200],
            grpc_workers: HashSet::from([30, 40]),
            ..Kills::default()
        };
        let tasks = HashMap::from([
            ("t1".to_owned(), succeeded(40, 1)),
            ("t2".to_owned(), succeeded(40, 2)),
        ]);
        let f = analyse(&records, &kills, &tasks);
        assert_eq!(f.duplicates, 2);
        assert_eq!(f.explained_leader_kill, 1);
        assert_eq!(f.unexplained.len(), 1);
        assert!(f.unexplained[0].starts_with("task t2:"));
    }

    #[test]
    fn a_result_no_handler_produced_is_unlogged() {
        let records = vec![
            rec(Mark::Start, "t1", 1, 10, 100),
            rec(Mark::Done, "t1", 1, 10, 110),
        ];
        let tasks = HashMap::from([
            ("t1".to_owned(), succeeded(10, 2)),
            (
                "t2".to_owned(),
                FinalTask {
                    state: "dead".into(),
                    result: None,
                },
            ),
        ]);
        let f = analyse(&records, &Kills::default(), &tasks);
        assert_eq!(f.duplicates, 0);
        assert_eq!(f.unlogged.len(), 1);
        assert!(f.unlogged[0].starts_with("task t1 "));
    }
}
