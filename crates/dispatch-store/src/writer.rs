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
//!
//! A batch that holds only writes nobody waits for (a detached write, or
//! one whose receiver was dropped: a task handed to a worker, a timer's
//! transition) lingers up to [`LINGER`] for a write someone waits for, and
//! commits with it. Nothing a caller was told depends on those writes, so
//! a crash in that window does what a crash just before them would; and a
//! task's start then usually shares the commit of the next submission or of
//! its own result instead of costing a commit (and, when durable, an fsync)
//! of its own.
//!
//! When a task's start and its outcome share a batch, the store is sent the
//! outcome alone: it stands for both ([`crate::coalesce`] says when it
//! may), so the task's row and indexes change once instead of twice.
//!
//! # When the store fails
//!
//! A write is sent one of two ways:
//! - [`GroupCommitWriter::write`]: *fail fast*. If its commit fails, its
//!   caller gets the error and the write is gone (a submission answered 503
//!   was never accepted). Nothing of it is stored: the batch's transaction
//!   rolled back.
//! - [`GroupCommitWriter::write_retained`] and
//!   [`GroupCommitWriter::write_detached`]: *retained*. The write records a
//!   change the caller has already made in memory (a task's state
//!   transition), so it must reach the store eventually. If its commit
//!   fails, its waiter (if any) still gets the error, but the writer keeps
//!   the write and commits it, before anything sent later, once the store
//!   works again: retrying after a back-off (50 ms doubling to 2 s), and at
//!   every new write that arrives meanwhile.
//!
//! A failed batch is taken apart so that one bad write does not sink the
//! others: the retained writes are tried alone, then, if they went through,
//! each fail-fast write alone. A retained write that fails for a reason
//! other than an unavailable store (a bug, never an outage) is dropped with
//! an error in the log rather than retried forever. [`StoreHealth`] tells
//! the server whether the store is failing, so it can say so in `/healthz`
//! and in its metrics.
//!
//! # Fencing
//!
//! A writer started with [`GroupCommitWriter::start_fenced`] belongs to a
//! leader's term: it begins every batch with a [`Write::Fence`] naming the
//! partition and the epoch it leads under. Once a batch is refused as
//! [`ErrorKind::Fenced`] (another replica took over), the term is over for
//! good: that batch's writes, the retained ones and every later write fail
//! with the same error without reaching the store, and
//! [`StoreHealth::is_fenced`] turns true so the server steps down.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::{ErrorKind, Store, StoreError, Write, WriteOutcome};

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 8_192;

/// Longest a batch of writes nobody waits for waits for company.
pub const LINGER: Duration = Duration::from_millis(2);

/// First wait before retrying retained writes after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between retries of retained writes.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Retries of retained writes once every handle is dropped (shutdown),
/// before giving up on them.
const RETRIES_AT_SHUTDOWN: u32 = 5;

type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

/// The writer thread has stopped (its store panicked or it was shut down).
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the store writer has stopped")]
pub struct WriterClosed;

/// Whether the store is taking writes, as the writer last saw it.
#[derive(Debug, Default)]
pub struct StoreHealth {
    failing: AtomicBool,
    failures: AtomicU64,
    retained: AtomicUsize,
    fenced: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl StoreHealth {
    /// True from a commit failing because the store is unavailable until
    /// a later commit succeeds.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// True once a batch was refused for a stale epoch: another replica
    /// leads, and this writer stores nothing more.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Failed commits since the writer started.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Retained writes waiting for the store to work again.
    pub fn retained(&self) -> usize {
        self.retained.load(Ordering::Relaxed)
    }

    /// The message of the last failure, while the store is failing.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn failed(&self, e: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if e.kind == ErrorKind::Fenced {
            self.fenced.store(true, Ordering::Relaxed);
        }
        if e.kind == ErrorKind::Unavailable {
            self.failing.store(true, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
    }

    fn committed(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!("the store takes writes again");
        }
    }
}

/// One write on its way, with how to answer it.
struct Item {
    write: Write,
    reply: Option<Reply>,
    retain: bool,
}

impl Item {
    /// Whether anyone waits for this write's commit.
    fn awaited(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| !r.is_closed())
    }
}

/// A handle to the writer thread. Cloning it is cheap; the thread stops when
/// every handle is dropped, after committing what was sent.
#[derive(Clone, Debug)]
pub struct GroupCommitWriter {
    tx: mpsc::Sender<Item>,
    health: Arc<StoreHealth>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("write", &self.write)
            .field("retain", &self.retain)
            .finish_non_exhaustive()
    }
}

impl GroupCommitWriter {
    /// Starts the writer thread for `store`.
    pub fn start<S: Store>(store: S) -> (GroupCommitWriter, thread::JoinHandle<()>) {
        Self::spawn(store, None, LINGER)
    }

    /// Starts the writer thread for `store`, with batches nobody waits for
    /// lingering up to `linger` instead of [`LINGER`].
    pub fn start_lingering<S: Store>(
        store: S,
        linger: Duration,
    ) -> (GroupCommitWriter, thread::JoinHandle<()>) {
        Self::spawn(store, None, linger)
    }

    /// Starts the writer thread of a leader's term: every batch is fenced
    /// by `partition` at `epoch` (see the module's header).
    pub fn start_fenced<S: Store>(
        store: S,
        partition: &str,
        epoch: u64,
    ) -> (GroupCommitWriter, thread::JoinHandle<()>) {
        let fence = Write::Fence {
            partition: partition.to_owned(),
            epoch,
        };
        Self::spawn(store, Some(fence), LINGER)
    }

    fn spawn<S: Store>(
        store: S,
        fence: Option<Write>,
        linger: Duration,
    ) -> (GroupCommitWriter, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Item>();
        let health = Arc::new(StoreHealth::default());
        let thread_health = health.clone();
        let handle = thread::Builder::new()
            .name("dispatch-store-writer".into())
            .spawn(move || {
                let store = Fenced { store, fence };
                run(store, rx, &thread_health, linger)
            })
            .expect("spawning the store writer thread");
        (GroupCommitWriter { tx, health }, handle)
    }

    /// The store's health as the writer sees it.
    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.health
    }

    /// Queues a fail-fast write and returns a receiver that resolves once
    /// it is committed, or with the error that stopped it (the write is
    /// then dropped).
    pub fn write(
        &self,
        w: Write,
    ) -> Result<oneshot::Receiver<Result<WriteOutcome, StoreError>>, WriterClosed> {
        self.send(w, true, false)
    }

    /// Queues a retained write: its receiver resolves once it is committed,
    /// or with the error of its first failed commit, after which the writer
    /// keeps retrying it until the store takes it.
    pub fn write_retained(
        &self,
        w: Write,
    ) -> Result<oneshot::Receiver<Result<WriteOutcome, StoreError>>, WriterClosed> {
        self.send(w, true, true)
    }

    /// Queues a retained write whose outcome nobody waits for.
    pub fn write_detached(&self, w: Write) -> Result<(), WriterClosed> {
        self.send(w, false, true).map(drop)
    }

    fn send(
        &self,
        write: Write,
        wait: bool,
        retain: bool,
    ) -> Result<oneshot::Receiver<Result<WriteOutcome, StoreError>>, WriterClosed> {
        let (reply, rx) = oneshot::channel();
        let item = Item {
            write,
            reply: wait.then_some(reply),
            retain,
        };
        self.tx.send(item).map_err(|_| WriterClosed)?;
        Ok(rx)
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

/// The store as the writer sees it: each batch behind the term's fence.
struct Fenced<S> {
    store: S,
    fence: Option<Write>,
}

impl<S: Store> Fenced<S> {
    /// Applies `writes` behind the fence, without the updates that later
    /// updates of the same task stand for ([`crate::coalesce`]).
    fn apply(&self, writes: Vec<Write>) -> (Vec<Write>, Result<Vec<WriteOutcome>, StoreError>) {
        crate::coalesce::apply_coalesced(writes, |writes| self.apply_fenced(writes))
    }

    fn apply_fenced(
        &self,
        writes: Vec<Write>,
    ) -> (Vec<Write>, Result<Vec<WriteOutcome>, StoreError>) {
        let Some(fence) = &self.fence else {
            let result = self.store.apply(&writes);
            return (writes, result);
        };
        let mut fenced = Vec::with_capacity(writes.len() + 1);
        fenced.push(fence.clone());
        fenced.extend(writes);
        let result = self.store.apply(&fenced).map(|mut outcomes| {
            outcomes.remove(0);
            outcomes
        });
        fenced.remove(0);
        (fenced, result)
    }
}

fn run<S: Store>(
    store: Fenced<S>,
    rx: mpsc::Receiver<Item>,
    health: &StoreHealth,
    linger: Duration,
) {
    // Retained writes whose commit failed, oldest first: they go before
    // anything newer.
    let mut retained: Vec<Item> = Vec::new();
    let mut backoff = MIN_BACKOFF;
    let mut closed = false;
    let mut shutdown_tries = 0;
    loop {
        let mut batch = std::mem::take(&mut retained);
        let retained_none = batch.is_empty();
        if !closed {
            let first = if batch.is_empty() {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(backoff)
            };
            match first {
                Ok(item) => batch.push(item),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
            }
            if retained_none && !closed && !batch.iter().any(Item::awaited) {
                closed = wait_for_company(&rx, &mut batch, linger);
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        if health.is_fenced() {
            let e = StoreError::new(
                ErrorKind::Fenced,
                "another replica leads: this one's term is over",
            );
            for item in batch {
                answer(item.reply, Err(e.clone()));
            }
            continue;
        }
        if closed {
            if shutdown_tries == RETRIES_AT_SHUTDOWN {
                tracing::error!(
                    writes = batch.len(),
                    "stopping with state changes the store never took; at the next start the store's older states are recovered"
                );
                return;
            }
            if shutdown_tries > 0 {
                thread::sleep(backoff);
            }
            shutdown_tries += 1;
        }
        retained = commit(&store, batch, health);
        health.retained.store(retained.len(), Ordering::Relaxed);
        backoff = if retained.is_empty() {
            MIN_BACKOFF
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
    }
}

/// Adds to `batch`, which nobody waits for, what arrives within `linger`,
/// until a write someone waits for arrives or the batch is full. Returns
/// whether every handle is gone.
fn wait_for_company(rx: &mpsc::Receiver<Item>, batch: &mut Vec<Item>, linger: Duration) -> bool {
    let until = Instant::now() + linger;
    while batch.len() < MAX_BATCH {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(item) => {
                let awaited = item.awaited();
                batch.push(item);
                if awaited {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => return true,
        }
    }
    false
}

/// Commits `batch`, answers every waiter, and returns the retained writes
/// that must be tried again.
fn commit<S: Store>(store: &Fenced<S>, batch: Vec<Item>, health: &StoreHealth) -> Vec<Item> {
    let (e, batch) = match apply(store, batch, health) {
        Ok(()) => return Vec::new(),
        Err(failed) => failed,
    };
    if batch.len() == 1 || e.kind == ErrorKind::Fenced {
        return give_up_or_keep(batch, &e);
    }
    let (keep, fail_fast): (Vec<Item>, Vec<Item>) = batch.into_iter().partition(|i| i.retain);
    if !keep.is_empty() {
        match apply(store, keep, health) {
            Ok(()) => {}
            Err((e, keep)) if e.kind == ErrorKind::Unavailable => {
                // The store is down: nothing else can go through now.
                for item in fail_fast {
                    answer(item.reply, Err(e.clone()));
                }
                return give_up_or_keep(keep, &e);
            }
            Err((e, keep)) => {
                // One of them is at fault: find it by committing each alone.
                let mut left = Vec::new();
                for item in keep {
                    left.extend(commit_alone(store, item, health));
                }
                if !left.is_empty() {
                    for item in fail_fast {
                        answer(item.reply, Err(e.clone()));
                    }
                    return left;
                }
            }
        }
    } else if e.kind == ErrorKind::Unavailable {
        for item in fail_fast {
            answer(item.reply, Err(e.clone()));
        }
        return Vec::new();
    }
    // The store works: each fail-fast write stands or falls alone.
    let mut left = Vec::new();
    for item in fail_fast {
        left.extend(commit_alone(store, item, health));
    }
    left
}

fn commit_alone<S: Store>(store: &Fenced<S>, item: Item, health: &StoreHealth) -> Vec<Item> {
    match apply(store, vec![item], health) {
        Ok(()) => Vec::new(),
        Err((e, items)) => give_up_or_keep(items, &e),
    }
}

/// Answers the failed writes' waiters with `e`; returns the retained ones
/// to try again when the store is unavailable, and drops the rest.
fn give_up_or_keep(items: Vec<Item>, e: &StoreError) -> Vec<Item> {
    let mut keep = Vec::new();
    for mut item in items {
        answer(item.reply.take(), Err(e.clone()));
        if !item.retain {
            continue;
        }
        if e.kind == ErrorKind::Unavailable {
            keep.push(item);
        } else if e.kind != ErrorKind::Fenced {
            tracing::error!(error = %e, write = ?item.write, "dropping a state change the store refuses");
        }
    }
    keep
}

/// Applies `items` in one transaction and answers their waiters; on
/// failure, gives the items back unanswered.
fn apply<S: Store>(
    store: &Fenced<S>,
    items: Vec<Item>,
    health: &StoreHealth,
) -> Result<(), (StoreError, Vec<Item>)> {
    let (writes, rest): (Vec<Write>, Vec<(Option<Reply>, bool)>) = items
        .into_iter()
        .map(|i| (i.write, (i.reply, i.retain)))
        .unzip();
    let (writes, result) = store.apply(writes);
    match result {
        Ok(outcomes) => {
            health.committed();
            for ((reply, _), outcome) in rest.into_iter().zip(outcomes) {
                answer(reply, Ok(outcome));
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, writes = writes.len(), "store commit failed");
            health.failed(&e);
            let items = writes
                .into_iter()
                .zip(rest)
                .map(|(write, (reply, retain))| Item {
                    write,
                    reply,
                    retain,
                })
                .collect();
            Err((e, items))
        }
    }
}

fn answer(reply: Option<Reply>, result: Result<WriteOutcome, StoreError>) {
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}
