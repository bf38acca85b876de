//! The conformance suite on a fresh database per test, and what only a file
//! on disk can show: reopening, group commit, two stores on one directory,
//! damaged rows.

use std::sync::Arc;

use dispatch_core::{TaskId, TaskState, WorkerId};
use dispatch_store::conformance::sample;
use dispatch_store::{
    ErrorKind, GroupCommitWriter, InsertOutcome, Store, StoreError, TaskQuery, TaskRecord,
    TaskUpdate, Write, WriteOutcome,
};
use rusqlite::Connection;
use tempfile::TempDir;

use crate::{Durability, FILE_NAME, SqliteStore};

/// A store in its own temporary directory, removed when dropped.
struct TempStore {
    // Dropped first: the database closes before its directory goes.
    store: SqliteStore,
    _dir: TempDir,
}

impl Store for TempStore {
    fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.store.apply(writes)
    }
    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.store.get_task(id)
    }
    fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.store.list_tasks(query)
    }
    fn list_attempts(
        &self,
        task: TaskId,
    ) -> Result<Vec<dispatch_store::AttemptRecord>, StoreError> {
        self.store.list_attempts(task)
    }
    fn list_queue_configs(&self) -> Result<Vec<dispatch_store::QueueConfigRecord>, StoreError> {
        self.store.list_queue_configs()
    }
    fn load_live(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.store.load_live()
    }
    fn max_task_id(&self) -> Result<Option<TaskId>, StoreError> {
        self.store.max_task_id()
    }
    fn list_schedules(&self) -> Result<Vec<dispatch_store::ScheduleRecord>, StoreError> {
        self.store.list_schedules()
    }
    fn get_schedule(
        &self,
        name: &str,
    ) -> Result<Option<dispatch_store::ScheduleRecord>, StoreError> {
        self.store.get_schedule(name)
    }
    fn list_queue_settings(&self) -> Result<Vec<(String, bool)>, StoreError> {
        self.store.list_queue_settings()
    }
    fn count_by_queue_state(&self) -> Result<Vec<(String, TaskState, u64)>, StoreError> {
        self.store.count_by_queue_state()
    }
    fn claim_lease(
        &self,
        partition: &str,
        me: &dispatch_store::Replica,
        lease_ms: u64,
    ) -> Result<dispatch_store::Lease, StoreError> {
        self.store.claim_lease(partition, me, lease_ms)
    }
    fn release_lease(
        &self,
        partition: &str,
        me: &dispatch_store::Replica,
        epoch: u64,
    ) -> Result<(), StoreError> {
        self.store.release_lease(partition, me, epoch)
    }
    fn list_replicas(&self) -> Result<Vec<dispatch_store::ReplicaRecord>, StoreError> {
        self.store.list_replicas()
    }
    fn load_workers(&self) -> Result<Vec<dispatch_store::WorkerRecord>, StoreError> {
        self.store.load_workers()
    }
    fn reserve_ids(&self, n: u64) -> Result<TaskId, StoreError> {
        self.store.reserve_ids(n)
    }
}

fn fresh() -> TempStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
    TempStore { store, _dir: dir }
}

dispatch_store::store_conformance_tests!(fresh());

fn all(store: &impl Store) -> Vec<TaskRecord> {
    store
        .list_tasks(&TaskQuery {
            limit: usize::MAX,
            ..TaskQuery::default()
        })
        .expect("list_tasks")
}

#[test]
fn data_survives_closing_and_reopening() {
    for durability in [Durability::Durable, Durability::Relaxed] {
        let dir = tempfile::tempdir().expect("tempdir");
        // Opening creates missing directories.
        let data = dir.path().join("nested").join("data");
        let mut keyed = sample(1, "email");
        keyed.body.idempotency_key = Some("k1".into());
        let expected = {
            let store = SqliteStore::open(&data, durability).expect("open");
            store
                .apply(&[Write::Insert(vec![
                    keyed,
                    sample(2, "sms"),
                    sample(3, "push"),
                ])])
                .expect("insert");
            store
                .apply(&[Write::Update(TaskUpdate {
                    id: TaskId(2),
                    state: TaskState::Succeeded,
                    attempts: 1,
                    worker: WorkerId::new(u64::MAX),
                    started_at: Some(10),
                    finished_at: Some(20),
                    run_at: None,
                    result: Some("\"done\"".into()),
                    error: None,
                    attempt: None,
                })])
                .expect("update");
            all(&store)
        };
        assert!(data.join(FILE_NAME).is_file());

        let store = SqliteStore::open(&data, durability).expect("reopen");
        assert_eq!(all(&store), expected, "{durability:?}");
        assert_eq!(store.max_task_id().expect("max"), Some(TaskId(3)));
        assert_eq!(
            crate::tests::ids(&store.load_live().expect("live")),
            vec![1, 3]
        );
        // The idempotency key is remembered across the restart.
        let mut again = sample(4, "email");
        again.body.idempotency_key = Some("k1".into());
        assert_eq!(
            store.apply(&[Write::Insert(vec![again])]).expect("insert"),
            vec![WriteOutcome::Inserted(vec![InsertOutcome::Existing(
                TaskId(1)
            )])]
        );
    }
}

fn ids(records: &[TaskRecord]) -> Vec<u64> {
    records.iter().map(|r| r.id.0).collect()
}

#[test]
fn group_commit_batch_is_all_present_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path(), Durability::Durable).expect("open"));
    let (writer, thread) = GroupCommitWriter::start(Arc::clone(&store));
    let replies: Vec<_> = (1..=1_000u64)
        .map(|id| {
            let mut r = sample(id, "email");
            r.body.payload = format!(r#"{{"n":{id}}}"#).into();
            writer
                .write(Write::Insert(vec![r]))
                .expect("writer running")
        })
        .collect();
    for reply in replies {
        let outcome = reply.blocking_recv().expect("a reply").expect("committed");
        assert_eq!(
            outcome,
            WriteOutcome::Inserted(vec![InsertOutcome::Created])
        );
    }
    drop(writer);
    thread.join().expect("the writer thread ends cleanly");
    drop(store);

    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("reopen");
    let stored = all(&store);
    assert_eq!(stored.len(), 1_000);
    assert_eq!(ids(&stored), (1..=1_000u64).rev().collect::<Vec<_>>());
    for r in &stored {
        assert_eq!(&*r.body.payload, format!(r#"{{"n":{}}}"#, r.id));
    }
    assert_eq!(store.max_task_id().expect("max"), Some(TaskId(1_000)));
}

#[test]
fn same_directory_opened_twice_reads_concurrently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Arc::new(SqliteStore::open(dir.path(), Durability::Durable).expect("open"));
    let records: Vec<TaskRecord> = (1..=200u64).map(|id| sample(id, "email")).collect();
    first
        .apply(&[Write::Insert(records.clone())])
        .expect("insert");
    let second = Arc::new(SqliteStore::open(dir.path(), Durability::Relaxed).expect("open again"));

    // More threads than read connections, so that some wait for one.
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let store = if i % 2 == 0 {
                Arc::clone(&first)
            } else {
                Arc::clone(&second)
            };
            std::thread::spawn(move || {
                for round in 0..20u64 {
                    let id = 1 + (i * 20 + round) % 200;
                    let got = store.get_task(TaskId(id)).expect("get").expect("present");
                    assert_eq!(got.id, TaskId(id));
                    assert_eq!(all(&store).len(), 200);
                    assert_eq!(store.load_live().expect("live").len(), 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread");
    }
    // A commit through one is visible through the other.
    first
        .apply(&[Write::Insert(vec![sample(201, "sms")])])
        .expect("insert");
    assert_eq!(second.max_task_id().expect("max"), Some(TaskId(201)));
    assert_eq!(
        second.get_task(TaskId(201)).expect("get"),
        Some(sample(201, "sms"))
    );
}

#[test]
fn durability_sets_synchronous() {
    for (durability, expected) in [(Durability::Durable, 2), (Durability::Relaxed, 1)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path(), durability).expect("open");
        let writer = store.lock_writer().expect("writer");
        let synchronous: i64 = writer
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .expect("pragma");
        assert_eq!(synchronous, expected, "{durability:?}");
        let mode: String = writer
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .expect("pragma");
        assert_eq!(mode, "wal");
    }
}

#[test]
fn damaged_rows_are_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
    let records: Vec<TaskRecord> = (1..=6u64).map(|id| sample(id, "email")).collect();
    store.apply(&[Write::Insert(records)]).expect("insert");
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    for (id, damage) in [
        (1, "UPDATE tasks SET state = 'exploded' WHERE id = 1"),
        (2, "UPDATE tasks SET labels = 'not json' WHERE id = 2"),
        (3, "UPDATE tasks SET depends_on = '[-1]' WHERE id = 3"),
        (4, "UPDATE tasks SET priority = 1000 WHERE id = 4"),
        (5, "UPDATE tasks SET created_at = -5 WHERE id = 5"),
        (
            6,
            "UPDATE tasks SET payload = CAST(x'ff00' AS TEXT) WHERE id = 6",
        ),
    ] {
        raw.execute_batch(damage).expect("damage");
        let err = store.get_task(TaskId(id)).expect_err(damage);
        assert_eq!(err.kind, ErrorKind::Corrupt, "{damage}: {err}");
    }
    let err = store.load_live().expect_err("load_live over damaged rows");
    assert_eq!(err.kind, ErrorKind::Corrupt);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(SqliteStore::open(dir.path(), Durability::Durable).expect("open"));
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    raw.pragma_update(None, "user_version", 99).expect("pragma");
    drop(raw);
    let err = SqliteStore::open(dir.path(), Durability::Durable).expect_err("newer schema");
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
    assert!(err.message.contains("99"), "{err}");
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(FILE_NAME), vec![0x5a; 8192]).expect("write");
    let err = SqliteStore::open(dir.path(), Durability::Durable).expect_err("garbage file");
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
}

#[test]
fn values_beyond_i64_are_refused_and_store_nothing() {
    let store = fresh();
    let mut huge_id = sample(3, "email");
    huge_id.id = TaskId(u64::MAX);
    let mut huge_time = sample(2, "email");
    huge_time.spec.timeout_ms = Some(u64::MAX);
    for bad in [huge_id, huge_time] {
        let err = store
            .apply(&[Write::Insert(vec![sample(1, "email"), bad])])
            .expect_err("refused");
        assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    }
    assert_eq!(store.max_task_id().expect("max"), None);
    assert_eq!(store.get_task(TaskId(u64::MAX)).expect("get"), None);
    let out = store
        .apply(&[Write::Update(TaskUpdate {
            id: TaskId(u64::MAX),
            state: TaskState::Queued,
            attempts: 0,
            worker: None,
            started_at: None,
            finished_at: None,
            run_at: None,
            result: None,
            error: None,
            attempt: None,
        })])
        .expect("update");
    assert_eq!(out, vec![WriteOutcome::Updated(false)]);
}

#[test]
fn a_held_write_lock_is_unavailable_after_the_busy_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
    store
        .lock_writer()
        .expect("writer")
        .busy_timeout(std::time::Duration::from_millis(50))
        .expect("busy_timeout");
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    raw.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let err = store
        .apply(&[Write::Insert(vec![sample(1, "email")])])
        .expect_err("locked");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    raw.execute_batch("ROLLBACK").expect("unlock");
    store
        .apply(&[Write::Insert(vec![sample(1, "email")])])
        .expect("insert after the lock is gone");
    assert_eq!(
        store.get_task(TaskId(1)).expect("get"),
        Some(sample(1, "email"))
    );
}

#[test]
fn every_query_reads_an_index_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
    let writer = store.lock_writer().expect("writer");
    let plan = |sql: &str| -> String {
        let mut stmt = writer
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(3))
            .expect("plan");
        rows.map(|r| r.expect("plan row"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let filters = [
        ("state = 'queued'", "tasks_state_id"),
        ("type = 'email'", "tasks_type_id"),
        ("queue = 'bulk'", "tasks_queue_id"),
    ];
    for (filter, index) in filters {
        for cursor in ["", " AND id < 100"] {
            let sql =
                crate::codec::list_query(&[filter]).replace(" ORDER", &format!("{cursor} ORDER"));
            let p = plan(&sql.replacen('?', "10", 1));
            assert!(p.contains(index), "{sql}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
        }
    }
    let p = plan(&crate::codec::list_query(&["id < 5"]).replacen('?', "10", 1));
    assert!(
        !p.contains("TEMP B-TREE") && p.contains("PRIMARY KEY"),
        "{p}"
    );
    let p = plan(&store.live_sql);
    assert!(
        p.contains("tasks_state_id") || p.contains("PRIMARY KEY"),
        "{p}"
    );
}

#[test]
fn a_version_1_file_migrates_and_keeps_its_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
        store
            .apply(&[Write::Insert(vec![sample(1, "email")])])
            .expect("insert");
    }
    // Turn the file back into what version 1 wrote.
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    raw.execute_batch(
        "DROP TABLE schedules; DROP TABLE schedule_fires; DROP TABLE queue_settings; \
         ALTER TABLE tasks DROP COLUMN pinned_worker; ALTER TABLE tasks DROP COLUMN is_join; \
         ALTER TABLE tasks DROP COLUMN shard_index; ALTER TABLE tasks DROP COLUMN shard_total; \
         ALTER TABLE tasks DROP COLUMN request_digest; \
         DROP TABLE leases; DROP TABLE replicas; DROP TABLE id_counter; DROP TABLE workers; \
         DROP TRIGGER tasks_delete_attempts; DROP TABLE attempts; DROP TABLE queue_configs; \
         PRAGMA user_version = 1;",
    )
    .expect("downgrade");
    drop(raw);
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("migrate");
    assert_eq!(
        store.get_task(TaskId(1)).expect("get"),
        Some(sample(1, "email"))
    );
    assert_eq!(store.list_schedules().expect("list"), Vec::new());
    let schedule = dispatch_store::conformance::sample_schedule("nightly");
    store
        .apply(&[Write::UpsertSchedule(schedule.clone())])
        .expect("upsert");
    assert_eq!(store.get_schedule("nightly").expect("get"), Some(schedule));
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    let version: i64 = raw
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .expect("pragma");
    assert_eq!(version, crate::schema::VERSION as i64);
}

#[test]
fn a_version_2_file_migrates_and_keeps_its_tasks_and_schedules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schedule = dispatch_store::conformance::sample_schedule("nightly");
    {
        let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
        store
            .apply(&[
                Write::Insert(vec![sample(1, "email")]),
                Write::UpsertSchedule(schedule.clone()),
            ])
            .expect("insert");
    }
    // Turn the file back into what version 2 wrote.
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    raw.execute_batch(
        "DROP TABLE queue_settings; \
         ALTER TABLE tasks DROP COLUMN pinned_worker; ALTER TABLE tasks DROP COLUMN is_join; \
         ALTER TABLE tasks DROP COLUMN shard_index; ALTER TABLE tasks DROP COLUMN shard_total; \
         ALTER TABLE tasks DROP COLUMN request_digest; \
         DROP TABLE leases; DROP TABLE replicas; DROP TABLE id_counter; DROP TABLE workers; \
         DROP TRIGGER tasks_delete_attempts; DROP TABLE attempts; DROP TABLE queue_configs; \
         PRAGMA user_version = 2;",
    )
    .expect("downgrade");
    drop(raw);
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("migrate");
    assert_eq!(
        store.get_task(TaskId(1)).expect("get"),
        Some(sample(1, "email"))
    );
    assert_eq!(store.get_schedule("nightly").expect("get"), Some(schedule));
    assert_eq!(store.list_queue_settings().expect("list"), Vec::new());
    store
        .apply(&[Write::SetQueuePaused {
            name: "bulk".into(),
            paused: true,
        }])
        .expect("pause");
    assert_eq!(
        store.list_queue_settings().expect("list"),
        vec![("bulk".to_owned(), true)]
    );
}

#[test]
fn a_version_4_file_migrates_and_its_keys_match_any_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut keyed = sample(1, "email");
    keyed.body.idempotency_key = Some("order-1".into());
    {
        let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
        store
            .apply(&[Write::Insert(vec![keyed.clone()])])
            .expect("insert");
    }
    // Turn the file back into what version 4 wrote: no digests.
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    raw.execute_batch("ALTER TABLE tasks DROP COLUMN request_digest; DROP TABLE leases; DROP TABLE replicas; DROP TABLE id_counter; DROP TABLE workers; \
         DROP TRIGGER tasks_delete_attempts; DROP TABLE attempts; DROP TABLE queue_configs; \
         PRAGMA user_version = 4;")
        .expect("downgrade");
    drop(raw);
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("migrate");
    assert_eq!(store.get_task(TaskId(1)).expect("get"), Some(keyed));
    // A key stored without a digest matches whatever request reuses it.
    let mut again = sample(2, "sms");
    again.body.idempotency_key = Some("order-1".into());
    again.request_digest = Some([7; 32]);
    assert_eq!(
        store.apply(&[Write::Insert(vec![again])]).expect("insert"),
        vec![WriteOutcome::Inserted(vec![InsertOutcome::Existing(
            TaskId(1)
        )])]
    );
}

/// The idempotency key's index holds the keyed tasks only, on a new file
/// and on one migrated from before version 10 (whose `UNIQUE` column
/// indexed every task), and it still refuses a second holder of a key.
#[test]
fn the_key_index_holds_keyed_tasks_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut keyed = sample(1, "email");
    keyed.body.idempotency_key = Some("order-1".into());
    {
        let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
        store
            .apply(&[Write::Insert(vec![keyed.clone(), sample(2, "email")])])
            .expect("insert");
    }
    let indexed = |raw: &Connection| -> (i64, i64) {
        let partial: i64 = raw
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' \
                 AND sql LIKE '%WHERE idempotency_key IS NOT NULL%'",
                [],
                |row| row.get(0),
            )
            .expect("indexes");
        let entries: i64 = raw
            .query_row(
                "SELECT count(*) FROM tasks INDEXED BY tasks_idempotency_key \
                 WHERE idempotency_key IS NOT NULL",
                [],
                |row| row.get(0),
            )
            .expect("entries");
        (partial, entries)
    };
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    assert_eq!(indexed(&raw), (1, 1));
    // What version 9 had: the key as a UNIQUE column.
    raw.execute_batch(
        "DROP INDEX tasks_idempotency_key; \
         CREATE UNIQUE INDEX tasks_key_before_v10 ON tasks (idempotency_key); \
         PRAGMA user_version = 9;",
    )
    .expect("downgrade");
    drop(raw);
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("migrate");
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    assert_eq!(indexed(&raw), (1, 1));
    let old: i64 = raw
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'tasks_key_before_v10'",
            [],
            |row| row.get(0),
        )
        .expect("indexes");
    assert_eq!(old, 0, "the old index went with the old table");
    assert_eq!(store.get_task(TaskId(1)).expect("get"), Some(keyed));
    let mut again = sample(3, "sms");
    again.body.idempotency_key = Some("order-1".into());
    assert_eq!(
        store.apply(&[Write::Insert(vec![again])]).expect("insert"),
        vec![WriteOutcome::Inserted(vec![InsertOutcome::Existing(
            TaskId(1)
        )])]
    );
}

#[test]
fn queue_pause_states_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
        let (writer, thread) = GroupCommitWriter::start(store);
        for (name, paused) in [("bulk", true), ("mail", true), ("mail", false)] {
            writer
                .write_detached(Write::SetQueuePaused {
                    name: name.into(),
                    paused,
                })
                .expect("send");
        }
        drop(writer);
        thread.join().expect("writer thread");
    }
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("reopen");
    assert_eq!(
        store.list_queue_settings().expect("list"),
        vec![("bulk".to_owned(), true), ("mail".to_owned(), false)]
    );
}

#[test]
fn damaged_queue_rows_are_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
    store
        .apply(&[
            Write::SetQueuePaused {
                name: "bulk".into(),
                paused: true,
            },
            Write::Insert(vec![sample(1, "email")]),
        ])
        .expect("apply");
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    raw.execute_batch("UPDATE queue_settings SET paused = 2")
        .expect("damage");
    let err = store.list_queue_settings().expect_err("paused = 2");
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
    assert!(err.message.contains("paused"), "{err}");
    raw.execute_batch("UPDATE tasks SET state = 'lost'")
        .expect("damage");
    let err = store.count_by_queue_state().expect_err("unknown state");
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
}

#[test]
fn schedules_and_fires_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut task = sample(7, "report");
    task.body.idempotency_key = Some("schedule:nightly:60000".into());
    let fire = |id: u64| {
        let mut t = task.clone();
        t.id = TaskId(id);
        Write::Fire {
            schedule: "nightly".into(),
            fire_at: 60_000,
            task: t,
        }
    };
    {
        let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
        let out = store
            .apply(&[
                Write::UpsertSchedule(dispatch_store::conformance::sample_schedule("nightly")),
                fire(7),
            ])
            .expect("fire");
        assert_eq!(
            out[1],
            WriteOutcome::Fired(dispatch_store::FireOutcome::Created)
        );
    }
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("reopen");
    let s = store.get_schedule("nightly").expect("get").expect("stored");
    assert_eq!(s.last_fire_at, Some(60_000));
    assert_eq!(
        store.apply(&[fire(8)]).expect("fire again"),
        vec![WriteOutcome::Fired(dispatch_store::FireOutcome::Existing(
            TaskId(7)
        ))]
    );
    assert_eq!(store.get_task(TaskId(8)).expect("get"), None);
    assert_eq!(store.get_task(TaskId(7)).expect("get"), Some(task));
}

#[test]
fn damaged_schedule_rows_are_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), Durability::Durable).expect("open");
    store
        .apply(&[Write::UpsertSchedule(
            dispatch_store::conformance::sample_schedule("s"),
        )])
        .expect("upsert");
    let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw connection");
    for damage in [
        "UPDATE schedules SET paused = 7",
        "UPDATE schedules SET catch_up_limit = -1",
        "UPDATE schedules SET last_fire_at = -5",
    ] {
        raw.execute_batch(&format!("{damage}; ")).expect("damage");
        let err = store.get_schedule("s").expect_err(damage);
        assert_eq!(err.kind, ErrorKind::Corrupt, "{damage}: {err}");
        assert!(err.message.contains("schedule column"), "{err}");
        let err = store.list_schedules().expect_err(damage);
        assert_eq!(err.kind, ErrorKind::Corrupt, "{damage}: {err}");
        raw.execute_batch(
            "UPDATE schedules SET paused = 0, catch_up_limit = 25, last_fire_at = NULL",
        )
        .expect("repair");
    }
}

#[test]
fn commits_are_checkpointed_in_the_background() {
    let store = fresh();
    let db = store.store.path().to_owned();
    let size = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let before = size();
    let records: Vec<TaskRecord> = (1..=2_000).map(|i| sample(i, "ckpt")).collect();
    store.apply(&[Write::Insert(records)]).expect("insert");
    // The writer alone would copy nothing back before the WAL reached
    // 64 MiB; the checkpoint thread copies these pages within a few of its
    // 100 ms rounds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() <= before + 100 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {} bytes",
            size()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(all(&store).len(), 2_000);
}

/// SQLite opens a file it may not write read-only, and the connection
/// stays so. Root ignores file modes, so the test hands the store such a
/// connection directly: once the file is writable, the next write heals.
#[test]
fn a_writer_opened_read_only_is_reopened_once_the_file_is_writable() {
    let t = fresh();
    let path = t.store.path().to_owned();
    t.store
        .apply(&[Write::Insert(vec![sample(1, "email")])])
        .expect("first write");
    let read_only = Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("read-only connection");
    assert!(read_only.is_readonly(rusqlite::MAIN_DB).unwrap());
    // What a write on it alone would give: SQLITE_READONLY, classified as
    // the environment's failure.
    let e = read_only
        .execute("DELETE FROM tasks", [])
        .map_err(crate::codec::sql_error("deleting"))
        .unwrap_err();
    assert_eq!(e.kind, dispatch_store::ErrorKind::Unavailable, "{e}");
    *t.store.writer.lock().unwrap() = read_only;
    t.store
        .apply(&[Write::Insert(vec![sample(2, "sms")])])
        .expect("the write heals");
    assert_eq!(all(&t.store).len(), 2);
    assert!(
        !t.store
            .writer
            .lock()
            .unwrap()
            .is_readonly(rusqlite::MAIN_DB)
            .unwrap()
    );
}
