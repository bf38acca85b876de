//! End-to-end tests of changing cron schedules while they run:
//! `PATCH /v1/schedules/{name}`, pause, resume (missed fires follow the
//! misfire policy) and trigger (one manual fire now); each stored, checked
//! like a creation, admin only and audited.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Api, Body, Server, create_token};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(10);

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn patch(api: &Api, name: &str, body: Value) -> common::Resp {
    api.send("PATCH", &format!("/v1/schedules/{name}"), Body::Json(body))
        .await
}

/// The fire times (from their keys) of the expression's fires of
/// `schedule`, whose tasks are of `kind`.
async fn fires(api: &Api, kind: &str, schedule: &str) -> Vec<u64> {
    let list = api.list(&format!("type={kind}&limit=1000")).await;
    let prefix = format!("schedule:{schedule}:");
    let mut at: Vec<u64> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| {
            t["idempotency_key"]
                .as_str()?
                .strip_prefix(&prefix)?
                .parse()
                .ok()
        })
        .collect();
    at.sort();
    at
}

/// Waits until `schedule` has fired at least `n` times in total.
async fn wait_fires(api: &Api, kind: &str, schedule: &str, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + WITHIN;
    loop {
        let got = fires(api, kind, schedule).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{schedule} fired {got:?}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pauses `name` for about three seconds at one fire a second, then
/// resumes it; answers the fires of the pause window `(paused, resumed]`.
async fn fires_missed_while_paused(api: &Api, kind: &str, name: &str) -> Vec<u64> {
    let s = api
        .post_empty(&format!("/v1/schedules/{name}/pause"))
        .await
        .expect(200);
    assert_eq!(s["paused"], true);
    assert_eq!(s["next_fire_at"], Value::Null);
    let paused = wall_ms();
    let before = fires(api, kind, name).await;
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    assert_eq!(
        fires(api, kind, name).await,
        before,
        "a paused schedule does not fire"
    );
    let resumed = wall_ms();
    let s = api
        .post_empty(&format!("/v1/schedules/{name}/resume"))
        .await
        .expect(200);
    assert_eq!(s["paused"], false);
    // The resume's evaluation runs on the loop's next pass.
    let all = wait_fires(api, kind, name, before.len() + 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = fires(api, kind, name).await.max(all);
    all.into_iter()
        .filter(|&at| at > paused && at <= resumed)
        .collect()
}

#[tokio::test]
async fn patch_pause_resume_and_trigger_change_a_running_schedule() {
    let server = Server::start().await;
    let api = server.api();
    let created = api
        .post(
            "/v1/schedules",
            json!({"name": "yearly", "cron": "0 0 1 1 *", "timezone": "Europe/Paris",
                   "task": {"type": "sched.old", "payload": {"n": 1}}, "misfire": "skip"}),
        )
        .await
        .expect(201);
    assert_eq!(created["last_fire_at"], Value::Null);

    // Trigger: one manual fire now, told apart by its key.
    let t = api
        .post_empty("/v1/schedules/yearly/trigger")
        .await
        .expect(201);
    assert_eq!(t["type"], "sched.old");
    assert_eq!(t["payload"], json!({"n": 1}));
    let key = t["idempotency_key"].as_str().unwrap();
    assert!(key.starts_with("schedule:yearly:manual:"), "{key}");
    let s = api.get("/v1/schedules/yearly").await.expect(200);
    assert!(s["last_fire_at"].is_string(), "{s}");

    // Patch: a new expression and template, every second from now on.
    let s = patch(
        &api,
        "yearly",
        json!({"cron": "* * * * * *", "task": {"type": "sched.new"}, "name": "yearly"}),
    )
    .await
    .expect(200);
    assert_eq!(s["cron"], "* * * * * *");
    assert_eq!(
        s["timezone"], "Europe/Paris",
        "what the patch leaves out stays"
    );
    assert_eq!(s["misfire"], "skip");
    assert_eq!(s["task"], json!({"type": "sched.new"}));
    wait_fires(&api, "sched.new", "yearly", 1).await;

    // Skip: of the fires missed while paused, at most the latest (on time)
    // runs.
    let missed = fires_missed_while_paused(&api, "sched.new", "yearly").await;
    assert!(missed.len() <= 1, "skip ran {missed:?}");

    // Catch-up: each missed fire runs.
    patch(
        &api,
        "yearly",
        json!({"misfire": "catch_up", "catch_up_limit": 50}),
    )
    .await
    .expect(200);
    let missed = fires_missed_while_paused(&api, "sched.new", "yearly").await;
    assert!(missed.len() >= 2, "catch_up ran {missed:?}");

    // A trigger works while paused; the change survives a restart.
    api.post_empty("/v1/schedules/yearly/pause")
        .await
        .expect(200);
    let t = api
        .post_empty("/v1/schedules/yearly/trigger")
        .await
        .expect(201);
    assert_eq!(t["type"], "sched.new");
    let server = server.crash_and_restart().await;
    let api = server.api();
    let s = api.get("/v1/schedules/yearly").await.expect(200);
    assert_eq!(
        (
            s["cron"].clone(),
            s["misfire"].clone(),
            s["paused"].clone(),
            s["catch_up_limit"].clone()
        ),
        (
            json!("* * * * * *"),
            json!("catch_up"),
            json!(true),
            json!(50)
        ),
    );
    assert_eq!(s["created_at"], created["created_at"]);
}

#[tokio::test]
async fn a_bad_change_is_refused_like_a_bad_creation_and_changes_nothing() {
    let server = Server::start().await;
    let api = server.api();
    api.post(
        "/v1/schedules",
        json!({"name": "n", "cron": "0 3 * * *", "task": {"type": "x"}}),
    )
    .await
    .expect(201);
    for (body, field) in [
        (json!({"cron": "99 * * * *"}), "cron"),
        (json!({"timezone": "Mars/Olympus"}), "timezone"),
        (json!({"misfire": "sometimes"}), "misfire"),
        (json!({"catch_up_limit": 0}), "catch_up_limit"),
        (json!({"task": {"type": "a b"}}), "task.type"),
        (
            json!({"task": {"type": "x", "delay_ms": 5}}),
            "task.delay_ms",
        ),
        (json!({"name": "other"}), "name"),
    ] {
        let r = patch(&api, "n", body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert_eq!(r.json()["field"], field, "{body}: {}", r.text);
    }
    let r = patch(&api, "n", json!({"colour": "red"})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["field"], "colour", "{}", r.text);
    for path in [
        "/v1/schedules/missing/pause",
        "/v1/schedules/missing/resume",
        "/v1/schedules/missing/trigger",
    ] {
        assert_eq!(api.post_empty(path).await.status, 404, "{path}");
    }
    assert_eq!(
        patch(&api, "missing", json!({"paused": true})).await.status,
        404
    );
    let s = api.get("/v1/schedules/n").await.expect(200);
    assert_eq!(
        (s["cron"].clone(), s["paused"].clone()),
        (json!("0 3 * * *"), json!(false))
    );
}

async fn call(base: &str, method: &str, path: &str, body: Option<Value>, token: &str) -> u16 {
    let mut req = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{base}{path}"),
        )
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("an answer").status().as_u16()
}

fn audit_lines(file: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let got: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if got.len() >= n || Instant::now() > deadline {
            assert_eq!(got.len(), n, "audit log: {text}");
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn schedule_changes_need_the_admin_scope_and_are_audited() {
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
    let base = server.url.as_str();
    let create = json!({"name": "s", "cron": "0 3 * * *", "task": {"type": "x"}});
    assert_eq!(
        call(base, "POST", "/v1/schedules", Some(create), &admin).await,
        201
    );
    let actions = [
        (
            "PATCH",
            "/v1/schedules/s",
            Some(json!({"cron": "0 4 * * *"})),
            "schedule.update",
            200,
        ),
        ("POST", "/v1/schedules/s/pause", None, "schedule.pause", 200),
        (
            "POST",
            "/v1/schedules/s/resume",
            None,
            "schedule.resume",
            200,
        ),
        (
            "POST",
            "/v1/schedules/s/trigger",
            None,
            "schedule.trigger",
            201,
        ),
    ];
    for (method, path, body, _, _) in &actions {
        assert_eq!(
            call(base, method, path, body.clone(), &submit).await,
            403,
            "{path}"
        );
    }
    for (method, path, body, _, status) in &actions {
        assert_eq!(
            call(base, method, path, body.clone(), &admin).await,
            *status,
            "{path}"
        );
    }
    let got = audit_lines(&log, 1 + 2 * actions.len());
    for (line, (_, _, _, action, status)) in got[5..].iter().zip(&actions) {
        assert_eq!(line["action"], *action, "{line}");
        assert_eq!(line["target"], "s", "{line}");
        assert_eq!(line["outcome"], *status, "{line}");
        assert_eq!(line["token"], "ops", "{line}");
    }
    for line in &got[1..5] {
        assert_eq!(line["action"], "auth.denied", "{line}");
    }
}
