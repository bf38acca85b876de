//! End-to-end tests of `PATCH /v1/queues/{name}`: a change takes effect on
//! the next dispatch decision, is stored, and wins over the config file
//! after a restart; null clears a limit; bad members are refused naming
//! them; only the admin scope may change a queue, and each change is
//! audited.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Api, Body, Server, create_token, id_of};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(10);

/// `PATCH /v1/queues/{name}` with `body`.
async fn patch(api: &Api, name: &str, body: Value) -> common::Resp {
    api.send("PATCH", &format!("/v1/queues/{name}"), Body::Json(body))
        .await
}

/// `GET /v1/queues` by name.
async fn queues(api: &Api) -> HashMap<String, Value> {
    let list = api.get("/v1/queues").await.expect(200);
    list["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| (q["name"].as_str().unwrap().to_owned(), q.clone()))
        .collect()
}

/// Polls until `n` more tasks arrive (failing past `WITHIN`); returns them.
async fn collect(api: &Api, worker: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = Instant::now() + WITHIN;
    while got.len() < n {
        assert!(Instant::now() < deadline, "got {} of {n} tasks", got.len());
        got.extend(api.poll(worker, (n - got.len()) as u32, 200).await);
    }
    got
}

/// Asserts no task arrives for a while (a limit holds them back).
async fn nothing_more(api: &Api, worker: &str) {
    let more = api.poll(worker, 10, 500).await;
    assert!(more.is_empty(), "a limit should hold these back: {more:?}");
}

#[tokio::test]
async fn a_change_applies_at_once_and_wins_over_the_config_file_after_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dispatch.toml");
    std::fs::write(&config, "[queues.capped]\nweight = 2\nmax_running = 1\n").unwrap();
    let server = Server::with_args(&["--config", config.to_str().unwrap()]).await;
    let api = server.api();
    let kind = "patch.capped";
    let worker = api.register(&[kind], 10).await;
    let batch: Vec<Value> = (0..4)
        .map(|_| json!({"type": kind, "queue": "capped"}))
        .collect();
    api.post("/v1/tasks/batch", json!({"tasks": batch}))
        .await
        .expect(201);
    let first = collect(&api, &worker, 1).await;
    nothing_more(&api, &worker).await;

    // Raising the cap lets two more start at once; the running one stays.
    let q = patch(&api, "capped", json!({"max_running": 3}))
        .await
        .expect(200);
    assert_eq!(q["max_running"], 3);
    assert_eq!(q["weight"], 2, "what the patch does not name stays");
    assert_eq!(q["counts"]["running"], 1);
    let more = collect(&api, &worker, 2).await;
    nothing_more(&api, &worker).await;
    let running = api.task(&id_of(&first[0])).await;
    assert_eq!(running["state"], "running", "not disturbed: {running}");
    assert_eq!(running["attempts"], 1);

    // Null clears the cap: the last one starts.
    let q = patch(&api, "capped", json!({"max_running": null}))
        .await
        .expect(200);
    assert_eq!(q["max_running"], Value::Null);
    let last = collect(&api, &worker, 1).await;
    for t in first.iter().chain(&more).chain(&last) {
        api.complete(&id_of(t), &worker, json!(null))
            .await
            .expect(200);
    }

    let q = patch(
        &api,
        "capped",
        json!({"weight": 5, "max_depth": 2, "strategy": "random", "rate_per_sec": 50, "burst": 4}),
    )
    .await
    .expect(200);
    assert_eq!(q["weight"], 5);
    assert_eq!(q["max_depth"], 2);
    assert_eq!(q["strategy"], "random");
    assert_eq!(q["rate_per_sec"], 50.0);
    assert_eq!(q["burst"], 4);

    // The config file now says otherwise; the stored settings win.
    std::fs::write(&config, "[queues.capped]\nweight = 9\nmax_running = 1\n").unwrap();
    let server = server.crash_and_restart().await;
    let api = server.api();
    let q = &queues(&api).await["capped"];
    assert_eq!(q["weight"], 5, "{q}");
    assert_eq!(q["max_running"], Value::Null, "{q}");
    assert_eq!(q["max_depth"], 2, "{q}");
    assert_eq!(q["strategy"], "random", "{q}");
    // max_depth is in force: a third waiting task is refused.
    for _ in 0..2 {
        api.post(
            "/v1/tasks",
            json!({"type": "patch.idle", "queue": "capped"}),
        )
        .await
        .expect(201);
    }
    let full = api
        .post(
            "/v1/tasks",
            json!({"type": "patch.idle", "queue": "capped"}),
        )
        .await;
    assert_eq!(full.status, 429, "{}", full.text);
    // Another queue still follows the file; one the file never named can
    // be changed too.
    let q = patch(&api, "fresh", json!({"max_per_key": 1}))
        .await
        .expect(200);
    assert_eq!(
        (q["weight"].clone(), q["max_per_key"].clone()),
        (json!(1), json!(1))
    );
    let server = server.crash_and_restart().await;
    let q = &queues(&server.api()).await["capped"];
    assert_eq!(q["weight"], 5, "still after a second restart: {q}");
}

#[tokio::test]
async fn bad_members_are_refused_naming_them() {
    let server = Server::start().await;
    let api = server.api();
    for (body, field) in [
        (json!({"weight": 0}), "weight"),
        (json!({"weight": "heavy"}), "weight"),
        (json!({"max_running": -1}), "max_running"),
        (json!({"rate_per_sec": 0}), "rate_per_sec"),
        (json!({"burst": 3}), "burst"),
        (json!({"max_depth": 1.5}), "max_depth"),
        (json!({"strategy": "broadcast"}), "strategy"),
        (json!({"colour": "red"}), "colour"),
        (json!({}), "body"),
    ] {
        let r = patch(&api, "q", body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert!(r.content_type.starts_with("application/problem+json"));
        assert_eq!(r.json()["field"], field, "{body}: {}", r.text);
    }
    let r = patch(&api, "bad%20name", json!({"weight": 2})).await;
    assert_eq!((r.status, r.json()["field"].clone()), (422, json!("name")));
    let r = api
        .send(
            "PATCH",
            "/v1/queues/q",
            Body::Raw(b"{nope".to_vec(), Some("application/json")),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // Nothing was changed by the refusals.
    let q = patch(&api, "q", json!({"weight": 3})).await.expect(200);
    assert_eq!(q["burst"], Value::Null);
    assert_eq!(q["weight"], 3);

    // The CLI: `none` clears, a bad value is refused naming it.
    let out = common::run_cli(
        &[
            "queue",
            "set",
            "q",
            "--weight",
            "4",
            "--max-running",
            "2",
            "--server",
            &server.url,
        ],
        &[],
    );
    assert!(common::ok(&out).contains("updated queue q"));
    let out = common::run_cli(
        &[
            "--json",
            "queue",
            "set",
            "q",
            "--max-running",
            "none",
            "--server",
            &server.url,
        ],
        &[],
    );
    let q: Value = serde_json::from_str(&common::ok(&out)).unwrap();
    assert_eq!(
        (q["weight"].clone(), q["max_running"].clone()),
        (json!(4), Value::Null)
    );
    let out = common::run_cli(
        &[
            "queue",
            "set",
            "q",
            "--strategy",
            "nope",
            "--server",
            &server.url,
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("strategy"),
        "{}",
        common::stderr(&out)
    );
}

/// A PATCH with a bearer token; answers the status.
async fn patch_as(base: &str, token: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .patch(format!("{base}/v1/queues/guarded"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("an answer")
        .status()
        .as_u16()
}

fn audit_lines(file: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let got: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        if got.len() >= n || Instant::now() > deadline {
            assert_eq!(got.len(), n, "audit log: {text}");
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn only_the_admin_scope_changes_a_queue_and_each_change_is_audited() {
    common::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let log = dir.path().join("audit.jsonl");
    let admin = create_token(&tokens, "admin", "ops");
    let submit = create_token(&tokens, "submit", "app");
    let server = Server::with_args(&[
        "--tokens",
        tokens.to_str().unwrap(),
        "--audit-log",
        log.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        patch_as(&server.url, &submit, json!({"weight": 2})).await,
        403
    );
    assert_eq!(
        patch_as(&server.url, &admin, json!({"weight": 2})).await,
        200
    );
    assert_eq!(
        patch_as(&server.url, &admin, json!({"weight": 0})).await,
        422
    );
    let got = audit_lines(&log, 3);
    let want = [
        ("auth.denied", Value::Null, 403),
        ("queue.update", json!("ops"), 200),
        ("queue.update", json!("ops"), 422),
    ];
    for (line, (action, token, outcome)) in got.iter().zip(want) {
        assert_eq!(line["action"], action, "{line}");
        assert_eq!(line["outcome"], outcome, "{line}");
        if action == "queue.update" {
            assert_eq!(line["target"], "guarded", "{line}");
            assert_eq!(line["token"], token, "{line}");
        }
    }
}
