//! A streaming worker cannot run ahead of the disk: while two of its
//! report batches wait for their commit, the server pushes it nothing new,
//! whatever credit it grants; once they are durable, pushing resumes. A
//! real server on loopback over a store whose commits the test holds
//! (`Faults::hold_writes`).

use std::sync::Arc;
use std::time::Duration;

use dispatch_grpc::{WorkerServiceClient, pb};
use dispatch_proto::SubmitTask;
use dispatch_server::ServerConfig;
use dispatch_store::{FaultyStore, MemoryStore};
use serde_json::value::RawValue;

/// Reads scheduler messages until `want` task ids were pushed; returns them.
async fn pushed(inbound: &mut tonic::Streaming<pb::SchedulerMessage>, want: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < want {
        let msg = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .expect("a message in time")
            .expect("read")
            .expect("the stream is open");
        if let Some(pb::scheduler_message::Kind::Tasks(t)) = msg.kind {
            ids.extend(t.tasks.into_iter().map(|t| t.id));
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_pushed_while_two_report_batches_wait_for_the_disk() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), "gated memory store");
    let server = dispatch_server::start(config, Arc::new(store))
        .await
        .expect("start");
    let url = format!("http://{}", server.local_addr());
    let client = dispatch_client::Client::new(&url).expect("client");
    let payload = RawValue::from_string("1".into()).expect("json");
    let tasks = (0..12)
        .map(|_| SubmitTask::new("bp.job", payload.clone()))
        .collect();
    let submitted = client.submit_batch(tasks).await.expect("submit");
    assert_eq!(submitted.len(), 12);

    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = WorkerServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::WorkerMessage::register(pb::Register {
        name: Some("fast".into()),
        types: vec!["bp.job".into()],
        labels: Default::default(),
        capacity: 4,
        weight: None,
    }))
    .await
    .expect("send");
    tx.send(pb::WorkerMessage::credit(4)).await.expect("send");
    let mut inbound = grpc
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("connect")
        .into_inner();
    let first = pushed(&mut inbound, 4).await;

    // The disk stalls; two report batches of two tasks each wait for it.
    faults.hold_writes(true);
    let ok = RawValue::from_string("true".into()).expect("json");
    for pair in first.chunks(2) {
        let reports = pair
            .iter()
            .map(|id| pb::Report::succeeded(id.clone(), &ok))
            .collect();
        tx.send(pb::WorkerMessage::reports(reports))
            .await
            .expect("send");
    }
    // Slots are free and credit is granted: still nothing is pushed.
    tx.send(pb::WorkerMessage::credit(4)).await.expect("send");
    let quiet = tokio::time::timeout(Duration::from_millis(800), async {
        loop {
            match inbound.message().await {
                Ok(Some(pb::SchedulerMessage {
                    kind: Some(pb::scheduler_message::Kind::Tasks(t)),
                })) => return t.tasks.len(),
                Ok(Some(_)) => continue,
                _ => return 0,
            }
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "tasks were pushed while two report batches waited for the disk: {quiet:?}"
    );

    // The disk is back: the batches commit and pushing resumes.
    faults.hold_writes(false);
    let next = pushed(&mut inbound, 4).await;
    assert!(
        next.iter().all(|id| !first.contains(id)),
        "new tasks: {next:?}"
    );
    for id in &first {
        let t = client.task(id).await.expect("get");
        assert_eq!(t.state, "succeeded", "task {id}");
    }
    drop(tx);
    server.shutdown().await;
}
