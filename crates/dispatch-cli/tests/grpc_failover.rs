//! Failover over the streaming protocol, with real processes: two worker
//! processes on gRPC, one killed with SIGKILL while it holds tasks, and the
//! other receives them long before the lease (10 s) would have run out.
//! The broken stream is what tells the scheduler.
//!
//! The worker processes are this test binary run again, on this same test
//! (`--exact`), with `DISPATCH_TEST_GRPC_WORKER=<url>` set: the test then
//! runs an SDK worker instead of the scenario. So nothing but `cargo test`
//! builds them, no hidden command is added to `dispatch`, and no test that
//! checks nothing is counted as a pass: in a normal run the one test here
//! is the scenario.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, POLL_EVERY, Server};
use dispatch_worker::{TaskContext, Transport, Worker};
use serde_json::{Value, json};

/// Set in a child process: the scheduler's URL.
const WORKER_URL: &str = "DISPATCH_TEST_GRPC_WORKER";
/// Set in a child process: the worker's name.
const WORKER_NAME: &str = "DISPATCH_TEST_GRPC_WORKER_NAME";

/// The test's own name: a child runs the test binary with it and `--exact`.
const TEST_NAME: &str = "a_killed_grpc_worker_s_tasks_reach_the_other_long_before_the_lease";

/// The body of a worker process (see the module header).
fn run_worker_process(url: String) {
    let name = std::env::var(WORKER_NAME).unwrap_or_else(|_| "child".to_owned());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        Worker::builder(url)
            .transport(Transport::Grpc)
            .name(name)
            .concurrency(2)
            // Holds its task until cancelled (or a minute passes).
            .handle("hold", |ctx: TaskContext, _: Value| async move {
                tokio::select! {
                    _ = ctx.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
                Ok(json!({ "held": ctx.id }))
            })
            .build()
            .expect("worker config")
            .run(std::future::pending())
            .await
            .expect("the worker runs");
    });
}

/// A worker process; SIGKILLed and reaped when dropped.
struct WorkerProcess(Child);

impl WorkerProcess {
    fn spawn(url: &str, name: &str) -> WorkerProcess {
        let exe = std::env::current_exe().expect("the test binary's path");
        let child = Command::new(exe)
            .args([TEST_NAME, "--exact", "--nocapture"])
            .env(WORKER_URL, url)
            .env(WORKER_NAME, name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a worker process");
        WorkerProcess(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (bounded) for a worker named `name`; returns its id.
async fn worker_id(api: &Api, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = api
            .workers()
            .await
            .into_iter()
            .find(|w| w["name"] == json!(name));
        if let Some(w) = found {
            return w["id"].as_str().expect("worker id").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "worker {name} did not register within 20 s"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn held_by(t: &Value, worker: &str) -> bool {
    t["state"] == json!("running") && t["worker_id"] == json!(worker)
}

/// The scenario in a normal run; the worker in a child (module header).
#[test]
fn a_killed_grpc_worker_s_tasks_reach_the_other_long_before_the_lease() {
    if let Ok(url) = std::env::var(WORKER_URL) {
        return run_worker_process(url);
    }
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(failover_scenario());
}

async fn failover_scenario() {
    let server = Server::start().await;
    let api = server.api();
    let mut a = WorkerProcess::spawn(&server.url, "worker-a");
    let a_id = worker_id(&api, "worker-a").await;

    // Only A is there: it takes both tasks.
    let tasks = [
        api.submit_id("hold", json!({"n": 1})).await,
        api.submit_id("hold", json!({"n": 2})).await,
    ];
    for id in &tasks {
        api.wait_task(id, Duration::from_secs(10), |t| held_by(t, &a_id))
            .await;
    }
    let b = WorkerProcess::spawn(&server.url, "worker-b");
    let b_id = worker_id(&api, "worker-b").await;

    a.kill();
    let killed = Instant::now();
    for id in &tasks {
        let t = api
            .wait_task(id, Duration::from_secs(5), |t| held_by(t, &b_id))
            .await;
        assert_eq!(t["attempts"], json!(2), "the lost attempt counts: {t}");
    }
    let took = killed.elapsed();
    eprintln!("worker B held both tasks {took:?} after worker A was killed");
    // The lease is 10 s: well under it, the broken stream (not the lease
    // running out) moved them; the margin keeps a loaded machine green.
    assert!(
        took < Duration::from_secs(5),
        "the tasks reached worker B only {took:?} after A was killed"
    );
    let names: Vec<Value> = api
        .workers()
        .await
        .iter()
        .map(|w| w["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("worker-b")], "A was removed at once");
    drop(b);
}
