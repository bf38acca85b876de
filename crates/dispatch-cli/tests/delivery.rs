//! End-to-end tests of delivery: a task is `running` only once a worker has
//! it in hand, a worker that never collects what it was given spends no
//! attempt and holds nothing for long, `max: 0` polls only report, a poll
//! never waits without a free slot, and cancellations reach a worker that
//! only polls, repeated until it reports the task.
//!
//! Each test starts its own `dispatch server` child process.

mod common;

use std::time::{Duration, Instant};

use common::{Server, id_of, unique_type};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_task_is_running_only_once_its_worker_collected_it() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("collect");
    let w = api.register(&[&kind], 10).await;
    let id = id_of(&api.submit(json!({"type": kind})).await);

    // Assigned to the worker, not collected: still queued, no attempt.
    let t = api
        .wait_task(&id, WITHIN, |t| t["worker_id"] == json!(w))
        .await;
    assert_eq!(t["state"], "queued", "{t}");
    assert_eq!(t["attempts"], 0, "{t}");
    assert!(t["started_at"].is_null(), "{t}");

    let before = api.task(&id).await;
    let got = api.poll(&w, 10, 0).await;
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), vec![id.clone()]);
    assert_eq!(got[0]["attempt"], 1);
    let t = api.task(&id).await;
    assert_eq!(t["state"], "running", "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
    assert!(
        t["started_at"].as_str() >= before["created_at"].as_str(),
        "{t}"
    );
    // The CLI says the same.
    let out = common::run_cli(&["task", &id, "--server", &server.url], &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("running"));
}

#[tokio::test]
async fn a_worker_that_registers_and_hangs_kills_no_task() {
    // A short lease, so that the hung worker is declared dead soon.
    let server = Server::with_lease(1_500).await;
    let api = server.api();
    let kind = unique_type("hang");
    let hung = api.register(&[&kind], 10_000).await;
    let tasks: Vec<Value> = (0..50)
        .map(|_| json!({"type": kind, "max_attempts": 1}))
        .collect();
    let ids = api.submit_batch(tasks).await;

    // It never polls: its lease runs out and every task is queued again,
    // its one attempt unspent.
    api.wait_task(&ids[0], WITHIN, |t| t["worker_id"] == json!(hung))
        .await;
    let deadline = Instant::now() + WITHIN;
    while api.workers().await.iter().any(|w| w["id"] == json!(hung)) {
        assert!(
            Instant::now() < deadline,
            "the hung worker was never removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        let t = api.task(id).await;
        assert_eq!(t["state"], "queued", "{t}");
        assert_eq!(t["attempts"], 0, "{t}");
    }
    // A live worker runs every one of them, first attempt.
    let w = api.register(&[&kind], 50).await;
    let got = api.poll_n(&w, 50, WITHIN).await;
    assert_eq!(got.len(), 50);
    for t in &got {
        assert_eq!(t["attempt"], 1, "{t}");
        api.complete(&id_of(t), &w, json!(null)).await.expect(200);
    }
    let page = api
        .list(&format!("type={kind}&state=succeeded&limit=100"))
        .await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 50);
}

#[tokio::test]
async fn tasks_of_a_worker_that_heartbeats_but_never_polls_go_to_one_that_does() {
    let server = Server::with_args(&["--collect-timeout-ms", "500"]).await;
    let api = server.api();
    let kind = unique_type("idle");
    let idle = api.register(&[&kind], 100).await;
    let ids: Vec<String> = {
        let tasks: Vec<Value> = (0..20).map(|_| json!({"type": kind})).collect();
        api.submit_batch(tasks).await
    };
    api.wait_task(&ids[19], WITHIN, |t| t["worker_id"] == json!(idle))
        .await;
    let busy = api.register(&[&kind], 100).await;
    // The idle worker keeps its lease alive but never collects: after the
    // collection time its tasks go back, and the polling worker gets them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} tasks reached the polling worker",
            got.len(),
            ids.len()
        );
        api.heartbeat(&idle).await.expect(200);
        got.extend(api.poll(&busy, 100, 500).await);
    }
    for t in &got {
        assert_eq!(
            t["attempt"], 1,
            "no attempt was spent on the idle worker: {t}"
        );
    }
    let mut got_ids: Vec<String> = got.iter().map(id_of).collect();
    got_ids.sort_by_key(|id| id.parse::<u64>().unwrap());
    assert_eq!(got_ids, ids);
    // The idle worker is given nothing more until it polls.
    let late = id_of(&api.submit(json!({"type": kind})).await);
    let t = api
        .wait_task(&late, WITHIN, |t| !t["worker_id"].is_null())
        .await;
    assert_eq!(t["worker_id"], json!(busy), "{t}");
}

#[tokio::test]
async fn a_poll_with_max_zero_reports_and_answers_at_once() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("report-only");
    let w = api.register(&[&kind], 2).await;
    let a = id_of(&api.submit(json!({"type": kind})).await);
    let b = id_of(&api.submit(json!({"type": kind})).await);
    assert_eq!(api.poll_n(&w, 2, WITHIN).await.len(), 2);
    let queued = id_of(&api.submit(json!({"type": kind})).await);

    let started = Instant::now();
    let r = api
        .poll_raw(
            &w,
            json!({"max": 0, "wait_ms": 30_000, "results": [
                {"task_id": a, "result": {"ok": true}},
                {"task_id": b, "error": "no"},
            ]}),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a report-only poll held {:?}",
        started.elapsed()
    );
    assert_eq!(r["tasks"], json!([]), "{r}");
    assert_eq!(r["results"][0]["status"], 200, "{r}");
    assert_eq!(r["results"][1]["status"], 200, "{r}");
    assert_eq!(api.task(&a).await["state"], "succeeded");
    assert_ne!(api.task(&b).await["attempts"], 0);
    // The task queued behind them was not collected by that poll.
    assert_ne!(api.task(&queued).await["state"], "running");
}

#[tokio::test]
async fn a_poll_never_waits_while_the_worker_has_no_free_slot() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("full");
    let w = api.register(&[&kind], 1).await;
    let id = id_of(&api.submit(json!({"type": kind})).await);
    assert_eq!(id_of(&api.poll_one(&w, WITHIN).await), id);

    // Its one slot is busy: a long poll answers at once, empty.
    let started = Instant::now();
    let r = api.poll_raw(&w, json!({"max": 1, "wait_ms": 30_000})).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a poll without a free slot held {:?}",
        started.elapsed()
    );
    assert_eq!(r["tasks"], json!([]), "{r}");

    // Reporting on the poll frees the slot: that same poll may wait, and
    // gets the next task.
    let next = id_of(&api.submit(json!({"type": kind})).await);
    let r = api
        .poll_raw(
            &w,
            json!({"max": 1, "wait_ms": 5_000, "results": [{"task_id": id, "result": 1}]}),
        )
        .await;
    let mut got: Vec<String> = r["tasks"].as_array().unwrap().iter().map(id_of).collect();
    if got.is_empty() {
        got = api.poll_n(&w, 1, WITHIN).await.iter().map(id_of).collect();
    }
    assert_eq!(got, vec![next]);
}

#[tokio::test]
async fn a_cancel_reaches_a_worker_that_only_polls_until_it_reports() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("cancel-poll");
    let w = api.register(&[&kind], 2).await;
    let id = id_of(&api.submit(json!({"type": kind})).await);
    assert_eq!(id_of(&api.poll_one(&w, WITHIN).await), id);

    // A waiting poll hears of the cancel at once.
    let waiting = {
        let api = server.api();
        let w = w.clone();
        tokio::spawn(async move { api.poll_raw(&w, json!({"max": 1, "wait_ms": 20_000})).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.post_empty(&format!("/v1/tasks/{id}/cancel"))
        .await
        .expect(200);
    let r = waiting.await.expect("poll task");
    assert_eq!(r["cancel"], json!([id]), "{r}");

    // Repeated in every reply (a lost reply loses nothing)...
    for _ in 0..2 {
        let r = api.poll_raw(&w, json!({"max": 1})).await;
        assert_eq!(r["cancel"], json!([id]), "{r}");
        let h = api.heartbeat(&w).await.expect(200);
        assert_eq!(h["cancel"], json!([id]), "{h}");
    }
    // ...until the worker reports the task (refused: it was cancelled).
    let r = api
        .poll_raw(
            &w,
            json!({"max": 1, "results": [{"task_id": id, "error": "stopped"}]}),
        )
        .await;
    assert_eq!(r["results"][0]["status"], 409, "{r}");
    let r = api.poll_raw(&w, json!({"max": 1})).await;
    assert_eq!(r["cancel"], json!([]), "{r}");
    let h = api.heartbeat(&w).await.expect(200);
    assert_eq!(h["cancel"], json!([]), "{h}");
    assert_eq!(api.task(&id).await["state"], "cancelled");
}

#[tokio::test]
async fn a_grpc_worker_that_grants_no_credit_is_given_nothing() {
    use dispatch_grpc::pb;
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("no-credit");
    let (tx, mut inbound) = grpc_worker(&server, "silent", &kind, 100, None).await;
    let registered = inbound.message().await.expect("read").expect("a message");
    assert!(
        matches!(
            registered.kind,
            Some(pb::scheduler_message::Kind::Registered(_))
        ),
        "{registered:?}"
    );

    // The stream is open and registered, but grants no credit: the tasks
    // wait in the queue for a worker that takes them.
    let tasks: Vec<Value> = (0..10)
        .map(|_| json!({"type": kind, "max_attempts": 1}))
        .collect();
    let ids = api.submit_batch(tasks).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in &ids {
        let t = api.task(id).await;
        assert!(
            t["worker_id"].is_null(),
            "assigned to a worker without credit: {t}"
        );
    }
    let http = api.register(&[&kind], 10).await;
    let got = api.poll_n(&http, 10, WITHIN).await;
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|t| t["attempt"] == 1));
    // A half-close is a graceful leave.
    drop(tx);
    let deadline = Instant::now() + WITHIN;
    while api.workers().await.len() > 1 {
        assert!(Instant::now() < deadline, "the gRPC worker did not leave");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gRPC worker that half-closes its stream while it holds tasks has left
/// gracefully: the tasks go back to the queue at once, the attempt not
/// counted (the next worker runs attempt 1 again).
#[tokio::test]
async fn a_grpc_half_close_requeues_held_tasks_without_counting_the_attempt() {
    use dispatch_grpc::pb;
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("half-close");
    let (tx, mut inbound) = grpc_worker(&server, "leaver", &kind, 2, Some(2)).await;
    let ids = api
        .submit_batch(vec![
            json!({"type": kind, "max_attempts": 1}),
            json!({"type": kind, "max_attempts": 1}),
        ])
        .await;
    // Read until both tasks were pushed.
    let mut pushed = Vec::new();
    let deadline = Instant::now() + WITHIN;
    while pushed.len() < 2 {
        assert!(Instant::now() < deadline, "tasks were not pushed");
        let msg = tokio::time::timeout(WITHIN, inbound.message())
            .await
            .expect("a message in time")
            .expect("read")
            .expect("a message");
        if let Some(pb::scheduler_message::Kind::Tasks(t)) = msg.kind {
            pushed.extend(t.tasks.into_iter().map(|t| t.id));
        }
    }
    for id in &ids {
        let t = api.task(id).await;
        assert_eq!(
            (t["state"].as_str(), t["attempts"].as_u64()),
            (Some("running"), Some(1)),
            "{t}"
        );
    }
    // Half-close: the stream ends gracefully with the tasks in hand.
    drop(tx);
    for id in &ids {
        api.wait_task(id, WITHIN, |t| t["state"] == "queued").await;
        assert_eq!(
            api.task(id).await["attempts"],
            0,
            "the attempt is not counted"
        );
    }
    // max_attempts is 1: had the attempt counted, they would be dead.
    let http = api.register(&[&kind], 10).await;
    let got = api.poll_n(&http, 2, WITHIN).await;
    assert!(got.iter().all(|t| t["attempt"] == 1), "{got:?}");
}

/// Opens a gRPC worker stream on `server`: registers `name` for `kind`
/// with `capacity`, granting `credit` when given. Returns the sending half
/// (dropping it half-closes the stream) and the scheduler's messages.
async fn grpc_worker(
    server: &Server,
    name: &str,
    kind: &str,
    capacity: u32,
    credit: Option<u32>,
) -> (
    tokio::sync::mpsc::Sender<dispatch_grpc::pb::WorkerMessage>,
    tonic::Streaming<dispatch_grpc::pb::SchedulerMessage>,
) {
    use dispatch_grpc::{WorkerServiceClient, pb};
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = WorkerServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WorkerMessage::register(pb::Register {
        name: Some(name.into()),
        types: vec![kind.to_owned()],
        labels: Default::default(),
        capacity,
        weight: None,
    }))
    .await
    .expect("send");
    if let Some(slots) = credit {
        tx.send(pb::WorkerMessage::credit(slots))
            .await
            .expect("send");
    }
    let inbound = grpc
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("connect")
        .into_inner();
    (tx, inbound)
}
