//! The SDK over the gRPC streaming protocol against a real scheduler (the
//! harness of `sdk.rs`): the same behaviour as over HTTP (the scenarios of
//! `common/scenarios.rs`), plus what pushing changes: stop notices arrive at
//! once, concurrency is held by credits, a dropped stream gives the tasks
//! back at once.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Running, Scheduler, add, scenarios};
use dispatch_worker::{TaskContext, Transport, Worker, WorkerBuilder, WorkerError};
use serde_json::json;

/// A worker builder on the gRPC transport.
fn grpc(s: &Scheduler) -> WorkerBuilder {
    Worker::builder(s.url()).transport(Transport::Grpc)
}

/// Waits (bounded) until `n` workers are registered.
async fn workers_registered(s: &Scheduler, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.client.workers().await.unwrap().workers.len() != n {
        assert!(Instant::now() < deadline, "{n} workers never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_handler_result_is_stored_with_the_task() {
    scenarios::a_handler_result_is_stored_with_the_task(Transport::Grpc).await;
}

#[tokio::test]
async fn errors_decide_between_retry_and_dead() {
    scenarios::errors_decide_between_retry_and_dead(Transport::Grpc).await;
}

#[tokio::test]
async fn a_task_past_its_timeout_is_stopped_and_fails_with_timeout() {
    scenarios::a_task_past_its_timeout_is_stopped_and_fails_with_timeout(Transport::Grpc).await;
}

#[tokio::test]
async fn a_cancellation_stops_the_handler_at_once() {
    // A 30 s lease: an HTTP worker would hear of the cancellation at its
    // next heartbeat, up to 10 s later. The stream pushes a Stop at once;
    // half of those 10 s leaves room for a loaded machine.
    scenarios::a_cancellation_reaches_the_handler(Transport::Grpc, 30_000, Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn credits_hold_concurrency_and_many_results_drain() {
    scenarios::no_more_than_concurrency_tasks_run_at_once(Transport::Grpc, 200).await;
}

#[tokio::test]
async fn shutdown_lets_running_tasks_finish_then_leaves() {
    scenarios::shutdown_lets_running_tasks_finish_then_leaves(Transport::Grpc).await;
}

#[tokio::test]
async fn a_dropped_worker_gives_its_tasks_back_at_once() {
    // A 30 s lease: only the end of the stream can explain a quick requeue.
    let s = Scheduler::with_lease(30_000).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let st = started.clone();
    let stuck = Running::spawn(grpc(&s).name("stuck").handle(
        "job",
        move |_: TaskContext, _: serde_json::Value| {
            let st = st.clone();
            async move {
                st.notify_one();
                std::future::pending::<()>().await;
                Ok(())
            }
        },
    ));
    let id = s.submit("job", json!(null), |_| {}).await;
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .unwrap();
    let healthy = Running::spawn(
        grpc(&s)
            .name("healthy")
            .handle("job", |_: TaskContext, _: serde_json::Value| async {
                Ok("rescued")
            }),
    );
    workers_registered(&s, 2).await;
    let dropped = Instant::now();
    stuck.kill().await;
    let t = s.ended(&id).await;
    let took = dropped.elapsed();
    assert_eq!(t.state, "succeeded");
    assert_eq!(t.result.unwrap().get(), r#""rescued""#);
    // Far inside the lease, however loaded the machine.
    assert!(took < Duration::from_secs(5), "requeued after {took:?}");
    healthy.shutdown().await;
}

#[tokio::test]
async fn the_scheduler_refuses_an_invalid_registration() {
    let s = Scheduler::start().await;
    let worker = grpc(&s).handle("not a type!", add).build().unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), worker.run(std::future::pending()))
        .await
        .expect("a refusal ends the run");
    match r {
        Err(WorkerError::Refused(why)) => assert!(why.contains("types[0]"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_worker_waits_for_the_scheduler_and_registers_again_after_a_restart() {
    scenarios::the_worker_waits_for_the_scheduler_and_registers_again_after_a_restart(
        Transport::Grpc,
    )
    .await;
}
