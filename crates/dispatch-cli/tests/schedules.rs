//! End-to-end cron schedules: the `/v1/schedules` endpoints and the CLI,
//! malformed schedules, an every-second schedule firing, and SIGKILLs of
//! the server around fires: each fire has exactly one task, and the fires
//! missed while the server was down follow the misfire policy.
//!
//! Every fire's task carries the idempotency key
//! `schedule:{name}:{fire_at_ms}`, which is how these tests tell fires
//! apart. A fire's task is created at the moment the server decided the
//! fire, so `created_at - fire_at` is under a second for an on-time fire of
//! an every-second schedule, and at least a second for a missed one.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Api, Server, assert_rfc3339, run_cli, unique_type};
use serde_json::{Value, json};

/// Bound of every wait for fires of an every-second schedule.
const WITHIN: Duration = Duration::from_secs(6);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An RFC 3339 time as epoch milliseconds.
fn ms(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let t = chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    t.timestamp_millis() as u64
}

/// One fire's task, as the tests look at it.
#[derive(Clone, Debug)]
struct Fired {
    id: u64,
    fire_at: u64,
    created_at: u64,
}

impl Fired {
    /// How late the server decided the fire.
    fn lag(&self) -> u64 {
        self.created_at.saturating_sub(self.fire_at)
    }
}

/// Every task of `kind` made by schedule `name`, by id; asserts each one's
/// key names a fire of that schedule.
async fn fired(api: &Api, kind: &str, name: &str) -> Vec<Fired> {
    let page = api.list(&format!("type={kind}&limit=1000")).await;
    let prefix = format!("schedule:{name}:");
    let mut out: Vec<Fired> = page["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            let key = t["idempotency_key"]
                .as_str()
                .unwrap_or_else(|| panic!("a fire's task without a key: {t}"));
            let fire_at = key
                .strip_prefix(&prefix)
                .and_then(|at| at.parse().ok())
                .unwrap_or_else(|| panic!("key {key:?} names no fire of {name}"));
            Fired {
                id: t["id"].as_str().and_then(|id| id.parse().ok()).expect("id"),
                fire_at,
                created_at: ms(&t["created_at"]),
            }
        })
        .collect();
    assert!(page["next_cursor"].is_null(), "more than one page of fires");
    out.sort_by_key(|f| f.id);
    out
}

/// Waits until schedule `name` made at least `n` tasks.
async fn wait_fired(api: &Api, kind: &str, name: &str, n: usize) -> Vec<Fired> {
    let deadline = Instant::now() + WITHIN;
    loop {
        let got = fired(api, kind, name).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{name} made {} tasks, not {n}, within {WITHIN:?}",
            got.len()
        );
        tokio::time::sleep(common::POLL_EVERY).await;
    }
}

/// Asserts that every fire has exactly one task, on a whole second, and
/// that fires were made in order.
#[track_caller]
fn assert_one_task_per_fire(all: &[Fired]) {
    let mut seen = HashSet::new();
    for f in all {
        assert!(
            seen.insert(f.fire_at),
            "two tasks for the fire at {}: {all:?}",
            f.fire_at
        );
        assert_eq!(f.fire_at % 1000, 0, "not a whole second: {f:?}");
    }
    for w in all.windows(2) {
        assert!(w[0].fire_at < w[1].fire_at, "fires out of order: {all:?}");
    }
}

async fn create(api: &Api, body: Value) -> Value {
    api.post("/v1/schedules", body).await.expect(201)
}

fn every_second(name: &str, kind: &str, misfire: &str) -> Value {
    json!({
        "name": name,
        "cron": "* * * * * *",
        "task": {"type": kind, "payload": {"from": name}, "priority": 3, "queue": "cron"},
        "misfire": misfire,
    })
}

#[tokio::test]
async fn create_list_get_delete_with_status_codes() {
    let server = Server::start().await;
    let api = server.api();
    let s = create(
        &api,
        json!({
            "name": "nightly.report",
            "cron": "30 2 * * *",
            "timezone": "America/New_York",
            "task": {"type": "report.build", "payload": {"r": [1, 2]}},
            "misfire": "catch_up",
            "catch_up_limit": 5,
        }),
    )
    .await;
    assert_eq!(s["name"], "nightly.report");
    assert_eq!(s["cron"], "30 2 * * *");
    assert_eq!(s["timezone"], "America/New_York");
    assert_eq!(
        s["task"],
        json!({"type": "report.build", "payload": {"r": [1, 2]}})
    );
    assert_eq!(s["misfire"], "catch_up");
    assert_eq!(s["catch_up_limit"], 5);
    assert_eq!(s["paused"], false);
    assert_rfc3339(&s["created_at"]);
    assert_rfc3339(&s["next_fire_at"]);
    assert!(ms(&s["next_fire_at"]) > now_ms());
    assert_eq!(s["last_fire_at"], Value::Null);

    // Defaults, and a paused schedule has no next fire.
    let paused_kind = unique_type("paused");
    let p = create(
        &api,
        json!({"name": "a.paused", "cron": "* * * * * *", "paused": true, "task": {"type": paused_kind}}),
    )
    .await;
    assert_eq!(p["timezone"], "UTC");
    assert_eq!(p["misfire"], "fire_once");
    assert_eq!(p["catch_up_limit"], 100);
    assert_eq!(p["paused"], true);
    assert_eq!(p["next_fire_at"], Value::Null);

    // The same name again: 409, whatever the rest says.
    let r = api
        .post(
            "/v1/schedules",
            json!({"name": "nightly.report", "cron": "* * * * *", "task": {"type": "x"}}),
        )
        .await;
    r.problem(409, None);

    let list = api.get("/v1/schedules").await.expect(200);
    let names: Vec<&str> = list["schedules"]
        .as_array()
        .expect("schedules")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a.paused", "nightly.report"]);
    assert_eq!(list["schedules"][1], s);
    assert_eq!(api.get("/v1/schedules/nightly.report").await.expect(200), s);
    api.get("/v1/schedules/nope").await.problem(404, None);
    api.get("/v1/schedules/not%20a%20name")
        .await
        .problem(404, None);

    // A paused schedule does not fire.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(api.list_ids(&format!("type={paused_kind}")).await.len(), 0);

    let d = api.delete("/v1/schedules/nightly.report").await;
    assert_eq!(d.status, 204, "{}", d.text);
    assert!(d.text.is_empty(), "a 204 with a body: {}", d.text);
    api.delete("/v1/schedules/nightly.report")
        .await
        .problem(404, None);
    api.get("/v1/schedules/nightly.report")
        .await
        .problem(404, None);
    api.delete("/v1/schedules/a.paused").await.expect(204);
    let list = api.get("/v1/schedules").await.expect(200);
    assert_eq!(list, json!({"schedules": []}));

    // Deleted names are free again, and schedules survive a restart.
    create(&api, every_second("nightly.report", "x", "skip")).await;
    let server = server.crash_and_restart().await;
    let api = server.api();
    let again = api.get("/v1/schedules/nightly.report").await.expect(200);
    assert_eq!(again["misfire"], "skip");
    assert_eq!(again["cron"], "* * * * * *");
}

#[tokio::test]
async fn malformed_schedules_name_the_field() {
    let server = Server::start().await;
    let api = server.api();
    let task = json!({"type": "x"});
    let cases = [
        (json!({"cron": "* * * * *", "task": task}), 422, "name"),
        (
            json!({"name": "a/b", "cron": "* * * * *", "task": task}),
            422,
            "name",
        ),
        (json!({"name": "n", "task": task}), 422, "cron"),
        (
            json!({"name": "n", "cron": "* * *", "task": task}),
            422,
            "cron",
        ),
        (
            json!({"name": "n", "cron": "61 * * * *", "task": task}),
            422,
            "cron",
        ),
        (
            json!({"name": "n", "cron": "0 0 31 2 *", "task": task}),
            422,
            "cron",
        ),
        (json!({"name": "n", "cron": 5, "task": task}), 400, "cron"),
        (
            json!({"name": "n", "cron": "* * * * *", "timezone": "Europe/Atlantis", "task": task}),
            422,
            "timezone",
        ),
        (json!({"name": "n", "cron": "* * * * *"}), 422, "task"),
        (
            json!({"name": "n", "cron": "* * * * *", "task": {}}),
            422,
            "task.type",
        ),
        (
            json!({"name": "n", "cron": "* * * * *", "task": {"type": "x", "idempotency_key": "k"}}),
            422,
            "task.idempotency_key",
        ),
        (
            json!({"name": "n", "cron": "* * * * *", "task": {"type": "x", "delay_ms": 10}}),
            422,
            "task.delay_ms",
        ),
        (
            json!({"name": "n", "cron": "* * * * *", "task": {"type": "x", "run_at": "2030-01-01T00:00:00Z"}}),
            422,
            "task.run_at",
        ),
        (
            json!({"name": "n", "cron": "* * * * *", "task": {"type": "x", "priority": 1000}}),
            422,
            "task.priority",
        ),
        (
            json!({"name": "n", "cron": "* * * * *", "task": {"type": "x", "prioirty": 1}}),
            400,
            "task.prioirty",
        ),
        (
            json!({"name": "n", "cron": "* * * * *", "misfire": "whenever", "task": task}),
            422,
            "misfire",
        ),
        (
            json!({"name": "n", "cron": "* * * * *", "catch_up_limit": 0, "task": task}),
            422,
            "catch_up_limit",
        ),
        (
            json!({"name": "n", "cron": "* * * * *", "paused": "no", "task": task}),
            400,
            "paused",
        ),
        (
            json!({"name": "n", "cron": "* * * * *", "every": "day", "task": task}),
            400,
            "every",
        ),
    ];
    for (body, status, field) in cases {
        let r = api.post("/v1/schedules", body.clone()).await;
        let p = r.problem(status, Some(field));
        assert!(
            p["detail"]
                .as_str()
                .is_some_and(|d| d.len() > field.len() + 4),
            "{body}: an unhelpful detail: {p}"
        );
    }
    // Not JSON at all.
    let r = api
        .send(
            "POST",
            "/v1/schedules",
            common::Body::Raw(b"{\"name\": ".to_vec(), Some("application/json")),
        )
        .await;
    r.problem(400, None);
    // Nothing was created.
    let list = api.get("/v1/schedules").await.expect(200);
    assert_eq!(list, json!({"schedules": []}));
}

#[tokio::test]
async fn an_every_second_schedule_fires_once_a_second() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("tick");
    let created = now_ms();
    create(&api, every_second("tick", &kind, "fire_once")).await;
    let got = wait_fired(&api, &kind, "tick", 4).await;
    assert_one_task_per_fire(&got);
    for w in got.windows(2) {
        assert_eq!(
            w[1].fire_at - w[0].fire_at,
            1_000,
            "a fire was skipped: {got:?}"
        );
    }
    assert!(
        got[0].fire_at > created,
        "fired before it was created: {got:?}"
    );
    // Created at its fire time: a few seconds of slack for a loaded
    // machine, far from the minutes of a schedule that waits for a tick.
    for f in &got {
        assert!(f.lag() < 3_000, "fired late: {f:?}");
    }
    let t = api.task(&got[0].id.to_string()).await;
    assert_eq!(t["type"], json!(kind));
    assert_eq!(t["payload"], json!({"from": "tick"}));
    assert_eq!(t["priority"], 3);
    assert_eq!(t["queue"], "cron");
    assert_eq!(t["run_at"], Value::Null);

    // The schedule shows its latest fire and the next one.
    let deadline = Instant::now() + WITHIN;
    loop {
        let s = api.get("/v1/schedules/tick").await.expect(200);
        let last = fired(&api, &kind, "tick").await.last().map(|f| f.fire_at);
        if s["last_fire_at"].is_string() && Some(ms(&s["last_fire_at"])) == last {
            assert!(ms(&s["next_fire_at"]) > ms(&s["last_fire_at"]));
            break;
        }
        assert!(Instant::now() < deadline, "last_fire_at lags: {s}");
        tokio::time::sleep(common::POLL_EVERY).await;
    }

    // Once deleted it fires no more: every fire written before the delete
    // was committed before the 204.
    api.delete("/v1/schedules/tick").await.expect(204);
    let at_delete = fired(&api, &kind, "tick").await.len();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(fired(&api, &kind, "tick").await.len(), at_delete);
}

#[tokio::test]
async fn sigkill_around_fires_leaves_exactly_one_task_per_fire() {
    let mut server = Server::start().await;
    let kind = unique_type("crash");
    create(&server.api(), every_second("crash", &kind, "fire_once")).await;
    let mut restarts = 0usize;
    // Kill at different points after a fire's task appears: right after
    // the commit, while the next fire is being written, in between.
    for delay_ms in [100u64, 350, 600, 850, 950] {
        let api = server.api();
        let before = fired(&api, &kind, "crash").await.len();
        wait_fired(&api, &kind, "crash", before + 1).await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        server = server.crash_and_restart().await;
        restarts += 1;
    }
    let api = server.api();
    let before = fired(&api, &kind, "crash").await.len();
    let all = wait_fired(&api, &kind, "crash", before + 2).await;
    assert_one_task_per_fire(&all);
    // Each restart may drop the fires the policy drops (all but the latest
    // missed one), so there is at most one gap per restart.
    let gaps = all
        .windows(2)
        .filter(|w| w[1].fire_at - w[0].fire_at > 1_000)
        .count();
    assert!(
        gaps <= restarts,
        "{gaps} gaps after {restarts} restarts: {all:?}"
    );
    // The store's record of the fires agrees with the tasks.
    let deadline = Instant::now() + WITHIN;
    loop {
        let s = api.get("/v1/schedules/crash").await.expect(200);
        let tasks = fired(&api, &kind, "crash").await;
        assert_one_task_per_fire(&tasks);
        if s["last_fire_at"].is_string()
            && tasks.last().map(|f| f.fire_at) == Some(ms(&s["last_fire_at"]))
        {
            break;
        }
        assert!(Instant::now() < deadline, "last_fire_at disagrees: {s}");
        tokio::time::sleep(common::POLL_EVERY).await;
    }
}

/// Fires of an every-second schedule with `misfire`, across a 3.2 s stop:
/// returns the last fire before the stop and the tasks made after it, once
/// at least `after` of those exist.
async fn across_a_stop(misfire: &str, after: usize) -> (u64, Vec<Fired>) {
    let server = Server::start().await;
    let kind = unique_type(misfire);
    create(&server.api(), every_second("m", &kind, misfire)).await;
    wait_fired(&server.api(), &kind, "m", 2).await;
    let killed_at = now_ms();
    let server = server
        .crash_and_restart_after(Duration::from_millis(3_200))
        .await;
    let api = server.api();
    let deadline = Instant::now() + WITHIN;
    loop {
        let all = fired(&api, &kind, "m").await;
        assert_one_task_per_fire(&all);
        let (pre, post): (Vec<Fired>, Vec<Fired>) =
            all.into_iter().partition(|f| f.created_at < killed_at);
        if post.len() >= after {
            let last = pre.last().expect("fires before the stop").fire_at;
            assert!(post[0].created_at >= killed_at + 3_200, "{post:?}");
            return (last, post);
        }
        assert!(
            Instant::now() < deadline,
            "too few fires after the stop: {post:?}"
        );
        tokio::time::sleep(common::POLL_EVERY).await;
    }
}

/// `skip`: the first fire after the restart is the on-time one; at least
/// two fires before it were missed and dropped.
fn assert_skip(last: u64, post: &[Fired]) {
    assert!(
        post[0].fire_at - last >= 3_000,
        "skip: last {last}, then {post:?}"
    );
    for f in post {
        assert!(f.lag() < 1_000, "skip ran a missed fire: {f:?} in {post:?}");
    }
}

/// `fire_once`: one task for the latest missed fire, then the on-time one;
/// the older missed fires were dropped.
fn assert_fire_once(last: u64, post: &[Fired]) {
    let (missed, on_time) = (&post[0], &post[1]);
    assert!(
        missed.lag() >= 1_000,
        "fire_once: not a missed fire: {post:?}"
    );
    assert_eq!(
        on_time.fire_at - missed.fire_at,
        1_000,
        "fire_once: {post:?}"
    );
    assert!(on_time.lag() < 1_000, "fire_once: {post:?}");
    assert!(
        missed.fire_at - last >= 2_000,
        "fire_once: last {last}, then {post:?}"
    );
    let late = post.iter().filter(|f| f.lag() >= 1_000).count();
    assert_eq!(late, 1, "fire_once ran {late} missed fires: {post:?}");
}

/// `catch_up`: every second after the last fire before the stop has its
/// task, the missed ones included.
fn assert_catch_up(last: u64, post: &[Fired]) {
    for (i, f) in post.iter().enumerate() {
        assert_eq!(
            f.fire_at,
            last + 1_000 * (i as u64 + 1),
            "catch_up: {post:?}"
        );
    }
    let missed = post.iter().filter(|f| f.lag() >= 1_000).count();
    assert!(
        missed >= 2,
        "catch_up: only {missed} missed fires ran: {post:?}"
    );
}

#[tokio::test]
async fn misfire_policies_decide_the_fires_missed_while_down() {
    // Three servers, one per policy, stopped for 3.2 s at the same time.
    let (skip, fire_once, catch_up) = tokio::join!(
        across_a_stop("skip", 2),
        across_a_stop("fire_once", 3),
        across_a_stop("catch_up", 5),
    );
    assert_skip(skip.0, &skip.1);
    assert_fire_once(fire_once.0, &fire_once.1);
    assert_catch_up(catch_up.0, &catch_up.1);
}

#[tokio::test]
async fn cli_creates_lists_and_deletes_schedules() {
    let server = Server::start().await;
    let env = [("DISPATCH_SERVER", server.url.as_str())];
    let out = run_cli(
        &[
            "schedule",
            "create",
            "billing.daily",
            "--cron",
            "0 6 * * 1-5",
            "--timezone",
            "Europe/Berlin",
            "--type",
            "billing.run",
            "--payload",
            r#"{"dry": false}"#,
            "--misfire",
            "skip",
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("created schedule billing.daily"), "{text}");

    let out = run_cli(&["schedules"], &env);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or("");
    for col in [
        "NAME",
        "CRON",
        "TIMEZONE",
        "TYPE",
        "MISFIRE",
        "PAUSED",
        "NEXT_FIRE",
        "LAST_FIRE",
    ] {
        assert!(header.contains(col), "no {col} in {header:?}");
    }
    let row = table.lines().nth(1).unwrap_or("");
    for cell in [
        "billing.daily",
        "0 6 * * 1-5",
        "Europe/Berlin",
        "billing.run",
        "skip",
    ] {
        assert!(row.contains(cell), "no {cell} in {row:?}");
    }

    let out = run_cli(&["schedules", "--json"], &env);
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        list["schedules"][0]["task"]["payload"],
        json!({"dry": false})
    );
    assert_eq!(list["schedules"][0]["misfire"], "skip");

    // Errors are one line and name what is wrong.
    let out = run_cli(
        &[
            "schedule", "create", "bad", "--cron", "* * *", "--type", "x",
        ],
        &env,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cron") && err.trim_end().lines().count() == 1,
        "{err}"
    );

    let out = run_cli(&["schedule", "delete", "billing.daily"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cli(&["schedule", "delete", "billing.daily"], &env);
    assert!(!out.status.success());
    let out = run_cli(&["schedules", "--json"], &env);
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list, json!({"schedules": []}));
}
