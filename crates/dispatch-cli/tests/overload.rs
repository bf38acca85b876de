//! Overload end to end, with the real binary: a queue's `max_depth` and
//! the server's `--max-live-tasks` answer 429 with `Retry-After` and store
//! nothing.

mod common;

use std::time::Duration;

use common::{Api, Server, id_of};
use serde_json::{Value, json};

/// The tasks of `queue` the server lists.
async fn stored_in(api: &Api, queue: &str) -> usize {
    let list = api.list(&format!("queue={queue}&limit=100")).await;
    list["tasks"].as_array().expect("tasks array").len()
}

/// Asserts a 429 problem with a `Retry-After` of whole seconds.
#[track_caller]
fn assert_overloaded(r: &common::Resp) -> Value {
    let p = r.problem(429, None);
    let after = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{}: no Retry-After header", r.what));
    assert!(after.parse::<u64>().is_ok_and(|s| s >= 1), "{after}");
    p
}

#[tokio::test]
async fn a_full_queue_answers_429_until_a_worker_drains_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("dispatch.toml");
    std::fs::write(&config, "[queues.small]\nmax_depth = 3\n").expect("write config");
    let server = Server::with_args(&["--config", config.to_str().unwrap()]).await;
    let api = server.api();
    let task = json!({"type": "overload.job", "queue": "small", "payload": 1});
    for _ in 0..3 {
        api.submit(task.clone()).await;
    }
    let r = api.post("/v1/tasks", task.clone()).await;
    let p = assert_overloaded(&r);
    assert!(
        p["detail"].as_str().unwrap_or("").contains("small"),
        "the detail names the queue: {p}"
    );
    // A batch that would overflow it is refused whole.
    let batch = json!({"tasks": [task.clone()]});
    assert_overloaded(&api.post("/v1/tasks/batch", batch.clone()).await);
    assert_eq!(stored_in(&api, "small").await, 3, "nothing more stored");
    // Other queues still accept.
    api.submit(json!({"type": "overload.other", "queue": "other", "payload": 1}))
        .await;

    // A worker takes the three: the queue has room again.
    let worker = api.register(&["overload.job"], 10).await;
    let got = api.poll_n(&worker, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3);
    let t = api.submit(task.clone()).await;
    api.post("/v1/tasks/batch", batch).await.expect(201);
    assert_eq!(stored_in(&api, "small").await, 5);
    assert!(!id_of(&t).is_empty());
}

#[tokio::test]
async fn max_live_tasks_refuses_a_batch_that_would_pass_it() {
    let server = Server::with_args(&["--max-live-tasks", "5"]).await;
    let api = server.api();
    let tasks: Vec<Value> = (0..6)
        .map(|i| json!({"type": "overload.live", "queue": "live", "payload": i}))
        .collect();
    let r = api.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_overloaded(&r);
    assert_eq!(stored_in(&api, "live").await, 0, "none of the batch stored");
    // Five fit.
    let five = json!({"tasks": tasks[..5].to_vec()});
    api.post("/v1/tasks/batch", five).await.expect(201);
    let one = json!({"type": "overload.live", "queue": "live", "payload": 9});
    assert_overloaded(&api.post("/v1/tasks", one).await);
    assert_eq!(stored_in(&api, "live").await, 5);
}

/// The value of an unlabelled sample in the Prometheus text.
async fn metric(api: &Api, name: &str) -> u64 {
    let text = api.get("/metrics").await.text;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test]
async fn the_memory_bound_refuses_work_until_tasks_end() {
    let server = Server::with_args(&["--max-memory-mb", "1"]).await;
    let api = server.api();
    assert_eq!(
        metric(&api, "dispatch_task_memory_limit_bytes").await,
        1 << 20
    );
    // About 100 KiB each: ten fit in 1 MiB, the eleventh does not.
    let big = "x".repeat(100 * 1024);
    let task = json!({"type": "overload.mem", "queue": "mem", "payload": big});
    let mut accepted = 0;
    let refused = loop {
        let r = api.post("/v1/tasks", task.clone()).await;
        if r.status == 429 {
            break r;
        }
        r.expect(201);
        accepted += 1;
        assert!(accepted <= 10, "the bound was not enforced");
    };
    assert_eq!(accepted, 10);
    let p = assert_overloaded(&refused);
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("--max-memory-mb"),
        "the detail names the bound: {p}"
    );
    assert!(metric(&api, "dispatch_task_memory_bytes").await > 10 * 100 * 1024);
    // The bound counts bytes, not tasks: a small one still fits.
    let small = json!({"type": "overload.mem", "queue": "mem", "payload": 1});
    api.post("/v1/tasks", small).await.expect(201);
    assert_eq!(
        stored_in(&api, "mem").await,
        11,
        "nothing refused was stored"
    );

    // A worker finishes three: their memory comes back.
    let worker = api.register(&["overload.mem"], 3).await;
    for t in api.poll_n(&worker, 3, Duration::from_secs(5)).await {
        api.complete(&id_of(&t), &worker, json!(null))
            .await
            .expect(200);
    }
    for _ in 0..3 {
        api.post("/v1/tasks", task.clone()).await.expect(201);
    }
    assert_overloaded(&api.post("/v1/tasks", task).await);
    assert_eq!(api.get("/healthz").await.status, 200, "still healthy");
}

/// A cron fire into a full queue is skipped and the log says so; the
/// schedule goes on and fires again once there is room.
#[tokio::test]
async fn a_cron_fire_over_a_full_queue_is_skipped_and_logged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("dispatch.toml");
    std::fs::write(&config, "[queues.small]\nmax_depth = 1\n").expect("write config");
    let server = Server::with_args(&["--config", config.to_str().unwrap()]).await;
    let api = server.api();
    api.post(
        "/v1/schedules",
        json!({
            "name": "every-second",
            "cron": "* * * * * *",
            "task": {"type": "overload.cron", "queue": "small", "payload": 1},
            "misfire": "skip",
        }),
    )
    .await
    .expect(201);
    let first = api
        .wait_list("queue=small", Duration::from_secs(10), |p| {
            p["tasks"].as_array().is_some_and(|t| t.len() == 1)
        })
        .await;
    // Later fires find the queue full.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !server.logs().contains("skipping the fire") {
        assert!(
            std::time::Instant::now() < deadline,
            "no skipped fire logged:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_in(&api, "small").await, 1, "nothing more stored");
    // Room again: a later fire gets in.
    let worker = api.register(&["overload.cron"], 1).await;
    let got = api.poll_one(&worker, Duration::from_secs(5)).await;
    assert_eq!(id_of(&got), id_of(&first["tasks"][0]));
    api.wait_list("queue=small", Duration::from_secs(10), |p| {
        p["tasks"].as_array().is_some_and(|t| t.len() == 2)
    })
    .await;
}
