//! Queue settings set through the API: the upsert's parameters and the
//! read of every queue's.

use dispatch_core::Strategy;
use dispatch_store::{QueueConfigRecord, StoreError};
use tokio_postgres::Row;

use crate::codec::{Columns, Param, to_sql_int};

/// Stores a queue's settings; answers whether some were replaced.
pub(crate) const PUT_SQL: &str = "WITH old AS (SELECT 1 FROM queue_configs WHERE name = $1), \
     up AS (INSERT INTO queue_configs (name, weight, max_running, rate_per_sec, burst, \
         max_per_key, max_depth, strategy) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (name) DO UPDATE SET weight = excluded.weight, \
         max_running = excluded.max_running, rate_per_sec = excluded.rate_per_sec, \
         burst = excluded.burst, max_per_key = excluded.max_per_key, \
         max_depth = excluded.max_depth, strategy = excluded.strategy) \
     SELECT EXISTS (SELECT 1 FROM old)";

/// Every queue's settings, by name.
pub(crate) const LIST_SQL: &str = "SELECT name, weight, max_running, rate_per_sec, burst, \
     max_per_key, max_depth, strategy FROM queue_configs ORDER BY name COLLATE \"C\"";

/// The parameters of [`PUT_SQL`].
pub(crate) fn params(c: &QueueConfigRecord) -> Result<Vec<Param>, StoreError> {
    Ok(vec![
        Box::new(c.name.clone()),
        Box::new(i64::from(c.weight)),
        Box::new(c.max_running.map(i64::from)),
        Box::new(c.rate_per_sec),
        Box::new(c.burst.map(i64::from)),
        Box::new(c.max_per_key.map(i64::from)),
        Box::new(
            c.max_depth
                .map(|d| to_sql_int(d, "max_depth"))
                .transpose()?,
        ),
        Box::new(c.strategy.map(|s| s.as_str().to_owned())),
    ])
}

const NAMES: [&str; 8] = [
    "name",
    "weight",
    "max_running",
    "rate_per_sec",
    "burst",
    "max_per_key",
    "max_depth",
    "strategy",
];

/// Decodes one row of [`LIST_SQL`].
pub(crate) fn decode(row: &Row) -> Result<QueueConfigRecord, StoreError> {
    let col = Columns::new(row, &NAMES, "queue settings");
    let strategy: Option<&str> = col.get(7)?;
    Ok(QueueConfigRecord {
        name: col.get::<&str>(0)?.to_owned(),
        weight: col.int(1)?,
        max_running: col.opt_int(2)?,
        rate_per_sec: col.get(3)?,
        burst: col.opt_int(4)?,
        max_per_key: col.opt_int(5)?,
        max_depth: col.opt_int(6)?,
        strategy: strategy
            .map(|s| Strategy::parse(s).ok_or_else(|| col.error(7, format!("unknown {s:?}"))))
            .transpose()?,
    })
}
