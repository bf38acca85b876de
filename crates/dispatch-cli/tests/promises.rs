//! Promises the README makes that no other test covered: a relaxed-mode
//! process crash loses nothing acknowledged, a long poll holds at most half
//! the lease, and concurrent submissions cannot pass `--max-live-tasks`
//! together.
//!
//! Each test starts its own `dispatch server` child process.

mod common;

use std::time::{Duration, Instant};

use common::{Server, unique_type};
use serde_json::{Value, json};

#[tokio::test]
async fn a_relaxed_mode_process_crash_loses_nothing_acknowledged() {
    let server = Server::with_args(&["--durability", "relaxed"]).await;
    let api = server.api();
    let kind = unique_type("relaxed");
    let mut ids = Vec::new();
    for _ in 0..20 {
        let tasks: Vec<Value> = (0..50)
            .map(|i| json!({"type": kind, "payload": i}))
            .collect();
        ids.extend(api.submit_batch(tasks).await);
    }
    // SIGKILL right after the last answer: relaxed mode skips the fsync,
    // not the write, so the operating system still has every batch.
    let server = server.crash_and_restart().await;
    let api = server.api();
    for id in &ids {
        assert_eq!(api.task(id).await["state"], "queued", "task {id}");
    }
}

#[tokio::test]
async fn a_long_poll_holds_at_most_half_the_lease() {
    let lease_ms = 4_000;
    let server = Server::with_lease(lease_ms).await;
    let api = server.api();
    let w = api.register(&[&unique_type("idle")], 1).await;
    let started = Instant::now();
    let got = api.poll(&w, 1, 60_000).await;
    let held = started.elapsed();
    assert!(got.is_empty());
    // It held (nothing came), but answered well before the lease ran out,
    // so polling alone keeps a worker alive.
    assert!(
        held >= Duration::from_millis(lease_ms / 2 - 100),
        "{held:?}"
    );
    assert!(held < Duration::from_millis(lease_ms), "{held:?}");
    api.heartbeat(&w).await.expect(200);
}

#[tokio::test]
async fn concurrent_submissions_cannot_pass_the_live_task_bound_together() {
    let server = Server::with_args(&["--max-live-tasks", "1000"]).await;
    let kind = unique_type("bound");
    // Eight clients send three batches of 100 each at once: 2,400 tasks.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let api = server.api();
        let kind = kind.clone();
        clients.push(tokio::spawn(async move {
            let mut accepted = 0;
            for _ in 0..3 {
                let tasks: Vec<Value> = (0..100).map(|_| json!({"type": kind})).collect();
                let r = api.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
                match r.status {
                    201 => accepted += 100,
                    429 => {}
                    s => panic!("answered {s}: {}", r.text),
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for c in clients {
        accepted += c.await.expect("client");
    }
    let api = server.api();
    let health = api.get("/healthz").await.json();
    assert_eq!(health["live_tasks"], accepted, "{health}");
    assert!(
        accepted <= 1_000,
        "{accepted} accepted past a bound of 1,000"
    );
    assert_eq!(accepted, 1_000, "the bound is reached, not undershot");
}
