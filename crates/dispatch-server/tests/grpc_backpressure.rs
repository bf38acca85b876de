//! A streaming worker cannot run ahead of the disk: while sixteen of its
//! report batches wait for their commit, the server pushes it nothing new,
//! whatever credit it grants; once they are durable, pushing resumes. With
//! fewer waiting, the syncs are pipelined: its next tasks are pushed. A
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

/// Report batches of one session that may wait for the disk (the server's
/// `MAX_UNACKED`).
const WAITING: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_pushed_while_sixteen_report_batches_wait_for_the_disk() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), "gated memory store");
    let server = dispatch_server::start(config, Arc::new(store))
        .await
        .expect("start");
    let url = format!("http://{}", server.local_addr());
    let client = dispatch_client::Client::new(&url).expect("client");
    let payload = RawValue::from_string("1".into()).expect("json");
    let tasks = (0..3 * WAITING)
        .map(|_| SubmitTask::new("bp.job", payload.clone()))
        .collect();
    let submitted = client.submit_batch(tasks).await.expect("submit");
    assert_eq!(submitted.len(), 3 * WAITING);

    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = WorkerServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4 * WAITING);
    tx.send(pb::WorkerMessage::register(pb::Register {
        name: Some("fast".into()),
        types: vec!["bp.job".into()],
        labels: Default::default(),
        capacity: WAITING as u32,
        weight: None,
    }))
    .await
    .expect("send");
    tx.send(pb::WorkerMessage::credit(WAITING as u32))
        .await
        .expect("send");
    let mut inbound = grpc
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("connect")
        .into_inner();
    let first = pushed(&mut inbound, WAITING).await;

    // The disk stalls. One report batch per task, each freeing its slot:
    // while fewer than sixteen wait, the next tasks are pushed regardless.
    faults.hold_writes(true);
    let ok = RawValue::from_string("true".into()).expect("json");
    let report =
        |id: &String| pb::WorkerMessage::reports(vec![pb::Report::succeeded(id.clone(), &ok)]);
    for id in &first[..WAITING - 1] {
        tx.send(report(id)).await.expect("send");
    }
    tx.send(pb::WorkerMessage::credit(WAITING as u32 - 1))
        .await
        .expect("send");
    let meanwhile = pushed(&mut inbound, WAITING - 1).await;
    assert!(meanwhile.iter().all(|id| !first.contains(id)));

    // The sixteenth waits too: slots are free and credit is granted, yet
    // nothing is pushed.
    tx.send(report(&first[WAITING - 1])).await.expect("send");
    tx.send(pb::WorkerMessage::credit(1)).await.expect("send");
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
        "tasks were pushed while sixteen report batches waited for the disk: {quiet:?}"
    );

    // The disk is back: the batches commit and pushing resumes.
    faults.hold_writes(false);
    let next = pushed(&mut inbound, 1).await;
    assert!(
        next.iter()
            .all(|id| !first.contains(id) && !meanwhile.contains(id)),
        "new tasks: {next:?}"
    );
    for id in &first {
        let t = client.task(id).await.expect("get");
        assert_eq!(t.state, "succeeded", "task {id}");
    }
    drop(tx);
    server.shutdown().await;
}
