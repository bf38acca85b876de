//! End-to-end tests of the HTTP worker protocol: register, poll (long and
//! batched), complete, fail, retries, priorities, type routing, leases,
//! heartbeats, graceful leave and cancellation of running tasks.
//!
//! Each test starts its own `dispatch server` child process.

mod common;

use std::time::{Duration, Instant};

use common::{Server, assert_rfc3339, id_of, unique_type};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn register_poll_complete_then_a_second_complete_conflicts() {
    let server = Server::start().await;
    let api = server.api();
    let id = api
        .submit_id("resize", json!({"image": "cat.png", "w": 64}))
        .await;

    let r = api
        .post(
            "/v1/workers",
            json!({"name": "w1", "types": ["resize"], "labels": {"zone": "a"}, "capacity": 2}),
        )
        .await
        .expect(201);
    let w = r["id"].as_str().expect("worker id").to_owned();
    assert!(r["lease_ms"].as_u64().is_some_and(|l| l > 0), "{r}");
    assert!(r["heartbeat_ms"].as_u64().is_some_and(|h| h > 0), "{r}");

    let workers = api.workers().await;
    let me = workers
        .iter()
        .find(|x| x["id"] == json!(w))
        .expect("listed");
    assert_eq!(me["name"], "w1");
    assert_eq!(me["types"], json!(["resize"]));
    assert_eq!(me["labels"], json!({"zone": "a"}));
    assert_eq!(me["capacity"], 2);
    for key in ["in_flight", "state", "last_seen_at"] {
        assert!(!me[key].is_null(), "worker without {key}: {me}");
    }

    let task = api.poll_one(&w, WITHIN).await;
    assert_eq!(task["id"], json!(id));
    assert_eq!(task["type"], "resize");
    assert_eq!(task["payload"], json!({"image": "cat.png", "w": 64}));
    assert_eq!(task["attempt"], 1);
    assert!(
        task.get("timeout_ms").is_some(),
        "polled task without timeout_ms: {task}"
    );

    let running = api.task(&id).await;
    assert_eq!(running["state"], "running");
    assert_eq!(running["attempts"], 1);
    assert_eq!(running["worker_id"], json!(w));
    assert_rfc3339(&running["started_at"]);

    api.complete(&id, &w, json!({"thumb": "cat-64.png"}))
        .await
        .expect(200);
    let done = api.task(&id).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["result"], json!({"thumb": "cat-64.png"}));
    assert_eq!(done["attempts"], 1);
    assert_rfc3339(&done["finished_at"]);

    api.complete(&id, &w, json!("again"))
        .await
        .problem(409, None);
    api.fail(&id, &w, "late", json!({}))
        .await
        .problem(409, None);
    assert_eq!(
        api.task(&id).await["result"],
        json!({"thumb": "cat-64.png"})
    );

    // Nothing more to do: an empty poll.
    assert!(api.poll(&w, 1, 0).await.is_empty());
}

#[tokio::test]
async fn a_failure_is_retried_then_abort_and_exhaustion_make_it_dead() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("flaky");
    let w = api.register(&[&kind], 1).await;

    // Fail with attempts left: back to waiting, the error kept, then
    // delivered again as attempt 2.
    let id = api.submit_id(&kind, json!("p")).await;
    let t = api.poll_one(&w, WITHIN).await;
    assert_eq!(t["id"], json!(id));
    api.fail(&id, &w, "disk full", json!({"retry_after_ms": 500}))
        .await
        .expect(200);
    let back = api.task(&id).await;
    assert!(
        back["state"] == "scheduled" || back["state"] == "queued",
        "after a retryable failure: {back}"
    );
    assert_eq!(back["attempts"], 1, "{back}");
    assert_eq!(back["error"], "disk full", "{back}");
    let again = api.poll_one(&w, WITHIN).await;
    assert_eq!(again["id"], json!(id));
    assert_eq!(again["attempt"], 2);
    api.complete(&id, &w, json!(true)).await.expect(200);
    let done = api.task(&id).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["attempts"], 2);

    // retry_after_ms 0: delivered again at once.
    let id = api.submit_id(&kind, json!("p0")).await;
    api.poll_one(&w, WITHIN).await;
    api.fail(&id, &w, "blip", json!({"retry_after_ms": 0}))
        .await
        .expect(200);
    let again = api.poll_one(&w, WITHIN).await;
    assert_eq!(again["id"], json!(id));
    assert_eq!(again["attempt"], 2);
    api.complete(&id, &w, json!(null)).await.expect(200);

    // Abort: dead at once although attempts are left.
    let aborted = api.submit_id(&kind, json!("a")).await;
    api.poll_one(&w, WITHIN).await;
    api.fail(&aborted, &w, "bad input", json!({"abort": true}))
        .await
        .expect(200);
    let t = api.task(&aborted).await;
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["error"], "bad input");
    assert_eq!(t["attempts"], 1);

    // max_attempts 1: the first failure exhausts it.
    let once = api.submit(json!({"type": kind, "max_attempts": 1})).await;
    let once = id_of(&once);
    api.poll_one(&w, WITHIN).await;
    api.fail(&once, &w, "boom", json!({"retry_after_ms": 0}))
        .await
        .expect(200);
    let t = api.task(&once).await;
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["error"], "boom");
    assert_rfc3339(&t["finished_at"]);

    let dead = api.list_ids(&format!("state=dead&type={kind}")).await;
    assert_eq!(
        dead,
        vec![once.clone(), aborted.clone()],
        "dead tasks, newest first"
    );
    // A dead task is terminal: a late report conflicts.
    api.complete(&once, &w, json!(1)).await.problem(409, None);
}

#[tokio::test]
async fn higher_priority_first_then_submission_order() {
    let server = Server::start().await;
    let api = server.api();
    let mut ids = Vec::new();
    for p in [0, 10, -5, 10] {
        let t = api.submit(json!({"type": "prio", "priority": p})).await;
        ids.push(id_of(&t));
    }
    let w = api.register(&["prio"], 1).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let t = api.poll_one(&w, WITHIN).await;
        let id = id_of(&t);
        api.complete(&id, &w, json!(null)).await.expect(200);
        order.push(id);
    }
    let want = vec![
        ids[1].clone(),
        ids[3].clone(),
        ids[0].clone(),
        ids[2].clone(),
    ];
    assert_eq!(order, want, "order by priority 10, 10, 0, -5");
}

#[tokio::test]
async fn tasks_reach_only_workers_that_registered_their_type() {
    let server = Server::start().await;
    let api = server.api();
    let a = api.register(&["a"], 10).await;
    let b = api.register(&["b"], 10).await;
    let mut want_a = Vec::new();
    let mut want_b = Vec::new();
    for i in 0..6 {
        want_a.push(api.submit_id("a", json!(i)).await);
        want_b.push(api.submit_id("b", json!(i)).await);
    }
    // A type nobody registered waits.
    let nobody = api.submit_id("c", json!(null)).await;

    let got_a = api.poll_n(&a, 6, WITHIN).await;
    let got_b = api.poll_n(&b, 6, WITHIN).await;
    assert!(got_a.iter().all(|t| t["type"] == "a"), "{got_a:?}");
    assert!(got_b.iter().all(|t| t["type"] == "b"), "{got_b:?}");
    let mut ids_a: Vec<String> = got_a.iter().map(id_of).collect();
    let mut ids_b: Vec<String> = got_b.iter().map(id_of).collect();
    ids_a.sort();
    ids_b.sort();
    want_a.sort();
    want_b.sort();
    assert_eq!(ids_a, want_a);
    assert_eq!(ids_b, want_b);
    for id in &want_a {
        assert_eq!(api.task(id).await["worker_id"], json!(a));
    }
    for id in &want_b {
        assert_eq!(api.task(id).await["worker_id"], json!(b));
    }
    // Neither gets more, and the "c" task is still queued.
    assert!(api.poll(&a, 10, 0).await.is_empty());
    assert!(api.poll(&b, 10, 0).await.is_empty());
    assert_eq!(api.task(&nobody).await["state"], "queued");
}

#[tokio::test]
async fn a_silent_worker_loses_its_lease_and_its_task() {
    let server = Server::with_lease(500).await;
    let api = server.api();
    let a = api.register(&["job"], 2).await;
    let id = api.submit_id("job", json!("x")).await;
    let last = api.submit(json!({"type": "job", "max_attempts": 1})).await;
    let last = id_of(&last);
    let got = api.poll_n(&a, 2, WITHIN).await;
    assert_eq!(got.len(), 2);
    let taken = Instant::now();

    // A goes silent. B polls (long polls are capped by the server) until
    // it gets the task back.
    let b = api.register(&["job"], 1).await;
    let t = api.poll_one(&b, WITHIN).await;
    let after = taken.elapsed();
    assert_eq!(t["id"], json!(id));
    assert_eq!(t["attempt"], 2);
    assert!(
        after >= Duration::from_millis(400),
        "requeued after {after:?}, before the lease"
    );

    let running = api.task(&id).await;
    assert_eq!(running["attempts"], 2);
    assert_eq!(running["worker_id"], json!(b));
    assert_eq!(running["state"], "running");

    // The task without attempts left is dead, and says why. (Polled:
    // reading it at once may show a stale state, see
    // `a_task_that_died_with_its_worker_reads_as_dead_at_once`.)
    let dead = api
        .wait_task(&last, WITHIN, |t| t["state"] != "running")
        .await;
    assert_eq!(dead["state"], "dead", "{dead}");
    assert!(
        dead["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{dead}"
    );

    api.complete(&id, &a, json!("late"))
        .await
        .problem(409, None);
    api.fail(&last, &a, "late", json!({}))
        .await
        .problem(409, None);
    api.heartbeat(&a).await.problem(404, None);
    api.post(&format!("/v1/workers/{a}/poll"), json!({"max": 1}))
        .await
        .problem(404, None);
    let listed: Vec<Value> = api.workers().await;
    assert!(
        listed.iter().all(|w| w["id"] != json!(a)),
        "A still listed: {listed:?}"
    );
    assert!(
        listed.iter().any(|w| w["id"] == json!(b)),
        "B not listed: {listed:?}"
    );

    api.complete(&id, &b, json!("ok")).await.expect(200);
    let done = api.task(&id).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["worker_id"], json!(b));

    // A registers again and gets a new id and new work.
    let a2 = api.register(&["job"], 1).await;
    assert_ne!(a2, a);
}

#[tokio::test]
async fn a_worker_never_holds_more_than_its_capacity() {
    let server = Server::start().await;
    let api = server.api();
    let w = api.register(&["cap"], 2).await;
    for i in 0..5 {
        api.submit_id("cap", json!(i)).await;
    }
    let first = api.poll(&w, 10, 0).await;
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(
        api.poll(&w, 10, 0).await.is_empty(),
        "a third task while two run"
    );
    let me = api.workers().await;
    assert_eq!(me[0]["in_flight"], 2);
    let queued = api.list("type=cap&state=queued").await;
    assert_eq!(queued["tasks"].as_array().map(Vec::len), Some(3));

    // One slot frees, one task comes.
    api.complete(&id_of(&first[0]), &w, json!(null))
        .await
        .expect(200);
    let next = api.poll(&w, 10, 1_000).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(api.poll(&w, 10, 0).await.is_empty());
}

#[tokio::test]
async fn a_delayed_task_waits_for_its_time() {
    let server = Server::start().await;
    let api = server.api();
    let w = api.register(&["later"], 1).await;
    let t0 = Instant::now();
    let t = api.submit(json!({"type": "later", "delay_ms": 400})).await;
    let id = id_of(&t);
    assert_eq!(t["state"], "scheduled");
    assert!(
        api.poll(&w, 1, 0).await.is_empty(),
        "delivered before its time"
    );
    let got = api.poll_one(&w, WITHIN).await;
    let after = t0.elapsed();
    assert_eq!(got["id"], json!(id));
    assert!(
        after >= Duration::from_millis(380),
        "delivered after {after:?}"
    );
    // Due at 400 ms: a poll held to WITHIN would mean it never came due.
    assert!(
        after < Duration::from_secs(5),
        "delivered only after {after:?}"
    );
}

#[tokio::test]
async fn heartbeats_keep_a_worker_and_leaving_requeues_without_counting() {
    // A lease long enough that a loaded machine never stalls 100 ms
    // heartbeats past it, short enough that two fit in the loop below.
    let server = Server::with_lease(1_200).await;
    let api = server.api();
    let a = api.register(&["hb"], 1).await;
    let id = api.submit_id("hb", json!(null)).await;
    assert_eq!(api.poll_one(&a, WITHIN).await["id"], json!(id));

    // Two lease periods of heartbeats every 100 ms.
    let until = Instant::now() + Duration::from_millis(2_400);
    while Instant::now() < until {
        let r = api.heartbeat(&a).await.expect(200);
        assert_eq!(r["cancel"], json!([]), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let me = api.workers().await;
    let me = me
        .iter()
        .find(|w| w["id"] == json!(a))
        .expect("A is still registered");
    assert_eq!(me["in_flight"], 1);
    let t = api.task(&id).await;
    assert_eq!(t["state"], "running");
    assert_eq!(t["worker_id"], json!(a));
    assert_eq!(t["attempts"], 1);

    // Graceful leave: 204, the task is queued again, the attempt not counted.
    api.delete(&format!("/v1/workers/{a}")).await.expect(204);
    let t = api.task(&id).await;
    assert_eq!(t["state"], "queued", "{t}");
    assert_eq!(t["attempts"], 0, "{t}");
    assert!(api.workers().await.iter().all(|w| w["id"] != json!(a)));
    api.heartbeat(&a).await.problem(404, None);
    api.complete(&id, &a, json!(null)).await.problem(409, None);
    api.delete(&format!("/v1/workers/{a}"))
        .await
        .problem(404, None);

    let b = api.register(&["hb"], 1).await;
    let t = api.poll_one(&b, WITHIN).await;
    assert_eq!(t["id"], json!(id));
    assert_eq!(t["attempt"], 1);
    api.complete(&id, &b, json!(null)).await.expect(200);
}

#[tokio::test]
async fn long_poll_returns_when_a_task_arrives_or_after_wait_ms() {
    let server = Server::start().await;
    let api = server.api();
    let w = api.register(&["lp"], 1).await;

    // Nothing to do: the poll holds about wait_ms, then answers empty.
    let t0 = Instant::now();
    let tasks = api.poll(&w, 1, 200).await;
    let held = t0.elapsed();
    assert!(tasks.is_empty());
    assert!(
        held >= Duration::from_millis(180),
        "returned after {held:?}"
    );
    assert!(held < Duration::from_secs(5), "held {held:?}");

    // A submission during a 10 s poll ends it early, with the task. The
    // pause before submitting only makes it likely that the poll is already
    // held; the assertions hold in either order.
    let poller = {
        let api = api.clone();
        let w = w.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let tasks = api.poll(&w, 1, 10_000).await;
            (tasks, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = api.submit_id("lp", json!(7)).await;
    let submitted = Instant::now();
    let (tasks, held) = poller.await.expect("poller");
    let after_submit = submitted.elapsed();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["id"], json!(id));
    // Half the poll's wait: far from its end, however loaded the machine.
    assert!(
        held < Duration::from_secs(5),
        "held {held:?} for a task submitted at 200 ms"
    );
    assert!(
        after_submit < Duration::from_secs(5),
        "answered {after_submit:?} after the submission"
    );
}

#[tokio::test]
async fn batched_poll_reports_results_and_takes_new_tasks() {
    let server = Server::start().await;
    let api = server.api();
    let w = api.register(&["bp"], 2).await;
    let first = api.submit_id("bp", json!(1)).await;
    let second = api.submit_id("bp", json!(2)).await;
    let got = api.poll_n(&w, 2, WITHIN).await;
    assert_eq!(got.len(), 2);
    let third = api.submit_id("bp", json!(3)).await;

    // One success, one failure, one task not leased to it, one unknown.
    let other = api.submit_id("not-mine", json!(null)).await;
    let r = api
        .poll_raw(
            &w,
            json!({
                "max": 2,
                "wait_ms": 1000,
                "results": [
                    {"task_id": first, "result": {"ok": 1}},
                    {"task_id": second, "error": "nope", "abort": true},
                    {"task_id": other, "result": null},
                    {"task_id": "987654321", "result": 1},
                ],
            }),
        )
        .await;
    let results = r["results"].as_array().expect("results in the reply");
    let statuses: Vec<(Value, Value)> = results
        .iter()
        .map(|x| (x["task_id"].clone(), x["status"].clone()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (json!(first), json!(200)),
            (json!(second), json!(200)),
            (json!(other), json!(409)),
            (json!("987654321"), json!(409)),
        ],
        "{r}"
    );
    // The freed slots take the waiting task in the same round trip or the
    // next poll.
    let mut tasks = r["tasks"].as_array().expect("tasks").clone();
    if tasks.is_empty() {
        tasks = api.poll_n(&w, 1, WITHIN).await;
    }
    assert_eq!(
        tasks.iter().map(id_of).collect::<Vec<_>>(),
        vec![third.clone()]
    );

    let t = api.task(&first).await;
    assert_eq!(t["state"], "succeeded");
    assert_eq!(t["result"], json!({"ok": 1}));
    let t = api.task(&second).await;
    assert_eq!(t["state"], "dead");
    assert_eq!(t["error"], "nope");
    assert_eq!(api.task(&other).await["state"], "queued");

    // A poll without results answers an empty list.
    let r = api.poll_raw(&w, json!({"max": 1})).await;
    assert_eq!(r["results"], json!([]), "{r}");
}

#[tokio::test]
async fn cancelling_a_running_task_tells_its_worker() {
    let server = Server::start().await;
    let api = server.api();
    let w = api.register(&["long"], 1).await;
    let id = api.submit_id("long", json!(null)).await;
    assert_eq!(api.poll_one(&w, WITHIN).await["id"], json!(id));

    let t = api
        .post_empty(&format!("/v1/tasks/{id}/cancel"))
        .await
        .expect(200);
    assert_eq!(t["state"], "cancelled");
    assert_eq!(api.task(&id).await["state"], "cancelled");

    let hb = api.heartbeat(&w).await.expect(200);
    assert_eq!(hb["cancel"], json!([id]), "{hb}");
    api.complete(&id, &w, json!("too late"))
        .await
        .problem(409, None);
    assert_eq!(api.task(&id).await["state"], "cancelled");
    api.post_empty(&format!("/v1/tasks/{id}/cancel"))
        .await
        .problem(409, None);

    // The notice is given once, and the slot is free again.
    assert_eq!(api.heartbeat(&w).await.expect(200)["cancel"], json!([]));
    let next = api.submit_id("long", json!(2)).await;
    assert_eq!(api.poll_one(&w, WITHIN).await["id"], json!(next));
}

/// `retry_after_ms` is when the retry becomes due, not a hint rounded up
/// to the timer loop's next wake-up.
#[tokio::test]
async fn a_retry_is_delivered_soon_after_retry_after_ms() {
    // The timer's idle tick is ten minutes: only the retry's own time can
    // wake it within the bound below.
    let server = Server::with_args(&["--idle-tick-ms", "600000"]).await;
    let api = server.api();
    let w = api.register(&["soon"], 1).await;
    for round in 0..5u64 {
        let id = api.submit_id("soon", json!(round)).await;
        assert_eq!(api.poll_one(&w, WITHIN).await["id"], json!(id));
        // Vary the phase against the server's timer.
        tokio::time::sleep(Duration::from_millis(150 * round)).await;
        api.fail(&id, &w, "again", json!({"retry_after_ms": 100}))
            .await
            .expect(200);
        // One long poll: the timer's idle tick is ten minutes, so only the
        // retry's own time can hand it over before this poll ends.
        let failed = Instant::now();
        let t = api.poll(&w, 1, 5_000).await;
        let after = failed.elapsed();
        assert_eq!(
            t.len(),
            1,
            "round {round}: a 100 ms retry not redelivered after {after:?}"
        );
        api.complete(&id, &w, json!(null)).await.expect(200);
    }
}

/// A task the core declared dead with its worker must read as dead as soon
/// as the worker is gone: never as still running on a worker that no
/// longer exists.
#[tokio::test]
async fn a_task_that_died_with_its_worker_reads_as_dead_at_once() {
    let server = Server::with_lease(300).await;
    let api = server.api();
    let a = api.register(&["doomed"], 200).await;
    let tasks: Vec<Value> = (0..200)
        .map(|i| json!({"type": "doomed", "payload": i, "max_attempts": 1}))
        .collect();
    let r = api
        .post("/v1/tasks/batch", json!({ "tasks": tasks }))
        .await
        .expect(201);
    let ids: Vec<String> = r["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(api.poll_n(&a, 200, WITHIN).await.len(), 200);

    // Wait for the lease to lapse: A disappears from the worker list.
    let deadline = Instant::now() + WITHIN;
    while api.workers().await.iter().any(|w| w["id"] == json!(a)) {
        assert!(Instant::now() < deadline, "A never lost its lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in ids.iter().rev() {
        let t = api.task(id).await;
        assert_eq!(
            t["state"], "dead",
            "read right after A was declared dead: {t}"
        );
    }
}

/// A poll answer that never reached its worker: the worker acknowledges a
/// later answer (`last_handout`) and names what it runs; the task of the
/// lost answer goes back to its queue at once, no attempt spent, and is
/// handed over again. What it names stays; an unacknowledged answer's
/// tasks stay; a `last_handout` from before a restart is ignored; a
/// malformed one is refused naming the field.
#[tokio::test]
async fn the_task_of_a_lost_poll_answer_goes_back_once_a_later_answer_is_acknowledged() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("lost-answer");
    let w = api.register(&[&kind], 2).await;
    let poll = |body: Value| {
        let api = api.clone();
        let w = w.clone();
        async move { api.poll_raw(&w, body).await }
    };

    // Answer 1 hands A, and the worker never hears of it.
    let a = api.submit_id(&kind, json!("a")).await;
    let lost = poll(json!({"max": 1, "wait_ms": 5_000})).await;
    assert_eq!(lost["tasks"][0]["id"], json!(a), "{lost}");
    assert!(lost["handout"].is_string(), "{lost}");
    // An answer that hands nothing has no handout.
    let empty = poll(json!({"max": 1, "wait_ms": 0})).await;
    assert_eq!(empty["tasks"], json!([]));
    assert!(empty.get("handout").is_none(), "{empty}");

    // Answer 2 hands B; the worker names B but does not yet acknowledge
    // answer 2: A stays where it is.
    let b = api.submit_id(&kind, json!("b")).await;
    let second = poll(json!({"max": 1, "wait_ms": 5_000})).await;
    assert_eq!(second["tasks"][0]["id"], json!(b), "{second}");
    let handout = second["handout"].clone();
    poll(json!({"max": 0, "running": [b]})).await;
    assert_eq!(api.task(&a).await["state"], "running");

    // A malformed acknowledgement is refused and changes nothing.
    api.post(
        &format!("/v1/workers/{w}/poll"),
        json!({"max": 0, "running": [b], "last_handout": "answer 2"}),
    )
    .await
    .problem(422, Some("last_handout"));
    assert_eq!(api.task(&a).await["state"], "running");

    // It acknowledges answer 2 in a heartbeat: A never reached it.
    let hb = api
        .post(
            &format!("/v1/workers/{w}/heartbeat"),
            json!({"running": [b], "last_handout": handout}),
        )
        .await
        .expect(200);
    assert_eq!(hb["cancel"], json!([]), "{hb}");
    let t = api.task(&a).await;
    assert_eq!(t["state"], "queued", "{t}");
    assert_eq!(t["attempts"], 0, "the attempt never ran: {t}");
    assert_eq!(api.task(&b).await["state"], "running");

    // Handed over again, as attempt 1.
    let again = poll(json!({"max": 1, "wait_ms": 5_000, "running": [b]})).await;
    assert_eq!(again["tasks"][0]["id"], json!(a), "{again}");
    assert_eq!(again["tasks"][0]["attempt"], 1, "{again}");

    // After a restart the server's answers are numbered anew: a
    // `last_handout` from before it does not count, though its number (2)
    // is above the new answer's (1).
    let server = server.crash_and_restart().await;
    let api = server.api();
    let w = api.register(&[&kind], 2).await;
    // A and B were requeued with the worker gone; one of them comes now.
    let got = api.poll_raw(&w, json!({"max": 1, "wait_ms": 5_000})).await;
    assert_eq!(
        got["handout"],
        json!(format!(
            "{}.1",
            &got["handout"].as_str().expect("handout")[..8]
        ))
    );
    let handed = got["tasks"][0]["id"].as_str().expect("a task").to_owned();
    api.post(
        &format!("/v1/workers/{w}/heartbeat"),
        json!({"running": [], "last_handout": handout}),
    )
    .await
    .expect(200);
    assert_eq!(api.task(&handed).await["state"], "running");
}
