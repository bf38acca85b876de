//! The SDK against a scheduler that requires tokens: a worker with a `work`
//! token runs tasks over HTTP and over gRPC; one with a wrong or missing
//! token is refused outright.

use std::time::Duration;

use dispatch_client::Client;
use dispatch_proto::SubmitTask;
use dispatch_server::{Scope, Tokens, auth};
use dispatch_worker::{TaskContext, TaskError, Transport, Worker, WorkerError};
use serde_json::json;

struct Secured {
    server: dispatch_server::RunningServer,
    _dir: tempfile::TempDir,
    url: String,
    submit: String,
    work: String,
}

async fn secured() -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let submit = auth::generate_token().unwrap();
    let work = auth::generate_token().unwrap();
    let file = format!(
        "{}\n{}\n",
        auth::token_line(&submit, &[Scope::Submit], Some("client")),
        auth::token_line(&work, &[Scope::Work], Some("worker")),
    );
    let mut config = dispatch_server::ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().display().to_string(),
    );
    config.lease_ms = 900;
    config.tokens = Some(Tokens::parse(&file).unwrap());
    let store = dispatch_store_sqlite::SqliteStore::open(
        dir.path(),
        dispatch_store_sqlite::Durability::Durable,
    )
    .unwrap();
    let server = dispatch_server::start(config, std::sync::Arc::new(store))
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    Secured {
        server,
        _dir: dir,
        url,
        submit,
        work,
    }
}

async fn add(_ctx: TaskContext, p: serde_json::Value) -> Result<serde_json::Value, TaskError> {
    Ok(json!({ "sum": p["a"].as_i64().unwrap_or(0) + p["b"].as_i64().unwrap_or(0) }))
}

async fn runs_a_task_with_a_token(transport: Transport) {
    let s = secured().await;
    let client = Client::new(&s.url).unwrap().with_token(s.submit.clone());
    let worker = Worker::builder(s.url.clone())
        .transport(transport)
        .token(s.work.clone())
        .poll_wait(Duration::from_millis(300))
        .handle("math.add", add)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let payload = serde_json::value::to_raw_value(&json!({"a": 2, "b": 3})).unwrap();
    let (task, _) = client
        .submit(&SubmitTask::new("math.add", payload))
        .await
        .unwrap();
    let done = client
        .wait(&task.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(
        done.result
            .map(|r| serde_json::from_str::<serde_json::Value>(r.get()).unwrap()),
        Some(json!({"sum": 5}))
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
    s.server.shutdown().await;
}

async fn is_refused(transport: Transport, token: Option<&str>) {
    let s = secured().await;
    let mut builder = Worker::builder(s.url.clone())
        .transport(transport)
        .handle("math.add", add);
    if let Some(t) = token {
        builder = builder.token(t);
    }
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        builder.build().unwrap().run(std::future::pending()),
    )
    .await
    .expect("a refused worker returns at once");
    assert!(
        matches!(outcome, Err(WorkerError::Refused(_))),
        "{transport:?} with {token:?}: {outcome:?}"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn an_http_worker_with_a_work_token_runs_tasks() {
    runs_a_task_with_a_token(Transport::Http).await;
}

#[tokio::test]
async fn a_grpc_worker_with_a_work_token_runs_tasks() {
    runs_a_task_with_a_token(Transport::Grpc).await;
}

#[tokio::test]
async fn workers_without_a_token_or_with_a_bad_one_are_refused() {
    for transport in [Transport::Http, Transport::Grpc] {
        is_refused(transport, None).await;
        is_refused(transport, Some("dsp_not_a_token")).await;
    }
}

#[tokio::test]
async fn a_worker_with_a_submit_token_is_refused_for_scope() {
    for transport in [Transport::Http, Transport::Grpc] {
        let s = secured().await;
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            Worker::builder(s.url.clone())
                .transport(transport)
                .token(s.submit.clone())
                .handle("math.add", add)
                .build()
                .unwrap()
                .run(std::future::pending()),
        )
        .await
        .expect("a refused worker returns at once");
        match outcome {
            Err(WorkerError::Refused(m)) => assert!(m.contains("work"), "{transport:?}: {m}"),
            other => panic!("{transport:?}: {other:?}"),
        }
        s.server.shutdown().await;
    }
}
