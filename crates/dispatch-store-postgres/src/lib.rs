//! The PostgreSQL store of Dispatch: one database shared by every
//! scheduler replica (`dispatch server --store postgres://...`).
//!
//! [`PgStore`] implements [`dispatch_store::Store`]: the same contract,
//! checked by the same conformance suite, as the embedded SQLite store,
//! plus what several replicas need: leases with epochs, fenced write
//! batches, ids reserved across replicas and a fire ledger that two writers
//! cannot both win.
//!
//! # Design
//!
//! - **Driver: tokio-postgres, no TLS.** It is light (no macros, no
//!   compile-time checks, no pool of its own) and pipelines the requests of
//!   one connection: a batch's statements are all sent before the first
//!   answer is read, so a batch of many writes costs about one round trip
//!   rather than one per write. Measured on the 2-core test machine
//!   against a local PostgreSQL 15 (fsync on), one transaction of 10,000
//!   task inserts took 0.48 to 1.7 s one statement at a time, 0.27 to
//!   0.29 s pipelined, and 0.10 to 0.11 s as one `INSERT ... SELECT FROM
//!   unnest(...)`; 10,000 updates took 0.9 to 1.9 s one at a time and 0.33
//!   to 0.51 s pipelined. So consecutive inserts are one `unnest`
//!   statement, consecutive updates another, and everything of a batch is
//!   pipelined (see `write.rs`): through the store, a batch of 1,000
//!   single-task inserts with idempotency keys commits in 45 to 150 ms,
//!   1,000 updates in 25 to 100 ms, one insert of 10,000 tasks in 0.15 to
//!   0.45 s, a batch of one insert in 0.5 to 4 ms (ranges over ten rounds
//!   on a machine shared with other builds).
//!   sqlx was not taken: heavier to build, and its pool answers one query
//!   at a time per connection. Connections are plain TCP (`NoTls`): the
//!   documented use is a database on loopback or a private network.
//! - **A private runtime.** The [`Store`] trait is synchronous (the group
//!   commit writer thread and `spawn_blocking` threads call it). The store
//!   owns a one-thread tokio runtime that connects and drives its
//!   connections; a call sends its requests to them and parks its own
//!   thread until the answers come, without entering any runtime. So it
//!   works from any thread: a `spawn_blocking` thread of the server's
//!   runtime, and even an async task (which it blocks for the call, like
//!   any blocking call, but does not panic).
//! - **One writer connection, a small read pool.** [`Store::apply`] runs
//!   on the writer connection, one transaction per batch (group commit:
//!   one commit, one WAL flush, for the whole batch). Reads, leases and id
//!   reservations use one of [`PgOptions::read_connections`] connections,
//!   so a long listing never delays a commit. Task listings and
//!   `load_live` decode rows as they stream in, never holding an answer
//!   twice: `load_live` of 200,000 live tasks took 1.1 s and of 1,000,000
//!   9.4 s (490 MB peak for the process) on the test machine.
//! - **Reconnects by itself.** A connection found closed, or that failed
//!   with an `Unavailable` error, is dropped; the next call opens a fresh
//!   one (and prepares its statements again). While PostgreSQL is down or
//!   restarting, calls fail as `Unavailable`; once it is back they succeed,
//!   without restarting Dispatch. Keepalives ([`KEEPALIVE_IDLE`]) and
//!   [`TCP_USER_TIMEOUT`] make a database cut off by the network fail a
//!   call within about half a minute instead of hanging it.
//! - **Schema and migrations.** Numbered SQL files in `migrations/`,
//!   applied at open in one transaction under `pg_advisory_xact_lock`, so
//!   that replicas starting together do not race; `schema_migrations`
//!   records each version applied, and a database from a newer Dispatch is
//!   refused. Tables: `tasks` (a column per field, a partial unique index
//!   on `idempotency_key` where it is set, indexes on `(state, id)`,
//!   `(type, id)`, `(queue, id)`), `schedules`, `schedule_fires` (unique on
//!   schedule and fire time), `queue_settings`, `workers`, `leases`
//!   (partition, holder, holder_url, epoch, expires_at), `replicas` (id,
//!   url, last_seen_at) and `id_counter`. [`PgOptions::schema`] puts them
//!   in a schema of their own (created when missing).
//! - **Leases and fencing.** A lease is timed on the database's clock
//!   (`clock_timestamp()`), never a replica's. A claim by the holder of a
//!   live lease renews it at the same epoch; any other successful claim
//!   raises the epoch. A batch that starts with a [`Write::Fence`] calls
//!   `dispatch_fence(partition, epoch)` (migration 0004), which reads the
//!   partition's epoch `FOR SHARE` inside its transaction and raises when
//!   it is not the batch's: a takeover (which updates the row) waits for
//!   that batch to commit, and a batch that starts after a takeover fails
//!   as [`ErrorKind::Fenced`], storing nothing. Because the fence fails on
//!   the server, most batches (no fire, purge or idempotency key) are sent
//!   as one flight, `BEGIN` to `COMMIT`, in one round trip (see `write.rs`).
//! - **Conditional updates.** An update of a task in a terminal state is
//!   applied only when it is a retry (`dead` set `queued` with no
//!   attempts): the condition is in the `UPDATE`'s `WHERE`, so a stale
//!   writer cannot bring a finished task back.
//! - **Fires.** A fire first inserts its ledger row `ON CONFLICT DO
//!   NOTHING`: of two replicas writing one fire, the second waits for the
//!   first to commit, stores nothing and answers the winner's task; the
//!   rest of its batch is stored. A unique violation never aborts a batch
//!   for a fire.
//! - **Ids.** [`Store::reserve_ids`] moves `id_counter` past every stored
//!   task in one `INSERT ... ON CONFLICT DO UPDATE`, which replicas
//!   calling at once take in turn: ranges never overlap.
//! - **Durability.** [`Durability::Durable`] keeps `synchronous_commit` on:
//!   `apply` returns once the commit is flushed to the WAL on disk.
//!   [`Durability::Relaxed`] turns it off on the writer's session: a crash
//!   of the database server may lose the last commits (at most about three
//!   `wal_writer_delay`s), never corrupts anything, and a crash of Dispatch
//!   alone loses nothing.
//! - **Errors.** Connection failures, a server shutting down or out of
//!   connections, serialization failures and deadlocks are `Unavailable`;
//!   a constraint violation (a task id stored twice) or a value the
//!   database refuses is `Conflict`; a value that does not decode or a
//!   schema from another version is `Corrupt`; a stale epoch is `Fenced`.
//!
//! Tested on PostgreSQL 15; it uses nothing newer than PostgreSQL 12.
//!
//! ```no_run
//! use dispatch_store::Store;
//! use dispatch_store_postgres::PgStore;
//!
//! let store = PgStore::connect("postgres://dispatch@127.0.0.1:5432/dispatch")?;
//! let live = store.load_live()?;
//! # Ok::<(), dispatch_store::StoreError>(())
//! ```

mod attempts;
mod codec;
mod lease;
mod queues;
mod schema;
mod write;

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dispatch_core::{TaskId, TaskState};
use dispatch_store::{
    ErrorKind, Lease, Replica, ReplicaRecord, ScheduleRecord, Store, StoreError, TaskQuery,
    TaskRecord, WorkerRecord, Write, WriteOutcome,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use crate::codec::{columns, pg_error, schedule_columns};
use crate::write::WriterStatements;

/// The read connections kept by default.
pub const READ_CONNECTIONS: usize = 4;

/// The writer's transactions are pipelined (most are one flight, `BEGIN`
/// to `COMMIT`) and wait on the client only while it reads an answer and
/// builds the next flight; one that sits idle
/// this long belongs to a process that froze (stopped, paused, cut off) in
/// the middle of a batch, and PostgreSQL ends its session. Its fence holds
/// a lock on the lease row that would otherwise keep every other replica
/// from taking over until the frozen one woke. (1 s proved too short: a
/// writer starved of CPU on a loaded machine lost whole batches to it.)
const WRITER_IDLE_TIMEOUT: &str = "; SET idle_in_transaction_session_timeout TO 5000";

/// How long opening a connection may take before it fails, unless the URL
/// says otherwise (`connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection stays idle before keepalive probes check it,
/// unless the URL says otherwise (`keepalives_idle`).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);

/// How long sent data may stay unacknowledged before the connection is
/// given up, unless the URL says otherwise (`tcp_user_timeout`).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a commit is on stable storage when [`Store::apply`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous_commit = on`: every batch is flushed to the WAL on disk
    /// before `apply` returns. Survives a crash of the database server.
    #[default]
    Durable,
    /// `synchronous_commit = off` on the writer's session: a crash of the
    /// database server may lose the last commits, never corrupting
    /// anything; a crash of Dispatch loses nothing.
    Relaxed,
}

/// How to open a [`PgStore`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The writer's commit durability.
    pub durability: Durability,
    /// A schema to keep the tables in, created when missing (the URL's
    /// database default, usually `public`, when `None`).
    pub schema: Option<String>,
    /// How many read connections at most.
    pub read_connections: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            durability: Durability::Durable,
            schema: None,
            read_connections: READ_CONNECTIONS,
        }
    }
}

/// A [`Store`] in a PostgreSQL database.
pub struct PgStore {
    /// Drives the connections; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    config: Config,
    options: PgOptions,
    /// What every new connection runs first (`search_path`).
    session_sql: String,
    /// Used by [`Store::apply`] only.
    writer: Mutex<Option<WriterConn>>,
    readers: Vec<Mutex<Option<ReadConn>>>,
    next_reader: AtomicUsize,
    /// `load_live`'s query, built from [`TaskState::is_terminal`].
    live_sql: String,
    /// Tests drop their schema with the store.
    #[cfg(test)]
    drop_schema: bool,
}

struct WriterConn {
    client: Client,
    stmts: WriterStatements,
}

/// A read connection and the statements it prepared, by text.
struct ReadConn {
    client: Client,
    prepared: HashMap<String, Statement>,
}

impl ReadConn {
    /// `sql`, prepared once per connection.
    async fn statement(&mut self, sql: &str, doing: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(sql)
            .await
            .map_err(pg_error(&format!("preparing {doing}")))?;
        self.prepared.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("dbname", &self.config.get_dbname())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DB`,
    /// or a `key=value` connection string), creates or migrates the schema,
    /// with [`PgOptions::default`].
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, PgOptions::default())
    }

    /// [`PgStore::connect`] with options.
    pub fn connect_with(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let mut config = Config::from_str(url).map_err(|e| {
            StoreError::new(
                ErrorKind::Conflict,
                format!("not a PostgreSQL connection URL: {e}"),
            )
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("dispatch");
        }
        // A database cut off by the network must show as a failed call,
        // not a call that hangs until the kernel gives up (minutes to
        // hours): keepalives probe an idle connection, and unacknowledged
        // data fails the connection after TCP_USER_TIMEOUT.
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(Duration::from_secs(5));
            config.keepalives_retries(3);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dispatch-postgres")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::new(
                    ErrorKind::Unavailable,
                    format!("starting the PostgreSQL store's runtime: {e}"),
                )
            })?;
        let session_sql = match &options.schema {
            Some(s) => format!("SET search_path TO {}", schema::quote_ident(s)),
            None => String::new(),
        };
        let store = PgStore {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            config,
            session_sql,
            writer: Mutex::new(None),
            readers: (0..options.read_connections.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            next_reader: AtomicUsize::new(0),
            options,
            live_sql: live_query(),
            #[cfg(test)]
            drop_schema: false,
        };
        let applied = store.block_on(async {
            let mut client = store.open_client(false).await?;
            schema::migrate(&mut client, store.options.schema.as_deref()).await
        })?;
        tracing::info!(
            store = ?store,
            schema_version = schema::VERSION,
            migrations_applied = applied,
            "opened the PostgreSQL store"
        );
        Ok(store)
    }

    /// The durability mode it was opened with.
    pub fn durability(&self) -> Durability {
        self.options.durability
    }

    /// Runs `f` to its end on this thread (see [`block_on`]).
    fn block_on<F: Future>(&self, f: F) -> F::Output {
        block_on(f)
    }

    /// Opens a connection and sets its session up; the writer's also sets
    /// the durability.
    async fn open_client(&self, writer: bool) -> Result<Client, StoreError> {
        // Connecting needs the runtime's reactor and timers: it runs on the
        // runtime, which then drives the connection until it closes.
        let config = self.config.clone();
        let connecting = self.handle.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "a PostgreSQL connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = match connecting.await {
            Ok(connected) => connected.map_err(pg_error("connecting to PostgreSQL"))?,
            Err(e) => {
                return Err(StoreError::new(
                    ErrorKind::Unavailable,
                    format!("connecting to PostgreSQL: the store's runtime stopped: {e}"),
                ));
            }
        };
        let mut sql = self.session_sql.clone();
        if writer {
            sql.push_str(match self.options.durability {
                Durability::Durable => "; SET synchronous_commit TO on",
                Durability::Relaxed => "; SET synchronous_commit TO off",
            });
            sql.push_str(WRITER_IDLE_TIMEOUT);
        }
        if !sql.trim_start_matches(';').trim().is_empty() {
            client
                .batch_execute(sql.trim_start_matches(';'))
                .await
                .map_err(pg_error("setting up a connection"))?;
        }
        Ok(client)
    }

    fn lock_writer(&self) -> MutexGuard<'_, Option<WriterConn>> {
        // A panic while the lock was held dropped the transaction, which
        // rolls back; the connection itself is still sound.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A read connection: a free one if any, else the next in turn.
    fn lock_reader(&self) -> MutexGuard<'_, Option<ReadConn>> {
        let n = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(guard) = self.readers[(start + i) % n].try_lock() {
                return guard;
            }
        }
        self.readers[start % n]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The connected read connection in `slot`, opening it when missing or
    /// closed.
    async fn reader<'g>(
        &self,
        slot: &'g mut Option<ReadConn>,
    ) -> Result<&'g mut ReadConn, StoreError> {
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = None;
            let client = self.open_client(false).await?;
            *slot = Some(ReadConn {
                client,
                prepared: HashMap::new(),
            });
        }
        Ok(slot.as_mut().expect("just connected"))
    }

    /// Runs one query on a read connection.
    fn read(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        doing: &str,
    ) -> Result<Vec<Row>, StoreError> {
        let mut slot = self.lock_reader();
        let result = self.block_on(async {
            let conn = self.reader(&mut slot).await?;
            let stmt = conn.statement(sql, doing).await?;
            conn.client
                .query(&stmt, params)
                .await
                .map_err(pg_error(doing))
        });
        forget_if_lost(&mut slot, &result, |c| &c.client);
        result
    }

    /// Runs one query on a read connection and decodes its rows as they
    /// arrive, so that a large answer (`load_live` at a takeover) is never
    /// held twice in memory, as rows and as records.
    fn read_tasks(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        doing: &str,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        use futures_util::StreamExt as _;
        let mut slot = self.lock_reader();
        let result = self.block_on(async {
            let conn = self.reader(&mut slot).await?;
            let stmt = conn.statement(sql, doing).await?;
            let rows = conn
                .client
                .query_raw(&stmt, params.iter().copied())
                .await
                .map_err(pg_error(doing))?;
            let mut rows = std::pin::pin!(rows);
            let mut out = Vec::new();
            while let Some(row) = rows.next().await {
                out.push(codec::decode(&row.map_err(pg_error(doing))?)?);
            }
            Ok(out)
        });
        forget_if_lost(&mut slot, &result, |c| &c.client);
        result
    }

    /// Runs `f` with a read connection, for the few writes that do not go
    /// through the writer (leases, id reservations).
    fn on_reader<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.lock_reader();
        let result = self.block_on(async {
            let conn = self.reader(&mut slot).await?;
            f(&mut conn.client).await
        });
        forget_if_lost(&mut slot, &result, |c| &c.client);
        result
    }

    /// Runs `f` on the writer connection, for tests.
    #[cfg(test)]
    fn on_writer<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.lock_writer();
        let result = self.block_on(async {
            let conn = self.writer_conn(&mut guard).await?;
            f(&mut conn.client).await
        });
        forget_if_lost(&mut guard, &result, |c| &c.client);
        result
    }

    /// The connected writer connection, opening it when missing or closed.
    async fn writer_conn<'g>(
        &self,
        slot: &'g mut Option<WriterConn>,
    ) -> Result<&'g mut WriterConn, StoreError> {
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = None;
            let client = self.open_client(true).await?;
            let stmts = WriterStatements::prepare(&client).await?;
            *slot = Some(WriterConn { client, stmts });
        }
        Ok(slot.as_mut().expect("just connected"))
    }
}

/// Runs `f` to its end on the calling thread, parking the thread while `f`
/// waits.
///
/// The futures run here are a client's side of its connections: they talk
/// to the connection tasks (on the store's runtime, which does the I/O)
/// through channels and need no runtime of their own. So any thread may
/// call the store, a `spawn_blocking` thread or even an async task of
/// another runtime (which it then blocks, like any blocking call), where
/// `Handle::block_on` would panic.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Drops a connection that failed as `Unavailable` or closed, so that the
/// next call opens a fresh one.
fn forget_if_lost<C, T>(
    slot: &mut Option<C>,
    result: &Result<T, StoreError>,
    client: impl Fn(&C) -> &Client,
) {
    if let Err(e) = result
        && (e.kind == ErrorKind::Unavailable
            || slot.as_ref().is_some_and(|c| client(c).is_closed()))
    {
        *slot = None;
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        #[cfg(test)]
        if self.drop_schema
            && let Some(schema) = self.options.schema.clone()
        {
            let sql = format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                schema::quote_ident(&schema)
            );
            let _ = self.on_reader(async |client| {
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(pg_error("dropping the test schema"))
            });
        }
        // Dropping a runtime blocks, which panics inside an async context
        // (the server may drop its store there): let it end in the
        // background instead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `load_live`'s query: every non-terminal state, oldest first.
fn live_query() -> String {
    let states: Vec<String> = TaskState::ALL
        .into_iter()
        .filter(|s| !s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!(
        concat!(
            "SELECT ",
            columns!(),
            " FROM tasks WHERE state IN ({}) ORDER BY id"
        ),
        states.join(", ")
    )
}

impl Store for PgStore {
    fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = self.lock_writer();
        let result = self.block_on(async {
            let conn = self.writer_conn(&mut guard).await?;
            if write::fits_one_flight(writes) {
                return write::apply_in_one_flight(&conn.client, &conn.stmts, writes).await;
            }
            let tx = conn
                .client
                .transaction()
                .await
                .map_err(pg_error("beginning a transaction"))?;
            // On any error `tx` is dropped unfinished, which rolls it back.
            let outcomes = write::apply_batch(&tx, &conn.stmts, writes).await?;
            tx.commit().await.map_err(pg_error("committing"))?;
            Ok(outcomes)
        });
        forget_if_lost(&mut guard, &result, |c| &c.client);
        result
    }

    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let Ok(id) = i64::try_from(id.0) else {
            // Such an id can never be stored.
            return Ok(None);
        };
        let rows = self.read(
            concat!("SELECT ", columns!(), " FROM tasks WHERE id = $1"),
            &[&id],
            "reading a task",
        )?;
        rows.first().map(codec::decode).transpose()
    }

    fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut clauses: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        if let Some(state) = query.state {
            params.push(Box::new(state.as_str()));
            clauses.push(format!("state = ${}", params.len()));
        }
        if let Some(kind) = &query.kind {
            params.push(Box::new(kind.clone()));
            clauses.push(format!("type = ${}", params.len()));
        }
        if let Some(queue) = &query.queue {
            params.push(Box::new(queue.clone()));
            clauses.push(format!("queue = ${}", params.len()));
        }
        // A cursor beyond every storable id filters nothing.
        if let Some(before) = query.before.and_then(|b| i64::try_from(b.0).ok()) {
            params.push(Box::new(before));
            clauses.push(format!("id < ${}", params.len()));
        }
        params.push(Box::new(i64::try_from(query.limit).unwrap_or(i64::MAX)));
        let mut sql = String::from(concat!("SELECT ", columns!(), " FROM tasks"));
        for (i, clause) in clauses.iter().enumerate() {
            sql.push_str(if i == 0 { " WHERE " } else { " AND " });
            sql.push_str(clause);
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p).collect();
        self.read_tasks(&sql, &refs, "listing tasks")
    }

    fn list_attempts(
        &self,
        task: TaskId,
    ) -> Result<Vec<dispatch_store::AttemptRecord>, StoreError> {
        let Ok(id) = i64::try_from(task.0) else {
            return Ok(Vec::new());
        };
        let rows = self.read(attempts::LIST_SQL, &[&id], "listing attempts")?;
        rows.iter().map(attempts::decode).collect()
    }

    fn list_queue_configs(&self) -> Result<Vec<dispatch_store::QueueConfigRecord>, StoreError> {
        let rows = self.read(queues::LIST_SQL, &[], "listing queue settings")?;
        rows.iter().map(queues::decode).collect()
    }

    fn load_live(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.read_tasks(&self.live_sql, &[], "loading live tasks")
    }

    fn max_task_id(&self) -> Result<Option<TaskId>, StoreError> {
        let rows = self.read(
            "SELECT MAX(id) FROM tasks",
            &[],
            "reading the highest task id",
        )?;
        let max: Option<i64> = match rows.first() {
            Some(row) => row
                .try_get(0)
                .map_err(pg_error("reading the highest task id"))?,
            None => None,
        };
        max.map(|id| codec::task_id(id, "tasks.id")).transpose()
    }

    fn list_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let rows = self.read(
            concat!(
                "SELECT ",
                schedule_columns!(),
                " FROM schedules ORDER BY name COLLATE \"C\""
            ),
            &[],
            "listing schedules",
        )?;
        rows.iter().map(codec::decode_schedule).collect()
    }

    fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        let rows = self.read(
            concat!(
                "SELECT ",
                schedule_columns!(),
                " FROM schedules WHERE name = $1"
            ),
            &[&name],
            "reading a schedule",
        )?;
        rows.first().map(codec::decode_schedule).transpose()
    }

    fn list_queue_settings(&self) -> Result<Vec<(String, bool)>, StoreError> {
        let rows = self.read(
            "SELECT name, paused FROM queue_settings ORDER BY name COLLATE \"C\"",
            &[],
            "listing queue settings",
        )?;
        rows.iter()
            .map(|row| {
                let col = codec::Columns::new(row, &["name", "paused"], "queue setting");
                Ok((col.get(0)?, col.get(1)?))
            })
            .collect()
    }

    fn count_by_queue_state(&self) -> Result<Vec<(String, TaskState, u64)>, StoreError> {
        let rows = self.read(
            "SELECT queue, state, COUNT(*) FROM tasks GROUP BY queue, state",
            &[],
            "counting tasks by queue",
        )?;
        let mut out = rows
            .iter()
            .map(|row| {
                let col = codec::Columns::new(row, &["queue", "state", "count"], "task");
                let state: &str = col.get(1)?;
                let state = TaskState::parse(state)
                    .ok_or_else(|| col.error(1, format!("unknown state {state:?}")))?;
                Ok((col.get(0)?, state, col.int(2)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        Ok(out)
    }

    fn claim_lease(
        &self,
        partition: &str,
        me: &Replica,
        lease_ms: u64,
    ) -> Result<Lease, StoreError> {
        let lease_ms = i64::try_from(lease_ms).unwrap_or(i64::MAX / 4);
        self.on_reader(async |client| lease::claim(client, partition, me, lease_ms).await)
    }

    fn release_lease(&self, partition: &str, me: &Replica, epoch: u64) -> Result<(), StoreError> {
        let Ok(epoch) = i64::try_from(epoch) else {
            return Ok(());
        };
        self.on_reader(async |client| {
            client
                .execute(
                    "UPDATE leases SET expires_at = 'epoch' \
                     WHERE partition = $1 AND holder = $2 AND epoch = $3",
                    &[&partition, &me.id, &epoch],
                )
                .await
                .map_err(pg_error("releasing the lease"))?;
            Ok(())
        })
    }

    fn list_replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        let rows = self.read(
            "SELECT id, url, (EXTRACT(EPOCH FROM last_seen_at) * 1000)::bigint \
             FROM replicas ORDER BY id COLLATE \"C\"",
            &[],
            "listing replicas",
        )?;
        rows.iter()
            .map(|row| {
                let col = codec::Columns::new(row, &["id", "url", "last_seen_at"], "replica");
                Ok(ReplicaRecord {
                    id: col.get(0)?,
                    url: col.get(1)?,
                    last_seen_at: col.int(2)?,
                })
            })
            .collect()
    }

    fn load_workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let rows = self.read(
            "SELECT id, name, types::text, labels::text, capacity, weight, owner, registered_at \
             FROM workers",
            &[],
            "listing workers",
        )?;
        let mut workers = rows
            .iter()
            .map(codec::decode_worker)
            .collect::<Result<Vec<_>, _>>()?;
        workers.sort_by_key(|w| w.id);
        Ok(workers)
    }

    fn reserve_ids(&self, n: u64) -> Result<TaskId, StoreError> {
        let n = i64::try_from(n)
            .map_err(|_| StoreError::new(ErrorKind::Conflict, format!("cannot reserve {n} ids")))?;
        self.on_reader(async |client| {
            let first: i64 = client
                .query_one(
                    "INSERT INTO id_counter (one, next_id) \
                     VALUES (true, (SELECT COALESCE(MAX(id), 0) + 1 FROM tasks) + $1) \
                     ON CONFLICT (one) DO UPDATE SET next_id = \
                         GREATEST(id_counter.next_id, \
                                  (SELECT COALESCE(MAX(id), 0) + 1 FROM tasks)) + $1 \
                     RETURNING next_id - $1",
                    &[&n],
                )
                .await
                .map_err(pg_error("reserving task ids"))?
                .try_get(0)
                .map_err(pg_error("reading the id counter"))?;
            codec::task_id(first, "id_counter.next_id")
        })
    }
}

#[cfg(test)]
mod tests;
