//! End-to-end durability: an acknowledged task survives a SIGKILL of the
//! server, and a task that was running when the server died runs again.
//!
//! Each test starts its own `dispatch server` child process, kills it with
//! SIGKILL and starts a new one on the same data folder.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Server, id_of, ids_of, unique_type};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(5);

/// Every task of `kind`, paging with `limit` and `cursor`.
async fn all_of_type(api: &common::Api, kind: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut q = format!("type={kind}&limit={limit}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page = api.list(&q).await;
        out.extend(page["tasks"].as_array().expect("tasks").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
    panic!("paging over {kind} did not end");
}

#[tokio::test]
async fn acknowledged_tasks_survive_sigkill() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("durable");
    let tasks: Vec<Value> = (0..500)
        .map(|i| json!({"type": kind, "payload": {"i": i}, "priority": i % 7}))
        .collect();
    let r = api
        .post("/v1/tasks/batch", json!({ "tasks": tasks }))
        .await
        .expect(201);
    let ids = ids_of(&r["tasks"]);
    assert_eq!(ids.len(), 500);
    let single = api.submit_id(&kind, json!("single")).await;
    // Also an idempotency key and a terminal state.
    let keyed = api
        .submit(json!({"type": "keyed", "idempotency_key": "survives"}))
        .await;
    let cancelled = api.submit_id("keyed", json!(null)).await;
    api.post_empty(&format!("/v1/tasks/{cancelled}/cancel"))
        .await
        .expect(200);

    // SIGKILL right after the acknowledgements, then a new server on the
    // same folder.
    let server = server.crash_and_restart().await;
    let api = server.api();

    let after = all_of_type(&api, &kind, 1000).await;
    assert_eq!(after.len(), 501, "tasks after the restart");
    let found: HashSet<String> = after.iter().map(id_of).collect();
    for id in ids.iter().chain([&single]) {
        assert!(found.contains(id), "acknowledged task {id} lost");
    }
    for t in &after {
        assert_eq!(t["state"], "queued", "{t}");
    }
    // Spot checks by id, with the payloads intact.
    for i in [0usize, 1, 249, 498, 499] {
        let t = api.task(&ids[i]).await;
        assert_eq!(t["payload"], json!({"i": i}));
        assert_eq!(t["priority"], json!(i % 7));
    }
    // Smaller pages see the same set.
    let paged = all_of_type(&api, &kind, 64).await;
    assert_eq!(paged.iter().map(id_of).collect::<HashSet<_>>(), found);

    // The key still names the original; the cancelled task stays so.
    let again = api
        .post(
            "/v1/tasks",
            json!({"type": "keyed", "idempotency_key": "survives"}),
        )
        .await
        .expect(200);
    assert_eq!(again["id"], keyed["id"]);
    assert_eq!(api.task(&cancelled).await["state"], "cancelled");

    // New tasks get fresh ids.
    let fresh = api.submit_id(&kind, json!("fresh")).await;
    assert!(
        !found.contains(&fresh),
        "id {fresh} reused after the restart"
    );
    assert!(
        fresh != id_of(&keyed) && fresh != cancelled,
        "id {fresh} reused after the restart"
    );
}

#[tokio::test]
async fn a_task_running_at_the_crash_runs_again_on_a_new_worker() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("crash");
    let w = api.register(&[&kind], 1).await;
    // Same priority: delivered in submission order, one at a time.
    let done = api.submit_id(&kind, json!({"step": 0})).await;
    let id = api.submit_id(&kind, json!({"step": 1})).await;
    let queued = api.submit_id(&kind, json!({"step": 2})).await;

    // Finish the first, hold the second; the third waits for the slot.
    assert_eq!(api.poll_one(&w, WITHIN).await["id"], json!(done));
    api.complete(&done, &w, json!("ok")).await.expect(200);
    assert_eq!(api.poll_one(&w, WITHIN).await["id"], json!(id));
    assert_eq!(api.task(&id).await["state"], "running");
    assert_eq!(api.task(&queued).await["state"], "queued");

    // Wait until the store holds the running state (assignments are
    // written without waiting), so that the restart has something to
    // recover.
    api.wait_list(&format!("type={kind}&state=running"), WITHIN, |p| {
        p["tasks"].as_array().is_some_and(|t| t.len() == 1)
    })
    .await;

    let server = server.crash_and_restart().await;
    let api = server.api();

    // Workers are not durable: the old one must register again.
    api.heartbeat(&w).await.problem(404, None);
    assert!(api.workers().await.is_empty());

    let t = api.task(&id).await;
    assert_eq!(
        t["state"], "queued",
        "a running task is queued again after a restart: {t}"
    );
    assert_eq!(
        t["attempts"], 0,
        "the interrupted attempt does not count: {t}"
    );
    assert_eq!(api.task(&queued).await["state"], "queued");
    let d = api.task(&done).await;
    assert_eq!(d["state"], "succeeded");
    assert_eq!(d["result"], json!("ok"));

    let w2 = api.register(&[&kind], 1).await;
    let t = api.poll_one(&w2, WITHIN).await;
    assert_eq!(
        t["id"],
        json!(id),
        "the interrupted task runs first (older)"
    );
    assert_eq!(t["attempt"], 1);
    assert_eq!(t["payload"], json!({"step": 1}));
    api.complete(&id, &w2, json!("after the crash"))
        .await
        .expect(200);
    let t = api.poll_one(&w2, WITHIN).await;
    assert_eq!(t["id"], json!(queued));
    api.complete(&queued, &w2, json!(null)).await.expect(200);
    assert_eq!(api.task(&id).await["state"], "succeeded");
}

#[tokio::test]
async fn scheduled_tasks_keep_their_time_and_retries_their_error_across_a_crash() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("sched");
    let delayed = api.submit(json!({"type": kind, "delay_ms": 600_000})).await;
    let delayed_id = id_of(&delayed);

    // A failed attempt waiting for its retry.
    let w = api.register(&[&kind], 1).await;
    let retried = api.submit_id(&kind, json!("r")).await;
    assert_eq!(api.poll_one(&w, WITHIN).await["id"], json!(retried));
    api.fail(
        &retried,
        &w,
        "try later",
        json!({"retry_after_ms": 600_000}),
    )
    .await
    .expect(200);
    let before = api.task(&retried).await;
    assert_eq!(before["state"], "scheduled");

    let server = server.crash_and_restart().await;
    let api = server.api();

    let t = api.task(&delayed_id).await;
    assert_eq!(t["state"], "scheduled", "{t}");
    assert_eq!(t["run_at"], delayed["run_at"], "{t}");
    let t = api.task(&retried).await;
    assert_eq!(t["state"], "scheduled", "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
    assert_eq!(t["error"], "try later", "{t}");
    assert_eq!(t["run_at"], before["run_at"], "{t}");

    // Neither is handed out before its time.
    let w = api.register(&[&kind], 2).await;
    assert!(api.poll(&w, 2, 300).await.is_empty());
}
