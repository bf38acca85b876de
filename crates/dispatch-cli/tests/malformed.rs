//! Malformed and invalid input, data-driven: every case must get the
//! expected 4xx as `application/problem+json` with `type`, `title`,
//! `status` and `detail`, naming the field at fault when there is one; no
//! case may crash the server or get a 5xx, and none may create a task.

mod common;

use common::{Api, Body, Server, assert_problem_shape, id_of};
use serde_json::{Value, json};

/// Malformed JSON and wrong types (the README: 400).
const BAD: &[u16] = &[400];
const INVALID: &[u16] = &[422];
const NOT_FOUND: &[u16] = &[404];

/// What a case sends.
enum Input {
    /// This text as `application/json`.
    Json(&'static str),
    /// This text with this Content-Type.
    Typed(&'static str, &'static str),
    /// No body.
    Nothing,
    /// A task whose payload nests arrays this deep (the body is one deeper).
    Deep(usize),
    /// A valid task whose body is this many bytes.
    Huge(usize),
    /// A task with a type of this many characters.
    LongType(usize),
    /// A batch of this many valid tasks.
    Batch(usize),
}

struct Case {
    name: &'static str,
    method: &'static str,
    /// `{w}` is a registered worker's id, `{t}` a queued task's id.
    path: &'static str,
    send: Input,
    status: &'static [u16],
    /// The `field` must be one of these; empty: not checked.
    field: &'static [&'static str],
}

const fn case(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    send: Input,
    status: &'static [u16],
    field: &'static [&'static str],
) -> Case {
    Case {
        name,
        method,
        path,
        send,
        status,
        field,
    }
}

use Input::{Batch, Deep, Huge, Json, LongType, Nothing, Typed};

const TASKS: &str = "/v1/tasks";

fn cases() -> Vec<Case> {
    vec![
        // ---- POST /v1/tasks: syntax and shape
        case(
            "syntax: unterminated object",
            "POST",
            TASKS,
            Json(r#"{"type": "x","#),
            BAD,
            &[],
        ),
        case(
            "syntax: unquoted keys",
            "POST",
            TASKS,
            Json("{type: x}"),
            BAD,
            &[],
        ),
        case("empty body", "POST", TASKS, Json(""), BAD, &[]),
        case("no body at all", "POST", TASKS, Nothing, BAD, &[]),
        case(
            "array instead of object",
            "POST",
            TASKS,
            Json(r#"[{"type": "x"}]"#),
            BAD,
            &[],
        ),
        case(
            "string instead of object",
            "POST",
            TASKS,
            Json(r#""x""#),
            BAD,
            &[],
        ),
        case(
            "null instead of object",
            "POST",
            TASKS,
            Json("null"),
            BAD,
            &[],
        ),
        // ---- POST /v1/tasks: fields
        case(
            "missing type",
            "POST",
            TASKS,
            Json(r#"{"payload": 1}"#),
            INVALID,
            &["type"],
        ),
        case(
            "empty type",
            "POST",
            TASKS,
            Json(r#"{"type": ""}"#),
            INVALID,
            &["type"],
        ),
        case(
            "type of 129 characters",
            "POST",
            TASKS,
            LongType(129),
            INVALID,
            &["type"],
        ),
        case(
            "type with a space",
            "POST",
            TASKS,
            Json(r#"{"type": "a b"}"#),
            INVALID,
            &["type"],
        ),
        case(
            "type with a slash",
            "POST",
            TASKS,
            Json(r#"{"type": "a/b"}"#),
            INVALID,
            &["type"],
        ),
        case(
            "type not ASCII",
            "POST",
            TASKS,
            Json(r#"{"type": "caf\u00e9"}"#),
            INVALID,
            &["type"],
        ),
        case(
            "type a number",
            "POST",
            TASKS,
            Json(r#"{"type": 12}"#),
            BAD,
            &["type"],
        ),
        case(
            "priority 101",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "priority": 101}"#),
            INVALID,
            &["priority"],
        ),
        case(
            "priority -101",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "priority": -101}"#),
            INVALID,
            &["priority"],
        ),
        case(
            "priority a string",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "priority": "high"}"#),
            BAD,
            &["priority"],
        ),
        case(
            "priority 1.5",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "priority": 1.5}"#),
            BAD,
            &["priority"],
        ),
        case(
            "priority huge",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "priority": 1e400}"#),
            BAD,
            &[],
        ),
        case(
            "negative delay_ms",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "delay_ms": -1}"#),
            INVALID,
            &["delay_ms"],
        ),
        case(
            "run_at tomorrow",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "run_at": "tomorrow"}"#),
            INVALID,
            &["run_at"],
        ),
        case(
            "run_at and delay_ms",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "run_at": "2030-01-01T00:00:00Z", "delay_ms": 5}"#),
            INVALID,
            &["run_at", "delay_ms"],
        ),
        case(
            "max_attempts 0",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "max_attempts": 0}"#),
            INVALID,
            &["max_attempts"],
        ),
        case(
            "timeout_ms 0",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "timeout_ms": 0}"#),
            INVALID,
            &["timeout_ms"],
        ),
        case(
            "unknown field",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "prioirty": 1}"#),
            BAD,
            &["prioirty"],
        ),
        case(
            "queue with a slash",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "queue": "q/1"}"#),
            INVALID,
            &["queue"],
        ),
        case(
            "backoff multiplier below 1",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "backoff": {"multiplier": 0.5}}"#),
            INVALID,
            &["backoff.multiplier"],
        ),
        case(
            "unknown strategy",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "strategy": "fastest"}"#),
            INVALID,
            &["strategy"],
        ),
        case(
            "depends_on an unknown id",
            "POST",
            TASKS,
            Json(r#"{"type": "x", "depends_on": ["987654321"]}"#),
            INVALID,
            &["depends_on", "depends_on[0]"],
        ),
        case("payload nested 65 deep", "POST", TASKS, Deep(65), BAD, &[]),
        case(
            "payload nested 10000 deep",
            "POST",
            TASKS,
            Deep(10_000),
            BAD,
            &[],
        ),
        case(
            "body over 10 MiB",
            "POST",
            TASKS,
            Huge(10 * 1024 * 1024 + 1024),
            &[413],
            &[],
        ),
        case(
            "text/plain body",
            "POST",
            TASKS,
            Typed(r#"{"type": "x"}"#, "text/plain"),
            &[415],
            &[],
        ),
        case(
            "XML body",
            "POST",
            TASKS,
            Typed("<task type='x'/>", "application/xml"),
            &[415],
            &[],
        ),
        // ---- POST /v1/tasks/batch
        case(
            "batch with no tasks",
            "POST",
            "/v1/tasks/batch",
            Json(r#"{"tasks": []}"#),
            INVALID,
            &["tasks"],
        ),
        case(
            "batch without tasks",
            "POST",
            "/v1/tasks/batch",
            Json("{}"),
            BAD,
            &[],
        ),
        case(
            "batch tasks not an array",
            "POST",
            "/v1/tasks/batch",
            Json(r#"{"tasks": {}}"#),
            BAD,
            &["tasks"],
        ),
        case(
            "batch element without type",
            "POST",
            "/v1/tasks/batch",
            Json(r#"{"tasks": [{"payload": 1}]}"#),
            INVALID,
            &["tasks[0].type"],
        ),
        case(
            "batch over 10000 tasks",
            "POST",
            "/v1/tasks/batch",
            Batch(10_001),
            INVALID,
            &["tasks"],
        ),
        case(
            "batch syntax error",
            "POST",
            "/v1/tasks/batch",
            Json(r#"{"tasks": [{"type": "x"]}"#),
            BAD,
            &[],
        ),
        // ---- GET /v1/tasks
        case(
            "limit 0",
            "GET",
            "/v1/tasks?limit=0",
            Nothing,
            INVALID,
            &["limit"],
        ),
        case(
            "limit 5000",
            "GET",
            "/v1/tasks?limit=5000",
            Nothing,
            INVALID,
            &["limit"],
        ),
        case(
            "limit not a number",
            "GET",
            "/v1/tasks?limit=ten",
            Nothing,
            INVALID,
            &["limit"],
        ),
        case(
            "unknown state",
            "GET",
            "/v1/tasks?state=bogus",
            Nothing,
            INVALID,
            &["state"],
        ),
        case(
            "bad cursor",
            "GET",
            "/v1/tasks?cursor=zzz",
            Nothing,
            INVALID,
            &["cursor"],
        ),
        case(
            "bad type filter",
            "GET",
            "/v1/tasks?type=a%20b",
            Nothing,
            INVALID,
            &["type"],
        ),
        // ---- task ids and routes
        case(
            "non-numeric task id",
            "GET",
            "/v1/tasks/abc",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "negative task id",
            "GET",
            "/v1/tasks/-1",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "task id too large",
            "GET",
            "/v1/tasks/99999999999999999999999",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "cancel a non-numeric id",
            "POST",
            "/v1/tasks/abc/cancel",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "unknown route",
            "GET",
            "/v1/nothing-here",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "unknown route under a task",
            "GET",
            "/v1/tasks/{t}/nothing",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "PUT /v1/tasks",
            "PUT",
            TASKS,
            Json(r#"{"type": "x"}"#),
            &[405],
            &[],
        ),
        case(
            "DELETE a task",
            "DELETE",
            "/v1/tasks/{t}",
            Nothing,
            &[405],
            &[],
        ),
        case(
            "GET a heartbeat",
            "GET",
            "/v1/workers/{w}/heartbeat",
            Nothing,
            &[405],
            &[],
        ),
        // ---- POST /v1/workers
        case(
            "register with empty types",
            "POST",
            "/v1/workers",
            Json(r#"{"types": [], "capacity": 1}"#),
            INVALID,
            &["types"],
        ),
        case(
            "register without types",
            "POST",
            "/v1/workers",
            Json(r#"{"capacity": 1}"#),
            INVALID,
            &["types"],
        ),
        case(
            "register with capacity 0",
            "POST",
            "/v1/workers",
            Json(r#"{"types": ["x"], "capacity": 0}"#),
            INVALID,
            &["capacity"],
        ),
        case(
            "register with capacity -1",
            "POST",
            "/v1/workers",
            Json(r#"{"types": ["x"], "capacity": -1}"#),
            INVALID,
            &["capacity"],
        ),
        case(
            "register with a bad type",
            "POST",
            "/v1/workers",
            Json(r#"{"types": ["a b"], "capacity": 1}"#),
            INVALID,
            &["types[0]"],
        ),
        case(
            "register with types a string",
            "POST",
            "/v1/workers",
            Json(r#"{"types": "x"}"#),
            BAD,
            &["types"],
        ),
        // ---- the worker protocol
        case(
            "poll with max -1",
            "POST",
            "/v1/workers/{w}/poll",
            Json(r#"{"max": -1}"#),
            INVALID,
            &["max"],
        ),
        case(
            "poll with wait_ms -1",
            "POST",
            "/v1/workers/{w}/poll",
            Json(r#"{"wait_ms": -1}"#),
            INVALID,
            &["wait_ms"],
        ),
        case(
            "poll with bad JSON",
            "POST",
            "/v1/workers/{w}/poll",
            Json(r#"{"max": "#),
            BAD,
            &[],
        ),
        case(
            "poll with a bad result id",
            "POST",
            "/v1/workers/{w}/poll",
            Json(r#"{"results": [{"task_id": "abc", "result": 1}]}"#),
            INVALID,
            &["results[0].task_id"],
        ),
        case(
            "poll for an unknown worker",
            "POST",
            "/v1/workers/w00000000000000ff/poll",
            Json("{}"),
            NOT_FOUND,
            &[],
        ),
        case(
            "heartbeat of an unknown worker",
            "POST",
            "/v1/workers/w00000000000000ff/heartbeat",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "heartbeat of a garbage id",
            "POST",
            "/v1/workers/not-a-worker/heartbeat",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "leave of an unknown worker",
            "DELETE",
            "/v1/workers/w00000000000000ff",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "complete without worker_id",
            "POST",
            "/v1/tasks/{t}/complete",
            Json(r#"{"result": 1}"#),
            INVALID,
            &["worker_id"],
        ),
        case(
            "complete with a bad worker id",
            "POST",
            "/v1/tasks/{t}/complete",
            Json(r#"{"worker_id": "not-a-worker", "result": 1}"#),
            INVALID,
            &["worker_id"],
        ),
        case(
            "complete a task not leased to it",
            "POST",
            "/v1/tasks/{t}/complete",
            Json(r#"{"worker_id": "{w}", "result": 1}"#),
            &[409],
            &[],
        ),
        case(
            "complete an unknown task",
            "POST",
            "/v1/tasks/987654321/complete",
            Json(r#"{"worker_id": "{w}"}"#),
            &[404, 409],
            &[],
        ),
        case(
            "fail without worker_id",
            "POST",
            "/v1/tasks/{t}/fail",
            Json(r#"{"error": "x"}"#),
            INVALID,
            &["worker_id"],
        ),
        case(
            "fail with negative retry_after_ms",
            "POST",
            "/v1/tasks/{t}/fail",
            Json(r#"{"worker_id": "{w}", "error": "x", "retry_after_ms": -5}"#),
            INVALID,
            &["retry_after_ms"],
        ),
    ]
}

/// The request body of a case.
fn body_of(send: &Input, w: &str) -> Body {
    let json = |s: String| Body::Raw(s.into_bytes(), Some("application/json"));
    match send {
        Input::Json(s) => json(s.replace("{w}", w)),
        Input::Typed(s, ct) => Body::Raw(s.as_bytes().to_vec(), Some(ct)),
        Input::Nothing => Body::None,
        Input::Deep(n) => json(format!(
            r#"{{"type": "x", "payload": {}{}}}"#,
            "[".repeat(*n),
            "]".repeat(*n)
        )),
        Input::Huge(n) => {
            let overhead = r#"{"type": "x", "payload": ""}"#.len();
            json(format!(
                r#"{{"type": "x", "payload": "{}"}}"#,
                "a".repeat(n - overhead)
            ))
        }
        Input::LongType(n) => json(format!(r#"{{"type": "{}"}}"#, "t".repeat(*n))),
        Input::Batch(n) => {
            let tasks = vec![json!({"type": "x"}); *n];
            json(json!({ "tasks": tasks }).to_string())
        }
    }
}

/// Sends one case and checks the answer.
async fn check(api: &Api, c: &Case, w: &str, t: &str) {
    let path = c.path.replace("{w}", w).replace("{t}", t);
    let r = api.send(c.method, &path, body_of(&c.send, w)).await;
    assert!(
        c.status.contains(&r.status),
        "case {:?}: {} {path} answered {}, expected one of {:?}: {}",
        c.name,
        c.method,
        r.status,
        c.status,
        r.text
    );
    let p = assert_problem_shape(&r);
    if !c.field.is_empty() {
        let field = p["field"].as_str().unwrap_or("<none>");
        assert!(
            c.field.contains(&field),
            "case {:?}: field {field:?}, expected one of {:?}: {}",
            c.name,
            c.field,
            r.text
        );
    }
}

#[tokio::test]
async fn malformed_requests_get_problem_details_and_never_a_5xx() {
    let server = Server::start().await;
    let api = server.api();
    let w = api.register(&["y"], 1).await;
    let t = api.submit_id("x", json!({"keep": true})).await;

    let cases = cases();
    assert!(cases.len() >= 20);
    for c in &cases {
        check(&api, c, &w, &t).await;
    }

    // Still up, nothing created, no 5xx counted anywhere.
    let h = api.get("/healthz").await;
    assert_eq!(h.status, 200, "{}", h.text);
    let all = api.list("limit=1000").await;
    let ids: Vec<String> = all["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(
        ids,
        vec![t.clone()],
        "invalid requests created tasks: {all}"
    );
    assert_eq!(api.task(&t).await["state"], "queued");
    let metrics = api.get("/metrics").await.text;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("dispatch_http_requests_total"))
    {
        assert!(!line.contains("status=\"5"), "a 5xx was served: {line}");
    }
    // The worker still works.
    api.heartbeat(&w).await.expect(200);
}

#[tokio::test]
async fn limits_are_inclusive() {
    let server = Server::start().await;
    let api = server.api();
    let long = "t".repeat(128);
    let accepted: Vec<Value> = vec![
        json!({"type": long}),
        json!({"type": "A-z_0.9:x"}),
        json!({"type": "x", "priority": 100}),
        json!({"type": "x", "priority": -100}),
        json!({"type": "x", "delay_ms": 0}),
        json!({"type": "x", "max_attempts": 1}),
        json!({"type": "x", "timeout_ms": 1}),
        json!({"type": "x", "run_at": "2020-01-01T00:00:00Z"}),
        json!({"type": "x", "run_at": "2030-01-01T10:00:00+02:00"}),
        json!({"type": "x", "payload": "[[[[ {{ \" not nesting"}),
    ];
    for body in accepted {
        let t = api.submit(body.clone()).await;
        assert_eq!(t["type"], body["type"]);
    }
    // Nesting: the whole body 64 deep (the object plus 63 arrays) passes.
    let deep = format!(
        r#"{{"type": "x", "payload": {}{}}}"#,
        "[".repeat(63),
        "]".repeat(63)
    );
    api.send(
        "POST",
        "/v1/tasks",
        Body::Raw(deep.into_bytes(), Some("application/json")),
    )
    .await
    .expect(201);
    // JSON with a charset parameter, and curl's default form type.
    api.send(
        "POST",
        "/v1/tasks",
        Body::Raw(
            br#"{"type": "x"}"#.to_vec(),
            Some("application/json; charset=utf-8"),
        ),
    )
    .await
    .expect(201);
    // Register boundaries.
    let r = api
        .post("/v1/workers", json!({"types": ["x"], "capacity": 1}))
        .await
        .expect(201);
    let w = r["id"].as_str().expect("id").to_owned();
    api.post(
        &format!("/v1/workers/{w}/poll"),
        json!({"max": 1, "wait_ms": 0}),
    )
    .await
    .expect(200);
    // A poll may have no body at all.
    api.post_empty(&format!("/v1/workers/{w}/poll"))
        .await
        .expect(200);
}

/// A JSON array is not a task, whatever its length. serde accepts a
/// sequence for a struct, so an array with one element per field of
/// `SubmitTask` (or `RegisterWorker`) is taken as that struct.
#[tokio::test]
async fn a_json_array_is_never_taken_for_an_object() {
    let server = Server::start().await;
    let api = server.api();
    let task = format!(r#"["arr"{}]"#, ",null".repeat(13));
    let r = api
        .send(
            "POST",
            "/v1/tasks",
            Body::Raw(task.clone().into_bytes(), Some("application/json")),
        )
        .await;
    assert!(
        BAD.contains(&r.status),
        "array submitted as a task: {} {}",
        r.status,
        r.text
    );
    assert_problem_shape(&r);
    let r = api
        .send(
            "POST",
            "/v1/tasks/batch",
            Body::Raw(format!("[[{task}]]").into_bytes(), Some("application/json")),
        )
        .await;
    assert!(
        BAD.contains(&r.status),
        "array submitted as a batch: {} {}",
        r.status,
        r.text
    );
    let r = api
        .send(
            "POST",
            "/v1/workers",
            Body::Raw(
                br#"[null, ["x"], null, null]"#.to_vec(),
                Some("application/json"),
            ),
        )
        .await;
    assert!(
        BAD.contains(&r.status),
        "array registered as a worker: {} {}",
        r.status,
        r.text
    );
    assert_eq!(api.list("").await["tasks"], json!([]));
    assert!(api.workers().await.is_empty());
}

/// A body is one JSON value: anything after it is malformed.
#[tokio::test]
async fn trailing_data_after_the_json_value_is_refused() {
    let server = Server::start().await;
    let api = server.api();
    for body in [
        r#"{"type": "x"} extra"#,
        r#"{"type": "x"}{"type": "y"}"#,
        r#"{"type": "x"}]"#,
    ] {
        let r = api
            .send(
                "POST",
                "/v1/tasks",
                Body::Raw(body.as_bytes().to_vec(), Some("application/json")),
            )
            .await;
        assert!(
            BAD.contains(&r.status),
            "{body:?} answered {}: {}",
            r.status,
            r.text
        );
        assert_problem_shape(&r);
    }
    assert_eq!(api.list("").await["tasks"], json!([]));
}
