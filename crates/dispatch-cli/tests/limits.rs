//! Bounds on what a client can make the server hold: worker registrations
//! (types, labels, label size, workers in total) and list pages in bytes.

mod common;

use std::collections::BTreeMap;

use common::Server;
use serde_json::{Value, json};

#[tokio::test]
async fn a_registration_beyond_the_bounds_is_refused_naming_the_field() {
    let server = Server::start().await;
    let api = server.api();
    let types: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    api.post("/v1/workers", json!({"types": types}))
        .await
        .problem(422, Some("types"));
    let types: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    api.post("/v1/workers", json!({"types": types}))
        .await
        .expect(201);

    let labels: BTreeMap<String, String> =
        (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    api.post("/v1/workers", json!({"types": ["t"], "labels": labels}))
        .await
        .problem(422, Some("labels"));
    let long = "x".repeat(257);
    api.post(
        "/v1/workers",
        json!({"types": ["t"], "labels": {"zone": long}}),
    )
    .await
    .problem(422, Some("labels.zone"));
    // A too long name is shortened in the field, never echoed whole.
    let p = api
        .post(
            "/v1/workers",
            json!({"types": ["t"], "labels": {long.clone(): "v"}}),
        )
        .await
        .problem(422, None);
    assert!(p["field"].as_str().unwrap().len() < 100, "{p}");
    let ok = "x".repeat(256);
    api.post(
        "/v1/workers",
        json!({"types": ["t"], "labels": {"zone": ok}}),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn the_registration_bounds_are_flags() {
    let server = Server::with_args(&[
        "--max-worker-types",
        "2",
        "--max-worker-labels",
        "1",
        "--max-label-bytes",
        "8",
        "--max-workers",
        "2",
    ])
    .await;
    let api = server.api();
    let p = api
        .post("/v1/workers", json!({"types": ["a", "b", "c"]}))
        .await
        .problem(422, Some("types"));
    assert!(
        p["detail"].as_str().unwrap().contains("--max-worker-types"),
        "{p}"
    );
    api.post(
        "/v1/workers",
        json!({"types": ["a"], "labels": {"a": "1", "b": "2"}}),
    )
    .await
    .problem(422, Some("labels"));
    api.post(
        "/v1/workers",
        json!({"types": ["a"], "labels": {"a": "123456789"}}),
    )
    .await
    .problem(422, Some("labels.a"));
    let first = api
        .post(
            "/v1/workers",
            json!({"types": ["a", "b"], "labels": {"a": "12345678"}}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.post("/v1/workers", json!({"types": ["a"]}))
        .await
        .expect(201);
    // The third is one too many: 429, until one leaves.
    let r = api.post("/v1/workers", json!({"types": ["a"]})).await;
    let p = r.problem(429, None);
    assert!(
        p["detail"].as_str().unwrap().contains("--max-workers"),
        "{p}"
    );
    api.delete(&format!("/v1/workers/{first}"))
        .await
        .expect(204);
    api.post("/v1/workers", json!({"types": ["a"]}))
        .await
        .expect(201);
}

#[tokio::test]
async fn a_task_page_stops_at_its_byte_budget_and_continues_by_cursor() {
    let server = Server::with_args(&["--max-list-mb", "1"]).await;
    let api = server.api();
    // Seven tasks of 300 KB: three fit in a 1 MiB page.
    let big = "p".repeat(300_000);
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(api.submit_id("t", json!({"i": i, "pad": big})).await);
    }
    // And one larger than the whole budget: a page holds it alone.
    let huge = "h".repeat(1_500_000);
    ids.push(api.submit_id("t", json!({"pad": huge})).await);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=1000&cursor={c}"),
            None => "limit=1000".to_owned(),
        };
        let page = api.list(&query).await;
        let tasks = page["tasks"].as_array().unwrap();
        assert!(!tasks.is_empty(), "{query}: an empty page");
        let bytes: usize = tasks.iter().map(|t| t["payload"].to_string().len()).sum();
        assert!(
            tasks.len() == 1 || bytes <= 1 << 20,
            "{query}: {} tasks, {bytes} bytes",
            tasks.len()
        );
        pages.push(tasks.len());
        seen.extend(tasks.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages.len() < 20, "pages never end: {pages:?}");
    }
    // Newest first: the large one alone, then threes and the last one.
    assert_eq!(pages, vec![1, 3, 3, 1], "{pages:?}");
    ids.reverse();
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn small_tasks_fill_a_page_to_its_limit() {
    let server = Server::start().await;
    let api = server.api();
    for i in 0..30 {
        api.submit_id("t", json!({"i": i})).await;
    }
    let page = api.list("limit=25").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 25);
    let cursor = page["next_cursor"].as_str().expect("a cursor").to_owned();
    let rest: Value = api.list(&format!("limit=25&cursor={cursor}")).await;
    assert_eq!(rest["tasks"].as_array().unwrap().len(), 5);
    assert!(rest["next_cursor"].is_null(), "{rest}");
}

/// Opens a gRPC session that registers with `types` and stays open; the
/// first answer, or the status refusing it.
async fn grpc_register(
    url: &str,
    types: Vec<String>,
) -> (
    Result<dispatch_grpc::pb::SchedulerMessage, tonic::Status>,
    tokio::sync::mpsc::Sender<dispatch_grpc::pb::WorkerMessage>,
) {
    use dispatch_grpc::WorkerServiceClient;
    use dispatch_grpc::pb;
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = WorkerServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WorkerMessage::register(pb::Register {
        name: Some("g".into()),
        types,
        labels: Default::default(),
        capacity: 1,
        weight: None,
    }))
    .await
    .unwrap();
    let answer = match client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(resp) => resp
            .into_inner()
            .message()
            .await
            .map(|m| m.expect("a first message")),
        Err(status) => Err(status),
    };
    (answer, tx)
}

#[tokio::test]
async fn grpc_registrations_have_the_same_bounds() {
    let server = Server::with_args(&["--max-worker-types", "2", "--max-workers", "1"]).await;
    let three = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
    let (answer, _) = grpc_register(&server.url, three).await;
    let status = answer.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("types"), "{status:?}");
    let (answer, _open) = grpc_register(&server.url, vec!["a".to_owned()]).await;
    answer.expect("the first registers");
    let (answer, _) = grpc_register(&server.url, vec!["a".to_owned()]).await;
    let status = answer.expect_err("one too many");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-workers"), "{status:?}");
    // HTTP counts the same workers.
    server
        .api()
        .post("/v1/workers", json!({"types": ["a"]}))
        .await
        .problem(429, None);
}
