//! The in-process harness of the SDK tests: a real scheduler on a loopback
//! port with a SQLite store in a temporary folder, and a `Worker` running in
//! the background until stopped. The scenarios both transports run are in
//! [`scenarios`].

#![allow(dead_code)]

pub(crate) mod scenarios;

use std::net::SocketAddr;
use std::time::Duration;

use dispatch_client::Client;
use dispatch_proto::{SubmitTask, TaskJson};
use dispatch_worker::{TaskContext, TaskError, WorkerBuilder};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

/// A scheduler served in-process.
pub(crate) struct Scheduler {
    server: Option<dispatch_server::RunningServer>,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) addr: SocketAddr,
    pub(crate) client: Client,
}

impl Scheduler {
    /// A scheduler with a 900 ms lease (heartbeats every 300 ms).
    pub(crate) async fn start() -> Scheduler {
        Scheduler::with_lease(900).await
    }

    /// A scheduler with this lease on a fresh data folder.
    pub(crate) async fn with_lease(lease_ms: u64) -> Scheduler {
        let dir = tempfile::tempdir().unwrap();
        Scheduler::start_with("127.0.0.1:0".parse().unwrap(), dir, lease_ms).await
    }

    /// A scheduler with a 900 ms lease on `addr` and the data folder `dir`.
    pub(crate) async fn start_at(addr: SocketAddr, dir: tempfile::TempDir) -> Scheduler {
        Scheduler::start_with(addr, dir, 900).await
    }

    async fn start_with(addr: SocketAddr, dir: tempfile::TempDir, lease_ms: u64) -> Scheduler {
        let mut config = dispatch_server::ServerConfig::new(addr, dir.path().display().to_string());
        config.lease_ms = lease_ms;
        let store = dispatch_store_sqlite::SqliteStore::open(
            dir.path(),
            dispatch_store_sqlite::Durability::Durable,
        )
        .unwrap();
        let server = dispatch_server::start(config, std::sync::Arc::new(store))
            .await
            .unwrap();
        let addr = server.local_addr();
        let client = Client::new(&format!("http://{addr}")).unwrap();
        Scheduler {
            server: Some(server),
            dir,
            addr,
            client,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    pub(crate) async fn submit(
        &self,
        kind: &str,
        payload: serde_json::Value,
        tweak: impl FnOnce(&mut SubmitTask),
    ) -> String {
        let mut t = SubmitTask::new(kind, serde_json::value::to_raw_value(&payload).unwrap());
        tweak(&mut t);
        self.client.submit(&t).await.unwrap().0.id
    }

    /// Waits (bounded) until the task is terminal.
    pub(crate) async fn ended(&self, id: &str) -> TaskJson {
        let t = self.client.wait(id, Duration::from_secs(10)).await.unwrap();
        assert!(
            matches!(t.state.as_str(), "succeeded" | "dead" | "cancelled"),
            "task {id} still {} after 10 s",
            t.state
        );
        t
    }
}

/// Runs a worker in the background; stops it (gracefully) on `stop`.
pub(crate) struct Running {
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), dispatch_worker::WorkerError>>,
}

impl Running {
    pub(crate) fn spawn(builder: WorkerBuilder) -> Running {
        let worker = builder
            .poll_wait(Duration::from_millis(300))
            .build()
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        Running {
            stop: Some(stop),
            handle,
        }
    }

    /// Drops the worker where it stands, as if its process died.
    pub(crate) async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    /// Stops the worker gracefully; it must return `Ok` within 10 s.
    pub(crate) async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .expect("the worker stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

/// The payload of `math.add`.
#[derive(Deserialize)]
pub(crate) struct Add {
    pub(crate) a: i64,
    pub(crate) b: i64,
}

/// The `math.add` handler.
pub(crate) async fn add(_ctx: TaskContext, p: Add) -> Result<serde_json::Value, TaskError> {
    Ok(json!({ "sum": p.a + p.b }))
}
