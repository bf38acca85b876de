//! End-to-end tests of time and outcomes: delayed tasks, retries with
//! backoff, the dead-letter state and its replay, timeouts enforced by the
//! scheduler, cancellation, dependencies between tasks and waiting for a
//! result.
//!
//! Each test starts its own `dispatch server` child process. Times are
//! short and every wait is bounded.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Api, Server, id_of, ids_of, run_cli, unique_type};
use dispatch_proto::time::{format_rfc3339, parse_rfc3339};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(5);

/// Slack for the server's wall clock against the test's monotonic one
/// (millisecond truncation on both sides).
const SKEW: Duration = Duration::from_millis(3);

/// Wall-clock milliseconds since the Unix epoch.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// `d` less the clock slack.
fn at_least(d: Duration) -> Duration {
    d.saturating_sub(SKEW)
}

/// A task's `run_at` as epoch milliseconds.
#[track_caller]
fn run_at_ms(t: &Value) -> u64 {
    stamp_ms(t, "run_at")
}

/// A task's timestamp `name` (the server's clock) as epoch milliseconds.
#[track_caller]
fn stamp_ms(t: &Value, name: &str) -> u64 {
    let s = t[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} string in {t}"));
    parse_rfc3339(s).unwrap_or_else(|e| panic!("{name} {s:?}: {e}"))
}

/// Polls with short long-polls until one task arrives; `None` after `within`.
async fn poll_within(api: &Api, worker: &str, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let wait = left.min(Duration::from_millis(100)).as_millis() as u64;
        if let Some(t) = api.poll(worker, 1, wait).await.into_iter().next() {
            return Some(t);
        }
    }
}

/// `POST /v1/tasks/{id}/retry`.
async fn retry(api: &Api, id: &str) -> common::Resp {
    api.post_empty(&format!("/v1/tasks/{id}/retry")).await
}

/// `POST /v1/tasks/{id}/cancel`.
async fn cancel(api: &Api, id: &str) -> common::Resp {
    api.post_empty(&format!("/v1/tasks/{id}/cancel")).await
}

/// Submits a task of `kind` with `max_attempts` 1, runs it on `worker` and
/// fails it: it ends dead. Returns its id.
async fn dead_task(api: &Api, kind: &str, worker: &str, error: &str) -> String {
    let id = id_of(&api.submit(json!({"type": kind, "max_attempts": 1})).await);
    let got = api.poll_one(worker, WITHIN).await;
    assert_eq!(got["id"], json!(id));
    api.fail(&id, worker, error, json!({})).await.expect(200);
    let t = api.task(&id).await;
    assert_eq!(t["state"], "dead", "{t}");
    id
}

/// The error of a task, which must be a string.
#[track_caller]
fn error_of(t: &Value) -> &str {
    t["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {t}"))
}

// ---- delayed tasks ----------------------------------------------------------

#[tokio::test]
async fn a_delayed_task_is_scheduled_and_delivered_at_its_time() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("later");
    let w = api.register(&[&kind], 1).await;

    let before = wall_ms();
    let sent = Instant::now();
    let t = api.submit(json!({"type": kind, "delay_ms": 400})).await;
    let after = wall_ms();
    assert_eq!(t["state"], "scheduled", "{t}");
    assert_eq!(t["attempts"], 0, "{t}");
    let at = run_at_ms(&t);
    assert!(
        at + 5 >= before + 400 && at <= after + 400 + 5,
        "run_at {at} is not submit time + 400 ms ({before}..{after})"
    );
    let id = id_of(&t);

    // Due after 400 ms: delivered on time, not at the end of a 5 s wait.
    let got = poll_within(&api, &w, Duration::from_secs(5))
        .await
        .expect("the delayed task was never delivered");
    let waited = sent.elapsed();
    assert_eq!(got["id"], json!(id));
    assert_eq!(got["attempt"], 1);
    assert!(
        waited >= at_least(Duration::from_millis(400)),
        "delivered {waited:?} after submission, before its time"
    );
    let running = api.task(&id).await;
    assert_eq!(running["state"], "running", "{running}");
    // The server's own clock: started no earlier than due.
    assert!(
        stamp_ms(&running, "started_at") >= at,
        "started before its run_at: {running}"
    );
}

#[tokio::test]
async fn a_run_at_in_the_past_is_queued_at_once() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("past");
    let past = format_rfc3339(wall_ms() - 60_000);
    let t = api.submit(json!({"type": kind, "run_at": past})).await;
    assert_eq!(t["state"], "queued", "{t}");
    let id = id_of(&t);

    // An RFC 3339 time with an offset, in the future: scheduled.
    let soon = wall_ms() + 60_000;
    let later = api
        .submit(json!({"type": kind, "run_at": rfc3339_at_plus_two(soon)}))
        .await;
    assert_eq!(later["state"], "scheduled", "{later}");
    assert_eq!(run_at_ms(&later), soon, "{later}");

    let w = api.register(&[&kind], 2).await;
    let got = api.poll_one(&w, Duration::from_secs(1)).await;
    assert_eq!(got["id"], json!(id));
    assert!(
        api.poll(&w, 1, 200).await.is_empty(),
        "the future task was delivered early"
    );
}

/// `ms` as RFC 3339 with a `+02:00` offset.
fn rfc3339_at_plus_two(ms: u64) -> String {
    let utc = format_rfc3339(ms + 2 * 3_600_000);
    // "2026-01-01T02:00:00.123Z" read at +02:00 is the instant `ms`.
    format!("{}+02:00", utc.trim_end_matches('Z'))
}

#[tokio::test]
async fn a_delayed_task_survives_a_crash_and_still_waits_for_its_time() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("later.crash");
    let sent = Instant::now();
    let t = api.submit(json!({"type": kind, "delay_ms": 1500})).await;
    assert_eq!(t["state"], "scheduled", "{t}");
    let id = id_of(&t);
    let at = run_at_ms(&t);

    let server = server.crash_and_restart().await;
    let api = server.api();
    let back = api.task(&id).await;
    assert_eq!(back["state"], "scheduled", "{back}");
    assert_eq!(run_at_ms(&back), at, "run_at changed across the restart");

    let w = api.register(&[&kind], 1).await;
    // Due 1.5 s after submission: delivered on time, not after a 6 s wait.
    let got = poll_within(&api, &w, Duration::from_secs(6))
        .await
        .expect("the delayed task was never delivered after the restart");
    let waited = sent.elapsed();
    assert_eq!(got["id"], json!(id));
    assert!(
        waited >= at_least(Duration::from_millis(1500)),
        "delivered {waited:?} after submission, before its time"
    );
    let running = api.task(&id).await;
    assert!(
        stamp_ms(&running, "started_at") >= at,
        "started before its run_at: {running}"
    );
}

// ---- retries, dead letters and replay ---------------------------------------

#[tokio::test]
async fn failed_attempts_back_off_then_the_task_is_dead() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("backoff");
    let w = api.register(&[&kind], 1).await;
    let id = id_of(
        &api.submit(json!({
            "type": kind,
            "max_attempts": 3,
            "backoff": {"initial_ms": 100, "max_ms": 1000, "multiplier": 2},
        }))
        .await,
    );

    let got = api.poll_one(&w, WITHIN).await;
    assert_eq!(got["attempt"], 1);
    // Jitter is within [half, full] of 100 ms, then of 200 ms.
    for (attempt, min_gap) in [(1u64, 50u64), (2, 100)] {
        let failed = Instant::now();
        api.fail(&id, &w, &format!("error {attempt}"), json!({}))
            .await
            .expect(200);
        let between = api.task(&id).await;
        assert!(
            between["state"] == "scheduled" || between["state"] == "queued",
            "after failure {attempt}: {between}"
        );
        assert_eq!(between["attempts"], attempt, "{between}");
        assert_eq!(between["error"], format!("error {attempt}"), "{between}");
        let again = api.poll_one(&w, WITHIN).await;
        let gap = failed.elapsed();
        assert_eq!(again["id"], json!(id));
        assert_eq!(again["attempt"], attempt + 1);
        assert!(
            gap >= at_least(Duration::from_millis(min_gap)),
            "redelivered {gap:?} after failure {attempt}, before its backoff of at least {min_gap} ms"
        );
    }
    api.fail(&id, &w, "error 3", json!({})).await.expect(200);
    let dead = api.task(&id).await;
    assert_eq!(dead["state"], "dead", "{dead}");
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert_eq!(dead["error"], "error 3", "{dead}");
    assert!(
        api.poll(&w, 1, 300).await.is_empty(),
        "a dead task was delivered again"
    );

    let listed = api.list_ids(&format!("state=dead&type={kind}")).await;
    assert_eq!(listed, vec![id.clone()]);
    let all_dead = api.list_ids("state=dead").await;
    assert!(all_dead.contains(&id), "{all_dead:?}");

    let out = run_cli(&["tasks", "--state", "dead", "--server", &server.url], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dispatch tasks failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("dead task {id} not listed:\n{stdout}"));
    assert!(row.contains("dead"), "{row}");
}

#[tokio::test]
async fn retry_replays_a_dead_task_once() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("replay");
    let w = api.register(&[&kind], 1).await;
    let id = dead_task(&api, &kind, &w, "broken").await;
    // With the worker gone, the replayed task waits in the queue.
    api.delete(&format!("/v1/workers/{w}")).await.expect(204);

    let r = retry(&api, &id).await.expect(200);
    assert_eq!(r["id"], json!(id));
    assert_eq!(r["state"], "queued", "{r}");
    assert_eq!(r["attempts"], 0, "{r}");
    let t = api.task(&id).await;
    assert_eq!(t["state"], "queued", "{t}");
    assert_eq!(t["attempts"], 0, "{t}");
    assert!(
        !api.list_ids(&format!("state=dead&type={kind}"))
            .await
            .contains(&id),
        "still listed as dead after the retry"
    );

    let w2 = api.register(&[&kind], 1).await;
    let got = api.poll_one(&w2, WITHIN).await;
    assert_eq!(got["id"], json!(id));
    assert_eq!(got["attempt"], 1);
    api.complete(&id, &w2, json!({"fixed": true}))
        .await
        .expect(200);
    let done = api.task(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"fixed": true}));
    assert_eq!(done["attempts"], 1, "{done}");

    // Only dead tasks can be retried.
    retry(&api, &id).await.problem(409, None);
    let queued = api.submit_id(&unique_type("nobody"), json!(null)).await;
    retry(&api, &queued).await.problem(409, None);
    retry(&api, "987654321").await.problem(404, None);
    retry(&api, "not-an-id").await.problem(404, None);

    // The same from the command line.
    let again = dead_task(&api, &kind, &w2, "broken again").await;
    let out = run_cli(&["retry", &again, "--server", &server.url], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dispatch retry failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&again), "{stdout}");
    let t = api.task(&again).await;
    assert!(
        t["state"] == "queued" || t["state"] == "running",
        "after dispatch retry: {t}"
    );
    let out = run_cli(&["retry", &again, "--server", &server.url], &[]);
    assert!(
        !out.status.success(),
        "dispatch retry of a live task succeeded"
    );
}

#[tokio::test]
async fn concurrent_retries_of_one_dead_task_let_exactly_one_through() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("replay.race");
    let w = api.register(&[&kind], 1).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(dead_task(&api, &kind, &w, &format!("e{i}")).await);
    }
    api.delete(&format!("/v1/workers/{w}")).await.expect(204);

    for id in &ids {
        let (a, b) = tokio::join!(retry(&api, id), retry(&api, id));
        let mut statuses = [a.status, b.status];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 409],
            "two retries of {id}: {} / {}",
            a.text,
            b.text
        );
        let conflict = if a.status == 409 { &a } else { &b };
        conflict.problem(409, None);
    }

    // Each one is delivered exactly once.
    let w2 = api.register(&[&kind], 10).await;
    let got = api.poll_n(&w2, 3, WITHIN).await;
    let mut got = ids_of(&json!(got));
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    assert!(
        api.poll(&w2, 10, 300).await.is_empty(),
        "a replayed task was delivered twice"
    );
    for id in &ids {
        let t = api.task(id).await;
        assert_eq!(t["state"], "running", "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
    }
}

// ---- timeouts ---------------------------------------------------------------

/// Heartbeats every 100 ms until `task` is in a reply's `cancel` list;
/// returns how long after `since` that was. Panics after `within`.
async fn heartbeat_until_cancelled(
    api: &Api,
    worker: &str,
    task: &str,
    since: Instant,
    within: Duration,
) -> Duration {
    loop {
        let r = api.heartbeat(worker).await.expect(200);
        let cancel = r["cancel"]
            .as_array()
            .unwrap_or_else(|| panic!("heartbeat reply without a cancel list: {r}"));
        if cancel.contains(&json!(task)) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "task {task} not in a cancel list within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_stopped_retried_then_dead() {
    // The timer's idle tick is ten minutes: only the deadline itself can
    // stop the attempt within the bounds below.
    let server = Server::with_args(&["--idle-tick-ms", "600000"]).await;
    let api = server.api();
    let kind = unique_type("slow");
    let w = api.register(&[&kind], 1).await;
    let id = id_of(
        &api.submit(json!({
            "type": kind,
            "timeout_ms": 300,
            "max_attempts": 2,
            // A retry in 150..=300 ms: long enough to see it wait.
            "backoff": {"initial_ms": 300, "max_ms": 300},
        }))
        .await,
    );

    let mut stopped_after = Vec::new();
    for attempt in 1..=2u64 {
        let polled = Instant::now();
        let got = api.poll_one(&w, WITHIN).await;
        assert_eq!(got["id"], json!(id));
        assert_eq!(got["attempt"], attempt);
        assert_eq!(got["timeout_ms"], 300);
        // The worker only heartbeats; the scheduler stops it.
        let after = heartbeat_until_cancelled(&api, &w, &id, polled, Duration::from_secs(60)).await;
        assert!(
            after >= at_least(Duration::from_millis(300)),
            "attempt {attempt} was stopped {after:?} after the poll, before its timeout"
        );
        stopped_after.push(after);
        let t = api.task(&id).await;
        assert_eq!(
            t["error"], "timeout after 300 ms (the task's timeout_ms)",
            "{t}"
        );
        assert_eq!(t["attempts"], attempt, "{t}");
        if attempt == 1 {
            assert_eq!(t["state"], "scheduled", "{t}");
        } else {
            assert_eq!(t["state"], "dead", "{t}");
        }
    }
    // Too late: the attempt was taken away.
    api.complete(&id, &w, json!("late"))
        .await
        .problem(409, None);
    api.fail(&id, &w, "late", json!({}))
        .await
        .problem(409, None);
    let t = api.task(&id).await;
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(
        t["error"], "timeout after 300 ms (the task's timeout_ms)",
        "{t}"
    );

    // Enforced at the deadline, not at the timer's next idle tick (ten
    // minutes away), however loaded the machine.
    assert!(
        stopped_after
            .iter()
            .all(|after| *after <= Duration::from_secs(30)),
        "attempts with timeout_ms 300 were stopped only {stopped_after:?} after their polls"
    );
}

// ---- cancellation -----------------------------------------------------------

#[tokio::test]
async fn a_cancelled_delayed_task_is_never_delivered() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("cancel.later");
    let w = api.register(&[&kind], 1).await;
    let id = id_of(&api.submit(json!({"type": kind, "delay_ms": 200})).await);

    let c = cancel(&api, &id).await.expect(200);
    assert_eq!(c["id"], json!(id));
    assert_eq!(c["state"], "cancelled", "{c}");
    assert!(
        api.poll(&w, 1, 600).await.is_empty(),
        "a cancelled task was delivered"
    );
    let t = api.task(&id).await;
    assert_eq!(t["state"], "cancelled", "{t}");
    assert_eq!(t["attempts"], 0, "{t}");
    cancel(&api, &id).await.problem(409, None);
}

#[tokio::test]
async fn a_queued_task_can_be_cancelled_a_finished_one_cannot() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("cancel.queued");
    let queued = api.submit_id(&kind, json!(1)).await;
    let done = api.submit_id(&kind, json!(2)).await;

    let c = cancel(&api, &queued).await.expect(200);
    assert_eq!(c["state"], "cancelled", "{c}");

    let w = api.register(&[&kind], 2).await;
    let got = api.poll_one(&w, WITHIN).await;
    assert_eq!(got["id"], json!(done), "only the other task runs");
    api.complete(&done, &w, json!("ok")).await.expect(200);
    assert!(api.poll(&w, 2, 200).await.is_empty());

    cancel(&api, &done).await.problem(409, None);
    cancel(&api, &queued).await.problem(409, None);
    cancel(&api, "987654321").await.problem(404, None);
    assert_eq!(api.task(&done).await["state"], "succeeded");
    assert_eq!(api.task(&queued).await["state"], "cancelled");
}

// ---- dependencies -----------------------------------------------------------

#[tokio::test]
async fn a_child_waits_until_all_its_parents_succeeded() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("dag");
    let p1 = api.submit_id(&kind, json!("p1")).await;
    let p2 = api.submit_id(&kind, json!("p2")).await;
    let child = api
        .submit(json!({"type": kind, "payload": "child", "depends_on": [p1, p2]}))
        .await;
    assert_eq!(child["state"], "scheduled", "{child}");
    assert_eq!(child["depends_on"], json!([p1, p2]), "{child}");
    let child = id_of(&child);

    let w = api.register(&[&kind], 4).await;
    let mut parents = ids_of(&json!(api.poll_n(&w, 2, WITHIN).await));
    parents.sort();
    let mut want = vec![p1.clone(), p2.clone()];
    want.sort();
    assert_eq!(parents, want);
    assert!(api.poll(&w, 4, 200).await.is_empty(), "the child ran early");

    api.complete(&p1, &w, json!(1)).await.expect(200);
    assert!(
        api.poll(&w, 4, 200).await.is_empty(),
        "the child ran with one parent left"
    );
    assert_eq!(api.task(&child).await["state"], "scheduled");

    api.complete(&p2, &w, json!(2)).await.expect(200);
    let got = api.poll_one(&w, WITHIN).await;
    assert_eq!(got["id"], json!(child));
    assert_eq!(got["payload"], "child");
    api.complete(&child, &w, json!(3)).await.expect(200);
    assert_eq!(api.task(&child).await["state"], "succeeded");
}

#[tokio::test]
async fn a_dead_parent_cancels_its_children_and_grandchildren() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("dag.fail");
    let later = unique_type("dag.after");
    let parent = id_of(&api.submit(json!({"type": kind, "max_attempts": 1})).await);
    let child = id_of(
        &api.submit(json!({"type": later, "depends_on": [parent]}))
            .await,
    );
    let grandchild = id_of(
        &api.submit(json!({"type": later, "depends_on": [child]}))
            .await,
    );

    let w = api.register(&[&kind, &later], 4).await;
    let got = api.poll_one(&w, WITHIN).await;
    assert_eq!(got["id"], json!(parent));
    api.fail(&parent, &w, "nope", json!({})).await.expect(200);
    assert_eq!(api.task(&parent).await["state"], "dead");

    let c = api.task(&child).await;
    assert_eq!(c["state"], "cancelled", "{c}");
    assert!(error_of(&c).contains(&parent), "{c}");
    let g = api.task(&grandchild).await;
    assert_eq!(g["state"], "cancelled", "{g}");
    assert!(error_of(&g).contains(&child), "{g}");
    assert!(
        api.poll(&w, 4, 200).await.is_empty(),
        "a cancelled descendant was delivered"
    );

    // A parent cancelled by request: the same for its child.
    let nobody = unique_type("dag.nobody");
    let parent = api.submit_id(&nobody, json!(null)).await;
    let child = id_of(
        &api.submit(json!({"type": later, "depends_on": [parent]}))
            .await,
    );
    cancel(&api, &parent).await.expect(200);
    let c = api.task(&child).await;
    assert_eq!(c["state"], "cancelled", "{c}");
    assert!(error_of(&c).contains(&parent), "{c}");
}

#[tokio::test]
async fn unknown_parents_are_refused_and_nothing_is_stored() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("dag.bad");
    let real = api.submit_id(&kind, json!(null)).await;

    api.post(
        "/v1/tasks",
        json!({"type": kind, "depends_on": ["987654321"]}),
    )
    .await
    .problem(422, Some("depends_on[0]"));
    api.post(
        "/v1/tasks",
        json!({"type": kind, "depends_on": [real, "987654321"]}),
    )
    .await
    .problem(422, Some("depends_on[1]"));
    api.post("/v1/tasks", json!({"type": kind, "depends_on": ["abc"]}))
        .await
        .problem(422, Some("depends_on[0]"));

    let other = unique_type("dag.batch");
    api.post(
        "/v1/tasks/batch",
        json!({"tasks": [
            {"type": other, "depends_on": [real]},
            {"type": other, "depends_on": ["987654321"]},
        ]}),
    )
    .await
    .problem(422, Some("tasks[1].depends_on[0]"));
    assert_eq!(
        api.list_ids(&format!("type={other}")).await,
        Vec::<String>::new(),
        "part of a refused batch was stored"
    );
    assert_eq!(api.list_ids(&format!("type={kind}")).await, vec![real]);
}

#[tokio::test]
async fn a_child_of_an_ended_parent_is_settled_at_submission() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("dag.ended");
    let later = unique_type("dag.ended.child");
    let w = api.register(&[&kind], 1).await;

    let ok = api.submit_id(&kind, json!("ok")).await;
    assert_eq!(api.poll_one(&w, WITHIN).await["id"], json!(ok));
    api.complete(&ok, &w, json!(null)).await.expect(200);
    let child = api.submit(json!({"type": later, "depends_on": [ok]})).await;
    assert_eq!(child["state"], "queued", "{child}");

    let dead = dead_task(&api, &kind, &w, "gone").await;
    let orphan = api
        .submit(json!({"type": later, "depends_on": [ok, dead]}))
        .await;
    assert_eq!(orphan["state"], "cancelled", "{orphan}");
    assert!(error_of(&orphan).contains(&dead), "{orphan}");
    let stored = api.task(&id_of(&orphan)).await;
    assert_eq!(stored["state"], "cancelled", "{stored}");

    // Only the child of the succeeded parent runs.
    let w2 = api.register(&[&later], 2).await;
    let got = api.poll_one(&w2, WITHIN).await;
    assert_eq!(got["id"], child["id"]);
    assert!(api.poll(&w2, 2, 200).await.is_empty());
}

#[tokio::test]
async fn a_waiting_child_survives_a_crash() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("dag.crash");
    let parent = api.submit_id(&kind, json!("parent")).await;
    let child = id_of(
        &api.submit(json!({"type": kind, "payload": "child", "depends_on": [parent]}))
            .await,
    );

    let server = server.crash_and_restart().await;
    let api = server.api();
    assert_eq!(api.task(&child).await["state"], "scheduled");

    let w = api.register(&[&kind], 2).await;
    let got = api.poll_one(&w, WITHIN).await;
    assert_eq!(got["id"], json!(parent));
    assert!(api.poll(&w, 2, 200).await.is_empty(), "the child ran early");
    api.complete(&parent, &w, json!(null)).await.expect(200);
    let got = api.poll_one(&w, WITHIN).await;
    assert_eq!(got["id"], json!(child));
}

// ---- waiting for a result ---------------------------------------------------

#[tokio::test]
async fn get_with_wait_ms_returns_as_soon_as_the_task_ends() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("wait");
    let w = api.register(&[&kind], 1).await;
    let id = api.submit_id(&kind, json!(null)).await;
    assert_eq!(api.poll_one(&w, WITHIN).await["id"], json!(id));

    let waiter = {
        let api = api.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let r = api.get(&format!("/v1/tasks/{id}?wait_ms=10000")).await;
            (r, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    api.complete(&id, &w, json!({"answer": 42}))
        .await
        .expect(200);
    let (r, answered) = waiter.await.expect("waiter task");
    let t = r.expect(200);
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["result"], json!({"answer": 42}));
    let late = answered.saturating_duration_since(started);
    // Far from the 10 s the wait could last, however loaded the machine.
    assert!(
        late < Duration::from_secs(5),
        "the wait ended {late:?} after the task succeeded"
    );

    // Already terminal: at once.
    let at = Instant::now();
    let again = api
        .get(&format!("/v1/tasks/{id}?wait_ms=10000"))
        .await
        .expect(200);
    assert_eq!(again["state"], "succeeded");
    assert!(at.elapsed() < Duration::from_secs(5), "{:?}", at.elapsed());
}

#[tokio::test]
async fn wait_ms_must_be_a_number() {
    let server = Server::start().await;
    let api = server.api();
    let id = api.submit_id(&unique_type("wait.bad"), json!(null)).await;
    api.get(&format!("/v1/tasks/{id}?wait_ms=abc"))
        .await
        .problem(422, Some("wait_ms"));
    api.get(&format!("/v1/tasks/{id}?wait_ms=-1"))
        .await
        .problem(422, Some("wait_ms"));
}

#[tokio::test]
async fn submit_wait_prints_the_finished_task() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("cli.wait");
    let w = api.register(&[&kind], 1).await;

    let cli = {
        let url = server.url.clone();
        let kind = kind.clone();
        tokio::task::spawn_blocking(move || {
            run_cli(
                &[
                    "submit",
                    &kind,
                    "--payload",
                    "{}",
                    "--wait",
                    "--json",
                    "--server",
                    &url,
                ],
                &[],
            )
        })
    };
    let got = api.poll_one(&w, Duration::from_secs(10)).await;
    let id = id_of(&got);
    assert_eq!(got["payload"], json!({}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.complete(&id, &w, json!({"rows": 7})).await.expect(200);

    let out = cli.await.expect("cli thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dispatch submit --wait failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {stdout}"));
    assert_eq!(t["id"], json!(id));
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["result"], json!({"rows": 7}));
}

#[tokio::test]
async fn finished_tasks_are_purged_after_the_retention_period() {
    let server = Server::with_args(&["--retention-ms", "300"]).await;
    let api = server.api();
    let w = api.register(&["job"], 4).await;
    let done = api.submit_id("job", json!({"n": 1})).await;
    let t = api.poll_one(&w, Duration::from_secs(5)).await;
    assert_eq!(id_of(&t), done);
    api.complete(&done, &w, json!("ok")).await.expect(200);
    let live = api.submit_id("other", json!({"n": 2})).await;
    // Gone within a few purge rounds after 300 ms; the live task stays.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = api.get(&format!("/v1/tasks/{done}")).await;
        if r.status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the finished task was never purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.task(&live).await["state"], "queued");
    // Ids are never reused: the newest task keeps the high-water mark.
    let next = api.submit_id("other", json!({"n": 3})).await;
    assert!(next.parse::<u64>().unwrap() > live.parse::<u64>().unwrap());
}
