//! [`GroupCommitWriter`]: one thread owns all writes to a store.
//!
//! Callers send [`Write`]s over a channel. The writer blocks for the first
//! one, then takes everything else already waiting (up to a batch limit) and
//! applies it all in one [`Store::apply`] call — one transaction, one fsync.
//! While that commit is in progress new writes pile up and form the next
//! batch, so the batch size grows with load by itself and the fsync cost is
//! shared by every task in it.
//!
//! Writes are applied in the order they were sent: a task's insert always
//! precedes its updates, whichever request sent them.

use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

use crate::{Store, StoreError, Write, WriteOutcome};

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 8_192;

type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

/// The writer thread has stopped (its store panicked or it was shut down).
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the store writer has stopped")]
pub struct WriterClosed;

/// A handle to the writer thread. Cloning it is cheap; the thread stops when
/// every handle is dropped, after committing what was sent.
#[derive(Clone, Debug)]
pub struct GroupCommitWriter {
    tx: mpsc::Sender<(Write, Option<Reply>)>,
}

impl GroupCommitWriter {
    /// Starts the writer thread for `store`.
    pub fn start<S: Store>(store: S) -> (GroupCommitWriter, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<(Write, Option<Reply>)>();
        let handle = thread::Builder::new()
            .name("dispatch-store-writer".into())
            .spawn(move || run(store, rx))
            .expect("spawning the store writer thread");
        (GroupCommitWriter { tx }, handle)
    }

    /// Queues a write and returns a receiver that resolves once it is
    /// committed (or failed with its batch).
    pub fn write(
        &self,
        w: Write,
    ) -> Result<oneshot::Receiver<Result<WriteOutcome, StoreError>>, WriterClosed> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((w, Some(reply))).map_err(|_| WriterClosed)?;
        Ok(rx)
    }

    /// Queues a write whose outcome nobody waits for. It is still applied in
    /// order; a failure is logged.
    pub fn write_detached(&self, w: Write) -> Result<(), WriterClosed> {
        self.tx.send((w, None)).map_err(|_| WriterClosed)
    }

    /// Writes and waits for the commit, from async code.
    pub async fn commit(&self, w: Write) -> Result<WriteOutcome, StoreError> {
        let rx = self
            .write(w)
            .map_err(|e| StoreError::new(crate::ErrorKind::Unavailable, e.to_string()))?;
        rx.await
            .map_err(|_| StoreError::new(crate::ErrorKind::Unavailable, WriterClosed.to_string()))?
    }
}

fn run<S: Store>(store: S, rx: mpsc::Receiver<(Write, Option<Reply>)>) {
    let mut writes = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some((w, r)) = next {
            writes.push(w);
            replies.push(r);
            next = if writes.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        match store.apply(&writes) {
            Ok(outcomes) => {
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(outcome));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = writes.len(), "store commit failed");
                for reply in replies.drain(..).flatten() {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        writes.clear();
        replies.clear();
    }
}
