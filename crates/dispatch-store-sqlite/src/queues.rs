//! Queue settings set through the API (schema version 9): one row per
//! queue, replaced whole by each change.

use dispatch_core::Strategy;
use dispatch_store::{ErrorKind, QueueConfigRecord, StoreError};
use rusqlite::{Connection, Row};

use crate::codec::{sql_error, to_sql_int};

/// Stores a queue's settings; answers whether it replaced some.
pub(crate) fn put(conn: &Connection, c: &QueueConfigRecord) -> Result<bool, StoreError> {
    let existed = conn
        .prepare_cached("SELECT 1 FROM queue_configs WHERE name = ?1")
        .map_err(sql_error("preparing the queue settings lookup"))?
        .exists([&c.name])
        .map_err(sql_error("looking up queue settings"))?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO queue_configs (name, weight, max_running, rate_per_sec, burst, \
         max_per_key, max_depth, strategy) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .map_err(sql_error("preparing the queue settings write"))?
    .execute(rusqlite::params![
        c.name,
        c.weight,
        c.max_running,
        c.rate_per_sec,
        c.burst,
        c.max_per_key,
        c.max_depth
            .map(|d| to_sql_int(d, "max_depth"))
            .transpose()?,
        c.strategy.map(Strategy::as_str),
    ])
    .map_err(sql_error(&format!(
        "storing the settings of queue {:?}",
        c.name
    )))?;
    Ok(existed)
}

/// Every queue's stored settings, by name.
pub(crate) fn list(conn: &Connection) -> Result<Vec<QueueConfigRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, weight, max_running, rate_per_sec, burst, max_per_key, max_depth, \
             strategy FROM queue_configs ORDER BY name",
        )
        .map_err(sql_error("preparing list_queue_configs"))?;
    let mut rows = stmt
        .query([])
        .map_err(sql_error("reading queue settings"))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error("reading queue settings"))? {
        out.push(decode(row)?);
    }
    Ok(out)
}

fn decode(row: &Row<'_>) -> Result<QueueConfigRecord, StoreError> {
    let err = || sql_error("decoding queue settings");
    let depth: Option<i64> = row.get(6).map_err(err())?;
    let strategy: Option<String> = row.get(7).map_err(err())?;
    Ok(QueueConfigRecord {
        name: row.get(0).map_err(err())?,
        weight: row.get(1).map_err(err())?,
        max_running: row.get(2).map_err(err())?,
        rate_per_sec: row.get(3).map_err(err())?,
        burst: row.get(4).map_err(err())?,
        max_per_key: row.get(5).map_err(err())?,
        max_depth: depth
            .map(|d| u64::try_from(d).map_err(|_| corrupt(format!("max_depth is {d}"))))
            .transpose()?,
        strategy: strategy
            .map(|s| Strategy::parse(&s).ok_or_else(|| corrupt(format!("strategy is {s:?}"))))
            .transpose()?,
    })
}

fn corrupt(detail: String) -> StoreError {
    StoreError::new(
        ErrorKind::Corrupt,
        format!("stored queue settings: {detail}"),
    )
}
