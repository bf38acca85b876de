//! The worker's run loop: register, fetch, execute, report, heartbeat.
//!
//! One session lasts from a registration to a lost lease or a shutdown.
//! Within it three things run at once: the fetch loop (long-polls for as
//! many tasks as there are free slots), one tokio task per running task
//! (which reports its own result), and the heartbeat loop (renews the lease
//! and relays cancellations).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatch_client::{Client, ClientError};
use dispatch_proto::{CompleteTask, FailTask, PollRequest, PolledTask, RegisterWorker};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::handler::{BoxedHandler, TaskContext, TaskError};
use crate::{Worker, WorkerError};

/// Grows a retry delay from 100 ms to 5 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    pub(crate) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d
    }
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    LeaseLost,
}

/// What a session holds: the cancel switches of its running tasks (each
/// until its report is acknowledged), and the `handout` of the last poll
/// answer whose tasks are all among them. Both are read under one lock, so
/// the scheduler is never told of an answer whose tasks are not named.
#[derive(Default)]
struct Held {
    tasks: HashMap<String, watch::Sender<bool>>,
    last_handout: Option<String>,
}

impl Held {
    /// The `running` and `last_handout` of a poll or heartbeat.
    fn named(&self) -> (Vec<String>, Option<String>) {
        (
            self.tasks.keys().cloned().collect(),
            self.last_handout.clone(),
        )
    }
}

type Running = Arc<Mutex<Held>>;

fn lock(running: &Running) -> std::sync::MutexGuard<'_, Held> {
    running.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_lease_lost(e: &ClientError) -> bool {
    e.status() == Some(404)
}

pub(crate) async fn run(w: Worker, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Backoff::new();
    let registration = RegisterWorker {
        name: Some(w.name.clone()),
        types: Some(w.types()),
        labels: Some(w.labels.clone()),
        capacity: Some(w.concurrency as i64),
        weight: None,
    };
    loop {
        let reply = tokio::select! {
            r = w.client.register(&registration) => r,
            _ = shutdown.as_mut() => return Ok(()),
        };
        let reply = match reply {
            Ok(r) => r,
            Err(ClientError::Api(p)) if p.status < 500 && p.status != 429 => {
                return Err(WorkerError::Refused(p.detail));
            }
            Err(e) => {
                let delay = backoff.next();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot register; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.as_mut() => return Ok(()),
                }
            }
        };
        backoff = Backoff::new();
        tracing::info!(worker = %reply.id, types = ?w.types(), "registered");
        let heartbeat = Duration::from_millis(reply.heartbeat_ms.max(1));
        match session(&w, &reply.id, heartbeat, shutdown.as_mut()).await {
            SessionEnd::Shutdown => {
                if let Err(e) = w.client.leave(&reply.id).await {
                    tracing::warn!(error = %e, "could not leave cleanly; the lease will expire");
                }
                tracing::info!(worker = %reply.id, "left");
                return Ok(());
            }
            SessionEnd::LeaseLost => {
                tracing::warn!(worker = %reply.id, "lease lost; registering again");
            }
        }
    }
}

/// Runs one registration until shutdown or a lost lease; on either, stops
/// fetching and waits for (or stops) the tasks in hand.
async fn session(
    w: &Worker,
    id: &str,
    heartbeat: Duration,
    shutdown: Pin<&mut impl Future<Output = ()>>,
) -> SessionEnd {
    let slots = Arc::new(Semaphore::new(w.concurrency));
    let running: Running = Arc::default();
    let (lost_tx, mut lost) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let beat = tokio::spawn(heartbeat_loop(
        w.client.clone(),
        id.to_owned(),
        heartbeat,
        running.clone(),
        lost_tx.clone(),
    ));
    let end = {
        let fetch = fetch_loop(w, id, &slots, &running, &lost_tx, &mut tasks);
        tokio::select! {
            _ = fetch => SessionEnd::LeaseLost,
            _ = lost.wait_for(|l| *l) => SessionEnd::LeaseLost,
            _ = shutdown => SessionEnd::Shutdown,
        }
    };
    if matches!(end, SessionEnd::LeaseLost) {
        // The scheduler requeued what we held: stop it.
        for cancel in lock(&running).tasks.values() {
            let _ = cancel.send(true);
        }
    }
    // Drain: every running task finishes (or stops) and reports. A poll cut
    // short above may have had tasks assigned: leaving requeues them.
    while tasks.join_next().await.is_some() {}
    beat.abort();
    end
}

/// Long-polls for as many tasks as there are free slots and starts each.
async fn fetch_loop(
    w: &Worker,
    id: &str,
    slots: &Arc<Semaphore>,
    running: &Running,
    lost: &watch::Sender<bool>,
    tasks: &mut JoinSet<()>,
) {
    let mut backoff = Backoff::new();
    loop {
        // Wait for a free slot, then ask for as many tasks as are free. Only
        // this loop takes slots, so they are still free when tasks arrive.
        let Ok(first) = slots.acquire().await else {
            return;
        };
        let free = 1 + slots.available_permits();
        drop(first);
        let (held, last_handout) = lock(running).named();
        let req = PollRequest {
            max: Some(free as i64),
            wait_ms: Some(w.poll_wait.as_millis() as i64),
            results: None,
            running: Some(held),
            last_handout,
        };
        let reply = match w.client.poll(id, &req).await {
            Ok(r) => {
                backoff = Backoff::new();
                r
            }
            Err(e) if is_lease_lost(&e) => {
                let _ = lost.send(true);
                return;
            }
            Err(e) => {
                let delay = backoff.next();
                tracing::warn!(error = %e, retry_in = ?delay, "poll failed; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        for task in reply.tasks {
            let Some(handler) = w.handlers.get(&task.kind).cloned() else {
                tracing::error!(task = %task.id, kind = %task.kind, "got a type without a handler");
                continue;
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (cancel_tx, cancel_rx) = watch::channel(false);
            lock(running).tasks.insert(task.id.clone(), cancel_tx);
            let client = w.client.clone();
            let worker_id = id.to_owned();
            let running = running.clone();
            tasks.spawn(async move {
                let task_id = task.id.clone();
                let mine = cancel_rx.clone();
                execute(client, worker_id, handler, task, cancel_rx).await;
                // A retry of this task may already run here under the same
                // id: only this attempt's switch is removed.
                let mut running = lock(&running);
                if running
                    .tasks
                    .get(&task_id)
                    .is_some_and(|tx| tx.subscribe().same_channel(&mine))
                {
                    running.tasks.remove(&task_id);
                }
                drop(permit);
            });
        }
        // Every task of this answer is named from now on: it may be told.
        if let Some(handout) = reply.handout {
            lock(running).last_handout = Some(handout);
        }
    }
}

/// Runs one attempt with its timeout and cancellation, then reports it.
async fn execute(
    client: Client,
    worker_id: String,
    handler: BoxedHandler,
    task: PolledTask,
    cancel: watch::Receiver<bool>,
) {
    if let Some(outcome) = attempt(handler, &task, cancel.clone()).await {
        report(&client, &worker_id, &task.id, outcome, cancel).await;
    }
}

/// How long a report is retried while the scheduler cannot be reached (a
/// takeover between replicas, a restart): the task stays this worker's
/// meanwhile, named in its heartbeats, so giving up early would leave it
/// running on the scheduler's books with nobody to finish it.
const REPORT_RETRY_FOR: Duration = Duration::from_secs(120);

/// Runs one attempt with its timeout and cancellation; `None` when the
/// scheduler stopped it (nothing to report). Shared by both transports.
pub(crate) async fn attempt(
    handler: BoxedHandler,
    task: &PolledTask,
    cancel: watch::Receiver<bool>,
) -> Option<Result<Box<RawValue>, TaskError>> {
    let timeout = task.timeout_ms.map(Duration::from_millis);
    let ctx = TaskContext {
        id: task.id.clone(),
        kind: task.kind.clone(),
        queue: task.queue.clone(),
        attempt: task.attempt,
        max_attempts: task.max_attempts,
        timeout,
        cancel: cancel.clone(),
    };
    let work = handler(ctx, &task.payload);
    let mut cancelled = cancel;
    let outcome = tokio::select! {
        // The handler first: one that selects on `cancelled()` is woken by
        // the same signal and gets to finish its clean-up.
        biased;
        r = work => Some(r),
        _ = sleep_or_forever(timeout) => Some(Err(TaskError::retry(format_args!(
            "timeout after {} ms (the task's timeout_ms)",
            timeout.unwrap_or_default().as_millis()
        )))),
        // The scheduler already ended this attempt: nothing to report.
        _ = cancelled.wait_for(|c| *c) => None,
    };
    if outcome.is_none() {
        tracing::info!(task = %task.id, "stopped: the scheduler cancelled or took back the task");
    }
    outcome
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Reports an outcome, retrying network errors and 5xx answers for up to
/// [`REPORT_RETRY_FOR`], or until the scheduler takes the task back (its
/// `cancel` switch, flipped when the worker's lease is lost). A 409 means
/// the scheduler took the task back (lease lost, cancelled, timed out).
async fn report(
    client: &Client,
    worker_id: &str,
    task_id: &str,
    outcome: Result<Box<RawValue>, TaskError>,
    cancel: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    let give_up = tokio::time::Instant::now() + REPORT_RETRY_FOR;
    while tokio::time::Instant::now() < give_up && !*cancel.borrow() {
        let sent = match &outcome {
            Ok(result) => {
                let req = CompleteTask {
                    worker_id: Some(worker_id.to_owned()),
                    result: Some(result.clone()),
                };
                client.complete(task_id, &req).await
            }
            Err(e) => {
                let req = FailTask {
                    worker_id: Some(worker_id.to_owned()),
                    error: Some(serde_json::Value::String(e.message.clone())),
                    retry_after_ms: e.retry_after.map(|d| d.as_millis() as i64),
                    abort: Some(e.abort),
                };
                client.fail(task_id, &req).await
            }
        };
        match sent {
            Ok(()) => return,
            Err(ClientError::Api(p)) if p.status == 409 => {
                tracing::info!(task = %task_id, "report refused: the scheduler took the task back");
                return;
            }
            Err(ClientError::Api(p)) if p.status < 500 => {
                tracing::error!(task = %task_id, problem = %p, "report refused");
                return;
            }
            Err(e) => {
                let delay = backoff.next();
                tracing::warn!(task = %task_id, error = %e, "report failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
    tracing::error!(task = %task_id, "gave up reporting; the lease will return the task");
}

/// Renews the lease and relays cancellations until the session ends.
async fn heartbeat_loop(
    client: Client,
    id: String,
    every: Duration,
    running: Running,
    lost: watch::Sender<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (held, last_handout) = lock(&running).named();
        match client.heartbeat_running(&id, held, last_handout).await {
            Ok(reply) => {
                let running = lock(&running);
                for t in reply.cancel {
                    if let Some(cancel) = running.tasks.get(&t) {
                        let _ = cancel.send(true);
                    }
                }
            }
            Err(e) if is_lease_lost(&e) => {
                let _ = lost.send(true);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
