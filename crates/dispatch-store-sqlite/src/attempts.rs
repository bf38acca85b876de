//! Attempt history: the row an update stores for the attempt it ends, and
//! the read of a task's attempts. Purging a task deletes its attempts by a
//! trigger (schema version 8).

use dispatch_core::{AttemptOutcome, TaskId, WorkerId};
use dispatch_store::{AttemptRecord, ErrorKind, StoreError};
use rusqlite::{Connection, Row};

use crate::codec::{self, sql_error, to_sql_int};

/// Stores an ended attempt, unless one of that number is stored already.
/// Runs in the transaction of the update that ends it, once that update
/// was applied.
pub(crate) fn insert(conn: &Connection, a: &AttemptRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO attempts (task_id, attempt, worker_id, worker_name, \
         collected_at, finished_at, outcome, error, retry_delay_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .map_err(sql_error("preparing the attempt insert"))?
    .execute(rusqlite::params![
        to_sql_int(a.task.0, "task_id")?,
        a.attempt,
        a.worker.get().cast_signed(),
        a.worker_name,
        to_sql_int(a.collected_at, "collected_at")?,
        to_sql_int(a.finished_at, "finished_at")?,
        a.outcome.as_str(),
        a.error,
        a.retry_delay_ms
            .map(|d| to_sql_int(d, "retry_delay_ms"))
            .transpose()?,
    ])
    .map_err(sql_error(&format!(
        "storing attempt {} of task {}",
        a.attempt, a.task
    )))?;
    Ok(())
}

/// The attempts of `task`, by number.
pub(crate) fn list(conn: &Connection, task: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
    let Ok(id) = i64::try_from(task.0) else {
        return Ok(Vec::new());
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT task_id, attempt, worker_id, worker_name, collected_at, finished_at, \
             outcome, error, retry_delay_ms FROM attempts WHERE task_id = ?1 ORDER BY attempt",
        )
        .map_err(sql_error("preparing list_attempts"))?;
    let mut rows = stmt.query([id]).map_err(sql_error("reading attempts"))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error("reading attempts"))? {
        out.push(decode(row)?);
    }
    Ok(out)
}

fn decode(row: &Row<'_>) -> Result<AttemptRecord, StoreError> {
    let task: i64 = row.get(0).map_err(sql_error("decoding an attempt"))?;
    let worker: i64 = row.get(2).map_err(sql_error("decoding an attempt"))?;
    let outcome: String = row.get(6).map_err(sql_error("decoding an attempt"))?;
    let int = |i: usize, what: &str| -> Result<u64, StoreError> {
        let v: i64 = row.get(i).map_err(sql_error("decoding an attempt"))?;
        u64::try_from(v).map_err(|_| corrupt(format!("attempts.{what} is {v}")))
    };
    let delay: Option<i64> = row.get(8).map_err(sql_error("decoding an attempt"))?;
    Ok(AttemptRecord {
        task: codec::task_id(task, "attempts.task_id")?,
        attempt: row.get(1).map_err(sql_error("decoding an attempt"))?,
        worker: WorkerId::new(worker.cast_unsigned())
            .ok_or_else(|| corrupt("attempts.worker_id is 0".into()))?,
        worker_name: row.get(3).map_err(sql_error("decoding an attempt"))?,
        collected_at: int(4, "collected_at")?,
        finished_at: int(5, "finished_at")?,
        outcome: AttemptOutcome::parse(&outcome)
            .ok_or_else(|| corrupt(format!("attempts.outcome is {outcome:?}")))?,
        error: row.get(7).map_err(sql_error("decoding an attempt"))?,
        retry_delay_ms: delay
            .map(|d| {
                u64::try_from(d).map_err(|_| corrupt(format!("attempts.retry_delay_ms is {d}")))
            })
            .transpose()?,
    })
}

fn corrupt(message: String) -> StoreError {
    StoreError::new(ErrorKind::Corrupt, message)
}
