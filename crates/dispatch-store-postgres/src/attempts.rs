//! Attempt history: the columns an update statement carries for the
//! attempts its updates end (inserted by the same statement, so the
//! history costs no round trip of its own), and the read of a task's
//! attempts.

use dispatch_core::{AttemptOutcome, WorkerId};
use dispatch_store::{AttemptRecord, StoreError};
use tokio_postgres::Row;

use crate::codec::{Columns, Param, to_sql_int};

/// The attempt columns of one update statement, `$10` to `$18`.
#[derive(Default)]
pub(crate) struct AttemptColumns {
    task_id: Vec<i64>,
    attempt: Vec<i64>,
    worker_id: Vec<i64>,
    worker_name: Vec<String>,
    collected_at: Vec<i64>,
    finished_at: Vec<i64>,
    outcome: Vec<&'static str>,
    error: Vec<Option<String>>,
    retry_delay_ms: Vec<Option<i64>>,
}

impl AttemptColumns {
    pub(crate) fn push(&mut self, a: &AttemptRecord) -> Result<(), StoreError> {
        self.task_id.push(to_sql_int(a.task.0, "task_id")?);
        self.attempt.push(i64::from(a.attempt));
        self.worker_id.push(a.worker.get().cast_signed());
        self.worker_name.push(a.worker_name.clone());
        self.collected_at
            .push(to_sql_int(a.collected_at, "collected_at")?);
        self.finished_at
            .push(to_sql_int(a.finished_at, "finished_at")?);
        self.outcome.push(a.outcome.as_str());
        self.error.push(a.error.clone());
        self.retry_delay_ms.push(
            a.retry_delay_ms
                .map(|d| to_sql_int(d, "retry_delay_ms"))
                .transpose()?,
        );
        Ok(())
    }

    pub(crate) fn into_params(self) -> Vec<Param> {
        vec![
            Box::new(self.task_id),
            Box::new(self.attempt),
            Box::new(self.worker_id),
            Box::new(self.worker_name),
            Box::new(self.collected_at),
            Box::new(self.finished_at),
            Box::new(self.outcome),
            Box::new(self.error),
            Box::new(self.retry_delay_ms),
        ]
    }
}

/// The part of the update statement that stores the attempts of the
/// updates it applied (`changed`: their ids).
pub(crate) const INSERT_CHANGED: &str = "INSERT INTO attempts (task_id, attempt, worker_id, \
     worker_name, collected_at, finished_at, outcome, error, retry_delay_ms) \
     SELECT a.* FROM unnest($10::bigint[], $11::bigint[], $12::bigint[], $13::text[], \
         $14::bigint[], $15::bigint[], $16::text[], $17::text[], $18::bigint[]) \
         AS a(task_id, attempt, worker_id, worker_name, collected_at, finished_at, outcome, \
              error, retry_delay_ms) \
     WHERE a.task_id IN (SELECT id FROM changed) \
     ON CONFLICT (task_id, attempt) DO NOTHING";

/// The query of `list_attempts`.
pub(crate) const LIST_SQL: &str = "SELECT task_id, attempt, worker_id, worker_name, \
     collected_at, finished_at, outcome, error, retry_delay_ms FROM attempts \
     WHERE task_id = $1 ORDER BY attempt";

const NAMES: [&str; 9] = [
    "task_id",
    "attempt",
    "worker_id",
    "worker_name",
    "collected_at",
    "finished_at",
    "outcome",
    "error",
    "retry_delay_ms",
];

/// Decodes one row of [`LIST_SQL`].
pub(crate) fn decode(row: &Row) -> Result<AttemptRecord, StoreError> {
    let col = Columns::new(row, &NAMES, "attempt");
    let worker: i64 = col.get(2)?;
    let outcome: &str = col.get(6)?;
    Ok(AttemptRecord {
        task: dispatch_core::TaskId(col.int(0)?),
        attempt: col.int(1)?,
        worker: WorkerId::new(worker.cast_unsigned())
            .ok_or_else(|| col.error(2, "0 is no worker id"))?,
        worker_name: col.get::<&str>(3)?.to_owned(),
        collected_at: col.int(4)?,
        finished_at: col.int(5)?,
        outcome: AttemptOutcome::parse(outcome)
            .ok_or_else(|| col.error(6, format!("unknown outcome {outcome:?}")))?,
        error: col.get::<Option<&str>>(7)?.map(str::to_owned),
        retry_delay_ms: col.opt_int(8)?,
    })
}
