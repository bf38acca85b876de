//! `dispatch demo`: a server on a throw-away store, a few HTTP workers and
//! a few hundred tasks, with live progress and a summary.
//!
//! Everything talks over real loopback sockets with the same protocol an
//! external worker would use; nothing is short-circuited in process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dispatch_client::Client;
use dispatch_proto::{
    ListTasks, PollRequest, PolledTask, RegisterWorker, ReportResult, SubmitTask,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde_json::json;

/// The demo's task types: (type, work time range in ms, chance to fail an
/// attempt).
const TYPES: [(&str, (u64, u64), f64); 4] = [
    ("email.send", (1, 4), 0.0),
    ("image.resize", (5, 20), 0.0),
    ("report.build", (20, 60), 0.0),
    ("webhook.call", (2, 8), 0.3),
];

/// Workers: (name, types they run, capacity).
fn worker_specs(n: usize) -> Vec<(String, Vec<String>, i64)> {
    (0..n)
        .map(|i| {
            let types: Vec<String> = match i % 4 {
                0 => vec!["email.send", "webhook.call"],
                1 => vec!["image.resize", "report.build"],
                2 => vec!["email.send", "image.resize", "report.build", "webhook.call"],
                _ => vec!["report.build", "webhook.call", "email.send"],
            }
            .into_iter()
            .map(str::to_owned)
            .collect();
            (format!("demo-worker-{}", i + 1), types, 8)
        })
        .collect()
}

pub(crate) async fn run(n_tasks: usize, n_workers: usize) -> Result<()> {
    let n_workers = n_workers.max(1);
    let dir = tempfile::tempdir().context("cannot create a temporary data folder")?;
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let mut config = dispatch_server::ServerConfig::new(listen, dir.path().display().to_string());
    config.lease_ms = 3_000;
    let store = dispatch_store_sqlite::SqliteStore::open(
        dir.path(),
        dispatch_store_sqlite::Durability::Durable,
    )?;
    let server = dispatch_server::start(config, std::sync::Arc::new(store)).await?;
    let url = format!("http://{}", server.local_addr());
    println!(
        "Dispatch demo: server on {url}, embedded store in {}",
        dir.path().display()
    );

    let client = Client::new(&url)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for (name, types, capacity) in worker_specs(n_workers) {
        println!(
            "  worker {name:<15} runs {} ({capacity} at a time)",
            types.join(", ")
        );
        let reg = RegisterWorker {
            name: Some(name),
            types: Some(types),
            labels: None,
            capacity: Some(capacity),
            weight: None,
        };
        let id = client.register(&reg).await?.id;
        handles.push(tokio::spawn(work(client.clone(), id, stop.clone())));
    }

    println!(
        "Submitting {n_tasks} tasks of {} types with priorities -5..=5",
        TYPES.len()
    );
    let started = Instant::now();
    let mut rng = rand::rng();
    let mut batch = Vec::new();
    for i in 0..n_tasks {
        let (kind, _, _) = TYPES[rng.random_range(0..TYPES.len())];
        let payload = serde_json::value::to_raw_value(&json!({ "n": i }))?;
        batch.push(SubmitTask {
            priority: Some(rng.random_range(-5..=5)),
            ..SubmitTask::new(kind, payload)
        });
        if batch.len() == 50 || i + 1 == n_tasks {
            client.submit_batch(std::mem::take(&mut batch)).await?;
        }
    }

    let bar = ProgressBar::new(n_tasks as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} finished  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = client.health().await?;
        let live = health["live_tasks"].as_u64().unwrap_or(0);
        let done = (n_tasks as u64).saturating_sub(live);
        bar.set_position(done);
        bar.set_message(format!(
            "{:.0} tasks/s",
            done as f64 / started.elapsed().as_secs_f64()
        ));
        if live == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    bar.finish();

    // The summary comes from the server's API, as a user would see it.
    let mut per_type: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut q = ListTasks {
        limit: Some("1000".to_owned()),
        ..ListTasks::default()
    };
    let mut retried = 0;
    loop {
        let page = client.tasks(&q).await?;
        for t in &page.tasks {
            *per_type
                .entry((t.kind.clone(), t.state.clone()))
                .or_default() += 1;
            retried += usize::from(t.attempts > 1);
        }
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    let workers = client.workers().await?;

    println!();
    println!(
        "Finished in {:.2} s: {:.0} tasks/s end to end",
        elapsed.as_secs_f64(),
        n_tasks as f64 / elapsed.as_secs_f64()
    );
    println!(
        "{retried} tasks needed more than one attempt (webhook.call fails 30% of attempts and is retried)"
    );
    println!();
    let rows: Vec<Vec<String>> = per_type
        .iter()
        .map(|((k, s), n)| vec![k.clone(), s.clone(), n.to_string()])
        .collect();
    crate::output::print_table(&["type", "state", "tasks"], &rows);
    println!();
    let rows: Vec<Vec<String>> = workers
        .workers
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.types.join(","),
                w.completed.to_string(),
                w.failed.to_string(),
            ]
        })
        .collect();
    crate::output::print_table(&["worker", "types", "completed", "failed attempts"], &rows);
    println!();
    println!(
        "Try it yourself: dispatch server, then dispatch submit email.send --payload '{{\"to\":\"you\"}}' (see README)"
    );

    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.await;
    }
    server.shutdown().await;
    Ok(())
}

/// Simulates a task: sleeps for the type's work time, sometimes fails.
async fn execute(task: PolledTask) -> ReportResult {
    let (work, fail_rate) = TYPES
        .iter()
        .find(|(k, _, _)| *k == task.kind)
        .map_or(((1, 2), 0.0), |(_, w, f)| (*w, *f));
    let (ms, fails) = {
        let mut rng = rand::rng();
        (
            rng.random_range(work.0..=work.1),
            rng.random_bool(fail_rate),
        )
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    if fails {
        ReportResult {
            task_id: task.id,
            error: Some(json!("upstream answered 503")),
            retry_after_ms: Some(100),
            ..ReportResult::default()
        }
    } else {
        let result = serde_json::value::to_raw_value(&json!({ "took_ms": ms })).ok();
        ReportResult {
            task_id: task.id,
            result,
            ..ReportResult::default()
        }
    }
}

/// One HTTP worker: long-polls, runs what it gets concurrently, and reports
/// the results with its next poll.
async fn work(client: Client, id: String, stop: Arc<AtomicBool>) {
    let mut running = tokio::task::JoinSet::new();
    let mut done: Vec<ReportResult> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let req = PollRequest {
            max: None,
            wait_ms: Some(if running.is_empty() { 200 } else { 0 }),
            results: (!done.is_empty()).then(|| std::mem::take(&mut done)),
            running: None,
            last_handout: None,
        };
        match client.poll(&id, &req).await {
            Ok(reply) => {
                for t in reply.tasks {
                    running.spawn(execute(t));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "demo worker poll failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Collect what finished; wait a little for at least one if busy.
        if let Ok(Some(Ok(r))) =
            tokio::time::timeout(Duration::from_millis(5), running.join_next()).await
        {
            done.push(r);
        }
        while let Some(Ok(r)) = running.try_join_next() {
            done.push(r);
        }
    }
    let _ = client.leave(&id).await;
}
