//! Requests that would make the server build far more than they carry:
//! shards and broadcast copies are counted, and charged against every
//! bound, before any record is built, so a refused request costs nothing in
//! proportion to what it asked for. And the idempotency keys the server
//! derives (copies, shards, cron fires) live in a namespace no client key
//! can enter.
//!
//! Each test starts its own `dispatch server` child process and reads its
//! peak resident memory from `/proc`.

mod common;

use std::time::Duration;

use common::{Server, id_of, unique_type};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(10);

/// The server's peak resident set so far, in MiB (`VmHWM`).
fn peak_rss_mib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("the server's /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024
}

/// Peak memory allowed for a server whose budget is `budget_mib`: the
/// budget, the request bodies in flight and the runtime.
fn assert_peak_within(server: &Server, budget_mib: u64) {
    let peak = peak_rss_mib(server);
    assert!(
        peak <= budget_mib + 256,
        "peak RSS {peak} MiB for a budget of {budget_mib} MiB"
    );
}

#[tokio::test]
async fn a_sharded_task_with_a_large_payload_is_refused_before_its_shards_exist() {
    // Under an address-space limit of the budget plus 512 MiB: an
    // overshoot would abort the server, not pass quietly.
    let server = Server::with_address_space(&["--max-memory-mb", "256"], 256 + 512).await;
    let api = server.api();
    let big = "x".repeat(4 << 20);
    let r = api
        .post(
            "/v1/tasks",
            json!({"type": "fan", "strategy": "sharding", "shards": 1000, "payload": big}),
        )
        .await;
    let p = r.problem(429, None);
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("1001 tasks"), "{p}");
    assert_peak_within(&server, 256);
    // Nothing was stored or admitted; the server goes on.
    assert_eq!(api.list("limit=10").await["tasks"], json!([]));
    let id = api.submit_id("fan", json!({"n": 1})).await;
    assert_eq!(api.task(&id).await["state"], "queued");
}

#[tokio::test]
async fn a_batch_that_would_create_too_many_tasks_is_refused_with_the_count() {
    let server = Server::with_address_space(&["--max-memory-mb", "256"], 256 + 512).await;
    let api = server.api();
    let tasks: Vec<Value> = (0..10_000)
        .map(|_| json!({"type": "fan", "strategy": "sharding", "shards": 1000}))
        .collect();
    let r = api.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
    let p = r.problem(413, None);
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("10010000 tasks"), "{p}");
    assert!(detail.contains("--max-tasks-per-request"), "{p}");
    assert_peak_within(&server, 256);
    assert_eq!(api.list("limit=10").await["tasks"], json!([]));
}

#[tokio::test]
async fn the_per_request_cap_counts_broadcast_copies_and_is_configurable() {
    let server = Server::with_args(&["--max-tasks-per-request", "50"]).await;
    let api = server.api();
    let kind = unique_type("bcast");
    for _ in 0..10 {
        api.register(&[&kind], 1).await;
    }
    // 5 tasks x (10 copies + the join) = 55 > 50.
    let tasks: Vec<Value> = (0..5)
        .map(|_| json!({"type": kind, "strategy": "broadcast"}))
        .collect();
    let p = api
        .post("/v1/tasks/batch", json!({"tasks": tasks}))
        .await
        .problem(413, None);
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("55 tasks"),
        "{p}"
    );
    // 4 x 11 = 44 fit.
    let tasks: Vec<Value> = (0..4)
        .map(|_| json!({"type": kind, "strategy": "broadcast"}))
        .collect();
    api.post("/v1/tasks/batch", json!({"tasks": tasks}))
        .await
        .expect(201);
    let p = api
        .post(
            "/v1/tasks",
            json!({"type": kind, "strategy": "sharding", "shards": 50}),
        )
        .await
        .problem(413, None);
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("51 tasks"),
        "{p}"
    );
}

#[tokio::test]
async fn derived_idempotency_keys_cannot_be_taken_by_clients() {
    let server = Server::start().await;
    let api = server.api();
    for key in ["dispatch:copy:0:K", "schedule:nightly:1767225600000"] {
        api.post("/v1/tasks", json!({"type": "x", "idempotency_key": key}))
            .await
            .problem(422, Some("idempotency_key"));
    }
    // A client key that looks like an old derived one blocks nothing.
    let kind = unique_type("shard");
    let lookalike = api
        .submit(json!({"type": kind, "idempotency_key": "K#0"}))
        .await;
    let join = api
        .submit(json!({"type": kind, "strategy": "sharding", "shards": 2, "idempotency_key": "K"}))
        .await;
    let parents: Vec<String> = join["depends_on"]
        .as_array()
        .expect("a join lists its shards")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(parents.len(), 2);
    assert!(!parents.contains(&id_of(&lookalike)), "{join}");
    // The same sharded submission again is the same task.
    let again = api
        .post(
            "/v1/tasks",
            json!({"type": kind, "strategy": "sharding", "shards": 2, "idempotency_key": "K"}),
        )
        .await
        .expect(200);
    assert_eq!(id_of(&again), id_of(&join));
    // The shards run and the join ends with them.
    let w = api.register(&[&kind], 10).await;
    let got = api.poll_n(&w, 3, WITHIN).await;
    assert_eq!(got.len(), 3, "the look-alike and the two shards");
    for t in &got {
        api.complete(&id_of(t), &w, json!(null)).await.expect(200);
    }
    let t = api
        .wait_task(&id_of(&join), WITHIN, |t| t["state"] == "succeeded")
        .await;
    assert_eq!(t["state"], "succeeded");
}

/// The `dispatch_queue_tasks` series of a `/metrics` text.
fn queue_series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("dispatch_queue_tasks{"))
        .collect()
}

#[tokio::test]
async fn queue_names_used_once_are_forgotten_and_metrics_stay_bounded() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("many-queues");
    let tasks: Vec<Value> = (0..1_200)
        .map(|i| json!({"type": kind, "queue": format!("q-{i}")}))
        .collect();
    api.post("/v1/tasks/batch", json!({"tasks": tasks}))
        .await
        .expect(201);
    // 1,200 live queues: 500 series per state, and one that sums the rest.
    let metrics = api.get("/metrics").await.text;
    let series = queue_series(&metrics);
    assert_eq!(series.len(), 501 * 3, "{}", series.len());
    let other: u64 = series
        .iter()
        .filter(|l| l.contains("queue=\"_other\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(other, 700, "the 700 queues past the limit are summed");
    // Every task runs and ends: nothing is left of the queues.
    let w = api.register(&[&kind], 1_000).await;
    let mut done = 0;
    while done < 1_200 {
        let got = api.poll(&w, 1_000, 1_000).await;
        assert!(!got.is_empty(), "tasks left: {}", 1_200 - done);
        let results: Vec<Value> = got
            .iter()
            .map(|t| json!({"task_id": id_of(t), "result": null}))
            .collect();
        done += got.len();
        api.poll_raw(&w, json!({"max": 0, "results": results}))
            .await;
    }
    let metrics = api.get("/metrics").await.text;
    assert_eq!(queue_series(&metrics), Vec::<&str>::new());
    assert!(
        metrics.contains("dispatch_tasks{state=\"queued\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn worker_registrations_are_charged_against_the_memory_budget() {
    let server = Server::with_args(&["--max-memory-mb", "1"]).await;
    let api = server.api();
    let labels: serde_json::Map<String, Value> = (0..50)
        .map(|i| (format!("label-{i}"), json!("v".repeat(200))))
        .collect();
    let register = || {
        api.post(
            "/v1/workers",
            json!({"name": "big", "types": ["t"], "labels": labels, "capacity": 1}),
        )
    };
    let mut ids = Vec::new();
    let refused = loop {
        let r = register().await;
        if r.status != 201 {
            break r;
        }
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
        assert!(
            ids.len() < 1_000,
            "a 1 MiB budget held 1,000 workers of 12 KB"
        );
    };
    let p = refused.problem(429, None);
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("--max-memory-mb"),
        "{p}"
    );
    assert!(ids.len() >= 10, "only {} workers fit", ids.len());
    // One leaves: its share comes back, and another fits.
    api.delete(&format!("/v1/workers/{}", ids[0]))
        .await
        .expect(204);
    register().await.expect(201);
}

#[tokio::test]
async fn filling_the_memory_budget_stays_within_it_under_an_address_space_limit() {
    let server = Server::with_address_space(&["--max-memory-mb", "256"], 256 + 512).await;
    let api = server.api();
    let payload = "y".repeat(200_000);
    let mut accepted = 0;
    let refusal = loop {
        let r = api
            .post(
                "/v1/tasks",
                json!({"type": "fill", "strategy": "sharding", "shards": 200, "payload": payload}),
            )
            .await;
        if r.status != 201 {
            break r;
        }
        accepted += 1;
        assert!(accepted < 100, "a 256 MiB budget took 100 x 40 MB");
    };
    refusal.problem(429, None);
    assert!(
        accepted >= 3,
        "only {accepted} requests of 40 MB fit in 256 MiB"
    );
    // Alive and answering, its peak within the budget and the runtime.
    assert_eq!(api.get("/healthz").await.json()["status"], "ok");
    assert_peak_within(&server, 256);
}

#[tokio::test]
async fn shards_share_their_payload_in_memory() {
    let server = Server::start().await;
    let api = server.api();
    let before = peak_rss_mib(&server);
    let payload = "z".repeat(1 << 20);
    api.post(
        "/v1/tasks",
        json!({"type": "shared", "strategy": "sharding", "shards": 200, "payload": payload}),
    )
    .await
    .expect(201);
    // 200 shards of a 1 MiB payload: one payload in memory, not 200.
    let grew = peak_rss_mib(&server).saturating_sub(before);
    assert!(
        grew < 100,
        "the server grew by {grew} MiB for 200 shards of 1 MiB"
    );
    let health = api.get("/healthz").await.json();
    assert_eq!(health["live_tasks"], 201, "{health}");
}

#[tokio::test]
async fn schedules_are_charged_against_the_memory_budget() {
    let server = Server::with_args(&["--max-memory-mb", "1"]).await;
    let api = server.api();
    let payload = "s".repeat(100_000);
    let create = |i: usize| {
        api.post(
            "/v1/schedules",
            json!({
                "name": format!("big-{i}"),
                "cron": "0 0 1 1 *",
                "task": {"type": "t", "payload": payload},
            }),
        )
    };
    let mut made = 0;
    let refused = loop {
        let r = create(made).await;
        if r.status != 201 {
            break r;
        }
        made += 1;
        assert!(made < 100, "a 1 MiB budget held 100 schedules of 200 KB");
    };
    let p = refused.problem(429, None);
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("--max-memory-mb"),
        "{p}"
    );
    assert!(made >= 2, "only {made} schedules fit");
    // One goes: its share comes back.
    api.delete("/v1/schedules/big-0").await.expect(204);
    create(made).await.expect(201);
}
