//! `dispatch-chaos flood`: a server with bounds and no worker, flooded with
//! batch submissions from several connections at full speed. It samples
//! the server's resident memory every 200 ms, counts the tasks accepted
//! (201) and refused (429, each of which must carry `Retry-After`), then
//! checks that the server stores exactly the tasks it accepted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use dispatch_client::Client;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::procs::{self, Server, ServerSpec};

#[derive(Args, Debug)]
pub(crate) struct FloodArgs {
    /// The `dispatch` binary (default: next to this one).
    #[arg(long, env = "DISPATCH_BIN")]
    dispatch: Option<PathBuf>,
    /// Server durability mode.
    #[arg(long, default_value = "durable", value_parser = ["durable", "relaxed"])]
    durability: String,
    /// Tasks submitted in all.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    tasks: u64,
    /// Tasks per batch submission.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Concurrent connections, each sending its next batch as soon as the
    /// last one is answered.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    connections: u64,
    /// The server's `--max-live-tasks`.
    #[arg(long, default_value_t = 100_000)]
    max_live_tasks: u64,
    /// One more argument for `dispatch server` (repeat it), e.g.
    /// `--server-arg=--config --server-arg=queues.toml`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Give up (and clean up) after this many seconds in all.
    #[arg(long, default_value_t = 280, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout_secs: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What the connections counted.
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    refused: AtomicU64,
    answers_429: AtomicU64,
    without_retry_after: AtomicU64,
    /// Other statuses, by status.
    other: std::sync::Mutex<BTreeMap<u16, u64>>,
}

/// Resident memory samples of one process.
#[derive(Default)]
struct Rss {
    peak_kib: AtomicU64,
    last_kib: AtomicU64,
    samples: AtomicU64,
}

/// The flood's figures.
pub(crate) struct FloodReport {
    json: Value,
    passed: bool,
}

impl FloodReport {
    pub(crate) fn passed(&self) -> bool {
        self.passed
    }

    pub(crate) fn to_json(&self) -> &Value {
        &self.json
    }

    pub(crate) fn print_table(&self) {
        let j = &self.json;
        println!("Dispatch submit flood");
        println!(
            "  server         {} mode, --max-live-tasks {}, extra arguments {}",
            j["durability"].as_str().unwrap_or("?"),
            j["max_live_tasks"],
            j["server_args"]
        );
        println!(
            "  submitted      {} tasks in batches of {} over {} connections in {:.1} s ({:.0} tasks/s)",
            j["tasks"],
            j["batch"],
            j["connections"],
            j["duration_secs"].as_f64().unwrap_or(0.0),
            j["tasks_per_sec"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  accepted       {} (201); stored afterwards: {}",
            j["accepted"], j["stored"]
        );
        println!(
            "  refused        {} in {} answers 429 ({} without Retry-After)",
            j["refused"], j["answers_429"], j["without_retry_after"]
        );
        println!("  other answers  {}", j["other_statuses"]);
        println!(
            "  server RSS     {:.1} MiB at start, {:.1} MiB peak, {:.1} MiB at the end ({} samples)",
            mib(&j["rss_start_kib"]),
            mib(&j["rss_peak_kib"]),
            mib(&j["rss_end_kib"]),
            j["rss_samples"]
        );
        println!(
            "  lost           {}\n  verdict        {}",
            j["lost"],
            if self.passed { "PASS" } else { "FAIL" }
        );
    }
}

fn mib(v: &Value) -> f64 {
    v.as_u64().unwrap_or(0) as f64 / 1024.0
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One batch body: `n` tasks of type `flood.noop`.
fn body(n: u64) -> String {
    let tasks = vec![json!({ "type": "flood.noop" }); n as usize];
    json!({ "tasks": tasks }).to_string()
}

pub(crate) async fn run(args: &FloodArgs) -> Result<FloodReport> {
    let dispatch = procs::dispatch_binary(args.dispatch.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("dispatch-flood-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let mut server_args = vec![
        "--data".to_owned(),
        dir.path().join("data").display().to_string(),
        "--durability".to_owned(),
        args.durability.clone(),
        "--max-live-tasks".to_owned(),
        args.max_live_tasks.to_string(),
    ];
    server_args.extend(args.server_args.iter().cloned());
    let mut server = Server::start(ServerSpec {
        name: "dispatch server".to_owned(),
        bin: dispatch,
        port: procs::free_port()?,
        log: dir.path().join("server.log"),
        args: server_args,
    })
    .await?;
    let pid = server
        .pid()
        .ok_or_else(|| anyhow!("the server has no pid"))?;
    let rss = Arc::new(Rss::default());
    let rss_start = rss_kib(pid).unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (rss, stop) = (rss.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(k) = rss_kib(pid) {
                    rss.peak_kib.fetch_max(k, Ordering::Relaxed);
                    rss.last_kib.store(k, Ordering::Relaxed);
                    rss.samples.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    eprintln!(
        "[dispatch-chaos] flooding {} with {} tasks in batches of {} from {} connections",
        server.url(),
        args.tasks,
        args.batch,
        args.connections
    );

    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    let batches = args.tasks.div_ceil(args.batch);
    let url = format!("{}/v1/tasks/batch", server.url());
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..args.connections {
        let (counts, next, url) = (counts.clone(), next.clone(), url.clone());
        let (tasks, batch) = (args.tasks, args.batch);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .context("cannot build an HTTP client")?;
        set.spawn(async move {
            let full = body(batch);
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<(), anyhow::Error>(());
                }
                let n = batch.min(tasks - b * batch);
                let text = if n == batch { full.clone() } else { body(n) };
                send(&http, &url, n, text, &counts).await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("a connection panicked")??;
    }
    let duration = started.elapsed();
    server.check_alive()?;

    let client = Client::new(server.url())?;
    let queues = client.queues().await.context("cannot list the queues")?;
    let stored: u64 = queues
        .queues
        .iter()
        .map(|q| {
            let c = &q.counts;
            c.scheduled + c.queued + c.running + c.succeeded + c.dead + c.cancelled
        })
        .sum();
    stop.store(true, Ordering::Relaxed);
    sampler.await.context("the memory sampler panicked")?;
    drop(server);

    let accepted = counts.accepted.load(Ordering::Relaxed);
    let without = counts.without_retry_after.load(Ordering::Relaxed);
    let other = counts
        .other
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let lost = accepted.saturating_sub(stored);
    let passed = lost == 0 && stored == accepted && without == 0 && other.is_empty();
    let json = json!({
        "passed": passed,
        "durability": args.durability,
        "max_live_tasks": args.max_live_tasks,
        "server_args": args.server_args,
        "tasks": args.tasks,
        "batch": args.batch,
        "connections": args.connections,
        "duration_secs": duration.as_secs_f64(),
        "tasks_per_sec": args.tasks as f64 / duration.as_secs_f64().max(1e-9),
        "accepted": accepted,
        "refused": counts.refused.load(Ordering::Relaxed),
        "answers_429": counts.answers_429.load(Ordering::Relaxed),
        "without_retry_after": without,
        "other_statuses": other.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "stored": stored,
        "lost": lost,
        "rss_start_kib": rss_start,
        "rss_peak_kib": rss.peak_kib.load(Ordering::Relaxed).max(rss_start),
        "rss_end_kib": rss.last_kib.load(Ordering::Relaxed),
        "rss_samples": rss.samples.load(Ordering::Relaxed),
    });
    Ok(FloodReport { json, passed })
}

/// Sends one batch of `n` tasks and counts the answer.
async fn send(
    http: &reqwest::Client,
    url: &str,
    n: u64,
    body: String,
    counts: &Counts,
) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Reply {
        tasks: Vec<serde::de::IgnoredAny>,
    }
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .context("the server stopped answering")?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let bytes = resp.bytes().await.context("the server cut an answer")?;
    match status {
        201 => {
            let reply: Reply =
                serde_json::from_slice(&bytes).context("a 201 answer is not a batch")?;
            if reply.tasks.len() as u64 != n {
                bail!(
                    "a batch of {n} tasks was answered with {} tasks",
                    reply.tasks.len()
                );
            }
            counts.accepted.fetch_add(n, Ordering::Relaxed);
        }
        429 => {
            counts.refused.fetch_add(n, Ordering::Relaxed);
            counts.answers_429.fetch_add(1, Ordering::Relaxed);
            if retry_after.is_none() {
                counts.without_retry_after.fetch_add(1, Ordering::Relaxed);
            }
        }
        s => {
            *counts
                .other
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(s)
                .or_insert(0) += 1;
        }
    }
    Ok(())
}
