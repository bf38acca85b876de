//! The server when its store fails (a full disk, a lost database): writes
//! answer 503 with a problem body, the server stays up and says so in
//! `/healthz` and `/metrics`, nothing refused is stored, the state changes
//! made meanwhile reach the store once it works again, and it recovers by
//! itself; gRPC health says the same. A real server on loopback, over a
//! real SQLite file wrapped in a fault-injecting store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_client::{Client, ClientError};
use dispatch_core::{TaskId, TaskState};
use dispatch_proto::{CompleteTask, PollRequest, RegisterWorker, SubmitTask};
use dispatch_server::ServerConfig;
use dispatch_store::{FaultyStore, Store};
use dispatch_store_sqlite::Durability;
use dispatch_store_sqlite::SqliteStore;
use serde_json::value::to_raw_value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

fn task(kind: &str) -> SubmitTask {
    SubmitTask::new(
        kind,
        to_raw_value(&serde_json::json!({"n": 1})).expect("json"),
    )
}

fn worker() -> RegisterWorker {
    RegisterWorker {
        name: Some("w".into()),
        types: Some(vec!["job".into()]),
        capacity: Some(4),
        ..RegisterWorker::default()
    }
}

async fn poll_one(client: &Client, worker: &str) -> String {
    let req = PollRequest {
        max: Some(1),
        wait_ms: Some(5_000),
        results: None,
        running: None,
        last_handout: None,
    };
    let reply = client.poll(worker, &req).await.expect("poll");
    assert_eq!(reply.tasks.len(), 1, "one task assigned");
    reply.tasks[0].id.clone()
}

fn complete() -> impl Fn(&str) -> CompleteTask {
    |worker| CompleteTask {
        worker_id: Some(worker.to_owned()),
        result: Some(to_raw_value(&serde_json::json!({"ok": true})).expect("json")),
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_unavailable(e: &ClientError) {
    match e {
        ClientError::Api(p) => {
            assert_eq!(p.status, 503, "{p:?}");
            assert!(p.detail.contains("store"), "the problem says why: {p:?}");
        }
        other => panic!("expected a 503 problem, got {other:?}"),
    }
}

/// A server on loopback over a SQLite file in a fresh folder, wrapped in a
/// store whose faults the test turns on and off; and a client of it.
async fn faulty_server() -> (
    tempfile::TempDir,
    dispatch_server::RunningServer,
    Arc<dispatch_store::Faults>,
    Client,
    String,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
    let (faulty, faults) = FaultyStore::new(sqlite);
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = dispatch_server::start(ServerConfig::new(listen, "test store"), Arc::new(faulty))
        .await
        .expect("start");
    // reqwest is built without a default TLS provider here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = format!("http://{}", server.local_addr());
    let client = Client::new(&base).expect("client");
    (dir, server, faults, client, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_answers_503_and_the_server_recovers_by_itself() {
    let (dir, server, faults, client, base) = faulty_server().await;
    let http = reqwest::Client::new();

    let w = client.register(&worker()).await.expect("register").id;
    let (a, _) = client.submit(&task("job")).await.expect("submit");
    assert_eq!(poll_one(&client, &w).await, a.id);

    // The disk fills up.
    faults.fail_writes(true);
    let refused = client.submit(&task("job")).await.expect_err("no store");
    assert_unavailable(&refused);
    let resp = http
        .post(format!("{base}/v1/tasks"))
        .json(&serde_json::json!({"type": "job"}))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "a problem body"
    );
    let batch = client
        .submit_batch(vec![task("job"), task("job")])
        .await
        .expect_err("no store");
    assert_unavailable(&batch);

    // The worker finishes its task: the server cannot confirm it is stored,
    // but keeps the change and stores it later.
    let report = client.complete(&a.id, &complete()(&w)).await;
    assert_unavailable(&report.expect_err("not stored yet"));

    // Still up: health says what is wrong, reads of memory work.
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 503);
    let body: serde_json::Value = health.json().await.expect("json");
    assert_eq!(body["status"], "store_unavailable");
    assert!(
        body["store"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("full"))
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("dispatch_store_failing 1"), "{metrics}");
    assert_eq!(client.workers().await.expect("workers").workers.len(), 1);

    // The disk has room again: the server heals without a restart.
    faults.fail_writes(false);
    eventually("healthz back to 200", || async {
        client.health().await.is_ok()
    })
    .await;
    let a_now = client.task(&a.id).await.expect("task a");
    assert_eq!(a_now.state, "succeeded", "the retained completion landed");
    let (c, created) = client.submit(&task("job")).await.expect("submit again");
    assert!(created);
    assert_eq!(poll_one(&client, &w).await, c.id);
    client
        .complete(&c.id, &complete()(&w))
        .await
        .expect("complete");

    // A store that cannot be read answers 503 too, and heals the same way.
    faults.fail_reads(true);
    let list = client
        .tasks(&dispatch_proto::ListTasks::default())
        .await
        .expect_err("no reads");
    assert_unavailable(&list);
    faults.fail_reads(false);
    let listed = client
        .tasks(&dispatch_proto::ListTasks::default())
        .await
        .expect("reads again");
    let mut ids: Vec<_> = listed.tasks.iter().map(|t| t.id.clone()).collect();
    ids.sort();
    let mut expected = vec![a.id.clone(), c.id.clone()];
    expected.sort();
    assert_eq!(ids, expected, "nothing refused was stored");

    server.shutdown().await;
    // On disk, after a clean stop: both tasks succeeded, nothing else.
    let reopened = SqliteStore::open(dir.path(), Durability::Durable).expect("reopen");
    for id in [&a.id, &c.id] {
        let id = TaskId(id.parse().expect("numeric id"));
        let stored = reopened.get_task(id).expect("read").expect("stored");
        assert_eq!(stored.state, TaskState::Succeeded);
    }
    assert!(reopened.load_live().expect("live").is_empty());
}

/// A poll whose reports cannot be stored answers 503 and hands over
/// nothing: the tasks waiting for the worker stay queued with no attempt
/// spent, and the next poll, once the store works, collects them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_answered_503_takes_no_task() {
    let (_dir, server, faults, client, _) = faulty_server().await;

    let w = client.register(&worker()).await.expect("register").id;
    let (a, _) = client.submit(&task("job")).await.expect("submit");
    assert_eq!(poll_one(&client, &w).await, a.id);
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(client.submit(&task("job")).await.expect("submit").0.id);
    }

    faults.fail_writes(true);
    let req = PollRequest {
        max: Some(4),
        wait_ms: Some(0),
        results: Some(vec![dispatch_proto::ReportResult {
            task_id: a.id.clone(),
            result: Some(to_raw_value(&1).expect("json")),
            ..Default::default()
        }]),
        running: None,
        last_handout: None,
    };
    assert_unavailable(&client.poll(&w, &req).await.expect_err("no store"));
    for id in &waiting {
        let t = client.task(id).await.expect("task");
        assert_eq!((t.state.as_str(), t.attempts), ("queued", 0), "{t:?}");
    }

    faults.fail_writes(false);
    eventually("healthz back to 200", || async {
        client.health().await.is_ok()
    })
    .await;
    let reply = client
        .poll(
            &w,
            &PollRequest {
                max: Some(4),
                wait_ms: Some(5_000),
                results: None,
                running: None,
                last_handout: None,
            },
        )
        .await
        .expect("poll");
    let mut got: Vec<_> = reply.tasks.iter().map(|t| t.id.clone()).collect();
    got.sort();
    waiting.sort();
    assert_eq!(got, waiting);
    assert!(reply.tasks.iter().all(|t| t.attempt == 1));
    server.shutdown().await;
}

/// The gRPC health service of a server on `base`.
async fn grpc_health(
    base: &str,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(base.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
}

/// The status `Check` gives for the whole server.
async fn grpc_status(
    health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
) -> ServingStatus {
    let reply = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("check")
        .into_inner();
    ServingStatus::try_from(reply.status).expect("a known status")
}

/// The next status a `Watch` stream sends.
async fn next_status(watch: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    let reply = tokio::time::timeout(Duration::from_secs(15), watch.message())
        .await
        .expect("a status within 15 s")
        .expect("the stream")
        .expect("a message");
    ServingStatus::try_from(reply.status).expect("a known status")
}

/// gRPC health follows the store like `/healthz`: `NOT_SERVING` while
/// writes fail, for `Check` and on a `Watch` stream opened before, and
/// `SERVING` again once the store heals and the retained completion
/// lands, without a restart or another request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_is_not_serving_while_the_store_fails() {
    let (_dir, server, faults, client, base) = faulty_server().await;
    let mut health = grpc_health(&base).await;
    assert_eq!(grpc_status(&mut health).await, ServingStatus::Serving);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: dispatch_grpc::SERVICE_NAME.to_owned(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);

    let w = client.register(&worker()).await.expect("register").id;
    let (a, _) = client.submit(&task("job")).await.expect("submit");
    assert_eq!(poll_one(&client, &w).await, a.id);

    faults.fail_writes(true);
    let refused = client.submit(&task("job")).await.expect_err("no store");
    assert_unavailable(&refused);
    // A completion the server keeps and retries until the store heals.
    let report = client.complete(&a.id, &complete()(&w)).await;
    assert_unavailable(&report.expect_err("not stored yet"));
    assert_eq!(grpc_status(&mut health).await, ServingStatus::NotServing);
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);

    faults.fail_writes(false);
    assert_eq!(
        next_status(&mut watch).await,
        ServingStatus::Serving,
        "healed by itself"
    );
    assert_eq!(grpc_status(&mut health).await, ServingStatus::Serving);
    server.shutdown().await;
}
