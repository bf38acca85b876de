//! The SDK over the gRPC streaming protocol against a real scheduler (the
//! harness of `sdk.rs`): the same behaviour as over HTTP, plus what pushing
//! changes: stop notices arrive at once, concurrency is held by credits, a
//! dropped stream gives the tasks back at once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Running, Scheduler, add};
use dispatch_worker::{TaskContext, TaskError, Transport, Worker, WorkerBuilder, WorkerError};
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
    let s = Scheduler::start().await;
    let w = Running::spawn(grpc(&s).name("adder").handle("math.add", add));
    let id = s.submit("math.add", json!({"a": 2, "b": 40}), |_| {}).await;
    let t = s.ended(&id).await;
    assert_eq!(t.state, "succeeded");
    assert_eq!(t.result.unwrap().get(), r#"{"sum":42}"#);
    // A gRPC worker is listed like any other.
    let workers = s.client.workers().await.unwrap().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].name, "adder");
    assert_eq!(workers[0].completed, 1);
    w.shutdown().await;
}

#[tokio::test]
async fn errors_decide_between_retry_and_dead() {
    let s = Scheduler::start().await;
    let flaky_runs = Arc::new(AtomicUsize::new(0));
    let runs = flaky_runs.clone();
    let w = Running::spawn(
        grpc(&s)
            .handle("flaky", move |ctx: TaskContext, _: serde_json::Value| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if ctx.attempt < 2 {
                        Err(TaskError::retry_after("not yet", Duration::from_millis(10)))
                    } else {
                        Ok(ctx.attempt)
                    }
                }
            })
            .handle("hopeless", |_: TaskContext, _: serde_json::Value| async {
                Err::<(), _>(TaskError::abort("bad input"))
            })
            .handle("math.add", add),
    );
    let flaky = s.submit("flaky", json!(null), |_| {}).await;
    let hopeless = s.submit("hopeless", json!(null), |_| {}).await;
    let garbled = s.submit("math.add", json!({"a": "two"}), |_| {}).await;

    let t = s.ended(&flaky).await;
    assert_eq!((t.state.as_str(), t.attempts), ("succeeded", 2));
    assert_eq!(t.result.unwrap().get(), "2");
    assert_eq!(flaky_runs.load(Ordering::SeqCst), 2);

    let t = s.ended(&hopeless).await;
    assert_eq!(
        (t.state.as_str(), t.attempts),
        ("dead", 1),
        "abort does not retry"
    );
    assert_eq!(t.error.as_deref(), Some("bad input"));

    let t = s.ended(&garbled).await;
    assert_eq!(t.state, "dead");
    assert!(t.error.unwrap().contains("payload does not decode"));
    w.shutdown().await;
}

#[tokio::test]
async fn a_task_past_its_timeout_is_stopped_and_fails_with_timeout() {
    let s = Scheduler::start().await;
    let finished = Arc::new(AtomicBool::new(false));
    let flag = finished.clone();
    let w = Running::spawn(
        grpc(&s).handle("slow", move |_: TaskContext, _: serde_json::Value| {
            let flag = flag.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                flag.store(true, Ordering::SeqCst);
                Ok(())
            }
        }),
    );
    let id = s
        .submit("slow", json!(null), |t| {
            t.timeout_ms = Some(200);
            t.max_attempts = Some(1);
        })
        .await;
    let t = s.ended(&id).await;
    assert_eq!(t.state, "dead");
    assert_eq!(t.error.as_deref(), Some("timeout"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the handler was dropped, not run to the end"
    );
    w.shutdown().await;
}

/// Notifies when dropped: tells when a handler's future ended, whether it
/// returned after seeing the cancellation or was dropped by the SDK.
struct OnDrop(Arc<tokio::sync::Notify>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

#[tokio::test]
async fn a_cancellation_stops_the_handler_at_once() {
    // A 30 s lease: an HTTP worker would hear of the cancellation at its
    // next heartbeat, up to 10 s later. The stream pushes a Stop at once.
    let s = Scheduler::with_lease(30_000).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let ended = Arc::new(tokio::sync::Notify::new());
    let (st, end) = (started.clone(), ended.clone());
    let w = Running::spawn(grpc(&s).handle(
        "long",
        move |ctx: TaskContext, _: serde_json::Value| {
            let (st, guard) = (st.clone(), OnDrop(end.clone()));
            async move {
                let _guard = guard;
                st.notify_one();
                ctx.cancelled().await;
                Ok(())
            }
        },
    ));
    let id = s.submit("long", json!(null), |_| {}).await;
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the task started");
    let asked = Instant::now();
    let t = s.client.cancel(&id).await.unwrap();
    assert_eq!(t.state, "cancelled");
    tokio::time::timeout(Duration::from_secs(5), ended.notified())
        .await
        .expect("the handler was stopped");
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "the cancellation took {took:?} to reach the handler"
    );
    eprintln!("the cancellation reached the handler in {took:?}");
    assert_eq!(s.client.task(&id).await.unwrap().state, "cancelled");
    w.shutdown().await;
}

#[tokio::test]
async fn credits_hold_concurrency_and_many_results_drain() {
    let s = Scheduler::start().await;
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let w = Running::spawn(
        grpc(&s)
            .concurrency(3)
            .handle("nap", move |_: TaskContext, i: u64| {
                let (n, p) = (n.clone(), p.clone());
                async move {
                    let running = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(running, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(if i < 15 { 30 } else { 0 })).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    Ok(i)
                }
            }),
    );
    let mut ids = Vec::new();
    for i in 0..200u64 {
        ids.push(s.submit("nap", json!(i), |_| {}).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let t = s.ended(id).await;
        assert_eq!(t.state, "succeeded");
        assert_eq!(t.result.unwrap().get(), i.to_string());
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3, "ran 3 at once, never more");
    w.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_running_tasks_finish_then_leaves() {
    let s = Scheduler::start().await;
    let started = Arc::new(tokio::sync::Notify::new());
    let st = started.clone();
    let w = Running::spawn(grpc(&s).name("leaver").handle(
        "job",
        move |_: TaskContext, _: serde_json::Value| {
            let st = st.clone();
            async move {
                st.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok("done")
            }
        },
    ));
    let id = s.submit("job", json!(null), |_| {}).await;
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .unwrap();
    w.shutdown().await;
    let t = s.client.task(&id).await.unwrap();
    assert_eq!(
        t.state, "succeeded",
        "the task in hand finished before the worker left"
    );
    assert_eq!(t.attempts, 1);
    assert!(
        s.client.workers().await.unwrap().workers.is_empty(),
        "the worker left"
    );
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
    assert!(took < Duration::from_secs(1), "requeued after {took:?}");
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
    // Reserve an address, start the worker first: it retries until the
    // scheduler is up.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let w = Running::spawn(
        Worker::builder(format!("http://{addr}"))
            .transport(Transport::Grpc)
            .handle("math.add", add),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scheduler::start_at(addr, dir).await;
    let id = s.submit("math.add", json!({"a": 1, "b": 1}), |_| {}).await;
    assert_eq!(s.ended(&id).await.state, "succeeded");

    // A restart ends the stream; the worker connects and registers again.
    s.stop().await;
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let s = Scheduler::start_at(addr, dir).await;
    let id = s.submit("math.add", json!({"a": 2, "b": 2}), |_| {}).await;
    let t = s.ended(&id).await;
    assert_eq!(t.state, "succeeded");
    assert_eq!(t.result.unwrap().get(), r#"{"sum":4}"#);
    w.shutdown().await;
}
