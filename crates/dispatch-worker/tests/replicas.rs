//! A gRPC worker given several replicas: it passes over a URL it cannot
//! reach, follows a standby's refusal (`UNAVAILABLE` with the leader's URL
//! in the `dispatch-leader` metadata) to the leader, and runs tasks there.
//! The standby is a stand-in that answers every stream the way a standby
//! replica does (`dispatch-server`'s `cluster.rs`); the leader is a real
//! in-process scheduler.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use common::{Running, Scheduler, add};
use dispatch_worker::{Transport, Worker};
use serde_json::json;

/// A stand-in standby on a loopback port: every gRPC call is refused
/// `UNAVAILABLE`, naming `leader`. Returns its URL and how many calls it
/// refused.
async fn standby(leader: String) -> (String, Arc<AtomicU64>) {
    let refused = Arc::new(AtomicU64::new(0));
    let count = refused.clone();
    let app = axum::Router::new().fallback(move || {
        let leader = leader.clone();
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            // A trailers-only response, as a standby sends it.
            let mut resp = axum::http::StatusCode::OK.into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from_static("14"));
            h.insert(
                "grpc-message",
                HeaderValue::from_static("this replica does not lead"),
            );
            h.insert("dispatch-leader", HeaderValue::from_str(&leader).unwrap());
            resp
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, refused)
}

/// A loopback URL nothing listens on (a port that was free a moment ago).
fn unreachable() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[tokio::test]
async fn a_grpc_worker_given_a_standby_first_follows_it_to_the_leader() {
    let leader = Scheduler::start().await;
    let (standby, refused) = standby(leader.url()).await;
    // The standby first, then a URL nothing answers: the leader itself is
    // not in the list, so only the standby's metadata can lead there.
    let servers = format!("{standby},{}", unreachable());
    let worker = Running::spawn(
        Worker::builder(servers)
            .transport(Transport::Grpc)
            .name("follower")
            .handle("math.add", add),
    );
    let id = leader
        .submit("math.add", json!({ "a": 2, "b": 3 }), |_| {})
        .await;
    let t = leader.ended(&id).await;
    assert_eq!(t.state, "succeeded");
    assert_eq!(t.result.unwrap().get(), r#"{"sum":5}"#);
    let workers = leader.client.workers().await.unwrap().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].name, "follower");
    assert!(
        refused.load(Ordering::Relaxed) >= 1,
        "the standby was asked"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_grpc_worker_passes_over_a_replica_it_cannot_reach() {
    let leader = Scheduler::start().await;
    let servers = format!("{},{}", unreachable(), leader.url());
    let worker = Running::spawn(
        Worker::builder(servers)
            .transport(Transport::Grpc)
            .handle("math.add", add),
    );
    let id = leader
        .submit("math.add", json!({ "a": 20, "b": 22 }), |_| {})
        .await;
    let t = leader.ended(&id).await;
    assert_eq!(t.state, "succeeded");
    assert_eq!(t.result.unwrap().get(), r#"{"sum":42}"#);
    worker.shutdown().await;
}
