//! One chaos worker process (`dispatch-chaos worker`): an SDK worker on the
//! HTTP or gRPC transport whose handler sleeps for the task's `sleep_ms`
//! and records its start and its finished work in an execution log. It dies
//! with its parent, so a killed run leaves no worker behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use dispatch_worker::{TaskContext, TaskError, Transport, Worker};
use serde::Deserialize;
use serde_json::json;

use crate::execlog::{ExecLog, Mark};

/// The one task type of the chaos run.
pub(crate) const TASK_TYPE: &str = "chaos.work";

#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    /// The server's base URL.
    #[arg(long)]
    server: String,
    /// The worker's name.
    #[arg(long)]
    name: String,
    /// `http` or `grpc`.
    #[arg(long, value_parser = ["http", "grpc"])]
    transport: String,
    /// Tasks run at once.
    #[arg(long)]
    concurrency: usize,
    /// The execution log to append to.
    #[arg(long)]
    log: PathBuf,
}

/// A chaos task's payload.
#[derive(Deserialize)]
struct Work {
    sleep_ms: u64,
}

pub(crate) async fn run(args: WorkerArgs) -> Result<()> {
    // Die with the chaos process, even if it is killed itself.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("cannot ask for a parent death signal")?;
    let log = Arc::new(ExecLog::open(&args.log)?);
    let transport = match args.transport.as_str() {
        "grpc" => Transport::Grpc,
        _ => Transport::Http,
    };
    let handler = move |ctx: TaskContext, work: Work| {
        let log = log.clone();
        async move {
            record(&log, Mark::Start, &ctx);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(work.sleep_ms)) => {}
                _ = ctx.cancelled() => return Err(TaskError::retry("taken back")),
            }
            record(&log, Mark::Done, &ctx);
            Ok(json!({ "pid": log.pid(), "attempt": ctx.attempt }))
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    Worker::builder(args.server)
        .name(args.name)
        .concurrency(args.concurrency)
        .transport(transport)
        .poll_wait(Duration::from_millis(500))
        .handle(TASK_TYPE, handler)
        .build()?
        .run(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}

/// Writes one log line; a worker that cannot keep its log exits at once
/// (the run then fails on the unexpected exit) rather than run unrecorded.
fn record(log: &ExecLog, mark: Mark, ctx: &TaskContext) {
    if let Err(e) = log.write(mark, &ctx.id, ctx.attempt) {
        eprintln!("cannot write the execution log: {e}");
        std::process::exit(3);
    }
}
