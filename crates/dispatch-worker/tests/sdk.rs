//! The SDK against a real scheduler: an in-process server on a loopback
//! port with a SQLite store in a temporary folder, and a `Worker` speaking
//! the HTTP protocol to it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Running, Scheduler, add};
use dispatch_worker::{TaskContext, TaskError, Worker};
use serde_json::json;

#[tokio::test]
async fn a_handler_result_is_stored_with_the_task() {
    let s = Scheduler::start().await;
    let w = Running::spawn(
        Worker::builder(s.url())
            .name("adder")
            .handle("math.add", add),
    );
    let id = s.submit("math.add", json!({"a": 2, "b": 40}), |_| {}).await;
    let t = s.ended(&id).await;
    assert_eq!(t.state, "succeeded");
    assert_eq!(t.result.unwrap().get(), r#"{"sum":42}"#);
    w.shutdown().await;
}

#[tokio::test]
async fn errors_decide_between_retry_and_dead() {
    let s = Scheduler::start().await;
    let flaky_runs = Arc::new(AtomicUsize::new(0));
    let runs = flaky_runs.clone();
    let w = Running::spawn(
        Worker::builder(s.url())
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
    let w = Running::spawn(Worker::builder(s.url()).handle(
        "slow",
        move |_: TaskContext, _: serde_json::Value| {
            let flag = flag.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                flag.store(true, Ordering::SeqCst);
                Ok(())
            }
        },
    ));
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

#[tokio::test]
async fn cancelling_a_running_task_signals_its_handler() {
    let s = Scheduler::start().await;
    let started = Arc::new(tokio::sync::Notify::new());
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let (st, seen) = (started.clone(), saw_cancel.clone());
    let w = Running::spawn(Worker::builder(s.url()).handle(
        "long",
        move |ctx: TaskContext, _: serde_json::Value| {
            let (st, seen) = (st.clone(), seen.clone());
            async move {
                st.notify_one();
                ctx.cancelled().await;
                seen.store(true, Ordering::SeqCst);
                Ok(())
            }
        },
    ));
    let id = s.submit("long", json!(null), |_| {}).await;
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .unwrap();
    let t = s.client.cancel(&id).await.unwrap();
    assert_eq!(t.state, "cancelled");
    // The next heartbeat (every lease/3 = 300 ms) carries the cancellation.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !saw_cancel.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the handler never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.client.task(&id).await.unwrap().state, "cancelled");
    w.shutdown().await;
}

#[tokio::test]
async fn no_more_than_concurrency_tasks_run_at_once() {
    let s = Scheduler::start().await;
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let w = Running::spawn(Worker::builder(s.url()).concurrency(3).handle(
        "nap",
        move |_: TaskContext, _: serde_json::Value| {
            let (n, p) = (n.clone(), p.clone());
            async move {
                let running = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        },
    ));
    let mut ids = Vec::new();
    for _ in 0..15 {
        ids.push(s.submit("nap", json!(null), |_| {}).await);
    }
    for id in &ids {
        assert_eq!(s.ended(id).await.state, "succeeded");
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3, "ran 3 at once, never more");
    w.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_running_tasks_finish_then_leaves() {
    let s = Scheduler::start().await;
    let started = Arc::new(tokio::sync::Notify::new());
    let st = started.clone();
    let w = Running::spawn(Worker::builder(s.url()).name("leaver").handle(
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
    assert!(
        s.client.workers().await.unwrap().workers.is_empty(),
        "the worker left"
    );
}

#[tokio::test]
async fn the_worker_waits_for_the_scheduler_and_registers_again_after_a_restart() {
    // Reserve an address, start the worker first: it retries until the
    // scheduler is up.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let w = Running::spawn(Worker::builder(format!("http://{addr}")).handle("math.add", add));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scheduler::start_at(addr, dir).await;
    let id = s.submit("math.add", json!({"a": 1, "b": 1}), |_| {}).await;
    assert_eq!(s.ended(&id).await.state, "succeeded");

    // A restart forgets every worker: the next heartbeat or poll gets 404
    // and the worker registers again.
    s.stop().await;
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let s = Scheduler::start_at(addr, dir).await;
    let id = s.submit("math.add", json!({"a": 2, "b": 2}), |_| {}).await;
    let t = s.ended(&id).await;
    assert_eq!(t.state, "succeeded");
    assert_eq!(t.result.unwrap().get(), r#"{"sum":4}"#);
    w.shutdown().await;
}
