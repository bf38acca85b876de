//! Between records and PostgreSQL rows and parameters, and between
//! tokio-postgres' errors and [`StoreError`]s.
//!
//! Decoding never panics: a value of the wrong type or out of range, bad
//! JSON or an unknown state is an [`ErrorKind::Corrupt`] error naming the
//! column.

use std::collections::BTreeMap;
use std::fmt::Display;

use dispatch_core::{Backoff, Strategy, TaskId, TaskSpec, TaskState, WorkerId};
use dispatch_store::{
    ErrorKind, ScheduleRecord, StoreError, TaskBody, TaskRecord, TaskUpdate, WorkerRecord,
};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};

/// A parameter owned by a pipelined statement until it is sent.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// The columns of `tasks` in the order [`decode`] reads them.
macro_rules! columns {
    () => {
        "id, type, queue, payload, priority, state, attempts, max_attempts, timeout_ms, \
         backoff_initial_ms, backoff_max_ms, backoff_multiplier, run_at, idempotency_key, \
         routing_key, strategy, labels::text, depends_on, result, error, worker_id, created_at, \
         started_at, finished_at, pinned_worker, is_join, shard_index, shard_total, \
         request_digest"
    };
}
pub(crate) use columns;

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

/// Many tasks in one statement: each column is one array parameter, and
/// `unnest` turns them back into rows, in order. Tasks whose idempotency
/// key is taken are skipped; the ids stored are returned.
pub(crate) const INSERT_SQL: &str = "INSERT INTO tasks (id, type, queue, payload, priority, \
     state, attempts, max_attempts, timeout_ms, backoff_initial_ms, backoff_max_ms, \
     backoff_multiplier, run_at, idempotency_key, routing_key, strategy, labels, depends_on, \
     result, error, worker_id, created_at, started_at, finished_at, pinned_worker, is_join, \
     shard_index, shard_total, request_digest) \
     SELECT id, type, queue, payload, priority, state, attempts, max_attempts, timeout_ms, \
     backoff_initial_ms, backoff_max_ms, backoff_multiplier, run_at, idempotency_key, \
     routing_key, strategy, labels::jsonb, depends_on::bigint[], result, error, worker_id, \
     created_at, started_at, finished_at, pinned_worker, is_join, shard_index, shard_total, \
     request_digest \
     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[], \
     $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
     $12::double precision[], $13::bigint[], $14::text[], $15::text[], $16::text[], \
     $17::text[], $18::text[], $19::text[], $20::text[], $21::bigint[], $22::bigint[], \
     $23::bigint[], $24::bigint[], $25::bigint[], $26::boolean[], $27::bigint[], \
     $28::bigint[], $29::bytea[]) \
     WITH ORDINALITY AS r(id, type, queue, payload, priority, state, attempts, max_attempts, \
     timeout_ms, backoff_initial_ms, backoff_max_ms, backoff_multiplier, run_at, \
     idempotency_key, routing_key, strategy, labels, depends_on, result, error, worker_id, \
     created_at, started_at, finished_at, pinned_worker, is_join, shard_index, shard_total, \
     request_digest, ord) \
     ORDER BY ord \
     ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
     RETURNING id";

/// The tasks of one insert statement, column by column.
#[derive(Default)]
pub(crate) struct InsertColumns {
    id: Vec<i64>,
    kind: Vec<String>,
    queue: Vec<String>,
    payload: Vec<String>,
    priority: Vec<i16>,
    state: Vec<&'static str>,
    attempts: Vec<i64>,
    max_attempts: Vec<i64>,
    timeout_ms: Vec<Option<i64>>,
    backoff_initial_ms: Vec<i64>,
    backoff_max_ms: Vec<i64>,
    backoff_multiplier: Vec<f64>,
    run_at: Vec<Option<i64>>,
    idempotency_key: Vec<Option<String>>,
    routing_key: Vec<Option<String>>,
    strategy: Vec<&'static str>,
    labels: Vec<String>,
    depends_on: Vec<String>,
    result: Vec<Option<String>>,
    error: Vec<Option<String>>,
    worker_id: Vec<Option<i64>>,
    created_at: Vec<i64>,
    started_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
    pinned_worker: Vec<Option<i64>>,
    is_join: Vec<bool>,
    shard_index: Vec<Option<i64>>,
    shard_total: Vec<Option<i64>>,
    request_digest: Vec<Option<Vec<u8>>>,
}

impl InsertColumns {
    pub(crate) fn len(&self) -> usize {
        self.id.len()
    }

    /// Adds one task; a value the store cannot hold is refused before
    /// anything is sent.
    pub(crate) fn push(&mut self, r: &TaskRecord) -> Result<(), StoreError> {
        let spec = &r.spec;
        let labels = if spec.labels.is_empty() {
            "{}".to_owned()
        } else {
            serde_json::to_string(&spec.labels).map_err(json_error("labels"))?
        };
        let mut depends_on = String::from("{");
        for (i, d) in r.body.depends_on.iter().enumerate() {
            if i > 0 {
                depends_on.push(',');
            }
            depends_on.push_str(&to_sql_int(d.0, "depends_on")?.to_string());
        }
        depends_on.push('}');
        self.id.push(to_sql_int(r.id.0, "id")?);
        self.kind.push(spec.kind.to_string());
        self.queue.push(spec.queue.to_string());
        self.payload.push(r.body.payload.to_string());
        self.priority.push(i16::from(spec.priority));
        self.state.push(r.state.as_str());
        self.attempts.push(i64::from(r.attempts));
        self.max_attempts.push(i64::from(spec.max_attempts));
        self.timeout_ms
            .push(opt_int(spec.timeout_ms, "timeout_ms")?);
        self.backoff_initial_ms
            .push(to_sql_int(spec.backoff.initial_ms, "backoff.initial_ms")?);
        self.backoff_max_ms
            .push(to_sql_int(spec.backoff.max_ms, "backoff.max_ms")?);
        self.backoff_multiplier.push(spec.backoff.multiplier);
        self.run_at.push(opt_int(spec.run_at, "run_at")?);
        self.idempotency_key.push(r.body.idempotency_key.clone());
        self.routing_key
            .push(spec.routing_key.as_deref().map(str::to_owned));
        self.strategy.push(spec.strategy.as_str());
        self.labels.push(labels);
        self.depends_on.push(depends_on);
        self.result.push(r.result.as_deref().map(str::to_owned));
        self.error.push(r.error.clone());
        self.worker_id.push(r.worker.map(|w| w.get().cast_signed()));
        self.created_at
            .push(to_sql_int(r.body.created_at, "created_at")?);
        self.started_at.push(opt_int(r.started_at, "started_at")?);
        self.finished_at
            .push(opt_int(r.finished_at, "finished_at")?);
        self.pinned_worker
            .push(spec.pinned.map(|w| w.get().cast_signed()));
        self.is_join.push(spec.join);
        self.shard_index
            .push(r.body.shard.map(|(i, _)| i64::from(i)));
        self.shard_total
            .push(r.body.shard.map(|(_, n)| i64::from(n)));
        self.request_digest
            .push(r.request_digest.map(|d| d.to_vec()));
        Ok(())
    }

    /// The parameters of [`INSERT_SQL`].
    pub(crate) fn into_params(self) -> Vec<Param> {
        vec![
            Box::new(self.id),
            Box::new(self.kind),
            Box::new(self.queue),
            Box::new(self.payload),
            Box::new(self.priority),
            Box::new(self.state),
            Box::new(self.attempts),
            Box::new(self.max_attempts),
            Box::new(self.timeout_ms),
            Box::new(self.backoff_initial_ms),
            Box::new(self.backoff_max_ms),
            Box::new(self.backoff_multiplier),
            Box::new(self.run_at),
            Box::new(self.idempotency_key),
            Box::new(self.routing_key),
            Box::new(self.strategy),
            Box::new(self.labels),
            Box::new(self.depends_on),
            Box::new(self.result),
            Box::new(self.error),
            Box::new(self.worker_id),
            Box::new(self.created_at),
            Box::new(self.started_at),
            Box::new(self.finished_at),
            Box::new(self.pinned_worker),
            Box::new(self.is_join),
            Box::new(self.shard_index),
            Box::new(self.shard_total),
            Box::new(self.request_digest),
        ]
    }
}

/// The updates of one update statement, column by column (see
/// `write.rs`: the tasks of one statement are distinct).
#[derive(Default)]
pub(crate) struct UpdateColumns {
    id: Vec<i64>,
    state: Vec<&'static str>,
    attempts: Vec<i64>,
    worker_id: Vec<Option<i64>>,
    started_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
    run_at: Vec<Option<i64>>,
    result: Vec<Option<String>>,
    error: Vec<Option<String>>,
    /// The attempts the updates end.
    ended: crate::attempts::AttemptColumns,
}

impl UpdateColumns {
    /// Adds one update; answers the id it matches (an id beyond what can
    /// be stored matches no row).
    pub(crate) fn push(&mut self, u: &TaskUpdate) -> Result<i64, StoreError> {
        let id = i64::try_from(u.id.0).unwrap_or(-1);
        let started_at = opt_int(u.started_at, "started_at")?;
        let finished_at = opt_int(u.finished_at, "finished_at")?;
        let run_at = opt_int(u.run_at, "run_at")?;
        self.id.push(id);
        self.state.push(u.state.as_str());
        self.attempts.push(i64::from(u.attempts));
        self.worker_id.push(u.worker.map(|w| w.get().cast_signed()));
        self.started_at.push(started_at);
        self.finished_at.push(finished_at);
        self.run_at.push(run_at);
        self.result.push(u.result.as_deref().map(str::to_owned));
        self.error.push(u.error.clone());
        if let Some(a) = &u.attempt {
            self.ended.push(a)?;
        }
        Ok(id)
    }

    /// The parameters of the update statement.
    pub(crate) fn into_params(self) -> Vec<Param> {
        let mut params: Vec<Param> = vec![
            Box::new(self.id),
            Box::new(self.state),
            Box::new(self.attempts),
            Box::new(self.worker_id),
            Box::new(self.started_at),
            Box::new(self.finished_at),
            Box::new(self.run_at),
            Box::new(self.result),
            Box::new(self.error),
        ];
        params.extend(self.ended.into_params());
        params
    }
}

/// The parameters of the schedule upsert, in [`schedule_columns!`] order.
pub(crate) fn schedule_params(r: &ScheduleRecord) -> Result<Vec<Param>, StoreError> {
    Ok(vec![
        Box::new(r.name.clone()),
        Box::new(r.cron.clone()),
        Box::new(r.timezone.clone()),
        Box::new(r.task.to_string()),
        Box::new(r.misfire.clone()),
        Box::new(i64::from(r.catch_up_limit)),
        Box::new(r.paused),
        Box::new(to_sql_int(r.created_at, "created_at")?),
        Box::new(opt_int(r.last_fire_at, "last_fire_at")?),
    ])
}

/// The parameters of the worker upsert.
pub(crate) fn worker_params(w: &WorkerRecord) -> Result<Vec<Param>, StoreError> {
    Ok(vec![
        Box::new(w.id.get().cast_signed()),
        Box::new(w.name.clone()),
        Box::new(serde_json::to_string(&w.types).map_err(json_error("types"))?),
        Box::new(serde_json::to_string(&w.labels).map_err(json_error("labels"))?),
        Box::new(i64::from(w.capacity)),
        Box::new(i64::from(w.weight)),
        Box::new(w.owner.map(|o| o.to_vec())),
        Box::new(to_sql_int(w.registered_at, "registered_at")?),
    ])
}

/// The columns of `schedules` in the order [`decode_schedule`] reads them.
macro_rules! schedule_columns {
    () => {
        "name, cron, timezone, task, misfire, catch_up_limit, paused, created_at, last_fire_at"
    };
}
pub(crate) use schedule_columns;

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

/// Typed, checked access to a row's columns.
pub(crate) struct Columns<'r> {
    row: &'r Row,
    names: &'static [&'static str],
    table: &'static str,
}

impl<'r> Columns<'r> {
    pub(crate) fn new(row: &'r Row, names: &'static [&'static str], table: &'static str) -> Self {
        Columns { row, names, table }
    }

    pub(crate) fn error(&self, idx: usize, detail: impl Display) -> StoreError {
        let name = self.names.get(idx).copied().unwrap_or("?");
        StoreError::new(
            ErrorKind::Corrupt,
            format!("stored {} column {name}: {detail}", self.table),
        )
    }

    pub(crate) fn get<T: FromSql<'r>>(&self, idx: usize) -> Result<T, StoreError> {
        self.row.try_get(idx).map_err(|e| self.error(idx, e))
    }

    fn text(&self, idx: usize) -> Result<&'r str, StoreError> {
        self.get(idx)
    }

    fn opt_text(&self, idx: usize) -> Result<Option<&'r str>, StoreError> {
        self.get(idx)
    }

    /// A non-negative integer column as `T`.
    pub(crate) fn int<T: TryFrom<i64>>(&self, idx: usize) -> Result<T, StoreError> {
        self.opt_int(idx)?
            .ok_or_else(|| self.error(idx, "unexpected NULL"))
    }

    pub(crate) fn opt_int<T: TryFrom<i64>>(&self, idx: usize) -> Result<Option<T>, StoreError> {
        match self.get::<Option<i64>>(idx)? {
            None => Ok(None),
            Some(v) => T::try_from(v)
                .map(Some)
                .map_err(|_| self.error(idx, format!("{v} is out of range"))),
        }
    }

    fn opt_digest(&self, idx: usize) -> Result<Option<[u8; 32]>, StoreError> {
        match self.get::<Option<&[u8]>>(idx)? {
            None => Ok(None),
            Some(bytes) => <[u8; 32]>::try_from(bytes)
                .map(Some)
                .map_err(|_| self.error(idx, format!("{} bytes, expected 32", bytes.len()))),
        }
    }
}

/// Decodes one row selected with [`columns!`].
pub(crate) fn decode(row: &Row) -> Result<TaskRecord, StoreError> {
    let col = Columns::new(row, &NAMES, "task");
    let labels: BTreeMap<String, String> =
        serde_json::from_str(col.text(16)?).map_err(|e| col.error(16, e))?;
    let depends_on: Vec<i64> = col.get(17)?;
    let depends_on = depends_on
        .into_iter()
        .map(|d| {
            u64::try_from(d)
                .map(TaskId)
                .map_err(|_| col.error(17, format!("negative task id {d}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let priority: i16 = col.get(4)?;
    Ok(TaskRecord {
        id: TaskId(col.int(0)?),
        spec: TaskSpec {
            kind: col.text(1)?.into(),
            queue: col.text(2)?.into(),
            priority: i8::try_from(priority)
                .map_err(|_| col.error(4, format!("{priority} is out of range")))?,
            run_at: col.opt_int(12)?,
            max_attempts: col.int(7)?,
            timeout_ms: col.opt_int(8)?,
            backoff: Backoff {
                initial_ms: col.int(9)?,
                max_ms: col.int(10)?,
                multiplier: col.get(11)?,
            },
            strategy: {
                let s = col.text(15)?;
                Strategy::parse(s)
                    .ok_or_else(|| col.error(15, format!("unknown strategy {s:?}")))?
            },
            routing_key: col.opt_text(14)?.map(Into::into),
            labels,
            pinned: col
                .get::<Option<i64>>(24)?
                .and_then(|w| WorkerId::new(w.cast_unsigned())),
            join: col.get(25)?,
        },
        body: TaskBody {
            payload: col.text(3)?.into(),
            idempotency_key: col.opt_text(13)?.map(str::to_string),
            depends_on,
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
            .get::<Option<i64>>(20)?
            .and_then(|w| WorkerId::new(w.cast_unsigned())),
        started_at: col.opt_int(22)?,
        finished_at: col.opt_int(23)?,
        result: col.opt_text(18)?.map(Box::from),
        error: col.opt_text(19)?.map(str::to_string),
        request_digest: col.opt_digest(28)?,
    })
}

/// Decodes one row selected with [`schedule_columns!`].
pub(crate) fn decode_schedule(row: &Row) -> Result<ScheduleRecord, StoreError> {
    let col = Columns::new(row, &SCHEDULE_NAMES, "schedule");
    Ok(ScheduleRecord {
        name: col.text(0)?.to_owned(),
        cron: col.text(1)?.to_owned(),
        timezone: col.text(2)?.to_owned(),
        task: col.text(3)?.into(),
        misfire: col.text(4)?.to_owned(),
        catch_up_limit: col.int(5)?,
        paused: col.get(6)?,
        created_at: col.int(7)?,
        last_fire_at: col.opt_int(8)?,
    })
}

const WORKER_NAMES: [&str; 8] = [
    "id",
    "name",
    "types",
    "labels",
    "capacity",
    "weight",
    "owner",
    "registered_at",
];

/// Decodes one row of `SELECT id, name, types::text, labels::text,
/// capacity, weight, owner, registered_at FROM workers`.
pub(crate) fn decode_worker(row: &Row) -> Result<WorkerRecord, StoreError> {
    let col = Columns::new(row, &WORKER_NAMES, "worker");
    let id: i64 = col.get(0)?;
    Ok(WorkerRecord {
        id: WorkerId::new(id.cast_unsigned()).ok_or_else(|| col.error(0, "0 is no worker id"))?,
        name: col.text(1)?.to_owned(),
        types: serde_json::from_str(col.text(2)?).map_err(|e| col.error(2, e))?,
        labels: serde_json::from_str(col.text(3)?).map_err(|e| col.error(3, e))?,
        capacity: col.int(4)?,
        weight: col.int(5)?,
        owner: col.opt_digest(6)?,
        registered_at: col.int(7)?,
    })
}

/// A `u64` as PostgreSQL's bigint; values beyond `i64::MAX` are refused as
/// a [`ErrorKind::Conflict`]: the caller handed in a value the store
/// cannot keep.
pub(crate) fn to_sql_int(v: u64, field: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| {
        StoreError::new(
            ErrorKind::Conflict,
            format!("{field} {v} is beyond what the store can keep (2^63 - 1)"),
        )
    })
}

fn opt_int(v: Option<u64>, field: &str) -> Result<Option<i64>, StoreError> {
    v.map(|v| to_sql_int(v, field)).transpose()
}

/// A stored task id read back.
pub(crate) fn task_id(id: i64, column: &str) -> Result<TaskId, StoreError> {
    u64::try_from(id).map(TaskId).map_err(|_| {
        StoreError::new(
            ErrorKind::Corrupt,
            format!("{column}: negative task id {id}"),
        )
    })
}

/// Encoding a map of strings or a list of strings cannot fail; should it,
/// the value came from the caller.
fn json_error(field: &str) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |e| {
        StoreError::new(
            ErrorKind::Conflict,
            format!("encoding {field} as JSON: {e}"),
        )
    }
}

/// Classifies a tokio-postgres error, for `map_err`, with what was being
/// done.
pub(crate) fn pg_error(doing: &str) -> impl FnOnce(tokio_postgres::Error) -> StoreError + '_ {
    move |e| {
        let detail = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => {
                let mut s = e.to_string();
                if let Some(source) = std::error::Error::source(&e) {
                    s.push_str(&format!(": {source}"));
                }
                s
            }
        };
        StoreError::new(kind_of(&e), format!("{doing}: {detail}"))
    }
}

/// What an error means for the caller.
///
/// - The server is away or refusing work now (connection errors, class 08;
///   too many connections and out of resources, 53; shutdown or
///   cancellation, 57; system errors, 58; a serialization failure or a
///   deadlock, 40; a lock not available, 55; a password refused, 28, or a
///   database missing, 3D, which an operator fixes without restarting
///   Dispatch): `Unavailable`, retry later.
/// - An integrity constraint (a task id stored twice, 23) or a value the
///   database refuses (a NUL character in text, 22): `Conflict`, a bug of
///   the caller.
/// - Anything else (an unknown column: a schema from another version; a
///   value that does not decode): `Corrupt`.
pub(crate) fn kind_of(e: &tokio_postgres::Error) -> ErrorKind {
    if let Some(db) = e.as_db_error() {
        // `dispatch_fence` (migration 0004): another replica leads.
        if db.code().code() == "P0001" && db.message().starts_with("dispatch fence:") {
            return ErrorKind::Fenced;
        }
        return match &db.code().code()[..2] {
            "08" | "53" | "57" | "58" | "40" | "55" | "28" | "3D" => ErrorKind::Unavailable,
            "23" | "22" => ErrorKind::Conflict,
            _ => ErrorKind::Corrupt,
        };
    }
    if e.is_closed() {
        return ErrorKind::Unavailable;
    }
    let text = e.to_string();
    if text.starts_with("error deserializing") || text.starts_with("invalid message") {
        ErrorKind::Corrupt
    } else if text.starts_with("error serializing") {
        ErrorKind::Conflict
    } else {
        // I/O, a connection refused or timed out, a lost server.
        ErrorKind::Unavailable
    }
}
