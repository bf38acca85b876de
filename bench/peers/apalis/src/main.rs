//! `apalis-peer`: apalis 0.7 on its SQLite storage, driven by the Dispatch
//! peer benchmark (`bench/peers/driver.py`).
//!
//! - `enqueue`: pushes N jobs (not timed; synchronous=OFF while loading).
//! - `work`: one worker process with a concurrency limit; every job records
//!   `start_us end_us sent_us` (microseconds since the epoch) as a line of
//!   its stats file, flushed every 50 ms, which is how the driver counts and
//!   times the jobs of every peer.
//! - `open-loop`: pushes jobs at a fixed rate against a schedule, each
//!   carrying its intended send time; prints what it sent as JSON.
//! - `roundtrip`: pushes a job and polls it until done, N times; prints
//!   each round trip in microseconds as JSON.

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
        #[arg(long)]
        stats: PathBuf,
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

fn storage(pool: SqlitePool, poll: Duration) -> SqliteStorage<BenchJob> {
    let config = Config::new(NAMESPACE)
        .set_poll_interval(poll)
        .set_buffer_size(16);
    SqliteStorage::new_with_config(pool, config)
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
                s.push(BenchJob {
                    sent_us: 0,
                    sleep_ms: *sleep_ms,
                })
                .await?;
            }
        }
        Cmd::Work {
            slots,
            stats,
            poll_ms,
        } => work(&cli, *slots, stats, *poll_ms).await?,
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

async fn work(cli: &Cli, slots: usize, stats: &PathBuf, poll_ms: u64) -> Result<()> {
    let pool = pool(cli, &cli.sync).await?;
    let s = storage(pool, Duration::from_millis(poll_ms));
    let records: Records = Arc::default();
    let mut file = std::fs::File::create(stats)
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
        .build_fn(handle);
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
            s.push(BenchJob {
                sent_us: start_us + offset.as_micros() as u64,
                sleep_ms: 0,
            })
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
        let parts = s
            .push(BenchJob {
                sent_us: 0,
                sleep_ms: 0,
            })
            .await?;
        loop {
            let job: Option<Request<BenchJob, SqlContext>> = s.fetch_by_id(&parts.task_id).await?;
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
