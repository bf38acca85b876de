//! `apalis-peer`: apalis 0.7 on its SQLite storage, driven by the Dispatch
//! peer benchmark (`bench/peers/driver.py`).
//!
//! - `enqueue`: pushes N jobs (not timed; synchronous=OFF while loading).
//! - `work`: one worker process with a concurrency limit; every job records
//!   `start_us end_us sent_us` (microseconds since the epoch) as a line of
//!   the process's own stats file (`apalis-<pid>.log` in `--stats-dir`),
//!   flushed every 50 ms, which is how the driver counts and times the jobs
//!   of every peer.
//! - `open-loop`: pushes jobs at a fixed rate against a schedule, each
//!   carrying its intended send time; prints what it sent as JSON.
//! - `roundtrip`: pushes a job and polls it until done, N times; prints
//!   each round trip in microseconds as JSON.
//!
//! Every push goes through [`push_due`], which works around the
//! whole-second `run_at` of apalis-sql 0.7's SQLite storage.

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use apalis::prelude::*;
use apalis_sql::Config;
use apalis_sql::context::SqlContext;
use apalis_sql::sqlite::SqliteStorage;
use apalis_sql::sqlx::SqlitePool;
use apalis_sql::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

/// The one job type: a no-op, or a sleep when `sleep_ms` > 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchJob {
    sent_us: u64,
    sleep_ms: u64,
}

#[derive(Parser)]
struct Cli {
    /// The SQLite database file.
    #[arg(long, global = true, default_value = "apalis.db")]
    db: PathBuf,
    /// SQLite `synchronous`: off, normal or full.
    #[arg(long, global = true, default_value = "full")]
    sync: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the schema and push N jobs.
    Enqueue {
        #[arg(long)]
        n: u64,
        #[arg(long, default_value_t = 0)]
        sleep_ms: u64,
    },
    /// Run one worker process until SIGTERM.
    Work {
        #[arg(long, default_value_t = 16)]
        slots: usize,
        /// Where to write this process's stats file; several worker
        /// processes share the folder, each with its own file.
        #[arg(long)]
        stats_dir: PathBuf,
        /// The storage's poll interval, in ms.
        #[arg(long, default_value_t = 10)]
        poll_ms: u64,
    },
    /// Push jobs at `rate` per second for `secs` seconds, open loop.
    OpenLoop {
        #[arg(long)]
        rate: u64,
        #[arg(long)]
        secs: f64,
        /// Most pushes in flight at once.
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
    },
    /// Push a job and poll until it is done, N times or until the budget
    /// is spent.
    Roundtrip {
        #[arg(long)]
        n: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        budget_secs: f64,
    },
}

const NAMESPACE: &str = "bench";

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn pool(cli: &Cli, sync: &str) -> Result<SqlitePool> {
    let sync = match sync {
        "off" => SqliteSynchronous::Off,
        "normal" => SqliteSynchronous::Normal,
        "full" => SqliteSynchronous::Full,
        other => bail!("unknown --sync {other}"),
    };
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", cli.db.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sync)
        .busy_timeout(Duration::from_secs(10));
    SqlitePool::connect_with(opts)
        .await
        .with_context(|| format!("cannot open {}", cli.db.display()))
}

/// apalis-sql's storage configuration for low latency: a 10 ms poll
/// interval in the workers (apalis' default is 100 ms) and up to 16 job ids
/// fetched per poll, one worker's concurrency.
fn storage(pool: SqlitePool, poll: Duration) -> SqliteStorage<BenchJob> {
    let config = Config::new(NAMESPACE)
        .set_poll_interval(poll)
        .set_buffer_size(16);
    SqliteStorage::new_with_config(pool, config)
}

/// Pushes a job that a worker may fetch at its next poll.
///
/// apalis-sql 0.7's SQLite storage stamps a plain `push` with
/// `run_at = strftime('%s','now')`, in whole seconds, and its workers fetch
/// only jobs with `run_at < now`, also in whole seconds (`stream_jobs` in
/// its `sqlite.rs`). A job pushed at 12:00:00.100 therefore cannot start
/// before 12:00:01.000, whatever the poll interval: up to 1 s (0.5 s on
/// average) of extra latency that comes from the timestamps' resolution,
/// not from the queue. `Storage::schedule` is the same INSERT with an explicit `run_at`;
/// giving it the previous second makes the job due at once. The job's row,
/// and how it is fetched, locked and acknowledged, are otherwise those of
/// `push`.
async fn push_due(s: &mut SqliteStorage<BenchJob>, job: BenchJob) -> Result<TaskId> {
    let due = (epoch_us() / 1_000_000) as i64 - 1;
    let parts = s.schedule(job, due).await.context("cannot push a job")?;
    Ok(parts.task_id)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Enqueue { n, sleep_ms } => {
            let pool = pool(&cli, "off").await?;
            SqliteStorage::setup(&pool)
                .await
                .context("cannot create the schema")?;
            let mut s = storage(pool, Duration::from_millis(10));
            for _ in 0..*n {
                push_due(
                    &mut s,
                    BenchJob {
                        sent_us: 0,
                        sleep_ms: *sleep_ms,
                    },
                )
                .await?;
            }
        }
        Cmd::Work {
            slots,
            stats_dir,
            poll_ms,
        } => work(&cli, *slots, stats_dir, *poll_ms).await?,
        Cmd::OpenLoop {
            rate,
            secs,
            in_flight,
        } => open_loop(&cli, *rate, *secs, *in_flight).await?,
        Cmd::Roundtrip { n, budget_secs } => roundtrip(&cli, *n, *budget_secs).await?,
    }
    Ok(())
}

type Records = Arc<Mutex<Vec<(u64, u64, u64)>>>;

async fn handle(job: BenchJob, records: Data<Records>) -> Result<(), BoxDynError> {
    let start = epoch_us();
    if job.sleep_ms > 0 {
        let pause = Duration::from_millis(job.sleep_ms);
        tokio::task::spawn_blocking(move || std::thread::sleep(pause)).await?;
    }
    let end = epoch_us();
    records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((start, end, job.sent_us));
    Ok(())
}

async fn work(cli: &Cli, slots: usize, stats_dir: &std::path::Path, poll_ms: u64) -> Result<()> {
    let pool = pool(cli, &cli.sync).await?;
    let s = storage(pool, Duration::from_millis(poll_ms));
    let records: Records = Arc::default();
    // One file per process: the driver starts every worker process with the
    // same arguments, and two processes writing one file would overwrite
    // each other's lines.
    let stats = stats_dir.join(format!("apalis-{}.log", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stats)
        .with_context(|| format!("cannot create {}", stats.display()))?;
    let flushed = records.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let batch = std::mem::take(&mut *flushed.lock().unwrap_or_else(|e| e.into_inner()));
            let mut text = String::new();
            for (a, b, c) in batch {
                text.push_str(&format!("{a} {b} {c}\n"));
            }
            if file.write_all(text.as_bytes()).is_err() {
                return;
            }
        }
    });
    let worker = WorkerBuilder::new(format!("apalis-peer-{}", std::process::id()))
        .concurrency(slots)
        .data(records)
        .backend(s)
        .build_fn(handle)
        .on_event(on_event);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Monitor::new()
        .register(worker)
        .run_with_signal(async move {
            term.recv().await;
            Ok(())
        })
        .await?;
    Ok(())
}

/// Reports the worker's errors on stderr (the driver keeps it), and ends the
/// process when the storage's job stream fails.
///
/// apalis-sql 0.7 fetches jobs in a `try_stream!` that ends at its first
/// database error; the worker then keeps its heartbeat going but never
/// fetches another job. Exiting turns that silent stall into a worker that
/// the driver sees die, with the cause in its log.
fn on_event(event: Worker<Event>) {
    if let Event::Error(e) = event.inner() {
        eprintln!("{event}");
        if let Some(Error::SourceError(_)) = e.downcast_ref::<Error>() {
            eprintln!("apalis-peer: the job stream failed; this worker cannot fetch jobs any more");
            std::process::exit(1);
        }
    }
}

async fn open_loop(cli: &Cli, rate: u64, secs: f64, in_flight: usize) -> Result<()> {
    let pool = pool(cli, &cli.sync).await?;
    let s = storage(pool, Duration::from_millis(10));
    let total = (rate as f64 * secs) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let start_us = epoch_us() + 50_000;
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let late = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..total {
        let offset = Duration::from_nanos(i * 1_000_000_000 / rate.max(1));
        let target = start + offset;
        let now = Instant::now();
        if target > now {
            tokio::time::sleep(target - now).await;
        }
        let permit = permits.clone().acquire_owned().await?;
        let mut s = s.clone();
        let late = late.clone();
        set.spawn(async move {
            let _permit = permit;
            if Instant::now().saturating_duration_since(target) > Duration::from_millis(1) {
                late.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            push_due(
                &mut s,
                BenchJob {
                    sent_us: start_us + offset.as_micros() as u64,
                    sleep_ms: 0,
                },
            )
            .await
            .map(|_| ())
        });
        while let Some(r) = set.try_join_next() {
            r??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "sent": total,
            "late": late.load(std::sync::atomic::Ordering::Relaxed),
            "seconds": elapsed,
        })
    );
    Ok(())
}

async fn roundtrip(cli: &Cli, n: u64, budget_secs: f64) -> Result<()> {
    let stop = Instant::now() + Duration::from_secs_f64(budget_secs);
    let pool = pool(cli, &cli.sync).await?;
    let mut s = storage(pool, Duration::from_millis(10));
    let mut samples = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t0 = Instant::now();
        let task_id = push_due(
            &mut s,
            BenchJob {
                sent_us: 0,
                sleep_ms: 0,
            },
        )
        .await?;
        loop {
            let job: Option<Request<BenchJob, SqlContext>> = s.fetch_by_id(&task_id).await?;
            if let Some(job) = job {
                if *job.parts.context.status() == State::Done {
                    break;
                }
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("a job was not done within 30 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        samples.push(t0.elapsed().as_micros() as u64);
        if Instant::now() >= stop {
            break;
        }
    }
    println!("{}", serde_json::json!({"samples_us": samples}));
    Ok(())
}
