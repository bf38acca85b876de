//! The leader's part of `/healthz`, the Prometheus text at `/metrics`
//! (the counters of `counters` and gauges read from the core) and the
//! middleware counting requests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dispatch_core::TaskState;
use dispatch_proto::{HealthJson, StoreFailureJson};

use crate::app::App;

/// Middleware counting requests by matched route and status.
pub(crate) async fn count_requests(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let mut requests = app
        .metrics
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *requests.entry((route, status)).or_default() += 1;
    resp
}

/// The leader's part of `GET /healthz` (the replica adds its role and
/// term): 200 while the store takes writes, 503 while it fails.
pub(crate) fn health(app: &App) -> (StatusCode, HealthJson) {
    let (live, workers) = {
        let shared = app.lock();
        (shared.sched.live_tasks(), shared.sched.worker_count())
    };
    let health = app.store_health();
    let mut body = HealthJson {
        status: "ok".to_owned(),
        live_tasks: Some(live as u64),
        workers: Some(workers as u64),
        ..HealthJson::default()
    };
    if health.is_failing() {
        // Reads and live work go on, but nothing new can be accepted.
        body.status = "store_unavailable".to_owned();
        body.store = Some(StoreFailureJson {
            error: health.last_error(),
            retained_writes: health.retained() as u64,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, body);
    }
    (StatusCode::OK, body)
}

/// Most series one labelled metric has per queue or per worker; beyond,
/// the rest are summed into one series labelled [`OTHER`].
const SERIES_LIMIT: usize = 500;

/// The label value of the series that sums the queues or workers past
/// [`SERIES_LIMIT`].
const OTHER: &str = "_other";

/// `GET /metrics`: Prometheus text exposition format 0.0.4.
#[utoipa::path(
    get,
    path = "/metrics",
    summary = "Prometheus metrics",
    description = "Tasks by state and queue, workers, requests by route and status, store writes, in the text exposition format.",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
    ),
)]
pub(crate) async fn prometheus(State(app): State<Arc<App>>) -> Response {
    let mut by_state: BTreeMap<&str, u64> = TaskState::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| (s.as_str(), 0))
        .collect();
    let (workers, capacity, in_flight, mut queues, per_worker) = {
        let shared = app.lock();
        let ws: Vec<_> = shared
            .sched
            .workers()
            .map(|w| (w.spec.capacity, w.in_flight()))
            .collect();
        // One series per worker up to the limit; the rest are summed up.
        let mut per_worker: Vec<_> = shared
            .sched
            .workers()
            .take(SERIES_LIMIT)
            .map(|w| {
                let labels = format!(
                    "{{worker=\"{}\",name=\"{}\"}}",
                    w.id,
                    label_value(&w.spec.name)
                );
                (labels, u64::from(w.in_flight()), u64::from(w.spec.capacity))
            })
            .collect();
        if ws.len() > SERIES_LIMIT {
            let rest = &ws[SERIES_LIMIT..];
            per_worker.push((
                format!("{{worker=\"{OTHER}\",name=\"{OTHER}\"}}"),
                rest.iter().map(|w| u64::from(w.1)).sum(),
                rest.iter().map(|w| u64::from(w.0)).sum(),
            ));
        }
        (
            ws.len(),
            ws.iter().map(|w| u64::from(w.0)).sum::<u64>(),
            ws.iter().map(|w| u64::from(w.1)).sum::<u64>(),
            shared.sched.queues(),
            per_worker,
        )
    };
    // Live tasks by state, from the queues' counters: no scan of the tasks.
    for q in &queues {
        for (state, n) in [
            (TaskState::Scheduled, q.scheduled),
            (TaskState::Queued, q.queued),
            (TaskState::Running, q.running),
        ] {
            *by_state.entry(state.as_str()).or_default() += n as u64;
        }
    }
    // One series per queue up to the limit, the busiest first; the rest
    // are summed up, so that a client naming many queues cannot grow the
    // exposition without bound.
    if queues.len() > SERIES_LIMIT {
        queues.sort_by_key(|q| std::cmp::Reverse(q.scheduled + q.queued + q.running));
        let rest = queues.split_off(SERIES_LIMIT);
        let mut other = dispatch_core::QueueInfo {
            name: OTHER.into(),
            paused: false,
            config: Default::default(),
            scheduled: 0,
            queued: 0,
            running: 0,
        };
        for q in rest {
            other.scheduled += q.scheduled;
            other.queued += q.queued;
            other.running += q.running;
        }
        queues.push(other);
    }
    let m = &app.metrics;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "dispatch_tasks_submitted_total",
        "counter",
        "Tasks accepted (idempotent resubmissions not counted).",
        &[(String::new(), m.submitted.load(Ordering::Relaxed))],
    );
    let transitions: Vec<_> = TaskState::ALL
        .iter()
        .map(|s| (format!("{{state=\"{s}\"}}"), m.transitions(*s)))
        .collect();
    metric(
        "dispatch_task_transitions_total",
        "counter",
        "Task state changes, by the state entered (running = an attempt started).",
        &transitions,
    );
    let live: Vec<_> = by_state
        .iter()
        .map(|(s, n)| (format!("{{state=\"{s}\"}}"), *n))
        .collect();
    metric("dispatch_tasks", "gauge", "Live tasks by state.", &live);
    metric(
        "dispatch_task_memory_bytes",
        "gauge",
        "Memory live tasks are charged (payloads, strings and a fixed share each).",
        &[(String::new(), app.budget.used())],
    );
    metric(
        "dispatch_task_memory_limit_bytes",
        "gauge",
        "The bound on dispatch_task_memory_bytes (--max-memory-mb); submissions beyond answer 429.",
        &[(String::new(), app.budget.limit())],
    );
    let health = app.store_health();
    metric(
        "dispatch_store_failing",
        "gauge",
        "1 while the store refuses writes (writes answer 503 and state changes wait to be retried).",
        &[(String::new(), u64::from(health.is_failing()))],
    );
    metric(
        "dispatch_store_commit_failures_total",
        "counter",
        "Store commits that failed.",
        &[(String::new(), health.failures())],
    );
    metric(
        "dispatch_store_retained_writes",
        "gauge",
        "State changes made in memory that wait for the store to take them.",
        &[(String::new(), health.retained() as u64)],
    );
    metric(
        "dispatch_workers",
        "gauge",
        "Registered workers.",
        &[(String::new(), workers as u64)],
    );
    metric(
        "dispatch_worker_capacity",
        "gauge",
        "Task slots over all registered workers.",
        &[(String::new(), capacity)],
    );
    metric(
        "dispatch_worker_in_flight",
        "gauge",
        "Tasks held by workers.",
        &[(String::new(), in_flight)],
    );
    let mut queue_tasks = Vec::new();
    for q in &queues {
        for (state, n) in [
            (TaskState::Scheduled, q.scheduled),
            (TaskState::Queued, q.queued),
            (TaskState::Running, q.running),
        ] {
            let labels = format!("{{queue=\"{}\",state=\"{state}\"}}", label_value(&q.name));
            queue_tasks.push((labels, n as u64));
        }
    }
    metric(
        "dispatch_queue_tasks",
        "gauge",
        "Live tasks by queue and state.",
        &queue_tasks,
    );
    let queue_paused: Vec<_> = queues
        .iter()
        .map(|q| {
            let labels = format!("{{queue=\"{}\"}}", label_value(&q.name));
            (labels, u64::from(q.paused))
        })
        .collect();
    metric(
        "dispatch_queue_paused",
        "gauge",
        "1 when dispatch from the queue is paused.",
        &queue_paused,
    );
    let worker_in_flight: Vec<_> = per_worker
        .iter()
        .map(|(labels, n, _)| (labels.clone(), *n))
        .collect();
    metric(
        "dispatch_worker_tasks_in_flight",
        "gauge",
        "Tasks held by each registered worker.",
        &worker_in_flight,
    );
    let worker_capacity: Vec<_> = per_worker
        .iter()
        .map(|(labels, _, n)| (labels.clone(), *n))
        .collect();
    metric(
        "dispatch_worker_capacity_slots",
        "gauge",
        "Task slots of each registered worker.",
        &worker_capacity,
    );
    metric(
        "dispatch_workers_lost_total",
        "counter",
        "Workers declared dead after missing their lease.",
        &[(String::new(), m.workers_lost.load(Ordering::Relaxed))],
    );
    metric(
        "dispatch_tasks_purged_total",
        "counter",
        "Finished tasks deleted after the retention period.",
        &[(String::new(), m.purged.load(Ordering::Relaxed))],
    );
    let requests: Vec<_> = m
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|((route, status), n)| (format!("{{route=\"{route}\",status=\"{status}\"}}"), *n))
        .collect();
    metric(
        "dispatch_http_requests_total",
        "counter",
        "HTTP requests by route and status.",
        &requests,
    );
    let mut resp = (StatusCode::OK, out).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(super::label_value("host-1.eu"), "host-1.eu");
    }
}
