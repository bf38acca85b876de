//! Many workers in one process, each with its own connection and
//! registration: a fleet for checking how many connected workers one
//! scheduler holds. Each runs `fleet.noop` tasks one at a time and counts
//! them.
//!
//! ```sh
//! dispatch server --durability relaxed &
//! cargo run --release -p dispatch-worker --example fleet -- 1000 grpc
//! # then submit fleet.noop tasks; GET /v1/workers lists the 1000 workers
//! ```
//!
//! Arguments: the number of workers (default 1000) and the transport
//! (`grpc`, the default, or `http`). It stops on Ctrl-C and prints how many
//! tasks each worker ran (min, max, total).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dispatch_worker::{TaskContext, Transport, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let transport = match args.next().as_deref() {
        None | Some("grpc") => Transport::Grpc,
        Some("http") => Transport::Http,
        Some(other) => return Err(format!("unknown transport {other:?}").into()),
    };
    let server =
        std::env::var("DISPATCH_SERVER").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let counts: Vec<Arc<AtomicU64>> = (0..size).map(|_| Arc::default()).collect();
    let mut running = tokio::task::JoinSet::new();
    for (i, count) in counts.iter().enumerate() {
        let count = count.clone();
        let worker = Worker::builder(server.clone())
            .name(format!("fleet-{i}"))
            .transport(transport)
            .concurrency(1)
            .handle("fleet.noop", move |_: TaskContext, _: serde_json::Value| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .build()?;
        let mut stop = stop_rx.clone();
        running.spawn(async move {
            worker
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    eprintln!("{size} workers started; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    let _ = stop_tx.send(true);
    while let Some(done) = running.join_next().await {
        if let Ok(Err(e)) = done {
            eprintln!("a worker stopped with an error: {e}");
        }
    }
    let ran: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!(
        "workers {size}: tasks run min {} max {} total {}",
        ran.iter().min().unwrap_or(&0),
        ran.iter().max().unwrap_or(&0),
        ran.iter().sum::<u64>()
    );
    Ok(())
}
