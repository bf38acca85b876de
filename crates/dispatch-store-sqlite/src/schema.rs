//! The schema and its migrations, versioned by `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes a file from version `i` to version `i + 1`. A new
//! schema change is a new entry at the end; entries already released are
//! never edited, because files in the field have run them.

use dispatch_store::{ErrorKind, StoreError};
use rusqlite::{Connection, TransactionBehavior};

use crate::codec::sql_error;

/// Version 1: the `tasks` table.
///
/// Integers are `u64` values stored as SQLite's signed 64-bit integers;
/// values above `i64::MAX` are refused at insert, except `worker_id`, whose
/// ids are random 64-bit numbers and are stored as their two's-complement
/// bit pattern. `labels` is a JSON object of strings, `depends_on` a JSON
/// array of task ids. `payload` and `result` are JSON text, stored verbatim.
const V1: &str = "
CREATE TABLE tasks (
    id                 INTEGER PRIMARY KEY,
    type               TEXT    NOT NULL,
    queue              TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    priority           INTEGER NOT NULL,
    state              TEXT    NOT NULL,
    attempts           INTEGER NOT NULL,
    max_attempts       INTEGER NOT NULL,
    timeout_ms         INTEGER,
    backoff_initial_ms INTEGER NOT NULL,
    backoff_max_ms     INTEGER NOT NULL,
    backoff_multiplier REAL    NOT NULL,
    run_at             INTEGER,
    idempotency_key    TEXT    UNIQUE,
    routing_key        TEXT,
    strategy           TEXT,
    labels             TEXT    NOT NULL,
    depends_on         TEXT    NOT NULL,
    result             TEXT,
    error              TEXT,
    worker_id          INTEGER,
    created_at         INTEGER NOT NULL,
    started_at         INTEGER,
    finished_at        INTEGER
) STRICT;

-- list_tasks by state, type or queue, newest first below a cursor, reads one
-- index range backwards; load_live reads the live states' ranges.
CREATE INDEX tasks_state_id ON tasks (state, id);
CREATE INDEX tasks_type_id ON tasks (type, id);
CREATE INDEX tasks_queue_id ON tasks (queue, id);
";

/// Version 2: cron schedules and the record of their fires.
///
/// `schedule_fires` holds one row per fire, keyed by (schedule, fire time):
/// the fire's task is inserted in the same transaction as its row, so a fire
/// is stored once or not at all. `last_fire_at` is the latest of a
/// schedule's fires; `paused` is 0 or 1.
const V2: &str = "
CREATE TABLE schedules (
    name           TEXT    PRIMARY KEY,
    cron           TEXT    NOT NULL,
    timezone       TEXT    NOT NULL,
    task           TEXT    NOT NULL,
    misfire        TEXT    NOT NULL,
    catch_up_limit INTEGER NOT NULL,
    paused         INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    last_fire_at   INTEGER
) STRICT, WITHOUT ROWID;

CREATE TABLE schedule_fires (
    schedule TEXT    NOT NULL,
    fire_at  INTEGER NOT NULL,
    task_id  INTEGER NOT NULL,
    PRIMARY KEY (schedule, fire_at)
) STRICT, WITHOUT ROWID;
";

/// Version 3: the pause state of queues, by name. A queue without a row is
/// not paused; `paused` is 0 or 1.
const V3: &str = "
CREATE TABLE queue_settings (
    name   TEXT    PRIMARY KEY,
    paused INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
";

/// Version 4: `broadcast` and `sharding`. `pinned_worker` is the only worker
/// a broadcast copy may run on (its id's bit pattern, like `worker_id`);
/// `is_join` (0 or 1) marks the parent that ends with its copies or shards;
/// `shard_index` and `shard_total` are handed to the worker.
const V4: &str = "
ALTER TABLE tasks ADD COLUMN pinned_worker INTEGER;
ALTER TABLE tasks ADD COLUMN is_join INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN shard_index INTEGER;
ALTER TABLE tasks ADD COLUMN shard_total INTEGER;
";

/// Version 5: `request_digest`, the SHA-256 (32 bytes) of the normalised
/// submission, kept with its idempotency key so that the key reused with a
/// different request is refused. Tasks stored before have none, which
/// matches any request.
const V5: &str = "
ALTER TABLE tasks ADD COLUMN request_digest BLOB;
";

/// Version 6: what several replicas on one store share, kept here too so
/// that every backend answers the same trait. `leases` holds one row per
/// partition: its holder, the epoch raised at every takeover, and when the
/// lease ends (milliseconds since the Unix epoch, on this machine's clock;
/// 0 once released). `replicas` records who claimed and when. `id_counter`
/// is the one row of the next task id `reserve_ids` hands out.
const V6: &str = "
CREATE TABLE leases (
    partition  TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    holder_url TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE replicas (
    id           TEXT    PRIMARY KEY,
    url          TEXT    NOT NULL,
    last_seen_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE id_counter (
    one     INTEGER PRIMARY KEY CHECK (one = 1),
    next_id INTEGER NOT NULL
) STRICT;
";

/// Version 7: the workers a leading replica registered, so that the next
/// leader keeps their running tasks on them. `id` is the worker id's bit
/// pattern (like `worker_id`); `types` a JSON array, `labels` a JSON
/// object; `owner` the SHA-256 of the token that registered it.
const V7: &str = "
CREATE TABLE workers (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL,
    types         TEXT    NOT NULL,
    labels        TEXT    NOT NULL,
    capacity      INTEGER NOT NULL,
    weight        INTEGER NOT NULL,
    owner         BLOB,
    registered_at INTEGER NOT NULL
) STRICT;
";

/// Version 8: attempt history. One row per ended attempt that counted,
/// keyed by (task, number); `worker_id` is the worker id's bit pattern,
/// `outcome` one of `succeeded`, `failed`, `timeout`, `lost`, `cancelled`.
/// The trigger deletes a task's attempts with it (purge).
const V8: &str = "
CREATE TABLE attempts (
    task_id        INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    worker_id      INTEGER NOT NULL,
    worker_name    TEXT    NOT NULL,
    collected_at   INTEGER NOT NULL,
    finished_at    INTEGER NOT NULL,
    outcome        TEXT    NOT NULL,
    error          TEXT,
    retry_delay_ms INTEGER,
    PRIMARY KEY (task_id, attempt)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER tasks_delete_attempts AFTER DELETE ON tasks
BEGIN
    DELETE FROM attempts WHERE task_id = OLD.id;
END;
";

/// Version 9: queue settings set through the API, by name; they win over
/// the config file's. `strategy` is a strategy's name.
const V9: &str = "
CREATE TABLE queue_configs (
    name         TEXT    PRIMARY KEY,
    weight       INTEGER NOT NULL,
    max_running  INTEGER,
    rate_per_sec REAL,
    burst        INTEGER,
    max_per_key  INTEGER,
    max_depth    INTEGER,
    strategy     TEXT
) STRICT, WITHOUT ROWID;
";

/// Version 10: the idempotency key's index holds keyed tasks only. Its
/// `UNIQUE` column constraint indexed every task, the many without a key
/// too (as NULL), at a B-tree insert per submission; a column constraint
/// cannot be dropped, so the table is rebuilt (SQLite's twelve steps) with
/// a partial unique index instead, and its indexes and trigger with it.
/// Inserts name the index's condition in their `ON CONFLICT` target.
const V10: &str = "
CREATE TABLE tasks_v10 (
    id                 INTEGER PRIMARY KEY,
    type               TEXT    NOT NULL,
    queue              TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    priority           INTEGER NOT NULL,
    state              TEXT    NOT NULL,
    attempts           INTEGER NOT NULL,
    max_attempts       INTEGER NOT NULL,
    timeout_ms         INTEGER,
    backoff_initial_ms INTEGER NOT NULL,
    backoff_max_ms     INTEGER NOT NULL,
    backoff_multiplier REAL    NOT NULL,
    run_at             INTEGER,
    idempotency_key    TEXT,
    routing_key        TEXT,
    strategy           TEXT,
    labels             TEXT    NOT NULL,
    depends_on         TEXT    NOT NULL,
    result             TEXT,
    error              TEXT,
    worker_id          INTEGER,
    created_at         INTEGER NOT NULL,
    started_at         INTEGER,
    finished_at        INTEGER,
    pinned_worker      INTEGER,
    is_join            INTEGER NOT NULL DEFAULT 0,
    shard_index        INTEGER,
    shard_total        INTEGER,
    request_digest     BLOB
) STRICT;

INSERT INTO tasks_v10 SELECT * FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_v10 RENAME TO tasks;

CREATE INDEX tasks_state_id ON tasks (state, id);
CREATE INDEX tasks_type_id ON tasks (type, id);
CREATE INDEX tasks_queue_id ON tasks (queue, id);
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TRIGGER tasks_delete_attempts AFTER DELETE ON tasks
BEGIN
    DELETE FROM attempts WHERE task_id = OLD.id;
END;
";

const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9, V10];

/// The schema version this build writes.
pub(crate) const VERSION: usize = MIGRATIONS.len();

/// Brings the file up to [`VERSION`] and answers how many migrations ran.
///
/// Runs in one `BEGIN IMMEDIATE` transaction, so that two stores opening one
/// new file at once do not both create the schema, and a failed migration
/// leaves the file as it was.
pub(crate) fn migrate(conn: &mut Connection) -> Result<usize, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error("beginning the migration"))?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql_error("reading user_version"))?;
    let found = usize::try_from(found).map_err(|_| version_error(found))?;
    if found > VERSION {
        return Err(version_error(found));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found) {
        tx.execute_batch(sql).map_err(sql_error(&format!(
            "migrating the schema from version {from}"
        )))?;
    }
    if found < VERSION {
        tx.pragma_update(None, "user_version", VERSION as i64)
            .map_err(sql_error("writing user_version"))?;
    }
    tx.commit().map_err(sql_error("committing the migration"))?;
    Ok(VERSION - found)
}

fn version_error(found: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        ErrorKind::Corrupt,
        format!(
            "the database has schema version {found}, this build knows up to {VERSION}: \
             it was written by a newer Dispatch"
        ),
    )
}
