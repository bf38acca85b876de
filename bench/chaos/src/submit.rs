//! The chaos run's clients: concurrent submitters sending numbered batches
//! with one idempotency key per task, retrying a batch with the same keys
//! through server downtime (unreachable, 5xx, 429) until it is answered.
//! A task counts as acknowledged once its batch was answered 201 or 200.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dispatch_client::{Client, ClientError};
use dispatch_proto::SubmitTask;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;
use tokio::task::JoinSet;

use crate::worker::TASK_TYPE;

/// Longest one attempt at a batch may take before it is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the submitters share with the rest of the run.
pub(crate) struct Acks {
    /// Tasks acknowledged so far.
    pub(crate) count: AtomicU64,
    /// The id of task `i`, once acknowledged.
    pub(crate) ids: Mutex<Vec<Option<String>>>,
    /// Batch attempts that failed and were retried.
    pub(crate) retries: AtomicU64,
}

/// The plan of the submission.
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) tasks: u64,
    pub(crate) batch: u64,
    pub(crate) submitters: u64,
    pub(crate) max_sleep_ms: u64,
    pub(crate) max_attempts: i64,
    pub(crate) seed: u64,
}

/// Starts the submitters; each ends when no batch is left.
pub(crate) fn spawn(client: &Client, plan: Plan) -> (Arc<Acks>, JoinSet<Result<()>>) {
    let acks = Arc::new(Acks {
        count: AtomicU64::new(0),
        ids: Mutex::new(vec![None; plan.tasks as usize]),
        retries: AtomicU64::new(0),
    });
    let next = Arc::new(AtomicU64::new(0));
    let batches = plan.tasks.div_ceil(plan.batch);
    let mut set = JoinSet::new();
    for _ in 0..plan.submitters {
        let (client, acks, next) = (client.clone(), acks.clone(), next.clone());
        set.spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok(());
                }
                let first = b * plan.batch;
                let last = (first + plan.batch).min(plan.tasks);
                let ids = submit_until_answered(&client, &acks, &plan, first..last).await?;
                let mut all = acks.ids.lock().unwrap_or_else(|e| e.into_inner());
                for (i, id) in (first..last).zip(ids) {
                    all[i as usize] = Some(id);
                }
                drop(all);
                acks.count.fetch_add(last - first, Ordering::Relaxed);
            }
        });
    }
    (acks, set)
}

/// Task `i` of the run: its key and its payload depend only on `i` and
/// the seed, so a retried batch is the same batch.
fn task(i: u64, plan: &Plan) -> Result<SubmitTask> {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let sleep_ms = rng.random_range(0..=plan.max_sleep_ms);
    Ok(SubmitTask {
        kind: Some(TASK_TYPE.to_owned()),
        payload: Some(RawValue::from_string(format!(
            "{{\"sleep_ms\":{sleep_ms}}}"
        ))?),
        idempotency_key: Some(format!("chaos-{i}")),
        max_attempts: Some(plan.max_attempts),
        ..SubmitTask::default()
    })
}

/// Sends the batch of tasks `range` until the server answers it; returns
/// the ids in order.
async fn submit_until_answered(
    client: &Client,
    acks: &Acks,
    plan: &Plan,
    range: std::ops::Range<u64>,
) -> Result<Vec<String>> {
    let batch: Vec<SubmitTask> = range
        .clone()
        .map(|i| task(i, plan))
        .collect::<Result<_>>()?;
    let mut pause = Duration::from_millis(20);
    loop {
        let outcome =
            tokio::time::timeout(ATTEMPT_TIMEOUT, client.submit_batch(batch.clone())).await;
        match outcome {
            Ok(Ok(tasks)) => {
                if tasks.len() != batch.len() {
                    bail!(
                        "a batch of {} tasks was answered with {} tasks",
                        batch.len(),
                        tasks.len()
                    );
                }
                for (t, i) in tasks.iter().zip(range.clone()) {
                    let key = format!("chaos-{i}");
                    if t.idempotency_key.as_deref() != Some(key.as_str()) {
                        bail!("task {} came back for key {key}", t.id);
                    }
                }
                return Ok(tasks.into_iter().map(|t| t.id).collect());
            }
            // Down, restarting or overloaded: the same batch again.
            Ok(Err(ClientError::Unreachable { .. })) | Err(_) => {}
            Ok(Err(e)) if e.status().is_some_and(|s| s >= 500 || s == 429) => {}
            Ok(Err(e)) => return Err(e).context("the server rejected a batch"),
        }
        acks.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
