//! `dispatch-bench worker --transport grpc`: one worker process on the gRPC
//! streaming protocol, written against the raw service as any language
//! would. It registers, grants its capacity as credit, and for every `Tasks`
//! message the scheduler pushes, reports all of them as succeeded (null
//! result) in one `Reports` message followed by one `Credit` for the slots
//! they freed.
//!
//! A `bench.sleep` task (the peer benchmark's W3) holds its slot for the
//! `sleep_ms` of its payload, on a blocking thread so that the sleep is as
//! precise as the operating system's; its report and credit go out when it
//! ends.
//!
//! Latency samples and the final JSON line are the same as the HTTP
//! worker's (with the first start and last end of the sleep tasks too);
//! `polls` counts the `Tasks` messages received. It stops when
//! its stdin is closed: it half-closes the stream (a graceful leave) and
//! waits for the scheduler to end it.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use dispatch_grpc::WorkerServiceClient;
use dispatch_grpc::pb::{self, scheduler_message::Kind};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::worker::{
    LATENCY_TYPE, NOOP_TYPE, ROUNDTRIP_TYPE, SLEEP_TYPE, Span, WorkerArgs, sent_us, sleep_ms,
    stop_on_stdin_end,
};

/// Runs the worker until its stdin closes.
pub(crate) async fn run(args: WorkerArgs) -> Result<()> {
    let mut stop = stop_on_stdin_end();
    let channel = Endpoint::from_shared(args.server.clone())
        .context("bad server URL")?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("cannot connect")?;
    let mut client = WorkerServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(1024);
    let capacity = u32::try_from(args.capacity).context("capacity")?;
    tx.send(pb::WorkerMessage::register(pb::Register {
        name: Some(args.name.clone()),
        types: vec![
            NOOP_TYPE.to_owned(),
            LATENCY_TYPE.to_owned(),
            SLEEP_TYPE.to_owned(),
            ROUNDTRIP_TYPE.to_owned(),
        ],
        labels: Default::default(),
        capacity,
        weight: None,
    }))
    .await?;
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .context("cannot open the stream")?
        .into_inner();
    let heartbeat = match inbound.message().await? {
        Some(pb::SchedulerMessage {
            kind: Some(Kind::Registered(r)),
        }) => Duration::from_millis(r.heartbeat_ms.max(1)),
        other => bail!("the scheduler answered Register with {other:?}"),
    };
    tx.send(pb::WorkerMessage::credit(capacity)).await?;
    let mut tx = Some(tx);
    let mut tick = tokio::time::interval(heartbeat);
    // Sleep tasks report here when their sleep ends, with the time it did.
    let (slept_tx, mut slept_rx) = mpsc::unbounded_channel::<(String, u64)>();
    let mut noop_span = Span::default();
    let mut sleep_span = Span::default();

    let (mut sent_at_us, mut latency_us): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    let (mut completed, mut conflicts, mut pushes) = (0u64, 0u64, 0u64);
    let (mut noop_pushes, mut noop_completed) = (0u64, 0u64);
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(message) = message.context("the stream broke")? else {
                    break;
                };
                match message.kind {
                    Some(Kind::Tasks(batch)) => {
                        let received = crate::epoch_us();
                        pushes += 1;
                        noop_pushes += u64::from(batch.tasks.iter().any(|t| t.r#type == NOOP_TYPE));
                        let mut reports = Vec::with_capacity(batch.tasks.len());
                        let mut noops = false;
                        for t in batch.tasks {
                            if t.r#type == SLEEP_TYPE {
                                sleep_span.start(received);
                                let pause = Duration::from_millis(sleep_ms(&t.payload_json));
                                let done = slept_tx.clone();
                                tokio::task::spawn_blocking(move || {
                                    std::thread::sleep(pause);
                                    let _ = done.send((t.id, crate::epoch_us()));
                                });
                                continue;
                            }
                            if t.r#type == LATENCY_TYPE {
                                if let Some(sent) = sent_us(&t.payload_json) {
                                    sent_at_us.push(sent);
                                    latency_us.push(received.saturating_sub(sent));
                                }
                            } else if t.r#type == NOOP_TYPE {
                                noop_completed += 1;
                                noops = true;
                            }
                            completed += 1;
                            reports.push(pb::Report { task_id: t.id, outcome: None });
                        }
                        if noops {
                            // A no-op ends as soon as the batch is run.
                            noop_span.start(received);
                            noop_span.end(crate::epoch_us());
                        }
                        send_reports(tx.as_ref(), reports).await?;
                    }
                    Some(Kind::ReportAcks(acks)) => {
                        conflicts += acks.acks.iter().filter(|a| a.status != 200).count() as u64;
                    }
                    _ => {}
                }
            }
            Some((id, ended)) = slept_rx.recv() => {
                sleep_span.end(ended);
                let mut reports = vec![pb::Report { task_id: id, outcome: None }];
                while let Ok((id, ended)) = slept_rx.try_recv() {
                    sleep_span.end(ended);
                    reports.push(pb::Report { task_id: id, outcome: None });
                }
                completed += reports.len() as u64;
                send_reports(tx.as_ref(), reports).await?;
            }
            _ = tick.tick(), if tx.is_some() => {
                if let Some(tx) = &tx {
                    tx.send(pb::WorkerMessage::heartbeat()).await?;
                }
            }
            // Half-close: the scheduler takes it as a leave and ends the
            // stream once that is durable.
            _ = stop.wait_for(|s| *s), if tx.is_some() => tx = None,
        }
    }
    let report = json!({
        "name": args.name,
        "completed": completed,
        "conflicts": conflicts,
        "polls": pushes,
        "busy_polls": pushes,
        "noop_polls": noop_pushes,
        "noop_completed": noop_completed,
        "noop_first_start_us": noop_span.first_start_us,
        "noop_last_end_us": noop_span.last_end_us,
        "sleep_first_start_us": sleep_span.first_start_us,
        "sleep_last_end_us": sleep_span.last_end_us,
        "sent_us": sent_at_us,
        "latency_us": latency_us,
    });
    println!("{report}");
    Ok(())
}

/// Sends finished tasks' reports, then one credit for the slots they freed.
async fn send_reports(
    tx: Option<&mpsc::Sender<pb::WorkerMessage>>,
    reports: Vec<pb::Report>,
) -> Result<()> {
    if reports.is_empty() {
        return Ok(());
    }
    let freed = reports.len() as u32;
    if let Some(tx) = tx {
        tx.send(pb::WorkerMessage::reports(reports)).await?;
        tx.send(pb::WorkerMessage::credit(freed)).await?;
    }
    Ok(())
}
