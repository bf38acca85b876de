//! The schema and its migrations, versioned in `schema_migrations`.
//!
//! `MIGRATIONS[i]` is `migrations/000{i+1}_*.sql` and takes a database from
//! version `i` to `i + 1`. A schema change is a new file at the end; files
//! already released are never edited, because databases in the field have
//! run them.

use dispatch_store::{ErrorKind, StoreError};
use tokio_postgres::Client;

use crate::codec::pg_error;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_tasks.sql"),
    include_str!("../migrations/0002_attempts.sql"),
    include_str!("../migrations/0003_queue_configs.sql"),
    include_str!("../migrations/0004_fence.sql"),
    include_str!("../migrations/0005_attempts_without_foreign_key.sql"),
];

/// The schema version this build writes.
pub(crate) const VERSION: usize = MIGRATIONS.len();

/// Brings the schema up to [`VERSION`] and answers how many migrations ran.
///
/// Runs in one transaction under a transaction-scoped advisory lock keyed
/// by the schema's name, so that replicas opening one new database at once
/// wait for each other instead of both creating the tables, and a failed
/// migration leaves the database as it was. `schema`, when given, is
/// created if missing (the connection's `search_path` names it).
pub(crate) async fn migrate(
    client: &mut Client,
    schema: Option<&str>,
) -> Result<usize, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(pg_error("beginning the migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('dispatch-store-postgres'), hashtext($1))",
        &[&schema.unwrap_or("")],
    )
    .await
    .map_err(pg_error("taking the migration lock"))?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(schema)
        ))
        .await
        .map_err(pg_error("creating the schema"))?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg_error("creating schema_migrations"))?;
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg_error("reading the schema version"))?
        .try_get(0)
        .map_err(pg_error("reading the schema version"))?;
    let found = usize::try_from(found).map_err(|_| version_error(found))?;
    if found > VERSION {
        return Err(version_error(found));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found) {
        tx.batch_execute(sql).await.map_err(pg_error(&format!(
            "migrating the schema from version {from}"
        )))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&i32::try_from(from + 1).unwrap_or(i32::MAX)],
        )
        .await
        .map_err(pg_error("recording the schema version"))?;
    }
    tx.commit()
        .await
        .map_err(pg_error("committing the migration"))?;
    Ok(VERSION - found)
}

/// `name` as an SQL identifier, quoted.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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
