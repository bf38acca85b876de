//! Between [`TaskRecord`]s and rows of the `tasks` table, between
//! [`ScheduleRecord`]s and rows of `schedules`, between queues' pause states
//! and rows of `queue_settings`, and between rusqlite's errors and
//! [`StoreError`]s.
//!
//! Decoding never panics: a value of the wrong type or out of range, bad
//! JSON or an unknown state is an [`ErrorKind::Corrupt`] error naming the
//! column.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Display;

use dispatch_core::{Backoff, Strategy, TaskId, TaskSpec, TaskState, WorkerId};
use dispatch_store::{ErrorKind, ScheduleRecord, StoreError, TaskBody, TaskRecord};
use rusqlite::types::ValueRef;
use rusqlite::{Row, Statement};

/// Prepared statements kept per read connection: `get_task`, `load_live`,
/// `max_task_id`, the sixteen filter combinations of `list_tasks`,
/// `get_schedule`, `list_schedules`, `list_queue_settings` and
/// `count_by_queue_state`.
pub(crate) const READ_STATEMENT_CACHE: usize = 28;

/// The columns of `tasks` in the order [`decode`] reads them.
macro_rules! columns {
    () => {
        "id, type, queue, payload, priority, state, attempts, max_attempts, timeout_ms, \
         backoff_initial_ms, backoff_max_ms, backoff_multiplier, run_at, idempotency_key, \
         routing_key, strategy, labels, depends_on, result, error, worker_id, created_at, \
         started_at, finished_at, pinned_worker, is_join, shard_index, shard_total, \
         request_digest"
    };
}

/// Column names by index, for error messages.
const NAMES: [&str; 29] = [
    "id",
    "type",
    "queue",
    "payload",
    "priority",
    "state",
    "attempts",
    "max_attempts",
    "timeout_ms",
    "backoff_initial_ms",
    "backoff_max_ms",
    "backoff_multiplier",
    "run_at",
    "idempotency_key",
    "routing_key",
    "strategy",
    "labels",
    "depends_on",
    "result",
    "error",
    "worker_id",
    "created_at",
    "started_at",
    "finished_at",
    "pinned_worker",
    "is_join",
    "shard_index",
    "shard_total",
    "request_digest",
];

pub(crate) const GET_SQL: &str = concat!("SELECT ", columns!(), " FROM tasks WHERE id = ?1");

pub(crate) const INSERT_SQL: &str = concat!(
    "INSERT INTO tasks (",
    columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
     ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29) \
     ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
);

/// An update keeps a stored result when it brings none, like
/// [`TaskRecord::apply`]; every other field is replaced.
pub(crate) const UPDATE_SQL: &str = "UPDATE tasks SET state = ?2, attempts = ?3, \
     worker_id = ?4, started_at = ?5, finished_at = ?6, run_at = ?7, \
     result = COALESCE(?8, result), error = ?9 WHERE id = ?1 \
     AND (state NOT IN ('succeeded', 'dead', 'cancelled') \
          OR (state = 'dead' AND ?2 = 'queued' AND ?3 = 0))";

/// `list_tasks`' query for the given `WHERE` clauses (each with one `?`),
/// followed by a `?` for the limit.
pub(crate) fn list_query(clauses: &[&str]) -> String {
    let mut sql = String::from(concat!("SELECT ", columns!(), " FROM tasks"));
    for (i, clause) in clauses.iter().enumerate() {
        sql.push_str(if i == 0 { " WHERE " } else { " AND " });
        sql.push_str(clause);
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    sql
}

/// `load_live`'s query: every non-terminal state, oldest first.
pub(crate) fn live_query() -> String {
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

/// A record's values as bound to [`INSERT_SQL`], converted up front so that
/// an unstorable value fails before anything is written.
pub(crate) struct InsertRow<'r> {
    r: &'r TaskRecord,
    id: i64,
    timeout_ms: Option<i64>,
    backoff_initial_ms: i64,
    backoff_max_ms: i64,
    run_at: Option<i64>,
    labels: Cow<'static, str>,
    depends_on: Cow<'static, str>,
    worker_id: Option<i64>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

impl<'r> InsertRow<'r> {
    pub(crate) fn new(r: &'r TaskRecord) -> Result<Self, StoreError> {
        let spec = &r.spec;
        // Most tasks have neither labels nor parents: no JSON to write.
        let labels = if spec.labels.is_empty() {
            Cow::Borrowed("{}")
        } else {
            Cow::Owned(serde_json::to_string(&spec.labels).map_err(json_error("labels"))?)
        };
        let depends_on = if r.body.depends_on.is_empty() {
            Cow::Borrowed("[]")
        } else {
            let ids: Vec<u64> = r.body.depends_on.iter().map(|d| d.0).collect();
            Cow::Owned(serde_json::to_string(&ids).map_err(json_error("depends_on"))?)
        };
        Ok(InsertRow {
            r,
            id: to_sql_int(r.id.0, "id")?,
            timeout_ms: spec
                .timeout_ms
                .map(|t| to_sql_int(t, "timeout_ms"))
                .transpose()?,
            backoff_initial_ms: to_sql_int(spec.backoff.initial_ms, "backoff.initial_ms")?,
            backoff_max_ms: to_sql_int(spec.backoff.max_ms, "backoff.max_ms")?,
            run_at: spec.run_at.map(|t| to_sql_int(t, "run_at")).transpose()?,
            labels,
            depends_on,
            worker_id: r.worker.map(|w| w.get().cast_signed()),
            created_at: to_sql_int(r.body.created_at, "created_at")?,
            started_at: r
                .started_at
                .map(|t| to_sql_int(t, "started_at"))
                .transpose()?,
            finished_at: r
                .finished_at
                .map(|t| to_sql_int(t, "finished_at"))
                .transpose()?,
        })
    }

    /// Runs `stmt` (a prepared [`INSERT_SQL`]) with this row's values.
    pub(crate) fn execute(&self, stmt: &mut Statement<'_>) -> rusqlite::Result<usize> {
        let r = self.r;
        stmt.execute(rusqlite::params![
            self.id,
            &*r.spec.kind,
            &*r.spec.queue,
            &*r.body.payload,
            r.spec.priority,
            r.state.as_str(),
            r.attempts,
            r.spec.max_attempts,
            self.timeout_ms,
            self.backoff_initial_ms,
            self.backoff_max_ms,
            r.spec.backoff.multiplier,
            self.run_at,
            r.body.idempotency_key.as_deref(),
            r.spec.routing_key.as_deref(),
            r.spec.strategy.as_str(),
            &*self.labels,
            &*self.depends_on,
            r.result.as_deref(),
            r.error.as_deref(),
            self.worker_id,
            self.created_at,
            self.started_at,
            self.finished_at,
            r.spec.pinned.map(|w| w.get().cast_signed()),
            i64::from(r.spec.join),
            r.body.shard.map(|(i, _)| i),
            r.body.shard.map(|(_, n)| n),
            r.request_digest.as_ref().map(<[u8; 32]>::as_slice),
        ])
    }
}

/// The columns of `schedules` in the order [`decode_schedule`] reads them.
macro_rules! schedule_columns {
    () => {
        "name, cron, timezone, task, misfire, catch_up_limit, paused, created_at, last_fire_at"
    };
}

const SCHEDULE_NAMES: [&str; 9] = [
    "name",
    "cron",
    "timezone",
    "task",
    "misfire",
    "catch_up_limit",
    "paused",
    "created_at",
    "last_fire_at",
];

pub(crate) const GET_SCHEDULE_SQL: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM schedules WHERE name = ?1"
);

pub(crate) const LIST_SCHEDULES_SQL: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM schedules ORDER BY name"
);

pub(crate) const UPSERT_SCHEDULE_SQL: &str = concat!(
    "INSERT INTO schedules (",
    schedule_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone, \
     task = excluded.task, misfire = excluded.misfire, \
     catch_up_limit = excluded.catch_up_limit, paused = excluded.paused, \
     created_at = excluded.created_at, last_fire_at = excluded.last_fire_at"
);

/// Runs `stmt` (a prepared [`UPSERT_SCHEDULE_SQL`]) with `r`'s values.
pub(crate) fn upsert_schedule(
    stmt: &mut Statement<'_>,
    r: &ScheduleRecord,
) -> Result<usize, StoreError> {
    let created_at = to_sql_int(r.created_at, "created_at")?;
    let last_fire_at = r
        .last_fire_at
        .map(|t| to_sql_int(t, "last_fire_at"))
        .transpose()?;
    stmt.execute(rusqlite::params![
        r.name,
        r.cron,
        r.timezone,
        &*r.task,
        r.misfire,
        r.catch_up_limit,
        r.paused,
        created_at,
        last_fire_at,
    ])
    .map_err(sql_error(&format!("storing schedule {:?}", r.name)))
}

/// Decodes one row selected with [`schedule_columns!`].
pub(crate) fn decode_schedule(row: &Row<'_>) -> Result<ScheduleRecord, StoreError> {
    let col = Columns {
        row,
        names: &SCHEDULE_NAMES,
        table: "schedule",
    };
    Ok(ScheduleRecord {
        name: col.text(0)?.to_owned(),
        cron: col.text(1)?.to_owned(),
        timezone: col.text(2)?.to_owned(),
        task: col.text(3)?.into(),
        misfire: col.text(4)?.to_owned(),
        catch_up_limit: col.int(5)?,
        paused: match col.int::<i64>(6)? {
            0 => false,
            1 => true,
            v => return Err(col.error(6, format!("{v} is not a boolean"))),
        },
        created_at: col.int(7)?,
        last_fire_at: col.opt_int(8)?,
    })
}

/// `list_queue_settings`' query, by name.
pub(crate) const LIST_QUEUE_SETTINGS_SQL: &str =
    "SELECT name, paused FROM queue_settings ORDER BY name";

/// Sets a queue's pause state, creating its row when missing.
pub(crate) const SET_QUEUE_PAUSED_SQL: &str = "INSERT INTO queue_settings (name, paused) \
     VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET paused = excluded.paused";

/// `count_by_queue_state`' query; the caller sorts states in life order.
pub(crate) const COUNT_BY_QUEUE_STATE_SQL: &str =
    "SELECT queue, state, COUNT(*) FROM tasks GROUP BY queue, state";

const QUEUE_SETTING_NAMES: [&str; 2] = ["name", "paused"];

const QUEUE_COUNT_NAMES: [&str; 3] = ["queue", "state", "count"];

/// Decodes one row of [`LIST_QUEUE_SETTINGS_SQL`].
pub(crate) fn decode_queue_setting(row: &Row<'_>) -> Result<(String, bool), StoreError> {
    let col = Columns {
        row,
        names: &QUEUE_SETTING_NAMES,
        table: "queue setting",
    };
    let paused = match col.int::<i64>(1)? {
        0 => false,
        1 => true,
        v => return Err(col.error(1, format!("{v} is not a boolean"))),
    };
    Ok((col.text(0)?.to_owned(), paused))
}

/// Decodes one row of [`COUNT_BY_QUEUE_STATE_SQL`].
pub(crate) fn decode_queue_count(row: &Row<'_>) -> Result<(String, TaskState, u64), StoreError> {
    let col = Columns {
        row,
        names: &QUEUE_COUNT_NAMES,
        table: "task",
    };
    let state = col.text(1)?;
    let state =
        TaskState::parse(state).ok_or_else(|| col.error(1, format!("unknown state {state:?}")))?;
    Ok((col.text(0)?.to_owned(), state, col.int(2)?))
}

/// Decodes one row selected with [`columns!`].
pub(crate) fn decode(row: &Row<'_>) -> Result<TaskRecord, StoreError> {
    let col = Columns {
        row,
        names: &NAMES,
        table: "task",
    };
    let labels: BTreeMap<String, String> =
        serde_json::from_str(col.text(16)?).map_err(|e| col.error(16, e))?;
    let depends_on: Vec<u64> = serde_json::from_str(col.text(17)?).map_err(|e| col.error(17, e))?;
    Ok(TaskRecord {
        id: TaskId(col.int(0)?),
        spec: TaskSpec {
            kind: col.text(1)?.into(),
            queue: col.text(2)?.into(),
            priority: col.int(4)?,
            run_at: col.opt_int(12)?,
            max_attempts: col.int(7)?,
            timeout_ms: col.opt_int(8)?,
            backoff: Backoff {
                initial_ms: col.int(9)?,
                max_ms: col.int(10)?,
                multiplier: col.real(11)?,
            },
            strategy: match col.opt_text(15)? {
                None => Strategy::RoundRobin,
                Some(s) => Strategy::parse(s)
                    .ok_or_else(|| col.error(15, format!("unknown strategy {s:?}")))?,
            },
            routing_key: col.opt_text(14)?.map(Into::into),
            labels,
            pinned: col
                .opt_int::<i64>(24)?
                .and_then(|w| WorkerId::new(w.cast_unsigned())),
            join: match col.int::<i64>(25)? {
                0 => false,
                1 => true,
                v => return Err(col.error(25, format!("{v} is not a boolean"))),
            },
        },
        body: TaskBody {
            payload: col.text(3)?.into(),
            idempotency_key: col.opt_text(13)?.map(str::to_string),
            depends_on: depends_on.into_iter().map(TaskId).collect(),
            created_at: col.int(21)?,
            shard: match (col.opt_int(26)?, col.opt_int(27)?) {
                (Some(i), Some(n)) => Some((i, n)),
                (None, None) => None,
                _ => return Err(col.error(26, "shard_index and shard_total go together")),
            },
        },
        state: {
            let s = col.text(5)?;
            TaskState::parse(s).ok_or_else(|| col.error(5, format!("unknown state {s:?}")))?
        },
        attempts: col.int(6)?,
        worker: col
            .opt_int::<i64>(20)?
            .and_then(|w| WorkerId::new(w.cast_unsigned())),
        started_at: col.opt_int(22)?,
        finished_at: col.opt_int(23)?,
        result: col.opt_text(18)?.map(Box::from),
        error: col.opt_text(19)?.map(str::to_string),
        request_digest: col.opt_digest(28)?,
    })
}

/// Typed, checked access to a row's columns.
struct Columns<'a, 'r> {
    row: &'a Row<'r>,
    /// Column names by index, for error messages.
    names: &'static [&'static str],
    /// What a row is, for error messages.
    table: &'static str,
}

impl<'a> Columns<'a, '_> {
    fn error(&self, idx: usize, detail: impl Display) -> StoreError {
        let name = self.names.get(idx).copied().unwrap_or("?");
        StoreError::new(
            ErrorKind::Corrupt,
            format!("stored {} column {name}: {detail}", self.table),
        )
    }

    fn value(&self, idx: usize) -> Result<ValueRef<'a>, StoreError> {
        self.row.get_ref(idx).map_err(|e| self.error(idx, e))
    }

    fn opt_text(&self, idx: usize) -> Result<Option<&'a str>, StoreError> {
        match self.value(idx)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|e| self.error(idx, e)),
            other => Err(self.error(idx, format!("expected text, found {}", other.data_type()))),
        }
    }

    fn text(&self, idx: usize) -> Result<&'a str, StoreError> {
        self.opt_text(idx)?
            .ok_or_else(|| self.error(idx, "unexpected NULL"))
    }

    fn opt_int<T: TryFrom<i64>>(&self, idx: usize) -> Result<Option<T>, StoreError> {
        match self.value(idx)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(v) => T::try_from(v)
                .map(Some)
                .map_err(|_| self.error(idx, format!("{v} is out of range"))),
            other => Err(self.error(
                idx,
                format!("expected an integer, found {}", other.data_type()),
            )),
        }
    }

    fn opt_digest(&self, idx: usize) -> Result<Option<[u8; 32]>, StoreError> {
        match self.value(idx)? {
            ValueRef::Null => Ok(None),
            ValueRef::Blob(bytes) => <[u8; 32]>::try_from(bytes)
                .map(Some)
                .map_err(|_| self.error(idx, format!("{} bytes, expected 32", bytes.len()))),
            other => Err(self.error(idx, format!("expected a blob, found {}", other.data_type()))),
        }
    }

    fn int<T: TryFrom<i64>>(&self, idx: usize) -> Result<T, StoreError> {
        self.opt_int(idx)?
            .ok_or_else(|| self.error(idx, "unexpected NULL"))
    }

    fn real(&self, idx: usize) -> Result<f64, StoreError> {
        match self.value(idx)? {
            ValueRef::Real(v) => Ok(v),
            // SQLite may hand back a REAL that holds an integral value as an
            // integer; the conversion is exact for any backoff multiplier.
            ValueRef::Integer(v) => Ok(v as f64),
            other => Err(self.error(idx, format!("expected a real, found {}", other.data_type()))),
        }
    }
}

/// A `u64` as SQLite's signed integer; values beyond `i64::MAX` are refused
/// as a [`ErrorKind::Conflict`]: the caller handed in a value the store
/// cannot keep.
pub(crate) fn to_sql_int(v: u64, field: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| {
        StoreError::new(
            ErrorKind::Conflict,
            format!("{field} {v} is beyond what the store can keep (2^63 - 1)"),
        )
    })
}

/// A stored id read back from SQLite.
pub(crate) fn task_id(id: i64, column: &str) -> Result<TaskId, StoreError> {
    u64::try_from(id).map(TaskId).map_err(|_| {
        StoreError::new(
            ErrorKind::Corrupt,
            format!("{column}: negative task id {id}"),
        )
    })
}

/// Encoding a map of strings or a list of numbers cannot fail; should it,
/// the value came from the caller.
fn json_error(field: &str) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |e| {
        StoreError::new(
            ErrorKind::Conflict,
            format!("encoding {field} as JSON: {e}"),
        )
    }
}

/// Classifies a rusqlite error, for `map_err`, with what was being done.
pub(crate) fn sql_error(doing: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::new(kind_of(&e), format!("{doing}: {e}"))
}

fn kind_of(e: &rusqlite::Error) -> ErrorKind {
    use rusqlite::ErrorCode as C;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            // The environment: retrying later may succeed.
            C::DiskFull
            | C::SystemIoFailure
            | C::DatabaseBusy
            | C::DatabaseLocked
            | C::CannotOpen
            | C::OutOfMemory
            | C::ReadOnly
            | C::PermissionDenied
            | C::FileLockingProtocolFailed
            | C::NoLargeFileSupport
            | C::OperationInterrupted => ErrorKind::Unavailable,
            // A task id stored twice (the primary key), a NOT NULL column
            // left empty (a NaN multiplier becomes NULL).
            C::ConstraintViolation | C::TooBig => ErrorKind::Conflict,
            // A damaged file, or a bug in this crate's SQL.
            _ => ErrorKind::Corrupt,
        },
        // A value the caller handed in could not be bound.
        rusqlite::Error::ToSqlConversionFailure(_) | rusqlite::Error::NulError(_) => {
            ErrorKind::Conflict
        }
        // Decoding failures, and misuse of the API: bugs, never retryable.
        _ => ErrorKind::Corrupt,
    }
}
