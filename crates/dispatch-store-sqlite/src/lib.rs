//! The embedded store of Dispatch: one SQLite file, `dispatch.db`, in the
//! server's data directory.
//!
//! [`SqliteStore`] implements [`dispatch_store::Store`]; [`Durability`] says
//! whether a commit is fsynced before [`Store::apply`] returns.
//!
//! # Design
//!
//! - **WAL.** The database runs in write-ahead-log mode, so readers never
//!   block the writer and the writer never blocks readers: a read sees the
//!   last commit made before it started.
//! - **One writer connection.** SQLite allows one writer at a time; a pool of
//!   writers only trades throughput for "database is locked" errors. The
//!   writer connection is used by [`Store::apply`] alone, which in the server
//!   is called from the single [`dispatch_store::GroupCommitWriter`] thread.
//!   Each `apply` is one `BEGIN IMMEDIATE` ... `COMMIT` over cached prepared
//!   statements, so a batch of thousands of writes costs one commit (and, when
//!   durable, one fsync). If any write fails the transaction is rolled back
//!   and nothing of the batch is stored.
//! - **A small read pool.** `get_task`, `list_tasks`, `load_live` and
//!   `max_task_id` borrow one of at most [`READ_CONNECTIONS`] read
//!   connections (`query_only`), opened on demand and kept for reuse; a reader that finds
//!   them all busy waits for one. Reads never touch the writer connection, so
//!   a long listing does not delay a commit.
//! - **`busy_timeout`.** Every connection waits up to [`BUSY_TIMEOUT`] for a
//!   lock instead of failing at once: another process on the same file (a
//!   backup, a second store opened on the directory, the WAL checkpoint) only
//!   holds locks briefly. A lock still held after that is reported as
//!   [`ErrorKind::Unavailable`].
//! - **A read-only file heals.** SQLite opens a file it may not write
//!   read-only, silently, and that connection never writes again. Each
//!   write checks its connection and, when it is read-only, opens a fresh
//!   one: once the file and its folder are writable again, writes succeed
//!   without a restart (until then they fail as `Unavailable`).
//! - **Checkpoints in the background.** A thread of its own copies the WAL
//!   back into the database file every 100 ms (`PASSIVE`, never waiting
//!   for a lock), so that commits do not stall on checkpoints; the writer
//!   checkpoints by itself only if the WAL passes 64 MiB.
//! - **Schedules.** `schedules` holds one row per cron schedule and
//!   `schedule_fires` one per fire, keyed by (schedule, fire time). A
//!   [`Write::Fire`] looks the fire up, and only when it is new inserts the
//!   task and the fire row and advances `last_fire_at`, in the batch's
//!   transaction: a fire is stored once or not at all.
//! - **Queues.** `queue_settings` holds one row per queue whose pause state
//!   was ever set ([`Write::SetQueuePaused`]). `count_by_queue_state` is one
//!   `GROUP BY queue, state` over `tasks`.
//! - **Schema.** One `tasks` table with a column per field (see `schema.rs`),
//!   `STRICT` so that a value of the wrong type cannot be stored, and indexes
//!   on `(state, id)`, `(type, id)` and `(queue, id)`: `list_tasks` with any
//!   one filter and its page cursor reads one index range backwards, without
//!   a sort; `load_live` reads only the live states' ranges of `(state, id)`
//!   (and sorts them by id), never the finished tasks. The schema version is
//!   `PRAGMA user_version`; opening runs the migrations the file has not seen
//!   yet, in one transaction, and refuses a file from a newer version.
//! - **Idempotency keys.** A partial unique index holds the keyed tasks
//!   only (most have no key); an insert is `INSERT ... ON CONFLICT
//!   (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING`, and when it
//!   stored nothing the task holding the key is looked up and answered as
//!   [`InsertOutcome::Existing`]. The key is checked before the id, so that
//!   replaying an insert that was already committed answers the original.
//!   Before any record of a [`Write::Insert`] is stored, each keyed record's
//!   `request_digest` is compared with the key holder's (stored, or earlier
//!   in the same insert): two different digests refuse the whole insert as
//!   [`WriteOutcome::KeyConflict`], with nothing stored; a missing digest
//!   (a task stored before version 5) matches any.
//! - **Durability.** [`Durability::Durable`] is `synchronous=FULL`: the WAL
//!   is fsynced at every commit, so a batch acknowledged by `apply` survives a
//!   power cut. [`Durability::Relaxed`] is `synchronous=NORMAL`: commits are
//!   not fsynced (the WAL is synced at checkpoints), so a power cut or kernel
//!   crash may lose the last commits — but never corrupts the file — while a
//!   crash of the process alone loses nothing.
//! - **Errors.** Full disk, I/O errors and locks held too long are
//!   `Unavailable`; a constraint violation (a task id stored twice) or a
//!   value the file cannot hold (a `u64` above `i64::MAX`, except worker ids,
//!   which are stored as their bit pattern) is `Conflict`; a value that cannot
//!   be decoded, a malformed file or a schema from a newer version is
//!   `Corrupt`. Bad stored data is reported, never a panic.
//!
//! ```no_run
//! use dispatch_store::{Store, TaskQuery};
//! use dispatch_store_sqlite::{Durability, SqliteStore};
//!
//! let store = SqliteStore::open(std::path::Path::new("./dispatch-data"), Durability::Durable)?;
//! let live = store.load_live()?;
//! # Ok::<(), dispatch_store::StoreError>(())
//! ```

mod attempts;
mod checkpoint;
mod codec;
mod folder_lock;
mod queues;
mod read_pool;
mod replicas;
mod schema;

pub use folder_lock::{FolderLock, LOCK_FILE, LockError, lock_folder};

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dispatch_core::{TaskId, TaskState};
use dispatch_store::{
    ErrorKind, FireOutcome, InsertOutcome, Lease, Replica, ReplicaRecord, ScheduleRecord, Store,
    StoreError, TaskQuery, TaskRecord, TaskUpdate, WorkerRecord, Write, WriteOutcome,
};
use rusqlite::types::Value;
use rusqlite::{CachedStatement, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::checkpoint::Checkpointer;
use crate::codec::{sql_error, to_sql_int};
use crate::read_pool::ReadPool;

/// The name of the database file inside the data directory.
pub const FILE_NAME: &str = "dispatch.db";

/// The most read connections open at once.
pub const READ_CONNECTIONS: usize = 4;

/// How long a connection waits for a lock held by another before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a commit is on stable storage when [`Store::apply`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: every committed batch is fsynced before `apply`
    /// returns. Survives power loss.
    #[default]
    Durable,
    /// `synchronous=NORMAL`: commits are not fsynced one by one. Survives a
    /// crash of the process, but power loss may drop the last commits.
    Relaxed,
}

impl Durability {
    fn synchronous(self) -> &'static str {
        match self {
            Durability::Durable => "FULL",
            Durability::Relaxed => "NORMAL",
        }
    }
}

/// A [`Store`] in one SQLite database file.
pub struct SqliteStore {
    path: PathBuf,
    durability: Durability,
    /// Keeps the WAL short without stalling the writer. First, so that it
    /// stops (and closes its connection) before the other connections
    /// close.
    _checkpointer: Checkpointer,
    /// Used by [`Store::apply`] only.
    writer: Mutex<Connection>,
    readers: ReadPool,
    /// `load_live`'s query, built from [`TaskState::is_terminal`] so that it
    /// follows the core's idea of a live state.
    ///
    /// [`TaskState::is_terminal`]: dispatch_core::TaskState::is_terminal
    live_sql: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store in `dir`, creating the directory, the database file
    /// [`FILE_NAME`] and its schema when missing, and migrating an older
    /// schema.
    pub fn open(dir: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::new(
                ErrorKind::Unavailable,
                format!("creating the data directory {}: {e}", dir.display()),
            )
        })?;
        let path = dir.join(FILE_NAME);
        let mut writer = open_writer(&path, durability)?;
        let applied = schema::migrate(&mut writer)?;
        let checkpointer = Checkpointer::start(&path).map_err(|e| {
            StoreError::new(
                ErrorKind::Unavailable,
                format!("starting the checkpoints: {e}"),
            )
        })?;
        tracing::info!(
            path = %path.display(),
            ?durability,
            schema_version = schema::VERSION,
            migrations_applied = applied,
            "opened the sqlite store"
        );
        Ok(SqliteStore {
            readers: ReadPool::new(path.clone(), READ_CONNECTIONS),
            path,
            durability,
            writer: Mutex::new(writer),
            _checkpointer: checkpointer,
            live_sql: codec::live_query(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability mode it was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// SQLite opens a file it may not write read-only, silently, and the
    /// connection stays so: every write then fails, even once the file or
    /// its folder is writable again. Like a full disk, this heals without
    /// a restart: a read-only writer connection is replaced by a fresh one
    /// as soon as that one can write.
    fn heal_read_only(&self, conn: &mut Connection) -> Result<(), StoreError> {
        if !conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Ok(());
        }
        let fresh = open_writer(&self.path, self.durability)?;
        if fresh.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
            return Err(StoreError::new(
                ErrorKind::Unavailable,
                format!(
                    "{} is read-only: make it and its folder writable",
                    self.path.display()
                ),
            ));
        }
        *conn = fresh;
        tracing::info!(path = %self.path.display(), "the database file is writable again");
        Ok(())
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        // A panic while the lock was held unwound through the transaction's
        // drop, which rolls back; the connection itself is still sound.
        let conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")
                .map_err(sql_error("rolling back an abandoned transaction"))?;
        }
        Ok(conn)
    }
}

/// Opens the writer's connection to `path` and sets it up (WAL mode,
/// synchronous level, checkpoints).
fn open_writer(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let writer = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_error(&format!("opening {}", path.display())))?;
    writer
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(sql_error("setting busy_timeout"))?;
    let mode: String = writer
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sql_error("setting journal_mode=WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::new(
            ErrorKind::Unavailable,
            format!(
                "{} refused WAL mode (journal_mode is {mode})",
                path.display()
            ),
        ));
    }
    writer
        .pragma_update(None, "synchronous", durability.synchronous())
        .map_err(sql_error("setting synchronous"))?;
    // A burst of writes can grow the WAL far beyond its usual size; give
    // the space back after the next checkpoint.
    writer
        .pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(sql_error("setting journal_size_limit"))?;
    // Checkpoints run in the background (see `checkpoint.rs`); the
    // writer only checkpoints when they fall far behind.
    writer
        .pragma_update(
            None,
            "wal_autocheckpoint",
            checkpoint::WRITER_CHECKPOINT_PAGES,
        )
        .map_err(sql_error("setting wal_autocheckpoint"))?;
    Ok(writer)
}

impl Store for SqliteStore {
    fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.lock_writer()?;
        self.heal_read_only(&mut conn)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_error("beginning a transaction"))?;
        // On any error `tx` is dropped unfinished, which rolls it back.
        let outcomes = apply_in(&tx, writes)?;
        tx.commit().map_err(sql_error("committing"))?;
        Ok(outcomes)
    }

    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let Ok(id) = i64::try_from(id.0) else {
            // Such an id can never be stored.
            return Ok(None);
        };
        self.readers.with(|conn| {
            let mut stmt = conn
                .prepare_cached(codec::GET_SQL)
                .map_err(sql_error("preparing get_task"))?;
            let mut rows = stmt.query([id]).map_err(sql_error("reading a task"))?;
            match rows.next().map_err(sql_error("reading a task"))? {
                Some(row) => codec::decode(row).map(Some),
                None => Ok(None),
            }
        })
    }

    fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut clauses = Vec::new();
        let mut params: Vec<Value> = Vec::new();
        if let Some(state) = query.state {
            clauses.push("state = ?");
            params.push(Value::Text(state.as_str().to_string()));
        }
        if let Some(kind) = &query.kind {
            clauses.push("type = ?");
            params.push(Value::Text(kind.clone()));
        }
        if let Some(queue) = &query.queue {
            clauses.push("queue = ?");
            params.push(Value::Text(queue.clone()));
        }
        // A cursor beyond every storable id filters nothing.
        if let Some(before) = query.before.and_then(|b| i64::try_from(b.0).ok()) {
            clauses.push("id < ?");
            params.push(Value::Integer(before));
        }
        params.push(Value::Integer(
            i64::try_from(query.limit).unwrap_or(i64::MAX),
        ));
        let sql = codec::list_query(&clauses);
        self.readers.with(|conn| {
            let mut stmt = conn
                .prepare_cached(&sql)
                .map_err(sql_error("preparing list_tasks"))?;
            collect(
                stmt.query(rusqlite::params_from_iter(params))
                    .map_err(sql_error("listing tasks"))?,
            )
        })
    }

    fn list_attempts(
        &self,
        task: TaskId,
    ) -> Result<Vec<dispatch_store::AttemptRecord>, StoreError> {
        self.readers.with(|conn| attempts::list(conn, task))
    }

    fn load_live(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn
                .prepare_cached(&self.live_sql)
                .map_err(sql_error("preparing load_live"))?;
            collect(stmt.query([]).map_err(sql_error("loading live tasks"))?)
        })
    }

    fn max_task_id(&self) -> Result<Option<TaskId>, StoreError> {
        self.readers.with(|conn| {
            let max: Option<i64> = conn
                .query_row("SELECT MAX(id) FROM tasks", [], |row| row.get(0))
                .map_err(sql_error("reading the highest task id"))?;
            max.map(|id| codec::task_id(id, "tasks.id")).transpose()
        })
    }

    fn list_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn
                .prepare_cached(codec::LIST_SCHEDULES_SQL)
                .map_err(sql_error("preparing list_schedules"))?;
            let mut rows = stmt.query([]).map_err(sql_error("listing schedules"))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sql_error("reading schedules"))? {
                out.push(codec::decode_schedule(row)?);
            }
            Ok(out)
        })
    }

    fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn
                .prepare_cached(codec::GET_SCHEDULE_SQL)
                .map_err(sql_error("preparing get_schedule"))?;
            let mut rows = stmt
                .query([name])
                .map_err(sql_error("reading a schedule"))?;
            match rows.next().map_err(sql_error("reading a schedule"))? {
                Some(row) => codec::decode_schedule(row).map(Some),
                None => Ok(None),
            }
        })
    }

    fn list_queue_settings(&self) -> Result<Vec<(String, bool)>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn
                .prepare_cached(codec::LIST_QUEUE_SETTINGS_SQL)
                .map_err(sql_error("preparing list_queue_settings"))?;
            let mut rows = stmt
                .query([])
                .map_err(sql_error("listing queue settings"))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sql_error("reading queue settings"))? {
                out.push(codec::decode_queue_setting(row)?);
            }
            Ok(out)
        })
    }

    fn list_queue_configs(&self) -> Result<Vec<dispatch_store::QueueConfigRecord>, StoreError> {
        self.readers.with(queues::list)
    }

    fn count_by_queue_state(&self) -> Result<Vec<(String, TaskState, u64)>, StoreError> {
        let mut out = self.readers.with(|conn| {
            let mut stmt = conn
                .prepare_cached(codec::COUNT_BY_QUEUE_STATE_SQL)
                .map_err(sql_error("preparing count_by_queue_state"))?;
            let mut rows = stmt
                .query([])
                .map_err(sql_error("counting tasks by queue"))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sql_error("reading task counts"))? {
                out.push(codec::decode_queue_count(row)?);
            }
            Ok(out)
        })?;
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        Ok(out)
    }

    fn claim_lease(
        &self,
        partition: &str,
        me: &Replica,
        lease_ms: u64,
    ) -> Result<Lease, StoreError> {
        self.in_write_tx(|conn| replicas::claim_lease(conn, partition, me, lease_ms))
    }

    fn release_lease(&self, partition: &str, me: &Replica, epoch: u64) -> Result<(), StoreError> {
        self.in_write_tx(|conn| replicas::release_lease(conn, partition, me, epoch))
    }

    fn list_replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        self.readers.with(replicas::list_replicas)
    }

    fn load_workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        self.readers.with(replicas::load_workers)
    }

    fn reserve_ids(&self, n: u64) -> Result<TaskId, StoreError> {
        self.in_write_tx(|conn| replicas::reserve_ids(conn, n))
    }
}

/// Runs every write of a batch inside the caller's open transaction.
fn apply_in(conn: &Connection, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut stmts = BatchStatements {
        insert: conn
            .prepare_cached(codec::INSERT_SQL)
            .map_err(sql_error("preparing the insert"))?,
        find_key: conn
            .prepare_cached("SELECT id FROM tasks WHERE idempotency_key = ?1")
            .map_err(sql_error("preparing the key lookup"))?,
        key_digest: conn
            .prepare_cached("SELECT id, request_digest FROM tasks WHERE idempotency_key = ?1")
            .map_err(sql_error("preparing the key digest lookup"))?,
        update: conn
            .prepare_cached(codec::UPDATE_SQL)
            .map_err(sql_error("preparing the update"))?,
    };
    writes
        .iter()
        .map(|write| match write {
            Write::Insert(records) => match stmts.key_conflict(records)? {
                Some((index, holder)) => Ok(WriteOutcome::KeyConflict { index, holder }),
                None => records
                    .iter()
                    .map(|r| stmts.insert(r))
                    .collect::<Result<_, _>>()
                    .map(WriteOutcome::Inserted),
            },
            Write::Update(u) => {
                let applied = stmts.update(u)?;
                if applied && let Some(a) = &u.attempt {
                    attempts::insert(conn, a)?;
                }
                Ok(WriteOutcome::Updated(applied))
            }
            Write::UpsertSchedule(r) => {
                let existed = schedule_exists(conn, &r.name)?;
                let mut upsert = conn
                    .prepare_cached(codec::UPSERT_SCHEDULE_SQL)
                    .map_err(sql_error("preparing the schedule upsert"))?;
                codec::upsert_schedule(&mut upsert, r)?;
                Ok(WriteOutcome::ScheduleUpserted(existed))
            }
            Write::DeleteSchedule(name) => delete_schedule(conn, name),
            Write::Fire {
                schedule,
                fire_at,
                task,
            } => fire(conn, &mut stmts, schedule, *fire_at, task).map(WriteOutcome::Fired),
            Write::Purge {
                finished_before,
                limit,
            } => purge(conn, *finished_before, *limit).map(WriteOutcome::Purged),
            Write::PutQueueConfig(c) => queues::put(conn, c).map(WriteOutcome::QueueConfigPut),
            Write::SetQueuePaused { name, paused } => {
                set_queue_paused(conn, name, *paused).map(WriteOutcome::QueuePausedSet)
            }
            Write::Fence { partition, epoch } => {
                replicas::check_fence(conn, partition, *epoch).map(|()| WriteOutcome::Fenced)
            }
            Write::PutWorker(w) => replicas::put_worker(conn, w).map(WriteOutcome::WorkerPut),
            Write::DeleteWorker(id) => conn
                .prepare_cached("DELETE FROM workers WHERE id = ?1")
                .map_err(sql_error("preparing the worker delete"))?
                .execute([id.get().cast_signed()])
                .map(|n| WriteOutcome::WorkerDeleted(n > 0))
                .map_err(sql_error("deleting a worker")),
        })
        .collect()
}

impl SqliteStore {
    /// Runs `f` in an immediate transaction of the writer connection.
    fn in_write_tx<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock_writer()?;
        self.heal_read_only(&mut conn)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_error("beginning a transaction"))?;
        let out = f(&tx)?;
        tx.commit().map_err(sql_error("committing"))?;
        Ok(out)
    }
}

/// Deletes old terminal tasks, oldest ids first, never the newest task (it
/// holds the id high-water mark that `max_task_id` reads).
fn purge(conn: &Connection, finished_before: u64, limit: usize) -> Result<usize, StoreError> {
    let before = codec::to_sql_int(finished_before, "finished_before")?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "DELETE FROM tasks WHERE id IN (
             SELECT id FROM tasks
             WHERE state IN ('succeeded', 'dead', 'cancelled')
               AND finished_at < ?1
               AND id < (SELECT MAX(id) FROM tasks)
             ORDER BY id LIMIT ?2)",
    )
    .map_err(sql_error("preparing the purge"))?
    .execute(rusqlite::params![before, limit])
    .map_err(sql_error("purging finished tasks"))
}

/// Stores a queue's pause state; answers whether it changed (a queue
/// without a row is not paused).
fn set_queue_paused(conn: &Connection, name: &str, paused: bool) -> Result<bool, StoreError> {
    let before: Option<bool> = conn
        .prepare_cached("SELECT paused FROM queue_settings WHERE name = ?1")
        .map_err(sql_error("preparing the queue setting lookup"))?
        .query_row([name], |row| row.get::<_, i64>(0))
        .optional()
        .map_err(sql_error("looking up a queue setting"))?
        .map(|v| v != 0);
    conn.prepare_cached(codec::SET_QUEUE_PAUSED_SQL)
        .map_err(sql_error("preparing the queue setting"))?
        .execute(rusqlite::params![name, paused])
        .map_err(sql_error(&format!(
            "storing the pause state of queue {name:?}"
        )))?;
    Ok(before.unwrap_or(false) != paused)
}

fn schedule_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM schedules WHERE name = ?1")
        .map_err(sql_error("preparing the schedule lookup"))?
        .exists([name])
        .map_err(sql_error("looking up a schedule"))
}

fn delete_schedule(conn: &Connection, name: &str) -> Result<WriteOutcome, StoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM schedules WHERE name = ?1")
        .map_err(sql_error("preparing the schedule delete"))?
        .execute([name])
        .map_err(sql_error(&format!("deleting schedule {name:?}")))?;
    conn.prepare_cached("DELETE FROM schedule_fires WHERE schedule = ?1")
        .map_err(sql_error("preparing the fires delete"))?
        .execute([name])
        .map_err(sql_error(&format!("deleting the fires of {name:?}")))?;
    Ok(WriteOutcome::ScheduleDeleted(deleted > 0))
}

/// Records one fire and inserts its task, or answers the task of the fire
/// recorded before. Runs inside the batch's transaction, so the fire row,
/// the task and `last_fire_at` are stored together or not at all.
fn fire(
    conn: &Connection,
    stmts: &mut BatchStatements<'_>,
    schedule: &str,
    fire_at: u64,
    task: &TaskRecord,
) -> Result<FireOutcome, StoreError> {
    let at = to_sql_int(fire_at, "fire_at")?;
    let recorded: Option<i64> = conn
        .prepare_cached("SELECT task_id FROM schedule_fires WHERE schedule = ?1 AND fire_at = ?2")
        .map_err(sql_error("preparing the fire lookup"))?
        .query_row(rusqlite::params![schedule, at], |row| row.get(0))
        .optional()
        .map_err(sql_error("looking up a fire"))?;
    if let Some(id) = recorded {
        return Ok(FireOutcome::Existing(codec::task_id(
            id,
            "schedule_fires.task_id",
        )?));
    }
    if !schedule_exists(conn, schedule)? {
        return Ok(FireOutcome::UnknownSchedule);
    }
    let (outcome, id) = match stmts.insert(task)? {
        InsertOutcome::Created => (FireOutcome::Created, task.id),
        InsertOutcome::Existing(id) => (FireOutcome::Existing(id), id),
    };
    conn.prepare_cached(
        "INSERT INTO schedule_fires (schedule, fire_at, task_id) VALUES (?1, ?2, ?3)",
    )
    .map_err(sql_error("preparing the fire insert"))?
    .execute(rusqlite::params![
        schedule,
        at,
        to_sql_int(id.0, "task_id")?
    ])
    .map_err(sql_error(&format!("recording a fire of {schedule:?}")))?;
    conn.prepare_cached(
        "UPDATE schedules SET last_fire_at = MAX(COALESCE(last_fire_at, ?2), ?2) WHERE name = ?1",
    )
    .map_err(sql_error("preparing the last fire update"))?
    .execute(rusqlite::params![schedule, at])
    .map_err(sql_error(&format!(
        "advancing last_fire_at of {schedule:?}"
    )))?;
    Ok(outcome)
}

/// The statements of one batch, prepared once per `apply`.
struct BatchStatements<'c> {
    insert: CachedStatement<'c>,
    find_key: CachedStatement<'c>,
    key_digest: CachedStatement<'c>,
    update: CachedStatement<'c>,
}

impl BatchStatements<'_> {
    /// The first record whose idempotency key is held, by a stored task or
    /// an earlier record of `records`, for a different request (both
    /// digests known and different), with the holder's id.
    fn key_conflict(
        &mut self,
        records: &[TaskRecord],
    ) -> Result<Option<(usize, TaskId)>, StoreError> {
        let mut own: std::collections::HashMap<&str, (TaskId, Option<&[u8; 32]>)> =
            std::collections::HashMap::new();
        for (i, r) in records.iter().enumerate() {
            let (Some(k), Some(mine)) = (r.body.idempotency_key.as_deref(), &r.request_digest)
            else {
                continue;
            };
            if let Some((holder, theirs)) = own.get(k) {
                if theirs.is_some_and(|d| d != mine) {
                    return Ok(Some((i, *holder)));
                }
                continue;
            }
            let stored: Option<(i64, Option<Vec<u8>>)> = self
                .key_digest
                .query_row([k], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
                .map_err(sql_error("looking up an idempotency key"))?;
            match stored {
                Some((id, theirs)) => {
                    if theirs.is_some_and(|d| d.as_slice() != mine.as_slice()) {
                        return Ok(Some((i, codec::task_id(id, "tasks.id")?)));
                    }
                }
                None => {
                    own.insert(k, (r.id, Some(mine)));
                }
            }
        }
        Ok(None)
    }

    fn insert(&mut self, r: &TaskRecord) -> Result<InsertOutcome, StoreError> {
        let row = codec::InsertRow::new(r)?;
        let stored = row
            .execute(&mut self.insert)
            .map_err(|e| sql_error(&format!("inserting task {}", r.id))(e))?;
        if stored == 1 {
            return Ok(InsertOutcome::Created);
        }
        // `ON CONFLICT(idempotency_key) DO NOTHING` skipped it: answer the
        // task that holds the key.
        let original: Option<i64> = self
            .find_key
            .query_row([&r.body.idempotency_key], |row| row.get(0))
            .optional()
            .map_err(sql_error("looking up an idempotency key"))?;
        match original {
            Some(id) => Ok(InsertOutcome::Existing(codec::task_id(id, "tasks.id")?)),
            None => Err(StoreError::new(
                ErrorKind::Corrupt,
                format!("task {} was neither stored nor a duplicate key", r.id),
            )),
        }
    }

    fn update(&mut self, u: &TaskUpdate) -> Result<bool, StoreError> {
        let Ok(id) = i64::try_from(u.id.0) else {
            // Such an id can never have been stored.
            return Ok(false);
        };
        let changed = self
            .update
            .execute(rusqlite::params![
                id,
                u.state.as_str(),
                u.attempts,
                u.worker.map(|w| w.get().cast_signed()),
                u.started_at
                    .map(|t| to_sql_int(t, "started_at"))
                    .transpose()?,
                u.finished_at
                    .map(|t| to_sql_int(t, "finished_at"))
                    .transpose()?,
                u.run_at.map(|t| to_sql_int(t, "run_at")).transpose()?,
                u.result.as_deref(),
                u.error.as_deref(),
            ])
            .map_err(|e| sql_error(&format!("updating task {}", u.id))(e))?;
        Ok(changed > 0)
    }
}

fn collect(mut rows: rusqlite::Rows<'_>) -> Result<Vec<TaskRecord>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error("reading tasks"))? {
        out.push(codec::decode(row)?);
    }
    Ok(out)
}

/// Opens a read-only connection to `path` for the read pool.
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_error(&format!("opening {}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql_error("setting busy_timeout"))?;
    // Read-write at the file level so that the connection can take part in
    // WAL recovery and checkpoints like any other, but refusing every write:
    // only the writer connection writes.
    conn.pragma_update(None, "query_only", true)
        .map_err(sql_error("setting query_only"))?;
    conn.set_prepared_statement_cache_capacity(codec::READ_STATEMENT_CACHE);
    Ok(conn)
}

#[cfg(test)]
mod tests;
