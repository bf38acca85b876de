//! One batch of writes in one transaction, pipelined.
//!
//! A batch is cut into runs. Inserts, updates, fences, workers, queue
//! pause states and settings, and schedule upserts and deletes need no answer from the
//! database to build their statement, so a run of them is sent as one
//! flight of statements without waiting for each answer (tokio-postgres
//! pipelines the requests of one connection), the consecutive inserts of
//! a run become one `INSERT ... SELECT FROM unnest(...)`, and consecutive
//! updates one `UPDATE ... FROM unnest(...)` (a task updated twice starts
//! a new one, so that its updates apply in order). Before the
//! flight, one query reads the tasks holding the run's idempotency keys,
//! so that which record is stored and which answers a key holder is decided
//! in memory, in order, exactly as the statements then do it. A fire (it
//! reads the fire ledger before storing its task) and a purge (it may free
//! keys) run on their own between runs.
//!
//! A batch of one run without idempotency keys (most of them: task
//! updates, keyless inserts, the fence) is sent whole, `BEGIN`, its
//! statements and `COMMIT` in one flight ([`apply_in_one_flight`]): one
//! round trip instead of three, and no wait on this client inside the
//! transaction. The fence (`dispatch_fence`) fails on the server, so a
//! fenced batch aborts its transaction and the `COMMIT` rolls it back.

use std::collections::{HashMap, HashSet};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use dispatch_core::{TaskId, TaskState};
use dispatch_store::{
    ErrorKind, FireOutcome, InsertOutcome, StoreError, TaskRecord, Write, WriteOutcome,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement, Transaction};

use crate::codec::{self, InsertColumns, Param, UpdateColumns, pg_error, schedule_columns};

/// The writer connection's prepared statements.
pub(crate) struct WriterStatements {
    insert: Statement,
    update: Statement,
    fence: Statement,
    key_holders: Statement,
    key_holder: Statement,
    upsert_schedule: Statement,
    delete_schedule: Statement,
    fire_record: Statement,
    fire_lookup: Statement,
    fire_set_task: Statement,
    fire_advance: Statement,
    purge: Statement,
    set_queue_paused: Statement,
    put_queue_config: Statement,
    put_worker: Statement,
    delete_worker: Statement,
}

/// Many updates in one statement, each of a different task. A terminal
/// task takes no update but a retry: a `dead` task set `queued` with no
/// attempts ("a stale writer cannot bring a finished task back"). The
/// attempts the applied updates end are stored by the same statement.
/// Answers the ids it changed.
fn update_sql() -> String {
    let terminal: Vec<String> = TaskState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!(
        "WITH changed AS (UPDATE tasks AS t SET state = u.state, attempts = u.attempts, \
             worker_id = u.worker_id, started_at = u.started_at, \
             finished_at = u.finished_at, run_at = u.run_at, \
             result = COALESCE(u.result, t.result), error = u.error \
         FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], \
             $6::bigint[], $7::bigint[], $8::text[], $9::text[]) \
             AS u(id, state, attempts, worker_id, started_at, finished_at, run_at, result, error) \
         WHERE t.id = u.id AND (t.state NOT IN ({}) \
             OR (t.state = '{}' AND u.state = '{}' AND u.attempts = 0)) \
         RETURNING t.id), \
         stored AS ({}) \
         SELECT id FROM changed",
        terminal.join(", "),
        TaskState::Dead.as_str(),
        TaskState::Queued.as_str(),
        crate::attempts::INSERT_CHANGED,
    )
}

impl WriterStatements {
    /// Prepares every statement, in one flight.
    pub(crate) async fn prepare(client: &Client) -> Result<Self, StoreError> {
        let update = update_sql();
        let upsert_schedule = format!(
            "WITH old AS (SELECT 1 FROM schedules WHERE name = $1), \
             up AS (INSERT INTO schedules ({cols}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, \
                 timezone = excluded.timezone, task = excluded.task, \
                 misfire = excluded.misfire, catch_up_limit = excluded.catch_up_limit, \
                 paused = excluded.paused, created_at = excluded.created_at, \
                 last_fire_at = excluded.last_fire_at) \
             SELECT EXISTS (SELECT 1 FROM old)",
            cols = schedule_columns!()
        );
        let sql: [&str; 16] = [
            codec::INSERT_SQL,
            &update,
            "SELECT dispatch_fence($1, $2)",
            "SELECT idempotency_key, id, request_digest FROM tasks \
             WHERE idempotency_key = ANY($1::text[])",
            "SELECT id FROM tasks WHERE idempotency_key = $1",
            &upsert_schedule,
            "WITH fires AS (DELETE FROM schedule_fires WHERE schedule = $1) \
             DELETE FROM schedules WHERE name = $1 RETURNING 1",
            // The fire ledger row first: of two writers of one fire, the
            // second waits for the first to commit, then stores nothing.
            "INSERT INTO schedule_fires (schedule, fire_at, task_id) \
             SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM schedules WHERE name = $1) \
             ON CONFLICT (schedule, fire_at) DO NOTHING RETURNING task_id",
            "SELECT task_id FROM schedule_fires WHERE schedule = $1 AND fire_at = $2",
            "UPDATE schedule_fires SET task_id = $3 WHERE schedule = $1 AND fire_at = $2",
            "UPDATE schedules SET last_fire_at = GREATEST(COALESCE(last_fire_at, $2), $2) \
             WHERE name = $1",
            // Never the newest task: it holds the id high-water mark. The
            // tasks' attempts go with them.
            "WITH doomed AS (DELETE FROM tasks WHERE id IN ( \
                 SELECT id FROM tasks \
                 WHERE state IN ('succeeded', 'dead', 'cancelled') AND finished_at < $1 \
                   AND id < (SELECT MAX(id) FROM tasks) \
                 ORDER BY id LIMIT $2) RETURNING id), \
             attempts AS (DELETE FROM attempts WHERE task_id IN (SELECT id FROM doomed)) \
             SELECT count(*) FROM doomed",
            "WITH old AS (SELECT paused FROM queue_settings WHERE name = $1), \
             up AS (INSERT INTO queue_settings (name, paused) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET paused = excluded.paused) \
             SELECT COALESCE((SELECT paused FROM old), false)",
            crate::queues::PUT_SQL,
            "WITH old AS (SELECT 1 FROM workers WHERE id = $1), \
             up AS (INSERT INTO workers (id, name, types, labels, capacity, weight, owner, \
                 registered_at) VALUES ($1, $2, $3::text::jsonb, $4::text::jsonb, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, types = excluded.types, \
                 labels = excluded.labels, capacity = excluded.capacity, \
                 weight = excluded.weight, owner = excluded.owner, \
                 registered_at = excluded.registered_at) \
             SELECT EXISTS (SELECT 1 FROM old)",
            "DELETE FROM workers WHERE id = $1 RETURNING 1",
        ];
        type Prepare<'c> =
            Pin<Box<dyn Future<Output = Result<Statement, tokio_postgres::Error>> + 'c>>;
        let futures: Vec<Prepare<'_>> = sql
            .iter()
            .map(|s| Box::pin(client.prepare(s)) as Prepare<'_>)
            .collect();
        let mut prepared = pipeline(futures).await.into_iter();
        let mut next = || {
            prepared
                .next()
                .expect("one statement per query")
                .map_err(pg_error("preparing the writer's statements"))
        };
        Ok(WriterStatements {
            insert: next()?,
            update: next()?,
            fence: next()?,
            key_holders: next()?,
            key_holder: next()?,
            upsert_schedule: next()?,
            delete_schedule: next()?,
            fire_record: next()?,
            fire_lookup: next()?,
            fire_set_task: next()?,
            fire_advance: next()?,
            purge: next()?,
            set_queue_paused: next()?,
            put_queue_config: next()?,
            put_worker: next()?,
            delete_worker: next()?,
        })
    }
}

/// Polls `futures` to the end, first each in order (which sends their
/// requests in order, so the database runs them in that order), then
/// waiting for them in order: the answers of one connection come in the
/// order of its requests. Answers one output per future, in order.
pub(crate) async fn pipeline<T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> Vec<T> {
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    let mut started = false;
    let mut next = 0;
    poll_fn(|cx| {
        if !started {
            started = true;
            for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *o = Some(v);
                }
            }
        }
        while next < futures.len() {
            if out[next].is_none() {
                match futures[next].as_mut().poll(cx) {
                    Poll::Ready(v) => out[next] = Some(v),
                    Poll::Pending => return Poll::Pending,
                }
            }
            next += 1;
        }
        Poll::Ready(())
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future ran to its end"))
        .collect()
}

/// Applies `writes` inside the open transaction `tx`.
pub(crate) async fn apply_batch(
    tx: &Transaction<'_>,
    stmts: &WriterStatements,
    writes: &[Write],
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut i = 0;
    while i < writes.len() {
        match &writes[i] {
            Write::Fire {
                schedule,
                fire_at,
                task,
            } => {
                outcomes.push(WriteOutcome::Fired(
                    fire(tx, stmts, schedule, *fire_at, task).await?,
                ));
                i += 1;
            }
            Write::Purge {
                finished_before,
                limit,
            } => {
                let before = codec::to_sql_int(*finished_before, "finished_before")?;
                let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
                let n: i64 = tx
                    .query_one(&stmts.purge, &[&before, &limit])
                    .await
                    .map_err(pg_error("purging finished tasks"))?
                    .get(0);
                outcomes.push(WriteOutcome::Purged(
                    usize::try_from(n).unwrap_or(usize::MAX),
                ));
                i += 1;
            }
            _ => {
                let end = writes[i..]
                    .iter()
                    .position(|w| matches!(w, Write::Fire { .. } | Write::Purge { .. }))
                    .map_or(writes.len(), |p| i + p);
                outcomes.extend(run(tx, stmts, &writes[i..end], false).await?);
                i = end;
            }
        }
    }
    Ok(outcomes)
}

/// What an insert's record will do, decided before the flight.
enum Planned {
    /// Stored under its id (its key, if any, for the rare case where
    /// another connection took the key meanwhile).
    Create(TaskId, Option<String>),
    /// Answers this key holder.
    Existing(TaskId),
}

/// How each write of a run turns its statement's answer into an outcome.
enum Step {
    /// The answer of statement `op` says the outcome.
    Op(usize),
    /// An insert: outcomes planned, checked against the insert statement
    /// `group` (absent when nothing is to be stored).
    Insert {
        planned: Vec<Planned>,
        group: Option<usize>,
    },
    /// An insert refused before anything was sent.
    KeyConflict { index: usize, holder: TaskId },
    /// An update: statement `op` answers `id` when it changed the task.
    Update { op: usize, id: i64 },
}

/// The tasks holding idempotency keys, with their request digests.
type Holders = HashMap<String, (TaskId, Option<[u8; 32]>)>;

/// A statement's answer, pending.
type Query<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + 'a>>;

/// Whether `writes` can be applied in one flight by [`apply_in_one_flight`]:
/// nothing in it needs an answer before the rest is sent (a fire, a purge,
/// or an insert with an idempotency key, whose holder is looked up first).
pub(crate) fn fits_one_flight(writes: &[Write]) -> bool {
    writes.iter().all(|w| match w {
        Write::Fire { .. } | Write::Purge { .. } => false,
        Write::Insert(records) => records.iter().all(|r| r.body.idempotency_key.is_none()),
        _ => true,
    })
}

/// Applies `writes` (see [`fits_one_flight`]) in one transaction sent as
/// one flight: `BEGIN`, the statements, `COMMIT`, without waiting for any
/// answer in between, so that the batch costs one round trip and the
/// server never waits for this client inside the transaction. A statement
/// that fails (the fence, when another replica leads) aborts the
/// transaction, and the `COMMIT` behind it then rolls back.
pub(crate) async fn apply_in_one_flight(
    client: &Client,
    stmts: &WriterStatements,
    writes: &[Write],
) -> Result<Vec<WriteOutcome>, StoreError> {
    run(client, stmts, writes, true).await
}

/// A run of writes that need no answer to be built, sent as one flight
/// (within `BEGIN` and `COMMIT` when `whole`: the run is the transaction).
async fn run<C: GenericClient + Sync>(
    tx: &C,
    stmts: &WriterStatements,
    writes: &[Write],
    whole: bool,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut holders = stored_key_holders(tx, stmts, writes).await?;
    let mut ops: Vec<(&Statement, Vec<Param>)> = Vec::new();
    let mut steps = Vec::with_capacity(writes.len());
    // The insert statement being filled by consecutive inserts.
    let mut group: Option<(usize, InsertColumns)> = None;
    let close = |group: &mut Option<(usize, InsertColumns)>,
                 ops: &mut Vec<(&Statement, Vec<Param>)>| {
        if let Some((op, columns)) = group.take() {
            ops[op].1 = columns.into_params();
        }
    };
    // The update statement being filled by consecutive updates of distinct
    // tasks: a task updated twice starts a new statement, so that the
    // updates of one task apply in order.
    let mut updates: Option<(usize, UpdateColumns, HashSet<i64>)> = None;
    let close_updates = |updates: &mut Option<(usize, UpdateColumns, HashSet<i64>)>,
                         ops: &mut Vec<(&Statement, Vec<Param>)>| {
        if let Some((op, columns, _)) = updates.take() {
            ops[op].1 = columns.into_params();
        }
    };
    for w in writes {
        if !matches!(w, Write::Update(_)) {
            close_updates(&mut updates, &mut ops);
        }
        let step = match w {
            Write::Update(u) => {
                close(&mut group, &mut ops);
                let id = i64::try_from(u.id.0).unwrap_or(-1);
                if updates
                    .as_ref()
                    .is_some_and(|(_, _, ids)| ids.contains(&id))
                {
                    close_updates(&mut updates, &mut ops);
                }
                let (op, columns, ids) = updates.get_or_insert_with(|| {
                    ops.push((&stmts.update, Vec::new()));
                    (ops.len() - 1, UpdateColumns::default(), HashSet::new())
                });
                ids.insert(columns.push(u)?);
                Step::Update { op: *op, id }
            }
            Write::Insert(records) => match key_conflict(&holders, records) {
                Some((index, holder)) => Step::KeyConflict { index, holder },
                None => {
                    let mut planned = Vec::with_capacity(records.len());
                    for r in records {
                        let key = r.body.idempotency_key.as_deref();
                        if let Some(&(holder, _)) = key.and_then(|k| holders.get(k)) {
                            planned.push(Planned::Existing(holder));
                            continue;
                        }
                        if let Some(k) = key {
                            holders.insert(k.to_owned(), (r.id, r.request_digest));
                        }
                        let (_, columns) = group.get_or_insert_with(|| {
                            ops.push((&stmts.insert, Vec::new()));
                            (ops.len() - 1, InsertColumns::default())
                        });
                        columns.push(r)?;
                        planned.push(Planned::Create(r.id, key.map(str::to_owned)));
                    }
                    let group = group.as_ref().map(|(op, _)| *op);
                    Step::Insert { planned, group }
                }
            },
            other => {
                close(&mut group, &mut ops);
                let (stmt, params): (&Statement, Vec<Param>) = match other {
                    Write::Fence { partition, epoch } => (
                        &stmts.fence,
                        vec![
                            Box::new(partition.clone()),
                            Box::new(codec::to_sql_int(*epoch, "epoch")?),
                        ],
                    ),
                    Write::UpsertSchedule(r) => {
                        (&stmts.upsert_schedule, codec::schedule_params(r)?)
                    }
                    Write::DeleteSchedule(name) => {
                        (&stmts.delete_schedule, vec![Box::new(name.clone())])
                    }
                    Write::SetQueuePaused { name, paused } => (
                        &stmts.set_queue_paused,
                        vec![Box::new(name.clone()), Box::new(*paused)],
                    ),
                    Write::PutQueueConfig(c) => {
                        (&stmts.put_queue_config, crate::queues::params(c)?)
                    }
                    Write::PutWorker(w) => (&stmts.put_worker, codec::worker_params(w)?),
                    Write::DeleteWorker(id) => {
                        (&stmts.delete_worker, vec![Box::new(id.get().cast_signed())])
                    }
                    Write::Insert(_)
                    | Write::Update(_)
                    | Write::Fire { .. }
                    | Write::Purge { .. } => {
                        unreachable!("not part of a run")
                    }
                };
                ops.push((stmt, params));
                Step::Op(ops.len() - 1)
            }
        };
        steps.push(step);
    }
    close(&mut group, &mut ops);
    close_updates(&mut updates, &mut ops);

    let refs: Vec<Vec<&(dyn ToSql + Sync)>> = ops
        .iter()
        .map(|(_, params)| params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect())
        .collect();
    let mut futures: Vec<Query<'_>> = Vec::with_capacity(ops.len() + 2);
    let simple = |sql: &'static str| -> Query<'_> {
        Box::pin(async move { tx.batch_execute(sql).await.map(|()| Vec::new()) })
    };
    if whole {
        futures.push(simple("BEGIN"));
    }
    futures.extend(
        ops.iter()
            .zip(&refs)
            .map(|((stmt, _), params)| Box::pin(tx.query(*stmt, params)) as Query<'_>),
    );
    if whole {
        futures.push(simple("COMMIT"));
    }
    let mut answers = pipeline(futures).await;
    if whole {
        // The first failure is the cause (what follows it failed, or rolled
        // back, because of it); the COMMIT's own failure comes last.
        let commit = answers.pop().expect("the COMMIT's answer");
        answers
            .remove(0)
            .map_err(pg_error("beginning a transaction"))?;
        if let Some(i) = answers.iter().position(Result::is_err) {
            let e = answers.swap_remove(i).expect_err("a failure");
            return Err(pg_error("writing a batch")(e));
        }
        commit.map_err(pg_error("committing"))?;
    }
    let mut rows: Vec<Vec<Row>> = Vec::with_capacity(answers.len());
    for answer in answers {
        rows.push(answer.map_err(pg_error("writing a batch"))?);
    }

    // Ids planned as stored that were not (a key taken by another
    // connection meanwhile), and the task that holds their key.
    let mut taken: HashMap<TaskId, TaskId> = HashMap::new();
    // The tasks each update statement changed.
    let mut changed: HashMap<usize, HashSet<i64>> = HashMap::new();
    let mut outcomes = Vec::with_capacity(writes.len());
    for (w, step) in writes.iter().zip(steps) {
        let outcome = match step {
            Step::KeyConflict { index, holder } => WriteOutcome::KeyConflict { index, holder },
            Step::Update { op, id } => {
                let ids = changed
                    .entry(op)
                    .or_insert_with(|| rows[op].iter().map(|r| r.get::<_, i64>(0)).collect());
                WriteOutcome::Updated(ids.contains(&id))
            }
            Step::Insert { planned, group } => {
                let stored: HashSet<i64> = match group {
                    Some(op) => rows[op].iter().map(|r| r.get::<_, i64>(0)).collect(),
                    None => HashSet::new(),
                };
                let mut out = Vec::with_capacity(planned.len());
                for p in planned {
                    out.push(match p {
                        Planned::Create(id, key) => {
                            if stored.contains(&codec::to_sql_int(id.0, "id")?) {
                                InsertOutcome::Created
                            } else {
                                let holder = holder_of(tx, stmts, id, key.as_deref()).await?;
                                taken.insert(id, holder);
                                InsertOutcome::Existing(holder)
                            }
                        }
                        Planned::Existing(holder) => {
                            InsertOutcome::Existing(taken.get(&holder).copied().unwrap_or(holder))
                        }
                    });
                }
                WriteOutcome::Inserted(out)
            }
            Step::Op(op) => outcome_of(w, &rows[op])?,
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// The outcome of a write of a run that is one statement, from its rows.
fn outcome_of(w: &Write, rows: &[Row]) -> Result<WriteOutcome, StoreError> {
    let flag = |what: &str| -> Result<bool, StoreError> {
        match rows.first() {
            Some(row) => row.try_get(0).map_err(pg_error(what)),
            None => Ok(false),
        }
    };
    Ok(match w {
        // Each answers a row when it changed one.
        Write::DeleteSchedule(_) => WriteOutcome::ScheduleDeleted(!rows.is_empty()),
        Write::DeleteWorker(_) => WriteOutcome::WorkerDeleted(!rows.is_empty()),
        Write::Fence { partition, epoch } => {
            let stored: Option<i64> = match rows.first() {
                Some(row) => Some(
                    row.try_get(0)
                        .map_err(pg_error("reading the lease epoch"))?,
                ),
                None => None,
            };
            if stored != i64::try_from(*epoch).ok() {
                return Err(StoreError::new(
                    ErrorKind::Fenced,
                    match stored {
                        Some(now) => format!(
                            "partition {partition:?} is at epoch {now}, not {epoch}: another replica leads"
                        ),
                        None => format!("partition {partition:?} was never claimed"),
                    },
                ));
            }
            WriteOutcome::Fenced
        }
        Write::UpsertSchedule(_) => WriteOutcome::ScheduleUpserted(flag("upserting a schedule")?),
        Write::SetQueuePaused { paused, .. } => {
            WriteOutcome::QueuePausedSet(flag("setting a queue's pause state")? != *paused)
        }
        Write::PutWorker(_) => WriteOutcome::WorkerPut(flag("storing a worker")?),
        Write::PutQueueConfig(_) => {
            WriteOutcome::QueueConfigPut(flag("storing a queue's settings")?)
        }
        Write::Insert(_) | Write::Update(_) | Write::Fire { .. } | Write::Purge { .. } => {
            unreachable!("not a statement of its own")
        }
    })
}

/// The stored tasks holding the keys of a run's inserts.
async fn stored_key_holders<C: GenericClient + Sync>(
    tx: &C,
    stmts: &WriterStatements,
    writes: &[Write],
) -> Result<Holders, StoreError> {
    let keys: Vec<&str> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Insert(records) => Some(records),
            _ => None,
        })
        .flatten()
        .filter_map(|r| r.body.idempotency_key.as_deref())
        .collect();
    let mut holders = Holders::new();
    if keys.is_empty() {
        return Ok(holders);
    }
    let rows = tx
        .query(&stmts.key_holders, &[&keys])
        .await
        .map_err(pg_error("looking up idempotency keys"))?;
    for row in rows {
        let col = codec::Columns::new(&row, &["idempotency_key", "id", "request_digest"], "task");
        let key: String = col.get(0)?;
        let id = codec::task_id(col.get(1)?, "tasks.id")?;
        let digest: Option<Vec<u8>> = col.get(2)?;
        let digest = match digest {
            None => None,
            Some(d) => Some(
                <[u8; 32]>::try_from(d.as_slice())
                    .map_err(|_| col.error(2, format!("{} bytes, expected 32", d.len())))?,
            ),
        };
        holders.insert(key, (id, digest));
    }
    Ok(holders)
}

/// The first record whose idempotency key is held, by a stored task, an
/// earlier write of the run or an earlier record of `records`, for a
/// different request (both digests known and different), with the holder.
fn key_conflict(holders: &Holders, records: &[TaskRecord]) -> Option<(usize, TaskId)> {
    let mut own: HashMap<&str, (TaskId, Option<&[u8; 32]>)> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let Some(k) = r.body.idempotency_key.as_deref() else {
            continue;
        };
        let held = holders
            .get(k)
            .map(|(id, d)| (*id, d.as_ref()))
            .or_else(|| own.get(k).copied());
        match held {
            Some((holder, theirs)) => {
                if let (Some(a), Some(b)) = (theirs, &r.request_digest)
                    && a != b
                {
                    return Some((i, holder));
                }
            }
            None => {
                own.insert(k, (r.id, r.request_digest.as_ref()));
            }
        }
    }
    None
}

/// The task holding `key`, for a record planned as stored that was not.
async fn holder_of<C: GenericClient + Sync>(
    tx: &C,
    stmts: &WriterStatements,
    id: TaskId,
    key: Option<&str>,
) -> Result<TaskId, StoreError> {
    let found = match key {
        Some(key) => tx
            .query_opt(&stmts.key_holder, &[&key])
            .await
            .map_err(pg_error("looking up an idempotency key"))?,
        None => None,
    };
    match found {
        Some(row) => codec::task_id(
            row.try_get(0).map_err(pg_error("reading a key holder"))?,
            "tasks.id",
        ),
        None => Err(StoreError::new(
            ErrorKind::Corrupt,
            format!("task {id} was neither stored nor a duplicate key"),
        )),
    }
}

/// Records one fire and stores its task, or answers the task of the fire
/// recorded before (by this batch, an earlier one, or another replica's
/// transaction that committed first). Never fails on the fire's
/// uniqueness, so the rest of the batch is stored either way.
async fn fire(
    tx: &Transaction<'_>,
    stmts: &WriterStatements,
    schedule: &str,
    fire_at: u64,
    task: &TaskRecord,
) -> Result<FireOutcome, StoreError> {
    let at = codec::to_sql_int(fire_at, "fire_at")?;
    let id = codec::to_sql_int(task.id.0, "id")?;
    let recorded = tx
        .query_opt(&stmts.fire_record, &[&schedule, &at, &id])
        .await
        .map_err(pg_error(&format!("recording a fire of {schedule:?}")))?;
    if recorded.is_none() {
        let before = tx
            .query_opt(&stmts.fire_lookup, &[&schedule, &at])
            .await
            .map_err(pg_error("looking up a fire"))?;
        return match before {
            Some(row) => Ok(FireOutcome::Existing(codec::task_id(
                row.try_get(0).map_err(pg_error("reading a fire"))?,
                "schedule_fires.task_id",
            )?)),
            None => Ok(FireOutcome::UnknownSchedule),
        };
    }
    let mut columns = InsertColumns::default();
    columns.push(task)?;
    debug_assert_eq!(columns.len(), 1);
    let params = columns.into_params();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
    let advance: [&(dyn ToSql + Sync); 2] = [&schedule, &at];
    let (stored, advanced) = {
        let futures: Vec<Query<'_>> = vec![
            Box::pin(tx.query(&stmts.insert, &refs)),
            Box::pin(tx.query(&stmts.fire_advance, &advance)),
        ];
        let mut answers = pipeline(futures).await.into_iter();
        (
            answers.next().expect("two answers"),
            answers.next().expect("two answers"),
        )
    };
    let stored = stored.map_err(pg_error(&format!(
        "storing the task of a fire of {schedule:?}"
    )))?;
    advanced.map_err(pg_error(&format!("advancing last_fire_at of {schedule:?}")))?;
    if !stored.is_empty() {
        return Ok(FireOutcome::Created);
    }
    // The task's idempotency key is held: the fire is that task's.
    let holder = holder_of(tx, stmts, task.id, task.body.idempotency_key.as_deref()).await?;
    let holder_id = codec::to_sql_int(holder.0, "task_id")?;
    tx.execute(&stmts.fire_set_task, &[&schedule, &at, &holder_id])
        .await
        .map_err(pg_error("recording a fire's task"))?;
    Ok(FireOutcome::Existing(holder))
}
