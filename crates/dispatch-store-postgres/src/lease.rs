//! Claiming the lease of a partition, on the database's clock.

use dispatch_store::{Lease, Replica, StoreError};
use tokio_postgres::{Client, Row};

use crate::codec::{self, pg_error};

/// How long a lease claim waits for the lease row's lock.
const CLAIM_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout TO 500";

/// Records `me` as seen, then claims or renews the lease in one
/// transaction. A lease held by another and still running is answered
/// without taking the row's lock, so that standbys polling the lease never
/// delay the leader's fenced batches.
pub(crate) async fn claim(
    client: &mut Client,
    partition: &str,
    me: &Replica,
    lease_ms: i64,
) -> Result<Lease, StoreError> {
    const READ: &str = "SELECT holder, holder_url, epoch, expires_at > clock_timestamp(), \
         GREATEST(0, (EXTRACT(EPOCH FROM (expires_at - clock_timestamp())) * 1000)::bigint) \
         FROM leases WHERE partition = $1";
    let tx = client
        .transaction()
        .await
        .map_err(pg_error("beginning a lease claim"))?;
    // A leader frozen inside a write transaction holds its fence's lock on
    // the lease row until PostgreSQL ends its session
    // (`WRITER_IDLE_TIMEOUT` in lib.rs): a claim waits a little for it, not
    // forever.
    tx.batch_execute(CLAIM_LOCK_TIMEOUT)
        .await
        .map_err(pg_error("beginning a lease claim"))?;
    tx.execute(
        "INSERT INTO replicas (id, url, last_seen_at) VALUES ($1, $2, clock_timestamp()) \
         ON CONFLICT (id) DO UPDATE SET url = excluded.url, last_seen_at = excluded.last_seen_at",
        &[&me.id, &me.url],
    )
    .await
    .map_err(pg_error("recording the replica"))?;
    let decode = |row: &Row| -> Result<(String, String, i64, bool, i64), StoreError> {
        let col = codec::Columns::new(
            row,
            &["holder", "holder_url", "epoch", "live", "remaining_ms"],
            "lease",
        );
        Ok((
            col.get(0)?,
            col.get(1)?,
            col.get(2)?,
            col.get(3)?,
            col.get(4)?,
        ))
    };
    let unlocked = tx
        .query_opt(READ, &[&partition])
        .await
        .map_err(pg_error("reading the lease"))?;
    if let Some(row) = &unlocked {
        let (holder, holder_url, epoch, live, remaining) = decode(row)?;
        if live && holder != me.id {
            tx.commit()
                .await
                .map_err(pg_error("committing a lease claim"))?;
            return Ok(Lease {
                epoch: epoch.max(0).cast_unsigned(),
                holder,
                holder_url,
                held: false,
                remaining_ms: remaining.max(0).cast_unsigned(),
            });
        }
    }
    tx.execute(
        "INSERT INTO leases (partition, holder, holder_url, epoch, expires_at) \
         VALUES ($1, '', '', 0, 'epoch') ON CONFLICT (partition) DO NOTHING",
        &[&partition],
    )
    .await
    .map_err(pg_error("creating the lease"))?;
    let row = tx
        .query_one(&format!("{READ} FOR UPDATE"), &[&partition])
        .await
        .map_err(pg_error("locking the lease"))?;
    let (holder, holder_url, epoch, live, remaining) = decode(&row)?;
    if live && holder != me.id {
        // Taken by another replica while this one waited for the lock.
        tx.commit()
            .await
            .map_err(pg_error("committing a lease claim"))?;
        return Ok(Lease {
            epoch: epoch.max(0).cast_unsigned(),
            holder,
            holder_url,
            held: false,
            remaining_ms: remaining.max(0).cast_unsigned(),
        });
    }
    let epoch = if live { epoch } else { epoch + 1 };
    let row = tx
        .query_one(
            "UPDATE leases SET holder = $2, holder_url = $3, epoch = $4, \
                 expires_at = clock_timestamp() + $5::bigint * interval '1 millisecond' \
             WHERE partition = $1 \
             RETURNING GREATEST(0, (EXTRACT(EPOCH FROM (expires_at - clock_timestamp())) \
                 * 1000)::bigint)",
            &[&partition, &me.id, &me.url, &epoch, &lease_ms],
        )
        .await
        .map_err(pg_error("claiming the lease"))?;
    let remaining: i64 = row
        .try_get(0)
        .map_err(pg_error("reading the lease's expiry"))?;
    tx.commit()
        .await
        .map_err(pg_error("committing a lease claim"))?;
    Ok(Lease {
        epoch: epoch.max(0).cast_unsigned(),
        holder: me.id.clone(),
        holder_url: me.url.clone(),
        held: true,
        remaining_ms: remaining.max(0).cast_unsigned(),
    })
}
