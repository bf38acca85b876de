//! The scenarios both transports must pass, written once: `sdk.rs` runs
//! each over [`Transport::Http`], `grpc.rs` over [`Transport::Grpc`]. A
//! worker is a worker whatever its transport, so the assertions are the
//! same; where pushing changes what can be promised (how soon a cancellation
//! arrives, how many tasks are worth draining) the caller passes the bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dispatch_worker::{TaskContext, TaskError, Transport, Worker, WorkerBuilder};
use serde_json::json;

use super::{Running, Scheduler, add};

/// A worker builder for the scheduler at `url` on `transport`.
fn builder(url: impl Into<String>, transport: Transport) -> WorkerBuilder {
    Worker::builder(url).transport(transport)
}

/// Notifies when dropped: tells when a handler's future ended, whether it
/// returned after seeing the cancellation or was dropped by the SDK.
struct OnDrop(Arc<tokio::sync::Notify>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// A handler's result is stored with its task, and the worker is listed
/// with its name and its count of completed tasks.
pub(crate) async fn a_handler_result_is_stored_with_the_task(transport: Transport) {
    let s = Scheduler::start().await;
    let w = Running::spawn(
        builder(s.url(), transport)
            .name("adder")
            .handle("math.add", add),
    );
    let id = s.submit("math.add", json!({"a": 2, "b": 40}), |_| {}).await;
    let t = s.ended(&id).await;
    assert_eq!(t.state, "succeeded");
    assert_eq!(t.result.unwrap().get(), r#"{"sum":42}"#);
    // The worker is listed like any other, whatever its transport.
    let workers = s.client.workers().await.unwrap().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].name, "adder");
    assert_eq!(workers[0].completed, 1);
    w.shutdown().await;
}

/// A retryable error retries, an abort goes dead at once, and so does a
/// payload that does not decode.
pub(crate) async fn errors_decide_between_retry_and_dead(transport: Transport) {
    let s = Scheduler::start().await;
    let flaky_runs = Arc::new(AtomicUsize::new(0));
    let runs = flaky_runs.clone();
    let w = Running::spawn(
        builder(s.url(), transport)
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

/// A task past its timeout is dropped, not run to the end, and fails with
/// error `timeout`.
pub(crate) async fn a_task_past_its_timeout_is_stopped_and_fails_with_timeout(
    transport: Transport,
) {
    let s = Scheduler::start().await;
    let finished = Arc::new(AtomicBool::new(false));
    let flag = finished.clone();
    let w = Running::spawn(builder(s.url(), transport).handle(
        "slow",
        move |_: TaskContext, _: serde_json::Value| {
            let flag = flag.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
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
    assert_eq!(
        t.error.as_deref(),
        Some("timeout after 200 ms (the task's timeout_ms)")
    );
    // The handler would set its flag 1 s after it started, and it started
    // before the task ended: 1.5 s after the end, a handler still running
    // would have set it, so the flag tells whether the SDK dropped it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the handler outlived its timeout and ran to the end"
    );
    w.shutdown().await;
}

/// Cancelling a running task on a scheduler with a `lease_ms` lease: the
/// handler sees the cancellation (its `cancelled()` resolves) and its
/// future ends less than `within` after the cancel was asked for.
pub(crate) async fn a_cancellation_reaches_the_handler(
    transport: Transport,
    lease_ms: u64,
    within: Duration,
) {
    let s = Scheduler::with_lease(lease_ms).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let ended = Arc::new(tokio::sync::Notify::new());
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let (st, end, seen) = (started.clone(), ended.clone(), saw_cancel.clone());
    let w = Running::spawn(builder(s.url(), transport).handle(
        "long",
        move |ctx: TaskContext, _: serde_json::Value| {
            let (st, seen, guard) = (st.clone(), seen.clone(), OnDrop(end.clone()));
            async move {
                let _guard = guard;
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
        .expect("the task started");
    let asked = Instant::now();
    let t = s.client.cancel(&id).await.unwrap();
    assert_eq!(t.state, "cancelled");
    tokio::time::timeout(Duration::from_secs(5), ended.notified())
        .await
        .expect("the handler was stopped");
    let took = asked.elapsed();
    assert!(
        took < within,
        "the cancellation took {took:?} to reach the handler (bound {within:?})"
    );
    eprintln!("the cancellation reached the handler in {took:?}");
    assert!(
        saw_cancel.load(Ordering::SeqCst),
        "the handler saw the cancellation"
    );
    assert_eq!(s.client.task(&id).await.unwrap().state, "cancelled");
    w.shutdown().await;
}

/// `tasks` tasks on a worker of concurrency 3: the first three wait for
/// each other, the rest return at once; every result is stored with its task, and no
/// more than 3 ever ran at once (and 3 did).
pub(crate) async fn no_more_than_concurrency_tasks_run_at_once(transport: Transport, tasks: u64) {
    let s = Scheduler::start().await;
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let w = Running::spawn(builder(s.url(), transport).concurrency(3).handle(
        "nap",
        move |_: TaskContext, i: u64| {
            let (n, p) = (n.clone(), p.clone());
            async move {
                let running = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(running, Ordering::SeqCst);
                // The first three (delivered first, in submission order)
                // hold their slots until all three run, however slowly the
                // submissions arrive; the rest pass straight through.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while i < 3
                    && p.load(Ordering::SeqCst) < 3
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                n.fetch_sub(1, Ordering::SeqCst);
                Ok(i)
            }
        },
    ));
    let mut ids = Vec::new();
    for i in 0..tasks {
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

/// A graceful shutdown lets the task in hand finish (in its first attempt)
/// and then leaves the scheduler.
pub(crate) async fn shutdown_lets_running_tasks_finish_then_leaves(transport: Transport) {
    let s = Scheduler::start().await;
    let started = Arc::new(tokio::sync::Notify::new());
    let st = started.clone();
    let w = Running::spawn(builder(s.url(), transport).name("leaver").handle(
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

/// A worker started before its scheduler waits for it, and registers again
/// after the scheduler restarts.
pub(crate) async fn the_worker_waits_for_the_scheduler_and_registers_again_after_a_restart(
    transport: Transport,
) {
    // Reserve an address, start the worker first: it retries until the
    // scheduler is up.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let w = Running::spawn(builder(format!("http://{addr}"), transport).handle("math.add", add));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scheduler::start_at(addr, dir).await;
    let id = s.submit("math.add", json!({"a": 1, "b": 1}), |_| {}).await;
    assert_eq!(s.ended(&id).await.state, "succeeded");

    // A restart forgets every worker. Over HTTP the next heartbeat or poll
    // gets 404; over gRPC the stream ends. Either way the worker connects
    // and registers again.
    s.stop().await;
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let s = Scheduler::start_at(addr, dir).await;
    let id = s.submit("math.add", json!({"a": 2, "b": 2}), |_| {}).await;
    let t = s.ended(&id).await;
    assert_eq!(t.state, "succeeded");
    assert_eq!(t.result.unwrap().get(), r#"{"sum":4}"#);
    w.shutdown().await;
}
