//! What several replicas on one store share, kept in SQLite too so that
//! every backend answers the same trait (one folder never has two
//! servers): the lease of each partition and the fence that checks it, the
//! replicas seen, the id counter, and the workers a leader keeps.

use dispatch_core::TaskId;
use dispatch_store::{ErrorKind, Lease, Replica, ReplicaRecord, StoreError, WorkerRecord};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use crate::codec::{self, sql_error, to_sql_int};

/// Stores a worker; answers whether it replaced one.
pub(crate) fn put_worker(conn: &Connection, w: &WorkerRecord) -> Result<bool, StoreError> {
    let id = w.id.get().cast_signed();
    let existed = conn
        .prepare_cached("SELECT 1 FROM workers WHERE id = ?1")
        .map_err(sql_error("preparing the worker lookup"))?
        .exists([id])
        .map_err(sql_error("looking up a worker"))?;
    let types = serde_json::to_string(&w.types)
        .map_err(|e| StoreError::new(ErrorKind::Conflict, format!("encoding worker types: {e}")))?;
    let labels = serde_json::to_string(&w.labels).map_err(|e| {
        StoreError::new(ErrorKind::Conflict, format!("encoding worker labels: {e}"))
    })?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO workers (id, name, types, labels, capacity, weight, owner, registered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .map_err(sql_error("preparing the worker insert"))?
    .execute(rusqlite::params![
        id,
        w.name,
        types,
        labels,
        w.capacity,
        w.weight,
        w.owner.as_ref().map(|o| &o[..]),
        to_sql_int(w.registered_at, "registered_at")?,
    ])
    .map_err(sql_error("storing a worker"))?;
    Ok(existed)
}

/// Fails with [`ErrorKind::Fenced`] unless `partition` is led at `epoch`.
pub(crate) fn check_fence(
    conn: &Connection,
    partition: &str,
    epoch: u64,
) -> Result<(), StoreError> {
    let current: Option<i64> = conn
        .prepare_cached("SELECT epoch FROM leases WHERE partition = ?1")
        .map_err(sql_error("preparing the fence"))?
        .query_row([partition], |row| row.get(0))
        .optional()
        .map_err(sql_error("reading the lease"))?;
    if current.and_then(|e| u64::try_from(e).ok()) == Some(epoch) {
        return Ok(());
    }
    Err(StoreError::new(
        ErrorKind::Fenced,
        format!("partition {partition} is no longer led at epoch {epoch}"),
    ))
}

fn decode_worker(row: &rusqlite::Row<'_>) -> Result<WorkerRecord, StoreError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::new(ErrorKind::Corrupt, format!("workers.{what}: {e}"))
    };
    let get = |i: usize| -> Result<Value, StoreError> {
        row.get::<_, Value>(i).map_err(|e| corrupt("row", &e))
    };
    let int = |i: usize, what: &str| -> Result<i64, StoreError> {
        match get(i)? {
            Value::Integer(v) => Ok(v),
            other => Err(corrupt(what, &format!("{other:?}"))),
        }
    };
    let text = |i: usize, what: &str| -> Result<String, StoreError> {
        match get(i)? {
            Value::Text(v) => Ok(v),
            other => Err(corrupt(what, &format!("{other:?}"))),
        }
    };
    let id = dispatch_core::WorkerId::new(int(0, "id")?.cast_unsigned())
        .ok_or_else(|| corrupt("id", &0))?;
    let types = serde_json::from_str(&text(2, "types")?).map_err(|e| corrupt("types", &e))?;
    let labels = serde_json::from_str(&text(3, "labels")?).map_err(|e| corrupt("labels", &e))?;
    let owner = match get(6)? {
        Value::Null => None,
        Value::Blob(b) => Some(
            b.try_into()
                .map_err(|_| corrupt("owner", &"not 32 bytes"))?,
        ),
        other => return Err(corrupt("owner", &format!("{other:?}"))),
    };
    Ok(WorkerRecord {
        id,
        name: text(1, "name")?,
        types,
        labels,
        capacity: u32::try_from(int(4, "capacity")?).map_err(|e| corrupt("capacity", &e))?,
        weight: u32::try_from(int(5, "weight")?).map_err(|e| corrupt("weight", &e))?,
        owner,
        registered_at: u64::try_from(int(7, "registered_at")?)
            .map_err(|e| corrupt("registered_at", &e))?,
    })
}

/// The store's clock for leases: this machine's wall clock.
fn clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn claim_lease(
    conn: &Connection,
    partition: &str,
    me: &Replica,
    lease_ms: u64,
) -> Result<Lease, StoreError> {
    let now = clock_ms();
    let lease_ms = i64::try_from(lease_ms).unwrap_or(i64::MAX / 2);
    conn.prepare_cached(
        "INSERT INTO replicas (id, url, last_seen_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET url = excluded.url, last_seen_at = excluded.last_seen_at",
    )
    .map_err(sql_error("preparing the replica record"))?
    .execute(rusqlite::params![me.id, me.url, now])
    .map_err(sql_error("recording the replica"))?;
    let current: Option<(String, String, i64, i64)> = conn
        .prepare_cached(
            "SELECT holder, holder_url, epoch, expires_at FROM leases WHERE partition = ?1",
        )
        .map_err(sql_error("preparing the lease lookup"))?
        .query_row([partition], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()
        .map_err(sql_error("reading the lease"))?;
    let (holder, url, epoch, expires_at) = current.unwrap_or_default();
    let live = expires_at > now;
    if live && holder != me.id {
        return Ok(Lease {
            epoch: epoch.max(0) as u64,
            holder,
            holder_url: url,
            held: false,
            remaining_ms: (expires_at - now) as u64,
        });
    }
    let epoch = if live { epoch } else { epoch + 1 };
    conn.prepare_cached(
        "INSERT INTO leases (partition, holder, holder_url, epoch, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(partition) DO UPDATE SET holder = excluded.holder,
             holder_url = excluded.holder_url, epoch = excluded.epoch,
             expires_at = excluded.expires_at",
    )
    .map_err(sql_error("preparing the lease claim"))?
    .execute(rusqlite::params![
        partition,
        me.id,
        me.url,
        epoch,
        now.saturating_add(lease_ms)
    ])
    .map_err(sql_error("claiming the lease"))?;
    Ok(Lease {
        epoch: epoch as u64,
        holder: me.id.clone(),
        holder_url: me.url.clone(),
        held: true,
        remaining_ms: lease_ms as u64,
    })
}

/// Gives the lease up when `me` holds it at `epoch`.
pub(crate) fn release_lease(
    conn: &Connection,
    partition: &str,
    me: &Replica,
    epoch: u64,
) -> Result<(), StoreError> {
    let epoch = i64::try_from(epoch).unwrap_or(-1);
    conn.prepare_cached(
        "UPDATE leases SET expires_at = 0 WHERE partition = ?1 AND holder = ?2 AND epoch = ?3",
    )
    .map_err(sql_error("preparing the lease release"))?
    .execute(rusqlite::params![partition, me.id, epoch])
    .map_err(sql_error("releasing the lease"))?;
    Ok(())
}

/// Every replica recorded, by id.
pub(crate) fn list_replicas(conn: &Connection) -> Result<Vec<ReplicaRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT id, url, last_seen_at FROM replicas ORDER BY id")
        .map_err(sql_error("preparing the replica list"))?;
    let rows = stmt
        .query_map([], |row| {
            Ok(ReplicaRecord {
                id: row.get(0)?,
                url: row.get(1)?,
                last_seen_at: row.get::<_, i64>(2)?.max(0) as u64,
            })
        })
        .map_err(sql_error("listing replicas"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sql_error("reading a replica"))
}

/// Every stored worker, by id (the `u64` order, not the stored bit
/// pattern's).
pub(crate) fn load_workers(conn: &Connection) -> Result<Vec<WorkerRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, name, types, labels, capacity, weight, owner, registered_at FROM workers",
        )
        .map_err(sql_error("preparing the worker list"))?;
    let mut rows = stmt.query([]).map_err(sql_error("listing workers"))?;
    let mut workers = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error("reading workers"))? {
        workers.push(decode_worker(row)?);
    }
    workers.sort_by_key(|w| w.id);
    Ok(workers)
}

/// Reserves `n` task ids above every id handed out or stored.
pub(crate) fn reserve_ids(conn: &Connection, n: u64) -> Result<TaskId, StoreError> {
    let n = i64::try_from(n)
        .map_err(|_| StoreError::new(ErrorKind::Conflict, format!("cannot reserve {n} ids")))?;
    let first: i64 = conn
        .query_row(
            "SELECT MAX(COALESCE((SELECT next_id FROM id_counter), 1),
                        COALESCE((SELECT MAX(id) FROM tasks), 0) + 1)",
            [],
            |row| row.get(0),
        )
        .map_err(sql_error("reading the id counter"))?;
    conn.execute(
        "INSERT INTO id_counter (one, next_id) VALUES (1, ?1)
         ON CONFLICT(one) DO UPDATE SET next_id = excluded.next_id",
        [first
            .checked_add(n)
            .ok_or_else(|| StoreError::new(ErrorKind::Conflict, "task ids are exhausted"))?],
    )
    .map_err(sql_error("advancing the id counter"))?;
    codec::task_id(first, "id_counter.next_id")
}
