//! `dispatch-chaos`: Dispatch under fire, over loopback, with real
//! processes.
//!
//! - The **chaos run** (the default command) starts a durable `dispatch
//!   server` and worker processes on both transports (this binary again,
//!   `dispatch-chaos worker`), submits `--tasks` tasks in batches with
//!   idempotency keys, and meanwhile SIGKILLs workers (each replaced) and
//!   the server (restarted on the same data and port) on a seeded
//!   schedule. Once every acknowledged task is terminal it reports the
//!   tasks lost (must be 0) and every duplicate execution, each explained
//!   by a kill or not (must be 0 not). Exits 1 if the run failed. With
//!   `--store postgres --replicas N` it starts its own PostgreSQL cluster
//!   and N replicas, and strikes the leader (SIGKILL or SIGSTOP past its
//!   lease) instead of killing the server, timing every takeover.
//! - **`flood`** floods a bounded server with batch submissions and
//!   reports its peak memory, the tasks accepted and refused (429 with
//!   `Retry-After`), and checks that every accepted task is stored.
//!
//! Both are bounded by `--timeout-secs`; every child process and the
//! temporary folder are removed on exit, error or Ctrl-C. Usually run
//! through `bench/chaos/run`, which builds release binaries first.

mod analysis;
mod execlog;
mod flood;
mod pgcluster;
mod plan;
mod procs;
mod report;
mod run;
mod servers;
mod submit;
mod worker;

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dispatch-chaos",
    about = "Kill Dispatch's workers and server during a run and check nothing is lost; or flood it",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    chaos: run::ChaosArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Flood a bounded server with submissions; report memory and refusals.
    Flood(flood::FloodArgs),
    /// One chaos worker process (started by the chaos run itself).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The flood's plain reqwest clients need a process-wide TLS provider
    // (the workspace builds reqwest without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dispatch-chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Some(Cmd::Worker(args)) => worker::run(args).await.map(|()| true),
            Some(Cmd::Flood(args)) => {
                let report = bounded(args.timeout_secs, flood::run(&args)).await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(report.to_json())?);
                } else {
                    report.print_table();
                }
                Ok(report.passed())
            }
            None => {
                let args = cli.chaos;
                // A little before the hard bound: the run's own check then
                // says what was not done, with the servers' logs.
                let deadline = Instant::now() + Duration::from_secs(args.timeout_secs)
                    - Duration::from_secs(args.timeout_secs / 20);
                let work = run::run(&args, deadline);
                let report = if args.stop_when_stdin_closes {
                    bounded(args.timeout_secs, until_stdin_closes(work)).await?
                } else {
                    bounded(args.timeout_secs, work).await?
                };
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report.to_json())?);
                } else {
                    report.print_table();
                }
                Ok(report.passed())
            }
        }
    });
    // Leave the runtime without waiting for tasks still blocked on I/O.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dispatch-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs `work` until it ends or standard input closes (the parent holding
/// it is gone); dropping it then stops every child it started.
async fn until_stdin_closes<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    let (closed, on_close) = tokio::sync::oneshot::channel::<()>();
    // A plain thread: a read blocked on stdin must not hold the runtime.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = closed.send(());
    });
    tokio::select! {
        r = work => r,
        _ = on_close => bail!("standard input closed: the parent is gone"),
    }
}

/// Runs `work` until it ends, `secs` pass, or Ctrl-C or SIGTERM arrives;
/// dropping it on the other branches stops every child it started and
/// removes its temporary folder.
async fn bounded<T>(secs: u64, work: impl Future<Output = Result<T>>) -> Result<T> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(secs), work) => {
            r.map_err(|_| anyhow!("did not finish within {secs} s (--timeout-secs)"))?
        }
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}
