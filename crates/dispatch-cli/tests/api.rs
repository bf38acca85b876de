//! End-to-end tests of the client endpoints: submit (single, idempotent,
//! batch), read, list with filters and paging, cancel, and `/metrics`.
//!
//! Each test starts its own `dispatch server` child process.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Body, Server, assert_rfc3339, id_of, ids_of, install_crypto_provider, unique_type};
use dispatch_proto::SubmitTask;
use serde_json::{Value, json};

#[tokio::test]
async fn submit_then_get_shows_the_defaults_and_unknown_ids_are_404() {
    let server = Server::start().await;
    let api = server.api();

    let t = api
        .submit(json!({"type": "email.send", "payload": {"to": "a@example.com", "n": [1, 2]}}))
        .await;
    let id = id_of(&t);
    assert!(!id.is_empty());
    assert_eq!(t["type"], "email.send");
    assert_eq!(t["queue"], "default");
    assert_eq!(t["priority"], 0);
    assert_eq!(t["max_attempts"], 3);
    assert_eq!(t["state"], "queued");
    assert_eq!(t["attempts"], 0);
    assert_eq!(t["payload"], json!({"to": "a@example.com", "n": [1, 2]}));
    assert_rfc3339(&t["created_at"]);

    let got = api.task(&id).await;
    for key in [
        "id",
        "type",
        "queue",
        "priority",
        "max_attempts",
        "state",
        "attempts",
        "payload",
        "created_at",
    ] {
        assert_eq!(
            got[key], t[key],
            "GET differs from the submit reply in {key}: {got}"
        );
    }

    // Unknown ids: well-formed but never assigned, and huge.
    for unknown in ["987654321", "18446744073709551615"] {
        api.get(&format!("/v1/tasks/{unknown}"))
            .await
            .problem(404, None);
    }

    // The defaults can be overridden.
    let t = api
        .submit(json!({"type": "x", "queue": "emails", "priority": -7, "max_attempts": 5, "timeout_ms": 1500}))
        .await;
    assert_eq!(t["queue"], "emails");
    assert_eq!(t["priority"], -7);
    assert_eq!(t["max_attempts"], 5);
    assert_eq!(t["timeout_ms"], 1500);
    assert_eq!(t["payload"], json!(null));
}

#[tokio::test]
async fn payloads_come_back_byte_for_byte_and_concurrent_submits_get_distinct_ids() {
    let server = Server::start().await;
    let api = server.api();
    // A number no i64, u64 or f64 holds exactly, and text beyond ASCII.
    let raw = r#"{"type": "exact", "payload": {"big": 123456789012345678901234567890, "s": "h\u00e9llo \ud83d\ude00 \"q\"", "f": 0.1}}"#;
    let r = api
        .send(
            "POST",
            "/v1/tasks",
            Body::Raw(raw.as_bytes().to_vec(), Some("application/json")),
        )
        .await;
    let t = r.expect(201);
    assert!(
        r.text.contains("123456789012345678901234567890"),
        "{}",
        r.text
    );
    let id = id_of(&t);
    let got = api.get(&format!("/v1/tasks/{id}")).await;
    assert!(
        got.text.contains("123456789012345678901234567890"),
        "{}",
        got.text
    );
    assert_eq!(got.json()["payload"]["s"], "h\u{e9}llo \u{1F600} \"q\"");
    assert_eq!(got.json()["payload"]["f"], 0.1);

    // Concurrent submissions.
    let kind = unique_type("many");
    let mut handles = Vec::new();
    for i in 0..40 {
        let api = api.clone();
        let kind = kind.clone();
        handles.push(tokio::spawn(
            async move { api.submit_id(&kind, json!(i)).await },
        ));
    }
    let mut ids = HashSet::new();
    for h in handles {
        ids.insert(h.await.expect("submitter"));
    }
    assert_eq!(ids.len(), 40, "distinct ids");
    let listed: HashSet<String> = api
        .list_ids(&format!("type={kind}"))
        .await
        .into_iter()
        .collect();
    assert_eq!(listed, ids);
}

#[tokio::test]
async fn a_delayed_task_is_scheduled() {
    let server = Server::start().await;
    let api = server.api();
    let t = api
        .submit(json!({"type": "later", "delay_ms": 60_000}))
        .await;
    assert_eq!(t["state"], "scheduled");
    assert_rfc3339(&t["run_at"]);
    let t = api
        .submit(json!({"type": "later", "run_at": "2999-01-01T00:00:00Z"}))
        .await;
    assert_eq!(t["state"], "scheduled");
}

#[tokio::test]
async fn an_idempotency_key_returns_the_original_task() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("idem");
    let body = json!({"type": kind, "payload": {"n": 1}, "idempotency_key": "order-42"});

    let first = api.post("/v1/tasks", body.clone()).await.expect(201);
    let again = api.post("/v1/tasks", body).await.expect(200);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["idempotency_key"], "order-42");

    // With another payload, the key is refused (see idempotency.rs).
    api.post(
        "/v1/tasks",
        json!({"type": kind, "payload": {"n": 2}, "idempotency_key": "order-42"}),
    )
    .await
    .problem(409, Some("idempotency_key"));

    let ids = api.list_ids(&format!("type={kind}")).await;
    assert_eq!(ids, vec![id_of(&first)], "exactly one task exists");

    // Another key is another task.
    let second = api
        .submit(json!({"type": kind, "idempotency_key": "order-43"}))
        .await;
    assert_ne!(second["id"], first["id"]);
}

#[tokio::test]
async fn a_batch_is_accepted_all_or_nothing() {
    let server = Server::start().await;
    let api = server.api();

    let kind = unique_type("batch");
    let r = api
        .post(
            "/v1/tasks/batch",
            json!({"tasks": [
                {"type": kind, "payload": 1},
                {"type": kind, "payload": 2, "priority": 5},
                {"type": kind, "payload": 3, "queue": "other"},
            ]}),
        )
        .await
        .expect(201);
    let tasks = r["tasks"].as_array().expect("tasks array");
    assert_eq!(tasks.len(), 3, "{r}");
    let ids = ids_of(&r["tasks"]);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        3,
        "distinct ids: {ids:?}"
    );
    for (i, t) in tasks.iter().enumerate() {
        assert_eq!(t["payload"], json!(i + 1), "batch order is kept");
        assert_eq!(t["state"], "queued");
        let got = api.task(&id_of(t)).await;
        assert_eq!(got["payload"], t["payload"]);
    }
    assert_eq!(tasks[1]["priority"], 5);
    assert_eq!(tasks[2]["queue"], "other");

    // One invalid element: nothing of the batch is stored.
    let kind = unique_type("batch-bad");
    let r = api
        .post(
            "/v1/tasks/batch",
            json!({"tasks": [
                {"type": kind, "payload": 1},
                {"type": kind, "priority": 1000},
                {"type": kind, "payload": 3},
            ]}),
        )
        .await;
    let p = r.problem(422, Some("tasks[1].priority"));
    assert!(
        p["detail"].as_str().unwrap_or("").contains("priority"),
        "{p}"
    );
    let page = api.list(&format!("type={kind}")).await;
    assert_eq!(
        page["tasks"],
        json!([]),
        "no task of a refused batch may exist"
    );

    // The same for a missing type in the last element.
    let r = api
        .post(
            "/v1/tasks/batch",
            json!({"tasks": [{"type": kind}, {"type": kind}, {"payload": 1}]}),
        )
        .await;
    r.problem(422, Some("tasks[2].type"));
    assert_eq!(api.list(&format!("type={kind}")).await["tasks"], json!([]));
}

#[tokio::test]
async fn prefer_return_minimal_answers_only_ids_and_states() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("minimal");

    // The SDK's minimal batch: ids and states, in order, all stored whole.
    let client = dispatch_client::Client::new(&api.base).expect("client");
    let tasks: Vec<SubmitTask> = (0..3)
        .map(|i| {
            let payload = serde_json::value::to_raw_value(&json!({ "i": i })).expect("raw");
            SubmitTask::new(&kind, payload)
        })
        .collect();
    let refs = client.submit_batch_minimal(tasks).await.expect("batch");
    assert_eq!(refs.len(), 3);
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(r.state, "queued");
        let full = api.task(&r.id).await;
        assert_eq!(full["payload"], json!({ "i": i }), "batch order is kept");
        assert_eq!(full["type"], json!(kind));
    }

    // The header as sent by any client, among other preferences; a single
    // submission, then its idempotent repeat (200 with the original's id).
    install_crypto_provider();
    let http = reqwest::Client::new();
    let body = json!({"type": kind, "idempotency_key": format!("{kind}-key")});
    let mut ids = Vec::new();
    for expected in [201, 200] {
        let resp = http
            .post(format!("{}/v1/tasks", api.base))
            .header("Prefer", "respond-async, return=minimal; x=1")
            .json(&body)
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status().as_u16(), expected);
        assert_eq!(
            resp.headers()
                .get("preference-applied")
                .and_then(|v| v.to_str().ok()),
            Some("return=minimal")
        );
        let v: Value = resp.json().await.expect("JSON");
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["id", "state"], "{v}");
        ids.push(id_of(&v));
    }
    assert_eq!(ids[0], ids[1], "the repeat names the original");

    // Without the preference, the whole task as before.
    let full = api.post("/v1/tasks", json!({"type": kind})).await;
    assert!(full.headers.get("preference-applied").is_none());
    assert_eq!(full.expect(201)["type"], json!(kind));
}

#[tokio::test]
async fn cancel_a_queued_task_once() {
    let server = Server::start().await;
    let api = server.api();
    let id = api.submit_id("to-cancel", json!(null)).await;

    let t = api
        .post_empty(&format!("/v1/tasks/{id}/cancel"))
        .await
        .expect(200);
    assert_eq!(t["id"], json!(id));
    assert_eq!(t["state"], "cancelled");
    assert_eq!(api.task(&id).await["state"], "cancelled");

    let again = api.post_empty(&format!("/v1/tasks/{id}/cancel")).await;
    again.problem(409, None);

    api.post_empty("/v1/tasks/987654321/cancel")
        .await
        .problem(404, None);

    // A scheduled task can be cancelled too.
    let t = api
        .submit(json!({"type": "to-cancel", "delay_ms": 60_000}))
        .await;
    let id = id_of(&t);
    let t = api
        .post_empty(&format!("/v1/tasks/{id}/cancel"))
        .await
        .expect(200);
    assert_eq!(t["state"], "cancelled");
}

#[tokio::test]
async fn list_filters_and_pages_newest_first() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("list");
    let other_kind = unique_type("list-other");

    // 25 tasks, submitted one by one: every 3rd in queue "q1", every 5th
    // cancelled afterwards.
    let mut submitted = Vec::new();
    for i in 0..25 {
        let queue = if i % 3 == 0 { "q1" } else { "q2" };
        let t = api
            .submit(json!({"type": kind, "queue": queue, "payload": i}))
            .await;
        submitted.push(id_of(&t));
    }
    for id in submitted.iter().step_by(5) {
        api.post_empty(&format!("/v1/tasks/{id}/cancel"))
            .await
            .expect(200);
    }
    api.submit(json!({"type": other_kind, "queue": "q1"})).await;

    // Paging: limit 10 gives 10, 10, 5, each id once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut q = format!("type={kind}&limit=10");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page = api.list(&q).await;
        let ids = ids_of(&page["tasks"]);
        pages.push(ids.len());
        seen.extend(ids);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert!(page["next_cursor"].is_null(), "next_cursor: {page}");
                break;
            }
        }
        assert!(pages.len() <= 4, "paging does not end: {pages:?}");
    }
    assert_eq!(pages, vec![10, 10, 5], "page sizes");
    let mut newest_first = submitted.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every task exactly once, newest first");

    // Filters: state, queue, type, and their combination.
    let cancelled = api.list_ids(&format!("type={kind}&state=cancelled")).await;
    let want: Vec<String> = newest_first
        .iter()
        .filter(|id| submitted.iter().step_by(5).any(|c| c == *id))
        .cloned()
        .collect();
    assert_eq!(cancelled, want, "state=cancelled");
    let queued = api.list_ids(&format!("type={kind}&state=queued")).await;
    assert_eq!(queued.len(), 20);
    assert!(queued.iter().all(|id| !want.contains(id)));

    let q1 = api.list(&format!("type={kind}&queue=q1")).await;
    let q1_tasks = q1["tasks"].as_array().expect("tasks");
    assert_eq!(q1_tasks.len(), 9, "{q1}");
    assert!(
        q1_tasks
            .iter()
            .all(|t| t["queue"] == "q1" && t["type"] == json!(kind))
    );

    let q1_cancelled = api
        .list(&format!("type={kind}&queue=q1&state=cancelled"))
        .await;
    // i in 0..25 with i % 3 == 0 and i % 5 == 0: 0 and 15.
    assert_eq!(
        q1_cancelled["tasks"].as_array().map(Vec::len),
        Some(2),
        "{q1_cancelled}"
    );

    let all_q1 = api.list("queue=q1&limit=1000").await;
    let all_q1 = all_q1["tasks"].as_array().expect("tasks");
    assert_eq!(all_q1.len(), 10, "queue=q1 over both types");
    assert!(all_q1.iter().all(|t| t["queue"] == "q1"));

    // The default page is 100 and holds everything here (26 tasks).
    let page = api.list("").await;
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(26));
    assert!(page["next_cursor"].is_null());

    // Bad parameters.
    api.get("/v1/tasks?limit=0")
        .await
        .problem(422, Some("limit"));
    api.get("/v1/tasks?limit=5000")
        .await
        .problem(422, Some("limit"));
    api.get("/v1/tasks?state=bogus")
        .await
        .problem(422, Some("state"));
    api.get("/v1/tasks?limit=1000").await.expect(200);
    api.get("/v1/tasks?limit=1").await.expect(200);
}

#[tokio::test]
async fn metrics_are_prometheus_text_named_dispatch() {
    let server = Server::start().await;
    let api = server.api();
    api.submit_id("m", json!(1)).await;
    api.submit_id("m", json!(2)).await;

    let r = api.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain"),
        "content type {:?}",
        r.content_type
    );
    let text = &r.text;
    assert!(text.contains("dispatch_tasks_submitted_total"), "{text}");

    let mut names = HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let name = if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            rest.split_whitespace().next().unwrap_or("")
        } else if line.starts_with('#') {
            continue;
        } else {
            line.split(['{', ' ']).next().unwrap_or("")
        };
        assert!(
            name.starts_with("dispatch_"),
            "metric {name:?} in line {line:?}"
        );
        names.insert(name.to_owned());
    }
    assert!(!names.is_empty());

    let submitted: f64 = text
        .lines()
        .find(|l| l.starts_with("dispatch_tasks_submitted_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .expect("a dispatch_tasks_submitted_total sample");
    assert_eq!(submitted, 2.0, "two tasks were submitted");
}

/// The contract: `GET /v1/tasks/{id}?wait_ms=N` holds until the task is
/// terminal or N passes.
#[tokio::test]
async fn get_with_wait_ms_holds_until_terminal_or_timeout() {
    let server = Server::start().await;
    let api = server.api();
    let id = api.submit_id("waited", json!(null)).await;

    // Nothing runs it: the read holds about 400 ms, then shows it queued.
    let t0 = Instant::now();
    let t = api
        .get(&format!("/v1/tasks/{id}?wait_ms=400"))
        .await
        .expect(200);
    let held = t0.elapsed();
    assert_eq!(t["state"], "queued");
    assert!(
        held >= Duration::from_millis(350),
        "returned after {held:?}, before wait_ms"
    );
    assert!(held < Duration::from_secs(3), "held {held:?}");

    // A worker finishes it during the wait: the read returns at once.
    let w = api.register(&["waited"], 1).await;
    let waiting = {
        let api = api.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let t = api
                .get(&format!("/v1/tasks/{id}?wait_ms=5000"))
                .await
                .expect(200);
            (t, t0.elapsed())
        })
    };
    let task = api.poll_one(&w, Duration::from_secs(3)).await;
    api.complete(&id_of(&task), &w, json!("done"))
        .await
        .expect(200);
    let (t, held) = waiting.await.expect("waiter");
    assert_eq!(t["state"], "succeeded");
    assert!(
        held < Duration::from_secs(4),
        "held {held:?} after the task ended"
    );
    // The waiter is answered from memory: exactly what the store holds.
    assert_eq!(t["result"], "done");
    assert_eq!(t, api.get(&format!("/v1/tasks/{id}")).await.expect(200));
}
