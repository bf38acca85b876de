//! Malformed input on every endpoint beside task submission (which
//! `malformed.rs` covers): the worker protocol with its batched results,
//! task reads and their query parameters (unknown ones on every endpoint),
//! cancel and retry, queues,
//! schedules, content types, body and header sizes, methods and unknown
//! paths, bearer tokens, and the gRPC stream.
//!
//! Data-driven: every HTTP case must get its expected 4xx as
//! `application/problem+json` with `type`, `title`, `status` and `detail`,
//! naming the field at fault when there is one. After the whole table the
//! server is healthy, served no 5xx, and holds nothing a refused request
//! would have written: no task, worker, schedule or queue more than the
//! test made on purpose.

mod common;

use std::time::Duration;

use common::{Api, Body, Resp, Server, assert_problem_shape, create_token, id_of};
use dispatch_grpc::pb;
use prost::Message;
use serde_json::{Value, json};

const BAD: &[u16] = &[400];
const INVALID: &[u16] = &[422];
const BAD_OR_INVALID: &[u16] = &[400, 422];
const NOT_FOUND: &[u16] = &[404];
const NOT_ALLOWED: &[u16] = &[405];
const TOO_LARGE: &[u16] = &[413];
const UNSUPPORTED: &[u16] = &[415];

/// The body limit of the server under test, small so that 413 is cheap.
const MAX_BODY: usize = 64 * 1024;

/// What a case sends.
enum Input {
    /// This text as `application/json`; `{w}`, `{t}` and `{s}` are replaced.
    Json(&'static str),
    /// This text with this Content-Type.
    Typed(&'static str, &'static str),
    /// No body.
    Nothing,
    /// A JSON object one byte over the body limit.
    Oversize,
    /// A result nested this deep in a report.
    DeepResult(usize),
    /// A registration naming this many task types.
    ManyTypes(usize),
}

use Input::{DeepResult, Json, ManyTypes, Nothing, Oversize, Typed};

struct Case {
    name: &'static str,
    method: &'static str,
    /// `{w}`: a registered worker, `{t}`: a queued task, `{s}`: a schedule,
    /// `{long}`: a name of 129 characters.
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

const WORKERS: &str = "/v1/workers";
const POLL: &str = "/v1/workers/{w}/poll";
const COMPLETE: &str = "/v1/tasks/{t}/complete";
const FAIL: &str = "/v1/tasks/{t}/fail";
const SCHEDULES: &str = "/v1/schedules";

fn cases() -> Vec<Case> {
    vec![
        // ---- POST /v1/workers
        case(
            "register: empty name",
            "POST",
            WORKERS,
            Json(r#"{"name": "", "types": ["x"]}"#),
            INVALID,
            &["name"],
        ),
        case(
            "register: name a number",
            "POST",
            WORKERS,
            Json(r#"{"name": 7, "types": ["x"]}"#),
            BAD,
            &["name"],
        ),
        case(
            "register: 1001 types",
            "POST",
            WORKERS,
            ManyTypes(1001),
            INVALID,
            &["types"],
        ),
        case(
            "register: capacity 10001",
            "POST",
            WORKERS,
            Json(r#"{"types": ["x"], "capacity": 10001}"#),
            INVALID,
            &["capacity"],
        ),
        case(
            "register: capacity 1.5",
            "POST",
            WORKERS,
            Json(r#"{"types": ["x"], "capacity": 1.5}"#),
            BAD,
            &["capacity"],
        ),
        case(
            "register: capacity 1e30",
            "POST",
            WORKERS,
            Json(r#"{"types": ["x"], "capacity": 1e30}"#),
            BAD,
            &["capacity"],
        ),
        case(
            "register: weight 0",
            "POST",
            WORKERS,
            Json(r#"{"types": ["x"], "weight": 0}"#),
            INVALID,
            &["weight"],
        ),
        case(
            "register: weight 1001",
            "POST",
            WORKERS,
            Json(r#"{"types": ["x"], "weight": 1001}"#),
            INVALID,
            &["weight"],
        ),
        case(
            "register: labels an array",
            "POST",
            WORKERS,
            Json(r#"{"types": ["x"], "labels": ["eu"]}"#),
            BAD,
            &["labels"],
        ),
        case(
            "register: label value a number",
            "POST",
            WORKERS,
            Json(r#"{"types": ["x"], "labels": {"zone": 1}}"#),
            BAD,
            &["labels.zone"],
        ),
        case(
            "register: empty label name",
            "POST",
            WORKERS,
            Json(r#"{"types": ["x"], "labels": {"": "eu"}}"#),
            INVALID,
            &["labels."],
        ),
        case(
            "register: misspelt member",
            "POST",
            WORKERS,
            Json(r#"{"types": ["x"], "capacitty": 2}"#),
            BAD,
            &["capacitty"],
        ),
        case(
            "register: types given twice",
            "POST",
            WORKERS,
            Json(r#"{"types": ["x"], "types": ["y"]}"#),
            BAD,
            &["types"],
        ),
        case(
            "register: a null type",
            "POST",
            WORKERS,
            Json(r#"{"types": [null]}"#),
            BAD,
            &["types[0]"],
        ),
        case(
            "register: a NUL in a type",
            "POST",
            WORKERS,
            Json(r#"{"types": ["a\u0000b"]}"#),
            INVALID,
            &["types[0]"],
        ),
        case(
            "register: multipart body",
            "POST",
            WORKERS,
            Typed("types=x", "multipart/form-data; boundary=x"),
            UNSUPPORTED,
            &[],
        ),
        case("register: empty body", "POST", WORKERS, Json(""), BAD, &[]),
        case(
            "register: body over the limit",
            "POST",
            WORKERS,
            Oversize,
            TOO_LARGE,
            &[],
        ),
        // ---- heartbeat and leave
        case(
            "heartbeat: id not UTF-8",
            "POST",
            "/v1/workers/%FF/heartbeat",
            Nothing,
            &[400, 404],
            &[],
        ),
        case(
            "heartbeat: id of 5000 characters",
            "POST",
            "/v1/workers/{long5000}/heartbeat",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "leave: garbage id",
            "DELETE",
            "/v1/workers/not-a-worker",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "leave: the collection",
            "DELETE",
            WORKERS,
            Nothing,
            NOT_ALLOWED,
            &[],
        ),
        case(
            "PUT a worker",
            "PUT",
            "/v1/workers/{w}",
            Json("{}"),
            NOT_ALLOWED,
            &[],
        ),
        // ---- POST /v1/workers/{id}/poll
        case(
            "poll: max 10001",
            "POST",
            POLL,
            Json(r#"{"max": 10001}"#),
            INVALID,
            &["max"],
        ),
        case(
            "poll: wait_ms 60001",
            "POST",
            POLL,
            Json(r#"{"wait_ms": 60001}"#),
            INVALID,
            &["wait_ms"],
        ),
        case(
            "poll: max a string",
            "POST",
            POLL,
            Json(r#"{"max": "all"}"#),
            BAD,
            &["max"],
        ),
        case(
            "poll: misspelt member",
            "POST",
            POLL,
            Json(r#"{"wait": 5}"#),
            BAD,
            &["wait"],
        ),
        case(
            "poll: results an object",
            "POST",
            POLL,
            Json(r#"{"results": {}}"#),
            BAD,
            &["results"],
        ),
        case(
            "poll: a result without task_id",
            "POST",
            POLL,
            Json(r#"{"results": [{"result": 1}]}"#),
            BAD,
            &["results[0].task_id"],
        ),
        case(
            "poll: a result and an error",
            "POST",
            POLL,
            Json(r#"{"results": [{"task_id": "{t}", "result": 1, "error": "e"}]}"#),
            INVALID,
            &["results[0].error"],
        ),
        case(
            "poll: retry_after_ms over a week",
            "POST",
            POLL,
            Json(r#"{"results": [{"task_id": "{t}", "error": "e", "retry_after_ms": 604800001}]}"#),
            INVALID,
            &["results[0].retry_after_ms"],
        ),
        case(
            "poll: the second result bad",
            "POST",
            POLL,
            Json(r#"{"results": [{"task_id": "{t}", "result": 1}, {"task_id": "x"}]}"#),
            INVALID,
            &["results[1].task_id"],
        ),
        case(
            "poll: a result nested 70 deep",
            "POST",
            POLL,
            DeepResult(70),
            BAD,
            &[],
        ),
        case("poll: a JSON array", "POST", POLL, Json("[1, 2]"), BAD, &[]),
        case(
            "poll: an XML body",
            "POST",
            POLL,
            Typed("<poll/>", "application/xml"),
            &[400, 415],
            &[],
        ),
        case(
            "poll: body over the limit",
            "POST",
            POLL,
            Oversize,
            TOO_LARGE,
            &[],
        ),
        // ---- complete and fail
        case(
            "complete: worker_id a number",
            "POST",
            COMPLETE,
            Json(r#"{"worker_id": 5}"#),
            BAD,
            &["worker_id"],
        ),
        case(
            "complete: misspelt member",
            "POST",
            COMPLETE,
            Json(r#"{"worker_id": "{w}", "reslt": 1}"#),
            BAD,
            &["reslt"],
        ),
        case(
            "complete: text/plain",
            "POST",
            COMPLETE,
            Typed(r#"{"worker_id": "{w}"}"#, "text/plain"),
            UNSUPPORTED,
            &[],
        ),
        case("complete: no body", "POST", COMPLETE, Nothing, BAD, &[]),
        case(
            "complete: a garbage task id",
            "POST",
            "/v1/tasks/abc/complete",
            Json(r#"{"worker_id": "{w}"}"#),
            NOT_FOUND,
            &[],
        ),
        case(
            "complete: body over the limit",
            "POST",
            COMPLETE,
            Oversize,
            TOO_LARGE,
            &[],
        ),
        case(
            "fail: abort a string",
            "POST",
            FAIL,
            Json(r#"{"worker_id": "{w}", "abort": "yes"}"#),
            BAD,
            &["abort"],
        ),
        case(
            "fail: retry_after_ms 1.5",
            "POST",
            FAIL,
            Json(r#"{"worker_id": "{w}", "retry_after_ms": 1.5}"#),
            BAD,
            &["retry_after_ms"],
        ),
        case(
            "fail: retry_after_ms over a week",
            "POST",
            FAIL,
            Json(r#"{"worker_id": "{w}", "retry_after_ms": 604800001}"#),
            INVALID,
            &["retry_after_ms"],
        ),
        case(
            "fail: empty object",
            "POST",
            FAIL,
            Json("{}"),
            INVALID,
            &["worker_id"],
        ),
        case(
            "fail: trailing data",
            "POST",
            FAIL,
            Json(r#"{"worker_id": "{w}"} {}"#),
            BAD,
            &[],
        ),
        case("GET complete", "GET", COMPLETE, Nothing, NOT_ALLOWED, &[]),
        // ---- GET /v1/tasks and /v1/tasks/{id}
        case(
            "list: limit 1001",
            "GET",
            "/v1/tasks?limit=1001",
            Nothing,
            INVALID,
            &["limit"],
        ),
        case(
            "list: limit -1",
            "GET",
            "/v1/tasks?limit=-1",
            Nothing,
            INVALID,
            &["limit"],
        ),
        case(
            "list: limit past i64",
            "GET",
            "/v1/tasks?limit=99999999999999999999",
            Nothing,
            BAD_OR_INVALID,
            &["limit"],
        ),
        case(
            "list: limit given twice",
            "GET",
            "/v1/tasks?limit=1&limit=2",
            Nothing,
            BAD,
            &[],
        ),
        case(
            "list: empty state",
            "GET",
            "/v1/tasks?state=",
            Nothing,
            INVALID,
            &["state"],
        ),
        case(
            "list: state in capitals",
            "GET",
            "/v1/tasks?state=QUEUED",
            Nothing,
            INVALID,
            &["state"],
        ),
        case(
            "list: negative cursor",
            "GET",
            "/v1/tasks?cursor=-5",
            Nothing,
            BAD_OR_INVALID,
            &["cursor"],
        ),
        case(
            "list: bad queue filter",
            "GET",
            "/v1/tasks?queue=a/b",
            Nothing,
            INVALID,
            &["queue"],
        ),
        case(
            "list: type not UTF-8",
            "GET",
            "/v1/tasks?type=%FF",
            Nothing,
            BAD_OR_INVALID,
            &[],
        ),
        case(
            "get: wait_ms -1",
            "GET",
            "/v1/tasks/{t}?wait_ms=-1",
            Nothing,
            INVALID,
            &["wait_ms"],
        ),
        case(
            "get: wait_ms 300001",
            "GET",
            "/v1/tasks/{t}?wait_ms=300001",
            Nothing,
            INVALID,
            &["wait_ms"],
        ),
        case(
            "get: wait_ms a word",
            "GET",
            "/v1/tasks/{t}?wait_ms=soon",
            Nothing,
            INVALID,
            &["wait_ms"],
        ),
        case(
            "get: wait_ms given twice",
            "GET",
            "/v1/tasks/{t}?wait_ms=1&wait_ms=2",
            Nothing,
            BAD,
            &[],
        ),
        case(
            "get: id not UTF-8",
            "GET",
            "/v1/tasks/%C3%28",
            Nothing,
            &[400, 404],
            &[],
        ),
        // ---- cancel and retry
        case(
            "cancel: unknown id",
            "POST",
            "/v1/tasks/987654321/cancel",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "cancel: id 0",
            "POST",
            "/v1/tasks/0/cancel",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "retry: unknown id",
            "POST",
            "/v1/tasks/987654321/retry",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "retry: garbage id",
            "POST",
            "/v1/tasks/1e3/retry",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "retry: a queued task",
            "POST",
            "/v1/tasks/{t}/retry",
            Nothing,
            &[409],
            &[],
        ),
        case(
            "GET cancel",
            "GET",
            "/v1/tasks/{t}/cancel",
            Nothing,
            NOT_ALLOWED,
            &[],
        ),
        // ---- queues
        case(
            "pause: name with a space",
            "POST",
            "/v1/queues/a%20b/pause",
            Nothing,
            INVALID,
            &["name"],
        ),
        case(
            "pause: name of 129 characters",
            "POST",
            "/v1/queues/{long}/pause",
            Nothing,
            INVALID,
            &["name"],
        ),
        case(
            "pause: name not ASCII",
            "POST",
            "/v1/queues/caf%C3%A9/pause",
            Nothing,
            INVALID,
            &["name"],
        ),
        case(
            "resume: name not UTF-8",
            "POST",
            "/v1/queues/%FF/resume",
            Nothing,
            BAD_OR_INVALID,
            &[],
        ),
        case(
            "resume: name with a NUL",
            "POST",
            "/v1/queues/a%00b/resume",
            Nothing,
            INVALID,
            &["name"],
        ),
        case(
            "GET pause",
            "GET",
            "/v1/queues/default/pause",
            Nothing,
            NOT_ALLOWED,
            &[],
        ),
        case(
            "POST the queue list",
            "POST",
            "/v1/queues",
            Json("{}"),
            NOT_ALLOWED,
            &[],
        ),
        case(
            "unknown queue action",
            "POST",
            "/v1/queues/default/drain",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "patch queue: not JSON",
            "PATCH",
            "/v1/queues/default",
            Json("{nope"),
            BAD,
            &[],
        ),
        case(
            "patch queue: an array",
            "PATCH",
            "/v1/queues/default",
            Json("[1]"),
            BAD,
            &[],
        ),
        case(
            "patch queue: weight a string",
            "PATCH",
            "/v1/queues/default",
            Json(r#"{"weight": "9"}"#),
            INVALID,
            &["weight"],
        ),
        case(
            "patch queue: max_depth 2^64",
            "PATCH",
            "/v1/queues/default",
            Json(r#"{"max_depth": 18446744073709551616}"#),
            INVALID,
            &["max_depth"],
        ),
        case(
            "patch queue: name with a space",
            "PATCH",
            "/v1/queues/a%20b",
            Json(r#"{"weight": 2}"#),
            INVALID,
            &["name"],
        ),
        case(
            "patch queue: too large",
            "PATCH",
            "/v1/queues/default",
            Oversize,
            TOO_LARGE,
            &[],
        ),
        case(
            "attempts: not an id",
            "GET",
            "/v1/tasks/x1/attempts",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "attempts: unknown task",
            "GET",
            "/v1/tasks/99999999/attempts",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "POST attempts",
            "POST",
            "/v1/tasks/{t}/attempts",
            Nothing,
            NOT_ALLOWED,
            &[],
        ),
        case(
            "schedule: minute 61",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "61 * * * *", "task": {"type": "x"}}"#),
            INVALID,
            &["cron"],
        ),
        case(
            "schedule: four fields",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "* * * *", "task": {"type": "x"}}"#),
            INVALID,
            &["cron"],
        ),
        case(
            "schedule: never fires",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "0 0 30 2 *", "task": {"type": "x"}}"#),
            INVALID,
            &["cron"],
        ),
        case(
            "schedule: step 0",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "*/0 * * * *", "task": {"type": "x"}}"#),
            INVALID,
            &["cron"],
        ),
        case(
            "schedule: cron a number",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": 5, "task": {"type": "x"}}"#),
            BAD,
            &["cron"],
        ),
        case(
            "schedule: unknown zone",
            "POST",
            SCHEDULES,
            Json(
                r#"{"name": "n1", "cron": "* * * * *", "timezone": "Mars/Olympus", "task": {"type": "x"}}"#,
            ),
            INVALID,
            &["timezone"],
        ),
        case(
            "schedule: zone a path",
            "POST",
            SCHEDULES,
            Json(
                r#"{"name": "n1", "cron": "* * * * *", "timezone": "../../etc/localtime", "task": {"type": "x"}}"#,
            ),
            INVALID,
            &["timezone"],
        ),
        case(
            "schedule: zone an object",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "* * * * *", "timezone": {}, "task": {"type": "x"}}"#),
            BAD,
            &["timezone"],
        ),
        case(
            "schedule: unknown misfire",
            "POST",
            SCHEDULES,
            Json(
                r#"{"name": "n1", "cron": "* * * * *", "misfire": "later", "task": {"type": "x"}}"#,
            ),
            INVALID,
            &["misfire"],
        ),
        case(
            "schedule: catch_up_limit 1001",
            "POST",
            SCHEDULES,
            Json(
                r#"{"name": "n1", "cron": "* * * * *", "catch_up_limit": 1001, "task": {"type": "x"}}"#,
            ),
            INVALID,
            &["catch_up_limit"],
        ),
        case(
            "schedule: no task",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "* * * * *"}"#),
            INVALID,
            &["task"],
        ),
        case(
            "schedule: task a string",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "* * * * *", "task": "x"}"#),
            BAD,
            &["task"],
        ),
        case(
            "schedule: template without type",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "* * * * *", "task": {"payload": 1}}"#),
            INVALID,
            &["task.type"],
        ),
        case(
            "schedule: template priority 500",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "* * * * *", "task": {"type": "x", "priority": 500}}"#),
            INVALID,
            &["task.priority"],
        ),
        case(
            "schedule: template with a key",
            "POST",
            SCHEDULES,
            Json(
                r#"{"name": "n1", "cron": "* * * * *", "task": {"type": "x", "idempotency_key": "k"}}"#,
            ),
            INVALID,
            &["task.idempotency_key"],
        ),
        case(
            "schedule: template broadcast",
            "POST",
            SCHEDULES,
            Json(
                r#"{"name": "n1", "cron": "* * * * *", "task": {"type": "x", "strategy": "broadcast"}}"#,
            ),
            INVALID,
            &["task.strategy"],
        ),
        case(
            "schedule: template misspelt member",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "* * * * *", "task": {"type": "x", "prioirty": 1}}"#),
            BAD,
            &["task.prioirty"],
        ),
        case(
            "schedule: name with a slash",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "a/b", "cron": "* * * * *", "task": {"type": "x"}}"#),
            INVALID,
            &["name"],
        ),
        case(
            "schedule: no name",
            "POST",
            SCHEDULES,
            Json(r#"{"cron": "* * * * *", "task": {"type": "x"}}"#),
            INVALID,
            &["name"],
        ),
        case(
            "schedule: paused a string",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "n1", "cron": "* * * * *", "paused": "yes", "task": {"type": "x"}}"#),
            BAD,
            &["paused"],
        ),
        case(
            "schedule: the name taken",
            "POST",
            SCHEDULES,
            Json(r#"{"name": "{s}", "cron": "* * * * *", "task": {"type": "x"}}"#),
            &[409],
            &[],
        ),
        case(
            "schedule: text/html",
            "POST",
            SCHEDULES,
            Typed("<b>x</b>", "text/html"),
            UNSUPPORTED,
            &[],
        ),
        case(
            "schedule: body over the limit",
            "POST",
            SCHEDULES,
            Oversize,
            TOO_LARGE,
            &[],
        ),
        case(
            "schedule: delete unknown",
            "DELETE",
            "/v1/schedules/nope",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "schedule: delete a bad name",
            "DELETE",
            "/v1/schedules/a%20b",
            Nothing,
            &[404, 422],
            &[],
        ),
        case(
            "schedule: get a bad name",
            "GET",
            "/v1/schedules/%FF",
            Nothing,
            &[400, 404],
            &[],
        ),
        case(
            "patch schedule: cron a number",
            "PATCH",
            "/v1/schedules/{s}",
            Json(r#"{"cron": 5}"#),
            BAD,
            &["cron"],
        ),
        case(
            "patch schedule: a bad zone",
            "PATCH",
            "/v1/schedules/{s}",
            Json(r#"{"timezone": "Nowhere/Land"}"#),
            INVALID,
            &["timezone"],
        ),
        case(
            "patch schedule: unknown",
            "PATCH",
            "/v1/schedules/nope",
            Json(r#"{"paused": true}"#),
            NOT_FOUND,
            &[],
        ),
        case(
            "trigger: unknown schedule",
            "POST",
            "/v1/schedules/nope/trigger",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "GET trigger",
            "GET",
            "/v1/schedules/{s}/trigger",
            Nothing,
            NOT_ALLOWED,
            &[],
        ),
        case(
            "pause: a schedule with a bad name",
            "POST",
            "/v1/schedules/a%20b/pause",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "PUT a schedule",
            "PUT",
            "/v1/schedules/{s}",
            Json("{}"),
            NOT_ALLOWED,
            &[],
        ),
        // ---- unknown query parameters, on every endpoint
        case(
            "query: submit",
            "POST",
            "/v1/tasks?x=1",
            Json(r#"{"type": "x"}"#),
            BAD,
            &["x"],
        ),
        case(
            "query: list",
            "GET",
            "/v1/tasks?stat=dead",
            Nothing,
            BAD,
            &["stat"],
        ),
        case(
            "query: list, beside known ones",
            "GET",
            "/v1/tasks?state=dead&limit=5&Limit=6",
            Nothing,
            BAD,
            &["Limit"],
        ),
        case(
            "query: list, a parameter twice",
            "GET",
            "/v1/tasks?state=dead&limit=5&state=queued",
            Nothing,
            BAD,
            &["state"],
        ),
        case(
            "query: batch",
            "POST",
            "/v1/tasks/batch?dry_run=true",
            Json(r#"{"tasks": [{"type": "x"}]}"#),
            BAD,
            &["dry_run"],
        ),
        case(
            "query: get a task",
            "GET",
            "/v1/tasks/{t}?wait=5",
            Nothing,
            BAD,
            &["wait"],
        ),
        case(
            "query: cancel",
            "POST",
            "/v1/tasks/{t}/cancel?force=1",
            Nothing,
            BAD,
            &["force"],
        ),
        case(
            "query: retry",
            "POST",
            "/v1/tasks/{t}/retry?x=1",
            Nothing,
            BAD,
            &["x"],
        ),
        case(
            "query: complete",
            "POST",
            "/v1/tasks/{t}/complete?x=1",
            Json(r#"{"worker_id": "{w}"}"#),
            BAD,
            &["x"],
        ),
        case(
            "query: fail",
            "POST",
            "/v1/tasks/{t}/fail?x=1",
            Json(r#"{"worker_id": "{w}", "error": "e"}"#),
            BAD,
            &["x"],
        ),
        case(
            "query: register",
            "POST",
            "/v1/workers?x=1",
            Json(r#"{"types": ["x"]}"#),
            BAD,
            &["x"],
        ),
        case(
            "query: list workers",
            "GET",
            "/v1/workers?x=1",
            Nothing,
            BAD,
            &["x"],
        ),
        case(
            "query: leave",
            "DELETE",
            "/v1/workers/{w}?x=1",
            Nothing,
            BAD,
            &["x"],
        ),
        case(
            "query: heartbeat",
            "POST",
            "/v1/workers/{w}/heartbeat?x=1",
            Nothing,
            BAD,
            &["x"],
        ),
        case(
            "query: poll",
            "POST",
            "/v1/workers/{w}/poll?max=1",
            Json(r#"{"max": 1}"#),
            BAD,
            &["max"],
        ),
        case(
            "query: create a schedule",
            "POST",
            "/v1/schedules?x=1",
            Json(r#"{"name": "q1", "cron": "* * * * *", "task": {"type": "x"}}"#),
            BAD,
            &["x"],
        ),
        case(
            "query: list schedules",
            "GET",
            "/v1/schedules?x=1",
            Nothing,
            BAD,
            &["x"],
        ),
        case(
            "query: get a schedule",
            "GET",
            "/v1/schedules/{s}?x=1",
            Nothing,
            BAD,
            &["x"],
        ),
        case(
            "query: delete a schedule",
            "DELETE",
            "/v1/schedules/{s}?x=1",
            Nothing,
            BAD,
            &["x"],
        ),
        case(
            "query: list queues",
            "GET",
            "/v1/queues?x=1",
            Nothing,
            BAD,
            &["x"],
        ),
        case(
            "query: pause",
            "POST",
            "/v1/queues/default/pause?x=1",
            Nothing,
            BAD,
            &["x"],
        ),
        case(
            "query: resume",
            "POST",
            "/v1/queues/default/resume?x=1",
            Nothing,
            BAD,
            &["x"],
        ),
        case(
            "query: healthz",
            "GET",
            "/healthz?verbose",
            Nothing,
            BAD,
            &["verbose"],
        ),
        case(
            "query: metrics",
            "GET",
            "/metrics?format=json",
            Nothing,
            BAD,
            &["format"],
        ),
        // ---- unknown paths and methods elsewhere
        case(
            "unknown version",
            "GET",
            "/v2/tasks",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case("the root", "GET", "/", Nothing, NOT_FOUND, &[]),
        case(
            "a path of dots",
            "GET",
            "/v1/../v1/tasks/..%2F..%2Fetc",
            Nothing,
            NOT_FOUND,
            &[],
        ),
        case(
            "POST /metrics",
            "POST",
            "/metrics",
            Json("{}"),
            NOT_ALLOWED,
            &[],
        ),
        case(
            "DELETE /healthz",
            "DELETE",
            "/healthz",
            Nothing,
            NOT_ALLOWED,
            &[],
        ),
    ]
}

/// Replaces the placeholders of a path or body.
fn fill(s: &str, w: &str, t: &str, schedule: &str) -> String {
    s.replace("{w}", w)
        .replace("{t}", t)
        .replace("{s}", schedule)
        .replace("{long5000}", &"w".repeat(5000))
        .replace("{long}", &"q".repeat(129))
}

/// The request body of a case.
fn body_of(send: &Input, w: &str, t: &str, s: &str) -> Body {
    let json = |s: String| Body::Raw(s.into_bytes(), Some("application/json"));
    match send {
        Json(text) => json(fill(text, w, t, s)),
        Typed(text, ct) => Body::Raw(fill(text, w, t, s).into_bytes(), Some(ct)),
        Nothing => Body::None,
        Oversize => {
            let frame = r#"{"name": ""}"#.len();
            json(format!(
                r#"{{"name": "{}"}}"#,
                "n".repeat(MAX_BODY + 1 - frame)
            ))
        }
        DeepResult(n) => json(format!(
            r#"{{"results": [{{"task_id": "{t}", "result": {}1{}}}]}}"#,
            "[".repeat(*n),
            "]".repeat(*n)
        )),
        ManyTypes(n) => json(json!({ "types": vec!["x"; *n] }).to_string()),
    }
}

/// Sends one case and checks the answer.
async fn check(api: &Api, c: &Case, w: &str, t: &str, s: &str) {
    let path = fill(c.path, w, t, s);
    let r = api.send(c.method, &path, body_of(&c.send, w, t, s)).await;
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

/// No 5xx was counted by the server's own metrics.
async fn assert_no_5xx(api: &Api) {
    let metrics = api.get("/metrics").await.text;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("dispatch_http_requests_total"))
    {
        assert!(!line.contains("status=\"5"), "a 5xx was served: {line}");
    }
}

#[tokio::test]
async fn every_endpoint_refuses_malformed_input_with_problem_details() {
    let server = Server::with_args(&["--max-body-bytes", &MAX_BODY.to_string()]).await;
    let api = server.api();
    let w = api.register(&["other"], 1).await;
    let t = api.submit_id("x", json!({"keep": true})).await;
    let s = "nightly";
    api.post(
        "/v1/schedules",
        json!({"name": s, "cron": "0 3 * * *", "paused": true, "task": {"type": "report"}}),
    )
    .await
    .expect(201);
    let queues_before = api.get("/v1/queues").await.expect(200);

    let cases = cases();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    for c in &cases {
        check(&api, c, &w, &t, s).await;
    }

    // Still up and serving, no 5xx, nothing half-written.
    let h = api.get("/healthz").await;
    assert_eq!(h.status, 200, "{}", h.text);
    assert_no_5xx(&api).await;
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
        "refused requests created tasks: {all}"
    );
    let task = api.task(&t).await;
    assert_eq!(task["state"], "queued", "{task}");
    assert_eq!(task["attempts"], 0, "{task}");
    let workers = api.workers().await;
    assert_eq!(
        workers.len(),
        1,
        "refused registrations created workers: {workers:?}"
    );
    assert_eq!(workers[0]["id"], json!(w));
    let schedules = api.get("/v1/schedules").await.expect(200);
    let names: Vec<&str> = schedules["schedules"]
        .as_array()
        .expect("schedules")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, vec![s], "refused schedules were stored: {schedules}");
    assert_eq!(
        api.get("/v1/queues").await.expect(200),
        queues_before,
        "refused pauses changed the queues"
    );
    // The worker still works, and the task still runs.
    api.heartbeat(&w).await.expect(200);
    let x = api.register(&["x"], 1).await;
    let got = api.poll_one(&x, Duration::from_secs(5)).await;
    assert_eq!(id_of(&got), t);
    api.complete(&t, &x, json!(1)).await.expect(200);
}

/// Header sizes: a large header leaves the request's own answer intact;
/// too many headers are refused by the HTTP layer; the server lives on.
#[tokio::test]
async fn huge_headers_are_refused_or_ignored_and_the_server_lives_on() {
    let server = Server::start().await;
    let api = server.api();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/workers", server.url))
        .header("x-padding", "p".repeat(16 * 1024))
        .header("content-type", "application/json")
        .body(r#"{"types": []}"#)
        .send()
        .await
        .expect("an answer");
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = r.text().await.expect("body");
    let resp = Resp {
        status,
        content_type,
        headers: Default::default(),
        text,
        what: "POST /v1/workers with a 16 KiB header".into(),
    };
    resp.problem(422, Some("types"));

    let mut req = http.get(format!("{}/v1/tasks", server.url));
    for i in 0..300 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let r = req.send().await;
    if let Ok(r) = r {
        let status = r.status().as_u16();
        assert!(
            (400..500).contains(&status) || status == 200,
            "300 headers answered {status}"
        );
    }
    let big = http
        .get(format!("{}/v1/tasks", server.url))
        .header("x-padding", "p".repeat(1024 * 1024))
        .send()
        .await;
    if let Ok(r) = big {
        let status = r.status().as_u16();
        assert!(
            (400..500).contains(&status),
            "a 1 MiB header answered {status}"
        );
    }
    assert_eq!(api.get("/healthz").await.status, 200);
    assert!(api.workers().await.is_empty());
}

/// Malformed `Authorization` headers on a server with tokens: 401
/// problem+json, never a 5xx, whatever the header holds.
#[tokio::test]
async fn malformed_credentials_get_401_problems() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tokens");
    let admin = create_token(&file, "admin", "ops");
    let server = Server::with_args(&["--tokens", file.to_str().expect("utf-8 path")]).await;
    let http = reqwest::Client::new();
    let long = format!("Bearer {}", "a".repeat(8 * 1024));
    let basic = format!("Basic {admin}");
    let doubled = format!("Bearer {admin} {admin}");
    let values: Vec<Vec<u8>> = vec![
        b"Bearer".to_vec(),
        b"Bearer ".to_vec(),
        b"Bearer  ".to_vec(),
        basic.into_bytes(),
        doubled.into_bytes(),
        long.into_bytes(),
        b"Bearer dsp_\xff\xfe".to_vec(),
        b"Bearer dsp_\x80".to_vec(),
        b"\xff".to_vec(),
        b"".to_vec(),
    ];
    for v in values {
        let header = reqwest::header::HeaderValue::from_bytes(&v).expect("a header value");
        let r = http
            .post(format!("{}/v1/tasks", server.url))
            .header(reqwest::header::AUTHORIZATION, header)
            .json(&json!({"type": "x"}))
            .send()
            .await
            .expect("an answer");
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = r.text().await.expect("body");
        let resp = Resp {
            status,
            content_type,
            headers: Default::default(),
            text,
            what: format!(
                "POST /v1/tasks with Authorization {:?}",
                String::from_utf8_lossy(&v)
            ),
        };
        resp.problem(401, None);
    }
    // Two Authorization headers, one of them valid: refused, not guessed.
    let r = http
        .get(format!("{}/v1/tasks", server.url))
        .header(reqwest::header::AUTHORIZATION, "Bearer nope")
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {admin}"))
        .send()
        .await
        .expect("an answer");
    assert!(
        matches!(r.status().as_u16(), 200 | 401),
        "two Authorization headers answered {}",
        r.status()
    );
    // The valid token still works, and nothing was created.
    let ok = http
        .get(format!("{}/v1/tasks", server.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("an answer");
    assert_eq!(ok.status().as_u16(), 200);
    let page: Value = ok.json().await.expect("JSON");
    assert_eq!(page["tasks"], json!([]));
}

// ---- gRPC ---------------------------------------------------------------------------

/// A codec that sends and receives message bytes as they are, so that a
/// test can put anything in a gRPC frame.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// How a raw session ended: the messages received, then the status.
struct Ending {
    messages: Vec<pb::SchedulerMessage>,
    status: tonic::Status,
}

/// Opens `Connect`, sends `frames` as they are, half-closes, and reads
/// until the stream ends or `within` passes.
async fn raw_session(url: &str, frames: Vec<Vec<u8>>, path: &str) -> Ending {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let outbound = tokio_stream::iter(frames);
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().expect("path");
    let call = grpc.streaming(tonic::Request::new(outbound), path, RawCodec);
    let within = Duration::from_secs(10);
    let mut inbound = match tokio::time::timeout(within, call)
        .await
        .expect("answered in time")
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return Ending {
                messages: Vec::new(),
                status,
            };
        }
    };
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(within, inbound.message())
            .await
            .expect("ended in time")
        {
            Ok(Some(bytes)) => messages
                .push(pb::SchedulerMessage::decode(bytes.as_slice()).expect("a scheduler message")),
            Ok(None) => {
                return Ending {
                    messages,
                    status: tonic::Status::ok(""),
                };
            }
            Err(status) => return Ending { messages, status },
        }
    }
}

const CONNECT: &str = "/dispatch.v1.WorkerService/Connect";

fn register_bytes(types: &[&str], capacity: u32) -> Vec<u8> {
    pb::WorkerMessage::register(pb::Register {
        name: Some("raw".into()),
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        labels: Default::default(),
        capacity,
        weight: None,
    })
    .encode_to_vec()
}

/// Garbage on the gRPC stream: each session ends with an error status
/// saying what was wrong, the worker it may have registered is gone, and
/// the server keeps serving both protocols.
#[tokio::test]
async fn garbage_on_the_grpc_stream_gets_an_error_status() {
    use tonic::Code;
    let server = Server::start().await;
    let api = server.api();
    let t = api.submit_id("x", json!(1)).await;
    let url = &server.url;

    let garbage: Vec<u8> = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x0b, 0x00];
    // What a session sends, and the statuses it may end with.
    type Session = (&'static str, Vec<Vec<u8>>, &'static [Code]);
    let sessions: Vec<Session> = vec![
        (
            "garbage first message",
            vec![garbage.clone()],
            &[Code::InvalidArgument],
        ),
        (
            "a string that is not UTF-8 in Register",
            vec![vec![0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe]],
            &[Code::InvalidArgument],
        ),
        (
            "Credit before Register",
            vec![pb::WorkerMessage::credit(4).encode_to_vec()],
            &[Code::InvalidArgument],
        ),
        (
            "an empty message first",
            vec![Vec::new()],
            &[Code::InvalidArgument],
        ),
        (
            "Register with capacity 0",
            vec![register_bytes(&["x"], 0)],
            &[Code::InvalidArgument],
        ),
        (
            "Register with a bad type",
            vec![register_bytes(&["a b"], 1)],
            &[Code::InvalidArgument],
        ),
        (
            "Register twice",
            vec![register_bytes(&["y"], 1), register_bytes(&["y"], 1)],
            &[Code::InvalidArgument],
        ),
        (
            "garbage after Register",
            vec![register_bytes(&["y"], 1), garbage.clone()],
            &[Code::InvalidArgument],
        ),
        ("nothing at all", vec![], &[Code::InvalidArgument]),
    ];
    for (name, frames, codes) in sessions {
        let end = raw_session(url, frames, CONNECT).await;
        assert!(
            codes.contains(&end.status.code()),
            "{name}: ended with {:?} {:?}, expected one of {codes:?}",
            end.status.code(),
            end.status.message()
        );
        assert!(
            !end.status.message().is_empty(),
            "{name}: a status says why"
        );
        // No task was handed to a session that broke the protocol.
        let handed = end
            .messages
            .iter()
            .any(|m| matches!(m.kind, Some(pb::scheduler_message::Kind::Tasks(_))));
        assert!(!handed, "{name}: tasks were pushed: {:?}", end.messages);
    }
    let bad_register = raw_session(url, vec![register_bytes(&["x"], 0)], CONNECT).await;
    assert!(
        bad_register.status.message().contains("capacity"),
        "the status names the field: {:?}",
        bad_register.status.message()
    );
    let unknown = raw_session(url, vec![garbage], "/dispatch.v1.WorkerService/Nope").await;
    assert_eq!(
        unknown.status.code(),
        Code::Unimplemented,
        "{:?}",
        unknown.status
    );

    // Still serving: no worker left behind, the task untouched, and a real
    // session works.
    assert_eq!(api.get("/healthz").await.status, 200);
    let workers = api.workers().await;
    assert!(workers.is_empty(), "sessions left workers: {workers:?}");
    let task = api.task(&t).await;
    assert_eq!(
        (task["state"].as_str(), task["attempts"].as_u64()),
        (Some("queued"), Some(0))
    );
    let credit = pb::WorkerMessage::credit(1).encode_to_vec();
    let ok = raw_session(url, vec![register_bytes(&["other"], 1), credit], CONNECT).await;
    assert_eq!(ok.status.code(), Code::Ok, "{:?}", ok.status);
    assert!(
        matches!(
            ok.messages.first().and_then(|m| m.kind.as_ref()),
            Some(pb::scheduler_message::Kind::Registered(_))
        ),
        "{:?}",
        ok.messages
    );
    assert_no_5xx(&api).await;
}

/// The gRPC path spoken to in plain HTTP/1.1 JSON: a 415 problem, and the
/// server lives on.
#[tokio::test]
async fn the_grpc_path_refuses_plain_http() {
    let server = Server::start().await;
    let api = server.api();
    let r = api
        .send(
            "POST",
            CONNECT,
            Body::Raw(br#"{"types": ["x"]}"#.to_vec(), Some("application/json")),
        )
        .await;
    r.problem(415, None);
    // gRPC over HTTP/1.1 with the right media type: not a session either.
    let r = api
        .send(
            "POST",
            CONNECT,
            Body::Raw(register_bytes(&["x"], 1), Some("application/grpc")),
        )
        .await;
    assert!(
        r.status != 200 || r.headers.get("grpc-status").is_some_and(|s| s != "0"),
        "gRPC over HTTP/1.1 answered {} {:?}: {}",
        r.status,
        r.headers,
        r.text
    );
    assert_eq!(api.get("/healthz").await.status, 200);
    assert!(api.workers().await.is_empty());
}
