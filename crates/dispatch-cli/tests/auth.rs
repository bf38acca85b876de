//! Bearer tokens and scopes against the real binary: `dispatch token
//! create`, the endpoint x token matrix, the CLI's `--token`, and the
//! refusal to listen beyond loopback without tokens.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Server, assert_problem_shape, create_token, run_cli};
use serde_json::{Value, json};

/// A server with one token per scope.
struct Secured {
    server: Server,
    _dir: tempfile::TempDir,
    submit: String,
    work: String,
    admin: String,
}

async fn secured() -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let submit = create_token(&file, "submit", "client");
    let work = create_token(&file, "work", "worker");
    let admin = create_token(&file, "admin", "ops");
    let server = Server::with_args(&["--tokens", file.to_str().unwrap()]).await;
    Secured {
        server,
        _dir: dir,
        submit,
        work,
        admin,
    }
}

/// A request with an optional bearer token; returns status, headers, body.
async fn call(
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> common::Resp {
    let http = reqwest::Client::new();
    let what = format!("{method} {path} with {token:?}");
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
    let resp = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = resp.text().await.unwrap();
    assert!(status < 500, "{what} -> {status}: {text}");
    common::Resp {
        status,
        content_type,
        headers,
        text,
        what,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Need {
    Open,
    Any,
    Submit,
    Work,
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Nobody,
    Bad,
    Submit,
    Work,
    Admin,
}

/// The status class a caller gets: 401, 403 or through (anything else).
fn expected(need: Need, who: Who) -> Option<u16> {
    match (need, who) {
        (Need::Open, _) => None,
        (_, Who::Nobody | Who::Bad) => Some(401),
        (_, Who::Admin) | (Need::Any, _) => None,
        (Need::Submit, Who::Submit) | (Need::Work, Who::Work) => None,
        _ => Some(403),
    }
}

#[tokio::test]
async fn every_endpoint_checks_its_scope() {
    let s = secured().await;
    let base = s.server.url.clone();
    // Something to point at: a task, a schedule.
    let task = call(
        &base,
        "POST",
        "/v1/tasks",
        Some(json!({"type": "t"})),
        Some(&s.submit),
    )
    .await
    .expect(201);
    let id = task["id"].as_str().unwrap().to_owned();
    // A worker no token owns: which token may act for a registered worker
    // is `a_worker_belongs_to_the_token_that_registered_it`.
    let wid = "999999";
    let schedule = json!({"name": "nightly", "cron": "0 3 * * *", "task": {"type": "t"}});
    // The last column is the status a token with the scope gets: what the
    // endpoint answers that request (404 for the ids no one has).
    let rows: Vec<(&str, String, Option<Value>, Need, u16)> = vec![
        ("GET", "/healthz".into(), None, Need::Open, 200),
        ("GET", "/metrics".into(), None, Need::Any, 200),
        (
            "POST",
            "/v1/tasks".into(),
            Some(json!({"type": "t"})),
            Need::Submit,
            201,
        ),
        (
            "POST",
            "/v1/tasks/batch".into(),
            Some(json!({"tasks": [{"type": "t"}]})),
            Need::Submit,
            201,
        ),
        ("GET", "/v1/tasks".into(), None, Need::Submit, 200),
        ("GET", format!("/v1/tasks/{id}"), None, Need::Submit, 200),
        (
            "POST",
            "/v1/tasks/999999/cancel".into(),
            None,
            Need::Submit,
            404,
        ),
        (
            "POST",
            format!("/v1/tasks/{id}/retry"),
            None,
            Need::Admin,
            409,
        ),
        (
            "POST",
            format!("/v1/tasks/{id}/complete"),
            Some(json!({"worker_id": wid, "result": null})),
            Need::Work,
            409,
        ),
        (
            "POST",
            format!("/v1/tasks/{id}/fail"),
            Some(json!({"worker_id": wid, "error": "x"})),
            Need::Work,
            409,
        ),
        (
            "POST",
            "/v1/workers".into(),
            Some(json!({"name": "w2", "types": ["other"], "capacity": 1})),
            Need::Work,
            201,
        ),
        ("GET", "/v1/workers".into(), None, Need::Any, 200),
        (
            "POST",
            format!("/v1/workers/{wid}/heartbeat"),
            None,
            Need::Work,
            404,
        ),
        (
            "POST",
            format!("/v1/workers/{wid}/poll"),
            Some(json!({"max": 1, "wait_ms": 0})),
            Need::Work,
            404,
        ),
        ("DELETE", "/v1/workers/999999".into(), None, Need::Work, 404),
        ("GET", "/v1/queues".into(), None, Need::Any, 200),
        ("POST", "/v1/queues/q1/pause".into(), None, Need::Admin, 200),
        (
            "POST",
            "/v1/queues/q1/resume".into(),
            None,
            Need::Admin,
            200,
        ),
        (
            "POST",
            "/v1/schedules".into(),
            Some(schedule),
            Need::Admin,
            201,
        ),
        ("GET", "/v1/schedules".into(), None, Need::Any, 200),
        ("GET", "/v1/schedules/nightly".into(), None, Need::Any, 200),
        (
            "DELETE",
            "/v1/schedules/nope".into(),
            None,
            Need::Admin,
            404,
        ),
        ("GET", "/v1/no-such-endpoint".into(), None, Need::Any, 404),
    ];
    let mut checked = 0;
    for (method, path, body, need, allowed) in &rows {
        for who in [Who::Nobody, Who::Bad, Who::Submit, Who::Work, Who::Admin] {
            let token = match who {
                Who::Nobody => None,
                Who::Bad => Some("dsp_0000000000000000000000000000000000000000"),
                Who::Submit => Some(s.submit.as_str()),
                Who::Work => Some(s.work.as_str()),
                Who::Admin => Some(s.admin.as_str()),
            };
            let r = call(&base, method, path, body.clone(), token).await;
            match expected(*need, who) {
                Some(401) => {
                    let p = r.problem(401, None);
                    assert_eq!(
                        r.headers
                            .get("www-authenticate")
                            .and_then(|v| v.to_str().ok()),
                        Some("Bearer"),
                        "{}: {p}",
                        r.what
                    );
                }
                Some(403) => {
                    let p = r.problem(403, None);
                    let scope = format!("{need:?}").to_lowercase();
                    assert!(
                        p["detail"].as_str().unwrap().contains(&scope),
                        "{}: the 403 names the scope {scope}: {p}",
                        r.what
                    );
                    // Once: never "scope admin (or admin)".
                    assert_eq!(
                        p["detail"].as_str().unwrap().matches("admin").count(),
                        1,
                        "{}: the 403 names admin once: {p}",
                        r.what
                    );
                }
                _ => {
                    assert_eq!(
                        r.status, *allowed,
                        "{} ({need:?}, {who:?}): {}",
                        r.what, r.text
                    );
                    if r.status >= 400 {
                        assert_problem_shape(&r);
                    }
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, rows.len() * 5);
}

#[tokio::test]
async fn token_create_prints_the_token_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let a = create_token(&file, "submit,work", "ci");
    let b = create_token(&file, "admin", "ops");
    assert_ne!(a, b);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(&a) && !text.contains(&a["dsp_".len()..]),
        "{text}"
    );
    assert!(
        !text.contains(&b) && !text.contains(&b["dsp_".len()..]),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("sha256:") && lines[0].contains(" submit,work ci created="));
    assert!(lines[1].starts_with("sha256:") && lines[1].contains(" admin ops created="));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let out = run_cli(
        &[
            "token",
            "create",
            "--scope",
            "root",
            "--tokens",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

#[tokio::test]
async fn a_bad_token_file_stops_the_server_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# ok\nsha256:nothex submit\n").unwrap();
    let out = run_cli(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data",
            dir.path().join("data").to_str().unwrap(),
            "--tokens",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains("line 2"),
        "{err}"
    );
}

#[tokio::test]
async fn the_cli_sends_its_token_and_explains_a_401_in_one_line() {
    let s = secured().await;
    let url = s.server.url.as_str();
    let out = run_cli(&["--server", url, "--token", &s.submit, "submit", "t"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cli(
        &["--server", url, "tasks"],
        &[("DISPATCH_TOKEN", &s.submit)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cli(&["--server", url, "tasks"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("token") && err.contains("DISPATCH_TOKEN"),
        "{err}"
    );
    let out = run_cli(
        &["--server", url, "--token", &s.submit, "queue", "pause", "q"],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("admin"), "{err}");
    let out = run_cli(
        &["--server", url, "--token", &s.admin, "queue", "pause", "q"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = &s.work;
}

#[test]
fn a_non_loopback_listen_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run_cli(
        &[
            "server",
            "--listen",
            "0.0.0.0:0",
            "--data",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: refusing to listen on 0.0.0.0:0")
            && last.contains("--tokens")
            && last.contains("--insecure"),
        "{err}"
    );
}

/// A child process, killed and reaped when dropped: a test that fails
/// half-way leaves nothing running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_non_loopback_listen_with_insecure_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Reaped(
        Command::new(BIN)
            .args(["server", "--listen", "0.0.0.0:0", "--insecure", "--data"])
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut up = false;
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100))
            && line.contains("dispatch server listening on http://0.0.0.0:")
        {
            up = true;
            break;
        }
        if child.0.try_wait().unwrap().is_some() {
            break;
        }
    }
    drop(child);
    assert!(up, "the server did not start with --insecure");
}

#[tokio::test]
async fn the_generic_worker_uses_its_token() {
    let s = secured().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\nname = \"gw\"\n\n[types.\"echo\"]\ncommand = [\"sh\", \"-c\", \"cat >/dev/null; echo '{{\\\"ok\\\": true}}'\"]\n",
            s.server.url
        ),
    )
    .unwrap();
    // Without a token it is refused and exits.
    let out = run_cli(&["worker", "--config", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    // With DISPATCH_TOKEN it runs tasks.
    // It retries for ever if the server goes away: guarded.
    let child = Reaped(
        Command::new(BIN)
            .args(["worker", "--config"])
            .arg(&config)
            .env_remove("DISPATCH_SERVER")
            .env("DISPATCH_TOKEN", &s.work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = s.server.url.clone();
    let task = call(
        &base,
        "POST",
        "/v1/tasks",
        Some(json!({"type": "echo"})),
        Some(&s.submit),
    )
    .await
    .expect(201);
    let id = task["id"].as_str().unwrap();
    let done = call(
        &base,
        "GET",
        &format!("/v1/tasks/{id}?wait_ms=10000"),
        None,
        Some(&s.submit),
    )
    .await
    .expect(200);
    drop(child);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"ok": true}), "{done}");
}

#[tokio::test]
async fn a_worker_belongs_to_the_token_that_registered_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let mine = create_token(&file, "work", "fleet-a");
    let other = create_token(&file, "work", "fleet-b");
    let admin = create_token(&file, "admin", "ops");
    let submit = create_token(&file, "submit", "client");
    let server = Server::with_args(&["--tokens", file.to_str().unwrap()]).await;
    let base = server.url.clone();
    let register = json!({"name": "w", "types": ["t"], "capacity": 2});
    let w = call(&base, "POST", "/v1/workers", Some(register), Some(&mine))
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = call(
        &base,
        "POST",
        "/v1/tasks",
        Some(json!({"type": "t", "payload": {"secret": 1}})),
        Some(&submit),
    )
    .await
    .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another worker token may not speak for it, nor may an admin token,
    // except to remove it: 403, and nothing happens.
    let poll = json!({"max": 2, "wait_ms": 0});
    let acts: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", format!("/v1/workers/{w}/poll"), Some(poll.clone())),
        ("POST", format!("/v1/workers/{w}/heartbeat"), None),
        (
            "POST",
            format!("/v1/tasks/{task}/complete"),
            Some(json!({"worker_id": w, "result": "forged"})),
        ),
        (
            "POST",
            format!("/v1/tasks/{task}/fail"),
            Some(json!({"worker_id": w, "error": "forged"})),
        ),
        ("DELETE", format!("/v1/workers/{w}"), None),
    ];
    for token in [&other, &admin] {
        for (method, path, body) in &acts {
            if *method == "DELETE" && token == &admin {
                continue;
            }
            let r = call(&base, method, path, body.clone(), Some(token)).await;
            let p = r.problem(403, None);
            assert!(
                p["detail"].as_str().unwrap().contains("another token"),
                "{}: {p}",
                r.what
            );
        }
    }
    let t = call(
        &base,
        "GET",
        &format!("/v1/tasks/{task}"),
        None,
        Some(&submit),
    )
    .await
    .expect(200);
    // Neither forged report reached it (assigned to the worker it may be,
    // `running` or `queued`, but not finished and without an error).
    assert!(t["state"] == "queued" || t["state"] == "running", "{t}");
    assert!(t["result"].is_null() && t["error"].is_null(), "{t}");
    // Its own token polls, gets the task and completes it.
    let got = call(
        &base,
        "POST",
        &format!("/v1/workers/{w}/poll"),
        Some(json!({"max": 2, "wait_ms": 5000})),
        Some(&mine),
    )
    .await
    .expect(200);
    assert_eq!(got["tasks"][0]["id"], json!(task), "{got}");
    call(
        &base,
        "POST",
        &format!("/v1/tasks/{task}/complete"),
        Some(json!({"worker_id": w, "result": "real"})),
        Some(&mine),
    )
    .await
    .expect(200);
    call(
        &base,
        "POST",
        &format!("/v1/workers/{w}/heartbeat"),
        None,
        Some(&mine),
    )
    .await
    .expect(200);
    // An admin token may remove any worker.
    let r = call(
        &base,
        "DELETE",
        &format!("/v1/workers/{w}"),
        None,
        Some(&admin),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let t = call(
        &base,
        "GET",
        &format!("/v1/tasks/{task}"),
        None,
        Some(&submit),
    )
    .await
    .expect(200);
    assert_eq!(t["result"], json!("real"), "{t}");
}
