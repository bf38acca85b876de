//! End-to-end tests of the attempt history, `GET /v1/tasks/{id}/attempts`:
//! every counted attempt with its worker, times, outcome, error and retry
//! delay, kept across a restart; a lost worker's attempt; the running one.

mod common;

use std::time::Duration;

use common::{Api, Server, id_of, unique_type};
use dispatch_proto::time::parse_rfc3339;
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(10);

/// Registers an HTTP worker named `name` for `kind`; returns its id.
async fn register(api: &Api, name: &str, kind: &str) -> String {
    let r = api
        .post(
            "/v1/workers",
            json!({"name": name, "types": [kind], "labels": {}, "capacity": 1}),
        )
        .await
        .expect(201);
    r["id"].as_str().expect("worker id").to_owned()
}

/// The attempts of task `id`.
async fn attempts(api: &Api, id: &str) -> Vec<Value> {
    let r = api
        .get(&format!("/v1/tasks/{id}/attempts"))
        .await
        .expect(200);
    r["attempts"].as_array().expect("attempts array").clone()
}

#[track_caller]
fn ms(a: &Value, field: &str) -> u64 {
    parse_rfc3339(
        a[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {a}")),
    )
    .unwrap_or_else(|e| panic!("{field} in {a}: {e}"))
}

/// Checks the history of the task that failed on `w1`, then on `w2`, then
/// succeeded on `w1`.
#[track_caller]
fn check_history(list: &[Value], w1: &str, w2: &str) {
    assert_eq!(list.len(), 3, "{list:?}");
    let numbers: Vec<u64> = list
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    let outcomes: Vec<&str> = list
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "failed", "succeeded"]);
    let names: Vec<&str> = list
        .iter()
        .map(|a| a["worker_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first", "second", "first"]);
    let ids: Vec<&str> = list
        .iter()
        .map(|a| a["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [w1, w2, w1]);
    assert_eq!(list[0]["error"], "disk full");
    assert_eq!(list[1]["error"], "still full");
    assert_eq!(list[2]["error"], Value::Null);
    // The worker asked for 300 ms; the second failure took the backoff
    // (200 ms, jittered by at most half); the success has no retry.
    assert_eq!(list[0]["retry_delay_ms"], 300);
    let backoff = list[1]["retry_delay_ms"].as_u64().expect("a backoff");
    assert!((100..=300).contains(&backoff), "{backoff}");
    assert_eq!(list[2]["retry_delay_ms"], Value::Null);
    for pair in list.windows(2) {
        // Each attempt starts after the previous one ended and its delay.
        assert!(ms(&pair[1], "collected_at") >= ms(&pair[0], "finished_at"));
    }
    for a in list {
        assert!(ms(a, "collected_at") <= ms(a, "finished_at"), "{a}");
    }
}

#[tokio::test]
async fn failed_twice_then_succeeded_is_three_attempts_that_survive_a_restart() {
    let server = Server::start().await;
    let api = Api::new(&server.url);
    let kind = unique_type("attempts");
    let w1 = register(&api, "first", &kind).await;
    let w2 = register(&api, "second", &kind).await;
    let id = id_of(
        &api.submit(json!({
            "type": kind, "max_attempts": 3,
            "backoff": {"initial_ms": 200, "max_ms": 200, "multiplier": 2.0},
        }))
        .await,
    );
    assert_eq!(
        attempts(&api, &id).await,
        Vec::<Value>::new(),
        "not run yet"
    );

    // Attempt 1 on w1 (w2 does not poll yet), failed with a retry delay.
    let t = api.poll_one(&w1, WITHIN).await;
    assert_eq!(id_of(&t), id);
    let running = attempts(&api, &id).await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0]["attempt"], 1);
    assert_eq!(running[0]["outcome"], Value::Null, "it runs");
    assert_eq!(running[0]["finished_at"], Value::Null);
    assert_eq!(running[0]["worker_name"], "first");
    api.fail(&id, &w1, "disk full", json!({"retry_after_ms": 300}))
        .await
        .expect(200);

    // Attempt 2 on w2, failed with the task's backoff.
    let t = api.poll_one(&w2, WITHIN).await;
    assert_eq!(id_of(&t), id);
    api.fail(&id, &w2, "still full", json!({}))
        .await
        .expect(200);

    // Attempt 3 on w1 succeeds.
    let t = api.poll_one(&w1, WITHIN).await;
    assert_eq!(id_of(&t), id);
    api.complete(&id, &w1, json!("ok")).await.expect(200);
    api.wait_task(&id, WITHIN, |t| t["state"] == "succeeded")
        .await;
    check_history(&attempts(&api, &id).await, &w1, &w2);

    let server = server.crash_and_restart().await;
    let api = Api::new(&server.url);
    check_history(&attempts(&api, &id).await, &w1, &w2);

    // The CLI shows the same history.
    let out = common::run_cli(&["task", &id, "--attempts", "--server", &server.url], &[]);
    let text = common::ok(&out);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.contains("disk full") && text.contains("succeeded"),
        "{text}"
    );
    let out = common::run_cli(
        &["--json", "task", &id, "--attempts", "--server", &server.url],
        &[],
    );
    let listed: Value = serde_json::from_str(&common::ok(&out)).unwrap();
    check_history(listed["attempts"].as_array().unwrap(), &w1, &w2);

    let missing = api.get("/v1/tasks/987654321/attempts").await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    let bad = api.get("/v1/tasks/not-an-id/attempts").await;
    assert_eq!(bad.status, 404, "{}", bad.text);
    assert!(bad.content_type.starts_with("application/problem+json"));
}

#[tokio::test]
async fn a_worker_that_dies_leaves_a_lost_attempt() {
    let server = Server::with_lease(600).await;
    let api = Api::new(&server.url);
    let kind = unique_type("lost");
    let dead = register(&api, "doomed", &kind).await;
    let id = id_of(&api.submit(json!({"type": kind, "max_attempts": 3})).await);
    let t = api.poll_one(&dead, WITHIN).await;
    assert_eq!(id_of(&t), id);
    // The worker goes silent: its lease runs out and the task is requeued.
    api.wait_task(&id, WITHIN, |t| {
        t["state"] == "queued" && t["error"].as_str().is_some_and(|e| e.contains("lost"))
    })
    .await;
    let list = attempts(&api, &id).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let a = &list[0];
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["outcome"], "lost");
    assert_eq!(a["worker_id"], dead.as_str());
    assert_eq!(a["worker_name"], "doomed");
    assert_eq!(a["retry_delay_ms"], 0);
    assert!(a["error"].as_str().unwrap().contains("lost"), "{a}");
    assert!(ms(a, "collected_at") <= ms(a, "finished_at"));

    // The next attempt, on another worker, is number 2.
    let next = register(&api, "survivor", &kind).await;
    api.poll_one(&next, WITHIN).await;
    api.complete(&id, &next, json!(null)).await.expect(200);
    api.wait_task(&id, WITHIN, |t| t["state"] == "succeeded")
        .await;
    let list = attempts(&api, &id).await;
    let outcomes: Vec<&str> = list
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["lost", "succeeded"]);
    assert_eq!(list[1]["attempt"], 2);
    assert_eq!(list[1]["worker_name"], "survivor");
}
