//! `dispatch-bench`: the Dispatch benchmark, over loopback, with real
//! processes.
//!
//! It starts a `dispatch server` on a temporary data folder, then measures:
//!
//! 1. **Submit** (batch): `--tasks` no-op tasks sent with
//!    `POST /v1/tasks/batch` in batches of `--batch` by `--submitters`
//!    concurrent clients; tasks accepted per second (each batch is
//!    acknowledged once durable).
//! 2. **Drain** (the brief's W1): `--workers` worker processes (this binary,
//!    `dispatch-bench worker`) speaking the HTTP worker protocol with batched
//!    results (or, with `--transport grpc`, the gRPC streaming protocol with
//!    credits) start on the full queue; tasks per second from their launch
//!    until the server has no live task, and from the first task's start to
//!    the last one's end as the workers stamp them (how the peer benchmark
//!    counts every system; the launch of the worker processes is not in
//!    it).
//! 3. **Latency** (W2's shape): with the workers idle, tasks submitted one
//!    per `POST /v1/tasks` at a fixed open-loop `--rate` for `--seconds`;
//!    each payload carries the time it was meant to be sent, and the workers
//!    measure submit-to-start latency from it (so a late send counts against
//!    the server, not for it). Reported as p50, p99, p99.9 and max.
//!
//! 4. **Sleep** (the peer benchmark's W3, with `--sleep-tasks N`, gRPC
//!    workers only): with the default queue paused, N tasks that each hold
//!    their slot for `--sleep-ms` are submitted in batches; the queue is
//!    resumed and the time until none is live is compared with the ideal,
//!    N x sleep / (workers x capacity); so is the time from the first sleep
//!    task's start to the last one's end.
//! 5. **Round trip** (W4, with `--roundtrips N`): one client submits a
//!    no-op task and waits for its result (`GET /v1/tasks/{id}?wait_ms`), N
//!    times in a row; round trips per second and their p50, p99, p99.9.
//!
//! `--tasks 0` skips the submit and drain phases, `--seconds 0` the latency
//! phase.
//!
//! Everything is bounded by `--timeout-secs`; every child process and the
//! temporary folder are removed on exit, error or Ctrl-C.
//!
//! Usually run through `bench/run`, which builds both binaries in release
//! mode first.

mod chart;
mod grpc_worker;
mod harness;
mod report;
mod worker;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use dispatch_client::Client;
use dispatch_proto::SubmitTask;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::harness::{ChildGuard, Server};
use crate::report::{Latency, Machine, Report, RoundTrips, SleepPhase, WorkerTotals};
use crate::worker::{LATENCY_TYPE, NOOP_TYPE, ROUNDTRIP_TYPE, SLEEP_TYPE, Span};

/// The queue tasks go to when they name none.
const DEFAULT_QUEUE: &str = "default";

#[derive(Parser)]
#[command(
    name = "dispatch-bench",
    about = "Benchmark a Dispatch server: batch submit, drain and submit-to-start latency",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// One benchmark worker process (started by the benchmark itself).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// Draw a peer benchmark result file as a PNG (used by bench/peers/run).
    Chart(chart::ChartArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The `dispatch` binary (default: next to this one).
    #[arg(long, env = "DISPATCH_BIN")]
    dispatch: Option<PathBuf>,
    /// Server durability mode.
    #[arg(long, default_value = "durable", value_parser = ["durable", "relaxed"])]
    durability: String,
    /// Tasks queued for the drain phase (0: no submit and drain phases).
    /// Run on this PostgreSQL database (`postgres://...`) instead of an
    /// embedded store; `bench/run --store postgres` starts a throwaway
    /// server and passes its URL.
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// With --store-url: replicas on the database (one leads, the others
    /// stand by); the clients and workers talk to the leader.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    replicas: u64,
    #[arg(long, default_value_t = 20_000)]
    tasks: u64,
    /// Tasks per batch submission.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Concurrent batch submitters.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    submitters: u64,
    /// Ask for each submitted task's id and state only (`Prefer:
    /// return=minimal`) instead of the whole task.
    #[arg(long)]
    minimal: bool,
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Each worker's capacity (and poll size).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    capacity: u64,
    /// The workers' protocol.
    #[arg(long, default_value = "http", value_parser = ["http", "grpc"])]
    transport: String,
    /// Longest an idle worker's poll waits, in ms.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=5_000))]
    wait_ms: u64,
    /// Latency phase: tasks submitted per second (open loop).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// Latency phase: how long to submit, in seconds (0: no latency phase).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    seconds: u64,
    /// Latency phase: most submissions in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_024))]
    latency_submitters: u64,
    /// Sleep phase: tasks that each sleep `--sleep-ms` (0: no sleep phase;
    /// needs `--transport grpc`).
    #[arg(long, default_value_t = 0)]
    sleep_tasks: u64,
    /// Sleep phase: how long each task sleeps, in ms.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    sleep_ms: u64,
    /// Round-trip phase: submit-and-wait cycles, one after the other (0: no
    /// round-trip phase).
    #[arg(long, default_value_t = 0)]
    roundtrips: u64,
    /// Give up (and clean up) after this many seconds in all.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write every latency sample to this CSV file
    /// (`sent_ms,latency_ms`, `sent_ms` from the first intended send).
    #[arg(long, value_name = "FILE")]
    samples: Option<PathBuf>,
}

/// Microseconds since the Unix epoch.
pub(crate) fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Cmd::Worker(args)) => worker::run(args).await,
            Some(Cmd::Chart(args)) => chart::run(&args),
            None => bench(cli.run).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark under the global deadline and prints the report.
async fn bench(args: RunArgs) -> Result<()> {
    let limit = Duration::from_secs(args.timeout_secs);
    let deadline = Instant::now() + limit;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    // Dropping `run` on any branch but its own stops every child process
    // and removes the temporary folder.
    let report = tokio::select! {
        r = tokio::time::timeout(limit, run(&args, deadline)) => {
            r.map_err(|_| anyhow!("the benchmark did not finish within {} s (--timeout-secs)", args.timeout_secs))??
        }
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        report.print_table();
    }
    Ok(())
}

fn dispatch_binary(args: &RunArgs) -> Result<PathBuf> {
    let path = match &args.dispatch {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot locate this binary")?
            .with_file_name("dispatch"),
    };
    if !path.is_file() {
        bail!(
            "no dispatch binary at {}: build it (cargo build --release -p dispatch-cli), \
             pass --dispatch, or use bench/run",
            path.display()
        );
    }
    Ok(path)
}

fn progress(msg: &str) {
    eprintln!("[dispatch-bench] {msg}");
}

async fn run(args: &RunArgs, deadline: Instant) -> Result<Report> {
    if args.sleep_tasks > 0 && args.transport != "grpc" {
        bail!("--sleep-tasks needs --transport grpc (the HTTP worker runs no sleep tasks)");
    }
    let dispatch = dispatch_binary(args)?;
    let machine = Machine::detect();
    progress(&format!(
        "starting {} server ({} mode)",
        dispatch.display(),
        args.durability
    ));
    let store = args.store_url.as_deref();
    let mut server = Server::start(&dispatch, &args.durability, store, deadline).await?;
    // Standbys on the same database: they claim the lease, and stand by.
    let mut standbys = Vec::new();
    if let Some(url) = store {
        let limit = (Instant::now() + Duration::from_secs(30)).min(deadline);
        while !server.is_leader().await {
            if Instant::now() >= limit {
                bail!(
                    "the first replica did not lead within 30 s:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 1..args.replicas {
            standbys.push(Server::start(&dispatch, &args.durability, Some(url), deadline).await?);
        }
        progress(&format!(
            "PostgreSQL store: 1 leader and {} standbys",
            standbys.len()
        ));
    }
    let client = Client::new(server.url())?;

    // 1. Batch submit.
    progress(&format!(
        "submitting {} tasks in batches of {} from {} submitters",
        args.tasks, args.batch, args.submitters
    ));
    let noop = SubmitTask {
        kind: Some(NOOP_TYPE.to_owned()),
        ..SubmitTask::default()
    };
    let submit = submit_batches(
        &client,
        &noop,
        args.tasks,
        args.batch,
        args.submitters,
        args.minimal,
    )
    .await?;
    let live = live_tasks(&client).await?;
    if live != args.tasks {
        bail!(
            "{} tasks submitted but the server holds {live} live tasks",
            args.tasks
        );
    }

    // 2. Drain, with worker processes.
    progress(&format!(
        "draining with {} worker processes of capacity {} over {}",
        args.workers, args.capacity, args.transport
    ));
    let exe = std::env::current_exe().context("cannot locate this binary")?;
    let drain_started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let name = format!("bench-worker-{}", i + 1);
        let mut cmd = Command::new(&exe);
        cmd.arg("worker")
            .args(["--server", server.url(), "--name", &name])
            .args(["--capacity", &args.capacity.to_string()])
            .args(["--wait-ms", &args.wait_ms.to_string()])
            .args(["--transport", &args.transport])
            .stderr(Stdio::inherit());
        workers.push(ChildGuard::spawn(&name, cmd, true)?);
    }
    wait_drained(&client, &mut server, &mut workers, deadline).await?;
    let drain = drain_started.elapsed();

    // 3. Open-loop latency, with the same workers, now idle.
    let total = args.rate * args.seconds;
    progress(&format!(
        "latency: {} tasks/s for {} s, one POST /v1/tasks each, up to {} in flight",
        args.rate, args.seconds, args.latency_submitters
    ));
    let sent = if total > 0 {
        wait_registered(&client, args.workers, deadline).await?;
        let sent = open_loop(&client, args.rate, total, args.latency_submitters as usize).await?;
        wait_drained(&client, &mut server, &mut workers, deadline).await?;
        sent
    } else {
        Sent::default()
    };

    // 4. Sleep tasks, queued behind a paused queue, then released at once.
    let sleep = if args.sleep_tasks > 0 {
        progress(&format!(
            "sleep: {} tasks of {} ms on {} workers x {} slots",
            args.sleep_tasks, args.sleep_ms, args.workers, args.capacity
        ));
        wait_registered(&client, args.workers, deadline).await?;
        client
            .pause_queue(DEFAULT_QUEUE)
            .await
            .context("cannot pause the default queue")?;
        let payload = serde_json::value::to_raw_value(&json!({ "sleep_ms": args.sleep_ms }))?;
        let task = SubmitTask::new(SLEEP_TYPE, payload);
        submit_batches(
            &client,
            &task,
            args.sleep_tasks,
            args.batch,
            args.submitters,
            args.minimal,
        )
        .await?;
        let started = Instant::now();
        client
            .resume_queue(DEFAULT_QUEUE)
            .await
            .context("cannot resume the default queue")?;
        wait_drained(&client, &mut server, &mut workers, deadline).await?;
        Some(started.elapsed())
    } else {
        None
    };

    // 5. Submit and wait, one task at a time.
    let roundtrip = if args.roundtrips > 0 {
        progress(&format!(
            "round trip: {} submit-and-wait cycles",
            args.roundtrips
        ));
        wait_registered(&client, args.workers, deadline).await?;
        Some(roundtrips(&client, args.roundtrips).await?)
    } else {
        None
    };

    // Stop the workers and merge what they measured.
    let mut totals = WorkerTotals::default();
    let (mut noop_span, mut sleep_span) = (Span::default(), Span::default());
    let mut samples: Vec<u64> = Vec::with_capacity(total as usize);
    let mut pairs: Vec<(u64, u64)> = Vec::new();
    for w in workers {
        let out = w.finish(Duration::from_secs(10)).await?;
        let line = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| anyhow!("a worker printed no report"))?;
        let v: serde_json::Value =
            serde_json::from_str(line).context("a worker's report is not JSON")?;
        totals.add(&v);
        let span = |first: &str, last: &str| Span {
            first_start_us: v[first].as_u64(),
            last_end_us: v[last].as_u64(),
        };
        noop_span.merge(span("noop_first_start_us", "noop_last_end_us"));
        sleep_span.merge(span("sleep_first_start_us", "sleep_last_end_us"));
        let numbers = |k: &str| -> Vec<u64> {
            v[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_u64)
                .collect()
        };
        let latency = numbers("latency_us");
        pairs.extend(numbers("sent_us").into_iter().zip(latency.iter().copied()));
        samples.extend(latency);
    }
    if let Some(path) = &args.samples {
        write_samples(path, &mut pairs)?;
    }
    server.check_alive()?;
    let expected = args.tasks + total + args.sleep_tasks + args.roundtrips;
    if totals.completed != expected {
        progress(&format!(
            "warning: workers completed {} tasks, {} were submitted",
            totals.completed, expected
        ));
    }
    if samples.len() as u64 != total {
        progress(&format!(
            "warning: {} latency samples for {total} latency tasks",
            samples.len()
        ));
    }
    let data_bytes = server.data_bytes();
    for s in &mut standbys {
        s.check_alive()?;
    }
    drop(standbys);
    drop(server);
    Ok(Report {
        machine,
        durability: args.durability.clone(),
        store: match store {
            Some(_) => format!(
                "postgres (1 leader, {} standbys)",
                args.replicas.saturating_sub(1)
            ),
            None => "sqlite".into(),
        },
        tasks: args.tasks,
        batch: args.batch,
        submitters: args.submitters,
        minimal: args.minimal,
        submit,
        workers: args.workers,
        capacity: args.capacity,
        transport: args.transport.clone(),
        drain,
        drain_active: noop_span.elapsed().filter(|_| args.tasks > 0),
        latency: Latency::new(
            args.rate,
            args.seconds,
            args.latency_submitters,
            sent,
            samples,
        ),
        sleep: sleep.map(|elapsed| SleepPhase {
            tasks: args.sleep_tasks,
            sleep_ms: args.sleep_ms,
            slots: args.workers * args.capacity,
            elapsed,
            active: sleep_span.elapsed(),
        }),
        roundtrip,
        totals,
        data_bytes,
    })
}

/// Writes `(sent_us, latency_us)` pairs as CSV, in sending order.
fn write_samples(path: &std::path::Path, pairs: &mut [(u64, u64)]) -> Result<()> {
    use std::fmt::Write as _;
    pairs.sort_unstable();
    let first = pairs.first().map_or(0, |p| p.0);
    let mut csv = String::from("sent_ms,latency_ms\n");
    for (sent, lat) in pairs.iter() {
        let _ = writeln!(
            csv,
            "{:.3},{:.3}",
            (sent - first) as f64 / 1_000.0,
            *lat as f64 / 1_000.0
        );
    }
    std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))
}

/// Submits `n` no-op tasks in batches from concurrent submitters; returns
/// the time until the last batch was acknowledged.
async fn submit_batches(
    client: &Client,
    task: &SubmitTask,
    n: u64,
    batch: u64,
    submitters: u64,
    minimal: bool,
) -> Result<Duration> {
    let mut batches: Vec<Vec<SubmitTask>> = Vec::new();
    let mut left = n;
    while left > 0 {
        let size = left.min(batch);
        batches.push(vec![task.clone(); size as usize]);
        left -= size;
    }
    let queue = Arc::new(Mutex::new(batches));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..submitters {
        let client = client.clone();
        let queue = queue.clone();
        set.spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(b) = next else { return Ok(()) };
                let len = b.len();
                let got = if minimal {
                    client.submit_batch_minimal(b).await.map(|t| t.len())
                } else {
                    client.submit_batch(b).await.map(|t| t.len())
                }
                .context("batch submit failed")?;
                if got != len {
                    bail!("a batch of {len} tasks was answered with {got} tasks");
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("a submitter panicked")??;
    }
    Ok(started.elapsed())
}

async fn live_tasks(client: &Client) -> Result<u64> {
    let h = client.health().await.context("GET /healthz failed")?;
    h["live_tasks"]
        .as_u64()
        .ok_or_else(|| anyhow!("/healthz has no live_tasks: {h}"))
}

/// Waits until the server holds no live task, checking that the server and
/// the workers are still running.
async fn wait_drained(
    client: &Client,
    server: &mut Server,
    workers: &mut [ChildGuard],
    deadline: Instant,
) -> Result<()> {
    loop {
        if live_tasks(client).await? == 0 {
            return Ok(());
        }
        server.check_alive()?;
        for (i, w) in workers.iter_mut().enumerate() {
            if let Some(status) = w.exited()? {
                bail!("worker {} exited early: {status}", i + 1);
            }
        }
        if Instant::now() >= deadline {
            bail!("tasks still live at the deadline");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `n` workers are registered (so that a phase does not time
/// their start-up).
async fn wait_registered(client: &Client, n: u64, deadline: Instant) -> Result<()> {
    loop {
        let list = client.workers().await.context("GET /v1/workers failed")?;
        if list.workers.len() as u64 >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} of {n} workers registered at the deadline",
                list.workers.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Submits a no-op task and waits for it to finish, `n` times in a row;
/// returns the round trips' durations.
async fn roundtrips(client: &Client, n: u64) -> Result<RoundTrips> {
    let task = SubmitTask {
        kind: Some(ROUNDTRIP_TYPE.to_owned()),
        ..SubmitTask::default()
    };
    let mut samples = Vec::with_capacity(n as usize);
    let started = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        let (submitted, _) = client
            .submit(&task)
            .await
            .context("POST /v1/tasks failed")?;
        let done = client
            .wait(&submitted.id, Duration::from_secs(30))
            .await
            .context("waiting for a task failed")?;
        if done.state != "succeeded" {
            bail!("task {} ended {} instead of succeeded", done.id, done.state);
        }
        samples.push(t0.elapsed().as_micros() as u64);
    }
    Ok(RoundTrips::new(started.elapsed(), samples))
}

/// What the open-loop phase sent.
#[derive(Default)]
pub(crate) struct Sent {
    /// Tasks submitted.
    pub(crate) tasks: u64,
    /// Submissions that started more than 1 ms after their intended time.
    pub(crate) late: u64,
    /// The latest start, in microseconds after its intended time.
    pub(crate) max_late_us: u64,
    /// From the first intended send to the last acknowledgement.
    pub(crate) elapsed: Duration,
}

/// Submits `total` tasks at `rate` per second, open loop: a pacing thread
/// releases each at its intended time whatever happened to the previous
/// ones; at most `in_flight` requests run at once (a send that has to wait
/// for one is late, and its latency counts from its intended time).
async fn open_loop(client: &Client, rate: u64, total: u64, in_flight: usize) -> Result<Sent> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let lead = Duration::from_millis(50);
    let start = Instant::now() + lead;
    let start_us = epoch_us() + lead.as_micros() as u64;
    // A thread sleeps far more precisely than tokio's millisecond timer.
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let offset_ns = i * 1_000_000_000 / rate;
            let target = start + Duration::from_nanos(offset_ns);
            let now = Instant::now();
            if target > now {
                std::thread::sleep(target - now);
            }
            if tx.send(start_us + offset_ns / 1_000).is_err() {
                return;
            }
        }
    });
    let permits = Arc::new(Semaphore::new(in_flight));
    let late = Arc::new(AtomicU64::new(0));
    let max_late = Arc::new(AtomicU64::new(0));
    let mut set: JoinSet<Result<()>> = JoinSet::new();
    let mut tasks = 0u64;
    while let Some(intended_us) = rx.recv().await {
        let permit = permits.clone().acquire_owned().await?;
        let client = client.clone();
        let (late, max_late) = (late.clone(), max_late.clone());
        set.spawn(async move {
            let _permit = permit;
            let behind = epoch_us().saturating_sub(intended_us);
            if behind > 1_000 {
                late.fetch_add(1, Ordering::Relaxed);
            }
            max_late.fetch_max(behind, Ordering::Relaxed);
            let payload = serde_json::value::to_raw_value(&json!({ "sent_us": intended_us }))?;
            client
                .submit(&SubmitTask::new(LATENCY_TYPE, payload))
                .await
                .context("POST /v1/tasks failed")?;
            Ok(())
        });
        tasks += 1;
        while let Some(r) = set.try_join_next() {
            r.context("a submitter panicked")??;
        }
    }
    while let Some(r) = set.join_next().await {
        r.context("a submitter panicked")??;
    }
    let elapsed = start.elapsed();
    pacer
        .join()
        .map_err(|_| anyhow!("the pacing thread panicked"))?;
    Ok(Sent {
        tasks,
        late: late.load(Ordering::Relaxed),
        max_late_us: max_late.load(Ordering::Relaxed),
        elapsed,
    })
}
