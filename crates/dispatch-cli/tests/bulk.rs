//! End-to-end tests of the bulk operations: `POST /v1/tasks/retry` and
//! `POST /v1/tasks/cancel` with filters, their scope and audit entries,
//! and `dispatch retry --state dead --type T` / `dispatch cancel --queue Q`.

mod common;

use std::time::Duration;

use common::{Api, Server, create_token, id_of, ok, run_cli, stdout};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(15);

/// Submits `n` tasks of `kind` with one attempt each, has a worker fail
/// them all, and returns their ids once every one is dead.
async fn dead_tasks(api: &Api, kind: &str, queue: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let t = api
            .submit(json!({"type": kind, "queue": queue, "payload": i, "max_attempts": 1}))
            .await;
        ids.push(id_of(&t));
    }
    let w = api.register(&[kind], n as u32).await;
    let got = api.poll_n(&w, n, WITHIN).await;
    assert_eq!(got.len(), n, "the worker got every task");
    for t in &got {
        api.fail(&id_of(t), &w, "boom", json!({})).await.expect(200);
    }
    api.delete(&format!("/v1/workers/{w}")).await;
    for id in &ids {
        api.wait_task(id, WITHIN, |t| t["state"] == "dead").await;
    }
    ids
}

async fn states(api: &Api, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(
            api.task(id).await["state"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        );
    }
    out
}

#[tokio::test]
async fn bulk_retry_requeues_the_matching_dead_tasks_only() {
    let server = Server::start().await;
    let api = server.api();
    let mail = dead_tasks(&api, "bulk.mail", "default", 3).await;
    let sms = dead_tasks(&api, "bulk.sms", "default", 2).await;
    let live = api.submit_id("bulk.mail", json!("live")).await;

    let r = api
        .post(
            "/v1/tasks/retry",
            json!({"state": "dead", "type": "bulk.mail"}),
        )
        .await
        .expect(200);
    assert_eq!(r, json!({"count": 3}));
    for t in states(&api, &mail).await {
        assert_eq!(t, "queued");
    }
    for id in &mail {
        let t = api.task(id).await;
        assert_eq!(t["attempts"], 0, "fresh attempts: {t}");
    }
    assert_eq!(states(&api, &sms).await, ["dead", "dead"]);
    assert_eq!(api.task(&live).await["state"], "queued");

    // Nothing dead of that type is left: the count is 0.
    let r = api
        .post("/v1/tasks/retry", json!({"type": "bulk.mail"}))
        .await
        .expect(200);
    assert_eq!(r, json!({"count": 0}));

    // The CLI: `dispatch retry --state dead --type T`.
    let out = ok(&run_cli(
        &[
            "retry",
            "--state",
            "dead",
            "--type",
            "bulk.sms",
            "--server",
            &server.url,
        ],
        &[],
    ));
    assert!(out.contains("requeued 2"), "{out}");
    assert_eq!(states(&api, &sms).await, ["queued", "queued"]);
    let out = ok(&run_cli(
        &[
            "retry",
            "--type",
            "bulk.sms",
            "--json",
            "--server",
            &server.url,
        ],
        &[],
    ));
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v, json!({"count": 0}));
}

#[tokio::test]
async fn bulk_cancel_cancels_the_matching_live_tasks_only() {
    let server = Server::start().await;
    let api = server.api();
    let mut bulk = Vec::new();
    for i in 0..4 {
        let t = api
            .submit(json!({"type": "bc.job", "queue": "bulkq", "payload": i}))
            .await;
        bulk.push(id_of(&t));
    }
    // A delayed one is live too (scheduled).
    let t = api
        .submit(json!({"type": "bc.job", "queue": "bulkq", "delay_ms": 600_000}))
        .await;
    bulk.push(id_of(&t));
    let other = api
        .submit(json!({"type": "bc.job", "queue": "other"}))
        .await;
    let other = id_of(&other);
    let dead = dead_tasks(&api, "bc.dead", "bulkq", 1).await;

    let out = ok(&run_cli(
        &["cancel", "--queue", "bulkq", "--server", &server.url],
        &[],
    ));
    assert!(out.contains("cancelled 5 tasks"), "{out}");
    for s in states(&api, &bulk).await {
        assert_eq!(s, "cancelled");
    }
    assert_eq!(api.task(&other).await["state"], "queued");
    assert_eq!(states(&api, &dead).await, ["dead"], "terminal tasks stay");

    // By type and state, through the API.
    let r = api
        .post(
            "/v1/tasks/cancel",
            json!({"type": "bc.job", "state": "queued"}),
        )
        .await
        .expect(200);
    assert_eq!(r, json!({"count": 1}));
    assert_eq!(api.task(&other).await["state"], "cancelled");
    let r = api
        .post("/v1/tasks/cancel", json!({"queue": "bulkq"}))
        .await
        .expect(200);
    assert_eq!(r, json!({"count": 0}));
}

#[tokio::test]
async fn bulk_filters_are_checked() {
    let server = Server::start().await;
    let api = server.api();
    let id = api.submit_id("bf.job", json!(null)).await;
    for path in ["/v1/tasks/retry", "/v1/tasks/cancel"] {
        // At least one filter.
        let p = api.post(path, json!({})).await.problem(422, None);
        assert!(
            p["detail"]
                .as_str()
                .unwrap_or("")
                .contains("at least one filter"),
            "{p}"
        );
        // Unknown fields are refused.
        api.post(path, json!({"tpye": "bf.job"}))
            .await
            .problem(400, None);
        api.post(path, json!({"type": "no spaces"}))
            .await
            .problem(422, Some("type"));
        api.post(path, json!({"state": "bogus"}))
            .await
            .problem(422, Some("state"));
    }
    // Retry takes dead tasks only; cancel live ones only.
    api.post("/v1/tasks/retry", json!({"state": "queued"}))
        .await
        .problem(422, Some("state"));
    api.post("/v1/tasks/cancel", json!({"state": "dead"}))
        .await
        .problem(422, Some("state"));
    // None of that touched the task; the CLI refuses with the field.
    assert_eq!(api.task(&id).await["state"], "queued");
    let out = run_cli(
        &["cancel", "--state", "succeeded", "--server", &server.url],
        &[],
    );
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("state"), "{err}");
    assert!(stdout(&out).is_empty());
    // An id and filters do not mix.
    let out = run_cli(
        &["cancel", &id, "--queue", "q", "--server", &server.url],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    // The single-task forms still work.
    let out = ok(&run_cli(&["cancel", &id, "--server", &server.url], &[]));
    assert!(out.contains(&id), "{out}");
}

#[tokio::test]
async fn bulk_operations_need_admin_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let audit = dir.path().join("audit.log");
    let submit = create_token(&file, "submit", "client");
    let admin = create_token(&file, "admin", "ops");
    let server = Server::with_args(&[
        "--tokens",
        file.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ])
    .await;
    let env_submit = [
        ("DISPATCH_SERVER", server.url.as_str()),
        ("DISPATCH_TOKEN", submit.as_str()),
    ];
    let out = run_cli(&["submit", "ba.job"], &env_submit);
    ok(&out);
    let out = run_cli(&["cancel", "--type", "ba.job"], &env_submit);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("forbidden") && err.contains("admin"), "{err}");
    let out = run_cli(&["retry", "--type", "ba.job"], &env_submit);
    assert!(!out.status.success());

    let env_admin = [
        ("DISPATCH_SERVER", server.url.as_str()),
        ("DISPATCH_TOKEN", admin.as_str()),
    ];
    let out = ok(&run_cli(&["cancel", "--type", "ba.job"], &env_admin));
    assert!(out.contains("cancelled 1 tasks"), "{out}");

    // Every line is written by the audit thread: wait for ours.
    let deadline = std::time::Instant::now() + WITHIN;
    let lines = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines
            .iter()
            .any(|l| l["action"] == "tasks.cancel" && l["outcome"] == 200)
        {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit line: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ok_line = lines
        .iter()
        .find(|l| l["action"] == "tasks.cancel" && l["outcome"] == 200)
        .unwrap();
    assert_eq!(ok_line["token"], "ops");
    let target: Value =
        serde_json::from_str(ok_line["target"].as_str().expect("a target")).expect("JSON");
    assert_eq!(target, json!({"type": "ba.job"}));
    assert!(
        lines
            .iter()
            .any(|l| l["action"] == "auth.denied" && l["path"] == "/v1/tasks/retry"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn bulk_operations_go_past_one_page() {
    // More than one page of 1,000 on each side.
    const N: usize = 1_200;
    let server = Server::start().await;
    let api = server.api();
    let tasks: Vec<Value> = (0..N)
        .map(|i| json!({"type": "page.job", "queue": "pages", "payload": i, "max_attempts": 1}))
        .collect();
    let r = api
        .post("/v1/tasks/batch", json!({"tasks": tasks}))
        .await
        .expect(201);
    assert_eq!(r["tasks"].as_array().map(Vec::len), Some(N));
    // One worker takes them all and fails them all in one report.
    let w = api.register(&["page.job"], N as u32).await;
    let got = api.poll_n(&w, N, WITHIN).await;
    assert_eq!(got.len(), N);
    let results: Vec<Value> = got
        .iter()
        .map(|t| json!({"task_id": id_of(t), "error": "boom"}))
        .collect();
    api.post(
        &format!("/v1/workers/{w}/poll"),
        json!({"max": 1, "wait_ms": 0, "results": results}),
    )
    .await
    .expect(200);
    api.delete(&format!("/v1/workers/{w}")).await;
    api.wait_list("state=dead&queue=pages&limit=1000", WITHIN, |p| {
        p["tasks"].as_array().map(Vec::len) == Some(1000)
    })
    .await;

    let r = api
        .post("/v1/tasks/retry", json!({"queue": "pages"}))
        .await
        .expect(200);
    assert_eq!(r, json!({"count": N}));
    assert_eq!(api.list_ids("state=dead&queue=pages").await.len(), 0);

    let r = api
        .post("/v1/tasks/cancel", json!({"queue": "pages"}))
        .await
        .expect(200);
    assert_eq!(r, json!({"count": N}));
    let mut cancelled = 0;
    let mut cursor = String::new();
    loop {
        let page = api
            .list(&format!("state=cancelled&queue=pages&limit=1000{cursor}"))
            .await;
        cancelled += page["tasks"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(cancelled, N);
}
