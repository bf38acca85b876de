//! Human-readable tables and JSON output.

use dispatch_proto::{QueueList, ScheduleList, TaskJson, TaskList, WorkerList};

/// Prints a value as pretty JSON.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows as a table with a header, columns padded to fit.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// One task as `key: value` lines: every field of the API's task.
pub(crate) fn print_task(t: &TaskJson) {
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".to_owned());
    let b = &t.backoff;
    let ms = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
    let mut lines: Vec<(&str, String)> = vec![
        ("id", t.id.clone()),
        ("type", t.kind.clone()),
        ("queue", t.queue.clone()),
        ("state", t.state.clone()),
        ("priority", t.priority.to_string()),
        ("attempts", format!("{}/{}", t.attempts, t.max_attempts)),
        ("worker", opt(&t.worker_id)),
        ("strategy", opt(&t.strategy)),
        ("routing_key", opt(&t.routing_key)),
        ("labels", labels_full(&t.labels)),
        (
            "depends_on",
            if t.depends_on.is_empty() {
                "-".to_owned()
            } else {
                t.depends_on.join(", ")
            },
        ),
        ("run_at", opt(&t.run_at)),
        (
            "timeout",
            t.timeout_ms
                .map_or_else(|| "-".to_owned(), |v| format!("{v} ms")),
        ),
        (
            "backoff",
            format!(
                "initial {}, max {}, multiplier {}",
                ms(b.initial_ms),
                ms(b.max_ms),
                b.multiplier
                    .map_or_else(|| "-".to_owned(), |m| m.to_string())
            ),
        ),
        ("idempotency_key", opt(&t.idempotency_key)),
    ];
    if let (Some(i), Some(n)) = (t.shard_index, t.shard_total) {
        lines.push(("shard", format!("{i} of {n} (index from 0)")));
    }
    if let Some(w) = &t.pinned_worker_id {
        lines.push(("pinned_worker", w.clone()));
    }
    lines.extend([
        ("created_at", t.created_at.clone()),
        ("started_at", opt(&t.started_at)),
        ("finished_at", opt(&t.finished_at)),
        ("payload", t.payload.get().to_owned()),
        (
            "result",
            t.result
                .as_ref()
                .map_or_else(|| "-".to_owned(), |r| r.get().to_owned()),
        ),
        ("error", opt(&t.error)),
    ]);
    for (k, v) in lines {
        println!("{:<16} {v}", format!("{k}:"));
    }
}

/// Labels as `k=v, k=v`, or `-`, in full.
fn labels_full(l: &std::collections::BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "-".to_owned();
    }
    let pairs: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(", ")
}

/// A fire time (RFC 3339, UTC) in the IANA zone `tz`, with its offset
/// (`2026-03-09T02:30:00-04:00`); the UTC text when either does not parse.
pub(crate) fn local_time(utc: &str, tz: &str) -> String {
    let Ok(at) = chrono::DateTime::parse_from_rfc3339(utc) else {
        return utc.to_owned();
    };
    let Ok(zone) = tz.parse::<chrono_tz::Tz>() else {
        return utc.to_owned();
    };
    at.with_timezone(&zone)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// A fire time for people: UTC, and the schedule's own zone beside it
/// unless that is UTC.
pub(crate) fn fire_time(utc: &str, tz: &str) -> String {
    if tz == "UTC" {
        utc.to_owned()
    } else {
        format!("{utc} ({} {tz})", local_time(utc, tz))
    }
}

/// A page of tasks as a table.
pub(crate) fn print_tasks(page: &TaskList) {
    let rows: Vec<Vec<String>> = page
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.kind.clone(),
                t.queue.clone(),
                t.state.clone(),
                t.priority.to_string(),
                format!("{}/{}", t.attempts, t.max_attempts),
                t.created_at.clone(),
                short(t.error.as_deref().unwrap_or(""), 40),
            ]
        })
        .collect();
    print_table(
        &[
            "id", "type", "queue", "state", "prio", "attempts", "created", "error",
        ],
        &rows,
    );
    if let Some(c) = &page.next_cursor {
        println!("(more: --cursor {c})");
    }
}

/// Workers as a table.
pub(crate) fn print_workers(list: &WorkerList) {
    let rows: Vec<Vec<String>> = list
        .workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.name.clone(),
                w.types.join(","),
                format!("{}/{}", w.in_flight, w.capacity),
                w.weight.to_string(),
                labels(&w.labels),
                w.completed.to_string(),
                w.failed.to_string(),
                w.state.clone(),
                w.last_seen_at.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "id",
            "name",
            "types",
            "in_flight",
            "weight",
            "labels",
            "done",
            "failed",
            "state",
            "last_seen",
        ],
        &rows,
    );
}

/// Labels as `k=v,k=v`, or `-`.
fn labels(l: &std::collections::BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "-".to_owned();
    }
    let pairs: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    short(&pairs.join(","), 40)
}

/// Queues as a table.
pub(crate) fn print_queues(list: &QueueList) {
    let rows: Vec<Vec<String>> = list
        .queues
        .iter()
        .map(|q| {
            let mut limits = Vec::new();
            if let Some(n) = q.max_running {
                limits.push(format!("running<={n}"));
            }
            if let Some(r) = q.rate_per_sec {
                let burst = q.burst.map(|b| format!(" burst {b}")).unwrap_or_default();
                limits.push(format!("{r}/s{burst}"));
            }
            if let Some(n) = q.max_per_key {
                limits.push(format!("per_key<={n}"));
            }
            let c = &q.counts;
            vec![
                q.name.clone(),
                if q.paused { "yes" } else { "no" }.to_owned(),
                q.weight.to_string(),
                if limits.is_empty() {
                    "-".to_owned()
                } else {
                    limits.join(",")
                },
                q.strategy.clone().unwrap_or_else(|| "-".to_owned()),
                c.scheduled.to_string(),
                c.queued.to_string(),
                c.running.to_string(),
                c.succeeded.to_string(),
                c.dead.to_string(),
                c.cancelled.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "name",
            "paused",
            "weight",
            "limits",
            "strategy",
            "scheduled",
            "queued",
            "running",
            "succeeded",
            "dead",
            "cancelled",
        ],
        &rows,
    );
}

/// Schedules as a table.
pub(crate) fn print_schedules(list: &ScheduleList) {
    let rows: Vec<Vec<String>> = list
        .schedules
        .iter()
        .map(|s| {
            let template: serde_json::Value =
                serde_json::from_str(s.task.get()).unwrap_or_default();
            vec![
                s.name.clone(),
                s.cron.clone(),
                s.timezone.clone(),
                template["type"].as_str().unwrap_or("?").to_owned(),
                s.misfire.clone(),
                if s.paused { "yes" } else { "no" }.to_owned(),
                s.next_fire_at.clone().unwrap_or_else(|| "-".to_owned()),
                s.next_fire_at
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |at| local_time(at, &s.timezone)),
                s.last_fire_at.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    print_table(
        &[
            "name",
            "cron",
            "timezone",
            "type",
            "misfire",
            "paused",
            "next_fire",
            "next_fire_local",
            "last_fire",
        ],
        &rows,
    );
}
