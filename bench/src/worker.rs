//! `dispatch-bench worker`: one HTTP worker process, as any language would
//! write it. It registers, then loops on `POST /v1/workers/{id}/poll`
//! carrying the previous round's results; every task is a no-op that
//! succeeds at once with a null result.
//!
//! For a task whose payload has `sent_us` (microseconds since the epoch,
//! when the benchmark meant to submit it), the worker records
//! `received - sent_us` as that task's submit-to-start latency.
//!
//! It stops when its stdin is closed: it reports what it still holds,
//! leaves, and prints one JSON line with its counts and latency samples.

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use dispatch_client::{Client, ClientError};
use dispatch_proto::{PollRequest, RegisterWorker, ReportResult};
use serde_json::json;
use tokio::sync::watch;

/// Task types the benchmark submits.
pub(crate) const NOOP_TYPE: &str = "bench.noop";
pub(crate) const LATENCY_TYPE: &str = "bench.latency";
/// The round-trip phase's tasks: no-ops kept apart from the drain's, so that
/// the drain's span ends with the drain.
pub(crate) const ROUNDTRIP_TYPE: &str = "bench.roundtrip";
/// Sleeps `sleep_ms` (payload) before succeeding; gRPC workers only.
pub(crate) const SLEEP_TYPE: &str = "bench.sleep";

/// Consecutive failed polls before the worker gives up.
const MAX_ERRORS: u32 = 50;

#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    /// Server URL.
    #[arg(long)]
    pub(crate) server: String,
    /// Display name.
    #[arg(long, default_value = "bench-worker")]
    pub(crate) name: String,
    /// Tasks held at once; also the poll's `max` (or the stream's credit).
    #[arg(long, default_value_t = 256)]
    pub(crate) capacity: i64,
    /// Longest a poll waits when nothing is assigned.
    #[arg(long, default_value_t = 500)]
    wait_ms: i64,
    /// `http` (long-poll) or `grpc` (streaming, see `grpc_worker`).
    #[arg(long, default_value = "http", value_parser = ["http", "grpc"])]
    transport: String,
}

/// Runs the worker until its stdin closes.
pub(crate) async fn run(args: WorkerArgs) -> Result<()> {
    if args.transport == "grpc" {
        return crate::grpc_worker::run(args).await;
    }
    let client = Client::new(&args.server)?;
    let stop = stop_on_stdin_end();

    let reg = RegisterWorker {
        name: Some(args.name.clone()),
        types: Some(vec![
            NOOP_TYPE.to_owned(),
            LATENCY_TYPE.to_owned(),
            ROUNDTRIP_TYPE.to_owned(),
        ]),
        labels: None,
        capacity: Some(args.capacity),
        weight: None,
    };
    let mut id = client.register(&reg).await.context("cannot register")?.id;

    let mut done: Vec<ReportResult> = Vec::new();
    // Parallel: when each latency task was meant to be sent, and how long
    // it took to start.
    let (mut sent_at_us, mut latency_us): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    let (mut completed, mut conflicts, mut polls, mut busy_polls) = (0u64, 0u64, 0u64, 0u64);
    // Polls that brought no-op (drain) tasks, and those tasks.
    let (mut noop_polls, mut noop_completed) = (0u64, 0u64);
    let mut noop_span = Span::default();
    let mut errors = 0u32;
    loop {
        let stopping = *stop.borrow();
        if stopping && done.is_empty() {
            break;
        }
        let results = (!done.is_empty()).then(|| std::mem::take(&mut done));
        let req = PollRequest {
            max: Some(args.capacity),
            wait_ms: Some(if stopping { 0 } else { args.wait_ms }),
            results,
            running: None,
            last_handout: None,
        };
        let reply = match client.poll(&id, &req).await {
            Ok(r) => {
                errors = 0;
                r
            }
            Err(ClientError::Api(p)) if p.status == 404 => {
                // The lease was lost: what we held was requeued. Join again.
                eprintln!("{}: lease lost, registering again", args.name);
                id = client
                    .register(&reg)
                    .await
                    .context("cannot register again")?
                    .id;
                continue;
            }
            Err(e) => {
                errors += 1;
                if errors >= MAX_ERRORS {
                    bail!(
                        "{}: {errors} polls failed in a row, the last with: {e}",
                        args.name
                    );
                }
                // Keep the results for the next try.
                if let Some(r) = req.results {
                    done = r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let received = crate::epoch_us();
        polls += 1;
        busy_polls += u64::from(!reply.tasks.is_empty());
        noop_polls += u64::from(reply.tasks.iter().any(|t| t.kind == NOOP_TYPE));
        conflicts += reply.results.iter().filter(|s| s.status != 200).count() as u64;
        let noops = reply.tasks.iter().any(|t| t.kind == NOOP_TYPE);
        for t in reply.tasks {
            if t.kind == LATENCY_TYPE {
                if let Some(sent) = sent_us(t.payload.get()) {
                    sent_at_us.push(sent);
                    latency_us.push(received.saturating_sub(sent));
                }
            } else if t.kind == NOOP_TYPE {
                noop_completed += 1;
            }
            completed += 1;
            done.push(ReportResult {
                task_id: t.id,
                ..ReportResult::default()
            });
        }
        if noops {
            // A no-op ends as soon as the poll's tasks are run.
            noop_span.start(received);
            noop_span.end(crate::epoch_us());
        }
    }
    let _ = client.leave(&id).await;
    let report = json!({
        "name": args.name,
        "completed": completed,
        "conflicts": conflicts,
        "polls": polls,
        "busy_polls": busy_polls,
        "noop_polls": noop_polls,
        "noop_completed": noop_completed,
        "noop_first_start_us": noop_span.first_start_us,
        "noop_last_end_us": noop_span.last_end_us,
        "sent_us": sent_at_us,
        "latency_us": latency_us,
    });
    println!("{report}");
    Ok(())
}

/// When a worker started the first task of a kind and ended the last one,
/// in microseconds since the Unix epoch (None before any): the benchmark
/// times the drain and sleep phases from the earliest start to the latest
/// end over its workers, as the peer benchmark does for every peer.
#[derive(Default, Clone, Copy)]
pub(crate) struct Span {
    pub(crate) first_start_us: Option<u64>,
    pub(crate) last_end_us: Option<u64>,
}

impl Span {
    pub(crate) fn start(&mut self, us: u64) {
        self.first_start_us = Some(self.first_start_us.map_or(us, |f| f.min(us)));
    }

    pub(crate) fn end(&mut self, us: u64) {
        self.last_end_us = Some(self.last_end_us.map_or(us, |l| l.max(us)));
    }

    /// The span of several workers' spans.
    pub(crate) fn merge(&mut self, other: Span) {
        if let Some(s) = other.first_start_us {
            self.start(s);
        }
        if let Some(e) = other.last_end_us {
            self.end(e);
        }
    }

    /// From the first start to the last end (None unless both are known).
    pub(crate) fn elapsed(&self) -> Option<std::time::Duration> {
        match (self.first_start_us, self.last_end_us) {
            (Some(s), Some(e)) => Some(std::time::Duration::from_micros(e.saturating_sub(s))),
            _ => None,
        }
    }
}

/// Flips to true when stdin closes (the benchmark's signal to stop).
pub(crate) fn stop_on_stdin_end() -> watch::Receiver<bool> {
    let (stop_tx, stop) = watch::channel(false);
    // A thread, not tokio's stdin: it only has to notice the end.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = stop_tx.send(true);
    });
    stop
}

/// The `sent_us` field of a latency task's payload.
pub(crate) fn sent_us(payload: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()?
        .get("sent_us")?
        .as_u64()
}

/// The `sleep_ms` field of a sleep task's payload (0 when absent).
pub(crate) fn sleep_ms(payload: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("sleep_ms")?.as_u64())
        .unwrap_or(0)
}
