//! The audit log end to end, with the real binary: each admin action and
//! each refused request appends one JSON line naming the token, never
//! holding it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, create_token, id_of};
use serde_json::{Value, json};

/// A request with an optional bearer token.
async fn call(
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut req = http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{base}{path}"),
    );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("an answer");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert!(status < 500, "{method} {path} -> {status}: {text}");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The lines of the audit log, once it holds `n` (the writer is
/// asynchronous); panics after a few seconds.
fn lines(file: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let got: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        if got.len() >= n || Instant::now() > deadline {
            assert_eq!(got.len(), n, "audit log: {text}");
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn admin_actions_and_refusals_are_logged_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let log = dir.path().join("audit.jsonl");
    let admin = create_token(&tokens, "admin", "ops");
    let server = Server::with_args(&[
        "--tokens",
        tokens.to_str().unwrap(),
        "--audit-log",
        log.to_str().unwrap(),
    ])
    .await;
    let base = server.url.as_str();
    let t = Some(admin.as_str());

    // Cancel.
    let (s, task) = call(
        base,
        "POST",
        "/v1/tasks",
        Some(json!({"type": "audit.a"})),
        t,
    )
    .await;
    assert_eq!(s, 201);
    let cancelled = id_of(&task);
    let (s, _) = call(
        base,
        "POST",
        &format!("/v1/tasks/{cancelled}/cancel"),
        None,
        t,
    )
    .await;
    assert_eq!(s, 200);

    // Retry: a task that dies at its only attempt.
    let kind = "audit.dies";
    let (s, task) = call(
        base,
        "POST",
        "/v1/tasks",
        Some(json!({"type": kind, "max_attempts": 1})),
        t,
    )
    .await;
    assert_eq!(s, 201);
    let dead = id_of(&task);
    let (s, w) = call(
        base,
        "POST",
        "/v1/workers",
        Some(json!({"name": "w", "types": [kind], "labels": {}, "capacity": 1})),
        t,
    )
    .await;
    assert_eq!(s, 201);
    let worker = w["id"].as_str().unwrap().to_owned();
    let (s, _) = call(
        base,
        "POST",
        &format!("/v1/workers/{worker}/poll"),
        Some(json!({"max": 1, "wait_ms": 3000})),
        t,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        base,
        "POST",
        &format!("/v1/tasks/{dead}/fail"),
        Some(json!({"worker_id": worker, "error": "boom"})),
        t,
    )
    .await;
    assert_eq!(s, 200);
    let (_, r) = call(
        base,
        "GET",
        &format!("/v1/tasks/{dead}?wait_ms=3000"),
        None,
        t,
    )
    .await;
    assert_eq!(r["state"], "dead", "{r}");
    let (s, _) = call(base, "POST", &format!("/v1/tasks/{dead}/retry"), None, t).await;
    assert_eq!(s, 200);

    // Pause, resume, schedule create and delete, a refusal.
    let (s, _) = call(base, "POST", "/v1/queues/audited/pause", None, t).await;
    assert_eq!(s, 200);
    let (s, _) = call(base, "POST", "/v1/queues/audited/resume", None, t).await;
    assert_eq!(s, 200);
    let schedule = json!({"name": "nightly", "cron": "30 2 * * *", "task": {"type": "audit.cron"}});
    let (s, _) = call(base, "POST", "/v1/schedules", Some(schedule), t).await;
    assert_eq!(s, 201);
    let (s, _) = call(base, "DELETE", "/v1/schedules/nightly", None, t).await;
    assert_eq!(s, 204);
    let (s, _) = call(base, "POST", "/v1/queues/audited/pause", None, None).await;
    assert_eq!(s, 401);

    let got = lines(&log, 7);
    let want = [
        ("task.cancel", cancelled.as_str(), 200),
        ("task.retry", dead.as_str(), 200),
        ("queue.pause", "audited", 200),
        ("queue.resume", "audited", 200),
        ("schedule.create", "nightly", 201),
        ("schedule.delete", "nightly", 204),
        ("auth.denied", "/v1/queues/audited/pause", 401),
    ];
    for (line, (action, target, outcome)) in got.iter().zip(want) {
        assert_eq!(line["action"], action, "{line}");
        assert_eq!(line["target"], target, "{line}");
        assert_eq!(line["outcome"], outcome, "{line}");
        common::assert_rfc3339(&line["at"]);
        assert!(
            line["remote"]
                .as_str()
                .is_some_and(|r| r.starts_with("127.0.0.1:")),
            "{line}"
        );
        if action == "auth.denied" {
            assert_eq!(line["token"], Value::Null, "{line}");
            assert_eq!(line["method"], "POST", "{line}");
            assert_eq!(line["path"], "/v1/queues/audited/pause", "{line}");
        } else {
            assert_eq!(line["token"], "ops", "{line}");
        }
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&admin), "the token never reaches the log");
    assert!(!text.contains(&admin["dsp_".len()..]));
}

/// The JSON lines of an audit file as they are now.
fn read_lines(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[tokio::test]
async fn refusals_cannot_fill_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let log = dir.path().join("audit.jsonl");
    create_token(&tokens, "admin", "ops");
    let server = Server::with_args(&[
        "--tokens",
        tokens.to_str().unwrap(),
        "--audit-log",
        log.to_str().unwrap(),
    ])
    .await;
    // 400 refused requests, each with a 30 KB path, sent as fast as the
    // server answers them.
    let long = format!("/v1/{}", "a".repeat(30_000));
    let http = reqwest::Client::new();
    let sent = 400;
    let started = Instant::now();
    for _ in 0..sent {
        let r = http
            .get(format!("{}{long}", server.url))
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status().as_u16(), 401);
    }
    let seconds = started.elapsed().as_secs() + 1;
    // Every refusal is either written or counted in a summary line, once
    // its second is over.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (written, suppressed, got) = loop {
        let got = read_lines(&log);
        let written = got.iter().filter(|l| l["action"] == "auth.denied").count();
        let suppressed: u64 = got
            .iter()
            .filter(|l| l["action"] == "auth.denied.suppressed")
            .map(|l| l["count"].as_u64().expect("a count"))
            .sum();
        if written as u64 + suppressed >= sent || Instant::now() > deadline {
            break (written, suppressed, got);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        written as u64 + suppressed,
        sent,
        "{written} + {suppressed}"
    );
    assert!(
        written as u64 <= 100 * (seconds + 1),
        "{written} lines in {seconds} s"
    );
    for line in &got {
        let text = line.to_string();
        assert!(text.len() < 1_000, "a line of {} bytes", text.len());
        if line["action"] == "auth.denied" {
            let path = line["path"].as_str().unwrap();
            assert!(path.ends_with("...(30004 bytes)"), "{path}");
            assert!(path.starts_with("/v1/aaaa"), "{path}");
        }
    }
}

#[tokio::test]
async fn the_audit_log_rotates_at_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let log = dir.path().join("audit.jsonl");
    create_token(&tokens, "admin", "ops");
    // A log already at its size: the next line starts a new file.
    let old = "{\"old\":true}\n".repeat((1 << 20) / 13 + 1);
    std::fs::write(&log, &old).unwrap();
    let server = Server::with_args(&[
        "--tokens",
        tokens.to_str().unwrap(),
        "--audit-log",
        log.to_str().unwrap(),
        "--audit-log-max-mb",
        "1",
    ])
    .await;
    let (s, _) = call(&server.url, "GET", "/v1/tasks", None, None).await;
    assert_eq!(s, 401);
    // The writer is asynchronous: the old file moves aside first.
    let rotated = dir.path().join("audit.jsonl.1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rotated.exists() {
        assert!(Instant::now() < deadline, "the audit log was not rotated");
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = lines(&log, 1);
    assert_eq!(got[0]["action"], "auth.denied");
    assert_eq!(std::fs::read_to_string(rotated).unwrap(), old);
}
